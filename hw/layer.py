"""A layer core: memories, synapse unit, neuron unit and performance counters.

One core per network layer, generated from the layer's
:class:`~spikeforge.sw.golden.IntLayer` and a folding factor ``P``:

* LIF / IF: two current memories and one state memory, ``P * R`` lanes a
  word (``CoreParams.acc_depth`` words: word ``((g*Hc + y)*Wc + x) // R``
  holds neuron ``(g*P + j, y, x)`` in lane ``(x % R)*P + j``); STCB: ``P``
  accumulator banks; all zeroed by the clear pass after reset;
* the weight memory ``L{n}_weights`` and the neuron memory ``L{n}_neurons`` in
  the layout of :mod:`spikeforge.image` (initialised from the network, writable
  at run time through ``mem_write``).

A LIF / IF conv layer may have two synapse units (``CoreParams.units``; lanes
``2 * C_out`` in a plan): each takes every event and walks its run of the
kernel taps (:meth:`CoreParams.tap_range`), from the weight words of those
taps, into its own copy of each current memory; the scan reads the copies
side by side and adds them.

LIF / IF: the synapse unit sums a step's events into a current memory until
the end-of-step marker, hands it to the neuron unit's scan (threshold, reset,
decay, state write-back, spikes out, marker out) and goes on with the next
step in the other current memory while the scan runs; layer 0, given one
held frame, sums it once and the scan reads it at all ``T`` steps.  An STCB
layer (:class:`~spikeforge.hw.steb.StebUnit`) instead sums its whole input
train (``T`` steps past layer 0, one at layer 0) and then sends ``T`` steps
of STEB spikes.  Cores of different layers run concurrently on successive
steps (and images), joined by FIFOs in :class:`~spikeforge.hw.network.NetworkTop`.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, flipped


from .arith import copies
from .memory import SlicedMemory, SpramMemory, read_data
from .neuron import NeuronUnit
from .steb import StebUnit
from .params import CoreParams, EngineError
from .streams import bits_for
from .synapse import SynapseUnit

__all__ = ["LayerCore", "PERF_LAYOUT", "PERF_FIELDS", "core_write_layout"]

#: levels of registered copies of the scan's ownership for the write data
#: (with a write stage: :attr:`CoreParams.write_stage`)
FREE_LEVELS = 2

PERF_FIELDS = ("busy", "stall", "updates", "events_in", "events_out", "scan")

#: Per-layer performance counters (32 bits each, wrap around), the clear
#: pass excluded: ``busy`` cycles with work in the core (walking events,
#: scanning, spikes or marker to send); ``stall`` cycles in which only
#: output is pending and it is blocked (a held output beat, or the scan
#: waiting on a full spike queue: more than one spike a cycle), while the
#: synapse unit is idle; ``updates`` in-bounds read-modify-writes issued (each covers the
#: P lanes); ``events_in`` input events taken (markers excluded);
#: ``events_out`` spikes sent (markers excluded); ``scan`` cycles of the
#: neuron scan (bank ownership by the neuron unit).
PERF_LAYOUT = data.StructLayout({name: unsigned(32) for name in PERF_FIELDS})


def core_write_layout(addr_bits: int, data_bits: int) -> data.StructLayout:
    """A write into a core's memories: ``which`` 0 = weights, 1 = neuron words."""
    return data.StructLayout({"which": unsigned(1), "addr": unsigned(addr_bits),
                              "data": unsigned(data_bits)})


class LayerCore(wiring.Component):
    """One layer of the engine (module docstring).

    Reset state: clearing (power-up and after a synchronous reset the core
    zeroes its banks, then takes events).  Weight and neuron memories keep
    their contents across resets; parameter words are fetched during a scan, so
    a write takes effect from the next group fetched (write between inferences,
    then reset through the top's ``start``).

    Parameters
    ----------
    params : CoreParams
    weights : list of int
        Initial ``L{n}_weights`` words (:func:`spikeforge.image.weight_words`).
    neurons : list of int
        Initial ``L{n}_neurons`` words (:func:`spikeforge.image.neuron_words`).
    spram : bool
        The weights in the iCE40's SPRAM (:class:`~spikeforge.hw.memory.SpramMemory`:
        not initialised, written by the host; :func:`spikeforge.hw.fit.spram_layers`).
    streamed : bool
        No weight memory: the weight words come in on ``w_words``, in the
        order the synapse unit walks them (from the SDRAM:
        :class:`~spikeforge.hw.weightstream.WeightStreamer`); an fc layer
        with one synapse unit.  Weight writes on ``mem_write`` are ignored
        (they go to the SDRAM).

    Members
    -------
    i_events : In(stream.Signature(params.fmt.layout))
        Input events and end-of-step markers.
    o_events : Out(stream.Signature(params.fmt.layout))
        Output spikes and end-of-step markers (registered valid and payload).
    mem_write : In(stream.Signature(core_write_layout(addr_bits, data_bits)))
        Run-time memory writes; always ready (one write a cycle).
    w_words : In(stream.Signature(params.weight_width))
        Only with ``streamed``: the weight words, one a tap the walker takes.
    clearing : Out(1)
        The clear pass runs; no event is taken.
    perf : Out(PERF_LAYOUT)
        Performance counters (see ``PERF_LAYOUT``), zero after reset.
    """

    def __init__(self, params: CoreParams, weights: list[int], neurons: list[int],
                 spram: bool = False, streamed: bool = False):
        p = params
        if streamed and (not p.streamable or spram):
            raise EngineError(f"layer {p.index}: streamed weights are for an fc LIF / IF layer "
                              "with one synapse unit")
        if not streamed and len(weights) != p.weight_depth:
            raise ValueError(f"layer {p.index}: {len(weights)} weight words, expected "
                             f"{p.weight_depth}")
        if len(neurons) != p.c_out:
            raise ValueError(f"layer {p.index}: {len(neurons)} neuron words, expected {p.c_out}")
        self._p = p
        self._weights = list(weights)
        self._neurons = list(neurons)
        if spram and p.units > 1:
            raise ValueError(f"layer {p.index}: SPRAM weights take one synapse unit")
        self.spram, self.streamed = spram, streamed
        self.addr_bits = bits_for(max(p.weight_depth, p.c_out) - 1)
        self.data_bits = max(p.weight_width, p.neuron_width)
        super().__init__({
            "i_events": In(p.fmt.signature),
            "o_events": Out(p.fmt.signature),
            "mem_write": In(stream.Signature(core_write_layout(self.addr_bits, self.data_bits))),
            "clearing": Out(1),
            "perf": Out(PERF_LAYOUT),
            **({"w_words": In(stream.Signature(p.weight_width))} if streamed else {}),
        })

    @property
    def params(self) -> CoreParams:
        return self._p

    def elaborate(self, platform):
        m = Module()
        p = self._p
        # the synapse units (``p.units``: each walks its share of the kernel
        # taps of every event, into its own copy of the current memories)
        wmems = [SpramMemory(p.weight_width, hi - lo) if self.spram else
                 SlicedMemory(p.weight_width, hi - lo, self._weights[lo:hi])
                 for lo, hi in map(p.weight_rows, range(p.units))] if not self.streamed else []
        # (streamed: the word taken goes into a register, a memory's one-cycle read)
        lats = [wmem.latency for wmem in wmems] if not self.streamed else [1]
        ncopies = [wmem.copies for wmem in wmems] if not self.streamed else [1]
        syns = [SynapseUnit(p, u, write_latency=p.write_stage + p.rmw_stage,
                            weight_latency=lat, read_latency=2 + p.read_stage + p.select_stage,
                            streamed=self.streamed, addr_stage=p.read_stage, w_addr_copies=nc)
                for u, (lat, nc) in enumerate(zip(lats, ncopies))]
        if self.streamed:
            w_q = Signal(p.weight_width, name="w_q", reset_less=True)
            ww = self.w_words
            m.d.comb += [syns[0].w_ready.eq(ww.valid), ww.ready.eq(syns[0].w_take),
                         syns[0].w_data.eq(w_q)]
            with m.If(syns[0].w_take):
                m.d.sync += w_q.eq(ww.payload)
        for u, unit in enumerate(syns):
            m.submodules["syn" if u == 0 else f"syn{u}"] = unit
        syn = syns[0]
        m.submodules.neu = neu = StebUnit(p) if p.stcb else NeuronUnit(p)

        # ---------------------------------------------------------- memories
        # the weights in column slices of the block RAM's geometry (no
        # multiplexer after a deep memory: see hw/memory.py); each synapse
        # unit holds the words of its own taps
        nmem = Memory(shape=unsigned(p.neuron_width), depth=p.c_out, init=self._neurons)
        m.submodules.neurons = nmem
        n_rd, n_wr = nmem.read_port(), nmem.write_port()
        mw = self.mem_write
        for u, (unit, wmem) in enumerate(zip(syns, wmems)):
            lo, hi = p.weight_rows(u)
            m.submodules["weights" if u == 0 else f"weights{u}"] = wmem
            a = mw.payload.addr
            mine = (a >= lo) & (a < hi) if p.units > 1 else C(1, 1)
            if wmem.copies > 1:   # element by element (a unit's memory
                # holds only its taps' words: narrower addresses than the unit's)
                m.d.comb += [wmem.rd_addrs[i].eq(unit.w_addrs[i]) for i in range(wmem.copies)]
            m.d.comb += [
                wmem.rd_addr.eq(unit.w_addr), unit.w_data.eq(wmem.rd_data),
                wmem.wr_addr.eq(a - lo), wmem.wr_data.eq(mw.payload.data),
                wmem.wr_en.eq(mw.valid & (mw.payload.which == 0) & mine),
            ]
        m.d.comb += [
            mw.ready.eq(1),
            n_rd.addr.eq(neu.p_addr),
            neu.p_data.eq(read_data(m, platform, n_rd, n_wr, "neurons")),
            n_wr.addr.eq(mw.payload.addr), n_wr.data.eq(mw.payload.data),
            n_wr.en.eq(mw.valid & (mw.payload.which == 1)),
        ]
        if len(syns) == 1:
            wiring.connect(m, syn.events, flipped(self.i_events))
        else:   # every unit takes every event, all in the same cycle
            i = self.i_events
            ready = [unit.events.ready for unit in syns]
            m.d.comb += i.ready.eq(Cat(ready).all())
            for u, unit in enumerate(syns):
                others = Cat(r for v, r in enumerate(ready) if v != u).all()
                m.d.comb += [unit.events.valid.eq(i.valid & others),
                             unit.events.payload.eq(i.payload)]
        wiring.connect(m, flipped(self.o_events), neu.events)
        if p.stcb:
            clearing = self._stcb_banks(m, platform, syn, neu)
        else:
            clearing = self._lif_memories(m, platform, syns, neu)
        m.d.comb += self.clearing.eq(clearing)

        # ---------------------------------------------------------- counters
        perf = self.perf
        o = self.o_events
        syn_busy = Cat(unit.busy for unit in syns).any()
        with m.If((syn_busy | neu.busy) & ~clearing):
            m.d.sync += perf.busy.eq(perf.busy + 1)
        with m.If(neu.stall & ~syn_busy):
            m.d.sync += perf.stall.eq(perf.stall + 1)
        m.d.sync += perf.updates.eq(perf.updates + sum(unit.update for unit in syns))
        with m.If(syn.accepted):
            m.d.sync += perf.events_in.eq(perf.events_in + 1)
        with m.If(o.valid & o.ready & ~o.payload.last):
            m.d.sync += perf.events_out.eq(perf.events_out + 1)
        with m.If(neu.mem_busy & ~clearing):
            m.d.sync += perf.scan.eq(perf.scan + 1)
        return m

    def _stcb_banks(self, m, platform, syn, neu):
        """STCB: one accumulator bank per lane, owned by the synapse unit while
        it sums the input train, by the STEB unit while it scans."""
        p = self._p
        own = neu.mem_busy
        for j in range(p.P):
            bank = Memory(shape=signed(p.acc_width), depth=p.acc_depth, init=[])
            m.submodules[f"bank{j}"] = bank
            rd, wr = bank.read_port(), bank.write_port()
            rd_data = read_data(m, platform, rd, wr, f"bank{j}")
            rd_q = Signal.like(rd_data, name=f"bank{j}_q", reset_less=True)  # synapse side
            m.d.sync += rd_q.eq(rd_data)
            m.d.comb += [
                rd.addr.eq(Mux(own, neu.rd_addr, syn.rd_addr)),
                rd.en.eq(Mux(own, neu.rd_en, 1)),
                syn.rd_data[j].eq(rd_q),
                neu.rd_data[j].eq(rd_data),
                wr.addr.eq(Mux(own, neu.wr_addr, syn.wr_addr)),
                wr.data.eq(Mux(own, neu.wr_data[j], syn.wr_data[j])),
                wr.en.eq(syn.wr_en | neu.wr_en),
            ]

        clearing = Signal()
        step = Signal.like(syn.step)
        m.d.comb += syn.step.eq(step)
        with m.FSM(init="CLEAR_GO"):
            _clear_states(m, neu, clearing, "ACCUM")
            with m.State("ACCUM"):
                m.d.comb += syn.enable.eq(1)
                # the previous step's spikes must be out before the next scan
                with m.If(syn.at_marker & ~neu.busy):
                    if p.in_steps > 1:  # an STCB layer past layer 0 sums its whole input train
                        with m.If(step != p.in_steps - 1):
                            m.d.comb += syn.resume.eq(1)
                            m.d.sync += step.eq(step + 1)
                        with m.Else():
                            m.next = "SCAN_GO"
                    else:
                        m.next = "SCAN_GO"
            with m.State("SCAN_GO"):
                m.d.comb += neu.start.eq(1)
                m.next = "SCAN_WAIT"
            with m.State("SCAN_WAIT"):
                with m.If(~neu.mem_busy):
                    m.d.comb += syn.resume.eq(1)
                    m.d.sync += step.eq(0)
                    m.next = "ACCUM"
        return clearing

    def _lif_memories(self, m, platform, syns, neu):
        """LIF / IF: ``cur_banks`` current memories and one state memory, all
        lanes of a word side by side.

        The synapse unit fills one current memory with a step's sum; at the
        step's marker that memory is handed to the scan and (two memories) the
        synapse unit goes on with the next step in the other one while the scan
        runs.  A scan reads a current and the state at the same address,
        writes the state and zeroes the current (layer 0, given a hold marker,
        keeps its current for all ``T`` scans of an image and zeroes it at the
        last).  The scan of an image's last step leaves the state zero, so the
        next image starts clean.
        """
        p = self._p
        nb, T = p.cur_banks, p.timesteps
        state = Memory(shape=data.ArrayLayout(signed(p.state_width), p.P * p.R),
                       depth=p.acc_depth, init=[])
        m.submodules.state = state
        s_rd, s_wr = state.read_port(), state.write_port()
        # (``read_stage``: every read address and enable from a register of
        # its memory's own, a cycle later; the units issue their reads a
        # cycle earlier)
        reads = m.d.sync if p.read_stage else m.d.comb
        s_addr, s_en = _read_regs(s_rd, "state")
        reads += [s_addr.eq(neu.rd_addr), s_en.eq(neu.rd_en)]
        m.d.comb += [
            s_rd.addr.eq(s_addr), s_rd.en.eq(s_en),
            neu.rd_data.eq(read_data(m, platform, s_rd, s_wr, "state")),
            s_wr.addr.eq(neu.wr_addr), s_wr.data.eq(neu.wr_data), s_wr.en.eq(neu.wr_en),
        ]

        clearing = Signal()
        full = Signal(nb)                  # current memory b holds a finished step
        syn_bank = Signal(range(nb))       # the memory the synapse unit fills
        scan_bank = Signal(range(nb))      # the memory the scan reads
        scan_on = Signal()                 # a scan owns scan_bank
        keep = Signal()                    # the scan leaves the current in place
        hold = Signal(nb)                  # memory b holds a frame for all T steps
        t = Signal(range(T))               # step of the scan (static layers: of the image)
        # which memories the scan owns, kept in registers (timing: the owner
        # selects every address, enable and data bit of a memory, hundreds of
        # loads; a flip-flop drives them, not a comparison):
        # own[b] == clearing | scan_on & (scan_bank == b) in every cycle, and
        # free == ~own, a second register for the write data's zeroing (most
        # of the loads), so the addresses do not wait on the data's net
        own = Signal(nb, init=(1 << nb) - 1)
        free = Signal(nb, init=0)
        # and ``free`` in two levels of copies for the write data (two cycles
        # late: the scan writes a memory three or more cycles after it takes
        # it, the synapse unit four or more after the scan gives it back)
        NL = p.P * p.R
        frees = [copies(m, free[b], f"free{b}", levels=FREE_LEVELS, bits=NL * p.cur_width)
                 for b in range(nb)] if p.write_stage else []
        words = []   # words[b][u]: current memory b's copy of synapse unit u, registered
        # the units' write data, registered with ``write_stage``
        syn_q = [syn.wr_data for syn in syns]
        if p.write_stage:
            syn_q = [Signal.like(syn.wr_data, name=f"syn{u}_wd", reset_less=True)
                     for u, syn in enumerate(syns)]
            m.d.sync += [q.eq(syn.wr_data) for q, syn in zip(syn_q, syns)]
        for b in range(nb):
            words.append([])
            for u, syn in enumerate(syns):
                mem = Memory(shape=data.ArrayLayout(signed(p.cur_width), p.P * p.R),
                             depth=p.acc_depth, init=[])
                name = f"cur{b}" if u == 0 else f"cur{b}_{u}"
                m.submodules[name] = mem
                rd, wr = mem.read_port(), mem.write_port()
                scan_owns = own[b]
                rd_addr, rd_en = _read_regs(rd, name)
                reads += [
                    rd_addr.eq(Mux(scan_owns, neu.rd_addr, syn.rd_addr)),
                    rd_en.eq(Mux(scan_owns, neu.rd_en, 1)),
                ]
                m.d.comb += [rd.addr.eq(rd_addr), rd.en.eq(rd_en)]
                # the write, registered in front of the memory (timing: the
                # selects and the update's adders, then a wide word's route to
                # blocks spread over the block-RAM rows, took the routed
                # default engine's whole period); the synapse unit forwards
                # the write in flight, and a scan writes an address after its
                # read and never reads it again.  The data's register is the
                # unit's, ``syn_q[u]``, for all the memories, each zeroing it
                # behind (the update's sum went to a register by each of them,
                # rows apart: its route to the farther one was a ULX3S
                # build's critical path; ``free``'s copies are a cycle
                # fresher so, and a cycle is all they need)
                # (a narrow core writes directly, zeroing through ``free``)
                wd = m.d.sync if p.write_stage else m.d.comb
                wr_addr = Signal.like(wr.addr, name=f"cur{b}_{u}_wa", reset_less=True)
                wr_data = Signal.like(wr.data, name=f"cur{b}_{u}_wd")
                wr_en = Signal(name=f"cur{b}_{u}_we")
                wd += [
                    wr_addr.eq(Mux(scan_owns, neu.wr_addr, syn.wr_addr)),
                    wr_en.eq(Mux(scan_owns, neu.wr_en & (~keep | clearing),
                                 syn.wr_en & (syn_bank == b))),
                ]
                zero = frees[b] if p.write_stage else [free[b]]
                m.d.comb += [wr_data[n].eq(Mux(zero[n * len(zero) // NL], syn_q[u][n], 0))
                             for n in range(NL)]
                if p.rmw_stage:   # a second register, for the placer to put by the blocks
                    wr_addr, wr_data, wr_en = _registered(m, (wr_addr, wr_data, wr_en),
                                                          f"cur{b}_{u}_w2")
                m.d.comb += [wr.addr.eq(wr_addr), wr.data.eq(wr_data), wr.en.eq(wr_en)]
                # each memory's word is registered before the units' selects
                # (timing: a block's output is slow and the multiplexer was the
                # critical path of a core routed alone)
                rd_q = Signal.like(rd.data, name=f"{name}_q", reset_less=True)
                m.d.sync += rd_q.eq(read_data(m, platform, rd, wr, name))
                words[b].append(rd_q)

        # the selects of the units' words, from copies of ``syn_bank`` and
        # ``scan_bank`` (``copies``, two levels: in a wide core each drives
        # a sixteenth of the lanes; a select drives every bit of a word, and
        # the routed default engine's critical path was ``syn_bank`` reaching
        # a far lane: 13 ns of routing).  The copies are two cycles late: a bank changes only at
        # a hand-over or a scan's end, with no read in flight, and the unit's
        # next read data comes three or more cycles later
        # The scan's current is the sum of the units' copies (each holds the
        # sum over its taps; the whole sum fits ``cur_width``, so the copies'
        # partial sums do too)
        sels = {nm: copies(m, bank, nm, levels=2, bits=NL * p.cur_width) if nb > 1
                else [C(0, 1)] for bank, nm in ((syn_bank, "syn_bank"), (scan_bank, "scan_bank"))}

        def word(u, n, nm):
            return Array(w[u][n] for w in words)[sels[nm][n * len(sels[nm]) // NL]]
        for n in range(NL):
            # (with ``select_stage`` the selected word registered once more,
            # by the units' adders: their read is issued a cycle earlier)
            dom = m.d.sync if p.select_stage else m.d.comb
            dom += [syn.rd_data[n].eq(word(u, n, "syn_bank")) for u, syn in enumerate(syns)]
            total = word(0, n, "scan_bank")
            for u in range(1, len(syns)):
                total = total + word(u, n, "scan_bank")
            m.d.comb += neu.cur_data[n].eq(total)

        # the synapse unit takes events into a free memory; at a marker it hands
        # the memory over (``handover``) and goes on in the next one; the scan
        # gives a memory back (``release``).  ``enable`` == ~clearing &
        # ~full[syn_bank] in every cycle, a register set from the next cycle's
        # values (timing: it decides the input's ``ready``)
        enable = Signal()
        handover, release, leaving = Signal(), Signal(), Signal()
        at_marker = Cat(syn.at_marker for syn in syns).all()
        m.d.comb += [syn.enable.eq(enable) for syn in syns]
        m.d.comb += [syn.resume.eq(handover) for syn in syns]
        m.d.comb += handover.eq(at_marker & enable)
        full_next = Signal(nb)
        bank_next = (syn_bank + handover)[:len(syn_bank)] if nb > 1 else syn_bank
        m.d.comb += full_next.eq((full | (handover << syn_bank)) & ~(release << scan_bank))
        m.d.sync += [full.eq(full_next), syn_bank.eq(bank_next),
                     enable.eq((~clearing | leaving) & ~full_next.bit_select(bank_next, 1))]
        if p.static:
            with m.If(handover):
                m.d.sync += hold.bit_select(syn_bank, 1).eq(syns[0].hold)

        # the scan takes a full memory once the previous step's spikes are out
        none_owned = [own.eq(0), free.eq((1 << nb) - 1)]
        with m.FSM(init="CLEAR_GO"):
            # (the clear pass waits for the copies of ``free`` after a reset)
            _clear_states(m, neu, clearing, "IDLE", done=none_owned, leaving=leaving,
                          wait=FREE_LEVELS if p.write_stage else 0)
            with m.State("IDLE"):
                with m.If(full.bit_select(scan_bank, 1) & ~neu.busy):
                    m.d.comb += [neu.start.eq(1), neu.final.eq(t == T - 1)]
                    m.d.sync += [scan_on.eq(1), keep.eq(hold.bit_select(scan_bank, 1) & (t != T - 1))]
                    onehot = Cat(scan_bank == b for b in range(nb))
                    m.d.sync += [own.eq(onehot), free.eq(~onehot)]
                    m.next = "SCAN"
            with m.State("SCAN"):
                with m.If(~neu.mem_busy):
                    m.d.sync += [scan_on.eq(0), t.eq(Mux(t == T - 1, 0, t + 1))] + none_owned
                    with m.If(~keep):
                        m.d.comb += release.eq(1)
                        if nb > 1:
                            m.d.sync += scan_bank.eq(scan_bank + 1)
                    m.next = "IDLE"
        return clearing


def _read_regs(port, name: str) -> tuple:
    """A read port's address and enable, as signals (registers with
    ``read_stage``; the enable's reset value is 1, a read)."""
    return (Signal.like(port.addr, name=f"{name}_ra", reset_less=True),
            Signal(name=f"{name}_re", init=1))


def _registered(m, values, name: str) -> tuple:
    """``values`` (signals) each through a register of its own (data not
    reset; a one-bit value, an enable, reset)."""
    out = []
    for i, v in enumerate(values):
        reg = Signal.like(v, name=f"{name}_{i}", reset_less=len(Value.cast(v)) > 1)
        m.d.sync += reg.eq(v)
        out.append(reg)
    return tuple(out)


def _clear_states(m, neu, clearing, then: str, done=(), leaving=None, wait: int = 0) -> None:
    """The first states of a core's FSM: ``wait`` cycles, pulse the scan
    unit's clear pass, hold ``clearing`` until it ends, then go to state
    ``then`` (with the ``sync`` statements ``done``; ``leaving``, if given, is
    raised in that cycle)."""
    for k in range(wait):
        with m.State("CLEAR_GO" if k == 0 else f"CLEAR_PRE{k}"):
            m.d.comb += clearing.eq(1)
            m.next = f"CLEAR_PRE{k + 1}" if k + 1 < wait else "CLEAR_PASS"
    with m.State("CLEAR_PASS" if wait else "CLEAR_GO"):
        m.d.comb += [neu.clear.eq(1), clearing.eq(1)]
        m.next = "CLEAR_WAIT"
    with m.State("CLEAR_WAIT"):
        m.d.comb += clearing.eq(1)
        with m.If(~neu.mem_busy):
            m.d.sync += list(done)
            if leaving is not None:
                m.d.comb += leaving.eq(1)
            m.next = then
