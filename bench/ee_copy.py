"""How good the end-effector copy is by itself: the last context frame moved rigidly with the end
effector, scored in windows around the true end-effector pixel, as the copy a checkpoint's
end-effector map places and as the copy the simulator's kinematics place exactly, beside
copy-last and the checkpoint's own one-sample prediction.

A rigid copy is right on the gripper and wrong on everything around it that does not move with
it, so a small window says whether it lands on the gripper, and the 9x9 window of ``eval`` says
what it could give a model there. The 9x9 figures are also split by whether the arm's height
changes after the context (lifted or lowered: the gripper then looks different from the copy).

    python bench/ee_copy.py --ckpt assets/model --limit 64
"""
from __future__ import annotations

import argparse

import torch
from common import record, test_sequences

from cvae import checkpoint
from cvae.condition import XY, Z
from cvae.kinematics import decoded_place, world_to_px
from cvae.metrics import masked_psnr, window_mask
from cvae.model.cues import shift_px
from cvae.model.heads import translate
from cvae.model.svg import at_rest


def moved(frame: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``frame`` [N, 3, H, W] shifted so that place ``src`` [N, 2] lands on ``dst``, as
    ``Decoder.ee_copy_of`` shifts it."""
    return translate(frame, shift_px(src, dst, *frame.shape[-2:]))


def place(cond: torch.Tensor) -> torch.Tensor:
    """Where the simulator's kinematics put the end effector in the frame drawn from ``cond``."""
    return torch.from_numpy(decoded_place(cond.double().numpy())).float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="assets/model", help="a checkpoint with an end-effector map")
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=64)
    args = p.parse_args()
    model, _ = checkpoint.load_model(args.ckpt, "cpu")
    if model.decoder.ee_map is None:
        raise SystemExit(f"{args.ckpt} has no end-effector map")
    n_past, n_future = model.n_past, 10
    x, c = test_sequences(args.data, n_past + n_future, args.limit)
    last, rest = x[:, n_past - 1], at_rest(c[:, n_past - 1])
    norm, where = model.predictor.normalize, model.decoder.ee_map.location
    with torch.no_grad():
        pred = model.predict(x[:, :n_past], c, n_future, seed=0)[:, 0]
        steps = range(n_past, n_past + n_future)  # frame t is drawn from the condition of t - 1
        by_map = torch.stack([moved(last, where(norm(rest)), where(norm(c[:, t - 1]))) for t in steps], 1)
        by_kinematics = torch.stack([moved(last, place(rest), place(c[:, t - 1])) for t in steps], 1)
    truth = x[:, n_past:]
    centre = torch.from_numpy(world_to_px(c[:, n_past:, XY].numpy()))
    rows = {"copy last": last[:, None].expand_as(truth), "copy placed by the map": by_map,
            "copy placed by the kinematics": by_kinematics, "the model (1 sample)": pred}
    height = c[..., Z]
    look_changes = (height[:, n_past:] != height[:, n_past - 1, None]).any(1)
    out = {}
    for size in (3, 9):
        window = window_mask(centre, size)
        print(f"{size}x{size} window around the true end effector, PSNR per step and mean:")
        for name, frames in rows.items():
            per_seq = masked_psnr(frames, truth, window)
            per_step = per_seq.nanmean(0)
            out[f"{name}, {size}x{size}"] = round(float(per_step.mean()), 2)
            print(f"  {name:30s} {' '.join(f'{v:4.1f}' for v in per_step.tolist())}   {float(per_step.mean()):.2f}")
            if size == 9:
                changed, kept = (round(float(per_seq[m].nanmean()), 2) for m in (look_changes, ~look_changes))
                out[f"{name}, 9x9, height changes"], out[f"{name}, 9x9, height kept"] = changed, kept
    print(f"9x9, the {int(look_changes.sum())} sequences whose arm is lifted or lowered after the context / the "
          f"{int((~look_changes).sum())} whose is not:")
    for name in rows:
        print(f"  {name:30s} {out[f'{name}, 9x9, height changes']:.2f} / {out[f'{name}, 9x9, height kept']:.2f}")
    record("ee_copy", torch.device("cpu"), ckpt=args.ckpt, sequences=len(x), **out)


if __name__ == "__main__":
    main()
