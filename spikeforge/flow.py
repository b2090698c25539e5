"""The flow as a list of named steps over one run folder.

Each step reads what earlier steps wrote into the run folder and writes its
own output file; ``spikeforge run`` skips a step whose output exists, so an
interrupted run resumes where it stopped, and ``--from-step`` redoes a step
and all after it.  Every step is also a sub-command (``spikeforge quantize
RUN``...), called with the same options.

    train     RUN/model.safetensors, config.json, metrics.json, training_curve.png
    quantize  RUN/weights.sfimg (the integer network), metrics: int_accuracy ...
    export    RUN/hw/*.hex + memories.json (memory images for the RTL)
    verify    RUN/sim.json: the RTL under Verilator on test images, spike for spike
              against the golden model (``spikeforge sim`` writes the same file
              without failing on a mismatch)
    report    RUN/report.txt (the summary table) and plots: confusion.png,
              raster.png, firing_rates.png, cycles.png
"""

from __future__ import annotations

import json
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
DEFAULT = TrainConfig(model="convsnn", dataset="mnist5k", epochs=6, batch_size=20,
                      overrides={"channels": (16, 32), "hidden": 64})

IMAGE = "weights.sfimg"


class FlowError(SpikeforgeError, ValueError):
    """A run folder that lacks what a step needs."""


@dataclass(frozen=True)
class Step:
    name: str
    output: str                      # file in the run folder that marks the step done
    fn: Callable[[Path, object], None]


def _need(run: Path, name: str, step: str) -> Path:
    path = run / name
    if not path.exists():
        raise FlowError(f"{path} is missing: run `spikeforge {step} {run}` first")
    return path


def image_data(meta: dict, fallback: str = "mnist5k") -> tuple[str, int]:
    """The data set and seed a weight image's metadata names (checked)."""
    dataset, seed = meta.get("dataset", fallback), meta.get("seed", 0)
    if not isinstance(dataset, str):
        raise FlowError(f"{IMAGE}: meta.dataset must be a string, not {dataset!r:.40}")
    if type(seed) is not int or not 0 <= seed < 1 << 63:
        raise FlowError(f"{IMAGE}: meta.seed must be an integer in 0..2**63-1, not {seed!r:.40}")
    return dataset, seed


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


def step_train(run: Path, args) -> None:
    from spikeforge.cli import train_config
    from spikeforge.sw.train import train
    train(train_config(args), run, progress=not args.quiet)


def step_quantize(run: Path, args) -> None:
    """Calibrate (and optionally fine-tune with fake quantization), quantize,
    measure the integer model against the float one, write the weight image."""
    import torch

    from spikeforge import image
    from spikeforge.sw import data as sfdata
    from spikeforge.sw import quantize as q
    from spikeforge.sw.train import evaluate, fit, load_run, write_metrics
    read_metrics(run)  # a damaged metrics.json is refused before any work
    cfg, model = load_run(run)
    qc = q.QuantConfig(weight_bits=args.weight_bits, per_channel=args.per_channel,
                       input_bits=args.input_bits)
    ds = sfdata.load(cfg.dataset, seed=cfg.seed)
    float_acc = evaluate(model, ds.x_test, ds.y_test)["accuracy"]
    q.check_mappable(model.spec)
    if args.qat_epochs:
        torch.manual_seed(cfg.seed)
        with q.fake_quantized(model, qc):
            fit(model, cfg, ds, args.qat_epochs, lr=cfg.lr / 5, progress=not args.quiet,
                label="QAT epoch")
        model.eval()
    n_cal = min(500, len(ds.y_train))
    clips = q.calibrate(model, qc, ds.x_train[:n_cal], ds.y_train[:n_cal])
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
             "input_bits": qc.input_bits, "qat_epochs": args.qat_epochs, "layers": layers}
    image.write_image(run / IMAGE, net, {"quantization": quant, "dataset": cfg.dataset,
                                        "seed": cfg.seed})
    m = write_metrics(run, {"float_accuracy_before_quantization": float_acc,
                            "int_accuracy": int_acc, "weight_bits": qc.weight_bits,
                            "golden_inferences_per_second": golden_rate, "quantization": quant,
                            **ag})
    print(f"integer accuracy {100 * int_acc:.2f}% (float {100 * float_acc:.2f}%), "
          f"{qc.weight_bits}-bit weights, class agreement float/int "
          f"{100 * m['float_int_class_agreement']:.2f}% -> {run / IMAGE}")


def step_export(run: Path, args) -> None:
    """Memory images of the weight image for the RTL ($readmemh hex + a manifest)."""
    from spikeforge import image
    from spikeforge.hw.network import lane_counts
    net, _ = image.read_image(_need(run, IMAGE, "quantize"))
    lane_counts(net, args.lanes)  # the lane counts the engine (sim, verify, build) accepts
    written = image.export_hex(net, run / "hw", args.lanes)
    print(f"{len(written)} memory images (P = {args.lanes}) -> {run / 'hw'}")


def step_sim(run: Path, args) -> dict:
    """Play test images through the RTL (Verilator) and compare with the golden model."""
    import torch

    from spikeforge import image
    from spikeforge.sim import runner
    from spikeforge.sw import data as sfdata
    from spikeforge.sw import energy
    net, meta = image.read_image(_need(run, IMAGE, "quantize"))
    dataset, seed = image_data(meta)
    ds = sfdata.load(dataset, seed=seed)
    n = args.images
    if not 1 <= n <= len(ds.y_test):
        raise FlowError(f"--images must be in 1..{len(ds.y_test)} (the test set of "
                        f"{meta.get('dataset')}), not {n}")
    x, y = ds.x_test[:n], ds.y_test[:n]
    from spikeforge.hw.network import input_events
    words = sum(len(input_events(net, x[i])) + 1 for i in range(n)) + 1
    depth = 1 << max(12, (words - 1).bit_length())
    print(f"building the Verilator model (P = {args.lanes}) ...")
    sb = runner.build(net, args.lanes, run / "sim_build", depth=depth)
    print(f"simulating {n} images ...")
    sim = runner.run(sb, x, run / "sim_work")
    gold, per_image = runner.compare(net, x, sim)
    bad = [mm for mm in per_image if mm is not None]
    mismatches, first = len(bad), (str(bad[0]) if bad else None)
    waves = None
    if bad and getattr(args, "waves", False):
        # replay only the first mismatching image with tracing on
        i = bad[0].image
        wb = runner.build(net, args.lanes, run / "sim_build", depth=depth, waves=True)
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
        "images": n, "lanes": sb.lanes, "mismatches": mismatches, "first_mismatch": first,
        "waveform": waves,
        "rtl_accuracy": float((preds == y).float().mean()),
        "golden_accuracy": float((gold.classes == y).float().mean()),
        "rtl_golden_class_agreement": float((preds == gold.classes).float().mean()),
        "cycles_per_inference": {"mean": total_cycles / n, "min": min(cycles), "max": max(cycles)},
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
          f" cycles/inference, {out['sim_cycles_per_second']:.3g} simulated cycles/s")
    return out


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
    import torch

    from spikeforge import image, plots
    from spikeforge.sw import data as sfdata
    from spikeforge.sw import golden
    m = read_metrics(run, trained=True)
    sim = read_sim(run)
    pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"
    clock = args.clock_mhz
    rows = [("model / dataset", f"{m['model']} / {m['dataset']}"),
            ("float test accuracy", pct(m["test_accuracy"])),
            ("integer (golden) accuracy", pct(m.get("int_accuracy"))
             + (f"  ({m['weight_bits']}-bit weights)" if "weight_bits" in m else "")),
            ("float/int class agreement", pct(m.get("float_int_class_agreement")))]
    if sim:
        cyc = sim["cycles_per_inference"]
        rows += [("RTL accuracy (Verilator)", f"{pct(sim['rtl_accuracy'])} on {sim['images']} "
                  f"test images, {sim['mismatches']} mismatching the golden model"),
                 ("cycles per inference", f"{cyc['mean']:.0f} (min {cyc['min']}, max {cyc['max']})"),
                 (f"latency at {clock:g} MHz", f"{cyc['mean'] / clock:.1f} us "
                  f"({clock * 1e6 / cyc['mean']:.0f} inferences/s)"),
                 ("RTL synaptic energy", f"{sim['energy']['e_synaptic_pj_per_inference'] / 1e6:.3f}"
                  f" uJ/inference ({sim['energy']['accumulates_per_inference']:.3g} accumulates)"),
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

    if (run / IMAGE).exists():
        net, meta = image.read_image(run / IMAGE)
        dataset, seed = image_data(meta, m["dataset"])
        if len(m["firing_rates"]) != len(net.layers):
            raise FlowError(f"{run / 'metrics.json'}: {len(m['firing_rates'])} firing rates "
                            f"for the {len(net.layers)} layers of {run / IMAGE}")
        ds = sfdata.load(dataset, seed=seed)
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


STEPS_LIST = [
    Step("train", "model.safetensors", step_train),
    Step("quantize", IMAGE, step_quantize),
    Step("export", "hw/memories.json", step_export),
    Step("verify", "sim.json", step_verify),
    Step("report", "report.txt", step_report),
]
STEPS = tuple(s.name for s in STEPS_LIST)


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    redo = False
    for step in STEPS_LIST:
        redo = redo or step.name == args.from_step
        if (out / step.output).exists() and not redo and step.name != "report":
            print(f"[{step.name}] done earlier ({out / step.output}); skipping")
            continue
        print(f"[{step.name}]")
        step.fn(out, args)
        redo = True  # what follows a redone step is stale
    return 0
