"""UART receiver and transmitter (8N1) with a fixed clock divisor.

``divisor`` is the number of clock cycles per bit (``clock_hz / baud``,
rounded; at least 4).  Both sides idle high.

:class:`UARTRx` synchronises the pin with two flip-flops, waits half a bit
after a falling edge, checks the start bit is still low (a shorter glitch is
ignored), then samples the 8 data bits (LSB first) in the middle of each bit
and the stop bit.  Each byte is offered for one cycle on ``valid`` / ``data``
(no back-pressure: the consumer takes it or counts it lost); a low stop bit
sets ``frame_error`` with that byte (it is still delivered; the framed
protocol's CRC judges it) and the receiver waits for the line to go high
before it looks for the next start bit (a break does not read as bytes).

:class:`UARTTx` takes bytes from a stream and shifts out start, data (LSB
first) and stop bits.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "divisor_for"]


def divisor_for(clock_hz: float, baud: float) -> int:
    """Clock cycles per bit; refuses a rate more than 2 % off or below 4 cycles a bit."""
    from spikeforge.errors import SpikeforgeError
    d = int(round(clock_hz / baud))
    if d < 4:
        raise SpikeforgeError(f"baud rate {baud} is too fast for a {clock_hz / 1e6:g} MHz "
                              f"clock (at least 4 cycles a bit)")
    err = abs(clock_hz / d - baud) / baud
    if err > 0.02:
        raise SpikeforgeError(f"baud rate {baud} is {100 * err:.1f} % off at {clock_hz / 1e6:g} "
                              f"MHz (divisor {d}); choose another rate")
    return d


def _check(divisor):
    if type(divisor) is not int or divisor < 4:
        raise ValueError(f"divisor must be an integer of at least 4, not {divisor!r}")


class UARTRx(wiring.Component):
    """8N1 receiver (module docstring).

    Members
    -------
    rx : In(1)
        The pin (asynchronous).
    data : Out(8)
    valid : Out(1)
        One-cycle strobe: ``data`` holds a received byte.
    frame_error : Out(1)
        With ``valid``: the stop bit was low.
    """

    def __init__(self, divisor: int):
        _check(divisor)
        self._div = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(8), "valid": Out(1),
                          "frame_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self._div
        s1 = Signal(init=1)
        s2 = Signal(init=1)
        m.d.sync += [s1.eq(self.rx), s2.eq(s1)]
        ctr = Signal(range(d))
        bits = Signal(range(9))
        shift = Signal(8)
        m.d.sync += [self.valid.eq(0), self.frame_error.eq(0)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~s2):
                    m.d.sync += ctr.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(ctr == 0):
                    with m.If(s2):  # glitch
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [ctr.eq(d - 1), bits.eq(0)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += ctr.eq(ctr - 1)
            with m.State("DATA"):
                with m.If(ctr == 0):
                    m.d.sync += [ctr.eq(d - 1), shift.eq(Cat(shift[1:], s2)), bits.eq(bits + 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += ctr.eq(ctr - 1)
            with m.State("STOP"):
                with m.If(ctr == 0):
                    m.d.sync += [self.data.eq(shift), self.valid.eq(1), self.frame_error.eq(~s2)]
                    with m.If(s2):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BREAK"
                with m.Else():
                    m.d.sync += ctr.eq(ctr - 1)
            with m.State("BREAK"):
                with m.If(s2):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter.

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send; ``ready`` while the transmitter is idle (it then
        stays low for the byte's whole character: one byte a character).
    tx : Out(1)
        The pin (registered, idles high).
    """

    def __init__(self, divisor: int):
        _check(divisor)
        self._div = divisor
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self._div
        ctr = Signal(range(d))
        left = Signal(range(11))
        shift = Signal(10, init=0x3FF)
        # the pin from a register of its own, with no enable (timing: nextpnr
        # puts the pin's register in the I/O cell, and the shift register's
        # enable, from the sender's valid, was the iCE40's critical path into
        # that fixed corner)
        tx = Signal(init=1)
        m.d.sync += tx.eq(shift[0])
        # the byte taken into a register, the shifter loaded from it a cycle
        # later (timing: the sender's ``valid``, a state decode, reached the
        # counter's and shifter's reset and enable, a ULX3S build's path
        # 1.1 ns short of 100 MHz); ``ready`` stays low in between
        held = Signal(8)
        loading = Signal()
        m.d.comb += [self.i.ready.eq((left == 0) & ~loading), self.tx.eq(tx)]
        m.d.sync += loading.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [held.eq(self.i.payload), loading.eq(1)]
        with m.If(loading):
            m.d.sync += [shift.eq(Cat(C(0, 1), held, C(1, 1))), left.eq(10), ctr.eq(d - 1)]
        with m.Elif((left != 0) & (ctr == 0)):
            m.d.sync += [shift.eq(Cat(shift[1:], C(1, 1))), left.eq(left - 1), ctr.eq(d - 1)]
        with m.Elif(left != 0):
            m.d.sync += ctr.eq(ctr - 1)
        return m
