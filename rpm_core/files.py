"""Files that are either wholly old or wholly new: the one atomic write of rpm.

Credential stores, the pairing registry, the kiosk list, the agent's status file and the backtest's
output are all replaced this way: a temporary file in the same directory, created with its final
mode (so a private file is never readable by others, not even for a moment), written, flushed and
``fsync``-ed, renamed over the target, and the directory ``fsync``-ed so the rename survives a power
cut. ``durable=False`` skips both ``fsync`` calls for files rewritten every few seconds whose loss
in a crash costs nothing (the agent's status file).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal, overload


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@overload
def atomic_writer(path: Path, *, text: Literal[True] = ..., mode: int = ..., durable: bool = ...,
                  dir_mode: int = ...) -> contextlib.AbstractContextManager[IO[str]]: ...
@overload
def atomic_writer(path: Path, *, text: Literal[False], mode: int = ..., durable: bool = ...,
                  dir_mode: int = ...) -> contextlib.AbstractContextManager[IO[bytes]]: ...
def atomic_writer(path: Path, *, text: bool = True, mode: int = 0o600, durable: bool = True,
                  dir_mode: int = 0o700) -> contextlib.AbstractContextManager[IO[str]] | \
        contextlib.AbstractContextManager[IO[bytes]]:
    """A handle whose content replaces ``path`` when the block ends without an exception.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    return _atomic_writer(Path(path), text=text, mode=mode, durable=durable, dir_mode=dir_mode)


@contextlib.contextmanager
def _atomic_writer(path: Path, *, text: bool, mode: int, durable: bool, dir_mode: int) -> Iterator[IO[Any]]:
    path.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        handle: IO[Any] = os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb")
        with handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_writer`)."""
    if isinstance(data, str):
        with atomic_writer(path, text=True, mode=mode, durable=durable) as handle:
            handle.write(data)
    else:
        with atomic_writer(path, text=False, mode=mode, durable=durable) as bhandle:
            bhandle.write(data)
