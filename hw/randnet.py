"""Random small integer networks for engine tests and benchmarks.

:func:`random_network` draws a LIF/IF :class:`~spikeforge.sw.golden.IntNetwork`
(conv layers, then one fc layer) from a seed: shapes, widths, thresholds,
biases, decay shift lists and reset modes, with thresholds scaled to the
layer's typical current so that spikes are neither absent nor everywhere
(and the spike comparison, ``>=`` unless asked: see ``strict``).
:func:`random_frames` draws matching uint8 inputs.
"""

from __future__ import annotations

import dataclasses
import random

import torch

from spikeforge.config import LayerKind, LayerSpec, NetworkSpec, NeuronKind, NeuronSpec, Reset
from spikeforge.sw import golden
from spikeforge.sw.golden import IntLayer, IntNetwork

from .arith import signed_bits

__all__ = ["random_network", "random_stcb_network", "random_frames", "int_layer",
           "random_int_layer"]

SHIFT_LISTS = ((1,), (2,), (3,), (1, 3), (3, 4), (2, 5, 7), (4, 12))


def int_layer(spec: LayerSpec, weight: torch.Tensor, bias: torch.Tensor, theta: torch.Tensor,
              shifts: tuple[int, ...], weight_bits: int, state_bits: int,
              input_bits: int) -> IntLayer:
    """An :class:`IntLayer` whose ``acc_bits`` holds ``|state| + |current|``."""
    il = IntLayer(spec, weight, bias, theta, torch.zeros_like(bias), tuple(shifts), weight_bits,
                  state_bits, 2, input_bits)
    lo, hi = il.current_bounds()
    half = 1 << (state_bits - 1)
    acc = max(signed_bits(-half + min(lo, 0), half - 1 + max(hi, 0)),
              signed_bits(int(bias.min()), int(bias.max())))
    return IntLayer(spec, weight, bias, theta, torch.zeros_like(bias), tuple(shifts),
                    weight_bits, state_bits, acc, input_bits)


def _neuron(rng: random.Random, strict: bool = False) -> tuple[NeuronSpec, tuple[int, ...]]:
    kind = rng.choice([NeuronKind.LIF, NeuronKind.LIF, NeuronKind.IF])
    reset = rng.choice(list(Reset))
    shifts = () if kind is NeuronKind.IF else rng.choice(SHIFT_LISTS)
    return NeuronSpec(kind, reset=reset, strict=strict), shifts


def random_int_layer(rng: random.Random, gen: torch.Generator, spec: LayerSpec, shifts, input_bits: int,
            h: torch.Tensor) -> IntLayer:
    """Random weights and biases; thresholds at a random quantile of each
    channel's current on the calibration input ``h`` (int64 ``[T, 1, ...]``)."""
    wb = rng.randint(2, 8)
    lim = 1 << (wb - 1)
    c = spec.out_channels
    # a mild positive bias keeps deeper layers active
    w = torch.randint(-lim, lim, (c, spec.synapse_channels, spec.kernel, spec.kernel),
                      generator=gen)
    w = torch.where(torch.rand(w.shape, generator=gen) < 0.25, w.abs().clamp(max=lim - 1), w)
    zero = torch.zeros(c, dtype=torch.int64)
    probe = IntLayer(spec, w, zero, zero + 1, zero, tuple(shifts), wb, 16, 32, input_bits)
    cur = _current(probe, h.flatten(0, 1)).transpose(0, 1).reshape(c, -1).double()
    spread = max(1, int(cur.abs().max()) // 8)
    bias = torch.randint(-spread, spread + 1, (c,), generator=gen)
    cur = cur + bias.view(-1, 1)
    theta = []
    for ch in range(c):
        pos = cur[ch][cur[ch] > 0]
        q = rng.uniform(0.3, 0.95)
        theta.append(max(1, int(pos.quantile(q)) if len(pos) else 1))
    theta = torch.tensor(theta)
    need = signed_bits(0, int(theta.max()))
    sb = rng.randint(need, need + 3)
    return int_layer(spec, w, bias, theta, shifts, wb, sb, input_bits)


def random_network(seed: int, *, max_layers_conv: int = 2, size: tuple[int, int] = (6, 10),
                   channels: tuple[int, int] = (2, 6), T: tuple[int, int] = (2, 5),
                   input_bits: tuple[int, int] = (1, 4), classes: int | None = None,
                   voting: int | None = None, density: float = 0.5,
                   strict: bool | None = False, kernels: tuple[int, ...] = (1, 3),
                   blocks: int = 0) -> IntNetwork:
    """A random LIF/IF network: 1..``max_layers_conv`` conv layers (k drawn from
    ``kernels``, random padding, pool 1 or 2), then ``blocks`` residual
    blocks (two 3x3 convs keeping the channels, the second ``residual``, its
    skip weights random like the rest, pool 1 or 2), then an fc layer of
    ``classes * voting``.

    Thresholds are set from a calibration input drawn like :func:`random_frames`
    (``density`` of the pixels non-zero).  ``strict``: every layer's spike
    comparison (``neuron.strict``), or ``None`` for one drawn per layer (from
    a generator of its own: the rest of the network is the seed's either way).
    """
    rng = random.Random(seed)
    srng = random.Random(seed + 104729)
    draw = lambda: srng.random() < 0.5 if strict is None else strict
    gen = torch.Generator().manual_seed(seed)
    c_in = rng.randint(1, 2)
    h = rng.randint(*size)
    wdt = rng.randint(*size)
    steps = rng.randint(*T)
    bitplane = rng.random() < 0.2 and steps <= 8
    bits = 1 if bitplane else rng.randint(*input_bits)
    classes = classes or rng.randint(2, 4)
    voting = voting or rng.randint(1, 2)
    specs = []
    c, hh, ww = c_in, h, wdt
    for _ in range(rng.randint(1, max_layers_conv)):
        k = rng.choice(list(kernels))
        pad = rng.randint(0, k - 1)
        if min(hh, ww) + 2 * pad < k:  # the kernel must fit the (padded) input
            pad = k - 1
        hc, wc = hh + 2 * pad - k + 1, ww + 2 * pad - k + 1
        pool = 2 if (hc % 2 == 0 and wc % 2 == 0 and hc >= 4 and wc >= 4
                     and rng.random() < 0.5) else 1
        neuron, shifts = _neuron(rng, draw())
        out = rng.randint(*channels)
        specs.append((LayerSpec(LayerKind.CONV, c, out, (hh, ww), kernel=k, padding=pad,
                                pool=pool, neuron=neuron), shifts))
        c, (hh, ww) = out, specs[-1][0].out_size
    for b in range(blocks):
        for residual in (False, True):
            neuron, shifts = _neuron(rng, draw())
            pool = 2 if (residual and b == blocks - 1 and hh % 2 == 0 and ww % 2 == 0
                         and min(hh, ww) >= 4 and rng.random() < 0.5) else 1
            specs.append((LayerSpec(LayerKind.CONV, c, c, (hh, ww), kernel=3, padding=1,
                                    pool=pool, neuron=neuron, residual=residual), shifts))
        hh, ww = specs[-1][0].out_size
    neuron, shifts = _neuron(rng, draw())
    specs.append((LayerSpec(LayerKind.FC, c * hh * ww, classes * voting, (1, 1), neuron=neuron),
                  shifts))
    nspec = NetworkSpec(f"rand{seed}", (c_in, h, wdt), steps, tuple(s for s, _ in specs),
                        classes, encoding="bitplane" if bitplane else "direct", voting=voting)
    calib = _frames(nspec, random.Random(seed + 7919), seed + 7919, density)
    x = golden.input_values(nspec, calib, bits)
    ints, block_in = [], None
    for i, (spec, shifts) in enumerate(specs):
        xin = torch.cat([x, block_in], 2) if spec.residual else x
        il = random_int_layer(rng, gen, spec, shifts, bits if i == 0 else 1, xin)
        ints.append(il)
        block_in = x
        # the layer's spikes on the calibration input feed the next layer's calibration
        part = dataclasses.replace(nspec, layers=nspec.layers[:i + 1], classes=spec.out_features,
                                   voting=1)
        packed = golden.run(IntNetwork(part, tuple(ints)), calib).spikes[-1]
        x = golden.unpack(packed, spec.out_features).to(torch.int64).view(
            packed.shape[0], 1, spec.out_channels, *spec.out_size)
    return IntNetwork(nspec, tuple(ints))


def _current(layer: IntLayer, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` (no bias), exact in float64 for these small integers."""
    w = layer.weight.double()
    if layer.spec.kind is LayerKind.FC:
        y = x.reshape(x.shape[0], -1).double() @ w.flatten(1).T
    else:
        y = torch.nn.functional.conv2d(x.double(), w, padding=layer.spec.padding)
    return y.round().to(torch.int64)


def _frames(spec: NetworkSpec, rng: random.Random, seed: int, density: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    frames = spec.timesteps if (spec.encoding == "direct" and rng.random() < 0.5) else 1
    shape = (1, frames, *spec.input_shape)
    x = torch.randint(0, 256, shape, generator=gen)
    keep = torch.rand(shape, generator=gen) < density
    return (x * keep).to(torch.uint8)


def random_frames(net: IntNetwork, seed: int, density: float = 0.5) -> torch.Tensor:
    """uint8 ``[1, F, C, H, W]`` frames (static, or one per step for about half
    the seeds under direct encoding) with about ``density`` of the pixels non-zero."""
    return _frames(net.spec, random.Random(seed), seed, density)


def random_stcb_network(seed: int, *, max_layers_conv: int = 2, size: tuple[int, int] = (6, 8),
                        channels: tuple[int, int] = (2, 5), T: tuple[int, int] = (2, 5),
                        input_bits: tuple[int, int] = (1, 4), density: float = 0.5) -> IntNetwork:
    """A random STCB network (conv layers then one fc layer), each channel's CAB
    rescale shift ``r`` chosen so that its values on a calibration input
    spread over ``0 .. 2**T - 1``."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    c_in = rng.randint(1, 2)
    h, wdt = rng.randint(*size), rng.randint(*size)
    steps = rng.randint(*T)
    bits = rng.randint(*input_bits)
    classes, voting = rng.randint(2, 4), rng.randint(1, 2)
    neuron = NeuronSpec(NeuronKind.STCB)
    specs = []
    c, hh, ww = c_in, h, wdt
    for _ in range(rng.randint(1, max_layers_conv)):
        k = rng.choice([1, 3])
        pad = rng.randint(0, k - 1)
        if min(hh, ww) + 2 * pad < k:  # the kernel must fit the (padded) input
            pad = k - 1
        hc, wc = hh + 2 * pad - k + 1, ww + 2 * pad - k + 1
        pool = 2 if (hc % 2 == 0 and wc % 2 == 0 and hc >= 4 and wc >= 4
                     and rng.random() < 0.5) else 1
        out = rng.randint(*channels)
        specs.append(LayerSpec(LayerKind.CONV, c, out, (hh, ww), kernel=k, padding=pad,
                               pool=pool, neuron=neuron))
        c, (hh, ww) = out, specs[-1].out_size
    specs.append(LayerSpec(LayerKind.FC, c * hh * ww, classes * voting, (1, 1), neuron=neuron))
    nspec = NetworkSpec(f"stcb{seed}", (c_in, h, wdt), steps, tuple(specs), classes,
                        voting=voting)
    calib = _frames(nspec, random.Random(seed + 7919), seed + 7919, density)[:, :1]
    x = golden.input_values(nspec, calib, bits)[0]  # [1, C, H, W] values
    ints = []
    for i, spec in enumerate(specs):
        ib = bits if i == 0 else steps
        wb = rng.randint(2, 8)
        lim = 1 << (wb - 1)
        cout = spec.out_channels
        w = torch.randint(-lim, lim, (cout, spec.in_channels, spec.kernel, spec.kernel),
                          generator=gen)
        w = torch.where(torch.rand(w.shape, generator=gen) < 0.3, w.abs().clamp(max=lim - 1), w)
        zero = torch.zeros(cout, dtype=torch.int64)
        probe = IntLayer(spec, w, zero, zero + 1, zero, (), wb, steps + 2, 40, ib)
        acc = _current(probe, x).transpose(0, 1).reshape(cout, -1).double()
        bias = torch.randint(-lim, lim, (cout,), generator=gen) * (1 << rng.randint(0, 3))
        r = []
        for ch in range(cout):
            pos = acc[ch] + int(bias[ch])
            pos = pos[pos > 0]
            top = int(pos.quantile(rng.uniform(0.5, 1.0))) if len(pos) else 1
            r.append(min(63, max(0, top.bit_length() - steps + rng.randint(-1, 1))))
        shift = torch.tensor(r)
        il = IntLayer(spec, w, bias, zero + 1, shift, (), wb, steps + 2, 2, ib)
        lo, hi = il.current_bounds()
        il = dataclasses.replace(il, acc_bits=signed_bits(min(lo, int(bias.min())),
                                                          max(hi, int(bias.max()))))
        ints.append(il)
        part = dataclasses.replace(nspec, layers=nspec.layers[:i + 1], classes=spec.out_features,
                                   voting=1)
        packed = golden.run(IntNetwork(part, tuple(ints)), calib).spikes[-1]
        s = golden.unpack(packed, spec.out_features).to(torch.int64)  # [T, 1, n]
        y = sum(s[t] << (steps - 1 - t) for t in range(steps))
        x = y.view(1, spec.out_channels, *spec.out_size)
    return IntNetwork(nspec, tuple(ints))
