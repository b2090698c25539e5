"""The default network's training recipe over seeds: float / int8 accuracy
and what the engine makes of each model (layer 0 and 1 firing rates, the
planner's lanes and predicted interval and inferences/s) for each variant.

    .venv/bin/python benchmarks/bench_recipe.py [--seeds 0,1,2,3,4]
        [--recipe NAME="OPTIONS" ...] [--out runs/bench_recipe]

Each variant is ``spikeforge train`` with the options of ``spikeforge run``'s
embedded default (:data:`spikeforge.flow.DEFAULT`), then the variant's own
(later options win), then ``spikeforge quantize`` (8-bit weights; a variant's
quantize options, such as ``--qat-epochs 2`` or ``--per-channel``, go to it) and
``spikeforge plan`` (ULX3S: the cycle model on the run's own events; the
Verilator figure for a run is ``spikeforge export`` and ``verify``).  A seed
moves the default network's int8 accuracy by about a point on the 1,000
mnist5k test images, and so does the machine (the CPU's vector kernels sum in
another order: the same seed trains to another model), so one run says
little: the table gives each seed and the mean.  Without ``--recipe``: the
default recipe (cross-entropy, rate penalty 0.2 ramped in over 2 epochs,
learning rate 1e-3, the weights' moving average), it without the average,
without the ramp, and without both (the default before); on top of that
one, the MSE recipe that was the default before it, cross-entropy at the
MSE recipe's learning rate with three rate penalties, 24 epochs, and a
learning rate of 2e-3.  Finished runs under ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from statistics import mean

from bench_seeds import _call, _fail
from spikeforge import cli
from spikeforge.flow import DEFAULT

# the default before the penalty's warm-up and the weights' average: the
# variants after it were measured on top of that one (README)
BEFORE = "--penalty-warmup 0 --ema 0"
RECIPES = {
    "default": "",
    "no-ema": "--ema 0",
    "no-warmup": "--penalty-warmup 0",
    "before": BEFORE,
    "mse-0.02": f"--loss mse --lr 5e-4 --rate-penalty 0.02 {BEFORE}",   # the default before that
    "ce-0.02": f"--lr 5e-4 --rate-penalty 0.02 {BEFORE}",
    "ce-0.1": f"--lr 5e-4 --rate-penalty 0.1 {BEFORE}",
    "ce-0.2": f"--lr 5e-4 {BEFORE}",
    "24-epochs": f"--epochs 24 {BEFORE}",
    "lr-2e-3": f"--lr 2e-3 {BEFORE}",
}


def default_argv() -> list[str]:
    """``spikeforge train`` options that train :data:`DEFAULT`."""
    d = DEFAULT
    argv = ["--model", d.model, "--dataset", d.dataset, "--epochs", str(d.epochs),
            "--batch-size", str(d.batch_size), "--lr", str(d.lr),
            "--lr-schedule", d.lr_schedule, "--augment", str(d.augment),
            "--rate-penalty", str(d.rate_penalty), "--penalty-warmup", str(d.penalty_warmup),
            "--ema", str(d.ema), "--loss", d.loss]
    if d.timesteps is not None:
        argv += ["--timesteps", str(d.timesteps)]
    for key, value in d.overrides.items():
        argv += ["--set", f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    return argv


def split_options(options: list[str]) -> tuple[list[str], list[str]]:
    """A variant's options as (``spikeforge train``'s, ``spikeforge quantize``'s):
    those the quantize command takes (``--qat-epochs``, ``--per-channel``, ...)
    go to it, the rest to training.  A bad quantize value raises ValueError."""
    quant = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    cli._add_quant_args(quant)
    try:
        known, rest = quant.parse_known_args(options)
    except argparse.ArgumentError as e:
        raise ValueError(str(e)) from None
    given = []
    for action in quant._actions:
        value = getattr(known, action.dest)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        given += [flag] if action.nargs == 0 else [flag, str(value)]
    return rest, given


def _one(run: Path, options: list[str], seed: int) -> dict | None:
    try:
        train_options, quant_options = split_options(options)
    except ValueError as e:
        _fail(f"{run}: quantize options", str(e))
        return None
    # the options a folder was made with: a folder made with others (another
    # default recipe, the variant's options edited) is not reported under them
    used = {"train": [*default_argv(), *train_options], "quantize": quant_options}
    record = run / "recipe.json"
    if record.exists() and json.loads(record.read_text()) != used:
        _fail(f"{run}", f"made with other options ({record}): remove the folder or use "
                        f"another --out")
        return None
    if not (run / "metrics.json").exists():
        rc, text = _call(["train", "-q", *default_argv(), *train_options, "--seed", str(seed),
                          "--out", str(run)])
        if rc:
            _fail(f"{run}: train", text)
            return None
        record.write_text(json.dumps(used))
    if "int_accuracy" not in json.loads((run / "metrics.json").read_text()):
        rc, text = _call(["quantize", "-q", *quant_options, str(run)])
        if rc:
            _fail(f"{run}: quantize", text)
            return None
    if not (run / "plan.json").exists():
        rc, text = _call(["plan", "-q", str(run)])
        if rc:
            _fail(f"{run}: plan", text)
            return None
    m = json.loads((run / "metrics.json").read_text())
    return {**m, "plan": json.loads((run / "plan.json").read_text())["chosen"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--recipe", action="append", default=[], metavar='NAME="OPTIONS"',
                    help="a variant: spikeforge train options on top of the default's, and "
                         "spikeforge quantize options")
    ap.add_argument("--out", default="runs/bench_recipe")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: expected integers S1,S2,...")
    recipes = dict(RECIPES) if not args.recipe else {}
    for item in args.recipe:
        name, sep, options = item.partition("=")
        if not sep or not name:
            ap.error(f"--recipe {item!r}: expected NAME=\"OPTIONS\"")
        recipes[name] = options

    print("## The default network's recipe over seeds (mnist5k, 1,000 test images; "
          "rates: mean spikes a neuron a step out of layers 0 / 1; s: training seconds)\n")
    print(f"{'recipe':<12} {'seed':>4} {'float %':>8} {'int8 %':>7} {'rate L0':>8} "
          f"{'rate L1':>8} {'lanes':>10} {'interval':>8} {'inf/s':>6} {'s':>5}  options")
    for name, options in recipes.items():
        rows = []
        for seed in seeds:
            m = _one(Path(args.out) / name / f"seed{seed}", shlex.split(options), seed)
            if m is None:
                continue
            r, p = m["firing_rates"], m["plan"]
            rows.append((100 * m["test_accuracy"], 100 * m["int_accuracy"], r[0], r[1],
                         p["interval_cycles"], p["inferences_per_second"], m["train_seconds"]))
            lanes = ",".join(map(str, p["lanes"]))
            print(f"{name:<12} {seed:>4} {rows[-1][0]:8.2f} {rows[-1][1]:7.2f} {r[0]:8.3f} "
                  f"{r[1]:8.3f} {lanes:>10} {rows[-1][4]:8.0f} {rows[-1][5]:6.0f} "
                  f"{m['train_seconds']:5.0f}  {options or '(DEFAULT)'}", flush=True)
        if rows:
            cols = list(zip(*rows))
            print(f"{name:<12} {'mean':>4} {mean(cols[0]):8.2f} {mean(cols[1]):7.2f} "
                  f"{mean(cols[2]):8.3f} {mean(cols[3]):8.3f} {'':>10} {mean(cols[4]):8.0f} "
                  f"{mean(cols[5]):6.0f} {mean(cols[6]):5.0f}  "
                  f"int8 {min(cols[1]):.2f} .. {max(cols[1]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
