"""A resource and clock cost model of the engine, for the planner.

Per layer core, the logic cells Yosys maps the core to are predicted from
the widths of its datapaths (:func:`core_features`), with coefficients
fitted to Yosys's own synthesis of single cores and whole board tops
(``benchmarks/calibrate_cost.py`` writes them into ``cost_model.json`` beside
this file, one set per FPGA family).  Block RAM is not modelled but counted,
by :mod:`spikeforge.hw.fit` (the same slices synthesis builds).  The clock
and the routability limit come from routed builds, listed in the same file
with the commands that measured them.

Features of a core (all in bits, ``PR = P * R`` the lanes of a memory word):

* ``upd``: ``PR * cur_width``, the read-modify-write: an adder, the
  read-after-write forwarding multiplexers and their registers per lane,
  the current memories' read and write registers, times the synapse units;
* ``neu``: ``PR * state_width``, the neuron datapaths (add, saturate,
  compare, decay shifts, reset);
* ``tree``: ``P * Q * weight_bits``, the weight terms a word event adds
  (``Q`` inputs per event; 1 for single events), times the synapse units;
* ``lutram``: the 16 x 4-bit LUT-RAM cells of the core's memories shallow
  enough for LUT RAM (ECP5; the iCE40 has none);
* ``one``: the core's control, its input FIFO and counters;
* ``top``: 1 for a whole board top (the host bridge, the readout), 0 for a core.

An STCB core (the CAB's accumulator banks and the STEB unit's passes) is
another datapath: its features are its own, and a LIF / IF core has none of
them (nor an STCB core the LIF ones), so with no whole board top of STCB
cores among the samples (a whole top's ``top`` column is shared) the two
fits are independent: ``stcb`` (``P * acc_width``, the accumulate, the
banks' registers and the STEB unit's shifts and comparisons), ``stcb_tree``
(as ``tree``) and ``stcb_one`` (as ``one``).  ``lutram`` is shared (exact,
not fitted).

A LIF / IF core with two synapse units (lanes twice its channels: each unit
walks half the taps into its own current memories) has a second unit's
walker, forwarding and adders and the scan's sum of the units' words:
``units`` (``(U - 1) * P * R * cur_width``) and ``units_one`` (``U - 1``),
fitted second, on what the other features leave of those cores' cells
(:data:`SECOND`), so the one-unit cores' LUT, carry and flip-flop
coefficients are as without them.  Only ECP5 cores with two units are in
the calibration: on the iCE40 a second unit costs nothing in this model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .network import core_params

__all__ = ["FEATURES", "RESOURCES", "core_features", "CostModel", "load", "estimate",
           "fit_coefficients"]

FEATURES = ("upd", "neu", "tree", "lutram", "one", "top", "stcb", "stcb_tree", "stcb_one",
            "units", "units_one")

#: features fitted second, on the residual of the samples that have them
SECOND = ("units", "units_one")

#: the logic cells modelled per family (Yosys cell names in the comments)
RESOURCES = {
    "ecp5": ("lut", "carry", "ff", "lutram"),   # LUT4, CCU2C, TRELLIS_FF, TRELLIS_DPR16X4
    "ice40": ("lut", "carry", "ff"),            # SB_LUT4, SB_CARRY, SB_DFF*
}

#: Yosys cell types -> modelled resource
CELL_MAP = {
    "ecp5": {"LUT4": "lut", "CCU2C": "carry", "TRELLIS_FF": "ff", "TRELLIS_DPR16X4": "lutram",
             "DP16KD": "bram"},
    "ice40": {"SB_LUT4": "lut", "SB_CARRY": "carry", "SB_RAM40_4K": "bram"},
}

_FILE = Path(__file__).with_name("cost_model.json")

#: a residual block's skip path (:class:`~spikeforge.hw.streams.SkipPath`:
#: fork, skip FIFO, merge), Yosys's cells, measured not fitted, for 34-bit
#: events and a 3,137-deep FIFO (the STS-ResNet's first block at 16
#: channels), ``synth_ecp5 -abc9`` / ``synth_ice40 -abc9``; its block RAM
#: (7 DP16KD / 28 SB_RAM40_4K there) is the fit check's (``tests/test_plan.py``
#: synthesises it again)
SKIP_PATH = {
    "ecp5": {"lut": 356, "carry": 24, "ff": 124},
    "ice40": {"lut": 588, "carry": 40, "ff": 125},
}


#: a layer's weights in the SDRAM: the controller (258 LUT4, 12 CCU2C, 137
#: FF, 4 LUT-RAM cells at 50 MHz: ``tests/test_sdram.py``) and the weight
#: streamer (ConvSNN 48-48's fc layer at 2 and 8 lanes: 121 / 164 LUT4, 33
#: CCU2C, 102 / 154 FF), ``synth_ecp5 -abc9``; measured, not fitted
SDRAM_PATH = {"lut": 258 + 140, "carry": 12 + 33, "ff": 137 + 130, "lutram": 4}


def family(device: str) -> str:
    return "ice40" if device.startswith("ice40") else "ecp5"


def core_features(cp, dev) -> dict[str, float]:
    """The features of one layer core (:class:`~spikeforge.hw.params.CoreParams`)
    on device ``dev`` (a :class:`~spikeforge.hw.fit.Device`: which memories
    are LUT RAM)."""
    PR, U = cp.P * cp.R, cp.units   # U synapse units: each its datapath and memory copies
    if cp.stcb:
        mems = [(cp.acc_width, cp.acc_depth)] * cp.P
    else:
        mems = [(PR * cp.cur_width, cp.acc_depth)] * (cp.cur_banks * U)
        mems.append((PR * cp.state_width, cp.acc_depth))
    mems += [(cp.weight_width, hi - lo) for lo, hi in map(cp.weight_rows, range(U))]
    mems.append((cp.neuron_width, cp.c_out))
    # LUT-RAM cells (ECP5 DPR16X4: 16 words x 4 bits) of the shallow memories
    lutram = sum(-(-w // 4) * -(-d // 16) for w, d in mems if dev.in_lutram(w, d))
    tree = float(U * cp.P * cp.in_lanes * cp.weight_bits)
    out = dict.fromkeys(FEATURES, 0.0) | {"lutram": float(lutram)}
    if cp.stcb:
        return out | {"stcb": float(cp.P * cp.acc_width), "stcb_tree": tree, "stcb_one": 1.0}
    return out | {"upd": float(U * PR * cp.cur_width), "neu": float(PR * cp.state_width),
                  "tree": tree, "one": 1.0,
                  "units": float((U - 1) * PR * cp.cur_width), "units_one": float(U - 1)}


@dataclass(frozen=True)
class CostModel:
    """Coefficients per resource and feature (the board top's part is the
    ``top`` feature's) and the measured clock / routability figures of one
    FPGA family."""

    family: str
    coef: dict[str, dict[str, float]]       # resource -> feature -> cells per unit
    fmax: list[dict]                        # routed builds: {"util", "fmax_mhz", "command"}
    util_ceiling: float                     # the highest utilisation seen to route reliably
    build_seconds: list[dict]               # {"cells", "seconds"}: measured build times
    calibration: dict                       # how the coefficients were measured
    bram_ceiling: float = 1.0               # the highest share of block RAM seen to route
    # with more than ``bram_share`` of the block RAM in use, the lower logic
    # ceiling ``util_ceiling`` (the block-RAM columns' wires are then crowded)
    full_bram: dict | None = None

    def bram_limit(self, blocks: int) -> int:
        """The block RAMs of a device with ``blocks`` a plan may use."""
        return int(self.bram_ceiling * blocks + 1e-9)

    def util_limit(self, bram_share: float) -> float:
        """The logic ceiling of a plan using ``bram_share`` of the block RAM."""
        if self.full_bram is not None and bram_share > self.full_bram["bram_share"]:
            return min(self.util_ceiling, self.full_bram["util_ceiling"])
        return self.util_ceiling

    def cores(self, net, P, dev, words=None, sdram=(), banks=None) -> list[dict[str, float]]:
        """Predicted cells per layer core on device ``dev``; a residual
        layer's also count its block's skip path (:data:`SKIP_PATH`), a
        layer streaming its weights the SDRAM's (:data:`SDRAM_PATH`)."""
        out = []
        for cp, ls in zip(core_params(net, P, words=words, banks=banks), net.spec.layers):
            f = core_features(cp, dev)
            # measured parts beside the fitted core: the skip path, the SDRAM's
            extra = dict(SKIP_PATH[self.family]) if ls.residual else {}
            if cp.index in sdram:
                extra = {r: extra.get(r, 0.0) + SDRAM_PATH.get(r, 0.0) for r in extra | SDRAM_PATH}
            out.append({r: max(0.0, sum(c.get(k, 0.0) * f[k] for k in FEATURES))
                        + extra.get(r, 0.0) for r, c in self.coef.items()})
        return out

    def cells(self, res: dict[str, float]) -> float:
        """Logic cells as nextpnr counts them, from Yosys's cells: ECP5
        ``TRELLIS_COMB`` = LUT4 + 2 per CCU2C + 8 per DPR16X4 (nextpnr's count
        on the default network's build: 56,815 against 56,851); iCE40
        ``ICESTORM_LC`` = LUT4 + 0.55 per flip-flop (a flip-flop shares a cell
        with a LUT or takes its own: 4,317 against 4,333 and 4,437 against
        4,460 on the two iCEBreaker builds measured)."""
        if self.family == "ice40":
            return res.get("lut", 0.0) + 0.55 * res.get("ff", 0.0)
        return res.get("lut", 0.0) + 2 * res.get("carry", 0.0) + 8 * res.get("lutram", 0.0)

    def fmax_mhz(self, util: float) -> float:
        """Fmax at a logic utilisation, interpolated between the measured
        routed builds (flat beyond them)."""
        pts = sorted((p["util"], p["fmax_mhz"]) for p in self.fmax)
        if util <= pts[0][0]:
            return pts[0][1]
        for (u0, f0), (u1, f1) in zip(pts, pts[1:]):
            if util <= u1:
                return f0 + (f1 - f0) * (util - u0) / (u1 - u0)
        return pts[-1][1]

    def build_time_s(self, cells: float) -> float:
        """Yosys + nextpnr wall time, proportional to the cells (the measured
        builds' mean seconds per cell)."""
        rate = sum(b["seconds"] for b in self.build_seconds) / sum(b["cells"]
                                                                   for b in self.build_seconds)
        return rate * cells


@lru_cache(maxsize=None)
def _read() -> dict:
    return json.loads(_FILE.read_text())


def load(device: str) -> CostModel:
    """The calibrated model of ``device``'s family."""
    fam = family(device)
    d = _read()[fam]
    return CostModel(fam, d["coef"], d["fmax"],
                     d["util_ceiling"], d["build_seconds"], d["calibration"],
                     d.get("bram_ceiling", 1.0), d.get("full_bram"))


def estimate(net, P, device: str, board=(), words=None, sdram=(), banks=None) -> dict:
    """Predicted resources of the board top for ``net`` with lanes ``P`` (and
    ``words``, :func:`~spikeforge.hw.network.core_params`) on ``device``: ``{"lut", "carry", "ff", "lutram", "cells", "util", "bram",
    "spram", "fmax_mhz", "build_seconds", "per_core"}`` (``bram``: the fit check's
    count, :func:`~spikeforge.hw.fit.plan_blocks`, with the board top's
    memories ``board``; ``spram``: the iCE40 SPRAM blocks of the weights
    :func:`~spikeforge.hw.fit.spram_layers` puts there; ``util``: ``cells``
    over the device's logic cells); ``sdram`` and ``banks``: the storage of
    :func:`~spikeforge.hw.fit.storage_options`)."""
    from .fit import DEVICES, device_plan, plan_blocks, spram_use
    cm = load(device)
    dev = DEVICES[device]
    per = cm.cores(net, P, dev, words, sdram, banks)
    plan = device_plan(net, P, device, board, words, sdram=sdram, banks=banks)
    tot = {r: c.get("top", 0.0) + sum(p[r] for p in per) for r, c in cm.coef.items()}
    cells = cm.cells(tot)
    util = cells / dev.logic_cells
    return {**{r: round(v) for r, v in tot.items()}, "cells": round(cells), "util": util,
            "bram": plan_blocks(plan, device),
            "spram": sum(spram_use(plan).values()),
            "fmax_mhz": cm.fmax_mhz(util),
            "build_seconds": cm.build_time_s(cells), "per_core": per}


def fit_coefficients(samples: list[tuple[dict[str, float], dict[str, float]]],
                     resources) -> dict[str, dict[str, float]]:
    """Non-negative least squares per resource over ``(features, cells)``
    samples (one per synthesised core), weighted so that large and small
    cores count alike (relative error).  LUT, carry and flip-flops: the
    samples without :data:`SECOND` features first, over the other features
    but ``lutram``; then the :data:`SECOND` features over what that fit
    leaves of the remaining samples.  LUT RAM: the ``lutram`` feature exact,
    ``one``, ``top`` and ``stcb_one`` fitted."""
    import numpy as np
    from scipy.optimize import nnls
    A = np.array([[f[k] for k in FEATURES] for f, _ in samples])
    out = {}
    for r in resources:
        y = np.array([c.get(r, 0.0) for _, c in samples])
        w = 1.0 / np.maximum(y, 50.0)   # relative error, small cores not over-weighted
        if r == "lutram":
            # the feature counts the LUT-RAM cells of the core's shallow memories
            # exactly (coefficient 1; where Yosys puts one in block RAM instead
            # this over-counts, the safe side); fitted: the FIFOs and queues
            keep = [FEATURES.index(k) for k in ("one", "top", "stcb_one")]
            x, _ = nnls(A[:, keep] * w[:, None], (y - A[:, FEATURES.index("lutram")]) * w)
            out[r] = dict.fromkeys(FEATURES, 0.0) | {"lutram": 1.0}
            out[r].update({FEATURES[i]: float(v) for i, v in zip(keep, x)})
            continue
        # (the LUT-RAM cells themselves are the ``lutram`` resource: not a
        # term of the others, so that LIF / IF and STCB cores share no column)
        first = [i for i, k in enumerate(FEATURES) if k != "lutram" and k not in SECOND]
        second = [FEATURES.index(k) for k in SECOND]
        plain = ~A[:, second].any(axis=1)
        x, _ = nnls(A[plain][:, first] * w[plain, None], y[plain] * w[plain])
        out[r] = dict.fromkeys(FEATURES, 0.0) | {FEATURES[i]: float(v) for i, v in zip(first, x)}
        if not plain.all():   # the second units: what the first fit leaves of their cores
            rest = y[~plain] - A[~plain][:, first] @ x
            x2, _ = nnls(A[~plain][:, second] * w[~plain, None], rest * w[~plain])
            out[r].update({FEATURES[i]: float(v) for i, v in zip(second, x2)})
    return out
