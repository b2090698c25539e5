"""The engine's block-RAM memories with the block's own output register
(:class:`~spikeforge.hw.memory.RegisteredMemory`): the ECP5 instances against
Yosys's own mapping of the same memory, and the two-cycle read in simulation."""

import pytest
from amaranth import *
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spikeforge.hw.memory import (ECP5_CONFIGS, RegisteredMemory, ecp5_outreg_config,
                                  geometry_blocks)
from amaranth.sim import Simulator


class _ECP5:
    """A platform as :class:`RegisteredMemory` tells an ECP5 build."""
    family = "ecp5"


class _Inferred(wiring.Component):
    """A one-read-port, one-write-port memory for Yosys to map itself."""

    def __init__(self, width, depth, init=()):
        self.width, self.depth, self.init = width, depth, init
        super().__init__({"rd_addr": In(range(depth)), "rd_data": Out(width),
                          "wr_addr": In(range(depth)), "wr_data": In(width), "wr_en": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(self.width), depth=self.depth,
                                        init=self.init)
        rd, wr = mem.read_port(), mem.write_port()
        m.d.comb += [rd.addr.eq(self.rd_addr), self.rd_data.eq(rd.data),
                     wr.addr.eq(self.wr_addr), wr.data.eq(self.wr_data), wr.en.eq(self.wr_en)]
        return m


def _blocks(netlist) -> list[tuple[dict, dict]]:
    """Each DP16KD's parameters (but its contents) and pins, a pin named by
    the top port bit or constant driving it (inputs: ``x`` as ``0``;
    outputs to no port left out), sorted by the data they write."""
    top = next(mod for mod in netlist["modules"].values()
               if mod.get("attributes", {}).get("top"))
    port = {b: f"{name}[{i}]" for name, p in top["ports"].items()
            for i, b in enumerate(p["bits"])}
    out = []
    for cell in top["cells"].values():
        if cell["type"] != "DP16KD":
            continue
        pins = {}
        for pin, (b,) in cell["connections"].items():
            name = ("0" if b == "x" else b) if isinstance(b, str) else port.get(b)
            if name is not None and not (pin.startswith("DI") and name == "0"):
                pins[pin] = name
        params = {k: v for k, v in cell["parameters"].items()
                  if not (k.startswith("INITVAL") and set(v) <= {"0", "x"})}   # (zero contents)
        out.append((params, pins))
    return sorted(out, key=lambda bp: bp[1].get("DIA0", ""))


# 36-bit blocks the pseudo-dual-port way; one shape per narrower configuration;
# a width not a multiple of the block's
SHAPES = [(72, 512), (40, 512), (18, 1000), (40, 1024), (9, 2048), (4, 3000), (2, 8192), (1, 10000)]


@pytest.mark.parametrize("width,depth", SHAPES)
def test_the_output_register_blocks_are_wired_as_yosys_wires_its_own(width, depth):
    """Every DP16KD pin connects to the same address, data or enable bit, or
    constant, as in Yosys's mapping of the same memory (its
    ``brams_map_16kd.v``, the mapping every ECP5 build so far ran on), and
    every parameter is the same, the initial contents included, but the
    read port's output register."""
    import random
    from spikeforge.toolchain import yosys_netlist
    assert ecp5_outreg_config(width, depth) is not None
    rng = random.Random(width * depth)
    init = [rng.getrandbits(width) for _ in range(depth - 3)]
    ours = _blocks(yosys_netlist(rtlil.convert(RegisteredMemory(unsigned(width), depth, "m", init),
                                               name="top", platform=_ECP5()),
                                 "synth_ecp5 -abc9"))
    theirs = _blocks(yosys_netlist(rtlil.convert(_Inferred(width, depth, init), name="top"),
                                   "setparam -set COLLISION_X_MASK 1'1 t:$memrd_v2; "
                                   "synth_ecp5 -abc9"))
    assert len(ours) == len(theirs) == geometry_blocks(width, depth, ECP5_CONFIGS)
    for (p_ours, pins_ours), (p_theirs, pins_theirs) in zip(ours, theirs):
        # every read pin through its port's output register: at 36 bits both
        # ports' (the word's low half leaves on port A's pins), port A's
        # output clock enabled
        ports = "AB" if int(p_ours["DATA_WIDTH_B"], 2) == 36 else "B"
        for port in ports:
            assert p_ours.pop(f"REGMODE_{port}") == "OUTREG"
            assert p_theirs.pop(f"REGMODE_{port}") == "NOREG"
        if ports == "AB":
            assert pins_ours.pop("OCEA") == "1" and pins_theirs.pop("OCEA") == "0"
        assert pins_ours == pins_theirs
        assert p_ours == p_theirs


def test_the_configuration_is_the_fewest_blocks_in_columns():
    """Columns of the configuration with the fewest blocks (the widest on a
    tie); none for a memory deeper than any block and for a shallow one
    (LUT RAM, Yosys's choice)."""
    assert ecp5_outreg_config(648, 512) == (36, 512)
    assert ecp5_outreg_config(648, 784) == (18, 1024)
    assert ecp5_outreg_config(36, 1024) == (18, 1024)
    assert ecp5_outreg_config(4, 4096) == (4, 4096)
    assert ecp5_outreg_config(36, 20000) is None
    assert ecp5_outreg_config(640, 64) is None


def test_the_simulated_memory_reads_two_cycles_late():
    """Simulation (no platform): the word at ``rd_addr`` two cycles later,
    a write seen a cycle after it is presented."""
    dut = RegisteredMemory(signed(12), 100, "m")
    seen = []

    async def bench(ctx):
        for a in range(5):
            ctx.set(dut.wr_addr, a)
            ctx.set(dut.wr_data, 100 * a - 7)
            ctx.set(dut.wr_en, 1)
            await ctx.tick()
        ctx.set(dut.wr_en, 0)
        for a in range(7):   # address a % 5 in cycle a; seen[a]: the data in cycle a + 1
            ctx.set(dut.rd_addr, a % 5)
            await ctx.tick()
            seen.append(ctx.get(dut.rd_data))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen[1:7] == [100 * (a % 5) - 7 for a in range(6)]   # cycle a + 2: address a's
