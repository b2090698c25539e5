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
* transmitter: header, payload and CRC of the reply, generated on the fly.

Bytes that arrive while the bridge executes or replies, or outside a frame,
are counted and reported (DISCARDED) once the line has been idle for the
receive timeout.  One state machine does everything (the host waits for each
reply before it sends the next request), which keeps the gateware small: one
block RAM, two CRC-16 trees, a few counters and the reply byte multiplexers.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from . import protocol as P
from .uart import UARTRx, UARTTx

__all__ = ["HostBridge", "crc16_byte"]


def _crc_step(crc: int, byte: int) -> int:
    for i in range(8):
        bit = ((crc >> 15) ^ (byte >> (7 - i))) & 1
        crc = ((crc << 1) & 0xFFFF) ^ (0x1021 if bit else 0)
    return crc


# CRC-16 is linear over GF(2): output bit j of one byte step is the XOR of the
# input bits marked in _CRC_TAPS[j] (bits 0..15: crc, 16..23: byte)
_CRC_TAPS = [[i for i in range(24)
              if (_crc_step(1 << i if i < 16 else 0, 1 << (i - 16) if i >= 16 else 0) >> j) & 1]
             for j in range(16)]


def crc16_byte(crc: Value, byte: Value) -> Value:
    """CRC-16/CCITT-FALSE of ``crc`` after one more ``byte``, as flat XORs."""
    bits_in = Cat(crc, byte)
    out = []
    for taps in _CRC_TAPS:
        v = bits_in[taps[0]]
        for t in taps[1:]:
            v = v ^ bits_in[t]
        out.append(v)
    return Cat(*out)


def _const_bytes(b: bytes) -> Const:
    return C(int.from_bytes(b, "little"), 8 * len(b))


class HostBridge(wiring.Component):
    """The board side of the host protocol for one engine.

    Parameters
    ----------
    engine : NetworkTop
        The engine this bridge drives (for its port widths).
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

    Members
    -------
    rx : In(1), tx : Out(1)
        UART pins.
    start, events, mem_write
        Drive the engine's ports of the same names.
    clearing, done, prediction, cycles, counts, perf
        The engine's outputs.
    rx_strobe, error_strobe : Out(1)
        One cycle per byte received / per error frame started (for LEDs).
    active : Out(1)
        An event beat was sent since the last START.
    """

    def __init__(self, engine, *, divisor: int, clock_hz: int, timeout_cycles: int,
                 stall_cycles: int, design_id: int = 0):
        self.layout = lay = P.link_layout(engine)
        for name, v in (("timeout_cycles", timeout_cycles), ("stall_cycles", stall_cycles)):
            if type(v) is not int or not 1 <= v < 1 << 32:
                raise ValueError(f"{name} must be an integer in 1 .. 2**32 - 1, not {v!r}")
        self._div = divisor
        self._timeout = timeout_cycles
        self._stall = stall_cycles
        self.info = P.BoardInfo(P.VERSION, lay.layers, lay.classes, lay.n_out, lay.count_bytes,
                                lay.event_bytes, lay.addr_bytes, lay.data_bytes, P.MAX_PAYLOAD,
                                int(clock_hz), timeout_cycles, design_id & 0xFFFFFFFF)
        esig = engine.signature.members
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "start": Out(1),
            "events": Out(engine.fmt.signature),
            "mem_write": Out(stream.Signature(engine.mem_layout)),
            "clearing": In(1),
            "done": In(1),
            "prediction": In(len(engine.prediction)),
            "cycles": In(32),
            "counts": In(esig["counts"].shape),
            "perf": In(esig["perf"].shape),
            "rx_strobe": Out(1),
            "error_strobe": Out(1),
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        lay = self.layout
        m.submodules.urx = urx = UARTRx(self._div)
        m.submodules.utx = utx = UARTTx(self._div)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx), self.rx_strobe.eq(urx.valid)]

        buf = Memory(shape=8, depth=P.MAX_PAYLOAD, init=[])
        m.submodules.buf = buf
        wr = buf.write_port()
        rd = buf.read_port(transparent_for=())

        byte = urx.data
        got = urx.valid
        consumed = Signal()  # the state machine takes this byte

        # ------------------------------------------------------------ registers
        cmd = Signal(8)
        seq = Signal(8)
        length = Signal(16)
        idx = Signal(range(P.MAX_PAYLOAD + 1))
        rw, re = lay.write_record, lay.event_bytes
        recmax = max(rw, re)
        rmod = Signal(range(recmax))
        rcnt = Signal(range(recmax))
        crc = Signal(16)
        crc_lo = Signal(8)
        nbytes = Signal(range(P.MAX_PAYLOAD + 8))  # bytes of this frame so far (TIMEOUT detail)
        timer = Signal(range(self._timeout + 1))  # cycles since the last byte, saturating
        stall = Signal(range(self._stall + 1))
        beats = Signal(16)
        disc = Signal(16)
        disc_clr = Signal()
        recbuf = Signal(8 * recmax)
        start = Signal()

        # reply
        r_cmd = Signal(8)
        r_len = Signal(range(P.MAX_PAYLOAD + 1))
        SRC_NONE, SRC_INFO, SRC_RESULT, SRC_PERF, SRC_ERROR = range(5)
        r_src = Signal(range(5))
        pidx = Signal(range(P.MAX_PAYLOAD + 1))
        ridx = Signal(range(5))
        tcrc = Signal(16)
        e_code = Signal(8)
        e_cmd = Signal(8)
        e_detail = Signal(16)
        err_pulse = Signal()

        m.d.comb += [self.start.eq(start), self.error_strobe.eq(err_pulse)]
        m.d.sync += [start.eq(0), err_pulse.eq(0)]

        with m.If(got):
            m.d.sync += timer.eq(0)
        with m.Elif(timer != self._timeout):
            m.d.sync += timer.eq(timer + 1)
        lost = got & ~consumed
        with m.If(disc_clr):
            m.d.sync += disc.eq(lost)
        with m.Elif(lost & (disc != 0xFFFF)):
            m.d.sync += disc.eq(disc + 1)

        def reply(code, src, n):
            m.d.sync += [r_cmd.eq(code), r_src.eq(src), r_len.eq(n), ridx.eq(0), pidx.eq(0),
                         tcrc.eq(0xFFFF)]
            m.next = "TX_HDR"

        def error(code, detail=0, in_cmd=cmd):
            m.d.sync += [e_code.eq(code), e_cmd.eq(in_cmd), e_detail.eq(detail), err_pulse.eq(1)]
            reply(P.ERROR, SRC_ERROR, 4)

        def take():  # consume the byte into the running CRC and the byte count
            m.d.comb += consumed.eq(1)
            m.d.sync += [crc.eq(crc16_byte(crc, byte)), timer.eq(0), nbytes.eq(nbytes + 1)]

        recsize = Mux(cmd == P.Cmd.EVENTS, re, rw)
        m.d.comb += [wr.addr.eq(idx), wr.data.eq(byte), rd.addr.eq(idx)]

        # engine-side beat from the assembled record (the record occupies the top bytes)
        wrec = recbuf[8 * (recmax - rw):]
        erec = recbuf[8 * (recmax - re):]
        mw = self.mem_write.payload
        m.d.comb += [
            mw.select.eq(wrec[:8]),
            mw.addr.eq(wrec[8:8 + 8 * lay.addr_bytes]),
            mw.data.eq(wrec[8 + 8 * lay.addr_bytes:]),
            self.events.payload.eq(erec),
        ]

        # ---------------------------------------------------------- reply
        hdr = Array([C(P.SYNC, 8), r_cmd, seq, r_len[:8], Cat(r_len[8:], C(0, 8))[:8]])
        info = _const_bytes(self.info.pack())
        cnt_bits = 8 * lay.count_bytes
        result = Cat(self.done, self.clearing, C(0, 6),
                     self.prediction, C(0, 8 - len(self.prediction)), self.cycles,
                     *[Cat(c, C(0, cnt_bits - len(c))) for c in self.counts])
        perf = self.perf.as_value()
        errp = Cat(e_code, e_cmd, e_detail)
        pay = Signal(8)
        with m.Switch(r_src):
            for src, word in ((SRC_INFO, info), (SRC_RESULT, result), (SRC_PERF, perf),
                              (SRC_ERROR, errp)):
                with m.Case(src):
                    m.d.comb += pay.eq(word.word_select(pidx[:bits(len(word) // 8)], 8))

        frame_states = ("CMD", "SEQ", "LEN_LO", "LEN_HI", "PAYLOAD", "CRC_LO", "CRC_HI")
        with m.FSM(name="bridge") as fsm:
            with m.State("HUNT"):
                with m.If(got):
                    with m.If(byte == P.SYNC):
                        m.d.comb += consumed.eq(1)
                        m.d.sync += [crc.eq(0xFFFF), cmd.eq(0), seq.eq(0), nbytes.eq(1)]
                        m.next = "CMD"
                with m.Elif((disc != 0) & (timer == self._timeout)):
                    m.d.comb += disc_clr.eq(1)
                    m.d.sync += [cmd.eq(0), seq.eq(0)]
                    error(P.ErrorCode.DISCARDED, disc, 0)
            for name in frame_states:
                with m.State(name):
                    with m.If(got):
                        if name != "CRC_LO" and name != "CRC_HI":
                            take()
                        else:
                            m.d.comb += consumed.eq(1)
                            m.d.sync += [timer.eq(0), nbytes.eq(nbytes + 1)]
                        if name == "CMD":
                            m.d.sync += cmd.eq(byte)
                            m.next = "SEQ"
                        elif name == "SEQ":
                            m.d.sync += seq.eq(byte)
                            m.next = "LEN_LO"
                        elif name == "LEN_LO":
                            m.d.sync += length[:8].eq(byte)
                            m.next = "LEN_HI"
                        elif name == "LEN_HI":
                            n = Cat(length[:8], byte)
                            m.d.sync += [length[8:].eq(byte), idx.eq(0), rmod.eq(0)]
                            with m.If(n > P.MAX_PAYLOAD):
                                error(P.ErrorCode.LENGTH, n)
                            with m.Elif(n == 0):
                                m.next = "CRC_LO"
                            with m.Else():
                                m.next = "PAYLOAD"
                        elif name == "PAYLOAD":
                            m.d.comb += wr.en.eq(1)
                            m.d.sync += [idx.eq(idx + 1),
                                         rmod.eq(Mux(rmod == recsize - 1, 0, rmod + 1))]
                            with m.If(idx + 1 == length):
                                m.next = "CRC_LO"
                        elif name == "CRC_LO":
                            m.d.sync += crc_lo.eq(byte)
                            m.next = "CRC_HI"
                        else:
                            with m.If(Cat(crc_lo, byte) == crc):
                                m.next = "CHECK"
                            with m.Else():
                                error(P.ErrorCode.CRC)
                    with m.Elif(timer == self._timeout):
                        error(P.ErrorCode.TIMEOUT, nbytes)
            with m.State("CHECK"):
                m.d.sync += [idx.eq(0), rcnt.eq(0), stall.eq(0), beats.eq(0)]
                empty = length == 0
                with m.Switch(cmd):
                    for c, src, n in ((P.Cmd.PING, SRC_INFO, P.INFO.size),
                                      (P.Cmd.START, SRC_NONE, 0),
                                      (P.Cmd.RESULT, SRC_RESULT, lay.result_bytes),
                                      (P.Cmd.PERF, SRC_PERF, lay.perf_bytes)):
                        with m.Case(c):
                            with m.If(empty):
                                if c == P.Cmd.START:
                                    m.d.sync += [start.eq(1), self.active.eq(0)]
                                reply(c | P.REPLY, src, n)
                            with m.Else():
                                error(P.ErrorCode.LENGTH, length)
                    with m.Case(P.Cmd.WRITE, P.Cmd.EVENTS):
                        with m.If(~empty & (rmod == 0)):
                            m.next = "FETCH"
                        with m.Else():
                            error(P.ErrorCode.LENGTH, length)
                    with m.Default():
                        error(P.ErrorCode.UNKNOWN)
            with m.State("FETCH"):  # rd.addr = idx; the byte is there next cycle
                m.next = "SHIFT"
            with m.State("SHIFT"):
                m.d.sync += [recbuf.eq(Cat(recbuf[8:], rd.data)), idx.eq(idx + 1)]
                with m.If(rcnt == recsize - 1):
                    m.d.sync += rcnt.eq(0)
                    m.next = "ISSUE"
                with m.Else():
                    m.d.sync += rcnt.eq(rcnt + 1)
                    m.next = "FETCH"
            with m.State("ISSUE"):
                is_ev = cmd == P.Cmd.EVENTS
                m.d.comb += [self.mem_write.valid.eq(~is_ev), self.events.valid.eq(is_ev)]
                taken = Mux(is_ev, self.events.ready, self.mem_write.ready)
                with m.If(taken):
                    m.d.sync += stall.eq(0)
                    with m.If(is_ev):
                        m.d.sync += [beats.eq(beats + 1), self.active.eq(1)]
                    with m.If(idx == length):
                        reply(cmd | P.REPLY, SRC_NONE, 0)
                    with m.Else():
                        m.next = "FETCH"
                with m.Elif(stall == self._stall):
                    error(P.ErrorCode.STALL, beats)
                with m.Else():
                    m.d.sync += stall.eq(stall + 1)

            with m.State("TX_HDR"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(hdr[ridx])]
                with m.If(utx.i.ready):
                    with m.If(ridx != 0):
                        m.d.sync += tcrc.eq(crc16_byte(tcrc, hdr[ridx]))
                    m.d.sync += ridx.eq(ridx + 1)
                    with m.If(ridx == 4):
                        with m.If(r_len == 0):
                            m.next = "TX_CRC0"
                        with m.Else():
                            m.next = "TX_PAY"
            with m.State("TX_PAY"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(pay)]
                with m.If(utx.i.ready):
                    m.d.sync += [tcrc.eq(crc16_byte(tcrc, pay)), pidx.eq(pidx + 1)]
                    with m.If(pidx + 1 == r_len):
                        m.next = "TX_CRC0"
            with m.State("TX_CRC0"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(tcrc[:8])]
                with m.If(utx.i.ready):
                    m.next = "TX_CRC1"
            with m.State("TX_CRC1"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(tcrc[8:])]
                with m.If(utx.i.ready):
                    m.next = "HUNT"
        self._fsm = fsm
        return m


def bits(n: int) -> int:
    """Address bits for ``n`` words (at least 1)."""
    return max(1, (n - 1).bit_length())
