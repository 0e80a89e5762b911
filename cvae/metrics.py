"""PSNR and SSIM as the lab protocol scores them (per channel, on [0, 1] images), and the
measures of what a person sees: sharpness, PSNR where things move, spread of futures."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-channel 10 log10(1 / MSE) averaged over the channels: [..., C, H, W] -> [...].

    This is the lab's ``finn_eval_seq``. MSE is floored at 1e-10 (100 dB) so that a perfect
    frame gives a finite number.
    """
    mse = (pred.float() - target.float()).pow(2).mean((-2, -1)).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).mean(-1)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-d Gaussian of ``size`` taps centred on the middle one."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x.pow(2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = _gaussian(size, sigma)
    return g[:, None] * g[None, :]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Images [..., C, H, W] blurred by a Gaussian of ``sigma`` px (cut at 2 sigma), the border
    repeated past the edge as ``warp`` repeats it; ``sigma`` 0 returns them as they are.

    A weighted sum of shifted slices, not a depthwise ``conv2d``: on this CPU oneDNN never
    finished generating the kernel for a 17-tap one inside a training step (py-spy; over two
    hours, deaf to SIGTERM)."""
    if not sigma:
        return x
    r = math.ceil(2 * sigma)
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    g = _gaussian(2 * r + 1, sigma).tolist()
    v = F.pad(x.float().reshape(-1, c, h, w), (r, r, r, r), mode="replicate")
    v = sum(g[i] * v[..., i : i + w] for i in range(2 * r + 1))
    v = sum(g[i] * v[..., i : i + h, :] for i in range(2 * r + 1))
    return v.reshape(*lead, c, h, w)


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


# What whole-frame PSNR hides: most pixels never move, so these look where things happen.

MOVING_THRESHOLD = 0.1  # on [0, 1]: a pixel moves where the truth differs from the last context frame by more
EE_WINDOW = 9  # pixels on a side of the window around the end effector


def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute spatial gradient (horizontal and vertical neighbour differences, averaged):
    [..., C, H, W] -> [...]. A blurred frame scores lower than the truth, noise higher."""
    x = x.float()
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean((-3, -2, -1))
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((-3, -2, -1))
    return (dx + dy) / 2


def pixel_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [..., C, H, W] -> each pixel's signed difference to its right and to its lower
    neighbour, two tensors of the frames' own size (0 past the border, so patches still tile them)."""
    x = x.float()
    return F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1)), F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))


def gradient_map(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel form of ``sharpness``: [..., C, H, W] -> [..., H, W], each pixel's absolute
    difference to its right and lower neighbours (:func:`pixel_differences`), averaged over the two
    and the channels. Summed over a region, it says how much of a frame's edges lie there."""
    dx, dy = pixel_differences(x)
    return ((dx.abs() + dy.abs()) / 2).mean(-3)


def edge_energy(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared edges (:func:`gradient_map`) summed over ``mask``: frames [..., C, H, W] and a
    mask broadcastable to [..., H, W] -> [...]. ``sharpness``'s summed edges stay the same when a
    step is smeared over w pixels (w edges of 1 / w) and when futures that put an object in two
    places are averaged; squared edges fall as 1 / w and halve for that mean, so they tell a sharp
    prediction from a blur that is in the right place."""
    return (gradient_map(x).square() * mask).sum((-2, -1))


def moving_mask(target: torch.Tensor, last: torch.Tensor, threshold: float = MOVING_THRESHOLD) -> torch.Tensor:
    """Pixels that move: where ``target`` differs from ``last`` (the last context frame) by more
    than ``threshold`` in any channel. [..., C, H, W] -> bool [..., H, W]."""
    return ((target.float() - last.float()).abs() > threshold).any(-3)


GHOST_MARGIN = 0.25  # on [0, 1]: 64 grey levels beyond every true future's value


def ghosts(frames: torch.Tensor, truths: torch.Tensor, dim: int = 0, margin: float = GHOST_MARGIN) -> torch.Tensor:
    """Pixels of ``frames`` [..., C, H, W] that no true future (``truths``' ``dim``, as
    :func:`pixel_std` takes it; the frames broadcast against the truths with it kept as 1) comes
    near: in some channel more than ``margin`` darker than the darkest truth there or lighter than
    the lightest. A blend of the futures (haze) stays inside their range; a ghost, such as the
    arm's dark trace where every future shows the table, does not. -> bool [..., H, W]."""
    low, high = truths.float().amin(dim, keepdim=True), truths.float().amax(dim, keepdim=True)
    beyond = (low - frames.float()).clamp_min(0) + (frames.float() - high).clamp_min(0)
    return (beyond > margin).any(-3)


def z_change(a: torch.Tensor, b: torch.Tensor, world: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """How visibly another z changes the futures where the world is uncertain: the mean absolute
    difference between two seeds' futures ``a`` and ``b`` [S, F, C, H, W] (averaged over the
    channels), over the pixels of each step where any physics future ``world`` [K, F, C, H, W]
    moves (``moving_mask`` against the last context frame ``last`` [C, H, W]). A model whose z
    only jitters the still table scores little however many pixels it touches."""
    region = moving_mask(world, last).any(0)  # [F, H, W]
    return (a.float() - b.float()).abs().mean(-3)[:, region].mean()


def window_mask(centre_px: torch.Tensor, size: int = EE_WINDOW, hw: tuple[int, int] = (64, 64)) -> torch.Tensor:
    """A ``size`` x ``size`` window around each (col, row) pixel position [..., 2] -> bool [..., H, W]
    (cut at the image border). The centre is the pixel that holds the position."""
    col, row = centre_px.floor().long().unbind(-1)
    rows = torch.arange(hw[0], device=centre_px.device)
    cols = torch.arange(hw[1], device=centre_px.device)
    r = (rows - row[..., None]).abs() <= size // 2
    c = (cols - col[..., None]).abs() <= size // 2
    return r[..., :, None] & c[..., None, :]


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR over the pixels of ``mask`` only, per channel then averaged as :func:`psnr` does:
    [..., C, H, W] with mask [..., H, W] -> [...]; NaN where the mask is empty."""
    m = mask.float().unsqueeze(-3)
    n = m.sum((-2, -1))
    mse = ((pred.float() - target.float()).pow(2) * m).sum((-2, -1)) / n
    out = (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean(-1)
    return out.masked_fill(n[..., 0] == 0, float("nan"))


def pixel_std(samples: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Per-pixel standard deviation over ``dim`` (futures), averaged over the channels:
    [..., S, ..., C, H, W] -> the same without ``dim`` and C. The population std (divides by S)."""
    return samples.float().std(dim, correction=0).mean(-3)


BETA_EPS = 1e-8  # energy_score's smoothing of a mean square under a power beta != 1 (0.03 grey levels RMS)
CERTAIN_STD = 1 / 255  # futures whose std at a pixel is below one grey level agree there


def branching(futures: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Where futures differ: :func:`pixel_std` over ``dim`` of ``CERTAIN_STD`` or more, a bool map
    shaped as ``pixel_std``'s. The one definition of where the world branches, shared by the
    evaluation's misplaced spread, the energy score's branch gate and the branch weight."""
    return pixel_std(futures, dim) >= CERTAIN_STD


def _soft_std(futures: torch.Tensor) -> torch.Tensor:
    """:func:`pixel_std` over dim 1 with 1e-6 added to the variance, for the training terms: a
    pixel where every future agrees then has a gradient, not NaN."""
    return (futures.float().var(1, correction=0) + 1e-6).sqrt().mean(-3)


def spread_gap(samples: torch.Tensor, truths: torch.Tensor) -> torch.Tensor:
    """Model futures [B, S, F, C, H, W] against true futures [B, K, F, C, H, W] -> [B]: the mean
    over pixels of |model std - truth std| (:func:`_soft_std` over the futures).

    What eval's spread ratio and agreement compare, as a training term: it costs spread where the
    truths agree, first order, where the energy score's cost there is about a third of that, and asks
    for it where they differ. Not a proper score (the mean is free), so it rides beside one."""
    return (_soft_std(samples) - _soft_std(truths)).abs().flatten(1).mean(1)


def agreement_gap(samples: torch.Tensor, truths: torch.Tensor) -> torch.Tensor:
    """Model futures [B, S, F, C, H, W] against true futures [B, K, F, C, H, W] -> [B]: 1 minus the
    :func:`correlation` of their std maps (:func:`_soft_std` over the futures) over every future
    pixel, eval's uncertainty agreement as a loss; 0 for a scene whose truths agree everywhere
    (:func:`branching`), which says nothing of where.

    Unlike :func:`spread_gap` it is blind to how much the futures spread, only where: it asks to
    move spread from where the truths agree to where they differ, not for less of it, and leaves
    the amount to the proper score beside it. Trained, the spread it took off the arm did not come
    back on the objects (docs/issue13.md, stop 57)."""
    corr = correlation(_soft_std(samples).flatten(1, 2), _soft_std(truths).flatten(1, 2)).nan_to_num(0.0)
    differ = branching(truths, 1).flatten(1).any(1)
    return torch.where(differ, 1 - corr, torch.zeros_like(corr))


def edge_gap(samples: torch.Tensor, truths: torch.Tensor) -> torch.Tensor:
    """Model futures [B, S, F, C, H, W] against true futures [B, K, F, C, H, W] -> [B]: how far
    each model future falls short of a true future's crispness where the truths differ
    (:func:`branching`): 1 minus its squared edges (:func:`edge_energy`, summed over the steps)
    over the truths' mean there, at least 0, averaged over the model futures; 0 for a scene whose
    truths agree everywhere.

    A training term for what the energy score has not taught: a future that draws the pushed
    object as the mean of its places, or smears it, keeps its summed edges but loses about half
    of its squared ones there. One-sided: edges beyond the truths' earn nothing, but cost nothing
    either, and a model trained on it x 0.3 painted speckle to close it (README, ``eg0.3``)."""
    differ = branching(truths, 1)[:, None].float()  # [B, 1, F, H, W]
    truth = edge_energy(truths.float(), differ).sum(-1).mean(1)  # [B]
    mine = edge_energy(samples.float(), differ).sum(-1)  # [B, S]
    short = (1 - mine / truth.clamp_min(1e-12)[:, None]).clamp_min(0).mean(1)
    return torch.where(truth > 0, short, torch.zeros_like(short))


def residual_energy_score(samples: torch.Tensor, center: torch.Tensor, truths: torch.Tensor, patch: int = 0,
                          branch: bool = False, branch_weight: float = 0.0, pool: int = 1,
                          beta: float = 1.0) -> torch.Tensor:
    """Model futures [B, S, ...] and the model's noiseless future [B, ...] against true futures
    [B, K, ...] -> [B]: :func:`energy_score` of the samples' deviations from the noiseless future
    against the truths' deviations from their mean (times sqrt(K / (K - 1)), so that their
    variance is not the K-sample mean's underestimate), plus its fit term alone (one future has
    no spread) of the noiseless future against the truths' mean, every patch counted alike (the
    mean is one future: it does not branch).

    The plain score pays a model to spread wherever its one prediction is wrong, the world's
    doubt and its own alike: with the two split, what z changes is scored only against how the
    world's futures differ from one another, so the model's own errors (the arm's region, where
    the truths agree: docs/issue13.md, stop 57) land on the noiseless future and ask z for nothing."""
    k = truths.shape[1]
    if k < 2:
        raise ValueError(f"the residual energy score needs 2 or more true futures per scene, not {k}")
    mean = truths.float().mean(1, keepdim=True)
    deviations = (truths.float() - mean) * math.sqrt(k / (k - 1))
    spread = energy_score(samples.float() - center.float()[:, None], deviations, patch, branch, branch_weight, pool,
                          beta)
    fit = energy_score(center.float()[:, None].expand(-1, 2, *center.shape[1:]), mean, patch, pool=pool, beta=beta)
    return spread + fit


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two maps over their last two dims: [..., H, W] -> [...]. NaN where
    either map is constant (a correlation is undefined there), with a finite gradient there too:
    the product of the norms is clamped before its root, whose slope at 0 is infinite and would
    reach the inputs as NaN through the ``where`` (``agreement_gap`` trains on it)."""
    a = a.float().flatten(-2)
    b = b.float().flatten(-2)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    den2 = a.pow(2).sum(-1) * b.pow(2).sum(-1)
    corr = (a * b).sum(-1) / den2.clamp_min(torch.finfo(den2.dtype).tiny).sqrt()
    return torch.where(den2 > 0, corr, torch.full_like(corr, float("nan")))


def energy_score(samples: torch.Tensor, truths: torch.Tensor, patch: int = 0, branch: bool = False,
                 branch_weight: float = 0.0, pool: int = 1, beta: float = 1.0) -> torch.Tensor:
    """Model futures [B, S, ...] against true futures [B, K, ...] of the same scenes -> [B]:
    mean over (s, k) of ||x_s - y_k|| minus half the mean over s != s' of ||x_s - x_s'||, with
    ||.|| the root-mean-square over everything after the first two dimensions (S >= 2).

    A proper scoring rule (Gneiting and Raftery 2007): its expectation is lowest when the
    samples are drawn from the truths' own distribution, so it rewards spread exactly where the
    true futures differ and penalises it where they agree, unlike best of K, which rewards any
    spread. Because the norm is not squared, samples that differ by a hair still get a full-size
    push apart: a collapsed z is not a flat spot.

    ``patch`` P > 0 (frames [..., C, H, W] with H and W divisible by P): the mean of the score
    of every P x P patch of every frame, each with its own norm, rather than one norm over the
    whole future. Still proper for each patch's distribution, and local: over a whole future,
    spread added where the model is already right costs only second order (the norm of a large
    error elsewhere barely grows) while the spread term pays it first order, so a biased model
    is paid to spread anywhere; within a patch, spread pays only where that patch's futures
    differ or its error is as large.

    ``branch``: the spread term counts only in patches where the truths differ (:func:`branching`
    at one of its pixels; frames [..., C, H, W]). Where they agree
    a model that cannot hit them (the arm's shaft, which no source moves rigidly) still lowers
    the proper score by spreading its samples around its error, which puts its own doubt into
    z; without the term there, the samples' best answer is one prediction there. Measured, it
    silenced z in models that barely spread and, on the bundle's recipe, left three quarters of
    the spread where the truths agree (docs/issue13.md, stop 48). No longer proper where the truths
    agree: it asks for no spread even where the model's error would justify it.

    ``branch_weight`` W: the patches where the truths differ count 1 + W in a weighted mean. They
    are about 2% of a frame, so the plain mean is nearly all the patches where the world is
    certain, and its pay for spread where it branches is small beside the model's own doubt. A
    weighted mean of proper scores, with weights set by the world's distribution alone, stays
    proper; the weights sum to 1, so the score's scale stays that of ``energy_weight``.

    ``pool`` P > 1: the frames are averaged over P x P pixels first, so ``patch`` counts pooled
    pixels and ``branch`` asks where the pooled truths differ. Pooling keeps where an object's
    colour lies and averages away how sharply it is drawn: futures that flicker pixel by pixel, or
    blur an object over all its places, pool to the same coarse frame, while an object carried
    whole to another place moves its colour to other pooled pixels. A proper score of the pooled
    futures asks for spread of that kind only.

    ``beta`` in (0, 2): each norm raised to this power, still proper (Gneiting and Raftery's
    family). Below 1 a blend is dearer against sharp alternatives, and a hair of spread where the
    truths agree costs relatively more: where the truths are 0 or 1, half each, a future of 0.5
    scores 0.5 ** beta in expectation and futures drawn from the truths 0.25 at every beta (0.5
    against 0.25 at beta 1, 0.71 against 0.25 at 0.5). Mean squares under ``BETA_EPS`` are smoothed, so
    the power's infinite slope at 0 stays finite."""
    x, y = samples.float(), truths.float()
    if pool > 1:
        h, w = x.shape[-2:]
        if h % pool or w % pool:
            raise ValueError(f"energy score pool {pool} does not tile {h}x{w} frames")
        x, y = (F.avg_pool2d(v.flatten(0, -4), pool).view(*v.shape[:-2], h // pool, w // pool) for v in (x, y))
    s = x.shape[1]
    if s < 2:
        raise ValueError(f"the energy score needs 2 or more samples per scene, not {s}")
    if patch:
        h, w = x.shape[-2:]
        if patch < 0 or h % patch or w % patch:
            raise ValueError(f"energy score patch {patch} does not tile {h}x{w} frames")

    if not 0 < beta < 2:
        raise ValueError(f"energy score beta must be in (0, 2), where the score is proper, not {beta}")

    def power(ms: torch.Tensor) -> torch.Tensor:
        """Mean squares -> their norms to the power ``beta``."""
        return (ms + 1e-12).sqrt() if beta == 1 else (ms + BETA_EPS).pow(beta / 2)

    def rms(d: torch.Tensor) -> torch.Tensor:
        """Differences [B, S, S', ...] -> their norms [B, S, S', N] (to the power ``beta``): one per
        future (N = 1), or one per patch."""
        sq = d.pow(2)
        if not patch:
            return power(sq.flatten(3).mean(-1, keepdim=True))
        per_patch = F.avg_pool2d(sq.flatten(0, -4).mean(1, keepdim=True), patch)  # [N, 1, H / P, W / P]
        return power(per_patch).reshape(*sq.shape[:3], -1)

    fit = rms(x[:, :, None] - y[:, None]).mean((1, 2))
    first, second = torch.triu_indices(s, s, 1, device=x.device)
    spread = rms((x[:, first] - x[:, second])[:, :, None]).mean((1, 2))  # over the pairs s != s'
    if not (branch or branch_weight):
        return (fit - 0.5 * spread).mean(-1)
    differ = branching(y, 1)  # [B, ..., H, W], ordered as rms's norms
    if patch:
        differ = F.max_pool2d(differ.flatten(0, -3)[:, None].float(), patch).reshape(len(y), -1)
    else:
        differ = differ.flatten(1).any(1, keepdim=True).float()
    if branch:
        spread = spread * differ
    weight = 1 + branch_weight * differ
    return ((fit - 0.5 * spread) * weight).sum(-1) / weight.sum(-1)
