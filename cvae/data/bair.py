"""The processed BAIR layout: finding, validating, reading and writing sequences.

``ROOT/<split>/<trajectory folder>/<seq>/{0..T-1}.png, actions.csv, endeffector_positions.csv``

Trajectory folders are named ``traj_<a>_to_<b>`` (SVG, sequences numbered from 1) or
``traj_<a>_to_<b>.tfrecords`` (the course lab, numbered from 0); both are read. Sequences are
ordered by (trajectory start, sequence number). Where ``ROOT/validate`` is absent, validation
reads ``ROOT/test``, as the course lab's template does; such validation numbers are then not
held out from the test split.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..condition import ACTION_DIM, POSITION_DIM, join
from ..errors import DataError

SPLITS = ("train", "validate", "test")
TRAJ_RE = re.compile(r"^traj_(\d+)_to_(\d+)(\.tfrecords)?$")
IMAGE_SIZE = 64
ACTIONS_CSV = "actions.csv"
POSITIONS_CSV = "endeffector_positions.csv"


def split_dir(root: str | Path, split: str) -> Path:
    """The folder a split is read from (``validate`` falls back to ``test``)."""
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    path = root / split
    if split == "validate" and not path.is_dir():
        path = root / "test"
    if not path.is_dir():
        raise DataError(f"split folder {root / split} does not exist")
    return path


def list_sequences(root: str | Path, split: str) -> list[Path]:
    """Sequence folders of a split in their fixed order; an empty split is an error."""
    base = split_dir(root, split)
    seqs: list[tuple[int, int, Path]] = []
    for traj in base.iterdir():
        match = TRAJ_RE.match(traj.name)
        if not traj.is_dir() or not match:
            continue
        for seq in traj.iterdir():
            if seq.is_dir() and seq.name.isdigit():
                seqs.append((int(match.group(1)), int(seq.name), seq))
    if not seqs:
        raise DataError(f"split {split!r} at {base} holds no sequences "
                        f"(expected {base}/traj_<a>_to_<b>[.tfrecords]/<n>/)")
    return [p for _, _, p in sorted(seqs)]


def fingerprint(root: str | Path, split: str) -> str:
    """A short content fingerprint of a split: every sequence file's path within the split and its
    size, and ``dataset.json`` where there is one, less how long its generation took
    (``info.content_bytes``). Moving, copying or generating the same data again keeps it."""
    import hashlib

    from .info import content_bytes

    h = hashlib.sha1()
    base = split_dir(root, split)
    for seq in list_sequences(root, split):
        for f in sorted(seq.iterdir()):
            h.update(f"{f.relative_to(base)}:{f.stat().st_size}\n".encode())
    info = content_bytes(root)
    if info is not None:
        h.update(info)
    return h.hexdigest()[:12]


def read_csv(path: Path, n_cols: int) -> np.ndarray:
    """A numeric CSV with ``n_cols`` columns; errors give the 1-based row and column."""
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    rows = []
    with open(path, newline="") as f:
        for r, line in enumerate(f, start=1):
            if not line.strip():
                continue
            cells = line.strip().split(",")
            if len(cells) != n_cols:
                raise DataError(f"{path}: row {r} has {len(cells)} columns, expected {n_cols}")
            values = []
            for c, cell in enumerate(cells, start=1):
                try:
                    v = float(cell)
                except ValueError:
                    raise DataError(f"{path}: row {r}, column {c}: {cell.strip()!r} is not a number") from None
                if not math.isfinite(v):
                    raise DataError(f"{path}: row {r}, column {c}: value {cell.strip()} is not finite")
                values.append(v)
            rows.append(values)
    if not rows:
        raise DataError(f"{path}: file is empty")
    return np.asarray(rows, dtype=np.float32)


def read_frame(path: Path) -> np.ndarray:
    """A 64x64 RGB frame as uint8 [64, 64, 3]; RGBA is converted, anything else is an error."""
    if not path.is_file():
        raise DataError(f"missing frame: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "RGBA":
                img = img.convert("RGB")
            if img.mode != "RGB":
                raise DataError(f"{path}: image mode {img.mode} is not RGB or RGBA")
            if img.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def read_sequence(seq: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, 64, 64, 3] and condition float32 [T, 7] (action, then position)."""
    actions = read_csv(seq / ACTIONS_CSV, ACTION_DIM)
    positions = read_csv(seq / POSITIONS_CSV, POSITION_DIM)
    if len(actions) != len(positions):
        raise DataError(f"{seq}: {ACTIONS_CSV} has {len(actions)} rows but {POSITIONS_CSV} has {len(positions)}")
    frames = np.stack([read_frame(seq / f"{t}.png") for t in range(len(actions))])
    return frames, join(actions, positions)


def sequence_files(seq: Path, n_frames: int) -> list[Path]:
    return [seq / ACTIONS_CSV, seq / POSITIONS_CSV] + [seq / f"{t}.png" for t in range(n_frames)]


def write_sequence(seq: Path, frames: np.ndarray, actions: np.ndarray, positions: np.ndarray) -> None:
    """Write one sequence in the processed layout (PNG frames, headerless CSVs)."""
    seq.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(seq / f"{t}.png", compress_level=1)
    np.savetxt(seq / ACTIONS_CSV, actions, delimiter=",", fmt="%.9g")
    np.savetxt(seq / POSITIONS_CSV, positions, delimiter=",", fmt="%.9g")


def traj_folder(index: int, per_folder: int = 256) -> tuple[str, str]:
    """Lab naming for the ``index``-th sequence of a split: (trajectory folder, sequence name)."""
    start = index // per_folder * per_folder
    return f"traj_{start}_to_{start + per_folder - 1}.tfrecords", str(index % per_folder)
