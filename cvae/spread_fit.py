"""Fitting a trained model's spread head (``model/spread.py``) and writing the model with it.

The head's targets are the per-pixel std of ``k`` true futures of each training scene, re-run by
the simulator under its recorded actions with the hidden causes re-drawn, so it needs data made
by ``cvae.data generate`` with hidden causes. Its inputs are what the model draws for the same
scene: its noiseless future and ``spread_reference`` futures from the prior. The model's own
weights are not touched; the result is a new inference checkpoint (``checkpoint.export``).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .condition import ACTIONS
from .data.dataset import BairDataset
from .errors import ConfigError, DataError
from .evaluate import batches, progress_bar
from .metrics import pixel_std
from .model import SVG
from .model.spread import SCALE, SpreadHead, inputs
from .parallel import pool
from .physics_eval import _to_tensor, rerunnable_scenes, true_futures_job

N_FUTURE = 10
BATCH = 32  # frames per fitting step


def noiseless(model: SVG, context: torch.Tensor, cond: torch.Tensor, n_future: int) -> torch.Tensor:
    """The model's future with no noise (z_scale 0): [B, F, 3, H, W]."""
    sampling = model.cfg
    model.cfg = dataclasses.replace(sampling, z_scale=0.0)
    try:
        return model.predict(context, cond, n_future, 1)[:, 0]
    finally:
        model.cfg = sampling


def examples(model: SVG, dataset: BairDataset, n_scenes: int, k: int = 10, seed: int = 0, workers: int = 1,
             progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's inputs [N F, FEATURES, H, W] and targets (the truths' std map x ``SCALE``)
    [N F, 1, H, W] on the first ``n_scenes`` scenes of ``dataset``, half precision (1.7 GB for
    1024 scenes)."""
    n_past, ref = model.n_past, model.cfg.spread_reference
    found = rerunnable_scenes(dataset, n_scenes, "fit-spread")
    xs, ys = [], []
    with pool(workers) as workers_pool:
        for idx in progress_bar(batches(len(found), 16), progress, "true futures"):
            x, c = (torch.stack(t) for t in zip(*(dataset[i] for i in idx)))
            jobs = [(found[i], c[j, :, ACTIONS].numpy().astype(np.float64), k) for j, i in enumerate(idx)]
            truths = _to_tensor(np.stack(workers_pool.map(true_futures_job, jobs)), "cpu")[:, :, n_past:]
            samples = model.predict(x[:, :n_past], c, N_FUTURE, ref, seed + idx.start)
            mean = noiseless(model, x[:, :n_past], c, N_FUTURE)
            xs.append(inputs(mean, samples, pixel_std(samples, 1), x[:, 0], x[:, n_past - 1]).half())
            ys.append((SCALE * pixel_std(truths, 1)).flatten(0, 1)[:, None].half())
    return torch.cat(xs), torch.cat(ys)


def cached_examples(cache: Path, key: dict, make: Callable[[], tuple[torch.Tensor, torch.Tensor]]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``make()``'s examples, read from ``cache`` when it holds those of ``key`` (checkpoint, data,
    scenes, seed), else made and written there (atomically), so a head can be refitted (another
    quantile, more steps) without re-running the scenes. A cache of other examples is refused."""
    if cache.is_file():
        try:
            held = torch.load(cache, weights_only=True)
            found, xs, ys = held["key"], held["inputs"], held["targets"]
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, KeyError, TypeError) as e:
            raise DataError(f"{cache}: not a spread-head examples cache ({type(e).__name__}: {e})") from None
        if found != key:
            differ = ", ".join(f"{k} {found.get(k)!r} there, {v!r} here" for k, v in key.items() if found.get(k) != v)
            raise ConfigError(f"--cache {cache} holds the examples of other settings ({differ}); "
                              "choose another file or delete it")
        return xs, ys
    xs, ys = make()
    tmp = cache.with_name(f".{cache.name}.tmp")
    torch.save({"key": key, "inputs": xs, "targets": ys}, tmp)
    os.replace(tmp, cache)
    return xs, ys


def pinball(err: torch.Tensor, quantile: float) -> torch.Tensor:
    """The mean squared error when ``quantile`` is 0, else the pinball loss, least at that quantile
    of the target given the inputs: a head for the upper tail of the spread."""
    if quantile == 0:
        return err.pow(2).mean()
    return torch.maximum(quantile * err, (quantile - 1) * err).mean()


def fit(head: SpreadHead, xs: torch.Tensor, ys: torch.Tensor, steps: int, quantile: float = 0.0,
        seed: int = 0) -> float:
    """Adam at 2e-3 on a cosine schedule, ``BATCH`` random frames a step; returns the last loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    head.train()
    loss = torch.zeros(())
    for _ in range(steps):
        j = torch.randint(0, len(xs), (BATCH,), generator=gen)
        loss = pinball(ys[j].float() - head(xs[j].float()), quantile)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return loss.item()


def fit_spread(ckpt: str | Path, data: str | Path, out: str | Path, n_scenes: int = 1024, steps: int = 2500,
               width: int = 40, quantile: float = 0.0, gain: float = 2.0, base: float = 0.7, seed: int = 0,
               workers: int = 1, force: bool = False, cache: str | Path = "", progress: bool = False) -> Path:
    """Fit a spread head ``width`` wide to ``ckpt``'s futures on the first ``n_scenes`` training
    scenes of ``data`` and write the model with it to ``out`` (an inference checkpoint, whose
    metadata records how the head was fitted); ``cache``: see :func:`cached_examples`."""
    if not 0 <= quantile < 1:
        raise ConfigError(f"quantile must be 0 (the mean) or a share in (0, 1), not {quantile}")
    model, _ = checkpoint.load_model(ckpt)
    if model.spread is not None:
        raise ConfigError(f"{ckpt} has a spread head already; fit one to the checkpoint it was fitted to")
    config = dataclasses.replace(model.cfg, spread_head=width, spread_gain=gain, spread_base=base).validate()
    dataset = BairDataset(data, "train", model.n_past + N_FUTURE)
    started = time.time()

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        return examples(model, dataset, n_scenes, seed=seed, workers=workers, progress=progress)

    key = {"ckpt": str(Path(ckpt).resolve()), "data": str(Path(data).resolve()), "scenes": n_scenes, "seed": seed,
           "reference": model.cfg.spread_reference}
    xs, ys = cached_examples(Path(cache), key, make) if cache else make()
    torch.manual_seed(seed)
    head = SpreadHead(width)
    loss = fit(head, xs, ys, steps, quantile, seed)
    fitted = SVG(config)
    fitted.load_state_dict({**model.state_dict(), **{f"spread.{k}": v for k, v in head.state_dict().items()}})
    note = {"spread_fit": {"data": str(data), "scenes": min(n_scenes, len(dataset)), "steps": steps,
                           "width": width, "quantile": quantile, "seed": seed, "last_loss": round(loss, 5),
                           "seconds": round(time.time() - started), "from": str(ckpt)}}
    return checkpoint.export(ckpt, out, force=force, model=fitted.eval(), note=note)
