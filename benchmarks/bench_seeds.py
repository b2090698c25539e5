"""The seeds' tables beside ours: each network on each data set, float / int8 /
RTL accuracy next to the papers' rows, and the time each run took.

    .venv/bin/python benchmarks/bench_seeds.py [--nets convsnn48,sts-resnet,bpsta,stcsnn]
        [--datasets mnist5k,seq1,seq2,seq3,seq4,seq5] [--idx NAME=DIR ...]
        [--epochs N] [--rtl N] [--curve 500,1000,2000,4000] [--train-options "..."]
        [--out runs/bench_seeds]

One run folder per network and data set under ``--out`` (finished steps are
reused, so an interrupted table resumes).  Each run is trained (``spikeforge
train``), quantized to 8-bit weights and, with ``--rtl N``, played through
the RTL under Verilator on N test images against the golden model
(``spikeforge export`` + ``verify``; STS-ResNet's residual blocks included:
the engine forks the block input's events and merges them into the block's
second layer).

The papers' figures (``../shared/papers/NOTES.md``) are on the full 60,000
MNIST training digits; ``mnist5k`` has 4,000.  ``--curve`` trains the first
network on the first data set with the first 500, 1,000, ... training samples
(``--train-limit``) and prints the test accuracy against the training-set
size (``all``: the table's run on the whole training set), which shows how much of a gap the smaller set explains.  ``--idx
NAME=DIR`` adds the user's own IDX files (``idx:DIR``) as data set NAME;
NAME ``mnist`` or ``fashion`` selects the papers' MNIST or Fashion-MNIST
figures.  ``--train-options`` adds ``spikeforge train`` options to every run
(``"--augment 2 --lr-schedule cosine"``: the small training set moved about,
the rate annealed; give such runs their own ``--out``).

The defaults are sized for 2 CPU cores: ConvSNN 48-48 and STS-ResNet at the
paper's T = 10, BPSTA Small at an eighth of its width (16-16-32 channels,
512 hidden), STCSNN's VGG at T = 8.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from spikeforge import cli

SEQUENCES = ("seq1", "seq2", "seq3", "seq4", "seq5")

# the papers' rows (accuracy %, full data sets); keys: our data set names, and
# "mnist" / "fashion" for the user's own IDX copies
PAPER = {
    "ConvSNN 48-48": {"mnist5k": 99.4, "mnist": 99.4, "seq1": 98.6, "seq2": 98.4,
                      "seq3": 99.36, "seq4": 98.8, "seq5": 89.5},
    "STS-ResNet": {"mnist5k": 99.7, "mnist": 99.7, "seq1": 99.26, "seq2": 99.2,
                   "seq3": 99.43, "seq4": 99.1, "seq5": 92.7},
    "BPSTA Small": {"mnist5k": 99.58, "mnist": 99.58},
    "STCSNN ResNet18": {"fashion": 95.05},
}


@dataclass(frozen=True)
class Net:
    model: str
    paper_row: str                    # the paper row of this network
    overrides: tuple[str, ...] = ()
    options: tuple[str, ...] = ()     # further `spikeforge train` options
    datasets: tuple[str, ...] = ("mnist5k",)
    other_rows: tuple[str, ...] = ()  # further paper rows shown beside


NETS = {
    "convsnn48": Net("convsnn", "ConvSNN 48-48", ("channels=[48,48]", "hidden=128"),
                     ("--timesteps", "10"), ("mnist5k", *SEQUENCES),
                     other_rows=("STS-ResNet",)),
    "sts-resnet": Net("sts-resnet", "STS-ResNet", (), ("--timesteps", "10"),
                      ("mnist5k", *SEQUENCES), other_rows=("ConvSNN 48-48",)),
    "bpsta": Net("bpsta-small", "BPSTA Small", ("width=0.125", "hidden=512"),
                 ("--loss", "ce", "--lr", "0.001")),
    "stcsnn": Net("stcsnn-vgg", "STCSNN ResNet18", (), ("--timesteps", "8")),
}


def _call(argv: list[str]) -> tuple[int, str]:
    """``spikeforge ARGV`` in this process; its exit status and printed text."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = cli.main(argv)
    return rc, out.getvalue()


def _last(text: str) -> str:
    return (text.strip().splitlines() or ["(no output)"])[-1]


def _fail(what: str, text: str) -> None:
    print(f"{what}: {_last(text)}", file=sys.stderr)


def _run(net: Net, data_arg: str, run: Path, args, limit: int | None = None) -> dict:
    """Train (quantize, verify) one run folder; its accuracies and seconds."""
    row = {"float": None, "int8": None, "rtl": None, "mismatches": None, "seconds": 0.0,
           "note": ""}
    if not (run / "metrics.json").exists():
        argv = ["train", "-q", "--model", net.model, "--dataset", data_arg,
                "--epochs", str(args.epochs), *net.options, *shlex.split(args.train_options),
                "--out", str(run)]
        argv += [a for s in net.overrides for a in ("--set", s)]
        if limit is not None:
            argv += ["--train-limit", str(limit)]
        rc, text = _call(argv)
        if rc:
            _fail(f"{run}: train", text)
            row["note"] = "train failed"
            return row
    metrics = json.loads((run / "metrics.json").read_text())
    row["float"] = 100 * metrics["test_accuracy"]
    t0 = time.perf_counter()          # training's own seconds are in its metrics
    if limit is None:
        if not (run / "weights.sfimg").exists():
            rc, text = _call(["quantize", "-q", str(run)])
            if rc:
                _fail(f"{run}: quantize", text)
                row["note"] = "quantize failed"
        metrics = json.loads((run / "metrics.json").read_text())
        if "int_accuracy" in metrics:
            row["int8"] = 100 * metrics["int_accuracy"]
        if args.rtl and row["int8"] is not None:
            _rtl(run, args.rtl, row)
    row["seconds"] = metrics.get("train_seconds", 0.0) + time.perf_counter() - t0
    return row


def _rtl(run: Path, images: int, row: dict) -> None:
    sim = run / "sim.json"
    if not (sim.exists() and json.loads(sim.read_text()).get("images") == images):
        rc, text = _call(["export", "-q", str(run)])   # the lanes the planner finds
        if rc:
            _fail(f"{run}: export", text)
            row["note"] = "no RTL: " + _last(text).removeprefix("error: ")
            return
        rc, text = _call(["verify", "-q", str(run), "--images", str(images)])
        if not sim.exists():
            _fail(f"{run}: verify", text)
            row["note"] = "verify failed"
            return
    s = json.loads(sim.read_text())
    row["rtl"], row["mismatches"] = 100 * s["rtl_accuracy"], s["mismatches"]


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _table(rows: list[tuple[str, str, dict, Net]], rtl: int) -> None:
    head = (f"{'network':<11} {'data':<8} {'float %':>8} {'int8 %':>7} "
            f"{'RTL %':>7} {'mism':>5} {'paper %':>8} {'gap':>6} {'other paper row':>22} "
            f"{'s':>6}  note")
    print(f"\n## The seeds' tables beside ours (RTL on {rtl or 0} test images; "
          "gap: ours (int8, else float) - the paper's row; s: training's recorded seconds "
          "plus this invocation's quantize and RTL steps)\n")
    print(head)
    for name, ds, r, net in rows:
        paper = PAPER[net.paper_row].get(ds)
        ours = r["int8"] if r["int8"] is not None else r["float"]
        gap = "-" if paper is None or ours is None else f"{ours - paper:+.2f}"
        other = ", ".join(f"{o} {PAPER[o][ds]}" for o in net.other_rows if ds in PAPER[o])
        print(f"{name:<11} {ds:<8} {_pct(r['float']):>8} {_pct(r['int8']):>7} "
              f"{_pct(r['rtl']):>7} {'-' if r['mismatches'] is None else r['mismatches']:>5} "
              f"{'-' if paper is None else paper:>8} {gap:>6} {other or '-':>22} "
              f"{r['seconds']:6.0f}  {r['note']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(NETS),
                    help=f"comma-separated, of {', '.join(NETS)} (default all)")
    ap.add_argument("--datasets", default=None,
                    help="comma-separated: only these of each network's data sets")
    ap.add_argument("--idx", action="append", default=[], metavar="NAME=DIR",
                    help="the user's IDX files as data set NAME (mnist, fashion, ...)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rtl", type=int, default=0, metavar="N",
                    help="verify each hardware run on N test images (default: no RTL column)")
    ap.add_argument("--curve", default=None, metavar="N1,N2,...",
                    help="learning curve: the first network on the first data set, trained "
                         "on the first N1, N2, ... samples")
    ap.add_argument("--train-options", default="", metavar='"OPTIONS"',
                    help="further spikeforge train options for every run")
    ap.add_argument("--out", default="runs/bench_seeds")
    args = ap.parse_args(argv)

    names = [n for n in args.nets.split(",") if n]
    unknown = [n for n in names if n not in NETS]
    if unknown:
        ap.error(f"unknown network(s) {', '.join(unknown)}; valid: {', '.join(NETS)}")
    idx = {}
    for item in args.idx:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            ap.error(f"--idx {item!r}: expected NAME=DIR")
        idx[name] = folder
    only = set(args.datasets.split(",")) if args.datasets else None
    sizes = [int(s) for s in (args.curve or "").split(",") if s.isdigit() and int(s) > 0]
    if args.curve and len(sizes) != len(args.curve.split(",")):
        ap.error(f"--curve {args.curve!r}: expected positive sample counts N1,N2,...")
    out = Path(args.out)

    rows = []
    for name in names:
        net = NETS[name]
        plan = [(ds, ds) for ds in net.datasets] + [(n, f"idx:{d}") for n, d in idx.items()]
        for ds, data_arg in plan:
            if only is not None and ds not in only:
                continue
            row = _run(net, data_arg, out / name / ds, args)
            rows.append((name, ds, row, net))
            print(f"{name} on {ds}: float {_pct(row['float'])} %, int8 {_pct(row['int8'])} %, "
                  f"RTL {_pct(row['rtl'])} %, {row['seconds']:.0f} s", file=sys.stderr)
    _table(rows, args.rtl)
    if args.train_options:
        print(f"\n(every run trained with {args.train_options})")

    if args.curve:
        if not rows:
            ap.error("--curve: no network and data set selected")
        name, ds, full, net = rows[0]
        data_arg = f"idx:{idx[ds]}" if ds in idx else ds
        print(f"\n## Learning curve: {name} on {ds}, float test accuracy against "
              f"training samples ({args.epochs} epochs)\n")
        print(f"{'samples':>8} {'float %':>8} {'s':>6}")
        for n in sizes:
            r = _run(net, data_arg, out / "curve" / name / ds / str(n), args, limit=n)
            print(f"{n:>8} {_pct(r['float']):>8} {r['seconds']:6.0f}")
        print(f"{'all':>8} {_pct(full['float']):>8} {full['seconds']:6.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
