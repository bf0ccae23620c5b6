"""The paper's two diffusion experiments at miniworld scale, through the public API.

- ``resolution``: the miniature SD generates at a resolution it was not trained at
  (:data:`raft_diffusion.miniworld.ADAPTATION_RESOLUTION`) and fails; RAFT with the miniworld
  CLIP score, generating and training at that resolution, recovers prompt fidelity.
- ``aesthetic``: RAFT with the miniworld aesthetic predictor at the native resolution.

:func:`run_experiment` evaluates the base model, runs the preset, evaluates the tuned model on
the same seeds, and returns the figures; :func:`write_results` writes a markdown table and the
reward curves (CSV). Every figure is reported for in-domain and out-of-domain prompts.
"""

from __future__ import annotations

import csv
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Sequence


log = logging.getLogger(__name__)
PRESETS = {"resolution": "miniworld-resolution", "aesthetic": "miniworld-aesthetic"}
EVAL_SEED = 4242


def evaluate(backend: Any, prompts: Sequence[str], per_prompt: int, scorers_: dict[str, Any],
             height: int | None = None, width: int | None = None) -> dict[str, Any]:
    """Generate ``per_prompt`` images per prompt from fixed seeds with the backend's current model
    and sampling settings, and score them.

    Returns per scorer the mean over all images and over each prompt's first image (the
    unbiased estimate), the zero-shot shape/colour accuracy, and the mean per-prompt diversity.
    """
    from prompts.types import Prompt
    from raft_diffusion.core.rng import sample_seed
    from raft_diffusion.miniworld.fidelity import shared_scorer
    from raft_diffusion.report import diversity

    old = backend.height, backend.width
    backend.height, backend.width = height or old[0], width or old[1]
    try:
        n = len(prompts) * per_prompt
        seeds = [sample_seed(EVAL_SEED, 0, i) for i in range(n)]
        samples = backend.generate([Prompt(p) for p in prompts], per_prompt, seeds, [f"e{i}" for i in range(n)])
    finally:
        backend.height, backend.width = old
    images, texts = samples.outputs, samples.texts
    out: dict[str, Any] = {"n_images": n, "resolution": int(images.shape[-1])}
    firsts = list(range(0, n, per_prompt))
    for name, scorer in scorers_.items():
        r = scorer(images, texts, samples.metadata).float()
        out[name] = float(r.mean())
        out[f"{name}_first"] = float(r[firsts].mean())
        out[f"{name}_std"] = float(r.std()) if n > 1 else 0.0
    shape_ok, colour_ok = shared_scorer().correctness(images, texts)
    out["shape_acc"] = float(shape_ok.mean())
    out["colour_acc"] = float(colour_ok.mean())
    div = diversity(images, samples.groups)
    out["diversity"] = statistics.fmean(div.values()) if div else 0.0
    return out


def run_experiment(name: str, out_dir: str | Path, *, overrides: dict[str, Any] | None = None,
                   per_prompt: int = 8, progress: bool = False) -> dict[str, Any]:
    """Run experiment ``name`` ("resolution" or "aesthetic"); returns {"before", "after", "native", "history", ...}."""
    import scorers
    from raft_diffusion.api import build_loop
    from raft_diffusion.config import load_config
    from raft_diffusion.miniworld import NATIVE_RESOLUTION, world
    from raft_diffusion.miniworld.evaluate import vae_round_trip
    from raft_diffusion.errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown miniworld experiment {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = load_config(PRESETS[name], {"output.dir": str(Path(out_dir)), "output.overwrite": True, **(overrides or {})})
    t0 = time.perf_counter()
    loop = build_loop(cfg, progress=progress)
    reward_name = cfg.reward.scorer
    judges = {reward_name: loop.scorer}
    if reward_name != "miniworld-clip":
        judges["miniworld-clip"] = scorers.build("miniworld-clip")
    splits = {"in_domain": world.in_domain_prompts(), "out_of_domain": world.out_of_domain_prompts()}
    result: dict[str, Any] = {"experiment": name, "preset": PRESETS[name], "reward": reward_name,
                              "resolution": loop.backend.height, "native_resolution": NATIVE_RESOLUTION,
                              "rounds": cfg.raft.rounds, "k": cfg.raft.k, "prompts_per_round": cfg.raft.prompts_per_round,
                              "per_prompt": per_prompt}
    result["before"] = {s: evaluate(loop.backend, p, per_prompt, judges) for s, p in splits.items()}
    if loop.backend.height != NATIVE_RESOLUTION:
        result["native"] = {s: evaluate(loop.backend, p, per_prompt, judges, NATIVE_RESOLUTION, NATIVE_RESOLUTION)
                            for s, p in splits.items()}
        result["vae_round_trip"] = vae_round_trip(loop.backend.pipe.vae, loop.backend.height)
    history = loop.run()
    result["after"] = {s: evaluate(loop.backend, p, per_prompt, judges) for s, p in splits.items()}
    result["history"] = history.rounds
    result["wall_s"] = time.perf_counter() - t0
    result["run_dir"] = str(loop.run_dir)
    return result


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Markdown table rows of before / after per split, and the experiment's headline checks."""
    reward = result["reward"]
    native = result.get("native")
    lines = [
        "| split | metric | " + (f"native {result['native_resolution']} px | " if native else "") + "before | after |",
        "|---|---|---|---|" + ("---|" if native else ""),
    ]
    for split in ("in_domain", "out_of_domain"):
        b, a = result["before"][split], result["after"][split]
        n = native[split] if native else None
        rows = [(f"{reward} (unbiased: first image per prompt)", f"{reward}_first", "{:.3f}"),
                (f"{reward} (mean of {result['per_prompt']} per prompt)", reward, "{:.3f}"),
                ("held-out CLIP score (miniworld-clip)", "miniworld-clip", "{:.2f}"),
                ("shape named right (tiny CLIP zero-shot)", "shape_acc", None),
                ("colour named right", "colour_acc", None),
                ("diversity (mean pairwise RMS pixel distance per prompt)", "diversity", "{:.4f}")]
        for label, key, fmt in rows:
            if label.startswith("held-out CLIP") and reward == "miniworld-clip":
                continue  # the reward rows above are already the CLIP score
            f = (lambda v: _pct(v)) if fmt is None else (lambda v, fmt=fmt: fmt.format(v))
            cells = ([f(n[key])] if n else []) + [f(b[key]), f(a[key])]
            lines.append(f"| {split.replace('_', '-')} | {label} | " + " | ".join(cells) + " |")
    return lines


def checks(result: dict[str, Any]) -> list[str]:
    """The issue's targets, computed from the figures (in-domain unless said)."""
    out = []
    b, a = result["before"]["in_domain"], result["after"]["in_domain"]
    if result["experiment"] == "resolution":
        n = result["native"]["in_domain"]
        for key in ("shape_acc", "colour_acc", "miniworld-clip"):
            drop = n[key] - b[key]
            gain = a[key] - b[key]
            frac = gain / drop if drop > 0 else float("nan")
            fmt = _pct if key.endswith("_acc") else (lambda v: f"{v:.2f}")
            unit = " points" if key.endswith("_acc") else ""
            scale = 100 if key.endswith("_acc") else 1
            out.append(f"- {key}: native {fmt(n[key])}, at {result['resolution']} px {fmt(b[key])} before RAFT "
                       f"(drop {scale * drop:.1f}{unit}), {fmt(a[key])} after: recovered {100 * frac:.0f}% of the drop "
                       f"(target >= 50%)")
        if "vae_round_trip" in result:
            c = result["vae_round_trip"]
            out.append(f"- VAE round trip: held-out renders resized to {result['resolution']} px, encoded and decoded, are named "
                       f"right for shape {_pct(c['shape_acc'])}, colour {_pct(c['colour_acc'])} (a reference, not a bound: "
                       f"the UNet's latents need not be the encoder's)")
        ob, oa = result["before"]["out_of_domain"], result["after"]["out_of_domain"]
        out.append(f"- out-of-domain: shape {_pct(ob['shape_acc'])} -> {_pct(oa['shape_acc'])}, "
                   f"colour {_pct(ob['colour_acc'])} -> {_pct(oa['colour_acc'])}")
    else:
        r = result["reward"]
        gain = a[r] - b[r]
        std = b[f"{r}_std"]
        out.append(f"- reward gain {gain:+.3f} = {gain / std if std else float('nan'):.2f} std of the base model's reward "
                   f"distribution ({std:.3f}) (target >= 1)")
        c0, c1 = b["miniworld-clip"], a["miniworld-clip"]
        out.append(f"- held-out CLIP score {c0:.2f} -> {c1:.2f} ({100 * (c1 - c0) / c0:+.1f}%; target: no drop beyond -5%)")
    return out


def write_results(result: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """``miniworld_<name>.md`` (table + checks) and ``miniworld_<name>_curve.csv`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = result["experiment"]
    md = folder / f"miniworld_{name}.md"
    head = (f"# Miniworld {name} experiment\n\npreset `{result['preset']}`, reward `{result['reward']}`, "
            f"{result['rounds']} rounds x {result['prompts_per_round']} prompts x K={result['k']}, generating and "
            f"training at {result['resolution']} px (native {result['native_resolution']} px); evaluation: "
            f"{result['per_prompt']} images per prompt from fixed seeds; wall time {result['wall_s']:.0f} s on the CPU.\n\n")
    md.write_text(head + "\n".join(summary_lines(result)) + "\n\n" + "\n".join(checks(result)) + "\n", encoding="utf-8")
    curve = folder / f"miniworld_{name}_curve.csv"
    keys = ["round", "reward_unbiased", "reward_mean", "reward_std", "reward_kept", "diversity", "train_loss", "time_round_s"]
    with open(curve, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for row in result["history"]:
            w.writerow([row.get(k) for k in keys])
    return md, curve
