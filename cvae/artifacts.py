"""Artifacts people look at: animated GIFs, PNG frame strips, plotly training curves."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_path


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """[..., 3, H, W] floats in [0, 1] -> [..., H, W, 3] uint8 (uint8 HWC passes through)."""
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        return frames
    t = torch.as_tensor(frames).detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return t.movedim(-3, -1).cpu().numpy()


def upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling, so pixels stay crisp in a browser."""
    return img.repeat(scale, axis=-3).repeat(scale, axis=-2)


def join(arrays: list[np.ndarray], axis: int, gap: int = 2) -> np.ndarray:
    """Concatenate uint8 images or videos along ``axis`` with a white gap between neighbours."""
    shape = list(arrays[0].shape)
    shape[axis] = gap
    sep = np.full(shape, 255, np.uint8)
    parts = [arrays[0]]
    for a in arrays[1:]:
        parts += [sep, a]
    return np.concatenate(parts, axis=axis)


def tile(videos: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Place uint8 videos [T, H, W, 3] side by side with a white gap."""
    return join(videos, axis=2, gap=gap)


def grid(videos: list[np.ndarray], per_row: int = 4) -> np.ndarray:
    """uint8 videos [T, H, W, 3] in rows of ``per_row``; the last row is padded with white."""
    padded = videos + [np.full_like(videos[0], 255)] * (-len(videos) % per_row)
    return join([tile(padded[i : i + per_row]) for i in range(0, len(padded), per_row)], axis=1)


def write_gif(path: str | Path, video: np.ndarray, scale: int = 4, fps: float = 5) -> Path:
    """An animated, looping GIF of uint8 [T, H, W, 3] video, upscaled nearest-neighbour.

    Each frame is reduced to its 256-colour palette at its own size and then upscaled as palette
    indices, which gives the same pixels as quantizing the upscaled frame at 1/scale^2 of the work
    (the app writes four GIFs per Predict)."""
    path = Path(path)
    h, w = video.shape[1:3]
    frames = [Image.fromarray(f).quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
              .resize((w * scale, h * scale), Image.Resampling.NEAREST) for f in video]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=1000 / fps, loop=0)
    return path


def strip(frames: np.ndarray, scale: int = 2, gap: int = 2) -> np.ndarray:
    """uint8 frames [T, H, W, 3] as one horizontal strip image."""
    return upscale(tile([f[None] for f in frames], gap)[0], scale)


def rows(images: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Stack same-width uint8 images [H, W, 3] vertically with a white gap."""
    return join(images, axis=0, gap=gap)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def read_log(path: str | Path) -> list[dict]:
    """The records of a training JSONL log, naming the line of any that fails to parse."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
    return records


CURVES = [("kld", "KL loss"), ("mse", "MSE"), ("val_psnr", "validation PSNR (dB)"),
          ("tfr", "teacher-forcing ratio"), ("beta", "KL weight beta"), ("lr", "learning rate")]


def curves_figure(logs: dict[str, list[dict]]):
    """Plotly figure of the per-epoch curves of one or more runs, overlaid for comparison."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(CURVES), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[title for _, title in CURVES])
    for run, records in logs.items():
        epochs = [r for r in records if r.get("kind") == "epoch"]
        for row, (key, _) in enumerate(CURVES, start=1):
            pts = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None]
            if pts:
                x, y = zip(*pts)
                fig.add_scatter(x=x, y=y, mode="lines+markers", name=run, legendgroup=run,
                                showlegend=row == 1, row=row, col=1)
    fig.update_xaxes(title_text="epoch", row=len(CURVES), col=1)
    fig.update_layout(height=230 * len(CURVES), margin=dict(l=50, r=20, t=40, b=40))
    return fig


def write_curves_html(path: str | Path, logs: dict[str, list[dict]]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        curves_figure(logs).write_html(tmp, include_plotlyjs=True)
    return path


def comparison_video(truth: np.ndarray, predictions: list[np.ndarray], n_past: int) -> np.ndarray:
    """Ground truth beside each prediction, all uint8 [T, H, W, 3]; predictions hold only the
    future, so the context frames are shown in front of them (with a red border on predicted frames)."""
    videos = [truth]
    for pred in predictions:
        framed = pred.copy()
        framed[:, [0, -1]] = framed[:, :, [0, -1]] = (220, 30, 30)
        videos.append(np.concatenate([truth[:n_past], framed]))
    return tile(videos)
