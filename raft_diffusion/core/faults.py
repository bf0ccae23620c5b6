"""Fault-injection points for the crash-and-resume tests.

Setting ``RAFT_DIFFUSION_KILL_AT="ROUND:PHASE"`` (PHASE one of ``generate``, ``train``,
``checkpoint``) makes the process SIGKILL itself at that point of that round: in the middle of
generation (after the first batch), of training (after the first optimizer step), or of a
checkpoint write (after the state file, before the folder is complete).
``RAFT_DIFFUSION_RAISE_AT="ROUND:PHASE"`` raises a RuntimeError there instead (a Python failure);
it also knows ``prepare`` (the diffusion backend gathering the kept latents and prompt embeddings,
before training starts).
With ``RAFT_DIFFUSION_FAULT_RANK=R`` only process R of a multi-process run (its ``RANK``) is hit.
Unset, a point costs two dictionary lookups.

Under several processes both trainers (diffusion and LLM) report a raise at ``train`` to the
others at their next gradient exchange, or at one final flag exchange after the last step
(:class:`~raft_diffusion.core.distributed.FailureFlag`), so every process stops at once with the
failing process's message instead of waiting until ``RAFT_DIFFUSION_DIST_TIMEOUT``.
"""

from __future__ import annotations

import os
import signal

ENV = "RAFT_DIFFUSION_KILL_AT"
RAISE_ENV = "RAFT_DIFFUSION_RAISE_AT"
RANK_ENV = "RAFT_DIFFUSION_FAULT_RANK"
current_round = 0


def point(phase: str) -> None:
    """Kill this process (or raise) if the environment asks for ``current_round:phase``."""
    kill, boom = os.environ.get(ENV), os.environ.get(RAISE_ENV)
    if not kill and not boom:
        return
    here = f"{current_round}:{phase}"
    if here not in (kill, boom):
        return
    rank = os.environ.get(RANK_ENV)
    if rank is not None and rank.strip() != os.environ.get("RANK", "0"):
        return
    if kill == here:
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault at round {current_round}, {phase} ({RAISE_ENV})")
