"""Train or evaluate the action-conditioned video-prediction CVAE (see README.md); the same as
the ``cvae`` command, with ``train`` as the default.

    python train_cli.py                      # built-in data (generated if absent), cpu preset
    python train_cli.py --preset lab --data /path/to/bair
    torchrun --standalone --nproc_per_node=8 train_cli.py --preset svg-lp
    python train_cli.py eval --ckpt runs/cpu/best
"""
import sys

from cvae.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="train_cli.py", default="train"))
