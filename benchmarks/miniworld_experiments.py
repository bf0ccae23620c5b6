"""The paper's two diffusion experiments at miniworld scale; writes benchmarks/results/miniworld_*.{md,csv}.

    python benchmarks/miniworld_experiments.py --experiment resolution|aesthetic|both [--per-prompt 8 (default)]
        [--out runs/experiments] [--results benchmarks/results] [--section.key value ...]

Each experiment evaluates the base model (in-domain and out-of-domain prompts, fixed seeds),
runs its preset, evaluates the tuned model on the same seeds, prints the table and writes it
(markdown) with the reward curve (CSV).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from raft_diffusion.cli import split_overrides
    from raft_diffusion.commands.train import parse_overrides
    from raft_diffusion.miniworld.experiments import checks, run_experiment, summary_lines, write_results

    rest, over = split_overrides(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", choices=["resolution", "aesthetic", "both"], default="both")
    ap.add_argument("--per-prompt", type=int, default=8, help="evaluation images per prompt")
    ap.add_argument("--out", default="runs/experiments", help="run folders")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"), help="where the tables go")
    args = ap.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = parse_overrides(over)
    names = ["resolution", "aesthetic"] if args.experiment == "both" else [args.experiment]
    for name in names:
        result = run_experiment(name, Path(args.out) / name, overrides=overrides, per_prompt=args.per_prompt)
        md, curve = write_results(result, args.results)
        print("\n".join(summary_lines(result)))
        print("\n".join(checks(result)))
        print(f"wrote {md} and {curve} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
