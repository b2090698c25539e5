"""The ECP5 block RAM's own output registers, taken from the fabric after synthesis.

An ECP5 ``DP16KD`` read without its output register (``REGMODE = NOREG``,
the only mode Yosys's memory mapping uses) leaves the block 5.83 ns after the
clock edge in nextpnr's timing model (speed 6): at 100 MHz that leaves about
4 ns to reach the next register, and in the engine's routed builds that
register sat up to 58 columns away.  With the block's output register
(``OUTREG``) the word leaves the block 0.96 ns after the edge.

The engine registers every word it reads from a block RAM before any logic
(the current memories' words in :mod:`spikeforge.hw.layer`, the state word
in the neuron unit's scan): after synthesis that register is a
``TRELLIS_FF`` per bit whose data input is the block's output and nothing
else's.  :func:`absorb` moves such registers into the block: the block's
read port gets ``REGMODE = OUTREG`` and its output-register enable tied
high, its output pins drive the nets the flip-flops' outputs drove, and the
flip-flops go.  The netlist is the same circuit, cycle for cycle: a
flip-flop clocked by the block's read clock, always enabled (``CEMUX`` 1),
never reset (``LSR`` 0) and starting at 0 (``REGSET`` RESET; the global
reset clears the output register too) is what ``OUTREG`` is.  A block is
taken only when every output bit that has a load feeds one such flip-flop
and nothing else, the block's read reset is unused and its ports share
the clock; any other block is left as it is.  A 36-bit block
(``DATA_WIDTH_B`` 36, pseudo dual port) carries the low half of its word on
port A's outputs: both ports' registers are set (as Lattice's tools set a
``PDPW16KD``'s ``REGMODE_A`` and ``REGMODE_B``), whichever pins are used.

The co-simulations run the engine's Amaranth design, where the register is
in the fabric; nothing here changes what they check.  ``spikeforge build``
runs :func:`absorb` on the ULX3S netlist between Yosys and nextpnr
(:func:`spikeforge.boards.build.build`) and records its counts in the
report (``outreg``).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

__all__ = ["absorb", "main"]

_ONE, _ZERO = ["1"], ["0"]


def _loads(mod: dict) -> dict:
    """Each net bit's loads: ``(cell, port)``, ``("", port)`` for the module's outputs."""
    loads = defaultdict(list)
    for name, cell in mod["cells"].items():
        dirs = cell.get("port_directions", {})
        for port, bits in cell["connections"].items():
            if dirs.get(port) != "output":
                for b in bits:
                    if isinstance(b, int):
                        loads[b].append((name, port))
    for pname, port in mod.get("ports", {}).items():
        if port["direction"] != "input":
            for b in port["bits"]:
                if isinstance(b, int):
                    loads[b].append(("", pname))
    return loads


def _plain_register(ff: dict, clock) -> bool:
    """Whether flip-flop ``ff`` is a register ``OUTREG`` can stand for: on
    ``clock``'s rising edge, always enabled, never reset, starting at 0."""
    p, c = ff["parameters"], ff["connections"]
    return (c.get("CLK") == clock and p.get("CLKMUX", "CLK") == "CLK"
            and str(p.get("CEMUX", "1")).strip() == "1"
            and c.get("LSR", _ZERO) == _ZERO
            and str(p.get("REGSET", "RESET")).strip() == "RESET")


def _width(value) -> int:
    """A Yosys JSON parameter's integer (a binary string or an int)."""
    return value if isinstance(value, int) else int(str(value), 2)


def absorb(netlist: dict, top: str = "top") -> dict:
    """Move the registers after ``DP16KD`` reads into the blocks, in place
    (module docstring); returns ``{"blocks": taken, "registers": removed,
    "left": {reason: blocks}}`` (the blocks with a loaded output left as
    they are, by the first reason found)."""
    mod = netlist["modules"][top]
    cells = mod["cells"]
    loads = _loads(mod)
    taken, removed = 0, 0
    left = defaultdict(int)
    for cell in [c for c in cells.values() if c["type"] == "DP16KD"]:
        prm, con = cell["parameters"], cell["connections"]
        clock = con.get("CLKB")
        moves, used, why = [], set(), None
        for port in "AB":
            for i in range(18):
                for b in con.get(f"DO{port}{i}", []):
                    ls = loads.get(b, []) if isinstance(b, int) else []
                    if not ls:
                        continue
                    used.add(port)
                    if len(ls) != 1 or cells.get(ls[0][0], {}).get("type") != "TRELLIS_FF" \
                            or ls[0][1] != "DI":
                        why = why or "an output feeds logic"
                    elif not _plain_register(cells[ls[0][0]], clock):
                        why = why or "not a plain register"
                    else:
                        moves.append((f"DO{port}{i}", ls[0][0]))
        if not used:
            continue
        if why is None and any(prm.get(f"REGMODE_{p}", "NOREG") != "NOREG" for p in "AB"):
            why = "already registered"
        # a 36-bit read (pseudo dual port) leaves on both ports' pins: both
        # registers, as Lattice's tools set them; else the read port's
        wide = _width(prm.get("DATA_WIDTH_B", 18)) == 36
        regs = "AB" if wide else "B"
        if why is None and "A" in used and not wide:
            why = "port A reads"   # a true dual-port read on A: its own clock enable
        if why is None and any(con.get(f"RST{p}", _ZERO) != _ZERO for p in regs):
            why = "a read reset"
        if why is None and wide and con.get("CLKA") != clock:
            why = "two clocks"
        if why is not None:
            left[why] += 1
            continue
        for pin, ff in moves:
            con[pin] = cells.pop(ff)["connections"]["Q"]
        for port in regs:
            prm[f"REGMODE_{port}"] = "OUTREG"
            con[f"OCE{port}"] = list(_ONE)
        taken += 1
        removed += len(moves)
    return {"blocks": taken, "registers": removed, "left": dict(left)}


def main(argv: list[str] | None = None) -> int:
    """``python -m spikeforge.boards.outreg NETLIST.json [STATS.json]``: rewrite
    the netlist in place, write the counts."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m spikeforge.boards.outreg NETLIST.json [STATS.json]",
              file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        netlist = json.loads(path.read_text())
        stats = absorb(netlist)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {path}: not a Yosys JSON netlist with a top module ({e})",
              file=sys.stderr)
        return 1
    path.write_text(json.dumps(netlist))
    if len(args) == 2:
        Path(args[1]).write_text(json.dumps(stats, indent=1) + "\n")
    print(f"block-RAM output registers: {stats['registers']} flip-flops into "
          f"{stats['blocks']} blocks; left: {stats['left'] or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
