"""Faults that once lost work or printed a traceback (issue 14): each is reproduced here, with a
real SIGKILL of a real training process where the fault is a kill at a particular moment."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cvae.train as train_mod
from cvae import checkpoint, cli
from cvae.config import preset
from cvae.data.dataset import BairDataset
from cvae.errors import CheckpointError, RunError, TrainingDiverged
from cvae.run import RunFolder
from cvae.train import train

ROOT = Path(__file__).resolve().parent.parent
TINY_FLAGS = ["--width", "0.0625", "--g-dim", "16", "--z-dim", "4", "--rnn-size", "16", "--batch-size", "4",
              "--iters-per-epoch", "6", "--epochs", "12", "--val-seqs", "2", "--num-workers", "0"]


def tiny(data, out, **kw):
    return preset("cpu", data=str(data), out=str(out), width=0.0625, g_dim=16, z_dim=4, rnn_size=16, batch_size=4,
                  val_seqs=2, num_workers=0, **{"epochs": 2, "iters_per_epoch": 3, **kw})


def worker(data, out, *flags, kill="", wait=True):
    """``tests/fault_worker.py`` (train_cli.py's arguments) as a real process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CVAE_KILL": kill}
    cmd = [sys.executable, str(ROOT / "tests" / "fault_worker.py"), "--data", str(data), "--out", str(out),
           *TINY_FLAGS, *flags]
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def straight(sim_root, tmp_path_factory):
    """An uninterrupted tiny run, the reference every killed-and-resumed run must equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = worker(sim_root, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# 1 -------------------------------------------------------------------------------------------
def test_export_refuses_to_overwrite_what_is_not_an_export(sim_root, tmp_path, capsys):
    train(tiny(sim_root, tmp_path / "run", epochs=1), progress=False)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert cli.main(["export", "--ckpt", str(tmp_path / "run" / "last"), "--out", str(tmp_path / "run")]) == 2
    assert "overlaps the checkpoint" in capsys.readouterr().err
    assert cli.main(["export", "--ckpt", str(tmp_path / "run" / "last"), "--out", str(tmp_path / "run" / "last")]) == 2
    assert (tmp_path / "run" / "last" / "state.pt").is_file()  # still resumable
    data = tmp_path / "data"
    shutil.copytree(sim_root, data)
    assert cli.main(["export", "--ckpt", str(tmp_path / "run" / "last"), "--out", str(data)]) == 2
    assert "not an earlier export" in capsys.readouterr().err and (data / "train").is_dir()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    model = tmp_path / "model"
    assert cli.main(["export", "--ckpt", str(tmp_path / "run" / "last"), "--out", str(model)]) == 0
    assert cli.main(["export", "--ckpt", str(tmp_path / "run" / "best"), "--out", str(model)]) == 0  # an export
    assert cli.main(["export", "--ckpt", str(tmp_path / "run" / "last"), "--out", str(data), "--force"]) == 0
    assert not (data / "train").exists() and (data / "model.safetensors").is_file()


# 2 -------------------------------------------------------------------------------------------
def test_a_run_killed_before_its_first_checkpoint_starts_again(sim_root, tmp_path):
    out = tmp_path / "run"
    proc = worker(sim_root, out, "--iters-per-epoch", "400", "--logs-per-epoch", "100", wait=False)
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "log.jsonl").exists() and not (out / "last").exists()
    for flags in ([], ["--resume"]):
        again = worker(sim_root, out, "--iters-per-epoch", "400", "--logs-per-epoch", "400", "--stop-at-step", "2", *flags)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "stopped before its first save): starting it from scratch" in again.stdout
        assert (out / "last" / "state.pt").is_file()
        shutil.rmtree(out / "last")  # the next round meets a run with a log but no checkpoint again
        shutil.rmtree(out / "best", ignore_errors=True)
    assert len(list(out.glob("log.jsonl.before-*"))) >= 1
    nothing = worker(sim_root, tmp_path / "never", "--resume")
    assert nothing.returncode == 2 and "there is no run at" in nothing.stderr


# 3 -------------------------------------------------------------------------------------------
def test_a_kill_between_the_last_and_best_saves_is_repaired(sim_root, tmp_path, straight):
    out = tmp_path / "run"
    proc = worker(sim_root, out, kill="best-swap")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    last = checkpoint.read_meta(out / "last")
    assert last["best_epoch"] == last["epoch"] != checkpoint.read_meta(out / "best")["epoch"]  # stale best
    assert (out / ".best.tmp").exists()
    resumed = worker(sim_root, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"brought {out / 'best'} up to epoch {last['epoch']}" in resumed.stdout
    assert not (out / ".best.tmp").exists()
    for name in ("last", "best"):
        assert same_weights(out / name, straight / name), name
        assert checkpoint.read_meta(out / name)["epoch"] == checkpoint.read_meta(straight / name)["epoch"]


# 4 -------------------------------------------------------------------------------------------
def test_a_kill_between_the_two_renames_of_a_save_resumes(sim_root, tmp_path, straight, capsys):
    out = tmp_path / "run"
    proc = worker(sim_root, out, kill="mid-swap")
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "last").exists() and (out / ".last.old").is_dir()
    resumed = worker(sim_root, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "restored" in resumed.stdout and not (out / ".last.old").exists()
    assert same_weights(out / "last", straight / "last")


# 5 -------------------------------------------------------------------------------------------
def test_a_torn_last_log_line_is_trimmed_on_resume(sim_root, tmp_path):
    out = tmp_path / "run"
    train(tiny(sim_root, out, epochs=1), progress=False)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"kind": "step", "epoch": 1, "st')  # what a write cut short leaves
    train(tiny(sim_root, out, epochs=2), resume=True, progress=False)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1]
    (out / "log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(RunError, match=r"log.jsonl: line 2 is not valid JSON"):
        RunFolder(out).read_log()


# 6 -------------------------------------------------------------------------------------------
def test_resume_accepts_a_trailing_slash_a_relative_path_and_a_moved_run(sim_root, tmp_path, monkeypatch):
    train(tiny(sim_root, tmp_path / "a", epochs=1), progress=False)
    train(tiny(sim_root, str(tmp_path / "a") + "/", epochs=2), resume=True, progress=False)
    shutil.move(tmp_path / "a", tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    train(tiny(sim_root, "moved", epochs=3), resume=True, progress=False)
    assert checkpoint.read_meta(tmp_path / "moved" / "last")["epoch"] == 3


# 7 -------------------------------------------------------------------------------------------
def test_a_second_trainer_on_the_same_run_is_refused_and_a_kill_frees_the_run(sim_root, tmp_path):
    out = tmp_path / "run"
    first = worker(sim_root, out, "--iters-per-epoch", "400", wait=False)
    deadline = time.time() + 120
    while not (out / ".lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    second = worker(sim_root, out, "--resume")
    assert second.returncode == 2
    assert f"is being trained by process {first.pid}" in second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = worker(sim_root, out, "--iters-per-epoch", "400", "--stop-at-step", "1")
    assert third.returncode == 0, third.stderr[-2000:]


# 8 -------------------------------------------------------------------------------------------
def test_weights_that_blow_up_in_an_epochs_last_step_are_not_saved(sim_root, tmp_path, monkeypatch):
    real_step = train_mod.train_step
    calls = {"n": 0}

    def blow_up_at_step_6(net, opt, *args, **kw):
        out = real_step(net, opt, *args, **kw)
        calls["n"] += 1
        if calls["n"] == 6:  # the last step of epoch 1: its loss was finite, its update is not
            with torch.no_grad():
                next(net.parameters()).mul_(1e38).mul_(1e38)
        return out

    monkeypatch.setattr(train_mod, "train_step", blow_up_at_step_6)
    with pytest.raises(TrainingDiverged, match="last update of epoch 1; kept the last good checkpoint"):
        train(tiny(sim_root, tmp_path / "r", epochs=3), progress=False)
    model, meta = checkpoint.load_model(tmp_path / "r" / "last")
    assert meta["epoch"] == 1 and all(torch.isfinite(v).all() for v in model.state_dict().values())
    calls["n"] = 3
    with pytest.raises(TrainingDiverged, match="no checkpoint had been saved yet"):
        train(tiny(sim_root, tmp_path / "fresh", epochs=3), progress=False)


def test_an_absurd_learning_rate_is_refused_by_name(capsys):
    assert cli.main(["train", "--lr", "1e39"], default="train") == 2
    assert "lr must be above 0 and at most 1" in capsys.readouterr().err


# 9 -------------------------------------------------------------------------------------------
def test_a_signal_at_an_epoch_boundary_exits_non_zero_and_says_how_to_resume(sim_root, tmp_path, monkeypatch, capsys):
    real_coin = train_mod.use_teacher_forcing

    def term_in_the_last_step(ratio, seed, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_coin(ratio, seed, step)

    monkeypatch.setattr(train_mod, "use_teacher_forcing", term_in_the_last_step)
    args = ["--data", str(sim_root), "--out", str(tmp_path / "r"), *TINY_FLAGS[:-4], "--num-workers", "0",
            "--iters-per-epoch", "3", "--epochs", "2", "--val-seqs", "2"]
    assert cli.main(args, default="train") == 128 + signal.SIGTERM
    captured = capsys.readouterr()
    assert "interrupted: SIGTERM: saved" in captured.err and "--resume" in captured.err
    assert "done" not in captured.out
    assert checkpoint.read_meta(tmp_path / "r" / "last")["epoch"] == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_saves_where_the_run_stands(sim_root, tmp_path, signum):
    """Ctrl-C in a terminal and a cluster's preemption signal the DataLoader workers too."""
    out = tmp_path / "r"
    cmd = [sys.executable, str(ROOT / "train_cli.py"), "--data", str(sim_root), "--out", str(out), *TINY_FLAGS,
           "--num-workers", "2", "--iters-per-epoch", "100000", "--logs-per-epoch", "20000"]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: an unread pipe fills and stalls the run
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not ((out / "log.jsonl").exists() and '"kind": "step"' in (out / "log.jsonl").read_text()):
            assert proc.poll() is None and time.time() < deadline, "the run never logged a step"
            time.sleep(0.1)
        os.killpg(proc.pid, signum)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = log.read_text()
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err and f"interrupted: {signal.Signals(signum).name}: saved" in err
    meta = checkpoint.read_meta(out / "last")
    assert meta["epoch"] == 0 and meta["step"] >= 5


# 10 ------------------------------------------------------------------------------------------
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(sim_root, tmp_path, monkeypatch,
                                                                                   capsys):
    out = tmp_path / "r"
    train(tiny(sim_root, out, epochs=1), progress=False)
    real_save_file = checkpoint.save_file

    def disk_full(tensors, path):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    args = ["--data", str(sim_root), "--out", str(out), *TINY_FLAGS[:-4], "--num-workers", "0",
            "--iters-per-epoch", "3", "--epochs", "2", "--val-seqs", "2", "--resume"]
    assert cli.main(args, default="train") == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1
    assert "No space left on device" in lines[0] and f"the previous {out / 'last'} is intact" in lines[0]
    monkeypatch.setattr(checkpoint, "save_file", real_save_file)
    assert checkpoint.read_meta(out / "last")["epoch"] == 1 and not (out / ".last.tmp").exists()
    checkpoint.load_model(out / "last")


# 11 ------------------------------------------------------------------------------------------
def test_a_damaged_cache_is_rebuilt(sim_copy, capsys):
    ds = BairDataset(sim_copy, "train")
    want = ds[3][0].clone()
    frames = sim_copy / ".cache" / "train" / "frames.u8"
    with open(frames, "r+b") as f:
        f.truncate(frames.stat().st_size // 2)
    assert torch.equal(BairDataset(sim_copy, "train")[3][0], want)
    assert "is damaged" in capsys.readouterr().out
    (sim_copy / ".cache" / "train" / "cond.npy").write_text("not an array")
    assert BairDataset(sim_copy, "train").packed.rebuilt


# 12 ------------------------------------------------------------------------------------------
def test_the_app_skips_a_bad_run_and_starts(tmp_path, capsys):
    from cvae.app import logic

    runs = tmp_path / "runs"
    shutil.copytree(logic.BUNDLED_MODEL, runs / "good")
    shutil.copytree(logic.BUNDLED_MODEL, runs / "garbage_eval")
    (runs / "garbage_eval" / "eval" / "eval.json").write_text("{not json")
    shutil.copytree(logic.BUNDLED_MODEL, runs / "empty_config")
    (runs / "empty_config" / "meta.json").write_text('{"config": {}}')
    models = logic.find_models([runs])
    names = " ".join(models)
    assert "good" in names and "garbage_eval" not in names and "empty_config" not in names
    out = capsys.readouterr().out
    assert "skipping" in out and "eval.json: unreadable" in out and "lacks the model field(s) n_past, width" in out


# 13 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [("--n-future", "-3"), ("--samples", "0"), ("--limit", "-5"),
                                        ("--seed", "-1"), ("--truths", "x"), ("--workers", "0")])
def test_eval_flags_are_range_checked_by_name(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--ckpt", "assets/model", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


# 14 ------------------------------------------------------------------------------------------
def test_a_pickle_with_code_is_refused_naming_the_global(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "ckpt"
    bad.mkdir()
    shutil.copy(ROOT / "assets" / "model" / "model.safetensors", bad)
    shutil.copy(ROOT / "assets" / "model" / "meta.json", bad)
    torch.save({"x": Evil()}, bad / "state.pt")
    with pytest.raises(CheckpointError, match=r"refused because it holds code \(the global posix.system\)"):
        checkpoint.load_state(bad)


# 15 ------------------------------------------------------------------------------------------
def test_a_save_fsyncs_its_files_and_folders(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    model, meta = checkpoint.load_model(ROOT / "assets" / "model")
    config = meta.pop("config")
    checkpoint.save(tmp_path / "ckpt", model, config, meta, {"x": torch.zeros(1)})
    names = {Path(p).name for p in synced}
    assert {"model.safetensors", "meta.json", "state.pt", ".ckpt.tmp", tmp_path.name} <= names


# Section 4: rough edges ----------------------------------------------------------------------
def test_a_plain_script_without_a_main_guard_builds_the_cache(sim_copy, tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(f"from cvae.data.dataset import BairDataset\n"
                      f"print(len(BairDataset({str(sim_copy)!r}, 'train', workers=2)))\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "8", proc.stderr[-2000:]


def test_eval_on_other_data_keeps_the_models_own_score(sim_root, tmp_path, capsys):
    train(tiny(sim_root, tmp_path / "r", epochs=1), progress=False)
    ckpt = tmp_path / "r" / "best"
    common = ["--limit", "2", "--samples", "1", "--truths", "0", "--gif-samples", "1"]
    assert cli.main(["eval", "--ckpt", str(ckpt), *common]) == 0
    own = json.loads((ckpt / "eval" / "eval.json").read_text())
    assert own["extra"]["data_fingerprint"] and own["extra"]["split"] == "test"
    assert "scoring" in capsys.readouterr().err  # a progress bar
    other = tmp_path / "other"
    shutil.copytree(sim_root, other, ignore=shutil.ignore_patterns(".cache"))
    shutil.rmtree(other / "test" / next(p.name for p in (other / "test").iterdir()))
    (other / "test").rename(other / "t")
    shutil.copytree(other / "train", other / "test")
    assert cli.main(["eval", "--ckpt", str(ckpt), "--data", str(other), *common]) == 0
    assert json.loads((ckpt / "eval" / "eval.json").read_text()) == own
    assert (ckpt / "eval-other-test" / "eval.json").is_file()
    assert "this one goes to" in capsys.readouterr().out


def test_training_prints_its_schedules_and_where_best_is_chosen(sim_root, tmp_path, capsys):
    train(tiny(sim_root, tmp_path / "r", epochs=4, kl_anneal="monotonic", kl_ratio=0.5), progress=False)
    out = capsys.readouterr().out
    assert "KL weight (monotonic): 0 0, 1 5e-05, 2-3 0.0001" in out
    assert "has no validate/ split, so best/ is chosen by the test split" in out


def test_stop_at_step_stops_without_reshaping_the_schedules(sim_root, tmp_path):
    a = train(tiny(sim_root, tmp_path / "a", epochs=2), progress=False)
    train(tiny(sim_root, tmp_path / "b", epochs=2), progress=False, stop_at_step=4)
    assert checkpoint.read_meta(tmp_path / "b" / "last")["step"] == 4
    b = train(tiny(sim_root, tmp_path / "b", epochs=2), resume=True, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
