"""The block RAM's output registers taken from the fabric (boards/outreg.py):
on an engine core synthesised by Yosys, and on small netlists that each
break one of the conditions."""

from __future__ import annotations

import copy

import pytest

from spikeforge.boards.outreg import absorb, main

CLK, OTHER = 2, 3


def _netlist(width_b: int = 18, ff: dict | None = None, extra_load: bool = False,
             ports: str = "B") -> dict:
    """A DP16KD whose read outputs (``ports``, 2 bits each) each feed a
    TRELLIS_FF (``ff``: its parameters and connections overridden), the
    registers' outputs the module's outputs; ``extra_load``: bit DOB0 also
    feeds a LUT."""
    cells, out_bits, nxt = {}, [], 100
    ram = {"type": "DP16KD", "parameters": {"REGMODE_A": "NOREG", "REGMODE_B": "NOREG",
                                            "DATA_WIDTH_A": format(width_b, "b"),
                                            "DATA_WIDTH_B": format(width_b, "b")},
           "port_directions": {}, "connections": {"CLKA": [CLK], "CLKB": [CLK], "OCEA": ["0"],
                                                  "OCEB": ["1"], "RSTA": ["0"], "RSTB": ["0"]}}
    cells["ram"] = ram
    for port in ports:
        for i in range(2):
            pin, d, q = f"DO{port}{i}", nxt, nxt + 1
            nxt += 2
            ram["connections"][pin] = [d]
            ram["port_directions"][pin] = "output"
            reg = {"type": "TRELLIS_FF",
                   "parameters": {"CEMUX": "1 ", "CLKMUX": "CLK", "GSR": "ENABLED",
                                  "LSRMUX": "LSR", "REGSET": "RESET"},
                   "port_directions": {"CLK": "input", "DI": "input", "LSR": "input",
                                       "Q": "output"},
                   "connections": {"CLK": [CLK], "DI": [d], "LSR": ["0"], "Q": [q]}}
            if ff and (port, i) == (ports[0], 0):
                reg["parameters"].update(ff.get("parameters", {}))
                reg["connections"].update(ff.get("connections", {}))
                reg["port_directions"].update({k: "input" for k in ff.get("connections", {})})
            cells[f"ff_{pin}"] = reg
            out_bits.append(q)
    if extra_load:
        cells["lut"] = {"type": "LUT4", "parameters": {}, "port_directions": {"A": "input"},
                        "connections": {"A": ram["connections"][f"DO{ports[0]}0"]}}
    return {"modules": {"top": {"ports": {"q": {"direction": "output", "bits": out_bits}},
                                "cells": cells}}}


def test_a_plain_register_after_each_output_moves_into_the_block():
    d = _netlist()
    q = d["modules"]["top"]["ports"]["q"]["bits"]
    assert absorb(d) == {"blocks": 1, "registers": 2, "left": {}}
    cells = d["modules"]["top"]["cells"]
    assert set(cells) == {"ram"}
    ram = cells["ram"]
    assert ram["parameters"]["REGMODE_B"] == "OUTREG" and ram["connections"]["OCEB"] == ["1"]
    assert ram["parameters"]["REGMODE_A"] == "NOREG"       # an 18-bit read: port B only
    # the block's outputs drive what the registers' outputs drove
    assert [ram["connections"][f"DOB{i}"][0] for i in range(2)] == q


def test_a_36_bit_block_gets_both_ports_registers():
    """Pseudo dual port, 36 bits: the word's low half leaves on port A's pins."""
    d = _netlist(width_b=36, ports="AB")
    assert absorb(d)["registers"] == 4
    ram = d["modules"]["top"]["cells"]["ram"]
    assert ram["parameters"]["REGMODE_A"] == ram["parameters"]["REGMODE_B"] == "OUTREG"
    assert ram["connections"]["OCEA"] == ram["connections"]["OCEB"] == ["1"]
    d = _netlist(width_b=36, ports="A")     # the low half only: both registers still
    assert absorb(d)["registers"] == 2
    ram = d["modules"]["top"]["cells"]["ram"]
    assert ram["parameters"]["REGMODE_A"] == ram["parameters"]["REGMODE_B"] == "OUTREG"
    d = _netlist(width_b=36, ports="A")
    d["modules"]["top"]["cells"]["ram"]["connections"]["CLKA"] = [OTHER]
    assert absorb(d)["left"] == {"two clocks": 1}


@pytest.mark.parametrize("case,kwargs,why", [
    ("enabled register", {"ff": {"parameters": {"CEMUX": "CE"}, "connections": {"CE": [7]}}},
     "not a plain register"),
    ("reset register", {"ff": {"connections": {"LSR": [7]}}}, "not a plain register"),
    ("starts at 1", {"ff": {"parameters": {"REGSET": "SET"}}}, "not a plain register"),
    ("another clock", {"ff": {"connections": {"CLK": [OTHER]}}},
     "not a plain register"),
    ("inverted clock", {"ff": {"parameters": {"CLKMUX": "INV"}}},
     "not a plain register"),
    ("output also feeds logic", {"extra_load": True}, "an output feeds logic"),
    ("true dual-port read on A", {"ports": "AB"}, "port A reads"),
])
def test_a_block_breaking_a_condition_is_left_as_it_is(case, kwargs, why):
    d = _netlist(**kwargs)
    before = copy.deepcopy(d)
    assert absorb(d) == {"blocks": 0, "registers": 0, "left": {why: 1}}, case
    assert d == before


def test_a_read_reset_or_an_output_register_already_there_leaves_the_block():
    d = _netlist()
    d["modules"]["top"]["cells"]["ram"]["connections"]["RSTB"] = [9]
    assert absorb(d)["left"] == {"a read reset": 1}
    d = _netlist()
    d["modules"]["top"]["cells"]["ram"]["parameters"]["REGMODE_B"] = "OUTREG"
    assert absorb(d)["left"] == {"already registered": 1}


def test_the_command_line_refuses_a_file_that_is_no_netlist(tmp_path, capsys):
    bad = tmp_path / "top.json"
    bad.write_text('{"modules": {}}')
    assert main([str(bad)]) == 1
    assert "not a Yosys JSON netlist" in capsys.readouterr().err
    assert bad.read_text() == '{"modules": {}}'


@pytest.mark.slow
def test_every_read_register_of_an_engine_core_moves_into_its_blocks():
    """A LIF conv core synthesised as a ULX3S build synthesises it: every
    block of its current and state memories takes the registers after its
    reads (one per bit of each word), and the flip-flops go; without the
    read-during-write declaration, Yosys's emulation multiplexer sits
    between each block and its register and nothing moves."""
    from amaranth.back import rtlil
    from spikeforge import toolchain
    from spikeforge.hw.layer import LayerCore
    from spikeforge.hw.memory import SYNTHESIS
    from spikeforge.hw.network import core_params
    from spikeforge.hw.randnet import random_network
    from spikeforge.image import neuron_words, weight_words
    toolchain.setup()
    net = random_network(3, max_layers_conv=1, size=(16, 16), channels=(8, 8))
    cp = core_params(net, [4] * len(net.layers))[0]
    assert cp.acc_depth == 324 and cp.cur_banks == 2
    core = LayerCore(cp, weight_words(net.layers[0], 4), neuron_words(net.layers[0]))
    il = rtlil.convert(core, name="top", platform=SYNTHESIS)
    d = toolchain.yosys_netlist(il, "synth_ecp5 -abc9", collision_x=True)
    cells = d["modules"]["top"]["cells"]

    def count(kind):
        return sum(c["type"] == kind for c in cells.values())
    blocks, ffs = count("DP16KD"), count("TRELLIS_FF")
    lanes = cp.P * cp.R
    words = lanes * (cp.cur_banks * cp.cur_width + cp.state_width)
    assert absorb(d) == {"blocks": blocks, "registers": words, "left": {}}
    assert blocks == 6 and count("TRELLIS_FF") == ffs - words
    outs = {b for c in cells.values() if c["type"] == "DP16KD"
            for pin, bits in c["connections"].items() if pin.startswith("DO") for b in bits}
    qs = {b for c in cells.values() if c["type"] == "TRELLIS_FF" for b in c["connections"]["Q"]}
    assert not outs & qs            # no net driven twice
    assert all(c["parameters"]["REGMODE_A"] == c["parameters"]["REGMODE_B"] == "OUTREG"
               for c in cells.values() if c["type"] == "DP16KD")   # 36-bit blocks
    plain = toolchain.yosys_netlist(il, "synth_ecp5 -abc9", collision_x=False)
    assert absorb(plain) == {"blocks": 0, "registers": 0, "left": {"an output feeds logic": 6}}
