"""Specs: validation messages and the JSON round trip."""

import pytest

from spikeforge.config import LayerKind, LayerSpec, NetworkSpec, NeuronKind, NeuronSpec, SpecError
from spikeforge.sw.models import MODELS, spec_for


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_spec_round_trips_through_json(name):
    import json
    spec = spec_for(name)
    again = NetworkSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_if_forces_decay_one_and_stcb_forces_subtract():
    assert NeuronSpec(NeuronKind.IF, decay=0.5).decay == 1.0
    assert NeuronSpec(NeuronKind.STCB, reset="zero").reset.value == "subtract"


@pytest.mark.parametrize("kwargs,message", [
    (dict(decay=1.5), r"^neuron.decay must be in \(0, 1\], not 1.5$"),
    (dict(theta=0), r"^neuron.theta must be a finite positive number, not 0$"),
    (dict(theta=float("inf")), r"^neuron.theta must be a finite positive number, not inf$"),
    (dict(reset="soft"), r"^neuron.reset: 'soft' is not one of 'zero', 'subtract', 'none'$"),
    (dict(surrogate="erf"), r"^neuron.surrogate must be one of gaussian, rect, fast_sigmoid, bpsa"),
    (dict(theta="0.5"), r"^neuron.theta has the wrong type: str"),
    (dict(strict="yes"), r"^neuron.strict has the wrong type: str"),
    (dict(strict=1), r"^neuron.strict has the wrong type: int"),
    (dict(kind="stcb", strict=True), r"^neuron.strict is for LIF / IF neurons"),
])
def test_neuron_spec_errors(kwargs, message):
    with pytest.raises(SpecError, match=message):
        NeuronSpec(**kwargs)


def test_layer_chain_mismatch_names_the_layer():
    l0 = LayerSpec(LayerKind.CONV, 1, 4, (8, 8), kernel=3, padding=1, pool=2)
    l1 = LayerSpec(LayerKind.FC, 4 * 8 * 8, 10, (1, 1))
    with pytest.raises(SpecError, match=r"^layer 1: fc expects 256 inputs, previous layer gives 4x4x4 = 64$"):
        NetworkSpec("x", (1, 8, 8), 4, (l0, l1), classes=10)


def test_pool_must_divide_and_kernel_must_fit():
    with pytest.raises(SpecError, match="does not divide"):
        LayerSpec(LayerKind.CONV, 1, 4, (7, 7), kernel=3, padding=1, pool=2)
    with pytest.raises(SpecError, match="padding must be in"):
        LayerSpec(LayerKind.CONV, 1, 4, (7, 7), kernel=3, padding=3)


def test_residual_layers_close_a_block_that_keeps_its_shape():
    conv = lambda c_in, c, size, **kw: LayerSpec(LayerKind.CONV, c_in, c, size, kernel=3,
                                                 padding=1, **kw)
    fc = lambda n: LayerSpec(LayerKind.FC, n, 2, (1, 1))
    ok = NetworkSpec("r", (1, 8, 8), 4, (conv(1, 4, (8, 8)), conv(4, 4, (8, 8)),
                                         conv(4, 4, (8, 8), residual=True, pool=2), fc(64)), 2)
    assert [l.synapse_channels for l in ok.layers] == [1, 4, 8, 64]
    assert "residual" not in ok.to_dict()["layers"][1]     # written only where set
    assert NetworkSpec.from_dict(ok.to_dict()) == ok
    # two residual layers in a row: the second's block input is the first's input
    NetworkSpec("r", (1, 8, 8), 4, (conv(1, 4, (8, 8)), conv(4, 4, (8, 8)),
                                    conv(4, 4, (8, 8), residual=True),
                                    conv(4, 4, (8, 8), residual=True), fc(256)), 2)
    with pytest.raises(SpecError, match=r"^layer 1: a residual layer follows a conv layer "
                                        r"\(not layer 0\)"):
        NetworkSpec("r", (4, 8, 8), 4, (conv(4, 4, (8, 8)), conv(4, 4, (8, 8), residual=True),
                                        fc(256)), 2)
    with pytest.raises(SpecError, match=r"^layer 2: a residual layer .* unpooled"):
        NetworkSpec("r", (1, 8, 8), 4, (conv(1, 4, (8, 8)), conv(4, 4, (8, 8), pool=2),
                                        conv(4, 4, (4, 4), residual=True), fc(64)), 2)
    with pytest.raises(SpecError, match="a residual layer is a conv that keeps its channels"):
        conv(4, 8, (8, 8), residual=True)
    with pytest.raises(SpecError, match="a residual layer is a conv"):
        LayerSpec(LayerKind.FC, 4, 4, (1, 1), residual=True)
    with pytest.raises(SpecError, match="STCB blocks take no skips"):
        conv(4, 4, (8, 8), residual=True, neuron=NeuronSpec(NeuronKind.STCB))
    with pytest.raises(SpecError, match="'resblock' is gone: a residual block is two conv"):
        NetworkSpec.from_dict({**ok.to_dict(), "layers": [{**ok.to_dict()["layers"][1],
                                                           "kind": "resblock"}]})


def test_from_dict_rejects_unknown_and_missing_fields():
    d = spec_for("convsnn").to_dict()
    with pytest.raises(SpecError, match=r"^layers\[0\]: unknown field\(s\) strid$"):
        NetworkSpec.from_dict({**d, "layers": [{**d["layers"][0], "strid": 2}] + d["layers"][1:]})
    # a key with a line break (here NEL, U+0085) is shown escaped: the error stays one line
    with pytest.raises(SpecError, match=r"^network: unknown field\(s\) '\\x850'$"):
        NetworkSpec.from_dict({**d, "\x850": None})
    d2 = dict(d)
    del d2["classes"]
    with pytest.raises(SpecError, match="classes"):
        NetworkSpec.from_dict(d2)
    with pytest.raises(SpecError, match="batchnorm has the wrong type"):
        NetworkSpec.from_dict({**d, "layers": [{**d["layers"][0], "batchnorm": [1]}] + d["layers"][1:]})


def test_strict_comparison_round_trips_and_old_specs_default_to_inclusive():
    import dataclasses
    import json
    spec = spec_for("convsnn")
    assert all(not l.neuron.strict for l in spec.layers)
    layers = list(spec.layers)
    layers[1] = dataclasses.replace(layers[1], neuron=dataclasses.replace(layers[1].neuron,
                                                                          strict=True))
    strict = dataclasses.replace(spec, layers=tuple(layers))
    d = json.loads(json.dumps(strict.to_dict()))
    flags = [l["neuron"]["strict"] for l in d["layers"]]
    assert flags == [False, True] + [False] * (len(layers) - 2)
    again = NetworkSpec.from_dict(d)
    assert again == strict and again != spec
    # a spec written before the field existed loads with u >= theta
    for l in d["layers"]:
        del l["neuron"]["strict"]
    assert NetworkSpec.from_dict(d) == spec
    # the convsnn builder takes it (train --set strict=true)
    assert all(l.neuron.strict for l in spec_for("convsnn", strict=True).layers)


def test_convsnn_voting_groups():
    """``--set voting=V``: V output neurons a class, the class's score their
    summed counts; MSE's target 1 is every neuron of the group at every step."""
    from spikeforge.sw.train import _score_scale
    spec = spec_for("convsnn", channels=(4,), hidden=8, timesteps=3, voting=4)
    assert spec.voting == 4 and spec.classes == 10 and spec.layers[-1].out_channels == 40
    assert _score_scale(spec, stcb=False) == 12.0
    assert _score_scale(spec_for("convsnn", timesteps=3), stcb=False) == 3.0
