"""KL annealing and teacher forcing: the two schedules that shape training."""
from __future__ import annotations

import math

import torch


def kl_beta(kind: str, t: int, total: int, cycles: int = 3, ratio: float = 0.5, weight: float = 1.0) -> float:
    """The KL weight at step (or epoch) ``t`` of ``total``, after Fu et al. 2019.

    With M cycles over T and ratio R: tau = mod(t, ceil(T/M)) / (T/M), beta = min(1, tau/R).
    Monotonic is the one-cycle case; ``none`` is a constant. All are scaled by ``weight``.
    """
    if kind == "none":
        return weight
    if kind not in ("monotonic", "cyclical"):
        raise ValueError(f"unknown KL annealing {kind!r}")
    m = 1 if kind == "monotonic" else cycles
    period = total / m
    tau = (t % math.ceil(period)) / period
    return weight * min(1.0, tau / ratio)


def teacher_forcing_ratio(epoch: int, tfr: float, start_decay_epoch: int, decay_step: float,
                          lower_bound: float) -> float:
    """``tfr`` until ``start_decay_epoch``, then lowered by ``decay_step`` per epoch to ``lower_bound``."""
    decayed = tfr - decay_step * max(0, epoch - start_decay_epoch)
    return max(lower_bound, min(tfr, decayed))


def use_teacher_forcing(ratio: float, seed: int, step: int) -> bool:
    """One coin per global batch, a function of (seed, step): every DDP rank flips the same one,
    and it draws nothing from the global RNG, so resuming replays it exactly."""
    return bool(torch.rand((), generator=torch.Generator().manual_seed(seed * 7919 + step)) < ratio)
