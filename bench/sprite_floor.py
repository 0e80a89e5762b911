"""How well can a sprite drawn from the condition draw the gripper? The end-effector sprite draws
most of the gripper's own pixels (``gripper_kept.py``: 0.90 of the mask within 2 px of the end
effector) and is 15 grey levels off there. Fitted alone to those pixels of training sequences
(Adam, the rest of the model untouched), two sprites are scored on the first ``--limit`` test
sequences:

- the checkpoint's own sprite (``EndEffectorSprite``: 20 x 20 at 1x, placed by the end-effector
  map with a bilinear shift), its MLP fitted further: what more training could give it;
- a sprite drawn at 4x (80 x 80, a fresh MLP), placed at the true end effector by a whole shift
  of 4x pixels and box-filtered to 1x, as the simulator renders: what placing it without a
  bilinear blur could give.

The gap between either and 0 is what the condition cannot say (the arm's angle, the table seen
through the gripper's soft edge).

    python bench/sprite_floor.py --ckpt assets/model --steps 600
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from common import record, test_sequences
from gripper_kept import own_region
from torch import nn

from cvae import checkpoint
from cvae.condition import COND_DIM, XY
from cvae.data.dataset import BairDataset
from cvae.kinematics import world_to_px

BIG = 80  # the 4x sprite's side: the 1x sprite's 20 px


def frames_of(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences [N, 12, 3, H, W] and their conditions [N, 12, 7] -> the future frames 2..11, the
    raw conditions that draw them (step t - 1's), the true end effector (col, row) in them and
    the gripper's own pixels there, each flattened over sequences and steps."""
    ee = world_to_px(c[:, 2:12, XY].numpy()).reshape(-1, 2)
    return x[:, 2:12].flatten(0, 1), c[:, 1:11].flatten(0, 1), torch.from_numpy(ee).float(), own_region(ee)


def big_sprite(net: nn.Module, cond: torch.Tensor, ee: torch.Tensor, hw: int = 64) -> torch.Tensor:
    """A 4x sprite from ``net`` (standardised condition -> 3 x BIG x BIG logits) placed with its
    centre on ``ee`` [N, 2] (col, row) to the nearest 4x pixel, box-filtered to hw x hw."""
    sprite = torch.sigmoid(net(cond)).view(-1, 3, BIG, BIG)
    side = 4 * hw + 2 * BIG  # room for a sprite half off the frame
    corner = (4 * ee).round().long() - BIG // 2 + BIG
    placed = [F.pad(s, (int(c), side - int(c) - BIG, int(r), side - int(r) - BIG))[:, BIG:-BIG, BIG:-BIG]
              for s, (c, r) in zip(sprite, corner)]
    return F.avg_pool2d(torch.stack(placed), 4)


def grey_error(draw, frames: torch.Tensor, cond: torch.Tensor, ee: torch.Tensor, own: torch.Tensor) -> float:
    """Mean absolute error in grey levels on the own pixels of a drawing function (cond, ee -> frames)."""
    with torch.no_grad():
        out = torch.cat([draw(cond[i : i + 256], ee[i : i + 256]) for i in range(0, len(cond), 256)])
    return float(((out - frames).abs().mean(1) * 255 * own).sum() / own.sum())


def fit(params, draw, frames, cond, ee, own, steps: int, lr: float, seed: int) -> None:
    """Adam on the masked squared error of ``draw`` over the own pixels, batches of 128."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr)
    for _ in range(steps):
        b = torch.randint(0, len(frames), (128,), generator=gen)
        m = own[b][:, None].float()
        loss = ((draw(cond[b], ee[b]) - frames[b]).pow(2) * m).sum() / m.sum().clamp_min(1)
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="assets/model")
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=64, help="test sequences scored")
    p.add_argument("--train", type=int, default=512, help="training sequences fitted (every 4th)")
    p.add_argument("--steps", type=int, default=600)
    args = p.parse_args()
    model, _ = checkpoint.load_model(args.ckpt, "cpu")
    sprite = model.decoder.ee_sprite
    if sprite is None:
        raise SystemExit(f"{args.ckpt} has no end-effector sprite (ee_sprite false)")
    norm, place = model.predictor.normalize, model.decoder.ee_map.location
    ds = BairDataset(args.data, "train", seq_len=12)
    picked = list(range(0, len(ds), 4))[: args.train]
    train = frames_of(torch.stack([ds[i][0] for i in picked]), torch.stack([ds[i][1] for i in picked]))
    test = frames_of(*test_sequences(args.data, 12, args.limit))
    train = (train[0], norm(train[1]), *train[2:])
    test = (test[0], norm(test[1]), *test[2:])

    def own_sprite(s):
        return lambda cond, ee: s(cond, place(cond).detach(), 64, 64)

    scores = {"as trained": grey_error(own_sprite(sprite), *test)}
    torch.manual_seed(0)
    refit = copy.deepcopy(sprite)
    fit(refit.net.parameters(), own_sprite(refit), *train, steps=args.steps, lr=1e-3, seed=0)
    scores["1x, fitted further"] = grey_error(own_sprite(refit), *test)
    net = nn.Sequential(nn.Linear(COND_DIM, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 3 * BIG * BIG))
    fit(net.parameters(), lambda cond, ee: big_sprite(net, cond, ee), *train, steps=args.steps, lr=2e-3, seed=0)
    scores["4x, placed whole"] = grey_error(lambda cond, ee: big_sprite(net, cond, ee), *test)
    print(f"{args.ckpt}: the sprite's error on the gripper's own pixels, {len(test[0])} test frames, grey levels: "
          + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    record("sprite_floor", torch.device("cpu"), ckpt=args.ckpt, steps=args.steps, train_sequences=len(picked),
           test_frames=len(test[0]), grey_error={k: round(v, 2) for k, v in scores.items()})


if __name__ == "__main__":
    main()
