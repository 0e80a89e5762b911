"""Does z say which future it saw? Each of K re-simulated true futures of a test scene is
encoded by the posterior (its mean z at every step, from that future's own frames) and rolled
out closed loop from the context, as the SVG loss's pass without teacher forcing; its PSNR
against that same future is set beside one sample from the prior and the closest of N samples
(coverage) on the same futures. A model whose z carries the world's branching rebuilds the
future it saw better than a random z does; one that ignores z scores the same. Also on the
pixels where the K futures differ (``metrics.branching``), which is where z has to act.
With a world posterior (``model/world.py``) each future is also drawn from the noise it infers
from that future and from a sibling's. Simulated data with hidden causes only.

    python bench/posterior.py --ckpt assets/model --limit 32
"""
from __future__ import annotations

import numpy as np
import torch
from common import checkpoints_parser, record, true_futures_of, uncertain_test_set

from cvae import checkpoint
from cvae.metrics import branching, masked_psnr, psnr


def region_psnr(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``metrics.masked_psnr`` of futures [..., F, 3, H, W] over ``mask`` [F, H, W] at each step,
    averaged over the steps where the mask holds a pixel, as the whole-frame figure is -> [...]."""
    return masked_psnr(pred, truth, mask).nanmean(-1)


def world_rebuilt(model, ctx: torch.Tensor, c: torch.Tensor, truths: torch.Tensor) -> dict[str, torch.Tensor]:
    """With a world posterior (``world_posterior`` > 0): the K futures [K, F, 3, H, W] of context
    [1, n_past, ...] drawn closed loop from the held noise it infers (its mean) from each future
    itself ("world") and from the next sibling's ("world_sibling"). The same noise, in another
    order: a posterior and decoder that carry which world a future is in score the first higher."""
    mu, _ = model.world(ctx[:, -1], truths[None])
    t = model.n_past + truths.shape[1]
    return {name: model._held_futures(ctx, c, held, t) for name, held in (("world", mu), ("world_sibling", mu.roll(1, 0)))}


@torch.no_grad()
def main() -> None:
    p = checkpoints_parser(__doc__, 32)
    p.add_argument("--truths", type=int, default=6, help="re-simulated futures per scene")
    p.add_argument("--samples", type=int, default=6, help="prior samples per scene")
    args = p.parse_args()
    ds, found = uncertain_test_set(args.data, args.limit)
    k = args.truths
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        model.eval()
        n, f = model.n_past, 10
        rows: dict[str, list[float]] = {}
        for i, scene in enumerate(found):
            x, c = ds[i]
            x, c = x[None, : n + f], c[None, : n + f]
            truths = true_futures_of(scene, c[0], k)[:, n:]  # [K, F, 3, H, W]
            seqs = torch.cat([x[:, :n].expand(k, -1, -1, -1, -1), truths], 1)
            h, skips = model._encode(seqs)
            mu, _ = model._posterior(h, skips[3])
            rebuilt, _ = model._rollout(seqs[:, :n], h[:, :n], [s[:, :n] for s in skips], c.expand(k, -1, -1),
                                        n + f, z=mu)
            rebuilt = rebuilt[:, n - 1:]
            samples = model.predict(x[:, :n], c, f, args.samples, seed=i)[0]  # [S, F, 3, H, W]
            differ = branching(truths, 0)  # [F, H, W]
            pair = psnr(samples[:, None], truths[None]).mean(-1)  # [S, K]
            pair_b = region_psnr(samples[:, None], truths[None], differ)
            if model.world is not None:
                for name, drawn in world_rebuilt(model, x[:, :n], c, truths).items():
                    rows.setdefault(name, []).append(float(psnr(drawn, truths).mean(-1).mean()))
                    rows.setdefault(f"{name}_branching", []).append(float(region_psnr(drawn, truths, differ).mean()))
            for name, v in (("posterior", psnr(rebuilt, truths).mean(-1).mean()), ("one_sample", pair[0].mean()),
                            ("coverage", pair.max(0).values.mean()),
                            ("posterior_branching", region_psnr(rebuilt, truths, differ).mean()),
                            ("one_sample_branching", pair_b[0].mean()),
                            ("coverage_branching", pair_b.max(0).values.mean()),
                            ("branching_share", differ.float().mean())):
                rows.setdefault(name, []).append(float(v))
        out = {name: round(float(np.nanmean(v)), 3) for name, v in rows.items()}  # NaN: no pixel branches
        print(f"{ckpt}: the future z saw, rebuilt {out['posterior']:.2f} dB; one prior sample {out['one_sample']:.2f}; "
              f"closest of {args.samples} {out['coverage']:.2f} (where the futures differ, "
              f"{100 * out['branching_share']:.1f}% of the pixels: {out['posterior_branching']:.2f} / "
              f"{out['one_sample_branching']:.2f} / {out['coverage_branching']:.2f})")
        if "world" in out:
            print(f"  drawn from the noise the world posterior infers from the future itself {out['world']:.2f} dB, "
                  f"from a sibling's {out['world_sibling']:.2f} (where the futures differ: "
                  f"{out['world_branching']:.2f} / {out['world_sibling_branching']:.2f})")
        record("posterior", torch.device("cpu"), ckpt=ckpt, sequences=len(found), truths=k, samples=args.samples, **out)


if __name__ == "__main__":
    main()
