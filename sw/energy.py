"""Energy estimate from operation counts and measured firing rates.

Both papers' formulas, 45 nm figures (Horowitz, ISSCC 2014):

* BPSTA Eq. 11: ``E_ANN = FLOPs_ANN * E_MAC``, ``E_SNN = FLOPs_SNN * E_AC * T`` with
  ``FLOPs_SNN = rate * FLOPs_ANN`` (rate: mean spikes per input neuron per step).
* STCSNN Eq. 10-11: ``E_SNN = sum_l (AC_l * E_AC + MAC_l * E_MAC)``; layers fed
  by analog values (the first layer under direct encoding) and CAB
  accumulations count as MACs.

``E_AC = 0.1 pJ`` (int32 add), ``E_MAC = 3.2 pJ`` (int32 mult + add) or
``4.6 pJ`` (fp32: 3.7 + 0.9).  ``FLOPs_ANN`` of a layer is
``k^2 * H_out * W_out * C_in * C_out`` (fc: ``in * out``).
"""

from __future__ import annotations

from spikeforge.config import NetworkSpec, NeuronKind

E_AC_PJ = 0.1
E_MAC_INT_PJ = 3.2
E_MAC_FP32_PJ = 4.6


def layer_macs(spec: NetworkSpec) -> list[int]:
    """Dense multiply-accumulates of each layer for one time step (a
    residual layer's skip not included: :func:`skip_adds`)."""
    out = []
    for l in spec.layers:
        h, w = l.conv_size
        out.append(l.fan_in * l.out_channels * h * w)
    return out


def skip_adds(spec: NetworkSpec) -> list[int]:
    """Adds of each layer's identity skip for one time step: one per neuron
    of a residual layer, driven by its block input (the previous layer's
    input), else 0."""
    return [l.out_channels * l.conv_size[0] * l.conv_size[1] if l.residual else 0
            for l in spec.layers]


def estimate(spec: NetworkSpec, input_rates: list[float]) -> dict:
    """Energy per inference in pJ.

    ``input_rates[l]`` is the mean spike rate (spikes per input neuron per time
    step) of layer ``l``'s input; ``None`` for an analog input.
    """
    T = spec.timesteps
    macs = layer_macs(spec)
    skips = skip_adds(spec)
    ann_flops = sum(macs) + sum(skips)
    ac = mac = 0.0
    for l, (layer, n, rate) in enumerate(zip(spec.layers, macs, input_rates)):
        if rate is None:
            mac += n * T
        else:
            ac += rate * n * T
        if skips[l]:    # the skip's adds at the block input's rate (l >= 2: a spike train)
            ac += input_rates[l - 1] * skips[l] * T
        if layer.neuron.kind is NeuronKind.STCB:
            mac += layer.neurons * T  # the CAB: one weighted accumulation per neuron and step
    snn = ac * E_AC_PJ + mac * E_MAC_INT_PJ
    return {
        "ann_macs": ann_flops,
        "snn_acs": ac,
        "snn_macs": mac,
        "e_ann_fp32_pj": ann_flops * E_MAC_FP32_PJ,
        "e_ann_int_pj": ann_flops * E_MAC_INT_PJ,
        "e_snn_pj": snn,
        "ratio_ann_fp32_over_snn": (ann_flops * E_MAC_FP32_PJ / snn) if snn else None,
        "constants_pj": {"ac": E_AC_PJ, "mac_int": E_MAC_INT_PJ, "mac_fp32": E_MAC_FP32_PJ},
    }
