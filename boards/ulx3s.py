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
"""

from amaranth import *

from .pll import ECP5PLLDomain
from .top import BoardTop, led_output, wrap_board

__all__ = ["BATCH_BEATS", "ULX3SWrapper", "platform", "DEVICE", "PART", "BITSTREAM", "SDRAM"]

DEVICE = "ecp5-85f"          # hw.fit device key
PART = "LFE5U-85F"
BITSTREAM = "top.bit"
#: The image store of batch mode in event beats (BoardTop's ``batch_beats``).
BATCH_BEATS = 4096
CLOCK_HZ = 25_000_000
#: the board's SDRAM chip (an fc layer's weights can stream from it:
#: :func:`spikeforge.hw.fit.storage`)
SDRAM = "sdram"


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
        return m

