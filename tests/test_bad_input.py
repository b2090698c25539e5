"""Bad input, as a hostile or careless user gives it: every command answers
with one line ``error: ...`` on stderr and exit status 2, never a traceback or
a hang (issue 12).  Everything goes through the real entry point,
``spikeforge.cli.main(argv)``, in-process."""

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikeforge import cli
from spikeforge.boards import host

TINY = ["--model", "convsnn", "--dataset", "digits8x8", "--epochs", "1", "--batch-size", "16",
        "--set", "channels=[4]", "--set", "hidden=8", "--timesteps", "2", "--train-limit", "64"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny trained and quantized run folder (read-only: tests copy it)."""
    run = tmp_path_factory.mktemp("base") / "run"
    assert cli.main(["train", "-q", *TINY, "--out", str(run)]) == 0
    assert cli.main(["quantize", "-q", str(run)]) == 0
    return run


@pytest.fixture
def run(base, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base, out)
    return out


def fails(argv, capsys, *needles, status=2) -> str:
    """Run the command line; assert the exit status and a one-line error naming
    every ``needle``; the message."""
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def valid_sim() -> dict:
    return {"images": 3, "mismatches": 0, "rtl_accuracy": 1.0, "golden_accuracy": 1.0,
            "cycles_per_inference": {"mean": 10.0, "min": 9, "max": 11}, "interval_cycles": 12.0,
            "energy": {"accumulates_per_inference": 5, "e_ac_pj": 0.1,
                       "e_synaptic_pj_per_inference": 0.5},
            "sim_cycles_per_second": 1e6, "sim_images_per_second": 3.0,
            "layers": [{"busy": 1, "scan": 2, "stall": 0}, {"busy": 1, "scan": 2, "stall": 0}]}


# --------------------------------------------------------------------------- run-folder files

def write(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))


def config_with(run: Path, section: str, **values) -> dict:
    cfg = json.loads((run / "config.json").read_text())
    cfg[section].update(values)
    return cfg


FILE_CASES = {
    # id: (file, content (or a function of the run folder), command, words of the message)
    "config-spec-list": ("config.json",
                         lambda r: {**json.loads((r / "config.json").read_text()), "spec": []},
                         "quantize", ["config.json", "'spec' must be an object"]),
    "config-not-utf8": ("config.json", b'{"train": "\xff\xfe"}', "quantize",
                        ["config.json", "not UTF-8"]),
    "config-deep": ("config.json", "[" * 100_000 + "]" * 100_000, "quantize",
                    ["config.json", "nested too deeply"]),
    "config-dropout-type": ("config.json", lambda r: config_with(r, "train", dropout="half"),
                            "quantize", ["config.json", "dropout must be a number"]),
    "config-lr-type": ("config.json", lambda r: config_with(r, "train", lr=[1]),
                       "quantize", ["config.json", "lr must be a finite number"]),
    "config-lr-negative": ("config.json", lambda r: config_with(r, "train", lr=-1),
                           "quantize", ["lr must be a finite number above 0"]),
    "config-timesteps-huge": ("config.json", lambda r: config_with(r, "spec", timesteps=2 ** 40),
                              "quantize", ["timesteps must be an integer in 1..64"]),
    "config-unknown-field": ("config.json", lambda r: config_with(r, "train", colour="red"),
                             "quantize", ["config.json", "colour"]),
    "metrics-garbled": ("metrics.json", "{not json", "quantize",
                        ["metrics.json", "not valid JSON"]),
    "metrics-list": ("metrics.json", "[1, 2]", "quantize",
                     ["metrics.json", "expected a JSON object, not a list"]),
    "metrics-empty-report": ("metrics.json", {}, "report", ["metrics.json", "missing field 'model'"]),
    "metrics-rates-type": ("metrics.json",
                           lambda r: {**json.loads((r / "metrics.json").read_text()),
                                      "firing_rates": "high"},
                           "report", ["'firing_rates' must be a list of finite numbers"]),
    "metrics-rates-count": ("metrics.json",
                            lambda r: {**json.loads((r / "metrics.json").read_text()),
                                       "firing_rates": [0.1]},
                            "report", ["1 firing rates for the 3 layers"]),
    "metrics-rates-nan": ("metrics.json",
                          lambda r: (r / "metrics.json").read_text().replace(
                              '"firing_rates": [', '"firing_rates": [NaN, '),
                          "report", ["'firing_rates' must be a list of finite numbers"]),
    "sim-garbled": ("sim.json", b"\x00\x01garbage", "report", ["sim.json"]),
    "sim-empty": ("sim.json", {}, "report", ["sim.json", "missing field 'images'"]),
    "sim-cycles-zero": ("sim.json", {**valid_sim(), "cycles_per_inference":
                                     {"mean": 0, "min": 0, "max": 0}},
                        "report", ["sim.json", "'mean' must be a positive number"]),
    "sim-first-image": ("sim.json", {**valid_sim(), "first_image_cycles": "x"}, "report",
                        ["sim.json", "'first_image_cycles' must be a positive number"]),
    "sim-sdram": ("sim.json", {**valid_sim(), "sdram": 5}, "report",
                  ["sim.json", "'sdram' must be a list of non-negative integers"]),
    "sim-layers-count": ("sim.json", valid_sim(), "report",
                         ["sim.json: 2 layers' cycles for the 3 layers of"]),
    "sim-layers-list": ("sim.json", {**valid_sim(), "layers": [1, 2]}, "report",
                        ["sim.json", "'layers' must be a non-empty list of objects"]),
    "memories-garbled": ("hw/memories.json", "lanes: 4", "build --board icebreaker",
                         ["memories.json", "not valid JSON"]),
    "memories-lanes": ("hw/memories.json", {"lanes": "four"}, "build --board icebreaker",
                       ["memories.json", "'lanes' must be a non-empty list of positive integers"]),
    "image-dev-zero": ("weights.sfimg", None, "export", ["weights.sfimg", "larger than"]),
    # a re-plan (``--lanes``) keeps the plan's board: a damaged one is named
    "plan-board": ("plan.json", {"board": "zx81", "lanes": [1, 1, 1]}, "export --lanes 2",
                   ["plan.json", "field 'board' must be one of ulx3s, icebreaker", "zx81"]),
    "plan-device": ("plan.json", {"board": "ulx3s", "device": 5, "lanes": [1, 1, 1]},
                    "export --lanes 2", ["plan.json", "field 'device'"]),
    "plan-board-device": ("plan.json", {"board": "icebreaker", "device": "ecp5-85f",
                                        "lanes": [1, 1, 1]}, "export --lanes 2",
                          ["plan.json", "device ecp5-85f is not of the icebreaker's family"]),
    # lanes from a file: the error names the file, not --lanes
    "plan-lanes-count": ("plan.json", {"board": "ulx3s", "lanes": [1, 1]}, "export",
                         ["plan.json: lanes [1, 1]: 2 lane counts for 3 layers"]),
    "memories-lanes-count": ("hw/memories.json", {"lanes": [1, 1]}, "sim",
                             ["memories.json: lanes [1, 1]: 2 lane counts for 3 layers"]),
    # words from a file: the error names the file (and --words names --words)
    "plan-words": ("plan.json", {"board": "ulx3s", "lanes": [2, 2, 1], "words": [3, 1, 1]},
                   "export", ["plan.json: words [3, 1, 1]", "layer 0 takes single events"]),
    "plan-sdram-icebreaker": ("plan.json", {"board": "icebreaker", "lanes": [1, 1, 1],
                                            "sdram": [1]}, "export",
                              ["plan.json: sdram [1]: the icebreaker has no SDRAM chip"]),
    "memories-words": ("hw/memories.json", {"lanes": [2, 2, 1], "words": [3, 1, 1]}, "sim",
                       ["memories.json: words [3, 1, 1]", "layer 0 takes single events"]),
    # an integer of more digits than Python converts (a ValueError, not a JSONDecodeError)
    "plan-int-too-long": ("plan.json", '{"board": "ulx3s", "fifo_depth": ' + "9" * 5000 + "}",
                          "export", ["plan.json", "not valid JSON"]),
    "sim-int-too-long": ("sim.json", '{"images": ' + "9" * 5000 + "}", "report",
                         ["sim.json", "not valid JSON"]),
    # a threshold that no integer holds (theta / weight step above 2**62)
    "config-theta-huge": ("config.json", lambda r: _with_theta(r, 1e300), "quantize",
                          ["layer 0: theta 1e+300", "too large for an integer threshold"]),
    # named pipes: refused before the open, which would wait for a writer
    "image-fifo": ("weights.sfimg", "fifo", "export", ["weights.sfimg", "a named pipe"]),
    "plan-fifo": ("plan.json", "fifo", "export", ["plan.json", "a named pipe"]),
    "metrics-fifo": ("metrics.json", "fifo", "report", ["metrics.json", "a named pipe"]),
}


def _with_theta(run: Path, theta: float) -> dict:
    cfg = json.loads((run / "config.json").read_text())
    for layer in cfg["spec"]["layers"]:
        layer["neuron"]["theta"] = theta
    return cfg


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_run_folder_file(run, capsys, case):
    name, content, command, needles = FILE_CASES[case]
    path = run / name
    if content is None:  # a symlink to /dev/zero: refused by size, at once
        path.unlink()
        path.symlink_to("/dev/zero")
    elif content == "fifo":
        path.unlink(missing_ok=True)
        os.mkfifo(path)
    else:
        write(path, content(run) if callable(content) else content)
    cmd, *extra = command.split()
    fails([cmd, run, *extra], capsys, *needles)


def test_bad_fifo_depth_in_the_plan_or_the_export(run, capsys):
    """The event FIFO depth travels plan -> export -> verify; a damaged one
    is refused by the step that reads it, before any Verilator build."""
    assert cli.main(["export", str(run)]) == 0
    idx = run / "hw" / "memories.json"
    assert json.loads(idx.read_text())["fifo_depth"] == 32   # planned for the ULX3S
    write(idx, {**json.loads(idx.read_text()), "fifo_depth": 1})
    fails(["verify", run, "--images", "2"], capsys, "memories.json",
          "'fifo_depth' must be an integer in 2..65536")
    plan = run / "plan.json"
    write(plan, {**json.loads(plan.read_text()), "fifo_depth": "deep"})
    fails(["export", run], capsys, "plan.json", "'fifo_depth' must be an integer in 2..65536")
    write(plan, {**json.loads(plan.read_text()), "fifo_depth": 1 << 40})
    fails(["export", run], capsys, "plan.json", "'fifo_depth' must be an integer in 2..65536")


def test_report_refuses_a_damaged_build_report_and_writes_nothing(run, capsys):
    """A build's report.json with a bad figure, or a bad weight image: an
    error naming the file, and no report.txt half written."""
    write(run / "sim.json", valid_sim() | {"layers": [{"busy": 1, "scan": 2, "stall": 0}] * 3})
    rep = run / "build" / "ulx3s" / "report.json"
    for value in ("fast", None, 0):
        write(rep, {"fmax_mhz": value, "latency_us": 1.0, "inferences_per_second": 5.0})
        fails(["report", run], capsys, str(rep), "'fmax_mhz'")
    rep.unlink()
    write(run / "weights.sfimg", b"")
    fails(["report", run], capsys, "weights.sfimg")
    assert not (run / "report.txt").exists()


def test_report_runs_on_the_untouched_folder(run, capsys):
    # the file checks above refuse only what is wrong: the same folder reports
    write(run / "sim.json", valid_sim() | {"layers": [{"busy": 1, "scan": 2, "stall": 0}] * 3})
    assert cli.main(["report", str(run), "--clock-mhz", "25"]) == 0
    assert "at 25 MHz" in (run / "report.txt").read_text()


# --------------------------------------------------------------------------- flags

FLAG_CASES = {
    "train-limit-0": (["train", "--train-limit", "0"], ["--train-limit", "at least 1"]),
    "train-limit-neg": (["train", "--train-limit", "-5"], ["--train-limit", "at least 1"]),
    "lr-nan": (["train", "--lr", "nan"], ["--lr", "finite number above 0"]),
    "lr-neg": (["train", "--lr", "-1"], ["--lr", "finite number above 0"]),
    "rate-penalty-neg": (["train", "--rate-penalty", "-0.1"], ["--rate-penalty", "of 0 or more"]),
    "rate-penalty-inf": (["run", "--rate-penalty", "inf"], ["--rate-penalty", "finite number"]),
    "ema-1": (["train", "--ema", "1"], ["--ema", "in [0, 1)"]),
    "ema-neg": (["run", "--ema", "-0.1"], ["--ema", "in [0, 1)"]),
    "ema-nan": (["train", "--ema", "nan"], ["--ema", "in [0, 1)"]),
    "ema-word": (["train", "--ema", "fast"], ["--ema", "expected a number"]),
    "penalty-warmup-neg": (["train", "--penalty-warmup", "-1"], ["--penalty-warmup", "0..100000"]),
    "seed-huge": (["train", "--seed", str(2 ** 70)], ["--seed", str(2 ** 70)]),
    "seed-expr": (["train", "--seed", "2**70"], ["--seed", "expected an integer"]),
    "epochs-0": (["train", "--epochs", "0"], ["--epochs"]),
    "timesteps-huge": (["train", "--timesteps", "1000"], ["--timesteps", "1..64"]),
    "classes": (["train", *TINY, "--set", "classes=3"], ["3 classes", "digits8x8 10"]),
    "hidden-huge": (["train", *TINY, "--set", "hidden=1000000000000"], ["parameters exceed"]),
    "hidden-expr": (["train", *TINY, "--set", "hidden=10**12"], ["hidden"]),
    "hidden-too-long": (["train", *TINY, "--set", "hidden=" + "9" * 5000], ["--set hidden"]),
    "theta-inf": (["train", *TINY, "--set", "theta=1e400"],
                  ["theta must be a finite positive number, not inf"]),
    "channels-text": (["train", *TINY, "--set", "channels=abc"], ["channels"]),
    "timesteps-twice": (["train", *TINY, "--set", "timesteps=3"],
                        ["--timesteps 2 and --set timesteps=3 disagree"]),
    "timesteps-set-bad": (["train", "--out", "RUN", "--set", "timesteps=true"], ["timesteps"]),
    "hidden-bool": (["train", *TINY, "--set", "hidden=true"],
                    ["hidden=True", "must be a positive integer, not True"]),
    "channels-bool": (["train", *TINY, "--set", "channels=[true,4]"],
                      ["must be a positive integer, not True"]),
    "clock-0": (["report", "RUN", "--clock-mhz", "0"], ["--clock-mhz"]),
    "clock-neg": (["report", "RUN", "--clock-mhz", "-5"], ["--clock-mhz"]),
    "clock-nan": (["report", "RUN", "--clock-mhz", "nan"], ["--clock-mhz", "nan"]),
    "lanes-underscore": (["export", "RUN", "--lanes", "4_4"], ["--lanes", "'4_4'"]),
    "words-fullwidth": (["plan", "RUN", "--lanes", "4", "--words", "\uff11"], ["--words"]),
    "run-empty": (["plan", ""], ["argument run", "not an empty path"]),
    "out-empty": (["train", "--out", ""], ["--out", "not an empty path"]),
    "clock-huge": (["report", "RUN", "--clock-mhz", "1e300"], ["--clock-mhz", "0.001..10000"]),
    "clock-tiny": (["report", "RUN", "--clock-mhz", "1e-300"], ["--clock-mhz", "0.001..10000"]),
    "baud-neg": (["infer", "RUN", "--port", "/dev/null", "--baud", "-5"], ["--baud"]),
    "qat-neg": (["quantize", "RUN", "--qat-epochs", "-1"], ["--qat-epochs"]),
    "weight-bits": (["quantize", "RUN", "--weight-bits", "40"], ["--weight-bits", "2..16"]),
    "input-bits": (["quantize", "RUN", "--input-bits", "9"], ["--input-bits", "1..8"]),
    "lanes-1000": (["export", "RUN", "--lanes", "1000"], ["lane count P", "1..4", "1000"]),
    "lanes-zero": (["export", "RUN", "--lanes", "0"], ["--lanes", "positive"]),
    "plan-lanes": (["plan", "RUN", "--lanes", "1000"], ["lane count P", "1000"]),
    "plan-device": (["plan", "RUN", "--device", "xc7a35t"], ["--device", "xc7a35t"]),
    "plan-device-family": (["plan", "RUN", "--board", "icebreaker", "--device", "ecp5-85f"],
                           ["device ecp5-85f", "icebreaker carries an ice40up5k"]),
    "words-lanes-count": (["plan", "RUN", "--lanes", "1,2", "--words", "1,1"],
                          ["error: 2 lane counts for 3 layers"]),
    "words-bad": (["export", "RUN", "--lanes", "2", "--words", "3,1,1"],
                  ["--words: words [3, 1, 1]", "layer 0 takes single events"]),
    "lanes-count": (["export", "RUN", "--lanes", "1,2"],
                    ["2 lane counts for", "one per layer, or one for all"]),
    "images-0": (["sim", "RUN", "--images", "0"], ["--images"]),
    "seed-0": (["build", "RUN", "--board", "ulx3s", "--seed", "0"],
               ["--seed", "1..2147483647", "not 0"]),
    "seed-text": (["build", "RUN", "--board", "ulx3s", "--seed", "two"], ["--seed", "'two'"]),
    "unknown-option": (["report", "RUN", "--colour"], ["unrecognized arguments: --colour"]),
    "run-a-file": (["report", "RUN/config.json"], ["run folder", "config.json is not a folder"]),
    "nir-out-folder": (["export-nir", "RUN", "--out", "RUN"], ["--out", "is a folder"]),
    "no-command": ([], ["command"]),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_bad_flag(run, capsys, tmp_path, case):
    argv, needles = FLAG_CASES[case]
    argv = [a.replace("RUN", str(run)) if a.startswith("RUN") else a for a in argv]
    if argv and argv[0] == "train":
        argv += ["-q", "--out", str(tmp_path / "out")]
    fails(argv, capsys, *needles)


def test_run_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    fails(["train", "-q", *TINY, "--out", tmp_path / "taken"], capsys, "taken", "File exists")


@pytest.mark.parametrize("command", ["train", "run"])
def test_bad_set_leaves_no_run_folder(tmp_path, capsys, command):
    out = tmp_path / "new" / "run"   # its parent made for it too, and removed
    fails([command, "-q", *TINY, "--set", "hidden=ten", "--out", out], capsys, "hidden")
    assert not (tmp_path / "new").exists()
    # a folder that was there before stays, with the record of the failure
    (tmp_path / "kept").mkdir()
    fails([command, "-q", *TINY, "--set", "hidden=ten", "--out", tmp_path / "kept"], capsys,
          "hidden")
    rec = json.loads((tmp_path / "kept" / ".flow" / "train.json").read_text())
    assert rec["status"] == "failed" and "hidden" in rec["error"]
    # a path through ``..`` to a folder that was there: kept
    (tmp_path / "there").mkdir()
    fails([command, "-q", *TINY, "--set", "hidden=ten",
           "--out", tmp_path / "gone" / ".." / "there"], capsys, "hidden")
    assert (tmp_path / "there").is_dir()


def test_a_folder_in_place_of_a_file(run, capsys, tmp_path):
    """A folder where a file belongs is named as a folder, not as missing."""
    assert cli.main(["export", str(run)]) == 0
    index = json.loads((run / "hw" / "memories.json").read_text())
    hexfile = run / "hw" / index["memories"][0]["file"]
    hexfile.unlink()
    hexfile.mkdir()
    fails(["sim", run, "--images", "1"], capsys, f"{hexfile}: a folder, not a hex file")
    (run / "model.safetensors").unlink()
    (run / "model.safetensors").mkdir()
    fails(["quantize", run], capsys, f"{run / 'model.safetensors'}: a folder, not a file")
    fails(["import", tmp_path, "--out", tmp_path / "imported"], capsys,
          f"{tmp_path}: a folder, not a NIR file")


def test_export_lanes_agree_with_the_engine(run, capsys):
    # what export accepts, the engine accepts: the output channels bound both
    from spikeforge import image
    from spikeforge.hw.network import lane_counts
    net, _ = image.read_image(run / "weights.sfimg")
    top = min(l.out_channels for l in net.spec.layers)
    assert cli.main(["export", str(run), "--lanes", str(top)]) == 0
    assert json.loads((run / "hw" / "memories.json").read_text())["lanes"] == lane_counts(net, top)
    fails(["export", run, "--lanes", top + 1], capsys, "lane count P")


# --------------------------------------------------------------------------- run --model

class Stop(Exception):
    pass


def test_run_with_another_model_gets_its_own_defaults(monkeypatch, tmp_path, capsys):
    from spikeforge.sw import train as sftrain
    seen = []

    def fake_train(cfg, run, progress=True):
        seen.append(cfg)
        from spikeforge.sw.models import spec_for
        spec_for(cfg.model, **cfg.overrides)  # the overrides fit the model
        raise sftrain.TrainError("stopped by the test")

    monkeypatch.setattr(sftrain, "train", fake_train)
    for model in ("bpsta-small", "sts-resnet", "stcsnn-vgg"):
        fails(["run", "--model", model, "--out", tmp_path / model], capsys, "stopped by the test")
        assert seen[-1].model == model and seen[-1].overrides == {}
    # the embedded default keeps its small ConvSNN, and --set still applies
    fails(["run", "--out", tmp_path / "default", "--set", "hidden=32"], capsys, "stopped")
    assert seen[-1].overrides == {"channels": (16, 32), "hidden": 32}


# --------------------------------------------------------------------------- infer: no hang

class ChattyPort:
    """A serial port that never goes quiet; time is virtual (10 ms a read)."""

    def __init__(self, port, baud):
        self.clock = 0.0
        self.reads = 0

    def write(self, data):
        pass

    def read(self, n, timeout):
        self.reads += 1
        self.clock += 0.01
        assert self.reads < 100_000, "the host never gave up"
        return b"boot log line\r\n"[:n]

    def now(self):
        return self.clock

    def close(self):
        pass


def test_infer_on_a_port_that_never_goes_quiet(run, capsys, monkeypatch):
    write(run / "build" / "ulx3s" / "report.json", {"board": "ulx3s", "lanes": [1, 1, 1]})
    monkeypatch.setattr(host, "SerialTransport", ChattyPort)
    fails(["infer", run, "--port", "/dev/ttyFAKE", "--images", "2"], capsys,
          "did not go quiet")


def test_infer_with_a_garbled_build_report(run, capsys):
    write(run / "build" / "ulx3s" / "report.json", "{")
    fails(["infer", run, "--port", "/dev/ttyFAKE"], capsys, "report.json", "not valid JSON")


# --------------------------------------------------------------------------- a space in the path

@pytest.mark.verilator
def test_verilator_build_in_a_folder_with_a_space(tmp_path):
    from spikeforge import toolchain
    from spikeforge.sim import runner
    toolchain.setup()
    toolchain.require("verilator")
    bdir = tmp_path / "my runs" / "b#1"
    assert not runner.make_safe(bdir)
    src = {"tiny": "module tiny(input clk, output reg [3:0] q);\n"
                   "initial q = 0;\nalways @(posedge clk) q <= q + 1;\nendmodule\n"}
    assert runner.verilator_build(bdir, "tiny", lambda: src)
    assert (bdir / "obj" / "tiny").is_file() and (bdir / "built.ok").is_file()
    assert not runner.verilator_build(bdir, "tiny", lambda: src)  # cached


# --------------------------------------------------------------------------- weight images

def wide_theta_network(state_bits: int, acc_bits: int):
    """One fc layer 4 -> 2 (IF): a current of 4 * 255 a step, theta above 2**31."""
    import torch

    from spikeforge.config import LayerKind, LayerSpec, NetworkSpec, NeuronKind, NeuronSpec
    from spikeforge.sw.golden import IntLayer, IntNetwork
    fc = LayerSpec(LayerKind.FC, 4, 2, (1, 1), neuron=NeuronSpec(NeuronKind.IF))
    spec = NetworkSpec("wide", (1, 2, 2), 4, (fc,), classes=2)
    one = torch.ones(2, dtype=torch.int64)
    layer = IntLayer(fc, torch.ones(2, 4, 1, 1, dtype=torch.int64), 0 * one,
                     one * ((1 << 31) + 5), 0 * one, (), 2, state_bits, acc_bits, 8)
    return IntNetwork(spec, (layer,))


def test_golden_model_does_not_wrap_a_wide_threshold():
    # acc_bits claims 20 bits, theta needs 33: int32 would wrap theta negative
    # and fire every step; the golden model picks its type from the values
    import torch

    from spikeforge.sw import golden
    net = wide_theta_network(40, 20)
    x = torch.full((3, 1, 1, 2, 2), 255, dtype=torch.uint8)
    res = golden.run(net, x)
    assert int(golden.unpack(res.spikes[0], 2).sum()) == 0
    assert res.scores.tolist() == [[0, 0]] * 3


@pytest.mark.parametrize("state_bits,acc_bits,needles", [
    (40, 20, ["weights.sfimg", "layers[0].state_bits = 40 is outside 2..32"]),
    (32, 20, ["layers[0].acc_bits = 20 is below state_bits = 32"]),
    (32, 40, ["layers[0].theta: value 2147483653 is outside 1..2147483647"]),
])
def test_crafted_image_is_refused_by_every_command(run, capsys, state_bits, acc_bits, needles):
    from spikeforge import image
    image.write_image(run / "weights.sfimg", wide_theta_network(state_bits, acc_bits),
                      {"dataset": "digits8x8", "seed": 0})
    for command in (["export"], ["sim"], ["report"], ["build", "--board", "icebreaker"]):
        fails([command[0], run, *command[1:]], capsys, *needles)


@pytest.mark.parametrize("dataset,command,needles", [
    ("mnist5k", "quantize", ["config.json: train.dataset", "'mnist5k' gives inputs of 1x28x28",
                             "the network takes 1x8x8"]),
    ("nosuch", "quantize", ["config.json: train.dataset", "unknown dataset 'nosuch'"]),
])
def test_config_naming_another_data_set(run, capsys, dataset, command, needles):
    write(run / "config.json", config_with(run, "train", dataset=dataset))
    fails([command, run], capsys, *needles)


def test_image_meta_naming_another_data_set(run, capsys):
    from spikeforge import image
    net, meta = image.read_image(run / "weights.sfimg")
    image.write_image(run / "weights.sfimg", net, {**meta, "dataset": "mnist5k"})
    fails(["plan", run], capsys, "weights.sfimg: meta.dataset",
          "'mnist5k' gives inputs of 1x28x28")


def test_a_replan_replaces_the_plans_bad_words(run, capsys):
    """``export --lanes`` plans again, so the old plan's words (bad here)
    are not checked: they are replaced."""
    write(run / "plan.json", {"board": "ulx3s", "lanes": [1, 1, 1], "words": [3, 1, 1]})
    assert cli.main(["export", str(run), "--lanes", "2"]) == 0
    assert json.loads((run / "plan.json").read_text())["words"] == [1, 1, 1]


def test_image_meta_naming_a_bad_data_set(run, capsys):
    from spikeforge import image
    net, meta = image.read_image(run / "weights.sfimg")
    image.write_image(run / "weights.sfimg", net, {**meta, "seed": -1})
    fails(["report", run], capsys, "meta.seed must be an integer")


# --------------------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12)

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def mutate(doc, path, value):
    """``doc`` with the entry at ``path`` (keys / indices, clamped) set to ``value``."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    if isinstance(doc, dict):
        keys = sorted(doc)
        k = keys[path[0] % len(keys)]
        return {**doc, k: mutate(doc[k], path[1:], value)}
    i = path[0] % len(doc)
    return doc[:i] + [mutate(doc[i], path[1:], value)] + doc[i + 1:]


def only_clean_exits(argv, capsys, ok=(0, 2)):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code in ok, err
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    return code


@FUZZ
@given(path=st.lists(st.integers(0, 50), max_size=4), value=json_values)
def test_fuzz_config_json(base, tmp_path_factory, capsys, path, value):
    run = tmp_path_factory.mktemp("cfg")
    good = json.loads((base / "config.json").read_text())
    write(run / "config.json", mutate(good, path, value))
    write(run / "metrics.json", {})
    (run / "model.safetensors").write_bytes(b"")  # a valid config stops at the weights
    only_clean_exits(["quantize", "-q", run], capsys, ok=(2,))


@FUZZ
@given(path=st.lists(st.integers(0, 50), max_size=3), value=json_values,
       sim_path=st.lists(st.integers(0, 50), max_size=3), sim_value=json_values,
       with_sim=st.booleans())
def test_fuzz_metrics_and_sim_json(base, tmp_path_factory, capsys, path, value, sim_path,
                                   sim_value, with_sim):
    run = tmp_path_factory.mktemp("rep")
    good = json.loads((base / "metrics.json").read_text())
    write(run / "metrics.json", mutate(good, path, value))
    if with_sim:
        write(run / "sim.json", mutate(valid_sim(), sim_path, sim_value))
    only_clean_exits(["report", run], capsys)


FLAGS = {
    "train": ["--epochs", "--timesteps", "--batch-size", "--lr", "--seed", "--hybrid-epochs",
              "--rate-penalty", "--penalty-warmup", "--ema", "--train-limit", "--loss", "--model"],
    "quantize": ["--weight-bits", "--qat-epochs", "--input-bits"],
    "export": ["--lanes"],
    "plan": ["--lanes", "--board", "--device"],
    "sim": ["--lanes", "--images"],
    "verify": ["--lanes", "--images"],
    "report": ["--clock-mhz"],
    "infer": ["--baud", "--images", "--port", "--batch"],
    "build": ["--lanes", "--board"],
}
flag_text = st.one_of(st.text(max_size=12), st.integers(-2 ** 80, 2 ** 80).map(str),
                      st.floats().map(repr), st.sampled_from(["nan", "inf", "-0", "1e400", "0x10",
                                                              "1,2", "", "-", "--"]))


@FUZZ
@given(command=st.sampled_from(sorted(FLAGS)), data=st.data())
def test_fuzz_flags(tmp_path_factory, capsys, command, data):
    # the run folder does not exist (and `train` names an unknown data set), so
    # every command line ends in exit status 2 however its flags parse
    flag = data.draw(st.sampled_from(FLAGS[command]))
    value = data.draw(flag_text)
    missing = tmp_path_factory.getbasetemp() / "no such run"
    if command == "train":
        argv = ["train", "-q", "--dataset", "no-such-data", "--out",
                tmp_path_factory.getbasetemp() / "train out"]
    elif command == "infer":
        argv = ["infer", missing, "--port", "/dev/null"]
    elif command == "build":
        argv = ["build", missing, "--board", "ulx3s"]
    else:
        argv = [command, missing]
    only_clean_exits([*argv, f"{flag}={value}"], capsys, ok=(2,))


def test_unknown_train_field_with_a_control_character_is_one_line(base, tmp_path, capsys):
    """A train field the config does not know is named quoted with its
    escapes ('\\x1e' would split the line: found by the fuzz test)."""
    run = tmp_path / "cfg"
    good = json.loads((base / "config.json").read_text())
    write(run / "config.json", {**good, "train": {**good["train"], "\x1e": None}})
    write(run / "metrics.json", {})
    (run / "model.safetensors").write_bytes(b"")
    assert only_clean_exits(["quantize", "-q", run], capsys, ok=(2,)) == 2


def test_a_missing_training_names_the_command_that_makes_it(tmp_path, capsys):
    """An empty run folder: the message's command works as printed (train
    takes its folder as ``--out``)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for cmd in ("report", "quantize"):
        fails([cmd, empty], capsys, f"{empty / 'metrics.json'} is missing: run "
              f"`spikeforge train --out {empty}` first")


def test_weights_of_a_diverged_training_are_named(run, capsys):
    """A NaN in the trained weights: quantize names the file and the tensor
    (not an integer range error from deep in the golden model); a tensor of
    the wrong shape: one line naming the file."""
    from safetensors.torch import load_file, save_file
    path = run / "model.safetensors"
    state = load_file(str(path))
    key = next(k for k, v in state.items() if k.endswith("weight") and v.is_floating_point())
    saved = {k: v.clone() for k, v in state.items()}
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(path))
    fails(["quantize", run], capsys, str(path), key, "NaN or infinite", "diverge")
    saved[key] = saved[key][..., :1].contiguous()
    save_file(saved, str(path))
    fails(["quantize", run], capsys, str(path), "cannot load", key)


def test_infer_names_the_board_whose_build_is_missing(run, capsys):
    write(run / "build" / "ulx3s" / "report.json", {"board": "ulx3s", "lanes": [1, 1, 1]})
    fails(["infer", run, "--port", "/dev/ttyFAKE", "--board", "icebreaker"], capsys,
          f"no icebreaker build report under {run / 'build'}",
          f"`spikeforge build {run} --board icebreaker`")


def test_build_checks_sim_json_before_synthesis(run, capsys):
    """The build report's throughput comes from sim.json: a damaged one is
    refused before Yosys runs, not after the build (a ZeroDivisionError)."""
    write(run / "sim.json", valid_sim() | {"interval_cycles": 0})
    fails(["build", run, "--board", "icebreaker"], capsys, "sim.json",
          "'interval_cycles' must be a positive number")
    assert not (run / "build").exists()
