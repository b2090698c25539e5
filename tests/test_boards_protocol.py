"""The host protocol (spikeforge.boards.protocol) and the host driver's
recovery rules (spikeforge.boards.host.Board) against a Python stand-in board.
The RTL bridge is checked against the same rules in test_boards_sim.py."""

import binascii
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikeforge.boards import protocol as P
from spikeforge.boards.host import Board, LinkTimeout
from spikeforge.errors import SpikeforgeError

INFO = P.BoardInfo(P.VERSION, 2, 4, 4, 1, 2, 2, 4, P.MAX_PAYLOAD, 100_000_000, 4000, 0x1234)


# --------------------------------------------------------------------------- CRC, framing


def test_crc16_known_values():
    # CRC-16/CCITT-FALSE check value, and the empty message
    assert P.crc16(b"123456789") == 0x29B1
    assert P.crc16(b"") == 0xFFFF
    # an independent implementation (binascii's CRC-CCITT with init 0xFFFF)
    for data in (b"\x00", b"\xff" * 7, bytes(range(256))):
        assert P.crc16(data) == binascii.crc_hqx(data, 0xFFFF)


def test_ping_frame_by_hand():
    # SYNC, CMD=1, SEQ=0x2a, LEN=0 (LE), CRC over 01 2a 00 00, little-endian
    crc = binascii.crc_hqx(b"\x01\x2a\x00\x00", 0xFFFF)
    assert P.encode(P.Cmd.PING, 0x2A) == bytes([0xA5, 0x01, 0x2A, 0x00, 0x00, crc & 0xFF, crc >> 8])
    assert P.encode(P.Cmd.PING, 0x2A) == bytes.fromhex("a5012a0000") + struct.pack("<H", crc)
    f = P.encode(P.Cmd.EVENTS, 3, b"\x01\x02\x03")
    assert f[:5] == bytes([0xA5, 0x03, 0x03, 0x03, 0x00]) and f[5:8] == b"\x01\x02\x03"
    assert struct.unpack("<H", f[8:])[0] == P.crc16(f[1:8])


@settings(max_examples=60, deadline=None)
@given(cmd=st.integers(0, 255), seq=st.integers(0, 255),
       payload=st.binary(max_size=P.MAX_PAYLOAD))
def test_round_trip(cmd, seq, payload):
    assert P.decode(P.encode(cmd, seq, payload)) == P.Frame(cmd, seq, payload)


@pytest.mark.parametrize("n", [0, 1, P.MAX_PAYLOAD - 1, P.MAX_PAYLOAD])
def test_round_trip_sizes(n):
    payload = bytes((i * 7) & 0xFF for i in range(n))
    assert P.decode(P.encode(P.Cmd.WRITE, 200, payload)).payload == payload


def test_encode_refuses_bad_fields():
    with pytest.raises(P.ProtocolError) as e:
        P.encode(P.Cmd.EVENTS, 0, bytes(P.MAX_PAYLOAD + 1))
    assert e.value.code is P.ErrorCode.LENGTH and isinstance(e.value, SpikeforgeError)
    for cmd, seq in ((256, 0), (0, -1), (1, 300), ("x", 0)):
        with pytest.raises(P.ProtocolError):
            P.encode(cmd, seq)


# --------------------------------------------------------------------------- corruption


def _expected_codes(frame: bytes, pos: int, flipped: int) -> set:
    """Which error a single corrupted byte at ``pos`` may give."""
    if pos == 0:
        return {P.ErrorCode.DISCARDED}       # no SYNC: all bytes are outside a frame
    if pos in (3, 4):                        # the length field
        n = flipped if pos == 3 else frame[3] | flipped << 8
        n = (n if pos == 4 else n | frame[4] << 8)
        if n > P.MAX_PAYLOAD:
            return {P.ErrorCode.LENGTH}
        old = frame[3] | frame[4] << 8
        return {P.ErrorCode.TIMEOUT} if n > old else {P.ErrorCode.CRC}
    return {P.ErrorCode.CRC}


def test_every_single_bit_flip_is_caught():
    frame = P.encode(P.Cmd.WRITE, 0x11, bytes(range(1, 41)))  # no 0xA5 inside
    for pos in range(len(frame)):
        for bit in range(8):
            bad = bytearray(frame)
            bad[pos] ^= 1 << bit
            with pytest.raises(P.FrameError) as e:
                P.decode(bytes(bad))
            assert e.value.code in _expected_codes(frame, pos, bad[pos]), (pos, bit, e.value)


def test_every_truncation_is_a_timeout():
    frame = P.encode(P.Cmd.EVENTS, 1, b"\x10\x20\x30\x40")
    for n in range(1, len(frame)):
        with pytest.raises(P.FrameError) as e:
            P.decode(frame[:n])
        assert e.value.code is P.ErrorCode.TIMEOUT, n
    with pytest.raises(P.FrameError):
        P.decode(b"")


def test_length_over_maximum_is_reported_at_the_header():
    p = P.Parser()
    out = p.feed(bytes([P.SYNC, P.Cmd.EVENTS, 0]) + (P.MAX_PAYLOAD + 1).to_bytes(2, "little"))
    assert len(out) == 1 and out[0].code is P.ErrorCode.LENGTH
    assert out[0].detail == P.MAX_PAYLOAD + 1
    # what follows is outside a frame until the next SYNC
    assert p.feed(b"\x00\x01\x02") == []
    rest = p.expire()
    assert [e.code for e in rest] == [P.ErrorCode.DISCARDED] and "3 bytes" in str(rest[0])


def test_unknown_command_and_bad_lengths_by_the_board_rules():
    ok = P.Frame(P.Cmd.PING, 1)
    assert P.check_request(ok, INFO) is None
    assert P.check_request(P.Frame(0x42, 1), INFO) == (P.ErrorCode.UNKNOWN, 0)
    assert P.check_request(P.Frame(P.Cmd.START, 1, b"x"), INFO) == (P.ErrorCode.LENGTH, 1)
    rec = 1 + INFO.addr_bytes + INFO.data_bytes
    assert P.check_request(P.Frame(P.Cmd.WRITE, 1, bytes(2 * rec)), INFO) is None
    assert P.check_request(P.Frame(P.Cmd.WRITE, 1, bytes(rec + 1)), INFO) == \
        (P.ErrorCode.LENGTH, rec + 1)
    assert P.check_request(P.Frame(P.Cmd.EVENTS, 1, b""), INFO) == (P.ErrorCode.LENGTH, 0)
    assert P.check_request(P.Frame(P.Cmd.EVENTS, 1, bytes(3)), INFO) == (P.ErrorCode.LENGTH, 3)


def test_resync_after_junk_and_corruption():
    good1, good2 = P.encode(P.Cmd.PING, 1), P.encode(P.Cmd.RESULT, 2)
    bad = bytearray(P.encode(P.Cmd.START, 3))
    bad[-1] ^= 0x80
    p = P.Parser()
    out = p.feed(b"\x00junk" + good1 + bytes(bad) + good2)
    assert out[0] == P.Frame(P.Cmd.PING, 1)
    assert isinstance(out[1], P.FrameError) and out[1].code is P.ErrorCode.CRC
    assert out[2] == P.Frame(P.Cmd.RESULT, 2)
    assert [e.code for e in p.expire()] == [P.ErrorCode.DISCARDED]
    # a truncated frame is dropped when the line goes idle; the next frame decodes
    p.feed(good1[:4])
    assert [e.code for e in p.expire()] == [P.ErrorCode.TIMEOUT]
    assert p.feed(good2) == [P.Frame(P.Cmd.RESULT, 2)]


@settings(max_examples=80, deadline=None)
@given(junk=st.binary(max_size=64), payload=st.binary(max_size=64))
def test_any_garbage_then_idle_then_a_frame_decodes(junk, payload):
    p = P.Parser()
    p.feed(junk)
    p.expire()  # the receive timeout: whatever partial frame is dropped
    frame = P.Frame(P.Cmd.EVENTS, 9, payload)
    assert p.feed(P.encode(frame.cmd, frame.seq, frame.payload)) == [frame]


# --------------------------------------------------------------------------- payloads


def test_payload_structs():
    assert P.BoardInfo.unpack(INFO.pack()) == INFO and len(INFO.pack()) == P.INFO.size == 24
    with pytest.raises(P.FrameError):
        P.BoardInfo.unpack(INFO.pack()[:-1])
    raw = bytes([0b01, 3]) + (12345).to_bytes(4, "little") + bytes([0, 2, 0, 7])
    r = P.Result.unpack(raw, 4, 1)
    assert (r.done, r.clearing, r.prediction, r.cycles, r.counts) == (True, False, 3, 12345,
                                                                      [0, 2, 0, 7])
    with pytest.raises(P.FrameError):
        P.Result.unpack(raw, 5, 1)
    e = P.parse_error(P.Frame(P.ERROR, 4, P.error_payload(P.ErrorCode.CRC, P.Cmd.WRITE, 9)))
    assert (e.code, e.cmd, e.detail, e.seq) == (P.ErrorCode.CRC, P.Cmd.WRITE, 9, 4)
    assert "CRC" in str(e) and "WRITE" in str(e)
    n = P.MAX_PAYLOAD // 2 + 44  # one full frame of 2-byte records and 44 records more
    chunks = P.pack_records(list(range(n)), 2)
    assert [len(c) for c in chunks] == [P.MAX_PAYLOAD, 88]
    assert b"".join(chunks) == b"".join(v.to_bytes(2, "little") for v in range(n))


# --------------------------------------------------------------------------- driver


class FakeBoard:
    """A transport that answers like the bridge (Python stand-in, no engine):
    WRITE records are kept, EVENTS beats counted, RESULT is done after START
    and at least one EVENTS frame.  ``faults``: a list of (request number,
    kind) with kind "corrupt_request", "drop_reply" or "corrupt_reply"."""

    def __init__(self, faults=()):
        self.parser = P.Parser()
        self.out = bytearray()
        self.time = 0.0
        self.n = 0
        self.faults = dict(faults)
        self.writes, self.beats, self.started = [], 0, False
        self.frames_seen = []

    def now(self):
        return self.time

    def write(self, data):
        fault = self.faults.get(self.n)
        self.n += 1
        data = bytearray(data)
        if fault == "corrupt_request":
            data[-1] ^= 0x04  # the CRC
        elif fault == "corrupt_length":
            data[4] ^= 0x04   # LEN high byte: over the maximum
        for item in self.parser.feed(bytes(data)):
            if isinstance(item, P.FrameError):
                self._send(P.ERROR, 0, P.error_payload(item.code, 0, item.detail))
                continue
            self.frames_seen.append(item.cmd)
            reply = self._execute(item)
            if fault == "drop_reply":
                continue
            start = len(self.out)
            self._send(*reply)
            if fault == "corrupt_reply":
                self.out[start + 5 if len(self.out) > start + 7 else start + 1] ^= 0x01

    def _send(self, cmd, seq, payload=b""):
        self.out += P.encode(cmd, seq, payload)

    def _execute(self, f):
        err = P.check_request(f, INFO)
        if err:
            return P.ERROR, f.seq, P.error_payload(err[0], f.cmd, err[1])
        if f.cmd == P.Cmd.PING:
            return f.cmd | P.REPLY, f.seq, INFO.pack()
        if f.cmd == P.Cmd.WRITE:
            self.writes.append(f.payload)
        elif f.cmd == P.Cmd.START:
            self.started, self.beats = True, 0
        elif f.cmd == P.Cmd.EVENTS:
            self.beats += len(f.payload) // INFO.event_bytes
        elif f.cmd == P.Cmd.RESULT:
            done = self.started and self.beats > 0
            return (f.cmd | P.REPLY, f.seq,
                    bytes([int(done), 1]) + self.beats.to_bytes(4, "little") + bytes([1, 2, 3, 4]))
        elif f.cmd == P.Cmd.PERF:
            return f.cmd | P.REPLY, f.seq, bytes(INFO.layers * 24)
        return f.cmd | P.REPLY, f.seq, b""

    def read(self, n, timeout):
        if not self.out:
            self.time += timeout
            if self.parser.in_frame or self.parser.discarded:  # the board's receive timeout
                for e in self.parser.expire():
                    self._send(P.ERROR, 0, P.error_payload(e.code, 0, e.detail))
            return b""
        data, self.out = bytes(self.out[:n]), self.out[n:]
        return data


def test_driver_commands_on_a_clean_link():
    fb = FakeBoard()
    b = Board(fb, timeout=0.5, quiet=0.01)
    assert b.ping() == INFO
    b.write_memory(3, [1, 2, 3], addr=10)
    rec = fb.writes[0]
    assert rec[:7] == bytes([3]) + (10).to_bytes(2, "little") + (1).to_bytes(4, "little")
    b.start()
    per = P.MAX_PAYLOAD // 2  # 2 bytes each
    b.send_events(list(range(2 * per + 88)))  # -> 3 frames
    assert fb.beats == 2 * per + 88 and fb.frames_seen.count(P.Cmd.EVENTS) == 3
    r = b.result()
    assert r.done and r.prediction == 1 and r.cycles == 2 * per + 88 and r.counts == [1, 2, 3, 4]
    assert len(b.perf()) == INFO.layers and b.resends == 0


@pytest.mark.parametrize("kind", ["corrupt_request", "corrupt_length"])
def test_driver_resends_a_request_the_board_rejected(kind):
    fb = FakeBoard(faults=[(1, kind)])  # request 0 is the PING
    b = Board(fb, timeout=0.5, quiet=0.01)
    b.ping()
    b.start()  # CRC / LENGTH error from the board, then resent
    assert b.resends == 1 and fb.started


def test_driver_resends_after_a_lost_or_bad_reply():
    for kind in ("drop_reply", "corrupt_reply"):
        fb = FakeBoard(faults=[(1, kind)])
        b = Board(fb, timeout=0.5, quiet=0.01)
        b.ping()
        assert b.result().counts == [1, 2, 3, 4] and b.resends == 1


def test_events_are_not_resent_blindly():
    # a lost EVENTS reply is ambiguous: the request fails rather than risk
    # feeding the events twice; Board.infer restarts from START instead
    fb = FakeBoard(faults=[(2, "drop_reply")])
    b = Board(fb, timeout=0.5, quiet=0.01)
    b.ping()
    b.start()
    with pytest.raises(LinkTimeout):
        b.send_events([1, 2, 3])
    assert fb.beats == 3 and b.resends == 0


def test_driver_gives_up_after_retries():
    fb = FakeBoard(faults=[(i, "drop_reply") for i in range(1, 10)])
    b = Board(fb, timeout=0.1, retries=2, quiet=0.01)
    b.ping()
    with pytest.raises(LinkTimeout) as e:
        b.start()
    assert b.resends == 2 and isinstance(e.value, SpikeforgeError)


def test_board_error_codes_that_are_not_retried():
    fb = FakeBoard()
    b = Board(fb, timeout=0.5, quiet=0.01)
    b.ping()
    with pytest.raises(P.BoardError) as e:
        b.request(0x42)
    assert e.value.code is P.ErrorCode.UNKNOWN and b.resends == 0
    with pytest.raises(P.BoardError) as e:
        b.request(P.Cmd.START, b"x")
    assert e.value.code is P.ErrorCode.LENGTH


# --------------------------------------------------------------------------- batch mode


def test_batch_payloads_round_trip():
    import dataclasses

    from spikeforge.layouts import byte_size, from_bytes, to_bytes
    store = dataclasses.replace(INFO, batch_beats=16384)
    raw = store.pack()
    assert len(raw) == P.INFO.size + P.INFO_STORE.size == 28 and raw[:24] == INFO.pack()
    assert raw[24:] == (16384).to_bytes(4, "little")
    assert P.BoardInfo.unpack(raw) == store and P.BoardInfo.unpack(INFO.pack()).batch_beats == 0
    with pytest.raises(P.FrameError):
        P.BoardInfo.unpack(raw[:-1])
    assert to_bytes(P.STORE_LAYOUT, {"beats": 300}) == (300).to_bytes(4, "little")
    assert to_bytes(P.BATCH_LAYOUT, {"images": 258}) == bytes([2, 1])
    lay = P.batch_reply_layout(3)
    raw = to_bytes(lay, {"images": 3, "cycles": 123456, "classes": [2, 0, 9]})
    assert raw == bytes([3, 0]) + (123456).to_bytes(4, "little") + bytes([2, 0, 9])
    assert from_bytes(lay, raw)["classes"] == [2, 0, 9]
    assert P.BatchResult.unpack(raw, 3) == P.BatchResult(3, 123456, [2, 0, 9])
    with pytest.raises(P.FrameError, match="9 bytes, expected 8 for 2 images"):
        P.BatchResult.unpack(raw, 2)
    with pytest.raises(P.FrameError, match="for 2 images, 3 were asked"):
        P.BatchResult.unpack(bytes([2, 0]) + raw[2:], 3)
    # the largest BATCH's classes fill one reply
    assert byte_size(P.batch_reply_layout(P.MAX_BATCH_IMAGES)) == P.MAX_PAYLOAD
    assert P.MAX_BATCH_IMAGES == 1018


def test_batch_requests_by_the_board_rules():
    import dataclasses
    store = dataclasses.replace(INFO, batch_beats=64)
    e = INFO.event_bytes
    assert P.check_request(P.Frame(P.Cmd.LOAD, 1), store) is None  # empties the store
    assert P.check_request(P.Frame(P.Cmd.LOAD, 1, bytes(3 * e)), store) is None
    assert P.check_request(P.Frame(P.Cmd.LOAD, 1, bytes(e + 1)), store) == \
        (P.ErrorCode.LENGTH, e + 1)
    assert P.check_request(P.Frame(P.Cmd.BATCH, 1, bytes(2)), store) is None
    assert P.check_request(P.Frame(P.Cmd.BATCH, 1, b"\x01"), store) == (P.ErrorCode.LENGTH, 1)
    # a board without a store does not have the commands
    for cmd in (P.Cmd.LOAD, P.Cmd.BATCH):
        assert P.check_request(P.Frame(cmd, 1, bytes(2)), INFO) == (P.ErrorCode.UNKNOWN, 0)


class FakeStoreBoard(FakeBoard):
    """FakeBoard with an image store (Python stand-in of the bridge's LOAD /
    BATCH rules): BATCH replies ``cycles`` = the beats stored, and class ``i %
    classes`` for image ``i``, so a test sees what the store held."""

    def __init__(self, info, faults=()):
        super().__init__(faults)
        self.info = info
        self.store: list[bytes] = []

    def _execute(self, f):
        from spikeforge.layouts import from_bytes, to_bytes
        if f.cmd == P.Cmd.PING:
            return f.cmd | P.REPLY, f.seq, self.info.pack()
        if f.cmd not in (P.Cmd.LOAD, P.Cmd.BATCH):
            return super()._execute(f)
        err = P.check_request(f, self.info)
        if err:
            return P.ERROR, f.seq, P.error_payload(err[0], f.cmd, err[1])
        if f.cmd == P.Cmd.LOAD:
            e = self.info.event_bytes
            recs = [f.payload[i:i + e] for i in range(0, len(f.payload), e)]
            if not recs:
                self.store = []
            elif len(self.store) + len(recs) > self.info.batch_beats:
                return P.ERROR, f.seq, P.error_payload(P.ErrorCode.STORE, f.cmd, len(self.store))
            self.store += recs
            return f.cmd | P.REPLY, f.seq, to_bytes(P.STORE_LAYOUT, {"beats": len(self.store)})
        n = from_bytes(P.BATCH_LAYOUT, f.payload)["images"]
        return f.cmd | P.REPLY, f.seq, to_bytes(P.batch_reply_layout(n), {
            "images": n, "cycles": len(self.store),
            "classes": [i % self.info.classes for i in range(n)]})


def test_driver_batch_reloads_after_a_lost_load_reply_and_resends_batch():
    from spikeforge.boards.top import board_info
    from spikeforge.hw.randnet import random_frames, random_network
    net = random_network(3)
    import torch
    frames = torch.cat([random_frames(net, s)[:, :1] for s in (31, 32, 33, 34)])
    info = board_info(net, 2, clock_hz=1e8, batch_beats=120)
    sizes = [46, 47, 35, 47]  # beats: (46 + 47) and (35 + 47) fit the store of 120
    # requests: 0 PING, 1 LOAD (empty), 2 LOAD (its reply lost: the upload
    # starts again), 3 LOAD (empty), 4 LOAD, 5 BATCH, 6 LOAD (empty), 7 LOAD,
    # 8 BATCH (its reply lost: resent)
    fb = FakeStoreBoard(info, faults=[(2, "drop_reply"), (8, "drop_reply")])
    b = Board(fb, timeout=0.5, quiet=0.01)
    assert b.ping().batch_beats == 120
    b.attach(net, 2)
    assert [len(b.beats(frames[i])) for i in range(4)] == sizes
    run = b.batch(frames)
    assert run.batches == 2 and run.classes == [0, 1, 0, 1]
    assert run.cycles == sum(sizes)  # each batch's store held its beats once
    assert run.beats == sum(sizes) and run.load_frames == 2 and b.resends == 2
    assert fb.frames_seen.count(P.Cmd.BATCH) == 3
    assert run.board_inferences_per_second == pytest.approx(4 / (sum(sizes) / 1e8))
    # a store one beat short of an image: refused before anything is sent
    small = board_info(net, 2, clock_hz=1e8, batch_beats=46)
    b = Board(FakeStoreBoard(small), timeout=0.5, quiet=0.01)
    b.attach(net, 2)
    with pytest.raises(P.ProtocolError, match="image 1 has 47 event beats"):
        b.batch(frames)
    # a board without a store says so
    b = Board(FakeStoreBoard(board_info(net, 2, clock_hz=1e8)), timeout=0.5, quiet=0.01)
    b.attach(net, 2)
    with pytest.raises(P.ProtocolError, match="no image store"):
        b.batch(frames)
