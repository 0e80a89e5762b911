"""Scoring against truths only a simulator can give: what would have happened under other
actions (counterfactual), and the other futures that were just as possible (the distribution).

Real video has one future per sequence; a scene written by ``cvae.data.generate`` can be run
again (``data/counterfactual.py``). Both scores are None for any other data set. This module
loads the physics engine; ``evaluate.py`` does not.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .condition import ACTIONS
from .data.bair import IMAGE_SIZE
from .data.counterfactual import (
    ALTERNATIVES,
    Scene,
    alternative_actions,
    resimulate,
    scene_of,
    true_flows,
    true_futures,
    true_futures_flows,
)
from .data.dataset import BairDataset
from .errors import DataError
from .evaluate import batches, progress_bar, row_seeds
from .metrics import branching, correlation, ghosts, moving_mask, pixel_std, psnr, ssim
from .model import SVG
from .parallel import pool

FLOW_UNIT = 8  # stored true displacements are int8 in 1/8 px: up to 15.9 px a frame
FLOW_UNKNOWN = -128  # ... and this where the displacement is not known (or longer)
RERUN_LEVELS = 8  # a re-run's pixel differs from the recorded one by more than this in a channel (of 255)
RERUN_MISMATCH = 0.01  # the most of a sequence's pixels a re-run may differ on before it is an error
VISIBLE_STD = 0.25 / 255  # a std map whose largest value is below a quarter grey level shows nothing


def scenes(dataset: BairDataset, limit: int = 0) -> list[Scene] | None:
    """The simulator's scene behind each of the first ``limit`` (0: all) sequences, or None unless
    every one comes from the simulator."""
    n = min(len(dataset), limit) if limit else len(dataset)
    found = [scene_of(dataset.packed.sequences[i]) for i in range(n)]
    return found if n and all(s is not None for s in found) else None


def rerunnable_scenes(dataset: BairDataset, limit: int, what: str) -> list[Scene]:
    """:func:`scenes`, refused with a message that names ``what`` (the flag or command needing
    them) unless the data is the simulator's and has hidden causes, so a re-run differs."""
    found = scenes(dataset, limit)
    root = dataset.packed.sequences[0].parent.parent.parent if len(dataset) else "the data"
    if found is None:
        raise DataError(f"{what} needs data made by this project's simulator, which can re-run a scene; "
                        f"{root} is not (real BAIR has one future per scene)")
    if found[0].uncertainty == 0:
        raise DataError(f"{what}: {root} has no hidden causes (generated with --uncertainty 0), so every re-run "
                        "of a scene is the same future; generate it with the default")
    return found


def _to_tensor(frames: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [0, 1]."""
    return torch.from_numpy(frames).movedim(-1, -3).float().div(255).to(device)


@torch.no_grad()
def counterfactual(model: SVG, dataset: BairDataset, n_future: int = 10, seed: int = 0,
                   limit: int = 0, kinds: tuple[str, ...] = ALTERNATIVES,
                   device: torch.device | str = "cpu", progress: bool = False) -> dict | None:
    """Score the model under actions the data never took, against the re-simulated truth.

    For each sequence and each alternative (``counterfactual.alternative_actions``) the scene is
    re-simulated under the changed actions with its own hidden causes, so there is one truth; the
    model sees the same two context frames and the new conditions. Copy-last is scored against
    the same truth.
    """
    n_past = model.n_past
    found = scenes(dataset, limit)
    if found is None:
        return None
    scores: dict[str, dict[str, list]] = {k: {"psnr": [], "ssim": [], "copy_last_psnr": [], "copy_last_ssim": []}
                                          for k in kinds}
    for idx in progress_bar(batches(len(found), 32), progress, "counterfactuals"):
        x, c = (torch.stack(t) for t in zip(*(dataset[i] for i in idx)))
        x, c = x[:, : n_past + n_future], c[:, : n_past + n_future].numpy()
        for kind in kinds:
            truth, cond = zip(*(resimulate(found[i], alternative_actions(c[j, :, ACTIONS], kind, n_past - 1, seed + i))
                                for j, i in enumerate(idx)))
            truth = _to_tensor(np.stack(truth), device)
            pred = model.predict(x[:, :n_past].to(device), torch.from_numpy(np.stack(cond)).to(device), n_future, 1,
                                 row_seeds(seed, idx))[:, 0]
            last = truth[:, n_past - 1 : n_past].expand_as(truth[:, n_past:])
            r = scores[kind]
            r["psnr"].append(psnr(pred, truth[:, n_past:]))
            r["ssim"].append(ssim(pred, truth[:, n_past:]))
            r["copy_last_psnr"].append(psnr(last, truth[:, n_past:]))
            r["copy_last_ssim"].append(ssim(last, truth[:, n_past:]))
    out = {k: {m: torch.cat(v).mean().item() for m, v in r.items()} for k, r in scores.items()}
    out["all"] = {m: sum(out[k][m] for k in kinds) / len(kinds) for m in out[kinds[0]]}
    return out


def true_futures_job(job: tuple[Scene, np.ndarray, int]) -> np.ndarray:
    return true_futures(*job)


def _futures_flows(job: tuple[Scene, np.ndarray, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`true_futures_flows` of one scene: frames and displacements as int8 (:func:`_quantize`)."""
    frames, flow, known = true_futures_flows(*job)
    return frames, _quantize(flow, known)


def _quantize(flow: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Displacements float [..., 2] in pixels and where they are known [...] -> int8 [..., 2] in
    ``FLOW_UNIT``ths of a pixel, ``FLOW_UNKNOWN`` where unknown or too long to store."""
    q = np.round(flow * FLOW_UNIT)
    known = known & (np.abs(q) <= 127).all(-1)
    return np.where(known[..., None], q, FLOW_UNKNOWN).astype(np.int8)


def _dequantize(q: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_quantize`'s int8 [..., H, W, 2] -> displacements float [..., 2, H, W] in pixels (0
    where unknown) and where they are known, bool [..., H, W]."""
    q = torch.from_numpy(np.ascontiguousarray(q)).movedim(-1, -3)
    known = q[..., 0, :, :] != FLOW_UNKNOWN
    return torch.where(known.unsqueeze(-3), q.float() / FLOW_UNIT, 0.0), known


def std_agreement(t_std: torch.Tensor, m_std: torch.Tensor) -> torch.Tensor:
    """The truths' and the model's std maps [B, F, H, W] -> [B]: their correlation over all
    future pixels; NaN where the truths agree everywhere, 0 where the model's map shows nothing
    (no pixel's std reaches ``VISIBLE_STD``, as a collapsed z gives, whose float noise would
    otherwise correlate)."""
    agreement = correlation(t_std.flatten(1, 2), m_std.flatten(1, 2)).nan_to_num(0.0)
    agreement = torch.where(m_std.flatten(1).amax(1) < VISIBLE_STD, torch.zeros_like(agreement), agreement)
    truth_flat = t_std.flatten(1).amax(1) == t_std.flatten(1).amin(1)
    return torch.where(truth_flat, torch.full_like(agreement, float("nan")), agreement)


def _mean_where(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Maps [B, F, H, W] -> [B]: each sequence's mean of ``v`` over the pixels ``mask`` picks, NaN where it picks none."""
    n = mask.float().sum((1, 2, 3))
    return torch.where(n > 0, (v * mask).sum((1, 2, 3)) / n.clamp_min(1), torch.full_like(n, float("nan")))


def spread_scores(samples: torch.Tensor, truths: torch.Tensor, last: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model futures [B, S, F, 3, H, W] against true futures [B, K, F, 3, H, W] of the same scenes
    and actions, with last context frames [B, 3, H, W] -> per-sequence scores [B]:

    - ``truth_spread``, ``model_spread``: the per-pixel std over the K truths and over the S
      samples, averaged over the moving region (pixels where any true future differs from the
      last context frame by more than 0.1; NaN where nothing moves);
    - ``branch_truth_spread``, ``branch_model_spread``: the same two averaged where the truths
      differ (``metrics.branching``; NaN where they never do): how much of the world's own
      spread the model draws there, which spread elsewhere cannot make up;
    - ``agreement``: :func:`std_agreement` of the two std maps;
    - ``misplaced``: the share of the model's spread (its std map summed over future pixels) that
      lies where the truths agree (``metrics.branching`` false; NaN where the model's map shows
      nothing): spread there is the model's own doubt (where the arm is, say), not the world's;
      ``certain``, the share of future pixels where the truths agree, is what a spread laid
      evenly over the frame would score;
    - ``coverage``: for each truth the PSNR of the closest sample, averaged over the truths;
    - ``one_sample``: the PSNR of sample 0, averaged over the same truths;
    - ``ghosts``, ``copy_ghosts``: pixels per frame of a sample, and of the last context frame
      held, that no true future comes within 64 grey levels of (``metrics.ghosts``).
    """
    region = moving_mask(truths, last[:, None, None]).any(1)  # [B, F, H, W]
    t_std, m_std = pixel_std(truths, 1), pixel_std(samples, 1)  # [B, F, H, W]
    differ = branching(truths, 1)
    model_flat = m_std.flatten(1).amax(1) < VISIBLE_STD
    certain = (~differ).float()
    misplaced = (m_std * certain).flatten(1).sum(1) / m_std.flatten(1).sum(1).clamp_min(1e-12)
    misplaced = torch.where(model_flat, torch.full_like(misplaced, float("nan")), misplaced)
    pair = psnr(samples[:, :, None], truths[:, None]).mean(-1)  # [B, S, K]
    return {"truth_spread": _mean_where(t_std, region), "model_spread": _mean_where(m_std, region),
            "branch_truth_spread": _mean_where(t_std, differ), "branch_model_spread": _mean_where(m_std, differ),
            "agreement": std_agreement(t_std, m_std),
            "misplaced": misplaced, "certain": certain.mean((1, 2, 3)),
            "coverage": pair.max(1).values.mean(-1), "one_sample": pair[:, 0].mean(-1),
            "ghosts": ghosts(samples, truths, 1).float().sum((-2, -1)).mean((1, 2)),
            "copy_ghosts": ghosts(last[:, None, None], truths, 1).float().sum((-2, -1)).mean((1, 2))}


@torch.no_grad()
def distribution(model: SVG, dataset: BairDataset, k: int = 10, n_samples: int = 10, n_future: int = 10,
                 seed: int = 0, limit: int = 0, workers: int = 1,
                 device: torch.device | str = "cpu", progress: bool = False) -> dict | None:
    """The model's ``n_samples`` futures against ``k`` re-simulated true futures of each scene under
    its recorded actions, the hidden causes re-drawn (:func:`spread_scores`, averaged over the
    sequences; the spread ratio is model over truth of those averages). Its ``perfect`` entry holds
    the same figures for a perfect sampler: ``n_samples`` more re-simulations (draws k+1 on, so the
    truths are the same) scored in the model's place. It shows what each figure reads when the
    futures are the world's own, so a shortfall is the model's, not the estimate's from ten
    draws. None unless the data is the simulator's and has hidden causes (a deterministic world
    has one future)."""
    n_past = model.n_past
    found = scenes(dataset, limit)
    if found is None or found[0].uncertainty == 0 or k < 2 or n_samples < 2:
        return None
    per_seq: dict[str, list[torch.Tensor]] = {}
    per_seq_perfect: dict[str, list[torch.Tensor]] = {}
    with pool(workers) as workers_pool:
        for idx in progress_bar(batches(len(found), 16), progress, "true futures"):
            x, c = (torch.stack(t) for t in zip(*(dataset[i] for i in idx)))
            x, c = x[:, : n_past + n_future].to(device), c[:, : n_past + n_future]
            jobs = [(found[i], c[j, :, ACTIONS].numpy().astype(np.float64), k + n_samples) for j, i in enumerate(idx)]
            drawn = _to_tensor(np.stack(workers_pool.map(true_futures_job, jobs)), device)[:, :, n_past:]
            truths, perfect = drawn[:, :k], drawn[:, k:]
            samples = model.predict(x[:, :n_past], c.to(device), n_future, n_samples, row_seeds(seed, idx))
            for scores, futures in ((per_seq, samples), (per_seq_perfect, perfect)):
                for name, v in spread_scores(futures, truths, x[:, n_past - 1]).items():
                    scores.setdefault(name, []).append(v)
    return {"k": k, "n_samples": n_samples, "n_sequences": len(found), **summarize(per_seq),
            "perfect": summarize(per_seq_perfect)}


def summarize(per_seq: dict[str, list[torch.Tensor]]) -> dict:
    """Batches of :func:`spread_scores` -> the figures ``eval`` reports: each averaged over the
    sequences (NaN ones left out), each spread ratio model over truth of those averages."""
    s = {name: torch.cat(v) for name, v in per_seq.items()}

    def ratio(truth: str, model: str) -> tuple[float, float, float]:
        t, m = s[truth].nanmean().item(), s[model].nanmean().item()
        return t, m, m / t if t > 0 else float("nan")

    truth_spread, model_spread, spread_ratio = ratio("truth_spread", "model_spread")
    branch_truth, branch_model, branch_ratio = ratio("branch_truth_spread", "branch_model_spread")
    return {"truth_spread": truth_spread, "model_spread": model_spread, "spread_ratio": spread_ratio,
            "branch_truth_spread": branch_truth, "branch_model_spread": branch_model,
            "branch_spread_ratio": branch_ratio,
            "agreement": s["agreement"].nanmean().item(),
            "agreement_sequences": int((~s["agreement"].isnan()).sum()),
            "misplaced_share": s["misplaced"].nanmean().item(), "certain_share": s["certain"].mean().item(),
            "coverage_psnr": s["coverage"].mean().item(), "one_sample_psnr": s["one_sample"].mean().item(),
            "ghost_pixels": s["ghosts"].mean().item(), "copy_last_ghost_pixels": s["copy_ghosts"].mean().item()}


class TrainingFutures:
    """Several true futures of some training scenes, for ``SVG._energy``: each of the first
    ``n_scenes`` sequences (from frame 0, where every future shares the recorded context) re-run
    ``k`` times under its recorded actions with the hidden causes re-drawn. Simulated once, at
    the start of training (a few seconds per hundred scenes); ``batch(step)`` then draws
    ``per_step`` of them by a generator seeded with the step, so a resumed run draws the same.
    With ``flows`` also each future's true flows, from the same runs (``SVG._cover_flow``)."""

    def __init__(self, dataset: BairDataset, n_past: int, k: int, n_scenes: int, per_step: int,
                 seed: int = 0, rank: int = 0, workers: int = 1, flows: bool = False) -> None:
        found = rerunnable_scenes(dataset, n_scenes, "--energy-truths")
        ctx, cond = zip(*(dataset[(i, 0)] for i in range(len(found))))
        self.context = torch.stack(ctx)[:, :n_past]
        self.cond = torch.stack(cond)
        jobs = [(scene, c[:, ACTIONS].numpy().astype(np.float64), k) for scene, c in zip(found, self.cond)]
        self.flows = None  # int8 [N, K, F, H, W, 2] (``_quantize``): how each future frame moved from the one before
        with pool(workers) as workers_pool:
            if flows:
                frames, moved = zip(*workers_pool.map(_futures_flows, jobs))
                self.flows = np.stack(moved)[:, :, n_past - 1 :]
            else:
                frames = workers_pool.map(true_futures_job, jobs)
            self.truths = np.stack(frames)[:, :, n_past:]  # uint8 [N, K, F, H, W, 3]
        self.per_step, self.seed, self.rank = per_step, seed, rank

    def batch(self, step: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """Context [M, n_past, 3, H, W], condition [M, T, 7] and true futures [M, K, F, 3, H, W]; with
        flows, then their displacements [M, K, F, 2, H, W] in pixels and where known [M, K, F, H, W]."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7919 + step)
        idx = torch.randint(len(self.truths), (self.per_step,), generator=gen)
        out = (self.context[idx].to(device), self.cond[idx].to(device), _to_tensor(self.truths[idx.numpy()], device))
        if self.flows is None:
            return out
        return out + tuple(v.to(device) for v in _dequantize(self.flows[idx.numpy()]))


def recorded_flows(scene: Scene, actions: np.ndarray, recorded: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The true flows of ``scene`` under ``actions`` [T, 4] (``counterfactual.true_flows``) for its
    recorded frames uint8 [T, 64, 64, 3]: the share of pixels where the re-run's frames differ from
    those (by more than ``RERUN_LEVELS`` in a channel), the displacements [T-1, 64, 64, 2] and
    where they are known [T-1, 64, 64], not where either frame of a pair differs."""
    frames, flow, known = true_flows(scene, actions)
    differ = np.abs(frames.astype(np.int16) - recorded).max(-1) > RERUN_LEVELS  # [T, H, W]
    return float(differ.mean()), flow, known & ~differ[1:] & ~differ[:-1]


def _flows(job: tuple[Scene, np.ndarray, str, tuple[int, ...], int]) -> tuple[float, np.ndarray]:
    """:func:`recorded_flows` of one training sequence, its displacements as int8 (``FLOW_UNIT``,
    ``FLOW_UNKNOWN``)."""
    scene, actions, path, shape, index = job
    share, flow, known = recorded_flows(scene, actions, np.memmap(path, dtype=np.uint8, mode="r", shape=shape)[index])
    return share, _quantize(flow, known)


class TrainingFlows:
    """Where each pixel of every training frame was a frame before, for ``SVG._flow_truth``: each
    training sequence re-run under its recorded actions with its own hidden causes (once, at the
    start of training: about 0.1 s a sequence per worker). The recorded actions are float32, the
    generator's were float64, so a re-run may part from the recorded frames late in a sequence
    where contacts are chaotic (a few dozen of its 120,000 pixels); the flows are unknown there,
    and a sequence whose re-run differs on more than ``RERUN_MISMATCH`` of its pixels is an error
    (another simulator version made the data). Stored as int8 (``FLOW_UNIT``): half a gigabyte
    for 2,048 sequences of 30 frames."""

    def __init__(self, dataset: BairDataset, workers: int = 1) -> None:
        found = scenes(dataset)
        root = dataset.packed.sequences[0].parent.parent.parent if len(dataset) else "the data"
        if found is None:
            raise DataError(f"--flow-truth-weight needs data made by this project's simulator, which knows where "
                            f"every pixel moved; {root} is not (real video has no such truth)")
        packed = dataset.packed
        shape = (packed.n_sequences, packed.n_frames, IMAGE_SIZE, IMAGE_SIZE, 3)
        jobs = [(scene, cond[:, ACTIONS].astype(np.float64), str(packed.frames_path), shape, i)
                for i, (scene, cond) in enumerate(zip(found, packed.cond))]
        self.flows = np.empty((len(found), packed.n_frames - 1, IMAGE_SIZE, IMAGE_SIZE, 2), np.int8)
        with pool(workers) as workers_pool:
            for i, (share, flow) in enumerate(workers_pool.imap(_flows, jobs, chunksize=8)):
                if share > RERUN_MISMATCH:
                    raise DataError(f"{packed.sequences[i]}: re-simulated under its recorded actions, {share:.1%} of its "
                                    "pixels differ from the frames on disk (another simulator version made them?), "
                                    "so the simulator's flows would not be theirs; regenerate the data set")
                self.flows[i] = flow

    def window(self, index: int, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames start+1 .. start+length-1 of sequence ``index``: displacements float [length-1, 2,
        64, 64] in pixels (0 where unknown) and where they are known, bool [length-1, 64, 64]."""
        return _dequantize(self.flows[index, start : start + length - 1])


class WithFlows(Dataset):
    """A training data set's windows with their true flows: (frames, condition, flow, known).
    ``moved_only``: a flow is known only where it is not 0 (the pixels of a pushed object)."""

    def __init__(self, dataset: BairDataset, flows: TrainingFlows, moved_only: bool = False) -> None:
        self.dataset, self.flows, self.moved_only = dataset, flows, moved_only

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, start = key if isinstance(key, tuple) else (key, 0)
        flow, known = self.flows.window(index, start, self.dataset.seq_len)
        if self.moved_only:
            known = known & flow.ne(0).any(1)
        return (*self.dataset[key], flow, known)
