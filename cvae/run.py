"""A run folder (``--out``): ``log.jsonl``, the ``last/`` and ``best/`` checkpoints, and a lock.

Everything that keeps a run usable after a kill at any moment lives here: one writer at a time
(an ``flock`` the kernel releases when the process dies), finishing half-done checkpoint swaps,
keeping ``best/`` in step with what ``last/`` records, and a log that a torn last line does not
spoil.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from . import checkpoint
from .atomic import write_text
from .errors import RunError

LOCK = ".lock"


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.log = self.path / checkpoint.LOG
        self.last = self.path / "last"
        self.best = self.path / "best"

    def has_checkpoint(self) -> bool:
        """A resumable ``last/`` (or the ``.last.old`` a kill mid-swap leaves, which recovery restores)."""
        return any((p / checkpoint.STATE).is_file() for p in (self.last, self.path / ".last.old"))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one training process; a second one is refused, not interleaved."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
                raise RunError(f"{self.path} is being trained by process {holder}; wait for it to finish, "
                               "stop it, or choose another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    def recover(self) -> list[str]:
        """Repair what a kill left; returns a line per repair, for the user to see."""
        notes = []
        for name in ("last", "best"):
            had = (self.path / name / checkpoint.WEIGHTS).is_file()
            checkpoint.recover(self.path, name)
            if not had and (self.path / name / checkpoint.WEIGHTS).is_file():
                notes.append(f"restored {self.path / name} from a save that was cut short")
        if self.last.is_dir():
            meta = checkpoint.read_meta(self.last)
            best_epoch = meta.get("best_epoch")
            if best_epoch == meta.get("epoch") and best_epoch is not None:
                best = checkpoint.read_meta(self.best).get("epoch") if self.best.is_dir() else None
                if best != best_epoch:
                    checkpoint.copy(self.last, self.best)
                    notes.append(f"brought {self.best} up to epoch {best_epoch}, the best that {self.last} records")
        return notes

    def read_log(self) -> list[dict]:
        """The log's records. A torn last line (a write cut short) is dropped; a bad line anywhere
        else is an error naming it, since that is not what a kill leaves."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        records = []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if n == len(lines):
                    break
                raise RunError(f"{self.log}: line {n} is not valid JSON ({e.msg})") from None
        return records

    def trim_log(self, step: int) -> None:
        """Keep the records up to ``step`` (the checkpoint's), rewritten atomically, so a resumed
        run never duplicates a record and a kill during the rewrite loses nothing."""
        if self.log.exists():
            keep = [r for r in self.read_log() if r["step"] <= step]
            write_text(self.log, "".join(json.dumps(r) + "\n" for r in keep))

    def set_aside_log(self) -> Path:
        """Move the log of a run that never reached its first checkpoint out of the way."""
        aside = self.log.with_name(f"{self.log.name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(self.log, aside)
        return aside

    def append(self, record: dict) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")
