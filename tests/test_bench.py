"""The benchmark scripts: their user-facing edges, and the geometry they measure with."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_sweep_report_names_a_missing_eval_json(tmp_path):
    missing = tmp_path / "run" / "last" / "eval" / "eval.json"
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep.py"), "--report", str(missing)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and f"no eval.json at {missing}" in out.stderr and "Traceback" not in out.stderr


def _bench(name: str):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def _arm_bench():
    return _bench("arm")


def test_the_branch_gate_keeps_samples_only_where_the_truths_differ():
    """Truths branching at one pixel only: a gated sample is the mean future everywhere else,
    itself there, and with the gate widened by 1 px, itself in that pixel's 3 x 3 too."""
    import torch

    truths = torch.zeros(1, 2, 1, 3, 8, 8)
    truths[0, 1, 0, :, 4, 4] = 1.0
    mean = torch.full((1, 1, 1, 3, 8, 8), 0.5)
    samples = torch.rand(1, 3, 1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gate = _bench("branch_gate").gate
    out = gate(samples, mean, truths, 0)
    assert torch.equal(out[..., 4, 4], samples[..., 4, 4])
    kept = torch.zeros(8, 8, dtype=torch.bool)
    kept[4, 4] = True
    assert (out[..., ~kept] == 0.5).all()
    wide = gate(samples, mean, truths, 1)
    assert torch.equal(wide[..., 3:6, 3:6], samples[..., 3:6, 3:6]) and wide[..., 2, 2].eq(0.5).all()


def test_the_reach_gate_keeps_the_pixels_near_where_the_gripper_has_been_by_each_step():
    """The end effector at pixel centre (20.5, 30.5) through the context and the first future
    step, then at (40.5, 30.5): at future step 0 only the pixels within R px of the first place
    are kept, from step 1 on those of both places, and nothing 9 px or more from either."""
    import numpy as np
    import torch

    from cvae.condition import XY
    from cvae.kinematics import px_to_world

    c = torch.zeros(1, 5, 7)
    places = np.array([[20.5, 30.5]] * 3 + [[40.5, 30.5]] * 2)
    c[0, :, XY] = torch.from_numpy(px_to_world(places)).float()
    g = _bench("branch_gate").reach(c, 2, 3, 4.0)
    assert g.shape == (1, 3, 64, 64)
    assert g[0, 0, 30, 20] == 1 and g[0, 0, 30, 24] == 1 and g[0, 0, 30, 25] == 0 and g[0, 0, 30, 40] == 0
    assert g[0, 1, 30, 40] == 1 and g[0, 2, 30, 20] == 1 and g[0, 2, 30, 30] == 0
    assert g[0, 1, 30, 44] == 1 and g[0, 1, 30, 45] == 0 and g[0, 1, 21, 30] == 0


def test_the_ramp_keeps_a_growing_share_over_the_steps():
    import torch

    ramp = _bench("branch_gate").ramp
    torch.testing.assert_close(ramp(4, 1.0), torch.tensor([0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(ramp(4, 2.0), torch.tensor([0.0625, 0.25, 0.5625, 1.0]))
    assert ramp(4, 0.0).eq(1).all()


def test_the_arm_gate_calms_the_arms_pixels_at_each_future_step_only():
    """The arm on one pixel in the last context frame and another in the first future step:
    the gate is 0 at the second at step 0 only (its 3 x 3 square widened by 1 px), and 1 at the
    first, where the arm was only in the context."""
    import torch

    arm = torch.zeros(1, 4, 8, 8, dtype=torch.bool)
    arm[0, 1, 1, 1] = True
    arm[0, 2, 5, 5] = True
    off_arm = _bench("branch_gate").off_arm
    g = off_arm(arm, 2, 0)
    assert g.shape == (1, 2, 8, 8) and g[0, 0, 5, 5] == 0 and g.sum() == 2 * 64 - 1
    wide = off_arm(arm, 2, 1)
    assert wide[0, 0, 4:7, 4:7].eq(0).all() and wide[0, 0].sum() == 64 - 9 and wide[0, 1].eq(1).all()


def test_the_self_gate_is_the_samples_own_std_map_over_its_peak_to_a_power():
    """Two samples 0.4 apart at one pixel (std 0.2) and 0.2 apart at the other (std 0.1): the
    gate is 1 and 0.5 at power 1, 1 and 0.25 at power 2; 1 everywhere at power 0."""
    import torch

    samples = torch.zeros(1, 2, 1, 3, 1, 2)
    samples[0, 0, 0, :, 0] = torch.tensor([0.7, 0.6])
    samples[0, 1, 0, :, 0] = torch.tensor([0.3, 0.4])
    self_gate = _bench("branch_gate").self_gate
    torch.testing.assert_close(self_gate(samples, 1.0), torch.tensor([[[[1.0, 0.5]]]]))
    torch.testing.assert_close(self_gate(samples, 2.0), torch.tensor([[[[1.0, 0.25]]]]))
    assert self_gate(samples, 0.0).eq(1).all()


def test_antithetic_noise_pairs_each_draw_with_its_negation_and_keeps_an_odd_last_one():
    """Five draws: rows 2 and 3 become minus rows 0 and 1, rows 0, 1 and 4 stay, and the draws
    passed in are not changed (``SVG._noise`` returns an expanded view)."""
    import torch

    noise = torch.arange(10.0).view(5, 1, 2)
    out = _bench("antithetic").antithetic(noise)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1]], [[2, 3]], [[-0.0, -1]], [[-2, -3]], [[8, 9]]]))
    assert noise[2, 0, 0] == 4


def test_stratified_noise_puts_one_value_in_each_slice_and_each_row_stays_a_standard_normal():
    """Ten draws of 20,000 coordinates: in every coordinate the ten values fall one in each tenth
    of the normal's probability; row 0 alone, over the coordinates, has the normal's mean, std and
    tails; muted (zero) coordinates stay zero; the same generator seed gives the same draws."""
    import torch

    stratified = _bench("coupled_draws").stratified
    noise = torch.randn(10, 20_000, generator=torch.Generator().manual_seed(1))
    noise[:, :5] = 0
    out = stratified(noise, torch.Generator().manual_seed(2))
    assert out[:, :5].eq(0).all()
    slices = (torch.special.ndtr(out[:, 5:]) * 10).floor().long()
    assert slices.sort(0).values.eq(torch.arange(10)[:, None]).all()
    row = out[0, 5:]
    assert abs(row.mean()) < 0.03 and abs(row.std() - 1) < 0.02 and abs(row.abs().gt(1.96).float().mean() - 0.05) < 0.006
    assert out[:, 5:].std(0).mean() > noise[:, 5:].std(0).mean() + 0.03  # the ten cover the normal more evenly
    torch.testing.assert_close(out, stratified(noise, torch.Generator().manual_seed(2)))


def test_a_tally_gives_best_of_n_itself_beside_its_margin_over_the_one_sample():
    """Against a black recorded future, sample 0 off by 0.1 everywhere (20 dB) and sample 1 by
    0.01 (40 dB): the one sample 20, best of 2 40 and the margin +20, and ``describe`` prints both,
    since a margin also grows when only the one sample gets worse."""
    import torch

    branch_gate = _bench("branch_gate")
    future = torch.zeros(1, 2, 3, 16, 16)
    samples = torch.stack([torch.full_like(future, 0.1), torch.full_like(future, 0.01)], 1)
    truths = torch.zeros(1, 3, 2, 3, 16, 16)
    truths[:, 1:, :, :, 4:8, 4:8] = 0.5
    tally = branch_gate.Tally()
    tally.add(samples, truths, torch.zeros(1, 3, 16, 16), future)
    row = tally.row()
    assert row["one_sample"] == pytest.approx(20, abs=1e-3) and row["best_of_n"] == pytest.approx(40, abs=1e-3)
    assert row["best_minus_one"] == pytest.approx(20, abs=1e-3)
    assert "best of 2 40.00 (+20.00)" in branch_gate.describe(row, 2)


def test_latent_widen_scales_each_cells_noise_by_the_heads_map_over_the_models():
    """The head says 3x the model's std in one 8 x 8 px cell and 0.1x elsewhere: at gain 2 that
    cell's noise is x 4 (6, capped), the others x base 0.7, in every map channel, and the vector
    part x 1; with a 3 x 3 hood the cell's neighbours take its largest head map too."""
    import torch

    from cvae.model.vgg64 import MAP_SIZE

    cell_scale = _bench("latent_widen").cell_scale
    m = torch.full((1, 2, 64, 64), 0.1)
    w = 0.1 * m
    w[..., 8:16, 16:24] = 3 * m[..., 8:16, 16:24]
    out = cell_scale(w, m, 3, 2, 2.0, 0.7, 1)
    cells = out[0, 3:].view(2, MAP_SIZE, MAP_SIZE)
    assert out.shape == (1, 3 + 2 * MAP_SIZE**2) and out[0, :3].eq(1).all()
    assert cells[:, 1, 2].eq(4).all() and (cells.sum() - 8) == pytest.approx(0.7 * (2 * MAP_SIZE**2 - 2))
    hood = cell_scale(w, m, 3, 2, 2.0, 0.7, 3)[0, 3:].view(2, MAP_SIZE, MAP_SIZE)
    assert hood[:, 0:3, 1:4].eq(4).all() and hood[:, 4:].eq(0.7).all()


def test_noise_channels_scales_each_map_channels_cells_and_leaves_the_vector_part():
    """A latent of 2 vector entries and 2 map channels of MAP_SIZE^2 cells: channel 0 x 0,
    channel 1 x 3, the vector part as it was, the noise passed in unchanged; scales that do not
    fit the latent are refused with both sizes."""
    import torch

    from cvae.model.vgg64 import MAP_SIZE

    bench = _bench("noise_channels")
    cells = MAP_SIZE * MAP_SIZE
    noise = torch.ones(3, 1, 2 + 2 * cells).expand(3, 4, -1)
    out = bench.scale_channels(noise, 2, (0.0, 3.0))
    assert out.shape == noise.shape and out[..., :2].eq(1).all()
    assert out[..., 2 : 2 + cells].eq(0).all() and out[..., 2 + cells :].eq(3).all() and noise.eq(1).all()
    with pytest.raises(SystemExit, match=f"3 scales for a latent of {2 + 2 * cells}"):
        bench.scale_channels(noise, 2, (1.0, 1.0, 1.0))


def test_the_spread_heads_factor_moves_the_std_map_toward_the_fitted_one_and_stops_at_4():
    """Own std 0.1, fitted 0.2: half way (L 0.5) keeps 0.5 x 2 + 0.5 = 1.5 of a departure, the
    geometric P 0.5 sqrt(2); all the way to a fitted 1.0 from 0.01 would be x 100, held at x 4;
    a fitted 0 at L 1 calms the pixel, and ``up`` keeps it as it was (it only widens)."""
    import torch

    factor = _bench("spread_head").factor
    m = torch.tensor([0.1, 0.01, 0.1])
    w = torch.tensor([0.2, 1.0, 0.0])
    torch.testing.assert_close(factor(w, m, "lin", 0.5), torch.tensor([1.5, 4.0, 0.5]))
    torch.testing.assert_close(factor(w, m, "lin", 1.0), torch.tensor([2.0, 4.0, 0.0]))
    torch.testing.assert_close(factor(w[:1], m[:1], "pow", 0.5), torch.tensor([2 ** 0.5]))
    torch.testing.assert_close(factor(w, m, "up", 0.5), torch.tensor([1.5, 4.0, 1.0]))


def test_the_ensemble_gate_keeps_samples_only_where_two_runs_mean_futures_agree():
    """Two mean futures 10 grey levels apart in one channel of one pixel: within 8 grey levels
    they agree everywhere but that pixel's 3 x 3 square, within 16 everywhere."""
    import torch

    mean = torch.full((1, 1, 2, 3, 8, 8), 0.5)
    other = mean.clone()
    other[0, 0, 1, 2, 4, 4] += 10 / 255
    agreed = _bench("branch_gate").agreed
    near = agreed(mean, other, 8)
    assert near.shape == (1, 2, 8, 8) and near[0, 0].eq(1).all()
    assert near[0, 1, 3:6, 3:6].eq(0).all() and near[0, 1].sum() == 64 - 9
    assert agreed(mean, other, 16).eq(1).all()


def test_the_learned_gate_finds_branching_it_can_see():
    """Frames where the truths branch exactly where the mean future moves off the last context
    frame: after 150 steps the fitted classifier says so, near 1 there and near 0 elsewhere, on
    frames it has not seen; and the moving gate keeps a sample whole there and the mean elsewhere."""
    import torch

    bg = _bench("branch_gate")
    gen = torch.Generator().manual_seed(0)

    def frames(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        last = torch.rand(n, 3, 8, 8, generator=gen)
        moved = torch.rand(n, 1, 10, 1, 8, 8, generator=gen) < 0.2
        mean = torch.where(moved, (last[:, None, None] + 0.5) % 1, last[:, None, None])  # 0.5 off where moved
        return last, mean, moved[:, 0, :, 0]

    last, mean, moved = frames(16)
    net = bg.fit_classifier(bg.features(last, mean[:, 0]).flatten(0, 1), moved.flatten(0, 1), 150)
    last, mean, moved = frames(4)
    with torch.no_grad():
        p = torch.sigmoid(net(bg.features(last, mean[:, 0]).flatten(0, 1))).view_as(moved.float())
    assert p[moved].mean() > 0.8 and p[~moved].mean() < 0.2
    samples = torch.rand(4, 3, 10, 3, 8, 8, generator=gen)
    out = bg.mix(samples, mean, bg.widened(bg.moving_mask(mean[:, 0], last[:, None]), 0))
    keep = moved[:, None, :, None].expand_as(samples)
    assert torch.allclose(out[keep], samples[keep]) and torch.equal(out[~keep], mean.expand_as(samples)[~keep])


def test_the_shaft_mask_covers_the_arm_the_simulator_draws():
    """``Sequence.arm_base`` and the mask agree with the pixels: in 8 scenes, the shaft's pixels
    are the arm's dark grey, and the mask holds a bar's worth of them."""
    import numpy as np

    from cvae.data.simulator import simulate
    from cvae.kinematics import world_to_px

    arm = _arm_bench()
    for index in range(8):
        seq = simulate(3, index, 0, n_frames=2)
        mask = arm.shaft_mask(seq.arm_base, world_to_px(seq.positions[:, :2].astype(np.float64)))[0]
        dark = seq.frames[0][mask].max(-1) <= 125
        assert mask.sum() >= 20 and dark.mean() > 0.8, (index, mask.sum(), dark.mean())


def test_a_gripper_is_lost_where_the_model_is_no_better_than_copy_last_there():
    """``gripper_kept``: the truth itself keeps every gripper; a model no better than copy-last
    (here: copy-last itself) loses it in each sequence that moves, and in no other."""
    import numpy as np
    import torch

    bench = _bench("gripper_kept")
    truth = torch.rand(3, 2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    centres = np.array([[[20.5, 20.5]] * 2, [[40.5, 30.5]] * 2, [[10.5, 50.5]] * 2])
    copy = bench.end_windows(truth[:, :1].expand_as(truth).roll(7, -1), truth, centres)  # another frame's pixels
    perfect = bench.end_windows(truth + 1e-3, truth, centres)
    moved = torch.tensor([True, True, False])
    assert not bench.lost(perfect, copy, moved, 3.0).any()
    assert bench.lost(copy, copy, moved, 3.0).tolist() == [True, True, False]
    assert torch.allclose(perfect, torch.full((3,), 60.0), atol=0.01)  # 10 log10(1 / 1e-6)


def test_gripper_kept_reports_the_mask_on_the_grippers_own_pixels(tmp_path, sim_root, responsive_runs):
    """``gripper_kept`` end to end on a flow head: each source's share of the mask on the
    gripper's own pixels, mean and std over the seeds, recorded beside the window's counts; the
    shares add up to 1."""
    import json
    import os

    results = tmp_path / "results.jsonl"
    out = subprocess.run([sys.executable, "gripper_kept.py", "--ckpt", str(responsive_runs / "responsive" / "best"),
                          "--data", str(sim_root), "--limit", "4", "--samples", "2", "--moved", "0"],
                         capture_output=True, text=True, cwd=ROOT / "bench",
                         env={**os.environ, "BENCH_RESULTS": str(results), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "the mask's share on its own pixels" in out.stdout and "on its own pixels (within 2 px)" in out.stdout
    row = json.loads(results.read_text())
    assert set(row["own_mask_shares"]) >= {"generated", "moved previous", "moved latest real"}
    assert sum(m for m, _ in row["own_mask_shares"].values()) == pytest.approx(1, abs=0.01)
    assert len(row["own_lost_per_seed"]) == 2 and row["sequences"] > 0


def test_the_grippers_own_pixels_are_those_within_two_px_of_the_end_effector():
    """``gripper_kept.end_windows(own=True)``: a frame wrong only on the 9x9 window's ring beyond
    2 px of the end effector keeps its own pixels exact (60 dB at a 1e-3 error) while the window
    drops; one wrong on a pixel 1 px from it loses them."""
    import numpy as np
    import torch

    bench = _bench("gripper_kept")
    truth = torch.full((1, 1, 3, 64, 64), 0.5)
    centre = np.array([[[20.5, 30.5]]])  # (col, row): the centre of pixel row 30, column 20
    ring = truth + 1e-3
    ring[..., 30, 23] = 1.0  # 3 px right of the centre: in the window, not its own
    assert torch.allclose(bench.end_windows(ring, truth, centre, own=True), torch.tensor([60.0]), atol=0.01)
    assert bench.end_windows(ring, truth, centre) < 30
    near = truth + 1e-3
    near[..., 29, 20] = 1.0  # 1 px above it
    assert bench.end_windows(near, truth, centre, own=True) < 20


def test_the_swept_region_is_every_place_of_the_arm_and_agreement_is_evals():
    """``spread_where``: the arm's swept pixels are the union of its shaft and gripper over the
    steps (a bar from the base to each end-effector place), nothing far from them; its agreement
    is 1 for a model whose std map is the truths', and leaves out a sequence whose truths agree."""
    import numpy as np
    import torch

    from cvae.metrics import correlation

    bench = _bench("spread_where")
    swept = bench.swept_mask(np.array([0.5, 32.5]), np.array([[32.5, 32.5], [32.5, 50.5]]))
    for x, y in ((16, 32), (16, 41), (32, 32), (32, 50), (35, 50)):
        assert swept[y, x], (x, y)
    assert not swept[5, 50] and not swept[60, 5] and not swept[46, 10]
    t_std = torch.zeros(2, 1, 4, 4)
    t_std[0, 0, 1, 1], t_std[0, 0, 2, 3] = 0.3, 0.1
    assert bench.agreement(t_std, t_std * 2) == 1.0
    m_std = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert bench.agreement(t_std, m_std) == float(correlation(t_std[0, 0], m_std[0, 0]))


def test_the_source_shares_are_a_flow_heads_mask_over_the_region():
    """``spread_where.source_shares``: one share per source, named, summing to 1 over a region
    (the mask is a softmax), each between 0 and 1."""
    import torch

    from cvae.model import SVG

    bench = _bench("spread_where")
    model = SVG(g_dim=16, z_dim=4, rnn_size=16, width=0.125, prior="learned", output="flow", ee_maps=True).eval()
    x, c = torch.rand(2, 5, 3, 64, 64), torch.randn(2, 5, 7) * 0.1
    region = torch.zeros(2, 3, 64, 64, dtype=torch.bool)
    region[:, :, 10:20, 30:40] = True
    names, share, wobble = bench.source_shares(model, bench.captures(model, x, c, draws=2, n_future=3), region)
    assert names[:3] == ["generated", "moved previous", "moved latest real"] and len(names) == len(share)
    assert abs(float(share.sum()) - 1) < 1e-5 and ((share >= 0) & (share <= 1)).all() and (wobble >= 0).all()


def test_the_flow_reach_is_the_moved_previous_frames_displacement_over_the_region():
    """``spread_where.flow_reach``: a flow head whose last layer draws the moved previous frame's
    displacement (3, 4) at every pixel moves every region by 5 px, all of it by at least 1 px; with
    a 6 px dead zone by nothing; an empty region scores 0, not NaN."""
    import torch

    from cvae.model import SVG

    bench = _bench("spread_where")
    model = SVG(g_dim=16, z_dim=4, rnn_size=16, width=0.125, prior="learned", output="flow", ee_maps=True).eval()
    last = model.decoder.upc5[1]
    with torch.no_grad():
        last.weight[:, 3:5] = 0
        last.bias[3:5] = torch.tensor([3.0, 4.0])
    x, c = torch.rand(2, 5, 3, 64, 64), torch.randn(2, 5, 7) * 0.1
    region = torch.zeros(2, 3, 64, 64, dtype=torch.bool)
    region[:, :, 10:20, 30:40] = True
    regions = {"square": region, "none": torch.zeros_like(region)}
    assert bench.flow_reach(bench.captures(model, x, c, draws=1, n_future=3), regions) == {
        "square": {"mean_px": 5.0, "moved_1px": 1.0}, "none": {"mean_px": 0.0, "moved_1px": 0.0}}
    model.decoder.head.deadzone = 6.0
    reach = bench.flow_reach(bench.captures(model, x, c, draws=1, n_future=3), regions)
    assert reach["square"] == {"mean_px": 0.0, "moved_1px": 0.0}


def test_the_prior_sigma_is_the_learned_map_priors_noise_per_channel_over_the_region():
    """``spread_where.prior_sigma``: a map prior whose last layer draws log-variance 2 log 0.5 for
    the latent's first channel and 0 for its second lets through sigma 0.5 and 1 over any region,
    and 0.25 of the first where one cell's is lowered to 0.25 and the region is that cell."""
    import math

    import torch

    from cvae.model import SVG

    bench = _bench("spread_where")
    model = SVG(g_dim=16, z_dim=4, rnn_size=16, width=0.125, prior="learned", output="flow", ee_maps=True,
                z_map=2, map_prior=True).eval()
    last = model.prior_map.net[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 2 * math.log(0.5), 0.0]))  # mu of both channels, then their logvar
    x, c = torch.rand(2, 5, 3, 64, 64), torch.randn(2, 5, 7) * 0.1
    region = torch.zeros(2, 3, 64, 64, dtype=torch.bool)
    region[:, :, 10:20, 30:40] = True
    assert bench.prior_sigma(model, x, c, {"square": region}, n_future=3) == {"square": [0.5, 1.0]}
    def lower(module, args, out) -> None:
        out[:, 2, 1, 3] = 2 * math.log(0.25)

    hook = model.prior_map.net.register_forward_hook(lower)
    cell = torch.zeros_like(region)
    cell[:, :, 8:16, 24:32] = True  # the cell at row 1, column 3
    assert bench.prior_sigma(model, x, c, {"cell": cell}, n_future=3)["cell"][0] == 0.25
    hook.remove()
    # with arm_calm each scene's noiseless row comes first, beside its sampled one: rows 1 and 3 are read
    calm = SVG(g_dim=16, z_dim=4, rnn_size=16, width=0.125, prior="learned", output="flow", cond_maps=True,
               ee_maps=True, arm_copy=True, arm_calm=True, z_map=2, map_prior=True).eval()

    def by_row(module, args, out) -> None:
        out[:, 2] = 2 * torch.log(0.1 * torch.arange(1.0, len(out) + 1))[:, None, None]

    calm.prior_map.net.register_forward_hook(by_row)
    scene = torch.zeros_like(region)
    scene[1] = True
    sigma = bench.prior_sigma(calm, x, c, {"first": ~scene, "second": scene}, n_future=3)
    assert sigma["first"][0] == 0.2 and sigma["second"][0] == 0.4


def test_the_carry_gate_splits_the_carried_motions_logit_into_the_decoders_own_and_the_noise():
    """``spread_where.carry_gate``: a decoder whose own carry logit is constant ignores the noise
    (slope 0, its std 0, the sum's the noise's); one that writes 1 minus the noise cancels it
    (slope -1, the sum still), and with every other mask logit 0 its margin is 1 - log(others).
    ``source_shares`` reads the mask as the head mixed by it, the noise in: the carried share
    swings over z draws in the first, and in the second is e / (e + others) at every draw. With
    the previous frame moved (3, 4) px everywhere (from the context on), 5 px are carried, and
    the carried source is the moved frame itself: no gap, where the random decoder's had one."""
    import math

    import torch

    from cvae.model import SVG

    bench = _bench("spread_where")
    model = SVG(g_dim=16, z_dim=4, rnn_size=16, width=0.125, prior="learned", output="flow", ee_maps=True,
                z_map=2, map_prior=True, flow_carry=True, carry_noise=2.0).eval()
    head, k = model.decoder.head, model.decoder.head.carry_channel
    last = model.decoder.upc5[1]
    with torch.no_grad():
        last.weight[:, k] = 0
        last.bias[k] = 0.5
    x, c = torch.rand(2, 5, 3, 64, 64), torch.randn(2, 5, 7) * 0.1
    region = torch.zeros(2, 3, 64, 64, dtype=torch.bool)
    region[:, :, 10:20, 30:40] = True
    ignored = bench.carry_gate(bench.captures(model, x, c, draws=3, n_future=3), region)
    assert ignored["own_std"] == 0 and ignored["slope"] == 0 and ignored["noise_std"] > 0.1
    assert ignored["sum_std"] == ignored["noise_std"]
    carried = head.sources.index("flow_carry")

    def others_zero(module, args, kwargs):
        out = args[0].clone()
        out[:, head.mask_start : k] = 0
        out[:, k + 1 :] = 0
        return (out, *args[1:]), kwargs

    hook = head.register_forward_pre_hook(others_zero, with_kwargs=True)
    assert bench.source_shares(model, bench.captures(model, x, c, draws=3, n_future=3), region)[2][carried] > 0.05
    hook.remove()

    def cancel(module, args, kwargs):
        out = args[0].clone()
        out[:, head.mask_start :] = 0
        out[:, k] = 1 - kwargs["carry_logit"][:, 0]
        return (out, *args[1:]), kwargs

    head.register_forward_pre_hook(cancel, with_kwargs=True)
    cancelled = bench.carry_gate(bench.captures(model, x, c, draws=3, n_future=3), region)
    assert cancelled["slope"] == -1 and cancelled["sum_std"] == 0 and cancelled["own_std"] == cancelled["noise_std"]
    others = len(head.sources) - 1
    assert cancelled["margin"] == round(1 - math.log(others), 3) and cancelled["shut"] == 0
    _, share, wobble = bench.source_shares(model, bench.captures(model, x, c, draws=3, n_future=3), region)
    assert abs(float(share[carried]) - math.e / (math.e + others)) < 1e-5 and float(wobble[carried]) < 1e-5
    with torch.no_grad():  # the previous frame moved by (3, 4) px everywhere, carried on from the context
        last.weight[:, head.nc : head.nc + 2] = 0
        last.bias[head.nc : head.nc + 2] = torch.tensor([3.0, 4.0])
    moved = bench.carry_gate(bench.captures(model, x, c, draws=2, n_future=3), region)
    assert moved["carried_px"] == 5 and moved["gap"] == 0 < cancelled["gap"]  # carried as moved: the same pixels


def test_the_rigid_push_probe_scores_only_its_region():
    """``rigid_push.errors`` sums the squared error over the region alone, per prediction, truth
    and step, and ``db`` pools it: off by 0.1 on the region and by 1 outside it is 20 dB."""
    import torch

    rigid = _bench("rigid_push")
    truths = torch.zeros(1, 2, 3, 3, 4, 4)
    region = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    region[:, :, :2] = True
    pred = torch.where(region[:, None, :, None], 0.1, 1.0).expand(1, 1, 3, 3, 4, 4)
    err = rigid.errors(pred, truths, region)
    assert err.shape == (1, 1, 2, 3) and torch.allclose(err, torch.full_like(err, 8 * 0.01))
    count = region.float().sum((-2, -1))[:, None].expand(-1, 2, -1)
    assert rigid.db(err[:, 0], count) == 20.0


def test_the_carry_gain_probe_lengthens_every_carried_displacement_and_refuses_a_model_without(
        tmp_path, responsive_runs):
    """``carry_gain.gained``: inside it ``heads.carried`` gives G times the plain field, after it
    the plain field again; the script refuses, by name, a checkpoint whose flow head carries no
    motion on (the `cpu` preset's), before copying anything."""
    import torch

    from cvae.model import heads

    bench = _bench("carry_gain")
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0, 2:4, 2:4] = 1.5
    plain = heads.carried(flow)
    assert plain.abs().sum() > 0
    with bench.gained(3.0):
        torch.testing.assert_close(heads.carried(flow), 3.0 * plain)
    torch.testing.assert_close(heads.carried(flow), plain)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "carry_gain.py"),
                          "--ckpt", str(responsive_runs / "responsive" / "best"),
                          "--gain", "2", "--out", str(tmp_path / "copy")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "carries no motion on (flow_carry false)" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "copy").exists()


def test_spread_where_uses_the_mask_temperature_it_is_given_and_refuses_zero_by_name(
        tmp_path, sim_root, responsive_runs):
    """``spread_where --mask-temperature``, end to end on a flow head: the mask's source shares it
    prints and the temperature it records are the given one's (stop 67 found the flag read and
    ignored); 0 is refused with the checkpoint named, before anything is recorded."""
    import json
    import os

    ckpt = str(responsive_runs / "responsive" / "best")
    results = tmp_path / "results.jsonl"

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "spread_where.py", "--ckpt", ckpt, "--data", str(sim_root),
                               "--limit", "4", "--samples", "3", "--truths", "3", *extra],
                              capture_output=True, text=True, cwd=ROOT / "bench",
                              env={**os.environ, "BENCH_RESULTS": str(results), "OMP_NUM_THREADS": "1"})

    def shares(out: subprocess.CompletedProcess) -> str:
        assert out.returncode == 0, out.stderr
        return next(line for line in out.stdout.splitlines() if "the mask's mean share" in line)

    plain, sharp = run(), run("--mask-temperature", "3")
    assert shares(plain) != shares(sharp)
    assert [json.loads(line)["mask_temperature"] for line in results.read_text().splitlines()] == [1.0, 3.0]
    refused = run("--mask-temperature", "0")
    assert refused.returncode == 1 and f"{ckpt}: mask_temperature must be a number > 0" in refused.stderr
    assert "Traceback" not in refused.stderr and len(results.read_text().splitlines()) == 2


def test_the_big_sprite_lands_whole_on_the_end_effector_pixel():
    """``sprite_floor.big_sprite``: a 4x sprite whose middle 4 x 4 block alone is lit, placed on an
    end effector at a pixel's centre, lights that pixel fully and no other; half a pixel further
    it lights two halves (the box filter of a whole 4x shift, no bilinear blur beyond it)."""
    import torch

    bench = _bench("sprite_floor")
    big = bench.BIG
    logits = torch.full((3, big, big), -50.0)
    logits[:, big // 2 - 2 : big // 2 + 2, big // 2 - 2 : big // 2 + 2] = 50.0

    def net(cond):
        return logits.flatten().expand(len(cond), -1)

    frame = bench.big_sprite(net, torch.zeros(1, 7), torch.tensor([[20.5, 30.5]]))  # (col, row)
    assert frame.shape == (1, 3, 64, 64) and torch.allclose(frame[0, :, 30, 20], torch.ones(3))
    assert frame.sum() == pytest.approx(3.0, abs=1e-3)
    half = bench.big_sprite(net, torch.zeros(1, 7), torch.tensor([[21.0, 30.5]]))
    assert torch.allclose(half[0, 0, 30, 20:22], torch.full((2,), 0.5)) and half.sum() == pytest.approx(3.0, abs=1e-3)


def test_agreement_by_branching_groups_the_sequences_by_how_much_their_world_branches():
    """``spread_where.agreement_by_branching``: sequences sorted by their share of branching
    pixels, fewest first, each group's mean share and agreement; a sequence whose truths never
    differ (no agreement) is left out."""
    import torch

    bench = _bench("spread_where")
    t_std = torch.zeros(5, 1, 4, 4)
    differ = torch.zeros(5, 1, 4, 4, dtype=torch.bool)
    for i, n in enumerate([4, 1, 8, 2]):  # sequence i branches on n pixels
        t_std[i].view(-1)[:n] = 1.0
        differ[i].view(-1)[:n] = True
    m_std = t_std.clone()
    m_std[[1, 3]] = 1.0 - t_std[[1, 3]]  # the two least branching sequences: the model's map is the opposite
    groups = bench.agreement_by_branching(t_std, m_std, differ, parts=2)
    assert [g["sequences"] for g in groups] == [2, 2]
    assert groups[0]["branching_share"] == pytest.approx(1.5 / 16, abs=1e-4) and groups[0]["agreement"] == pytest.approx(-1.0)
    assert groups[1]["branching_share"] == pytest.approx(6 / 16, abs=1e-4) and groups[1]["agreement"] == pytest.approx(1.0)


def test_error_where_splits_the_noiseless_futures_error_and_the_spread_by_region():
    """``spread_where.error_where``: the noiseless future's squared error against the truths'
    mean (not against any one truth), the spread and the pixels, each as shares over the regions,
    and the RMS error in grey levels where each region lies."""
    import torch

    bench = _bench("spread_where")
    truths = torch.zeros(1, 2, 1, 3, 2, 2)
    truths[0, 0, 0, :, 0, 0], truths[0, 1, 0, :, 0, 0] = 0.2, 0.6  # they branch at (0, 0): mean 0.4 there
    noiseless = truths.mean(1, keepdim=True).clone()
    noiseless[0, 0, 0, :, 1, 1] = 0.1  # wrong by 0.1 where they agree; exact where they branch
    m_std = torch.tensor([[[[0.3, 0.0], [0.0, 0.1]]]])
    left = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    left[..., 0] = True
    out = bench.error_where(noiseless, truths, m_std, {"left": left, "right": ~left})
    assert out["left"] == [0.0, 0.75, 0.5, 0.0]
    assert out["right"][:3] == [1.0, 0.25, 0.5] and out["right"][3] == pytest.approx(0.1 / 2 ** 0.5 * 255, abs=0.05)


def test_score_gap_places_each_candidate_between_a_perfect_sampler_and_copy_last():
    """``score_gap``: pixel differences keep the frame's size, an edge where a pixel steps; each
    candidate's energy score is placed between the oracle's (0) and copy-last's (1): futures
    drawn as the oracle's score 0, and the truths' mean, no spread, lies between."""
    import torch

    bench = _bench("score_gap")
    frame = torch.zeros(1, 4, 4)
    frame[0, 1, 2] = 1.0
    d = bench.differences(frame)
    assert d.shape == (2, 4, 4) and d[0, 1, 1] == 1 and d[0, 1, 2] == -1 and d[1, 0, 2] == 1 and d[1, 1, 2] == -1
    assert d[0, :, 3].abs().sum() == 0 and d[1, 3].abs().sum() == 0  # the padded last column and row
    g = torch.Generator().manual_seed(0)
    truths = (torch.rand(3, 4, 2, 3, 4, 4, generator=g) > 0.5).float()
    oracle = truths.flip(1)
    last = torch.full((3, 4, 2, 3, 4, 4), 0.5)
    out = bench.gaps({"oracle": oracle, "model": oracle.clone(), "truths' mean": truths.mean(1, keepdim=True).expand_as(oracle),
                      "copy-last": last}, truths, patch=2, branch_weight=0.0)
    for domain in ("pixels", "differences"):
        assert out[domain]["oracle"][1] == 0 and out[domain]["model"][1] == 0 and out[domain]["copy-last"][1] == 1
        assert 0 < out[domain]["truths' mean"][1] < 1


def test_widen_writes_a_wider_checkpoint_that_predicts_as_before_and_refuses_a_narrower_one(
        tmp_path, sim_root, responsive_runs):
    """``widen`` end to end: the written checkpoint has the new width, loads, and its futures
    match the source's (as twins or fresh); a width that is not wider is refused by name, with no
    traceback and nothing written."""
    import os

    from cvae import checkpoint

    ckpt = str(responsive_runs / "responsive" / "best")

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "widen.py", "--ckpt", ckpt, "--data", str(sim_root), *extra],
                              capture_output=True, text=True, cwd=ROOT / "bench",
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    width = checkpoint.read_meta(ckpt)["config"]["width"]
    out = run("--width", str(2 * width), "--copies", "--out", str(tmp_path / "wide"))
    assert out.returncode == 0, out.stderr
    gap = float(out.stdout.rsplit("at most ", 1)[1])
    assert gap < 1e-4 and "copies" in out.stdout
    model, meta = checkpoint.load_model(tmp_path / "wide")
    assert meta["config"]["width"] == 2 * width and model.cfg.width == 2 * width
    out = run("--width", str(width), "--out", str(tmp_path / "same"))
    assert out.returncode != 0 and f"--width {width} is not wider" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "same").exists()


def test_eval_seeds_scores_each_seed_and_the_batch_size_does_not_move_them(tmp_path, sim_root):
    """``eval_seeds`` end to end on a model whose futures follow its noise: one row per run with a
    score per seed and their SD; two seeds give two scores, and batches of 1 give the scores of 3."""
    import dataclasses
    import json
    import os

    from test_model import calibrated, tiny

    from cvae import checkpoint

    model = calibrated(tiny())
    ckpt = checkpoint.save(tmp_path / "tiny", model, dataclasses.asdict(model.cfg), {"epoch": 0})
    results = tmp_path / "results.jsonl"
    for batch in (1, 3):
        out = subprocess.run([sys.executable, "eval_seeds.py", "--ckpt", str(ckpt), "--data", str(sim_root),
                              "--split", "test", "--limit", "3", "--samples", "2", "--seeds", "0", "1",
                              "--batch", str(batch)],
                             capture_output=True, text=True, cwd=ROOT / "bench",
                             env={**os.environ, "BENCH_RESULTS": str(results), "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr
        assert "over 2 seeds" in out.stdout
    one, three = (json.loads(line) for line in results.read_text().splitlines())
    assert (one["batch"], three["batch"]) == (1, 3)
    assert one["one_sample"] == pytest.approx(three["one_sample"], abs=2e-3)
    assert one["best_minus_one"] == pytest.approx(three["best_minus_one"], abs=2e-3)
    assert abs(one["one_sample"][0] - one["one_sample"][1]) > 0.004 and one["one_sample_sd"] > 0
