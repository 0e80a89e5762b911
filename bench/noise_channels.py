"""Which of the spatial latent's channels draws the spread where the world does not branch? Each
variant scales the prior's noise on each channel of the map (a patch of ``SVG._noise``; the
vector part and the cells' own means and stds untouched) and is scored as ``branch_gate.Tally``
scores a gated variant: eval's spread figures against 10 re-simulated futures, and the one sample
and best of N against the recorded future. Channel 0 also feeds the carried motion's mask logit
(``carry_noise``). On the bundle (docs/issue13.md, stop 76) muting any one channel lifts
agreement 0.01-0.02 as the spread narrows, and raising the others to win the spread back gives
it up again: no channel holds the misplaced spread apart.

    python bench/noise_channels.py --ckpt assets/model --limit 128 --scales 1,1,1,1 0,1,1,1 0,1.15,1.15,1.15
"""
from __future__ import annotations

import torch
from branch_gate import Tally, describe, scenes_with_truths
from common import checkpoints_parser, patched, record

from cvae import checkpoint
from cvae.evaluate import row_seeds
from cvae.model.svg import SVG
from cvae.model.vgg64 import MAP_SIZE


def scale_channels(noise: torch.Tensor, z_dim: int, scales: tuple[float, ...]) -> torch.Tensor:
    """Noise [..., z_dim + C x MAP_SIZE^2] (the vector part, then the map channel by channel) with
    channel c's cells x ``scales[c]``; a new tensor (``SVG._noise`` returns an expanded view)."""
    cells = MAP_SIZE * MAP_SIZE
    if noise.shape[-1] != z_dim + len(scales) * cells:
        raise SystemExit(f"{len(scales)} scales for a latent of {noise.shape[-1]} ({z_dim} + channels x {cells})")
    out = noise.clone()
    out[..., z_dim:] = (out[..., z_dim:].unflatten(-1, (len(scales), cells))
                        * torch.tensor(scales, dtype=noise.dtype, device=noise.device)[:, None]).flatten(-2)
    return out


@torch.no_grad()
def main() -> None:
    p = checkpoints_parser(__doc__, 128)
    p.add_argument("--split", default="validate")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--scales", nargs="+", default=["1,1,1,1", "0,1,1,1"],
                   help="per variant, the map channels' noise multipliers, comma-separated")
    args = p.parse_args()
    variants = [tuple(float(v) for v in s.split(",")) for s in args.scales]
    plain = SVG._noise
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        tallies = {v: Tally() for v in variants}
        n, f = model.n_past, 10
        for idx, x, c, truths, _ in scenes_with_truths(args.data, args.split, args.limit, 10, n, f):
            for v in variants:
                def scaled(self: SVG, *a, v=v, **k) -> torch.Tensor:
                    return scale_channels(plain(self, *a, **k), self.z_dim, v)

                with patched(SVG, "_noise", scaled):
                    futures = model.predict(x[:, :n], c, f, args.samples, row_seeds(0, idx))
                    tallies[v].add(futures, truths, x[:, n - 1], x[:, n:])
        rows = {}
        for v, tally in tallies.items():
            r = rows[",".join(f"{s:g}" for s in v)] = tally.row()
            print(f"{ckpt} x ({', '.join(f'{s:g}' for s in v)}): {describe(r, args.samples)}")
        record("noise_channels", torch.device("cpu"), ckpt=ckpt, split=args.split, sequences=args.limit, **rows)


if __name__ == "__main__":
    main()
