"""``generate`` from a run folder: the run's settings, its eval images redrawn, no overwrites, sane swaps."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from raft_diffusion.api import train
from raft_diffusion.cli import main
from raft_diffusion.config import RaftConfig
from raft_diffusion.errors import ConfigError
from raft_diffusion.generate import generate
from tests.fakes import TINY_BASE


@pytest.fixture(scope="module")
def run_dir(tiny_pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "run"
    cfg = RaftConfig().replace({
        **TINY_BASE, "model.pretrained": str(tiny_pipeline_dir), "raft.rounds": 1, "raft.k": 2, "raft.prompts_per_round": 2,
        "raft.seed": 5, "raft.eval_samples_per_prompt": 2, "sampling.scheduler": "dpm++", "sampling.steps": 3,
        "sampling.guidance_scale": 3.0, "sampling.batch_size": 4, "train.steps_per_round": 3, "train.batch_size": 2,
        "train.learning_rate": 5e-2, "prompts.eval": "cifar10", "prompts.eval_limit": 2, "output.dir": str(out),
    })
    train(cfg, progress=False)
    return out


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_generate_from_a_run_redraws_its_eval_images(run_dir, tmp_path):
    paths = generate(None, None, tmp_path / "out", lora=run_dir, device="cpu")
    assert [p.name for p in paths] == ["0000.png", "0001.png", "0002.png", "0003.png"], "2 eval prompts x 2 samples"
    for i, path in enumerate(paths):
        want = pixels(run_dir / "eval" / "round-0001" / f"eval-p{i // 2}-k{i % 2}.png")
        got = pixels(path)
        assert np.abs(got - want).max() <= 2, f"image {i} differs from the run's final eval image"
    before = pixels(run_dir / "eval" / "round-0000" / "eval-p0-k0.png")
    assert np.abs(pixels(paths[0]) - before).max() > 2, "the LoRA changed the image (the test would be vacuous otherwise)"


def test_the_run_settings_can_be_overridden_and_nothing_is_overwritten(run_dir, tmp_path):
    out = tmp_path / "out"
    first = generate(None, ["a red car"], out, lora=run_dir, steps=2, device="cpu")
    second = generate(None, "a red car", out, lora=run_dir, steps=2, device="cpu")
    assert [p.name for p in first] == ["0000.png", "0001.png"] and [p.name for p in second] == ["0002.png", "0003.png"]
    lines = (out / "prompts.txt").read_text().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [[f"{i:04d}.png", "a red car"] for i in range(4)]
    assert np.array_equal(pixels(first[0]), pixels(second[0])), "same seeds, same settings: the same image"


def test_generate_cli_from_a_run(run_dir, tmp_path, capsys):
    assert main(["generate", "--lora", str(run_dir), "--out", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    assert "wrote 4 images" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "--steps must be >= 1, got 0"),
    ({"batch_size": 0}, "--batch-size must be >= 1, got 0"),
    ({"guidance_scale": float("nan")}, "--guidance-scale must be a finite number >= 0, got nan"),
    ({"num_images": 0}, "--num-images must be >= 1, got 0"),
    ({"eta": 1.5}, "--eta must be a number in [0, 1] (0 deterministic DDIM, 1 ancestral), got 1.5"),
])
def test_bad_generate_settings_are_refused(tiny_pipeline_dir, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        generate(str(tiny_pipeline_dir), ["a cat"], tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_a_scheduler_swap_never_inherits_clip_sample():
    import diffusers

    from raft_diffusion.diffusion.pipeline import make_scheduler

    dpm = diffusers.DPMSolverMultistepScheduler()
    config = {**dpm.config, "_class_name": "DPMSolverMultistepScheduler", "clip_sample": True}
    assert make_scheduler("ddim", config).config.clip_sample is False
    ddim = {**diffusers.DDIMScheduler(clip_sample=True).config, "_class_name": "DDIMScheduler"}
    assert make_scheduler("ddim", ddim).config.clip_sample is True, "the same class keeps its own setting"


def test_eta_reaches_the_sampler(run_dir, tmp_path):
    ddim = generate(None, ["a red car"], tmp_path / "a", lora=run_dir, scheduler="ddim", device="cpu")
    ancestral = generate(None, ["a red car"], tmp_path / "b", lora=run_dir, scheduler="ddim", eta=1.0, device="cpu")
    assert np.abs(pixels(ddim[0]) - pixels(ancestral[0])).max() > 2, "eta 1 draws fresh noise each step"
    again = main(["generate", "--lora", str(run_dir), "--prompt", "a red car", "--scheduler", "ddim", "--eta", "1",
                  "--out", str(tmp_path / "c"), "--device", "cpu"])
    assert again == 0 and np.array_equal(pixels(ancestral[0]), pixels(tmp_path / "c" / "0000.png"))


def test_the_miniworld_scheduler_config_swaps_without_clipping():
    # a user's swap in plain diffusers (DDIMScheduler.from_config) must not clip the latents to [-1, 1]:
    # DDIM's own default did, and erased the aesthetic LoRA's gain under DDIM
    import diffusers

    from raft_diffusion.miniworld import pipeline_path

    config = diffusers.DPMSolverMultistepScheduler.from_pretrained(pipeline_path(), subfolder="scheduler").config
    for name in ("DDIMScheduler", "DDPMScheduler"):
        assert getattr(diffusers, name).from_config(config).config.clip_sample is False, name


def test_a_string_is_one_prompt(tmp_path):
    paths = generate("tiny", "cat", tmp_path / "out", steps=1, device="cpu")
    assert len(paths) == 1, "'cat' is one prompt, not three letters"
    assert (tmp_path / "out" / "prompts.txt").read_text().split("\t")[1] == "cat"
