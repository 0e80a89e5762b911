"""Physics-simulated robot pushing in BAIR's on-disk layout.

A top-down 64x64 tabletop. A kinematic gripper (pymunk) pushes 1-4 rigid objects that slide
with Coulomb-like friction; an arm is drawn from the image edge to the gripper and occludes what
lies beneath it, as BAIR's arm does. The kinematics (how actions move the end effector, where it
is in the image) are in ``cvae/kinematics.py``.

Hidden causes (:class:`Causes`): what two context frames cannot reveal, as on a real table. Each
object's friction against the table, its mass and where its centre of mass sits, and the grip
of the finger on objects, are drawn per scene from a stream of their own,
``(seed, split, index, draw)``, and scaled by ``uncertainty`` (0: the deterministic world of
data sets made before this existed, bit for bit). Re-drawing them (another ``draw``) gives
another possible future of the same scene under the same actions. At ``uncertainty = 1``:

  - table friction x 0.15 to 2.0 (log-uniform): some objects glide for a tray's width after a
    push, some stop within a pixel;
  - mass x 0.3 to 3 (log-uniform): who wins when pushed objects collide;
  - centre of mass moved by up to 0.35 of the object's size: a push turns it one way or the other;
  - finger friction x 0.3 to 1.5 (log-uniform): whether an object slides off the finger or is
    carried along.

The arm stays exact: the recorded end-effector positions are the ones the actions produce, and
they are in the model's condition, so an actuation error would be visible there, not hidden.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pymunk
from PIL import Image, ImageDraw, ImageFilter

from ..kinematics import (ACTION_HOLD, ARM_BASE_OUT, ARM_BASE_SPAN, GAIN, KINEMATICS, MARGIN_PX, MAX_DXY, SIZE,
                          X_RANGE, Y_RANGE, Z_TABLE, integrate_positions, px_to_world, world_to_px)

SUPERSAMPLE = 4
N_FRAMES = 30
SUBSTEPS = 10
FRAME_DT = 0.1
GRIPPER_RADIUS_PX = 2.6
LIFTED_GRIPPER_SCALE = 1.35  # a lifted gripper is drawn this much larger (nearer the camera)
ARM_WIDTH_PX, LIFTED_ARM_WIDTH_PX = 4.5, 5.5  # the arm's bar, lowered and lifted
DEFAULT_UNCERTAINTY = 1.0
# Ranges of the hidden causes at uncertainty 1 (multipliers are log-uniform over these).
FRICTION_RANGE = (0.15, 2.0)
MASS_RANGE = (0.3, 3.0)
COG_SHIFT = 0.35  # of the object's size
FINGER_FRICTION_RANGE = (0.3, 1.5)
MAX_OBJECTS = 4
ARM_ID = 255  # the arm, the gripper and its shadow in an id map (``_draw(..., ids=True)``)


@dataclass(frozen=True)
class Causes:
    """Hidden physical causes of one scene: per-object multipliers and offsets (``MAX_OBJECTS``
    of each, whatever the scene holds, so the stream does not depend on the object count)."""

    friction: np.ndarray  # [MAX_OBJECTS]
    mass: np.ndarray  # [MAX_OBJECTS]
    cog: np.ndarray  # [MAX_OBJECTS, 2], as fractions of the object's size
    finger_friction: float

    @classmethod
    def draw(cls, seed: int, split_id: int, index: int, draw: int, amount: float) -> "Causes":
        """The causes of draw ``draw`` of scene (seed, split, index) scaled by ``amount``; at 0
        every multiplier is exactly 1 and every offset 0."""
        if not (math.isfinite(amount) and amount >= 0):
            raise ValueError(f"uncertainty must be a number >= 0, not {amount}")
        rng = np.random.default_rng([seed, split_id, index, 0x5EED, draw])

        def log_uniform(lo_hi: tuple[float, float], n: int | None = None) -> np.ndarray:
            return np.exp(amount * rng.uniform(math.log(lo_hi[0]), math.log(lo_hi[1]), n))

        friction, mass = log_uniform(FRICTION_RANGE, MAX_OBJECTS), log_uniform(MASS_RANGE, MAX_OBJECTS)
        angle = rng.uniform(0, 2 * math.pi, MAX_OBJECTS)
        radius = amount * COG_SHIFT * np.sqrt(rng.uniform(0, 1, MAX_OBJECTS))
        cog = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
        return cls(friction, mass, cog, float(log_uniform(FINGER_FRICTION_RANGE)))


@dataclass
class Sequence:
    frames: np.ndarray  # [T, 64, 64, 3] uint8
    actions: np.ndarray  # [T, 4]
    positions: np.ndarray  # [T, 3]
    contact: bool
    arm_base: np.ndarray  # [2]: (x, y) px where the arm's bar starts, outside the image, fixed per scene
    flow: np.ndarray | None = None  # [T-1, 64, 64, 2] with ``simulate(flows=True)``: :func:`true_flow`
    flow_known: np.ndarray | None = None  # [T-1, 64, 64] bool: where ``flow`` is known


def _table_texture(rng: np.random.Generator) -> Image.Image:
    """A table whose colour, brightness and grain vary per sequence."""
    big = SIZE * SUPERSAMPLE
    base = rng.uniform(0.35, 0.85) * np.array(rng.choice(
        [(0.85, 0.7, 0.5), (0.7, 0.7, 0.72), (0.55, 0.65, 0.55), (0.75, 0.62, 0.6), (0.6, 0.6, 0.75)]))
    yy, xx = np.mgrid[0:big, 0:big] / big
    kind = rng.integers(3)
    if kind == 0:  # wood grain
        angle = rng.uniform(0, math.pi)
        u = xx * math.cos(angle) + yy * math.sin(angle)
        pattern = np.sin(u * rng.uniform(20, 60) + 2 * np.sin(yy * rng.uniform(2, 6)))
    elif kind == 1:  # tiles
        n = rng.integers(3, 7)
        pattern = ((np.floor(xx * n) + np.floor(yy * n)) % 2) * 2 - 1.0
    else:  # blotches
        coarse = rng.normal(size=(8, 8))
        pattern = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((big, big), Image.BICUBIC))
        pattern = pattern / (np.abs(pattern).max() + 1e-6)
    strength = rng.uniform(0.03, 0.12)
    img = base[None, None, :] * (1 + strength * pattern[..., None])
    img += rng.normal(scale=0.01, size=img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))


def _make_object(rng: np.random.Generator, space: pymunk.Space, pos: tuple[float, float], causes: Causes,
                 k: int) -> dict:
    """Object ``k`` of the scene; what it looks like comes from ``rng``, what it hides from ``causes``."""
    kind = rng.choice(["box", "circle", "triangle", "pentagon"])
    size = rng.uniform(4.0, 7.5)
    mass = rng.uniform(0.5, 3.0) * causes.mass[k]
    color = tuple(int(c) for c in rng.integers(30, 240, size=3))
    if kind == "circle":
        moment = pymunk.moment_for_circle(mass, 0, size)
        body = pymunk.Body(mass, moment)
        shape: pymunk.Shape = pymunk.Circle(body, size)
        verts = None
    else:
        n = {"box": 4, "triangle": 3, "pentagon": 5}[kind]
        aspect = rng.uniform(0.6, 1.0) if kind == "box" else 1.0
        verts = [(size * math.cos(2 * math.pi * k / n + math.pi / n),
                  size * aspect * math.sin(2 * math.pi * k / n + math.pi / n)) for k in range(n)]
        body = pymunk.Body(mass, pymunk.moment_for_poly(mass, verts))
        shape = pymunk.Poly(body, verts)
    cog = tuple(causes.cog[k] * size)
    body.center_of_gravity = cog
    body.angle = rng.uniform(0, 2 * math.pi)
    body.position = pos
    if any(cog):  # pymunk places the centre of mass; put the shape's own origin at ``pos`` instead
        body.position = body.position + (pymunk.Vec2d(*pos) - body.local_to_world((0, 0)))
    shape.friction = 0.6
    shape.elasticity = 0.1
    mu = rng.uniform(0.5, 1.5) * causes.friction[k]
    # Top-down friction against the table: joints to the static body with no error correction,
    # acting at the centre of mass.
    slide = pymunk.PivotJoint(space.static_body, body, (0, 0), cog)
    slide.max_bias, slide.max_force = 0, mu * mass * 60
    spin = pymunk.GearJoint(space.static_body, body, 0, 1)
    spin.max_bias, spin.max_force = 0, mu * body.moment * 6
    space.add(body, shape, slide, spin)
    return {"body": body, "kind": kind, "size": size, "verts": verts, "color": color, "start": tuple(pos)}


def _policy(rng: np.random.Generator, ee_px: np.ndarray, objects: list[dict]) -> np.ndarray:
    """Smooth random pushes: approach a point behind an object, lower, push through it."""
    steps = N_FRAMES // ACTION_HOLD
    acts = np.zeros((steps, 4))
    pos = ee_px.copy()
    # pixels (col, row) that a full-scale action moves the gripper in one step
    px_per_unit = GAIN * MAX_DXY * SIZE / np.array([Y_RANGE[1] - Y_RANGE[0], X_RANGE[1] - X_RANGE[0]])
    px_per_action = float(px_per_unit.mean())
    target_idx = rng.integers(len(objects))
    phase, wander = "approach", rng.random() < 0.1
    angle = rng.uniform(0, 2 * math.pi)
    grip = int(rng.integers(2))
    noise = np.zeros(2)
    for k in range(steps):
        obj = np.array(objects[target_idx]["start"])
        direction = np.array([math.cos(angle), math.sin(angle)])
        approach = obj - direction * (objects[target_idx]["size"] + GRIPPER_RADIUS_PX + 2)
        lift = 0
        if wander:
            goal = pos + direction * px_per_action * 2
            angle += rng.normal(0, 0.5)
        elif phase == "approach":
            goal = approach
            lift = 1 if np.linalg.norm(approach - pos) > 8 and rng.random() < 0.5 else 0
            if np.linalg.norm(approach - pos) < px_per_action * ACTION_HOLD:
                phase = "push"
        else:
            goal = pos + direction * px_per_action * ACTION_HOLD * 2
            if rng.random() < 0.08:
                target_idx, phase = rng.integers(len(objects)), "approach"
                angle = rng.uniform(0, 2 * math.pi)
        noise = 0.7 * noise + 0.3 * rng.normal(0, 0.3, 2)
        delta_px = (goal - pos) / ACTION_HOLD
        step = np.clip(delta_px / px_per_unit + noise, -1, 1)  # (col, row) in units of MAX_DXY
        acts[k] = [step[1] * MAX_DXY, step[0] * MAX_DXY, lift, grip]  # x follows rows, y columns
        pos = np.clip(pos + step * px_per_unit * ACTION_HOLD, MARGIN_PX, SIZE - MARGIN_PX)
        if rng.random() < 0.05:
            grip = 1 - grip
    return np.repeat(acts, ACTION_HOLD, axis=0)


def _draw(table: Image.Image, objects: list[dict], ee_px: np.ndarray, lifted: bool, grip: int,
          arm_base: np.ndarray, ids: bool = False) -> np.ndarray:
    """The frame uint8 [64, 64, 3]; with ``ids`` the same shapes painted by what they are instead,
    uint8 [64, 64] at each pixel's centre: 0 the table, k + 1 object k, ``ARM_ID`` the arm, the
    gripper and its shadow (what :func:`true_flow` does not follow)."""
    s = SUPERSAMPLE
    img = Image.new("L", table.size, 0) if ids else table.copy()
    draw = ImageDraw.Draw(img, None if ids else "RGBA")

    def paint(colour: tuple, k: int) -> tuple | int:
        return k if ids else colour

    gx, gy = ee_px * s
    if lifted:  # shadow on the table where the gripper would land
        r = GRIPPER_RADIUS_PX * s * 1.3
        draw.ellipse([gx - r + 3 * s, gy - r + 3 * s, gx + r + 3 * s, gy + r + 3 * s], fill=paint((0, 0, 0, 90), ARM_ID))
    for k, obj in enumerate(objects, 1):
        body = obj["body"]
        fill, outline = paint(obj["color"], k), paint(tuple(max(0, c - 60) for c in obj["color"]), k)
        if obj["kind"] == "circle":
            cx, cy = body.position * s
            r = obj["size"] * s
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=s)
            mark = body.local_to_world((obj["size"] * 0.6, 0)) * s
            draw.line([cx, cy, mark[0], mark[1]], fill=outline, width=s)
        else:
            pts = [tuple(body.local_to_world(v) * s) for v in obj["verts"]]
            draw.polygon(pts, fill=fill, outline=outline, width=s)
    arm_w = (LIFTED_ARM_WIDTH_PX if lifted else ARM_WIDTH_PX) * s
    arm_col = (70, 70, 78) if not lifted else (105, 105, 115)
    draw.line([tuple(arm_base * s), (gx, gy)], fill=paint(arm_col, ARM_ID), width=int(arm_w))
    d = np.array([gx, gy]) - arm_base * s
    d = d / (np.linalg.norm(d) + 1e-6)
    n = np.array([-d[1], d[0]])
    r = GRIPPER_RADIUS_PX * s * (LIFTED_GRIPPER_SCALE if lifted else 1.0)
    body_col = (200, 200, 210) if lifted else (150, 150, 160)
    draw.ellipse([gx - r, gy - r, gx + r, gy + r], fill=paint(body_col, ARM_ID), outline=paint((40, 40, 45), ARM_ID),
                 width=s)
    spread = r * (0.5 if grip else 1.0)
    for sign in (-1, 1):
        base = np.array([gx, gy]) + sign * n * spread
        tip = base + d * r * 1.2
        draw.line([tuple(base), tuple(tip)], fill=paint((30, 30, 35), ARM_ID), width=int(1.2 * s))
    if ids:
        return np.asarray(img)[s // 2 :: s, s // 2 :: s]
    return np.asarray(img.resize((SIZE, SIZE), Image.BOX))


def true_flow(ids: np.ndarray, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of frame t + 1 was in frame t, from the id maps uint8 [T, 64, 64] and the
    objects' poses [T, n_objects, 3] (x, y, angle of each body's own origin) -> displacements
    float32 [T-1, 64, 64, 2] in pixels (x, then y: ``heads.warp``'s backward flow) and whether each
    is known, bool [T-1, 64, 64].

    Known: a table pixel that is table in both frames (displacement 0), and a pixel of an object
    whose point lay, one frame before, on a pixel of the same object (the rigid motion of that
    body between the two poses). Not known: the arm, the gripper and its shadow, and what they or
    another object covered a frame before (what the previous frame cannot show)."""
    t_all = len(ids)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    centre = np.stack([xx + 0.5, yy + 0.5], -1)  # [H, W, 2]: pixel centres, as the bodies' coordinates
    flow = np.zeros((t_all - 1, SIZE, SIZE, 2), np.float32)
    known = (ids[1:] == 0) & (ids[:-1] == 0)
    for t in range(t_all - 1):
        for k in range(poses.shape[1]):
            here = ids[t + 1] == k + 1
            if not here.any():
                continue
            (x1, y1, a1), (x0, y0, a0) = poses[t + 1, k], poses[t, k]
            p = centre[here] - (x1, y1)
            c, s = math.cos(a0 - a1), math.sin(a0 - a1)  # back to the body's frame at t + 1, out at t
            before = np.stack([c * p[:, 0] - s * p[:, 1] + x0, s * p[:, 0] + c * p[:, 1] + y0], 1)
            flow[t][here] = before - centre[here]
            col, row = np.floor(before).astype(int).T
            inside = (col >= 0) & (col < SIZE) & (row >= 0) & (row < SIZE)
            same = np.zeros(len(before), bool)
            same[inside] = ids[t][row[inside], col[inside]] == k + 1
            known[t][here] = same
    return flow, known


def simulate(seed: int, index: int, split_id: int = 0, n_frames: int = N_FRAMES,
             actions: np.ndarray | None = None, uncertainty: float = 0.0, draw: int = 0,
             flows: bool = False) -> Sequence:
    """One sequence, fully determined by (seed, split_id, index), ``uncertainty``, ``draw`` and,
    if given, ``actions``.

    With ``actions`` given the scene is the same as without, but the arm follows them instead of
    the scripted policy: that is what makes causality testable. ``draw`` picks the hidden causes
    (a data set's own sequences are draw 0); everything a person sees in the first frame, the
    scripted actions and the positions are the same for every draw. ``flows``: also where each
    pixel of each frame was a frame before (:func:`true_flow`), which only the simulator knows.
    """
    causes = Causes.draw(seed, split_id, index, draw, uncertainty)
    rng = np.random.default_rng([seed, split_id, index])
    table = _table_texture(rng)
    space = pymunk.Space()
    space.iterations = 20
    corners = [(0, 0), (SIZE, 0), (SIZE, SIZE), (0, SIZE)]
    for a, b in zip(corners, corners[1:] + corners[:1]):  # the tray's walls keep objects in view
        wall = pymunk.Segment(space.static_body, a, b, 1.0)
        wall.friction = 0.5
        space.add(wall)
    objects: list[dict] = []
    n_obj = int(rng.integers(1, 5))
    for _ in range(200):
        if len(objects) == n_obj:
            break
        pos = rng.uniform(14, SIZE - 14, 2)
        if all(np.linalg.norm(pos - np.array(o["start"])) > o["size"] + 9 for o in objects):
            objects.append(_make_object(rng, space, (float(pos[0]), float(pos[1])), causes, len(objects)))
    ee_px = rng.uniform(MARGIN_PX + 4, SIZE - MARGIN_PX - 4, 2)
    arm_base = (np.array([rng.uniform(*ARM_BASE_SPAN), -ARM_BASE_OUT]) if rng.random() < 0.5
                else np.array([SIZE + ARM_BASE_OUT, rng.uniform(*ARM_BASE_SPAN)]))
    policy_actions = _policy(rng, ee_px, objects)
    if actions is None:
        actions = policy_actions[:n_frames]
    actions = np.asarray(actions, dtype=np.float64)
    start = np.array([*px_to_world(ee_px), Z_TABLE])
    positions = integrate_positions(start, actions)

    gripper = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
    gripper.position = tuple(ee_px)
    finger = pymunk.Circle(gripper, GRIPPER_RADIUS_PX)
    finger.friction = 0.8 * causes.finger_friction
    space.add(gripper, finger)

    frames = np.empty((n_frames, SIZE, SIZE, 3), dtype=np.uint8)
    ids = np.empty((n_frames, SIZE, SIZE), dtype=np.uint8) if flows else None
    poses = np.empty((n_frames, len(objects), 3)) if flows else None
    for t in range(n_frames):
        lifted = positions[t, 2] > Z_TABLE + 1e-6
        pose = (world_to_px(positions[t, :2]), lifted, int(actions[t, 3]), arm_base)
        frames[t] = _draw(table, objects, *pose)
        if flows:
            ids[t] = _draw(table, objects, *pose, ids=True)
            poses[t] = [(*o["body"].position, o["body"].angle) for o in objects]
        if t == n_frames - 1:
            break
        goal = world_to_px(positions[t + 1, :2])
        lift_next = positions[t + 1, 2] > Z_TABLE + 1e-6
        finger.filter = pymunk.ShapeFilter(categories=0 if lift_next else 1, mask=0 if lift_next else 0xFFFFFFFF)
        dt = FRAME_DT / SUBSTEPS
        for k in range(SUBSTEPS):
            remaining = FRAME_DT - k * dt
            gripper.velocity = tuple((goal - np.array(gripper.position)) / remaining)
            space.step(dt)
        gripper.velocity = (0, 0)
        gripper.position = tuple(goal)
    moved = max((np.linalg.norm(np.array(o["body"].position) - np.array(o["start"])) for o in objects), default=0.0)
    flow, known = true_flow(ids, poses) if flows else (None, None)
    return Sequence(frames=frames, actions=actions.astype(np.float32), positions=positions.astype(np.float32),
                    contact=bool(moved > 0.5), arm_base=arm_base, flow=flow, flow_known=known)
