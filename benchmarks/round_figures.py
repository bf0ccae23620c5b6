"""Print a run's figures per round from its metrics.jsonl: seconds (generate, score, train, all)
and peak memory (GPU allocation where there is a GPU, else resident memory).

    python benchmarks/round_figures.py RUN_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run_dir: str) -> None:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for r in rows:
        mem = f"peak GPU {r['peak_cuda_mb']:.0f} MiB" if "peak_cuda_mb" in r else f"peak RSS {r['peak_rss_mb']:.0f} MiB"
        print(f"round {r['round']}: {r['time_round_s']:.1f} s (generate {r['time_generate_s']:.1f}, score "
              f"{r['time_score_s']:.1f}, train {r['time_train_s']:.1f}), {mem}, train loss {r['train_loss']:.4f}")
    later = rows[1:] or rows
    print(f"seconds per round (rounds {later[0]['round']}-{later[-1]['round']}): {sum(r['time_round_s'] for r in later) / len(later):.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
