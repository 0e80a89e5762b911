"""The app under repeated use: server memory and temporary files over many Predicts.

Starts the app on a free loopback port with a second checkpoint under ``--runs`` (a copy of the
bundled one, so two models are loaded), sends ``--predicts`` predictions through gradio_client
(cycling over all 16 bundled sequences, both models and N = 1, 4, 8, 16, edited actions), and
records the server's resident memory and the bytes under its output and Gradio cache folders
every ``--every``. The server must remove its own output folder when it exits.

    python bench/app_soak.py [--predicts 300] [--every 25] [--keep-minutes 10]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from common import record

from cvae.app import logic
from cvae.app.process import start_app


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def folder_mib(folders: list[Path]) -> float:
    return sum(f.stat().st_size for d in folders if d.exists() for f in d.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--predicts", type=int, default=300)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--keep-minutes", type=float, default=10, help="passed to demo_app.py")
    args = p.parse_args()
    from gradio_client import Client

    tmp = Path(tempfile.mkdtemp(prefix="soak_"))
    runs = tmp / "runs"
    shutil.copytree(logic.BUNDLED_MODEL, runs / "second")
    server, url = start_app(["--keep-minutes", str(args.keep_minutes), "--runs", str(runs)],
                            env={"TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio")})
    try:
        client = Client(url, verbose=False)
        source = "bundled test sequences"
        models = list(logic.find_models([runs]))
        sequences = logic.find_sources([])[source].sequences
        tables = []
        for seq in sequences:
            rows = logic.table_rows(logic.load_sequence(seq)[1], 2, 10)
            for r in rows:
                r[2], r[3] = -r[2], -r[3]
            tables.append({"headers": logic.HEADERS, "data": rows})
        samples = [(0, rss_mib(server.pid), folder_mib([tmp / "gradio", *tmp.glob("cvae_app_*")]))]
        for k in range(1, args.predicts + 1):
            i = k % len(sequences)
            client.predict(source, i, models[k % 2], tables[i], (1, 4, 8, 16)[k % 4], k, api_name="/predict")
            if k % args.every == 0:
                samples.append((k, rss_mib(server.pid), folder_mib([tmp / "gradio", *tmp.glob("cvae_app_*")])))
                print(f"{k} predicts: server RSS {samples[-1][1]:.0f} MiB, temporary files {samples[-1][2]:.1f} MiB")
    finally:
        server.terminate()
        server.wait(timeout=30)
    left = [p.name for p in tmp.glob("cvae_app_*")]
    half = next(r for k, r, _ in samples if k >= args.predicts // 2)
    print(f"RSS at {args.predicts // 2} predicts {half:.0f} MiB, at {samples[-1][0]} {samples[-1][1]:.0f} MiB "
          f"({samples[-1][1] / half - 1:+.1%} over the second half); output folder left behind: {left or 'none'}")
    record("app_soak", torch.device("cpu"), predicts=args.predicts, keep_minutes=args.keep_minutes, models=2,
           n_futures=[1, 4, 8, 16], rss_mib=[round(r, 1) for _, r, _ in samples],
           temp_mib=[round(t, 2) for _, _, t in samples], at=[k for k, _, _ in samples], folder_left=bool(left))


if __name__ == "__main__":
    main()
