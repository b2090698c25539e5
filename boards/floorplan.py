"""Block-RAM floorplan of a ULX3S build: each engine core in a stripe of
block-RAM columns, its lane-aligned memories one a row.

The LFE5U-85F's 208 ``DP16KD`` sites lie in four rows across the device
(:data:`EBR_ROWS`), 52 a row.  The default engine uses 182 of them, and left
to itself nextpnr scatters a memory's blocks over the rows: one register
then drives the read or write address of blocks far apart (a layer-0 state
memory's write address: a 13.3 ns route to its 19 blocks), a lane's
current, state and word registers sit between blocks rows apart, and
router2 works hard (one build of the default engine was still unconverged
after 362 iterations).
:func:`plan` pins the blocks instead, after synthesis:

- each engine core gets a stripe of site columns, core by core from the
  left, as wide as its widest lane-aligned memory (a LIF / IF core's state
  memory ``state`` and current memories ``cur*``, whose words hold the
  core's lanes side by side) or a quarter of its blocks, whichever is more;
- each lane-aligned memory takes a row of the stripe (four rows: the first
  synapse unit's current memories, the state memory, then another unit's
  current memories), its blocks spread over the stripe's width in bit order, so
  the blocks holding one lane's bits in the current and state memories are
  in the same columns, rows apart (12 between the lowest two rows);
- the core's other blocks (its weights; an STCB core's accumulator banks,
  a lane's each) fill the stripe's free sites; the blocks outside the cores
  (the event FIFOs between them, SDRAM weight streamers, the host bridge's)
  fill free sites from the left.

A design that does not fit so (stripes wider than a row, or more blocks than
sites) is left to nextpnr as it is, and the counts say why.  nextpnr places
a cell with a ``BEL`` attribute on that site; :func:`apply` sets it on the
``DP16KD`` cells of Yosys's JSON netlist (``spikeforge build`` runs it
between Yosys and nextpnr for the ULX3S and records its counts in
``report.json``'s ``floorplan``).  The netlist is otherwise unchanged: the
co-simulations, which run the Amaranth design, check the same circuit.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

__all__ = ["EBR_ROWS", "EBR_TILES", "site", "plan", "apply", "main"]

#: nextpnr's Y of the LFE5U-85F's four rows of ``DP16KD`` sites, the lowest
#: (bottom of the device) first
EBR_ROWS = (82, 70, 46, 22)
#: X of each row's 13 block-RAM tiles; a tile holds 4 blocks, block ``k`` at
#: ``X + 2k``, named ``X{x}/Y{y}/EBR{k}`` (as nextpnr placed the 208 blocks
#: of a build that used them all)
EBR_TILES = (4, 13, 22, 31, 40, 49, 58, 69, 78, 87, 96, 105, 114)
_COLS = [(t, k) for t in EBR_TILES for k in range(4)]   # left to right
#: the memories whose word is the core's lanes side by side
_LANE_MEMORY = re.compile(r"\.(cur(\d+)(_(\d+))?|state)$")
_CORE = re.compile(r"^(.*\.core(\d+))\.")


def site(row: int, col: int) -> str:
    """The site in row ``row`` (0: the lowest) and column ``col`` (0..51)."""
    t, k = _COLS[col]
    return f"X{t + 2 * k}/Y{EBR_ROWS[row]}/EBR{k}"


def _memory(cell: str) -> str:
    """A block's memory: its name without Yosys's ``.<row>.<column>`` and
    :class:`~spikeforge.hw.memory.SlicedMemory`'s ``.slice<n>``."""
    return re.sub(r"\.slice\d+$", "", cell.rsplit(".", 2)[0])


def _order(cell: str) -> tuple:
    """A block's place in its memory's word: slice, column, row."""
    parts = cell.split(".")
    sl = re.search(r"\.slice(\d+)\.", cell)
    try:
        return (int(sl.group(1)) if sl else 0, int(parts[-1]), int(parts[-2]))
    except (ValueError, IndexError):
        return (0, 0, 0)


def _lane_order(mem: str) -> tuple:
    """The order lane-aligned memories get rows in: the first synapse
    unit's current memories by bank, the state memory, another unit's."""
    m = _LANE_MEMORY.search(mem)
    if m.group(1) == "state":
        return (0, 1, 0)
    return (int(m.group(4) or 0), 0, int(m.group(2)))


def plan(blocks) -> tuple[dict[str, str], dict]:
    """``(cell -> site, counts)`` for the ``DP16KD`` cell names ``blocks``
    (module docstring); ``({}, {"skipped": why})`` for a design that does
    not fit the stripes."""
    mems = defaultdict(list)
    for b in blocks:
        mems[_memory(b)].append(b)
    for bl in mems.values():
        bl.sort(key=_order)
    cores, others = defaultdict(list), []
    for mem in sorted(mems):
        m = _CORE.match(mem + ".")
        if m:
            cores[(int(m.group(2)), m.group(1))].append(mem)
        else:
            others.append(mem)
    n_rows, n_cols = len(EBR_ROWS), len(_COLS)
    if len(blocks) > n_rows * n_cols:
        return {}, {"skipped": f"{len(blocks)} blocks, {n_rows * n_cols} sites"}
    free = [[True] * n_cols for _ in range(n_rows)]
    where, stripes, x0 = {}, {}, 0

    def put(b, r, c):
        where[b] = (r, c)
        free[r][c] = False

    for (_, core), ms in sorted(cores.items()):
        lane = sorted((m for m in ms if _LANE_MEMORY.search(m)), key=_lane_order)[:n_rows]
        n = sum(len(mems[m]) for m in ms)
        width = max([len(mems[m]) for m in lane] + [-(-n // n_rows)])
        if x0 + width > n_cols:
            return {}, {"skipped": f"{core}: its stripe ({width} columns) past the row's end "
                                   f"(column {x0} of {n_cols})"}
        for r, m in enumerate(lane):
            bl = mems[m]
            for i, b in enumerate(bl):
                put(b, r, x0 + i * width // len(bl))
        rest = [b for m in ms if m not in lane for b in mems[m]]
        for r in range(n_rows):
            for c in range(x0, x0 + width):
                if rest and free[r][c]:
                    put(rest.pop(0), r, c)
        if rest:   # (cannot happen: width >= blocks / rows)
            return {}, {"skipped": f"{core}: {len(rest)} blocks past its stripe"}
        stripes[core] = [x0, width]
        x0 += width
    rest = [b for m in others for b in mems[m]]
    for c in range(n_cols):
        for r in range(n_rows):
            if rest and free[r][c]:
                put(rest.pop(0), r, c)
    if rest:
        return {}, {"skipped": f"{len(rest)} blocks outside the cores found no site"}
    return ({b: site(r, c) for b, (r, c) in where.items()},
            {"blocks": len(where), "stripes": stripes})


def apply(netlist: dict, top: str = "top") -> dict:
    """Pin the ``DP16KD`` cells of Yosys's JSON ``netlist`` (in place) by
    :func:`plan`; returns its counts.  A netlist with a block already pinned
    is left as it is."""
    cells = netlist["modules"][top]["cells"]
    blocks = [n for n, c in cells.items() if c["type"] == "DP16KD"]
    if any("BEL" in cells[b].get("attributes", {}) for b in blocks):
        return {"skipped": "blocks already pinned"}
    sites, counts = plan(blocks)
    for b, s in sites.items():
        cells[b].setdefault("attributes", {})["BEL"] = s
    return counts


def main(argv: list[str] | None = None) -> int:
    """``python -m spikeforge.boards.floorplan NETLIST.json [COUNTS.json]``:
    pin the netlist's blocks in place, write the counts."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m spikeforge.boards.floorplan NETLIST.json [COUNTS.json]",
              file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        netlist = json.loads(path.read_text())
        counts = apply(netlist)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        print(f"error: {path}: not a Yosys JSON netlist with a top module ({e})",
              file=sys.stderr)
        return 1
    path.write_text(json.dumps(netlist))
    if len(args) == 2:
        Path(args[1]).write_text(json.dumps(counts, indent=1) + "\n")
    print(f"block-RAM floorplan: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
