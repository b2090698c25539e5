"""Quantization: a trained float :class:`SpikingNet` -> an integer :class:`IntNetwork`.

Per layer (``s``: the weight scale, per layer or per output channel)::

    w_int     = clamp(round(w / s), -(2**(W-1)), 2**(W-1) - 1)
    bias_int  = round(b / s)            theta_int = max(1, round(theta / s))
    decay     -> shifts (s_1, s_2, ...) with 1 - sum 2**-s_k nearest the float decay

so the integer state is the float state in units of ``s``.  Batch norm is
folded into the weights first.  Layer 0 under ``direct`` encoding sees
``x = p >> (8 - B)`` for a pixel ``p`` the float model saw as ``p / 255``, so
its effective weight per unit of ``x`` is ``w * 2**(8-B) / 255``.

STCB layers keep the STEB quantum ``q_l = theta_l / 2**(T-1)`` as the unit of
their values and choose per channel a power-of-two weight scale
``s = q_l * 2**-r / q_{l-1}`` (``q_{-1}``: the input unit), so the CAB rescale
is the shift ``acc >> r``.

Calibration picks, layer by layer, the weight clipping ratio (of max |w|)
that gives the integer model the best score on training samples: its
accuracy on their labels (``accuracy``) or its class agreement with the
float model's own predictions (``fidelity``; for an imported model those are
the source framework's).  Under ``fidelity`` a ratio below 1.0 must beat no
clipping by more than a margin (0.5 % of the calibration images) to be
chosen: a win by one or two of 500 images is noise.

Widths are derived: from the worst-case current of the weights and fan-in
(:meth:`IntLayer.current_bounds`), the decay and the reset, the state range
and so the state width; a requested width that cannot hold a bounded range
is refused (:class:`QuantizeError`).  An IF layer without reset has no bound
and relies on saturation, which the contract defines.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import torch
from torch.nn.utils import parametrize

from spikeforge.config import NetworkSpec, NeuronKind, Reset
from spikeforge.errors import SpikeforgeError
from spikeforge.sw import golden
from spikeforge.sw.golden import IntLayer, IntNetwork, signed_bits
from spikeforge.sw.models import SpikingNet


class QuantizeError(SpikeforgeError, ValueError):
    """A network or setting that cannot be quantized as asked, with the layer named."""


@dataclass(frozen=True)
class QuantConfig:
    weight_bits: int = 8
    per_channel: bool = False
    input_bits: int = 8
    state_bits: int | None = None      # None: derived per layer
    max_decay_shifts: int = 3
    clip_candidates: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
    # calibration: the fraction of the calibration images by which a ratio
    # below 1.0 must beat 1.0 (no clipping), strictly, to be chosen; None: the
    # target's default, CALIBRATION_MARGINS (see :func:`calibrate`)
    clip_margin: float | None = None

    def __post_init__(self):
        if self.clip_margin is not None and not 0.0 <= self.clip_margin < 1.0:
            raise QuantizeError(f"clip margin must be in [0, 1), not {self.clip_margin}")
        if not 2 <= self.weight_bits <= 16:
            raise QuantizeError(f"weight bits must be in 2..16, not {self.weight_bits}")
        if not 1 <= self.input_bits <= 8:
            raise QuantizeError(f"input bits must be in 1..8, not {self.input_bits}")
        if self.state_bits is not None and not 2 <= self.state_bits <= 48:
            raise QuantizeError(f"state bits must be in 2..48, not {self.state_bits}")


# --------------------------------------------------------------------------- pieces


def decay_shifts(decay: float, max_terms: int = 3, max_shift: int = 12) -> tuple[tuple[int, ...], float]:
    """The list of distinct shifts whose ``1 - sum 2**-s`` is nearest ``decay``
    (fewest terms on ties), and the error ``approx - decay``."""
    best, best_err = (), 1.0 - decay
    for n in range(1, max_terms + 1):
        for combo in itertools.combinations(range(1, max_shift + 1), n):
            err = 1.0 - sum(2.0 ** -s for s in combo) - decay
            if abs(err) < abs(best_err) - 1e-12:
                best, best_err = combo, err
    return best, best_err


def effective_decay(shifts: tuple[int, ...]) -> float:
    return 1.0 - sum(2.0 ** -s for s in shifts)


def state_range(i_lo: int, i_hi: int, theta: int, shifts: tuple[int, ...],
                reset: Reset) -> tuple[int, int] | None:
    """Worst-case ``(min, max)`` of ``u`` for currents in ``[i_lo, i_hi]``
    (bias included), or ``None`` when the state is unbounded.

    Bounds of the integer decay: ``d*u <= decay(u) <= d*u + len(shifts)``
    with ``d = 1 - sum 2**-s``.  Below threshold a neuron never spikes, so
    the negative side grows to ``i_lo / (1 - d)``; above, the reset zeroes
    (``u < theta + i_hi``) or subtracts (``u <= (i_hi + n) / (1 - d)``).
    """
    d = effective_decay(shifts)
    n = len(shifts)
    neg = min(i_lo, 0)
    if d >= 1.0:
        if neg < 0 or reset is not Reset.ZERO:
            return None
        lo = 0
    else:
        lo = math.floor(neg / (1.0 - d)) - (theta if reset is Reset.SUBTRACT else 0)
    if reset is Reset.ZERO:
        hi = theta + max(i_hi, 0) + n
    elif d >= 1.0:
        return None
    else:
        hi = math.ceil((max(i_hi, 0) + n) / (1.0 - d))
    return min(lo, i_lo), max(hi, i_hi)


def folded(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """Float ``(weight [C_out, C_in, k, k], bias [C_out])`` with batch norm folded
    in; a residual layer's weight also holds its skip (``[C_out, 2 * C_in, k, k]``,
    the golden model's input order)."""
    w = layer.syn.weight.detach().to(torch.float64)
    c = w.shape[0]
    b = layer.syn.bias.detach().to(torch.float64) if layer.syn.bias is not None \
        else torch.zeros(c, dtype=torch.float64)
    if layer.bn is not None:
        bn = layer.bn
        g = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * g.view(-1, *([1] * (w.dim() - 1)))
        b = (b - bn.running_mean.double()) * g + bn.bias.detach().double()
    s = layer.spec
    w = w.reshape(c, s.in_channels, s.kernel, s.kernel)
    if s.residual:
        w = torch.cat([w, skip_weight(s, layer.skip.detach().double())], 1)
    return w, b


def skip_weight(spec, scale: torch.Tensor) -> torch.Tensor:
    """A residual layer's skip as conv weights ``[C, C, k, k]``: output
    channel ``c`` takes ``scale[c]`` times the block input's channel ``c`` at
    the centre tap."""
    c, k = spec.in_channels, spec.kernel
    w = torch.zeros(c, c, k, k, dtype=scale.dtype)
    w[range(c), range(c), k // 2, k // 2] = scale
    return w


def _qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def _round_clamp(v: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.round(v).clamp(-_qmax(bits) - 1, _qmax(bits)).to(torch.int64)


# --------------------------------------------------------------------------- layers


def _lif_layer(n: int, layer, qc: QuantConfig, in_unit: float, clip: float,
               input_bits: int) -> IntLayer:
    spec = layer.spec
    w, b = folded(layer)
    w = w * in_unit
    c = spec.out_channels
    amax = w.abs().flatten(1).amax(1) if qc.per_channel else w.abs().max().expand(c)
    scale = (amax * clip / _qmax(qc.weight_bits)).clamp(min=1e-12)
    sv = scale.view(-1, 1, 1, 1)
    steps = spec.neuron.theta / scale
    if not bool(torch.isfinite(steps).all()) or float(steps.max()) >= 2.0 ** 62:
        raise QuantizeError(f"layer {n}: theta {spec.neuron.theta:g} is {float(steps.max()):.3g} "
                            f"weight steps of {float(scale.min()):.3g}: too large for an integer "
                            "threshold (a huge theta, or a channel whose weights are all zero)")
    theta = torch.round(steps).clamp(min=1).to(torch.int64)
    shifts, _ = decay_shifts(spec.neuron.decay, qc.max_decay_shifts)
    il = IntLayer(spec, _round_clamp(w / sv, qc.weight_bits), torch.round(b / scale).to(torch.int64),
                  theta, torch.zeros(c, dtype=torch.int64), shifts, qc.weight_bits,
                  state_bits=2, acc_bits=2, input_bits=input_bits)
    return _with_widths(n, il, qc)


def _with_widths(n: int, il: IntLayer, qc: QuantConfig) -> IntLayer:
    i_lo, i_hi = il.current_bounds()
    theta = int(il.theta.max())
    rng = state_range(i_lo, i_hi, theta, il.decay_shifts, il.spec.neuron.reset)
    floor_bits = signed_bits(-theta, theta)  # the threshold must be representable
    if rng is None:
        bits = qc.state_bits or max(16, floor_bits + 1)
    else:
        need = max(signed_bits(*rng), floor_bits)
        if qc.state_bits is not None and qc.state_bits < need:
            raise QuantizeError(
                f"layer {n}: state needs {need} bits for the worst-case range [{rng[0]}, {rng[1]}] "
                f"(current in [{i_lo}, {i_hi}], theta {theta}), {qc.state_bits} requested")
        bits = qc.state_bits or need
    if floor_bits > bits:
        raise QuantizeError(f"layer {n}: theta {theta} does not fit {bits} state bits")
    half = 1 << (bits - 1)
    acc = signed_bits(-half + min(i_lo, 0), half - 1 + max(i_hi, 0))
    return dataclasses.replace(il, state_bits=bits, acc_bits=acc)


def _stcb_layer(n: int, layer, qc: QuantConfig, in_unit: float, T: int, clip: float,
                input_bits: int) -> IntLayer:
    spec = layer.spec
    w, b = folded(layer)
    c = spec.out_channels
    q = spec.neuron.theta / (1 << (T - 1))
    amax = w.abs().flatten(1).amax(1) if qc.per_channel else w.abs().max().expand(c)
    # largest r with |w| / s = |w| * in_unit * 2**r / q <= qmax
    ratio = (_qmax(qc.weight_bits) * q / (amax * clip * in_unit).clamp(min=1e-30))
    r = torch.floor(torch.log2(ratio)).clamp(min=0, max=30).to(torch.int64)
    s = q * torch.pow(2.0, -r.double()) / in_unit
    w_int = _round_clamp(w / s.view(-1, 1, 1, 1), qc.weight_bits)
    bias = torch.round(b / (q * torch.pow(2.0, -r.double()))).to(torch.int64)
    il = IntLayer(spec, w_int, bias, torch.ones(c, dtype=torch.int64), r, (), qc.weight_bits,
                  state_bits=2, acc_bits=2, input_bits=input_bits)
    lo, hi = il.current_bounds()
    acc = signed_bits(lo, hi)
    state = max(signed_bits(lo >> int(r.max()), hi >> int(r.min())), T + 1)
    return dataclasses.replace(il, state_bits=state, acc_bits=acc)


def check_mappable(spec: NetworkSpec) -> None:
    for n, l in enumerate(spec.layers):
        if l.pool > 1 and l.pool_mode.value != "max":
            raise QuantizeError(f"layer {n}: {l.pool_mode.value} pooling is software only; "
                                "train with pool_mode='max' (an OR on spikes)")
        if not l.neuron.hardware_mappable:
            raise QuantizeError(f"layer {n}: the exponential STEB threshold law is float only")
    if spec.encoding == "rate":
        raise QuantizeError("rate encoding is random: use direct or bitplane input")


def quantize(model: SpikingNet, qc: QuantConfig = QuantConfig(),
             clips: list[float] | None = None) -> IntNetwork:
    """Integer network for ``model`` with per-layer clipping ratios ``clips``."""
    spec = model.spec
    check_mappable(spec)
    clips = clips or [1.0] * len(spec.layers)
    T = spec.timesteps
    direct = spec.encoding == "direct"
    first_bits = qc.input_bits if direct else 1
    # the float model's unit of layer 0's integer input x
    in_unit = (1 << (8 - qc.input_bits)) / 255.0 if direct else 1.0
    layers = []
    for n, (layer, clip) in enumerate(zip(model.layers, clips)):
        bits = first_bits if n == 0 else (T if model.stcb else 1)
        if model.stcb:
            il = _stcb_layer(n, layer, qc, in_unit, T, clip, bits)
            in_unit = layer.spec.neuron.theta / (1 << (T - 1))
        else:
            il = _lif_layer(n, layer, qc, in_unit if n == 0 else 1.0, clip, bits)
        layers.append(il)
    return IntNetwork(spec, tuple(layers))


def golden_accuracy(net: IntNetwork, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> float:
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((golden.run(net, x[i:i + batch]).classes == y[i:i + batch]).sum())
    return correct / len(y)


# the default QuantConfig.clip_margin per target: accuracy (a run trained here)
# keeps the plain best score; fidelity asks a clip to beat no clipping by more
# than 0.5 % of the calibration images (3 of 500), one or two being noise
CALIBRATION_MARGINS = {"accuracy": 0.0, "fidelity": 0.005}
CALIBRATION_TARGETS = tuple(CALIBRATION_MARGINS)


def _check_target(target: str) -> None:
    if target not in CALIBRATION_TARGETS:
        raise QuantizeError(f"calibration target must be one of "
                            f"{', '.join(CALIBRATION_TARGETS)}, not {target!r}")


def float_classes(model: SpikingNet, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """The float model's own class (most output spikes) for each frame of ``x``."""
    from spikeforge.sw import data as sfdata
    spec = model.spec
    with torch.no_grad():
        return torch.cat([model(sfdata.encode(x[i:i + batch], spec.timesteps,
                                              spec.encoding)).argmax(1)
                          for i in range(0, len(x), batch)])


def calibration_reference(model: SpikingNet, x: torch.Tensor, y: torch.Tensor,
                          target: str = "accuracy") -> torch.Tensor:
    """The classes calibration scores the integer model against: the labels
    ``y`` (``accuracy``) or the float model's predictions on ``x`` (``fidelity``)."""
    _check_target(target)
    return y if target == "accuracy" else float_classes(model, x)


def calibration_margin(qc: QuantConfig, target: str) -> float:
    """``qc.clip_margin``, or the target's default (:data:`CALIBRATION_MARGINS`)."""
    _check_target(target)
    return CALIBRATION_MARGINS[target] if qc.clip_margin is None else qc.clip_margin


def calibrate(model: SpikingNet, qc: QuantConfig, x: torch.Tensor, y: torch.Tensor,
              target: str = "accuracy") -> list[float]:
    """Greedy per-layer choice of the clipping ratio: the one whose integer
    model's classes on ``x`` best match :func:`calibration_reference` -- the
    labels ``y`` (``target="accuracy"``) or the float model's own predictions
    (``target="fidelity"``); ties go to the larger ratio.

    A ratio below 1.0 is chosen only if it matches more frames than 1.0 (no
    clipping, the other layers as chosen so far) by more than the margin
    :func:`calibration_margin`, a fraction of ``len(x)``: ``qc.clip_margin``,
    by default 0 for ``accuracy`` (the plain best score) and 0.005 for
    ``fidelity`` (more than 2.5 of 500 images, so at least 3: on 500 images
    the agreement of near choices differs by one or two images of noise,
    which picked snnTorch's layer-0 clip 0.8 by 499 against 498 and lost
    0.4 % agreement on the test images); otherwise the layer keeps 1.0."""
    ref = calibration_reference(model, x, y, target)
    need = calibration_margin(qc, target) * len(ref)  # frames to win by, strictly more
    clips = [1.0] * len(model.spec.layers)
    for n in range(len(clips)):
        scored = {}  # ratio -> frames whose class matches ref
        for c in qc.clip_candidates:
            trial = clips[:n] + [c] + clips[n + 1:]
            try:
                acc = golden_accuracy(quantize(model, qc, trial), x, ref)
            except QuantizeError:
                continue
            scored[c] = round(acc * len(ref))  # counts: the margin compared exactly
        if not scored:
            continue
        best = max(scored, key=lambda c: (scored[c], c))
        if best < 1.0 and 1.0 in scored and scored[best] - scored[1.0] <= need:
            best = 1.0
        clips[n] = best
    return clips


# --------------------------------------------------------------------------- QAT


class _FakeQuant(torch.nn.Module):
    """Straight-through fake quantization of a weight tensor to ``bits``."""

    def __init__(self, bits: int, per_channel: bool, floor: float = 1e-12):
        super().__init__()
        self.bits, self.per_channel, self.floor = bits, per_channel, floor

    def forward(self, w):
        if self.per_channel:
            amax = w.detach().abs().flatten(1).amax(1).view(-1, *([1] * (w.dim() - 1)))
        else:
            amax = w.detach().abs().max()
        s = amax.clamp(min=self.floor) / _qmax(self.bits)
        q = torch.round(w / s).clamp(-_qmax(self.bits) - 1, _qmax(self.bits)) * s
        return w + (q - w).detach()


def fake_quantized(model: SpikingNet, qc: QuantConfig):
    """Context manager: the model's synapse weights fake-quantized while inside."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        mods = [l.syn for l in model.layers]
        for m, l in zip(mods, model.layers):
            # a residual layer's scale also covers its skip weight, 1 (see
            # folded; exact without batch norm, whose gain folded() applies
            # to the conv weights only)
            fq = _FakeQuant(qc.weight_bits, qc.per_channel, 1.0 if l.spec.residual else 1e-12)
            parametrize.register_parametrization(m, "weight", fq)
        try:
            yield model
        finally:
            for m in mods:
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    return ctx()


# --------------------------------------------------------------------------- agreement


def integer_reference(net: IntNetwork) -> SpikingNet:
    """A float :class:`SpikingNet` computing the LIF contract without integer
    rounding -- the float model with quantised weights: weights ``w_int``,
    threshold ``theta_int`` (or, with per-channel thresholds, ``w_int /
    theta_int`` and threshold 1), decay ``1 - sum 2**-s``.  Fed
    ``x = p >> (8-B)``, it differs from the golden model only where the
    flooring shifts, saturation or (per channel) float division round."""
    spec = net.spec
    layers, norms = [], []
    for il in net.layers:
        uniform = bool((il.theta == il.theta[0]).all())
        norm = torch.ones_like(il.theta) if uniform else il.theta
        theta = float(il.theta[0]) if uniform else 1.0
        nspec = dataclasses.replace(il.spec.neuron, theta=theta,
                                    decay=max(effective_decay(il.decay_shifts), 1e-9))
        layers.append(dataclasses.replace(il.spec, neuron=nspec, batchnorm=False, bias=True))
        norms.append(norm.double())
    ref = SpikingNet(dataclasses.replace(spec, layers=tuple(layers)))
    with torch.no_grad():
        for m, il, norm in zip(ref.layers, net.layers, norms):
            w = il.weight.double() / norm.view(-1, 1, 1, 1)
            if il.spec.residual:    # the skip half: an identity at the centre tap, scaled
                c, k = il.spec.in_channels, il.spec.kernel
                w, skip = w[:, :c], w[:, c:]
                m.skip.copy_(skip[range(c), range(c), k // 2, k // 2])
                if not torch.equal(skip, skip_weight(il.spec, m.skip.double())):
                    raise QuantizeError("a residual layer's skip weights are not a scaled "
                                        "identity at the centre tap: no float reference")
            m.syn.weight.copy_(w.view_as(m.syn.weight))
            m.syn.bias.copy_(il.bias.double() / norm)
    return ref.double()


def agreement(model: SpikingNet, net: IntNetwork, x: torch.Tensor, batch: int = 250) -> dict:
    """Class agreement of the float model and of the float model with quantised
    weights with the golden model, and spike agreement of the latter (LIF)."""
    from spikeforge.sw import data as sfdata
    spec = net.spec
    ref = None if model.stcb else integer_reference(net)
    same_float = same_ref = 0
    spikes_equal = spikes_total = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            g = golden.run(net, xb)
            f = model(sfdata.encode(xb, spec.timesteps, spec.encoding))
            same_float += int((f.argmax(1) == g.classes).sum())
            if ref is not None:
                xin = golden.input_values(spec, xb, net.layers[0].input_bits).double()
                tr = ref.run(xin)
                same_ref += int((tr.scores.argmax(1) == g.classes).sum())
                for s_ref, s_gold, l in zip(tr.spikes, g.spikes, spec.layers):
                    n = l.out_features
                    gold = golden.unpack(s_gold, n)
                    spikes_equal += int((s_ref.reshape(*gold.shape) == gold).sum())
                    spikes_total += gold.numel()
    n = len(x)
    out = {"float_int_class_agreement": same_float / n}
    if ref is not None:
        out["quantized_float_int_class_agreement"] = same_ref / n
        out["quantized_float_int_spike_agreement"] = spikes_equal / spikes_total
    return out
