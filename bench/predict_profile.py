"""Where one Predict's time goes on this device: kernel launches, host-device copies and syncs
against the time the device is busy. On an H200 the bundle's Predict launched ~5,100 kernels and
kept the GPU busy 6% of its time (bench/README.md): launches, not arithmetic, set its latency.

    python bench/predict_profile.py [--ckpt assets/model] [--n 8]
"""
from __future__ import annotations

import argparse
import time

import torch
from common import predict_inputs, record
from torch.profiler import ProfilerActivity, profile

from cvae.checkpoint import load_model

# runtime calls and ops that each cost a launch or wait for the device
COUNTED = {"launches": "cudaLaunchKernel", "copies": "cudaMemcpyAsync", "stream_syncs": "cudaStreamSynchronize",
           "items": "aten::_local_scalar_dense"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="assets/model")
    p.add_argument("--n", type=int, default=8, help="futures of 10 frames")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    model = load_model(args.ckpt, device)[0]
    context, cond = predict_inputs(model.n_past, device)
    for _ in range(3):  # warm-up: cuDNN's algorithm choice, the allocator
        model.predict(context, cond, 10, args.n, seed=0)
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        model.predict(context, cond, 10, args.n, seed=0)
        if cuda:
            torch.cuda.synchronize()
    wall = (time.perf_counter() - started) * 1000
    events = prof.key_averages()
    counts = {name: sum(e.count for e in events if e.key == key) for name, key in COUNTED.items()}
    busy = sum(e.self_device_time_total for e in events) / 1000 if cuda else None
    row = record("predict_profile", device, ckpt=args.ckpt, n_futures=args.n, wall_ms=round(wall, 1),
                 device_busy_ms=None if busy is None else round(busy, 1), **counts)
    print(f"{args.n} futures x 10 frames on {row['machine']}: {wall:.0f} ms under the profiler"
          + (f", the GPU busy {busy:.1f} ms" if cuda else "") + "; " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
