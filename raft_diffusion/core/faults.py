"""Fault-injection points for the crash-and-resume tests.

Setting ``RAFT_DIFFUSION_KILL_AT="ROUND:PHASE"`` (PHASE one of ``generate``, ``train``,
``checkpoint``) makes the process SIGKILL itself at that point of that round: in the middle of
generation (after the first batch), of training (after the first optimizer step), or of a
checkpoint write (after the state file, before the folder is complete). Unset, a point costs
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "RAFT_DIFFUSION_KILL_AT"
current_round = 0


def point(phase: str) -> None:
    """Kill this process if the environment asks for ``current_round:phase``."""
    target = os.environ.get(ENV)
    if target and target == f"{current_round}:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)
