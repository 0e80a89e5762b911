"""Would a rigid push source draw the pushed objects? The candidate: the latest real frame, its
arm filled in (``arm.inpaint``), moved rigidly by s times the end effector's displacement since
then, for s in 0 .. 2, as a flow-head source the mask could pick where an object is pushed (the
way the arm copy draws the arm). Scored against the 10 true futures of each uncertain test
scene on the pixels that move off the arm (any truth differs from the last context frame by
more than 0.1, outside the arm's region at the context's and at that step's end-effector
place) and on the pixels where the truths branch off the arm, beside: one s per step chosen
against each truth (an oracle), one s per future, a checkpoint's one sample and closest of 10,
another true future in place of a sample, and the truths' mean (the best any one prediction
can score there). Simulated data with hidden causes only.

    python bench/rigid_push.py --ckpt assets/model --limit 32
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from common import arm_bases_of, record, test_sequences, true_futures_of_each, uncertain_test_set

from cvae import checkpoint
from cvae.condition import XY
from cvae.kinematics import world_to_px
from cvae.metrics import branching, moving_mask
from cvae.model.arm import arm_region, inpaint
from cvae.model.heads import translate

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def errors(pred: torch.Tensor, truths: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Predictions [N, A, F, 3, H, W] against truths [N, K, F, 3, H, W] -> the squared error
    summed over ``region`` [N, F, H, W], per prediction, truth and step [N, A, K, F]."""
    e = (pred[:, :, None] - truths[:, None]).pow(2).mean(-3)
    return (e * region[:, None, None]).sum((-2, -1))


def db(err: torch.Tensor, count: torch.Tensor) -> float:
    """PSNR of squared errors pooled over all they hold, ``count`` pixels in all."""
    return round(float(10 * torch.log10(count.sum() / err.sum().clamp_min(1e-10))), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="assets/model")
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=32, help="first test sequences")
    args = p.parse_args()
    n_past, k, hw = 2, 10, 64
    x, c = test_sequences(args.data, n_past + 10, args.limit)
    _, found = uncertain_test_set(args.data, args.limit)
    ee = torch.from_numpy(world_to_px(c[..., XY].numpy().astype(np.float64)) - 0.5).float()  # pixel indices
    base = torch.from_numpy(arm_bases_of(found) - 0.5).float()
    truths = true_futures_of_each(found, c, k)[:, :, n_past:]
    last = x[:, n_past - 1]
    arm_then = arm_region(base, ee[:, n_past - 1], hw, hw)[:, 0]
    arm = torch.stack([arm_region(base, ee[:, n_past + f], hw, hw)[:, 0] | arm_then for f in range(10)], 1)
    cleared = inpaint(last, arm_then[:, None])
    moved = torch.stack([torch.stack([translate(cleared, s * (ee[:, n_past + f] - ee[:, n_past - 1]))
                                      for f in range(10)], 1) for s in SCALES], 1)  # [N, S, F, 3, H, W]
    model, _ = checkpoint.load_model(args.ckpt, "cpu")
    pred = model.predict(x[:, :n_past], c, 10, n_samples=10, seed=0)
    out = {}
    for name, region in (("moving_off_arm", moving_mask(truths, last[:, None, None]).any(1) & ~arm),
                         ("branching_off_arm", branching(truths, 1) & ~arm)):
        count = region.float().sum((-2, -1))[:, None].expand(-1, k, -1)  # [N, K, F]
        src, mod = errors(moved, truths, region), errors(pred, truths, region)
        other = errors(truths[:, 1:], truths[:, :1], region)[:, :, 0]  # [N, K-1, F]
        out[name] = {"share": round(float(region.float().mean()), 4),
                     **{f"moved_x{s:g}": db(src[:, i], count) for i, s in enumerate(SCALES)},
                     "best_s_per_step": db(src.min(1).values, count),
                     "best_s_per_future": db(src.sum(-1).min(1).values, count.sum(-1)),
                     "model_one_sample": db(mod[:, 0], count),
                     "model_closest_of_10": db(mod.sum(-1).min(1).values, count.sum(-1)),
                     "another_truth": db(other, count[:, 1:]),
                     "truths_mean": db(errors(truths.mean(1, keepdim=True), truths, region)[:, 0], count)}
        print(f"{name} ({100 * out[name]['share']:.2f}% of the pixels), PSNR dB: "
              + ", ".join(f"{key} {v}" for key, v in out[name].items() if key != "share"))
    record("rigid_push", torch.device("cpu"), ckpt=args.ckpt, limit=len(found), **out)


if __name__ == "__main__":
    main()
