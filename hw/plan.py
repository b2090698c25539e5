"""The planner: lanes per layer for a device, from the cycle and cost models.

A candidate is a lane count ``P`` per layer (powers of two up to the layer's
output channels, the channels themselves, and twice them for a layer that
can split its kernel taps over two synapse units) and, for each conv layer
that takes word events, the channels ``Q`` a word carries (powers of two
dividing the previous layer's lanes, or those lanes: a smaller ``Q`` means a
smaller adder tree and, with sparse spikes, hardly more events).  For each,
the cycle model
(:mod:`~spikeforge.hw.model`, on the spike traces of a few training images)
predicts the interval between images fed back to back and the latency of
one image, and the cost model (:mod:`~spikeforge.hw.cost`) the logic cells,
block RAM (the fit check's count, the board's own memories included), the clock at that
utilisation and the build time.  A candidate *fits* when its block RAM and
its logic are within the shares of the device at which builds were measured
to route (``bram_ceiling``, ``util_ceiling``, a lower logic ceiling when the
block RAM is nearly full: ``full_bram``); among those the planner takes
the most inferences per second, or of the candidates within 1 % of it
(:data:`TIE`: the cycle model's own error is a few %), the one with the
fewest logic cells.

The search climbs from one lane per layer: each step doubles (or, where
that is refused, quadruples) the lanes of the busiest layer (the cycle
model's occupancy) that can take more and still fits; when none can, it
trades (doubles a busy layer and halves a less busy one) if that is faster,
until neither move is left; every point tried is a candidate, and so are
the halvings and doublings of the best one.  For each lane choice the words are
chosen layer by layer (each word layer's best ``Q`` with the others fixed,
starting once from whole lane groups and once from single spikes), "best"
always by the same rule as the plan's pick (:func:`_choose`).
"""

from __future__ import annotations

from spikeforge.image import input_lanes, opens_block, takes_words, word_lanes

from . import cost
from .fit import DEVICES, FitError, storage_options
from .model import predict
from .network import lane_counts, split_capable

__all__ = ["evaluate", "plan", "pareto", "table", "word_options", "PlanError"]


#: the climb's moves: double the busiest layer that can grow; "skip": past a
#: refused doubling, quadruple it; "trade": double a busy layer and halve a
#: less busy one
MOVES = ("double", "skip", "trade")


class PlanError(FitError):
    """No candidate fits, or a hand-given lane count is not a valid plan."""


def _options(net, n: int) -> list[int]:
    """Lane counts of layer ``n``: powers of two below its channels, the
    channels, and twice them where it can split its taps."""
    c_out = net.layers[n].spec.out_channels
    out, p = [], 1
    while p < c_out:
        out.append(p)
        p *= 2
    return out + [c_out] + ([2 * c_out] if split_capable(net, n) else [])


def word_options(net, lanes, n: int) -> list[int]:
    """Channels per word event of layer ``n``: powers of two dividing the
    previous layer's channel lanes, and those lanes (1 for a layer that takes
    single events).  The first layer of a residual block chooses for the
    block's second layer too (:func:`with_words`): a word also divides that
    layer's input lanes and the block's channels."""
    if n == 0 or not takes_words(net, n):
        return [1]
    chans = lambda i: min(lanes[i], net.layers[i].spec.out_channels)
    prev = chans(n - 1)
    out, q = [], 1
    while q < prev and prev % q == 0:
        out.append(q)
        q *= 2
    out.append(prev)
    if opens_block(net, n):
        c = net.layers[n].spec.out_channels
        out = [q for q in out if chans(n) % q == 0 and c % q == 0
               and (q == chans(n) or q & (q - 1) == 0)] or [1]
    return out


def with_words(net, qs: list[int], n: int, q: int) -> list[int]:
    """``qs`` with layer ``n``'s word ``q``, and the residual layer after it
    given the same."""
    qs = qs[:n] + [q] + qs[n + 1:]
    if opens_block(net, n):
        qs[n + 1] = q
    return qs


def evaluate(net, lanes, work, device: str, board=(), words=None, fallback: bool = False,
             sdram_ok: bool = False) -> dict:
    """One candidate: predicted cycles, resources, clock and throughput
    (``words`` None: whole lane groups, single spikes in a residual block:
    :func:`~spikeforge.image.input_lanes`); ``fallback``: where the block
    RAM is short, the fastest of the storage choices of
    :func:`~spikeforge.hw.fit.storage_options` (an fc layer's weights in the
    SDRAM when ``sdram_ok``, one current memory), recorded as ``sdram`` and
    ``banks``."""
    lanes = lane_counts(net, lanes)
    words = input_lanes(net, lanes, words)
    if not fallback:
        return _candidate(net, lanes, work, device, board, words, (), None)
    dev = DEVICES[device]
    limit = cost.load(device).bram_limit(dev.blocks)
    # (one the device's block RAM holds before a faster one it does not: an
    # override's only hard limit)
    return max((_candidate(net, lanes, work, device, board, words, sd, bs)
                for sd, bs in storage_options(net, lanes, device, board, words, sdram_ok,
                                              limit)),
               key=lambda c: (c["fits"], c["bram"] <= dev.blocks, *_key(c)[1:]))


def _candidate(net, lanes, work, device, board, words, sdram, banks) -> dict:
    """:func:`evaluate` of one storage choice."""
    dev = DEVICES[device]
    cm = cost.load(device)
    cyc = predict(net, lanes, work, dev.event_fifo_depth, words, sdram, banks)
    res = cost.estimate(net, lanes, device, board, words, sdram, banks)
    fmax = res["fmax_mhz"]
    why = []
    bram_limit = cm.bram_limit(dev.blocks)
    if res["bram"] > dev.blocks:
        why.append(f"block RAM {res['bram']} > {dev.blocks}")
    elif res["bram"] > bram_limit:
        why.append(f"block RAM {res['bram']} > {bram_limit} "
                   f"({100 * cm.bram_ceiling:.0f} %, routability ceiling)")
    ceiling = cm.util_limit(res["bram"] / dev.blocks)
    if res["util"] > ceiling:
        why.append(f"logic {100 * res['util']:.0f} % > {100 * ceiling:.0f} % "
                   "(routability ceiling" + ("" if ceiling == cm.util_ceiling else
                                             f" with {res['bram']} block RAMs") + ")")
    return {
        "lanes": lanes,
        "words": words,
        "sdram": list(sdram),
        "banks": banks,
        "interval_cycles": cyc["interval_cycles"],
        "occupancy": [L["occupancy"] for L in cyc["layers"]],
        "latency_cycles": cyc["cycles_per_inference"],
        "fmax_mhz": fmax,
        "inferences_per_second": fmax * 1e6 / cyc["interval_cycles"],
        "latency_us": cyc["cycles_per_inference"] / fmax,
        **{k: res[k] for k in cost.RESOURCES[cm.family]},
        "cells": res["cells"], "util": res["util"], "bram": res["bram"], "spram": res["spram"],
        "build_seconds": res["build_seconds"],
        "fits": not why, "why_not": "; ".join(why),
    }


def _key(c: dict):
    return (c["fits"], c["inferences_per_second"], -c["cells"])


# candidates this close to the fastest count as tied, and the one with the
# fewest logic cells is chosen: the cycle model is a few % off the RTL, so a
# 0.04 % faster point (16, 32, 8, 4 against 16, 32, 8, 1 for the default
# network) is not worth 1,000 more cells and their routing
TIE = 0.01


def _choose(candidates) -> dict:
    """The plan's pick: the fastest (:func:`_key`), or of those within
    :data:`TIE` of it (and fitting as it does), the one with fewest cells."""
    top = max(candidates, key=_key)
    floor = (1 - TIE) * top["inferences_per_second"]
    near = [c for c in candidates
            if c["fits"] == top["fits"] and c["inferences_per_second"] >= floor]
    return min(near, key=lambda c: (c["cells"], -c["inferences_per_second"]))


def plan(net, work, device: str, board=(), lanes=None, words=None, moves=MOVES,
         sdram: bool = False) -> dict:
    """The plan for ``net`` on ``device``: ``{"device", "lanes", "words",
    "sdram", "banks", "fifo_depth", "chosen", "override", "candidates"}``.
    ``lanes`` given:
    that candidate (with ``words``, or the best words for those lanes) is
    validated (a :class:`PlanError` when its memories do not fit) and
    recorded as an override beside the planner's own best (which is the
    override itself, with its warning, when no candidate is inside the
    routability ceilings: they are measured, not hard limits; the device's
    block RAM is).  ``moves``: the climb's moves (:data:`MOVES`; fewer for
    comparing searches).  When no candidate fits with every memory in block
    RAM, the search runs again with the storage choices of
    :func:`~spikeforge.hw.fit.storage_options` for each (``sdram``: the
    board has an SDRAM for an fc layer's weights; one current memory a
    layer), so a network that fits as it is is planned as it always was.
    An override is taken as it is when the device's block RAM holds it,
    else with those choices."""
    if device not in DEVICES:
        raise PlanError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    if lanes is not None:
        lanes = lane_counts(net, lanes)   # a bad lane count is refused before the search
        if words is not None:
            words = word_lanes(net, lanes, words)
    elif words is not None:
        raise PlanError("words are given with the lanes they split (--lanes)")
    passes = {}
    for fallback in (False, True):
        passes[fallback] = _search(net, work, device, board, lanes, words, moves, fallback,
                                   sdram)
        if passes[fallback][2]["fits"]:
            break
    seen, best, chosen, _ = passes[fallback]
    mine = passes[False][3]
    if mine is not None and mine["bram"] > DEVICES[device].blocks:
        if True not in passes:
            passes[True] = _search(net, work, device, board, lanes, words, moves, True, sdram)
        mine = passes[True][3]
    if mine is not None and mine["bram"] > DEVICES[device].blocks:
        # an override: the device's block RAM is its only hard limit
        raise PlanError(f"lanes {mine['lanes']} do not fit {device}: {mine['why_not']}")
    if not chosen["fits"]:
        if mine is None:
            least = min(seen.values(), key=lambda c: (c["bram"], c["cells"]))
            raise PlanError(f"no lane choice fits {device}: one lane per layer needs "
                            f"{best[tuple([1] * len(net.layers))]['why_not']}; of the "
                            f"{len(seen)} tried, the fewest block RAMs ({least['bram']}) are "
                            f"lanes {least['lanes']}'s: {least['why_not']}")
        chosen = mine      # nothing fits the ceilings: the override is the plan, warned
    out = {"device": device, "lanes": chosen["lanes"], "words": chosen["words"],
           "sdram": chosen["sdram"], "banks": chosen["banks"],
           "fifo_depth": DEVICES[device].event_fifo_depth, "chosen": chosen, "override": None,
           "candidates": sorted(seen.values(), key=_key, reverse=True)}
    if mine is not None:
        out.update(lanes=mine["lanes"], words=mine["words"], sdram=mine["sdram"],
                   banks=mine["banks"], override=mine)
    return out


def _search(net, work, device, board, lanes, words, moves, fallback, sdram_ok):
    """One search of :func:`plan`: ``(seen, best, chosen, override)``."""
    outs = [layer.spec.out_channels for layer in net.layers]
    seen: dict[tuple, dict] = {}
    best: dict[tuple, dict] = {}   # per lane choice, its best words

    def one(ps, qs) -> dict:
        t = (tuple(ps), tuple(qs))
        if t not in seen:
            seen[t] = evaluate(net, list(ps), work, device, board, list(qs), fallback,
                               sdram_ok)
        return seen[t]

    def ev(ps) -> dict:
        """The lanes ``ps`` with their best words: each word layer in turn,
        from whole lane groups and from single spikes (the one start can
        miss a fitting choice, the other a faster one)."""
        t = tuple(ps)
        if t not in best:
            ends = []
            for start in (input_lanes(net, list(ps)), input_lanes(net, list(ps), [1] * len(ps))):
                qs = list(start)
                for n in range(1, len(qs)):
                    if net.layers[n].spec.residual:
                        continue    # chosen with the block's first layer
                    qs = _choose([one(ps, with_words(net, qs, n, q))
                                  for q in word_options(net, ps, n)])["words"]
                ends.append(one(ps, qs))
            best[t] = _choose(ends)
        return best[t]

    # the climb: double the lanes of the busiest layer that can take more and
    # still fits (the bottleneck first: doubling another layer cannot shorten
    # the interval), until none can; every point on the way is a candidate
    # (a trade when no doubling fits: see _trade); a point is stood on once
    cur, stood = [1] * len(outs), set()
    while tuple(cur) not in stood:
        stood.add(tuple(cur))
        here = ev(cur)
        order = sorted(range(len(outs)), key=lambda n: -here["occupancy"][n])
        step = None
        for n in order:
            # its next lane count, or the one after where that is refused
            # (block RAM is not monotonic in the lanes: a wider, shallower
            # memory can take fewer blocks, or become LUT RAM)
            trials = (_moved(net, cur, {n: +1}),
                      _moved(net, cur, {n: +2}) if "skip" in moves else None)
            step = next((t for t in trials if t and ev(t)["fits"]), None)
            if step:
                break
        if step is None and "trade" in moves:
            step = _trade(net, cur, here, order, ev)
        if step is None:
            break
        cur = step
    # the neighbours of the fastest point and of the one chosen (a near tie
    # with fewer cells): a halving of either can be leaner still
    for cur in {tuple(max(seen.values(), key=_key)["lanes"]),
                tuple(_choose(seen.values())["lanes"])}:
        for n in range(len(outs)):
            for d in (-1, +1):
                trial = _moved(net, list(cur), {n: d})
                if trial:
                    ev(trial)
    chosen = _choose(seen.values())
    mine = None
    if lanes is not None:
        mine = ev(lanes) if words is None else one(lanes, words)
    return seen, best, chosen, mine


def _moved(net, lanes, moves: dict) -> list | None:
    """``lanes`` with layer ``n`` moved ``moves[n]`` steps along its options
    (None past either end)."""
    out = list(lanes)
    for n, d in moves.items():
        opts = _options(net, n)
        i = opts.index(lanes[n]) + d
        if not 0 <= i < len(opts):
            return None
        out[n] = opts[i]
    return out


def _trade(net, cur, here, order, ev) -> list | None:
    """When no layer's doubling fits: double a busy layer and halve a less
    busy one, the first such trade (the busiest first, each with the least
    busy first) that fits and is faster than ``here``.  Without it the climb
    stops at the first ceiling its bottleneck's doubling crosses, although
    the lanes of a less busy layer would pay for it (the network trained
    with rate penalty 0.005 under ceilings of 168 blocks and 50 % of the
    logic: 4,32,4,1 at 9,480 inferences/s by doublings, 16,16,8,2 at 16,752
    with trades; ``benchmarks/bench_plan_search.py``)."""
    for n in order:
        for m in reversed(order):
            trial = _moved(net, cur, {n: +1, m: -1}) if m != n else None
            if trial and ev(trial)["fits"] and _key(ev(trial)) > _key(here):
                return trial
    return None


def storage_name(c: dict) -> str:
    """A candidate's storage in short: ``S2`` layer 2's weights in the SDRAM,
    ``1c0`` layer 0 with one current memory; ``-`` all as usual."""
    parts = [f"S{n}" for n in c.get("sdram") or ()]
    parts += [f"1c{n}" for n, b in enumerate(c.get("banks") or ()) if b == 1]
    return ",".join(parts) or "-"


def pareto(cands: list[dict], cost_key: str = "cells") -> list[dict]:
    """The candidates no other beats on both inferences/s and ``cost_key``."""
    out = []
    for c in sorted(cands, key=lambda c: (c[cost_key], -c["inferences_per_second"])):
        if not out or c["inferences_per_second"] > out[-1]["inferences_per_second"]:
            out.append(c)
    return out


def _name(c: dict) -> tuple:
    return tuple(c["lanes"]), tuple(c.get("words") or ())


def table(p: dict, limit: int = 12) -> str:
    """The candidates as a text table, fastest first (the Pareto points on
    cells marked ``*``), the chosen and the override named below; the words
    column where a candidate's layer takes words of more than one channel."""
    cands = p["candidates"]
    front = {_name(c) for c in pareto([c for c in cands if c["fits"]])}
    wide = any(q != 1 for c in cands for q in (c.get("words") or [])[1:])
    spram = any(c.get("spram") for c in cands)     # the iCE40's, when the weights need it
    stored = any(c.get("sdram") or c.get("banks") for c in cands)
    head = (f"{'lanes':<18} " + (f"{'words':<12} " if wide else "")
            + (f"{'storage':<14} " if stored else "")
            + f"{'interval':>8} {'latency':>8} {'Fmax':>6} {'inf/s':>8} "
            f"{'cells':>7} {'util':>5} {'BRAM':>5} " + (f"{'SPRAM':>5} " if spram else "")
            + f"{'build':>6}  fits")
    rows = [f"plan for {p['device']} ({len(cands)} candidates; interval and latency in "
            "cycles, Fmax in MHz, build in minutes; * = Pareto front on cells"
            + ("; words: input channels per event" if wide else "")
            + ("; storage: S<n> layer n's weights in the SDRAM, 1c<n> layer n with one "
               "current memory" if stored else "") + ")", head]
    shown = cands[:limit] + [c for c in cands[limit:] if _name(c) in front]
    for c in shown:
        rows.append(f"{','.join(map(str, c['lanes'])):<18} "
                    + (f"{','.join(map(str, c.get('words') or [])):<12} " if wide else "")
                    + (f"{storage_name(c):<14} " if stored else "")
                    + f"{c['interval_cycles']:>8.0f} "
                    f"{c['latency_cycles']:>8.0f} {c['fmax_mhz']:>6.1f} "
                    f"{c['inferences_per_second']:>8.0f} {c['cells']:>7} "
                    f"{100 * c['util']:>4.0f}% {c['bram']:>5} "
                    + (f"{c.get('spram', 0):>5} " if spram else "")
                    + f"{c['build_seconds'] / 60:>6.1f}  "
                    + ("yes" if c["fits"] else "no: " + c["why_not"])
                    + (" *" if _name(c) in front else ""))

    def said(c):
        return (f"{c['lanes']}" + (f", words {c['words']}" if wide else "")
                + (f", storage {storage_name(c)}" if stored else ""))
    ch = p["chosen"]
    rows.append(f"chosen: lanes {said(ch)}: {ch['inferences_per_second']:.0f} inferences/s "
                f"at {ch['fmax_mhz']:.1f} MHz (predicted)")
    if p.get("override"):
        o = p["override"]
        rows.append(f"override (--lanes): {said(o)}: {o['inferences_per_second']:.0f} "
                    f"inferences/s" + ("" if o["fits"] else f"; warning: {o['why_not']}"))
    return "\n".join(rows)
