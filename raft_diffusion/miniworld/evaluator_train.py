"""Training the independent evaluator (:mod:`evaluator`) on freshly rendered scenes only.

Labels and inputs:

* colour/shape pairs are drawn uniformly over all 24 pairs (out-of-domain pairs included: the
  evaluator must read the ``miniworld-ood`` prompts too);
* in :data:`OTHER_PROB` of the scenes the first object is drawn as a shape the world does not have
  (:func:`other_mask`: an ellipse, a rotated or stretched world shape, an irregular blob) and
  labelled :data:`evaluator.OTHER`;
* in two-object scenes (15%, as in the pretraining stream) the label is ``scene.objects[0]``, the
  object :func:`world.caption` names first (the left or the top one), matching
  :func:`world.parse_prompt`, which reads the first colour and the first shape of a prompt;
* half of the images are area-downsampled to 16 px and brought back up, a quarter are blurred, all
  get light pixel noise, so blurry and low-resolution generations are read as well.

``python -m raft_diffusion.miniworld.evaluator_train OUT [--seed S] [--steps N]`` trains and reports
the held-out accuracy (seed 0 made the committed weights).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from raft_diffusion.miniworld import world
from raft_diffusion.miniworld.evaluator import (
    BACKGROUNDS,
    CHANNELS,
    COLOURS,
    HIDDEN,
    INPUT_RESOLUTION,
    LOW_RESOLUTION,
    OTHER,
    SHAPES,
    EvaluatorNet,
    downsample,
    evaluator_path,
    heldout_accuracy,
    heldout_rating_agreement,
    load_evaluator,
    to_input,
)

log = logging.getLogger(__name__)

OTHER_PROB = 0.3
GEOMETRY_WEIGHT = 20.0
"""Weight of the geometry regression (centroid x, y and mean radius, fractions of the side) in the loss."""
OTHER_HELDOUT_SEED = world.HELDOUT_SEED + 31
Mask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _rotate(u: torch.Tensor, v: torch.Tensor, angle: float) -> tuple[torch.Tensor, torch.Tensor]:
    c, s = math.cos(angle), math.sin(angle)
    return c * u + s * v, -s * u + c * v


def other_mask(rng: random.Random) -> Mask:
    """A random inside-test ``(u, v) -> bool`` (object coordinates, radius 1) of a shape the world lacks:
    an ellipse (axis ratio 0.3-0.6, any angle), a world shape rotated off its axes or stretched
    (1.6-2.5 x along one axis), or an irregular blob (a radius wobbling with 2-4 lobes)."""
    kind = rng.choice(["ellipse", "rotated", "stretched", "blob"])
    if kind == "ellipse":
        ratio, angle = rng.uniform(0.3, 0.6), rng.uniform(0, math.pi)

        def inside(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            a, b = _rotate(u, v, angle)
            return a * a + (b / ratio) ** 2 <= 1.0
        return inside
    if kind in ("rotated", "stretched"):
        shape = rng.choice(["square", "triangle", "cross"] if kind == "rotated" else list(world.SHAPES))
        turn = {"triangle": (0.5, 2 * math.pi - 0.5)}.get(shape, (0.3, math.pi / 2 - 0.3))
        angle = rng.uniform(*turn) if kind == "rotated" else 0.0
        sx, sy = (rng.uniform(1.6, 2.5), 1.0) if rng.random() < 0.5 else (1.0, rng.uniform(1.6, 2.5))
        if kind == "rotated":
            sx = sy = 1.0

        def inside(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            a, b = _rotate(u, v, angle)
            return world._shape_mask(shape, a * sx, b * sy)
        return inside
    lobes = [(k, rng.uniform(0.12, 0.3), rng.uniform(0, 2 * math.pi)) for k in rng.sample([2, 3, 4], 2)]

    def inside(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        phi = torch.atan2(v, u)
        r = 0.85 * (1 + sum(a * torch.cos(k * phi + p) for k, a, p in lobes))
        return u * u + v * v <= r * r
    return inside


def training_scene(rng: random.Random) -> tuple[world.Scene, list[Mask | None]]:
    """A scene of the pretraining stream's layout with its colour/shape pairs redrawn over all 24
    pairs, and per object the inside-test replacing its shape (None: its own shape). A first object
    drawn as another shape is labelled :data:`OTHER`."""
    scene = world.sample_scene(rng)
    objects = [dataclasses.replace(o, colour=rng.choice(COLOURS), shape=rng.choice(world.SHAPES)) for o in scene.objects]
    masks: list[Mask | None] = [None] * len(objects)
    if rng.random() < OTHER_PROB:
        masks[0] = other_mask(rng)
        objects[0] = dataclasses.replace(objects[0], shape=OTHER)
    return dataclasses.replace(scene, objects=tuple(objects)), masks


def labels(scenes: Sequence[world.Scene]) -> tuple[torch.Tensor, ...]:
    """(shape, colour, background, count - 1, second colour) indices (second colour -100 for one
    object: ignored by the loss) and the geometry (N, 3): centroid x, y and mean radius."""
    shapes = torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes])
    colours = torch.tensor([COLOURS.index(s.objects[0].colour) for s in scenes])
    backgrounds = torch.tensor([BACKGROUNDS.index(s.background) for s in scenes])
    counts = torch.tensor([len(s.objects) - 1 for s in scenes])
    second = torch.tensor([COLOURS.index(s.objects[1].colour) if len(s.objects) > 1 else -100 for s in scenes])
    geometry = torch.tensor([[sum(getattr(o, k) for o in s.objects) / len(s.objects) for k in ("x", "y", "radius")]
                             for s in scenes])
    return shapes, colours, backgrounds, counts, second, geometry


def loss(model: EvaluatorNet, images: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """The training loss: cross-entropy of every class head plus the weighted geometry MSE."""
    *logits, geometry = model.read_all(images)
    *classes, geometry_target = targets
    total = sum(F.cross_entropy(lg, t, ignore_index=-100) for lg, t in zip(logits, classes)
                if bool((t != -100).any()))
    return total + GEOMETRY_WEIGHT * F.mse_loss(geometry, geometry_target)


def blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of (N, 3, H, W) images with a per-image ``sigma`` (N,) in pixels (5x5 kernel)."""
    x = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    k = k / k.sum(1, keepdim=True)  # (N, 5)
    n, c, h, w = images.shape
    flat = images.reshape(1, n * c, h, w)
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    out = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), kx, groups=n * c)
    out = F.conv2d(F.pad(out, (0, 0, 2, 2), mode="replicate"), ky, groups=n * c)
    return out.reshape(n, c, h, w)


def training_batch(rng: random.Random, gen: torch.Generator, batch: int) -> tuple[torch.Tensor, ...]:
    """(images, *labels): half through 16 px, a quarter blurred (sigma up to 1.2 px), light pixel noise."""
    drawn = [training_scene(rng) for _ in range(batch)]
    scenes = [s for s, _ in drawn]
    images = torch.stack([world.render(s, masks=m) for s, m in drawn])
    low = torch.rand(batch, generator=gen) < 0.5
    images[low] = to_input(downsample(images[low]))
    blurred = torch.rand(batch, generator=gen) < 0.25
    if bool(blurred.any()):
        images[blurred] = blur(images[blurred], 1.2 * torch.rand(int(blurred.sum()), generator=gen))
    sigma = 0.04 * torch.rand(batch, 1, 1, 1, generator=gen)
    images = (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0, 1)
    return (images, *labels(scenes))


def train_evaluator(seed: int = 0, steps: int = 2500, out_dir: str | Path = "evaluator", *,
                    batch: int = 128, lr: float = 2e-3) -> Path:
    """Train the evaluator from ``seed`` (must differ from :data:`world.HELDOUT_SEED`) and write
    ``config.json`` + float16 ``model.safetensors`` into ``out_dir``; returns ``out_dir``."""
    from safetensors.torch import save_file

    if seed in (world.HELDOUT_SEED, OTHER_HELDOUT_SEED):
        raise ValueError("the training seed must differ from the held-out seeds")
    torch.manual_seed(seed)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    model = EvaluatorNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.time()
    for step in range(steps):
        images, *targets = training_batch(rng, gen, batch)
        value = loss(model, images, targets)
        opt.zero_grad()
        value.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log.info("evaluator step %d/%d loss %.4f (%.0f s)", step + 1, steps, value.item(), time.time() - start)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / "model.safetensors"))
    config = {"kind": "miniworld-evaluator-cnn", "channels": list(CHANNELS), "hidden": HIDDEN,
              "input_resolution": INPUT_RESOLUTION, "shapes": list(SHAPES), "colours": list(COLOURS),
              "backgrounds": list(BACKGROUNDS), "seed": seed, "steps": steps, "batch": batch, "lr": lr,
              "other_prob": OTHER_PROB, "train_seconds": round(time.time() - start, 1)}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def heldout_other(evaluator, n: int = 500, *, resolution: int = INPUT_RESOLUTION) -> float:
    """Fraction of held-out shapes the world lacks (:func:`other_mask`, a fixed seed no training run
    uses) that ``evaluator`` reads as :data:`OTHER`."""
    rng = random.Random(OTHER_HELDOUT_SEED)
    scenes = world.heldout_scenes(n)
    images = torch.stack([world.render(s, masks=[other_mask(rng)]) for s in scenes])
    if resolution != INPUT_RESOLUTION:
        images = downsample(images, resolution)
    shapes, _ = evaluator.read(images)
    return sum(s == OTHER for s in shapes) / n


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m raft_diffusion.miniworld.evaluator_train OUT [--seed S] [--steps N]``: train and report."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", nargs="?", default=str(evaluator_path()))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = train_evaluator(args.seed, args.steps, args.out)
    ev = load_evaluator(out)
    report = {}
    for res in (INPUT_RESOLUTION, LOW_RESOLUTION):
        for tag, ood, single in (("", False, True), ("ood_", True, True), ("two_", False, False)):
            s, c = heldout_accuracy(ev, ood=ood, single=single, resolution=res)
            report[f"{tag}{res}px"] = {"shape_acc": round(s, 4), "colour_acc": round(c, 4)}
        report[f"other_{res}px"] = round(heldout_other(ev, resolution=res), 4)
        report[f"rating_{res}px"] = heldout_rating_agreement(ev, resolution=res)
    config = json.loads((out / "config.json").read_text())
    config["heldout"] = report
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    log.info("held-out accuracy: %s", json.dumps(report))


if __name__ == "__main__":
    main()
