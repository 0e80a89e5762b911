"""Can a fresh critic tell a checkpoint's prior futures from re-simulated ones? The adversarial
term (``--critic C --adv-weight W``) gives the model a signal only once its critic does. Draws
4 prior futures (z at 1, as training draws them) of each of ``--scenes`` training scenes and 4
re-simulated ones, fits a fresh critic on the first scenes with ``critic.adversarial_losses``
(16 futures a step), and scores the last ``--held-out`` scenes: the critic's mean score on true
and drawn futures (weighted by ``patch_weights``, so over the patches that move); a critic at
chance answers 0.5 to both. Each learning rate is fitted with every patch alike (as first
built) and with the patches weighted by their moving pixels. Simulated data with hidden causes only.

    python bench/critic_fit.py --ckpt runs/i/adv0.01/last --steps 400 --lr 2e-3 5e-4
"""
from __future__ import annotations

import argparse

import torch
from common import record

from cvae import checkpoint
from cvae.data.dataset import BairDataset
from cvae.model.critic import Critic, adversarial_losses, patch_weights
from cvae.physics_eval import TrainingFutures

K = 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", default="data/sim")
    p.add_argument("--scenes", type=int, default=40)
    p.add_argument("--held-out", type=int, default=8)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, nargs="+", default=[2e-3, 5e-4])
    p.add_argument("--channels", type=int, default=32)
    args = p.parse_args()
    model, _ = checkpoint.load_model(args.ckpt)
    model.cfg.z_scale = 1.0  # training's draw, whatever the export set
    truths = TrainingFutures(BairDataset(args.data, "train", seq_len=12), model.n_past, K, args.scenes, per_step=1)
    ctx, cond = truths.context, truths.cond
    real = torch.from_numpy(truths.truths).movedim(-1, -3).float().div(255).flatten(0, 1)  # [N * K, F, 3, H, W]
    with torch.no_grad():
        fake = model.predict(ctx, cond, real.shape[1], n_samples=K, seed=5).flatten(0, 1)
    last = ctx[:, -1].repeat_interleave(K, 0)
    fit = (len(ctx) - args.held_out) * K
    held = slice(fit, None)
    rows = {}
    for lr in args.lr:
        for weighted in (False, True):
            torch.manual_seed(0)
            critic = Critic(args.channels)
            opt = torch.optim.Adam(critic.parameters(), lr=lr)
            losses = []
            for _ in range(args.steps):
                idx = torch.randint(0, fit, (16,))
                _, loss = adversarial_losses(critic, last[idx], fake[idx], real[idx], weighted)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            with torch.no_grad():
                w = patch_weights(last[held], fake[held], real[held], (8, 8))
                on_real = (critic(Critic.inputs(last[held], real[held])) * w).sum() / w.sum()
                on_fake = (critic(Critic.inputs(last[held], fake[held])) * w).sum() / w.sum()
            name = f"lr {lr:g}, {'moving-weighted' if weighted else 'every patch alike'}"
            tail = sum(losses[-50:]) / len(losses[-50:])
            rows[name] = {"critic_loss_last50": round(tail, 4), "held_out_real": round(on_real.item(), 3),
                          "held_out_fake": round(on_fake.item(), 3)}
            print(f"{name}: critic loss over the last 50 steps {tail:.4f} (chance 0.25); held out, mean score on "
                  f"true futures {on_real:.3f}, on drawn ones {on_fake:.3f}", flush=True)
    record("critic_fit", torch.device("cpu"), ckpt=args.ckpt, steps=args.steps, scenes=args.scenes,
           held_out=args.held_out, results=rows)


if __name__ == "__main__":
    main()
