"""The board top-level (engine + UART bridge) under Verilator, driven by the real
host driver (spikeforge.boards.host.Board) over a bit-level simulated UART:
weights loaded through the link, inferences equal to the golden model, and
the error frames and recovery of the protocol."""

import pytest
import torch

from spikeforge import image
from spikeforge.boards import protocol as P
from spikeforge.boards.host import golden_counts
from spikeforge.hw.randnet import random_frames, random_network, random_stcb_network
from spikeforge.sim import tb_board
from spikeforge.sw import golden

pytestmark = [pytest.mark.verilator, pytest.mark.slow]


@pytest.fixture(scope="module")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("board_sim")


def static_frames(net, seeds):
    return torch.cat([random_frames(net, s)[:, :1] for s in seeds])


def check_against_golden(net, frames, res):
    ref = golden.run(net, frames)
    assert len(res["images"]) == frames.shape[0]
    for i, im in enumerate(res["images"]):
        assert im["prediction"] == int(ref.classes[i]), i
        assert im["counts"] == golden_counts(net, ref, i), i
        assert im["cycles"] > 0
        assert len(im["perf"]) == len(net.layers)
        assert im["perf"][0]["events_in"] > 0 or not frames[i].any()
    # the counters' bytes, as the bridge selects them: each layer takes the
    # events the layer before it sent (over the images)
    for n in range(1, len(net.layers)):
        sent = sum(im["perf"][n - 1]["events_out"] for im in res["images"])
        assert sum(im["perf"][n]["events_in"] for im in res["images"]) == sent > 0, n


@pytest.fixture(scope="module")
def lif(build_root):
    net = random_network(3)
    return net, tb_board.build(net, 2, build_root)


def test_load_and_infer_equal_the_golden_model(lif, tmp_path):
    net, bs = lif
    frames = static_frames(net, [31, 32, 33])
    res = tb_board.run(bs, frames, tmp_path)
    assert res["ok"], res.get("failure")
    info = res["info"]
    assert info["design_id"] == P.design_id(net, bs.lanes)
    assert info["layers"] == len(net.layers) and info["n_out"] == net.spec.classes * net.spec.voting
    # every word of every memory went through the link (the model starts zeroed)
    assert res["words"] == sum(len(w) for _, w in image.memories(net, bs.lanes).values())
    check_against_golden(net, frames, res)
    # the same verdict from the driver's own comparison (what `spikeforge infer` reports)
    assert res["summary"]["class_mismatches"] == res["summary"]["counts_mismatches"] == 0
    assert res["resends"] == 0 and res["notices"] == []


def test_stcb_network_counts(build_root, tmp_path):
    # multi-bit output values (sum_t s[t] << (T-1-t)) through the RESULT reply
    net = random_stcb_network(5)
    bs = tb_board.build(net, 1, build_root)
    frames = static_frames(net, [51, 52])
    res = tb_board.run(bs, frames, tmp_path)
    assert res["ok"], res.get("failure")
    check_against_golden(net, frames, res)


EXPECTED = {
    "bit flip in payload": [("CRC", P.Cmd.WRITE)],
    "truncated frame": [("TIMEOUT", P.Cmd.PING)],
    "unknown command": [("UNKNOWN", 0x42)],
    "bad length for command": [("LENGTH", P.Cmd.START)],
    "length over maximum": [("LENGTH", P.Cmd.EVENTS), ("DISCARDED", 0)],
    "junk between frames": [("DISCARDED", 0)],
    "bit flip in header": [("CRC", P.Cmd.PING)],
}


def test_corrupted_frames_get_error_frames_and_the_link_recovers(lif, tmp_path):
    net, bs = lif
    frames = static_frames(net, [41])
    res = tb_board.run(bs, frames, tmp_path, "corrupt")
    assert res["ok"], res.get("failure")
    steps = {s["case"]: s for s in res["steps"]}
    assert set(steps) == set(EXPECTED)
    for case, want in EXPECTED.items():
        got = [(g.get("error"), g.get("cmd")) for g in steps[case]["got"]]
        assert got == [(c, int(m)) for c, m in want], (case, steps[case]["got"])
        assert steps[case]["ping_ok"], case
    s = steps["length over maximum"]["got"]
    assert s[0]["detail"] == P.MAX_PAYLOAD + 1 and s[1]["detail"] == 6  # the 6 bytes after
    assert steps["junk between frames"]["got"][0]["detail"] == 7
    assert steps["unknown command"]["got"][0]["seq"] == 9        # errors echo the sequence
    # then the driver's own recovery inside an inference: a damaged request is
    # resent, a damaged EVENTS reply restarts the inference; the result is exact
    assert res["flaky"] == ["request 2 damaged", "reply to request 3 damaged"]
    assert res["resends"] == 2
    check_against_golden(net, frames, res)


@pytest.mark.parametrize("width, depth", [(20, 16384 + 600), (64, 700), (4, 50176)])
def test_spram_memory_reads_what_was_written(width, depth, build_root, tmp_path):
    """:class:`SpramMemory` under Yosys's model of ``SB_SPRAM256KA``: two
    rows of two columns (the second column 4 bits wide), four columns, and
    four rows of one (the mnist5k MLP's first weights on the iCEBreaker);
    every word written, then read back one address a cycle (runs across the
    rows' boundary both ways, random addresses, one held), each compared
    while the next address is on the port."""
    from spikeforge.sim import tb_memory
    res = tb_memory.check(width, depth, build_root, tmp_path, seed=width)
    assert res["n_bad"] == 0, res["bad"]
    assert res["reads"] >= 400


def test_weights_in_spram_are_loaded_through_the_link(build_root, tmp_path):
    """Weights in the iCE40's SPRAM (``SB_SPRAM256KA`` instances under Yosys's
    own model of the block, which starts empty): the host's load puts them
    there, and every inference equals the golden model.  Layer 0's 4 lanes of
    8-bit weights take two columns of blocks, the fc layer's 18,200 words two
    rows."""
    from spikeforge.hw.memory import spram_blocks
    from spikeforge.hw.network import core_params
    net = random_network(13, max_layers_conv=1, size=(12, 16), channels=(8, 12), T=(2, 3),
                         classes=10, voting=1)
    lanes = [4, 1]
    geo = [(cp.weight_width, cp.weight_depth) for cp in core_params(net, lanes)]
    assert geo == [(32, 6), (8, 18200)]
    assert [spram_blocks(*g) for g in geo] == [2, 2]
    bs = tb_board.build(net, lanes, build_root, spram=(0, 1))
    frames = static_frames(net, [41, 42])
    res = tb_board.run(bs, frames, tmp_path)
    assert res["ok"], res.get("failure")
    assert res["words"] == sum(len(w) for _, w in image.memories(net, bs.lanes).values())
    check_against_golden(net, frames, res)


def test_weights_in_the_sdram_are_loaded_through_the_link(build_root, tmp_path):
    """The fc layer's weights in a model of the ULX3S's SDRAM chip (it
    starts empty) and one current memory a layer: the host's load goes
    through the bridge and the weight streamer into the chip (``mem_write``
    waits for it), and every inference equals the golden model."""
    net = random_network(3)
    n = len(net.layers) - 1
    bs = tb_board.build(net, 2, build_root, sdram=(n,), banks=[1] * len(net.layers))
    frames = static_frames(net, [51, 52, 53])
    res = tb_board.run(bs, frames, tmp_path)
    assert res["ok"], res.get("failure")
    assert res["words"] == sum(len(w) for _, w in image.memories(net, bs.lanes).values())
    check_against_golden(net, frames, res)
