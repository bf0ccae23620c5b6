"""Multi-process runs (``accelerate launch --num_processes N``): who am I, collectives, failure sync.

:func:`get` returns the process-wide :class:`Distributed`. With ``WORLD_SIZE`` unset or 1 it is
a no-op single-process object (no torch.distributed, no accelerate import). With ``WORLD_SIZE > 1``
it initialises the process group through accelerate's ``PartialState`` (gloo on the CPU, nccl on
GPUs) with a finite timeout (``RAFT_DIFFUSION_DIST_TIMEOUT`` seconds, default 1800), so no
process waits forever on a peer that died.

:meth:`Distributed.call` runs one stage and then exchanges a status string between all
processes: a failure on any process ends the stage on every process with a
:class:`~raft_diffusion.errors.RunError` that names the failing process and its message.
Inside a stage that runs many collectives in lock-step (sharded training), :class:`FailureFlag`
holds a local failure until the next exchange, so every process stops at the same point.

Imports neither diffusers nor transformers (accelerate and torch.distributed lazily).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from raft_diffusion.errors import RaftError, RunError

log = logging.getLogger(__name__)
TIMEOUT_ENV = "RAFT_DIFFUSION_DIST_TIMEOUT"
#: When set to a folder, every process writes its backend state after each round's training
#: there (``round-0001-rank0.pt``): used by the tests to compare the LoRA across processes.
DEBUG_DUMP_ENV = "RAFT_DIFFUSION_DIST_DUMP"


class PeerFailure(RunError):
    """Raised on a process that stopped because another process failed (the other one has the cause)."""


@dataclass
class TrainShard:
    """This process's share of the global kept set.

    total: size M of the global kept set (all processes). positions: for each local kept sample
    (in the order the backend receives them), its position in the global kept list (0..M-1).
    """

    total: int
    positions: list[int] = field(default_factory=list)


class FailureFlag:
    """A local failure in lock-step training, reported to every process at the next exchange.

    Raising at once would leave the other processes waiting in their next collective until the
    timeout, and the failing process's message would be lost. Instead: run the local work (forward,
    backward, optimizer step) under :meth:`capture`, send :attr:`value` along with the next small
    exchange (summed) and pass the reduced value to :meth:`check`, or exchange the flag alone with
    :meth:`final_check`.
    Every process then raises at the same point: the failing one its own exception, the others
    :class:`PeerFailure`, and :meth:`Distributed.call` around the stage reports the failing
    process's message everywhere.
    """

    def __init__(self, dist: "Distributed") -> None:
        self.dist = dist
        self.failure: BaseException | None = None

    @property
    def failed(self) -> bool:
        """Whether this process has failed (later local work should be skipped)."""
        return self.failure is not None

    @property
    def value(self) -> float:
        """1.0 when this process has failed, else 0.0: the scalar to all-reduce (sum)."""
        return 1.0 if self.failure is not None else 0.0

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Run the block; an exception it raises is kept (the first one) instead of propagating."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - reported to every process at the next check
            if self.failure is None:
                self.failure = exc

    def check(self, failed_anywhere: float, where: str) -> None:
        """After an exchange that carried :attr:`value` (summed): raise if any process failed.

        This process's own failure is re-raised; otherwise :class:`PeerFailure` names ``where``.
        """
        if failed_anywhere > 0:
            if self.failure is not None:
                raise self.failure
            raise PeerFailure(f"{where}: another process failed")

    def final_check(self, where: str) -> None:
        """Exchange the flag alone and :meth:`check` it: a failure after the last exchange has no next one."""
        flag = self.dist.all_reduce_(torch.tensor([self.value]), "sum")
        self.check(float(flag.item()), where)


def shard_range(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous block ``[lo, hi)`` of ``n_items`` that process ``rank`` owns (sizes differ by at most 1)."""
    return rank * n_items // world_size, (rank + 1) * n_items // world_size


class Distributed:
    """One process of one: every collective is the identity. Subclassed for real process groups."""

    rank = 0
    world_size = 1
    local_rank = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        pass

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def gather_object(self, obj: Any) -> list[Any] | None:
        """``[obj of rank 0, obj of rank 1, ...]`` on the main process, None on the others."""
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        return obj

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place sum (or mean) of ``tensor`` over processes; returns it."""
        return tensor

    def call(self, what: str, fn: Callable[[], Any], *, main_only: bool = False) -> Any:
        """Run ``fn`` (on the main process only when ``main_only``); one process of one: just ``fn()``."""
        return fn()


class ProcessGroup(Distributed):
    """A torch.distributed process group set up by accelerate's ``PartialState``."""

    def __init__(self, timeout_s: float | None = None) -> None:
        from accelerate import PartialState

        if timeout_s is None:
            timeout_s = float(os.environ.get(TIMEOUT_ENV, "1800"))
        self.timeout_s = timeout_s
        # CPU processes (no GPU, or ACCELERATE_USE_CPU set by `accelerate launch --cpu`): gloo
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
        self.state = PartialState(cpu=cpu, timeout=datetime.timedelta(seconds=timeout_s))
        if self.state.num_processes != world_size_from_env():
            raise RunError(
                f"WORLD_SIZE is {world_size_from_env()} but accelerate set up {self.state.num_processes} process(es) "
                f"(backend {self.state.backend!r}); launch with accelerate launch --multi_gpu --num_processes N or torchrun"
            )
        self.rank = int(self.state.process_index)
        self.world_size = int(self.state.num_processes)
        self.local_rank = int(self.state.local_process_index)
        self.device = self.state.device
        import torch.distributed as tdist

        self._dist = tdist
        atexit.register(self.close)
        log.debug("process %d of %d (backend %s, timeout %.0fs)", self.rank, self.world_size, self.state.backend, timeout_s)

    def close(self) -> None:
        """Leave together, then tear the process group down (run at exit): a process that exits while
        a peer still talks to it can abort (SIGABRT) at interpreter exit. Best effort: a dead peer is
        noticed within the timeout and only logged."""
        if not self._dist.is_initialized():
            return
        try:
            if "gloo" in str(self._dist.get_backend()):
                self._dist.monitored_barrier(timeout=datetime.timedelta(seconds=self.timeout_s))
            else:
                self._dist.barrier()
            self._dist.destroy_process_group()
        except Exception as exc:  # noqa: BLE001 - exiting anyway
            log.debug("process %d: leaving the process group failed (%s)", self.rank, exc)

    def barrier(self) -> None:
        self._dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj)
        return out

    def gather_object(self, obj: Any) -> list[Any] | None:
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        self._dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def _comm_device(self) -> torch.device:
        backend = str(self._dist.get_backend())
        return self.device if "nccl" in backend else torch.device("cpu")

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if op not in ("sum", "mean"):
            raise ValueError(f"all_reduce op must be 'sum' or 'mean', got {op!r}")
        dev = self._comm_device()
        buf = tensor if tensor.device == dev else tensor.to(dev)
        self._dist.all_reduce(buf, op=self._dist.ReduceOp.SUM)
        if op == "mean":
            buf /= self.world_size
        if buf is not tensor:
            tensor.copy_(buf)
        return tensor

    def call(self, what: str, fn: Callable[[], Any], *, main_only: bool = False) -> Any:
        result, error, status = None, None, None
        if self.is_main or not main_only:
            try:
                result = fn()
            except PeerFailure as exc:
                error, status = exc, ("peer", str(exc))
            except Exception as exc:  # noqa: BLE001 - every failure must reach the other processes
                msg = str(exc) if isinstance(exc, RaftError) else f"{type(exc).__name__}: {exc}"
                error, status = exc, ("error", msg)
        try:
            statuses = self.all_gather_object(status)
        except Exception as exc:  # noqa: BLE001 - a dead peer or a timeout
            msg = f"process {self.rank} of {self.world_size}: lost contact with the other processes after {what} ({exc}); the run stopped"
            raise RunError(msg) from (error or exc)
        failed = [(rank, s[1]) for rank, s in enumerate(statuses) if s is not None and s[0] == "error"]
        if not failed:
            failed = [(rank, s[1]) for rank, s in enumerate(statuses) if s is not None]
        if not failed:
            return result
        rank, msg = failed[0]
        text = f"process {rank} of {self.world_size} failed: {msg}"
        if rank == self.rank and isinstance(error, RaftError) and not isinstance(error, PeerFailure):
            error.args = (text,)
            raise error
        raise RunError(text) from error


_CURRENT: Distributed | None = None


_WORLD_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def world_size_from_env() -> int:
    """The number of processes the launcher (torchrun / accelerate / mpirun) started; 1 without one."""
    for var in _WORLD_VARS:
        value = os.environ.get(var)
        if value:
            try:
                return int(value)
            except ValueError:
                continue
    return 1


def get() -> Distributed:
    """The process-wide :class:`Distributed` (created on first use from the environment)."""
    global _CURRENT
    if _CURRENT is None:
        if world_size_from_env() > 1:
            _CURRENT = ProcessGroup()
        else:
            if os.environ.get("MASTER_ADDR") and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
                # `accelerate launch --cpu --num_processes N` without --mpirun_hostfile starts ONE process
                log.warning(
                    "accelerate launch --cpu started a single process (its CPU launcher needs mpirun); for N CPU "
                    "processes use: accelerate launch --multi_gpu --num_processes N (torchrun; gloo without a GPU)"
                )
            _CURRENT = Distributed()
    return _CURRENT


def set_current(dist: Distributed | None) -> None:
    """Replace the process-wide object (tests; None re-reads the environment on next :func:`get`)."""
    global _CURRENT
    _CURRENT = dist
