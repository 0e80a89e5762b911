"""Checkpoints without pickle: weights as safetensors, config and metadata as JSON, and the
optimizer/RNG state as a tensor-only file that loads with ``weights_only=True``.

A checkpoint is a folder. It is written whole under a temporary name, then swapped in with
``os.replace``, so an interrupted save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import fsync, fsync_tree
from .errors import CheckpointError, ConfigError
from .model import SVG
from .model.svg import SAMPLING, ModelConfig

WEIGHTS, META, STATE, LOG = "model.safetensors", "meta.json", "state.pt", "log.jsonl"


@contextlib.contextmanager
def staged(path: Path, doing: str) -> Iterator[Path]:
    """A temporary folder beside ``path`` for the caller to fill; then it is fsynced and swapped in
    whole. A failed write (a full disk) removes it and raises CheckpointError saying ``doing`` failed;
    the previous ``path`` is untouched."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        fsync_tree(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, (OSError, SafetensorError, RuntimeError)):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        kept = f"the previous {path} is intact" if (path / WEIGHTS).is_file() else f"no earlier {path} exists"
        raise CheckpointError(f"could not {doing} ({reason}); {kept}") from None
    swap_in(tmp, path)


def _write(folder: Path, model: torch.nn.Module, config: dict, meta: dict, state: dict | None) -> None:
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, folder / WEIGHTS)
    (folder / META).write_text(json.dumps({"config": config, **meta}, indent=1))
    if state is not None:
        torch.save(state, folder / STATE)


def save(path: str | Path, model: torch.nn.Module, config: dict, meta: dict, state: dict | None = None) -> Path:
    """Write the checkpoint folder ``path`` whole, durably, then swap it in (:func:`staged`)."""
    path = Path(path)
    with staged(path, f"save {path}") as tmp:
        _write(tmp, model, config, meta, state)
    return path


def swap_in(tmp: Path, path: Path) -> None:
    """Replace the folder ``path`` by the complete folder ``tmp``. A kill between the two renames
    leaves ``.<name>.old`` alone, which :func:`recover` (and loading) take as the checkpoint."""
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def copy(src: Path, dst: Path) -> None:
    """Copy the checkpoint folder ``src`` to ``dst`` as atomically and durably as :func:`save`."""
    with staged(dst, f"copy {src} to {dst}") as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def recover(folder: Path, name: str) -> None:
    """Finish what a killed save of ``folder/name`` left: drop a half-written ``.name.tmp`` and put
    ``.name.old`` back when the kill fell between the two renames."""
    path, tmp, old = folder / name, folder / f".{name}.tmp", folder / f".{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    if not (path / WEIGHTS).is_file() and (old / WEIGHTS).is_file():
        shutil.rmtree(path, ignore_errors=True)
        os.replace(old, path)
        fsync(folder)
    shutil.rmtree(old, ignore_errors=True)


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
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"the global {found.group(1)}" if found else "objects that are not tensors"
        raise CheckpointError(f"{file}: refused because it holds code ({what}), which loading would run; "
                              "a training state holds only tensors and numbers") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{file}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def find_log(path: str | Path) -> Path | None:
    """A checkpoint's training log: inside it (an exported model) or beside it (a run's last/best)."""
    path = Path(path)
    return next((p for p in (path / LOG, path.parent / LOG) if p.is_file()), None)


EXPORT_ENTRIES = {WEIGHTS, META, LOG, "eval"}


def export(src: str | Path, dst: str | Path, force: bool = False, settings: dict | None = None,
           model: SVG | None = None, note: dict | None = None) -> Path:
    """An inference-only copy: weights, metadata, the run's log and evaluation; no optimizer state.

    ``dst`` must be new, empty or an earlier export (which it replaces); anything else, say a run
    or a data set, is refused unless ``force``. The source itself is never a destination.
    ``settings`` sets model fields that change no weight, only how they are used (``svg.SAMPLING``:
    the flow head's dead zone, ``heads.dead_zone``; held noise, ``SVG._noise``; the noise's scale,
    ``SVG.predict``); the source's evaluation then no longer describes the copy and is left out.
    ``model``, the source's model with weights added (a spread head, ``cvae.spread_fit``), is
    written in its place with its config, and ``note`` beside it in the metadata; the evaluation
    is left out then too.
    """
    src, dst = _resolve(src), Path(dst)
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise CheckpointError(f"export --out {dst} overlaps the checkpoint {src}; choose a folder outside it")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        names = {p.name for p in dst.iterdir()}
        if not (WEIGHTS in names and names <= EXPORT_ENTRIES):
            extra = ", ".join(sorted(names - EXPORT_ENTRIES)[:3]) or "no model.safetensors"
            raise CheckpointError(f"export --out {dst} is a folder with other contents ({extra}), not an earlier "
                                  "export; choose a new folder, or pass --force to replace it")
    elif dst.exists() and not dst.is_dir():
        raise CheckpointError(f"export --out {dst} is a file; choose a folder")
    loaded, meta = load_model(src)
    config = meta.pop("config")
    if model is not None:
        config = {**config, **dataclasses.asdict(model.cfg)}
        meta = {**meta, **(note or {})}
    model = loaded if model is None else model
    if settings:
        unknown = sorted(set(settings) - set(SAMPLING))
        if unknown:
            raise ConfigError(f"export can set {', '.join(SAMPLING)}, not {', '.join(unknown)}: the others shape the weights")
        config = {**config, **settings}
        try:
            ModelConfig.from_dict(config)
        except ConfigError as err:
            raise ConfigError(f"export: {err} ({src})") from None
    with staged(dst, f"export to {dst}") as tmp:
        _write(tmp, model, config, meta, None)
        if (src / "eval").is_dir() and not settings and model is loaded:
            shutil.copytree(src / "eval", tmp / "eval", ignore=shutil.ignore_patterns("*.html"))
        log = find_log(src)
        if log is not None:
            shutil.copy2(log, tmp / LOG)
    return dst
