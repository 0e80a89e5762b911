"""Gaussian LSTMs: the posterior q(z_t | x_t) and the learned prior p(z_t | x_{t-1}) of SVG-LP.

One class serves both: they differ only in which frame's code they read.
"""
from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]


class GaussianLSTM(nn.Module):
    def __init__(self, in_dim: int, z_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.mu = nn.Linear(hidden, z_dim)
        self.logvar = nn.Linear(hidden, z_dim)

    def forward(self, h: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Codes [B, L, in_dim] -> mu, logvar [B, L, z_dim] and the LSTM state after them.

        mu and logvar come out in float32 even under bf16 autocast: the KL term and the sample
        exponentiate logvar, and in bf16 (8 significant bits) the KL moved by up to 6%
        (bench/bf16_kl.py)."""
        out, state = self.lstm(self.embed(h), state)
        return self.mu(out).float(), self.logvar(out).float(), state


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps: a sample that gradients flow through."""
    return mu + torch.exp(0.5 * logvar) * noise


def kl_divergence(mu_q: torch.Tensor, logvar_q: torch.Tensor,
                  mu_p: torch.Tensor | None = None, logvar_p: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q || p) summed over the last (z) dimension; p is N(0, I) where not given."""
    if mu_p is None:
        return 0.5 * (mu_q.pow(2) + logvar_q.exp() - 1 - logvar_q).sum(-1)
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1).sum(-1)


class GaussianMap(nn.Module):
    """A spatial latent's Gaussian per cell of the encoder's coarsest grid, from that cell's
    features in two frames. As the posterior q(z_t | x_t, x_{t-1}), so a cell's z can say what
    happened there (an object glided, or stopped) and nowhere else; as the learned map prior
    p(z_t | x_{t-1}, x_{t-2}), so a cell's spread can follow what it shows. Not recurrent: what
    a cell carries is local."""

    def __init__(self, channels: int, z_channels: int, hidden: int = 32, start: float = 0.1) -> None:
        """``start`` scales the last layer's initial weights: both start near N(0, I), the
        posterior (0.1) so a grown model's KL starts near 0, a grown prior (0) exactly there,
        so the grown model draws what it drew before."""
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2 * channels, hidden, 3, 1, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(hidden, 2 * z_channels, 3, 1, 1))
        with torch.no_grad():
            self.net[2].weight.mul_(start)
            self.net[2].bias.zero_()

    def forward(self, now: torch.Tensor, before: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features [N, C, S, S] of frame t and frame t-1 -> mu, logvar [N, z_channels * S * S],
        flattened so they join the vector latent's (in float32, as ``GaussianLSTM``'s)."""
        mu, logvar = self.net(torch.cat([now, before], 1)).float().chunk(2, 1)
        return mu.flatten(1), logvar.flatten(1)
