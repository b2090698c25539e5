"""Elaboration-time parameters of one layer core, derived from an IntLayer.

:class:`CoreParams` is computed once from the layer's
:class:`~spikeforge.sw.golden.IntLayer` (its :class:`~spikeforge.config.LayerSpec`
and integer widths), the shape of the layer's input stream and the folding
factor ``P``; every unit of the core reads its geometry and widths from it.

Accumulator width.  The membrane memory holds ``acc = base + conv``, where
``base`` is last step's state after decay and reset and ``conv`` the partial
sum of this step's weights (the bias is added once, at the neuron scan).  The
width ``A`` is the larger of the layer's ``acc_bits`` and the worst case over
*every* parameter set that fits the layer's field widths (weights of
``weight_bits``, thresholds of ``state_bits``), so weights written at run time
through the memory port can never make the accumulator wrap:
``|base| <= 2**(S-1) * (1 + sum 2**-s_k) + len(shifts) + 2**(S-1)`` and
``|conv| <= 2**(W-1) * F * (2**B - 1)``, ``F`` the weights an output sums
(``synapse_channels * k * k``: a residual layer's skip half counts).

LIF / IF cores keep the two apart: ``cur_banks`` current memories of
``cur_width`` bits (``conv`` only: the synapse unit fills one while the
neuron unit scans the other) and one state memory of ``state_width`` bits
(``base``).  STCB cores keep the single accumulator of ``acc_width`` bits.

A *static* layer (layer 0 of a LIF / IF network) may receive one frame for
all steps of an image (a *hold* marker after it): the frame's current is the
same at every step, so it is accumulated once and scanned ``T`` times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from spikeforge.config import LayerKind, NeuronKind, Reset
from spikeforge.errors import SpikeforgeError

from .arith import signed_bits
from .streams import EventFormat

__all__ = ["EngineError", "CoreParams", "FAULTS"]

#: Test-only deliberate faults (``fault=`` of the cores): the comparison with
#: the golden model must catch each of them.  ``threshold``: the other spike
#: comparison (``>`` for ``>=`` and back); ``decay``: a wrong first decay shift.
FAULTS = ("threshold", "decay")

#: the memory word width (bits) past which a core registers its current
#: memories' writes (:attr:`CoreParams.write_stage`)
WRITE_STAGE_BITS = 64

#: the memory word width (bits) past which a core registers its current and
#: state memories' read addresses (:attr:`CoreParams.read_stage`)
READ_STAGE_BITS = 64

#: the memory word width past which a core also registers its current
#: memories' words once more on each side of the update
#: (:attr:`CoreParams.rmw_stage`): off (no core is this wide).  With it on
#: for the default engine's layers 0 and 1 (words of 640 and 512 bits), and
#: pipelined weight reads, a ULX3S build came out at 57.9 MHz, its critical
#: path a current memory's read-address select 12.9 ns from the blocks,
#: against 72.7 without either (README, Measured)
RMW_STAGE_BITS = 1 << 20

#: the memory word width past which a core registers the word its synapse
#: unit selects from its current memories (:attr:`CoreParams.select_stage`):
#: the default engine's layer 0 (640 bits; its update, from a current word's
#: register through the memory select, the forwarding and the add into the
#: unit's register, was the critical path of its ULX3S build at 90.8 MHz,
#: 4.5 ns of it one route from the word's register; README, Measured)
SELECT_STAGE_BITS = 512


class EngineError(SpikeforgeError, ValueError):
    """A layer or network the engine cannot build, with the layer named."""


@dataclass(frozen=True)
class CoreParams:
    index: int
    kind: LayerKind
    in_shape: tuple[int, int, int]   # (C, H, W) of the input stream
    c_in: int                        # weight rows: synapse_channels (fc: flattened inputs)
    c_out: int
    k: int
    pad: int
    hc: int                          # conv output rows (fc: 1)
    wc: int                          # conv output columns (fc: 1)
    pool: int
    P: int
    weight_bits: int
    state_bits: int
    acc_bits: int                    # the image's bias field width
    acc_width: int                   # the hardware accumulator width A
    input_bits: int
    decay_shifts: tuple[int, ...]
    reset: Reset
    fmt: EventFormat
    fault: str | None = None
    stcb: bool = False
    timesteps: int = 1
    static: bool = False             # takes hold markers (accumulate once, scan T times)
    cur_banks: int = 2               # LIF / IF: current memories (2: ping-pong)
    cur_width: int = 0               # LIF / IF: bits of a current word (conv only)
    state_width: int = 0             # LIF / IF: bits of a state word (base)
    in_lanes: int = 1                # mask bits an input event carries (1: single events)
    in_planes: bool = False          # the mask is an input value's bit planes (layer 0)
    words_out: int = 1               # channels per output event: 1 single spikes, Q > 1 words
    strict: bool = False             # LIF / IF: fire at u > theta (neuron.strict), else u >= theta
    units: int = 1                   # synapse units, each walking its share of the kernel taps

    @classmethod
    def build(cls, index: int, layer, in_shape: tuple[int, int, int], P, fmt: EventFormat,
              fault: str | None = None, timesteps: int = 1, static: bool = False,
              cur_banks: int = 2, in_lanes: int = 1, in_planes: bool = False,
              words_out: int = 1, units: int = 1) -> "CoreParams":
        s = layer.spec
        stcb = s.neuron.kind is NeuronKind.STCB
        if stcb and fault is not None:
            raise EngineError(f"layer {index}: faults are LIF/IF only")
        if type(P) is not int or not 1 <= P <= s.out_channels:
            raise EngineError(f"layer {index}: lane count P must be an integer in "
                              f"1..{s.out_channels} (its output channels), not {P!r}")
        if fault is not None and fault not in FAULTS:
            raise EngineError(f"layer {index}: unknown fault {fault!r}; known: "
                              f"{', '.join(FAULTS)}")
        if s.kind is LayerKind.FC:
            hc = wc = 1
        else:
            hc, wc = s.conv_size
        half = 1 << (layer.state_bits - 1)
        n = len(layer.decay_shifts)
        leak = sum(Fraction(1, 1 << d) for d in layer.decay_shifts)
        base = half + math.ceil(half * leak) + n + half
        fan_in = s.synapse_channels * s.kernel * s.kernel
        conv = (1 << (layer.weight_bits - 1)) * fan_in * ((1 << layer.input_bits) - 1)
        width = max(layer.acc_bits, signed_bits(-base - conv, base + conv))
        if cur_banks not in (1, 2):
            raise EngineError(f"layer {index}: cur_banks must be 1 or 2, not {cur_banks!r}")
        if in_lanes < 1 or in_lanes > 1 and (stcb or in_planes and index != 0):
            raise EngineError(f"layer {index}: word events (in_lanes {in_lanes}) are for "
                              "LIF / IF layers (bit planes: layer 0 only)")
        if (type(words_out) is not int or words_out < 1 or P % words_out
                or words_out != P and words_out & (words_out - 1)):
            raise EngineError(f"layer {index}: output words of {words_out!r} channels; a word "
                              f"must be a power of two that divides the lanes ({P}), or {P}")
        if static and (stcb or index != 0):
            raise EngineError(f"layer {index}: only layer 0 of a LIF / IF network is static")
        cur_w = width if stcb else signed_bits(-conv, conv)
        state_w = width if stcb else signed_bits(-base, base)
        # ``units`` 2: a LIF / IF conv layer with a lane per output channel
        # splits its kernel taps over two synapse units, each with its own
        # copy of the weights and current memories (the scan adds the
        # copies): its events take about half the cycles.  Such a layer has
        # no more channel lanes to give, and its cycles per event are taps,
        # however few spikes a word carries (the default network's layer 1
        # set the pace this way)
        if units not in (1, 2) or units == 2 and (stcb or s.kind is not LayerKind.CONV
                                                  or index == 0 or s.kernel < 2
                                                  or P != s.out_channels):
            raise EngineError(f"layer {index}: {units!r} synapse units; two are for a LIF / IF "
                              "conv layer past layer 0 (kernel > 1) with a lane per output "
                              "channel")
        return cls(index, s.kind, tuple(in_shape), s.synapse_channels, s.out_channels, s.kernel,
                   s.padding, hc, wc, s.pool, P, layer.weight_bits, layer.state_bits,
                   layer.acc_bits, width, layer.input_bits, tuple(layer.decay_shifts),
                   s.neuron.reset, fmt, fault, stcb, timesteps, static,
                   1 if stcb else cur_banks, cur_w, state_w, in_lanes, in_planes, words_out,
                   strict=s.neuron.strict, units=units)

    # ------------------------------------------------------------------ geometry

    @property
    def groups(self) -> int:
        """``G = ceil(C_out / P)`` channel groups."""
        return -(-self.c_out // self.P)

    @property
    def streamable(self) -> bool:
        """Whether the core's weights can stream from an SDRAM
        (:class:`~spikeforge.hw.weightstream.WeightStreamer`): an fc LIF / IF
        layer with one synapse unit."""
        return self.kind is LayerKind.FC and not self.stcb and self.units == 1

    @property
    def taps(self) -> int:
        """Read-modify-write steps per input event: ``k * k * G``."""
        return self.k * self.k * self.groups

    @property
    def write_stage(self) -> int:
        """1 when the core registers its writes in front of its current
        memories (a LIF / IF core whose memory word is wider than
        :data:`WRITE_STAGE_BITS`: such a word is spread over many blocks, and
        its write data's route took a routed build's whole period), else 0
        (a narrow core, e.g. the iCE40's, keeps its logic cells)."""
        return int(not self.stcb and self.P * self.R * self.cur_width > WRITE_STAGE_BITS)

    @property
    def read_stage(self) -> int:
        """1 when the core registers the read address (and enable) of each of
        its current memories and of its state memory (a LIF / IF core whose
        memory word is wider than :data:`READ_STAGE_BITS`: the address, a
        select of the scan's and the synapse unit's, drove a dozen blocks
        spread over the block-RAM rows and Yosys's read-during-write
        comparison behind them: the critical path of a routed build), else 0.
        Every read is issued a cycle earlier (the synapse unit's from an
        earlier stage of its pipeline, the same writes in flight: with a fourth
        write forwarded instead, the default engine took 1,800 more
        flip-flops and 1,300 more logic cells, and router2 did not converge
        on two placements of its ULX3S build); the scan's pipeline is a
        stage longer."""
        return int(not self.stcb and self.P * self.R * self.cur_width > READ_STAGE_BITS)

    @property
    def rmw_stage(self) -> int:
        """1 when the core registers its current memories' words once more on
        each side of the synapse unit's update (a LIF / IF core whose word is
        wider than :data:`RMW_STAGE_BITS`: the word, spread over a dozen
        blocks in rows across the device, travelled over 12 ns from the
        blocks' registers to the update's adders and back in a routed
        build), else 0: the read is issued three cycles before the update
        instead of two and a write takes two registers to the memory, so
        five writes in flight are forwarded instead of three."""
        return int(self.write_stage and self.P * self.R * self.cur_width > RMW_STAGE_BITS)

    @property
    def select_stage(self) -> int:
        """1 when the core registers the word its synapse unit selects from
        its current memories, by the unit's adders (a LIF / IF core with a
        write stage whose word is wider than :data:`SELECT_STAGE_BITS`, or
        with :attr:`rmw_stage`: the memories' words, each registered by its
        blocks, are rows apart, and the select's route to the update's adders
        came on top of the update), else 0: the read is issued a cycle
        earlier and one more write in flight is forwarded (four instead of
        three)."""
        return int(self.write_stage and (
            self.rmw_stage or self.P * self.R * self.cur_width > SELECT_STAGE_BITS))

    def tap_range(self, unit: int) -> tuple[int, int]:
        """Kernel taps ``[t0, t1)`` (raster order, ``t = dy*k + dx``) that
        synapse unit ``unit`` walks: ``k*k`` split into ``units`` runs, the
        longer ones first."""
        n, u = self.k * self.k, self.units
        size = [n // u + (i < n % u) for i in range(u)]
        t0 = sum(size[:unit])
        return t0, t0 + size[unit]

    def weight_rows(self, unit: int) -> tuple[int, int]:
        """Words ``[lo, hi)`` of ``L{n}_weights`` that synapse unit ``unit``
        holds: those of its taps (the tap is the address's outermost part)."""
        t0, t1 = self.tap_range(unit)
        per_tap = self.in_groups * self.groups
        return t0 * per_tap, t1 * per_tap

    @property
    def walk_taps(self) -> int:
        """Cycles per input event and channel group: the longest unit's taps."""
        return -(-self.k * self.k // self.units)

    @property
    def R(self) -> int:
        """Positions per memory word: a static layer (layer 0 of a LIF / IF
        network, which scans ``T`` times per accumulation) with pooling keeps
        a pooling window's row of ``pool`` positions in one word and scans it
        in one cycle (``R * P`` neuron datapaths; ``pool`` a power of two);
        otherwise 1."""
        pool = self.pool
        if self.static and self.kind is LayerKind.CONV and pool > 1 and pool & (pool - 1) == 0:
            return pool
        return 1

    @property
    def acc_depth(self) -> int:
        """Words per current and state memory: ``G * Hc * Wc / R``; word
        ``((g*Hc + y)*Wc + x) // R`` holds in lane ``r*P + j`` the neuron
        ``(g*P + j, y, x)`` with ``x % R == r``."""
        return self.groups * self.hc * self.wc // self.R

    @property
    def word_channels(self) -> int:
        """Input channels per weight word: ``in_lanes`` for channel words, else 1."""
        return 1 if self.in_planes else self.in_lanes

    @property
    def in_groups(self) -> int:
        """Input channel groups ``ceil(C_in / word_channels)`` (weight rows)."""
        return -(-self.c_in // self.word_channels)

    @property
    def weight_depth(self) -> int:
        return self.in_groups * self.taps

    @property
    def weight_width(self) -> int:
        return self.word_channels * self.P * self.weight_bits

    @property
    def neuron_width(self) -> int:
        """Bits of a neuron-memory word (:func:`spikeforge.layouts.neuron_layout`)."""
        from spikeforge.layouts import neuron_layout
        return neuron_layout(self.state_bits, self.acc_bits).size

    @property
    def out_size(self) -> tuple[int, int]:
        return (self.hc // self.pool, self.wc // self.pool)

    @property
    def neurons(self) -> int:
        return self.c_out * self.hc * self.wc

    @property
    def max_shift(self) -> int:
        """Largest CAB shift of an update: layer 0's bit planes (the event's
        ``shift``), or an STCB layer's input step ``t`` (``T - 1 - t``)."""
        if self.index == 0:
            return self.input_bits - 1
        return self.timesteps - 1 if self.stcb else 0

    @property
    def in_steps(self) -> int:
        """Input steps (markers) accumulated before a neuron scan: 1, or T for
        an STCB layer past layer 0 (the whole spike train)."""
        return self.timesteps if self.stcb and self.index > 0 else 1

    @property
    def step_shift(self) -> bool:
        """Whether updates take the shift ``T - 1 - t`` from the input step."""
        return self.in_steps > 1

    @property
    def flatten(self) -> bool:
        """Whether input events ``(c, y, x)`` are flattened to an fc input index."""
        return self.kind is LayerKind.FC
