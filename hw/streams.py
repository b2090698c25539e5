"""Stream signatures of the engine: spike events and memory writes.

Every stream is an :class:`amaranth.lib.stream.Signature` whose payload is a
:class:`~amaranth.lib.data.StructLayout`.  One :class:`EventFormat` (field
widths) is chosen per network so that every layer's input and output stream,
the input port and the output taps share a single layout.

Spike event (AER) payload, fields from the least significant bit up:

=========  ===============  =================================================
field      shape            meaning
=========  ===============  =================================================
channel    ``channel_bits``  channel of the spike (fc layers: the neuron index)
y          ``y_bits``        row (0 for fc)
x          ``x_bits``        column (0 for fc)
shift      ``shift_bits``    CAB weight shift: the event adds ``w << shift``
                             (STCB layer 0 bit planes: ``B - 1 - b`` for
                             plane ``b``, MSB first; otherwise 0)
last       1                 end-of-time-step marker; a marker carries no
                             event (channel, y, x are 0 and ignored); on the
                             input of layer 0 a marker with ``shift = 1``
                             *holds*: the step's frame stands for all ``T``
                             steps (accumulated once, scanned ``T`` times)
mask       ``mask_bits``     a *word* event: bit ``i`` set for each of the
                             ``Q`` inputs the event stands for (see below);
                             0 and ignored by a layer that takes single events
=========  ===============  =================================================

Word events.  A layer's synapse unit takes ``Q`` inputs per event
(:attr:`~spikeforge.hw.params.CoreParams.in_lanes`): on layer 0 of a LIF / IF
network the ``B`` bit planes of one input value (``mask`` is the value; the
weight adds as ``sum_i mask[i] * (w << i) = w * x`` through an adder tree of
shifted copies), on a conv layer after a LIF / IF layer the spikes of ``Q``
channels at one position (``channel`` is the channel group ``c // Q``, bit
``i`` of ``mask`` the spike of channel ``c*Q + i``).  ``Q`` is the layer's
entry of the plan's ``words``: the previous layer's lanes (a word per lane
group and position), or a power of two dividing them, when the previous
layer sends its lane group's spikes at a position as ``lanes / Q`` words and
skips the empty ones (``Q = 1``: single spikes).  A narrower word means a
smaller adder tree and, with sparse spikes, hardly more events.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import data, fifo, stream, wiring

from spikeforge.config import LayerKind
from spikeforge.layouts import pack, unpack
from amaranth.lib.wiring import In, Out

__all__ = ["EventFormat", "EventFIFO", "EventFork", "EventMerge", "SkipPath", "EVENT_FIFO_DEPTH",
           "bits_for"]

#: the event FIFOs' depth where nothing sets it (a plan records its device's)
EVENT_FIFO_DEPTH = 8


def bits_for(n: int) -> int:
    """Bits of an unsigned field holding ``0 .. n`` (at least 1)."""
    return max(1, int(n).bit_length())


@dataclass(frozen=True)
class EventFormat:
    """Field widths of the spike-event payload (module docstring)."""

    channel_bits: int
    y_bits: int
    x_bits: int
    shift_bits: int
    mask_bits: int = 1

    def __post_init__(self):
        for name in ("channel_bits", "y_bits", "x_bits", "shift_bits", "mask_bits"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise TypeError(f"{name} must be a positive integer, not {v!r}")

    @classmethod
    def for_network(cls, net) -> "EventFormat":
        """The widths that hold every stream of ``net`` (an
        :class:`~spikeforge.sw.golden.IntNetwork`)."""
        spec = net.spec
        c, h, w = spec.input_shape
        chans, hs, ws = [c], [h], [w]
        for layer in spec.layers:
            chans.append(layer.out_channels)
            if layer.residual:      # the skip's events arrive channel-shifted
                chans.append(layer.synapse_channels)
            hs.append(layer.out_size[0])
            ws.append(layer.out_size[1])
        max_shift = max(0, net.layers[0].input_bits - 1)  # bit planes, MSB first
        # word masks: layer 0's input value, or up to C_out spikes of a layer feeding a conv
        masks = [1]
        if not net.layers[0].stcb:
            masks.append(net.layers[0].input_bits)
            masks += [a.out_channels for a, b in zip(spec.layers, spec.layers[1:])
                      if b.kind is LayerKind.CONV]
        return cls(bits_for(max(chans) - 1), bits_for(max(hs) - 1), bits_for(max(ws) - 1),
                   bits_for(max_shift), max(masks))

    @property
    def layout(self) -> data.StructLayout:
        return data.StructLayout({
            "channel": unsigned(self.channel_bits),
            "y": unsigned(self.y_bits),
            "x": unsigned(self.x_bits),
            "shift": unsigned(self.shift_bits),
            "last": unsigned(1),
            "mask": unsigned(self.mask_bits),
        })

    @property
    def signature(self) -> stream.Signature:
        return stream.Signature(self.layout)

    @property
    def width(self) -> int:
        return self.layout.size

    def pack(self, channel=0, y=0, x=0, shift=0, last=0, mask=0) -> int:
        """The payload as an integer (bit 0 first), e.g. for a Verilog testbench."""
        return pack(self.layout, {"channel": channel, "y": y, "x": x, "shift": shift,
                                  "last": last, "mask": mask})

    def unpack(self, word: int) -> tuple[int, int, int, int, int, int]:
        """``(channel, y, x, shift, last, mask)`` of a packed payload."""
        f = unpack(self.layout, word)
        return f["channel"], f["y"], f["x"], f["shift"], f["last"], f["mask"]


def mem_write_layout(select_bits: int, addr_bits: int, data_bits: int) -> data.StructLayout:
    """Payload of the run-time memory write port: ``data`` to word ``addr`` of
    memory ``select`` (``2n``: layer n's weights, ``2n + 1``: its neuron words)."""
    return data.StructLayout({
        "select": unsigned(select_bits),
        "addr": unsigned(addr_bits),
        "data": unsigned(data_bits),
    })


class EventFIFO(wiring.Component):
    """A small synchronous FIFO of spike events between two cores.

    Built on :class:`amaranth.lib.fifo.SyncFIFOBuffered`: its ``w.ready`` and
    ``r.valid`` are registered, so there is no combinational path from one
    stream port to the other.

    Parameters
    ----------
    fmt : EventFormat
    depth : int

    Members
    -------
    w : In(stream.Signature(fmt.layout))
        Events in.
    r : Out(stream.Signature(fmt.layout))
        Events out, in order.
    level : Out(range(depth + 1))
        Entries held.
    """

    def __init__(self, fmt: EventFormat, depth: int = EVENT_FIFO_DEPTH):
        if type(depth) is not int or depth < 2:
            raise TypeError(f"FIFO depth must be an integer of at least 2, not {depth!r}")
        self._fmt = fmt
        self._depth = depth
        super().__init__({
            "w": In(fmt.signature),
            "r": Out(fmt.signature),
            "level": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = f = fifo.SyncFIFOBuffered(width=self._fmt.width, depth=self._depth)
        m.d.comb += [
            f.w_data.eq(self.w.payload.as_value()),
            f.w_en.eq(self.w.valid),
            self.w.ready.eq(f.w_rdy),
            self.r.payload.eq(f.r_data),
            self.r.valid.eq(f.r_rdy),
            f.r_en.eq(self.r.ready),
            self.level.eq(f.level),
        ]
        return m


class EventFork(wiring.Component):
    """One event stream to two: each beat (spikes and markers alike) goes
    to ``a`` and ``b`` in the same cycle, when both are ready.  Where a
    residual block starts: ``a`` feeds the block's first layer, ``b`` the
    skip to the layer that closes it (:class:`EventMerge`).

    Members
    -------
    i : In(stream.Signature(fmt.layout))
    a, b : Out(stream.Signature(fmt.layout))
    """

    def __init__(self, fmt: EventFormat):
        super().__init__({"i": In(fmt.signature), "a": Out(fmt.signature),
                          "b": Out(fmt.signature)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [
            self.a.payload.eq(self.i.payload),
            self.b.payload.eq(self.i.payload),
            self.a.valid.eq(self.i.valid & self.b.ready),
            self.b.valid.eq(self.i.valid & self.a.ready),
            self.i.ready.eq(self.a.ready & self.b.ready),
        ]
        return m


class EventMerge(wiring.Component):
    """Two event streams of the same time steps into one, for a residual
    layer: the block's own spikes (``a``) and the skip (``s``, the block
    input's spikes, their channel moved up by ``offset``: the layer's
    synapses see ``[a, s]`` as one input of ``2 * offset`` channels).

    Spikes pass one a cycle, ``a``'s first.  A step's end-of-step marker is
    taken from each stream as it comes and held back; the stream that has
    given its marker waits, and the second marker goes out as the step's
    one marker.  The order of a step's spikes does not matter to the layer
    (its current is their sum), and neither stream waits on the other
    within a step, so a fork upstream cannot deadlock: the fork hands a
    step's marker to both streams at once.

    Members
    -------
    a, s : In(stream.Signature(fmt.layout))
    o : Out(stream.Signature(fmt.layout))
    """

    def __init__(self, fmt: EventFormat, offset: int):
        self._fmt = fmt
        self._offset = offset
        super().__init__({"a": In(fmt.signature), "s": In(fmt.signature),
                          "o": Out(fmt.signature)})

    def elaborate(self, platform):
        m = Module()
        a, s, o = self.a, self.s, self.o
        held_a, held_s = Signal(), Signal()     # this step's marker taken from a / s
        pick_a = a.valid & ~held_a
        pick_s = s.valid & ~held_s & ~pick_a
        skip = Signal(self._fmt.layout)
        m.d.comb += [skip.eq(s.payload),    # (a marker's channel stays 0)
                     skip.channel.eq(Mux(s.payload.last, 0, s.payload.channel + self._offset))]
        # a marker goes out only as the second of its step; the first is taken silently
        mark_a = pick_a & a.payload.last
        mark_s = pick_s & s.payload.last
        second = mark_a & held_s | mark_s & held_a
        silent = (mark_a | mark_s) & ~second
        m.d.comb += [
            o.valid.eq((pick_a | pick_s) & ~silent),
            o.payload.eq(Mux(pick_a, a.payload, skip)),
            a.ready.eq(pick_a & (silent | o.ready)),
            s.ready.eq(pick_s & (silent | o.ready)),
        ]
        with m.If(silent):
            m.d.sync += [held_a.eq(held_a | mark_a), held_s.eq(held_s | mark_s)]
        with m.If(second & o.ready):
            m.d.sync += [held_a.eq(0), held_s.eq(0)]
        return m


class SkipPath(wiring.Component):
    """A residual block's skip: the block input's stream ``i`` forks to the
    block's first layer (``a``) and into a FIFO of ``depth`` events, which a
    merge (:class:`EventMerge`, ``offset``) joins with the block's own
    spikes (``own``, from its first layer) into ``o``, the residual layer's
    input.

    Members
    -------
    i, own : In(stream.Signature(fmt.layout))
    a, o : Out(stream.Signature(fmt.layout))
    """

    def __init__(self, fmt: EventFormat, depth: int, offset: int):
        self._fmt, self._depth, self._offset = fmt, depth, offset
        super().__init__({"i": In(fmt.signature), "own": In(fmt.signature),
                          "a": Out(fmt.signature), "o": Out(fmt.signature)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fork = fork = EventFork(self._fmt)
        m.submodules.fifo = fifo = EventFIFO(self._fmt, self._depth)
        m.submodules.merge = merge = EventMerge(self._fmt, self._offset)
        wiring.connect(m, wiring.flipped(self.i), fork.i)
        wiring.connect(m, fork.a, wiring.flipped(self.a))
        wiring.connect(m, fork.b, fifo.w)
        wiring.connect(m, fifo.r, merge.s)
        wiring.connect(m, wiring.flipped(self.own), merge.a)
        wiring.connect(m, merge.o, wiring.flipped(self.o))
        return m
