"""Look at what a checkpoint's end-effector sprite draws, beside the gripper it should draw.

One PNG: a row per look (on the table or lifted, gripper open or shut), each the sprite for
the first test frame with that look, then that frame's true 20 x 20 crop about the end
effector, then the model's one-sample prediction of the same frame (cropped alike), upscaled x6.
Printed: how much of the flow head's mask the sprite gets in the 9x9 window about the end
effector and elsewhere, over the test sequences' predicted frames.

    python bench/ee_sprite.py --ckpt runs/m/copyxf-sprite/last --out /tmp/sprite.png
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from common import predict_capturing, test_sequences

from cvae import checkpoint
from cvae.artifacts import join, rows, to_uint8, upscale, write_png
from cvae.condition import GRIP, XY, Z
from cvae.kinematics import world_to_px
from cvae.metrics import window_mask
from cvae.model.cues import SPRITE_PX


def crop(frame: torch.Tensor, centre: np.ndarray) -> torch.Tensor:
    """[3, H, W] -> [3, SPRITE_PX, SPRITE_PX] about ``centre`` (col, row), padded white."""
    half = SPRITE_PX // 2
    padded = F.pad(frame, (half, half, half, half), value=1.0)
    col, row = (int(round(v)) for v in centre)
    return padded[:, row : row + SPRITE_PX, col : col + SPRITE_PX]


def sprite_share(model, masks: torch.Tensor, c: torch.Tensor) -> tuple[float, float]:
    """The sprite's mean share of the flow head's mask over the predicted frames (``masks`` [N,
    F, sources, H, W], ``predict_capturing``'s), in the 9x9 window about the end effector and
    outside it."""
    head = model.decoder.head
    share = masks[:, :, head.sources.index("ee_sprite")]  # [N, F, H, W]
    centre = torch.from_numpy(world_to_px(c[:, model.n_past :, XY].numpy()))
    window = window_mask(centre, 9)
    return float(share[window].mean()), float(share[~window].mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a checkpoint trained with --ee-sprite true")
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--out", default="/tmp/ee_sprite.png")
    args = p.parse_args()
    model, _ = checkpoint.load_model(args.ckpt, "cpu")
    if model.decoder.ee_sprite is None:
        raise SystemExit(f"{args.ckpt} has no end-effector sprite (train with --ee-sprite true)")
    n_past, n_future = model.n_past, 10
    x, c = test_sequences(args.data, n_past + n_future, args.limit)
    pred, _, masks, _ = predict_capturing(model, x, c, n_future)
    inside, outside = sprite_share(model, masks, c)
    on_table = c[:, :, Z].min()
    lines = []
    for lifted in (False, True):
        for shut in (False, True):
            # frame t (a predicted one) is drawn from the condition of t - 1; the simulator draws its
            # height from its own position and its grip from its own action
            found = [(i, t) for i in range(len(x)) for t in range(n_past, n_past + n_future)
                     if bool(c[i, t, Z] > on_table) == lifted and bool(c[i, t, GRIP] > 0.5) == shut]
            if not found:
                print(f"no test frame is {'lifted' if lifted else 'on the table'}, {'shut' if shut else 'open'}")
                continue
            i, t = found[0]
            cond = model.predictor.normalize(c[i, t - 1][None])
            with torch.no_grad():
                sprite = model.decoder.ee_sprite.draw(cond)[0]
            centre = world_to_px(c[i, t, XY].numpy())
            images = [sprite, crop(x[i, t], centre), crop(pred[i, t - n_past], centre)]
            lines.append(upscale(join([to_uint8(im) for im in images], axis=1), 6))
    write_png(args.out, rows(lines))
    print(f"wrote {args.out}: per look, the sprite, the true crop, the predicted crop")
    print(f"the sprite's share of the mask: {inside:.3f} in the 9x9 window about the end effector, "
          f"{outside:.4f} elsewhere")


if __name__ == "__main__":
    main()
