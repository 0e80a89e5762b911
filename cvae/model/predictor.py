"""The frame-predictor LSTM: [condition_t, h_{t-1}, z_t] -> the code of the next frame."""
from __future__ import annotations

import torch
from torch import nn

from .gaussian import State


class FramePredictor(nn.Module):
    """The condition is standardised with the training set's statistics (buffers saved with the
    weights): raw BAIR actions are about +-0.07 while the frame codes span +-1."""

    def __init__(self, g_dim: int, z_dim: int, cond_dim: int, hidden: int, layers: int, cond_embed: int = 0) -> None:
        super().__init__()
        self.register_buffer("cond_mean", torch.zeros(cond_dim))
        self.register_buffer("cond_std", torch.ones(cond_dim))
        self.cond_embed = nn.Linear(cond_dim, cond_embed) if cond_embed else nn.Identity()
        cond_out = cond_embed or cond_dim
        self.embed = nn.Linear(cond_out + g_dim + z_dim, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.out = nn.Sequential(nn.Linear(hidden, g_dim), nn.Tanh())

    def forward(self, h: torch.Tensor, z: torch.Tensor, cond: torch.Tensor,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        """h [B, L, g], z [B, L, z], cond [B, L, 7] -> predicted codes [B, L, g] and the state."""
        x = torch.cat([self.cond_embed(self.normalize(cond)), h, z], dim=-1)
        out, state = self.lstm(self.embed(x), state)
        return self.out(out), state

    def normalize(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition in training-set units (the decoder's condition maps use it too)."""
        return (cond - self.cond_mean) / self.cond_std

    def set_condition_stats(self, cond: torch.Tensor) -> None:
        """Standardise conditions like ``cond`` [..., 7]; a constant column keeps a scale of 1."""
        flat = cond.reshape(-1, cond.shape[-1]).double()
        std = flat.std(0)
        self.cond_mean.copy_(flat.mean(0))
        self.cond_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
