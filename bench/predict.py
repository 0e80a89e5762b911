"""The app's case: N futures x 10 frames from the bundled (or given) model; p50/p95 latency.

    python bench/predict.py [--ckpt assets/model] [--n 1 8 16] [--repeats 30]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import record

from cvae.checkpoint import load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="assets/model")
    p.add_argument("--n", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        model, meta = load_model(args.ckpt, device)
        g = torch.Generator().manual_seed(0)
        context = torch.rand(1, model.n_past, 3, 64, 64, generator=g).to(device)
        cond = torch.randn(1, model.n_past + 10, 7, generator=g).to(device)
        for n in args.n:
            model.predict(context, cond, 10, n, seed=0)  # warm-up
            times = []
            for r in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                model.predict(context, cond, 10, n, seed=r)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            p50, p95 = np.percentile(times, 50) * 1000, np.percentile(times, 95) * 1000
            record("predict", device, ckpt=args.ckpt, n_futures=n, frames=10, p50_ms=round(p50, 1), p95_ms=round(p95, 1),
                   threads=torch.get_num_threads())
            print(f"{device.type}: {n:2d} futures x 10 frames: p50 {p50:6.1f} ms, p95 {p95:6.1f} ms")


if __name__ == "__main__":
    main()
