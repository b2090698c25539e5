"""Training under torchrun (issue 11): 2 CPU processes (gloo, DDP) train the
weights one process trains at the same global batch, and only rank 0 writes.

One torchrun launch of this file as a script (``_launched``, at the bottom)
does everything that needs two processes, each rank in its own empty working
folder: ``spikeforge train``, ``spikeforge run`` (its train step only) twice,
and the gradient of single global batches that do not split evenly (5 samples:
3 + 2) or leave a process without a sample (1).  The tests compare what rank
0 wrote with one process's result here, and check that rank 1's folder
stayed empty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikeforge import cli
from spikeforge.sw import data as sfdata
from spikeforge.sw import train as sftrain
from spikeforge.sw.models import SpikingNet

# a small ConvSNN on the 8x8 digits: 301 samples in global batches of 16, so
# each epoch ends with a batch of 13 (7 + 6 over two processes); one hybrid
# epoch; rate encoding, so every process must draw the same random spikes
ARGS = ["--model", "convsnn", "--dataset", "digits8x8", "--epochs", "2", "--hybrid-epochs", "1",
        "--batch-size", "16", "--train-limit", "301", "--lr", "2e-3", "--timesteps", "6",
        "--set", "channels=[6]", "--set", "hidden=24", "--set", "encoding=rate",
        # given, so `train` (mse, penalty 0) and `run` (its own recipe for
        # convsnn) train the same; the penalty's gradient, its ramp and the
        # weights' average go through DDP too
        "--loss", "mse", "--rate-penalty", "0.02", "--penalty-warmup", "1", "--ema", "0.9"]
ATOL = 1e-5          # weights after 38 Adam steps at lr 2e-3
# Both sides run with oneDNN's kernels capped at AVX2: its AVX-512 convolution
# kernels (a Xeon with AMX here) sum a batch of 8 and one of 16 in different
# orders, and 38 Adam steps took that to 1.1e-4 between the two runs, where
# the AVX2 kernels leave 4.5e-8; the cap makes the comparison the same on
# every x86 machine (it is about DDP, not about a CPU's summation order)
ISA_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
GRAD_RTOL = 1e-5     # one step's gradient, relative to its largest element
GRAD_CASES = (("mse", 5), ("ce", 5), ("mse", 1))
LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(run / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _grad_model(loss: str):
    """The model, config and data of the gradient check (same on every process)."""
    cfg = sftrain.TrainConfig(dataset="digits8x8", timesteps=6, loss=loss,
                              overrides={"channels": (6,), "hidden": 24})
    ds = sfdata.load(cfg.dataset, seed=cfg.seed)
    torch.manual_seed(0)
    model = SpikingNet(sftrain.network_spec(cfg, ds))
    return cfg, model, ds


def _grad_batch(ds, spec, n: int):
    return sfdata.encode(ds.x_train[:n], spec.timesteps, spec.encoding), ds.y_train[:n]


def _worker_env() -> dict:
    """The environment of a training process here: one CPU thread, no
    launcher variables, oneDNN capped at AVX2 (``ISA_ENV``)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(SPIKEFORGE_DEVICE="cpu", OMP_NUM_THREADS="1", **ISA_ENV)
    return env


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """Rank 0's and rank 1's working folders after one torchrun launch of
    ``_launched`` with 2 CPU processes, and the launch's wall time."""
    work = tmp_path_factory.mktemp("torchrun")
    env = _worker_env()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", __file__, str(work)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two workers
        out, err = proc.communicate()
        pytest.fail(f"the torchrun launch took over 300 s:\n{out[-3000:]}{err[-3000:]}")
    seconds = time.perf_counter() - t0
    if proc.returncode:
        print(out, err, sep="\n")  # all of it, in the report's captured output
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return work / "rank0", work / "rank1", seconds, out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process's runs: the same global batch (16) and a doubled one (32),
    each a process of its own in the workers' environment (``_worker_env``:
    the kernel cap must be set before torch starts)."""
    out = {}
    for batch in (16, 32):
        run = tmp_path_factory.mktemp(f"single{batch}")
        argv = ["train", "-q", *ARGS, "--out", str(run)]
        argv[argv.index("--batch-size") + 1] = str(batch)
        proc = subprocess.run([sys.executable, "-c", "import sys; from spikeforge import cli; "
                               "sys.exit(cli.main(sys.argv[1:]))", *argv],
                              env=_worker_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out[batch] = run
    return out


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one(launch, single):
    rank0, _, seconds, _ = launch
    one, two = _weights(single[16]), _weights(rank0 / "run")
    diff = _max_diff(one, two)
    print(f"max |w_2proc - w_1proc| = {diff:.3g} (torchrun launch {seconds:.1f} s)")
    assert diff <= ATOL
    m1 = json.loads((single[16] / "metrics.json").read_text())
    m2 = json.loads((rank0 / "run" / "metrics.json").read_text())
    assert m2["test_accuracy"] == m1["test_accuracy"]
    assert m2["firing_rates"] == pytest.approx(m1["firing_rates"], abs=1e-9)
    assert [h["loss"] for h in m2["history"]] == pytest.approx(
        [h["loss"] for h in m1["history"]], rel=1e-6)
    assert [h["hybrid"] for h in m2["history"]] == [True, False]
    c1 = json.loads((single[16] / "config.json").read_text())
    assert json.loads((rank0 / "run" / "config.json").read_text()) == c1


@pytest.mark.slow
def test_a_different_global_batch_is_told_apart(launch, single):
    """The comparison can fail: a process that took the configured batch for
    its own (global batch 32) would end far outside the tolerance."""
    rank0, *_ = launch
    diff = _max_diff(_weights(single[32]), _weights(rank0 / "run"))
    print(f"max |w_2proc(16) - w_1proc(32)| = {diff:.3g}")
    assert diff > 100 * ATOL


@pytest.mark.slow
def test_one_step_gradient_equals_one_process(launch):
    """The gradient DDP leaves on rank 0 is the gradient of the mean loss over
    the whole global batch, also for 3 + 2 samples and for 1 + 0; a per-process
    mean (the two halves' means averaged) is not.  Each process computed its
    slice's losses only."""
    from safetensors.torch import load_file
    rank0, *_ = launch
    got = load_file(str(rank0 / "grads.safetensors"))
    for loss, n in GRAD_CASES:
        cfg, model, ds = _grad_model(loss)
        xb, yb = _grad_batch(ds, model.spec, n)
        sftrain._loss(cfg, model, model(xb), yb).backward()
        want = {k: p.grad for k, p in model.named_parameters()}
        # each process computed the losses of its own slice only: 3 + 2, 1 + 0
        with torch.no_grad():
            each = [float(sftrain._loss(cfg, model, model(xb[:, i:i + 1]), yb[i:i + 1]))
                    for i in range(n)]
        cut = (n + 1) // 2
        assert got[f"{loss}{n}/parts"].tolist() == pytest.approx(
            [sum(each[:cut]), sum(each[cut:])], rel=1e-5, abs=1e-12)
        diff = max(float((got[f"{loss}{n}/{k}"] - g).abs().max()) for k, g in want.items())
        scale = max(float(g.abs().max()) for g in want.values())
        print(f"{loss}, batch {n}: max |grad diff| {diff:.3g} (largest |grad| {scale:.3g})")
        assert 0 < scale and diff <= GRAD_RTOL * scale
        if n == 5:  # the wrong weighting of an uneven split is far outside the tolerance
            halves = []
            for lo, hi in ((0, 3), (3, 5)):
                model.zero_grad()
                sftrain._loss(cfg, model, model(xb[:, lo:hi]), yb[lo:hi]).backward()
                halves.append({k: p.grad.clone() for k, p in model.named_parameters()})
            naive = max(float(((halves[0][k] + halves[1][k]) / 2 - g).abs().max())
                        for k, g in want.items())
            print(f"  per-process means averaged: max |grad diff| {naive:.3g}")
            assert naive > 100 * GRAD_RTOL * scale


@pytest.mark.slow
def test_only_rank_0_writes(launch):
    rank0, rank1, _, stdout = launch
    assert list(rank1.rglob("*")) == []
    for name in ("model.safetensors", "config.json", "metrics.json", "training_curve.png",
                 ".flow/train.json"):
        assert (rank0 / "run" / name).is_file(), name
    assert stdout.count("test accuracy") == 1  # cmd_train's line, printed by rank 0 only


@pytest.mark.slow
def test_spikeforge_run_trains_with_all_processes_then_skips(launch):
    rank0, _, _, stdout = launch
    assert _max_diff(_weights(rank0 / "run"), _weights(rank0 / "flow")) == 0.0
    rec = json.loads((rank0 / "flow" / ".flow" / "train.json").read_text())
    assert rec["status"] == "ok"
    assert stdout.count("[train] (not done yet)") == 1
    assert stdout.count("[train] done earlier") == 1


def test_shard_cuts_a_batch_into_even_parts():
    for world in range(2, 6):
        for n in range(0, 23):
            cuts = [sftrain._shard(n, sftrain.Processes(world, r, r)) for r in range(world)]
            want = [len(c) for c in torch.tensor_split(torch.arange(n), world)]
            assert [hi - lo for lo, hi in cuts] == want
            assert [lo for lo, _ in cuts] == [0] + [hi for _, hi in cuts[:-1]]
            assert cuts[-1][1] == n


def test_device_choice(monkeypatch):
    """CUDA when torch sees it (cuda:LOCAL_RANK), never required; the choice
    logic only: this machine has no GPU to run the CUDA path on."""
    from spikeforge.sw import neurons
    monkeypatch.delenv("SPIKEFORGE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sftrain.train_device(0) == torch.device("cpu")
    monkeypatch.setenv("SPIKEFORGE_DEVICE", "cuda")
    with pytest.raises(sftrain.TrainError, match="torch sees no CUDA device"):
        sftrain.train_device(0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for choice in ("cuda", ""):
        monkeypatch.setenv("SPIKEFORGE_DEVICE", choice)
        assert sftrain.train_device(1) == torch.device("cuda", 1)
        with pytest.raises(sftrain.TrainError, match="this machine has 2: start at most 2"):
            sftrain.train_device(2)
    monkeypatch.setenv("SPIKEFORGE_DEVICE", "cpu")
    assert sftrain.train_device(1) == torch.device("cpu")
    # the fused LIF kernel takes CPU tensors only: elsewhere the PyTorch path runs
    assert not neurons._kernel_applies(torch.empty(2, 3, device="meta"), neurons.LIFParams())


LAUNCH = dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
              MASTER_PORT="29999")


BAD_LAUNCHES = [
    (dict(LAUNCH, RANK=None), [], "WORLD_SIZE=2 but RANK is not set: start the processes "
                                  "with torchrun"),
    (dict(LAUNCH, WORLD_SIZE="two"), [], "WORLD_SIZE must be a positive integer, not 'two'"),
    (dict(LAUNCH, RANK="2"), [], "RANK=2 is outside 0..1"),
    (dict(LAUNCH, MASTER_PORT=None), [], "WORLD_SIZE=2 but MASTER_PORT is not set"),
    (LAUNCH, ["--batch-size", "1"], "the batch size (1) is the global batch, split over the 2 "
                                    "processes: use --batch-size 2 or more"),
    ({"SPIKEFORGE_DEVICE": "tpu"}, [], "SPIKEFORGE_DEVICE must be cpu, cuda or unset"),
]


# `run` checks the batch size in its train step, after joining the group: with
# one process that would wait for the second; `train` checks it before joining
@pytest.mark.parametrize("command, env, argv, message", [
    (command, *case) for case in BAD_LAUNCHES for command in ("train", "run")
    if command == "train" or not case[1]])
def test_bad_launch_is_a_clear_error(command, env, argv, message, monkeypatch, tmp_path,
                                     capsys):
    for k in LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        if v is not None:
            monkeypatch.setenv(k, v)
    assert cli.main([command, "-q", "--dataset", "digits8x8", "--epochs", "1",
                     "--train-limit", "4", *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- under torchrun


def _launched(work: Path) -> None:
    """What each process of the launch does, in ``work/rankR`` (see the module
    docstring); rank 0 writes ``grads.safetensors`` there too."""
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel

    from spikeforge import flow
    rank = int(os.environ["RANK"])
    here = work / f"rank{rank}"
    here.mkdir()
    os.chdir(here)
    assert cli.main(["train", "-q", *ARGS, "--out", "run"]) == 0
    # the group train opened stays open for the next commands (closed at exit)
    assert torch.distributed.get_backend() == "gloo"

    flow.STEPS_LIST = [flow.STEP["train"]]  # `spikeforge run`, its train step only
    for _ in range(2):  # trains, then finds the step done: no process trains
        assert cli.main(["run", "-q", *ARGS, "--out", "flow"]) == 0

    procs = sftrain.distributed_env()
    assert procs is not None and procs.world == 2
    grads = {}
    for loss, n in GRAD_CASES:
        cfg, model, ds = _grad_model(loss)
        net = DistributedDataParallel(model)
        xb, yb = _grad_batch(ds, model.spec, n)
        out, part = sftrain.batch_loss(cfg, model, net, xb, yb, None, procs)
        out.backward()
        grads.update({f"{loss}{n}/{k}": p.grad for k, p in model.named_parameters()})
        parts = [torch.zeros(1, dtype=torch.float64) for _ in range(procs.world)]
        torch.distributed.all_gather(parts, torch.tensor([part], dtype=torch.float64))
        grads[f"{loss}{n}/parts"] = torch.cat(parts)
    if procs.main:
        save_file(grads, str(work / "rank0" / "grads.safetensors"))


if __name__ == "__main__":
    _launched(Path(sys.argv[1]))
