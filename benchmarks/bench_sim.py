"""Simulation speed: Verilator (through cocotb) against Amaranth's own simulator
on the same network and the same image, plus the golden model's speed.

    .venv/bin/python benchmarks/bench_sim.py [RUN] [--lanes P] [--images N]

RUN: a run folder with weights.sfimg (default: a random network from
hw/randnet, seed 3).  Prints cycles/s and images/s of each simulator and their
ratio; the Verilator build time is reported apart (it is paid once per network).
Both simulators produce the same spikes (checked against the golden model).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from spikeforge import image, toolchain
from spikeforge.hw.network import NetworkTop, first_mismatch, input_events
from spikeforge.hw.sim import simulate_many
from spikeforge.sim import runner
from spikeforge.sw import golden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?")
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--images", type=int, default=1, help="images for the Amaranth simulator")
    args = ap.parse_args()
    toolchain.setup()
    if args.run:
        from spikeforge.sw import data
        net, meta = image.read_image(Path(args.run) / "weights.sfimg")
        x = data.load(meta.get("dataset", "mnist5k"), seed=meta.get("seed", 0)).x_test
    else:
        from spikeforge.hw.randnet import random_frames, random_network
        net = random_network(3)
        x = torch.cat([random_frames(net, 3)] * 8)
    n_am = args.images
    n_vl = max(n_am, min(len(x), 20))
    ref = golden.run(net, x[:n_vl])

    top = NetworkTop(net, args.lanes)
    t0 = time.perf_counter()
    am = simulate_many(top, [input_events(net, x[i]) for i in range(n_am)], max_cycles=50_000_000)
    t_am = time.perf_counter() - t0
    am_cycles = sum(r.sim_cycles for r in am)
    assert all(first_mismatch(net, ref.spikes, [r.spikes for r in am][i:i + 1][0], sample=i) is None
               for i in range(n_am)), "Amaranth simulation differs from the golden model"

    with tempfile.TemporaryDirectory() as tmp:
        sb = runner.build(net, args.lanes, Path(tmp) / "build", depth=1 << 20)
        vl = runner.run(sb, x[:n_vl], Path(tmp) / "work")
        _, mm = runner.compare(net, x[:n_vl], vl)
        assert mm == [None] * n_vl, "Verilator simulation differs from the golden model"
    vl_cycles = sum(r.cycles for r in vl.images)

    t0 = time.perf_counter()
    golden.run(net, x[:n_vl])
    t_g = time.perf_counter() - t0

    print(f"network: {net.spec.name}, {len(net.layers)} layers, P = {args.lanes}, "
          f"{am_cycles / n_am:.0f} cycles per image")
    print(f"{'simulator':<22} {'images':>6} {'cycles/s':>12} {'images/s':>10}")
    rows = [("Amaranth (pysim)", n_am, am_cycles / t_am, n_am / t_am),
            ("Verilator (cocotb)", n_vl, vl_cycles / vl.wall_seconds, n_vl / vl.wall_seconds)]
    for name, n, cps, ips in rows:
        print(f"{name:<22} {n:>6} {cps:>12.4g} {ips:>10.3g}")
    print(f"{'golden model (torch)':<22} {n_vl:>6} {'-':>12} {n_vl / t_g:>10.4g}")
    print(f"Verilator / Amaranth: {rows[1][2] / rows[0][2]:.0f}x cycles/s "
          f"(Verilator build {sb.build_seconds:.0f} s, paid once per network; its wall time "
          f"includes the simulator start-up)")


if __name__ == "__main__":
    main()
