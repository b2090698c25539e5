"""SDR SDRAM: a controller for the ULX3S's 32 MB chip, and a model of the chip
that checks every command against the datasheet's timing.

The ULX3S carries one 16-bit SDR SDRAM: 4 banks x 8,192 rows x 512 columns
(32 MB: IS42S16160, MT48LC16M16A2) or, on later revisions, 1,024 columns
(64 MB: AS4C32M16SB, of which this geometry uses half).  The timing below
(:class:`SdramTiming`) takes the slowest of those parts' -7 / -6A grades
(tRCD and tRP 21 ns: the AS4C32M16SB-7's), so one controller serves them
all.

:class:`SdramController` takes one word a beat on ``cmd`` (a read or a write
of word ``addr``: bank, row and column from the top down) and returns the
words read on ``rdata``, in order.  It opens a word's row when it needs it
(one bank at a time), issues a READ or WRITE a cycle for as long as the
beats stay in the open row (burst length 1: a READ every cycle streams a row
at one word a cycle), and closes the row (PRECHARGE, all banks) on a beat in
another row, when no beat waits, or when a refresh is due; an AUTO REFRESH
goes out every ``t_refi``.  A READ is issued only while the read FIFO has a
free word for it, so ``rdata`` is a stream with back-pressure.  After reset
the controller runs the power-up sequence (200 us of NOPs with the clock
enabled, PRECHARGE all, 8 AUTO REFRESH, LOAD MODE REGISTER: burst length 1,
CAS latency ``cl``) and then raises ``ready``; beats wait until then.
``flush`` (the engine's ``start``) drops the READs in flight and the words
in the read FIFO, and nothing else: a request stream cut short by a reset
leaves no word behind for the next one.

Timing convention.  The controller drives every pin from a register (the
command decided in cycle ``c`` is on the pins in cycle ``c + 1``) and
registers ``dq_i``; the chip takes the pins at the clock edge that ends the
cycle they are on and drives a read's data ``cl`` cycles later, so the word
of a READ decided in cycle ``c`` is in the input register in cycle
``c + cl + 2`` (``read_delay``).  That is the chip clocked with the fabric's
own clock, which is what :class:`SdramModel` simulates.  A board that clocks
the chip with the inverted clock (commands taken half a cycle after they
leave) sees the data a cycle earlier (``clock_inverted``; the model's
:meth:`~SdramModel.testbench` with ``half_period``), and a board with
registers between the pins and the chip counts them (``io_stages``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth import *
from amaranth.hdl import ResetInserter
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.errors import SpikeforgeError

__all__ = ["SdramGeometry", "SdramTiming", "SdramController", "SdramModel", "SdramViolation",
           "ULX3S_SDRAM", "pin_signature"]


@dataclass(frozen=True)
class SdramGeometry:
    """Banks x rows x columns of ``width``-bit words."""

    bank_bits: int = 2
    row_bits: int = 13
    col_bits: int = 9
    width: int = 16

    @property
    def addr_bits(self) -> int:
        """Bits of a word address: bank, row, column from the top down."""
        return self.bank_bits + self.row_bits + self.col_bits

    @property
    def words(self) -> int:
        return 1 << self.addr_bits

    def split(self, addr: int) -> tuple[int, int, int]:
        """``(bank, row, column)`` of word ``addr``."""
        col = addr & ((1 << self.col_bits) - 1)
        row = (addr >> self.col_bits) & ((1 << self.row_bits) - 1)
        return addr >> (self.col_bits + self.row_bits), row, col


#: the ULX3S's chip: 4 banks x 8,192 rows x 512 columns of 16 bits (32 MB)
ULX3S_SDRAM = SdramGeometry()


@dataclass(frozen=True)
class SdramTiming:
    """Datasheet minima, in seconds (``t_mrd`` in cycles): the slowest of the
    ULX3S's parts.  ``t_refi``: one AUTO REFRESH each (8,192 a 64 ms, with a
    margin); ``refresh_postpone``: refreshes the chip lets fall behind."""

    t_rp: float = 21e-9      # PRECHARGE to ACTIVE / REFRESH
    t_rcd: float = 21e-9     # ACTIVE to READ / WRITE
    t_ras: float = 48e-9     # ACTIVE to PRECHARGE
    t_rc: float = 70e-9      # ACTIVE to ACTIVE (one bank), REFRESH to ACTIVE / REFRESH
    t_wr: float = 15e-9      # the last write's data to PRECHARGE (plus a cycle)
    t_mrd: int = 2           # LOAD MODE REGISTER to any command, cycles
    t_refi: float = 7.5e-6   # between AUTO REFRESHes (the controller)
    t_ref: float = 64e-3 / 8192   # the chip's average refresh interval
    refresh_postpone: int = 8
    t_init: float = 200e-6   # NOPs after power-up
    init_refreshes: int = 8

    def cycles(self, freq_hz: float) -> dict[str, int]:
        """Each minimum in whole cycles of ``freq_hz`` (and the counts)."""
        def c(t):
            return max(1, math.ceil(t * freq_hz - 1e-6))
        return {"rp": c(self.t_rp), "rcd": c(self.t_rcd), "ras": c(self.t_ras),
                "rc": c(self.t_rc), "wr": c(self.t_wr) + 1, "mrd": self.t_mrd,
                "refi": int(self.t_refi * freq_hz), "ref": int(self.t_ref * freq_hz),
                "init": c(self.t_init), "init_refreshes": self.init_refreshes,
                "refresh_postpone": self.refresh_postpone}


# (cs_n, ras_n, cas_n, we_n)
NOP, ACTIVE, READ, WRITE, PRECHARGE, REFRESH, MODE = \
    0b0111, 0b0011, 0b0101, 0b0100, 0b0010, 0b0001, 0b0000
_NAMES = {NOP: "NOP", ACTIVE: "ACTIVE", READ: "READ", WRITE: "WRITE", PRECHARGE: "PRECHARGE",
          REFRESH: "AUTO REFRESH", MODE: "LOAD MODE REGISTER"}
A10 = 1 << 10


def pin_signature(geom: SdramGeometry) -> wiring.Signature:
    """The chip's pins, the data bus split into its output, enable and input."""
    return wiring.Signature({
        "cke": Out(1), "cmd": Out(4),            # (cs_n, ras_n, cas_n, we_n)
        "ba": Out(geom.bank_bits), "a": Out(max(geom.row_bits, 11)),
        "dq_o": Out(geom.width), "dq_oe": Out(1), "dq_i": In(geom.width),
        "dqm": Out(geom.width // 8),
    })


def cmd_layout(geom: SdramGeometry) -> data.StructLayout:
    return data.StructLayout({"write": 1, "addr": geom.addr_bits, "data": geom.width})


class SdramController(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    freq_hz : float
        The clock, for the timing in cycles.
    geom : SdramGeometry
    timing : SdramTiming
    cl : int
        CAS latency (2 up to 100 MHz on every ULX3S part, else 3).
    read_fifo : int
        Words the read FIFO holds (READs in flight included); 3 or more.
    read_delay : int or None
        Cycles from a READ's decision to its word in the input register
        (default ``cl + 2 + 2 * io_stages``, one less with
        ``clock_inverted``: the model's convention).
    io_stages : int
        Registers each way between the pins and the chip (a board's I/O
        flip-flops): the chip sees every pin ``io_stages`` cycles later, and
        its words reach ``dq_i`` ``io_stages`` cycles later.
    clock_inverted : bool
        The chip is clocked with the fabric's clock inverted: it takes the
        pins half a cycle after they change and drives a read's word half a
        cycle before the fabric's edge that takes it, a cycle earlier than
        on the fabric's own clock (``read_delay`` one less).

    Members
    -------
    cmd : In(stream.Signature(cmd_layout(geom)))
        A beat: ``write`` 1 writes ``data`` at ``addr``, 0 reads ``addr``.
    rdata : Out(stream.Signature(geom.width))
        The words read, in the order of the read beats.
    ready : Out(1)
        The power-up sequence is done (beats are taken from then on).
    flush : In(1)
        Drop every READ in flight and every word not yet taken (the
        power-up state, refresh and open row are kept).
    pins : Out(pin_signature(geom))
    """

    def __init__(self, freq_hz: float, geom: SdramGeometry = ULX3S_SDRAM,
                 timing: SdramTiming = SdramTiming(), cl: int | None = None,
                 read_fifo: int = 8, read_delay: int | None = None, io_stages: int = 0,
                 clock_inverted: bool = False):
        self.geom, self.timing = geom, timing
        self.cl = cl if cl is not None else (2 if freq_hz <= 100e6 else 3)
        if self.cl not in (2, 3):
            raise SpikeforgeError(f"SDRAM CAS latency must be 2 or 3, not {self.cl}")
        self.t = timing.cycles(freq_hz)
        self.read_delay = (read_delay if read_delay is not None
                           else self.cl + 2 + 2 * io_stages - int(clock_inverted))
        self.read_fifo = read_fifo
        # (a 2-word SyncFIFOBuffered takes a second word only a cycle after
        # its first leaves the memory for the output register: back-to-back
        # READs would lose one)
        if read_fifo < 3:
            raise SpikeforgeError(f"the SDRAM read FIFO needs 3 words or more, not {read_fifo}")
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(geom))),
            "rdata": Out(stream.Signature(geom.width)),
            "ready": Out(1),
            "flush": In(1),
            "pins": Out(pin_signature(geom)),
        })

    def elaborate(self, platform):
        m = Module()
        g, t, p = self.geom, self.t, self.pins
        rf = fifo.SyncFIFOBuffered(width=g.width, depth=self.read_fifo)
        m.submodules.rfifo = ResetInserter(self.flush)(rf)
        m.d.comb += [self.rdata.valid.eq(rf.r_rdy), self.rdata.payload.eq(rf.r_data),
                     rf.r_en.eq(self.rdata.ready)]

        # the pins, each from a register
        cmd, ba, a = Signal(4, init=NOP), Signal.like(p.ba), Signal.like(p.a)
        dq_o, dq_oe = Signal.like(p.dq_o), Signal()
        dq_i = Signal.like(p.dq_i)
        m.d.sync += [cmd.eq(NOP), dq_oe.eq(0), dq_i.eq(p.dq_i)]
        m.d.comb += [p.cke.eq(1), p.cmd.eq(cmd), p.ba.eq(ba), p.a.eq(a), p.dq_o.eq(dq_o),
                     p.dq_oe.eq(dq_oe), p.dqm.eq(0)]

        # READs in flight: a shift register, and the FIFO's free words
        # counting them (a READ only with a free word for its data)
        inflight = Signal(self.read_delay)
        pending = Signal(range(self.read_fifo + 1))
        issue_read, took = Signal(), Signal()
        m.d.sync += inflight.eq(Cat(issue_read, inflight[:-1]))
        m.d.comb += [rf.w_en.eq(inflight[-1]), rf.w_data.eq(dq_i)]
        m.d.comb += took.eq(rf.r_en & rf.r_rdy)
        m.d.sync += pending.eq(pending + issue_read - took)
        with m.If(self.flush):
            m.d.sync += [inflight.eq(0), pending.eq(0)]
        room = pending < self.read_fifo

        # timers: the current wait, the open row's age, the last write
        wait = Signal(range(max(t["init"], t["rc"], t["rp"], t["rcd"], t["mrd"]) + 2))
        # a row stays open t_ras, and long enough that its bank's next ACTIVE
        # (t_rp after the PRECHARGE) comes t_rc after this one
        t_open = max(t["ras"], t["rc"] - t["rp"])
        age = Signal(range(t_open + 1))
        since_write = Signal(range(t["wr"] + 1), init=t["wr"])
        since_read = Signal(range(self.cl + 2), init=self.cl + 1)
        with m.If(wait != 0):
            m.d.sync += wait.eq(wait - 1)
        with m.If(age != t_open):
            m.d.sync += age.eq(age + 1)
        with m.If(since_write != t["wr"]):
            m.d.sync += since_write.eq(since_write + 1)
        with m.If(since_read != self.cl + 1):
            m.d.sync += since_read.eq(since_read + 1)

        # refresh: one due every t_refi cycles (counted from reset)
        refi = Signal(range(t["refi"]), init=t["refi"] - 1)
        due, refreshing = Signal(), Signal()
        m.d.sync += refi.eq(Mux(refi == 0, t["refi"] - 1, refi - 1))
        m.d.sync += due.eq(due & ~refreshing | (refi == 0))

        open_bank = Signal(g.bank_bits)
        open_row = Signal(g.row_bits)
        refreshes = Signal(range(self.timing.init_refreshes + 1))
        beat = self.cmd.payload
        b_col = beat.addr[:g.col_bits]
        b_row = beat.addr[g.col_bits:g.col_bits + g.row_bits]
        b_bank = beat.addr[g.col_bits + g.row_bits:]
        hit = (b_bank == open_bank) & (b_row == open_row)

        def command(c, bank=0, addr=0):
            return [cmd.eq(c), ba.eq(bank), a.eq(addr)]

        with m.FSM(init="POWER_UP"):
            with m.State("POWER_UP"):
                m.d.sync += wait.eq(t["init"])
                m.next = "INIT_WAIT"
            with m.State("INIT_WAIT"):
                with m.If(wait == 0):
                    m.d.sync += command(PRECHARGE, addr=A10) + [wait.eq(t["rp"] - 1)]
                    m.next = "INIT_REFRESH"
            with m.State("INIT_REFRESH"):
                with m.If(wait == 0):
                    with m.If(refreshes == self.timing.init_refreshes):
                        # burst length 1, sequential, CAS latency cl, burst writes
                        m.d.sync += command(MODE, addr=self.cl << 4) + [wait.eq(t["mrd"] - 1)]
                        m.next = "INIT_MODE"
                    with m.Else():
                        m.d.sync += command(REFRESH) + [wait.eq(t["rc"] - 1),
                                                        refreshes.eq(refreshes + 1)]
            with m.State("INIT_MODE"):
                with m.If(wait == 0):
                    m.next = "IDLE"
            with m.State("IDLE"):
                m.d.comb += self.ready.eq(1)
                with m.If(wait != 0):
                    pass
                with m.Elif(due):
                    m.d.comb += refreshing.eq(1)
                    m.d.sync += command(REFRESH) + [wait.eq(t["rc"] - 1)]
                with m.Elif(self.cmd.valid):
                    m.d.sync += command(ACTIVE, b_bank, b_row) + [
                        open_bank.eq(b_bank), open_row.eq(b_row), age.eq(1),
                        wait.eq(t["rcd"] - 1)]
                    m.next = "OPEN"
            with m.State("OPEN"):
                m.d.comb += self.ready.eq(1)
                close = due | ~self.cmd.valid | ~hit
                with m.If(wait != 0):
                    pass
                with m.Elif(close):
                    with m.If((age == t_open) & (since_write == t["wr"])):
                        m.d.sync += command(PRECHARGE, addr=A10) + [wait.eq(t["rp"] - 1)]
                        m.next = "IDLE"
                with m.Elif(beat.write):
                    # the bus turns round after the last READ's data
                    with m.If(since_read == self.cl + 1):
                        m.d.comb += self.cmd.ready.eq(1)
                        m.d.sync += command(WRITE, open_bank, b_col) + [
                            dq_o.eq(beat.data), dq_oe.eq(1), since_write.eq(0)]
                with m.Elif(room):
                    m.d.comb += [self.cmd.ready.eq(1), issue_read.eq(1)]
                    m.d.sync += command(READ, open_bank, b_col) + [since_read.eq(0)]
        return m


class SdramViolation(SpikeforgeError, AssertionError):
    """A command the chip's datasheet forbids at that cycle."""


class SdramModel:
    """The chip, one clock edge a call (:meth:`edge`), checking every command.

    ``cycles``: :meth:`SdramTiming.cycles` at the clock simulated.  The
    chip takes the pins as they are in cycle ``n`` at the edge ending it and
    drives a READ's word in cycle ``n + cl`` (:meth:`edge` returns it there).
    Raises :class:`SdramViolation` naming the rule and the cycle: a command
    before the power-up sequence is done (200 us of NOPs, PRECHARGE all,
    ``init_refreshes`` AUTO REFRESH, LOAD MODE REGISTER), ACTIVE on an open
    bank or before ``t_rp`` / ``t_rc``, READ or WRITE on a closed bank, to
    another row or before ``t_rcd``, PRECHARGE before ``t_ras`` or ``t_wr``,
    AUTO REFRESH with a bank open or before ``t_rp`` / ``t_rc``, refreshes
    falling more than ``refresh_postpone`` behind one a ``t_ref``, the bus
    driven by both, the clock enable low.
    """

    def __init__(self, geom: SdramGeometry, cycles: dict[str, int]):
        self.g, self.t = geom, cycles
        self.n = -1
        self.mem: dict[int, int] = {}
        self.mode_cl = None             # set by LOAD MODE REGISTER
        self.init_nops = 0              # NOP cycles before the first command
        self.init_pre = False
        self.init_refs = 0
        self.open = {}                  # bank -> row
        self.t_act = {}                 # bank -> cycle of its last ACTIVE
        self.t_pre = -10**9             # the last PRECHARGE
        self.t_ref = -10**9             # the last AUTO REFRESH
        self.t_mode = -10**9
        self.t_write = {}               # bank -> its last WRITE
        self.reads: dict[int, int] = {}  # cycle -> word driven then
        self.refreshes = 0              # AUTO REFRESH since LOAD MODE REGISTER
        self.first_ref = 0              # refresh debt counted from LOAD MODE REGISTER
        self.commands = {name: 0 for name in _NAMES.values()}

    def testbench(self, pins, seed: int | None = None, log: list | None = None,
                  half_period: float | None = None):
        """An Amaranth testbench (``add_testbench(..., background=True)``)
        that runs this model on a controller's ``pins``: after each clock
        edge it takes the pins of the new cycle and drives ``dq_i``.  With a
        ``seed`` an undriven bus reads as random words drawn from it (a word
        taken a cycle off is caught), without one as 0.  ``log``: a list
        that gets ``(cycle, command, bank, address)`` of each command but NOP.
        ``half_period`` (seconds): the chip on the inverted clock: it takes
        the pins half a cycle after each edge and drives, from then on, the
        word of its next cycle."""
        import random
        rng = random.Random(seed)

        async def chip(ctx):
            while True:
                await ctx.tick()
                if half_period:
                    await ctx.delay(half_period)
                cmd = ctx.get(pins.cmd)
                out = self.edge(ctx.get(pins.cke), cmd, ctx.get(pins.ba), ctx.get(pins.a),
                                ctx.get(pins.dq_o), ctx.get(pins.dq_oe), ctx.get(pins.dqm))
                if half_period:   # the word driven until the next edge: the next cycle's
                    out = self.reads.get(self.n + 1)
                if log is not None and cmd != NOP:
                    log.append((self.n, cmd, ctx.get(pins.ba), ctx.get(pins.a)))
                if out is None:
                    out = 0 if seed is None else rng.getrandbits(self.g.width)
                ctx.set(pins.dq_i, out)
        return chip

    def _fail(self, what: str):
        raise SdramViolation(f"SDRAM cycle {self.n}: {what}")

    def _since(self, t0: int, need: int, what: str):
        if self.n - t0 < need:
            self._fail(f"{what} {self.n - t0} cycles after, {need} needed")

    def edge(self, cke: int, cmd: int, ba: int, a: int, dq_o: int, dq_oe: int,
             dqm: int = 0) -> int | None:
        """The pins of one cycle; the word the chip drives in it (or None)."""
        self.n += 1
        out = self.reads.pop(self.n, None)
        if out is not None and dq_oe:
            self._fail("the controller drives the data bus while the chip drives a read's word")
        if not cke:
            self._fail("clock enable low (no power-down or self refresh here)")
        name = _NAMES.get(cmd & 0xF, None)
        if cmd & 0b1000:            # chip not selected: a NOP
            name = "NOP"
        if name is None:
            self._fail(f"command {cmd:04b} is not one this controller may use")
        self.commands[name] += 1
        if self.mode_cl is not None:
            # refresh debt: one AUTO REFRESH owed each t_ref since the mode was set
            owed = (self.n - self.first_ref) // self.t["ref"]
            if owed - self.refreshes > self.t["refresh_postpone"]:
                self._fail(f"{owed - self.refreshes} AUTO REFRESH behind "
                           f"(at most {self.t['refresh_postpone']})")
        if name == "NOP":
            if not self.init_pre:
                self.init_nops += 1
            return out
        self._since(self.t_mode, self.t["mrd"], f"{name} after LOAD MODE REGISTER")
        if name == "PRECHARGE":
            if not self.init_pre:
                if self.init_nops < self.t["init"]:
                    self._fail(f"PRECHARGE after {self.init_nops} power-up NOP cycles, "
                               f"{self.t['init']} needed")
                if not a & A10:
                    self._fail("the power-up PRECHARGE must close all banks (A10 high)")
                self.init_pre = True
            banks = range(1 << self.g.bank_bits) if a & A10 else [ba]
            for b in banks:
                if b in self.open:
                    self._since(self.t_act[b], self.t["ras"], f"PRECHARGE of bank {b}: ACTIVE")
                    self._since(self.t_write.get(b, -10**9), self.t["wr"],
                                f"PRECHARGE of bank {b}: its last WRITE")
                    del self.open[b]
            self.t_pre = self.n
            return out
        if not self.init_pre:
            self._fail(f"{name} before the power-up PRECHARGE")
        if name == "AUTO REFRESH":
            if self.open:
                self._fail(f"AUTO REFRESH with bank(s) {sorted(self.open)} open")
            self._since(self.t_pre, self.t["rp"], "AUTO REFRESH: PRECHARGE")
            self._since(self.t_ref, self.t["rc"], "AUTO REFRESH: the previous one")
            if self.mode_cl is None:
                self.init_refs += 1
            else:
                self.refreshes += 1
            self.t_ref = self.n
            return out
        if name == "LOAD MODE REGISTER":
            if self.open:
                self._fail("LOAD MODE REGISTER with a bank open")
            if self.init_refs < self.t["init_refreshes"]:
                self._fail(f"LOAD MODE REGISTER after {self.init_refs} power-up AUTO "
                           f"REFRESH, {self.t['init_refreshes']} needed")
            self._since(self.t_ref, self.t["rc"], "LOAD MODE REGISTER: AUTO REFRESH")
            self._since(self.t_pre, self.t["rp"], "LOAD MODE REGISTER: PRECHARGE")
            if a & 0b111 or a & 0b1000:
                self._fail(f"mode {a:#x}: burst length 1, sequential expected")
            self.mode_cl = (a >> 4) & 0b111
            if self.mode_cl not in (2, 3):
                self._fail(f"mode {a:#x}: CAS latency {self.mode_cl}")
            self.t_mode = self.n
            self.t_ref = self.n - self.t["rc"]      # (refresh debt counted from here)
            self.first_ref = self.n
            return out
        if self.mode_cl is None:
            self._fail(f"{name} before LOAD MODE REGISTER")
        row_mask = (1 << self.g.row_bits) - 1
        if name == "ACTIVE":
            if ba in self.open:
                self._fail(f"ACTIVE on bank {ba}, open at row {self.open[ba]}")
            self._since(self.t_pre, self.t["rp"], "ACTIVE: PRECHARGE")
            self._since(self.t_ref, self.t["rc"], "ACTIVE: AUTO REFRESH")
            self._since(self.t_act.get(ba, -10**9), self.t["rc"], f"ACTIVE on bank {ba}: its last")
            self.open[ba] = a & row_mask
            self.t_act[ba] = self.n
            return out
        # READ / WRITE
        if ba not in self.open:
            self._fail(f"{name} on bank {ba}, which is closed")
        self._since(self.t_act[ba], self.t["rcd"], f"{name} on bank {ba}: ACTIVE")
        if a & A10:
            self._fail(f"{name} with auto precharge (A10): not this controller's")
        col = a & ((1 << self.g.col_bits) - 1)
        addr = ((ba << self.g.row_bits | self.open[ba]) << self.g.col_bits) | col
        if name == "READ":
            self.reads[self.n + self.mode_cl] = self.mem.get(addr, 0)
        else:
            if not dq_oe:
                self._fail("WRITE without the data on the bus")
            if any(k > self.n for k in self.reads):
                self._fail("WRITE while a read's word is still to come on the bus")
            old = self.mem.get(addr, 0)
            keep = 0
            for byte in range(self.g.width // 8):
                if dqm >> byte & 1:
                    keep |= 0xFF << (8 * byte)
            self.mem[addr] = (old & keep) | (dq_o & ~keep & ((1 << self.g.width) - 1))
            self.t_write[ba] = self.n
        return out
