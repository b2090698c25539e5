"""The neuron unit: the end-of-step scan (LIF / IF), pooling and spike output.

At an end-of-step marker the unit scans the layer's neurons ``P`` at a time
(all lanes of one channel group at one position), reading the step's current
``cur`` (the synapse unit's sum of this step's weights) and the state ``base``
(last step's membrane after decay and reset) at the same address, and applies
the contract of :mod:`spikeforge.sw.golden` per neuron::

    u    = sat_S(base + cur + bias)
    o    = u >= theta                           (strict layers: u > theta)
    base = decay(u) * (1 - o)                   reset zero
         = decay(u) - theta * o                 reset subtract
         = decay(u)                             reset none (IF: no shifts)

and writes ``base`` back to the state memory (``0`` on the last step of an
image, ``final``: the state is clean for the next image without a clear
pass); the core zeroes the current word in the same cycle unless the
current is kept for the next scan (a static layer).  Pooling is folded into
the scan: the scan order visits each ``pool x pool`` window's neurons
together (group, window row, window column, then the window), ORs their
spikes per lane and emits one event per spiking lane at the window's end,
``(channel g*P + j, y // pool, x // pool)``.  After the last spike it emits
the end-of-step marker.

The same unit runs the clear pass: zero every word of the memories.  The
parameter loader, the scan-order counters and the spike emitter are shared
with :class:`~spikeforge.hw.steb.StebUnit` (functions at the end).
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, fifo, wiring
from amaranth.hdl import ResetInserter
from amaranth.lib.wiring import In, Out

from spikeforge.config import Reset
from spikeforge.layouts import field_slices, neuron_layout

from .arith import copies, decay, saturate
from .params import CoreParams
from .streams import bits_for

__all__ = ["NeuronUnit", "param_loader", "window_counters", "spike_emitter", "queue_layout",
           "queue_word", "counted"]

#: entries of the spike queue between the scan and the emitter (the scan
#: keeps room for its five pipeline stages and the push register)
QUEUE_DEPTH = 10


def scan_unit_members(p: CoreParams, width: int) -> dict:
    """The ports shared by the units that own a core's memories at the end of
    a step (:class:`NeuronUnit`, and the STCB unit) for words of ``P * R``
    lanes of ``width`` bits: the layer core wires either."""
    acc = data.ArrayLayout(signed(width), p.P * p.R)
    abits = bits_for(p.acc_depth - 1)
    return {
        "start": In(1),
        "clear": In(1),
        "mem_busy": Out(1),
        "busy": Out(1),
        "stall": Out(1),
        "rd_addr": Out(abits),
        "rd_en": Out(1),
        "rd_data": In(acc),
        "wr_addr": Out(abits),
        "wr_en": Out(1),
        "wr_data": Out(acc),
        "p_addr": Out(bits_for(p.groups * p.P - 1)),
        "p_data": In(p.neuron_width),
        "events": Out(p.fmt.signature),
    }


class NeuronUnit(wiring.Component):
    """Scans the state and current memories at the end of a step; emits spikes and the marker.

    Pipeline (never stalls: the scan issues a word only while the spike
    queue has room for every word in flight): issue (memory read; in a wide
    core, ``CoreParams.read_stage``, the core registers the address and the
    words come a cycle later: a stage more), read (the words registered),
    select (the current memory's word and the group's parameters registered:
    no multiplexer and no parameter enable in front of the adders), sum
    (``base + cur + bias``), threshold (``u``, ``o``), write-back (decay,
    reset; in a wide core, ``CoreParams.write_stage``, the write leaves a
    cycle later from registers) and pool OR.  No hazards: each neuron is
    read and written once per scan.  The per-lane ``theta`` and ``bias`` of
    the next channel group are loaded from the neuron memory (one word a cycle,
    image layout: word ``c`` is channel ``c``) while the current group is
    scanned; a group of fewer positions than ``P + 1`` waits for them.
    Spiking windows go into a ``QUEUE_DEPTH``-entry queue; the emitter sends one event per
    spiking lane, lowest lane first, from a registered output (no
    combinational path from ``events.ready`` to ``events.valid``).

    Parameters
    ----------
    params : CoreParams
        A LIF / IF layer's parameters.

    Members
    -------
    start : In(1)
        Pulse: begin the scan of this step.
    final : In(1)
        Sampled with ``start``: the image's last step (write ``base = 0``).
    clear : In(1)
        Pulse: abandon any work and zero every word (``G*Hc*Wc`` cycles).
    mem_busy : Out(1)
        The unit owns the memory ports (clear pass or scan in flight).
    busy : Out(1)
        ``mem_busy`` or spikes or the marker still to be sent.
    stall : Out(1)
        Output back-pressure this cycle (held output or scan waiting on the queue).
    rd_addr : Out(unsigned), rd_en : Out(1)
        State and current read address and enable; ``rd_en`` low holds the data.
    rd_data : In(ArrayLayout(signed(state_width), P))
        State words (``base``).
    cur_data : In(ArrayLayout(signed(cur_width), P))
        Current words of the step being scanned, two cycles after their
        address (three with ``read_stage``; registered by the core after each
        current memory, then selected: no block-RAM output drives the
        multiplexer).
    wr_addr : Out(unsigned), wr_en : Out(1)
        Write address and enable (state; the core also zeroes the current).
    wr_data : Out(ArrayLayout(signed(state_width), P))
    p_addr : Out(unsigned)
        Neuron memory read address (channel), data one cycle later.
    p_data : In(unsigned(S + acc_bits + 6))
        ``theta`` in bits ``[0, S)``, ``bias`` in ``[S, S + acc_bits)``.
    events : Out(stream.Signature(params.fmt.layout))
        Output spike events, then the end-of-step marker.

    Reset: idle (no scan, nothing queued), parameter loader fetching group 0.
    The memories are not reset; the core pulses ``clear`` to zero them.
    """

    def __init__(self, params: CoreParams):
        self._p = p = params
        super().__init__({
            **scan_unit_members(p, p.state_width),
            "final": In(1),
            "cur_data": In(data.ArrayLayout(signed(p.cur_width), p.P * p.R)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        P, G, S = p.P, p.groups, p.state_bits
        cb_bits = bits_for(G * P)

        # ---------------------------------------------------------- parameter loader
        # runs one group ahead of the scan; cur[...] serve the select stage,
        # loaded a cycle after the group's first issue (``load``, a register:
        # its net enables every lane's parameter registers, spread over the
        # core's lanes; a decode in front of it was a core's critical path)
        consume, load = Signal(), Signal()
        m.d.sync += load.eq(consume)
        # (``read_stage``: the words come a cycle later, and so does the
        # select stage: the load a cycle later too, in registered copies, each
        # for its share of the lanes; one register's enable net to every
        # lane's parameters took 10-13 ns to route in a core placed alone)
        loads = copies(m, load, "load", bits=P * (S + p.acc_bits)) if p.read_stage else [load]
        cur, l_full = param_loader(m, p, self.p_data, self.p_addr, consume, self.clear,
                                   field_slices(neuron_layout(S, p.acc_bits), "theta", "bias"),
                                   loads=loads)
        cur_theta, cur_bias = cur["theta"], cur["bias"]

        # ---------------------------------------------------------- scan issue
        scanning = Signal()
        clearing = Signal()
        marker_pending = Signal()
        final = Signal()
        room = Signal()   # the spike queue has room for everything the scan has issued
        issue = Signal()
        # the counters return to the first neuron as the scan issues its last
        # one (or on a clear), not at ``start`` (timing: ``start`` comes from
        # the core's state machine, a long way from these registers)
        rewind = Signal()
        wc_ = window_counters(m, p, issue, rewind)
        g, py, px, addr, cbase = wc_.g, wc_.py, wc_.px, wc_.addr, wc_.cbase
        first, win_end, last = wc_.first, wc_.win_end, wc_.last
        m.d.comb += [
            issue.eq(scanning & room & (~first | l_full)),
            # == issue & first, written from the registers: one LUT in front
            # of the enable of every lane's parameter registers (timing)
            consume.eq(scanning & room & first & l_full),
            self.rd_addr.eq(addr),
            self.rd_en.eq(1),
        ]
        m.d.comb += rewind.eq((issue & last) | self.clear)
        with m.If(issue & last):
            m.d.sync += scanning.eq(0)

        # ---------------------------------------------------------- read stage
        # (read data of the issued address, registered with the group's
        # parameters, which are current now; no memory output drives an adder)
        NL = P * p.R  # lane n = r*P + j: channel lane j at the word's position r
        # what travels with a word down the pipeline: valid, window end,
        # address, window position, group base channel and group
        tag = data.StructLayout({"v": 1, "win": 1, "a": len(addr), "py": len(py),
                                 "px": len(px), "cb": cb_bits, "g": len(g)})
        t0, t1, tr, ts, t2, t3 = (Signal(tag, name=f"tag{n}")
                                  for n in ("0", "1", "r", "s", "2", "3"))
        # (``read_stage``: the core registers the read address, so the word
        # comes a cycle later: a stage ``t0`` first)
        first_tag = t0 if p.read_stage else t1
        m.d.sync += [first_tag.v.eq(issue), first_tag.win.eq(win_end), first_tag.a.eq(addr),
                     first_tag.py.eq(py), first_tag.px.eq(px), first_tag.cb.eq(cbase),
                     first_tag.g.eq(g)]
        if p.read_stage:
            m.d.sync += t1.eq(t0)
        # the words and every later data register are not reset (the tags'
        # valid bits are): ``start`` fans out to control only
        dreg = dict(reset_less=True)
        base_r = Signal.like(self.rd_data, **dreg)
        m.d.sync += [tr.eq(t1), base_r.eq(self.rd_data)]

        # ---------------------------------------------------------- select stage
        # the current word (registered by the core, memory by memory, then
        # selected: ``cur_data``) and the group's parameters, registered
        base_s = Signal.like(self.rd_data, **dreg)
        cur_r = Signal.like(self.cur_data, **dreg)
        bias_r = [Signal.like(b, name=f"bias_r{j}", **dreg) for j, b in enumerate(cur_bias)]
        th_r = [Signal.like(t, name=f"th_r{j}", **dreg) for j, t in enumerate(cur_theta)]
        m.d.sync += [ts.eq(tr), base_s.eq(base_r), cur_r.eq(self.cur_data)]
        m.d.sync += [a.eq(b) for a, b in zip(bias_r + th_r, cur_bias + cur_theta)]

        # ---------------------------------------------------------- sum stage
        sum_w = max(p.state_width, p.cur_width, p.acc_bits) + 2
        maskr = Cat(ts.cb + j < p.c_out for j in range(P))

        # ---------------------------------------------------------- threshold stage
        mask2 = Signal(P, **dreg)
        s2 = [Signal(signed(sum_w), name=f"s2_{n}", **dreg) for n in range(NL)]
        th2 = [Signal(signed(S), name=f"th2_{j}", **dreg) for j in range(P)]
        m.d.sync += [t2.eq(ts), mask2.eq(maskr)]
        m.d.sync += [s2[n].eq(base_s[n] + cur_r[n] + bias_r[n % P]) for n in range(NL)]
        m.d.sync += [a.eq(b) for a, b in zip(th2, th_r)]
        u2 = [Signal(signed(S), name=f"u{n}") for n in range(NL)]
        o2 = Signal(NL)
        # the comparison is the layer's (p.strict: u > theta, else u >= theta);
        # the fault swaps it for the other one
        strict = p.strict != (p.fault == "threshold")
        if strict:
            # sat(s) > theta  <=>  s > theta and theta < 2**(S-1) - 1 (a saturated
            # u never exceeds the largest state): the flag is registered with theta
            top2 = Signal(P, name="th2_below_top", **dreg)
            m.d.sync += top2.eq(Cat(t != (1 << (S - 1)) - 1 for t in th_r))
        for n in range(NL):
            m.d.comb += u2[n].eq(saturate(s2[n], S))
            # the comparison need not wait for the saturation: sat(s) >= theta
            # <=>  s >= theta, as 1 <= theta <= 2**(S-1) - 1 (the contract)
            if strict:
                m.d.comb += o2[n].eq((s2[n] > th2[n % P]) & top2[n % P])
            else:
                m.d.comb += o2[n].eq(s2[n] >= th2[n % P])

        # ---------------------------------------------------------- write-back stage
        u3 = [Signal(signed(S), name=f"u3_{n}", **dreg) for n in range(NL)]
        th3 = [Signal(signed(S), name=f"th3_{j}", **dreg) for j in range(P)]
        o3 = Signal(NL, **dreg)
        m.d.sync += [t3.eq(t2), o3.eq(o2 & mask2.replicate(p.R))]
        m.d.sync += [a.eq(b) for a, b in zip(u3 + th3, u2 + th2)]
        shifts = p.decay_shifts
        if p.fault == "decay" and shifts:  # test-only: a wrong first decay shift
            shifts = (shifts[0] + 1,) + shifts[1:]
        base = []
        for n in range(NL):
            d = decay(u3[n], shifts)
            if p.reset is Reset.ZERO:
                b = Mux(o3[n], 0, d)
            elif p.reset is Reset.SUBTRACT:
                b = d - Mux(o3[n], th3[n % P], 0)
            else:
                b = d
            base.append(Mux(final, 0, b))

        # spikes of a window, ORed per lane; a spiking window goes to the queue
        q_layout = queue_layout(p)
        queue = fifo.SyncFIFO(width=q_layout.size, depth=QUEUE_DEPTH)
        m.submodules.queue = ResetInserter(self.clear)(queue)
        sp_acc = Signal(P)
        vec = sp_acc
        for r in range(p.R):  # OR the word's positions: they share a pooling window
            vec = vec | o3[r * P:(r + 1) * P]
        # the window goes into the queue a cycle later, from registers
        # (timing: the OR of the lanes' spikes into the queue's level logic
        # was a core's critical path)
        push = Signal()
        q_in = Signal(q_layout, reset_less=True)
        m.d.sync += [
            push.eq(t3.v & t3.win & (vec != 0)),
            q_in.vec.eq(vec), q_in.cb.eq(word_base(p, t3.g, t3.cb)), q_in.py.eq(t3.py),
            q_in.px.eq(t3.px),
        ]
        # its count of spiking words (``n``) in registered parts of eight
        # words each, summed on the queue's write (timing: the whole count
        # from ``q_in`` into the queue's LUT RAM, two carry chains, was a
        # ULX3S build's path at -1.04 ns)
        parts = []
        if counted(p):
            spiking = spiking_words(p, vec)
            for g in range(0, len(spiking), 8):
                part = Signal(range(len(spiking[g:g + 8]) + 1), name=f"q_n{g // 8}",
                              reset_less=True)
                m.d.sync += part.eq(sum(spiking[g:g + 8]))
                parts.append(part)
        m.d.comb += [queue.w_data.eq(queue_word(m, p, q_in, parts)), queue.w_en.eq(push)]
        # credit: a scanned word pushes at most one window, so the scan issues
        # only while the queue can take every word in flight; the pipeline
        # itself never stalls (no enable fanning out from the queue's state).
        # ``room`` is a cycle old, so it counts the word that cycle may issue.
        in_pipe = t0.v + t1.v + tr.v + ts.v + t2.v + t3.v + push
        m.d.sync += room.eq(queue.w_level + in_pipe + 1 < QUEUE_DEPTH)
        with m.If(t3.v):
            m.d.sync += sp_acc.eq(Mux(t3.win, 0, vec))

        # ---------------------------------------------------------- clear pass
        c_addr = Signal.like(addr)
        w_addr, w_en = Signal.like(self.wr_addr), Signal()
        w_data = Signal.like(self.wr_data)
        with m.If(clearing):
            m.d.sync += c_addr.eq(c_addr + 1)
            with m.If(c_addr == p.acc_depth - 1):
                m.d.sync += clearing.eq(0)
            m.d.comb += [w_addr.eq(c_addr), w_en.eq(1)]
            m.d.comb += [w_data[n].eq(0) for n in range(NL)]
        with m.Else():
            m.d.comb += [w_addr.eq(t3.a), w_en.eq(t3.v)]
            m.d.comb += [w_data[n].eq(base[n]) for n in range(NL)]
        # a wide core's writes leave from registers (``write_stage``: the
        # placer puts them by the state memory's blocks; in the default
        # engine's layer 0 routed alone, a spike flag's 9.4 ns route through
        # the reset's LUT into a far block's write data had been the critical
        # path; the ULX3S build went from 68.7 to 73.0 MHz), a cycle later:
        # ``mem_busy`` holds until the last write is in
        if p.write_stage:
            w_addr, w_en, w_data = _registered_write(m, w_addr, w_en, w_data)
        m.d.comb += [self.wr_addr.eq(w_addr), self.wr_en.eq(w_en), self.wr_data.eq(w_data)]

        # ---------------------------------------------------------- emitter
        marker_sent = Signal()
        # words still to be read or written (t0.v | t1.v | tr.v | ts.v | t2.v |
        # t3.v | the registered write's enable), in a register set from the next cycle's values
        # (timing: the OR of the pipeline's valid bits decides the core's
        # scan end and its busy counter; from a far stage's register it was
        # a path 0.6 ns short of 100 MHz in a ULX3S build): the stages shift
        # every cycle, a clear empties them, a registered write follows t3
        mem_flight = Signal()
        stages = Cat(issue, t0.v if p.read_stage else C(0, 1), t1.v, tr.v, ts.v, t2.v)
        m.d.sync += mem_flight.eq((stages.any() & ~self.clear)
                                  | ((clearing | t3.v) if p.write_stage else C(0, 1)))
        in_flight = mem_flight | push
        e_busy = spike_emitter(m, p, queue, q_layout, self.events,
                               marker_pending & ~scanning & ~in_flight, marker_sent, self.clear)
        with m.If(marker_sent):
            m.d.sync += marker_pending.eq(0)
        out = self.events

        # ---------------------------------------------------------- control
        with m.If(self.start):
            m.d.sync += [scanning.eq(1), marker_pending.eq(1), final.eq(self.final)]
        with m.If(self.clear):
            m.d.sync += [clearing.eq(1), c_addr.eq(0), scanning.eq(0), marker_pending.eq(0),
                         t0.v.eq(0), t1.v.eq(0), tr.v.eq(0), ts.v.eq(0), t2.v.eq(0), t3.v.eq(0),
                         sp_acc.eq(0),
                         push.eq(0)]

        m.d.comb += [
            self.mem_busy.eq(scanning | clearing | mem_flight),
            self.busy.eq(scanning | clearing | in_flight | e_busy | marker_pending),
            self.stall.eq((out.valid & ~out.ready) | (scanning & ~room)),
        ]
        return m


def _registered_write(m: Module, addr, en, word) -> tuple:
    """A memory write (``addr``, ``en``, ``word``) through registers (the
    word's not reset)."""
    q_addr, q_en = Signal.like(addr, name="wr_addr_q"), Signal(name="wr_en_q")
    q_word = Signal.like(word, name="wr_data_q", reset_less=True)
    m.d.sync += [q_addr.eq(addr), q_en.eq(en), q_word.eq(word)]
    return q_addr, q_en, q_word


# --------------------------------------------------------------------------- shared pieces


def counted(p: CoreParams) -> bool:
    """Whether a queue entry carries ``n``, its number of words with a spike:
    with more than two words a window (lanes over channels per event), where
    counting them behind the queue's read was the critical path of a core
    placed alone (layer 0 of the default engine: the queue's LUT RAM
    through a carry chain into the emitter's flag, 12.3 ns; layer 1: two
    chained carry chains from the emitter's word, 11.5 ns)."""
    return p.P // p.words_out > 2


def queue_layout(p: CoreParams) -> data.StructLayout:
    """A spiking window (or pooled neuron) waiting for the emitter; ``n``
    (:func:`counted`): its words with a spike, filled by :func:`queue_word`."""
    ho, wo = p.out_size
    fields = {"vec": unsigned(p.P), "cb": unsigned(bits_for(p.groups * p.P)),
              "py": unsigned(bits_for(ho - 1)), "px": unsigned(bits_for(wo - 1))}
    if counted(p):
        fields["n"] = unsigned(bits_for(p.P // p.words_out))
    return data.StructLayout(fields)


def queue_word(m, p: CoreParams, entry, parts=()) -> Value:
    """The queue's write data for ``entry`` (a :func:`queue_layout` view whose
    ``n`` is not set): ``n`` counted from its ``vec``, on the write side, or
    the sum of ``parts`` (counts of ``vec``'s words with a spike, group by
    group, which the caller keeps in registers beside ``entry``)."""
    if not counted(p):
        return entry.as_value()
    w = Signal.like(entry, name="q_word")
    m.d.comb += [w.eq(entry), w.n.eq(sum(parts) if parts else sum(spiking_words(p, entry.vec)))]
    return w.as_value()


def spiking_words(p: CoreParams, vec) -> list:
    """Per word of ``vec`` (a window's spikes, a bit a lane; ``words_out``
    lanes a word), whether it has a spike."""
    Q = p.words_out
    return [vec[k * Q:(k + 1) * Q].any() for k in range(p.P // Q)]


def param_loader(m, p: CoreParams, p_data, p_addr, consume, clear, fields: dict, loads=None):
    """Per-lane parameter registers, loaded one group ahead from the neuron memory.

    ``fields``: ``{name: (lsb, width)}`` of signed fields of a neuron word (a
    ``(lsb, width, False)`` triple for an unsigned one).  Returns ``(cur,
    full)``: ``cur[name][j]`` is lane ``j``'s value for the group being scanned
    (updated by ``loads``, copies of one strobe, each for its share of the
    lanes; default ``[consume]``, the issue of a group's first neuron; a
    strobe at most two cycles after ``consume`` still copies the group's words),
    ``full`` says the next group's words are loaded.  Word ``c`` of the memory is
    channel ``c``: the loader reads ``g*P .. g*P + P-1`` one a cycle.
    """
    P, G = p.P, p.groups
    cb_bits = bits_for(G * P)
    shapes = {n: (f[0], f[1], f[2] if len(f) > 2 else True) for n, f in fields.items()}
    cur = {n: [Signal(signed(w) if sg else unsigned(w), name=f"cur_{n}{j}", reset_less=True)
               for j in range(P)]  # data: loaded before the group's first issue
           for n, (_, w, sg) in shapes.items()}
    nxt = {n: [Signal.like(c, name=f"nxt_{n}{j}") for j, c in enumerate(cur[n])] for n in cur}
    l_addr = Signal(cb_bits)
    l_lane = Signal(range(P))
    l_issuing = Signal(init=1)
    # l_load[j]: lane j's word is on ``p_data`` (its read issued the cycle
    # before), one-hot in registers (timing: the decode of a lane number
    # drove every bit's enable of the lane's registers, fan-out 39, a
    # ULX3S build's path at -0.74 ns)
    l_load = Signal(P)
    l_full = Signal()
    m.d.comb += p_addr.eq(l_addr)
    m.d.sync += l_load.eq(Cat(l_issuing & (l_lane == j) for j in range(P)))
    with m.If(l_issuing):
        m.d.sync += [l_addr.eq(Mux(l_addr == G * P - 1, 0, l_addr + 1)),
                     l_lane.eq(Mux(l_lane == P - 1, 0, l_lane + 1))]
        with m.If(l_lane == P - 1):
            m.d.sync += l_issuing.eq(0)
    for n, (lsb, w, sg) in shapes.items():
        field = p_data[lsb:lsb + w]
        field = field.as_signed() if sg else field
        for j in range(P):
            with m.If(l_load[j]):
                m.d.sync += nxt[n][j].eq(field)
    with m.If(l_load[P - 1]):
        m.d.sync += l_full.eq(1)
    with m.If(consume):
        m.d.sync += [l_full.eq(0), l_issuing.eq(1)]
    loads = [consume] if loads is None else loads
    for j in range(P):
        with m.If(loads[j * len(loads) // P]):
            m.d.sync += [cur[n][j].eq(nxt[n][j]) for n in cur]
    with m.If(clear):
        m.d.sync += [l_addr.eq(0), l_lane.eq(0), l_issuing.eq(1), l_load.eq(0), l_full.eq(0)]
    return cur, l_full


class _Counters:
    pass


def window_counters(m, p: CoreParams, step, restart):
    """Scan-order counters: channel group, window row and column, then the
    ``pool x pool`` window's words (``pool / R`` words a row: a word holds
    ``R`` positions); ``addr`` the memory word ``((g*Hc + y)*Wc + x) / R``,
    updated by constant steps (no multiplier).  ``step`` advances, ``restart``
    returns to the first neuron."""
    P, G, pool, R = p.P, p.groups, p.pool, p.R
    pool_x, row = pool // R, p.wc // R      # words per window row; words per row
    ho, wo = p.out_size
    c = _Counters()
    c.g = g = Signal(range(G))
    c.py, c.px = py, px = Signal(range(ho), name="py"), Signal(range(wo), name="px")
    wy, wx = Signal(range(pool), name="wy"), Signal(range(pool_x), name="wx")
    c.addr = addr = Signal(bits_for(p.acc_depth - 1))
    c.cbase = cbase = Signal(bits_for(G * P))
    # each counter's end (``== n - 1``) and ``first`` (the group's first word)
    # kept in registers, updated with the counters (timing: they decide the
    # scan's issue, and the issue fans out wide)
    sizes = {"wx": pool_x, "wy": pool, "px": wo, "py": ho, "g": G}
    e = {n: Signal(name=f"{n}_end", init=int(v == 1)) for n, v in sizes.items()}
    first = Signal(name="first", init=1)
    c.first = first
    c.win_end = win_end = e["wy"] & e["wx"]
    c.last = win_end & e["px"] & e["py"] & e["g"]

    def wrap(*names):  # the counters back at 0
        return [e[n].eq(sizes[n] == 1) for n in names]

    with m.If(step):
        if pool > 1:
            with m.If(~e["wx"]):
                m.d.sync += [wx.eq(wx + 1), addr.eq(addr + 1), e["wx"].eq(wx == pool_x - 2)]
            with m.Elif(~e["wy"]):
                m.d.sync += [wx.eq(0), wy.eq(wy + 1), addr.eq(addr + (row - pool_x + 1)),
                             e["wy"].eq(wy == pool - 2)] + wrap("wx")
            with m.Elif(~e["px"]):
                m.d.sync += [wx.eq(0), wy.eq(0), px.eq(px + 1),
                             addr.eq(addr + (1 - (pool - 1) * row)),
                             e["px"].eq(px == wo - 2)] + wrap("wx", "wy")
            with m.Else():
                m.d.sync += [wx.eq(0), wy.eq(0), px.eq(0), addr.eq(addr + 1)] + wrap("wx", "wy", "px")
        else:
            m.d.sync += addr.eq(addr + 1)
            with m.If(~e["px"]):
                m.d.sync += [px.eq(px + 1), e["px"].eq(px == wo - 2)]
            with m.Else():
                m.d.sync += [px.eq(0)] + wrap("px")
        with m.If(win_end & e["px"]):
            with m.If(~e["py"]):
                m.d.sync += [py.eq(py + 1), e["py"].eq(py == ho - 2)]
            with m.Else():
                m.d.sync += [py.eq(0), g.eq(g + 1), cbase.eq(cbase + P),
                             e["g"].eq(g == G - 2)] + wrap("py")
        m.d.sync += first.eq(win_end & e["px"] & e["py"])
    with m.If(restart):
        m.d.sync += [g.eq(0), py.eq(0), px.eq(0), wy.eq(0), wx.eq(0), addr.eq(0), cbase.eq(0),
                     first.eq(1)] + wrap(*sizes)
    return c


def word_base(p: CoreParams, g, cbase):
    """The queue's ``cb`` for the window of group ``g`` (base channel
    ``cbase = g * P``): the index of its first output event's channel group,
    ``cbase // Q`` for words of ``Q = p.words_out`` channels (``g`` when a
    word is the whole lane group, ``cbase`` for single spikes; ``Q`` a power
    of two otherwise, so a shift)."""
    Q = p.words_out
    if Q == p.P:
        return g
    return cbase >> (Q.bit_length() - 1)


def spike_emitter(m, p: CoreParams, queue, q_layout, out, marker_req, marker_sent, clear):
    """Sends each queued window's spiking lanes as events from a registered
    output, then, once ``marker_req`` holds and nothing is left, one
    end-of-step marker (strobing ``marker_sent``).  Returns a busy flag
    (queue or current window not empty).  The ``P`` lanes are ``P / Q``
    words of ``Q = p.words_out`` channels; each word with a spike goes out as
    one event, the lowest first: ``channel`` its channel group (the queue's
    ``cb`` (:func:`word_base`) + the word's index), ``mask`` its lanes (for
    ``Q = 1``: one event per spiking lane, ``mask`` 0)."""
    P, Q = p.P, p.words_out
    K = P // Q
    e_vec = Signal(P)
    # e_vec == 0 and "at most one word of e_vec has a spike", kept in
    # registers beside it (timing: the load, the marker and the output's
    # valid were decided through comparisons on e_vec, seven levels of logic)
    e_empty, e_single = Signal(init=1), Signal(init=1)
    # with more than two words a window, their count (:func:`counted`) comes
    # from the queue and decides both flags
    e_n = Signal(range(K + 1)) if counted(p) else None
    e_cb = Signal(bits_for(p.groups * P))
    e_py = Signal(q_layout.members["py"])
    e_px = Signal(q_layout.members["px"])

    def words(vec):
        return [vec[k * Q:(k + 1) * Q] for k in range(K)]

    def lowest(vec):
        """The index of ``vec``'s lowest word with a spike (0 if none)."""
        out = Signal(range(K))
        for k in reversed(range(K)):
            with m.If(words(vec)[k].any()):
                m.d.comb += out.eq(k)
        return out

    def without_lowest(vec, low):
        """``vec`` less its lowest word with a spike (``low``)."""
        if K == 1:
            return C(0, P)
        if Q == 1:
            return vec & (vec - 1)
        return Cat(Mux(low == k, 0, part) for k, part in enumerate(words(vec)))

    parts = words(e_vec)
    lane = lowest(e_vec)
    # the event's channel group, ``e_cb + lane``: ``e_cb`` is a multiple of
    # ``K`` (:func:`word_base`), so with ``K`` a power of two the lane is its
    # low bits, no adder (timing: the add's carry chain behind the lowest
    # lane's select was the critical path of layer 1 placed alone)
    if K & (K - 1) == 0:
        lb = (K - 1).bit_length()
        channel = Cat(lane[:lb], e_cb[lb:])
    else:
        channel = e_cb + lane
    rest = Signal(P)
    m.d.comb += rest.eq(without_lowest(e_vec, lane))
    q_out = Signal(q_layout)
    m.d.comb += q_out.eq(queue.r_data)
    slot_free = ~out.valid | out.ready
    load = queue.r_rdy & (e_empty | (slot_free & e_single))
    m.d.comb += queue.r_en.eq(load)
    with m.If(load):
        vec = q_out.vec
        m.d.sync += [e_vec.eq(vec), e_cb.eq(q_out.cb), e_py.eq(q_out.py), e_px.eq(q_out.px)]
        if e_n is None:
            m.d.sync += [e_empty.eq(vec == 0),
                         e_single.eq(without_lowest(vec, lowest(vec)) == 0)]
        else:
            m.d.sync += [e_n.eq(q_out.n), e_empty.eq(q_out.n == 0), e_single.eq(q_out.n <= 1)]
    with m.Elif(slot_free & ~e_empty):
        m.d.sync += [e_vec.eq(rest), e_empty.eq(e_single)]
        if e_n is None:
            m.d.sync += e_single.eq(without_lowest(rest, lowest(rest)) == 0)
        else:
            m.d.sync += [e_n.eq(e_n - 1), e_single.eq(e_n <= 2)]
    marker_go = marker_req & ~queue.r_rdy & e_empty
    with m.If(slot_free):
        with m.If(~e_empty):
            m.d.sync += [out.valid.eq(1), out.payload.y.eq(e_py), out.payload.x.eq(e_px),
                         out.payload.shift.eq(0), out.payload.last.eq(0)]
            if Q == 1:
                m.d.sync += [out.payload.channel.eq(channel), out.payload.mask.eq(0)]
            elif K == 1:
                m.d.sync += [out.payload.channel.eq(e_cb), out.payload.mask.eq(e_vec)]
            else:
                m.d.sync += [out.payload.channel.eq(channel),
                             out.payload.mask.eq(Array(parts)[lane])]
        with m.Elif(marker_go):
            m.d.sync += [out.valid.eq(1), out.payload.eq(0), out.payload.last.eq(1)]
            m.d.comb += marker_sent.eq(1)
        with m.Else():
            m.d.sync += out.valid.eq(0)
    with m.If(clear):
        m.d.sync += [e_vec.eq(0), e_empty.eq(1), e_single.eq(1), out.valid.eq(0)]
    return queue.r_rdy | ~e_empty
