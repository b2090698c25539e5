"""An fc layer's weights streamed from the SDRAM (:mod:`spikeforge.hw.sdram`).

A layer whose weights do not fit the block RAM keeps them in the SDRAM and
its core (:class:`~spikeforge.hw.layer.LayerCore` with ``streamed``) takes
them as a stream.  :class:`WeightStreamer` sits in front of the core: for
each input event (input neuron ``c``) it requests the event's ``G`` weight
words, ``c*G .. c*G + G - 1`` (the order the synapse unit walks them), from
the SDRAM, and passes the event on; it assembles each weight word from the
SDRAM's 16-bit words (``k = ceil(P*W / 16)`` a word, the lowest first) and
hands the words to the core in order.  End-of-step markers pass through.
The core's synapse unit waits for each word, so the SDRAM's row opening,
refreshes and the read latency cost cycles, never exactness.

Layout in the SDRAM: weight word ``i`` of the layer (the image's word,
:func:`spikeforge.image.weight_words`) at words ``base + i*k .. base + i*k +
k - 1``.  The host writes them through the core's ``mem_write`` (``which``
0): the streamer turns each write into ``k`` SDRAM writes; the engine is
idle then (between inferences), so a write waits only for the SDRAM.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import const_mul
from .layer import core_write_layout
from .params import CoreParams
from .sdram import SdramGeometry, cmd_layout

__all__ = ["WeightStreamer", "sdram_words", "sdram_image", "connect_streamed"]


def sdram_words(p: CoreParams, geom: SdramGeometry) -> int:
    """SDRAM words a weight word of core ``p`` takes (``k``)."""
    return -(-p.weight_width // geom.width)


def sdram_image(p: CoreParams, weights: list[int], geom: SdramGeometry) -> list[int]:
    """The SDRAM's words from word ``base`` on (module docstring) for the
    layer's weight words ``weights``: ``k`` a word, the lowest first."""
    k, W = sdram_words(p, geom), geom.width
    mask = (1 << W) - 1
    return [(w >> (W * j)) & mask for w in weights for j in range(k)]


def connect_streamed(m, ws: "WeightStreamer", ctl, core) -> None:
    """Wire streamer ``ws`` between SDRAM controller ``ctl`` and the streamed
    core ``core`` (its events, requests, words read and weight words)."""
    wiring.connect(m, ws.o_events, core.i_events)
    wiring.connect(m, ws.sdram, ctl.cmd)
    wiring.connect(m, ctl.rdata, ws.rdata)
    wiring.connect(m, ws.w_words, core.w_words)


class WeightStreamer(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    params : CoreParams
        The layer's core (fc, one synapse unit).
    geom : SdramGeometry
    base : int
        The layer's first SDRAM word.
    addr_bits, data_bits : int
        The core's ``mem_write`` layout (:class:`~spikeforge.hw.layer.LayerCore`).

    Members
    -------
    i_events : In(stream.Signature(params.fmt.layout))
        The layer's input events and markers.
    o_events : Out(stream.Signature(params.fmt.layout))
        The same, to the core, each once its weight words are requested.
    mem_write : In(stream.Signature(core_write_layout(addr_bits, data_bits)))
        The host's writes of the layer's weights (``which`` 0; others are
        ignored: the core takes those).
    sdram : Out(stream.Signature(cmd_layout(geom)))
        Requests to the SDRAM controller.
    rdata : In(stream.Signature(geom.width))
        The words read, in the order of the requests.
    w_words : Out(stream.Signature(params.weight_width))
        The weight words, to the core's ``w_words``.
    """

    def __init__(self, params: CoreParams, geom: SdramGeometry, base: int,
                 addr_bits: int, data_bits: int):
        p = params
        self._p, self._g, self._base = p, geom, base
        self.k = sdram_words(p, geom)
        end = base + p.weight_depth * self.k
        if base < 0 or end > geom.words:
            raise ValueError(f"layer {p.index}: weights at SDRAM words {base}..{end - 1}, "
                             f"the chip has {geom.words}")
        super().__init__({
            "i_events": In(p.fmt.signature),
            "o_events": Out(p.fmt.signature),
            "mem_write": In(stream.Signature(core_write_layout(addr_bits, data_bits))),
            "sdram": Out(stream.Signature(cmd_layout(geom))),
            "rdata": In(stream.Signature(geom.width)),
            "w_words": Out(stream.Signature(p.weight_width)),
        })

    def elaborate(self, platform):
        m = Module()
        p, g, k = self._p, self._g, self.k
        G = p.groups
        n_reads = G * k
        abits = g.addr_bits

        # ------------------------------------------------ requests
        # an event in hand: its first SDRAM word and the reads still to ask
        held = Signal()
        ev = Signal.like(self.i_events.payload)
        sent = Signal()                         # passed on to the core
        addr = Signal(abits)
        left = Signal(range(n_reads + 1))
        # the event's input neuron, flattened as the synapse unit does
        e = self.i_events.payload
        if p.flatten:
            _, hp, wp = p.in_shape
            c = const_mul(const_mul(e.channel, hp) + e.y, wp) + e.x
        else:
            c = e.channel
        first = const_mul(c, n_reads) + self._base

        # host writes: k SDRAM writes a weight word (the low bits first)
        mw = self.mem_write
        w_part = Signal(range(k))
        w_busy = mw.valid & (mw.payload.which == 0)
        w_addr = (const_mul(mw.payload.addr, k) + self._base + w_part)[:abits]
        w_data = mw.payload.data[:p.weight_width]
        w_chunk = Signal(g.width)
        W = g.width
        m.d.comb += w_chunk.eq(Array(w_data[W * j:W * (j + 1)] for j in range(k))[w_part]
                               if k > 1 else w_data)

        req = self.sdram
        with m.If(w_busy):
            m.d.comb += [req.valid.eq(1), req.payload.write.eq(1), req.payload.addr.eq(w_addr),
                         req.payload.data.eq(w_chunk)]
            with m.If(req.ready):
                if k > 1:
                    m.d.sync += w_part.eq(Mux(w_part == k - 1, 0, w_part + 1))
                m.d.comb += mw.ready.eq(w_part == k - 1)
        with m.Else():
            m.d.comb += mw.ready.eq(1)                 # the core's writes
            with m.If(held & (left != 0)):
                m.d.comb += [req.valid.eq(1), req.payload.write.eq(0),
                             req.payload.addr.eq(addr)]
                with m.If(req.ready):
                    m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]

        o = self.o_events
        m.d.comb += [o.valid.eq(held & ~sent), o.payload.eq(ev)]
        with m.If(o.valid & o.ready):
            m.d.sync += sent.eq(1)
        done = (sent | o.ready) & ((left == 0) | (left == 1) & req.ready & ~w_busy)
        # take the next event once the one in hand is passed on and asked for
        m.d.comb += self.i_events.ready.eq(~held | done)
        with m.If(self.i_events.ready):
            m.d.sync += held.eq(self.i_events.valid)
            with m.If(self.i_events.valid):
                m.d.sync += [ev.eq(e), sent.eq(0), addr.eq(first[:abits]),
                             left.eq(Mux(e.last, 0, n_reads))]

        # ------------------------------------------------ words to the core
        rd, ww = self.rdata, self.w_words
        if k == 1:
            m.d.comb += [ww.valid.eq(rd.valid), ww.payload.eq(rd.payload),
                         rd.ready.eq(ww.ready)]
        else:
            parts = [Signal(g.width, name=f"part{j}") for j in range(k - 1)]
            have = Signal(range(k))
            m.d.comb += [ww.payload.eq(Cat(*parts, rd.payload)[:p.weight_width]),
                         ww.valid.eq(rd.valid & (have == k - 1)),
                         rd.ready.eq(Mux(have == k - 1, ww.ready, 1))]
            with m.If(rd.valid & rd.ready):
                m.d.sync += have.eq(Mux(have == k - 1, 0, have + 1))
                with m.Switch(have):
                    for j in range(k - 1):
                        with m.Case(j):
                            m.d.sync += parts[j].eq(rd.payload)
        return m
