"""The spread head: where a model's futures should spread, said by a small CNN fitted after
training on the simulator's re-simulated true futures (``cvae.spread_fit``).

A model trained by pixel losses and an energy score spreads its futures about as widely as the
world overall (spread ratio ~1.1) but not in the right places: its per-pixel std map agrees with
the truths' 0.45 (docs/issue13.md). The head reads, at each future step, what the model already
draws -- its noiseless future, the std map and mean of ``reference`` futures from the prior --
and says the truths' std map. ``widen`` then scales each future's departure from the noiseless
one, per pixel, so that the std map becomes max(base m, gain w): the model's own doubt (m) is
kept at a share ``base``, and where the head says the world branches more (w) the futures spread
that far. The bundle's head alone agrees 0.53 with the truths' map on 256 validation scenes; at
gain 2 and base 0.7 its futures agree 0.506 there (best of 10 +0.88) and 0.53 on the 256 test
scenes (best of 10 +0.93; README, "The spread head"; docs/issue13.md, stop 78). A widened
future is a blend, and best of 10 itself never rose with it; ``chosen`` instead picks which of
more draws are shown, so the shown futures differ where the head says while each stays a whole
draw (``spread_select``; docs/issue13.md, stop 79).
"""
from __future__ import annotations

import torch
from torch import nn

from ..metrics import correlation, pixel_std

FEATURES = 20  # the head's input channels per frame (``inputs``)
MOST = 4.0  # the largest factor a pixel's departure is scaled by
FLOOR = 1e-3  # the smallest std map value divided by (a quarter of a grey level)
SCALE = 10.0  # std maps are x this inside the head, so its targets are of order 1


def features(last: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """What the noiseless future shows at each future step: its frame, the one before it, the last
    context frame, their absolute difference and the step's place in the future. Last context
    frames [B, 3, H, W], noiseless futures [B, F, 3, H, W] -> [B, F, 13, H, W]."""
    f = mean.shape[1]
    prev = torch.cat([last[:, None], mean[:, :-1]], 1)
    stay = last[:, None].expand_as(mean)
    step = (torch.arange(f, dtype=mean.dtype, device=mean.device) / f).view(1, f, 1, 1, 1)
    return torch.cat([mean, prev, stay, (mean - stay).abs(), step.expand(*mean.shape[:2], 1, *mean.shape[-2:])], 2)


def inputs(mean: torch.Tensor, samples: torch.Tensor, m: torch.Tensor, first: torch.Tensor,
           last: torch.Tensor) -> torch.Tensor:
    """The head's input per future frame, [B F, ``FEATURES``, H, W]: ``features`` of the noiseless
    future [B, F, 3, H, W], the futures' [B, S, F, 3, H, W] std map m (``metrics.pixel_std``,
    [B, F, H, W]; x ``SCALE``) and mean, and the first context frame [B, 3, H, W] (the table the
    arm may uncover)."""
    f = mean.shape[1]
    return torch.cat([features(last, mean), SCALE * m[:, :, None], samples.float().mean(1),
                      first[:, None].expand(-1, f, -1, -1, -1)], 2).flatten(0, 1)


class SpreadHead(nn.Module):
    """Dilated convolutions that see ~30 px, as far as a pushed object glides in a few steps:
    ``inputs`` -> the truths' per-pixel std, [B F, 1, H, W] (x ``SCALE``, so unbounded below 0
    while fitted; ``std_map`` clamps it)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(FEATURES, width, 5, padding=2), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, width, 5, padding=4, dilation=2), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, width, 5, padding=8, dilation=4), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def std_map(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The truths' std map the head says from its ``inputs`` x, shaped as the model's std map
        ``like`` [B, F, H, W]: out of ``SCALE`` and at least 0."""
        return (self(x).float() / SCALE).clamp_min(0).view_as(like)

    def widened(self, mean: torch.Tensor, samples: torch.Tensor, first: torch.Tensor, last: torch.Tensor,
                reference: int, gain: float, base: float, keep: int = 0) -> torch.Tensor:
        """``samples`` [B, S, F, 3, H, W] widened (:func:`widen`) toward the std map the head says
        the truths have, from the noiseless future ``mean`` [B, F, 3, H, W], the first
        ``reference`` samples and the first and last context frames [B, 3, H, W]. With ``keep``
        > 0, the ``keep`` samples :func:`chosen` for that map are widened (by their first
        ``reference``'s std map), the others dropped."""
        ref = samples[:, :reference]
        m = pixel_std(ref, 1)
        w = self.std_map(inputs(mean, ref, m, first, last), m)
        if keep:
            samples = chosen(samples, w, keep)
            m = pixel_std(samples[:, :reference], 1)
        return widen(samples, mean, widen_factor(w, m, gain, base))


def chosen(samples: torch.Tensor, w: torch.Tensor, keep: int) -> torch.Tensor:
    """``keep`` of the futures [B, S, F, 3, H, W], per scene: the first, then one at a time the
    future that makes the kept ones' std map (``metrics.pixel_std``) correlate best over the
    future pixels with the map ``w`` [B, F, H, W] the head says the world's has. Each kept future
    is a whole draw of the model, not a blend, so nothing is smeared; only which draws are shown
    is set. The first is always draw 0, the one sample, and a choice never depends on ``keep``
    (the first k of ``keep`` are those of k)."""
    out = []
    for s, target in zip(samples.float(), w.float()):  # one scene at a time: S futures' squares in memory, not B S
        picked, used = [0], torch.zeros(len(s), dtype=torch.bool)
        used[0] = True
        sq = s.square()
        s1, s2 = s[0].clone(), sq[0].clone()
        for n in range(2, keep + 1):  # in place: the same values, 2.5x faster than fresh tensors per op
            var = torch.add(s2, sq).div_(n)  # each candidate added
            var.sub_(torch.add(s1, s).div_(n).square_()).clamp_min_(0)
            std = var.sqrt_().mean(-3)  # [S, F, H, W], as pixel_std; a flat map scores 0, as in std_agreement
            score = correlation(std.flatten(1, 2), target.flatten(0, 1)).nan_to_num(0.0)
            j = int(score.masked_fill(used, -2).argmax())
            picked.append(j)
            used[j] = True
            s1 += s[j]
            s2 += sq[j]
        out.append(s[picked])
    return torch.stack(out).to(samples.dtype)


def widen_factor(w: torch.Tensor, m: torch.Tensor, gain: float, base: float) -> torch.Tensor:
    """The share g of a future's departure kept per pixel so that the std map m becomes
    max(base m, gain w): g = gain w / m, at least ``base`` and at most ``MOST``."""
    return (gain * w / m.clamp_min(FLOOR)).clamp(base, MOST)


def widen(samples: torch.Tensor, mean: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Futures [B, S, F, 3, H, W] keeping the share ``g`` [B, F, H, W] of their departure from the
    noiseless future [B, F, 3, H, W], clamped to the frame's range."""
    return (mean[:, None] + g[:, None, :, None] * (samples - mean[:, None])).clamp(0, 1)
