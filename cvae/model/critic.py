"""A patch critic for the adversarial term (``critic`` > 0, trained with ``adv_weight``).

Why: every pixel score the model trains on (MSE, L1, the energy score) is minimised where the
world branches by drawing the mean of its futures, a haze, and each future the model drew was as
blurred there as the truths' mean (docs/issue13.md, "the futures are alternative blurs"). A critic that
tells a drawn future from a re-simulated one penalises the haze itself, as SAVP's GAN term does:
a sharp object in one of its places passes, a smear over all of them does not.

It judges one frame at a time, seeing it beside the frame before it and the last context frame
(9 channels), so it can tell an object that dissolved or jumped from one that moved; its 8 x 8
output scores overlapping patches of about 40 px.

Measured (docs/issue13.md, "An adversarial critic"): in 400 steps on the CPU the critic settled at chance
(answering 0.5 to both kinds of future) by step 225 and gave the model no signal; the flags stay
off everywhere.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..metrics import moving_mask
from .vgg64 import frame_reader


class Critic(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = frame_reader((channels, 2 * channels, 4 * channels), 1)

    @staticmethod
    def inputs(context: torch.Tensor, futures: torch.Tensor) -> torch.Tensor:
        """The last context frame [N, 3, H, W] and futures [N, F, 3, H, W] -> each future frame
        with the one before it (the context frame before the first) and the context frame,
        [N * F, 9, H, W]."""
        f = futures.shape[1]
        before = torch.cat([context[:, None], futures[:, :-1]], 1)
        ctx = context[:, None].expand(-1, f, -1, -1, -1)
        return torch.cat([futures, before, ctx], 2).flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`inputs` -> a realness score per patch, [N * F, 8, 8] for 64 x 64 frames."""
        return self.net(x.float())[:, 0]


def patch_weights(context: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """How much each of the critic's patches counts, [N * F, *size]: its share of pixels that move
    (``metrics.moving_mask``: where the drawn or the re-simulated frame differs from the last
    context frame), plus 1e-3. 93% of the pixels never move, and there the drawn and the true
    futures agree, so for a critic scored on every patch alike 0.5 everywhere is the easy
    answer (it gave it by step 225 in both runs that way). Fitted offline at 5e-4, weighted it
    left chance faster (loss 0.19 at step 400, against 0.22 at 750 unweighted); in training it
    too settled at chance by step 225 (docs/issue13.md, stop 47)."""
    last = context[:, None]
    moving = (moving_mask(fake.detach(), last) | moving_mask(real, last)).flatten(0, 1)[:, None].float()
    return F.adaptive_avg_pool2d(moving, size)[:, 0] + 1e-3


def adversarial_losses(critic: Critic, context: torch.Tensor, fake: torch.Tensor, real: torch.Tensor,
                       weighted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares GAN (Mao et al. 2017, as SAVP): futures ``fake`` drawn by the model and
    ``real`` re-simulated ones [N, F, 3, H, W] of scenes whose last context frame is ``context``
    [N, 3, H, W] -> (the generator's term, the critic's term), each a mean over patches weighted
    by :func:`patch_weights` (``weighted`` false: every patch alike, as first built; for
    ``bench/critic_fit.py``).

    The generator's term reaches the model's weights but not the critic's (it reads the critic
    through detached parameters), and the critic's reaches only the critic (it reads the futures
    detached), so one optimiser step on their sum trains both sides."""
    frozen = {name: p.detach() for name, p in critic.named_parameters()}
    drawn = Critic.inputs(context, fake)
    fooled = torch.func.functional_call(critic, frozen, (drawn,))
    w = patch_weights(context, fake, real, fooled.shape[-2:]) if weighted else torch.ones_like(fooled)

    def mean(v: torch.Tensor) -> torch.Tensor:
        return (v * w).sum() / w.sum()

    on_real = critic(Critic.inputs(context, real))
    on_fake = critic(drawn.detach())
    return mean((fooled - 1).pow(2)), 0.5 * (mean((on_real - 1).pow(2)) + mean(on_fake.pow(2)))
