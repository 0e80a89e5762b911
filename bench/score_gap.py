"""How far a checkpoint's futures are from the world's under the proper score it trains on, and
whether the gap is one of accuracy or of spread.

On each uncertain test scene: the energy score (``metrics.energy_score``, per ``--patch`` x
``--patch`` patch, the branching patches x 1 + ``--branch-weight``: the training recipe's
settings) against K true futures, of the model's S samples; of its noiseless future, S times
(no spread); of the truths' mean, S times (the best one prediction can do); of the last context
frame, S times (copy-last); and of S more re-simulations (a perfect sampler, the floor). Each is
also printed as its place between that floor (0) and copy-last (1). The same on the frames'
horizontal and vertical pixel differences (their edges), which weigh a smeared object more than
a misplaced one. Simulated data with hidden causes only.

    python bench/score_gap.py --ckpt assets/model --limit 32
"""
from __future__ import annotations

import torch
from common import checkpoints_parser, mean_future, record, test_sequences, true_futures_of_each, uncertain_test_set

from cvae import checkpoint
from cvae.metrics import energy_score, pixel_differences


def differences(frames: torch.Tensor) -> torch.Tensor:
    """Frames [..., C, H, W] -> their horizontal and vertical pixel differences
    (``metrics.pixel_differences``) as channels [..., 2C, H, W], the same size so that patches
    tile them as they tile frames."""
    return torch.cat(pixel_differences(frames), -3)


def gaps(candidates: dict[str, torch.Tensor], truths: torch.Tensor, patch: int,
         branch_weight: float) -> dict[str, dict[str, list[float]]]:
    """Each candidate's futures [N, S, F, C, H, W] scored against ``truths`` [N, K, ...] in the
    pixel domain and on :func:`differences`: {domain: {name: [score, its place between
    ``oracle`` (0) and ``copy-last`` (1)]}}; the candidates must include those two."""
    out = {}
    for domain, fn in (("pixels", lambda v: v), ("differences", differences)):
        score = {name: energy_score(fn(v), fn(truths), patch, branch_weight=branch_weight).mean().item()
                 for name, v in candidates.items()}
        floor, top = score["oracle"], score["copy-last"]
        out[domain] = {name: [round(s, 5), round((s - floor) / (top - floor), 3)] for name, s in score.items()}
    return out


def main() -> None:
    p = checkpoints_parser(__doc__, 32)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--truths", type=int, default=10)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--branch-weight", type=float, default=10.0)
    args = p.parse_args()
    n_past = 2
    x, c = test_sequences(args.data, 12, args.limit)
    _, found = uncertain_test_set(args.data, args.limit)
    both = true_futures_of_each(found, c, args.truths + args.samples)[:, :, n_past:]
    truths, oracle = both[:, : args.truths], both[:, args.truths :]
    shape = oracle.shape
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        with torch.no_grad():
            pred = model.predict(x[:, :n_past], c, 10, n_samples=args.samples, seed=0)
            noiseless = mean_future(model, x, c, 10)
        candidates = {"oracle": oracle, "model": pred, "noiseless": noiseless.expand(shape),
                      "truths' mean": truths.mean(1, keepdim=True).expand(shape),
                      "copy-last": x[:, n_past - 1][:, None, None].expand(shape)}
        out = gaps(candidates, truths, args.patch, args.branch_weight)
        for domain, scores in out.items():
            print(f"{ckpt} ({len(found)} test sequences, {args.samples} futures each, {args.truths} truths), "
                  f"{domain}: " + ", ".join(f"{name} {s:.5f} ({place:.2f})" for name, (s, place) in scores.items()))
        record("score_gap", torch.device("cpu"), ckpt=ckpt, limit=len(found), samples=args.samples,
               truths=args.truths, patch=args.patch, branch_weight=args.branch_weight, **out)


if __name__ == "__main__":
    main()
