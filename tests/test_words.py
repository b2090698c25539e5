"""Word events narrower than a lane group (issue 9): ``words`` per layer,
chosen by the planner for each lane choice, validated, recorded in
plan.json and memories.json, and carried to verify, build and the host
link.  Spike-exactness under Verilator: tests/test_sim_verilator.py."""

import json

import pytest
from conftest import quantized_run

from spikeforge import cli, flow, image
from spikeforge.boards import protocol
from spikeforge.hw import plan as planner
from spikeforge.hw.network import core_params
from spikeforge.hw.params import EngineError

CONV = ["--model", "convsnn", "--dataset", "digits8x8", "--epochs", "1", "--batch-size", "32",
        "--set", "channels=[4,4]", "--set", "hidden=16", "--timesteps", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return quantized_run(tmp_path_factory, "words", CONV)


def _net(run):
    return image.read_image(run / "weights.sfimg")[0]


def test_the_planner_takes_each_lane_choices_best_words(run, capsys):
    assert cli.main(["plan", str(run)]) == 0
    assert "words" in capsys.readouterr().out
    p = json.loads((run / "plan.json").read_text())
    assert p["words"] == p["chosen"]["words"] and len(p["words"]) == 4
    assert p["words"][0] == p["words"][2] == p["words"][3] == 1
    assert p["words"][1] in (1, 2, 4) and p["lanes"][0] % p["words"][1] == 0
    # the chosen lanes were tried with every word width of layer 1, and the
    # chosen words are those the plan's own rule picks among them
    same = [c for c in p["candidates"] if c["lanes"] == p["lanes"]]
    opts = [1, 2, 4][:[1, 2, 4].index(min(p["lanes"][0], 4)) + 1]
    assert sorted(c["words"][1] for c in same) == opts
    fastest = max(c["inferences_per_second"] for c in same if c["fits"])
    near = [c for c in same if c["fits"] and c["inferences_per_second"] >= (1 - planner.TIE) * fastest]
    assert p["chosen"] in near and p["chosen"]["cells"] == min(c["cells"] for c in near)
    assert cli.main(["export", str(run)]) == 0
    assert flow.recorded_words(run) == p["words"]
    # the chosen lanes given by hand get the words the planner chose for them
    lanes = ",".join(map(str, p["lanes"]))
    assert cli.main(["plan", str(run), "--lanes", lanes]) == 0
    assert json.loads((run / "plan.json").read_text())["override"]["words"] == p["words"]


def test_a_words_override_is_recorded_and_exported(run, capsys):
    assert cli.main(["export", str(run), "--lanes", "4,4,4,1", "--words", "1,2,1,1"]) == 0
    assert flow.planned_lanes(run) == [4, 4, 4, 1] and flow.planned_words(run) == [1, 2, 1, 1]
    rec = json.loads((run / "hw" / "memories.json").read_text())
    assert rec["lanes"] == [4, 4, 4, 1] and rec["words"] == [1, 2, 1, 1]
    net = _net(run)
    # layer 1's weight words hold 2 input channels x 4 lanes, 2 input groups a tap
    width = {m["name"]: (m["width"], m["depth"]) for m in rec["memories"]}
    w = net.layers[1].weight_bits
    assert width["L1_weights"] == (2 * 4 * w, 9 * 2)
    assert image.read_exported(run / "hw", net, [4, 4, 4, 1], [1, 2, 1, 1]).keys() == \
        image.memories(net, [4, 4, 4, 1], [1, 2, 1, 1]).keys()
    # the export is for these words, not others
    with pytest.raises(image.ImageError, match=r"memories.json: memory images exported for "
                                               r"lanes \[4, 4, 4, 1\] with words \[1, 2, 1, 1\], "
                                               r"not \[1, 4, 1, 1\]: run `spikeforge export .* "
                                               r"--lanes 4,4,4,1 --words 1,4,1,1`"):
        image.read_exported(run / "hw", net, [4, 4, 4, 1], [1, 4, 1, 1])
    # the cores take what the words say
    cps = core_params(net, [4, 4, 4, 1], words=[1, 2, 1, 1])
    assert (cps[0].words_out, cps[1].in_lanes, cps[1].words_out) == (2, 2, 1)


@pytest.mark.parametrize("args,message", [
    (["--words", "1,2,1,1"], "--words is given with the lanes it splits: add --lanes"),
    (["--lanes", "4,4,4,1", "--words", "1,3,1,1"],
     "layer 1: words must be a power of two that divides the lanes of layer 0 (4), or 4, not 3"),
    (["--lanes", "4,4,4,1", "--words", "1,8,1,1"],
     "layer 1: words must be a power of two that divides the lanes of layer 0 (4), or 4, not 8"),
    (["--lanes", "4,4,4,1", "--words", "2,2,1,1"],
     "layer 0 takes single events: its words entry must be 1, not 2"),
    (["--lanes", "4,4,4,1", "--words", "1,2,2,1"],
     "layer 2 takes single events: its words entry must be 1, not 2"),
    (["--lanes", "4,4,4,1", "--words", "1,2"], "words must be a list of 4 integers"),
    (["--lanes", "4,4,4,1", "--words", "1,0,1,1"], "channels per event must be positive"),
    (["--lanes", "4,4,4,1", "--words", "1,x,1,1"], "expected a comma list of integers"),
])
def test_bad_words_are_refused_with_the_reason(run, capsys, args, message):
    assert cli.main(["plan", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_damaged_words_in_the_run_folder_are_named(run, capsys):
    assert cli.main(["export", str(run), "--lanes", "4,4,4,1", "--words", "1,2,1,1"]) == 0
    for name, where in (("plan.json", run / "plan.json"),
                        ("memories.json", run / "hw" / "memories.json")):
        saved = where.read_text()
        try:
            where.write_text(json.dumps(json.loads(saved) | {"words": "two"}))
            reader = flow.planned_words if name == "plan.json" else flow.recorded_words
            with pytest.raises(flow.SpikeforgeError, match=f"{name}.*words"):
                reader(run)
        finally:
            where.write_text(saved)
    # a core refuses words its lanes cannot split
    with pytest.raises(EngineError, match="layer 1: words must be a power of two"):
        core_params(_net(run), [4, 4, 4, 1], words=[1, 3, 1, 1])


def test_the_design_id_tells_words_apart(run):
    """A board built with other words lays its weights out otherwise: the
    host must not write into it (the design id differs); no words is the
    design id of before."""
    net = _net(run)
    lanes = [4, 4, 4, 1]
    ids = {protocol.design_id(net, lanes, w) for w in ([1, 2, 1, 1], [1, 4, 1, 1], [1, 1, 1, 1])}
    assert len(ids) == 3
    assert protocol.design_id(net, lanes) == protocol.design_id(net, lanes, None)


def test_planner_words_options():
    from spikeforge.boards.build import default_network
    net, _ = default_network("ulx3s")   # conv16 - conv32 - fc64 - fc10
    assert planner.word_options(net, [16, 32, 8, 1], 1) == [1, 2, 4, 8, 16]
    assert planner.word_options(net, [8, 32, 8, 1], 1) == [1, 2, 4, 8]
    assert planner.word_options(net, [16, 32, 8, 1], 2) == [1]
    assert planner.word_options(net, [16, 32, 8, 1], 0) == [1]


@pytest.mark.slow
@pytest.mark.verilator
def test_verify_runs_the_recorded_words(run, capsys):
    """export's words reach the Verilator engine that verify builds: its
    memories are the exported ones, its spikes the golden model's."""
    assert cli.main(["export", str(run), "--lanes", "4,4,4,1", "--words", "1,2,1,1"]) == 0
    assert cli.main(["verify", str(run), "--images", "30"]) == 0
    assert "words [1, 2, 1, 1]" in capsys.readouterr().out
    sim = json.loads((run / "sim.json").read_text())
    assert sim["words"] == [1, 2, 1, 1] and sim["lanes"] == [4, 4, 4, 1]
    assert sim["mismatches"] == 0 and sim["layers"][1]["events_in"] > 0
    # the recorded lanes given again take the recorded words with them
    assert cli.main(["verify", str(run), "--images", "5", "--lanes", "4,4,4,1"]) == 0
    assert json.loads((run / "sim.json").read_text())["words"] == [1, 2, 1, 1]
