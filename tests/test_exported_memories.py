"""The RTL loads the memory images `spikeforge export` wrote (RUN/hw/*.hex,
checked against memories.json and the network's geometry): a missing,
garbled or mismatched file is an error, and a changed word is what the RTL
computes with, so verification shows it."""

import dataclasses
import json
import shutil

import pytest
import torch

from spikeforge import cli, flow, image, layouts
from spikeforge.hw.network import NetworkTop, split_capable
from spikeforge.hw.params import EngineError
from spikeforge.hw.randnet import random_network
from spikeforge.image import ImageError, export_hex, memories, read_exported


@pytest.fixture
def exported(tmp_path):
    net = random_network(2)
    lanes = [min(2, l.out_channels) for l in net.spec.layers]
    export_hex(net, tmp_path / "hw", lanes)
    return net, lanes, tmp_path / "hw"


def test_read_exported_gives_the_networks_memories(exported):
    net, lanes, hw = exported
    assert read_exported(hw, net, lanes) == memories(net, lanes)


def test_split_lanes_export_the_channel_lanes_memories(tmp_path):
    """Lanes 2 x C_out (a second synapse unit) hold the memories of C_out lanes,
    and the export records the lanes as given."""
    net = random_network(306, size=(6, 9), channels=(2, 5), max_layers_conv=3,
                         kernels=(2, 3, 5))
    chans = [layer.spec.out_channels for layer in net.layers]
    lanes = [c * (2 if split_capable(net, n) else 1) for n, c in enumerate(chans)]
    assert lanes != chans
    export_hex(net, tmp_path / "hw", lanes)
    assert json.loads((tmp_path / "hw" / "memories.json").read_text())["lanes"] == lanes
    assert read_exported(tmp_path / "hw", net, lanes) == memories(net, chans)
    with pytest.raises(ImageError, match="exported for lanes"):
        read_exported(tmp_path / "hw", net, chans)


def _edit_index(hw, fn):
    idx = json.loads((hw / "memories.json").read_text())
    fn(idx)
    (hw / "memories.json").write_text(json.dumps(idx))


def _set(entry, key, value):
    entry[key] = value


@pytest.mark.parametrize("case,message", [
    ("no-index", r"memories.json is missing: run `spikeforge export` first$"),
    ("garbled-index", r"memories.json: not valid JSON"),
    ("other-lanes", r"memories.json: memory images exported for lanes \[1, 1\], not \[2, 2\]: "
                    r"run `spikeforge export .* --lanes 2,2`$"),
    ("names", r"memories.json: lists the memories \['L0_weights', 'L1_weights'\], the network "
              r"has \['L0_weights', 'L0_neurons', 'L1_weights', 'L1_neurons'\]$"),
    ("width", r"memories.json: L0_weights: width 99, the network's is \d+$"),
    ("depth", r"memories.json: L1_neurons: depth 1, the network's is \d+$"),
    ("escape", r"memories.json: L0_weights: 'file' must be a file name in .*, not '../x.hex'$"),
    ("no-hex", r"L0_neurons.hex is missing \(memory L0_neurons\): run `spikeforge export` again$"),
    ("bad-digit", r"L0_weights.hex:1: bad hex digit 'g'$"),
    ("short", r"L1_weights.hex: \d+ words, memory L1_weights has \d+$"),
    ("wide", r"L0_neurons.hex:1: word [1248]0+ is wider than \d+ bits$"),
    ("huge", r"L0_weights.hex: larger than \d+ words of \d+ bits"),
])
def test_bad_exports_are_named(exported, case, message):
    net, lanes, hw = exported
    assert lanes == [2, 2]
    mems = memories(net, lanes)
    if case == "no-index":
        (hw / "memories.json").unlink()
    elif case == "garbled-index":
        (hw / "memories.json").write_text("{lanes: ")
    elif case == "other-lanes":
        _edit_index(hw, lambda i: _set(i, "lanes", [1, 1]))
    elif case == "names":
        _edit_index(hw, lambda i: _set(i, "memories", i["memories"][::2]))
    elif case == "width":
        _edit_index(hw, lambda i: _set(i["memories"][0], "width", 99))
    elif case == "depth":
        _edit_index(hw, lambda i: _set(i["memories"][3], "depth", 1))
    elif case == "escape":
        _edit_index(hw, lambda i: _set(i["memories"][0], "file", "../x.hex"))
    elif case == "no-hex":
        (hw / "L0_neurons.hex").unlink()
    elif case == "bad-digit":
        p = hw / "L0_weights.hex"
        p.write_text("g" + p.read_text()[1:])
    elif case == "short":
        p = hw / "L1_weights.hex"
        p.write_text("".join(p.read_text().splitlines(keepends=True)[:-1]))
    elif case == "wide":
        width = mems["L0_neurons"][0]
        p = hw / "L0_neurons.hex"
        lines = p.read_text().splitlines(keepends=True)
        p.write_text(f"{1 << width:x}\n" + "".join(lines[1:]))  # one bit too wide
    elif case == "huge":
        (hw / "L0_weights.hex").write_text("0\n" * 100_000)
    with pytest.raises(ImageError, match=message):
        read_exported(hw, net, lanes)


def test_network_top_takes_the_contents_it_is_given():
    net = random_network(2)
    mems = memories(net, 2)
    top = NetworkTop(net, 2, contents=mems)
    assert [c.params.index for c in top.cores] == [0, 1]
    bad = dict(mems)
    bad["L0_neurons"] = (mems["L0_neurons"][0], mems["L0_neurons"][1][:-1])
    with pytest.raises(EngineError, match=r"^memory L0_neurons: contents of \d+ words of \d+ "
                                          r"bits, the memory has \d+ words of \d+ bits$"):
        NetworkTop(net, 2, contents=bad)
    bad["L0_neurons"] = (mems["L0_neurons"][0], [1 << mems["L0_neurons"][0]]
                         + mems["L0_neurons"][1][1:])
    with pytest.raises(EngineError, match=r"^memory L0_neurons: word \d+ is not an unsigned"):
        NetworkTop(net, 2, contents=bad)
    with pytest.raises(EngineError, match=r"^memory contents must be a dict of the memories"):
        NetworkTop(net, 2, contents={"L0_weights": mems["L0_weights"]})


def _set_theta(path, layer, channel, value):
    """Rewrite one word of an exported ``L{n}_neurons.hex``: channel's theta."""
    lay = layouts.neuron_layout(layer.state_bits, layer.acc_bits)
    lines = path.read_text().splitlines()
    fields = layouts.unpack(lay, int(lines[channel], 16))
    fields["theta"] = value
    lines[channel] = f"{layouts.pack(lay, fields):0{len(lines[channel])}x}"
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.verilator
@pytest.mark.slow
def test_verify_runs_the_exported_images(tmp_path, capsys):
    from spikeforge.sw import data as sfdata
    from spikeforge.sw import golden
    run = tmp_path / "run"
    args = ["--model", "convsnn", "--dataset", "digits8x8", "--epochs", "1", "--batch-size", "16",
            "--lr", "2e-3", "--set", "channels=[4]", "--set", "hidden=12", "--timesteps", "4"]
    assert cli.main(["train", "-q", *args, "--out", str(run)]) == 0
    assert cli.main(["quantize", "-q", str(run), "--input-bits", "4"]) == 0
    assert cli.main(["export", str(run), "--lanes", "2"]) == 0
    assert cli.main(["verify", str(run), "--images", "12"]) == 0
    capsys.readouterr()
    hw = run / "hw"
    saved = {p.name: p.read_bytes() for p in hw.iterdir()}

    # one threshold word changed in L0_neurons.hex: the golden model of the
    # network with that threshold spikes differently on these images, so the
    # RTL (loading the file) must differ from the weight image's golden model
    net, meta = image.read_image(run / "weights.sfimg")
    ds = sfdata.load("digits8x8", seed=meta.get("seed", 0))
    x = ds.x_test[:12]
    l0 = net.layers[0]
    ref = golden.run(net, x).spikes[0]

    def spikes_with_theta_1(c):
        theta = l0.theta.clone()
        theta[c] = 1
        layers = (dataclasses.replace(l0, theta=theta), *net.layers[1:])
        return golden.run(dataclasses.replace(net, layers=layers), x).spikes[0]
    channel = next(c for c in range(l0.spec.out_channels)
                   if not torch.equal(ref, spikes_with_theta_1(c)))
    _set_theta(hw / "L0_neurons.hex", l0, channel, 1)
    why = flow.pending(run, flow.STEP["verify"], _verify_args())
    assert why == "its input files changed"
    assert cli.main(["verify", str(run), "--images", "12"]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "differ from the golden model; first: image " in err
    assert ", layer 0, time step " in err
    assert json.loads((run / "sim.json").read_text())["mismatches"] > 0

    # a damaged export is refused before any build, exit status 2
    for name, text, extra, message in (
            ("L0_weights.hex", "zz\n", [], "L0_weights.hex:1: bad hex digit 'z'"),
            ("memories.json", json.dumps({"lanes": [2, 2, 2], "memories": []}), [],
             "memories.json: lists the memories [], the network has ['L0_weights', "),
            ("memories.json", saved["memories.json"].decode(), ["--lanes", "1"],
             "memories.json: memory images exported for lanes [2, 2, 2], not [1, 1, 1]: run "
             f"`spikeforge export {run} --lanes 1,1,1`")):
        (hw / name).write_text(text)
        assert cli.main(["verify", str(run), "--images", "12", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
        (hw / name).write_bytes(saved[name])
    (hw / "L0_neurons.hex").write_bytes(saved["L0_neurons.hex"])
    assert cli.main(["verify", str(run), "--images", "12"]) == 0
    # quantized again in place (other weights) and not exported again: the
    # export is refused, not loaded with the old weights
    assert cli.main(["quantize", "-q", str(run), "--input-bits", "3"]) == 0
    capsys.readouterr()
    assert cli.main(["verify", str(run), "--images", "12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {hw} was exported from another weights.sfimg than "
                          f"{run / 'weights.sfimg'}: run `spikeforge export {run}` again")
    # an export that failed left hw/ as it was: refused too
    assert cli.main(["export", str(run), "--lanes", "1000"]) == 2
    capsys.readouterr()
    assert cli.main(["verify", str(run), "--images", "12"]) == 2
    assert (f"the last export into {hw} did not end well: run `spikeforge export {run}` again"
            in capsys.readouterr().err)
    shutil.rmtree(run / "sim_build")


def _verify_args():
    import argparse
    return argparse.Namespace(lanes=None, images=12)


def test_board_builds_load_the_exported_images(tmp_path, capsys):
    """`spikeforge build RUN` puts the exported words into the bitstream's
    memories (as verify simulates them), unless they were exported for other
    lanes: then the weight image's, with a note."""
    from spikeforge.boards import build as B
    from spikeforge.boards.top import BoardTop
    net = random_network(2)
    run = tmp_path / "run"
    run.mkdir()
    image.write_image(run / "weights.sfimg", net)
    export_hex(net, run / "hw", [2, 2])
    layer = net.layers[0]
    lay = layouts.neuron_layout(layer.state_bits, layer.acc_bits)
    old = memories(net, [2, 2])["L0_neurons"][1][0]
    theta = layouts.unpack(lay, old)["theta"]
    _set_theta(run / "hw" / "L0_neurons.hex", layer, 0, theta + 1)
    contents = B._exported(run, net, [2, 2])
    top = BoardTop(net, [2, 2], clock_hz=25e6, contents=contents)
    word = top.engine.contents["L0_neurons"][1][0]
    assert word != old and layouts.unpack(lay, word)["theta"] == theta + 1
    assert B._exported(run, net, [1, 1]) is None
    assert "exported for lanes [2, 2], not [1, 1]" in capsys.readouterr().out
    assert B._exported(net, net, [2, 2]) is None
