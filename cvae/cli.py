"""The ``cvae`` command: ``train``, ``eval``, ``export``, ``data`` and ``app``.

``train_cli.py`` and ``demo_app.py`` are shims over it (``train_cli.py`` with ``train`` as the
default). A :class:`~cvae.errors.CvaeError` prints as one line and exits 2 (an interrupted run:
128 + the signal); any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .config import PRESETS, Config, preset
from .errors import ConfigError, CvaeError
from .model.heads import RESAMPLE
from .model.svg import SAMPLING


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def whole(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``, refused with the flag's rule otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per Config field (``--kl-anneal``, ``--cond-maps true``, ...); the benches use it too."""
    group = p.add_argument_group("config fields (override the preset)")
    for f in dataclasses.fields(Config):
        kind = _bool if f.type in (bool, "bool") else {"int": int, "float": float}.get(str(f.type), str)
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=argparse.SUPPRESS,
                           metavar=f.name.upper(), help=f"default {f.default!r}")


def config_overrides(args: argparse.Namespace) -> dict:
    """The Config fields given on the command line."""
    names = {f.name for f in dataclasses.fields(Config)}
    return {k: v for k, v in vars(args).items() if k in names}


def train_command(args: argparse.Namespace) -> int:
    from . import checkpoint
    from .model.svg import ModelConfig
    from .run import RunFolder
    from .train import end_runtime, train

    overrides = config_overrides(args)
    run = RunFolder(overrides.get("out", preset(args.preset).out))
    if args.resume and run.has_checkpoint():
        cfg = Config.from_dict({**checkpoint.read_meta(run.last)["config"], **overrides}).validate()
    elif overrides.get("init"):  # fine-tuning: the model's shape is the checkpoint's unless a flag says otherwise
        shape = dataclasses.asdict(ModelConfig.from_dict(checkpoint.read_meta(overrides["init"])["config"]))
        cfg = preset(args.preset, **{**shape, **overrides})
    else:
        cfg = preset(args.preset, **overrides)
    try:
        train(cfg, resume=args.resume, stop_at_step=args.stop_at_step)
    finally:
        end_runtime()
    print(f"done: checkpoints and log.jsonl in {cfg.out}")
    return 0


def eval_folder(ckpt: Path, data: str, split: str, data_fingerprint: str) -> Path:
    """``CKPT/eval``, unless it holds a score measured on other data: that score stays, and this
    one goes beside it, so evaluating elsewhere never silently replaces a model's own score."""
    home = ckpt / "eval"
    try:
        old = json.loads((home / "eval.json").read_text()).get("extra", {})
    except (OSError, json.JSONDecodeError):
        return home
    same = (old.get("split") == split and (old.get("data_fingerprint") == data_fingerprint
            if old.get("data_fingerprint") else Path(old.get("data", "")).resolve() == Path(data).resolve()))
    if same:
        return home
    other = ckpt / f"eval-{Path(data).resolve().name}-{split}"
    print(f"note: {home} holds the score on {old.get('data')} ({old.get('split')}); this one goes to {other}")
    return other


def eval_command(args: argparse.Namespace) -> int:
    import torch

    from .artifacts import comparison_video, read_log, rows, strip, to_uint8, write_curves_html, write_gif, write_png
    from .checkpoint import find_log, load_model
    from .data.bair import fingerprint
    from .data.dataset import BairDataset
    from .data.info import read_kinematics
    from .evaluate import evaluate
    from .kinematics import KINEMATICS
    from .physics_eval import counterfactual, distribution

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_model(args.ckpt, device)
    model = model.set_channels_last()
    cfg = meta["config"]
    n_future = args.n_future or cfg["n_future"]
    data = args.data or cfg["data"]
    ds = BairDataset(data, args.split, model.n_past + n_future)
    if not 0 <= args.seq < len(ds):
        raise ConfigError(f"--seq {args.seq} is out of range: the split has {len(ds)} sequences")
    data_fingerprint = fingerprint(data, args.split)
    out = Path(args.out) if args.out else eval_folder(Path(args.ckpt), data, args.split, data_fingerprint)
    result = evaluate(model, ds, n_future, args.samples, args.seed, args.limit, baselines=True,
                      ee_window=read_kinematics(data) == KINEMATICS, device=device, progress=True)
    result.counterfactual = counterfactual(model, ds, n_future, args.seed, args.limit, device=device, progress=True)
    result.distribution = distribution(model, ds, args.truths, args.samples, n_future, args.seed, args.limit,
                                       workers=args.workers, device=device, progress=True)
    result.extra = {"checkpoint": str(args.ckpt), "data": str(data), "split": args.split,
                    "data_fingerprint": data_fingerprint, "epoch": meta.get("epoch")}
    result.to_json(out / "eval.json")
    print(result.table())
    x, c = ds[args.seq]
    x = x.to(device)
    pred = model.predict(x[None, : model.n_past], c[None].to(device), n_future, max(1, args.gif_samples), args.seed)[0]
    truth = to_uint8(x[: model.n_past + n_future])
    preds = [to_uint8(p) for p in pred]
    write_gif(out / "prediction.gif", comparison_video(truth, preds, model.n_past))
    write_png(out / "prediction_steps.png", rows([strip(truth[model.n_past:]), strip(preds[0])]))
    log = find_log(args.ckpt)
    if log is not None:
        write_curves_html(out / "curves.html", {log.parent.name: read_log(log)})
    print(f"wrote {out}/eval.json, prediction.gif, prediction_steps.png" + (", curves.html" if log is not None else ""))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from .checkpoint import export

    settings = {k: getattr(args, k) for k in SAMPLING if getattr(args, k) is not None}
    print(f"exported {export(args.ckpt, args.out, force=args.force, settings=settings)}")
    if settings:
        said = ", ".join(f"{k} {v}" for k, v in settings.items())
        print(f"with {said}: evaluate it afresh (train_cli.py eval --ckpt {args.out})")
    return 0


def fit_spread_command(args: argparse.Namespace) -> int:
    from .spread_fit import fit_spread

    out = fit_spread(args.ckpt, args.data, args.out, args.scenes, args.steps, args.width, args.quantile, args.gain,
                     args.base, args.seed, args.workers, args.force, args.cache, progress=True)
    print(f"wrote {out}: evaluate it (train_cli.py eval --ckpt {out})")
    return 0


def app_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .app.ui import launch

    launch(args.data, args.runs, args.host, args.port, args.share, args.keep_minutes, args.threads, args.concurrency)
    return 0


# export's flag for each field of ``svg.SAMPLING``: its argparse keywords and what the field does
EXPORT_FLAGS = {
    "flow_deadzone": ({"type": float, "metavar": "PX"}, "a flow head's displacements of PX or less set to 0"),
    "z_hold": ({"type": _bool, "metavar": "BOOL"}, "a future draws its noise once and holds it"),
    "z_scale": ({"type": float, "metavar": "S"}, "the model's noise times S at prediction"),
    "arm_calm": ({"type": _bool, "metavar": "BOOL"},
                 "every future takes a noiseless future's pixels where the arm is or has been"),
    "map_noise_block": ({"type": whole(1), "metavar": "B"}, "the spatial latent's noise one draw per B x B cells"),
    "flow_resample": ({"choices": RESAMPLE}, "how a flow head samples moved frames between pixels"),
    "carry_pool": ({"type": whole(0), "metavar": "PX"},
                   "the carried motion evened over each moving piece and PX round it"),
    "glide_noise_only": ({"type": _bool, "metavar": "BOOL"},
                         "a future's noise reaches only the carried motion's mask logit"),
    "carry_off_arm": ({"type": _bool, "metavar": "BOOL"}, "the carried motion shut where the arm is"),
    "mask_temperature": ({"type": float, "metavar": "T"},
                         "a flow head's mask logits x T: > 1 each pixel nearer one source, fewer blended ghosts"),
    "spread_gain": ({"type": float, "metavar": "G"}, "a spread head's std map x G is what the futures widen to"),
    "spread_base": ({"type": float, "metavar": "B"}, "the share of the model's own std map a spread head keeps"),
    "spread_reference": ({"type": whole(2), "metavar": "N"},
                         "futures a spread head takes the model's std map over"),
    "spread_select": ({"type": whole(0), "metavar": "S"},
                      "futures drawn, those shown chosen so their std map follows a spread head's (0: off)"),
}


def parser(prog: str = "cvae") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train, evaluate and explore the action-conditioned CVAE.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (the default command of train_cli.py)")
    t.add_argument("--preset", choices=list(PRESETS), default="cpu",
                   help="cpu: the light model of the bundled checkpoint; lab: the course lab; svg-lp: SVG-LP")
    t.add_argument("--resume", action="store_true", help="continue OUT/last exactly where it stopped")
    t.add_argument("--stop-at-step", type=whole(1), default=None, metavar="STEP",
                   help="save and stop once STEP steps are done (epoch E ends at E x iters-per-epoch), "
                        "without reshaping the schedules as a smaller --epochs would; --resume goes on")
    add_config_flags(t)
    e = sub.add_parser("eval", help="score a checkpoint under the lab protocol, with baselines and artifacts")
    e.add_argument("--ckpt", required=True, help="checkpoint folder, e.g. runs/cpu/best or assets/model")
    e.add_argument("--data", help="data root (default: the one the model trained on)")
    e.add_argument("--split", default="test", choices=["train", "validate", "test"])
    e.add_argument("--samples", type=whole(1), default=10, help="samples per sequence for best/mean-of-N")
    e.add_argument("--n-future", type=whole(0), default=0, help="frames to predict (default 0: the training setting)")
    e.add_argument("--limit", type=whole(0), default=0, help="score only the first N sequences (0: all)")
    e.add_argument("--seed", type=whole(0), default=0)
    e.add_argument("--truths", type=whole(0), default=10,
                   help="simulated data with hidden causes: true futures re-simulated per scene, and --samples "
                        "more for a perfect sampler scored beside the model (0: skip)")
    e.add_argument("--workers", type=whole(1), default=os.cpu_count() or 1, help="processes re-simulating true futures")
    e.add_argument("--seq", type=whole(0), default=0, help="test sequence for the GIF and the frame strip")
    e.add_argument("--gif-samples", type=whole(1), default=3)
    e.add_argument("--out", help="output folder (default: CKPT/eval, or beside it for other data)")
    x = sub.add_parser("export", help="copy a checkpoint for inference only (weights, meta, log, eval)")
    x.add_argument("--ckpt", required=True)
    x.add_argument("--out", required=True, help="a new folder or an earlier export, e.g. assets/model")
    x.add_argument("--force", action="store_true", help="replace --out even if it is not an earlier export")
    for name in SAMPLING:  # one flag per field an export may set; a field without a line here is a KeyError
        keywords, what = EXPORT_FLAGS[name]
        x.add_argument(f"--{name.replace('_', '-')}", default=None, help=f"set the copy's {name} ({what}; no weight changes)",
                       **keywords)
    f = sub.add_parser("fit-spread", help="fit a spread head to a trained model's futures (simulated data with "
                                          "hidden causes) and write the model with it")
    f.add_argument("--ckpt", required=True, help="the trained checkpoint, e.g. runs/cpu/best")
    f.add_argument("--data", default="data/sim", help="simulated data; its training scenes are re-run")
    f.add_argument("--out", required=True, help="a new folder for the model with its head")
    f.add_argument("--scenes", type=whole(1), default=1024, help="training scenes fitted on (~1 s each on a core)")
    f.add_argument("--steps", type=whole(1), default=2500, help="fitting steps of 32 frames (~1 s each on a core)")
    f.add_argument("--width", type=whole(1), default=40, help="the head's channels")
    f.add_argument("--quantile", type=float, default=0.0,
                   help="fit this quantile of the truths' spread (pinball loss), not its mean (0)")
    f.add_argument("--gain", type=float, default=2.0, help="the futures' std map widens to the head's x this")
    f.add_argument("--base", type=float, default=0.7, help="... and keeps this share of the model's own")
    f.add_argument("--seed", type=whole(0), default=0)
    f.add_argument("--workers", type=whole(1), default=os.cpu_count() or 1, help="processes re-simulating true futures")
    f.add_argument("--force", action="store_true", help="replace --out even if it is not an earlier export")
    f.add_argument("--cache", default="", metavar="FILE",
                   help="keep the re-run scenes' examples here (1.7 GB per 1024 scenes), so a refit with another "
                        "--quantile, --steps or --width skips re-running them")
    sub.add_parser("data", help="generate, convert, check, cache and preview data sets (python -m cvae.data)",
                   add_help=False)
    a = sub.add_parser("app", help="open the Gradio app")
    a.add_argument("--data", action="append", default=[], help="a data set in the processed BAIR layout (repeatable)")
    a.add_argument("--runs", action="append", default=[], help="a folder searched for checkpoints (repeatable)")
    a.add_argument("--host", default=None, help="server name, e.g. 0.0.0.0 (Gradio's default: 127.0.0.1)")
    a.add_argument("--port", type=whole(1), default=None, help="port (Gradio's default: 7860 or the next free one)")
    a.add_argument("--share", action="store_true", help="create a public Gradio share link")
    a.add_argument("--threads", type=whole(1), default=None,
                   help="torch threads per request (default 1: see bench/README.md, 'The app under load')")
    a.add_argument("--concurrency", type=whole(1), default=None,
                   help="requests served at once (default: the number of cores)")
    a.add_argument("--keep-minutes", type=float, default=10,
                   help="delete generated GIFs and images older than this (default 10), so disk use stays bounded")
    return p


COMMANDS = {"train": train_command, "eval": eval_command, "export": export_command, "fit-spread": fit_spread_command,
            "app": app_command}


def main(argv: list[str] | None = None, prog: str = "cvae", default: str | None = None) -> int:
    """Run one command; ``default`` is the command taken when the first word names none."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if default and (not argv or argv[0] not in (*COMMANDS, "data", "-h", "--help")):
        argv.insert(0, default)
    try:
        if argv and argv[0] == "data":
            from .data.__main__ import main as data_main

            return data_main(argv[1:])
        args = parser(prog).parse_args(argv)
        return COMMANDS[args.cmd](args)
    except CvaeError as err:
        print(f"{err.label}: {err}", file=sys.stderr)
        return err.exit_code
