"""Where one Predict's time goes, in-process and without Gradio: the model (N futures x 10
frames under the original and the edited actions), the physics (the scene and N re-simulations
under the edits), and the views (GIFs, maps, plot), each timed on its own, then the whole
``logic.run_prediction`` + ``views.prediction_views`` as the app runs them, and that again
("again": the page's loop, another edit after a Predict, whose recorded actions' futures are kept).

With several ``--ckpt`` the rounds are interleaved, so their times are side by side under the
same load. ``--unedited`` leaves the actions as recorded: a first Predict, before any edit.

    python bench/predict_stages.py [--ckpt assets/model OTHER ...] [--unedited] [--threads 1] [--n 8] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import record

from cvae.app import logic, views


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the app's default: 1)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ckpt", nargs="+", help="checkpoint folders (default: the bundled model)")
    p.add_argument("--unedited", action="store_true", help="the recorded actions, not reversed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    source = logic.find_sources([])["bundled test sequences"]
    paths = args.ckpt or [str(next(iter(logic.find_models([]).values())).path)]
    models = [logic.cached_model(Path(c)) for c in paths]
    frames, cond = logic.load_sequence(source.sequences[0])
    rows = logic.table_rows(cond, 2, 10)
    if not args.unedited:
        for r in rows:
            r[2], r[3] = -r[2], -r[3]
    table = {"headers": logic.HEADERS, "data": rows}
    edited = logic.edited_conditions(cond, logic.parse_table(table, 2, 10), 2, source.kinematics)[:12]
    outputs = views.Outputs()
    names = ("model", "physics", "views", "whole", "again")
    stages = [{name: [] for name in names} for _ in models]
    for r in range(args.repeats + 1):
        for model, times in zip(models, stages):
            logic.forget_kept_futures()
            t0 = time.perf_counter()
            pred = logic.predict(model, frames[:12], cond[:12], edited, args.n, r)
            t1 = time.perf_counter()
            world = (logic.physics(source.sequences[0], edited),
                     logic.physics_futures(source.sequences[0], edited, args.n))
            t2 = time.perf_counter()
            pred = logic.with_physics(pred, 2, *world)
            views.prediction_views(pred, 2, 10, outputs.new())
            logic.forget_kept_futures()
            t3 = time.perf_counter()
            whole = logic.run_prediction(source, 0, model, 10, table, args.n, r)
            views.prediction_views(whole, 2, 10, outputs.new())
            t4 = time.perf_counter()
            again = logic.run_prediction(source, 0, model, 10, table, args.n, r)
            views.prediction_views(again, 2, 10, outputs.new())
            t5 = time.perf_counter()
            if r:  # the first round warms up
                for name, v in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                    times[name].append(v)
    for path, times in zip(paths, stages):
        p50 = {name: round(float(np.median(v)), 3) for name, v in times.items()}
        record("predict_stages", torch.device("cpu"), ckpt=path, edited=not args.unedited, threads=args.threads,
               n_futures=args.n, repeats=args.repeats, **{f"{k}_p50_s": v for k, v in p50.items()})
        print(f"{path}: {args.threads} thread(s), N={args.n}, {'unedited' if args.unedited else 'edited'}, "
              f"p50 of {args.repeats}: " + ", ".join(f"{k} {v:.3f} s" for k, v in p50.items())
              + " (whole: physics beside the model, as the app runs)")


if __name__ == "__main__":
    main()
