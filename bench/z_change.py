"""The browser test's Resample z figure without a browser: how much another z changes a
checkpoint's futures where the world is uncertain (``metrics.z_change``), so candidates for the
bundle can be screened in seconds. As the app and its test: the bundled test sequence 10 (a push
with many outcomes), its own actions, 8 futures at z seeds 0 and 12345, the moving region of the
8 physics futures. The browser reads GIFs (a palette per frame), so its figure differs a little:
4.94 grey levels for the bundled model where this reads 4.88 (3.21 and 3.20 for the one before).

    python bench/z_change.py --ckpt assets/model
    python bench/z_change.py --ckpt runs/n/w2/last --flow-deadzone 1.3   # a dead zone, untrained
"""
from __future__ import annotations

import argparse

import torch
from common import load_with_deadzone, record

from cvae.app import logic
from cvae.metrics import z_change


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", required=True)
    p.add_argument("--seq", type=int, default=10, help="index in the bundled test sequences")
    p.add_argument("--seeds", type=int, nargs=2, default=(0, 12345))
    p.add_argument("--futures", type=int, default=8)
    p.add_argument("--flow-deadzone", type=float, default=None,
                   help="use this dead zone in a flow head instead of the checkpoint's own (no training: what it does alone)")
    args = p.parse_args()
    source = logic.find_sources([])["bundled test sequences"]
    for ckpt in args.ckpt:
        model = load_with_deadzone(ckpt, args.flow_deadzone).set_channels_last()
        n_past, n_future = model.n_past, 10
        _, cond = logic.load_sequence(source.sequences[args.seq])
        table = logic.table_rows(cond, n_past, n_future)
        a, b = (logic.run_prediction(source, args.seq, model, n_future, table, args.futures, seed) for seed in args.seeds)
        if a.physics_futures is None:
            raise SystemExit("the bundled test sequences have no physics futures: is assets/data intact?")
        moved = 255 * float(z_change(a.edited, b.edited, a.physics_futures, a.truth[n_past - 1]))
        print(f"{ckpt}: another z changes the futures by {moved:.2f} grey levels in the moving region "
              f"(flow_deadzone {getattr(model.decoder.head, 'deadzone', 0.0)} px)")
        record("z_change", torch.device("cpu"), ckpt=ckpt, seq=args.seq, seeds=list(args.seeds),
               futures=args.futures, flow_deadzone=args.flow_deadzone, grey_levels=round(moved, 2))


if __name__ == "__main__":
    main()
