"""Would ten futures drawn together, not one by one, cover the world's better? Each future keeps
the prior's noise exactly (so each is still a draw from the model), but the ten are coupled:
``antithetic``, noise e and -e in pairs; ``stratified``, a Latin hypercube: in each noise
coordinate the ten values fall one in each tenth of the normal's probability. Scored as
``bench/spread_head.py`` scores (its arguments follow ``--draws``), with ``SVG._noise`` patched.

Stop 79 (docs/issue13.md), the bundle on the 256 validation sequences at its export setting:
best of 10 33.73 dB drawn one by one, 33.74 antithetic, 33.72 stratified. The stratified margin
over the one sample read +1.00 against +0.88 only because its one sample, another draw, read
0.13 dB lower.

    python bench/coupled_draws.py --draws stratified --ckpt assets/model --limit 256 --split validate \\
        --lin --pow --up 1 --gain 2 2.4 --base 0.7 0.85 1.0
"""
from __future__ import annotations

import argparse
import sys

import spread_head
import torch
from antithetic import antithetic
from common import patched, record

from cvae.model.svg import SVG


def stratified(noise: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise [n, ...] of independent standard normals -> the same shape, each coordinate's n values
    one in each of n equally likely slices of the normal, in a random order; each value is still a
    standard normal and a row's coordinates still independent. Zeros (noise a model mutes) stay."""
    n = noise.shape[0]
    order = torch.rand(noise.shape, generator=generator, device=noise.device).argsort(0).to(noise.dtype)
    u = (order + torch.special.ndtr(noise)) / n
    return torch.where(noise == 0, noise, torch.special.ndtri(u.clamp(1e-7, 1 - 1e-7)))


COUPLINGS = {"antithetic": lambda noise, generator: antithetic(noise), "stratified": stratified}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draws", choices=sorted(COUPLINGS), required=True)
    args, rest = p.parse_known_args()
    couple, plain = COUPLINGS[args.draws], SVG._noise

    def coupled(self: SVG, n: int, steps: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        full = plain(self, n, steps, device, generator)
        if not self.cfg.z_hold:
            return couple(full, generator)
        return couple(full[:, :1].contiguous(), generator).expand_as(full)  # one draw held over the steps

    def recorded(name: str, device: torch.device, **numbers: object) -> dict:
        return record("coupled_draws", device, draws=args.draws, **numbers)

    sys.argv = [sys.argv[0], *rest]
    with patched(SVG, "_noise", coupled), patched(spread_head, "record", recorded):
        spread_head.main()


if __name__ == "__main__":
    main()
