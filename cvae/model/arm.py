"""The arm copy: the latest real frame turned rigidly about the arm's base, so that its end
effector lands where this step's is and the arm's whole bar lands on itself.

The built-in world draws the arm as a straight bar from a base outside the image (fixed per
scene, on one of two edges: ``kinematics.arm_bases``) to the gripper. As the gripper moves, the
bar turns about that base, which no translation follows (``ee_copy`` is right at the tip and
wrong along the shaft), and a model that redraws it step after step draws a hazy shaft whose
place it doubts (docs/issue13.md). Turned about the true base, the latest real frame scores 26.6 dB on the
shaft's pixels where the model bundled before the arm copy drew 25.2 (``bench/arm.py``).

The base is not in the condition, but the latest real frame shows it: the bar is one flat colour
from the gripper to the image's edge. So of all the candidate bases, the one whose line from the
end effector crosses the most uniform colour is taken (``find_base``): in the last context frames
of the first 64 test sequences a median 0.8 px from the true base, 3.1 px at most. No weights:
nothing to learn, and nothing to go wrong in training.

``arm_clear`` takes the arm out of the previous frame and of the latest real frame before the
flow head moves them: the bar and gripper where the end effector was in that frame are filled
from their surroundings (``inpaint``), so the arm copy alone draws the arm. Otherwise the moved
previous frame, which the mask takes for 70% of the pixels the arm sweeps
(``bench/spread_where.py``), carries the arm's last place into the next frame as a ghost, a
little differently in every future, and that difference compounds step by step: two thirds of
the bundled model's spread lay there, where every true future agrees (docs/issue13.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..kinematics import arm_bases
from .heads import warp

SEARCH_FROM_PX = 5.0  # the search starts past the gripper (2.6 px, 3.5 lifted) and its outline
SEARCH_STEP_PX = 1.0
MIN_POINTS = 4  # a candidate whose line crosses fewer pixels than this inside the image is not taken
SHAFT_SIGMA_PX = 2.0  # the shaft map's half-width: the bar is 4.5 px wide (5.5 lifted)
CLEAR_SHAFT_PX = 4.0  # arm_clear fills pixels this near the bar (half-width 2.25 px, 2.75 lifted; the base is up to 3 px off)
CLEAR_GRIPPER_PX = 4.0  # ... and this near the end effector (the gripper's radius is 2.6, 3.5 lifted)
CLEAR_AHEAD_PX = 1.0  # ... or near the point this far beyond it, for the fingers (they reach about 4 px ahead)
INPAINT_PX, INPAINT_PASSES = 2, 3  # the fill reaches this far per pass: 6 px in from the edge (the region is 7-10 px across)


def pixel_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) pixel indices of an h x w image, two [H, W] tensors."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    return xs, ys


def find_base(frame: torch.Tensor, ee: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Frames [N, C, H, W], their end effectors' places [N, 2] and candidate bases [M, 2] (x, y in
    pixel indices, as ``heads.warp`` counts them) -> [N, 2]: for each frame the candidate whose
    line from the end effector, past the gripper and inside the image, has the least colour
    variance (summed over channels)."""
    n, _, h, w = frame.shape
    d = candidates[None].float() - ee[:, None].float()  # [N, M, 2]
    length = d.norm(dim=-1, keepdim=True)
    steps = math.ceil(math.hypot(h, w) / SEARCH_STEP_PX) + 1
    ts = SEARCH_FROM_PX + SEARCH_STEP_PX * torch.arange(steps, device=frame.device, dtype=torch.float32)
    p = ee[:, None, None].float() + ts[None, None, :, None] * (d / length)[:, :, None]  # [N, M, K, 2]
    valid = ((ts < length) & (p >= 0).all(-1) & (p[..., 0] <= w - 1) & (p[..., 1] <= h - 1)).float()  # [N, M, K]
    grid = (p + 0.5) * torch.tensor([2 / w, 2 / h], device=frame.device) - 1
    v = F.grid_sample(frame.float(), grid, mode="bilinear", align_corners=False)  # [N, C, M, K]
    count = valid.sum(-1)  # [N, M]
    mean = (v * valid[:, None]).sum(-1, keepdim=True) / count.clamp(min=1)[:, None, :, None]
    var = ((v - mean).pow(2) * valid[:, None]).sum((1, -1)) / count.clamp(min=1)
    var = var.masked_fill(count < MIN_POINTS, float("inf"))
    return candidates.float()[var.argmin(1)]


def turned(frame: torch.Tensor, base: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
           mode: str = "bilinear") -> torch.Tensor:
    """``frame`` [N, C, H, W] moved rigidly so that its end effector at ``src`` lands on ``dst``,
    turned by the angle the arm turns about ``base`` meanwhile (all [N, 2], (x, y) in pixel
    indices). As complex numbers, output pixel q samples src + (q - dst) / u, with u the unit turn
    from src - base to dst - base: a bar from the base to the end effector lands on itself (slid
    along itself, which shows only beyond the base) and the gripper keeps its size. ``mode``:
    ``heads.warp``'s."""
    def c(v: torch.Tensor) -> torch.Tensor:
        return torch.view_as_complex(v.float().contiguous())

    u = c(dst - base) * c(src - base).conj()
    u = u / u.abs().clamp(min=1e-6)
    q = torch.complex(*pixel_grid(*frame.shape[-2:], frame.device))[None]
    moved = c(src)[:, None, None] + (q - c(dst)[:, None, None]) * u.conj()[:, None, None] - q
    return warp(frame, torch.stack([moved.real, moved.imag], 1), mode)


def bar_dist2(base: torch.Tensor, ee: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bases and end effectors [N, 2] (x, y in pixel indices of an h x w image) -> [N, h, w]:
    each pixel's squared distance to the segment between them."""
    q = torch.stack(pixel_grid(h, w, ee.device), -1)[None]  # [1, H, W, 2]
    b, d = base.float()[:, None, None], (ee - base).float()[:, None, None]
    t = (((q - b) * d).sum(-1, keepdim=True) / d.pow(2).sum(-1, keepdim=True).clamp(min=1e-6)).clamp(0, 1)
    return (q - b - t * d).pow(2).sum(-1)


def shaft_map(base: torch.Tensor, ee: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bases and end effectors [N, 2] (x, y in pixel indices of an h x w image) -> [N, 1, h, w]:
    1 on the segment between them, falling off as a Gaussian of the distance to it."""
    return torch.exp(-bar_dist2(base, ee, h, w) / (2 * SHAFT_SIGMA_PX ** 2))[:, None]


def arm_region(base: torch.Tensor, ee: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bases and end effectors [N, 2] (x, y in pixel indices) -> bool [N, 1, h, w]: the pixels
    within CLEAR_SHAFT_PX of the bar between them, or CLEAR_GRIPPER_PX of the end effector or of
    the point CLEAR_AHEAD_PX beyond it along the bar (the fingers point that way). Squared
    distances throughout: ``.norm()`` took three times as long."""
    q = torch.stack(pixel_grid(h, w, ee.device), -1)[None]  # [1, H, W, 2]
    d = (ee - base).float()
    tip = base.float() + d
    ahead = tip + CLEAR_AHEAD_PX * d / d.pow(2).sum(-1, keepdim=True).clamp(min=1e-6).sqrt()

    def near(p: torch.Tensor) -> torch.Tensor:
        return (q - p[:, None, None]).pow(2).sum(-1) <= CLEAR_GRIPPER_PX ** 2

    return ((bar_dist2(base, ee, h, w) <= CLEAR_SHAFT_PX ** 2) | near(tip) | near(ahead))[:, None]


def box_sum(v: torch.Tensor, reach: int) -> torch.Tensor:
    """[..., H, W] -> the sum over each pixel's (2 reach + 1)-square window, zeros beyond the
    edge. Two cumulative sums: on 176 frames on the CPU 38 ms, where two separable
    ``avg_pool2d`` took 149."""
    k = 2 * reach + 1
    s = F.pad(F.pad(v, (reach, reach, reach, reach)).cumsum(-1), (1, 0))
    s = F.pad((s[..., k:] - s[..., :-k]).cumsum(-2), (0, 0, 1, 0))
    return s[..., k:, :] - s[..., :-k, :]


def inpaint(frame: torch.Tensor, hole: torch.Tensor, reach: int = INPAINT_PX, passes: int = INPAINT_PASSES) -> torch.Tensor:
    """Frames [N, C, H, W] with ``hole`` [N, 1, H, W] (bool) filled from its edge inwards: at
    each pass every hole pixel with a known pixel within ``reach`` takes their mean (a normalised
    box filter), and counts as known from then on. Near pixels first, so an object beside the arm
    bleeds less far into the fill than in one wide window. No weights, and the same fill for the
    same frame, so every future that drew the same frame fills it the same. A hole pixel still
    unreached after ``passes`` keeps its value."""
    out, known = frame.float(), (~hole).float()
    for _ in range(passes):
        total, count = box_sum(torch.cat([out * known, known], 1), reach).split([out.shape[1], 1], 1)
        new = (known == 0) & (count > 0.5)
        out = torch.where(new, total / count.clamp(min=1), out)
        known = torch.where(new, 1.0, known)
    return out


@dataclass
class _Found:
    """What ``ArmCopy`` remembers of the last latest real frame asked: the frame, its version,
    the end effector's place in it, the base found, and the frame with its arm filled in."""

    anchor: torch.Tensor
    version: int
    src: torch.Tensor
    base: torch.Tensor
    cleared: torch.Tensor | None = None


class ArmCopy(nn.Module):
    """The arm copy and where the shaft is, from the latest real frame and the end effector's
    places in it and in this step (found by the end-effector map, in pixel indices)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("candidates", torch.from_numpy(arm_bases() - 0.5).float(), persistent=False)
        self._last: _Found | None = None

    def _found(self, anchor: torch.Tensor, src: torch.Tensor) -> _Found:
        """``find_base``, remembered for the last frames asked: a rollout asks it of the same
        latest real frame at every step after the context (8% of a prediction's time). Reused
        only for frames and places equal to those (not merely the same tensors: one may have
        been written in place since). The caller keeps the record it got, so a request in
        another thread that replaces ``_last`` (the app shares one model) never hands it
        another frame's base or fill."""
        last = self._last
        same = (last is not None and last.anchor.shape == anchor.shape and last.anchor.device == anchor.device
                and last.version == anchor._version and torch.equal(last.src, src) and torch.equal(last.anchor, anchor))
        if not same:
            self._last = last = _Found(anchor, anchor._version, src.clone(), find_base(anchor, src, self.candidates))
        return last

    def base(self, anchor: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """The arm's base the latest real frame ``anchor`` shows, its end effector at ``src``."""
        return self._found(anchor, src).base

    @torch.no_grad()
    def forward(self, anchor: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
        """Latest real frames [N, 3, H, W], their end effectors' places ``src`` and this step's
        ``dst`` [N, 2] -> the turned copy [N, 3, H, W] (sampled between pixels as ``mode`` says,
        ``heads.warp``) and the shaft map at this step [N, 1, H, W]."""
        base = self.base(anchor, src)
        h, w = anchor.shape[-2:]
        return turned(anchor, base, src, dst, mode), shaft_map(base, dst, h, w)

    def region(self, anchor: torch.Tensor, src: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """``arm_region`` [N, 1, H, W] of the arm with its end effector at ``at`` [N, 2], about the
        base the latest real frame ``anchor`` [N, 3, H, W], its end effector at ``src``, shows."""
        return arm_region(self.base(anchor, src), at, *anchor.shape[-2:])

    @torch.no_grad()
    def cleared(self, frame: torch.Tensor, anchor: torch.Tensor, src: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """``frame`` [N, 3, H, W] with the arm that stands at end-effector place ``at`` [N, 2] in it
        filled in (``inpaint``); the base is the one ``region`` takes."""
        return inpaint(frame, self.region(anchor, src, at))

    def cleared_anchor(self, anchor: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """``cleared`` of the latest real frame at its own end effector's place, remembered with
        the base: a rollout asks it at every step (a prediction 1.25x slower than without
        ``arm_clear`` when filled afresh each time; bench/README.md)."""
        found = self._found(anchor, src)
        if found.cleared is None:
            found.cleared = inpaint(anchor, arm_region(found.base, src, *anchor.shape[-2:]))
        return found.cleared
