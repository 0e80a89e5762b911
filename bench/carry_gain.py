"""Would a longer glide draw the world's alternatives? Where the true futures branch off the arm
the carried displacement is 0.45-0.64 px while a pushed object moves about 2.4 px (stop 62,
``spread_where.py``), so gliding or stopping there changes an object by a few grey levels. This
probe multiplies the carried displacement (``heads.carried``) by G in a trained model with
``flow_carry``, no training, and runs ``eval`` on the copy in OUT: if the glide were merely too
short, agreement and the spread where the truths differ would rise with G.

    python bench/carry_gain.py --ckpt runs/c11/x/bcs-z0.85 --gain 3 --out runs/c13/x/bcs-G3 --limit 64
"""
from __future__ import annotations

import contextlib
import json

import torch
from common import eval_copy, eval_copy_parser, patched, record

import cvae.model.heads as heads
from cvae import checkpoint


def gained(gain: float) -> contextlib.AbstractContextManager[None]:
    """Inside, every carried displacement (``heads.carried``, which the teacher-forced and the
    closed-loop carry both call) is ``gain`` times as long; restored on the way out."""
    plain = heads.carried
    return patched(heads, "carried", lambda flow: plain(flow) * gain)


def main() -> None:
    p = eval_copy_parser(__doc__, "a checkpoint folder of a model with flow_carry")
    p.add_argument("--gain", type=float, required=True, help="the carried displacement x this")
    args = p.parse_args()
    model, _ = checkpoint.load_model(args.ckpt, "cpu")
    if not model.cfg.flow_carry:
        raise SystemExit(f"{args.ckpt}: its flow head carries no motion on (flow_carry false)")
    with gained(args.gain):
        figures = eval_copy(args.ckpt, args.out, args.data, args.limit, split=args.split)
    print(json.dumps(record("carry_gain", torch.device("cpu"), ckpt=args.ckpt, gain=args.gain, limit=args.limit,
                            **figures)))


if __name__ == "__main__":
    main()
