"""The hand-written ``miniworld-shape`` reward reads the shape of renders at 32 and 16 px, ranks the
prompted shape above the others, and is a registered scorer."""

from __future__ import annotations

import pytest
import torch

import scorers
from raft_diffusion.miniworld import evaluator, shape_reward, world


@pytest.mark.parametrize("resolution,floor", [(32, 0.97), (16, 0.95)])
@pytest.mark.parametrize("ood", [False, True])
def test_reads_heldout_shapes(resolution, floor, ood):
    scenes = world.heldout_scenes(200, ood=ood)
    images = world.render_batch(scenes)
    if resolution != 32:
        images = evaluator.downsample(images, resolution)
    read = shape_reward.read_shapes(images)
    acc = sum(r == s.objects[0].shape for r, s in zip(read, scenes)) / len(scenes)
    assert acc >= floor, acc


def test_reads_shapes_through_the_vae_at_16_px():
    """Decoded 16 px images are blurred: the blurred templates at several sizes still name the shape of
    most renders passed through the committed VAE (sharp templates at one size by soft IoU: 48%)."""
    from diffusers import AutoencoderKL

    from raft_diffusion.miniworld import pipeline_path

    scenes = world.heldout_scenes(200)
    x = evaluator.downsample(world.render_batch(scenes), 16)
    vae = AutoencoderKL.from_pretrained(pipeline_path() / "vae")
    with torch.no_grad():
        decoded = (vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    read = shape_reward.read_shapes(decoded)
    assert sum(r == s.objects[0].shape for r, s in zip(read, scenes)) / len(scenes) >= 0.6


def test_foreground_of_plain_image_is_empty():
    grey = torch.full((2, 3, 16, 16), 0.5)
    assert float(shape_reward.foreground(grey).max()) == 0.0


def test_scorer_prefers_prompted_shape():
    scorer = scorers.build("miniworld-shape")
    assert scorer.needs_prompts is True
    scenes = world.heldout_scenes(40)
    images = world.render_batch(scenes)
    right = [f"a {s.objects[0].colour} {s.objects[0].shape}" for s in scenes]
    wrong = [f"a {s.objects[0].colour} {next(x for x in world.SHAPES if x != s.objects[0].shape)}" for s in scenes]
    r_right, r_wrong = scorer(images, right, [{}] * 40), scorer(images, wrong, [{}] * 40)
    assert r_right.shape == (40,) and bool(((r_right >= -1) & (r_right <= 1)).all())
    assert float((r_right > 0).float().mean()) >= 0.95
    assert bool((r_right > r_wrong).all())
    assert scorer(images[:1], ["a nice picture"], [{}]).tolist() == [0.0]


def test_an_empty_image_scores_lowest():
    scorer = scorers.build("miniworld-shape")
    scenes = world.heldout_scenes(20)
    images = evaluator.downsample(world.render_batch(scenes), 16)
    prompts = [world.caption(s) for s in scenes]
    blank = images[:, :, :1, :1].expand_as(images).clone()  # each image's background colour only
    assert scorer(blank, prompts, [{}] * 20).tolist() == [-1.0] * 20
    haze = blank + 0.08 * torch.rand(blank.shape, generator=torch.Generator().manual_seed(0))
    assert bool((scorer(haze.clamp(0, 1), prompts, [{}] * 20) < -0.9).all()), "a faint haze is not an object"
    drawn = scorer(images, prompts, [{}] * 20)
    assert bool((drawn > -1).all())


def test_faithful_filter_keeps_prompted_shape_and_colour():
    from types import SimpleNamespace

    scenes = world.heldout_scenes(40)
    images = world.render_batch(scenes)
    right = [f"a {s.objects[0].colour} {s.objects[0].shape}" for s in scenes]
    wrong_shape = [f"a {s.objects[0].colour} {next(x for x in world.SHAPES if x != s.objects[0].shape)}" for s in scenes]
    kept = shape_reward.faithful(SimpleNamespace(outputs=images, texts=right), [0.0] * 40)
    assert len(kept) == 40 and sum(kept) >= 34
    assert not any(shape_reward.faithful(SimpleNamespace(outputs=images, texts=wrong_shape), [0.0] * 40))
