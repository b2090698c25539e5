"""The rate penalty's trade: accuracy against the engine's events and cycles.

    .venv/bin/python benchmarks/bench_sparsity.py [--penalties 0,0.05,0.1,0.2]
        [--seeds 0] [--epochs 16] [--images 200] [--board ulx3s] [--out runs/bench_sparsity]
        [--train-options "--loss mse --lr 5e-4 --penalty-warmup 0 --ema 0"]

The engine is event-driven: a layer's synapse unit takes one input event (a
word of channels at one position) per kernel tap and cycle, so the spikes a
layer sends set the next layer's cycles.  ``spikeforge train --rate-penalty
R`` adds R x the hidden layers' mean firing rate to the loss.  Per penalty
and seed this script runs the default flow (``spikeforge run``: train,
quantize, plan, export, verify on ``--images`` test images under Verilator)
into its own folder under ``--out`` (finished steps are reused) and prints,
side by side: float / int8 accuracy (1,000 test images), the RTL's (= the
golden model's, with the mismatch count), the firing rates out of layers 0
and 1, the events into layers 1 and 2 per image (the RTL's counters), the
planned lanes and words, the interval between images the planner predicted and the one
Verilator measured (images back to back), and inferences/s at the plan's
predicted Fmax.  The README's "Sparsity" table is this script's output,
with the MSE recipe the default had then (``--penalties 0,0.005,0.01,0.02
--train-options "--loss mse --lr 5e-4 --penalty-warmup 0 --ema 0"``: no
ramp of the penalty, no weight average); the default's cross-entropy loss
takes penalties about 10x those.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import time
from pathlib import Path

from spikeforge import cli


def _run(out: Path, penalty: float, seed: int, args) -> tuple[Path, float, str]:
    extra = shlex.split(args.train_options)
    # runs with other options in folders of their own; the swept penalty and
    # seed after them, so they win
    tag = "".join(c if c.isalnum() or c in ".-" else "_" for c in "_".join(extra))
    run = out / (f"p{penalty:g}_s{seed}" + (f"_{tag.strip('_-')}" if tag else ""))
    argv = ["run", "-q", "--out", str(run), *extra, "--rate-penalty", repr(penalty),
            "--seed", str(seed), "--epochs", str(args.epochs), "--images", str(args.images),
            "--board", args.board]
    t0 = time.perf_counter()
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        rc = cli.main(argv)
    return run, time.perf_counter() - t0, "" if rc == 0 else \
        (text.getvalue().strip().splitlines() or ["failed"])[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--penalties", default="0,0.05,0.1,0.2")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--board", default="ulx3s", choices=("ulx3s", "icebreaker"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench_sparsity"))
    ap.add_argument("--train-options", default="", metavar='"OPTIONS"',
                    help="further spikeforge run options for every run, e.g. "
                         "--train-options=\"--loss mse --lr 5e-4\" (in folders of their own)")
    args = ap.parse_args(argv)
    try:
        penalties = [float(p) for p in args.penalties.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as e:
        ap.error(f"--penalties / --seeds: {e}")
    print(f"## The rate penalty: default network, {args.epochs} epochs, RTL on "
          f"{args.images} test images (Verilator, images back to back), board {args.board}\n")
    head = (f"{'penalty':>7} {'seed':>4} {'float %':>7} {'int8 %':>6} {'RTL %':>6} {'mism':>4} "
            f"{'rate L0':>7} {'rate L1':>7} {'ev->L1':>6} {'ev->L2':>6} {'lanes':>10} {'words':>8} "
            f"{'interval':>8} {'model':>6} {'MHz':>5} {'inf/s':>6} {'s':>5}")
    rows = []
    for p in penalties:
        for s in seeds:
            run, secs, err = _run(args.out, p, s, args)
            if err:
                print(f"{run}: {err}", file=sys.stderr)
                continue
            m = json.loads((run / "metrics.json").read_text())
            sim = json.loads((run / "sim.json").read_text())
            chosen = json.loads((run / "plan.json").read_text())["chosen"]
            layers = sim["layers"]
            ev = [layers[n]["events_in"] if n < len(layers) else 0.0 for n in (1, 2)]
            rows.append(
                f"{p:>7g} {s:>4} {100 * m['test_accuracy']:>7.1f} {100 * m['int_accuracy']:>6.1f} "
                f"{100 * sim['rtl_accuracy']:>6.1f} {sim['mismatches']:>4} "
                f"{m['firing_rates'][0]:>7.3f} {m['firing_rates'][1]:>7.3f} "
                f"{ev[0]:>6.0f} {ev[1]:>6.0f} {','.join(map(str, chosen['lanes'])):>10} "
                f"{','.join(map(str, chosen.get('words') or [])):>8} "
                f"{sim['interval_cycles']:>8.0f} {chosen['interval_cycles']:>6.0f} "
                f"{chosen['fmax_mhz']:>5.1f} "
                f"{1e6 * chosen['fmax_mhz'] / sim['interval_cycles']:>6.0f} {secs:>5.0f}")
            print(rows[-1] if len(rows) > 1 else head + "\n" + rows[-1], flush=True)
    print("\n(interval: cycles between image completions, measured; model: the planner's "
          "prediction; inf/s: the plan's predicted Fmax / the measured interval; s: this "
          "run's seconds, steps already done skipped)")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
