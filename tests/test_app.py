"""The app: its handlers as units, then the live server through gradio_client and a browser."""
import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cvae.app import logic, views
from cvae.kinematics import integrate_positions
from cvae.metrics import moving_mask, z_change

ROOT = Path(__file__).resolve().parent.parent
N_PAST, N_FUTURE = 2, 10


@pytest.fixture(scope="module")
def bundled():
    sources = logic.find_sources([])
    source = sources["bundled test sequences"]
    model = logic.cached_model(logic.BUNDLED_MODEL)
    frames, cond = logic.load_sequence(source.sequences[0])
    return source, model, frames[:12], cond[:12]


def test_bundled_assets_are_found():
    sources, models = logic.find_sources([]), logic.find_models([])
    assert len(sources["bundled test sequences"].sequences) == 16
    assert sources["bundled test sequences"].kinematics is not None
    (label,) = models
    assert label.startswith("bundled · flow head, learned prior") and "test PSNR" in label


def test_runs_folder_checkpoints_are_listed(tmp_path):
    shutil.copytree(logic.BUNDLED_MODEL, tmp_path / "runs" / "exp1" / "best", ignore=shutil.ignore_patterns("eval"))
    shutil.copytree(logic.BUNDLED_MODEL, tmp_path / "runs" / "exp1" / ".best.tmp")
    models = logic.find_models([tmp_path / "runs"])
    assert len(models) == 2
    assert any(label.startswith("runs/exp1/best · ") and "not evaluated" in label for label in models)


def test_table_round_trip_and_transforms(bundled):
    _, _, _, cond = bundled
    rows = logic.table_rows(cond, N_PAST, N_FUTURE)
    assert len(rows) == 10 and rows[0][:2] == [1, 2] and rows[-1][:2] == [10, 11]
    table = logic.parse_table(rows, N_PAST, N_FUTURE)
    np.testing.assert_allclose(table, cond[1:11], atol=1e-5)
    assert (logic.transform(table, "zero")[:, :2] == 0).all()
    np.testing.assert_allclose(logic.transform(table, "reverse")[:, :2], -table[:, :2])
    np.testing.assert_allclose(logic.transform(table, "scale", 3)[:, :2], 3 * table[:, :2], rtol=1e-6)
    rot = logic.transform(table, "rotate", 90)
    np.testing.assert_allclose(rot[:, 0], -table[:, 1], atol=1e-6)
    np.testing.assert_allclose(rot[:, 1], table[:, 0], atol=1e-6)
    a, b = logic.transform(table, "noise", 0.05, seed=1), logic.transform(table, "noise", 0.05, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, table)
    assert np.array_equal(a[:, 2:], table[:, 2:])  # lift and grip stay


def test_positions_rederived_with_documented_kinematics(bundled):
    source, _, _, cond = bundled
    table = logic.transform(logic.parse_table(logic.table_rows(cond, N_PAST, N_FUTURE), N_PAST, N_FUTURE), "zero")
    full = logic.rederive_positions(logic.with_table(cond, table, N_PAST), N_PAST, source.kinematics)
    np.testing.assert_allclose(full[1:, 4:6], np.repeat(cond[1:2, 4:6], 11, 0), atol=1e-6)  # the arm stays put
    scaled = logic.with_table(cond, logic.transform(table, "scale", 1), N_PAST)
    scaled[1:11, :2] = cond[1:11, :2] * 2
    derived = logic.rederive_positions(scaled, N_PAST, source.kinematics)
    np.testing.assert_allclose(derived[1:, 4:], integrate_positions(cond[1, 4:], scaled[1:, :4]), atol=1e-5)
    assert np.array_equal(logic.rederive_positions(scaled, N_PAST, None), scaled)  # unknown kinematics: unchanged
    same = logic.with_table(cond, logic.parse_table(logic.table_rows(cond, N_PAST, N_FUTURE), N_PAST, N_FUTURE), N_PAST)
    assert np.array_equal(logic.rederive_positions(same, N_PAST, source.kinematics, cond), cond)  # unedited: as recorded
    late = cond.copy()
    late[6, :2] = 0  # an edit at step 6 leaves the positions before it as recorded
    derived = logic.rederive_positions(late, N_PAST, source.kinematics, cond)
    assert np.array_equal(derived[:7, 4:], cond[:7, 4:])
    np.testing.assert_allclose(derived[7, 4:6], cond[6, 4:6], atol=1e-6)  # no motion at step 6


@pytest.mark.parametrize("edit,message", [
    (lambda r: r[3].__setitem__(2, "abc"), r"row 4, column dx: 'abc' is not a plain decimal number"),
    (lambda r: r[0].__setitem__(3, float("nan")), r"row 1, column dy: nan is not a finite number"),
    (lambda r: r[9].__setitem__(8, "inf"), r"row 10, column z: 'inf' is not a plain decimal number"),
    (lambda r: r[2].__setitem__(2, 50), r"row 3, column dx: 50 is out of range \(allowed -0.5 to 0.5"),
    (lambda r: r[5].__setitem__(7, -1e6), r"row 6, column y: -1000000 is out of range"),
    (lambda r: r[0].__setitem__(4, -5), r"row 1, column lift: -5 is out of range \(allowed 0 to 3"),
    (lambda r: r[0].__setitem__(5, 0.5), r"row 1, column grip: 0.5 is not a whole number"),
    (lambda r: r[4].__setitem__(5, -3), r"row 5, column grip: -3 is out of range"),
    (lambda r: r[7].__setitem__(8, -4), r"row 8, column z: -4 is out of range \(allowed 0 to 1"),
    (lambda r: r.append(list(r[0])), r"exactly 10 rows.*it has 11"),
    (lambda r: r.pop(), r"exactly 10 rows.*it has 9"),
    (lambda r: r.clear(), r"the action table is empty"),
    (lambda r: r[1].pop(), r"row 2 has 8 columns"),
    (lambda r: r[0].__setitem__(2, ""), r"row 1, column dx is empty"),
    (lambda r: r[0].__setitem__(2, "0.0_1"), r"row 1, column dx: '0.0_1' is not a plain decimal number"),
    (lambda r: r[0].__setitem__(4, "٣"), r"row 1, column lift: '٣' is not a plain decimal number"),
    (lambda r: r[0].__setitem__(2, 0.5000001), r"row 1, column dx: 0.5000001 is out of range \(allowed -0.5 to 0.5; "
                                               r"BAIR moves about \+-0.07 per step\)"),
    (lambda r: r[0].__setitem__(5, 5), r"row 1, column grip: 5 is out of range \(allowed 0 to 3; 0 open, 1 closed\)"),
    (lambda r: r[0].__setitem__(6, 2), r"row 1, column x: 2 is out of range \(allowed 0 to 1.5; BAIR's end effector "
                                        r"spans about 0.46 to 0.74\)"),
])
def test_bad_table_input_is_named(bundled, edit, message):
    _, _, _, cond = bundled
    rows = logic.table_rows(cond, N_PAST, N_FUTURE)
    edit(rows)
    with pytest.raises(logic.InputError, match=message):
        logic.parse_table(rows, N_PAST, N_FUTURE)


@pytest.mark.parametrize("kind,amount,message", [
    ("noise", -0.1, r"noise sigma must be from 0 to 0.2, not -0.1"),
    ("noise", 5, r"noise sigma must be from 0 to 0.2, not 5"),
    ("scale", None, r"k is empty: type a number from -5 to 5"),
    ("scale", "  ", r"k is empty"),
    ("scale", "two", r"k: 'two' is not a plain decimal number"),
    ("scale", float("inf"), r"k: inf is not a finite number"),
    ("rotate", 1000, r"angle must be from -360 to 360"),
])
def test_transform_amounts_are_checked(kind, amount, message):
    with pytest.raises(logic.InputError, match=message):
        logic.transform_amount(kind, amount)
    assert logic.transform_amount("scale", "2.5") == 2.5


@pytest.mark.parametrize("seed,message", [
    (None, "the seed is empty"), ("", "the seed is empty"), ("x", "the seed: 'x' is not a plain decimal number"),
    ("七", "the seed: '七' is not a plain decimal number"),
    (-1, "the seed must be from 0 to 2147483647, not -1"), (2**31, "not 2147483648"),
    (1.5, r"the seed must be a whole number from 0 to 2147483647, not 1.5"), (1e30, r"not 1e\+30"),
])
def test_bad_seed_is_named(seed, message):
    with pytest.raises(logic.InputError, match=message):
        logic.parse_seed(seed)
    assert logic.parse_seed(7.0) == 7 and logic.parse_seed(" 12 ") == 12


@pytest.mark.parametrize("payload,message", [
    (None, "the action table is empty"),
    ("0.1, 0.2", r"must be a list of rows .*not str"),
    ({"data": [[0] * 9] * 10}, "came without its headers"),
    ({"headers": ["a"], "data": []}, r"headers are \['a'\], expected"),
])
def test_a_table_in_any_shape_gets_a_straight_answer(payload, message):
    with pytest.raises(logic.InputError, match=message):
        logic.parse_table(payload, N_PAST, N_FUTURE)


def test_transforms_stay_inside_the_table_ranges(bundled):
    _, _, _, cond = bundled
    table = logic.parse_table(logic.table_rows(cond, N_PAST, N_FUTURE), N_PAST, N_FUTURE)
    scaled = logic.transform(table, "scale", 5) * np.array([1, 1, 1, 1, 1, 1, 1])
    assert np.abs(scaled[:, :2]).max() <= 0.5
    logic.parse_table([[0, 0, *row] for row in scaled.tolist()], N_PAST, N_FUTURE)  # accepted as is


def test_model_quality_is_stated(tmp_path):
    entry = logic.describe(logic.BUNDLED_MODEL, "bundled")
    assert "Test PSNR" in entry.quality and "copying the last frame" in entry.quality
    assert "Sharpness" in entry.quality and "as much as the world's" in entry.quality  # what z and blur do
    assert "squared edges" in entry.quality  # the haze where things move
    # what shapes Resample z without a weight, read from the model's own config
    assert f"the noise x {entry.config['z_scale']:g}" in entry.quality and "one noise draw held" in entry.quality
    assert logic.sampling({"z_hold": False, "z_scale": 1.0, "flow_deadzone": 0.0}) == ""
    assert "where the arm is or has been, every future as the noiseless one" in logic.sampling({"arm_calm": True})
    assert logic.sampling({"z_map": 4, "map_noise_only": True}) == "Sampling: noise on the spatial latent alone. "
    assert "one noise draw per 8 x 8 cells of the spatial latent" in logic.sampling({"z_map": 4, "map_noise_block": 8})
    assert "cells" not in logic.sampling({"z_map": 4, "map_noise_block": 1})
    assert "evened over each moving piece and 3 px" in logic.sampling({"carry_pool": 3})
    assert "only what glides on" in logic.sampling({"glide_noise_only": True})
    assert "nothing glides on where the arm is" in logic.sampling({"carry_off_arm": True})
    assert logic.sampling({"carry_pool": 0, "glide_noise_only": False, "carry_off_arm": False}) == ""
    assert "mask logits x 1.5, each pixel nearer one source" in logic.sampling({"mask_temperature": 1.5})
    spread = {"spread_head": 40, "spread_gain": 2.0, "spread_base": 0.7, "spread_reference": 10}
    assert "std map max(0.7 x the model's, 2 x the head's), the model's taken over 10" in logic.sampling(spread)
    assert logic.sampling({**spread, "spread_head": 0}) == ""
    chosen = logic.sampling({**spread, "spread_gain": 0.0, "spread_base": 1.0, "spread_select": 40})
    assert "chosen from 40 draws so that they differ where a spread head says" in chosen and "widens" not in chosen
    assert "chosen from" not in logic.sampling({**spread, "spread_select": 0})
    assert logic.sampling({"mask_temperature": 1.0}) == ""
    assert logic.sampling({"flow_resample": "bicubic"}) == "Sampling: moved frames sampled bicubic between pixels. "
    assert logic.sampling({"flow_resample": "bilinear"}) == ""
    shutil.copytree(logic.BUNDLED_MODEL, tmp_path / "m", ignore=shutil.ignore_patterns("eval"))
    assert "Not evaluated" in logic.describe(tmp_path / "m", "m").quality


def test_physics_under_edited_actions(bundled):
    source, model, frames, cond = bundled
    assert np.array_equal(logic.physics(source.sequences[0], cond), frames)  # own actions: the recorded video
    edited = logic.rederive_positions(logic.with_table(cond, logic.transform(cond[1:11], "reverse"), N_PAST),
                                      N_PAST, source.kinematics)
    phys = logic.physics(source.sequences[0], edited)
    assert np.array_equal(phys[:2], frames[:2]) and not np.array_equal(phys[2:], frames[2:])
    p = logic.predict(model, frames, cond, edited, 2, seed=0, physics_frames=phys)
    assert p.psnr_physics.shape == (10,) and p.psnr_physics_copy_last.shape == (10,)
    assert logic.physics(Path("/nowhere/test/traj_0_to_255/0"), cond) is None
    assert p.physics_futures is None and p.spread() is None and p.physics_uncertainty() is None


def test_physics_futures_redraw_the_hidden_causes(bundled):
    """The world's own futures under the person's actions: K re-simulations, the same start, other
    outcomes where objects are pushed; scored beside the model's as eval scores them."""
    source, model, frames, cond = bundled
    world = logic.physics_futures(source.sequences[0], cond, 6)
    assert world.shape == (6, 12, 64, 64, 3)
    assert all(np.array_equal(w[0], frames[0]) for w in world)  # the same scene
    assert np.abs(world[:, -1].astype(int) - world[0, -1]).max() > 25  # objects end in other places
    p = logic.predict(model, frames, cond, cond, 4, seed=0, physics_futures=world)
    assert p.physics_futures.shape == (6, 10, 3, 64, 64)
    assert p.physics_uncertainty().shape == (64, 64) and p.physics_uncertainty().max() > 5  # grey levels
    s = p.spread()
    assert s["truth_spread"] > 0 and s["ratio"] == pytest.approx(s["model_spread"] / s["truth_spread"])
    assert -1 <= s["agreement"] <= 1
    # futures that differ (a little noise on the model's own) get their misplaced share stated;
    # identical ones (a collapsed z) are said to be identical instead
    noise = torch.randn(p.edited.shape, generator=torch.Generator().manual_seed(0))
    noisy = dataclasses.replace(p, edited=p.edited + 0.02 * noise)
    s = noisy.spread()
    assert 0 <= s["misplaced"] <= 1
    text = views.summary(noisy, 4)
    assert "(z seed 0)" in text  # which z the futures came from
    assert f"ratio **{s['ratio']:.2f}**" in text and f"**{s['agreement']:.2f}**" in text
    assert f"**{100 * s['misplaced']:.0f}%** of the model's spread lies where the world's futures agree" in text
    assert s["branch_ratio"] == pytest.approx(s["branch_model_spread"] / s["branch_truth_spread"])
    assert f"it draws **{100 * s['branch_ratio']:.0f}%** of the world's own uncertainty there" in text
    same = dataclasses.replace(p, edited=p.edited[:1].expand_as(p.edited))
    assert math.isnan(same.spread()["misplaced"]) and same.spread()["agreement"] == 0
    text = views.summary(same, 4)
    assert "of the model's spread lies" not in text and "its z carries nothing here" in text
    assert logic.physics_futures(Path("/nowhere/test/traj_0_to_255/0"), cond, 4) is None  # not simulated


def test_prediction_is_seeded_and_responds_to_actions(bundled, responsive_runs):
    _, _, frames, cond = bundled
    model = logic.cached_model(responsive_runs / "responsive" / "best")
    edited = logic.with_table(cond, logic.transform(cond[1:11], "reverse"), N_PAST)
    a = logic.predict(model, frames, cond, edited, 8, seed=3)
    b = logic.predict(model, frames, cond, edited, 8, seed=3)
    assert a.original.shape == (8, 10, 3, 64, 64)
    assert np.array_equal(a.edited.numpy(), b.edited.numpy())
    assert (a.original - a.edited).abs().mean() > 5e-4  # reversing the push changes the future
    assert a.uncertainty().shape == (64, 64) and a.uncertainty().max() > 0
    assert 0 <= a.best < 8
    assert a.psnr_original[a.best].mean() == a.psnr_original.mean(1).max()
    for n, message in ((17, "must be from 1 to 16, not 17"), (2.5, "must be a whole number from 1 to 16, not 2.5"),
                       ("abc", "'abc' is not a plain decimal number"), (None, "is empty")):
        with pytest.raises(logic.InputError, match=message):
            logic.predict(model, frames, cond, edited, n, seed=0)


def test_each_set_of_actions_is_predicted_once(bundled, responsive_runs, monkeypatch):
    """Unedited, the two columns are one prediction, made once; the futures under the recorded
    actions are kept, so a Predict after an edit runs the model once more, for the edit alone,
    and its futures are the same to the bit as those of a request that found nothing kept."""
    _, _, frames, cond = bundled
    model = logic.cached_model(responsive_runs / "responsive" / "best")
    calls = []

    class Counting:
        n_past = model.n_past

        def predict(self, context, cond, *args):
            calls.append(len(context))
            return model.predict(context, cond, *args)

    counting = Counting()
    monkeypatch.setattr(logic, "_originals", logic.OrderedDict())
    edited_cond = logic.with_table(cond, logic.transform(cond[1:11], "reverse"), N_PAST)
    same = logic.predict(counting, frames, cond, cond.copy(), 3, seed=4)
    assert calls == [1] and not same.edited_differs and torch.equal(same.original, same.edited)
    edited = logic.predict(counting, frames, cond, edited_cond, 3, seed=4)
    assert calls == [1, 1] and edited.edited_differs and torch.equal(same.original, edited.original)
    logic.predict(counting, frames, cond, edited_cond, 3, seed=5)  # another z: nothing kept for it
    assert calls == [1, 1, 1, 1]
    logic.forget_kept_futures()
    fresh = logic.predict(counting, frames, cond, edited_cond, 3, seed=4)
    assert torch.equal(fresh.edited, edited.edited) and torch.equal(fresh.original, edited.original)
    again = logic.predict(counting, frames, cond, cond.copy(), 3, seed=4)  # kept: no model call
    assert calls == [1, 1, 1, 1, 1, 1] and again.original_kept and torch.equal(again.edited, same.edited)
    said = {name: views.summary(p, N_FUTURE).split(". ")[0] for name, p in
            (("same", same), ("edited", edited), ("fresh", fresh), ("again", again))}
    assert "ms** for" in said["same"] and "one prediction for both columns" in said["same"], said
    assert "ms** for" in said["edited"] and "original actions were kept from an earlier Predict" in said["edited"]
    assert "ms** for" in said["fresh"] and "under the original actions and under yours" in said["fresh"], said
    assert "ms" not in said["again"] and said["again"].endswith("kept from an earlier Predict"), said
    for seed in range(logic.ORIGINALS_KEPT + 3):  # the kept futures are bounded
        logic.predict(counting, frames, cond, cond, 1, seed=seed)
    assert len(logic._originals) == logic.ORIGINALS_KEPT


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server") / "server.log"


@pytest.fixture(scope="module")
def server(responsive_runs, server_log):
    from cvae.app.process import start_app

    with open(server_log, "w") as log:
        try:
            proc, url = start_app(["--runs", str(responsive_runs)], stdout=log)
        except RuntimeError as e:
            pytest.fail(f"{e}: {server_log.read_text()}")
        yield url
        proc.terminate()
        proc.wait(timeout=30)


def test_live_app_through_gradio_client(server, server_log, bundled, responsive_runs):
    from gradio_client import Client

    _, _, _, cond = bundled
    client = Client(server, verbose=False)
    source = "bundled test sequences"
    (model,) = [label for label in logic.find_models([responsive_runs]) if "responsive" in label]
    rows = logic.table_rows(cond, N_PAST, N_FUTURE)
    table = {"headers": logic.HEADERS, "data": rows}
    edited_rows = [list(r) for r in rows]
    for r in edited_rows:
        r[2], r[3] = -r[2], -r[3]
    edited = {"headers": logic.HEADERS, "data": edited_rows}

    def frames(result):
        from PIL import Image

        img = Image.open(result[0])  # truth | original | edited | physics under the edited actions
        return np.stack([np.asarray(img.seek(i) or img.convert("RGB")) for i in range(img.n_frames)])

    one = client.predict(source, 0, model, edited, 4, 7, api_name="/predict")
    two = client.predict(source, 0, model, edited, 4, 7, api_name="/predict")
    same = client.predict(source, 0, model, table, 4, 7, api_name="/predict")
    a, b, c = frames(one), frames(two), frames(same)
    assert np.array_equal(a, b)  # same seed, same frames
    tile, gap = 64 * 4, 2 * 4  # the GIF is upscaled 4x, with 2-pixel gaps between its four videos

    def column(video, k):
        return video[:, :, k * (tile + gap) : k * (tile + gap) + tile].astype(int)

    assert a.shape[2] == 4 * tile + 3 * gap
    assert np.abs(column(a, 1) - column(a, 2)).mean() > 0.1  # edited actions change the future
    assert np.array_equal(column(c, 1), column(c, 2))  # unedited: identical columns
    assert np.array_equal(column(c, 3), column(c, 0))  # physics under the own actions is the truth
    assert np.abs(column(a, 3)[2:] - column(a, 0)[2:]).mean() > 0.5  # ... and under reversed ones it is not
    assert "Physics under your actions" in one[-1]
    assert "ms" in one[-1]

    from gradio_client.exceptions import AppError

    bad = {"headers": logic.HEADERS, "data": [list(r) for r in rows]}
    bad["data"][2][4] = "banana"
    with pytest.raises(AppError, match=r"row 3, column lift: 'banana' is not a plain decimal number"):
        client.predict(source, 0, model, bad, 4, 7, api_name="/predict")
    bad["data"][2][4] = "<b>" + "x" * 1000
    with pytest.raises(AppError) as err:
        client.predict(source, 0, model, bad, 4, 7, api_name="/predict")
    assert "&lt;b&gt;" in str(err.value) and "<b>" not in str(err.value) and len(str(err.value)) < 400
    assert client.predict(source, 1, model, table, 2, 1, api_name="/predict")  # still serving
    assert "Traceback" not in server_log.read_text()  # a typing mistake is no server error


API_CASES = [  # (field, value, what the answer says): every input class a script can get wrong
    ("table", None, "the action table is empty"),
    ("table", "0.1, 0.2", "must be a list of rows"),
    ("table", {"data": [[0] * 9] * 10}, "came without its headers"),
    ("n", "abc", r"number of futures \(N\): 'abc' is not a plain decimal number"),
    ("n", None, r"number of futures \(N\) is empty"),
    ("n", 2.5, "must be a whole number from 1 to 16, not 2.5"),
    ("n", 1000, "must be from 1 to 16, not 1000"),
    ("n", -3, "must be from 1 to 16, not -3"),
    ("seed", "abc", "the seed: 'abc' is not a plain decimal number"),
    ("seed", "七", "the seed: '七' is not a plain decimal number"),
    ("seed", 1.5, "the seed must be a whole number from 0 to 2147483647, not 1.5"),
    ("seed", 1e30, r"not 1e\+30"),
    ("index", "abc", r"the sequence index \(bundled test sequences\): 'abc' is not a plain decimal number"),
    ("index", 2.7, "must be a whole number from 0 to 15, not 2.7"),
    ("dx", "0.0_1", "row 1, column dx: '0.0_1' is not a plain decimal number"),
    ("dx", "٣", "row 1, column dx: '٣' is not a plain decimal number"),
]


def test_every_api_input_gets_the_pages_answer(server, server_log, bundled):
    """Through gradio_client, as scripts use the app: each bad input is named, none is rounded,
    clamped or read in another notation, and none leaves a traceback in the server log."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    _, _, _, cond = bundled
    client = Client(server, verbose=False)
    source, model = "bundled test sequences", next(iter(logic.find_models([])))
    rows = logic.table_rows(cond, N_PAST, N_FUTURE)
    for field, value, message in API_CASES:
        args = {"index": 0, "table": {"headers": logic.HEADERS, "data": [list(r) for r in rows]}, "n": 2, "seed": 1}
        if field == "dx":
            args["table"]["data"][0][2] = value
        else:
            args[field] = value
        with pytest.raises(AppError, match=message):
            client.predict(source, args["index"], model, args["table"], args["n"], args["seed"], api_name="/predict")
    assert "Traceback" not in server_log.read_text()


def test_sixteen_concurrent_requests_are_all_answered_alike(server, bundled):
    """A bounded local load: 16 Predicts at once (8 distinct, each twice) all succeed, and the same
    sequence and seed give the same futures however the requests interleave."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    _, _, _, cond = bundled
    source, model = "bundled test sequences", next(iter(logic.find_models([])))
    table = {"headers": logic.HEADERS, "data": logic.table_rows(cond, N_PAST, N_FUTURE)}
    sequences = logic.find_sources([])[source].sequences

    def ask(k: int) -> bytes:
        i = k % 8
        t = table if i == 0 else {"headers": logic.HEADERS, "data": logic.table_rows(
            logic.load_sequence(sequences[i])[1], N_PAST, N_FUTURE)}
        result = Client(server, verbose=False).predict(source, i, model, t, 3, 100 + i, api_name="/predict")
        return Path(result[1]).read_bytes()  # the futures GIF: one per (sequence, seed)

    with ThreadPoolExecutor(16) as pool:
        gifs = list(pool.map(ask, range(16)))
    assert all(gifs[k] == gifs[k + 8] for k in range(8))
    assert len(set(gifs[:8])) == 8


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> None:
    """Skip a browser test where chromium is missing, except where CI requires it."""
    if _chromium() is None:
        if os.environ.get("CVAE_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (CVAE_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")


def change_at(before: np.ndarray, after: np.ndarray, p_before: np.ndarray, p_after: np.ndarray,
              radius: float = 4.0, min_px: float = 4.0) -> tuple[float, float]:
    """Change between two uint8 videos [T, 64, 64, 3], summed in grey levels within ``radius``
    pixels of where the kinematics put the moved gripper (p_after, (col, row) per frame) and of
    the mirror point where a move the opposite way would have put it. A model that moves the
    gripper the edited way changes the first far more; one that ignores the actions changes
    neither, and a blur changes both alike. Frames where the gripper moved less than ``min_px``
    are skipped."""
    there = mirror = 0.0
    rows, cols = np.indices(before.shape[1:3])
    for a, b, pa, pb in zip(before, after, p_before, p_after):
        if np.linalg.norm(pb - pa) >= min_px:
            change = np.abs(b.astype(float) - a.astype(float)).mean(-1)
            there += change[np.hypot(cols - pb[0], rows - pb[1]) <= radius].sum()
            mirror += change[np.hypot(cols - (2 * pa - pb)[0], rows - (2 * pa - pb)[1]) <= radius].sum()
    return there, mirror


def gif_frames(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(data))
    return np.stack([np.asarray(img.seek(i) or img.convert("RGB")) for i in range(img.n_frames)])


SEQ = 2
UNCERTAIN_SEQ = 10  # its recorded push has many outcomes: the physics futures differ widely
Z_VISIBLE = 3.0  # grey levels (0-255): the least mean change in the moving region a person sees as another future


def futures_tiles(video: np.ndarray, scale: int = 3, per_row: int = 4, n: int = 8) -> list[np.ndarray]:
    """The futures grid GIF (videos of 64 px with 2 px gaps, ``per_row`` per row, upscaled
    ``scale``x) -> its ``n`` videos [T, 64, 64, 3]."""
    small = video[:, ::scale, ::scale]
    return [small[:, (k // per_row) * 66 : (k // per_row) * 66 + 64, (k % per_row) * 66 : (k % per_row) * 66 + 64]
            for k in range(n)]


def test_browser_pick_edit_predict(server, tmp_path, bundled):
    """As a person would: pick a sequence by its thumbnail, type a dx (the positions follow),
    reverse the motion, press Predict, and see the predicted gripper go where the edited actions
    send it, beside the physics under those actions."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    from cvae.kinematics import world_to_px

    source = bundled[0]
    frames, cond = logic.load_sequence(source.sequences[SEQ])
    frames, cond = frames[:12], cond[:12]
    table = logic.parse_table(logic.table_rows(cond, N_PAST, N_FUTURE), N_PAST, N_FUTURE)
    table[0, 0] = -0.0123
    typed = logic.rederive_positions(logic.with_table(cond, table, N_PAST), N_PAST, source.kinematics)
    edited = logic.rederive_positions(logic.with_table(cond, logic.transform(table, "reverse"), N_PAST), N_PAST,
                                      source.kinematics)
    shots = ROOT / "test-artifacts"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser, page = _open_page(pw, server, 1800, "#ctx1 img")
        assert "Test PSNR" in page.locator("#quality").inner_text()  # the page says how good the model is
        page.locator("#gallery .thumbnail-item").nth(SEQ).click()  # pick the sequence by its thumbnail
        page.wait_for_function(f"document.querySelector('#index input[type=number]').value == '{SEQ}'",
                               timeout=30_000)
        page.wait_for_function(f"""Math.abs(parseFloat(document.querySelector('#table [data-testid="cell-0-2"]')
                                   .innerText) - {cond[1, 0]}) < 2e-5""", timeout=30_000)  # its table is in
        before = page.locator('#table [data-testid="cell-0-2"]').inner_text()
        page.locator("#sigma input").fill("-0.5")  # a slip: the toast says so, the table stays
        page.locator("#noise").click()
        page.wait_for_selector(".toast-body", timeout=20_000)
        assert "noise sigma must be from 0 to 0.2, not -0.5" in page.locator(".toast-body").first.inner_text()
        assert page.locator('#table [data-testid="cell-0-2"]').inner_text() == before
        page.locator(".toast-close").first.click()
        page.locator('#table [data-testid="cell-0-2"]').dblclick()  # row 1, column dx
        page.keyboard.press("Control+A")
        page.keyboard.type("-0.0123")
        page.keyboard.press("Enter")
        x_next = typed[2, 4]  # row 2, column x: where that dx moves the arm
        page.wait_for_function(f"""Math.abs(parseFloat(document.querySelector('#table [data-testid="cell-1-6"]')
                                   .innerText) - {x_next}) < 2e-5""", timeout=30_000)
        page.locator("#reverse").click()
        page.wait_for_function("""document.querySelector('#table [data-testid="cell-0-2"]').innerText
                                  .includes('0.0123') && !document.querySelector('#table [data-testid="cell-0-2"]')
                                  .innerText.includes('-')""", timeout=20_000)
        page.locator("#predict").click()
        page.wait_for_selector("#compare img[src*='.gif']", timeout=60_000)
        page.wait_for_selector("#step_plot .js-plotly-plot", timeout=60_000)
        summary = page.locator("#summary").inner_text()
        assert "ms" in summary and "actions unedited" not in summary, summary  # the edits reached the model
        assert "Physics under your actions" in summary
        # the world's spread beside the model's: reversed, this push touches nothing, so the world is certain
        assert "Uncertainty, model against the world" in summary and "the world is certain" in summary, summary
        video = gif_frames(page.request.get(page.locator("#compare img").get_attribute("src")).body())
        page.screenshot(path=str(shots / "app.png"), full_page=True)
        page.wait_for_selector("#physics_futures img[src*='.gif']", timeout=30_000)
        world = gif_frames(page.request.get(page.locator("#physics_futures img").get_attribute("src")).body())
        browser.close()
    small = video[:, ::4, ::4]  # the GIF is upscaled 4x: back to 64 px per frame
    tile = 64 + 2  # each video 64 px, then a 2 px gap
    original, yours, physics = (small[N_PAST:, :, k * tile : k * tile + 64] for k in (1, 2, 3))
    p_orig, p_edit = world_to_px(cond[N_PAST:, 4:6]), world_to_px(edited[N_PAST:, 4:6])
    there, mirror = change_at(original, yours, p_orig, p_edit)
    truth_there, truth_mirror = change_at(frames[N_PAST:], physics, p_orig, p_edit)
    assert truth_there > 3 * truth_mirror  # the measure itself, on the physics
    assert there > 1000 and there > 3 * mirror, (there, mirror)  # the predicted gripper went the edited way
    assert (shots / "app.png").stat().st_size > 10_000
    assert world.shape[1:3] == ((2 * 66 - 2) * 3, (4 * 66 - 2) * 3)  # 8 physics futures appear, 2 rows of 4
    assert all(np.abs(w[0].astype(int) - frames[0]).mean() < 3 for w in futures_tiles(world))  # this scene (GIF palette aside)


def test_browser_a_cleared_cell_shows_what_the_server_reads_and_warns_once(server):
    """Clearing a dx cell leaves it blank (not a 0 the server never sees), the edit gets one
    toast, not two, and Predict names the same cell."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser, page = _open_page(pw, server, 1400, "#ctx1 img")
        cell = page.locator('#table [data-testid="cell-0-2"]')
        cell.dblclick()
        page.keyboard.press("Control+A")
        page.keyboard.press("Backspace")
        page.keyboard.press("Enter")
        page.wait_for_selector(".toast-body", timeout=20_000)
        page.wait_for_timeout(2_000)  # time for a second toast, were the edit reported twice
        toasts = page.locator(".toast-body").all_inner_texts()
        assert len(toasts) == 1 and "row 1, column dx is empty" in toasts[0], toasts
        assert cell.inner_text().replace("⋮", "").strip() == ""  # the cell menu button aside
        page.locator(".toast-close").first.click()
        page.locator("#predict").click()
        page.wait_for_selector(".toast-body", timeout=20_000)
        assert "row 1, column dx is empty" in page.locator(".toast-body").first.inner_text()
        browser.close()


def _open_page(pw, server: str, height: int, ready: str):
    """Chromium on the app, once its action table and ``ready`` are on the page: (browser, page)."""
    browser = pw.chromium.launch(executable_path=_chromium(), headless=True,
                                 args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                       "--disable-component-update", "--disable-sync", "--no-first-run"])
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(server)
    page.wait_for_selector('#table [data-testid="cell-0-2"]', timeout=60_000)
    page.wait_for_selector(ready, timeout=60_000)
    return browser, page


def test_browser_resample_z_changes_the_uncertain_futures(server, bundled):
    """Where the world is uncertain (a push with many outcomes: the physics futures differ), another
    z gives visibly other futures: in the moving region (where any physics future differs from
    the last context frame by more than 0.1), by more than Z_VISIBLE grey levels on average over
    the 8 futures."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    source = bundled[0]
    _, u_cond = logic.load_sequence(source.sequences[UNCERTAIN_SEQ])
    with sync_playwright() as pw:
        browser, page = _open_page(pw, server, 1800, "#gallery .thumbnail-item")
        page.locator("#gallery .thumbnail-item").nth(UNCERTAIN_SEQ).click()
        page.wait_for_function(f"document.querySelector('#index input[type=number]').value == '{UNCERTAIN_SEQ}'",
                               timeout=30_000)
        page.wait_for_function(f"""Math.abs(parseFloat(document.querySelector('#table [data-testid="cell-0-2"]')
                                   .innerText) - {u_cond[1, 0]}) < 2e-5""", timeout=30_000)
        page.locator("#predict").click()
        page.wait_for_selector("#futures img[src*='.gif']", timeout=60_000)
        page.wait_for_selector("#physics_futures img[src*='.gif']", timeout=30_000)
        world = gif_frames(page.request.get(page.locator("#physics_futures img").get_attribute("src")).body())
        summary = page.locator("#summary").inner_text()
        if "ratio" not in summary or "Agreement of the two maps" not in summary:
            pytest.fail(f"the page states no spread ratio and agreement for an uncertain push: {summary}")
        futures_src = page.locator("#futures img").get_attribute("src")
        seed_a = gif_frames(page.request.get(futures_src).body())
        page.locator("#seed input").fill("12345")  # another z, the same actions
        page.locator("#predict").click()
        # the summary names the seed: identical futures keep one URL (Gradio caches files by content)
        page.wait_for_function("document.querySelector('#summary').innerText.includes('z seed 12345')",
                               timeout=60_000)
        seed_b = gif_frames(page.request.get(page.locator("#futures img").get_attribute("src")).body())
        browser.close()
    # Another z changes the futures where the world is uncertain: in the moving region (where any
    # physics future differs from the last context frame by more than 0.1), by more than
    # Z_VISIBLE grey levels on average over the 8 futures (metrics.z_change; bench/z_change.py
    # reads the same figure without a browser).
    world_tiles, a_tiles, b_tiles = (futures_tiles(v) for v in (world, seed_a, seed_b))
    if len(world_tiles) != 8 or all(np.array_equal(world_tiles[0], w) for w in world_tiles[1:]):
        pytest.fail("the physics futures of this sequence should differ: it is not an uncertain push")
    world_t, a_t, b_t = (torch.from_numpy(np.stack(v)).permute(0, 1, 4, 2, 3) / 255
                         for v in (world_tiles, a_tiles, b_tiles))  # [8, T, 3, 64, 64]
    region = moving_mask(world_t[:, N_PAST:], world_t[0, N_PAST - 1]).any(0)
    if region.sum() <= 50:
        pytest.fail(f"only {region.sum()} moving pixels: not a sequence to judge z by")
    moved = 255 * z_change(a_t[:, N_PAST:], b_t[:, N_PAST:], world_t[:, N_PAST:], world_t[0, N_PAST - 1]).item()
    assert moved > Z_VISIBLE, moved


def test_output_folders_are_bounded():
    from cvae.app.views import KEEP_OUTPUTS, Outputs

    outputs = Outputs()
    made = []
    for _ in range(KEEP_OUTPUTS + 5):
        made.append(outputs.new())
        (made[-1] / "x.gif").write_bytes(b"x" * 10)
    assert sorted(outputs.root.iterdir()) == sorted(made[-KEEP_OUTPUTS:])
    shutil.rmtree(outputs.root)


def test_app_refuses_a_bad_option_without_traceback():
    proc = subprocess.run([sys.executable, "demo_app.py", "--keep-minutes", "0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert proc.returncode == 2 and "--keep-minutes must be positive" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_server_removes_its_folder_and_names_its_share_flag(tmp_path, how):
    from cvae.app.process import start_app

    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc, _ = start_app([], env={"TMPDIR": str(tmp_path)}, stdout=out)
    assert list(tmp_path.glob("cvae_app_*"))  # its output folder, while it runs
    deadline = time.time() + 120  # the port opens a moment before the line is printed
    while "Running on" not in log.read_text() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(how)
    proc.wait(timeout=60)
    assert not list(tmp_path.glob("cvae_app_*")), log.read_text()[-2000:]
    text = log.read_text()
    assert "add --share for a public link" in text and "share=True" not in text
