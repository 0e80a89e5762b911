"""A packed per-split cache so training never decodes PNGs per step.

``<cache>/<split>/frames.u8`` is a uint8 memmap [N, T, 64, 64, 3]; ``cond.npy`` float32 [N, T, 7];
``manifest.json`` (written last) holds the source path, the counts and a content fingerprint
over every source file's name, size and modification time. A changed source means a stale cache,
which is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_text
from ..condition import COND_DIM
from ..errors import DataError
from ..parallel import pool
from .bair import ACTIONS_CSV, IMAGE_SIZE, list_sequences, read_sequence, sequence_files, split_dir

CACHE_VERSION = 1


@dataclass
class PackedSplit:
    frames_path: Path
    cond: np.ndarray  # [N, T, 7] float32
    n_sequences: int
    n_frames: int
    sequences: list[Path]
    rebuilt: bool

    def frames(self) -> np.ndarray:
        """The frames memmap, opened on demand so that DataLoader workers each map it themselves."""
        return np.memmap(self.frames_path, dtype=np.uint8, mode="r",
                         shape=(self.n_sequences, self.n_frames, IMAGE_SIZE, IMAGE_SIZE, 3))


def _count_rows(path: Path) -> int:
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def fingerprint(seqs: list[Path], n_frames: int) -> str:
    h = hashlib.sha1()
    for seq in seqs:
        for f in sequence_files(seq, n_frames):
            try:
                st = f.stat()
            except FileNotFoundError:
                h.update(f"{f}:missing".encode())
                continue
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def default_cache_dir(root: str | Path) -> Path:
    return Path(root) / ".cache"


def load_split(root: str | Path, split: str, cache_dir: str | Path | None = None,
               workers: int | None = None) -> PackedSplit:
    """Open a split's packed cache, building or rebuilding it first where needed."""
    seqs = list_sequences(root, split)
    source = split_dir(root, split).resolve()
    n_frames = _count_rows(seqs[0] / ACTIONS_CSV)
    out = Path(cache_dir or default_cache_dir(root)) / split
    manifest_path = out / "manifest.json"
    fp = fingerprint(seqs, n_frames)
    expected = {"version": CACHE_VERSION, "source": str(source), "n_sequences": len(seqs),
                "n_frames": n_frames, "fingerprint": fp}
    rebuilt = False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        manifest = None
    cond = _intact(out, len(seqs), n_frames) if manifest == expected else None
    if cond is None:
        if manifest == expected:
            print(f"note: the cache {out} is damaged (its files do not match its manifest): rebuilding it")
        _build(seqs, n_frames, out, workers)
        write_text(manifest_path, json.dumps(expected, indent=1))
        rebuilt = True
        cond = _intact(out, len(seqs), n_frames)
        if cond is None:
            raise DataError(f"{out}: the cache was rebuilt but still does not read back; is the disk full?")
    return PackedSplit(out / "frames.u8", cond, len(seqs), n_frames, seqs, rebuilt)


def _intact(out: Path, n: int, n_frames: int) -> np.ndarray | None:
    """The condition array when the cache's own files match its manifest's counts, else None
    (a truncated memmap or a replaced ``cond.npy`` is rebuilt, never read as numpy's riddle)."""
    frames = out / "frames.u8"
    if not frames.is_file() or frames.stat().st_size != n * n_frames * IMAGE_SIZE * IMAGE_SIZE * 3:
        return None
    try:
        cond = np.load(out / "cond.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return cond if cond.shape == (n, n_frames, COND_DIM) and cond.dtype == np.float32 else None


def _build(seqs: list[Path], n_frames: int, out: Path, workers: int | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    cond = np.empty((len(seqs), n_frames, COND_DIM), dtype=np.float32)
    workers = workers or min(8, os.cpu_count() or 1)
    with atomic_path(out / "frames.u8") as tmp:
        frames = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(len(seqs), n_frames, IMAGE_SIZE, IMAGE_SIZE, 3))
        with pool(workers) as workers_pool:
            for i, (seq, (f, c)) in enumerate(zip(seqs, workers_pool.imap(read_sequence, seqs, chunksize=16))):
                if len(f) != n_frames:
                    raise DataError(f"{seq}: has {len(f)} frames but {seqs[0]} has {n_frames}; "
                                    "all sequences of a split must be the same length")
                frames[i], cond[i] = f, c
        frames.flush()
        del frames
    with atomic_path(out / "cond.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, cond)

