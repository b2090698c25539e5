"""The network top: layer cores in a dataflow chain, readout and counters.

:class:`NetworkTop` is generated from an :class:`~spikeforge.sw.golden.IntNetwork`
and a folding factor ``P`` (one for all layers or one per layer): LIF / IF
networks, or STCB networks (CAB + STEB layers).  Layer ``n``'s output stream
feeds layer ``n + 1`` through a small FIFO; the cores work concurrently on
successive time steps.  A residual layer ``n`` also takes layer ``n - 2``'s
output, forked through a :class:`~.streams.SkipPath`.  :func:`input_events` turns uint8
frames into the input port's event sequence, and :func:`first_mismatch`
compares captured per-layer spikes with the golden model's packed traces.

Verilog port names (Amaranth flattens members with ``__``): ``start``,
``clearing``, ``events__valid/ready/payload``, ``mem_write__valid/ready/payload``,
``done``, ``result_valid``, ``counts``, ``scores``, ``prediction``, ``cycles``, ``perf``,
``tap_valid``, ``tap``; plus ``clk`` and ``rst``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from amaranth import *
from amaranth.hdl import ResetInserter
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out, flipped

from spikeforge.config import LayerKind
from spikeforge.image import ImageError, input_lanes, memories
from spikeforge.sw import golden

from .arith import const_mul, copies
from .layer import PERF_LAYOUT, LayerCore
from .params import CoreParams, EngineError
from .sdram import ULX3S_SDRAM, SdramController, pin_signature
from .streams import (EVENT_FIFO_DEPTH, EventFIFO, EventFormat, SkipPath, bits_for,
                      mem_write_layout)

__all__ = ["NetworkTop", "EngineGeometry", "engine_geometry", "core_memory_bits", "Event", "input_events", "Mismatch", "first_mismatch", "beat_spikes",
           "lane_counts", "bank_counts", "split_capable", "layer_input_shapes", "skip_depth"]


def split_capable(net, n: int) -> bool:
    """Whether layer ``n`` can split its kernel taps over two synapse units:
    a LIF / IF conv layer (kernel > 1) after a LIF / IF layer."""
    il = net.layers[n]
    return (n > 0 and il.spec.kind is LayerKind.CONV and not il.stcb
            and not net.layers[n - 1].stcb and il.spec.kernel > 1)


def lane_counts(net, P) -> list[int]:
    """``P`` as one lane count per layer, validated: ``1 .. C_out`` output-channel
    lanes, or ``2 * C_out`` for a layer that can split its kernel taps
    (:func:`split_capable`): a lane per channel in each of two synapse units."""
    n = len(net.layers)
    ps = list(P) if isinstance(P, (list, tuple)) else [P] * n
    if len(ps) != n:
        raise EngineError(f"{len(ps)} lane counts for {n} layers (one per layer, or "
                          "one for all)")
    for i, (p, il) in enumerate(zip(ps, net.layers)):
        c = il.spec.out_channels
        split = split_capable(net, i)
        if type(p) is not int or not (1 <= p <= c or split and p == 2 * c):
            raise EngineError(f"layer {i}: lane count P must be an integer in 1..{c} (its output "
                              "channels)" + (f" or {2 * c} (its taps split over two synapse "
                                             "units)" if split else "") + f", not {p!r}")
    return ps


def plane_words(net) -> bool:
    """Whether layer 0 takes an input value's bit planes as one word event
    (a LIF / IF network with more than one input bit)."""
    return not net.layers[0].stcb and net.layers[0].input_bits > 1


def bank_counts(net, banks) -> list[int]:
    """``banks`` (current memories per layer, :attr:`CoreParams.cur_banks`)
    validated: None is two per layer; else a list of 1 or 2 per layer (an
    STCB layer has its own accumulators: its entry is ignored)."""
    n = len(net.layers)
    if banks is None:
        return [2] * n
    bs = list(banks) if isinstance(banks, (list, tuple)) else None
    if bs is None or len(bs) != n or any(type(b) is not int or b not in (1, 2) for b in bs):
        raise EngineError(f"current memories per layer: a list of {n} counts, each 1 or 2, "
                          f"not {banks!r}")
    return bs


def core_params(net, P, faults: dict | None = None,
                words: list[int] | None = None, banks=None) -> list[CoreParams]:
    """The :class:`CoreParams` of every layer core of ``net`` with lanes ``P``
    and ``words`` input channels per event (:func:`spikeforge.image.input_lanes`;
    None: a word is the previous layer's whole lane group, single spikes in
    a residual block) and ``banks`` current memories per layer
    (:func:`bank_counts`; one: a layer's next step, or a static layer's next
    image, waits for its scans) (what
    :class:`NetworkTop` builds and :mod:`~spikeforge.hw.fit` counts)."""
    ps = lane_counts(net, P)
    bs = bank_counts(net, banks)
    fmt = EventFormat.for_network(net)
    shapes = layer_input_shapes(net.spec)
    faults = dict(faults or {})
    T = net.spec.timesteps
    # lanes beyond a layer's channels are a second synapse unit
    chans = [min(p, il.spec.out_channels) for p, il in zip(ps, net.layers)]
    try:
        qs = input_lanes(net, chans, words)
    except ImageError as e:
        raise EngineError(str(e)) from None
    planes = plane_words(net)
    qs[0] = net.layers[0].input_bits if planes else 1
    return [CoreParams.build(i, il, shapes[i], chans[i], fmt, faults.get(i), T,
                             static=i == 0 and not il.stcb, cur_banks=bs[i], in_lanes=qs[i],
                             in_planes=i == 0 and planes,
                             words_out=qs[i + 1] if i + 1 < len(qs) else 1,
                             units=ps[i] // chans[i])
            for i, il in enumerate(net.layers)]


def skip_depth(cp: CoreParams) -> int:
    """Depth of the skip FIFO in front of the residual layer with parameters
    ``cp``: every event one step of the block input can send (a word per
    channel group and position) and its marker, held.  The fork hands each
    beat to the block's first layer and to the skip at once, and the skip
    drains only as fast as the residual layer takes its input; a shallower
    FIFO would hold the block's first layer to that pace (a 32-deep one made
    a small STS-ResNet's interval 1.39x in Verilator, 108,273 cycles against
    78,111 at 4,096)."""
    c, h, w = cp.in_shape
    return (c // 2) // cp.word_channels * h * w + 2


def layer_input_shapes(spec) -> list[tuple[int, int, int]]:
    """``(C, H, W)`` of each layer's input stream (fc inputs unflattened; a
    residual layer's ``C`` counts the skip's channels too)."""
    shapes, shape = [], tuple(spec.input_shape)
    for layer in spec.layers:
        shapes.append((layer.synapse_channels, *shape[1:]) if layer.residual else shape)
        shape = (layer.out_channels, *layer.out_size)
    return shapes


@dataclass(frozen=True)
class EngineGeometry:
    """The port shapes of the :class:`NetworkTop` of ``net`` with lanes
    ``lanes``, computed without building any hardware: what the host link
    (:func:`spikeforge.boards.protocol.link_layout`) and a board's PING reply
    need.  :func:`engine_geometry` makes one; a :class:`NetworkTop` holds its
    own as ``geometry``."""

    net: object
    lanes: tuple[int, ...]
    fmt: EventFormat
    params: tuple[CoreParams, ...]
    mem_layout: data.StructLayout
    n_out: int          # classes * voting output neurons
    max_count: int      # the largest value of one output count
    words: tuple[int, ...] | None = None   # input channels per event (None: whole lane groups)

    @property
    def stcb(self) -> bool:
        return self.net.layers[0].stcb

    @property
    def counts_layout(self) -> data.ArrayLayout:
        return data.ArrayLayout(unsigned(bits_for(self.max_count)), self.n_out)

    @property
    def scores_layout(self) -> data.ArrayLayout:
        spec = self.net.spec
        return data.ArrayLayout(unsigned(bits_for(self.max_count * spec.voting)), spec.classes)

    @property
    def prediction_bits(self) -> int:
        return bits_for(self.net.spec.classes - 1)

    @property
    def perf_layout(self) -> data.ArrayLayout:
        return data.ArrayLayout(PERF_LAYOUT, len(self.params))


def core_memory_bits(cp: CoreParams) -> tuple[int, int]:
    """``(addr_bits, data_bits)`` of the memory write port of the core with
    parameters ``cp``: the widths a :class:`~spikeforge.hw.layer.LayerCore`
    gives itself (:class:`NetworkTop` checks that they agree)."""
    return bits_for(max(cp.weight_depth, cp.c_out) - 1), max(cp.weight_width, cp.neuron_width)


def engine_geometry(net, P=1, faults: dict | None = None,
                    words: list[int] | None = None, banks=None) -> EngineGeometry:
    """The :class:`EngineGeometry` of ``net`` with lanes ``P``, ``words``
    and ``banks`` (:func:`core_params`; no hardware built)."""
    ps = lane_counts(net, P)
    params = tuple(core_params(net, ps, faults, words, banks))
    spec = net.spec
    stcb = net.layers[0].stcb
    # an output neuron's count: spikes over T, or an STCB value sum_t s[t] << (T-1-t)
    T = spec.timesteps
    widths = [core_memory_bits(cp) for cp in params]
    mem_layout = mem_write_layout(bits_for(2 * len(params) - 1), max(a for a, _ in widths),
                                  max(d for _, d in widths))
    return EngineGeometry(net, tuple(ps), EventFormat.for_network(net), params, mem_layout,
                          spec.classes * spec.voting, (1 << T) - 1 if stcb else T,
                          None if words is None else tuple(words))


class NetworkTop(wiring.Component):
    """The whole engine for one network.

    Parameters
    ----------
    net : IntNetwork
        The quantized network (LIF / IF layers, or STCB layers).
    P : int or list of int
        Output-channel lanes, for all layers or per layer (``1 .. C_out``).
    fifo_depth : int
        Depth of the event FIFOs (input and between layers).
    faults : dict of int to str, optional
        Test-only deliberate faults per layer (see ``params.FAULTS``).
    contents : dict of str to (int, list of int), optional
        The initial words of the weight and neuron memories, ``{name: (width,
        words)}`` as :func:`spikeforge.image.read_exported` reads them from an
        export (``RUN/hw``); their names, widths and depths must be those of
        :func:`spikeforge.image.memories` for ``net`` and ``P``.  Default:
        :func:`~spikeforge.image.memories` of ``net``.
    spram : tuple of int
        Layers whose weights are in the iCE40's SPRAM
        (:func:`spikeforge.hw.fit.spram_layers`): not initialised, the host
        writes them before an inference.
    sdram : tuple of int
        Layers (fc, at most one for now) whose weights stream from an SDRAM
        chip (:mod:`spikeforge.hw.sdram`, the ULX3S's geometry) through a
        :class:`~spikeforge.hw.weightstream.WeightStreamer`; the host writes
        them (``mem_write``, which then waits for the chip).  The controller
        is not reset by ``start`` (its power-up sequence runs once).
    sdram_hz : float
        The clock the SDRAM controller's timing is counted in.
    sdram_io : int
        Registers each way between ``sdram_pins`` and the chip (the board's
        I/O flip-flops: :class:`~spikeforge.hw.sdram.SdramController`'s
        ``io_stages``).
    sdram_clock_inverted : bool
        The board clocks the chip with the inverted clock (the controller's
        ``clock_inverted``).
    banks : list of int, optional
        Current memories per layer (:func:`bank_counts`; default two each).

    Members
    -------
    start : In(1)
        Pulse: synchronous reset of every core, FIFO and counter (the cores
        and FIFOs one cycle later, from a register), then the clear pass
        over all membrane banks (weight and neuron memories are kept).
    clearing : Out(1)
        ``start``, its reset cycle, a clear pass or the SDRAM's power-up
        (``sdram``); ``events.ready`` is low until it ends.
    events : In(stream.Signature(fmt.layout))
        Layer 0 input: events ``(channel, y, x, shift)`` (``shift``: the bit
        plane's weight shift, see :func:`input_events`) and one end-of-step
        marker (``last = 1``) after each of the ``T`` steps; or, for one frame
        that holds for all steps, its planes and one hold marker (``last = 1,
        shift = 1``: layer 0 accumulates it once); STCB networks: the static
        frame's planes and one marker.
    mem_write : In(stream.Signature(mem_write_layout(...)))
        Run-time memory writes ``{select, addr, data}``: ``select = 2n`` writes
        word ``addr`` of ``L{n}_weights``, ``2n + 1`` of ``L{n}_neurons``
        (layouts of :mod:`spikeforge.image`).  Always ready, except for
        the weights of a layer in the SDRAM (``sdram``): those wait for the chip.
    done : Out(1)
        An image has completed (its ``T`` end-of-step markers have left the
        last layer) since ``start``; held until ``start``.
    result_valid : Out(1)
        Strobe: an image completed and its result is in ``counts``,
        ``scores``, ``prediction`` and ``cycles`` (held until the next).
        LIF / IF networks take images back to back without ``start``: every
        core leaves its state zero at an image's last step, and results come
        out in input order.
    counts : Out(ArrayLayout(unsigned(bits_for(M)), classes * voting))
        Spike count of each output neuron (flattened ``(channel, y, x)``) over
        the ``T`` steps of the last completed image, ``M = T``; for an STCB
        network its value
        ``sum_t s[t] << (T-1-t)``, ``M = 2**T - 1`` (the golden model's score).
    scores : Out(ArrayLayout(unsigned(bits_for(M * voting)), classes))
        Sum of ``counts`` over each class's voting group.
    prediction : Out(unsigned)
        Index of the largest score, ties to the lowest index.
    cycles : Out(32)
        Cycles from the first input event taken after ``start`` to the last
        completion (one image per ``start``: its latency).
    perf : Out(ArrayLayout(PERF_LAYOUT, layers))
        Per-layer performance counters (:data:`~spikeforge.hw.layer.PERF_LAYOUT`).
    tap_valid : Out(layers)
        Bit ``n``: layer ``n``'s output stream transfers a beat this cycle.
    tap : Out(ArrayLayout(fmt.layout, layers))
        Layer ``n``'s output payload (a spike, or a marker with ``last = 1``).
    sdram_pins : Out(pin_signature(ULX3S_SDRAM))
        Only with ``sdram``: the chip's pins.
    """

    def __init__(self, net, P=1, *, fifo_depth: int = EVENT_FIFO_DEPTH,
                 faults: dict | None = None, contents: dict | None = None,
                 words: list[int] | None = None, spram=(), sdram=(), sdram_hz: float = 50e6,
                 banks=None, sdram_io: int = 0, sdram_clock_inverted: bool = False):
        self.geometry = g = engine_geometry(net, P, faults, words, banks)
        self.banks = None if banks is None else list(banks)
        self._net = net
        self.stcb = g.stcb
        self.lanes = ps = list(g.lanes)
        self.words = None if words is None else list(words)
        self.fmt = fmt = g.fmt
        self.params = list(g.params)
        mems = memories(net, ps, words)
        if contents is not None:
            _check_contents(contents, mems)
            mems = contents
        self.contents = mems  # the memories' power-up words, {name: (width, words)}
        self.spram = tuple(spram)
        self.sdram, self.sdram_hz, self.sdram_io = tuple(sdram), sdram_hz, sdram_io
        self.sdram_clock_inverted = sdram_clock_inverted
        if len(self.sdram) > 1:
            raise EngineError(f"weights of layers {list(self.sdram)} in the SDRAM: one layer "
                              "at most (no arbiter yet)")
        if any(type(i) is not int or not 0 <= i < len(net.layers) for i in self.sdram):
            raise EngineError(f"sdram={self.sdram!r}: layer indices of this network "
                              f"(0..{len(net.layers) - 1}) expected")
        self.cores = [LayerCore(cp, mems[f"L{i}_weights"][1], mems[f"L{i}_neurons"][1],
                                spram=i in self.spram, streamed=i in self.sdram)
                      for i, cp in enumerate(self.params)]
        for i, core in enumerate(self.cores):
            if (core.addr_bits, core.data_bits) != core_memory_bits(core.params):
                raise EngineError(f"layer {i}: the core's memory port is {core.addr_bits} x "
                                  f"{core.data_bits} bits, core_memory_bits says "
                                  f"{core_memory_bits(core.params)}")
        self.fifo_depth = fifo_depth
        self.n_out = g.n_out
        self.max_count = g.max_count
        self.mem_layout = g.mem_layout
        n_layers = len(net.layers)
        super().__init__({
            "start": In(1),
            "clearing": Out(1),
            "events": In(fmt.signature),
            "mem_write": In(stream.Signature(self.mem_layout)),
            "done": Out(1),
            "result_valid": Out(1),
            "counts": Out(g.counts_layout),
            "scores": Out(g.scores_layout),
            "prediction": Out(g.prediction_bits),
            "cycles": Out(32),
            "perf": Out(g.perf_layout),
            "tap_valid": Out(n_layers),
            "tap": Out(data.ArrayLayout(fmt.layout, n_layers)),
            **({"sdram_pins": Out(pin_signature(ULX3S_SDRAM))} if self.sdram else {}),
        })

    @property
    def net(self):
        return self._net

    def _streamer(self, m, i: int, core, rst):
        """Layer ``i``'s weight streamer and the SDRAM controller behind it."""
        from .weightstream import WeightStreamer, connect_streamed
        ws = WeightStreamer(core.params, ULX3S_SDRAM, 0, core.addr_bits, core.data_bits)
        ctl = SdramController(self.sdram_hz, ULX3S_SDRAM, io_stages=self.sdram_io,
                              clock_inverted=self.sdram_clock_inverted)
        m.submodules[f"weights{i}"] = ResetInserter(rst)(ws)
        m.submodules.sdram = ctl
        self._sdram_ready = ctl.ready
        connect_streamed(m, ws, ctl, core)
        wiring.connect(m, ctl.pins, flipped(self.sdram_pins))
        # ``start`` drops the words of reads still owed to the streamer it resets
        m.d.comb += ctl.flush.eq(rst)
        return ws

    def elaborate(self, platform):
        m = Module()
        spec = self._net.spec
        n_layers = len(self.cores)
        # ``start`` resets the cores and FIFOs one cycle later, from registers
        # (timing: the reset net, thousands of control flip-flops, is driven by
        # a flip-flop, not by the host's logic), four copies, a core and its
        # input FIFO taking one, its share of the cores (``copies``: kept
        # apart by their initial values; one register at fan-out 1,593
        # reached the last core over 7.2 ns of routing, a path 1 ns short of
        # 100 MHz in a ULX3S build); the cycle it takes counts as clearing
        # (every copy: ``clearing`` below), so no event is taken then.  A
        # copy whose initial value is 1 resets its cores in the first cycle
        # after power-up, which only starts their power-up clear pass a
        # cycle later (``clearing`` holds until it ends)
        rsts = copies(m, self.start, "rst")
        rst = rsts[0]   # the streamers' and the skip paths' (initial value 0)

        def rst_of(i: int):
            return rsts[i * len(rsts) // n_layers]

        # ---------------------------------------------------------- dataflow chain
        fifos = [EventFIFO(self.fmt, self.fifo_depth) for _ in range(n_layers)]
        # (kept on the top: a test can watch the streamers' ports)
        self.streamers = streamers = {}
        for i, (core, f) in enumerate(zip(self.cores, fifos)):
            m.submodules[f"fifo{i}"] = ResetInserter(rst_of(i))(f)
            m.submodules[f"core{i}"] = ResetInserter(rst_of(i))(core)
            if i in self.sdram:
                streamers[i] = self._streamer(m, i, core, rst)
                wiring.connect(m, f.r, streamers[i].i_events)
            else:
                wiring.connect(m, f.r, core.i_events)
        # a residual layer n: layer n-2's output forks, to layer n-1 and
        # through a skip FIFO to a merge in front of layer n's FIFO
        outs = [core.o_events for core in self.cores]   # what feeds layer i + 1
        ins = [f.w for f in fifos]                       # where layer i's input goes
        for n, ls in enumerate(spec.layers):
            if not ls.residual:
                continue
            # skip events name channel groups of the layer's word size, as its own
            skip = SkipPath(self.fmt, skip_depth(self.params[n]),
                            ls.in_channels // self.params[n].word_channels)
            m.submodules[f"skip{n}"] = ResetInserter(rst)(skip)
            wiring.connect(m, outs[n - 2], skip.i)
            outs[n - 2] = skip.a
            wiring.connect(m, skip.o, ins[n])
            ins[n] = skip.own
        for i in range(n_layers - 1):
            wiring.connect(m, outs[i], ins[i + 1])
        last = self.cores[-1].o_events
        m.d.comb += last.ready.eq(1)

        # ``clearing`` is a register, a cycle behind the cores' clear passes
        # (timing: the OR of every core's state machine reached the host
        # bridge's logic through the input's ``ready``, across the chip: the
        # critical path of a routed default engine); ``start`` and the reset
        # registers cover the cycles before a clear pass shows
        clearing = Signal(init=1)
        # (and until the SDRAM's power-up is done: its layer's weights wait
        # for it, and the first image would start with the layers before it)
        powering = ~self._sdram_ready if self.sdram else C(0)
        m.d.sync += clearing.eq(Cat(c.clearing for c in self.cores).any() | self.start
                                | Cat(rsts).any() | powering)
        m.d.comb += [
            self.clearing.eq(clearing),
            fifos[0].w.payload.eq(self.events.payload),
            fifos[0].w.valid.eq(self.events.valid & ~clearing & ~self.start),
            self.events.ready.eq(fifos[0].w.ready & ~clearing & ~self.start),
        ]

        # ---------------------------------------------------------- memory writes
        # (registered at each core: the write data is as wide as the widest
        # memory word, 2,048 bits on the default engine, and reaches every
        # core's memories from one record buffer in the host bridge)
        mw = self.mem_write
        m.d.comb += mw.ready.eq(1)
        for i, ws in streamers.items():
            # weights into the SDRAM, as the chip takes them, through a
            # register: the controller sits by the chip's pins, the host
            # bridge by the UART, and the write's handshake crossed the
            # device there and back in one cycle (the critical path of the
            # ConvSNN 48-48's ULX3S build: 19.7 ns of routing)
            mine = mw.payload.select[1:] == i
            full = Signal(name=f"weights{i}_write_full")
            m.d.comb += ws.mem_write.valid.eq(full)
            with m.If(ws.mem_write.ready):
                m.d.sync += full.eq(0)
            with m.If(mine):
                m.d.comb += mw.ready.eq(~full)
                with m.If(mw.valid & ~full):
                    m.d.sync += [full.eq(1),
                                 ws.mem_write.payload.which.eq(mw.payload.select[0]),
                                 ws.mem_write.payload.addr.eq(mw.payload.addr),
                                 ws.mem_write.payload.data.eq(mw.payload.data)]
        for i, core in enumerate(self.cores):
            mine = mw.payload.select[1:] == i
            m.d.sync += [
                core.mem_write.valid.eq(mw.valid & mine),
                core.mem_write.payload.which.eq(mw.payload.select[0]),
                core.mem_write.payload.data.eq(mw.payload.data),
            ]
            # each core's address in a register of its own, taken only while
            # the payload names the core (timing: the cores' registers of the
            # same address were one after synthesis, placed between the
            # cores, and drove their weight blocks and LUT RAM over 9.8 ns of
            # routing; not on ``valid``, the host bridge's state decode, which
            # then reached every core's enables: -0.66 ns)
            with m.If(mine):
                m.d.sync += core.mem_write.payload.addr.eq(mw.payload.addr)

        # ---------------------------------------------------------- taps, perf
        for i, core in enumerate(self.cores):
            o = core.o_events
            m.d.comb += [self.tap_valid[i].eq(o.valid & o.ready), self.tap[i].eq(o.payload),
                         self.perf[i].eq(core.perf)]

        # ---------------------------------------------------------- readout
        obs_valid = Signal()
        obs = Signal(self.fmt.layout)
        m.d.sync += [obs_valid.eq(last.valid), obs.eq(last.payload)]
        ls = spec.layers[-1]
        ho, wo = (1, 1) if ls.kind is LayerKind.FC else ls.out_size
        idx = Signal(bits_for(max(self.n_out, ho * wo * ls.out_channels)))
        m.d.comb += idx.eq(const_mul(const_mul(obs.channel, ho) + obs.y, wo) + obs.x)
        T = spec.timesteps
        markers = Signal(range(T))
        running = Signal()
        # one register per output neuron (not slices of one wide signal: a
        # thousand partial updates of one signal nest too deep to simulate)
        cnt = [Signal(len(self.counts[0]), name=f"count{n}") for n in range(self.n_out)]
        res = [Signal(len(self.counts[0]), name=f"result{n}") for n in range(self.n_out)]
        m.d.comb += [self.counts[n].eq(r) for n, r in enumerate(res)]
        hit = obs_valid & ~obs.last
        if self.stcb:  # a spike of step t is digit T-1-t of the value
            inc = Signal(len(cnt[0]))
            m.d.comb += inc.eq(C(1 << (T - 1), len(inc)) >> markers)
        else:
            inc = 1
        for n, c in enumerate(cnt):
            with m.If(hit & (idx == n)):
                m.d.sync += c.eq(c + inc)
        # the T-th marker of an image: latch its result, start counting the next;
        # the result is announced once the pipelined argmax below has it
        cycles = Signal(32)
        latched = Signal()
        m.d.sync += latched.eq(0)
        with m.If(obs_valid & obs.last):
            with m.If(markers == T - 1):
                m.d.sync += [markers.eq(0), latched.eq(1), self.cycles.eq(cycles)]
                m.d.sync += [r.eq(c) for r, c in zip(res, cnt)] + [c.eq(0) for c in cnt]
            with m.Else():
                m.d.sync += markers.eq(markers + 1)
        with m.If(self.events.valid & self.events.ready):
            m.d.sync += running.eq(1)
        with m.If(running | (self.events.valid & self.events.ready)):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(self.start):
            m.d.sync += [markers.eq(0), running.eq(0), cycles.eq(0), self.cycles.eq(0),
                         obs_valid.eq(0)]
            m.d.sync += [c.eq(0) for c in cnt] + [r.eq(0) for r in res]

        v = spec.voting
        for c in range(spec.classes):
            total = self.counts[c * v]
            for n in range(c * v + 1, c * v + v):
                total = total + self.counts[n]
            m.d.comb += self.scores[c].eq(total)
        # argmax as a tree of comparisons, a register after the scores and
        # after each level (timing: the result waits these cycles, ``latched``
        # goes down the same delay line); the right (higher-index) side wins
        # only when strictly greater, so ties go to the lowest index.  Images
        # complete far more than ``levels + 1`` cycles apart (each takes T
        # scans of the last layer), so the pipeline holds one result at a time.
        sc0 = [Signal.like(self.scores[c], name=f"amax_in{c}") for c in range(spec.classes)]
        m.d.sync += [r.eq(self.scores[c]) for c, r in enumerate(sc0)]
        nodes = [(C(c, len(self.prediction)), sc0[c]) for c in range(spec.classes)]
        strobe = Signal(name="amax_v0")
        m.d.sync += strobe.eq(latched)
        strobes = [latched, strobe]
        level = 0
        while len(nodes) > 1:
            nxt = []
            for i in range(0, len(nodes) - 1, 2):
                (ia, sa), (ib, sb) = nodes[i], nodes[i + 1]
                idx_s = Signal.like(self.prediction, name=f"amax{level}_{i // 2}")
                sc_s = Signal.like(sc0[0], name=f"amax{level}_{i // 2}_score")
                m.d.sync += [idx_s.eq(Mux(sb > sa, ib, ia)), sc_s.eq(Mux(sb > sa, sb, sa))]
                nxt.append((idx_s, sc_s))
            if len(nodes) % 2:
                idx_s = Signal.like(self.prediction, name=f"amax{level}_{len(nodes) // 2}")
                sc_s = Signal.like(sc0[0], name=f"amax{level}_{len(nodes) // 2}_score")
                m.d.sync += [idx_s.eq(nodes[-1][0]), sc_s.eq(nodes[-1][1])]
                nxt.append((idx_s, sc_s))
            nodes = nxt
            nxt_strobe = Signal(name=f"amax_v{level + 1}")
            m.d.sync += nxt_strobe.eq(strobe)
            strobe = nxt_strobe
            strobes.append(strobe)
            level += 1
        m.d.sync += self.result_valid.eq(strobe)
        with m.If(strobe):
            m.d.sync += self.done.eq(1)
        with m.If(self.start):
            m.d.sync += [self.done.eq(0), self.result_valid.eq(0)] + [v.eq(0) for v in strobes]
        m.d.comb += self.prediction.eq(nodes[0][0])
        return m


def _check_contents(contents, mems) -> None:
    """Memory contents given to :class:`NetworkTop` fit the memories it builds."""
    if not isinstance(contents, dict) or list(contents) != list(mems):
        raise EngineError(f"memory contents must be a dict of the memories {list(mems)}, not "
                          f"{list(contents) if isinstance(contents, dict) else contents!r:.60}")
    for name, (width, words) in mems.items():
        item = contents[name]
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], list)):
            raise EngineError(f"memory {name}: contents must be (width, [words])")
        w, ws = item
        if w != width or len(ws) != len(words):
            raise EngineError(f"memory {name}: contents of {len(ws)} words of {w} bits, the "
                              f"memory has {len(words)} words of {width} bits")
        bad = next((v for v in ws if type(v) is not int or not 0 <= v < 1 << width), None)
        if bad is not None:
            raise EngineError(f"memory {name}: word {bad!r} is not an unsigned {width}-bit value")


# --------------------------------------------------------------------------- host side


class Event(NamedTuple):
    """One beat of the input port: an event of step ``t``, or (``last``) the
    end-of-step marker of step ``t``."""

    t: int
    channel: int
    y: int
    x: int
    shift: int
    last: bool = False
    mask: int = 0


def input_events(net, frames: torch.Tensor) -> list[Event]:
    """The input port's beats for one sample of uint8 frames ``[F, C, H, W]``
    (or ``[1, F, C, H, W]``), from :func:`spikeforge.sw.golden.input_values`.

    Step ``t``'s integer input ``x`` (``B`` = layer 0's ``input_bits``)
    enters as one word event per non-zero value, its ``B`` bit planes in the
    ``mask`` (a LIF / IF network with ``B > 1``), or as bit planes, MSB first:
    for plane ``b`` (bit ``B-1-b`` of ``x``) one event per set bit with
    ``shift = B-1-b``; then the step's marker.  One direct-encoded frame for
    all steps enters once, followed by a *hold* marker (``shift = 1``): layer 0
    accumulates it once and uses the current at every step.  An STCB network
    takes the first step's input only (the golden model's ``x[0]``), with one
    marker.
    """
    if frames.dim() == 4:
        frames = frames.unsqueeze(0)
    if frames.dim() != 5 or frames.shape[0] != 1:
        raise EngineError(f"input_events takes one sample [F, C, H, W], got {list(frames.shape)}")
    spec = net.spec
    B = net.layers[0].input_bits
    x = golden.input_values(spec, frames, B)[:, 0]  # [T, C, H, W]
    stcb = net.layers[0].stcb
    if stcb and spec.frames != 1:
        raise EngineError("STCB networks take static frames")
    hold = not stcb and spec.encoding == "direct" and frames.shape[1] == 1
    if stcb or hold:  # one frame, one marker
        x = x[:1]
    if int(x.min()) < 0 or int(x.max()) >= 1 << B:
        raise EngineError(f"layer 0 input values exceed its {B} input bits")
    planes = plane_words(net)
    out = []
    for t in range(x.shape[0]):
        if planes:
            for c, y, xx in x[t].nonzero().tolist():
                out.append(Event(t, c, y, xx, 0, False, int(x[t, c, y, xx])))
        else:
            for bit in reversed(range(B)):
                for c, y, xx in ((x[t] >> bit) & 1).nonzero().tolist():
                    out.append(Event(t, c, y, xx, bit))
        out.append(Event(t, 0, 0, 0, int(hold), True))
    return out


def beat_spikes(cp: CoreParams, channel: int, y: int, x: int, mask: int) -> list[tuple]:
    """The spikes ``(channel, y, x)`` of one output beat of the core with
    parameters ``cp``: one, or (words of ``Q = cp.words_out`` channels) one per
    set bit of a word's mask."""
    Q = cp.words_out
    if Q > 1:
        return [(channel * Q + i, y, x) for i in range(Q) if mask >> i & 1]
    return [(channel, y, x)]


@dataclass(frozen=True)
class Mismatch:
    """The first difference between the engine and the golden model on one
    image: at ``layer``'s output in time step ``step``, ``neuron`` (flattened
    ``(channel, y, x)``) was seen ``got`` times where the golden model spiked
    ``expected`` times; ``layer == len(layers)`` (``neuron = -1``) is a
    differing class (``expected`` / ``got``: the classes)."""

    image: int
    layer: int
    step: int
    neuron: int
    expected: int
    got: int

    def __str__(self):
        return (f"image {self.image}, layer {self.layer}, time step {self.step}, neuron "
                f"{self.neuron}: expected {self.expected} spike(s), got {self.got}")


def first_mismatch(net, packed: list[torch.Tensor], captured: list[list[list[tuple]]],
                   sample: int = 0) -> Mismatch | None:
    """Compare captured spikes with the golden model's traces.

    ``packed``: ``golden.run(...).spikes`` (per layer uint8 ``[T, B, ceil(n/8)]``);
    ``captured[layer][step]``: the ``(channel, y, x)`` spikes seen at the layer's
    tap during that step.  Returns the first difference in (layer, step,
    neuron) order (a :class:`Mismatch` of image ``sample``, ``got`` being the
    number of times the neuron was seen), or ``None`` when every layer's spikes
    match at every step.
    """
    T = net.spec.timesteps
    for li, layer in enumerate(net.spec.layers):
        n = layer.out_features
        ho, wo = (1, 1) if layer.kind is LayerKind.FC else layer.out_size
        expect = golden.unpack(packed[li][:, sample], n)  # [T, n]
        steps = captured[li] if li < len(captured) else []
        for t in range(T):
            got = torch.zeros(n, dtype=torch.int64)
            for c, y, x in (steps[t] if t < len(steps) else []):
                i = (c * ho + y) * wo + x
                if 0 <= i < n:
                    got[i] += 1
                else:
                    return Mismatch(sample, li, t, i, 0, 1)
            diff = (got != expect[t].to(torch.int64)).nonzero()
            if len(diff):
                i = int(diff[0])
                return Mismatch(sample, li, t, i, int(expect[t, i]), int(got[i]))
    return None
