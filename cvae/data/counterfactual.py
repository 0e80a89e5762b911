"""Counterfactual truth and the distribution of true futures, for simulated sequences.

A simulated scene can be run again under other actions (counterfactual truth: the scene keeps its
own hidden causes, so there is one truth) or under the same actions with the hidden causes
re-drawn (:func:`true_futures`: other futures that were just as possible).

Real video cannot say what would have happened had the arm pushed another way; the simulator can.
A sequence of a data set that ``cvae.data.generate`` wrote is fully determined by the data set's
seed, its split and its index, so the same scene can be run again under any actions
(``simulator.simulate(..., actions=...)``). Sequences of any other data set (real BAIR) have no
such truth, and :func:`scene_of` returns None for them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bair import SPLITS, TRAJ_RE
from .info import read_info
from ..kinematics import ACTION_HOLD, KINEMATICS, MAX_DXY

ALTERNATIVES = ("reversed", "rotated", "random")


@dataclass(frozen=True)
class Scene:
    seed: int
    split_id: int
    index: int
    uncertainty: float = 0.0  # the data set's scale of hidden causes; absent from older data sets: 0


def scene_of(seq: str | Path) -> Scene | None:
    """The simulator's scene behind sequence folder ``ROOT/<split>/<trajectory>/<n>``, or None
    where the data set was not written by this simulator (no ``dataset.json`` in ROOT naming it
    and its kinematics)."""
    seq = Path(seq)
    root, split = seq.parent.parent.parent, seq.parent.parent.name
    info = read_info(root)
    if info is None or info.get("generator") != "cvae.data.simulator" or info.get("kinematics") != KINEMATICS:
        return None
    match = TRAJ_RE.match(seq.parent.name)
    if match is None or not seq.name.isdigit() or split not in SPLITS:
        return None
    index = int(match.group(1)) + int(seq.name)
    if index >= info.get("sizes", {}).get(split, 0):
        return None
    return Scene(int(info["seed"]), SPLITS.index(split), index, float(info.get("uncertainty", 0.0)))


def alternative_actions(actions: np.ndarray, kind: str, keep: int, seed: int = 0) -> np.ndarray:
    """Actions [T, 4] whose first ``keep`` rows (those that produced the context frames) are the
    original's and whose later motion (dx, dy) is changed; lift and grip stay.

    ``reversed``: the opposite direction; ``rotated``: turned 90 degrees; ``random``: a random
    policy (uniform dx, dy within BAIR's +-0.07, held over the same step pairs as BAIR's).
    """
    out = np.array(actions, dtype=np.float64)
    xy = out[keep:, :2]
    if kind == "reversed":
        xy *= -1
    elif kind == "rotated":
        xy[:] = np.stack([-xy[:, 1], xy[:, 0]], 1)
    elif kind == "random":
        rng = np.random.default_rng(seed)
        held = rng.uniform(-MAX_DXY, MAX_DXY, (math.ceil(len(out) / ACTION_HOLD), 2))
        xy[:] = np.repeat(held, ACTION_HOLD, 0)[keep : len(out)]  # held in BAIR's step pairs
    else:
        raise ValueError(f"unknown alternative {kind!r}: choose from {', '.join(ALTERNATIVES)}")
    return out


def resimulate(scene: Scene, actions: np.ndarray, draw: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, 64, 64, 3] and condition [T, 7] of ``scene`` run under ``actions`` [T, 4],
    with hidden causes of ``draw`` (0: the scene's own, as recorded in the data set)."""
    from .simulator import simulate  # pymunk, loaded only when a scene is run

    seq = simulate(scene.seed, scene.index, scene.split_id, n_frames=len(actions), actions=actions,
                   uncertainty=scene.uncertainty, draw=draw)
    return seq.frames, np.concatenate([seq.actions, seq.positions], 1)


def true_flows(scene: Scene, actions: np.ndarray, draw: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``scene`` under ``actions`` [T, 4] with hidden causes of ``draw`` (0: its own): frames uint8
    [T, 64, 64, 3], where each pixel of frames 1..T-1 was a frame before, float32 [T-1, 64, 64, 2]
    in pixels, and where that is known, bool [T-1, 64, 64] (``simulator.true_flow``)."""
    from .simulator import simulate

    seq = simulate(scene.seed, scene.index, scene.split_id, n_frames=len(actions), actions=actions,
                   uncertainty=scene.uncertainty, draw=draw, flows=True)
    return seq.frames, seq.flow, seq.flow_known


def true_futures(scene: Scene, actions: np.ndarray, k: int) -> np.ndarray:
    """Frames uint8 [k, T, 64, 64, 3]: ``scene`` under ``actions`` [T, 4] with its hidden causes
    re-drawn k times (draws 1..k; the recorded sequence is draw 0). All k are equal where the
    data set has no hidden causes (uncertainty 0)."""
    return np.stack([resimulate(scene, actions, draw)[0] for draw in range(1, k + 1)])


def true_futures_flows(scene: Scene, actions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`true_futures` with each one's true flows: frames uint8 [k, T, 64, 64, 3],
    displacements float32 [k, T-1, 64, 64, 2] and where they are known, bool [k, T-1, 64, 64]
    (:func:`true_flows` of draws 1..k), from the same runs."""
    runs = [true_flows(scene, actions, draw) for draw in range(1, k + 1)]
    return tuple(np.stack(parts) for parts in zip(*runs))
