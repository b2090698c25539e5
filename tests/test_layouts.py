"""The shared word layouts: host packing equals the gateware's view of the same layout."""

import doctest
import random

import pytest
from amaranth import *
from amaranth.lib import data

from spikeforge import layouts
from spikeforge.layouts import field_slices, neuron_layout, pack, unpack

NESTED = data.StructLayout({
    "flag": unsigned(1),
    "s": signed(5),
    "inner": data.StructLayout({"a": unsigned(3), "b": signed(2)}),
    "arr": data.ArrayLayout(signed(4), 3),
})


def _random_value(shape, rng):
    if isinstance(shape, data.ArrayLayout):
        return [_random_value(shape.elem_shape, rng) for _ in range(shape.length)]
    if isinstance(shape, data.Layout):
        return {name: _random_value(f.shape, rng) for name, f in shape}
    s = Shape.cast(shape)
    return rng.randrange(-(1 << (s.width - 1)), 1 << (s.width - 1)) if s.signed \
        else rng.randrange(1 << s.width)


def test_doc_examples():
    assert doctest.testmod(layouts).failed == 0


@pytest.mark.parametrize("seed", range(20))
def test_pack_equals_amaranth_const_and_round_trips(seed):
    rng = random.Random(seed)
    value = _random_value(NESTED, rng)
    word = pack(NESTED, value)
    assert word == NESTED.const(value).as_bits()  # Amaranth's own packing of the layout
    assert unpack(NESTED, word) == value
    assert layouts.from_bytes(NESTED, layouts.to_bytes(NESTED, value)) == value


def test_pack_refuses_what_does_not_fit_and_names_the_field():
    with pytest.raises(ValueError, match=r"^inner\.a: 8 does not fit unsigned\(3\)$"):
        pack(NESTED, {"inner": {"a": 8}})
    with pytest.raises(ValueError, match=r"^arr\.1: -9 does not fit signed\(4\)$"):
        pack(NESTED, {"arr": [0, -9, 0]})
    with pytest.raises(ValueError, match=r"^value: unknown field 'nope'$"):
        pack(NESTED, {"nope": 1})
    with pytest.raises(ValueError, match=r"^arr: expected 3 elements"):
        pack(NESTED, {"arr": [1, 2]})
    assert pack(NESTED, {}) == 0  # missing fields are zero


def test_neuron_word_is_what_the_engine_reads():
    from spikeforge.hw.params import CoreParams
    lay = neuron_layout(9, 14)
    assert field_slices(lay, "theta", "bias", "shift") == {
        "theta": (0, 9, True), "bias": (9, 14, True), "shift": (23, layouts.SHIFT_BITS, False)}
    # the core's neuron memory is as wide as the layout
    assert CoreParams.neuron_width.fget(type("P", (), {"state_bits": 9, "acc_bits": 14})()) \
        == lay.size


def test_neuron_words_pack_with_the_layout():
    from spikeforge.hw.randnet import random_network
    from spikeforge.image import neuron_words
    net = random_network(1)
    for il in net.layers:
        lay = neuron_layout(il.state_bits, il.acc_bits)
        for c, word in enumerate(neuron_words(il)):
            assert unpack(lay, word) == {"theta": int(il.theta[c]), "bias": int(il.bias[c]),
                                         "shift": int(il.shift[c])}
