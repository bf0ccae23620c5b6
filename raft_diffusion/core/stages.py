"""A round's stages run with clear errors (the failure names the round and the stage), the records a
stage writes (the samples table, peak memory), and the assembly of per-process samples."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from raft_diffusion.core.backend import Samples
from raft_diffusion.core.distributed import shard_range
from raft_diffusion.core.ranking import Selection, group_ids
from raft_diffusion.core.records import write_jsonl
from raft_diffusion.errors import RaftError, RunError


def peak_memory_mb() -> dict[str, float]:
    """Peak RSS of this process (and peak CUDA memory since the last call, when a GPU is present), MiB."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 1024.0**2)}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    return out


def round_label(round_index: int) -> str:
    """How messages name a round: ``round 3``, or ``round 0 (before training)``."""
    return f"round {round_index}" + (" (before training)" if round_index == 0 else "")


def run_stage(round_index: int, what: str, fn: Callable[[], Any]) -> Any:
    """Run one stage; any failure becomes an error naming the round and the stage."""
    at = round_label(round_index)
    try:
        return fn()
    except RaftError as exc:
        exc.args = (f"{at}, {what}: {exc}",)
        raise
    except torch.OutOfMemoryError as exc:
        raise RunError(
            f"{at}, {what}: out of memory ({str(exc).splitlines()[0]}); lower the batch size "
            "or enable memory options; completed rounds are on disk (resume with --resume latest)"
        ) from exc
    except OSError as exc:
        raise RunError(os_error_message(round_index, what, exc)) from exc
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise RunError(f"{at}, {what} failed: {type(exc).__name__}: {exc}") from exc


def os_error_message(round_index: int, what: str, exc: OSError) -> str:
    """One line for a failed read or write: the round, the stage, the path and what to do."""
    from raft_diffusion.core.atomic import is_disk_full

    where = f" writing {str(exc.filename)!r}" if exc.filename is not None else ""
    if is_disk_full(exc):
        return (f"{round_label(round_index)}, {what}: no space left on the device{where}; free some space, then continue "
                "with --resume latest (completed rounds are on disk; temporary files were removed)")
    return f"{round_label(round_index)}, {what}: {exc}; completed rounds are on disk (resume with --resume latest)"


def debug_dump(backend: Any, rank: int, r: int) -> None:
    """With RAFT_DIFFUSION_DIST_DUMP=DIR, every process saves its backend state after round r's training
    (the tests compare the LoRA across processes)."""
    from raft_diffusion.core.distributed import DEBUG_DUMP_ENV

    folder = os.environ.get(DEBUG_DUMP_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save(backend.state_dict(), Path(folder) / f"round-{r:04d}-rank{rank}.pt")


def write_samples_table(round_dir: Path, samples: Samples, rewards: Sequence[float], selection: Selection) -> None:
    """``round_dir/samples.jsonl``: id, prompt, group, seed, reward, kept, excluded of every sample."""
    kept, excluded = set(selection.kept), set(selection.excluded)
    write_jsonl(round_dir / "samples.jsonl", [
        {"id": samples.ids[i], "prompt": samples.texts[i], "group": samples.groups[i], "seed": samples.seeds[i],
         "reward": rewards[i], "kept": i in kept, "excluded": i in excluded}
        for i in range(len(samples))
    ])


def concat_outputs(parts: Sequence[Any]) -> Any:
    """Per-sample outputs of several processes, in order: tensors concatenated, lists joined."""
    parts = [p for p in parts if p is not None]
    if parts and isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return [x for p in parts for x in p]


def assemble_samples(parts: Sequence[Any], n: int, keys: Sequence[str], backend: str) -> tuple[Any, dict[str, Any]]:
    """(outputs, extras ``keys``) of all ``n`` samples in the global order, from every process's
    ``(outputs, extras)`` (None for a process with no sample; rank order = the order of the
    contiguous prompt blocks)."""
    parts = [p for p in parts if p is not None]
    outputs = concat_outputs([p[0] for p in parts])
    extras: dict[str, Any] = {}
    for key in keys:
        if any(key not in p[1] for p in parts):
            raise RunError(f"the {backend} backend lists {key!r} in gathered_extras but its samples have no such extras")
        value = concat_outputs([p[1][key] for p in parts])
        if len(value) != n:
            raise RunError(f"gathered extras {key!r} hold {len(value)} entries for {n} samples; they must be per-sample")
        extras[key] = value
    return outputs, extras


def for_main(samples: Samples | None, keys: Sequence[str]) -> tuple[Any, dict[str, Any]] | None:
    """What one process sends the main process: its outputs and its extras ``keys`` (a key its samples
    lack is left out and reported by :func:`assemble_samples`, inside a synced stage)."""
    if samples is None:
        return None
    return samples.outputs, {k: samples.extras[k] for k in keys if k in samples.extras}


def local_samples(backend: Any, rank: int, world_size: int, prompts: Sequence[Any], k: int,
                  seed_of: Callable[[int], int], id_of: Callable[[int], str], candidates: bool = False) -> tuple[Samples | None, int]:
    """Generate process ``rank``'s contiguous block of ``prompts`` (K each) with the global sample seeds
    and ids; returns (its samples or None when it owns no prompt, the global index of its first sample).
    ``candidates``: a round's, drawn with ``backend.generate_candidates`` where the backend has one."""
    lo, hi = shard_range(len(prompts), rank, world_size)
    idx = range(lo * k, hi * k)
    if hi == lo:
        return None, lo * k
    generate = getattr(backend, "generate_candidates", backend.generate) if candidates else backend.generate
    samples = generate(list(prompts[lo:hi]), k, [seed_of(i) for i in idx], [id_of(i) for i in idx])
    assert len(samples) == len(idx) and samples.groups == group_ids(hi - lo, k), "backend broke the layout"
    return samples, lo * k
