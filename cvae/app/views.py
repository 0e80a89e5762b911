"""What the page shows, built from what ``logic`` computed: GIFs, frame strips, the uncertainty
maps, the per-step plot and the summary text. Files go to a bounded per-request folder."""
from __future__ import annotations

import atexit
import collections
import math
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from ..artifacts import comparison_video, grid, rows, strip, tile, to_uint8, upscale, write_gif, write_png
from ..physics_eval import VISIBLE_STD
from . import logic

KEEP_OUTPUTS = 24  # newest output folders kept on disk; older ones are deleted
UNCERTAINTY_MAX = 32.0  # grey levels at the top of the uncertainty map's fixed colour scale


class Outputs:
    """A fresh folder per request under one root, keeping only the newest KEEP_OUTPUTS, so a
    long-running server's disk use stays bounded; the root goes when the process exits."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cvae_app_"))
        self.folders: collections.deque[Path] = collections.deque()
        self.lock = threading.Lock()  # requests run in several threads at once
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)

    def new(self) -> Path:
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        with self.lock:
            self.folders.append(folder)
            stale = [self.folders.popleft() for _ in range(len(self.folders) - KEEP_OUTPUTS)]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return folder


def _png(img: np.ndarray, out: Path, name: str) -> str:
    return str(write_png(out / f"{name}.png", img))


def _colours(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> dark-to-yellow uint8 colours [..., 3]."""
    rgb = np.stack([np.clip(1.5 * v, 0, 1), np.clip(1.5 * v - 0.5, 0, 1) ** 0.8, np.clip(0.6 - 1.2 * abs(v - 0.35), 0, 1)], -1)
    return (rgb * 255).astype(np.uint8)


def heat(maps: list[tuple[str, np.ndarray]], scale: int = 4) -> np.ndarray:
    """[H, W] maps in grey levels side by side on one fixed scale (0 to UNCERTAINTY_MAX), each
    titled underneath (Gradio's label covers the top left), with one labelled colour bar on the
    right, so the model's map and the world's, and maps of different predictions, compare by eye."""
    from PIL import Image, ImageDraw

    imgs = [upscale(_colours(np.clip(m / UNCERTAINTY_MAX, 0, 1)), scale) for _, m in maps]
    h, w = imgs[0].shape[:2]
    caption, gap = 18, 8
    bar = np.repeat(_colours(np.linspace(1, 0, h))[:, None], 14, 1)
    panel = Image.new("RGB", (len(imgs) * (w + gap) + 80, h + caption), "white")
    draw = ImageDraw.Draw(panel)
    for i, ((title, _), img) in enumerate(zip(maps, imgs)):
        panel.paste(Image.fromarray(img), (i * (w + gap), 0))
        draw.text((i * (w + gap), h + 4), title, fill="black")
    x = len(imgs) * (w + gap)
    panel.paste(Image.fromarray(bar), (x, 0))
    draw.text((x + 18, 0), f">={UNCERTAINTY_MAX:g}", fill="black")
    draw.text((x + 18, h // 2 - 12), "grey\nlevels", fill="black")
    draw.text((x + 18, h - 12), "0", fill="black")
    return np.asarray(panel)


def step_plot(p: logic.Prediction, n_past: int) -> go.Figure:
    """Per-step scores of sample 1; each line has its own colour, dash and marker, and the legend
    sits below the axes where nothing covers it."""
    frames = list(range(n_past, n_past + len(p.psnr_edited[0])))
    fig = go.Figure()
    lines = [("PSNR vs truth, original actions", p.psnr_original[0], "#1f77b4", "solid", "circle", "y"),
             ("PSNR vs truth, your actions", p.psnr_edited[0], "#ff7f0e", "dash", "square", "y"),
             ("SSIM vs truth, your actions (right axis)", p.ssim_edited[0], "#2ca02c", "dot", "diamond", "y2")]
    if p.psnr_physics is not None:
        lines.append(("PSNR vs physics under your actions", p.psnr_physics, "#9467bd", "dashdot", "x", "y"))
    for name, values, colour, dash, marker, axis in lines:
        fig.add_scatter(x=frames, y=values.tolist(), name=name, mode="lines+markers", yaxis=axis,
                        line=dict(color=colour, dash=dash, width=2), marker=dict(symbol=marker, size=8))
    fig.update_layout(xaxis_title="frame", yaxis_title="PSNR (dB)",
                      yaxis2=dict(title="SSIM", overlaying="y", side="right", range=[0, 1]),
                      height=380, margin=dict(l=50, r=50, t=20, b=110),
                      legend=dict(orientation="h", x=0, y=-0.25, yanchor="top"))
    return fig


@dataclass
class SequenceViews:
    context: list[str]  # PNG paths of the context frames, upscaled
    truth_gif: str


def sequence_views(frames: np.ndarray, n_past: int, n_future: int, out: Path) -> SequenceViews:
    ctx = [_png(upscale(frames[t], 4), out, f"context{t}") for t in range(n_past)]
    return SequenceViews(ctx, str(write_gif(out / "truth.gif", frames[: n_past + n_future])))


@dataclass
class PredictionViews:
    compare_gif: str
    futures_gif: str
    physics_gif: str | None  # None for real data
    std_png: str
    best_gif: str
    steps_png: str
    plot: go.Figure
    summary: str


def prediction_views(p: logic.Prediction, n_past: int, n_future: int, out: Path) -> PredictionViews:
    truth = to_uint8(p.truth)
    original, edited = to_uint8(p.original), to_uint8(p.edited)
    videos = comparison_video(truth, [original[0], edited[0]], n_past)
    if p.physics is not None:
        videos = tile([videos, to_uint8(p.physics)])
    compare = write_gif(out / "compare.gif", videos)
    futures = write_gif(out / "futures.gif", grid([np.concatenate([truth[:n_past], v]) for v in edited]), scale=3)
    best = write_gif(out / "best.gif", comparison_video(truth, [original[p.best]], n_past))
    maps = [("model: std over its N futures", p.uncertainty())]
    physics_gif = None
    if p.physics_futures is not None:
        maps.append(("physics: std over K re-simulations", p.physics_uncertainty()))
        world = [np.concatenate([truth[:n_past], v]) for v in to_uint8(p.physics_futures)]
        physics_gif = str(write_gif(out / "physics_futures.gif", grid(world), scale=3))
    std = _png(heat(maps), out, "std")
    steps = _png(rows([strip(truth[n_past:]), strip(original[0]), strip(edited[0])]), out, "steps")
    return PredictionViews(str(compare), str(futures), physics_gif, std, str(best), steps, step_plot(p, n_past),
                           summary(p, n_future))


def summary(p: logic.Prediction, n_future: int) -> str:
    """The prediction in words: time, scores against the truth and the physics, and the model's
    spread of futures against the world's."""
    n = len(p.edited)
    note = "" if p.edited_differs else " (actions unedited: both columns use the same actions)"
    shape = f"{n} futures x {n_future} frames (z seed {p.seed})"
    if not p.edited_differs:
        made = f"{shape} under the recorded actions, one prediction for both columns"
    elif p.original_kept:
        made = f"{shape} under your actions; those under the original actions were kept from an earlier Predict"
    else:
        made = f"{shape} under the original actions and under yours"
    ran = p.edited_differs or not p.original_kept  # whether the model ran for this request at all
    made = f"**{p.seconds * 1000:.0f} ms** for {made}" if ran else f"{made}, kept from an earlier Predict"
    text = (f"{made}. "
            f"Sample 1 PSNR vs truth: original actions **{p.psnr_original[0].mean():.2f} dB**, "
            f"edited **{p.psnr_edited[0].mean():.2f} dB**{note}. Best of {n} "
            f"(original actions): sample {p.best + 1}, **{p.psnr_original[p.best].mean():.2f} dB**.")
    if p.physics is not None:
        text += (f" **Physics under your actions** (the scene re-simulated): your-actions prediction "
                 f"**{p.psnr_physics.mean():.2f} dB** against it; copying the last frame "
                 f"{p.psnr_physics_copy_last.mean():.2f} dB.")
    else:
        text += " This is not simulated data, so there is no physics truth for edited actions."
    spread = p.spread()
    if spread is not None:
        text += (f"\n\n**Uncertainty, model against the world** ({n} model futures, "
                 f"{len(p.physics_futures)} re-simulations with friction, mass, centre of mass and grip "
                 f"re-drawn): where things move, the model's futures spread "
                 f"**{spread['model_spread'] * 255:.1f}** grey levels (std) and the world's "
                 f"**{spread['truth_spread'] * 255:.1f}**")
        if spread["truth_spread"] * 255 >= logic.CERTAIN_GREY_LEVELS:
            text += (f": ratio **{spread['ratio']:.2f}** (1 is right). "
                     f"Agreement of the two maps (correlation): **{spread['agreement']:.2f}**.")
            if math.isnan(spread["misplaced"]):
                text += (f" The model's {n} futures are alike everywhere (no pixel's std reaches "
                         f"{VISIBLE_STD * 255:g} grey levels): its z carries nothing here, so resampling "
                         "it changes nothing you can see.")
            else:
                text += (f" **{100 * spread['misplaced']:.0f}%** of the model's spread lies where the world's "
                         "futures agree: there it is the model's own doubt, not the world's.")
            if not math.isnan(spread["branch_ratio"]):
                text += (f" Where the world's futures differ, the model's spread "
                         f"**{spread['branch_model_spread'] * 255:.1f}** grey levels against the world's "
                         f"**{spread['branch_truth_spread'] * 255:.1f}**: it draws "
                         f"**{100 * spread['branch_ratio']:.0f}%** of the world's own uncertainty there.")
        else:
            text += (": under these actions the world is certain (nothing is pushed, or every push "
                     "ends alike), so there is no spread to match; a good model's futures agree too.")
    elif p.physics_futures is not None:
        text += "\n\nChoose 2 or more futures to compare the model's spread with the world's."
    return text
