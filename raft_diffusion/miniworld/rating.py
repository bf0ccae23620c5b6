"""The procedural aesthetic rating of a miniworld scene, on the AVA-like 1-10 scale.

What looks good in this world (the rule the miniworld aesthetic predictor is fitted to):

``rating = 1 + 9 * (0.25 C + 0.25 K + 0.40 S + 0.10 P)``, each term in [0, 1]:

- C, contrast: the luminance difference between object and background,
  ``|Y(object) - Y(background)| / 0.75`` clipped to 1 (Y = 0.299 R + 0.587 G + 0.114 B; averaged
  over the objects). A yellow shape on black or a blue one on white is striking; green on gray is dull.
- K, centring: ``1 - min(1, d / 0.25)`` with d the distance from the objects' centroid to the image
  centre (fractions of the side): a centred subject scores 1, one at an edge anchor close to 0.
- S, presence: the mean object radius mapped linearly from 0.13 (smallest) to 0.34 (largest) onto
  0..1: a subject that fills the frame beats a speck.
- P, simplicity: 1 for a single subject, 0 for two (clutter).

(A fifth term, clean framing — no shape cut by the border — was tried and dropped: the tiny CLIP's
embedding does not carry it linearly, so no LAION-style linear head could learn it; the weights were
chosen so that the head's held-out Spearman correlation reaches 0.9.)

A generator can raise every term for a fixed prompt such as "a red circle": pick the background with
the highest contrast for that colour, centre the subject, draw it large and alone.
"""

from __future__ import annotations

from raft_diffusion.miniworld import world

WEIGHTS = {"contrast": 0.25, "centring": 0.25, "presence": 0.40, "simplicity": 0.10}
_R_MIN, _R_MAX = world.SIZES["small"][0], world.SIZES["large"][1]


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def components(scene: world.Scene) -> dict[str, float]:
    """The four terms of the rule, each in [0, 1]."""
    objs = scene.objects
    y_bg = world.luminance(world.BACKGROUNDS[scene.background])
    contrast = sum(_clip01(abs(world.luminance(world.COLOURS[o.colour]) - y_bg) / 0.75) for o in objs) / len(objs)
    cx = sum(o.x for o in objs) / len(objs)
    cy = sum(o.y for o in objs) / len(objs)
    centring = 1.0 - min(1.0, ((cx - 0.5) ** 2 + (cy - 0.5) ** 2) ** 0.5 / 0.25)
    presence = _clip01((sum(o.radius for o in objs) / len(objs) - _R_MIN) / (_R_MAX - _R_MIN))
    simplicity = 1.0 if len(objs) == 1 else 0.0
    return {"contrast": contrast, "centring": centring, "presence": presence, "simplicity": simplicity}


def rating(scene: world.Scene) -> float:
    """The rating of ``scene`` in [1, 10]."""
    c = components(scene)
    return 1.0 + 9.0 * sum(WEIGHTS[k] * v for k, v in c.items())
