"""``raft-diffusion train [CONFIG] [--section.key value ...]``: run RAFT."""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

from raft_diffusion.errors import ConfigError

log = logging.getLogger("raft_diffusion")

EPILOG = """\
CONFIG is a YAML file or a preset name (see --list-presets). Any field can be overridden with
--section.key value (values are parsed as YAML), e.g.
  raft-diffusion train --raft.rounds 5 --raft.k 8 --sampling.height 256 --reward.scorer jpeg-compressibility
With no CONFIG the embedded default (the 'default' preset) runs: a complete small run, offline on the CPU.
Every CONFIG starts from the embedded default, so a file need state only what differs from it.
See --help-config for every field and its default."""


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="run RAFT (default: the embedded offline demo)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run RAFT rounds: sample K per prompt, score, keep the best, fine-tune a LoRA.")
    p.add_argument("config", nargs="?", help="YAML config file or preset name")
    p.add_argument("--resume", nargs="?", const="latest", metavar="CKPT",
                   help="continue the run in --output.dir from its newest checkpoint ('latest') or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept settings that change what the completed rounds mean (recorded in the run folder)")
    p.add_argument("--output", "-o", metavar="DIR", help="run folder (same as --output.dir)")
    p.add_argument("--backend", choices=["diffusion", "llm"],
                   help="model backend (same as --backend in a config); with no CONFIG, 'llm' runs the llm-tiny preset")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--help-config", action="store_true", help="list every config field with its default and help")
    p.add_argument("--list-presets", action="store_true", help="list the bundled presets")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run, accepts_overrides=True)


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """["--raft.k", "8", "--model.dtype=float16"] -> {"raft.k": 8, "model.dtype": "float16"}."""
    from raft_diffusion.config import parse_value

    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or "." not in tok:
            raise ConfigError(f"unrecognized argument {tok!r}; config overrides look like --section.key value (see --help-config)")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ConfigError(f"override {tok!r} needs a value: {tok} VALUE")
            value = tokens[i + 1]
            i += 1
        out[key] = parse_value(value)
        i += 1
    return out


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def run(args: argparse.Namespace) -> int:
    from raft_diffusion.config import field_docs, load_config, presets

    if args.help_config:
        for name, help_, default in field_docs():
            print(f"{name} = {default!r}\n    {help_}")
        return 0
    if args.list_presets:
        for name in presets():
            print(name)
        return 0
    overrides = parse_overrides(args.overrides_raw)
    if args.output:
        overrides["output.dir"] = args.output
    if args.resume:
        overrides["output.resume"] = args.resume
    if args.overwrite:
        overrides["output.overwrite"] = True
    if args.allow_changes:
        overrides["output.allow_config_change"] = True
    if args.backend:
        overrides["backend"] = args.backend
    default = "llm-tiny" if args.backend == "llm" else "default"
    cfg = load_config(args.config or default, overrides)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from raft_diffusion.api import train

    what = args.config or f"the embedded default ({default} preset)"
    log.info("raft-diffusion train: %s | backend %s | model %s | scorer %s | %d rounds x %d prompts x K=%d",
             what, cfg.backend, cfg.model.pretrained, cfg.reward.scorer, cfg.raft.rounds, cfg.raft.prompts_per_round, cfg.raft.k)
    history = train(cfg, progress=not args.no_progress)
    from raft_diffusion.core import distributed

    if not distributed.get().is_main:
        return 0
    for line in closing_lines(cfg, history, what):
        print(line)
    return 0


def _change(before: Any, after: Any) -> str:
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return f"{_fmt(before)} -> {_fmt(after)}"
    pct = f" ({(after - before) / abs(before):+.1%})" if before else ""
    return f"{_fmt(before)} -> {_fmt(after)}{pct}"


def closing_lines(cfg: Any, history: Any, what: str) -> list[str]:
    """What a finished run says: the reward and the held-out fidelity before and after (from
    ``summary.json``), why it stopped, where the grids are and how to use the LoRA (or fine-tuned denoiser)."""
    import json

    run_dir = history.run_dir
    rows = history.rounds
    lines = [f"ran {what}: {cfg.backend} backend, model {cfg.model.pretrained!r}, scorer {cfg.reward.scorer!r}"]
    if rows:
        lines.append(f"train reward (unbiased, first sample per prompt): round {rows[0]['round']} "
                     f"{_fmt(rows[0]['reward_unbiased'])} -> round {rows[-1]['round']} {_fmt(rows[-1]['reward_unbiased'])}")
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    at = f"round {summary['best_round']}, the best by the guard" if summary.get("best_round") is not None else "the last round"
    if summary.get("reward_before") is not None:
        lines.append(f"eval reward ({summary['reward_name']}, held-out prompts, fixed seeds): "
                     f"{_change(summary['reward_before'], summary['reward_after'])} (before training -> {at})")
    for part, reading in (summary.get("reward_parts") or {}).items():
        if reading.get("before") is not None:
            lines.append(f"eval reward part {part}: {_change(reading['before'], reading['after'])}")
    if summary.get("fidelity_name") and summary.get("fidelity_before") is not None:
        lines.append(f"held-out fidelity ({summary['fidelity_name']}): {_change(summary['fidelity_before'], summary['fidelity_after'])}")
    for name, reading in (summary.get("held_out") or {}).items():
        if name != summary.get("fidelity_name") and reading.get("before") is not None:
            lines.append(f"held-out {name}: {_change(reading['before'], reading['after'])}")
    if summary.get("stop_reason"):
        lines.append(f"stopped early: {summary['stop_reason']}")
    if cfg.backend == "llm":
        lines.append(f"run folder: {run_dir} (metrics.jsonl, eval.jsonl, reward_curve.png, rounds/*/responses.jsonl, adapter/)")
        return lines
    if (run_dir / "before_after.png").is_file():
        lines.append(f"before/after grid: {run_dir / 'before_after.png'}")
    from raft_diffusion.diffusion.pipeline import resolve_source
    from raft_diffusion.run_folder import DENOISER_FOLDERS

    base = resolve_source(cfg.model.pretrained)[0]
    sub = next((n for n in DENOISER_FOLDERS if (run_dir / n).is_dir()), None) if cfg.train.adapter == "full" else None
    weights = f"{sub}/" if sub else "pytorch_lora_weights.safetensors"
    lines.append(f"run folder: {run_dir} (metrics.jsonl, eval.jsonl, reward_curve.png, rounds/*/grid.png, {weights})")
    lines.append(f"use the {'fine-tuned ' + sub if sub else 'LoRA'}: raft-diffusion generate {'--weights' if sub else '--lora'} {run_dir} --out samples/   "
                 "(the run's settings and eval prompts; add --prompt TEXT for your own)")
    if sub:
        lines.append(f"  or in Python: pipe = DiffusionPipeline.from_pretrained({base!r}, "
                     f"{sub}=AutoModel.from_pretrained({str(run_dir)!r}, subfolder={sub!r}))")
    else:
        lines.append(f"  or in Python: pipe = DiffusionPipeline.from_pretrained({base!r}); pipe.load_lora_weights({str(run_dir)!r})")
    return lines
