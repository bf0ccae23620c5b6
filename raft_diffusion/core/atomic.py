"""Atomic file writes that leave nothing behind when they fail (a full disk included).

:func:`atomic_path` yields a temporary name beside the target; the caller writes it, and on success it
is renamed into place. On any failure the temporary file is removed, and an ``OSError`` that does not
name a file (a ``write`` that hit a full disk) is re-raised naming the target, so the message the run
stops with says where it could not write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

#: errno values that mean the disk (or the quota) is full
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def with_path(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` naming ``path`` when it names no file (same class and errno), else ``exc`` itself."""
    if exc.filename is not None:
        return exc
    try:
        named = type(exc)(exc.errno, exc.strerror or str(exc), os.fspath(path))
    except TypeError:  # an OSError subclass with another signature
        return exc
    named.__traceback__ = exc.__traceback__
    return named


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a full disk or quota."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False


def remove_quietly(path: Path) -> None:
    """Delete a file or folder, ignoring one that is already gone or cannot be removed."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], tmp: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (or ``tmp``); rename it to ``path`` when the block ends
    without error, remove it when it fails (see the module doc)."""
    target = Path(path)
    scratch = Path(tmp) if tmp is not None else target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield scratch
        os.replace(scratch, target)
    except OSError as exc:
        remove_quietly(scratch)
        named = with_path(exc, target)
        if named is exc:
            raise
        raise named from None
    except BaseException:
        remove_quietly(scratch)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes, fsync: bool = True) -> None:
    """``data`` into ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
