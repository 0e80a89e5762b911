"""Spatial cues the decoder reads beside its features: where each pixel is, and where the end
effector is.

A convolution cannot turn a number (the end-effector position) into a place in the image by
itself. Coordinate maps let it compare; the end-effector map draws the place outright, as a
Gaussian blob at a location learned from the condition (the kinematics of a camera looking at a
table are close to affine, which one linear layer holds). The end-effector sprite draws what the
gripper looks like there, as the condition says it looks (lifted or not, open or shut).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .heads import translate

SPRITE_PX = 20  # the sprite's side: the lifted gripper, its fingers and its shadow fit in it


def coordinate_maps(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[2, h, w]: row and column coordinates from -1 to 1."""
    ys = torch.linspace(-1, 1, h, device=device, dtype=dtype)
    xs = torch.linspace(-1, 1, w, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))


def shift_px(src: torch.Tensor, dst: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Places [N, 2] ((row, column) in the maps' [-1, 1] coordinates) -> [N, 2]: the displacement
    (x, then y, in pixels of an h x w image) from ``dst`` back to ``src``, the constant flow with
    which ``heads.translate`` moves what a frame shows at ``src`` to ``dst``."""
    d = (src - dst).flip(-1)  # (row, column) -> (x, y)
    return d * torch.tensor([(w - 1) / 2, (h - 1) / 2], device=d.device)


PUSH_RADIUS = 12.0  # px: what lies this near the gripper moves with it (an object is 6-10 px, pushed at its edge)
PUSH_EDGE = 4.0  # px: beyond PUSH_RADIUS the push fades to 0 over this many


def push_flow(src: torch.Tensor, dst: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The end effector's pixel places (x, y) [N, 2] in the previous frame (``src``) and in this
    one (``dst``) -> ``heads.warp``'s displacement [N, 2, h, w] that moves what lay within
    PUSH_RADIUS px of the gripper by its step, fading to unmoved over PUSH_EDGE px beyond: an
    object the gripper pushes goes whole and as far as it went, the table farther off stays."""
    step = (dst - src).float()
    ys, xs = torch.meshgrid(torch.arange(h, device=src.device), torch.arange(w, device=src.device), indexing="ij")
    dist = ((xs - dst[:, :1, None].float()) ** 2 + (ys - dst[:, 1:, None].float()) ** 2).sqrt()  # [N, h, w]
    near = ((PUSH_RADIUS + PUSH_EDGE - dist) / PUSH_EDGE).clamp(0, 1)
    return -step[:, :, None, None] * near[:, None]


def as_pixels(loc: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Places [N, 2] ((row, column) in the maps' [-1, 1] coordinates) -> (x, y) pixel indices of an
    h x w image, as ``heads.warp`` counts them (``shift_px`` is the difference of two)."""
    return (loc.flip(-1) + 1) * torch.tensor([(w - 1) / 2, (h - 1) / 2], device=loc.device)


def least_squares(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The minimum-norm ``w`` minimising ``|x w - y|``, the same to the last bit on every call.
    LAPACK's least squares on a tall ``x`` is not: where a buffer lands in memory changes its
    rounding (1 call in 2 differed by 1e-16 on this CPU), which would break an exact resume of a
    run that calibrates (``--ee-freeze``). The normal equations are a fixed-order matrix product
    and a small square solve, and in float64 lose nothing that float32 weights keep."""
    return torch.linalg.lstsq(x.T @ x, x.T @ y, driver="gelsd").solution.contiguous()


class EndEffectorMap(nn.Module):
    """Standardised condition [N, cond_dim] -> a heat map [N, 1, h, w] peaked where a learned
    affine map of the condition puts the end effector; its width is learned too (starting at
    about 5 px of 64, so early gradients reach the true place from afar).

    The affine place is bounded by ``tanh``, or with ``exact`` clamped to bounds that calibration
    sets at the workspace's edges. The simulator's kinematics are affine up to those edges, where
    the arm stops, so the clamped place is exact there (0.00 px off), where tanh's curve leaves it
    a median 1.2 px off: nothing to a blurry blob, but the end-effector copy (``shift``) is a
    sharp sprite, and a pixel off costs it more than a blur under MSE."""

    def __init__(self, cond_dim: int, exact: bool = False) -> None:
        super().__init__()
        self.where = nn.Linear(cond_dim, 2)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(0.15)))
        self.exact = exact
        if exact:
            self.register_buffer("lo", -torch.ones(2))
            self.register_buffer("hi", torch.ones(2))

    def location(self, cond: torch.Tensor) -> torch.Tensor:
        """(row, column) in [-1, 1] coordinates, [N, 2]."""
        place = self.where(cond.float())
        return torch.clamp(place, self.lo, self.hi) if self.exact else torch.tanh(place)

    def pixels(self, cond: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``location`` as (x, y) pixel indices of an h x w image [N, 2] (``as_pixels``): where the
        arm copy, its fill and the calm region put the end effector."""
        return as_pixels(self.location(cond), h, w)

    @torch.no_grad()
    def calibrate(self, cond: torch.Tensor, place: torch.Tensor, steps: int = 50) -> None:
        """Set the affine map so the blob lands on ``place`` [N, 2] ((row, column) in [-1, 1])
        for standardised conditions ``cond`` [N, cond_dim], where a data set's kinematics are
        known. Learned from pixels alone, the place stays 7-21 px off after 1,400 steps (docs/issue13.md):
        the blob's gradient only reaches a few pixels. In float64 on the CPU, so every DDP rank
        gets the same. ``exact``: the bounds are the places' range, and each coordinate is a
        least-squares fit to the places strictly inside it (where the arm was not stopped by the
        edge). Otherwise: a least-squares fit under ``atanh``, then L-BFGS on the error itself."""
        x = torch.cat([cond.double().cpu(), torch.ones(len(cond), 1, dtype=torch.float64)], 1)
        y = place.double().cpu()
        if self.exact:
            lo, hi = y.min(0).values, y.max(0).values
            inside = (y > lo) & (y < hi)
            w = torch.stack([least_squares(x[inside[:, j]], y[inside[:, j], j, None])[:, 0] for j in range(2)], 1)
            self.lo.copy_(lo)
            self.hi.copy_(hi)
        else:
            y = y.clamp(-0.999, 0.999)
            w = least_squares(x, torch.atanh(y)).requires_grad_()
            opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

            def error() -> torch.Tensor:
                opt.zero_grad()
                with torch.enable_grad():
                    loss = (torch.tanh(x @ w) - y).pow(2).mean()
                    loss.backward()
                return loss

            opt.step(error)
        self.where.weight.copy_(w.detach()[:-1].T)
        self.where.bias.copy_(w.detach()[-1])

    def shift(self, src: torch.Tensor, dst: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Standardised conditions [N, cond_dim] of two frames -> ``shift_px`` between the end
        effector's places in them."""
        return shift_px(self.location(src), self.location(dst), h, w)

    def forward(self, cond: torch.Tensor, h: int, w: int) -> torch.Tensor:
        loc = self.location(cond)
        coords = coordinate_maps(h, w, cond.device, torch.float32)
        d2 = (coords[None] - loc[:, :, None, None]).pow(2).sum(1, keepdim=True)
        return torch.exp(-d2 / (2 * self.log_sigma.exp().pow(2)))


class EndEffectorSprite(nn.Module):
    """Standardised condition [N, cond_dim] -> an RGB sprite of the end effector, drawn by a small
    MLP and placed on an empty frame at the end-effector map's place.

    The end-effector copy moves the gripper as the latest real frame shows it; when the actions
    lift or lower the arm after the context, it looks different (larger and lighter when lifted,
    with a shadow), and the copy is wrong exactly where a person looks: in 42 of 64 test sequences
    the height changes, and there the copy's 9x9 window scores 17.5 dB against 23.6 where it does
    not (``bench/ee_copy.py``). The condition holds the lift and the grip, so a sprite drawn from it
    can be right in both looks, and it is placed exactly, not carried and resampled step after step."""

    def __init__(self, cond_dim: int, size: int = SPRITE_PX, hidden: int = 64) -> None:
        super().__init__()
        self.size = size
        self.net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(), nn.Linear(hidden, 3 * size * size))

    def draw(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` [N, cond_dim] -> the sprite itself, [N, 3, size, size] in [0, 1]."""
        return torch.sigmoid(self.net(cond.float())).view(-1, 3, self.size, self.size)

    def forward(self, cond: torch.Tensor, loc: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``cond`` [N, cond_dim], the place ``loc`` [N, 2] ((row, column) in [-1, 1]) -> [N, 3, h, w]:
        the sprite centred on the place, zero elsewhere (the flow head's mask picks it only there)."""
        s = self.size
        sprite = self.draw(cond)
        top, left = (h - s) // 2, (w - s) // 2  # centred on the frame's centre, which is place (0, 0)
        canvas = F.pad(sprite, (left, w - s - left, top, h - s - top))
        return translate(canvas, shift_px(torch.zeros_like(loc), loc, h, w))
