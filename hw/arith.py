"""Multiplier-free arithmetic helpers for the engine.

The engine never multiplies two signals.  Products with a constant (address
strides, flattening ``(c, y, x)`` into an fc input index) are written as sums
of shifted copies here, so Yosys sees only ``$add``/``$sub``/``$shl`` cells and
never infers a ``$mul`` (nor maps one onto a DSP block).
"""

from __future__ import annotations

from amaranth import *

from spikeforge.sw.golden import signed_bits  # the one width rule, re-exported for the engine

__all__ = ["const_mul", "saturate", "decay", "signed_bits", "adder_trees", "copies",
           "COPIES"]


def const_mul(value, k: int):
    """``value * k`` for a non-negative constant ``k`` as a sum of shifts.

    Uses the canonical signed-digit form of ``k`` (runs of ones become one
    addition and one subtraction), so ``k = 2**n`` is pure wiring.
    """
    if type(k) is not int or k < 0:
        raise ValueError(f"constant multiplier must be a non-negative integer, not {k!r}")
    if k == 0:
        return C(0, 1)
    value = Value.cast(value)
    digits, n, i = [], k, 0
    while n:
        if n & 1:
            d = 2 - (n & 3)  # +1 or -1 (non-adjacent form)
            digits.append((i, d))
            n -= d
        n >>= 1
        i += 1
    pos = [value << i for i, d in digits if d > 0]
    neg = [value << i for i, d in digits if d < 0]
    total = pos[0]
    for term in pos[1:]:
        total = total + term
    for term in neg:
        total = total - term
    return total


def saturate(value, bits: int):
    """``value`` clamped to ``bits``-bit two's complement (never wraps)."""
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    value = Value.cast(value)
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


def decay(u, shifts: tuple[int, ...]):
    """``u - (u >> s_1) - (u >> s_2) - ...``: arithmetic shifts of ``u``, term by
    term (the contract's decay); ``u`` must be signed."""
    u = Value.cast(u)
    out = u
    for s in shifts:
        out = out - (u >> s)
    return out


def adder_trees(m, terms: list[list], levels_per_stage: int = 2):
    """Sum each list of ``terms`` with a balanced tree of two-input adders,
    a register after every ``levels_per_stage`` levels and after the last.

    Returns ``(sums, stages)``: one registered sum per list (valid
    ``stages`` cycles after the terms) and the number of register stages.
    All lists must have the same length.
    """
    rows = [[Value.cast(t) for t in row] for row in terms]
    stages, pending = 0, 0   # register stages so far; adder levels since the last
    while True:
        done = all(len(r) == 1 for r in rows)
        if not done:
            rows = [[r[i] + r[i + 1] if i + 1 < len(r) else r[i] for i in range(0, len(r), 2)]
                    for r in rows]
            pending += 1
        if pending and (pending == levels_per_stage or done):
            regs = []
            for n, r in enumerate(rows):
                row = []
                for i, v in enumerate(r):
                    reg = Signal(v.shape(), name=f"tree{stages}_{n}_{i}", reset_less=True)  # data
                    m.d.sync += reg.eq(v)
                    row.append(reg)
                regs.append(row)
            rows, pending = regs, 0
            stages += 1
        if done:
            break
    return [r[0] for r in rows], stages


#: how many copies :func:`copies` makes: the flip-flop variants Yosys keeps
#: apart (its ``opt_merge`` merges flip-flops of one input, type and initial
#: value): initial value all zeros or all ones, with or without the domain's
#: reset
COPIES = 4


def copies(m, value, name: str, levels: int = 1, bits: int | None = None) -> list:
    """Registered copies of ``value``, ``levels`` cycles later, for a control
    that drives hundreds of lanes' bits: each copy drives its share of them,
    and the placer puts each near its own.  Each level makes up to
    :data:`COPIES` copies of each copy of the level before; with ``bits``
    (the bits the control drives), only as many as :func:`copies_for` those
    bits (the later levels then plain delays), else ``COPIES ** levels``.
    The copies of one level differ in their initial value and whether the
    domain's reset resets them, so synthesis keeps them apart; a level's
    copies of different parents differ in their input.  A copy equals
    ``value`` ``levels`` cycles late from the ``levels + 1``-th cycle after a
    reset on (its users must not depend on the first)."""
    want = COPIES ** levels if bits is None else copies_for(bits, levels)
    out = [Value.cast(value)]
    for lv in range(levels):
        fan = min(COPIES, max(1, want // len(out)))
        nxt = []
        for p, src in enumerate(out):
            ones = (1 << len(src)) - 1
            for k in range(fan):
                tag = f"{p}_{k}" if lv else f"{k}"
                reg = Signal(len(src), name=f"{name}_copy{tag}", init=ones if k % 2 else 0,
                             reset_less=k >= 2)
                m.d.sync += reg.eq(src)
                nxt.append(reg)
        out = nxt
    return out


#: the bits one copy of a control may drive (:func:`copies_for`)
BITS_PER_COPY = 48


def copies_for(bits: int, levels: int) -> int:
    """How many copies :func:`copies` makes for a control driving ``bits``
    bits: the power of :data:`COPIES` (at most ``COPIES ** levels``) that
    brings each copy's share to :data:`BITS_PER_COPY` bits or under (a small
    core's control keeps one copy: copies cost logic cells, which the
    iCE40 has few of)."""
    n = 1
    while n < COPIES ** levels and bits > n * BITS_PER_COPY:
        n *= COPIES
    return n
