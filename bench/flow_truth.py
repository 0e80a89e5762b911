"""How far a flow head's displacements of the previous frame lie from the simulator's true ones on
the pixels of a pushed object (known and at least ``--moving`` px long: ``simulator.true_flow``),
against a flow of 0 there: its mean endpoint error and mean length, with z from the posterior (one
draw, so z may know where the object went), teacher-forced and closed-loop, on the first
``--limit`` test sequences from frame 0. What ``--flow-truth-weight`` trains, scored where it
aims. Simulated data only.

    python bench/flow_truth.py --ckpt assets/model runs/f/ft0.01-h1.3-s0.85 --limit 32
"""
from __future__ import annotations

import numpy as np
import torch
from common import checkpoints_parser, record, test_sequences

from cvae import checkpoint
from cvae.condition import ACTIONS
from cvae.data.dataset import BairDataset
from cvae.model.gaussian import reparameterize
from cvae.physics_eval import recorded_flows, scenes


@torch.no_grad()
def flow_errors(model, x: torch.Tensor, c: torch.Tensor, flow: torch.Tensor, known: torch.Tensor,
                moving: float, seed: int = 0) -> dict:
    """Endpoint error and length of the head's previous-frame displacements where the true ones
    [B, T-1, 2, H, W] are known and at least ``moving`` px, teacher-forced and closed-loop."""
    model.train(False)
    pushed = known & (flow.norm(dim=2) >= moving)
    h, skips = model._encode(x)
    mu, logvar = model._posterior(h, skips[3])
    z = reparameterize(mu, logvar, torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed)))
    n, t = model.n_past, x.shape[1]
    forced = model._teacher_forced(x, h, skips, z, c, moved=True)[2]
    closed = model._rollout(x[:, :n], h[:, :n], [s[:, :n] for s in skips], c, t, z=z, moved=True)[2][1]
    out = {"pushed_pixels_per_frame": round(pushed.sum().item() / pushed.shape[0] / pushed.shape[1], 1),
           "true_length_px": round(flow.norm(dim=2)[pushed].mean().item(), 3)}
    for name, head in (("teacher_forced", forced), ("closed_loop", closed)):
        out[name] = {"error_px": round((head - flow).norm(dim=2)[pushed].mean().item(), 3),
                     "length_px": round(head.norm(dim=2)[pushed].mean().item(), 3)}
    return out


def main() -> None:
    ap = checkpoints_parser(__doc__, 32)
    ap.add_argument("--moving", type=float, default=0.5, help="px: a true displacement at least this long is a push")
    args = ap.parse_args()
    x, c = test_sequences(args.data, 12, args.limit)
    found = scenes(BairDataset(args.data, "test", 12), args.limit)
    if found is None:
        raise SystemExit(f"{args.data} was not made by this project's simulator: it has no true flows")
    recorded = (x * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    runs = [recorded_flows(scene, cond[:, ACTIONS].numpy().astype(np.float64), frames)
            for scene, cond, frames in zip(found, c, recorded)]
    flow = torch.from_numpy(np.stack([r[1] for r in runs])).permute(0, 1, 4, 2, 3)
    known = torch.from_numpy(np.stack([r[2] for r in runs]))
    for ckpt in args.ckpt:
        model = checkpoint.load_model(ckpt)[0]
        got = flow_errors(model, x, c, flow, known, args.moving)
        print(f"{ckpt}: on {got['pushed_pixels_per_frame']} pushed pixels a frame (true length "
              f"{got['true_length_px']:.2f} px, the error of a flow of 0): teacher-forced error "
              f"{got['teacher_forced']['error_px']:.2f} px (length {got['teacher_forced']['length_px']:.2f}), "
              f"closed-loop {got['closed_loop']['error_px']:.2f} px (length {got['closed_loop']['length_px']:.2f})")
        record("flow_truth", torch.device("cpu"), ckpt=ckpt, limit=args.limit, moving=args.moving, **got)


if __name__ == "__main__":
    main()
