"""What every benchmark records beside its numbers: when, where, and how it was run."""
from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results.jsonl"
ROOT = Path(__file__).resolve().parent.parent


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def record(name: str, device: torch.device, **numbers: object) -> dict:
    """Append one result to bench/results.jsonl and return it."""
    row = {"bench": name, "date": datetime.date.today().isoformat(), "machine": machine(device),
           "command": "python " + " ".join(sys.argv), **numbers}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def start_app(args: list[str], env: dict | None = None, stdout: object = subprocess.DEVNULL,
              timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """``demo_app.py`` with ``args`` on a free loopback port, once it accepts connections:
    (process, URL). Raises RuntimeError if it exits or does not listen within ``timeout`` s.
    The benchmarks and the app's tests start the server this one way."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    proc = subprocess.Popen([sys.executable, "demo_app.py", "--port", str(port), "--host", "127.0.0.1", *args],
                            cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with code {proc.returncode}") from None
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"the app did not start listening within {timeout:g} s") from None
            time.sleep(0.5)
