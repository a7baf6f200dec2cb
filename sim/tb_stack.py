"""cocotb testbench of a generated hwrnn stack (rtl_gen.stack; imported by the simulator).

Reads a plan (JSON, path in $HWRNN_SIM_PLAN, written by sim.regress.run_stack_regression): the x_t
codes of one sequence, every layer's expected h_t (hwrnn.stack.IntegerStack) and the expected
cycles (hwrnn.stack.stack_schedule). x is offered every cycle and the last output always taken, so
every hand-over happens at a predicted cycle: layer 0 accepts x_t, inner layer l's h_t is taken by
layer l+1 (tap h{l}_valid), the last layer's h_t is valid at out. All compared exactly; a summary
JSON goes to $HWRNN_SIM_RESULT.
"""
from __future__ import annotations

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


def _high(sig) -> bool:
    """A 1-bit signal is 1 (X or Z at time 0 under Icarus count as 0)."""
    return str(sig.value) == "1"


def _codes(value: int, bits: int, n: int) -> list[int]:
    return [(value >> (bits * j)) & ((1 << bits) - 1) for j in range(n)]


@cocotb.test()
async def run_stack_plan(dut):
    plan = json.load(open(os.environ["HWRNN_SIM_PLAN"]))
    A, xs, hidden = plan["abits"], plan["xs"], plan["hidden"]
    want_h, want_cycles = plan["expected_h"], plan["expected_cycles"]   # per layer, per step
    n_layers, T = len(hidden), len(xs)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.x__valid.value = 0
    dut.out__ready.value = 1
    dut.reset_state.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    seen = [[] for _ in range(n_layers)]  # (h, cycle) per layer
    accepted = []
    cycle, step = 0, 0
    while len(seen[-1]) < T and cycle < plan["max_cycles"]:
        if step < T:
            dut.x__payload.value = sum(int(v) << (A * j) for j, v in enumerate(xs[step]))
            dut.x__valid.value = 1
        else:
            dut.x__valid.value = 0
        await ReadOnly()
        if step < T and _high(dut.x__ready):
            accepted.append(cycle)
            step += 1
        for l in range(n_layers - 1):
            if _high(getattr(dut, f"h{l}_valid")):
                seen[l].append((_codes(int(getattr(dut, f"h{l}").value), A, hidden[l]), cycle))
        if _high(dut.out__valid):
            seen[-1].append((_codes(int(dut.out__payload.value), A, hidden[-1]), cycle))
        await RisingEdge(dut.clk)
        cycle += 1
    mismatches = []
    t0 = accepted[0] if accepted else 0
    if [c - t0 for c in accepted] != want_cycles[0]:
        mismatches.append(f"layer 0 accepted x at {[c - t0 for c in accepted][:6]}, predicted {want_cycles[0][:6]}")
    for l in range(n_layers):
        got = [h for h, _ in seen[l]]
        if got != want_h[l]:
            bad = next((t for t in range(min(len(got), T)) if got[t] != want_h[l][t]), len(got))
            mismatches.append(f"layer {l}: h differs from step {bad} ({len(got)} of {T} steps seen)")
        cyc = [c - t0 for _, c in seen[l]]
        want = want_cycles[l + 1] if l + 1 < n_layers else [a + plan["latencies"][-1] for a in want_cycles[-1]]
        if cyc != want:
            mismatches.append(f"layer {l}: h handed on at cycles {cyc[:6]}, predicted {want[:6]}")
    summary = {"steps": T, "layers": n_layers, "cycles": cycle, "accepted": [c - t0 for c in accepted],
               "last_valid": [c - t0 for _, c in seen[-1]], "mismatches": mismatches}
    with open(os.environ["HWRNN_SIM_RESULT"], "w") as fh:
        json.dump(summary, fh)
    assert not mismatches, "; ".join(mismatches[:5])
