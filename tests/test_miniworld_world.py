"""The procedural world: deterministic by seed, out-of-domain pairs kept out, well-formed renders."""

import random

import torch

from raft_diffusion.miniworld import rating, world


def _scenes(seed, n=50):
    rng = random.Random(seed)
    return [world.sample_scene(rng) for _ in range(n)]


def test_deterministic_by_seed():
    a, b = _scenes(3), _scenes(3)
    assert a == b
    assert a != _scenes(4)
    assert torch.equal(world.render_batch(a[:4]), world.render_batch(b[:4]))
    r1, r2 = random.Random(9), random.Random(9)
    assert [world.caption(s, r1) for s in a] == [world.caption(s, r2) for s in b]
    i1, c1, _ = next(world.stream(5, 4))
    i2, c2, _ = next(world.stream(5, 4))
    assert torch.equal(i1, i2) and c1 == c2
    assert world.heldout_scenes(20) == world.heldout_scenes(20)


def test_render_shape_and_range():
    img = world.render(_scenes(0, 1)[0])
    assert img.shape == (3, world.NATIVE_RESOLUTION, world.NATIVE_RESOLUTION) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert world.render(_scenes(0, 1)[0], 48).shape == (3, 48, 48)


def _pairs_in(text):
    words = text.split()
    return {(words[i], words[i + 1]) for i in range(len(words) - 1)}


def test_ood_pairs_never_in_domain():
    rng = random.Random(0)
    for images, captions, scenes in [next(world.stream(s, 40)) for s in range(3)] + [(None, None, _scenes(7, 600))]:
        captions = captions or [world.caption(x, rng) for x in scenes]
        for cap, scene in zip(captions, scenes):
            assert not _pairs_in(cap) & world.OOD_COMBOS
            assert all((o.colour, o.shape) not in world.OOD_COMBOS for o in scene.objects)
            assert not _pairs_in(world.caption(scene, rng)) & world.OOD_COMBOS
    for p in world.in_domain_prompts():
        assert world.parse_prompt(p) not in world.OOD_COMBOS
    ood = world.out_of_domain_prompts()
    assert {world.parse_prompt(p) for p in ood} == set(world.OOD_COMBOS)
    assert all(len(s.objects) == 1 and (s.objects[0].colour, s.objects[0].shape) in world.OOD_COMBOS
               for s in world.heldout_scenes(50, ood=True))
    assert not set(world.in_domain_prompts()) & set(ood)


def test_caption_template():
    s = world.Scene((world.WorldObject("circle", "red", "large", "in the centre", 0.5, 0.5, 0.3),), "blue")
    assert world.caption(s) == "a large red circle in the centre on a blue background"
    assert world.parse_prompt("an orange cross") == ("orange", "cross")


def test_rating_prefers_centred_contrast_large_single():
    good = world.Scene((world.WorldObject("circle", "yellow", "large", "in the centre", 0.5, 0.5, 0.3),), "black")
    bad = world.Scene((world.WorldObject("circle", "yellow", "small", "on the left", 0.3, 0.5, 0.14),), "white")
    assert 1.0 <= rating.rating(bad) < rating.rating(good) <= 10.0
    assert all(0.0 <= v <= 1.0 for v in rating.components(bad).values())
