"""Block-RAM fit check, before any synthesis.

:func:`memory_plan` lists the engine's memories for a network and lane counts
(sized exactly as :class:`~spikeforge.hw.layer.LayerCore` builds them);
:func:`check_fit` maps each onto a device's block RAM and refuses, with a
:class:`FitError` naming the memories, layers and bits, a network that needs
more blocks than the device has.

Counting rules:

* A memory of width ``w`` and depth ``d`` takes, in one block configuration
  ``(cw, cd)``, ``ceil(w / cw) * ceil(d / cd)`` blocks; the cheapest
  configuration counts.  The weight memories are built as column slices
  (:mod:`spikeforge.hw.memory`) and counted slice by slice.
* ECP5: EBR of 18 kbit, configurations 16384x1 .. 512x36 (the 36-bit mode is
  the pseudo dual port one, which is what the engine's one-read one-write
  memories need).  Memories of at most ``64`` words are left to LUT RAM by
  Yosys (distributed RAM, not counted here).
* iCE40 UP5K: 30 EBR of 4 kbit (2048x2 .. 256x16); it has no LUT RAM, so every
  memory counts.  Its 4 SPRAM blocks (``SB_SPRAM256KA``, 16 bits x 16,384
  words each) are single-port: no read-modify-write memory can use them, but
  a layer's weights (read by the synapse unit, written only by the host
  between inferences) can (:class:`~spikeforge.hw.memory.SpramMemory`).
  Only when the EBR do not suffice, :func:`spram_layers` moves the largest
  weight memories into them (one synapse unit's, :func:`spram_blocks` blocks
  each) until the rest fits; those weights are not in the bitstream and the
  host loads them (``spikeforge infer`` does).
* A residual layer's skip FIFO (one step of its block input's events,
  :func:`~spikeforge.hw.network.skip_depth`) counts like any memory.
* The event FIFOs in front of the layers (``Device.event_fifo_depth`` - 1
  words: 31 on the ECP5, 7 on the iCE40; with ``fifo_depth``) and the neuron
  units' spike queues count like any memory: on the ECP5 they are LUT RAM
  (no block); on the iCE40 ``synth_ice40`` builds a memory in flip-flops
  when that costs it no more than RAM4K blocks
  (:func:`~spikeforge.hw.memory.ice40_in_ffs`: an event FIFO of 7 x 23 bits,
  a 28 x 28 input's events, takes two blocks, one of 7 x 10 bits none).
  Memories in flip-flops or LUT RAM cost logic: the planner's cost model
  (:mod:`spikeforge.hw.cost`) counts the ECP5's LUT RAM as a feature (small
  weight memories of word-event layers: ``in_lanes * P * W`` bits wide,
  ``k*k*G`` deep); the FIFOs, queues and the iCE40's flip-flop memories only
  through its fitted per-core coefficients.
* A board top adds its own memories (``board``: ``(name, width, depth)``
  each, :func:`spikeforge.boards.build.board_memories`: the host bridge's
  payload buffer, the batch mode's image store), counted by the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from spikeforge.errors import SpikeforgeError

from .memory import (ECP5_CONFIGS, ECP5_LUTRAM_DEPTH, ICE40_CONFIGS, ecp5_in_lutram,
                     geometry_blocks, ice40_in_ffs, slice_widths, spram_blocks)
from .network import core_params, skip_depth
from .neuron import QUEUE_DEPTH, queue_layout
from .steb import QUEUE_DEPTH as STEB_QUEUE_DEPTH
from .streams import EventFormat

__all__ = ["FitError", "Device", "DEVICES", "MemoryUse", "memory_plan", "check_fit",
           "block_count", "device_plan", "plan_blocks", "spram_layers", "spram_use",
           "streamable", "storage_options", "check_storage", "describe_storage"]


class FitError(SpikeforgeError, ValueError):
    """The network's memories do not fit the named device's block RAM."""


@dataclass(frozen=True)
class Device:
    name: str
    blocks: int
    block_bits: int
    configs: tuple[tuple[int, int], ...]  # (width, depth) per block
    lutram_depth: int                     # memories up to this depth may be LUT RAM (0: none)
    logic_cells: int                      # ECP5 TRELLIS_COMB (LUT4s), iCE40 logic cells
    note: str = ""
    # depth of the event FIFOs between layers: in LUT RAM on the ECP5 (a
    # deeper FIFO lets a layer's bursts of spikes queue instead of stalling
    # its scan); on the iCE40 shallow (in flip-flops, or RAM4K for wide
    # events: ice40_in_ffs), where depth costs logic cells or blocks
    event_fifo_depth: int = 8
    spram: int = 0                        # single-port RAMs for weights (iCE40 UP5K: 4)
    ffs_by_cost: bool = False             # small memories in flip-flops (ice40_in_ffs)

    def in_lutram(self, width: int, depth: int) -> bool:
        """Whether synthesis builds a ``width x depth`` memory in LUT RAM
        (ECP5: :func:`~spikeforge.hw.memory.ecp5_in_lutram`; iCE40: never)."""
        return depth <= self.lutram_depth and ecp5_in_lutram(width, depth)

    def blocks_for(self, width: int, depth: int, sliced: bool = False) -> int:
        """Blocks of a ``width x depth`` memory; ``sliced``: built as the
        column slices of :func:`~spikeforge.hw.memory.slice_bits`."""
        if self.in_lutram(width, depth) or (self.ffs_by_cost and ice40_in_ffs(width, depth)):
            return 0
        if sliced:
            return sum(self.blocks_for(w, depth) for w in slice_widths(width, depth))
        return geometry_blocks(width, depth, self.configs)


_ECP5 = ECP5_CONFIGS
DEVICES = {
    "ecp5-85f": Device("ecp5-85f", 208, 18432, _ECP5, ECP5_LUTRAM_DEPTH, 83640,
                       event_fifo_depth=32),
    "ecp5-45f": Device("ecp5-45f", 108, 18432, _ECP5, ECP5_LUTRAM_DEPTH, 43848,
                       event_fifo_depth=32),
    "ecp5-25f": Device("ecp5-25f", 56, 18432, _ECP5, ECP5_LUTRAM_DEPTH, 24288,
                       event_fifo_depth=32),
    "ice40up5k": Device("ice40up5k", 30, 4096, ICE40_CONFIGS, 0, 5280, spram=4,
                        ffs_by_cost=True),
}


@dataclass(frozen=True)
class MemoryUse:
    layer: int      # -1: the board top's
    name: str       # L{n}_weights, L{n}_neurons, L{n}_cur{b}, L{n}_state, L{n}_bank{j},
                    # L{n}_skip; the board's
    width: int
    depth: int
    sliced: bool = False  # built as column slices (hw/memory.py): the weights
    spram: bool = False   # weights in the iCE40's SPRAM (spram_layers), not block RAM
    sdram: bool = False   # weights in the ULX3S's SDRAM (storage), not block RAM

    @property
    def bits(self) -> int:
        return self.width * self.depth


def memory_plan(net, P, board=(), words=None, spram=(), fifo_depth=None, sdram=(),
                banks=None) -> list[MemoryUse]:
    """Every block-RAM candidate of the engine for ``net`` with lanes ``P``
    (and ``words`` and ``banks``, :func:`~spikeforge.hw.network.core_params`), and the
    board top's memories ``board`` (``(name, width, depth)`` each); the
    weights of the layers in ``spram`` marked as SPRAM (:func:`spram_layers`),
    of those in ``sdram`` as SDRAM (:func:`storage_options`);
    with ``fifo_depth``, the event FIFOs of that depth and the spike queues."""
    out = [MemoryUse(-1, name, w, d) for name, w, d in board]
    event_bits = EventFormat.for_network(net).width
    for i, cp in enumerate(core_params(net, P, words=words, banks=banks)):
        if fifo_depth:    # SyncFIFOBuffered: depth - 1 words; the neuron unit's queue
            out += [MemoryUse(i, f"L{i}_fifo", event_bits, fifo_depth - 1),
                    MemoryUse(i, f"L{i}_queue", _queue_bits(cp),
                              STEB_QUEUE_DEPTH if cp.stcb else QUEUE_DEPTH)]
        if net.spec.layers[i].residual:   # its block's skip FIFO (SyncFIFOBuffered: depth - 1)
            out.append(MemoryUse(i, f"L{i}_skip", event_bits, skip_depth(cp) - 1))
        # per synapse unit: the weights of its taps and a copy of each current memory
        sfx = [""] + [f"_{u}" for u in range(1, cp.units)]
        out += [MemoryUse(i, f"L{i}_weights{x}", cp.weight_width,
                          cp.weight_rows(u)[1] - cp.weight_rows(u)[0], sliced=True,
                          spram=i in spram, sdram=i in sdram)
                for u, x in enumerate(sfx)]
        out.append(MemoryUse(i, f"L{i}_neurons", cp.neuron_width, cp.c_out))
        if cp.stcb:
            out += [MemoryUse(i, f"L{i}_bank{j}", cp.acc_width, cp.acc_depth) for j in range(cp.P)]
        else:
            lanes = cp.P * cp.R
            out += [MemoryUse(i, f"L{i}_cur{b}{x}", lanes * cp.cur_width, cp.acc_depth)
                    for b in range(cp.cur_banks) for x in sfx]
            out.append(MemoryUse(i, f"L{i}_state", lanes * cp.state_width, cp.acc_depth))
    return out


def _queue_bits(cp) -> int:
    """The bits of a spike-queue entry (:func:`~spikeforge.hw.neuron.queue_layout`)
    that can be non-zero, which is what Yosys keeps (an fc layer's window
    coordinates are constant)."""
    ho, wo = cp.out_size
    count = queue_layout(cp).members.get("n")     # the words with a spike, when counted
    return (cp.P + sum((v - 1).bit_length() for v in (cp.groups * cp.P, ho, wo))
            + (count.width if count is not None else 0))


def _device(device: str) -> Device:
    if device not in DEVICES:
        raise FitError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    return DEVICES[device]


def _blocks(dev: Device, mu: MemoryUse) -> int:
    return 0 if mu.spram or mu.sdram else dev.blocks_for(mu.width, mu.depth, mu.sliced)


def spram_layers(net, P, device: str, board=(), words=None) -> tuple[int, ...]:
    """The layers whose weights the engine keeps in ``device``'s SPRAM
    (module docstring): none while the block RAM suffices; else the largest
    weight memories of one-unit layers, by the block RAMs each frees, while
    SPRAM is left for them and the rest does not fit."""
    dev = _device(device)
    if not dev.spram:
        return ()
    plan = memory_plan(net, P, board, words, fifo_depth=dev.event_fifo_depth)
    total = sum(_blocks(dev, mu) for mu in plan)
    cps = core_params(net, P, words=words)
    cands = sorted(((_blocks(dev, mu), mu) for mu in plan
                    if mu.layer >= 0 and mu.name == f"L{mu.layer}_weights"
                    and cps[mu.layer].units == 1), key=lambda bm: (-bm[0], bm[1].layer))
    chosen, left = [], dev.spram
    for blocks, mu in cands:
        if total <= dev.blocks or blocks == 0:
            break
        need = spram_blocks(mu.width, mu.depth)
        if need <= left:
            chosen.append(mu.layer)
            left -= need
            total -= blocks
    return tuple(sorted(chosen))


def device_plan(net, P, device: str, board=(), words=None, spram=None, sdram=(),
                banks=None) -> list[MemoryUse]:
    """:func:`memory_plan` as ``device`` builds it: its event FIFO depth,
    the weights :func:`spram_layers` puts in SPRAM (``spram``: that choice,
    when the caller has it), the weights of ``sdram`` in the SDRAM and
    ``banks`` current memories per layer (:func:`storage_options`)."""
    if spram is None:
        spram = spram_layers(net, P, device, board, words)
    return memory_plan(net, P, board, words, spram, _device(device).event_fifo_depth, sdram,
                       banks)


def streamable(net, P, words=None) -> list[int]:
    """Layers whose weights can stream from an SDRAM
    (:attr:`~spikeforge.hw.params.CoreParams.streamable`)."""
    return [cp.index for cp in core_params(net, P, words=words) if cp.streamable]


def storage_options(net, P, device: str, board=(), words=None, sdram_ok: bool = False,
                    limit: int | None = None) -> list[tuple[tuple[int, ...], list[int] | None]]:
    """Where the memories can go when the block RAM is short: ``(sdram,
    banks)`` choices for :func:`device_plan`, each within ``limit`` blocks
    (default: the device's) if it can be; the planner takes the fastest.
    ``[((), None)]`` when the memories fit as they are.  Otherwise one
    choice without the SDRAM and (``sdram_ok``: the board carries one) one
    with the weights of the streamable layer (:func:`streamable`) with the
    most blocks in it (one layer: the engine has no arbiter); in each, while
    the memories need more than ``limit``, layer by layer, the most blocks
    first, a LIF / IF layer keeps one current memory instead of two (its
    next step, or layer 0's next image, waits for its scans).  A choice that
    still needs more is the last step tried (the caller's fit check refuses
    it)."""
    dev = _device(device)
    limit = dev.blocks if limit is None else limit

    def need(sdram, banks):
        return plan_blocks(device_plan(net, P, device, board, words, sdram=sdram, banks=banks),
                           device)

    if need((), None) <= limit:
        return [((), None)]
    plan = device_plan(net, P, device, board, words)
    cur: dict[int, int] = {}        # a layer's second current memories (every unit's)
    weights: dict[int, int] = {}
    for mu in plan:
        if mu.layer >= 0 and mu.name.startswith(f"L{mu.layer}_cur1"):
            cur[mu.layer] = cur.get(mu.layer, 0) + _blocks(dev, mu)
        if mu.layer >= 0 and mu.name == f"L{mu.layer}_weights":
            weights[mu.layer] = _blocks(dev, mu)
    firsts = [()]
    cands = [i for i in streamable(net, P, words) if weights.get(i)]
    if sdram_ok and cands:
        firsts.append((max(cands, key=lambda i: (weights[i], -i)),))
    out = []
    for sdram in firsts:
        banks = None
        if need(sdram, banks) > limit:
            banks = [2] * len(net.layers)
            for i in sorted((i for i, b in cur.items() if b), key=lambda i: (-cur[i], i)):
                banks[i] = 1
                if need(sdram, banks) <= limit:
                    break
        out.append((sdram, banks))
    return out


def check_storage(net, P, words, sdram, banks, where: str) -> None:
    """Refuse (:class:`FitError`, naming ``where``) a storage that the engine
    cannot build for ``net`` with lanes ``P``: more than one SDRAM layer, a
    layer that cannot stream, bad current-memory counts."""
    from .network import bank_counts
    from .params import EngineError
    ok = streamable(net, P, words)
    if len(sdram) > 1 or any(i not in ok for i in sdram):
        raise FitError(f"{where}: weights in the SDRAM {list(sdram)}: one layer at most, "
                       f"one whose weights can stream (fc LIF / IF layers here: {ok})")
    try:
        bank_counts(net, banks)
    except EngineError as e:
        raise FitError(f"{where}: {e}") from None


def describe_storage(sdram, banks) -> str:
    """The storage in words, for messages and reports ('' when all is as usual)."""
    return "; ".join([f"layer {n}'s weights in the SDRAM" for n in sdram or ()]
                     + [f"layer {n} with one current memory"
                        for n, b in enumerate(banks or ()) if b == 1])


def spram_use(plan: list[MemoryUse]) -> dict[str, int]:
    """SPRAM blocks of each weight memory of a :func:`device_plan` there."""
    return {mu.name: spram_blocks(mu.width, mu.depth) for mu in plan if mu.spram}


def block_count(net, P, device: str, board=(), words=None, sdram=(), banks=None) -> int:
    """Block RAMs the memories of :func:`memory_plan` take on ``device``
    (with :func:`spram_layers`' weights in SPRAM, ``sdram``'s in the SDRAM)."""
    return plan_blocks(device_plan(net, P, device, board, words, sdram=sdram, banks=banks),
                       device)


def plan_blocks(plan: list[MemoryUse], device: str) -> int:
    """Block RAMs of a :func:`device_plan` on ``device`` (its SPRAM weights not counted)."""
    dev = _device(device)
    return sum(_blocks(dev, mu) for mu in plan)


def check_fit(net, P, device: str, board=(), words=None, sdram=(), banks=None) -> dict:
    """Refuse (:class:`FitError`) a network whose memories need more block RAM
    than ``device`` has (with ``sdram``'s weights in the SDRAM and ``banks``
    current memories per layer: :func:`storage_options`); otherwise return the use:
    ``{"device", "blocks", "available", "bits", "per_memory": {name: blocks},
    "spram_layers", "spram", "spram_available", "sdram_layers", "banks"}``
    (the layers whose weights are in SPRAM, its blocks used and the device's)."""
    dev = _device(device)
    check_storage(net, P, words, sdram, banks, "storage")
    spram = spram_layers(net, P, device, board, words)
    plan = device_plan(net, P, device, board, words, spram, sdram, banks)
    per = {mu.name: _blocks(dev, mu) for mu in plan}
    total = sum(per.values())
    bits = sum(mu.bits for mu in plan if per[mu.name])
    in_spram = spram_use(plan)
    sp = (f"; SPRAM: {', '.join(f'{n} {b}' for n, b in in_spram.items())} of "
          f"{dev.spram} blocks" if in_spram else "")
    stored = describe_storage(sdram, banks)
    sp += f"; {stored}" if stored else ""
    if total > dev.blocks:
        kb = dev.block_bits // 1024
        worst = sorted(plan, key=lambda mu: -per[mu.name])[:3]
        detail = "; ".join(f"{mu.name} (layer {mu.layer}) {mu.width} bits x {mu.depth} words "
                           f"= {mu.bits} bits -> {per[mu.name]} blocks" for mu in worst)
        layers = {}
        for mu in plan:
            layers[mu.layer] = layers.get(mu.layer, 0) + per[mu.name]
        by_layer = ", ".join(f"layer {i}: {n}" if i >= 0 else f"board: {n}"
                             for i, n in layers.items())
        raise FitError(f"network does not fit {device}: its memories need {total} block RAMs "
                       f"({kb} kbit each, {bits} bits in use), the device has {dev.blocks} "
                       f"({dev.blocks * dev.block_bits} bits)"
                       + (f" [{dev.note}]" if dev.note else "")
                       + f"; per layer {by_layer}; largest: {detail}{sp}")
    return {"device": device, "blocks": total, "available": dev.blocks, "bits": bits,
            "per_memory": per, "spram_layers": list(spram), "spram": sum(in_spram.values()),
            "spram_available": dev.spram, "sdram_layers": list(sdram),
            "banks": None if banks is None else list(banks)}
