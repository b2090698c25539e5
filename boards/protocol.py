"""The host link: a framed, checksummed protocol over a UART (8N1).

Frame (both directions; multi-byte fields little-endian)
--------------------------------------------------------

========  ======  ============================================================
offset    size    field
========  ======  ============================================================
0         1       ``SYNC`` = ``0xA5``
1         1       ``CMD``: a request command, ``CMD | 0x80`` for its reply,
                  ``0xFF`` for an error frame
2         1       ``SEQ``: chosen by the host, echoed in the reply
3         2       ``LEN``: payload bytes, ``0 .. MAX_PAYLOAD`` (1024)
5         LEN     payload
5+LEN     2       CRC-16/CCITT-FALSE (poly ``0x1021``, init ``0xFFFF``, no
                  reflection, no final XOR; :data:`CRC_ALGORITHM`) of bytes
                  ``1 .. 5+LEN`` (CMD to the end of the payload)
========  ======  ============================================================

Requests (host to board) and their replies:

=========  =====  ==========================================  ====================
command    CMD    request payload                             reply payload
=========  =====  ==========================================  ====================
PING       0x01   none                                        :class:`BoardInfo`
WRITE      0x02   :func:`write_layout` records                none
EVENTS     0x03   records of ``E`` bytes: event beats         none
START      0x04   none                                        none
RESULT     0x05   none                                        :func:`result_layout`
PERF       0x06   none                                        :func:`perf_layout`
LOAD       0x07   records of ``E`` bytes: event beats         :data:`STORE_LAYOUT`
BATCH      0x08   :data:`BATCH_LAYOUT`                        :func:`batch_reply_layout`
=========  =====  ==========================================  ====================

* WRITE: each record is one beat of the engine's ``mem_write`` port: memory
  ``select`` (``2n`` = layer ``n``'s weights, ``2n + 1`` its neuron words),
  word ``addr`` (``A`` bytes) and ``data`` (``D`` bytes), the layouts of
  :func:`spikeforge.image.memories`.  Addresses are not checked by the board.
* EVENTS: each record is one beat of the engine's ``events`` port (its
  payload, ``E`` bytes, see :class:`~spikeforge.hw.streams.EventFormat`:
  ``channel, y, x, shift, last`` from bit 0 up).  The board feeds them in order
  and replies once the engine has taken the last one (a board with batch mode
  once the last one is in its 4-entry FIFO in front of the engine,
  :data:`~spikeforge.boards.top.LINK_FIFO_DEPTH`: up to 4 beats reach the
  engine after the reply).
* START: pulses the engine's ``start`` (reset of cores and counters, then the
  clear pass of the membrane banks; weights are kept).
* RESULT: ``status u8`` (bit 0 ``done``, bit 1 ``clearing``), ``prediction
  u8``, ``cycles u32`` and the output spike counts (``classes * voting``
  values of ``C`` bytes each).  It does not wait: the host polls until ``done``.
* PERF: each layer's counters (:data:`~spikeforge.hw.layer.PERF_LAYOUT`, u32 each).
* LOAD (batch mode): appends its records, event beats exactly as EVENTS sends
  them (so images are separated by the engine's own end-of-step / hold
  markers), to the board's image store (block RAM of ``batch_beats`` beats,
  in the PING reply).  A LOAD with no payload empties the store; a payload
  that is not a whole number of records is a LENGTH error.  The reply is the
  store's length in beats (``beats u32``).  A LOAD whose records do not all
  fit is refused whole (error STORE; nothing appended), so the store stays
  usable.  LOAD is not idempotent: a host that loses its reply empties
  the store and loads again.
* BATCH (batch mode): ``images u16``, the number of images in the store
  (``1 .. MAX_BATCH_IMAGES`` = 1018: their classes fill one reply).  The
  board pulses ``start``, feeds the stored beats to the engine back to back
  at up to one beat a cycle (LIF / IF networks stream; an STCB network gets a
  ``start`` and its clear pass after each image's marker), records the
  engine's prediction at each ``result_valid`` and replies when ``images``
  results are in: ``images u16``, ``cycles u32`` (clock cycles from the
  first beat the engine took to the last result, both included, counted on
  the board; saturates at ``2**32 - 1``), then one class byte per image, in
  input order.  With more
  images in the store than ``images``, the rest is not waited for (some of
  its beats may go in before the last result, or after it from the FIFO in
  front of the engine; the next BATCH or START resets the engine and empties
  the FIFO); with fewer, the missing results never come and the board
  answers STALL (``detail``: results got) after the stall timeout.  BATCH may
  be repeated (the store is kept), so a host resends it like RESULT.

A board built without a store (``batch_beats = 0``) answers LOAD and BATCH
with UNKNOWN, as any command it does not have.

Payload words are :mod:`amaranth.lib.data` layouts (:func:`write_layout`,
:func:`result_layout`, :func:`perf_layout`, :data:`ERROR_LAYOUT`,
:data:`STORE_LAYOUT`, :data:`BATCH_LAYOUT`, :data:`BATCH_REPLY_LAYOUT` /
:func:`batch_reply_layout`) that the bridge's gateware and this host side both
use (:mod:`spikeforge.layouts`).
* ``A``, ``D``, ``E``, ``C`` and the engine's shape are in the PING reply
  (:class:`BoardInfo`: 24 bytes, ``INFO``; a board with an image store
  appends ``batch_beats u32``, ``INFO_STORE``: 28 bytes).

The board executes a request only after its checksum has been checked: a
payload is received into a buffer first.

Errors
------
An error frame has ``CMD = 0xFF``, the request's ``SEQ`` (0 if not received)
and the payload ``code u8, cmd u8, detail u16`` (``cmd``: the request's
command byte, 0 if not received).  Codes (:class:`ErrorCode`):

=========  ====  ==============================================================
code       val   meaning (board side)
=========  ====  ==============================================================
CRC        1     checksum mismatch; the frame was not executed
LENGTH     2     ``LEN`` over ``MAX_PAYLOAD`` (sent as soon as the header is in;
                 the rest of that frame is then discarded bytes) or not a valid
                 length for the command (``detail`` = ``LEN``)
UNKNOWN    3     unknown command (with a good checksum)
TIMEOUT    4     a frame stopped: no byte for the receive timeout after a
                 ``SYNC``; the partial frame is dropped (``detail``: bytes got)
DISCARDED  5     bytes outside any frame (not ``SYNC`` while hunting, or sent
                 while the board was busy) were dropped; ``detail`` = their
                 number (saturating).  Sent once the line has been idle for the
                 receive timeout: a notice, not the reply to a request.
STALL      6     the engine did not take an event beat for the stall timeout;
                 EVENTS aborted after ``detail`` beats (start again; with
                 batch mode, beats taken into the FIFO in front of the
                 engine, which START empties); BATCH:
                 no beat taken and no result for the stall timeout, aborted
                 after ``detail`` results
STORE      7     the image store cannot do it: a LOAD whose records do not fit
                 (nothing appended) or a BATCH on an empty store; ``detail``:
                 the beats in the store (saturating at 65535)
RANGE      8     a request field out of range: BATCH ``images`` 0 or over
                 ``MAX_BATCH_IMAGES`` (``detail``: the value)
=========  ====  ==============================================================

Every ``SYNC`` that starts a frame gets exactly one reply (its reply or an
error); nothing is dropped without an error frame.  After an error the board
hunts for the next ``SYNC``: a corrupted frame costs that frame only.  The host
side (:class:`Parser`) uses the same receiver rules, and raises
:class:`ProtocolError` (:class:`FrameError` for a bad frame from the board,
:class:`BoardError` for an error frame the board sent).
"""

from __future__ import annotations

import binascii
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

from amaranth import unsigned
from amaranth.lib import data
from amaranth.lib.crc import catalog

from spikeforge.errors import SpikeforgeError
from spikeforge.layouts import byte_size, from_bytes, to_bytes

__all__ = ["SYNC", "VERSION", "MAX_PAYLOAD", "HEADER_BYTES", "CRC_BYTES", "REPLY", "ERROR",
           "Cmd", "ErrorCode", "ProtocolError", "FrameError", "BoardError", "Frame", "crc16",
           "encode", "decode", "Parser", "BoardInfo", "Result", "design_id", "link_layout",
           "LinkLayout", "pack_records", "error_payload", "parse_error", "check_request",
           "CRC_ALGORITHM", "ERROR_LAYOUT", "STATUS_LAYOUT", "write_layout", "result_layout",
           "perf_layout", "STORE_LAYOUT", "BATCH_LAYOUT", "BATCH_REPLY_LAYOUT",
           "batch_reply_layout", "MAX_BATCH_IMAGES", "BatchResult", "INFO", "INFO_STORE"]

SYNC = 0xA5
VERSION = 3  # 2: 16-bit data_bytes, 1024-byte payloads; 3: LOAD / BATCH (image store)
MAX_PAYLOAD = 1024
HEADER_BYTES = 5
CRC_BYTES = 2
REPLY = 0x80
ERROR = 0xFF
#: The frame checksum, for the gateware (``amaranth.lib.crc``); the host
#: computes the same with :func:`binascii.crc_hqx` (:func:`crc16`).
CRC_ALGORITHM = catalog.CRC16_CCITT_FALSE

#: Payload of an error frame.
ERROR_LAYOUT = data.StructLayout({"code": unsigned(8), "cmd": unsigned(8), "detail": unsigned(16)})

#: The status byte of the RESULT reply.
STATUS_LAYOUT = data.StructLayout({"done": unsigned(1), "clearing": unsigned(1),
                                   "reserved": unsigned(6)})


#: The LOAD reply: the image store's length in beats after the request.
STORE_LAYOUT = data.StructLayout({"beats": unsigned(32)})

#: The BATCH request: the number of stored images to run.
BATCH_LAYOUT = data.StructLayout({"images": unsigned(16)})

#: The fixed head of the BATCH reply (the class bytes follow it).
BATCH_REPLY_LAYOUT = data.StructLayout({"images": unsigned(16), "cycles": unsigned(32)})

#: The most images one BATCH takes: their classes fill one reply.
MAX_BATCH_IMAGES = MAX_PAYLOAD - BATCH_REPLY_LAYOUT.size // 8


def batch_reply_layout(images: int) -> data.StructLayout:
    """The BATCH reply for ``images`` images: :data:`BATCH_REPLY_LAYOUT`'s
    fields, then one class byte per image."""
    return data.StructLayout({**{name: f.shape for name, f in BATCH_REPLY_LAYOUT},
                              "classes": data.ArrayLayout(unsigned(8), images)})


def write_layout(addr_bytes: int, data_bytes: int) -> data.StructLayout:
    """One WRITE record: memory ``select``, word ``addr``, ``data``."""
    return data.StructLayout({"select": unsigned(8), "addr": unsigned(8 * addr_bytes),
                              "data": unsigned(8 * data_bytes)})


def result_layout(n_out: int, count_bytes: int) -> data.StructLayout:
    """The RESULT reply: status, prediction, cycles, ``n_out`` output counts."""
    return data.StructLayout({"status": STATUS_LAYOUT, "prediction": unsigned(8),
                              "cycles": unsigned(32),
                              "counts": data.ArrayLayout(unsigned(8 * count_bytes), n_out)})


def perf_layout(layers: int) -> data.ArrayLayout:
    """The PERF reply: each layer's performance counters, the engine's ``perf`` port."""
    from spikeforge.hw.layer import PERF_LAYOUT
    return data.ArrayLayout(PERF_LAYOUT, layers)


class Cmd(IntEnum):
    PING = 0x01
    WRITE = 0x02
    EVENTS = 0x03
    START = 0x04
    RESULT = 0x05
    PERF = 0x06
    LOAD = 0x07
    BATCH = 0x08


class ErrorCode(IntEnum):
    CRC = 1
    LENGTH = 2
    UNKNOWN = 3
    TIMEOUT = 4
    DISCARDED = 5
    STALL = 6
    STORE = 7
    RANGE = 8


class ProtocolError(SpikeforgeError, RuntimeError):
    """A link failure: a bad frame, an error frame from the board, no reply,
    or a board that does not match the network.  ``code``: the
    :class:`ErrorCode` when there is one."""

    def __init__(self, message: str, code: ErrorCode | None = None):
        super().__init__(message)
        self.code = code


class FrameError(ProtocolError):
    """A frame that failed the receiver's checks (host side); ``detail`` as in
    the board's error frame (LENGTH: the length, TIMEOUT: bytes received,
    DISCARDED: bytes dropped)."""

    def __init__(self, message: str, code: ErrorCode | None = None, detail: int = 0):
        super().__init__(message, code)
        self.detail = detail


class BoardError(ProtocolError):
    """An error frame sent by the board."""

    def __init__(self, code: ErrorCode | int, cmd: int = 0, detail: int = 0, seq: int = 0):
        try:
            code = ErrorCode(code)
            name = code.name
        except ValueError:
            name = f"code {code}"
        try:
            cname = Cmd(cmd).name
        except ValueError:
            cname = f"0x{cmd:02x}"
        super().__init__(f"board error {name} (command {cname}, seq {seq}, detail {detail})",
                         code)
        self.cmd, self.detail, self.seq = cmd, detail, seq


# --------------------------------------------------------------------------- framing


def crc16(data: bytes, crc: int = CRC_ALGORITHM.initial_crc) -> int:
    """CRC-16/CCITT-FALSE (:data:`CRC_ALGORITHM`; ``crc16(b"123456789") == 0x29B1``),
    continuing from ``crc``."""
    return binascii.crc_hqx(data, crc)


@dataclass(frozen=True)
class Frame:
    cmd: int
    seq: int
    payload: bytes = b""


def encode(cmd: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    for name, v in (("cmd", cmd), ("seq", seq)):
        if type(v) is not int and not isinstance(v, IntEnum) or not 0 <= v <= 255:
            raise ProtocolError(f"{name} must be a byte (0..255), not {v!r}")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}",
                            ErrorCode.LENGTH)
    body = struct.pack("<BBH", int(cmd), seq, len(payload)) + payload
    return bytes([SYNC]) + body + struct.pack("<H", crc16(body))


def decode(data: bytes) -> Frame:
    """Exactly one frame from ``data`` (no bytes before or after it), or a
    :class:`FrameError` naming the defect (its ``code``: CRC, LENGTH, TIMEOUT
    for a truncated frame, DISCARDED for bytes outside the frame)."""
    p = Parser()
    items = p.feed(data) + p.expire()
    frames = [i for i in items if isinstance(i, Frame)]
    errors = [i for i in items if isinstance(i, ProtocolError)]
    if errors:
        raise errors[0]
    if len(frames) != 1:
        raise FrameError(f"{len(frames)} frames in {len(data)} bytes, expected one",
                         ErrorCode.LENGTH)
    return frames[0]


class Parser:
    """Byte-at-a-time receiver with the board's rules (module docstring).

    :meth:`feed` returns the frames completed and the errors found
    (:class:`FrameError` objects, returned, not raised): CRC, LENGTH (over
    ``max_payload``); bytes outside a frame are counted and reported by
    :meth:`expire` (DISCARDED), which the owner calls when the line has been
    idle for its timeout; a partial frame is then dropped (TIMEOUT).
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self.discarded = 0
        self._buf: bytearray | None = None  # bytes of the frame after SYNC

    @property
    def in_frame(self) -> bool:
        return self._buf is not None

    def reset(self) -> None:
        self.discarded = 0
        self._buf = None

    def feed(self, data: bytes) -> list:
        out: list = []
        for b in bytes(data):
            buf = self._buf
            if buf is None:
                if b == SYNC:
                    self._buf = bytearray()
                else:
                    self.discarded += 1
                continue
            buf.append(b)
            if len(buf) == 4:
                n = buf[2] | buf[3] << 8
                if n > self.max_payload:
                    out.append(FrameError(f"frame length {n} exceeds {self.max_payload}",
                                          ErrorCode.LENGTH, n))
                    self._buf = None
                    continue
            if len(buf) >= 4 and len(buf) == 4 + (buf[2] | buf[3] << 8) + CRC_BYTES:
                self._buf = None
                body = bytes(buf[:-CRC_BYTES])
                got = buf[-2] | buf[-1] << 8
                want = crc16(body)
                if got != want:
                    out.append(FrameError(f"CRC mismatch: frame says 0x{got:04x}, bytes give "
                                          f"0x{want:04x}", ErrorCode.CRC))
                else:
                    out.append(Frame(body[0], body[1], body[4:]))
        return out

    def expire(self) -> list:
        """The line has been idle for the timeout: drop a partial frame
        (TIMEOUT), report discarded bytes (DISCARDED)."""
        out: list = []
        if self._buf is not None:
            out.append(FrameError(f"truncated frame: {len(self._buf) + 1} bytes, then silence",
                                  ErrorCode.TIMEOUT, len(self._buf) + 1))
            self._buf = None
        if self.discarded:
            out.append(FrameError(f"{self.discarded} bytes outside any frame",
                                  ErrorCode.DISCARDED, self.discarded))
            self.discarded = 0
        return out


def check_request(frame: Frame, info: "BoardInfo") -> tuple[ErrorCode, int] | None:
    """The board's verdict on a request whose checksum was good: ``None`` (it
    executes) or ``(code, detail)`` of the error frame it sends (UNKNOWN, or
    LENGTH: a payload for PING / START / RESULT / PERF, or a WRITE / EVENTS
    payload that is empty or not a whole number of records, a LOAD payload
    that is not a whole number of records, a BATCH payload that is not
    :data:`BATCH_LAYOUT`).  LOAD and BATCH are UNKNOWN to a board without an
    image store; the checks that depend on the store's state (STORE, RANGE)
    are the board's."""
    try:
        cmd = Cmd(frame.cmd)
    except ValueError:
        return ErrorCode.UNKNOWN, 0
    n = len(frame.payload)
    if cmd in (Cmd.LOAD, Cmd.BATCH) and not info.batch_beats:
        return ErrorCode.UNKNOWN, 0
    if cmd is Cmd.LOAD:
        ok = n % info.event_bytes == 0
    elif cmd is Cmd.BATCH:
        ok = n == byte_size(BATCH_LAYOUT)
    elif cmd in (Cmd.WRITE, Cmd.EVENTS):
        rec = (byte_size(write_layout(info.addr_bytes, info.data_bytes)) if cmd is Cmd.WRITE
               else info.event_bytes)
        ok = n > 0 and n % rec == 0
    else:
        ok = n == 0
    return None if ok else (ErrorCode.LENGTH, n)


def error_payload(code: int, cmd: int = 0, detail: int = 0) -> bytes:
    return to_bytes(ERROR_LAYOUT, {"code": code, "cmd": cmd, "detail": min(detail, 0xFFFF)})


def parse_error(frame: Frame) -> BoardError:
    """The :class:`BoardError` of an error frame."""
    if frame.cmd != ERROR or len(frame.payload) != byte_size(ERROR_LAYOUT):
        raise FrameError(f"not an error frame: command 0x{frame.cmd:02x}, "
                         f"{len(frame.payload)} payload bytes")
    e = from_bytes(ERROR_LAYOUT, frame.payload)
    return BoardError(e["code"], e["cmd"], e["detail"], frame.seq)


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class LinkLayout:
    """Byte sizes of the engine's ports on the link, from the network."""

    layers: int
    classes: int
    n_out: int          # classes * voting output neurons
    count_bytes: int    # C: bytes per output spike count
    event_bytes: int    # E: bytes per event beat
    addr_bytes: int     # A: bytes of a memory address
    data_bytes: int     # D: bytes of a memory word
    select_bits: int
    addr_bits: int
    data_bits: int
    count_bits: int
    prediction_bits: int

    @property
    def write_record(self) -> int:
        return byte_size(write_layout(self.addr_bytes, self.data_bytes))

    @property
    def writes_per_frame(self) -> int:
        return MAX_PAYLOAD // self.write_record

    @property
    def events_per_frame(self) -> int:
        return MAX_PAYLOAD // self.event_bytes

    @property
    def result_bytes(self) -> int:
        return byte_size(result_layout(self.n_out, self.count_bytes))

    @property
    def perf_bytes(self) -> int:
        return byte_size(perf_layout(self.layers))


def _nbytes(bits: int) -> int:
    return max(1, -(-bits // 8))


def link_layout(engine) -> LinkLayout:
    """The :class:`LinkLayout` of an engine: a
    :class:`~spikeforge.hw.network.NetworkTop` or its
    :class:`~spikeforge.hw.network.EngineGeometry`."""
    g = getattr(engine, "geometry", engine)
    ml = g.mem_layout
    sel = ml["select"].shape.width
    addr = ml["addr"].shape.width
    dbits = ml["data"].shape.width
    cw = g.counts_layout.elem_shape.width
    pw = g.fmt.width
    spec = g.net.spec
    if sel > 8:
        raise ProtocolError(f"{sel} select bits do not fit the one-byte select field")
    if g.prediction_bits > 8:
        raise ProtocolError(f"{spec.classes} classes do not fit the one-byte prediction field")
    return LinkLayout(len(spec.layers), spec.classes, g.n_out, _nbytes(cw), _nbytes(pw),
                      _nbytes(addr), _nbytes(dbits), sel, addr, dbits, cw, g.prediction_bits)


def design_id(net, lanes, words=None) -> int:
    """CRC-32 of everything the bitstream fixes about a network (spec, integer
    widths, decay shifts, lanes, and the words when they are not whole lane
    groups: they lay out the weight memories): a board built for another
    network says so before weights are written into it."""
    import json
    layers = [[il.weight_bits, il.state_bits, il.acc_bits, il.input_bits,
               list(il.decay_shifts)] for il in net.layers]
    fixed = [net.spec.to_dict(), layers, list(lanes)] + ([] if words is None else [list(words)])
    text = json.dumps(fixed, sort_keys=True)
    return zlib.crc32(text.encode())


INFO = struct.Struct("<BBBHBBBHHIII")
#: The tail of the PING reply of a board with an image store: ``batch_beats``.
INFO_STORE = struct.Struct("<I")


@dataclass(frozen=True)
class BoardInfo:
    """The PING reply (``INFO``: ``<BBBHBBBHHIII``, 24 bytes, in field order;
    a board with an image store, ``batch_beats > 0``, appends ``INFO_STORE``:
    ``batch_beats u32``, 28 bytes in all)."""

    version: int
    layers: int
    classes: int
    n_out: int
    count_bytes: int
    event_bytes: int
    addr_bytes: int
    data_bytes: int
    max_payload: int
    clock_hz: int
    timeout_cycles: int
    design_id: int
    batch_beats: int = 0   # the image store's capacity in beats (0: no batch mode)

    def pack(self) -> bytes:
        head = INFO.pack(self.version, self.layers, self.classes, self.n_out, self.count_bytes,
                         self.event_bytes, self.addr_bytes, self.data_bytes, self.max_payload,
                         self.clock_hz, self.timeout_cycles, self.design_id)
        return head + (INFO_STORE.pack(self.batch_beats) if self.batch_beats else b"")

    @classmethod
    def unpack(cls, payload: bytes) -> "BoardInfo":
        if len(payload) not in (INFO.size, INFO.size + INFO_STORE.size):
            raise FrameError(f"PING reply of {len(payload)} bytes, expected {INFO.size} or "
                             f"{INFO.size + INFO_STORE.size}")
        store = INFO_STORE.unpack(payload[INFO.size:]) if len(payload) > INFO.size else (0,)
        return cls(*INFO.unpack(payload[:INFO.size]), *store)

    @property
    def timeout_s(self) -> float:
        return self.timeout_cycles / self.clock_hz


@dataclass(frozen=True)
class Result:
    """The RESULT reply."""

    done: bool
    clearing: bool
    prediction: int
    cycles: int
    counts: list[int] = field(default_factory=list)

    @classmethod
    def unpack(cls, payload: bytes, n_out: int, count_bytes: int) -> "Result":
        lay = result_layout(n_out, count_bytes)
        if len(payload) != byte_size(lay):
            raise FrameError(f"RESULT reply of {len(payload)} bytes, expected {byte_size(lay)}")
        r = from_bytes(lay, payload)
        return cls(bool(r["status"]["done"]), bool(r["status"]["clearing"]), r["prediction"],
                   r["cycles"], r["counts"])


@dataclass(frozen=True)
class BatchResult:
    """The BATCH reply: images run, board cycles, each image's class."""

    images: int
    cycles: int
    classes: list[int] = field(default_factory=list)

    @classmethod
    def unpack(cls, payload: bytes, images: int) -> "BatchResult":
        """The reply to a BATCH of ``images`` images."""
        lay = batch_reply_layout(images)
        if len(payload) != byte_size(lay):
            raise FrameError(f"BATCH reply of {len(payload)} bytes, expected {byte_size(lay)} "
                             f"for {images} images")
        r = from_bytes(lay, payload)
        if r["images"] != images:
            raise FrameError(f"BATCH reply for {r['images']} images, {images} were asked for")
        return cls(r["images"], r["cycles"], list(r["classes"]))


def pack_records(values: list[int], nbytes: int) -> list[bytes]:
    """Payloads of at most ``MAX_PAYLOAD`` bytes holding ``values`` as
    ``nbytes``-byte little-endian records (no record split between frames)."""
    per = MAX_PAYLOAD // nbytes
    out = []
    for s in range(0, len(values), per):
        out.append(b"".join(v.to_bytes(nbytes, "little") for v in values[s:s + per]))
    return out
