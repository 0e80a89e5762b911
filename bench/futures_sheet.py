"""Look at futures, not only at their scores: one PNG per test sequence of simulated data.

Rows: K true futures (the scene re-simulated under its recorded actions with the hidden causes
re-drawn), then S samples of each checkpoint, every row the 2 context frames and 10 predicted
ones. Last row: the per-pixel std maps (largest over the steps, x8 so a few grey levels show),
truths first, then each checkpoint in order. Where the truths' map is bright the world is
uncertain; a model's bright pixels elsewhere are its own doubt.

    python bench/futures_sheet.py --seqs 1,3 --out docs assets/model runs/bo/bo4-400
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import true_futures_of, uncertain_test_set

from cvae import checkpoint
from cvae.artifacts import join, rows, strip, to_uint8, upscale, write_png
from cvae.metrics import pixel_std


def std_map(futures: torch.Tensor) -> np.ndarray:
    """Futures [S, F, 3, H, W] -> uint8 [H, W, 3]: the std over them, largest over steps, x8."""
    m = pixel_std(futures, 0).amax(0).mul(8).clamp(0, 1)
    return to_uint8(m.expand(3, -1, -1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpts", nargs="+")
    p.add_argument("--data", default="data/sim")
    p.add_argument("--seqs", default="1", help="test sequence indices, comma-separated")
    p.add_argument("--truths", type=int, default=4)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", default="runs/sheets")
    args = p.parse_args()
    idx = [int(i) for i in args.seqs.split(",")]
    models = [checkpoint.load_model(c)[0] for c in args.ckpts]
    n_past = models[0].n_past
    ds, found = uncertain_test_set(args.data, max(idx) + 1, n_past + 10)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for i in idx:
        x, c = ds[i]
        truths = true_futures_of(found[i], c, args.truths)
        groups = [truths[:, n_past:]]
        groups += [m.predict(x[None, :n_past], c[None], 10, args.samples, args.seed)[0] for m in models]
        ctx = to_uint8(x[:n_past])
        lines = [strip(np.concatenate([ctx, to_uint8(f)]), scale=1) for g in groups for f in g]
        maps = join([std_map(g) for g in groups], axis=1)
        pad = np.full((maps.shape[0], lines[0].shape[1] - maps.shape[1], 3), 255, np.uint8)
        sheet = upscale(rows([*lines, np.concatenate([maps, pad], 1)]), 2)
        path = write_png(Path(args.out) / f"futures_seq{i}.png", sheet)
        print(path)


if __name__ == "__main__":
    main()
