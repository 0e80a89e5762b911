"""The straightforward implementation that the fast path is measured against.

It has the structure of the lab's sample code and of SVG: one encoder call and one decoder call
per frame in a Python loop, LSTMs stepped one frame at a time, fp32, no channels_last. It shares
the weights of a :class:`cvae.model.SVG`, so the two can be checked for equal losses.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from cvae.model import SVG
from cvae.model.gaussian import kl_divergence, reparameterize


def reference_losses(model: SVG, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced per-step (mse [T-1], kld [T-1]) computed frame by frame.

    Draws its noise as one [B, T-1, z] tensor, as the fast path does, so that under the same
    seed both see the same z.
    """
    b, t = x.shape[:2]
    noise = torch.randn(b, t - 1, model.latent_dim, device=x.device)
    post_state = prior_state = pred_state = None
    mse, kld = [], []
    skip = coarse_before = None
    for i in range(1, t):
        h_prev, skips_prev = model.encoder(x[:, i - 1])
        coarse_before = skips_prev[3] if coarse_before is None else coarse_before  # frame i-2's (frame 0's at step 1)
        h_target, skips_target = model.encoder(x[:, i])
        if model.last_frame_skip or i <= model.n_past:
            skip = skips_prev
        mu_q, logvar_q, post_state = model.posterior(h_target[:, None], post_state)
        if model.posterior_map is not None:  # the spatial latent: this step's cells, after the vector z
            map_mu, map_logvar = model.posterior_map(skips_target[3], skips_prev[3])
            mu_q, logvar_q = torch.cat([mu_q, map_mu[:, None]], -1), torch.cat([logvar_q, map_logvar[:, None]], -1)
        z = reparameterize(mu_q, logvar_q, noise[:, i - 1 : i])
        prior = None
        if model.prior is not None:
            mu_p, logvar_p, prior_state = model.prior(h_prev[:, None], prior_state)
            prior = model._with_map_prior(mu_p, logvar_p, skips_prev[3][:, None], coarse_before[:, None])
        g, pred_state = model.predictor(h_prev[:, None], z[..., : model.z_dim], cond[:, i - 1 : i], pred_state)
        latest = min(i - 1, model.n_past - 1)
        x_pred = model._decode(g[:, 0], skip, x[:, i - 1], cond[:, i - 1], x[:, latest], cond[:, latest], z[:, 0])
        mse.append(F.mse_loss(x_pred, x[:, i]))
        coarse_before = skips_prev[3]
        kld.append(kl_divergence(mu_q, logvar_q, *(prior or ())).mean())
    return torch.stack(mse), torch.stack(kld)
