"""Neuron equations against hand-computed values and gradient formulas."""

import math

import pytest
import torch

from spikeforge.config import Reset
from spikeforge.sw import surrogate as sg
from spikeforge.sw.neurons import (LIFParams, cab, lif_init, lif_sequence, lif_sequence_stepwise,
                                   lif_step, stcb_quantize, steb_encode, steb_thresholds)

I = torch.tensor([0.3, 0.3, 0.0, 0.6, 0.1], dtype=torch.float64)


def trajectory(p, i=I):
    state = lif_init(i[0])
    us, os_ = [], []
    for t in range(len(i)):
        o, state = lif_step(i[t], state, p)
        us.append(float(state.u))
        os_.append(float(o))
    return us, os_


def test_lif_reset_zero_by_hand():
    # decay 0.5, theta 0.5: u = 0.3; 0.15+0.3 = 0.45; 0.225; 0.1125+0.6 = 0.7125 -> spike;
    # reset: 0.5*0.7125*(1-1) + 0.1 = 0.1
    us, os_ = trajectory(LIFParams(decay=0.5, theta=0.5, reset=Reset.ZERO))
    assert us == pytest.approx([0.3, 0.45, 0.225, 0.7125, 0.1])
    assert os_ == [0, 0, 0, 1, 0]


def test_lif_reset_subtract_by_hand():
    # after the spike at t=3: 0.5*0.7125 - 0.5 + 0.1 = -0.04375
    us, os_ = trajectory(LIFParams(decay=0.5, theta=0.5, reset=Reset.SUBTRACT))
    assert us == pytest.approx([0.3, 0.45, 0.225, 0.7125, -0.04375])
    assert os_ == [0, 0, 0, 1, 0]


def test_lif_reset_none_by_hand():
    # no reset: 0.5*0.7125 + 0.1 = 0.45625 (below threshold)
    us, os_ = trajectory(LIFParams(decay=0.5, theta=0.5, reset=Reset.NONE))
    assert us == pytest.approx([0.3, 0.45, 0.225, 0.7125, 0.45625])
    assert os_ == [0, 0, 0, 1, 0]


def test_threshold_is_inclusive():
    us, os_ = trajectory(LIFParams(decay=1.0, theta=0.5), torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert os_ == [1, 0]


def test_if_integrates_without_leak():
    us, os_ = trajectory(LIFParams(decay=1.0, theta=1.0, reset=Reset.SUBTRACT),
                         torch.tensor([0.4, 0.4, 0.4, 0.4], dtype=torch.float64))
    assert us == pytest.approx([0.4, 0.8, 1.2, 0.6])
    assert os_ == [0, 0, 1, 0]


def test_hybrid_leaky_relu_has_no_reset():
    p = LIFParams(decay=0.5, theta=0.5)
    i = torch.tensor([0.6, 0.6, 0.1], dtype=torch.float64).view(3, 1)
    o = lif_sequence_stepwise(i, p, hybrid_beta=0.1).flatten().tolist()
    # u = 0.6 -> 0.6; 0.9 -> 0.9 (no reset); 0.55 -> 0.55
    assert o == pytest.approx([0.6, 0.9, 0.55])
    i2 = torch.tensor([0.2], dtype=torch.float64).view(1, 1)
    assert lif_sequence(i2, p, hybrid_beta=0.1).item() == pytest.approx(0.02)


@pytest.mark.parametrize("kind,expected", [
    ("gaussian", lambda x: math.exp(-x * x / (2 / 36)) / math.sqrt(2 * math.pi / 6)),
    ("rect", lambda x: 1.0 if abs(x) < 0.5 else 0.0),
    ("fast_sigmoid", lambda x: 1 / (1 + 25 * abs(x)) ** 2),
])
def test_surrogate_gradients_match_formulas(kind, expected):
    theta = 0.5
    u = torch.tensor([-0.3, 0.2, 0.45, 0.5, 0.62, 1.4], dtype=torch.float64, requires_grad=True)
    o = sg.spike(u, theta, kind)
    assert o.tolist() == [0, 0, 0, 1, 1, 1]
    (g,) = torch.autograd.grad(o.sum(), u)
    want = [expected(x - theta) for x in u.tolist()]
    assert g.tolist() == pytest.approx(want)


def test_gaussian_peak_is_the_convsnn_code_normalisation():
    assert sg.derivative("gaussian", torch.tensor(0.5), 0.5, torch.tensor(1.0)).item() == \
        pytest.approx(0.977205, abs=1e-6)


def test_bpsa_is_one_over_u_at_spikes_only():
    u = torch.tensor([0.2, 0.5, 0.8, 2.0], dtype=torch.float64, requires_grad=True)
    o = sg.spike(u, 0.5, "bpsa")
    (g,) = torch.autograd.grad(o.sum(), u)
    assert g.tolist() == pytest.approx([0.0, 2.0, 1.25, 0.5])


def test_bpta_adds_decay_times_a_times_surrogate_across_the_reset():
    # two steps, gradient of o[1] w.r.t. i[0]:
    #   without BPTA: do1/du1 * du1/di0 where du1/du0 = decay*(1-o0) - decay*u0*do0/du0
    #   BPTA adds decay*a*g'(u1)*do0/du0
    p0 = LIFParams(decay=0.8, theta=0.5, surrogate="rect", bpta=0.0)
    p1 = LIFParams(decay=0.8, theta=0.5, surrogate="rect", bpta=0.2)
    grads = []
    for p in (p0, p1):
        i = torch.tensor([[0.6], [0.3]], dtype=torch.float64, requires_grad=True)
        o = lif_sequence_stepwise(i, p)
        (g,) = torch.autograd.grad(o[1].sum(), i)
        grads.append(g[0].item())
    # rect: g'(u) = 1 for |u - 0.5| < 0.5; u0 = 0.6 (spike), u1 = 0.8*0.6*0 + 0.3 = 0.3
    d1, d0 = 1.0, 1.0
    base = d1 * (0.8 * (1 - 1) - 0.8 * 0.6 * d0)
    assert grads[0] == pytest.approx(base)
    assert grads[1] - grads[0] == pytest.approx(0.8 * 0.2 * d1 * d0)


@pytest.mark.parametrize("reset", list(Reset))
@pytest.mark.parametrize("kind", sg.SURROGATES)
@pytest.mark.parametrize("bpta", [0.0, 0.2])
@pytest.mark.parametrize("hybrid", [None, 0.05])
def test_fused_sequence_equals_stepwise(reset, kind, bpta, hybrid):
    torch.manual_seed(1)
    p = LIFParams(decay=0.8, theta=0.5, reset=reset, surrogate=kind, bpta=bpta)
    i = torch.randn(8, 64, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 64, dtype=torch.float64)
    a = lif_sequence(i, p, hybrid)
    (ga,) = torch.autograd.grad((a * w).sum(), i)
    b = lif_sequence_stepwise(i, p, hybrid)
    (gb,) = torch.autograd.grad((b * w).sum(), i)
    assert torch.equal(a, b)
    torch.testing.assert_close(ga, gb)


def test_steb_is_a_binary_expansion_msb_first():
    th = steb_thresholds(4, 0.8)
    assert th == pytest.approx([0.8, 0.4, 0.2, 0.1])
    s = steb_encode(torch.tensor([0.75, 1.55, -0.3]), th)
    assert s[:, 0].tolist() == [0, 1, 1, 1]   # 0.75 = 0.4 + 0.2 + 0.1 (+0.05 left)
    assert s[:, 1].tolist() == [1, 1, 1, 1]   # 1.55 >= 1.5: saturates at all ones
    assert s[:, 2].tolist() == [0, 0, 0, 0]   # negative: no spikes


def test_steb_then_cab_is_clamped_quantised_relu():
    T, theta = 8, 0.8
    th = steb_thresholds(T, theta)
    step = theta / 2 ** (T - 1)
    # off the grid points, where float rounding of the subtractions could decide
    x = (torch.arange(-200, 500, dtype=torch.float64) + 0.37) * step
    q = cab(steb_encode(x, th), th)
    top = theta * (2 - 2 ** (1 - T))
    want = torch.clamp(torch.floor(torch.relu(x) / step) * step, max=top)
    torch.testing.assert_close(q, want)


def test_stcb_equivalent_gradient_is_relu():
    th = steb_thresholds(8, 0.8)
    x = torch.tensor([-0.5, 0.3, 1.0, 3.0], requires_grad=True)
    y = stcb_quantize(x, th)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert y.tolist() == pytest.approx(cab(steb_encode(x.detach(), th), th).tolist())


def test_cab_of_conv_of_steb_equals_conv_of_value():
    # CAB(conv(STEB(x))) == conv(CAB(STEB(x))) by linearity: the STCB layer forward
    torch.manual_seed(0)
    th = steb_thresholds(8, 0.8)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64) * 2
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    s = steb_encode(x, th)  # [T, 2, 3, 6, 6]
    cur = torch.nn.functional.conv2d(s.flatten(0, 1), w, padding=1).view(8, 2, 4, 6, 6)
    lhs = cab(cur, th)
    rhs = torch.nn.functional.conv2d(stcb_quantize(x, th), w, padding=1)
    torch.testing.assert_close(lhs, rhs)


def test_exponential_threshold_law():
    assert steb_thresholds(3, 2.0, "exp", 2.0) == pytest.approx([2.0, 2 * math.exp(-0.5), 2 * math.exp(-1)])
    with pytest.raises(ValueError, match="threshold law"):
        steb_thresholds(3, 1.0, "linear")
