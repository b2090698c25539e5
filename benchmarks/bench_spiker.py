"""Spiker+'s own network on our flow: the 784-128-10 LIF MLP on mnist5k, planned
for the ULX3S, verified under Verilator and (``--build``) built, against the
figures the Spiker+ paper reports for it on a Zynq-7020.

    .venv/bin/python benchmarks/bench_spiker.py            # plan + verify (minutes)
    .venv/bin/python benchmarks/bench_spiker.py --build    # + the ULX3S bitstream

The run folder is runs/spiker (trained once: `spikeforge run` resumes).  The
latency of an image is measured alone in the engine (``first_image_cycles``
of the co-simulation, from its first input beat to its result), divided by
the clock: the planner's predicted Fmax, and with ``--build`` nextpnr's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SF = str(Path(sys.executable).parent / "spikeforge")

#: Spiker+'s figures for this network (as quoted in the project's issue 13)
SPIKER = {"latency_us": 780.0, "logic_cells": 7612, "bram": 18, "device": "Zynq-7020"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "spiker")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--timesteps", type=int, default=5)
    ap.add_argument("--build", action="store_true", help="also build the ULX3S bitstream")
    args = ap.parse_args(argv)
    run = args.out
    subprocess.run([SF, "run", "-q", "--out", str(run), "--set", "channels=[]", "--set",
                    "hidden=128", "--timesteps", str(args.timesteps), "--epochs",
                    str(args.epochs),
                    # the recipe of the README's row (commit aceaf72's default), not
                    # today's, which was tuned for the conv network
                    "--loss", "mse", "--lr", "5e-4", "--rate-penalty", "0",
                    "--penalty-warmup", "0", "--ema", "0"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    plan = json.loads((run / "plan.json").read_text())
    sim = json.loads((run / "sim.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    ch = plan["chosen"]
    alone = sim["first_image_cycles"]
    rows = [("network", "784-128-10 LIF, mnist5k", "784-128-10 LIF, MNIST"),
            ("device", "ECP5-85F (ULX3S)", SPIKER["device"]),
            ("accuracy (int8 golden / RTL on 200)",
             f"{100 * metrics['int_accuracy']:.1f} % / {100 * sim['rtl_accuracy']:.1f} %",
             "-"),
            ("lanes (planner)", str(plan["lanes"]), "-"),
            ("cycles for an image alone / between images",
             f"{alone} / {sim['interval_cycles']:.0f}", "-"),
            ("predicted: cells / BRAM / Fmax",
             f"{ch['cells']} / {ch['bram']} / {ch['fmax_mhz']:.1f} MHz", "-"),
            ("latency at the predicted Fmax", f"{alone / ch['fmax_mhz']:.1f} us",
             f"{SPIKER['latency_us']:.0f} us")]
    if args.build:
        subprocess.run([SF, "build", str(run), "--board", "ulx3s"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        rep = json.loads((run / "build" / "ulx3s" / "report.json").read_text())
        rows += [("built: LUT4 cells / FF / EBR", f"{rep['lut']} / {rep['ff']} / {rep['bram']}",
                  f"{SPIKER['logic_cells']} LC / - / {SPIKER['bram']}"),
                 ("built: Fmax, latency alone", f"{rep['fmax_mhz']:.1f} MHz, "
                  f"{alone / rep['fmax_mhz']:.1f} us", f"{SPIKER['latency_us']:.0f} us"),
                 ("built: inferences/s back to back at Fmax",
                  f"{rep['fmax_mhz'] * 1e6 / sim['interval_cycles']:.0f}", "-"),
                 ("build time", f"{rep['build_seconds']:.0f} s", "-")]
    w = max(len(r[0]) for r in rows)
    print(f"{'':<{w}}  {'spikeforge':<32} Spiker+ (paper)")
    for name, ours, theirs in rows:
        print(f"{name:<{w}}  {ours:<32} {theirs}")


if __name__ == "__main__":
    main()
