"""Golden-model speed: inferences per second of sw/golden.py on a run's test set.

    .venv/bin/python benchmarks/bench_golden.py RUN [RUN ...] [--batch 250] [--repeats 3]

Best of ``repeats`` passes over the whole test set (the machine is shared:
the best pass is the least disturbed one).
"""

import argparse
import time
from pathlib import Path

import torch

from spikeforge import image
from spikeforge.sw import data, golden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'run':<28} {'layers':>6} {'T':>3} {'images':>7} {'inferences/s':>13}")
    for run in args.runs:
        net, meta = image.read_image(Path(run) / "weights.sfimg")
        x = data.load(meta.get("dataset", "mnist5k"), seed=meta.get("seed", 0)).x_test
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for i in range(0, len(x), args.batch):
                golden.run(net, x[i:i + args.batch])
            best = min(best, time.perf_counter() - t0)
        print(f"{run:<28} {len(net.layers):>6} {net.spec.timesteps:>3} {len(x):>7} "
              f"{len(x) / best:>13.0f}")


if __name__ == "__main__":
    main()
