"""Bitstreams for both boards with Yosys + nextpnr (YoWASP): well-formed files
and a report.json filled from the tools' own machine-readable reports.

Both builds use the small default network (the iCEBreaker's, a two-layer
MLP on 8x8 digits; the ULX3S one clocked at 40 MHz through its PLL, the
iCEBreaker at its default 30 MHz through its own) so that the two take about a minute each on 2 cores; the
ULX3S's own default (convsnn 16-32 fc64) takes a few minutes and is built by
benchmarks/bench_boards.py.  The iCEBreaker build goes through
``build_run`` (a run folder with a weight image), as the CLI does.
"""

import json
import re

import pytest

from spikeforge import image
from spikeforge.boards import build as B
from spikeforge.boards import protocol as P

pytestmark = [pytest.mark.bitstream, pytest.mark.slow]


@pytest.fixture(scope="module")
def small():
    return B.default_network("icebreaker")


@pytest.fixture(scope="module")
def builds(tmp_path_factory, small):
    net, lanes = small
    run = tmp_path_factory.mktemp("run")
    image.write_image(run / "weights.sfimg", net)
    image.export_hex(net, run / "hw", [lanes] * len(net.layers))  # what the build loads
    ice = B.build_run(run, "icebreaker")
    ulx_dir = tmp_path_factory.mktemp("ulx3s")
    # through the PLL, nextpnr working to a 50 MHz target (over-constrained)
    ulx = B.build(net, "ulx3s", ulx_dir, lanes=lanes, clock_hz=40e6, target_mhz=50, seed=3,
                  sdf=True)
    return {"icebreaker": (ice, run / "build" / "icebreaker"), "ulx3s": (ulx, ulx_dir)}


def _slack_report(out, mhz) -> str:
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).parent.parent / "benchmarks" / "slack_report.py"
    return subprocess.run([sys.executable, str(script), str(out), "--mhz", str(mhz)],
                          capture_output=True, text=True, check=True).stdout


def test_slack_report_times_the_routed_design_as_nextpnr(builds):
    """benchmarks/slack_report.py's own timing analysis of the SDF that
    ``sdf=True`` asked nextpnr for finds nextpnr's critical path, and
    counts endpoints missing a clock just above its Fmax, none just below."""
    import re
    rep, out = builds["ulx3s"]
    assert (out / "top.sdf").is_file()
    assert not (builds["icebreaker"][1] / "top.sdf").exists()  # only when asked
    fmax = rep["fmax_mhz"]
    text = _slack_report(out, fmax * 1.01)
    ours, theirs = map(float, re.search(r"= ([\d.]+) MHz; nextpnr's report: ([\d.]+) MHz",
                                        text).groups())
    assert ours == pytest.approx(fmax, abs=0.02) and theirs == pytest.approx(fmax, abs=0.01)
    missing = int(re.search(r"endpoints missing [\d.]+ MHz \([\d.]+ ns\): ([\d,]+)",
                            text).group(1).replace(",", ""))
    assert missing >= 1
    assert "endpoints missing" in text and ": 0 of" in _slack_report(out, fmax * 0.99)


def test_slack_report_refuses_an_sdf_cut_short(builds, tmp_path):
    """An SDF nextpnr is still writing (or one cut short) is refused, not
    timed as a smaller design; a folder without nextpnr's report is timed,
    with a warning that nothing was compared."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).parent.parent / "benchmarks" / "slack_report.py"
    _, out = builds["ulx3s"]
    text = (out / "top.sdf").read_text()
    for cut in (len(text) // 2, text.rindex(")\n", 0, len(text) // 2) + 2):  # mid-line, at a line's end
        (tmp_path / "top.sdf").write_text(text[:cut])
        r = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                           text=True)
        assert r.returncode == 2 and "cut short, or still being written" in r.stderr
        assert not r.stdout
    (tmp_path / "top.sdf").write_text(text)
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "worst path" in r.stdout and "nextpnr's report" not in r.stdout
    assert "is not compared with nextpnr's Fmax" in r.stderr


def test_placement_spread_reproduces_the_build_on_its_seed(builds, tmp_path):
    """benchmarks/placement_spread.py reruns nextpnr on a build's netlist with
    the build's own command line: on the build's own seed it comes out at
    the build's Fmax exactly (nextpnr is deterministic), so its other seeds
    measure placement alone; a folder that is no build is refused."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).parent.parent / "benchmarks" / "placement_spread.py"
    rep, out = builds["ulx3s"]
    r = subprocess.run([sys.executable, str(script), str(out), "--seeds", "3", "--jobs", "1",
                        "--out", str(tmp_path / "spread")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--lpf top.lpf" in r.stdout and "--sdf" not in r.stdout
    build_row, seed_row = (re.search(rf"^\s+{s}\s+([\d.]+)\s+([\d.]+)\s+\d+\s.*{tail}$",
                                     r.stdout, re.M)
                           for s, tail in (("3", r"\(the build\)"), ("3", r"[\d.]+")))
    assert float(build_row.group(2)) == pytest.approx(rep["fmax_mhz"], abs=0.005)
    assert float(seed_row.group(2)) == pytest.approx(rep["fmax_mhz"], abs=0.005)
    assert float(seed_row.group(1)) == pytest.approx(float(build_row.group(1)), abs=0.005)
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "not a finished build" in r.stderr and not r.stdout


def test_ecp5_bitstream_names_the_part(builds):
    rep, out = builds["ulx3s"]
    data = (out / "top.bit").read_bytes()
    # ecppack: a comment block (0xFF 0x00 ... 0x00 0xFF) naming the part, then
    # the ECP5 preamble 0xFFFFBDB3
    assert data[:2] == b"\xff\x00"
    end = data.index(b"\x00\xff", 2)
    assert b"Part: LFE5U-85F" in data[2:end]
    assert data.find(b"\xff\xff\xbd\xb3") > end - 2
    assert len(data) == rep["bitstream_bytes"] > 100_000


def test_ice40_bitstream_preamble(builds):
    rep, out = builds["icebreaker"]
    data = (out / "top.bin").read_bytes()
    assert b"\x7e\xaa\x99\x7e" in data[:32]
    assert len(data) == rep["bitstream_bytes"] == 104090  # an UP5K image


@pytest.mark.parametrize("board", ["ulx3s", "icebreaker"])
def test_report_is_read_from_the_tools(builds, small, board):
    rep, out = builds[board]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == rep
    nr = json.loads((out / "top.report.json").read_text())
    ys = json.loads((out / "top.stat.json").read_text())
    (clk, f), = nr["fmax"].items()
    # the ULX3S's constraint is the target, carried through the PLL from the
    # oscillator pin's; timing is met at the clock
    constraint = {"ulx3s": 50, "icebreaker": 30}[board]
    assert f["constraint"] == pytest.approx(constraint, rel=1e-3)
    assert rep.get("target_mhz") == {"ulx3s": 50, "icebreaker": None}[board]
    assert rep["fmax_mhz"] == f["achieved"]
    assert rep["timing_met"] is (f["achieved"] >= rep["clock_mhz"]) is True
    u = nr["utilization"]
    lut, ff, bram, dsp = B._CELLS[board]
    assert rep["lut"] == u[lut]["used"] and rep["lut_available"] == u[lut]["available"]
    assert rep["bram"] == u[bram]["used"] and rep["bram"] <= rep["bram_available"]
    assert rep["dsp"] == u.get(dsp, {}).get("used", 0)
    cells = ys["design"]["num_cells_by_type"]
    if ff:
        assert rep["ff"] == u[ff]["used"]
    else:
        assert rep["ff"] == sum(n for c, n in cells.items() if c.startswith("SB_DFF")) > 0
    assert rep["lut"] > 0 and rep["ff"] > 0 and rep["bram"] > 0
    # where the time goes: the critical path's logic and routing add up to
    # the period at Fmax, and the longest routes are listed, longest first
    (path,) = rep["critical_paths"]
    assert path["logic_ns"] + path["routing_ns"] == pytest.approx(1e3 / rep["fmax_mhz"], rel=0.02)
    assert path["longest_route"]["ns"] <= path["routing_ns"]
    ns = [n["ns"] for n in rep["long_nets"]]
    assert len(ns) == B.LONG_NETS and ns == sorted(ns, reverse=True) and ns[0] > 0
    # the ULX3S's block RAMs pinned by the floorplan, every one, and nextpnr
    # placed them there (its count of cells placed by constraints: the pins'
    # I/O and the blocks)
    if B.FLOORPLAN[board]:
        assert rep["floorplan"]["blocks"] == rep["bram"]
        placed = re.search(r"Placed (\d+) cells based on constraints",
                            (out / "top.tim").read_text())
        assert int(placed.group(1)) >= rep["bram"] + 3
    else:
        assert "floorplan" not in rep
    assert all(n["fanout"] >= 1 and n["net"] and n["driver"] for n in rep["long_nets"])
    if board == "icebreaker":  # the fit check is an upper bound of the RAM blocks used
        assert rep["bram"] <= rep["fit"]["blocks_with_bridge"]
    # nextpnr's placement seed: the one asked for, on nextpnr's command line
    seed = {"ulx3s": 3, "icebreaker": None}[board]
    assert rep["nextpnr_seed"] == seed
    assert ("--seed 3 " in (out / "build_top.sh").read_text()) is (seed is not None)
    net, lanes = small
    assert rep["design_id"] == P.design_id(net, [lanes] * len(net.layers))
    assert rep["clock_mhz"] == pytest.approx({"ulx3s": 40, "icebreaker": 30}[board], rel=1e-3)
    assert rep["link"]["divisor"] == {"ulx3s": 40, "icebreaker": 30}[board]
    pll = rep["pll"]
    if board == "ulx3s":  # 25 MHz * CLKFB_DIV / CLKI_DIV, VCO in range
        assert 25 * pll["clkfb_div"] / pll["clki_div"] == pytest.approx(40)
        assert 400 <= pll["vco_mhz"] <= 800
    else:  # the default clock: 12 MHz * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)
        assert 12 * (pll["divf"] + 1) / ((pll["divr"] + 1) * 2 ** pll["divq"]) == 30
        assert 533 <= pll["vco_mhz"] <= 1066


@pytest.mark.parametrize("board", ["ulx3s", "icebreaker"])
def test_cost_model_against_the_builds(builds, small, board):
    """The planner's cost model (hw/cost.py, fitted on other configurations)
    against the builds: Yosys's cells and nextpnr's logic cells within 15 %,
    block RAM the fit check's count or at most one less (Yosys drops a block
    whose bits are never read)."""
    from spikeforge.hw import cost
    rep, out = builds[board]
    net, lanes = small
    mod = B.BOARDS[board]
    pred = cost.estimate(net, lanes, mod.DEVICE, B.board_memories(net, board))
    got = json.loads((out / "top.stat.json").read_text())["design"]["num_cells_by_type"]
    lut = got["LUT4" if board == "ulx3s" else "SB_LUT4"]
    ff = sum(n for c, n in got.items() if c == "TRELLIS_FF" or c.startswith("SB_DFF"))
    assert pred["lut"] == pytest.approx(lut, rel=0.15)
    assert pred["ff"] == pytest.approx(ff, rel=0.15)
    assert pred["cells"] == pytest.approx(rep["lut"], rel=0.15)   # nextpnr's count
    assert pred["bram"] - 1 <= rep["bram"] <= pred["bram"]


def test_ice40_weights_in_spram_are_built_as_the_fit_check_says(tmp_path):
    """A 784-16-10 MLP of 4-bit weights (untrained) on the iCEBreaker: over
    its 30 RAM4K in block RAM, so the fit check puts layer 0's weights in
    one SPRAM block; the build places exactly that (nextpnr's
    ICESTORM_SPRAM) and no more RAM4K than the fit check counted."""
    from spikeforge.sw.models import build
    from spikeforge.sw.quantize import QuantConfig, quantize
    net = quantize(build("convsnn", channels=[], hidden=16, timesteps=2),
                   QuantConfig(weight_bits=4, input_bits=4))
    fit = B.check_board_fit(net, [1, 1], "icebreaker")
    assert (fit["spram_layers"], fit["spram"]) == ([0], 1)
    rep = B.build(net, "icebreaker", tmp_path, lanes=[1, 1], allow_timing_fail=True)
    assert rep["fit"]["spram_layers"] == [0]
    assert rep["utilization"]["ICESTORM_SPRAM"]["used"] == 1
    assert rep["bram"] <= fit["blocks"] <= 30
    assert (tmp_path / "top.bin").stat().st_size > 100_000
