"""The flow as a list of named steps over one run folder.

Each step reads what earlier steps wrote into the run folder and writes its
own output file, and records in ``RUN/.flow/STEP.json`` what it consumed (its
options, the sha256 of its input files), what it wrote and whether it ended
well (see :func:`execute`).  ``spikeforge run`` skips a step only when that
record says it is done with the same options and inputs, so an interrupted
run resumes where it stopped, a failed step (a verify with mismatches) or a
changed option (``--weight-bits``) is redone with every step after it, and
``--from-step`` redoes a step and all after it.  Every step is also a
sub-command (``spikeforge quantize RUN``...), called with the same options,
that leaves the same record.

    train     RUN/model.safetensors, config.json, metrics.json, training_curve.png
    quantize  RUN/weights.sfimg (the integer network), metrics: int_accuracy ...
    plan      RUN/plan.json (lanes per layer for a board: hw/plan.py), plan.png
    export    RUN/hw/*.hex + memories.json (memory images for the RTL, the plan's lanes)
    verify    RUN/sim.json: the RTL under Verilator on test images, spike for spike
              against the golden model (``spikeforge sim`` writes the same file
              without failing on a mismatch)
    report    RUN/report.txt (the summary table) and plots: confusion.png,
              raster.png, firing_rates.png, cycles.png
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from spikeforge import files
from spikeforge.errors import SpikeforgeError
from spikeforge.sw.train import TrainConfig

# The embedded default: ConvSNN on the 5,000 shipped MNIST digits, sized so
# that the whole flow finishes in minutes on 2 CPU cores.  Bigger:
# `spikeforge run --set channels=[48,48] --set hidden=128 --epochs 20`.
# The rate penalty: 3-7x fewer spikes out of layers 0 and 1 (measured with MSE), so fewer events
# for the engine to take (its cycles); the cross-entropy loss needs about 10x
# the MSE loss's penalty for rates near the same, and over 5 seeds this recipe
# gave 97.0 % int8 on average against the MSE one's 96.6 %, at 8 % fewer
# inferences/s (README: benchmarks/bench_recipe.py).  The penalty ramps in over
# the first 2 epochs (at full strength from the first step it switched every
# layer off for good on seed 8 of 10), and the weights kept are their moving
# average over the steps (decay 0.999): over seeds 0-9, 97.19 % int8 on
# average (96.3 .. 97.8, no silent network) against 97.01 % with the ramp
# alone, at 12.5 % fewer inferences/s.
DEFAULT = TrainConfig(model="convsnn", dataset="mnist5k", epochs=16, timesteps=4, batch_size=20,
                      lr=1e-3, loss="ce", rate_penalty=0.2, penalty_warmup=2, ema=0.999,
                      overrides={"channels": (16, 32), "hidden": 64})

IMAGE = "weights.sfimg"


class FlowError(SpikeforgeError, ValueError):
    """A run folder that lacks what a step needs."""


@dataclass(frozen=True)
class Step:
    """One step of the flow: ``step_{name}(run, args)``, what it reads
    (``inputs``, files in the run folder), what it writes (``outputs``; the
    first one names the step's result) and which command-line options it
    depends on (``options(args)`` -> a JSON-able dict)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    options: Callable[[object], dict]
    # outputs changed since the step wrote them make it stale; train's need
    # only exist (a model put into the run folder is used, never retrained over)
    check_outputs: bool = True
    # options that depend on the run folder too (quantize's default calibration)
    run_options: Callable[[Path, object], dict] | None = None

    @property
    def output(self) -> str:
        return self.outputs[0]

    @property
    def fn(self) -> Callable[[Path, object], object]:
        return globals()[f"step_{self.name}"]  # looked up at call time (tests replace steps)


def _need(run: Path, name: str, step: str) -> Path:
    path = run / name
    if not path.exists():
        how = f"train --out {run}" if step == "train" else f"{step} {run}"
        raise FlowError(f"{path} is missing: run `spikeforge {how}` first")
    return path


def image_data(meta: dict, fallback: str = "mnist5k") -> tuple[str, int]:
    """The data set and seed a weight image's metadata names (checked)."""
    dataset, seed = meta.get("dataset", fallback), meta.get("seed", 0)
    if not isinstance(dataset, str):
        raise FlowError(f"{IMAGE}: meta.dataset must be a string, not {dataset!r:.40}")
    if type(seed) is not int or not 0 <= seed < 1 << 63:
        raise FlowError(f"{IMAGE}: meta.seed must be an integer in 0..2**63-1, not {seed!r:.40}")
    return dataset, seed


def load_data(dataset: str, seed: int, spec, where: str):
    """The data set ``dataset`` (its ``seed``), checked to give the input
    shape network ``spec`` takes: an error names ``where`` the data set's
    name came from (a file's field)."""
    from spikeforge.sw import data as sfdata
    try:
        ds = sfdata.load(dataset, seed=seed)
    except SpikeforgeError as e:
        raise FlowError(f"{where}: {e}") from None
    shape = list(ds.x_test.shape[2:])
    if shape != list(spec.input_shape):
        raise FlowError(f"{where}: the data set {dataset!r} gives inputs of "
                        f"{'x'.join(map(str, shape))}; the network takes "
                        f"{'x'.join(map(str, spec.input_shape))}")
    return ds


def image_dataset(run: Path, net, meta: dict, fallback: str = "mnist5k",
                  fallback_from: str | None = None):
    """The data set the weight image's metadata names (:func:`image_data`;
    ``fallback`` when it names none, taken from ``fallback_from``), checked
    by :func:`load_data`."""
    dataset, seed = image_data(meta, fallback)
    where = (f"{run / IMAGE}: meta.dataset" if "dataset" in meta
             else fallback_from or f"{run / IMAGE} (no meta.dataset: {dataset})")
    return load_data(dataset, seed, net.spec, where)


def read_metrics(run: Path, *, trained: bool = False) -> dict:
    """RUN/metrics.json, checked (``trained``: with the fields `train` writes
    and `report` shows)."""
    path = _need(run, "metrics.json", "train")
    m = files.read_json(path)
    if trained:
        for key in ("model", "dataset"):
            files.need(m, key, files.STRING, str(path))
        files.need(m, "test_accuracy", files.FRACTION, str(path))
        files.need(m, "train_seconds", files.NONNEG, str(path))
        files.need(m, "firing_rates", files.NUMBERS, str(path))
        e = files.need(m, "energy", files.OBJECT, str(path))
        for key in ("e_snn_pj", "e_ann_fp32_pj"):
            files.need(e, key, files.NONNEG, f"{path}: energy")
        for key in ("int_accuracy", "float_int_class_agreement"):
            files.need(m, key, files.FRACTION, str(path), optional=True)
        files.need(m, "weight_bits", files.POSITIVE_INT, str(path), optional=True)
    return m


def read_sim(run: Path) -> dict | None:
    """RUN/sim.json with the fields `report` shows, checked; None when absent."""
    path = run / "sim.json"
    if not path.exists():
        return None
    sim = files.read_json(path)
    where = str(path)
    files.need(sim, "images", files.POSITIVE_INT, where)
    files.need(sim, "mismatches", files.COUNT, where)
    files.need(sim, "rtl_accuracy", files.FRACTION, where)
    cyc = files.need(sim, "cycles_per_inference", files.OBJECT, where)
    for key in ("mean", "min", "max"):
        files.need(cyc, key, files.POSITIVE, f"{where}: cycles_per_inference")
    files.need(sim, "interval_cycles", files.POSITIVE, where)
    files.need(sim, "first_image_cycles", files.POSITIVE, where, optional=True)
    files.need(sim, "sdram", files.COUNTS, where, optional=True)
    files.need(sim, "banks", files.POSITIVE_INTS, where, optional=True)
    e = files.need(sim, "energy", files.OBJECT, where)
    for key in ("e_synaptic_pj_per_inference", "accumulates_per_inference"):
        files.need(e, key, files.NONNEG, f"{where}: energy")
    for key in ("sim_cycles_per_second", "sim_images_per_second"):
        files.need(sim, key, files.NONNEG, where)
    layers = files.need(sim, "layers", ("a non-empty list of objects", lambda v: isinstance(
        v, list) and bool(v) and all(isinstance(L, dict) for L in v)), where)
    for i, L in enumerate(layers):
        for key in ("busy", "scan", "stall"):
            files.need(L, key, files.NONNEG, f"{where}: layers[{i}]")
    return sim


def step_train(run: Path, args) -> dict:
    from spikeforge.cli import train_config
    from spikeforge.sw.train import train
    return train(train_config(args), run, progress=not args.quiet)


def step_quantize(run: Path, args) -> None:
    """Calibrate (and optionally fine-tune with fake quantization), quantize,
    measure the integer model against the float one, write the weight image."""
    import torch

    from spikeforge import image
    from spikeforge.sw import quantize as q
    from spikeforge.sw.train import evaluate, fit, load_run, write_metrics
    read_metrics(run)  # a damaged metrics.json is refused before any work
    cfg, model = load_run(run)
    qc = q.QuantConfig(weight_bits=args.weight_bits, per_channel=args.per_channel,
                       input_bits=args.input_bits)
    ds = load_data(cfg.dataset, cfg.seed, model.spec, f"{run / 'config.json'}: train.dataset")
    float_acc = evaluate(model, ds.x_test, ds.y_test)["accuracy"]
    q.check_mappable(model.spec)
    if args.qat_epochs:
        torch.manual_seed(cfg.seed)
        with q.fake_quantized(model, qc):
            fit(model, cfg, ds, args.qat_epochs, lr=cfg.lr / 5, progress=not args.quiet,
                label="QAT epoch")
        model.eval()
    n_cal = min(500, len(ds.y_train))
    target = calibration_target(run, args)
    margin = q.calibration_margin(qc, target)
    clips = q.calibrate(model, qc, ds.x_train[:n_cal], ds.y_train[:n_cal], target)
    net = q.quantize(model, qc, clips)
    t0 = time.perf_counter()
    int_acc = q.golden_accuracy(net, ds.x_test, ds.y_test)
    golden_rate = len(ds.y_test) / (time.perf_counter() - t0)
    ag = q.agreement(model, net, ds.x_test)
    layers = [{"decay_shifts": list(l.decay_shifts),
               "decay_error": q.effective_decay(l.decay_shifts) - l.spec.neuron.decay,
               "state_bits": l.state_bits, "acc_bits": l.acc_bits, "input_bits": l.input_bits,
               "current_bounds": list(l.current_bounds()), "clip": c}
              for l, c in zip(net.layers, clips)]
    quant = {"weight_bits": qc.weight_bits, "per_channel": qc.per_channel,
             "input_bits": qc.input_bits, "qat_epochs": args.qat_epochs,
             "calibrate": target, "clip_margin": margin, "calibration_images": n_cal,
             "layers": layers}
    image.write_image(run / IMAGE, net, {"quantization": quant, "dataset": cfg.dataset,
                                        "seed": cfg.seed})
    m = write_metrics(run, {"float_accuracy_before_quantization": float_acc,
                            "int_accuracy": int_acc, "weight_bits": qc.weight_bits,
                            "golden_inferences_per_second": golden_rate, "quantization": quant,
                            **ag})
    print(f"integer accuracy {100 * int_acc:.2f}% (float {100 * float_acc:.2f}%), "
          f"{qc.weight_bits}-bit weights, class agreement float/int "
          f"{100 * m['float_int_class_agreement']:.2f}%, clipping {clips} calibrated by "
          f"{CALIBRATION_WHAT[target]} on {n_cal} training images"
          + (f" (a clip below 1.0 must win by more than {100 * margin:g}% of them)"
             if margin else "") + f" -> {run / IMAGE}")


# what --calibrate scores the integer model by, as the quantize step prints it
CALIBRATION_WHAT = {"accuracy": "accuracy on the labels",
                    "fidelity": "fidelity (agreement with the float model's predictions)"}


def calibration_target(run: Path, args) -> str:
    """``--calibrate``, else the default: ``fidelity`` for a run brought in by
    ``spikeforge import`` (RUN/import.json: the float model is the source
    framework's, whose decisions the integer model should keep), ``accuracy``
    (the labels) for a run trained here."""
    target = getattr(args, "calibrate", None)
    if target is None:
        target = "fidelity" if (Path(run) / "import.json").exists() else "accuracy"
    return target


def _quantize_run_options(run: Path, args) -> dict:
    # accuracy, the only calibration before --calibrate, is left out of the record:
    # the records written then stay valid; an imported run calibrated then is redone.
    # fidelity's clip margin is recorded: a run calibrated without it is redone
    from spikeforge.sw import quantize as q
    target = calibration_target(run, args)
    if target == "accuracy":
        return {}
    return {"calibrate": target, "clip_margin": q.calibration_margin(q.QuantConfig(), target)}


PLAN_IMAGES = 16  # training images whose spike traces drive the lane choice
PLAN = "plan.json"


def make_plan(run: Path, net, meta, board: str = "ulx3s", device: str | None = None,
              lanes=None, words=None) -> dict:
    """The planner's choice of lanes and words for ``board``
    (:func:`spikeforge.hw.plan.plan`, from the spike traces of the first
    training images of the run's data set), ``lanes`` (and ``words``) as a
    validated override; written to ``RUN/plan.json``."""
    from spikeforge.boards.build import BOARDS, board_memories, has_sdram
    from spikeforge.hw import model
    from spikeforge.hw import plan as planner
    if not _of_board_family(board, device):
        raise FlowError(f"device {device}: the {board} carries an {BOARDS[board].DEVICE}; "
                        "another device must be of its family")
    if lanes is not None:   # an override, checked before the traces are taken
        from spikeforge.hw.network import lane_counts
        checked_words(net, lane_counts(net, lanes), words, "--words")
    ds = image_dataset(run, net, meta)
    dataset = image_data(meta)[0]
    work = model.traces(net, ds.x_train[:PLAN_IMAGES])
    device = device or BOARDS[board].DEVICE
    p = planner.plan(net, work, device, board_memories(net, board), lanes=lanes, words=words,
                     sdram=has_sdram(board))
    rec = {"board": board, **p, "traces": f"{PLAN_IMAGES} training images of {dataset}"}
    (run / PLAN).write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def _field(path: Path, key: str, kind, optional: bool = False):
    """Field ``key`` of the JSON file ``path`` (checked to be ``kind``,
    :func:`spikeforge.files.need`), or None when the file does not exist
    (or, ``optional``, has no such field)."""
    if not path.exists():
        return None
    return files.need(files.read_json(path), key, kind, str(path), optional=optional)


def _memories_json(run: Path) -> Path:
    return run / "hw" / "memories.json"


def planned_lanes(run: Path) -> list[int] | None:
    """The lanes of ``RUN/plan.json`` (the override when one was given), or
    None before a plan."""
    return _field(run / PLAN, "lanes", files.POSITIVE_INTS)


def step_plan(run: Path, args) -> dict:
    """``spikeforge plan RUN``: lanes per layer for a board from the cycle and
    cost models; prints the candidates, plots the Pareto fronts."""
    from spikeforge import image, plots
    from spikeforge.hw import plan as planner
    net, meta = image.read_image(_need(run, IMAGE, "quantize"))
    rec = make_plan(run, net, meta, getattr(args, "board", None) or "ulx3s",
                    getattr(args, "device", None), args.lanes, _given_words(args))
    print(planner.table(rec))
    plots.pareto(run / "plan.png", rec)
    return rec


#: an event FIFO's depth: 2 .. 65,536 (the planner's are 8 and 32; a huge
#: one exhausts the simulator's memory)
FIFO_DEPTH = ("an integer in 2..65536", lambda v: files.is_int(v) and 2 <= v <= 1 << 16)


def _of_board_family(board: str, device: str | None) -> bool:
    """Whether ``device`` (None: the board's own) is of ``board``'s FPGA family."""
    from spikeforge.boards.build import BOARDS
    from spikeforge.hw.cost import family
    return device is None or family(device) == family(BOARDS[board].DEVICE)


def planned_board(run: Path) -> tuple[str | None, str | None]:
    """``(board, device)`` of ``RUN/plan.json`` (each checked; None when
    missing)."""
    from spikeforge.boards.build import BOARDS
    from spikeforge.hw.fit import DEVICES
    board = _field(run / PLAN, "board", (f"one of {', '.join(BOARDS)}",
                                         lambda v: isinstance(v, str) and v in BOARDS), True)
    device = _field(run / PLAN, "device", (f"null or one of {', '.join(DEVICES)}",
                                           lambda v: v is None or isinstance(v, str)
                                           and v in DEVICES), True)
    if board and not _of_board_family(board, device):
        raise FlowError(f"{run / PLAN}: device {device} is not of the {board}'s family "
                        f"({BOARDS[board].DEVICE})")
    return board, device


def planned_fifo_depth(run: Path) -> int | None:
    """The event FIFO depth of ``RUN/plan.json`` (its device's), or None
    (no plan, or one written before plans recorded it)."""
    return _field(run / PLAN, "fifo_depth", FIFO_DEPTH, optional=True)


def recorded_fifo_depth(run: Path) -> int:
    """The event FIFO depth ``export`` recorded in ``RUN/hw/memories.json``
    (the engine sim and verify build); the engine's default (8) when it
    recorded none."""
    from spikeforge.hw.streams import EVENT_FIFO_DEPTH as default
    depth = _field(_memories_json(run), "fifo_depth", FIFO_DEPTH, optional=True)
    return default if depth is None else depth


def planned_words(run: Path) -> list[int] | None:
    """The words (input channels per event) of ``RUN/plan.json``, or None (no
    plan, or one written before plans recorded them: whole lane groups)."""
    return _field(run / PLAN, "words", files.POSITIVE_INTS, optional=True)


def recorded_words(run: Path) -> list[int] | None:
    """The words ``export`` recorded in ``RUN/hw/memories.json`` beside the
    lanes, or None (none recorded: whole lane groups)."""
    return _field(_memories_json(run), "words", files.POSITIVE_INTS, optional=True)


def planned_storage(run: Path) -> tuple[list[int], list[int] | None]:
    """``(sdram, banks)`` of ``RUN/plan.json``: the layers whose weights
    stream from the SDRAM and the current memories per layer
    (:func:`spikeforge.hw.fit.storage_options`); ``([], None)`` when it records none."""
    return (_field(run / PLAN, "sdram", files.COUNTS, optional=True) or [],
            _field(run / PLAN, "banks", files.POSITIVE_INTS, optional=True))


def storage_for(run: Path, lanes) -> tuple[list[int], list[int] | None]:
    """The storage export recorded in ``RUN/hw/memories.json`` (the one
    source for verify and build), when ``lanes`` are the lanes it recorded;
    else ``([], None)``: every memory in block RAM, two current memories."""
    if lanes != recorded_lanes(run):
        return [], None
    return (_field(_memories_json(run), "sdram", files.COUNTS, optional=True) or [],
            _field(_memories_json(run), "banks", files.POSITIVE_INTS, optional=True))


def words_for(run: Path, lanes) -> list[int] | None:
    """The words export recorded, when ``lanes`` are the lanes it recorded
    (they go together); else None (a word per lane group)."""
    return recorded_words(run) if lanes == recorded_lanes(run) else None


def _given_words(args) -> list[int] | None:
    """``--words``, which only goes with ``--lanes`` (the lanes it splits)."""
    words = getattr(args, "words", None)
    if words is not None and getattr(args, "lanes", None) is None:
        raise FlowError("--words is given with the lanes it splits: add --lanes")
    return words


def recorded_lanes(run: Path) -> list[int] | None:
    """The lanes ``export`` recorded in ``RUN/hw/memories.json`` (the one
    source for sim, verify and build), or None before an export."""
    return _field(_memories_json(run), "lanes", files.POSITIVE_INTS)


def run_lanes(run: Path, net, lanes) -> list[int]:
    """The engine's lanes for ``run``: ``lanes`` when given, else the recorded ones."""
    from spikeforge.hw.network import lane_counts
    if lanes is None:
        return file_lanes(net, recorded_lanes(run), _need(run, "hw/memories.json", "export"))
    return lane_counts(net, lanes)


def checked_words(net, lanes, words, where) -> list[int] | None:
    """``words`` (or None) checked against ``net`` and its ``lanes``
    (:func:`spikeforge.image.word_lanes`): an error names ``where`` they
    came from (a file, or ``--words``)."""
    from spikeforge import image
    if words is None:
        return None
    try:
        image.word_lanes(net, lanes, words)
    except SpikeforgeError as e:
        raise FlowError(f"{where}: words {list(words)}: {e}") from None
    return words


def file_lanes(net, lanes, path: Path) -> list[int] | None:
    """``lanes`` read from ``path`` (or None), checked against ``net``: an
    error names the file."""
    from spikeforge.hw.network import lane_counts
    if lanes is None:
        return None
    try:
        return lane_counts(net, lanes)
    except SpikeforgeError as e:
        raise FlowError(f"{path}: lanes {lanes}: {e}") from None


def step_export(run: Path, args) -> None:
    """Memory images of the weight image for the RTL ($readmemh hex + a manifest
    that records the lanes: those of ``RUN/plan.json``; ``--lanes`` or a
    missing plan makes the plan first, the override validated and recorded)."""
    from spikeforge import image
    from spikeforge.hw.network import lane_counts  # what the engine accepts
    net, meta = image.read_image(_need(run, IMAGE, "quantize"))
    lanes = file_lanes(net, planned_lanes(run), run / PLAN)
    words = planned_words(run)
    want = None if args.lanes is None else lane_counts(net, args.lanes)
    want_words = _given_words(args)
    if lanes is None or (want is not None and (want != lanes or want_words not in (None, words))):
        board, device = planned_board(run)
        rec = make_plan(run, net, meta, board or "ulx3s", device, want, want_words)
        lanes, words = rec["lanes"], rec["words"]
        print(f"lanes {'given' if want else 'planned'}: {lanes}, words {words} -> {run / PLAN}")
    else:   # the plan's own words, checked against its lanes
        checked_words(net, lanes, words, run / PLAN)
    from spikeforge.hw.fit import check_storage, describe_storage
    fifo = planned_fifo_depth(run)
    sdram, banks = planned_storage(run)
    check_storage(net, lanes, words, sdram, banks, str(run / PLAN))
    board = planned_board(run)[0]
    from spikeforge.boards.build import has_sdram
    if sdram and board and not has_sdram(board):
        raise FlowError(f"{run / PLAN}: sdram {sdram}: the {board} has no SDRAM chip")
    stored = describe_storage(sdram, banks)
    written = image.export_hex(net, run / "hw", lanes, fifo, words, sdram, banks)
    print(f"{len(written)} memory images (P = {lanes}"
          + ("" if words is None else f", words {words}")
          + (f", {stored}" if stored else "")
          + (f", event FIFOs {fifo} deep" if fifo else "") + f") -> {run / 'hw'}")


def exported_memories(run: Path, net, lanes, words=None) -> dict | None:
    """The memory images ``export`` wrote into ``RUN/hw`` (checked against the
    network's memories for ``lanes``, :func:`spikeforge.image.read_exported`):
    what the RTL loads.  None when the run was never exported (``--lanes``
    given): then the RTL's memories hold the weight image's words."""
    from spikeforge import image
    if not (run / "hw" / "memories.json").exists():
        print(f"note: {run / 'hw'} holds no export: the memories hold the words of {IMAGE}")
        return None
    check_export_current(run)
    return image.read_exported(run / "hw", net, lanes, words)


def check_export_current(run: Path) -> None:
    """Refuse ``RUN/hw`` when the export step's record says it was written
    from another weight image than the run's now (a run re-trained or
    re-quantized in place, then built or verified without exporting again:
    the memories would hold the old weights; a plan of other lanes or words
    is caught by :func:`spikeforge.image.read_exported`'s shapes).  A folder
    with no export record (memory images put there by hand) is taken as it
    is."""
    rec = read_record(Path(run), "export")
    if rec is None:
        return
    if rec.get("status") != "ok":
        raise FlowError(f"the last export into {Path(run) / 'hw'} did not end well: run "
                        f"`spikeforge export {run}` again")
    if not isinstance(rec.get("inputs"), dict) or rec["inputs"].get(IMAGE) != _sha256(Path(run) / IMAGE):
        raise FlowError(f"{Path(run) / 'hw'} was exported from another {IMAGE} than "
                        f"{Path(run) / IMAGE}: run `spikeforge export {run}` again")


def step_sim(run: Path, args) -> dict:
    """Play test images through the RTL (Verilator) and compare with the golden model."""
    import torch

    from spikeforge import image
    from spikeforge.sim import runner
    from spikeforge.sw import energy
    net, meta = image.read_image(_need(run, IMAGE, "quantize"))
    ds = image_dataset(run, net, meta)
    n = args.images
    if not 1 <= n <= len(ds.y_test):
        raise FlowError(f"--images must be in 1..{len(ds.y_test)} (the test set of "
                        f"{meta.get('dataset')}), not {n}")
    x, y = ds.x_test[:n], ds.y_test[:n]
    from spikeforge.hw.network import input_events
    beats = sum(len(input_events(net, x[i])) + 1 for i in range(n)) + 1
    depth = 1 << max(12, (beats - 1).bit_length())
    lanes = run_lanes(run, net, args.lanes)
    given = _given_words(args)
    words = (checked_words(net, lanes, given, "--words") if given is not None
             else checked_words(net, lanes, words_for(run, lanes), _memories_json(run)))
    contents = exported_memories(run, net, lanes, words)
    fifo = recorded_fifo_depth(run)
    from spikeforge.hw.fit import check_storage, describe_storage
    sdram, banks = storage_for(run, lanes)
    check_storage(net, lanes, words, sdram, banks, str(_memories_json(run)))
    stored = describe_storage(sdram, banks)
    print(f"building the Verilator model (P = {lanes}"
          + ("" if words is None else f", words {words}")
          + (f", {stored}" if stored else "")
          + (" (a model of the chip)" if sdram else "")
          + f", event FIFOs {fifo} deep) ...")
    sb = runner.build(net, lanes, run / "sim_build", depth=depth, contents=contents,
                      fifo_depth=fifo, words=words, sdram=sdram, banks=banks)
    print(f"simulating {n} images ...")
    sim = runner.run(sb, x, run / "sim_work")
    gold, per_image = runner.compare(net, x, sim)
    bad = [mm for mm in per_image if mm is not None]
    mismatches, first = len(bad), (str(bad[0]) if bad else None)
    waves = None
    if bad and getattr(args, "waves", False):
        # replay only the first mismatching image with tracing on
        i = bad[0].image
        wb = runner.build(net, lanes, run / "sim_build", depth=depth, waves=True,
                          contents=contents, fifo_depth=fifo, words=words, sdram=sdram,
                          banks=banks)
        runner.run(wb, x[i:i + 1], run / "sim_waves")
        waves = str(run / "sim_waves" / "dump.vcd")
        print(f"waveform of image {i}: {waves}")
    preds = torch.tensor([r.prediction for r in sim.images])
    cycles = [r.cycles for r in sim.images]
    layers = []
    for l in range(len(net.layers)):
        per = [r.perf[l] for r in sim.images]
        layers.append({k: sum(p[k] for p in per) / n for k in per[0]} | {"lanes": sb.lanes[l]})
    acs = sum(L["updates"] * L["lanes"] for L in layers)
    total_cycles = sum(cycles)
    out = {
        "images": n, "lanes": sb.lanes, "words": words, "fifo_depth": fifo,
        "sdram": list(sdram), "banks": banks,
        "mismatches": mismatches, "first_mismatch": first,
        "waveform": waves,
        "rtl_accuracy": float((preds == y).float().mean()),
        "golden_accuracy": float((gold.classes == y).float().mean()),
        "rtl_golden_class_agreement": float((preds == gold.classes).float().mean()),
        "cycles_per_inference": {"mean": total_cycles / n, "min": min(cycles), "max": max(cycles)},
        # images fed back to back (LIF / IF: overlapping in the pipeline, so an image's
        # latency includes waiting behind the ones ahead; STCB: start and clear each)
        "interval_cycles": interval_cycles([r.done_at for r in sim.images]),
        "first_image_cycles": cycles[0],  # the latency with nothing ahead of it
        "layers": layers,
        "sim_wall_seconds": sim.wall_seconds,
        "sim_cycles_per_second": total_cycles / sim.wall_seconds,
        "sim_images_per_second": n / sim.wall_seconds,
        "build_seconds": sb.build_seconds,
        "energy": {"accumulates_per_inference": acs, "e_ac_pj": energy.E_AC_PJ,
                   "e_synaptic_pj_per_inference": acs * energy.E_AC_PJ},
    }
    (run / "sim.json").write_text(json.dumps(out, indent=2))
    print(f"{n} images: {mismatches} mismatching, RTL accuracy {100 * out['rtl_accuracy']:.2f}% "
          f"(golden {100 * out['golden_accuracy']:.2f}%), {out['cycles_per_inference']['mean']:.0f}"
          f" cycles/inference (interval {out['interval_cycles']:.0f}), "
          f"{out['sim_cycles_per_second']:.3g} simulated cycles/s")
    return out


def interval_cycles(done_at: list[int]) -> float:
    """Mean cycles between image completions (one image: its completion time)."""
    if len(done_at) == 1:
        return float(done_at[0])
    return (done_at[-1] - done_at[0]) / (len(done_at) - 1)


def step_verify(run: Path, args) -> None:
    out = step_sim(run, args)
    if out["mismatches"]:
        raise VerifyFailed(f"{out['mismatches']} of {out['images']} images differ from the golden "
                           f"model; first: {out['first_mismatch']}")
    print("verify: every layer's spikes at every time step equal the golden model's")


class VerifyFailed(SpikeforgeError):
    """The RTL differs from the golden model (exit status 1)."""

    exit_status = 1


def step_report(run: Path, args) -> None:
    """The summary table (RUN/report.txt) and the plots of a run."""
    from spikeforge import image, plots
    from spikeforge.sw import golden
    m = read_metrics(run, trained=True)
    sim = read_sim(run)
    # the weight image read and checked before anything is written
    net = meta = None
    if (run / IMAGE).exists():
        net, meta = image.read_image(run / IMAGE)
        if len(m["firing_rates"]) != len(net.layers):
            raise FlowError(f"{run / 'metrics.json'}: {len(m['firing_rates'])} firing rates "
                            f"for the {len(net.layers)} layers of {run / IMAGE}")
        if sim and len(sim["layers"]) != len(net.layers):
            raise FlowError(f"{run / 'sim.json'}: {len(sim['layers'])} layers' cycles for the "
                            f"{len(net.layers)} layers of {run / IMAGE}")
        ds = image_dataset(run, net, meta, m["dataset"], f"{run / 'metrics.json'}: dataset")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"
    clock = args.clock_mhz
    rows = [("model / dataset", f"{m['model']} / {m['dataset']}"),
            ("float test accuracy", pct(m["test_accuracy"])),
            ("integer (golden) accuracy", pct(m.get("int_accuracy"))
             + (f"  ({m['weight_bits']}-bit weights)" if m.get("weight_bits") is not None else "")),
            ("float/int class agreement", pct(m.get("float_int_class_agreement")))]
    if sim:
        cyc = sim["cycles_per_inference"]
        rows += [("RTL accuracy (Verilator)", f"{pct(sim['rtl_accuracy'])} on {sim['images']} "
                  f"test images, {sim['mismatches']} mismatching the golden model"),
                 ("cycles per inference", f"{cyc['mean']:.0f} (min {cyc['min']}, max {cyc['max']})"),
                 ("cycles between images", f"{sim['interval_cycles']:.0f} (images back to "
                                           "back)"),
                 ("cycles for an image alone", f"{sim.get('first_image_cycles', cyc['mean']):.0f}"),
                 (f"at {clock:g} MHz", f"{clock * 1e6 / sim['interval_cycles']:.0f} inferences/s, "
                  f"latency {sim.get('first_image_cycles', cyc['mean']) / clock:.1f} us alone, "
                  f"{cyc['mean'] / clock:.1f} us streaming")]
        from spikeforge.hw.fit import describe_storage
        stored = describe_storage(sim.get("sdram"), sim.get("banks"))
        if stored:
            rows.append(("engine storage", stored))
        from spikeforge.boards.build import read_reports
        for board, rep in read_reports(run).items():
            if "inferences_per_second" in rep:
                where = str(run / "build" / board / "report.json")
                for key in ("fmax_mhz", "latency_us", "inferences_per_second"):
                    files.need(rep, key, files.POSITIVE, where)
                rows.append((f"{board} at Fmax {rep['fmax_mhz']:.1f} MHz",
                             f"latency {rep['latency_us']:.1f} us, "
                             f"{rep['inferences_per_second']:.0f} inferences/s"))
        rows += [("RTL synaptic energy",
                  f"{sim['energy']['e_synaptic_pj_per_inference'] / 1e6:.3f} uJ/inference "
                  f"({sim['energy']['accumulates_per_inference']:.3g} accumulates)"),
                 ("simulation speed", f"{sim['sim_cycles_per_second']:.3g} cycles/s, "
                  f"{sim['sim_images_per_second']:.2f} images/s")]
    rows += [("energy estimate SNN / ANN fp32", f"{m['energy']['e_snn_pj'] / 1e6:.3f} uJ / "
                                               f"{m['energy']['e_ann_fp32_pj'] / 1e6:.3f} uJ"),
             ("firing rates per layer", " ".join(f"{r:.3f}" for r in m["firing_rates"])),
             ("train time", f"{m['train_seconds']:.0f} s")]
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    (run / "report.txt").write_text(text + "\n")
    print(text)

    if net is not None:
        res = golden.run(net, ds.x_test)
        plots.confusion(run / "confusion.png", ds.y_test, res.classes, net.spec.classes,
                        f"integer model, {len(ds.y_test)} test images")
        layers = net.spec.layers
        plots.raster(run / "raster.png",
                     [golden.unpack(s[:, 0], l.out_features) for s, l in zip(res.spikes, layers)],
                     f"golden-model spikes of test image 0 (label {int(ds.y_test[0])})")
        int_rates = [float(golden.unpack(s, l.out_features).float().mean())
                     for s, l in zip(res.spikes, layers)]
        plots.bars(run / "firing_rates.png", {"float": m["firing_rates"], "integer": int_rates},
                   "spikes per neuron and step", "firing rate per layer")
    if sim:
        plots.bars(run / "cycles.png", {k: [L[k] for L in sim["layers"]]
                                        for k in ("busy", "scan", "stall")},
                   "cycles per inference", "RTL cycle breakdown per layer")


# training options added after runs were recorded, with the value those runs
# trained with: left out of the record at that value, so the records written
# before them stay valid (a run with another value is retrained)
_TRAIN_ADDED = {"penalty_warmup": 0, "ema": 0.0}


def _train_options(args) -> dict:
    import dataclasses

    from spikeforge.cli import train_config
    opts = dataclasses.asdict(train_config(args))
    return {k: v for k, v in opts.items() if k not in _TRAIN_ADDED or v != _TRAIN_ADDED[k]}


def _pick(*names):
    return lambda args: {n: getattr(args, n, None) for n in names}


STEPS_LIST = [
    Step("train", (), ("model.safetensors", "config.json"), _train_options, check_outputs=False),
    Step("quantize", ("model.safetensors", "config.json"), (IMAGE,),
         _pick("weight_bits", "qat_epochs", "per_channel", "input_bits"),
         run_options=_quantize_run_options),
    # the RTL loads the memory images: a changed hex file makes export and verify stale
    Step("plan", (IMAGE,), (PLAN,), _pick("board", "device", "lanes")),
    Step("export", (IMAGE, PLAN), ("hw/memories.json", "hw/*.hex"), _pick("lanes")),
    Step("verify", (IMAGE, "hw/memories.json", "hw/*.hex"), ("sim.json",),
         _pick("lanes", "images")),
    Step("report", ("metrics.json", "sim.json", IMAGE), ("report.txt",), _pick("clock_mhz")),
]
STEPS = tuple(s.name for s in STEPS_LIST)
STEP = {s.name: s for s in STEPS_LIST}

# --------------------------------------------------------------------------- integrity
#
# Each step leaves RUN/.flow/STEP.json: its options, the sha256 of every input
# and output file, and its outcome ("ok" or "failed", with the error).  A step
# is done only when that record says ok, its options and inputs are the ones
# it would use now and its outputs are still the ones it wrote; `spikeforge
# run` redoes the first step that is not done and every step after it.

FLOW_DIR = ".flow"


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hashes(run: Path, names: tuple[str, ...]) -> dict:
    """sha256 per name; a name with ``*`` (``hw/*.hex``) stands for every file
    it matches, hashed together with their names (no match: the empty hash)."""
    out = {}
    for n in names:
        if "*" in n:
            h = hashlib.sha256()
            for p in sorted(Path(run).glob(n)):
                h.update(f"{p.name}:{_sha256(p)}\n".encode())
            out[n] = h.hexdigest()
        else:
            out[n] = _sha256(run / n)
    return out


def _options(step: Step, args, run: Path) -> dict:
    # through JSON, as the record holds them (tuples become lists)
    opts = step.options(args)
    if step.run_options is not None:
        opts = {**opts, **step.run_options(run, args)}
    return json.loads(json.dumps(opts))


def record_path(run: Path, name: str) -> Path:
    return Path(run) / FLOW_DIR / f"{name}.json"


def read_record(run: Path, name: str) -> dict | None:
    """The record of step ``name`` in ``run``; None if absent or unreadable
    (either way the step is not done)."""
    path = record_path(run, name)
    if not path.exists():
        return None
    try:
        return files.read_json(path)
    except files.FileError:
        return None


def pending(run: Path, step: Step, args) -> str | None:
    """Why ``step`` must be (re)done in ``run`` with ``args``; None when done."""
    rec = read_record(run, step.name)
    if rec is None:
        return "not done yet"
    if rec.get("status") != "ok":
        status = rec.get("status", "running")
        return f"it {'did not finish' if status == 'running' else status} last time"
    now = _options(step, args, run)
    if rec.get("options") != now:
        old = rec.get("options") if isinstance(rec.get("options"), dict) else {}
        changed = sorted(k for k in set(now) | set(old) if old.get(k) != now.get(k))
        return f"options changed: {', '.join(changed) or 'some'}"
    if rec.get("inputs") != _hashes(run, step.inputs):
        return "its input files changed"
    outs = _hashes(run, step.outputs)
    if None in outs.values():
        return "its output files are missing"
    if step.check_outputs and rec.get("outputs") != outs:
        return "its output files changed"
    return None


def _write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def execute(step: Step, run: Path, args):
    """Run ``step`` on ``run`` and record what it consumed and its outcome;
    what the step returns.  An error is recorded as "failed" and raised again
    (but where this call made the run folder and nothing else is in it, the
    record and the folders it made are removed: :func:`_remove_new`);
    an interrupted step leaves its record "running" (not done; an export's
    half-written ``RUN/hw`` is refused, :func:`check_export_current`)."""
    run = Path(run)
    options = _options(step, args, run)  # checked before a new run folder is made
    # the folders the mkdir below makes, deepest first (from the path with
    # its ``..`` resolved: never a folder that was there before)
    full = Path(os.path.abspath(run))
    made = [p for p in (full, *full.parents) if not p.exists()]
    run.mkdir(parents=True, exist_ok=True)
    path = record_path(run, step.name)
    record = {"step": step.name, "options": options, "inputs": _hashes(run, step.inputs)}
    # from here on the step is not done until it ends well
    _write_record(path, {**record, "status": "running"})
    t0 = time.time()
    try:
        result = step.fn(run, args)
    except SpikeforgeError as e:
        if made and _remove_new(path, made):
            raise
        _write_record(path, {**record, "status": "failed", "error": str(e),
                             "outputs": _hashes(run, step.outputs),
                             "seconds": time.time() - t0})
        raise
    _write_record(path, {**record, "status": "ok", "outputs": _hashes(run, step.outputs),
                         "seconds": time.time() - t0})
    return result


def _remove_new(record: Path, made: list[Path]) -> bool:
    """After a failed step: its ``record``, then the folders :func:`execute`
    made for it (``made``, deepest first), removed while they are empty; False
    (the record to be written again) if the run folder holds anything else."""
    try:
        record.unlink(missing_ok=True)
        if record.parent.exists():
            record.parent.rmdir()
        made[0].rmdir()   # the run folder
    except OSError:  # not empty: the step (or another process) wrote into it
        return False
    for folder in made[1:]:   # and the parents made for it, while empty
        try:
            folder.rmdir()
        except OSError:
            break
    return True


def run(args) -> int:
    """All steps in order on ``args.out``: a step that is done (:func:`pending`)
    is skipped unless an earlier one was redone or ``--from-step`` names it or
    an earlier one; report always runs.  The exit status is the verification's
    (a mismatch raises :class:`VerifyFailed`, exit status 1).

    Under torchrun, rank 0 runs the flow as above and tells the other
    processes whether it trains: they train beside it, or not, and stop
    there, having written nothing."""
    from spikeforge.sw import train as sftrain
    if not sftrain.is_main_process():
        if sftrain.share_train_decision(False):
            step_train(Path(args.out), args)
        return 0
    out = Path(args.out)  # made by its first step (execute)
    redo = None  # why every remaining step is redone
    for step in STEPS_LIST:
        if step.name == args.from_step:
            redo = redo or f"--from-step {step.name}"
        if step.name == "train" and (out / "import.json").exists():
            # a model brought in by `spikeforge import`: never trained over
            sftrain.share_train_decision(False)
            print(f"[train] {out} holds an imported model ({out / 'import.json'}); skipping")
            continue
        why = redo or pending(out, step, args)
        if step.name == "train":  # torchrun's other processes train with rank 0, or stop
            sftrain.share_train_decision(why is not None)
        if why is None and step.name != "report":
            print(f"[{step.name}] done earlier with these options and inputs "
                  f"({out / step.output}); skipping")
            continue
        print(f"[{step.name}]" + (f" ({why})" if why and step.name != "report" else ""))
        execute(step, out, args)
        redo = redo or f"after {step.name}"  # what follows a redone step is stale
    return 0
