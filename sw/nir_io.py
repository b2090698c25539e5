"""Networks in and out through NIR, the Neuromorphic Intermediate Representation.

snnTorch, Norse, Sinabs, SpikingJelly and Lava-DL write trained networks as
NIR graphs (HDF5 files, read here with ``nir.read``: h5py, no pickle).
:func:`import_graph` maps a chain of NIR nodes onto a
:class:`~spikeforge.config.NetworkSpec` plus float weights, from which
:func:`spikeforge.sw.models.from_weights` makes the :class:`SpikingNet` that
the rest of the flow (quantize, export, verify, build, report) takes
unchanged.  :func:`export_graph` goes the other way.

Accepted chains, one spikeforge layer per group::

    [Flatten] Conv2d|Affine|Linear  LIF|IF  [SumPool2d Threshold | AvgPool2d]

Conv2d: stride 1, dilation 1, groups 1, square kernel, equal padding below
the kernel size.  ``SumPool2d(k, stride k) -> Threshold(0 <= t < 1)`` after
spiking neurons is a max pool: on binary spikes the window sum exceeds t
exactly when one input spiked, an OR.  AvgPool2d is imported as average
pooling, which the integer contract lacks (software only; the quantizer
refuses it) unless ``avgpool_as_max`` says the network was trained with a max
pool (snnTorch 1.0 cannot export MaxPool2d).  Every other node (CubaLIF, LI,
Delay, Scale, recurrent subgraphs, skips) is refused naming the node.

Neurons.  NIR gives ODEs; the discrete steps used here (forward Euler, the
form snnTorch and Norse run) are, per neuron::

    LIF   v[t] = v[t-1] + dt/tau * (v_leak - v[t-1] + r * I[t])
             = decay * v[t-1] + gain * I[t] + dt/tau * v_leak,
          decay = 1 - dt/tau,  gain = dt * r / tau
    IF    v[t] = v[t-1] + r * I[t]              (snnTorch and Norse ignore dt here;
                                                 SpikingJelly: dt * r * I[t])
    spike when v[t] > v_threshold, then v <- v_reset

so ``gain`` multiplies the layer's weights and bias and the leak term is
added to the bias (exact: a synapse is linear).  One decay per layer (the
engine's shift list), thresholds and gains per output channel; a threshold
that differs between channels is divided into that channel's weights, bias
and leak (exact for every reset mode), leaving ``theta = 1``.

The strict ``>`` is kept (``>=`` for ``source`` spikingjelly): imported
layers set ``neuron.strict``, which the float model, the integer contract
and the engine all honour (a node's
``threshold_comparison`` metadata, ``">"`` or ``">="``, as
:func:`export_graph` writes it, overrides it; so does the graph's, which
older spikeforge exports wrote for the whole network).

What NIR does not carry comes from :class:`ImportOptions`: the number of
time steps, ``dt``, the reset (NIR has only ``v_reset``: snnTorch writes 0
for its default reset by subtraction), the input scale and encoding.
``source`` picks a framework's conventions: ``snntorch`` (dt 1e-4, reset by
subtraction), ``norse`` (dt 1e-3, reset to zero, and tau read as Norse 1.1.0
writes it: ``dt / tau_mem_inv``, i.e. ``dt`` times the real tau),
``spikingjelly`` (SpikingJelly 2.0's ``export_to_nir``: dt 1e-4, its
argument's default; reset to zero, the only reset it exports (``v_reset``,
also written as ``v_leak``); spike at ``v >= v_threshold``, as its
Heaviside fires at 0, which the graph does not say; IF written as ``r =
1/dt`` for its ``v += I``, so the gain is ``dt * r``; LIF as ``tau = dt *
tau``, ``r = tau`` or 1 for ``decay_input`` False or True, read as any LIF).

Nothing is approximated silently: :class:`Imported.notes` lists every
reading that is not exact -- each decay against the engine's nearest shift
list (an error above ``decay_tolerance``), reset modes taken from options --
and the import command prints them and writes them to ``RUN/import.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from spikeforge.config import (MAX_TIMESTEPS, LayerKind, LayerSpec, NetworkSpec, NeuronKind,
                               NeuronSpec, PoolMode, Reset, SpecError)
from spikeforge.errors import SpikeforgeError


class NIRError(SpikeforgeError, ValueError):
    """A NIR file or graph that cannot be imported (the node and reason named),
    or a network that cannot be exported."""


class Source(NamedTuple):
    """What an exporter leaves out of its graphs (module docstring)."""
    dt: float | None     # time step the exporter wrote tau with
    reset: Reset         # reset of LIF/IF nodes without reset metadata
    tau_times_dt: bool   # tau written as dt * tau (Norse 1.1.0's to_nir)
    strict: bool         # spike at v > v_threshold (NIR), else v >= v_threshold
    if_r_per_dt: bool    # IF written as r = 1/dt for v += I (SpikingJelly 2.0's export_to_nir)


SOURCES = {
    "nir": Source(None, Reset.ZERO, False, True, False),
    "snntorch": Source(1e-4, Reset.SUBTRACT, False, True, False),
    "norse": Source(1e-3, Reset.ZERO, True, True, False),
    "spikingjelly": Source(1e-4, Reset.ZERO, False, False, True),
}

#: ``dt`` written into exported graphs (snnTorch's convention).
EXPORT_DT = 1e-4


@dataclass(frozen=True)
class ImportOptions:
    """What a NIR graph does not say.

    timesteps
        T of the spikeforge network (None: the graph's ``timesteps``
        metadata, as :func:`export_graph` writes).
    dt
        Time step for ``tau`` (None: the graph's ``dt`` metadata, else the
        source's).
    source
        ``nir``, ``snntorch``, ``norse`` or ``spikingjelly`` (module docstring).
    reset
        ``zero``, ``subtract`` or ``none`` for every spiking layer (None: a
        node's ``reset`` metadata, else the source's default; ``zero``
        requires ``v_reset = 0``).
    input_scale
        The framework saw ``input_scale * pixel / 255`` (spikeforge's direct
        encoding feeds ``pixel / 255``): folded into layer 0's weights.
    encoding
        ``direct`` or ``bitplane`` (:class:`NetworkSpec`; None: the graph's
        ``encoding`` metadata, else ``direct``).
    avgpool_as_max
        Read AvgPool2d nodes as max (OR) pooling.
    decay_tolerance
        Largest accepted ``|shift-list decay - decay|``.
    """

    timesteps: int | None = None
    dt: float | None = None
    source: str = "nir"
    reset: str | None = None
    input_scale: float = 1.0
    encoding: str | None = None
    avgpool_as_max: bool = False
    decay_tolerance: float = 0.005

    def __post_init__(self):
        t = self.timesteps
        if t is not None and (type(t) is not int or not 1 <= t <= MAX_TIMESTEPS):
            raise NIRError(f"timesteps must be an integer in 1..{MAX_TIMESTEPS}, not {t!r:.40}")
        if self.source not in SOURCES:
            raise NIRError(f"source must be one of {', '.join(SOURCES)}, not {self.source!r:.40}")
        if self.reset is not None and self.reset not in {r.value for r in Reset}:
            raise NIRError(f"reset must be zero, subtract or none, not {self.reset!r:.40}")
        for name in ("dt", "input_scale", "decay_tolerance"):
            v = getattr(self, name)
            if v is None and name == "dt":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise NIRError(f"{name} must be a finite number above 0, not {v!r:.40}")
        if self.encoding not in (None, "direct", "bitplane"):
            raise NIRError(f"encoding must be direct or bitplane, not {self.encoding!r:.40}")


class Imported(NamedTuple):
    spec: NetworkSpec
    weights: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, float (w, b)
    notes: list[str]                                  # readings that are not exact
    nodes: list[list[str]]                            # per layer, the NIR node names


# --------------------------------------------------------------------------- reading


def read(path: str | Path):
    """The NIR graph of ``path`` (``nir.read``: HDF5 through h5py)."""
    import nir
    path = Path(path)
    if path.is_dir():
        raise NIRError(f"{path}: a folder, not a NIR file")
    if not path.is_file():
        raise NIRError(f"{path}: no such file")
    try:
        graph = nir.read(str(path), type_check=False)  # shapes are checked here, node by node
    except Exception as e:  # h5py / nir raise anything from OSError to KeyError on bad files
        raise NIRError(f"{path}: not a readable NIR file ({type(e).__name__}: "
                       f"{str(e)[:200]})") from None
    if not isinstance(graph, nir.NIRGraph):
        raise NIRError(f"{path}: holds a single {type(graph).__name__} node, not a NIR graph")
    return graph


def _arr(v, what: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise NIRError(f"{what} is not numeric ({type(v).__name__})") from None
    if not np.isfinite(a).all():
        raise NIRError(f"{what} has values that are not finite")
    return a


def _meta_value(meta: Any, key: str):
    if not isinstance(meta, dict) or key not in meta:
        return None
    v = meta[key]
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode("utf8", "replace")
    return v


def _chain(graph) -> list[tuple[str, Any]]:
    """The nodes from the single Input to the single Output, in order."""
    import nir
    nodes = graph.nodes
    if not isinstance(nodes, dict) or not nodes:
        raise NIRError("the graph has no nodes")
    ins = [k for k, n in nodes.items() if isinstance(n, nir.Input)]
    outs = [k for k, n in nodes.items() if isinstance(n, nir.Output)]
    if len(ins) != 1 or len(outs) != 1:
        raise NIRError(f"the graph has {len(ins)} Input and {len(outs)} Output nodes; "
                       "spikeforge takes one of each")
    succ: dict[str, list[str]] = {k: [] for k in nodes}
    pred: dict[str, list[str]] = {k: [] for k in nodes}
    for e in graph.edges:
        if not isinstance(e, (tuple, list)) or len(e) != 2:
            raise NIRError(f"edge {e!r:.60} is not a pair of node names")
        a, b = (str(x) for x in e)
        for k in (a, b):
            if k not in nodes:
                raise NIRError(f"edge ({a}, {b}) names node {k!r}, which the graph lacks")
        succ[a].append(b)
        pred[b].append(a)
    for k in nodes:
        if len(pred[k]) > 1:
            raise NIRError(f"node {k!r} ({_type(nodes[k])}) has {len(pred[k])} inputs "
                           f"({', '.join(sorted(pred[k]))}): skips, merges and recurrence are "
                           "not supported (the engine takes a chain)")
        if len(succ[k]) > 1:
            raise NIRError(f"node {k!r} ({_type(nodes[k])}) feeds {len(succ[k])} nodes: "
                           "branches are not supported (the engine takes a chain)")
    order, k = [], ins[0]
    while True:
        order.append(k)
        if k == outs[0]:
            break
        if not succ[k]:
            raise NIRError(f"node {k!r} ({_type(nodes[k])}) leads nowhere: no path from the "
                           "input to the output")
        k = succ[k][0]
        if k in order:
            raise NIRError(f"node {k!r} is on a cycle: recurrence is not supported")
    rest = sorted(set(nodes) - set(order))
    if rest:
        raise NIRError(f"node {rest[0]!r} ({_type(nodes[rest[0]])}) is not on the path from "
                       "the input to the output")
    return [(k, nodes[k]) for k in order[1:-1]]


def _type(node) -> str:
    return "missing (None)" if node is None else type(node).__name__


#: Why a node type is refused.
REFUSED = {
    "CubaLIF": "a current-based LIF has a synaptic current with its own time constant; the "
               "engine's neurons take the synapse sum directly (export a LIF: snnTorch Leaky, "
               "Norse LIFBoxCell)",
    "CubaLI": "a non-spiking leaky readout; the engine reads out spike counts of a LIF/IF layer",
    "LI": "a non-spiking leaky readout; the engine reads out spike counts of a LIF/IF layer",
    "I": "a non-spiking integrator; the engine reads out spike counts of a LIF/IF layer",
    "Integrator": "a non-spiking integrator; the engine reads out spike counts of a LIF/IF layer",
    "Delay": "synaptic delays are not in the engine",
    "Scale": "an elementwise scale between layers is not in the engine",
    "Conv1d": "1-d convolutions are not in the engine",
    "NIRGraph": "a subgraph (a recurrent layer such as snnTorch RLeaky): recurrence is not "
                "supported",
    "Identity": "an identity node between layers is not supported",
}


def _refuse(name: str, node, expected: str):
    t = _type(node)
    if node is None:
        raise NIRError(f"node {name!r} is missing (None): its exporter could not convert the "
                       f"module (Norse writes None for MaxPool2d and Flatten); put a NIR node "
                       f"there ({expected})")
    why = REFUSED.get(t, f"expected {expected} here")
    raise NIRError(f"node {name!r} ({t}): {why}")


def _pair(v, name: str, what: str) -> tuple[int, int]:
    a = _arr(v, f"node {name!r}: {what}").reshape(-1)
    if a.size == 1:
        a = np.repeat(a, 2)
    if a.size != 2 or (a != np.round(a)).any():
        raise NIRError(f"node {name!r}: {what} must be one or two integers, not {a.tolist()}")
    return int(a[0]), int(a[1])


def _input_shape(graph, given) -> tuple[int, int, int]:
    import nir
    node = next(n for n in graph.nodes.values() if isinstance(n, nir.Input))
    raw = node.input_type.get("input") if isinstance(node.input_type, dict) else None
    shape = [] if raw is None else [int(v) for v in np.asarray(raw).reshape(-1)]
    while len(shape) > 3 and shape[0] == 1:  # a batch dimension of one
        shape = shape[1:]
    if given is not None:
        given = tuple(int(v) for v in given)
        if shape and math.prod(shape) != math.prod(given):
            raise NIRError(f"the graph's input has shape {shape}, the data set's frames "
                           f"{list(given)}")
        return given
    if len(shape) == 3:
        return tuple(shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 1:
        return (1, 1, shape[0])
    raise NIRError(f"the graph's input shape {shape} is not (C, H, W), (H, W) or (N,)")


class _Neuron(NamedTuple):
    kind: NeuronKind
    decay: float
    gain: np.ndarray       # per output channel
    leak: np.ndarray       # per output channel, added to the current after the gain
    theta: np.ndarray      # per output channel
    reset: Reset
    strict: bool           # spike at v > v_threshold (NIR), else v >= v_threshold


def _per_channel(a: np.ndarray, shape: tuple[int, ...], name: str, what: str) -> np.ndarray:
    """``a`` broadcast to the layer's neurons, then one value per output channel."""
    try:
        full = np.broadcast_to(a, shape) if a.shape != shape else a
    except ValueError:
        # per-channel vectors for a conv layer: (C,) against (C, H, W)
        if a.ndim == 1 and len(shape) == 3 and a.shape[0] == shape[0]:
            full = np.broadcast_to(a.reshape(-1, 1, 1), shape)
        else:
            raise NIRError(f"node {name!r}: {what} has shape {list(a.shape)}, the layer's "
                           f"neurons {list(shape)}") from None
    per = full.reshape(shape[0], -1)
    if not np.allclose(per, per[:, :1], rtol=1e-6, atol=0):
        raise NIRError(f"node {name!r}: {what} differs between neurons of one output channel; "
                       "the engine holds it per channel")
    return per[:, 0].copy()


def _snap(v: np.ndarray, to: float) -> np.ndarray:
    """Values within float rounding (1e-6 relative) of ``to`` become ``to``:
    ``dt * r / tau`` of an exporter that wrote ``r = tau / dt``."""
    return np.where(np.abs(v - to) <= 1e-6 * abs(to), to, v)


#: Metadata key (graph or node) of the spike comparison, ``">"`` or ``">="``.
COMPARISON_KEY = "threshold_comparison"


def _comparison(meta: Any, where: str, default: bool) -> bool:
    """``strict`` from ``meta``'s :data:`COMPARISON_KEY`, else ``default``."""
    v = _meta_value(meta, COMPARISON_KEY)
    if v is None:
        return default
    if v not in (">", ">="):
        raise NIRError(f"{where}: {COMPARISON_KEY} metadata {v!r:.40} is not '>' or '>='")
    return v == ">"


def _neuron(name: str, node, shape: tuple[int, ...], opts: ImportOptions, dt: float | None,
            notes: list[str], layer: int, strict: bool = True) -> _Neuron:
    import nir
    src = SOURCES[opts.source]
    C = shape[0]
    p = lambda field: _arr(getattr(node, field), f"node {name!r}: {field}")
    theta = _per_channel(p("v_threshold"), shape, name, "v_threshold")
    if (theta <= 0).any():
        raise NIRError(f"node {name!r}: v_threshold must be positive, not {theta.min():g}")
    if isinstance(node, nir.LIF):
        if dt is None:
            raise NIRError(f"node {name!r} (LIF): the graph does not say its time step: give "
                           "dt (--dt; snnTorch writes with 1e-4, Norse with 1e-3) or --source")
        tau = p("tau")
        if (tau <= 0).any():
            raise NIRError(f"node {name!r}: tau must be positive, not {tau.min():g}")
        if src.tau_times_dt:
            tau = tau / dt
        ratio = _per_channel(dt / tau, shape, name, "dt / tau")
        if not np.allclose(ratio, ratio[0], rtol=1e-6, atol=1e-12):
            raise NIRError(f"node {name!r}: decays 1 - dt/tau differ between channels "
                           f"({1 - ratio.max():.6g} .. {1 - ratio.min():.6g}); the engine holds one "
                           "decay per layer")
        r0 = float(ratio[0])
        if not 0 <= r0 < 1:
            raise NIRError(f"node {name!r}: dt / tau = {r0:.6g} gives decay {1 - r0:.6g}, outside "
                           f"(0, 1]; check --dt ({dt:g}) and --source")
        decay = float(f"{1.0 - r0:.12g}")
        gain = _snap(ratio * _per_channel(p("r"), shape, name, "r"), 1.0)
        leak = ratio * _per_channel(p("v_leak"), shape, name, "v_leak")
        kind = NeuronKind.LIF if decay < 1.0 else NeuronKind.IF
    else:  # IF
        decay, kind = 1.0, NeuronKind.IF
        gain = _per_channel(p("r"), shape, name, "r")
        if src.if_r_per_dt:  # such a source has a dt of its own
            gain = _snap(gain * dt, 1.0)
        leak = np.zeros(C)
    if (gain <= 0).any():
        raise NIRError(f"node {name!r}: the input gain (dt * r / tau, or r for IF) must be "
                       f"positive, not {gain.min():g}")
    v_reset = getattr(node, "v_reset", None)
    v_reset = np.zeros(1) if v_reset is None else p("v_reset")
    meta_reset = _meta_value(getattr(node, "metadata", None), "reset")
    if opts.reset is not None:
        reset, why = Reset(opts.reset), "the reset option"
    elif meta_reset in {r.value for r in Reset}:
        reset, why = Reset(meta_reset), "the node's reset metadata"
    else:
        reset, why = src.reset, f"source {opts.source}"
    if reset is Reset.ZERO:
        if (v_reset != 0).any():
            raise NIRError(f"node {name!r}: v_reset {float(v_reset.reshape(-1)[0]):g}: the engine "
                           "resets to zero, by subtraction or not at all (--reset)")
    else:
        notes.append(f"layer {layer} (node {name!r}): reset {reset.value} from {why} "
                     f"(the graph's v_reset, {float(v_reset.reshape(-1)[0]):g}, is not used)")
    strict = _comparison(getattr(node, "metadata", None), f"node {name!r}", strict)
    return _Neuron(kind, decay, gain, leak, theta, reset, strict)


def _conv_params(name: str, node, shape) -> tuple[np.ndarray, np.ndarray, int, int]:
    w = _arr(node.weight, f"node {name!r}: weight")
    if w.ndim != 4:
        raise NIRError(f"node {name!r}: Conv2d weight must be [C_out, C_in, kH, kW], "
                       f"not {list(w.shape)}")
    cout, cin, kh, kw = w.shape
    if kh != kw:
        raise NIRError(f"node {name!r}: kernel {kh}x{kw}: the engine takes square kernels")
    if _pair(node.stride, name, "stride") != (1, 1):
        raise NIRError(f"node {name!r}: stride {list(_pair(node.stride, name, 'stride'))}: the "
                       "engine convolves with stride 1 (pool instead)")
    if _pair(node.dilation, name, "dilation") != (1, 1):
        raise NIRError(f"node {name!r}: dilation is not in the engine")
    groups = 1
    if node.groups is not None:
        g = _arr(node.groups, f"node {name!r}: groups").reshape(-1)
        if g.size != 1 or g[0] != np.round(g[0]):
            raise NIRError(f"node {name!r}: groups must be one integer, not {g.tolist()}")
        groups = int(g[0])
    if groups != 1:
        raise NIRError(f"node {name!r}: groups {groups}: the engine takes dense convolutions")
    pad = node.padding
    if isinstance(pad, (str, bytes)):
        pad = pad.decode() if isinstance(pad, bytes) else pad
        if pad == "valid":
            pad = 0
        elif pad == "same" and kh % 2 == 1:
            pad = kh // 2
        else:
            raise NIRError(f"node {name!r}: padding {pad!r} with kernel {kh} is not supported")
    ph, pw = _pair(pad, name, "padding")
    if ph != pw or not 0 <= ph < kh:
        raise NIRError(f"node {name!r}: padding {ph}x{pw} with kernel {kh}: the engine pads "
                       "equally on all sides, less than the kernel size")
    if cin != shape[0]:
        raise NIRError(f"node {name!r}: Conv2d takes {cin} channels, its input has "
                       f"{list(shape)}")
    b = node.bias
    b = np.zeros(cout) if b is None else _arr(b, f"node {name!r}: bias").reshape(-1)
    if b.size == 1 and cout > 1:
        b = np.repeat(b, cout)
    if b.shape != (cout,):
        raise NIRError(f"node {name!r}: bias has {b.size} values for {cout} output channels")
    return w, b, kh, ph


def _affine_params(name: str, node, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    import nir
    w = _arr(node.weight, f"node {name!r}: weight")
    if w.ndim != 2:
        raise NIRError(f"node {name!r}: weight must be [out, in], not {list(w.shape)}")
    if w.shape[1] != n_in:
        raise NIRError(f"node {name!r}: takes {w.shape[1]} inputs, the layer before gives {n_in}")
    if isinstance(node, nir.Affine):
        b = _arr(node.bias, f"node {name!r}: bias").reshape(-1)
        if b.shape != (w.shape[0],):
            raise NIRError(f"node {name!r}: bias has {b.size} values for {w.shape[0]} outputs")
    else:
        b = np.zeros(w.shape[0])
    return w, b


def _pool_params(name: str, node) -> int:
    k = _pair(node.kernel_size, name, "kernel_size")
    s = _pair(node.stride, name, "stride") if node.stride is not None else k
    pad = _pair(node.padding, name, "padding") if node.padding is not None else (0, 0)
    if k[0] != k[1] or s != k or pad != (0, 0):
        raise NIRError(f"node {name!r}: pooling kernel {list(k)}, stride {list(s)}, padding "
                       f"{list(pad)}: the engine pools square windows, stride = kernel, no padding")
    return k[0]


def import_graph(graph, opts: ImportOptions, input_shape=None, name: str = "nir") -> Imported:
    """Map ``graph`` (a ``nir.NIRGraph``) onto a spec and float weights.

    ``input_shape`` (C, H, W) is the data set's frame shape (None: from the
    graph's Input node).  Raises :class:`NIRError` naming the node on anything
    the engine cannot hold.
    """
    import nir
    if not isinstance(graph, nir.NIRGraph):
        raise NIRError(f"expected a NIR graph, not {type(graph).__name__}")
    meta = getattr(graph, "metadata", None)
    T = opts.timesteps if opts.timesteps is not None else _meta_value(meta, "timesteps")
    if type(T) is not int or not 1 <= T <= MAX_TIMESTEPS:
        raise NIRError("the graph does not say its number of time steps: give --timesteps "
                       f"(1..{MAX_TIMESTEPS})")
    dt = opts.dt if opts.dt is not None else _meta_value(meta, "dt")
    if dt is None:
        dt = SOURCES[opts.source].dt
    if dt is not None and (isinstance(dt, bool) or not isinstance(dt, (int, float))
                           or not math.isfinite(dt) or dt <= 0):
        raise NIRError(f"the graph's dt metadata {dt!r:.40} is not a positive number")
    encoding = opts.encoding or _meta_value(meta, "encoding") or "direct"
    if encoding not in ("direct", "bitplane"):
        raise NIRError(f"the graph's encoding metadata {encoding!r:.40} is not direct or bitplane")
    seq = _chain(graph)
    shape = _input_shape(graph, input_shape)
    in_shape = shape
    notes = []
    # NIR: v > v_threshold; SpikingJelly's exporter writes no comparison for its v >= v_threshold
    strict = _comparison(meta, "the graph", SOURCES[opts.source].strict)
    layers, weights, groups = [], [], []
    flat = False  # a Flatten seen since the last layer
    i = 0
    while i < len(seq):
        nm, node = seq[i]
        if isinstance(node, nir.Flatten):
            flat, i = True, i + 1
            continue
        names = [nm]
        n = len(layers)
        if isinstance(node, nir.Conv2d):
            if flat or len(shape) != 3:
                raise NIRError(f"node {nm!r} (Conv2d): its input is flattened")
            w, b, k, pad = _conv_params(nm, node, shape)
            h, wd = shape[1] + 2 * pad - k + 1, shape[2] + 2 * pad - k + 1
            if h < 1 or wd < 1:
                raise NIRError(f"node {nm!r}: kernel {k} does not fit the input {list(shape)}")
            out_shape = (w.shape[0], h, wd)
            kind = LayerKind.CONV
        elif isinstance(node, (nir.Affine, nir.Linear)):
            n_in = math.prod(shape)
            w, b = _affine_params(nm, node, n_in)
            out_shape = (w.shape[0],)
            kind, k, pad = LayerKind.FC, 1, 0
        else:
            _refuse(nm, node, "Conv2d, Affine, Linear or Flatten")
        i += 1
        if i >= len(seq) or not isinstance(seq[i][1], (nir.LIF, nir.IF)):
            if i >= len(seq):
                raise NIRError(f"node {nm!r} ({_type(node)}) feeds the output directly: the "
                               "readout counts spikes, so the last layer must be LIF or IF")
            _refuse(seq[i][0], seq[i][1], f"LIF or IF after the synapse {nm!r}")
        nn_, nnode = seq[i]
        names.append(nn_)
        neu = _neuron(nn_, nnode, out_shape, opts, dt, notes, n, strict)
        i += 1
        pool, pool_mode = 1, PoolMode.MAX
        if i < len(seq) and isinstance(seq[i][1], (nir.SumPool2d, nir.AvgPool2d)):
            pn, pnode = seq[i]
            if kind is LayerKind.FC:
                raise NIRError(f"node {pn!r}: pooling after a fully connected layer")
            pool = _pool_params(pn, pnode)
            names.append(pn)
            i += 1
            if isinstance(pnode, nir.SumPool2d):
                if i >= len(seq) or not isinstance(seq[i][1], nir.Threshold):
                    raise NIRError(f"node {pn!r} (SumPool2d): a sum pool passes on spike counts; "
                                   "the engine takes SumPool2d -> Threshold (a max pool: OR)")
                tn, tnode = seq[i]
                t = _arr(tnode.threshold, f"node {tn!r}: threshold")
                if not ((t >= 0) & (t < 1)).all():
                    raise NIRError(f"node {tn!r} (Threshold): threshold {t.reshape(-1)[0]:g} after "
                                   "a sum pool of spikes is an OR only for 0 <= t < 1")
                names.append(tn)
                i += 1
            elif opts.avgpool_as_max:
                notes.append(f"layer {n} (node {pn!r}): AvgPool2d read as max (OR) pooling, as "
                             "asked (the network was trained with a max pool)")
            else:
                pool_mode = PoolMode.AVG
                notes.append(f"layer {n} (node {pn!r}): average pooling is software only (no "
                             "integer contract; quantize refuses it)")
        # gain, leak and threshold per channel into (w, b); one theta per layer
        uniform = np.allclose(neu.theta, neu.theta[0], rtol=1e-9, atol=0)
        norm = np.ones_like(neu.theta) if uniform else neu.theta
        theta = float(neu.theta[0]) if uniform else 1.0
        if not uniform:
            notes.append(f"layer {n} (node {nn_!r}): thresholds per channel "
                         f"({neu.theta.min():g} .. {neu.theta.max():g}) divided into the weights "
                         "(exact), theta = 1")
        scale = neu.gain / norm
        if n == 0 and opts.input_scale != 1.0:
            w = w * opts.input_scale
        wv = w * scale.reshape(-1, *([1] * (w.ndim - 1))) if (scale != 1).any() else w
        bv = b * scale + neu.leak / norm if (scale != 1).any() or neu.leak.any() else b
        if neu.kind is NeuronKind.LIF:
            from spikeforge.sw.quantize import decay_shifts, effective_decay
            shifts, err = decay_shifts(neu.decay)
            if abs(err) > opts.decay_tolerance:
                raise NIRError(f"node {nn_!r}: decay {neu.decay:.6g} is not within the tolerance "
                               f"{opts.decay_tolerance:g} of a shift list of at most 3 terms "
                               f"(nearest {effective_decay(shifts):.6g}, shifts {list(shifts)}); "
                               "allow it with --decay-tolerance")
            notes.append(f"layer {n} (node {nn_!r}): decay {neu.decay:.6g} -> engine shifts "
                         f"{list(shifts)} = {effective_decay(shifts):.6g} (error {err:+.2g}; "
                         "the float model keeps the exact decay)")
        nspec = NeuronSpec(neu.kind, decay=neu.decay, theta=theta, reset=neu.reset,
                           strict=neu.strict)
        try:
            if kind is LayerKind.CONV:
                ls = LayerSpec(kind, shape[0], out_shape[0], (shape[1], shape[2]), kernel=k,
                               padding=pad, pool=pool, pool_mode=pool_mode, neuron=nspec)
            else:
                ls = LayerSpec(kind, math.prod(shape), out_shape[0], (1, 1), neuron=nspec)
        except SpecError as e:
            raise NIRError(f"nodes {', '.join(map(repr, names))}: {e}") from None
        layers.append(ls)
        weights.append((torch.tensor(wv, dtype=torch.float32),
                        torch.tensor(bv, dtype=torch.float32)))
        groups.append(names)
        shape = (ls.out_channels, *ls.out_size) if kind is LayerKind.CONV else (ls.out_channels,)
        flat = False
    if not layers:
        raise NIRError("the graph has no layers (synapse -> LIF/IF)")
    try:
        spec = NetworkSpec(name, in_shape, T, tuple(layers), classes=layers[-1].out_features,
                           encoding=encoding)
    except SpecError as e:
        raise NIRError(f"the imported network: {e}") from None
    if opts.input_scale != 1.0:
        notes.append(f"input: the source saw {opts.input_scale:g} * pixel / 255, folded into "
                     "layer 0's weights")
    return Imported(spec, weights, notes, groups)


def to_model(imp: Imported):
    """The :class:`SpikingNet` of an import."""
    from spikeforge.sw.models import check_size, from_weights
    try:
        check_size(imp.spec)
    except SpikeforgeError as e:
        raise NIRError(str(e)) from None
    return from_weights(imp.spec, imp.weights)


# --------------------------------------------------------------------------- writing


def export_graph(model, dt: float = EXPORT_DT):
    """A ``nir.NIRGraph`` of a LIF/IF :class:`SpikingNet` (batch norm folded).

    LIF layers become ``LIF(tau = dt / (1 - decay), r = tau / dt, v_leak = 0)``
    (so ``gain = 1``), IF layers ``IF(r = 1)``, max pooling ``SumPool2d ->
    Threshold(0)``, average pooling ``AvgPool2d``; per-neuron parameter arrays
    (the shape snnTorch writes).  The graph's metadata records ``timesteps``,
    ``dt`` and the encoding, each neuron node its ``reset`` and its
    ``threshold_comparison`` (``">"`` for a strict layer, else ``">="``: NIR
    itself means ``>``), so that :func:`import_graph` reads the file back
    without options.
    """
    import nir

    from spikeforge.sw.quantize import folded
    spec = model.spec
    if model.stcb:
        raise NIRError(f"{spec.name}: STCB layers have no NIR node")
    if not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise NIRError(f"dt must be a finite number above 0, not {dt!r:.40}")
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(spec.input_shape)})}
    order = ["input"]

    def add(key, node):
        nodes[key] = node
        order.append(key)

    shape = spec.input_shape
    for n, (layer, ls) in enumerate(zip(model.layers, spec.layers)):
        if ls.residual:
            raise NIRError(f"layer {n}: a residual layer's skip is not a chain; NIR export "
                           "takes chains")
        w, b = folded(layer)
        w = w.float().numpy()
        b = b.float().numpy()
        if ls.kind is LayerKind.FC:
            if len(shape) == 3:
                add(f"flatten{n}", nir.Flatten(input_type={"input": np.array(shape)},
                                                start_dim=0, end_dim=-1))
            add(f"fc{n}", nir.Affine(weight=w.reshape(ls.out_channels, ls.in_channels), bias=b))
            nshape = (ls.out_channels,)
        else:
            add(f"conv{n}", nir.Conv2d(input_shape=ls.in_size, weight=w, stride=1,
                                       padding=ls.padding, dilation=1, groups=1, bias=b))
            nshape = (ls.out_channels, *ls.conv_size)
        ns = ls.neuron
        full = lambda v: np.full(nshape, float(v))
        meta = {"reset": ns.reset.value, COMPARISON_KEY: ">" if ns.strict else ">="}
        if ns.kind is NeuronKind.LIF and ns.decay < 1.0:
            tau = dt / (1.0 - ns.decay)
            add(f"lif{n}", nir.LIF(tau=full(tau), r=full(tau / dt), v_leak=full(0.0),
                                   v_threshold=full(ns.theta), v_reset=full(0.0), metadata=meta))
        else:
            add(f"if{n}", nir.IF(r=full(1.0), v_threshold=full(ns.theta), v_reset=full(0.0),
                                 metadata=meta))
        if ls.pool > 1:
            k = np.array([ls.pool, ls.pool])
            if ls.pool_mode is PoolMode.MAX:
                add(f"pool{n}", nir.SumPool2d(kernel_size=k, stride=k, padding=np.array([0, 0])))
                add(f"spike{n}", nir.Threshold(threshold=np.zeros((ls.out_channels,
                                                                   *ls.out_size))))
            else:
                add(f"pool{n}", nir.AvgPool2d(kernel_size=k, stride=k, padding=np.array([0, 0])))
        shape = (ls.out_channels, *ls.out_size) if ls.kind is LayerKind.CONV \
            else (ls.out_channels,)
    add("output", nir.Output(output_type={"output": np.array(shape)}))
    edges = list(zip(order[:-1], order[1:]))
    metadata = {"source": "spikeforge", "name": spec.name, "timesteps": spec.timesteps,
                "dt": float(dt), "encoding": spec.encoding,
                "input": "pixel / 255 every step (direct) or bit planes MSB first (bitplane)"}
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)
    except Exception as e:  # nir's own checks
        raise NIRError(f"nir refused the graph: {e}") from None


def write(path: str | Path, graph) -> None:
    import nir
    nir.write(str(path), graph)


# --------------------------------------------------------------------------- run folders

IMPORT_RECORD = "import.json"


def import_run(path: str | Path, run: str | Path, opts: ImportOptions, *, dataset: str = "mnist5k",
               seed: int = 0) -> dict:
    """``spikeforge import``: a run folder from a NIR file (module docstring).

    Writes the float model as a trained run does (``model.safetensors``,
    ``config.json``, ``metrics.json`` with its test accuracy on ``dataset``)
    and ``import.json`` (the file's sha256, the options, the notes, the NIR
    nodes of each layer).  Returns the import record.
    """
    import dataclasses
    import hashlib
    import json

    from spikeforge.sw import data as sfdata
    from spikeforge.sw.train import write_imported_run
    path, run = Path(path), Path(run)
    held = [n for n in ("model.safetensors", "weights.sfimg", "hw") if (run / n).exists()]
    if held:
        raise NIRError(f"{run} already holds a model ({', '.join(held)}): import into a new "
                       "folder (the steps after it would read stale files)")
    graph = read(path)
    ds = sfdata.load(dataset, seed=seed)
    imp = import_graph(graph, opts, input_shape=tuple(ds.shape), name=f"nir:{path.stem}")
    if imp.spec.classes != ds.classes:
        raise NIRError(f"the graph has {imp.spec.classes} outputs, the data set {dataset} "
                       f"{ds.classes} classes")
    if ds.frames > 1 and ds.frames != imp.spec.timesteps:
        raise NIRError(f"the data set {dataset} has {ds.frames} frames per sample: give "
                       f"--timesteps {ds.frames}")
    spec = imp.spec
    if ds.frames > 1:
        spec = dataclasses.replace(spec, frames=ds.frames)
        imp = imp._replace(spec=spec)
    model = to_model(imp)
    run.mkdir(parents=True, exist_ok=True)
    record = {"source_file": str(path),
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
              "options": {**dataclasses.asdict(opts), "dataset": dataset, "seed": seed},
              "layers": imp.nodes, "notes": imp.notes}
    metrics = write_imported_run(run, model, dataset=dataset, seed=seed, ds=ds)
    record["float_test_accuracy"] = metrics["test_accuracy"]
    (run / IMPORT_RECORD).write_text(json.dumps(record, indent=2))
    return record


def export_run(run: str | Path, out: str | Path | None = None, dt: float = EXPORT_DT) -> Path:
    """``spikeforge export-nir``: the run's float model as NIR (default RUN/model.nir)."""
    from spikeforge.sw.train import load_run
    run = Path(run)
    _, model = load_run(run)
    named = "--out " if out is not None else ""
    out = Path(out) if out is not None else run / "model.nir"
    if out.is_dir():
        raise NIRError(f"{named}{out} is a folder: name the NIR file to write")
    if not out.parent.is_dir():
        raise NIRError(f"{named}{out}: its folder {out.parent} does not exist")
    write(out, export_graph(model, dt))
    return out
