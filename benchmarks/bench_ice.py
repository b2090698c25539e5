"""Which network fits the iCEBreaker (UP5K) best: candidates trained, quantized
and planned, accuracy against fit and inferences/s.

    .venv/bin/python benchmarks/bench_ice.py                  # digits8x8 and mnist5k
    .venv/bin/python benchmarks/bench_ice.py --dataset digits8x8

Each candidate (a model configuration) is trained with `spikeforge train`,
quantized with `spikeforge quantize` (8-bit or 4-bit weights, 4-bit input
planes) and planned with the planner for the UP5K (`hw/plan.py`: block RAM,
the board's host buffer included, and logic cells against the routability
ceiling measured on iCEBreaker builds).  The table gives float / int8 test
accuracy, the plan's lanes, block RAM, predicted logic cells, and
inferences/s at the predicted Fmax; the best fitting candidate per data set
is marked.  SPRAM: the blocks of the first layer's weights when the block RAM
does not hold them (hw/fit.py); those the host loads before inferring.
Runs go to runs/ice-bench/NAME (trained once; delete to retrain).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SF = [str(Path(sys.executable).parent / "spikeforge")]

# name: (data set, train options, quantize options)
CANDIDATES = {
    "digits8x8": {
        "mlp32-t5": ("--set channels=[] --set hidden=32 --timesteps 5 --epochs 40", "--input-bits 4"),
        "mlp64-t5": ("--set channels=[] --set hidden=64 --timesteps 5 --epochs 40", "--input-bits 4"),
        "mlp64-t8-ce": ("--set channels=[] --set hidden=64 --timesteps 8 --epochs 40 --loss ce",
                        "--input-bits 4"),
        "mlp96-t8-ce": ("--set channels=[] --set hidden=96 --timesteps 8 --epochs 40 --loss ce",
                        "--input-bits 4"),
        "conv4-fc32-t8-ce": ("--set channels=[4] --set hidden=32 --timesteps 8 --epochs 40 "
                             "--loss ce", "--input-bits 4"),
    },
    "mnist5k": {
        "mlp16-t5-w4": ("--set channels=[] --set hidden=16 --timesteps 5 --epochs 15",
                        "--input-bits 4 --weight-bits 4"),
        "mlp32-t5-w4": ("--set channels=[] --set hidden=32 --timesteps 5 --epochs 15",
                        "--input-bits 4 --weight-bits 4"),
        "mlp32-t5-w2": ("--set channels=[] --set hidden=32 --timesteps 5 --epochs 15",
                        "--input-bits 4 --weight-bits 2"),
        # with the first layer's weights in the SPRAM (hw/fit.py: spram_layers)
        "mlp64-t5-w4": ("--set channels=[] --set hidden=64 --timesteps 5 --epochs 15",
                        "--input-bits 4 --weight-bits 4"),
        "mlp64-t5-w8": ("--set channels=[] --set hidden=64 --timesteps 5 --epochs 15",
                        "--input-bits 4 --weight-bits 8"),
        "mlp128-t5-w8": ("--set channels=[] --set hidden=128 --timesteps 5 --epochs 15",
                         "--input-bits 4 --weight-bits 8"),
    },
}


def sh(args: list[str]) -> None:
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stderr[-2000:]}")


def candidate(dataset: str, name: str, train: str, quant: str, out: Path) -> dict:
    run = out / f"{dataset}-{name}"
    t0 = time.time()
    if not (run / "model.safetensors").exists():
        sh(SF + ["train", "-q", "--dataset", dataset, *train.split(), "--out", str(run)])
    sh(SF + ["quantize", "-q", str(run), *quant.split()])
    m = json.loads((run / "metrics.json").read_text())
    from spikeforge import image
    from spikeforge.flow import make_plan
    from spikeforge.hw.plan import PlanError
    net, meta = image.read_image(run / "weights.sfimg")
    row = {"dataset": dataset, "name": name, "float": m["test_accuracy"],
           "int": m["int_accuracy"], "seconds": time.time() - t0}
    try:
        p = make_plan(run, net, meta, board="icebreaker")
        row.update(fits=True, **{k: p["chosen"][k] for k in
                                 ("lanes", "bram", "spram", "cells", "util",
                                  "inferences_per_second")})
    except PlanError as e:
        row.update(fits=False, why=str(e))
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(CANDIDATES), nargs="*", default=sorted(CANDIDATES))
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ice-bench")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    print(f"{'data set':<10} {'candidate':<18} {'float':>6} {'int':>6}  {'lanes':<10} "
          f"{'BRAM':>4} {'SPRAM':>5} {'cells':>6} {'util':>5} {'inf/s':>8}")
    for ds in args.dataset:
        rows = [candidate(ds, n, t, q, args.out) for n, (t, q) in CANDIDATES[ds].items()]
        fit = [r for r in rows if r["fits"]]
        best = max(fit, key=lambda r: (r["int"], r["inferences_per_second"])) if fit else None
        for r in rows:
            line = f"{ds:<10} {r['name']:<18} {100 * r['float']:>5.1f}% {100 * r['int']:>5.1f}%  "
            if r["fits"]:
                line += (f"{','.join(map(str, r['lanes'])):<10} {r['bram']:>4} {r['spram']:>5} "
                         f"{r['cells']:>6} "
                         f"{100 * r['util']:>4.0f}% {r['inferences_per_second']:>8.0f}")
            else:
                line += f"does not fit: {r['why']}"
            print(line + ("  <- best" if r is best else ""), flush=True)


if __name__ == "__main__":
    main()
