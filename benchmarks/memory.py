"""Peak memory of one RAFT round with each memory option against the plain run, in one run.

Each variant runs in its own process (so peaks do not mix) and reports the peak resident memory
(``ru_maxrss``) and, on a GPU, the peak CUDA allocation of the round. Variants: plain float32,
bfloat16 / float16 frozen weights (LoRA stays float32), gradient checkpointing, eager attention,
8-bit AdamW (needs bitsandbytes; reported as unavailable otherwise), offload (VAE, text encoder
and scorer on the CPU between uses; a no-op without a GPU, so that row then equals plain).
``--scorer miniworld-aesthetic`` (or another scorer with weights) shows the scorer's share.

    python benchmarks/memory.py [--model tiny|miniworld|PATH] [--scorer NAME] [--k 4] [--prompts 4] [--steps 10] [--train-steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {
    "plain": {},
    "bf16": {"model.dtype": "bfloat16"},
    "fp16": {"model.dtype": "float16"},
    "gradient-checkpointing": {"train.gradient_checkpointing": True},
    "eager-attention": {"model.attention": "eager"},
    "adamw8bit": {"train.optimizer": "adamw8bit"},
    "offload": {"model.offload": True},
}


def run_variant(args, name: str) -> dict:
    import torch

    from raft_diffusion.api import build_loop
    from raft_diffusion.config import RaftConfig
    from raft_diffusion.errors import RaftError

    with tempfile.TemporaryDirectory() as tmp:
        cfg = RaftConfig().replace({
            "model.pretrained": args.model, "raft.rounds": 2, "raft.k": args.k, "raft.prompts_per_round": args.prompts,
            "sampling.steps": args.steps, "sampling.batch_size": args.k * args.prompts, "train.steps_per_round": args.train_steps,
            "train.batch_size": args.prompts, "reward.scorer": args.scorer, "prompts.eval": None,
            # the settings the measured figures were taken with (the embedded default's differ)
            "prompts.train": "cifar10", "prompts.template": "a photo of a {}", "reward.eval_scorers": {},
            "sampling.scheduler": "ddim", "sampling.guidance_scale": 7.5, "lora.rank": 4, "train.learning_rate": 1e-4,
            "lora.target_modules": [], "train.caption_dropout": 0.0, "train.kl_weight": 0.0, "train.latents": "sampled",
            "ranking.filter": None, "raft.early_stop": None,
            "output.dir": f"{tmp}/run", **VARIANTS[name],
        })
        try:
            loop = build_loop(cfg, progress=False)
            base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            row = loop.run_round(1)
        except (RaftError, RuntimeError) as exc:
            return {"error": str(exc).splitlines()[0][:120]}
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_load_mb": base_rss,
           "round_s": row["time_round_s"]}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--scorer", default="jpeg-compressibility", help="reward scorer (one with weights shows offload's scorer share)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        import logging

        logging.disable(logging.WARNING)
        print("RESULT " + json.dumps(run_variant(args, args.variant)))
        return
    print(f"model {args.model}, scorer {args.scorer}: {args.prompts} prompts x K={args.k}, {args.steps} sampling steps, "
          f"{args.train_steps} LoRA steps")
    plain = None
    for name in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--variant", name] + sys.argv[1:], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        r = json.loads(lines[-1][7:]) if lines else {"error": (proc.stderr.strip().splitlines() or ["crashed"])[-1][:120]}
        if "error" in r:
            print(f"{name:24s} unavailable: {r['error']}")
            continue
        key = "peak_cuda_mb" if "peak_cuda_mb" in r else "peak_rss_mb"
        plain = plain or r[key]
        note = "   (no-op without a GPU)" if name == "offload" and key == "peak_rss_mb" else ""
        print(f"{name:24s} peak {key[5:-3]} {r[key]:8.0f} MB ({r[key] / plain:5.2f}x plain)   round {r['round_s']:.2f} s{note}")


if __name__ == "__main__":
    main()
