"""The app under load, per serving policy: latency of Predict for one user, 4 concurrent users
and 32 queued requests, on an idle machine and beside CPU hogs.

Each policy starts the app (``--threads T --concurrency C``) on a free loopback port and sends
Predicts through gradio_client, as a script or the page does: N = 8 futures x 10 frames under
the original and the edited actions (reversed dx, dy), with the physics futures. With
``--hogs H`` the same runs again beside H processes spinning on the CPU.

    python bench/app_load.py [--policies 1x2 2x1 2x2] [--hogs 2]
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time

import numpy as np
import torch
from common import record

from cvae.app import logic
from cvae.app.process import start_app

SOURCE = "bundled test sequences"


def spin() -> None:
    while True:
        pass


def tables() -> list[dict]:
    seqs = logic.find_sources([])[SOURCE].sequences
    out = []
    for i in range(4):
        rows = logic.table_rows(logic.load_sequence(seqs[i])[1], 2, 10)
        for r in rows:
            r[2], r[3] = -r[2], -r[3]
        out.append({"headers": logic.HEADERS, "data": rows})
    return out


def one(client, model: str, table: dict, k: int) -> float:
    started = time.perf_counter()
    client.predict(SOURCE, k % 4, model, table, 8, k, api_name="/predict")
    return time.perf_counter() - started


def scenario(url: str, model: str, users: int, per_user: int) -> dict:
    """``users`` threads, each with its own client, each sending ``per_user`` Predicts in a row."""
    from gradio_client import Client

    tabs = tables()
    clients = [Client(url, verbose=False) for _ in range(users)]
    one(clients[0], model, tabs[0], 0)  # warm-up
    times: list[float] = []
    lock = threading.Lock()

    def user(u: int) -> None:
        for j in range(per_user):
            t = one(clients[u], model, tabs[(u + j) % 4], u * 100 + j)
            with lock:
                times.append(t)

    started = time.perf_counter()
    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"n": len(times), "p50_s": round(float(np.percentile(times, 50)), 3),
            "p95_s": round(float(np.percentile(times, 95)), 3), "per_s": round(len(times) / wall, 2),
            "mean_s": round(statistics.mean(times), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", nargs="+", default=["1x2", "2x1", "2x2"],
                   help="THREADSxCONCURRENCY: torch threads per request x requests at once")
    p.add_argument("--hogs", type=int, default=2, help="CPU-spinning processes for the busy runs (0: idle only)")
    p.add_argument("--single", type=int, default=20, help="Predicts in a row for one user")
    args = p.parse_args()
    model = next(iter(logic.find_models([])))
    for busy in ([0, args.hogs] if args.hogs else [0]):
        hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for h in hogs:
            h.start()
        try:
            for policy in args.policies:
                threads, concurrency = (int(v) for v in policy.split("x"))
                server, url = start_app(["--threads", str(threads), "--concurrency", str(concurrency)])
                try:
                    rows = {"1 user": scenario(url, model, 1, args.single),
                            "4 users": scenario(url, model, 4, 4),
                            "32 queued": scenario(url, model, 32, 1)}
                finally:
                    server.terminate()
                    server.wait(timeout=30)
                for name, r in rows.items():
                    record("app_load", torch.device("cpu"), policy=policy, hogs=busy, scenario=name, **r)
                    print(f"hogs {busy} threads x concurrency {policy}: {name:9s} p50 {r['p50_s']:6.2f} s, "
                          f"p95 {r['p95_s']:6.2f} s, {r['per_s']:5.2f} Predicts/s ({r['n']})", flush=True)
        finally:
            for h in hogs:
                h.terminate()


if __name__ == "__main__":
    main()
