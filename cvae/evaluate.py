"""Evaluation under the lab protocol, the SVG papers' best/mean-of-N, two baselines, and the
measures of what a person sees (sharpness, PSNR where things move and around the end effector).

Lab protocol: the first ``n_past + n_future`` (2 + 10) frames of every test sequence; the model
sees the 2 context frames and the conditions, draws one z path from the prior, and predicts the
10 future frames with no teacher forcing. PSNR is per-channel 10 log10(1/MSE) on [0, 1] images,
averaged over channels, then over the future frames and *all* sequences (not the last batch, as
the lab template did).

Whole-frame PSNR hides most of what a person sees, because most pixels never move. So beside it:
sharpness per step (the prediction's mean spatial gradient over the truth's: 1 is as sharp as the
truth, less is blur), PSNR over the pixels that move (the truth differs from the last context
frame by more than 0.1), the squared edges on those pixels per step (``metrics.edge_energy``, the
prediction's over the truth's: a pushed object smeared into haze keeps its summed edges, which
sharpness counts, but not its squared ones) and PSNR in a 9x9 window around the true
end-effector pixel (data with the built-in kinematics only: real BAIR's camera is not
calibrated), each beside copy-last.
Scoring against re-simulated truths (counterfactual, the distribution of futures) is in
``physics_eval.py``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .condition import XY
from .data.dataset import BairDataset
from .kinematics import world_to_px
from .metrics import edge_energy, masked_psnr, moving_mask, psnr, sharpness, ssim, window_mask
from .model import SVG


@dataclass
class EvalResult:
    protocol: str
    n_sequences: int
    n_samples: int
    psnr: float  # lab protocol: one sample from the prior
    ssim: float
    psnr_per_step: list[float]
    ssim_per_step: list[float]
    best_of_n_psnr: float | None = None
    mean_of_n_psnr: float | None = None
    best_of_n_ssim: float | None = None
    copy_last_psnr: float | None = None
    copy_last_ssim: float | None = None
    shuffled_cond_psnr: float | None = None
    shuffled_cond_ssim: float | None = None
    copy_last_psnr_per_step: list[float] | None = None
    # prediction's sharpness over the truth's, per step (1: as sharp as the truth)
    sharpness_per_step: list[float] | None = None
    copy_last_sharpness_per_step: list[float] | None = None
    moving_share: float | None = None  # share of future pixels that move
    moving_psnr: float | None = None  # PSNR over the moving pixels, one sample
    moving_best_of_n_psnr: float | None = None
    copy_last_moving_psnr: float | None = None
    # squared edges on the moving pixels, the prediction's over the truth's per step (1: as sharp there)
    moving_edges_per_step: list[float] | None = None
    copy_last_moving_edges_per_step: list[float] | None = None
    ee_psnr: float | None = None  # 9x9 window around the true end-effector pixel (built-in kinematics only)
    copy_last_ee_psnr: float | None = None
    # simulated data only: {alternative: {psnr, ssim, copy_last_psnr, copy_last_ssim}}, plus "all"
    counterfactual: dict | None = None
    # simulated data only: the model's futures against K re-simulated true futures (physics_eval.py)
    distribution: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self, path: str | Path) -> None:
        from .atomic import write_text

        write_text(path, json.dumps(asdict(self), indent=1))

    def table(self) -> str:
        rows = [("model, 1 sample (lab)", self.psnr, self.ssim)]
        if self.best_of_n_psnr is not None:
            rows += [(f"model, best of {self.n_samples}", self.best_of_n_psnr, self.best_of_n_ssim),
                     (f"model, mean of {self.n_samples}", self.mean_of_n_psnr, None)]
        if self.copy_last_psnr is not None:
            rows.append(("baseline: copy last frame", self.copy_last_psnr, self.copy_last_ssim))
        if self.shuffled_cond_psnr is not None:
            rows.append(("baseline: actions shuffled", self.shuffled_cond_psnr, self.shuffled_cond_ssim))
        for kind, r in (self.counterfactual or {}).items():
            rows += [(f"counterfactual {kind}: model", r["psnr"], r["ssim"]),
                     (f"counterfactual {kind}: copy last", r["copy_last_psnr"], r["copy_last_ssim"])]
        lines = [f"{self.protocol}; {self.n_sequences} sequences",
                 f"{'':38s} {'PSNR dB':>8s} {'SSIM':>7s}"]
        for name, p, s in rows:
            lines.append(f"{name:38s} {p:8.2f} {'' if s is None else f'{s:7.4f}':>7s}")
        lines.append("per-step PSNR: " + " ".join(f"{v:.1f}" for v in self.psnr_per_step))
        if self.copy_last_psnr_per_step is not None:
            lines.append("copy last:     " + " ".join(f"{v:.1f}" for v in self.copy_last_psnr_per_step))
        if self.sharpness_per_step is not None:
            lines.append("sharpness (prediction / truth) per step: "
                         + " ".join(f"{v:.2f}" for v in self.sharpness_per_step))
        if self.moving_psnr is not None:
            best = "" if self.moving_best_of_n_psnr is None else f", best of {self.n_samples} {self.moving_best_of_n_psnr:.2f}"
            lines.append(f"moving pixels ({100 * self.moving_share:.1f}%): PSNR {self.moving_psnr:.2f}{best}, "
                         f"copy last {self.copy_last_moving_psnr:.2f}")
        if self.moving_edges_per_step is not None:
            lines.append("squared edges on the moving pixels (prediction / truth) per step: "
                         + " ".join(f"{v:.2f}" for v in self.moving_edges_per_step))
        if self.ee_psnr is not None:
            lines.append(f"end-effector 9x9 window: PSNR {self.ee_psnr:.2f}, copy last {self.copy_last_ee_psnr:.2f}")
        d = self.distribution
        if d is not None:
            lines.append(f"against {d['k']} re-simulated true futures ({d['n_sequences']} sequences, "
                         f"{self.n_samples} model samples):")
            lines.append(f"  spread in the moving region: truth {d['truth_spread']:.4f}, model {d['model_spread']:.4f}, "
                         f"ratio {d['spread_ratio']:.2f}")
            if "branch_spread_ratio" in d:
                lines.append(f"  spread where the true futures differ (the world's own): truth {d['branch_truth_spread']:.4f}, "
                             f"model {d['branch_model_spread']:.4f}, ratio {d['branch_spread_ratio']:.2f}")
            lines.append(f"  uncertainty agreement (correlation of std maps): {d['agreement']:.2f} "
                         f"over {d['agreement_sequences']} sequences")
            if "misplaced_share" in d:
                lines.append(f"  model spread where the true futures agree (its own doubt, not the world's): "
                             f"{100 * d['misplaced_share']:.0f}% (they agree on {100 * d['certain_share']:.0f}% "
                             "of the pixels: an even spread would score that)")
            lines.append(f"  coverage (closest sample per true future): {d['coverage_psnr']:.2f} dB, "
                         f"one sample {d['one_sample_psnr']:.2f} dB")
            if "ghost_pixels" in d:
                lines.append(f"  ghosts (pixels per frame no true future comes within 64 grey levels of): "
                             f"{d['ghost_pixels']:.1f}, copy last {d['copy_last_ghost_pixels']:.1f}")
            if p := d.get("perfect"):
                lines.append(f"  a perfect sampler ({self.n_samples} more re-simulations in the model's place): ratio "
                             f"{p['spread_ratio']:.2f}, agreement {p['agreement']:.2f}, spread where the true futures "
                             f"agree {100 * p['misplaced_share']:.0f}%, coverage "
                             f"{p['coverage_psnr'] - p['one_sample_psnr']:+.2f} dB over one sample")
        return "\n".join(lines)


def batches(n: int, batch: int) -> list[range]:
    return [range(i, min(n, i + batch)) for i in range(0, n, batch)]


def row_seeds(seed: int, idx: range) -> range:
    """The z seeds of the sequences ``idx`` of one batch, ``seed + i`` each, for ``SVG.predict``:
    a sequence draws the same futures in any batch, and N sequences average N draws."""
    return range(seed + idx.start, seed + idx.stop)


def progress_bar(items: list, show: bool, what: str):
    """A tqdm bar over ``items`` when ``show`` (eval can take minutes), else the items as they are."""
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="batch", dynamic_ncols=True)


@torch.no_grad()
def evaluate(model: SVG, dataset: BairDataset, n_future: int = 10, n_samples: int = 1, seed: int = 0,
             limit: int = 0, batch_size: int = 32, baselines: bool = False, ee_window: bool = False,
             device: torch.device | str = "cpu", progress: bool = False) -> EvalResult:
    """Score ``model`` on the first ``limit`` (0: all) sequences of ``dataset`` in its fixed order.

    Sample 0 of every sequence is the lab's one-z score; sequence i draws from seed ``seed + i``
    (``row_seeds``). With ``n_samples`` > 1 the best and the mean over samples (of each
    sequence's mean PSNR over future frames) are reported as well. Baselines: copy the last
    context frame; the model fed another sequence's conditions (each sequence takes the next
    one's, cyclically). With ``baselines`` also sharpness, moving-region
    and (with ``ee_window``: the data's positions follow ``cvae.kinematics``) end-effector-window
    PSNR, each beside copy-last.
    """
    n_past = model.n_past
    n = min(len(dataset), limit) if limit else len(dataset)
    if dataset.seq_len < n_past + n_future:
        raise ValueError(f"dataset windows hold {dataset.seq_len} frames; {n_past + n_future} are needed")
    p_all, s_all, copy_p, copy_s, shuf_p, shuf_s = [], [], [], [], [], []
    sharp, sharp_copy, sharp_truth, mov, mov_copy, ee, ee_copy, moving = [], [], [], [], [], [], [], []
    edges, edges_copy, edges_truth = [], [], []
    for idx in progress_bar(batches(n, batch_size), progress, "scoring"):
        x, c = (torch.stack(t).to(device) for t in zip(*(dataset[i] for i in idx)))
        x = x[:, : n_past + n_future]
        target = x[:, n_past:].unsqueeze(1)
        seeds = row_seeds(seed, idx)
        pred = model.predict(x[:, :n_past], c, n_future, n_samples, seeds)
        p_all.append(psnr(pred, target))  # [B, S, F]
        s_all.append(ssim(pred, target))
        if baselines:
            last = x[:, n_past - 1 : n_past].expand_as(x[:, n_past:])
            copy_p.append(psnr(last, x[:, n_past:]))
            copy_s.append(ssim(last, x[:, n_past:]))
            c_other = torch.stack([dataset[(i + 1) % n][1] for i in idx]).to(device)
            pred_other = model.predict(x[:, :n_past], c_other, n_future, 1, seeds)
            shuf_p.append(psnr(pred_other[:, 0], x[:, n_past:]))
            shuf_s.append(ssim(pred_other[:, 0], x[:, n_past:]))
            sharp.append(sharpness(pred[:, 0]))
            sharp_copy.append(sharpness(last))
            sharp_truth.append(sharpness(x[:, n_past:]))
            mask = moving_mask(x[:, n_past:], last)  # [B, F, H, W]
            moving.append(mask.float().mean((1, 2, 3)))
            mov.append(_frame_mean(masked_psnr(pred, target, mask[:, None])))  # [B, S]
            mov_copy.append(_frame_mean(masked_psnr(last, x[:, n_past:], mask)))
            edges.append(edge_energy(pred[:, 0], mask))  # [B, F]
            edges_copy.append(edge_energy(last, mask))
            edges_truth.append(edge_energy(x[:, n_past:], mask))
            if ee_window:
                centre = torch.from_numpy(world_to_px(c[:, n_past : n_past + n_future, XY].cpu().numpy()))
                window = window_mask(centre.to(device))
                ee.append(_frame_mean(masked_psnr(pred[:, 0], x[:, n_past:], window)))
                ee_copy.append(_frame_mean(masked_psnr(last, x[:, n_past:], window)))
    p, s = torch.cat(p_all), torch.cat(s_all)
    seq_mean = p.mean(-1)  # [N, S]
    best = seq_mean.argmax(1)
    result = EvalResult(
        protocol=f"{n_past} context frames, {n_future} predicted, z from the prior, no teacher forcing",
        n_sequences=n, n_samples=n_samples,
        psnr=p[:, 0].mean().item(), ssim=s[:, 0].mean().item(),
        psnr_per_step=p[:, 0].mean(0).tolist(), ssim_per_step=s[:, 0].mean(0).tolist())
    if n_samples > 1:
        rows = torch.arange(n)
        result.best_of_n_psnr = seq_mean.max(1).values.mean().item()
        result.mean_of_n_psnr = seq_mean.mean().item()
        result.best_of_n_ssim = s[rows, best].mean().item()
    if baselines:
        result.copy_last_psnr_per_step = torch.cat(copy_p).mean(0).tolist()
        result.copy_last_psnr, result.copy_last_ssim = torch.cat(copy_p).mean().item(), torch.cat(copy_s).mean().item()
        result.shuffled_cond_psnr, result.shuffled_cond_ssim = torch.cat(shuf_p).mean().item(), torch.cat(shuf_s).mean().item()
        truth_sharp = torch.cat(sharp_truth).mean(0)
        result.sharpness_per_step = (torch.cat(sharp).mean(0) / truth_sharp).tolist()
        result.copy_last_sharpness_per_step = (torch.cat(sharp_copy).mean(0) / truth_sharp).tolist()
        result.moving_share = torch.cat(moving).mean().item()
        m = torch.cat(mov)  # [N, S]; NaN for a sequence where nothing moves
        result.moving_psnr = m[:, 0].nanmean().item()
        if n_samples > 1:
            result.moving_best_of_n_psnr = m.max(1).values.nanmean().item()
        result.copy_last_moving_psnr = torch.cat(mov_copy).nanmean().item()
        truth_edges = torch.cat(edges_truth).sum(0)  # 0 at a step where nothing moves: NaN there
        result.moving_edges_per_step = (torch.cat(edges).sum(0) / truth_edges).tolist()
        result.copy_last_moving_edges_per_step = (torch.cat(edges_copy).sum(0) / truth_edges).tolist()
        if ee_window:
            result.ee_psnr, result.copy_last_ee_psnr = torch.cat(ee).nanmean().item(), torch.cat(ee_copy).nanmean().item()
    return result


def _frame_mean(v: torch.Tensor) -> torch.Tensor:
    """Per-frame scores [..., F] (NaN where a frame has no pixel to score) -> their mean [...]."""
    return v.nanmean(-1)
