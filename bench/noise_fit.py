"""Can the spatial noise draw a world at all? For each of K re-simulated true futures of a test
scene, the held noise of the spatial latent (the prior's standard-normal draw, before its
per-cell mean and sigma) is fitted by gradient descent so that the future drawn from it closed
loop matches that true future; the model's weights stay fixed. Where the futures differ
(``metrics.branching``) it scores the fitted future against its own truth, the noiseless future
(noise 0) against it, and a sibling's fitted noise against it. If even fitted noise draws a
future no closer than the noiseless one, no posterior or training term can teach z a world
through this decoder: the path, not the inference, is the limit. Simulated data with hidden
causes; a model with a spatial latent and ``map_noise_only``.

    python bench/noise_fit.py --ckpt assets/model --limit 8
"""
from __future__ import annotations

import numpy as np
import torch
from common import checkpoints_parser, record, true_futures_of, uncertain_test_set

from cvae import checkpoint
from cvae.metrics import branching, masked_psnr


def main() -> None:
    p = checkpoints_parser(__doc__, 8)
    p.add_argument("--truths", type=int, default=4)
    p.add_argument("--steps", type=int, default=60, help="Adam steps fitting each scene's noises")
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args()
    ds, found = uncertain_test_set(args.data, args.limit)
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        if not (model.cfg.z_map and model.cfg.map_noise_only):
            raise SystemExit(f"{ckpt}: needs a spatial latent with map_noise_only (its noise is what is fitted)")
        model.eval().requires_grad_(False)
        n, f = model.n_past, 10
        rows: dict[str, list[float]] = {}
        for i, scene in enumerate(found):
            x, c = ds[i]
            ctx, c = x[None, :n], c[None, : n + f]
            truths = true_futures_of(scene, c[0], args.truths)[:, n:]  # [K, F, 3, H, W]
            differ = branching(truths, 0)  # [F, H, W]
            if not differ.any():
                continue
            held = torch.zeros(args.truths, model.latent_dim - model.z_dim, requires_grad=True)
            opt = torch.optim.Adam([held], lr=args.lr)
            for _ in range(args.steps):
                loss = (model._held_futures(ctx, c, held, n + f) - truths).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                fitted = model._held_futures(ctx, c, held, n + f)
                sibling = model._held_futures(ctx, c, held.roll(1, 0), n + f)
                noiseless = model._held_futures(ctx, c, torch.zeros_like(held), n + f)
            for name, futures in (("fitted", fitted), ("sibling_fitted", sibling), ("noiseless", noiseless)):
                rows.setdefault(name, []).append(float(masked_psnr(futures, truths, differ).nanmean()))
            rows.setdefault("fitted_noise_rms", []).append(float(held.detach().pow(2).mean().sqrt()))
        out = {name: round(float(np.mean(v)), 3) for name, v in rows.items()}
        print(f"{ckpt} ({len(rows['fitted'])} scenes, {args.truths} futures, {args.steps} steps): where the futures "
              f"differ, a future drawn from noise fitted to it {out['fitted']:.2f} dB, from a sibling's fitted noise "
              f"{out['sibling_fitted']:.2f}, the noiseless one {out['noiseless']:.2f}; fitted noise rms "
              f"{out['fitted_noise_rms']:.2f}")
        record("noise_fit", torch.device("cpu"), ckpt=ckpt, sequences=len(rows["fitted"]), truths=args.truths,
               steps=args.steps, lr=args.lr, **out)


if __name__ == "__main__":
    main()
