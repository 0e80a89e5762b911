"""Write a wider copy of a checkpoint that computes what it computed (``vgg64.widened``), for
``train_cli.py --init`` at that width: with ``--copies`` each new channel a twin of an old one
(Net2WiderNet), which ``--init CKPT --width W`` does not do (it starts the new channels fresh).
Prints the largest difference between the two models' futures on the first test sequences.

    python bench/widen.py --ckpt assets/model --width 0.25 --copies --out runs/c19/n2w
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
from common import test_sequences

from cvae import checkpoint
from cvae.model import SVG
from cvae.model.vgg64 import widened


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--copies", action="store_true", help="new channels as twins of old ones, not fresh")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="data/sim")
    args = p.parse_args()
    narrow, meta = checkpoint.load_model(args.ckpt, "cpu")
    if args.width <= narrow.cfg.width:
        raise SystemExit(f"{args.ckpt}: its width is {narrow.cfg.width}; --width {args.width} is not wider")
    torch.manual_seed(0)
    wide = SVG(dataclasses.replace(narrow.cfg, width=args.width))
    try:
        wide.load_state_dict(widened(narrow.state_dict(), wide, narrow.cfg.width, copies=args.copies))
    except ValueError as err:
        raise SystemExit(f"{args.ckpt}: does not widen to {args.width}: {err}") from None
    wide.eval()
    x, c = test_sequences(args.data, 12, 4)
    with torch.no_grad():
        gap = (wide.predict(x[:, :2], c, 10, 2, seed=0) - narrow.predict(x[:, :2], c, 10, 2, seed=0)).abs().max()
    checkpoint.save(args.out, wide, {**meta["config"], "width": args.width},
                    {k: v for k, v in meta.items() if k != "config"})
    print(f"wrote {args.out} (width {narrow.cfg.width} -> {args.width}, "
          f"{'copies' if args.copies else 'fresh'}); its futures differ from {args.ckpt}'s by at most {gap:.1e}")


if __name__ == "__main__":
    main()
