"""``sampling.native_fraction``: a share of each prompt's candidates drawn at the model's native size
and shrunk to the target size before scoring; the eval images stay at the target size."""

from __future__ import annotations

import pytest
import torch

from prompts.types import Prompt
from raft_diffusion.api import build_loop
from raft_diffusion.config import validate
from raft_diffusion.core.records import History
from raft_diffusion.diffusion import sampling
from raft_diffusion.errors import ConfigError
from tests.test_diffusion_run import tiny_config

HALF = {"sampling.height": 16, "sampling.width": 16, "sampling.native_fraction": 0.5, "raft.k": 4}


def test_native_draw_size_keeps_the_aspect_and_the_size_factor():
    assert sampling.native_draw_size(16, 16, 32, 8) == (32, 32)
    assert sampling.native_draw_size(512, 512, 1024, 8) == (1024, 1024)
    h, w = sampling.native_draw_size(512, 768, 1024, 16)
    assert w == 1024 and h % 16 == 0 and abs(h / w - 512 / 768) < 0.02


def test_resize_images_shrinks_in_range_and_leaves_the_target_size_alone():
    images = torch.rand(3, 3, 32, 32)
    small = sampling.resize_images(images, 16, 16)
    assert small.shape == (3, 3, 16, 16) and small.min() >= 0 and small.max() <= 1
    assert torch.allclose(small.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.05), "a box-like filter keeps the mean colour"
    assert sampling.resize_images(small, 16, 16) is small


def test_candidates_mix_native_draws_and_target_draws(tiny_pipeline_dir, tmp_path):
    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "run", **HALF), progress=False)
    backend = loop.backend
    assert backend.native_draw == (32, 32)
    prompts = [Prompt("a photo of a cat"), Prompt("a red car")]
    seeds, ids = list(range(100, 108)), [f"s{i}" for i in range(8)]
    samples = backend.generate_candidates(prompts, 4, seeds, ids)
    native = samples.extras["native"]
    assert native.tolist() == [True, True, False, False] * 2, "the first half of each prompt's K"
    assert samples.outputs.shape == (8, 3, 16, 16) and samples.extras["latents"].shape[0] == 8

    texts = samples.texts
    drawn = backend._draw([texts[i] for i in (0, 1, 4, 5)], [seeds[i] for i in (0, 1, 4, 5)], 32, 32).images
    shrunk = sampling.resize_images(drawn, 16, 16)
    assert torch.allclose(samples.outputs[native], shrunk, atol=1e-6), "native draws with the same seeds, shrunk"
    encoded = sampling.encode_images(backend.family, shrunk)
    assert torch.allclose(samples.extras["latents"][native], encoded, atol=1e-5), "their latents encode the shrunk image"

    plain = backend.generate(prompts, 4, seeds, ids)
    assert not plain.extras["native"].any()
    assert torch.allclose(samples.outputs[~native], plain.outputs[~native], atol=1e-6), "the rest as generate draws them"
    assert not torch.allclose(samples.outputs[native], plain.outputs[native], atol=1e-3)


def test_a_run_reports_kept_native_and_evaluates_at_the_target_size(tiny_pipeline_dir, tmp_path):
    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "run", **HALF), progress=False)
    calls = []
    original = loop.backend.generate_candidates
    loop.backend.generate_candidates = lambda *a: calls.append(len(a[0])) or original(*a)
    loop.outputs.finish(loop.run())
    assert calls == [2, 2], "each round's candidates, never the eval images"
    rows = History.load(tmp_path / "run").rounds
    assert all(0.0 <= row["kept_native"] <= 1.0 for row in rows)
    assert (tmp_path / "run" / "rounds" / "round-0001" / "grid.png").exists()


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_fraction_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match=f"sampling.native_fraction must be in \\[0, 1\\].*got {value}"):
        validate(tiny_config("unused", "unused", **{"sampling.native_fraction": value}))


def test_native_candidates_need_a_target_below_the_native_size(tiny_pipeline_dir, tmp_path):
    cfg = tiny_config(tiny_pipeline_dir, tmp_path / "run", **{"sampling.native_fraction": 0.5})
    with pytest.raises(ConfigError, match="native_fraction = 0.5 .* native 32 px .* 32x32 is not smaller"):
        build_loop(cfg, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_native_candidates_in_every_family(family, tmp_path, one_thread):
    """Native draws go through each family's own sizes (SDXL's size ids, FLUX's packed latents and
    shift at the native size); the run's size is restored after."""
    flow = family in ("sd3", "flux")
    cfg = tiny_config(f"tiny-{family}", tmp_path / "run", **{**HALF, "raft.k": 2, "sampling.steps": 1},
                      **({"sampling.scheduler": None} if flow else {}))
    backend = build_loop(cfg, progress=False).backend
    samples = backend.generate_candidates([Prompt("a photo of a cat")], 2, [5, 6], ["a", "b"])
    assert samples.extras["native"].tolist() == [True, False]
    assert backend.family.size == (16, 16)
    native = sampling.resize_images(backend._draw(["a photo of a cat"], [5], *backend.native_draw).images, 16, 16)
    assert torch.allclose(samples.outputs[:1], native, atol=1e-5)
    assert samples.extras["latents"].shape == sampling.encode_images(backend.family, samples.outputs).shape
