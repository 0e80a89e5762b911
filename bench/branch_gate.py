"""Where does the model's spread pay? Each sample is gated to the model's mean future (z_scale 0)
wherever the re-simulated true futures agree (``metrics.branching``, widened by D px): an oracle
gate, the ceiling of a model that spreads only where the world branches. Its best of N, coverage,
spread ratio and agreement beside the ungated samples' split each figure into what spread where
the world branches earns and what the model's own doubt elsewhere earns. Simulated data with
hidden causes only.

Two gates a model could compute itself, probed before building one: ``--moving W``, where the
mean future differs from the last context frame (``metrics.moving_mask``, widened by W px), and
``--learn N``, the probability of branching that a small CNN fitted on N training scenes reads
off the mean future (``fit_classifier``); each sample keeps that share of its difference from
the mean future. And one that gates by size, not place: ``--deviation G``, each sample keeps a
pixel only where it differs from the mean future by more than G grey levels (its largest
channel), so the faint haze a sample spreads over the still table goes and an object drawn in
another place stays. ``--swept``: each sample takes the mean future's pixels wherever the arm
sweeps over the sequence (``spread_where.arm_masks`` at any step, from the condition's
end-effector places and the arm's base, here the simulator's), after the rollout rather than
fed back as ``arm_calm`` does. ``--ensemble CKPT --agree G``: each sample keeps its difference from the mean
future only where CKPT's mean future (another run of the same recipe) agrees with it within G
grey levels (the largest channel, over a 3 x 3 square): where two runs disagree on the one
future they would draw is the models' own ignorance (the arm, the table it uncovers), which the
world's truths do not share; where they agree and the samples still differ is the noise's. (On
``bcs`` and its seed-2 twin the runs disagree on the pushed objects too: docs/issue13.md, stop 63.)

Two more the condition alone sets (docs/issue13.md, stop 73): ``--reach R``, each sample keeps
its difference from the mean future only within R px of where the end effector has been by each
step (context included), since only the gripper pushes; ``--ramp P``, each sample keeps the
share ((f + 1) / F)^P of it at future step f, so the spread grows over the steps as the truths'
does (the predictor carries noise scaled down at one step into the next, so this is applied
after the rollout). ``--split`` scores another split than the test one.

Two more (docs/issue13.md, stop 74): ``--now W``, each sample takes the mean future's pixels
where the arm is at that step (its shaft and gripper from the condition and the simulator's
base, widened by W px), the arm's own pixels, which the truths were expected to share (4% of
them branch, within 3-10 px of the gripper, where the pushed object meets it); ``--self P``,
each sample keeps the share (m / max m)^P of its difference, m its group's own std map: the
model's spread sharpened toward its own peaks, set by its futures alone.

    python bench/branch_gate.py --ckpt assets/model --limit 16
    python bench/branch_gate.py --ckpt CKPT --limit 32 --widen 0 --moving 0 4 --learn 384
    python bench/branch_gate.py --ckpt CKPT --limit 32 --widen 0 --deviation 4 8 16 --swept
    python bench/branch_gate.py --ckpt CKPT --limit 32 --widen 0 --ensemble CKPT2 --agree 4 8 16
    python bench/branch_gate.py --ckpt assets/model --limit 32 --split validate --widen 0 --reach 8 16 24 --ramp 0.5 1
    python bench/branch_gate.py --ckpt assets/model --limit 32 --split validate --widen 0 --now 0 1 2 --self 0.5 1
"""
from __future__ import annotations

import numpy as np
import torch
from arm import grip_distance
from common import checkpoints_parser, mean_future, record, true_futures_of_each, uncertain_test_set
from spread_where import arm_masks
from torch import nn
from torch.nn import functional as F

from cvae import checkpoint
from cvae.condition import XY
from cvae.evaluate import batches, row_seeds
from cvae.kinematics import world_to_px
from cvae.metrics import branching, moving_mask, pixel_std, psnr, sharpness
from cvae.model.spread import features
from cvae.physics_eval import spread_scores, summarize


def widened(mask: torch.Tensor, px: int) -> torch.Tensor:
    """A map [B, F, H, W] as float, each 1 spread over the (2 px + 1)^2 square around it."""
    g = mask.float()
    if px:
        g = F.max_pool2d(g.flatten(0, 1)[:, None], 2 * px + 1, 1, px).view_as(g)
    return g


def mix(samples: torch.Tensor, mean: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Samples [B, S, F, 3, H, W] keeping the share ``g`` [B, F, H, W] (or a shape that
    broadcasts to it) of their difference from the mean future [B, 1, F, 3, H, W]."""
    return mean + g[:, None, :, None] * (samples - mean)


def gate(samples: torch.Tensor, mean: torch.Tensor, truths: torch.Tensor, widen: int) -> torch.Tensor:
    """Samples [B, S, F, 3, H, W] kept where the truths [B, K, F, 3, H, W] branch (widened by
    ``widen`` px), the mean future [B, 1, F, 3, H, W] elsewhere."""
    return mix(samples, mean, widened(branching(truths, 1), widen))


def reach(c: torch.Tensor, n_past: int, f: int, px: float) -> torch.Tensor:
    """Float [B, F, H, W]: 1 at the pixels within ``px`` of a place the end effector has been by
    each of the ``f`` future steps (context frames included) under conditions ``c`` [B, T, 7],
    else 0; set by the condition alone."""
    ee = world_to_px(c[..., XY].numpy().astype(np.float64))  # [B, T, 2]
    d = torch.from_numpy(grip_distance(ee)).float()  # [B, T, H, W]
    return torch.stack([d[:, : n_past + i + 1].amin(1) <= px for i in range(f)], 1).float()


def ramp(f: int, power: float) -> torch.Tensor:
    """[F]: the share ((i + 1) / F)^power a sample keeps of its difference at future step i."""
    return ((torch.arange(f) + 1) / f).pow(power)


def off_arm(arm: torch.Tensor, n_past: int, px: int) -> torch.Tensor:
    """The arm's pixels at every step, bool [B, n_past + F, H, W] -> float [B, F, H, W]: 0 where
    the arm is at each future step (widened by ``px`` px), 1 elsewhere; set by the condition."""
    return 1 - widened(arm[:, n_past:], px)


def self_gate(samples: torch.Tensor, power: float) -> torch.Tensor:
    """Float [B, F, H, W]: the samples' [B, S, F, 3, H, W] own std map (``pixel_std``) over each
    sequence's largest value, to the power ``power``."""
    m = pixel_std(samples, 1)
    return (m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)).pow(power)


def departed(samples: torch.Tensor, mean: torch.Tensor, grey: float) -> torch.Tensor:
    """Where each sample [B, S, F, 3, H, W] differs from the mean future [B, 1, F, 3, H, W] by
    more than ``grey`` grey levels in some channel, as float [B, S, F, H, W]."""
    return ((samples - mean).abs().amax(3) > grey / 255).float()


def agreed(mean: torch.Tensor, other: torch.Tensor, grey: float) -> torch.Tensor:
    """Where two models' mean futures [B, 1, F, 3, H, W] agree within ``grey`` grey levels in
    every channel, over the 3 x 3 square round each pixel, as float [B, F, H, W]."""
    gap = (mean - other)[:, 0].abs().amax(2)  # [B, F, H, W]
    gap = F.max_pool2d(gap.flatten(0, 1)[:, None], 3, 1, 1).view_as(gap)
    return (gap <= grey / 255).float()


def classifier() -> nn.Module:
    """Dilated convolutions seeing ~30 px: as far as a pushed object glides in a few steps."""
    return nn.Sequential(nn.Conv2d(13, 32, 5, padding=2), nn.LeakyReLU(0.2),
                         nn.Conv2d(32, 32, 5, padding=4, dilation=2), nn.LeakyReLU(0.2),
                         nn.Conv2d(32, 32, 5, padding=8, dilation=4), nn.LeakyReLU(0.2),
                         nn.Conv2d(32, 1, 3, padding=1))


def fit_classifier(feats: torch.Tensor, branch: torch.Tensor, steps: int, seed: int = 0) -> nn.Module:
    """A ``classifier`` fitted by cross-entropy to say from ``features`` [N, 13, H, W] whether the
    true futures branch at each pixel (``branch`` [N, H, W]), 64 frames a step."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    target = branch.float()[:, None]
    for _ in range(steps):
        i = torch.randint(0, len(feats), (64,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(net(feats[i]), target[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


class Tally:
    """One gated variant's figures over the batches of scenes: eval's spread scores against the
    truths, and the one sample and best of N against the recorded future."""

    def __init__(self) -> None:
        self.spread: dict[str, list[torch.Tensor]] = {}
        self.best: list[torch.Tensor] = []
        self.one: list[torch.Tensor] = []
        self.sharp: list[torch.Tensor] = []
        self.sharp_truth: list[torch.Tensor] = []

    def add(self, out: torch.Tensor, truths: torch.Tensor, last: torch.Tensor, future: torch.Tensor) -> None:
        """Samples [B, S, F, 3, H, W], truths [B, K, F, 3, H, W], last context frames [B, 3, H, W]
        and recorded futures [B, F, 3, H, W] of one batch."""
        for name, val in spread_scores(out, truths, last).items():
            self.spread.setdefault(name, []).append(val)
        recorded = psnr(out, future[:, None]).mean(-1)  # [B, S]
        self.best.append(recorded.max(1).values)
        self.one.append(recorded[:, 0])
        self.sharp.append(sharpness(out[:, 0]))
        self.sharp_truth.append(sharpness(future))

    def row(self) -> dict[str, float]:
        """The one sample's PSNR, best of N (and its margin over the one sample: the margin also
        grows as the one sample gets worse, best of N only as the futures cover the recorded one
        better) and coverage over the one sample, the spread ratio, agreement, the misplaced share,
        and the lowest and highest of the one sample's sharpness per step (eval's), over every
        batch added."""
        s, o = summarize(self.spread), torch.cat(self.one).mean().item()
        sharp = torch.cat(self.sharp).mean(0) / torch.cat(self.sharp_truth).mean(0)
        best = torch.cat(self.best).mean().item()
        return {"one_sample": round(o, 3), "best_of_n": round(best, 3), "best_minus_one": round(best - o, 3),
                "coverage_minus_one": round(s["coverage_psnr"] - s["one_sample_psnr"], 3),
                "spread_ratio": round(s["spread_ratio"], 3), "agreement": round(s["agreement"], 3),
                "misplaced": round(s["misplaced_share"], 3), "sharpness_min": round(sharp.min().item(), 3),
                "sharpness_max": round(sharp.max().item(), 3)}


def describe(row: dict[str, float], samples: int) -> str:
    """A ``Tally.row`` as the benches that score variants print it."""
    return (f"one sample {row['one_sample']:.2f} dB, best of {samples} {row['best_of_n']:.2f} "
            f"({row['best_minus_one']:+.2f}), coverage "
            f"{row['coverage_minus_one']:+.2f}, spread ratio {row['spread_ratio']:.2f}, agreement "
            f"{row['agreement']:.3f}, misplaced {row['misplaced']:.0%}"
            + (f", sharpness {row['sharpness_min']:.2f}-{row['sharpness_max']:.2f}" if "sharpness_min" in row else ""))


def scenes_with_truths(data: str, split: str, limit: int, k: int, n_past: int, f: int, arm: bool = False):
    """Batches of (indices, frames, conditions, true futures [B, k, f, 3, H, W], the arm's pixels
    at every step [B, n_past + f, H, W] or None unless ``arm``) of the first ``limit`` scenes of
    ``split``, ``n_past + f`` frames each."""
    ds, found = uncertain_test_set(data, limit, n_past + f, split)
    for idx in batches(len(found), 16):
        x, c = (torch.stack(t) for t in zip(*(ds[i] for i in idx)))
        some = found[idx.start : idx.stop]
        yield idx, x, c, true_futures_of_each(some, c, k)[:, :, n_past:], arm_masks(some, c) if arm else None


@torch.no_grad()
def main() -> None:
    p = checkpoints_parser(__doc__, 16)
    p.add_argument("--truths", type=int, default=10, help="re-simulated futures per scene")
    p.add_argument("--samples", type=int, default=10, help="prior samples per scene")
    p.add_argument("--widen", type=int, nargs="+", default=[0, 2], help="px the oracle gate is widened by")
    p.add_argument("--moving", type=int, nargs="*", default=[], help="px the mean future's moving pixels are widened by")
    p.add_argument("--deviation", type=float, nargs="*", default=[],
                   help="grey levels a sample's pixel must differ from the mean future's by to be kept")
    p.add_argument("--swept", action="store_true", help="also the samples calmed where the arm sweeps")
    p.add_argument("--now", type=int, nargs="*", default=[],
                   help="px the arm's pixels at each step are widened by, where each sample is calmed")
    p.add_argument("--self", type=float, nargs="*", default=[], dest="self_power",
                   help="powers P: a sample keeps (its group's std / the largest)^P of its difference")
    p.add_argument("--learn", type=int, default=0, help="training scenes to fit the learned gate on (0: none)")
    p.add_argument("--learn-steps", type=int, default=1500)
    p.add_argument("--ensemble", default=None, help="another run's checkpoint, whose mean future gates by --agree")
    p.add_argument("--reach", type=float, nargs="*", default=[],
                   help="px from the end effector's places so far within which a sample may differ")
    p.add_argument("--ramp", type=float, nargs="*", default=[],
                   help="powers P: a sample keeps ((f + 1) / F)^P of its difference at step f")
    p.add_argument("--split", default="test", help="the split scored (the learned gate always fits on train)")
    p.add_argument("--agree", type=float, nargs="*", default=[8.0],
                   help="grey levels within which the two mean futures must agree for a sample to differ there")
    args = p.parse_args()
    other = checkpoint.load_model(args.ensemble, "cpu")[0] if args.ensemble else None
    f = 10
    for ckpt in args.ckpt:
        model, _ = checkpoint.load_model(ckpt, "cpu")
        n = model.n_past
        net = None
        if args.learn:
            feats, branch = [], []
            for _, x, c, truths, _ in scenes_with_truths(args.data, "train", args.learn, args.truths, n, f):
                feats.append(features(x[:, n - 1], mean_future(model, x, c, f)[:, 0]).flatten(0, 1))
                branch.append(branching(truths, 1).flatten(0, 1))
            with torch.enable_grad():
                net = fit_classifier(torch.cat(feats), torch.cat(branch), args.learn_steps)
        variants = ["ungated", *(f"gate{w}" for w in args.widen), *(f"moving{w}" for w in args.moving),
                    *(f"deviation{g:g}" for g in args.deviation), *(["swept"] if args.swept else []),
                    *(f"now{w}" for w in args.now), *(f"self{q:g}" for q in args.self_power),
                    *(f"reach{r:g}" for r in args.reach), *(f"ramp{q:g}" for q in args.ramp),
                    *(["learned"] if net is not None else []),
                    *(f"ensemble{g:g}" for g in (args.agree if other is not None else []))]
        tallies = {v: Tally() for v in variants}
        seen = 0
        for idx, x, c, truths, arm in scenes_with_truths(args.data, args.split, args.limit, args.truths, n, f,
                                                            args.swept or bool(args.now)):
            seen += len(x)
            samples = model.predict(x[:, :n], c, f, args.samples, row_seeds(0, idx))
            mean = mean_future(model, x, c, f)
            second = mean_future(other, x, c, f) if other is not None else None
            last = x[:, n - 1]
            for v in variants:
                if v == "ungated":
                    out = samples
                elif v.startswith("gate"):
                    out = gate(samples, mean, truths, int(v[4:]))
                elif v.startswith("moving"):
                    out = mix(samples, mean, widened(moving_mask(mean[:, 0], last[:, None]), int(v[6:])))
                elif v.startswith("reach"):
                    out = mix(samples, mean, reach(c, n, f, float(v[5:])))
                elif v.startswith("ramp"):
                    out = mix(samples, mean, ramp(f, float(v[4:]))[None, :, None, None])  # broadcast over scenes and pixels
                elif v == "swept":
                    out = mix(samples, mean, (~arm.any(1, keepdim=True)).float().expand(-1, f, -1, -1))
                elif v.startswith("now"):
                    out = mix(samples, mean, off_arm(arm, n, int(v[3:])))
                elif v.startswith("self"):
                    out = mix(samples, mean, self_gate(samples, float(v[4:])))
                elif v.startswith("ensemble"):
                    out = mix(samples, mean, agreed(mean, second, float(v[8:])))
                elif v.startswith("deviation"):
                    out = mean + departed(samples, mean, float(v[9:]))[:, :, :, None] * (samples - mean)
                else:
                    g = torch.sigmoid(net(features(last, mean[:, 0]).flatten(0, 1))).view(len(x), f, *x.shape[-2:])
                    out = mix(samples, mean, g)
                tallies[v].add(out, truths, last, x[:, n:])
        rows = {v: t.row() for v, t in tallies.items()}
        for v, r in rows.items():
            print(f"{ckpt} {v}: {describe(r, args.samples)}")
        record("branch_gate", torch.device("cpu"), ckpt=ckpt, split=args.split, sequences=seen, truths=args.truths,
               samples=args.samples, learn_scenes=args.learn, ensemble=args.ensemble, **rows)


if __name__ == "__main__":
    main()
