"""Are the model's futures where the world branches alternative blurs because its flow head's
mask blends sources? Where the truths differ a sample keeps 0.34-0.48 of a true future's squared
edges (README, "The last two targets, in one place"), and a mask that mixes an object moved
with it left behind draws a ghost of both. This probe exports a copy to OUT with the mask's
logits x T (``mask_temperature``; T > 1: each pixel nearer one source, whole), no training, and
runs ``eval`` on it: if blending were what keeps the futures from being the world's
alternatives, agreement would rise with the squared edges. It did not (docs/issue13.md, stop 64): on stop
59's `bcs`, T 4 took a sample's squared edges where the truths branch from 0.43 to 0.55 of a true
future's and left agreement at 0.34, since no source holds the object at another place. What it
does do is draw each future crisper (stop 67: the bundle's T 1.5).

    python bench/mask_temperature.py --ckpt runs/c11/x/bcs-z0.85 --temperature 4 --out runs/c14/x/bcs-T4 --limit 64
"""
from __future__ import annotations

import json

import torch
from common import eval_copy, eval_copy_parser, record

from cvae import checkpoint


def main() -> None:
    p = eval_copy_parser(__doc__, "a checkpoint folder of a model with the flow head")
    p.add_argument("--temperature", type=float, required=True, help="the mask logits x this")
    args = p.parse_args()
    model, _ = checkpoint.load_model(args.ckpt, "cpu")
    if model.cfg.output != "flow":
        raise SystemExit(f"{args.ckpt}: its head is '{model.cfg.output}', not 'flow': it has no source mask to sharpen")
    figures = eval_copy(args.ckpt, args.out, args.data, args.limit, {"mask_temperature": args.temperature},
                        args.split)
    print(json.dumps(record("mask_temperature", torch.device("cpu"), ckpt=args.ckpt, temperature=args.temperature,
                            limit=args.limit, **figures)))


if __name__ == "__main__":
    main()
