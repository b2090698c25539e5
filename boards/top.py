"""The board-independent top level: engine + host bridge + status LEDs.

:class:`BoardTop` has only pins as ports (``rx``, ``tx``, ``leds``), so the
same design is what a board wraps (:mod:`.ulx3s`, :mod:`.icebreaker`) and what
the Verilator test simulates (:mod:`spikeforge.sim.tb_board`).

Status LEDs (``leds`` bit: meaning):

===  ==========================================================================
0    heartbeat (about 1.5 Hz: the design is clocked and out of reset)
1    UART activity (a received byte lights it for ~1/16 s)
2    error (an error frame sent lights it for ~1/4 s)
3    engine ``done``
4    engine busy (clearing, or events sent since START and not done, or a
     BATCH running)
5-7  prediction bits 0..2 while ``done``
===  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.hw.network import NetworkTop, engine_geometry
from spikeforge.hw.sdram import ULX3S_SDRAM, pin_signature
from spikeforge.hw.streams import EVENT_FIFO_DEPTH, EventFIFO

from . import protocol
from .bridge import HostBridge, check_batch_beats
from .uart import divisor_for

__all__ = ["BoardTop", "LinkConfig", "board_info", "store_bits", "wrap_board",
           "led_output", "LINK_FIFO_DEPTH"]

#: Entries of the FIFO between the host bridge's event beats and the
#: engine's input (:class:`BoardTop` with batch mode): registered both ways,
#: it holds the beats in flight while the engine's ``ready`` comes back, so
#: a BATCH still feeds a beat a cycle.
LINK_FIFO_DEPTH = 4


@dataclass(frozen=True)
class LinkConfig:
    """UART and watchdog settings of a board top.

    ``timeout_s``: the receive timeout (a frame with a longer gap is dropped;
    long enough for USB-serial bridges that send in bursts); ``stall_s``: how
    long an event beat may wait for the engine before EVENTS is aborted.
    ``timeout_cycles`` / ``stall_cycles`` override them in clock cycles (for
    simulation).
    """

    baud: int = 1_000_000
    timeout_s: float = 0.05
    stall_s: float = 0.5
    timeout_cycles: int | None = None
    stall_cycles: int | None = None

    def cycles(self, clock_hz: float) -> tuple[int, int, int]:
        """``(divisor, timeout_cycles, stall_cycles)`` at ``clock_hz``."""
        d = divisor_for(clock_hz, self.baud)
        t = self.timeout_cycles or max(40 * d, int(self.timeout_s * clock_hz))
        s = self.stall_cycles or max(t, int(self.stall_s * clock_hz))
        return d, t, s


def board_info(net, lanes=1, *, clock_hz: float, link: LinkConfig = LinkConfig(),
               batch_beats: int = 0, words=None) -> protocol.BoardInfo:
    """The PING reply of the :class:`BoardTop` that would be built for ``net``
    with ``lanes`` at ``clock_hz`` (and an image store of ``batch_beats``),
    computed without building it."""
    g = engine_geometry(net, lanes, words=words)
    lay = protocol.link_layout(g)
    _, timeout, _ = link.cycles(clock_hz)
    return protocol.BoardInfo(protocol.VERSION, lay.layers, lay.classes, lay.n_out,
                              lay.count_bytes, lay.event_bytes, lay.addr_bytes, lay.data_bytes,
                              protocol.MAX_PAYLOAD, int(clock_hz), timeout,
                              protocol.design_id(net, g.lanes, words),
                              check_batch_beats(batch_beats))


def store_bits(net, batch_beats: int) -> int:
    """Block RAM bits of the image store of a :class:`BoardTop` for ``net``
    with ``batch_beats`` (one event payload a beat; 0 without a store)."""
    from spikeforge.hw.streams import EventFormat
    return check_batch_beats(batch_beats) * EventFormat.for_network(net).width


class BoardTop(wiring.Component):
    """Engine, host bridge and LEDs for one network (module docstring).

    Parameters
    ----------
    net : IntNetwork
        The network whose structure the engine is built for; its weights are
        the power-up contents (the host overwrites them with WRITE).
    lanes : int or list of int
        Output-channel lanes of the engine.
    clock_hz : float
        The clock of the ``sync`` domain.
    link : LinkConfig
    contents : dict, optional
        Power-up memory contents ``{name: (width, words)}`` (a run's exported
        images, :func:`spikeforge.image.read_exported`); default: the network's.
    batch_beats : int
        The image store of batch mode (LOAD / BATCH, :mod:`.protocol`), in
        event beats: ``batch_beats`` x the event payload's width bits of block
        RAM (:func:`store_bits`); 0 (the default): no batch mode and not a gate
        of it.  The boards' defaults: ``BATCH_BEATS`` of :mod:`.ulx3s` and
        :mod:`.icebreaker`.
    spram : tuple of int
        Layers whose weights are in the iCE40's SPRAM (:class:`NetworkTop`).
    sdram, banks :
        A layer whose weights stream from the board's SDRAM chip, current
        memories per layer (:class:`NetworkTop`; the plan's storage,
        :func:`spikeforge.hw.fit.storage_options`).  With ``sdram`` the top has the
        chip's pins, ``sdram_pins``, which the board wrapper takes to its
        chip; the controller's timing is counted in ``clock_hz``;
        ``sdram_io``, ``sdram_clock_inverted``: the wrapper's registers each
        way between those pins and the chip, and its clock to the chip
        (:class:`NetworkTop`).

    A network that may not fit a device's block RAM is checked with
    :func:`spikeforge.hw.fit.check_fit` before its top is built;
    :func:`board_info` gives the PING reply without building one.

    Members
    -------
    rx : In(1), tx : Out(1)
        UART pins (idle high).
    leds : Out(8)
    """

    def __init__(self, net, lanes=1, *, clock_hz: float, link: LinkConfig = LinkConfig(),
                 fifo_depth: int = EVENT_FIFO_DEPTH, contents: dict | None = None, batch_beats: int = 0,
                 words=None, spram=(), sdram=(), banks=None, sdram_io: int = 0,
                 sdram_clock_inverted: bool = False):
        check_batch_beats(batch_beats)
        self.engine = NetworkTop(net, lanes, fifo_depth=fifo_depth, contents=contents,
                                 words=words, spram=spram, sdram=sdram, sdram_hz=clock_hz,
                                 banks=banks, sdram_io=sdram_io,
                                 sdram_clock_inverted=sdram_clock_inverted)
        self.clock_hz = int(clock_hz)
        self.link = link
        div, timeout, stall = link.cycles(clock_hz)
        self.divisor = div
        self.bridge = HostBridge(self.engine, divisor=div, clock_hz=self.clock_hz,
                                 timeout_cycles=timeout, stall_cycles=stall,
                                 design_id=protocol.design_id(net, list(self.engine.lanes),
                                                              self.engine.words),
                                 batch_beats=batch_beats)
        self.batch_beats = batch_beats
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(8),
                          **({"sdram_pins": Out(pin_signature(ULX3S_SDRAM))}
                             if self.engine.sdram else {})})

    @property
    def info(self) -> protocol.BoardInfo:
        return self.bridge.info

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = e = self.engine
        m.submodules.bridge = b = self.bridge
        # the bridge's beats go to the engine through a FIFO whose ``ready``
        # and ``valid`` are registers (timing: the engine's input FIFO sits by
        # layer 0, the bridge by its image store and the UART; the engine's
        # ``ready`` crossed the device into the bridge's state machine and
        # counters, and the store's word into layer 0's FIFO: two of the
        # routed default engine's larger groups of paths missing 100 MHz).
        # Its beats are dropped with the engine's at ``start``, and it takes
        # none in that cycle (as the engine's own input).  Only with batch
        # mode, where the store feeds a beat a cycle: a board without it
        # (the iCEBreaker's, at 90 % of its logic cells) keeps the direct
        # connection.
        if self.batch_beats:
            m.submodules.link = link = ResetInserter(b.start)(EventFIFO(e.fmt,
                                                                        LINK_FIFO_DEPTH))
            # the beat goes into a register first (timing: the image store's
            # block-RAM output through the bridge's select into the FIFO's
            # LUT RAM was a path 0.5 ns short of 100 MHz in a ULX3S build)
            held, held_valid = Signal(e.fmt.layout), Signal()
            m.d.comb += [link.w.payload.eq(held), link.w.valid.eq(held_valid & ~b.start),
                         b.events.ready.eq((~held_valid | link.w.ready) & ~b.start)]
            with m.If(b.start):
                m.d.sync += held_valid.eq(0)
            with m.Elif(b.events.ready):
                m.d.sync += [held.eq(b.events.payload), held_valid.eq(b.events.valid)]
            wiring.connect(m, link.r, e.events)
        else:
            wiring.connect(m, b.events, e.events)
        wiring.connect(m, b.mem_write, e.mem_write)
        if e.sdram:
            wiring.connect(m, e.sdram_pins, wiring.flipped(self.sdram_pins))
        m.d.comb += [
            b.rx.eq(self.rx), self.tx.eq(b.tx),
            e.start.eq(b.start),
            b.clearing.eq(e.clearing), b.done.eq(e.done), b.prediction.eq(e.prediction),
            b.cycles.eq(e.cycles), b.counts.eq(e.counts), b.perf.eq(e.perf),
        ]
        busy = e.clearing | (b.active & ~e.done)
        if self.batch_beats:
            # (the engine's take in a register by its input, for the board's
            # count: only while a BATCH runs, so a beat left from an earlier
            # EVENTS, taken in the cycle the BATCH is decided, starts no count)
            taken = Signal()
            m.d.sync += taken.eq(e.events.valid & e.events.ready & b.batch_running)
            m.d.comb += [b.result_valid.eq(e.result_valid), b.taken.eq(taken)]
            busy = busy | b.batch_running

        hz = self.clock_hz
        beat = Signal(max(1, (hz // 2).bit_length()))
        m.d.sync += beat.eq(beat + 1)

        # LED stretchers count ticks of about 1/256 s, not cycles: short
        # counters (a 24-bit load-or-decrement counter was the iCE40's
        # critical path)
        k = max(0, min(len(beat), (hz // 256).bit_length() - 1))
        tick = Signal()
        m.d.sync += tick.eq(beat[:k].all() if k else 1)

        def stretch(trigger, cycles):
            n = max(1, cycles >> k)
            ctr = Signal(range(n + 1))
            with m.If(trigger):
                m.d.sync += ctr.eq(n)
            with m.Elif(tick & (ctr != 0)):
                m.d.sync += ctr.eq(ctr - 1)
            return ctr != 0

        pred = Cat(e.prediction, C(0, 3))[:3]
        m.d.comb += self.leds.eq(Cat(
            beat[-1],
            stretch(b.rx_strobe, hz // 16),
            stretch(b.error_strobe, hz // 4),
            e.done,
            busy,
            Mux(e.done, pred, 0),
        ))
        return m


def wrap_board(m, platform, top: BoardTop, pll=None, pll_domain=None) -> None:
    """What every board wrapper does: the ``sync`` domain from a PLL
    (``pll_domain(pll, cd)``, :mod:`.pll`) when ``pll`` is given, else the
    platform's clock; ``top`` as submodule ``board``; its UART on ``uart`` 0."""
    if pll is not None:
        m.domains.sync = cd = ClockDomain("sync", reset_less=pll_domain.GLOBAL_RESET)
        m.submodules.pll = pll_domain(pll, cd)
    m.submodules.board = top
    uart = platform.request("uart", 0, dir="-")
    m.submodules.rx_buf = rx = io.Buffer("i", uart.rx)
    m.submodules.tx_buf = tx = io.Buffer("o", uart.tx)
    m.d.comb += [top.rx.eq(rx.i), tx.o.eq(top.tx)]


def led_output(m, platform, n):
    """The output of LED ``n`` (the resource's inversion is in its port)."""
    buf = io.Buffer("o", platform.request("led", n, dir="-"))
    m.submodules[f"led{n}_buf"] = buf
    return buf.o
