"""cocotb test of the harness (:mod:`spikeforge.sim.harness`): clock, reset, then
let the simulator run free until the harness has played every image."""

import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer


@cocotb.test()
async def play(dut):
    timeout_ns = int(os.environ["SF_TIMEOUT_NS"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    # one trigger for the whole run: no Python per cycle
    await First(RisingEdge(dut.finished), Timer(timeout_ns, unit="ns"))
    assert dut.finished.value == 1, f"the engine did not finish within {timeout_ns // 10} cycles"
