"""The condition fed to the model at every step: BAIR's 4-d action, then its 3-d end-effector
position, 7 columns in all. Pure numpy (and slicing that works on torch tensors too), so every
reader, writer and view of the condition takes its layout from here.

  - action ``dx, dy`` (continuous, about +-0.07 per step on BAIR), ``lift`` and ``grip`` (small
    whole numbers);
  - position ``x, y, z`` in metres, as the robot measured it.
"""
from __future__ import annotations

import numpy as np

ACTION_COLUMNS = ("dx", "dy", "lift", "grip")
POSITION_COLUMNS = ("x", "y", "z")
COLUMNS = ACTION_COLUMNS + POSITION_COLUMNS
ACTION_DIM, POSITION_DIM = len(ACTION_COLUMNS), len(POSITION_COLUMNS)
COND_DIM = ACTION_DIM + POSITION_DIM
ACTIONS = slice(0, ACTION_DIM)  # cond[..., ACTIONS]
POSITIONS = slice(ACTION_DIM, COND_DIM)  # cond[..., POSITIONS]
XY = slice(ACTION_DIM, ACTION_DIM + 2)  # the end effector's (x, y) within cond
Z = ACTION_DIM + POSITION_COLUMNS.index("z")  # its height: on the table or lifted, which changes how the gripper looks
GRIP = ACTION_COLUMNS.index("grip")  # the grip action: open or shut, which changes how the gripper looks too


def join(actions: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """[T, 4] actions and [T, 3] positions -> the condition [T, 7] (float32)."""
    return np.concatenate([actions, positions], axis=-1).astype(np.float32)
