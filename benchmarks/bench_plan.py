"""The planner on a trained run: its candidate table (the Pareto front), and
the cycle model's predictions against Verilator on several lane choices.

    .venv/bin/python benchmarks/bench_plan.py runs/default
    .venv/bin/python benchmarks/bench_plan.py runs/default --lanes 4,4,4,1 8,16,8,1 --images 20
    .venv/bin/python benchmarks/bench_plan.py runs/default --board icebreaker --no-sim

For each lane choice (default: the planner's choice and four others), the
same test images go through the engine under Verilator, fed back to back;
the table gives predicted / measured interval between images and latency of
the first image (alone in the pipeline), and the error.  The resources'
accuracy against Yosys is ``benchmarks/calibrate_cost.py --check``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# (lanes, words; None: a word per lane group)
OTHERS = (([4, 4, 4, 1], None), ([8, 16, 8, 1], [1, 2, 1, 1]), ([16, 16, 16, 1], None),
          ([16, 32, 8, 1], [1, 4, 1, 1]), ([16, 32, 32, 1], None))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/default", type=Path)
    ap.add_argument("--board", default="ulx3s", choices=("ulx3s", "icebreaker"))
    ap.add_argument("--lanes", nargs="*", default=None,
                    help="lane choices to simulate (comma lists; default: the plan's and "
                         "four others)")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--no-sim", action="store_true", help="the plan table only")
    args = ap.parse_args(argv)

    from bench_engine import measure

    from spikeforge import image
    from spikeforge.boards.build import BOARDS, board_memories, has_sdram
    from spikeforge.flow import PLAN_IMAGES, image_data
    from spikeforge.hw import model
    from spikeforge.hw import plan as planner
    from spikeforge.hw.network import lane_counts
    from spikeforge.sw import data as sfdata
    net, meta = image.read_image(args.run / "weights.sfimg")
    dataset, seed = image_data(meta)
    ds = sfdata.load(dataset, seed=seed)
    t0 = time.time()
    work = model.traces(net, ds.x_train[:PLAN_IMAGES])
    p = planner.plan(net, work, BOARDS[args.board].DEVICE, board_memories(net, args.board),
                     sdram=has_sdram(args.board))
    print(f"## {args.run}: {net.spec.name}, T = {net.spec.timesteps}, planned in "
          f"{time.time() - t0:.1f} s\n")
    print(planner.table(p, limit=len(p["candidates"])))
    if args.no_sim:
        return
    # (lanes, words, sdram, banks): the plan's storage with its choice, as it is for the others
    choices = ([(lane_counts(net, [int(v) for v in s.split(",")]), None, [], None)
                for s in args.lanes]
               if args.lanes else [(p["lanes"], p.get("words"), p.get("sdram", []), p.get("banks"))]
               + [(lanes, words, [], None) for lanes, words in OTHERS
                  if len(lanes) == len(net.layers) and (lanes, words) != (p["lanes"], p.get("words"))])
    test = model.traces(net, ds.x_test[:args.images])
    print(f"\n## cycle model against Verilator ({args.images} test images back to back)\n")
    print(f"{'lanes':<16} {'words':<10} {'interval pred':>13} {'measured':>9} {'error':>6} "
          f"{'latency pred':>12} {'measured':>9} {'error':>6}  (build s)")
    for lanes, words, sdram, banks in choices:
        pred = model.predict(net, lanes, test, p["fifo_depth"], words, sdram, banks)
        first = model.predict(net, lanes, test[:1], p["fifo_depth"], words, sdram,
                              banks)["cycles_per_inference"]
        with tempfile.TemporaryDirectory() as d:
            m = measure(args.run, args.images, lanes, Path(d), p["fifo_depth"], words, sdram,
                        banks)
        done = m["done_at"]
        interval = (done[-1] - done[0]) / (len(done) - 1)
        alone = m["cycles"][0]
        shown = "groups" if words is None else ",".join(map(str, words))
        print(f"{','.join(map(str, lanes)):<16} {shown:<10} {pred['interval_cycles']:>13.0f} "
              f"{interval:>9.0f} {100 * (pred['interval_cycles'] / interval - 1):>+5.0f}% "
              f"{first:>12.0f} {alone:>9.0f} {100 * (first / alone - 1):>+5.0f}%  "
              f"({m['build_seconds']:.0f})", flush=True)


if __name__ == "__main__":
    main()
