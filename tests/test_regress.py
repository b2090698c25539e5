"""spikeforge regress: random networks through Verilator against the golden
model, on worker processes (a local Dask cluster) -- a small slice of the
regression, its bad input, and proof that it catches a broken design."""

import json
import os

import pytest
import torch

from spikeforge import cli, regress
from spikeforge.config import NeuronKind, Reset
from spikeforge.hw.network import core_params


def test_draw_is_a_function_of_the_seed_and_covers_the_engine():
    a, b = regress.draw(7), regress.draw(7)
    assert a[1:] == b[1:] and a[0].spec == b[0].spec
    assert all(torch.equal(x.weight, y.weight) for x, y in zip(a[0].layers, b[0].layers))
    kinds, resets, convs, pooled, multi, paused, per_step, bitplane = (set() for _ in range(8))
    narrow_words = 0
    for s in range(40):
        net, lanes, pause, F = regress.draw(s)
        words, narrow = regress.draw_words(s, net, lanes)
        assert (words, narrow) == regress.draw_words(s, net, lanes)
        assert core_params(net, lanes, words=words)   # a valid choice for the lanes
        narrow_words += narrow
        layers = net.spec.layers
        assert len(lanes) == len(layers)
        assert all(1 <= p <= l.out_channels for p, l in zip(lanes, layers))
        kinds |= {l.neuron.kind for l in layers}
        resets |= {l.neuron.reset for l in layers if l.neuron.kind is not NeuronKind.STCB}
        convs.add(len(layers) - 1)
        pooled |= {l.pool for l in layers}
        multi |= {p > 1 for p in lanes}
        paused.add(pause)
        per_step.add(F > 1)
        bitplane.add(net.spec.encoding)
    assert kinds == set(NeuronKind) and resets == set(Reset)
    assert convs == {1, 2, 3} and pooled == {1, 2} and multi == paused == per_step == {False, True}
    assert bitplane == {"direct", "bitplane"}
    assert narrow_words >= 3   # words narrower than the lane group are drawn too (4 of 40)


def test_images_depend_on_the_seed_and_index_only():
    net, _, _, F = regress.draw(0)
    assert F > 1
    x5, x2 = regress.frames(net, 0, 5, F), regress.frames(net, 0, 2, F)
    assert x5.shape == (5, F, *net.spec.input_shape) and x5.dtype == torch.uint8
    assert torch.equal(x5[:2], x2)
    assert not torch.equal(x5[0], x5[1]) and not torch.equal(x5, regress.frames(net, 1, 5, F))


def test_images_are_split_into_runs_that_fit_the_harness_rom():
    assert regress._chunks([3, 3, 3], 100) == [(0, 3)]
    assert regress._chunks([3, 3, 3], 7) == [(0, 2), (2, 3)]   # 1 end word + 3 + 3
    assert regress._chunks([9, 1], 5) == [(0, 1), (1, 2)]     # one image alone may be over


@pytest.mark.parametrize("argv,message", [
    (["--nets", "0"], "--nets: must be in 1..1000000, not 0"),
    (["--workers", "-1"], "--workers: must be in 1..1024, not -1"),
    (["--workers", "0"], "--workers: must be in 1..1024, not 0"),
    (["--images", "0"], "--images: must be in 1..100000, not 0"),
    (["--nets", "x"], "--nets: expected an integer, not 'x'"),
    (["--seed", str(1 << 31)], "--seed: must be in 0..2147483647"),
    (["--seed", str((1 << 31) - 1), "--nets", "2"], "--seed + --nets must stay within"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "exclude each other"),
    (["--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "1"],
     "cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'"),
    (["--connect-timeout", "0"], "--connect-timeout: must be a finite number above 0"),
])
def test_bad_input_is_one_error_line(capsys, argv, message):
    assert cli.main(["regress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bad_arguments_of_the_function():
    with pytest.raises(regress.RegressError, match="^no networks to check$"):
        regress.regress([], 3)
    with pytest.raises(regress.RegressError, match="images per network must be a positive"):
        regress.regress([1], 0)
    with pytest.raises(regress.RegressError, match="workers must be a positive integer, not -1"):
        regress.regress([1], 3, workers=-1)


@pytest.mark.verilator
@pytest.mark.slow
def test_a_slice_on_a_local_dask_cluster(tmp_path, capsys):
    # two networks on a local Dask cluster of two worker processes, through the CLI
    out, builds = tmp_path / "out", tmp_path / "builds"
    assert cli.main(["regress", "--nets", "2", "--images", "25", "--workers", "2", "--seed", "5",
                     "--out", str(out), "--build-dir", str(builds)]) == 0
    s = json.loads((out / "regress.json").read_text())
    assert s["complete"] is True
    assert s["networks"] == 2 and s["cases"] == 50 and s["mismatching_cases"] == 0
    assert s["failed_networks"] == [] and s["mismatching_networks"] == []
    assert [r["seed"] for r in s["results"]] == [5, 6]
    assert [r["cases"] for r in s["results"]] == [25, 25]
    assert s["workers"] == 2 and 0 < s["cases_per_second_per_worker"] == pytest.approx(
        s["cases"] / s["wall_seconds"] / 2)
    # the work ran in the cluster's processes, not in this one
    assert all(not w.endswith(f":{os.getpid()}") for w in s["per_worker"])
    assert sum(w["cases"] for w in s["per_worker"].values()) == 50
    # the networks did spike (equal silence would prove nothing)
    for r in s["results"]:
        assert r["golden_spikes"] > 0 and r["silent_output_cases"] < r["cases"]
    text = capsys.readouterr().out
    assert "2 networks x 25 images = 50 cases: 0 mismatching, 0 networks failed" in text
    assert "net 5: " in text and "net 6: " in text

    # the same slice on a running cluster, by its scheduler's address (as for
    # workers on other machines), reusing the builds kept in --build-dir
    from distributed import LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        assert cli.main(["regress", "--nets", "2", "--images", "25", "--seed", "5",
                         "--scheduler", cluster.scheduler_address, "--out", str(out / "again"),
                         "--build-dir", str(builds)]) == 0
    again = json.loads((out / "again" / "regress.json").read_text())
    assert again["workers"] == 1 and again["cases"] == 50 and again["mismatching_cases"] == 0
    assert all(r["build_seconds"] < 10 for r in again["results"])  # nothing rebuilt
    assert [r["first_mismatch"] for r in again["results"]] == [None, None]


@pytest.mark.verilator
@pytest.mark.slow
def test_the_regression_catches_a_broken_design(tmp_path, capsys):
    # a deliberate off-by-one threshold comparison in layer 0 of a LIF network
    seed = 3
    net, *_ = regress.draw(seed)
    assert net.spec.layers[0].neuron.kind is NeuronKind.LIF
    s = regress.regress([seed], 20, faults={0: "threshold"})
    assert s["cases"] == 20 and s["mismatching_cases"] > 0
    assert s["mismatching_networks"] == [seed]
    rec = s["results"][0]
    m = rec["first_mismatch"]
    assert m["layer"] == 0 and 0 <= m["image"] < 20 and m["expected"] != m["got"]
    line = regress.line(rec, 20)
    assert f"net {seed}: " in line and "MISMATCH" in line and "layer 0, time step" in line
    assert f"reproduce: spikeforge regress --seed {seed} --nets 1 --images 20" in line
