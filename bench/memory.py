"""Peak memory of one training step per sequence, so the README can say what batch fits a card.

Each batch size runs in a fresh process (peak RSS never goes down); the per-sequence figure is
the slope between two batch sizes, which leaves out the fixed cost of the interpreter and weights.

    python bench/memory.py --preset lab --batches 1 3
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def one(preset_name: str, batch: int) -> dict:
    import torch

    from cvae.config import preset
    from cvae.model import SVG
    from cvae.train import bf16_autocast, prepare, train_step

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = preset(preset_name)
    model, opt = prepare(SVG.from_config(cfg.to_dict()), cfg, device)  # training's layout and optimizer
    x = torch.rand(batch, cfg.n_past + cfg.n_future, 3, 64, 64, device=device)
    c = torch.randn(batch, cfg.n_past + cfg.n_future, 7, device=device)
    for _ in range(2):
        train_step(model, opt, x, c, 1.0, True, amp=cfg.amp and bf16_autocast(device))
    return {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="lab")
    p.add_argument("--batches", type=int, nargs=2, default=[1, 3])
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one(args.preset, args.child)))
        return
    import torch
    from common import record

    res = {}
    for b in args.batches:
        out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--child", str(b)],
                             capture_output=True, text=True, check=True)
        res[b] = json.loads(out.stdout.strip().splitlines()[-1])
    b1, b2 = args.batches
    rss = (res[b2]["rss_mib"] - res[b1]["rss_mib"]) / (b2 - b1)
    cuda = (res[b2]["cuda_mib"] - res[b1]["cuda_mib"]) / (b2 - b1) if res[b1]["cuda_mib"] is not None else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    record("memory", device, preset=args.preset, batches=args.batches, peak=res, rss_mib_per_seq=round(rss, 1),
           cuda_mib_per_seq=None if cuda is None else round(cuda, 1))
    print(f"{args.preset}: peak RSS {res[b1]['rss_mib']:.0f} MiB at batch {b1}, {res[b2]['rss_mib']:.0f} MiB at "
          f"batch {b2}: {rss:.0f} MiB per 12-frame sequence" + (f"; CUDA {cuda:.0f} MiB per sequence" if cuda else ""))


if __name__ == "__main__":
    main()
