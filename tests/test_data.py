"""The data layer: layout reading and validation, the cache, the simulator, the converter."""
import os
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cvae.data.bair import DataError, list_sequences, read_sequence
from cvae.data.cache import load_split
from cvae.data.dataset import BairDataset, WindowBatchSampler, init_worker
from cvae.data.simulator import simulate
from cvae.data.tfrecord import convert, encode_example, read_records, write_records
from cvae.kinematics import integrate_positions


def first_seq(root, split="train"):
    return list_sequences(root, split)[0]


def test_dataset_shapes_and_ranges(sim_root):
    ds = BairDataset(sim_root, "train", seq_len=12)
    frames, cond = ds[0]
    assert frames.shape == (12, 3, 64, 64) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1 and frames.std() > 0.05
    assert cond.shape == (12, 7)
    seq = simulate(3, 0, 0, uncertainty=1.0)  # train sequence 0 of the fixture's seed, generate's default causes
    np.testing.assert_allclose(cond[:, :4].numpy(), seq.actions[:12], atol=1e-6)
    np.testing.assert_allclose(cond[:, 4:].numpy(), seq.positions[:12], atol=1e-6)
    assert np.array_equal((frames.permute(0, 2, 3, 1) * 255).round().byte().numpy(), seq.frames[:12])
    later = ds[(0, 5)][0]
    torch.testing.assert_close(later[0], BairDataset(sim_root, "train", seq_len=30)[0][0][5])


def test_svg_naming_read_like_lab_naming(sim_root, tmp_path):
    """SVG's `traj_0_to_255/1/` (numbered from 1) reads the same as the lab's `.tfrecords/0/`."""
    svg = tmp_path / "svg"
    for i, seq in enumerate(list_sequences(sim_root, "test")):
        shutil.copytree(seq, svg / "test" / "traj_0_to_255" / str(i + 1))
    lab = [read_sequence(s) for s in list_sequences(sim_root, "test")]
    other = [read_sequence(s) for s in list_sequences(svg, "test")]
    assert len(lab) == len(other) == 4
    for (fa, ca), (fb, cb) in zip(lab, other):
        assert np.array_equal(fa, fb) and np.array_equal(ca, cb)


def test_sequence_order_is_numeric(tmp_path, sim_root):
    src = first_seq(sim_root, "test")
    for traj, n in [("traj_256_to_511.tfrecords", "0"), ("traj_0_to_255.tfrecords", "10"), ("traj_0_to_255.tfrecords", "2")]:
        shutil.copytree(src, tmp_path / "test" / traj / n)
    names = [(p.parent.name, p.name) for p in list_sequences(tmp_path, "test")]
    assert names == [("traj_0_to_255.tfrecords", "2"), ("traj_0_to_255.tfrecords", "10"), ("traj_256_to_511.tfrecords", "0")]


def test_validate_falls_back_to_test(sim_root):
    assert not (sim_root / "validate").exists()
    assert list_sequences(sim_root, "validate") == list_sequences(sim_root, "test")


def test_missing_root_and_empty_split(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_sequences(tmp_path / "nope", "train")
    (tmp_path / "train" / "traj_0_to_255").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no sequences"):
        list_sequences(tmp_path, "train")
    with pytest.raises(DataError, match="split folder .*test does not exist"):
        list_sequences(tmp_path, "test")


def test_missing_frame_named(sim_copy):
    seq = first_seq(sim_copy)
    (seq / "17.png").unlink()
    with pytest.raises(DataError, match=r"missing frame: .*17\.png"):
        read_sequence(seq)


def test_corrupt_png_named(sim_copy):
    seq = first_seq(sim_copy)
    (seq / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"3\.png: cannot decode image"):
        read_sequence(seq)


def test_wrong_size_and_mode(sim_copy):
    seq = first_seq(sim_copy)
    Image.new("RGB", (64, 48)).save(seq / "4.png")
    with pytest.raises(DataError, match=r"4\.png: image is 64x48, expected 64x64"):
        read_sequence(seq)
    Image.new("L", (64, 64)).save(seq / "4.png")
    with pytest.raises(DataError, match=r"4\.png: image mode L is not RGB"):
        read_sequence(seq)


def test_rgba_is_converted(sim_copy):
    seq = first_seq(sim_copy)
    rgb = np.asarray(Image.open(seq / "5.png"))
    Image.fromarray(rgb).convert("RGBA").save(seq / "5.png")
    frames, _ = read_sequence(seq)
    assert np.array_equal(frames[5], rgb)


@pytest.mark.parametrize("content,pattern", [
    ("0.1,0.2,0,1\n" * 29 + "0.1,0.2,0\n", r"row 30 has 3 columns, expected 4"),
    ("0.1,0.2,0,1\n" * 5 + "0.1,abc,0,1\n" + "0.1,0.2,0,1\n" * 24, r"row 6, column 2: 'abc' is not a number"),
    ("0.1,0.2,0,1\n" * 7 + "0.1,0.2,nan,1\n" + "0.1,0.2,0,1\n" * 22, r"row 8, column 3: value nan is not finite"),
    ("0.1,0.2,0,1\n" * 2 + "inf,0.2,0,1\n" + "0.1,0.2,0,1\n" * 27, r"row 3, column 1: value inf is not finite"),
    ("", "file is empty"),
])
def test_bad_actions_csv(sim_copy, content, pattern):
    seq = first_seq(sim_copy)
    (seq / "actions.csv").write_text(content)
    with pytest.raises(DataError, match=r"actions\.csv: " + pattern):
        read_sequence(seq)


def test_row_count_mismatch(sim_copy):
    seq = first_seq(sim_copy)
    lines = (seq / "endeffector_positions.csv").read_text().splitlines()
    (seq / "endeffector_positions.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="actions.csv has 30 rows but endeffector_positions.csv has 29"):
        read_sequence(seq)


def test_bad_sequence_fails_cache_build_naming_file(sim_copy):
    (list_sequences(sim_copy, "train")[5] / "actions.csv").write_text("x\n")
    with pytest.raises(DataError, match=r"traj_0_to_255.tfrecords/5/actions.csv"):
        load_split(sim_copy, "train", workers=1)


def test_cache_built_reused_and_rebuilt_when_stale(sim_copy):
    first = load_split(sim_copy, "test", workers=1)
    assert first.rebuilt and (sim_copy / ".cache" / "test" / "manifest.json").exists()
    assert not load_split(sim_copy, "test", workers=1).rebuilt
    seq = list_sequences(sim_copy, "test")[2]
    Image.new("RGB", (64, 64), (255, 0, 0)).save(seq / "0.png")
    os.utime(seq / "0.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    again = load_split(sim_copy, "test", workers=1)
    assert again.rebuilt
    assert (again.frames()[2, 0] == [255, 0, 0]).all()
    assert not (first.frames()[1, 0] == [255, 0, 0]).all()


def test_cache_matches_png_decode(sim_root):
    packed = load_split(sim_root, "train", workers=2)
    for i, seq in enumerate(packed.sequences):
        frames, cond = read_sequence(seq)
        assert np.array_equal(packed.frames()[i], frames) and np.array_equal(packed.cond[i], cond)


def test_fingerprint_is_the_contents_not_how_long_generating_took(sim_copy):
    """Generating the same data again (another duration, another worker count) keeps a split's
    fingerprint, so an eval.json's score still names it; another seed or a resized frame does not."""
    import json

    from cvae.data.bair import fingerprint

    before = fingerprint(sim_copy, "test")
    info_path = sim_copy / "dataset.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "seconds": 999.0, "sequences_per_s": 0.1, "workers": 7}))
    assert fingerprint(sim_copy, "test") == before
    info_path.write_text(json.dumps({**info, "seed": info["seed"] + 1}))
    assert fingerprint(sim_copy, "test") != before
    info_path.write_text(json.dumps(info))
    png = sorted(list_sequences(sim_copy, "test")[0].glob("*.png"))[0]
    Image.new("RGB", (64, 64)).save(png)
    assert fingerprint(sim_copy, "test") != before


def test_window_sampler_is_deterministic_resumable_and_rank_disjoint():
    kw = dict(n_sequences=10, n_frames=30, seq_len=12, batch_size=4, steps=6, seed=7, epoch=2)
    full = list(WindowBatchSampler(**kw))
    assert full == list(WindowBatchSampler(**kw))
    assert full[3:] == list(WindowBatchSampler(**kw, start_step=3))
    assert full != list(WindowBatchSampler(**{**kw, "epoch": 3}))
    r0, r1 = list(WindowBatchSampler(**kw, rank=0, world=2)), list(WindowBatchSampler(**kw, rank=1, world=2))
    for whole, a, b in zip(full, r0, r1):
        assert sorted(a + b) == sorted(whole) and len(a) == len(b) == 2
    assert all(0 <= s <= 18 for batch in full for _, s in batch)


def _numpy_draw(_):
    return int(np.random.randint(0, 2**31 - 1))


def test_dataloader_workers_get_distinct_numpy_streams():
    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.tensor([_numpy_draw(i), torch.utils.data.get_worker_info().id])

    loader = torch.utils.data.DataLoader(Draws(), batch_size=1, num_workers=2, worker_init_fn=init_worker)
    draws = {int(w): int(v) for v, w in (b[0].tolist() for b in loader)}
    assert len(draws) == 2 and len(set(draws.values())) == 2


def test_simulator_is_deterministic():
    a, b = simulate(11, 4, 0), simulate(11, 4, 0)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions)
    c = simulate(11, 5, 0)
    assert not np.array_equal(a.frames, c.frames)


def test_simulator_actions_follow_bair_conventions():
    seq = simulate(0, 1)
    assert seq.frames.shape == (30, 64, 64, 3) and seq.actions.shape == (30, 4) and seq.positions.shape == (30, 3)
    assert np.abs(seq.actions[:, :2]).max() <= 0.07 + 1e-6
    assert np.array_equal(seq.actions[0::2], seq.actions[1::2])  # each action held for 2 steps
    assert set(np.unique(seq.actions[:, 2:])) <= {0, 1, 2, 3}
    assert 0.46 <= seq.positions[:, 0].min() and seq.positions[:, 0].max() <= 0.74
    assert -0.25 <= seq.positions[:, 1].min() and seq.positions[:, 1].max() <= 0.11
    np.testing.assert_allclose(integrate_positions(seq.positions[0], seq.actions), seq.positions, atol=1e-5)


def test_actions_cause_arm_and_object_motion():
    """Same scene, two action sequences: different end-effector tracks and object motion."""
    base = simulate(2, 0)
    pushed = base.actions.copy()
    still = np.zeros_like(base.actions)
    still[:, 2] = 1  # hovering in place
    a, b = simulate(2, 0, actions=pushed), simulate(2, 0, actions=still)
    assert np.array_equal(a.frames[0], b.frames[0])  # the same scene
    assert np.abs(a.positions - b.positions).max() > 0.05
    assert np.allclose(b.positions[:, :2], b.positions[0, :2])
    assert all(np.array_equal(b.frames[1], f) for f in b.frames[2:])  # nothing moves at all
    assert base.contact and not b.contact
    assert np.abs(a.frames[-1].astype(int) - b.frames[-1].astype(int)).mean() > 2


def test_hidden_causes_change_the_future_not_the_context():
    """Re-drawn causes: the same first frame and arm, other outcomes for pushed objects; the
    context frames look the same whatever the amount of hidden causes."""
    moved = []
    for index in range(8):
        draws = [simulate(4, index, 2, n_frames=12, uncertainty=1.0, draw=d) for d in range(4)]
        exact = simulate(4, index, 2, n_frames=12)
        for seq in draws:
            assert np.array_equal(seq.frames[0], exact.frames[0])  # what a person sees first is the same
            assert np.array_equal(seq.actions, exact.actions) and np.array_equal(seq.positions, exact.positions)
            assert np.array_equal(seq.arm_base, exact.arm_base)
        assert not (0 <= exact.arm_base[0] <= 64 and 0 <= exact.arm_base[1] <= 64)  # outside the image
        if draws[0].contact:  # pushed within these 12 frames: where the object ends depends on the draw
            moved.append(max(int((np.abs(a.frames[-1].astype(int) - draws[0].frames[-1]).max(-1) > 25).sum())
                             for a in draws[1:]))
    assert len(moved) >= 4 and min(moved) >= 5, moved  # pixels off by more than 25 grey levels

    def context_stats(uncertainty: float) -> np.ndarray:
        seqs = [simulate(6, i, 0, n_frames=2, uncertainty=uncertainty) for i in range(24)]
        frames = np.stack([s.frames for s in seqs]).astype(float)
        return np.array([frames.mean(), frames.std(), np.abs(frames[:, 1] - frames[:, 0]).mean()])

    np.testing.assert_allclose(context_stats(1.0), context_stats(0.0), rtol=0.05)


def test_no_hidden_causes_is_the_old_world_bit_for_bit():
    """Uncertainty 0 reproduces data sets generated before hidden causes existed (sha256 of the
    frames as the earlier simulator wrote them)."""
    import hashlib

    for index, digest in ((0, "68cb1e14edec8fd4"), (5, "e20a545c67b37985")):
        assert hashlib.sha256(simulate(0, index, 2, uncertainty=0.0).frames.tobytes()).hexdigest()[:16] == digest
    with pytest.raises(ValueError, match="uncertainty must be a number >= 0"):
        simulate(0, 0, uncertainty=-1.0)


def test_true_futures_and_older_data_sets(sim_copy):
    import json

    from cvae.data.counterfactual import scene_of, true_futures

    info = json.loads((sim_copy / "dataset.json").read_text())
    assert info["uncertainty"] == 1.0  # generate records the amount it used
    seq = list_sequences(sim_copy, "test")[0]
    _, cond = read_sequence(seq)
    futures = true_futures(scene_of(seq), cond[:12, :4], 3)
    assert futures.shape == (3, 12, 64, 64, 3)
    assert all(np.array_equal(f[0], futures[0, 0]) for f in futures)
    del info["uncertainty"]  # a data set from before hidden causes: deterministic, one future
    (sim_copy / "dataset.json").write_text(json.dumps(info))
    scene = scene_of(seq)
    assert scene.uncertainty == 0.0
    old = true_futures(scene, cond[:12, :4], 2)
    assert np.array_equal(old[0], old[1])


def test_true_flow_by_hand_a_square_slid_and_a_point_turned():
    """One object slid 3 px right between two frames: its pixels came from 3 px left (displacement
    (-3, 0)); the table it uncovered is unknown (the previous frame shows the object there), the
    rest of the table known and still, the arm unknown. Turned by 90 degrees about its origin, a
    pixel 2 px right of the origin came from 2 px below it."""
    from cvae.data.simulator import ARM_ID, true_flow

    ids = np.zeros((2, 64, 64), np.uint8)
    ids[0, 20:30, 20:30], ids[1, 20:30, 23:33] = 1, 1
    ids[:, 50:, :4] = ARM_ID
    poses = np.array([[[25.0, 25.0, 0.0]], [[28.0, 25.0, 0.0]]])
    flow, known = true_flow(ids, poses)
    assert flow.shape == (1, 64, 64, 2) and known.shape == (1, 64, 64)
    assert np.allclose(flow[0, 20:30, 23:33], (-3, 0)) and known[0, 20:30, 23:33].all()
    assert not known[0, 20:30, 20:23].any()  # uncovered: the previous frame shows the object there
    assert not known[0, 50:, :4].any() and known[0, :10].all() and (flow[0, :10] == 0).all()
    turned = np.array([[[30.0, 30.0, 0.0]], [[30.0, 30.0, np.pi / 2]]])
    ids = np.zeros((2, 64, 64), np.uint8)
    ids[:, 25:36, 25:36] = 1
    flow, known = true_flow(ids, turned)
    # pixel (col 31, row 30) has its centre at (31.5, 30.5): (1.5, 0.5) from the origin, turned
    # back by 90 degrees that was (0.5, -1.5) from it, so it came from (30.5, 28.5)
    assert np.allclose(flow[0, 30, 31], (30.5 - 31.5, 28.5 - 30.5), atol=1e-6) and known[0, 30, 31]


def test_true_flows_move_each_frame_onto_the_next():
    """The simulator's true flows, applied to frame t with the flow head's own warp, redraw frame
    t + 1 where they are known: on the pixels that move, the error falls to under a quarter of
    copying frame t; the table stays at 0; the arm is unknown; the frames are those without flows."""
    from cvae.kinematics import world_to_px
    from cvae.model.heads import warp

    seq = simulate(0, 5, 0, uncertainty=1.0, flows=True)
    assert np.array_equal(seq.frames, simulate(0, 5, 0, uncertainty=1.0).frames)
    frames = torch.from_numpy(seq.frames).permute(0, 3, 1, 2).float() / 255
    flow, known = torch.from_numpy(seq.flow).permute(0, 3, 1, 2), torch.from_numpy(seq.flow_known)
    moving = known & (flow.norm(dim=1) > 0.5)
    assert moving.sum() > 200
    err = (warp(frames[:-1], flow) - frames[1:]).abs().mean(1)
    copy = (frames[:-1] - frames[1:]).abs().mean(1)
    assert err[moving].mean() < 0.25 * copy[moving].mean()
    assert err[known & ~moving].mean() < 0.002
    col, row = np.floor(world_to_px(seq.positions[1, :2])).astype(int)
    assert not known[0, row, col]  # the gripper's pixel in frame 1


def test_lifted_gripper_passes_over_objects():
    seq = simulate(2, 0)
    lifted = seq.actions.copy()
    lifted[:, 2] = 1
    assert seq.contact and not simulate(2, 0, actions=lifted).contact


def test_contact_share_is_high():
    contacts = [simulate(5, i).contact for i in range(40)]
    assert np.mean(contacts) >= 0.8


def test_tfrecord_round_trip(tmp_path, sim_root):
    seqs = list_sequences(sim_root, "test")[:3]
    payloads = []
    for k, seq in enumerate(seqs):
        frames, cond = read_sequence(seq)
        feats = {}
        for t in range(len(frames)):
            if k == 0:  # raw bytes, as BAIR stores them
                feats[f"{t}/image_aux1/encoded"] = [frames[t].tobytes()]
            else:  # an encoded PNG
                buf = __import__("io").BytesIO()
                Image.fromarray(frames[t]).save(buf, format="PNG")
                feats[f"{t}/image_aux1/encoded"] = [buf.getvalue()]
            feats[f"{t}/action"] = cond[t, :4]
            feats[f"{t}/endeffector_pos"] = cond[t, 4:]
        payloads.append(encode_example(feats))
    (tmp_path / "tf" / "test").mkdir(parents=True)
    write_records(tmp_path / "tf" / "test" / "traj_0_to_255.tfrecords", payloads)
    counts = convert(tmp_path / "tf", tmp_path / "out")
    assert counts == {"test": 3}
    for orig, conv in zip(seqs, list_sequences(tmp_path / "out", "test")):
        (fa, ca), (fb, cb) = read_sequence(orig), read_sequence(conv)
        assert np.array_equal(fa, fb)
        np.testing.assert_allclose(ca, cb, rtol=1e-6)
    assert conv.parent.name == "traj_0_to_255.tfrecords" and conv.name == "2"


def test_tfrecord_corruption_detected(tmp_path):
    write_records(tmp_path / "a.tfrecords", [encode_example({"0/action": np.zeros(4)})])
    data = bytearray((tmp_path / "a.tfrecords").read_bytes())
    data[20] ^= 0xFF
    (tmp_path / "a.tfrecords").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"a\.tfrecords: record 0 has corrupt data"):
        list(read_records(tmp_path / "a.tfrecords"))


def test_tfrecord_missing_key_named(tmp_path):
    (tmp_path / "tf" / "train").mkdir(parents=True)
    write_records(tmp_path / "tf" / "train" / "t.tfrecords", [encode_example({"0/action": np.zeros(4, np.float32)})])
    with pytest.raises(DataError, match=r"t\.tfrecords, record 0: key '0/image_aux1/encoded' is missing"):
        convert(tmp_path / "tf", tmp_path / "out")


def test_data_cli_gif_and_bad_index(sim_root, tmp_path, capsys):
    from cvae.data.__main__ import main

    assert main(["gif", "--root", str(sim_root), "--split", "test", "--index", "0", "1", "--out", str(tmp_path / "s.gif")]) == 0
    img = Image.open(tmp_path / "s.gif")
    assert img.n_frames == 30 and img.size[0] > 2 * 64 * 4
    assert main(["gif", "--root", str(sim_root), "--index", "9"]) == 2
    assert "--index 9 is out of range" in capsys.readouterr().err


def test_counterfactual_scene_is_found_and_resimulated_exactly(sim_root, square_root):
    from cvae.data.counterfactual import Scene, resimulate, scene_of

    seq = list_sequences(sim_root, "test")[2]
    scene = scene_of(seq)
    assert scene == Scene(seed=3, split_id=2, index=2, uncertainty=1.0)  # generate's default
    frames, cond = read_sequence(seq)
    again, again_cond = resimulate(scene, cond[:12, :4])
    assert np.array_equal(again, frames[:12])  # the same scene under its own actions: the same video
    np.testing.assert_allclose(again_cond, cond[:12], atol=1e-6)
    assert scene_of(list_sequences(square_root, "train")[0]) is None  # not the simulator's data


@pytest.mark.parametrize("kind", ["reversed", "rotated", "random"])
def test_alternative_actions_change_only_the_future_motion(sim_root, kind):
    from cvae.data.counterfactual import alternative_actions, resimulate, scene_of

    seq = list_sequences(sim_root, "test")[1]
    frames, cond = read_sequence(seq)
    actions = cond[:12, :4]
    alt = alternative_actions(actions, kind, keep=1, seed=4)
    assert np.array_equal(alt[:1], actions[:1]) and np.array_equal(alt[:, 2:], actions[:, 2:])
    if kind == "reversed":
        np.testing.assert_allclose(alt[1:, :2], -actions[1:, :2])
    elif kind == "rotated":
        np.testing.assert_allclose(alt[1:, :2], np.stack([-actions[1:, 1], actions[1:, 0]], 1), atol=1e-7)
    else:
        assert np.abs(alt[1:, :2]).max() <= 0.07 and np.array_equal(alt[2::2, :2], alt[3::2, :2])  # held in pairs
    truth, alt_cond = resimulate(scene_of(seq), alt)
    assert np.array_equal(truth[:2], frames[:2])  # the context is what the model sees: unchanged
    assert np.abs(truth[2:].astype(int) - frames[2:12]).mean() > 0.5  # the future is another one
    np.testing.assert_allclose(alt_cond[:, 4:], integrate_positions(cond[0, 4:], alt), atol=1e-6)
    with pytest.raises(ValueError, match="unknown alternative"):
        alternative_actions(actions, "sideways", keep=1)
