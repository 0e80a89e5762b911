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
