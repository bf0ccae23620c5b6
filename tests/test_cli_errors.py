"""Every failure ends as one line and an exit status (2 bad input, 1 a failed run or an unexpected
error); the traceback only with -v, which works before or after the sub-command."""

from __future__ import annotations

import pytest

from raft_diffusion import api
from raft_diffusion.cli import main
from raft_diffusion.errors import ConfigError, RunError


def fail_with(monkeypatch, exc):
    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(api, "train", boom)


def errors(err):
    return [line for line in err.splitlines() if line.startswith("raft-diffusion: error:")]


@pytest.mark.parametrize("exc, code, fragment", [
    (RunError("round 2, fine-tuning: training loss is nan"), 1, "round 2, fine-tuning: training loss is nan"),
    (ConfigError("raft.k must be >= 1, got 0"), 2, "raft.k must be >= 1, got 0"),
    (ZeroDivisionError("division by zero"), 1, "unexpected ZeroDivisionError: division by zero; rerun with -v"),
    (PermissionError(13, "Permission denied", "/runs/x/metrics.jsonl"), 1, "Permission denied: '/runs/x/metrics.jsonl'"),
    (FileNotFoundError(2, "No such file or directory", "/data/prompts.txt"), 2, "No such file or directory"),
    (RunError("two\nlines"), 1, "two lines"),
])
def test_one_line_and_the_exit_status(exc, code, fragment, monkeypatch, capsys):
    fail_with(monkeypatch, exc)
    assert main(["train"]) == code
    err = capsys.readouterr().err
    assert len(errors(err)) == 1 and fragment in errors(err)[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["-v", "train"], ["train", "-v"], ["train", "--verbose"]])
def test_the_traceback_only_with_v(argv, monkeypatch, capsys):
    fail_with(monkeypatch, RunError("round 1, scoring failed: RuntimeError: boom"))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "boom" in errors(err)[0]


def test_v_after_the_command_is_accepted(capsys):
    assert main(["train", "--print-config", "-v"]) == 0
    assert "raft:" in capsys.readouterr().out
