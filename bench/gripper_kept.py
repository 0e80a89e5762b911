"""Does the model keep the gripper to the end? Per test sequence whose end effector moves more
than ``--moved`` px after the context, the PSNR of the 9x9 window about the true end effector
over the last 3 predicted frames, model against copy-last; the gripper counts as lost in a sample
where the model is not ``--margin`` dB better than copy-last there (it froze the arm where the
context left it, let the gripper fade, or drew a pushed object beside it wrong). The same is
counted on the gripper's own pixels (within ``OWN_PX`` of the end effector), which says which of
those it was: a window lost while its own pixels are kept is the neighbourhood (a pushed object's
haze or place), not the gripper. For a flow head, also each source's share of the mask on those
own pixels, and how much it changes from draw to draw.

The mean window PSNR that ``eval`` reports can hide a handful of such sequences behind many good
ones; this counts them. One sample per seed, ``--samples`` seeds.

    python bench/gripper_kept.py --ckpt assets/model runs/arm-h1.3 --limit 64
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from arm import grip_distance
from common import predict_capturing, record, test_sequences

from cvae import checkpoint
from cvae.condition import XY
from cvae.kinematics import world_to_px
from cvae.metrics import EE_WINDOW, masked_psnr, window_mask

LAST = 3  # the predicted frames scored: the last 3
OWN_PX = 2.0  # the gripper's own pixels: within this of the end effector (its finger's radius is 2.6 px)


def own_region(centres: np.ndarray) -> torch.Tensor:
    """The end effector's (col, row) [..., 2] -> bool [..., 64, 64]: the pixels whose centres lie
    within ``OWN_PX`` of it."""
    return torch.from_numpy(grip_distance(centres) <= OWN_PX)


def end_windows(frames: torch.Tensor, truth: torch.Tensor, centres: np.ndarray, own: bool = False) -> torch.Tensor:
    """Frames and the true frames [N, F, 3, H, W], the true end effector's (col, row) [N, F, 2] ->
    [N]: PSNR of the 9x9 window about it, averaged over the F frames; with ``own``, of the pixels
    whose centres lie within ``OWN_PX`` of it instead."""
    region = own_region(centres) if own else window_mask(torch.from_numpy(centres).float(), EE_WINDOW)
    return masked_psnr(frames, truth, region).mean(1)


def lost(model_psnr: torch.Tensor, copy_psnr: torch.Tensor, moved: torch.Tensor, margin: float) -> torch.Tensor:
    """Bool [N]: the sequences that move (``moved``) where the model's window PSNR is not
    ``margin`` dB over copy-last's."""
    return moved & (model_psnr < copy_psnr + margin)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", default=["assets/model"])
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--samples", type=int, default=3, help="seeds, one sample each")
    p.add_argument("--margin", type=float, default=3.0, help="dB over copy-last that counts as kept")
    p.add_argument("--moved", type=float, default=4.0, help="px the end effector must move after the context")
    args = p.parse_args()
    n_past, n_future = 2, 10
    x, c = test_sequences(args.data, n_past + n_future, args.limit)
    truth = x[:, -LAST:]
    ee = world_to_px(c[..., XY].numpy())  # [N, T, 2] (col, row)
    last = x[:, n_past - 1 : n_past].expand_as(truth)
    copy, copy_own = end_windows(last, truth, ee[:, -LAST:]), end_windows(last, truth, ee[:, -LAST:], own=True)
    moved = torch.from_numpy(np.linalg.norm(ee[:, -1] - ee[:, n_past - 1], axis=-1) > args.moved)
    print(f"{len(x)} test sequences, {int(moved.sum())} whose end effector moves > {args.moved:g} px; the 9x9 window "
          f"over the last {LAST} frames, copy-last {float(copy[moved].mean()):.2f} dB")
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        scores, counts, own, own_counts, shares = [], [], [], [], []
        region = own_region(ee[:, -LAST:])[moved][:, :, None].float()  # [M, LAST, 1, H, W]
        for seed in range(args.samples):
            pred, _, mask, _ = predict_capturing(model, x, c, n_future, seed)
            pred = pred[:, -LAST:]
            if mask is not None:
                shares.append((mask[moved][:, -LAST:] * region).sum((0, 1, 3, 4)) / region.sum())
            scores.append(end_windows(pred, truth, ee[:, -LAST:]))
            counts.append(int(lost(scores[-1], copy, moved, args.margin).sum()))
            own.append(end_windows(pred, truth, ee[:, -LAST:], own=True))
            own_counts.append(int(lost(own[-1], copy_own, moved, args.margin).sum()))
        mean, own_mean = float(torch.stack(scores)[:, moved].mean()), float(torch.stack(own)[:, moved].mean())
        own_spread = float(torch.stack(own)[:, moved].std(0).mean())
        print(f"  {ckpt}: {mean:.2f} dB; gripper lost in {np.mean(counts):.1f} of {int(moved.sum())} sequences "
              f"(per seed: {', '.join(map(str, counts))}); on its own pixels (within {OWN_PX:g} px) {own_mean:.2f} dB "
              f"against copy-last's {float(copy_own[moved].mean()):.2f}, {own_spread:.2f} dB apart over the seeds, "
              f"lost in {np.mean(own_counts):.1f} (per seed: {', '.join(map(str, own_counts))})")
        mixed = {}
        if shares:
            share = torch.stack(shares)
            mixed = {name: [round(float(m), 3), round(float(d), 3)]
                     for name, m, d in zip(model.decoder.head.sources, share.mean(0), share.std(0))}
            print("    the mask's share on its own pixels, mean / std over the seeds: "
                  + ", ".join(f"{name} {m:.3f} / {d:.3f}" for name, (m, d) in mixed.items()))
        record("gripper_kept", torch.device("cpu"), ckpt=ckpt, sequences=int(moved.sum()), samples=args.samples,
               margin_db=args.margin, window_psnr=round(mean, 2), copy_last_psnr=round(float(copy[moved].mean()), 2),
               lost_mean=round(float(np.mean(counts)), 1), lost_per_seed=counts, own_px=OWN_PX,
               own_psnr=round(own_mean, 2), copy_last_own_psnr=round(float(copy_own[moved].mean()), 2),
               own_std_over_seeds_db=round(own_spread, 2), own_lost_mean=round(float(np.mean(own_counts)), 1),
               own_lost_per_seed=own_counts, own_mask_shares=mixed)


if __name__ == "__main__":
    main()
