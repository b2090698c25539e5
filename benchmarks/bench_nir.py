"""From snnTorch (Norse, SpikingJelly) to spikeforge's integer golden model through NIR.

    .venv/bin/python benchmarks/bench_nir.py [--framework snntorch|norse|spikingjelly] [--steps 400]
        [--timesteps 8] [--out runs/bench_nir] [--weight-bits 8,4] [--per-channel]
        [--calibrate accuracy|fidelity] [--verify N]

Trains a small conv net in the framework itself on mnist5k (conv16 3x3 -
LIF - max pool 2 - conv32 3x3 - LIF - max pool 2 - fc64 - LIF - fc10 - LIF,
pixel / 255 fed every step), exports it with the framework's own NIR
exporter, brings it in with ``spikeforge import``, quantizes it with
``spikeforge quantize`` (its default for an imported run: weight clipping
calibrated for fidelity, the integer model's agreement with the float
model's predictions; ``--calibrate accuracy`` for the labels) and prints, on
the 1,000 test images, each model's accuracy and its class agreement with
the framework's own predictions (the class with most output spikes; ties to
the lowest index, as both do), and for comparison the integer models
without clipping.
``--verify N`` also runs ``spikeforge export`` + ``verify`` (RTL under
Verilator) on N test images and adds the RTL's agreement.

snnTorch 1.0: trained with scalar beta 0.9, threshold 1, reset by
subtraction; exported from a copy with per-neuron parameter tensors and
AvgPool2d in place of MaxPool2d (its exporter refuses scalars and
MaxPool2d), imported with ``--source snntorch --avgpool-as-max``.
Norse 1.1: LIFBoxCell (tau_mem_inv 100 at dt 1e-3: decay 0.9, input gain
0.1), threshold 0.1 (1 in units of the gain, as the snnTorch net), reset to
zero; ``to_nir`` writes None for MaxPool2d and Flatten, so
those nodes are filled in as SumPool2d -> Threshold(0) and Flatten before
the file is written; imported with ``--source norse``.
SpikingJelly 2.0 (``make setup`` installs it with --no-deps): LIFNode tau 10
(decay 0.9), ``decay_input=False`` (input gain 1), threshold 1, reset to zero
(its exporter refuses the soft reset), multi-step mode; exported with its
``export_to_nir`` from a copy with AvgPool2d in place of MaxPool2d (which it
cannot export), imported with ``--source spikingjelly --avgpool-as-max``
(its neurons fire at ``v >= v_threshold``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spikeforge import cli, image
from spikeforge.sw import data as sfdata
from spikeforge.sw import golden
from spikeforge.sw.train import load_run


def conv_net(pool, neuron):
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), neuron((16, 28, 28)), pool(),
        torch.nn.Conv2d(16, 32, 3, padding=1), neuron((32, 14, 14)), pool(),
        torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 64), neuron((64,)),
        torch.nn.Linear(64, 10), neuron((10,)))


# --------------------------------------------------------------------------- snnTorch


def snntorch_run(net, x, T):
    from snntorch import utils
    utils.reset(net)
    return sum(net(x) for _ in range(T))


def snntorch_model(args, ds, out: Path):
    import snntorch as snn
    from snntorch.export_nir import export_to_nir
    T = args.timesteps
    torch.manual_seed(args.seed)
    spike_grad = snn.surrogate.atan()
    net = conv_net(lambda: torch.nn.MaxPool2d(2), lambda shape: snn.Leaky(
        beta=0.9, threshold=1.0, init_hidden=True, spike_grad=spike_grad,
        reset_mechanism="subtract"))
    train(args, ds, lambda x: snntorch_run(net, x, T), net)
    # snnTorch 1.0 exports neither MaxPool2d nor scalar beta / threshold: a copy with
    # the same weights, per-neuron parameters and AvgPool2d standing for the max pool
    twin = conv_net(lambda: torch.nn.AvgPool2d(2), lambda shape: snn.Leaky(
        beta=torch.full(shape, 0.9), threshold=torch.ones(shape), init_hidden=True,
        reset_mechanism="subtract"))
    for a, b in zip(net, twin):
        if isinstance(a, (torch.nn.Conv2d, torch.nn.Linear)):
            b.load_state_dict(a.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = export_to_nir(twin, torch.zeros(1, 1, 28, 28), ignore_dims=[0])
    path = out / "snntorch.nir"
    import nir
    nir.write(str(path), graph)
    net.eval()
    return (lambda x: snntorch_run(net, x, T)), path, ["--source", "snntorch",
                                                       "--avgpool-as-max"]


# --------------------------------------------------------------------------- Norse


def norse_model(args, ds, out: Path):
    import nir
    import norse.torch as norse
    T = args.timesteps
    torch.manual_seed(args.seed)
    # v_th 0.1 over the input gain dt * tau_mem_inv = 0.1: the snnTorch net's threshold 1
    p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0), v_th=torch.tensor(0.1))
    net = norse.SequentialState(*conv_net(lambda: torch.nn.MaxPool2d(2),
                                          lambda shape: norse.LIFBoxCell(p)))

    def run(x):
        state, total = None, 0
        for _ in range(T):
            z, state = net(x, state)
            total = total + z
        return total

    train(args, ds, run, net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = norse.to_nir(net, torch.zeros(1, 1, 28, 28))
    # Norse 1.1 writes None for the modules it cannot convert: fill them in
    shapes = {"2": (16, 28, 28), "5": (32, 14, 14)}
    for key, node in list(graph.nodes.items()):
        if node is None and key in shapes:
            graph.nodes[key] = nir.SumPool2d(kernel_size=np.array([2, 2]),
                                             stride=np.array([2, 2]), padding=np.array([0, 0]))
            graph.nodes[key + "t"] = nir.Threshold(threshold=np.zeros(1))
            succ = [(a, b) for a, b in graph.edges if a == key]
            graph.edges = [e for e in graph.edges if e not in succ] + [(key, key + "t")] + \
                [(key + "t", b) for _, b in succ]
        elif node is None:
            graph.nodes[key] = nir.Flatten(input_type={"input": np.array([32, 7, 7])},
                                           start_dim=0)
        elif isinstance(node, nir.Conv2d) and node.input_shape is None:
            node.input_shape = (28, 28) if key == "0" else (14, 14)  # h5py cannot write None
        elif isinstance(node, nir.LIF):  # 0-d parameters: nir.write's gzip refuses scalars
            for name in ("tau", "r", "v_leak", "v_threshold", "v_reset"):
                setattr(node, name, np.atleast_1d(np.asarray(getattr(node, name))))
    path = out / "norse.nir"
    nir.write(str(path), graph)
    return run, path, ["--source", "norse"]


# --------------------------------------------------------------------------- SpikingJelly


def spikingjelly_model(args, ds, out: Path):
    import copy

    from spikingjelly.activation_based import functional, layer, neuron, surrogate
    from spikingjelly.activation_based.nir_exchange import export_to_nir
    T = args.timesteps
    torch.manual_seed(args.seed)

    def lif():  # decay 1 - 1/tau = 0.9, input not decayed (gain 1), hard reset to 0
        return neuron.LIFNode(tau=10.0, decay_input=False, v_threshold=1.0, v_reset=0.0,
                              surrogate_function=surrogate.ATan())

    def sj_net(pool):
        return torch.nn.Sequential(
            layer.Conv2d(1, 16, 3, padding=1), lif(), pool(),
            layer.Conv2d(16, 32, 3, padding=1), lif(), pool(),
            layer.Flatten(), layer.Linear(32 * 7 * 7, 64), lif(),
            layer.Linear(64, 10), lif())
    net = sj_net(lambda: layer.MaxPool2d(2))
    functional.set_step_mode(net, "m")  # [T, N, ...]: one call per layer for all steps

    def run(x):
        functional.reset_net(net)
        return net(x.unsqueeze(0).repeat(T, *([1] * x.ndim))).sum(0)

    train(args, ds, run, net)
    # SpikingJelly 2.0's exporter (through nirtorch) refuses MaxPool2d: a copy with the
    # same weights and AvgPool2d standing for the max pool, as for snnTorch
    twin = sj_net(lambda: layer.AvgPool2d(2))
    twin.load_state_dict(copy.deepcopy(net.state_dict()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = export_to_nir(twin, torch.zeros(1, 1, 28, 28))
    path = out / "spikingjelly.nir"
    import nir
    nir.write(str(path), graph)
    net.eval()
    return run, path, ["--source", "spikingjelly", "--avgpool-as-max"]


# --------------------------------------------------------------------------- common


def train(args, ds, run, net) -> None:
    """Train ``net`` in its own framework, or load the weights an earlier run of
    this script saved with the same settings (``--retrain`` to train again)."""
    from safetensors.torch import load_file, save_file
    version = "-v2" if args.framework == "norse" else ""  # v2: Norse threshold 0.1
    tag = f"{args.framework}{version}-s{args.steps}-b{args.batch}-T{args.timesteps}-seed{args.seed}"
    saved = Path(args.out) / args.framework / f"{tag}.safetensors"
    if saved.exists() and not args.retrain:
        net.load_state_dict(load_file(str(saved)))
        print(f"  weights from {saved}")
        net.eval()
        return
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    net.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(ds.y_train), (args.batch,), generator=gen)
        x = ds.x_train[idx][:, 0].float() / 255
        counts = run(x)
        loss = F.cross_entropy(counts * (5.0 / args.timesteps), ds.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(saved))


@torch.no_grad()
def predict(run, x, batch=200) -> torch.Tensor:
    return torch.cat([run(x[i:i + batch][:, 0].float() / 255).argmax(1)
                      for i in range(0, len(x), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--framework", choices=("snntorch", "norse", "spikingjelly"),
                    default="snntorch")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--timesteps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weight-bits", default="8")
    ap.add_argument("--per-channel", action="store_true", help="quantize per output channel")
    ap.add_argument("--calibrate", choices=("accuracy", "fidelity"), default=None,
                    help="spikeforge quantize --calibrate (default: its own, fidelity for an "
                         "imported run)")
    ap.add_argument("--verify", type=int, default=0, help="test images through the RTL")
    ap.add_argument("--out", default="runs/bench_nir")
    ap.add_argument("--retrain", action="store_true", help="train even if weights are saved")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out) / args.framework
    out.mkdir(parents=True, exist_ok=True)
    ds = sfdata.load("mnist5k")
    print(f"training in {args.framework} ({args.steps} steps of {args.batch}, T = "
          f"{args.timesteps}) ...")
    t0 = time.perf_counter()
    make = {"snntorch": snntorch_model, "norse": norse_model,
            "spikingjelly": spikingjelly_model}[args.framework]
    run, path, extra = make(args, ds, out)
    train_s = time.perf_counter() - t0  # training, or loading saved weights, and export
    theirs = predict(run, ds.x_test)
    (out / "predictions.json").write_text(json.dumps(theirs.tolist()))  # for later comparisons
    y = ds.y_test
    rows = [(f"{args.framework} (its own predictions)", float((theirs == y).float().mean()), 1.0)]
    run_dir = out / "run"
    if run_dir.exists():  # this script's own folder: import refuses to write over a model
        shutil.rmtree(run_dir)
    rc = cli.main(["import", str(path), "--out", str(run_dir), "--timesteps",
                   str(args.timesteps), *extra])
    if rc:
        raise SystemExit(rc)
    _, model = load_run(run_dir)
    with torch.no_grad():
        ours = torch.cat([model(sfdata.encode(ds.x_test[i:i + 200], args.timesteps)).argmax(1)
                          for i in range(0, len(y), 200)])
    rows.append(("spikeforge float (imported)", float((ours == y).float().mean()),
                 float((ours == theirs).float().mean())))
    for bits in [int(b) for b in args.weight_bits.split(",")]:
        if cli.main(["quantize", "-q", str(run_dir), "--weight-bits", str(bits),
                     *(["--per-channel"] if args.per_channel else []),
                     *(["--calibrate", args.calibrate] if args.calibrate else [])]):
            raise SystemExit("quantize failed")
        net, meta = image.read_image(run_dir / "weights.sfimg")
        g = torch.cat([golden.run(net, ds.x_test[i:i + 250]).classes
                       for i in range(0, len(y), 250)])
        quant = meta["quantization"]
        clips = ", ".join(f"{layer['clip']:g}" for layer in quant["layers"])
        rows.append((f"spikeforge int{bits} golden ({quant['calibrate']} calibration, "
                     f"clips {clips})", float((g == y).float().mean()),
                     float((g == theirs).float().mean())))
    # calibrated clipping against none at all, for comparison (calibration by accuracy
    # on labels can move away from the source's decisions)
    from spikeforge.sw import quantize as q
    for bits in [int(b) for b in args.weight_bits.split(",")]:
        qc = q.QuantConfig(weight_bits=bits, per_channel=args.per_channel)
        plain = q.quantize(model, qc, [1.0] * len(model.spec.layers))
        gp = torch.cat([golden.run(plain, ds.x_test[i:i + 250]).classes
                        for i in range(0, len(y), 250)])
        rows.append((f"spikeforge int{bits} golden, no clipping", float((gp == y).float().mean()),
                     float((gp == theirs).float().mean())))
    if args.verify:
        for cmd in (["export", "-q", str(run_dir)],
                    ["verify", "-q", str(run_dir), "--images", str(args.verify)]):
            if cli.main(cmd):
                raise SystemExit(f"{cmd[0]} failed")
        sim = json.loads((run_dir / "sim.json").read_text())
        n = sim["images"]
        # the RTL's classes are the golden model's when no image mismatches
        agree = float((g[:n] == theirs[:n]).float().mean()) if sim["mismatches"] == 0 else None
        rows.append((f"RTL int{bits} (Verilator, first {n} images, {sim['mismatches']} "
                     "mismatching the golden model)", sim["rtl_accuracy"], agree))
    w = max(len(r[0]) for r in rows)
    print(f"\n{args.framework} -> NIR -> spikeforge, mnist5k, 1,000 test images "
          f"(training {train_s:.0f} s)")
    print(f"{'model':<{w}}  accuracy  agreement with {args.framework}")
    for name, acc, agree in rows:
        print(f"{name:<{w}}  {100 * acc:7.2f} %  " + ("-" if agree is None else
                                                   f"{100 * agree:.2f} %"))


if __name__ == "__main__":
    main()
