"""How far does a score move with the seed alone? ``evaluate``'s one sample (the lab's score)
and best of N minus it, at each of ``--seeds`` on the same sequences, then their mean and
standard deviation: a difference between two models or two settings smaller than that SD is the
draw's, not theirs. Each sequence draws its own futures (``SVG.predict`` with a seed per row),
so the batch size does not move the score (``--batch`` shows it).

Stop 78 (docs/issue13.md): on the 256 validation sequences the bundle's best of 10 minus one
sample read +0.88 / +0.96 / +0.97 / +0.94 at seeds 0-3 (SD 0.04); before eval drew one noise
per batch of 32 it read +0.92 / +0.92 / +0.80 at seeds 0-2, and +1.09 at seed 0 in batches of 16.

    python bench/eval_seeds.py --ckpt assets/model --split validate --seeds 0 1 2 3
"""
from __future__ import annotations

import statistics
import time

import torch
from common import checkpoints_parser, record

from cvae import checkpoint
from cvae.data.dataset import BairDataset
from cvae.evaluate import evaluate


def main() -> None:
    p = checkpoints_parser(__doc__, 256)
    p.add_argument("--split", default="validate")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--batch", type=int, default=32, help="sequences per batch (the score should not move with it)")
    args = p.parse_args()
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        data = BairDataset(args.data, args.split, model.n_past + 10)
        one, gain = [], []
        for seed in args.seeds:
            start = time.perf_counter()
            r = evaluate(model, data, 10, args.samples, seed=seed, limit=args.limit, batch_size=args.batch)
            one.append(r.psnr)
            gain.append(r.best_of_n_psnr - r.psnr)
            print(f"{ckpt} seed {seed}: one sample {r.psnr:.3f} dB, best of {args.samples} {gain[-1]:+.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        print(f"{ckpt}: one sample {statistics.mean(one):.3f} +- {sd(one):.3f} dB, best of {args.samples} "
              f"{statistics.mean(gain):+.3f} +- {sd(gain):.3f} over {len(args.seeds)} seeds")
        record("eval_seeds", torch.device("cpu"), ckpt=ckpt, split=args.split, sequences=args.limit,
               samples=args.samples, batch=args.batch, seeds=args.seeds, one_sample=[round(v, 3) for v in one],
               best_minus_one=[round(v, 3) for v in gain], one_sample_sd=round(sd(one), 3),
               best_minus_one_sd=round(sd(gain), 3))


if __name__ == "__main__":
    main()
