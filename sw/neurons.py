"""Spiking neurons in float, for training.

Pure step functions with explicit state and a frozen parameter object, a
fused multi-step path over all T for training, and thin ``nn.Module``
wrappers with no hidden state.  The integer contract that hardware meets
lives in :mod:`spikeforge.sw.golden`; these are its float counterparts.

LIF (ConvSNN Eq. 1-5, BPSTA Eq. 2-4), state ``(u, o)`` starting at zero::

    u[t] = decay * u[t-1] * (1 - o[t-1]) + I[t]      reset = zero
    u[t] = decay * u[t-1] - theta * o[t-1] + I[t]    reset = subtract
    u[t] = decay * u[t-1] + I[t]                     reset = none
    o[t] = 1 if u[t] >= theta else 0                (strict: u[t] > theta)

IF is LIF with ``decay = 1``.  BPTA adds, without changing the forward
value, a gradient path ``do[t]/do[t-1] += decay * a * g'(u[t])`` through the
reset (the authors' ``u <- u + a*o - a*stopgrad(o)``).

Training runs all T steps of a layer in one autograd node: :func:`lif_sequence`
uses the C++ kernel of ``lif_kernel.cpp`` (built at first use, see
:func:`kernel`; it can also take a static input current and fuse the max pool
that follows) and falls back to :class:`_LIFSequence`, the PyTorch reference.

ConvSNN hybrid pre-training (Eq. 6-7) replaces the step by a shifted leaky
ReLU and disables the reset: ``o = u if u >= theta else beta * u`` (strict:
``u > theta``).

STCB (STCSNN): the STEB encodes a value x as a spike train with a decaying
threshold, ``u[0] = x; s[t] = [u[t] >= Vth[t]]; u[t+1] = u[t] - Vth[t] s[t]``;
the CAB decodes ``sum_t Vth[t] * I[t]``.  With ``Vth[t] = theta / 2**t`` the
pair is a clamped, floor-quantised ReLU; training uses the equivalent
gradient (ReLU), no back-propagation through time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from spikeforge.config import NeuronKind, NeuronSpec, Reset
from spikeforge.sw import surrogate as sg

# --------------------------------------------------------------------------- LIF / IF


class LIFState(NamedTuple):
    u: torch.Tensor  # membrane potential after the step
    o: torch.Tensor  # spikes of the step


@dataclass(frozen=True)
class LIFParams:
    decay: float = 0.5
    theta: float = 0.5
    reset: Reset = Reset.ZERO
    surrogate: str = "gaussian"
    width: float | None = None
    bpta: float = 0.0
    strict: bool = False    # fire at u > theta (else u >= theta)

    def fires(self, u: torch.Tensor) -> torch.Tensor:
        """The spike comparison: ``u > theta`` (strict) or ``u >= theta``."""
        return u > self.theta if self.strict else u >= self.theta

    @classmethod
    def from_spec(cls, spec: NeuronSpec) -> "LIFParams":
        if spec.kind is NeuronKind.STCB:
            raise ValueError("an STCB neuron has no LIF parameters")
        return cls(spec.decay, spec.theta, spec.reset, spec.surrogate, spec.surrogate_width,
                   spec.bpta, spec.strict)


def lif_init(like: torch.Tensor) -> LIFState:
    return LIFState(torch.zeros_like(like), torch.zeros_like(like))


def lif_step(i: torch.Tensor, state: LIFState, p: LIFParams,
             hybrid_beta: float | None = None) -> tuple[torch.Tensor, LIFState]:
    """One time step of the LIF recurrence (module docstring); autograd-friendly.

    With ``hybrid_beta`` the output is the shifted leaky ReLU and there is no reset.
    """
    u_prev, o_prev = state
    if hybrid_beta is not None:
        u = p.decay * u_prev + i
        o = torch.where(p.fires(u), u, hybrid_beta * u)
        return o, LIFState(u, o)
    if p.reset is Reset.ZERO:
        base = p.decay * (u_prev * (1.0 - o_prev))
    elif p.reset is Reset.SUBTRACT:
        base = p.decay * u_prev - p.theta * o_prev
    else:
        base = p.decay * u_prev
    if p.bpta:
        base = base + p.decay * p.bpta * (o_prev - o_prev.detach())
    u = base + i
    o = sg.spike(u, p.theta, p.surrogate, p.width, p.strict)
    return o, LIFState(u, o)


class _LIFSequence(torch.autograd.Function):
    """All T steps of :func:`lif_step` in one autograd node.

    The forward keeps only ``u`` and ``o`` per step; the backward runs the
    recurrence in reverse (``gu``: dL/du[t], ``go``: dL/do[t])::

        go[t] = dL/do[t] + gu[t+1] * df/do(u[t], o[t])
        gu[t] = go[t] * g'(u[t]) + gu[t+1] * df/du(u[t], o[t])
        dL/dI[t] = gu[t]

    with ``f`` the reset-and-decay map of the next step.  This avoids the
    ~10 graph nodes per step that the step-by-step path records.
    """

    @staticmethod
    def forward(ctx, i, p: LIFParams, hybrid_beta):
        T = i.shape[0]
        u_all = torch.empty_like(i)
        o_all = torch.empty_like(i)
        u = torch.zeros_like(i[0])
        o = torch.zeros_like(i[0])
        for t in range(T):
            if hybrid_beta is not None:
                u = p.decay * u + i[t]
                o = torch.where(p.fires(u), u, hybrid_beta * u)
            else:
                if p.reset is Reset.ZERO:
                    u = p.decay * (u * (1.0 - o)) + i[t]
                elif p.reset is Reset.SUBTRACT:
                    u = p.decay * u - p.theta * o + i[t]
                else:
                    u = p.decay * u + i[t]
                o = p.fires(u).to(i.dtype)
            u_all[t] = u
            o_all[t] = o
        ctx.save_for_backward(u_all, o_all)
        ctx.p, ctx.hybrid_beta = p, hybrid_beta
        return o_all

    @staticmethod
    def backward(ctx, grad_o):
        u_all, o_all = ctx.saved_tensors
        p, beta = ctx.p, ctx.hybrid_beta
        T = u_all.shape[0]
        grad_i = torch.empty_like(u_all)
        gu_next = torch.zeros_like(u_all[0])
        for t in range(T - 1, -1, -1):
            u, o = u_all[t], o_all[t]
            if beta is not None:
                dodu = torch.where(p.fires(u), torch.ones_like(u), torch.full_like(u, beta))
                gu = grad_o[t] * dodu + gu_next * p.decay
            else:
                if p.reset is Reset.ZERO:
                    dfdu = p.decay * (1.0 - o)
                    dfdo = -p.decay * u
                elif p.reset is Reset.SUBTRACT:
                    dfdu, dfdo = p.decay, -p.theta
                else:
                    dfdu, dfdo = p.decay, 0.0
                if p.bpta:
                    dfdo = dfdo + p.decay * p.bpta
                go = grad_o[t] + gu_next * dfdo
                gu = go * sg.derivative(p.surrogate, u, p.theta, o, p.width) + gu_next * dfdu
            grad_i[t] = gu
            gu_next = gu
        return grad_i, None, None


class _LIFKernel(torch.autograd.Function):
    """:class:`_LIFSequence` (optionally with a static input and a fused max
    pool) in the C++ kernel of ``lif_kernel.cpp``; same maths, same gradient.
    Saves only the input current; the backward recomputes ``u`` from it."""

    @staticmethod
    def forward(ctx, i, p: LIFParams, hybrid_beta, steps: int, pool: int):
        mode = _MODE_HYBRID if hybrid_beta is not None else _MODES[p.reset]
        beta = 0.0 if hybrid_beta is None else float(hybrid_beta)
        out = torch.ops.spikeforge_lif.forward(i, steps, pool, mode, float(p.decay),
                                               float(p.theta), beta, bool(p.strict))
        ctx.save_for_backward(i)
        ctx.args = (steps, pool, mode, float(p.decay), float(p.theta), beta, bool(p.strict))
        ctx.surrogate = (_SURROGATES[p.surrogate],
                         float(sg.DEFAULT_WIDTH[p.surrogate] if p.width is None else p.width),
                         float(p.bpta))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_o):
        (i,) = ctx.saved_tensors
        grad_i = torch.ops.spikeforge_lif.backward(grad_o, i, *ctx.args, *ctx.surrogate)
        return grad_i, None, None, None, None


_MODES = {Reset.ZERO: 0, Reset.SUBTRACT: 1, Reset.NONE: 2}
_MODE_HYBRID = 3
_SURROGATES = {name: n for n, name in enumerate(("gaussian", "rect", "fast_sigmoid", "bpsa"))}


def kernel(verbose: bool = False) -> bool:
    """Build (first call on a machine, a few seconds) and load the fused C++
    LIF kernel; ``True`` when it is usable.  On failure one warning is issued
    and :func:`lif_sequence` keeps to its PyTorch path."""
    from spikeforge.sw import lif_kernel
    return lif_kernel.load(verbose)


def _kernel_applies(i: torch.Tensor, p: LIFParams) -> bool:
    return (i.device.type == "cpu" and i.dtype in (torch.float32, torch.float64)
            and p.surrogate in _SURROGATES and i.dim() >= 1)


def max_pool(o: torch.Tensor, pool: int) -> torch.Tensor:
    """``F.max_pool2d(., pool)`` over the last two axes of ``[..., H, W]``."""
    if pool == 1:
        return o
    flat = o if o.dim() <= 4 else o.reshape(-1, *o.shape[-3:])
    y = torch.nn.functional.max_pool2d(flat, pool)
    return y.view(*o.shape[:-2], *y.shape[-2:])


def lif_sequence(i: torch.Tensor, p: LIFParams, hybrid_beta: float | None = None, *,
                 steps: int | None = None, pool: int = 1,
                 use_kernel: bool | None = None) -> torch.Tensor:
    """Spikes ``[T, ...]`` for input currents ``i`` ``[T, ...]`` from a zero state (fused path).

    ``steps``: ``i`` is one static current ``[...]`` applied at each of
    ``steps`` steps (as ``i.expand(steps, ...)``; its gradient is the sum over
    t).  ``pool > 1``: the output max-pooled over its last two axes, exactly
    as ``F.max_pool2d(o, pool)`` (gradient to each window's first maximum).
    ``use_kernel``: the C++ kernel (``True``, an error when it cannot be
    used), the PyTorch path (``False``), or the kernel where it is available
    and applies (``None``).
    """
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer, not {steps!r}")
    if not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be a positive integer, not {pool!r}")
    if use_kernel is None:
        use_kernel = _kernel_applies(i, p) and kernel()
    elif use_kernel:
        if not _kernel_applies(i, p):
            raise ValueError("the LIF kernel takes float32/float64 CPU tensors and a known surrogate")
        if not kernel():
            raise RuntimeError("the LIF kernel is unavailable (see the warning)")
    if use_kernel:
        return _LIFKernel.apply(i, p, hybrid_beta, steps or 0, pool)
    if steps is not None:
        i = i.expand(steps, *i.shape)
    return max_pool(_LIFSequence.apply(i, p, hybrid_beta), pool)


def lif_sequence_stepwise(i: torch.Tensor, p: LIFParams, hybrid_beta: float | None = None, *,
                          steps: int | None = None, pool: int = 1) -> torch.Tensor:
    """Reference for :func:`lif_sequence`: :func:`lif_step` in a Python loop."""
    if steps is not None:
        i = i.expand(steps, *i.shape)
    if pool > 1:
        return max_pool(lif_sequence_stepwise(i, p, hybrid_beta), pool)
    state = lif_init(i[0])
    out = []
    for t in range(i.shape[0]):
        o, state = lif_step(i[t], state, p, hybrid_beta)
        out.append(o)
    return torch.stack(out)


# --------------------------------------------------------------------------- STEB / CAB


def steb_thresholds(T: int, theta: float, law: str = "pow2", tau: float = 2.0) -> list[float]:
    """``Vth[t]``: ``theta / 2**t`` (``pow2``: hardware shifts) or
    ``theta * exp(-t / tau)`` (``exp``: float only, not hardware-mappable)."""
    if law == "pow2":
        return [theta / (1 << t) for t in range(T)]
    if law == "exp":
        return [theta * math.exp(-t / tau) for t in range(T)]
    raise ValueError(f"threshold law must be 'pow2' or 'exp', not {law!r}")


def steb_encode(x: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """IF neuron with ``u[0] = x``, no further input, reset by subtraction:
    spikes ``[T, *x.shape]``."""
    u = x.clone()
    out = []
    for vth in thresholds:
        s = (u >= vth).to(x.dtype)
        u = u - vth * s
        out.append(s)
    return torch.stack(out)


def cab(currents: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """Current accumulator block: ``sum_t Vth[t] * I[t]`` over the first axis."""
    w = torch.tensor(thresholds, dtype=currents.dtype, device=currents.device)
    return torch.tensordot(w, currents, dims=([0], [0]))


def stcb_quantize(x: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """``CAB(STEB(x))`` (what the next layer sees) with the equivalent gradient
    of a ReLU: forward is the STEB's clamped, quantised value, backward is
    ``1[x > 0]``."""
    with torch.no_grad():
        q = cab(steb_encode(x, thresholds), thresholds)
    r = torch.relu(x)
    return r + (q - r).detach()


# --------------------------------------------------------------------------- modules


class LIF(nn.Module):
    """Multi-step LIF/IF layer: currents ``[T, ...]`` -> spikes ``[T, ...]``.

    Holds only its frozen :class:`NeuronSpec`; no state survives a call.
    """

    def __init__(self, spec: NeuronSpec, fused: bool = True):
        super().__init__()
        self.spec = spec
        self.params = LIFParams.from_spec(spec)
        self.fused = fused

    def forward(self, i: torch.Tensor, hybrid_beta: float | None = None, *,
                steps: int | None = None, pool: int = 1) -> torch.Tensor:
        """``steps``/``pool``: see :func:`lif_sequence` (static input, fused max pool)."""
        fn = lif_sequence if self.fused else lif_sequence_stepwise
        return fn(i, self.params, hybrid_beta, steps=steps, pool=pool)

    def extra_repr(self) -> str:
        p = self.params
        return (f"decay={p.decay}, theta={p.theta}, reset={p.reset.value}, surrogate={p.surrogate}"
                + (", strict" if p.strict else ""))


class STCB(nn.Module):
    """STCB neuron: accumulated current ``[B, ...]`` -> decoded STEB spike-train
    value ``[B, ...]`` (see :func:`stcb_quantize`)."""

    def __init__(self, spec: NeuronSpec, timesteps: int):
        super().__init__()
        self.spec = spec
        self.thresholds = steb_thresholds(timesteps, spec.theta, spec.threshold_law, spec.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stcb_quantize(x, self.thresholds)
