"""cocotb testbench for counter_mem.v (run through sim.runner.run_cocotb).

Reads what to expect from the JSON file named by $FIXTURE_EXPECT:
``{"limit": int, "mem": [int] * 8}``. Also re-reads ``mem.hex`` from the current working
directory, so a pass proves that the simulator ran in the directory holding the hex file.
"""

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer


def _expect() -> dict:
    return json.loads(Path(os.environ["FIXTURE_EXPECT"]).read_text())


async def _reset(dut) -> None:
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.out_ready.value = 0
    dut.rd_addr.value = 0
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def stream_with_backpressure(dut):
    """The stream carries 0..LIMIT-1 once, last on the final word, under random ready."""
    limit = _expect()["limit"]
    await _reset(dut)
    got, lasts = [], []
    for _ in range(20 * limit + 20):
        await FallingEdge(dut.clk)  # outputs are stable between rising edges
        ready = random.random() < 0.6
        dut.out_ready.value = int(ready)
        if int(dut.out_valid.value) and ready:  # transfer at the next rising edge
            got.append(int(dut.out_data.value))
            lasts.append(int(dut.out_last.value))
    assert got == list(range(limit)), got
    assert lasts == [0] * (limit - 1) + [1], lasts
    assert int(dut.out_valid.value) == 0


@cocotb.test()
async def memory_from_readmemh(dut):
    """rd_data returns the words $readmemh loaded from ./mem.hex (relative to the cwd)."""
    expect = _expect()["mem"]
    in_cwd = [int(w, 16) for w in Path("mem.hex").read_text().split()]
    assert in_cwd == expect, "mem.hex in the cwd is not the file the test expected"
    await _reset(dut)
    for addr in random.sample(range(8), 8):
        dut.rd_addr.value = addr
        await Timer(1, unit="ns")
        assert int(dut.rd_data.value) == expect[addr], (addr, str(dut.rd_data.value))
