"""iCEBreaker (Lattice iCE40UP5K, 12 MHz oscillator, FT2232H USB-serial).

:class:`~spikeforge.boards.top.BoardTop` runs at 30 MHz by default, from the
UP5K's PLL (``SB_PLL40_PAD`` on the 12 MHz clock pin, :mod:`.pll`;
``spikeforge build --clock-mhz`` picks another).  The UART is the FT2232H's
second channel (``uart`` 0, pins 6 = FPGA rx, 9 = FPGA tx); 30 MHz / 1 Mbaud
is an exact divisor (30).

LEDs: the red LED (pin 11) is the error LED (``leds[2]``), the green one
(pin 37) the heartbeat (``leds[0]``).  With the snap-off LED/button section
attached (``pmod_leds=True``, the default), its five LEDs show UART activity,
done, busy and prediction bits 0 and 1 (``leds[1], [3], [4], [5], [6]``).

The UP5K has 30 block RAMs of 4 kbit and 5280 logic cells: only small
networks fit (module :mod:`.build`).  Flash with ``iceprog top.bin`` or
``openFPGALoader --board icebreaker top.bin``.

No batch mode by default (:data:`BATCH_BEATS` = 0): the default build uses 86%
of the logic cells and must meet its 30 MHz clock, and the store's logic and
block RAM do not fit beside it.
"""

from amaranth import *

from .pll import ICE40PLLDomain
from .top import BoardTop, led_output, wrap_board

__all__ = ["BATCH_BEATS", "ICEBreakerWrapper", "platform", "DEVICE", "PART", "BITSTREAM"]

DEVICE = "ice40up5k"
PART = "iCE40UP5K"
BITSTREAM = "top.bin"
#: The image store of batch mode in event beats (BoardTop's ``batch_beats``).
BATCH_BEATS = 0
CLOCK_HZ = 12_000_000


def platform(pmod_leds: bool = True):
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    p = ICEBreakerPlatform()
    if pmod_leds:
        p.add_resources(p.break_off_pmod)
    return p


class ICEBreakerWrapper(Elaboratable):
    """Pins of the iCEBreaker around a :class:`BoardTop`; ``pll``: an
    :class:`~spikeforge.boards.pll.ICE40PLLParams` for the ``sync`` clock
    (None: the 12 MHz oscillator)."""

    def __init__(self, top: BoardTop, pmod_leds: bool = True, pll=None):
        self.top = top
        self.pmod_leds = pmod_leds
        self.pll = pll

    def elaborate(self, platform):
        m = Module()
        top = self.top
        wrap_board(m, platform, top, self.pll, ICE40PLLDomain)
        m.d.comb += [led_output(m, platform, 0).eq(top.leds[2]),   # red: error
                     led_output(m, platform, 1).eq(top.leds[0])]   # green: heartbeat
        if self.pmod_leds:
            for res, bit in zip(range(2, 7), (1, 3, 4, 5, 6)):
                m.d.comb += led_output(m, platform, res).eq(top.leds[bit])
        return m

