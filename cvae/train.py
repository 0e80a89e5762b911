"""The training loop. The same code runs under ``python`` or ``torchrun`` (DDP is detected from
``RANK``); rank 0 alone logs, validates and saves.

Loss = sum over steps t of [ MSE_t + beta * KL_t ], where MSE_t is the per-pixel mean over the
batch and KL_t is summed over z dimensions and averaged over the batch (SVG's reduction).

Artifacts in ``cfg.out``: ``log.jsonl`` (one ``epoch`` record per epoch plus ``step`` records
within it), ``last/`` (resumable) and ``best/`` (best validation PSNR) checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from . import checkpoint
from .config import Config
from .data.bair import DataError
from .data.dataset import BairDataset, WindowBatchSampler, check_global_batch, seed_worker
from .evaluate import evaluate
from .model import SVG
from .schedules import kl_beta, teacher_forcing_ratio, use_teacher_forcing


RESUME_MAY_CHANGE = {"epochs", "num_workers", "compile", "logs_per_epoch", "val_seqs"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
    flag = {"stop": False}

    def handler(signum: int, frame: object) -> None:
        flag["stop"] = True

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


def _trim_log(log: Path, step: int) -> None:
    """On resume, drop records written after the checkpoint so the log is never duplicated."""
    if log.exists():
        keep = [line for line in log.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        log.write_text("".join(line + "\n" for line in keep))


def prepare(model: SVG, cfg: Config, device: torch.device) -> tuple[SVG, torch.optim.Adam]:
    """The model on ``device`` in training's memory layout, and training's optimizer (fused on CUDA).
    The benchmarks use it too, so they time what training runs."""
    model = model.to(device)
    if cfg.channels_last:
        model.channels_last = True
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999), fused=device.type == "cuda" or None)
    return model, opt


def bf16_autocast(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here: CUDA with bf16, or a CPU with AVX512-BF16/AMX
    (oneDNN's check). Elsewhere CPU bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, c: torch.Tensor, beta: float,
               teacher_forcing: bool, amp: bool, free_bits: float = 0.0) -> torch.Tensor:
    """One optimiser step on loss = pixel loss (MSE or L1) + beta * KL. Returns detached (loss,
    mse, kld) on the device, so the caller decides when to pay for a host sync."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        losses = net(x, c, teacher_forcing, free_bits)
    mse, kld = losses.mse.sum(), losses.kld.sum()
    loss = losses.recon.sum() + beta * losses.kl_loss.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return torch.stack([loss.detach(), mse.detach(), kld.detach()])


def train(cfg: Config, resume: bool = False, progress: bool = True) -> SVG:
    """Train per ``cfg``; returns the (unwrapped) model. Raises TrainingDiverged on a non-finite loss."""
    cfg.validate()
    rt = setup_runtime()
    check_global_batch(cfg.batch_size, rt.world)  # before any data or model work
    ensure_data(cfg, rt)
    torch.manual_seed(cfg.seed + rt.rank)
    seq_len = cfg.n_past + cfg.n_future
    if rt.main:
        train_ds = BairDataset(cfg.data, "train", seq_len)
        val_ds = BairDataset(cfg.data, "validate", seq_len)
    rt.barrier()  # rank 0 built the caches; the others now open them
    if not rt.main:
        train_ds = BairDataset(cfg.data, "train", seq_len)
    cuda = rt.device.type == "cuda"
    model = SVG.from_config(cfg.to_dict())
    model.predictor.set_condition_stats(torch.from_numpy(train_ds.packed.cond))
    model, opt = prepare(model, cfg, rt.device)
    out = Path(cfg.out)
    log = out / checkpoint.LOG
    epoch, step_in_epoch, best = 0, 0, -math.inf
    if resume:
        state = checkpoint.load_state(out / "last")
        weights, meta = checkpoint.load_model(out / "last", rt.device)
        run = Config.from_dict(meta["config"]).to_dict()  # fields newer than the run read as their defaults
        diff = sorted(k for k, v in cfg.to_dict().items() if k not in RESUME_MAY_CHANGE and run.get(k) != v)
        if diff:
            raise ValueError(f"--resume with settings that differ from the run's own: {', '.join(diff)}")
        model.load_state_dict(weights.state_dict())
        opt.load_state_dict(state["optimizer"])
        epoch, step_in_epoch, best = int(state["epoch"]), int(state["step_in_epoch"]), float(state["best_psnr"])
        set_rng_state(state["rng"][rt.rank] if rt.rank < len(state["rng"]) else state["rng"][0])
        if rt.main:
            _trim_log(log, epoch * cfg.iters_per_epoch + step_in_epoch)
    elif rt.main and log.exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    net = torch.nn.parallel.DistributedDataParallel(model) if rt.world > 1 else model
    if cfg.compile:
        net = torch.compile(net)
    amp = cfg.amp and bf16_autocast(rt.device)
    workers = cfg.num_workers if cfg.num_workers >= 0 else (2 if cuda else 0)
    total_steps = cfg.epochs * cfg.iters_per_epoch
    log_every = max(1, cfg.iters_per_epoch // max(1, cfg.logs_per_epoch))
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=epoch * cfg.iters_per_epoch + step_in_epoch, disable=not (rt.main and progress),
               desc="training", dynamic_ncols=True)
    last_val = None

    def save(names: list[str], at_epoch: int, at_step: int, metrics: dict) -> None:
        """Collective (every rank calls it, for the RNG gather); rank 0 writes ``names``."""
        rngs = [rng_state()]
        if rt.world > 1:
            gathered: list = [None] * rt.world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if rt.main:
            state = {"optimizer": opt.state_dict(), "epoch": at_epoch, "step_in_epoch": at_step,
                     "best_psnr": best, "rng": rngs}
            meta = {"epoch": at_epoch, "step": at_epoch * cfg.iters_per_epoch + at_step, "best_psnr": best, **metrics}
            for name in names:
                checkpoint.save(out / name, model, cfg.to_dict(), meta, state)

    def sync_buffers() -> None:
        """Batch-norm statistics are updated per rank; leave every rank with rank 0's (the saved ones)."""
        if rt.world > 1:
            for buf in model.buffers():
                dist.broadcast(buf, 0)

    def write(record: dict) -> None:
        if rt.main:
            out.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")

    with stop_on_signals() as flag:
        while epoch < cfg.epochs:
            tfr = teacher_forcing_ratio(epoch, cfg.tfr, cfg.tfr_start_decay_epoch, cfg.tfr_decay_step, cfg.tfr_lower_bound)
            sampler = WindowBatchSampler(len(train_ds), train_ds.n_frames, seq_len, cfg.batch_size, cfg.iters_per_epoch,
                                         cfg.seed, epoch, step_in_epoch, rt.rank, rt.world)
            # A private generator: creating an iterator must not draw from the global RNG, which the
            # teacher-forcing coin and z use, or a resumed run would diverge from an unbroken one.
            loader_rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rt.rank * 1009 + epoch)
            loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=workers, pin_memory=cuda,
                                worker_init_fn=seed_worker, generator=loader_rng)
            sums = torch.zeros(3, device=rt.device)
            count, window_start, tick = 0, time.perf_counter(), 0
            net.train()
            for x, c in loader:
                x, c = x.to(rt.device, non_blocking=True), c.to(rt.device, non_blocking=True)
                step = epoch * cfg.iters_per_epoch + step_in_epoch
                beta = kl_beta(cfg.kl_anneal, step if cfg.kl_granularity == "step" else epoch,
                               total_steps if cfg.kl_granularity == "step" else cfg.epochs,
                               cfg.kl_cycles, cfg.kl_ratio, cfg.kl_weight)
                use_tf = use_teacher_forcing(tfr, cfg.seed, step)
                sums += train_step(net, opt, x, c, beta, use_tf, amp=amp, free_bits=cfg.kl_free_bits)
                count += 1
                step_in_epoch += 1
                bar.update(1)
                if step_in_epoch % log_every == 0 or step_in_epoch == cfg.iters_per_epoch:
                    if rt.world > 1:
                        dist.all_reduce(sums)
                        stop = torch.tensor(float(flag["stop"]), device=rt.device)
                        dist.all_reduce(stop)
                        flag["stop"] = bool(stop.item())
                        sums /= rt.world
                    mean = (sums / count).tolist()
                    if not all(math.isfinite(v) for v in mean):
                        raise TrainingDiverged(
                            f"loss became non-finite at epoch {epoch}, step {step} (loss {mean[0]}, mse {mean[1]}, "
                            f"kld {mean[2]}); kept the last good checkpoint in {out / 'last'}. Try a lower --lr.")
                    rate = (count - tick) * cfg.batch_size / (time.perf_counter() - window_start)
                    record = {"kind": "step", "epoch": epoch, "step": step + 1, "loss": mean[0], "mse": mean[1],
                              "kld": mean[2], "beta": beta, "tfr": tfr, "lr": opt.param_groups[0]["lr"],
                              "seq_per_s": round(rate, 2)}
                    write(record)
                    bar.set_postfix(loss=f"{mean[0]:.4f}", psnr="-" if last_val is None else f"{last_val:.2f}")
                    window_start, tick = time.perf_counter(), count
                if flag["stop"] and step_in_epoch < cfg.iters_per_epoch:
                    save(["last"], epoch, step_in_epoch, {"interrupted": True})
                    sync_buffers()
                    bar.close()
                    if rt.main:
                        print(f"\ninterrupted: saved {out / 'last'} at epoch {epoch}, step {step_in_epoch}; "
                              "continue with --resume")
                    return model
            val = None
            if rt.main:
                val = evaluate(model, val_ds, cfg.n_future, limit=cfg.val_seqs, device=rt.device)
                last_val = val.psnr
            record.update(kind="epoch", val_psnr=None if val is None else val.psnr,
                          val_ssim=None if val is None else val.ssim)
            write(record)
            epoch, step_in_epoch = epoch + 1, 0
            improved = val is not None and val.psnr > best
            if improved:
                best = val.psnr
            metrics = {"val_psnr": record["val_psnr"], "val_ssim": record["val_ssim"]}
            save(["last", "best"] if improved else ["last"], epoch, 0, metrics)
            bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{last_val:.2f}" if last_val is not None else "-")
            if flag["stop"]:
                break
    sync_buffers()
    bar.close()
    return model
