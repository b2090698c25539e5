"""The integer contract (sw/golden.py) against hand-computed trajectories."""

import pytest
import torch

from spikeforge.config import LayerKind, LayerSpec, NetworkSpec, NeuronKind, NeuronSpec
from spikeforge.sw import golden
from spikeforge.sw.golden import ContractError, IntLayer, IntNetwork


def one_neuron_net(weights, theta, shifts, reset="zero", state_bits=16, T=6, bias=0,
                   kind=NeuronKind.LIF, strict=False):
    """fc network: len(weights) binary inputs -> 1 neuron."""
    n_in = len(weights)
    ls = LayerSpec(LayerKind.FC, n_in, 1, (1, 1),
                   neuron=NeuronSpec(kind, reset=reset, strict=strict))
    spec = NetworkSpec("t", (n_in, 1, 1), T, (ls,), classes=1, encoding="bitplane")
    il = IntLayer(ls, torch.tensor(weights).view(1, n_in, 1, 1), torch.tensor([bias]),
                  torch.tensor([theta]), torch.tensor([0]), tuple(shifts), 8, state_bits,
                  state_bits + 8, 1)
    return IntNetwork(spec, (il,))


def drive(net, bits_per_step):
    """Run with explicit binary inputs per step [T][n_in] through the bitplane path:
    pixel bit (7 - t) carries step t."""
    T = len(bits_per_step)
    n_in = len(bits_per_step[0])
    px = torch.zeros(n_in, dtype=torch.int64)
    for t, row in enumerate(bits_per_step):
        px |= torch.tensor(row, dtype=torch.int64) << (7 - t)
    x = px.to(torch.uint8).view(1, 1, n_in, 1, 1)
    res = golden.run(net, x)
    return golden.unpack(res.spikes[0], 1)[:, 0, 0].tolist(), int(res.scores[0, 0])


def test_decay_is_term_by_term_flooring_shift():
    u = torch.tensor([100, -100, 7, -7, 1, -1])
    assert golden.decay(u, (1,)).tolist() == [50, -50, 4, -3, 1, 0]
    # 0.8125 = 1 - 1/8 - 1/16: 100 - 12 - 6 = 82; -100 - (-13) - (-7) = -80
    assert golden.decay(u, (3, 4)).tolist() == [82, -80, 7, -5, 1, 1]


def test_lif_zero_reset_by_hand():
    # w = 40, theta = 100, decay 0.5 = shift 1, input every step;
    # decay(u) = u - (u >> 1): 40 -> 20, 60 -> 30, 70 -> 35, 75 -> 38, 78 -> 39
    net = one_neuron_net([40], 100, (1,), "zero")
    spikes, count = drive(net, [[1]] * 6)
    # u: 40, 60, 70, 75, 78, 79 -- never reaches 100
    assert spikes == [0] * 6
    net = one_neuron_net([60], 100, (1,), "zero")
    spikes, count = drive(net, [[1]] * 6)
    # u: 60, 90, 105 spike, 0+60=60, 90, 105 spike
    assert spikes == [0, 0, 1, 0, 0, 1] and count == 2


def test_lif_subtract_and_none_reset_by_hand():
    net = one_neuron_net([60], 100, (1,), "subtract")
    spikes, _ = drive(net, [[1]] * 6)
    # u: 60; 30+60=90; 45+60=105 S; 53-100+60=13; 7+60=67; 34+60=94
    assert spikes == [0, 0, 1, 0, 0, 0]
    net = one_neuron_net([60], 100, (1,), "none")
    spikes, _ = drive(net, [[1]] * 6)
    # u: 60, 90, 105 S, 53+60=113 S, 57+60=117 S, 59+60=119 S
    assert spikes == [0, 0, 1, 1, 1, 1]


def test_if_without_decay_integrates_and_bias_adds_each_step():
    net = one_neuron_net([30], 100, (), "subtract", bias=5)
    spikes, count = drive(net, [[1]] * 6)
    # I = 35 per step: 35, 70, 105 S, 5+35=40, 75, 110 S
    assert spikes == [0, 0, 1, 0, 0, 1] and count == 2


def test_saturation_at_the_top():
    # 6-bit state: [-32, 31]; I = 50 saturates to 31 < theta 40: never fires
    net = one_neuron_net([50], 40, (), "none", state_bits=6, T=4)
    spikes, _ = drive(net, [[1]] * 4)
    assert spikes == [0, 0, 0, 0]
    # wider state fires at once
    spikes, _ = drive(one_neuron_net([50], 40, (), "none", state_bits=8, T=4), [[1]] * 4)
    assert spikes == [1, 1, 1, 1]


@pytest.mark.parametrize("reset,inclusive,strict", [
    # IF, I = 50 a step, theta 100: u = 50, 100 (== theta: only >= fires), 150
    ("zero", [0, 1, 0, 1, 0, 1], [0, 0, 1, 0, 0, 1]),        # strict: 50, 100, 150 S, 50, ...
    ("subtract", [0, 1, 0, 1, 0, 1], [0, 0, 1, 0, 1, 0]),    # strict: 150 S -> 50, 100, 150 S
    ("none", [0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]),
])
def test_strict_comparison_differs_exactly_at_u_equal_theta(reset, inclusive, strict):
    for flag, want in ((False, inclusive), (True, strict)):
        net = one_neuron_net([50], 100, (), reset, kind=NeuronKind.IF, strict=flag)
        spikes, count = drive(net, [[1]] * 6)
        assert spikes == want, (flag, spikes)
        assert count == sum(want)
    # one above theta: both comparisons fire alike
    for flag in (False, True):
        net = one_neuron_net([51], 101, (), reset, kind=NeuronKind.IF, strict=flag)
        assert drive(net, [[1]] * 6)[0] == drive(one_neuron_net(
            [51], 101, (), reset, kind=NeuronKind.IF, strict=not flag), [[1]] * 6)[0]


def test_strict_neuron_with_theta_at_the_largest_state_never_fires():
    # 8-bit state: u saturates at 127 = theta: u >= theta fires, u > theta never
    spikes, _ = drive(one_neuron_net([100], 127, (), "none", state_bits=8, T=4), [[1]] * 4)
    assert spikes == [0, 1, 1, 1]
    net = one_neuron_net([100], 127, (), "none", state_bits=8, T=4, strict=True)
    assert drive(net, [[1]] * 4)[0] == [0, 0, 0, 0]


def test_saturation_at_the_bottom_never_wraps():
    # 6-bit: strongly negative drive pins u at -32; then +31 per step for 2 steps:
    # -32+31 = -1, 30, 61->31 (sat) ... with theta 31 fires at step 4 (u=31)
    inputs = [[1, 0]] * 4 + [[0, 1]] * 4
    net = one_neuron_net([-60, 31], 31, (), "zero", state_bits=6, T=8)
    spikes, _ = drive(net, inputs)
    # u: -32 (sat), -32, -32, -32, -1, 30, 31 (sat of 61) S, 0+31 = 31 S
    assert spikes == [0, 0, 0, 0, 0, 0, 1, 1]
    # with wrap-around (no saturation) -60*4 = -240 would wrap positive in 6 bits


def test_stcb_layer_is_cab_then_steb_by_hand():
    # 2 inputs of T=4-bit values, weights (3, -1), bias 2, shift 1:
    # x = (5, 6): acc = 15 - 6 = 9; u0 = (9 + 2) >> 1 = 5 -> spikes 0101 -> y = 5
    T = 4
    ls = LayerSpec(LayerKind.FC, 2, 1, (1, 1), neuron=NeuronSpec(NeuronKind.STCB, theta=0.8))
    spec = NetworkSpec("s", (2, 1, 1), T, (ls,), classes=1)
    il = IntLayer(ls, torch.tensor([3, -1]).view(1, 2, 1, 1), torch.tensor([2]), torch.tensor([1]),
                  torch.tensor([1]), (), 8, 8, 12, 4)
    net = IntNetwork(spec, (il,))
    # input bits 4: pixel p enters as p >> 4
    x = torch.tensor([5 << 4, 6 << 4], dtype=torch.uint8).view(1, 1, 2, 1, 1)
    res = golden.run(net, x)
    assert int(res.scores[0, 0]) == 5
    assert golden.unpack(res.spikes[0], 1)[:, 0, 0].tolist() == [0, 1, 0, 1]
    # saturates at 2**T - 1, and negative values give no spikes
    x = torch.tensor([15 << 4, 0], dtype=torch.uint8).view(1, 1, 2, 1, 1)
    assert int(golden.run(net, x).scores[0, 0]) == 15  # (45 + 2) >> 1 = 23 -> 15
    x = torch.tensor([0, 15 << 4], dtype=torch.uint8).view(1, 1, 2, 1, 1)
    assert int(golden.run(net, x).scores[0, 0]) == 0


def test_pooling_is_or_and_readout_ties_go_to_lowest_index():
    ls0 = LayerSpec(LayerKind.CONV, 1, 1, (2, 2), kernel=1, pool=2,
                    neuron=NeuronSpec(NeuronKind.IF, reset="zero"))
    ls1 = LayerSpec(LayerKind.FC, 1, 2, (1, 1), neuron=NeuronSpec(NeuronKind.IF, reset="zero"))
    spec = NetworkSpec("p", (1, 2, 2), 2, (ls0, ls1), classes=2, encoding="bitplane")
    il0 = IntLayer(ls0, torch.ones(1, 1, 1, 1, dtype=torch.int64), torch.zeros(1), torch.ones(1),
                   torch.zeros(1), (), 4, 8, 10, 1)
    il1 = IntLayer(ls1, torch.ones(2, 1, 1, 1, dtype=torch.int64), torch.zeros(2), torch.ones(2),
                   torch.zeros(2), (), 4, 8, 10, 1)
    net = IntNetwork(spec, (il0, il1))
    # one pixel of four set on step 0 only (bit 7): the pooled map fires once
    x = torch.tensor([0, 128, 0, 0], dtype=torch.uint8).view(1, 1, 1, 2, 2)
    res = golden.run(net, x)
    assert golden.unpack(res.spikes[0], 1)[:, 0, 0].tolist() == [1, 0]
    assert res.scores.tolist() == [[1, 1]]
    assert res.classes.tolist() == [0]


def test_pack_unpack_round_trip():
    s = (torch.rand(3, 2, 13) > 0.5).to(torch.int64)
    p = golden.pack(s)
    assert p.shape == (3, 2, 2) and p.dtype == torch.uint8
    assert torch.equal(golden.unpack(p, 13), s.to(torch.uint8))
    assert int(golden.pack(torch.tensor([[[1, 0, 0, 0, 0, 0, 0, 0, 1]]]))[0, 0, 0]) == 1


def test_contract_rejects_bad_parameters():
    ls = LayerSpec(LayerKind.FC, 2, 1, (1, 1))
    with pytest.raises(ContractError, match="weights outside 4 signed bits"):
        IntLayer(ls, torch.tensor([8, 0]).view(1, 2, 1, 1), torch.zeros(1), torch.ones(1),
                 torch.zeros(1), (1,), 4, 8, 10, 1)
    with pytest.raises(ContractError, match=r"weight must have shape \(1, 2, 1, 1\)"):
        IntLayer(ls, torch.zeros(1, 3, 1, 1), torch.zeros(1), torch.ones(1), torch.zeros(1),
                 (1,), 4, 8, 10, 1)
    with pytest.raises(ContractError, match="thresholds must be positive"):
        IntLayer(ls, torch.zeros(1, 2, 1, 1), torch.zeros(1), torch.zeros(1), torch.zeros(1),
                 (1,), 4, 8, 10, 1)


def test_input_must_be_uint8_frames():
    net = one_neuron_net([1], 1, ())
    with pytest.raises(ContractError, match="input must be uint8"):
        golden.run(net, torch.zeros(1, 1, 1, 1, 1))
