"""Batch mode (LOAD / BATCH, the board's image store).

* The board top under Verilator, driven by the real host driver over the
  bit-level simulated UART (``sim/tb_board.py``'s ``batch`` scenario): the
  classes of images run back to back equal the golden model's, the board's
  cycle count against the engine's own counter and the images' latencies,
  the store's error frames and recovery, several batches, the EVENTS path
  afterwards.
* The board top (real engine, real bridge) in Amaranth's simulator with
  monitors on the engine's ports: the store feeds a beat every cycle the
  engine can take one, the board's cycle count is exactly the first beat to
  the last result; an STCB network gets a start and a clear pass between
  images.
"""

import pytest
import torch

from spikeforge.boards import protocol as P
from spikeforge.boards.host import class_mismatches, plan_batches
from spikeforge.hw.network import EventFormat, input_events
from spikeforge.hw.randnet import random_frames, random_network, random_stcb_network
from spikeforge.sim import tb_board
from spikeforge.sw import golden
from test_boards_units import DIV, recv_byte, send_bytes  # the same bit-level UART


def small_net():
    """A LIF network that builds fast: conv 2 + fc 4, T = 4, 10..18 beats an image."""
    return random_network(14, max_layers_conv=1, size=(6, 7), channels=(2, 3))


def static_frames(net, seeds):
    return torch.cat([random_frames(net, s)[:, :1] for s in seeds])


# golden classes 2 3 1 0 2 3 1 1 1 3 2 2 (every class), 154 beats
SEEDS = [30, 31, 32, 39, 33, 35, 37, 40, 42, 46, 36, 41]
STORE = 192          # the samples fit once; twice they take two batches


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    """One co-simulation of the ``batch`` scenario."""
    root = tmp_path_factory.mktemp("board_batch")
    net = small_net()
    frames = static_frames(net, SEEDS)
    bs = tb_board.build(net, 1, root, batch_beats=STORE)
    res = tb_board.run(bs, frames, root / "work", "batch")
    assert res["ok"], res.get("failure")
    return net, frames, res


def beat_counts(net, frames):
    return [len(input_events(net, frames[i])) for i in range(frames.shape[0])]


@pytest.mark.verilator
@pytest.mark.slow
def test_batch_classes_equal_the_golden_model(batch_run):
    net, frames, res = batch_run
    want = [int(c) for c in golden.run(net, frames).classes]
    assert sorted(set(want)) == list(range(net.spec.classes))  # the samples tell classes apart
    assert res["info"]["batch_beats"] == STORE and res["info"]["version"] == P.VERSION
    out = res["batch"]
    assert out["classes"] == want and out["expected"] == want
    assert out["class_mismatches"] == 0 and out["mismatches"] == []
    assert out["batches"] == 1 and out["images"] == len(SEEDS)
    beats = sum(beat_counts(net, frames))
    assert out["beats"] == beats and beats <= STORE
    assert out["load_frames"] == -(-beats * res["info"]["event_bytes"] // P.MAX_PAYLOAD)
    assert out["resends"] == 0 and res["notices"] == []
    # the driver's rates: the board's from its cycles, the link's with the upload
    clock = res["info"]["clock_hz"]
    assert out["board_inferences_per_second"] == pytest.approx(
        len(SEEDS) * clock / out["board_cycles"])
    assert out["wall_inferences_per_second"] == pytest.approx(
        len(SEEDS) / (out["upload_seconds"] + out["batch_seconds"]))
    assert out["board_inferences_per_second"] > out["wall_inferences_per_second"]


@pytest.mark.verilator
@pytest.mark.slow
def test_batch_cycles_are_sane(batch_run):
    net, frames, res = batch_run
    out = res["batch"]
    cycles = out["board_cycles"]
    # RESULT after the BATCH: the engine's own counter (first beat to its last
    # completion, before the argmax pipeline) and its last class
    after = res["after"]
    assert after["done"] and after["prediction"] == out["classes"][-1]
    assert 0 < cycles - after["cycles"] <= 8
    # each image alone (EVENTS, one START each): back to back is faster than
    # one after the other, and slower than the first image alone
    alone = [r["cycles"] for r in res["infer"]]
    assert [r["prediction"] for r in res["infer"]] == out["classes"]
    assert alone[0] < cycles < sum(alone)
    assert cycles >= out["beats"]  # at most a beat a cycle


@pytest.mark.verilator
@pytest.mark.slow
def test_store_errors_and_recovery(batch_run):
    net, frames, res = batch_run
    n = len(SEEDS)
    steps = res["steps"]
    stored = res["batch"]["beats"]
    # a LOAD that does not fit is refused whole; the same BATCH again is exact
    assert steps["overflow"] == {"error": "STORE", "cmd": P.Cmd.LOAD, "detail": stored}
    rerun = steps["rerun"]["value"]
    assert rerun["classes"] == res["batch"]["classes"]
    assert rerun["cycles"] == res["batch"]["board_cycles"] and rerun["images"] == n
    # up to the last beat fits; one more does not
    assert steps["fill"]["value"][0] == STORE
    assert steps["full"] == {"error": "STORE", "cmd": P.Cmd.LOAD, "detail": STORE}
    assert steps["rerun_full"]["value"]["classes"] == res["batch"]["classes"]
    assert steps["images_0"] == {"error": "RANGE", "cmd": P.Cmd.BATCH, "detail": 0}
    assert steps["images_over"] == {"error": "RANGE", "cmd": P.Cmd.BATCH,
                                    "detail": P.MAX_BATCH_IMAGES + 1}
    assert steps["batch_length"] == {"error": "LENGTH", "cmd": P.Cmd.BATCH, "detail": 3}
    e = res["info"]["event_bytes"]
    assert steps["load_length"] == {"error": "LENGTH", "cmd": P.Cmd.LOAD, "detail": e + 1}
    assert steps["empty"] == {"error": "STORE", "cmd": P.Cmd.BATCH, "detail": 0}
    # one image stored, two asked for: the watchdog ends the run after one result
    assert steps["too_many"] == {"error": "STALL", "cmd": P.Cmd.BATCH, "detail": 1}
    # more images than one store holds run as several batches
    want = [int(c) for c in golden.run(net, frames).classes]
    twice = res["twice"]
    assert twice["batches"] == 2 and twice["classes"] == want + want
    assert twice["beats"] == 2 * stored and twice["cycles"] > res["batch"]["board_cycles"]


@pytest.mark.verilator
@pytest.mark.slow
def test_the_comparison_reports_a_wrong_class(batch_run):
    net, frames, res = batch_run
    got = res["batch"]["classes"]
    wrong = list(res["batch"]["expected"])
    wrong[5] = (wrong[5] + 1) % net.spec.classes
    assert class_mismatches(got, wrong) == [{"image": 5, "expected": wrong[5], "got": got[5]}]
    assert class_mismatches(got, res["batch"]["expected"]) == []
    with pytest.raises(P.ProtocolError, match="11 classes from the board for 12 images"):
        class_mismatches(got[:-1], wrong)


def test_batches_fit_the_store_and_the_reply():
    assert plan_batches([3, 4, 2, 5, 2], 8) == [(0, 2), (2, 4), (4, 5)]
    assert plan_batches([3, 4, 2, 5, 1], 8) == [(0, 2), (2, 5)]  # 8 beats: full, fits
    assert plan_batches([8, 8], 8) == [(0, 1), (1, 2)]
    assert plan_batches([], 8) == []
    many = plan_batches([1] * (P.MAX_BATCH_IMAGES + 3), 1 << 20)
    assert many == [(0, P.MAX_BATCH_IMAGES), (P.MAX_BATCH_IMAGES, P.MAX_BATCH_IMAGES + 3)]
    with pytest.raises(P.ProtocolError, match="image 1 has 9 event beats"):
        plan_batches([2, 9], 8)


# --------------------------------------------------------------------------- Amaranth sim


async def recv_frame(ctx, pin, limit=200_000):
    async def byte():
        return await recv_byte(ctx, pin, DIV, limit)
    head = bytes([await byte() for _ in range(5)])
    rest = bytes([await byte() for _ in range(head[3] + (head[4] << 8) + 2)])
    return P.decode(head + rest)


def simulate_batch(net, lanes, frames, store: int) -> dict:
    """LOAD the samples' beats and BATCH them on the board top in Amaranth's
    simulator (the engine's weights: the power-up contents), watching the
    engine's ports every cycle."""
    from amaranth.sim import Simulator

    from spikeforge.boards.top import BoardTop, LinkConfig
    fmt = EventFormat.for_network(net)
    clock = 4_000_000
    top = BoardTop(net, lanes, clock_hz=clock, batch_beats=store,
                   link=LinkConfig(baud=clock // DIV, timeout_cycles=4000, stall_cycles=20_000))
    e, b = top.engine, top.bridge
    beats = [[fmt.pack(ev.channel, ev.y, ev.x, ev.shift, int(ev.last), ev.mask)
              for ev in input_events(net, frames[i])] for i in range(frames.shape[0])]
    width = top.info.event_bytes
    payload = b"".join(w.to_bytes(width, "little") for bs in beats for w in bs)
    total = len(payload) // width
    seen = {"takes": [], "results": [], "starts": [], "bubbles": []}
    replies = []

    async def bench(ctx):
        ctx.set(top.rx, 1)
        await ctx.tick().repeat(5)
        for seq, (cmd, pay) in enumerate([(P.Cmd.LOAD, payload),
                                          (P.Cmd.BATCH, len(beats).to_bytes(2, "little"))]):
            await send_bytes(ctx, top.rx, P.encode(cmd, seq, pay))
            replies.append(await recv_frame(ctx, top.tx))

    async def watch(ctx):
        cycle, paused = 0, False
        async for _, _, valid, ready, last, result, start, running in ctx.tick().sample(
                e.events.valid, e.events.ready, e.events.payload.last, e.result_valid,
                b.start, b.batch_running):
            if start:
                seen["starts"].append(cycle)
                paused = False
            if valid and ready:
                seen["takes"].append(cycle)
                paused = bool(last) and e.stcb  # STCB: the image's marker, a restart next
            elif ready and running and not paused and len(seen["takes"]) < total:
                seen["bubbles"].append(cycle)  # the engine could take a beat, none offered
            if result and running:
                seen["results"].append(cycle)
            cycle += 1

    sim = Simulator(top)
    sim.add_clock(1 / clock)
    sim.add_testbench(bench)
    sim.add_process(watch)
    sim.run()
    load, batch = replies
    assert load.cmd == P.Cmd.LOAD | P.REPLY and load.payload == total.to_bytes(4, "little")
    assert batch.cmd == P.Cmd.BATCH | P.REPLY, P.parse_error(batch)
    return {"batch": P.BatchResult.unpack(batch.payload, len(beats)), "total": total, **seen}


def test_the_store_feeds_a_beat_every_cycle_and_the_count_is_exact():
    net = small_net()
    frames = static_frames(net, [30, 31, 39])  # golden classes 2, 3, 0
    want = [int(c) for c in golden.run(net, frames).classes]
    assert want == [2, 3, 0]
    s = simulate_batch(net, 1, frames, 64)
    r = s["batch"]
    assert r.classes == want and r.images == 3
    assert len(s["takes"]) == s["total"] and len(s["results"]) == 3
    assert s["bubbles"] == []          # never a cycle the engine waited for the store
    assert len(s["starts"]) == 1       # LIF: one start, the images back to back
    # the board's count: the first beat taken to the last result, both included
    assert r.cycles == s["results"][-1] - s["takes"][0] + 1
    interval = (s["results"][-1] - s["results"][0]) / 2
    assert r.cycles >= interval * 2


def test_stcb_batch_restarts_the_engine_between_images():
    """An STCB network does not take images back to back: the bridge waits
    for each image's result, pulses start and waits out the clear pass."""
    net = random_stcb_network(8, size=(5, 6))  # conv 3, fc 4, T = 3
    frames = static_frames(net, [30, 34, 37])  # golden classes 3, 0, 2
    want = [int(c) for c in golden.run(net, frames).classes]
    assert want == [3, 0, 2]
    s = simulate_batch(net, 1, frames, 128)
    r = s["batch"]
    assert r.classes == want
    assert len(s["takes"]) == s["total"] and s["bubbles"] == []
    # the BATCH's start, then one after each image's result but the last
    assert len(s["starts"]) == 3
    assert s["results"][0] < s["starts"][1] < s["results"][1] < s["starts"][2]
    assert r.cycles == s["results"][-1] - s["takes"][0] + 1


def test_a_bridge_without_a_store_does_not_have_the_commands():
    """batch_beats = 0: LOAD and BATCH are UNKNOWN, the PING reply is the
    24-byte one; the bridge alone (the testbench plays the engine)."""
    from amaranth.sim import Simulator

    from spikeforge.boards.bridge import HostBridge
    from spikeforge.hw.network import engine_geometry
    bridge = HostBridge(engine_geometry(small_net(), 1), divisor=DIV, clock_hz=1_000_000,
                        timeout_cycles=400, stall_cycles=50)
    assert not hasattr(bridge, "result_valid")  # nothing of batch mode is built
    replies = []

    async def bench(ctx):
        ctx.set(bridge.rx, 1)
        await ctx.tick().repeat(5)
        for seq, (cmd, pay) in enumerate([(P.Cmd.PING, b""), (P.Cmd.LOAD, bytes(4)),
                                          (P.Cmd.BATCH, bytes([1, 0]))]):
            await send_bytes(ctx, bridge.rx, P.encode(cmd, seq, pay))
            replies.append(await recv_frame(ctx, bridge.tx))

    sim = Simulator(bridge)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    ping, load, batch = replies
    assert len(ping.payload) == P.INFO.size and P.BoardInfo.unpack(ping.payload).batch_beats == 0
    for f, cmd in ((load, P.Cmd.LOAD), (batch, P.Cmd.BATCH)):
        e = P.parse_error(f)
        assert (e.code, e.cmd) == (P.ErrorCode.UNKNOWN, cmd)
