"""Replacing a file so that no reader ever sees half of it.

Write a temporary file in the same directory, fsync it, rename it over the
target, fsync the directory: the pattern Postfix's DATABASE_README asks for,
used for the snapshot, the maps and every spool file. Standard library only.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path, mode: int = 0o644):
    """Yield a temporary path beside ``path``; when the block succeeds it is
    fsynced and renamed over ``path``, otherwise removed."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: Path, data: bytes, mode: int = 0o644, *, sync_dir: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with replacing(path, mode) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    if sync_dir:
        fsync_dir(path.parent)
