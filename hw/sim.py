"""Run a :class:`~spikeforge.hw.network.NetworkTop` in Amaranth's simulator.

Per inference: pulse ``start``, wait for the clear pass, feed the input
events (optionally with random idle cycles between them), capture every
layer's output tap until ``done``, then read the readout and the counters.
Several inferences run back to back in one simulation (state cleared by
``start`` each time).  Used by the tests and by ``benchmarks/bench_engine.py``;
the Verilator flow in ``sim/`` drives the same ports.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from amaranth import Value
from amaranth.sim import Simulator

from .layer import PERF_FIELDS
from .network import Event, NetworkTop, beat_spikes

__all__ = ["SimResult", "simulate", "simulate_many", "SimTimeout", "event_payload"]


class SimTimeout(AssertionError):
    """The design did not finish within the cycle budget (a hang)."""


@dataclass
class SimResult:
    spikes: list[list[list[tuple[int, int, int]]]]  # [layer][step] -> (channel, y, x)
    marker_cycles: list[list[int]]                  # [layer][step] -> cycle of its marker
    counts: list[int]
    scores: list[int]
    prediction: int
    cycles: int                                     # the top's own counter
    perf: list[dict[str, int]]
    sim_cycles: int                                 # cycles from start to done


def event_payload(ev: Event) -> dict:
    """The ``events`` port's payload for input beat ``ev``."""
    return {"channel": ev.channel, "y": ev.y, "x": ev.x, "shift": ev.shift,
            "last": int(ev.last), "mask": ev.mask}


def simulate(top: NetworkTop, events: list[Event], **kw) -> SimResult:
    """Simulate one inference of ``top`` on ``events`` (see :func:`simulate_many`)."""
    return simulate_many(top, [events], **kw)[0]


def simulate_many(top: NetworkTop, inferences: list[list[Event]], *, seed: int | None = None,
                  idle: float = 0.0, max_cycles: int = 2_000_000, vcd: str | None = None,
                  writes: list[tuple[int, int, int]] = (), background=()) -> list[SimResult]:
    """Simulate one inference per entry of ``inferences`` (each a list of beats
    from :func:`~spikeforge.hw.network.input_events`), back to back.

    ``idle``: probability of an idle cycle before each input beat (random
    source pauses, from ``seed``).  ``writes``: ``(select, addr, data)``
    memory writes sent through ``mem_write`` before the first ``start``.
    ``background``: further testbenches that run alongside (an SDRAM chip's
    model: :class:`~spikeforge.hw.sdram.SdramModel`).
    ``max_cycles``: per inference; beyond it :class:`SimTimeout` is raised.
    """
    fmt = top.fmt
    n_layers = len(top.cores)
    T = top.net.spec.timesteps
    rng = random.Random(seed)
    w = fmt.width
    mask = (1 << w) - 1
    tap_raw = Value.cast(top.tap)
    cycle = [0]
    cap = {}
    results = []

    def fresh():
        cap["spikes"] = [[[] for _ in range(T)] for _ in range(n_layers)]
        cap["markers"] = [[] for _ in range(n_layers)]
        cap["step"] = [0] * n_layers

    fresh()

    async def capture(ctx):
        async for _, _, tv, tp in ctx.tick().sample(top.tap_valid, tap_raw):
            cycle[0] += 1
            if tv:
                for i in range(n_layers):
                    if tv >> i & 1:
                        c, y, x, _, last, wm = fmt.unpack(tp >> (i * w) & mask)
                        step = cap["step"]
                        if last:
                            cap["markers"][i].append(cycle[0])
                            step[i] += 1
                        elif step[i] < T:
                            cap["spikes"][i][step[i]] += beat_spikes(top.params[i], c, y, x, wm)
                        else:
                            raise AssertionError(f"layer {i}: spike after the last step")

    async def bench(ctx):
        for sel, addr, word in writes:
            ctx.set(top.mem_write.payload, {"select": sel, "addr": addr, "data": word})
            ctx.set(top.mem_write.valid, 1)
            await ctx.tick().until(top.mem_write.ready)
        ctx.set(top.mem_write.valid, 0)
        for events in inferences:
            ctx.set(top.start, 1)
            await ctx.tick()
            ctx.set(top.start, 0)
            fresh()
            start = cycle[0]
            await ctx.tick()
            while ctx.get(top.clearing):
                await ctx.tick()
            for ev in events:
                while idle and rng.random() < idle:
                    await ctx.tick()
                ctx.set(top.events.payload, event_payload(ev))
                ctx.set(top.events.valid, 1)
                await ctx.tick().until(top.events.ready)
                ctx.set(top.events.valid, 0)
                if cycle[0] - start > max_cycles:
                    raise SimTimeout(f"input not taken after {max_cycles} cycles")
            while not ctx.get(top.done):
                await ctx.tick()
                if cycle[0] - start > max_cycles:
                    raise SimTimeout(f"no done after {max_cycles} cycles; markers seen per "
                                     f"layer {[len(mk) for mk in cap['markers']]}")
            await ctx.tick()
            perf = [{f: int(getattr(ctx.get(top.perf[i]), f)) for f in PERF_FIELDS}
                    for i in range(n_layers)]
            results.append(SimResult(
                cap["spikes"], [[c - start for c in mk] for mk in cap["markers"]],
                [int(v) for v in ctx.get(top.counts)], [int(v) for v in ctx.get(top.scores)],
                ctx.get(top.prediction), ctx.get(top.cycles), perf, cycle[0] - start))

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_process(capture)
    sim.add_testbench(bench)
    for tb in background:
        sim.add_testbench(tb, background=True)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return results
