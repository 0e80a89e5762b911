"""Where a checkpoint's predictions lose their sharpness: the edges (``metrics.gradient_map``) of
the truth that one sample lacks, per step, split into three regions of each true frame: the 9x9
window around the true end effector (the gripper), the other pixels that move (pushed objects,
the arm's shaft, the shadows, what they uncover) and the still rest.

``eval``'s sharpness is one ratio per step over the whole frame; this says which part of the
picture the missing edges come from, so a lever aimed at the blur can be aimed at the right place.
Each region's share is its missing edges over all the truth's edges (the shares add up to one
minus the frame's ratio); its own ratio is the prediction's edges over the truth's within it.
For a flow head it also says which source the mask gives the still pixels, and how far the moved
previous frame is displaced there (after the head's ``flow_deadzone``): a frame resampled by a
fraction of a pixel at every step blurs step after step.

    python bench/blur.py --ckpt assets/model --limit 64
    python bench/blur.py --ckpt assets/model --limit 64 --flow-deadzone 0.5   # the dead zone alone, untrained
"""
from __future__ import annotations

import argparse

import torch
from common import load_with_deadzone, predict_capturing, record, test_sequences

from cvae.condition import XY
from cvae.kinematics import world_to_px
from cvae.metrics import gradient_map, moving_mask, window_mask
from cvae.model.heads import FlowHead

REGIONS = ("gripper window", "other moving", "still")


def regions(truth: torch.Tensor, last: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bool masks [N, T, H, W] of the three regions of each true frame ``truth`` [N, T, 3, H, W]."""
    window = window_mask(torch.from_numpy(world_to_px(cond[..., XY].numpy())))
    moving = moving_mask(truth, last[:, None]) & ~window
    return dict(zip(REGIONS, (window, moving, ~window & ~moving)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", default=["assets/model"])
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--flow-deadzone", type=float, default=None,
                   help="use this dead zone in a flow head instead of the checkpoint's own (no training: what it does alone)")
    args = p.parse_args()
    for ckpt in args.ckpt:
        model = load_with_deadzone(ckpt, args.flow_deadzone)
        n_past, n_future = model.n_past, 10
        x, c = test_sequences(args.data, n_past + n_future, args.limit)
        pred, moved_prev, masks, _ = predict_capturing(model, x, c, n_future)
        truth = x[:, n_past:]
        g_true, g_pred = gradient_map(truth), gradient_map(pred)
        total = g_true.sum((0, 2, 3))  # [T]: all the truth's edges per step
        print(f"{ckpt}: {len(x)} test sequences, one sample; per step 1..{n_future}")
        print(f"  {'frame: prediction / truth edges':34s} {' '.join(f'{v:5.2f}' for v in g_pred.sum((0, 2, 3)) / total)}")
        out = {}
        where = regions(truth, x[:, n_past - 1], c[:, n_past:])
        for name, mask in where.items():
            t, q = (g_true * mask).sum((0, 2, 3)), (g_pred * mask).sum((0, 2, 3))
            share, ratio = (t - q) / total, q / t
            print(f"  {name + ': share of edges lost':34s} {' '.join(f'{v:5.2f}' for v in share)}")
            print(f"  {name + ': own ratio':34s} {' '.join(f'{v:5.2f}' for v in ratio)}"
                  f"   ({float(mask.float().mean()):.1%} of pixels)")
            out[f"{name} share lost, step 10"] = round(float(share[-1]), 3)
            out[f"{name} ratio, step 10"] = round(float(ratio[-1]), 3)
        head = model.decoder.head
        if isinstance(head, FlowHead):
            still = where["still"]
            shares = [float(masks[:, :, k][still].mean()) for k in range(len(head.sources))]
            moved = moved_prev.norm(dim=2)[still]
            shift, unmoved = float(moved.mean()), float((moved == 0).float().mean())
            print("  still pixels' mask: " + ", ".join(f"{n} {v:.1%}" for n, v in zip(head.sources, shares))
                  + f"; the moved previous frame's displacement there: {shift:.2f} px on average, "
                  f"exactly 0 on {unmoved:.1%} of them (flow_deadzone {head.deadzone} px)")
            out.update({f"still mask, {n}": round(v, 4) for n, v in zip(head.sources, shares)})
            out["still displacement of the previous frame, px"] = round(shift, 3)
            out["still pixels not displaced"] = round(unmoved, 4)
        record("blur", torch.device("cpu"), ckpt=ckpt, sequences=len(x), flow_deadzone=args.flow_deadzone, **out)


if __name__ == "__main__":
    main()
