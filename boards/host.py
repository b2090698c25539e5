"""The host driver: one :class:`Board` class over a byte transport.

Transports (anything with ``write(bytes)``, ``read(n, timeout) -> bytes``
returning as soon as at least one byte is there or ``b""`` after ``timeout``
seconds, and ``now() -> seconds``):

* :class:`SerialTransport`: a real board's USB-serial port (pyserial);
* :class:`CocotbTransport`: the bit-level UART of a cocotb simulation (the
  driver runs in a :func:`cocotb.bridge` thread; time is simulated time).

The same :class:`Board` code drives both.  It talks stop-and-wait: one
request, then its reply (matched by command and sequence number).  Recovery:

* an error frame CRC, TIMEOUT or LENGTH over the maximum (a damaged length
  field) from the board means the request was not executed: it is sent again (up to ``retries`` times) after the line has been
  drained (silent for ``quiet`` seconds);
* no reply, or a reply that fails the host's own checks, is ambiguous:
  idempotent requests (PING, WRITE, START, RESULT, PERF) are sent again;
  EVENTS is not, and :meth:`Board.infer` starts the whole inference again
  (START resets the engine);
* DISCARDED notices (bytes the board dropped outside frames) are kept in
  :attr:`Board.notices`, never mistaken for a reply.

Batch mode (a board with an image store, ``batch_beats > 0`` in its PING
reply): :meth:`Board.batch` empties the store, LOADs the samples' event beats
(as few frames as they fit), runs BATCH and reads each image's class and the
board's cycle count; samples that do not fit one store (or one BATCH reply)
run as several batches.  LOAD is not idempotent: an ambiguous failure during
an upload starts the upload again from an empty store.  BATCH is (the store is
kept), so it is resent like RESULT.  :func:`batch_images` adds the weights and
the comparison with the golden model (``spikeforge infer --batch N``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from spikeforge.errors import SpikeforgeError
from spikeforge.layouts import byte_size, from_bytes, to_bytes

from . import protocol as P
from .protocol import BoardError, BoardInfo, Cmd, ErrorCode, FrameError, ProtocolError, Result

__all__ = ["Board", "Inference", "SerialTransport", "CocotbTransport", "LinkTimeout", "golden_counts",
           "BoardMismatch", "infer_run", "infer_images", "BoardResultMismatch", "BatchRun",
           "batch_images", "class_mismatches", "plan_batches"]


class LinkTimeout(ProtocolError):
    """No (complete) reply within the timeout."""


class BoardMismatch(ProtocolError):
    """The board's bitstream was built for another network or lane count."""


@dataclass(frozen=True)
class Inference:
    prediction: int
    counts: list[int]
    cycles: int


@dataclass(frozen=True)
class BatchRun:
    """What :meth:`Board.batch` measured: each image's class (input order),
    the board's cycles (summed over the batches), the transport time of the
    uploads and of the BATCH requests."""

    classes: list[int]
    cycles: int
    batches: int
    beats: int
    load_frames: int
    upload_seconds: float
    run_seconds: float
    clock_hz: int

    @property
    def board_seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def board_inferences_per_second(self) -> float | None:
        """Images / (board cycles / clock): the engine's rate on the board."""
        return len(self.classes) / self.board_seconds if self.cycles else None

    @property
    def wall_inferences_per_second(self) -> float | None:
        """Images / (upload + BATCH round trips): the rate the link allows."""
        t = self.upload_seconds + self.run_seconds
        return len(self.classes) / t if t > 0 else None


# --------------------------------------------------------------------------- transports


class SerialTransport:
    """A serial port (pyserial), 8N1 at ``baud``."""

    def __init__(self, port: str, baud: int = 1_000_000):
        try:
            import serial
        except ImportError:
            raise ProtocolError("pyserial is not installed: pip install pyserial") from None
        self._errors = (serial.SerialException, OSError)
        try:
            # every read and write has a deadline: nothing blocks forever
            self.ser = serial.Serial(port, baud, timeout=0.1, write_timeout=5.0)
        except (serial.SerialException, OSError, ValueError) as e:
            raise ProtocolError(f"cannot open serial port {port}: {e}") from None
        self.port = port

    def write(self, data: bytes) -> None:
        try:
            self.ser.write(data)
            self.ser.flush()
        except self._errors as e:  # SerialTimeoutException included
            raise LinkTimeout(f"cannot write to {self.port}: {e}") from None

    def read(self, n: int, timeout: float) -> bytes:
        try:
            self.ser.timeout = max(0.0, timeout)
            first = self.ser.read(1)
            if not first or n == 1:
                return first
            more = min(n - 1, self.ser.in_waiting)
            return first + (self.ser.read(more) if more else b"")
        except self._errors as e:
            raise ProtocolError(f"cannot read from {self.port}: {e}") from None

    def now(self) -> float:
        return time.monotonic()

    def close(self) -> None:
        self.ser.close()


class CocotbTransport:
    """The host end of a bit-level UART on simulated pins (cocotb).

    ``rx``: the DUT's receive pin (driven here, bit by bit, ``bit_ns`` per
    bit); ``tx``: its transmit pin (sampled in the middle of each bit by a
    monitor task).  Create it in the cocotb test, then call :class:`Board`
    methods from a ``cocotb.bridge`` thread: each transport call blocks that
    thread while the simulator runs.  ``corrupt(data)`` hooks let a test damage
    outgoing bytes.
    """

    def __init__(self, rx, tx, bit_ns: int):
        import cocotb
        from cocotb.triggers import Event

        if type(bit_ns) is not int or bit_ns < 2:
            raise ValueError(f"bit_ns must be an integer of at least 2, not {bit_ns!r}")
        self._rx, self._tx, self.bit_ns = rx, tx, bit_ns
        self._rx.value = 1
        self._bytes = bytearray()
        self._event = Event()
        self.frame_errors = 0
        self._task = cocotb.start_soon(self._monitor())
        from cocotb.task import resume
        self._write_b = resume(self._write)
        self._read_b = resume(self._read)
        self._now_b = resume(self._now)
        self._idle_b = resume(self._idle)

    async def _write(self, data: bytes) -> None:
        from cocotb.triggers import Timer
        bits = []
        for b in data:
            bits += [0] + [(b >> i) & 1 for i in range(8)] + [1]
        i = 0
        while i < len(bits):  # one timer per run of equal bits
            j = i
            while j < len(bits) and bits[j] == bits[i]:
                j += 1
            self._rx.value = bits[i]
            await Timer((j - i) * self.bit_ns, unit="ns")
            i = j

    async def _monitor(self) -> None:
        from cocotb.triggers import FallingEdge, Timer
        half = self.bit_ns // 2
        while True:
            await FallingEdge(self._tx)
            await Timer(half, unit="ns")
            if int(self._tx.value):
                continue  # glitch
            b = 0
            for i in range(8):
                await Timer(self.bit_ns, unit="ns")
                b |= int(self._tx.value) << i
            await Timer(self.bit_ns, unit="ns")
            if not int(self._tx.value):
                self.frame_errors += 1
            self._bytes.append(b)
            self._event.set()

    async def _read(self, n: int, timeout: float) -> bytes:
        import math

        from cocotb.triggers import First, Timer
        if not self._bytes and timeout > 0:
            self._event.clear()
            await First(self._event.wait(), Timer(max(1, math.ceil(timeout * 1e9)), unit="ns"))
        out = bytes(self._bytes[:n])
        del self._bytes[:n]
        return out

    async def _now(self) -> float:
        from cocotb.utils import get_sim_time
        return get_sim_time("ns") * 1e-9

    async def _idle(self, seconds: float) -> None:
        import math

        from cocotb.triggers import Timer
        await Timer(max(1, math.ceil(seconds * 1e9)), unit="ns")

    def write(self, data: bytes) -> None:
        self._write_b(bytes(data))

    def read(self, n: int, timeout: float) -> bytes:
        return self._read_b(n, timeout)

    def now(self) -> float:
        return self._now_b()

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass with the line idle."""
        self._idle_b(seconds)


# --------------------------------------------------------------------------- driver


def _not_executed(e: BoardError) -> bool:
    """Whether the error says a frame was damaged on the line (so it was not
    executed and may be sent again): CRC, TIMEOUT, or LENGTH over the maximum
    (a corrupted length field; LENGTH for a whole frame is the host's fault)."""
    return e.code in (ErrorCode.CRC, ErrorCode.TIMEOUT) or (
        e.code is ErrorCode.LENGTH and e.detail > P.MAX_PAYLOAD)


class Board:
    """Host driver of a board running the spikeforge bridge.

    Parameters
    ----------
    transport
        :class:`SerialTransport`, :class:`CocotbTransport` or alike.
    timeout : float
        Seconds to wait for a reply (transport time).
    retries : int
        Resends of a failed request (module docstring).
    quiet : float, optional
        Silence that ends a drain; default: twice the board's receive timeout
        (from PING), 0.2 s before the first PING.
    drain_limit : float
        Longest a drain waits for that silence (transport time): a line that
        never goes quiet (a device printing a log, a wrong baud rate) is a
        :class:`LinkTimeout`, not a hang.
    """

    def __init__(self, transport, *, timeout: float = 1.0, retries: int = 3,
                 quiet: float | None = None, drain_limit: float = 5.0):
        self.t = transport
        self.timeout = timeout
        self.retries = retries
        self._quiet = quiet
        self.drain_limit = drain_limit
        self._seq = 0
        self._parser = P.Parser()
        self._items: list = []
        self.info: BoardInfo | None = None
        self.net = None
        self.lanes: list[int] | None = None
        self.words: list[int] | None = None
        self._fmt = None
        self.notices: list = []
        self.resends = 0

    # ------------------------------------------------------------------ link

    @property
    def quiet(self) -> float:
        if self._quiet is not None:
            return self._quiet
        return 2 * self.info.timeout_s + 1e-3 if self.info else 0.2

    def drain(self) -> None:
        """Wait until the line has been silent for ``quiet`` seconds; forget
        partial input (notices in it are kept); :class:`LinkTimeout` when it is
        not silent within ``drain_limit`` seconds."""
        deadline = self.t.now() + max(self.drain_limit, 2 * self.quiet)
        while True:
            data = self.t.read(4096, self.quiet)
            if not data:
                break
            self._collect(self._parser.feed(data), strict=False)
            if self.t.now() > deadline:
                self._parser.reset()
                self._items.clear()
                raise LinkTimeout(f"the line did not go quiet for {self.quiet:g} s within "
                                  f"{max(self.drain_limit, 2 * self.quiet):g} s: a device that "
                                  "keeps sending, or a wrong baud rate?")
        self._collect(self._parser.expire(), strict=False)
        self._parser.reset()
        self._items.clear()

    def _collect(self, items: list, strict: bool = True) -> None:
        for it in items:
            if isinstance(it, ProtocolError) and it.code is ErrorCode.DISCARDED:
                self.notices.append(it)
            elif isinstance(it, P.Frame) and it.cmd == P.ERROR and len(it.payload) == 4 \
                    and it.payload[0] == ErrorCode.DISCARDED:
                self.notices.append(P.parse_error(it))
            elif strict:
                self._items.append(it)
            else:
                self.notices.append(it)

    def _await(self, cmd: int, seq: int, timeout: float | None = None) -> P.Frame:
        timeout = self.timeout if timeout is None else timeout
        deadline = self.t.now() + timeout
        while True:
            while self._items:
                it = self._items.pop(0)
                if isinstance(it, ProtocolError):
                    raise it
                if it.cmd == P.ERROR:
                    raise P.parse_error(it)
                if it.cmd == (cmd | P.REPLY) and it.seq == seq:
                    return it
                self.notices.append(it)  # a stale reply
            left = deadline - self.t.now()
            data = self.t.read(4096, left) if left > 0 else b""
            if not data:
                self._collect(self._parser.expire())
                if self._items:
                    continue
                raise LinkTimeout(f"no reply to {Cmd(cmd).name} within {timeout:g} s")
            self._collect(self._parser.feed(data))

    def request(self, cmd: Cmd, payload: bytes = b"", *, idempotent: bool = True,
                timeout: float | None = None) -> bytes:
        """Send one request and return its reply's payload (module docstring
        for the resend rules); ``timeout``: for this reply (default
        :attr:`timeout`)."""
        for attempt in range(self.retries + 1):
            self._seq = (self._seq + 1) & 0xFF
            self.t.write(P.encode(cmd, self._seq, payload))
            try:
                return self._await(cmd, self._seq, timeout).payload
            except BoardError as e:
                if not _not_executed(e) or attempt == self.retries:
                    raise
            except ProtocolError:
                if not idempotent or attempt == self.retries:
                    raise
            self.resends += 1
            self.drain()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ commands

    def ping(self) -> BoardInfo:
        """Drain the line, then ask the board what it is."""
        self.drain()
        self.info = BoardInfo.unpack(self.request(Cmd.PING))
        if self.info.version != P.VERSION:
            raise BoardMismatch(f"board speaks protocol version {self.info.version}, this host "
                                f"{P.VERSION}")
        return self.info

    def attach(self, net, lanes=None, words=None) -> None:
        """Use ``net`` with ``lanes`` (and ``words``, as built) on this board
        (checks the bitstream's design id, writes nothing: the bitstream's
        own weights are used, and an iCE40 build's weights in SPRAM and a
        ULX3S build's in its SDRAM, which no bitstream holds, stay empty until
        :meth:`load`).  ``lanes=None``:
        the one lane count for all layers whose design id the board reports."""
        from spikeforge.hw.network import lane_counts
        from spikeforge.hw.streams import EventFormat
        if self.info is None:
            self.ping()
        if lanes is None:
            top = min(l.out_channels for l in net.spec.layers)
            found = [p for p in range(1, top + 1)
                     if P.design_id(net, [p] * len(net.layers)) == self.info.design_id]
            lanes = found[0] if found else 1
        lanes = lane_counts(net, lanes)
        want = P.design_id(net, lanes, words)
        if self.info.design_id != want:
            raise BoardMismatch(
                f"the board's bitstream was built for another network (design id "
                f"0x{self.info.design_id:08x}, this network with lanes {lanes}: 0x{want:08x}); "
                "rebuild it with `spikeforge build` or load a matching weight image")
        self.net, self.lanes, self._fmt = net, lanes, EventFormat.for_network(net)
        self.words = None if words is None else list(words)

    def write_memory(self, select: int, words: list[int], addr: int = 0) -> None:
        """Write ``words`` into memory ``select`` from word ``addr`` on."""
        info = self._need_info()
        lay = P.write_layout(info.addr_bytes, info.data_bytes)
        per = P.MAX_PAYLOAD // byte_size(lay)
        for s in range(0, len(words), per):
            chunk = words[s:s + per]
            payload = b"".join(to_bytes(lay, {"select": select, "addr": addr + s + i, "data": w})
                               for i, w in enumerate(chunk))
            self.request(Cmd.WRITE, payload)

    def load(self, net, lanes=None, words=None) -> int:
        """Write every memory of ``net`` (:func:`spikeforge.image.memories`)
        into the board (``lanes``, ``words``: see :meth:`attach`); returns the
        number of words written."""
        from spikeforge import image
        self.attach(net, lanes, words)
        n = 0
        for i, (name, (_, words)) in enumerate(image.memories(net, self.lanes,
                                                              self.words).items()):
            self.write_memory(i, words)  # L0_weights, L0_neurons, L1_weights, ... = 0, 1, 2, ...
            n += len(words)
        return n

    def start(self) -> None:
        self.request(Cmd.START)

    def send_events(self, beats: list[int]) -> None:
        """Event beats (packed payloads) into the engine, in frames."""
        info = self._need_info()
        for payload in P.pack_records(beats, info.event_bytes):
            self.request(Cmd.EVENTS, payload, idempotent=False)

    def result(self) -> Result:
        info = self._need_info()
        return Result.unpack(self.request(Cmd.RESULT), info.n_out, info.count_bytes)

    def perf(self) -> list[dict]:
        """Per-layer performance counters of the last inference."""
        info = self._need_info()
        lay = P.perf_layout(info.layers)
        raw = self.request(Cmd.PERF)
        if len(raw) != byte_size(lay):
            raise FrameError(f"PERF reply of {len(raw)} bytes, expected {byte_size(lay)}")
        return from_bytes(lay, raw)

    def beats(self, frames) -> list[int]:
        """The packed event beats of one sample (uint8 ``[F, C, H, W]``)."""
        from spikeforge.hw.network import input_events
        if self.net is None:
            raise ProtocolError("no network: call load(net, lanes) or attach(net, lanes) first")
        f = self._fmt
        return [f.pack(e.channel, e.y, e.x, e.shift, int(e.last), e.mask)
                for e in input_events(self.net, frames)]

    def infer(self, frames, *, timeout: float | None = None) -> Inference:
        """One inference: START, the sample's events, then RESULT until done.
        A failure on the way starts it again (up to ``retries`` times)."""
        beats = self.beats(frames)
        limit = self.timeout * 10 if timeout is None else timeout
        for attempt in range(self.retries + 1):
            try:
                self.start()
                self.send_events(beats)
                deadline = self.t.now() + limit
                while True:
                    r = self.result()
                    if r.done:
                        return Inference(r.prediction, r.counts, r.cycles)
                    if self.t.now() > deadline:
                        raise LinkTimeout(f"the engine was not done {limit:g} s after the "
                                          "last event")
            except BoardError as e:
                if e.code in (ErrorCode.LENGTH, ErrorCode.UNKNOWN) and not _not_executed(e) \
                        or attempt == self.retries:
                    raise
            except ProtocolError:
                if attempt == self.retries:
                    raise
            self.resends += 1
            self.drain()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ batch mode

    def _need_store(self) -> BoardInfo:
        info = self._need_info()
        if not info.batch_beats:
            raise ProtocolError("the board has no image store (batch_beats = 0 in its PING "
                                "reply): build it with one, or infer without --batch")
        return info

    def store_clear(self) -> None:
        """Empty the board's image store (a LOAD without payload)."""
        self._need_store()
        n = self._store_reply(self.request(Cmd.LOAD))
        if n != 0:
            raise FrameError(f"the store holds {n} beats after emptying it")

    def store_load(self, beats: list[int]) -> tuple[int, int]:
        """Append event beats (packed payloads) to the store, as few LOAD
        frames as they fit; ``(beats in the store, frames sent)``.  Not resent
        on an ambiguous failure (see :meth:`batch`)."""
        info = self._need_store()
        frames, n = 0, None
        for payload in P.pack_records(beats, info.event_bytes):
            n = self._store_reply(self.request(Cmd.LOAD, payload, idempotent=False))
            frames += 1
        return n, frames

    @staticmethod
    def _store_reply(raw: bytes) -> int:
        if len(raw) != byte_size(P.STORE_LAYOUT):
            raise FrameError(f"LOAD reply of {len(raw)} bytes, expected "
                             f"{byte_size(P.STORE_LAYOUT)}")
        return from_bytes(P.STORE_LAYOUT, raw)["beats"]

    def run_batch(self, images: int, *, timeout: float | None = None) -> P.BatchResult:
        """BATCH: run the ``images`` stored images; their classes and the
        board's cycles.  ``timeout``: for the reply (default 10 x
        :attr:`timeout`: the board answers when the last result is in)."""
        self._need_store()
        payload = to_bytes(P.BATCH_LAYOUT, {"images": images})
        raw = self.request(Cmd.BATCH, payload,
                           timeout=self.timeout * 10 if timeout is None else timeout)
        return P.BatchResult.unpack(raw, images)

    def batch(self, samples, *, timeout: float | None = None) -> BatchRun:
        """Batch mode on uint8 samples ``[N, F, C, H, W]``: each batch's beats
        LOADed into the emptied store, then BATCH (module docstring); the
        classes in input order and the board's cycles summed."""
        info = self._need_store()
        beats = [self.beats(samples[i]) for i in range(samples.shape[0])]
        groups = plan_batches([len(b) for b in beats], info.batch_beats)
        classes: list[int] = []
        cycles = frames = 0
        up = run = 0.0
        for first, end in groups:
            flat = [w for b in beats[first:end] for w in b]
            for attempt in range(self.retries + 1):
                t0 = self.t.now()
                try:
                    self.store_clear()
                    n, k = self.store_load(flat)
                    if n != len(flat):
                        raise FrameError(f"the store holds {n} beats, {len(flat)} were loaded")
                    break
                except BoardError as e:
                    if not _not_executed(e) or attempt == self.retries:
                        raise
                except ProtocolError:
                    if attempt == self.retries:
                        raise
                finally:
                    up += self.t.now() - t0
                self.resends += 1
                self.drain()
            frames += k
            t1 = self.t.now()
            r = self.run_batch(end - first, timeout=timeout)
            run += self.t.now() - t1
            classes += r.classes
            cycles += r.cycles
        return BatchRun(classes, cycles, len(groups), sum(map(len, beats)), frames, up, run,
                        info.clock_hz)

    def _need_info(self) -> BoardInfo:
        if self.info is None:
            self.ping()
        return self.info


# --------------------------------------------------------------------------- CLI helper


def infer_run(run_dir: Path, port: str, images: int, *, baud: int = 1_000_000,
              board: str | None = None, transport=None, batch: bool = False) -> dict:
    """``spikeforge infer --port PORT RUN --images N``: load the run's weight
    image into the board at ``port``, play its first ``images`` test images,
    compare class and spike counts with the golden model; writes and returns
    ``RUN/board_infer.json``; raises :class:`BoardResultMismatch` (exit status
    1) when any image differs, :class:`ProtocolError` on a link failure.
    ``batch`` (``--batch N``): the images in batch mode instead
    (:func:`batch_images`: classes only, the board's own cycle count), written
    to ``RUN/board_batch.json``.

    The lane count comes from ``RUN/build/<board>/report.json`` (the build the
    board was flashed with: with ``board=None`` each build found is tried
    against the board's design id).  ``transport`` replaces the serial port
    (tests).
    """
    from spikeforge import image
    from spikeforge.sw import data as sfdata
    run_dir = Path(run_dir)
    img = run_dir / "weights.sfimg"
    if not img.exists():
        raise SpikeforgeError(f"{img} is missing: run `spikeforge quantize {run_dir}` first")
    net, meta = image.read_image(img)
    builds = sorted((run_dir / "build").glob("*/report.json"))
    if board is not None:
        builds = [b for b in builds if b.parent.name == board]
    if not builds:
        which = f"{board} " if board is not None else ""
        raise SpikeforgeError(f"no {which}build report under {run_dir / 'build'}: run "
                              f"`spikeforge build {run_dir} --board {board or '...'}` and flash "
                              "the board first")
    from spikeforge.flow import image_data
    dataset, seed = image_data(meta)
    ds = sfdata.load(dataset, seed=seed)
    if type(images) is not int or not 1 <= images <= len(ds.y_test):
        flag = "--batch" if batch else "--images"
        raise SpikeforgeError(f"{flag} must be in 1..{len(ds.y_test)} (the test images of "
                              f"{dataset}), not {images}")
    from spikeforge import files
    cands = [files.read_json(p) for p in builds]
    for p, c in zip(builds, cands):
        files.need(c, "lanes", files.POSITIVE_INTS, str(p))
    t = transport or SerialTransport(port, baud)
    try:
        b = Board(t)
        info = b.ping()
        match = [c for c in cands
                 if _design_id(net, c["lanes"], c.get("words")) == info.design_id]
        if not match:
            raise BoardMismatch(f"the board at {port} (design id 0x{info.design_id:08x}) runs "
                                f"none of the builds of {run_dir}: flash "
                                f"{run_dir / 'build' / '<board>'} first")
        rep = match[0]
        if batch:
            out = batch_images(b, net, rep["lanes"], ds.x_test[:images], ds.y_test[:images],
                               words=rep.get("words"))
        else:
            out = infer_images(b, net, rep["lanes"], ds.x_test[:images], ds.y_test[:images],
                               words=rep.get("words"))
    finally:
        if transport is None:
            t.close()
    out = {"board": rep.get("board"), "port": port, **out}
    if batch:
        (run_dir / "board_batch.json").write_text(json.dumps(out, indent=2))
        if out["class_mismatches"]:
            first = out["mismatches"][0]
            raise BoardResultMismatch(
                f"{out['class_mismatches']} of {images} classes differ from the golden model "
                f"(first: image {first['image']}, expected {first['expected']}, got "
                f"{first['got']}); see {run_dir / 'board_batch.json'}")
        return out
    (run_dir / "board_infer.json").write_text(json.dumps(out, indent=2))
    if out["counts_mismatches"] or out["class_mismatches"]:
        raise BoardResultMismatch(
            f"{max(out['counts_mismatches'], out['class_mismatches'])} of {images} images "
            f"differ from the golden model; see {run_dir / 'board_infer.json'}")
    return out


def _design_id(net, lanes, words=None) -> int | None:
    """The design id of ``net`` with ``lanes`` and ``words``; None for lanes
    it cannot take."""
    from spikeforge.hw.network import lane_counts
    try:
        return P.design_id(net, lane_counts(net, lanes), words)
    except SpikeforgeError:
        return None


def infer_images(b: Board, net, lanes, x, y=None, *, perf: bool = False, words=None) -> dict:
    """Load ``net`` into the board, infer uint8 samples ``x [N, F, C, H, W]``
    and compare each class and output count vector with the golden model
    (``perf``: also read each inference's per-layer counters)."""
    import torch

    from spikeforge.sw import golden
    t0 = b.t.now()
    loaded = b.load(net, lanes, words)
    load_s = b.t.now() - t0
    ref = golden.run(net, x)
    rows, t1 = [], b.t.now()
    for i in range(x.shape[0]):
        r = b.infer(x[i])
        rows.append({"prediction": r.prediction, "golden": int(ref.classes[i]),
                     "label": None if y is None else int(y[i]), "cycles": r.cycles,
                     "counts": r.counts, "counts_match": _counts_match(net, ref, i, r.counts)}
                    | ({"perf": b.perf()} if perf else {}))
    wall = b.t.now() - t1
    preds = torch.tensor([r["prediction"] for r in rows])
    n = x.shape[0]
    return {
        "images": n, "lanes": b.lanes, "words_loaded": loaded, "load_seconds": load_s,
        "class_mismatches": int((preds != ref.classes).sum()),
        "counts_mismatches": sum(not r["counts_match"] for r in rows),
        "board_accuracy": None if y is None else float((preds == y).float().mean()),
        "golden_accuracy": None if y is None else float((ref.classes == y).float().mean()),
        "cycles_per_inference": sum(r["cycles"] for r in rows) / n,
        "link_inferences_per_second": n / wall if wall > 0 else None,
        "resends": b.resends, "notices": len(b.notices), "per_image": rows,
    }


def plan_batches(sizes: list[int], capacity: int) -> list[tuple[int, int]]:
    """Images (their beat counts ``sizes``) grouped into batches ``(first,
    end)`` in order: each group's beats fit a store of ``capacity`` beats and
    at most :data:`~spikeforge.boards.protocol.MAX_BATCH_IMAGES` images."""
    groups, first, used = [], 0, 0
    for i, n in enumerate(sizes):
        if n > capacity:
            raise ProtocolError(f"image {i} has {n} event beats, the board's store holds "
                                f"{capacity}")
        if used + n > capacity or i - first == P.MAX_BATCH_IMAGES:
            groups.append((first, i))
            first, used = i, 0
        used += n
    if sizes:
        groups.append((first, len(sizes)))
    return groups


def class_mismatches(got: list[int], expected: list[int]) -> list[dict]:
    """Each image whose class differs: ``{"image", "expected", "got"}``."""
    if len(got) != len(expected):
        raise ProtocolError(f"{len(got)} classes from the board for {len(expected)} images")
    return [{"image": i, "expected": int(e), "got": int(g)}
            for i, (g, e) in enumerate(zip(got, expected)) if int(g) != int(e)]


def batch_images(b: Board, net, lanes, x, y=None, *, expected=None,
                 timeout: float | None = None, words=None) -> dict:
    """Load ``net`` into the board, run uint8 samples ``x [N, F, C, H, W]``
    in batch mode (:meth:`Board.batch`) and compare each class with the
    golden model's (``expected``: these classes instead); the board's rate
    (``N / (board cycles / clock)``) beside the rate with the upload."""
    import torch

    from spikeforge.sw import golden
    b._need_store()  # a board without a store says so before the weights go in
    t0 = b.t.now()
    loaded = b.load(net, lanes, words)
    load_s = b.t.now() - t0
    ref = golden.run(net, x)
    want = [int(c) for c in (ref.classes if expected is None else expected)]
    r = b.batch(x, timeout=timeout)
    bad = class_mismatches(r.classes, want)
    n = x.shape[0]
    preds = torch.tensor(r.classes)
    return {
        "images": n, "lanes": b.lanes, "words_loaded": loaded, "load_seconds": load_s,
        "batch_beats": b.info.batch_beats, "batches": r.batches, "beats": r.beats,
        "load_frames": r.load_frames, "board_cycles": r.cycles, "clock_hz": r.clock_hz,
        "board_seconds": r.board_seconds,
        "board_inferences_per_second": r.board_inferences_per_second,
        "upload_seconds": r.upload_seconds, "batch_seconds": r.run_seconds,
        "wall_inferences_per_second": r.wall_inferences_per_second,
        "class_mismatches": len(bad), "mismatches": bad,
        "board_accuracy": None if y is None else float((preds == y).float().mean()),
        "golden_accuracy": None if y is None else float((ref.classes == y).float().mean()),
        "resends": b.resends, "notices": len(b.notices),
        "classes": r.classes, "expected": want,
    }


class BoardResultMismatch(SpikeforgeError):
    """The board's results differ from the golden model (exit status 1)."""

    exit_status = 1


def _counts_match(net, ref, i: int, counts: list[int]) -> bool:
    """Whether the board's output counts equal the golden model's for sample ``i``."""
    return counts == golden_counts(net, ref, i)


def golden_counts(net, ref, i: int) -> list[int]:
    """The golden model's per-output-neuron counts for sample ``i`` (what the
    engine's ``counts`` holds): spike counts over T, or for STCB networks the
    value ``sum_t s[t] << (T-1-t)``."""
    from spikeforge.sw import golden
    n = net.spec.layers[-1].out_features
    T = net.spec.timesteps
    s = golden.unpack(ref.spikes[-1][:, i:i + 1], n)[:, 0].to("cpu").long()  # [T, n]
    if net.layers[0].stcb:
        v = sum(s[t] << (T - 1 - t) for t in range(T))
    else:
        v = s.sum(0)
    return [int(c) for c in v]
