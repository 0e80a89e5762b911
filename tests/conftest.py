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
