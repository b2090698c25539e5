"""The ULX3S block-RAM floorplan (boards/floorplan.py) on block names as
Yosys gives them: every block a site of its own, each core in its stripe,
its lane-aligned memories a row each in bit order; designs that do not fit
are left to nextpnr, with the reason."""

import json
import re

import pytest

from spikeforge.boards import floorplan as F


def blocks(core: int, mem: str, n: int, sliced: bool = False) -> list[str]:
    base = f"board.engine.core{core}.{mem}"
    return [f"{base}.slice{i}.0.0" if sliced else f"{base}.0.{i}" for i in range(n)]


def default_engine() -> list[str]:
    """The default engine's 182 blocks, as Yosys names them."""
    return (blocks(0, "cur0", 18) + blocks(0, "cur1", 18) + blocks(0, "state", 19)
            + blocks(1, "cur0", 15) + blocks(1, "cur1", 15) + blocks(1, "state", 15)
            + blocks(1, "weights", 8, sliced=True) + blocks(2, "weights", 64, sliced=True)
            + blocks(3, "weights", 1, sliced=True)
            + ["board.bridge.buf.0.0"] + [f"board.bridge.store.0.{i}" for i in range(8)])


def where(s: str) -> tuple[int, int]:
    """(row index, column index) of a site name."""
    x, y, k = map(int, re.match(r"X(\d+)/Y(\d+)/EBR(\d)$", s).groups())
    cols = [t + 2 * j for t in F.EBR_TILES for j in range(4)]
    assert (x - 2 * k) in F.EBR_TILES
    return F.EBR_ROWS.index(y), cols.index(x)


def test_the_default_engine_in_stripes():
    names = default_engine()
    sites, counts = F.plan(names)
    assert counts["blocks"] == len(names) == len(sites) == 182
    assert len(set(sites.values())) == 182          # a site each
    assert counts["stripes"] == {"board.engine.core0": [0, 19], "board.engine.core1": [19, 15],
                                 "board.engine.core2": [34, 16], "board.engine.core3": [50, 1]}
    pos = {b: where(s) for b, s in sites.items()}
    for core, (x0, w) in counts["stripes"].items():
        for b, (r, c) in pos.items():
            if b.startswith(core + "."):
                assert x0 <= c < x0 + w, b
    # each lane-aligned memory a row of its own, its blocks in bit order
    for core in (0, 1):
        rows = {}
        for mem in ("cur0", "cur1", "state"):
            bl = [b for b in names if b.startswith(f"board.engine.core{core}.{mem}.")]
            rs = {pos[b][0] for b in bl}
            assert len(rs) == 1
            rows[mem] = rs.pop()
            cs = [pos[b][1] for b in bl]
            assert cs == sorted(cs)
        assert len(set(rows.values())) == 3
    # the block holding a lane's low bits in cur0 and in state: one column
    assert pos["board.engine.core0.cur0.0.0"][1] == pos["board.engine.core0.state.0.0"][1]
    # Yosys's column order, not the names' text order (0.10 after 0.9)
    assert pos["board.engine.core0.cur0.0.10"][1] > pos["board.engine.core0.cur0.0.9"][1]


def test_what_does_not_fit_is_left_to_nextpnr():
    sites, counts = F.plan(default_engine() + [f"board.extra.{i}.0.0" for i in range(27)])
    assert sites == {} and counts == {"skipped": "209 blocks, 208 sites"}
    wide = blocks(0, "cur0", 40) + blocks(1, "cur0", 20)
    sites, counts = F.plan(wide)
    assert sites == {} and "board.engine.core1: its stripe (20 columns) past the row's end" \
        in counts["skipped"]


def test_apply_pins_the_netlist_and_main_writes_the_counts(tmp_path):
    cells = {b: {"type": "DP16KD", "attributes": {}} for b in default_engine()}
    cells["board.engine.core0.lut"] = {"type": "LUT4", "attributes": {}}
    netlist = {"modules": {"top": {"cells": cells}}}
    path = tmp_path / "top.json"
    path.write_text(json.dumps(netlist))
    assert F.main([str(path), str(tmp_path / "counts.json")]) == 0
    out = json.loads(path.read_text())["modules"]["top"]["cells"]
    bels = [c["attributes"].get("BEL") for c in out.values() if c["type"] == "DP16KD"]
    assert None not in bels and len(set(bels)) == 182
    assert "BEL" not in out["board.engine.core0.lut"]["attributes"]
    assert json.loads((tmp_path / "counts.json").read_text())["blocks"] == 182
    # a netlist pinned already is left as it is
    again = json.loads(path.read_text())
    assert F.apply(again) == {"skipped": "blocks already pinned"}
    (tmp_path / "bad.json").write_text("{}")
    assert F.main([str(tmp_path / "bad.json")]) == 1
    assert F.main([]) == 2


@pytest.mark.parametrize("row,col,name", [(0, 0, "X4/Y82/EBR0"), (0, 3, "X10/Y82/EBR3"),
                                          (3, 51, "X120/Y22/EBR3"), (2, 28, "X69/Y46/EBR0")])
def test_site_names(row, col, name):
    assert F.site(row, col) == name


def test_rows_go_to_the_lane_aligned_memories():
    """Two synapse units: the first unit's current memories and the state
    memory get rows, the second unit's first current memory the last; an
    STCB core's banks (a lane's each) only fill the stripe."""
    names = (blocks(0, "cur0", 6) + blocks(0, "cur0_1", 6) + blocks(0, "cur1", 6)
             + blocks(0, "cur1_1", 6) + blocks(0, "state", 6)
             + [b for j in range(8) for b in blocks(1, f"bank{j}", 2)])
    sites, counts = F.plan(names)
    pos = {b: where(s) for b, s in sites.items()}
    row = {mem: {pos[b][0] for b in names if b.startswith(f"board.engine.core0.{mem}.")}
           for mem in ("cur0", "cur1", "state", "cur0_1")}
    assert row == {"cur0": {0}, "cur1": {1}, "state": {2}, "cur0_1": {3}}
    x1 = counts["stripes"]["board.engine.core0"][1]   # core 1 right after core 0
    assert counts["stripes"]["board.engine.core1"] == [x1, 4]
