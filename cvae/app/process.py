"""Start the app as a server process on a free loopback port: how the tests and the benchmarks
run it, the one way."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time


def start_app(args: list[str], env: dict | None = None, stdout: object = subprocess.DEVNULL,
              timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """``python -m cvae app`` with ``args`` on a free loopback port, once it accepts connections:
    (process, URL). Raises RuntimeError if it exits or does not listen within ``timeout`` s.
    The benchmarks and the app's tests start the server this one way."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "cvae", "app", "--port", str(port), "--host", "127.0.0.1", *args],
                            env=env, stdout=stdout, stderr=subprocess.STDOUT)
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
