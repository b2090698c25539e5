"""Board builds: Fmax, LUT / FF / BRAM / DSP per board, and inferences per
second at that Fmax from RTL cycle counts.

usage: python benchmarks/bench_boards.py [--boards ulx3s icebreaker] [--run RUN]
                                        [--images N] [--out build/bench_boards]

For each board: build the bitstream of the board's default model
(:data:`spikeforge.boards.build.DEFAULT_MODELS`; weights of an untrained model
of that configuration unless ``--run RUN`` gives a trained run folder, used
for every board it fits), read Fmax and resources from the report (nextpnr's
JSON), then simulate the same engine under Verilator
(:mod:`spikeforge.sim.runner`) on ``N`` test images of the model's dataset
and turn the cycles per inference (images back to back: the interval between
completions) into inferences per second at Fmax and at the board clock.  ``link inf/s`` is the UART bound: the bytes one
inference moves (START, the EVENTS frames, RESULT requests and replies) at the
board's baud rate, 10 bits a byte.

Untrained weights give arbitrary spike activity, so cycle counts of a
trained run (``--run``) are the representative ones.  Costs: the ULX3S build
of the default model takes a few minutes on 2 cores (Yosys and nextpnr as
WebAssembly), the iCEBreaker one about a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from spikeforge import toolchain


def link_bytes(beats: int, info) -> int:
    """Bytes on the wire for one inference (both directions): START and its
    reply, the EVENTS frames and their replies, one RESULT and its reply."""
    from spikeforge.boards import protocol as P
    from spikeforge.layouts import byte_size
    frame = P.HEADER_BYTES + P.CRC_BYTES
    n_ev = max(1, -(-beats // (P.MAX_PAYLOAD // info.event_bytes)))
    start = 2 * frame
    events = 2 * n_ev * frame + beats * info.event_bytes
    result = 2 * frame + byte_size(P.result_layout(info.n_out, info.count_bytes))
    return start + events + result


def bench(board: str, run: Path | None, images: int, out: Path) -> dict:
    from spikeforge import image
    from spikeforge.boards import build as B
    from spikeforge.boards.top import board_info
    from spikeforge.hw.network import input_events
    from spikeforge.sim import runner
    from spikeforge.sw import data as sfdata
    cfg = B.DEFAULT_MODELS[board]
    if run is not None:
        net, meta = image.read_image(run / "weights.sfimg")
        idx = run / "hw" / "memories.json"
        lanes = json.loads(idx.read_text())["lanes"] if idx.exists() else cfg.lanes
        dataset, source = meta.get("dataset", "mnist5k"), f"run {run}"
    else:
        net, lanes = B.default_network(board)
        dataset, source = cfg.dataset, f"{cfg.label} (untrained weights)"
    t0 = time.perf_counter()
    mhz = B.DEFAULT_CLOCK_MHZ[board]
    rep = B.build(net, board, out / board, lanes=lanes, allow_timing_fail=True,
                  clock_hz=None if mhz is None else mhz * 1e6)
    build_s = time.perf_counter() - t0
    ds = sfdata.load(dataset, seed=0)
    x = ds.x_test[:images]
    words = sum(len(input_events(net, x[i])) + 1 for i in range(images)) + 1
    sb = runner.build(net, lanes, out / "sim" / board, depth=1 << max(12, words.bit_length()),
                      fifo_depth=rep["fifo_depth"])
    sim = runner.run(sb, x, out / "sim" / f"{board}_work")
    # images back to back (LIF / IF streams): the interval between completions
    done = [r.done_at for r in sim.images]
    cycles = ((done[-1] - done[0]) / (images - 1) if sb.stream and images > 1
              else sum(r.cycles for r in sim.images) / images)
    beats = sum(len(input_events(net, x[i])) for i in range(images)) / images
    info = board_info(net, lanes, clock_hz=rep["board_clock_mhz"] * 1e6)
    wire = link_bytes(int(beats), info)
    return {
        "board": board, "network": source, "lanes": rep["lanes"],
        "fmax_mhz": rep["fmax_mhz"], "clock_mhz": rep["clock_mhz"],
        "timing_met": rep["timing_met"], "lut": rep["lut"], "lut_available": rep["lut_available"],
        "ff": rep["ff"], "bram": rep["bram"], "bram_available": rep["bram_available"],
        "dsp": rep["dsp"], "cycles_per_inference": cycles, "beats_per_inference": beats,
        "inferences_per_s_at_fmax": rep["fmax_mhz"] * 1e6 / cycles,
        "inferences_per_s_at_clock": rep["clock_mhz"] * 1e6 / cycles,
        "link_bytes_per_inference": wire,
        "link_inferences_per_s": rep["link"]["baud"] / 10 / wire,
        "build_seconds": build_s, "bitstream_bytes": rep["bitstream_bytes"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boards", nargs="+", default=["ulx3s", "icebreaker"])
    ap.add_argument("--run", type=Path, default=None, help="a trained run folder")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("build/bench_boards"))
    args = ap.parse_args(argv)
    toolchain.setup()
    rows = []
    for board in args.boards:
        print(f"[{board}] building ...", file=sys.stderr, flush=True)
        rows.append(bench(board, args.run, args.images, args.out))
    hdr = (f"{'board':11s} {'Fmax MHz':>8s} {'clk MHz':>7s} {'LUT':>12s} {'FF':>6s} "
           f"{'BRAM':>8s} {'DSP':>3s} {'cyc/inf':>8s} {'inf/s@Fmax':>10s} {'inf/s@clk':>9s} "
           f"{'link inf/s':>10s} {'build s':>7s}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['board']:11s} {r['fmax_mhz']:8.1f} {r['clock_mhz']:7.1f} "
              f"{r['lut']:5d}/{r['lut_available']:<6d} {r['ff']:6d} "
              f"{r['bram']:3d}/{r['bram_available']:<4d} {r['dsp']:3d} "
              f"{r['cycles_per_inference']:8.0f} {r['inferences_per_s_at_fmax']:10.0f} "
              f"{r['inferences_per_s_at_clock']:9.0f} {r['link_inferences_per_s']:10.1f} "
              f"{r['build_seconds']:7.0f}")
    for r in rows:
        print(f"  {r['board']}: {r['network']}, lanes {r['lanes']}, timing met: "
              f"{r['timing_met']}, {r['beats_per_inference']:.0f} event beats/inference")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_boards.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
