"""A real training process for the fault tests (``tests/test_faults.py``), SIGKILLed at a chosen
moment when ``CVAE_KILL`` says so:

- ``best-swap``: the second time ``best/`` is about to be swapped in (``last/`` already saved);
- ``mid-swap``: between the two renames of the second ``last/`` save.

Arguments are ``train_cli.py``'s.
"""
import os
import signal
import sys
from pathlib import Path

from cvae import checkpoint
from cvae.cli import main

MODE = os.environ.get("CVAE_KILL", "")
real_swap_in = checkpoint.swap_in
seen = {"best": 0, "last": 0}


def killing_swap_in(tmp: Path, path: Path) -> None:
    seen[path.name] = seen.get(path.name, 0) + 1
    if MODE == "best-swap" and path.name == "best" and seen["best"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if MODE == "mid-swap" and path.name == "last" and seen["last"] == 2:
        os.replace(path, path.with_name(f".{path.name}.old"))
        os.kill(os.getpid(), signal.SIGKILL)
    real_swap_in(tmp, path)


checkpoint.swap_in = killing_swap_in
sys.exit(main(sys.argv[1:], prog="fault_worker.py", default="train"))
