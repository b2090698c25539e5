"""The SDRAM controller (hw/sdram.py) against the chip model, which checks
every command's timing; and the model against hand-made violations."""

import random

import pytest
from amaranth import Elaboratable, Module
from amaranth.sim import Simulator

from spikeforge.hw.sdram import (ACTIVE, A10, MODE, NOP, PRECHARGE, READ, REFRESH, WRITE,
                                 SdramController, SdramGeometry, SdramModel, SdramTiming,
                                 SdramViolation)
from spikeforge.hw.sdram import ULX3S_SDRAM as ULX3S_SDRAM_GEOM
from test_hw_units import stream_get, stream_put

# a small chip (the same rules; rows of 16 words so that runs cross them) and
# a short power-up wait, so that a test sees several refreshes in little time
GEOM = SdramGeometry(bank_bits=2, row_bits=4, col_bits=4, width=16)
FAST = SdramTiming(t_init=2e-6, t_refi=1.5e-6, t_ref=1.6e-6, refresh_postpone=1)
FREQ = 50e6


def cycles(timing=FAST, freq=FREQ):
    return timing.cycles(freq)


def simulate(dut, beats, *, seed=0, idle=0.3, stall=0.3, timing=FAST, extra=0, log=None,
             inverted=False):
    """Drive ``beats`` ((write, addr, data) each) into ``dut`` with random
    gaps, take the read words with random stalls, the chip modelled; the
    words read, the model and the cycle count.  ``log``: a list that gets
    ``(cycle, command, bank, address)`` of every command but NOP;
    ``inverted``: the chip on the inverted clock."""
    rng = random.Random(seed)
    model = SdramModel(dut.geom, cycles(timing))
    n_reads = sum(1 for w, _, _ in beats if not w)
    got, done = [], {"cycles": 0}

    async def source(ctx):
        for w, addr, d in beats:
            await stream_put(ctx, dut.cmd, {"write": w, "addr": addr, "data": d}, rng, idle)
        for _ in range(extra):
            await ctx.tick()

    async def sink(ctx):
        for _ in range(n_reads):
            got.append(await stream_get(ctx, dut.rdata, rng, stall))

    async def count(ctx):
        while True:
            await ctx.tick()
            done["cycles"] += 1

    sim = Simulator(dut)
    sim.add_clock(1 / FREQ)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(model.testbench(dut.pins, seed, log,
                                      half_period=0.5 / FREQ if inverted else None),
                      background=True)
    sim.add_testbench(count, background=True)
    steps = 0
    while sim.advance():
        steps += 1
        assert steps < 2_000_000, "simulation still running"
    return got, model, done["cycles"]


def random_beats(rng, n, geom=GEOM, runs=True):
    """Writes then reads of random words, in runs of consecutive addresses
    (crossing rows and banks) and single words."""
    mem, beats = {}, []
    while len(beats) < n:
        start = rng.randrange(geom.words)
        for addr in range(start, min(start + (rng.randrange(1, 40) if runs else 1), geom.words)):
            if mem and rng.random() < 0.5:
                a = rng.choice(list(mem))
                beats.append((0, a, 0))
            else:
                mem[addr] = rng.getrandbits(16)
                beats.append((1, addr, mem[addr]))
    expect, seen = [], {}
    for w, a, d in beats:
        if w:
            seen[a] = d
        else:
            expect.append(seen[a])
    return beats, expect


@pytest.mark.parametrize("seed", [0, 1])
def test_controller_reads_what_it_wrote_within_the_chip_timing(seed):
    """Random writes and reads across rows and banks, random gaps and
    read stalls: every word read back equal, in order; the model raised no
    violation; the power-up sequence and refreshes went out."""
    dut = SdramController(FREQ, GEOM, FAST)
    beats, expect = random_beats(random.Random(seed), 400)
    got, model, n = simulate(dut, beats, seed=seed)
    assert got == expect
    assert model.mode_cl == 2
    assert model.commands["READ"] == len(expect)
    assert model.commands["WRITE"] == len(beats) - len(expect)
    assert model.refreshes >= n // cycles()["refi"] - 2 and model.refreshes >= 3


class IoRegistered(Elaboratable):
    """A controller with ``stages`` registers each way between its pins and
    the chip (a board's I/O flip-flops, the ULX3S's one): ``pins`` is the
    chip's side."""

    def __init__(self, stages, **kw):
        from spikeforge.hw.sdram import pin_signature
        self.ctl = SdramController(FREQ, GEOM, FAST, **kw)
        self.cmd, self.rdata, self.geom = self.ctl.cmd, self.ctl.rdata, self.ctl.geom
        self.pins = pin_signature(GEOM).create()
        self.stages = stages

    def elaborate(self, platform):
        from amaranth import Signal
        m = Module()
        m.submodules.ctl = ctl = self.ctl
        names = ("cke", "cmd", "ba", "a", "dq_o", "dq_oe", "dqm")
        init = {"cke": 1, "cmd": NOP}      # the pins' power-up levels
        cur, back = {n: getattr(ctl.pins, n) for n in names}, self.pins.dq_i
        for s in range(self.stages):
            nxt = {n: Signal(len(v), name=f"{n}_{s}", init=init.get(n, 0)) for n, v in cur.items()}
            m.d.sync += [nxt[n].eq(cur[n]) for n in names]
            cur = nxt
            b = Signal(len(back), name=f"dq_i_{s}")
            m.d.sync += b.eq(back)
            back = b
        m.d.comb += [getattr(self.pins, n).eq(cur[n]) for n in names]
        m.d.comb += ctl.pins.dq_i.eq(back)
        return m


def test_a_register_each_way_and_the_inverted_clock_are_counted_in_the_read_delay():
    """The ULX3S puts every SDRAM pin in its I/O cell's flip-flop and clocks
    the chip with the inverted clock: the controller with ``io_stages=1``
    and ``clock_inverted`` reads every word back through a register each way
    from the chip model on the inverted clock, within the chip's timing;
    the registers on the fabric's clock too; the wrong read delay for either
    reads the wrong words."""
    beats, expect = random_beats(random.Random(5), 300)
    board = IoRegistered(1, io_stages=1, clock_inverted=True)
    assert board.ctl.read_delay == board.ctl.cl + 3
    got, model, _ = simulate(board, beats, seed=5, inverted=True)
    assert got == expect and model.commands["READ"] == len(expect)
    plain = IoRegistered(1, io_stages=1)
    assert plain.ctl.read_delay == plain.ctl.cl + 4
    assert simulate(plain, beats, seed=5)[0] == expect
    assert simulate(IoRegistered(1, io_stages=1), beats, seed=5, inverted=True)[0] != expect
    assert simulate(IoRegistered(1), beats, seed=5)[0] != expect


def test_a_row_streams_a_word_a_cycle():
    """Reads of consecutive words: one READ a cycle within a row, an ACTIVE
    and a PRECHARGE a row (no stall on the consumer's side)."""
    dut = SdramController(FREQ, GEOM, FAST)
    rows = 4
    beats = [(1, a, a * 7 & 0xFFFF) for a in range(16 * rows)]
    beats += [(0, a, 0) for a in range(16 * rows)]
    log = []
    got, model, n = simulate(dut, beats, idle=0.0, stall=0.0, log=log)
    assert got == [a * 7 & 0xFFFF for a in range(16 * rows)]
    # each row opened once for its writes and once for its reads (a refresh
    # in between closes one more)
    assert 2 * rows <= model.commands["ACTIVE"] <= 2 * rows + model.refreshes
    # within a row, a READ (and a WRITE) every cycle: two of them with no
    # other command between (no row change or refresh) are a cycle apart
    for kind in (READ, WRITE):
        assert sum(cmd == kind for _, cmd, _, _ in log) == 16 * rows
        gaps = [b[0] - a[0] for a, b in zip(log, log[1:]) if a[1] == b[1] == kind]
        assert len(gaps) >= 16 * rows - rows - model.refreshes and set(gaps) == {1}, gaps


def test_a_read_fifo_of_two_is_refused():
    """A 2-word SyncFIFOBuffered would drop the second of two back-to-back
    READs' words (its memory is full a cycle after its first word)."""
    from spikeforge.errors import SpikeforgeError
    with pytest.raises(SpikeforgeError, match="read FIFO needs 3 words or more, not 2"):
        SdramController(FREQ, GEOM, FAST, read_fifo=2)


def test_cas_latency_3_and_a_deeper_read_fifo():
    dut = SdramController(FREQ, GEOM, FAST, cl=3, read_fifo=16)
    beats, expect = random_beats(random.Random(3), 200)
    got, model, _ = simulate(dut, beats, seed=3)
    assert got == expect and model.mode_cl == 3


def test_the_model_catches_a_broken_controller():
    """A controller one cycle short of tRCD, one that refreshes a third as
    often, and one that takes the read word a cycle late: each fails."""
    slow = SdramTiming(**{**FAST.__dict__, "t_rcd": 40e-9})     # 2 cycles at 50 MHz
    dut = SdramController(FREQ, GEOM, slow)
    assert dut.t["rcd"] == 2
    dut.t = {**dut.t, "rcd": 1}
    with pytest.raises(SdramViolation, match=r"(READ|WRITE) on bank \d: ACTIVE 1 cycles after, "
                                             r"2 needed"):
        simulate(dut, random_beats(random.Random(0), 60)[0], timing=slow)

    dut = SdramController(FREQ, GEOM, FAST)
    dut.t = {**dut.t, "refi": 3 * dut.t["refi"]}
    with pytest.raises(SdramViolation, match="AUTO REFRESH behind"):
        simulate(dut, random_beats(random.Random(0), 300)[0])

    late = SdramController(FREQ, GEOM, FAST, read_delay=2 + 2 + 1)   # cl + 2 is right, cl = 2
    beats, expect = random_beats(random.Random(0), 100)
    assert simulate(late, beats)[0] != expect


# ----------------------------------------------------------------- the model alone


def _nops(model, n):
    """``n`` cycles of NOP."""
    for _ in range(n):
        model.edge(1, NOP, 0, 0, 0, 0)


def _init(model, t, settle=True):
    """The power-up sequence, by hand (``settle``: and tMRD's wait after it)."""
    _nops(model, t["init"])
    model.edge(1, PRECHARGE, 0, A10, 0, 0)
    _nops(model, t["rp"] - 1)
    for _ in range(t["init_refreshes"]):
        model.edge(1, REFRESH, 0, 0, 0, 0)
        _nops(model, t["rc"] - 1)
    model.edge(1, MODE, 0, 2 << 4, 0, 0)
    _nops(model, t["mrd"] - 1 if settle else 0)


def test_model_rules():
    t = cycles(SdramTiming(t_init=1e-6), 100e6)
    g = SdramGeometry()

    def fresh():
        m = SdramModel(g, t)
        _init(m, t)
        return m

    m = SdramModel(g, t)
    with pytest.raises(SdramViolation, match="PRECHARGE after 3 power-up NOP cycles"):
        _nops(m, 3)
        m.edge(1, PRECHARGE, 0, A10, 0, 0)
    m = SdramModel(g, t)
    with pytest.raises(SdramViolation, match="ACTIVE before the power-up PRECHARGE"):
        m.edge(1, ACTIVE, 0, 0, 0, 0)
    m = fresh()
    m.edge(1, ACTIVE, 1, 5, 0, 0)
    with pytest.raises(SdramViolation, match="READ on bank 1: ACTIVE 1 cycles after, 3 needed"):
        m.edge(1, READ, 1, 0, 0, 0)
    m = fresh()
    m.edge(1, ACTIVE, 1, 5, 0, 0)
    with pytest.raises(SdramViolation, match="ACTIVE on bank 1, open at row 5"):
        m.edge(1, ACTIVE, 1, 6, 0, 0)
    m = fresh()
    with pytest.raises(SdramViolation, match="WRITE on bank 2, which is closed"):
        m.edge(1, WRITE, 2, 0, 1, 1)
    m = fresh()
    m.edge(1, ACTIVE, 0, 0, 0, 0)
    with pytest.raises(SdramViolation, match="PRECHARGE of bank 0: ACTIVE 1 cycles after, 5 needed"):
        m.edge(1, PRECHARGE, 0, A10, 0, 0)
    # write, read back CL cycles later; the bus driven by both is refused
    m = fresh()
    m.edge(1, ACTIVE, 3, 9, 0, 0)
    _nops(m, t["rcd"] - 1)
    m.edge(1, WRITE, 3, 17, 0xBEEF, 1)
    m.edge(1, READ, 3, 17, 0, 0)
    assert m.edge(1, NOP, 0, 0, 0, 0) is None
    assert m.edge(1, NOP, 0, 0, 0, 0) == 0xBEEF
    m.edge(1, READ, 3, 17, 0, 0)
    m.edge(1, NOP, 0, 0, 0, 0)
    with pytest.raises(SdramViolation, match="drives the data bus while the chip drives"):
        m.edge(1, WRITE, 3, 18, 1, 1)
    # tRP, tRC, tWR, tMRD, a refresh with a bank open, a word still to come
    m = fresh()
    m.edge(1, ACTIVE, 0, 1, 0, 0)
    _nops(m, t["ras"] - 1)
    m.edge(1, PRECHARGE, 0, A10, 0, 0)
    with pytest.raises(SdramViolation, match=r"ACTIVE: PRECHARGE 1 cycles after, 3 needed"):
        m.edge(1, ACTIVE, 0, 2, 0, 0)
    m = fresh()
    _nops(m, t["rp"])
    m.edge(1, REFRESH, 0, 0, 0, 0)
    with pytest.raises(SdramViolation, match=r"ACTIVE: AUTO REFRESH 1 cycles after, 7 needed"):
        m.edge(1, ACTIVE, 0, 2, 0, 0)
    m = fresh()
    m.edge(1, ACTIVE, 0, 1, 0, 0)
    _nops(m, t["ras"] - 2)
    m.edge(1, WRITE, 0, 3, 5, 1)
    with pytest.raises(SdramViolation, match=r"PRECHARGE of bank 0: its last WRITE 1 cycles "
                                             r"after, 3 needed"):
        m.edge(1, PRECHARGE, 0, A10, 0, 0)
    m = SdramModel(g, t)
    _init(m, t, settle=False)
    with pytest.raises(SdramViolation, match=r"ACTIVE after LOAD MODE REGISTER 1 cycles after"):
        m.edge(1, ACTIVE, 0, 0, 0, 0)
    m = fresh()
    m.edge(1, ACTIVE, 2, 1, 0, 0)
    with pytest.raises(SdramViolation, match=r"AUTO REFRESH with bank\(s\) \[2\] open"):
        m.edge(1, REFRESH, 0, 0, 0, 0)
    m = fresh()
    m.edge(1, ACTIVE, 1, 1, 0, 0)
    _nops(m, t["rcd"] - 1)
    m.edge(1, READ, 1, 4, 0, 0)
    with pytest.raises(SdramViolation, match="WRITE while a read's word is still to come"):
        m.edge(1, WRITE, 1, 5, 9, 1)
    m = fresh()
    with pytest.raises(SdramViolation, match="AUTO REFRESH behind"):
        _nops(m, t["ref"] * (t["refresh_postpone"] + 2))


def test_controller_synthesises_small_without_multipliers():
    """The ULX3S controller at 50 MHz through Yosys's ECP5 flow: a few
    hundred LUTs, its read FIFO in LUT RAM, no multiplier or block RAM
    (measured: 258 LUT4, 137 FF, 12 CCU2C, 4 TRELLIS_DPR16X4)."""
    from amaranth.back import rtlil

    from spikeforge import toolchain
    cells = toolchain.yosys_cells(rtlil.convert(SdramController(50e6), name="top"),
                                  "synth_ecp5 -abc9")
    assert cells.get("MULT18X18D", 0) == 0 and cells.get("DP16KD", 0) == 0, cells
    assert 100 < cells["LUT4"] < 400 and 80 < cells["TRELLIS_FF"] < 250, cells
    assert cells["TRELLIS_DPR16X4"] == 4, cells


# ----------------------------------------------------------------- an fc layer's weights in it


class StreamedCore(Elaboratable):
    """An fc LayerCore whose weights stream from the SDRAM: the streamer in
    front of it, the controller behind; the host's writes into the streamer."""

    def __init__(self, cp, weights, neurons, geom, base):
        from spikeforge.hw.layer import LayerCore
        from spikeforge.hw.weightstream import WeightStreamer
        self.core = LayerCore(cp, [], neurons, streamed=True)
        self.ws = WeightStreamer(cp, geom, base, self.core.addr_bits, self.core.data_bits)
        self.ctl = SdramController(FREQ, geom, FAST)
        self.i_events, self.o_events = self.ws.i_events, self.core.o_events
        self.mem_write, self.pins, self.clearing = self.ws.mem_write, self.ctl.pins, self.core.clearing

    def elaborate(self, platform):
        from spikeforge.hw.weightstream import connect_streamed
        m = Module()
        m.submodules.core, m.submodules.ws, m.submodules.ctl = self.core, self.ws, self.ctl
        connect_streamed(m, self.ws, self.ctl, self.core)
        mw = self.ws.mem_write
        m.d.comb += [self.core.mem_write.valid.eq(mw.valid & mw.ready),
                     self.core.mem_write.payload.eq(mw.payload)]
        return m


GEOM8 = SdramGeometry(bank_bits=2, row_bits=4, col_bits=5, width=8)   # an 8-bit chip


@pytest.mark.parametrize("c_in,c_out,P,bits_w,geom", [(12, 8, 2, 8, GEOM), (20, 9, 3, 6, GEOM),
                                                      (6, 5, 5, 8, GEOM), (12, 8, 2, 8, GEOM8)],
                         ids=["P2-one-word", "P3-two-words", "P5-three-words", "8-bit-chip"])
def test_fc_layer_with_weights_in_the_sdram_matches_golden(c_in, c_out, P, bits_w, geom):
    """The weights written over ``mem_write`` into the modelled chip, then
    T steps of events: every spike of every step equal to the golden
    model's, the chip's timing never broken, each event's words read once."""
    import torch

    from spikeforge.config import LayerKind, LayerSpec, NetworkSpec, NeuronSpec, Reset
    from spikeforge.hw.network import core_params, input_events
    from spikeforge.hw.randnet import random_int_layer
    from spikeforge.hw.sim import event_payload
    from spikeforge.hw.weightstream import sdram_words
    from spikeforge.image import neuron_words, weight_words
    from spikeforge.sw import golden
    from spikeforge.sw.golden import IntNetwork
    from spikeforge.hw.network import first_mismatch

    seed, T = c_in + c_out, 4
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    spec = LayerSpec(LayerKind.FC, c_in, c_out, (1, 1), neuron=NeuronSpec(reset=Reset.SUBTRACT))
    nspec = NetworkSpec("one", (c_in, 1, 1), T, (spec,), spec.out_features)
    x = torch.randint(0, 256, (1, T, c_in, 1, 1), generator=gen).to(torch.uint8)
    layer = random_int_layer(rng, gen, spec, (1,), 1, golden.input_values(nspec, x, 1))
    layer = dataclasses_replace_weights(layer, bits_w)
    net = IntNetwork(nspec, (layer,))
    ref = golden.run(net, x)
    cp = core_params(net, P)[0]
    words = weight_words(layer, P)
    base = 37                                    # not row-aligned: runs cross rows
    dut = StreamedCore(cp, words, neuron_words(layer), geom, base)
    k = sdram_words(cp, geom)
    assert k == -(-P * layer.weight_bits // geom.width) and len(words) == cp.weight_depth
    beats = input_events(net, x[0])
    model = SdramModel(geom, cycles())
    spikes = [[] for _ in range(T)]
    loaded = {"done": False}

    async def producer(ctx):
        prng = random.Random(seed + 1)
        for i, w in enumerate(words):
            await stream_put(ctx, dut.mem_write, {"which": 0, "addr": i, "data": w})
        loaded["done"] = True
        await ctx.tick().until(~dut.clearing)
        for b in beats:
            await stream_put(ctx, dut.i_events, event_payload(b), prng, 0.3)

    async def consumer(ctx):
        crng = random.Random(seed + 2)
        for t in range(T):
            while True:
                e = await stream_get(ctx, dut.o_events, crng, 0.3)
                if e.last:
                    break
                spikes[t].append((int(e.channel), int(e.y), int(e.x)))

    sim = Simulator(dut)
    sim.add_clock(1 / FREQ)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(model.testbench(dut.pins, 1), background=True)
    steps = 0
    while sim.advance():
        steps += 1
        assert steps < 4_000_000, "simulation still running"
    assert loaded["done"]
    assert first_mismatch(net, ref.spikes, [spikes]) is None
    # the weights are in the chip, word for word, where the layout says
    for i, w in enumerate(words):
        got = sum(model.mem.get(base + i * k + j, 0) << (geom.width * j) for j in range(k))
        assert got == w, i
    events = sum(not b.last for b in beats)
    assert model.commands["READ"] == events * cp.groups * k
    assert sum(map(len, spikes)) > 0


def dataclasses_replace_weights(layer, bits):
    """``layer`` with ``bits``-bit weights (random within the range)."""
    import dataclasses

    import torch
    lim = 1 << (bits - 1)
    w = torch.clamp(layer.weight, -lim, lim - 1)
    return dataclasses.replace(layer, weight=w, weight_bits=bits)


@pytest.mark.parametrize("seed,P", [(3, 2), (8, 3), (11, 1)])
def test_network_with_its_fc_weights_in_the_sdram_matches_golden(seed, P):
    """NetworkTop with the last (fc) layer's weights in the SDRAM: written
    through ``mem_write`` (which waits for the chip), then two images back
    to back: every layer's spikes at every step and the readout equal the
    golden model's; each event into the layer read its words once."""
    from spikeforge.hw.network import NetworkTop, first_mismatch, input_events
    from spikeforge.hw.randnet import random_frames, random_network
    from spikeforge.hw.sim import simulate_many
    from spikeforge.hw.weightstream import sdram_words
    from spikeforge.image import memories
    from spikeforge.sw import golden

    net = random_network(seed, size=(6, 8), channels=(2, 5), classes=6, voting=2)
    n = len(net.layers) - 1
    lanes = [min(P, l.spec.out_channels) for l in net.layers]
    top = NetworkTop(net, lanes, sdram=(n,), sdram_hz=FREQ)
    # the controller waits the full 200 us at power-up; the model checks it
    model = SdramModel(ULX3S_SDRAM_GEOM, SdramTiming().cycles(FREQ))
    words = memories(net, lanes)[f"L{n}_weights"][1]
    writes = [(2 * n, a, w) for a, w in enumerate(words)]

    xs = [random_frames(net, s) for s in (seed, seed + 1)]
    results = simulate_many(top, [input_events(net, x[0]) for x in xs], seed=seed, idle=0.1,
                            writes=writes,
                            background=[model.testbench(top.sdram_pins, seed)])
    events = 0
    for x, res in zip(xs, results):
        ref = golden.run(net, x)
        assert first_mismatch(net, ref.spikes, res.spikes) is None
        assert res.scores == ref.scores[0].tolist()
        events += res.perf[n]["events_in"]
    assert events > 0
    k = sdram_words(top.params[n], ULX3S_SDRAM_GEOM)
    assert model.commands["READ"] == events * top.params[n].groups * k
    assert model.commands["WRITE"] == len(words) * k


def test_start_mid_inference_leaves_no_weight_word_behind():
    """``start`` while the streamed layer still has reads owed (the host may
    restart the engine at any time): the controller drops them, and the next
    images' readouts equal the golden model's (without the flush, the owed
    words were the next image's first weights, and every word after them
    shifted)."""
    from spikeforge.hw.network import NetworkTop, input_events
    from spikeforge.hw.randnet import random_frames, random_network
    from spikeforge.hw.sim import event_payload
    from spikeforge.image import memories
    from spikeforge.sw import golden

    net = random_network(3, size=(6, 8), channels=(2, 5), classes=6, voting=2)
    n = len(net.layers) - 1
    lanes = [min(2, l.spec.out_channels) for l in net.layers]
    top = NetworkTop(net, lanes, sdram=(n,), sdram_hz=FREQ)
    model = SdramModel(ULX3S_SDRAM_GEOM, SdramTiming().cycles(FREQ))
    weights = memories(net, lanes)[f"L{n}_weights"][1]
    xs = [random_frames(net, s) for s in (3, 4, 5)]
    got, aborted, taken = [], [], [0]

    async def words(ctx):   # the weight words the core takes
        ww = top.streamers[n].w_words
        async for _, _, valid, ready in ctx.tick().sample(ww.valid, ww.ready):
            taken[0] += valid & ready

    async def start(ctx):
        ctx.set(top.start, 1)
        await ctx.tick()
        ctx.set(top.start, 0)
        await ctx.tick()
        while ctx.get(top.clearing):
            await ctx.tick()

    async def feed(ctx, x):
        for ev in input_events(net, x[0]):
            ctx.set(top.events.payload, event_payload(ev))
            ctx.set(top.events.valid, 1)
            await ctx.tick().until(top.events.ready)
        ctx.set(top.events.valid, 0)

    async def bench(ctx):
        for a, w in enumerate(weights):
            ctx.set(top.mem_write.payload, {"select": 2 * n, "addr": a, "data": w})
            ctx.set(top.mem_write.valid, 1)
            await ctx.tick().until(top.mem_write.ready)
        ctx.set(top.mem_write.valid, 0)
        await start(ctx)
        await feed(ctx, xs[0])
        # the image is still on its way, and words the layer asked for are owed
        aborted.append((ctx.get(top.done), model.commands["READ"] - taken[0]))
        for x in xs[1:]:
            await start(ctx)
            await feed(ctx, x)
            await ctx.tick().until(top.done)
            await ctx.tick()
            got.append([int(v) for v in ctx.get(top.scores)])

    sim = Simulator(top)
    sim.add_clock(1 / FREQ)
    sim.add_testbench(bench)
    sim.add_testbench(model.testbench(top.sdram_pins, 7), background=True)
    sim.add_process(words)
    steps = 0
    while sim.advance():
        steps += 1
        assert steps < 4_000_000, "simulation still running"
    assert aborted[0][0] == 0 and aborted[0][1] > 0, aborted
    assert len(got) == 2
    assert got == [golden.run(net, x).scores[0].tolist() for x in xs[1:]]


def test_network_refuses_sdram_layers_it_does_not_have():
    from spikeforge.hw.network import NetworkTop
    from spikeforge.hw.params import EngineError
    from spikeforge.hw.randnet import random_network
    net = random_network(3, size=(6, 8), channels=(2, 5))
    for bad in ((len(net.layers),), (-1,), (True,)):
        with pytest.raises(EngineError, match="layer indices of this network"):
            NetworkTop(net, 2, sdram=bad)


def test_an_idle_controller_refreshes_every_t_refi_cycles():
    """No requests: after power-up (and the refresh that fell due during
    it) an AUTO REFRESH exactly every ``t_refi`` cycles (the counter once
    ran a cycle long)."""
    dut = SdramController(FREQ, GEOM, FAST)
    log = []
    simulate(dut, [], extra=12 * cycles()["refi"], log=log)
    refs = [c for c, cmd, _, _ in log if cmd == REFRESH][FAST.init_refreshes + 1:]
    gaps = {b - a for a, b in zip(refs, refs[1:])}
    assert len(refs) >= 8 and gaps == {cycles()["refi"]}, (len(refs), gaps)
