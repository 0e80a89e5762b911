"""A posterior over which world a future is in (``world_posterior`` > 0, trained with ``world_weight``).

Why: the SVG posterior reads the encoder's 64-d code of each frame, and the bundle's z never said
which of a scene's re-simulated futures it saw (``bench/posterior.py``: rebuilt from the
posterior no better than from a random z); a posterior over the held noise that read those codes
learned nothing either (``b-np`` in the README). A glide of a few pixels may never reach a 64-d code. This one
reads the pixels: what sets one true future apart from its siblings (its frames minus their mean,
over the future and at its last step, beside the last context frame), and answers with the held
noise of the spatial latent on the 8 x 8 grid, so a cell where an object went farther in this
world can say so. The future is then drawn from that noise closed loop, as at prediction, and
scored against the future it came from: a conditional VAE on sibling worlds, whose KL to N(0, I)
keeps the noise the prior draws at prediction a noise that chooses worlds. Prediction ignores it.

Measured (docs/issue13.md, "A posterior that reads which world"): on a toy of two worlds it learns them
(a test); fine-tuned 200-400 steps from the bundle's weights on the simulated data, its mean
differed between a scene's futures by under 0.01 and a future drawn from a sibling's noise scored
as well as from its own. Its KL went to one offset for all and a smaller variance. The flags stay
off everywhere.
"""
from __future__ import annotations

import torch
from torch import nn

from .vgg64 import frame_reader


class WorldPosterior(nn.Module):
    def __init__(self, channels: int, z_map: int) -> None:
        super().__init__()
        self.net = frame_reader((channels, 2 * channels, 2 * channels), 2 * z_map)
        last = self.net[-1]
        nn.init.zeros_(last.weight)  # it starts as the prior, N(0, I): no KL, and a draw is a prior draw
        nn.init.zeros_(last.bias)

    @staticmethod
    def inputs(last: torch.Tensor, truths: torch.Tensor) -> torch.Tensor:
        """The last context frame [M, 3, H, W] and K true futures of each scene [M, K, F, 3, H, W] ->
        [M * K, 9, H, W]: each future's difference from its siblings' mean, averaged over its steps
        and at its last step, and the context frame, which says what stands where."""
        k = truths.shape[1]
        apart = truths.float() - truths.float().mean(1, keepdim=True)
        return torch.cat([apart.mean(2), apart[:, :, -1], last.float()[:, None].expand(-1, k, -1, -1, -1)],
                         2).flatten(0, 1)

    def forward(self, last: torch.Tensor, truths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> mu, logvar of each future's held spatial noise, [M * K, z_map * 8 * 8] (the latent's order:
        channel, then the cells of the 8 x 8 grid), in float32 as the other posteriors' are."""
        mu, logvar = self.net(self.inputs(last, truths)).float().chunk(2, 1)
        return mu.flatten(1), logvar.flatten(1)
