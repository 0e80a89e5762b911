"""How far bf16 autocast moves the KL term, with mu/logvar leaving the Gaussian LSTMs in float32
(as the model does) versus left in bf16. Runs on the CPU's bf16 autocast, the numerics of CUDA's.

    python bench/bf16_kl.py [--trials 8]
"""
from __future__ import annotations

import argparse
import statistics
from contextlib import nullcontext
from unittest import mock

import torch
from common import record

from cvae.model import SVG
from cvae.model.gaussian import GaussianLSTM


def bf16_heads(self: GaussianLSTM, h: torch.Tensor, state=None):
    """GaussianLSTM.forward without the float32 cast: what the KL would see otherwise."""
    out, state = self.lstm(self.embed(h), state)
    return self.mu(out), self.logvar(out), state


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=8)
    args = p.parse_args()
    errors: dict[str, list[float]] = {"float32": [], "bf16": []}
    for seed in range(args.trials):
        torch.manual_seed(seed)
        model = SVG(g_dim=16, z_dim=4, rnn_size=16, width=0.125, prior="learned")
        g = torch.Generator().manual_seed(100 + seed)
        x, c = torch.rand(4, 12, 3, 64, 64, generator=g), torch.randn(4, 12, 7, generator=g)
        torch.manual_seed(1)
        exact = model(x, c, True).kld.sum().item()
        for heads in ("float32", "bf16"):
            with mock.patch.object(GaussianLSTM, "forward", bf16_heads) if heads == "bf16" else nullcontext():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    torch.manual_seed(1)
                    kl = model(x, c, True).kld.sum().item()
            errors[heads].append(abs(kl - exact) / exact)
    row = record("bf16_kl", torch.device("cpu"), trials=args.trials,
                 **{f"{k}_median_rel_err": round(statistics.median(v), 5) for k, v in errors.items()},
                 **{f"{k}_max_rel_err": round(max(v), 5) for k, v in errors.items()})
    for k in errors:
        print(f"mu/logvar in {k:7s}: KL under bf16 autocast vs fp32: median rel. error "
              f"{row[f'{k}_median_rel_err']:.2%}, max {row[f'{k}_max_rel_err']:.2%} over {args.trials} models")


if __name__ == "__main__":
    main()
