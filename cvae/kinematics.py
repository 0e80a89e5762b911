"""The built-in world's kinematics: how actions move the end effector and where it is in the image.

Pure numpy, so the app (re-deriving positions from typed actions) and evaluation (the window
around the end effector) use it without loading the physics engine.

  - Actions have BAIR's 4 columns: ``dx, dy`` (continuous, about +-0.07), ``lift`` (0 = on the
    table, >= 1 = lifted over objects) and ``grip`` (0 = open, 1 = closed; drawn only).
  - Action ``a_t`` moves the end effector from its position in frame ``t`` to frame ``t + 1``:
    ``xy_{t+1} = clip(xy_t + GAIN * a_t[:2], WORKSPACE)`` and
    ``z_{t+1} = Z_TABLE + Z_PER_LIFT * a_t[2]``. The arm is stronger than any object, so these
    hold exactly whatever it pushes.
  - Image rows grow with x, image columns with y: ``row = 64 (x - X0) / (X1 - X0)``,
    ``col = 64 (y - Y0) / (Y1 - Y0)``.
"""
from __future__ import annotations

import numpy as np

from .condition import ACTIONS, XY

SIZE = 64
X_RANGE = (0.46, 0.74)
Y_RANGE = (-0.25, 0.11)
Z_TABLE = 0.20
Z_PER_LIFT = 0.04
GAIN = 0.2
ACTION_HOLD = 2
MAX_DXY = 0.07
MARGIN_PX = 5.0
# The arm's bar starts at a base fixed per scene, ARM_BASE_OUT px outside the top or the right edge of
# the image, anywhere ARM_BASE_SPAN px along it (simulator coordinates: a pixel's centre is index + 0.5).
ARM_BASE_SPAN = (16.0, 48.0)
ARM_BASE_OUT = 12.0

KINEMATICS = {
    "kind": "cvae-sim",
    "gain": GAIN,
    "x_range": list(X_RANGE),
    "y_range": list(Y_RANGE),
    "z_table": Z_TABLE,
    "z_per_lift": Z_PER_LIFT,
    "margin_px": MARGIN_PX,
    "image_size": SIZE,
}


def px_to_world(px: np.ndarray) -> np.ndarray:
    """(col, row) pixel coordinates -> (x, y) end-effector metres."""
    col, row = px[..., 0], px[..., 1]
    x = X_RANGE[0] + (X_RANGE[1] - X_RANGE[0]) * row / SIZE
    y = Y_RANGE[0] + (Y_RANGE[1] - Y_RANGE[0]) * col / SIZE
    return np.stack([x, y], axis=-1)


def world_to_px(xy: np.ndarray) -> np.ndarray:
    """(x, y) end-effector metres -> (col, row) pixel coordinates."""
    row = SIZE * (xy[..., 0] - X_RANGE[0]) / (X_RANGE[1] - X_RANGE[0])
    col = SIZE * (xy[..., 1] - Y_RANGE[0]) / (Y_RANGE[1] - Y_RANGE[0])
    return np.stack([col, row], axis=-1)


def workspace_bounds() -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest reachable (x, y), MARGIN_PX inside the image border."""
    lo = px_to_world(np.array([MARGIN_PX, MARGIN_PX]))
    hi = px_to_world(np.array([SIZE - MARGIN_PX, SIZE - MARGIN_PX]))
    return lo, hi


def moved(xy: np.ndarray, dxy: np.ndarray) -> np.ndarray:
    """(x, y) [..., 2] after actions' ``dx, dy`` [..., 2]: the module's rule, clipped to the workspace."""
    lo, hi = workspace_bounds()
    return np.clip(xy + GAIN * dxy, lo, hi)


def integrate_positions(start: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """End-effector positions [T, 3] that ``actions`` [T, 4] produce from ``start`` (x, y, z).

    Row t is the position in frame t; the last action has no frame to move into.
    """
    pos = np.empty((len(actions), 3))
    pos[0] = start
    for t in range(1, len(actions)):
        pos[t, :2] = moved(pos[t - 1, :2], actions[t - 1, :2])
        pos[t, 2] = Z_TABLE + Z_PER_LIFT * actions[t - 1, 2]
    return pos


def arm_bases(step: float = 0.5) -> np.ndarray:
    """[M, 2]: every place (x, y) ``step`` px apart where the arm's base may be, on both edges."""
    along = np.arange(ARM_BASE_SPAN[0], ARM_BASE_SPAN[1] + step / 2, step)
    top = np.stack([along, np.full_like(along, -ARM_BASE_OUT)], 1)
    right = np.stack([np.full_like(along, SIZE + ARM_BASE_OUT), along], 1)
    return np.concatenate([top, right])


def decoded_place(cond: np.ndarray) -> np.ndarray:
    """Conditions [N, 7] -> where the end effector is in the frame each one is decoded into (the
    decoder draws frame t + 1 from the condition of frame t: its position moved by its action),
    as (row, column) in the [-1, 1] coordinates of ``model/cues.py``'s maps (the centres of
    pixels 0 and 63 at -1 and 1)."""
    col, row = world_to_px(moved(cond[:, XY], cond[:, ACTIONS][:, :2])).T
    return np.stack([row, col], axis=-1) * 2 / (SIZE - 1) - 1 - 1 / (SIZE - 1)


def place_error_px(loc: np.ndarray, place: np.ndarray) -> np.ndarray:
    """Pixels between places [N, 2] given in the maps' [-1, 1] coordinates (``decoded_place``)."""
    return np.hypot(*((loc - place) * (SIZE - 1) / 2).T)
