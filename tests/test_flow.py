"""Training, quantization and the command line, end to end on tiny data."""

import json

import pytest
import torch

from spikeforge import cli, image
from spikeforge.sw import golden
from spikeforge.sw.data import load
from spikeforge.sw.train import TrainConfig, load_run, train

TINY = dict(model="convsnn", dataset="digits8x8", epochs=2, batch_size=16, lr=2e-3,
            overrides={"channels": (6,), "hidden": 24, "timesteps": 6})
TINY_ARGS = ["--model", "convsnn", "--dataset", "digits8x8", "--epochs", "2", "--batch-size", "16", "--lr", "2e-3",
             "--set", "channels=[6]", "--set", "hidden=24", "--timesteps", "6"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert cli.main(["train", "-q", *TINY_ARGS, "--out", str(run)]) == 0
    return run


def test_train_writes_the_run_folder(run_dir):
    for name in ("model.safetensors", "config.json", "metrics.json", "training_curve.png"):
        assert (run_dir / name).is_file()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["test_accuracy"] > 0.6  # 10 classes: chance is 0.1
    assert len(m["firing_rates"]) == 3 and all(0 <= r <= 1 for r in m["firing_rates"])
    e = m["energy"]
    assert e["e_ann_fp32_pj"] == pytest.approx(e["ann_macs"] * 4.6)
    assert e["e_snn_pj"] == pytest.approx(e["snn_acs"] * 0.1 + e["snn_macs"] * 3.2)


def test_same_seed_same_result(run_dir, tmp_path):
    m2 = train(TrainConfig(**TINY), tmp_path / "again", progress=False)
    m1 = json.loads((run_dir / "metrics.json").read_text())
    assert m2["test_accuracy"] == m1["test_accuracy"]
    assert m2["firing_rates"] == m1["firing_rates"]
    _, a = load_run(run_dir)
    _, b = load_run(tmp_path / "again")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_rate_penalty_lowers_the_hidden_layers_firing_rates(run_dir, tmp_path):
    """The penalty reaches the hidden layers through the surrogate gradient:
    the same run with it spikes less there (and so sends the engine fewer
    events); a bad value is refused."""
    plain = json.loads((run_dir / "metrics.json").read_text())
    m = train(TrainConfig(**TINY, rate_penalty=0.02), tmp_path / "sparse", progress=False)
    assert len(m["firing_rates"]) == len(plain["firing_rates"])
    for r, r0 in zip(m["firing_rates"][:-1], plain["firing_rates"][:-1]):
        assert r < 0.7 * r0, (m["firing_rates"], plain["firing_rates"])
    assert m["test_accuracy"] > 0.7
    with pytest.raises(ValueError, match="rate_penalty"):
        TrainConfig(**TINY, rate_penalty=-1.0)


def test_the_rate_penalty_ramps_up_over_its_warmup(tmp_path, monkeypatch):
    """``penalty_warmup`` W: the penalty's share at each training step rises
    linearly from 0 at the first step to 1 after W epochs and stays there,
    and the penalty is scaled by it; 0 (TrainConfig's default) is the whole
    penalty from the start; a negative value is refused."""
    from spikeforge.sw import train as sftrain
    shares = []
    rate_loss = sftrain._rate_loss

    def record(cfg, trace, ramp=1.0):
        shares.append(ramp)
        out = rate_loss(cfg, trace, ramp)
        whole = rate_loss(cfg, trace)
        assert whole > 0 and torch.allclose(out, ramp * whole)  # the penalty scaled by it
        return out
    monkeypatch.setattr(sftrain, "_rate_loss", record)
    per_epoch = -(-len(load("digits8x8").y_train) // TINY["batch_size"])
    for warmup in (2, 0):
        shares.clear()
        train(TrainConfig(**{**TINY, "epochs": 3}, rate_penalty=0.02, penalty_warmup=warmup),
              tmp_path / f"w{warmup}", progress=False)
        assert len(shares) == 3 * per_epoch
        expect = [min(1.0, k / (warmup * per_epoch)) if warmup else 1.0
                  for k in range(3 * per_epoch)]
        assert shares == pytest.approx(expect), (warmup, shares[:5])
    with pytest.raises(ValueError, match="penalty_warmup must be an integer of 0 or more"):
        TrainConfig(**TINY, penalty_warmup=-1)


def test_a_silent_network_is_warned_of(tmp_path, capsys):
    """A rate penalty strong enough to switch every neuron off leaves a
    network that answers one class: training says so, naming the silent
    layers and the penalty; a network that spikes gets no warning."""
    capsys.readouterr()
    m = train(TrainConfig(**TINY, rate_penalty=50.0), tmp_path / "silent", progress=False)
    err = capsys.readouterr().err
    silent = [i for i, r in enumerate(m["firing_rates"]) if r == 0]
    assert silent and m["test_accuracy"] < 0.2, m
    assert f"warning: layer{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} " \
           "sent no spike on the digits8x8 test images" in err, err
    assert "a smaller --rate-penalty than 50, --penalty-warmup 2, or another --seed" in err, err
    train(TrainConfig(**TINY), tmp_path / "again", progress=False)
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule_steps(schedule, tmp_path, monkeypatch):
    """The rate each batch's step takes: constant, or a half cosine from
    ``lr`` that reaches about 0 at the run's last batch."""
    rates = []
    step = torch.optim.Adam.step

    def record(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)
    monkeypatch.setattr(torch.optim.Adam, "step", record)
    cfg = TrainConfig(**{**TINY, "epochs": 3}, lr_schedule=schedule)
    train(cfg, tmp_path / schedule, progress=False)
    n = len(rates)
    batches = -(-len(load("digits8x8").y_train) // cfg.batch_size)
    assert n == 3 * batches
    if schedule == "constant":
        assert rates == [cfg.lr] * n
    else:
        assert rates[0] == cfg.lr and all(a > b for a, b in zip(rates, rates[1:]))
        assert rates[n // 2] == pytest.approx(cfg.lr / 2, rel=0.05)
        assert rates[-1] < 0.001 * cfg.lr


def test_augment_and_schedule_from_the_command_line(run_dir, tmp_path):
    """``--augment`` and ``--lr-schedule`` reach the run's config and change
    the model (same seed, other draws); bad values are refused."""
    run = tmp_path / "aug"
    assert cli.main(["train", "-q", *TINY_ARGS, "--augment", "1", "--lr-schedule", "cosine",
                     "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert cfg["augment"] == 1 and cfg["lr_schedule"] == "cosine"
    _, a = load_run(run_dir)
    _, b = load_run(run)
    assert not torch.equal(a.state_dict()["layers.0.syn.weight"], b.state_dict()["layers.0.syn.weight"])
    with pytest.raises(ValueError, match="augment must be an integer in 0..8"):
        TrainConfig(**TINY, augment=9)
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        TrainConfig(**TINY, lr_schedule="step")
    assert cli.main(["train", "-q", *TINY_ARGS, "--augment", "-1", "--out", str(run)]) == 2


def test_weight_average_follows_its_recurrence():
    """The average after n steps: the steps' weights w_k weighted by
    ``decay**(n-k)`` over the sum of those weights (the initial weights not in
    it); integer buffers are copied; ``swapped`` restores the live weights."""
    from spikeforge.sw.train import WeightAverage
    m = torch.nn.BatchNorm1d(2)
    avg = WeightAverage(m, 0.75)
    seen = []
    for n, v in enumerate([3.0, -1.0, 5.0, 2.0]):
        with torch.no_grad():
            m.weight.fill_(v)
        m.num_batches_tracked.fill_(n + 7)
        avg.update(m)
        seen.append(v)
        k = 0.75 ** torch.arange(len(seen) - 1, -1, -1, dtype=torch.float64)
        expect = torch.full((2,), float((k * torch.tensor(seen, dtype=torch.float64)).sum() / k.sum()),
                            dtype=torch.float64)
        assert torch.allclose(avg.shadow["weight"].double(), expect), (n, avg.shadow["weight"])
        assert int(avg.shadow["num_batches_tracked"]) == n + 7
    with avg.swapped(m):
        assert torch.allclose(m.weight.double(), expect)
    assert torch.equal(m.weight, torch.full((2,), 2.0))
    avg.load(m)
    assert torch.allclose(m.weight.double(), expect)


def test_ema_trains_the_averaged_weights(run_dir, tmp_path):
    """``--ema``: the run keeps (and evaluates) the moving average of its
    weights: other weights than the same run without it, the history's last
    accuracy that of the saved model; a decay of 1 or more is refused."""
    run = tmp_path / "ema"
    assert cli.main(["train", "-q", *TINY_ARGS, "--ema", "0.9", "--out", str(run)]) == 0
    cfg, b = load_run(run)
    assert cfg.ema == 0.9
    _, a = load_run(run_dir)
    assert not torch.equal(a.state_dict()["layers.0.syn.weight"], b.state_dict()["layers.0.syn.weight"])
    m = json.loads((run / "metrics.json").read_text())
    assert m["history"][-1]["test_accuracy"] == m["test_accuracy"] > 0.6
    with pytest.raises(ValueError, match=r"ema must be a number in \[0, 1\)"):
        TrainConfig(**TINY, ema=1.0)
    assert cli.main(["train", "-q", *TINY_ARGS, "--ema", "1", "--out", str(run)]) == 2


def test_quantize_and_export_from_the_command_line(run_dir, capsys):
    assert cli.main(["quantize", "-q", str(run_dir), "--weight-bits", "8"]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("int_accuracy", "weight_bits", "float_int_class_agreement"):
        assert key in m
    assert abs(m["int_accuracy"] - m["test_accuracy"]) < 0.05
    net, meta = image.read_image(run_dir / "weights.sfimg")
    ds = load("digits8x8")
    res = golden.run(net, ds.x_test)
    assert float((res.classes == ds.y_test).float().mean()) == pytest.approx(m["int_accuracy"])
    assert cli.main(["export", str(run_dir), "--lanes", "2"]) == 0
    listing = json.loads((run_dir / "hw" / "memories.json").read_text())
    assert {mm["name"] for mm in listing["memories"]} >= {"L0_weights", "L0_neurons"}


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "nope", "--out", "X"], "unknown model 'nope'"),
    (["train", "--dataset", "cifar", "--out", "X"], "cifar"),
    (["train", "--epochs", "0", "--out", "X"], "argument --epochs: must be in 1..100000, not 0"),
    (["quantize", "/no/such/run"], "run folder /no/such/run does not exist"),
    (["train", "--set", "channels", "--out", "X"], "--set expects KEY=VALUE"),
])
def test_bad_input_is_a_clear_error_not_a_traceback(argv, message, capsys, tmp_path):
    argv = [a.replace("X", str(tmp_path / "r")) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_missing_step_output_names_the_step(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path)]) == 2
    assert "weights.sfimg is missing: run `spikeforge quantize" in capsys.readouterr().err


def test_corrupt_image_is_reported(run_dir, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    data = bytearray((bad / "weights.sfimg").read_bytes())
    data[-1] ^= 0xFF
    (bad / "weights.sfimg").write_bytes(bytes(data))
    assert cli.main(["export", str(bad)]) == 2
    assert "weights.sfimg" in capsys.readouterr().err


def test_quantization_aware_fine_tuning_from_the_command_line(run_dir, tmp_path):
    import shutil
    run = tmp_path / "qat"
    shutil.copytree(run_dir, run)
    assert cli.main(["quantize", "-q", str(run), "--weight-bits", "4", "--qat-epochs", "1"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["weight_bits"] == 4 and m["quantization"]["qat_epochs"] == 1
    net, _ = image.read_image(run / "weights.sfimg")
    assert all(int(l.weight.abs().max()) <= 8 for l in net.layers)
    assert m["int_accuracy"] > 0.5


def test_the_default_recipe_is_the_default_runs_only(monkeypatch, tmp_path):
    """`run`'s default model trains with the default run's recipe (rate
    penalty, loss, learning rate, ...); another model under `run`, and
    `train`, take TrainConfig's unless an option is given."""
    from spikeforge import flow
    from spikeforge.sw.train import TrainConfig
    seen = []
    record = lambda args: seen.append(cli.train_config(args)) or 0
    monkeypatch.setattr(flow, "run", record)
    monkeypatch.setattr(cli, "cmd_train", record)
    out = ["--out", str(tmp_path)]
    for argv in (["run"], ["run", "--model", "bpsta-small"], ["run", "--rate-penalty", "0"],
                 ["train", *out], ["train", "--rate-penalty", "0.5", "--loss", "ce", *out],
                 ["run", "--model", "bpsta-small", "--rate-penalty", "0.01", "--lr", "0.003"]):
        assert cli.main(argv) == 0
    assert set(cli.SCOPED) == {"timesteps", "lr", "lr_schedule", "loss", "rate_penalty",
                               "penalty_warmup", "augment", "ema"}
    pick = lambda cfg: {name: getattr(cfg, name) for name in cli.SCOPED}
    plain = pick(TrainConfig())
    assert flow.DEFAULT.rate_penalty > 0 and pick(flow.DEFAULT) != plain
    assert [pick(c) for c in seen] == [
        pick(flow.DEFAULT), plain, {**pick(flow.DEFAULT), "rate_penalty": 0.0}, plain,
        {**plain, "rate_penalty": 0.5, "loss": "ce"},
        {**plain, "rate_penalty": 0.01, "lr": 0.003}]
    assert seen[0].overrides == flow.DEFAULT.overrides and seen[1].overrides == {}


def test_set_timesteps_is_the_recorded_number_of_steps(monkeypatch, tmp_path):
    """`--set timesteps=N` trains N steps and records N as the training's
    time steps too (config.json's train and spec agree)."""
    seen = []
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.append(cli.train_config(args)) or 0)
    assert cli.main(["train", "--out", str(tmp_path), "--set", "timesteps=3"]) == 0
    assert cli.main(["train", "--out", str(tmp_path), "--timesteps", "3",
                     "--set", "timesteps=3"]) == 0
    assert [(c.timesteps, c.overrides["timesteps"]) for c in seen] == [(3, 3), (3, 3)]
