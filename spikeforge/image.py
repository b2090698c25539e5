"""The versioned weight image (``.sfimg``) and the hardware memory export.

A weight image holds one :class:`~spikeforge.sw.golden.IntNetwork` plus free
metadata as a JSON manifest and packed integers: no pickle, no code.

File layout (all integers little-endian)
----------------------------------------

==========  ======  =========================================================
offset      size    content
==========  ======  =========================================================
0           8       magic ``b"SFIMG\\x00\\r\\n"``
8           2       u16 format version, 1
10          2       u16 flags, 0
12          4       u32 manifest length ``M``
16          ``M``   manifest, UTF-8 JSON (the writer pads it with spaces so
                    the blob starts at a file offset that is a multiple of 8)
16+M        ``B``   data blob, ``B = manifest["blob_size"]``
16+M+B      4       u32 CRC-32 (:func:`zlib.crc32`) of bytes ``[0, 16+M+B)``
==========  ======  =========================================================

Nothing may follow the checksum.  The manifest is a JSON object with exactly
the keys ``format`` (``"spikeforge-weight-image"``), ``spec``
(:meth:`~spikeforge.config.NetworkSpec.to_dict`), ``layers``, ``blob_size``
and ``meta`` (any JSON object of the caller's: scales, metrics, lane count).
Each entry of ``layers`` has exactly ``decay_shifts``, ``weight_bits``,
``state_bits``, ``acc_bits``, ``input_bits`` and ``arrays``; ``arrays`` maps
each of ``weight``, ``bias``, ``theta``, ``shift`` to ``{"offset", "shape",
"bits", "container"}``: ``prod(shape)`` row-major integers of the
little-endian signed type ``container`` (``"i1"``, ``"i2"``, ``"i4"``,
``"i8"``) at byte ``offset`` of the blob (a multiple of 8), every value within
``bits`` signed bits.  ``bits`` is ``weight_bits`` for weights, 6 for shifts
and, for bias and theta, the fewest signed bits (at least 2) holding the
values.  Arrays lie inside the blob and do not overlap.  Unknown, missing,
duplicated or mistyped keys at any level (``meta`` aside) are errors; every
defect is reported as :class:`ImageError`.

Hardware memories
-----------------
For a lane count ``P`` (output channels computed in parallel), layer ``n``
(``C_out`` outputs, ``C_in`` inputs, kernel ``k``; fc layers have ``k = 1``
and ``c_in`` runs over the flattened inputs in (channel, row, column) order)
has ``G = ceil(C_out / P)`` channel groups and two read-only memories:

``L{n}_weights``: width ``P * W`` (``W = weight_bits``), depth
``k * k * C_in * G``.  Address ``((dy * k + dx) * C_in + c_in) * G + g`` (the
kernel tap outermost: a synapse unit that walks some of the taps holds those
words only) holds in lane ``j`` (bits ``[j*W, (j+1)*W)``, two's complement)
the weight ``w[g*P + j, c_in, dy, dx]``; lanes past ``C_out`` are 0.  A layer
that takes word events of ``Q`` input channels (:func:`input_lanes`; ``Q = 1``
above) has ``G_in = ceil(C_in / Q)`` input groups, width ``Q * P * W`` and
depth ``k * k * G_in * G``: address ``((dy * k + dx) * G_in + gi) * G + g``
holds at bits ``[(i*P + j)*W, ...)`` the weight ``w[g*P + j, gi*Q + i, dy, dx]``.

``L{n}_neurons``: width ``S + A + 6`` (``S = state_bits``, ``A = acc_bits``),
depth ``C_out``.  Word ``c`` holds ``theta[c]`` in bits ``[0, S)`` and
``bias[c]`` in bits ``[S, S+A)`` (two's complement), ``shift[c]`` in bits
``[S+A, S+A+6)`` (unsigned).

:func:`export_hex` writes each memory to ``{name}.hex`` for ``$readmemh``: one
word a line, ``ceil(width / 4)`` lower-case hex digits, no address markers;
and ``memories.json``: ``{"lanes": [P per layer], "fifo_depth": D,
"words": [Q per layer], "memories": [{"name", "width", "depth", "file"},
...]}`` (``fifo_depth`` and ``words`` when the plan gave them; ``words``,
the input channels of each layer's events, is not about memory words).
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikeforge.config import NetworkSpec, NeuronKind
from spikeforge.errors import SpikeforgeError, shown
from spikeforge.layouts import SHIFT_BITS, neuron_layout
from spikeforge.sw.golden import ContractError, IntLayer, IntNetwork, signed_bits

MAGIC = b"SFIMG\x00\r\n"
VERSION = 1
FORMAT = "spikeforge-weight-image"
HEADER = struct.Struct("<8sHHI")
CRC = struct.Struct("<I")
CONTAINERS = {"i1": 8, "i2": 16, "i4": 32, "i8": 64}
ARRAYS = ("weight", "bias", "theta", "shift")
TOP_KEYS = ("format", "spec", "layers", "blob_size", "meta")
LAYER_KEYS = ("decay_shifts", "weight_bits", "state_bits", "acc_bits", "input_bits", "arrays")
ARRAY_KEYS = ("offset", "shape", "bits", "container")
#: Largest weight image read (bpsta-small at 16-bit weights is ~105 MB).
MAX_IMAGE_BYTES = 256 << 20


class ImageError(SpikeforgeError, ValueError):
    """A weight image (or hex memory file) that is malformed or cannot be written,
    with the file, field, layer or array named."""


# --------------------------------------------------------------------------- helpers


def _fits(a: np.ndarray, bits: int) -> bool:
    return a.size == 0 or (-(1 << (bits - 1)) <= int(a.min()) and int(a.max()) < 1 << (bits - 1))


def _container(bits: int) -> str:
    return next(c for c, b in CONTAINERS.items() if b >= bits)


def _obj(v: Any, where: str, keys: tuple[str, ...]) -> dict:
    if not isinstance(v, dict):
        raise ImageError(f"{where} must be an object, not {type(v).__name__}")
    missing = [k for k in keys if k not in v]
    unknown = sorted(set(v) - set(keys))
    if missing or unknown:
        raise ImageError(f"{where}: " + "; ".join(
            [f"missing field(s) {', '.join(missing)}"] * bool(missing)
            + [f"unknown field(s) {', '.join(map(shown, unknown))}"] * bool(unknown)))
    return v


def _int(v: Any, where: str, lo: int = 0, hi: int | None = None) -> int:
    if type(v) is not int:
        raise ImageError(f"{where} must be an integer, not {type(v).__name__}")
    if v < lo or hi is not None and v > hi:
        raise ImageError(f"{where} = {v} is outside [{lo}, {'inf' if hi is None else hi}]")
    return v


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        dup = sorted({k for k, _ in pairs if sum(1 for j, _ in pairs if j == k) > 1})
        raise ValueError(f"duplicate key(s) {', '.join(map(repr, dup))}")
    return d


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# --------------------------------------------------------------------------- writing


def dumps(net: IntNetwork, meta: dict | None = None) -> bytes:
    """The image of ``net`` with metadata ``meta`` (a JSON-serialisable dict;
    tuples come back as lists) as bytes."""
    if not isinstance(net, IntNetwork):
        raise ImageError(f"expected an IntNetwork, not {type(net).__name__}")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ImageError(f"meta must be a dict, not {type(meta).__name__}")
    blob, layers = bytearray(), []
    for n, il in enumerate(net.layers):
        arrays = {}
        for name in ARRAYS:
            a = getattr(il, name).detach().cpu().to(torch.int64).numpy()
            if name == "weight":
                bits = il.weight_bits
            elif name == "shift":
                bits = SHIFT_BITS
            else:
                bits = max(2, signed_bits(int(a.min()), int(a.max()))) if a.size else 2
            if not _fits(a, bits):
                raise ImageError(f"layers[{n}].{name}: values outside {bits} signed bits")
            blob += bytes(-len(blob) % 8)
            arrays[name] = {"offset": len(blob), "shape": list(a.shape), "bits": bits,
                            "container": _container(bits)}
            blob += a.astype("<" + arrays[name]["container"]).tobytes()
        layers.append({"decay_shifts": list(il.decay_shifts), "weight_bits": il.weight_bits,
                       "state_bits": il.state_bits, "acc_bits": il.acc_bits,
                       "input_bits": il.input_bits, "arrays": arrays})
    manifest = {"format": FORMAT, "spec": net.spec.to_dict(), "layers": layers,
                "blob_size": len(blob), "meta": meta}
    try:
        text = json.dumps(manifest, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ImageError(f"meta is not JSON-serialisable: {e}") from None
    text += b" " * (-(HEADER.size + len(text)) % 8)
    body = HEADER.pack(MAGIC, VERSION, 0, len(text)) + text + bytes(blob)
    return body + CRC.pack(zlib.crc32(body))


def write_image(path: str | os.PathLike, net: IntNetwork, meta: dict | None = None) -> None:
    """Write ``net`` and ``meta`` to ``path`` (by convention ``*.sfimg``), atomically."""
    data = dumps(net, meta)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- reading


def loads(data: bytes) -> tuple[IntNetwork, dict]:
    """Validate an image and return ``(network, meta)``; any defect raises
    :class:`ImageError` and nothing else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER.size:
        raise ImageError(f"truncated header: {len(data)} of {HEADER.size} bytes")
    magic, version, flags, mlen = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ImageError(f"wrong magic {magic!r}: not a spikeforge weight image")
    if version != VERSION:
        raise ImageError(f"unsupported format version {version} (this reader: {VERSION})")
    if flags:
        raise ImageError(f"non-zero flags {flags:#06x}")
    mend = HEADER.size + mlen
    if len(data) < mend:
        raise ImageError(f"truncated manifest: {len(data) - HEADER.size} of {mlen} bytes")
    try:
        manifest = json.loads(data[HEADER.size:mend].decode("utf-8"),
                              object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError included
        raise ImageError(f"manifest is not valid UTF-8 JSON: {e}") from None
    _obj(manifest, "manifest", TOP_KEYS)
    end = mend + _int(manifest["blob_size"], "manifest.blob_size")
    if len(data) < end:
        raise ImageError(f"truncated blob: {len(data) - mend} of {end - mend} bytes")
    if len(data) < end + CRC.size:
        raise ImageError(f"truncated checksum: {len(data) - end} of {CRC.size} bytes")
    if len(data) > end + CRC.size:
        raise ImageError(f"{len(data) - end - CRC.size} trailing byte(s) after the checksum")
    stored, actual = CRC.unpack_from(data, end)[0], zlib.crc32(memoryview(data)[:end])
    if stored != actual:
        raise ImageError(f"checksum mismatch: stored {stored:#010x}, computed {actual:#010x}")
    return _network(manifest, memoryview(data)[mend:end]), manifest["meta"]


def _network(m: dict, blob: memoryview) -> IntNetwork:
    if m["format"] != FORMAT:
        raise ImageError(f"manifest.format is {reprlib.repr(m['format'])}, not {FORMAT!r}")
    if not isinstance(m["meta"], dict):
        raise ImageError(f"manifest.meta must be an object, not {type(m['meta']).__name__}")
    if not isinstance(m["spec"], dict):
        raise ImageError(f"manifest.spec must be an object, not {type(m['spec']).__name__}")
    try:
        spec = NetworkSpec.from_dict(m["spec"])
    except SpikeforgeError as e:  # SpecError
        raise ImageError(f"manifest.spec: {e}") from None
    if not isinstance(m["layers"], list) or len(m["layers"]) != len(spec.layers):
        got = len(m["layers"]) if isinstance(m["layers"], list) else type(m["layers"]).__name__
        raise ImageError(f"manifest.layers must be a list of {len(spec.layers)} layers "
                         f"(one per spec layer), not {got}")
    descs, regions = [], []
    for n, (d, ls) in enumerate(zip(m["layers"], spec.layers)):
        where = f"manifest.layers[{n}]"
        _obj(d, where, LAYER_KEYS)
        if not isinstance(d["decay_shifts"], list):
            raise ImageError(f"{where}.decay_shifts must be a list")
        shifts = tuple(_int(s, f"{where}.decay_shifts[{i}]", 0, 64)
                       for i, s in enumerate(d["decay_shifts"]))
        widths = {k: _int(d[k], f"{where}.{k}", 1, 64) for k in LAYER_KEYS[1:5]}
        arrays = _obj(d["arrays"], f"{where}.arrays", ARRAYS)
        c = ls.out_channels
        want = {"weight": (c, ls.synapse_channels, ls.kernel, ls.kernel), "bias": (c,),
                "theta": (c,), "shift": (c,)}
        fixed = {"weight": widths["weight_bits"], "shift": SHIFT_BITS}
        arrs = {name: _descriptor(arrays[name], f"{where}.arrays.{name}", len(blob), want[name],
                                  fixed.get(name)) for name in ARRAYS}
        regions += [(a[0], a[1], f"layers[{n}].{name}") for name, a in arrs.items() if a[1] > a[0]]
        descs.append((where, ls, shifts, widths, arrs))
    regions.sort()
    for (_, e0, a), (s1, _, b) in zip(regions, regions[1:]):
        if s1 < e0:
            raise ImageError(f"arrays {a} and {b} overlap in the blob")
    layers = []
    for where, ls, shifts, widths, arrs in descs:
        tensors = {}
        for name, (offset, _, shape, container, bits) in arrs.items():
            a = np.frombuffer(blob, dtype="<" + container, count=math.prod(shape), offset=offset)
            if not _fits(a, bits):
                raise ImageError(f"{where}.arrays.{name}: value outside its declared "
                                 f"{bits}-bit signed width")
            tensors[name] = torch.from_numpy(a.astype(np.int64).reshape(shape))
        _check_widths(where, ls, widths, shifts)
        try:
            layers.append(IntLayer(ls, **tensors, decay_shifts=shifts, **widths))
        except ContractError as e:
            raise ImageError(f"{where}: {e}") from None
    try:
        net = IntNetwork(spec, tuple(layers))
    except ContractError as e:
        raise ImageError(f"manifest: {e}") from None
    check_contract(net, "manifest.")
    return net


# --------------------------------------------------------------------------- the contract's ranges

#: Widest membrane state: the neuron memory holds it in one word part.
MAX_STATE_BITS = 32
#: Widest accumulator: the golden model forms currents in float64, exact
#: below 2**53, so |I| + |bias| < 2**52 with every value in 52 signed bits.
MAX_ACC_BITS = 52
#: Most decay shifts of a layer (``u - (u >> s1) - ...``; the quantizer picks <= 3).
MAX_DECAY_SHIFTS = 8


def _check_widths(where: str, ls, widths: dict, shifts: tuple[int, ...]) -> None:
    """Ranges of one layer's declared widths, before any value is looked at."""
    stcb = ls.neuron.kind is NeuronKind.STCB
    S, A = widths["state_bits"], widths["acc_bits"]
    if not 2 <= widths["weight_bits"] <= 16:
        raise ImageError(f"{where}.weight_bits = {widths['weight_bits']} is outside 2..16")
    if not 2 <= S <= MAX_STATE_BITS:
        raise ImageError(f"{where}.state_bits = {S} is outside 2..{MAX_STATE_BITS}")
    if not 2 <= A <= MAX_ACC_BITS:
        raise ImageError(f"{where}.acc_bits = {A} is outside 2..{MAX_ACC_BITS}")
    if not stcb and A < S:
        raise ImageError(f"{where}.acc_bits = {A} is below state_bits = {S} (the accumulator "
                         "holds the state plus the current)")
    if len(shifts) > MAX_DECAY_SHIFTS:
        raise ImageError(f"{where}.decay_shifts: {len(shifts)} shifts, at most "
                         f"{MAX_DECAY_SHIFTS}")
    for i, d in enumerate(shifts):
        if not 1 <= d <= 31:
            raise ImageError(f"{where}.decay_shifts[{i}] = {d} is outside 1..31")
    if stcb and shifts:
        raise ImageError(f"{where}.decay_shifts must be empty for an STCB layer, not "
                         f"{list(shifts)}")


def check_contract(net: IntNetwork, prefix: str = "") -> None:
    """Every range and cross-field rule of the integer contract
    (:mod:`spikeforge.sw.golden`) on ``net``; :class:`ImageError` names the
    layer and the field.  The reader applies it to every image.

    * all layers LIF/IF, or all STCB (the golden model runs one family);
    * direct or bit-plane input (``rate`` is random); bit planes: input_bits 1,
      T <= 8; layer 0's input_bits in 1..8; later layers take spikes
      (input_bits 1) or, STCB, T-step spike trains (input_bits T);
    * weight_bits 2..16, state_bits 2..32, acc_bits up to 52, decay shifts
      1..31 (at most 8; none for STCB);
    * LIF/IF: state_bits <= acc_bits; theta in 1 .. 2**(S-1) - 1; bias in
      acc_bits; the accumulator holds ``|state| + |current|`` for the
      worst-case input; STCB: state_bits >= T + 1 (the STEB's range), CAB
      shifts 0..31, ``acc + bias`` within acc_bits;
    """
    spec = net.spec
    T = spec.timesteps
    stcb = net.layers[0].stcb
    if spec.encoding not in ("direct", "bitplane"):
        raise ImageError(f"{prefix}spec.encoding {spec.encoding!r} has no integer contract "
                         "(it is random): direct or bitplane")
    for n, il in enumerate(net.layers):
        where = f"{prefix}layers[{n}]"
        _check_widths(where, il.spec, {k: getattr(il, k) for k in LAYER_KEYS[1:5]},
                      tuple(il.decay_shifts))
        if il.stcb != stcb:
            raise ImageError(f"{where}: {il.spec.neuron.kind.value} layer in a network whose "
                             f"layer 0 is {net.layers[0].spec.neuron.kind.value}: STCB and "
                             "LIF/IF layers cannot be mixed")
        S, A, B = il.state_bits, il.acc_bits, il.input_bits
        if n == 0:
            want = (1,) if spec.encoding == "bitplane" else range(1, 9)
        else:
            want = (T,) if stcb else (1,)
        if B not in want:
            shown = f"{want[0]}" if len(want) == 1 else "1..8"
            raise ImageError(f"{where}.input_bits = {B}, expected {shown} ("
                             + ("pixel bits" if n == 0 else "the previous layer's "
                                + ("T-step spike trains" if stcb else "binary spikes")) + ")")
        if spec.encoding == "bitplane" and T > 8:
            raise ImageError(f"{prefix}spec.timesteps = {T}: bit-plane input has at most 8 steps")
        half = 1 << (S - 1)
        amin, amax = -(1 << (A - 1)), (1 << (A - 1)) - 1
        for name, a, lo, hi in (("theta", il.theta, 1 if not stcb else -half, half - 1),
                                ("bias", il.bias, amin, amax)):
            if a.numel() and (int(a.min()) < lo or int(a.max()) > hi):
                bad = int(a.min()) if int(a.min()) < lo else int(a.max())
                raise ImageError(f"{where}.{name}: value {bad} is outside {lo}..{hi} "
                                 f"(state_bits {S}, acc_bits {A})")
        lo, hi = il.current_bounds()
        if stcb:
            if S < T + 1:
                raise ImageError(f"{where}.state_bits = {S} is below T + 1 = {T + 1} (the "
                                 "STEB's value range)")
            if il.shift.numel() and not 0 <= int(il.shift.min()) <= int(il.shift.max()) <= 31:
                raise ImageError(f"{where}.shift: CAB shifts must be in 0..31")
            need_lo, need_hi = lo, hi
        else:
            need_lo, need_hi = -half + min(lo, 0), half - 1 + max(hi, 0)
        if need_lo < amin or need_hi > amax:
            raise ImageError(f"{where}.acc_bits = {A} cannot hold the worst-case accumulator "
                             f"range [{need_lo}, {need_hi}] (current in [{lo}, {hi}]"
                             + ("" if stcb else f", state in {S} bits") + ")")


def _descriptor(d: Any, where: str, blob_size: int, want: tuple[int, ...],
                fixed_bits: int | None) -> tuple[int, int, tuple[int, ...], str, int]:
    """Checked ``(offset, end, shape, container, bits)`` of one array entry."""
    _obj(d, where, ARRAY_KEYS)
    offset = _int(d["offset"], f"{where}.offset")
    if offset % 8:
        raise ImageError(f"{where}.offset {offset} is not a multiple of 8")
    if not isinstance(d["shape"], list):
        raise ImageError(f"{where}.shape must be a list")
    shape = tuple(_int(s, f"{where}.shape[{i}]") for i, s in enumerate(d["shape"]))
    bits = _int(d["bits"], f"{where}.bits", 2, 64)
    container = d["container"]
    if not isinstance(container, str) or container not in CONTAINERS:
        raise ImageError(f"{where}.container {reprlib.repr(container)} is not one of "
                         f"{', '.join(CONTAINERS)}")
    if CONTAINERS[container] < bits:
        raise ImageError(f"{where}.container {container} is too small for {bits} bits")
    end = offset + math.prod(shape) * CONTAINERS[container] // 8
    if end > blob_size:
        shown = end if end < 1 << 64 else f"2**{end.bit_length() - 1}+"
        raise ImageError(f"{where}: bytes [{offset}, {shown}) lie outside the blob of {blob_size}")
    if shape != want:
        raise ImageError(f"{where}.shape {list(shape)} does not match the spec's {list(want)}")
    if fixed_bits is not None and bits != fixed_bits:
        raise ImageError(f"{where}.bits is {bits}, expected {fixed_bits}")
    return offset, end, shape, container, bits


def _not_a_pipe(path) -> None:
    """Refuse a named pipe or a socket before its open waits for a writer
    (:func:`spikeforge.files.not_a_file`)."""
    from spikeforge import files
    why = files.not_a_file(path)
    if why:
        raise ImageError(f"{path}: {why}")


def read_image(path: str | os.PathLike) -> tuple[IntNetwork, dict]:
    """Read and validate the image at ``path``: ``(network, meta)``.  A file
    larger than :data:`MAX_IMAGE_BYTES` is refused before it is read."""
    _not_a_pipe(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            # a regular file is judged by its size; anything else (/dev/zero) by what it gives
            big = stat.S_ISREG(st.st_mode) and st.st_size > MAX_IMAGE_BYTES
            data = b"" if big else f.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
    if big or len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{path}: larger than {MAX_IMAGE_BYTES >> 20} MiB: not a weight image "
                         "this reader takes")
    try:
        return loads(data)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- memories


def _pack(fields: np.ndarray, widths: list[int], chunk: int = 1 << 15) -> list[int]:
    """Words from int64 ``fields [N, F]``: field ``f`` in two's complement in the
    next ``widths[f]`` bits, the first field lowest."""
    words = []
    for s in range(0, len(fields), chunk):
        part = fields[s:s + chunk]
        bits = np.concatenate([(part[:, f, None] >> np.arange(w)) & 1
                               for f, w in enumerate(widths)], axis=1).astype(np.uint8)
        words += [int.from_bytes(r.tobytes(), "little")
                  for r in np.packbits(bits, axis=1, bitorder="little")]
    return words


def _lanes(P: Any) -> int:
    if type(P) is not int or P < 1:
        raise ImageError(f"lane count P must be a positive integer, not {P!r}")
    return P


def input_lanes(net: IntNetwork, P: int | list[int], words: list[int] | None = None) -> list[int]:
    """Input channels per event of each layer: ``Q`` for a conv layer after a
    LIF / IF layer (a word of ``Q`` spikes at one position), else 1.  ``Q``
    is ``words[n]`` when ``words`` is given (:func:`word_lanes`), else the
    previous layer's lanes (a whole lane group in one word), or 1 in a
    residual block (:func:`in_block`)."""
    ps = _channel_lanes(net, P)
    if words is not None:
        return word_lanes(net, ps, words)
    return [1] + [ps[n - 1] if takes_words(net, n) and not in_block(net, n) else 1
                  for n in range(1, len(net.layers))]


def takes_words(net: IntNetwork, n: int) -> bool:
    """Whether layer ``n > 0`` takes word events: a LIF / IF conv layer after
    a LIF / IF layer."""
    il = net.layers[n]
    return il.spec.kind.value == "conv" and not il.stcb and not net.layers[n - 1].stcb


def opens_block(net: IntNetwork, n: int) -> bool:
    """Whether layer ``n`` is a residual block's first layer (the next one
    is residual)."""
    return n + 1 < len(net.layers) and net.layers[n + 1].spec.residual


def in_block(net: IntNetwork, n: int) -> bool:
    """Whether layer ``n`` is one of a residual block's two layers: the
    block input's events reach both (the second through the skip), so the
    two take words of the same channels (single spikes unless asked)."""
    return net.layers[n].spec.residual or opens_block(net, n)


def word_lanes(net: IntNetwork, P, words) -> list[int]:
    """``words`` (input channels per event, one per layer) checked against
    the lanes ``P``: 1 for a layer that takes single events (layer 0, fc
    layers, STCB), and for a conv layer after a LIF / IF layer a power of two
    that divides the previous layer's channel lanes, or those lanes (the
    previous layer sends its lane group's spikes at a position as
    ``lanes / Q`` words, the empty ones skipped)."""
    ps = _channel_lanes(net, P)
    ws = list(words) if isinstance(words, (list, tuple)) else None
    if ws is None or len(ws) != len(ps):
        raise ImageError(f"words must be a list of {len(ps)} integers (input channels per "
                         f"event, one per layer), not {reprlib.repr(words)}")
    for n, q in enumerate(ws):
        if n == 0 or not takes_words(net, n):
            if q != 1 or type(q) is not int:
                raise ImageError(f"layer {n} takes single events: its words entry must be 1, "
                                 f"not {q!r}")
            continue
        prev = ps[n - 1]
        if (type(q) is not int or q < 1 or prev % q
                or q != prev and q & (q - 1)):
            raise ImageError(f"layer {n}: words must be a power of two that divides the lanes "
                             f"of layer {n - 1} ({prev}), or {prev}, not {q!r}")
        ls = net.layers[n].spec
        if ls.residual and (q != ws[n - 1] or ls.in_channels % q):
            raise ImageError(f"layer {n} closes a residual block: its words must equal layer "
                             f"{n - 1}'s ({ws[n - 1]}) and divide its {ls.in_channels} channels "
                             f"(the skip's words join its own), not {q}")
    return ws


def weight_words(layer: IntLayer, P: int, Q: int = 1) -> list[int]:
    """The ``L{n}_weights`` memory of ``layer`` for ``P`` lanes and ``Q``
    input channels per event (module docstring)."""
    P, Q = _lanes(P), _lanes(Q)
    w = layer.weight.detach().cpu().to(torch.int64).numpy()
    c_out, c_in, k, _ = w.shape
    G, Gi = -(-c_out // P), -(-c_in // Q)
    w = np.pad(w, ((0, G * P - c_out), (0, Gi * Q - c_in), (0, 0), (0, 0)))
    if not _fits(w, layer.weight_bits):
        raise ImageError(f"weights outside {layer.weight_bits} signed bits")
    # [g, j, gi, i, dy, dx] -> address (dy, dx, gi, g), word (i, j)
    lanes = w.reshape(G, P, Gi, Q, k, k).transpose(4, 5, 2, 0, 3, 1).reshape(-1, Q * P)
    return _pack(lanes, [layer.weight_bits] * (Q * P))


def _lane_list(net: IntNetwork, P) -> list[int]:
    ps = list(P) if isinstance(P, (list, tuple)) else [P] * len(net.layers)
    if len(ps) != len(net.layers):
        raise ImageError(f"{len(ps)} lane counts for {len(net.layers)} layers (one per "
                         "layer, or one for all)")
    return [_lanes(p) for p in ps]


def _channel_lanes(net: IntNetwork, P) -> list[int]:
    """Output-channel lanes per layer, what the memories' geometry follows:
    lanes beyond a layer's channels are a second synapse unit
    (``spikeforge.hw.network.lane_counts``), with the same memories."""
    return [min(p, il.spec.out_channels) for p, il in zip(_lane_list(net, P), net.layers)]


def neuron_words(layer: IntLayer) -> list[int]:
    """The ``L{n}_neurons`` memory of ``layer``: one
    :func:`~spikeforge.layouts.neuron_layout` word per channel (``theta |
    bias << S | shift << (S + A)``)."""
    lay = neuron_layout(layer.state_bits, layer.acc_bits)
    fields = [(name, f.offset, f.shape) for name, f in lay]
    arrays = []
    for name, _, shape in fields:
        a = getattr(layer, name).detach().cpu().to(torch.int64).numpy()
        if shape.signed and not _fits(a, shape.width):
            raise ImageError(f"{name} does not fit {shape.width} signed bits")
        if not shape.signed and a.size and (int(a.min()) < 0 or int(a.max()) >> shape.width):
            raise ImageError(f"{name} does not fit {shape.width} unsigned bits")
        arrays.append(a)
    # a StructLayout lays its fields out contiguously from bit 0, in order, as _pack does
    return _pack(np.stack(arrays, 1), [shape.width for _, _, shape in fields])


def memories(net: IntNetwork, P: int | list[int],
             words: list[int] | None = None) -> dict[str, tuple[int, list[int]]]:
    """``{name: (width, words)}`` for every layer, ``P`` one lane count or one per
    layer, ``words`` the input channels per event (:func:`input_lanes`); ready
    for ``Memory(shape=unsigned(width), depth=len(words), init=words)``."""
    ps = _channel_lanes(net, P)
    out = {}
    for n, (il, p, q) in enumerate(zip(net.layers, ps, input_lanes(net, ps, words))):
        out[f"L{n}_weights"] = (q * p * il.weight_bits, weight_words(il, p, q))
        out[f"L{n}_neurons"] = (neuron_layout(il.state_bits, il.acc_bits).size, neuron_words(il))
    return out


def export_hex(net: IntNetwork, out_dir: str | os.PathLike, P: int | list[int],
               fifo_depth: int | None = None, words: list[int] | None = None,
               sdram=(), banks=None) -> list[Path]:
    """Write ``{name}.hex`` per memory and ``memories.json`` into ``out_dir``;
    return the paths written (the hex files, then ``memories.json``).
    ``fifo_depth``: the engine's event FIFO depth, ``words`` the input
    channels per event (:func:`input_lanes`), ``sdram`` the layers whose
    weights stream from the SDRAM and ``banks`` the current memories per
    layer (:func:`spikeforge.hw.fit.storage_options`), recorded beside the lanes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mems = memories(net, P, words)
    paths, listing = [], []
    for name, (width, ws) in mems.items():
        digits = -(-width // 4)
        path = out / f"{name}.hex"
        path.write_text("".join(f"{w:0{digits}x}\n" for w in ws))
        paths.append(path)
        listing.append({"name": name, "width": width, "depth": len(ws), "file": path.name})
    ps = list(P) if isinstance(P, (list, tuple)) else [P] * len(net.layers)
    index = out / "memories.json"
    rec = ({"lanes": ps} | ({} if fifo_depth is None else {"fifo_depth": fifo_depth})
           | ({} if words is None else {"words": list(words)})
           | ({"sdram": list(sdram)} if sdram else {})
           | ({} if banks is None else {"banks": list(banks)}))
    index.write_text(json.dumps(rec | {"memories": listing}, indent=1) + "\n")
    return paths + [index]


def read_hex(path: str | os.PathLike, width: int) -> list[int]:
    """Words of a hex memory file written by :func:`export_hex`, each checked to
    be 1 to ``ceil(width / 4)`` hex digits and below ``2**width``."""
    if type(width) is not int or width < 1:
        raise ImageError(f"width must be a positive integer, not {width!r}")
    _not_a_pipe(path)
    try:
        text = Path(path).read_bytes().decode("ascii")
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ImageError(f"{path}: not an ASCII hex file (byte {e.start})") from None
    words = []
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        bad = next((ch for ch in s if ch not in "0123456789abcdefABCDEF"), None)
        if not s or bad is not None:
            raise ImageError(f"{path}:{i}: " + (f"bad hex digit {bad!r}" if s else "empty line"))
        if len(s) > -(-width // 4) or int(s, 16) >> width:
            raise ImageError(f"{path}:{i}: word {s} is wider than {width} bits")
        words.append(int(s, 16))
    return words


def read_exported(folder: str | os.PathLike, net: IntNetwork, P: int | list[int],
                  words: list[int] | None = None) -> dict[str, tuple[int, list[int]]]:
    """The memory images :func:`export_hex` wrote into ``folder``, as
    ``{name: (width, words)}`` like :func:`memories`: what the RTL loads.

    ``memories.json`` must list, for the lanes ``P`` and ``words``, exactly the memories
    :func:`memories` lays out for ``net`` (names, widths, depths, in order),
    and each hex file must hold ``depth`` words of ``width`` bits; anything
    else is an :class:`ImageError` naming the file and what differs.  The
    words themselves are not compared with ``net``: a changed word is what
    the RTL then computes with, and verification shows it."""
    from spikeforge import files
    folder = Path(folder)
    index = folder / "memories.json"
    if not index.exists():
        raise ImageError(f"{index} is missing: run `spikeforge export` first")
    try:
        m = files.read_json(index)
    except files.FileError as e:
        raise ImageError(str(e)) from None
    ps = _lane_list(net, P)
    want = {name: (width, len(w)) for name, (width, w) in memories(net, ps, words).items()}
    lanes = m.get("lanes")
    if lanes != ps:
        raise ImageError(f"{index}: memory images exported for lanes {reprlib.repr(lanes)}, "
                         f"not {ps}: run `spikeforge export {folder.parent} --lanes "
                         f"{','.join(map(str, ps))}`")
    got, want_words = m.get("words"), None if words is None else list(words)
    if got != want_words:
        raise ImageError(f"{index}: memory images exported for lanes {ps} with words "
                         f"{reprlib.repr(got)}, not {want_words}: run `spikeforge export "
                         f"{folder.parent} --lanes {','.join(map(str, ps))}"
                         + ("" if want_words is None else
                            f" --words {','.join(map(str, want_words))}") + "`")
    listing = m.get("memories")
    if not isinstance(listing, list) or not all(isinstance(e, dict) for e in listing):
        raise ImageError(f"{index}: 'memories' must be a list of objects, not "
                         f"{reprlib.repr(listing)}")
    names = [e.get("name") for e in listing]
    if names != list(want):
        raise ImageError(f"{index}: lists the memories {reprlib.repr(names)}, the network "
                         f"has {list(want)}")
    out = {}
    for e in listing:
        name = e["name"]
        width, depth = want[name]
        for key, value in (("width", width), ("depth", depth)):
            if e.get(key) != value or type(e.get(key)) is not int:
                raise ImageError(f"{index}: {name}: {key} {reprlib.repr(e.get(key))}, the "
                                 f"network's is {value}")
        fname = e.get("file")
        if (not isinstance(fname, str) or not fname or Path(fname).name != fname
                or fname in (".", "..")):
            raise ImageError(f"{index}: {name}: 'file' must be a file name in {folder}, not "
                             f"{reprlib.repr(fname)}")
        path = folder / fname
        if path.is_dir():
            raise ImageError(f"{path}: a folder, not a hex file (memory {name})")
        if not path.is_file():
            raise ImageError(f"{path} is missing (memory {name}): run `spikeforge export` again")
        # at most one word a line of ceil(width / 4) digits with CR LF line ends
        limit = depth * (-(-width // 4) + 2)
        if path.stat().st_size > limit:
            raise ImageError(f"{path}: larger than {depth} words of {width} bits "
                             f"({path.stat().st_size} bytes)")
        ws = read_hex(path, width)
        if len(ws) != depth:
            raise ImageError(f"{path}: {len(ws)} words, memory {name} has {depth}")
        out[name] = (width, ws)
    return out
