"""The planner (issue 13): plan.json as the one source of lanes, hand
overrides validated and recorded, board memories counted.  The cost model
against Yosys and nextpnr: tests/test_boards_bitstream.py (on its builds)."""

import json

import pytest
import torch
from conftest import quantized_run

from spikeforge import cli, flow
from spikeforge.boards import build as B
from spikeforge.hw import cost, plan as planner
from spikeforge.hw.fit import DEVICES, block_count

TINY = ["--model", "convsnn", "--dataset", "digits8x8", "--epochs", "1", "--batch-size", "32",
        "--set", "channels=[]", "--set", "hidden=24", "--timesteps", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return quantized_run(tmp_path_factory, "plan", TINY)


def test_plan_chooses_the_fastest_fitting_candidate_or_a_leaner_near_tie_and_export_uses_it(
        run, capsys):
    assert cli.main(["plan", str(run), "--board", "icebreaker"]) == 0
    out = capsys.readouterr().out
    p = json.loads((run / "plan.json").read_text())
    assert p["board"] == "icebreaker" and p["device"] == "ice40up5k" and p["override"] is None
    assert (run / "plan.png").stat().st_size > 5000
    cands = p["candidates"]
    fitting = [c for c in cands if c["fits"]]
    assert len(cands) >= 3 and fitting   # the start, and each layer doubled
    best = max(c["inferences_per_second"] for c in fitting)
    near = [c for c in fitting if c["inferences_per_second"] >= (1 - planner.TIE) * best]
    assert p["chosen"]["cells"] == min(c["cells"] for c in near)
    assert p["chosen"] in near and p["lanes"] == p["chosen"]["lanes"]
    for c in cands:   # every candidate's figures are its own
        assert c["fits"] == (c["bram"] <= 30 and c["util"] <= cost.load("ice40up5k").util_ceiling)
        assert c["inferences_per_second"] == pytest.approx(c["fmax_mhz"] * 1e6
                                                           / c["interval_cycles"])
        assert c["fits"] or c["why_not"]
    assert f"chosen: lanes {p['lanes']}" in out
    assert cli.main(["export", str(run)]) == 0
    assert json.loads((run / "hw" / "memories.json").read_text())["lanes"] == p["lanes"]


def test_a_near_tie_goes_to_the_fewest_cells():
    """Within 1 % of the fastest, the cycle model cannot tell candidates
    apart: the one with the fewest logic cells is chosen; a candidate more
    than 1 % faster wins whatever its cells; one that does not fit never."""
    c = lambda name, ips, cells, fits=True: {"name": name, "inferences_per_second": ips,
                                             "cells": cells, "fits": fits}
    fast, lean = c("16,32,8,4", 31061, 31760), c("16,32,8,1", 31048, 30702)
    assert planner._choose([fast, lean])["name"] == "16,32,8,1"
    assert planner._choose([c("a", 31061 * 1.02, 40000), lean])["name"] == "a"
    assert planner._choose([c("big", 90000, 100, fits=False), fast, lean])["name"] == "16,32,8,1"
    assert planner._choose([c("x", 100, 5, fits=False), c("y", 99.5, 4, fits=False)])["name"] == "y"


def test_an_override_is_validated_and_recorded(run, capsys):
    assert cli.main(["plan", str(run), "--board", "icebreaker", "--lanes", "2,1"]) == 0
    p = json.loads((run / "plan.json").read_text())
    assert p["lanes"] == [2, 1] and p["override"]["lanes"] == [2, 1]
    assert p["chosen"]["fits"] and p["override"]["interval_cycles"] > 0
    assert "override (--lanes): [2, 1]" in capsys.readouterr().out
    assert cli.main(["export", str(run)]) == 0
    assert json.loads((run / "hw" / "memories.json").read_text())["lanes"] == [2, 1]
    # export --lanes goes through the plan (recorded there, board kept)
    assert cli.main(["export", str(run), "--lanes", "1"]) == 0
    p = json.loads((run / "plan.json").read_text())
    assert p["lanes"] == [1, 1] and p["override"]["lanes"] == [1, 1]
    assert p["board"] == "icebreaker"
    assert flow.planned_lanes(run) == [1, 1]


def test_a_network_that_fits_nowhere_is_refused_with_the_numbers():
    net, _ = B.default_network("ulx3s")   # 16-32 fc64 on mnist: far over the UP5K's RAM
    with pytest.raises(planner.PlanError, match=r"no lane choice fits ice40up5k: .*block RAM "
                                                r"\d+ > 30"):
        planner.plan(net, _work(net), "ice40up5k", B.board_memories(net, "icebreaker"))
    mlp, _ = B.default_network("icebreaker")   # fits at one lane a layer, not at 32
    with pytest.raises(planner.PlanError, match=r"lanes \[32, 10\] do not fit ice40up5k: "
                                                r"block RAM 34 > 30"):
        planner.plan(mlp, _work(mlp), "ice40up5k", B.board_memories(mlp, "icebreaker"),
                     lanes=[32, 10])


def test_an_override_past_the_routability_ceilings_is_the_plan_with_its_warning(monkeypatch):
    """The ceilings are measured, not hard: when no candidate is under them, a
    hand override that the block RAM holds is the plan, warned; without one,
    the refusal."""
    import dataclasses
    mlp, _ = B.default_network("icebreaker")
    cm = cost.load("ice40up5k")
    monkeypatch.setattr(cost, "load", lambda device: dataclasses.replace(cm, util_ceiling=0.01))
    board = B.board_memories(mlp, "icebreaker")
    with pytest.raises(planner.PlanError, match=r"^no lane choice fits ice40up5k: one lane per "
                                                r"layer needs logic \d+ % > 1 % \(routability"):
        planner.plan(mlp, _work(mlp), "ice40up5k", board)
    p = planner.plan(mlp, _work(mlp), "ice40up5k", board, lanes=[1, 1])
    assert p["lanes"] == [1, 1] and p["chosen"] is p["override"]
    assert not p["chosen"]["fits"] and "routability ceiling" in p["chosen"]["why_not"]
    assert "warning: logic" in planner.table(p)


def test_plan_bad_input(run, capsys):
    assert cli.main(["plan", str(run), "--device", "xc7"]) == 2
    assert "--device" in capsys.readouterr().err
    assert cli.main(["plan", str(run / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_pareto_front():
    c = lambda cells, ips: {"cells": cells, "inferences_per_second": ips}
    cands = [c(10, 5), c(20, 4), c(30, 9), c(5, 1), c(30, 8), c(40, 9)]
    assert [(x["cells"], x["inferences_per_second"]) for x in planner.pareto(cands)] == [
        (5, 1), (10, 5), (30, 9)]


def test_board_memories_are_counted():
    # the host buffer (1 KiB of bytes): one 18 kbit EBR (2048 x 9), two 4 kbit
    # RAM4K (512 x 8); the ULX3S's batch-mode image store by the same rules
    from spikeforge.boards import ulx3s
    from spikeforge.hw.streams import EventFormat
    net, lanes = B.default_network("icebreaker")
    assert block_count(net, lanes, "ice40up5k", B.board_memories(net, "icebreaker")) == \
        block_count(net, lanes, "ice40up5k") + 2
    width = EventFormat.for_network(net).width
    store = DEVICES["ecp5-85f"].blocks_for(width, ulx3s.BATCH_BEATS)
    assert store >= width * ulx3s.BATCH_BEATS // 18432
    assert block_count(net, lanes, "ecp5-85f", B.board_memories(net, "ulx3s")) == \
        block_count(net, lanes, "ecp5-85f") + 1 + store
    assert B.check_board_fit(net, lanes, "ulx3s")["blocks"] == \
        block_count(net, lanes, "ecp5-85f") + 1 + store


def test_block_ram_beyond_the_routability_ceiling_does_not_fit(monkeypatch):
    # the ULX3S builds route up to 183 of the 85F's 208 EBR (hw/cost_model.json)
    import dataclasses
    cm = cost.load("ecp5-85f")
    assert cm.bram_limit(208) == 183 and cost.load("ice40up5k").bram_limit(30) == 30
    net, _ = B.default_network("ulx3s")
    work, board = _work(net), B.board_memories(net, "ulx3s")
    c = planner.evaluate(net, [1, 1, 1, 1], work, "ecp5-85f", board)
    assert c["fits"] and c["bram"] <= 183
    # one block under this candidate's: refused, the numbers named
    monkeypatch.setattr(cost, "load", lambda device: dataclasses.replace(
        cm, bram_ceiling=(c["bram"] - 1) / 208))
    c2 = planner.evaluate(net, [1, 1, 1, 1], work, "ecp5-85f", board)
    assert c2["bram"] == c["bram"] and not c2["fits"]
    assert f"block RAM {c['bram']} > {c['bram'] - 1}" in c2["why_not"]
    assert "routability ceiling" in c2["why_not"]


def _work(net):
    from spikeforge.hw import model
    from spikeforge.sw import data
    x = data.load("digits8x8" if net.spec.input_shape[-1] == 8 else "mnist5k").x_train[:2]
    return model.traces(net, x)


def test_a_lower_logic_ceiling_when_the_block_ram_is_nearly_full():
    """The default network at lanes 16,32,16,1 (single spikes into layer 1)
    needs 183 of the 85F's 208 block RAMs and did not route at 42 % of the
    logic; the same with layer 2 at 8 lanes (39 %) did: past 85 % of the
    block RAM the planner holds the logic to the lower ceiling."""
    cm = cost.load("ecp5-85f")
    # (the ceiling: the highest predicted share of a routed build, 50.5 %)
    assert cm.util_limit(0.5) == cm.util_ceiling == 0.505
    assert cm.util_limit(183 / 208) == 0.38
    net, _ = B.default_network("ulx3s")
    work = _work(net)
    board = B.board_memories(net, "ulx3s")
    wide = planner.evaluate(net, [16, 32, 16, 1], work, "ecp5-85f", board, [1, 1, 1, 1])
    assert 0.85 * 208 < wide["bram"] <= 183 + 5 and 0.38 < wide["util"] <= cm.util_ceiling
    assert not wide["fits"]
    assert (f"% > 38 % (routability ceiling with {wide['bram']} block RAMs)"
            in wide["why_not"])
    narrow = planner.evaluate(net, [16, 32, 8, 1], work, "ecp5-85f", board, [1, 1, 1, 1])
    # (this untrained network's memories are a little wider than the trained
    # one's 183 blocks: both are over the block-RAM ceiling too; the logic is
    # what differs)
    assert narrow["bram"] == wide["bram"] and narrow["util"] <= 0.38
    assert "logic" not in narrow["why_not"]


def _ceilings(monkeypatch, blocks: int, util: float):
    """The 85F's cost model with other routability ceilings (the real model's
    cells and cycles; only where a plan stops fitting moves)."""
    import dataclasses
    cm = cost.load("ecp5-85f")
    monkeypatch.setattr(cost, "load", lambda device: dataclasses.replace(
        cm, bram_ceiling=blocks / 208, util_ceiling=util))


def _fits(net, lanes, work, board) -> bool:
    """Whether ``lanes`` fit the 85F with any of their word choices."""
    import itertools
    qs = [planner.word_options(net, lanes, n) for n in range(len(lanes))]
    return any(planner.evaluate(net, lanes, work, "ecp5-85f", board, list(q))["fits"]
               for q in itertools.product(*qs))


def test_the_climb_steps_past_a_refused_doubling(monkeypatch):
    """Block RAM is not monotonic in the lanes: under a ceiling of 140 blocks
    neither one lane per layer nor any of its doublings fits the default
    network, but wider memories, shallower, do; the climb goes on past a
    refused doubling instead of refusing the network."""
    _ceilings(monkeypatch, 140, 0.5)
    net, _ = B.default_network("ulx3s")
    work, board = _work(net), B.board_memories(net, "ulx3s")
    ones = [1, 1, 1, 1]
    assert not _fits(net, ones, work, board)
    for n in range(4):
        doubled = planner._moved(net, ones, {n: +1})
        assert doubled is None or not _fits(net, doubled, work, board)
    p = planner.plan(net, work, "ecp5-85f", board)
    assert p["chosen"]["fits"] and p["chosen"]["bram"] <= 140


def test_the_climb_trades_lanes_when_no_doubling_fits(monkeypatch):
    """Under ceilings of 184 blocks and 30 % of the logic the doublings alone
    end at 3,382 inferences/s (4,32,4,1); doubling a busy layer and halving
    a less busy one goes on to a faster plan (8,16,4,4: 3,466)."""
    _ceilings(monkeypatch, 184, 0.3)
    net, _ = B.default_network("ulx3s")
    work, board = _work(net), B.board_memories(net, "ulx3s")
    chosen = planner.plan(net, work, "ecp5-85f", board)["chosen"]
    climbed = planner.plan(net, work, "ecp5-85f", board, moves=("double", "skip"))["chosen"]
    assert climbed["fits"] and chosen["fits"]
    assert chosen["inferences_per_second"] > 1.02 * climbed["inferences_per_second"]


def test_a_residual_layer_is_traced_and_costed_with_its_skip(monkeypatch):
    """The cycle model's residual layer takes its block input's spikes too
    (channels moved up by the block's channels), and its core's cells
    include the skip path."""
    from spikeforge.hw import model
    from spikeforge.hw.randnet import random_frames, random_network
    from spikeforge.sw import golden
    net = random_network(401, size=(6, 8), channels=(2, 5), max_layers_conv=1, blocks=2)
    x = random_frames(net, 3)
    ref = golden.run(net, x)
    per_step = [golden.unpack(s[:, 0], l.out_features).sum(1).tolist()
                for s, l in zip(ref.spikes, net.spec.layers)]
    trace = model.traces(net, x)[0]
    residual = [n for n, l in enumerate(net.spec.layers) if l.residual]
    assert len(residual) == 2
    for n in range(1, len(net.layers)):
        want = per_step[n - 1]
        if n in residual:
            want = [a + b for a, b in zip(want, per_step[n - 2])]
            c = net.spec.layers[n].in_channels
            chans = torch.cat([ch for ch, _, _ in trace[n].inputs])
            assert int(chans.max()) < 2 * c and int((chans >= c).sum()) == sum(per_step[n - 2])
        assert [len(ch) for ch, _, _ in trace[n].inputs] == want
    lanes = [min(2, l.spec.out_channels) for l in net.layers]
    cm = cost.load("ecp5-85f")
    with_skip, skip_cells = cm.cores(net, lanes, DEVICES["ecp5-85f"]), cost.SKIP_PATH["ecp5"]
    monkeypatch.setattr(cost, "SKIP_PATH", {"ecp5": {}})
    without = cm.cores(net, lanes, DEVICES["ecp5-85f"])
    for n, (a, b) in enumerate(zip(with_skip, without)):
        extra = skip_cells if n in residual else {}
        assert {r: round(a[r] - b[r]) for r in a} == {r: extra.get(r, 0) for r in a}
    # the fit check counts each block's skip FIFO: a step of the block input's events
    from spikeforge.hw.fit import memory_plan
    skips = [mu for mu in memory_plan(net, lanes) if mu.name.endswith("_skip")]
    assert [mu.layer for mu in skips] == residual
    for mu in skips:
        ls = net.spec.layers[mu.layer]
        assert mu.depth == ls.in_channels * ls.in_size[0] * ls.in_size[1] + 1


def test_the_skip_path_cost_is_what_yosys_builds():
    """The cost model's skip path against Yosys's synthesis of the engine's
    own :class:`SkipPath` at the depth it was measured for (ECP5): the logic
    within 10 %, the block RAM the fit check's count."""
    from amaranth.back import rtlil
    from spikeforge.hw.fit import MemoryUse
    from spikeforge.hw.streams import EventFormat, SkipPath
    from spikeforge.toolchain import yosys_cells
    fmt = EventFormat(6, 5, 5, 1, 16)
    assert fmt.width == 34
    cells = yosys_cells(rtlil.convert(SkipPath(fmt, 3137, 16), name="top"), "synth_ecp5 -abc9")
    got = {"lut": cells.get("LUT4", 0), "carry": cells.get("CCU2C", 0),
           "ff": cells.get("TRELLIS_FF", 0)}
    for r, v in cost.SKIP_PATH["ecp5"].items():
        assert abs(got[r] - v) <= 0.1 * v, (r, got[r], v)
    assert cells.get("TRELLIS_DPR16X4", 0) == 0
    mu = MemoryUse(0, "skip", fmt.width, 3137 - 1)
    assert cells["DP16KD"] == DEVICES["ecp5-85f"].blocks_for(mu.width, mu.depth)


def test_stcb_and_lif_cores_are_costed_by_their_own_coefficients():
    """An STCB core's features are its own and a LIF / IF core's its own
    (hw/cost.py): zeroing one kind's coefficients leaves the other's cores'
    predictions as they were, and each kind's prediction is non-trivial."""
    import dataclasses
    from spikeforge.hw.network import core_params
    from spikeforge.hw.randnet import random_network, random_stcb_network
    cm = cost.load("ecp5-85f")
    dev = DEVICES["ecp5-85f"]
    # a LIF network whose second conv layer has two synapse units (lanes 2 x 6)
    lif, stcb = random_network(0, kernels=(3,), max_layers_conv=2), random_stcb_network(7)
    lif_lanes = [2, 12, 2]
    assert [cp.units for cp in core_params(lif, lif_lanes)] == [1, 2, 1]
    kinds = {"lif": ("upd", "neu", "tree", "one", "units", "units_one"),
             "stcb": ("stcb", "stcb_tree", "stcb_one")}
    for net, own, other in ((lif, "lif", "stcb"), (stcb, "stcb", "lif")):
        lanes = lif_lanes if own == "lif" else [2] * len(net.layers)
        base = cm.cores(net, lanes, dev)
        assert all(c["lut"] > 100 and c["ff"] > 50 for c in base), (own, base)
        zeroed = {r: {k: (0.0 if k in kinds[other] else v) for k, v in c.items()}
                  for r, c in cm.coef.items()}
        assert dataclasses.replace(cm, coef=zeroed).cores(net, lanes, dev) == base
        zeroed = {r: {k: (0.0 if k in kinds[own] else v) for k, v in c.items()}
                  for r, c in cm.coef.items()}
        assert all(a["lut"] < b["lut"] for a, b in
                   zip(dataclasses.replace(cm, coef=zeroed).cores(net, lanes, dev), base))


def test_the_second_units_are_fitted_on_what_the_one_unit_fit_leaves():
    """fit_coefficients: the cores with two synapse units do not move the
    other features' coefficients (fitted on the one-unit cores alone); their
    own features take the rest of those cores' cells."""
    import random
    rng = random.Random(5)
    true = {"neu": 9.0, "one": 300.0, "tree": 2.0, "units": 1.5, "units_one": 800.0}

    def sample(units):
        f = dict.fromkeys(cost.FEATURES, 0.0) | {
            "neu": rng.uniform(100, 1000), "tree": rng.uniform(0, 500), "one": 1.0,
            "upd": rng.uniform(100, 1000)}
        if units:
            f |= {"units": rng.uniform(100, 800), "units_one": 1.0}
        y = sum(true.get(k, 0.0) * v for k, v in f.items()) * rng.uniform(0.97, 1.03)
        return f, {"lut": y}
    plain = [sample(False) for _ in range(12)]
    two = [sample(True) for _ in range(6)]
    alone = cost.fit_coefficients(plain, ["lut"])["lut"]
    both = cost.fit_coefficients(plain + two, ["lut"])["lut"]
    for k in cost.FEATURES:
        if k not in cost.SECOND:
            assert both[k] == pytest.approx(alone[k], abs=1e-9), k
    assert alone["units"] == alone["units_one"] == 0.0
    assert both["units"] == pytest.approx(true["units"], rel=0.15)
    assert both["units_one"] == pytest.approx(true["units_one"], rel=0.15)
    assert alone["neu"] == pytest.approx(true["neu"], rel=0.1)
    pred = [sum(both[k] * f[k] for k in cost.FEATURES) for f, _ in two]
    assert all(abs(p - c["lut"]) < 0.08 * c["lut"] for p, (_, c) in zip(pred, two))


def test_a_network_over_the_block_ram_falls_back_on_the_sdram_and_one_current_memory():
    """The default network on the ECP5-45F (108 blocks): refused with every
    memory in block RAM; on a board with an SDRAM its fc layer's weights go
    there and layer 0 keeps one current memory, each block counted; on the
    85F, where it fits as it is, the plan is the same with or without the
    SDRAM (the fallback search runs only when nothing fits)."""
    from spikeforge.hw.fit import check_fit, storage_options
    net, _ = B.default_network("ulx3s")
    work, board = _work(net), B.board_memories(net, "ulx3s")
    with pytest.raises(planner.PlanError, match="no lane choice fits ecp5-45f"):
        planner.plan(net, work, "ecp5-45f", board)
    p = planner.plan(net, work, "ecp5-45f", board, sdram=True)
    ch, limit = p["chosen"], cost.load("ecp5-45f").bram_limit(108)
    assert ch["fits"] and p["sdram"] == [2] == ch["sdram"] and p["banks"] == [1, 2, 2, 2]
    assert "S2,1c0" in planner.table(p)
    lanes, words = p["lanes"], p["words"]
    opts = storage_options(net, lanes, "ecp5-45f", board, words, True, limit)
    assert opts[1] == ((2,), [1, 2, 2, 2]) and opts[0][0] == ()   # with and without
    plain = block_count(net, lanes, "ecp5-45f", board, words)
    streamed = block_count(net, lanes, "ecp5-45f", board, words, sdram=(2,))
    both = block_count(net, lanes, "ecp5-45f", board, words, sdram=(2,), banks=[1, 2, 2, 2])
    use = check_fit(net, lanes, "ecp5-45f", board, words, (2,), [1, 2, 2, 2])
    assert both == ch["bram"] == use["blocks"] <= limit < streamed < plain
    assert use["per_memory"]["L2_weights"] == 0 and "L0_cur1" not in use["per_memory"]
    assert use["sdram_layers"] == [2] and use["banks"] == [1, 2, 2, 2]
    # without the SDRAM only the current memories can give: not enough here
    (plain_choice,) = storage_options(net, lanes, "ecp5-45f", board, words, False, limit)
    assert plain_choice[0] == () and block_count(net, lanes, "ecp5-45f", board, words,
                                                 banks=plain_choice[1]) > limit
    # a storage the engine cannot build is refused, named
    with pytest.raises(planner.FitError, match="one whose weights can stream"):
        check_fit(net, lanes, "ecp5-45f", board, words, (0,), None)
    with pytest.raises(planner.FitError, match="each 1 or 2"):
        check_fit(net, lanes, "ecp5-45f", board, words, (), [3, 2, 2, 2])
    # the cycle model charges the streamed layer G * k SDRAM words an event
    # and the rows it opens, one current memory its serial scans
    from spikeforge.hw import model
    from spikeforge.hw.network import core_params
    from spikeforge.hw.sdram import ULX3S_SDRAM
    from spikeforge.hw.weightstream import sdram_words
    cp = core_params(net, lanes, words=words)[2]
    events = sum(y.numel() for img in work for y, _ in img[2].events(cp.word_channels)) / len(work)
    base = model.predict(net, lanes, work, 32, words)
    fast = model.predict(net, lanes, work, 32, words, banks=[1, 2, 2, 2])
    slow = model.predict(net, lanes, work, 32, words, sdram=(2,), banks=[1, 2, 2, 2])
    rows = sum(sum(model._sdram_rows(cp, core_params(net, lanes, words=words)[1].P,
                                     img[2].inputs)) for img in work) / len(work)
    assert 0 < rows <= 2 * events
    per = cp.groups * sdram_words(cp, ULX3S_SDRAM)
    assert slow["layers"][2]["occupancy"] == pytest.approx(
        events * per + rows * model.SDRAM_ROW_CYCLES + model.SYN_FILL * net.spec.timesteps,
        rel=1e-9)
    assert base["layers"][2]["occupancy"] == pytest.approx(
        events * cp.groups + model.SYN_FILL * net.spec.timesteps, rel=1e-9)
    assert fast["layers"][0]["occupancy"] > base["layers"][0]["occupancy"]
    # fits as it is: the same plan on a board with an SDRAM
    a = planner.plan(net, work, "ecp5-85f", board)
    b = planner.plan(net, work, "ecp5-85f", board, sdram=True)
    assert (a["lanes"], a["words"]) == (b["lanes"], b["words"])
    assert b["sdram"] == [] and b["banks"] is None


def test_the_icebreaker_has_no_sdram_for_weights():
    net, _ = B.default_network("icebreaker")
    with pytest.raises(B.FitError, match="icebreaker has no SDRAM for the weights of layer"):
        B.check_board_fit(net, [1, 1], "icebreaker", sdram=(1,))


@pytest.mark.slow
@pytest.mark.verilator
def test_a_planned_sdram_layer_flows_to_export_and_verify(tmp_path, monkeypatch, capsys):
    """A plan whose block RAM is short (the ULX3S's ceiling lowered under
    what the tiny MLP needs) puts the largest fc weights in the SDRAM; export
    records the storage, verify builds the engine with it and the harness's
    chip model, every spike the golden model's, and sim.json says so."""
    import dataclasses
    import shutil
    r = tmp_path / "run"
    assert cli.main(["train", "-q", *TINY, "--out", str(r)]) == 0
    assert cli.main(["quantize", "-q", str(r), "--input-bits", "4"]) == 0
    cm = cost.load("ecp5-85f")
    from spikeforge import image
    net, _ = image.read_image(r / "weights.sfimg")
    need = block_count(net, [1, 1], "ecp5-85f", B.board_memories(net, "ulx3s"))
    monkeypatch.setattr(cost, "load", lambda device: dataclasses.replace(
        cm, bram_ceiling=(need - 1) / 208))
    assert cli.main(["plan", str(r), "--board", "ulx3s"]) == 0
    p = json.loads((r / "plan.json").read_text())
    assert p["sdram"] == [0] and p["chosen"]["bram"] < need   # layer 0: 64 x 24 weights
    assert cli.main(["export", str(r)]) == 0
    rec = json.loads((r / "hw" / "memories.json").read_text())
    assert rec["sdram"] == [0] and rec.get("banks") == p["banks"]
    assert flow.storage_for(r, p["lanes"]) == ([0], p["banks"])
    capsys.readouterr()
    assert cli.main(["verify", str(r), "--images", "8"]) == 0
    out = capsys.readouterr().out
    assert "layer 0's weights in the SDRAM (a model of the chip)" in out
    sim = json.loads((r / "sim.json").read_text())
    assert sim["sdram"] == [0] and sim["mismatches"] == 0
    assert (r / "sim_work" / "sdram.hex").exists()
    # another lane choice than the export's: no storage recorded for it
    other = [1, 1] if p["lanes"] != [1, 1] else [2, 1]
    assert flow.storage_for(r, other) == ([], None)
    shutil.rmtree(r / "sim_build")


def test_the_sdram_rows_an_fc_layer_opens():
    """The rows a streamed fc layer opens, by hand: the default network's fc
    layer (1,568 inputs of 32 channels at 7 x 7) at 8 lanes takes G * k =
    8 * 4 = 32 SDRAM words an input, 16 inputs a 512-word row; the events
    come in the previous layer's scan order (lane group, position, lane)."""
    import torch
    from spikeforge.hw import model
    from spikeforge.hw.network import core_params
    net, _ = B.default_network("ulx3s")
    cp = core_params(net, [1, 1, 8, 1])[2]
    assert cp.groups * 4 == 32 and cp.in_shape == (32, 7, 7)

    def rows(cs, prev_lanes=0, pos=(0, 0)):
        c = torch.tensor(cs)
        return model._sdram_rows(cp, prev_lanes, [(c, torch.full_like(c, pos[0]),
                                                   torch.full_like(c, pos[1]))])
    # inputs c * 49: c = 0 in row 0; c = 1 at word 49 * 32 = 1,568: row 3
    assert rows([0]) == [1] and rows([0, 1]) == [2] and rows([1, 0, 1]) == [3]
    # positions 0..15 of channel 0 share row 0, 16 starts row 1
    c = torch.zeros(17, dtype=torch.long)
    x = torch.arange(17)
    assert model._sdram_rows(cp, 0, [(c[:16], c[:16], x[:16])]) == [1]
    assert model._sdram_rows(cp, 0, [(c, c, x)]) == [2]
    # the scan's order: with 2 lanes a group, channels 0 and 2 (group 0 and 1)
    # at one position come after channel 1 (group 0): 0, 1, 2 -> rows 0, 3, 6
    assert rows([2, 1, 0], prev_lanes=2) == [3] and rows([], prev_lanes=2) == [0]
    # an event whose words cross a row: a second row opened (layer 2 at 12 lanes,
    # G * k = 6 * 6 = 36 words: input 14 spans words 504 .. 539)
    cp12 = core_params(net, [1, 1, 12, 1])[2]
    assert cp12.groups == 6
    per = cp12.groups * -(-cp12.weight_width // 16)
    start = 14 * per
    assert start // 512 != (start + per - 1) // 512
    assert model._sdram_rows(cp12, 0, [(torch.tensor([0]), torch.tensor([2]),
                                        torch.tensor([0]))]) == [2]
