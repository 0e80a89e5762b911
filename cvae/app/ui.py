"""The Gradio page. Layout and wiring only; what each control does lives in ``logic``."""
from __future__ import annotations

import collections
import html
import random
import shutil
import tempfile
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from ..artifacts import (comparison_video, curves_figure, grid, read_log, rows, strip, tile, to_uint8, upscale,
                         write_gif, write_png)
from ..checkpoint import CheckpointError
from ..data.bair import DataError
from . import logic

CSS = "#title {margin-bottom: 0} .frame img {image-rendering: pixelated}"
INTRO = """# What if the arm had pushed another way?
A conditional VAE (SVG family) watched **2 context frames** and is told, for every step, the robot's
**action** (dx, dy, lift, grip) and **end-effector position** (x, y, z). It predicts the next
**10 frames**. Pick a sequence, edit the actions, and press **Predict**: the page shows the truth,
the prediction with the original actions, and the prediction with yours. *z* is the model's
randomness: **Resample z** draws a different future for the same actions."""


MAX_ERROR_CHARS = 300
KEEP_OUTPUTS = 24  # newest output folders kept on disk; older ones are deleted
UNCERTAINTY_MAX = 32.0  # grey levels at the top of the uncertainty map's fixed colour scale


def _plain(message: object) -> str:
    """Toast text: HTML escaped (toasts render HTML) and cut to a readable length."""
    text = str(message)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return html.escape(text, quote=False)


def user_error(message: object) -> gr.Error:
    """An error toast for a person's mistake, with no traceback in the server log."""
    return gr.Error(_plain(message), print_exception=False)


def keep_and_warn(message: object) -> dict:
    """A toast for a mistake in an edit: the component keeps what it showed (raising would put a
    red 'Error' box in place of the person's table)."""
    gr.Warning(_plain(message))
    return gr.update()


class Outputs:
    """A fresh folder per request under one root, keeping only the newest KEEP_OUTPUTS, so a
    long-running server's disk use stays bounded."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cvae_app_"))
        self.folders: collections.deque[Path] = collections.deque()

    def new(self) -> Path:
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        self.folders.append(folder)
        while len(self.folders) > KEEP_OUTPUTS:
            shutil.rmtree(self.folders.popleft(), ignore_errors=True)
        return folder


def _png(img: np.ndarray, out: Path, name: str) -> str:
    return str(write_png(out / f"{name}.png", img))


def _colours(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> dark-to-yellow uint8 colours [..., 3]."""
    rgb = np.stack([np.clip(1.5 * v, 0, 1), np.clip(1.5 * v - 0.5, 0, 1) ** 0.8, np.clip(0.6 - 1.2 * abs(v - 0.35), 0, 1)], -1)
    return (rgb * 255).astype(np.uint8)


def _heat(maps: list[tuple[str, np.ndarray]], scale: int = 4) -> np.ndarray:
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


def _step_plot(p: logic.Prediction, n_past: int) -> go.Figure:
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


def _picked(evt: gr.SelectData) -> int:
    return int(evt.index)


def build(data_dirs: list[str], runs_dirs: list[str], keep_minutes: float = 10) -> gr.Blocks:
    """The page. Gradio copies every returned file into its cache; files there older than
    ``keep_minutes`` are deleted (checked every quarter of that), as Outputs bounds our own."""
    if not keep_minutes > 0:
        raise ValueError(f"--keep-minutes must be positive, not {keep_minutes}")
    sources = logic.find_sources(data_dirs)
    models = logic.find_models(runs_dirs)
    outputs = Outputs()
    first_source, first_model = next(iter(sources)), next(iter(models))

    def current(source_label: str, index: int) -> tuple[logic.Source, np.ndarray, np.ndarray]:
        if source_label not in sources:
            raise user_error(f"unknown sequence source {source_label!r}")
        source = sources[source_label]
        index = int(index)
        if not 0 <= index < len(source.sequences):
            raise user_error(f"sequence {index} is out of range: {source_label} has {len(source.sequences)}")
        try:
            frames, cond = logic.load_sequence(source.sequences[index])
        except DataError as e:
            raise user_error(e) from None
        return source, frames, cond

    def model_for(label: str):  # noqa: ANN202
        if label not in models:
            raise user_error(f"unknown model {label!r}")
        try:
            return logic.cached_model(models[label].path)
        except CheckpointError as e:
            raise user_error(e) from None

    def selection(source_label: str, index: int, model_label: str):  # noqa: ANN202
        """The chosen sequence and model, and how many frames the model sees and predicts."""
        source, frames, cond = current(source_label, index)
        model = model_for(model_label)
        return source, frames, cond, model, model.n_past, models[model_label].config["n_future"]

    def on_sequence(source_label: str, index: int, model_label: str):  # noqa: ANN202
        source, frames, cond, _, n_past, n_future = selection(source_label, index, model_label)
        out = outputs.new()
        ctx = [_png(upscale(frames[t], 4), out, f"context{t}") for t in range(n_past)]
        truth = write_gif(out / "truth.gif", frames[: n_past + n_future])
        return (ctx[0], ctx[-1], str(truth), logic.table_rows(cond, n_past, n_future),
                logic.kinematics_note(source) + f" Sequence: `{source.sequences[int(index)].relative_to(source.root)}`.",
                models[model_label].quality)

    def on_source(source_label: str, model_label: str):  # noqa: ANN202
        source = sources[source_label]
        thumbs = [(upscale(logic.load_sequence(s)[0][0], 2), str(i)) for i, s in enumerate(source.sequences[:48])]
        return (gr.update(maximum=len(source.sequences) - 1, value=0), thumbs, *on_sequence(source_label, 0, model_label))

    def on_transform(kind: str, source_label: str, index: int, model_label: str, table: list, amount: object,
                     seed: object):  # noqa: ANN202
        source, _, cond, _, n_past, n_future = selection(source_label, index, model_label)
        if kind == "reset":
            return logic.table_rows(cond, n_past, n_future)
        try:
            value = logic.transform_amount(kind, amount) if kind in logic.TRANSFORM_RANGES else 0.0
            edited = logic.transform(logic.parse_table(table, n_past, n_future), kind, value, logic.parse_seed(seed))
            full = logic.edited_conditions(cond, edited, n_past, source.kinematics)
        except logic.InputError as e:
            return keep_and_warn(e)
        return logic.table_rows(full, n_past, n_future)

    def on_table_input(source_label: str, index: int, model_label: str, table: list):  # noqa: ANN202
        """Typing into dx, dy or lift re-derives x, y, z at once where the kinematics are known."""
        source, _, cond, _, n_past, n_future = selection(source_label, index, model_label)
        if source.kinematics is None:
            return gr.update()
        try:
            edited = logic.edited_conditions(cond, logic.parse_table(table, n_past, n_future), n_past, source.kinematics)
            return logic.table_rows(edited, n_past, n_future)
        except logic.InputError as e:
            return keep_and_warn(e)

    def on_predict(source_label: str, index: int, model_label: str, table: list, n_samples: float, seed: float):  # noqa: ANN202
        source, frames, cond, model, n_past, n_future = selection(source_label, index, model_label)
        t = n_past + n_future
        try:
            z_seed = logic.parse_seed(seed)
            edited = logic.edited_conditions(cond, logic.parse_table(table, n_past, n_future), n_past, source.kinematics)
            phys = logic.physics(source.sequences[int(index)], edited[:t])
            phys_futures = logic.physics_futures(source.sequences[int(index)], edited[:t], int(n_samples))
            p = logic.predict(model, frames[:t], cond[:t], edited[:t], int(n_samples), z_seed, phys, phys_futures)
        except logic.InputError as e:
            raise user_error(e) from None
        out = outputs.new()
        truth = to_uint8(p.truth)
        original, edited_v = to_uint8(p.original), to_uint8(p.edited)
        videos = comparison_video(truth, [original[0], edited_v[0]], n_past)
        if p.physics is not None:
            videos = tile([videos, to_uint8(p.physics)])
        side = write_gif(out / "compare.gif", videos)
        futures = [np.concatenate([truth[:n_past], v]) for v in edited_v]
        futures_gif = write_gif(out / "futures.gif", grid(futures), scale=3)
        best = write_gif(out / "best.gif", comparison_video(truth, [original[p.best]], n_past))
        maps = [("model: std over its N futures", p.uncertainty())]
        physics_gif = None
        if p.physics_futures is not None:
            maps.append(("physics: std over K re-simulations", p.physics_uncertainty()))
            world = [np.concatenate([truth[:n_past], v]) for v in to_uint8(p.physics_futures)]
            physics_gif = str(write_gif(out / "physics_futures.gif", grid(world), scale=3))
        std = _png(_heat(maps), out, "std")
        steps = _png(rows([strip(truth[n_past:]), strip(original[0]), strip(edited_v[0])]), out, "steps")
        note = "" if p.edited_differs else " (actions unedited: both columns use the same actions)"
        summary = (f"**{p.seconds * 1000:.0f} ms** for {int(n_samples)} futures x {n_future} frames under the "
                   "original actions and under yours, in one batch. "
                   f"Sample 1 PSNR vs truth: original actions **{p.psnr_original[0].mean():.2f} dB**, "
                   f"edited **{p.psnr_edited[0].mean():.2f} dB**{note}. Best of {int(n_samples)} "
                   f"(original actions): sample {p.best + 1}, **{p.psnr_original[p.best].mean():.2f} dB**.")
        if p.physics is not None:
            summary += (f" **Physics under your actions** (the scene re-simulated): your-actions prediction "
                        f"**{p.psnr_physics.mean():.2f} dB** against it; copying the last frame "
                        f"{p.psnr_physics_copy_last.mean():.2f} dB.")
        else:
            summary += " This is not simulated data, so there is no physics truth for edited actions."
        spread = p.spread()
        if spread is not None:
            summary += (f"\n\n**Uncertainty, model against the world** ({int(n_samples)} model futures, "
                        f"{len(p.physics_futures)} re-simulations with friction, mass, centre of mass and grip "
                        f"re-drawn): where things move, the model's futures spread "
                        f"**{spread['model_spread'] * 255:.1f}** grey levels (std) and the world's "
                        f"**{spread['truth_spread'] * 255:.1f}**")
            if spread["truth_spread"] * 255 >= logic.CERTAIN_GREY_LEVELS:
                summary += (f": ratio **{spread['ratio']:.2f}** (1 is right). "
                            f"Agreement of the two maps (correlation): **{spread['agreement']:.2f}**.")
            else:
                summary += (": under these actions the world is certain (nothing is pushed, or every push "
                            "ends alike), so there is no spread to match; a good model's futures agree too.")
        elif p.physics_futures is not None:
            summary += "\n\nChoose 2 or more futures to compare the model's spread with the world's."
        return (str(side), str(futures_gif), gr.update(value=physics_gif, visible=physics_gif is not None), std,
                str(best), steps, _step_plot(p, n_past), summary)

    def on_curves(labels: list[str]):  # noqa: ANN202
        logs = {}
        for label in labels or []:
            entry = models.get(label)
            if entry is None or entry.log is None:
                continue
            try:
                logs[label.split(" · ")[0]] = read_log(entry.log)
            except ValueError as e:
                raise user_error(e) from None
        return curves_figure(logs)

    keep = max(1, round(keep_minutes * 60))
    with gr.Blocks(title="Action-conditioned video prediction", delete_cache=(max(1, keep // 4), keep)) as demo:
        gr.Markdown(INTRO, elem_id="title")
        with gr.Tab("Predict"):
            with gr.Row():
                source_dd = gr.Dropdown(list(sources), value=first_source, label="Sequences", elem_id="source")
                index = gr.Slider(0, len(sources[first_source].sequences) - 1, value=0, step=1, label="Sequence",
                                  elem_id="index")
                model_dd = gr.Dropdown(list(models), value=first_model, label="Model", elem_id="model", scale=2)
            quality = gr.Markdown(models[first_model].quality, elem_id="quality")
            gallery = gr.Gallery(label="Pick a sequence (first frames)", columns=12, height=130, allow_preview=False,
                                 elem_id="gallery")
            with gr.Row():
                ctx0 = gr.Image(label="context frame 0", elem_classes="frame", height=200, elem_id="ctx0")
                ctx1 = gr.Image(label="context frame 1", elem_classes="frame", height=200, elem_id="ctx1")
                truth = gr.Image(label="ground truth (all 12 frames)", elem_classes="frame", height=200, elem_id="truth")
            kin_note = gr.Markdown(elem_id="kinematics")
            table = gr.Dataframe(headers=logic.HEADERS, datatype=["number"] * len(logic.HEADERS), type="array",
                                 interactive=True, static_columns=[0, 1], label="Conditions of the predicted steps "
                                 "(step t drives frame t+1). Edit any cell.", elem_id="table")
            with gr.Row():
                zero = gr.Button("zero motion", size="sm", elem_id="zero")
                reverse = gr.Button("reverse (-dx, -dy)", size="sm", elem_id="reverse")
                scale_k = gr.Number(2.0, label="k (-5 to 5)", min_width=60, elem_id="scale_k")
                scale = gr.Button("scale by k", size="sm", elem_id="scale")
                angle = gr.Number(90.0, label="angle (deg, -360 to 360)", min_width=80, elem_id="angle")
                rotate = gr.Button("rotate", size="sm", elem_id="rotate")
                sigma = gr.Number(0.03, label="noise sigma (0 to 0.2)", min_width=80, elem_id="sigma")
                noise = gr.Button("add noise", size="sm", elem_id="noise")
                reset = gr.Button("reset", size="sm", elem_id="reset")
            with gr.Row():
                seed = gr.Number(0, label="seed (z)", precision=0, elem_id="seed")
                n_samples = gr.Slider(1, 16, value=8, step=1, label="futures (N)", elem_id="n_samples")
                predict_btn = gr.Button("Predict", variant="primary", elem_id="predict")
                resample = gr.Button("Resample z", elem_id="resample")
            summary = gr.Markdown(elem_id="summary")
            compare = gr.Image(label="truth | original actions | your actions (red border: predicted) | "
                               "physics under your actions (simulated data only)",
                               elem_classes="frame", elem_id="compare")
            with gr.Row():
                best = gr.Image(label="truth | best of N (original actions)", elem_classes="frame", elem_id="best")
                futures = gr.Image(label="model: N futures with your actions (one z each)", elem_classes="frame",
                                   elem_id="futures")
                physics_futures = gr.Image(label="physics: N futures with your actions (hidden causes re-drawn)",
                                           elem_classes="frame", elem_id="physics_futures")
            std = gr.Image(label="uncertainty: per-pixel std over the futures, averaged over frames, in grey levels "
                           "(one fixed scale)", elem_classes="frame", elem_id="std", height=300)
            steps = gr.Image(label="per step: truth / original actions / your actions", elem_classes="frame",
                             elem_id="steps")
            step_plot = gr.Plot(label="per-step PSNR and SSIM", elem_id="step_plot")
        with gr.Tab("Training curves"):
            with_logs = [label for label, e in models.items() if e.log is not None]
            runs_dd = gr.Dropdown(with_logs, value=with_logs[:1], multiselect=True, label="Runs to overlay",
                                  elem_id="runs")
            curves = gr.Plot(label="KL, MSE, validation PSNR, teacher forcing, KL weight", elem_id="curves")

        seq_outputs = [ctx0, ctx1, truth, table, kin_note, quality]
        pred_inputs = [source_dd, index, model_dd, table, n_samples, seed]
        pred_outputs = [compare, futures, physics_futures, std, best, steps, step_plot, summary]
        source_dd.change(on_source, [source_dd, model_dd], [index, gallery, *seq_outputs])
        index.release(on_sequence, [source_dd, index, model_dd], seq_outputs)
        gallery.select(_picked, None, index).then(
            on_sequence, [source_dd, index, model_dd], seq_outputs)
        model_dd.change(on_sequence, [source_dd, index, model_dd], seq_outputs)
        for btn, kind, amount in [(zero, "zero", None), (reverse, "reverse", None), (scale, "scale", scale_k),
                                  (rotate, "rotate", angle), (noise, "noise", sigma), (reset, "reset", None)]:
            btn.click(lambda s, i, m, t, a, z, kind=kind: on_transform(kind, s, i, m, t, a, z),
                      [source_dd, index, model_dd, table, amount or scale_k, seed], table)
        table.input(on_table_input, [source_dd, index, model_dd, table], table)
        predict_btn.click(on_predict, pred_inputs, pred_outputs, api_name="predict")
        resample.click(lambda: random.randrange(2**31), None, seed).then(on_predict, pred_inputs, pred_outputs)
        runs_dd.change(on_curves, runs_dd, curves)
        demo.load(on_source, [source_dd, model_dd], [index, gallery, *seq_outputs]).then(on_curves, runs_dd, curves)
    return demo


def launch(data_dirs: list[str], runs_dirs: list[str], host: str | None, port: int | None, share: bool,
           keep_minutes: float = 10) -> None:
    demo = build(data_dirs, runs_dirs, keep_minutes)
    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.launch(server_name=host, server_port=port, share=share, theme=gr.themes.Soft(), css=CSS,
                allowed_paths=[tempfile.gettempdir()])
