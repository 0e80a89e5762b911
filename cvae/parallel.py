"""Process pools for the CPU-bound helpers (decoding PNGs, simulating scenes).

A spawned worker re-imports the caller's ``__main__``; a plain script that builds a data set
without an ``if __name__ == "__main__":`` guard then starts pools from its own workers, which die
at bootstrap while the parent waits for good. Forked workers re-import nothing, so a library call
works however the caller's script is written. The workers run numpy, PIL and pymunk only, never
torch, so forking a process that has loaded torch is safe here. Without fork, work runs serially.
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator


class Serial:
    """The part of a Pool the helpers use, in this process."""

    def __enter__(self) -> Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap(fn: Callable, items: Iterable, chunksize: int = 1) -> Iterator:
        return map(fn, items)

    @staticmethod
    def map(fn: Callable, items: Iterable) -> list:
        return list(map(fn, items))


def pool(workers: int) -> multiprocessing.pool.Pool | Serial:
    """``workers`` forked processes (a context manager, like ``Pool``), or :class:`Serial`."""
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork").Pool(workers)
    return Serial()
