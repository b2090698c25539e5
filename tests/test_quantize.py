"""Quantizer: decay shifts, derived widths, and golden vs float agreement."""

import dataclasses

import pytest
import torch

from spikeforge.sw import golden
from spikeforge.sw.golden import IntNetwork
from spikeforge.sw.models import build
from spikeforge.sw.quantize import (QuantConfig, QuantizeError, agreement, decay_shifts,
                                    effective_decay, fake_quantized, quantize, signed_bits,
                                    state_range)
from spikeforge.config import Reset


@pytest.mark.parametrize("decay,shifts", [(0.5, (1,)), (0.75, (2,)), (0.875, (3,)),
                                          (0.8125, (3, 4)), (1.0, ())])
def test_exact_decays_become_exact_shift_lists(decay, shifts):
    got, err = decay_shifts(decay)
    assert got == shifts and err == 0.0


def test_inexact_decay_is_the_nearest_short_list():
    got, err = decay_shifts(0.9)
    assert len(got) <= 3 and abs(err) < 2e-3
    assert effective_decay(got) - 0.9 == pytest.approx(err)
    # no list of at most 3 shifts does better
    import itertools
    best = min(abs(1 - sum(2.0 ** -s for s in c) - 0.9)
               for n in (1, 2, 3) for c in itertools.combinations(range(1, 13), n))
    assert abs(err) == pytest.approx(best)


def test_signed_bits():
    assert signed_bits(-128, 127) == 8
    assert signed_bits(-129, 0) == 9
    assert signed_bits(0, 128) == 9
    assert signed_bits(0, 0) == 1
    assert signed_bits(-1, -1) == 1


def test_signed_bits_is_the_fewest_that_hold_the_range():
    # against the definition: n bits hold [-2**(n-1), 2**(n-1) - 1], n - 1 do not
    for lo in range(-70, 70, 3):
        for hi in range(lo, 140, 5):
            n = signed_bits(lo, hi)
            assert -(1 << (n - 1)) <= lo and hi < 1 << (n - 1)
            assert n == 1 or not (-(1 << (n - 2)) <= lo and hi < 1 << (n - 2))


def test_one_signed_bits_helper():
    from spikeforge.hw import arith
    from spikeforge.sw import golden
    assert signed_bits is golden.signed_bits is arith.signed_bits


def test_state_range_bounds():
    # zero reset, decay 0.5: u < theta + I_hi; negative side I_lo / (1 - d)
    assert state_range(-10, 20, 15, (1,), Reset.ZERO) == (-20, 36)
    # IF without reset and negative currents: unbounded (saturation by design)
    assert state_range(-10, 20, 15, (), Reset.NONE) is None
    # IF with zero reset and no negative currents: bounded
    assert state_range(0, 20, 15, (), Reset.ZERO) == (0, 35)


def random_model(seed, **kw):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    c1 = int(torch.randint(2, 6, (1,), generator=g))
    m = build("convsnn", input_shape=(1, 8, 8), channels=(c1,), hidden=12, timesteps=6, **kw)
    with torch.no_grad():
        for layer in m.layers:
            layer.syn.weight.normal_(0.0, 0.6, generator=g)
            layer.syn.bias.normal_(0.0, 0.1, generator=g)
    return m


def random_frames(seed, n=64, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, *shape), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_golden_equals_float_with_quantized_weights_when_nothing_rounds(seed):
    # IF neurons (no decay shifts) and a state wide enough never to saturate:
    # the only difference left between float and integer is none at all.
    m = random_model(seed, decay=1.0, reset="zero")
    net = quantize(m, QuantConfig(weight_bits=6))
    ag = agreement(m, net, random_frames(seed))
    assert ag["quantized_float_int_spike_agreement"] == 1.0
    assert ag["quantized_float_int_class_agreement"] == 1.0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("reset", ["zero", "subtract", "none"])
def test_golden_vs_float_with_quantized_weights_on_random_lif_networks(seed, reset):
    # decay 0.5 = shift 1: the integer decay floors, so a neuron within a rounding
    # step of its threshold may differ; that is all that may differ.
    m = random_model(seed, decay=0.5, reset=reset)
    net = quantize(m, QuantConfig(weight_bits=8))
    ag = agreement(m, net, random_frames(seed))
    assert ag["quantized_float_int_spike_agreement"] > 0.98
    assert ag["quantized_float_int_class_agreement"] > 0.8


def test_a_broken_contract_is_visible_to_the_agreement_measure():
    # the agreement check can fail: a golden model with the wrong decay shift disagrees
    import dataclasses
    m = random_model(3, decay=0.5)
    net = quantize(m, QuantConfig(weight_bits=8))
    good = agreement(m, net, random_frames(3))["quantized_float_int_spike_agreement"]
    bad_layers = tuple(dataclasses.replace(l, decay_shifts=(2,)) for l in net.layers)
    bad = golden.IntNetwork(net.spec, bad_layers)
    ref_net = net
    from spikeforge.sw.quantize import integer_reference
    ref = integer_reference(ref_net)
    x = random_frames(3)
    xin = golden.input_values(net.spec, x, net.layers[0].input_bits).double()
    tr = ref.run(xin)
    g = golden.run(bad, x)
    n = net.spec.layers[0].out_features
    bad_agree = float((tr.spikes[0].reshape(*golden.unpack(g.spikes[0], n).shape)
                       == golden.unpack(g.spikes[0], n)).float().mean())
    assert good > 0.98 and bad_agree < good - 0.01


def test_quantized_weights_fit_their_width_and_thresholds_follow_the_scale():
    m = random_model(1)
    for bits in (2, 4, 8, 16):
        net = quantize(m, QuantConfig(weight_bits=bits))
        for il in net.layers:
            assert int(il.weight.abs().max()) <= (1 << (bits - 1))
            assert il.weight_bits == bits
    net = quantize(m, QuantConfig(weight_bits=8))
    il = net.layers[1]
    w = m.layers[1].syn.weight.detach().double()
    scale = w.abs().max() / 127
    assert int(il.theta[0]) == round(0.5 / float(scale))
    assert int(il.weight.abs().max()) == 127


def test_per_channel_scales_give_per_channel_thresholds():
    m = random_model(2)
    with torch.no_grad():
        m.layers[0].syn.weight[0] *= 4
    net = quantize(m, QuantConfig(per_channel=True))
    th = net.layers[0].theta
    assert len(set(th.tolist())) > 1
    assert (net.layers[0].weight.flatten(1).abs().amax(1) == 127).all()


def test_requested_state_width_too_small_is_refused_naming_the_layer():
    m = random_model(0)
    with pytest.raises(QuantizeError, match=r"^layer 0: state needs \d+ bits for the worst-case "
                                            r"range \[-?\d+, \d+\] .* 6 requested$"):
        quantize(m, QuantConfig(state_bits=6))


def test_unbounded_if_layer_gets_a_saturating_width():
    m = random_model(0, decay=1.0, reset="none")
    net = quantize(m, QuantConfig())
    assert all(l.state_bits >= 16 for l in net.layers)


def test_a_residual_layer_quantizes_its_skip_as_a_scaled_identity():
    from spikeforge.sw.quantize import skip_weight
    torch.manual_seed(0)
    m = build("sts-resnet", channels=4, blocks=1, hidden=8, timesteps=4)
    m.eval()
    net = quantize(m)
    il = net.layers[2]
    assert il.spec.residual and tuple(il.weight.shape) == (4, 8, 3, 3)
    skip = il.weight[:, 4:]
    centre = skip[range(4), range(4), 1, 1]
    assert torch.equal(skip, skip_weight(il.spec, centre)) and int(centre.min()) > 1
    # the skip adds 1.0 of float current per spike: in the layer's integer
    # units that is 1 / scale, as theta 0.5 is 0.5 / scale
    assert ((il.theta - centre.double() / 2).abs() <= 1).all()
    x = torch.randint(0, 256, (20, 1, 1, 28, 28), dtype=torch.uint8)
    agree = agreement(m, net, x)
    assert agree["quantized_float_int_spike_agreement"] > 0.99
    # the golden model adds the skip: zero it and the residual layer's spikes change
    cut = dataclasses.replace(il, weight=torch.cat([il.weight[:, :4], 0 * skip], 1))
    layers = list(net.layers)
    layers[2] = cut
    a = golden.run(net, x).spikes[2]
    b = golden.run(IntNetwork(net.spec, tuple(layers)), x).spikes[2]
    assert not torch.equal(a, b)


def test_software_only_models_are_refused():
    with pytest.raises(QuantizeError, match="avg pooling is software only"):
        quantize(build("convsnn", channels=(4, 4), hidden=8, pool_mode="avg"))
    with pytest.raises(QuantizeError, match="exponential STEB"):
        quantize(build("stcsnn-vgg", channels=(2, 2, 2, 2), hidden=8, threshold_law="exp"))
    with pytest.raises(QuantizeError, match="rate encoding"):
        quantize(build("convsnn", channels=(4, 4), hidden=8, encoding="rate"))


def test_fake_quantization_puts_weights_on_the_grid_and_passes_gradients():
    m = random_model(0)
    qc = QuantConfig(weight_bits=4)
    with fake_quantized(m, qc):
        w = m.layers[0].syn.weight
        s = w.detach().abs().max() / 7
        assert torch.allclose(w / s, torch.round(w / s), atol=1e-5)
        x = torch.rand(6, 2, 1, 8, 8)
        m(x).sum().backward()
    assert m.layers[0].syn.weight.grad is not None
    assert not hasattr(m.layers[0].syn, "parametrizations")


def test_stcb_network_quantizes_to_shifts_and_agrees_with_float():
    torch.manual_seed(0)
    m = build("stcsnn-vgg", input_shape=(1, 8, 8), channels=(4, 4, 4, 4), hidden=16, timesteps=6)
    m.eval()
    net = quantize(m, QuantConfig(weight_bits=8))
    for il in net.layers:
        assert int(il.shift.min()) >= 0
    ag = agreement(m, net, random_frames(0, n=128))
    assert ag["float_int_class_agreement"] > 0.7


def strict_copy(model):
    """``model`` with every layer's comparison strict (``u > theta``)."""
    import dataclasses
    from spikeforge.sw.models import SpikingNet
    spec = model.spec
    layers = tuple(dataclasses.replace(l, neuron=dataclasses.replace(l.neuron, strict=True))
                   for l in spec.layers)
    out = SpikingNet(dataclasses.replace(spec, layers=layers))
    out.load_state_dict(model.state_dict())
    return out.eval()


@pytest.mark.parametrize("seed", range(3))
def test_strict_networks_quantize_with_their_comparison(seed):
    """The spec's ``strict`` flows into the integer network unchanged; with
    nothing rounding (IF, wide state) the float model with quantised weights
    equals the golden model spike for spike, ties ``u == theta`` included,
    where the inclusive contract spikes otherwise."""
    import dataclasses
    m = strict_copy(random_model(seed, decay=1.0, reset="zero"))
    net = quantize(m, QuantConfig(weight_bits=6))
    assert net.spec == m.spec and all(il.spec.neuron.strict for il in net.layers)
    x = random_frames(seed)
    ag = agreement(m, net, x)
    assert ag["quantized_float_int_spike_agreement"] == 1.0
    layers = tuple(dataclasses.replace(il, spec=dataclasses.replace(
        il.spec, neuron=dataclasses.replace(il.spec.neuron, strict=False))) for il in net.layers)
    inclusive = golden.IntNetwork(dataclasses.replace(net.spec, layers=tuple(
        il.spec for il in layers)), layers)
    a, b = golden.run(net, x), golden.run(inclusive, x)
    assert any(not torch.equal(p, q) for p, q in zip(a.spikes, b.spikes))


# --------------------------------------------------------------------------- calibration targets


@pytest.mark.parametrize("seed", [0, 3])
def test_fidelity_calibration_scores_against_the_float_predictions(seed):
    """Labels that are not the float model's decisions (random ones here):
    ``accuracy`` chases them, ``fidelity`` ignores them and picks exactly the
    clips that accuracy would pick were the float predictions the labels --
    and those keep the integer model closer to the float one."""
    from spikeforge.sw.quantize import calibrate, float_classes, golden_accuracy
    m = random_model(seed).eval()
    x = random_frames(seed, n=64)
    qc = QuantConfig(weight_bits=4)
    f = float_classes(m, x)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(seed + 100))
    assert (f != y).float().mean() > 0.5
    by_labels = calibrate(m, qc, x, y, "accuracy")
    by_float = calibrate(m, qc, x, y, "fidelity")
    assert by_labels != by_float  # the two targets choose different clips here
    assert by_float == calibrate(m, qc, x, f, "accuracy")
    assert by_float == calibrate(m, qc, x, torch.zeros_like(y), "fidelity")  # labels unused
    score = lambda clips, ref: golden_accuracy(quantize(m, qc, clips), x, ref)
    assert score(by_float, f) > score(by_labels, f)
    assert score(by_labels, y) > score(by_float, y)


def test_fidelity_score_is_the_reported_float_int_class_agreement():
    from spikeforge.sw.quantize import float_classes, golden_accuracy
    m = random_model(2).eval()
    x = random_frames(2, n=64)
    net = quantize(m, QuantConfig(weight_bits=4), [0.6, 1.0, 1.0])
    fid = golden_accuracy(net, x, float_classes(m, x))
    assert 0 < fid < 1  # a case where they disagree on some frames
    assert fid == agreement(m, net, x)["float_int_class_agreement"]


def test_unknown_calibration_target_is_refused():
    from spikeforge.sw.quantize import calibrate
    m = random_model(0).eval()
    x = random_frames(0, n=8)
    with pytest.raises(QuantizeError, match="accuracy, fidelity"):
        calibrate(m, QuantConfig(), x, torch.zeros(8, dtype=torch.int64), "labels")


# --------------------------------------------------------------------------- clip margin


def scripted_calibration(monkeypatch, n_images, table):
    """``calibrate`` on scores given by ``table`` (trial clips -> frames matched;
    100 for a trial not listed): quantize returns the trial, the golden model's
    score is looked up, the float predictions are not computed."""
    from spikeforge.sw import quantize as q
    monkeypatch.setattr(q, "quantize", lambda model, qc, clips: tuple(clips))
    monkeypatch.setattr(q, "golden_accuracy",
                        lambda net, x, ref: table.get(net, 100) / len(ref))
    monkeypatch.setattr(q, "float_classes", lambda model, x: torch.zeros(len(x), dtype=torch.int64))
    m = random_model(0)  # three layers; only their number is used
    x = torch.zeros(n_images, 1, 1, 8, 8, dtype=torch.uint8)
    y = torch.zeros(n_images, dtype=torch.int64)
    return lambda target, **kw: q.calibrate(m, QuantConfig(**kw), x, y, target)


@pytest.mark.parametrize("win", [1, 2])
def test_fidelity_keeps_no_clipping_against_a_win_within_the_margin(monkeypatch, win):
    """snnTorch's layer 0: clip 0.8 agreed on 499 of 500 images, 1.0 on 498.
    A win by one or two images (0.2 %, 0.4 % <= 0.5 %) is not taken under
    fidelity; accuracy (margin 0) takes it as before."""
    cal = scripted_calibration(monkeypatch, 500, {(1.0, 1.0, 1.0): 499 - win,
                                                  (0.8, 1.0, 1.0): 499})
    assert cal("fidelity") == [1.0, 1.0, 1.0]
    assert cal("accuracy") == [0.8, 1.0, 1.0]
    assert cal("fidelity", clip_margin=0.0) == [0.8, 1.0, 1.0]     # the margin decides
    assert cal("accuracy", clip_margin=0.005) == [1.0, 1.0, 1.0]


def test_fidelity_takes_a_clip_that_wins_by_more_than_the_margin(monkeypatch):
    # 3 of 500 (0.6 %) in layer 0; in layer 2 (after layer 0's choice) 0.5 beats
    # 0.9, which is within the margin of 1.0: the best clip beats no clipping by 4
    cal = scripted_calibration(monkeypatch, 500, {(1.0, 1.0, 1.0): 480, (0.8, 1.0, 1.0): 483,
                                                  (0.8, 1.0, 0.9): 485, (0.8, 1.0, 0.5): 487})
    assert cal("fidelity") == cal("accuracy") == [0.8, 1.0, 0.5]


def test_clip_margin_is_strict_and_counted_in_images(monkeypatch):
    # 1,000 images: a win by 5 is exactly 0.5 % (not more), by 6 is more
    for win, want in ((5, 1.0), (6, 0.7)):
        cal = scripted_calibration(monkeypatch, 1000, {(1.0, 1.0, 1.0): 900,
                                                       (0.7, 1.0, 1.0): 900 + win})
        assert cal("fidelity")[0] == want
        assert cal("accuracy")[0] == 0.7


def test_clip_margin_defaults_and_range():
    from spikeforge.sw.quantize import calibration_margin
    assert calibration_margin(QuantConfig(), "fidelity") == 0.005
    assert calibration_margin(QuantConfig(), "accuracy") == 0.0
    assert calibration_margin(QuantConfig(clip_margin=0.02), "accuracy") == 0.02
    for bad in (-0.1, 1.0):
        with pytest.raises(QuantizeError, match="clip margin"):
            QuantConfig(clip_margin=bad)
    with pytest.raises(QuantizeError, match="accuracy, fidelity"):
        calibration_margin(QuantConfig(), "labels")


def test_clip_margin_on_a_real_model():
    """The golden model itself: a clip that fidelity without a margin picks, by
    a win of k frames, is kept at 1.0 with a margin of k frames and chosen with
    one just below; accuracy on the float predictions picks it (margin 0)."""
    from spikeforge.sw.quantize import calibrate, float_classes, golden_accuracy
    m = random_model(3).eval()
    x = random_frames(3, n=64)
    f = float_classes(m, x)
    free = calibrate(m, QuantConfig(weight_bits=4, clip_margin=0.0), x, f, "fidelity")
    n = next(i for i, c in enumerate(free) if c < 1.0)  # the first layer clipped
    score = lambda clips: round(64 * golden_accuracy(quantize(m, QuantConfig(weight_bits=4),
                                                              clips), x, f))
    before = free[:n] + [1.0] * (len(free) - n)
    win = score(free[:n + 1] + [1.0] * (len(free) - n - 1)) - score(before)
    assert win >= 1
    kept = calibrate(m, QuantConfig(weight_bits=4, clip_margin=win / 64), x, f, "fidelity")
    assert kept[:n + 1] == before[:n + 1]
    assert calibrate(m, QuantConfig(weight_bits=4, clip_margin=(win - 0.5) / 64), x, f,
                     "fidelity") == free
    assert calibrate(m, QuantConfig(weight_bits=4), x, f, "accuracy") == free
