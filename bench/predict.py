"""The app's case: N futures x 10 frames from the bundled (or given) models; p50/p95 latency.

With several ``--ckpt`` the repeats are interleaved (A, B, A, B, ...), so the ratio of their
medians is measured side by side under the same load.

    python bench/predict.py [--ckpt assets/model [OTHER ...]] [--n 1 8 16] [--repeats 30]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import predict_inputs, record

from cvae.checkpoint import load_model


def timed(model, context: torch.Tensor, cond: torch.Tensor, n: int, seed: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    model.predict(context, cond, 10, n, seed=seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", nargs="+", default=["assets/model"])
    p.add_argument("--n", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        models = [load_model(ckpt, device)[0] for ckpt in args.ckpt]
        context, cond = predict_inputs(models[0].n_past, device)
        for n in args.n:
            for model in models:
                model.predict(context, cond, 10, n, seed=0)  # warm-up
            times = [[] for _ in models]
            for r in range(args.repeats):
                for model, t in zip(models, times):
                    t.append(timed(model, context, cond, n, r, device))
            first = np.percentile(times[0], 50)
            for ckpt, t in zip(args.ckpt, times):
                p50, p95 = np.percentile(t, 50) * 1000, np.percentile(t, 95) * 1000
                ratio = np.percentile(t, 50) / first
                record("predict", device, ckpt=ckpt, n_futures=n, frames=10, p50_ms=round(p50, 1),
                       p95_ms=round(p95, 1), p50_vs_first=round(ratio, 3), threads=torch.get_num_threads())
                print(f"{device.type} {ckpt}: {n:2d} futures x 10 frames: p50 {p50:6.1f} ms, p95 {p95:6.1f} ms"
                      + (f" ({ratio:.2f}x the first's p50)" if len(models) > 1 else ""))


if __name__ == "__main__":
    main()
