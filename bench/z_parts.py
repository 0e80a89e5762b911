"""Which part of the latent spreads a model's futures: the per-pixel std over S futures in which
only the vector z's noise varies, only the spatial latent's (``--z-map``), or both, in grey
levels, on the moving region (where the truth differs from the last context frame) and on the
rest. The other part's noise is held at one draw; futures are rolled out closed loop with held
noise, as prediction does with ``z_hold``. A grown spatial latent that the decoder does not read
spreads nothing here, whatever its weights. (A model trained with ``map_noise_only`` never draws
vector noise; its vector row says what such noise would do.)

    python bench/z_parts.py --ckpt runs/zm4-h1.3 runs/zm4-mo-h1.3
"""
from __future__ import annotations

import torch
from common import checkpoints_parser, record, test_sequences

from cvae import checkpoint
from cvae.metrics import moving_mask


def main() -> None:
    p = checkpoints_parser(__doc__, 32)
    p.add_argument("--samples", type=int, default=10, help="futures per sequence")
    args = p.parse_args()
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        model.eval()
        if not model.cfg.z_map:
            raise SystemExit(f"{ckpt} has no spatial latent (z_map 0)")
        n, f, s = model.n_past, 10, args.samples
        x, c = test_sequences(args.data, n + f, args.limit)
        moving = moving_mask(x[:, n:], x[:, n - 1 : n])  # [N, F, H, W]
        g = torch.Generator().manual_seed(0)
        held = torch.randn(1, 1, model.latent_dim, generator=g)
        out = {}
        for part, cols in (("vector", slice(0, model.z_dim)), ("map", slice(model.z_dim, model.latent_dim)),
                           ("both", slice(0, model.latent_dim))):
            noise = held.expand(s, n + f - 1, -1).clone()
            noise[:, :, cols] = torch.randn(s, 1, cols.stop - cols.start, generator=g)
            stds = []
            with torch.no_grad():
                for i in range(len(x)):
                    ctx = x[i : i + 1, :n].expand(s, -1, -1, -1, -1)
                    h, skips = model._encode(ctx)
                    pred, _ = model._rollout(ctx, h, skips, c[i : i + 1].expand(s, -1, -1), n + f, noise=noise)
                    stds.append(pred[:, n - 1 :].std(0).mean(1))  # [F, H, W]
            std = 255 * torch.stack(stds)
            out[part] = (round(float(std[moving].mean()), 2), round(float(std[~moving].mean()), 2))
        print(f"{ckpt}: std over {s} futures in grey levels (moving region, rest): "
              + ", ".join(f"{k if k == 'both' else k + ' noise alone'} {v[0]} / {v[1]}" for k, v in out.items()))
        record("z_parts", torch.device("cpu"), ckpt=ckpt, sequences=len(x), samples=s,
               **{f"{k}_{r}": v[j] for k, v in out.items() for j, r in enumerate(("moving", "rest"))})


if __name__ == "__main__":
    main()
