"""The weight image: round trips, a validating reader that only raises
ImageError (property tests on corrupted files), and the hardware memories."""

import functools
import json
import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikeforge.config import LayerKind, LayerSpec, NetworkSpec, NeuronKind, NeuronSpec, Reset
from spikeforge.image import (ARRAYS, ImageError, dumps, export_hex, loads, memories,
                              neuron_words, read_hex, read_image, weight_words, write_image)
from spikeforge.sw.golden import IntLayer, IntNetwork

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = ("decay_shifts", "weight_bits", "state_bits", "acc_bits", "input_bits")
META = {"scales": [0.5, 0.25], "P": 4, "name": "réseau", "nested": {"ok": True, "none": None}}


def t(*v):
    return torch.tensor(v, dtype=torch.int64)


@functools.cache
def handmade() -> IntNetwork:
    """conv 2->3 k2 (2-bit weights, per-channel thetas) then fc 12->4 (16-bit
    weights, a 42-bit bias, non-zero shifts)."""
    lif = NeuronSpec(NeuronKind.LIF, decay=0.75, theta=1.0, reset=Reset.SUBTRACT)
    conv = LayerSpec(LayerKind.CONV, 2, 3, (3, 3), kernel=2, neuron=lif)
    fc = LayerSpec(LayerKind.FC, 12, 4, (1, 1), neuron=NeuronSpec(NeuronKind.IF))
    spec = NetworkSpec("hand", (2, 3, 3), 4, (conv, fc), classes=2, voting=2)
    g = torch.Generator().manual_seed(1)
    w0 = torch.randint(-2, 2, (3, 2, 2, 2), generator=g)
    w1 = torch.randint(-(1 << 15), 1 << 15, (4, 12, 1, 1), generator=g)
    w1[0, 0, 0, 0], w1[1, 0, 0, 0] = -(1 << 15), (1 << 15) - 1
    l0 = IntLayer(conv, w0, t(-3, 0, 2), t(1, 5, 300), t(0, 3, 1), (2,), 2, 12, 14, 8)
    l1 = IntLayer(fc, w1, t(-(1 << 41), 7, -1, 0), t(9, 1, 2, 100), t(5, 0, 31, 2), (), 16,
                  24, 48, 1)
    return IntNetwork(spec, (l0, l1))


@functools.cache
def quantized() -> IntNetwork:
    from spikeforge.sw.models import build
    from spikeforge.sw.quantize import QuantConfig, quantize
    torch.manual_seed(0)
    model = build("convsnn", input_shape=(1, 8, 8), channels=(4,), hidden=16)
    return quantize(model, QuantConfig())


@functools.cache
def image() -> bytes:
    return dumps(handmade(), META)


def assert_same(a: IntNetwork, b: IntNetwork) -> None:
    assert a.spec == b.spec
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert x.spec == y.spec
        for name in ARRAYS:
            u, v = getattr(x, name), getattr(y, name)
            assert u.dtype == v.dtype == torch.int64 and torch.equal(u, v), name
        for f in FIELDS:
            assert getattr(x, f) == getattr(y, f), f


def split(data: bytes) -> tuple[dict, bytearray]:
    mlen = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[16:16 + mlen]), bytearray(data[16 + mlen:-4])


def sign(manifest, blob, version=1, flags=0) -> bytes:
    """An image with a correct checksum around any manifest (dict or raw bytes)."""
    text = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    body = struct.pack("<8sHHI", b"SFIMG\x00\r\n", version, flags, len(text)) + text + bytes(blob)
    return body + struct.pack("<I", zlib.crc32(body))


def load_or_none(data: bytes):
    """``loads`` that lets only ImageError through (as None)."""
    try:
        return loads(data)
    except ImageError:
        return None


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("make", [handmade, quantized])
def test_round_trip_file(tmp_path, make):
    net = make()
    path = tmp_path / "net.sfimg"
    write_image(path, net, META)
    back, meta = read_image(path)
    assert_same(net, back)
    assert meta == META
    assert list(tmp_path.iterdir()) == [path]


def test_layout_and_declared_widths():
    data = image()
    magic, version, flags, mlen = struct.unpack_from("<8sHHI", data)
    assert (magic, version, flags) == (b"SFIMG\x00\r\n", 1, 0)
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    assert (16 + mlen) % 8 == 0
    m, blob = split(data)
    assert list(m) == ["format", "spec", "layers", "blob_size", "meta"]
    assert m["blob_size"] == len(blob)
    a0, a1 = m["layers"][0]["arrays"], m["layers"][1]["arrays"]
    assert (a0["weight"]["bits"], a0["weight"]["container"]) == (2, "i1")
    assert (a1["weight"]["bits"], a1["weight"]["container"]) == (16, "i2")
    assert (a1["bias"]["bits"], a1["bias"]["container"]) == (42, "i8")
    assert (a0["theta"]["bits"], a0["theta"]["container"]) == (10, "i2")
    assert (a0["bias"]["bits"], a1["shift"]["bits"]) == (3, 6)
    assert all(a["offset"] % 8 == 0 for layer in m["layers"] for a in layer["arrays"].values())


def test_meta_defaults_and_must_be_json():
    assert loads(dumps(handmade()))[1] == {}
    with pytest.raises(ImageError, match="meta is not JSON-serialisable"):
        dumps(handmade(), {"x": object()})
    with pytest.raises(ImageError, match="meta is not JSON-serialisable"):
        dumps(handmade(), {"x": float("nan")})
    with pytest.raises(ImageError, match="meta must be a dict"):
        dumps(handmade(), [1])


# --------------------------------------------------------------------------- corrupted bytes


@FAST
@given(st.data())
def test_any_single_byte_change_is_caught(data):
    img = image()
    i = data.draw(st.integers(0, len(img) - 1))
    b = data.draw(st.integers(0, 255).filter(lambda v: v != img[i]))
    with pytest.raises(ImageError):
        loads(img[:i] + bytes([b]) + img[i + 1:])


@FAST
@given(st.data())
def test_any_truncation_is_caught(data):
    img = image()
    n = data.draw(st.integers(0, len(img) - 1))
    with pytest.raises(ImageError):
        loads(img[:n])


@FAST
@given(st.data())
def test_inserted_bytes_are_caught(data):
    img = image()
    i = data.draw(st.integers(0, len(img)))
    ins = data.draw(st.binary(min_size=1, max_size=16))
    got = load_or_none(img[:i] + ins + img[i:])
    assert got is None


@FAST
@given(st.binary(max_size=64))
def test_arbitrary_bytes(data):
    assert load_or_none(data) is None
    assert load_or_none(b"SFIMG\x00\r\n" + data) is None


@FAST
@given(st.data())
def test_resigned_blob_changes_only_raise_image_error(data):
    """Blob edits behind a valid checksum reach the value and contract checks."""
    m, blob = split(image())
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    got = load_or_none(sign(m, blob))
    if got is not None:
        assert got[0].spec == handmade().spec


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
                    | st.floats(allow_nan=False) | st.text(max_size=4),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                        max_size=3), max_leaves=6)


def paths(v, prefix=()):
    yield prefix
    if isinstance(v, dict):
        for k, x in v.items():
            yield from paths(x, prefix + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from paths(x, prefix + (i,))


@FAST
@given(st.data())
def test_resigned_manifest_changes_only_raise_image_error(data):
    """Replace, delete or add a field anywhere in the manifest, re-sign."""
    m, blob = split(image())
    path = data.draw(st.sampled_from([p for p in paths(m) if p]))
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if op == "replace" or isinstance(parent, list) and op == "delete":
        parent[path[-1]] = data.draw(JSON)
    elif op == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=6))] = data.draw(JSON)
    else:
        parent.append(data.draw(JSON))
    got = load_or_none(sign(m, blob))
    if got is not None:
        assert isinstance(got[0], IntNetwork)


# --------------------------------------------------------------------------- precise messages


def _set(*path_value):
    *path, value = path_value

    def f(m, blob):
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return f


def _del(*path):
    def f(m, blob):
        d = m
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return f


def _weight_out_of_width(m, blob):
    # layer 0 has 2-bit weights in i1 containers: 2 == 2**(W-1) does not fit
    blob[m["layers"][0]["arrays"]["weight"]["offset"]] = 2


def _bias_bits_too_small(m, blob):
    m["layers"][1]["arrays"]["bias"]["bits"] = 8


def _overlap(m, blob):
    a = m["layers"][0]["arrays"]
    a["shift"]["offset"] = a["bias"]["offset"]


def _negative_theta(m, blob):
    o = m["layers"][0]["arrays"]["theta"]["offset"]
    blob[o:o + 2] = struct.pack("<h", -4)


SEMANTIC = [
    (_set("extra", 1), r"^manifest: unknown field\(s\) extra$"),
    (_del("meta"), r"^manifest: missing field\(s\) meta$"),
    (_set("format", "other"), r"manifest.format is 'other'"),
    (_set("layers", 0, "x", 1), r"manifest.layers\[0\]: unknown field\(s\) x"),
    (_del("layers", 1, "acc_bits"), r"manifest.layers\[1\]: missing field\(s\) acc_bits"),
    (_set("layers", 0, "arrays", "weight", "x", 1),
     r"manifest.layers\[0\].arrays.weight: unknown field\(s\) x"),
    (_del("layers", 0, "arrays", "theta"), r"layers\[0\].arrays: missing field\(s\) theta"),
    (_set("spec", "foo", 1), r"manifest.spec: network: unknown field\(s\) foo"),
    (_set("spec", "layers", 0, "neuron", "foo", 1), r"layers\[0\].neuron: unknown field"),
    (_set("spec", "timesteps", 0), r"manifest.spec: timesteps must be an integer in 1..64"),
    (_set("spec", "layers", 0, "in_size", ["a", 3]), r"^manifest.spec: "),
    (_set("spec", 3), r"manifest.spec must be an object, not int"),
    (_set("meta", []), r"manifest.meta must be an object, not list"),
    (_set("layers", {}), r"manifest.layers must be a list of 2 layers"),
    (_del("layers", 1), r"manifest.layers must be a list of 2 layers .*, not 1"),
    (_set("blob_size", -1), r"manifest.blob_size = -1 is outside"),
    (_set("blob_size", "8"), r"manifest.blob_size must be an integer, not str"),
    (_set("layers", 0, "weight_bits", 8.0), r"layers\[0\].weight_bits must be an integer"),
    (_set("layers", 0, "state_bits", True), r"layers\[0\].state_bits must be an integer, not bool"),
    (_set("layers", 0, "decay_shifts", [0]), r"layers\[0\].decay_shifts\[0\] = 0 is outside 1..31"),
    (_set("layers", 0, "decay_shifts", 2), r"layers\[0\].decay_shifts must be a list"),
    (_set("layers", 0, "arrays", "weight", "shape", "3"), r"arrays.weight.shape must be a list"),
    (_set("layers", 0, "arrays", "weight", "shape", [2, 2, 2, 3]),
     r"layers\[0\].arrays.weight.shape \[2, 2, 2, 3\] does not match the spec's \[3, 2, 2, 2\]"),
    (_set("layers", 1, "arrays", "bias", "shape", [4, 1]), r"arrays.bias.shape .* does not match"),
    (_set("layers", 0, "arrays", "bias", "offset", 1 << 20),
     r"arrays.bias: bytes .* lie outside the blob"),
    (_set("layers", 0, "arrays", "bias", "offset", 12),
     r"arrays.bias.offset 12 is not a multiple of 8"),
    (_set("layers", 1, "arrays", "weight", "shape", [1 << 40, 1 << 40, 1, 1]),
     r"layers\[1\].arrays.weight: bytes \[48, 2\*\*81\+\) lie outside the blob of \d+$"),
    (_set("layers", 1, "arrays", "weight", "shape", [10 ** 30] * 8), r"lie outside the blob"),
    (_set("layers", 1, "arrays", "weight", "shape", [10 ** 4000] * 4),
     r"bytes \[48, 2\*\*53151\+\) lie"),
    (_set("layers", 1, "arrays", "weight", "container", "i1"),
     r"arrays.weight.container i1 is too small for 16 bits"),
    (_set("layers", 1, "arrays", "weight", "container", "u2"), r"container 'u2' is not one of"),
    (_set("layers", 1, "arrays", "weight", "container", ["i2"]), r"container \['i2'\] is not one"),
    (_set("layers", 1, "arrays", "weight", "bits", 8),
     r"layers\[1\].arrays.weight.bits is 8, expected 16"),
    (_set("layers", 1, "arrays", "shift", "bits", 7),
     r"layers\[1\].arrays.shift.bits is 7, expected 6"),
    (_set("layers", 1, "arrays", "shift", "bits", 65),
     r"arrays.shift.bits = 65 is outside \[2, 64\]"),
    (_weight_out_of_width, r"layers\[0\].arrays.weight: value outside its declared 2-bit"),
    (_bias_bits_too_small, r"layers\[1\].arrays.bias: value outside its declared 8-bit"),
    (_overlap, r"arrays layers\[0\].bias and layers\[0\].shift overlap"),
    (_negative_theta, r"manifest.layers\[0\]: thresholds must be positive"),
    # the integer contract's ranges and cross-field rules (issue 12)
    (_set("layers", 0, "state_bits", 33), r"layers\[0\].state_bits = 33 is outside 2..32"),
    (_set("layers", 1, "acc_bits", 60), r"layers\[1\].acc_bits = 60 is outside 2..52"),
    (_set("layers", 0, "acc_bits", 10), r"layers\[0\].acc_bits = 10 is below state_bits = 12"),
    (_set("layers", 0, "acc_bits", 13),
     r"layers\[0\].acc_bits = 13 cannot hold the worst-case accumulator range"),
    (_set("layers", 0, "state_bits", 9), r"layers\[0\].theta: value 300 is outside 1..255"),
    (_set("layers", 1, "acc_bits", 40), r"layers\[1\].bias: value -2199023255552 is outside"),
    (_set("layers", 0, "input_bits", 9), r"layers\[0\].input_bits = 9, expected 1..8"),
    (_set("layers", 0, "input_bits", 64), r"layers\[0\].input_bits = 64, expected 1..8"),
    (_set("layers", 1, "input_bits", 2), r"layers\[1\].input_bits = 2, expected 1 "),
    (_set("layers", 0, "decay_shifts", [1] * 9), r"layers\[0\].decay_shifts: 9 shifts, at most 8"),
    (_set("spec", "layers", 1, "neuron", "kind", "stcb"),
     r"layers\[1\]: stcb layer in a network whose layer 0 is lif: STCB and LIF/IF"),
    (_set("spec", "timesteps", 1 << 40), r"timesteps must be an integer in 1..64"),
    (_set("spec", "encoding", "rate"), r"spec.encoding 'rate' has no integer contract"),
]


@pytest.mark.parametrize("mutate,match", SEMANTIC)
def test_resigned_semantic_errors(mutate, match):
    m, blob = split(image())
    mutate(m, blob)
    with pytest.raises(ImageError, match=match):
        loads(sign(m, blob))


def test_blob_size_mismatch_and_header_errors():
    m, blob = split(image())
    img = image()
    cases = [
        (b"SFIMH" + img[5:], r"wrong magic"),
        (sign(m, blob, version=2), r"unsupported format version 2"),
        (sign(m, blob, flags=1), r"non-zero flags 0x0001"),
        (img[:10], r"truncated header: 10 of 16"),
        (img[:40], r"truncated manifest"),
        (img[:-10], r"truncated blob"),
        (img[:-2], r"truncated checksum: 2 of 4"),
        (img + b"\0", r"1 trailing byte\(s\) after the checksum"),
        (img[:-1] + bytes([img[-1] ^ 1]), r"checksum mismatch"),
        (sign({**m, "blob_size": m["blob_size"] + 8}, blob), r"truncated blob"),
        (sign(b"\xff\xfe", b""), r"manifest is not valid UTF-8 JSON"),
        (sign(b"[1, 2]", b""), r"manifest must be an object, not list"),
        (sign(b'{"meta": {}, "meta": {}}', b""), r"duplicate key\(s\) 'meta'"),
        (sign(b'{"meta": NaN}', b""), r"NaN is not JSON"),
        (sign(b"[" * 100_000, b""), r"manifest is not valid UTF-8 JSON"),
        ("not bytes", r"expected bytes, not str"),
    ]
    for data, match in cases:
        with pytest.raises(ImageError, match=match):
            loads(data)
    assert_same(loads(bytearray(img))[0], handmade())


def test_read_image_names_the_file(tmp_path):
    path = tmp_path / "bad.sfimg"
    path.write_bytes(image()[:-1])
    with pytest.raises(ImageError, match=rf"^{path}: truncated checksum"):
        read_image(path)
    with pytest.raises(ImageError, match=r"missing.sfimg: cannot read"):
        read_image(tmp_path / "missing.sfimg")


def test_writer_refuses_values_that_do_not_fit():
    net = handmade()
    l1 = net.layers[1]
    big = IntLayer(l1.spec, l1.weight, l1.bias, l1.theta, t(40, 0, 0, 0), (), 16, 24, 48, 1)
    with pytest.raises(ImageError, match=r"layers\[1\].shift: values outside 6 signed bits"):
        dumps(IntNetwork(net.spec, (net.layers[0], big)))
    with pytest.raises(ImageError, match="expected an IntNetwork"):
        dumps(net.spec)


# --------------------------------------------------------------------------- memories


def fc_layer(weight, bits, theta=None, bias=None, shift=None, state=8, acc=8):
    c_out, c_in = len(weight), len(weight[0])
    spec = LayerSpec(LayerKind.FC, c_in, c_out, (1, 1))
    ones = t(*[1] * c_out)
    return IntLayer(spec, torch.tensor(weight).view(c_out, c_in, 1, 1),
                    ones * 0 if bias is None else bias, ones if theta is None else theta,
                    ones * 0 if shift is None else shift, (1,), bits, state, acc, 1)


def test_weight_words_by_hand():
    # C_out = 3, P = 2 -> G = 2; W = 4; address c_in * G + g; lane j = bits [4j, 4j+4)
    layer = fc_layer([[1, -2], [3, -8], [7, 0]], 4)
    assert weight_words(layer, 2) == [0x31, 0x07, 0x8E, 0x00]
    # P = 1: one lane, address c_in * 3 + c_out
    assert weight_words(layer, 1) == [0x1, 0x3, 0x7, 0xE, 0x8, 0x0]
    # P = 4 > C_out: one group, lane 3 zero
    assert weight_words(layer, 4) == [0x0731, 0x008E]


def test_weight_words_kernel_order():
    # conv 1 -> 1, k = 2: address (dy * 2 + dx) * G + g; P = 3 pads two zero lanes
    spec = LayerSpec(LayerKind.CONV, 1, 1, (2, 2), kernel=2)
    w = t(5, -1, -128, 127).view(1, 1, 2, 2)
    layer = IntLayer(spec, w, t(0), t(1), t(0), (1,), 8, 8, 8, 1)
    assert weight_words(layer, 1) == [0x05, 0xFF, 0x80, 0x7F]
    assert weight_words(layer, 3) == [0x05, 0xFF, 0x80, 0x7F]
    with pytest.raises(ImageError, match="lane count P must be a positive integer"):
        weight_words(layer, 0)


def test_weight_words_tap_outermost():
    # conv 2 -> 1, k = 2: address (dy * 2 + dx) * C_in + c_in (the tap outermost,
    # so a synapse unit walking some taps holds a run of words); Q = 2: one word
    # per tap, channel i at bits [8i, 8i + 8)
    spec = LayerSpec(LayerKind.CONV, 2, 1, (2, 2), kernel=2)
    w = t(1, 2, 3, 4, 5, 6, 7, 8).view(1, 2, 2, 2)   # w[0, c, dy, dx]
    layer = IntLayer(spec, w, t(0), t(1), t(0), (1,), 8, 8, 8, 1)
    assert weight_words(layer, 1) == [1, 5, 2, 6, 3, 7, 4, 8]
    assert weight_words(layer, 1, 2) == [0x0501, 0x0602, 0x0703, 0x0804]


def test_neuron_words_by_hand():
    # S = 4, A = 5: theta bits [0, 4), bias bits [4, 9), shift bits [9, 15)
    layer = fc_layer([[1], [1]], 2, theta=t(3, 7), bias=t(-1, 5), shift=t(2, 0), state=4, acc=5)
    assert neuron_words(layer) == [3 | 0b11111 << 4 | 2 << 9, 7 | 5 << 4]
    too_big = fc_layer([[1]], 2, theta=t(8), state=4, acc=5)
    with pytest.raises(ImageError, match="theta does not fit 4 signed bits"):
        neuron_words(too_big)


def test_memories_widths_and_depths():
    net = handmade()
    mems = memories(net, [2, 3])
    assert list(mems) == ["L0_weights", "L0_neurons", "L1_weights", "L1_neurons"]
    assert mems["L0_weights"][0] == 2 * 2 and len(mems["L0_weights"][1]) == 2 * 2 * 2 * 2
    assert mems["L1_weights"][0] == 3 * 16 and len(mems["L1_weights"][1]) == 12 * 2
    assert mems["L0_neurons"][0] == 12 + 14 + 6 and len(mems["L0_neurons"][1]) == 3
    assert mems["L1_neurons"][0] == 24 + 48 + 6 and len(mems["L1_neurons"][1]) == 4
    for width, words in mems.values():
        assert all(0 <= w < 1 << width for w in words)
    # lane j of word (c_in, g) of L1 is w[g*3 + j, c_in]
    w1 = net.layers[1].weight
    word = mems["L1_weights"][1][5 * 2 + 1]
    lane = lambda j: (word >> 16 * j & 0xFFFF) - ((word >> 16 * j & 0x8000) << 1)
    assert [lane(0), lane(1), lane(2)] == [int(w1[3, 5, 0, 0]), 0, 0]
    with pytest.raises(ImageError, match="1 lane counts for 2 layers"):
        memories(net, [2])


def test_memories_fit_amaranth():
    from amaranth.hdl import unsigned
    from amaranth.lib.memory import Memory
    for width, words in memories(quantized(), 4).values():
        Memory(shape=unsigned(width), depth=len(words), init=words)


def test_export_hex_round_trip(tmp_path):
    net = quantized()
    paths = export_hex(net, tmp_path / "mem", 3)
    mems = memories(net, 3)
    index = json.loads((tmp_path / "mem" / "memories.json").read_text())
    assert paths[-1].name == "memories.json" and len(paths) == len(mems) + 1
    assert index["lanes"] == [3] * len(net.layers)
    assert [e["name"] for e in index["memories"]] == list(mems)
    for entry, path in zip(index["memories"], paths):
        width, words = mems[entry["name"]]
        assert (entry["width"], entry["depth"], entry["file"]) == (width, len(words), path.name)
        lines = path.read_text().splitlines()
        assert all(len(line) == -(-width // 4) for line in lines)
        assert read_hex(path, width) == words


def test_read_hex_errors(tmp_path):
    p = tmp_path / "m.hex"
    p.write_text("0a\n1g\n")
    with pytest.raises(ImageError, match=r"m.hex:2: bad hex digit 'g'"):
        read_hex(p, 8)
    p.write_text("0a\n\n")
    with pytest.raises(ImageError, match=r"m.hex:2: empty line"):
        read_hex(p, 8)
    p.write_text("a\n1f\n")
    with pytest.raises(ImageError, match=r"m.hex:2: word 1f is wider than 4 bits"):
        read_hex(p, 4)
    p.write_text("f\n100\n")
    with pytest.raises(ImageError, match=r"m.hex:2: word 100 is wider than 6 bits"):
        read_hex(p, 6)
    p.write_bytes(b"0a\n\xff\n")
    with pytest.raises(ImageError, match=r"m.hex: not an ASCII hex file"):
        read_hex(p, 8)
    with pytest.raises(ImageError, match=r"nope.hex: cannot read"):
        read_hex(tmp_path / "nope.hex", 8)
    p.write_text("3f\n00\n")
    assert read_hex(p, 6) == [0x3F, 0]
