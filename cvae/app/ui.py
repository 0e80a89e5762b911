"""The Gradio page: layout and wiring. Each control's handler is a method of :class:`App` that
makes one ``logic`` call and builds what it shows with ``views``."""
from __future__ import annotations

import html
import os
import random
import signal
import tempfile
import threading
import time

import gradio as gr
import torch
from gradio.components.dataframe import DataframeData
from pydantic import model_validator

from ..artifacts import curves_figure, read_log, upscale
from ..errors import CheckpointError, ConfigError, DataError, InputError
from . import logic, views

CSS = "#title {margin-bottom: 0} .frame img {image-rendering: pixelated}"
INTRO = """# What if the arm had pushed another way?
A conditional VAE (SVG family) watched **2 context frames** and is told, for every step, the robot's
**action** (dx, dy, lift, grip) and **end-effector position** (x, y, z). It predicts the next
**10 frames**. Pick a sequence, edit the actions, and press **Predict**: the page shows the truth,
the prediction with the original actions, and the prediction with yours. *z* is the model's
randomness: **Resample z** draws a different future for the same actions."""


MAX_ERROR_CHARS = 300


def _plain(message: object) -> str:
    """Toast text: HTML escaped (toasts render HTML) and cut to a readable length."""
    text = str(message)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return html.escape(text, quote=False)


def user_error(message: object) -> gr.Error:
    """An error toast for a person's mistake, with no traceback in the server log."""
    return gr.Error(_plain(message), print_exception=False)


class SentTable(DataframeData):
    """Gradio's table payload, made lenient: what a script sends in any shape reaches the app,
    which names what is wrong with it (``logic.table_data``), instead of failing in Gradio's own
    validation with a generic "the upstream app has raised an exception"."""

    @model_validator(mode="before")
    @classmethod
    def keep_what_was_sent(cls, value: object) -> object:
        if (isinstance(value, dict) and isinstance(value.get("headers"), list) and isinstance(value.get("data"), list)
                and all(isinstance(row, (list, tuple)) for row in value["data"])):
            return value
        return {"headers": [], "data": [], "metadata": {"sent": [value]}}


def as_sent(payload: object) -> object:
    """The table exactly as a script sent it, where :class:`SentTable` had to wrap it."""
    if isinstance(payload, dict) and (payload.get("metadata") or {}).get("sent"):
        return payload["metadata"]["sent"][0]
    return payload


class Warnings:
    """Toasts for mistakes in an edit. The component keeps what it showed (raising would put a red
    'Error' box in place of the person's table); the same message for the same edit is shown once,
    though the table reports one edit more than once."""

    REPEAT_S = 3.0

    def __init__(self) -> None:
        self.last: tuple[str, str, float] = ("", "", 0.0)
        self.lock = threading.Lock()

    def keep_and_warn(self, message: object, edit: object) -> dict:
        text, key, now = _plain(message), repr(edit)[:2000], time.monotonic()
        with self.lock:
            repeated = self.last[:2] == (text, key) and now - self.last[2] < self.REPEAT_S
            self.last = (text, key, now)
        if not repeated:
            gr.Warning(text)
        return gr.update()


def _picked(evt: gr.SelectData) -> int:
    return int(evt.index)


class App:
    """The page's state (sequence sources, models, the output folders) and one handler per
    control. Each handler makes one ``logic`` call and hands the result to ``views``; a person's
    mistake becomes a toast, never a traceback."""

    def __init__(self, data_dirs: list[str], runs_dirs: list[str]) -> None:
        self.sources = logic.find_sources(data_dirs)
        self.models = logic.find_models(runs_dirs)
        self.outputs = views.Outputs()
        self.warnings = Warnings()

    def selection(self, source_label: str, index: object, model_label: str) -> tuple:
        """The chosen source, sequence index and model, and how many frames the model sees and predicts."""
        if source_label not in self.sources:
            raise user_error(f"unknown sequence source {source_label!r}")
        if model_label not in self.models:
            raise user_error(f"unknown model {model_label!r}")
        source = self.sources[source_label]
        try:
            index = logic.read_whole(index, f"the sequence index ({source_label})", 0, len(source.sequences) - 1)
        except InputError as e:
            raise user_error(e) from None
        try:
            model = logic.cached_model(self.models[model_label].path)
        except CheckpointError as e:
            raise user_error(e) from None
        return source, index, model, model.n_past, self.models[model_label].config["n_future"]

    def on_sequence(self, source_label: str, index: int, model_label: str) -> tuple:
        source, index, _, n_past, n_future = self.selection(source_label, index, model_label)
        try:
            frames, cond = logic.load_sequence(source.sequences[index])
        except DataError as e:
            raise user_error(e) from None
        v = views.sequence_views(frames, n_past, n_future, self.outputs.new())
        where = f" Sequence: `{source.sequences[index].relative_to(source.root)}`."
        return (v.context[0], v.context[-1], v.truth_gif, logic.table_rows(cond, n_past, n_future),
                logic.kinematics_note(source) + where, self.models[model_label].quality)

    def on_source(self, source_label: str, model_label: str) -> tuple:
        source = self.sources[source_label]
        thumbs = [(upscale(logic.load_sequence(s)[0][0], 2), str(i)) for i, s in enumerate(source.sequences[:48])]
        return (gr.update(maximum=len(source.sequences) - 1, value=0), thumbs,
                *self.on_sequence(source_label, 0, model_label))

    def on_transform(self, kind: str, source_label: str, index: int, model_label: str, table: list,
                     amount: object, seed: object) -> list | dict:
        source, index, _, n_past, n_future = self.selection(source_label, index, model_label)
        try:
            return logic.transformed_table(kind, source, index, n_past, n_future, table, amount, seed)
        except InputError as e:
            return self.warnings.keep_and_warn(e, (kind, table, amount))

    def on_table_input(self, source_label: str, index: int, model_label: str, table: list) -> list | dict:
        """Typing into dx, dy or lift re-derives x, y, z at once where the kinematics are known."""
        source, index, _, n_past, n_future = self.selection(source_label, index, model_label)
        try:
            rows_ = logic.rederived_table(source, index, n_past, n_future, table)
        except InputError as e:
            return self.warnings.keep_and_warn(e, table)
        return gr.update() if rows_ is None else rows_

    def on_predict(self, source_label: object, index: object, model_label: object, table: object, n_samples: object,
                   seed: object) -> tuple:
        """Wired with ``preprocess=False``: it gets the values as the page or a script sent them
        (no silent rounding or clamping by Gradio), and every one of them is checked here."""
        source, index, model, n_past, n_future = self.selection(str(source_label), index, str(model_label))
        try:
            p = logic.run_prediction(source, index, model, n_future, as_sent(table), n_samples, seed)
        except InputError as e:
            raise user_error(e) from None
        v = views.prediction_views(p, n_past, n_future, self.outputs.new())
        return (v.compare_gif, v.futures_gif, gr.update(value=v.physics_gif, visible=v.physics_gif is not None),
                v.std_png, v.best_gif, v.steps_png, v.plot, v.summary)

    def on_curves(self, labels: list[str]) -> object:
        logs = {}
        for label in labels or []:
            entry = self.models.get(label)
            if entry is None or entry.log is None:
                continue
            try:
                logs[label.split(" · ")[0]] = read_log(entry.log)
            except ValueError as e:
                raise user_error(e) from None
        return curves_figure(logs)


def build(data_dirs: list[str], runs_dirs: list[str], keep_minutes: float = 10) -> gr.Blocks:
    """The page. Gradio copies every returned file into its cache; files there older than
    ``keep_minutes`` are deleted (checked every quarter of that), as Outputs bounds our own."""
    if not keep_minutes > 0:
        raise ConfigError(f"--keep-minutes must be positive, not {keep_minutes}")
    app = App(data_dirs, runs_dirs)
    sources, models = app.sources, app.models
    first_source, first_model = next(iter(sources)), next(iter(models))
    keep = max(1, round(keep_minutes * 60))
    with gr.Blocks(title="Action-conditioned video prediction", delete_cache=(max(1, keep // 4), keep)) as demo:
        gr.Markdown(INTRO, elem_id="title")
        with gr.Tab("Predict"):
            with gr.Row():
                source_dd = gr.Dropdown(list(sources), value=first_source, label="Sequences", elem_id="source")
                index = gr.Slider(0, len(sources[first_source].sequences) - 1, value=0, step=1, label="Sequence",
                                  elem_id="index")
                model_dd = gr.Dropdown(list(models), value=first_model, label="Model", elem_id="model", scale=3)
            quality = gr.Markdown(models[first_model].quality, elem_id="quality")
            gallery = gr.Gallery(label="Pick a sequence (first frames)", columns=12, height=130, allow_preview=False,
                                 elem_id="gallery")
            with gr.Row():
                ctx0 = gr.Image(label="context frame 0", elem_classes="frame", height=200, elem_id="ctx0")
                ctx1 = gr.Image(label="context frame 1", elem_classes="frame", height=200, elem_id="ctx1")
                truth = gr.Image(label="ground truth (all 12 frames)", elem_classes="frame", height=200, elem_id="truth")
            kin_note = gr.Markdown(elem_id="kinematics")
            table = gr.Dataframe(headers=logic.HEADERS, datatype=["number"] * 2 + ["str"] * (len(logic.HEADERS) - 2),
                                 type="array",
                                 interactive=True, static_columns=[0, 1], label="Conditions of the predicted steps "
                                 "(step t drives frame t+1). Edit any cell.", elem_id="table")
            table.data_model = SentTable  # this instance only (a subclass would make Gradio write a .pyi)
            with gr.Row(equal_height=True):  # transforms of the motion: each amount beside its button
                with gr.Column(scale=1, min_width=150):
                    zero = gr.Button("zero motion", size="sm", elem_id="zero")
                    reverse = gr.Button("reverse (-dx, -dy)", size="sm", elem_id="reverse")
                    reset = gr.Button("reset to the sequence's", size="sm", elem_id="reset")
                with gr.Column(scale=1, min_width=150):
                    scale_k = gr.Number(2.0, label="k (-5 to 5)", elem_id="scale_k")
                    scale = gr.Button("scale dx, dy by k", size="sm", elem_id="scale")
                with gr.Column(scale=1, min_width=150):
                    angle = gr.Number(90.0, label="angle (degrees, -360 to 360)", elem_id="angle")
                    rotate = gr.Button("rotate dx, dy", size="sm", elem_id="rotate")
                with gr.Column(scale=1, min_width=150):
                    sigma = gr.Number(0.03, label="noise sigma (0 to 0.2)", elem_id="sigma")
                    noise = gr.Button("add noise to dx, dy", size="sm", elem_id="noise")
            with gr.Row():
                seed = gr.Number(0, label="seed (z, a whole number)", elem_id="seed")
                n_samples = gr.Number(8, label=f"futures (N, 1-{logic.MAX_FUTURES})", elem_id="n_samples")
                predict_btn = gr.Button("Predict", variant="primary", elem_id="predict")
                resample = gr.Button("Resample z", elem_id="resample")
            summary = gr.Markdown(elem_id="summary")
            # Titles go above the images, not in Gradio's labels, which cover the images' top left.
            gr.Markdown("**truth | original actions | your actions** (red border: predicted) **| physics under "
                        "your actions** (simulated data only)")
            compare = gr.Image(show_label=False, elem_classes="frame", elem_id="compare")
            gr.Markdown("**Left:** truth | the best of N (original actions). **Middle:** the model's N futures "
                        "with your actions, one z each. **Right:** physics: N futures with your actions, the "
                        "hidden causes re-drawn (simulated data only).")
            with gr.Row():
                best = gr.Image(show_label=False, elem_classes="frame", elem_id="best")
                futures = gr.Image(show_label=False, elem_classes="frame", elem_id="futures")
                physics_futures = gr.Image(show_label=False, elem_classes="frame", elem_id="physics_futures")
            gr.Markdown("**Uncertainty**: per-pixel std over the futures, averaged over frames, in grey levels "
                        "(one fixed scale; each map is titled underneath)")
            std = gr.Image(show_label=False, elem_classes="frame", elem_id="std", height=300)
            gr.Markdown("**Per step**: truth / original actions / your actions")
            steps = gr.Image(show_label=False, elem_classes="frame", elem_id="steps")
            step_plot = gr.Plot(label="per-step PSNR and SSIM", elem_id="step_plot")
        with gr.Tab("Training curves"):
            with_logs = [label for label, e in models.items() if e.log is not None]
            runs_dd = gr.Dropdown(with_logs, value=with_logs[:1], multiselect=True, label="Runs to overlay",
                                  elem_id="runs")
            curves = gr.Plot(label="KL, MSE, validation PSNR, teacher forcing, KL weight", elem_id="curves")

        seq_outputs = [ctx0, ctx1, truth, table, kin_note, quality]
        pred_inputs = [source_dd, index, model_dd, table, n_samples, seed]
        pred_outputs = [compare, futures, physics_futures, std, best, steps, step_plot, summary]
        source_dd.change(app.on_source, [source_dd, model_dd], [index, gallery, *seq_outputs])
        index.release(app.on_sequence, [source_dd, index, model_dd], seq_outputs)
        gallery.select(_picked, None, index).then(
            app.on_sequence, [source_dd, index, model_dd], seq_outputs)
        model_dd.change(app.on_sequence, [source_dd, index, model_dd], seq_outputs)
        for btn, kind, amount in [(zero, "zero", None), (reverse, "reverse", None), (scale, "scale", scale_k),
                                  (rotate, "rotate", angle), (noise, "noise", sigma), (reset, "reset", None)]:
            btn.click(lambda s, i, m, t, a, z, kind=kind: app.on_transform(kind, s, i, m, t, a, z),
                      [source_dd, index, model_dd, table, amount or scale_k, seed], table)
        table.input(app.on_table_input, [source_dd, index, model_dd, table], table)
        predict_btn.click(app.on_predict, pred_inputs, pred_outputs, api_name="predict", preprocess=False)
        resample.click(lambda: random.randrange(2**31), None, seed).then(app.on_predict, pred_inputs, pred_outputs,
                                                                          preprocess=False)
        runs_dd.change(app.on_curves, runs_dd, curves)
        demo.load(app.on_source, [source_dd, model_dd], [index, gallery, *seq_outputs]).then(app.on_curves, runs_dd, curves)
    return demo


def serving_policy(threads: int | None, concurrency: int | None) -> tuple[int, int]:
    """Intra-op threads per request and requests served at once. The default, chosen by
    measurement (bench/README.md, "The app under load"): one thread per request and as many
    requests at once as there are cores, so concurrent requests never oversubscribe the cores,
    which made each one many times slower on a loaded machine."""
    cores = os.cpu_count() or 1
    return threads or 1, concurrency or cores


def launch(data_dirs: list[str], runs_dirs: list[str], host: str | None, port: int | None, share: bool,
           keep_minutes: float = 10, threads: int | None = None, concurrency: int | None = None) -> None:
    threads, concurrency = serving_policy(threads, concurrency)
    torch.set_num_threads(threads)
    # Ctrl-C and SIGTERM set a flag rather than raise wherever the main thread happens to be
    # (a KeyboardInterrupt inside Gradio's start-up was swallowed and left the server running);
    # the server is closed once it is up, and the process exits normally, removing its folder.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    demo = build(data_dirs, runs_dirs, keep_minutes)
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    # quiet: Gradio's own lines would advise `share=True` in `launch()`; this app's flag is --share.
    _, local_url, share_url = demo.launch(server_name=host, server_port=port, share=share, theme=gr.themes.Soft(),
                                          css=CSS, allowed_paths=[tempfile.gettempdir()], quiet=True,
                                          prevent_thread_lock=True)
    public = f" and publicly on {share_url}" if share_url else " (add --share for a public link)"
    print(f"Running on {local_url}{public}; {threads} thread(s) per request, {concurrency} request(s) at once. "
          "Ctrl-C stops it.", flush=True)
    while not stop.wait(0.2):
        pass
    print("stopping the server", flush=True)
    demo.close()
