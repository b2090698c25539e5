"""Engine components against small Python models (Amaranth simulator, async
testbenches), with random ready/valid pauses on every stream.

Each Component is driven by one producer and checked by one consumer; the
reference models below are deliberately naive loops over the contract of
``sw/golden.py`` and never share code with the hardware generators.
"""

from __future__ import annotations

import dataclasses
import random
import sys

import pytest
import torch
from amaranth import *
from amaranth.back import rtlil
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from spikeforge.config import LayerKind, LayerSpec, NetworkSpec, NeuronKind, NeuronSpec, Reset
from spikeforge.hw.arith import const_mul, decay, saturate
from spikeforge.hw.fit import DEVICES, FitError, check_fit, device_plan, memory_plan
from spikeforge.hw.layer import LayerCore
from spikeforge.hw.network import NetworkTop, first_mismatch
from spikeforge.hw.neuron import NeuronUnit
from spikeforge.hw.params import CoreParams, EngineError
from spikeforge.hw.randnet import int_layer, random_int_layer, random_network
from spikeforge.hw.streams import EventFIFO, EventFormat
from spikeforge.hw.synapse import SynapseUnit
from spikeforge.image import neuron_words, weight_words
from spikeforge.sw import golden
from spikeforge.sw.golden import IntNetwork

FMT = EventFormat(channel_bits=8, y_bits=4, x_bits=4, shift_bits=2)


# --------------------------------------------------------------------------- helpers


async def stream_put(ctx, stream, payload, rng=None, idle=0.0):
    """Send one beat, after random idle cycles (valid low) with probability ``idle``."""
    while rng is not None and rng.random() < idle:
        await ctx.tick()
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, rng=None, stall=0.0):
    """Receive one beat, holding ready low with probability ``stall`` per cycle."""
    while True:
        ready = not (rng is not None and rng.random() < stall)
        ctx.set(stream.ready, ready)
        payload, valid = (await ctx.tick().sample(stream.payload, stream.valid))[2:]
        if ready and valid:
            ctx.set(stream.ready, 0)
            return payload


def run_sim(dut, *benches, processes=(), deadline=200_000):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for b in benches:
        sim.add_testbench(b)
    for p in processes:
        sim.add_process(p)
    steps = 0
    while sim.advance():  # until the testbenches finish; a hang fails instead of spinning
        steps += 1
        assert steps < 4 * deadline, f"simulation still running after ~{deadline} cycles"


def ev(fmt_payload):
    return (int(fmt_payload.channel), int(fmt_payload.y), int(fmt_payload.x),
            int(fmt_payload.last))


def make_layer(seed, kind, c_in, size, c_out, k=1, pad=0, pool=1, input_bits=1,
               reset=Reset.ZERO, shifts=(1,), state_bits=None, neuron=NeuronKind.LIF,
               strict=False):
    """A random IntLayer (weights, bias, theta) of the given geometry."""
    gen = torch.Generator().manual_seed(seed)
    ns = NeuronSpec(neuron, reset=reset, strict=strict)
    if kind is LayerKind.FC:
        spec = LayerSpec(LayerKind.FC, c_in, c_out, (1, 1), neuron=ns)
    else:
        spec = LayerSpec(LayerKind.CONV, c_in, c_out, size, kernel=k, padding=pad, pool=pool,
                         neuron=ns)
    wb = 6
    w = torch.randint(-32, 32, (c_out, spec.in_channels, spec.kernel, spec.kernel), generator=gen)
    sb = state_bits or 10
    theta = torch.randint(1, 1 << (sb - 2), (c_out,), generator=gen)
    bias = torch.randint(-20, 21, (c_out,), generator=gen)
    return int_layer(spec, w, bias, theta, shifts, wb, sb, input_bits)


def core_params(layer, P, in_shape, fault=None):
    return CoreParams.build(0, layer, in_shape, P, FMT, fault)


# --------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("k", [0, 1, 2, 3, 7, 9, 12, 25, 96, 255, 1000])
def test_const_mul_is_a_product_without_multiplier(k):
    a = Signal(10)
    out = Signal(24)
    m = Module()
    m.d.comb += out.eq(const_mul(a, k))
    text = rtlil.convert(m, ports=[a, out])
    assert "$mul" not in text

    async def bench(ctx):
        for v in [0, 1, 5, 511, 1023, 700]:
            ctx.set(a, v)
            assert ctx.get(out) == v * k

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("shifts", [(), (1,), (3, 4), (2, 5, 7), (4, 12)])
def test_decay_and_saturate_match_golden(shifts):
    u = Signal(signed(8))
    d = Signal(signed(12))
    s = Signal(signed(5))
    m = Module()
    m.d.comb += [d.eq(decay(u, shifts)), s.eq(saturate(u, 5))]
    values = list(range(-128, 128))
    want_d = golden.decay(torch.tensor(values), shifts).tolist()
    want_s = golden.saturate(torch.tensor(values), 5).tolist()

    async def bench(ctx):
        for v, wd, ws in zip(values, want_d, want_s):
            ctx.set(u, v)
            assert (ctx.get(d), ctx.get(s)) == (wd, ws), v

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


# --------------------------------------------------------------------------- EventFIFO


@pytest.mark.parametrize("seed,depth,idle,stall", [(1, 2, 0.0, 0.0), (2, 4, 0.5, 0.5),
                                                   (3, 8, 0.1, 0.7), (4, 3, 0.7, 0.1)])
def test_event_fifo_keeps_order_under_pauses(seed, depth, idle, stall):
    dut = EventFIFO(FMT, depth)
    rng = random.Random(seed)
    beats = [{"channel": rng.randrange(256), "y": rng.randrange(16), "x": rng.randrange(16),
              "shift": rng.randrange(4), "last": rng.randrange(2)} for _ in range(60)]
    got = []

    async def producer(ctx):
        prng = random.Random(seed + 1)
        for b in beats:
            await stream_put(ctx, dut.w, b, prng, idle)

    async def consumer(ctx):
        crng = random.Random(seed + 2)
        for _ in beats:
            p = await stream_get(ctx, dut.r, crng, stall)
            got.append({f: int(getattr(p, f)) for f in ("channel", "y", "x", "shift", "last")})

    run_sim(dut, producer, consumer)
    assert got == beats


def test_event_format_packs_like_the_layout():
    fmt = EventFormat(5, 3, 4, 2, 6)
    word = fmt.pack(channel=17, y=5, x=9, shift=3, last=1, mask=0b101101)
    assert fmt.unpack(word) == (17, 5, 9, 3, 1, 0b101101)
    v = Signal(fmt.layout)
    assert len(Value.cast(v)) == fmt.width == 5 + 3 + 4 + 2 + 1 + 6
    v = Signal(fmt.layout, init={"channel": 17, "y": 5, "x": 9, "shift": 3, "last": 1,
                                 "mask": 0b101101})
    assert v.as_value().init == word
    with pytest.raises(ValueError, match=r"^channel: 32 does not fit unsigned\(5\)$"):
        fmt.pack(channel=32)


# --------------------------------------------------------------------------- SynapseUnit


class SynHarness(Elaboratable):
    """SynapseUnit with its P banks and weight memory (test only: memories made
    in ``__init__`` so the testbench can read them)."""

    def __init__(self, p, weights, acc_init):
        self.syn = SynapseUnit(p)
        self.wmem = Memory(shape=unsigned(p.weight_width), depth=p.weight_depth, init=weights)
        self.banks = [Memory(shape=signed(p.cur_width), depth=p.acc_depth, init=acc_init[j])
                      for j in range(p.P)]

    def elaborate(self, platform):
        m = Module()
        syn = m.submodules.syn = self.syn
        m.submodules.wmem = self.wmem
        rd = self.wmem.read_port()
        m.d.comb += [rd.addr.eq(syn.w_addr), syn.w_data.eq(rd.data)]
        for j, bank in enumerate(self.banks):
            m.submodules[f"bank{j}"] = bank
            r, w = bank.read_port(), bank.write_port()
            m.d.sync += syn.rd_data[j].eq(r.data)   # registered, as the core does
            m.d.comb += [r.addr.eq(syn.rd_addr),
                         w.addr.eq(syn.wr_addr), w.data.eq(syn.wr_data[j]), w.en.eq(syn.wr_en)]
        return m


def wrap(v: int, bits: int) -> int:
    """``v`` as a ``bits``-bit two's complement word."""
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def synapse_model(p, layer, acc, events):
    """Naive loop: every in-bounds tap adds ``w << shift`` to lane ``j``'s word."""
    w = layer.weight.tolist()
    hw = p.hc * p.wc
    for c, y, x, shift in events:
        if p.flatten:
            _, hp, wp = p.in_shape
            cin, oy0, ox0 = (c * hp + y) * wp + x, 0, 0
        else:
            cin, oy0, ox0 = c, y + p.pad, x + p.pad
        for dy in range(p.k):
            for dx in range(p.k):
                oy, ox = oy0 - dy, ox0 - dx
                if not (0 <= oy < p.hc and 0 <= ox < p.wc):
                    continue
                for g in range(p.groups):
                    for j in range(p.P):
                        ch = g * p.P + j
                        if ch < p.c_out:
                            acc[j][g * hw + oy * p.wc + ox] += w[ch][cin][dy][dx] << shift
    return acc


SYN_CASES = [
    # id, kind, c_in, in_shape, c_out, k, pad, P, input_bits, idle
    ("conv3x3-pad1-P2-partial-group", LayerKind.CONV, 2, (2, 5, 5), 5, 3, 1, 2, 1, 0.3),
    ("conv3x3-pad2-P3", LayerKind.CONV, 3, (3, 4, 6), 3, 3, 2, 3, 1, 0.2),
    ("conv3x3-nopad-bitplanes", LayerKind.CONV, 1, (1, 6, 5), 4, 3, 0, 4, 4, 0.1),
    ("conv1x1-P1-G1-back-to-back", LayerKind.CONV, 4, (4, 3, 3), 1, 1, 0, 1, 2, 0.0),
    ("conv1x1-P1-G2-distance-2", LayerKind.CONV, 4, (4, 3, 3), 2, 1, 0, 1, 2, 0.0),
    ("fc-G1-back-to-back", LayerKind.FC, 18, (2, 3, 3), 3, 1, 0, 3, 1, 0.0),
    ("fc-G3-flatten-paused", LayerKind.FC, 18, (2, 3, 3), 7, 1, 0, 3, 3, 0.5),
]


@pytest.mark.parametrize("case", SYN_CASES, ids=[c[0] for c in SYN_CASES])
def test_synapse_unit_matches_model(case):
    name, kind, c_in, in_shape, c_out, k, pad, P, bits, idle = case
    seed = sum(map(ord, name))
    layer = make_layer(seed, kind, c_in, in_shape[1:], c_out, k, pad, input_bits=bits)
    p = core_params(layer, P, in_shape)
    rng = random.Random(seed)
    acc0 = [[rng.randrange(-500, 500) for _ in range(p.acc_depth)] for _ in range(P)]
    dut = SynHarness(p, weight_words(layer, P), acc0)
    _, h, w = in_shape
    steps = []
    for _ in range(2):
        evs = [(rng.randrange(in_shape[0]), rng.randrange(h), rng.randrange(w), rng.randrange(bits))
               for _ in range(25)]
        if "back-to-back" in name:  # the same neuron hit on consecutive cycles
            evs += [evs[0]] * 6 + [(evs[1][0], evs[0][1], evs[0][2], 0)] * 3
        steps.append(evs)
    results, hits = [], [0]

    async def monitor(ctx):
        prev = None
        async for _, _, en, addr in ctx.tick().sample(dut.syn.wr_en, dut.syn.wr_addr):
            cur = addr if en else None
            if cur is not None and cur == prev:
                hits[0] += 1
            prev = cur

    async def bench(ctx):
        prng = random.Random(seed + 1)
        for evs in steps:
            for c, y, x, s in evs:
                await stream_put(ctx, dut.syn.events,
                                 {"channel": c, "y": y, "x": x, "shift": s, "last": 0}, prng, idle)
            await stream_put(ctx, dut.syn.events, {"last": 1}, prng, idle)
            await ctx.tick().until(dut.syn.at_marker)
            results.append([[ctx.get(b.data[i]) for i in range(p.acc_depth)] for b in dut.banks])
            ctx.set(dut.syn.resume, 1)
            await ctx.tick()
            ctx.set(dut.syn.resume, 0)

    async def enable(ctx):
        ctx.set(dut.syn.enable, 1)

    run_sim(dut, enable, bench, processes=[monitor])
    acc = [row[:] for row in acc0]
    for evs, got in zip(steps, results):
        acc = synapse_model(p, layer, acc, [e for e in evs])
        # random events repeat inputs beyond a step's bound: compare modulo the word
        assert got == [[wrap(v, p.cur_width) for v in row] for row in acc]
    if "back-to-back" in name:
        assert hits[0] > 0, "no back-to-back hit on one word: forwarding not exercised"


def test_synapse_forwarding_is_needed():
    """Without forwarding the back-to-back fc case would read stale words: check
    the model itself distinguishes (the sum of repeated events is not the last)."""
    layer = make_layer(7, LayerKind.FC, 4, None, 2, input_bits=1)
    p = core_params(layer, 2, (4, 1, 1))
    acc = synapse_model(p, layer, [[0], [0]], [(1, 0, 0, 0)] * 3)
    w = layer.weight[:, 1, 0, 0].tolist()
    assert acc == [[3 * w[0]], [3 * w[1]]]


# --------------------------------------------------------------------------- NeuronUnit


class NeuHarness(Elaboratable):
    """A scan unit with its memories: ``acc_init`` the state (STEB unit: the
    accumulator) words, ``cur_init`` the NeuronUnit's current words."""

    def __init__(self, p, neurons, acc_init, unit=NeuronUnit, cur_init=None):
        self.neu = unit(p)
        self.nmem = Memory(shape=unsigned(p.neuron_width), depth=p.c_out, init=neurons)
        width = p.acc_width if p.stcb else p.state_width
        self.banks = [Memory(shape=signed(width), depth=p.acc_depth, init=acc_init[j])
                      for j in range(p.P)]
        self.cur = [Memory(shape=signed(p.cur_width), depth=p.acc_depth, init=cur_init[j])
                    for j in range(p.P)] if cur_init else []

    def elaborate(self, platform):
        m = Module()
        neu = m.submodules.neu = self.neu
        m.submodules.nmem = self.nmem
        rd = self.nmem.read_port()
        m.d.comb += [rd.addr.eq(neu.p_addr), neu.p_data.eq(rd.data)]
        # the read address and enable through registers in a core with a
        # read stage, as the layer core has them
        rd_addr, rd_en = Signal.like(neu.rd_addr), Signal(init=1)
        reads = m.d.sync if self.neu._p.read_stage else m.d.comb
        reads += [rd_addr.eq(neu.rd_addr), rd_en.eq(neu.rd_en)]
        for j, bank in enumerate(self.banks):
            m.submodules[f"bank{j}"] = bank
            r, w = bank.read_port(), bank.write_port()
            m.d.comb += [r.addr.eq(rd_addr), r.en.eq(rd_en), neu.rd_data[j].eq(r.data),
                         w.addr.eq(neu.wr_addr), w.data.eq(neu.wr_data[j]), w.en.eq(neu.wr_en)]
        for j, mem in enumerate(self.cur):
            m.submodules[f"cur{j}"] = mem
            r = mem.read_port()
            m.d.comb += [r.addr.eq(rd_addr), r.en.eq(rd_en)]
            m.d.sync += neu.cur_data[j].eq(r.data)   # registered, as the core does
        return m


def neuron_model(p, layer, acc, cur=None, final=False):
    """One scan of state ``acc`` and current ``cur``: ``(events in scan order,
    new state)``; lanes past C_out untouched."""
    half = 1 << (p.state_bits - 1)
    theta, bias = layer.theta.tolist(), layer.bias.tolist()
    ho, wo = p.out_size
    hw = p.hc * p.wc
    new = [row[:] for row in acc]
    events = []
    for g in range(p.groups):
        for py in range(ho):
            for px in range(wo):
                spikes = [0] * p.P
                for wy in range(p.pool):
                    for wx in range(p.pool):
                        a = g * hw + (py * p.pool + wy) * p.wc + px * p.pool + wx
                        for j in range(p.P):
                            ch = g * p.P + j
                            if ch >= p.c_out:
                                continue
                            c = cur[j][a] if cur else 0
                            u = max(-half, min(half - 1, acc[j][a] + c + bias[ch]))
                            o = int(u > theta[ch] if p.strict else u >= theta[ch])
                            d = u - sum(u >> s for s in p.decay_shifts)
                            if p.reset is Reset.ZERO:
                                base = 0 if o else d
                            elif p.reset is Reset.SUBTRACT:
                                base = d - theta[ch] * o
                            else:
                                base = d
                            new[j][a] = 0 if final else base
                            spikes[j] |= o
                events += [(g * p.P + j, py, px, 0) for j in range(p.P) if spikes[j]]
    events.append((0, 0, 0, 1))
    return events, new


NEU_CASES = [
    # id, kind, c_out, conv size, pool, P, reset, shifts, state_bits, stall
    ("conv-pool2-P3-partial-zero", LayerKind.CONV, 7, (4, 4), 2, 3, Reset.ZERO, (1,), 10, 0.3),
    ("conv-pool2-P1-subtract", LayerKind.CONV, 2, (2, 6), 2, 1, Reset.SUBTRACT, (3, 4), 10, 0.5),
    ("fc-P4-none-if-group-waits", LayerKind.FC, 8, None, 1, 4, Reset.NONE, (), 10, 0.2),
    ("conv-P2-saturating", LayerKind.CONV, 5, (3, 3), 1, 2, Reset.SUBTRACT, (2, 5, 7), 6, 0.2),
    ("conv-pool2-P4-queue-full", LayerKind.CONV, 6, (6, 4), 2, 4, Reset.ZERO, (4, 12), 8, 0.9),
    # neuron.strict (u > theta): the cases at u == theta below do not spike
    ("conv-pool2-P3-subtract-strict", LayerKind.CONV, 5, (4, 4), 2, 3, Reset.SUBTRACT, (2,), 10,
     0.3),
    ("fc-P2-zero-saturating-strict", LayerKind.FC, 6, None, 1, 2, Reset.ZERO, (1, 3), 6, 0.2),
    # a consumer so slow that the scan waits on the queue before most words,
    # its pipeline empty when it issues one (the last word among them: with
    # read_stage, mem_busy must count the word in the t0 stage)
    ("conv-pool2-P2-slow-consumer", LayerKind.CONV, 4, (6, 6), 2, 2, Reset.ZERO, (1,), 10, 0.97),
]


@pytest.mark.parametrize("stage", [0, 1, 2], ids=["direct", "write-stage", "read-stage"])
@pytest.mark.parametrize("case", NEU_CASES, ids=[c[0] for c in NEU_CASES])
def test_neuron_unit_matches_model(case, stage, monkeypatch):
    # stage 1: the scan's writes leave from registers (a wide core's:
    # CoreParams.write_stage), here forced on these narrow cores; stage 2:
    # also its read addresses (CoreParams.read_stage, registered by the
    # harness as by the core).  From a scan's start to its last write the
    # unit must hold ``mem_busy`` without a break (the core hands the
    # memories back on its fall)
    from spikeforge.hw import params as hw_params
    monkeypatch.setattr(hw_params, "WRITE_STAGE_BITS", 0 if stage else 1 << 20)
    monkeypatch.setattr(hw_params, "READ_STAGE_BITS", 0 if stage == 2 else 1 << 20)
    name, kind, c_out, size, pool, P, reset, shifts, sb, stall = case
    seed = sum(map(ord, name))
    layer = make_layer(seed, kind, 3, size, c_out, pool=pool, reset=reset, shifts=shifts,
                       state_bits=sb, neuron=NeuronKind.IF if not shifts else NeuronKind.LIF,
                       strict="strict" in name)
    in_shape = (3, 1, 1) if kind is LayerKind.FC else (3, *size)
    p = core_params(layer, P, in_shape)
    assert p.strict == ("strict" in name)
    assert (p.write_stage, p.read_stage) == (int(stage >= 1), int(stage == 2))
    rng = random.Random(seed)
    top = 1 << sb
    acc0 = [[rng.randrange(-top, top) for _ in range(p.acc_depth)] for _ in range(P)]
    cmax = 1 << (p.cur_width - 2)
    cur0 = [[rng.randrange(-cmax, cmax) for _ in range(p.acc_depth)] for _ in range(P)]
    for j in range(P):  # a quarter of the neurons exactly at threshold (u == theta)
        for a in range(p.acc_depth):
            ch = a // (p.hc * p.wc) * P + j
            if ch < c_out and rng.random() < 0.25:
                acc0[j][a] = int(layer.theta[ch] - layer.bias[ch]) - cur0[j][a] // 2
                cur0[j][a] -= cur0[j][a] // 2
    dut = NeuHarness(p, neuron_words(layer), acc0, cur_init=cur0)
    got, banks = [[], []], []
    finals = (False, True)  # the second scan is an image's last step: state to 0

    async def bench(ctx):
        await ctx.tick().until(~dut.neu.busy)  # the reset-time parameter fetch
        for scan in range(2):
            ctx.set(dut.neu.start, 1)
            ctx.set(dut.neu.final, finals[scan])
            await ctx.tick()
            ctx.set(dut.neu.start, 0)
            ctx.set(dut.neu.final, 0)
            await ctx.tick().until(~dut.neu.busy)
            banks.append([[ctx.get(b.data[i]) for i in range(p.acc_depth)] for b in dut.banks])

    async def consumer(ctx):
        crng = random.Random(seed + 3)
        for scan in range(2):
            while True:
                e = await stream_get(ctx, dut.neu.events, crng, stall)
                got[scan].append((int(e.channel), int(e.y), int(e.x), int(e.last)))
                if e.last:
                    break

    writes, unowned = [0], []

    async def monitor(ctx):
        released = True   # mem_busy has fallen since the last start
        async for _, _, start, en, busy in ctx.tick().sample(dut.neu.start, dut.neu.wr_en,
                                                             dut.neu.mem_busy):
            writes[0] += en
            if en and (released or not busy):
                unowned.append(writes[0])
            released = (released or not busy) and not start

    run_sim(dut, bench, consumer, processes=[monitor])
    assert writes[0] >= 2 * p.acc_depth and not unowned, unowned[:5]
    acc = acc0
    for scan in range(2):
        want, new = neuron_model(p, layer, acc, cur0, finals[scan])
        assert got[scan] == want, f"scan {scan}"
        for j in range(P):
            for a in range(p.acc_depth):
                if (a // (p.hc * p.wc)) * P + j < c_out:
                    assert banks[scan][j][a] == new[j][a], (scan, j, a)
        acc = [[banks[scan][j][a] for a in range(p.acc_depth)] for j in range(P)]


@pytest.mark.parametrize("scan_first", [False, True], ids=["after-reset", "after-a-scan"])
def test_neuron_unit_clear_zeroes_every_word(scan_first):
    """The clear pass writes zeros to every word, also right after a scan
    (its write-back registers hold the last words then: the zero select's
    copies must be on before the pass's first write)."""
    layer = make_layer(3, LayerKind.CONV, 2, (3, 5), 5)
    p = core_params(layer, 2, (2, 3, 5))
    acc0 = [[i + 7 * j + 1 for i in range(p.acc_depth)] for j in range(2)]
    dut = NeuHarness(p, neuron_words(layer), acc0)

    async def bench(ctx):
        await ctx.tick().until(~dut.neu.busy)  # the reset-time parameter fetch
        if scan_first:
            ctx.set(dut.neu.events.ready, 1)
            ctx.set(dut.neu.start, 1)
            await ctx.tick()
            ctx.set(dut.neu.start, 0)
            await ctx.tick().until(~dut.neu.mem_busy)
            assert any(ctx.get(b.data[i]) for b in dut.banks for i in range(p.acc_depth))
        ctx.set(dut.neu.clear, 1)
        await ctx.tick()
        ctx.set(dut.neu.clear, 0)
        assert ctx.get(dut.neu.mem_busy)
        await ctx.tick().until(~dut.neu.mem_busy)
        assert all(ctx.get(b.data[i]) == 0 for b in dut.banks for i in range(p.acc_depth))

    run_sim(dut, bench)


# --------------------------------------------------------------------------- StebUnit


def steb_model(p, layer, acc):
    """STCB neuron side: per pooled neuron ``y = max over the window of
    clamp((acc + bias) >> r, 0, 2**T - 1)``, then T passes of its digits."""
    T = p.timesteps
    bias, r = layer.bias.tolist(), layer.shift.tolist()
    ho, wo = p.out_size
    hw = p.hc * p.wc
    ys = {}
    for g in range(p.groups):
        for py in range(ho):
            for px in range(wo):
                for j in range(p.P):
                    ch = g * p.P + j
                    if ch >= p.c_out:
                        continue
                    y = 0
                    for wy in range(p.pool):
                        for wx in range(p.pool):
                            a = g * hw + (py * p.pool + wy) * p.wc + px * p.pool + wx
                            y = max(y, min(max((acc[j][a] + bias[ch]) >> r[ch], 0), (1 << T) - 1))
                    ys[g, py, px, j] = y
    events = []
    for t in range(T):
        events += [(g * p.P + j, py, px, 0) for (g, py, px, j), y in ys.items()
                   if y >> (T - 1 - t) & 1]
        events.append((0, 0, 0, 1))
    return events


STEB_CASES = [
    # id, c_out, conv size, pool, P, T, stall
    ("pool2-P2-T3-partial", 5, (4, 4), 2, 2, 3, 0.3),
    ("pool1-P1-T4", 2, (3, 5), 1, 1, 4, 0.5),
    ("pool2-P3-T2-queue-full", 6, (6, 4), 2, 3, 2, 0.9),
    ("fc-P4-T5", 7, None, 1, 4, 5, 0.2),
]


@pytest.mark.parametrize("case", STEB_CASES, ids=[c[0] for c in STEB_CASES])
def test_steb_unit_matches_model(case):
    from spikeforge.hw.steb import StebUnit
    name, c_out, size, pool, P, T, stall = case
    seed = sum(map(ord, name))
    gen = torch.Generator().manual_seed(seed)
    kind = LayerKind.FC if size is None else LayerKind.CONV
    layer = make_layer(seed, kind, 3, size, c_out, pool=pool, neuron=NeuronKind.STCB, shifts=())
    layer = dataclasses.replace(layer, shift=torch.randint(0, 4, (c_out,), generator=gen))
    in_shape = (3, 1, 1) if size is None else (3, *size)
    p = CoreParams.build(1, layer, in_shape, P, FMT, timesteps=T)
    rng = random.Random(seed)
    acc0 = [[rng.randrange(-60, 300) for _ in range(p.acc_depth)] for _ in range(P)]
    dut = NeuHarness(p, neuron_words(layer), acc0, unit=StebUnit)
    got = []

    async def bench(ctx):
        await ctx.tick().until(~dut.neu.busy)
        ctx.set(dut.neu.start, 1)
        await ctx.tick()
        ctx.set(dut.neu.start, 0)

    async def consumer(ctx):
        crng = random.Random(seed + 3)
        for _ in range(T):
            while True:
                e = await stream_get(ctx, dut.neu.events, crng, stall)
                got.append((int(e.channel), int(e.y), int(e.x), int(e.last)))
                if e.last:
                    break

    run_sim(dut, bench, consumer)
    assert got == steb_model(p, layer, acc0)


# --------------------------------------------------------------------------- LayerCore


CORE_CASES = [
    # id, seed, kind, c_in, size, c_out, k, pad, pool, P, bits, idle, stall
    ("conv3x3-pool2-P2", 11, LayerKind.CONV, 2, (6, 6), 3, 3, 1, 2, 2, 2, 0.3, 0.5),
    ("conv1x1-P3-bitplanes", 12, LayerKind.CONV, 1, (5, 4), 5, 1, 0, 1, 3, 3, 0.1, 0.3),
    ("fc-P2", 13, LayerKind.FC, 12, None, 5, 1, 0, 1, 2, 1, 0.4, 0.6),
    # events back to back: one neuron updated again 4, 5 and 6 cycles later
    # (the oldest writes a core forwards: 3 with a write stage, 4 with
    # select_stage too, 5 with rmw_stage; the read after them comes from the
    # memory)
    ("fc-P2-G4", 15, LayerKind.FC, 12, None, 8, 1, 0, 1, 2, 1, 0.0, 0.2),
    ("fc-P2-G5", 16, LayerKind.FC, 12, None, 10, 1, 0, 1, 2, 1, 0.0, 0.2),
    ("fc-P2-G6", 17, LayerKind.FC, 12, None, 12, 1, 0, 1, 2, 1, 0.0, 0.2),
    # one current memory: the synapse unit waits for each scan to release it
    ("conv3x3-pool2-P2-one-current", 14, LayerKind.CONV, 2, (6, 6), 3, 3, 1, 2, 2, 2, 0.1,
     0.5),
]


@pytest.mark.parametrize("reads", [0, 3], ids=["weights", "weights-pipelined"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3, 4],
                         ids=["direct", "write-stage", "read-stage", "rmw-stage",
                              "select-stage"])
@pytest.mark.parametrize("case", CORE_CASES, ids=[c[0] for c in CORE_CASES])
def test_layer_core_matches_golden_with_back_pressure(case, stage, reads, monkeypatch):
    # stage 1: the current memories' writes registered (a wide core's:
    # CoreParams.write_stage), here forced on these narrow cores; stage 2:
    # also the read addresses of the current and state memories registered
    # (CoreParams.read_stage); stage 3: also the current words registered once
    # more each way (CoreParams.rmw_stage); stage 4: stage 2 and the word
    # the synapse unit selects registered (CoreParams.select_stage); reads 3:
    # the weight memory's read pipelined (a memory of many blocks':
    # hw/memory.py read_stages), 36-bit slices each with its address copy
    _core_case(case, stage, reads, monkeypatch)


@pytest.mark.parametrize("stage", [0, 2], ids=["direct", "read-stage"])
@pytest.mark.parametrize("case", CORE_CASES[:3], ids=[c[0] for c in CORE_CASES[:3]])
def test_layer_core_with_weight_address_copies(case, stage, monkeypatch):
    # the weight memory in 1-bit columns, its read address from three
    # registers of the synapse unit (a memory of many blocks':
    # hw/memory.py addr_copies), each driving its share of the columns
    from spikeforge.hw import memory as hw_memory
    monkeypatch.setattr(hw_memory, "slice_bits", lambda width, depth, configs=None: 1)
    monkeypatch.setattr(hw_memory, "addr_copies", lambda width, depth: 3)
    _core_case(case, stage, 0, monkeypatch, copies=3)


def _core_case(case, stage, reads, monkeypatch, copies=1):
    from spikeforge.hw import memory as hw_memory
    from spikeforge.hw import params as hw_params
    monkeypatch.setattr(hw_params, "WRITE_STAGE_BITS", 0 if stage else 1 << 20)
    monkeypatch.setattr(hw_params, "READ_STAGE_BITS", 0 if stage >= 2 else 1 << 20)
    monkeypatch.setattr(hw_params, "RMW_STAGE_BITS", 0 if stage == 3 else 1 << 20)
    monkeypatch.setattr(hw_params, "SELECT_STAGE_BITS", 0 if stage == 4 else 1 << 20)
    if reads:
        monkeypatch.setattr(hw_memory, "read_stages", lambda width, depth: reads)
    name, seed, kind, c_in, size, c_out, k, pad, pool, P, bits, idle, stall = case
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    T = 4
    if kind is LayerKind.FC:
        spec = LayerSpec(LayerKind.FC, c_in, c_out, (1, 1), neuron=NeuronSpec(reset=Reset.SUBTRACT))
        in_shape = (c_in, 1, 1)
    else:
        spec = LayerSpec(LayerKind.CONV, c_in, c_out, size, kernel=k, padding=pad, pool=pool,
                         neuron=NeuronSpec(reset=Reset.ZERO))
        in_shape = (c_in, *size)
    nspec = NetworkSpec("one", in_shape, T, (spec,), spec.out_features)
    x = torch.randint(0, 256, (1, T, *in_shape), generator=gen).to(torch.uint8)
    h = golden.input_values(nspec, x, bits)
    layer = random_int_layer(rng, gen, spec, (1,), bits, h)
    net = IntNetwork(nspec, (layer,))
    ref = golden.run(net, x)
    from spikeforge.hw.network import input_events
    beats = input_events(net, x[0])
    fmt = EventFormat.for_network(net)
    from spikeforge.hw.network import core_params as net_core_params
    cp = net_core_params(net, P)[0]
    if "one-current" in name:
        cp = dataclasses.replace(cp, cur_banks=1)
    stages = (cp.write_stage, cp.read_stage, cp.rmw_stage, cp.select_stage)
    assert stages == {0: (0, 0, 0, 0), 1: (1, 0, 0, 0), 2: (1, 1, 0, 0), 3: (1, 1, 1, 1),
                      4: (1, 1, 0, 1)}[stage]
    dut = LayerCore(cp, weight_words(layer, P), neuron_words(layer))
    spikes = [[] for _ in range(T)]
    assert hw_memory.read_stages(cp.weight_width, cp.weight_depth) == reads
    assert hw_memory.addr_copies(cp.weight_width, cp.weight_depth) == copies

    async def producer(ctx):
        prng = random.Random(seed + 1)
        await ctx.tick().until(~dut.clearing)
        for b in beats:
            await stream_put(ctx, dut.i_events, {"channel": b.channel, "y": b.y, "x": b.x,
                                                 "shift": b.shift, "last": int(b.last),
                                                 "mask": b.mask},
                             prng, idle)

    async def consumer(ctx):
        crng = random.Random(seed + 2)
        for t in range(T):
            while True:
                e = await stream_get(ctx, dut.o_events, crng, stall)
                if e.last:
                    break
                spikes[t].append((int(e.channel), int(e.y), int(e.x)))
        perf = ctx.get(dut.perf)
        assert perf.events_in == sum(not b.last for b in beats)
        assert perf.events_out == sum(map(len, spikes))
        assert perf.updates <= perf.events_in * cp.taps

    run_sim(dut, producer, consumer)
    assert first_mismatch(net, ref.spikes, [spikes]) is None


@pytest.mark.parametrize("case", [CORE_CASES[0], CORE_CASES[-1]], ids=lambda c: c[0])
def test_layer_core_reads_collide_with_writes_and_stay_exact(case, monkeypatch):
    """The current memories are read, hundreds of times in a run, at the word
    their write port writes in that cycle; the simulation model returns those
    reads corrupted (hw/memory.py: read_data) and the core still equals the
    golden model: the forwarding covers every one, so board builds may leave
    the block RAM's result undefined."""
    from spikeforge.hw import layer as hw_layer
    probes, counts = [], {}
    real = hw_layer.read_data

    def probed(m, platform, rd, wr, name):
        probe = Signal(name=f"probe_{name}")
        m.d.comb += probe.eq(rd.en & wr.en.any() & (rd.addr == wr.addr))
        probes.append((name, probe))
        return real(m, platform, rd, wr, name)

    async def watch(ctx):
        async for _clk, _rst, *hits in ctx.tick().sample(*(p for _, p in probes)):
            for (name, _), hit in zip(probes, hits):
                counts[name] = counts.get(name, 0) + hit

    plain_run = run_sim

    def run_watched(dut, *benches):
        plain_run(dut, *benches, processes=[watch])

    monkeypatch.setattr(hw_layer, "read_data", probed)
    monkeypatch.setattr(sys.modules[__name__], "run_sim", run_watched)
    test_layer_core_matches_golden_with_back_pressure(case, 0, 0, monkeypatch)
    assert counts["cur0"] > 100, counts


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize("kind", ["lif", "stcb"])
def test_no_multiplier_cells_in_a_network(kind):
    from spikeforge.hw.randnet import random_stcb_network
    net = random_network(5) if kind == "lif" else random_stcb_network(5)
    text = rtlil.convert(NetworkTop(net, 2), name="top")
    assert "$mul" not in text and "$div" not in text and "$mod" not in text


@pytest.mark.slow
def test_control_copies_survive_synthesis():
    """``copies``' four registers stay four flip-flops through Yosys's ECP5
    synthesis (each drives its own loads), where four plain registers of
    the same input are merged into one: the check can fail."""
    from spikeforge import toolchain
    from spikeforge.hw.arith import COPIES, copies

    def ffs(use_copies: bool) -> int:
        m = Module()
        a, b = Signal(), Signal()
        d, q = Signal(4 * COPIES), Signal(4 * COPIES)
        if use_copies:
            regs = copies(m, a & b, "sel")
        else:
            regs = [Signal(name=f"plain{k}") for k in range(COPIES)]
            m.d.sync += [r.eq(a & b) for r in regs]
        for k, r in enumerate(regs):  # each copy enables a quarter of q
            with m.If(r):
                m.d.sync += q[4 * k:4 * k + 4].eq(d[4 * k:4 * k + 4])
        cells = toolchain.yosys_cells(rtlil.convert(m, ports=[a, b, d, q], name="top"),
                                      "synth_ecp5 -noabc9")
        return cells["TRELLIS_FF"] - len(q)

    assert ffs(True) == COPIES
    assert ffs(False) == 1


def test_params_refuse_bad_lanes_and_faults():
    layer = make_layer(1, LayerKind.CONV, 2, (4, 4), 3)
    with pytest.raises(EngineError, match=r"^layer 0: lane count P must be an integer in "
                                          r"1\.\.3 \(its output channels\), not 4$"):
        core_params(layer, 4, (2, 4, 4))
    with pytest.raises(EngineError, match=r"^layer 0: unknown fault 'x'; known: threshold, "
                                          r"decay$"):
        core_params(layer, 1, (2, 4, 4), fault="x")
    import dataclasses
    stcb = dataclasses.replace(layer, spec=dataclasses.replace(
        layer.spec, neuron=NeuronSpec(NeuronKind.STCB)))
    with pytest.raises(EngineError, match=r"^layer 0: faults are LIF/IF only$"):
        core_params(stcb, 1, (2, 4, 4), fault="threshold")


def test_fit_check_counts_blocks_and_refuses_with_names():
    net = random_network(3)
    use = check_fit(net, 2, "ecp5-85f")
    assert 0 <= use["blocks"] <= 208
    # every memory of every layer, the event FIFOs and spike queues included
    # (LUT RAM on the ECP5: no block)
    assert set(use["per_memory"]) == {
        f"L{i}_{m}" for i in range(len(net.layers))
        for m in ("weights", "neurons", "cur0", "cur1", "state", "fifo", "queue")}
    assert all(use["per_memory"][f"L{i}_{m}"] == 0 for i in range(len(net.layers))
               for m in ("fifo", "queue"))
    with pytest.raises(FitError, match=r"^unknown device 'x'; known: ecp5-85f"):
        check_fit(net, 1, "x")
    # it fits: its top builds and elaborates
    from amaranth.hdl import Fragment
    assert isinstance(Fragment.get(NetworkTop(net, 2), None), Fragment)
    # a convsnn-sized network: 48-channel 3x3 convs on 28x28 and a 2352x128 fc
    from spikeforge.sw.models import build
    from spikeforge.sw.quantize import quantize, QuantConfig
    big = quantize(build("convsnn", hidden=128, timesteps=2), QuantConfig())
    with pytest.raises(FitError, match=r"^network does not fit ice40up5k: its memories need "
                                       r"\d+ block RAMs \(4 kbit each, \d+ bits in use\), the "
                                       r"device has 30 \(122880 bits\); "
                                       r"per layer layer 0: \d+, .*largest: L\d_\w+ \(layer \d\)"
                                       r".*; SPRAM: L0_weights 2, L3_weights 2 of 4 blocks$"):
        check_fit(big, 4, "ice40up5k")
    with pytest.raises(FitError, match=r"^network does not fit ecp5-85f: .* L2_weights \(layer 2\) "
                                       r"32 bits x 75264 words = 2408448 bits -> 160 blocks"):
        check_fit(big, [4, 4, 4, 5], "ecp5-85f")


def test_spram_takes_the_largest_weights_only_when_block_ram_runs_out():
    """The iCE40's SPRAM: a 784-64-10 MLP of 4-bit weights fits the UP5K with
    layer 0's weights there (4 blocks at one lane: 4 bits x 50,176 words,
    two at two lanes: 8 x 25,088); the block RAM counts without them; a
    network that fits the EBR keeps its weights there; the ECP5 has none."""
    from spikeforge.boards.build import board_memories
    from spikeforge.hw.fit import block_count, spram_layers
    from spikeforge.sw.models import build
    from spikeforge.sw.quantize import quantize, QuantConfig
    mlp = quantize(build("convsnn", channels=[], hidden=64, timesteps=2), QuantConfig(weight_bits=4))
    board = board_memories(mlp, "icebreaker")
    for lanes, blocks, spram in (([1, 1], 22, 4), ([2, 1], 26, 2)):
        use = check_fit(mlp, lanes, "ice40up5k", board)
        assert (use["blocks"], use["spram_layers"], use["spram"]) == (blocks, [0], spram)
        assert use["per_memory"]["L0_weights"] == 0 and use["spram_available"] == 4
        assert block_count(mlp, lanes, "ice40up5k", board) == blocks
        # the same memories all in block RAM: over the 30 blocks
        assert sum(DEVICES["ice40up5k"].blocks_for(mu.width, mu.depth, mu.sliced)
                   for mu in memory_plan(mlp, lanes, board)) > 30
    assert spram_layers(mlp, [1, 1], "ecp5-85f") == ()
    small = random_network(3)
    assert spram_layers(small, 1, "ice40up5k") == ()
    assert check_fit(small, 1, "ice40up5k")["spram"] == 0


def test_ice40_small_memories_in_flip_flops_as_yosys_chooses():
    """``synth_ice40`` on Amaranth FIFOs of 8 (7 words of storage), measured
    with this project's Yosys: flip-flops up to 11 bits wide, one RAM4K at
    12-16 bits, flip-flops again at 17-20 (two blocks cost more), two
    blocks at 21-32, three at 33-48.  The spike queue of an fc layer counts
    its live bits only (an entry of 1 + 6 bits for 64 channels at one lane:
    flip-flops, as Yosys built it)."""
    from spikeforge.hw.memory import ice40_in_ffs
    ram = {w: 0 if ice40_in_ffs(w, 7) else DEVICES["ice40up5k"].blocks_for(w, 7)
           for w in (1, 4, 8, 10, 11, 12, 13, 16, 17, 20, 21, 23, 32, 33, 48)}
    assert ram == {1: 0, 4: 0, 8: 0, 10: 0, 11: 0, 12: 1, 13: 1, 16: 1, 17: 0, 20: 0,
                   21: 2, 23: 2, 32: 2, 33: 3, 48: 3}
    from spikeforge.sw.models import build
    from spikeforge.sw.quantize import quantize, QuantConfig
    mlp = quantize(build("convsnn", channels=[], hidden=64, timesteps=2), QuantConfig(weight_bits=4))
    q = {mu.name: (mu.width, mu.depth) for mu in device_plan(mlp, [1, 1], "ice40up5k")}
    assert q["L0_queue"] == (7, 10) and q["L1_queue"] == (5, 10) and q["L0_fifo"][1] == 7
    assert check_fit(mlp, [1, 1], "ice40up5k")["per_memory"]["L0_queue"] == 0


@pytest.mark.parametrize("width, depth", [(256, 3136), (16, 50176), (80, 600), (20, 300)])
def test_sliced_memory_reads_what_was_written(width, depth, monkeypatch):
    """The weight memory in column slices: the init words, then written words,
    read back whole; the slice width is the configuration holding the depth
    (deeper than all of them, 1-bit columns of stacked blocks).  A memory of 8 or more blocks read pipelined (``PIPELINE_BLOCKS`` at 8:
    off by default)."""
    from spikeforge.hw import memory as hw_memory
    from spikeforge.hw.memory import SlicedMemory, slice_bits
    monkeypatch.setattr(hw_memory, "PIPELINE_BLOCKS", 8)
    rng = random.Random(width * depth)
    init = [rng.getrandbits(width) for _ in range(depth)]
    mem = SlicedMemory(width, depth, init)
    assert mem.slice == {3136: 4, 50176: 1, 600: 18, 300: 20}[depth] == slice_bits(width, depth)
    # 64 blocks each (4-bit and 1-bit columns): the read pipelined (address
    # copies in two levels, then each slice's word registered); 5 and 1
    # blocks: not
    assert mem.latency == {3136: 4, 50176: 4, 600: 1, 300: 1}[depth]
    writes = {rng.randrange(depth): rng.getrandbits(width) for _ in range(20)}
    reads = [rng.randrange(depth) for _ in range(30)] + list(writes)
    got, streamed = [], []

    async def bench(ctx):
        for a, v in writes.items():
            ctx.set(mem.wr_addr, a)
            ctx.set(mem.wr_data, v)
            ctx.set(mem.wr_en, 1)
            await ctx.tick()
        ctx.set(mem.wr_en, 0)
        for a in reads:   # one read in flight at a time, the rest of the pipe stale
            ctx.set(mem.rd_addr, a)
            await ctx.tick().repeat(mem.latency)
            got.append(ctx.get(mem.rd_data))
        # and back to back: word i comes out latency cycles after its address
        for i, a in enumerate(reads + [0] * mem.latency):
            ctx.set(mem.rd_addr, a)
            await ctx.tick()
            if i + 1 >= mem.latency:
                streamed.append(ctx.get(mem.rd_data))

    sim = Simulator(mem)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = [writes.get(a, init[a]) for a in reads]
    assert got == want
    assert streamed[:len(reads)] == want


def test_sliced_memory_address_copies_each_read_their_slices(monkeypatch):
    """A weight memory of many blocks takes its read address from several
    registers (``rd_addrs``), each for its share of the column slices: four
    copies holding four addresses read each slice's bits at its own copy's
    address (the thresholds lowered so a 16 x 4,096 memory, four 4-bit
    columns of one block each, has them).  The default engine's layer 2
    weights, 64 x 12,544 in 64 blocks, would have four at the threshold of
    32 blocks (off by default: its builds did not route)."""
    from spikeforge.hw import memory as hw_memory
    from spikeforge.hw.memory import SlicedMemory
    assert hw_memory.addr_copies(64, 12544) == 1
    monkeypatch.setattr(hw_memory, "ADDR_COPY_BLOCKS", 32)
    assert hw_memory.addr_copies(64, 12544) == 4 and hw_memory.addr_copies(256, 600) == 1
    monkeypatch.setattr(hw_memory, "ADDR_COPY_BLOCKS", 2)
    monkeypatch.setattr(hw_memory, "BLOCKS_PER_ADDR_COPY", 1)
    rng = random.Random(5)
    init = [rng.getrandbits(16) for _ in range(4096)]
    mem = SlicedMemory(16, 4096, init)
    assert (mem.slice, mem.copies, mem.latency) == (4, 4, 1)
    addrs = [7, 1000, 2222, 4095]
    got = []

    async def bench(ctx):
        for i, a in enumerate(addrs):
            ctx.set(mem.rd_addrs[i], a)
        await ctx.tick()
        got.append(ctx.get(mem.rd_data))

    sim = Simulator(mem)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got[0] == sum(((init[a] >> (4 * k)) & 0xF) << (4 * k) for k, a in enumerate(addrs))


@pytest.mark.parametrize("platform", [None, "synthesis"])
def test_a_read_of_the_word_being_written_is_corrupted_in_simulation(platform):
    """Block RAM does not promise a read of the word its other port writes in
    the same cycle, and board builds let Yosys leave it undefined (no
    emulation logic): the simulation model returns that word inverted, kept
    while the port is idle, so a design that used it fails its co-simulation.
    Elaborated for synthesis, the port is Amaranth's own (old data)."""
    from amaranth.hdl import Fragment
    from spikeforge.hw.memory import SYNTHESIS, SlicedMemory
    mem = SlicedMemory(8, 16, list(range(100, 116)))
    dut = mem if platform is None else Fragment.get(mem, SYNTHESIS)
    got = []

    async def bench(ctx):
        ctx.set(mem.rd_addr, 3)
        await ctx.tick()
        got.append(ctx.get(mem.rd_data))           # plain read
        ctx.set(mem.wr_addr, 3)
        ctx.set(mem.wr_data, 7)
        ctx.set(mem.wr_en, 1)
        await ctx.tick()                            # read and write word 3
        ctx.set(mem.wr_en, 0)
        got.append(ctx.get(mem.rd_data))
        ctx.set(mem.wr_addr, 4)
        await ctx.tick()                            # no write: the new word
        got.append(ctx.get(mem.rd_data))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == ([103, 103 ^ 0xFF, 7] if platform is None else [103, 103, 7])


def test_fit_counts_the_weight_slices():
    """The fc weights at 32 lanes (256 bits x 3,136 words): 64 blocks of
    4096x4 as built, not the 56 of a 7-deep stack of 512x36; deeper than
    every configuration (16 bits x 50,176 words), 1-bit columns of 4 blocks
    each: 64, not the 49 of a 49-deep stack of 1024x18 (the multiplexer
    behind such a stack was an ULX3S build's critical path)."""
    from spikeforge.hw.fit import DEVICES
    dev = DEVICES["ecp5-85f"]
    assert dev.blocks_for(256, 3136) == 56
    assert dev.blocks_for(256, 3136, sliced=True) == 64
    assert dev.blocks_for(36, 512, sliced=True) == dev.blocks_for(36, 512) == 1
    assert dev.blocks_for(16, 50176) == 49
    assert dev.blocks_for(16, 50176, sliced=True) == 64


class _OneMemory(Elaboratable):
    """A ``width x depth`` memory as the cores build them (one synchronous
    read port, one write port), its ports on the top's pins; ``spram``: the
    iCE40's SPRAM weight memory."""

    def __init__(self, width: int, depth: int, spram: bool = False):
        from spikeforge.hw.memory import SlicedMemory, SpramMemory
        self.mem = (SpramMemory(width, depth) if spram else
                    SlicedMemory(width, depth, [(i * 7919) % (1 << width) for i in range(depth)]))
        self.ra, self.wa = Signal(range(depth)), Signal(range(depth))
        self.wd, self.we, self.rd = Signal(width), Signal(), Signal(width)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = self.mem
        m.d.comb += [mem.rd_addr.eq(self.ra), self.rd.eq(mem.rd_data), mem.wr_addr.eq(self.wa),
                     mem.wr_data.eq(self.wd), mem.wr_en.eq(self.we)]
        return m


@pytest.mark.slow
def test_a_memory_deeper_than_every_block_is_built_in_1_bit_columns():
    """8 bits x 20,000 words: synth_ecp5 builds the 1-bit columns of 2
    blocks each that the fit check counts (16), not a 10-deep stack of
    2048x9 (the fit check's count of the memory in one piece)."""
    top = _OneMemory(8, 20000)
    assert top.mem.slice == 1
    cells = _ecp5_cells(top)
    assert cells.get("DP16KD", 0) == DEVICES["ecp5-85f"].blocks_for(8, 20000, sliced=True) == 16
    assert DEVICES["ecp5-85f"].blocks_for(8, 20000) == 10


def _ecp5_cells(top: _OneMemory) -> dict:
    """synth_ecp5's cells of a :class:`_OneMemory`."""
    from spikeforge import toolchain
    from spikeforge.hw.memory import SYNTHESIS
    toolchain.setup()
    return toolchain.yosys_cells(rtlil.convert(top, name="top", platform=SYNTHESIS, ports=[
        top.ra, top.wa, top.wd, top.we, top.rd]), "synth_ecp5", top="top")


def _ice40_cells(design, ports) -> dict:
    from spikeforge import toolchain
    from spikeforge.hw.memory import SYNTHESIS
    toolchain.setup()
    cells = toolchain.yosys_cells(rtlil.convert(design, name="top", platform=SYNTHESIS,
                                                ports=ports), "synth_ice40", top="top")
    return {"ram": sum(n for k, n in cells.items() if k.endswith("SB_RAM40_4K")), **cells}


@pytest.mark.slow
@pytest.mark.parametrize("width", [11, 12, 20, 21, 23])
def test_the_ice40_fit_counts_an_event_fifo_as_yosys_builds_it(width):
    """An event FIFO of the iCE40 (8 deep: 7 words of storage) on either side
    of the flip-flop rule's thresholds: the fit check's blocks equal
    synth_ice40's RAM4K."""
    from amaranth.lib import fifo
    f = fifo.SyncFIFOBuffered(width=width, depth=8)
    cells = _ice40_cells(f, [f.w_data, f.w_en, f.w_rdy, f.r_data, f.r_en, f.r_rdy])
    assert DEVICES["ice40up5k"].blocks_for(width, 7) == cells["ram"], cells


@pytest.mark.slow
@pytest.mark.parametrize("width,depth", [(4, 50176), (20, 16984)])
def test_spram_memory_synthesises_to_its_blocks(width, depth):
    """synth_ice40 keeps the SPRAM instances: as many ``SB_SPRAM256KA`` as
    :func:`spram_blocks` counts, and no RAM4K."""
    from spikeforge.hw.memory import spram_blocks
    top = _OneMemory(width, depth, spram=True)
    cells = _ice40_cells(top, [top.ra, top.wa, top.wd, top.we, top.rd])
    assert cells.get("SB_SPRAM256KA") == spram_blocks(width, depth) == 4, cells
    assert cells["ram"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("width,depth", [(1024, 32), (256, 36), (512, 36), (48, 64), (56, 64)])
def test_the_fit_check_counts_the_block_ram_yosys_builds(width, depth):
    """LUT RAM or block RAM is Yosys's cost decision, not depth alone: the
    fit check's count of a shallow memory equals synth_ecp5's (each case
    sits next to the rule's threshold on one side)."""
    cells = _ecp5_cells(_OneMemory(width, depth))
    blocks = cells.get("DP16KD", 0) + cells.get("PDPW16KD", 0)
    assert DEVICES["ecp5-85f"].blocks_for(width, depth, sliced=True) == blocks, cells
    assert DEVICES["ecp5-85f"].blocks_for(width, depth) == blocks
    assert (blocks == 0) == (cells.get("TRELLIS_DPR16X4", 0) > 0)
