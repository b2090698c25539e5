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
4    engine busy (clearing, or events sent since START and not done)
5-7  prediction bits 0..2 while ``done``
===  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spikeforge.hw.network import NetworkTop

from . import protocol
from .bridge import HostBridge
from .uart import divisor_for

__all__ = ["BoardTop", "LinkConfig"]


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
    device : str, optional
        Block-RAM fit check of the engine (:func:`spikeforge.hw.fit.check_fit`).

    Members
    -------
    rx : In(1), tx : Out(1)
        UART pins (idle high).
    leds : Out(8)
    """

    def __init__(self, net, lanes=1, *, clock_hz: float, link: LinkConfig = LinkConfig(),
                 device: str | None = None, fifo_depth: int = 8):
        self.engine = NetworkTop(net, lanes, fifo_depth=fifo_depth, device=device)
        self.clock_hz = int(clock_hz)
        self.link = link
        div, timeout, stall = link.cycles(clock_hz)
        self.divisor = div
        self.bridge = HostBridge(self.engine, divisor=div, clock_hz=self.clock_hz,
                                 timeout_cycles=timeout, stall_cycles=stall,
                                 design_id=protocol.design_id(net, self.engine.lanes))
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(8)})

    @property
    def info(self) -> protocol.BoardInfo:
        return self.bridge.info

    def unused(self) -> "BoardTop":
        """Mark this top (and its parts) as knowingly not elaborated: no
        UnusedElaboratable warning when it was built only for its widths."""
        for obj in (self, self.engine, self.bridge, *self.engine.cores):
            obj._MustUse__silence = True
        return self

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = e = self.engine
        m.submodules.bridge = b = self.bridge
        wiring.connect(m, b.events, e.events)
        wiring.connect(m, b.mem_write, e.mem_write)
        m.d.comb += [
            b.rx.eq(self.rx), self.tx.eq(b.tx),
            e.start.eq(b.start),
            b.clearing.eq(e.clearing), b.done.eq(e.done), b.prediction.eq(e.prediction),
            b.cycles.eq(e.cycles), b.counts.eq(e.counts), b.perf.eq(e.perf),
        ]

        hz = self.clock_hz
        beat = Signal(max(1, (hz // 2).bit_length()))
        m.d.sync += beat.eq(beat + 1)

        def stretch(trigger, cycles):
            ctr = Signal(range(max(2, cycles + 1)))
            with m.If(trigger):
                m.d.sync += ctr.eq(cycles)
            with m.Elif(ctr != 0):
                m.d.sync += ctr.eq(ctr - 1)
            return ctr != 0

        pred = Cat(e.prediction, C(0, 3))[:3]
        m.d.comb += self.leds.eq(Cat(
            beat[-1],
            stretch(b.rx_strobe, hz // 16),
            stretch(b.error_strobe, hz // 4),
            e.done,
            e.clearing | (b.active & ~e.done),
            Mux(e.done, pred, 0),
        ))
        return m
