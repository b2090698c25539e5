"""The frozen specs that flow unchanged from training to hardware.

A :class:`NetworkSpec` describes a feed-forward spiking network: its input,
its time steps and a tuple of :class:`LayerSpec`, each with a
:class:`NeuronSpec`.  The same objects build the PyTorch model
(:mod:`spikeforge.sw.models`), drive the quantizer, are written into the
weight image and parameterise the hardware.

Specs are plain data: ``to_dict`` gives JSON-safe dictionaries and
``from_dict`` validates them back, naming the offending field on error.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any

from spikeforge.errors import SpikeforgeError, shown


class SpecError(SpikeforgeError, ValueError):
    """A spec (or a dictionary meant to become one) is invalid."""


#: Most time steps of a network: the integer contract shifts by ``T - 1``
#: (STEB thresholds ``2**(T-1) >> t``, bit-plane Horner sums) and the
#: hardware counts steps in a few bits.
MAX_TIMESTEPS = 64

#: training's learning-rate schedules (:func:`spikeforge.sw.train.fit`)
LR_SCHEDULES = ("constant", "cosine")
#: training's largest augmentation shift, in pixels (``TrainConfig.augment``)
MAX_AUGMENT = 8


class NeuronKind(str, enum.Enum):
    """Neuron model of a layer.

    ``LIF``  leaky integrate-and-fire, ``u[t] = decay*(1-o[t-1])*u[t-1] + I[t]``.
    ``IF``   integrate-and-fire: LIF with ``decay = 1``.
    ``STCB`` a spatio-temporal conversion block neuron (STCSNN): the CAB
             accumulates the layer's current over the whole spike train,
             ``acc = sum_t Vth[t] * I[t]``, and the STEB re-encodes it as a
             spike train with a decaying threshold ``Vth[t] = theta / 2**t``.
    """

    LIF = "lif"
    IF = "if"
    STCB = "stcb"


class Reset(str, enum.Enum):
    """What a spike does to the membrane: ``ZERO`` multiplies the decayed
    potential by ``1 - o``, ``SUBTRACT`` subtracts ``theta * o``, ``NONE``
    leaves it (the ConvSNN synthetic-sequence setting)."""

    ZERO = "zero"
    SUBTRACT = "subtract"
    NONE = "none"


class LayerKind(str, enum.Enum):
    CONV = "conv"
    FC = "fc"


class PoolMode(str, enum.Enum):
    MAX = "max"  # on binary spikes this is an OR: hardware-mappable
    AVG = "avg"  # the ConvSNN code's choice; non-binary output, software only


def _enum(cls, value, where):
    try:
        return cls(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in cls)
        raise SpecError(f"{where}: {value!r} is not one of {valid}") from None


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise SpecError(msg)


def _types(obj, where: str, **expected) -> None:
    """Check field types (bool is not a number here) with a message naming the field."""
    for name, types in expected.items():
        v = getattr(obj, name)
        ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
        _check(ok, f"{where}.{name} has the wrong type: {type(v).__name__} ({v!r:.40})")


@dataclass(frozen=True)
class NeuronSpec:
    """Neuron parameters of one layer (float domain).

    decay
        LIF leak factor ``alpha``/``lambda`` in ``(0, 1]`` (IF forces 1.0).
    theta
        Firing threshold; for STCB the first STEB threshold ``Vth0``.
    reset
        :class:`Reset` mode (STCB always subtracts).
    surrogate
        Surrogate gradient used in training: ``gaussian``, ``rect``,
        ``fast_sigmoid`` or ``bpsa`` (see :mod:`spikeforge.sw.surrogate`).
    bpta
        Temporal residual factor of BPTA (0 disables it).
    threshold_law
        STCB only: ``pow2`` (``Vth[t] = theta >> t``, hardware) or ``exp``
        (``theta * exp(-t/tau)``, float training only).
    strict
        LIF / IF: fire when ``u > theta`` (snnTorch, Norse, NIR) instead of
        ``u >= theta`` (the default).  One comparison for the float neurons,
        the integer contract and the engine; the surrogate gradient and the
        reset (subtraction takes ``theta``) are the same either way.  STCB
        keeps the STEB's ``>=`` (its exact binary expansion).
    """

    kind: NeuronKind = NeuronKind.LIF
    decay: float = 0.5
    theta: float = 0.5
    reset: Reset = Reset.ZERO
    surrogate: str = "gaussian"
    surrogate_width: float | None = None
    bpta: float = 0.0
    threshold_law: str = "pow2"
    tau: float = 2.0
    strict: bool = False

    def __post_init__(self):
        object.__setattr__(self, "kind", _enum(NeuronKind, self.kind, "neuron.kind"))
        object.__setattr__(self, "reset", _enum(Reset, self.reset, "neuron.reset"))
        _types(self, "neuron", decay=(int, float), theta=(int, float), surrogate=(str,),
               surrogate_width=(int, float, type(None)), bpta=(int, float),
               threshold_law=(str,), tau=(int, float), strict=(bool,))
        if self.kind is NeuronKind.IF:
            object.__setattr__(self, "decay", 1.0)
        if self.kind is NeuronKind.STCB:
            object.__setattr__(self, "reset", Reset.SUBTRACT)
        _check(0.0 < self.decay <= 1.0, f"neuron.decay must be in (0, 1], not {self.decay!r}")
        _check(self.theta > 0.0 and math.isfinite(self.theta),
               f"neuron.theta must be a finite positive number, not {self.theta!r}")
        _check(self.bpta >= 0.0, f"neuron.bpta must be non-negative, not {self.bpta!r}")
        _check(not (self.strict and self.kind is NeuronKind.STCB),
               "neuron.strict is for LIF / IF neurons: the STCB's STEB compares with >=")
        _check(self.threshold_law in ("pow2", "exp"),
               f"neuron.threshold_law must be 'pow2' or 'exp', not {self.threshold_law!r}")
        from spikeforge.sw.surrogate import SURROGATES
        _check(self.surrogate in SURROGATES,
               f"neuron.surrogate must be one of {', '.join(SURROGATES)}, not {self.surrogate!r}")

    @property
    def hardware_mappable(self) -> bool:
        return self.kind is not NeuronKind.STCB or self.threshold_law == "pow2"


@dataclass(frozen=True)
class LayerSpec:
    """One layer: synapses (conv k x k, stride 1, or fully connected) then
    neurons, then optional pooling of the output spikes.

    For ``fc`` layers ``in_size`` is ``(1, 1)`` and ``in_channels`` is the
    flattened input size (flatten order: channel, row, column).

    ``residual`` (conv only): the layer closes a residual block (STS-ResNet):
    its current also adds, through an identity skip, the spikes of the
    block's input, which is the previous layer's input (channels and size
    kept by both layers).  Its synapses see ``2 * in_channels`` channels,
    the previous layer's output then the block input
    (:attr:`synapse_channels`).
    """

    kind: LayerKind
    in_channels: int
    out_channels: int
    in_size: tuple[int, int]
    kernel: int = 1
    padding: int = 0
    pool: int = 1
    pool_mode: PoolMode = PoolMode.MAX
    bias: bool = True
    batchnorm: bool = False
    neuron: NeuronSpec = field(default_factory=NeuronSpec)
    residual: bool = False

    def __post_init__(self):
        _check(self.kind != "resblock", "layer.kind 'resblock' is gone: a residual block is two "
               "conv layers, the second with residual true (train sts-resnet again)")
        object.__setattr__(self, "kind", _enum(LayerKind, self.kind, "layer.kind"))
        object.__setattr__(self, "pool_mode", _enum(PoolMode, self.pool_mode, "layer.pool_mode"))
        _check(isinstance(self.in_size, (tuple, list)) and len(self.in_size) == 2
               and all(isinstance(v, int) and not isinstance(v, bool) for v in self.in_size),
               f"layer.in_size must be two integers, not {self.in_size!r:.40}")
        object.__setattr__(self, "in_size", tuple(self.in_size))
        if isinstance(self.neuron, dict):
            object.__setattr__(self, "neuron", NeuronSpec(**self.neuron))
        _types(self, "layer", bias=(bool,), batchnorm=(bool,), padding=(int,),
               neuron=(NeuronSpec,), residual=(bool,))
        for name in ("in_channels", "out_channels", "kernel", "pool"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                   f"layer.{name} must be a positive integer, not {v!r}")
        _check(len(self.in_size) == 2 and min(self.in_size) >= 1,
               f"layer.in_size must be two positive integers, not {self.in_size!r}")
        _check(0 <= self.padding < self.kernel,
               f"layer.padding must be in [0, kernel), not {self.padding!r}")
        if self.kind is LayerKind.FC:
            _check(self.in_size == (1, 1) and self.kernel == 1 and self.pool == 1,
                   "an fc layer has in_size (1, 1), kernel 1 and pool 1")
        if self.residual:
            _check(self.kind is LayerKind.CONV and self.in_channels == self.out_channels
                   and self.kernel % 2 == 1 and self.padding == self.kernel // 2,
                   "a residual layer is a conv that keeps its channels and size (odd kernel, "
                   "same padding)")
            _check(self.neuron.kind is not NeuronKind.STCB,
                   "a residual layer has LIF / IF neurons (STCB blocks take no skips)")
        h, w = self.conv_size
        _check(h >= 1 and w >= 1, f"layer kernel {self.kernel} does not fit input {self.in_size}")
        _check(h % self.pool == 0 and w % self.pool == 0,
               f"layer.pool {self.pool} does not divide the conv output {h}x{w}")

    @property
    def conv_size(self) -> tuple[int, int]:
        h, w = self.in_size
        return (h + 2 * self.padding - self.kernel + 1, w + 2 * self.padding - self.kernel + 1)

    @property
    def out_size(self) -> tuple[int, int]:
        h, w = self.conv_size
        return (h // self.pool, w // self.pool)

    @property
    def neurons(self) -> int:
        h, w = self.conv_size
        return self.out_channels * h * w

    @property
    def fan_in(self) -> int:
        return self.in_channels * self.kernel * self.kernel

    @property
    def synapse_channels(self) -> int:
        """Input channels of the layer's synapses: ``in_channels``, doubled
        for a residual layer (its input, then the block input's skip)."""
        return 2 * self.in_channels if self.residual else self.in_channels

    @property
    def out_features(self) -> int:
        h, w = self.out_size
        return self.out_channels * h * w


@dataclass(frozen=True)
class NetworkSpec:
    """A feed-forward spiking network.

    input_shape
        ``(C, H, W)`` of one frame.
    frames
        Frames per sample: 1 for static images (repeated or bit-plane encoded
        over ``timesteps``), ``timesteps`` for sequences.
    encoding
        ``direct`` (analog frame every step), ``bitplane`` (a pixel as T
        binary spikes, MSB first) or ``rate``.
    voting
        Output neurons per class; a class's score is the sum over its group
        (BPSTA's voting layer).  The last layer has ``classes * voting``
        outputs.  Ties between classes go to the lowest class index.
    """

    name: str
    input_shape: tuple[int, int, int]
    timesteps: int
    layers: tuple[LayerSpec, ...]
    classes: int
    frames: int = 1
    encoding: str = "direct"
    voting: int = 1

    def __post_init__(self):
        _check(isinstance(self.input_shape, (tuple, list)) and len(self.input_shape) == 3
               and all(isinstance(v, int) and not isinstance(v, bool) for v in self.input_shape),
               f"input_shape must be three integers (C, H, W), not {self.input_shape!r:.40}")
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        _types(self, "network", name=(str,), timesteps=(int,), classes=(int,), frames=(int,),
               encoding=(str,), voting=(int,), layers=(tuple, list))
        object.__setattr__(self, "layers", tuple(
            LayerSpec(**l) if isinstance(l, dict) else l for l in self.layers))
        _check(len(self.input_shape) == 3 and min(self.input_shape) >= 1,
               f"input_shape must be (C, H, W), not {self.input_shape!r}")
        _check(isinstance(self.timesteps, int) and 1 <= self.timesteps <= MAX_TIMESTEPS,
               f"timesteps must be an integer in 1..{MAX_TIMESTEPS}, not {self.timesteps!r}")
        _check(self.frames in (1, self.timesteps),
               f"frames must be 1 or timesteps ({self.timesteps}), not {self.frames!r}")
        _check(self.encoding in ("direct", "bitplane", "rate"),
               f"encoding must be 'direct', 'bitplane' or 'rate', not {self.encoding!r}")
        _check(len(self.layers) >= 1, "a network needs at least one layer")
        _check(self.classes >= 1 and self.voting >= 1, "classes and voting must be positive")
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            c, h, w = shape
            if layer.kind is LayerKind.FC:
                _check(layer.in_channels == c * h * w,
                       f"layer {i}: fc expects {layer.in_channels} inputs, previous layer gives "
                       f"{c}x{h}x{w} = {c * h * w}")
            else:
                _check((layer.in_channels, *layer.in_size) == (c, h, w),
                       f"layer {i}: expects input {layer.in_channels}x{layer.in_size[0]}x"
                       f"{layer.in_size[1]}, previous layer gives {c}x{h}x{w}")
            if layer.residual:
                prev = self.layers[i - 1] if i >= 2 else None
                _check(prev is not None and prev.kind is LayerKind.CONV and prev.pool == 1
                       and prev.in_channels == prev.out_channels == layer.in_channels
                       and prev.in_size == layer.in_size,
                       f"layer {i}: a residual layer follows a conv layer (not layer 0) that "
                       "keeps its channels and size, unpooled: the skip adds that layer's input")
            shape = (layer.out_channels, *layer.out_size)
        _check(self.layers[-1].out_features == self.classes * self.voting,
               f"last layer has {self.layers[-1].out_features} outputs, expected classes*voting = "
               f"{self.classes * self.voting}")

    def to_dict(self) -> dict[str, Any]:
        def conv(v):
            if isinstance(v, enum.Enum):
                return v.value
            if dataclasses.is_dataclass(v):
                return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            return v
        d = conv(self)
        for layer in d["layers"]:   # written only where set: older specs read the same
            if not layer["residual"]:
                del layer["residual"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkSpec":
        _check(isinstance(d, dict), f"network spec must be an object, not {type(d).__name__}")
        try:
            _known(d, cls, "network")
            items = d.get("layers", ())
            _check(isinstance(items, (list, tuple)), "network.layers must be a list")
            layers = []
            for i, l in enumerate(items):
                _check(isinstance(l, dict), f"layers[{i}] must be an object")
                _known(l, LayerSpec, f"layers[{i}]")
                n = l.get("neuron", {})
                _check(isinstance(n, dict), f"layers[{i}].neuron must be an object")
                _known(n, NeuronSpec, f"layers[{i}].neuron")
                layers.append(LayerSpec(**{**l, "neuron": NeuronSpec(**n)}))
            return cls(**{**d, "layers": tuple(layers)})
        except TypeError as e:  # missing required field
            raise SpecError(f"network spec: {e}") from None


def _known(d: dict, cls, where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    _check(not unknown, f"{where}: unknown field(s) {', '.join(map(shown, unknown))}")
