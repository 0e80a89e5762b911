"""The torch Dataset over the packed cache, and the sampler that makes training resumable."""
from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError, DataError
from .cache import PackedSplit, load_split


class BairDataset(Dataset):
    """Frames float [T, 3, 64, 64] in [0, 1] and condition [T, 7] (action, then position).

    An item key is a sequence index (window starting at frame 0, as evaluation uses) or an
    ``(index, start)`` pair (what :class:`WindowBatchSampler` yields for training).
    """

    def __init__(self, root: str | Path, split: str, seq_len: int = 12,
                 cache_dir: str | Path | None = None, workers: int | None = None) -> None:
        self.packed: PackedSplit = load_split(root, split, cache_dir, workers)
        if self.packed.n_frames < seq_len:
            raise DataError(f"split {split!r} of {root} has {self.packed.n_frames} frames per sequence, "
                            f"fewer than the {seq_len} asked for")
        self.seq_len = seq_len
        self._frames: np.ndarray | None = None

    def __len__(self) -> int:
        return self.packed.n_sequences

    @property
    def n_frames(self) -> int:
        return self.packed.n_frames

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, start = key if isinstance(key, tuple) else (key, 0)
        if self._frames is None:
            self._frames = self.packed.frames()
        window = slice(start, start + self.seq_len)
        frames = torch.from_numpy(np.array(self._frames[index, window]))
        cond = torch.from_numpy(self.packed.cond[index, window].copy())
        return frames.permute(0, 3, 1, 2).float().div_(255), cond


def check_global_batch(batch_size: int, world: int) -> None:
    """The batch size is global: every process takes ``batch_size / world`` of each batch."""
    if batch_size % world:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must divide evenly over the "
                         f"{world} processes torchrun started")


class WindowBatchSampler(Sampler[list[tuple[int, int]]]):
    """Random (sequence, window start) batches for one epoch, a pure function of (seed, epoch).

    All ranks draw the same global batches and each takes its own slice, so the global batch is
    ``batch_size`` whatever the world size, and resuming at ``start_step`` replays nothing.
    """

    def __init__(self, n_sequences: int, n_frames: int, seq_len: int, batch_size: int, steps: int,
                 seed: int, epoch: int, start_step: int = 0, rank: int = 0, world: int = 1) -> None:
        check_global_batch(batch_size, world)
        self.n, self.max_start, self.batch, self.steps = n_sequences, n_frames - seq_len, batch_size, steps
        self.seed, self.epoch, self.start_step, self.rank, self.world = seed, epoch, start_step, rank, world

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        need = self.steps * self.batch
        order = torch.cat([torch.randperm(self.n, generator=g) for _ in range(-(-need // self.n))])[:need]
        starts = torch.randint(0, self.max_start + 1, (need,), generator=g)
        for step in range(self.start_step, self.steps):
            rows = range(step * self.batch + self.rank, (step + 1) * self.batch, self.world)
            yield [(int(order[i]), int(starts[i])) for i in rows]


def init_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own numpy and ``random`` streams (torch already differs),
    and leave SIGINT/SIGTERM to the main process.

    Ctrl-C in a terminal, ``kill -- -PGID`` and a cluster's preemption signal the whole process
    group. A worker that died of it would make the main process raise before it could save ``last/``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
