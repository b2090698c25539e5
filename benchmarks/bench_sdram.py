"""What an fc layer's weights streamed from the ULX3S's SDRAM cost in cycles.

    .venv/bin/python benchmarks/bench_sdram.py [--events 200] [--mhz 50]

For each case a :class:`~spikeforge.hw.weightstream.WeightStreamer` and an
:class:`~spikeforge.hw.sdram.SdramController` run in the Amaranth simulator
against the chip model (:class:`~spikeforge.hw.sdram.SdramModel`, which
checks every command's timing), on the ULX3S's geometry and datasheet
timing (power-up wait included in the simulation, not in the figures).  The
events are random input neurons, back to back; the core's side takes every
weight word at once, so the figure is what the SDRAM can deliver: cycles per
event against the ``G * k`` words it needs (``G`` lane groups, ``k`` SDRAM
words a weight word) and against the block-RAM core's ``G`` cycles.  The
ConvSNN 48-48's fc layer (2,352 inputs, 128 outputs, 8-bit weights) is the
case that needs it: its weights take 147 of the ECP5-85F's 208 blocks.
"""

from __future__ import annotations

import argparse
import random
import sys

import torch
from amaranth import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from spikeforge.config import LayerKind, LayerSpec, NetworkSpec
from spikeforge.hw.network import core_params
from spikeforge.hw.sdram import ULX3S_SDRAM, SdramController, SdramModel, SdramTiming
from spikeforge.hw.weightstream import WeightStreamer
from spikeforge.sw.golden import IntLayer, IntNetwork


class _Bench(Elaboratable):
    def __init__(self, cp, freq):
        self.ws = WeightStreamer(cp, ULX3S_SDRAM, 0, 20, 64)
        self.ctl = SdramController(freq)

    def elaborate(self, platform):
        m = Module()
        m.submodules.ws, m.submodules.ctl = self.ws, self.ctl
        wiring.connect(m, self.ws.sdram, self.ctl.cmd)
        wiring.connect(m, self.ctl.rdata, self.ws.rdata)
        m.d.comb += [self.ws.o_events.ready.eq(1), self.ws.w_words.ready.eq(1)]
        return m


def _fc(c_in: int, c_out: int, P: int, bits: int = 8):
    spec = LayerSpec(LayerKind.FC, c_in, c_out, (1, 1))
    zero = torch.zeros(c_out, dtype=torch.int64)
    layer = IntLayer(spec, torch.zeros(c_out, c_in, 1, 1, dtype=torch.int64), zero, zero + 1,
                     zero, (1,), bits, 16, 32, 1)
    net = IntNetwork(NetworkSpec("fc", (c_in, 1, 1), 4, (spec,), c_out), (layer,))
    return core_params(net, P)[0]


def measure(c_in: int, c_out: int, P: int, events: int, freq: float, seed: int = 0) -> dict:
    cp = _fc(c_in, c_out, P)
    dut = _Bench(cp, freq)
    timing = SdramTiming()
    model = SdramModel(ULX3S_SDRAM, timing.cycles(freq))
    rng = random.Random(seed)
    cs = [rng.randrange(c_in) for _ in range(events)]
    k, G = dut.ws.k, cp.groups
    marks = {}

    async def source(ctx):
        i = dut.ws.i_events
        await ctx.tick().until(dut.ctl.ready)
        marks["start"] = model.n
        for c in cs:
            ctx.set(i.payload, {"channel": c, "y": 0, "x": 0, "shift": 0, "last": 0, "mask": 0})
            ctx.set(i.valid, 1)
            await ctx.tick().until(i.ready)
        ctx.set(i.valid, 0)

    async def sink(ctx):
        got = 0
        async for _, _, valid in ctx.tick().sample(dut.ws.w_words.valid):
            got += valid
            if got == events * G:
                marks["end"] = model.n
                return

    sim = Simulator(dut)
    sim.add_clock(1 / freq)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(model.testbench(dut.ctl.pins), background=True)
    sim.run()
    cycles = marks["end"] - marks["start"]
    return {"G": G, "k": k, "cycles": cycles, "per_event": cycles / events,
            "words": events * G * k, "refreshes": model.refreshes,
            "activates": model.commands["ACTIVE"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--mhz", type=float, default=50.0)
    args = ap.parse_args(argv)
    freq = args.mhz * 1e6
    cases = [("ConvSNN 48-48 fc 2352-128, P 2", 2352, 128, 2),
             ("same, P 4 (two SDRAM words a weight word)", 2352, 128, 4),
             ("same, P 1 (a word a weight)", 2352, 128, 1),
             ("default fc 1568-64, P 8", 1568, 64, 8)]
    print(f"## fc weights from the ULX3S SDRAM: {args.events} random events back to back at "
          f"{args.mhz:g} MHz (chip model: ULX3S geometry, datasheet timing)\n")
    print(f"{'case':<44} {'G':>4} {'k':>2} {'words/ev':>8} {'cycles/ev':>9} {'BRAM/ev':>7} "
          f"{'ratio':>6} {'ACT':>5} {'REF':>4}")
    for name, c_in, c_out, P in cases:
        r = measure(c_in, c_out, P, args.events, freq)
        print(f"{name:<44} {r['G']:>4} {r['k']:>2} {r['G'] * r['k']:>8} {r['per_event']:9.1f} "
              f"{r['G']:>7} {r['per_event'] / r['G']:6.2f} {r['activates']:>5} "
              f"{r['refreshes']:>4}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
