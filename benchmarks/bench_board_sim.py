"""A run's board top under Verilator, driven by the host driver over a
bit-level simulated UART: what `spikeforge infer --port` does with a board,
without one.

    .venv/bin/python benchmarks/bench_board_sim.py RUN [--board icebreaker] [--images 5]

The top is built for the run's plan (lanes, words, the device's event FIFO
depth; the batch mode's image store left out) with the board's memories as
the board's build makes them (on the iCEBreaker, the weights
:func:`spikeforge.hw.fit.spram_layers` puts in SPRAM are ``SB_SPRAM256KA``
blocks under Yosys's own model, empty until the host loads them); its
memories start zeroed and the driver loads every word over the link, then
infers the first test images one at a time and compares each class and
spike count with the golden model.  Prints the words loaded, the mismatches,
cycles per image and the wall time.  The link runs at 1/8 of the simulated
clock, so loading takes simulated milliseconds, not the board's seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikeforge import image                          # noqa: E402
from spikeforge.boards.build import BOARDS, board_memories  # noqa: E402
from spikeforge.errors import SpikeforgeError         # noqa: E402
from spikeforge.flow import (PLAN, file_lanes, image_data, planned_board,  # noqa: E402
                             planned_lanes, planned_words)
from spikeforge.hw.fit import DEVICES, spram_layers   # noqa: E402
from spikeforge.sim import tb_board                   # noqa: E402
from spikeforge.sw import data as sfdata              # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--board", choices=sorted(BOARDS), default="icebreaker")
    ap.add_argument("--images", type=int, default=5)
    args = ap.parse_args(argv)
    try:   # plan.json through the flow's checks: a bad field is an error naming it
        net, meta = image.read_image(args.run / "weights.sfimg")
        if not (args.run / PLAN).exists():
            raise SpikeforgeError(f"{args.run / PLAN} does not exist: "
                                  f"`spikeforge plan {args.run} --board {args.board}` first")
        board, _ = planned_board(args.run)
        lanes = file_lanes(net, planned_lanes(args.run), args.run / PLAN)
        words = planned_words(args.run)
    except SpikeforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if (board or args.board) != args.board:
        print(f"error: {args.run / PLAN} is planned for the {board}, not the "
              f"{args.board}: `spikeforge plan {args.run} --board {args.board}` first",
              file=sys.stderr)
        return 2
    device = BOARDS[args.board].DEVICE
    spram = spram_layers(net, lanes, device, board_memories(net, args.board), words)
    name, seed = image_data(meta)
    x = sfdata.load(name, seed=seed).x_test[:args.images]
    root = Path(tempfile.gettempdir()) / "spikeforge-board-sim"
    t0 = time.perf_counter()
    bs = tb_board.build(net, lanes, root, spram=spram, words=words,
                        fifo_depth=DEVICES[device].event_fifo_depth)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = tb_board.run(bs, x, Path(tempfile.mkdtemp(prefix="board-sim-")), timeout_s=0.05)
    wall = time.perf_counter() - t0
    if not res["ok"]:
        print(f"error: the simulated board failed: {res.get('failure', '')[:500]}", file=sys.stderr)
        return 1
    s = res["summary"]
    print(f"{args.run} on the {args.board} top: lanes {lanes}, weights in SPRAM: layers "
          f"{list(spram) or 'none'}")
    print(f"words loaded {s['words_loaded']} ({1e3 * s['load_seconds']:.1f} ms simulated); "
          f"{s['images']} images: {s['class_mismatches']} class and {s['counts_mismatches']} "
          f"count mismatches against the golden model; {s['cycles_per_inference']:.0f} cycles "
          f"an image; Verilator build {built:.0f} s, simulation {wall:.0f} s")
    return 0 if s["class_mismatches"] == s["counts_mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
