"""Write the simulated data set to disk in the processed BAIR layout, in parallel."""
from __future__ import annotations

import json
import os
import shutil
import time
from functools import partial
from pathlib import Path

from ..errors import ConfigError, DataError
from ..parallel import pool
from ..atomic import write_text
from .bair import SPLITS, traj_folder, write_sequence
from .info import DATASET_JSON
from ..kinematics import KINEMATICS
from .simulator import DEFAULT_UNCERTAINTY, simulate

DEFAULT_SIZES = {"train": 2048, "validate": 256, "test": 256}


def _one(split_id: int, seed: int, uncertainty: float, out: Path, split: str, index: int) -> bool:
    seq = simulate(seed, index, split_id, uncertainty=uncertainty)
    folder, name = traj_folder(index)
    write_sequence(out / split / folder / name, seq.frames, seq.actions, seq.positions)
    return seq.contact


def generate(out: str | Path, sizes: dict[str, int] | None = None, seed: int = 0,
             workers: int | None = None, progress: bool = True, uncertainty: float = DEFAULT_UNCERTAINTY) -> dict:
    """Generate every split into ``out``; returns the stats also written to ``dataset.json``.

    ``uncertainty`` scales the simulator's hidden causes (0: deterministic given the actions);
    it is recorded so that evaluation can re-draw them and counterfactuals can keep them.

    Writes into ``<out>.partial`` and renames it at the end, so an interrupted run never leaves
    a half data set that looks whole.
    """
    out = Path(out)
    if not (uncertainty >= 0 and uncertainty == uncertainty):
        raise ConfigError(f"--uncertainty must be a number >= 0, not {uncertainty}")
    if out.exists():
        raise DataError(f"{out} already exists; remove it or choose another --out")
    sizes = sizes or DEFAULT_SIZES
    partial_dir = out.with_name(out.name + ".partial")
    shutil.rmtree(partial_dir, ignore_errors=True)
    workers = workers or os.cpu_count() or 1
    started = time.perf_counter()
    contacts: dict[str, float] = {}
    from tqdm import tqdm

    with pool(workers) as workers_pool:
        for split_id, split in enumerate(SPLITS):
            n = sizes.get(split, 0)
            if not n:
                continue
            fn = partial(_one, split_id, seed, uncertainty, partial_dir, split)
            flags = list(tqdm(workers_pool.imap(fn, range(n), chunksize=8), total=n, desc=f"simulating {split}",
                              disable=not progress))
            contacts[split] = sum(flags) / n
    seconds = time.perf_counter() - started
    total = sum(sizes.get(s, 0) for s in SPLITS)
    stats = {"generator": "cvae.data.simulator", "seed": seed, "uncertainty": uncertainty, "sizes": {s: sizes.get(s, 0) for s in SPLITS},
             "contact_share": contacts, "seconds": round(seconds, 2),
             "sequences_per_s": round(total / seconds, 2), "workers": workers, "kinematics": KINEMATICS}
    write_text(partial_dir / DATASET_JSON, json.dumps(stats, indent=1))
    os.replace(partial_dir, out)
    return stats
