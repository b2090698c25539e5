"""Flow integrity (issue 12): each step records its options, input hashes and
outcome in RUN/.flow; `spikeforge run` redoes a step that is missing, failed
or stale and every step after it, and exits with the verification's status.

The steps are replaced by quick fakes that write their output files from
their options, so the bookkeeping is tested through the real command line
without training or simulating anything."""

import json

import pytest

from spikeforge import cli, flow


class Fakes:
    def __init__(self):
        self.calls = []
        self.mismatches = 0

    def install(self, monkeypatch):
        for name in flow.STEPS:
            monkeypatch.setattr(flow, f"step_{name}", self._make(name))

    def _make(self, name):
        def step(run, args):
            self.calls.append(name)
            if name == "train":
                (run / "model.safetensors").write_text(f"weights lr={args.lr}")
                (run / "config.json").write_text(json.dumps({"lr": args.lr}))
            elif name == "quantize":
                src = (run / "model.safetensors").read_text()
                (run / flow.IMAGE).write_text(f"{src} bits={args.weight_bits}")
            elif name == "plan":
                (run / flow.PLAN).write_text(json.dumps({"lanes": args.lanes}))
            elif name == "export":
                (run / "hw").mkdir(exist_ok=True)
                (run / "hw" / "memories.json").write_text(json.dumps({"lanes": args.lanes}))
            elif name == "verify":
                (run / "sim.json").write_text(json.dumps({"mismatches": self.mismatches}))
                if self.mismatches:
                    raise flow.VerifyFailed(f"{self.mismatches} images differ")
            elif name == "report":
                (run / "report.txt").write_text("report\n")
        return step


@pytest.fixture
def fakes(monkeypatch):
    f = Fakes()
    f.install(monkeypatch)
    return f


def run_flow(out, *extra):
    return cli.main(["run", "-q", "--out", str(out), *map(str, extra)])


def test_resume_skips_only_what_is_done(fakes, tmp_path):
    assert run_flow(tmp_path) == 0
    assert fakes.calls == ["train", "quantize", "plan", "export", "verify", "report"]
    rec = json.loads((tmp_path / ".flow" / "quantize.json").read_text())
    assert rec["status"] == "ok" and rec["options"]["weight_bits"] == 8
    assert set(rec["inputs"]) == {"model.safetensors", "config.json"}
    assert all(len(h) == 64 for h in rec["inputs"].values())
    fakes.calls.clear()
    assert run_flow(tmp_path) == 0
    assert fakes.calls == ["report"]  # the report always runs


def test_a_new_run_folder_is_removed_only_when_its_failed_step_left_it_empty(
        monkeypatch, tmp_path, capsys):
    """A first step that fails in the run folder it made: the folder goes
    when nothing but the step's record is in it, and stays, with the record
    of the failure, when the step wrote something before it failed."""
    from spikeforge.errors import SpikeforgeError

    def fails_after_writing(run, args):
        (run / "train.log").write_text("epoch 1")   # not one of the step's outputs
        raise SpikeforgeError("diverged")

    def fails_at_once(run, args):
        raise SpikeforgeError("bad model")

    monkeypatch.setattr(flow, "step_train", fails_at_once)
    assert run_flow(tmp_path / "a") == 2
    assert "bad model" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(flow, "step_train", fails_after_writing)
    assert run_flow(tmp_path / "b") == 2
    assert "diverged" in capsys.readouterr().err
    rec = json.loads((tmp_path / "b" / ".flow" / "train.json").read_text())
    assert rec["status"] == "failed" and (tmp_path / "b" / "train.log").exists()


def test_failed_verify_is_never_done_and_sets_the_exit_status(fakes, tmp_path, capsys):
    fakes.mismatches = 3
    assert run_flow(tmp_path) == 1
    assert "3 images differ" in capsys.readouterr().err
    rec = json.loads((tmp_path / ".flow" / "verify.json").read_text())
    assert rec["status"] == "failed" and "3 images differ" in rec["error"]
    assert (tmp_path / "sim.json").exists()  # written before the failure, yet not "done"
    fakes.calls.clear()
    assert run_flow(tmp_path) == 1
    assert fakes.calls == ["verify"]
    fakes.mismatches = 0
    fakes.calls.clear()
    assert run_flow(tmp_path) == 0
    assert fakes.calls == ["verify", "report"]


def test_changed_options_redo_the_step_and_all_after(fakes, tmp_path, capsys):
    assert run_flow(tmp_path) == 0
    fakes.calls.clear()
    assert run_flow(tmp_path, "--weight-bits", 4) == 0
    assert fakes.calls == ["quantize", "plan", "export", "verify", "report"]
    assert "options changed: weight_bits" in capsys.readouterr().out
    assert (tmp_path / flow.IMAGE).read_text().endswith("bits=4")
    fakes.calls.clear()
    assert run_flow(tmp_path, "--weight-bits", 4, "--lanes", 2) == 0
    assert fakes.calls == ["plan", "export", "verify", "report"]
    fakes.calls.clear()
    assert run_flow(tmp_path, "--weight-bits", 4, "--lanes", 2, "--lr", "0.01") == 0
    assert fakes.calls == ["train", "quantize", "plan", "export", "verify", "report"]


def test_training_options_added_later_keep_the_records_before_them(fakes, tmp_path, capsys):
    """``penalty_warmup`` and ``ema`` came after runs were recorded: at the
    value those runs trained with (0) they stay out of the train record, so
    such a record is still done; another value is recorded and retrains."""
    assert run_flow(tmp_path, "--penalty-warmup", 0, "--ema", 0) == 0
    rec = json.loads((tmp_path / ".flow" / "train.json").read_text())["options"]
    assert "rate_penalty" in rec and not {"ema", "penalty_warmup"} & set(rec)
    fakes.calls.clear()
    assert run_flow(tmp_path, "--penalty-warmup", 0, "--ema", 0) == 0
    assert fakes.calls == ["report"]
    capsys.readouterr()
    fakes.calls.clear()
    assert run_flow(tmp_path) == 0  # the default run's recipe: a ramp and an average
    assert fakes.calls == ["train", "quantize", "plan", "export", "verify", "report"]
    assert "options changed: ema, penalty_warmup" in capsys.readouterr().out
    rec = json.loads((tmp_path / ".flow" / "train.json").read_text())["options"]
    assert (rec["ema"], rec["penalty_warmup"]) == (flow.DEFAULT.ema, flow.DEFAULT.penalty_warmup)


def test_changed_or_missing_files_redo_the_steps_that_use_them(fakes, tmp_path):
    assert run_flow(tmp_path) == 0
    # an input changed behind the flow's back: the steps that read it are stale
    (tmp_path / "model.safetensors").write_text("other weights")
    fakes.calls.clear()
    assert run_flow(tmp_path) == 0
    assert fakes.calls == ["quantize", "plan", "export", "verify", "report"]
    # an output changed (sim.json rewritten by `spikeforge sim`): that step again
    (tmp_path / "sim.json").write_text(json.dumps({"mismatches": 5}))
    fakes.calls.clear()
    assert run_flow(tmp_path) == 0
    assert fakes.calls == ["verify", "report"]
    # an output removed: that step again
    (tmp_path / "hw" / "memories.json").unlink()
    fakes.calls.clear()
    assert run_flow(tmp_path) == 0
    assert fakes.calls == ["export", "verify", "report"]
    # a record lost (or garbled): that step again
    (tmp_path / ".flow" / "verify.json").write_text("{garbled")
    fakes.calls.clear()
    assert run_flow(tmp_path) == 0
    assert fakes.calls == ["verify", "report"]


def test_from_step_is_kept(fakes, tmp_path):
    assert run_flow(tmp_path) == 0
    fakes.calls.clear()
    assert run_flow(tmp_path, "--from-step", "export") == 0
    assert fakes.calls == ["export", "verify", "report"]


def test_interrupted_step_is_not_done(fakes, tmp_path, monkeypatch):
    assert run_flow(tmp_path) == 0

    def interrupted(run, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(flow, "step_export", interrupted)
    assert run_flow(tmp_path, "--lanes", 2) == 130
    assert json.loads((tmp_path / ".flow" / "export.json").read_text())["status"] == "running"
    # what the interrupted export left in hw/ is not loaded
    with pytest.raises(flow.FlowError, match="the last export into .* did not end well"):
        flow.check_export_current(tmp_path)
    assert "did not finish last time" in flow.pending(
        tmp_path, next(s for s in flow.STEPS_LIST if s.name == "export"), None)
    assert json.loads((tmp_path / ".flow" / "plan.json").read_text())["status"] == "ok"
    fakes.install(monkeypatch)
    fakes.calls.clear()
    assert run_flow(tmp_path, "--lanes", 2) == 0
    assert fakes.calls == ["export", "verify", "report"]


def test_sub_commands_leave_the_same_records(fakes, tmp_path):
    # a step run on its own counts for `run` when its options are the same
    assert run_flow(tmp_path) == 0
    assert cli.main(["plan", str(tmp_path), "--lanes", "3"]) == 0
    assert cli.main(["export", str(tmp_path), "--lanes", "3"]) == 0
    assert json.loads((tmp_path / ".flow" / "export.json").read_text())["options"] == {"lanes": 3}
    assert json.loads((tmp_path / ".flow" / "plan.json").read_text())["options"] == {
        "board": None, "device": None, "lanes": 3}
    fakes.calls.clear()
    assert run_flow(tmp_path, "--lanes", 3) == 0
    assert fakes.calls == ["verify", "report"]
