"""Block-RAM floorplan of a ULX3S build: each LIF core's current and state
blocks side by side, lane by lane.

A wide core's current memories (two, a step each) and its state memory are
words of hundreds of bits, each a row of DP16KD blocks
(:class:`~spikeforge.hw.memory.RegisteredMemory`).  Left to nextpnr, a
lane's current block of one memory, of the other and its state block land
anywhere along the device's four block-RAM rows (one lane's blocks were 45
columns and 43 rows apart in a routed build), and the lane's
read-modify-write and neuron datapath, tied to all three, is spread between
them.  :func:`floorplan` fixes those blocks to consecutive sites instead, in
lane order, so each lane's blocks are neighbours and its logic can sit
beside them; the other memories (weights, FIFOs, the host link's) are
nextpnr's to place.  It is applied as Yosys ``setattr -set BEL`` commands
after synthesis (:func:`yosys_commands`); nextpnr places a cell with a
``BEL`` there.
"""

from __future__ import annotations

from spikeforge.hw.memory import ecp5_outreg_config
from spikeforge.hw.network import core_params

__all__ = ["EBR_ROWS", "EBR_TILES", "ebr_sites", "lane_blocks", "floorplan", "yosys_commands"]

#: the LFE5U-85F's DP16KD sites as nextpnr names them (``X{x}/Y{y}/EBR{k}``):
#: four rows of 13 tiles of 4 blocks, block ``k`` of a tile at ``x = tile + 2k``
#: (read from nextpnr's placement of 208 blocks)
EBR_ROWS = (82, 70, 46, 22)
EBR_TILES = (4, 13, 22, 31, 40, 49, 58, 69, 78, 87, 96, 105, 114)


def ebr_sites() -> list[str]:
    """Every site, in one snake through the rows (the first row left to
    right, the next right to left, ...), so consecutive sites are neighbours
    also across a row's end."""
    out = []
    for r, y in enumerate(EBR_ROWS):
        row = [f"X{t + 2 * k}/Y{y}/EBR{k}" for t in EBR_TILES for k in range(4)]
        out += row if r % 2 == 0 else row[::-1]
    return out


def lane_blocks(cp) -> list[tuple[float, str]]:
    """A LIF / IF core's current and state blocks, each ``(lane, name)``: the
    lane at the block's middle bit (0 .. ``P * R``), and the block's
    instance path within the core (``cur0.cur0_b3``); none for an STCB core
    or memories not built from column blocks (LUT RAM)."""
    if cp.stcb:
        return []
    mems = [(f"cur{b}" if u == 0 else f"cur{b}_{u}", cp.cur_width)
            for b in range(cp.cur_banks) for u in range(cp.units)]
    mems.append(("state", cp.state_width))
    out = []
    for name, lane_bits in mems:
        width = cp.P * cp.R * lane_bits
        cfg = ecp5_outreg_config(width, cp.acc_depth)
        if cfg is None:
            continue
        cw = cfg[0]
        for n, lo in enumerate(range(0, width, cw)):
            mid = (lo + min(lo + cw, width)) / 2
            out.append((mid / lane_bits, f"{name}.{name}_b{n}"))
    return out


def floorplan(net, lanes, words=None, prefix: str = "board.engine") -> dict[str, str]:
    """Cell name (as Yosys flattens the ULX3S top; ``prefix`` the engine's
    path in it, ``""`` for an engine alone) -> site, for every core's
    :func:`lane_blocks`: core by core, each core's blocks in lane order (a
    lane's blocks of every memory together), on consecutive
    :func:`ebr_sites`."""
    sites = iter(ebr_sites())
    out = {}
    for i, cp in enumerate(core_params(net, lanes, words=words)):
        for _, name in sorted(lane_blocks(cp)):
            out[".".join(filter(None, (prefix, f"core{i}", name)))] = next(sites)
    return out


def yosys_commands(plan: dict[str, str]) -> str:
    """The Yosys commands pinning ``plan``'s cells (after ``synth_ecp5``)."""
    return "; ".join(f'setattr -set BEL "{site}" c:{cell}' for cell, site in plan.items())
