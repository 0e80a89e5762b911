"""What every benchmark records beside its numbers: when, where, and how it was run."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

# BENCH_RESULTS elsewhere keeps a test's run of a benchmark out of the committed record
RESULTS = Path(os.environ.get("BENCH_RESULTS", Path(__file__).resolve().parent / "results.jsonl"))
ROOT = Path(__file__).resolve().parent.parent


def checkpoints_parser(doc: str, limit: int) -> argparse.ArgumentParser:
    """The arguments of every script here that compares checkpoints on the first test sequences
    of a data set; each adds its own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", required=True, help="checkpoint folders")
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=limit, help="first test sequences")
    return p


def predict_inputs(n_past: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The timing benches' fixed Predict input: one random context [1, n_past, 3, 64, 64] and the
    conditions for 10 future frames [1, n_past + 10, 7], drawn on the CPU at seed 0 so that every
    device and every run gets the same."""
    g = torch.Generator().manual_seed(0)
    context = torch.rand(1, n_past, 3, 64, 64, generator=g)
    return context.to(device), torch.randn(1, n_past + 10, 7, generator=g).to(device)


def test_sequences(data: str, length: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` test sequences of ``data``, ``length`` frames each: frames
    [N, length, 3, 64, 64] and conditions [N, length, 7]."""
    from cvae.data.dataset import BairDataset

    ds = BairDataset(data, "test", length)
    x, c = zip(*(ds[i] for i in range(min(limit, len(ds)))))
    return torch.stack(x), torch.stack(c)


def uncertain_test_set(data: str, limit: int, seq_len: int = 12, split: str = "test"):
    """The test split of ``data`` (or ``split``) and the simulator's scene behind each of its first
    ``limit`` sequences; exits naming ``data`` unless that is the simulator's data with hidden
    causes, the only kind whose scenes have more than one true future."""
    from cvae.data.dataset import BairDataset
    from cvae.physics_eval import scenes

    ds = BairDataset(data, split, seq_len)
    found = scenes(ds, limit)
    if found is None or found[0].uncertainty == 0:
        raise SystemExit(f"{data} is not simulated data with hidden causes: its scenes have one future each")
    return ds, found


def true_futures_of(scene, cond: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` futures of ``scene`` re-simulated under the actions of ``cond`` [T, 7] with its hidden
    causes re-drawn, as the model sees frames: float [k, T, 3, 64, 64] in [0, 1]."""
    import numpy as np

    from cvae.condition import ACTIONS
    from cvae.data.counterfactual import true_futures
    from cvae.physics_eval import _to_tensor

    return _to_tensor(true_futures(scene, cond[:, ACTIONS].numpy().astype(np.float64), k), "cpu")


def true_futures_of_each(found, cond: torch.Tensor, k: int) -> torch.Tensor:
    """``true_futures_of`` for each scene of ``found`` under its row of ``cond`` [N, T, 7]:
    float [N, k, T, 3, 64, 64]."""
    return torch.stack([true_futures_of(scene, cond[i], k) for i, scene in enumerate(found)])


def arm_bases_of(found):
    """The arm's base of each simulated scene of ``found``, [N, 2] (x, y in simulator
    coordinates, a pixel's centre at index + 0.5): fixed per scene, so one frame tells it."""
    import numpy as np

    from cvae.data.simulator import simulate

    return np.stack([simulate(s.seed, s.index, s.split_id, n_frames=1).arm_base for s in found])


def load_with_deadzone(ckpt: str, deadzone: float | None):
    """The model at ``ckpt`` on the CPU, its flow head's ``flow_deadzone`` replaced by ``deadzone``
    unless None: what a dead zone does to trained weights, without exporting a copy."""
    from cvae import checkpoint
    from cvae.model.heads import FlowHead

    model, _ = checkpoint.load_model(ckpt, "cpu")
    if deadzone is not None:
        if not isinstance(model.decoder.head, FlowHead):
            raise SystemExit(f"{ckpt}: --flow-deadzone needs a flow head")
        model.decoder.head.deadzone = deadzone
    return model


def predict_capturing(model, x: torch.Tensor, c: torch.Tensor, n_future: int, seed: int = 0,
                      extra: Callable | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One sample (z seed ``seed``) from frames ``x`` and conditions ``c``: the predicted frames
    [N, n_future, 3, H, W] and, for a flow head, what it mixed each of them by
    (``FlowHead.mixing``, the latent's noise let in): the previous frame's displacement [N,
    n_future, 2, H, W] and the mask [N, n_future, sources, H, W] (None for other heads). ``extra``
    (head, the call's args and kwargs, that mask and displacement [N, ..., H, W] -> [N, E, H, W])
    reads more of each call in the same pass: its rows [N, n_future, E, H, W] come last (else
    None). With ``arm_calm`` the decoder also draws each scene's noiseless future first; its rows
    are left out."""
    head, seen = model.decoder.head, []

    def grab(module, args, kwargs) -> None:
        mask, moved_prev, _ = head.mixing(args[0].float(), *(kwargs.get(name) for name in
                                                             ("rigid", "gain", "shift", "carry_logit")))
        more = [extra(head, args, kwargs, mask, moved_prev)] if extra is not None else []
        seen.append(torch.cat([moved_prev, mask, *more], 1))
    hook = head.register_forward_pre_hook(grab, with_kwargs=True) if hasattr(head, "mixing") else None
    try:
        with torch.no_grad():
            pred = model.predict(x[:, : model.n_past], c, n_future, seed=seed)[:, 0]
    finally:
        if hook is not None:
            hook.remove()
    if hook is None:
        return pred, None, None, None
    mixed = noisy_rows(seen, len(x), n_future)
    s = 2 + len(head.sources)
    return pred, mixed[:, :, :2], mixed[:, :, 2:s], mixed[:, :, s:] if extra is not None else None


def noisy_rows(seen: list[torch.Tensor], n: int, n_future: int) -> torch.Tensor:
    """What a hook saw at each step of one ``predict`` of ``n`` scenes, one sample: the last
    ``n_future`` steps, stacked [n, n_future, ...], each scene's sampled row. With ``arm_calm``
    each scene's noiseless row comes first, beside it (``SVG.predict``), and is left out."""
    v = torch.stack(seen[-n_future:], 1)
    return v.view(n, -1, *v.shape[1:])[:, -1]


def mean_future(model, x: torch.Tensor, c: torch.Tensor, f: int) -> torch.Tensor:
    """The model's noiseless future [B, 1, F, 3, H, W] (``cvae.spread_fit.noiseless``)."""
    from cvae.spread_fit import noiseless

    return noiseless(model, x[:, : model.n_past], c, f)[:, None]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def record(name: str, device: torch.device, **numbers: object) -> dict:
    """Append one result to bench/results.jsonl and return it."""
    row = {"bench": name, "date": datetime.date.today().isoformat(), "machine": machine(device),
           "command": "python " + " ".join(sys.argv), **numbers}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


@contextlib.contextmanager
def patched(owner: object, name: str, value: object) -> Iterator[None]:
    """Inside, ``owner.name`` is ``value`` (a probe's change to a model's code at prediction);
    restored on the way out, so nothing else in the process sees it."""
    plain = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, plain)


def eval_copy_parser(doc: str, ckpt_help: str) -> argparse.ArgumentParser:
    """The arguments every probe that patches a model and scores a copy (``eval_copy``) takes;
    the probe adds its own knob."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help=ckpt_help)
    p.add_argument("--out", required=True, help="where the copy and its eval go")
    p.add_argument("--data", default="data/sim")
    p.add_argument("--limit", type=int, default=64, help="first sequences of the split (0: all)")
    p.add_argument("--split", default="test", help="the split scored")
    return p


def eval_copy(ckpt: str, out: str, data: str, limit: int, settings: dict | None = None, split: str = "test") -> dict:
    """Copy a checkpoint folder to ``out`` (without its eval; an export with ``settings``, the
    model fields that change no weight, where given), run ``eval`` on the copy as the README's
    tables do (10 samples, 10 truths, the first ``limit`` sequences of ``split``) inside whatever patch
    the caller holds, and return the figures of its eval.json that the probes report."""
    from cvae import checkpoint
    from cvae.cli import main as cvae_main

    if settings:
        checkpoint.export(ckpt, out, force=True, settings=settings)
    else:
        shutil.copytree(ckpt, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("eval"))
    code = cvae_main(["eval", "--ckpt", out, "--data", data, "--split", split, "--limit", str(limit),
                      "--samples", "10", "--truths", "10", "--workers", "1"])
    if code:
        raise SystemExit(code)
    d = json.loads((Path(out) / "eval" / "eval.json").read_text())
    dist = d["distribution"]
    return {"psnr": round(d["psnr"], 2), "best_of_10": round(d["best_of_n_psnr"] - d["psnr"], 2),
            "coverage": round(dist["coverage_psnr"] - dist["one_sample_psnr"], 2),
            "spread_ratio": round(dist["spread_ratio"], 2), "agreement": round(dist["agreement"], 2),
            "misplaced": round(dist["misplaced_share"], 3),
            "sharpness": [round(min(d["sharpness_per_step"]), 2), round(max(d["sharpness_per_step"]), 2)],
            "moving_edges": [round(min(d["moving_edges_per_step"]), 2), round(max(d["moving_edges_per_step"]), 2)]}
