"""``ROOT/dataset.json``: what a data set says about itself (the simulator writes it: generator,
seed, sizes, hidden causes, kinematics). Read without loading the physics engine."""
from __future__ import annotations

import json
from pathlib import Path

DATASET_JSON = "dataset.json"
RUN_STATS = ("seconds", "sequences_per_s", "workers")  # how a generation ran, not what it made


def content_bytes(root: str | Path) -> bytes | None:
    """``dataset.json``'s bytes less its ``RUN_STATS``, for a content fingerprint: generating the
    same data again takes another number of seconds, and must not look like other data. None
    where there is no such file; its raw bytes where it is not a JSON object."""
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        return None
    raw = path.read_bytes()
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw
    if not isinstance(info, dict):
        return raw
    return json.dumps({k: v for k, v in info.items() if k not in RUN_STATS}, sort_keys=True).encode()


def read_info(root: str | Path) -> dict | None:
    """The data set's own description, or None where it has none (real BAIR)."""
    try:
        info = json.loads((Path(root) / DATASET_JSON).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def read_kinematics(root: str | Path) -> dict | None:
    """The documented kinematics of a data set, where its ``dataset.json`` states them."""
    return (read_info(root) or {}).get("kinematics")
