"""Spiking network models, built from a :class:`~spikeforge.config.NetworkSpec`.

``build(name, **overrides)`` returns a :class:`SpikingNet`; its ``spec``
attribute is the frozen spec that the quantizer, the weight image and the
hardware receive unchanged.  Input ``[T, B, C, H, W]``, output the class
scores ``[B, classes]``: spike counts over T summed over each voting group
(for STCB networks, the last layer's decoded spike train
``sum_t s[t] * 2**(T-1-t)``, i.e. the binary-weighted count).

Models (``MODELS``):

``convsnn``     ConvSNN 48-48 (ConvSNN paper code): conv 1->48 3x3 -> LIF -> pool 2
                -> conv 48->48 3x3 -> LIF -> pool 2 -> FC 2352->128 LIF -> FC LIF.
                Defaults: decay 0.5 (paper; the code uses 0.8), theta 0.5,
                reset zero, Gaussian surrogate, T = 10, max (OR) pooling --
                ``pool_mode="avg"`` gives the code's average pool (software only).
``bpsta-small`` BPSTA Small: 128C3-MP2-128C3-256C3-MP2-4096FC-DP-10Voting with
                batch norm, decay 0.9, BPSA + BPTA (a = 0.2, the code's value),
                T = 16; the FC size is derived from the input (the authors' code
                hard-coded 2048 vs 4096 and did not run).
``stcsnn-vgg``  a small VGG of STCB layers for 28x28 input (STCSNN): 32C3-32C3-MP2-
                64C3-64C3-MP2-128FC-FC, T = 8, Vth0 = 0.8, power-of-two thresholds.
``sts-resnet``  STS-ResNet: conv stem, residual blocks (conv-LIF-conv + skip -> LIF),
                pool, FC; decay 0.8 with reset, as the authors' code.  Their
                defects are fixed: the blocks are registered sub-modules (a
                plain list was never trained) and every LIF output is used.
                A block is two conv layers, the second ``residual``: its
                current adds the block input's spikes (the identity skip).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from spikeforge.config import (LayerKind, LayerSpec, NetworkSpec, NeuronKind, NeuronSpec,
                               PoolMode)
from spikeforge.errors import SpikeforgeError
from spikeforge.sw.neurons import LIF, STCB


class ModelError(SpikeforgeError, ValueError):
    """Unknown model, bad override, or an input the model cannot take."""


class Trace(NamedTuple):
    scores: torch.Tensor        # [B, classes]
    spikes: list[torch.Tensor]  # per layer, the (pooled) output: [T, B, ...] or [B, ...] for STCB


# --------------------------------------------------------------------------- specs


def _chain(input_shape, timesteps, classes, plan, neuron, frames=1, encoding="direct",
           voting=1, name="net", batchnorm=False) -> NetworkSpec:
    """Spec of a chain from a compact plan: ``("conv", C, k, pool)`` / ``("fc", N)``."""
    layers = []
    c, h, w = input_shape
    for item in plan:
        if item[0] == "conv":
            _, out, k, pool = item
            layers.append(LayerSpec(LayerKind.CONV, c, out, (h, w), kernel=k, padding=k // 2,
                                    pool=pool, batchnorm=batchnorm, neuron=neuron))
        elif item[0] == "res":
            layers += [LayerSpec(LayerKind.CONV, c, c, (h, w), kernel=3, padding=1,
                                 batchnorm=batchnorm, neuron=neuron, residual=r)
                       for r in (False, True)]
        else:
            layers.append(LayerSpec(LayerKind.FC, c * h * w, item[1], (1, 1),
                                    batchnorm=batchnorm, neuron=neuron))
        last = layers[-1]
        c, (h, w) = last.out_channels, last.out_size
    return NetworkSpec(name, input_shape, timesteps, tuple(layers), classes, frames=frames,
                       encoding=encoding, voting=voting)


def convsnn_spec(classes=10, timesteps=10, channels=(48, 48), hidden=128, decay=0.5,
                 theta=0.5, reset="zero", surrogate="gaussian", pool_mode="max",
                 input_shape=(1, 28, 28), frames=1, encoding="direct",
                 strict=False, voting=1) -> NetworkSpec:
    neuron = NeuronSpec(NeuronKind.LIF, decay=decay, theta=theta, reset=reset, surrogate=surrogate,
                        strict=strict)
    plan = [("conv", ch, 3, 2) for ch in channels] + [("fc", hidden), ("fc", classes * voting)]
    spec = _chain(input_shape, timesteps, classes, plan, neuron, frames, encoding,
                  voting=voting, name="convsnn")
    if pool_mode != "max":
        spec = dataclasses.replace(spec, layers=tuple(
            dataclasses.replace(l, pool_mode=pool_mode) if l.pool > 1 else l for l in spec.layers))
    return spec


def bpsta_small_spec(classes=10, timesteps=16, width=1.0, hidden=4096, voting=10,
                     input_shape=(1, 28, 28), frames=1, encoding="direct") -> NetworkSpec:
    neuron = NeuronSpec(NeuronKind.LIF, decay=0.9, theta=0.5, reset="zero", surrogate="bpsa",
                        bpta=0.2)
    c = lambda n: max(1, int(round(n * width)))
    plan = [("conv", c(128), 3, 2), ("conv", c(128), 3, 1), ("conv", c(256), 3, 2),
            ("fc", c(hidden)), ("fc", classes * voting)]
    return _chain(input_shape, timesteps, classes, plan, neuron, frames, encoding,
                  voting=voting, name="bpsta-small", batchnorm=True)


def stcsnn_vgg_spec(classes=10, timesteps=8, channels=(32, 32, 64, 64), hidden=128, theta=0.8,
                    threshold_law="pow2", input_shape=(1, 28, 28)) -> NetworkSpec:
    neuron = NeuronSpec(NeuronKind.STCB, theta=theta, threshold_law=threshold_law)
    c1, c2, c3, c4 = channels
    plan = [("conv", c1, 3, 1), ("conv", c2, 3, 2), ("conv", c3, 3, 1), ("conv", c4, 3, 2),
            ("fc", hidden), ("fc", classes)]
    return _chain(input_shape, timesteps, classes, plan, neuron, name="stcsnn-vgg",
                  batchnorm=True)


def sts_resnet_spec(classes=10, timesteps=10, channels=32, blocks=2, hidden=128, decay=0.8,
                    theta=0.5, input_shape=(1, 28, 28), frames=1, encoding="direct") -> NetworkSpec:
    neuron = NeuronSpec(NeuronKind.LIF, decay=decay, theta=theta, reset="zero")
    plan = ([("conv", channels, 3, 2)] + [("res",)] * blocks + [("conv", channels, 3, 2)]
            + [("fc", hidden), ("fc", classes)])
    return _chain(input_shape, timesteps, classes, plan, neuron, frames, encoding,
                  name="sts-resnet", batchnorm=True)


MODELS: dict[str, Callable[..., NetworkSpec]] = {
    "convsnn": convsnn_spec,
    "bpsta-small": bpsta_small_spec,
    "stcsnn-vgg": stcsnn_vgg_spec,
    "sts-resnet": sts_resnet_spec,
}


def spec_for(name: str, **overrides) -> NetworkSpec:
    """The spec of model ``name`` with keyword ``overrides`` of its builder."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    fn = MODELS[name]
    try:
        spec = fn(**overrides)
    except SpikeforgeError as e:
        if not overrides:
            raise
        given = ", ".join(f"{k}={v!r:.40}" for k, v in overrides.items())
        raise ModelError(f"model {name!r} with {given}: {e}") from None
    except (TypeError, ValueError, IndexError, KeyError, OverflowError) as e:
        # a value of the wrong type or shape trips the builder before the spec checks
        import inspect
        known = ", ".join(inspect.signature(fn).parameters)
        raise ModelError(f"model {name!r}: bad override ({e}); known: {known}") from None
    check_size(spec)
    return spec


#: Largest network built in software: parameters (weights) and neurons per
#: time step.  bpsta-small, the biggest model, has 52 M parameters.
MAX_PARAMETERS = 200_000_000
MAX_NEURONS = 50_000_000


def check_size(spec: NetworkSpec) -> None:
    """Refuse a spec too big to allocate, before any tensor is made."""
    params = sum(l.fan_in * l.out_channels for l in spec.layers)
    neurons = sum(l.neurons for l in spec.layers)
    if params > MAX_PARAMETERS:
        raise ModelError(f"{spec.name}: {params:,} parameters exceed the limit of "
                         f"{MAX_PARAMETERS:,}")
    if neurons > MAX_NEURONS:
        raise ModelError(f"{spec.name}: {neurons:,} neurons exceed the limit of {MAX_NEURONS:,}")


def build(name: str, **overrides) -> "SpikingNet":
    """``nn.Module`` for model ``name`` (see ``MODELS``)."""
    return SpikingNet(spec_for(name, **overrides))


# --------------------------------------------------------------------------- module


class _Layer(nn.Module):
    def __init__(self, spec: LayerSpec, timesteps: int):
        super().__init__()
        self.spec = spec
        if spec.kind is LayerKind.FC:
            self.syn = nn.Linear(spec.in_channels, spec.out_channels, bias=spec.bias)
            self.bn = nn.BatchNorm1d(spec.out_channels) if spec.batchnorm else None
        else:
            self.syn = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel,
                                 padding=spec.padding, bias=spec.bias)
            self.bn = nn.BatchNorm2d(spec.out_channels) if spec.batchnorm else None
        if spec.residual:   # the skip's weight per channel: 1 (an identity) in training
            self.register_buffer("skip", torch.ones(spec.out_channels), persistent=False)
        stcb = spec.neuron.kind is NeuronKind.STCB
        self.neuron = STCB(spec.neuron, timesteps) if stcb else LIF(spec.neuron)

    def current(self, x, syn, bn):
        y = syn(x)
        return bn(y) if bn is not None else y

    def pool(self, o):
        p = self.spec.pool
        if p == 1:
            return o
        fn = F.max_pool2d if self.spec.pool_mode is PoolMode.MAX else F.avg_pool2d
        return fn(o, p)


def _repeated_batchnorm(bn: nn.modules.batchnorm._BatchNorm, y: torch.Tensor,
                        repeats: int) -> torch.Tensor:
    """``bn`` applied to ``repeats`` stacked copies of ``y`` (batch first), computed
    on ``y`` alone: the batch mean and (biased) variance of the copies are those
    of ``y``; the running variance takes the unbiased estimate over all copies,
    as ``bn`` on the stacked batch would."""
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    if not training:
        return bn(y)        # running statistics: elementwise, the same per copy
    out = F.batch_norm(y, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            dims = [0] + list(range(2, y.dim()))
            n = repeats * y.numel() // y.shape[1]
            mean = y.mean(dims)
            var = y.var(dims, unbiased=False) * (n / max(n - 1, 1))
            bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
            bn.running_var.mul_(1 - m).add_(var.to(bn.running_var.dtype), alpha=m)
    return out


class SpikingNet(nn.Module):
    """A feed-forward SNN built from ``spec``; see the module docstring."""

    def __init__(self, spec: NetworkSpec, dropout: float = 0.0):
        super().__init__()
        check_size(spec)
        kinds = {l.neuron.kind is NeuronKind.STCB for l in spec.layers}
        if len(kinds) > 1:
            raise ModelError(f"{spec.name}: STCB and LIF/IF layers cannot be mixed in one network")
        self.spec = spec
        self.stcb = kinds == {True}
        self.layers = nn.ModuleList(_Layer(l, spec.timesteps) for l in spec.layers)
        self.dropout = nn.Dropout(dropout) if dropout else None

    def check_input(self, x: torch.Tensor) -> None:
        s = self.spec
        want = (s.timesteps, "B", *s.input_shape)
        if x.dim() != 5 or x.shape[0] != s.timesteps or tuple(x.shape[2:]) != s.input_shape:
            raise ModelError(f"{s.name}: input must be [T, B, C, H, W] = "
                             f"[{', '.join(map(str, want))}], got {list(x.shape)}")

    def forward(self, x: torch.Tensor, hybrid_beta: float | None = None,
                trace: bool = False) -> torch.Tensor | Trace:
        """The class scores, or with ``trace`` the :class:`Trace` (scores and
        spikes: what a loss on firing rates needs, through DDP's wrapper)."""
        tr = self.run(x, hybrid_beta)
        return tr if trace else tr.scores

    def run(self, x: torch.Tensor, hybrid_beta: float | None = None) -> Trace:
        """Scores and every layer's output spikes.  ``hybrid_beta`` selects
        ConvSNN's hybrid pre-training (leaky ReLU, no reset) for all layers but
        the last."""
        self.check_input(x)
        if self.stcb:
            return self._run_stcb(x)
        T, B = x.shape[:2]
        h, spikes = x, []
        block_in = None     # the previous layer's input: a residual layer's skip
        last = len(self.layers) - 1
        for n, layer in enumerate(self.layers):
            s = layer.spec
            beta = hybrid_beta if n < last else None
            # max pooling of a LIF layer's output is fused into the neuron
            pool = s.pool if s.pool > 1 and s.pool_mode is PoolMode.MAX else 1
            if n == 0 and self._static_input(x):
                # direct encoding of a static frame: layer 0's current is the same at
                # every step, so compute it once on B frames (same values; the
                # gradient sums over T) and let the neuron repeat it T times
                flat = x[0].reshape(B, -1) if s.kind is LayerKind.FC else x[0]
                cur = layer.current(flat, layer.syn, None)
                if layer.bn is not None:
                    cur = _repeated_batchnorm(layer.bn, cur, T)
                o = layer.neuron(cur, beta, steps=T, pool=pool)
            else:
                flat = h.reshape(T * B, -1) if s.kind is LayerKind.FC else h.reshape(T * B, *h.shape[2:])
                if s.kind is LayerKind.FC and self.dropout is not None and n == last:
                    flat = self.dropout(flat)
                cur = layer.current(flat, layer.syn, layer.bn)
                if s.residual:
                    cur = cur + block_in.reshape(cur.shape) * layer.skip.view(1, -1, 1, 1)
                o = layer.neuron(cur.view(T, B, *cur.shape[1:]), beta, pool=pool)
            if s.pool > 1 and pool == 1:
                o = layer.pool(o.flatten(0, 1)).view(T, B, s.out_channels, *s.out_size)
            spikes.append(o)
            block_in, h = h, o
        scores = h.sum(0).view(B, self.spec.classes, self.spec.voting).sum(2)
        return Trace(scores, spikes)

    def _static_input(self, x: torch.Tensor) -> bool:
        """Layer 0 may run once on ``x[0]``: a static frame, direct-encoded,
        truly the same at every step, and no dropout in layer 0."""
        s, l0 = self.spec, self.spec.layers[0]
        if s.frames != 1 or s.encoding != "direct" or x.shape[0] < 2:
            return False
        if self.dropout is not None and len(self.layers) == 1:
            return False
        if l0.batchnorm and x.shape[1] * l0.conv_size[0] * l0.conv_size[1] < 2:
            return False    # batch norm needs two values per channel in B frames
        return x.stride(0) == 0 or bool((x[1:] == x[:1]).all())

    def _run_stcb(self, x: torch.Tensor) -> Trace:
        # an STCB network sees a static input value; direct encoding repeats it over T
        h = x.mean(0)
        B = h.shape[0]
        spikes = []
        for layer in self.layers:
            s = layer.spec
            if s.kind is LayerKind.FC:
                h = h.reshape(B, -1)
            h = layer.neuron(layer.current(h, layer.syn, layer.bn))
            h = layer.pool(h)
            spikes.append(h)
        scale = (1 << (self.spec.timesteps - 1)) / self.spec.layers[-1].neuron.theta
        scores = (h * scale).view(B, self.spec.classes, self.spec.voting).sum(2)
        return Trace(scores, spikes)


# --------------------------------------------------------------------------- from weights


def from_weights(spec: NetworkSpec, weights) -> SpikingNet:
    """A :class:`SpikingNet` for any ``spec`` (no built-in model name) with the
    given synapse weights: ``weights[l] = (w, b)`` per layer, ``w`` of shape
    ``[C_out, C_in, k, k]`` (conv) or ``[out, in]`` (fc), ``b`` of shape
    ``[C_out]`` or None (zeros).  Layers with batch norm or skips are refused:
    fold batch norm into ``(w, b)`` first.

    >>> from spikeforge.config import LayerSpec, NetworkSpec, NeuronSpec
    >>> spec = NetworkSpec("tiny", (1, 2, 2), 3, (LayerSpec("fc", 4, 2, (1, 1),
    ...                    neuron=NeuronSpec("if", theta=1.0)),), classes=2)
    >>> net = from_weights(spec, [(torch.eye(2, 4), None)])
    >>> net(torch.ones(3, 1, 1, 2, 2)).tolist()   # each output neuron fires every step
    [[3.0, 3.0]]
    """
    weights = list(weights)
    if len(weights) != len(spec.layers):
        raise ModelError(f"{spec.name}: {len(weights)} weight pairs for {len(spec.layers)} layers")
    net = SpikingNet(spec)
    with torch.no_grad():
        for n, (layer, pair) in enumerate(zip(net.layers, weights)):
            s = layer.spec
            if s.batchnorm:
                raise ModelError(f"layer {n}: a layer with batch norm cannot be built from "
                                 "plain weights; fold it first")
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ModelError(f"layer {n}: expected a pair (weight, bias)")
            w, b = (None if v is None else torch.as_tensor(v, dtype=torch.float32) for v in pair)
            want = tuple(layer.syn.weight.shape)
            if w is None or w.numel() != layer.syn.weight.numel() or (
                    tuple(w.shape) != want and tuple(w.shape) != (want[0], s.fan_in)):
                got = None if w is None else list(w.shape)
                raise ModelError(f"layer {n}: weight has shape {got}, the spec needs {list(want)}")
            if not bool(torch.isfinite(w).all()):
                raise ModelError(f"layer {n}: weights are not all finite")
            layer.syn.weight.copy_(w.reshape(want))
            if layer.syn.bias is not None:
                if b is None:
                    b = torch.zeros(s.out_channels)
                if tuple(b.shape) != (s.out_channels,) or not bool(torch.isfinite(b).all()):
                    raise ModelError(f"layer {n}: bias must be {s.out_channels} finite numbers, "
                                     f"not shape {list(b.shape)}")
                layer.syn.bias.copy_(b)
            elif b is not None and bool((b != 0).any()):
                raise ModelError(f"layer {n}: the spec has no bias, a non-zero one was given")
    net.eval()
    return net
