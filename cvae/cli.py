"""Command line behind ``train_cli.py``: ``train`` (the default) and ``eval``."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from .config import PRESETS, Config, preset


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


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
    from .train import train

    overrides = config_overrides(args)
    last = Path(overrides.get("out", preset(args.preset).out)) / "last"
    if args.resume and last.exists():
        cfg = Config.from_dict({**checkpoint.read_meta(last)["config"], **overrides}).validate()
    else:
        if args.resume:
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        cfg = preset(args.preset, **overrides)
    train(cfg, resume=args.resume)
    print(f"done: checkpoints and log.jsonl in {cfg.out}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    import torch

    from .artifacts import comparison_video, read_log, rows, strip, to_uint8, write_curves_html, write_gif, write_png
    from .checkpoint import find_log, load_model
    from .data.dataset import BairDataset
    from .data.generate import read_kinematics
    from .evaluate import evaluate
    from .kinematics import KINEMATICS
    from .physics_eval import counterfactual, distribution

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_model(args.ckpt, device)
    cfg = meta["config"]
    n_future = args.n_future or cfg["n_future"]
    data = args.data or cfg["data"]
    ds = BairDataset(data, args.split, model.n_past + n_future)
    if not 0 <= args.seq < len(ds):
        raise ValueError(f"--seq {args.seq} is out of range: the split has {len(ds)} sequences")
    out = Path(args.out) if args.out else Path(args.ckpt) / "eval"
    result = evaluate(model, ds, n_future, args.samples, args.seed, args.limit, baselines=True,
                      ee_window=read_kinematics(data) == KINEMATICS, device=device)
    result.counterfactual = counterfactual(model, ds, n_future, args.seed, args.limit, device=device)
    result.distribution = distribution(model, ds, args.truths, args.samples, n_future, args.seed, args.limit,
                                       workers=args.workers, device=device)
    result.extra = {"checkpoint": str(args.ckpt), "data": str(data), "split": args.split, "epoch": meta.get("epoch")}
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "eval", "export", "-h", "--help"):
        argv.insert(0, "train")
    p = argparse.ArgumentParser(prog="train_cli.py", description="Train and evaluate the action-conditioned CVAE.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (the default command)")
    t.add_argument("--preset", choices=list(PRESETS), default="cpu",
                   help="cpu: the light model of the bundled checkpoint; lab: the course lab; svg-lp: SVG-LP")
    t.add_argument("--resume", action="store_true", help="continue OUT/last exactly where it stopped")
    add_config_flags(t)
    e = sub.add_parser("eval", help="score a checkpoint under the lab protocol, with baselines and artifacts")
    e.add_argument("--ckpt", required=True, help="checkpoint folder, e.g. runs/cpu/best or assets/model")
    e.add_argument("--data", help="data root (default: the one the model trained on)")
    e.add_argument("--split", default="test", choices=["train", "validate", "test"])
    e.add_argument("--samples", type=int, default=10, help="samples per sequence for best/mean-of-N")
    e.add_argument("--n-future", type=int, default=0, help="frames to predict (default: the training setting)")
    e.add_argument("--limit", type=int, default=0, help="score only the first N sequences (0: all)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--truths", type=int, default=10,
                   help="simulated data with hidden causes: true futures re-simulated per scene (0: skip)")
    e.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes re-simulating true futures")
    e.add_argument("--seq", type=int, default=0, help="test sequence for the GIF and the frame strip")
    e.add_argument("--gif-samples", type=int, default=3)
    e.add_argument("--out", help="output folder (default: CKPT/eval)")
    x = sub.add_parser("export", help="copy a checkpoint for inference only (weights, meta, log, eval)")
    x.add_argument("--ckpt", required=True)
    x.add_argument("--out", required=True, help="e.g. assets/model")
    args = p.parse_args(argv)
    from .checkpoint import CheckpointError
    from .data.bair import DataError
    from .train import TrainingDiverged

    try:
        if args.cmd == "export":
            from .checkpoint import export

            print(f"exported {export(args.ckpt, args.out)}")
            return 0
        return train_command(args) if args.cmd == "train" else eval_command(args)
    except (DataError, CheckpointError, TrainingDiverged, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
