"""Where a routed ECP5 / iCE40 build misses a clock period: every endpoint,
not only nextpnr's one critical path.

nextpnr reports the single worst path of each clock; a build that misses
its target by 25 % has hundreds of endpoints past the period, and the next
placement moves the worst one elsewhere.  This script reads the routed
design's delays from the SDF file nextpnr writes (``spikeforge build RUN
--board B --sdf`` leaves it in ``RUN/build/B/top.sdf``), runs a static
timing analysis of its own over them (the latest arrival at every pin:
clock-to-output of each flip-flop and block RAM, the cells' input-to-output
delays, the routed nets' delays, the setup checks; maximum delays, one
clock, no clock skew, as nextpnr's own report of these builds), prints its
worst path beside the Fmax nextpnr reported (``top.report.json`` beside it;
flagged where they differ), and the endpoints that miss ``--mhz``:

- by the module of the endpoint (``--depth`` levels of the instance name),
  with the worst slack and the module its worst path starts from;
- by the kind of the worst path's start (a block RAM's output, a flip-flop,
  a LUT RAM) and of its end (a block RAM's input, a flip-flop);
- by the longest route on the worst path (the modules of its driver and
  its sink, and the driver's fan-out), worst first;
- the ``--paths`` worst endpoints, each path's logic and routing delay.

Usage: ``python benchmarks/slack_report.py RUN/build/ulx3s [--mhz 100]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

_TRIPLE = r"\((-?[\d.]*):(-?[\d.]*):(-?[\d.]*)\)"
_IOPATH = re.compile(r"\(IOPATH (?:\((?:pos|neg)edge )?(\S+?)\)? (\S+) " + _TRIPLE)
_INTER = re.compile(r"\(INTERCONNECT (\S+) (\S+) " + _TRIPLE)
_SETUP = re.compile(r"\(SETUPHOLD \((?:pos|neg)edge (\S+)\) \((?:pos|neg)edge (\S+)\) " + _TRIPLE)
_CELLTYPE = re.compile(r'\(CELLTYPE "([^"]*)"\)')
_INSTANCE = re.compile(r"\(INSTANCE ?(.*)\)")
_TIMESCALE = re.compile(r"\(TIMESCALE (\d+)\s*(ps|ns)\)")


def _unescape(name: str) -> str:
    return re.sub(r"\\(.)", r"\1", name)


def _split_pin(ref: str) -> tuple[str, str]:
    """``inst/PIN`` (the instance name's own characters escaped)."""
    i = len(ref) - 1
    while i >= 0:
        if ref[i] == "/" and (i == 0 or ref[i - 1] != "\\"):
            break
        i -= 1
    return _unescape(ref[:i]), ref[i + 1:]


def _max(groups: tuple) -> float:
    vals = [float(g) for g in groups if g not in ("", None)]
    return max(vals) if vals else 0.0


class Timing:
    """The routed design's timing graph, from nextpnr's SDF."""

    def __init__(self, sdf: Path):
        self.cell_type: dict[str, str] = {}
        self.launch: dict[tuple, float] = {}           # (inst, pin): clock to output
        self.edges: dict[tuple, list] = defaultdict(list)  # node -> [(node, delay, kind)]
        self.setup: dict[tuple, float] = {}            # endpoint -> setup time
        scale = 1.0
        cell_type, inst = None, None
        clocked: list[tuple] = []                      # (inst, in pin, out pin, delay)
        clocks: set[tuple] = set()                     # (inst, pin) used as a clock reference
        depth = 0                                      # open parentheses
        with open(sdf, "rb") as f:   # (a file nextpnr is still writing: cut mid-line)
            f.seek(max(0, f.seek(0, 2) - 64))
            if not f.read().rstrip().endswith(b")"):
                raise ValueError("it does not end with ')': cut short, or still being written")
        with open(sdf) as f:
            for line in f:
                depth += line.count("(") - line.count(")")
                s = line.strip()
                if s.startswith("(INTERCONNECT"):
                    m = _INTER.match(s)
                    a, b = _split_pin(m.group(1)), _split_pin(m.group(2))
                    self.edges[a].append((b, _max(m.groups()[2:5]) * scale, "route"))
                elif s.startswith("(IOPATH"):
                    m = _IOPATH.match(s)
                    clocked.append((inst, m.group(1), m.group(2), _max(m.groups()[2:5]) * scale))
                elif s.startswith("(SETUPHOLD"):
                    m = _SETUP.match(s)
                    pin, ref = m.group(1), m.group(2)
                    node = (inst, pin)
                    self.setup[node] = max(self.setup.get(node, 0.0),
                                           _max(m.groups()[2:5]) * scale)
                    clocks.add((inst, ref))
                elif s.startswith("(CELLTYPE"):
                    cell_type = _CELLTYPE.match(s).group(1)
                elif s.startswith("(INSTANCE"):
                    inst = _unescape(_INSTANCE.match(s).group(1).strip())
                    self.cell_type[inst] = cell_type
                elif s.startswith("(TIMESCALE"):
                    m = _TIMESCALE.match(s)
                    scale = int(m.group(1)) * (1e-3 if m.group(2) == "ps" else 1.0)  # to ns
        if depth != 0:   # (a file nextpnr is still writing reads as a smaller design)
            raise ValueError(f"it ends with {depth} parentheses open: cut short, or still "
                             "being written")
        for inst, a, b, d in clocked:
            if (inst, a) in clocks or a.startswith("CLK") and self.cell_type[inst] != "DCCA":
                self.launch[(inst, b)] = max(self.launch.get((inst, b), 0.0), d)
            else:
                self.edges[(inst, a)].append(((inst, b), d, "logic"))

    def arrivals(self):
        """The latest arrival at every node reached from a launch, and the
        node (and kind of delay) it came through."""
        indeg = Counter()
        for u, outs in self.edges.items():
            for v, _, _ in outs:
                indeg[v] += 1
        arrival = {n: d for n, d in self.launch.items()}
        prev: dict[tuple, tuple] = {}
        ready = [n for n in set(self.edges) | set(self.launch) if indeg[n] == 0]
        seen = 0
        while ready:
            u = ready.pop()
            seen += 1
            au = arrival.get(u)
            for v, d, kind in self.edges.get(u, ()):
                if au is not None and (v not in arrival or au + d > arrival[v]):
                    arrival[v] = au + d
                    prev[v] = (u, kind, d)
                indeg[v] -= 1
                if indeg[v] == 0:
                    ready.append(v)
        return arrival, prev, seen

    def path(self, prev, node) -> list:
        """The worst path into ``node``: [(node, kind, delay)] from its launch."""
        out = []
        while node in prev:
            u, kind, d = prev[node]
            out.append((node, kind, d))
            node = u
        out.append((node, "clock-to-q", self.launch.get(node, 0.0)))
        return out[::-1]


def module_of(inst: str, depth: int) -> str:
    """The first ``depth`` levels of the hierarchy of a cell's name (its last
    part is the cell's own name, after its net)."""
    return ".".join(inst.split(".")[:-1][:depth]) or inst


def start_kind(t: Timing, node) -> str:
    ct = t.cell_type.get(node[0], "?")
    return {"DP16KD": "block RAM output", "TRELLIS_FF": "flip-flop",
            "TRELLIS_RAMW": "LUT RAM", "TRELLIS_COMB": "LUT RAM"}.get(ct, ct)


def end_kind(t: Timing, node) -> str:
    ct = t.cell_type.get(node[0], "?")
    if ct == "DP16KD":
        pin = node[1]
        return ("block RAM address" if pin.startswith("AD") else
                "block RAM data" if pin.startswith("DI") else "block RAM control")
    return {"TRELLIS_FF": "flip-flop", "TRELLIS_COMB": "LUT RAM write"}.get(ct, ct)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=Path, help="a build folder holding top.sdf (and "
                    "top.report.json)")
    ap.add_argument("--mhz", type=float, default=100.0, help="the clock to check (default 100)")
    ap.add_argument("--depth", type=int, default=4, help="levels of the module names")
    ap.add_argument("--paths", type=int, default=5, help="worst paths to print")
    args = ap.parse_args(argv)
    sdf = args.build / "top.sdf"
    if not sdf.is_file():
        print(f"error: {sdf} does not exist (`spikeforge build RUN --board B --sdf` "
              "writes it)", file=sys.stderr)
        return 2
    try:
        t = Timing(sdf)
    except (AttributeError, KeyError, ValueError) as e:   # a line the patterns do not read
        print(f"error: {sdf}: not an SDF file as nextpnr writes them ({e})", file=sys.stderr)
        return 2
    arrival, prev, seen = t.arrivals()
    nodes = len(set(t.edges) | {v for outs in t.edges.values() for v, _, _ in outs}
                | set(t.launch))
    if seen < nodes:   # a combinational loop: the nodes after it are not timed
        print(f"warning: {nodes - seen:,} pins lie on or after a combinational loop and "
              "are not timed", file=sys.stderr)
    period = 1000.0 / args.mhz
    slack = {n: period - (arrival[n] + s) for n, s in t.setup.items() if n in arrival}
    if not slack:
        print(f"error: {sdf}: no timed endpoint (no clocked cell launches a path"
              + (", or every path runs through a loop)" if seen < nodes else ")"),
              file=sys.stderr)
        return 2
    worst = min(slack, key=slack.get)
    worst_delay = period - slack[worst]
    print(f"{len(t.cell_type):,} cells, {len(slack):,} timed endpoints "
          f"({len(t.setup) - len(slack):,} with a setup check reached by no path), "
          f"{len(arrival):,} pins reached")
    rep = args.build / "top.report.json"
    fmax = None
    if not rep.is_file():
        print(f"warning: no {rep}: the worst path is not compared with nextpnr's Fmax",
              file=sys.stderr)
    else:   # one clock: the slowest nextpnr reports
        try:
            fmax = min(c["achieved"] for c in json.loads(rep.read_text())["fmax"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            print(f"warning: {rep}: no Fmax read from it", file=sys.stderr)
    ours = 1000 / worst_delay
    print(f"worst path {worst_delay:.3f} ns = {ours:.2f} MHz" + (
        "" if fmax is None else f"; nextpnr's report: {fmax:.2f} MHz" + (
            "" if abs(ours - fmax) <= 0.02 else
            "  (they differ: these figures are not nextpnr's)")))
    failing = sorted((s, n) for n, s in slack.items() if s < 0)
    print(f"\nendpoints missing {args.mhz:g} MHz ({period:.2f} ns): {len(failing):,} "
          f"of {len(slack):,}")
    for lim in (-0.5, -1.0, -2.0, -3.0):
        print(f"  slack below {lim:+.1f} ns: {sum(1 for s, _ in failing if s < lim):,}")
    by_mod: dict[str, list] = defaultdict(list)
    by_route: dict[tuple, list] = defaultdict(list)
    kinds = Counter()
    cells, routes, long4 = [], [], 0
    for s, n in failing:
        p = t.path(prev, n)
        start = p[0][0]
        by_mod[module_of(n[0], args.depth)].append((s, module_of(start[0], args.depth)))
        kinds[(start_kind(t, start), end_kind(t, n))] += 1
        hops = [(d, p[i - 1][0], node) for i, (node, kind, d) in enumerate(p) if kind == "route"]
        d, drv, snk = max(hops) if hops else (0.0, start, n)
        long4 += d > 4.0
        cells.append(sum(x for _, k, x in p if k != "route") + t.setup[n])
        routes.append(sum(x for _, k, x in p if k == "route"))
        by_route[(module_of(drv[0], args.depth + 1), module_of(snk[0], args.depth + 1))].append(
            (s, d, len(t.edges.get(drv, ()))))
    if failing:
        mid = len(failing) // 2
        print(f"  their paths: median {sorted(cells)[mid]:.2f} ns in cells, "
              f"{sorted(routes)[mid]:.2f} ns of routing; {long4:,} with one route over 4 ns")
    print("\n| endpoint module | missing | worst slack (ns) | its path starts in |")
    print("|---|---|---|---|")
    for mod, items in sorted(by_mod.items(), key=lambda kv: -len(kv[1])):
        s, src = min(items)
        print(f"| {mod} | {len(items)} | {s:+.2f} | {src} |")
    print("\n| path start | path end | missing |")
    print("|---|---|---|")
    for (a, b), c in kinds.most_common():
        print(f"| {a} | {b} | {c} |")
    print("\n| longest route from | to | missing | worst slack (ns) | that route (ns) | "
          "its fan-out |")
    print("|---|---|---|---|---|---|")
    for (a, b), items in sorted(by_route.items(), key=lambda kv: min(kv[1])):
        s, d, fan = min(items)
        print(f"| {a} | {b} | {len(items)} | {s:+.2f} | {d:.2f} | {fan} |")
    for s, n in failing[:args.paths]:
        p = t.path(prev, n)
        logic = sum(d for _, k, d in p if k != "route")
        route = sum(d for _, k, d in p if k == "route")
        print(f"\n{s:+.2f} ns slack: {p[0][0][0]}/{p[0][0][1]} -> {n[0]}/{n[1]} "
              f"({logic:.2f} ns cells, {route:.2f} ns routing, {len(p)} steps)")
        for node, kind, d in p:
            if d >= 1.0:
                print(f"    {kind:10s} {d:5.2f}  {node[0]}/{node[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
