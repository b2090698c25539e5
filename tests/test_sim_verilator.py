"""Co-simulation: the engine's Verilog under Verilator (cocotb), spike for spike
against the golden model."""

import json

import pytest
import torch

from spikeforge import cli
from spikeforge.hw.randnet import random_frames, random_network
from spikeforge.sim import runner

pytestmark = [pytest.mark.verilator, pytest.mark.slow]


@pytest.fixture(scope="session")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("verilator")


def frames_for(net, seeds):
    """A batch of random inputs, all static or all one frame per step like the first."""
    fs = [random_frames(net, s) for s in seeds]
    F = fs[0].shape[1]
    return torch.cat([f if f.shape[1] == F else f[:, :1].expand(-1, F, -1, -1, -1).contiguous()
                      for f in fs])


# (network seed, lanes, harness pauses on the input stream); every case's
# output layer spikes on its inputs (net 11's never did: its readout check was vacuous)
CASES = [(3, 2, False), (19, 1, True), (17, 3, True), (23, 4, False)]


@pytest.mark.parametrize("seed,lanes,pause", CASES, ids=[f"net{s}-P{p}-{'pause' if q else 'free'}"
                                                          for s, p, q in CASES])
def test_random_networks_match_the_golden_model(build_root, tmp_path, seed, lanes, pause):
    net = random_network(seed)
    lanes = min(lanes, min(l.out_channels for l in net.spec.layers))
    sb = runner.build(net, lanes, build_root, depth=1 << 14, pause=pause)
    x = frames_for(net, [100 * seed + i for i in range(6)])
    sim = runner.run(sb, x, tmp_path)
    ref, mismatches = runner.compare(net, x, sim)
    assert mismatches == [None] * len(x), next(m for m in mismatches if m)
    assert [r.prediction for r in sim.images] == ref.classes.tolist()
    for r, counts in zip(sim.images, ref.scores.tolist()):
        # scores = counts summed per voting group
        v = net.spec.voting
        assert [sum(r.counts[c * v:(c + 1) * v]) for c in range(net.spec.classes)] == counts
        assert r.cycles > 0
    # the counters over all images: layer 0 took every input event, each layer
    # took what the one before it sent, and the network did spike
    from spikeforge.hw.network import input_events
    total = [{k: sum(r.perf[n][k] for r in sim.images) for k in sim.images[0].perf[n]}
             for n in range(len(net.layers))]
    assert total[0]["events_in"] == sum(not e.last for i in range(len(x))
                                        for e in input_events(net, x[i]))
    for a, b in zip(total, total[1:]):
        assert b["events_in"] == a["events_out"]
    assert total[0]["events_out"] > 0 and sum(ref.scores.flatten().tolist()) > 0


@pytest.mark.parametrize("fault", ["threshold", "decay"])
def test_a_broken_design_is_caught(build_root, tmp_path, fault):
    # the comparison can fail: a deliberately wrong core is reported, with its place
    seed = 3
    net = random_network(seed)
    waves = fault == "decay"  # one of the two also checks the waveform option
    sb = runner.build(net, 2, build_root, depth=1 << 14, faults={0: fault}, waves=waves)
    x = frames_for(net, [100 * seed + i for i in range(6)])
    sim = runner.run(sb, x, tmp_path)
    _, mismatches = runner.compare(net, x, sim)
    first = next((m for m in mismatches if m is not None), None)
    assert first is not None, f"a {fault} fault in layer 0 went unnoticed"
    assert first.layer == 0
    if waves:
        # (the header lists every signal: read past it)
        assert "$enddefinitions" in (tmp_path / "dump.vcd").read_text(errors="replace")[:2_000_000]


def test_a_mixed_strict_network_matches_the_golden_model(build_root, tmp_path):
    """Layers 1 and 2 fire at u > theta, layer 0 at u >= theta: the Verilog
    matches the golden model, and the golden model with the comparisons
    swapped (ties u == theta occur here) would report a mismatch."""
    import dataclasses
    from spikeforge.sw.golden import IntNetwork
    seed = 4
    net = random_network(seed, strict=None)
    assert [l.neuron.strict for l in net.spec.layers] == [False, True, True]
    sb = runner.build(net, 2, build_root, depth=1 << 14)
    x = frames_for(net, [100 * seed + i for i in range(6)])
    sim = runner.run(sb, x, tmp_path)
    ref, mismatches = runner.compare(net, x, sim)
    assert mismatches == [None] * len(x), next(m for m in mismatches if m)
    assert sum(ref.scores.flatten().tolist()) > 0
    layers = []
    for il in net.layers:
        neuron = dataclasses.replace(il.spec.neuron, strict=not il.spec.neuron.strict)
        layers.append(dataclasses.replace(il, spec=dataclasses.replace(il.spec, neuron=neuron)))
    swapped = IntNetwork(dataclasses.replace(net.spec, layers=tuple(l.spec for l in layers)),
                         tuple(layers))
    _, other = runner.compare(swapped, x, sim)
    assert any(m is not None for m in other)


def test_verify_command_on_a_trained_network(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--model", "convsnn", "--dataset", "digits8x8", "--epochs", "1", "--batch-size", "16",
            "--lr", "2e-3", "--set", "channels=[4]", "--set", "hidden=12", "--timesteps", "4"]
    assert cli.main(["train", "-q", *args, "--out", str(run)]) == 0
    assert cli.main(["quantize", "-q", str(run), "--input-bits", "4"]) == 0
    assert cli.main(["verify", str(run), "--images", "12", "--lanes", "2"]) == 0
    out = json.loads((run / "sim.json").read_text())
    assert out["images"] == 12 and out["mismatches"] == 0
    assert out["rtl_accuracy"] == out["golden_accuracy"]
    assert out["cycles_per_inference"]["min"] <= out["cycles_per_inference"]["mean"] \
        <= out["cycles_per_inference"]["max"]
    # images back to back: they overlap in the pipeline, so completions come
    # closer together than an image's latency
    assert 0 < out["interval_cycles"] < out["cycles_per_inference"]["mean"]
    # the cycle model (the planner's) on the same images, fed back to back
    from spikeforge import image
    from spikeforge.hw import model
    from spikeforge.sw.data import load
    net, _ = image.read_image(run / "weights.sfimg")
    pred = model.predict(net, out["lanes"], model.traces(net, load("digits8x8").x_test[:12]))
    assert pred["interval_cycles"] == pytest.approx(out["interval_cycles"], rel=0.15)
    assert out["sim_cycles_per_second"] > 0 and out["energy"]["accumulates_per_inference"] > 0
    # bad input: more images than the test set has
    assert cli.main(["verify", str(run), "--images", "100000"]) == 2
    assert "--images must be in 1..359" in capsys.readouterr().err


def test_event_fifo_depth_changes_cycles_not_spikes(build_root, tmp_path):
    """The FIFO depth a plan records reaches the Verilator engine: deeper
    FIFOs between the layers absorb bursts (fewer cycles for the same
    images back to back), and the spikes stay the golden model's."""
    net = random_network(3)
    x = frames_for(net, [300 + i for i in range(8)])
    end = {}
    for d in (2, 32):
        sb = runner.build(net, 2, build_root, depth=1 << 14, fifo_depth=d)
        assert sb.top.fifo_depth == d
        sim = runner.run(sb, x, tmp_path / str(d))
        _, mismatches = runner.compare(net, x, sim)
        assert mismatches == [None] * len(x), next(m for m in mismatches if m)
        end[d] = sim.images[-1].done_at
    assert end[32] < end[2], end


# (network seed, lanes, words): layer 1 takes words of fewer channels than
# layer 0's lanes (2 of 4, 2 of 6: three words a window, 2 of 4 with two
# lane groups of 6 channels) or single spikes from a conv layer
WORD_CASES = [(16, [4, 4, 4], [1, 2, 1]), (25, [6, 6, 3], [1, 2, 1]),
              (25, [4, 6, 3], [1, 2, 1]), (16, [4, 4, 4], [1, 1, 1])]


@pytest.mark.parametrize("seed,lanes,words", WORD_CASES,
                         ids=[f"net{s}-P{','.join(map(str, p))}-Q{q[1]}" for s, p, q in WORD_CASES])
def test_words_narrower_than_the_lane_group_match_the_golden_model(build_root, tmp_path, seed,
                                                                   lanes, words):
    """A producer splits its lane group's spikes into words of ``Q``
    channels (the empty ones skipped): spike for spike the golden model's,
    and layer 1 takes one event per non-empty word of ``Q`` channels at a
    position (the cycle model's event count), not one per lane group."""
    from spikeforge.hw import model
    net = random_network(seed)
    sb = runner.build(net, lanes, build_root, depth=1 << 14, words=words)
    assert sb.top.params[0].words_out == words[1] and sb.top.params[1].in_lanes == words[1]
    x = frames_for(net, [500 + 10 * seed + i for i in range(6)])
    sim = runner.run(sb, x, tmp_path)
    _, mismatches = runner.compare(net, x, sim)
    assert mismatches == [None] * len(x), next(m for m in mismatches if m)
    # (over all images: streamed, an image's counters also hold the next one's start)
    work = model.traces(net, x)
    got = sum(r.perf[1]["events_in"] for r in sim.images)
    assert got == sum(r.perf[0]["events_out"] for r in sim.images)
    assert got == sum(y.numel() for img in work for y, _ in img[1].events(words[1]))
    # the words were narrower: a word per lane group would have been fewer events
    assert got > sum(y.numel() for img in work for y, _ in img[1].events(lanes[0]))


@pytest.mark.parametrize("seed,words", [(402, False), (411, True)], ids=["single", "words2"])
def test_residual_networks_match_the_golden_model(build_root, tmp_path, seed, words):
    """Residual blocks in the Verilog: the fork, the skip FIFO and the merge,
    6 images back to back, single spikes or words of 2 channels; the
    residual layers take their block input's events too."""
    from spikeforge.image import takes_words
    net = random_network(seed, size=(6, 8), channels=(4, 4) if words else (2, 5),
                         max_layers_conv=1, blocks=2)
    lanes = [min(4, l.spec.out_channels) for l in net.layers]
    ws = ([2 if n and takes_words(net, n) else 1 for n in range(len(lanes))] if words
          else None)
    sb = runner.build(net, lanes, build_root, depth=1 << 14, words=ws)
    x = frames_for(net, [700 + 10 * seed + i for i in range(6)])
    sim = runner.run(sb, x, tmp_path)
    ref, mismatches = runner.compare(net, x, sim)
    assert mismatches == [None] * len(x), next(m for m in mismatches if m)
    assert [r.prediction for r in sim.images] == ref.classes.tolist()
    total = [sum(r.perf[n]["events_in"] for r in sim.images) for n in range(len(lanes))]
    out = [sum(r.perf[n]["events_out"] for r in sim.images) for n in range(len(lanes))]
    residual = [n for n, l in enumerate(net.spec.layers) if l.residual]
    assert len(residual) == 2 and min(out) > 0
    for n in range(1, len(lanes)):
        assert total[n] == out[n - 1] + (out[n - 2] if n in residual else 0)


def test_the_cycle_model_of_an_stcb_network(build_root, tmp_path):
    """STCB layers take their whole input train before their STEB passes
    and images go one at a time: the cycle model's latency and interval
    against the Verilator counters (within 15 %; the model had put a
    trained STCSNN's interval at 233,095 cycles against 788,488 measured,
    as if its layers overlapped step by step), and the gap between images
    exactly: the clear pass and the restart."""
    from spikeforge.hw import model
    from spikeforge.hw.randnet import random_stcb_network
    net = random_stcb_network(5, size=(6, 8), channels=(3, 5), T=(4, 5))
    lanes = [min(2, l.out_channels) for l in net.spec.layers]
    sb = runner.build(net, lanes, build_root, depth=1 << 14)
    x = frames_for(net, [900 + i for i in range(4)])
    sim = runner.run(sb, x, tmp_path)
    _, mismatches = runner.compare(net, x, sim)
    assert mismatches == [None] * len(x), next(m for m in mismatches if m)
    done = [r.done_at for r in sim.images]
    interval = (done[-1] - done[0]) / (len(done) - 1)
    latency = sum(r.cycles for r in sim.images) / len(x)
    pred = model.predict(net, lanes, model.traces(net, x))
    assert pred["cycles_per_inference"] == pytest.approx(latency, rel=0.15)
    assert pred["interval_cycles"] == pytest.approx(interval, rel=0.15)
    # the layers run one after another within an image: far from the busiest alone
    busiest = max(l["occupancy"] for l in pred["layers"])
    assert interval > 1.3 * busiest
    gaps = {b.done_at - b.cycles - a.done_at for a, b in zip(sim.images, sim.images[1:])}
    clear = max(cp.acc_depth for cp in sb.top.params)
    assert gaps == {clear + model.STCB_RESTART}


# (network seed, lanes, layer streamed from the SDRAM model, current memories per layer)
STORAGE_CASES = [(3, 2, True, None), (19, 1, True, "one"), (23, 3, False, "one")]


@pytest.mark.parametrize("seed,lanes,sdram,banks", STORAGE_CASES,
                         ids=[f"net{s}-P{p}-{'sdram' if d else 'bram'}-{b or 'two'}"
                              for s, p, d, b in STORAGE_CASES])
def test_storage_fallbacks_match_the_golden_model(build_root, tmp_path, seed, lanes, sdram,
                                                  banks):
    """What the planner falls back on when the block RAM is short: the last
    (fc) layer's weights in the harness's model of the SDRAM chip, and one
    current memory per layer instead of two; images back to back, every
    spike the golden model's; one current memory costs cycles (the next
    step waits for the scan)."""
    from spikeforge.hw.fit import streamable
    net = random_network(seed)
    lanes = min(lanes, min(l.out_channels for l in net.spec.layers))
    n = len(net.layers) - 1
    assert n in streamable(net, lanes)
    layers = (n,) if sdram else ()
    bs = [1] * len(net.layers) if banks else None
    x = frames_for(net, [500 + 7 * seed + i for i in range(5)])
    sb = runner.build(net, lanes, build_root, depth=1 << 14, sdram=layers, banks=bs)
    assert sb.top.sdram == layers and all(cp.cur_banks == (1 if banks else 2)
                                          for cp in sb.top.params)
    sim = runner.run(sb, x, tmp_path / "one")
    ref, mismatches = runner.compare(net, x, sim)
    assert mismatches == [None] * len(x), next(m for m in mismatches if m)
    assert [r.prediction for r in sim.images] == ref.classes.tolist()
    if sdram:
        assert (tmp_path / "one" / "sdram.hex").exists()
        assert sum(r.perf[n]["events_in"] for r in sim.images) > 0
    # the cycle model (the planner's) with the same storage, images back to back
    from spikeforge.hw import model
    pred = model.predict(net, lanes, model.traces(net, x), sb.top.fifo_depth, sdram=layers,
                         banks=bs)
    done = [r.done_at for r in sim.images]
    assert pred["interval_cycles"] == pytest.approx((done[-1] - done[0]) / (len(done) - 1),
                                                    rel=0.15)
    if banks:   # the same images with two current memories: fewer cycles
        plain = runner.run(runner.build(net, lanes, build_root, depth=1 << 14, sdram=layers),
                           x, tmp_path / "two")
        assert plain.images[-1].done_at < sim.images[-1].done_at


def test_the_sdram_model_catches_wrong_weights_and_a_broken_controller(build_root, tmp_path,
                                                                       monkeypatch):
    """The comparison sees the SDRAM's words: a weight word changed in the
    chip model's image is a mismatch; a controller one cycle short of tRCD
    is refused by the model."""
    from spikeforge.hw import sdram as hw_sdram
    from spikeforge.hw import weightstream
    net = random_network(3)
    n = len(net.layers) - 1
    x = frames_for(net, [900 + i for i in range(4)])
    sb = runner.build(net, 2, build_root, depth=1 << 14, sdram=(n,))
    real = weightstream.sdram_image
    monkeypatch.setattr(weightstream, "sdram_image",
                        lambda *a: [w ^ 0x0101 for w in real(*a)])
    sim = runner.run(sb, x, tmp_path / "flipped")
    _, mismatches = runner.compare(net, x, sim)
    assert any(mismatches)
    monkeypatch.setattr(weightstream, "sdram_image", real)
    init = hw_sdram.SdramController.__init__

    def one_short(self, *a, **k):
        init(self, *a, **k)
        self.t = self.t | {"rcd": self.t["rcd"] - 1}
    monkeypatch.setattr(hw_sdram.SdramController, "__init__", one_short)
    # (its own build folder: the key does not see the patched controller)
    broken = runner.build(net, 2, tmp_path / "broken", depth=1 << 14, sdram=(n,))
    monkeypatch.setattr(hw_sdram.SdramController, "__init__", init)
    with pytest.raises(runner.SimError, match="before tRCD"):
        runner.run(broken, x, tmp_path / "short")
