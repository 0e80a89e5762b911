"""Checkpoints without pickle: weights as safetensors, config and metadata as JSON, and the
optimizer/RNG state as a tensor-only file that loads with ``weights_only=True``.

A checkpoint is a folder. It is written whole under a temporary name, then swapped in with
``os.replace``, so an interrupted save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import write_text
from .model import SVG

WEIGHTS, META, STATE, LOG = "model.safetensors", "meta.json", "state.pt", "log.jsonl"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and why."""


def save(path: str | Path, model: torch.nn.Module, config: dict, meta: dict, state: dict | None = None) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, tmp / WEIGHTS)
    write_text(tmp / META, json.dumps({"config": config, **meta}, indent=1))
    if state is not None:
        torch.save(state, tmp / STATE)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file():
        if path.suffix in (".pt", ".pth", ".pkl", ".ckpt", ".tar"):
            raise CheckpointError(f"{path}: pickled checkpoints are refused; a checkpoint here is a folder "
                                  f"holding {WEIGHTS} and {META}")
        path = path.parent
    if not (path / WEIGHTS).is_file():
        old = path.with_name(f".{path.name}.old")  # a save was interrupted mid-swap
        if (old / WEIGHTS).is_file():
            return old
        raise CheckpointError(f"{path}: no {WEIGHTS} found; is this a checkpoint folder?")
    return path


def read_meta(path: str | Path) -> dict:
    path = _resolve(path)
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path / META}: file is missing") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / META}: not valid JSON ({e.msg})") from None
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path / META}: has no 'config' object")
    return meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[SVG, dict]:
    """The model in evaluation mode and its metadata (``meta['config']`` is the training config)."""
    path = _resolve(path)
    meta = read_meta(path)
    try:
        weights = load_file(path / WEIGHTS, device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / WEIGHTS}: not a readable safetensors file ({e})") from None
    try:
        model = SVG.from_config(meta["config"])
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the config in {META} ({e})") from None
    return model.to(device).eval(), meta


def load_state(path: str | Path) -> dict:
    """Optimizer, schedule and RNG state; pickled objects are refused (``weights_only=True``)."""
    file = _resolve(path) / STATE
    if not file.is_file():
        raise CheckpointError(f"{file}: no training state to resume from (inference-only checkpoint)")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types for bad or unsafe files
        raise CheckpointError(f"{file}: refused or unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def find_log(path: str | Path) -> Path | None:
    """A checkpoint's training log: inside it (an exported model) or beside it (a run's last/best)."""
    path = Path(path)
    return next((p for p in (path / LOG, path.parent / LOG) if p.is_file()), None)


def export(src: str | Path, dst: str | Path) -> Path:
    """An inference-only copy: weights, metadata, the run's log and evaluation; no optimizer state."""
    src, dst = _resolve(src), Path(dst)
    model, meta = load_model(src)
    config = meta.pop("config")
    save(dst, model, config, meta)
    if (src / "eval").is_dir():
        shutil.copytree(src / "eval", dst / "eval", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.html"))
    log = find_log(src)
    if log is not None:
        shutil.copy2(log, dst / LOG)
    return dst
