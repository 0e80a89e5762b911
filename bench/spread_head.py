"""Could a head the model carries set where its futures spread? The spread head
(``cvae/model/spread.py``) says the truths' per-pixel std (10 re-simulated futures) from what the
model can see at each future step: its noiseless future, its own futures' std map and mean, and
the first context frame. Here it is fitted on ``--train`` training scenes (``cvae.spread_fit``;
``--quantile q`` fits that quantile by the pinball loss), or, for a checkpoint written by
``train_cli.py fit-spread``, its own head is taken. Each sample then keeps, per pixel, the factor g
of its departure from the noiseless future that moves its group's std map m toward the fitted one
w: ``lin L``, g = L w / m + 1 - L (the map becomes L w + (1 - L) m), or ``pow P``, g = (w / m)^P
(m^(1-P) w^P); at most 4. ``up L`` is ``lin L`` where it widens the spread and nothing where it
would narrow it; ``--gain k`` also takes k w for w and ``--base b`` keeps b m where the head says
less (the product's ``spread.widen_factor`` is ``up 1`` with both). Scored on another split with
eval's spread figures and best of N against the recorded future. ``--oracle`` adds the ``lin``
and ``up`` mixes with the truths' own std map for w, the ceiling of any such head.

On the bundle's model (docs/issue13.md, stops 75-77) the fitted map alone agrees with the truths'
0.53, above the model's own 0.45; ``lin`` and ``pow`` take off the model's own doubt, which best of
10 earns on, and plain ``up`` rarely acts, but gain 2 with base 0.6 gives agreement 0.52 at spread
ratio 1.22 with best of 10 at +1.04 (256 validation scenes).

    python bench/spread_head.py --ckpt assets/model --train 1024 --limit 256 --split validate --oracle
"""
from __future__ import annotations

import os

import torch
from branch_gate import Tally, describe, mix, scenes_with_truths
from common import checkpoints_parser, mean_future, record

from cvae import checkpoint
from cvae.data.dataset import BairDataset
from cvae.evaluate import row_seeds
from cvae.metrics import pixel_std
from cvae.model.spread import FLOOR, MOST, SpreadHead, chosen, inputs
from cvae.physics_eval import std_agreement
from cvae.spread_fit import examples, fit


def factor(w: torch.Tensor, m: torch.Tensor, kind: str, amount: float, base: float = 1.0) -> torch.Tensor:
    """The per-pixel share g of a sample's departure kept, so that its group's std map m becomes
    ``lin``: amount w + (1 - amount) m; ``pow``: m^(1 - amount) w^amount; at most ``MOST``.
    ``up``: ``lin`` where that widens the spread, m where it would narrow it (g at least 1), so
    the model's own doubt, on which best of N earns, is kept; with ``base`` b, the same from the
    map b m: g = max(b, amount w / m + (1 - amount) b). ``up 1`` with base b is the product's
    ``spread.widen_factor`` at gain 1."""
    if kind == "up":
        return (amount * w / m.clamp_min(FLOOR) + (1 - amount) * base).clamp(base, MOST)
    if kind == "lin":
        return (amount * w / m.clamp_min(FLOOR) + 1 - amount).clamp(0, MOST)
    return (w.clamp_min(1e-4) / m.clamp_min(1e-4)).pow(amount).clamp(0, MOST)


def seen(model, data: str, split: str, limit: int, samples: int, seeds: list[int], drawn: int = 0):
    """Per batch of scenes and per seed: the head's inputs, the truths' std map, and the samples
    (``drawn`` if more), the first ``samples``' std map, the noiseless future, truths, recorded
    future and last context frame for scoring. Each seed's futures are new draws of the same
    scenes and truths, so the figures pool ``len(seeds)`` draws per scene (one seed's best of N
    margin moves by ~0.04 dB, stop 78)."""
    n, f = model.n_past, 10
    for idx, x, c, truths, _ in scenes_with_truths(data, split, limit, 10, n, f):
        mean = mean_future(model, x, c, f)
        for seed in seeds:
            s = model.predict(x[:, :n], c, f, max(samples, drawn), row_seeds(seed, idx))
            m = pixel_std(s[:, :samples], 1)
            yield inputs(mean[:, 0], s[:, :samples], m, x[:, 0], x[:, n - 1]), pixel_std(truths, 1), \
                (s, m, mean, truths, x[:, n:], x[:, n - 1])


def training_set(model, args) -> tuple[torch.Tensor, torch.Tensor]:
    """``spread_fit.examples`` on ``args.train`` training scenes, read from ``args.cache`` when it
    exists, else computed and written there."""
    if args.cache and os.path.exists(args.cache):
        return torch.load(args.cache, weights_only=True)
    xs, ys = examples(model, BairDataset(args.data, "train", model.n_past + 10), args.train, workers=2)
    if args.cache:
        torch.save((xs, ys), args.cache)
    return xs, ys


def main() -> None:
    p = checkpoints_parser(__doc__, 256)
    p.add_argument("--train", type=int, default=1024, help="training scenes the head is fitted on")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--width", type=int, default=40)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--split", default="validate", help="the split scored")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="the futures' seeds, pooled (eval's is 0)")
    p.add_argument("--select", type=int, default=0,
                   help="draw this many futures and score the --samples the head's map chooses (spread.chosen)")
    p.add_argument("--lin", type=float, nargs="*", default=[0.0, 0.2, 0.3])
    p.add_argument("--pow", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.5])
    p.add_argument("--up", type=float, nargs="*", default=[0.2, 0.5, 1.0])
    p.add_argument("--oracle", action="store_true", help="also the lin and up mixes toward the truths' own std map")
    p.add_argument("--quantile", type=float, default=0.0,
                   help="fit this quantile of the truths' spread (pinball loss) in place of its mean (0)")
    p.add_argument("--gain", type=float, nargs="*", default=[],
                   help="also the up mixes toward the fitted map times each of these")
    p.add_argument("--base", type=float, nargs="*", default=[],
                   help="also each gain's up mixes from the model's map times each of these (b m)")
    p.add_argument("--cache", default="", help="the training scenes' inputs are read from here, or written here")
    p.add_argument("--blend", type=float, nargs="*", default=[],
                   help="shares B of the truths' map in w (B t + (1 - B) w): how good a head must be; lin and up mixes")
    args = p.parse_args()
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        net, model.spread = model.spread, None  # the model's own futures are scored; the head only says w
        fitted_before = net is not None
        if not fitted_before:
            xs, ys = training_set(model, args)
            torch.manual_seed(0)
            net = SpreadHead(args.width)
            print(f"{ckpt}: fitted on {args.train} scenes, last loss {fit(net, xs, ys, args.steps, args.quantile):.4f}")
        net.eval()
        mixes = [*(("lin", a) for a in args.lin), *(("up", a) for a in args.up)]
        variants = [*(("fitted", kind, a) for kind, a in [*mixes, *(("pow", a) for a in args.pow)]),
                    *(("oracle", kind, a) for kind, a in (mixes if args.oracle else [])),
                    *((f"blend{b:g}", kind, a) for b in args.blend for kind, a in mixes),
                    *((f"gain{k:g}", "up", a) for k in args.gain for a in args.up),
                    *((f"gain{k:g}", f"base{b:g}", a) for k in args.gain for b in args.base for a in args.up)]
        tallies = {v: Tally() for v in variants}
        alone, alone_blend = [], {b: [] for b in args.blend}
        with torch.no_grad():
            for x, t, (s, m, mean, truths, future, last) in seen(model, args.data, args.split, args.limit,
                                                                 args.samples, args.seeds, args.select):
                w = net.std_map(x, m)
                if args.select:
                    s = chosen(s, w, args.samples)
                    m = pixel_std(s, 1)
                alone.append(std_agreement(t, w))
                maps = {"fitted": w, "oracle": t, **{f"blend{b:g}": b * t + (1 - b) * w for b in args.blend},
                        **{f"gain{k:g}": k * w for k in args.gain}}
                for b in args.blend:
                    alone_blend[b].append(std_agreement(t, maps[f"blend{b:g}"]))
                for source, kind, a in variants:
                    g = factor(maps[source], m, "up", a, float(kind[4:])) if kind.startswith("base") else \
                        factor(maps[source], m, kind, a)
                    tallies[source, kind, a].add(mix(s, mean, g), truths, last, future)
        rows = {"fitted_alone_agreement": round(torch.cat(alone).nanmean().item(), 3)}
        print(f"{ckpt}: the fitted map alone against the truths' std map: agreement {rows['fitted_alone_agreement']:.3f}")
        for b, v in alone_blend.items():
            rows[f"blend{b:g}_alone_agreement"] = round(torch.cat(v).nanmean().item(), 3)
            print(f"{ckpt}: blend {b:g} alone: agreement {rows[f'blend{b:g}_alone_agreement']:.3f}")
        for (source, kind, a), tally in tallies.items():
            r = rows[f"{source}_{kind}{a:g}"] = tally.row()
            print(f"{ckpt} {source} {kind} {a:g}: {describe(r, args.samples)}")
        record("spread_head", torch.device("cpu"), ckpt=ckpt, split=args.split, sequences=args.limit,
               seeds=args.seeds, select=args.select, train_scenes=args.train, steps=args.steps, width=args.width,
               quantile=args.quantile, fitted_before=fitted_before, **rows)


if __name__ == "__main__":
    main()
