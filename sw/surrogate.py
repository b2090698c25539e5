"""Surrogate gradients of the spike function ``o = H(u - theta)``.

The forward value is always the Heaviside step (``u >= theta``, or ``u >
theta`` for a strict neuron); only the derivative ``do/du`` used in the
backward pass differs (the same for both comparisons):

``gaussian``      exp(-(u-theta)^2 / (2 sigma^2)) / sqrt(2 pi sigma),
                  sigma = 1/6 -- normalised as the ConvSNN code does
                  (peak ~0.98), not by sigma*sqrt(2 pi).
``rect``          1/(2a) * [|u - theta| < a], a = 0.5.
``fast_sigmoid``  1 / (1 + k |u - theta|)^2, k = 25 (snnTorch's default slope).
``bpsa``          BPSTA's spatial adjustment: 1/u where the neuron spiked,
                  0 elsewhere (the authors' ``o = u*m / stopgrad(u)``).

``width`` overrides sigma, a or k.
"""

from __future__ import annotations

import math

import torch

SURROGATES = ("gaussian", "rect", "fast_sigmoid", "bpsa")
DEFAULT_WIDTH = {"gaussian": 1.0 / 6.0, "rect": 0.5, "fast_sigmoid": 25.0, "bpsa": 0.0}


def derivative(kind: str, u: torch.Tensor, theta: float, spikes: torch.Tensor,
               width: float | None = None) -> torch.Tensor:
    """``do/du`` of the surrogate ``kind`` at membrane potential ``u``."""
    w = DEFAULT_WIDTH[kind] if width is None else width
    x = u - theta
    if kind == "gaussian":
        return torch.exp(-(x * x) / (2.0 * w * w)) / math.sqrt(2.0 * math.pi * w)
    if kind == "rect":
        return (x.abs() < w).to(u.dtype) / (2.0 * w)
    if kind == "fast_sigmoid":
        return 1.0 / (1.0 + w * x.abs()) ** 2
    if kind == "bpsa":
        # spikes imply u >= theta > 0, so the division is safe where it is used
        return torch.where(spikes > 0, 1.0 / torch.where(spikes > 0, u, torch.ones_like(u)),
                           torch.zeros_like(u))
    raise ValueError(f"unknown surrogate {kind!r}; expected one of {', '.join(SURROGATES)}")


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, theta, kind, width, strict):
        o = ((u > theta) if strict else (u >= theta)).to(u.dtype)
        ctx.save_for_backward(u, o)
        ctx.theta, ctx.kind, ctx.width = theta, kind, width
        return o

    @staticmethod
    def backward(ctx, grad):
        u, o = ctx.saved_tensors
        return grad * derivative(ctx.kind, u, ctx.theta, o, ctx.width), None, None, None, None


def spike(u: torch.Tensor, theta: float, kind: str = "gaussian", width: float | None = None,
          strict: bool = False):
    """Heaviside spike ``o = [u >= theta]`` (``strict``: ``[u > theta]``) with
    the surrogate ``kind`` as gradient."""
    if kind not in SURROGATES:
        raise ValueError(f"unknown surrogate {kind!r}; expected one of {', '.join(SURROGATES)}")
    return _Spike.apply(u, theta, kind, width, strict)
