"""The conditional VAE of the SVG family: encoder, posterior, prior, frame predictor, decoder.

Time convention (causal): frame ``x_t`` is predicted from ``x_{t-1}``, ``z_t`` and the condition
of step ``t-1`` -- the action issued after seeing frame ``t-1`` together with the end-effector
position in frame ``t-1``. In BAIR (and the simulator) action ``a_{t-1}`` is what moves the arm
from frame ``t-1`` to frame ``t``, so nothing from step ``t`` is used to predict frame ``t``.
Repos that feed ``cond[t]`` instead hand the model the end-effector position of the very frame it
must predict.

Skips come from the last context frame (SVG), or from the previous frame with
``last_frame_skip``. During the context steps both are the latest real frame.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import nn
from torch.nn import functional as F

from ..condition import ACTIONS, COND_DIM
from ..errors import ConfigError
from ..metrics import (
    agreement_gap,
    branching,
    edge_gap,
    energy_score,
    gaussian_blur,
    moving_mask,
    residual_energy_score,
    spread_gap,
)
from .critic import Critic, adversarial_losses
from .gaussian import GaussianLSTM, GaussianMap, kl_divergence, reparameterize
from .heads import HEADS, MAX_RIGID, RESAMPLE, StepCarry, carry_from_row_before, warp
from .predictor import FramePredictor
from .spread import MOST as SPREAD_MOST
from .spread import SpreadHead
from .vgg64 import MAP_SIZE, Decoder, Encoder, channels
from .world import WorldPosterior

PIXEL_LOSSES = ("mse", "l1")
# the fields that act on the flow head alone, so need output 'flow' when not at their defaults, and what each does
NEEDS_FLOW = (("still_copy", "it is a source of the flow head"),
              ("flow_deadzone", "it zeroes the flow head's short displacements"),
              ("flow_photo_weight", "it trains the flow head's moved previous frame"),
              ("rigid_layers", "they are sources of the flow head"),
              ("noise_flow", "it scales the flow head's displacements"),
              ("noise_shift", "it shifts the flow head's displacements"),
              ("flow_carry", "it is a source of the flow head"),
              ("push_copy", "it is a source of the flow head"),
              ("mask_temperature", "it sharpens the flow head's mask"))
# how the weights are used, not their shapes: export may set them
SAMPLING = ("flow_deadzone", "z_hold", "z_scale", "arm_calm", "map_noise_block", "flow_resample", "carry_pool",
            "glide_noise_only", "carry_off_arm", "mask_temperature", "spread_gain", "spread_base", "spread_reference",
            "spread_select")
# not the weights' shapes: --init may change them
INIT_MAY_CHANGE = ("pixel_loss", "motion_weight", "map_noise_only", "arm_clear", "flow_photo_weight", "flow_photo_blur",
                   "flow_photo_rollout", "noise_flow", "noise_shift", "carry_noise", "carry_shown", *SAMPLING)


@dataclass
class StepLosses:
    pred: torch.Tensor  # [B, T-1, 3, 64, 64]: predictions of frames 1..T-1
    mse: torch.Tensor  # [T-1]: per-step pixel MSE, averaged over batch and pixels
    kld: torch.Tensor  # [T-1]: per-step KL, summed over z and averaged over the batch
    recon: torch.Tensor  # [T-1]: the pixel loss trained on (MSE, or L1 which blurs less)
    kl_loss: torch.Tensor  # [T-1]: the KL term trained on (``kld``, or with free bits)
    best: torch.Tensor  # []: pixel loss of the closest of K futures from the prior (0 without ``best_of``)
    energy: torch.Tensor  # []: energy score of prior futures against re-simulated ones (0 without ``futures``)
    cover: torch.Tensor  # []: pixel loss of the closest prior future to each re-simulated one (``_energy``)
    branch: torch.Tensor  # []: the re-simulated futures rebuilt through the posterior, branching pixels weighted
    spread: torch.Tensor  # []: |model std - truth std| per pixel of prior futures against re-simulated ones (``_energy``)
    edges: torch.Tensor  # []: how far prior futures fall short of the re-simulated ones' squared edges where they differ
    agree: torch.Tensor  # []: 1 - the correlation of prior futures' std map with the re-simulated ones' (``_energy``)
    photo: torch.Tensor  # []: ``flow_photo_weight`` x the moved previous frame's L1 error where things move (0 when off)
    flow_truth: torch.Tensor  # []: the flow head's displacements against the simulator's true ones (``_flow_truth``)
    adv: torch.Tensor  # []: the adversarial term on prior futures, the model's side (``critic.adversarial_losses``)
    critic: torch.Tensor  # []: ... the critic's side, which trains only the critic
    world: torch.Tensor  # []: the re-simulated futures drawn from the noise the world posterior infers (``_world``)
    world_kl: torch.Tensor  # []: ... that posterior's KL from N(0, I), the prior's noise
    world_kl_loss: torch.Tensor  # []: ... the KL trained on: each cell's at least ``free_bits`` nats
    cover_flow: torch.Tensor  # []: per re-simulated future, the flow error of the prior future closest in flow (``_cover_flow``)
    noise: torch.Tensor  # []: the learned map prior's std, averaged over the future steps' cells (``_noise_cost``)


PRIORS = ("fixed", "learned")
MAP_BLOCKS = tuple(b for b in range(1, MAP_SIZE + 1) if MAP_SIZE % b == 0)  # block sides that tile the grid


@dataclass(frozen=True)
class FutureTerms:
    """How the training terms on several re-simulated true futures score them: the run's
    ``energy_*``, ``branch_weight`` and ``cover_*`` fields (README, "Several true futures"), in
    one place rather than a parameter each through ``train_step``, ``SVG.forward`` and ``SVG._energy``."""

    weight: float = 1.0  # the energy score's weight in the loss
    patch: int = 0  # 0: one norm over the whole future; P: the mean score of P x P patches of each frame
    pool: int = 1  # > 1: plus the same score of the frames averaged over this many x this many pixels
    branch: bool = False  # its spread term only where the true futures differ
    branch_weight: float = 0.0  # its patches where the true futures differ count 1 + this
    residual: bool = False  # scored as deviations from the noiseless future (``metrics.residual_energy_score``)
    residual_share: float = 1.0  # ... that score's share of the term, the plain score's the rest
    beta: float = 1.0  # each of its norms to this power, in (0, 2) (``metrics.energy_score``)
    z_scale: float = 1.0  # the prior futures they score drawn with the noise x this (the export's ``z_scale``)
    rebuild_weight: float = 0.0  # > 0: also rebuild the futures through the posterior, where they differ x 1 + this
    cover_weight: float = 0.0  # the weight of the closest prior future's pixel loss, per true future
    cover_branch: bool = False  # ... chosen and scored only where the true futures differ
    spread_weight: float = 0.0  # the weight of ``metrics.spread_gap`` between those futures and the true ones
    edge_weight: float = 0.0  # the weight of ``metrics.edge_gap`` between those futures and the true ones
    agree_weight: float = 0.0  # the weight of ``metrics.agreement_gap`` between those futures and the true ones
    adv_weight: float = 0.0  # the weight of the adversarial term on those futures against the true ones (``critic``)
    world_weight: float = 0.0  # the weight of the true futures drawn from the noise the world posterior infers (``_world``)
    world_branch_weight: float = 0.0  # ... whose pixels where the true futures differ count 1 + this
    cover_flow_weight: float = 0.0  # the weight of the closest prior future's flow error, per true future (``_cover_flow``)
    noise_weight: float = 0.0  # the weight of the learned map prior's mean std over the future steps (``_noise_cost``)

    @classmethod
    def of(cls, cfg: object) -> FutureTerms:
        """Those of a training ``Config``."""
        return cls(weight=cfg.energy_weight, patch=cfg.energy_patch, pool=cfg.energy_pool, branch=cfg.energy_branch,
                   branch_weight=cfg.energy_branch_weight, residual=cfg.energy_residual,
                   residual_share=cfg.energy_residual_share, beta=cfg.energy_beta,
                   z_scale=cfg.energy_z_scale,
                   rebuild_weight=cfg.branch_weight,
                   cover_weight=cfg.cover_weight, cover_branch=cfg.cover_branch,
                   spread_weight=cfg.spread_weight, edge_weight=cfg.edge_weight, agree_weight=cfg.agree_weight,
                   adv_weight=cfg.adv_weight,
                   world_weight=cfg.world_weight, world_branch_weight=cfg.world_branch_weight,
                   cover_flow_weight=cfg.cover_flow_weight, noise_weight=cfg.noise_weight)


@dataclass
class ModelConfig:
    """The model's shape: what a checkpoint must record to be rebuilt. Fields after
    ``cond_embed`` came later; a checkpoint without one gets its old behaviour (the default)."""

    n_past: int = 2
    width: float = 1.0  # 1 is the published VGG-64; smaller widths are light CPU variants
    g_dim: int = 128
    z_dim: int = 64
    rnn_size: int = 256
    posterior_layers: int = 1
    prior_layers: int = 1
    predictor_layers: int = 2
    prior: str = "fixed"  # fixed: N(0, I) as in the lab; learned: SVG-LP
    last_frame_skip: bool = False
    cond_embed: int = 0  # 0 feeds the raw 7-d condition; >0 learns an embedding of that size
    output: str = "image"  # the output head: a name in cvae/model/heads.py's HEADS
    cond_maps: bool = False  # tile the condition and pixel coordinates into the decoder's maps
    ee_maps: bool = False  # draw a heat map of the end effector's learned place into the decoder's maps
    pixel_loss: str = "mse"  # mse (the lab's) | l1 (SAVP's; blurs less)
    motion_weight: float = 0.0  # pixels that change between true frames count 1 + this in the pixel loss
    ee_copy: bool = False  # the flow head may also take the latest real frame moved with the end effector
    ee_sprite: bool = False  # ... and a sprite of the end effector drawn from the condition at its place
    still_copy: bool = False  # ... and the latest real frame as it is, so still pixels may be copied unresampled
    flow_deadzone: float = 0.0  # px: flow displacements no longer than this are 0, so a still pixel's bleed is not resampled
    z_hold: bool = False  # a future from the prior draws its noise once and holds it over its steps (``_noise``)
    z_scale: float = 1.0  # the model's noise is scaled by this at prediction (a temperature; training draws at 1)
    z_map: int = 0  # > 0: a spatial latent too, this many channels on the 8 x 8 grid, read by the decoder there
    map_noise_only: bool = False  # the prior's noise drives only the spatial latent; the vector z is the prior's mean
    arm_copy: bool = False  # the flow head may also take the latest real frame turned about the arm's base (model/arm.py)
    map_prior: bool = False  # the spatial latent's prior is learned per cell (``gaussian.GaussianMap``), not N(0, I)
    arm_clear: bool = False  # the arm is filled out of the previous and latest real frames the flow head moves (model/arm.py)
    arm_calm: bool = False  # every future drawn from the prior takes a noiseless one's pixels where the arm is or has been
    map_noise_block: int = 1  # the spatial latent's prior noise is one draw per block of this many x this many cells
    flow_resample: str = "bilinear"  # how the flow head samples moved frames between pixels (``heads.RESAMPLE``)
    flow_photo_weight: float = 0.0  # > 0: the moved previous frame alone must match the next one where things move (``_photo``)
    flow_photo_blur: float = 0.0  # px: that match is made between frames blurred by a Gaussian of this sigma (``_photo``)
    flow_photo_rollout: bool = False  # ... and on closed-loop steps too, moving the model's own previous frame
    rigid_layers: int = 0  # the flow head's mask may also take this many layers of the previous frame, each moved rigidly
    critic: int = 0  # > 0: a patch critic this wide (model/critic.py) for training's adversarial term; prediction ignores it
    world_posterior: int = 0  # > 0: a posterior this wide over a true future's held spatial noise (model/world.py); training only
    noise_flow: float = 0.0  # > 0: the spatial latent's first channel scales the flow head's displacements by 1 + this x it
    noise_shift: float = 0.0  # > 0: px; its first two channels x this are added to the moved previous frame's displacement
    flow_carry: bool = False  # the flow head's mask may also take the previous frame moved on as the step before moved it
    carry_noise: float = 0.0  # > 0: the spatial latent's first channel x this is added to that source's mask logit
    carry_shown: bool = False  # that source carries on the displacement the frame showed, not the head's own (heads.shown)
    carry_pool: int = 0  # > 0: px; the carried displacement is evened over each moving piece and this margin (heads.pooled)
    glide_noise_only: bool = False  # a prior future's noise reaches only the carried motion's mask logit (glide or stop)
    carry_off_arm: bool = False  # the carried motion's source is shut where the arm is at each step (vgg64.Decoder)
    mask_temperature: float = 1.0  # the flow head's mask logits x this (> 1: each pixel nearer one source; FlowHead.masks)
    push_copy: bool = False  # the flow head may also take the previous frame moved near the gripper by its step (cues.push_flow)
    spread_head: int = 0  # > 0: a spread head this wide (model/spread.py), fitted after training by ``cvae.spread_fit``
    spread_gain: float = 2.0  # ... the futures' std map becomes max(spread_base x the model's, this x the head's)
    spread_base: float = 0.7
    spread_reference: int = 10  # ... the model's std map is taken over this many futures from the prior
    spread_select: int = 0  # > 0: ... this many futures are drawn and those shown chosen for the head's map (spread.chosen)

    @property
    def ee_map_exact(self) -> bool:
        """Whether the end-effector map's place is clamped rather than bounded by tanh
        (``cues.EndEffectorMap``): the copy, the sprite, the arm copy and the push copy put pixels
        where it says, so a pixel off costs them more than a blur."""
        return self.ee_copy or self.ee_sprite or self.arm_copy or self.push_copy

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """The model fields of ``d`` (a checkpoint's or a training config); others are ignored."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names[: names.index("cond_embed") + 1] if n not in d]
        if missing:
            raise ValueError(f"the config lacks the model field(s) {', '.join(missing)}")
        return cls(**{n: d[n] for n in names if n in d}).validate()

    def validate(self) -> ModelConfig:
        for name, allowed in (("prior", PRIORS), ("output", tuple(HEADS)), ("pixel_loss", PIXEL_LOSSES),
                              ("flow_resample", RESAMPLE)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("motion_weight", "flow_photo_weight", "flow_photo_blur"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"{name} must be a number >= 0, not {getattr(self, name)}")
        if self.ee_copy and not (self.output == "flow" and self.ee_maps):
            raise ConfigError("ee_copy needs output 'flow' and ee_maps true: it is a source of the flow head, "
                              "moved by the end-effector map's places")
        if self.ee_sprite and not (self.output == "flow" and self.ee_maps):
            raise ConfigError("ee_sprite needs output 'flow' and ee_maps true: it is a source of the flow head, "
                              "placed by the end-effector map")
        if self.arm_copy and not (self.output == "flow" and self.ee_maps):
            raise ConfigError("arm_copy needs output 'flow' and ee_maps true: it is a source of the flow head, "
                              "turned to the end-effector map's places")
        if not 0 <= self.flow_deadzone < float("inf"):
            raise ConfigError(f"flow_deadzone must be a number of pixels >= 0, not {self.flow_deadzone}")
        if not 0 <= self.z_scale < float("inf"):
            raise ConfigError(f"z_scale must be a number >= 0, not {self.z_scale}")
        if not 0 <= self.z_map == int(self.z_map):
            raise ConfigError(f"z_map must be a whole number of channels >= 0, not {self.z_map}")
        if self.map_noise_only and not self.z_map:
            raise ConfigError("map_noise_only needs z_map > 0: it draws noise for the spatial latent alone")
        if self.arm_clear and not self.arm_copy:
            raise ConfigError("arm_clear needs arm_copy true: the arm copy finds the base whose bar it clears")
        if self.push_copy and not (self.output == "flow" and self.ee_maps):
            raise ConfigError("push_copy needs output 'flow' and ee_maps true: it is a source of the flow head, "
                              "moved by the end-effector map's step")
        if self.arm_calm and not self.arm_copy:
            raise ConfigError("arm_calm needs arm_copy true: the arm copy finds the base of the bar whose region it calms")
        if not 0 <= self.spread_head == int(self.spread_head):
            raise ConfigError(f"spread_head must be a whole number of channels >= 0, not {self.spread_head}")
        if not 0 <= self.spread_gain < float("inf"):
            raise ConfigError(f"spread_gain must be a number >= 0, not {self.spread_gain}")
        if not 0 <= self.spread_base <= SPREAD_MOST:
            raise ConfigError(f"spread_base must be a share between 0 and {SPREAD_MOST:g}, not {self.spread_base}")
        if not 2 <= self.spread_reference == int(self.spread_reference):
            raise ConfigError(f"spread_reference must be a whole number of futures >= 2 (a std map needs two), "
                              f"not {self.spread_reference}")
        if self.spread_select and not self.spread_reference < self.spread_select == int(self.spread_select):
            raise ConfigError(f"spread_select must be 0 or a whole number of futures over spread_reference "
                              f"({self.spread_reference}), not {self.spread_select}")
        if self.map_noise_block not in MAP_BLOCKS:
            raise ConfigError(f"map_noise_block must be one of {', '.join(map(str, MAP_BLOCKS))} (cells per side of a "
                              f"block of the {MAP_SIZE} x {MAP_SIZE} grid), not {self.map_noise_block!r}")
        if self.map_noise_block > 1 and not self.z_map:
            raise ConfigError("map_noise_block needs z_map > 0: it shares the spatial latent's noise between cells")
        if self.map_prior and not (self.z_map and self.prior == "learned"):
            raise ConfigError("map_prior needs z_map > 0 and prior 'learned': it learns the spatial latent's "
                              "prior beside the vector z's")
        if not 0 <= self.rigid_layers <= MAX_RIGID or self.rigid_layers != int(self.rigid_layers):
            raise ConfigError(f"rigid_layers must be a whole number from 0 to {MAX_RIGID}, not {self.rigid_layers}")
        if not 0 <= self.critic == int(self.critic):
            raise ConfigError(f"critic must be a whole number of channels >= 0, not {self.critic}")
        if not 0 <= self.world_posterior == int(self.world_posterior):
            raise ConfigError(f"world_posterior must be a whole number of channels >= 0, not {self.world_posterior}")
        for name in ("noise_flow", "noise_shift", "carry_noise"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"{name} must be a number >= 0, not {getattr(self, name)}")
        if self.noise_flow and not self.z_map:
            raise ConfigError("noise_flow needs z_map > 0: the spatial latent's first channel is what scales the flow")
        if self.carry_noise and not (self.z_map and self.flow_carry):
            raise ConfigError("carry_noise needs z_map > 0 and flow_carry true: the spatial latent's first channel "
                              "moves the carried motion's mask logit")
        if self.carry_shown and not self.flow_carry:
            raise ConfigError("carry_shown needs flow_carry true: it says what the carried motion carries on")
        if not 0 <= self.carry_pool == int(self.carry_pool):
            raise ConfigError(f"carry_pool must be a whole number of pixels >= 0, not {self.carry_pool}")
        if self.carry_pool and not self.flow_carry:
            raise ConfigError("carry_pool needs flow_carry true: it evens the carried motion over each moving piece")
        if self.carry_off_arm and not (self.flow_carry and self.arm_copy):
            raise ConfigError("carry_off_arm needs flow_carry true and arm_copy true: it shuts the carried motion "
                              "where the arm copy's arm is")
        if self.glide_noise_only and not self.carry_noise:
            raise ConfigError("glide_noise_only needs carry_noise > 0: the carried motion's mask logit is what the "
                              "noise would still reach")
        if self.noise_shift and self.z_map < 2:
            raise ConfigError("noise_shift needs z_map >= 2: the spatial latent's first two channels are the shift")
        if self.world_posterior and not (self.z_map and self.map_noise_only and self.z_hold):
            raise ConfigError("world_posterior needs z_map > 0, map_noise_only true and z_hold true: it infers the "
                              "one draw of the spatial latent's noise that a future holds over its steps")
        if not 0 < self.mask_temperature < float("inf"):
            raise ConfigError(f"mask_temperature must be a number > 0, not {self.mask_temperature}")
        if self.flow_resample != "bilinear" and self.output != "flow":
            raise ConfigError(f"flow_resample {self.flow_resample!r} needs output 'flow': it is how the flow head samples")
        defaults = {f.name: f.default for f in fields(self)}
        for name, why in NEEDS_FLOW:
            if getattr(self, name) != defaults[name] and self.output != "flow":
                raise ConfigError(f"{name} needs output 'flow': {why}")
        for name in ("flow_photo_blur", "flow_photo_rollout"):
            if getattr(self, name) and not self.flow_photo_weight:
                raise ConfigError(f"{name} needs flow_photo_weight > 0: it says how that term compares frames")
        return self


def at_rest(cond: torch.Tensor) -> torch.Tensor:
    """Raw conditions [..., 7] with the actions zeroed: where the end-effector map puts one of
    these is where the end effector is in that frame, not where its action takes it next."""
    rest = cond.clone()
    rest[..., ACTIONS] = 0
    return rest


def _before(x_ctx: torch.Tensor, truths: torch.Tensor) -> torch.Tensor:
    """Context [M, n_past, ...] and K true futures of each scene [M, K, F, ...] -> the frame before
    each future frame, [M, K, F, ...]: the last context frame, then the future's own, for the
    pixel loss's moving mask."""
    last = x_ctx[:, None, -1:].expand(-1, truths.shape[1], -1, -1, -1, -1)
    return torch.cat([last, truths[:, :, :-1]], 2)


def _flow_error(flow: torch.Tensor, truth: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Displacements [..., F, 2, H, W] against true ones, shaped alike, where those are known [...,
    F, H, W] -> [...]: the Huber loss (quadratic within a pixel, then linear) of each pixel's
    displacement, summed over x and y, the per-pixel mean (unknown pixels count 0) summed over the steps."""
    err = F.smooth_l1_loss(flow.float(), truth.float(), reduction="none", beta=1.0).sum(-3)
    return (err * known).mean((-2, -1)).sum(-1)


class SVG(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None, **fields_: object) -> None:
        """``SVG(ModelConfig(...))``, or ``SVG(g_dim=16, ...)`` for the same with keywords."""
        super().__init__()
        cfg = replace(cfg or ModelConfig(), **fields_).validate()
        self.cfg = cfg
        self.z_dim, self.n_past, self.last_frame_skip = cfg.z_dim, cfg.n_past, cfg.last_frame_skip
        self.latent_dim = cfg.z_dim + cfg.z_map * MAP_SIZE * MAP_SIZE  # the vector z, then the map's cells
        self.channels_last = False  # training's prepare() may set it
        self.pixel_loss, self.motion_weight = cfg.pixel_loss, cfg.motion_weight
        self.encoder = Encoder(cfg.g_dim, cfg.width)
        self.decoder = Decoder(cfg.g_dim, cfg.width, output=cfg.output, cond_dim=COND_DIM if cfg.cond_maps else 0,
                               ee_cond_dim=COND_DIM if cfg.ee_maps else 0, ee_exact=cfg.ee_map_exact, ee_copy=cfg.ee_copy,
                               ee_sprite=cfg.ee_sprite, still_copy=cfg.still_copy,
                               flow_deadzone=cfg.flow_deadzone, z_map=cfg.z_map, arm_copy=cfg.arm_copy,
                               arm_clear=cfg.arm_clear, flow_resample=cfg.flow_resample,
                               rigid_layers=cfg.rigid_layers, noise_flow=cfg.noise_flow, noise_shift=cfg.noise_shift,
                               flow_carry=cfg.flow_carry, carry_noise=cfg.carry_noise, carry_shown=cfg.carry_shown,
                               carry_off_arm=cfg.carry_off_arm, mask_temperature=cfg.mask_temperature,
                               push_copy=cfg.push_copy)
        self.posterior = GaussianLSTM(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.posterior_layers)
        self.posterior_map = GaussianMap(channels(cfg.width)[3], cfg.z_map) if cfg.z_map else None
        self.prior_map = GaussianMap(channels(cfg.width)[3], cfg.z_map, start=0.0) if cfg.map_prior else None
        self.prior = (GaussianLSTM(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.prior_layers)
                      if cfg.prior == "learned" else None)
        self.predictor = FramePredictor(cfg.g_dim, cfg.z_dim, COND_DIM, cfg.rnn_size, cfg.predictor_layers,
                                        cfg.cond_embed)
        self.critic = Critic(cfg.critic) if cfg.critic else None
        self.world = WorldPosterior(cfg.world_posterior, cfg.z_map) if cfg.world_posterior else None
        self.spread = SpreadHead(cfg.spread_head) if cfg.spread_head else None

    @classmethod
    def from_config(cls, cfg: dict) -> SVG:
        """The model a config dict (a checkpoint's ``meta.json`` or a training config) describes."""
        return cls(ModelConfig.from_dict(cfg))

    def _decode(self, g: torch.Tensor, skips: list[torch.Tensor], prev: torch.Tensor,
                cond: torch.Tensor, anchor: torch.Tensor, anchor_cond: torch.Tensor,
                z: torch.Tensor, moved: bool = False, carry: Callable[..., torch.Tensor] | None = None,
                glide: torch.Tensor | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Codes [N, g], skips, previous frames [N, 3, 64, 64], raw conditions [N, 7], the latest
        real frames [N, 3, 64, 64], their raw conditions [N, 7] and latents [N, latent_dim] (the
        decoder reads the spatial part) -> frames (with ``moved``, and the previous frames the
        flow head moves with their displacements [N, 2, 64, 64]). ``carry``: the flow head's
        (``flow_carry``). ``glide`` [N, latent_dim] (``glide_noise_only``): the latent whose
        spatial part sets the carried motion's mask logit in place of ``z``'s."""
        norm = self.predictor.normalize
        zmap, glide_map = self._map(z), None if glide is None else self._map(glide)
        prev_cond = norm(at_rest(cond)) if self.cfg.arm_clear or self.cfg.push_copy else None
        if not (self.cfg.ee_copy or self.cfg.arm_copy):
            return self.decoder(g, skips, prev, norm(cond), anchor, zmap=zmap, moved=moved, carry=carry,
                                glide=glide_map, prev_cond=prev_cond)
        return self.decoder(g, skips, prev, norm(cond), anchor, norm(at_rest(anchor_cond)), zmap=zmap,
                            prev_cond=prev_cond, moved=moved, carry=carry, glide=glide_map)

    def _map(self, z: torch.Tensor) -> torch.Tensor | None:
        """Latents [..., latent_dim] -> their spatial part [N, z_map, 8, 8] (None without one)."""
        if not self.cfg.z_map:
            return None
        return z[..., self.z_dim:].reshape(-1, self.cfg.z_map, MAP_SIZE, MAP_SIZE)

    def _with_map_prior(self, mu: torch.Tensor, logvar: torch.Tensor, now: torch.Tensor,
                        before: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned prior's mu, logvar [B, L, z_dim] of steps t, with the coarsest skips [B, L,
        C, 8, 8] of frames t-1 (``now``) and t-2 (``before``) -> [B, L, latent_dim]: the spatial
        latent's prior is N(0, I) (mu 0, logvar 0), or with ``map_prior`` each cell's Gaussian
        from what that cell shows and how it moved. With N(0, I) every cell draws the same noise
        and the decoder alone must learn to ignore it where nothing can branch; a learned sigma
        can switch a cell's noise off (the table far from the gripper) and keep it where an
        object is being pushed."""
        if not self.cfg.z_map:
            return mu, logvar
        if self.prior_map is None:
            pad = mu.new_zeros(*mu.shape[:-1], self.latent_dim - self.z_dim)
            return torch.cat([mu, pad], -1), torch.cat([logvar, pad], -1)
        b, steps = mu.shape[:2]
        map_mu, map_logvar = self.prior_map(now.flatten(0, 1), before.flatten(0, 1))
        return torch.cat([mu, map_mu.view(b, steps, -1)], -1), torch.cat([logvar, map_logvar.view(b, steps, -1)], -1)

    def _posterior(self, h: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_t) of steps 1..L-1 from codes [B, L, g] and the coarsest skips [B, L, C, 8, 8] -> mu,
        logvar [B, L-1, latent_dim]: the vector posterior's, then (with ``z_map``) the map's."""
        mu, logvar, _ = self.posterior(h[:, 1:])
        if self.posterior_map is None:
            return mu, logvar
        b, steps = mu.shape[:2]
        map_mu, map_logvar = self.posterior_map(coarse[:, 1:].flatten(0, 1), coarse[:, :-1].flatten(0, 1))
        return torch.cat([mu, map_mu.view(b, steps, -1)], -1), torch.cat([logvar, map_logvar.view(b, steps, -1)], -1)

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(0, 1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Frames [B, L, 3, 64, 64] in one encoder call -> codes [B, L, g] and skips [B, L, ...]."""
        b, length = x.shape[:2]
        h, skips = self.encoder(self._images(x))
        return h.view(b, length, -1), [s.view(b, length, *s.shape[1:]) for s in skips]

    def _latest_real(self, v: torch.Tensor, t: int) -> torch.Tensor:
        """Frames (or conditions) [B, T, ...] -> for steps 1..t-1 those of the latest real frame
        before each, [B, t-1, ...]: frame i-1 during the context, then the last context frame."""
        n = self.n_past
        return torch.cat([v[:, : n - 1], v[:, n - 1 : n].expand(-1, t - n, *v.shape[2:])], 1)

    def _step_skips(self, skips: list[torch.Tensor], t: int) -> list[torch.Tensor]:
        """Skips [B, T, ...] -> the skips of steps 1..t-1 flattened to [B*(t-1), ...]: frame i-1
        for step i, or with SVG's rule the latest context frame. Slices, not an index tensor: no
        host-to-device copy, and a backward that is a slice-add rather than an index_put."""
        n, fmt = self.n_past, torch.channels_last if self.channels_last else torch.contiguous_format
        if self.last_frame_skip:
            steps = [s[:, : t - 1] for s in skips]
        else:
            steps = [torch.cat([s[:, : n - 1], s[:, n - 1 : n].expand(-1, t - n, *s.shape[2:])], 1) for s in skips]
        return [s.flatten(0, 1).contiguous(memory_format=fmt) for s in steps]

    def forward(self, x: torch.Tensor, cond: torch.Tensor, teacher_forcing: bool = True,
                free_bits: float = 0.0, best_of: int = 0,
                futures: tuple[torch.Tensor, ...] | None = None,
                terms: FutureTerms = FutureTerms(),
                true_flow: tuple[torch.Tensor, torch.Tensor] | None = None) -> StepLosses:
        """Training pass over frames [B, T, 3, 64, 64] with condition [B, T, 7].

        ``free_bits`` > 0: the posterior may carry that many nats per step at no cost (Kingma et
        al. 2016), so z is not switched off before the predictor learns to use it; the prior
        still learns to match the posterior with the full gradient (the split of DreamerV3's
        KL balancing: KL(sg(q) || p) trains the prior, max(free_bits, KL(q || sg(p))) the posterior).

        ``best_of`` = K > 0 also draws K futures from the prior (see ``_best_of``).

        ``futures`` (context [M, n_past, 3, 64, 64], condition [M, T, 7], true futures [M, K, T -
        n_past, 3, 64, 64]: scenes re-simulated with their hidden causes re-drawn) also scores K
        futures from the prior against them (see ``_energy``) as ``terms`` say, with
        ``terms.cover_weight`` > 0 also the pixel loss of the closest of those to each; with
        ``terms.rebuild_weight`` > 0 it also rebuilds them through the posterior (see ``_branch``).
        Two more, the true futures' flows [M, K, T - n_past, 2, 64, 64] and where those are known
        [M, K, T - n_past, 64, 64], let ``terms.cover_flow_weight`` score the prior futures' flows
        against them (see ``_cover_flow``).

        ``true_flow`` (where each pixel of frames 1..T-1 was a frame before, [B, T-1, 2, 64, 64] in
        pixels, and where that is known, [B, T-1, 64, 64]: the simulator's) also scores the flow
        head's displacements of the previous frame against it (see ``_flow_truth``).

        With teacher forcing every input is a real frame, so all frames are encoded in one call,
        the LSTMs run over the whole sequence at once, and all predictions are decoded in one
        call. Without it, predictions after the context are fed back step by step.
        """
        b, t = x.shape[:2]
        future_flows = None
        if futures is not None:
            futures, future_flows = futures[:3], futures[3:] or None
        h, skips = self._encode(x)
        mu_q, logvar_q = self._posterior(h, skips[3])
        z = reparameterize(mu_q, logvar_q, torch.randn_like(mu_q))
        photo = flow_truth = h.new_zeros((), dtype=torch.float32)
        if teacher_forcing:
            coarse = skips[3]
            prior = (self._with_map_prior(*self.prior(h[:, :-1])[:2], coarse[:, :-1],
                                          torch.cat([coarse[:, :1], coarse[:, :-2]], 1))
                     if self.prior is not None else None)
            photo_on = bool(self.cfg.flow_photo_weight)
            if photo_on or true_flow is not None:
                pred, *moved = self._teacher_forced(x, h, skips, z, cond, moved=True)
            else:
                pred = self._teacher_forced(x, h, skips, z, cond)
        else:
            n, photo_on = self.n_past, bool(self.cfg.flow_photo_weight and self.cfg.flow_photo_rollout)
            pred, prior, *rest = self._rollout(x[:, :n], h[:, :n], [s[:, :n] for s in skips], cond, t, z=z,
                                               moved=photo_on or true_flow is not None)
            moved = rest[0] if rest else ()
        if photo_on:
            photo = self.cfg.flow_photo_weight * self._photo(*moved, x)
        if true_flow is not None:
            flow_truth = self._flow_truth(moved[1], *true_flow)
        kld = kl_divergence(mu_q, logvar_q, *(prior or ())).mean(0)
        kl_loss = kld
        if free_bits > 0:
            kl_loss = kl_divergence(mu_q, logvar_q, *(p.detach() for p in prior or ())).mean(0).clamp_min(free_bits)
            if prior is not None:
                kl_loss = kl_loss + kl_divergence(mu_q.detach(), logvar_q.detach(), *prior).mean(0)
        mse = F.mse_loss(pred.float(), x[:, 1:].float(), reduction="none").mean((0, 2, 3, 4))
        plain = self.pixel_loss == "mse" and not self.motion_weight
        recon = mse if plain else self._pixel_loss(pred, x[:, 1:], x[:, :-1]).mean(0)
        best = self._best_of(x, h, skips, cond, best_of) if best_of > 0 else recon.new_zeros(())
        energy, cover, spread, edges, agree, adv, critic, cover_flow = (
            self._energy(*futures, terms, future_flows) if futures is not None else (recon.new_zeros(()),) * 8)
        branch = (self._branch(*futures, terms.rebuild_weight) if futures is not None and terms.rebuild_weight > 0
                  else recon.new_zeros(()))
        world, world_kl, world_kl_loss = (self._world(*futures, free_bits, terms.world_branch_weight)
                                          if futures is not None and terms.world_weight and self.world is not None
                                          else (recon.new_zeros(()),) * 3)
        noise = self._noise_cost(prior[1]) if terms.noise_weight and prior is not None else recon.new_zeros(())
        return StepLosses(pred, mse, kld, recon, kl_loss, best, energy, cover, branch, spread, edges, agree,
                          photo, flow_truth, adv, critic, world, world_kl, world_kl_loss, cover_flow, noise)

    def _noise_cost(self, logvar: torch.Tensor) -> torch.Tensor:
        """The learned prior's log-variances [B, T-1, latent_dim] -> the std of its spatial part,
        averaged over the cells of the steps a prediction draws from it (n_past onwards). The
        map prior's std stayed near 1 on every cell (1.05-1.10 on stop 59's ``bcs``), so the
        decoder alone had to learn to ignore noise where nothing branches, and did not over the
        arm's track. Charged, the std should fall where the energy score does not pay for it; at
        0.01 it fell about evenly everywhere (docs/issue13.md, stop 62)."""
        return logvar[:, self.n_past - 1 :, self.z_dim :].float().mul(0.5).exp().mean()

    def _world(self, x_ctx: torch.Tensor, cond: torch.Tensor, truths: torch.Tensor, free_bits: float = 0.0,
               branch_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each of the K true futures of M scenes drawn closed loop, as at prediction, from the held
        spatial noise the world posterior (``world.WorldPosterior``) infers from what sets it apart
        from its siblings: (its pixel loss, summed over the steps, the pixels where the futures differ
        (``metrics.branching``) counting 1 + ``branch_weight``; the posterior's KL from N(0, I),
        summed over the cells; the same with each cell's at least ``free_bits`` nats, the one
        trained on), each averaged over the futures. The first pays the decoder to let that noise
        move an object where this world took it, and the posterior to say where; the KL keeps the
        noise one a draw from the prior could have been. Free bits per cell (Kingma et al. 2016):
        a few pixels of glide are worth little pixel loss, and a KL charged from the first nat
        switched the posterior off before the decoder learned to read it (a test's two worlds,
        a square gone left or right, were drawn alike from either's noise)."""
        k = truths.shape[1]
        mu, logvar = self.world(x_ctx[:, -1], truths)
        pred = self._held_futures(x_ctx, cond, reparameterize(mu, logvar, torch.randn_like(mu)),
                                  self.n_past + truths.shape[2])
        weight = None
        if branch_weight:
            differ = branching(truths, 1).float()  # [M, F, H, W]
            weight = (1 + branch_weight * differ).repeat_interleave(k, 0)
        rebuilt = self._pixel_loss(pred, truths.flatten(0, 1), _before(x_ctx, truths).flatten(0, 1), weight)
        per_cell = kl_divergence(mu[..., None], logvar[..., None])  # [M * K, cells]
        return rebuilt.sum(1).mean(), per_cell.sum(1).mean(), per_cell.clamp_min(free_bits).sum(1).mean()

    def _held_futures(self, x_ctx: torch.Tensor, cond: torch.Tensor, held: torch.Tensor, t: int) -> torch.Tensor:
        """Futures drawn closed loop, as at prediction, from given noise of the spatial latent held
        over all steps (the vector part 0, as ``map_noise_only`` draws it): context [M, n_past, ...],
        condition [M, >= t - 1, 7] and noise [M * K, cells], the K of a scene adjacent -> frames
        n_past..t-1 as [M * K, t - n_past, 3, 64, 64]. The world term's draw, and the benches' that
        ask what a given noise draws."""
        k = held.shape[0] // x_ctx.shape[0]
        noise = torch.cat([held.new_zeros(held.shape[0], self.z_dim), held], -1)[:, None].expand(-1, t - 1, -1)
        h, skips = self._encode(x_ctx)

        def rep(v: torch.Tensor) -> torch.Tensor:
            return v.repeat_interleave(k, 0)

        pred, _ = self._rollout(rep(x_ctx), rep(h), [rep(s) for s in skips], rep(cond[:, : t - 1]), t, noise=noise)
        return pred[:, self.n_past - 1 :]

    def _branch(self, x_ctx: torch.Tensor, cond: torch.Tensor, truths: torch.Tensor, weight: float) -> torch.Tensor:
        """The K true futures of each scene rebuilt through the posterior, teacher-forced as the SVG
        loss's pass, with the pixels where they differ (``metrics.branching``) counting 1 + ``weight``:
        the pixel loss summed over the steps, averaged over the futures.

        Rebuilding a future whose z saw it should draw that future, gliding object and all; but the
        futures differ on a few pixels by a little, so the SVG loss barely pays the predictor to read
        the posterior's z there (with the true future in view, the bundled model draws it no better
        than from a random z: ``bench/posterior.py``). Weighting where the world branches pays it to."""
        m, k = truths.shape[:2]
        seqs = torch.cat([x_ctx[:, None].expand(-1, k, -1, -1, -1, -1), truths], 2).flatten(0, 1)
        t = seqs.shape[1]
        h, skips = self._encode(seqs)
        mu_q, logvar_q = self._posterior(h, skips[3])
        z = reparameterize(mu_q, logvar_q, torch.randn_like(mu_q))
        pred = self._teacher_forced(seqs, h, skips, z, cond[:, :t].repeat_interleave(k, 0))
        differ = branching(truths, 1)  # [M, F, H, W]
        differ = torch.cat([differ.new_zeros(m, self.n_past - 1, *differ.shape[2:]), differ], 1)
        err = (pred.float() - seqs[:, 1:].float()).pow(2).mean(2)  # [M * K, T - 1, H, W]
        err = err * (1 + weight * differ.repeat_interleave(k, 0).float())
        return err.mean((2, 3)).sum(1).mean()

    def _teacher_forced(self, x: torch.Tensor, h: torch.Tensor, skips: list[torch.Tensor], z: torch.Tensor,
                        cond: torch.Tensor, moved: bool = False,
                        ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames 1..T-1 predicted from the real frames before them and z [B, T-1, latent_dim], all
        in one predictor and one decoder call: frames [B, T, ...] and their encoding -> [B, T-1, 3, 64, 64]
        (with ``moved``, and the previous frames the flow head moves, shaped alike, with their
        displacements [B, T-1, 2, 64, 64])."""
        b, t = x.shape[:2]
        g, _ = self.predictor(h[:, :-1], z[..., : self.z_dim], cond[:, :-1])
        out = self._decode(g.flatten(0, 1), self._step_skips(skips, t), self._images(x[:, :-1]),
                           cond[:, :-1].flatten(0, 1), self._images(self._latest_real(x, t)),
                           self._latest_real(cond, t).flatten(0, 1), z.flatten(0, 1), moved,
                           carry_from_row_before(t - 1, self.cfg.carry_pool) if self.cfg.flow_carry else None)
        if moved:
            frame, (prev, flow) = out
            steps = (b, t - 1)
            return frame.reshape(*steps, *x.shape[2:]), prev.reshape(*steps, *x.shape[2:]), flow.reshape(*steps, *flow.shape[1:])
        return out.view(b, t - 1, *x.shape[2:])

    def _photo(self, prev: torch.Tensor, flow: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The previous frames the flow head moves [B, T-1, 3, 64, 64] (real when teacher-forced), moved
        by its displacements [B, T-1, 2, 64, 64] alone, against the true frames 1..T-1 of ``x``:
        their L1 error on the pixels that move (``moving_mask``), the per-pixel mean summed over
        the steps, averaged over the batch; its gradient reaches the displacements alone, not the
        frame moved (on closed-loop steps, ``flow_photo_rollout``, the model's own). With
        ``flow_photo_blur`` = s > 0 both frames are blurred by a Gaussian of sigma s first and the
        moving pixels widened by 2 s.

        The pixel loss scores only the mix, and where an object is pushed the mask can take
        another source (or the gripper's flow can drag the object along), so nothing asks the
        flow itself to follow the object: the bundle's flow moves the pixels where a pushed
        object goes by 0.17 px a step, where it travels up to ~3 px (docs/issue13.md). This asks the moved
        previous frame alone to be the next frame where things move, as an unsupervised optical
        flow is trained. A flat-coloured object moved 3 px gives a bilinear sample's gradient only
        within a pixel of its edges; blurred, within about 2 s of them (coarse-to-fine flow's reason)."""
        sigma = self.cfg.flow_photo_blur
        target, mask = x[:, 1:].float(), moving_mask(x[:, 1:], x[:, :-1]).float()
        moved = warp(gaussian_blur(prev.detach().flatten(0, 1), sigma), flow.flatten(0, 1), self.cfg.flow_resample)
        if sigma:
            target, r = gaussian_blur(target, sigma), math.ceil(2 * sigma)
            mask = F.max_pool2d(mask, 2 * r + 1, stride=1, padding=r)
        err = (moved.view_as(target) - target).abs() * mask.unsqueeze(-3)
        return err.mean((0, 2, 3, 4)).sum()

    @staticmethod
    def _flow_truth(flow: torch.Tensor, truth: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """The flow head's displacements of the previous frame [B, T-1, 2, 64, 64] against the true
        ones, shaped alike, where those are known [B, T-1, 64, 64]: the Huber loss (quadratic within
        a pixel, then linear) of each pixel's displacement, summed over x and y, the per-pixel mean
        summed over the steps, averaged over the batch.

        The pixel loss scores only what the mix of sources draws, so a flow that drags an object's
        colour over more of the table than the object covers, or leaves it behind and lets another
        source draw a haze, costs no more than the haze it makes; and the photometric term
        (``_photo``) sees a flat-coloured object's motion only near its edges. The simulator knows
        where every pixel of a rigid object was a frame before, and that the table stays still.
        With the posterior's z, which saw the frame, the displacement is known, so this asks the
        head to carry each object whole to where it went."""
        return _flow_error(flow, truth, known).mean()

    @staticmethod
    def _cover_flow(flow: torch.Tensor, truth: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """The flow head's displacements in K prior futures of M scenes [M, K, F, 2, 64, 64] against
        the true ones of K re-simulated futures, shaped alike, known [M, K, F, 64, 64]: for each
        true future the ``_flow_truth`` error of the prior future closest to it by that error,
        averaged over the true futures and the scenes. Scored where the pixel's displacement is
        known and some true future moved it (a pushed object in one world, still in another; the
        still table is left out, as ``flow_truth_moved`` leaves it).

        The energy score pulls every prior future towards all the true ones at once, and where an
        object glides in some worlds and stops in others the cheapest answer is a short glide in
        every future: stop 59's heads moved a pushed object 0.17-0.36 px a step where the truths
        branch, where those move it 2.37 px (docs/issue13.md). The true flow with the posterior's z
        (``_flow_truth``) is known; with the prior's noise it is not. Each world asking only the
        future nearest it (best of K turned around, as ``cover_weight`` does for pixels) lets
        different noise take different glides, each its own world's whole length."""
        moved = known & (truth.ne(0).any(-3).any(1, keepdim=True))  # [M, K, F, H, W]
        m, k = truth.shape[:2]
        pairs = _flow_error(flow[:, :, None].expand(-1, -1, k, *flow.shape[2:]),
                            truth[:, None].expand(-1, k, *truth.shape[1:]),
                            moved[:, None].expand(-1, k, *moved.shape[1:]))  # [M, K futures, K truths]
        return pairs.min(1).values.mean()

    def _pixel_loss(self, pred: torch.Tensor, target: torch.Tensor, prev: torch.Tensor,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions, their true frames and the true frames before those, [N, L, 3, 64, 64] each
        (and optionally a per-pixel weight [N, L, 64, 64]) -> the per-pixel mean MSE (or L1) of
        every frame, [N, L].

        With ``motion_weight`` w > 0 a pixel that changes from ``prev`` to ``target`` (by more than
        ``MOVING_THRESHOLD`` in any channel: the arm, and an object where it leaves and where it
        arrives) counts 1 + w times. About 93% of the pixels never move, so an unweighted loss
        is nearly content with a frame that leaves the arm and the pushed object as haze."""
        err = pred.float() - target.float()
        err = err.pow(2) if self.pixel_loss == "mse" else err.abs()
        if self.motion_weight:
            err = err * (1 + self.motion_weight * moving_mask(target, prev).unsqueeze(-3))
        if weight is not None:
            err = err * weight.unsqueeze(-3)
        return err.mean((2, 3, 4))

    def _best_of(self, x: torch.Tensor, h: torch.Tensor, skips: list[torch.Tensor], cond: torch.Tensor,
                 k: int) -> torch.Tensor:
        """Best of many samples (Bhattacharyya et al. 2018): K futures of a sequence drawn from the
        prior with predictions fed back, as at test time; only the closest is trained on.

        Where the world has several futures a single sample can only be right by luck, so the
        posterior path alone lets the predictor ignore z (it starts as noise and stays unread).
        Rewarding the closest of K makes different z draw different futures, each sharp. The first
        ``B // K`` sequences of the batch get the K draws, so this costs one closed-loop pass.
        Returns the pixel loss summed over the future frames, averaged over those sequences.
        """
        n, t = self.n_past, x.shape[1]
        m = max(1, x.shape[0] // k)
        pred = self._prior_futures(x[:m, :n], h[:m, :n], [s[:m, :n] for s in skips], cond[:m], t, k)
        err = self._pixel_loss(pred, x[:m, n:].repeat_interleave(k, 0), x[:m, n - 1 : -1].repeat_interleave(k, 0))
        return err.sum(1).view(m, k).min(1).values.mean()

    def _prior_futures(self, x_ctx: torch.Tensor, h_ctx: torch.Tensor, skips_ctx: list[torch.Tensor],
                       cond: torch.Tensor, t: int, k: int, moved: bool = False, noiseless: bool = False,
                       scale: float = 1.0) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """K futures of each of M sequences drawn from the prior, predictions fed back as at test
        time, for the training terms that score samples (best of K, the energy score): context
        [M, n_past, ...] and its encoding -> frames n_past..t-1 as [M * K, t - n_past, 3, 64, 64],
        the K of a sequence adjacent. With ``arm_calm`` they are drawn as ``predict`` draws them,
        beside a noiseless future whose pixels they take where the arm is or has been: a score
        on them can then ask for spread only where the arm is not. With ``moved`` (flow head),
        also the displacements the head moved the previous frame by, [M * K, t - n_past, 2, 64, 64].
        With ``noiseless``, each sequence's K futures follow its noiseless one: K + 1 of them. The
        noise is the prior's x ``scale``, as ``predict`` draws it x ``z_scale``."""
        calm = int(self.cfg.arm_calm)
        lead = int(self.cfg.arm_calm or noiseless)  # a noiseless future first in each group
        group = k + lead

        def rep(v: torch.Tensor) -> torch.Tensor:
            return v.repeat_interleave(group, 0)

        noise = self._noise(x_ctx.shape[0] * group, t - 1, x_ctx.device) * scale
        if lead:  # each scene's first future is the noiseless one
            noise = noise * (torch.arange(noise.shape[0], device=noise.device) % group > 0)[:, None, None]
        pred, _, *rest = self._rollout(rep(x_ctx), rep(h_ctx), [rep(s) for s in skips_ctx], rep(cond[:, : t - 1]), t,
                                       noise=noise, calm=group if calm else 0, moved=moved)

        drop = lead - int(noiseless)  # arm_calm's noiseless future is dropped unless asked for

        def futures(v: torch.Tensor) -> torch.Tensor:
            return v[:, self.n_past - 1 :].unflatten(0, (-1, group))[:, drop:].flatten(0, 1)

        return (futures(pred), futures(rest[0][1])) if moved else futures(pred)

    def _energy(self, x_ctx: torch.Tensor, cond: torch.Tensor, truths: torch.Tensor,
                terms: FutureTerms = FutureTerms(),
                flows: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
        """K futures drawn from the prior, predictions fed back as at test time, against K true
        futures of each scene: (their energy score, ``metrics.energy_score`` by ``terms``' patch and
        branch settings, or with ``terms.residual`` ``metrics.residual_energy_score`` of them beside
        each scene's noiseless future, drawn first in the same rollout; for each true future the
        pixel loss of the closest of them, summed over the steps; ``metrics.spread_gap``,
        ``metrics.edge_gap`` and ``metrics.agreement_gap`` between them; the adversarial term's two
        sides, ``critic.adversarial_losses``; with the true futures' ``flows`` (displacements
        [M, K, F, 2, 64, 64], where known [M, K, F, 64, 64]), ``_cover_flow`` of the prior futures'
        own), each averaged over the scenes (all but the first 0 unless ``terms`` weights them).

        With one recorded future per scene nothing tells the model where the world branches, so
        z either collapses or (under best of K) spreads where it is cheapest, mostly along the
        arm. Several true futures of the same scene and actions, which only a simulator gives,
        say where: a proper score then asks for spread there and nowhere else. The closest-future
        term is best of K turned around (coverage, as the eval scores it): every true future wants
        one sample that draws it, so different noise has to draw different worlds, where the
        energy score's pull on each sample is toward all of them at once. With ``terms.cover_branch``
        the closest is chosen and scored only on the pixels where the true futures differ
        (``metrics.branching``; their mean there, times the steps): on the whole frame the model's
        own errors elsewhere (the arm) decide which sample is closest, not the world."""
        m, k = truths.shape[:2]
        h, skips = self._encode(x_ctx)
        t = self.n_past + truths.shape[2]
        lead = int(terms.residual)
        if terms.cover_flow_weight and flows is not None:
            pred, flow = self._prior_futures(x_ctx, h, skips, cond, t, k, moved=True, noiseless=terms.residual,
                                             scale=terms.z_scale)
            flow = flow.view(m, k + lead, *flow.shape[1:])[:, lead:]
            cover_flow = self._cover_flow(flow, *flows)
        else:
            pred = self._prior_futures(x_ctx, h, skips, cond, t, k, noiseless=terms.residual, scale=terms.z_scale)
            cover_flow = pred.new_zeros((), dtype=torch.float32)
        grouped = pred.view(m, k + lead, *truths.shape[2:])
        samples = grouped[:, lead:]
        pred = samples.flatten(0, 1)

        share = terms.residual_share if terms.residual else 0.0  # the residual score's; the plain one's the rest

        def score(pool: int) -> torch.Tensor:
            total = 0.0
            if share < 1:
                total = (1 - share) * energy_score(samples, truths, terms.patch, terms.branch, terms.branch_weight,
                                                   pool, terms.beta).mean()
            if share > 0:
                total = total + share * residual_energy_score(samples, grouped[:, 0], truths, terms.patch,
                                                              terms.branch, terms.branch_weight, pool,
                                                              terms.beta).mean()
            return total

        energy = score(1) + (score(terms.pool) if terms.pool > 1 else 0)
        spread = spread_gap(samples, truths).mean() if terms.spread_weight else energy.new_zeros(())
        edges = edge_gap(samples, truths).mean() if terms.edge_weight else energy.new_zeros(())
        agree = agreement_gap(samples, truths).mean() if terms.agree_weight else energy.new_zeros(())
        adv = critic = energy.new_zeros(())
        if terms.adv_weight and self.critic is not None:
            adv, critic = adversarial_losses(self.critic, x_ctx[:, -1].repeat_interleave(k, 0), pred,
                                             truths.flatten(0, 1))
        if not terms.cover_weight:
            return energy, energy.new_zeros(()), spread, edges, agree, adv, critic, cover_flow
        prev = _before(x_ctx, truths)
        mask = None
        if terms.cover_branch:
            differ = branching(truths, 1).float()  # [M, F, H, W]
            share = differ.mean((1, 2, 3)).clamp_min(1 / differ[0].numel())  # a scene that never branches scores 0
            mask = (differ / share[:, None, None, None])[:, None, None].expand(-1, k, k, -1, -1, -1).flatten(0, 2)
        pairs = self._pixel_loss(samples[:, :, None].expand(-1, -1, k, -1, -1, -1, -1).flatten(0, 2),
                                 truths[:, None].expand(-1, k, -1, -1, -1, -1, -1).flatten(0, 2),
                                 prev[:, None].expand(-1, k, -1, -1, -1, -1, -1).flatten(0, 2), mask)
        return energy, pairs.sum(1).view(m, k, k).min(1).values.mean(), spread, edges, agree, adv, critic, cover_flow

    def _noise(self, n: int, steps: int, device: torch.device | str,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The prior's standard-normal noise for ``n`` futures, [n, steps, latent_dim]: fresh at every step,
        or with ``z_hold`` one draw held over all of them. The world's hidden causes (an object's
        friction, its mass) hold for a whole future, so a future that drew a gliding object at one
        step should keep it gliding; independent draws per step ask the predictor to remember
        which world it is in. Each step's z keeps its own distribution either way. With
        ``map_noise_only`` the vector part is 0, so the vector z is the prior's mean and every
        difference between futures has to come through the spatial latent, which acts locally.
        With ``map_noise_block`` B > 1 the spatial latent's cells share one draw per B x B block:
        each cell's z keeps its own distribution (the prior's mean and std per cell), but the
        cells of one block move together, as an object's do when it glides farther in one world."""
        draw = torch.randn(n, 1 if self.cfg.z_hold else steps, self.latent_dim, generator=generator, device=device)
        if self.cfg.map_noise_only:
            draw[..., : self.z_dim] = 0
        block = self.cfg.map_noise_block
        if block > 1:
            side = MAP_SIZE // block
            coarse = torch.randn(*draw.shape[:2], self.cfg.z_map, side, side, generator=generator, device=device)
            draw[..., self.z_dim:] = coarse.repeat_interleave(block, -2).repeat_interleave(block, -1).flatten(2)
        return draw.expand(n, steps, self.latent_dim)

    def _swept(self, swept: torch.Tensor | None, anchor: torch.Tensor, cond: torch.Tensor, i: int) -> torch.Tensor:
        """The pixels [N, 1, H, W] the arm covers (``ArmCopy.region``) in some frame 0..i, from the
        region swept by frame i - 1 (None at the first future step: the context frames' are
        added). ``anchor`` is the latest real frame, whose arm gives the base."""
        norm, ee_map = self.predictor.normalize, self.decoder.ee_map
        h, w = anchor.shape[-2:]
        src = ee_map.pixels(norm(at_rest(cond[:, self.n_past - 1])), h, w)

        def region(c: torch.Tensor) -> torch.Tensor:
            return self.decoder.arm.region(anchor, src, ee_map.pixels(norm(c), h, w))

        if swept is None:
            swept = torch.stack([region(at_rest(cond[:, j])) for j in range(i)]).any(0)
        return swept | region(cond[:, i - 1])

    def _rollout(self, x_ctx: torch.Tensor, h_ctx: torch.Tensor, skips_ctx: list[torch.Tensor],
                 cond: torch.Tensor, t: int,
                 z: torch.Tensor | None = None, noise: torch.Tensor | None = None, calm: int = 0,
                 moved: bool = False) -> tuple:
        """Steps 1..t-1, feeding back predictions once the context is used up.

        ``z`` [B, t-1, latent_dim] gives the latent of every step (training). Otherwise (generation)
        the context steps take z from the posterior of the real frames and the future steps
        from the prior, drawn with ``noise`` [B, t-1, latent_dim]. ``calm`` > 0 (``arm_calm``): the
        rows come in groups of this many futures of one scene, the first drawn with zero noise,
        and every future step the others take its pixels where the arm is or has been, before
        they are fed back. Returns the predictions and, with a learned prior, its (mu, logvar)
        per step (else None); with ``moved`` (flow head), also the previous frames the head moved,
        the model's own once the context is used up, and their displacements, stacked as the
        predictions.
        """
        n_past = self.n_past
        if z is None:
            mu, logvar = self._posterior(h_ctx, skips_ctx[3])
            z_ctx = reparameterize(mu, logvar, noise[:, : n_past - 1])
        h_prev, x_prev = h_ctx[:, 0], x_ctx[:, 0]
        skip_prev = [s[:, 0] for s in skips_ctx]
        skip_last = [s[:, n_past - 1] for s in skips_ctx]
        coarse_before = skips_ctx[3][:, 0]  # frame i-2's coarsest skips (frame 0's at step 1), for a learned map prior
        pred_state = prior_state = swept = last_shown = None
        preds, prior_mu, prior_logvar, moved_from, flows = [], [], [], [], []
        for i in range(1, t):
            if self.prior is not None:
                p_mu, p_logvar, prior_state = self.prior(h_prev[:, None], prior_state)
                p_mu, p_logvar = self._with_map_prior(p_mu, p_logvar, skip_prev[3][:, None], coarse_before[:, None])
                prior_mu.append(p_mu[:, 0])
                prior_logvar.append(p_logvar[:, 0])
            mean_i = None  # the mean of the latent drawn here (generation only)
            if z is not None:
                z_i = z[:, i - 1]
            elif i < n_past:
                z_i, mean_i = z_ctx[:, i - 1], mu[:, i - 1]
            elif self.prior is not None:
                z_i, mean_i = reparameterize(prior_mu[-1], prior_logvar[-1], noise[:, i - 1]), prior_mu[-1]
            else:
                z_i = noise[:, i - 1]
                mean_i = torch.zeros_like(z_i)
            glide = None
            if self.cfg.glide_noise_only and mean_i is not None:  # the features read the noiseless latent, its draw the glide
                glide, z_i = z_i, mean_i
            g, pred_state = self.predictor(h_prev[:, None], z_i[:, None, : self.z_dim], cond[:, i - 1, None], pred_state)
            skip = skip_prev if self.last_frame_skip or i < n_past else skip_last
            latest = min(i - 1, n_past - 1)  # the latest real frame: the previous one during the context
            carry = StepCarry(last_shown, self.cfg.carry_pool) if self.cfg.flow_carry else None  # step i - 1's carried on
            x_i = self._decode(g[:, 0], skip, x_prev, cond[:, i - 1], x_ctx[:, latest], cond[:, latest], z_i, moved, carry,
                               glide)
            if moved:
                x_i, (prev_i, flow_i) = x_i
                moved_from.append(prev_i)
                flows.append(flow_i)
            if carry is not None:
                last_shown = carry.shown
            if calm and i >= n_past:
                swept = self._swept(swept, x_ctx[:, n_past - 1], cond, i)
                group = x_i.view(-1, calm, *x_i.shape[1:])
                x_i = torch.where(swept.view(-1, calm, *swept.shape[1:]), group[:, :1], group).view_as(x_i)
            preds.append(x_i)
            coarse_before = skip_prev[3]
            if i < n_past:
                h_prev, skip_prev, x_prev = h_ctx[:, i], [s[:, i] for s in skips_ctx], x_ctx[:, i]
            elif i < t - 1:
                h_next, skips_next = self._encode(x_i[:, None])
                h_prev, skip_prev, x_prev = h_next[:, 0], [s[:, 0] for s in skips_next], x_i
        prior = (torch.stack(prior_mu, 1), torch.stack(prior_logvar, 1)) if self.prior is not None else None
        if moved:
            return torch.stack(preds, 1), prior, (torch.stack(moved_from, 1), torch.stack(flows, 1))
        return torch.stack(preds, 1), prior

    def set_channels_last(self, on: bool = True) -> SVG:
        """NHWC activations: faster convolutions on the CPU (1.4x for the app's Predict,
        bench/README.md) and what bf16 tensor cores want."""
        self.channels_last = on
        return self.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    @torch.no_grad()
    def predict(self, context: torch.Tensor, cond: torch.Tensor, n_future: int, n_samples: int = 1,
                seed: int | Sequence[int] = 0) -> torch.Tensor:
        """Sample futures: context [B, n_past, 3, 64, 64], cond [B, >= n_past + n_future - 1, 7].

        Returns [B, n_samples, n_future, 3, 64, 64]. All samples (with ``arm_calm`` or a spread
        head one more per scene, the noiseless one, not returned) run as one batch; the result is
        a function of ``seed`` alone (evaluation-mode batch norm, private generators). With one
        seed, sample k draws the same noise in every batch row, so rows that differ only in their
        conditions differ only by the effect of those conditions (the app's edited actions). With
        one seed per row, each row draws its own, so a scene's futures do not depend on the batch
        it is scored in, and a score over N scenes averages N draws, not one per batch
        (``evaluate.row_seeds``). With a spread head (``spread.widen``) at
        least ``spread_reference`` futures are drawn, whose std map it reads, so sample k is the
        same whatever ``n_samples``; with ``spread_select`` S, S are drawn and those returned
        chosen for the head's map (``spread.chosen``; the same for any ``n_samples`` up to S).
        """
        if context.shape[1] != self.n_past:
            raise ValueError(f"context has {context.shape[1]} frames; this model takes {self.n_past}")
        t = self.n_past + n_future
        if cond.shape[1] < t - 1:
            raise ValueError(f"cond has {cond.shape[1]} steps; {t - 1} are needed for {n_future} future frames")
        was_training = self.training
        self.eval()
        b = context.shape[0]
        device = context.device
        seeds = list(seed) if isinstance(seed, Sequence) else [int(seed)]
        if len(seeds) not in (1, b):
            raise ValueError(f"{len(seeds)} seeds for {b} rows: give one seed, or one per row")
        spread = self.spread is not None
        keep = max(n_samples, self.cfg.spread_reference) if spread and self.cfg.spread_select else 0
        drawn = max(n_samples, self.cfg.spread_reference, self.cfg.spread_select) if spread else n_samples
        # A temperature: training draws at 1 so the prior learns the whole spread, and a model that
        # spreads wider than the world is narrowed here without a weight change (README, "Noise scale").
        noise = torch.stack([self._noise(drawn, t - 1, device, torch.Generator(device=device).manual_seed(s))
                             for s in seeds]) * self.cfg.z_scale  # [1 or B, drawn, T-1, latent]
        calm = int(self.cfg.arm_calm)
        lead = int(calm or spread)
        if lead:  # the noiseless future, first in each scene's group and dropped at the end
            noise = torch.cat([torch.zeros_like(noise[:, :1]), noise], 1)
        k = drawn + lead
        noise = noise.expand(b, -1, -1, -1).reshape(b * k, t - 1, self.latent_dim)
        ctx = context.repeat_interleave(k, 0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            h_ctx, skips_ctx = self._encode(ctx)
            pred, _ = self._rollout(ctx, h_ctx, skips_ctx, cond[:, : t - 1].repeat_interleave(k, 0), t, noise=noise,
                                    calm=k if calm else 0)
        self.train(was_training)
        pred = pred[:, self.n_past - 1:].float().reshape(b, k, n_future, *context.shape[2:])
        mean, samples = pred[:, 0], pred[:, lead:]
        if spread:
            samples = self.spread.widened(mean, samples, context[:, 0].float(), context[:, -1].float(),
                                          self.cfg.spread_reference, self.cfg.spread_gain, self.cfg.spread_base, keep)
        return samples[:, :n_samples]
