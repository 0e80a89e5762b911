"""``ROOT/dataset.json``: what a data set says about itself (the simulator writes it: generator,
seed, sizes, hidden causes, kinematics). Read without loading the physics engine."""
from __future__ import annotations

import json
from pathlib import Path

DATASET_JSON = "dataset.json"


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
