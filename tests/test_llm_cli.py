"""`raft-diffusion train llm-tiny` runs offline and writes the adapter and the kept responses."""

from __future__ import annotations

import json

import torch

from raft_diffusion.cli import main


def test_train_llm_tiny_one_round(tmp_path, capsys):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "llm-tiny", "--output.dir", str(tmp_path / "run"), "--raft.rounds", "1", "--no-progress"])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "llm backend" in out
    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_config.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["round"] == 1 and "distinct_2" in rows[0]
    assert len((run / "rounds" / "round-0001" / "kept.jsonl").read_text().splitlines()) == 10


def test_bad_llm_model_is_a_one_line_error(tmp_path, capsys):
    code = main(["train", "llm-tiny", "--output.dir", str(tmp_path / "run"), "--model.pretrained", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and "neither an existing folder nor a hub id" in err and len(err.strip().splitlines()) == 1
