"""The strict spike comparison (``neuron.strict``: ``u > theta``) in the engine.

Random networks whose thresholds sit on currents the calibration input
produces (so ``u == theta`` happens) run in the Amaranth simulator against
sw/golden.py spike for spike; the golden model in the other comparison, and a
core built with the other comparator (the ``threshold`` fault), must both
disagree with the strict run, or the case would not tell the two apart.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spikeforge.config import LayerKind, LayerSpec, NetworkSpec, NeuronKind, NeuronSpec, Reset
from spikeforge.hw.network import NetworkTop, core_params, first_mismatch, input_events
from spikeforge.hw.randnet import int_layer, random_frames, random_network
from spikeforge.hw.sim import simulate
from spikeforge.sw import golden
from spikeforge.sw.golden import IntNetwork


def flipped(net: IntNetwork) -> IntNetwork:
    """``net`` with every layer's comparison swapped (``>`` <-> ``>=``)."""
    layers = []
    for il in net.layers:
        s = il.spec
        spec = dataclasses.replace(s, neuron=dataclasses.replace(s.neuron,
                                                                 strict=not s.neuron.strict))
        layers.append(dataclasses.replace(il, spec=spec))
    return IntNetwork(dataclasses.replace(net.spec, layers=tuple(l.spec for l in layers)),
                      tuple(layers))


def lanes(net, P):
    return [min(P, l.spec.out_channels) for l in net.layers]


def run(net, x, P, seed=0, faults=None):
    top = NetworkTop(net, lanes(net, P), faults=faults)
    return simulate(top, input_events(net, x[0]), seed=seed, idle=0.1)


# strict=True: every layer strict; None: drawn per layer (mixed networks)
CASES = [(0, True, 2), (7, True, 1), (9, None, 3), (16, None, 2), (29, None, 4)]


@pytest.mark.parametrize("seed,strict,P", CASES,
                         ids=[f"seed{s}-{'strict' if t else 'mixed'}-P{p}" for s, t, p in CASES])
def test_strict_random_network_matches_golden(seed, strict, P):
    net = random_network(seed, size=(6, 8), channels=(2, 5), strict=strict)
    flags = [l.neuron.strict for l in net.spec.layers]
    assert any(flags) and (strict or not all(flags)), flags
    x = random_frames(net, seed)
    ref = golden.run(net, x)
    other = golden.run(flipped(net), x)
    # the case has neurons at u == theta: the two comparisons give other spikes
    assert any(not torch.equal(a, b) for a, b in zip(ref.spikes, other.spikes))
    assert sum(int(s.sum()) for s in ref.spikes) > 0
    # the cores are built with the layer's comparison
    assert [cp.strict for cp in core_params(net, lanes(net, P))] == flags
    res = run(net, x, P, seed=seed)
    mm = first_mismatch(net, ref.spikes, res.spikes)
    assert mm is None, f"first mismatch {mm}"
    assert res.scores == ref.scores[0].tolist()
    # and the comparison would catch an engine that compared the other way
    assert first_mismatch(net, other.spikes, res.spikes) is not None


def test_the_wrong_comparator_is_caught():
    """A strict layer 0 built with ``>=`` (the ``threshold`` fault) mismatches
    from layer 0 on; the same network without the fault matches."""
    net = random_network(2, size=(6, 8), channels=(2, 5), strict=True)
    x = random_frames(net, 2)
    ref = golden.run(net, x)
    res = run(net, x, 2, faults={0: "threshold"})
    mm = first_mismatch(net, ref.spikes, res.spikes)
    assert mm is not None and mm.layer == 0 and mm.expected != mm.got
    # the faulty core is exactly the inclusive comparison in layer 0
    part = flipped(net)
    mixed = IntNetwork(dataclasses.replace(net.spec, layers=(part.spec.layers[0],)
                                           + net.spec.layers[1:]),
                       (part.layers[0],) + net.layers[1:])
    assert first_mismatch(net, golden.run(mixed, x).spikes, res.spikes) is None
    assert first_mismatch(net, ref.spikes, run(net, x, 2).spikes) is None


@pytest.mark.parametrize("strict", [False, True])
def test_strict_theta_at_the_largest_state(strict):
    """``theta = 2**(S-1) - 1``: a saturated ``u`` equals it and never exceeds
    it, so a strict neuron never fires although ``base + cur`` does exceed
    it (the engine compares before saturating); channel 1 (``theta`` one
    less) fires either way."""
    S = 8
    top = (1 << (S - 1)) - 1
    neuron = NeuronSpec(NeuronKind.IF, reset=Reset.NONE, strict=strict)
    ls = LayerSpec(LayerKind.FC, 4, 2, (1, 1), neuron=neuron)
    spec = NetworkSpec("top", (4, 1, 1), 3, (ls,), classes=2)
    il = int_layer(ls, torch.full((2, 4, 1, 1), 100), torch.zeros(2, dtype=torch.int64),
                   torch.tensor([top, top - 1]), (), 8, S, 4)
    net = IntNetwork(spec, (il,))
    x = torch.full((1, 1, 4, 1, 1), 255, dtype=torch.uint8)
    ref = golden.run(net, x)
    counts = golden.unpack(ref.spikes[0], 2)[:, 0].sum(0).tolist()
    assert counts == ([0, 3] if strict else [3, 3])
    res = run(net, x, 1)
    assert first_mismatch(net, ref.spikes, res.spikes) is None
    assert res.scores == ref.scores[0].tolist()
