"""Placement spread: a finished build's netlist placed and routed again under
other nextpnr seeds, side by side.

    python benchmarks/placement_spread.py BUILD [--seeds default,1,2,3] [--jobs 2]
        [--out DIR] [--timeout-min 45] [--extra "NEXTPNR OPTIONS"] [--sdf]

``BUILD`` is the folder of a finished ``spikeforge build`` (``top.json``,
``top.lpf`` or ``top.pcf``, ``build_top.sh``, ``top.report.json``).  Each seed
reruns nextpnr alone on the build's own netlist, with the build's own command
line plus ``--seed N`` (``default``: none, nextpnr's own seed; no Yosys, no
bitstream: ``--textcfg`` / ``--asc`` and ``--sdf`` are left out), in
``OUT/seedN`` (``--extra``: more nextpnr options for every seed, e.g. a
placer's; they show in the table's command line; ``--sdf``: each seed's
``top.sdf`` too, for ``benchmarks/slack_report.py OUT/seedN``).  nextpnr is
deterministic, so a seed's figure is that
netlist's under that seed's placement and routing order (a build made
without ``--seed`` comes out again under ``default``): the spread over seeds
is how far one netlist's Fmax moves without any change to it, the yardstick
a change to the engine must beat before its own build says anything.

The table: the build itself first (its seed, ``report.json``'s
``nextpnr_seed``; nextpnr's default when none), then each seed: nextpnr's
estimate after placement, the routed Fmax, router2's iterations (and its
overused wires where it was stopped by ``--timeout-min``), minutes.  Exit
status 1 when a seed's nextpnr failed.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from spikeforge import toolchain

#: options whose output a spread does not need (the bitstream's text, the SDF)
_DROP = ("--textcfg", "--asc", "--sdf")


def nextpnr_command(build: Path) -> tuple[str, list[str]]:
    """The tool variable and the arguments of the nextpnr line of ``build``'s
    ``build_top.sh``, without :data:`_DROP` and any ``--seed``."""
    script = build / "build_top.sh"
    try:
        lines = script.read_text().splitlines()
    except OSError as e:
        raise SystemExit(f"error: {build}: not a finished build ({e})")
    for line in lines:
        words = shlex.split(line)
        if words and words[0] in ("$NEXTPNR_ECP5", "$NEXTPNR_ICE40"):
            var = words[0][1:]
            args, rest = [], iter(words[1:])
            for w in rest:
                if w in _DROP or w == "--seed":
                    next(rest, None)
                else:
                    args.append(w)
            return var, args
    raise SystemExit(f"error: {script}: no nextpnr line")


def tim_figures(tim: Path) -> dict:
    """From a nextpnr log: the Fmax estimate after placement (the slowest
    clock's), router2's last iteration and its overused wires then."""
    text = tim.read_text(errors="replace") if tim.exists() else ""
    # the log up to the router's start (router2's or router1's)
    start = re.search(r"^Info: (Running router|Routing\.\.)", text, re.M)
    placed = text[:start.start()] if start else ""
    mhz = [float(x) for x in re.findall(r"Max frequency for clock [^:]*: ([\d.]+) MHz", placed)]
    iters = re.findall(r"iter=(\d+) wires=\d+ overused=(\d+)", text)
    return {"placed_mhz": min(mhz) if mhz else None,
            "iterations": int(iters[-1][0]) if iters else 0,
            "overused": int(iters[-1][1]) if iters else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--seeds", default="1,2,3",
                    help="comma-separated nextpnr seeds; 'default': nextpnr's own (no --seed)")
    ap.add_argument("--jobs", type=int, default=2, help="nextpnr runs at once")
    ap.add_argument("--out", type=Path, default=None, help="default: BUILD/spread")
    ap.add_argument("--timeout-min", type=float, default=45.0,
                    help="stop a seed's nextpnr after this long (router2 may not converge)")
    ap.add_argument("--sdf", action="store_true",
                    help="write each seed's top.sdf (benchmarks/slack_report.py reads it)")
    ap.add_argument("--extra", default="",
                    help="nextpnr options added to every seed's run, e.g. "
                         "'--placer-heap-beta 0.7' (use --out to keep runs apart; one word "
                         "alone as --extra=--tmg-ripup)")
    args = ap.parse_args(argv)
    try:
        seeds = [s.strip() if s.strip() == "default" else int(s)
                 for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds: integers separated by commas, not {args.seeds!r}")
    if not seeds or args.jobs < 1:
        ap.error("at least one seed and one job")
    if len(set(seeds)) != len(seeds):
        ap.error(f"--seeds: each seed once, not {args.seeds!r}")
    build = args.build
    var, nargs = nextpnr_command(build)
    try:
        extra = shlex.split(args.extra)
    except ValueError as e:
        ap.error(f"--extra: {e}")
    if any(w.split("=")[0] == "--seed" for w in extra):
        ap.error("--extra: give seeds with --seeds")
    if args.sdf and "--sdf" in extra:
        ap.error("--extra: --sdf is the script's own option")
    for opt in (w.split("=")[0] for w in extra if w.startswith("--")):
        for i in [i for i, w in enumerate(nargs) if w.split("=")[0] == opt][::-1]:
            # the build's own value gives way to --extra's
            takes = "=" not in nargs[i] and i + 1 < len(nargs) and not nargs[i + 1].startswith("--")
            del nargs[i:i + 1 + takes]
    nargs += extra + (["--sdf", "top.sdf"] if args.sdf else [])
    try:
        report = json.loads((build / "report.json").read_text())
    except (OSError, ValueError):
        report = {}
    # the netlist and the constraints: what nextpnr reads (its report and
    # log are outputs, written afresh in each seed's folder)
    inputs = [v for o, v in zip(nargs, nargs[1:]) if o in ("--json", "--lpf", "--pcf")]
    missing = [f for f in inputs if not (build / f).is_file()]
    if missing or not inputs:
        what = ", ".join(missing) or "netlist"
        raise SystemExit(f"error: {build}: not a finished build (no {what})")
    out = args.out or build / "spread"
    try:
        tool = toolchain.require(var)
    except toolchain.ToolchainError as e:
        raise SystemExit(f"error: {e}")

    pending = list(seeds)
    running: dict[int | str, tuple[subprocess.Popen, float, Path]] = {}
    rows, failed = {}, False
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            d = out / f"seed{seed}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            for f in inputs:   # YoWASP tools see their working directory only
                shutil.copy(build / f, d / f)
            seeding = [] if seed == "default" else ["--seed", str(seed)]
            with open(d / "nextpnr.log", "w") as log:
                proc = subprocess.Popen([tool, *nargs, *seeding], cwd=d, stdout=log,
                                        stderr=subprocess.STDOUT)
            running[seed] = (proc, time.perf_counter(), d)
        time.sleep(2)
        for seed, (proc, t0, d) in list(running.items()):
            minutes = (time.perf_counter() - t0) / 60
            code = proc.poll()
            if code is None and minutes < args.timeout_min:
                continue
            if code is None:
                proc.kill()
                proc.wait()
            del running[seed]
            figs = tim_figures(d / "top.tim")
            figs["routed_mhz"] = None   # no report (nextpnr writes it last): not routed
            if code == 0:   # the routed Fmax as the build reads it: its slowest clock's
                try:
                    clocks = json.loads((d / "top.report.json").read_text())["fmax"].values()
                    figs["routed_mhz"] = min(c["achieved"] for c in clocks)
                except (OSError, ValueError, KeyError):
                    pass
            if code not in (None, 0):
                failed = True
            rows[seed] = {**figs, "minutes": minutes, "stopped": code is None, "exit": code}

    print(f"{build}: {var} {' '.join(nargs)}")
    print(f"{'seed':>8} {'placed MHz':>11} {'routed MHz':>11} {'router2 it':>11} {'min':>6}")
    own = tim_figures(build / "top.tim")
    fmax = report.get("fmax_mhz")
    own_seed = report.get("nextpnr_seed")
    print(f"{'default' if own_seed is None else own_seed:>8} {own['placed_mhz'] or 0:>11.2f} "
          f"{fmax or 0:>11.2f} {own['iterations']:>11d} {'':>6}  (the build)")
    done = []
    for seed in seeds:
        r = rows[seed]
        if r["routed_mhz"] is not None:
            done.append(r["routed_mhz"])
            routed = f"{r['routed_mhz']:>11.2f}"
        elif r["stopped"]:
            routed = f"{'stopped':>11}"
        else:
            routed = f"{'failed':>11}"
        note = (f"  ({r['overused']} overused wires when stopped)" if r["stopped"]
                else f"  (nextpnr exit {r['exit']}: {out}/seed{seed}/nextpnr.log)" if r["exit"]
                else "")
        print(f"{seed:>8} {r['placed_mhz'] or 0:>11.2f} {routed} {r['iterations']:>11d} "
              f"{r['minutes']:>6.1f}{note}")
    if done:
        print(f"routed over {len(done)} seed(s): {min(done):.2f} .. {max(done):.2f} MHz, "
              f"mean {sum(done) / len(done):.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
