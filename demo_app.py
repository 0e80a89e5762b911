"""Open the app: pick a sequence, edit its actions, resample z, compare futures (see README.md).

    python demo_app.py                         # bundled model and test sequences
    python demo_app.py --data data/sim --runs runs --port 7860
"""
import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", default=[], help="a data set in the processed BAIR layout (repeatable)")
    p.add_argument("--runs", action="append", default=[], help="a folder searched for checkpoints (repeatable)")
    p.add_argument("--host", default=None, help="server name, e.g. 0.0.0.0 (Gradio's default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (Gradio's default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link")
    p.add_argument("--keep-minutes", type=float, default=10,
                   help="delete generated GIFs and images older than this (default 10), so disk use stays bounded")
    args = p.parse_args()
    from cvae.app.ui import launch
    from cvae.checkpoint import CheckpointError
    from cvae.data.bair import DataError

    try:
        launch(args.data, args.runs, args.host, args.port, args.share, args.keep_minutes)
    except (DataError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
