"""Training throughput, fast path versus the straightforward reference, interleaved in one run.

The reference (bench/reference.py) encodes and decodes one frame per Python step in fp32 without
channels_last, as the lab's sample code and SVG do. Both share the same initial weights and
batch. Before timing, both must compute the same loss on the same input (teacher forcing on,
fixed seed, evaluation-mode batch norm); a speed-up that changes the math is not one.

It counts both paths' FLOPs too: their ratio is the speed-up that doing less work alone would
give; whatever the measured ratio has beyond it comes from running each FLOP faster.

    python bench/train_step.py --preset cpu [--batch 16] [--rounds 9] [--compile] [--channels-last on|off]
    python bench/train_step.py --preset lab --batch 2 --rounds 2      # full width, on a CPU
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import record

from cvae.config import preset
from cvae.model import SVG
from cvae.model.reference import reference_losses
from cvae.train import bf16_autocast, prepare, train_step


def flops_per_sequence(loss_fn, x: torch.Tensor, c: torch.Tensor) -> float:
    """Forward plus backward FLOPs of one teacher-forced sequence, counted by torch over two
    (per-frame batch norm in training mode needs more than one value per channel)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        mse, kld = loss_fn(x[:2], c[:2])
        (mse.sum() + kld.sum()).backward()
    return counter.get_total_flops() / 2


def fast_losses(model: SVG, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x, c, teacher_forcing=True)
    return out.mse, out.kld


def copy_on(model: SVG, device: torch.device) -> SVG:
    """A copy to time or count apart from ``model``. ``.to()`` packs cuDNN's LSTM weights again,
    which a deepcopy leaves scattered (cuDNN would compact them at every call)."""
    return copy.deepcopy(model).to(device)


def check_same_loss(model: SVG, x: torch.Tensor, c: torch.Tensor) -> float:
    """In full fp32: cuDNN's convolutions default to TF32 (10-bit mantissa), whose rounding would
    differ between two batchings of the same math."""
    model.eval()
    tf32, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
    torch.manual_seed(0)
    fast = model(x, c, teacher_forcing=True)
    torch.manual_seed(0)
    ref_mse, ref_kld = reference_losses(model, x, c)
    torch.backends.cudnn.allow_tf32 = tf32
    model.train()
    fast_loss, ref_loss = (fast.mse.sum() + fast.kld.sum()).item(), (ref_mse.sum() + ref_kld.sum()).item()
    rel = abs(fast_loss - ref_loss) / abs(ref_loss)
    if rel > 1e-4:
        raise SystemExit(f"the fast path's loss {fast_loss} differs from the reference's {ref_loss} (rel {rel:.2e})")
    return rel


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="cpu")
    p.add_argument("--batch", type=int, default=0, help="default: the preset's batch size")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", choices=["preset", "on", "off"], default="preset",
                   help="preset: as training does (the preset's channels_last)")
    p.add_argument("--no-amp", action="store_true")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    cfg = preset(args.preset)
    if args.channels_last != "preset":
        cfg.channels_last = args.channels_last == "on"
    batch = args.batch or cfg.batch_size
    torch.manual_seed(0)
    base = SVG.from_config(cfg.to_dict()).to(device)
    x = torch.rand(batch, cfg.n_past + cfg.n_future, 3, 64, 64, device=device)
    c = torch.randn(batch, cfg.n_past + cfg.n_future, 7, device=device)
    rel = check_same_loss(base, x, c)
    flops = flops_per_sequence(lambda *a: fast_losses(copy_on(base, device), *a), x, c)
    ref_flops = flops_per_sequence(lambda *a: reference_losses(copy_on(base, device), *a), x, c)
    fast, opt_fast = prepare(copy.deepcopy(base), cfg, device)  # exactly what training runs (prepare packs too)
    ref = copy_on(base, device)
    opt_ref = torch.optim.Adam(ref.parameters(), cfg.lr, betas=(cfg.beta1, 0.999))
    amp = cfg.amp and bf16_autocast(device) and not args.no_amp  # as training decides
    fast_net = torch.compile(fast) if args.compile else fast

    def fast_step() -> None:
        train_step(fast_net, opt_fast, x, c, 1e-4, True, amp)

    def ref_step() -> None:
        mse, kld = reference_losses(ref, x, c)
        loss = mse.sum() + 1e-4 * kld.sum()
        opt_ref.zero_grad(set_to_none=True)
        loss.backward()
        opt_ref.step()

    def timed(step) -> float:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    fast_step(), ref_step()  # warm-up (and compilation)
    fast_t, ref_t = [], []
    for _ in range(args.rounds):  # interleaved, so drift in the machine hits both alike
        fast_t.append(timed(fast_step))
        ref_t.append(timed(ref_step))
    ratios = sorted(r / f for f, r in zip(fast_t, ref_t))
    fast_rate, ref_rate = batch / statistics.median(fast_t), batch / statistics.median(ref_t)
    tflops = flops * fast_rate / 1e12
    peak_mem = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    row = record("train_step", device, preset=args.preset, batch=batch, width=cfg.width, rounds=args.rounds,
                 loss_rel_diff=rel, fast_seq_per_s=round(fast_rate, 2), ref_seq_per_s=round(ref_rate, 2),
                 ratio=round(statistics.median(ratios), 2), ratio_min=round(ratios[0], 2), ratio_max=round(ratios[-1], 2),
                 gflop_per_seq=round(flops / 1e9, 3), ref_gflop_per_seq=round(ref_flops / 1e9, 3),
                 flop_ratio=round(ref_flops / flops, 2), tflops=round(tflops, 4), channels_last=cfg.channels_last,
                 bf16=amp, compile=args.compile, cuda_max_allocated_mib=peak_mem)
    print(f"{args.preset} (width {cfg.width}), batch {batch} on {row['machine']}: same loss (rel diff {rel:.1e})")
    print(f"fast {row['fast_seq_per_s']} seq/s, reference {row['ref_seq_per_s']} seq/s: {row['ratio']}x "
          f"(per-round ratios {row['ratio_min']}-{row['ratio_max']})")
    print(f"FLOPs per sequence: fast {flops / 1e9:.3f} G, reference {ref_flops / 1e9:.3f} G "
          f"({row['flop_ratio']}x the work); fast path achieves {tflops * 1000:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
