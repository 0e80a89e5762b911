"""Atomic, durable file writes: a reader sees the old file or the new one, never half of one, and
after a power cut the new one is there once the call has returned (fsync of file and folder)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def fsync(path: str | Path) -> None:
    """Flush a file, or a folder's entries (what makes a rename durable), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` and every folder, deepest first."""
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            fsync(Path(folder) / name)
        fsync(folder)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
