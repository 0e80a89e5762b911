"""The app under repeated use: server memory and temporary files over many Predicts.

Starts ``demo_app.py`` on a free loopback port, sends ``--predicts`` predictions through
gradio_client (alternating sequences, 8 futures, edited actions), and records the server's
resident memory and the bytes under its output and Gradio cache folders every ``--every``.

    python bench/app_soak.py [--predicts 200] [--every 25] [--keep-minutes 10]
"""
from __future__ import annotations

import argparse
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
    p.add_argument("--predicts", type=int, default=200)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--keep-minutes", type=float, default=10, help="passed to demo_app.py")
    args = p.parse_args()
    from gradio_client import Client

    tmp = Path(tempfile.mkdtemp(prefix="soak_"))
    server, url = start_app(["--keep-minutes", str(args.keep_minutes)],
                            env={"TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio")})
    try:
        client = Client(url, verbose=False)
        source = "bundled test sequences"
        model = next(iter(logic.find_models([])))
        sequences = logic.find_sources([])[source].sequences
        tables = []
        for i in range(4):
            _, cond = logic.load_sequence(sequences[i])
            rows = logic.table_rows(cond, 2, 10)
            for r in rows:
                r[2], r[3] = -r[2], -r[3]
            tables.append({"headers": logic.HEADERS, "data": rows})
        samples = [(0, rss_mib(server.pid), folder_mib([tmp]))]
        for k in range(1, args.predicts + 1):
            client.predict(source, k % 4, model, tables[k % 4], 8, k, api_name="/predict")
            if k % args.every == 0:
                samples.append((k, rss_mib(server.pid), folder_mib([tmp])))
                print(f"{k} predicts: server RSS {samples[-1][1]:.0f} MiB, temporary files {samples[-1][2]:.1f} MiB")
    finally:
        server.terminate()
        server.wait(timeout=30)
    record("app_soak", torch.device("cpu"), predicts=args.predicts, keep_minutes=args.keep_minutes,
           rss_mib=[round(r, 1) for _, r, _ in samples], temp_mib=[round(t, 2) for _, _, t in samples],
           at=[k for k, _, _ in samples])


if __name__ == "__main__":
    main()
