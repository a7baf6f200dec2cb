"""Readers of the FPGA tools' reports, shared by rtl_gen's synthesis flow and the board builds:
yosys ``stat -json`` (cell counts, classified into resources with hwrnn.fpga.CELL_CLASSES) and
nextpnr's ``--report`` JSON (Fmax per clock, critical path, utilization).

nextpnr-ice40 times SB_MAC16 blocks used combinationally as registers clocked by a constant net
(a "clock" named like ``$PACKER_GND_NET``), so paths through the multipliers are split into a
segment into the DSP and one out of it, and neither counts in the real clock's Fmax. A real path
is at least as long as each segment, so the Fmax read here is capped at 1000 / (longest such
segment in ns); the reader says so (``capped_by``, ``reported_mhz``).
"""
from __future__ import annotations

import re
from collections import Counter

from .fpga import CELL_CLASSES, IGNORED_CELLS

# ---- yosys ---------------------------------------------------------------------------------------

def _name(n: str) -> str:
    return n[1:] if n.startswith("\\") else n


def module_cells(stat: dict) -> dict[str, Counter]:
    """{module name: Counter of its own cell types (submodule instances included by name)} of a
    yosys ``stat -json`` report."""
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


def design_cells(stat: dict) -> dict:
    """{"cells": total, "cells_by_type": {type: n}} of the whole design of a ``stat -json`` report
    (its "design" entry, or its first module when there is none)."""
    design = stat.get("design") or next(iter(stat.get("modules", {}).values()), {})
    cells = design.get("num_cells_by_type", {})
    return {"cells": design.get("num_cells"), "cells_by_type": dict(sorted(cells.items()))}


def classify(family: str, cells: Counter) -> dict:
    """Resource counts from primitive cell counts: lut, ff, carry, bram, dsp, lutram (+ mux, spram;
    Xilinx also lut_total = LUTs + LUTs used as memory), and ``other`` for unclassified types."""
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


# ---- nextpnr -------------------------------------------------------------------------------------

#: "clocks" nextpnr lists that are constant nets (iCE40 combinational DSP blocks), not real clocks
CONST_CLOCK = re.compile(r"GND|VCC|PACKER")

_PRIM = re.compile(r"(_(TRELLIS|LUT4|CCU2C|MULT18X18D|ALU54B|DP16KD|PDPW16KD|PFUMX|L6MUX21|SB_|DSP48|CARRY4|FD[RSCP]E|"
                   r"RAMB|LUT[1-6]|MUXF)|\$)")

CAPPED_BY = ("a path segment through a combinational DSP block that nextpnr does not time "
             "as part of the clock domain")


def _block_hint(cell: str) -> str:
    """The design-side part of a netlist cell name: `clut0.rd__addr_TRELLIS_FF_Q_8` -> `clut0.rd__addr`."""
    m = _PRIM.search(cell)
    head = cell[:m.start()] if m and m.start() > 0 else cell
    return head.rstrip("_.")


def summarize_path(cp: dict) -> dict:
    """One critical path of nextpnr's report: end cells, delay split (ns), blocks and nets passed."""
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


def _clock_timing(report: dict, clk: str) -> tuple[float, dict | None]:
    """(Fmax in MHz, critical path) of one clock, capped by the segments through untimed DSPs."""
    mhz = float(report["fmax"][clk]["achieved"])
    path, worst_seg = None, None
    for cp in report.get("critical_paths", []):
        fr, to = cp.get("from", ""), cp.get("to", "")
        if not (fr.startswith("posedge") and to.startswith("posedge")):
            continue
        if clk in fr and clk in to and path is None:
            path = summarize_path(cp)
        elif (clk in fr or clk in to) and (CONST_CLOCK.search(fr) or CONST_CLOCK.search(to)):
            seg = summarize_path(cp)
            if worst_seg is None or seg["delay_ns"] > worst_seg["delay_ns"]:
                worst_seg = seg
    if worst_seg and worst_seg["delay_ns"] > 0 and 1000.0 / worst_seg["delay_ns"] < mhz:
        worst_seg["fmax_reported"] = round(mhz, 2)
        worst_seg["capped_by"] = CAPPED_BY
        return 1000.0 / worst_seg["delay_ns"], worst_seg
    return mhz, path


def read_nextpnr(report: dict) -> dict:
    """What a nextpnr ``--report`` JSON says about the design:

    * "clocks": {clock: {"achieved_mhz", "constraint_mhz" (None without one), and when capped
      "reported_mhz"}} of the real clocks (constant-net "clocks" left out; MHz rounded to 0.01);
    * "fmax_mhz", "clock", "critical_path": the slowest real clock, its Fmax (unrounded) and the
      summary of its critical path (or of the capping segment, with "fmax_reported", "capped_by");
      None when the report has no clock;
    * "timing_met": every real clock reaches its constraint (None without clocks);
    * "utilization": {cell type: {"used", "available"}} of the types used."""
    fmax = report.get("fmax", {})
    util = {k: {"used": v["used"], "available": v["available"]} for k, v in report.get("utilization", {}).items()
            if v.get("used")}
    out = {"clocks": {}, "fmax_mhz": None, "clock": None, "critical_path": None, "timing_met": None,
           "utilization": util}
    if not fmax:
        return out
    real = [c for c in fmax if not CONST_CLOCK.search(c)] or list(fmax)
    timing = {c: _clock_timing(report, c) for c in real}
    for c in real:
        mhz, path = timing[c]
        con = fmax[c].get("constraint")
        entry = {"achieved_mhz": round(mhz, 2), "constraint_mhz": round(con, 2) if con is not None else None}
        if path and path.get("capped_by"):
            entry["reported_mhz"] = path["fmax_reported"]
        out["clocks"][c] = entry
    clk = min(real, key=lambda c: timing[c][0])
    out["clock"], (out["fmax_mhz"], out["critical_path"]) = clk, timing[clk]
    cons = [v for v in out["clocks"].values() if v["constraint_mhz"] is not None]
    out["timing_met"] = all(v["achieved_mhz"] >= v["constraint_mhz"] for v in cons) if cons else None
    return out
