"""cocotb testbench of a generated hwrnn stack (rtl_gen.stack; imported by the simulator).

Reads a plan (JSON, path in $HWRNN_SIM_PLAN, written by sim.regress.run_stack_regression): the x_t
codes of one or more sequences (with their last flags when the stack is delimited: it has a
bidirectional layer), every layer's expected outputs (hwrnn.stack.IntegerStack, per sequence) and
the expected cycles (hwrnn.stack.Schedule). x is offered every cycle and the last output always
taken, so every hand-over happens at a predicted cycle: layer 0 accepts x_t, inner layer l's
output is taken by layer l+1 (tap h{l}_valid), the last layer's output is valid at out. All
compared exactly (and out's last flag); a summary JSON goes to $HWRNN_SIM_RESULT.
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
    A, xs, lasts, widths = plan["abits"], plan["xs"], plan["lasts"], plan["widths"]
    delimited = plan["delimited"]
    x_bits, out_bits = len(xs[0]) * A, widths[-1] * A
    want_h, want_accept, want_taken = plan["expected_h"], plan["expected_accept"], plan["expected_taken"]
    n_layers, n = len(widths), len(xs)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.x__valid.value = 0
    dut.out__ready.value = 1
    dut.reset_state.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    seen = [[] for _ in range(n_layers)]  # (codes, cycle) per layer
    out_lasts, accepted = [], []
    cycle, step = 0, 0
    while len(seen[-1]) < n and cycle < plan["max_cycles"]:
        if step < n:
            payload = sum(int(v) << (A * j) for j, v in enumerate(xs[step]))
            dut.x__payload.value = payload | (int(lasts[step]) << x_bits if delimited else 0)
            dut.x__valid.value = 1
        else:
            dut.x__valid.value = 0
        await ReadOnly()
        if step < n and _high(dut.x__ready):
            accepted.append(cycle)
            step += 1
        for l in range(n_layers - 1):
            if _high(getattr(dut, f"h{l}_valid")):
                seen[l].append((_codes(int(getattr(dut, f"h{l}").value), A, widths[l]), cycle))
        if _high(dut.out__valid):
            value = int(dut.out__payload.value)
            seen[-1].append((_codes(value, A, widths[-1]), cycle))
            out_lasts.append((value >> out_bits) & 1 if delimited else 0)
        await RisingEdge(dut.clk)
        cycle += 1
    mismatches = []
    t0 = accepted[0] if accepted else 0
    if [c - t0 for c in accepted] != want_accept:
        mismatches.append(f"layer 0 accepted x at {[c - t0 for c in accepted][:6]}, predicted {want_accept[:6]}")
    for l in range(n_layers):
        got = [h for h, _ in seen[l]]
        if got != want_h[l]:
            bad = next((t for t in range(min(len(got), n)) if got[t] != want_h[l][t]), len(got))
            mismatches.append(f"layer {l}: output differs from element {bad} ({len(got)} of {n} seen)")
        cyc = [c - t0 for _, c in seen[l]]
        if cyc != want_taken[l]:
            bad = next((k for k in range(min(len(cyc), n)) if cyc[k] != want_taken[l][k]), len(cyc))
            mismatches.append(f"layer {l}: output {bad} handed on at cycle {cyc[bad] if bad < len(cyc) else None}, "
                              f"predicted {want_taken[l][bad] if bad < n else None}")
    if delimited and out_lasts != [int(v) for v in lasts]:
        mismatches.append(f"out's last flags {out_lasts} differ from the sequences' {lasts}")
    summary = {"elements": n, "layers": n_layers, "cycles": cycle, "accepted": [c - t0 for c in accepted],
               "last_valid": [c - t0 for _, c in seen[-1]], "mismatches": mismatches}
    with open(os.environ["HWRNN_SIM_RESULT"], "w") as fh:
        json.dump(summary, fh)
    assert not mismatches, "; ".join(mismatches[:5])
