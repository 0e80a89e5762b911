"""Train several candidate recipes side by side, at the same step count, on one machine.

Each candidate is ``NAME=FLAGS`` (``train_cli.py`` flags, on top of ``--preset``); all start
together, one process each, with ``--threads`` intra-op threads apiece so they do not fight
over the cores, and write to ``OUT/NAME``. Past ``--deadline`` seconds every process still
running gets SIGTERM, which saves its ``last/`` checkpoint (resumable with ``--resume``); the
table then says which did not finish. Score them afterwards with ``train_cli.py eval``, and
put the scores side by side with ``--report EVAL_JSON...`` (a markdown table of the figures the
bundled model is held to).

    python bench/sweep.py --out runs/sweep --common "--epochs 40" \\
        base= flow="--output flow" lp="--prior learned --kl-anneal none --kl-weight 1e-4"
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidates", nargs="*", help="NAME=FLAGS, e.g. flow='--output flow'")
    p.add_argument("--report", nargs="+", metavar="EVAL_JSON", help="print a table of these eval.json files and exit")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--deadline", type=float, default=0, help="seconds before running processes get SIGTERM (0: none)")
    p.add_argument("--common", default="", help="flags every candidate gets, e.g. '--epochs 40 --data data/sim'")
    args = p.parse_args()
    if args.report:
        missing = [path for path in args.report if not Path(path).is_file()]
        if missing:
            p.error(f"--report: no eval.json at {', '.join(missing)} (train_cli.py eval writes CKPT/eval/eval.json)")
        print(report(args.report))
        return 0
    common = shlex.split(args.common)
    procs = {}
    started = time.time()
    for spec in args.candidates:
        name, _, flags = spec.partition("=")
        cmd = [sys.executable, "train_cli.py", "--preset", args.preset, "--out", f"{args.out}/{name}",
               *common, *shlex.split(flags)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        log = open(Path(args.out) / f"{name}.out", "w")
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), cmd)
        print(" ".join(cmd), flush=True)
    stopped = set()
    while any(proc.poll() is None for proc, _ in procs.values()):
        if args.deadline and time.time() - started > args.deadline:
            for name, (proc, _) in procs.items():
                if proc.poll() is None and name not in stopped:
                    proc.send_signal(signal.SIGTERM)
                    stopped.add(name)
        time.sleep(2)
    print(f"\n{'candidate':12s} {'exit':>4s} {'steps':>6s} {'best val PSNR':>13s} {'seq/s':>7s}  {'finished'}")
    for name, (proc, _) in procs.items():
        log = Path(args.out) / name / "log.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
        steps = max((r["step"] for r in records), default=0)
        vals = [r["val_psnr"] for r in records if r.get("val_psnr") is not None]
        rates = [r["seq_per_s"] for r in records if r.get("seq_per_s")]
        best = f"{max(vals):.2f}" if vals else "-"
        rate = f"{sorted(rates)[len(rates) // 2]:.1f}" if rates else "-"
        done = "no (stopped)" if name in stopped else "yes"
        print(f"{name:12s} {proc.returncode:4d} {steps:6d} {best:>13s} {rate:>7s}  {done}")
    print(f"{time.time() - started:.0f} s in all")
    return 0


def report(paths: list[str]) -> str:
    """One markdown row per eval.json: the figures of issue 13's targets, each as the margin the
    target is stated in."""
    head = ("| eval | PSNR (copy-last) | shuffled cost | counterfactual - copy | best10 - one | coverage - one "
            "| spread ratio | where the truths differ | agreement | misplaced spread | sharpness min-max | EE - copy "
            "| moving best10 - copy |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for path in paths:
        r = json.loads(Path(path).read_text())
        d, cf = r.get("distribution") or {}, (r.get("counterfactual") or {}).get("all") or {}

        def f(v: float | None, fmt: str = "+.2f") -> str:
            return "-" if v is None else format(v, fmt)

        sharp = r.get("sharpness_per_step") or []
        lines.append("| " + " | ".join([
            path, f"{r['psnr']:.2f} ({r['copy_last_psnr']:.2f})", f(r["psnr"] - r["shuffled_cond_psnr"]),
            f(cf["psnr"] - cf["copy_last_psnr"]) if cf else "-",
            f(r["best_of_n_psnr"] - r["psnr"]) if r.get("best_of_n_psnr") is not None else "-",
            f(d["coverage_psnr"] - d["one_sample_psnr"]) if d else "-",
            f(d.get("spread_ratio"), ".2f"), f(d.get("branch_spread_ratio"), ".2f"), f(d.get("agreement"), ".2f"),
            f(d.get("misplaced_share"), ".0%"),
            f"{min(sharp):.2f}-{max(sharp):.2f}" if sharp else "-",
            f(r["ee_psnr"] - r["copy_last_ee_psnr"]) if r.get("ee_psnr") is not None else "-",
            f(r["moving_best_of_n_psnr"] - r["copy_last_moving_psnr"]) if r.get("moving_best_of_n_psnr") else "-",
        ]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
