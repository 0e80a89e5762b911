"""Simulator sequences/s, and loader throughput from PNGs versus the packed cache, side by side.

    python bench/data.py [--root data/sim] [--sequences 200]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import record

from cvae.data.bair import list_sequences, read_sequence
from cvae.data.dataset import BairDataset
from cvae.data.generate import generate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", default="data/sim", help="a data set to read (its train split)")
    p.add_argument("--sequences", type=int, default=200, help="sequences to simulate and to read")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    stats = generate(tmp / "sim", {"train": args.sequences, "validate": 0, "test": 0}, progress=False)
    sim_rate = args.sequences / (time.perf_counter() - started)
    shutil.rmtree(tmp)

    seqs = list_sequences(args.root, "train")[: args.sequences]
    started = time.perf_counter()
    for s in seqs:
        frames, cond = read_sequence(s)
        torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
    png_rate = len(seqs) / (time.perf_counter() - started)
    ds = BairDataset(args.root, "train", seq_len=30)  # builds the cache if needed, outside the timing
    rounds = 5
    started = time.perf_counter()
    for _ in range(rounds):
        for i in range(len(seqs)):
            ds[i]
    cache_rate = rounds * len(seqs) / (time.perf_counter() - started)
    row = record("data", torch.device("cpu"), simulator_seq_per_s=round(sim_rate, 1),
                 simulator_contact_share=stats["contact_share"]["train"],
                 png_seq_per_s=round(png_rate, 1), cache_seq_per_s=round(cache_rate, 1),
                 cache_speedup=round(cache_rate / png_rate, 1), frames_per_seq=30)
    print(f"simulator: {row['simulator_seq_per_s']} seq/s (30 frames, all cores); "
          f"contact share {row['simulator_contact_share']:.2f}")
    print(f"loader, one process, 30-frame sequences: PNG {row['png_seq_per_s']} seq/s, "
          f"cache {row['cache_seq_per_s']} seq/s: {row['cache_speedup']}x")


if __name__ == "__main__":
    main()
