"""The planner's search against the doublings alone, under other routability
ceilings.

    .venv/bin/python benchmarks/bench_plan_search.py RUN [--device ecp5-85f]
        [--blocks 140,150,...] [--util 0.2,0.3,...] [--images 2]

For each pair of ceilings (block RAMs a plan may use, share of the logic)
the plan of ``RUN``'s network found by the climb with each set of moves
(:data:`spikeforge.hw.plan.MOVES`): the doublings alone (the climb before
``skip`` and ``trade``), with ``skip``, and with all.  The cost and cycle
models are the project's own; only the ceilings move, to show where a
search stops short.  Rows where every search finds the same plan are left
out; the last line counts them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikeforge.boards import build as B          # noqa: E402
from spikeforge.hw import cost, model, plan as P  # noqa: E402
from spikeforge.hw.fit import DEVICES             # noqa: E402
from spikeforge.image import read_image           # noqa: E402
from spikeforge.sw import data                    # noqa: E402

SEARCHES = {"doublings": ("double",), "+skip": ("double", "skip"), "+trade (all)": P.MOVES}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--device", default="ecp5-85f", choices=[d for d in DEVICES
                                                              if not d.startswith("ice40")])
    ap.add_argument("--blocks", default="140,150,160,170,174,180,183")
    ap.add_argument("--util", default="0.2,0.25,0.3,0.35,0.4,0.5")
    ap.add_argument("--images", type=int, default=2, help="training images for the cycle model")
    args = ap.parse_args(argv)
    net, _ = read_image(args.run / "weights.sfimg")
    shape = net.spec.input_shape
    ds = "mnist5k" if shape[-1] == 28 else "digits8x8"
    work = model.traces(net, data.load(ds).x_train[:args.images])
    board = B.board_memories(net, "ulx3s") if args.device == "ecp5-85f" else ()
    dev, real = DEVICES[args.device], cost.load
    cm = real(args.device)
    print(f"{args.run} on {args.device}: the plan each search finds (lanes / words: "
          "inferences/s predicted)")
    print(f"{'blocks':>6} {'util':>5}  " + "  ".join(f"{k:<34}" for k in SEARCHES))
    same = 0
    try:
        for blocks in map(int, _floats(args.blocks)):
            for util in _floats(args.util):
                cost.load = lambda d, b=blocks, u=util: dataclasses.replace(
                    cm, bram_ceiling=b / dev.blocks, util_ceiling=u)
                cells = []
                for moves in SEARCHES.values():
                    try:
                        c = P.plan(net, work, args.device, board, moves=moves)["chosen"]
                        cells.append(f"{','.join(map(str, c['lanes']))} / "
                                     f"{','.join(map(str, c['words']))}: "
                                     f"{c['inferences_per_second']:,.0f}")
                    except P.PlanError:
                        cells.append("refused")
                if len(set(cells)) == 1:
                    same += 1
                    continue
                print(f"{blocks:>6} {util:>5.2f}  " + "  ".join(f"{c:<34}" for c in cells))
    finally:
        cost.load = real
    print(f"({same} ceiling pairs where every search found the same plan)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
