#!/usr/bin/env bash
# The GPU check: one script, one GPU, under 8 minutes. It prints seconds per round and peak GPU
# memory for the paper's diffusion config on Stable Diffusion 1.5's architecture with random
# weights in float16 (10 prompts x 10 images at 256x256, DPM-Solver++ 20 steps, LoRA rank 4 on
# the attention, lr 9e-6, batch 8, 80 LoRA steps per round, 3 rounds; reward: JPEG compressibility,
# which needs no weights), then the same under a one-GPU DeepSpeed ZeRO-2 accelerate config.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # CPU smoke test: shrunk model and config
#
# The GPU machine of this workplace has torch, transformers, accelerate and peft but not diffusers,
# open_clip_torch or deepspeed: carry their wheels in .whl/ (see the device tool's README); they
# are installed from there when present. Figures land in $OUT (default /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
$PY -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"

if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  SMALL=--small; DTYPE=float32; SIZE=64; PROMPTS=2; K=2; STEPS=2; TRAIN=2; ROUNDS=2
else
  SMALL=; DTYPE=float16; SIZE=256; PROMPTS=10; K=10; STEPS=20; TRAIN=80; ROUNDS=3
fi

run_case() {  # name, model dir, extra launcher args...; CASE_ARGS: more train overrides (later ones win)
  local name=$1 model=$2; shift 2
  local run="$OUT/run-$name"
  rm -rf "$run"
  local t0=$SECONDS
  "$@" -m raft_diffusion train tiny-demo --no-progress --output "$run" \
    --model.pretrained "$model" --model.dtype "$DTYPE" --model.device auto \
    --raft.rounds "$ROUNDS" --raft.k "$K" --raft.prompts_per_round "$PROMPTS" --raft.eval_every 0 \
    --prompts.train cifar10 --prompts.eval null --sampling.scheduler dpm++ --sampling.steps "$STEPS" \
    --sampling.guidance_scale 7.5 --sampling.height "$SIZE" --sampling.width "$SIZE" --sampling.batch_size 25 \
    --reward.scorer jpeg-compressibility --lora.rank 4 --lora.target_modules "[to_q, to_k, to_v, to_out.0]" \
    --train.learning_rate 9e-6 --train.batch_size 8 --train.steps_per_round "$TRAIN" \
    --output.save_kept false ${CASE_ARGS:-} >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc, $((SECONDS - t0)) s in all (model load included)"
  [ $rc = 0 ] || { tail -n 5 "$OUT/$name.log"; return 0; }
  $PY benchmarks/round_figures.py "$run"
}

SD15="$OUT/sd15"
[ -f "$SD15/model_index.json" ] || $PY benchmarks/full_size.py sd15 "$SD15" --dtype "$DTYPE" $SMALL >/dev/null
run_case sd15 "$SD15" $PY

# DeepSpeed ZeRO-2 on one GPU, through accelerate launch
cat >"$OUT/zero2.yaml" <<YAML
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
num_machines: 1
num_processes: 1
mixed_precision: 'no'
deepspeed_config:
  zero_stage: 2
  gradient_accumulation_steps: 1
  gradient_clipping: 1.0
  offload_optimizer_device: none
  offload_param_device: none
  zero3_init_flag: false
YAML
if $PY -c "import deepspeed" 2>/dev/null; then
  run_case sd15-zero2 "$SD15" $PY -m accelerate.commands.launch --config_file "$OUT/zero2.yaml" --main_process_port 29511
else
  echo "== sd15-zero2: skipped (deepspeed is not installed here; carry its wheel in .whl/)"
fi

# ---- Flow-matching families (issue 16): SD3.5-medium and FLUX.1-dev architectures, random weights in
# bfloat16, 4 prompts x 4 images at 512x512, 20 flow-Euler steps (guidance 4.5 / 3.5), best 1 of 4 per
# prompt, 20 LoRA steps per round (the family's default targets, rank 4, gradient checkpointing),
# 2 rounds; everything on the GPU (no offload). The weights are drawn on the GPU in bfloat16 and saved
# (sd35m ~16 GB with T5-XXL, flux1 ~34 GB), each folder removed after its case to spare the disk.
# Expected cost, build and load included: sd35m ~2 min, flux1 ~4-5 min. With the SD 1.5 cases above
# the script then runs past 8 minutes: these cases may be skipped, FLOW_CASES picks them
# (FLOW_CASES=sd35m skips FLUX.1, FLOW_CASES= skips both; default both).
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  FDTYPE=float32; FDEVICE=cpu; FSIZE=64; FSTEPS=2; FTRAIN=2
else
  FDTYPE=bfloat16; FDEVICE=cuda; FSIZE=512; FSTEPS=20; FTRAIN=20
fi
for arch in ${FLOW_CASES-sd35m flux1}; do
  dir="$OUT/$arch"
  t0=$SECONDS
  [ -f "$dir/model_index.json" ] || $PY benchmarks/full_size.py "$arch" "$dir" --dtype "$FDTYPE" --device "$FDEVICE" $SMALL \
    >"$OUT/$arch-build.log" 2>&1 || { echo "== $arch: build failed"; tail -n 5 "$OUT/$arch-build.log"; continue; }
  echo "== $arch: built in $((SECONDS - t0)) s"
  guidance=4.5; [ "$arch" = flux1 ] && guidance=3.5
  CASE_ARGS="--model.dtype $FDTYPE --raft.rounds 2 --raft.k 4 --raft.prompts_per_round 4 --sampling.scheduler null
    --sampling.steps $FSTEPS --sampling.guidance_scale $guidance --sampling.height $FSIZE --sampling.width $FSIZE
    --lora.target_modules [] --train.learning_rate 1e-4 --train.batch_size 4 --train.steps_per_round $FTRAIN
    --train.gradient_checkpointing true" run_case "$arch" "$dir" $PY
  [ "${GPU_CHECK_SMOKE:-0}" = 1 ] || rm -rf "$dir"
done

# ---- SDXL (issue 15): SDXL base's architecture, random weights in float16 (drawn on the GPU, ~7 GB
# saved), 4 prompts x 4 images at 1024x1024, 20 Euler steps (the pipeline's own scheduler), guidance
# 5, best 1 of 4 per prompt, 20 LoRA steps per round (attention, rank 4), 2 rounds; the memory
# settings of the sdxl-aesthetic preset (VAE, text encoders and scorer offloaded, gradient
# checkpointing, 4 images per call, micro-batches of 2) but the stock VAE in float32 (a random
# float16 VAE may overflow): its peak GPU memory is the figure to compare with 24 GB. ~2-3 min
# (estimated, not yet run on a GPU); SDXL_CASE=0 skips it.
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  XDTYPE=float32; XDEVICE=cpu; XSIZE=64; XSTEPS=2; XTRAIN=2
else
  XDTYPE=float16; XDEVICE=cuda; XSIZE=1024; XSTEPS=20; XTRAIN=20
fi
if [ "${SDXL_CASE:-1}" = 1 ]; then
  dir="$OUT/sdxl"
  t0=$SECONDS
  if [ -f "$dir/model_index.json" ] || $PY benchmarks/full_size.py sdxl "$dir" --dtype "$XDTYPE" --device "$XDEVICE" $SMALL \
      >"$OUT/sdxl-build.log" 2>&1; then
    echo "== sdxl: built in $((SECONDS - t0)) s"
    CASE_ARGS="--model.dtype $XDTYPE --model.offload true --raft.rounds 2 --raft.k 4 --raft.prompts_per_round 4
      --sampling.scheduler null --sampling.steps $XSTEPS --sampling.guidance_scale 5.0 --sampling.height $XSIZE
      --sampling.width $XSIZE --sampling.batch_size 4 --train.batch_size 2 --train.steps_per_round $XTRAIN
      --train.gradient_checkpointing true" run_case sdxl "$dir" $PY
    [ "${GPU_CHECK_SMOKE:-0}" = 1 ] || rm -rf "$dir"
  else
    echo "== sdxl: build failed"; tail -n 5 "$OUT/sdxl-build.log"
  fi
fi
