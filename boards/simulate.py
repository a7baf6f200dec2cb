"""Board-level simulation: the whole board design (UART + framing + core, boards.link.LinkTop) as
Verilog under cocotb (Verilator or Icarus), driven by the host driver through a simulated serial
link (boards/tb/tb_board.py) and checked against the integer model.

    from boards.simulate import run_board_sim
    res = run_board_sim(layer, fold, work_dir, sim="verilator", divisor=8, steps=12)
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding

BOARDS_DIR = Path(__file__).resolve().parent
ROOT = BOARDS_DIR.parent
TB_DIR = BOARDS_DIR / "tb"
TOP_NAME = "hwrnn_board"
TESTS = ("sequence", "corrupted_frames")
#: nominal clock of the simulation (only sets the simulated time scale of the link timeouts)
SIM_CLK_HZ = 1_000_000


@dataclass
class BoardSimResult:
    sim: str
    tests: dict  # test name -> recorded summary
    passed: int
    build_s: float
    run_s: float
    generate_s: float
    waveform: str | None

    def line(self) -> str:
        parts = []
        seq = self.tests.get("sequence")
        if seq:
            parts.append(f"sequence: {seq['baked_steps']} + {seq['runtime_steps']} steps equal to the integer model "
                         f"({seq['load_frames']} LOAD frames, {seq['latency']} cycles/step)")
        cor = self.tests.get("corrupted_frames")
        if cor:
            c = cor["expected_counters"]
            parts.append(f"corrupted frames: {c['crc_errors']} CRC, {c['header_errors']} header, {c['timeouts']} "
                         f"truncated, {c['arg_errors']} bad-argument NAKs, {c['uart_errors']} UART framing error, "
                         f"{c['dropped']} bytes dropped, {cor['stats']['steps_recovered']} lost reply recovered "
                         f"({c['duplicates']} resent STEP answered without stepping); "
                         f"{cor['steps']} steps equal to the model")
        return f"PASS {self.sim}: " + "; ".join(parts)


def runtime_variant(layer: QuantLayer, seed: int) -> QuantLayer:
    """A different layer that the core built for ``layer`` can load at run time: new weight codes and
    biases, the same scale (so the same shift R) and biases within ``layer``'s range (so they fit
    the bias memory)."""
    other = QuantLayer.random(layer.cfg, seed=seed)
    bias = np.clip(other.bias, layer.bias.min(initial=0.0), layer.bias.max(initial=0.0))
    return QuantLayer(layer.cfg, other.codes, layer.scale, bias)


def board_verilog(layer: QuantLayer, fold: Folding, divisor: int, timeout_cycles: int,
                  clk_hz: int = SIM_CLK_HZ, name: str = TOP_NAME):
    """(Verilog text, DesignInfo) of the board design without pins."""
    from amaranth.back import verilog

    from .link import LinkTop

    top = LinkTop(layer, fold, clk_hz=clk_hz, divisor=divisor, timeout_cycles=timeout_cycles, heartbeat_bit=8)
    return verilog.convert(top, name=name, emit_src=False), top.info


def run_board_sim(layer: QuantLayer, fold: Folding, work, *, sim: str = "verilator", divisor: int = 8,
                  timeout_bits: int = 32, steps: int = 12, seed: int = 0, runtime_layer: QuantLayer | None = None,
                  tests=TESTS, waves: bool = False, timeout_s: float = 600.0) -> BoardSimResult:
    """Generate, build and run the board testbench; raises sim.runner.SimulationFailed (one line)
    when anything differs. ``timeout_bits``: the device's frame timeout in bit times."""
    from sim.runner import run_cocotb

    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    work = Path(work).resolve()
    gen = work / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timeout_cycles = timeout_bits * divisor
    text, info = board_verilog(layer, fold, divisor, timeout_cycles)
    vfile = gen / f"{TOP_NAME}.v"
    if not vfile.exists() or vfile.read_text() != text:
        vfile.write_text(text)
    layer.save(gen / "baked.npz")
    runtime = runtime_layer if runtime_layer is not None else runtime_variant(layer, seed + 1000)
    runtime.save(gen / "runtime.npz")
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, 1 << layer.cfg.abits, (steps, layer.cfg.input)).tolist()
    baked_steps = max(1, steps // 4)
    plan = {"baked_layer": str(gen / "baked.npz"), "runtime_layer": str(gen / "runtime.npz"),
            "divisor": divisor, "period_ns": 1e9 / SIM_CLK_HZ, "info_hex": info.pack().hex(), "xs": xs,
            "baked_steps": baked_steps, "reset_before": [max(1, (steps - baked_steps) // 2)], "seed": seed}
    plan_path = work / "plan.json"
    plan_path.write_text(json.dumps(plan))
    result_path = work / "result.json"
    if result_path.exists():
        result_path.unlink()
    gen_s = time.perf_counter() - t0
    env = {"HWRNN_BOARD_PLAN": str(plan_path), "HWRNN_BOARD_RESULT": str(result_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "COCOTB_REWRITE_ASSERTION_FILES": "tb_board.py"}
    res = run_cocotb(sim, [vfile], toplevel=TOP_NAME, test_module="tb_board", test_dir=gen,
                     build_dir=work / f"build_{sim}", module_dir=TB_DIR, extra_env=env, waves=waves,
                     testcase=list(tests), timeout_s=timeout_s)
    recorded = json.loads(result_path.read_text()) if result_path.exists() else {}
    return BoardSimResult(sim=sim, tests=recorded, passed=res.passed, build_s=res.build_time_s,
                          run_s=res.run_time_s, generate_s=gen_s,
                          waveform=str(res.waveform) if res.waveform else None)
