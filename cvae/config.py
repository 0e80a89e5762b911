"""Training configuration: one dataclass, named presets, and plain-dict round trips."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .data.bair import IMAGE_SIZE
from .errors import ConfigError
from .model.svg import ModelConfig
from .schedules import LR_SCHEDULES

# the fields that act on re-simulated true futures, so need some (``energy_truths``), and what each does with them
NEED_TRUTHS = (("branch_weight", "it rebuilds the re-simulated futures"),
               ("energy_branch_weight", "it weights the energy score's patches"),
               ("cover_weight", "it scores prior futures against the re-simulated ones"),
               ("cover_flow_weight", "it scores prior futures' flows against the re-simulated ones'"),
               ("spread_weight", "it compares the prior futures' spread with the re-simulated ones'"),
               ("edge_weight", "it compares the prior futures' edges with the re-simulated ones'"),
               ("agree_weight", "it compares where the prior futures spread with where the re-simulated ones do"),
               ("energy_branch", "it gates the energy score's spread term"),
               ("energy_residual", "it scores how the prior futures differ against how the re-simulated ones do"),
               ("adv_weight", "its critic tells prior futures from the re-simulated ones"),
               ("world_weight", "it draws the re-simulated futures from the noise the world posterior infers"),
               ("noise_weight", "only the energy score against them says where the noise pays"))


@dataclass
class Config(ModelConfig):
    """Everything a training run is: the model's fields (``ModelConfig``, one flat flag each, as
    they are stored in checkpoints), the data and the optimisation."""

    # data
    data: str = "data/sim"
    n_future: int = 10
    # optimisation
    lr: float = 0.002
    beta1: float = 0.9
    batch_size: int = 12  # global: split over processes under torchrun
    epochs: int = 300
    iters_per_epoch: int = 600
    lr_schedule: str = "constant"  # constant | cosine: down to lr_floor x lr at the last step (schedules.lr_factor)
    lr_warmup: int = 0  # steps over which the learning rate rises linearly to lr first
    lr_floor: float = 0.1  # cosine's last learning rate, as a share of lr
    # KL annealing (Fu et al. 2019); beta = kl_weight * schedule
    kl_anneal: str = "monotonic"  # none | monotonic | cyclical
    kl_cycles: int = 3
    kl_ratio: float = 0.5
    kl_weight: float = 1.0
    # nats per step (per cell for the world posterior) the posterior may use at no cost (0: none); the prior still learns
    kl_free_bits: float = 0.0
    kl_granularity: str = "epoch"  # step | epoch
    # best of many: also train on the closest of K futures drawn from the prior (0: off), so z is read
    best_of: int = 0
    best_of_weight: float = 1.0  # its weight beside the SVG loss
    recon_weight: float = 1.0  # the SVG loss's pixel term (0: z is trained by best of K alone, nothing penalises reading it)
    # several true futures: simulated scenes re-run with their hidden causes re-drawn, and an energy
    # score of as many prior futures against them (0: off; simulated data with hidden causes only)
    energy_truths: int = 0
    energy_weight: float = 1.0
    energy_scenes: int = 256  # training scenes whose futures are re-simulated once, at the start
    energy_patch: int = 0  # 0: one norm over the whole future; P: the mean score of P x P patches of each frame
    # > 1: plus the same score of the futures averaged over P x P pixels, which only an object's place moves
    energy_pool: int = 1
    energy_branch: bool = False  # its spread term only where the true futures differ (metrics.energy_score)
    energy_branch_weight: float = 0.0  # its patches where the true futures differ count 1 + this
    # the score of the prior futures' deviations from the noiseless one against the truths' from their
    # mean, plus the noiseless one against that mean (metrics.residual_energy_score), not of the futures
    energy_residual: bool = False
    energy_residual_share: float = 1.0  # with energy_residual, that score's share of the term; the plain score takes the rest
    energy_beta: float = 1.0  # each of the score's norms to this power, in (0, 2): below 1 a blend costs more
    # the prior futures those terms score drawn with the noise x this: the z_scale the model will be
    # exported at, so the terms see where its spread falls there, not at the scale it trains its pixels at
    energy_z_scale: float = 1.0
    branch_weight: float = 0.0  # > 0: also rebuild those futures through the posterior, where they differ x 1 + this
    cover_weight: float = 0.0  # > 0: also the pixel loss of the closest prior future to each true one, x this
    cover_branch: bool = False  # that closest future chosen and scored only where the true futures differ
    # > 0: also, per true future, the flow error of the prior future whose flow head moves pixels
    # most as that future's objects truly moved (simulated data: its re-runs' true flows), x this
    cover_flow_weight: float = 0.0
    spread_weight: float = 0.0  # > 0: also |model std - truth std| per pixel over those futures, x this
    edge_weight: float = 0.0  # > 0: also how far those futures fall short of the truths' squared edges where they differ
    agree_weight: float = 0.0  # > 0: also 1 - the correlation of those futures' std map with the truths', x this
    adv_weight: float = 0.0  # > 0: also an adversarial term on those futures, judged by the model's critic (--critic C)
    world_weight: float = 0.0  # > 0: also draw those futures from the noise the world posterior infers (--world-posterior C)
    world_branch_weight: float = 0.0  # ... its pixels where the true futures differ count 1 + this
    # > 0: also the learned map prior's std, averaged over the future steps' cells, x this, so that noise has
    # to pay for itself in the energy score (--map-prior; at 0.01 it fell about evenly everywhere, docs/issue13.md, stop 62)
    noise_weight: float = 0.0
    critic_lr: float = 5e-4  # the critic's learning rate: fitted offline at the model's 2e-3 it stayed at chance (stop 47)
    # > 0: the flow head's displacements also learn where each pixel truly was a frame before, x this
    # (``SVG._flow_truth``; simulated data only: the simulator re-runs every training scene for them)
    flow_truth_weight: float = 0.0
    # ... only on the pixels that truly moved (a pushed object's), not the still table: a smooth flow
    # cannot step from the table's 0 to the arm's motion, so the table's truth switches the arm's flow off
    flow_truth_moved: bool = False
    # teacher forcing
    tfr: float = 1.0
    tfr_start_decay_epoch: int = 50
    tfr_decay_step: float = 0.01
    tfr_lower_bound: float = 0.0
    # run
    out: str = "runs/lab"
    seed: int = 1
    ee_calibrate: bool = True  # start the end-effector map at the data's documented kinematics (simulated data)
    ee_freeze: bool = False  # keep a calibrated map's place (re-calibrated on --init) where the kinematics put it
    init: str = ""  # a checkpoint whose weights start a new run (fine-tuning); the model's shape must match
    num_workers: int = -1  # -1: 2 on CUDA, 0 on the CPU
    val_seqs: int = 256  # validation sequences scored each epoch (0: all)
    logs_per_epoch: int = 4
    compile: bool = False
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with native bf16 (bench/README.md)
    channels_last: bool = True  # NHWC for bf16 tensor cores; neutral on the CPU (bench/README.md)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    def validate(self) -> Config:
        super().validate()  # the model's own fields: prior, output head, pixel loss, motion weight
        choices = {"kl_anneal": ("none", "monotonic", "cyclical"), "kl_granularity": ("step", "epoch"),
                   "lr_schedule": LR_SCHEDULES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("n_past", "n_future", "batch_size", "epochs", "iters_per_epoch", "g_dim", "z_dim", "rnn_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("kl_ratio", "width"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ConfigError(f"{name} must be a positive number, not {getattr(self, name)}")
        for name in ("lr", "critic_lr"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be above 0 and at most 1 (Adam diverges at once above that), "
                                  f"not {getattr(self, name)}")
        if not 0 <= self.lr_floor <= 1:
            raise ConfigError(f"lr_floor must be from 0 to 1 (a share of lr), not {self.lr_floor}")
        if self.lr_floor != Config.lr_floor and self.lr_schedule != "cosine":  # a floor other than the default
            raise ConfigError(f"lr_floor needs lr_schedule cosine: a {self.lr_schedule} rate has no floor to reach")
        if self.lr_warmup < 0:
            raise ConfigError(f"lr_warmup must be a whole number of steps >= 0, not {self.lr_warmup}")
        if not 0 <= self.beta1 < 1:
            raise ConfigError(f"beta1 must be from 0 to below 1, not {self.beta1}")
        for name in ("kl_weight", "tfr", "tfr_decay_step", "tfr_lower_bound", "best_of_weight", "recon_weight",
                     "energy_weight", "branch_weight", "energy_branch_weight", "cover_weight",
                     "cover_flow_weight", "spread_weight", "edge_weight", "agree_weight", "flow_truth_weight", "adv_weight",
                     "world_weight", "world_branch_weight", "noise_weight"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"{name} must be a number >= 0, not {getattr(self, name)}")
        for name in ("kl_cycles", "logs_per_epoch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("val_seqs", "tfr_start_decay_epoch", "best_of"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.recon_weight == 0 and not (self.best_of or self.energy_truths):
            raise ConfigError("recon_weight 0 needs best_of or energy_truths > 0: otherwise no pixel loss trains "
                              "the model")
        if self.energy_truths == 1 or self.energy_truths < 0:
            raise ConfigError(f"energy_truths must be 0 (off) or at least 2 (futures to compare), not {self.energy_truths}")
        if self.energy_patch < 0 or (self.energy_patch and IMAGE_SIZE % self.energy_patch):
            raise ConfigError(f"energy_patch must be 0 (the whole future) or divide {IMAGE_SIZE}, "
                              f"not {self.energy_patch}")
        if self.energy_pool < 1 or IMAGE_SIZE % self.energy_pool:
            raise ConfigError(f"energy_pool must divide {IMAGE_SIZE} (1: off), not {self.energy_pool}")
        if self.energy_pool > 1 and not self.energy_truths:
            raise ConfigError("energy_pool needs energy_truths > 0: it scores prior futures against the re-simulated ones")
        if self.energy_patch and self.energy_pool > 1 and (IMAGE_SIZE // self.energy_pool) % self.energy_patch:
            raise ConfigError(f"energy_patch {self.energy_patch} does not tile the {IMAGE_SIZE // self.energy_pool}-pixel "
                              f"frames that energy_pool {self.energy_pool} leaves")
        for name, why in NEED_TRUTHS:
            if getattr(self, name) and not self.energy_truths:
                raise ConfigError(f"{name} needs energy_truths > 0: {why}")
        if self.flow_truth_moved and not self.flow_truth_weight:
            raise ConfigError("flow_truth_moved needs flow_truth_weight > 0: it says which pixels that term scores")
        for name in ("flow_truth_weight", "cover_flow_weight"):
            if getattr(self, name) and self.output != "flow":
                raise ConfigError(f"{name} needs output 'flow': it trains the flow head's displacements")
        if self.adv_weight and not self.critic:
            raise ConfigError("adv_weight needs critic > 0: the critic (its width) is what judges the futures")
        if self.world_branch_weight and not self.world_weight:
            raise ConfigError("world_branch_weight needs world_weight > 0: it weights that term's pixels")
        if self.world_weight and not self.world_posterior:
            raise ConfigError("world_weight needs world_posterior > 0: the world posterior (its width) infers the noise")
        if self.spread_head:
            raise ConfigError("spread_head is not trained with the model: it is fitted to a trained model's futures "
                              "afterwards (train_cli.py fit-spread); train with spread_head 0")
        if self.noise_weight and not self.map_prior:
            raise ConfigError("noise_weight needs map_prior true: it charges the learned map prior's std")
        if self.cover_branch and not self.cover_weight:
            raise ConfigError("cover_branch needs cover_weight > 0: it restricts that term to where the futures differ")
        if not 0 < self.energy_residual_share <= 1:
            raise ConfigError(f"energy_residual_share must be above 0 and at most 1, not {self.energy_residual_share}")
        if self.energy_residual_share != 1 and not self.energy_residual:
            raise ConfigError("energy_residual_share needs energy_residual true: it is the residual score's share")
        if self.energy_beta != 1 and not self.energy_truths:
            raise ConfigError("energy_beta needs energy_truths > 0: it shapes the energy score of the futures")
        if self.energy_z_scale != 1 and not self.energy_truths:
            raise ConfigError("energy_z_scale needs energy_truths > 0: it scales the noise of the futures scored "
                              "against the re-simulated ones")
        if not 0 < self.energy_z_scale < float("inf"):
            raise ConfigError(f"energy_z_scale must be a number above 0, not {self.energy_z_scale}")
        if not 0 < self.energy_beta < 2:
            raise ConfigError(f"energy_beta must be above 0 and below 2, where the energy score is proper, "
                              f"not {self.energy_beta}")
        if self.energy_truths and self.energy_scenes < 1:
            raise ConfigError(f"energy_scenes must be at least 1, not {self.energy_scenes}")
        if self.flow_deadzone and not self.init:
            raise ConfigError(f"flow_deadzone {self.flow_deadzone} needs --init: a new flow head's displacements all "
                              "start inside the dead zone, where they get no gradient, so it would never learn to "
                              "move anything; train without it, then fine-tune with it")
        if not 0 <= self.kl_free_bits < float("inf"):
            raise ConfigError(f"kl_free_bits must be a number >= 0, not {self.kl_free_bits}")
        return self


PRESETS: dict[str, dict] = {
    # The course lab's sample code with z_dim/g_dim as the code has them (the spec text swaps them).
    "lab": {},
    # SVG-LP's BAIR settings: learned prior, constant beta 1e-4, batch 100, always teacher forcing.
    "svg-lp": {"prior": "learned", "kl_anneal": "none", "kl_weight": 1e-4, "batch_size": 100,
               "tfr_decay_step": 0.0, "out": "runs/svg-lp"},
    # A reduced-width model that trains on a 2-core CPU; the bundled checkpoint uses it. Its flow
    # head, end-effector map, copy and sprite (the place frozen where calibration puts it), learned
    # prior, MSE with KL weight 1e-4 and free bits were chosen by measurement (README, "The bundled model").
    "cpu": {"width": 0.125, "last_frame_skip": True, "g_dim": 64, "z_dim": 16, "rnn_size": 128, "batch_size": 16,
            "output": "flow", "cond_maps": True, "ee_maps": True, "ee_copy": True, "ee_sprite": True,
            "ee_freeze": True, "epochs": 60, "iters_per_epoch": 100,
            "prior": "learned", "kl_anneal": "none", "kl_weight": 1e-4, "kl_free_bits": 0.5,
            "tfr_start_decay_epoch": 2, "tfr_decay_step": 0.05, "tfr_lower_bound": 0.3,
            "val_seqs": 64, "out": "runs/cpu"},
}


def preset(name: str, **overrides: object) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    return Config.from_dict({**dataclasses.asdict(Config()), **PRESETS[name], **overrides}).validate()
