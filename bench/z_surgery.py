"""Copy a run and narrow its posterior, to test whether z is ignored because it starts as noise.

z enters the predictor as mu + sigma * eps with sigma near 1, so the predictor learns to ignore
it before the posterior says anything. This copies RUN/last to OUT/last with the posterior's
log-variance bias lowered by SHIFT (sigma x exp(-SHIFT/2)); ``train_cli.py --out OUT --resume``
then continues from there, so the effect on the KL and on the spread of futures can be measured
against the same run continued unchanged.

    python bench/z_surgery.py runs/cpu13 runs/cpu13z --shift 4
    python train_cli.py --out runs/cpu13z --resume --epochs 14

``--kl-weight`` also changes the copy's KL weight (and turns free bits off), to test whether z
is ignored because it does not pay: the information it could carry is worth less MSE than its
KL costs at beta 1e-4.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--shift", type=float, default=4.0, help="how much to lower the posterior's log-variance bias")
    p.add_argument("--kl-weight", type=float, default=None,
                   help="also set the copy's KL weight (free bits off), so --resume continues with it")
    args = p.parse_args()
    src, dst = Path(args.run), Path(args.out)
    if dst.exists():
        print(f"error: {dst} exists", file=sys.stderr)
        return 2
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("best", "eval"))
    weights = load_file(dst / "last" / "model.safetensors")
    weights["posterior.logvar.bias"] = weights["posterior.logvar.bias"] - args.shift
    save_file(weights, dst / "last" / "model.safetensors")
    meta = json.loads((dst / "last" / "meta.json").read_text())
    meta["config"]["out"] = str(dst)
    if args.kl_weight is not None:
        meta["config"].update(kl_weight=args.kl_weight, kl_free_bits=0.0)
    (dst / "last" / "meta.json").write_text(json.dumps(meta, indent=1))
    beta = "" if args.kl_weight is None else f", KL weight {args.kl_weight:g} without free bits"
    print(f"{dst}/last: posterior log-variance bias lowered by {args.shift}{beta}; continue with --resume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
