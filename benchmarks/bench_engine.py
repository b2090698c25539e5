"""Engine throughput: before / after on a trained network under Verilator,
per layer against its bound, with the cycle model beside it; and a Yosys
synthesis of the run's engine (no multipliers; LUT / FF / block RAM).

    .venv/bin/python benchmarks/bench_engine.py runs/default            # all tables
    .venv/bin/python benchmarks/bench_engine.py runs/default --no-synth
    .venv/bin/python benchmarks/bench_engine.py runs/default --before 06b9b42 --before-lanes 4

``--before REV`` measures the engine of git revision ``REV`` (default: the
last commit before the throughput work, with its default P = 4) on the same
network and test images, in a subprocess that imports that revision's
sources: the two columns come from one run of this script.

Per layer:

* ``acc``: synaptic accumulates per image (every input spike's in-bounds
  kernel taps times the output channels; layer 0: every set bit of the input
  the engine is sent, a held frame once);
* ``adders``: accumulates the layer can do per cycle, ``P * Q`` (``Q`` the
  inputs of an event: bit planes at layer 0, the channels of a word for a
  layer that takes word events (the run's recorded words), else 1);
* ``bound``: ``max(acc / adders, neuron updates / neuron datapaths)``, the
  neuron updates being ``T * neurons`` (``R * P`` datapaths);
* ``busy``, ``stall``, ``scan``: the core's counters (:data:`PERF_FIELDS`);
* end to end: the interval between image completions when the harness feeds
  images back to back (the throughput; stalls and everything else included),
  the latency of an image alone (the first) and when streaming (waiting behind
  the images ahead included); the revision before took one image at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BEFORE_REV = "06b9b42"  # the engine before the throughput work (one tap, one spike a cycle)


# --------------------------------------------------------------------------- measurement
# (runs in this process for "after", in a subprocess on another revision for "before":
#  only APIs that both have)


def measure(run: Path, images: int, lanes, work: Path, fifo_depth: int | None = None,
            words=None, sdram=(), banks=None) -> dict:
    """The run's engine (event FIFOs of ``fifo_depth``, default the run's
    export's; ``words`` per layer, default a word per lane group) on its
    first test images, back to back under Verilator.  Also run by the
    revision before (``measure_before``), whose package may have no FIFO
    depth or words to set."""
    from spikeforge import image
    from spikeforge.hw.network import input_events
    from spikeforge.sim import runner
    from spikeforge.sw import data as sfdata
    net, meta = image.read_image(run / "weights.sfimg")
    ds = sfdata.load(meta.get("dataset", "mnist5k"), seed=meta.get("seed", 0))
    x = ds.x_test[:images]
    beats = sum(len(input_events(net, x[i])) + 1 for i in range(images)) + 1
    depth = 1 << max(12, (beats - 1).bit_length())
    t0 = time.time()
    if fifo_depth is None:
        try:
            from spikeforge.flow import recorded_fifo_depth
            fifo_depth = recorded_fifo_depth(run)
        except ImportError:   # an earlier revision: its engine's FIFOs are fixed
            pass
    kw = ({} if fifo_depth is None else {"fifo_depth": fifo_depth}) | (
        {} if words is None else {"words": words}) | (
        {} if not sdram and banks is None else {"sdram": sdram, "banks": banks})
    sb = runner.build(net, lanes, work / "build", depth=depth, **kw)
    build_s = time.time() - t0
    sim = runner.run(sb, x, work / "sim")
    done_at = [getattr(r, "done_at", None) for r in sim.images]
    return {
        "lanes": list(sb.lanes),
        "cycles": [r.cycles for r in sim.images],
        "done_at": done_at if None not in done_at else None,
        "perf": [[r.perf[l] for r in sim.images] for l in range(len(net.layers))],
        "predictions": [r.prediction for r in sim.images],
        "build_seconds": build_s, "sim_seconds": sim.wall_seconds,
    }


def _revision_tree(rev: str, root: Path) -> Path:
    """A folder whose ``spikeforge`` package is revision ``rev`` of this repository."""
    repo = Path(__file__).resolve().parent.parent
    src = root / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = root / "pkg" / "spikeforge"
    pkg.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(src / "spikeforge"), str(pkg)], check=True)
    for sub in ("hw", "sw", "sim", "boards"):
        (pkg / sub).symlink_to(src / sub)
    return root / "pkg"


def _image_for_before(run: Path, root: Path) -> Path:
    """A run folder for the older revision: the run's image with the fields
    that revision predates left out (a neuron's ``strict``, when false, the
    only meaning it had then); refused for a network that needs them."""
    import zlib

    from spikeforge import image
    data = (run / "weights.sfimg").read_bytes()
    magic, version, flags, mlen = image.HEADER.unpack_from(data)
    mend = image.HEADER.size + mlen
    manifest = json.loads(data[image.HEADER.size:mend])
    for n, layer in enumerate(manifest["spec"]["layers"]):
        if layer["neuron"].pop("strict", False):
            raise SystemExit(f"layer {n} fires at u > theta (neuron.strict), which the engine "
                             "before predates: measure it with --before ''")
    text = json.dumps(manifest).encode()
    body = image.HEADER.pack(magic, version, flags, len(text)) + text + data[mend:-image.CRC.size]
    out = root / "run"
    out.mkdir(parents=True)
    (out / "weights.sfimg").write_bytes(body + image.CRC.pack(zlib.crc32(body)))
    return out


def measure_before(run: Path, images: int, lanes: str, rev: str, root: Path) -> dict:
    pkg = _revision_tree(rev, root)
    out = root / "before.json"
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    run = _image_for_before(run, root)
    proc = subprocess.run([sys.executable, __file__, "--measure", str(run.resolve()),
                           "--images", str(images), "--lanes", lanes, "--json", str(out),
                           "--work", str(root / "work")], env=env, cwd=root,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"measuring revision {rev} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- tables


def table_compare(run: Path, images: int, before_rev: str | None, before_lanes: str) -> None:
    from spikeforge import image
    from spikeforge.flow import recorded_fifo_depth, recorded_words, storage_for
    from spikeforge.hw import model
    from spikeforge.hw.network import core_params
    from spikeforge.sw import data as sfdata
    net, meta = image.read_image(run / "weights.sfimg")
    ds = sfdata.load(meta.get("dataset", "mnist5k"), seed=meta.get("seed", 0))
    x = ds.x_test[:images]
    idx = run / "hw" / "memories.json"
    if not idx.exists():
        sys.exit(f"{idx} is missing: run `spikeforge export {run}` first (the planned lanes)")
    lanes = json.loads(idx.read_text())["lanes"]
    words = recorded_words(run)
    sdram, banks = storage_for(run, lanes)   # the export's: an fc layer in the SDRAM...
    T = net.spec.timesteps
    print(f"## 1. {run}: {net.spec.name}, T = {T}, {images} test images, Verilator\n")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "after").mkdir()
        after = measure(run, images, lanes, d / "after", words=words, sdram=sdram, banks=banks)
        before = (measure_before(run, images, before_lanes, before_rev, d / "before")
                  if before_rev else None)
    work = model.traces(net, x)
    pred = model.predict(net, lanes, work, recorded_fifo_depth(run), words, sdram, banks)
    # accumulates per layer: every input spike's in-bounds taps x C_out (the
    # model's traces); layer 0: every set bit of the input the engine is sent
    # (a held frame once)
    from spikeforge.hw.model import _in_bounds_taps
    from spikeforge.hw.network import input_events
    accs = []
    for n, layer in enumerate(net.spec.layers):
        total = 0
        for i in range(images):
            if n == 0:
                for b in input_events(net, x[i]):
                    if not b.last:
                        bits = max(1, int(b.mask).bit_count())
                        total += bits * _in_bounds_taps(layer, torch.tensor([b.y]),
                                                        torch.tensor([b.x]))
            else:
                total += sum(_in_bounds_taps(layer, y, xx) for y, xx in work[i][n].events())
        accs.append(total * layer.out_channels / images)
    cps = core_params(net, lanes, words=words)
    mean = lambda v: sum(v) / len(v)

    def side(m, l):
        return {k: mean([p[k] for p in m["perf"][l]]) for k in ("busy", "stall", "scan")}

    print(f"lanes: after {lanes}" + ("" if words is None else f", words {words}")
          + (f", before {before['lanes']} (revision {before_rev})"
                                      if before else ""))
    head = (f"{'layer':>5} {'acc':>9} {'adders':>6} {'bound':>7} {'busy':>8} {'stall':>7} "
            f"{'scan':>7} {'model':>7}" + (f" | {'busy before':>11} {'stall':>8} {'scan':>8}"
                                             if before else ""))
    print(head)
    bounds = []
    for n, cp in enumerate(cps):
        adders = cp.P * cp.in_lanes
        neuron_bound = T * cp.neurons / (cp.P * cp.R)
        bound = max(accs[n] / adders, neuron_bound)
        bounds.append(bound)
        a = side(after, n)
        line = (f"{n:>5} {accs[n]:>9.0f} {adders:>6} {bound:>7.0f} {a['busy']:>8.0f} "
                f"{a['stall']:>7.0f} {a['scan']:>7.0f} {pred['layers'][n]['updates']:>7.0f}")
        if before:
            b = side(before, n)
            line += f" | {b['busy']:>11.0f} {b['stall']:>8.0f} {b['scan']:>8.0f}"
        print(line)
    streaming = after["done_at"] is not None and images > 1
    interval = ((after["done_at"][-1] - after["done_at"][0]) / (images - 1) if streaming
                else mean(after["cycles"]))
    alone = after["cycles"][0]  # the first image: nothing ahead of it in the pipeline
    # before: one image at a time; its latency is a lower bound of its interval
    b_lat = mean(before["cycles"]) if before else None
    print("\n(model column: predicted in-bounds read-modify-writes; busy/stall/scan: "
          "RTL counters, cycles per image)")
    print(f"\n{'':<40} {'after':>10}" + (f" {'before':>10} {'ratio':>7}" if before else ""))
    rows = [("interval between images, cycles", interval, b_lat),
            ("latency of an image alone, cycles", alone, b_lat),
            ("latency when streaming, cycles", mean(after["cycles"]), None),
            ("model: interval / latency alone", f"{pred['interval_cycles']:.0f} / "
             f"{pred['cycles_per_inference']:.0f}", None),
            ("largest per-layer bound", max(bounds), None),
            ("interval / largest bound", f"{interval / max(bounds):.3f}", None)]
    for name, a, b in rows:
        line = f"{name:<40} {a:>10.1f}" if not isinstance(a, str) else f"{name:<40} {a:>10}"
        if before and b is not None:
            line += f" {b:>10.1f} {b / a:>6.1f}x"
        print(line)
    if before:
        print("(before: one image at a time, so its interval is at least its latency)")
    agree = after["predictions"] == (before["predictions"] if before else after["predictions"])
    print(f"\nVerilator: after built in {after['build_seconds']:.0f} s, simulated in "
          f"{after['sim_seconds']:.1f} s" + (f"; before {before['build_seconds']:.0f} s / "
                                            f"{before['sim_seconds']:.1f} s; same predictions: "
                                            f"{agree}" if before else ""))


def table_synth(run: Path) -> None:
    """Yosys ``synth_ecp5`` of the run's whole engine: cells, multipliers, block RAM."""
    from amaranth.back import rtlil

    from spikeforge import image, toolchain
    from spikeforge.flow import recorded_fifo_depth, recorded_words, storage_for
    from spikeforge.hw.fit import check_fit
    from spikeforge.hw.memory import SYNTHESIS
    from spikeforge.hw.network import NetworkTop
    toolchain.setup()
    net, _ = image.read_image(run / "weights.sfimg")
    lanes = json.loads((run / "hw" / "memories.json").read_text())["lanes"]
    words = recorded_words(run)
    sdram, banks = storage_for(run, lanes)
    top = NetworkTop(net, lanes, fifo_depth=recorded_fifo_depth(run), words=words,
                     sdram=tuple(sdram), banks=banks)
    t0 = time.time()
    text = rtlil.convert(top, name="engine", platform=SYNTHESIS)
    print(f"\n## 2. Synthesis of the engine of {run} (lanes {lanes}): RTLIL export "
          f"{time.time() - t0:.0f} s\n")
    keys = ("LUT4", "CCU2C", "TRELLIS_FF", "DP16KD", "TRELLIS_DPR16X4", "MULT18X18D", "$mul")
    t0 = time.time()
    cells = toolchain.yosys_cells(text, "synth_ecp5", top="engine")
    dt = time.time() - t0
    muls = sum(cells.get(k, 0) for k in ("MULT18X18D", "$mul", "$__MUL18X18"))
    print(f"ecp5 (synth_ecp5, {dt:.0f} s): " + ", ".join(f"{k} {cells.get(k, 0)}" for k in keys))
    print(f"multiplier cells: {muls}; block RAM predicted by check_fit: "
          f"{check_fit(net, lanes, 'ecp5-85f', (), words, sdram, banks)['blocks']}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/default", type=Path)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--before", default=BEFORE_REV,
                    help="git revision to compare with ('' for none; default %(default)s)")
    ap.add_argument("--before-lanes", default="4")
    ap.add_argument("--no-synth", action="store_true")
    # internal: measure with whatever spikeforge is importable, write JSON
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--lanes", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        lanes = [int(v) for v in args.lanes.split(",")]
        out = measure(args.measure, args.images, lanes if len(lanes) > 1 else lanes[0],
                      args.work)
        args.json.write_text(json.dumps(out))
        return
    if not (args.run / "weights.sfimg").exists():
        raise SystemExit(f"{args.run}/weights.sfimg is missing: run `make run` (or "
                         f"`spikeforge run --out {args.run}`) first")
    print(f"# spikeforge engine benchmark (python {sys.version.split()[0]}, "
          f"torch {torch.__version__})\n")
    table_compare(args.run, args.images, args.before or None, args.before_lanes)
    if not args.no_synth:
        table_synth(args.run)


if __name__ == "__main__":
    main()
