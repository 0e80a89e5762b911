"""Output heads: how the decoder's last feature map becomes the next frame. Each head is one
class registered by name (``HEADS``); adding a head is one class here.

- ``image``: the frame is the decoder's sigmoid output (SVG and the course lab).
- ``compose``: the decoder also outputs a mask; frame = m * generated + (1 - m) * previous frame.
  The mask starts almost closed, so an untrained model already copies the last frame and training
  only has to learn what changes.
- ``cdna``: Finn et al. 2016 (and SAVP): ``CDNA_KERNELS`` normalised 5x5 kernels, predicted from
  the frame code, move copies of the previous frame; a softmax mask per pixel chooses between the
  generated image, the previous frame and the moved copies. A 5x5 kernel moves pixels at most 2 px
  a step; the gripper moves up to 3.2.
- ``flow``: two dense per-pixel displacement fields, applied with bilinear ``grid_sample`` (SAVP's
  ``flow`` and SNA's skip to an early frame): one moves the previous frame, the other moves the
  last context frame (the latest real frame), which stays sharp because it is resampled once
  rather than once per step, and shows the table where the arm uncovers it. A softmax mask per
  pixel chooses among the generated image and the two moved frames. Displacements are in pixels
  and unbounded, so anything can move as far as it moves. With ``ee_copy`` the mask has a fourth
  source: the latest real frame moved rigidly by the end effector's own displacement (the decoder
  computes it from the kinematics its end-effector map knows), so a sharp gripper is at hand
  wherever it goes, instead of one resampled and blurred again at every step. With ``ee_sprite``
  it has one more: the decoder's sprite of the end effector, drawn from the condition at its place
  (``cues.EndEffectorSprite``), for when the gripper no longer looks as the real frame shows it.
  With ``still_copy`` it has one more: the latest real frame as it is, not resampled, so pixels
  that stay still can be copied exactly; the moved previous frame, which still pixels otherwise
  take with a displacement of a tenth of a pixel or so, is resampled bilinearly at every step and
  blurs the table's texture a little more each time (``bench/blur.py``). (As its logit starts, at
  STILL_COPY_BIAS, training has not yet been seen to take it up: see docs/issue13.md.)
  ``flow_deadzone`` (a model field, 0 by default) attacks the same blur from the other side:
  displacements no longer than that many pixels are set to 0 (``dead_zone``), so the few tenths
  of a pixel the smooth flow bleeds onto still pixels become exactly 0 and those pixels are not
  resampled, while what moves farther moves as before.
  A displacement inside the dead zone gets no gradient, so a model learns its flows without one
  first (``Config`` refuses one without ``--init``); see docs/issue13.md for what it costs.
  ``flow_resample`` (a model field, ``bilinear`` by default) is how the moved frames and copies
  are sampled between pixels: bilinearly, as SAVP does, or ``bicubic``. Bilinear sampling at a
  fraction of a pixel averages two neighbours, so thin lines and texture come out softened (a
  one-pixel line moved half a pixel keeps half its height, moved twice a quarter of its squared
  edges); bicubic's wider kernel keeps more (0.59 of it, half of them), with a few percent of
  overshoot, clipped to [0, 1]. A lone step edge comes out the same either way (docs/issue13.md,
  "Sampling between pixels").
  ``rigid_layers`` K (a model field, 0 by default) gives the mask K more sources, each the previous
  frame moved rigidly by one displacement per frame that the decoder computes from its 8 x 8 maps
  (``RigidShifts``; they read the spatial latent, so a future's noise can choose how far a layer
  goes), its mask logits moved with it: the decoder marks which pixels of the previous frame
  belong to layer k, and the layer, pixels and mark together, moves as one piece. A dense flow
  need not keep an object's area or shape (it stretches where its displacement changes, and
  copies an object's colour to more places than it covers); a layer cannot.
  ``flow_carry`` (a model field, off by default) gives the mask one more source: the previous
  frame moved by the head's own displacement of the step before, carried along with what it
  moved (``carried``). An object the arm has let go of glides on at the speed it was pushed,
  unless the mask takes the previous frame there and stops it, and the mask reads the spatial
  latent, so a future's noise can choose which: the simulator's hidden friction, as one choice
  per pixel between gliding on and stopping, rather than a displacement the decoder must draw
  again at every step (its own flow where the truths branch off the arm is 0.4-0.5 px, docs/issue13.md).
  ``carry_shown`` (a model field, off by default) changes what is carried on: not the head's own
  displacement of the previous frame but the one the frame showed, where the mask took the
  carried source that source's (``shown``). Without it a future whose noise took the gliding
  object at one step carries on the head's own short flow at the next, so the glide it chose
  stops after one step; with it the glide it chose goes on until the mask stops it.
  ``carry_pool`` PX (a model field, 0 by default) evens the carried displacement over each moving
  piece and PX round it (``pooled``), so a glide moves an object as one piece.
  ``push_copy`` (a model field, off by default) gives the mask one more source: the previous frame
  with what lies within PUSH_RADIUS px of the gripper moved by the end effector's own step
  (``cues.push_flow``), what a pushed object does while the gripper pushes it. One displacement
  for the whole disc moves an object whole and as far as the gripper went (on the true frames,
  45% of the pixels that move off the arm within 16 px of the gripper come within 0.1 of the next
  frame when the frame before is moved so: docs/issue13.md, stop 71), where the dense flow draws a blur
  that falls short. With ``carry_shown`` the displacement it showed is carried on too, so an
  object let go of glides on at the speed it was pushed.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

CDNA_KERNELS = 4
CDNA_SIZE = 5
MASK_BIAS = -3.0  # the generated image's initial mask logit: about 5% weight, or 1% among cdna's 6
EE_COPY_BIAS = -5.0  # the end-effector copy's: under 1%, so a model grown to have it starts as it was
EE_SPRITE_BIAS = -6.0  # the sprite's: lower, since it is black away from the end effector
STILL_COPY_BIAS = -5.0  # the latest real frame as it is: under 1%, as the copy
ARM_COPY_BIAS = -5.0  # the arm copy's: under 1%, as the copy
# each rigid layer's mask logit and the carried motion's start as the moved previous frame's, less this
# much (e^-2: about an eighth of its share), so each gets a gradient from the start. At -5 with zero
# weights, as the copies start, two rigid layers kept 0.1-0.2% of the moving pixels after 100 steps (docs/issue13.md)
RIGID_OFFSET = -2.0
CARRY_FLOOR = 0.1  # px: ``carried``'s priority of a still pixel's displacement, against a moving one's length
CARRY_MOVING = 0.5  # px: ``pooled`` averages the carried displacements longer than this, and zeroes those far from one
CARRY_BIAS = -5.0  # the carried motion's OPTIONAL entry, overwritten by ``start_as_moved`` wherever it starts
PUSH_BIAS = -5.0  # the push copy's, likewise overwritten (it starts as the moved previous frame's, as the carried motion)
MAX_RIGID = 4  # rigid layers a flow head may have

HEADS: dict[str, type[Head]] = {}
RESAMPLE = ("bilinear", "bicubic")  # how moved frames are sampled between pixels (``warp``)


def register(cls: type[Head]) -> type[Head]:
    HEADS[cls.name] = cls
    return cls


class Head(nn.Module):
    """The decoder's raw output [N, nc + extra, H, W] -> the frame [N, nc, H, W] in [0, 1].

    The first ``nc`` channels are always the generated image; ``extra`` channels more are the
    head's own (masks, flows). ``init_last`` sets how the decoder's last layer starts."""

    name = ""
    extra = 0

    def __init__(self, g_dim: int, nc: int = 3) -> None:
        super().__init__()
        self.nc = nc

    def init_last(self, last: nn.ConvTranspose2d) -> None:
        """Start the decoder's last layer where this head wants it (default: as initialised)."""

    def forward(self, out: torch.Tensor, prev: torch.Tensor | None, anchor: torch.Tensor | None,
                g: torch.Tensor) -> torch.Tensor:
        """``prev`` is the previous frame, ``anchor`` the latest real frame, ``g`` the frame code."""
        raise NotImplementedError

    def generated(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out[:, : self.nc])

    def previous(self, prev: torch.Tensor | None) -> torch.Tensor:
        if prev is None:
            raise ValueError(f"the {self.name!r} head needs the previous frame")
        return prev


@register
class ImageHead(Head):
    """The frame is the decoder's sigmoid output (SVG and the course lab)."""

    name = "image"

    def forward(self, out: torch.Tensor, prev: torch.Tensor | None, anchor: torch.Tensor | None,
                g: torch.Tensor) -> torch.Tensor:
        return self.generated(out)


class MaskedHead(Head):
    """A head whose first extra channel is the generated image's mask logit, started at MASK_BIAS
    so an untrained model (nearly) copies the previous frame."""

    def init_last(self, last: nn.ConvTranspose2d) -> None:
        with torch.no_grad():
            last.bias[self.nc] = MASK_BIAS


@register
class ComposeHead(MaskedHead):
    """frame = m * generated + (1 - m) * previous frame, the mask starting almost closed."""

    name = "compose"
    extra = 1

    def forward(self, out: torch.Tensor, prev: torch.Tensor | None, anchor: torch.Tensor | None,
                g: torch.Tensor) -> torch.Tensor:
        generated, prev = self.generated(out), self.previous(prev)
        mask = torch.sigmoid(out[:, self.nc : self.nc + 1])
        return mask * generated + (1 - mask) * prev.to(generated.dtype)


@register
class CDNAHead(MaskedHead):
    """Kernels predicted from the frame code move copies of the previous frame; a softmax mask per
    pixel chooses among the generated image, the previous frame and the moved copies."""

    name = "cdna"
    extra = 2 + CDNA_KERNELS

    def __init__(self, g_dim: int, nc: int = 3) -> None:
        super().__init__(g_dim, nc)
        self.kernels = CDNAKernels(g_dim)

    def forward(self, out: torch.Tensor, prev: torch.Tensor | None, anchor: torch.Tensor | None,
                g: torch.Tensor) -> torch.Tensor:
        generated, prev = self.generated(out), self.previous(prev)
        masks = out[:, self.nc :].float().softmax(1)  # [N, 2 + K, H, W]: generated, previous, moved copies
        candidates = torch.cat([generated[:, None].float(), prev[:, None].float(), move(prev.float(), self.kernels(g))], 1)
        return (masks[:, :, None] * candidates).sum(1)


@register
class FlowHead(Head):
    """Two dense displacement fields move the previous frame and the latest real frame; a softmax
    mask per pixel chooses among the generated image and the two moved frames (and, with
    ``ee_copy`` and ``ee_sprite``, the end-effector copy and sprite the decoder passes, with
    ``still_copy`` the latest real frame as it is, with ``arm_copy`` the arm copy the decoder
    passes, with ``flow_carry`` the carried motion and with ``push_copy`` the previous frame moved
    by the push displacement the decoder passes), in that order, then ``rigid`` layers:
    ``sources`` names them."""

    name = "flow"
    extra = 4 + 3
    # the optional mask sources, in their order after the three fixed ones, with their initial logits
    OPTIONAL = {"ee_copy": EE_COPY_BIAS, "ee_sprite": EE_SPRITE_BIAS, "still_copy": STILL_COPY_BIAS,
                "arm_copy": ARM_COPY_BIAS, "flow_carry": CARRY_BIAS, "push_copy": PUSH_BIAS}

    def __init__(self, g_dim: int, nc: int = 3, ee_copy: bool = False, ee_sprite: bool = False,
                 still_copy: bool = False, deadzone: float = 0.0, arm_copy: bool = False,
                 resample: str = "bilinear", rigid: int = 0, flow_carry: bool = False,
                 carry_shown: bool = False, temperature: float = 1.0, push_copy: bool = False) -> None:
        super().__init__(g_dim, nc)
        if carry_shown and not flow_carry:
            raise ValueError("carry_shown needs flow_carry: it says which displacement the carried motion carries on")
        self.resample, self.rigid, self.flow_carry, self.carry_shown = resample, rigid, flow_carry, carry_shown
        self.ee_copy, self.ee_sprite, self.still_copy, self.arm_copy = ee_copy, ee_sprite, still_copy, arm_copy
        self.push_copy = push_copy
        self.deadzone, self.temperature = deadzone, temperature
        self.optional = [name for name in self.OPTIONAL if getattr(self, name)]
        self.sources = ["generated", "moved previous", "moved latest real", *self.optional,
                        *(f"rigid {k}" for k in range(rigid))]
        self.extra = FlowHead.extra + len(self.optional) + rigid

    def init_last(self, last: nn.ConvTranspose2d) -> None:
        """Flows start at zero (both moved frames start as plain copies), the generated image's
        mask logit at MASK_BIAS, each optional source's at its ``OPTIONAL`` bias, the carried
        motion's, the push copy's and each rigid layer's as the moved previous frame's
        (``start_as_moved``)."""
        nc, m = self.nc, self.mask_start
        with torch.no_grad():
            last.weight[:, nc:m].mul_(0.1)
            last.bias[nc:m] = 0
            last.bias[m] = MASK_BIAS
            for name in self.optional:
                last.bias[m + self.sources.index(name)] = self.OPTIONAL[name]
        start_as_moved(last.weight.data, last.bias.data, self.started_as_moved(), nc)

    @property
    def mask_start(self) -> int:
        """The last layer's first mask logit: its outputs are the generated image, the two
        displacements, then one mask logit per source, in ``sources``' order."""
        return self.nc + 4

    @property
    def carry_channel(self) -> int | None:
        """The last layer's output that is the carried motion's mask logit (None without it)."""
        return self.mask_start + self.sources.index("flow_carry") if self.flow_carry else None

    @property
    def push_channel(self) -> int | None:
        """The last layer's output that is the push copy's mask logit (None without it)."""
        return self.mask_start + self.sources.index("push_copy") if self.push_copy else None

    def carry_share(self, mask: torch.Tensor) -> torch.Tensor | None:
        """The mask [N, sources, H, W] -> the carried source's share of what the sources that move
        the previous frame (and the push copy) take, [N, 1, H, W], by which ``shown`` mixes their
        displacements (None without ``carry_shown``: the head's own displacement is carried on)."""
        if not self.carry_shown:
            return None
        k = self.sources.index("flow_carry")
        return mask[:, k : k + 1] / self._moving_prev(mask).clamp_min(1e-6)

    def _moving_prev(self, mask: torch.Tensor) -> torch.Tensor:
        """What the sources that move the previous frame take together, [N, 1, H, W]."""
        names = [n for n in ("flow_carry", "push_copy") if getattr(self, n)]
        return mask[:, 1:2] + sum(mask[:, self.sources.index(n)][:, None] for n in names)

    def own_motion(self, mask: torch.Tensor, flow: torch.Tensor, push: torch.Tensor | None) -> torch.Tensor:
        """The head's displacement of the previous frame [N, 2, H, W] -> the one its own sources
        showed: with ``push_copy``, that and the push displacement ``push`` mixed by their shares
        of the mask [N, sources, H, W] (what ``shown`` carries on beside the carried one)."""
        if not self.push_copy:
            return flow
        w_prev, w_push = mask[:, 1:2], mask[:, self.sources.index("push_copy")][:, None]
        return flow + w_push / (w_prev + w_push).clamp_min(1e-6) * (push.to(flow.dtype) - flow)

    def started_as_moved(self) -> list[int]:
        """The last layer's outputs whose mask logits start as the moved previous frame's: the
        carried motion's, the push copy's and the rigid layers'."""
        moved = [k for k in (self.carry_channel, self.push_channel) if k is not None]
        return moved + [self.nc + self.extra - self.rigid + k for k in range(self.rigid)]

    def flows(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's last layer [..., nc + extra, H, W] -> the displacements [..., 2, H, W] of
        the previous frame and of the latest real frame, those no longer than ``deadzone`` pixels
        set to 0 (``dead_zone``)."""
        nc = self.nc
        return (dead_zone(out[..., nc : nc + 2, :, :], self.deadzone),
                dead_zone(out[..., nc + 2 : nc + 4, :, :], self.deadzone))

    def masks(self, out: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's last layer [..., nc + extra, H, W] (and with ``rigid`` layers their
        displacements [..., rigid, 2], which move their logits) -> the mask [..., len(sources), H, W].
        ``temperature`` > 1 sharpens it: each pixel nearer one source, so fewer blended ghosts."""
        logits = out[..., self.mask_start :, :, :].float() * self.temperature
        if not self.rigid:
            return logits.softmax(-3)
        if shifts is None:
            raise ValueError(f"this 'flow' head has {self.rigid} rigid layers: pass their shifts")
        fixed, layered = logits[..., : -self.rigid, :, :], logits[..., -self.rigid :, :, :]
        moved = translate(layered.reshape(-1, 1, *layered.shape[-2:]), shifts.reshape(-1, 2).float(), "bilinear")
        return torch.cat([fixed, moved.view(layered.shape)], -3).softmax(-3)

    def mixing(self, out: torch.Tensor, rigid: torch.Tensor | None = None, gain: torch.Tensor | None = None,
               shift: torch.Tensor | None = None, carry_logit: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder's last layer [N, nc + extra, H, W] with the spatial latent's noise let in
        (``rigid``, ``gain``, ``shift``, ``carry_logit``: see ``forward``) -> what this head mixes
        by: the mask [N, sources, H, W] and the displacements [N, 2, H, W] of the previous frame
        and of the latest real frame. Apart from ``forward`` so that a probe reads them as mixed."""
        if carry_logit is not None:
            k = self.carry_channel
            out = torch.cat([out[:, :k], out[:, k : k + 1] + carry_logit.to(out.dtype), out[:, k + 1 :]], 1)
        mask = self.masks(out, rigid)  # first: it refuses a head with rigid layers and no shifts
        moved_prev, moved_anchor = self.flows(out)
        if gain is not None:
            moved_prev, moved_anchor = moved_prev * gain, moved_anchor * gain
        if shift is not None:
            moved_prev = moved_prev + shift
        return mask, moved_prev, moved_anchor

    def forward(self, out: torch.Tensor, prev: torch.Tensor | None, anchor: torch.Tensor | None,
                g: torch.Tensor, ee_copy: torch.Tensor | None = None,
                ee_sprite: torch.Tensor | None = None, arm_copy: torch.Tensor | None = None,
                rigid: torch.Tensor | None = None, gain: torch.Tensor | None = None,
                shift: torch.Tensor | None = None, moved: bool = False,
                carry: Callable[..., torch.Tensor] | None = None, carry_logit: torch.Tensor | None = None,
                push: torch.Tensor | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The mixed frame; with ``moved``, also the previous frame this head moves and its
        displacement [N, 2, H, W] (which training's ``flow_photo_weight`` asks to carry the
        previous frame onto the next where things move). ``rigid``: the rigid layers' displacements
        [N, rigid, 2] (``RigidShifts``). ``gain`` [N, 1, H, W]: both displacements are multiplied by
        it after the dead zone (the decoder's ``noise_flow``), so a still pixel stays unresampled.
        ``shift`` [N, 2, H, W] is then added to the previous frame's (``noise_shift``). ``carry``
        (``flow_carry``): this head's displacement of the previous frame [N, 2, H, W] -> that of
        the step before, carried along (``carried``; 0 at a first step), by which the carried-motion
        source moves the previous frame. A function, so that a teacher-forced pass, whose steps are
        rows of one batch, can take each row's from the row before; it is also passed the carried
        source's share (``carry_share``), so that with ``carry_shown`` it carries on what was shown.
        ``carry_logit`` [N, 1, H, W] is added to that source's mask logit (the decoder's ``carry_noise``).
        ``push`` [N, 2, H, W] (``push_copy``): the displacement by which the push copy moves the
        previous frame (``cues.push_flow``)."""
        generated, prev = self.generated(out), self.previous(prev)
        if anchor is None:
            raise ValueError("the 'flow' head needs the latest real frame (anchor)")
        if self.flow_carry and carry is None:
            raise ValueError("this 'flow' head carries the motion of the step before: pass carry")
        if self.push_copy and push is None:
            raise ValueError("this 'flow' head moves the previous frame with the end effector: pass push")
        given = {"ee_copy": ee_copy, "ee_sprite": ee_sprite, "still_copy": anchor, "arm_copy": arm_copy}
        for name in self.optional:
            if name not in ("flow_carry", "push_copy") and given[name] is None:
                raise ValueError(f"this 'flow' head mixes in the end effector's {name}: pass it")
        mask, moved_prev, moved_anchor = self.mixing(out, rigid, gain, shift, carry_logit)
        if self.push_copy:
            given["push_copy"] = warp(prev, push, self.resample)
        if self.flow_carry:
            given["flow_carry"] = warp(prev, carry(self.own_motion(mask, moved_prev, push), self.carry_share(mask)),
                                       self.resample)
        sources = [generated.float(), warp(prev, moved_prev, self.resample), warp(anchor, moved_anchor, self.resample)]
        sources += [given[name].float() for name in self.optional]
        sources += [translate(prev, rigid[:, k], self.resample) for k in range(self.rigid)]
        frame = (mask[:, :, None] * torch.stack(sources, 1)).sum(1)
        return (frame, (prev, moved_prev)) if moved else frame


OUTPUTS = tuple(HEADS)


def make_head(name: str, g_dim: int, nc: int = 3, ee_copy: bool = False, ee_sprite: bool = False,
              still_copy: bool = False, flow_deadzone: float = 0.0, arm_copy: bool = False,
              flow_resample: str = "bilinear", rigid_layers: int = 0, flow_carry: bool = False,
              carry_shown: bool = False, mask_temperature: float = 1.0, push_copy: bool = False) -> Head:
    if name not in HEADS:
        raise ValueError(f"output must be one of {', '.join(HEADS)}, not {name!r}")
    if (ee_copy or ee_sprite or still_copy or flow_deadzone or arm_copy or flow_resample != "bilinear" or rigid_layers
            or flow_carry or mask_temperature != 1 or push_copy):
        if name != FlowHead.name:
            raise ValueError("ee_copy, ee_sprite, still_copy, arm_copy, flow_deadzone, flow_resample, rigid_layers, "
                             f"flow_carry, mask_temperature and push_copy need the 'flow' head, not {name!r}")
        return FlowHead(g_dim, nc, ee_copy=ee_copy, ee_sprite=ee_sprite, still_copy=still_copy, deadzone=flow_deadzone,
                        arm_copy=arm_copy, resample=flow_resample, rigid=rigid_layers, flow_carry=flow_carry,
                        carry_shown=carry_shown, temperature=mask_temperature, push_copy=push_copy)
    return HEADS[name](g_dim, nc)


class CDNAKernels(nn.Module):
    """Frame code [N, g] -> CDNA_KERNELS normalised kernels [N, K, 5, 5], initially peaked at the
    centre so every moved copy starts as (nearly) the previous frame."""

    def __init__(self, g_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(g_dim, CDNA_KERNELS * CDNA_SIZE * CDNA_SIZE)
        with torch.no_grad():
            self.fc.weight.mul_(0.1)
            centre = torch.zeros(CDNA_SIZE, CDNA_SIZE)
            centre[CDNA_SIZE // 2, CDNA_SIZE // 2] = 4.0
            self.fc.bias.copy_(centre.flatten().repeat(CDNA_KERNELS))

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        logits = self.fc(g).float().view(-1, CDNA_KERNELS, CDNA_SIZE * CDNA_SIZE)
        return logits.softmax(-1).view(-1, CDNA_KERNELS, CDNA_SIZE, CDNA_SIZE)


def start_as_moved(weight: torch.Tensor, bias: torch.Tensor, outputs: list[int], nc: int = 3) -> None:
    """Set a flow head's last layer (a ConvTranspose2d's weight [in, out, k, k] and bias [out]) so
    that the mask logit of each output in ``outputs`` (``FlowHead.started_as_moved``) is the moved
    previous frame's plus RIGID_OFFSET. In place."""
    with torch.no_grad():  # the mask's logits start at nc + 4: the generated image's, then the moved previous frame's
        for k in outputs:
            weight[:, k] = weight[:, nc + 5]
            bias[k] = bias[nc + 5] + RIGID_OFFSET


def carried(flow: torch.Tensor) -> torch.Tensor:
    """A step's displacements [N, 2, H, W] (``warp``'s: output pixel p took the frame at p +
    flow[p], so what it shows moves on by -flow[p]) -> the next step's if everything keeps moving
    as it did: each displacement splatted bilinearly to p - flow[p], where its pixel goes next.
    Where several land, the longer ones weigh more (by their length + CARRY_FLOOR px), so an
    object that moves on over still table stays in front of it; a pixel less than fully reached
    takes that share of the average (nothing moves on to where nothing lands). Gathering instead
    (the field sampled at p + flow[p]) never moves a sharp field's front: a pixel the object
    reaches next holds 0 now."""
    n, _, h, w = flow.shape
    flow = flow.float()
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device), torch.arange(w, device=flow.device), indexing="ij")
    to_x, to_y = xs - flow[:, 0], ys - flow[:, 1]  # [N, H, W]
    x0, y0 = to_x.detach().floor(), to_y.detach().floor()
    length = flow.detach().pow(2).sum(1).sqrt() + CARRY_FLOOR
    sums = flow.new_zeros(n, 4, h * w)  # landed: the displacements x priority, the priorities, the weights
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        x, y = x0 + dx, y0 + dy
        weight = (1 - (to_x - x).abs()) * (1 - (to_y - y).abs()) * ((x >= 0) & (x < w) & (y >= 0) & (y < h))
        priority = weight * length
        at = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).long().flatten(1)[:, None].expand(-1, 4, -1)
        sums.scatter_add_(2, at, torch.cat([flow * priority[:, None], priority[:, None], weight[:, None]], 1).flatten(2))
    mean = sums[:, :2] / sums[:, 2:3].clamp_min(1e-6)
    return (mean * sums[:, 3:].clamp(max=1)).view(n, 2, h, w)


def pooled(flow: torch.Tensor, radius: int) -> torch.Tensor:
    """Carried displacements [N, 2, H, W] made one per moving piece: each pixel within ``radius``
    px of a displacement longer than CARRY_MOVING takes the length-weighted mean of those within
    ``radius`` px of it, every other pixel 0. A dense field stretches an object where its
    displacement falls from the object's to the table's 0, and bilinear splats leave a glide's
    edge shorter than its middle; an even field over the object and a margin round it moves the
    pixels there as one piece, so a glide carries the object whole. ``radius`` 0: as given."""
    if not radius:
        return flow
    length = flow.detach().float().pow(2).sum(1, keepdim=True).sqrt()
    weight = length * (length > CARRY_MOVING)
    k = 2 * radius + 1
    total = F.avg_pool2d(weight, k, 1, radius)
    mean = F.avg_pool2d(flow.float() * weight, k, 1, radius) / total.clamp_min(1e-12)
    return mean * (total > 0)


def shown(flow: torch.Tensor, on: torch.Tensor, share: torch.Tensor | None) -> torch.Tensor:
    """A step's own displacement of the previous frame and the carried one [N, 2, H, W], and the
    carried source's share of the two (``FlowHead.carry_share``) -> the displacement the frame
    showed, which the next step carries on (the own one where ``share`` is None)."""
    return flow if share is None else flow + share * (on.to(flow.dtype) - flow)


def carry_from_row_before(steps: int, pool: int = 0) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``FlowHead.forward``'s ``carry`` for a teacher-forced pass, whose rows are runs of ``steps``
    consecutive steps of one sequence: each row's is the row before's displacement ``carried`` on
    (and ``pooled`` over ``pool`` px), a run's first row's 0. With a share (``carry_shown``) the
    row before's is the one it ``shown``, which needs the row before that's, so the rows are
    carried one after another (``StepCarry``, as the closed loop does)."""

    def carry(flow: torch.Tensor, share: torch.Tensor | None = None) -> torch.Tensor:
        runs = flow.view(-1, steps, *flow.shape[1:])
        if share is None:
            on = pooled(carried(runs[:, :-1].flatten(0, 1)), pool).view(runs.shape[0], steps - 1, *flow.shape[1:])
            return torch.cat([on.new_zeros(runs.shape[0], 1, *flow.shape[1:]), on], 1).flatten(0, 1)
        shares, ons, before = share.view(-1, steps, *share.shape[1:]), [], None
        for r in range(steps):  # as the closed loop carries, one step at a time
            step = StepCarry(before, pool)
            ons.append(step(runs[:, r], shares[:, r]))
            before = step.shown
        return torch.stack(ons, 1).flatten(0, 1)

    return carry


class StepCarry:
    """``FlowHead.forward``'s ``carry`` for one closed-loop step: the displacement the step before
    showed (``before``; None at a first step), ``carried`` on and ``pooled`` over ``pool`` px. It
    keeps the displacement this step shows (``shown``) for the next step's."""

    def __init__(self, before: torch.Tensor | None, pool: int = 0) -> None:
        self.on = None if before is None else pooled(carried(before), pool)
        self.shown: torch.Tensor | None = None

    def __call__(self, flow: torch.Tensor, share: torch.Tensor | None = None) -> torch.Tensor:
        on = torch.zeros_like(flow, dtype=torch.float32) if self.on is None else self.on  # float, as ``carried``'s
        self.shown = shown(flow, on, share)
        return on


RIGID_INIT_SCALE = 10.0  # PyTorch's initial weights give shifts of about 0.1 px; these start at about 1


class RigidShifts(nn.Module):
    """The decoder's 8 x 8 maps [N, C, 8, 8] -> one displacement per rigid layer [N, K, 2] (x, y
    pixels, as ``warp`` takes them). A linear map of the whole grid, so where a thing is and what
    the spatial latent draws there both bear on how far its layer moves. Its weights start random
    and large enough for shifts of about a pixel: layers that started alike would learn alike
    (two unmoved layers kept equal shifts through 100 steps), and an unmoved layer, the previous
    frame as it is, gives the mask no reason to leave the still table, whose pixels then hold
    the shift at 0 (it fell from ~1 px to 0.07 in those steps)."""

    def __init__(self, channels: int, layers: int, side: int = 8) -> None:
        super().__init__()
        self.layers = layers
        self.fc = nn.Linear(channels * side * side, 2 * layers)
        with torch.no_grad():
            self.fc.weight.mul_(RIGID_INIT_SCALE)
            self.fc.bias.zero_()

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.fc(maps.flatten(1)).float().view(-1, self.layers, 2)


def move(prev: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Apply sample n's kernels to its own frame: prev [N, C, H, W], kernels [N, K, k, k] ->
    [N, K, C, H, W]. One grouped convolution over the whole batch, no Python loop."""
    n, c, h, w = prev.shape
    k = kernels.shape[1]
    weight = kernels[:, None].expand(n, c, k, CDNA_SIZE, CDNA_SIZE).reshape(n * c * k, 1, CDNA_SIZE, CDNA_SIZE)
    out = F.conv2d(prev.reshape(1, n * c, h, w), weight.to(prev.dtype), padding=CDNA_SIZE // 2, groups=n * c)
    return out.view(n, c, k, h, w).transpose(1, 2)


def translate(frame: torch.Tensor, shift: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``warp`` by one displacement per frame: frame [N, C, H, W], shift [N, 2] (x, y pixels)."""
    return warp(frame, shift[:, :, None, None].expand(-1, -1, *frame.shape[-2:]), mode)


def dead_zone(flow: torch.Tensor, deadzone: float) -> torch.Tensor:
    """Each displacement [..., 2, H, W] no longer than ``deadzone`` pixels set to exactly 0, the
    longer ones left as they are (a hard threshold on its length): the smooth flow a decoder draws
    bleeds a few tenths of a pixel from what moves onto what does not, and a frame resampled by
    that much at every step blurs, while what moves should still move its full way (at 1 px, a
    soft threshold that shortened every displacement cost the moving region 0.7 dB: docs/issue13.md).
    Inside the dead zone the gradient is 0, so nothing there is pushed back out."""
    if not deadzone:
        return flow
    x, y = flow.float().split(1, dim=-3)  # not .norm(dim=-3): 12 ms a call on the decoder's output, not 1 (bench)
    return flow * (x * x + y * y > deadzone * deadzone)


def warp(frame: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Backward warp: output pixel p takes ``frame`` at p + ``flow``[p] (in pixels, x then y),
    sampled between pixels as ``mode`` says (``RESAMPLE``); outside the image the border
    continues. frame [N, C, H, W] in [0, 1], flow [N, 2, H, W]."""
    n, _, h, w = frame.shape
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=frame.device)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=frame.device)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # [H, W, 2] as (x, y)
    scale = torch.tensor([2 / w, 2 / h], device=frame.device)
    grid = base + flow.float().permute(0, 2, 3, 1) * scale
    out = F.grid_sample(frame.float(), grid, mode=mode, padding_mode="border", align_corners=False)
    return out.clamp(0, 1) if mode == "bicubic" else out  # bicubic overshoots an edge by a few percent
