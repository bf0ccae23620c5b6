"""The miniworld's independent evaluator: a small CNN that reads the shape and colour of a scene.

It is trained only on freshly rendered scenes (:func:`world.render`), never on any model's outputs nor
on the reward's outputs or gradients, so it can judge RAFT runs without sharing the reward's blind
spots. Labels and inputs:

* colour/shape pairs are drawn uniformly over all 24 pairs (out-of-domain pairs included: the
  evaluator must read the ``miniworld-ood`` prompts too);
* in two-object scenes (15%, as in the pretraining stream) the label is ``scene.objects[0]``, the
  object :func:`world.caption` names first (the left or the top one), matching
  :func:`world.parse_prompt`, which reads the first colour and the first shape of a prompt;
* every input is brought to 32 px by :func:`to_input`; half of the training images are rendered at
  32 px, area-downsampled to 16 px and brought back up, so 16-px generations are read as well;
* beside shape and colour it reads what the aesthetic rule (:mod:`rating`) needs: the background,
  the number of objects, the second object's colour, the objects' centroid and mean radius, so
  :func:`gold_ratings` applies the written-down rule to what it sees in a generated image.

``assets/evaluator/`` holds the committed weights (float16 ``model.safetensors`` + ``config.json``);
``python -m raft_diffusion.miniworld.evaluator OUT`` retrains them (about a minute on the CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raft_diffusion.miniworld import world

log = logging.getLogger(__name__)

INPUT_RESOLUTION = 32
LOW_RESOLUTION = 16
CHANNELS = (16, 32, 64)
HIDDEN = 64
SHAPES: tuple[str, ...] = world.SHAPES
COLOURS: tuple[str, ...] = tuple(world.COLOURS)
BACKGROUNDS: tuple[str, ...] = tuple(world.BACKGROUNDS)
GEOMETRY_WEIGHT = 20.0
"""Weight of the geometry regression (centroid x, y and mean radius, fractions of the side) in the loss."""


def evaluator_path() -> Path:
    """The committed evaluator folder."""
    from raft_diffusion.miniworld import assets_dir

    return assets_dir() / "evaluator"


class EvaluatorNet(nn.Module):
    """Three conv blocks (conv 3x3, ReLU, max-pool 2) on 32 px, then one hidden layer with the shape
    and colour heads and a second hidden layer with the heads for background, object count (1 or 2), the second object's colour, and the geometry (centroid
    x, y and mean radius)."""

    def __init__(self, channels: Sequence[int] = CHANNELS, hidden: int = HIDDEN) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = INPUT_RESOLUTION // 2 ** len(channels)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU())
        self.shape_head = nn.Linear(hidden, len(SHAPES))
        self.colour_head = nn.Linear(hidden, len(COLOURS))
        self.scene_hidden = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU())
        self.scene_head = nn.Linear(hidden, len(BACKGROUNDS) + 2 + len(COLOURS) + 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shape logits (N, 4), colour logits (N, 6)) of 32-px images in [0, 1]."""
        return self.read_all(x)[:2]

    def read_all(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shape, colour, background, count, second colour) logits and geometry (N, 3) of 32-px images."""
        f = self.features(x * 2 - 1)
        h = self.hidden(f)
        rest = self.scene_head(self.scene_hidden(f))
        b, c = len(BACKGROUNDS), len(COLOURS)
        return (self.shape_head(h), self.colour_head(h), rest[:, :b], rest[:, b : b + 2],
                rest[:, b + 2 : b + 2 + c], rest[:, b + 2 + c :])


def to_input(images: torch.Tensor) -> torch.Tensor:
    """Bring (N, 3, H, W) images in [0, 1] to the network's 32 px: bilinear up, area down."""
    x = images.float()
    if tuple(x.shape[-2:]) == (INPUT_RESOLUTION, INPUT_RESOLUTION):
        return x
    mode = "area" if min(x.shape[-2:]) > INPUT_RESOLUTION else "bilinear"
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x, size=(INPUT_RESOLUTION, INPUT_RESOLUTION), mode=mode, **kwargs).clamp(0, 1)


def downsample(images: torch.Tensor, resolution: int = LOW_RESOLUTION) -> torch.Tensor:
    """Area-downsample square images to ``resolution`` (how 16-px test images are made from renders)."""
    return F.interpolate(images, size=(resolution, resolution), mode="area")


def training_scene(rng: random.Random) -> world.Scene:
    """A scene of the pretraining stream's layout with its colour/shape pairs redrawn over all 24 pairs."""
    scene = world.sample_scene(rng)
    objects = tuple(
        dataclasses.replace(o, colour=rng.choice(COLOURS), shape=rng.choice(SHAPES)) for o in scene.objects
    )
    return dataclasses.replace(scene, objects=objects)


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


def training_batch(rng: random.Random, gen: torch.Generator, batch: int) -> tuple[torch.Tensor, ...]:
    """(images, *labels): half at 32 px, half through 16 px; light pixel noise."""
    scenes = [training_scene(rng) for _ in range(batch)]
    images = world.render_batch(scenes)
    low = torch.rand(batch, generator=gen) < 0.5
    images[low] = to_input(downsample(images[low]))
    sigma = 0.04 * torch.rand(batch, 1, 1, 1, generator=gen)
    images = (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0, 1)
    return (images, *labels(scenes))


def train_evaluator(seed: int = 0, steps: int = 1500, out_dir: str | Path = "evaluator", *,
                    batch: int = 128, lr: float = 2e-3) -> Path:
    """Train the evaluator from ``seed`` (must differ from :data:`world.HELDOUT_SEED`) and write
    ``config.json`` + float16 ``model.safetensors`` into ``out_dir``; returns ``out_dir``."""
    from safetensors.torch import save_file

    if seed == world.HELDOUT_SEED:
        raise ValueError("the training seed must differ from world.HELDOUT_SEED")
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
              "backgrounds": list(BACKGROUNDS),
              "seed": seed, "steps": steps, "batch": batch, "lr": lr,
              "train_seconds": round(time.time() - start, 1)}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


class Evaluator:
    """A loaded :class:`EvaluatorNet` with its label names; reads images in batches on the CPU."""

    def __init__(self, model: EvaluatorNet, config: dict[str, Any]) -> None:
        self.model, self.config = model.eval(), config
        self.shapes, self.colours = tuple(config["shapes"]), tuple(config["colours"])
        self.backgrounds = tuple(config["backgrounds"])

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch: int = 512) -> tuple[list[str], list[str]]:
        """(shapes, colours) named for (N, 3, H, W) images in [0, 1]."""
        shapes, colours = [], []
        for i in range(0, len(images), batch):
            s, c = self.model(to_input(images[i : i + batch].detach().cpu()))
            shapes += [self.shapes[j] for j in s.argmax(1).tolist()]
            colours += [self.colours[j] for j in c.argmax(1).tolist()]
        return shapes, colours

    @torch.no_grad()
    def read_scenes(self, images: torch.Tensor, batch: int = 512) -> list[world.Scene]:
        """The scene read in each of (N, 3, H, W) images in [0, 1]: one or two objects at the read
        centroid with the read mean radius (all the rating rule needs; sizes and positions are not words)."""
        scenes = []
        for i in range(0, len(images), batch):
            parts = self.model.read_all(to_input(images[i : i + batch].detach().cpu()))
            shape, colour, background, count, second = (p.argmax(1).tolist() for p in parts[:5])
            for j, (x, y, r) in enumerate(parts[5].tolist()):
                first = world.WorldObject(self.shapes[shape[j]], self.colours[colour[j]], "", "", x, y, r)
                objects = (first,) if count[j] == 0 else (
                    first, dataclasses.replace(first, colour=self.colours[second[j]]))
                scenes.append(world.Scene(objects=objects, background=self.backgrounds[background[j]]))
        return scenes

    def gold_ratings(self, images: torch.Tensor) -> torch.Tensor:
        """The aesthetic rule (:func:`rating.rating`) applied to the scene read in each image: float (N,) in [1, 10]."""
        from raft_diffusion.miniworld import rating

        return torch.tensor([rating.rating(s) for s in self.read_scenes(images)])

    def correctness(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(shape correct, colour correct) as float tensors (N,) of 0/1 against :func:`world.parse_prompt`."""
        shapes, colours = self.read(images)
        want = [world.parse_prompt(p) for p in prompts]
        shape_ok = torch.tensor([float(s == w[1]) for s, w in zip(shapes, want)])
        colour_ok = torch.tensor([float(c == w[0]) for c, w in zip(colours, want)])
        return shape_ok, colour_ok

    def accuracy(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[float, float]:
        """(shape accuracy, colour accuracy) in [0, 1] against the prompts' shape and colour."""
        shape_ok, colour_ok = self.correctness(images, prompts)
        return shape_ok.mean().item(), colour_ok.mean().item()


def load_evaluator(path: str | Path | None = None) -> Evaluator:
    """Load an evaluator folder (default: the committed ``assets/evaluator/``), in float32."""
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else evaluator_path()
    config = json.loads((folder / "config.json").read_text())
    model = EvaluatorNet(config["channels"], config["hidden"])
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()})
    return Evaluator(model, config)


@functools.lru_cache(maxsize=1)
def default_evaluator() -> Evaluator:
    """The committed evaluator, loaded once per process."""
    return load_evaluator()


def read(images: torch.Tensor) -> tuple[list[str], list[str]]:
    """(shapes, colours) named by the committed evaluator."""
    return default_evaluator().read(images)


def accuracy(images: torch.Tensor, prompts: Sequence[str]) -> tuple[float, float]:
    """(shape accuracy, colour accuracy) of the committed evaluator against the prompts."""
    return default_evaluator().accuracy(images, prompts)


def gold_ratings(images: torch.Tensor) -> torch.Tensor:
    """The gold aesthetic rating of each image (the rule applied to the committed evaluator's reading), float (N,)."""
    return default_evaluator().gold_ratings(images)


class IndependentScorer:
    """The ``miniworld-independent`` scorer: per image (shape right + colour right) / 2 by the
    independent evaluator, in {0, 0.5, 1} (``part='shape'`` or ``'colour'`` for one of them)."""

    needs_prompts = True

    def __init__(self, path: str | Path | None = None, part: str = "both") -> None:
        if part not in ("both", "shape", "colour"):
            from raft_diffusion.errors import ScorerError

            raise ScorerError(f"miniworld-independent part must be 'both', 'shape' or 'colour', got {part!r}")
        self.path, self.part, self.name = path, part, "miniworld-independent"
        self._evaluator: Evaluator | None = None

    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = default_evaluator() if self.path is None else load_evaluator(self.path)
        return self._evaluator

    def __call__(
        self, outputs: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> torch.Tensor:
        from scorers.base import check_images

        shape_ok, colour_ok = self.evaluator().correctness(check_images(outputs, self.name), prompts)
        if self.part == "shape":
            return shape_ok
        if self.part == "colour":
            return colour_ok
        return (shape_ok + colour_ok) / 2


def heldout_accuracy(evaluator: Evaluator, n: int = 1000, *, ood: bool = False, single: bool = True,
                     resolution: int = INPUT_RESOLUTION) -> tuple[float, float]:
    """(shape, colour) accuracy on :func:`world.heldout_scenes` rendered at 32 px, area-downsampled to
    ``resolution`` when lower; the label is each scene's caption."""
    scenes = world.heldout_scenes(n, ood=ood, single=single)
    images = world.render_batch(scenes)
    if resolution != INPUT_RESOLUTION:
        images = downsample(images, resolution)
    return evaluator.accuracy(images, [world.caption(s) for s in scenes])


def heldout_rating_agreement(evaluator: Evaluator, n: int = 1000, *,
                             resolution: int = INPUT_RESOLUTION) -> dict[str, float]:
    """Spearman correlation and mean absolute error of the gold rating read from held-out renders
    (single- and two-object, at ``resolution``) against the rule applied to the true scenes."""
    from raft_diffusion.miniworld import rating
    from raft_diffusion.miniworld.train_aesthetic import spearman

    scenes = world.heldout_scenes(n, single=False)
    images = world.render_batch(scenes)
    if resolution != INPUT_RESOLUTION:
        images = downsample(images, resolution)
    truth = torch.tensor([rating.rating(s) for s in scenes])
    read = evaluator.gold_ratings(images)
    return {"spearman": round(spearman(read, truth), 4), "mae": round(float((read - truth).abs().mean()), 4)}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m raft_diffusion.miniworld.evaluator OUT [--seed S] [--steps N]``: train and report."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", nargs="?", default=str(evaluator_path()))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = train_evaluator(args.seed, args.steps, args.out)
    ev = load_evaluator(out)
    report = {}
    for res in (INPUT_RESOLUTION, LOW_RESOLUTION):
        for tag, ood, single in (("", False, True), ("ood_", True, True), ("two_", False, False)):
            s, c = heldout_accuracy(ev, ood=ood, single=single, resolution=res)
            report[f"{tag}{res}px"] = {"shape_acc": round(s, 4), "colour_acc": round(c, 4)}
        report[f"rating_{res}px"] = heldout_rating_agreement(ev, resolution=res)
    config = json.loads((out / "config.json").read_text())
    config["heldout"] = report
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    log.info("held-out accuracy: %s", json.dumps(report))


if __name__ == "__main__":
    main()
