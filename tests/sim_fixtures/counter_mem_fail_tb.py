"""A testbench for counter_mem.v with one passing and one deliberately failing test.

Used to prove that sim.runner reports cocotb assertion failures as SimulationFailed.
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer


@cocotb.test()
async def passes(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    assert int(dut.out_data.value) == 0


@cocotb.test()
async def fails_on_purpose(dut):
    dut.rd_addr.value = 0
    await Timer(1, unit="ns")
    assert int(dut.rd_data.value) == 0xDEAD + 1, "deliberate failure"
