"""cocotb testbench of a generated hwrnn core (imported by the simulator, not by pytest).

Reads a plan (JSON, path in $HWRNN_SIM_PLAN, written by sim.plan.write_plan): the manifest, the
layer checkpoint baked into the memory image, optionally a second checkpoint to load at run time
through the ``load`` stream, the x_t codes, the points where ``reset_state`` or ``rst`` is pulsed,
the random seed and the stall probabilities. Expected h_t/c_t come from the integer model
(hwrnn.integer_model) and are compared exactly; the cycles from accepting x_t to h_t valid are
compared with the manifest's latency. A summary JSON is written to $HWRNN_SIM_RESULT.
"""
from __future__ import annotations

import json
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from sim.plan import expected_outputs, load_plan, load_words, stream_words


def _field(value: int, offset: int, bits: int, n: int, signed: bool = False):
    out = []
    mask = (1 << bits) - 1
    for j in range(n):
        v = (value >> (offset + bits * j)) & mask
        if signed and v >> (bits - 1):
            v -= 1 << bits
        out.append(v)
    return out


async def _wait_ready(dut, ready) -> int:
    """With valid already driven: wait (in the read-only phase) until `ready` is high, so the
    transfer happens at the coming clock edge. Returns the clock edges waited."""
    waited = 0
    await ReadOnly()
    while not ready.value:
        await RisingEdge(dut.clk)
        waited += 1
        await ReadOnly()
    return waited


class WeightFeeder:
    """Drives the w stream of a streamed-weights core: the image words in address order, over and
    over, with random gaps; counts the cycles in which the core waited for a word."""

    def __init__(self, dut, words, rng, stall):
        self.dut, self.words, self.rng, self.stall = dut, words, rng, stall
        self.idx = 0
        self.waited = 0

    async def run(self):
        dut = self.dut
        while True:
            dut.w__valid.value = 0 if self.rng.random() < self.stall else 1
            dut.w__payload.value = self.words[self.idx]
            await ReadOnly()
            if dut.w__ready.value:
                if dut.w__valid.value:
                    self.idx = (self.idx + 1) % len(self.words)
                else:
                    self.waited += 1
            await RisingEdge(dut.clk)


@cocotb.test()
async def run_plan(dut):
    plan = load_plan(os.environ["HWRNN_SIM_PLAN"])
    man = plan.manifest
    rng = random.Random(plan.seed)
    dut._log.info(f"hwrnn sim: seed {plan.seed}, {len(plan.xs)} steps, stall_in {plan.stall_in}, "
                  f"stall_out {plan.stall_out}")
    fields = man["payload_fields"]
    abits = fields["x"]["element_bits"]
    H = fields["out"]["h"]["elements"]
    has_c = "c" in fields["out"]  # cell types without a cell state show h only
    cbits = fields["out"]["c"]["element_bits"] if has_c else 0
    c_off = fields["out"]["c"]["offset"] if has_c else 0
    lf = fields["load"]
    latency = man["latency"]["cycles_per_step"]
    expected = expected_outputs(plan)  # list per step: (h, c) or None for an aborted step

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    feeder = None
    if man.get("weights") == "stream":
        dut.w__valid.value = 0
        feeder = WeightFeeder(dut, stream_words(plan), random.Random(plan.seed + 1), plan.stall_in)
    for sig, v in (("x__valid", 0), ("out__ready", 0), ("load__valid", 0), ("reset_state", 0)):
        getattr(dut, sig).value = v
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    if feeder is not None:
        cocotb.start_soon(feeder.run())

    # run-time weight loading through the load stream (same stalls as x)
    words = load_words(plan)
    cycle = 0
    for sel, addr, data in words:
        while rng.random() < plan.stall_in:
            dut.load__valid.value = 0
            await RisingEdge(dut.clk)
            cycle += 1
        dut.load__payload.value = data | (addr << lf["addr"]["offset"]) | (sel << lf["sel"]["offset"])
        dut.load__valid.value = 1
        cycle += await _wait_ready(dut, dut.load__ready)
        await RisingEdge(dut.clk)
        cycle += 1
    dut.load__valid.value = 0

    t_start = time.perf_counter()
    first_cycle = cycle
    step_cycles = []
    mismatches = []
    step = 0
    n_steps = len(plan.xs)
    while step < n_steps:
        # --- a reset of the state (between steps) or of the whole core (during a step) ---------
        if step in plan.reset_state_before:
            dut.reset_state.value = 1
            await RisingEdge(dut.clk)
            cycle += 1
            dut.reset_state.value = 0
        # --- offer x_t after random idle cycles; valid stays high until accepted ---------------
        while rng.random() < plan.stall_in:
            await RisingEdge(dut.clk)
            cycle += 1
        x = plan.xs[step]
        dut.x__payload.value = sum(int(v) << (abits * j) for j, v in enumerate(x))
        dut.x__valid.value = 1
        cycle += await _wait_ready(dut, dut.x__ready)
        t_accept = cycle
        waited_before = feeder.waited if feeder else 0
        await RisingEdge(dut.clk)
        cycle += 1
        dut.x__valid.value = 0
        if step in plan.rst_during:
            # pulse the global reset part-way through the step: the step is lost, the state is
            # back to the reset state, the weights stay (memories are not reset)
            for _ in range(plan.rst_during[step]):
                await RisingEdge(dut.clk)
                cycle += 1
            dut.rst.value = 1
            await RisingEdge(dut.clk)
            cycle += 1
            dut.rst.value = 0
            if feeder is not None:
                feeder.idx = 0  # the aborted step's words are void; the next step starts at address 0
            if words:
                dut._log.info("rst also reset the loaded multiplier register: reloading")
                for sel, addr, data in words:
                    dut.load__payload.value = data | (addr << lf["addr"]["offset"]) | (sel << lf["sel"]["offset"])
                    dut.load__valid.value = 1
                    await RisingEdge(dut.clk)
                    cycle += 1
                dut.load__valid.value = 0
            step += 1
            continue
        # --- wait for h_t with random backpressure ------------------------------------------------
        t_valid = None
        while True:
            dut.out__ready.value = 0 if rng.random() < plan.stall_out else 1
            await ReadOnly()
            if dut.out__valid.value:
                if t_valid is None:
                    t_valid = cycle
                if dut.out__ready.value:
                    payload = int(dut.out__payload.value)
                    break
            await RisingEdge(dut.clk)
            cycle += 1
        await RisingEdge(dut.clk)
        cycle += 1
        dut.out__ready.value = 0
        h = _field(payload, 0, abits, H)
        c = _field(payload, c_off, cbits, H, signed=fields["out"]["c"].get("signed", True)) if has_c else None
        want_h, want_c = expected[step]
        measured = t_valid - t_accept
        waited = (feeder.waited - waited_before) if feeder else 0
        step_cycles.append(measured - waited)
        for tap, got, want in (("h", h, want_h), ("c", c, want_c))[:2 if has_c else 1]:
            if got != want:
                bad = [j for j in range(H) if got[j] != want[j]]
                mismatches.append(f"step {step}: {tap} differs at units {bad[:8]} (got {[got[j] for j in bad[:4]]}, "
                                  f"want {[want[j] for j in bad[:4]]})")
        if measured != latency + waited:
            mismatches.append(f"step {step}: {measured} cycles from x accepted to h valid, predicted {latency}"
                              + (f" + {waited} cycles waiting for weight words" if feeder else ""))
        step += 1

    wall = time.perf_counter() - t_start
    total = cycle - first_cycle
    summary = {"steps": n_steps, "compared_steps": len(step_cycles), "cycles": total,
               "cycles_per_step": step_cycles, "predicted_cycles_per_step": latency,
               "sim_wall_s": wall, "cycles_per_s": total / wall if wall > 0 else None,
               "mismatches": mismatches, "seed": plan.seed}
    if os.environ.get("HWRNN_SIM_RESULT"):
        with open(os.environ["HWRNN_SIM_RESULT"], "w") as fh:
            json.dump(summary, fh)
    assert not mismatches, "; ".join(mismatches[:5])
