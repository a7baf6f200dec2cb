"""A testbench for counter_mem.v that never finishes (proves run_cocotb's timeout)."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles


@cocotb.test()
async def never_ends(dut):
    Clock(dut.clk, 10, unit="ns").start()
    while True:
        await ClockCycles(dut.clk, 1000)
