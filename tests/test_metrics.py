"""Metrics against hand-computed cases: PSNR and SSIM as the lab scores them, and the measures of
what a person sees (sharpness, moving-region and window PSNR, spread of futures, agreement)."""
import math

import numpy as np
import pytest
import torch

from cvae.metrics import (
    BETA_EPS,
    agreement_gap,
    branching,
    correlation,
    energy_score,
    ghosts,
    gradient_map,
    masked_psnr,
    moving_mask,
    pixel_std,
    psnr,
    residual_energy_score,
    sharpness,
    spread_gap,
    ssim,
    window_mask,
    z_change,
)
from cvae.physics_eval import VISIBLE_STD, spread_scores, summarize


def test_psnr_and_ssim():
    a = torch.rand(2, 3, 3, 64, 64)
    assert torch.allclose(psnr(a, a), torch.full((2, 3), 100.0))
    b = (a + 0.1).clamp(0, 1)
    per_channel = [10 * math.log10(1 / ((b[0, 0, ch] - a[0, 0, ch]) ** 2).mean().item()) for ch in range(3)]
    assert psnr(b, a)[0, 0].item() == pytest.approx(sum(per_channel) / 3, rel=1e-5)
    assert torch.allclose(ssim(a, a), torch.ones(2, 3), atol=1e-5)
    assert (ssim(b, a) < 1).all() and (ssim(torch.rand_like(a), a) < 0.1).all()
    samples = torch.stack([a, b], 1)  # [2, S=2, 3, ...] against one target, as evaluation does
    torch.testing.assert_close(ssim(samples, a[:, None]), torch.stack([ssim(a, a), ssim(b, a)], 1))


def test_sharpness_is_the_mean_absolute_neighbour_difference():
    stripes = torch.zeros(3, 4, 4)
    stripes[:, :, 1::2] = 1.0  # columns alternate 0, 1: every horizontal step is 1, no vertical one
    assert sharpness(stripes).item() == pytest.approx((1.0 + 0.0) / 2)
    ramp = torch.arange(4.0).repeat(3, 4, 1) / 10  # +0.1 per column
    assert sharpness(ramp).item() == pytest.approx(0.05)
    blurred = (stripes + stripes.roll(1, -1)) / 2  # a box blur flattens the stripes
    assert sharpness(blurred) < sharpness(stripes)
    assert sharpness(torch.stack([stripes, ramp])).shape == (2,)
    # per pixel: each column of stripes but the last steps by 1 to its right neighbour, none down
    torch.testing.assert_close(gradient_map(stripes), torch.tensor([[0.5, 0.5, 0.5, 0.0]]).repeat(4, 1))
    spot = torch.zeros(1, 3, 3)
    spot[0, 1, 1] = 1.0  # one bright pixel: it and its left and upper neighbours see the step
    torch.testing.assert_close(gradient_map(spot), torch.tensor([[0, 0.5, 0], [0.5, 1.0, 0], [0, 0, 0]]))
    assert gradient_map(torch.stack([stripes, ramp])).shape == (2, 4, 4)


def test_edge_energy_tells_a_sharp_step_from_the_same_step_smeared_and_from_a_mean_of_places():
    """A unit step down 16 rows has one column of edges 0.5 (the x difference 1, the y one 0,
    averaged): 16 x 0.25 = 4. Smeared over 2 px it has two columns of 0.25: 2, though its summed
    edges (``sharpness``) are the same. The mean of two futures with a square in two places has
    half the squared edges of either; pixels outside the mask count nothing."""
    from cvae.metrics import edge_energy

    step, smeared = torch.zeros(3, 16, 16), torch.zeros(3, 16, 16)
    step[..., 8:] = 1.0
    smeared[..., 8:], smeared[..., 7] = 1.0, 0.5
    everywhere = torch.ones(16, 16)
    assert edge_energy(step, everywhere).item() == pytest.approx(4.0)
    assert edge_energy(smeared, everywhere).item() == pytest.approx(2.0)
    assert sharpness(smeared).item() == pytest.approx(sharpness(step).item())
    a, b = torch.zeros(3, 16, 16), torch.zeros(3, 16, 16)
    a[:, 2:6, 2:6], b[:, 9:13, 9:13] = 1.0, 1.0
    futures = torch.stack([a, b])
    assert torch.allclose(edge_energy(futures, everywhere), edge_energy(a, everywhere).expand(2))
    assert edge_energy(futures.mean(0), everywhere).item() == pytest.approx(edge_energy(a, everywhere).item() / 2)
    left = torch.zeros(16, 16)
    left[:, :7] = 1.0
    assert edge_energy(step, left).item() == 0.0


def test_moving_mask_and_masked_psnr():
    last = torch.zeros(3, 4, 4)
    truth = last.clone()
    truth[0, 1, 2] = 0.5  # one pixel moves, in one channel
    truth[:, 3, 3] = 0.05  # below the 0.1 threshold: does not count
    mask = moving_mask(truth, last)
    assert mask.shape == (4, 4) and mask.sum() == 1 and mask[1, 2]
    pred = truth.clone()
    pred[:, 1, 2] += 0.1  # error 0.1 in every channel at the moving pixel; elsewhere error-free
    pred[:, 0, 0] = 1.0  # a large error outside the mask is not counted
    assert masked_psnr(pred, truth, mask).item() == pytest.approx(10 * math.log10(1 / 0.01), rel=1e-4)
    assert masked_psnr(pred, truth, torch.zeros(4, 4, dtype=torch.bool)).isnan()
    # two pixels with errors 0.1 and 0.3: MSE is their mean square
    two = mask.clone()
    two[2, 2] = True
    pred[:, 2, 2] = truth[:, 2, 2] + 0.3
    assert masked_psnr(pred, truth, two).item() == pytest.approx(10 * math.log10(1 / 0.05), rel=1e-4)


def test_z_change_counts_only_where_the_world_moves():
    """Two physics futures of 2 steps on a 4x4 frame: one moves pixel (0, 0) at step 1, the other
    (1, 1) at step 2, so the region is one pixel per step. Two seeds' 2 futures differ by 0.3 in
    one channel at (0, 0) of step 1 in the first future (0.1 over the channels), and by 1 all
    over the still pixel (3, 3), which is not counted: (0.1 + 0 + 0 + 0) / 4 = 0.025."""
    last = torch.zeros(3, 4, 4)
    world = torch.zeros(2, 2, 3, 4, 4)
    world[0, 0, :, 0, 0] = 0.5
    world[1, 1, 2, 1, 1] = 0.2
    a = torch.zeros(2, 2, 3, 4, 4)
    b = a.clone()
    b[0, 0, 1, 0, 0] = 0.3
    b[:, :, :, 3, 3] = 1.0
    assert z_change(a, b, world, last).item() == pytest.approx(0.025)
    assert z_change(a, a, world, last).item() == 0


def test_window_mask_is_centred_on_the_pixel_and_cut_at_the_border():
    w = window_mask(torch.tensor([[10.6, 20.2], [0.0, 63.9]]), size=9, hw=(64, 64))
    assert w.shape == (2, 64, 64)
    rows, cols = w[0].nonzero().unbind(1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 24, 6, 14)  # col 10, row 20, +-4
    assert w[0].sum() == 81 and w[1].sum() == 5 * 5  # corner: only the in-image quarter, 5x5


def test_pixel_std_and_correlation():
    futures = torch.zeros(2, 3, 2, 2)  # S=2 futures of a 2x2 RGB frame
    futures[1, :, 0, 0] = 0.4  # one pixel differs by 0.4 between the two futures: std 0.2
    std = pixel_std(futures, 0)
    assert std.shape == (2, 2)
    torch.testing.assert_close(std, torch.tensor([[0.2, 0.0], [0.0, 0.0]]))
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert correlation(a, 2 * a + 1).item() == pytest.approx(1.0)
    assert correlation(a, -a).item() == pytest.approx(-1.0)
    assert correlation(a, torch.tensor([[1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert correlation(a, torch.ones(2, 2)).isnan()


def test_branching_is_a_grey_level_of_std_averaged_over_the_channels():
    """Two futures 5 grey levels apart in one channel have a population std of 2.5 there, 0.83
    averaged over the three channels: they agree. 7 apart in one channel (1.17), or 3 apart in
    all three (1.5): they branch."""
    futures = torch.zeros(2, 3, 2, 2)
    futures[1, 0, 0, 0] = 5 / 255
    futures[1, 0, 1, 1] = 7 / 255
    futures[1, :, 0, 1] = 3 / 255
    assert branching(futures, 0).tolist() == [[False, True], [False, True]]
    assert branching(futures[:, None], 0).shape == (1, 2, 2)


def test_spread_gap_by_hand_and_where_every_future_agrees():
    """Truths [B=1, K=2, F=1, 3, 1, 2] that differ by 0.4 on pixel 0 (std 0.2) and agree on pixel
    1; samples that agree on pixel 0 and differ by 0.2 on pixel 1 (std 0.1): the gap is
    (|0 - 0.2| + |0.1 - 0|) / 2 = 0.15, up to the 1e-6 under each root. Samples that agree
    where the truths agree still have a finite gradient there (a plain std's is NaN at 0)."""
    truths = torch.zeros(1, 2, 1, 3, 1, 2)
    truths[0, 1, ..., 0] = 0.4
    shift = torch.zeros(1, 2, 1, 3, 1, 2)
    shift[0, 1, ..., 1] = 0.2
    samples = torch.zeros(1, 2, 1, 3, 1, 2, requires_grad=True)
    gap = spread_gap(samples + shift, truths)
    assert gap.shape == (1,) and gap.item() == pytest.approx(0.15, abs=2e-3)
    gap.sum().backward()
    assert torch.isfinite(samples.grad).all()
    assert spread_gap(truths, truths).item() == 0


def test_agreement_gap_by_hand_sees_where_not_how_much():
    """Truths [B=1, K=2, F=1, 3, 1, 3] that differ by 0.4 on pixel 0 (std 0.2) and agree on pixels
    1 and 2. Samples that spread on pixel 1 instead: std maps (0.2, e, e) and (e, 0.2, e) centre
    to (2, -1, -1) and (-1, 2, -1) x (0.2 - e) / 3, correlation -3 / 6, gap 1.5. Samples that
    spread on pixel 0 twice as much as the truths: the gap is 0, where spread_gap's is not; a
    scene whose truths agree everywhere scores 0. Samples that spread a little on pixel 0 and
    much on pixel 1: the gradient is finite where they agree (pixel 2), and a step down it
    moves spread from pixel 1 to pixel 0. Futures that agree everywhere, truths and samples
    alike, have a finite gradient too (a 0 under the root's would be NaN)."""
    truths = torch.zeros(1, 2, 1, 3, 1, 3)
    truths[0, 1, ..., 0] = 0.4
    elsewhere = torch.zeros_like(truths)
    elsewhere[0, 1, ..., 1] = 0.4
    assert agreement_gap(elsewhere, truths).item() == pytest.approx(1.5, abs=1e-3)
    assert agreement_gap(truths, truths).item() == pytest.approx(0.0, abs=1e-6)
    wider = truths * 2
    assert agreement_gap(wider, truths).item() == pytest.approx(0.0, abs=1e-4)
    assert spread_gap(wider, truths).item() == pytest.approx(0.2 / 3, abs=1e-3)
    assert agreement_gap(elsewhere, torch.zeros_like(truths)).item() == 0
    samples = (truths * 0.25 + elsewhere).requires_grad_()
    gap = agreement_gap(samples, truths)
    gap.sum().backward()
    assert torch.isfinite(samples.grad).all()
    stepped = (samples - 0.05 * samples.grad).detach()
    assert agreement_gap(stepped, truths).item() < gap.item()
    spread = (stepped[0, 1] - stepped[0, 0]).abs().mean((0, 1, 2))  # per pixel
    assert spread[0] > 0.1 and spread[1] < 0.4
    flat = torch.zeros_like(truths, requires_grad=True)  # neither spreads: 0, and no NaN in the gradient
    agreement_gap(flat, torch.zeros_like(truths)).sum().backward()
    assert torch.isfinite(flat.grad).all()


def test_edge_gap_asks_each_future_for_the_truths_edges_where_they_differ():
    """Truths that put a square in one of two places: their own futures, or a sharp one of them
    repeated, fall short by nothing; their mean, drawn by every sample, falls short by half
    (half the squared edges); a scene whose truths all agree scores 0, and noise beyond the
    truths' edges earns nothing below 0."""
    from cvae.metrics import edge_gap

    a, b = torch.zeros(3, 16, 16), torch.zeros(3, 16, 16)
    a[:, 2:6, 2:6], b[:, 9:13, 9:13] = 1.0, 1.0
    truths = torch.stack([a, b])[None, :, None]  # [1, K=2, F=1, 3, H, W]
    assert edge_gap(truths, truths).item() == 0
    assert edge_gap(truths[:, :1].expand(-1, 2, -1, -1, -1, -1), truths).item() == pytest.approx(0.0, abs=1e-6)
    blur = truths.mean(1, keepdim=True).expand(-1, 2, -1, -1, -1, -1)
    assert edge_gap(blur, truths).item() == pytest.approx(0.5)
    same = truths[:, :1].expand(-1, 2, -1, -1, -1, -1)
    assert edge_gap(blur, same).item() == 0  # the truths agree: nothing to compare
    noise = torch.rand(1, 2, 1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert edge_gap(noise, truths).item() == 0


def _futures(values: list[float], moving: float = 0.5) -> torch.Tensor:
    """Futures [1, len(values), F=1, 3, 4, 4]: pixel (0, 0) takes each value in turn, pixel
    (1, 1) is ``moving`` in all of them (it moves, but every future agrees), the rest is 0."""
    x = torch.zeros(1, len(values), 1, 3, 4, 4)
    for i, v in enumerate(values):
        x[0, i, 0, :, 0, 0] = v
    x[..., 1, 1] = moving
    return x


def test_spread_scores_by_hand():
    last = torch.zeros(1, 3, 4, 4)
    truths = _futures([0.2, 0.6])  # pixel (0, 0): std 0.2; pixel (1, 1): std 0; region: both
    same = spread_scores(truths.clone(), truths, last)
    assert same["truth_spread"].item() == pytest.approx(0.1)  # (0.2 + 0) / 2 moving pixels
    assert same["model_spread"].item() == pytest.approx(0.1)
    assert same["agreement"].item() == pytest.approx(1.0)
    collapsed = spread_scores(_futures([0.4, 0.4]), truths, last)  # both samples the mean
    assert collapsed["model_spread"].item() == 0 and collapsed["agreement"].item() == 0
    # each truth has a sample equal to it: coverage is exact (100 dB); sample 0 misses truth 1
    assert same["coverage"].item() == pytest.approx(100.0)
    miss = 10 * math.log10(1 / (0.4 ** 2 / 16))  # one pixel of 16 off by 0.4
    assert same["one_sample"].item() == pytest.approx((100 + miss) / 2, rel=1e-4)
    # the collapsed model is 0.2 from both truths at one pixel: its best and one sample agree
    off = 10 * math.log10(1 / (0.2 ** 2 / 16))
    assert collapsed["coverage"].item() == pytest.approx(off, rel=1e-4)
    assert collapsed["one_sample"].item() == pytest.approx(off, rel=1e-4)
    # a spread that is float noise shows nothing: no credit for agreement
    noise = _futures([0.4, 0.4 + VISIBLE_STD])
    assert spread_scores(noise, truths, last)["agreement"].item() == 0
    # misplaced: the share of the model's spread where the truths agree (pixel (1, 1) here)
    assert same["misplaced"].item() == 0 and collapsed["misplaced"].isnan()
    half = _futures([0.2, 0.6])
    half[0, :, 0, :, 1, 1] = torch.tensor([0.3, 0.7])[:, None]  # as wide a spread where the world agrees
    assert spread_scores(half, truths, last)["misplaced"].item() == pytest.approx(0.5)
    assert same["certain"].item() == pytest.approx(15 / 16)  # an even spread would be 15/16 misplaced
    # where the truths differ (pixel (0, 0) alone): the world's std 0.2 there; a model that draws it
    # draws 0.2, a collapsed one 0, and spread where the world agrees adds nothing there
    assert same["branch_truth_spread"].item() == pytest.approx(0.2)
    assert same["branch_model_spread"].item() == pytest.approx(0.2)
    assert collapsed["branch_model_spread"].item() == 0
    widened = spread_scores(half, truths, last)
    assert widened["model_spread"].item() == pytest.approx(0.2)  # (0.2 + 0.2) / 2 moving pixels
    assert widened["branch_model_spread"].item() == pytest.approx(0.2)
    # summarized: each ratio is model over truth of the sequences' means, NaN ones left out (a
    # scene whose truths agree everywhere has no place where they differ)
    agreeing = spread_scores(truths, _futures([0.2, 0.2]), last)
    assert agreeing["branch_truth_spread"].isnan() and agreeing["branch_model_spread"].isnan()
    summary = summarize({k: [same[k], collapsed[k], agreeing[k]] for k in same})
    assert summary["spread_ratio"] == pytest.approx((0.1 + 0 + 0.1) / (0.1 + 0.1 + 0))
    assert summary["branch_truth_spread"] == pytest.approx(0.2)
    assert summary["branch_spread_ratio"] == pytest.approx((0.2 + 0) / 2 / 0.2)
    # truths that agree everywhere: agreement is undefined (NaN), not counted
    assert spread_scores(truths, _futures([0.2, 0.2]), last)["agreement"].isnan()


def test_ghosts_are_pixels_beyond_every_truth_and_haze_is_not():
    truths = _futures([0.2, 0.6])  # pixel (0, 0) is 0.2 or 0.6; everything else agrees
    # 0.4 (a blend), 0.84 and -0.04 (0.24 beyond the range) are near a truth; 0.9 and -0.1 (0.3 beyond) are not
    for value, ghost in ((0.4, False), (0.84, False), (-0.04, False), (0.9, True), (-0.1, True)):
        assert ghosts(_futures([value])[0], truths[0])[0, 0, 0, 0].item() is ghost, value
    one_channel = _futures([0.4])
    one_channel[0, 0, 0, 2, 3, 3] = 0.3  # a blue speck where every truth is black
    assert ghosts(one_channel[0], truths[0]).nonzero().tolist() == [[0, 0, 3, 3]]
    # through spread_scores: pixels per frame of a sample, and of the last context frame held
    samples = _futures([0.4, 0.9])  # sample 1 has one ghost; sample 0 none
    last = torch.zeros(1, 3, 4, 4)
    last[..., 2, 2] = 1.0  # the arm where every future shows the table
    scores = spread_scores(samples, truths, last)
    # copy-last: that pixel, and pixel (1, 1), 0 where every future has moved 0.5 there
    assert scores["ghosts"].item() == pytest.approx(0.5) and scores["copy_ghosts"].item() == pytest.approx(2.0)
    assert summarize({k: [v] for k, v in scores.items()})["ghost_pixels"] == pytest.approx(0.5)


def test_spread_scores_tell_the_worlds_spread_from_a_models_own_doubt():
    """On a real simulated push: samples that are more draws of the world's hidden causes agree
    with the truths' uncertainty map and are rarely misplaced; samples that differ only on a
    patch where nothing moves (as a model unsure of something certain) score the opposite."""
    from cvae.data.simulator import simulate
    from cvae.physics_eval import _to_tensor

    runs = _to_tensor(np.stack([simulate(0, 0, 2, n_frames=12, uncertainty=1.0, draw=d).frames for d in range(1, 13)]),
                      "cpu")
    last, truths, world = runs[0, 1], runs[:6, 2:], runs[6:, 2:]
    assert pixel_std(truths, 0).amax() > 0.1  # the hidden causes change this push's outcome
    doubt = truths[:1].repeat(6, 1, 1, 1, 1)
    doubt[:, :, :, :6, :6] += torch.linspace(0, 0.3, 6)[:, None, None, None, None]  # a corner nothing reaches
    honest = spread_scores(world[None], truths[None], last[None])
    wrong = spread_scores(doubt[None], truths[None], last[None])
    assert honest["agreement"].item() > 0.5 and honest["misplaced"].item() < 0.3
    assert wrong["agreement"].item() < 0.2 and wrong["misplaced"].item() > 0.9
    # where the world branches, more of its draws spread about as much as it does; the doubt not at all
    assert 0.6 < (honest["branch_model_spread"] / honest["branch_truth_spread"]).item() < 1.6
    assert wrong["branch_model_spread"].item() < 0.1 * wrong["branch_truth_spread"].item()


def test_energy_score_by_hand():
    """Mean distance to the truths minus half the mean distance between samples (RMS norms)."""
    def es(samples, truths):
        return energy_score(torch.tensor(samples, dtype=torch.float)[None, :, None],
                            torch.tensor(truths, dtype=torch.float)[None, :, None]).item()

    # samples {0, 2}, truths {1, 1}: distances to the truths 1 each, between samples 2: 1 - 0.5 * 2
    assert es([0, 2], [1, 1]) == pytest.approx(0, abs=1e-5)
    # the world branches to 0 or 2: a collapsed model at the mean scores 1, one that branches alike 0
    assert es([1, 1], [0, 2]) == pytest.approx(1, abs=1e-5)
    assert es([0, 2], [0, 2]) == pytest.approx(0, abs=1e-5)
    assert es([0, 2], [0, 2]) < es([1, 1], [0, 2])
    # RMS over the rest of the dimensions: samples (0, 0), (0, 2) against the truth (0, 0)
    got = energy_score(torch.tensor([[[0.0, 0.0], [0.0, 2.0]]]), torch.tensor([[[0.0, 0.0]]]))
    assert got.item() == pytest.approx(2**0.5 / 2 - 0.5 * 2**0.5, abs=1e-5)
    with pytest.raises(ValueError, match="2 or more samples"):
        energy_score(torch.zeros(1, 1, 3), torch.zeros(1, 2, 3))


@pytest.mark.parametrize("beta", [0.5, 1.0, 1.5])
def test_energy_score_beta_charges_a_blend_more_the_lower_it_is(beta):
    """Norms to the power beta: against truths 0 and 1, samples 0 and 1 score 0 at every beta
    (their distances to the truths, 1 / 2 on average, less half their distance apart, 1), a blend
    at 0.5 scores 0.5 ** beta, so the blend's cost grows as beta falls; whole frames by hand;
    beta outside (0, 2) is refused."""
    def es(samples, truths, b):
        return energy_score(torch.tensor(samples, dtype=torch.float)[None, :, None],
                            torch.tensor(truths, dtype=torch.float)[None, :, None], beta=b).item()

    smoothing = BETA_EPS ** (beta / 2) if beta != 1 else 0  # what a zero distance scores
    assert es([0, 1], [0, 1], beta) == pytest.approx(smoothing / 2, abs=1e-4)
    assert es([0.5, 0.5], [0, 1], beta) == pytest.approx(0.5**beta - smoothing / 2, abs=1e-4)
    g = torch.Generator().manual_seed(0)
    samples, truths = torch.rand(2, 3, 4, 3, 8, 8, generator=g), torch.rand(2, 3, 4, 3, 8, 8, generator=g)
    squared = (samples[:, :, None] - truths[:, None]).pow(2).flatten(3).mean(-1)  # [2, 3, 3]: whole futures' mean squares
    between = (samples[:, :, None] - samples[:, None]).pow(2).flatten(3).mean(-1)
    by_hand = squared.pow(beta / 2).mean((1, 2)) - 0.5 * between.pow(beta / 2).sum((1, 2)) / 6  # 6 pairs s != s'
    torch.testing.assert_close(energy_score(samples, truths, beta=beta), by_hand, atol=1e-4, rtol=1e-4)
    for bad in (0.0, 2.0):
        with pytest.raises(ValueError, match="beta must be in"):
            energy_score(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), beta=bad)


def test_patch_energy_score_charges_misplaced_spread_that_the_whole_frame_score_pays_for():
    """A biased model (error 1 on one 4x4 patch of an 8x8 frame whose two true futures agree)
    that also spreads on another patch, where it is right: over the whole frame the spread's cost
    is second order beside the bias, so the score prefers it; per patch it is charged."""
    truths = torch.zeros(1, 2, 1, 8, 8)
    collapsed = torch.zeros(1, 2, 1, 8, 8)
    collapsed[..., :4, :4] = 1
    spread = collapsed.clone()
    spread[0, 0, 0, 4, 4] = spread[0, 1, 0, 7, 7] = 1  # each sample off by 1 on its own pixel of patch 3
    whole, patch = energy_score(spread, truths).item(), energy_score(spread, truths, patch=4).item()
    # whole frame: sqrt(17/64) to the truths, sqrt(2/64) between the samples; collapsed sqrt(16/64)
    assert whole == pytest.approx(17**0.5 / 8 - 0.5 * 2**0.5 / 8, abs=1e-5)
    assert energy_score(collapsed, truths).item() == pytest.approx(0.5, abs=1e-5)
    assert whole < 0.5
    # per patch: patch 0 costs 1, patch 3 sqrt(1/16) to the truths and sqrt(2/16) between samples
    assert patch == pytest.approx((1 + 0.25 - 0.5 * 2**0.5 / 4) / 4, abs=1e-5)
    assert energy_score(collapsed, truths, patch=4).item() == pytest.approx(0.25, abs=1e-5)
    assert patch > 0.25
    # one patch the size of the frame is the whole-frame score
    assert energy_score(spread, truths, patch=8).item() == pytest.approx(whole, abs=1e-5)
    with pytest.raises(ValueError, match="patch 3 does not tile 8x8"):
        energy_score(spread, truths, patch=3)


def test_pooled_energy_score_pays_for_an_object_carried_whole_not_for_flicker():
    """A 4x8 frame; the world puts a 2x2 object in the left or the right 2x2 cell of its top
    row. Samples that blur it over both places, or flicker pixel by pixel around that blur, pool
    (2 x 2) to the same coarse frame, so the pooled score cannot tell them apart; samples that
    carry it whole to one place or the other score 0 there."""
    truths = torch.zeros(1, 2, 1, 4, 8)
    truths[0, 0, 0, :2, :2] = truths[0, 1, 0, :2, 2:4] = 1
    blur = torch.zeros(1, 2, 1, 4, 8)
    blur[..., :2, :4] = 0.5
    flicker = blur.clone()
    flicker[0, 0, 0, :2, :4] = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])
    flicker[0, 1, 0, :2, :4] = 1 - flicker[0, 0, 0, :2, :4]
    carried = truths.clone()
    # pooled to 2x4: the blur is 0.5 off in two of 8 cells from each truth, sqrt(0.5 / 8) = 0.25, no spread
    assert energy_score(blur, truths, pool=2).item() == pytest.approx(0.25, abs=1e-5)
    assert energy_score(flicker, truths, pool=2).item() == pytest.approx(0.25, abs=1e-5)
    # carried: 0 to its own truth, 0.5 to the other; 0.5 apart -> 0.25 - 0.5 * 0.5
    assert energy_score(carried, truths, pool=2).item() == pytest.approx(0.0, abs=1e-5)
    # at full resolution the flicker's spread is paid: it scores below the blur
    assert energy_score(flicker, truths).item() < energy_score(blur, truths).item() - 0.05
    # pool 1 is the plain score; patches count pooled pixels (2 x 2 pooled = the whole 2x4 top half)
    assert energy_score(flicker, truths, pool=1).item() == pytest.approx(energy_score(flicker, truths).item())
    assert energy_score(blur, truths, patch=2, pool=2).item() == pytest.approx(
        (0.5**0.5 / 2 + 0) / 2, abs=1e-5)
    with pytest.raises(ValueError, match="pool 3 does not tile 4x8"):
        energy_score(blur, truths, pool=3)


def test_branch_energy_score_pays_spread_only_where_the_truths_differ():
    """Two 4x4 patches of a 4x8 frame: the truths agree on the left one and branch on the right.
    On the left the samples straddle the truth, each 1 off (a model that cannot hit it): the
    proper score counts that as no worse than hitting it; with ``branch`` it costs what a
    one-sided error does."""
    truths = torch.zeros(1, 2, 1, 4, 8)
    truths[0, 1, :, :, 4:] = 1  # right patch: 0 in one future, 1 in the other
    samples = torch.zeros(1, 2, 1, 4, 8)
    samples[0, 0, :, :, :4], samples[0, 1, :, :, :4] = -1, 1
    samples[0, 1, :, :, 4:] = 1  # right patch: the samples branch as the truths do
    plain, gated = energy_score(samples, truths, patch=4).item(), energy_score(samples, truths, patch=4, branch=True).item()
    # left: distances to the truth 1, between samples 2 -> 1 - 1 = 0 (plain) or 1 (branch); right: 0.5 - 0.5
    assert plain == pytest.approx(0.0, abs=1e-5)
    assert gated == pytest.approx((1 + 0) / 2, abs=1e-5)
    biased = samples.clone()
    biased[0, :, :, :, :4] = 1  # both samples 1 off on the same side: no spread to discount
    assert energy_score(biased, truths, patch=4, branch=True).item() == pytest.approx(gated, abs=1e-5)
    assert energy_score(biased, truths, patch=4).item() == pytest.approx(0.5, abs=1e-5)
    # branch_weight 3: the right (branching) patch counts 4 in a weighted mean, (1 x 1 + 4 x 0) / 5
    assert energy_score(biased, truths, patch=4, branch_weight=3.0).item() == pytest.approx(0.2, abs=1e-5)
    assert energy_score(biased, truths, patch=4, branch_weight=0.0).item() == pytest.approx(0.5, abs=1e-5)
    # over the whole frame the truths differ somewhere: one norm, weighted alike, the same score
    assert energy_score(biased, truths, branch_weight=3.0).item() == pytest.approx(energy_score(biased, truths).item())
    # where every patch branches, branch changes nothing; over the whole frame the truths differ somewhere
    assert energy_score(samples, truths, branch=True).item() == pytest.approx(energy_score(samples, truths).item())
    # truths identical everywhere: the mean distance to them alone, sqrt(16 / 32) and 1
    same = torch.zeros(1, 2, 1, 4, 8)
    assert energy_score(samples, same, branch=True).item() == pytest.approx((0.5**0.5 + 1) / 2, abs=1e-5)


def test_residual_energy_score_asks_z_for_the_worlds_spread_not_the_models_own_error():
    """Two pixels; the truths branch to 0 or 2 on the first and agree on 0 on the second. A model
    whose noiseless future is off by 1 on the second pixel: the plain score pays its samples to
    straddle that error, the residual one charges it, and a noiseless future at the truths' mean
    with deviations as the world's scores 0 (by hand)."""
    def score(samples, center, truths):
        s, c, t = (torch.tensor(v, dtype=torch.float)[None] for v in (samples, center, truths))
        return residual_energy_score(s, c, t).item()

    truths = [[0.0, 0.0], [2.0, 0.0]]  # mean (1, 0); deviations +-1, x sqrt(2 / 1)
    r2 = 2**0.5
    assert score([[1 - r2, 0.0], [1 + r2, 0.0]], [1.0, 0.0], truths) == pytest.approx(0, abs=1e-5)
    # collapsed at the mean: the deviations' fit alone, mean of |0 - (+-sqrt 2)| over RMS of 2 pixels
    assert score([[1.0, 0.0], [1.0, 0.0]], [1.0, 0.0], truths) == pytest.approx(r2 / 2**0.5, abs=1e-5)
    # the noiseless future off by 1 on the still pixel: its fit term, RMS (0, 1) = sqrt(1 / 2)
    biased = [1.0, 1.0]
    honest = [[1 - r2, 1.0], [1 + r2, 1.0]]
    straddle = [[1 - r2, 0.0], [1 + r2, 2.0]]  # the samples spread about that error on the still pixel
    assert score(honest, biased, truths) == pytest.approx(0.5**0.5, abs=1e-5)
    assert score(straddle, biased, truths) > score(honest, biased, truths) + 0.1
    plain = [energy_score(torch.tensor(v)[None], torch.tensor(truths)[None]).item() for v in (honest, straddle)]
    assert plain[1] < plain[0]  # the plain score prefers the straddle: its own doubt put into z
    # a constant added to every future changes nothing
    shifted = score([[4 - r2, 3.0], [4 + r2, 3.0]], [4.0, 3.0], [[3.0, 3.0], [5.0, 3.0]])
    assert shifted == pytest.approx(0, abs=1e-5)
    with pytest.raises(ValueError, match="2 or more true futures"):
        residual_energy_score(torch.zeros(1, 2, 3), torch.zeros(1, 3), torch.zeros(1, 1, 3))


def test_energy_score_prefers_the_worlds_own_spread():
    """Averaged over many draws, samples from the truths' distribution score lower than a
    collapsed model at the mean and than one that spreads where the truths agree."""
    g = torch.Generator().manual_seed(0)

    def world(n):  # 2 pixels: the first branches to 0 or 1, the second is always 0.5
        return torch.stack([torch.randint(0, 2, (n,), generator=g).float(), torch.full((n,), 0.5)], -1)

    truths = world(4000).view(1000, 4, 2)
    honest = energy_score(world(4000).view(1000, 4, 2), truths).mean()
    collapsed = energy_score(torch.full((1000, 4, 2), 0.5), truths).mean()
    misplaced = energy_score(world(4000).view(1000, 4, 2).flip(-1), truths).mean()  # spread on the wrong pixel
    assert honest < collapsed and honest < misplaced
