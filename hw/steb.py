"""The STEB unit: the neuron side of an STCB layer (STCSNN).

An STCB layer's synapse unit accumulates the whole input spike train with the
CAB shifts (event of input step ``t`` adds ``w << (T-1-t)``; layer 0 the
pixel planes), so after the last input step each bank word holds
``acc = conv(x)`` for the value ``x = sum_t s[t] << (T-1-t)``.  This unit then

1. *compute pass*: per neuron ``u0 = (acc + bias) >> r`` (``r`` the channel's
   CAB rescale shift), ``y = clamp(u0, 0, 2**T - 1)`` (the STEB's output value:
   with thresholds ``2**(T-1) >> t`` and reset by subtraction, its spikes are
   the binary digits of ``y``, MSB first), max over each pool window (max
   commutes with the clamp); ``y`` of pooled neuron ``i`` (scan order) is
   written to bank word ``i`` -- never a word still to be read, because a
   window's index is at most the address of its first neuron;
2. *T emission passes*: pass ``t`` reads the ``y`` words in order and sends a
   spike for every lane whose bit ``T-1-t`` is set, then an end-of-step marker.

Shifts, adds and compares only.
"""

from __future__ import annotations

from amaranth import *
from amaranth.hdl import ResetInserter
from amaranth.lib import fifo, wiring

from spikeforge.layouts import field_slices, neuron_layout

from .neuron import (param_loader, queue_layout, queue_word, scan_unit_members,
                     spike_emitter, window_counters)
from .params import CoreParams
from .streams import bits_for

__all__ = ["StebUnit", "QUEUE_DEPTH"]

#: entries of the spike queue between the emission passes and the emitter
QUEUE_DEPTH = 4


class StebUnit(wiring.Component):
    """Compute pass and ``T`` emission passes of an STCB layer (module docstring).

    Same members as :class:`~spikeforge.hw.neuron.NeuronUnit`: a ``start``
    pulse runs the compute pass and all ``T`` emission passes (each ending with
    its marker); ``mem_busy`` stays high until the last pass has read its
    words.  ``clear`` zeroes every bank word.  The neuron words' ``bias``
    (bits ``[S, S + acc_bits)``) and ``shift`` (bits ``[S + acc_bits, +6)``)
    fields are used; ``theta`` is not.

    Parameters
    ----------
    params : CoreParams
        An STCB layer's parameters.

    Members
    -------
    start : In(1)
    clear : In(1)
    mem_busy : Out(1)
    busy : Out(1)
    stall : Out(1)
    rd_addr : Out(unsigned), rd_en : Out(1)
    rd_data : In(ArrayLayout(signed(A), P))
    wr_addr : Out(unsigned), wr_en : Out(1)
    wr_data : Out(ArrayLayout(signed(A), P))
    p_addr : Out(unsigned)
    p_data : In(unsigned(S + acc_bits + 6))
    events : Out(stream.Signature(params.fmt.layout))
    """

    def __init__(self, params: CoreParams):
        if not params.stcb:
            raise ValueError("StebUnit takes the parameters of an STCB layer")
        self._p = p = params
        super().__init__(scan_unit_members(p, p.acc_width))

    def elaborate(self, platform):
        m = Module()
        p = self._p
        P, G, S, T = p.P, p.groups, p.state_bits, p.timesteps
        ho, wo = p.out_size
        n_win = G * ho * wo
        ymax = (1 << T) - 1
        abits = len(self.rd_addr)

        consume = Signal()
        cur, l_full = param_loader(m, p, self.p_data, self.p_addr, consume, self.clear,
                                   field_slices(neuron_layout(S, p.acc_bits), "bias", "shift"))

        computing, emitting, clearing = Signal(), Signal(), Signal()
        marker_pending = Signal()
        adv = Signal()

        # ---------------------------------------------------------- compute pass
        issue = Signal()
        wc_ = window_counters(m, p, issue, self.start)
        widx = Signal(abits)          # index of the window being read
        m.d.comb += [issue.eq(computing & (~wc_.first | l_full)),
                     consume.eq(computing & wc_.first & l_full)]   # == issue & first
        with m.If(issue):
            with m.If(wc_.win_end):
                m.d.sync += widx.eq(widx + 1)
            with m.If(wc_.last):
                m.d.sync += computing.eq(0)
        c1, win1 = Signal(), Signal()
        widx1 = Signal(abits)
        m.d.sync += [c1.eq(issue), win1.eq(wc_.win_end), widx1.eq(widx)]
        run = [Signal(T, name=f"run{j}") for j in range(P)]
        newmax = [Signal(T, name=f"max{j}") for j in range(P)]
        for j in range(P):
            u0 = (self.rd_data[j] + cur["bias"][j]) >> cur["shift"][j]
            y = Mux(u0 < 0, 0, Mux(u0 > ymax, ymax, u0[:T]))
            m.d.comb += newmax[j].eq(Mux(y > run[j], y, run[j]))
            with m.If(c1):
                m.d.sync += run[j].eq(Mux(win1, 0, newmax[j]))

        # ---------------------------------------------------------- emission passes
        e_issuing = Signal()
        e_addr = Signal(abits)
        e_g = Signal(range(G))
        e_py, e_px = Signal(range(ho)), Signal(range(wo))
        e_cb = Signal(bits_for(G * P))
        t = Signal(range(T))
        e_issue = e_issuing & adv
        with m.If(e_issue):
            m.d.sync += e_addr.eq(e_addr + 1)
            with m.If(e_addr == n_win - 1):
                m.d.sync += e_issuing.eq(0)
            with m.If(e_px != wo - 1):
                m.d.sync += e_px.eq(e_px + 1)
            with m.Else():
                m.d.sync += e_px.eq(0)
                with m.If(e_py != ho - 1):
                    m.d.sync += e_py.eq(e_py + 1)
                with m.Else():
                    m.d.sync += [e_py.eq(0), e_g.eq(e_g + 1), e_cb.eq(e_cb + P)]
        v1 = Signal()
        py1, px1 = Signal.like(e_py), Signal.like(e_px)
        cb1 = Signal.like(e_cb)
        with m.If(adv):
            m.d.sync += [v1.eq(e_issue), py1.eq(e_py), px1.eq(e_px), cb1.eq(e_cb)]
        bit = Signal(range(T))  # pass t sends digit T-1-t of y (MSB first)
        m.d.comb += bit.eq(T - 1 - t)
        vec = Cat((self.rd_data[j][:T] >> bit)[0] & (cb1 + j < p.c_out) for j in range(P))
        q_layout = queue_layout(p)
        queue = fifo.SyncFIFO(width=q_layout.size, depth=QUEUE_DEPTH)
        m.submodules.queue = ResetInserter(self.clear)(queue)
        q_in = Signal(q_layout)
        push = v1 & (vec != 0)
        m.d.comb += [
            q_in.vec.eq(vec), q_in.cb.eq(cb1), q_in.py.eq(py1), q_in.px.eq(px1),
            queue.w_data.eq(queue_word(m, p, q_in)),
            queue.w_en.eq(push),
            adv.eq(~(push & ~queue.w_rdy)),
        ]
        marker_sent = Signal()
        e_busy = spike_emitter(m, p, queue, q_layout, self.events,
                               marker_pending & ~e_issuing & ~v1, marker_sent, self.clear)

        # ---------------------------------------------------------- sequencing
        pass_start = Signal()
        with m.If(c1 & ~computing & win1 & (widx1 == n_win - 1)):
            # the last window's value is written this cycle: emission starts
            m.d.comb += pass_start.eq(1)
            m.d.sync += t.eq(0)
        with m.If(marker_sent):
            m.d.sync += marker_pending.eq(0)
            with m.If(t != T - 1):
                m.d.comb += pass_start.eq(1)
                m.d.sync += t.eq(t + 1)
            with m.Else():
                m.d.sync += emitting.eq(0)
        with m.If(pass_start):
            m.d.sync += [emitting.eq(1), e_issuing.eq(1), marker_pending.eq(1), e_addr.eq(0),
                         e_g.eq(0), e_py.eq(0), e_px.eq(0), e_cb.eq(0)]

        # ---------------------------------------------------------- bank ports
        c_addr = Signal(abits)
        with m.If(clearing):
            m.d.sync += c_addr.eq(c_addr + 1)
            with m.If(c_addr == p.acc_depth - 1):
                m.d.sync += clearing.eq(0)
            m.d.comb += [self.wr_addr.eq(c_addr), self.wr_en.eq(1)]
            m.d.comb += [self.wr_data[j].eq(0) for j in range(P)]
        with m.Else():
            m.d.comb += [self.wr_addr.eq(widx1), self.wr_en.eq(c1 & win1)]
            m.d.comb += [self.wr_data[j].eq(newmax[j]) for j in range(P)]
        with m.If(emitting):
            m.d.comb += [self.rd_addr.eq(e_addr), self.rd_en.eq(adv)]
        with m.Else():
            m.d.comb += [self.rd_addr.eq(wc_.addr), self.rd_en.eq(1)]

        with m.If(self.start):
            m.d.sync += [computing.eq(1), widx.eq(0)] + [r.eq(0) for r in run]
        with m.If(self.clear):
            m.d.sync += [clearing.eq(1), c_addr.eq(0), computing.eq(0), emitting.eq(0),
                         e_issuing.eq(0), marker_pending.eq(0), v1.eq(0), c1.eq(0)]

        m.d.comb += [
            self.mem_busy.eq(computing | c1 | emitting | clearing),
            self.busy.eq(computing | c1 | emitting | clearing | e_busy | marker_pending),
            self.stall.eq((self.events.valid & ~self.events.ready) | (v1 & ~adv)),
        ]
        return m
