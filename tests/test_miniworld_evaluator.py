"""The miniworld's independent evaluator: committed weights read held-out renders at 32 and 16 px, the
``miniworld-independent`` scorer works through ``scorers.build``, and training is deterministic."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import scorers
from raft_diffusion.miniworld import evaluator, evaluator_train, world


@pytest.fixture(scope="module")
def committed() -> evaluator.Evaluator:
    return evaluator.load_evaluator()


def test_committed_weights_small():
    size = (evaluator.evaluator_path() / "model.safetensors").stat().st_size
    assert size < 400_000


@pytest.mark.parametrize("resolution,floor", [(32, 0.95), (16, 0.9)])
@pytest.mark.parametrize("ood", [False, True])
def test_heldout_accuracy(committed, resolution, floor, ood):
    # held-out scenes come from world.HELDOUT_SEED; the committed evaluator was trained from seed 0
    assert committed.config["seed"] != world.HELDOUT_SEED
    shape_acc, colour_acc = evaluator.heldout_accuracy(committed, 400, ood=ood, resolution=resolution)
    assert shape_acc >= floor and colour_acc >= floor, (shape_acc, colour_acc)


def test_two_object_scenes_read_first_named(committed):
    shape_acc, colour_acc = evaluator.heldout_accuracy(committed, 400, single=False)
    assert shape_acc >= 0.9 and colour_acc >= 0.9, (shape_acc, colour_acc)


def test_read_any_size(committed):
    scenes = world.heldout_scenes(8)
    images = world.render_batch(scenes, 64)
    shapes, colours = committed.read(images)
    assert shapes == [s.objects[0].shape for s in scenes]
    assert colours == [s.objects[0].colour for s in scenes]


def test_module_level_read_and_accuracy():
    scenes = world.heldout_scenes(16)
    images = world.render_batch(scenes)
    shapes, colours = evaluator.read(images)
    assert len(shapes) == len(colours) == 16
    assert evaluator.accuracy(images, [world.caption(s) for s in scenes]) == (1.0, 1.0)


def test_scorer_registered_and_builds():
    assert "miniworld-independent" in scorers.available()
    scorer = scorers.build("miniworld-independent")
    assert scorer.needs_prompts is True
    scenes = world.heldout_scenes(4)
    images = world.render_batch(scenes)
    right = [world.caption(s) for s in scenes]
    assert scorer(images, right, [{}] * 4).tolist() == [1.0] * 4
    # the wrong colour with the right shape scores 0.5; both wrong scores 0
    wrong_colour, wrong_both = [], []
    for s in scenes:
        obj = s.objects[0]
        other_colour = next(c for c in world.COLOURS if c != obj.colour)
        other_shape = next(sh for sh in world.SHAPES if sh != obj.shape)
        wrong_colour.append(f"a {other_colour} {obj.shape}")
        wrong_both.append(f"a {other_colour} {other_shape}")
    assert scorer(images, wrong_colour, [{}] * 4).tolist() == [0.5] * 4
    assert scorer(images, wrong_both, [{}] * 4).tolist() == [0.0] * 4
    shape_only = scorers.build("miniworld-independent", part="shape")
    assert shape_only(images, wrong_colour, [{}] * 4).tolist() == [1.0] * 4


def test_bad_part_refused():
    from raft_diffusion.errors import ScorerError

    with pytest.raises(ScorerError):
        scorers.build("miniworld-independent", part="size")


def test_retrain_deterministic(tmp_path):
    a = evaluator_train.train_evaluator(seed=3, steps=4, out_dir=tmp_path / "a", batch=32)
    b = evaluator_train.train_evaluator(seed=3, steps=4, out_dir=tmp_path / "b", batch=32)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = evaluator_train.train_evaluator(seed=4, steps=4, out_dir=tmp_path / "c", batch=32)
    wc = load_file(str(c / "model.safetensors"))
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    loaded = evaluator.load_evaluator(a)
    assert loaded.config["seed"] == 3 and loaded.config["steps"] == 4


def test_heldout_seed_refused(tmp_path):
    for seed in (world.HELDOUT_SEED, evaluator_train.OTHER_HELDOUT_SEED):
        with pytest.raises(ValueError):
            evaluator_train.train_evaluator(seed=seed, steps=1, out_dir=tmp_path)


@pytest.mark.parametrize("resolution", [32, 16])
def test_shapes_the_world_lacks_read_as_other(committed, resolution):
    # a blob is not a circle: ellipses, rotated / stretched shapes and irregular blobs are rejected
    assert evaluator_train.heldout_other(committed, 300, resolution=resolution) >= 0.85


def test_other_never_counts_as_prompted_shape(committed):
    import random

    rng = random.Random(3)
    scenes = world.heldout_scenes(40)
    images = torch.stack([world.render(s, masks=[evaluator_train.other_mask(rng)]) for s in scenes])
    shape_ok, colour_ok = committed.correctness(images, [world.caption(s) for s in scenes])
    assert float(shape_ok.mean()) <= 0.15 and float(colour_ok.mean()) >= 0.9


@pytest.mark.parametrize("resolution", [32, 16])
def test_gold_rating_read_from_renders(committed, resolution):
    # the rule applied to what the evaluator reads agrees with the rule applied to the true scene
    agreement = evaluator.heldout_rating_agreement(committed, 400, resolution=resolution)
    assert agreement["spearman"] >= 0.9 and agreement["mae"] <= 0.5, agreement


def test_read_scenes_background_and_count(committed):
    scenes = world.heldout_scenes(200, single=False)
    read = committed.read_scenes(world.render_batch(scenes))
    assert sum(r.background == s.background for r, s in zip(read, scenes)) >= 195
    assert sum(len(r.objects) == len(s.objects) for r, s in zip(read, scenes)) >= 190
    ratings = evaluator.gold_ratings(world.render_batch(scenes[:5]))
    assert ratings.shape == (5,) and bool(((ratings >= 1) & (ratings <= 10)).all())


def test_gold_scorer_is_the_rule_on_the_reading():
    import scorers
    from raft_diffusion.miniworld import rating

    scenes = world.heldout_scenes(60)
    images = world.render_batch(scenes)
    gold = scorers.build("miniworld-gold")(images, ["ignored"] * 60, [{}] * 60)
    assert gold.shape == (60,) and torch.equal(gold, evaluator.gold_ratings(images))
    truth = torch.tensor([rating.rating(s) for s in scenes])
    assert float((gold - truth).abs().mean()) <= 0.5
