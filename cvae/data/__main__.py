"""``python -m cvae.data``: generate, convert, check, cache and preview data sets."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from ..artifacts import tile, write_gif
from ..errors import CvaeError, DataError
from .bair import SPLITS, list_sequences, read_sequence
from .cache import load_split
from .generate import DEFAULT_SIZES, generate
from .simulator import DEFAULT_UNCERTAINTY


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cvae.data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="simulate a pushing data set in the processed BAIR layout")
    g.add_argument("--out", default="data/sim")
    for split, n in DEFAULT_SIZES.items():
        g.add_argument(f"--{split}", type=int, default=n, help=f"sequences in {split} (default {n})")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--uncertainty", type=float, default=DEFAULT_UNCERTAINTY,
                   help="scale of the hidden causes (friction, mass, centre of mass, finger grip) that make "
                        f"the future uncertain given the actions; 0: deterministic (default {DEFAULT_UNCERTAINTY:g})")
    g.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    c = sub.add_parser("convert", help="convert BAIR TFRecords (softmotion30_44k) without TensorFlow")
    c.add_argument("--tfrecords", required=True, help="folder holding train/ and test/ *.tfrecords")
    c.add_argument("--out", required=True)
    c.add_argument("--camera", choices=["aux1", "main"], default="aux1")
    k = sub.add_parser("check", help="validate every sequence of a data set and build its caches")
    k.add_argument("--root", required=True)
    k.add_argument("--workers", type=int, default=None)
    v = sub.add_parser("gif", help="write an animated GIF of a few sequences side by side")
    v.add_argument("--root", default="data/sim")
    v.add_argument("--split", default="test", choices=SPLITS)
    v.add_argument("--index", type=int, nargs="+", default=[0, 1, 2, 3])
    v.add_argument("--out", default="sequences.gif")
    args = p.parse_args(argv)
    try:
        if args.cmd == "generate":
            sizes = {s: getattr(args, s) for s in SPLITS}
            stats = generate(args.out, sizes, args.seed, args.workers, uncertainty=args.uncertainty)
            print(json.dumps({k: stats[k] for k in ("sizes", "uncertainty", "contact_share", "seconds", "sequences_per_s")}))
        elif args.cmd == "convert":
            from .tfrecord import convert

            for split, n in convert(args.tfrecords, args.out, args.camera).items():
                print(f"{split}: {n} sequences")
        elif args.cmd == "check":
            for split in SPLITS:
                if (Path(args.root) / split).is_dir():
                    packed = load_split(args.root, split, workers=args.workers)
                    state = "rebuilt" if packed.rebuilt else "up to date"
                    print(f"{split}: {packed.n_sequences} sequences x {packed.n_frames} frames, cache {state}")
        else:
            seqs = list_sequences(args.root, args.split)
            for i in args.index:
                if not 0 <= i < len(seqs):
                    raise DataError(f"--index {i} is out of range: split {args.split!r} has {len(seqs)} sequences")
            videos = [read_sequence(seqs[i])[0] for i in args.index]
            print(write_gif(args.out, tile(videos)))
    except CvaeError as e:
        print(f"{e.label}: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
