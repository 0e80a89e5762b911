"""What every benchmark records beside its numbers: when, where, and how it was run."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results.jsonl"
ROOT = Path(__file__).resolve().parent.parent


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def record(name: str, device: torch.device, **numbers: object) -> dict:
    """Append one result to bench/results.jsonl and return it."""
    row = {"bench": name, "date": datetime.date.today().isoformat(), "machine": machine(device),
           "command": "python " + " ".join(sys.argv), **numbers}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row
