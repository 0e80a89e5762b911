"""The package's seams: what imports what, and the one place each extension goes."""
import subprocess
import sys

import pytest
import torch

from cvae.model import SVG
from cvae.model.heads import HEADS, Head, register


@pytest.mark.parametrize("module", ["cvae.train", "cvae.evaluate", "cvae.app.logic", "cvae.cli"])
def test_training_evaluation_and_the_app_do_not_load_the_physics_engine(module):
    code = f"import sys, {module}; print('pymunk' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-1000:]


def test_a_new_output_head_is_one_registered_class():
    @register
    class Shift(Head):
        """The previous frame moved one pixel down: a head that needs nothing but its class."""

        name = "shift-test"

        def forward(self, out, prev, anchor, g):
            return torch.roll(self.previous(prev), 1, dims=-2)

    try:
        model = SVG(g_dim=16, z_dim=4, rnn_size=16, width=0.125, output="shift-test")
        x, c = torch.rand(2, 4, 3, 64, 64), torch.zeros(2, 4, 7)
        pred = model.predict(x[:, :2], c, 2, 1, seed=0)[:, 0]
        torch.testing.assert_close(pred[:, 0], torch.roll(x[:, 1], 1, dims=-2))
    finally:
        del HEADS["shift-test"]
