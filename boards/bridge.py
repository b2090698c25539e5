"""The host bridge: UART frames in, engine port activity, reply frames out.

:class:`HostBridge` implements the board side of :mod:`spikeforge.boards.protocol`
next to a :class:`~spikeforge.hw.network.NetworkTop`:

* receiver: hunt for ``SYNC``; header (command, sequence, length); payload
  into a byte buffer (one block RAM, ``MAX_PAYLOAD`` bytes); CRC-16 checked as
  bytes arrive; a request is executed only when its checksum is good;
* executor: WRITE records -> ``mem_write`` beats, EVENTS records -> ``events``
  beats (waiting on ``ready``, with a stall watchdog), START -> a ``start``
  pulse, PING / RESULT / PERF -> a reply read from constants or from the
  engine's outputs;
* transmitter: header, payload and CRC of the reply, generated on the fly;
* batch mode (``batch_beats > 0``): LOAD records -> the image store (one
  block RAM of ``batch_beats`` event beats), BATCH -> the stored beats fed to
  the engine back to back from a prefetching read port (up to one beat a
  cycle), each ``result_valid``'s prediction written into the payload buffer
  (which becomes the reply's class bytes) and a board-side cycle counter.
  With ``batch_beats = 0`` none of it is generated (the same netlist as
  before batch mode, but for the protocol version in the PING constant).

Bytes that arrive while the bridge executes or replies, or outside a frame,
are counted and reported (DISCARDED) once the line has been idle for the
receive timeout.  One state machine does everything (the host waits for each
reply before it sends the next request), which keeps the gateware small: one
block RAM, two CRC-16 units (:mod:`amaranth.lib.crc`, the protocol's
:data:`~spikeforge.boards.protocol.CRC_ALGORITHM`), a few counters and the
reply byte multiplexers.  Records and replies are views of the protocol's
layouts (:func:`~spikeforge.boards.protocol.write_layout`,
:func:`~spikeforge.boards.protocol.result_layout`,
:data:`~spikeforge.boards.protocol.ERROR_LAYOUT`), the same the host packs.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import crc, stream, wiring
from amaranth.lib.enum import Enum
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spikeforge.layouts import byte_size

from spikeforge.hw.arith import copies

from . import protocol as P
from .uart import UARTRx, UARTTx

__all__ = ["HostBridge"]


class Source(Enum, shape=3):
    """Where the payload bytes of a reply come from."""
    NONE = 0
    INFO = 1
    RESULT = 2
    PERF = 3
    ERROR = 4
    STORE = 5   # batch mode: the LOAD reply
    BATCH = 6   # batch mode: the BATCH reply (head, then the payload buffer)


def _const_bytes(b: bytes) -> Const:
    return C(int.from_bytes(b, "little"), 8 * len(b))


class _Link:
    """The registers the bridge's state machine shares between its parts, and
    the three actions every part takes on them (:meth:`take`, :meth:`reply`,
    :meth:`error`).  Built inside :meth:`HostBridge.elaborate`."""

    def __init__(self, m: Module, bridge: "HostBridge"):
        lay = bridge.layout
        self.m = m
        self.urx = UARTRx(bridge._div)
        self.utx = UARTTx(bridge._div)
        # one data byte per cycle at most; the CRC register updates one cycle later
        self.rx_crc = crc.Processor(P.CRC_ALGORITHM(data_width=8))
        self.tx_crc = crc.Processor(P.CRC_ALGORITHM(data_width=8))
        m.submodules.urx, m.submodules.utx = self.urx, self.utx
        m.submodules.rx_crc, m.submodules.tx_crc = self.rx_crc, self.tx_crc
        # the reply's CRC takes its start, byte and valid from registers, a
        # cycle after the state machine decides them (timing: its decode
        # into the CRC register's enable was the critical path of a ULX3S
        # build); it is read a character later (TX_CRC0 waits for the UART)
        self.crc_start, self.crc_valid = Signal(), Signal()
        self.crc_data = Signal(8)
        m.d.sync += [self.crc_start.eq(0), self.crc_valid.eq(0)]
        m.d.comb += [self.tx_crc.start.eq(self.crc_start), self.tx_crc.valid.eq(self.crc_valid),
                     self.tx_crc.data.eq(self.crc_data)]
        self.byte = self.urx.data
        self.got = self.urx.valid
        self.consumed = Signal()  # the state machine takes this byte
        m.d.comb += self.rx_crc.data.eq(self.byte)
        # request
        self.cmd = Signal(8)
        self.seq = Signal(8)
        self.length = Signal(16)
        self.idx = Signal(range(P.MAX_PAYLOAD + 1))
        self.recmax = max(lay.write_record, lay.event_bytes)
        self.rmod = Signal(range(self.recmax))  # payload byte index within its record
        self.rcnt = Signal(range(self.recmax))
        self.recbuf = Signal(8 * self.recmax)   # the record being assembled
        # recbuf shifts in the cycle after FETCH (SHIFT), enabled from a
        # register: the enable drives every bit of the record (2,000+ on a
        # wide engine), and a state decode in front of that net was the
        # ULX3S build's critical path (14 ns of routing)
        self.shift_en = Signal()
        self.crc_lo = Signal(8)
        self.crc_hi = Signal(8)
        self.nbytes = Signal(range(P.MAX_PAYLOAD + 8))  # bytes of this frame (TIMEOUT detail)
        self.timer = Signal(range(bridge._timeout + 1))  # cycles since the last byte, saturating
        self.idle = Signal()  # timer == timeout, kept in a register (timing)
        self.pay_end = Signal()  # idx + 1 == length, a cycle late (timing)
        self.rec_end = Signal()  # rmod == record size - 1, a cycle late (timing)
        self.stall = Signal(range(bridge._stall + 1))
        self.stalled = Signal()  # stall == stall_cycles, from a register (timing)
        self.is_ev = Signal()    # cmd == EVENTS, from a register (timing)
        self.last = Signal()     # the record in ISSUE ends the payload
        self.beats = Signal(16)
        self.disc = Signal(16)
        self.disc_clr = Signal()
        self.disc_any = Signal()  # disc != 0, from a register (timing)
        # reply
        self.r_cmd = Signal(8)
        self.r_len = Signal(range(P.MAX_PAYLOAD + 1))
        self.r_src = Signal(Source)
        self.pidx = Signal(range(P.MAX_PAYLOAD + 1))
        self.tx_end = Signal()  # pidx + 1 == r_len, a cycle late (timing)
        self.ridx = Signal(range(5))
        self.err = Signal(P.ERROR_LAYOUT)
        self.err_pulse = Signal()
        # batch mode (only used, so only generated, with batch_beats > 0)
        self.batch = bridge._batch
        if self.batch:
            nb = bridge._batch
            self.is_ld = Signal()     # cmd == LOAD, from a register (timing)
            self.fill = Signal(range(nb + 1))      # beats in the store
            self.nrec = Signal(range(P.MAX_PAYLOAD + 1))  # records of the payload received
            self.fits = Signal()      # fill + nrec <= batch_beats, from a register
            self.fill_zero = Signal()  # fill == 0, from a register
            self.tail = Signal(16)    # the payload's last two bytes (BATCH: images)
            self.n_ok = Signal()      # 1 <= tail <= MAX_BATCH_IMAGES, from a register
            self.tail_one = Signal()  # tail == 1, from a register
            self.sized = Signal()     # length == BATCH's payload size, from a register
            self.running = Signal()   # a BATCH is feeding the engine (payload from the store)
            self.rptr = Signal(range(nb + 1))      # next store word to read
            self.at_end = Signal()    # rptr == fill, from a register
            self.vld = Signal()       # the store's read data is a beat not yet taken
            self.rem = Signal(16)     # results still to come
            self.rem_one = Signal()   # rem == 1, from a register
            self.rlen = Signal(range(P.MAX_PAYLOAD + 1))  # the BATCH reply's length
            self.images = Signal(16)
            self.cyc = Signal(33)     # board cycles; bit 32: saturated
            self.counting = Signal()  # the first beat has been taken

    def take(self) -> None:
        """Consume the byte into the running CRC and the byte count."""
        m = self.m
        m.d.comb += [self.consumed.eq(1), self.rx_crc.valid.eq(1)]
        m.d.sync += self.nbytes.eq(self.nbytes + 1)  # (the timer restarts on any byte)

    def reply(self, code, src: Source, n) -> None:
        """Send a reply frame ``code`` with ``n`` payload bytes from ``src``."""
        m = self.m
        m.d.sync += [self.crc_start.eq(1), self.r_cmd.eq(code), self.r_src.eq(src),
                     self.r_len.eq(n), self.ridx.eq(0), self.pidx.eq(0)]
        m.next = "TX_HDR"

    def error(self, code, detail=0, in_cmd=None) -> None:
        """Send an error frame (``in_cmd``: the request's command, default ``cmd``)."""
        m = self.m
        m.d.sync += [self.err.code.eq(code), self.err.cmd.eq(self.cmd if in_cmd is None else in_cmd),
                     self.err.detail.eq(detail), self.err_pulse.eq(1)]
        self.reply(P.ERROR, Source.ERROR, byte_size(P.ERROR_LAYOUT))


class HostBridge(wiring.Component):
    """The board side of the host protocol for one engine.

    Parameters
    ----------
    engine : NetworkTop or EngineGeometry
        The engine this bridge drives (for its port widths only).
    divisor : int
        UART clock cycles per bit.
    clock_hz : int
        Reported in the PING reply.
    timeout_cycles : int
        Receive timeout: a frame with a gap this long is dropped (TIMEOUT);
        discarded bytes are reported after this much idle line.
    stall_cycles : int
        An event beat not taken for this long aborts EVENTS (STALL).
    design_id : int
        Reported in the PING reply (:func:`protocol.design_id`).
    batch_beats : int
        Capacity of the image store in event beats (block RAM of
        ``batch_beats`` x the event payload's width), reported in the PING
        reply; 0 (the default): no batch mode, LOAD and BATCH are UNKNOWN.

    Members
    -------
    rx : In(1), tx : Out(1)
        UART pins.
    start, events, mem_write
        Drive the engine's ports of the same names.
    clearing, done, prediction, cycles, counts, perf
        The engine's outputs.
    result_valid : In(1)
        The engine's ``result_valid`` (only with ``batch_beats > 0``).
    taken : In(1)
        The engine took an event beat, a cycle late (a register by the
        engine: the beats reach it through a FIFO, :class:`~.top.BoardTop`);
        the BATCH's board cycles count from its first (only with
        ``batch_beats > 0``).
    batch_running : Out(1)
        A BATCH is running (only with ``batch_beats > 0``).
    rx_strobe, error_strobe : Out(1)
        One cycle per byte received / per error frame started (for LEDs).
    active : Out(1)
        An event beat was sent since the last START.
    """

    def __init__(self, engine, *, divisor: int, clock_hz: int, timeout_cycles: int,
                 stall_cycles: int, design_id: int = 0, batch_beats: int = 0):
        g = getattr(engine, "geometry", engine)
        self.layout = lay = P.link_layout(g)
        for name, v in (("timeout_cycles", timeout_cycles), ("stall_cycles", stall_cycles)):
            if type(v) is not int or not 1 <= v < 1 << 32:
                raise ValueError(f"{name} must be an integer in 1 .. 2**32 - 1, not {v!r}")
        check_batch_beats(batch_beats)
        self._div = divisor
        self._timeout = timeout_cycles
        self._stall = stall_cycles
        self._batch = batch_beats
        self._fmt = g.fmt
        self._stcb = g.stcb
        self.info = P.BoardInfo(P.VERSION, lay.layers, lay.classes, lay.n_out, lay.count_bytes,
                                lay.event_bytes, lay.addr_bytes, lay.data_bytes, P.MAX_PAYLOAD,
                                int(clock_hz), timeout_cycles, design_id & 0xFFFFFFFF,
                                batch_beats)
        batch_ports = ({"result_valid": In(1), "taken": In(1), "batch_running": Out(1)}
                       if batch_beats else {})
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "start": Out(1),
            "events": Out(g.fmt.signature),
            "mem_write": Out(stream.Signature(g.mem_layout)),
            "clearing": In(1),
            "done": In(1),
            "prediction": In(g.prediction_bits),
            "cycles": In(32),
            "counts": In(g.counts_layout),
            "perf": In(g.perf_layout),
            "rx_strobe": Out(1),
            "error_strobe": Out(1),
            "active": Out(1),
            **batch_ports,
        })

    def elaborate(self, platform):
        m = Module()
        k = _Link(m, self)
        m.d.comb += [k.urx.rx.eq(self.rx), self.tx.eq(k.utx.tx), self.rx_strobe.eq(k.urx.valid),
                     self.error_strobe.eq(k.err_pulse)]
        m.d.sync += [self.start.eq(0), k.err_pulse.eq(0)]
        self._line_watch(m, k)
        buf = self._payload_buffer(m, k)
        store = self._image_store(m, k) if self._batch else None
        self._engine_beats(m, k, store)
        hdr, pay = self._reply_bytes(m, k, buf)
        m.d.sync += k.shift_en.eq(0)   # set in FETCH (below): the SHIFT state's shift
        with m.If(k.shift_en):
            m.d.sync += k.recbuf.eq(Cat(k.recbuf[8:], buf[1].data))
        with m.FSM(name="bridge"):
            self._receive(m, k, buf)
            self._execute(m, k, buf, store)
            if self._batch:
                self._run_batch(m, k, buf, store)
            self._transmit(m, k, hdr, pay)
        return m

    # ------------------------------------------------------------ parts

    def _line_watch(self, m, k: _Link) -> None:
        """The idle timer (receive timeout) and the count of discarded bytes."""
        # ``idle`` is ``timer == timeout`` a cycle early, from a register: the
        # comparison into the state machine's error replies and ``start`` was
        # the iCE40's critical path
        with m.If(k.got):
            m.d.sync += [k.timer.eq(0), k.idle.eq(0)]
        with m.Elif(~k.idle):
            m.d.sync += [k.timer.eq(k.timer + 1), k.idle.eq(k.timer == self._timeout - 1)]
        lost = k.got & ~k.consumed
        with m.If(k.disc_clr):
            m.d.sync += [k.disc.eq(lost), k.disc_any.eq(lost)]
        with m.Elif(lost):
            m.d.sync += k.disc_any.eq(1)
            with m.If(k.disc != 0xFFFF):
                m.d.sync += k.disc.eq(k.disc + 1)

    def _payload_buffer(self, m, k: _Link):
        """The request payload (one block RAM): written at ``idx`` as bytes
        arrive, read back at ``idx`` (one cycle of read latency) to execute."""
        m.submodules.buf = buf = Memory(shape=8, depth=P.MAX_PAYLOAD, init=[])
        wr = buf.write_port()
        rd = buf.read_port(transparent_for=())
        m.d.comb += [wr.addr.eq(k.idx), wr.data.eq(k.byte), rd.addr.eq(k.idx)]
        return wr, rd

    def _image_store(self, m, k: _Link):
        """Batch mode: the image store (one block RAM of ``batch_beats`` event
        payloads), written at ``fill`` by LOAD, read at ``rptr`` by BATCH (the
        read data is a prefetched beat: ``vld``)."""
        w = self._fmt.width
        m.submodules.store = store = Memory(shape=w, depth=self._batch, init=[])
        wr = store.write_port()
        rd = store.read_port(transparent_for=())
        erec = k.recbuf[8 * (k.recmax - self.layout.event_bytes):][:w]
        m.d.comb += [wr.addr.eq(k.fill), wr.data.eq(erec), rd.addr.eq(k.rptr)]
        # the checks of LOAD and BATCH come from registers (the payload's last
        # byte is two characters before the request executes)
        m.d.sync += [k.fits.eq(k.fill + k.nrec <= self._batch), k.fill_zero.eq(k.fill == 0),
                     k.n_ok.eq((k.tail != 0) & (k.tail <= P.MAX_BATCH_IMAGES)),
                     k.tail_one.eq(k.tail == 1), k.is_ld.eq(k.cmd == P.Cmd.LOAD)]
        m.d.comb += self.batch_running.eq(k.running)
        return wr, rd

    def _engine_beats(self, m, k: _Link, store=None) -> None:
        """The engine-side beat from the assembled record (which occupies the
        top bytes of ``recbuf``): a WRITE record or an event payload; in batch
        mode, while a BATCH runs, the store's read data."""
        lay = self.layout
        wrec = P.write_layout(lay.addr_bytes, lay.data_bytes)(
            k.recbuf[8 * (k.recmax - lay.write_record):])
        erec = k.recbuf[8 * (k.recmax - lay.event_bytes):]
        if store is not None:
            erec = Mux(k.running, store[1].data, erec)
        mw = self.mem_write.payload
        m.d.comb += [
            mw.select.eq(wrec.select),
            mw.addr.eq(wrec.addr),
            mw.data.eq(wrec.data),
            self.events.payload.eq(erec),
        ]

    def _reply_bytes(self, m, k: _Link, buf):
        """``(hdr, pay)``: the header byte ``ridx`` and payload byte ``pidx``
        of the reply being sent."""
        lay = self.layout
        hdr = Array([C(P.SYNC, 8), k.r_cmd, k.seq, k.r_len[:8], Cat(k.r_len[8:], C(0, 8))[:8]])
        result = Signal(P.result_layout(lay.n_out, lay.count_bytes))
        m.d.comb += [result.status.done.eq(self.done), result.status.clearing.eq(self.clearing),
                     result.prediction.eq(self.prediction), result.cycles.eq(self.cycles)]
        m.d.comb += [result.counts[i].eq(c) for i, c in enumerate(self.counts)]
        words = {Source.INFO: _const_bytes(self.info.pack()),
                 Source.RESULT: result.as_value(),
                 Source.PERF: self.perf.as_value(),
                 Source.ERROR: k.err.as_value()}
        if self._batch:
            st = Signal(P.STORE_LAYOUT)
            head = Signal(P.BATCH_REPLY_LAYOUT)
            m.d.comb += [st.beats.eq(k.fill), head.images.eq(k.images),
                         head.cycles.eq(k.cyc[:32] | k.cyc[32].replicate(32))]
            words[Source.STORE] = st.as_value()
        # register stages (timing: the byte select into the UART and the
        # CRC was the iCE40's critical path, and a one-stage select of the
        # source's byte and of the source, eight LUT levels, became it
        # again): each source's byte at ``pidx``, registered, then the
        # source's.  A source of more than 8 bytes (the layers' counters,
        # spread over the device with their cores) first in groups of 8, the
        # byte of each at ``pidx``'s low bits registered, then the group's
        # (``pidx`` into the counters' 96-byte select, at fan-out 362, was
        # the critical path of a ULX3S build with its block RAMs pinned).
        # The groups' selects come from registered copies of ``pidx``, each
        # for its share of the groups (``pidx``, at fan-out 260, reached the
        # counters' groups, spread with their cores, over 7.5 ns of routing
        # in a ULX3S build).  Four cycles late is soon enough:
        # ``pidx`` moves once a character, >= 40 cycles, and from 0 after
        # the 5 header bytes.  Only with batch mode (the ULX3S's: a build
        # without it, the iCEBreaker's, is small and slow enough for
        # ``pidx`` itself, and its logic cells are few)
        grouped = [w for w in words.values() if len(w) > 64]
        wide = max((bits(len(w) // 8) for w in grouped), default=0)
        if not grouped:
            sels = []
        elif self._batch:
            sels = copies(m, k.pidx[:wide], "pidx")
        else:
            sels = [k.pidx[:wide]]
        byte = {}
        for src, word in words.items():
            name = f"pay_{src.name.lower()}"
            byte[src] = Signal(8, name=name)
            n = len(word) // 8
            if n <= 8:
                m.d.sync += byte[src].eq(word.word_select(k.pidx[:bits(n)], 8))
                continue
            groups = []
            for g in range(0, n, 8):
                gb = Signal(8, name=f"{name}_g{g // 8}")
                gw = word[8 * g:8 * min(n, g + 8)]
                sel = sels[(g // 8) * len(sels) // -(-n // 8)]
                m.d.sync += gb.eq(Cat(gw, C(0, 64 - len(gw))).word_select(sel[:3], 8))
                groups.append(gb)
            hi = Signal(bits(n) - 3, name=f"{name}_hi")   # pidx's group, with the groups
            m.d.sync += [hi.eq(sels[0][3:bits(n)]), byte[src].eq(Array(groups)[hi])]
        if self._batch:
            # the head, then the class bytes the run wrote into the payload
            # buffer from byte HEAD on (read at idx, which follows pidx)
            nh = P.BATCH_REPLY_LAYOUT.size // 8
            hv = head.as_value()
            byte[Source.BATCH] = Signal(8, name="pay_batch")
            m.d.sync += byte[Source.BATCH].eq(
                Mux(k.pidx < nh, hv.word_select(k.pidx[:bits(nh)], 8), buf[1].data))
        pay_r = Signal(8)
        with m.Switch(k.r_src):
            for src, b in byte.items():
                with m.Case(src):
                    m.d.sync += pay_r.eq(b)
            with m.Default():
                m.d.sync += pay_r.eq(0)
        return hdr, pay_r

    # ------------------------------------------------------------ state machine

    def _receive(self, m, k: _Link, buf) -> None:
        """HUNT for ``SYNC``, then the frame's header, payload and CRC bytes."""
        wr, _ = buf
        byte = k.byte
        with m.State("HUNT"):
            with m.If(k.got):
                with m.If(byte == P.SYNC):
                    m.d.comb += [k.consumed.eq(1), k.rx_crc.start.eq(1)]
                    m.d.sync += [k.cmd.eq(0), k.seq.eq(0), k.nbytes.eq(1)]
                    m.next = "CMD"
            with m.Elif(k.disc_any & k.idle):
                m.d.comb += k.disc_clr.eq(1)
                m.d.sync += [k.cmd.eq(0), k.seq.eq(0)]
                k.error(P.ErrorCode.DISCARDED, k.disc, 0)
        recsize = Mux(self._beat_records(k), self.layout.event_bytes, self.layout.write_record)
        # the payload's comparisons come from registers (timing: their carry
        # chains into the state machine were the iCE40's critical path); a
        # cycle late is soon enough, received bytes are >= 40 cycles apart
        # (a divisor >= 4, ten bits a byte)
        m.d.sync += [k.pay_end.eq(k.idx + 1 == k.length), k.rec_end.eq(k.rmod == recsize - 1)]
        frame_states = ("CMD", "SEQ", "LEN_LO", "LEN_HI", "PAYLOAD", "CRC_LO", "CRC_HI")
        for name in frame_states:
            with m.State(name):
                with m.If(k.got):
                    if name in ("CRC_LO", "CRC_HI"):  # not part of the checksum
                        m.d.comb += k.consumed.eq(1)
                        m.d.sync += k.nbytes.eq(k.nbytes + 1)
                    else:
                        k.take()
                    if name == "CMD":
                        m.d.sync += k.cmd.eq(byte)
                        m.next = "SEQ"
                    elif name == "SEQ":
                        m.d.sync += k.seq.eq(byte)
                        m.next = "LEN_LO"
                    elif name == "LEN_LO":
                        m.d.sync += k.length[:8].eq(byte)
                        m.next = "LEN_HI"
                    elif name == "LEN_HI":
                        m.d.sync += [k.length[8:].eq(byte), k.idx.eq(0), k.rmod.eq(0)]
                        if k.batch:
                            m.d.sync += k.nrec.eq(0)
                        m.next = "LEN_CHECK"
                    elif name == "PAYLOAD":
                        m.d.comb += wr.en.eq(1)
                        m.d.sync += [k.idx.eq(k.idx + 1), k.rmod.eq(Mux(k.rec_end, 0, k.rmod + 1))]
                        if k.batch:
                            m.d.sync += [k.tail.eq(Cat(k.tail[8:], byte)),
                                         k.nrec.eq(k.nrec + k.rec_end)]
                        with m.If(k.pay_end):
                            m.next = "CRC_LO"
                    elif name == "CRC_LO":
                        m.d.sync += k.crc_lo.eq(byte)
                        m.next = "CRC_HI"
                    else:
                        m.d.sync += k.crc_hi.eq(byte)
                        m.next = "CRC_CHECK"
                with m.Elif(k.idle):
                    k.error(P.ErrorCode.TIMEOUT, k.nbytes)
        # the length and the checksum are checked in a cycle of their own, from
        # registers (timing: a received byte's 16-bit comparisons into the
        # reply's registers were the iCE40's critical path); the next byte is
        # a whole UART character away
        with m.State("LEN_CHECK"):
            with m.If(k.length > P.MAX_PAYLOAD):
                k.error(P.ErrorCode.LENGTH, k.length)
            with m.Elif(k.length == 0):
                m.next = "CRC_LO"
            with m.Else():
                m.next = "PAYLOAD"
        with m.State("CRC_CHECK"):
            with m.If(Cat(k.crc_lo, k.crc_hi) == k.rx_crc.crc):
                m.next = "CHECK"
            with m.Else():
                k.error(P.ErrorCode.CRC)

    def _beat_records(self, k: _Link, registered: bool = False):
        """Whether the request's records are event beats (EVENTS; LOAD in
        batch mode): from ``cmd``, or (``registered``) from its registered
        flags ``is_ev`` / ``is_ld``, a cycle behind ``cmd``."""
        if registered:
            return k.is_ev | k.is_ld if k.batch else k.is_ev
        if k.batch:
            return (k.cmd == P.Cmd.EVENTS) | (k.cmd == P.Cmd.LOAD)
        return k.cmd == P.Cmd.EVENTS

    def _execute(self, m, k: _Link, buf, store=None) -> None:
        """CHECK the request's length for its command, then reply (PING, START,
        RESULT, PERF) or FETCH / SHIFT each record out of the buffer and ISSUE
        it to the engine (WRITE, EVENTS, with the stall watchdog) or to the
        image store (LOAD); BATCH starts the run (:meth:`_run_batch`)."""
        _, rd = buf
        lay = self.layout
        # (the command's flags, registered: ``cmd``'s comparisons into
        # SHIFT's next state were a ULX3S build's path at -1.08 ns)
        recsize = Mux(self._beat_records(k, registered=True), lay.event_bytes, lay.write_record)
        # CHECK and ISSUE decide from registers only, besides the engine's
        # ``ready`` (timing: the comparisons and ``ready`` into the reply's
        # registers were the iCE40's critical path; the switch on ``cmd`` and
        # the length's comparisons into the state and error registers, a
        # ULX3S build's, 2.2 ns short of 100 MHz); ``cmd`` and ``length`` are
        # set two characters or more before CHECK, and so is ``rmod``
        is_cmd = {c: Signal(name=f"is_{c.name.lower()}") for c in P.Cmd
                  if c not in (P.Cmd.LOAD, P.Cmd.BATCH) or k.batch}
        is_cmd[P.Cmd.EVENTS] = k.is_ev
        if k.batch:
            is_cmd[P.Cmd.LOAD] = k.is_ld
        empty, whole = Signal(), Signal()
        m.d.sync += [s.eq(k.cmd == c) for c, s in is_cmd.items() if c != P.Cmd.LOAD]
        m.d.sync += [empty.eq(k.length == 0), whole.eq(k.rmod == 0)]
        if k.batch:
            m.d.sync += k.sized.eq(k.length == P.BATCH_LAYOUT.size // 8)
        with m.State("CHECK"):
            m.d.sync += [k.idx.eq(0), k.rcnt.eq(0), k.stall.eq(0), k.stalled.eq(0),
                         k.beats.eq(0)]
            case = m.If
            for c, src, n in ((P.Cmd.PING, Source.INFO, len(self.info.pack())),
                              (P.Cmd.START, Source.NONE, 0),
                              (P.Cmd.RESULT, Source.RESULT, lay.result_bytes),
                              (P.Cmd.PERF, Source.PERF, lay.perf_bytes)):
                with case(is_cmd[c]):
                    with m.If(empty):
                        if c == P.Cmd.START:
                            m.d.sync += [self.start.eq(1), self.active.eq(0)]
                        k.reply(c | P.REPLY, src, n)
                    with m.Else():
                        k.error(P.ErrorCode.LENGTH, k.length)
                case = m.Elif
            with m.Elif(is_cmd[P.Cmd.WRITE] | is_cmd[P.Cmd.EVENTS]):
                with m.If(~empty & whole):
                    m.next = "FETCH"
                with m.Else():
                    k.error(P.ErrorCode.LENGTH, k.length)
            if k.batch:
                self._check_batch(m, k, empty, whole, is_cmd)
            with m.Else():
                k.error(P.ErrorCode.UNKNOWN)
        with m.State("FETCH"):  # rd.addr = idx; the byte is there next cycle
            m.d.sync += k.shift_en.eq(1)
            m.next = "SHIFT"
        with m.State("SHIFT"):
            m.d.sync += [k.idx.eq(k.idx + 1), k.last.eq(k.idx + 1 == k.length)]
            with m.If(k.rcnt == recsize - 1):
                m.d.sync += k.rcnt.eq(0)
                m.next = "ISSUE"
            with m.Else():
                m.d.sync += k.rcnt.eq(k.rcnt + 1)
                m.next = "FETCH"
        with m.State("ISSUE"):
            is_ev = k.is_ev
            if k.batch:  # LOAD: a store write, always taken
                is_ld = k.is_ld
                m.d.comb += [self.mem_write.valid.eq(~is_ev & ~is_ld),
                             self.events.valid.eq(is_ev)]
                taken = Mux(is_ev, self.events.ready, is_ld | self.mem_write.ready)
            else:
                m.d.comb += [self.mem_write.valid.eq(~is_ev), self.events.valid.eq(is_ev)]
                taken = Mux(is_ev, self.events.ready, self.mem_write.ready)
            with m.If(taken):
                m.d.sync += [k.stall.eq(0), k.stalled.eq(0)]
                with m.If(is_ev):
                    m.d.sync += [k.beats.eq(k.beats + 1), self.active.eq(1)]
                if k.batch:
                    with m.If(is_ld):
                        m.d.comb += store[0].en.eq(1)
                        m.d.sync += k.fill.eq(k.fill + 1)
                with m.If(k.last):
                    if k.batch:
                        with m.If(is_ld):
                            k.reply(k.cmd | P.REPLY, Source.STORE, P.STORE_LAYOUT.size // 8)
                        with m.Else():
                            k.reply(k.cmd | P.REPLY, Source.NONE, 0)
                    else:
                        k.reply(k.cmd | P.REPLY, Source.NONE, 0)
                with m.Else():
                    m.next = "FETCH"
            with m.Elif(k.stalled):
                k.error(P.ErrorCode.STALL, k.beats)
            with m.Else():
                m.d.sync += [k.stall.eq(k.stall + 1), k.stalled.eq(k.stall == self._stall - 1)]

    def _check_batch(self, m, k: _Link, empty, whole, is_cmd) -> None:
        """CHECK's cases for LOAD and BATCH (batch mode): ``Elif`` cases of
        its chain on the registered ``cmd == ...`` flags ``is_cmd``."""
        nh = P.BATCH_REPLY_LAYOUT.size // 8
        fill16 = (Mux(k.fill[16:].any(), 0xFFFF, k.fill[:16]) if len(k.fill) > 16 else k.fill)
        with m.Elif(is_cmd[P.Cmd.LOAD]):
            with m.If(empty):  # empty the store
                m.d.sync += k.fill.eq(0)
                k.reply(P.Cmd.LOAD | P.REPLY, Source.STORE, P.STORE_LAYOUT.size // 8)
            with m.Elif(~whole):
                k.error(P.ErrorCode.LENGTH, k.length)
            with m.Elif(~k.fits):  # refused whole: nothing appended
                k.error(P.ErrorCode.STORE, fill16)
            with m.Else():
                m.next = "FETCH"
        with m.Elif(is_cmd[P.Cmd.BATCH]):
            with m.If(~k.sized):
                k.error(P.ErrorCode.LENGTH, k.length)
            with m.Elif(~k.n_ok):
                k.error(P.ErrorCode.RANGE, k.tail)
            with m.Elif(k.fill_zero):
                k.error(P.ErrorCode.STORE, 0)
            with m.Else():
                # the engine is reset (its first beat waits for the clear
                # pass); the class bytes go into the payload buffer from byte
                # ``nh`` on, after the reply's head
                m.d.sync += [self.start.eq(1), self.active.eq(0), k.running.eq(1),
                             k.rptr.eq(0), k.at_end.eq(0), k.vld.eq(0),
                             k.rem.eq(k.tail), k.rem_one.eq(k.tail_one), k.images.eq(k.tail),
                             k.rlen.eq(k.tail + nh), k.idx.eq(nh),
                             k.cyc.eq(0), k.counting.eq(0)]
                m.next = "RUN"

    def _run_batch(self, m, k: _Link, buf, store) -> None:
        """BATCH: feed the stored beats to the engine (RUN), collect a class
        byte at each ``result_valid``, reply after the last one.  The store's
        read port prefetches: its data is the beat offered (``vld``), and a
        new word is read whenever that one is taken or there is none, so the
        engine can take a beat every cycle.  An STCB network (no back-to-back
        images) pauses after each image's marker (RESTART): its result, then a
        ``start`` and the clear pass before the next image's beats."""
        wr, _ = buf
        _, srd = store
        ev = self.events
        take = Signal()
        m.d.comb += take.eq(ev.valid & ev.ready)
        last_at = self._fmt.layout["last"].offset

        def step(offer: bool) -> None:
            if offer:
                m.d.comb += ev.valid.eq(k.vld)
            adv = ~k.vld | take
            m.d.comb += srd.en.eq(adv)
            with m.If(adv):
                m.d.sync += k.vld.eq(~k.at_end)
                with m.If(~k.at_end):
                    m.d.sync += [k.rptr.eq(k.rptr + 1), k.at_end.eq(k.rptr + 1 == k.fill)]
            # board cycles: from the cycle the engine takes the first beat to
            # the one the last result comes in, both included (``taken`` is
            # that take a cycle late: its cycle and this one)
            with m.If(self.taken & ~k.counting):
                m.d.sync += [k.cyc.eq(2), k.counting.eq(1)]
            with m.Elif(k.counting & ~k.cyc[32]):
                m.d.sync += k.cyc.eq(k.cyc + 1)
            with m.If(take):
                m.d.sync += self.active.eq(1)
            with m.If(self.result_valid):
                m.d.comb += [wr.en.eq(1), wr.data.eq(self.prediction)]
                m.d.sync += [k.idx.eq(k.idx + 1), k.rem.eq(k.rem - 1), k.rem_one.eq(k.rem == 2)]
            # the watchdog: neither a beat taken nor a result
            with m.If(take | self.result_valid):
                m.d.sync += [k.stall.eq(0), k.stalled.eq(0)]
            with m.Elif(k.stalled):
                m.d.sync += k.running.eq(0)
                k.error(P.ErrorCode.STALL, k.idx - P.BATCH_REPLY_LAYOUT.size // 8)
            with m.Else():
                m.d.sync += [k.stall.eq(k.stall + 1), k.stalled.eq(k.stall == self._stall - 1)]

        def finish() -> None:
            with m.If(self.result_valid & k.rem_one):
                m.d.sync += [k.running.eq(0), k.idx.eq(0)]  # idx follows pidx in TX_PAY
                k.reply(P.Cmd.BATCH | P.REPLY, Source.BATCH, k.rlen)

        with m.State("RUN"):
            step(offer=True)
            if self._stcb:
                with m.If(take & srd.data[last_at]):
                    m.next = "RESTART"
            finish()
        if self._stcb:
            with m.State("RESTART"):
                step(offer=False)
                with m.If(self.result_valid & ~k.rem_one):
                    m.d.sync += self.start.eq(1)
                    m.next = "RUN"
                finish()

    def _transmit(self, m, k: _Link, hdr, pay) -> None:
        """The reply: header (``SYNC`` not in the checksum), payload, CRC."""
        utx, tx_crc = k.utx, k.tx_crc
        # from a register (timing: the compare's carry chain into the state
        # machine was the ULX3S build's critical path); a cycle late is soon
        # enough, pidx moves once a character (>= 40 cycles)
        m.d.sync += k.tx_end.eq(k.pidx + 1 == k.r_len)
        with m.State("TX_HDR"):
            m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(hdr[k.ridx])]
            with m.If(utx.i.ready):
                m.d.sync += [k.crc_valid.eq(k.ridx != 0), k.crc_data.eq(hdr[k.ridx])]
                m.d.sync += k.ridx.eq(k.ridx + 1)
                with m.If(k.ridx == 4):
                    with m.If(k.r_len == 0):
                        m.next = "TX_CRC0"
                    with m.Else():
                        m.next = "TX_PAY"
        with m.State("TX_PAY"):
            m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(pay)]
            with m.If(utx.i.ready):
                m.d.sync += [k.crc_valid.eq(1), k.crc_data.eq(pay)]
                m.d.sync += k.pidx.eq(k.pidx + 1)
                if k.batch:  # the payload buffer is read at idx (the BATCH reply)
                    m.d.sync += k.idx.eq(k.idx + 1)
                with m.If(k.tx_end):
                    m.next = "TX_CRC0"
        with m.State("TX_CRC0"):
            m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(tx_crc.crc[:8])]
            with m.If(utx.i.ready):
                m.next = "TX_CRC1"
        with m.State("TX_CRC1"):
            m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(tx_crc.crc[8:])]
            with m.If(utx.i.ready):
                m.next = "HUNT"


def check_batch_beats(v) -> int:
    """``batch_beats`` validated: an integer in ``0 .. MAX_BATCH_BEATS``."""
    if type(v) is not int or not 0 <= v <= MAX_BATCH_BEATS:
        raise ValueError(f"batch_beats must be an integer in 0 .. {MAX_BATCH_BEATS}, not {v!r}")
    return v


#: The largest image store (beats) a bridge takes: the LOAD reply's and the
#: counters' widths allow more; this bounds a typo's block RAM.
MAX_BATCH_BEATS = 1 << 20


def bits(n: int) -> int:
    """Address bits for ``n`` words (at least 1)."""
    return max(1, (n - 1).bit_length())
