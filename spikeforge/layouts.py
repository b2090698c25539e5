"""Word layouts shared by the engine's RTL and the host, and their packing.

Every word that crosses between the gateware and Python -- a spike event, a
neuron memory word, a record or reply of the host link -- is written once as
an :mod:`amaranth.lib.data` layout.  The gateware uses it as a view
(``Signal(layout)``, ``layout(value)``); the host packs and unpacks plain
integers with :func:`pack` and :func:`unpack`, which walk the same layout's
fields, offsets and widths.  No field width or offset is written twice.

>>> from amaranth.lib import data
>>> lay = data.StructLayout({"a": unsigned(3), "b": signed(4)})
>>> pack(lay, {"a": 5, "b": -2})
117
>>> unpack(lay, 117)
{'a': 5, 'b': -2}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from amaranth import Shape, signed, unsigned
from amaranth.lib import data

__all__ = ["SHIFT_BITS", "neuron_layout", "pack", "unpack", "to_bytes", "from_bytes",
           "field_slices", "byte_size"]

#: Width of a neuron's shift field (STCB rescale ``r``; 0 for LIF / IF).
SHIFT_BITS = 6


def neuron_layout(state_bits: int, acc_bits: int) -> data.StructLayout:
    """Word ``c`` of a layer's ``L{n}_neurons`` memory: channel ``c``'s
    threshold (``state_bits``, two's complement), bias (``acc_bits``, two's
    complement) and shift (:data:`SHIFT_BITS`, unsigned), from bit 0 up."""
    return data.StructLayout({
        "theta": signed(state_bits),
        "bias": signed(acc_bits),
        "shift": unsigned(SHIFT_BITS),
    })


def _children(layout: data.Layout):
    """``(key, offset, shape)`` of each field of a struct or array layout."""
    if isinstance(layout, data.ArrayLayout):
        w = Shape.cast(layout.elem_shape).width
        return [(i, i * w, layout.elem_shape) for i in range(layout.length)]
    return [(name, f.offset, f.shape) for name, f in layout]


def pack(shape, value, where: str = "") -> int:
    """``value`` as the integer of ``shape`` (bit 0 first).

    ``shape``: an :mod:`amaranth.lib.data` layout or a plain shape; ``value``:
    a mapping of field names for a struct layout (missing fields are 0), a
    sequence of its elements for an array layout, an integer for a shape.
    Raises :class:`ValueError` for a value that does not fit its field (naming
    the field) or an unknown field name."""
    if isinstance(shape, data.Layout) and not isinstance(value, int):
        children = _children(shape)
        if isinstance(shape, data.ArrayLayout):
            if not isinstance(value, Sequence) or len(value) != shape.length:
                raise ValueError(f"{where or 'value'}: expected {shape.length} elements, "
                                 f"not {value!r}")
            items = [(i, off, sh, value[i]) for i, off, sh in children]
        else:
            if not isinstance(value, Mapping):
                raise ValueError(f"{where or 'value'}: expected a mapping of fields, not {value!r}")
            names = {name for name, _, _ in children}
            unknown = [k for k in value if k not in names]
            if unknown:
                raise ValueError(f"{where or 'value'}: unknown field {unknown[0]!r}")
            items = [(k, off, sh, value.get(k, 0)) for k, off, sh in children]
        word = 0
        for key, off, sh, v in items:
            word |= pack(sh, v, f"{where}.{key}" if where else str(key)) << off
        return word
    s = Shape.cast(shape)  # a leaf, or a whole layout given as its raw bits
    v = int(value)
    lo, hi = (-(1 << (s.width - 1)), 1 << (s.width - 1)) if s.signed else (0, 1 << s.width)
    if not lo <= v < hi:
        raise ValueError(f"{where or 'value'}: {v} does not fit {s!r}")
    return v & ((1 << s.width) - 1)


def unpack(shape, word: int):
    """Inverse of :func:`pack`: a dict (struct layout), a list (array layout)
    or an integer (signed fields sign-extended)."""
    if isinstance(shape, data.Layout):
        out = {key: unpack(sh, word >> off) for key, off, sh in _children(shape)}
        return list(out.values()) if isinstance(shape, data.ArrayLayout) else out
    s = Shape.cast(shape)
    v = word & ((1 << s.width) - 1)
    return v - (1 << s.width) if s.signed and v >> (s.width - 1) else v


def byte_size(shape) -> int:
    """Bytes of ``shape`` on the link (its bits rounded up to whole bytes)."""
    return -(-Shape.cast(shape).width // 8)


def to_bytes(shape, value) -> bytes:
    """:func:`pack`, little-endian in :func:`byte_size` bytes."""
    return pack(shape, value).to_bytes(byte_size(shape), "little")


def from_bytes(shape, raw: bytes):
    """:func:`unpack` of little-endian bytes, which must be :func:`byte_size` long."""
    if len(raw) != byte_size(shape):
        raise ValueError(f"{len(raw)} bytes, expected {byte_size(shape)}")
    return unpack(shape, int.from_bytes(raw, "little"))


def field_slices(layout: data.StructLayout, *names: str) -> dict[str, tuple[int, int, bool]]:
    """``{name: (offset, width, signed)}`` of the named fields of ``layout``
    (for gateware that slices a raw memory word)."""
    out = {}
    for name in names:
        f = layout[name]
        s = Shape.cast(f.shape)
        out[name] = (f.offset, s.width, s.signed)
    return out
