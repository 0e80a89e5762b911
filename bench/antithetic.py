"""Is agreement held down by how noisily 10 futures estimate the model's std map? With 40 futures
it rose 0.41 -> 0.43 on the first 64 validation sequences (docs/issue13.md, stop 74). This probe
draws the futures in antithetic pairs, noise e and -e (a patch of ``SVG._noise``, each future
still a draw from the prior): for a decoder near linear in its noise each pair is centred on
the noiseless future, so ten futures measure its spread with less noise. It runs ``eval`` on a
copy. On the bundle it left agreement where it was (docs/issue13.md,
stop 75): the decoder is far from linear in its noise.

    python bench/antithetic.py --ckpt assets/model --out runs/c25/anti --split validate --limit 0
"""
from __future__ import annotations

import json

import torch
from common import eval_copy, eval_copy_parser, patched, record

from cvae.model.svg import SVG


def antithetic(noise: torch.Tensor) -> torch.Tensor:
    """Noise [n, ...] with its second half of pairs the first's negation (an odd last row kept)."""
    out = noise.clone()
    half = len(noise) // 2
    out[half : 2 * half] = -noise[:half]
    return out


def main() -> None:
    args = eval_copy_parser(__doc__, "a checkpoint folder").parse_args()
    plain = SVG._noise

    def paired(self: SVG, *a, **k) -> torch.Tensor:
        return antithetic(plain(self, *a, **k))

    with patched(SVG, "_noise", paired):
        figures = eval_copy(args.ckpt, args.out, args.data, args.limit, split=args.split)
    print(json.dumps(record("antithetic", torch.device("cpu"), ckpt=args.ckpt, split=args.split, limit=args.limit,
                            **figures)))


if __name__ == "__main__":
    main()
