"""KL annealing, teacher forcing and the learning rate: the schedules that shape training."""
from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("constant", "cosine")


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


def lr_factor(kind: str, step: int, total: int, warmup: int = 0, floor: float = 0.1) -> float:
    """The learning rate's multiple at global ``step`` (from 0) of ``total``, as nanoGPT has it: a
    linear rise over the first ``warmup`` steps (a fresh Adam's first updates are its largest, and a
    fine-tuned model's first steps undo the most), then 1 (``constant``), or a half cosine from 1
    down to ``floor`` at the last step (``cosine``), so a long run settles rather than wanders."""
    if kind not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {kind!r}")
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    done = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))


def teacher_forcing_ratio(epoch: int, tfr: float, start_decay_epoch: int, decay_step: float,
                          lower_bound: float) -> float:
    """``tfr`` until ``start_decay_epoch``, then lowered by ``decay_step`` per epoch to ``lower_bound``."""
    decayed = tfr - decay_step * max(0, epoch - start_decay_epoch)
    return max(lower_bound, min(tfr, decayed))


def use_teacher_forcing(ratio: float, seed: int, step: int) -> bool:
    """One coin per global batch, a function of (seed, step): every DDP rank flips the same one,
    and it draws nothing from the global RNG, so resuming replays it exactly."""
    return bool(torch.rand((), generator=torch.Generator().manual_seed(seed * 7919 + step)) < ratio)
