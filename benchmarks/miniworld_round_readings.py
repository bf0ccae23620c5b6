"""Read every kept round checkpoint of a miniworld run with the independent evaluator: does the
judge follow the reward round by round, or does the reward's CLIP run ahead of it?

    python benchmarks/miniworld_experiments.py --experiment resolution --seeds 5 --out runs/exp \
        --output.keep_checkpoints null
    python benchmarks/miniworld_round_readings.py runs/exp/resolution/seed5 [--per-prompt 16] [--rounds 2 4 6]

For each round it loads the checkpoint into the run's own backend (its config.yaml), draws the
in-domain prompts from the experiments' fixed evaluation seeds and prints one markdown row: shape
and colour named right by the independent evaluator and by the miniworld CLIP, the mean
``miniworld-shape`` reward (a reward-side reading, never the judge) and the diversity.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import scorers
    from raft_diffusion.api import build_loop
    from raft_diffusion.config import load_config
    from raft_diffusion.core.checkpoint import list_checkpoints, load_checkpoint
    from raft_diffusion.miniworld import world
    from raft_diffusion.miniworld.experiments import evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder with its round checkpoints")
    ap.add_argument("--per-prompt", type=int, default=16, help="evaluation images per in-domain prompt")
    ap.add_argument("--rounds", type=int, nargs="+", default=None, help="rounds to read (default: every kept one)")
    ap.add_argument("--scratch", type=Path, default=Path("runs/round-readings"), help="a throwaway run folder")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not (args.run / "config.yaml").is_file():
        raise SystemExit(f"{args.run} is not a run folder (no config.yaml); give the folder a run wrote")
    cfg = load_config(str(args.run / "config.yaml"), {"output.dir": str(args.scratch), "output.overwrite": True})
    backend = build_loop(cfg, progress=False).backend
    shape = {"shape-reward": backend.prepare_scorer(scorers.build("miniworld-shape"))}
    found = {int(p.name.split("-")[1]): p for p in list_checkpoints(args.run / "checkpoints")}
    rounds = [r for r in (args.rounds or sorted(found)) if r in found]
    if not rounds:
        raise SystemExit(f"no round checkpoint to read in {args.run / 'checkpoints'}; run with --output.keep_checkpoints null")
    print(f"{args.run}: in-domain, {args.per_prompt} images per prompt")
    print("| round | shape (independent / CLIP) | colour (independent / CLIP) | miniworld-shape reward | diversity |")
    print("|---|---|---|---|---|")
    for r in rounds:
        backend.load_state_dict(load_checkpoint(found[r])[0])
        x = evaluate(backend, world.in_domain_prompts(), args.per_prompt, shape)
        print(f"| {r} | {x['shape_acc']:.1%} / {x['clip_shape_acc']:.1%} | {x['colour_acc']:.1%} / "
              f"{x['clip_colour_acc']:.1%} | {x['shape-reward']:.4f} | {x['diversity']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
