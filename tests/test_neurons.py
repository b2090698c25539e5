"""Neuron equations against hand-computed values and gradient formulas."""

import contextlib
import math
import warnings

import pytest
import torch

from spikeforge.config import Reset
from spikeforge.sw import neurons
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


def test_strict_threshold_is_exclusive():
    i = torch.tensor([0.5, 0.0, 0.25], dtype=torch.float64)
    assert trajectory(LIFParams(decay=1.0, theta=0.5), i)[1] == [1, 0, 0]
    # u = 0.5 (== theta: no spike), 0.5, 0.75 > theta
    us, os_ = trajectory(LIFParams(decay=1.0, theta=0.5, strict=True), i)
    assert us == pytest.approx([0.5, 0.5, 0.75]) and os_ == [0, 0, 1]
    # the spec's field reaches the module's parameters
    from spikeforge.config import NeuronSpec
    assert neurons.LIF(NeuronSpec(strict=True)).params.strict
    assert not neurons.LIF(NeuronSpec()).params.strict


def test_if_integrates_without_leak():
    us, os_ = trajectory(LIFParams(decay=1.0, theta=1.0, reset=Reset.SUBTRACT),
                         torch.tensor([0.4, 0.4, 0.4, 0.4], dtype=torch.float64))
    assert us == pytest.approx([0.4, 0.8, 1.2, 0.6])
    assert os_ == [0, 0, 1, 0]


def test_hybrid_leaky_relu_has_no_reset(use_kernel):
    p = LIFParams(decay=0.5, theta=0.5)
    i = torch.tensor([0.6, 0.6, 0.1], dtype=torch.float64).view(3, 1)
    o = lif_sequence_stepwise(i, p, hybrid_beta=0.1).flatten().tolist()
    # u = 0.6 -> 0.6; 0.9 -> 0.9 (no reset); 0.55 -> 0.55
    assert o == pytest.approx([0.6, 0.9, 0.55])
    i2 = torch.tensor([0.2], dtype=torch.float64).view(1, 1)
    assert lif_sequence(i2, p, hybrid_beta=0.1, use_kernel=use_kernel).item() == pytest.approx(0.02)


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


@pytest.fixture(params=[False, True], ids=["torch", "kernel"])
def use_kernel(request):
    """Both paths of lif_sequence: the PyTorch reference and the C++ kernel."""
    if request.param and not neurons.kernel():
        pytest.skip("the fused LIF kernel could not be built here (see the warning)")
    return request.param


@pytest.mark.parametrize("reset", list(Reset))
@pytest.mark.parametrize("kind", sg.SURROGATES)
@pytest.mark.parametrize("bpta", [0.0, 0.2])
@pytest.mark.parametrize("hybrid", [None, 0.05])
def test_fused_sequence_equals_stepwise(reset, kind, bpta, hybrid, use_kernel):
    torch.manual_seed(1)
    p = LIFParams(decay=0.8, theta=0.5, reset=reset, surrogate=kind, bpta=bpta)
    i = torch.randn(8, 64, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 64, dtype=torch.float64)
    a = lif_sequence(i, p, hybrid, use_kernel=use_kernel)
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


# --------------------------------------------------------------------------- fused kernel


def _kernel_or_skip():
    if not neurons.kernel():
        pytest.skip("the fused LIF kernel could not be built here (see the warning)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset", list(Reset))
@pytest.mark.parametrize("kind", sg.SURROGATES)
@pytest.mark.parametrize("bpta,hybrid", [(0.0, None), (0.2, None), (0.0, 0.05)])
@pytest.mark.parametrize("steps,pool", [(None, 1), (None, 2), (6, 1), (6, 2), (None, 3)])
def test_kernel_equals_torch_path(dtype, reset, kind, bpta, hybrid, steps, pool):
    """Kernel vs PyTorch path (``_LIFSequence``, ``expand``, ``F.max_pool2d``): the
    same spikes bit for bit, the same gradient; also with a static input and a
    fused max pool, on sizes the pool does not divide (rows/columns dropped)."""
    _kernel_or_skip()
    torch.manual_seed(2)
    p = LIFParams(decay=0.8, theta=0.5, reset=reset, surrogate=kind, bpta=bpta)
    shape = (3, 4, 9, 11) if pool != 2 else (3, 4, 10, 12)
    i = torch.randn(*(() if steps else (6,)), *shape, dtype=dtype) * 0.6
    i.requires_grad_()
    a = lif_sequence(i, p, hybrid, steps=steps, pool=pool, use_kernel=True)
    w = torch.randn(a.shape, dtype=dtype)
    (ga,) = torch.autograd.grad((a * w).sum(), i)
    b = lif_sequence(i, p, hybrid, steps=steps, pool=pool, use_kernel=False)
    (gb,) = torch.autograd.grad((b * w).sum(), i)
    assert torch.equal(a, b)
    torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset", list(Reset))
@pytest.mark.parametrize("kind", ["gaussian", "bpsa"])
@pytest.mark.parametrize("hybrid", [None, 0.05])
@pytest.mark.parametrize("steps,pool", [(None, 1), (6, 2)])
def test_strict_comparison_in_every_path(dtype, reset, kind, hybrid, steps, pool):
    """Currents on a grid of 1/8 with decay 0.5 and theta 0.5 (exact in
    binary) put u on theta often: the stepwise path, the PyTorch sequence and
    the kernel agree spike for spike under ``>`` too, and ``>`` differs from
    ``>=`` there (else the case proves nothing)."""
    torch.manual_seed(4)
    shape = (3, 4, 10, 12)
    i = torch.randint(-4, 7, (*(() if steps else (6,)), *shape)).to(dtype) / 8
    i.requires_grad_()
    out = {}
    for strict in (False, True):
        p = LIFParams(decay=0.5, theta=0.5, reset=reset, surrogate=kind, strict=strict)
        a = lif_sequence_stepwise(i, p, hybrid, steps=steps, pool=pool)
        w = torch.randn(a.shape, dtype=dtype, generator=torch.Generator().manual_seed(5))
        (ga,) = torch.autograd.grad((a * w).sum(), i)
        paths = [False] + ([True] if neurons.kernel() else [])
        for k in paths:
            b = lif_sequence(i, p, hybrid, steps=steps, pool=pool, use_kernel=k)
            (gb,) = torch.autograd.grad((b * w).sum(), i)
            assert torch.equal(a, b), (strict, k)
            torch.testing.assert_close(ga, gb)
        out[strict] = a
    assert not torch.equal(out[False], out[True])


def test_kernel_pool_gradient_goes_to_the_first_maximum():
    # binary spikes tie all the time: the window's gradient goes to its first
    # spiking neuron in row-major order, or to its first neuron when none spiked
    _kernel_or_skip()
    p = LIFParams(decay=0.5, theta=0.5)
    i = torch.tensor([[[[0.0, 1.0, 0.2, 0.0],
                        [1.0, 0.9, 0.0, 0.1]]]], dtype=torch.float64, requires_grad=True)
    o = lif_sequence(i, p, pool=2, use_kernel=True)   # one step, windows 2x2
    assert o.flatten().tolist() == [1.0, 0.0]
    (g,) = torch.autograd.grad(o.sum(), i)
    d1 = sg.derivative("gaussian", torch.tensor(1.0), 0.5, torch.tensor(1.0)).item()
    d0 = sg.derivative("gaussian", torch.tensor(0.2), 0.5, torch.tensor(0.0)).item()
    assert g.flatten().tolist() == pytest.approx([0.0, d1, d0, 0.0, 0.0, 0.0, 0.0, 0.0])


def test_kernel_float32_spikes_equal_on_a_large_layer():
    # rounding as the reference, so no spike flips even on millions of neurons
    _kernel_or_skip()
    torch.manual_seed(3)
    p = LIFParams(decay=0.5, theta=0.5)
    i = torch.rand(20, 48, 28, 28) * 0.8
    a = lif_sequence(i, p, steps=10, pool=2, use_kernel=True)
    b = lif_sequence(i, p, steps=10, pool=2, use_kernel=False)
    assert torch.equal(a, b)
    i2 = torch.randn(10, 20, 48, 14, 14) * 0.5
    assert torch.equal(lif_sequence(i2, p, use_kernel=True), lif_sequence(i2, p, use_kernel=False))


def test_kernel_failure_falls_back_with_one_warning(monkeypatch):
    from spikeforge.sw import lif_kernel
    saved = dict(lif_kernel._state)
    try:
        lif_kernel._state.clear()
        monkeypatch.setenv("CXX", "/nonexistent/c++")
        with pytest.warns(RuntimeWarning, match="PyTorch path"):
            assert neurons.kernel() is False
        i = torch.tensor([[0.3], [0.3], [0.6]], dtype=torch.float64, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")      # no second warning
            o = lif_sequence(i, LIFParams(decay=0.5, theta=0.5))
            o.sum().backward()
        assert o.flatten().tolist() == [0.0, 0.0, 1.0]
        with pytest.raises(RuntimeError, match="unavailable"):
            lif_sequence(i, LIFParams(), use_kernel=True)
    finally:
        lif_kernel._state.clear()
        lif_kernel._state.update(saved)


# --------------------------------------------------------------------------- models


def _model_run(model, x, beta, old):
    """Scores, spikes and parameter gradients; ``old``: the path before conv1-once
    and the kernel (layer 0 on all T*B frames, PyTorch LIF and pooling)."""
    from unittest import mock
    from spikeforge.sw import models
    model.zero_grad(set_to_none=True)
    with contextlib.ExitStack() as stack:
        if old:
            stack.enter_context(mock.patch.object(models.SpikingNet, "_static_input",
                                                  lambda self, x: False))
            stack.enter_context(mock.patch.object(neurons, "kernel", lambda verbose=False: False))
        tr = model.run(x, beta)
    g = torch.Generator().manual_seed(5)
    loss = tr.scores.square().sum() + sum(
        (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum() for s in tr.spikes)
    loss.backward()
    return tr, {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}


@pytest.mark.parametrize("name,kw", [
    ("convsnn", dict(timesteps=5)),
    ("bpsta-small", dict(width=0.1, hidden=64, timesteps=6)),   # batch norm in train mode
    ("sts-resnet", dict(channels=8, timesteps=5)),
])
@pytest.mark.parametrize("beta", [None, 0.1])
def test_static_input_runs_layer_0_once_with_the_same_result(name, kw, beta):
    import copy
    from spikeforge.sw import models
    torch.manual_seed(0)
    m = models.build(name, **kw).to(torch.float64).train()
    ref = copy.deepcopy(m)
    T = m.spec.timesteps
    x = (torch.rand(4, 1, 28, 28, dtype=torch.float64) * 2).expand(T, 4, 1, 28, 28).contiguous()
    assert m._static_input(x) and m._static_input(x[:1].expand(T, 4, 1, 28, 28))
    a, ga = _model_run(m, x, beta, old=False)
    b, gb = _model_run(ref, x, beta, old=True)
    torch.testing.assert_close(a.scores, b.scores)
    for sa, sb in zip(a.spikes, b.spikes):
        if beta is None and not m.spec.layers[0].batchnorm:
            assert torch.equal(sa, sb)          # the same convolutions: bit for bit
        else:
            torch.testing.assert_close(sa, sb)  # batch statistics over B, not T*B frames
    for k in gb:
        # a conv bias before batch norm has gradient 0 up to rounding: compare on the
        # scale of its layer's weights
        scale = max(gb[k].abs().max().item(), gb[k.replace("bias", "weight")].abs().max().item())
        torch.testing.assert_close(ga[k], gb[k], atol=1e-9 * scale, rtol=1e-7)
    for (k, u), v in zip(m.named_buffers(), ref.buffers()):
        torch.testing.assert_close(u, v, msg=k)   # running statistics of batch norm


def test_static_input_needs_the_same_frame_at_every_step():
    from spikeforge.sw import models
    m = models.build("convsnn", timesteps=4)
    x = torch.rand(4, 2, 1, 28, 28)
    assert not m._static_input(x)
    assert m._static_input(x[:1].expand(4, 2, 1, 28, 28))
    assert not models.build("convsnn", timesteps=4, encoding="rate")._static_input(
        x[:1].expand(4, 2, 1, 28, 28))
