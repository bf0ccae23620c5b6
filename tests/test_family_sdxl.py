"""SDXL through the model-family seam, on a tiny random StableDiffusionXLPipeline saved to disk and
loaded back with ``from_pretrained``: conditioning and size ids exactly as the pipeline's own, a
2-round run at a non-native size, the LoRA in diffusers, resume after a kill, 2 processes, caption
dropout against the zero conditioning, every scheduler, and a reward that rises under RAFT."""

from __future__ import annotations

import json
import shutil
import signal
import types

import pytest
import torch
from safetensors.torch import load_file

from raft_diffusion.api import build_loop, train
from raft_diffusion.cli import main
from raft_diffusion.config import RaftConfig
from raft_diffusion.core import faults
from raft_diffusion.diffusion.families.sdxl import SDXLFamily
from raft_diffusion.diffusion.pipeline import SCHEDULER_CLASSES, load_family, make_scheduler
from raft_diffusion.errors import ModelError
from tests.fakes import TINY_BASE
from tests.test_distributed import launch

pytestmark = pytest.mark.usefixtures("one_thread")
#: a non-native training and sampling size (the tiny model's native size is 32 x 32)
HEIGHT, WIDTH = 24, 40


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    """``raft-diffusion tiny-model --family sdxl DIR``."""
    out = tmp_path_factory.mktemp("tiny-sdxl") / "pipe"
    assert main(["tiny-model", "--family", "sdxl", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sdxl_v_dir(sdxl_dir, tmp_path_factory):
    """The same pipeline with a v-prediction scheduler config."""
    out = tmp_path_factory.mktemp("tiny-sdxl-v") / "pipe"
    shutil.copytree(sdxl_dir, out)
    path = out / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "v_prediction"}))
    return out


def config(pipe_dir, out_dir, **overrides) -> RaftConfig:
    base = {
        "model.pretrained": str(pipe_dir), "raft.rounds": 2, "raft.k": 2, "raft.prompts_per_round": 2, "raft.seed": 3,
        "sampling.steps": 2, "sampling.batch_size": 4, "sampling.guidance_scale": 5.0,
        "sampling.height": HEIGHT, "sampling.width": WIDTH, "train.steps_per_round": 3, "train.batch_size": 2,
        "train.learning_rate": 1e-3, "train.caption_dropout": 0.5, "prompts.eval": None, "output.dir": str(out_dir),
    }
    return RaftConfig().replace({**TINY_BASE, **base, **overrides})


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.fixture(scope="module")
def reference(sdxl_dir, tmp_path_factory):
    """A 2-round run in this process, with a spy on every UNet call (sampling and training)."""
    root = tmp_path_factory.mktemp("sdxl-ref")
    cfg = config(sdxl_dir, root / "run")
    cfg_file = root / "config.yaml"
    cfg.to_yaml(cfg_file)
    loop = build_loop(cfg, progress=False)
    pipe = loop.backend.pipe
    parts = ("unet", "vae", "text_encoder", "text_encoder_2")
    before = {name: snapshot(getattr(pipe, name)) for name in parts}
    calls: list[dict] = []

    def spy(module, args, kwargs):
        added = kwargs["added_cond_kwargs"]
        calls.append({"training": torch.is_grad_enabled(), "time_ids": added["time_ids"].detach().clone(),
                      "pooled": added["text_embeds"].detach().clone(), "embeds": kwargs["encoder_hidden_states"].detach().clone()})

    handle = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        history = loop.run()
    finally:
        handle.remove()
    after = {name: snapshot(getattr(pipe, name)) for name in parts}
    return types.SimpleNamespace(loop=loop, history=history, before=before, after=after, calls=calls,
                                 run=root / "run", cfg_file=cfg_file, root=root)


def test_family_is_detected_and_its_conditioning_is_the_pipelines_own():
    fam = load_family("tiny-sdxl", device="cpu")  # the alias: built once per cache folder
    assert isinstance(fam, SDXLFamily) and fam.denoiser is fam.pipe.unet
    assert fam.native_size() == 32 and fam.size_factor() == 4
    pipe = fam.pipe
    cond = fam.encode_prompts(["a cat", ""])
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt("a cat", device="cpu", do_classifier_free_guidance=True)
    assert set(cond) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert cond["prompt_embeds"].shape[-1] == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    # (batched with the empty prompt: equal up to float rounding)
    torch.testing.assert_close(cond["prompt_embeds"][0], embeds[0].detach())
    torch.testing.assert_close(cond["pooled_prompt_embeds"][0], pooled[0].detach())
    # the empty prompt is the pipeline's own negative: zeros, since it forces zeros for an empty prompt
    assert pipe.config.force_zeros_for_empty_prompt and not neg.any() and not neg_pooled.any()
    assert torch.equal(cond["prompt_embeds"][1], neg[0]) and torch.equal(cond["pooled_prompt_embeds"][1], neg_pooled[0])
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    empty = fam.encode_prompts([""])
    _, neg, _, neg_pooled = pipe.encode_prompt("a cat", device="cpu", do_classifier_free_guidance=True)
    assert neg.any() and neg_pooled.any()
    torch.testing.assert_close(empty["prompt_embeds"][0], neg[0].detach())
    torch.testing.assert_close(empty["pooled_prompt_embeds"][0], neg_pooled[0].detach())
    # latents <-> images through the VAE's own scaling
    images = torch.rand(2, 3, HEIGHT, WIDTH)
    latents = fam.encode(images)
    with torch.no_grad():
        want = fam.vae.encode(images * 2 - 1).latent_dist.mean * fam.vae.config.scaling_factor
    assert torch.allclose(latents, want, atol=1e-5) and fam.decode(latents).shape == images.shape


def test_vae_stays_float32_unless_model_vae_names_one(sdxl_dir):
    half = load_family(str(sdxl_dir), device="cpu", dtype="bfloat16")
    assert half.pipe.unet.dtype == torch.bfloat16 and half.pipe.vae.dtype == torch.float32
    images = half.decode(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16))
    assert images.dtype == torch.float32 and images.shape == (1, 3, 16, 16)
    own = load_family(str(sdxl_dir), device="cpu", dtype="bfloat16", options={"vae": str(sdxl_dir / "vae")})
    assert own.pipe.vae.dtype == torch.bfloat16, "a model.vae is loaded in model.dtype"
    assert half.decode(torch.zeros(1, 4, 8, 8)).shape == own.decode(torch.zeros(1, 4, 8, 8)).shape
    with pytest.raises(ModelError, match=r"model.vae '.*nowhere' cannot be loaded .*; give a folder holding an AutoencoderKL"):
        load_family(str(sdxl_dir), device="cpu", options={"vae": str(sdxl_dir / "nowhere")})


def test_two_rounds_train_every_lora_parameter_and_no_frozen_one(reference):
    rows = reference.history.rounds
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["n_samples"] == 4 and r["n_kept"] == 2 and r["train_steps"] == 3 for r in rows)
    lora = [n for n in reference.after["unet"] if "lora_" in n]
    assert lora, "no LoRA parameters"
    for name in lora:
        assert not torch.equal(reference.before["unet"][name], reference.after["unet"][name]), f"{name} did not change"
    for part, params in reference.after.items():
        for name, value in params.items():
            if "lora_" not in name:
                assert torch.equal(reference.before[part][name], value), f"frozen {part}.{name} changed"
    grid = reference.run / "rounds" / "round-0001" / "kept"
    from PIL import Image

    assert all(Image.open(p).size == (WIDTH, HEIGHT) for p in grid.glob("*.png"))


def test_training_passes_the_pipelines_own_time_ids_at_that_size(reference):
    pipe = reference.loop.backend.pipe
    seen = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    try:
        pipe(prompt="a cat", height=HEIGHT, width=WIDTH, num_inference_steps=1, output_type="latent")
    finally:
        handle.remove()
    own = seen[0][0]
    assert own.tolist() != pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), own.dtype, pipe.text_encoder_2.config.projection_dim)[0].tolist()
    training = [c for c in reference.calls if c["training"]]
    sampling = [c for c in reference.calls if not c["training"]]
    assert training and sampling
    for call in training + sampling:
        assert all(torch.equal(row, own) for row in call["time_ids"]), call["time_ids"]
    for call in training:
        assert len(call["time_ids"]) == len(call["pooled"]) == len(call["embeds"])


def test_caption_dropout_trains_against_the_zero_conditioning(reference):
    uncond = reference.loop.backend.trainer.uncond
    assert not uncond["prompt_embeds"].any() and not uncond["pooled_prompt_embeds"].any()
    dropped = kept = 0
    for call in (c for c in reference.calls if c["training"]):
        for embeds, pooled in zip(call["embeds"], call["pooled"]):
            assert bool(embeds.any()) == bool(pooled.any()), "a row is dropped whole or not at all"
            dropped += not embeds.any()
            kept += bool(embeds.any())
    assert dropped and kept


def test_saved_lora_loads_in_diffusers_and_generate_and_score_use_it(reference, sdxl_dir, tmp_path, capsys):
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    trained = get_peft_model_state_dict(reference.loop.backend.pipe.unet)
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe("a photo of a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images

    base = image()
    pipe.load_lora_weights(reference.run)
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name=pipe.unet.active_adapters()[0])
    assert sorted(loaded) == sorted(trained) and all(torch.equal(loaded[k].float(), trained[k].float()) for k in trained)
    assert not torch.allclose(base, image(), atol=1e-6), "the LoRA did not change the output"
    pipe.unload_lora_weights()
    assert torch.allclose(base, image(), atol=1e-6)

    out = tmp_path / "images"
    assert main(["generate", "--model", str(sdxl_dir), "--lora", str(reference.run), "--prompt", "a cat", "--out", str(out),
                 "--num-images", "2", "--steps", "2", "--height", str(HEIGHT), "--width", str(WIDTH)]) == 0
    from PIL import Image

    assert [Image.open(p).size for p in sorted(out.glob("*.png"))] == [(WIDTH, HEIGHT)] * 2
    assert main(["score", str(out), "--scorer", "brightness"]) == 0
    assert (out / "scores-brightness.csv").is_file()


def test_every_scheduler_samples_and_v_prediction_trains_on_encoded_latents_with_kl(sdxl_dir, sdxl_v_dir, tmp_path):
    from raft_diffusion.diffusion import sampling

    fam = load_family(str(sdxl_dir), device="cpu")
    base = fam.pipe.scheduler.config
    for name in SCHEDULER_CLASSES:  # 4 steps: PNDM's Runge-Kutta warm-up needs them
        fam.pipe.scheduler = make_scheduler(name, base)
        out = sampling.generate(fam, sampling.PromptEncoder(fam), ["a cat"], [0], steps=4, guidance_scale=5.0,
                                height=HEIGHT, width=WIDTH, batch_size=1, progress=False)
        assert out.images.shape == (1, 3, HEIGHT, WIDTH) and torch.isfinite(out.latents).all(), name
    cfg = config(sdxl_v_dir, tmp_path / "run", **{"raft.rounds": 1, "train.latents": "encoded", "train.kl_weight": 0.5,
                                                  "sampling.scheduler": "euler-a"})
    loop = build_loop(cfg, progress=False)
    family = loop.backend.family
    x0, noise, t = torch.randn(2, 4, 6, 10), torch.randn(2, 4, 6, 10), torch.tensor([10, 900])
    _, target = family.training_pair(x0, {"noise": noise, "timesteps": t})
    assert torch.equal(target, family.noise_scheduler.get_velocity(x0, noise, t))
    row = loop.run().rounds[0]
    assert row["train_steps"] == 3 and row["train_loss"] == row["train_loss"]


def test_killed_run_resumes_to_the_same_lora(reference, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(reference.cfg_file), "--no-progress", "--output", str(out)]
    killed = launch(args, tmp_path / "dump", env={faults.ENV: "2:train"})
    assert killed.returncode == -signal.SIGKILL and [r["round"] for r in metrics(out)] == [1], killed.stderr[-2000:]
    assert main([*args, "--resume", "latest"]) == 0  # in this process: one interpreter start less
    a, b = load_file(reference.run / "pytorch_lora_weights.safetensors"), load_file(out / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = metrics(out)
    assert [r["kept_ids"] for r in rows] == [r["kept_ids"] for r in reference.history.rounds]


def test_two_processes_keep_the_same_sets_and_train_the_same_lora(reference, tmp_path):
    out = tmp_path / "run"
    proc = launch(["train", str(reference.cfg_file), "--no-progress", "--output", str(out)], tmp_path / "dump", n=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics(out)
    assert all(r["n_processes"] == 2 for r in rows)
    for one, two in zip(reference.history.rounds, rows, strict=True):
        for key in ("kept_ids", "reward_unbiased", "reward_mean", "reward_kept"):
            assert one[key] == two[key], key
    a, b = load_file(reference.run / "pytorch_lora_weights.safetensors"), load_file(out / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_brightness_rises_when_raft_keeps_the_brightest_and_falls_when_it_keeps_the_darkest(sdxl_v_dir, tmp_path):
    """Over 5 rounds the round's mean brightness (fresh seeds) and the eval brightness (fixed seeds)
    rise; the same run keeping the darkest (``target: 0``) falls, so the ranking moves it. The
    v-prediction variant: a random UNet's v output is close to the sample itself, so the LoRA's fit
    of the kept latents carries over to the next round's images (with epsilon it drowns in noise)."""

    def run(name, **kwargs):
        cfg = config(sdxl_v_dir, tmp_path / name, **{
            "raft.rounds": 5, "raft.k": 8, "raft.seed": 0, "sampling.steps": 4, "sampling.batch_size": 16,
            "sampling.guidance_scale": 1.0, "sampling.height": None, "sampling.width": None, "train.caption_dropout": 0.0,
            "train.steps_per_round": 40, "train.learning_rate": 1e-2, "reward.scorer": "brightness", "reward.kwargs": kwargs,
            "prompts.eval": "cifar10", "prompts.eval_limit": 2, "raft.eval_samples_per_prompt": 4,
            "lora.target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv_out"], "output.save_grids": False,
        })
        history = train(cfg, progress=False)
        return [abs(r["reward_mean"]) for r in history.rounds], [abs(e["brightness"]) for e in history.evals]

    mean, evals = run("brightest")
    assert sum(mean[-2:]) > sum(mean[:2]), mean
    assert evals[-1] > evals[0], evals
    dark_mean, dark_evals = run("darkest", target=0.0)
    assert dark_evals[0] == evals[0], "both start from the same model and eval seeds"
    assert dark_evals[-1] < dark_evals[0] and sum(dark_mean[-2:]) < sum(mean[-2:]), (dark_mean, dark_evals)
