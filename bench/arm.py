"""How a checkpoint draws the arm's shaft, and how well a copy of the last context frame could:
the PSNR of one sample on the shaft's pixels, per step, against copy-last and two moved copies
of the last context frame.

The simulator draws the arm as a straight bar from a base outside the image (fixed per scene) to
the gripper; the shaft is where the bundled model's frames look worst (wavy, dissolving). The two
copies are what a flow-head source could give: the frame *translated* by the end effector's
displacement (what ``ee_copy`` does: right at the tip, wrong along the shaft as it turns), and the
frame *turned* rigidly about the true base so that the end effector lands where it goes (the arm
lands on itself, its whole length). The turned copy needs the base, which the model would have
to read from the context; this script takes it from the simulator, so it is the ceiling of such a
source; the arm copy (``cvae/model/arm.py``) finds the base in the last context frame instead
(``find_base``), which is scored too, with its distance from the true base. Simulated data only.

    python bench/arm.py --ckpt assets/model --limit 64
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from common import arm_bases_of, predict_capturing, record, test_sequences

from cvae import checkpoint
from cvae.condition import XY
from cvae.data.dataset import BairDataset
from cvae.data.simulator import ARM_WIDTH_PX, GRIPPER_RADIUS_PX, LIFTED_GRIPPER_SCALE
from cvae.kinematics import world_to_px
from cvae.metrics import masked_psnr
from cvae.model.arm import ArmCopy, find_base, turned
from cvae.model.heads import translate
from cvae.physics_eval import scenes

SHAFT_HALF_WIDTH = ARM_WIDTH_PX / 2 + 0.5  # the simulator's bar, lowered; half a pixel of edge with it


def grip_distance(ee: np.ndarray, hw: int = 64) -> np.ndarray:
    """Float [..., H, W]: each pixel centre's distance from the end-effector place ``ee`` [..., 2]
    (simulator coordinates)."""
    yy, xx = np.mgrid[0:hw, 0:hw] + 0.5
    return np.hypot(xx - ee[..., 0, None, None], yy - ee[..., 1, None, None])


def shaft_mask(base: np.ndarray, ee: np.ndarray, hw: int = 64) -> np.ndarray:
    """Bool [T, H, W]: pixels whose centre is within ``SHAFT_HALF_WIDTH`` of the bar from ``base``
    [2] to each end-effector place ``ee`` [T, 2] (simulator coordinates), outside the gripper."""
    yy, xx = np.mgrid[0:hw, 0:hw] + 0.5
    q = np.stack([xx, yy], -1)[None]  # [1, H, W, 2]
    d = (ee - base)[:, None, None]  # [T, 1, 1, 2]
    t = np.clip(((q - base) * d).sum(-1, keepdims=True) / (d * d).sum(-1, keepdims=True), 0, 1)
    near_bar = np.linalg.norm(q - base - t * d, axis=-1) <= SHAFT_HALF_WIDTH
    off_gripper = grip_distance(ee, hw) > GRIPPER_RADIUS_PX * LIFTED_GRIPPER_SCALE + 1
    return near_bar & off_gripper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", default=["assets/model"])
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=64)
    args = p.parse_args()
    found = scenes(BairDataset(args.data, "test", 12), args.limit)
    if found is None:
        raise SystemExit(f"{args.data} is not the simulator's data: the arm's base is unknown")
    bases = arm_bases_of(found)
    n_past, n_future = 2, 10
    x, c = test_sequences(args.data, n_past + n_future, args.limit)
    ee = world_to_px(c[..., XY].numpy())  # [N, T, 2], simulator coordinates (a pixel's centre is index + 0.5)
    shaft = torch.from_numpy(np.stack([shaft_mask(b, e) for b, e in zip(bases, ee[:, n_past:])]))
    truth, last = x[:, n_past:], x[:, n_past - 1]

    def score(frames: torch.Tensor) -> torch.Tensor:
        return masked_psnr(frames, truth, shaft).nanmean(0)  # [F]

    place = torch.from_numpy(ee).float() - 0.5  # pixel indices, as warp counts them
    src, base = place[:, n_past - 1], torch.from_numpy(bases).float() - 0.5
    moved = torch.stack([translate(last, src - place[:, t]) for t in range(n_past, n_past + n_future)], 1)
    turn = torch.stack([turned(last, base, src, place[:, t]) for t in range(n_past, n_past + n_future)], 1)
    found_base = find_base(last, src, ArmCopy().candidates)
    print(f"the base found in the last context frame: a median {float((found_base - base).norm(dim=1).median()):.2f} px "
          f"from the true one (max {float((found_base - base).norm(dim=1).max()):.2f})")
    found_turn = torch.stack([turned(last, found_base, src, place[:, t]) for t in range(n_past, n_past + n_future)], 1)
    copies = {"copy-last": score(last[:, None].expand_as(truth)), "translated copy": score(moved),
              "turned copy (true base)": score(turn), "turned copy (found base)": score(found_turn)}
    print(f"{len(x)} test sequences, the shaft's pixels ({float(shaft.float().mean()):.1%}); PSNR, steps 1..{n_future}")
    for name, v in copies.items():
        print(f"  {name + ':':26s} {' '.join(f'{s:5.2f}' for s in v)} (mean {float(v.mean()):.2f})")
    base_row = {f"{k} shaft psnr": round(float(v.mean()), 2) for k, v in copies.items()}
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        pred, _, masks, _ = predict_capturing(model, x, c, n_future)
        ours = score(pred)
        print(f"  {ckpt + ', one sample:':26s} {' '.join(f'{s:5.2f}' for s in ours)} (mean {float(ours.mean()):.2f})")
        head, taken = model.decoder.head, {}
        if "arm_copy" in getattr(head, "sources", ()):
            share = masks[:, :, head.sources.index("arm_copy")]  # [N, F, H, W]
            taken = {"arm copy share on the shaft": round(float(share[shaft].mean()), 3),
                     "arm copy share elsewhere": round(float(share[~shaft].mean()), 3)}
            said = ", ".join(f"{k.removeprefix('arm copy share ')} {v:.1%}" for k, v in taken.items())
            print(f"    its mask takes the arm copy: {said}")
        if masks is not None:  # which source draws the shaft: one the noise sways spreads the futures there
            on_shaft = {name: float(masks[:, :, k][shaft].mean()) for k, name in enumerate(head.sources)}
            print("    its mask on the shaft: " + ", ".join(f"{name} {v:.0%}" for name, v in on_shaft.items()))
            taken["mask on the shaft"] = {name: round(v, 3) for name, v in on_shaft.items()}
        record("arm", torch.device("cpu"), ckpt=ckpt, sequences=len(x), shaft_share=round(float(shaft.float().mean()), 3),
               shaft_psnr=round(float(ours.mean()), 2), **base_row, **taken)


if __name__ == "__main__":
    main()
