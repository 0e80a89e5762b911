"""Could the spread head widen the futures in the latent, not in the pixels? The product's head
(``cvae/model/spread.py``) scales each future's pixel departure from the noiseless one, which
turns a pushed object's other places into ghosts. Here the head's map w and the model's own
std map m, averaged over the future steps and each 8 x 8 px cell of the spatial latent (the
``hood`` x ``hood`` cells' largest w, for hood > 1), set the cell's noise scale
clamp(gain w / m, base, ``MOST``), and the futures are drawn again with it: the decoder, not a
pixel blend, draws what the wider noise means. Scored beside the model's own futures and the
product's pixel widening at ``--pixel`` (gain, base), on the same scenes and draws.

Stop 79 (docs/issue13.md), the bundle on the first 128 validation sequences: the cells' scale
does not keep the spread where the head puts it (agreement 0.42-0.47 against the pixel
widening's 0.50 and the model's own 0.45), and best of 10 falls (33.78-33.87 against 33.91).

    python bench/latent_widen.py --ckpt assets/model --limit 128 --variants 2,0.7,1 2,0.7,3 1.5,0.5,1 3,0.7,1
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from branch_gate import Tally, describe, scenes_with_truths
from common import checkpoints_parser, mean_future, patched, record

from cvae import checkpoint
from cvae.evaluate import row_seeds
from cvae.metrics import pixel_std
from cvae.model.spread import FLOOR, MOST, inputs, widen, widen_factor
from cvae.model.svg import SVG
from cvae.model.vgg64 import MAP_SIZE


def cell_scale(w: torch.Tensor, m: torch.Tensor, z_dim: int, z_map: int, gain: float, base: float,
               hood: int) -> torch.Tensor:
    """The noise scale per latent entry [B, z_dim + z_map MAP_SIZE^2] from the head's and the
    model's std maps [B, F, H, W]: 1 on the vector part, clamp(gain w / m, base, MOST) on each
    spatial cell (every map channel alike), w and m averaged over the steps and the cell's pixels."""
    px = w.shape[-1] // MAP_SIZE
    cw, cm = (F.avg_pool2d(v.mean(1, keepdim=True), px) for v in (w, m))
    if hood > 1:
        cw = F.max_pool2d(cw, hood, 1, hood // 2)
    cells = (gain * cw / cm.clamp_min(FLOOR)).clamp(base, MOST).flatten(1)  # [B, MAP_SIZE^2]
    return torch.cat([torch.ones(len(w), z_dim), cells.repeat(1, z_map)], 1)


def predict_scaled(model: SVG, context: torch.Tensor, cond: torch.Tensor, f: int, seeds: range,
                   scale: torch.Tensor) -> torch.Tensor:
    """10 futures per scene, as ``predict`` draws them from one seed per row, with row i's noise x
    ``scale[i]`` [latent_dim] (``predict`` draws once per seed, in the rows' order)."""
    rows, plain = iter(scale), SVG._noise

    def scaled(self: SVG, *a, **k) -> torch.Tensor:
        return plain(self, *a, **k) * next(rows)

    with patched(SVG, "_noise", scaled):
        return model.predict(context, cond, f, 10, seeds)


def main() -> None:
    p = checkpoints_parser(__doc__, 128)
    p.add_argument("--split", default="validate")
    p.add_argument("--variants", nargs="+", default=["2,0.7,1"], help="gain,base,hood of the cells' noise scale")
    p.add_argument("--pixel", type=float, nargs=2, default=[2.0, 0.7], help="the product's widening: gain, base")
    args = p.parse_args()
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        net, model.spread = model.spread, None  # the model's own futures; the head only says w
        if net is None:
            raise SystemExit(f"{ckpt} has no spread head (train_cli.py fit-spread)")
        net.eval()
        n, f = model.n_past, 10
        tallies = {"own": Tally(), "pixel": Tally(), **{v: Tally() for v in args.variants}}
        with torch.no_grad():
            for idx, x, c, truths, _ in scenes_with_truths(args.data, args.split, args.limit, 10, n, f):
                seeds, last, future = row_seeds(0, idx), x[:, n - 1], x[:, n:]
                s = model.predict(x[:, :n], c, f, 10, seeds)
                m, mean = pixel_std(s, 1), mean_future(model, x, c, f)[:, 0]
                w = net.std_map(inputs(mean, s, m, x[:, 0], last), m)
                tallies["own"].add(s, truths, last, future)
                tallies["pixel"].add(widen(s, mean, widen_factor(w, m, *args.pixel)), truths, last, future)
                for v in args.variants:
                    gain, base, hood = v.split(",")
                    scale = cell_scale(w, m, model.z_dim, model.cfg.z_map, float(gain), float(base), int(hood))
                    tallies[v].add(predict_scaled(model, x[:, :n], c, f, seeds, scale), truths, last, future)
        rows = {v: t.row() for v, t in tallies.items()}
        for v, r in rows.items():
            print(f"{ckpt} {v}: {describe(r, 10)}")
        record("latent_widen", torch.device("cpu"), ckpt=ckpt, split=args.split, sequences=args.limit,
               pixel_gain_base=args.pixel, **rows)


if __name__ == "__main__":
    main()
