"""The miniworld as a raft-diffusion plugin: its model alias, scorers, prompt sets and CLI command.

Registered through the entry point a third-party package would use (pyproject.toml)::

    [project.entry-points."raft_diffusion.plugins"]
    miniworld = "raft_diffusion.miniworld.plugin:register"

Nothing here imports torch, transformers or the world until a scorer or prompt set is built.
"""

from __future__ import annotations

from typing import Any

from raft_diffusion.miniworld import aesthetic_path, clip_path, pipeline_path

SCORERS = {
    "miniworld-clip": "CLIP score max(100*cos, 0) on the miniworld's tiny CLIP (same code as clip-score-hf); offline",
    "miniworld-aesthetic": "miniworld aesthetic predictor: head on the tiny CLIP's normalised embeddings "
                           "(same code as aesthetic-v2), 1-10; offline",
    "miniworld-fidelity": "miniworld: (shape named right + colour named right) / 2 by the tiny CLIP, zero-shot; "
                          "in {0, 0.5, 1}",
    "miniworld-independent": "miniworld: (shape right + colour right) / 2 by the independent evaluator (a small "
                             "CNN trained only on renders); in {0, 0.5, 1}",
    "miniworld-gold": "miniworld: the gold rating, the written-down rating rule applied to the independent "
                      "evaluator's reading of the image, 1-10 (an evaluator for aesthetic runs, not a reward)",
    "miniworld-shape": "miniworld: hand-written shape reading (foreground mask against each shape's blurred "
                       "template, correlation): half the prompted shape's fit minus the best other's, in [-1, 1]; "
                       "nothing learned",
}
PROMPT_SETS = {
    "miniworld": "the miniworld's in-domain prompts ('a red circle', ...: 16 colour/shape pairs)",
    "miniworld-ood": "the miniworld's out-of-domain prompts (8 colour/shape pairs never seen in pretraining)",
}


def miniworld_clip(**kwargs: Any) -> Any:
    """The ``miniworld-clip`` scorer: ``clip-score-hf`` on the miniworld CLIP."""
    from scorers.clip_score import clip_score_transformers

    return clip_score_transformers(str(clip_path()), name="miniworld-clip", **kwargs)


def miniworld_aesthetic(**kwargs: Any) -> Any:
    """The ``miniworld-aesthetic`` scorer: the aesthetic head on the miniworld CLIP's embeddings."""
    from scorers.aesthetic import aesthetic_from_folder

    return aesthetic_from_folder(aesthetic_path(), clip_path(), name="miniworld-aesthetic", **kwargs)


def miniworld_fidelity(**kwargs: Any) -> Any:
    """The ``miniworld-fidelity`` scorer (zero-shot shape and colour by the miniworld CLIP)."""
    from raft_diffusion.miniworld.fidelity import FidelityScorer

    return FidelityScorer(**kwargs)


def miniworld_independent(**kwargs: Any) -> Any:
    """The ``miniworld-independent`` scorer (the evaluator CNN trained only on rendered scenes)."""
    from raft_diffusion.miniworld.evaluator import IndependentScorer

    return IndependentScorer(**kwargs)


def miniworld_gold(**kwargs: Any) -> Any:
    """The ``miniworld-gold`` scorer (the rating rule on the independent evaluator's reading)."""
    from raft_diffusion.miniworld.evaluator import GoldScorer

    return GoldScorer(**kwargs)


def miniworld_shape(**kwargs: Any) -> Any:
    """The ``miniworld-shape`` scorer (template fit of the foreground mask, nothing learned)."""
    from raft_diffusion.miniworld.shape_reward import ShapeScorer

    return ShapeScorer(**kwargs)


def load_prompt_set(name: str) -> list[Any]:
    """The prompts of ``miniworld`` or ``miniworld-ood``, with their colour and shape as metadata."""
    from prompts import Prompt
    from raft_diffusion.miniworld import world

    texts = world.out_of_domain_prompts() if name == "miniworld-ood" else world.in_domain_prompts()
    out = []
    for i, text in enumerate(texts):
        colour, shape = world.parse_prompt(text)
        out.append(Prompt(text, {"set": name, "index": i, "label": text, "colour": colour, "shape": shape}))
    return out


def _prompt_loader(name: str):
    def load_set() -> list[Any]:
        return load_prompt_set(name)

    return load_set


def register() -> None:
    """Register the ``miniworld`` model alias, the miniworld scorers, the two prompt sets and
    the ``raft-diffusion miniworld`` command."""
    import prompts
    import scorers
    from raft_diffusion.miniworld import command
    from raft_diffusion.models import register_model_alias
    from raft_diffusion.plugins import register_command

    register_model_alias("miniworld", pipeline_path, "the bundled miniature Stable Diffusion (32 px), offline")
    factories = {"miniworld-clip": miniworld_clip, "miniworld-aesthetic": miniworld_aesthetic,
                 "miniworld-fidelity": miniworld_fidelity, "miniworld-independent": miniworld_independent,
                 "miniworld-gold": miniworld_gold, "miniworld-shape": miniworld_shape}
    for name, description in SCORERS.items():
        scorers.register(name, factories[name], description)
    for name, description in PROMPT_SETS.items():
        prompts.register(name, _prompt_loader(name), description)
    register_command("miniworld", command.register, "build or evaluate the miniworld")
