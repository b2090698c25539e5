"""The integer golden model: the contract the hardware meets spike for spike.

Everything here is integer arithmetic (two's complement, ``>>`` an arithmetic
shift that floors).  A quantized network is an :class:`IntNetwork`: the
unchanged :class:`~spikeforge.config.NetworkSpec` plus one :class:`IntLayer`
of integer parameters per layer.

Input.  A pixel ``p`` (uint8) enters layer 0 as ``x = p >> (8 - B)`` with
``B = input_bits``; the hardware feeds ``x`` as ``B`` bit planes, MSB first,
through the CAB shift-accumulator (``acc = 2*acc + conv(plane)``), which equals
``conv(x)``.  With ``bitplane`` encoding the network was trained on the planes
themselves as T binary time steps and ``B = 1``.  Static images are repeated
every step; sequences give one frame per step.

LIF / IF layers, per neuron and time step ``t`` (state ``u``, spikes ``o``,
both zero before ``t = 0``)::

    I[t] = sum of w[c_out, c_in, dy, dx] * x[c_in, y+dy-p, x+dx-p] + bias[c_out]
           (x binary for spikes: adds only)
    u[t] = sat(base[t-1] + I[t])            sat: clamp to [-2**(S-1), 2**(S-1) - 1]
    o[t] = 1 if u[t] >= theta[c_out] else 0     (strict: u[t] > theta[c_out])
    base[t] = decay(u[t]) * (1 - o[t])      reset = zero
            = decay(u[t]) - theta * o[t]    reset = subtract
            = decay(u[t])                   reset = none
    decay(u) = u - (u >> s_1) - (u >> s_2) - ...   (term by term, in order)

``S = state_bits``.  ``base + I`` is formed exactly (the hardware's
accumulator is ``acc_bits`` wide, enough for ``|base| + |I|``) and saturated
once per step.  The comparison is the layer's ``neuron.strict``: ``>=`` by
default, ``>`` (snnTorch, Norse, NIR) when set; the saturated ``u`` is
compared, so a strict neuron whose ``theta`` is the largest state
``2**(S-1) - 1`` never fires.  Reset by subtraction subtracts ``theta`` in
both modes.

STCB layers (STCSNN), per neuron: the input is the previous layer's value
``x`` (a T-step spike train, MSB first; layer 0: the pixel planes), and::

    acc  = conv(x)                                    (the CAB: sum_t I[t] << (T-1-t))
    u[0] = (acc + bias[c_out]) >> r[c_out]            (rescale to the next domain)
    s[t] = 1 if u[t] >= (2**(T-1) >> t) else 0        (the STEB, reset by subtraction)
    u[t+1] = u[t] - (2**(T-1) >> t) * s[t]

so the value sent on is ``y = sum_t s[t] << (T-1-t) = clamp(u[0], 0, 2**T - 1)``.

Residual layers (``residual``, LIF / IF convs closing an STS-ResNet block):
the layer's input is the channel concatenation ``[x, x_block]`` of the
previous layer's spikes and that layer's own input (the block input), so
``weight`` is ``[C_out, 2 * C_in, k, k]``: the second half is the skip (the
quantizer's identity at the centre tap; the contract takes any weights).

Pooling (``pool > 1``) is the max over each window of the layer's outputs:
an OR of binary spikes; for STCB the max of ``u[0]``, before the STEB.

Readout: per class, the sum over its voting group of the last layer's spike
counts over T (STCB: of its values ``y``).  The class is the index of the
largest score; ties go to the lowest index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from spikeforge.config import LayerKind, LayerSpec, NetworkSpec, NeuronKind, Reset
from spikeforge.errors import SpikeforgeError


class ContractError(SpikeforgeError, ValueError):
    """Integer parameters that break the contract (shape, width, range)."""


@dataclass(frozen=True, eq=False)
class IntLayer:
    """Integer parameters of one layer (module docstring for their meaning).

    ``weight`` int64 ``[C_out, C_in, k, k]`` (fc: ``[out, in, 1, 1]``;
    residual: ``[C_out, 2 * C_in, k, k]``, :attr:`LayerSpec.synapse_channels`),
    ``bias`` / ``theta`` / ``shift`` int64 ``[C_out]``.  ``theta`` is unused by
    STCB layers, ``shift`` (the CAB rescale ``r``) by LIF/IF layers.
    """

    spec: LayerSpec
    weight: torch.Tensor
    bias: torch.Tensor
    theta: torch.Tensor
    shift: torch.Tensor
    decay_shifts: tuple[int, ...]
    weight_bits: int
    state_bits: int
    acc_bits: int
    input_bits: int

    def __post_init__(self):
        s = self.spec
        c = s.out_channels
        want = (c, s.synapse_channels, s.kernel, s.kernel)
        for name, shape in (("weight", want), ("bias", (c,)), ("theta", (c,)), ("shift", (c,))):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ContractError(f"{name} must have shape {shape}, not {got}")
            object.__setattr__(self, name, t.to(torch.int64))
        if not 2 <= self.weight_bits <= 16:
            raise ContractError(f"weight_bits must be in 2..16, not {self.weight_bits}")
        lim = 1 << (self.weight_bits - 1)
        if int(self.weight.min()) < -lim or int(self.weight.max()) >= lim:
            raise ContractError(f"weights outside {self.weight_bits} signed bits")
        if any(not 1 <= d <= 31 for d in self.decay_shifts):
            raise ContractError(f"decay shifts must be in 1..31, not {self.decay_shifts}")
        if s.neuron.kind is not NeuronKind.STCB and int(self.theta.min()) < 1:
            raise ContractError("thresholds must be positive")
        if int(self.shift.min()) < 0:
            raise ContractError("CAB shifts must be non-negative")

    @property
    def stcb(self) -> bool:
        return self.spec.neuron.kind is NeuronKind.STCB

    def current_bounds(self) -> tuple[int, int]:
        """Worst-case ``(min, max)`` of ``I`` (LIF) or ``acc + bias`` (STCB)
        over all channels, for inputs in ``[0, 2**input_bits - 1]``."""
        xmax = (1 << self.input_bits) - 1
        w = self.weight.flatten(1)
        hi = (w.clamp(min=0).sum(1) * xmax + self.bias).max()
        lo = (w.clamp(max=0).sum(1) * xmax + self.bias).min()
        return int(lo), int(hi)


@dataclass(frozen=True, eq=False)
class IntNetwork:
    spec: NetworkSpec
    layers: tuple[IntLayer, ...]

    def __post_init__(self):
        if len(self.layers) != len(self.spec.layers):
            raise ContractError(f"{len(self.layers)} integer layers for a spec of "
                                f"{len(self.spec.layers)}")
        for i, (il, ls) in enumerate(zip(self.layers, self.spec.layers)):
            if il.spec != ls:
                raise ContractError(f"layer {i}: integer layer spec differs from the network spec")
            if ls.pool > 1 and ls.pool_mode.value != "max":
                raise ContractError(f"layer {i}: {ls.pool_mode.value} pooling "
                                    "has no integer contract (software only)")


class GoldenResult(NamedTuple):
    classes: torch.Tensor       # int64 [B]
    scores: torch.Tensor        # int64 [B, classes]: spike counts (STCB: values) per class
    spikes: list[torch.Tensor]  # per layer, packed output spikes: uint8 [T, B, ceil(n/8)]


def decay(u: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    """``u - sum_k (u >> s_k)``, each shift an arithmetic (flooring) shift of ``u``."""
    out = u
    for s in shifts:
        out = out - (u >> s)
    return out


def signed_bits(lo: int, hi: int) -> int:
    """Fewest two's complement bits holding every integer in ``[lo, hi]``
    (``signed_bits(-128, 127) == 8``, ``signed_bits(0, 0) == 1``): the one
    width rule of the quantizer, the weight image and the engine."""
    # a non-negative v needs its bit length plus a sign bit; a negative v
    # as many as ~v = -v - 1 (the largest magnitude of its width)
    return 1 + max((v if v >= 0 else ~v).bit_length() for v in (int(lo), int(hi)))


def saturate(u: torch.Tensor, bits: int) -> torch.Tensor:
    return u.clamp(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def pack(spikes: torch.Tensor) -> torch.Tensor:
    """Binary ``[T, B, ...]`` -> uint8 ``[T, B, ceil(n/8)]``, bit ``i % 8`` (LSB
    first) of byte ``i // 8`` is neuron ``i`` in (channel, row, column) order."""
    T, B = spikes.shape[:2]
    flat = spikes.reshape(T, B, -1).to(torch.uint8)
    n = flat.shape[-1]
    pad = (-n) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
    return (flat.view(T, B, -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 ``[T, B, ceil(n/8)]`` -> binary ``[T, B, n]``."""
    bits = (packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.flatten(-2)[..., :n]


def input_values(spec: NetworkSpec, x: torch.Tensor, input_bits: int) -> torch.Tensor:
    """Layer 0's integer input per time step, int64 ``[T, B, C, H, W]``, from
    uint8 ``[B, F, C, H, W]`` frames."""
    T = spec.timesteps
    if x.dtype != torch.uint8 or x.dim() != 5 or tuple(x.shape[2:]) != spec.input_shape \
            or x.shape[1] not in (1, T):
        raise ContractError(f"input must be uint8 [B, 1 or {T}, {', '.join(map(str, spec.input_shape))}]"
                            f", got {x.dtype} {list(x.shape)}")
    x = x.to(torch.int64).transpose(0, 1)
    if spec.encoding == "bitplane":
        if x.shape[0] != 1 or T > 8:
            raise ContractError("bitplane encoding takes static frames and at most 8 steps")
        return torch.stack([(x[0] >> (7 - t)) & 1 for t in range(T)])
    if spec.encoding != "direct":
        raise ContractError(f"{spec.encoding!r} encoding is random: no integer contract")
    x = x >> (8 - input_bits)
    return x.expand(T, *x.shape[1:]) if x.shape[0] == 1 else x


def _conv(layer: IntLayer, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Exact integer ``conv(x) + bias`` as ``out_dtype``, for integer x
    ``[N, C, H, W]`` or ``[N, F]``.

    Computed in floating point, which is exact (integer-valued, no rounding)
    while every partial sum stays below 2**24 (float32) or 2**53 (float64);
    the type is picked from the worst-case bound.
    """
    lo, hi = layer.current_bounds()
    bound = max(abs(lo), abs(hi)) + int(layer.bias.abs().max())
    dtype = torch.float32 if bound < (1 << 24) else torch.float64
    if bound >= (1 << 53):
        raise ContractError(f"layer {layer.spec}: current bound {bound} exceeds exact arithmetic")
    w = layer.weight.to(dtype)
    b = layer.bias.to(dtype)
    if layer.spec.kind is LayerKind.FC:
        y = torch.addmm(b, x.reshape(x.shape[0], -1).to(dtype), w.flatten(1).T)
    else:
        y = F.conv2d(x.to(dtype), w, b, padding=layer.spec.padding)
    return y.to(out_dtype)


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2)))


def _pool(layer: LayerSpec, y: torch.Tensor) -> torch.Tensor:
    if layer.pool == 1:
        return y
    # max over each window, on integers (no float round trip)
    n, c, h, w = y.shape
    p = layer.pool
    return y.view(n, c, h // p, p, w // p, p).amax(dim=(3, 5))


def _lif_layer(layer: IntLayer, x: torch.Tensor) -> torch.Tensor:
    """Spikes uint8 ``[T, B, C_out, H', W']`` (pooled) for input ``[T, B, ...]``."""
    T, B = x.shape[:2]
    # int32 halves the memory traffic; it is used only when no value can leave
    # it: |base + I| <= |I| + 2**S (state, and one theta subtracted) whatever
    # the declared widths say (a weight image is validated against them, an
    # in-memory network may not be)
    lo, hi = layer.current_bounds()
    worst = max(abs(lo), abs(hi)) + (1 << layer.state_bits) + int(layer.theta.abs().max())
    dtype = torch.int32 if layer.acc_bits <= 31 and worst < (1 << 31) else torch.int64
    cur = _conv(layer, x.flatten(0, 1), dtype)
    cur = cur.view(T, B, *cur.shape[1:])
    theta = _per_channel(layer.theta, cur[0]).to(dtype)
    lo, hi = -(1 << (layer.state_bits - 1)), (1 << (layer.state_bits - 1)) - 1
    reset = layer.spec.neuron.reset
    strict = layer.spec.neuron.strict
    base = torch.zeros_like(cur[0])
    out = torch.empty(cur.shape, dtype=torch.bool)
    for t in range(T):
        u = (base + cur[t]).clamp_(lo, hi)
        o = u > theta if strict else u >= theta
        out[t] = o
        base = decay(u, layer.decay_shifts)
        if reset is Reset.ZERO:
            base.masked_fill_(o, 0)
        elif reset is Reset.SUBTRACT:
            base -= theta * o
    o = out.view(torch.uint8)
    if layer.spec.kind is not LayerKind.FC:
        o = _pool(layer.spec, o.flatten(0, 1)).view(T, B, layer.spec.out_channels,
                                                   *layer.spec.out_size)
    return o


def _stcb_layer(layer: IntLayer, x: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values ``y`` (pooled) and their STEB spike train ``[T, B, ...]``."""
    acc = _conv(layer, x, torch.int64)
    u = acc >> _per_channel(layer.shift, acc)
    if layer.spec.kind is not LayerKind.FC:
        u = _pool(layer.spec, u)
    spikes = []
    for t in range(T):
        vth = (1 << (T - 1)) >> t
        s = (u >= vth).to(torch.int64)
        u = u - vth * s
        spikes.append(s)
    s = torch.stack(spikes)
    y = sum(s[t] << (T - 1 - t) for t in range(T))
    return y, s


@torch.no_grad()
def run(net: IntNetwork, x: torch.Tensor) -> GoldenResult:
    """Run the contract on uint8 frames ``[B, F, C, H, W]``."""
    spec = net.spec
    T = spec.timesteps
    h = input_values(spec, x, net.layers[0].input_bits)
    packed = []
    if net.layers[0].stcb:
        if spec.frames != 1:
            raise ContractError("STCB networks take static frames")
        h = h[0]
        for layer in net.layers:
            h, s = _stcb_layer(layer, h, T)
            packed.append(pack(s))
        final = h.reshape(h.shape[0], -1)
    else:
        block_in = None     # the previous layer's input: a residual layer's skip
        for layer in net.layers:
            x = torch.cat([h, block_in], 2) if layer.spec.residual else h
            block_in, h = h, _lif_layer(layer, x)
            packed.append(pack(h))
        final = h.reshape(T, h.shape[1], -1).sum(0)
    scores = final.view(final.shape[0], spec.classes, spec.voting).sum(2)
    return GoldenResult(scores.argmax(1), scores, packed)
