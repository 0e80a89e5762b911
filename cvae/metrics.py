"""PSNR and SSIM as the lab protocol scores them: per channel, on [0, 1] images."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-channel 10 log10(1 / MSE) averaged over the channels: [..., C, H, W] -> [...].

    This is the lab's ``finn_eval_seq``. MSE is floored at 1e-10 (100 dB) so that a perfect
    frame gives a finite number.
    """
    mse = (pred.float() - target.float()).pow(2).mean((-2, -1)).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).mean(-1)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, valid region) per channel,
    averaged over the channels: [..., C, H, W] -> [...]."""
    pred, target = torch.broadcast_tensors(pred, target)
    lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    x = pred.float().reshape(-1, c, h, w)
    y = target.float().reshape(-1, c, h, w)
    win = _gaussian_window().to(x.device).expand(c, 1, 11, 11)

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, win, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.pow(2)
    var_y = blur(y * y) - mu_y.pow(2)
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return s.mean((-2, -1)).mean(-1).reshape(lead)
