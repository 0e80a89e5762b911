"""The arm copy (``cvae/model/arm.py``): the base found in a frame, the rigid turn about it, and
the model that mixes it in."""
import numpy as np
import pytest
import torch
from test_model import batch, calibrated, tiny

from cvae.data.simulator import simulate
from cvae.errors import ConfigError
from cvae.kinematics import arm_bases, world_to_px
from cvae.model.arm import ArmCopy, arm_region, find_base, inpaint, shaft_map, turned
from cvae.model.heads import translate


def test_the_turned_copy_turns_about_the_base_by_hand():
    """Base (10, 10), end effector from (40, 10) to (10, 40): a quarter turn, rigid, so the pixel
    at (50, 10), 10 px beyond the end effector along the arm, lands at (10, 50)."""
    frame = torch.zeros(1, 3, 64, 64)
    frame[0, :, 10, 50] = 1.0  # [row, column]
    out = turned(frame, torch.tensor([[10.0, 10.0]]), torch.tensor([[40.0, 10.0]]), torch.tensor([[10.0, 40.0]]))
    assert out[0, 0, 50, 10] > 0.99 and out[0, 0].sum() < 1.01


def test_a_bar_turned_about_its_base_lands_on_the_bar_to_the_new_place():
    """A bar from a base outside the image to (30, 40), turned so its end lands on (20, 25) (nearer
    the base), is the bar from the base to (20, 25) to within resampling; the translated copy is not."""
    base, src, dst = torch.tensor([[24.0, -12.0]]), torch.tensor([[30.0, 40.0]]), torch.tensor([[20.0, 25.0]])
    bar = shaft_map(base, src, 64, 64).expand(-1, 3, -1, -1)
    want = shaft_map(base, dst, 64, 64)[0, 0]
    assert (turned(bar, base, src, dst)[0, 0] - want).abs().max() < 0.05
    assert (translate(bar, src - dst)[0, 0] - want).abs().max() > 0.5


def test_the_base_is_found_where_the_simulator_put_it():
    """In the first frame of 12 simulated scenes, the candidate whose line from the end effector
    is the most uniform colour is within 3 px of the true base; a candidate on the other edge
    would be 20 px or more away."""
    candidates = torch.from_numpy(arm_bases() - 0.5).float()
    for index in range(12):
        seq = simulate(5, index, 0, n_frames=1)
        frame = torch.from_numpy(seq.frames[:1]).permute(0, 3, 1, 2).float() / 255
        ee = torch.from_numpy(world_to_px(seq.positions[:1, :2].astype(np.float64)) - 0.5).float()
        found = find_base(frame, ee, candidates)[0].numpy()
        assert np.linalg.norm(found - (seq.arm_base - 0.5)) < 3, (index, found, seq.arm_base)


def test_the_arm_copy_lands_the_simulated_bar_where_the_arm_goes():
    """The arm copy of a scene's first frame, turned to where its end effector is 8 frames later,
    matches that frame on the shaft's pixels more closely than the first frame moved rigidly by
    the end effector's displacement (``ee_copy``), in at least 5 of 6 scenes whose arm moves and
    stays on the table (lifted, the bar is drawn lighter and wider, which neither copy knows), and
    by half on average."""
    from test_bench import _arm_bench

    shaft_mask = _arm_bench().shaft_mask
    better = moving = 0
    errors = []
    for index in range(24):
        seq = simulate(7, index, 0, n_frames=9)
        ee = world_to_px(seq.positions[:, :2].astype(np.float64))
        if np.linalg.norm(ee[8] - ee[0]) < 4 or np.ptp(seq.positions[:9, 2]) > 0 or moving == 6:
            continue
        moving += 1
        frames = torch.from_numpy(seq.frames).permute(0, 3, 1, 2).float() / 255
        src, dst = (torch.from_numpy(ee[[k]] - 0.5).float() for k in (0, 8))
        copy, shaft = ArmCopy()(frames[:1], src, dst)
        mask = torch.from_numpy(shaft_mask(seq.arm_base, ee[[8]])[0])
        assert shaft[0, 0][mask].mean() > 0.5  # the shaft map covers the true shaft
        errors.append([float((x[0] - frames[8]).abs()[:, mask].mean()) for x in (copy, translate(frames[:1], src - dst))])
        better += errors[-1][0] < errors[-1][1]
    turn, moved = np.mean(errors, 0)
    assert moving == 6 and better >= 5 and turn < 0.5 * moved, errors


@pytest.mark.parametrize("teacher_forcing,arm_clear", [(True, False), (False, False), (True, True), (False, True)])
def test_a_model_with_the_arm_copy_trains_every_weight(teacher_forcing, arm_clear):
    model = tiny(output="flow", cond_maps=True, ee_maps=True, ee_copy=True, arm_copy=True, arm_clear=arm_clear)
    assert model.decoder.head.sources[-1] == "arm_copy"
    x, c = batch()
    out = model(x, c, teacher_forcing)
    assert out.pred.shape == (2, 4, 3, 64, 64) and out.pred.min() >= 0 and out.pred.max() <= 1
    (out.mse.sum() + out.kld.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


def first_frames_of_two_scenes() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The first frame [1, 3, 64, 64] of simulated scenes 0 and 1, and its end effector's pixel place [1, 2]."""
    frames, places = [], []
    for index in (0, 1):
        seq = simulate(5, index, 0, n_frames=1)
        frames.append(torch.from_numpy(seq.frames[:1]).permute(0, 3, 1, 2).float() / 255)
        places.append(torch.from_numpy(world_to_px(seq.positions[:1, :2].astype(np.float64)) - 0.5).float())
    return frames, places


def test_the_base_is_remembered_only_for_the_same_frame_and_place():
    """``ArmCopy.base`` (and ``cleared_anchor``) reuses the last search only for an equal frame and
    end-effector place: a frame of another scene, or the same tensor written in place, is searched afresh."""
    arm = ArmCopy()
    frames, places = first_frames_of_two_scenes()
    want = [find_base(f, p, arm.candidates) for f, p in zip(frames, places)]
    assert not torch.equal(want[0], want[1])
    assert torch.equal(arm.base(frames[0], places[0]), want[0])
    assert torch.equal(arm.base(frames[0].clone(), places[0]), want[0])  # an equal frame: remembered
    assert torch.equal(arm.base(frames[1], places[1]), want[1])
    frame = frames[0].clone()
    assert torch.equal(arm.base(frame, places[0]), want[0])
    frame.copy_(frames[1])  # written in place, the same place asked
    elsewhere = find_base(frames[1], places[0], arm.candidates)
    assert not torch.equal(elsewhere, want[0]) and torch.equal(arm.base(frame, places[0]), elsewhere)
    # and so is the latest real frame cleared of its arm: the same tensor for an equal frame, afresh for another
    first = arm.cleared_anchor(frames[0], places[0])
    assert torch.equal(first, arm.cleared(frames[0], frames[0], places[0], places[0]))
    assert arm.cleared_anchor(frames[0].clone(), places[0]) is first
    other = arm.cleared_anchor(frames[1], places[1])
    assert other is not first and torch.equal(other, arm.cleared(frames[1], frames[1], places[1], places[1]))


def test_the_cleared_frame_is_each_requests_own_when_requests_interleave(monkeypatch):
    """The app shares one model between requests in threads. A request that asks
    ``cleared_anchor`` while another's fill is under way must get its own frame's fill, then and
    later (stop 67: a remembered fill kept beside the last base could hand one request another
    frame's, so 16 concurrent Predicts gave the same sequence and seed two different futures).
    The interleaving is made by hand: the first fill asks for the second frame's midway."""
    from cvae.model import arm as arm_module

    arm = ArmCopy()
    frames, places = first_frames_of_two_scenes()
    want = [inpaint(f, arm_region(find_base(f, p, arm.candidates), p, 64, 64)) for f, p in zip(frames, places)]
    assert not torch.equal(want[0], want[1])
    plain, seen = arm_module.inpaint, {}

    def interleaved(frame, hole, *args):
        if not seen:  # the first request's fill: the second request runs meanwhile
            seen["second"] = None
            seen["second"] = arm.cleared_anchor(frames[1], places[1])
        return plain(frame, hole, *args)

    monkeypatch.setattr(arm_module, "inpaint", interleaved)
    assert torch.equal(arm.cleared_anchor(frames[0], places[0]), want[0])
    assert torch.equal(seen["second"], want[1])
    assert torch.equal(arm.cleared_anchor(frames[1], places[1]), want[1])  # what the second remembers


def test_inpaint_fills_a_hole_from_its_edge_by_hand():
    """A hole in a flat frame fills with that colour exactly; a hole pixel takes the mean of the
    known pixels in reach (the centre of a 3 x 3 frame whose right column is 1 and the rest 0 gets 3 of
    8); with no reach the frame is returned as it is."""
    flat = torch.full((1, 3, 8, 8), 0.3)
    hole = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    hole[..., 2:6, 2:6] = True
    torch.testing.assert_close(inpaint(flat + hole * 0.5, hole), flat)
    step = torch.zeros(1, 1, 3, 3)
    step[..., 2] = 1.0
    middle = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    middle[..., 1, 1] = True
    assert inpaint(step + middle * 7, middle)[0, 0, 1, 1] == 3 / 8
    assert torch.equal(inpaint(flat + hole * 0.5, hole, reach=0), flat + hole * 0.5)


def test_arm_region_covers_the_bar_and_the_gripper_and_no_more():
    """A bar from (32, -10) down to (32, 30): 4 px either side of it and around the end
    effector and around the point 1 px beyond it, where the fingers are."""
    base, ee = torch.tensor([[32.0, -10.0]]), torch.tensor([[32.0, 30.0]])
    region = arm_region(base, ee, 64, 64)[0, 0]  # [row, column]
    assert region[0, 32] and region[20, 36] and region[30, 32] and region[32, 35] and region[35, 32]
    assert not region[20, 37] and not region[36, 32] and not region[34, 36] and region.sum() < 9 * 44


def test_the_cleared_frame_shows_the_table_where_the_simulated_arm_was():
    """In 8 simulated first frames, the arm's region cleared at its true place is nearer the same
    scene 3 frames later, when the arm has moved 8 px or more, than the uncleared frame, on the
    pixels the arm has left: in 7 of the 8, and by half on average. (Not in all: where the bar lay
    over an object the fill smears the object's colour, and in scene 24 that object was pushed.)"""
    arm, errors = ArmCopy(), []
    for index in range(40):
        seq = simulate(9, index, 0, n_frames=4)
        ee = world_to_px(seq.positions[:, :2].astype(np.float64)) - 0.5
        if np.linalg.norm(ee[3] - ee[0]) < 8 or np.ptp(seq.positions[:4, 2]) > 0 or len(errors) == 8:
            continue
        frames = torch.from_numpy(seq.frames).permute(0, 3, 1, 2).float() / 255
        place = torch.from_numpy(ee[[0]]).float()
        base = arm.base(frames[:1], place)
        left = arm_region(base, place, 64, 64)[0, 0] & ~arm_region(base, torch.from_numpy(ee[[3]]).float(), 64, 64)[0, 0]
        cleared = arm.cleared(frames[:1], frames[:1], place, place)[0]
        errors.append([float((f - frames[3]).abs()[:, left].mean()) for f in (frames[0], cleared)])
    before, after = np.array(errors).T
    assert len(errors) == 8 and (after < before).sum() >= 7 and after.mean() < before.mean() / 2, errors


def test_with_arm_clear_the_previous_frames_arm_does_not_reach_the_prediction():
    """A flat previous frame with a bar drawn where that frame's end effector stands, and the same
    frame without it: the same prediction with ``arm_clear`` (the bar is filled with the table's
    colour), different ones without."""
    from cvae.model.svg import at_rest

    for clear in (True, False):
        model = tiny(output="flow", cond_maps=True, ee_maps=True, ee_copy=True, arm_copy=True, arm_clear=clear).eval()
        x, c = batch(b=1, t=3)
        norm, dec = model.predictor.normalize, model.decoder
        place = dec.ee_map.pixels(norm(at_rest(c[:, 1])), 64, 64)
        base = dec.arm.base(x[:, 1], place)
        table = torch.full_like(x[:, 1], 0.4)
        with_arm = torch.where(arm_region(base, place, 64, 64) & (shaft_map(base, place, 64, 64) > 0.8), 0.1, table)
        assert (with_arm != table).sum() > 20
        h, skips = model.encoder(x[:, 0])
        g = torch.randn(1, model.cfg.g_dim)
        z = torch.zeros(1, model.latent_dim)
        outs = [model._decode(g, skips, prev, c[:, 1], x[:, 1], c[:, 1], z) for prev in (table, with_arm)]
        assert torch.allclose(*outs, atol=1e-6) == clear


def swept_regions(model, x: torch.Tensor, c: torch.Tensor, t: int) -> torch.Tensor:
    """``SVG._swept`` at each future step of a rollout of ``t`` frames from two context frames
    ``x`` [B, >= 2, ...]: bool [B, t - 2, H, W]."""
    swept, regions = None, []
    for i in range(2, t):
        swept = model._swept(swept, x[:, 1], c, i)
        regions.append(swept[:, 0])
    return torch.stack(regions, 1)


def test_with_arm_calm_the_futures_agree_where_the_arm_is_or_has_been():
    """``arm_calm``: at the first future step, each future is the one drawn without it outside the
    arm's region and the noiseless future inside it; at every step the futures agree exactly on
    the region the arm has swept (the context frames' places and each future frame's), and still
    differ elsewhere."""
    from dataclasses import replace

    x, c = batch(b=2, t=6)
    model = calibrated(tiny(output="flow", cond_maps=True, ee_maps=True, ee_copy=True, arm_copy=True, z_map=2))
    free = model.predict(x[:, :2], c, 4, n_samples=3, seed=1)
    model.cfg = replace(model.cfg, z_scale=0.0)
    still = model.predict(x[:, :2], c, 4, n_samples=1, seed=1)
    model.cfg = replace(model.cfg, z_scale=1.0, arm_calm=True)
    calm = model.predict(x[:, :2], c, 4, n_samples=3, seed=1)
    assert calm.shape == free.shape
    region = swept_regions(model, x, c, 6)
    first = region[:, 0, None, None].expand_as(calm[:, :, 0])
    assert 100 < first[:, 0, 0].sum() < first[:, 0, 0].numel() / 2
    torch.testing.assert_close(calm[:, :, 0][~first], free[:, :, 0][~first])
    torch.testing.assert_close(calm[:, :, 0][first], still[:, :, 0].expand_as(calm[:, :, 0])[first])
    spread = calm.std(1).amax(2)  # [B, F, H, W]
    assert spread[region].max() == 0 and spread[~region].max() > 0.01
    assert (region[:, 1:] >= region[:, :-1]).all()  # swept only grows


def test_arm_calm_needs_the_arm_copy():
    with pytest.raises(ConfigError, match="arm_calm needs arm_copy true"):
        tiny(output="flow", ee_maps=True, z_map=2, arm_calm=True)


def test_the_training_terms_draw_calmed_futures_as_predict_does():
    """With ``arm_calm`` the futures the energy score and best of K score (``_prior_futures``) are
    K per scene, agree exactly where the arm has swept, differ elsewhere, and pass gradients to
    the decoder that draws them."""
    x, c = batch(b=2, t=6)
    model = calibrated(tiny(output="flow", cond_maps=True, ee_maps=True, ee_copy=True, arm_copy=True, z_map=2,
                            arm_calm=True))
    torch.manual_seed(3)
    h, skips = model._encode(x[:, :2])
    futures = model._prior_futures(x[:, :2], h, skips, c, 6, 3)
    assert futures.shape == (6, 4, 3, 64, 64)
    swept = swept_regions(model, x, c, 6)[:, -1]
    spread = futures.detach().view(2, 3, 4, 3, 64, 64).std(1)[:, -1].amax(1)  # the last step, [B, H, W]
    assert spread[swept].max() == 0 and spread[~swept].max() > 0.01
    futures.square().mean().backward()
    assert model.decoder.upc5[1].weight.grad.abs().sum() > 0


def test_carry_off_arm_shuts_the_carried_motion_where_the_arm_is():
    """``carry_off_arm``: the carried motion's mask logit is the noise's everywhere but where the
    arm stands at this step (``arm_region`` about the base the latest real frame shows), where it
    is 30 lower, so the arm's own motion is never carried on past where the condition puts it."""
    from cvae.model.heads import carried
    from cvae.model.svg import at_rest

    x, c = batch(b=2, t=3)
    flow = torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(2))
    seen = {}
    for off in (False, True):
        model = tiny(output="flow", cond_maps=True, ee_maps=True, arm_copy=True, z_map=2, flow_carry=True,
                     carry_noise=1.5, carry_off_arm=off).eval()
        forward = model.decoder.head.forward

        def spy(*args, _forward=forward, _off=off, **kw):
            seen[_off] = kw["carry_logit"]
            return _forward(*args, **kw)

        model.decoder.head.forward = spy
        h, skips = model.encoder(x[:, 0])
        z = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            model._decode(h, skips, x[:, 1], c[:, 2], x[:, 1], c[:, 1], z, carry=lambda *_: carried(flow))
    norm, dec = model.predictor.normalize, model.decoder
    region = dec.arm.region(x[:, 1], dec.ee_map.pixels(norm(at_rest(c[:, 1])), 64, 64),
                            dec.ee_map.pixels(norm(c[:, 2]), 64, 64))
    assert 50 < region.sum() < region.numel() / 2
    torch.testing.assert_close(seen[True][~region], seen[False][~region])
    torch.testing.assert_close(seen[True][region], seen[False][region] - 30)
    with pytest.raises(ConfigError, match="carry_off_arm needs flow_carry true and arm_copy true"):
        tiny(output="flow", ee_maps=True, z_map=2, flow_carry=True, carry_noise=1.0, carry_off_arm=True)
