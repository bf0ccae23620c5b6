"""The miniworld's independent evaluator: a small CNN that reads the shape and colour of a scene.

It is trained only on freshly rendered scenes (:mod:`evaluator_train`), never on any model's outputs
nor on the reward's outputs or gradients, so it can judge RAFT runs without sharing the reward's
blind spots. It reads:

* the shape of the first-named object, one of the world's four or :data:`OTHER`: a shape the world
  does not have (an ellipse, a rotated or stretched shape, an irregular blob). A generated blob is
  not a circle, square, triangle or cross, and the evaluator says so instead of picking the nearest;
* its colour; the background, the number of objects, the second object's colour, the objects'
  centroid and mean radius: what the aesthetic rule (:mod:`rating`) needs, so :func:`gold_ratings`
  applies the written-down rule to what it sees in a generated image.

Inputs of any size are brought to 32 px by :func:`to_input`. ``assets/evaluator/`` holds the
committed weights (float16 ``model.safetensors`` + ``config.json``);
``python -m raft_diffusion.miniworld.evaluator_train OUT`` retrains them (2,500 steps; 47 minutes on a
shared 2-core CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
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
OTHER = "other"
"""The shape read for anything that is none of the world's four shapes."""
SHAPES: tuple[str, ...] = (*world.SHAPES, OTHER)
COLOURS: tuple[str, ...] = tuple(world.COLOURS)
BACKGROUNDS: tuple[str, ...] = tuple(world.BACKGROUNDS)


def evaluator_path() -> Path:
    """The committed evaluator folder."""
    from raft_diffusion.miniworld import assets_dir

    return assets_dir() / "evaluator"


class EvaluatorNet(nn.Module):
    """Three conv blocks (conv 3x3, ReLU, max-pool 2) on 32 px, then one hidden layer with the shape (5 classes)
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
        """(shape logits (N, 5), colour logits (N, 6)) of 32-px images in [0, 1]."""
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


class GoldScorer(IndependentScorer):
    """The ``miniworld-gold`` scorer: the gold rating of each image (the rating rule applied to the
    independent evaluator's reading), float (N,) in [1, 10]; prompts unused."""

    needs_prompts = False

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(path)
        self.name = "miniworld-gold"

    def __call__(
        self, outputs: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> torch.Tensor:
        from scorers.base import check_images

        return self.evaluator().gold_ratings(check_images(outputs, self.name))


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
