"""cocotb test of the harness (:mod:`spikeforge.sim.harness`): let the simulator
run free until the harness has played every image."""

import os

import cocotb
from cocotb.triggers import First, RisingEdge, Timer


@cocotb.test()
async def play(dut):
    timeout_ns = int(os.environ["SF_TIMEOUT_NS"])
    # the harness makes its own clock and reset; one trigger for the whole run,
    # no Python per cycle
    await First(RisingEdge(dut.finished), Timer(timeout_ns, unit="ns"))
    assert dut.finished.value == 1, f"the engine did not finish within {timeout_ns // 10} cycles"
