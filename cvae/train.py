"""The training loop. The same code runs under ``python`` or ``torchrun`` (DDP is detected from
``RANK``); rank 0 alone logs, validates and saves.

Loss = sum over steps t of [ MSE_t + beta * KL_t ], where MSE_t (or L1_t; moving pixels weighted by
``motion_weight``) is the per-pixel mean over the batch and KL_t is summed over z dimensions and
averaged over the batch (SVG's reduction); with ``best_of`` K > 0, plus ``best_of_weight`` times
the pixel loss of the closest of K futures drawn from the prior (``SVG._best_of``); with
``energy_truths`` K > 0, plus ``energy_weight`` times the energy score of K prior futures against K
re-simulated true futures of a few training scenes (``SVG._energy``, ``TrainingFutures``; with
``cover_flow_weight`` > 0 also their true flows, ``SVG._cover_flow``); with
``flow_truth_weight`` > 0, plus that times the flow head's error against the simulator's true flows
of the frames trained on (``SVG._flow_truth``, ``TrainingFlows``).
``recon_weight`` scales the MSE_t term (0: best of K or the energy score alone).

Artifacts in ``cfg.out``: ``log.jsonl`` (one ``epoch`` record per epoch plus ``step`` records
within it), ``last/`` (resumable) and ``best/`` (best validation PSNR) checkpoints.
"""
from __future__ import annotations

import math
import os
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from . import checkpoint
from .config import Config
from .data.dataset import BairDataset, WindowBatchSampler, check_global_batch, init_worker
from .data.info import read_kinematics
from .errors import ConfigError, DataError, Interrupted, RunError, TrainingDiverged
from .evaluate import evaluate
from .kinematics import KINEMATICS, decoded_place, place_error_px
from .model import SVG
from .model.heads import FlowHead
from .model.svg import INIT_MAY_CHANGE, FutureTerms, ModelConfig
from .model.vgg64 import grown, widened
from .physics_eval import TrainingFlows, TrainingFutures, WithFlows
from .run import RunFolder
from .schedules import kl_beta, lr_factor, teacher_forcing_ratio, use_teacher_forcing

RESUME_MAY_CHANGE = {"epochs", "ee_calibrate", "num_workers", "compile", "logs_per_epoch", "val_seqs", "out"}


@dataclass
class Runtime:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_runtime() -> Runtime:
    """Single process, or DDP when launched by torchrun (``RANK`` set): NCCL on CUDA, else gloo."""
    if "RANK" not in os.environ:
        return Runtime(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(dist.get_rank(), dist.get_world_size(), device)


def end_runtime() -> None:
    """End the process group ``setup_runtime`` began, once the process is done with it (NCCL warns
    of leaked resources at exit otherwise). Not in ``train``: a caller may still use the group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def ensure_data(cfg: Config, rt: Runtime) -> None:
    """Generate the built-in simulated data set when its default location is empty. Any other
    missing path is a mistake to report, not a place to fill with simulated data."""
    if rt.main and not Path(cfg.data).exists():
        if cfg.data != Config.data:
            raise DataError(f"data root {cfg.data} does not exist (omit --data to use the built-in "
                            f"simulated data set, generated on first use at {Config.data})")
        from .data.generate import generate

        print(f"{cfg.data} not found: generating the built-in simulated pushing data set there")
        generate(cfg.data)
    rt.barrier()


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks, so it can save before exiting."""
    flag = {"stop": False, "signum": 0}

    def handler(signum: int, frame: object) -> None:
        flag.update(stop=True, signum=signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def prepare(model: SVG, cfg: Config, device: torch.device) -> tuple[SVG, torch.optim.Adam]:
    """The model on ``device`` in training's memory layout, and training's optimizer (fused on CUDA;
    a critic's weights, if the model has one, in a group of their own at ``critic_lr``). The
    benchmarks use it too, so they time what training runs."""
    model = model.to(device)
    if cfg.channels_last:
        model = model.set_channels_last()
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if not n.startswith("critic.")]}]
    if critic := [p for n, p in named if n.startswith("critic.")]:
        groups.append({"params": critic, "lr": cfg.critic_lr})
    opt = torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, 0.999), fused=device.type == "cuda" or None)
    return model, opt


def bf16_autocast(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here: CUDA with bf16, or a CPU with AVX512-BF16/AMX
    (oneDNN's check). Elsewhere CPU bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


# The training terms beside loss, mse and kld that a step returns, in this order: the field of
# ``StepLosses``, its name in log.jsonl, and the Config field that switches it on (logged only then).
TERMS_LOGGED = (("best", "best_of_loss", "best_of"), ("energy", "energy_score", "energy_truths"),
                ("branch", "branch_loss", "branch_weight"), ("cover", "cover_loss", "cover_weight"),
                ("spread", "spread_gap", "spread_weight"), ("edges", "edge_gap", "edge_weight"),
                ("agree", "agreement_gap", "agree_weight"),
                ("photo", "flow_photo_loss", "flow_photo_weight"), ("flow_truth", "flow_truth_loss", "flow_truth_weight"),
                ("adv", "adv_loss", "adv_weight"), ("critic", "critic_loss", "adv_weight"),
                ("world", "world_loss", "world_weight"), ("world_kl", "world_kl", "world_weight"),
                ("cover_flow", "cover_flow_loss", "cover_flow_weight"), ("noise", "prior_noise", "noise_weight"))


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, c: torch.Tensor, beta: float,
               teacher_forcing: bool, amp: bool, free_bits: float = 0.0, best_of: int = 0,
               best_of_weight: float = 1.0, recon_weight: float = 1.0,
               futures: tuple[torch.Tensor, ...] | None = None,
               terms: FutureTerms = FutureTerms(), true_flow: tuple[torch.Tensor, torch.Tensor] | None = None,
               flow_truth_weight: float = 0.0) -> torch.Tensor:
    """One optimiser step on loss = recon_weight * pixel loss (MSE or L1) + beta * KL (+ the best
    of K prior futures' pixel loss) (+ ``terms.weight`` * the energy score against ``futures``) (+ those
    futures rebuilt through the posterior, ``terms.rebuild_weight``) (+ ``terms.cover_weight`` * the
    closest prior future's pixel loss per true future) (+ ``terms.spread_weight`` * their per-pixel
    spread gap) (+ ``terms.edge_weight`` * their edge gap) (+ ``terms.agree_weight`` * 1 - the
    correlation of their std maps) (+ the flow head's moved previous frame's
    error where things move, ``flow_photo_weight``) (+ ``flow_truth_weight`` * its displacements' error
    against ``true_flow``, the simulator's) (+ ``terms.adv_weight`` * the adversarial term on the prior
    futures, plus its critic's side, which trains only the critic) (+ ``terms.world_weight`` * (the true
    futures drawn from the noise the world posterior infers, + beta * its KL with free bits)) (+
    ``terms.cover_flow_weight`` * the closest prior future's flow error per true future) (+
    ``terms.noise_weight`` * the learned map prior's mean std). Returns
    detached (loss, mse, kld, then each ``TERMS_LOGGED`` term) on the device, so the caller decides
    when to pay for a host sync."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        losses = net(x, c, teacher_forcing, free_bits, best_of, futures, terms, true_flow)
    mse, kld = losses.mse.sum(), losses.kld.sum()
    loss = (recon_weight * losses.recon.sum() + beta * losses.kl_loss.sum() + best_of_weight * losses.best
            + terms.weight * losses.energy + terms.cover_weight * losses.cover + losses.branch
            + terms.spread_weight * losses.spread + terms.edge_weight * losses.edges
            + terms.agree_weight * losses.agree + losses.photo
            + flow_truth_weight * losses.flow_truth + terms.adv_weight * losses.adv + losses.critic
            + terms.world_weight * (losses.world + beta * losses.world_kl_loss)
            + terms.cover_flow_weight * losses.cover_flow + terms.noise_weight * losses.noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return torch.stack([loss.detach(), mse.detach(), kld.detach(),
                        *(getattr(losses, field).detach() for field, _, _ in TERMS_LOGGED)])


def beta_at(cfg: Config, step: int) -> float:
    """The KL weight at global ``step``, per ``cfg``'s annealing (by step or by epoch)."""
    if cfg.kl_granularity == "step":
        t, total = step, cfg.epochs * cfg.iters_per_epoch
    else:
        t, total = step // cfg.iters_per_epoch, cfg.epochs
    return kl_beta(cfg.kl_anneal, t, total, cfg.kl_cycles, cfg.kl_ratio, cfg.kl_weight)


def lr_scale(cfg: Config, step: int) -> float:
    """The learning rates' multiple at global ``step`` per ``cfg``'s schedule (``lr`` and a critic's ``critic_lr`` alike)."""
    return lr_factor(cfg.lr_schedule, step, cfg.epochs * cfg.iters_per_epoch, cfg.lr_warmup, cfg.lr_floor)


def tfr_at(cfg: Config, epoch: int) -> float:
    """The teacher-forcing ratio of ``epoch`` per ``cfg``."""
    return teacher_forcing_ratio(epoch, cfg.tfr, cfg.tfr_start_decay_epoch, cfg.tfr_decay_step, cfg.tfr_lower_bound)


def describe_schedules(cfg: Config) -> str:
    """The KL weight and teacher-forcing ratio per epoch, in brief: what ``--epochs`` shapes."""

    def runs(values: list[float]) -> str:
        spans, start = [], 0
        for e in range(1, len(values) + 1):
            if e == len(values) or values[e] != values[start]:
                spans.append(f"{start}" + (f"-{e - 1}" if e - 1 > start else "") + f" {values[start]:.3g}")
                start = e
        return ", ".join(spans if len(spans) <= 7 else spans[:4] + ["..."] + spans[-2:])

    betas = [beta_at(cfg, e * cfg.iters_per_epoch) for e in range(cfg.epochs)]
    tfrs = [tfr_at(cfg, e) for e in range(cfg.epochs)]
    lrs = [cfg.lr * lr_scale(cfg, e * cfg.iters_per_epoch) for e in range(cfg.epochs)]
    warmup = f", rising over its first {cfg.lr_warmup} steps" if cfg.lr_warmup else ""
    return (f"{cfg.epochs} epochs x {cfg.iters_per_epoch} steps; by epoch (they stretch with --epochs; "
            f"--stop-at-step stops early without changing them):\n  KL weight ({cfg.kl_anneal}): {runs(betas)}"
            f"\n  teacher forcing: {runs(tfrs)}"
            f"\n  learning rate ({cfg.lr_schedule}{warmup}; at each epoch's start): {runs(lrs)}")


KL_JUMP, KL_JUMP_NATS = 10.0, 20.0  # a window's KL this many times the window's before, and this much larger, blew up


def kl_jump(before: tuple[int, float] | None, now: tuple[int, float]) -> str | None:
    """The (last step, mean KL) of two consecutive log windows (the steps since the log before)
    -> a note when the KL blew up between them, else None. It is no divergence (the loss stays
    finite) but it matters: in docs/issue13.md, stop 65, a run's logged KL went from 4.7 to 230 nats in 25
    steps, and validation fell 2 dB by the epoch's end. Windows, not log.jsonl's running means:
    an epoch's first record averages fewer steps than the last one before it, and a running
    mean dilutes a late blow-up."""
    if before is None or not (now[1] > KL_JUMP * before[1] and now[1] - before[1] > KL_JUMP_NATS):
        return None
    return (f"note: the KL (the mean over the steps since the last log) jumped from {before[1]:.1f} to "
            f"{now[1]:.1f} nats between steps {before[0]} and {now[0]}: the posterior has left the prior, so "
            "futures drawn from the prior may stop looking like the frames it was trained on; best/ keeps the "
            "best validated weights")


def weights_finite(model: torch.nn.Module) -> bool:
    """One host sync: whether every weight is finite (a blow-up in a step's update shows here
    before it shows in any loss)."""
    return bool(torch.stack([p.detach().float().abs().max() for p in model.parameters()]).isfinite().all())


@dataclass
class Loop:
    """What the step loop carries and a checkpoint saves: where training stands and its best."""

    model: SVG
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    epoch: int = 0
    step_in_epoch: int = 0
    best: float = -math.inf
    best_epoch: int | None = None


def train(cfg: Config, resume: bool = False, progress: bool = True, stop_at_step: int | None = None) -> SVG:
    """Train per ``cfg``; returns the (unwrapped) model.

    Raises TrainingDiverged on a non-finite loss or weights (nothing diverged is saved), and
    Interrupted after saving ``last/`` on SIGINT/SIGTERM. ``stop_at_step`` saves ``last/`` and
    returns once that many steps are done, leaving the schedules as ``epochs`` shapes them.
    """
    cfg.validate()
    rt = setup_runtime()
    check_global_batch(cfg.batch_size, rt.world)  # before any data or model work
    ensure_data(cfg, rt)
    run = RunFolder(cfg.out)
    with run.lock() if rt.main else nullcontext():
        train_ds, val_ds = open_data(cfg, rt)
        truths = training_futures(cfg, rt, train_ds)  # before start: a data mistake leaves no run behind
        flows = training_flows(cfg, rt, train_ds)
        loop = start(cfg, rt, run, train_ds, resume)
        with stop_on_signals() as flag:
            train_epochs(cfg, rt, run, loop, train_ds, val_ds, flag, progress, stop_at_step, truths, flows)
    sync_buffers(loop.model, rt)
    return loop.model


def simulator_workers(rt: Runtime) -> int:
    """Processes each rank re-runs training scenes with: the machine's cores shared among the ranks."""
    return max(1, (os.cpu_count() or 1) // rt.world)


def training_futures(cfg: Config, rt: Runtime, train_ds: BairDataset) -> TrainingFutures | None:
    """``cfg.energy_truths`` re-simulated futures of ``cfg.energy_scenes`` training scenes (None when off);
    each step scores the prior's futures of batch_size / K of them (per process) against theirs."""
    if not cfg.energy_truths:
        return None
    per_step = max(1, cfg.batch_size // rt.world // cfg.energy_truths)
    started = time.perf_counter()
    truths = TrainingFutures(train_ds, cfg.n_past, cfg.energy_truths, cfg.energy_scenes, per_step, cfg.seed,
                             rt.rank, simulator_workers(rt), flows=bool(cfg.cover_flow_weight))
    if rt.main:
        print(f"note: {len(truths.truths)} training scenes re-simulated {cfg.energy_truths} times each in "
              f"{time.perf_counter() - started:.0f} s; each step scores {per_step} of them")
    return truths


def training_flows(cfg: Config, rt: Runtime, train_ds: BairDataset) -> TrainingFlows | None:
    """The simulator's true flows of every training sequence (None unless ``cfg.flow_truth_weight``)."""
    if not cfg.flow_truth_weight:
        return None
    started = time.perf_counter()
    flows = TrainingFlows(train_ds, simulator_workers(rt))
    if rt.main:
        print(f"note: the true flows of {len(flows.flows)} training sequences re-simulated in "
              f"{time.perf_counter() - started:.0f} s")
    return flows


def open_data(cfg: Config, rt: Runtime) -> tuple[BairDataset, BairDataset | None]:
    """Rank 0 builds the caches (and alone validates); the other ranks then open them."""
    seq_len = cfg.n_past + cfg.n_future
    train_ds = val_ds = None
    if rt.main:
        train_ds = BairDataset(cfg.data, "train", seq_len)
        val_ds = BairDataset(cfg.data, "validate", seq_len)
    rt.barrier()
    if not rt.main:
        train_ds = BairDataset(cfg.data, "train", seq_len)
    return train_ds, val_ds


def start(cfg: Config, rt: Runtime, run: RunFolder, train_ds: BairDataset, resume: bool) -> Loop:
    """A fresh model and optimizer, or the run's ``last/`` restored exactly (weights, optimizer,
    position, RNG), after repairing whatever a kill left in the run folder."""
    torch.manual_seed(cfg.seed + rt.rank)
    model = SVG.from_config(cfg.to_dict())
    model.predictor.set_condition_stats(torch.from_numpy(train_ds.packed.cond))
    ee_map = model.decoder.ee_map
    if cfg.ee_freeze and cfg.ee_calibrate and ee_map is not None and read_kinematics(cfg.data) == KINEMATICS:
        ee_map.where.requires_grad_(False)  # calibrated below (or restored): exact, training could only move it off
    model, opt = prepare(model, cfg, rt.device)
    net = torch.nn.parallel.DistributedDataParallel(model) if rt.world > 1 else model
    if cfg.compile:
        net = torch.compile(net)
    loop = Loop(model, net, opt)
    if rt.main:
        for note in run.recover():
            print(f"note: {note}")
    rt.barrier()
    if rt.main and not run.has_checkpoint() and run.log.exists():
        print(f"note: {run.path} holds a log but no checkpoint (it stopped before its first save): starting it "
              f"from scratch; its old log is kept as {run.set_aside_log()}")
        resume = False
    elif rt.main and not resume and run.has_checkpoint():
        raise RunError(f"{run.path} already holds a run; pass --resume to continue it or choose another --out")
    elif resume and not run.has_checkpoint():
        if rt.main and not run.log.exists():
            raise RunError(f"--resume: there is no run at {run.path} to continue; drop --resume to start one")
        resume = False
    if resume:
        restore(cfg, rt, run, loop)
    # a new end-effector map starts on the end effector; one trained with its decoder stays put unless frozen
    elif not cfg.init or initialize(cfg, loop.model, rt.device) or cfg.ee_freeze:
        if (note := calibrate_ee_map(cfg, loop.model, train_ds.packed.cond)) and rt.main:
            print(f"note: {note}")
    if rt.main:
        print(describe_schedules(cfg))
        if not (Path(cfg.data) / "validate").is_dir():
            print(f"note: {cfg.data} has no validate/ split, so best/ is chosen by the test split's score "
                  "(which is then not held out)")
        if cfg.glide_noise_only:
            print("note: glide_noise_only is unstable in training: three of four 400-step runs ran away by step "
                  "150-300, the spatial latent's means to about 20 (docs/issue13.md, stop 63); it is safer set at export "
                  "(cvae export --glide-noise-only true)")
    return loop


# model fields --init may switch on: vgg64.grown adds their weights
GROWABLE = ("ee_maps", "ee_copy", "ee_sprite", "still_copy", "z_map", "arm_copy", "flow_carry", "push_copy",
            "map_prior", "rigid_layers", "critic", "world_posterior")


def initialize(cfg: Config, model: SVG, device: torch.device) -> bool:
    """Start from ``cfg.init``'s weights (and its condition statistics, which they were trained
    with); only the optimiser and the schedules start afresh. The shapes must agree field by
    field, except that a model without the end-effector map, copy, sprite, still copy, arm copy,
    spatial latent, its learned prior, carried motion, push copy, rigid layers, critic or world posterior
    may grow them
    (``vgg64.grown``), and a narrower model may widen (``vgg64.widened``: exactly what it computed, with
    more channels to learn in), though not both at once.
    Returns whether the end-effector map now wants calibrating: it grew the map, the copy or the
    sprite, or the map is exact now where it was not (``ModelConfig.ee_map_exact``: the arm copy
    or the push copy grown into a model whose map no source placed pixels by)."""
    weights, meta = checkpoint.load_model(cfg.init, device)
    theirs, ours = ModelConfig.from_dict(meta["config"]), ModelConfig.from_dict(cfg.to_dict())
    grow = {name for name in GROWABLE if getattr(ours, name) and not getattr(theirs, name)}
    widen = ours.width > theirs.width
    if widen and grow:
        raise ConfigError(f"--init {cfg.init}: widen it (--width {ours.width}) and grow it "
                          f"({', '.join(sorted(grow))}) in two runs, not one")
    diff = [f"{f.name} {getattr(theirs, f.name)!r} vs {getattr(ours, f.name)!r}" for f in fields(ModelConfig)
            if f.name not in INIT_MAY_CHANGE and f.name not in grow and not (widen and f.name == "width")
            and getattr(theirs, f.name) != getattr(ours, f.name)]
    if diff:
        raise ConfigError(f"--init {cfg.init}: its model differs from this run's: {'; '.join(diff)} "
                          "(pass the same model flags, e.g. its preset; only --ee-maps true, "
                          "--ee-copy true, --ee-sprite true, --still-copy true, --arm-copy true, --flow-carry true, "
                          "--push-copy true, "
                          "--z-map C, --map-prior true, --rigid-layers K, --critic C and --world-posterior C may be added, "
                          "and --width may grow)")
    sources = [*FlowHead.OPTIONAL, "rigid_layers"]  # the masks' order: the rigid layers' come last
    kept = [sources.index(n) for n in sources if getattr(theirs, n)]
    late = [n for n in sources if n in grow and kept and sources.index(n) < max(kept)]
    if late:
        raise ConfigError(f"--init {cfg.init}: {', '.join(late)} cannot be added to a model that has "
                          f"{sources[max(kept)]}: the flow head's masks keep the order {', '.join(sources)}, "
                          "and a grown one is appended last")
    state = weights.state_dict()
    if widen:
        try:
            state = widened(state, model, theirs.width)
        except ValueError as err:  # a part that has no wider form (the rigid layers' shifts)
            raise ConfigError(f"--init {cfg.init}: does not widen to --width {ours.width}: {err}") from None
    if grow:
        moved = getattr(model.decoder.head, "started_as_moved", list)()
        state = grown(state, model.state_dict(), ours.z_map if "z_map" in grow else 0, "arm_copy" in grow, moved)
    model.load_state_dict(state)
    return bool(grow & {"ee_maps", "ee_copy", "ee_sprite"}) or (ours.ee_map_exact and not theirs.ee_map_exact)


def calibrate_ee_map(cfg: Config, model: SVG, cond: np.ndarray) -> str | None:
    """Start the end-effector map where the data's documented kinematics (the simulator's) put
    the end effector (``EndEffectorMap.calibrate``); returns what it did, for the log. ``cond``:
    the training split's conditions [N, T, 7]."""
    ee_map = model.decoder.ee_map
    if ee_map is None or not cfg.ee_calibrate:
        return None
    if read_kinematics(cfg.data) != KINEMATICS:
        return f"{cfg.data} documents no kinematics: the end-effector map learns its place from the pixels alone"
    c = np.ascontiguousarray(cond[:, :-1]).reshape(-1, cond.shape[-1])
    place = decoded_place(c)
    norm = model.predictor.normalize(torch.from_numpy(c).float().to(model.predictor.cond_mean.device)).float()

    def median_px() -> float:
        with torch.no_grad():
            return float(np.median(place_error_px(ee_map.location(norm).cpu().numpy(), place)))

    before = median_px()
    ee_map.calibrate(norm, torch.from_numpy(place))
    return (f"end-effector map calibrated to {cfg.data}'s kinematics: its blob is now a median "
            f"{median_px():.1f} px from the end effector (was {before:.1f} px)")


def restore(cfg: Config, rt: Runtime, run: RunFolder, loop: Loop) -> None:
    state = checkpoint.load_state(run.last)
    weights, meta = checkpoint.load_model(run.last, rt.device)
    ours = Config.from_dict(meta["config"]).to_dict()  # fields newer than the run read as their defaults
    asked = cfg.to_dict()
    ours["data"], asked["data"] = str(Path(ours["data"]).resolve()), str(Path(asked["data"]).resolve())
    diff = sorted(k for k, v in asked.items() if k not in RESUME_MAY_CHANGE and ours.get(k) != v)
    if diff:
        raise RunError(f"--resume with settings that differ from the run's own: {', '.join(diff)}")
    loop.model.load_state_dict(weights.state_dict())
    loop.opt.load_state_dict(state["optimizer"])
    loop.epoch, loop.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
    loop.best, loop.best_epoch = float(state["best_psnr"]), meta.get("best_epoch")
    set_rng_state(state["rng"][rt.rank] if rt.rank < len(state["rng"]) else state["rng"][0])
    if rt.main:
        run.trim_log(loop.epoch * cfg.iters_per_epoch + loop.step_in_epoch)


def save(cfg: Config, rt: Runtime, run: RunFolder, loop: Loop, names: list[str], metrics: dict) -> None:
    """Collective (every rank calls it, for the RNG gather); rank 0 writes ``names`` in order,
    ``last`` first: a kill before ``best`` is written is repaired from ``last`` on resume."""
    rngs = [rng_state()]
    if rt.world > 1:
        gathered: list = [None] * rt.world
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if rt.main:
        state = {"optimizer": loop.opt.state_dict(), "epoch": loop.epoch, "step_in_epoch": loop.step_in_epoch,
                 "best_psnr": loop.best, "rng": rngs}
        meta = {"epoch": loop.epoch, "step": loop.epoch * cfg.iters_per_epoch + loop.step_in_epoch,
                "best_psnr": loop.best, "best_epoch": loop.best_epoch, **metrics}
        for name in names:
            checkpoint.save(run.path / name, loop.model, cfg.to_dict(), meta, state)


def sync_buffers(model: torch.nn.Module, rt: Runtime) -> None:
    """Batch-norm statistics are updated per rank; leave every rank with rank 0's (the saved ones)."""
    if rt.world > 1:
        for buf in model.buffers():
            dist.broadcast(buf, 0)


def diverged(run: RunFolder, where: str) -> TrainingDiverged:
    kept = (f"kept the last good checkpoint {run.last}" if run.has_checkpoint()
            else "no checkpoint had been saved yet")
    return TrainingDiverged(f"{where}; {kept}. Try a lower --lr.")


def train_epochs(cfg: Config, rt: Runtime, run: RunFolder, loop: Loop, train_ds: BairDataset,
                 val_ds: BairDataset | None, flag: dict, progress: bool, stop_at_step: int | None,
                 truths: TrainingFutures | None = None, flows: TrainingFlows | None = None) -> None:
    """The step loop, epoch by epoch, with the checkpoint policy at its two exits: the end of an
    epoch (``last``, and ``best`` when validation improved) and a stop mid-epoch (``last``)."""
    from tqdm import tqdm

    seq_len = cfg.n_past + cfg.n_future
    cuda = rt.device.type == "cuda"
    amp = cfg.amp and bf16_autocast(rt.device)
    workers = cfg.num_workers if cfg.num_workers >= 0 else (2 if cuda else 0)
    total_steps = cfg.epochs * cfg.iters_per_epoch
    log_every = max(1, cfg.iters_per_epoch // max(1, cfg.logs_per_epoch))
    terms = FutureTerms.of(cfg)
    bar = tqdm(total=total_steps, initial=loop.epoch * cfg.iters_per_epoch + loop.step_in_epoch,
               disable=not (rt.main and progress), desc="training", dynamic_ncols=True)
    last_val = last_window = None
    try:
        while loop.epoch < cfg.epochs:
            tfr = tfr_at(cfg, loop.epoch)
            sampler = WindowBatchSampler(len(train_ds), train_ds.n_frames, seq_len, cfg.batch_size,
                                         cfg.iters_per_epoch, cfg.seed, loop.epoch, loop.step_in_epoch, rt.rank, rt.world)
            # A private generator: creating an iterator must not draw from the global RNG, which the
            # teacher-forcing coin and z use, or a resumed run would diverge from an unbroken one.
            loader_rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rt.rank * 1009 + loop.epoch)
            data = train_ds if flows is None else WithFlows(train_ds, flows, cfg.flow_truth_moved)
            loader = DataLoader(data, batch_sampler=sampler, num_workers=workers, pin_memory=cuda,
                                worker_init_fn=init_worker, generator=loader_rng)
            sums = torch.zeros(3 + len(TERMS_LOGGED), device=rt.device)
            count, window_start, tick, kld_at_tick = 0, time.perf_counter(), 0, 0.0
            loop.net.train()
            for x, c, *true_flow in loader:
                x, c = x.to(rt.device, non_blocking=True), c.to(rt.device, non_blocking=True)
                true_flow = tuple(v.to(rt.device, non_blocking=True) for v in true_flow) or None
                step = loop.epoch * cfg.iters_per_epoch + loop.step_in_epoch
                beta = beta_at(cfg, step)
                use_tf = use_teacher_forcing(tfr, cfg.seed, step)
                for group, base in zip(loop.opt.param_groups, (cfg.lr, cfg.critic_lr)):
                    group["lr"] = base * lr_scale(cfg, step)
                futures = truths.batch(step, rt.device) if truths is not None else None
                sums += train_step(loop.net, loop.opt, x, c, beta, use_tf, amp=amp, free_bits=cfg.kl_free_bits,
                                   best_of=cfg.best_of, best_of_weight=cfg.best_of_weight, recon_weight=cfg.recon_weight,
                                   futures=futures, terms=terms, true_flow=true_flow,
                                   flow_truth_weight=cfg.flow_truth_weight)
                count += 1
                loop.step_in_epoch += 1
                bar.update(1)
                logged = loop.step_in_epoch % log_every == 0 or loop.step_in_epoch == cfg.iters_per_epoch
                if logged:
                    if rt.world > 1:
                        dist.all_reduce(sums)
                        stop = torch.tensor(float(flag["stop"]), device=rt.device)
                        dist.all_reduce(stop)
                        flag["stop"] = flag["stop"] or bool(stop.item())
                        sums /= rt.world
                    mean = (sums / count).tolist()
                    if not all(math.isfinite(v) for v in mean):
                        raise diverged(run, f"loss became non-finite at epoch {loop.epoch}, step {step} "
                                            f"(loss {mean[0]}, mse {mean[1]}, kld {mean[2]})")
                    rate = (count - tick) * cfg.batch_size / (time.perf_counter() - window_start)
                    record = {"kind": "step", "epoch": loop.epoch, "step": step + 1, "loss": mean[0], "mse": mean[1],
                              "kld": mean[2], "beta": beta, "tfr": tfr, "lr": loop.opt.param_groups[0]["lr"],
                              "seq_per_s": round(rate, 2)}
                    record.update({name: v for (_, name, switch), v in zip(TERMS_LOGGED, mean[3:])
                                   if getattr(cfg, switch)})
                    kld_sum = mean[2] * count
                    window = (step + 1, (kld_sum - kld_at_tick) / (count - tick))
                    if rt.main:
                        run.append(record)
                        if note := kl_jump(last_window, window):
                            bar.write(note)
                    last_window, kld_at_tick = window, kld_sum
                    bar.set_postfix(loss=f"{mean[0]:.4f}", psnr="-" if last_val is None else f"{last_val:.2f}")
                    window_start, tick = time.perf_counter(), count
                asked_stop = stop_at_step is not None and step + 1 >= stop_at_step
                signalled = flag["stop"] and (logged or rt.world == 1)  # ranks agree only at log points
                if (asked_stop or signalled) and loop.step_in_epoch < cfg.iters_per_epoch:
                    stop_mid_epoch(cfg, rt, run, loop, flag, asked_stop and not signalled)
                    return
            last_val = end_epoch(cfg, rt, run, loop, val_ds, record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{last_val:.2f}" if last_val is not None else "-")
            if flag["stop"]:
                raise interrupted(run, loop, flag)
            if stop_at_step is not None and loop.epoch * cfg.iters_per_epoch >= stop_at_step:
                if rt.main:
                    print(f"\nstopped at step {stop_at_step} as asked: {run.last} holds epoch {loop.epoch}; "
                          "continue with --resume")
                return
    finally:
        bar.close()


def stop_mid_epoch(cfg: Config, rt: Runtime, run: RunFolder, loop: Loop, flag: dict, asked: bool) -> None:
    """Save ``last/`` where the loop stands (never diverged weights), then report how to go on."""
    if not weights_finite(loop.model):
        raise diverged(run, f"weights became non-finite at epoch {loop.epoch}, step {loop.step_in_epoch}")
    save(cfg, rt, run, loop, ["last"], {"interrupted": True})
    if not asked:
        raise interrupted(run, loop, flag)
    if rt.main:
        print(f"\nstopped at step {loop.epoch * cfg.iters_per_epoch + loop.step_in_epoch} as asked: saved "
              f"{run.last}; continue with --resume")


def interrupted(run: RunFolder, loop: Loop, flag: dict) -> Interrupted:
    name = signal.Signals(flag["signum"]).name if flag["signum"] else "a signal"
    return Interrupted(f"{name}: saved {run.last} at epoch {loop.epoch}, step {loop.step_in_epoch}; continue "
                       f"with --resume --out {run.path}", flag["signum"] or signal.SIGINT)


def end_epoch(cfg: Config, rt: Runtime, run: RunFolder, loop: Loop, val_ds: BairDataset | None,
              record: dict) -> float | None:
    """Validate, log the epoch and save: ``last`` always, ``best`` when validation improved.
    Diverged weights (a blow-up in the epoch's last update) are never saved."""
    if not weights_finite(loop.model):  # the same on every rank: DDP keeps the weights equal
        raise diverged(run, f"weights became non-finite in the last update of epoch {loop.epoch}")
    val = None
    if rt.main:
        val = evaluate(loop.model, val_ds, cfg.n_future, limit=cfg.val_seqs, device=rt.device)
        if not math.isfinite(val.psnr):
            raise diverged(run, f"validation PSNR is {val.psnr} after epoch {loop.epoch}")
    record.update(kind="epoch", val_psnr=None if val is None else val.psnr, val_ssim=None if val is None else val.ssim)
    if rt.main:
        run.append(record)
    loop.epoch, loop.step_in_epoch = loop.epoch + 1, 0
    improved = val is not None and val.psnr > loop.best
    if improved:
        loop.best, loop.best_epoch = val.psnr, loop.epoch
    save(cfg, rt, run, loop, ["last", "best"] if improved else ["last"],
         {"val_psnr": record["val_psnr"], "val_ssim": record["val_ssim"]})
    return None if val is None else val.psnr
