"""The ``spikeforge`` command line.

Every sub-command reads and writes files in one run folder, so a run can be
resumed from any step.  Bad input ends with ``error: ...`` on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys

from spikeforge.config import LR_SCHEDULES, MAX_AUGMENT, MAX_TIMESTEPS
from spikeforge.errors import SpikeforgeError


class UsageError(SpikeforgeError):
    """A bad command line: unknown option, missing or malformed value."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is a :class:`UsageError` (one line
    ``error: ...`` and exit status 2 from :func:`main`), not a usage dump."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in ``lo..hi``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
        if v < lo or hi is not None and v > hi:
            raise argparse.ArgumentTypeError(
                f"must be {'at least ' + str(lo) if hi is None else f'in {lo}..{hi}'}, not {v}")
        return v
    parse.__name__ = "integer"
    return parse


def _finite_float(text: str, zero_ok: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not math.isfinite(v) or v < 0 or v == 0 and not zero_ok:
        raise argparse.ArgumentTypeError(
            f"must be a finite number {'of 0 or more' if zero_ok else 'above 0'}, not {text}")
    return v


def _positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    return _finite_float(text, zero_ok=False)


def _nonnegative_float(text: str) -> float:
    """An argparse type: a finite number of 0 or more."""
    return _finite_float(text, zero_ok=True)


def _decay(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not 0 <= v < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1) (0: off), not {text}")
    return v


SEED_LIMIT = (1 << 63) - 1


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpikeforgeError(f"--set expects KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        except ValueError:   # an integer of more digits than Python converts
            raise SpikeforgeError(f"--set {key}: a number of {len(value)} digits is too "
                                  "long") from None
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


# training options whose default belongs to the default model: `run`'s embedded
# network (flow.DEFAULT) has its own recipe, another --model gets TrainConfig's
SCOPED = ("timesteps", "lr", "lr_schedule", "loss", "rate_penalty", "penalty_warmup", "augment",
          "ema")


def _add_train_args(p: argparse.ArgumentParser, defaults) -> None:
    from spikeforge.sw.train import TrainConfig
    plain = TrainConfig()

    def default(name: str, what: str = "") -> str:
        """``default X; Y for MODEL)``: TrainConfig's, then the default model's own."""
        base, own = getattr(plain, name), getattr(defaults, name)
        show = lambda v: f"{v:g}" if isinstance(v, float) else str(v)
        text = f"default: {what}" if what else f"default {show(base)}"
        return text + (f"; {show(own)} for {defaults.model}" if own != base else "") + ")"

    p.add_argument("--model", default=defaults.model, help="model name (default %(default)s)")
    p.add_argument("--dataset", default=defaults.dataset,
                   help="mnist5k, digits8x8, seq1..seq5 or idx:DIR (default %(default)s)")
    p.add_argument("--epochs", type=_int_in(1, 100_000), default=defaults.epochs)
    p.add_argument("--timesteps", type=_int_in(1, MAX_TIMESTEPS), default=None,
                   help="time steps (" + default("timesteps", "the model's"))
    p.add_argument("--batch-size", type=_int_in(1, 1 << 20), default=defaults.batch_size)
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate (" + default("lr"))
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="constant, or cosine: falling to 0 over the run (" + default("lr_schedule"))
    p.add_argument("--seed", type=_int_in(0, SEED_LIMIT), default=defaults.seed)
    p.add_argument("--loss", choices=("mse", "ce"), default=None,
                   help="mse: the output layer's spike rates against the one-hot label; ce: "
                        "cross-entropy on its spike counts (" + default("loss"))
    p.add_argument("--hybrid-epochs", type=_int_in(0, 100_000), default=defaults.hybrid_epochs,
                   help="ConvSNN hybrid pre-training epochs (leaky ReLU, no reset)")
    p.add_argument("--rate-penalty", type=_nonnegative_float, default=None,
                   help="loss += this x the hidden layers' mean firing rate: fewer events, "
                        "fewer engine cycles (" + default("rate_penalty"))
    p.add_argument("--penalty-warmup", type=_int_in(0, 100_000), default=None, metavar="EPOCHS",
                   help="the rate penalty rises from 0 to its value over these first epochs, "
                        "counted from the first spiking one (more than the run's: it never "
                        "reaches it; " + default("penalty_warmup"))
    p.add_argument("--ema", type=_decay, default=None, metavar="DECAY",
                   help="keep the moving average of the weights over the training steps, "
                        "with this decay a step, 0: off (" + default("ema"))
    p.add_argument("--augment", type=_int_in(0, MAX_AUGMENT), default=None, metavar="PIXELS",
                   help="move each training image by a random -N..N pixels a batch ("
                        + default("augment"))
    p.add_argument("--train-limit", type=_int_in(1), default=None,
                   help="train on the first N samples only")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="model builder override, e.g. --set channels=[16,32] (repeatable)"
                        + (f"; defaults: {defaults.overrides}" if defaults.overrides else ""))
    p.set_defaults(base_overrides=dict(defaults.overrides), base_model=defaults.model,
                   base_scoped={name: getattr(defaults, name) for name in SCOPED})


def train_config(args, **fixed):
    from spikeforge.sw.train import TrainConfig
    # the default overrides and recipe belong to the default model (`run`'s
    # small ConvSNN): another --model gets its own builder's defaults and
    # TrainConfig's
    own = args.model == getattr(args, "base_model", args.model)
    base = args.base_overrides if own else {}
    plain = TrainConfig()
    scoped = {}
    for name in SCOPED:
        value = getattr(args, name)
        if value is None:
            value = getattr(args, "base_scoped", {}).get(name) if own else None
        scoped[name] = getattr(plain, name) if value is None else value
    given = _overrides(args.set)
    if "timesteps" in given:   # one number of time steps, recorded once
        if args.timesteps is not None and given["timesteps"] != args.timesteps:
            raise SpikeforgeError(f"--timesteps {args.timesteps} and --set "
                                  f"timesteps={given['timesteps']!r} disagree: give one of them")
        scoped["timesteps"] = given["timesteps"]
    return TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs,
                       batch_size=args.batch_size, seed=args.seed,
                       hybrid_epochs=args.hybrid_epochs, train_limit=args.train_limit,
                       overrides={**base, **given}, **scoped, **fixed)


def cmd_train(args) -> int:
    from pathlib import Path

    from spikeforge import flow
    from spikeforge.sw.train import is_main_process
    if not is_main_process():
        # a process of a torchrun launch other than rank 0: it trains beside
        # rank 0, which alone writes the run folder and its record
        flow.step_train(Path(args.out), args)
        return 0
    m = flow.execute(flow.STEP["train"], Path(args.out), args)
    print(f"test accuracy {100 * m['test_accuracy']:.2f}%  ({m['train_seconds']:.0f} s) -> {args.out}")
    return 0


def _clock_choice(text: str):
    if text == "auto":
        return text
    v = _positive_float(text)
    if not 3.125 <= v <= 400:
        raise argparse.ArgumentTypeError(f"clock must be in 3.125..400 MHz or 'auto', not {text!r}")
    return v


def _report_clock(text: str) -> float:
    """An argparse type: a clock for report's figures, 0.001..10,000 MHz
    (outside that no FPGA clock, and figures of hundreds of digits)."""
    v = _positive_float(text)
    if not 1e-3 <= v <= 1e4:
        raise argparse.ArgumentTypeError(f"clock must be in 0.001..10000 MHz, not {text!r}")
    return v


def _folder(text: str) -> str:
    """An argparse type: a folder's (or an output file's) path, not empty (an
    empty one named the current directory, where the step then wrote its
    files)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, not an empty path (the current "
                                         "directory)")
    return text


def _run_dir(text: str):
    from pathlib import Path
    run = Path(text)
    if not run.is_dir():
        raise SpikeforgeError(f"run folder {run} "
                              + ("is not a folder" if run.exists() else "does not exist"))
    return run


def cmd_build(args) -> int:
    from spikeforge.boards.build import build_run
    rep = build_run(_run_dir(args.run), args.board, lanes=args.lanes, clock_mhz=args.clock_mhz,
                    seed=args.seed, sdf=args.sdf)
    print(json.dumps(rep, indent=2))
    return 0


def cmd_infer(args) -> int:
    from spikeforge.boards.host import infer_run
    if args.batch is not None and args.images is not None:
        raise UsageError("infer: --images and --batch both give the number of images; use one "
                         "(--batch N: N images in the board's batch mode)")
    batch = args.batch is not None
    images = args.batch if batch else (20 if args.images is None else args.images)
    out = infer_run(_run_dir(args.run), args.port, images, baud=args.baud, board=args.board,
                    batch=batch)
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, list)}, indent=2))
    return 0


def cmd_import(args) -> int:
    from pathlib import Path

    from spikeforge.sw import nir_io
    opts = nir_io.ImportOptions(timesteps=args.timesteps, dt=args.dt, source=args.source,
                                reset=args.reset, input_scale=args.input_scale,
                                encoding=args.encoding, avgpool_as_max=args.avgpool_as_max,
                                decay_tolerance=args.decay_tolerance)
    rec = nir_io.import_run(Path(args.model), Path(args.out), opts, dataset=args.dataset,
                            seed=args.seed)
    for note in rec["notes"]:
        print(f"note: {note}")
    print(f"{len(rec['layers'])} layers from {args.model}: float test accuracy "
          f"{100 * rec['float_test_accuracy']:.2f}% on {args.dataset} -> {args.out} "
          f"(next: spikeforge quantize {args.out})")
    return 0


def cmd_export_nir(args) -> int:
    from spikeforge.sw import nir_io
    out = nir_io.export_run(_run_dir(args.run), args.out, dt=args.dt)
    print(f"NIR graph -> {out}")
    return 0


def cmd_regress(args) -> int:
    from pathlib import Path

    from spikeforge import regress
    if args.scheduler is not None and args.workers is not None:
        raise UsageError("spikeforge regress: --workers and --scheduler exclude each other "
                         "(a cluster brings its own workers)")
    if args.seed + args.nets - 1 > regress.MAX_SEED:
        raise UsageError(f"spikeforge regress: --seed + --nets must stay within "
                         f"{regress.MAX_SEED + 1}, not {args.seed + args.nets}")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    import time
    done, t0 = [], time.perf_counter()

    def show(rec):
        done.append(rec)
        if not args.quiet:
            print(regress.line(rec, args.images), flush=True)
        if out is not None:  # the summary so far: a long run cut short still reports
            part = regress.summarize(done, args.images, time.perf_counter() - t0,
                                     args.workers or 1)
            (out / "regress.json").write_text(json.dumps({**part, "complete": False},
                                                         indent=1) + "\n")

    s = regress.regress(range(args.seed, args.seed + args.nets), args.images,
                        workers=args.workers or 1, scheduler=args.scheduler,
                        build_root=args.build_dir, connect_timeout=args.connect_timeout,
                        on_result=show)
    for rec in s["results"]:  # the failures again, after the progress lines
        if rec["mismatches"] or rec["error"]:
            print(regress.line(rec, args.images), file=sys.stderr)
    if out is not None:
        (out / "regress.json").write_text(json.dumps({**s, "complete": True}, indent=1) + "\n")
    print(f"{s['networks']} networks x {args.images} images = {s['cases']} cases: "
          f"{s['mismatching_cases']} mismatching, {len(s['failed_networks'])} networks failed; "
          f"{s['wall_seconds']:.0f} s wall on {s['workers']} worker(s), "
          f"{s['cases_per_second_per_worker']:.2f} cases/s/worker"
          + (f" -> {out / 'regress.json'}" if out else ""))
    if s["mismatching_cases"] or s["failed_networks"]:
        raise regress.RegressFailed(
            f"{s['mismatching_cases']} cases differ from the golden model (networks "
            f"{s['mismatching_networks']}), {len(s['failed_networks'])} networks failed "
            f"({s['failed_networks']})")
    return 0


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight-bits", type=_int_in(2, 16), default=8,
                   help="2..16 (default %(default)s)")
    p.add_argument("--qat-epochs", type=_int_in(0, 100_000), default=0,
                   help="quantization-aware fine-tuning epochs (default %(default)s)")
    p.add_argument("--per-channel", action="store_true", help="per-output-channel scales")
    p.add_argument("--input-bits", type=_int_in(1, 8), default=8,
                   help="pixel bits fed as bit planes to layer 0 (default %(default)s)")
    p.add_argument("--calibrate", choices=("accuracy", "fidelity"), default=None,
                   help="what the per-layer weight clipping is chosen by, on 500 training "
                        "images: accuracy on their labels, or fidelity, the integer model's "
                        "class agreement with the float model's own predictions (default: "
                        "fidelity for a run made by `spikeforge import`, accuracy otherwise)")


def _ints(text: str) -> list[int]:
    """Comma-separated decimal integers, plain digits only (``int`` would take
    ``4_4`` as 44 and other scripts' digits)."""
    parts = [v.strip() for v in text.split(",")]
    if not all(re.fullmatch(r"[+-]?[0-9]+", v) for v in parts):
        raise ValueError(text)
    return [int(v) for v in parts]


def _lanes(text: str):
    try:
        values = _ints(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or a comma list, not {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"lane counts must be positive, not {text!r}")
    return values[0] if len(values) == 1 else values


def _words(text: str) -> list[int]:
    try:
        values = _ints(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, not {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"channels per event must be positive, not {text!r}")
    return values


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lanes", type=_lanes, default=None,
                   help="output-channel lanes P of the engine: one for all layers or one per "
                        "layer, e.g. 4,8,2,2 (plan / export: an override of the planner's "
                        "choice, validated and recorded in RUN/plan.json; sim / verify: "
                        "default those export recorded in RUN/hw/memories.json)")
    p.add_argument("--words", type=_words, default=None,
                   help="with --lanes: input channels per event, one per layer, e.g. 1,4,1,1 "
                        "(1 for layers that take single events; for a conv layer after a "
                        "LIF / IF layer a power of two dividing the previous layer's lanes, "
                        "or those lanes; plan / export: default the planner's best for the "
                        "lanes; sim / verify: a word per lane group)")


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    from spikeforge.hw.fit import DEVICES
    p.add_argument("--board", choices=("ulx3s", "icebreaker"), default=None,
                   help="the board the lanes are planned for (default ulx3s)")
    p.add_argument("--device", choices=tuple(DEVICES), default=None,
                   help="another FPGA of the board's family (e.g. ecp5-45f)")


def _add_sim_args(p: argparse.ArgumentParser) -> None:
    _add_export_args(p)
    p.add_argument("--images", type=_int_in(1), default=200,
                   help="test images to simulate (default %(default)s)")
    p.add_argument("--waves", action="store_true",
                   help="on a mismatch, replay that image with a VCD waveform")


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clock-mhz", type=_report_clock, default=50.0,
                   help="clock for the latency figure (default %(default)s MHz)")


def _step(name):
    def cmd(args) -> int:
        from spikeforge import flow
        if name in flow.STEP:  # a step of the flow: recorded in RUN/.flow
            flow.execute(flow.STEP[name], _run_dir(args.run), args)
        else:
            getattr(flow, f"step_{name}")(_run_dir(args.run), args)
        return 0
    return cmd


def main(argv: list[str] | None = None) -> int:
    from spikeforge import flow
    from spikeforge.sw.train import TrainConfig
    parser = _Parser(prog="spikeforge", description="spikeforge: spiking CNNs from PyTorch training to a verified FPGA bitstream")
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    add = lambda name, help_: sub.add_parser(name, help=help_, parents=[common])

    p = add("train", "train an SNN with surrogate gradients")
    _add_train_args(p, TrainConfig())
    p.add_argument("--out", required=True, type=_folder, help="run folder")
    p.set_defaults(fn=cmd_train)

    for name, help_, extra in (("quantize", "quantize to integers, write RUN/weights.sfimg",
                                 _add_quant_args),
                                ("export", "memory images of the weight image for the RTL",
                                 _add_export_args),
                                ("sim", "run test images through the RTL (Verilator), write "
                                        "RUN/sim.json", _add_sim_args),
                                ("verify", "like sim, and fail on any mismatch with the golden "
                                           "model", _add_sim_args),
                                ("report", "the summary table and plots of a run",
                                 _add_report_args)):
        p = add(name, help_)
        p.add_argument("run", type=_folder, help="run folder")
        if extra:
            extra(p)
        p.set_defaults(fn=_step(name))

    p = add("plan", "lanes per layer for a board from the cycle and cost models: candidates, "
                    "Pareto plot, RUN/plan.json (what export, verify and build use)")
    p.add_argument("run", type=_folder, help="run folder")
    _add_plan_args(p)
    _add_export_args(p)
    p.set_defaults(fn=_step("plan"))

    p = add("build", "bitstream + report.json for a board (Yosys + nextpnr from YoWASP)")
    p.add_argument("run", type=_folder, help="run folder")
    p.add_argument("--board", required=True, choices=("ulx3s", "icebreaker"))
    p.add_argument("--lanes", type=_lanes, default=None,
                   help="lanes P (default: those of RUN/hw/memories.json, else the board's)")
    p.add_argument("--clock-mhz", type=_clock_choice, default=None,
                   help="design clock from the board's PLL, or 'auto': build, then build "
                        "again at 95%% of the Fmax found (default: ULX3S its 25 MHz "
                        "oscillator, iCEBreaker 30 MHz)")
    p.add_argument("--seed", type=_int_in(1, 2**31 - 1), default=None,
                   help="nextpnr's placement seed (default: its own): another seed places "
                        "the same netlist differently, several MHz apart on the ULX3S")
    p.add_argument("--sdf", action="store_true",
                   help="also write nextpnr's routed delays (BUILD/top.sdf, tens of MB on the "
                        "ULX3S) for `python benchmarks/slack_report.py RUN/build/BOARD`")
    p.set_defaults(fn=cmd_build)

    p = add("infer", "send test images to a board over its UART, compare with the golden model")
    p.add_argument("run", type=_folder, help="run folder")
    p.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyUSB0")
    p.add_argument("--images", type=_int_in(1), default=None,
                   help="test images, one at a time over the link (default 20)")
    p.add_argument("--batch", type=_int_in(1), default=None, metavar="N",
                   help="N test images in batch mode: loaded into the board's image store, "
                        "run back to back, the board's own cycle count (ULX3S build)")
    p.add_argument("--baud", type=_int_in(1, 100_000_000), default=1_000_000)
    p.add_argument("--board", choices=("ulx3s", "icebreaker"), default=None)
    p.set_defaults(fn=cmd_infer)

    p = add("regress", "random networks through Verilator against the golden model, on "
                       "worker processes or a Dask cluster")
    p.add_argument("--nets", type=_int_in(1, 1_000_000), default=10,
                   help="random networks (default %(default)s)")
    p.add_argument("--images", type=_int_in(1, 100_000), default=50,
                   help="random images per network (default %(default)s)")
    p.add_argument("--workers", type=_int_in(1, 1024), default=None,
                   help="local worker processes (default 1: in this process; more: a local "
                        "Dask cluster)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on the Dask cluster at ADDRESS, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--connect-timeout", type=_positive_float, default=20.0,
                   help="seconds to wait for --scheduler (default %(default)s)")
    p.add_argument("--seed", type=_int_in(0, (1 << 31) - 1), default=0,
                   help="network k has the seed SEED + k (default %(default)s)")
    p.add_argument("--out", default=None, type=_folder,
                   help="folder for regress.json (the summary)")
    p.add_argument("--build-dir", default=None, type=_folder,
                   help="keep (and reuse) the Verilator builds here, on each worker's machine "
                        "(default: a temporary folder per network)")
    p.set_defaults(fn=cmd_regress)

    p = add("import", "a run folder from a NIR graph (snnTorch, Norse, ...): then quantize, "
                      "export, verify, build, report as for a trained run")
    p.add_argument("model", help="the NIR file (HDF5)")
    p.add_argument("--out", required=True, type=_folder, help="run folder")
    p.add_argument("--timesteps", type=_int_in(1, MAX_TIMESTEPS), default=None,
                   help="time steps T (NIR does not carry them; default: the graph's metadata)")
    p.add_argument("--dt", type=_positive_float, default=None,
                   help="time step for tau: decay = 1 - dt/tau (default: the graph's metadata, "
                        "else the source's)")
    p.add_argument("--source", choices=("nir", "snntorch", "norse", "spikingjelly"),
                   default="nir",
                   help="the exporter's conventions: snntorch (dt 1e-4, reset by subtraction), "
                        "norse (dt 1e-3, tau written as dt*tau), spikingjelly (dt 1e-4, "
                        "v >= threshold, IF r written as 1/dt) (default %(default)s)")
    p.add_argument("--reset", choices=("zero", "subtract", "none"), default=None,
                   help="reset of every spiking layer (NIR holds only v_reset; default: the "
                        "source's)")
    p.add_argument("--input-scale", type=_positive_float, default=1.0,
                   help="the source saw S * pixel / 255 (default %(default)s)")
    p.add_argument("--encoding", choices=("direct", "bitplane"), default=None,
                   help="how the source fed pixels: direct (pixel/255 every step) or bit "
                        "planes MSB first (default: the graph's metadata, else direct)")
    p.add_argument("--avgpool-as-max", action="store_true",
                   help="read AvgPool2d nodes as max (OR) pooling: for a net trained with "
                        "MaxPool2d and exported with AvgPool2d in its place (snnTorch 1.0)")
    p.add_argument("--decay-tolerance", type=_positive_float, default=0.005,
                   help="largest accepted error of the engine's shift-list decay "
                        "(default %(default)s)")
    p.add_argument("--dataset", default="mnist5k",
                   help="data set for evaluation, calibration and verification (default "
                        "%(default)s)")
    p.add_argument("--seed", type=_int_in(0, SEED_LIMIT), default=0)
    p.set_defaults(fn=cmd_import)

    p = add("export-nir", "the run's float model as a NIR graph")
    p.add_argument("run", type=_folder, help="run folder")
    p.add_argument("--out", default=None, type=_folder,
                   help="NIR file (default RUN/model.nir)")
    p.add_argument("--dt", type=_positive_float, default=1e-4,
                   help="time step written with tau = dt / (1 - decay) (default %(default)s)")
    p.set_defaults(fn=cmd_export_nir)

    p = add("run", "the whole flow on the embedded default")
    _add_train_args(p, flow.DEFAULT)
    _add_quant_args(p)
    _add_plan_args(p)
    _add_sim_args(p)
    _add_report_args(p)
    p.add_argument("--out", default="runs/default", type=_folder,
                   help="run folder (default %(default)s)")
    p.add_argument("--from-step", choices=flow.STEPS, default=None,
                   help="redo the flow from this step (default: resume after the last done)")
    p.set_defaults(fn=lambda a: flow.run(a))

    try:
        args = parser.parse_args(argv)
        return args.fn(args)
    except SpikeforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_status", 2)
    except OSError as e:  # the file system said no: a run folder that is a file, a full disk
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
