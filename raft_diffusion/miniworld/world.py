"""The miniworld: seeded procedural images of simple objects, with template captions.

A scene is one or two flat-coloured objects (a shape, a colour, a size, a position) on a plain
background. :func:`render` draws it anti-aliased (4x supersampling) as a float tensor (3, H, W) in
[0, 1]; :func:`caption` describes it ("a large red circle in the centre on a black background").

Out-of-domain combinations: the shape+colour pairs in :data:`OOD_COMBOS` never appear in
:func:`sample_scene` (the stream every pretraining run draws from) nor in :func:`in_domain_prompts`
(the RAFT prompt set); :func:`out_of_domain_prompts` asks for exactly them (the paper's CIFAR-100
role). Everything is deterministic given a seed (``random.Random`` for scene parameters).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.95, 0.90, 0.15),
    "green": (0.10, 0.68, 0.20),
    "blue": (0.15, 0.30, 0.92),
    "purple": (0.60, 0.20, 0.75),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.06, 0.06, 0.06),
    "white": (0.94, 0.94, 0.94),
    "gray": (0.50, 0.50, 0.50),
}
SIZES: dict[str, tuple[float, float]] = {"small": (0.13, 0.19), "large": (0.26, 0.34)}
"""Object radius as a fraction of the image side, per size word."""
POSITIONS: dict[str, tuple[float, float]] = {
    "in the centre": (0.5, 0.5),
    "on the left": (0.3, 0.5),
    "on the right": (0.7, 0.5),
    "at the top": (0.5, 0.3),
    "at the bottom": (0.5, 0.7),
}
"""Anchor (x, y) of each position phrase, as fractions of the image side (y grows downwards)."""
POSITION_JITTER = 0.05
OOD_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {
        ("yellow", "circle"),
        ("purple", "circle"),
        ("red", "square"),
        ("green", "square"),
        ("blue", "triangle"),
        ("orange", "triangle"),
        ("yellow", "cross"),
        ("purple", "cross"),
    }
)
"""(colour, shape) pairs kept out of all pretraining data and in-domain prompts."""
TWO_OBJECT_PROB = 0.15
NATIVE_RESOLUTION = 32
SUPERSAMPLE = 4


@dataclass(frozen=True)
class WorldObject:
    """One object: ``x``, ``y`` (centre) and ``radius`` are fractions of the image side."""

    shape: str
    colour: str
    size: str
    position: str
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Scene:
    """One or two objects on a plain background."""

    objects: tuple[WorldObject, ...]
    background: str
    colour_jitter: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))


def in_domain_combos() -> list[tuple[str, str]]:
    """(colour, shape) pairs the pretraining stream and the in-domain prompts use, in a fixed order."""
    return [(c, s) for s in SHAPES for c in COLOURS if (c, s) not in OOD_COMBOS]


def _sample_object(rng: random.Random, position: str, combos: Sequence[tuple[str, str]]) -> WorldObject:
    colour, shape = combos[rng.randrange(len(combos))]
    size = rng.choice(sorted(SIZES))
    lo, hi = SIZES[size]
    ax, ay = POSITIONS[position]
    return WorldObject(
        shape=shape,
        colour=colour,
        size=size,
        position=position,
        x=ax + rng.uniform(-POSITION_JITTER, POSITION_JITTER),
        y=ay + rng.uniform(-POSITION_JITTER, POSITION_JITTER),
        radius=rng.uniform(lo, hi),
    )


def sample_scene(rng: random.Random, *, ood: bool = False, two_object_prob: float = TWO_OBJECT_PROB) -> Scene:
    """Draw one scene. ``ood=False`` (the pretraining stream) never uses an :data:`OOD_COMBOS` pair;
    ``ood=True`` draws single-object scenes of those pairs only (held-out evaluation)."""
    combos = sorted(OOD_COMBOS) if ood else in_domain_combos()
    background = rng.choice(sorted(BACKGROUNDS))
    jitter = tuple(rng.uniform(-0.04, 0.04) for _ in range(3))
    if not ood and rng.random() < two_object_prob:
        pair = rng.choice([("on the left", "on the right"), ("at the top", "at the bottom")])
        objects = tuple(_sample_object(rng, p, combos) for p in pair)
        # two objects are drawn small so that they do not overlap
        objects = tuple(
            WorldObject(o.shape, o.colour, "small", o.position, o.x, o.y, rng.uniform(*SIZES["small"]))
            for o in objects
        )
    else:
        objects = (_sample_object(rng, rng.choice(list(POSITIONS)), combos),)
    return Scene(objects=objects, background=background, colour_jitter=jitter)  # type: ignore[arg-type]


def _object_phrase(obj: WorldObject, with_size: bool, with_position: bool) -> str:
    words = []
    if with_size:
        words.append(obj.size)
    words += [obj.colour, obj.shape]
    if with_position:
        words.append(obj.position)
    return article(words[0]) + " " + " ".join(words)


def caption(
    scene: Scene,
    rng: random.Random | None = None,
    *,
    p_size: float = 0.5,
    p_position: float = 0.5,
    p_background: float = 0.6,
) -> str:
    """The full template caption, or with ``rng`` a random shorter variant: size, position and
    background are each kept with the given probability (colour and shape always are)."""
    keep = (lambda p: True) if rng is None else (lambda p: rng.random() < p)
    with_size, with_position, with_bg = keep(p_size), keep(p_position), keep(p_background)
    if len(scene.objects) == 2:
        text = " and ".join(_object_phrase(o, False, with_position) for o in scene.objects)
    else:
        text = _object_phrase(scene.objects[0], with_size, with_position)
    if with_bg:
        text += f" on a {scene.background} background"
    return text


def article(word: str) -> str:
    """'an' before a vowel, else 'a'."""
    return "an" if word[:1] in "aeiou" else "a"


def _shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test in object coordinates (u right, v down, radius 1)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (u.abs() <= 0.82) & (v.abs() <= 0.82)
    if shape == "triangle":
        return (v <= 0.75) & (u.abs() <= 1.0 * (v + 0.95) / 1.7)
    if shape == "cross":
        return ((u.abs() <= 0.32) & (v.abs() <= 0.95)) | ((v.abs() <= 0.32) & (u.abs() <= 0.95))
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene, resolution: int = NATIVE_RESOLUTION,
           masks: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None] | None = None) -> torch.Tensor:
    """Draw ``scene``: float32 tensor (3, resolution, resolution) in [0, 1], anti-aliased. ``masks``
    (one per object, None = the object's shape) replaces an object's inside-test ``(u, v) -> bool``
    in object coordinates (u right, v down, radius 1): how shapes outside the world are drawn."""
    n = resolution * SUPERSAMPLE
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    jitter = torch.tensor(scene.colour_jitter, dtype=torch.float32).view(3, 1, 1)
    img = torch.tensor(BACKGROUNDS[scene.background], dtype=torch.float32).view(3, 1, 1).expand(3, n, n).clone()
    for i, obj in enumerate(scene.objects):
        inside = masks[i] if masks is not None and masks[i] is not None else (lambda u, v, s=obj.shape: _shape_mask(s, u, v))
        mask = inside((xx - obj.x) / obj.radius, (yy - obj.y) / obj.radius)
        colour = torch.tensor(COLOURS[obj.colour], dtype=torch.float32).view(3, 1, 1)
        img = torch.where(mask, colour + jitter, img)
    img = torch.nn.functional.avg_pool2d(img[None], SUPERSAMPLE)[0]
    return img.clamp(0.0, 1.0)


def render_batch(scenes: Sequence[Scene], resolution: int = NATIVE_RESOLUTION) -> torch.Tensor:
    """(N, 3, resolution, resolution) float32 in [0, 1]."""
    return torch.stack([render(s, resolution) for s in scenes])


def stream(seed: int, batch_size: int, resolution: int = NATIVE_RESOLUTION) -> Iterator[tuple[torch.Tensor, list[str], list[Scene]]]:
    """Endless seeded training stream of (images, random-variant captions, scenes); in-domain only."""
    rng = random.Random(seed)
    while True:
        scenes = [sample_scene(rng) for _ in range(batch_size)]
        yield render_batch(scenes, resolution), [caption(s, rng) for s in scenes], scenes


HELDOUT_SEED = 1_000_003
"""Seed of the fixed held-out sets; training streams use the build seed, which must differ."""


def heldout_scenes(n: int, *, ood: bool = False, single: bool = True, seed: int = HELDOUT_SEED) -> list[Scene]:
    """A fixed held-out set of ``n`` scenes (single-object unless ``single=False``)."""
    rng = random.Random(seed + (7919 if ood else 0) + (0 if single else 104729))
    return [sample_scene(rng, ood=ood, two_object_prob=0.0 if single else TWO_OBJECT_PROB) for _ in range(n)]


def in_domain_prompts() -> list[str]:
    """The in-domain RAFT prompt set: one "a {colour} {shape}" per in-domain pair (16 prompts)."""
    return [f"{article(c)} {c} {s}" for c, s in in_domain_combos()]


def out_of_domain_prompts() -> list[str]:
    """The out-of-domain prompt set: one "a {colour} {shape}" per held-out pair (8 prompts)."""
    return [f"{article(c)} {c} {s}" for s in SHAPES for c in COLOURS if (c, s) in OOD_COMBOS]


def parse_prompt(prompt: str) -> tuple[str | None, str | None]:
    """The (colour, shape) a prompt names (first of each), or None where it names none."""
    words = prompt.lower().replace(",", " ").split()
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    return colour, shape


def luminance(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
