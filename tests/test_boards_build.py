"""Board build helpers that need no tools: the fit check per board, the
defaults, the report reader, link settings (bitstreams: test_boards_bitstream.py)."""

import json
import re

import pytest

from spikeforge.boards import build as B
from spikeforge.boards import protocol as P
from spikeforge.boards.top import LinkConfig, board_info
from spikeforge.errors import SpikeforgeError
from spikeforge.hw.fit import FitError


def test_default_networks_fit_their_boards():
    for board in B.BOARDS:
        net, lanes = B.default_network(board)
        use = B.check_board_fit(net, lanes, board)
        assert use["blocks_with_bridge"] <= use["available"]


def test_a_network_too_big_for_the_board_is_refused_before_synthesis(tmp_path):
    big = B.DEFAULT_MODELS["ulx3s"]
    with pytest.raises(FitError) as e:
        B.build(big.network(), "icebreaker", tmp_path / "b", lanes=big.lanes)
    msg = str(e.value)
    assert "icebreaker" in msg and "iCE40UP5K" in msg and "block RAM" in msg
    assert B.DEFAULT_MODELS["icebreaker"].label in msg  # names what would fit
    assert isinstance(e.value, SpikeforgeError)
    assert not (tmp_path / "b").exists()  # no tool ran
    eight_bit = B.CANDIDATES[0]  # 48-48 fc128 at 8 bits: over the ECP5-85F's 208 EBR
    with pytest.raises(FitError, match="ulx3s"):
        B.check_board_fit(eight_bit.network(), eight_bit.lanes, "ulx3s")


def test_unknown_board():
    net, lanes = B.default_network("icebreaker")
    with pytest.raises(SpikeforgeError, match="unknown board"):
        B.build(net, "de10", "x", lanes=lanes)


def test_fit_table_matches_the_module_docstring():
    doc = B.__doc__
    rows = {r["model"]: r for r in B.fit_table()}
    seen = 0
    for line in doc.splitlines():
        m = re.match(r"(convsnn .+?|mlp .+?)\s{2,}(\d+)\s+(yes|no)\b.*?\s{2,}(yes|no)\b", line)
        if not m:
            continue
        label, lanes, ulx, ice = m.groups()
        r = rows[label]
        assert r["lanes"] == int(lanes)
        assert r["ulx3s"]["fits"] == (ulx == "yes"), label
        assert r["icebreaker"]["fits"] == (ice == "yes"), label
        seen += 1
    assert seen == len(B.CANDIDATES)


def test_model_config_command():
    cmd = B.DEFAULT_MODELS["icebreaker"].command()
    assert "--dataset digits8x8" in cmd and "--set channels=[]" in cmd and "--lanes 1" in cmd
    assert "--set hidden=32" in cmd and "--input-bits 4" in cmd


def test_link_config_divisors():
    assert LinkConfig().cycles(25e6)[0] == 25
    assert LinkConfig().cycles(12e6)[0] == 12
    d, t, s = LinkConfig(baud=115200).cycles(12e6)
    assert d == 104 and t == int(0.05 * 12e6) and s >= t
    with pytest.raises(SpikeforgeError):
        LinkConfig(baud=5_000_000).cycles(12e6)  # under 4 cycles a bit
    with pytest.raises(SpikeforgeError):
        LinkConfig(baud=2_500_000).cycles(12e6)  # 12 MHz / 5 is 4 % off


def test_board_top_info():
    net, lanes = B.default_network("icebreaker")
    info = board_info(net, lanes, clock_hz=12e6)
    assert info.version == P.VERSION and info.clock_hz == 12_000_000
    assert info.design_id == P.design_id(net, [lanes] * len(net.layers))
    assert info.layers == len(net.layers) and info.n_out == net.spec.classes
    assert info.timeout_cycles == int(0.05 * 12e6)


def _fake_build(tmp_path, achieved, constraint, board="ulx3s"):
    util = {"TRELLIS_COMB": (1000, 83640), "TRELLIS_FF": (500, 83640), "DP16KD": (3, 208),
            "ICESTORM_LC": (3000, 5280), "ICESTORM_RAM": (16, 30), "ICESTORM_DSP": (0, 8)}
    (tmp_path / "top.report.json").write_text(json.dumps({
        "fmax": {"clk": {"achieved": achieved, "constraint": constraint}},
        "utilization": {k: {"used": u, "available": a} for k, (u, a) in util.items()},
        "critical_paths": []}))
    (tmp_path / "top.stat.json").write_text(json.dumps({"design": {"num_cells_by_type": {
        "SB_DFF": 10, "SB_DFFE": 5, "SB_LUT4": 99, "$scopeinfo": 3}}}))
    return B.summarize(board, tmp_path)


def test_summarize_reads_the_tool_reports(tmp_path):
    s = _fake_build(tmp_path, 47.5, 25.0)
    assert s["fmax_mhz"] == 47.5 and s["clock_mhz"] == 25.0 and s["timing_met"]
    assert (s["lut"], s["ff"], s["bram"], s["dsp"]) == (1000, 500, 3, 0)  # no MULT18X18D used
    s = _fake_build(tmp_path, 20.0, 12.0, "icebreaker")
    assert (s["lut"], s["ff"], s["bram"], s["dsp"]) == (3000, 15, 16, 0)
    assert s["cells"] == {"SB_DFF": 10, "SB_DFFE": 5, "SB_LUT4": 99}
    s = _fake_build(tmp_path, 11.0, 12.0, "icebreaker")
    assert not s["timing_met"] and s["fmax_mhz"] == 11.0
