"""A cycle model of the engine, from the golden model's spike traces.

It predicts, without elaborating or simulating any RTL, what the layer
cores' counters will say for a network, its inputs and lane counts ``P``:
per layer the in-bounds read-modify-writes (``updates``) and the scan
cycles, the end-to-end cycles of an image alone, and the interval between
images fed back to back (the trace's images scheduled one after another,
the layers coupled step by step; at least the busiest layer's own total).  It is checked
against Verilator's counters (``benchmarks/bench_engine.py`` prints both side by side) and is
half of what the planner (:mod:`spikeforge.hw.plan`) optimises, with the
cost model (:mod:`spikeforge.hw.cost`).

What it models (see :mod:`spikeforge.hw.layer`):

* synapse unit: one kernel tap of one channel group per cycle, out-of-bounds
  taps included (``events * k*k * G``; ``updates`` counts the in-bounds ones),
  or ``ceil(k*k / units)`` taps a cycle per unit when a layer splits them,
  where an event is a word of ``Q`` channels at one position for a layer that
  takes words and one non-zero input value (its bit planes) at layer 0;
* neuron scan: one position of one group per cycle (``G * Hc * Wc``), never
  faster than the spikes it sends (one a cycle) plus a few cycles of pipeline;
* current memories: two (the scan of step ``t`` overlaps the synapse phase of
  ``t + 1``), or one (``banks``: the next step waits for the scan); layer 0
  accumulates a held frame once and scans it ``T`` times;
* an fc layer whose weights stream from the SDRAM (``sdram``): ``G * k``
  SDRAM words an event (``k`` a weight word,
  :func:`~spikeforge.hw.weightstream.sdram_words`) at one a cycle, and
  :data:`SDRAM_ROW_CYCLES` for each row opened: an event whose words are in
  another row than the last event's, in the order the previous layer's
  scan sends them (:func:`_sdram_rows`);
* STCB networks: a layer's CAB takes its whole input train, then its ``T``
  STEB passes run; images one at a time (the interval is the latency, the
  clear pass and a restart);
* dataflow: a step's synapse phase ends no earlier than its input's last
  event arrives (the producer's scan end); a scan is slowed by a consumer
  that takes its spikes more slowly (the FIFO between them holds
  ``fifo_depth`` events), which is approximated by making a scan end no
  earlier than the consumer's synapse phase for that step, less the
  FIFO's slack (its depth x the consumer's cycles per event); the order of
  the spikes within a step (bursts) is not modelled.

It is a model: its error against the RTL is measured, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from spikeforge.config import LayerKind
from spikeforge.sw import golden

from .network import core_params, input_events, lane_counts
from .neuron import QUEUE_DEPTH
from .streams import EVENT_FIFO_DEPTH

__all__ = ["LayerTrace", "traces", "predict"]

#: fixed costs (cycles), read off the RTL: decoder + walker + update stages
#: before a marker is seen, the scan pipeline and marker, hand-over
SYN_FILL = 5
#: cycles a layer streaming its weights from the SDRAM loses to each row it
#: opens (PRECHARGE, tRP, ACTIVE, tRCD, the CAS latency before the row's
#: first word, and the refreshes, one every 375 cycles at 50 MHz):
#: ``benchmarks/bench_sdram.py`` measured 4.8 to 6.9 cycles an event beyond
#: its words over 32 to 128 words an event, with 1.17 rows opened an event
SDRAM_ROW_CYCLES = 5
SCAN_FILL = 7


def scan_fill(cp) -> int:
    """The scan's fixed cycles in core ``cp``: :data:`SCAN_FILL`, and a cycle
    more for each of a wide core's registered reads and writes
    (``CoreParams.read_stage``, ``write_stage``)."""
    return SCAN_FILL + cp.read_stage + cp.write_stage


@dataclass(frozen=True)
class LayerTrace:
    """Input of one layer for one image: per input step the events' channels,
    rows and columns (layer 0: its input beats; otherwise the previous layer's
    spikes, which a word-taking layer receives grouped by position), and the
    number of output spikes per step."""

    inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per step: (c, y, x)
    spikes_out: list[int]  # per step: output spikes (after pooling)
    # events(Q) computed once per Q (the planner predicts many lane choices)
    _events: dict = field(default_factory=dict, compare=False, repr=False)

    def events(self, Q: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per step, ``(y, x)`` of the events when ``Q`` channels make a word."""
        if Q in self._events:
            return self._events[Q]
        out = self._events[Q] = []
        for c, y, x in self.inputs:
            if Q > 1 and c.numel():
                key = torch.unique(torch.stack([c // Q, y, x]), dim=1)
                y, x = key[1], key[2]
            out.append((y, x))
        return out


def _sdram_rows(cp, prev_lanes: int, inputs) -> list[int]:
    """Per step, the SDRAM rows a streamed fc layer (core ``cp``) opens for
    its input events ``inputs`` (``(c, y, x)`` per step): its weight words
    are ``G * k`` SDRAM words an input neuron, in order
    (:mod:`~spikeforge.hw.weightstream`); the events come in the order the
    previous layer's scan sends them (by lane group, position, lane;
    ``prev_lanes`` 0: as given, layer 0's input).  A row is opened for the
    first event, for an event whose first word is in another row than the
    last event's last word, and where an event's words cross into the next
    row."""
    from .sdram import ULX3S_SDRAM as g
    from .weightstream import sdram_words
    _, hp, wp = cp.in_shape
    per = cp.groups * sdram_words(cp, g)
    out = []
    for c, y, x in inputs:
        if not c.numel():
            out.append(0)
            continue
        flat = (c * hp + y) * wp + x
        if prev_lanes:
            flat = flat[torch.argsort(((c // prev_lanes * hp + y) * wp + x) * prev_lanes
                                      + c % prev_lanes)]
        # bank and row (one open at a time) of each event's first and last word
        first, last = (flat * per) >> g.col_bits, ((flat + 1) * per - 1) >> g.col_bits
        out.append(1 + int((first[1:] != last[:-1]).sum()) + int((first != last).sum()))
    return out


def _in_bounds_taps(spec, ys: torch.Tensor, xs: torch.Tensor) -> int:
    """Sum over events at rows ``ys``, columns ``xs`` of the kernel taps that
    land inside the conv output (fc: every event one tap)."""
    if spec.kind is LayerKind.FC:
        return int(ys.numel())
    hc, wc = spec.conv_size
    k, pad = spec.kernel, spec.padding
    d = torch.arange(k)
    oy = ys[:, None] + pad - d[None, :]
    ox = xs[:, None] + pad - d[None, :]
    ny = ((oy >= 0) & (oy < hc)).sum(1)
    nx = ((ox >= 0) & (ox < wc)).sum(1)
    return int((ny * nx).sum())


def traces(net, x: torch.Tensor) -> list[list[LayerTrace]]:
    """Per image of uint8 frames ``x`` ``[N, F, C, H, W]``, per layer, the work
    the engine sees (from :func:`~spikeforge.hw.network.input_events` and the
    golden model's spikes)."""
    spec = net.spec
    res = golden.run(net, x)
    T = spec.timesteps
    out = []
    for i in range(x.shape[0]):
        beats = input_events(net, x[i])
        steps: list[list] = [[]]
        for b in beats:
            if b.last:
                steps.append([])
            else:
                steps[-1].append(b)
        steps = steps[:-1]
        layers = []
        ev = [tuple(torch.tensor([getattr(b, f) for b in s], dtype=torch.int64)
                    for f in ("channel", "y", "x")) for s in steps]
        block_in = None
        for n, layer in enumerate(spec.layers):
            spikes = golden.unpack(res.spikes[n][:, i], layer.out_features)  # [T, n]
            if layer.residual:  # the skip: the block input's spikes, channels moved up
                c = layer.in_channels
                ev_in = [(torch.cat([a[0], b[0] + c]), torch.cat([a[1], b[1]]),
                          torch.cat([a[2], b[2]])) for a, b in zip(ev, block_in)]
            else:
                ev_in = ev
            layers.append(LayerTrace(ev_in, [int(s.sum()) for s in spikes]))
            block_in = ev
            # this layer's spikes are the next layer's events
            ho, wo = (1, 1) if layer.kind is LayerKind.FC else layer.out_size
            ev = []
            for t in range(T):
                idx = spikes[t].nonzero().flatten()
                ev.append((idx // (ho * wo), idx // wo % ho, idx % wo))
        out.append(layers)
    return out


def _schedule(cps, T: int, taps: list, spikes: list, fifo: int,
              per_event: list | None = None) -> list[list[float]]:
    """Scan ends per layer and global step for images fed back to back
    (``taps[i][n]``: image ``i``'s synapse cycles per input step of layer
    ``n``, one group; ``spikes[i][n]``: its output spikes per step): image
    ``i``'s step ``t`` is global step ``i * T + t``, each layer going from one
    image to the next as from one step to the next.  ``per_event``: a
    layer's cycles an input event and group where they are not its ``k*k``
    taps (weights streamed from the SDRAM)."""
    L, S = len(cps), len(taps) * T
    syn_end = [[0.0] * S for _ in range(L)]
    scan_end = [[0.0] * S for _ in range(L)]
    scan_start = [[0.0] * S for _ in range(L)]
    # one pass, step by step and layer by layer: a layer's step waits on its
    # own earlier steps and on its producer's scan of the same step, and the
    # producer's scan of a step is held by this layer's pace on it (the
    # back-pressure), which is known once this layer's start is
    for g in range(S):
        i, t = divmod(g, T)
        for n, cp in enumerate(cps):
            G, B = cp.groups, cp.cur_banks
            tp = taps[i][n]
            if n == 0 and len(tp) == 1:               # a held frame: accumulated once
                if t:
                    syn = syn_end[n][g - t]
                else:  # after the last frame, into a free current memory
                    start = syn_end[n][g - 1] if g else 0.0
                    free = g - (B - 1) * T - 1        # the last scan of image i - B
                    if free >= 0:
                        start = max(start, scan_end[n][free])
                    syn = start + tp[0] * G + SYN_FILL
            else:
                start = syn_end[n][g - 1] if g else 0.0
                if g >= B:                            # a free current memory
                    start = max(start, scan_end[n][g - B])
                if n:   # no earlier than the producer's scan sends the step's spikes
                    start = max(start, scan_start[n - 1][g])
                    # the producer's scan ends no earlier than this layer's
                    # work on it, less the events held between them: the
                    # FIFO, the producer's spike queue, its output register
                    # and the event this layer's synapse unit walks
                    each = cp.k ** 2 if per_event is None else per_event[n]
                    held = fifo + QUEUE_DEPTH + 2
                    scan_end[n - 1][g] = max(scan_end[n - 1][g], start + tp[t] * G
                                             + SYN_FILL - held * each * G)
                arrive = scan_end[n - 1][g] if n else 0.0
                syn = max(start + tp[t] * G, arrive) + SYN_FILL
            syn_end[n][g] = syn
            s0 = scan_start[n][g] = max(syn, scan_end[n][g - 1] if g else 0.0)
            scan_end[n][g] = s0 + max(cp.acc_depth, spikes[i][n][t]) + scan_fill(cp)
    return scan_end


#: cycles between an STCB image's result and the next image's first event
#: besides the clear pass: ``start``, its register, the ``clearing``
#: register, the Verilator harness's own steps (measured: 124 with a clear
#: pass of 112 words)
STCB_RESTART = 12


def _stcb_latency(cps, taps: list, spikes: list) -> float:
    """Cycles of one image through an STCB network (``taps[n]``: layer
    ``n``'s synapse cycles per input step, one group; ``spikes[n]``: its
    output spikes per STEB pass): a layer's CAB takes its whole input train
    before its ``T`` STEB passes, so its accumulation overlaps the previous
    layer's passes (whose spikes it takes as they come) and its own passes
    follow them."""
    syn_end = scan_end = 0.0
    for n, cp in enumerate(cps):
        work = sum(taps[n]) * cp.groups + SYN_FILL
        syn_end = max(scan_end, syn_end + work) if n else work
        scan_end = syn_end + sum(max(cp.acc_depth, s) + scan_fill(cp) for s in spikes[n])
    return scan_end


def predict(net, P, work: list[list[LayerTrace]], fifo_depth: int = EVENT_FIFO_DEPTH,
            words: list[int] | None = None, sdram=(), banks=None) -> dict:
    """Predicted per-layer counters (means over the images of ``work``), the
    end-to-end cycles of an image alone and the interval between image
    completions when the images of ``work`` are fed back to back, for lanes
    ``P``, ``words`` and ``banks`` (:func:`~spikeforge.hw.network.core_params`),
    event FIFOs of ``fifo_depth`` between the layers and the weights of the
    layers in ``sdram`` streamed from the SDRAM (its power-up is over before
    the first image: :class:`~spikeforge.hw.network.NetworkTop`'s
    ``clearing``)."""
    from .sdram import ULX3S_SDRAM
    from .weightstream import sdram_words
    cps = core_params(net, lane_counts(net, P), words=words, banks=banks)
    T = net.spec.timesteps
    # synapse cycles an input event and channel group (a streamed layer: its
    # SDRAM words; the rows it opens are added per step below)
    per_event = [sdram_words(cp, ULX3S_SDRAM) if n in sdram else cp.walk_taps
                 for n, cp in enumerate(cps)]
    slack = [per_event[n] if n in sdram else cp.k ** 2 for n, cp in enumerate(cps)]
    L = len(cps)
    # the readout: a register, then the argmax's (scores, one per tree level)
    readout = 2 + 1 + (net.spec.classes - 1).bit_length()
    e2e, per, occupancy = [], [[0.0, 0.0] for _ in range(L)], [0.0] * L
    all_taps, all_spikes = [], []
    for img in work:
        evs = [img[n].events(cp.word_channels) for n, cp in enumerate(cps)]
        # cycles: every tap of every event (out-of-bounds ones too) per group,
        # the longest synapse unit's share when the taps are split
        taps = [[y.numel() * pe for y, _ in ev] for ev, pe in zip(evs, per_event)]
        for n in sdram:
            rows = _sdram_rows(cps[n], cps[n - 1].P if n else 0, img[n].inputs)
            taps[n] = [tp + r * SDRAM_ROW_CYCLES / cps[n].groups for tp, r in zip(taps[n], rows)]
        upd = [sum(_in_bounds_taps(net.spec.layers[n], y, x) for y, x in ev) * cp.groups
               for n, (ev, cp) in enumerate(zip(evs, cps))]
        spikes = [img[n].spikes_out for n in range(L)]
        all_taps.append(taps)
        all_spikes.append(spikes)
        e2e.append((_stcb_latency(cps, taps, spikes) if cps[0].stcb
                    else _schedule(cps, T, [taps], [spikes], fifo_depth, slack)[-1][-1])
                   + readout)
        for n, cp in enumerate(cps):
            per[n][0] += upd[n]
            per[n][1] += T * (cp.acc_depth + scan_fill(cp))
            # each layer's own share alone: with two current memories its
            # synapse phases and scans overlap, each side busy for its own total
            syn = sum(taps[n]) * cp.groups + SYN_FILL * len(taps[n])
            scan = sum(max(cp.acc_depth, s) + scan_fill(cp) for s in img[n].spikes_out)
            occupancy[n] += max(syn, scan) if cp.cur_banks > 1 else syn + scan
    k = len(work)
    interval = max(occupancy) / k   # no faster than the busiest layer alone
    if cps[0].stcb:
        # an STCB network takes one image at a time: its latency, then
        # ``start`` and the clear pass of the deepest accumulator
        interval = max(interval, sum(e2e) / k + max(cp.acc_depth for cp in cps) + STCB_RESTART)
    elif k > 1:
        # streaming: the mean time between completions after the first, the
        # layers coupled step by step through their FIFOs and current memories
        done = _schedule(cps, T, all_taps, all_spikes, fifo_depth, slack)[-1]
        interval = max(interval, (done[-1] - done[T - 1]) / (k - 1))
    return {
        "cycles_per_inference": sum(e2e) / k,
        "interval_cycles": interval,
        "layers": [{"updates": u / k, "scan": s / k, "lanes": cp.P, "occupancy": o / k}
                   for (u, s), cp, o in zip(per, cps, occupancy)],
    }
