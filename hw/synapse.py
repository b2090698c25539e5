"""The synapse unit: event-driven, accumulate-only membrane updates.

For each input event ``(c, y, x, shift)`` the unit walks the kernel taps
``(dy, dx)`` and the channel groups ``g`` (innermost) and, for every tap that
lands inside the layer's output, does one read-modify-write on the ``P``
membrane banks (lane ``j`` holds the neurons of channel ``g*P + j``)::

    acc[g, y + pad - dy, x + pad - dx] += w[g*P + j, c, dy, dx] << shift

One update per lane per cycle: the weight word and the accumulator are read
in the walk cycle and written back in the next; the weight address is
``((dy*k + dx)*C_in + c)*G + g`` (:mod:`spikeforge.image`), counted from the
unit's first tap: a unit that walks taps ``[t0, t1)`` holds those words only.

The CAB shift.  Layer 0 takes a ``B``-bit pixel as ``B`` bit-plane events
(MSB first); plane ``b`` carries ``shift = B - 1 - b`` and adds
``w << (B-1-b)``.  Summed over the planes this is the CAB's Horner form
``acc = 2*acc + conv(plane_b)`` unrolled: ``sum_b conv(plane_b) << (B-1-b) =
conv(sum_b plane_b << (B-1-b)) = conv(x)``, so multi-bit inputs need adds and
a barrel shift only, and the order of the events does not matter.  An STCB
layer's input spike train is accumulated the same way: step ``t`` of the
train (MSB first) adds ``w << (T-1-t)`` and the whole train is one sum.

Word events (``in_lanes = Q > 1``, :mod:`spikeforge.hw.streams`).  A LIF / IF
layer 0 takes all ``B`` planes of a value at once (``mask`` = the value) and
adds ``sum_i mask[i] * (w << i)``; a conv layer after a LIF / IF layer takes
``Q`` channels' spikes at one position and adds, per lane, the sum of the
weights of the channels in ``mask`` (the weight word holds ``Q * P``
weights).  The terms go through a pipelined adder tree (a register every two
levels); the memory read is issued as many cycles late, so the
read-modify-write and its forwarding are unchanged.  A memory word may hold
``R`` positions (``CoreParams.R``): the tap's position selects the lanes that
add.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .arith import adder_trees, const_mul, copies, signed_bits
from .memory import ecp5_in_lutram
from .params import CoreParams
from .streams import bits_for

__all__ = ["SynapseUnit"]


class SynapseUnit(wiring.Component):
    """Walks taps and lane groups of each input event; read-modify-write on the banks.

    The memories live in the layer core; all ``P`` banks share one address.
    Pipeline: a two-stage event decoder (fc flattening, base addresses: sums of
    shifts, no multiplier), the tap walker (issues the weight read), the
    weight register (or a word event's adder tree), then the update stage
    (adds and writes back).  Neither memory's output drives logic directly:
    the weight word and the bank word are registered first (timing; the bank
    word by the core), so the bank read is issued two cycles before its
    update.  It returns the word as it was before the writes of the two
    updates in between, so the last two written words are kept in registers
    and forwarded, the newer first, when the update hits the same address
    (read-after-write forwarding: back-to-back events on one neuron, e.g. an
    fc layer with ``G = 1``, stay exact).  A core that registers the writes
    in front of its memories (``write_latency`` = 1) has one more write in
    flight: the last three are forwarded; a core that also registers the
    word it selects from its memories (``select_stage``), four; a core that
    registers the word twice each way (``read_latency`` = 3,
    ``write_latency`` = 2), five.

    At an end-of-step marker the unit stops taking events, and once its last
    update is written (into the memory, past the core's write register) it
    raises ``at_marker`` until ``resume``.

    Parameters
    ----------
    params : CoreParams
    unit : int
        Which share of the kernel taps (:meth:`CoreParams.tap_range`).
    write_latency : int
        Cycles between ``wr_*`` and the memory's write (0 to 2).
    weight_latency : int
        Cycles between ``w_addr`` and its ``w_data`` (1, more for a weight
        memory whose read is pipelined: :class:`~spikeforge.hw.memory.SlicedMemory`).
    streamed : bool
        The weights come as a stream (``w_ready``, ``w_take``), not from a
        memory of fixed latency.
    read_latency : int
        Cycles between ``rd_addr`` and its ``rd_data`` (2: the core registers
        the memory's word; 3: also the address, ``read_stage``, or the
        selected word, ``select_stage``; 4: both).  The writes of the last
        ``read_latency - addr_stage + write_latency`` updates are forwarded.
    addr_stage : int
        1 when the first of those cycles is a register in front of the
        memory's address (``read_stage``): the memory reads a cycle after
        ``rd_addr``, and no more writes are in flight at its read.
    w_addr_copies : int
        Registers holding the weight address (``w_addrs``; 1: ``w_addr``
        alone), for a weight memory of many blocks: each copy drives a share
        of them (:func:`~spikeforge.hw.memory.addr_copies`), in the same cycle.

    Members
    -------
    events : In(stream.Signature(params.fmt.layout))
        Input spike events and end-of-step markers.
    enable : In(1)
        Take events (the core holds it low while clearing).
    resume : In(1)
        Drop the held marker and go on with the next step's events.
    at_marker : Out(1)
        A marker has been taken and every earlier update is written.
    hold : Out(1)
        With ``at_marker``: the marker's ``shift`` field is 1 (a hold marker).
    busy : Out(1)
        Walking an event or an update in flight.
    update : Out(1)
        Strobe: one in-bounds read-modify-write (``P`` lanes) issued this cycle.
    accepted : Out(1)
        Strobe: one event (not a marker) entered the walker this cycle.
    rd_addr : Out(unsigned)
        Bank read address (all banks), data ``read_latency`` cycles later.
    rd_data : In(ArrayLayout(signed(cur_width), P * R))
        Current memory read data (word of ``R`` positions x ``P`` lanes),
        registered by the core after each memory (so no block-RAM output
        drives a multiplexer or this unit's adders).
    wr_addr : Out(unsigned), wr_en : Out(1)
        Bank write address and enable (all banks).
    wr_data : Out(ArrayLayout(signed(cur_width), P * R))
        Current memory write data (only the tap's position changes).
    w_addr : Out(unsigned)
        Weight memory read address (in this unit's words,
        :meth:`CoreParams.weight_rows`), data ``weight_latency`` cycles later.
    w_data : In(unsigned(P * weight_bits))
        Weight word, lane ``j`` in bits ``[j*W, (j+1)*W)``.
    w_ready : In(1)
        With ``streamed``: the weight word of the walker's tap is there
        (unused otherwise: a memory always has it).  Weights streamed in (from the SDRAM: the core's
        ``w_words``) come when they come: while it is low the walker holds
        its tap and issues nothing (a bubble in the update pipeline).
    w_take : Out(1)
        Strobe: the walker takes its tap's weight word this cycle (a streamed
        word is consumed; its data is expected on ``w_data`` a cycle later).
    step : In(range(in_steps))
        Input step ``t`` of an STCB layer past layer 0: its events add
        ``w << (T - 1 - t)`` (the event's ``shift`` field is not used there).

    Reset: idle, no marker held; the decoder and walker empty.
    """

    def __init__(self, params: CoreParams, unit: int = 0, write_latency: int = 0,
                 weight_latency: int = 1, read_latency: int = 2, streamed: bool = False,
                 addr_stage: int = 0, w_addr_copies: int = 1):
        self._p = p = params
        self._streamed = streamed
        self._taps = p.tap_range(unit)
        self._unit = unit
        self._wlat = write_latency
        self._rlat = weight_latency
        self._blat = read_latency
        self._astage = addr_stage
        self._wcopies = w_addr_copies
        acc = data.ArrayLayout(signed(p.cur_width), p.P * p.R)
        abits = bits_for(p.acc_depth - 1)
        super().__init__({
            "events": In(p.fmt.signature),
            "enable": In(1),
            "resume": In(1),
            "at_marker": Out(1),
            "hold": Out(1),
            "busy": Out(1),
            "update": Out(1),
            "accepted": Out(1),
            "rd_addr": Out(abits),
            "rd_data": In(acc),
            "wr_addr": Out(abits),
            "wr_en": Out(1),
            "wr_data": Out(acc),
            "w_addr": Out(bits_for(p.weight_depth - 1)),
            **({"w_addrs": Out(data.ArrayLayout(bits_for(p.weight_depth - 1), w_addr_copies))}
               if w_addr_copies > 1 else {}),
            "w_data": In(p.weight_width),
            "w_ready": In(1, init=1),
            "w_take": Out(1),
            "step": In(range(max(1, p.in_steps))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        G, k, hw = p.groups, p.k, p.hc * p.wc
        cin_bits = bits_for(p.c_in - 1)
        pos_bits = bits_for(max(p.in_shape[1], p.in_shape[2]) + p.pad) + 1
        waddr_bits = bits_for(p.weight_depth)
        span = (k + 1) * (p.wc + 1)
        addr_shape = signed(signed_bits(-span, (G + 1) * hw + span))

        # ---------------------------------------------------------- decode, 2 stages
        take = Signal()
        d1_valid, d1_last = Signal(name="d1_valid"), Signal(name="d1_last")
        # data registers (here and below) are not reset: a valid bit or the
        # walker's ``active`` says when they hold something, so ``start`` (a
        # synchronous reset of the whole engine) fans out to control only
        dreg = dict(reset_less=True)
        d1_cin = Signal(cin_bits, **dreg)
        d1_oy, d1_ox = Signal(pos_bits, **dreg), Signal(pos_bits, **dreg)
        d1_shift = Signal(p.fmt.shift_bits, **dreg)
        Q, W = p.in_lanes, p.weight_bits
        d1_mask, d2_mask = Signal(Q, **dreg), Signal(Q, **dreg)
        d2_valid, d2_last = Signal(name="d2_valid"), Signal(name="d2_last")
        d2_wbase = Signal(waddr_bits, **dreg)
        d2_e0 = Signal(addr_shape, **dreg)
        d2_oy, d2_ox = Signal(signed(pos_bits + 1), **dreg), Signal(signed(pos_bits + 1), **dreg)
        d2_shift = Signal(p.fmt.shift_bits, **dreg)

        d_adv = ~d2_valid | take
        ev = self.events.payload
        m.d.comb += self.events.ready.eq(d_adv)
        with m.If(d_adv):
            m.d.sync += d1_valid.eq(self.events.valid)
            m.d.sync += [d1_last.eq(ev.last), d1_shift.eq(ev.shift), d1_mask.eq(ev.mask[:Q])]
            if p.flatten:
                _, hp, wp = p.in_shape
                m.d.sync += [d1_cin.eq(const_mul(const_mul(ev.channel, hp) + ev.y, wp) + ev.x),
                             d1_oy.eq(0), d1_ox.eq(0)]
            else:
                m.d.sync += [d1_cin.eq(ev.channel), d1_oy.eq(ev.y + p.pad),
                             d1_ox.eq(ev.x + p.pad)]
            m.d.sync += [
                d2_valid.eq(d1_valid), d2_last.eq(d1_last), d2_shift.eq(d1_shift),
                d2_mask.eq(d1_mask),
                d2_wbase.eq(const_mul(d1_cin, G)),
                d2_e0.eq(const_mul(d1_oy, p.wc) + d1_ox),
                d2_oy.eq(d1_oy), d2_ox.eq(d1_ox),
            ]

        # ---------------------------------------------------------- tap walker
        active = Signal()
        marker_held = Signal()
        dy, dx, g = (Signal(range(n), name=nm, **dreg) for n, nm in ((k, "dy"), (k, "dx"), (G, "g")))
        # dy == k - 1, dx == k - 1, g == G - 1, kept in registers (timing: the
        # walker's end decides ``take`` and so the input's ``ready``)
        dy_end, dx_end, g_end = (Signal(name=nm, **dreg) for nm in ("dy_end", "dx_end", "g_end"))
        oy, ox = Signal(signed(pos_bits + 1), **dreg), Signal(signed(pos_bits + 1), **dreg)
        ox0 = Signal(signed(pos_bits + 1), **dreg)
        addr = Signal(addr_shape, **dreg)
        waddr = Signal(waddr_bits, **dreg)
        # copies of the weight address, each its own register with its own
        # increment (so synthesis keeps them apart), for a share of the
        # weight memory's blocks (hw/memory.py addr_copies: off by default)
        waddrs = [waddr] + [Signal(waddr_bits, name=f"waddr_copy{i}", **dreg)
                            for i in range(1, self._wcopies)]
        shift = Signal(max(p.fmt.shift_bits, bits_for(p.max_shift)), **dreg)
        mask = Signal(Q, **dreg)

        last_tap = dy_end & dx_end & g_end
        # ``free`` == ~active | last_tap, a register (the input's ``ready``
        # is decided from registers and ``enable``)
        free = Signal(init=1)
        # this unit's taps: from (dy0, dx0) to (dy1, dx1) in raster order;
        # ``dx_end``: the last column of the row in the range, ``dy_end``: the
        # range's last row
        t0, t1 = self._taps
        dy0, dx0 = divmod(t0, k)
        dy1, dx1 = divmod(t1 - 1, k)
        single = (t1 - t0 == 1) and (G == 1)   # an event of one tap
        # the walker moves on from its tap only with the tap's weight word
        # (streamed weights; a weight memory always has it)
        go = active & self.w_ready if self._streamed else active
        if self._streamed:
            m.d.comb += take.eq(self.enable & ~marker_held & free & (~active | self.w_ready))
        else:
            m.d.comb += take.eq(self.enable & ~marker_held & free)
        inb = go & (oy >= 0) & (oy < p.hc) & (ox >= 0) & (ox < p.wc)

        with m.If(take & d2_valid):
            m.d.sync += [active.eq(~d2_last), marker_held.eq(d2_last),
                         dy.eq(dy0), dx.eq(dx0), g.eq(0), oy.eq(d2_oy - dy0),
                         ox.eq(d2_ox - dx0),
                         dy_end.eq(dy0 == dy1), dx_end.eq(dx0 == (dx1 if dy0 == dy1 else k - 1)),
                         g_end.eq(G == 1), free.eq(d2_last | single),
                         ox0.eq(d2_ox), addr.eq(d2_e0 - (dy0 * p.wc + dx0)),
                         *(w.eq(d2_wbase) for w in waddrs), mask.eq(d2_mask),
                         shift.eq((p.timesteps - 1 - self.step) if p.step_shift else d2_shift)]
        with m.Elif(go & last_tap):
            m.d.sync += [active.eq(0), free.eq(1)]
        with m.Elif(go):
            # the next group's word, or the next tap's first group
            step = Mux(g_end, p.in_groups * G - (G - 1), 1)
            m.d.sync += [w.eq(w + step) for w in waddrs]
            with m.If(~g_end):
                m.d.sync += [g.eq(g + 1), addr.eq(addr + hw), g_end.eq(g == G - 2),
                             free.eq(dy_end & dx_end & (g == G - 2))]
            with m.Elif(~dx_end):
                row_end = Mux(dy_end, dx == dx1 - 1, dx == k - 2)   # dx + 1 ends the row
                m.d.sync += [g.eq(0), dx.eq(dx + 1), ox.eq(ox - 1),
                             addr.eq(addr - ((G - 1) * hw + 1)),
                             g_end.eq(G == 1), dx_end.eq(row_end),
                             free.eq(dy_end & row_end & (G == 1))]
            with m.Else():
                last_row = dy == dy1 - 1                               # dy + 1 is the last
                m.d.sync += [g.eq(0), dx.eq(0), dy.eq(dy + 1), ox.eq(ox0), oy.eq(oy - 1),
                             addr.eq(addr + (k - 1 - p.wc - (G - 1) * hw)),
                             g_end.eq(G == 1), dx_end.eq(Mux(last_row, dx1 == 0, k == 1)),
                             dy_end.eq(last_row),
                             free.eq(last_row & (dx1 == 0) & (G == 1))]
        with m.If(self.resume):
            m.d.sync += marker_held.eq(0)

        if len(waddrs) > 1:
            m.d.comb += [self.w_addrs[i].eq(w) for i, w in enumerate(waddrs)]
        m.d.comb += [
            self.w_addr.eq(waddr),
            self.w_take.eq(go),
            self.update.eq(inb),
            self.accepted.eq(take & d2_valid & ~d2_last),
        ]

        # ---------------------------------------------------------- update stage
        # weight data arrives ``weight_latency`` cycles after the walker (the
        # tap waits as long in ``chain``) and is registered
        # (a word event's terms go through an adder tree of several register
        # stages); the bank read is issued ``read_latency`` cycles before the
        # update, its data registered, so neither memory's output drives the adder
        R, sb = p.R, (p.R - 1).bit_length()   # positions per word: word = addr >> sb
        v1 = Signal()
        a1 = Signal(bits_for(p.acc_depth * R - 1), **dreg)  # position address
        s1 = Signal.like(shift)
        m.d.sync += [v1.eq(inb), a1.eq(addr), s1.eq(shift)]
        # chain[s]: (valid, position address) of the tap s cycles after the walker
        chain = [(inb, addr.as_unsigned()[:len(a1)]), (v1, a1)]
        for e in range(self._rlat - 1):
            v, a = Signal(name=f"v_w{e}"), Signal.like(a1, name=f"a_w{e}")
            sh, mk = Signal.like(s1, name=f"s_w{e}"), Signal(Q, name=f"mask_w{e}", **dreg)
            m.d.sync += [v.eq(v1), a.eq(a1), sh.eq(s1), mk.eq(mask)]
            v1, a1, s1, mask = v, a, sh, mk
            chain.append((v1, a1))
        # a block-RAM weight word that feeds logic (a barrel shift, the masks
        # and an adder tree) is registered first: the block's output is slow
        # (see ecp5_in_lutram) and often far from the logic.  A LUT-RAM
        # word is already a flip-flop's output; a plain weight goes straight
        # into its register below.
        w_word, pre = self.w_data, 0
        lo, hi = p.weight_rows(self._unit)
        # The mask of a word event reaches every lane's terms: in registered
        # copies, each for its share of the lanes (timing: one mask register
        # to a far lane's tree was the critical path of a routed build)
        tree_bits = p.P * Q * W
        if not ecp5_in_lutram(p.weight_width, hi - lo) and (Q > 1 or p.max_shift > 0):
            w_word, pre = Signal.like(self.w_data, name="w_q", **dreg), 1
            s2, mask1 = Signal.like(s1, name="s2"), Signal(Q, name="mask1", **dreg)
            m.d.sync += [w_word.eq(self.w_data), s2.eq(s1), mask1.eq(mask)]
            s1 = s2
            masks = copies(m, mask1, "mask2", bits=tree_bits) if Q > 1 else []
        else:
            masks = copies(m, mask, "mask1", bits=tree_bits) if Q > 1 else []
        terms = []
        for j in range(p.P):
            mask1 = masks[j * len(masks) // p.P] if Q > 1 else None
            if Q == 1:
                w = w_word[j * W:(j + 1) * W].as_signed()
                terms.append([(w << s1) if p.max_shift > 0 else w])
            elif p.in_planes:  # sum_i mask[i] * (w << i) = w * x, by shifted adds
                w = w_word[j * W:(j + 1) * W].as_signed()
                terms.append([Mux(mask1[i], w << i, 0) for i in range(Q)])
            else:              # sum over the word's channels of their weights
                terms.append([Mux(mask1[i], w_word[(i * p.P + j) * W:
                                                   (i * p.P + j + 1) * W].as_signed(), 0)
                              for i in range(Q)])
        if Q == 1:  # one term: a register stage of its own
            incs = [Signal(signed(len(t[0])), name=f"inc{j}", **dreg) for j, t in enumerate(terms)]
            m.d.sync += [inc.eq(t[0]) for inc, t in zip(incs, terms)]
            n_stages = 1
        else:
            # the masked terms go straight into the tree: registering them
            # (commit 9d3493c, for a mask-to-far-lane path) added ~2,600
            # flip-flops to the default engine, whose ULX3S build then did not
            # route (router2 diverged); without them it routed at 66.2 MHz
            incs, n_stages = adder_trees(m, terms)
        n_stages += pre
        # the read is issued ``read_latency`` cycles before the update, from
        # the walker at the earliest: stages more for a short pipeline
        while len(chain) + n_stages < self._blat + 1:
            incs2 = [Signal.like(inc, name=f"inc{j}_d{n_stages}", **dreg)
                     for j, inc in enumerate(incs)]
            m.d.sync += [i2.eq(i1) for i2, i1 in zip(incs2, incs)]
            incs, n_stages = incs2, n_stages + 1
        for st in range(n_stages):
            v, a = Signal(name=f"v_t{st}"), Signal.like(a1, name=f"a_t{st}")
            m.d.sync += [v.eq(chain[-1][0]), a.eq(chain[-1][1])]
            chain.append((v, a))
        valid, a_u = chain[-1]
        # the read is issued ``read_latency`` cycles before the update
        m.d.comb += self.rd_addr.eq(chain[-1 - self._blat][1] >> sb)
        rd_q = self.rd_data   # registered by the core, bank by bank

        # the writes of the ``read_latency`` previous updates (and of
        # ``write_latency`` more, which the core holds in registers in front of
        # the memory) are not in this cycle's read data: keep them and forward on an address
        # match (the newest first).  The matches are found two cycles early,
        # against the address two stages before the update, and go through
        # two levels of registered copies (timing: the selects drive every
        # lane's bits; in a wide core each of 16 copies drives two lanes' or so)
        word = a_u >> sb
        # stage[k]: (valid, word) of the tap k stages before the update
        stage = [(v, a >> sb) for v, a in chain[:-4:-1]]
        # (an address register in front of the memory, ``addr_stage``, is
        # not a write's way: the memory reads a cycle after ``rd_addr``)
        ages = self._blat - self._astage + self._wlat
        wbs = []
        for age in range(1, ages + 1):
            wb_valid = Signal(name=f"wb{age}_valid")
            wb_addr = Signal.like(self.wr_addr, name=f"wb{age}_addr", **dreg)
            wb_data = Signal.like(self.wr_data, name=f"wb{age}_data", **dreg)
            src = (valid, word, self.wr_data) if age == 1 else wbs[-1][:3]
            m.d.sync += [wb_valid.eq(src[0]), wb_addr.eq(src[1]), wb_data.eq(src[2])]
            wbs.append((wb_valid, wb_addr, wb_data))
        hits = []
        for age in range(1, ages + 1):
            # the update of ``age`` cycles before the target's, two cycles
            # before the target is updated: still in the pipeline, or written
            v, a = stage[2 - age] if age <= 2 else wbs[age - 3][:2]
            hits.append(copies(m, v & (a == stage[2][1]), f"hit{age}", levels=2,
                               bits=len(self.wr_data.as_value())))
        NL = R * p.P
        for r in range(R):  # only the lanes of the tap's position add
            here = (a_u[:sb] == r) if R > 1 else C(1, 1)
            for j in range(p.P):
                n = r * p.P + j
                old = rd_q[n]
                for (_, _, wb), hit in reversed(list(zip(wbs, hits))):
                    old = Mux(hit[n * len(hit) // NL], wb[n], old)
                m.d.comb += self.wr_data[n].eq(old + Mux(here, incs[j], 0))
        m.d.comb += [self.wr_addr.eq(word), self.wr_en.eq(valid)]
        # an update is in flight until the memory holds it
        in_flight = Cat(*(v for v, _ in chain[1:]), *(v for v, *_ in wbs[:self._wlat])).any()

        m.d.comb += [
            self.at_marker.eq(marker_held & ~active & ~in_flight),
            self.hold.eq(shift == 1),
            self.busy.eq(active | in_flight),
        ]
        return m
