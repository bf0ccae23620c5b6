"""The README's reference tables list every config field and every registered scorer."""

from __future__ import annotations

from pathlib import Path

import scorers
from raft_diffusion.config import field_docs

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_config_field_documented():
    missing = [name for name, _, _ in field_docs() if f"`{name}`" not in README]
    assert not missing, f"README lacks config fields {missing}"


def test_every_scorer_documented():
    missing = [name for name in scorers.available() if f"| `{name}` |" not in README]
    assert not missing, f"README lacks scorers {missing}"


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in ci.splitlines() if "pytest" in line)
    assert command.strip() in README


def test_every_bad_input_case_documented():
    from tests.test_bad_input import CASES

    missing = [cid for kind, cid, _, _ in CASES if f"| {kind} | {cid} |" not in README]
    assert not missing, f"README lacks bad-input cases {missing}"


def test_miniworld_results_match_benchmark_tables():
    # README blocks are copies of benchmarks/results/miniworld_*.md (python .ci/update_readme.py)
    root = Path(__file__).parent.parent
    for name in ("resolution", "aesthetic"):
        body = (root / "benchmarks" / "results" / f"miniworld_{name}.md").read_text().split("\n", 2)[2].strip()
        start = README.index(f"<!-- miniworld-{name}:")
        block = README[README.index("\n", start) + 1 : README.index(f"<!-- /miniworld-{name} -->")].strip()
        assert block == body, f"README's miniworld-{name} block is stale: run python .ci/update_readme.py"
