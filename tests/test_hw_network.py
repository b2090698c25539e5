"""Whole-network tests: every layer's spikes at every step equal sw/golden.py.

Random small networks (seeded; the seed is in the test id), a quantized
convsnn, run-time memory writes, back-to-back inferences, and a deliberately
broken design that the comparison must catch.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spikeforge.hw.network import (Mismatch, NetworkTop, core_params, first_mismatch,
                                   input_events, split_capable)
from spikeforge.hw.params import EngineError
from spikeforge.hw.randnet import random_frames, random_network, random_stcb_network
from spikeforge.hw.sim import simulate, simulate_many
from spikeforge.image import input_lanes, memories
from spikeforge.sw import golden
from spikeforge.sw.golden import IntNetwork


def lanes(net, P):
    """``P`` (one for all layers, capped at each layer's channels) or a list."""
    if isinstance(P, list):
        return P
    return [min(P, l.spec.out_channels) for l in net.layers]


def check(net, x, P, *, seed=0, idle=0.1, faults=None):
    """Simulate ``net`` on frames ``x`` and compare with the golden model."""
    ref = golden.run(net, x)
    top = NetworkTop(net, lanes(net, P), faults=faults)
    res = simulate(top, input_events(net, x[0]), seed=seed, idle=idle)
    return ref, res, first_mismatch(net, ref.spikes, res.spikes)


def layer_spikes(net, ref) -> list[int]:
    """The golden model's spike count of each layer (all steps, sample 0)."""
    return [int(golden.unpack(s[:, :1], l.out_features).sum())
            for s, l in zip(ref.spikes, net.spec.layers)]


def assert_spikes(net, ref):
    """A comparison of silent layers proves nothing: the network must spike."""
    assert sum(layer_spikes(net, ref)) > 0, "the golden model never spiked: a vacuous case"


def assert_readout(net, ref, res):
    assert res.scores == ref.scores[0].tolist()
    assert res.prediction == int(ref.classes[0])
    counts = golden.unpack(ref.spikes[-1], net.spec.layers[-1].out_features).sum(0)[0]
    assert res.counts == counts.tolist()


def assert_perf(net, P, res, n_input_events):
    """Counters against the captured spikes: a layer feeding a conv layer sends
    one word event per spiking (step, channel group, position)."""
    perf = res.perf
    ps = lanes(net, P)
    words = input_lanes(net, ps)[1:] + [1]
    assert perf[0]["events_in"] == n_input_events
    for n, (a, b) in enumerate(zip(perf, perf[1:]), 1):
        # a residual layer also takes the skip: its block input's events
        skip = perf[n - 2]["events_out"] if net.spec.layers[n].residual else 0
        assert b["events_in"] == a["events_out"] + skip
    for p, layer, q, lp in zip(perf, res.spikes, words, ps):
        beats = sum(len({(c // lp if q > 1 else c, y, x) for c, y, x in step}) for step in layer)
        assert p["events_out"] == beats
        assert p["busy"] <= res.sim_cycles


def check_exact(net, x, P, seed):
    """The engine against the golden model: every spike, the readout, and the
    cycle counters' bounds."""
    ref, res, mm = check(net, x, P, seed=seed)
    assert_spikes(net, ref)
    assert mm is None, f"first mismatch {mm}"
    assert_readout(net, ref, res)
    assert_perf(net, P, res, sum(not e.last for e in input_events(net, x[0])))


FAST = [(seed, 1 + seed % 4) for seed in range(25)]


@pytest.mark.parametrize("seed,P", FAST, ids=[f"seed{s}-P{p}" for s, p in FAST])
def test_random_network_matches_golden(seed, P):
    net = random_network(seed, size=(6, 8), channels=(2, 5))
    x = random_frames(net, seed)
    check_exact(net, x, P, seed)


#: random networks with kernels 2, 3 and 5 whose conv layers past the first
#: split their taps over two synapse units (lanes: twice the channels)
SPLIT = (301, 305, 306, 307, 311, 321, 326, 340)


@pytest.mark.parametrize("seed", SPLIT, ids=[f"split-seed{s}" for s in SPLIT])
def test_split_taps_match_golden(seed):
    net = random_network(seed, size=(6, 9), channels=(2, 5), max_layers_conv=3,
                         kernels=(2, 3, 5))
    P = split_lanes(net)
    split = [cp for cp in core_params(net, P) if cp.units > 1]
    assert split, "no layer splits its taps: a vacuous case"
    # every tap is walked by exactly one unit
    for cp in split:
        ranges = [cp.tap_range(u) for u in range(cp.units)]
        assert [t for a, b in ranges for t in range(a, b)] == list(range(cp.k * cp.k))
    x = random_frames(net, seed)
    check_exact(net, x, P, seed)


def test_split_taps_with_weight_address_copies(monkeypatch):
    """Two synapse units whose weight memories (each only its unit's taps'
    words: addresses narrower than the unit's) are read at three address
    copies, in 1-bit columns (hw/memory.py addr_copies, off by default)."""
    from spikeforge.hw import memory as hw_memory
    monkeypatch.setattr(hw_memory, "slice_bits", lambda width, depth, configs=None: 1)
    monkeypatch.setattr(hw_memory, "addr_copies", lambda width, depth: 3)
    seed = SPLIT[0]
    net = random_network(seed, size=(6, 9), channels=(2, 5), max_layers_conv=3,
                         kernels=(2, 3, 5))
    P = split_lanes(net)
    assert any(cp.units > 1 for cp in core_params(net, P))
    check_exact(net, random_frames(net, seed), P, seed)


SLOW = [(seed, 1 + seed % 4) for seed in range(100, 125)]


@pytest.mark.slow
@pytest.mark.parametrize("seed,P", SLOW, ids=[f"seed{s}-P{p}" for s, p in SLOW])
def test_random_network_matches_golden_larger(seed, P):
    net = random_network(seed, size=(6, 10), channels=(2, 8))
    x = random_frames(net, seed)
    ref, res, mm = check(net, x, P, seed=seed, idle=0.0)
    assert_spikes(net, ref)
    assert mm is None, f"first mismatch {mm}"
    assert_readout(net, ref, res)


def test_quantized_convsnn_matches_golden():
    from spikeforge.sw.models import build
    from spikeforge.sw.quantize import QuantConfig, quantize
    torch.manual_seed(0)
    model = build("convsnn", channels=(4, 4), hidden=12, timesteps=3, input_shape=(1, 8, 8))
    # a random model, its deeper layers scaled so that spikes reach the output
    with torch.no_grad():
        for layer, s in zip(model.layers, [1.0, 3.0, 3.0, 3.0]):
            layer.syn.weight.mul_(s)
            layer.syn.bias.abs_()
    net = quantize(model, QuantConfig())
    x = torch.randint(0, 256, (1, 1, 1, 8, 8), generator=torch.Generator().manual_seed(1),
                      dtype=torch.uint8)
    ref = golden.run(net, x)
    assert all(int(s.sum()) for s in ref.spikes), "test needs spikes in every layer"
    top = NetworkTop(net, [2, 2, 4, 5])
    res = simulate(top, input_events(net, x[0]))
    mm = first_mismatch(net, ref.spikes, res.spikes)
    assert mm is None, f"first mismatch {mm}"
    assert_readout(net, ref, res)


#: random networks with one or two residual blocks; P = 0: each layer's taps
#: split over two synapse units where it can
RESIDUAL = [(seed, (1, 2, 3, 0)[seed % 4]) for seed in range(400, 408)]


@pytest.mark.parametrize("seed,P", RESIDUAL, ids=[f"res-seed{s}-P{p}" for s, p in RESIDUAL])
def test_residual_network_matches_golden(seed, P):
    net = random_network(seed, size=(6, 8), channels=(2, 5), max_layers_conv=2,
                         blocks=1 + seed % 2)
    assert any(l.spec.residual for l in net.layers)
    x = random_frames(net, seed)
    check_exact(net, x, split_lanes(net) if P == 0 else P, seed)


@pytest.mark.parametrize("seed,Q", [(410, 2), (411, 4), (412, 2)])
def test_residual_network_with_words_matches_golden(seed, Q):
    """Word events of ``Q`` channels through residual blocks: the skip's
    words join the block's own, their channel groups moved up."""
    from spikeforge.image import takes_words
    net = random_network(seed, size=(6, 8), channels=(4, 4), max_layers_conv=1, blocks=2)
    P = [4] * (len(net.layers) - 1) + [2]
    words = [Q if n and takes_words(net, n) else 1 for n in range(len(net.layers))]
    assert words.count(Q) == 4
    x = random_frames(net, seed)
    ref = golden.run(net, x)
    assert_spikes(net, ref)
    top = NetworkTop(net, P, words=words)
    res = simulate(top, input_events(net, x[0]), seed=seed, idle=0.1)
    assert first_mismatch(net, ref.spikes, res.spikes) is None
    assert_readout(net, ref, res)
    with pytest.raises(EngineError, match=r"closes a residual block: its words must equal"):
        core_params(net, P, words=words[:2] + [1] + words[3:])


def test_residual_network_back_to_back_and_a_misplaced_skip_is_caught(monkeypatch):
    """Two images through two residual blocks without ``start`` between them
    match the golden model, with the FIFOs as deep as the engine makes them
    and with all of them 2 deep; a merge that adds the skip to the block's
    own channels (offset 0) is caught at the first residual layer."""
    from spikeforge.hw import network, streams
    Merge = streams.EventMerge
    net = random_network(401, size=(6, 8), channels=(2, 5), max_layers_conv=1, blocks=2)
    xs = [random_frames(net, s) for s in (3, 4)]
    top = NetworkTop(net, lanes(net, 2))
    for x, res in zip(xs, simulate_many(top, [input_events(net, x[0]) for x in xs])):
        ref = golden.run(net, x)
        assert first_mismatch(net, ref.spikes, res.spikes) is None
        assert_readout(net, ref, res)
    # FIFOs of 2 everywhere, the skip's too: the fork waits on the skip and
    # the block's first layer on the fork, and nothing deadlocks
    monkeypatch.setattr(network, "skip_depth", lambda cp: 2)
    top = NetworkTop(net, lanes(net, 2), fifo_depth=2)
    for x, res in zip(xs, simulate_many(top, [input_events(net, x[0]) for x in xs])):
        assert first_mismatch(net, golden.run(net, x).spikes, res.spikes) is None
    monkeypatch.setattr(streams, "EventMerge", lambda fmt, offset: Merge(fmt, 0))
    ref, res, mm = check(net, xs[0], 2)
    first = min(n for n, l in enumerate(net.spec.layers) if l.residual)
    assert mm is not None and mm.layer == first and mm.expected != mm.got


STCB = [(seed, 1 + seed % 4) for seed in range(8)]


@pytest.mark.parametrize("seed,P", STCB, ids=[f"stcb-seed{s}-P{p}" for s, p in STCB])
def test_random_stcb_network_matches_golden(seed, P):
    """STCB (CAB + STEB) layers: the whole input train summed with shifts,
    values rescaled, max-pooled and re-encoded as T steps of spikes."""
    net = random_stcb_network(seed)
    x = random_frames(net, seed)[:, :1]
    ref, res, mm = check(net, x, P, seed=seed)
    assert_spikes(net, ref)
    assert mm is None, f"first mismatch {mm}"
    assert_readout_stcb(ref, res)


def assert_readout_stcb(ref, res):
    assert res.scores == ref.scores[0].tolist()
    assert res.prediction == int(ref.classes[0])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 116), ids=[f"stcb-seed{s}" for s in range(100, 116)])
def test_random_stcb_network_matches_golden_larger(seed):
    net = random_stcb_network(seed, size=(6, 10), channels=(2, 8))
    x = random_frames(net, seed)[:, :1]
    ref, res, mm = check(net, x, 1 + seed % 4, seed=seed, idle=0.0)
    assert_spikes(net, ref)
    assert mm is None, f"first mismatch {mm}"
    assert_readout_stcb(ref, res)


def test_quantized_stcsnn_matches_golden():
    from spikeforge.sw.models import build
    from spikeforge.sw.quantize import QuantConfig, quantize
    torch.manual_seed(0)
    model = build("stcsnn-vgg", channels=(2, 2, 3, 3), hidden=8, timesteps=3,
                  input_shape=(1, 8, 8))
    model.eval()
    with torch.no_grad():  # random weights, scaled so that every layer has values
        for layer in model.layers:
            layer.syn.weight.mul_(2.0)
            layer.syn.bias.abs_()
    net = quantize(model, QuantConfig(input_bits=4))
    x = torch.randint(0, 256, (1, 1, 1, 8, 8), generator=torch.Generator().manual_seed(1),
                      dtype=torch.uint8)
    ref = golden.run(net, x)
    assert all(int(s.sum()) for s in ref.spikes), "test needs spikes in every layer"
    res = simulate(NetworkTop(net, [2, 2, 3, 3, 4, 5]), input_events(net, x[0]))
    mm = first_mismatch(net, ref.spikes, res.spikes)
    assert mm is None, f"first mismatch {mm}"
    assert_readout_stcb(ref, res)


@pytest.mark.parametrize("seed,fault,layer", [(5, "threshold", 0), (15, "decay", 0),
                                              (1, "decay", 2)],
                         ids=["seed5-threshold-L0", "seed15-decay-L0", "seed1-decay-L2"])
def test_comparison_catches_a_broken_design(seed, fault, layer):
    net = random_network(seed)
    x = random_frames(net, seed)
    ref = golden.run(net, x)
    if fault == "decay":  # the golden model itself must care about the wrong shift
        il = net.layers[layer]
        bad = dataclasses.replace(il, decay_shifts=(il.decay_shifts[0] + 1,) + il.decay_shifts[1:])
        alt = golden.run(IntNetwork(net.spec, tuple(bad if i == layer else l
                                                    for i, l in enumerate(net.layers))), x)
        assert any((a != b).any() for a, b in zip(ref.spikes, alt.spikes))
    _, res, mm = check(net, x, 2, faults={layer: fault})
    assert mm is not None and mm.layer >= layer
    assert mm.expected != mm.got
    # and the same network without the fault matches
    assert check(net, x, 2)[2] is None


def split_lanes(net) -> list[int]:
    """Twice the channels where a layer can split its taps, else the channels."""
    return [layer.spec.out_channels * (2 if split_capable(net, n) else 1)
            for n, layer in enumerate(net.layers)]


@pytest.mark.parametrize("split", [False, True], ids=["lanes2", "split-taps"])
def test_runtime_memory_writes_and_back_to_back_inferences(split):
    """Build the top for one network, write another's memories through
    ``mem_write``, then run two inferences (``start`` clears the state);
    split: the weight words go to the synapse unit that holds their tap."""
    net_a = (random_network(306, size=(6, 9), channels=(2, 5), max_layers_conv=3,
                            kernels=(2, 3, 5)) if split
             else random_network(4, size=(6, 8), channels=(2, 4)))
    gen = torch.Generator().manual_seed(9)
    layers = []
    for il in net_a.layers:
        lim = 1 << (il.weight_bits - 1)
        w = torch.randint(-lim, lim, il.weight.shape, generator=gen)
        layers.append(dataclasses.replace(il, weight=w, theta=(il.theta + 1) // 2 + 1))
    net_b = IntNetwork(net_a.spec, tuple(layers))
    P = split_lanes(net_a) if split else lanes(net_a, 2)
    writes = []
    for sel, (name, (_, words)) in enumerate(memories(net_b, P).items()):
        writes += [(sel, addr, word) for addr, word in enumerate(words)]
    xs = [random_frames(net_a, s) for s in (1, 2)]
    top = NetworkTop(net_a, P)
    results = simulate_many(top, [input_events(net_a, x[0]) for x in xs], writes=writes)
    for x, res in zip(xs, results):
        ref = golden.run(net_b, x)
        assert first_mismatch(net_b, ref.spikes, res.spikes) is None
        assert_readout(net_b, ref, res)
    assert any(int(golden.run(net_a, x).spikes[0].sum() != golden.run(net_b, x).spikes[0].sum())
               for x in xs)


def test_first_mismatch_reports_layer_step_neuron():
    net = random_network(2)
    x = random_frames(net, 2)
    ref = golden.run(net, x)
    spikes = []
    for li, layer in enumerate(net.spec.layers):
        n = layer.out_features
        ho, wo = (1, 1) if layer.kind.value == "fc" else layer.out_size
        per = golden.unpack(ref.spikes[li][:, 0], n)
        steps = []
        for t in range(net.spec.timesteps):
            idx = per[t].nonzero().flatten().tolist()
            steps.append([(i // (ho * wo), i // wo % ho, i % wo) for i in idx])
        spikes.append(steps)
    assert first_mismatch(net, ref.spikes, spikes) is None
    c, y, xx = spikes[0][1][0]
    spikes[0][1].append((c, y, xx))  # a duplicate
    mm = first_mismatch(net, ref.spikes, spikes)
    ho, wo = net.spec.layers[0].out_size
    assert mm == Mismatch(0, 0, 1, (c * ho + y) * wo + xx, 1, 2)
    assert str(mm) == f"image 0, layer 0, time step 1, neuron {mm.neuron}: expected 1 spike(s), got 2"
    # the co-simulation's comparison reports the same type
    from spikeforge.sim import runner
    assert runner.Mismatch is Mismatch


def test_random_suite_covers_the_space():
    """The fast seeds span the brief's ranges (checked without simulating)."""
    seen = {k: set() for k in ("kernel", "pool", "reset", "kind", "P", "bits", "T", "convs",
                               "encoding", "wbits", "padding")}
    for seed, P in FAST:
        net = random_network(seed, size=(6, 8), channels=(2, 5))
        seen["P"].add(P)
        seen["bits"].add(net.layers[0].input_bits)
        seen["T"].add(net.spec.timesteps)
        seen["encoding"].add(net.spec.encoding)
        seen["convs"].add(sum(l.kind.value == "conv" for l in net.spec.layers))
        for il in net.layers:
            s = il.spec
            seen["reset"].add(s.neuron.reset.value)
            seen["kind"].add(s.neuron.kind.value)
            seen["wbits"].add(il.weight_bits)
            if s.kind.value == "conv":
                seen["kernel"].add(s.kernel)
                seen["pool"].add(s.pool)
                seen["padding"].add(s.padding)
    assert seen["kernel"] == {1, 3} and seen["pool"] == {1, 2} and seen["convs"] == {1, 2}
    assert seen["reset"] == {"zero", "subtract", "none"} and seen["kind"] == {"lif", "if"}
    assert seen["P"] == {1, 2, 3, 4} and seen["bits"] == {1, 2, 3, 4}
    assert seen["T"] == {2, 3, 4, 5} and seen["encoding"] == {"direct", "bitplane"}
    assert {0, 1, 2} <= seen["padding"] and min(seen["wbits"]) == 2 and max(seen["wbits"]) == 8


def test_random_suites_spike_through_to_the_output():
    """Equal silence is no evidence: the suites' networks, on their inputs,
    spike in every layer position and, nearly always, at the output."""
    suites = {
        "fast": [(random_network(s, size=(6, 8), channels=(2, 5)), s, False) for s, _ in FAST],
        "stcb": [(random_stcb_network(s), s, True) for s, _ in STCB],
    }
    for name, nets in suites.items():
        per_layer = {}
        outputs = 0
        for net, seed, stcb in nets:
            x = random_frames(net, seed)[:, :1] if stcb else random_frames(net, seed)
            counts = layer_spikes(net, golden.run(net, x))
            for i, c in enumerate(counts):
                per_layer[i] = per_layer.get(i, 0) + (c > 0)
            outputs += counts[-1] > 0
        assert all(per_layer.values()), f"{name}: a layer position never spikes: {per_layer}"
        assert outputs >= 0.8 * len(nets), f"{name}: only {outputs} of {len(nets)} output layers spike"


def test_a_residual_layers_current_holds_every_weight_of_its_skip_half():
    """The current memory's width bounds ``2 C k k`` weights (the skip half
    included), whatever weights are written at run time: the most negative
    weight on every input of a step is representable."""
    from spikeforge.hw.arith import signed_bits
    net = random_network(401, size=(6, 8), channels=(2, 5), max_layers_conv=1, blocks=1)
    n = next(i for i, l in enumerate(net.spec.layers) if l.residual)
    cp = core_params(net, lanes(net, 2))[n]
    il, ls = net.layers[n], net.spec.layers[n]
    worst = -(1 << (il.weight_bits - 1)) * 2 * ls.in_channels * ls.kernel ** 2
    assert cp.c_in == 2 * ls.in_channels
    assert cp.cur_width >= signed_bits(worst, 0)
