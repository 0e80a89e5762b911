"""The model, its schedules, metrics, checkpoints and the predict API, on tiny CPU tensors."""
import copy
import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from cvae import checkpoint
from cvae.config import Config, preset
from cvae.errors import ConfigError
from cvae.metrics import (
    agreement_gap,
    branching,
    edge_gap,
    energy_score,
    gaussian_blur,
    pixel_std,
    residual_energy_score,
    spread_gap,
)
from cvae.model import SVG
from cvae.model.gaussian import reparameterize
from cvae.model.reference import reference_losses
from cvae.model.svg import FutureTerms
from cvae.schedules import kl_beta, lr_factor, teacher_forcing_ratio

TINY = dict(g_dim=16, z_dim=4, rnn_size=16, width=0.125)


def tiny(**kw) -> SVG:
    torch.manual_seed(0)
    return SVG(**{**TINY, **kw})


def batch(b=2, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, 64, 64, generator=g), torch.randn(b, t, 7, generator=g)


def calibrated(model: SVG) -> SVG:
    """Let batch norm's running statistics see real activations, as training would: an untrained
    model in eval mode (initial statistics) all but ignores its code input."""
    model.train()
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = None  # cumulative average
    with torch.no_grad():
        for seed in range(4):
            model(*batch(b=4, t=12, seed=seed), teacher_forcing=False)
    return model


OPTIONS = list(itertools.product(["fixed", "learned"], [False, True], [0, 8], [True, False]))


@pytest.mark.parametrize("prior,last_frame_skip,cond_embed,teacher_forcing", OPTIONS)
def test_shapes_and_gradients(prior, last_frame_skip, cond_embed, teacher_forcing):
    model = tiny(prior=prior, last_frame_skip=last_frame_skip, cond_embed=cond_embed)
    x, c = batch()
    out = model(x, c, teacher_forcing)
    assert out.pred.shape == (2, 4, 3, 64, 64) and out.mse.shape == (4,) and out.kld.shape == (4,)
    assert (out.kld >= 0).all() and out.pred.min() >= 0 and out.pred.max() <= 1
    (out.mse.sum() + out.kld.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


HEADS = [("image", False, False, False, False, False), ("compose", False, False, False, False, False),
         ("cdna", False, False, False, False, False), ("compose", True, False, False, False, False),
         ("cdna", True, False, False, False, False), ("flow", False, False, False, False, False),
         ("flow", True, True, False, False, False), ("image", False, True, False, False, False),
         ("flow", False, True, True, False, False), ("flow", True, True, False, True, False),
         ("flow", True, True, True, True, False), ("flow", False, False, False, False, True),
         ("flow", True, True, True, True, True)]


@pytest.mark.parametrize("output,cond_maps,ee_maps,ee_copy,ee_sprite,still_copy", HEADS)
@pytest.mark.parametrize("teacher_forcing", [True, False])
@pytest.mark.parametrize("pixel_loss", ["mse", "l1"])
def test_output_heads_shapes_and_gradients(output, cond_maps, ee_maps, ee_copy, ee_sprite, still_copy, teacher_forcing,
                                           pixel_loss):
    model = tiny(output=output, cond_maps=cond_maps, ee_maps=ee_maps, ee_copy=ee_copy, ee_sprite=ee_sprite,
                 still_copy=still_copy, last_frame_skip=True, pixel_loss=pixel_loss)
    x, c = batch()
    out = model(x, c, teacher_forcing)
    assert out.pred.shape == (2, 4, 3, 64, 64) and out.pred.min() >= 0 and out.pred.max() <= 1
    if pixel_loss == "l1":
        torch.testing.assert_close(out.recon, (out.pred - x[:, 1:]).abs().mean((0, 2, 3, 4)))
    else:
        assert out.recon is out.mse
    (out.recon.sum() + out.kld.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize("pixel_loss", ["mse", "l1"])
def test_motion_weight_counts_the_pixels_that_change(pixel_loss):
    """With ``motion_weight`` w, a pixel that changes between true frames counts 1 + w times: by hand,
    on a frame whose top 8 rows change; the training pass trains on that loss (and logs plain MSE)."""
    model = tiny(pixel_loss=pixel_loss, motion_weight=4.0)
    x = torch.full((1, 2, 3, 64, 64), 0.5)
    x[0, 1, :, :8] = 0.9  # 8 of 64 rows change by 0.4 > MOVING_THRESHOLD
    pred = torch.full((1, 1, 3, 64, 64), 0.6)  # 0.1 off where nothing moved, 0.3 where it did
    e = (lambda d: d * d) if pixel_loss == "mse" else (lambda d: d)
    want = (56 * e(0.1) + 8 * 5 * e(0.3)) / 64
    torch.testing.assert_close(model._pixel_loss(pred, x[:, 1:], x[:, :-1]), torch.tensor([[want]]))
    unweighted = tiny(pixel_loss=pixel_loss)._pixel_loss(pred, x[:, 1:], x[:, :-1])
    torch.testing.assert_close(unweighted, torch.tensor([[(56 * e(0.1) + 8 * e(0.3)) / 64]]))
    xs, c = batch()
    out = model(xs, c)
    torch.testing.assert_close(out.recon, model._pixel_loss(out.pred, xs[:, 1:], xs[:, :-1]).mean(0))
    torch.testing.assert_close(out.mse, (out.pred - xs[:, 1:]).pow(2).mean((0, 2, 3, 4)))
    if pixel_loss == "mse":
        assert (out.recon > out.mse).all()
    with pytest.raises(ValueError, match="motion_weight must be a number >= 0"):
        tiny(motion_weight=-1.0)


@pytest.mark.parametrize("output", ["compose", "cdna", "flow"])
def test_compositing_heads_start_near_copy_last(output):
    """The mask starts almost closed: an untrained model predicts nearly the previous frame (of
    smooth, frame-like images), so training starts at copy-last instead of at a grey image. (Three
    frames: within the context the flow head's latest real frame is the previous frame too.)"""
    model = tiny(output=output, cond_maps=True).eval()
    x, c = batch(t=3)
    x = torch.nn.functional.interpolate(x[..., :8, :8].flatten(0, 1), size=64, mode="bilinear").view_as(x)
    pred = model(x, c, teacher_forcing=True).pred
    image = tiny(cond_maps=True).eval()(x, c, teacher_forcing=True).pred
    to_prev = (pred - x[:, :-1]).abs().mean()
    assert to_prev < 0.1 * (image - x[:, :-1]).abs().mean()


def test_cdna_kernels_move_the_previous_frame():
    from cvae.model.heads import CDNA_SIZE, move

    prev = torch.rand(2, 3, 16, 16)
    kernels = torch.zeros(2, 2, CDNA_SIZE, CDNA_SIZE)
    kernels[:, 0, 2, 2] = 1  # identity
    kernels[0, 1, 2, 1] = 1  # sample 0: take the pixel to the left, i.e. shift right by one
    kernels[1, 1, 1, 2] = 1  # sample 1: shift down by one
    moved = move(prev, kernels)
    assert moved.shape == (2, 2, 3, 16, 16)
    torch.testing.assert_close(moved[:, 0], prev)
    torch.testing.assert_close(moved[0, 1, :, :, 1:], prev[0, :, :, :-1])
    torch.testing.assert_close(moved[1, 1, :, 1:], prev[1, :, :-1])


def test_flow_warp_moves_by_whole_and_fractional_pixels():
    from cvae.model.heads import warp

    frame = torch.rand(2, 3, 16, 16)
    flow = torch.zeros(2, 2, 16, 16)
    torch.testing.assert_close(warp(frame, flow), frame)
    flow[0, 0] = -3  # sample 0: each pixel takes the one 3 to its left: the image moves right by 3
    flow[1, 1] = 2  # sample 1: each pixel takes the one 2 below: the image moves up by 2
    moved = warp(frame, flow)
    torch.testing.assert_close(moved[0, :, :, 3:], frame[0, :, :, :-3])
    torch.testing.assert_close(moved[1, :, :-2], frame[1, :, 2:])
    flow = torch.full((2, 2, 16, 16), 0.5)
    flow[:, 1] = 0  # half a pixel to the right: the average of neighbours
    torch.testing.assert_close(warp(frame, flow)[..., :-1], (frame[..., :-1] + frame[..., 1:]) / 2)


def test_flow_head_moves_the_frame_farther_than_cdna_can():
    """A displacement of 6 px (CDNA's 5x5 kernels reach 2) reproduces a shifted frame exactly."""
    from cvae.model.heads import FlowHead

    head = FlowHead(g_dim=8)
    prev = torch.rand(1, 3, 32, 32)
    out = torch.zeros(1, 3 + head.extra, 32, 32)
    out[:, 3] = -6  # previous frame's flow, x: take from 6 px to the left
    out[:, 8] = 20  # the mask picks the moved previous frame
    frame = head(out, prev, torch.zeros_like(prev), torch.zeros(1, 8))
    torch.testing.assert_close(frame[..., 6:], prev[..., :-6], atol=1e-6, rtol=0)


def test_a_rigid_layer_carries_an_object_whole():
    """A rigid layer moves its pixels and its mask together by one displacement: a square the
    layer marks where it is in the previous frame lands 3 px to the right, whole (its shape and
    area kept), while a dense flow that changes from 3 px on the square to 0 off it over a few
    pixels stretches the square's edge into a ramp."""
    from cvae.model.heads import FlowHead

    head = FlowHead(g_dim=8, rigid=1)
    assert head.sources[-1] == "rigid 0"
    prev = torch.zeros(1, 3, 32, 32)
    prev[..., 10:16, 10:16] = 1.0
    out = torch.zeros(1, 3 + head.extra, 32, 32)
    out[:, :3] = -30  # the generated image is black, as the table here
    out[:, 7] = 10  # the mask takes it everywhere ...
    out[:, -1] = torch.where(prev[:, 0] > 0, 30.0, -30.0)  # ... but where the layer marks the square
    shift = torch.tensor([[[-3.0, 0.0]]])  # backward: each pixel takes the layer from 3 px to its left
    frame = head(out, prev, torch.zeros_like(prev), torch.zeros(1, 8), rigid=shift)
    expected = torch.zeros_like(prev)
    expected[..., 10:16, 13:19] = 1.0
    torch.testing.assert_close(frame, expected, atol=1e-4, rtol=0)  # the other sources keep e^-10 each
    dense = torch.zeros(1, 3 + head.extra, 32, 32)
    blob = gaussian_blur(prev[:, :1], 1.5)
    dense[:, 3] = -3 * blob[:, 0] / blob.amax()
    dense[:, 8] = 30  # the moved previous frame everywhere: a smooth flow that peaks at 3 px on the square
    smeared = head(dense, prev, torch.zeros_like(prev), torch.zeros(1, 8), rigid=shift)
    assert ((smeared > 0.05) & (smeared < 0.95)).sum() > 12 and ((frame > 0.05) & (frame < 0.95)).sum() == 0
    with pytest.raises(ValueError, match="1 rigid layers: pass their shifts"):
        head(out, prev, torch.zeros_like(prev), torch.zeros(1, 8))


def test_noise_flow_moves_what_moves_farther_and_leaves_still_pixels():
    """The head multiplies its displacements by the gain after the dead zone: a square moved 2 px
    lands 3 px over at gain 1.5, while the still half of the frame, inside the dead zone, stays
    exactly as it was, whatever the gain. The decoder's gain is 1 + S x the spatial latent's
    first channel, and its other channels do not touch it. ``noise_shift`` adds S px x the first
    two channels to the previous frame's displacement instead, still pixels included."""
    from cvae.model.heads import FlowHead

    head = FlowHead(g_dim=8, deadzone=0.5)
    prev = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prev[..., 10:16, 2:8] = 1.0
    out = torch.zeros(1, 3 + head.extra, 32, 32)
    out[:, 3, :, :16] = -2.0  # backward: the left half takes the previous frame from 2 px to its left
    out[:, 3, :, 16:] = 0.3  # the right half's bleed, inside the dead zone
    out[:, 8] = 30  # the mask takes the moved previous frame everywhere
    moved = head(out, prev, prev, torch.zeros(1, 8), gain=torch.full((1, 1, 32, 32), 1.5))
    want = torch.zeros_like(prev)
    want[..., 10:16, 5:11] = 1.0
    torch.testing.assert_close(moved[..., 10:16, 5:11], want[..., 10:16, 5:11], atol=1e-4, rtol=0)
    torch.testing.assert_close(moved[..., 16:], prev[..., 16:], atol=1e-4, rtol=0)  # e^-30 from the others

    model = tiny(output="flow", z_map=2).eval()
    with torch.no_grad():
        model.decoder.upc5[1].bias[3:7] = 1.0  # displacements of about a pixel everywhere
    x, _ = batch()
    h, skips = model.encoder(x[:, 0])
    zmap = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))

    def decode(first: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        model.decoder.noise_flow = scale
        z = zmap.clone()
        z[:, 0] = first
        with torch.no_grad():
            frame, (_, disp) = model.decoder(h, skips, x[:, 1], None, x[:, 1], zmap=z, moved=True)
        return frame, disp

    frame, disp = decode(0.4, 0.0)
    scaled, scaled_disp = decode(0.4, 0.5)
    torch.testing.assert_close(scaled_disp, 1.2 * disp)
    assert (scaled - frame).abs().mean() > 1e-3
    torch.testing.assert_close(decode(0.0, 0.5)[0], decode(0.0, 0.0)[0])  # the first channel at 0: no change
    with pytest.raises(ConfigError, match="noise_flow needs z_map > 0"):
        tiny(output="flow", noise_flow=0.5)

    model.decoder.noise_flow = 0.0
    with torch.no_grad():
        _, (_, plain) = model.decoder(h, skips, x[:, 1], None, x[:, 1], zmap=zmap, moved=True)
        model.decoder.noise_shift = 2.0
        _, (_, shifted) = model.decoder(h, skips, x[:, 1], None, x[:, 1], zmap=zmap, moved=True)
    up = torch.nn.functional.interpolate(zmap, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(shifted - plain, 2.0 * up)
    with pytest.raises(ConfigError, match="noise_shift needs z_map >= 2"):
        tiny(output="flow", z_map=1, noise_shift=1.0)


def test_carried_motion_glides_an_object_on_and_the_mask_can_stop_it():
    """``carried`` splats each displacement to where its pixel goes next: a still field stays 0, a
    wide one stays as it is, and a square the step before moved 2 px right is carried 2 px on,
    in front of the still table it moves over. The head's carried source moves the previous
    frame by it, so the square goes on where the mask takes that source, and stays where the mask
    takes the previous frame unmoved: one choice per pixel between gliding and stopping. In a
    model the carry is the head's own displacement of the step before, the same teacher-forced
    (each row from the row before) as rolled out, and 0 at the first step."""
    from cvae.model.heads import FlowHead, carried, carry_from_row_before, warp

    assert carried(torch.zeros(1, 2, 16, 16)).abs().max() == 0
    wide = torch.zeros(1, 2, 16, 16)
    wide[:, 0] = -2.0  # everything moved 2 px right
    torch.testing.assert_close(carried(wide)[..., 2:], wide[..., 2:])  # the first 2 columns: nothing lands there
    pushed = torch.zeros(1, 2, 16, 16)
    pushed[:, 0, 4:10, 4:8] = -2.0  # the square at columns 4-7 took the frame from 2 px left: it moved right
    on = carried(pushed)
    assert torch.equal(on[:, 0, 4:10, 6:8], torch.full((6, 2), -2.0)[None])
    assert (on[:, 0, 4:10, 8:10] < -1.8).all() and on[..., :, :6].abs().max() == 0 and on[..., 10:].abs().max() == 0

    head = FlowHead(g_dim=8, flow_carry=True)
    carry = head.sources.index("flow_carry")
    prev = torch.zeros(1, 3, 16, 16)
    prev[..., 4:10, 4:8] = 1.0
    out = torch.zeros(1, 3 + head.extra, 16, 16)
    out[:, 7 + carry] = 30  # the mask takes the carried source everywhere
    glided = head(out, prev, prev, torch.zeros(1, 8), carry=lambda *_: carried(pushed))
    assert (glided[..., 4:10, 6:9] > 0.99).all() and glided[..., 10:].abs().max() < 1e-4
    out[:, 7 + carry, :, 8:] = 0  # ... except where it would glide to: the moved previous frame (not moved) there
    out[:, 8, :, 8:] = 30
    stopped = head(out, prev, prev, torch.zeros(1, 8), carry=lambda *_: carried(pushed))
    assert stopped[..., 8:].abs().max() < 1e-4 and (stopped[..., 4:10, 6:8] > 0.99).all()
    with pytest.raises(ValueError, match="pass carry"):
        head(out, prev, prev, torch.zeros(1, 8))

    rows = torch.randn(6, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    before = carry_from_row_before(3)(rows)
    assert before[0].abs().max() == 0 and before[3].abs().max() == 0
    torch.testing.assert_close(before[1:3], carried(rows[0:2]))
    torch.testing.assert_close(before[4:6], carried(rows[3:5]))

    model = tiny(output="flow", flow_carry=True)
    last = model.decoder.upc5[1]
    with torch.no_grad():
        last.weight[:, 3:7] = 0
        last.bias[3:7] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # the head moves the previous frame 1 px, everywhere
        last.bias[7 + carry] = 30  # and its mask (logits from channel 3 + 4) takes the carried source
    x, cond = batch(t=4)
    one_on = warp(x[:, 1], carried(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(2, 2, 64, 64)))
    forced = model(x, cond, teacher_forcing=True).pred
    torch.testing.assert_close(forced[:, 0], x[:, 0], atol=1e-4, rtol=0)  # the first step carries nothing
    torch.testing.assert_close(forced[:, 1], one_on, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.predict(x[:, :2], cond, n_future=1)[:, 0, 0], one_on, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="flow_carry needs output 'flow'"):
        tiny(output="cdna", flow_carry=True)


def half_carried(model: SVG, px: float) -> SVG:
    """``model`` whose flow head moves the previous frame ``px`` to the right everywhere and whose
    mask takes that and the carried source, half each."""
    k = model.decoder.head.sources.index("flow_carry")
    last = model.decoder.upc5[1]
    with torch.no_grad():
        last.weight[:, 3:] = 0
        last.bias[3:7] = torch.tensor([px, 0.0, 0.0, 0.0])
        last.bias[7:] = -30
        last.bias[8] = last.bias[7 + k] = 0
    return model


def test_carry_shown_carries_on_the_glide_the_mask_chose():
    """Without ``carry_shown`` the carried motion is the head's own displacement of the step
    before, so where the mask took a glide once and the head's own flow is 0, the glide stops
    after one step; with it, what the frame showed is carried on and the square keeps gliding.
    The teacher-forced rows and the closed-loop steps carry the same, and the share is the
    carried source's of the two sources from the previous frame."""
    from cvae.model.heads import FlowHead, StepCarry, carried, carry_from_row_before, shown, warp

    push = torch.zeros(1, 2, 16, 16)
    push[:, 0, 4:10, 2:6] = -2.0  # the square moved 2 px right; then the head's own flow is 0
    rows = torch.cat([push, torch.zeros(3, 2, 16, 16)])
    share = torch.tensor([0.0, 1.0, 1.0, 1.0]).view(4, 1, 1, 1).expand(4, 1, 16, 16)  # then the glide is taken
    own = carry_from_row_before(4)(rows)
    assert own[2:].abs().max() == 0  # the head's own flow of step 1 is 0: nothing left to carry
    on = carry_from_row_before(4)(rows, share)
    torch.testing.assert_close(on[1], carried(push)[0])
    torch.testing.assert_close(on[2], carried(carried(push))[0])
    assert (on[3, 0, 4:10, 8:12] < -1.6).all() and on[3, 0, :, :8].abs().max() == 0  # 3 steps on: 6 px farther
    steps, before = [], None
    for r in range(4):  # the closed loop, one step at a time
        step = StepCarry(before)
        steps.append(step(rows[r : r + 1], share[r : r + 1]))
        before = step.shown
    torch.testing.assert_close(torch.cat(steps), on)
    half = torch.full((1, 1, 16, 16), 0.5)
    torch.testing.assert_close(shown(push, torch.ones_like(push), half), 0.5 * push + 0.5)
    assert shown(push, torch.ones_like(push), None) is push

    head = FlowHead(g_dim=8, flow_carry=True, carry_shown=True)
    k = head.sources.index("flow_carry")
    mask = torch.rand(2, len(head.sources), 16, 16, generator=torch.Generator().manual_seed(0)).softmax(1)
    torch.testing.assert_close(head.carry_share(mask), mask[:, k : k + 1] / (mask[:, 1:2] + mask[:, k : k + 1]))
    assert FlowHead(g_dim=8, flow_carry=True).carry_share(mask) is None
    with pytest.raises(ConfigError, match="carry_shown needs flow_carry true"):
        tiny(output="flow", carry_shown=True)

    model = half_carried(tiny(output="flow", flow_carry=True, carry_shown=True), 1.0)
    x, cond = batch(t=5)
    forced = model(x, cond, teacher_forcing=True).pred
    shift = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(2, 2, 64, 64)
    third_on = carried(0.5 * shift + 0.5 * carried(0.5 * shift))  # steps shown: 0.5 px (0 carried), then 0.75
    torch.testing.assert_close(forced[:, 2], 0.5 * warp(x[:, 2], shift) + 0.5 * warp(x[:, 2], third_on),
                               atol=1e-4, rtol=0)
    rolled = model.predict(x[:, :2], cond, n_future=2)[:, 0]  # the closed loop carries the same on its own frames
    torch.testing.assert_close(rolled[:, 0], forced[:, 1], atol=1e-4, rtol=0)
    torch.testing.assert_close(rolled[:, 1], 0.5 * warp(rolled[:, 0], shift) + 0.5 * warp(rolled[:, 0], third_on),
                               atol=1e-4, rtol=0)


def test_carry_pool_glides_an_object_on_whole():
    """The bilinear splats of ``carried`` leave a glide's edge shorter than its middle, so the
    dense field stretches the square it carries by a pixel; ``pooled`` evens it over the moving
    piece and a margin, and the square moves on with its own area. Far from anything moving and
    where nothing moves more than CARRY_MOVING the field is 0. A model with ``carry_pool``
    carries the same teacher-forced as rolled out, and export may set it (it changes no weight)."""
    from cvae.model.heads import CARRY_MOVING, carried, pooled, warp

    prev = torch.zeros(1, 3, 32, 32)
    prev[..., 10:16, 8:14] = 1.0
    push = torch.zeros(1, 2, 32, 32)
    push[:, 0, 10:16, 8:14] = -2.0  # the square moved 2 px right, its edges' pixels (as a splat leaves them) 1
    push[:, 0, 10:16, 8] = push[:, 0, 10:16, 13] = -1.0
    on = carried(push)
    dense, even = warp(prev, on), warp(prev, pooled(on, 3))
    assert dense.sum() > 1.1 * prev.sum()  # stretched
    assert abs(even.sum() - prev.sum()) < 0.03 * prev.sum()  # whole
    cols = torch.arange(32.0)
    shift = (even[0, 0] * cols).sum() / even[0, 0].sum() - (prev[0, 0] * cols).sum() / prev[0, 0].sum()
    assert 1.5 < shift < 2.1
    assert pooled(on, 3)[..., :, 22:].abs().max() == 0 and pooled(on, 3)[..., :5, :].abs().max() == 0
    assert pooled(torch.full((1, 2, 8, 8), CARRY_MOVING / 2), 2).abs().max() == 0
    assert torch.equal(pooled(on, 0), on)

    x, cond = batch(t=5)
    runs = {}
    for pool in (0, 2):
        model = half_carried(tiny(output="flow", flow_carry=True, carry_shown=True, carry_pool=pool), 2.0)
        forced = model(x, cond, teacher_forcing=True).pred
        rolled = model.predict(x[:, :2], cond, n_future=2)[:, 0]
        torch.testing.assert_close(rolled[:, 0], forced[:, 1], atol=1e-4, rtol=0)
        runs[pool] = forced
    # the uniform field is evened to itself; only near the right edge, where the carried motion
    # leaves columns nothing lands on, does the evening differ (by a few px a step)
    torch.testing.assert_close(runs[2][:, 2, ..., :40], runs[0][:, 2, ..., :40], atol=1e-4, rtol=0)
    assert not torch.allclose(runs[2][:, 2], runs[0][:, 2], atol=1e-3)
    with pytest.raises(ConfigError, match="carry_pool needs flow_carry"):
        tiny(output="flow", carry_pool=2)
    with pytest.raises(ConfigError, match="carry_pool must be a whole number"):
        tiny(output="flow", flow_carry=True, carry_pool=1.5)


@pytest.mark.parametrize("source", [None, "ee_copy", "ee_sprite", "arm_copy", "push_copy"])
def test_the_end_effector_map_is_exact_where_a_source_places_pixels_by_it(source):
    """One definition (``ModelConfig.ee_map_exact``) decides the model's map and whether a grown
    model calibrates it (``train.initialize``): clamped where a source puts pixels at its place,
    tanh-bounded for a heat map alone."""
    model = tiny(output="flow", ee_maps=True, **({source: True} if source else {}))
    assert model.decoder.ee_map.exact == model.cfg.ee_map_exact == (source is not None)


def test_push_copy_moves_what_the_gripper_pushes_whole_and_the_glide_carries_it_on():
    """``push_flow`` moves what lies within PUSH_RADIUS px of the gripper's new place by its step
    and fades to 0 over PUSH_EDGE px beyond; the head's push copy is the previous frame moved so,
    a square beside the gripper goes whole as far as the gripper went, one farther off stays. What
    a frame showed mixes the push by its share, so with ``carry_shown`` a glide carries on at the
    pushed speed. A model grown with it starts its logit as the moved previous frame's, as the
    carried motion's, and trains and predicts with it."""
    from cvae.model.cues import PUSH_EDGE, PUSH_RADIUS, push_flow
    from cvae.model.heads import RIGID_OFFSET, FlowHead
    from cvae.model.vgg64 import grown

    src, dst = torch.tensor([[20.0, 30.0]]), torch.tensor([[23.0, 30.0]])  # (x, y): 3 px right
    flow = push_flow(src, dst, 64, 64)
    assert torch.equal(flow[0, :, 30, 23], torch.tensor([-3.0, 0.0]))  # at the gripper: take from 3 px left
    assert torch.equal(flow[0, :, 30, 23 + int(PUSH_RADIUS)], torch.tensor([-3.0, 0.0]))
    torch.testing.assert_close(flow[0, 0, 30, 23 + int(PUSH_RADIUS + PUSH_EDGE / 2)], torch.tensor(-1.5))
    assert flow[0, :, :, 23 + int(PUSH_RADIUS + PUSH_EDGE):].abs().max() == 0 and flow[0, 1].abs().max() == 0

    head = FlowHead(g_dim=8, push_copy=True)
    k = head.sources.index("push_copy")
    prev = torch.zeros(1, 3, 64, 64)
    prev[..., 28:33, 24:29] = 1.0  # a square just right of the gripper, which pushes it right
    prev[..., 5:9, 50:54] = 1.0  # and one far off
    out = torch.zeros(1, 3 + head.extra, 64, 64)
    out[:, 7 + k] = 30  # the mask takes the push copy everywhere
    pushed = head(out, prev, prev, torch.zeros(1, 8), push=flow)
    assert (pushed[..., 28:33, 27:32] > 0.99).all() and pushed[..., 28:33, 24:27].abs().max() < 1e-4
    torch.testing.assert_close(pushed[..., :20, :], prev[..., :20, :])
    with pytest.raises(ValueError, match="pass push"):
        head(out, prev, prev, torch.zeros(1, 8))

    head = FlowHead(g_dim=8, flow_carry=True, carry_shown=True, push_copy=True)
    p, c = head.sources.index("push_copy"), head.sources.index("flow_carry")
    mask = torch.zeros(1, len(head.sources), 64, 64)
    mask[:, 1], mask[:, p], mask[:, c] = 0.2, 0.6, 0.2
    own = head.own_motion(mask, torch.zeros(1, 2, 64, 64), flow)
    torch.testing.assert_close(own, 0.75 * flow)  # the push's share of the two the head moves itself
    torch.testing.assert_close(head.carry_share(mask), torch.full((1, 1, 64, 64), 0.2))
    assert FlowHead(g_dim=8, flow_carry=True).own_motion(mask[:, :5], flow, None) is flow

    fresh = tiny(output="flow", ee_maps=True, push_copy=True, flow_carry=True, carry_shown=True)
    ch = fresh.decoder.head.push_channel
    bias = fresh.decoder.upc5[1].bias
    assert bias[ch] == bias[3 + 5] + RIGID_OFFSET  # started as the moved previous frame's
    old = tiny(output="flow", ee_maps=True, flow_carry=True, carry_shown=True)
    assert fresh.decoder.ee_map.exact and not old.decoder.ee_map.exact  # it places pixels where the map says
    state = grown(old.state_dict(), fresh.state_dict(), moved=fresh.decoder.head.started_as_moved())
    fresh.load_state_dict(state)
    w = "decoder.upc5.1.weight"
    assert torch.equal(state[w][:, :-1], old.state_dict()[w]) and torch.equal(state[w][:, ch], state[w][:, 3 + 5])
    x, cond = batch(t=4)
    loss = fresh(x, cond, teacher_forcing=True).recon.sum()
    loss.backward()
    assert torch.isfinite(loss) and fresh.decoder.upc5[1].weight.grad[:, ch].abs().sum() > 0
    assert fresh.predict(x[:, :2], cond, n_future=2).shape == (2, 1, 2, 3, 64, 64)
    with pytest.raises(ConfigError, match="push_copy needs output 'flow' and ee_maps true"):
        tiny(output="flow", push_copy=True)


def test_carry_noise_moves_the_carried_motions_mask_logit_by_the_latent():
    """The decoder hands the head S x the spatial latent's first channel, upsampled, and the head
    adds it to the carried motion's mask logit alone: the same frame as that logit raised by
    hand, and a different one for another draw of the latent."""
    from cvae.model.heads import carried

    model = tiny(output="flow", z_map=2, flow_carry=True, carry_noise=1.5).eval()
    head = model.decoder.head
    seen = {}
    forward = head.forward

    def spy(*args, **kw):
        seen.update(kw)
        return forward(*args, **kw)

    head.forward = spy
    x, _ = batch()
    h, skips = model.encoder(x[:, 0])
    zmap = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    flow = torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        frame = model.decoder(h, skips, x[:, 1], None, x[:, 1], zmap=zmap, carry=lambda *_: carried(flow))
        other = model.decoder(h, skips, x[:, 1], None, x[:, 1], zmap=-zmap, carry=lambda *_: carried(flow))
    up = torch.nn.functional.interpolate(zmap[:, :1], size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen["carry_logit"], -1.5 * up)
    assert (frame - other).abs().mean() > 1e-4
    out = torch.randn(1, 3 + head.extra, 16, 16, generator=torch.Generator().manual_seed(3))
    prev = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    logit = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    raised = out.clone()
    raised[:, 3 + 4 + head.sources.index("flow_carry")] += logit[:, 0]
    move = torch.full((1, 2, 16, 16), 1.0)
    torch.testing.assert_close(forward(out, prev, prev, None, carry=lambda *_: move, carry_logit=logit),
                               forward(raised, prev, prev, None, carry=lambda *_: move))
    with pytest.raises(ConfigError, match="carry_noise needs z_map > 0 and flow_carry true"):
        tiny(output="flow", z_map=2, carry_noise=1.0)


@pytest.mark.parametrize("prior", ["fixed", "learned"])
def test_glide_noise_only_lets_a_future_differ_only_where_it_glides(prior):
    """With ``glide_noise_only`` a prior future's noise reaches the frames through the carried
    motion's mask logit alone: where the mask cannot take the carried source (its logit held far
    down) every future is the same, which they are not when the noise reaches the decoder's
    features too; where it can, futures still differ. The context steps are untouched."""
    x, cond = batch(t=5)
    futures = {}
    for only, closed in itertools.product((False, True), (False, True)):
        model = tiny(output="flow", z_map=2, flow_carry=True, carry_noise=1.5, prior=prior, glide_noise_only=only)
        k = model.decoder.head.sources.index("flow_carry")
        if closed:
            with torch.no_grad():
                model.decoder.upc5[1].bias[7 + k] = -1e4
        futures[only, closed] = calibrated(model).eval().predict(x[:, :2], cond, n_future=3, n_samples=3, seed=0)
    for only, closed in futures:
        f = futures[only, closed]
        spread = (f - f[:, :1]).abs().amax()
        assert (spread < 1e-4) == (only and closed), (only, closed, spread)
    with pytest.raises(ConfigError, match="glide_noise_only needs carry_noise > 0"):
        tiny(output="flow", z_map=2, flow_carry=True, glide_noise_only=True)


def test_rigid_layers_grow_in_as_they_were_and_read_the_spatial_latent():
    """``grown`` adds each layer's mask channel as a copy of the moved previous frame's, its
    logit 2 less; the layers' shifts start apart (or they would learn alike). Unmoved, a layer
    is the previous frame, which the old model's mix mostly took already, so the grown model's
    frames stay within 0.05 of the old ones; with the layers' shifts set, the frames change,
    and a shift, computed after the spatial latent, differs between two draws of it (the
    latent's noise alone: ``map_noise_only``)."""
    from cvae.model.heads import RIGID_OFFSET
    from cvae.model.vgg64 import grown

    kw = dict(output="flow", cond_maps=True, ee_maps=True, ee_copy=True, z_map=2, map_noise_only=True)
    old = calibrated(tiny(**kw)).eval()
    big = tiny(**kw, rigid_layers=2).eval()
    big.load_state_dict(grown(old.state_dict(), big.state_dict(), moved=big.decoder.head.started_as_moved()))
    last, moved_previous = big.decoder.upc5[1], 3 + 5
    assert torch.equal(last.weight[:, -2:], last.weight[:, moved_previous : moved_previous + 1].expand(-1, 2, -1, -1))
    assert torch.equal(last.bias[-2:], (last.bias[moved_previous] + RIGID_OFFSET).expand(2))
    fc = big.decoder.rigid.fc
    assert (fc.weight[:2] - fc.weight[2:]).abs().min() > 0 and fc.bias.abs().max() == 0
    x, cond = batch(t=6)
    before = old.predict(x[:, :2], cond, n_future=4, seed=3)
    started = big.predict(x[:, :2], cond, n_future=4, seed=3)
    with torch.no_grad():
        weight = fc.weight.clone()
        fc.weight.zero_()
    assert (big.predict(x[:, :2], cond, n_future=4, seed=3) - before).abs().max() < 0.05
    with torch.no_grad():
        fc.weight.copy_(weight)
    assert torch.equal(big.predict(x[:, :2], cond, n_future=4, seed=3), started)
    with torch.no_grad():
        fc.bias.fill_(2.5)
        big.decoder.upc2[0][0].weight[:, -2:].normal_(0, 0.3, generator=torch.Generator().manual_seed(4))
    assert (big.predict(x[:, :2], cond, n_future=4, seed=3) - before).abs().mean() > 0.01

    def shifts(seed: int) -> torch.Tensor:
        seen = []
        hook = big.decoder.rigid.register_forward_hook(lambda module, args, out: seen.append(out))
        big.predict(x[:, :2], cond, n_future=4, seed=seed)
        hook.remove()
        return torch.cat(seen)

    assert torch.equal(shifts(3), shifts(3)) and (shifts(3) - shifts(4)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="rigid_layers must be a whole number from 0 to 4"):
        tiny(**kw, rigid_layers=5)
    with pytest.raises(ConfigError, match="rigid_layers needs output 'flow'"):
        tiny(output="cdna", rigid_layers=1)


def test_end_effector_map_peaks_where_its_location_says():
    from cvae.model.cues import EndEffectorMap

    cue = EndEffectorMap(7)
    with torch.no_grad():
        cue.where.weight.zero_()
        cue.where.bias.copy_(torch.atanh(torch.tensor([0.5, -0.25])))  # row 0.5, column -0.25
    heat = cue(torch.randn(3, 7), 64, 64)
    assert heat.shape == (3, 1, 64, 64)
    peak = heat[0, 0].flatten().argmax()
    row, col = divmod(int(peak), 64)
    assert abs(row - (0.5 + 1) / 2 * 63) <= 1 and abs(col - (-0.25 + 1) / 2 * 63) <= 1
    assert heat.max() <= 1 and heat[0, 0, 0, 63] < 1e-3


def test_decoded_place_by_hand():
    """The decoder draws frame t + 1 from frame t's condition: the place is the position moved by
    the action, in the maps' [-1, 1] coordinates (pixel centres 0 and 63 at -1 and 1)."""
    from cvae.kinematics import GAIN, X_RANGE, Y_RANGE, decoded_place, px_to_world

    centre = px_to_world(np.array([32.0, 32.0]))  # pixel coordinate 32: the image's middle
    still = np.array([[0, 0, 0, 0, *centre, 0.2]])
    np.testing.assert_allclose(decoded_place(still), [[0, 0]], atol=1e-9)
    pushed = np.array([[0.07, -0.05, 0, 0, *centre, 0.2]])  # x grows with rows, y with columns
    rows, cols = GAIN * 0.07 * 64 / np.ptp(X_RANGE), GAIN * -0.05 * 64 / np.ptp(Y_RANGE)
    np.testing.assert_allclose(decoded_place(pushed), [[rows * 2 / 63, cols * 2 / 63]], atol=1e-9)
    corner = np.array([[-0.07, -0.07, 0, 0, *px_to_world(np.array([5.0, 5.0])), 0.2]])  # clipped at the margin
    np.testing.assert_allclose(decoded_place(corner), [[(5 - 32) * 2 / 63] * 2], atol=1e-9)


@pytest.mark.parametrize("exact", [False, True])
def test_end_effector_map_calibrates_onto_the_kinematics(exact):
    """A fresh map puts its blob anywhere; calibrated on conditions with known kinematics, it lands
    within a couple of pixels of the end effector on conditions it was not fitted on (under tanh),
    or on it, edges included, with the clamped place (``exact``: what the end-effector copy uses),
    also at rest (the actions zeroed: where the end effector is in that frame)."""
    from cvae.kinematics import decoded_place, place_error_px, px_to_world
    from cvae.model.cues import EndEffectorMap

    rng = np.random.default_rng(0)

    def conditions(n):
        xy = px_to_world(rng.uniform(5, 59, (n, 2)))
        return np.c_[rng.uniform(-0.07, 0.07, (n, 2)), rng.integers(0, 2, (n, 2)), xy, np.full(n, 0.2)]

    fit, held_out = conditions(4000), conditions(1000)
    mean, std = fit.mean(0), fit.std(0) + 1e-9

    def miss_px(cue, cond):
        loc = cue.location(torch.tensor((cond - mean) / std, dtype=torch.float32)).detach().numpy()
        return place_error_px(loc, decoded_place(cond))

    torch.manual_seed(0)
    cue = EndEffectorMap(7, exact=exact)
    assert np.median(miss_px(cue, held_out)) > 10
    cue.calibrate(torch.tensor((fit - mean) / std), torch.tensor(decoded_place(fit)))
    miss = miss_px(cue, held_out)
    if not exact:
        assert np.median(miss) < 1.5 and miss.max() < 5
        return
    from cvae.model.svg import at_rest

    edge = held_out.copy()
    edge[:, 4:6] = px_to_world(np.full((1000, 2), 58.5))  # pushed further out: stopped at the workspace's edge
    assert miss.max() < 0.01 and miss_px(cue, edge).max() < 0.01
    assert miss_px(cue, at_rest(torch.from_numpy(held_out)).numpy()).max() < 0.01


def test_end_effector_map_calibrates_to_the_same_bits_wherever_its_inputs_lie():
    """A run that freezes the calibrated place resumes exactly only if calibration repeats to the
    last bit; LAPACK's tall least squares did not (its rounding followed where buffers landed)."""
    from cvae.kinematics import decoded_place, px_to_world
    from cvae.model.cues import EndEffectorMap

    rng = np.random.default_rng(1)
    n = 3000
    cond = np.c_[rng.uniform(-0.07, 0.07, (n, 2)), rng.integers(0, 2, (n, 2)),
                 px_to_world(rng.uniform(0, 64, (n, 2))), np.full(n, 0.2)]  # some stopped at the edges
    norm = torch.tensor((cond - cond.mean(0)) / (cond.std(0) + 1e-9), dtype=torch.float32)
    place = torch.tensor(decoded_place(cond))
    fits = []
    for shift in range(12):
        ballast = [torch.empty(shift * 7 + 1) for _ in range(3)]  # moves where calibrate's buffers land
        cue = EndEffectorMap(7, exact=True)
        cue.calibrate(norm.clone(), place.clone())
        fits.append(torch.cat([cue.where.weight.flatten(), cue.where.bias, cue.lo, cue.hi]))
        del ballast
    assert all(torch.equal(fits[0], f) for f in fits[1:])


@pytest.mark.parametrize("output", ["cdna", "flow"])
def test_a_model_grows_an_end_effector_map_without_changing_its_predictions(output):
    """``grown``: a model without the map, grown into one with it, predicts exactly what it did
    (the map's channel starts with zero weights), and reads the map once those weights move."""
    from cvae.model.vgg64 import grown

    old = calibrated(tiny(output=output, cond_maps=True, ee_maps=False)).eval()
    big = tiny(output=output, cond_maps=True, ee_maps=True)
    big.load_state_dict(grown(old.state_dict(), big.state_dict()))
    x, cond = batch(t=6)
    before = old.predict(x[:, :2], cond, n_future=4, seed=3)
    torch.testing.assert_close(big.predict(x[:, :2], cond, n_future=4, seed=3), before, atol=1e-6, rtol=0)
    with torch.no_grad():
        big.decoder.upc5[0][0].weight[:, -1] = 1.0
    assert (big.predict(x[:, :2], cond, n_future=4, seed=3) - before).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"decoder.upc2.0.0.weight: shape .* does not grow"):
        grown(tiny(output=output, cond_maps=False).state_dict(), big.state_dict())
    with pytest.raises(ValueError, match="is missing"):
        grown({k: v for k, v in old.state_dict().items() if "encoder.c1" not in k}, big.state_dict())


def test_the_spatial_latent_acts_near_its_cell_and_the_vector_z_everywhere():
    """``z_map``: two futures whose noise differs in one cell of the spatial latent (the top-left
    of the 8 x 8 grid) differ in the first predicted frame near that cell and are identical far from
    it (the decoder's receptive field reaches 51 px), where a change of the vector z moves every
    pixel: so noise can act at one object and leave the rest of the frame alone."""
    model = calibrated(tiny(output="flow", cond_maps=True, z_map=2)).eval()
    x, cond = batch(b=1, t=6)
    noise = torch.randn(1, 5, model.latent_dim).expand(3, -1, -1).clone()
    noise[1, :, model.z_dim] += 10.0  # map channel 0, cell (0, 0)
    noise[2, :, 0] += 10.0  # the vector z
    with torch.no_grad():
        h, skips = model._encode(x[:, :2].expand(3, -1, -1, -1, -1))
        pred, _ = model._rollout(x[:, :2].expand(3, -1, -1, -1, -1), h, skips, cond.expand(3, -1, -1), 6, noise=noise)
    first = pred[:, model.n_past - 1]  # the first future frame: later ones see it encoded into the code
    cell, far = (first[1] - first[0]).abs(), (first[2] - first[0]).abs()
    assert cell[:, :8, :8].max() > 1e-3 and cell[:, 52:].max() < 1e-5 and cell[:, :, 52:].max() < 1e-5  # float rounding
    assert far[:, 52:].max() > 1e-3 and far[:, :, 52:].max() > 1e-3


def test_map_noise_only_leaves_the_vector_z_at_the_priors_mean():
    """``map_noise_only``: the futures' noise is 0 on the vector z (so it is the prior's mean) and
    standard normal on the spatial latent, so futures differ only through the map."""
    model = calibrated(tiny(output="flow", z_map=2, map_noise_only=True, z_hold=True))
    noise = model._noise(200, 3, "cpu")
    assert noise[..., : model.z_dim].abs().max() == 0
    assert abs(noise[..., model.z_dim :].std().item() - 1) < 0.02 and torch.equal(noise[:, 0], noise[:, 2])
    x, cond = batch(t=6)
    futures = model.predict(x[:, :2], cond, n_future=4, n_samples=2)
    assert (futures[:, 0] - futures[:, 1]).abs().max() > 1e-4  # the map's noise still differs
    with pytest.raises(ConfigError, match="map_noise_only needs z_map > 0"):
        tiny(map_noise_only=True)


@pytest.mark.parametrize("block", [2, 8])
def test_map_noise_block_shares_one_draw_per_block_of_cells(block):
    """``map_noise_block``: the spatial latent's noise is one standard-normal draw per B x B block of
    cells (the same in every cell of a block, different between blocks and channels), so each cell
    keeps its distribution; the vector z's noise is as without it, and the futures still differ."""
    from cvae.model.vgg64 import MAP_SIZE

    model = calibrated(tiny(output="flow", z_map=2, z_hold=True, map_noise_block=block))
    noise = model._noise(400, 3, "cpu")
    cells = noise[..., model.z_dim :].view(400, 3, 2, MAP_SIZE, MAP_SIZE)
    blocks = cells.unflatten(-1, (-1, block)).unflatten(-3, (-1, block))  # [n, s, c, rows, block, cols, block]
    assert torch.equal(blocks, blocks[..., :1, :, :1].expand_as(blocks))  # one value per block
    corners = blocks[..., 0, :, 0].flatten(-2)  # [n, s, c, blocks]
    assert abs(corners.std().item() - 1) < 0.05 and (corners[:, 0, 0] != corners[:, 0, 1]).all()
    if corners.shape[-1] > 1:
        assert (corners[..., 0] != corners[..., 1]).all()
    assert abs(noise[..., : model.z_dim].std().item() - 1) < 0.05 and torch.equal(noise[:, 0], noise[:, 2])
    x, cond = batch(t=6)
    futures = model.predict(x[:, :2], cond, n_future=4, n_samples=2)
    assert (futures[:, 0] - futures[:, 1]).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="map_noise_block must be one of 1, 2, 4, 8 .* not 3"):
        tiny(z_map=2, map_noise_block=3)
    with pytest.raises(ConfigError, match="map_noise_block needs z_map > 0"):
        tiny(map_noise_block=2)


def test_a_model_grows_a_spatial_latent_without_changing_its_predictions():
    """``grown`` with ``z_map``: the decoder's 8 x 8 input gets a zero-weight channel per latent
    channel, so the grown model predicts exactly what it did, whatever its map's noise."""
    from cvae.model.vgg64 import grown

    old = calibrated(tiny(output="flow", cond_maps=True, ee_maps=True)).eval()
    big = tiny(output="flow", cond_maps=True, ee_maps=True, z_map=3).eval()
    big.load_state_dict(grown(old.state_dict(), big.state_dict(), z_map=3))
    x, cond = batch(t=6)
    noise = torch.randn(2, 5, old.latent_dim)
    with torch.no_grad():
        before = old._rollout(x[:, :2], *old._encode(x[:, :2]), cond, 6, noise=noise)[0]
        wide = torch.cat([noise, torch.randn(2, 5, big.latent_dim - old.latent_dim)], -1)
        torch.testing.assert_close(big._rollout(x[:, :2], *big._encode(x[:, :2]), cond, 6, noise=wide)[0], before,
                                   atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"decoder.upc2.0.0.weight: shape .* does not grow"):
        grown(old.state_dict(), big.state_dict(), z_map=1)
    with pytest.raises(ConfigError, match="z_map must be a whole number of channels >= 0, not -1"):
        tiny(z_map=-1)


@pytest.mark.parametrize("copies", [False, True])
@pytest.mark.parametrize("fields", [dict(), dict(output="flow", cond_maps=True, ee_maps=True, ee_copy=True,
                                                ee_sprite=True, z_map=2, map_prior=True, prior="learned")])
def test_a_model_widens_without_changing_its_predictions_and_learns_in_its_new_channels(fields, copies):
    """``widened``: a model of width 0.125 placed in one of width 0.25 predicts what it did, in
    evaluation and in training (batch norm's statistics are per channel). Fresh, its old
    channels' zeroed reads of the new ones get a gradient, so training can use them; as copies,
    each new channel is an old one's twin and the reads of the two add up to the old read."""
    from cvae.model.vgg64 import widened

    old = calibrated(tiny(**fields))
    torch.manual_seed(1)
    big = SVG(**{**TINY, **fields, "width": 0.25})
    big.load_state_dict(widened(old.state_dict(), big, 0.125, copies=copies))
    x, cond = batch(t=6)
    for mode in ("eval", "train"):
        getattr(old, mode)(), getattr(big, mode)()
        with torch.no_grad():
            torch.testing.assert_close(big.predict(x[:, :2], cond, n_future=4, seed=3),
                                       old.predict(x[:, :2], cond, n_future=4, seed=3), atol=1e-5, rtol=0)
    up = big.decoder.upc2[0][0].weight  # reads [the upsampled maps 128, the skip 128, the rest]
    first = big.encoder.c1[0][0].weight
    if copies:
        assert torch.equal(first[8:], first[:8]) and not torch.equal(up[:, 64:128], up[:, :64])
        torch.testing.assert_close(up[:64, :64] + up[:64, 64:128], old.decoder.upc2[0][0].weight[:, :64])
        return
    assert not torch.equal(first[8:], first[:8]) and up[:64, 64:128].abs().max() == 0  # reads no new map yet
    out = big(x, cond, teacher_forcing=True)
    (out.mse.sum() + out.kld.sum()).backward()
    assert up.grad[:64, 64:128].abs().max() > 0 and big.encoder.c5[0].weight.grad[:, 64:].abs().max() > 0
    with pytest.raises(ValueError, match=r"encoder.c1.0.0.weight: 16 channels do not widen into 8"):
        widened(big.state_dict(), old, 0.25)


def test_a_learned_map_prior_grows_in_as_n01_and_its_sigma_can_switch_the_noise_off():
    """``map_prior``: grown into a model with a spatial latent it starts exactly at N(0, I), so the
    grown model draws the same futures; a cell's learned sigma is what lets it keep the world
    still there, and with every sigma near 0 the futures of a map-noise-only model agree."""
    from cvae.model.vgg64 import grown

    kw = dict(prior="learned", output="flow", cond_maps=True, ee_maps=True, z_map=2, map_noise_only=True, z_hold=True)
    old = calibrated(tiny(**kw)).eval()
    with torch.no_grad():  # the decoder reads the map: grown from zero it would not
        old.decoder.upc2[0][0].weight[:, -2:].normal_(0, 0.3, generator=torch.Generator().manual_seed(4))
    new = tiny(**kw, map_prior=True).eval()
    new.load_state_dict(grown(old.state_dict(), new.state_dict()))
    x, cond = batch(t=6)
    futures = old.predict(x[:, :2], cond, 4, n_samples=3, seed=1)
    torch.testing.assert_close(new.predict(x[:, :2], cond, 4, n_samples=3, seed=1), futures, atol=0, rtol=0)
    assert pixel_std(futures, 1).amax() > 1e-3
    with torch.no_grad():
        new.prior_map.net[2].bias[2:].fill_(-40.0)  # logvar: sigma e^-20
    assert pixel_std(new.predict(x[:, :2], cond, 4, n_samples=3, seed=1), 1).amax() < 1e-5
    with pytest.raises(ConfigError, match="map_prior needs z_map > 0 and prior 'learned'"):
        tiny(prior="fixed", z_map=2, map_prior=True)
    with pytest.raises(ConfigError, match="arm_clear needs arm_copy true"):
        tiny(output="flow", ee_maps=True, arm_clear=True)


@pytest.mark.parametrize("had,grows", [((), ("ee_copy",)), ((), ("ee_sprite",)), ((), ("ee_copy", "ee_sprite")),
                                       (("ee_copy",), ("ee_sprite",)), (("ee_copy", "ee_sprite"), ("still_copy",)),
                                       ((), ("ee_copy", "ee_sprite", "still_copy")), (("ee_copy",), ("arm_copy",))])
def test_a_model_grows_the_end_effector_copy_and_sprite_starting_almost_as_it_was(had, grows):
    """``grown`` adds the copies' and the sprite's mask channels to the flow head with zero weights
    and a low bias: each starts under 1% of the mask, so the grown model predicts within 0.01 of
    the old one per source grown (on noise frames, where the moved copy differs most, and the
    sprite is black), and uses each once its logit is raised. The arm copy's shaft map comes in
    at every scale with zero weights."""
    from cvae.model.heads import FlowHead
    from cvae.model.vgg64 import grown

    old = calibrated(tiny(output="flow", cond_maps=True, ee_maps=True, **dict.fromkeys(had, True))).eval()
    big = tiny(output="flow", cond_maps=True, ee_maps=True, **dict.fromkeys(had + grows, True))
    big.load_state_dict(grown(old.state_dict(), big.state_dict(), arm_copy="arm_copy" in grows))
    k = len(grows)
    last = big.decoder.upc5[1]
    assert last.bias[-k:].tolist() == [FlowHead.OPTIONAL[g] for g in grows] and last.weight[:, -k:].abs().max() == 0
    if "arm_copy" in grows:
        for name in ("upc2", "upc3", "upc4", "upc5"):
            assert getattr(big.decoder, name)[0][0].weight[:, -1].abs().max() == 0, name
    x, cond = batch(t=6)
    before = old.predict(x[:, :2], cond, n_future=4, seed=3)
    assert (big.predict(x[:, :2], cond, n_future=4, seed=3) - before).abs().max() < 0.01 * k
    for i in range(1, k + 1):
        start = last.bias[-i].item()
        with torch.no_grad():
            last.bias[-i] = 20.0
        assert (big.predict(x[:, :2], cond, n_future=4, seed=3) - before).abs().mean() > 0.01
        with torch.no_grad():
            last.bias[-i] = start
    for name in ("ee_copy", "ee_sprite", "arm_copy"):
        with pytest.raises(ConfigError, match=f"{name} needs output 'flow' and ee_maps true"):
            tiny(output="cdna", ee_maps=True, **{name: True})
        with pytest.raises(ConfigError, match=f"{name} needs output 'flow' and ee_maps true"):
            tiny(output="flow", **{name: True})
    with pytest.raises(ConfigError, match="still_copy needs output 'flow'"):
        tiny(output="cdna", still_copy=True)
    with pytest.raises(ConfigError, match="flow_deadzone needs output 'flow'"):
        tiny(output="cdna", flow_deadzone=0.5)
    with pytest.raises(ConfigError, match="flow_deadzone must be a number of pixels >= 0, not -0.5"):
        tiny(output="flow", flow_deadzone=-0.5)


def test_the_still_copy_keeps_still_pixels_exact_where_resampling_blurs_them():
    """Why ``still_copy`` exists: a frame moved by a tenth of a pixel ten times over (what the
    moved previous frame does to a still table, step after step) loses a third of its edges, while
    a model whose mask picks the still copy repeats the latest real frame to the bit at every step."""
    from cvae.metrics import sharpness
    from cvae.model.heads import warp

    checker = ((torch.arange(64)[:, None] // 4 + torch.arange(64)[None] // 4) % 2).float().expand(1, 3, 64, 64)
    frame = checker
    for _ in range(10):
        frame = warp(frame, torch.full((1, 2, 64, 64), 0.1))
    assert sharpness(frame) < 0.7 * sharpness(checker)
    model = tiny(output="flow", still_copy=True).eval()
    with torch.no_grad():
        model.decoder.upc5[1].bias[-1] = 50.0  # the still copy's mask logit: everything else under 1e-20
    x, cond = batch(t=6)
    pred = model.predict(x[:, :2], cond, n_future=4, seed=3)
    assert torch.equal(pred, x[:, 1, None, None].expand_as(pred))


def test_dead_zone_zeroes_short_displacements_by_hand():
    """(0.3, 0.4) is 0.5 px long: a 0.5 px dead zone makes it exactly 0 (a 0.6 px one also gives it
    no gradient), a 0.4 px one leaves it as it is; (3, 4), 5 px long, passes a 1 px dead zone
    unshortened, with its gradient, and a 5 px one zeroes it."""
    from cvae.model.heads import dead_zone

    flow = torch.tensor([[0.3, 3.0], [0.4, 4.0]])[None, :, :, None].requires_grad_()  # [1, 2, 2, 1]: two pixels
    assert dead_zone(flow, 0.0) is flow
    assert torch.equal(dead_zone(flow, 0.5)[0, :, :, 0], torch.tensor([[0.0, 3.0], [0.0, 4.0]]))
    assert torch.equal(dead_zone(flow, 1.0)[0, :, :, 0], torch.tensor([[0.0, 3.0], [0.0, 4.0]]))
    assert torch.equal(dead_zone(flow, 0.4)[0, :, :, 0], flow.detach()[0, :, :, 0])
    assert torch.equal(dead_zone(flow, 5.0), torch.zeros_like(flow))
    dead_zone(flow, 0.6).sum().backward()
    assert torch.equal(flow.grad[0, :, :, 0], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_branch_term_rebuilds_the_true_futures_weighting_where_they_differ():
    """``branch_weight`` W rebuilds each re-simulated future through the posterior (teacher-forced,
    as the SVG loss's pass) and counts the pixels where the futures differ 1 + W times: by hand,
    the same posterior draw; where they all agree W changes nothing; its gradient reaches the
    posterior, which must come to say which future it saw."""
    model = calibrated(tiny(prior="learned"))
    x, c = batch(b=2, t=6)
    ctx = x[:, :2]
    truths = 0.5 * x[:, None, 2:].repeat(1, 3, 1, 1, 1, 1)
    truths[:, 2, :, :, :8, :8] += 0.5  # the third future differs on one corner, by half the range
    torch.manual_seed(3)
    got = model._branch(ctx, c, truths, 5.0)
    torch.manual_seed(3)
    seqs = torch.cat([ctx[:, None].expand(-1, 3, -1, -1, -1, -1), truths], 2).flatten(0, 1)
    h, skips = model._encode(seqs)
    mu, logvar, _ = model.posterior(h[:, 1:])
    pred = model._teacher_forced(seqs, h, skips, reparameterize(mu, logvar, torch.randn_like(mu)),
                                 c.repeat_interleave(3, 0))
    weight = torch.ones(6, 5, 64, 64)
    weight[:, 1:, :8, :8] = 6  # future steps only: the context is shared
    want = ((pred - seqs[:, 1:]).pow(2).mean(2) * weight).mean((2, 3)).sum(1).mean()
    torch.testing.assert_close(got, want)
    same = x[:, None, 2:].repeat(1, 3, 1, 1, 1, 1)
    torch.manual_seed(3)
    a = model._branch(ctx, c, same, 5.0)
    torch.manual_seed(3)
    torch.testing.assert_close(a, model._branch(ctx, c, same, 0.0))
    grads = torch.autograd.grad(got, list(model.posterior.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    parts = model(x, c, True, futures=(ctx, c, truths), terms=FutureTerms(rebuild_weight=5.0))
    assert parts.branch > 0 and model(x, c, True, futures=(ctx, c, truths)).branch == 0


def _energy_samples(model: SVG, ctx: torch.Tensor, cond: torch.Tensor, k: int = 3, t: int = 6,
                    scale: float = 1.0) -> torch.Tensor:
    """The K prior futures ``SVG._energy`` draws after ``torch.manual_seed(7)`` (the prior's noise
    x ``scale``), rolled out by hand: [M, K, t - 2, 3, 64, 64]."""
    torch.manual_seed(7)
    noise = model._noise(ctx.shape[0] * k, t - 1, "cpu") * scale
    h, skips = model._encode(ctx)
    pred, _ = model._rollout(ctx.repeat_interleave(k, 0), h.repeat_interleave(k, 0),
                             [s.repeat_interleave(k, 0) for s in skips], cond[:, : t - 1].repeat_interleave(k, 0), t,
                             noise=noise)
    return pred[:, 1:].view(ctx.shape[0], k, t - 2, 3, 64, 64)


def _assert_train_step_weighs(model: SVG, x: torch.Tensor, c: torch.Tensor, futures: tuple, terms: FutureTerms,
                              name: str, index: int, weight: float) -> None:
    """train_step's loss is the SVG loss (beta 0.5) plus ``weight`` times the term ``name`` of
    the forward pass, and it returns that term at ``index``."""
    from cvae.train import train_step

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(7)
    got = train_step(model, opt, x, c, 0.5, True, amp=False, futures=futures, terms=terms)
    torch.manual_seed(7)
    again = model(x, c, True, futures=futures, terms=terms)
    term = getattr(again, name)
    torch.testing.assert_close(got[0], (again.recon.sum() + 0.5 * again.kl_loss.sum() + weight * term).detach())
    torch.testing.assert_close(got[index], term.detach())


def test_cover_term_trains_the_closest_prior_future_to_each_true_one():
    """``terms.cover_weight`` adds, for each true future, the pixel loss (summed over the steps) of
    the closest of the K prior futures the energy score draws: by hand, the same rollout; with
    truths that are copies of the samples themselves it is 0 whatever the others do, and train_step
    weighs it."""
    model = calibrated(tiny(prior="learned", z_hold=True, motion_weight=2.0))
    x, c = batch(b=4, t=6)
    ctx, cond = x[:2, :2], c[:2]
    truths = torch.rand(2, 3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    energy, cover, *_ = model._energy(ctx, cond, truths, FutureTerms(cover_weight=1.0))
    samples = _energy_samples(model, ctx, cond)
    want = torch.stack([torch.stack([min(
        model._pixel_loss(samples[m, j][None], truths[m, i][None],
                          torch.cat([ctx[m, -1:], truths[m, i, :-1]])[None]).sum() for j in range(3))
        for i in range(3)]) for m in range(2)]).mean()
    torch.testing.assert_close(cover, want)
    torch.manual_seed(7)
    assert model._energy(ctx, cond, truths)[1] == 0  # off by default
    # cover_branch: truths that differ only in one corner are matched and scored there alone, as
    # the mean over those pixels times the steps; truths that never differ score 0
    corner = truths[:, :1].repeat(1, 3, 1, 1, 1, 1)
    corner[:, 1:, :, :, :8, :8] = truths[:, 1:, :, :, :8, :8]
    torch.manual_seed(7)
    _, branched, *_ = model._energy(ctx, cond, corner, FutureTerms(cover_weight=1.0, cover_branch=True))
    differ = branching(corner, 1)
    assert differ[..., :8, :8].all() and differ.sum() == 2 * 4 * 64

    def corner_loss(m, j, i):  # the motion weight (1 + 2 where the truth moves) applies there as well
        err = (samples[m, j] - corner[m, i]).pow(2)
        prev = torch.cat([ctx[m, -1:], corner[m, i, :-1]])
        err = err * (1 + 2.0 * (((corner[m, i] - prev).abs() > 0.1).any(1, keepdim=True)).float())
        return err[..., :8, :8].mean() * 4
    want_b = torch.stack([torch.stack([min(corner_loss(m, j, i) for j in range(3)) for i in range(3)])
                          for m in range(2)]).mean()
    torch.testing.assert_close(branched, want_b)
    torch.manual_seed(7)
    alike = truths[:, :1].expand_as(truths)
    assert model._energy(ctx, cond, alike, FutureTerms(cover_weight=1.0, cover_branch=True))[1] == 0
    torch.manual_seed(7)
    _, hit, *_ = model._energy(ctx, cond, samples.detach(), FutureTerms(cover_weight=1.0))
    assert hit < 1e-6
    _assert_train_step_weighs(model, x, c, (ctx, cond, truths), FutureTerms(weight=0.0, cover_weight=2.0),
                              "cover", 6, 2.0)


def test_cover_flow_term_asks_each_world_only_of_the_prior_future_nearest_it():
    """``SVG._cover_flow`` by hand: per true future, the ``_flow_truth`` error of the prior future
    closest to it, scored where the displacement is known and some true future moved the pixel;
    in the training pass, the displacements the flow head gave the prior futures the energy score
    draws (the same rollout, by hand), weighed by train_step, its gradient reaching the head's
    displacement channels."""
    truth, known = torch.zeros(1, 2, 1, 2, 4, 4), torch.ones(1, 2, 1, 4, 4, dtype=torch.bool)
    truth[0, 0, 0, 0, :2, :2] = 2.0  # world 0: a 2 x 2 object glides 2 px; world 1: it stays
    known[0, :, 0, 3, 3] = False
    glide, still = truth[:, :1].clone(), torch.zeros(1, 1, 1, 2, 4, 4)
    assert SVG._cover_flow(torch.cat([still, glide], 1), truth, known) == 0  # each world has its future
    # both still: world 0 costs 4 pixels x Huber(2) = 1.5 over 16; both glide: world 1 costs the same
    assert SVG._cover_flow(torch.cat([still, still], 1), truth, known).item() == pytest.approx(4 * 1.5 / 16 / 2)
    assert SVG._cover_flow(torch.cat([glide, glide], 1), truth, known).item() == pytest.approx(4 * 1.5 / 16 / 2)
    elsewhere = torch.cat([still, glide], 1)
    elsewhere[..., 3, 0] = 5.0  # the table where no world moved anything
    elsewhere[..., 3, 3] = 9.0  # a pixel whose displacement is unknown
    assert SVG._cover_flow(elsewhere, truth, known) == 0

    model = calibrated(tiny(output="flow", cond_maps=True, ee_maps=True, prior="learned", z_hold=True))
    x, c = batch(b=4, t=6)
    ctx, cond = x[:2, :2], c[:2]
    truths = torch.rand(2, 3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    flows = (torch.randn(2, 3, 4, 2, 64, 64, generator=torch.Generator().manual_seed(2)),
             torch.rand(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(3)) > 0.5)
    torch.manual_seed(7)
    term = model._energy(ctx, cond, truths, FutureTerms(cover_flow_weight=1.0), flows)[7]
    torch.manual_seed(7)
    noise = model._noise(6, 5, "cpu")
    h, skips = model._encode(ctx)
    *_, (_, flow) = model._rollout(ctx.repeat_interleave(3, 0), h.repeat_interleave(3, 0),
                                   [s.repeat_interleave(3, 0) for s in skips], cond[:, :5].repeat_interleave(3, 0), 6,
                                   noise=noise, moved=True)
    torch.testing.assert_close(term, SVG._cover_flow(flow[:, 1:].view(2, 3, 4, 2, 64, 64), *flows))
    assert term > 0
    torch.manual_seed(7)
    assert model._energy(ctx, cond, truths, FutureTerms(), flows)[7] == 0  # off by default
    assert model._energy(ctx, cond, truths, FutureTerms(cover_flow_weight=1.0))[7] == 0  # no flows given
    (grad,) = torch.autograd.grad(term, model.decoder.upc5[1].weight)
    assert grad[:, 3:5].abs().sum() > 0
    _assert_train_step_weighs(model, x, c, (ctx, cond, truths, *flows),
                              FutureTerms(weight=0.0, cover_flow_weight=2.0), "cover_flow", 16, 2.0)


def test_the_residual_energy_score_draws_the_noiseless_future_beside_the_samples():
    """``terms.residual``: ``_energy`` draws each scene's noiseless future first, then K futures
    from the prior's noise, all in one rollout, and scores them with
    ``metrics.residual_energy_score`` (by hand, one rollout), or with ``residual_share`` below 1
    that share of it and the rest of the plain score of the same samples (both with ``beta``'s
    power); train_step weighs it as the energy score and its gradient reaches the prior."""
    model = calibrated(tiny(prior="learned", z_hold=True))
    x, c = batch(b=4, t=6)
    ctx, cond = x[:2, :2], c[:2]
    truths = torch.rand(2, 3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    terms = FutureTerms(residual=True, patch=16, branch_weight=4.0)
    torch.manual_seed(7)
    term = model._energy(ctx, cond, truths, terms)[0]
    torch.manual_seed(7)
    noise = model._noise(2 * 4, 5, "cpu") * (torch.arange(8) % 4 > 0)[:, None, None]
    h, skips = model._encode(ctx)
    pred, _ = model._rollout(ctx.repeat_interleave(4, 0), h.repeat_interleave(4, 0),
                             [s.repeat_interleave(4, 0) for s in skips], cond[:, :5].repeat_interleave(4, 0), 6,
                             noise=noise)
    grouped = pred[:, 1:].view(2, 4, 4, 3, 64, 64)
    residual = residual_energy_score(grouped[:, 1:], grouped[:, 0], truths, 16, False, 4.0).mean()
    torch.testing.assert_close(term, residual)
    assert not torch.equal(grouped[:, 0], grouped[:, 1])  # the noise reaches the samples, not the first
    torch.manual_seed(7)  # a share of it: the plain score of the same samples takes the rest
    mixed = model._energy(ctx, cond, truths, FutureTerms(residual=True, residual_share=0.25, patch=16, branch_weight=4.0))
    plain = energy_score(grouped[:, 1:], truths, 16, False, 4.0).mean()
    torch.testing.assert_close(mixed[0], 0.25 * residual + 0.75 * plain)
    torch.manual_seed(7)  # terms.beta reaches both parts
    powered = model._energy(ctx, cond, truths, FutureTerms(residual=True, residual_share=0.25, patch=16,
                                                           branch_weight=4.0, beta=0.5))[0]
    torch.testing.assert_close(powered, 0.25 * residual_energy_score(grouped[:, 1:], grouped[:, 0], truths, 16, False,
                                                                     4.0, beta=0.5).mean()
                               + 0.75 * energy_score(grouped[:, 1:], truths, 16, False, 4.0, beta=0.5).mean())
    assert not torch.isclose(powered, mixed[0])
    torch.manual_seed(7)
    assert not torch.isclose(term, model._energy(ctx, cond, truths, FutureTerms(patch=16, branch_weight=4.0))[0])
    grads = torch.autograd.grad(term, list(model.prior.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    _assert_train_step_weighs(model, x, c, (ctx, cond, truths), FutureTerms(weight=2.0, residual=True),
                              "energy", 4, 2.0)


@pytest.mark.parametrize("field, gap, at, name, index", [("spread_weight", spread_gap, 2, "spread", 7),
                                                        ("edge_weight", edge_gap, 3, "edges", 8),
                                                        ("agree_weight", agreement_gap, 4, "agree", 9)])
def test_gap_terms_compare_the_prior_futures_with_the_truths(field, gap, at, name, index):
    """``terms.spread_weight`` / ``edge_weight`` / ``agree_weight`` add ``metrics.spread_gap`` /
    ``edge_gap`` / ``agreement_gap`` of the K prior futures the energy score draws against the
    true ones (by hand, the same rollout), 0 when off; train_step weighs the term and returns it,
    and its gradient reaches the prior."""
    model = calibrated(tiny(prior="learned", z_hold=True))
    x, c = batch(b=4, t=6)
    ctx, cond = x[:2, :2], c[:2]
    truths = torch.rand(2, 3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    term = model._energy(ctx, cond, truths, FutureTerms(**{field: 1.0}))[at]
    torch.testing.assert_close(term, gap(_energy_samples(model, ctx, cond), truths).mean())
    assert term > 0 and model._energy(ctx, cond, truths)[at] == 0
    grads = torch.autograd.grad(term, list(model.prior.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    _assert_train_step_weighs(model, x, c, (ctx, cond, truths), FutureTerms(weight=0.0, **{field: 3.0}),
                              name, index, 3.0)


def test_the_future_terms_score_prior_futures_drawn_at_their_noise_scale():
    """``terms.z_scale`` draws the prior futures the energy score and the gap terms score with the
    prior's noise x it (by hand, the same rollout), as ``predict`` draws at ``z_scale``: at 3 the
    terms see a wider spread than at 1, and their gradient still reaches the prior."""
    model = calibrated(tiny(prior="learned", z_hold=True))
    x, c = batch(b=4, t=6)
    ctx, cond = x[:2, :2], c[:2]
    truths = torch.rand(2, 3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    wide = model._energy(ctx, cond, truths, FutureTerms(spread_weight=1.0, agree_weight=1.0, z_scale=3.0))
    samples = _energy_samples(model, ctx, cond, scale=3.0)
    torch.testing.assert_close(wide[0], energy_score(samples, truths).mean())
    torch.testing.assert_close(wide[2], spread_gap(samples, truths).mean())
    torch.testing.assert_close(wide[4], agreement_gap(samples, truths).mean())
    assert pixel_std(samples, 1).mean() > pixel_std(_energy_samples(model, ctx, cond), 1).mean()
    grads = torch.autograd.grad(wide[4], list(model.prior.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_adversarial_losses_by_hand_and_which_side_each_trains():
    """Least squares: the model's side is mean((D(fake) - 1)^2), the critic's half of
    mean((D(real) - 1)^2) + mean(D(fake)^2), each mean over patches weighted by their share of
    moving pixels (a still patch counts 1e-3); the first reaches the futures and not the critic,
    the second the critic and not the futures. The critic sees each frame beside the one before
    it and the last context frame."""
    from cvae.model.critic import Critic, adversarial_losses, patch_weights

    torch.manual_seed(0)
    critic = Critic(4)
    ctx = 0.4 * torch.rand(2, 3, 64, 64)
    real = ctx[:, None].repeat(1, 3, 1, 1, 1)
    real[1, :, :, :16, 40:] += 0.5  # things move in one corner (2 x 3 patches) of one scene
    fake = (real + 0.01 * torch.randn_like(real)).requires_grad_()
    w = patch_weights(ctx, fake, real, (8, 8))
    assert w.shape == (6, 8, 8) and torch.all(w[3:, :2, 5:] == 1.001)
    w_still = w.clone()
    w_still[3:, :2, 5:] = 1e-3
    assert torch.all(w_still == 1e-3)
    inputs = Critic.inputs(ctx, fake)
    assert inputs.shape == (6, 9, 64, 64)
    torch.testing.assert_close(inputs[4], torch.cat([fake[1, 1], fake[1, 0], ctx[1]]))
    torch.testing.assert_close(inputs[3], torch.cat([fake[1, 0], ctx[1], ctx[1]]))
    gen, crit = adversarial_losses(critic, ctx, fake, real)
    with torch.no_grad():
        on_fake, on_real = critic(Critic.inputs(ctx, fake)), critic(Critic.inputs(ctx, real))
    assert on_fake.shape == (6, 8, 8)
    torch.testing.assert_close(gen, ((on_fake - 1).pow(2) * w).sum() / w.sum())
    torch.testing.assert_close(crit, 0.5 * (((on_real - 1).pow(2) * w).sum() + (on_fake.pow(2) * w).sum()) / w.sum())
    alike = adversarial_losses(critic, ctx, fake, real, weighted=False)  # as first built: every patch alike
    torch.testing.assert_close(alike[0], (on_fake - 1).pow(2).mean())
    torch.testing.assert_close(alike[1], 0.5 * ((on_real - 1).pow(2).mean() + on_fake.pow(2).mean()))
    params = list(critic.parameters())
    assert all(g is None for g in torch.autograd.grad(gen, params, retain_graph=True, allow_unused=True))
    assert torch.autograd.grad(gen, fake, retain_graph=True)[0].abs().sum() > 0
    assert all(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(crit, params, retain_graph=True))
    assert torch.autograd.grad(crit, fake, allow_unused=True)[0] is None


def test_a_trained_critic_charges_a_blurred_object_more_than_a_sharp_one():
    """What the adversarial term is for: trained on sharp squares that move, the critic scores
    the same squares blurred (the haze an MSE-trained model draws where the world branches) as
    less real, so the model's side costs more for them (200 steps at the critic's learning rate)."""
    from cvae.model.critic import Critic, adversarial_losses

    def squares(n, seed, sigma=0.0):
        g = torch.Generator().manual_seed(seed)
        x = torch.full((n, 3, 3, 64, 64), 0.2)
        for i in range(n):
            r, c = (int(v) for v in torch.randint(8, 44, (2,), generator=g))
            for f in range(3):
                x[i, f, :, r : r + 12, c + 3 * f : c + 3 * f + 12] = 0.9
        return gaussian_blur(x.flatten(0, 1), sigma).view_as(x) if sigma else x

    torch.manual_seed(0)
    critic = Critic(8)
    opt = torch.optim.Adam(critic.parameters(), lr=5e-4)
    ctx = torch.full((8, 3, 64, 64), 0.2)
    for step in range(200):
        _, crit = adversarial_losses(critic, ctx, squares(8, 100 + step, sigma=2.0), squares(8, step))
        opt.zero_grad()
        crit.backward()
        opt.step()
    with torch.no_grad():
        sharp = adversarial_losses(critic, ctx, squares(8, 999), squares(8, 998))[0]
        blurred = adversarial_losses(critic, ctx, squares(8, 999, sigma=2.0), squares(8, 998))[0]
    assert blurred > sharp + 0.05, (sharp, blurred)


def test_the_adversarial_term_on_the_prior_futures_and_how_train_step_weighs_it():
    """``terms.adv_weight`` with a critic (``critic`` C) adds ``critic.adversarial_losses`` of the
    K prior futures the energy score draws (by hand, the same rollout) against the true ones,
    with the last context frame; 0 when off. train_step adds the model's side x the weight and
    the critic's side x 1; the critic's side does not reach the prior, and nothing else reaches
    the critic. A model grown a critic predicts exactly as before."""
    from cvae.model.critic import adversarial_losses
    from cvae.model.vgg64 import grown
    from cvae.train import train_step

    model = calibrated(tiny(prior="learned", z_hold=True, critic=4))
    x, c = batch(b=4, t=6)
    ctx, cond = x[:2, :2], c[:2]
    truths = torch.rand(2, 3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    adv, crit = model._energy(ctx, cond, truths, FutureTerms(adv_weight=1.0))[5:7]
    want = adversarial_losses(model.critic, ctx[:, -1].repeat_interleave(3, 0),
                              _energy_samples(model, ctx, cond).flatten(0, 1), truths.flatten(0, 1))
    torch.testing.assert_close(adv, want[0])
    torch.testing.assert_close(crit, want[1])
    assert all(v == 0 for v in model._energy(ctx, cond, truths)[5:])
    futures, terms = (ctx, cond, truths), FutureTerms(weight=0.0, adv_weight=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(7)
    got = train_step(model, opt, x, c, 0.5, True, amp=False, futures=futures, terms=terms)
    torch.manual_seed(7)
    again = model(x, c, True, futures=futures, terms=terms)
    torch.testing.assert_close(got[0], (again.recon.sum() + 0.5 * again.kl_loss.sum() + 3.0 * again.adv
                                        + again.critic).detach())
    torch.testing.assert_close(got[12:14], torch.stack([again.adv, again.critic]).detach())
    prior, critic = list(model.prior.parameters()), list(model.critic.parameters())
    torch.manual_seed(7)
    parts = model(x, c, True, futures=futures, terms=terms)
    total = parts.recon.sum() + 0.5 * parts.kl_loss.sum() + 3.0 * parts.adv + parts.critic
    g_total = torch.autograd.grad(total, prior + critic, retain_graph=True)
    g_model = torch.autograd.grad(total - parts.critic, prior, retain_graph=True)
    g_crit = torch.autograd.grad(parts.critic, critic, retain_graph=True)
    for got_g, want_g in zip(g_total, [*g_model, *g_crit]):
        torch.testing.assert_close(got_g, want_g)
    assert any(g.abs().sum() > 0 for g in torch.autograd.grad(parts.adv, prior))
    old = tiny(prior="learned", z_hold=True)
    big = tiny(prior="learned", z_hold=True, critic=4)
    big.load_state_dict(grown(old.state_dict(), big.state_dict()))
    old.eval(), big.eval()
    torch.testing.assert_close(big.predict(x[:, :2], c, 4, n_samples=2, seed=3),
                               old.predict(x[:, :2], c, 4, n_samples=2, seed=3))
    with pytest.raises(ConfigError, match="critic must be a whole number of channels >= 0, not -1"):
        tiny(critic=-1)
    from cvae.train import prepare

    _, opt = prepare(big, Config(**TINY, critic=4, critic_lr=1e-4), torch.device("cpu"))
    assert [g["lr"] for g in opt.param_groups] == [0.002, 1e-4]
    assert opt.param_groups[1]["params"] == list(big.critic.parameters())
    assert len(prepare(old, Config(**TINY), torch.device("cpu"))[1].param_groups) == 1  # as checkpoints before it


WORLD = dict(prior="learned", z_hold=True, z_map=2, map_noise_only=True, map_prior=True)


def test_the_world_term_draws_each_true_future_from_the_noise_inferred_from_it():
    """``terms.world_weight`` with a world posterior (``world_posterior`` C) infers each true
    future's held spatial noise from its difference from its siblings, draws that future closed
    loop from it (by hand: the same rollout), and scores it against the future it came from
    (``world_branch_weight`` W: where the futures differ x 1 + W), with the posterior's KL from
    N(0, I) and each cell's at least the free bits; train_step adds weight x (that + beta x KL). Grown in,
    the posterior is N(0, I) (KL 0) and the model predicts exactly as before; futures that do
    not differ get one posterior."""
    from cvae.model.gaussian import kl_divergence, reparameterize
    from cvae.model.vgg64 import grown
    from cvae.train import train_step

    old = calibrated(tiny(**WORLD))
    model = tiny(**WORLD, world_posterior=4)
    model.load_state_dict(grown(old.state_dict(), model.state_dict()))
    x, c = batch(b=4, t=6)
    ctx, cond = x[:2, :2], c[:2]
    truths = torch.rand(2, 3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    old.eval(), model.eval()
    torch.testing.assert_close(model.predict(x[:, :2], c, 4, n_samples=2, seed=3),
                               old.predict(x[:, :2], c, 4, n_samples=2, seed=3))
    mu, logvar = model.world(ctx[:, -1], truths)
    assert mu.shape == logvar.shape == (6, 2 * 64) and mu.abs().max() == logvar.abs().max() == 0
    torch.nn.init.normal_(model.world.net[-1].weight, std=0.1)  # as if trained
    same = model.world(ctx[:, -1], truths[:, :1].expand(-1, 3, -1, -1, -1, -1))[0].view(2, 3, -1)
    torch.testing.assert_close(same, same[:, :1].expand_as(same))
    mu, logvar = model.world(ctx[:, -1], truths)
    assert (mu.view(2, 3, -1)[:, 0] - mu.view(2, 3, -1)[:, 1]).abs().max() > 1e-3
    torch.manual_seed(7)
    rebuilt, kl, kl_loss = model._world(ctx, cond, truths, free_bits=0.01)
    torch.manual_seed(7)
    held = reparameterize(mu, logvar, torch.randn_like(mu))
    noise = torch.cat([torch.zeros(6, model.z_dim), held], -1)[:, None].expand(-1, 5, -1)
    h, skips = model._encode(ctx)
    pred, _ = model._rollout(ctx.repeat_interleave(3, 0), h.repeat_interleave(3, 0),
                             [s.repeat_interleave(3, 0) for s in skips], cond[:, :5].repeat_interleave(3, 0), 6,
                             noise=noise)
    want = (pred[:, 1:] - truths.flatten(0, 1)).pow(2).mean((2, 3, 4)).sum(1).mean()
    torch.testing.assert_close(rebuilt, want)
    torch.manual_seed(7)
    weighted = model._world(ctx, cond, truths, branch_weight=3.0)[0]
    differ = branching(truths, 1).float().repeat_interleave(3, 0)[:, :, None]  # [M * K, F, 1, H, W]
    torch.testing.assert_close(weighted, ((pred[:, 1:] - truths.flatten(0, 1)).pow(2) * (1 + 3 * differ))
                               .mean((2, 3, 4)).sum(1).mean())
    torch.testing.assert_close(kl, kl_divergence(mu, logvar).mean())
    per_cell = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
    torch.testing.assert_close(kl_loss, per_cell.clamp_min(0.01).sum(1).mean())
    assert kl > 0 and kl_loss > kl  # some cells carry under 0.01 nats
    futures, terms = (ctx, cond, truths), FutureTerms(weight=0.0, world_weight=2.0)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(7)
    got = train_step(model, opt, x, c, 0.5, True, amp=False, free_bits=0.01, futures=futures, terms=terms)
    torch.manual_seed(7)
    again = model(x, c, True, free_bits=0.01, futures=futures, terms=terms)
    torch.testing.assert_close(got[0], (again.recon.sum() + 0.5 * again.kl_loss.sum()
                                        + 2.0 * (again.world + 0.5 * again.world_kl_loss)).detach())
    torch.testing.assert_close(got[14:16], torch.stack([again.world, again.world_kl]).detach())
    grads = torch.autograd.grad(again.world, [model.world.net[0].weight, model.decoder.upc5[1].weight])
    assert all(g.abs().sum() > 0 for g in grads)  # the posterior learns to say where, the decoder to draw it
    off = model(x, c, True, futures=futures, terms=FutureTerms(weight=0.0))
    assert off.world == off.world_kl == 0
    with pytest.raises(ConfigError, match="world_posterior needs z_map > 0, map_noise_only true and z_hold true"):
        tiny(prior="learned", world_posterior=4)
    with pytest.raises(ConfigError, match="world_branch_weight needs world_weight > 0"):
        Config(**TINY, **WORLD, world_posterior=4, energy_truths=2, world_branch_weight=1.0).validate()
    with pytest.raises(ConfigError, match="world_weight needs world_posterior > 0"):
        Config(**TINY, energy_truths=2, world_weight=1.0).validate()
    with pytest.raises(ConfigError, match="world_weight needs energy_truths > 0"):
        Config(**TINY, **WORLD, world_posterior=4, world_weight=1.0).validate()


def test_the_world_term_teaches_the_noise_which_world():
    """A square stands still in the context; in one true future it goes right, in the other
    left. Trained on the world term alone (KL weight 1e-4, half a nat free per cell) for 80
    steps, each future drawn from the noise inferred from it is at least 5 dB closer to it than
    when drawn from its sibling's: the noise carries which world, and the decoder draws it.
    Untrained, the two draws score the same."""
    from cvae.metrics import psnr

    def square(shift: int) -> torch.Tensor:
        f = torch.zeros(3, 64, 64)
        f[:, 26:38, 26 + shift: 38 + shift] = 1.0
        return f

    ctx = torch.stack([square(0), square(0)])[None].expand(2, -1, -1, -1, -1)
    truths = torch.stack([torch.stack([square(4 * s * d) for s in (1, 2, 3)]) for d in (1, -1)])
    truths = truths[None].expand(2, -1, -1, -1, -1, -1)
    cond = torch.zeros(2, 5, 7)
    model = calibrated(tiny(**WORLD, world_posterior=4))

    def own_and_sibling() -> list[float]:
        with torch.no_grad():  # batch statistics: the running ones lag a model this young
            mu, _ = model.world(ctx[:1, -1], truths[:1])
            h, skips = model._encode(ctx)
            out = []
            for held in (mu, mu.roll(1, 0)):
                noise = torch.cat([held.new_zeros(2, model.z_dim), held], -1)[:, None].expand(-1, 4, -1)
                pred, _ = model._rollout(ctx, h, skips, cond, 5, noise=noise)
                out.append(float(psnr(pred[:, 1:], truths[0]).mean()))
        return out

    own, sibling = own_and_sibling()
    assert abs(own - sibling) < 1e-3
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(80):
        torch.manual_seed(step)
        rebuilt, _, kl_loss = model._world(ctx, cond, truths, free_bits=0.5)
        opt.zero_grad()
        (rebuilt + 1e-4 * kl_loss).backward()
        opt.step()
    own, sibling = own_and_sibling()
    assert own > sibling + 5, (own, sibling)


@pytest.mark.parametrize("hold", [False, True])
def test_z_hold_draws_one_noise_per_future(hold, monkeypatch):
    """With ``z_hold`` every future from the prior, at prediction and in the training terms that
    draw futures (the energy score, best of K), takes one standard-normal draw for all its steps;
    without it, one per step. Futures still differ from one another."""
    model = calibrated(tiny(prior="learned", z_hold=hold))
    seen = []
    real = model._rollout

    def spy(*args, **kw):
        if kw.get("noise") is not None:
            seen.append(kw["noise"])
        return real(*args, **kw)

    monkeypatch.setattr(model, "_rollout", spy)
    x, c = batch(b=2, t=6)
    model.predict(x[:, :2], c, n_future=4, n_samples=3, seed=1)
    model.train()
    model(x, c, True, best_of=2, futures=(x[:1, :2], c[:1], x[:1, None, 2:].expand(-1, 2, -1, -1, -1, -1)))
    assert len(seen) == 3  # predict, best of K, the energy score
    for noise in seen:
        same_over_steps = torch.equal(noise, noise[:, :1].expand_as(noise))
        assert same_over_steps == hold and noise.shape[1] == 5
        assert not torch.equal(noise[0], noise[1])


@pytest.mark.parametrize("prior", ["fixed", "learned"])
@pytest.mark.parametrize("hold", [False, True])
def test_z_scale_narrows_the_noise_at_prediction_only(prior, hold, monkeypatch):
    """``z_scale`` multiplies the standard-normal noise of prediction (held or not); the training
    terms' prior draws keep scale 1, so the prior still learns the whole spread. At 0 every
    sample is the same future; at 0.5 they still differ."""
    seen, futures = {}, {}
    x, c = batch(b=2, t=6)
    for scale in (1.0, 0.5, 0.0):
        model = calibrated(tiny(prior=prior, z_hold=hold, z_scale=scale))

        def spy(*args, _scale=scale, _real=model._rollout, **kw):
            if kw.get("noise") is not None:
                seen.setdefault(_scale, []).append(kw["noise"])
            return _real(*args, **kw)

        monkeypatch.setattr(model, "_rollout", spy)
        futures[scale] = model.predict(x[:, :2], c, n_future=4, n_samples=3, seed=1)
        model.train()
        torch.manual_seed(5)
        model(x, c, True, best_of=2)
    for scale in (0.5, 0.0):
        torch.testing.assert_close(seen[scale][0], seen[1.0][0] * scale)  # predict
        torch.testing.assert_close(seen[scale][1], seen[1.0][1])  # best of K in training
    # the same future up to float rounding, which differs by batch row on some CPUs (1e-6 on an AMD EPYC)
    assert all(torch.allclose(futures[0.0][:, 0], futures[0.0][:, k], atol=1e-5, rtol=0) for k in (1, 2))
    assert (futures[0.5][:, 0] - futures[0.5][:, 1]).abs().max() > 1e-3
    assert (futures[0.5] - futures[1.0]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="z_scale must be a number >= 0, not -1"):
        tiny(z_scale=-1)


def test_mask_temperature_sharpens_the_flow_heads_mask_and_changes_no_weight():
    """``mask_temperature`` T: the flow head's mask is the softmax of T times its logits (the
    image and the displacements untouched), so each pixel is nearer one source; the weights are
    the same model's, and a predicted future changes. Refused where it means nothing."""
    from cvae.model.heads import FlowHead

    head = FlowHead(8, arm_copy=True, temperature=4.0)
    out = torch.randn(2, 3 + head.extra, 8, 8, generator=torch.Generator().manual_seed(0))
    sharp = head.masks(out)
    torch.testing.assert_close(sharp, (4 * out[:, 7:]).softmax(1))
    head.temperature = 1.0
    plain = head.masks(out)
    torch.testing.assert_close(plain, out[:, 7:].softmax(1))
    assert sharp.amax(1).mean() > plain.amax(1).mean() + 0.1
    x, c = batch(b=1, t=6)
    futures = {}
    for t in (1.0, 2.0):
        model = calibrated(tiny(output="flow", mask_temperature=t))
        futures[t] = model.predict(x[:, :2], c, n_future=3, n_samples=1, seed=0)
    assert (futures[2.0] - futures[1.0]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="mask_temperature must be a number > 0, not 0"):
        tiny(output="flow", mask_temperature=0)
    with pytest.raises(ConfigError, match="mask_temperature needs output 'flow'"):
        tiny(output="cdna", mask_temperature=2.0)


def test_bicubic_resampling_keeps_a_moved_line_sharper_than_bilinear():
    """By hand (PyTorch's bicubic is Keys' kernel, a = -0.75: taps -0.09375, 0.59375, 0.59375,
    -0.09375 half a pixel off): a one-pixel white line moved half a pixel becomes two columns of
    0.5 bilinearly, of 0.59375 bicubically (the -0.09375 undershoots clipped to 0); moved half a
    pixel again, 0.25 / 0.5 / 0.25 against 0.296875 / 0.705078 / 0.296875. So a line moved
    twice keeps a quarter of its squared edges bilinearly and half of them bicubically, and
    whole-pixel moves copy it exactly either way."""
    from cvae.model.heads import warp

    line = torch.zeros(1, 3, 8, 8)
    line[..., 3] = 1
    half, whole = torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8)
    half[:, 0], whole[:, 0] = 0.5, 1.0
    want = {"bilinear": ([0.5, 0.5], [0.25, 0.5, 0.25]), "bicubic": ([0.59375, 0.59375], [0.296875, 0.705078125, 0.296875])}
    for mode, (once, twice) in want.items():
        moved = warp(line, half, mode)
        torch.testing.assert_close(moved[0, :, :, 2:4], torch.tensor(once).expand(3, 8, 2))
        torch.testing.assert_close(warp(moved, half, mode)[0, :, :, 1:4], torch.tensor(twice).expand(3, 8, 3))
        assert moved[..., [0, 1, 4, 5, 6, 7]].abs().max() == 0
        torch.testing.assert_close(warp(line, whole, mode), line.roll(-1, -1))
    with pytest.raises(ConfigError, match="flow_resample must be one of bilinear, bicubic, not 'nearest'"):
        tiny(output="flow", flow_resample="nearest")
    with pytest.raises(ConfigError, match="flow_resample 'bicubic' needs output 'flow'"):
        tiny(output="cdna", flow_resample="bicubic")


def test_every_moved_source_of_the_flow_head_samples_as_the_model_says():
    """``flow_resample`` reaches all that the flow head moves: the moved previous and latest real
    frames, the end-effector copy and the arm copy. Each taken alone (its mask logit 50) with a
    half-pixel displacement, a bicubic model's frame differs from a bilinear one's built with the
    same weights, and equals it where the head takes the generated image."""
    torch.manual_seed(0)
    cfg = dict(output="flow", cond_maps=True, ee_maps=True, ee_copy=True, arm_copy=True)
    models = {mode: tiny(**cfg, flow_resample=mode).eval() for mode in ("bilinear", "bicubic")}
    models["bicubic"].load_state_dict(models["bilinear"].state_dict())
    x, cond = batch(t=5)
    nc, sources = 3, models["bilinear"].decoder.head.sources
    frames = {}
    for source in ("generated", "moved previous", "moved latest real", "ee_copy", "arm_copy"):
        for mode, model in models.items():
            last = model.decoder.upc5[1]
            with torch.no_grad():
                last.weight[:, nc : nc + 4] = 0
                last.bias[nc : nc + 4] = 0.5
                last.bias[nc + 4 :] = 0
                last.bias[nc + 4 + sources.index(source)] = 50.0
            frames[source, mode] = model.predict(x[:, :2], cond, n_future=3, seed=1)
    for source in ("moved previous", "moved latest real", "ee_copy", "arm_copy"):
        assert (frames[source, "bicubic"] - frames[source, "bilinear"]).abs().max() > 1e-3, source
    torch.testing.assert_close(frames["generated", "bicubic"], frames["generated", "bilinear"])


def test_the_flow_photo_loss_is_the_moved_previous_frames_error_where_things_move():
    """By hand: one pixel turns from 0 to 0.5 at step 2 and another by 0.05 (under the 0.1 that
    counts as moving), every moved previous frame all 0: the error is 0.5 on that pixel's three
    channels at step 2 alone, a per-pixel mean of 1.5 / 48 = 1 / 32, summed over the steps."""
    x = torch.zeros(1, 3, 3, 4, 4)
    x[0, 2, :, 1, 1] = 0.5
    x[0, 2, :, 3, 3] = 0.05
    model, still = tiny(output="flow", flow_photo_weight=1.0), torch.zeros(1, 2, 2, 4, 4)
    assert model._photo(torch.zeros(1, 2, 3, 4, 4), still, x).item() == pytest.approx(1 / 32)
    assert model._photo(x[:, 1:], still, x).item() == 0  # a previous frame that, unmoved, is the next frame
    right = x[:, 2:].roll(1, -1).expand(1, 2, 3, 4, 4)  # the next frame one pixel to the right
    shift = torch.zeros(1, 2, 2, 4, 4)
    shift[:, :, 0] = 1.0  # every pixel takes its right neighbour's value
    assert model._photo(right, shift, x).item() == 0
    assert model._photo(right, still, x).item() == pytest.approx(1 / 32)
    with pytest.raises(ConfigError, match="flow_photo_weight needs output 'flow'"):
        tiny(output="cdna", flow_photo_weight=0.5)
    with pytest.raises(ConfigError, match="flow_photo_weight must be a number >= 0, not -1"):
        tiny(output="flow", flow_photo_weight=-1.0)
    with pytest.raises(ConfigError, match="flow_photo_blur needs flow_photo_weight > 0"):
        tiny(output="flow", flow_photo_blur=2.0)
    with pytest.raises(ConfigError, match="flow_photo_blur must be a number >= 0, not -1"):
        tiny(output="flow", flow_photo_weight=0.1, flow_photo_blur=-1.0)


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_a_blurred_photo_loss_pulls_the_flow_from_further_off_an_edge(sigma):
    """A flat square pushed 3 px right: with the flow at 0, the photometric term's gradient
    reaches the displacement of a pixel 2 px inside the square's new leading strip only when the
    frames are blurred (sigma 2 px): a bilinear sample of a flat colour has no slope there. Where
    it does reach, it pulls that pixel's displacement to the left, toward where the square was."""
    x = torch.zeros(1, 2, 3, 16, 16)
    x[0, 0, :, 4:12, 2:8] = 1.0
    x[0, 1, :, 4:12, 5:11] = 1.0
    model = tiny(output="flow", flow_photo_weight=1.0, flow_photo_blur=sigma)
    flow = torch.zeros(1, 1, 2, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(model._photo(x[:, :1], flow, x), flow)
    pull = grad[0, 0, 0, 8, 10]  # the x displacement at (row 8, column 10): 2 px inside the new strip
    if sigma:
        assert pull > 0  # gradient descent lowers it: the pixel samples further left
    else:
        assert pull == 0


def test_a_gaussian_blur_keeps_flat_images_and_spreads_a_point():
    from cvae.metrics import gaussian_blur

    flat = torch.full((2, 3, 8, 8), 0.4)
    torch.testing.assert_close(gaussian_blur(flat, 1.5), flat)
    point = torch.zeros(1, 1, 9, 9)
    point[..., 4, 4] = 1.0
    assert gaussian_blur(point, 0) is point
    blurred = gaussian_blur(point, 1.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-6) and blurred[..., 4, 4] < 0.2
    assert blurred[..., 4, 5] == pytest.approx(blurred[..., 5, 4].item())
    assert blurred[..., 4, 6] > 0 and blurred[..., 4, 7] == 0  # cut at 2 sigma


def test_the_flow_photo_loss_trains_the_flow_and_not_the_mask():
    """``flow_photo_weight``: teacher-forced, the term scales with its weight, and its gradient
    reaches the flow head's displacements but not its mask (the mask is trained by the pixel loss
    alone); off, or without teacher forcing, it is 0."""
    x, cond = batch(t=5)
    x[:, 3:, :, 20:30, 20:30] = 1.0  # something moves
    model = tiny(output="flow", cond_maps=True, ee_maps=True, flow_photo_weight=0.5)
    torch.manual_seed(1)
    losses = model(x, cond, teacher_forcing=True)
    model.cfg.flow_photo_weight = 1.0
    torch.manual_seed(1)
    assert model(x, cond, teacher_forcing=True).photo.item() == pytest.approx(2 * losses.photo.item())
    assert losses.photo.item() > 0
    last = model.decoder.upc5[1]
    (grad,) = torch.autograd.grad(losses.photo, last.weight)
    assert grad[:, 3:5].abs().sum() > 0 and grad[:, 7:].abs().sum() == 0
    assert model(x, cond, teacher_forcing=False).photo.item() == 0
    assert tiny(output="flow", cond_maps=True, ee_maps=True)(x, cond, teacher_forcing=True).photo.item() == 0


def test_the_flow_photo_loss_on_closed_loop_steps_moves_the_models_own_frames():
    """``flow_photo_rollout``: without teacher forcing the term scores the head moving the real
    context frames, then the model's own previous predictions; its gradient reaches the
    displacements, not the frames moved (so it cannot improve its score by redrawing them)."""
    x, cond = batch(t=5)
    x[:, 3:, :, 20:30, 20:30] = 1.0
    model = tiny(output="flow", cond_maps=True, ee_maps=True, flow_photo_weight=0.5, flow_photo_rollout=True)
    torch.manual_seed(0)
    losses = model(x, cond, teacher_forcing=False)
    assert losses.photo.item() > 0
    assert tiny(output="flow", cond_maps=True, ee_maps=True, flow_photo_weight=0.5)(
        x, cond, teacher_forcing=False).photo.item() == 0
    n, z = model.n_past, torch.zeros(x.shape[0], 4, model.latent_dim)
    h, skips = model._encode(x[:, :n])
    pred, _, (moved_from, flow) = model._rollout(x[:, :n], h, skips, cond, 5, z=z, moved=True)
    torch.testing.assert_close(moved_from[:, :n], x[:, :n])  # steps 1..n move the context's real frames ...
    torch.testing.assert_close(moved_from[:, n:], pred[:, n - 1 : -1])  # ... then the model's own
    prev = moved_from.detach().requires_grad_()
    flow = flow.detach().requires_grad_()
    grads = torch.autograd.grad(model._photo(prev, flow, x), [prev, flow], allow_unused=True)
    assert grads[0] is None and grads[1].abs().sum() > 0
    with pytest.raises(ConfigError, match="flow_photo_rollout needs flow_photo_weight > 0"):
        tiny(output="flow", flow_photo_rollout=True)


def test_the_flow_truth_loss_by_hand_and_what_it_trains():
    """``SVG._flow_truth``: Huber per pixel (quadratic within a pixel, then linear), summed over x
    and y, only where the truth is known, the per-pixel mean summed over the steps. In the
    training pass it scores the displacements the head applies to the previous frame, on
    teacher-forced and closed-loop steps alike; teacher-forced, its gradient reaches the decoder's
    last layer only in the channels of those displacements (not the mask's, nor the other flow's)."""
    truth, known = torch.zeros(1, 2, 2, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    truth[0, 0, 0, 1, 1], known[0, 0, 1, 1] = 3.0, True  # one known pixel that moved 3 px
    truth[0, 1, 1, 2, 2], known[0, 1, 2, 2] = 0.5, True  # and one that moved half a pixel
    truth[0, 1, 0, 3, 3] = 9.0  # unknown: not scored
    still = torch.zeros(1, 2, 2, 4, 4)
    assert SVG._flow_truth(still, truth, known).item() == pytest.approx((3 - 0.5) / 16 + 0.5 * 0.25 / 16)
    assert SVG._flow_truth(truth, truth, known).item() == 0
    x, cond = batch(t=5)
    model = tiny(output="flow", cond_maps=True, ee_maps=True)
    flow, known = torch.full((2, 4, 2, 64, 64), 2.0), torch.ones(2, 4, 64, 64, dtype=torch.bool)
    for forced in (True, False):
        torch.manual_seed(1)
        losses = model(x, cond, teacher_forcing=forced, true_flow=(flow, known))
        assert losses.flow_truth.item() > 0
        last = model.decoder.upc5[1]
        (grad,) = torch.autograd.grad(losses.flow_truth, last.weight)
        assert grad[:, 3:5].abs().sum() > 0
        if forced:  # closed-loop, a later step's displacements also depend on the frames fed back
            assert grad[:, 5:].abs().sum() == 0
        assert model(x, cond, teacher_forcing=forced).flow_truth.item() == 0
    with pytest.raises(ConfigError, match="flow_truth_weight needs output 'flow'"):
        from cvae.config import preset

        preset("lab", flow_truth_weight=0.1)


@pytest.mark.parametrize("deadzone", [0.0, 0.5])
def test_a_flow_dead_zone_keeps_still_pixels_unresampled(deadzone):
    """A flow head that bleeds a 0.28 px displacement everywhere and takes the moved previous
    frame blurs the latest real frame step after step (under 80% of its edges after 8 steps); with
    a 0.5 px dead zone the same head repeats it exactly, and those displacements get no gradient
    (so a new model, whose displacements all start near 0, must learn them without one first:
    ``Config`` refuses a dead zone without ``--init``). Displacements past it still learn."""
    from cvae.metrics import sharpness

    model = tiny(output="flow", flow_deadzone=deadzone).eval()
    last, nc = model.decoder.upc5[1], 3
    with torch.no_grad():
        last.weight[:, nc : nc + 4] = 0
        last.bias[nc : nc + 4] = 0.2  # both displacements (0.2, 0.2) px: 0.28 px long
        last.bias[nc + 5] = 50.0  # the moved previous frame's mask logit: the others under 1e-20
    checker = ((torch.arange(64)[:, None] // 4 + torch.arange(64)[None] // 4) % 2).float().expand(1, 2, 3, 64, 64)
    cond = torch.zeros(1, 10, 7)
    pred = model.predict(checker.clone(), cond, n_future=8, seed=3)
    if deadzone:
        torch.testing.assert_close(pred, checker[:, :1].expand_as(pred), rtol=0, atol=1e-5)
    else:
        assert sharpness(pred[0, 0, -1]) < 0.8 * sharpness(checker[0, -1])
    model.train()
    for bias, learns in ((0.2, not deadzone), (1.0, True)):
        last.weight.grad = None
        with torch.no_grad():
            last.bias[nc : nc + 4] = bias
        model(*batch()).mse.sum().backward()
        assert bool(last.weight.grad[:, nc : nc + 4].abs().sum() > 0) == learns, bias


def test_the_end_effector_sprite_lands_on_the_end_effector():
    """By hand: a map that reads its place off the first two condition columns and a sprite that
    draws a white 4x4 square at its centre on black: at the place (row 26, column 23) the frame holds
    the square there (its centre of mass within 0.01 px, all its light kept), black elsewhere;
    the sprite's drawing and the place both get gradients."""
    from cvae.model.cues import SPRITE_PX

    decoder = tiny(output="flow", cond_maps=True, ee_maps=True, ee_sprite=True).decoder
    with torch.no_grad():
        decoder.ee_map.where.weight.zero_()
        decoder.ee_map.where.weight[0, 0] = decoder.ee_map.where.weight[1, 1] = 1.0
        decoder.ee_map.where.bias.zero_()
        last = decoder.ee_sprite.net[-1]
        last.weight.zero_()
        square = torch.full((3, SPRITE_PX, SPRITE_PX), -30.0)
        mid = SPRITE_PX // 2
        square[:, mid - 2 : mid + 2, mid - 2 : mid + 2] = 30.0
        last.bias.copy_(square.flatten())
        last.weight[:, 2] = 0.01  # the third condition column shades the sprite a little, so it gets a gradient
    cond = torch.zeros(1, 7)
    cond[0, :2] = torch.tensor([26, 23]) * 2 / 63 - 1
    drawn = decoder.ee_sprite(cond, decoder.ee_map.location(cond), 64, 64)
    assert drawn.shape == (1, 3, 64, 64)
    light = drawn[0, 0]
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    assert abs(light.sum() - 16) < 1e-3
    assert abs((light * rows).sum() / light.sum() - 26) < 0.01 and abs((light * cols).sum() / light.sum() - 23) < 0.01
    assert light[25:28, 22:25].min() > 0.99 and light[:, :19].max() < 1e-6  # a 4-px square about a pixel centre: 3 whole
    (drawn * torch.linspace(0, 1, 64)).sum().backward()
    assert decoder.ee_map.where.weight.grad.abs().sum() > 0 and last.weight.grad.abs().sum() > 0


def test_the_end_effector_copy_moves_the_latest_real_frame_with_the_end_effector():
    """By hand: an end-effector map that reads its place off the first two condition columns, a
    frame with a 3x3 white gripper at (row 20, column 30) on grey, the end effector there at rest
    and at (row 26, column 23) this step: the copy is the frame moved by (+6, -7) pixels, so the
    gripper is exactly at (26, 23), and the map's place gets a gradient through it."""
    decoder = tiny(output="flow", cond_maps=True, ee_maps=True, ee_copy=True).decoder
    with torch.no_grad():
        decoder.ee_map.where.weight.zero_()
        decoder.ee_map.where.weight[0, 0] = decoder.ee_map.where.weight[1, 1] = 1.0
        decoder.ee_map.where.bias.zero_()

    def cond_at(row: int, col: int) -> torch.Tensor:
        c = torch.zeros(1, 7)
        c[0, :2] = torch.tensor([row, col]) * 2 / 63 - 1  # the copy's map clamps its place, within [-1, 1]
        return c

    frame = torch.full((1, 3, 64, 64), 0.3)
    frame[..., 19:22, 29:32] = 1.0
    copy = decoder.ee_copy_of(frame, cond_at(20, 30), cond_at(26, 23))
    want = torch.full((1, 3, 64, 64), 0.3)
    want[..., 25:28, 22:25] = 1.0
    torch.testing.assert_close(copy, want, atol=1e-4, rtol=0)
    (copy * torch.linspace(0, 1, 64)).sum().backward()  # moving the gripper right would raise it
    assert decoder.ee_map.where.weight.grad.abs().sum() > 0


def test_the_bundled_model_from_before_the_heads_still_fits():
    """The config and weight shapes of the checkpoint bundled before output heads existed: the
    same config builds a model with exactly those weights."""
    import json
    from pathlib import Path

    old = json.loads((Path(__file__).parent / "data" / "checkpoint_before_heads.json").read_text())
    model = SVG.from_config(old["config"])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == old["shapes"]


def test_checkpoints_from_before_the_heads_load_as_image_models(tmp_path):
    cfg = preset("cpu", **TINY).to_dict()
    old = {k: v for k, v in cfg.items()
           if k not in ("output", "cond_maps", "ee_maps", "ee_copy", "ee_sprite", "pixel_loss", "kl_free_bits")}
    old["prior"] = "fixed"  # a config written before these fields existed
    model = tiny(last_frame_skip=True)
    checkpoint.save(tmp_path / "old", model, old, {"epoch": 1})
    loaded, _ = checkpoint.load_model(tmp_path / "old")
    assert loaded.decoder.output == "image" and loaded.decoder.cond_dim == 0 and loaded.pixel_loss == "mse"


@pytest.mark.parametrize("prior,last_frame_skip,channels_last,output,cond_maps,ee_copy,z_map",
                         [("fixed", False, False, "image", False, False, 0), ("learned", True, False, "image", False, False, 0),
                          ("fixed", False, True, "image", False, False, 0), ("learned", True, True, "image", False, False, 0),
                          ("fixed", True, False, "compose", True, False, 0), ("fixed", True, True, "cdna", True, False, 0),
                          ("learned", True, True, "flow", True, False, 0), ("fixed", False, False, "flow", False, False, 0),
                          ("learned", True, False, "flow", True, True, 0), ("fixed", False, True, "flow", False, False, 2),
                          ("learned", True, False, "flow", True, True, 3), ("learned", False, True, "flow", True, False, -2),
                          ("learned", True, True, "flow", True, "clear", 2)])
def test_batched_teacher_forcing_equals_frame_by_frame_reference(prior, last_frame_skip, channels_last, output,
                                                                 cond_maps, ee_copy, z_map):
    """Same losses and same gradients: batching across time (and the channels_last layout that
    training uses) changes the speed, not the math. (``ee_copy`` here brings the sprite and the still copy too,
    and as "clear" also the arm copy and ``arm_clear``; a negative ``z_map`` means that many channels
    with a learned map prior, its weights made non-zero.)"""
    arm = ee_copy == "clear"
    model = tiny(prior=prior, last_frame_skip=last_frame_skip, output=output, cond_maps=cond_maps,
                 ee_maps=bool(ee_copy), ee_copy=bool(ee_copy), ee_sprite=bool(ee_copy), still_copy=bool(ee_copy),
                 z_map=abs(z_map), map_prior=z_map < 0, arm_copy=arm, arm_clear=arm).eval()
    if z_map < 0:
        torch.nn.init.normal_(model.prior_map.net[2].weight, 0, 0.1, generator=torch.Generator().manual_seed(2))
    ref_model = copy.deepcopy(model)
    if channels_last:
        model.channels_last = True
        model = model.to(memory_format=torch.channels_last)
    x, c = batch(t=6)
    torch.manual_seed(5)
    fast = model(x, c, teacher_forcing=True)
    torch.manual_seed(5)
    mse, kld = reference_losses(ref_model, x, c)
    torch.testing.assert_close(fast.mse, mse, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast.kld, kld, rtol=1e-4, atol=1e-5)
    (fast.mse.sum() + fast.kld.sum()).backward()
    (mse.sum() + kld.sum()).backward()
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6, msg=name)


def test_bf16_autocast_keeps_the_losses():
    """The CUDA recipe (bf16 autocast), run on the CPU: losses within 2% of fp32, and mu/logvar
    leave the Gaussian LSTMs in float32, so the KL's exp() is not taken in bf16."""
    model = tiny(prior="learned")
    x, c = batch(t=6)
    torch.manual_seed(1)
    full = model(x, c, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        half = model(x, c, True)
    assert half.pred.dtype == torch.bfloat16 and half.kld.dtype == torch.float32
    torch.testing.assert_close(half.kld.sum(), full.kld.sum(), rtol=2e-2, atol=0)
    torch.testing.assert_close(half.mse.sum(), full.mse.sum(), rtol=1e-2, atol=0)


def test_full_width_is_the_published_architecture():
    model = SVG()
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 128]
    assert model.predictor.lstm.num_layers == 2 and model.posterior.lstm.num_layers == 1
    assert model.predictor.embed.in_features == 7 + 128 + 64 and model.prior is None


@pytest.mark.parametrize("prior", ["fixed", "learned"])
def test_free_bits_keep_the_posterior_free_and_the_prior_learning(prior):
    """Below the free nats the posterior gets no KL gradient (z may carry that much at no cost);
    the learned prior still gets the full gradient towards the posterior."""
    model = tiny(prior=prior)
    x, c = batch()
    plain = model(x, c, True)
    free = model(x, c, True, free_bits=1e3)  # far above this KL: the posterior's KL term is flat
    torch.testing.assert_close(free.kld, plain.kld)  # what is logged is the true KL
    post = [p for n, p in model.named_parameters() if n.startswith("posterior.")]
    grads = torch.autograd.grad(free.kl_loss.sum(), post, allow_unused=True, retain_graph=True)
    assert all(g is None or g.abs().max() == 0 for g in grads)
    assert any(g is not None and g.abs().max() > 0
               for g in torch.autograd.grad(plain.kl_loss.sum(), post, retain_graph=True))
    if prior == "learned":
        pri = [p for n, p in model.named_parameters() if n.startswith("prior.")]
        torch.testing.assert_close(torch.autograd.grad(free.kl_loss.sum(), pri, allow_unused=True),
                                   torch.autograd.grad(plain.kl_loss.sum(), pri, allow_unused=True))
    else:
        torch.testing.assert_close(free.kl_loss, torch.full_like(free.kl_loss, 1e3))
    with pytest.raises(ValueError, match="kl_free_bits must be a number >= 0"):
        preset("cpu", kl_free_bits=-1.0)


@pytest.mark.parametrize("prior", ["fixed", "learned"])
def test_best_of_trains_on_the_closest_of_k_prior_futures(prior):
    """The term is, per sequence, the pixel loss of the closest of K futures drawn from the prior
    with predictions fed back (the first B // K sequences get the draws), averaged: computed here
    by hand from the same draws. Only the winners get a gradient, and it reaches z's inputs."""
    model = calibrated(tiny(prior=prior, last_frame_skip=True))  # the image head: the heads start at copy-last
    x, c = batch(b=4, t=6)
    torch.manual_seed(5)
    out = model(x, c, True, best_of=2)
    torch.manual_seed(5)
    torch.randn(4, 5, model.z_dim)  # the posterior path's draw comes first
    noise = torch.randn(4, 5, model.z_dim)
    first = x[:2].repeat_interleave(2, 0)
    h, skips = model._encode(x)  # as the training pass encodes them: one batch-norm batch

    def rep(v):
        return v[:2, :2].repeat_interleave(2, 0)

    pred, _ = model._rollout(first[:, :2], rep(h), [rep(s) for s in skips], c[:2].repeat_interleave(2, 0), 6, noise=noise)
    errs = (pred[:, 1:] - first[:, 2:]).pow(2).mean((2, 3, 4)).sum(1).view(2, 2)
    torch.testing.assert_close(out.best, errs.min(1).values.mean())
    assert out.best < errs.mean() - 1e-4  # the draws differ, and the closer one counts
    (grad,) = torch.autograd.grad(out.best, model.predictor.embed.weight)  # its last z_dim columns read z
    assert grad[:, -model.z_dim:].abs().max() > 0
    assert model(x, c, True).best.item() == 0  # off by default: the loss is SVG's
    with pytest.raises(ValueError, match="best_of must be >= 0, not -1"):
        preset("cpu", best_of=-1)


@pytest.mark.parametrize("recon_weight", [0.0, 0.1, 1.0])
def test_train_step_weighs_the_svg_pixel_term(recon_weight):
    """loss = recon_weight * pixel loss + beta * KL + best_of_weight * best of K, from the same
    draws, and that is the loss whose gradient the optimiser gets."""
    from cvae.train import train_step

    model = calibrated(tiny())
    x, c = batch(b=4, t=6)
    torch.manual_seed(7)
    parts = model(x, c, True, best_of=2)
    want = recon_weight * parts.recon.sum() + 0.5 * parts.kl_loss.sum() + 2.0 * parts.best
    last = model.decoder.upc5[-1].weight
    (want_grad,) = torch.autograd.grad(want, last)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(7)
    got = train_step(model, opt, x, c, 0.5, True, amp=False, best_of=2, best_of_weight=2.0, recon_weight=recon_weight)
    torch.testing.assert_close(got[0], want.detach())
    torch.testing.assert_close(last.grad, want_grad)
    with pytest.raises(ValueError, match="recon_weight 0 needs best_of or energy_truths > 0"):
        preset("cpu", recon_weight=0.0)
    assert preset("cpu", recon_weight=0.0, best_of=4).recon_weight == 0
    assert preset("cpu", recon_weight=0.0, energy_truths=4).recon_weight == 0


@pytest.mark.parametrize("prior", ["fixed", "learned"])
def test_predict_is_deterministic_per_seed_and_samples_differ(prior):
    model = calibrated(tiny(prior=prior))
    x, c = batch(t=12)
    a = model.predict(x[:, :2], c, 10, n_samples=3, seed=1)
    b = model.predict(x[:, :2], c, 10, n_samples=3, seed=1)
    assert a.shape == (2, 3, 10, 3, 64, 64) and torch.equal(a, b)
    assert not torch.equal(a, model.predict(x[:, :2], c, 10, n_samples=3, seed=2))
    assert (a[:, 0] - a[:, 1]).abs().max() > 1e-3  # several futures, not one copied
    assert model.training  # predict restores the mode it found


def test_predict_rows_share_noise_and_do_not_depend_on_the_batch():
    model = calibrated(tiny())
    x, c = batch(b=2, t=12)
    both = model.predict(x[:, :2], c, 10, n_samples=4, seed=0)
    alone = model.predict(x[1:, :2], c[1:], 10, n_samples=4, seed=0)
    torch.testing.assert_close(both[1:], alone, rtol=1e-5, atol=1e-6)
    same_inputs = model.predict(x[:1, :2].expand(2, -1, -1, -1, -1), c[:1].expand(2, -1, -1), 10, 4, seed=0)
    torch.testing.assert_close(same_inputs[0], same_inputs[1])
    with pytest.raises(ValueError, match="context has 3 frames"):
        model.predict(x[:, :3], c, 10)
    with pytest.raises(ValueError, match="cond has 5 steps"):
        model.predict(x[:, :2], c[:, :5], 10)


def test_predict_with_a_seed_per_row_draws_each_rows_own_noise():
    model = calibrated(tiny())
    x, c = batch(b=2, t=12)
    rows = model.predict(x[:, :2], c, 10, n_samples=3, seed=[5, 9])
    for i, s in enumerate((5, 9)):  # row i is what it would be alone with its seed, whatever the batch
        torch.testing.assert_close(rows[i], model.predict(x[i : i + 1, :2], c[i : i + 1], 10, 3, seed=s)[0],
                                   rtol=1e-5, atol=1e-6)
    same = model.predict(x[:1, :2].expand(2, -1, -1, -1, -1), c[:1].expand(2, -1, -1), 10, 3, seed=range(2))
    assert (same[0] - same[1]).abs().max() > 1e-3  # the same scene, two draws
    torch.testing.assert_close(model.predict(x[:, :2], c, 10, 3, seed=[4]), model.predict(x[:, :2], c, 10, 3, seed=4))
    torch.testing.assert_close(model.predict(x[:, :2], c, 10, 1, seed=np.int64(4)), model.predict(x[:, :2], c, 10, 1, seed=4))
    with pytest.raises(ValueError, match="3 seeds for 2 rows"):
        model.predict(x[:, :2], c, 10, seed=[1, 2, 3])


def test_changing_actions_changes_predictions():
    model = calibrated(tiny())
    x, c = batch(b=1, t=12)
    edited = c.clone()
    edited[:, :, :2] *= -3
    a = model.predict(x[:, :2], c, 10, seed=0)
    b = model.predict(x[:, :2], edited, 10, seed=0)
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(a[..., 0, :, :, :], model.predict(x[:, :2], c, 10, seed=0)[..., 0, :, :, :])


@pytest.mark.parametrize("kind,t,total,expected", [
    ("none", 0, 100, 0.5), ("none", 77, 100, 0.5),
    ("monotonic", 0, 100, 0.0), ("monotonic", 25, 100, 0.25), ("monotonic", 50, 100, 0.5), ("monotonic", 99, 100, 0.5),
    ("cyclical", 0, 100, 0.0), ("cyclical", 12, 100, 0.36), ("cyclical", 25, 100, 0.5), ("cyclical", 34, 100, 0.0),
    ("cyclical", 50, 100, 0.48), ("cyclical", 67, 100, 0.5), ("cyclical", 80, 100, 0.36),
])
def test_kl_annealing_known_points(kind, t, total, expected):
    # weight 0.5, ratio 0.5, cycles 3: T/M = 33.33, so a cycle restarts every ceil(T/M) = 34 steps
    assert kl_beta(kind, t, total, cycles=3, ratio=0.5, weight=0.5) == pytest.approx(expected, abs=0.006)


def test_monotonic_reaches_one_and_cyclical_repeats():
    betas = [kl_beta("cyclical", t, 300, cycles=3, ratio=0.5) for t in range(300)]
    assert betas[0] == 0 and max(betas) == 1.0
    assert betas[:100] == betas[100:200] == betas[200:300]
    assert kl_beta("monotonic", 299, 300, ratio=1.0) == pytest.approx(299 / 300)
    with pytest.raises(ValueError):
        kl_beta("sigmoid", 0, 10)


def test_learning_rate_schedule_known_points():
    assert [lr_factor("constant", t, 100) for t in (0, 50, 99)] == [1.0, 1.0, 1.0]
    # warm-up: the first step already moves, the warm-up's last reaches the full rate
    assert [lr_factor("constant", t, 100, warmup=4) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = [lr_factor("cosine", t, 101, warmup=0, floor=0.1) for t in range(101)]
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.55) and cos[100] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(cos, cos[1:]))
    # with a warm-up the cosine starts where it ends
    assert lr_factor("cosine", 10, 110, warmup=10, floor=0.0) == 1.0
    assert lr_factor("cosine", 109, 110, warmup=10, floor=0.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("cosine", 500, 110, floor=0.2) == pytest.approx(0.2)  # past the end (--epochs cut on resume)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        lr_factor("step", 0, 10)


def test_teacher_forcing_schedule():
    f = lambda e: teacher_forcing_ratio(e, tfr=1.0, start_decay_epoch=10, decay_step=0.1, lower_bound=0.3)
    assert [f(e) for e in (0, 9, 10)] == [1.0, 1.0, 1.0]
    assert f(11) == pytest.approx(0.9) and f(15) == pytest.approx(0.5)
    assert f(17) == pytest.approx(0.3) and f(100) == pytest.approx(0.3)


def test_teacher_forcing_coin_is_shared_and_follows_the_ratio():
    from cvae.schedules import use_teacher_forcing

    torch.manual_seed(0)
    before = torch.rand(())
    flips = [use_teacher_forcing(0.3, seed=1, step=s) for s in range(2000)]
    torch.manual_seed(0)
    assert torch.rand(()) == before  # the global RNG is untouched
    assert flips == [use_teacher_forcing(0.3, seed=1, step=s) for s in range(2000)]
    assert 0.25 < sum(flips) / len(flips) < 0.35
    assert all(use_teacher_forcing(1.0, 1, s) for s in range(50)) and not any(use_teacher_forcing(0.0, 1, s) for s in range(50))


def test_presets_and_config_round_trip():
    lab = preset("lab")
    assert (lab.z_dim, lab.g_dim, lab.rnn_size, lab.batch_size, lab.lr, lab.prior) == (64, 128, 256, 12, 0.002, "fixed")
    assert (lab.epochs, lab.iters_per_epoch, lab.posterior_layers, lab.predictor_layers) == (300, 600, 1, 2)
    lp = preset("svg-lp")
    assert (lp.prior, lp.kl_anneal, lp.kl_weight, lp.batch_size) == ("learned", "none", 1e-4, 100)
    assert Config.from_dict(lab.to_dict()) == lab
    with pytest.raises(ValueError, match="unknown config field"):
        Config.from_dict({"zdim": 3})
    with pytest.raises(ValueError, match="prior must be one of"):
        preset("cpu", prior="gaussian")
    with pytest.raises(ConfigError, match="flow_deadzone 0.5 needs --init: a new flow head's displacements"):
        preset("cpu", flow_deadzone=0.5)
    assert preset("cpu", flow_deadzone=0.5, init="runs/cpu/best").flow_deadzone == 0.5


def test_checkpoint_round_trip(tmp_path):
    cfg = preset("cpu", **TINY, prior="learned").to_dict()
    torch.manual_seed(0)
    model = SVG.from_config(cfg)
    checkpoint.save(tmp_path / "ck", model, cfg, {"epoch": 3}, {"step": torch.tensor(4)})
    loaded, meta = checkpoint.load_model(tmp_path / "ck")
    assert meta["epoch"] == 3 and meta["config"] == cfg and not loaded.training
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert checkpoint.load_state(tmp_path / "ck")["step"] == 4
    checkpoint.save(tmp_path / "ck", model, cfg, {"epoch": 4})  # replaces the old one whole
    assert checkpoint.read_meta(tmp_path / "ck")["epoch"] == 4 and not list(tmp_path.glob(".ck*"))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_and_corrupt_checkpoints_are_refused(tmp_path):
    model = tiny()
    cfg = preset("cpu", **TINY).to_dict()
    checkpoint.save(tmp_path / "ck", model, cfg, {}, {"x": torch.zeros(1)})
    torch.save({"x": Evil()}, tmp_path / "ck" / "state.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"state\.pt: refused because it holds code \(the global print\)"):
        checkpoint.load_state(tmp_path / "ck")
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(checkpoint.CheckpointError, match="pickled checkpoints are refused"):
        checkpoint.load_model(tmp_path / "whole.pt")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        checkpoint.load_model(tmp_path / "ck")
    (tmp_path / "ck" / "meta.json").write_text("{")
    with pytest.raises(checkpoint.CheckpointError, match=r"meta\.json: not valid JSON"):
        checkpoint.load_model(tmp_path / "ck")
    with pytest.raises(checkpoint.CheckpointError, match="no model.safetensors found"):
        checkpoint.load_model(tmp_path)


def test_energy_term_scores_prior_futures_against_several_truths():
    """``futures`` adds the energy score of K prior futures, fed back as at test time, against K
    true futures of each scene; train_step weighs it by ``energy_weight``, and its gradient
    reaches the prior (the only way z is shaped by where the world branches)."""
    from cvae.metrics import energy_score
    from cvae.train import train_step

    model = calibrated(tiny(prior="learned"))
    x, c = batch(b=4, t=6)
    ctx, cond = x[:2, :2], c[:2]
    truths = torch.rand(2, 3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    parts = model(x, c, True, futures=(ctx, cond, truths))
    torch.manual_seed(7)
    plain = model(x, c, True)
    assert plain.energy == 0 and parts.energy > 0 and torch.isfinite(parts.energy)
    # by hand: the same noise, the same rollout, then metrics.energy_score
    torch.manual_seed(7)
    model(x, c, True)  # the SVG pass draws first
    noise = torch.randn(6, 5, model.z_dim)
    h, skips = model._encode(ctx)
    pred, _ = model._rollout(ctx.repeat_interleave(3, 0), h.repeat_interleave(3, 0),
                             [s.repeat_interleave(3, 0) for s in skips], cond[:, :5].repeat_interleave(3, 0), 6,
                             noise=noise)
    want = energy_score(pred[:, 1:].view(2, 3, 4, 3, 64, 64), truths).mean()
    torch.testing.assert_close(parts.energy, want)
    grads = torch.autograd.grad(parts.energy, list(model.prior.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(7)
    got = train_step(model, opt, x, c, 0.5, True, amp=False, futures=(ctx, cond, truths),
                     terms=FutureTerms(weight=2.0))
    torch.manual_seed(7)
    again = model(x, c, True, futures=(ctx, cond, truths))
    torch.testing.assert_close(got[0], (again.recon.sum() + 0.5 * again.kl_loss.sum() + 2.0 * again.energy).detach())
    torch.testing.assert_close(got[4], again.energy.detach())
    # energy_patch reaches the score: the same rollout, scored per 16 x 16 patch
    torch.manual_seed(7)
    patched = train_step(model, opt, x, c, 0.5, True, amp=False, futures=(ctx, cond, truths),
                         terms=FutureTerms(patch=16))
    torch.testing.assert_close(patched[4], energy_score(pred[:, 1:].view(2, 3, 4, 3, 64, 64), truths, 16).mean())
    assert not torch.isclose(patched[4], got[4])
    # energy_pool reaches it: the patch score plus that of the futures averaged over 4 x 4 pixels
    torch.manual_seed(7)
    pooled = train_step(model, opt, x, c, 0.5, True, amp=False, futures=(ctx, cond, truths),
                        terms=FutureTerms(patch=8, pool=4))
    scored = pred[:, 1:].view(2, 3, 4, 3, 64, 64)
    torch.testing.assert_close(pooled[4], energy_score(scored, truths, 8).mean()
                               + energy_score(scored, truths, 8, pool=4).mean())
    # energy_branch reaches it: against identical truths the spread term drops out
    same = truths[:, :1].expand_as(truths).contiguous()
    torch.manual_seed(7)
    gated = train_step(model, opt, x, c, 0.5, True, amp=False, futures=(ctx, cond, same),
                       terms=FutureTerms(patch=16, branch=True))
    scored = pred[:, 1:].view(2, 3, 4, 3, 64, 64)
    torch.testing.assert_close(gated[4], energy_score(scored, same, 16, branch=True).mean())
    assert gated[4] > energy_score(scored, same, 16).mean()
    # energy_branch_weight reaches it: truths that branch in one corner only, that corner weighted
    corner = same.clone()
    corner[..., :16, :16] = truths[..., :16, :16]
    torch.manual_seed(7)
    weighted = train_step(model, opt, x, c, 0.5, True, amp=False, futures=(ctx, cond, corner),
                          terms=FutureTerms(patch=16, branch_weight=4.0))
    torch.testing.assert_close(weighted[4], energy_score(scored, corner, 16, branch_weight=4.0).mean())
    assert not torch.isclose(weighted[4], energy_score(scored, corner, 16).mean())


def test_noise_weight_charges_the_map_priors_std():
    """``noise_weight``: the step's ``noise`` is the learned map prior's std averaged over the
    future steps' cells (1 as the prior starts, N(0, I)), 0 when not asked for, and charging it
    alone lowers that std; it needs a learned map prior and true futures to pay for the noise."""
    model = tiny(prior="learned", output="flow", z_map=2, map_prior=True)
    x, cond = batch(t=5)
    assert model(x, cond).noise == 0
    torch.testing.assert_close(model(x, cond, terms=FutureTerms(noise_weight=1.0)).noise, torch.tensor(1.0))
    opt = torch.optim.Adam(model.prior_map.parameters(), lr=0.02)
    for _ in range(20):
        opt.zero_grad()
        model(x, cond, terms=FutureTerms(noise_weight=1.0)).noise.backward()
        opt.step()
    assert model(x, cond, terms=FutureTerms(noise_weight=1.0)).noise < 0.8
    with pytest.raises(ConfigError, match="noise_weight needs map_prior true"):
        Config(**TINY, prior="learned", z_map=2, energy_truths=2, noise_weight=0.1).validate()
    with pytest.raises(ConfigError, match="noise_weight needs energy_truths > 0"):
        Config(**TINY, prior="learned", z_map=2, map_prior=True, noise_weight=0.1).validate()


def test_the_spread_factor_widens_to_gain_times_the_heads_map_and_keeps_a_share_elsewhere():
    """Model std 0.1 everywhere; the head says 0.3, 0.02, 0.04 and 1.0: gain 2, base 0.6 keeps
    x 6 -> at most 4, x 0.6 (base: 0.04 is below 0.6 x 0.1), x 0.8 (0.08 / 0.1) and x 4."""
    from cvae.model.spread import widen, widen_factor

    m = torch.full((4,), 0.1)
    g = widen_factor(torch.tensor([0.3, 0.02, 0.04, 1.0]), m, 2.0, 0.6)
    torch.testing.assert_close(g, torch.tensor([4.0, 0.6, 0.8, 4.0]))
    mean = torch.full((1, 1, 3, 2, 2), 0.5)
    samples = mean[:, None] + torch.tensor([-0.1, 0.1]).view(1, 2, 1, 1, 1, 1)  # std 0.1 at every pixel
    out = widen(samples, mean, torch.tensor([[[[1.0, 0.5], [3.0, 0.0]]]]))
    torch.testing.assert_close(pixel_std(out, 1), torch.tensor([[[[0.1, 0.05], [0.3, 0.0]]]]))
    assert out.min() >= 0 and out.max() <= 1  # 0.5 + 3 x 0.1 stays inside; clamped where not


def test_chosen_keeps_the_first_future_then_those_whose_spread_follows_the_map():
    """Six futures of one 1 x 2-pixel frame: draw 0 and three more differ at pixel 0 (the head's
    map says the world branches there), two differ at pixel 1 only. Kept three: draw 0 first,
    then two of the pixel-0 ones, never a pixel-1 one; the first two kept are the first two of
    three kept (a choice does not depend on how many are kept)."""
    from cvae.model.spread import chosen

    at0 = torch.tensor([0.2, 0.0, 0.9, 0.1, 0.5, 0.5])  # pixel 0 of each future
    at1 = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0, 1.0])  # pixel 1: only futures 4 and 5 move it
    at0[4:] = 0.5
    samples = torch.stack([at0, at1], -1).view(1, 6, 1, 1, 1, 2).expand(1, 6, 1, 3, 1, 2)
    w = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    kept = chosen(samples, w, 3)
    picked = [int((samples[0] == k).all((1, 2, 3, 4)).nonzero()[0]) for k in kept[0]]
    assert picked[0] == 0 and set(picked[1:]) <= {1, 2, 3} and len(set(picked)) == 3
    torch.testing.assert_close(chosen(samples, w, 2), kept[:, :2])


def test_a_spread_head_with_select_shows_whole_draws_chosen_for_its_map_and_the_first_draw_first():
    """With spread_select 8, gain 0 and base 1 (no widening) a model returns 4 of the 8 futures
    its own draws give, the first of them draw 0, the one sample, the others not simply the
    next three; 1 or 2 asked give the first 1 or 2 of those 4. A select not above spread_reference is refused by name."""
    base = calibrated(tiny(z_map=2, map_noise_only=True, z_hold=True, z_scale=3.0))
    cfg = replace(base.cfg, spread_head=4, spread_gain=0.0, spread_base=1.0, spread_reference=4, spread_select=8)
    model = SVG(cfg)
    model.load_state_dict(base.state_dict(), strict=False)
    torch.nn.init.normal_(model.spread.net[-1].weight, std=0.5, generator=torch.Generator().manual_seed(0))
    torch.nn.init.constant_(model.spread.net[-1].bias, 5.0)  # a map above 0 that varies, so draws are chosen
    x, c = batch(t=6)
    shown = model.predict(x[:, :2], c, 4, 4, seed=3)
    drawn = base.predict(x[:, :2], c, 4, 8, seed=3)
    orders = []
    for row in range(len(x)):
        found = [int((drawn[row] - s).abs().amax((1, 2, 3, 4)).argmin()) for s in shown[row]]
        assert found[0] == 0 and len(set(found)) == 4, found
        torch.testing.assert_close(shown[row], drawn[row, found])
        orders.append(found)
    assert any(found != [0, 1, 2, 3] for found in orders)  # chosen, not the first four drawn
    torch.testing.assert_close(model.predict(x[:, :2], c, 4, 2, seed=3), shown[:, :2])
    torch.testing.assert_close(model.predict(x[:, :2], c, 4, 1, seed=3), shown[:, :1])
    with pytest.raises(ConfigError, match=r"spread_select must be 0 or a whole number of futures over spread_reference \(4\)"):
        replace(cfg, spread_select=4).validate()


def test_a_spread_head_scales_each_futures_departure_from_the_noiseless_one():
    """A head whose map is 0 everywhere keeps the share spread_base of every departure: the same
    model without it, its futures pulled toward its noiseless one by that share. Sample k is the
    same whatever the number drawn (the std map is always over spread_reference futures), and
    training refuses a head (it is fitted afterwards)."""
    base = calibrated(tiny(z_map=2, map_noise_only=True, z_hold=True, z_scale=3.0))
    model = SVG(replace(base.cfg, spread_head=4, spread_base=0.5, spread_reference=4))
    model.load_state_dict(base.state_dict(), strict=False)
    assert {k for k in model.state_dict() if k not in base.state_dict()} == {
        f"spread.net.{i}.{p}" for i in (0, 2, 4, 6, 8) for p in ("weight", "bias")}
    last = model.spread.net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, -1.0)  # below 0: a map of 0
    x, c = batch(t=6)
    futures = model.predict(x[:, :2], c, 4, 4, seed=3)
    plain = base.predict(x[:, :2], c, 4, 4, seed=3)
    calm = replace(base.cfg, z_scale=0.0)
    base.cfg, sampling = calm, base.cfg
    noiseless = base.predict(x[:, :2], c, 4, 1)[:, :1]
    base.cfg = sampling
    assert pixel_std(plain, 1).mean() > 1e-3  # the futures differ, so the test can see a scaling
    torch.testing.assert_close(futures, (noiseless + 0.5 * (plain - noiseless)).clamp(0, 1))
    torch.testing.assert_close(model.predict(x[:, :2], c, 4, 1, seed=3)[:, 0], futures[:, 0])
    with pytest.raises(ConfigError, match="fitted to a trained model's futures"):
        preset("cpu", spread_head=4).validate()
    with pytest.raises(ConfigError, match="spread_reference must be"):
        replace(base.cfg, spread_reference=1).validate()
