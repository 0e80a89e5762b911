"""bf16 autocast versus fp32 for one training step of the fast path, interleaved in one run.

Both copies start from the same weights and take the same batch. Before timing, the bf16 loss
must match the fp32 loss (teacher forcing on, fixed seed, evaluation-mode batch norm) to within
``--tol``; the KL and the loss itself stay float32 under autocast (cvae/model/gaussian.py).

    python bench/amp.py --preset cpu [--batch 16] [--rounds 7] [--output compose --channels-last false ...]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import record

from cvae.cli import add_config_flags, config_overrides
from cvae.config import preset
from cvae.model import SVG
from cvae.train import bf16_autocast, prepare, train_step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="cpu")
    p.add_argument("--batch", type=int, default=0, help="default: the preset's batch size")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tol", type=float, default=0.02, help="largest relative loss difference accepted")
    add_config_flags(p)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not bf16_autocast(device):
        raise SystemExit(f"bf16 autocast is not native on this {device.type}; training runs fp32 here")
    changes = config_overrides(args)
    cfg = preset(args.preset, **changes)
    batch = args.batch or cfg.batch_size
    torch.manual_seed(0)
    base = SVG.from_config(cfg.to_dict()).to(device)
    x = torch.rand(batch, cfg.n_past + cfg.n_future, 3, 64, 64, device=device)
    c = torch.randn(batch, cfg.n_past + cfg.n_future, 7, device=device)
    fp32, opt32 = prepare(copy.deepcopy(base), cfg, device)
    bf16, opt16 = prepare(copy.deepcopy(base), cfg, device)
    losses = []
    for model, amp in ((fp32, False), (bf16, True)):
        model.eval()
        torch.manual_seed(0)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x, c, teacher_forcing=True)
        losses.append((out.mse.sum() + out.kld.sum()).item())
        model.train()
    rel = abs(losses[1] - losses[0]) / abs(losses[0])
    if rel > args.tol:
        raise SystemExit(f"bf16 loss {losses[1]} differs from fp32 {losses[0]} by {rel:.2%} (> {args.tol:.0%})")

    def timed(model: SVG, opt: torch.optim.Optimizer, amp: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        train_step(model, opt, x, c, 1.0, True, amp)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    timed(fp32, opt32, False), timed(bf16, opt16, True)  # warm-up
    t32, t16 = [], []
    for _ in range(args.rounds):
        t32.append(timed(fp32, opt32, False))
        t16.append(timed(bf16, opt16, True))
    ratios = sorted(a / b for a, b in zip(t32, t16))
    row = record("amp", device, preset=args.preset, overrides=changes, batch=batch, rounds=args.rounds,
                 loss_rel_diff=rel, fp32_seq_per_s=round(batch / statistics.median(t32), 2),
                 bf16_seq_per_s=round(batch / statistics.median(t16), 2), ratio=round(statistics.median(ratios), 2),
                 ratio_min=round(ratios[0], 2), ratio_max=round(ratios[-1], 2), channels_last=cfg.channels_last)
    print(f"{args.preset} {changes or ''}, batch {batch} on {row['machine']}: bf16 loss within {rel:.2%} of fp32")
    print(f"fp32 {row['fp32_seq_per_s']} seq/s, bf16 {row['bf16_seq_per_s']} seq/s: {row['ratio']}x "
          f"(per-round {row['ratio_min']}-{row['ratio_max']})")


if __name__ == "__main__":
    main()
