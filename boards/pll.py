"""Board PLLs: the engine's clock from the board oscillator.

ECP5 (``EHXPLLL``): :func:`ecp5_pll` picks the dividers for a wanted output
frequency; the :class:`ECP5PLLDomain` elaboratable drives a clock domain from
the PLL's ``CLKOP`` (feedback from ``CLKOP``), held in reset until the PLL
locks, through the device's synchronous global set/reset (``SGSR``), as
Amaranth's own ECP5 clock domain is: the domain itself has no reset net
(one, from the lock's synchronizer to every flip-flop with a reset, was the
critical path of the default engine's ULX3S build at 100 MHz: 1,353 loads,
67.7 MHz against 101.6 without the PLL).  iCE40 (``SB_PLL40_PAD``):
:func:`ice40_pll` and :class:`ICE40PLLDomain` likewise.

ECP5 limits (Lattice TN1263, as used by nextpnr's ``ecppll``): input 8..400
MHz, phase detector ``f_in / CLKI_DIV`` at least 3.125 MHz, VCO
``f_out * CLKOP_DIV`` in 400..800 MHz, output 3.125..400 MHz, dividers 1..128;
``f_out = f_in * CLKFB_DIV / CLKI_DIV``.

iCE40 limits (Lattice TN1251, as used by icepll), simple feedback: input
10..133 MHz, phase detector ``f_in / (DIVR + 1)`` 10..133 MHz, VCO
``f_pfd * (DIVF + 1)`` 533..1066 MHz, output ``f_vco / 2**DIVQ`` 16..275 MHz;
DIVR 0..15, DIVF 0..127, DIVQ 1..6; the loop filter range follows the phase
detector frequency.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from spikeforge.errors import SpikeforgeError

__all__ = ["PLLError", "PLLParams", "ecp5_pll", "ECP5PLLDomain", "ICE40PLLParams",
           "ice40_pll", "ICE40PLLDomain"]


class PLLError(SpikeforgeError, ValueError):
    """No divider setting makes the wanted frequency."""


@dataclass(frozen=True)
class PLLParams:
    f_in_hz: int
    clki_div: int
    clkfb_div: int
    clkop_div: int

    @property
    def f_out_hz(self) -> float:
        return self.f_in_hz * self.clkfb_div / self.clki_div

    @property
    def f_vco_hz(self) -> float:
        return self.f_out_hz * self.clkop_div


def ecp5_pll(f_in_hz: int, f_out_hz: float) -> PLLParams:
    """The setting whose output is closest to ``f_out_hz`` without exceeding
    it (ties: the higher VCO); :class:`PLLError` when none is within 1%."""
    if not 8e6 <= f_in_hz <= 400e6:
        raise PLLError(f"PLL input {f_in_hz / 1e6:g} MHz is outside 8..400 MHz")
    if not 3.125e6 <= f_out_hz <= 400e6:
        raise PLLError(f"PLL output {f_out_hz / 1e6:g} MHz is outside 3.125..400 MHz")
    best = None
    for ci in range(1, 129):
        if f_in_hz / ci < 3.125e6:
            break
        for fb in range(1, 129):
            f = f_in_hz * fb / ci
            if f > f_out_hz:
                break
            op = max(1, round(600e6 / f))       # VCO near the middle of its range
            for div in (op - 1, op, op + 1):
                if 1 <= div <= 128 and 400e6 <= f * div <= 800e6:
                    key = (f, f * div)
                    if best is None or key > best[0]:
                        best = (key, PLLParams(int(f_in_hz), ci, fb, div))
    if best is None or best[1].f_out_hz < 0.99 * f_out_hz:
        raise PLLError(f"no ECP5 PLL setting makes {f_out_hz / 1e6:g} MHz from "
                       f"{f_in_hz / 1e6:g} MHz")
    return best[1]


class _PLLDomain(Elaboratable):
    """Drives clock domain ``cd`` (defined by the parent) from a PLL on the
    board clock resource ``clk_resource``; the domain is held in reset until
    the PLL locks (:meth:`_hold`: the domain's reset from a synchronizer; a
    subclass with :data:`GLOBAL_RESET` holds every flip-flop through the
    device's global reset instead, and ``cd`` must be reset-less).
    Subclasses instantiate the PLL (:meth:`_pll`)."""

    #: the parent's domain is reset-less (:func:`~.top.wrap_board`)
    GLOBAL_RESET = False

    def __init__(self, params, cd: ClockDomain, clk_resource):
        self.params = params
        self.cd = cd
        self._clk = clk_resource

    def elaborate(self, platform):
        m = Module()
        pin = platform.request(*self._clk, dir="-")
        clk, locked = Signal(), Signal()
        m.submodules.pll = self._pll(m, pin, clk, locked)
        m.d.comb += self.cd.clk.eq(clk)
        self._hold(m, clk, locked)
        # nextpnr derives the output's constraint from the input's and the dividers
        return m

    def _hold(self, m, clk, locked):
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain=self.cd.name)


class ECP5PLLDomain(_PLLDomain):
    """An ``EHXPLLL`` on the board clock resource (e.g. ``("clk25", 0)``),
    feedback from ``CLKOP``."""

    GLOBAL_RESET = True

    def __init__(self, params: PLLParams, cd: ClockDomain, clk_resource=("clk25", 0)):
        super().__init__(params, cd, clk_resource)

    def _hold(self, m, clk, locked):
        # the lock through two flip-flops outside the global reset, into
        # ``SGSR`` (active low: every other flip-flop at its initial value
        # until the PLL has locked), as Amaranth's ECP5 platform does with
        # its reset input
        sync0, sync1 = Signal(), Signal()
        m.submodules += [
            Instance("FD1S3AX", p_GSR="DISABLED", i_CK=clk, i_D=locked, o_Q=sync0),
            Instance("FD1S3AX", p_GSR="DISABLED", i_CK=clk, i_D=sync0, o_Q=sync1),
            Instance("SGSR", i_CLK=clk, i_GSR=sync1),
        ]

    def _pll(self, m, pin, clkop, locked):
        p = self.params
        m.submodules.clk_buf = buf = io.Buffer("i", pin)
        mhz = lambda hz: f"{hz / 1e6:.4f}".rstrip("0").rstrip(".")
        return Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=mhz(p.f_in_hz), a_FREQUENCY_PIN_CLKOP=mhz(p.f_out_hz),
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=p.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
            p_CLKOP_CPHASE=p.clkop_div - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            p_CLKFB_DIV=p.clkfb_div,
            i_RST=0, i_STDBY=0, i_CLKI=buf.i, o_CLKOP=clkop, i_CLKFB=clkop,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=locked)


@dataclass(frozen=True)
class ICE40PLLParams:
    f_in_hz: int
    divr: int
    divf: int
    divq: int

    @property
    def f_pfd_hz(self) -> float:
        return self.f_in_hz / (self.divr + 1)

    @property
    def f_vco_hz(self) -> float:
        return self.f_pfd_hz * (self.divf + 1)

    @property
    def f_out_hz(self) -> float:
        return self.f_vco_hz / (1 << self.divq)

    @property
    def filter_range(self) -> int:
        """The loop filter setting for the phase detector frequency."""
        mhz = self.f_pfd_hz / 1e6
        return 1 + sum(mhz >= edge for edge in (17, 26, 44, 66, 101))


def ice40_pll(f_in_hz: int, f_out_hz: float) -> ICE40PLLParams:
    """The iCE40 setting whose output is closest to ``f_out_hz`` without
    exceeding it; :class:`PLLError` when none is within 1%."""
    if not 10e6 <= f_in_hz <= 133e6:
        raise PLLError(f"PLL input {f_in_hz / 1e6:g} MHz is outside 10..133 MHz")
    if not 16e6 <= f_out_hz <= 275e6:
        raise PLLError(f"PLL output {f_out_hz / 1e6:g} MHz is outside 16..275 MHz")
    best = None
    for divr in range(16):
        for divf in range(128):
            for divq in range(1, 7):
                p = ICE40PLLParams(int(f_in_hz), divr, divf, divq)
                if not (10e6 <= p.f_pfd_hz <= 133e6 and 533e6 <= p.f_vco_hz <= 1066e6):
                    continue
                if p.f_out_hz <= f_out_hz and (best is None or p.f_out_hz > best.f_out_hz):
                    best = p
    if best is None or best.f_out_hz < 0.99 * f_out_hz:
        raise PLLError(f"no iCE40 PLL setting makes {f_out_hz / 1e6:g} MHz from "
                       f"{f_in_hz / 1e6:g} MHz")
    return best


class ICE40PLLDomain(_PLLDomain):
    """An ``SB_PLL40_PAD`` on the board clock pin (the iCEBreaker's 12 MHz
    clock is on a PLL input pad), simple feedback."""

    def __init__(self, params: ICE40PLLParams, cd: ClockDomain, clk_resource=("clk12", 0)):
        super().__init__(params, cd, clk_resource)

    def _pll(self, m, pin, clk, locked):
        p = self.params
        return Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
            p_DIVR=C(p.divr, 4), p_DIVF=C(p.divf, 7), p_DIVQ=C(p.divq, 3),
            p_FILTER_RANGE=C(p.filter_range, 3),
            i_PACKAGEPIN=pin.io, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clk, o_LOCK=locked)
