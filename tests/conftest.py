import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory) -> Path:
    """A small simulated data set (train 8, test 4, no validate folder), generated once."""
    from cvae.data.generate import generate

    out = tmp_path_factory.mktemp("sim") / "data"
    generate(out, {"train": 8, "validate": 0, "test": 4}, seed=3, workers=2, progress=False)
    return out


@pytest.fixture
def sim_copy(sim_root, tmp_path) -> Path:
    """A private copy of ``sim_root`` that a test may damage."""
    dst = tmp_path / "data"
    shutil.copytree(sim_root, dst, ignore=shutil.ignore_patterns(".cache"))
    return dst


def write_square_sequences(root: Path, n: int, seed: int = 0) -> Path:
    """A handful of sequences in the processed layout where a large bright square (32x32) moves by
    the actions over a static textured background: copying the last frame is a poor prediction."""
    import numpy as np

    from cvae.data.bair import traj_folder, write_sequence

    rng = np.random.default_rng(seed)
    for i in range(n):
        background = (rng.uniform(0.15, 0.35) + rng.normal(0, 0.03, (64, 64, 1))).clip(0, 1) * np.ones(3)
        pos = rng.uniform(16, 48, 2)
        direction = rng.normal(size=2)
        actions = np.zeros((30, 4), np.float32)
        positions = np.zeros((30, 3), np.float32)
        frames = np.zeros((30, 64, 64, 3), np.uint8)
        for t in range(30):
            direction = direction + rng.normal(0, 0.3, 2)
            if t % 2 == 0:
                actions[t, :2] = np.clip(0.07 * direction / np.linalg.norm(direction), -0.07, 0.07)
            else:
                actions[t] = actions[t - 1]
            img = background.copy()
            r, c = pos.astype(int)
            img[r - 16 : r + 16, c - 16 : c + 16] = (0.95, 0.9, 0.3)
            frames[t] = (img * 255).round().astype(np.uint8)
            positions[t] = (pos[0] / 64, pos[1] / 64, 0.2)
            pos = np.clip(pos + 40 * actions[t, :2], 16, 48)
        folder, name = traj_folder(i)
        for split in ("train", "test") if i < 2 else ("train",):  # training validates on test/
            write_sequence(root / split / folder / name, frames, actions, positions)
    return root


@pytest.fixture(scope="session")
def square_root(tmp_path_factory) -> Path:
    return write_square_sequences(tmp_path_factory.mktemp("squares"), 8)


@pytest.fixture(scope="session")
def responsive_runs(tmp_path_factory) -> Path:
    """A runs folder holding one small checkpoint whose predictions respond to the actions.

    It is untrained but its batch-norm statistics have seen real frames, so its output follows
    every input; it tests the app's plumbing (edits reach the model) apart from how well the
    bundled model has learned to use actions.
    """
    import torch

    from cvae import checkpoint
    from cvae.config import preset
    from cvae.data.bair import list_sequences, read_sequence
    from cvae.model import SVG

    cfg = preset("cpu", width=0.125, g_dim=16, z_dim=4, rnn_size=32, out="runs/responsive").to_dict()
    torch.manual_seed(0)
    model = SVG.from_config(cfg)
    seqs = [read_sequence(s) for s in list_sequences(ASSETS / "data", "test")[:8]]
    x = torch.stack([torch.from_numpy(f[:12]).permute(0, 3, 1, 2).float() / 255 for f, _ in seqs])
    c = torch.stack([torch.from_numpy(c[:12]) for _, c in seqs])
    model.predictor.set_condition_stats(c)
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = None
    with torch.no_grad():
        model(x, c, teacher_forcing=False)
    runs = tmp_path_factory.mktemp("runs")
    checkpoint.save(runs / "responsive" / "best", model, cfg, {"epoch": 0})
    return runs
