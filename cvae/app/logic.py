"""What the app does, without the UI: catalogues of sequences and models, the condition table,
its transforms and validation, and one prediction turned into the views the page shows."""
from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import find_log, load_model, read_meta
from ..condition import ACTIONS, COLUMNS, COND_DIM, POSITIONS
from ..data.bair import list_sequences, read_sequence
from ..data.counterfactual import resimulate, scene_of, true_futures
from ..data.info import read_kinematics
from ..errors import CheckpointError, DataError, InputError
from ..kinematics import GAIN, KINEMATICS, integrate_positions
from ..metrics import pixel_std, psnr, ssim
from ..model.svg import ModelConfig
from ..physics_eval import spread_scores

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
BUNDLED_DATA = ASSETS / "data"
BUNDLED_MODEL = ASSETS / "model"
HEADERS = ["step", "drives frame", *COLUMNS]
# Allowed range of each table column: wide enough for any edit a person means (BAIR moves about
# +-0.07 per step; x 0.46-0.74, y -0.25-0.11, z 0.20-0.22), narrow enough to catch a slip.
# lift and grip are BAIR's small whole numbers.
RANGES = {"dx": (-0.5, 0.5), "dy": (-0.5, 0.5), "lift": (0, 3), "grip": (0, 3),
          "x": (0.0, 1.5), "y": (-1.0, 1.0), "z": (0.0, 1.0)}
WHOLE = ("lift", "grip")
CERTAIN_GREY_LEVELS = 0.5  # a world whose futures spread less than this (std, moving region) is certain
DECIMALS = 5  # the table shows values rounded to this many decimals
# Transform inputs: (lowest, highest) accepted
TRANSFORM_RANGES = {"scale": (-5.0, 5.0), "rotate": (-360.0, 360.0), "noise": (0.0, 0.2)}


@dataclass(frozen=True)
class Source:
    label: str
    root: Path
    split: str
    sequences: tuple[Path, ...]
    kinematics: dict | None


def find_sources(data_dirs: list[str | Path]) -> dict[str, Source]:
    """The bundled test sequences, plus every split of each ``--data`` folder."""
    sources: dict[str, Source] = {}
    candidates = [(BUNDLED_DATA, "test", "bundled test sequences")]
    for d in map(Path, data_dirs):
        splits = [s for s in ("test", "validate", "train") if (d / s).is_dir()]
        if not splits:
            raise DataError(f"--data {d}: no train/, validate/ or test/ folder in the processed BAIR layout")
        candidates += [(d, s, f"{d.name} / {s}") for s in splits]
    for root, split, label in candidates:
        seqs = tuple(list_sequences(root, split))
        kin = read_kinematics(root)
        sources[label] = Source(label, Path(root), split, seqs, kin if kin == KINEMATICS else None)
    return sources


@lru_cache(maxsize=64)
def load_sequence(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, 64, 64, 3] and condition [T, 7]; decoded once per server."""
    return read_sequence(path)


@dataclass(frozen=True)
class ModelEntry:
    label: str
    path: Path
    config: dict
    test_psnr: float | None
    log: Path | None
    quality: str  # how good the model is, in words the page shows


def quality(path: Path, scores: dict | None) -> str:
    """The model's test scores against the baselines, from its ``eval/eval.json``."""
    if scores is None:
        return (f"**Not evaluated**: how good this model is is unknown. Score it with "
                f"`python train_cli.py eval --ckpt {path}`.")
    extra = scores.get("extra") or {}
    on = f"of {extra['data']} / {extra.get('split', 'test')}" if extra.get("data") else "(data not recorded)"
    text = f"Test PSNR **{scores['psnr']:.2f} dB** ({scores['n_sequences']} sequences {on}, lab protocol)"
    if scores.get("copy_last_psnr") is not None:
        gain = scores["psnr"] - scores["copy_last_psnr"]
        text += (f" against **{scores['copy_last_psnr']:.2f} dB** for copying the last frame ({gain:+.2f} dB)"
                 f" and {scores['shuffled_cond_psnr']:.2f} dB when fed another sequence's actions")
    cf = (scores.get("counterfactual") or {}).get("all")
    if cf:
        text += (f"; under actions the data never took, against the re-simulated physics: "
                 f"**{cf['psnr']:.2f} dB** vs copy-last {cf['copy_last_psnr']:.2f} dB")
    text += "."
    sharp, dist = scores.get("sharpness_per_step"), scores.get("distribution")
    if sharp:
        text += (f" Sharpness (its frames' summed edges over the truth's) is {sharp[0]:.2f} at the first step and "
                 f"{sharp[-1]:.2f} at the last.")
    if edges := scores.get("moving_edges_per_step"):
        text += (f" Where things move it keeps {edges[0]:.2f} of the truth's squared edges at the first step and "
                 f"{edges[-1]:.2f} at the last (1 is as crisp; less is haze).")
    if dist:
        text += (f" Its futures spread **{dist['spread_ratio']:.2f}x** as much as the world's where things move "
                 f"(1 is right); against {dist['k']} re-simulated futures the closest of its {dist['n_samples']} "
                 f"scores {dist['coverage_psnr'] - dist['one_sample_psnr']:+.2f} dB over a single one.")
    return text


def describe(path: Path, name: str) -> ModelEntry:
    """The picker's entry for a checkpoint; CheckpointError (naming the file) when its metadata or
    its ``eval/eval.json`` cannot be read, so the caller can skip it and say why."""
    meta = read_meta(path)
    cfg = meta["config"]
    try:
        ModelConfig.from_dict(cfg)
        if not isinstance(cfg.get("n_future"), int):
            raise ValueError("the config lacks n_future, the number of frames the model predicts")
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path / 'meta.json'}: {e}") from None
    eval_json = path / "eval" / "eval.json"
    try:
        scores = json.loads(eval_json.read_text()) if eval_json.is_file() else None
        if scores is not None and not (isinstance(scores, dict) and isinstance(scores.get("psnr"), (int, float))):
            raise ValueError("it holds no psnr score")
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{eval_json}: unreadable ({e})") from None
    score = None if scores is None else scores.get("psnr")
    log = find_log(path)
    shown = f"test PSNR {score:.2f} dB" if score is not None else "not evaluated"
    head = cfg.get("output", "image")
    label = f"{name} · {head} head, {cfg['prior']} prior, epoch {meta.get('epoch', '?')} · {shown}"
    shape = (f"*{name}*: {head} head, {cfg['prior']} prior, width {cfg['width']}, g{cfg['g_dim']} z{cfg['z_dim']}"
             f"{' + ' + str(cfg['z_map']) + ' x 8 x 8' if cfg.get('z_map') else ''} rnn{cfg.get('rnn_size', '?')}. ")
    return ModelEntry(label, path, cfg, score, log, shape + sampling(cfg) + quality(path, scores))


def sampling(cfg: dict) -> str:
    """The settings that shape what Resample z shows without changing a weight (``svg.SAMPLING``),
    in words, where they differ from the lab's sampler; empty where none do."""
    said = []
    if cfg.get("z_hold"):
        said.append("one noise draw held over each future")
    if cfg.get("map_noise_only"):
        said.append("noise on the spatial latent alone")
    if cfg.get("map_noise_block", 1) > 1:
        said.append(f"one noise draw per {cfg['map_noise_block']} x {cfg['map_noise_block']} cells of the spatial latent")
    if cfg.get("z_scale", 1.0) != 1.0:
        said.append(f"the noise x {cfg['z_scale']:g}")
    if cfg.get("arm_calm"):
        said.append("where the arm is or has been, every future as the noiseless one")
    if cfg.get("flow_deadzone"):
        said.append(f"flow displacements of {cfg['flow_deadzone']:g} px or less set to 0")
    if cfg.get("flow_resample", "bilinear") != "bilinear":
        said.append(f"moved frames sampled {cfg['flow_resample']} between pixels")
    if cfg.get("carry_pool"):
        said.append(f"carried motion evened over each moving piece and {cfg['carry_pool']} px round it")
    if cfg.get("glide_noise_only"):
        said.append("the noise chooses only what glides on and what stops")
    if cfg.get("carry_off_arm"):
        said.append("nothing glides on where the arm is")
    if cfg.get("mask_temperature", 1.0) != 1.0:
        said.append(f"the flow head's mask logits x {cfg['mask_temperature']:g}, each pixel nearer one source")
    if cfg.get("spread_head") and cfg.get("spread_select"):
        said.append(f"the futures shown are chosen from {cfg['spread_select']} draws so that they differ where a "
                    "spread head says the world branches")
    if cfg.get("spread_head") and (cfg["spread_gain"], cfg["spread_base"]) != (0, 1):
        said.append(f"a spread head widens each future where it says the world branches (the futures' std map "
                    f"max({cfg['spread_base']:g} x the model's, {cfg['spread_gain']:g} x the head's), the model's "
                    f"taken over {cfg['spread_reference']} futures)")
    return f"Sampling: {', '.join(said)}. " if said else ""


def find_models(runs_dirs: list[str | Path]) -> dict[str, ModelEntry]:
    """The bundled checkpoint, plus every checkpoint folder under each ``--runs`` folder."""
    entries = [describe(BUNDLED_MODEL, "bundled")] if (BUNDLED_MODEL / "model.safetensors").is_file() else []
    for runs in runs_dirs:
        for weights in sorted(Path(runs).rglob("model.safetensors")):
            folder = weights.parent
            if any(part.startswith(".") for part in folder.relative_to(runs).parts):
                continue  # a save in progress
            try:
                entries.append(describe(folder, str(folder.relative_to(Path(runs).parent))))
            except CheckpointError as e:
                print(f"skipping {folder}: {e}")
    if not entries:
        raise CheckpointError("no model found: the bundled assets/model is missing and --runs found none")
    return {e.label: e for e in entries}


@lru_cache(maxsize=8)
def cached_model(path: Path):
    """The model at ``path``, loaded once per server, in the CPU's faster NHWC layout."""
    model, _ = load_model(path, "cpu")
    return model.set_channels_last()


# ---- the condition table -------------------------------------------------------------------

def table_rows(cond: np.ndarray, n_past: int, n_future: int) -> list[list]:
    """Rows for the conditions that drive the predicted frames: step t drives frame t + 1."""
    rows = []
    for t in range(n_past - 1, n_past + n_future - 1):
        rows.append([t, t + 1] + [round(float(v), DECIMALS) for v in cond[t]])
    return rows


# ---- reading what a person typed or a script sent -------------------------------------------------

PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
HINTS = {"dx": "BAIR moves about +-0.07 per step", "dy": "BAIR moves about +-0.07 per step",
         "lift": "a level: 0 on the table, 1 or more lifted over objects", "grip": "0 open, 1 closed",
         "x": "BAIR's end effector spans about 0.46 to 0.74", "y": "BAIR's end effector spans about -0.25 to 0.11",
         "z": "BAIR's end effector stays about 0.20 to 0.22"}


def shown(v: float) -> str:
    """A number as its shortest exact form (0.5000001 stays 0.5000001, 1e30 is 1e+30)."""
    return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def read_number(value: object, what: str) -> float:
    """A number exactly as it was shown or sent: an int or float, or a string in plain decimal
    notation (ASCII digits, sign, point, exponent). A blank, '0_1' (Python's digit grouping),
    '٣' (another script's digit), 'nan' or a list is refused, naming ``what``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{what} is empty")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{what}: expected a number, not {type(value).__name__} {str(value)[:40]!r}")
    if isinstance(value, str):
        text = value.strip()
        if not PLAIN_NUMBER.fullmatch(text):
            raise InputError(f"{what}: {text[:40]!r} is not a plain decimal number")
        value = float(text)
    if not math.isfinite(value):
        raise InputError(f"{what}: {value} is not a finite number")
    return float(value)


def read_whole(value: object, what: str, lo: int, hi: int) -> int:
    """A whole number from ``lo`` to ``hi``; 2.5 is refused, not rounded, and so is 17 for 1-16."""
    v = read_number(value, what)
    if not v.is_integer():
        raise InputError(f"{what} must be a whole number from {lo} to {hi}, not {shown(v)}")
    if not lo <= v <= hi:
        raise InputError(f"{what} must be from {lo} to {hi}, not {shown(v)}")
    return int(v)


def table_data(payload: object) -> list:
    """The rows of the action table as the page or a script sends it: Gradio's ``{"headers",
    "data"}`` (the headers must be the table's own) or a plain list of rows."""
    if payload is None:
        raise InputError("the action table is empty; press 'reset' to restore the sequence's actions")
    if isinstance(payload, dict):
        headers = payload.get("headers")
        if headers is None:
            raise InputError(f"the action table came without its headers; send {{'headers': {HEADERS}, 'data': rows}}")
        if [str(h) for h in headers] != HEADERS:
            raise InputError(f"the action table's headers are {list(headers)[:10]}, expected {HEADERS}")
        payload = payload.get("data")
    if not isinstance(payload, list) or not all(isinstance(row, list) for row in payload):
        raise InputError(f"the action table must be a list of rows (one list of {len(HEADERS)} cells each), "
                         f"not {type(payload).__name__} {str(payload)[:40]!r}")
    return payload


def parse_table(rows: object, n_past: int, n_future: int) -> np.ndarray:
    """The table's condition columns as float [n_future, COND_DIM], or an InputError naming the cell."""
    rows = table_data(rows)
    if len(rows) == 0:
        raise InputError("the action table is empty; press 'reset' to restore the sequence's actions")
    if len(rows) != n_future:
        raise InputError(f"the action table must have exactly {n_future} rows, one per predicted frame; "
                         f"it has {len(rows)}. Press 'reset' to restore it.")
    out = np.empty((n_future, COND_DIM), dtype=np.float32)
    for r, row in enumerate(rows):
        row = list(row)
        if len(row) != len(HEADERS):
            raise InputError(f"row {r + 1} has {len(row)} columns, expected {len(HEADERS)} ({', '.join(HEADERS)})")
        for c, name in enumerate(COLUMNS):
            where = f"row {r + 1}, column {name}"
            v = read_number(row[c + 2], where)
            lo, hi = RANGES[name]
            if not lo <= v <= hi:
                raise InputError(f"{where}: {shown(v)} is out of range (allowed {lo:g} to {hi:g}; {HINTS[name]})")
            if name in WHOLE and not v.is_integer():
                raise InputError(f"{where}: {shown(v)} is not a whole number ({HINTS[name]})")
            out[r, c] = v
    return out


def with_table(cond: np.ndarray, table: np.ndarray, n_past: int) -> np.ndarray:
    """The full condition [T, 7] with the table's rows in place of the predicted steps'.

    A cell that still shows its original (rounded) value keeps the exact original, so an unedited
    table reproduces the sequence's own condition bit for bit."""
    full = cond.copy()
    rows = slice(n_past - 1, n_past - 1 + len(table))
    shown = np.round(cond[rows].astype(np.float64), DECIMALS)
    full[rows] = np.where(np.abs(table - shown) < 1e-7, cond[rows], table)
    return full


def rederive_positions(cond: np.ndarray, n_past: int, kinematics: dict | None,
                       original: np.ndarray | None = None) -> np.ndarray:
    """Positions after the context recomputed from the actions, where the data set documents its
    kinematics (the simulator's); otherwise the positions are left as they are.

    Given the sequence's ``original`` condition, positions up to the first changed action are the
    recorded ones, bit for bit (recomputing them would differ in the last float32 digit, and a
    sensitive model would then predict differently for an unedited table)."""
    if kinematics is None:
        return cond
    out = cond.copy()
    start = n_past - 1
    if original is not None:
        changed = np.flatnonzero((cond[start:, ACTIONS] != original[start:, ACTIONS]).any(1))
        out[start:, POSITIONS] = original[start:, POSITIONS]
        if len(changed) == 0:
            return out
        start += int(changed[0])
    out[start:, POSITIONS] = integrate_positions(out[start, POSITIONS], cond[start:, ACTIONS])
    return out


def edited_conditions(cond: np.ndarray, table: np.ndarray, n_past: int, kinematics: dict | None) -> np.ndarray:
    """The full condition with a parsed table's rows in place, positions re-derived where the
    data set's kinematics say how (recorded ones kept up to the first edited action)."""
    return rederive_positions(with_table(cond, table, n_past), n_past, kinematics, cond)


def parse_seed(seed: object) -> int:
    """The z seed box, checked: a whole number from 0 to 2**31 - 1."""
    return read_whole(seed, "the seed", 0, 2**31 - 1)


def transform_amount(kind: str, amount: object) -> float:
    """The number typed beside a transform button, checked: a blank or out-of-range box is an
    error, never a silent zero."""
    lo, hi = TRANSFORM_RANGES[kind]
    label = {"scale": "k", "rotate": "angle", "noise": "noise sigma"}[kind]
    if amount is None or (isinstance(amount, str) and not amount.strip()):
        raise InputError(f"{label} is empty: type a number from {lo:g} to {hi:g}")
    value = read_number(amount, label)
    if not lo <= value <= hi:
        raise InputError(f"{label} must be from {lo:g} to {hi:g}, not {shown(value)}")
    return value


def transform(table: np.ndarray, kind: str, amount: float = 0.0, seed: int = 0) -> np.ndarray:
    """One-click edits of the motion (dx, dy); lift and grip stay. Results are clipped to the
    table's dx, dy range, so a transform never produces a table that Predict refuses."""
    out = table.copy()
    xy = out[:, :2]
    if kind == "zero":
        xy[:] = 0
    elif kind == "reverse":
        xy *= -1
    elif kind == "scale":
        xy *= amount
    elif kind == "rotate":
        a = math.radians(amount)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=np.float32)
        xy[:] = xy @ rot.T
    elif kind == "noise":
        xy += np.random.default_rng(seed).normal(0, amount, xy.shape).astype(np.float32)
    else:
        raise InputError(f"unknown transform {kind!r}")
    np.clip(xy, *RANGES["dx"], out=xy)
    return out


# ---- one prediction, as the page shows it --------------------------------------------------

@dataclass
class Prediction:
    truth: np.ndarray  # [n_past + n_future, 3, 64, 64] float
    original: torch.Tensor  # [S, n_future, 3, 64, 64] with the sequence's own actions
    edited: torch.Tensor  # [S, n_future, 3, 64, 64] with the table's actions
    psnr_original: torch.Tensor  # [S, n_future]
    psnr_edited: torch.Tensor
    ssim_edited: torch.Tensor
    best: int  # best-of-N sample (original actions) by mean PSNR
    edited_differs: bool
    seconds: float
    seed: int  # the z seed: the page names it, so two Predicts with identical futures are told apart
    original_kept: bool = False  # the original actions' futures were kept from an earlier Predict
    physics: torch.Tensor | None = None  # [n_past + n_future, 3, 64, 64]: the scene re-simulated under the edits
    psnr_physics: torch.Tensor | None = None  # [n_future]: sample 1 (edited actions) against physics
    psnr_physics_copy_last: torch.Tensor | None = None  # [n_future]: the last context frame against physics
    # [K, n_future, 3, 64, 64]: the scene under the edits with its hidden causes re-drawn K times
    physics_futures: torch.Tensor | None = None

    def uncertainty(self) -> np.ndarray:
        """Per-pixel standard deviation over the model's futures (edited actions), averaged over
        time and colour channels, in grey levels (0-255) as [64, 64]."""
        return _std_map(self.edited)

    def physics_uncertainty(self) -> np.ndarray | None:
        """The same map over the physics futures; None for real data."""
        return None if self.physics_futures is None else _std_map(self.physics_futures)

    def spread(self) -> dict[str, float] | None:
        """Model against physics futures for this sequence, as ``eval`` scores them
        (``physics_eval.spread_scores``): truth and model spread in the moving region, their
        ratio, the same where the world's futures differ (``branch_ratio``), and the agreement of
        the two std maps. None for real data or a single future."""
        if self.physics_futures is None or len(self.edited) < 2 or len(self.physics_futures) < 2:
            return None
        n_past = len(self.truth) - self.edited.shape[1]
        s = {k: v.item() for k, v in spread_scores(self.edited[None], self.physics_futures[None],
                                                    self.truth[None, n_past - 1]).items()}
        s["ratio"] = s["model_spread"] / s["truth_spread"] if s["truth_spread"] > 0 else math.nan
        s["branch_ratio"] = s["branch_model_spread"] / s["branch_truth_spread"]  # NaN where the world never branches
        return s


MAX_FUTURES = 16


def check_futures(n_samples: object) -> int:
    return read_whole(n_samples, "the number of futures (N)", 1, MAX_FUTURES)


def _std_map(futures: torch.Tensor) -> np.ndarray:
    """Futures [S, F, 3, H, W] -> ``metrics.pixel_std`` over them, averaged over the frames, in grey levels."""
    if len(futures) < 2:
        return np.zeros(futures.shape[-2:], np.float32)
    return (pixel_std(futures, 0).mean(0) * 255).numpy()


ORIGINALS_KEPT = 8  # futures under recorded actions kept for the next Predicts (<= 7.9 MB each)
_originals: OrderedDict[tuple, tuple[object, torch.Tensor]] = OrderedDict()
_originals_lock = threading.Lock()


def _futures(model, context: torch.Tensor, cond: np.ndarray, n_future: int, n_samples: int,
             seed: int) -> torch.Tensor:
    """One set of actions' futures [N, F, 3, H, W], each set its own model call, so the futures
    are the same to the bit however they were asked for (alone, beside an edit, or kept)."""
    return model.predict(context[None], torch.from_numpy(cond[None]).float(), n_future, n_samples, seed)[0]


def _original_futures(model, context: torch.Tensor, cond: np.ndarray, n_future: int, n_samples: int,
                      seed: int) -> tuple[torch.Tensor, bool]:
    """The futures under the recorded actions, and whether they were kept from an earlier
    request. They are kept for the next ``ORIGINALS_KEPT`` requests: the page's loop (edit the
    actions, Predict again) then costs one model call, not two."""
    digest = hashlib.sha1(context.numpy().tobytes() + np.ascontiguousarray(cond).tobytes()).hexdigest()
    key = (id(model), digest, cond.shape, n_future, n_samples, seed)
    with _originals_lock:
        if key in _originals:  # the entry holds the model, so its id is not reused meanwhile
            _originals.move_to_end(key)
            return _originals[key][1], True
    futures = _futures(model, context, cond, n_future, n_samples, seed)
    with _originals_lock:
        _originals[key] = (model, futures)
        while len(_originals) > ORIGINALS_KEPT:
            _originals.popitem(last=False)
    return futures, False


def forget_kept_futures() -> None:
    """Drop the kept futures (benches time a Predict that finds none)."""
    with _originals_lock:
        _originals.clear()


def predict(model, frames: np.ndarray, cond: np.ndarray, edited_cond: np.ndarray, n_samples: int,
            seed: int, physics_frames: np.ndarray | None = None,
            physics_futures: np.ndarray | None = None) -> Prediction:
    """Futures under the original and the edited conditions; scored against ``physics_frames``
    (uint8 [T, 64, 64, 3], the scene under the edits) where given, and beside
    ``physics_futures`` (uint8 [K, T, 64, 64, 3], the same with the hidden causes re-drawn).
    Unedited, the two columns are one prediction, made once; the original one is kept, so
    a Predict after an edit makes only the edited one."""
    n_samples = check_futures(n_samples)
    n_past = model.n_past
    n_future = len(frames) - n_past
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    differs = not np.array_equal(cond, edited_cond)
    started = time.perf_counter()
    original, kept = _original_futures(model, x[:n_past], cond, n_future, n_samples, seed)
    edited = _futures(model, x[:n_past], edited_cond, n_future, n_samples, seed) if differs else original
    seconds = time.perf_counter() - started
    target = x[n_past:]
    p_orig, p_edit = psnr(original, target), psnr(edited, target)
    result = Prediction(truth=x, original=original, edited=edited, psnr_original=p_orig, psnr_edited=p_edit,
                        ssim_edited=ssim(edited, target), best=int(p_orig.mean(1).argmax()),
                        edited_differs=differs, seconds=seconds, seed=seed, original_kept=kept)
    return with_physics(result, n_past, physics_frames, physics_futures)


def with_physics(result: Prediction, n_past: int, physics_frames: np.ndarray | None,
                 physics_futures: np.ndarray | None) -> Prediction:
    """``result`` scored against the physics under the edits, and beside its re-drawn futures."""
    t = len(result.truth)
    if physics_frames is not None:
        phys = torch.from_numpy(physics_frames[:t]).permute(0, 3, 1, 2).float() / 255
        result.physics = phys
        result.psnr_physics = psnr(result.edited[0], phys[n_past:])
        result.psnr_physics_copy_last = psnr(result.truth[n_past - 1].expand_as(phys[n_past:]), phys[n_past:])
    if physics_futures is not None:
        result.physics_futures = torch.from_numpy(physics_futures[:, n_past:t]).permute(0, 1, 4, 2, 3).float() / 255
    return result


def physics(sequence: Path, cond: np.ndarray) -> np.ndarray | None:
    """The scene of a simulated ``sequence`` re-run under the actions of ``cond`` [T, 7]: uint8
    frames [T, 64, 64, 3]. None for data the simulator did not make (real BAIR)."""
    scene = scene_of(sequence)
    return None if scene is None else resimulate(scene, cond[:, ACTIONS])[0]


def physics_futures(sequence: Path, cond: np.ndarray, k: int) -> np.ndarray | None:
    """``k`` other futures of a simulated ``sequence`` under the actions of ``cond`` [T, 7], its
    hidden causes (friction, mass, centre of mass, grip) re-drawn: uint8 [k, T, 64, 64, 3]. None
    for real data, and for a data set without hidden causes (its futures would all be one)."""
    scene = scene_of(sequence)
    if scene is None or scene.uncertainty == 0:
        return None
    return true_futures(scene, cond[:, ACTIONS].astype(np.float64), k)


def kinematics_note(source: Source) -> str:
    if source.kinematics is None:
        return "This data set documents no kinematics: edited actions leave the positions as they are."
    return (f"x, y, z follow from the actions by the simulator's kinematics (xy[t+1] = xy[t] + {GAIN} * (dx, dy), "
            "z from the lift level): they are recomputed whenever you edit dx, dy or lift, so typing into "
            "them has no effect.")


# ---- one call per button ----------------------------------------------------------------------

def run_prediction(source: Source, index: int, model, n_future: int, table: object, n_samples: object,
                   seed: object) -> Prediction:
    """Predict: the table and seed read and checked, the edited conditions (positions re-derived
    where the kinematics are known), the physics under them (simulated data), and the model's
    futures under the original and the edited actions."""
    frames, cond = load_sequence(source.sequences[index])
    n_past = model.n_past
    t = n_past + n_future
    z_seed = parse_seed(seed)
    edited = edited_conditions(cond, parse_table(table, n_past, n_future), n_past, source.kinematics)
    n_samples = check_futures(n_samples)  # before simulating that many physics futures
    seq = source.sequences[index]
    # The world re-simulates in a thread while the model predicts: torch and pymunk's C calls
    # release the GIL, so the two overlap where a core is free (bench/README.md).
    with ThreadPoolExecutor(1) as pool:
        world = pool.submit(lambda: (physics(seq, edited[:t]), physics_futures(seq, edited[:t], n_samples)))
        result = predict(model, frames[:t], cond[:t], edited[:t], n_samples, z_seed)
        return with_physics(result, n_past, *world.result())


def transformed_table(kind: str, source: Source, index: int, n_past: int, n_future: int, table: list | None,
                      amount: object, seed: object) -> list[list]:
    """A transform button: the table's rows after ``kind`` (``reset`` restores the sequence's own)."""
    cond = load_sequence(source.sequences[index])[1]
    if kind == "reset":
        return table_rows(cond, n_past, n_future)
    value = transform_amount(kind, amount) if kind in TRANSFORM_RANGES else 0.0
    edited = transform(parse_table(table, n_past, n_future), kind, value, parse_seed(seed))
    return table_rows(edited_conditions(cond, edited, n_past, source.kinematics), n_past, n_future)


def rederived_table(source: Source, index: int, n_past: int, n_future: int, table: list | None) -> list[list] | None:
    """After a cell edit: the rows with x, y, z re-derived from the actions, or None where the data
    documents no kinematics (the table stays as typed)."""
    if source.kinematics is None:
        return None
    cond = load_sequence(source.sequences[index])[1]
    return table_rows(edited_conditions(cond, parse_table(table, n_past, n_future), n_past, source.kinematics),
                      n_past, n_future)
