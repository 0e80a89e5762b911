"""The VGG-64 encoder and decoder of SVG (Denton & Fergus 2018), with a width multiplier.

The encoder returns the frame code ``h`` and skip features at 4 scales (64, 32, 16, 8 px); the
decoder mirrors it and concatenates those skips. ``width=1`` is the published architecture.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .arm import ArmCopy
from .cues import EndEffectorMap, EndEffectorSprite, coordinate_maps, push_flow
from .heads import MAX_RIGID, FlowHead, RigidShifts, make_head, start_as_moved, translate

BASE_CHANNELS = (64, 128, 256, 512)
MAP_SIZE = 8  # the side of the coarsest skip grid (64 px / 8): where a spatial latent lives
CARRY_SHUT = 30.0  # ``carry_off_arm``: taken off the carried motion's mask logit where the arm is (e^-30: never)


def upsampled(cells: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """A spatial latent's channels [N, C, 8, 8] -> [N, C, *size], bilinearly, in float32."""
    return F.interpolate(cells.float(), size=size, mode="bilinear", align_corners=False)


def channels(width: float) -> list[int]:
    return [max(8, round(c * width)) for c in BASE_CHANNELS]


def vgg_layer(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


def frame_reader(widths: tuple[int, int, int], out: int) -> nn.Sequential:
    """Nine channels at 64 x 64 (three frames, or differences beside a frame) down to the 8 x 8
    grid: three strided 4 x 4 convolutions ``widths`` channels wide, then a 3 x 3 one to ``out``.
    Without batch norm, so a score or a posterior does not depend on what else is in the batch:
    the critic's patch scores, the world posterior's mu and logvar."""
    a, b, c = widths
    return nn.Sequential(nn.Conv2d(9, a, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2),
                         nn.Conv2d(b, c, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(c, out, 3, 1, 1))


class Encoder(nn.Module):
    def __init__(self, g_dim: int, width: float = 1.0, nc: int = 3) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels(width)
        self.c1 = nn.Sequential(vgg_layer(nc, c0), vgg_layer(c0, c0))
        self.c2 = nn.Sequential(vgg_layer(c0, c1), vgg_layer(c1, c1))
        self.c3 = nn.Sequential(vgg_layer(c1, c2), vgg_layer(c2, c2), vgg_layer(c2, c2))
        self.c4 = nn.Sequential(vgg_layer(c2, c3), vgg_layer(c3, c3), vgg_layer(c3, c3))
        self.c5 = nn.Sequential(nn.Conv2d(c3, g_dim, 4, 1, 0), nn.BatchNorm2d(g_dim), nn.Tanh())
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[N, 3, 64, 64] -> code [N, g_dim] and skips [h1 (64px), h2 (32), h3 (16), h4 (8)]."""
        h1 = self.c1(x)
        h2 = self.c2(self.pool(h1))
        h3 = self.c3(self.pool(h2))
        h4 = self.c4(self.pool(h3))
        h5 = self.c5(self.pool(h4))
        return h5.flatten(1), [h1, h2, h3, h4]


class Decoder(nn.Module):
    """Mirror of the encoder. ``cond_dim`` > 0 tiles the (standardised) condition and two pixel
    coordinate maps into the feature maps at every scale (as Finn et al. 2016 and SAVP tile the
    action; the coordinates let a convolution turn an end-effector position into a place in the
    image). ``ee_cond_dim`` > 0 adds a heat map of where the end effector is (``cues.py``) at
    every scale, its place clamped with ``ee_exact`` (``ModelConfig.ee_map_exact``). ``output``
    names the head (``heads.py``) that turns the last feature map into the frame; ``ee_copy``
    hands the flow head the latest real frame moved by the end effector's displacement
    (``ee_copy_of``), ``ee_sprite`` a sprite of the end effector drawn from the condition at its
    place (``cues.EndEffectorSprite``); ``still_copy`` hands it the latest real frame as it is;
    ``flow_deadzone`` zeroes its short displacements (``heads.dead_zone``).
    ``z_map`` > 0 reads that many channels of a spatial latent beside the 8 x 8 skip, so noise can
    act at one place (a pushed object) and not at another. ``arm_copy`` hands the flow head the
    latest real frame turned about the arm's base (``arm.ArmCopy``) and draws where the arm's
    shaft is at this step into the maps at every scale (last), so the mask knows where to take it.
    ``arm_clear`` takes the arm out of the previous frame and of the latest real frame before the
    head moves them (``ArmCopy.cleared``): the arm copy alone draws it. ``rigid_layers`` K > 0
    hands the flow head K displacements computed from the 8 x 8 maps, after the spatial latent
    (``heads.RigidShifts``), each moving one layer of the previous frame rigidly. ``noise_flow`` S
    > 0 scales the flow head's displacements at each pixel by 1 + S x the spatial latent's first
    channel there (upsampled bilinearly): a path on which a future's noise moves what moves
    farther or less, as a low-friction object glides on after a push, with no weights between
    (the decoder's own reading of the latent did not learn to, docs/issue13.md, stop 49), while what
    stands still stays still. ``noise_shift`` S > 0 adds S pixels x the latent's first two
    channels (x, y) to the moved previous frame's displacement instead: noise that can also pull
    an object onto table it reaches in some worlds only, where the flow is 0 and no gain moves it.
    ``flow_carry`` gives the flow head its carried-motion source (``heads.carried``); ``forward``
    then needs ``carry``. ``carry_noise`` S > 0 adds S x the latent's first channel to that
    source's mask logit: noise that chooses, pixel by pixel, between gliding on and stopping.
    ``carry_shown``: what that source carries on is the displacement the frame showed
    (``heads.shown``), so a glide the noise chose goes on. ``carry_off_arm`` shuts that source
    where the arm is at this step (``arm.arm_region``; with ``arm_copy``): the arm's own motion,
    carried on, draws it past where the condition puts it, a ghost no world has. ``push_copy``
    hands the flow head the displacement that moves what lies near the gripper by the end
    effector's step (``cues.push_flow``), from the previous frame's place (``prev_cond``) to this
    step's."""

    def __init__(self, g_dim: int, width: float = 1.0, nc: int = 3, output: str = "image", cond_dim: int = 0,
                 ee_cond_dim: int = 0, ee_exact: bool = False, ee_copy: bool = False, ee_sprite: bool = False,
                 still_copy: bool = False, flow_deadzone: float = 0.0, z_map: int = 0, arm_copy: bool = False,
                 arm_clear: bool = False, flow_resample: str = "bilinear", rigid_layers: int = 0,
                 noise_flow: float = 0.0, noise_shift: float = 0.0, flow_carry: bool = False,
                 carry_noise: float = 0.0, carry_shown: bool = False, carry_off_arm: bool = False,
                 mask_temperature: float = 1.0, push_copy: bool = False) -> None:
        super().__init__()
        if carry_off_arm and not (flow_carry and arm_copy):
            raise ValueError("carry_off_arm needs flow_carry and arm_copy: it shuts the carried motion where the arm is")
        if arm_clear and not arm_copy:
            raise ValueError("arm_clear needs arm_copy: the arm copy finds the base it clears the bar from")
        if (noise_flow or noise_shift) and not (z_map and output == "flow"):
            raise ValueError("noise_flow and noise_shift need z_map and the flow head: the latent moves the head's "
                             "displacements")
        if carry_noise and not (z_map and flow_carry):
            raise ValueError("carry_noise needs z_map and flow_carry: the latent moves the carried motion's mask logit")
        if (ee_copy or ee_sprite or arm_copy or push_copy) and not ee_cond_dim:
            raise ValueError("ee_copy, ee_sprite, arm_copy and push_copy need the end-effector map (ee_cond_dim > 0): "
                             "they are placed by it")
        self.head = make_head(output, g_dim, nc, ee_copy=ee_copy, ee_sprite=ee_sprite, still_copy=still_copy,
                              flow_deadzone=flow_deadzone, arm_copy=arm_copy, flow_resample=flow_resample,
                              rigid_layers=rigid_layers, flow_carry=flow_carry, carry_shown=carry_shown,
                              mask_temperature=mask_temperature, push_copy=push_copy)
        self.output, self.nc, self.cond_dim, self.ee_copy, self.z_map = output, nc, cond_dim, ee_copy, z_map
        self.ee_map = EndEffectorMap(ee_cond_dim, exact=ee_exact) if ee_cond_dim else None
        self.ee_sprite = EndEffectorSprite(ee_cond_dim) if ee_sprite else None
        self.arm = ArmCopy() if arm_copy else None
        self.arm_clear, self.noise_flow, self.noise_shift, self.carry_noise = arm_clear, noise_flow, noise_shift, carry_noise
        self.carry_off_arm = carry_off_arm
        e = (cond_dim + 2 if cond_dim else 0) + (1 if ee_cond_dim else 0) + (1 if arm_copy else 0)
        c0, c1, c2, c3 = channels(width)
        self.upc1 = nn.Sequential(nn.ConvTranspose2d(g_dim, c3, 4, 1, 0), nn.BatchNorm2d(c3), nn.LeakyReLU(0.2, inplace=True))
        self.upc2 = nn.Sequential(vgg_layer(c3 * 2 + e + z_map, c3), vgg_layer(c3, c3), vgg_layer(c3, c2))
        self.rigid = RigidShifts(c2, rigid_layers) if rigid_layers else None
        self.upc3 = nn.Sequential(vgg_layer(c2 * 2 + e, c2), vgg_layer(c2, c2), vgg_layer(c2, c1))
        self.upc4 = nn.Sequential(vgg_layer(c1 * 2 + e, c1), vgg_layer(c1, c0))
        self.upc5 = nn.Sequential(vgg_layer(c0 * 2 + e, c0), nn.ConvTranspose2d(c0, nc + self.head.extra, 3, 1, 1))
        self.head.init_last(self.upc5[1])
        self._register_load_state_dict_pre_hook(_old_head_keys)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def _with_cond(self, d: torch.Tensor, skip: torch.Tensor, cond: torch.Tensor | None,
                   shaft: torch.Tensor | None, zmap: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.up(d), skip]
        n, _, h, w = skip.shape
        if self.cond_dim:
            coords = coordinate_maps(h, w, d.device, d.dtype)[None].expand(n, -1, -1, -1)
            parts += [cond.to(d.dtype)[:, :, None, None].expand(-1, -1, h, w), coords]
        if self.ee_map is not None:
            parts.append(self.ee_map(cond, h, w).to(d.dtype))
        if zmap is not None:
            parts.append(zmap.to(d.dtype))
        if shaft is not None:
            parts.append(F.adaptive_avg_pool2d(shaft, (h, w)).to(d.dtype))
        return torch.cat(parts, 1)

    def ee_copy_of(self, anchor: torch.Tensor, anchor_cond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The latest real frame [N, 3, H, W] moved rigidly so that its end effector (at the place
        the map gives ``anchor_cond``, its own position at rest) lands where this step's is (the
        place of ``cond``). Near the gripper that is the next frame, sharp however far the arm has
        gone; the flow head's mask picks it there. Resampled once from a real frame, so it does not
        blur step after step as the moved previous frame does."""
        return translate(anchor, self.ee_map.shift(anchor_cond, cond, *anchor.shape[-2:]), self.head.resample)

    def forward(self, g: torch.Tensor, skips: list[torch.Tensor], prev: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, anchor: torch.Tensor | None = None,
                anchor_cond: torch.Tensor | None = None, zmap: torch.Tensor | None = None,
                prev_cond: torch.Tensor | None = None, moved: bool = False,
                carry: Callable[..., torch.Tensor] | None = None, glide: torch.Tensor | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Code [N, g_dim], the encoder's skips, the previous frame [N, 3, 64, 64] (compose, cdna,
        flow), the standardised condition [N, 7] (condition and end-effector maps), the latest
        real frame (flow), its standardised condition at rest (``ee_copy``) and the spatial
        latent [N, z_map, 8, 8] (``z_map``) -> frame [N, 3, 64, 64] in [0, 1]. ``arm_copy`` needs
        the latest real frame and its condition at rest too, ``arm_clear`` and ``push_copy`` the
        previous frame's standardised condition at rest (``prev_cond``). ``moved`` (flow head
        only): also return the previous frame the flow head moves and its displacement.
        ``carry``: the flow head's (``flow_carry``; ``heads.FlowHead.forward``). ``glide`` [N, z_map, 8, 8]: the spatial latent
        whose first channel sets the carried motion's mask logit, in place of ``zmap``'s."""
        if (self.cond_dim or self.ee_map is not None) and cond is None:
            raise ValueError("this decoder draws the condition into its maps: pass cond")
        if bool(self.z_map) != (zmap is not None):
            raise ValueError(f"this decoder reads a spatial latent of {self.z_map} channels: pass zmap of that many"
                             if self.z_map else "this decoder has no spatial latent: zmap must be None")
        extra, shaft, head_anchor = {}, None, anchor
        if self.arm is not None:
            if anchor is None or anchor_cond is None:
                raise ValueError("this decoder turns the latest real frame with the arm: pass anchor and anchor_cond")
            h, w = anchor.shape[-2:]
            src = self.ee_map.pixels(anchor_cond, h, w)
            at = self.ee_map.pixels(cond, h, w)
            extra["arm_copy"], shaft = self.arm(anchor, src, at, self.head.resample)
            if self.carry_off_arm:
                extra["carry_logit"] = -CARRY_SHUT * self.arm.region(anchor, src, at).float()
            if self.arm_clear:
                if prev_cond is None:
                    raise ValueError("this decoder clears the arm from the previous frame: pass prev_cond")
                prev = self.arm.cleared(prev, anchor, src, self.ee_map.pixels(prev_cond, h, w))
                head_anchor = self.arm.cleared_anchor(anchor, src)
        if getattr(self.head, "push_copy", False):
            if prev_cond is None:
                raise ValueError("this decoder moves the previous frame with the end effector's step: pass prev_cond")
            h, w = prev.shape[-2:]
            extra["push"] = push_flow(self.ee_map.pixels(prev_cond, h, w), self.ee_map.pixels(cond, h, w), h, w)
        d = self.upc1(g[:, :, None, None])
        d = self.upc2(self._with_cond(d, skips[3], cond, shaft, zmap))
        if self.rigid is not None:
            extra["rigid"] = self.rigid(d)
        d = self.upc3(self._with_cond(d, skips[2], cond, shaft))
        d = self.upc4(self._with_cond(d, skips[1], cond, shaft))
        out = self.upc5(self._with_cond(d, skips[0], cond, shaft))
        if self.ee_copy:
            if anchor is None or anchor_cond is None:
                raise ValueError("this decoder moves the latest real frame with the end effector: pass anchor and anchor_cond")
            extra["ee_copy"] = self.ee_copy_of(anchor, anchor_cond, cond)
        if self.ee_sprite is not None:
            extra["ee_sprite"] = self.ee_sprite(cond, self.ee_map.location(cond), *out.shape[-2:])
        if self.noise_flow or self.noise_shift or self.carry_noise:  # the latent's first two channels, upsampled once
            up = upsampled(zmap[:, :2], out.shape[-2:])
            if self.noise_flow:
                extra["gain"] = 1 + self.noise_flow * up[:, :1]
            if self.noise_shift:
                extra["shift"] = self.noise_shift * up
            if self.carry_noise:
                drawn = up[:, :1] if glide is None else upsampled(glide[:, :1], out.shape[-2:])
                extra["carry_logit"] = extra.get("carry_logit", 0) + self.carry_noise * drawn
        if moved:
            extra["moved"] = True
        if carry is not None:
            extra["carry"] = carry
        return self.head(out, prev, head_anchor, g, **extra)


def grown(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], z_map: int = 0,
          arm_copy: bool = False, moved: Sequence[int] = ()) -> dict[str, torch.Tensor]:
    """The weights ``theirs`` of a model grown into one with the end-effector map, copy, sprite,
    still copy, arm copy, spatial latent, its learned prior, rigid layers, critic and/or world posterior (whose fresh
    weights are ``ours``). Each convolution that reads a scale's maps gets one more input channel for the
    end-effector map and, if ``arm_copy`` grows, one for its shaft map (and the 8 x 8 one a
    channel per latent map channel, ``z_map`` of them; appended last by ``_with_cond``), with
    zero weights; the flow head's last layer gets an output channel for each of the copies and
    the sprite, their mask logits (appended last), with zero weights and ``ours``'s biases
    (``heads.FlowHead.OPTIONAL``), and one for each rigid layer, last; of those new outputs, the
    ones ``moved`` names (``FlowHead.started_as_moved``: the carried motion's, the push copy's
    and the rigid layers') start as a copy of the moved previous frame's logit less 2
    (``heads.start_as_moved``) instead; the map, the sprite, the rigid
    layers' shifts (``heads.RigidShifts``: about a pixel), the critic, the world posterior and the latent's posterior and prior
    start as ``ours`` has them (the prior exactly N(0, I)). So the grown model computes what
    the old one did (exactly, or with the new masks under 1%; a rigid layer takes an eighth of
    the moved previous frame's share, the previous frame moved by about a pixel), and training
    then teaches it to use them. Raises ValueError naming a weight that does not fit."""
    extra = sorted(set(theirs) - set(ours))
    if extra:
        raise ValueError(f"weights this model lacks: {', '.join(extra)}")
    out = {}
    for key, mine in ours.items():
        if key not in theirs:
            if not any(part in f".{key}" for part in (".ee_map.", ".ee_sprite.", ".posterior_map.", ".prior_map.",
                                                      ".rigid.", ".critic.", ".world.")):
                raise ValueError(f"{key} is missing")
            out[key] = mine
            continue
        old = theirs[key]
        new = (range(1, len(FlowHead.OPTIONAL) + MAX_RIGID + 1) if key.startswith("decoder.upc5.1.")  # masks
               else range(1, 2 + arm_copy + z_map) if key.startswith("decoder.upc2.0.0.")  # the maps and the latent's
               else range(1, 2 + arm_copy))  # the end-effector map and the shaft's
        if old.shape == mine.shape:
            out[key] = old
        elif old.dim() == 4 and mine.shape[1] - old.shape[1] in new and old.shape[0] == mine.shape[0] \
                and old.shape[2:] == mine.shape[2:]:  # a Conv2d's new input, or a ConvTranspose2d's new outputs
            out[key] = torch.cat([old, old.new_zeros(old.shape[0], mine.shape[1] - old.shape[1], *old.shape[2:])], 1)
        elif old.dim() == 1 and mine.shape[0] - old.shape[0] in new and key == "decoder.upc5.1.bias":
            out[key] = torch.cat([old, mine[len(old):]])
        else:
            raise ValueError(f"{key}: shape {tuple(old.shape)} does not grow into {tuple(mine.shape)}")
    new_outputs = [k for k in moved if k >= len(theirs["decoder.upc5.1.bias"])]  # a kept output keeps its weights
    start_as_moved(out["decoder.upc5.1.weight"], out["decoder.upc5.1.bias"], new_outputs)
    return out


# convolutions whose input joins several of a scale's maps: the levels (``channels`` index) of its
# widened blocks, in order; what follows them (condition, coordinate, end-effector, latent and shaft
# maps) keeps its size. Every other convolution reads one level's maps, found by their count.
JOINED_INPUTS = {"decoder.upc2.0.0": (3, 3), "decoder.upc3.0.0": (2, 2), "decoder.upc4.0.0": (1, 1),
                 "decoder.upc5.0.0": (0, 0), "posterior_map.net.0": (3, 3), "prior_map.net.0": (3, 3)}


def _placed(n_old: int, n_new: int, levels: tuple[int, ...] | None, old: list[int], new: list[int],
            what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each of a tensor dimension's ``n_old`` channels lies among its ``n_new`` once widened
    from ``old`` to ``new`` channels per level: a LongTensor [n_old]; and each new channel's place
    with the place of the old channel of its block it would copy (the k-th new one the k-th old
    one, round again if the block more than doubles). ``levels``: the joined blocks
    (``JOINED_INPUTS``), or None for one block (its level found by its count) or none."""
    if n_old == n_new:
        return torch.arange(n_old), torch.arange(0), torch.arange(0)
    if n_new < n_old:
        raise ValueError(f"{what}: {n_old} channels do not widen into {n_new}")
    if levels is None:
        if n_old not in old or new[old.index(n_old)] != n_new:
            raise ValueError(f"{what}: {n_old} channels do not widen into {n_new}")
        levels = (old.index(n_old),)
    rest = n_old - sum(old[lv] for lv in levels)
    if rest < 0 or n_new - sum(new[lv] for lv in levels) != rest:
        raise ValueError(f"{what}: {n_old} channels do not widen into {n_new} as blocks {levels}")
    parts, fresh, source, start = [], [], [], 0
    for lv in levels:
        parts.append(torch.arange(start, start + old[lv]))
        fresh.append(torch.arange(start + old[lv], start + new[lv]))
        source.append(start + torch.arange(new[lv] - old[lv]) % old[lv])
        start += new[lv]
    parts.append(torch.arange(start, start + rest))
    return torch.cat(parts), torch.cat(fresh), torch.cat(source)


def widened(theirs: dict[str, torch.Tensor], model: nn.Module, width: float,
            copies: bool = False) -> dict[str, torch.Tensor]:
    """The weights ``theirs`` of a model of ``width``, placed in ``model``, the same but wider, so
    that it computes exactly what they did: each old channel keeps its weights at its place among
    the new ones; a new channel's weights are ``model``'s own (its fresh start), and what an old
    channel reads from a new one is 0, so the new channels start as features nothing reads yet,
    and training teaches the old ones to read them (their gradient is not 0, as it would be with
    the new channels zeroed too). Batch norm's statistics are per channel, so this holds in
    training too. Raises ValueError naming a weight that does not widen.

    ``copies`` (Net2WiderNet, Chen et al. 2016): each new channel starts as a copy of an old one of
    its scale (the same reads, batch norm and all), and what read that old channel reads it from
    the old one and its copies in equal parts, each plus a random tenth of the parts' spread,
    centred so that the parts still add up to the old read (the function is kept) while the
    twins can part. No fresh features: the new channels start as what the old ones know."""
    old, new = channels(width), channels(model.cfg.width)
    ours = model.state_dict()
    extra = sorted(set(theirs) ^ set(ours))
    if extra:
        raise ValueError(f"weights one model has and the other lacks: {', '.join(extra)}")
    out = dict(theirs)
    generator = torch.Generator().manual_seed(0)
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)):
            continue
        key = f"{name}.weight"
        if theirs[key].shape == ours[key].shape:
            continue
        w_old = theirs[key]
        if isinstance(module, nn.BatchNorm2d):
            at, fresh, source = _placed(len(w_old), len(ours[key]), None, old, new, key)
            for part in ("weight", "bias", "running_mean", "running_var"):
                v = ours[f"{name}.{part}"].clone()
                v[at] = theirs[f"{name}.{part}"]
                if copies:
                    v[fresh] = v[source]
                out[f"{name}.{part}"] = v
            continue
        o, i = (1, 0) if isinstance(module, nn.ConvTranspose2d) else (0, 1)
        outs, out_fresh, out_source = _placed(w_old.shape[o], ours[key].shape[o], None, old, new, key)
        ins, in_fresh, in_source = _placed(w_old.shape[i], ours[key].shape[i], JOINED_INPUTS.get(name), old, new,
                                           key)
        w = ours[key].clone().movedim((o, i), (0, 1))
        w[outs] = 0.0  # an old channel reads nothing from a new one...
        w[outs[:, None], ins[None, :]] = w_old.movedim((o, i), (0, 1))  # ...and what it read before
        if copies:
            for k in range(len(ins)):  # each old input's read shared with its copies, in equal parts +- noise
                mine = torch.cat([ins[k:k + 1], in_fresh[in_source == ins[k]]])
                if len(mine) > 1:
                    part = w[:, ins[k]] / len(mine)
                    noise = torch.randn((len(mine), *part.shape), generator=generator) * part.std() / 10
                    w[:, mine] = (part + noise - noise.mean(0)).movedim(0, 1)
            w[out_fresh] = w[out_source]
        out[key] = w.movedim((0, 1), (o, i)).contiguous()
        if module.bias is not None:
            bias = ours[f"{name}.bias"].clone()
            bias[outs] = theirs[f"{name}.bias"]
            if copies:
                bias[out_fresh] = bias[out_source]
            out[f"{name}.bias"] = bias
    wrong = [k for k in ours if out[k].shape != ours[k].shape]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: not widened (only convolutions and batch norm widen)")
    return out


def _old_head_keys(state_dict: dict, prefix: str, *args: object) -> None:
    """Checkpoints from before heads were modules keep CDNA's kernels at ``decoder.kernels``."""
    for key in [k for k in state_dict if k.startswith(prefix + "kernels.")]:
        state_dict[prefix + "head." + key[len(prefix):]] = state_dict.pop(key)
