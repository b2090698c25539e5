"""ULX3S (Lattice ECP5 LFE5U-85F, 25 MHz oscillator, FT231X USB-serial).

The engine, the host bridge and the LEDs (:class:`~spikeforge.boards.top.BoardTop`)
run on the board's 25 MHz clock, or (``pll``) on a clock made from it by the
ECP5's PLL (:mod:`.pll`; ``spikeforge build --clock-mhz F`` or ``auto``, see
:mod:`.build`).  The UART is the FT231X's (``uart`` 0, pins M1 = FPGA rx,
L4 = FPGA tx); at 25 MHz the default 1 Mbaud is an exact divisor (25).  LEDs
0..7 are ``BoardTop.leds`` 0..7.

Flash with ``openFPGALoader --board ulx3s top.bit``.

Batch mode (``spikeforge infer --batch N``): an image store of
:data:`BATCH_BEATS` event beats in block RAM (4,096 beats: about 26 images
of the default MNIST network at ~153 beats each; with its 36-bit events 8 of
the 85F's 208 EBRs, counted by :func:`.build.board_memories`).  Not more:
the planned default engine takes 166 of them, and a plan keeps the engine
with the board's memories within the 183 EBRs a ULX3S build has been seen
to route at (``bram_ceiling`` in ``hw/cost_model.json``: a build at 205 did
not route).

SDRAM (a plan that streams an fc layer's weights from the chip:
:func:`sdram_pins`): every pin of the chip goes through the I/O cells'
flip-flops (:data:`SDRAM_IO_STAGES`: one each way, so no fabric route is
between a pad and its register), and the chip's clock is the design clock
inverted (an ``ODDRX1F`` giving 0 then 1): the chip takes a command half a
cycle after it leaves its I/O register, and a read's word, driven by the
chip half a cycle before the fabric's edge, is in the input register at
that edge while half a period covers the clock's pad delay, the chip's
access time (6 ns at CAS latency 2), the board's wires and the input
register's setup: about 12 ns by estimate, so up to :data:`SDRAM_MAX_MHZ`.
The controller counts the two registers and the half cycle in its read delay
(``io_stages``, ``clock_inverted``: the word of a READ decided in cycle
``c`` is in its input register in cycle ``c + cl + 3``).  Not tried on a
board: the Verilator co-simulations model the chip on the fabric's clock
without the registers; an Amaranth test runs the controller through a
register each way to the chip model on the inverted clock.
"""

from amaranth import *
from amaranth.lib import io

from .pll import ECP5PLLDomain
from .top import BoardTop, led_output, wrap_board

__all__ = ["BATCH_BEATS", "ULX3SWrapper", "platform", "DEVICE", "PART", "BITSTREAM", "SDRAM",
           "SDRAM_IO_STAGES", "SDRAM_CLOCK_INVERTED", "SDRAM_MAX_MHZ"]

DEVICE = "ecp5-85f"          # hw.fit device key
PART = "LFE5U-85F"
BITSTREAM = "top.bit"
#: The image store of batch mode in event beats (BoardTop's ``batch_beats``).
BATCH_BEATS = 4096
CLOCK_HZ = 25_000_000
#: the board's SDRAM chip (an fc layer's weights can stream from it:
#: :func:`spikeforge.hw.fit.storage_options`)
SDRAM = "sdram"
#: registers each way between the SDRAM controller's pins and the chip: the
#: I/O cells' flip-flops (:func:`sdram_pins`)
SDRAM_IO_STAGES = 1
#: the chip's clock is the design clock inverted (:func:`sdram_pins`)
SDRAM_CLOCK_INVERTED = True
#: the highest clock whose half period serves a read on the inverted clock:
#: the clock's way out through its pad, the chip's 6 ns access time, the
#: traces and the input register's setup, about 12 ns by estimate (nextpnr
#: times no I/O path); a build with its SDRAM in use is refused above it,
#: and ``--clock-mhz auto`` stays under it
SDRAM_MAX_MHZ = 40


def platform():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform()


class ULX3SWrapper(Elaboratable):
    """Pins of the ULX3S around a :class:`BoardTop`; ``pll``: a
    :class:`~spikeforge.boards.pll.PLLParams` for the ``sync`` clock (None:
    the 25 MHz oscillator)."""

    def __init__(self, top: BoardTop, pll=None):
        self.top = top
        self.pll = pll

    def elaborate(self, platform):
        m = Module()
        top = self.top
        wrap_board(m, platform, top, self.pll, ECP5PLLDomain)
        for i in range(8):
            m.d.comb += led_output(m, platform, i).eq(top.leds[i])
        if top.engine.sdram:
            sdram_pins(m, platform, top.sdram_pins)
        return m


def sdram_pins(m, platform, pins) -> None:
    """The engine's SDRAM pins (:func:`spikeforge.hw.sdram.pin_signature`)
    onto the ULX3S's chip (module docstring: the clock inverted)."""
    res = platform.request(SDRAM, 0, dir="-")
    m.submodules.sdram_clk = clk = io.DDRBuffer("o", res.clk)
    m.d.comb += [clk.o[0].eq(0), clk.o[1].eq(1)]
    # (cs, ras, cas, we are the resource's inverted pins: their buffers take
    # the active-high value; the controller's command is the pins' levels)
    outs = {"clk_en": pins.cke, "ba": pins.ba, "a": pins.a, "dqm": pins.dqm,
            "cs": ~pins.cmd[3], "ras": ~pins.cmd[2], "cas": ~pins.cmd[1], "we": ~pins.cmd[0]}
    for name, value in outs.items():   # each in its I/O cell's flip-flop
        m.submodules[f"sdram_{name}"] = buf = io.FFBuffer("o", getattr(res, name))
        m.d.comb += buf.o.eq(value)
    m.submodules.sdram_dq = dq = io.FFBuffer("io", res.dq)
    m.d.comb += [dq.o.eq(pins.dq_o), dq.oe.eq(pins.dq_oe), pins.dq_i.eq(dq.i)]

