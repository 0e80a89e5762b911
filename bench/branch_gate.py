"""Where does the model's spread pay? Each sample is gated to the model's mean future (z_scale 0)
wherever the re-simulated true futures agree (``metrics.branching``, widened by D px): an oracle
gate, the ceiling of a model that spreads only where the world branches. Its best of N, coverage,
spread ratio and agreement beside the ungated samples' split each figure into what spread where
the world branches earns and what the model's own doubt elsewhere earns. Simulated data with
hidden causes only.

    python bench/branch_gate.py --ckpt assets/model --limit 16
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
from common import record, true_futures_of, uncertain_test_set
from torch.nn import functional as F

from cvae import checkpoint
from cvae.evaluate import batches
from cvae.metrics import branching, psnr
from cvae.physics_eval import spread_scores, summarize


def gate(samples: torch.Tensor, mean: torch.Tensor, truths: torch.Tensor, widen: int) -> torch.Tensor:
    """Samples [B, S, F, 3, H, W] kept where the truths [B, K, F, 3, H, W] branch (widened by
    ``widen`` px), the mean future [B, 1, F, 3, H, W] elsewhere."""
    g = branching(truths, 1).float()  # [B, F, H, W]
    if widen:
        g = F.max_pool2d(g.flatten(0, 1)[:, None], 2 * widen + 1, 1, widen).view_as(g)
    return mean + g[:, None, :, None] * (samples - mean)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", required=True)
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=16, help="test sequences")
    p.add_argument("--truths", type=int, default=10, help="re-simulated futures per scene")
    p.add_argument("--samples", type=int, default=10, help="prior samples per scene")
    p.add_argument("--widen", type=int, nargs="+", default=[0, 2], help="px the gate is widened by")
    args = p.parse_args()
    ds, found = uncertain_test_set(args.data, args.limit)
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        n, f = model.n_past, 10
        variants = ["ungated", *(f"gate{w}" for w in args.widen)]
        per: dict[str, dict[str, list[torch.Tensor]]] = {v: {} for v in variants}
        best: dict[str, list[torch.Tensor]] = {v: [] for v in variants}
        one: dict[str, list[torch.Tensor]] = {v: [] for v in variants}
        for idx in batches(len(found), 16):
            x, c = (torch.stack(t) for t in zip(*(ds[i] for i in idx)))
            x, c = x[:, : n + f], c[:, : n + f]
            truths = torch.stack([true_futures_of(found[i], c[j], args.truths) for j, i in enumerate(idx)])[:, :, n:]
            samples = model.predict(x[:, :n], c, f, args.samples, idx.start)
            sampling = model.cfg
            model.cfg = dataclasses.replace(sampling, z_scale=0.0)
            mean = model.predict(x[:, :n], c, f, 1, idx.start)
            model.cfg = sampling
            for v in variants:
                out = samples if v == "ungated" else gate(samples, mean, truths, int(v[4:]))
                for name, val in spread_scores(out, truths, x[:, n - 1]).items():
                    per[v].setdefault(name, []).append(val)
                recorded = psnr(out, x[:, None, n:]).mean(-1)  # [B, S] against the recorded future
                best[v].append(recorded.max(1).values)
                one[v].append(recorded[:, 0])
        rows = {}
        for v in variants:
            s, o = summarize(per[v]), torch.cat(one[v]).mean().item()
            rows[v] = {"one_sample": round(o, 3), "best_minus_one": round(torch.cat(best[v]).mean().item() - o, 3),
                       "coverage_minus_one": round(s["coverage_psnr"] - s["one_sample_psnr"], 3),
                       "spread_ratio": round(s["spread_ratio"], 3), "agreement": round(s["agreement"], 3),
                       "misplaced": round(s["misplaced_share"], 3)}
            r = rows[v]
            print(f"{ckpt} {v}: one sample {r['one_sample']:.2f} dB, best of {args.samples} {r['best_minus_one']:+.2f}, "
                  f"coverage {r['coverage_minus_one']:+.2f}, spread ratio {r['spread_ratio']:.2f}, "
                  f"agreement {r['agreement']:.2f}, misplaced {r['misplaced']:.0%}")
        record("branch_gate", torch.device("cpu"), ckpt=ckpt, sequences=len(found), truths=args.truths,
               samples=args.samples, **rows)


if __name__ == "__main__":
    main()
