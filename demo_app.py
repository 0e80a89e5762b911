"""Open the app: pick a sequence, edit its actions, resample z, compare futures (see README.md);
the same as ``cvae app``.

    python demo_app.py                         # bundled model and test sequences
    python demo_app.py --data data/sim --runs runs --port 7860
"""
import sys

from cvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]], prog="demo_app.py"))
