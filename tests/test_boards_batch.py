"""Batch mode (LOAD / BATCH, the board's image store): the board top under
Verilator driven by the real host driver over the bit-level simulated UART
(classes equal to the golden model's for images run back to back, the
board's cycle count against the engine's own streaming co-simulation, the
store's error frames and recovery), and the STCB path (a start and a clear
pass between images) in Amaranth's simulator with the real engine."""

import pytest
import torch

from spikeforge.boards import protocol as P
from spikeforge.boards.host import class_mismatches, plan_batches
from spikeforge.hw.network import EventFormat, input_events
from spikeforge.hw.randnet import random_frames, random_network, random_stcb_network
from spikeforge.sim import tb_board
from spikeforge.sw import golden

STORE = 512          # beats: the samples (~390) fit once, twice they do not
SEEDS = [36, 33, 46, 31, 37, 41, 53, 30]  # golden classes 1 0 3 2 0 1 0 2: every class


def static_frames(net, seeds):
    return torch.cat([random_frames(net, s)[:, :1] for s in seeds])


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    """One co-simulation of the ``batch`` scenario, and the same images
    through the engine alone, streamed by the Verilator harness."""
    from spikeforge.sim import runner
    root = tmp_path_factory.mktemp("board_batch")
    net = random_network(3)
    frames = static_frames(net, SEEDS)
    bs = tb_board.build(net, 2, root, batch_beats=STORE)
    res = tb_board.run(bs, frames, root / "work", "batch")
    assert res["ok"], res.get("failure")
    sb = runner.build(net, 2, root, stream=True, depth=1024)
    eng = runner.run(sb, frames, root / "engine")
    return net, frames, res, eng


@pytest.mark.verilator
@pytest.mark.slow
def test_batch_classes_equal_the_golden_model(batch_run):
    net, frames, res, _ = batch_run
    ref = golden.run(net, frames)
    want = [int(c) for c in ref.classes]
    assert sorted(set(want)) == list(range(net.spec.classes))  # the samples tell classes apart
    assert res["info"]["batch_beats"] == STORE and res["info"]["version"] == P.VERSION
    out = res["batch"]
    assert out["classes"] == want and out["expected"] == want
    assert out["class_mismatches"] == 0 and out["mismatches"] == []
    assert out["batches"] == 1 and out["images"] == len(SEEDS)
    beats = sum(len(input_events(net, frames[i])) for i in range(len(SEEDS)))
    assert out["beats"] == beats and beats <= STORE
    assert out["load_frames"] == -(-beats * res["info"]["event_bytes"] // P.MAX_PAYLOAD)
    assert out["resends"] == 0 and res["notices"] == []
    # the driver's rates: the board's from its cycles, the link's with the upload
    clock = res["info"]["clock_hz"]
    assert out["board_inferences_per_second"] == pytest.approx(
        len(SEEDS) * clock / out["board_cycles"])
    assert out["wall_inferences_per_second"] == pytest.approx(
        len(SEEDS) / (out["upload_seconds"] + out["batch_seconds"]))
    assert out["board_inferences_per_second"] > 5 * out["wall_inferences_per_second"]


@pytest.mark.verilator
@pytest.mark.slow
def test_batch_cycles_against_the_engine_streamed(batch_run):
    net, frames, res, eng = batch_run
    out = res["batch"]
    n = len(SEEDS)
    done = [im.done_at for im in eng.images]
    first_beat = done[0] - eng.images[0].cycles
    interval = (done[-1] - done[0]) / (n - 1)
    cycles = out["board_cycles"]
    # the engine alone, images streamed by the harness: the same predictions
    assert [im.prediction for im in eng.images] == out["classes"]
    # the board counts from the first beat taken to the last result: at least
    # the engine's interval between images n - 1 times, and no more than the
    # harness's own first beat to last result (it pauses two cycles between
    # images; the store's feeder does not), give or take the strobe's cycle
    assert cycles >= interval * (n - 1)
    assert cycles >= out["beats"]
    assert cycles <= done[-1] - first_beat + 2
    assert cycles >= done[-1] - first_beat - 2 * (n - 1)
    # RESULT after the BATCH: the engine's counter (first beat to its last
    # completion, before the argmax pipeline) and its last class
    after = res["after"]
    assert after["done"] and after["prediction"] == out["classes"][-1]
    assert 0 < cycles - after["cycles"] <= 8


@pytest.mark.verilator
@pytest.mark.slow
def test_store_errors_and_recovery(batch_run):
    net, frames, res, _ = batch_run
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
    # then more images than one store holds, in batches; and EVENTS still works
    ref = golden.run(net, frames)
    want = [int(c) for c in ref.classes]
    twice = res["twice"]
    assert twice["batches"] == 2 and twice["classes"] == want + want
    assert twice["cycles"] > res["batch"]["board_cycles"]
    assert res["infer"]["prediction"] == want[-1]


@pytest.mark.verilator
@pytest.mark.slow
def test_the_comparison_reports_a_wrong_class(batch_run):
    net, frames, res, _ = batch_run
    got = res["batch"]["classes"]
    wrong = list(res["batch"]["expected"])
    wrong[5] = (wrong[5] + 1) % net.spec.classes
    assert class_mismatches(got, wrong) == [{"image": 5, "expected": wrong[5], "got": got[5]}]
    assert class_mismatches(got, res["batch"]["expected"]) == []
    with pytest.raises(P.ProtocolError, match="7 classes from the board for 8 images"):
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


# --------------------------------------------------------------------------- STCB, Amaranth sim

DIV = 4


async def send_bytes(ctx, pin, data):
    for b in data:
        for bit in [0] + [(b >> i) & 1 for i in range(8)] + [1]:
            ctx.set(pin, bit)
            await ctx.tick().repeat(DIV)


async def recv_frame(ctx, pin, limit=200_000):
    async def byte():
        n = 0
        while ctx.get(pin):
            await ctx.tick()
            n += 1
            assert n < limit, "no reply"
        await ctx.tick().repeat(DIV // 2)
        v = 0
        for i in range(8):
            await ctx.tick().repeat(DIV)
            v |= ctx.get(pin) << i
        await ctx.tick().repeat(DIV)
        return v
    head = bytes([await byte() for _ in range(5)])
    rest = bytes([await byte() for _ in range(head[3] + (head[4] << 8) + 2)])
    return P.decode(head + rest)


def test_stcb_batch_restarts_the_engine_between_images():
    """An STCB network does not take images back to back: the bridge waits
    for each image's result, pulses start and waits out the clear pass.  The
    real engine (its weights the power-up contents) in Amaranth's simulator."""
    from amaranth.sim import Simulator

    from spikeforge.boards.top import BoardTop, LinkConfig
    net = random_stcb_network(5)
    frames = static_frames(net, [58, 33])  # golden classes 1, 0
    want = [int(c) for c in golden.run(net, frames).classes]
    assert want == [1, 0]
    fmt = EventFormat.for_network(net)
    clock = 4_000_000
    top = BoardTop(net, 1, clock_hz=clock, batch_beats=256,
                   link=LinkConfig(baud=clock // DIV, timeout_cycles=4000, stall_cycles=20_000))
    E = top.info.event_bytes
    beats = [[fmt.pack(e.channel, e.y, e.x, e.shift, int(e.last), e.mask)
              for e in input_events(net, frames[i])] for i in range(2)]
    payload = b"".join(w.to_bytes(E, "little") for bs in beats for w in bs)
    starts, replies = [], []
    sim = Simulator(top)
    sim.add_clock(1 / clock)

    async def bench(ctx):
        ctx.set(top.rx, 1)
        await ctx.tick().repeat(5)
        for seq, (cmd, pay) in enumerate([(P.Cmd.LOAD, payload),
                                          (P.Cmd.BATCH, (2).to_bytes(2, "little"))]):
            await send_bytes(ctx, top.rx, P.encode(cmd, seq, pay))
            replies.append(await recv_frame(ctx, top.tx))

    async def watch(ctx):
        async for _, _, start in ctx.tick().sample(top.bridge.start):
            if start:
                starts.append(1)

    sim.add_testbench(bench)
    sim.add_process(watch)
    sim.run()
    load, batch = replies
    assert load.cmd == P.Cmd.LOAD | P.REPLY
    assert load.payload == (len(beats[0]) + len(beats[1])).to_bytes(4, "little")
    assert batch.cmd == P.Cmd.BATCH | P.REPLY, P.parse_error(batch)
    r = P.BatchResult.unpack(batch.payload, 2)
    assert r.classes == want
    assert len(starts) == 2  # the BATCH's own, and one between the images
    assert r.cycles > len(beats[0]) + len(beats[1])
