"""NIR in and out (issue 10): graphs as snnTorch 1.0, Norse 1.1 and SpikingJelly 2.0 write them,
hand-written ones checked against a deliberately naive simulator of the NIR
equations, export -> import giving the same golden output, and refusals.

The snnTorch / Norse / SpikingJelly tests skip when those packages are absent
(``make setup`` installs them)."""

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

nir = pytest.importorskip("nir")

from spikeforge import cli  # noqa: E402
from spikeforge.config import LayerSpec, NetworkSpec, NeuronSpec  # noqa: E402
from spikeforge.sw import golden, models, nir_io  # noqa: E402
from spikeforge.sw import quantize as q  # noqa: E402
from spikeforge.sw.nir_io import ImportOptions, NIRError  # noqa: E402


# --------------------------------------------------------------------------- helpers


def chain(shape, *nodes, metadata=None):
    """A NIR graph input -> nodes... -> output."""
    named = {"input": nir.Input(input_type={"input": np.array(shape)})}
    for i, n in enumerate(nodes):
        named[f"n{i}"] = n
    named["output"] = nir.Output(output_type={"output": np.array([1])})
    keys = list(named)
    return nir.NIRGraph(nodes=named, edges=list(zip(keys[:-1], keys[1:])),
                        metadata=metadata or {}, type_check=False)


def naive(graph, x, dt, reset="zero"):
    """Spike counts [B, N] of a chain graph on input [T, B, ...]: the NIR
    equations of sw/nir_io's docstring, written out node by node."""
    seq = nir_io._chain(graph)
    state = {}
    counts = 0
    for t in range(x.shape[0]):
        h = x[t].double()
        for name, n in seq:
            a = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float64)
            if isinstance(n, nir.Conv2d):
                h = F.conv2d(h, a(n.weight), a(n.bias), padding=tuple(n.padding))
            elif isinstance(n, nir.Affine):
                h = h.flatten(1) @ a(n.weight).T + a(n.bias)
            elif isinstance(n, nir.Flatten):
                h = h.flatten(1)
            elif isinstance(n, (nir.LIF, nir.IF)):
                v, z = state.get(name, (torch.zeros_like(h), torch.zeros_like(h)))
                thr = a(n.v_threshold)
                if isinstance(n, nir.LIF):
                    v = v + dt / a(n.tau) * (a(n.v_leak) - v + a(n.r) * h)
                else:
                    v = v + a(n.r) * h
                if reset == "subtract":
                    v = v - thr * z
                z = (v > thr).double()
                if reset == "zero":
                    v = torch.where(z.bool(), a(n.v_reset).expand_as(v), v)
                state[name] = (v, z)
                h = z
            elif isinstance(n, nir.SumPool2d):
                k = int(np.asarray(n.kernel_size).reshape(-1)[0])
                h = F.avg_pool2d(h, k) * k * k
            elif isinstance(n, nir.Threshold):
                h = (h > a(n.threshold)).double()
            else:
                raise AssertionError(type(n))
        counts = counts + h.flatten(1)
    return counts


def rng_arr(g, *shape, lo=-1.0, hi=1.0):
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).numpy()


def hand_graph(seed=0, leak=0.0, thresholds=None):
    """conv 1->3 3x3 (LIF, per-channel thresholds, r != tau/dt) -> SumPool2d 2 ->
    Threshold -> Flatten -> Affine 48->10 (IF) on 1x8x8 frames, dt = 1e-3."""
    g = torch.Generator().manual_seed(seed)
    thr = np.array(thresholds or [0.7, 1.0, 1.3])
    lif = nir.LIF(tau=np.full((3, 8, 8), 1e-2), r=np.full((3, 8, 8), 4.0),
                  v_leak=np.full((3, 8, 8), leak),
                  v_threshold=np.broadcast_to(thr.reshape(3, 1, 1), (3, 8, 8)).copy(),
                  v_reset=np.zeros((3, 8, 8)))
    return chain((1, 8, 8),
                 nir.Conv2d(input_shape=(8, 8), weight=rng_arr(g, 3, 1, 3, 3), stride=1,
                            padding=1, dilation=1, groups=1, bias=rng_arr(g, 3, lo=0, hi=0.3)),
                 lif,
                 nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                               padding=np.array([0, 0])),
                 nir.Threshold(threshold=np.zeros((3, 4, 4))),
                 nir.Flatten(input_type={"input": np.array([3, 4, 4])}, start_dim=0),
                 nir.Affine(weight=rng_arr(g, 10, 48, lo=-0.5, hi=1.0), bias=rng_arr(g, 10)),
                 nir.IF(r=np.full(10, 0.8), v_threshold=np.full(10, 2.0), v_reset=np.zeros(10)))


def frames(n, shape=(1, 8, 8), seed=1):
    return torch.randint(0, 256, (n, 1, *shape), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def float_counts(model, x_uint8):
    T = model.spec.timesteps
    x = (x_uint8[:, 0].double() / 255).unsqueeze(0).expand(T, *x_uint8[:, 0].shape)
    with torch.no_grad():
        return model.double().run(x).spikes[-1].sum(0).flatten(1)


def fails(argv, capsys, *needles):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- hand-written graphs


@pytest.mark.parametrize("leak", [0.0, 0.05])
def test_hand_graph_matches_naive_nir_simulation(leak):
    graph = hand_graph(leak=leak)
    imp = nir_io.import_graph(graph, ImportOptions(timesteps=6, dt=1e-3))
    s = imp.spec
    assert [l.kind.value for l in s.layers] == ["conv", "fc"]
    assert s.layers[0].pool == 2 and s.layers[0].pool_mode.value == "max"
    assert s.layers[0].neuron.decay == pytest.approx(0.9) and s.layers[1].neuron.kind.value == "if"
    assert s.layers[0].neuron.theta == 1.0   # per-channel thresholds divided into the weights
    assert any("divided into the weights" in n for n in imp.notes)
    x = frames(40)
    ours = float_counts(nir_io.to_model(imp), x)
    ref = naive(graph, (x[:, 0].double() / 255).unsqueeze(0).expand(6, *x[:, 0].shape), 1e-3)
    assert ours.sum() > 20  # the layers do fire
    assert torch.equal(ours, ref)


@pytest.mark.slow
def test_hand_graph_through_files_and_cli(tmp_path, capsys):
    path = tmp_path / "hand.nir"
    nir.write(str(path), hand_graph())
    run = tmp_path / "run"
    assert cli.main(["import", str(path), "--out", str(run), "--timesteps", "4", "--dt", "1e-3",
                     "--dataset", "digits8x8", "--decay-tolerance", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "note: layer 0 (node 'n1'): decay 0.9 -> engine shifts [4, 5, 7]" in out
    rec = json.loads((run / "import.json").read_text())
    assert rec["layers"] == [["n0", "n1", "n2", "n3"], ["n5", "n6"]]
    assert cli.main(["quantize", "-q", str(run)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["imported"] and "int_accuracy" in m
    assert cli.main(["report", "-q", str(run)]) == 0
    assert "nir:hand / digits8x8" in (run / "report.txt").read_text()


def test_spikeforge_metadata_needs_no_options(tmp_path):
    """export_graph records T, dt and each layer's reset; import reads them back."""
    spec = models.convsnn_spec(classes=10, timesteps=3, channels=(4,), hidden=8,
                               input_shape=(1, 8, 8), reset="subtract", decay=0.75)
    torch.manual_seed(0)
    model = models.SpikingNet(spec).eval()
    nir_io.write(tmp_path / "m.nir", nir_io.export_graph(model))
    imp = nir_io.import_graph(nir_io.read(tmp_path / "m.nir"), ImportOptions())
    assert imp.spec.layers == spec.layers and imp.spec.timesteps == 3
    assert imp.spec.encoding == "direct"
    bits = models.convsnn_spec(timesteps=4, channels=(4,), hidden=8, input_shape=(1, 8, 8),
                               encoding="bitplane")
    nir_io.write(tmp_path / "b.nir", nir_io.export_graph(models.SpikingNet(bits)))
    assert nir_io.import_graph(nir_io.read(tmp_path / "b.nir"),
                               ImportOptions()).spec.encoding == "bitplane"
    for (w, b), layer in zip(imp.weights, model.layers):
        assert torch.equal(w.reshape(layer.syn.weight.shape), layer.syn.weight)
        assert torch.equal(b, layer.syn.bias)


# --------------------------------------------------------------------------- the comparison


def grid_graph(metadata=None, node_metadata=None):
    """fc 4 -> 3 IF, weights multiples of 1/4, threshold 1: on 0 / 255 pixels
    (inputs 0 and 1) the potential lands exactly on the threshold."""
    w = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0]])
    node = nir.IF(r=np.ones(3), v_threshold=np.ones(3), v_reset=np.zeros(3),
                  metadata=node_metadata or {})
    return chain((4,), nir.Affine(weight=w, bias=np.zeros(3)), node, metadata=metadata)


def test_import_keeps_the_strict_comparison():
    """NIR fires at v > v_threshold: the import sets neuron.strict (no note of
    an approximation), and the float model then equals the NIR equations
    where v == v_threshold, which the inclusive comparison does not."""
    graph = grid_graph()
    imp = nir_io.import_graph(graph, ImportOptions(timesteps=4))
    assert [l.neuron.strict for l in imp.spec.layers] == [True]
    assert not any(">=" in n or "comparison" in n for n in imp.notes), imp.notes
    x = (torch.randint(0, 2, (64, 1, 1, 1, 4), generator=torch.Generator().manual_seed(2))
         * 255).to(torch.uint8)
    ref = naive(graph, (x[:, 0].double() / 255).unsqueeze(0).expand(4, *x[:, 0].shape), 1.0)
    assert ref.sum() > 20
    assert torch.equal(float_counts(nir_io.to_model(imp), x), ref)
    ls = imp.spec.layers[0]
    inclusive = dataclasses.replace(imp.spec, layers=(dataclasses.replace(
        ls, neuron=dataclasses.replace(ls.neuron, strict=False)),))
    assert not torch.equal(float_counts(models.from_weights(inclusive, imp.weights), x), ref)


def test_comparison_metadata_of_the_graph_and_its_nodes():
    opts = ImportOptions(timesteps=4)
    # the graph-wide ">=" of files exported before neuron.strict existed
    old = nir_io.import_graph(grid_graph(metadata={"threshold_comparison": ">="}), opts)
    assert not old.spec.layers[0].neuron.strict
    # a node's own metadata wins
    node = nir_io.import_graph(grid_graph(metadata={"threshold_comparison": ">="},
                                          node_metadata={"threshold_comparison": ">"}), opts)
    assert node.spec.layers[0].neuron.strict
    node = nir_io.import_graph(grid_graph(node_metadata={"threshold_comparison": ">="}), opts)
    assert not node.spec.layers[0].neuron.strict
    with pytest.raises(NIRError, match=r"^node 'n1': threshold_comparison metadata '=>' is not "):
        nir_io.import_graph(grid_graph(node_metadata={"threshold_comparison": "=>"}), opts)
    with pytest.raises(NIRError, match=r"^the graph: threshold_comparison metadata 1 is not "):
        nir_io.import_graph(grid_graph(metadata={"threshold_comparison": 1}), opts)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("strict", [False, True, "mixed"])
@pytest.mark.parametrize("reset,decay", [("zero", 0.5), ("subtract", 0.875), ("none", 1.0)])
def test_import_of_export_gives_identical_golden_output(tmp_path, reset, decay, strict):
    kind = "if" if decay == 1.0 else "lif"
    neurons = [NeuronSpec(kind, decay=decay, theta=0.5, reset=reset,
                          strict=(n == 1) if strict == "mixed" else strict) for n in range(3)]
    spec = NetworkSpec("rt", (1, 8, 8), 4, (
        LayerSpec("conv", 1, 4, (8, 8), kernel=3, padding=1, pool=2, neuron=neurons[0]),
        LayerSpec("conv", 4, 6, (4, 4), kernel=3, padding=0, neuron=neurons[1]),
        LayerSpec("fc", 24, 10, (1, 1), neuron=neurons[2])), classes=10)
    torch.manual_seed(3)
    model = models.SpikingNet(spec).eval()
    with torch.no_grad():
        for l in model.layers:
            l.syn.weight.mul_(3.0)
    path = tmp_path / "rt.nir"
    nir_io.write(path, nir_io.export_graph(model))
    back = nir_io.to_model(nir_io.import_graph(nir_io.read(path), ImportOptions()))
    assert back.spec.layers == spec.layers
    qc = q.QuantConfig()
    clips = [1.0, 0.8, 0.9]
    a = golden.run(q.quantize(model, qc, clips), frames(64))
    b = golden.run(q.quantize(back, qc, clips), frames(64))
    assert torch.equal(a.scores, b.scores) and torch.equal(a.classes, b.classes)
    assert all(torch.equal(x, y) for x, y in zip(a.spikes, b.spikes))
    assert sum(int(s.sum()) for s in a.spikes) > 0


def test_export_nir_cli_round_trip(tmp_path, capsys):
    src = tmp_path / "hand.nir"
    nir.write(str(src), hand_graph())
    run1, run2 = tmp_path / "r1", tmp_path / "r2"
    assert cli.main(["import", str(src), "--out", str(run1), "--timesteps", "3", "--dt", "1e-3",
                     "--dataset", "digits8x8", "--decay-tolerance", "0.01", "-q"]) == 0
    assert cli.main(["export-nir", str(run1)]) == 0
    assert (run1 / "model.nir").is_file()
    assert cli.main(["import", str(run1 / "model.nir"), "--out", str(run2),
                     "--dataset", "digits8x8", "--decay-tolerance", "0.01"]) == 0
    from safetensors.torch import load_file
    s1, s2 = load_file(str(run1 / "model.safetensors")), load_file(str(run2 / "model.safetensors"))
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    c1 = json.loads((run1 / "config.json").read_text())["spec"]
    c2 = json.loads((run2 / "config.json").read_text())["spec"]
    assert c1["layers"] == c2["layers"]


# --------------------------------------------------------------------------- the public API


def test_from_weights_builds_any_spec_and_refuses_bad_shapes():
    spec = NetworkSpec("api", (1, 2, 2), 3, (LayerSpec("fc", 4, 2, (1, 1),
                       neuron=NeuronSpec("if", theta=1.0)),), classes=2)
    net = models.from_weights(spec, [(torch.eye(2, 4), None)])
    assert net(torch.ones(3, 1, 1, 2, 2)).tolist() == [[3.0, 3.0]]
    with pytest.raises(models.ModelError, match=r"layer 0: weight has shape \[3, 4\]"):
        models.from_weights(spec, [(torch.zeros(3, 4), None)])
    with pytest.raises(models.ModelError, match="1 layers"):
        models.from_weights(spec, [])
    with pytest.raises(models.ModelError, match="not all finite"):
        models.from_weights(spec, [(torch.full((2, 4), float("nan")), None)])


# --------------------------------------------------------------------------- snnTorch / Norse


def _snntorch_net(reset):
    snn = pytest.importorskip("snntorch")

    def leaky(shape):
        return snn.Leaky(beta=torch.full(shape, 0.9), threshold=torch.ones(shape),
                         init_hidden=True, reset_mechanism=reset)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), leaky((4, 8, 8)),
                              torch.nn.AvgPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(64, 10), leaky((10,)))
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[4].weight.mul_(6)
    return net


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_snntorch_export_imports_to_the_same_spike_counts(reset):
    from snntorch import utils
    from snntorch.export_nir import export_to_nir
    net = _snntorch_net(reset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = export_to_nir(net, torch.zeros(1, 1, 8, 8), ignore_dims=[0])
    opts = ImportOptions(timesteps=6, source="snntorch", reset=None if reset == "subtract" else reset)
    imp = nir_io.import_graph(graph, opts)
    assert imp.spec.layers[0].pool_mode.value == "avg"   # AvgPool2d: software only
    model = nir_io.to_model(imp)
    x = frames(50)
    utils.reset(net)
    with torch.no_grad():
        xf = x[:, 0].float() / 255
        theirs = sum(net(xf) for _ in range(6))
    ours = float_counts(model, x)
    assert theirs.sum() > 20
    assert torch.equal(ours, theirs.double())


def test_norse_lifbox_imports_to_the_same_spike_counts():
    norse = pytest.importorskip("norse.torch")
    p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0), v_th=torch.tensor(0.5))
    torch.manual_seed(1)
    net = norse.SequentialState(torch.nn.Conv2d(1, 4, 3, padding=1), norse.LIFBoxCell(p),
                                torch.nn.Flatten(), torch.nn.Linear(256, 10),
                                norse.LIFBoxCell(p))
    with torch.no_grad():
        net[0].weight.mul_(20)
        net[3].weight.mul_(20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = norse.to_nir(net, torch.zeros(1, 1, 8, 8))
    with pytest.raises(NIRError, match=r"node '2' is missing \(None\).*Norse writes None"):
        nir_io.import_graph(graph, ImportOptions(timesteps=5, source="norse"))
    graph.nodes["2"] = nir.Flatten(input_type={"input": np.array([4, 8, 8])}, start_dim=0)
    imp = nir_io.import_graph(graph, ImportOptions(timesteps=5, source="norse"))
    assert imp.spec.layers[0].neuron.decay == pytest.approx(0.9)
    x = frames(50)
    xf = x[:, 0].float() / 255
    state, theirs = None, 0
    with torch.no_grad():
        for _ in range(5):
            z, state = net(xf, state)
            theirs = theirs + z
    ours = float_counts(nir_io.to_model(imp), x)
    assert theirs.sum() > 20
    assert torch.equal(ours, theirs.double())


def _spikingjelly():
    """SpikingJelly 2.0's neuron / layer modules and its own NIR exporter (installed with
    --no-deps by `make setup`); the modules log through loguru."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron, surrogate
    from spikingjelly.activation_based.nir_exchange import export_to_nir
    return functional, layer, neuron, surrogate, export_to_nir


def _spikingjelly_counts(net, x, T, step_mode):
    functional = _spikingjelly()[0]
    xf = x[:, 0].float() / 255
    functional.reset_net(net)
    with torch.no_grad():
        if step_mode == "m":
            return net(xf.unsqueeze(0).repeat(T, *([1] * xf.ndim))).sum(0)
        return sum(net(xf) for _ in range(T))


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("kind", ["lif", "lif decay_input", "if"])
def test_spikingjelly_export_imports_to_the_same_spike_counts(kind, step_mode):
    """SpikingJelly's own export_to_nir of a conv net (LIFNode with either input
    convention, or IFNode; hard reset to 0; AvgPool2d, as its exporter refuses
    MaxPool2d) imported with source spikingjelly gives SpikingJelly's spike
    counts (ties at the threshold: the next test)."""
    functional, layer, neuron, surrogate, export_to_nir = _spikingjelly()
    decay_input = kind == "lif decay_input"

    def node():
        if kind == "if":
            return neuron.IFNode(surrogate_function=surrogate.ATan())
        return neuron.LIFNode(tau=10.0, decay_input=decay_input,
                              surrogate_function=surrogate.ATan())
    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), node(), layer.AvgPool2d(2),
                              layer.Flatten(), layer.Linear(64, 10), node())
    with torch.no_grad():  # decay_input: the input is divided by tau
        net[0].weight.mul_(30 if decay_input else 3)
        net[4].weight.mul_(60 if decay_input else 6)
    functional.set_step_mode(net, step_mode)
    example = torch.zeros(1, 1, 8, 8) if step_mode == "s" else torch.zeros(2, 1, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = export_to_nir(net, example)
    opts = ImportOptions(timesteps=6, source="spikingjelly")
    imp = nir_io.import_graph(graph, opts)
    want = ("if", 1.0) if kind == "if" else ("lif", 0.9)
    for ls in imp.spec.layers:
        assert (ls.neuron.kind.value, ls.neuron.decay) == pytest.approx(want)
        assert ls.neuron.reset.value == "zero" and not ls.neuron.strict
    assert imp.spec.layers[0].pool_mode.value == "avg"   # AvgPool2d: software only
    x = frames(50)
    theirs = _spikingjelly_counts(net, x, 6, step_mode)
    ours = float_counts(nir_io.to_model(imp), x)
    assert theirs.sum() > 100 and (theirs == 0).any()
    assert torch.equal(ours, theirs.double())
    if kind == "if":  # read as plain NIR (IF gain r = 1/dt), it is not SpikingJelly's network
        plain = nir_io.import_graph(graph, ImportOptions(timesteps=6, dt=1e-4))
        assert not torch.equal(float_counts(nir_io.to_model(plain), x), theirs.double())


def test_spikingjelly_fires_at_the_threshold_and_so_does_the_import():
    """SpikingJelly's Heaviside fires at v == v_threshold (its exporter does not
    say so): weights of quarters on binary pixels reach the threshold exactly,
    and the float model of the import (strict False; IF gain dt * r snapped to
    1) counts those spikes; with strict layers it would not."""
    functional, layer, neuron, surrogate, export_to_nir = _spikingjelly()
    g = torch.Generator().manual_seed(3)
    net = torch.nn.Sequential(layer.Flatten(), layer.Linear(16, 6, bias=False), neuron.IFNode(),
                              layer.Linear(6, 4, bias=False), neuron.IFNode())
    with torch.no_grad():
        net[1].weight.copy_(torch.randint(-1, 4, (6, 16), generator=g) / 4)
        net[3].weight.copy_(torch.randint(0, 5, (4, 6), generator=g) / 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = export_to_nir(net, torch.zeros(1, 1, 4, 4))
    imp = nir_io.import_graph(graph, ImportOptions(timesteps=5, source="spikingjelly"))
    assert [ls.neuron.strict for ls in imp.spec.layers] == [False, False]
    x = (torch.randint(0, 2, (64, 1, 1, 4, 4), generator=g) * 255).to(torch.uint8)
    theirs = _spikingjelly_counts(net, x, 5, "s")
    model = nir_io.to_model(imp)
    assert theirs.sum() > 50
    assert torch.equal(float_counts(model, x), theirs.double())
    # ties are common here: the strict comparison changes the counts
    strict = dataclasses.replace(imp.spec, layers=tuple(
        dataclasses.replace(ls, neuron=dataclasses.replace(ls.neuron, strict=True))
        for ls in imp.spec.layers))
    assert not torch.equal(float_counts(models.from_weights(strict, imp.weights), x),
                           theirs.double())


# --------------------------------------------------------------------------- refusals


def _lif(shape, thr=1.0, v_reset=0.0, tau=1e-2):
    return nir.LIF(tau=np.full(shape, tau), r=np.full(shape, tau / 1e-3), v_leak=np.zeros(shape),
                   v_threshold=np.full(shape, thr), v_reset=np.full(shape, v_reset))


def _aff(n_out, n_in):
    return nir.Affine(weight=np.ones((n_out, n_in)), bias=np.zeros(n_out))


def _conv(**kw):
    args = dict(input_shape=(8, 8), weight=np.ones((2, 1, 3, 3)), stride=1, padding=1,
                dilation=1, groups=1, bias=np.zeros(2))
    args.update(kw)
    return nir.Conv2d(**args)


BAD = {
    "cubalif": (chain((64,), _aff(10, 64), nir.CubaLIF(
        tau_syn=np.full(10, 2e-3), tau_mem=np.full(10, 1e-2), r=np.ones(10), v_leak=np.zeros(10),
        v_threshold=np.ones(10), v_reset=np.zeros(10))), ["'n1'", "CubaLIF", "synaptic current"]),
    "li readout": (chain((64,), _aff(10, 64), nir.LI(tau=np.full(10, 1e-2), r=np.ones(10),
                                                     v_leak=np.zeros(10))),
                   ["'n1'", "LI", "non-spiking"]),
    "affine last": (chain((64,), _aff(10, 64), _lif(10), _aff(10, 10)),
                    ["'n2'", "last layer must be LIF or IF"]),
    "stride": (chain((1, 8, 8), _conv(stride=2), _lif((2, 4, 4))), ["'n0'", "stride 1"]),
    "groups": (chain((1, 8, 8), _conv(), _lif((2, 8, 8)), _conv(groups=2), _lif((2, 8, 8))),
               ["'n2'", "groups 2"]),
    "groups empty": (chain((1, 8, 8), _conv(groups=np.array([])), _lif((2, 8, 8))),
                     ["'n0'", "groups must be one integer, not []"]),
    "sum pool alone": (chain((1, 8, 8), _conv(), _lif((2, 8, 8)), nir.SumPool2d(
        kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))),
        ["'n2'", "SumPool2d -> Threshold"]),
    "spatial threshold": (chain((1, 8, 8), _conv(), nir.LIF(
        tau=np.full((2, 8, 8), 1e-2), r=np.full((2, 8, 8), 10.0), v_leak=np.zeros((2, 8, 8)),
        v_threshold=np.linspace(0.5, 1.5, 128).reshape(2, 8, 8), v_reset=np.zeros((2, 8, 8)))),
        ["'n1'", "v_threshold differs between neurons of one output channel"]),
    "decay": (chain((64,), _aff(10, 64), _lif(10, tau=1.7e-3)),
              ["'n1'", "decay 0.411765", "--decay-tolerance"]),
    "v_reset": (chain((64,), _aff(10, 64), _lif(10, v_reset=-0.5)), ["'n1'", "v_reset -0.5"]),
    "dt too big": (chain((64,), _aff(10, 64), _lif(10, tau=5e-4)), ["'n1'", "outside (0, 1]"]),
    "shape": (chain((64,), _aff(10, 63), _lif(10)), ["'n0'", "takes 63 inputs"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_graphs_are_refused_naming_the_node(case, tmp_path, capsys):
    graph, needles = BAD[case]
    path = tmp_path / "bad.nir"
    nir.write(str(path), graph)
    fails(["import", path, "--out", tmp_path / "run", "--timesteps", "4", "--dt", "1e-3",
           "--dataset", "digits8x8"], capsys, *needles)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_bad_topologies_are_refused():
    a, l = _aff(10, 64), _lif(10)
    base = {"input": nir.Input(input_type={"input": np.array([64])}), "a": a, "l": l,
            "output": nir.Output(output_type={"output": np.array([10])})}
    cases = {
        "recurrence": ([("input", "a"), ("a", "l"), ("l", "a"), ("l", "output")], "'a'"),
        "branch": ([("input", "a"), ("input", "l"), ("a", "l"), ("l", "output")], "'input'"),
        "dangling": ([("input", "a"), ("a", "output")], "'l'"),
        "unknown": ([("input", "a"), ("a", "zz")], "'zz'"),
    }
    for name, (edges, needle) in cases.items():
        g = nir.NIRGraph(nodes=dict(base), edges=edges, type_check=False)
        with pytest.raises(NIRError) as e:
            nir_io.import_graph(g, ImportOptions(timesteps=2, dt=1e-3))
        assert needle in str(e.value), (name, str(e.value))


def test_bad_files_and_options(tmp_path, capsys):
    junk = tmp_path / "junk.nir"
    junk.write_bytes(b"not hdf5 at all")
    fails(["import", junk, "--out", tmp_path / "r", "--timesteps", "4"], capsys,
          "not a readable NIR file")
    fails(["import", tmp_path / "absent.nir", "--out", tmp_path / "r", "--timesteps", "4"],
          capsys, "no such file")
    good = tmp_path / "good.nir"
    nir.write(str(good), chain((64,), _aff(10, 64), _lif(10)))
    fails(["import", good, "--out", tmp_path / "r", "--dt", "1e-3", "--dataset", "digits8x8"],
          capsys, "--timesteps")
    fails(["import", good, "--out", tmp_path / "r", "--timesteps", "4", "--dataset", "digits8x8"],
          capsys, "'n1' (LIF)", "--dt")
    fails(["import", good, "--out", tmp_path / "r", "--timesteps", "4", "--dt", "0"], capsys,
          "--dt")
    nir.write(str(good), chain((64,), _aff(7, 64), _lif(7)))
    fails(["import", good, "--out", tmp_path / "r", "--timesteps", "4", "--dt", "1e-3",
           "--dataset", "digits8x8"], capsys, "7 outputs", "10 classes")
    fails(["export-nir", tmp_path / "nope"], capsys, "does not exist")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "weights.sfimg").write_bytes(b"")
    fails(["import", good, "--out", tmp_path / "used", "--timesteps", "4", "--dt", "1e-3",
           "--dataset", "digits8x8"], capsys, "already holds a model (weights.sfimg)")


def test_average_pool_reaches_quantize_as_software_only(tmp_path, capsys):
    g = chain((1, 8, 8), _conv(), _lif((2, 8, 8)), nir.AvgPool2d(
        kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        nir.Flatten(input_type={"input": np.array([2, 4, 4])}, start_dim=0), _aff(10, 32),
        _lif(10))
    path = tmp_path / "avg.nir"
    nir.write(str(path), g)
    base = ["import", path, "--timesteps", "2", "--dt", "1e-3", "--dataset", "digits8x8", "-q"]
    assert cli.main([str(a) for a in base + ["--out", tmp_path / "a"]]) == 0
    fails(["quantize", "-q", tmp_path / "a"], capsys, "avg pooling is software only")
    assert cli.main([str(a) for a in base + ["--out", tmp_path / "m", "--avgpool-as-max"]]) == 0
    capsys.readouterr()
    rec = json.loads((Path(tmp_path / "m") / "import.json").read_text())
    assert any("AvgPool2d read as max" in n for n in rec["notes"])


def test_input_scale_is_folded_into_layer_0_only():
    g = hand_graph()
    one = nir_io.import_graph(g, ImportOptions(timesteps=2, dt=1e-3, decay_tolerance=0.01))
    two = nir_io.import_graph(g, ImportOptions(timesteps=2, dt=1e-3, decay_tolerance=0.01,
                                               input_scale=2.0))
    assert torch.allclose(two.weights[0][0], 2 * one.weights[0][0])
    assert torch.equal(two.weights[0][1], one.weights[0][1])
    assert torch.equal(two.weights[1][0], one.weights[1][0])


@pytest.mark.slow
def test_qat_runs_on_an_imported_model(tmp_path, capsys):
    path = tmp_path / "hand.nir"
    nir.write(str(path), hand_graph())
    run = tmp_path / "run"
    assert cli.main(["import", str(path), "--out", str(run), "--timesteps", "2", "--dt", "1e-3",
                     "--dataset", "digits8x8", "--decay-tolerance", "0.01", "-q"]) == 0
    assert cli.main(["quantize", "-q", str(run)]) == 0
    plain = (run / "weights.sfimg").read_bytes()
    assert cli.main(["quantize", "-q", str(run), "--qat-epochs", "1"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["quantization"]["qat_epochs"] == 1
    assert (run / "weights.sfimg").read_bytes() != plain  # fine-tuning moved the weights


def test_run_on_an_imported_folder_never_trains_over_it(tmp_path, monkeypatch, capsys):
    from spikeforge import flow
    path = tmp_path / "hand.nir"
    nir.write(str(path), hand_graph())
    run = tmp_path / "run"
    assert cli.main(["import", str(path), "--out", str(run), "--timesteps", "2", "--dt", "1e-3",
                     "--dataset", "digits8x8", "--decay-tolerance", "0.01", "-q"]) == 0
    weights = (run / "model.safetensors").read_bytes()
    calls = []
    for name in flow.STEPS:  # the steps after train, faked: only their order matters here
        monkeypatch.setattr(flow, f"step_{name}", lambda r, a, name=name: calls.append(name))
    assert cli.main(["run", "-q", "--out", str(run)]) == 0
    assert calls == ["quantize", "plan", "export", "verify", "report"]
    assert (run / "model.safetensors").read_bytes() == weights
    assert "holds an imported model" in capsys.readouterr().out


def test_norse_iaf_mlp_imports_to_the_same_spike_counts():
    norse = pytest.importorskip("norse.torch")
    torch.manual_seed(1)
    p = norse.IAFParameters(v_th=torch.tensor(0.5))
    net = norse.SequentialState(torch.nn.Linear(64, 16), norse.IAFCell(p),
                                torch.nn.Linear(16, 10), norse.IAFCell(p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = norse.to_nir(net, torch.zeros(1, 64))
    imp = nir_io.import_graph(graph, ImportOptions(timesteps=5, source="norse"),
                              input_shape=(1, 8, 8))
    assert [l.neuron.kind.value for l in imp.spec.layers] == ["if", "if"]
    x = frames(40)
    state, theirs = None, 0
    with torch.no_grad():
        for _ in range(5):
            z, state = net(x.view(40, 64).float() / 255, state)
            theirs = theirs + z
    assert theirs.sum() > 20
    assert torch.equal(float_counts(nir_io.to_model(imp), x), theirs.double())


# --------------------------------------------------------------------------- calibration


def test_calibration_target_defaults_to_fidelity_for_an_imported_run(tmp_path):
    import argparse

    from spikeforge import flow
    assert flow.calibration_target(tmp_path, argparse.Namespace(calibrate=None)) == "accuracy"
    assert flow.calibration_target(tmp_path, argparse.Namespace()) == "accuracy"
    (tmp_path / nir_io.IMPORT_RECORD).write_text("{}")
    assert flow.calibration_target(tmp_path, argparse.Namespace(calibrate=None)) == "fidelity"
    assert flow.calibration_target(tmp_path,
                                   argparse.Namespace(calibrate="accuracy")) == "accuracy"


def test_imported_run_is_calibrated_for_fidelity_and_says_so(tmp_path, capsys):
    """The hand graph is untrained (about chance on digits8x8): calibrating its
    clips by the labels moves the integer model far from the float one, by
    fidelity keeps it close; the mode is printed and recorded with the clips."""
    from spikeforge import image
    path = tmp_path / "hand.nir"
    nir.write(str(path), hand_graph())
    run = tmp_path / "run"
    assert cli.main(["import", str(path), "--out", str(run), "--timesteps", "2", "--dt", "1e-3",
                     "--dataset", "digits8x8", "--decay-tolerance", "0.01", "-q"]) == 0
    capsys.readouterr()
    got = {}
    for mode, argv in (("fidelity", []), ("accuracy", ["--calibrate", "accuracy"])):
        assert cli.main(["quantize", "-q", str(run), *argv]) == 0
        assert f"calibrated by {mode}" in capsys.readouterr().out
        m = json.loads((run / "metrics.json").read_text())
        _, meta = image.read_image(run / "weights.sfimg")
        assert m["quantization"]["calibrate"] == meta["quantization"]["calibrate"] == mode
        assert m["quantization"]["clip_margin"] == meta["quantization"]["clip_margin"] == (
            0.0 if mode == "accuracy" else 0.005)
        got[mode] = ([layer["clip"] for layer in meta["quantization"]["layers"]],
                     m["float_int_class_agreement"])
        opts = json.loads((run / ".flow" / "quantize.json").read_text())["options"]
        assert opts.get("calibrate") == (None if mode == "accuracy" else mode)
    assert got["fidelity"][0] != got["accuracy"][0]
    assert got["fidelity"][1] > got["accuracy"][1] + 0.1
    fails(["quantize", "-q", run, "--calibrate", "labels"], capsys, "--calibrate",
          "invalid choice", "'accuracy', 'fidelity'")


def test_flow_records_the_calibration_of_an_imported_run(tmp_path, monkeypatch, capsys):
    from spikeforge import flow
    # quantize alone, faked: only its record matters here
    monkeypatch.setattr(flow, "step_quantize", lambda r, a: (r / flow.IMAGE).write_text("net"))
    monkeypatch.setattr(flow, "STEPS_LIST", [flow.STEP["quantize"]])
    trained, imported = tmp_path / "trained", tmp_path / "imported"
    for run in (trained, imported):
        run.mkdir()
        for name in ("model.safetensors", "config.json"):
            (run / name).write_text("weights")
    (imported / nir_io.IMPORT_RECORD).write_text("{}")
    opts = lambda run: json.loads((run / ".flow" / "quantize.json").read_text())["options"]
    for run in (trained, imported):
        assert cli.main(["run", "-q", "--out", str(run)]) == 0
    assert "calibrate" not in opts(trained)  # as recorded before --calibrate existed
    assert "clip_margin" not in opts(trained)
    assert opts(imported)["calibrate"] == "fidelity"
    assert opts(imported)["clip_margin"] == 0.005
    # a fidelity calibration recorded before the clip margin existed is redone
    rec = json.loads(flow.record_path(imported, "quantize").read_text())
    del rec["options"]["clip_margin"]
    flow.record_path(imported, "quantize").write_text(json.dumps(rec))
    capsys.readouterr()
    assert cli.main(["run", "-q", "--out", str(imported)]) == 0
    assert "options changed: clip_margin" in capsys.readouterr().out
    assert opts(imported)["clip_margin"] == 0.005
    assert cli.main(["run", "-q", "--out", str(imported), "--calibrate", "accuracy"]) == 0
    assert "options changed: calibrate" in capsys.readouterr().out
    assert "calibrate" not in opts(imported)
    assert cli.main(["run", "-q", "--out", str(trained), "--calibrate", "fidelity"]) == 0
    assert "options changed: calibrate" in capsys.readouterr().out


def test_a_residual_network_is_not_exported():
    """NIR export writes chains; a residual layer's skip is refused by name."""
    model = models.build("sts-resnet", channels=2, blocks=1, hidden=4, timesteps=2)
    with pytest.raises(NIRError, match=r"^layer 2: a residual layer's skip is not a chain"):
        nir_io.export_graph(model)
