"""Where a checkpoint's futures differ, against where the world's do: the share of the model's
spread (its per-pixel std over samples, summed over the future) on the pixels where the true
futures branch, on the pixels the arm sweeps (its shaft and gripper at any step, context too)
where the truths agree, and elsewhere; and eval's uncertainty agreement as it is and with the
spread on the swept pixels where the truths agree taken out, which says how much of the
shortfall the model's doubt over the arm's region costs. That is an oracle's figure: the truths
choose which swept pixels to clear, and nearly half the pixels where they branch lie where the
arm sweeps (45% on the first 32 test sequences: it pushes the objects there), so a model that
calmed every swept pixel would lose those too (``branch_gate.py --swept``). The arm and the
table it uncovers are fixed by the condition, so spread there where the truths agree is the
model's own doubt. That spread split by where the arm is at each step, was, or comes later
(``arm_phases``), with the agreement each part's removal gives; agreement by how much the world
branches in each scene (``agreement_by_branching``); and a gate the condition alone
sets (the shaft now and the uncovered table); and what taking each sample's shaft from the
noiseless future afterwards does to coverage and the spread ratio. And where the truths
branch, whether the model's futures are sharp alternatives or alternative blurs: the squared
edges (``metrics.edge_energy``) of a sample, of the model's noiseless future and of the truths'
mean, each over a true future's. For a flow head,
its mask's shares where the arm sweeps and where the truths branch off the arm, and how far it
moves the previous frame in each (``flow_reach``). For a learned map prior, the noise it lets
through there and elsewhere (``prior_sigma``). For a carried motion with ``carry_noise``, whether
the decoder cancels that noise or holds the gate shut where the truths branch, and what a swing
there can change (``carry_gate``). ``--sheet`` also writes, per sequence, the last context
frame, a true, a predicted and the noiseless last frame, and the truths' and the model's std
maps (max over steps, x 4) side by side. Simulated data with hidden causes only.

    python bench/spread_where.py --ckpt assets/model --limit 32 --sheet docs/spread_where.png --seqs 0,1,4,5,10
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from arm import grip_distance, shaft_mask
from common import (
    arm_bases_of,
    checkpoints_parser,
    mean_future,
    noisy_rows,
    predict_capturing,
    record,
    test_sequences,
    true_futures_of_each,
    uncertain_test_set,
)

from cvae import checkpoint
from cvae.condition import XY
from cvae.data.simulator import GRIPPER_RADIUS_PX, LIFTED_GRIPPER_SCALE
from cvae.errors import ConfigError
from cvae.kinematics import world_to_px
from cvae.metrics import branching, edge_energy, pixel_std
from cvae.model.heads import warp
from cvae.physics_eval import spread_scores, std_agreement, summarize


def arm_mask(base: np.ndarray, ee: np.ndarray, hw: int = 64) -> np.ndarray:
    """Bool [T, H, W]: the pixels the arm covers at each step, the shaft from ``base`` [2] to the
    end-effector place ``ee`` [T, 2] (simulator coordinates) and the gripper there, 1 px wider."""
    return shaft_mask(base, ee, hw) | (grip_distance(ee, hw) <= GRIPPER_RADIUS_PX * LIFTED_GRIPPER_SCALE + 2)


def swept_mask(base: np.ndarray, ee: np.ndarray, hw: int = 64) -> np.ndarray:
    """Bool [H, W]: every pixel the arm covers at some step (:func:`arm_mask`)."""
    return arm_mask(base, ee, hw).any(0)


def arm_masks(found, c: torch.Tensor) -> torch.Tensor:
    """:func:`arm_mask` of each simulated scene of ``found`` under its row of conditions ``c``
    [N, T, 7] (the end effector's places), with the arm's base the simulator's: bool [N, T, H, W]."""
    ee = world_to_px(c[..., XY].numpy().astype(np.float64))
    return torch.from_numpy(np.stack([arm_mask(base, ee[i]) for i, base in enumerate(arm_bases_of(found))]))


def arm_phases(arm: torch.Tensor, found, c: torch.Tensor, n_past: int) -> dict[str, torch.Tensor]:
    """The arm's place at every step [N, T, H, W] (:func:`arm_masks` of ``found`` under ``c``) ->
    per future step, bool [N, F, H, W]: where the arm is ``now``, where it was at an earlier step
    and is not now (``past``: the table it uncovered), where it comes later only (``future``); and
    ``shaft`` + 1: its shaft now, 1 px wider, away from the gripper (where objects are pushed).
    Each is set by the condition alone."""
    ee = world_to_px(c[..., XY].numpy().astype(np.float64))  # [N, T, 2]
    shaft = []
    for i, base in enumerate(arm_bases_of(found)):
        wider = F.max_pool2d(torch.from_numpy(shaft_mask(base, ee[i])).float(), 3, stride=1, padding=1).bool()
        shaft.append(wider & torch.from_numpy(grip_distance(ee[i]) > GRIPPER_RADIUS_PX * LIFTED_GRIPPER_SCALE + 3))
    t = arm.shape[1]
    before = torch.stack([arm[:, :i].any(1) for i in range(n_past, t)], 1)
    later = torch.stack([arm[:, i + 1 :].any(1) if i + 1 < t else torch.zeros_like(arm[:, 0]) for i in range(n_past, t)], 1)
    now = arm[:, n_past:]
    return {"now": now, "past": before & ~now, "future": later & ~now & ~before, "shaft": torch.stack(shaft)[:, n_past:]}


def agreement(t_std: torch.Tensor, m_std: torch.Tensor) -> float:
    """eval's agreement (``physics_eval.std_agreement``) of std maps [B, F, H, W], averaged over
    the sequences whose truths differ somewhere."""
    return float(std_agreement(t_std, m_std).nanmean())


def agreement_by_branching(t_std: torch.Tensor, m_std: torch.Tensor, differ: torch.Tensor,
                           parts: int = 4) -> list[dict[str, float]]:
    """Per-sequence agreement (``std_agreement``) of std maps [B, F, H, W], the sequences whose
    truths differ somewhere split into ``parts`` groups by the share of pixels where they differ
    (``differ`` [B, F, H, W]), fewest first: each group's mean share and mean agreement. Says
    whether the shortfall lies in scenes where the world barely branches (the model's own doubt
    outweighs it there) or where it branches most."""
    per = std_agreement(t_std, m_std)
    share = differ.float().mean((1, 2, 3))
    keep = ~per.isnan()
    per, share = per[keep], share[keep]
    groups = share.argsort().tensor_split(parts)
    return [{"branching_share": round(float(share[g].mean()), 4), "agreement": round(float(per[g].mean()), 3),
             "sequences": len(g)} for g in groups if len(g)]


def captures(model, x: torch.Tensor, c: torch.Tensor, draws: int = 4,
             n_future: int = 10) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """What a flow head mixed the futures from frames ``x`` and conditions ``c`` by, under z seeds
    0..draws-1, one predict each, which ``source_shares``, ``flow_reach`` and ``carry_gate`` all
    read: per draw the previous frame's displacement [N, F, 2, H, W], the mask [N, F, S, H, W]
    and, with ``carry_noise``, ``gate_reading``'s [N, F, 5, H, W] (else None)."""
    extra = gate_reading if model.cfg.carry_noise else None
    return [predict_capturing(model, x, c, n_future, seed, extra)[1:] for seed in range(draws)]


def source_shares(model, seen: list, region: torch.Tensor) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """A flow head's mask over ``region`` [N, F, H, W] in the draws ``seen`` (``captures``): the
    sources' names, their mean share there and the std of each share over the draws, averaged
    over the region [S] each."""
    mask = torch.stack([m for _, m, _ in seen])  # [D, N, F, S, H, W]
    weight = region[:, :, None].float()
    n = weight.sum().clamp_min(1)
    return (model.decoder.head.sources, (mask.mean(0) * weight).sum((0, 1, 3, 4)) / n,
            (mask.std(0) * weight).sum((0, 1, 3, 4)) / n)


def flow_reach(seen: list, regions: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """How far a flow head moves pixels in each of ``regions`` [N, F, H, W] in the first of the
    draws ``seen`` (``captures``; z seed 0, its dead zone and the latent's gain or shift
    applied): the mean displacement length of the moved previous frame there, in pixels, and the
    share of the region it moves by at least 1 px. A pushed object travels up to ~3 px a step; a
    flow that moves it less leaves it for the other sources to redraw or fade."""
    length = seen[0][0].norm(dim=-3)
    reach = {}
    for name, region in regions.items():
        n = region.sum().clamp_min(1)
        reach[name] = {"mean_px": round(float((length * region).sum() / n), 3),
                       "moved_1px": round(float(((length >= 1) & region).sum() / n), 3)}
    return reach


def prior_sigma(model, x: torch.Tensor, c: torch.Tensor, regions: dict[str, torch.Tensor],
                n_future: int = 10) -> dict[str, list[float]]:
    """How much noise a learned map prior lets through in each of ``regions`` [N, F, H, W] (z seed
    0): its sigma per cell, spread over the cell's 8 x 8 pixels, averaged there, for the latent's
    first channel (the one ``noise_flow``, ``noise_shift`` and ``carry_noise`` read) and for the
    others. A prior that learns to switch a channel's noise off where it costs makes a path for
    noise through that channel carry nothing."""
    seen = []
    hook = model.prior_map.register_forward_hook(lambda module, args, out: seen.append(out[1]))
    try:
        with torch.no_grad():
            model.predict(x[:, : model.n_past], c, n_future, seed=0)
    finally:
        hook.remove()
    logvar = noisy_rows(seen, len(x), n_future).view(len(x), n_future, model.cfg.z_map, 8, 8)
    sigma = (0.5 * logvar).exp().repeat_interleave(8, -2).repeat_interleave(8, -1)  # [N, F, C, H, W]
    out = {}
    for name, region in regions.items():
        n = region.sum().clamp_min(1)
        per = (sigma * region[:, :, None]).sum((0, 1, 3, 4)) / n
        out[name] = [round(float(per[0]), 3), round(float(per[1:].mean()), 3) if len(per) > 1 else None]
    return out


def gate_reading(head, args: tuple, kwargs: dict, mask: torch.Tensor, moved_prev: torch.Tensor) -> torch.Tensor:
    """``predict_capturing``'s ``extra`` for ``carry_gate``, per call [N, 5, H, W]: the decoder's
    own logit for the carried motion, the noise added to it, the other sources' log-sum-exp, the
    carried displacement's length and the carried source's mean gap to the moved previous frame."""
    out, k = args[0].float(), head.carry_channel
    others = torch.cat([out[:, head.mask_start : k], out[:, k + 1 :]], 1).logsumexp(1)
    carried = kwargs["carry"](moved_prev, head.carry_share(mask))
    prev = head.previous(args[1]).float()
    gap = (warp(prev, carried, head.resample) - warp(prev, moved_prev, head.resample)).abs().mean(1)
    return torch.stack([out[:, k], kwargs["carry_logit"][:, 0].float(), others, carried.norm(dim=1), gap], 1)


def carry_gate(seen: list, region: torch.Tensor) -> dict[str, float]:
    """Why ``carry_noise``'s path may move nothing: over the draws ``seen`` (``captures``), in
    ``region`` [N, F, H, W], the std of the decoder's own logit for the carried motion, of the
    noise added to it and of their sum, and the slope of the own logit on the noise (-1: the
    decoder cancels the noise it also reads; 0: it leaves it). ``margin``: that logit less the
    log-sum-exp of the other sources', whose mean and share below -4 (where a swing of 1 moves the
    share by under 2%) say whether the gate sits shut. ``carried_px``: the carried displacement's
    length there; ``gap``: how far the carried source's pixels lie from the moved previous frame's
    it would replace, in grey levels (0 to 255): a swing between two near-equal sources shows
    nothing."""
    own, noise, others, length, gap = torch.stack([g for _, _, g in seen]).unbind(3)  # [D, N, F, H, W] each
    w, n = region.float(), region.sum().clamp_min(1)

    def over(v: torch.Tensor) -> float:
        return round(float((v * w).sum() / n), 3)
    d_own, d_noise = own - own.mean(0), noise - noise.mean(0)
    margin = own + noise - others
    return {"own_std": over(own.std(0)), "noise_std": over(noise.std(0)), "sum_std": over((own + noise).std(0)),
            "slope": round(float((d_own * d_noise * w).sum() / (d_noise.square() * w).sum().clamp_min(1e-12)), 3),
            "margin": over(margin.mean(0)), "shut": over((margin < -4).float().mean(0)),
            "carried_px": over(length.mean(0)), "gap": over(255 * gap.mean(0))}


def error_where(noiseless: torch.Tensor, truths: torch.Tensor, m_std: torch.Tensor,
                regions: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """The model's noiseless future [N, 1, F, 3, H, W]'s squared error against the truths' mean
    (the best one prediction there is), its spread ``m_std`` [N, F, H, W] and the share of pixels,
    each split over disjoint ``regions`` (bool [N, F, H, W], covering every pixel); and the RMS
    error there in grey levels. A proper score pays spread where one prediction is wrong, so
    spread that follows the model's own error, not the world's, lies where the first share is
    large and the truths agree."""
    err = (noiseless[:, 0] - truths.mean(1)).pow(2).mean(-3)
    out = {}
    for name, m in regions.items():
        rms = float(((err * m).sum() / m.sum().clamp_min(1)).sqrt() * 255)
        out[name] = [round(float((err * m).sum() / err.sum().clamp_min(1e-12)), 3),
                     round(float((m_std * m).sum() / m_std.sum().clamp_min(1e-12)), 3),
                     round(float(m.float().mean()), 3), round(rms, 1)]
    return out


def sheet(last: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor, noiseless: torch.Tensor,
          t_std: torch.Tensor, m_std: torch.Tensor) -> np.ndarray:
    """One row uint8 [64, 384, 3]: frames [3, H, W] and std maps [H, W] (x 4, so 64 grey levels is white)."""
    def rgb(f: torch.Tensor) -> np.ndarray:
        return (f.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)

    def grey(s: torch.Tensor) -> np.ndarray:
        return np.repeat((np.clip(s.numpy() * 4, 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)
    return np.concatenate([rgb(last), rgb(truth), rgb(pred), rgb(noiseless), grey(t_std), grey(m_std)], 1)


def main() -> None:
    p = checkpoints_parser(__doc__, 32)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--truths", type=int, default=10)
    p.add_argument("--sheet", default="", help="a PNG of std maps (one per checkpoint: a suffix is added after the first)")
    p.add_argument("--seqs", default="0,1,4,5,10", help="the sheet's sequences, among the first --limit")
    p.add_argument("--mask-temperature", type=float, default=None,
                   help="the flow head's mask logits x this (the model's mask_temperature; default its own)")
    args = p.parse_args()
    x, c = test_sequences(args.data, 12, args.limit)
    _, found = uncertain_test_set(args.data, args.limit)
    n, n_past = len(found), 2
    arm = arm_masks(found, c)
    swept = arm.any(1)
    truths = true_futures_of_each(found, c, args.truths)[:, :, n_past:]
    t_std, differ = pixel_std(truths, 1), branching(truths, 1)  # [N, F, H, W]
    arm_only = swept[:, None] & ~differ
    phases = arm_phases(arm, found, c, n_past)
    print(f"{100 * float((differ & swept[:, None]).sum() / differ.sum().clamp_min(1)):.0f}% of the pixels where "
          "the truths branch lie where the arm sweeps")
    for k, ckpt in enumerate(args.ckpt):
        model, _ = checkpoint.load_model(ckpt, "cpu")
        if args.mask_temperature is not None:  # the field export sets, here without a copy, checked as export checks it
            try:
                model.cfg = replace(model.cfg, mask_temperature=args.mask_temperature).validate()
            except ConfigError as err:
                raise SystemExit(f"{ckpt}: {err}") from None
            model.decoder.head.temperature = model.cfg.mask_temperature
        pred = model.predict(x[:, :n_past], c, 10, n_samples=args.samples, seed=0)
        m_std = pixel_std(pred, 1)
        total = m_std.sum().clamp_min(1e-12)
        on_branch, on_arm = float((m_std * differ).sum() / total), float((m_std * arm_only).sum() / total)
        agree, agree_off = agreement(t_std, m_std), agreement(t_std, m_std * ~arm_only)
        print(f"{ckpt} ({n} test sequences, {args.samples} samples, {args.truths} truths): of its spread, "
              f"{100 * on_branch:.0f}% where the truths branch, {100 * on_arm:.0f}% where the arm sweeps and the "
              f"truths agree ({100 * float(arm_only.float().mean()):.1f}% of the pixels), "
              f"{100 * (1 - on_branch - on_arm):.0f}% elsewhere; agreement {agree:.3f}, "
              f"{agree_off:.3f} without the spread where the arm sweeps and the truths agree (the truths "
              "choose those pixels: calming every swept pixel is bench/branch_gate.py --swept)")
        by_branching = agreement_by_branching(t_std, m_std, differ)
        print("  agreement by the share of pixels where the truths branch, in quarters of the sequences, fewest "
              "first: " + ", ".join(f"{100 * q['branching_share']:.1f}% {q['agreement']:.3f}" for q in by_branching))
        agree_mask = {name: m & ~differ for name, m in phases.items() if name != "shaft"}
        phase = {name: [round(float((m_std * m).sum() / total), 3), round(agreement(t_std, m_std * ~m), 3)]
                 for name, m in agree_mask.items()}
        anywhere = agree_mask["now"] | agree_mask["past"] | agree_mask["future"]  # disjoint: the shares add
        phase["all three"] = [round(sum(v[0] for v in phase.values()), 3), round(agreement(t_std, m_std * ~anywhere), 3)]
        gated = phases["shaft"] | phases["past"]
        phase["shaft now or past, truths or not"] = [round(float((m_std * gated).sum() / total), 3),
                                                     round(agreement(t_std, m_std * ~gated), 3)]
        print("  where the truths agree and the arm is now / has been / comes later / any of these: share of its "
              "spread, agreement without it: " + ", ".join(f"{a:.2f}, {b:.3f}" for a, b in list(phase.values())[:4])
              + "; without all its spread on the shaft now (1 px wider, off the gripper) or where the arm has been, "
              f"which the condition alone says: {phase['shaft now or past, truths or not'][0]:.2f}, "
              f"{phase['shaft now or past, truths or not'][1]:.3f}")
        noiseless = mean_future(model, x, c, 10)
        calmed = {}
        for name, gate in (("as drawn", None), ("shaft calmed", phases["shaft"])):
            drawn = pred if gate is None else torch.where(gate[:, None, :, None], noiseless, pred)
            scores = summarize({key: [v] for key, v in spread_scores(drawn, truths, x[:, n_past - 1]).items()})
            calmed[name] = [round(scores["coverage_psnr"] - scores["one_sample_psnr"], 3), round(scores["spread_ratio"], 3)]
        print("  coverage - one sample and the spread ratio, as drawn / with each sample's shaft now (as above) "
              "taken from the noiseless future afterwards: " + " / ".join(f"{a:+.2f}, {b:.2f}" for a, b in calmed.values()))
        phase["coverage, ratio"] = calmed
        truth_edges = edge_energy(truths, differ[:, None]).mean(1).sum().clamp_min(1e-12)
        edges = {name: round(float(edge_energy(f, differ[:, None]).mean(1).sum() / truth_edges), 3) for name, f in
                 (("sample", pred), ("noiseless future", noiseless), ("truths' mean", truths.mean(1, keepdim=True)))}
        print("  where the truths branch, squared edges over a true future's: "
              + ", ".join(f"{name} {v:.2f}" for name, v in edges.items()))
        now, past, later = (agree_mask[name] for name in ("now", "past", "future"))
        errors = error_where(noiseless, truths, m_std, {"branching": differ, "arm now": now, "arm past": past,
                                                        "arm later": later, "elsewhere": ~(differ | now | past | later)})
        print("  the noiseless future's squared error against the truths' mean / the spread / the pixels, shares, and "
              "that error's RMS, where the truths branch, and where they agree and the arm is now / has been / comes "
              "later / elsewhere: " + ", ".join(f"{name} {e:.2f} / {sp:.2f} / {px:.3f}, {rms:.1f} grey levels"
                                                for name, (e, sp, px, rms) in errors.items()))
        sources, branch_sources, reach, gate = {}, {}, {}, {}
        if model.cfg.output == "flow":
            off_arm = differ & ~swept[:, None]
            seen = captures(model, x, c)
            for where, region, out in (("where the arm sweeps and the truths agree", arm_only, sources),
                                       ("where the truths branch off the arm", off_arm, branch_sources)):
                names, share, wobble = source_shares(model, seen, region)
                out.update({name: [round(float(a), 3), round(float(b), 3)] for name, a, b in zip(names, share, wobble)})
                print(f"  {where}, the mask's mean share / its std over {len(seen)} z draws: "
                      + ", ".join(f"{name} {a:.3f} / {b:.3f}" for name, (a, b) in out.items()))
            reach = flow_reach(seen, {"branching off the arm": off_arm, "arm swept": arm_only})
            print("  the moved previous frame's flow, mean length / share moved >= 1 px: "
                  + ", ".join(f"{name} {r['mean_px']:.2f} px / {r['moved_1px']:.2f}" for name, r in reach.items()))
            if model.cfg.carry_noise:
                gate = carry_gate(seen, off_arm)
                print(f"  where the truths branch off the arm, the carried motion's logit over {len(seen)} z draws: std "
                      f"of the decoder's own {gate['own_std']:.3f}, of the noise {gate['noise_std']:.3f}, of their sum "
                      f"{gate['sum_std']:.3f}; slope of own on noise {gate['slope']:+.2f}; margin over the other "
                      f"sources {gate['margin']:.2f}, below -4 on {100 * gate['shut']:.0f}%; the carried "
                      f"displacement {gate['carried_px']:.2f} px, its source {gate['gap']:.1f} grey levels from the "
                      "moved previous frame's")
        sigma = {}
        if model.prior_map is not None:
            sigma = prior_sigma(model, x, c, {"branching off the arm": differ & ~swept[:, None], "arm swept": arm_only,
                                              "elsewhere": ~differ & ~swept[:, None]})
            print("  the learned map prior's sigma, the latent's first channel / the others: "
                  + ", ".join(f"{name} {a:.3f} / {'-' if b is None else f'{b:.3f}'}" for name, (a, b) in sigma.items()))
        record("spread_where", torch.device("cpu"), ckpt=ckpt, limit=n, samples=args.samples, truths=args.truths,
               mask_temperature=model.cfg.mask_temperature,
               where_branching=round(on_branch, 3), where_arm_sweeps=round(on_arm, 3),
               agreement=round(agree, 3), agreement_without_arm=round(agree_off, 3), sources_on_arm=sources,
               sources_branching=branch_sources, flow_reach=reach, prior_sigma=sigma, carry_gate=gate,
               edges_where_branching=edges, arm_phases=phase, error_where=errors, agreement_by_branching=by_branching)
        if args.sheet:
            from PIL import Image

            rows = [sheet(x[i, n_past - 1], truths[i, 0, -1], pred[i, 0, -1], noiseless[i, 0, -1], t_std[i].amax(0),
                          m_std[i].amax(0))
                    for i in (int(s) for s in args.seqs.split(","))]
            out = args.sheet if k == 0 else args.sheet.replace(".png", f"_{k}.png")
            img = np.concatenate(rows, 0)
            Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(out)
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
