"""One regression run: generate the core, plan a sequence, simulate with cocotb, return a summary."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding

from .plan import random_plan, write_plan
from .runner import run_cocotb

SIM_DIR = Path(__file__).resolve().parent
ROOT = SIM_DIR.parent


@dataclass(frozen=True)
class BuildOptions:
    """How a regression builds the core on Verilator (Icarus ignores all but ``shared``).

    public:      "ports": only the top's ports are visible to cocotb (all the testbench touches), so
                 Verilator optimises across the design; "all": cocotb's --public-flat-rw.
    opt:         C++ optimisation of the model's hot code (verilated.mk's OPT_FAST; "": its default
                 -Os). -O1 by default: on the full-size core (benchmarks/bench_sim.py) it builds and
                 runs like -Os within noise; -O0 builds ~10 % faster and runs 2.5x slower.
    split_cfuncs: Verilator --output-split-cfuncs (statements per C++ function; 0: off): big
                 functions compile superlinearly.
    hier:        compile each shared lane module (rtl_gen.dedupe) once, as a Verilator
                 hierarchical block.
    shared:      take the build from / keep it in the repo's build store (sim.buildcache), keyed by
                 the Verilog text (weights live in weights.hex, read at run time).
    """
    public: str = "ports"
    opt: str = "-O1"
    split_cfuncs: int = 0
    hier: bool = False
    shared: bool = True

    def run_cocotb_args(self, verilog: Path) -> dict:
        args = {"public": self.public, "shared_build": self.shared}
        if self.opt:
            args["make_vars"] = {"OPT_FAST": self.opt}
        if self.split_cfuncs:
            args["build_args"] = ["--output-split-cfuncs", str(self.split_cfuncs)]
        if self.hier:
            args["hier_blocks"] = hier_blocks(verilog.read_text())
        return args


#: the regression's default build
FAST_BUILD = BuildOptions()


def hier_blocks(text: str) -> list[str]:
    """Modules of an emitted core worth a Verilator hierarchical block: plain-named modules
    instantiated more than once (rtl_gen.dedupe merged them), none inside another such block."""
    from rtl_gen.dedupe import instances

    inst = instances(text)
    shared = {n for n, parents in inst.items() if len(parents) > 1 and not n.startswith("\\")}

    def ancestors(name: str) -> set[str]:
        out: set[str] = set()
        todo = list(inst.get(name, []))
        while todo:
            p = todo.pop()
            if p not in out:
                out.add(p)
                todo += inst.get(p, [])
        return out

    blocks = [n for n in inst if n in shared and not ancestors(n) & shared]
    return blocks


@dataclass
class RegressionResult:
    sim: str
    steps: int
    compared_steps: int
    cycles: int
    cycles_per_step: int
    predicted: int
    sim_cycles_per_s: float
    build_s: float  # 0.0 when an up-to-date build dir was reused; the copy time for a stored build
    run_s: float
    generate_s: float
    waveform: str | None
    seed: int
    build_stored: bool = False  # the build came from the build store (sim.buildcache)

    def line(self) -> str:
        aborted = self.steps - self.compared_steps
        return (f"PASS {self.sim}: {self.steps} steps ({self.compared_steps} compared"
                f"{f', {aborted} aborted by rst' if aborted else ''}), {self.cycles} cycles, {self.cycles_per_step} cycles/step "
                f"(predicted {self.predicted}), {self.sim_cycles_per_s:,.0f} simulated cycles/s, seed {self.seed}")


def top_name(layer: QuantLayer) -> str:
    """The Verilog top module of a layer's core when none is given: hwrnn_<cell type>."""
    return f"hwrnn_{layer.cfg.cell_type}"


def generate_core(layer: QuantLayer, fold: Folding, out_dir: Path, name: str | None = None,
                  weights: str = "memory", source: str = "sim") -> Path:
    """The core of ``layer`` in ``out_dir`` (Verilog, images, manifest naming ``source``) and its layer.npz."""
    from rtl_gen.emit import generate, write_output

    name = name or top_name(layer)
    files = generate(layer, fold, name, source=source, weights=weights)
    write_output(files, str(out_dir))
    layer.save(out_dir / "layer.npz")
    return out_dir


def run_regression(layer: QuantLayer, fold: Folding, work: Path, sim: str = "verilator", steps: int = 20,
                   seed: int = 0, stall_in: float = 0.3, stall_out: float = 0.3, resets: bool = True,
                   load_layer: QuantLayer | None = None, waves: bool = False,
                   name: str | None = None, inject=None, weights: str = "memory",
                   source: str = "sim", build: BuildOptions = FAST_BUILD) -> RegressionResult:
    """Raises sim.runner.SimulationFailed (one line) when anything differs.

    ``source`` describes where the weights came from (the manifest's weights_source);
    ``inject(verilog_text) -> text`` lets tests break the design on purpose; ``build`` says how the
    simulator builds it (BuildOptions)."""
    work = Path(work).resolve()
    name = name or top_name(layer)
    gen = work / "gen"
    t0 = time.perf_counter()
    generate_core(layer, fold, gen, name, weights, source)
    if inject is not None:
        v = gen / f"{name}.v"
        v.write_text(inject(v.read_text()))
    load_path = None
    if load_layer is not None:
        load_path = gen / "runtime_layer.npz"
        load_layer.save(load_path)
    gen_s = time.perf_counter() - t0
    plan = random_plan(gen / "manifest.json", gen / "layer.npz", steps, seed, stall_in, stall_out, resets,
                       load_layer_path=load_path)
    plan_path = work / "plan.json"
    write_plan(plan, plan_path)
    result_path = work / "result.json"
    if result_path.exists():
        result_path.unlink()
    env = {"HWRNN_SIM_PLAN": str(plan_path), "HWRNN_SIM_RESULT": str(result_path),
           "PYTHONPATH": os.pathsep.join([str(SIM_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "COCOTB_REWRITE_ASSERTION_FILES": "tb_core.py"}
    verilog = gen / f"{name}.v"
    opts = build.run_cocotb_args(verilog) if sim == "verilator" else {"shared_build": build.shared}
    res = run_cocotb(sim, [verilog], toplevel=name, test_module="tb_core", test_dir=gen,
                     build_dir=work / f"build_{sim}", module_dir=SIM_DIR, extra_env=env, waves=waves, **opts)
    summary = json.loads(result_path.read_text())
    per_step = summary["cycles_per_step"]
    return RegressionResult(sim=sim, steps=summary["steps"], compared_steps=summary["compared_steps"],
                            cycles=summary["cycles"],
                            cycles_per_step=per_step[0] if per_step else 0,
                            predicted=summary["predicted_cycles_per_step"],
                            sim_cycles_per_s=summary["cycles_per_s"] or 0.0, build_s=res.build_time_s,
                            run_s=res.run_time_s, generate_s=gen_s,
                            waveform=str(res.waveform) if res.waveform else None, seed=seed,
                            build_stored=res.build_stored)


def run_stack_regression(stack, folds, work: Path, sim: str = "verilator", steps: int = 12, seed: int = 0,
                         name: str = "hwrnn_stack", lengths=None, max_len: int | None = None) -> dict:
    """A generated stack (rtl_gen.stack) driven with random sequences back to back (``lengths``;
    default one sequence of ``steps``; a stack without a bidirectional layer runs them as one
    stream): every layer's outputs equal to hwrnn.stack.IntegerStack (each sequence from the reset
    state when the stack has a bidirectional layer) and every hand-over at the cycle
    hwrnn.stack.Schedule predicts. ``max_len``: the bidirectional layers' buffer depth (default:
    the longest sequence). Returns the testbench's summary; raises sim.runner.SimulationFailed (one
    line) on a mismatch."""
    import numpy as np

    from hwrnn.stack import IntegerStack, Schedule, check_lengths, stack_latencies
    from rtl_gen.emit import write_output
    from rtl_gen.stack import generate_stack

    work = Path(work).resolve()
    gen = work / "gen"
    delimited = any(layer.bidirectional for layer in stack.layers)
    lengths = check_lengths(lengths or [steps], None)
    if not delimited:
        lengths = [sum(lengths)]  # one stream: no sequence boundaries in the hardware
    max_len = (max_len or max(lengths)) if delimited else None
    check_lengths(lengths, max_len)
    write_output(generate_stack(stack, folds, name, source="sim", steps=lengths[0], max_len=max_len), str(gen))
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 1 << stack.abits, (n, stack.input)) for n in lengths]
    runs = [IntegerStack(stack).run(xs) for xs in seqs]
    sch = Schedule(stack_latencies(stack, folds), lengths, delimited=delimited)
    plan = {"abits": stack.abits, "delimited": delimited, "xs": np.concatenate(seqs).tolist(),
            "lasts": [int(t == n - 1) for n in lengths for t in range(n)],
            "widths": [layer.output_width for layer in stack.layers],
            "expected_h": [np.concatenate([r[l] for r in runs]).tolist() for l in range(len(stack))],
            "expected_accept": sch.accept[0], "expected_taken": sch.taken,
            "max_cycles": sch.valid[-1][-1] + 100}
    plan_path, result_path = work / "stack_plan.json", work / "stack_result.json"
    plan_path.write_text(json.dumps(plan))
    if result_path.exists():
        result_path.unlink()
    env = {"HWRNN_SIM_PLAN": str(plan_path), "HWRNN_SIM_RESULT": str(result_path),
           "PYTHONPATH": os.pathsep.join([str(SIM_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "COCOTB_REWRITE_ASSERTION_FILES": "tb_stack.py"}
    run_cocotb(sim, [gen / f"{name}.v"], toplevel=name, test_module="tb_stack", test_dir=gen,
               build_dir=work / f"build_{sim}", module_dir=SIM_DIR, extra_env=env)
    return json.loads(result_path.read_text())
