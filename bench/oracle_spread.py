"""The ceiling of the distribution figures: a perfect sampler scored as eval scores a model.

The "model" here draws its N futures from the world itself (the scene re-simulated with hidden
causes of draws K+1..K+N), and is scored against the K true futures of draws 1..K with
``physics_eval.spread_scores``, exactly as ``eval --truths K --samples N`` scores a model. With
finite K and N even a perfect sampler's two std maps differ, so its agreement is the most any
model can reach on these sequences; issue 13's targets (agreement >= 0.5, coverage +1 dB,
spread ratio 0.7-1.3) read against it.

    python bench/oracle_spread.py --limit 64 --truths 10 --samples 10
"""
from __future__ import annotations

import argparse
import json

import torch
from common import record, true_futures_of, uncertain_test_set

from cvae.physics_eval import spread_scores, summarize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--truths", type=int, default=10)
    p.add_argument("--samples", type=int, default=10)
    args = p.parse_args()
    n_past, n_future = 2, 10
    ds, found = uncertain_test_set(args.data, args.limit, n_past + n_future)
    per_seq: dict[str, list[torch.Tensor]] = {}
    for i, scene in enumerate(found):
        x, c = ds[i]
        futures = true_futures_of(scene, c, args.truths + args.samples)[:, n_past:]
        truths, samples = futures[: args.truths], futures[args.truths :]
        for name, v in spread_scores(samples[None], truths[None], x[None, n_past - 1]).items():
            per_seq.setdefault(name, []).append(v)
    out = {"sequences": len(found), "truths": args.truths, "samples": args.samples, **summarize(per_seq)}
    print(json.dumps(out))
    record("oracle_spread", torch.device("cpu"), **out)


if __name__ == "__main__":
    main()
