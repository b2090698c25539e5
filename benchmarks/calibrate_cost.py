"""Calibrate the planner's cost model (hw/cost.py) against Yosys, and measure it.

    .venv/bin/python benchmarks/calibrate_cost.py            # synthesise, fit, write, check
    .venv/bin/python benchmarks/calibrate_cost.py --refit    # fit the stored samples again
    .venv/bin/python benchmarks/calibrate_cost.py --check    # predicted vs Yosys only
    .venv/bin/python benchmarks/calibrate_cost.py --missing  # synthesise new configurations only, fit all

Calibration: every layer core of the configurations in ``CALIBRATE`` is
synthesised on its own (Yosys ``synth_ecp5 -abc9`` / ``synth_ice40``, as the
board builds run them); the cells per core and the core's features are the
samples, and a non-negative least-squares fit per resource gives the
coefficients.  The board top's own part (host bridge, event FIFOs, readout)
is the whole top of the smallest configuration less its cores.  Samples,
coefficients and commands go into ``hw/cost_model.json``; the routed-build
figures there (Fmax against utilisation, build times) are kept.

Check: the whole board top of each configuration in ``CHECK`` (different
networks and lanes from the calibration set), synthesised as a build does,
against the model's prediction: LUT4, CCU2C, FF, LUT RAM, the logic cells
nextpnr would count from them (:meth:`CostModel.cells`), and block RAM (the
fit check's count, without the ULX3S's batch store: the tops here have none).  ``--refit`` and ``--missing`` check against the Yosys counts
stored by the last check (``--missing`` synthesises the check tops not
stored yet).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from amaranth.hdl import UnusedElaboratable

warnings.filterwarnings("ignore", category=UnusedElaboratable)

ROOT = Path(__file__).resolve().parents[1]

C16 = {"channels": (16, 32), "hidden": 64}   # the default network
#: the STS-ResNet of the README's build (two residual blocks of 8 channels)
RES8 = {"model": "sts-resnet", "channels": 8, "blocks": 2, "hidden": 64, "timesteps": 4}
#: the STCSNN VGG at half width (the README's STCB build)
STCB16 = {"model": "stcsnn-vgg", "channels": (16, 16, 32, 32), "hidden": 64, "timesteps": 8}
#: (label, family, model configuration overrides, lanes) -- untrained weights:
#: the datapath widths come from the quantized ranges, close to a trained run's
CALIBRATE = [
    ("convsnn 16-32 fc64", "ecp5", C16, [4, 4, 4, 1]),
    ("convsnn 16-32 fc64", "ecp5", C16, [16, 32, 32, 1]),
    ("convsnn 16-32 fc64", "ecp5", C16, [8, 16, 8, 1]),
    ("mlp 128", "ecp5", {"channels": (), "hidden": 128}, [32, 10]),
    ("convsnn 8 fc32 4b", "ecp5", {"channels": (8,), "hidden": 32, "weight_bits": 4,
                                   "input_bits": 4}, [2, 2, 1]),
    ("mlp 64 digits", "ice40", {"channels": (), "hidden": 64, "dataset": "digits8x8",
                                "input_bits": 4}, [1, 1]),
    ("mlp 32 digits", "ice40", {"channels": (), "hidden": 32, "dataset": "digits8x8",
                                "input_bits": 4}, [2, 2]),
    ("convsnn 4 fc16 digits", "ice40", {"channels": (4,), "hidden": 16,
                                        "dataset": "digits8x8", "weight_bits": 4,
                                        "input_bits": 4}, [1, 1, 1]),
    # cores with two synapse units (fitted second: hw/cost.py)
    ("convsnn 8-16 fc32", "ecp5", {"channels": (8, 16), "hidden": 32}, [8, 32, 4, 1]),
    ("sts-resnet 8 2 blocks", "ecp5", RES8, [4, 16, 16, 8, 16, 8, 8, 1]),
    # STCB cores (their own features: hw/cost.py)
    ("stcsnn 16-16-32-32 fc64", "ecp5", STCB16, [16, 16, 16, 16, 2, 10]),
    ("stcsnn 16-16-32-32 fc64", "ecp5", STCB16, [4, 4, 8, 8, 1, 1]),
]
#: configurations the fit never saw (other lanes or networks)
CHECK = [
    ("convsnn 16-32 fc64", "ecp5", C16, [2, 4, 2, 1]),
    ("convsnn 16-32 fc64", "ecp5", C16, [16, 16, 16, 1]),
    ("mlp 128", "ecp5", {"channels": (), "hidden": 128}, [8, 2]),
    ("convsnn 8 fc32 4b", "ecp5", {"channels": (8,), "hidden": 32, "weight_bits": 4,
                                   "input_bits": 4}, [8, 4, 2]),
    ("convsnn 8-16 fc32", "ecp5", {"channels": (8, 16), "hidden": 32}, [4, 8, 4, 1]),
    ("stcsnn 16-16-32-32 fc64", "ecp5", STCB16, [8, 8, 16, 16, 2, 2]),
    ("sts-resnet 8 2 blocks", "ecp5", RES8, [2, 16, 16, 4, 16, 4, 4, 1]),
    ("mlp 32 digits", "ice40", {"channels": (), "hidden": 32, "dataset": "digits8x8",
                                "input_bits": 4}, [1, 1]),
    ("mlp 48 digits", "ice40", {"channels": (), "hidden": 48, "dataset": "digits8x8",
                                "input_bits": 4}, [2, 1]),
]

SYNTH = {"ecp5": "synth_ecp5 -abc9", "ice40": "synth_ice40"}
DEVICE = {"ecp5": "ecp5-85f", "ice40": "ice40up5k"}
BOARD = {"ecp5": "ulx3s", "ice40": "icebreaker"}


def network(overrides: dict):
    from spikeforge.boards.build import ModelConfig
    kw = dict(overrides)
    cfg = ModelConfig("cal", model=kw.pop("model", "convsnn"), dataset=kw.pop("dataset", "mnist5k"),
                      weight_bits=kw.pop("weight_bits", 8), input_bits=kw.pop("input_bits", 8),
                      overrides=kw)
    return cfg.network()


def resources(cells: dict, fam: str) -> dict:
    from spikeforge.hw.cost import CELL_MAP
    out = {}
    for cell, n in cells.items():
        key = CELL_MAP[fam].get(cell)
        if key is None and cell.startswith("SB_DFF"):
            key = "ff"
        if key is not None:
            out[key] = out.get(key, 0) + n
    return out


def core_samples(label, fam, overrides, lanes) -> tuple[list[dict], bool]:
    """Per-core samples of one configuration, and whether a core failed."""
    from amaranth.back import rtlil

    from spikeforge import toolchain
    from spikeforge.hw import fit
    from spikeforge.hw.cost import core_features
    from spikeforge.hw.memory import SYNTHESIS
    from spikeforge.hw.network import NetworkTop
    net = network(overrides)
    top = NetworkTop(net, lanes)   # only its cores are synthesised
    out, failed = [], False
    for i, core in enumerate(top.cores):
        t0 = time.time()
        try:
            cells = toolchain.yosys_cells(rtlil.convert(core, name="top", platform=SYNTHESIS),
                                          SYNTH[fam])
        except toolchain.ToolchainError as e:   # reported, and the sample left out
            print(f"  {fam} {label} lanes {lanes} core {i}: {e}", flush=True)
            failed = True
            continue
        f = core_features(core.params, fit.DEVICES[DEVICE[fam]])
        out.append({"config": label, "lanes": lanes, "layer": i, "features": f,
                    "cells": resources(cells, fam), "seconds": round(time.time() - t0, 1)})
        print(f"  {fam} {label} lanes {lanes} core {i}: {out[-1]['cells']} "
              f"({out[-1]['seconds']:.0f} s)", flush=True)
    return out, failed


def board_top(fam, overrides, lanes):
    """The board top as the board's build makes it (weights in the iCE40's
    SPRAM where the fit check puts them)."""
    from spikeforge.boards.build import board_memories
    from spikeforge.boards.top import BoardTop
    from spikeforge.hw.fit import spram_layers
    net = network(overrides)
    spram = spram_layers(net, lanes, DEVICE[fam], board_memories(net, BOARD[fam]))
    return net, BoardTop(net, lanes, clock_hz=25e6 if fam == "ecp5" else 30e6, spram=spram)


def whole(fam, overrides, lanes) -> tuple[dict, float]:
    from amaranth.back import rtlil

    from spikeforge import toolchain
    from spikeforge.hw.memory import SYNTHESIS
    net, top = board_top(fam, overrides, lanes)
    t0 = time.time()
    cells = toolchain.yosys_cells(rtlil.convert(top, name="top", platform=SYNTHESIS), SYNTH[fam])
    return resources(cells, fam), time.time() - t0


def top_features(cps, dev) -> dict:
    """The features of a whole board top of cores ``cps``: its cores' summed,
    and ``top``."""
    from spikeforge.hw.cost import FEATURES, core_features
    feats = [core_features(cp, dev) for cp in cps]
    return {k: sum(x[k] for x in feats) for k in FEATURES} | {"top": 1.0}


def calibrate(missing: bool = False) -> dict:
    """The model file with each family's samples synthesised (``missing``:
    only the configurations without stored samples, the others' kept;
    samples of configurations no longer in ``CALIBRATE`` dropped); the fit
    is :func:`refit`'s."""
    from spikeforge.hw import fit
    from spikeforge.hw.cost import SECOND
    from spikeforge.hw.network import core_params
    model = json.loads((ROOT / "hw" / "cost_model.json").read_text())
    for fam in ("ecp5", "ice40"):
        cfgs = [c for c in CALIBRATE if c[1] == fam]
        known = {(c[0], tuple(c[3])) for c in cfgs}
        samples = [s for s in model[fam]["calibration"]["samples"]
                   if (s["config"], tuple(s["lanes"])) in known] if missing else []
        have = {(s["config"], tuple(s["lanes"])) for s in samples}
        cfgs = [c for c in cfgs if (c[0], tuple(c[3])) not in have]
        # the smallest configuration's whole top fits the ``top`` part; a
        # configuration whose cores Yosys cannot synthesise one by one (ABC9
        # stops without a message on the widest word-event cores) is taken whole
        small = None if missing else min(cfgs, key=lambda c: sum(c[3]))
        for cfg in cfgs:
            label, _, ov, lanes = cfg
            cores, failed = core_samples(label, fam, ov, lanes)
            samples += cores
            if not (failed or cfg is small):
                continue
            net = network(ov)
            f = top_features(core_params(net, lanes), fit.DEVICES[DEVICE[fam]])
            if any(f[k] for k in SECOND + ("stcb_one",)) or \
                    any(ls.residual for ls in net.spec.layers):
                # a whole top fits the one-unit LIF features and ``top``
                # only (its skip paths are measured apart: SKIP_PATH)
                print(f"  {fam} {label} lanes {lanes}: no whole-top sample "
                      "(STCB, second-unit or residual cores)", flush=True)
                continue
            tot, dt = whole(fam, ov, lanes)
            samples.append({"config": label, "lanes": lanes, "layer": "all",
                            "features": f, "cells": tot, "seconds": round(dt, 1)})
            print(f"  {fam} {label} lanes {lanes} whole top: {tot} ({dt:.0f} s)", flush=True)
        model[fam]["calibration"] = {"command": "python benchmarks/calibrate_cost.py",
                                     "synth": SYNTH[fam], "samples": samples}
    return model


def refit(model: dict) -> dict:
    """Fit from the model's samples' cells, their features computed afresh
    from their configurations (a changed feature needs no Yosys run)."""
    from spikeforge.hw import fit
    from spikeforge.hw.cost import RESOURCES, core_features, fit_coefficients
    from spikeforge.hw.network import core_params
    overrides = {(label, tuple(lanes)): ov for label, _, ov, lanes in CALIBRATE}
    for fam in ("ecp5", "ice40"):
        dev = fit.DEVICES[DEVICE[fam]]
        samples = model[fam]["calibration"]["samples"]
        for s in samples:
            cps = core_params(network(overrides[(s["config"], tuple(s["lanes"]))]), s["lanes"])
            s["features"] = (top_features(cps, dev) if s["layer"] == "all"
                             else core_features(cps[s["layer"]], dev))
        model[fam]["coef"] = fit_coefficients([(x["features"], x["cells"]) for x in samples],
                                              RESOURCES[fam])
    return model


def check(model: dict, synth: bool = True) -> None:
    """Predicted against Yosys on the ``CHECK`` configurations; Yosys's
    counts are stored in the model file (``check``) and, with ``synth``
    False, taken from there (a refit is checked without synthesis)."""
    from spikeforge.boards.build import board_memories
    from spikeforge.hw import cost
    cache = {(r["config"], tuple(r["lanes"])): r for fam in ("ecp5", "ice40")
             for r in model[fam].get("check", [])}
    for fam in ("ecp5", "ice40"):
        model[fam]["check"] = []
    for label, fam, ov, lanes in CHECK:
        net = network(ov)
        pred = cost.estimate(net, lanes, DEVICE[fam], board_memories(net, BOARD[fam], store=False))
        old = cache.get((label, tuple(lanes)))
        if synth or old is None:
            got, dt = whole(fam, ov, lanes)
        else:
            got, dt = old["yosys"], old["synth_s"]
        model[fam]["check"].append({"config": label, "lanes": lanes, "yosys": got,
                                    "synth_s": round(dt, 1)})
        keys = cost.RESOURCES[fam]
        print(f"{fam:<5} {label:<24} {str(lanes):<15} "
              + "  ".join(f"{k} {pred[k]:>6}/{got.get(k, 0):<6} "
                          f"({_err(pred[k], got.get(k, 0))})" for k in keys)
              + f"  cells {pred['cells']}/{cost.load(DEVICE[fam]).cells(got):.0f} "
                f"({_err(pred['cells'], cost.load(DEVICE[fam]).cells(got))})"
              + f"  bram {pred['bram']}/{got.get('bram', 0)}  ({dt:.0f} s)", flush=True)


def _err(p, g) -> str:
    return f"{100 * (p - g) / g:+.0f}%" if g else "-"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--refit", action="store_true", help="fit the stored samples again")
    how.add_argument("--check", action="store_true", help="only compare with Yosys")
    how.add_argument("--missing", action="store_true",
                     help="synthesise only the configurations without stored samples, then fit all")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    path = ROOT / "hw" / "cost_model.json"
    model = json.loads(path.read_text())
    if not args.check:
        model = refit(model if args.refit else calibrate(missing=args.missing))
        path.write_text(json.dumps(model, indent=1) + "\n")
        print(f"coefficients -> {path}")
        from spikeforge.hw import cost
        cost._read.cache_clear()
    print("\npredicted / Yosys per resource (error):")
    check(model, synth=not (args.refit or args.missing))
    path.write_text(json.dumps(model, indent=1) + "\n")


if __name__ == "__main__":
    main()
