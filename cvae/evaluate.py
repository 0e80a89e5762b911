"""Evaluation under the lab protocol, the SVG papers' best/mean-of-N, and two baselines.

Lab protocol: the first ``n_past + n_future`` (2 + 10) frames of every test sequence; the model
sees the 2 context frames and the conditions, draws one z path from the prior, and predicts the
10 future frames with no teacher forcing. PSNR is per-channel 10 log10(1/MSE) on [0, 1] images,
averaged over channels, then over the future frames and *all* sequences (not the last batch, as
the lab template did).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data.counterfactual import ALTERNATIVES, alternative_actions, resimulate, scene_of
from .data.dataset import BairDataset
from .metrics import psnr, ssim
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
    # simulated data only: {alternative: {psnr, ssim, copy_last_psnr, copy_last_ssim}}, plus "all"
    counterfactual: dict | None = None
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
        return "\n".join(lines)


def _batches(n: int, batch: int) -> list[range]:
    return [range(i, min(n, i + batch)) for i in range(0, n, batch)]


@torch.no_grad()
def evaluate(model: SVG, dataset: BairDataset, n_future: int = 10, n_samples: int = 1, seed: int = 0,
             limit: int = 0, batch_size: int = 32, baselines: bool = False,
             device: torch.device | str = "cpu") -> EvalResult:
    """Score ``model`` on the first ``limit`` (0: all) sequences of ``dataset`` in its fixed order.

    Sample 0 of every sequence is the lab's one-z score. With ``n_samples`` > 1 the best and the
    mean over samples (of each sequence's mean PSNR over future frames) are reported as well.
    Baselines: copy the last context frame; the model fed another sequence's conditions (each
    sequence takes the next one's, cyclically).
    """
    n_past = model.n_past
    n = min(len(dataset), limit) if limit else len(dataset)
    if dataset.seq_len < n_past + n_future:
        raise ValueError(f"dataset windows hold {dataset.seq_len} frames; {n_past + n_future} are needed")
    p_all, s_all, copy_p, copy_s, shuf_p, shuf_s = [], [], [], [], [], []
    for idx in _batches(n, batch_size):
        x, c = (torch.stack(t).to(device) for t in zip(*(dataset[i] for i in idx)))
        x = x[:, : n_past + n_future]
        target = x[:, n_past:].unsqueeze(1)
        pred = model.predict(x[:, :n_past], c, n_future, n_samples, seed + idx.start)
        p_all.append(psnr(pred, target))  # [B, S, F]
        s_all.append(ssim(pred, target))
        if baselines:
            last = x[:, n_past - 1 : n_past].expand_as(x[:, n_past:])
            copy_p.append(psnr(last, x[:, n_past:]))
            copy_s.append(ssim(last, x[:, n_past:]))
            c_other = torch.stack([dataset[(i + 1) % n][1] for i in idx]).to(device)
            pred_other = model.predict(x[:, :n_past], c_other, n_future, 1, seed + idx.start)
            shuf_p.append(psnr(pred_other[:, 0], x[:, n_past:]))
            shuf_s.append(ssim(pred_other[:, 0], x[:, n_past:]))
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
    return result


@torch.no_grad()
def counterfactual(model: SVG, dataset: BairDataset, n_future: int = 10, seed: int = 0,
                   limit: int = 0, kinds: tuple[str, ...] = ALTERNATIVES,
                   device: torch.device | str = "cpu") -> dict | None:
    """Score the model under actions the data never took, against the re-simulated truth.

    For each sequence and each alternative (``counterfactual.alternative_actions``) the scene is
    re-simulated under the changed actions; the model sees the same two context frames and the
    new conditions. Copy-last is scored against the same truth. None unless every sequence comes
    from the simulator (real data has no counterfactual truth).
    """
    n_past = model.n_past
    n = min(len(dataset), limit) if limit else len(dataset)
    scenes = [scene_of(dataset.packed.sequences[i]) for i in range(n)]
    if not n or any(s is None for s in scenes):
        return None
    scores: dict[str, dict[str, list]] = {k: {"psnr": [], "ssim": [], "copy_last_psnr": [], "copy_last_ssim": []}
                                          for k in kinds}
    for idx in _batches(n, 32):
        x, c = (torch.stack(t) for t in zip(*(dataset[i] for i in idx)))
        x, c = x[:, : n_past + n_future], c[:, : n_past + n_future].numpy()
        for kind in kinds:
            truth, cond = zip(*(resimulate(scenes[i], alternative_actions(c[j, :, :4], kind, n_past - 1, seed + i))
                                for j, i in enumerate(idx)))
            truth = torch.from_numpy(np.stack(truth)).permute(0, 1, 4, 2, 3).float().div(255).to(device)
            pred = model.predict(x[:, :n_past].to(device), torch.from_numpy(np.stack(cond)).to(device), n_future, 1,
                                 seed + idx.start)[:, 0]
            last = truth[:, n_past - 1 : n_past].expand_as(truth[:, n_past:])
            r = scores[kind]
            r["psnr"].append(psnr(pred, truth[:, n_past:]))
            r["ssim"].append(ssim(pred, truth[:, n_past:]))
            r["copy_last_psnr"].append(psnr(last, truth[:, n_past:]))
            r["copy_last_ssim"].append(ssim(last, truth[:, n_past:]))
    out = {k: {m: torch.cat(v).mean().item() for m, v in r.items()} for k, r in scores.items()}
    out["all"] = {m: sum(out[k][m] for k in kinds) / len(kinds) for m in out[kinds[0]]}
    return out
