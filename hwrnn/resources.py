"""Analytic resource and latency model of the LSTM core, and the derived figures of a report.

``estimate(cfg, fold, family)`` predicts, in well under a millisecond, what yosys reports for the
core that rtl_gen builds (rtl_gen/core.py): LUTs, flip-flops, carry cells, block RAM, DSP blocks
and LUT RAM per block and in total, for ECP5 (synth_ecp5), iCE40 (synth_ice40 -dsp) and Xilinx
7-series (synth_xilinx).

How each count is modelled:

* flip-flops: counted from the architecture (every register the core declares, at its width: the
  pipeline registers inside the popcount and activation-sum trees, the control and o-gate delay
  lines, the operand / product / sum registers around each multiplier; bits yosys removes because
  they are constant, unread or copies of another register's are left out, see ``_ff``), minus the
  registers synth_xilinx packs into DSP48E1 blocks (``_dsp_absorbs``), plus the registers yosys
  adds around ECP5 and iCE40 block RAM: a memory whose non-transparent read port shares the
  memory with a write port gets read-old-data emulation (2 x width + address + 2 flip-flops and a
  mux per bit) because those RAM primitives do not guarantee it across ports (7-series BRAM does);
* memories: the choice yosys' memory_libmap makes between block RAM, LUT RAM and logic
  (hwrnn.fpga.map_memory: ECP5 DP16KD/PDPW16KD 18 kbit and DPR16X4; iCE40 SB_RAM40_4K 4 kbit;
  7-series RAMB18/RAMB36 and distributed RAM);
* DSP blocks: one per multiplier tile of the family's multiplier (hwrnn.fpga.dsp_tiles: ECP5
  18x18, iCE40 16x16, 7-series 25x18), the way yosys' mul2dsp splits a product;
* LUTs and carry cells: a linear function of a few structural sizes per block (AND bits and tree
  width of the popcount lanes, adder widths, mux inputs of the activation and cell-state
  selectors, ...), with coefficients per family fitted to yosys by
  ``benchmarks/calibrate_resources.py --fit`` on its "fit" configurations and stored in
  hwrnn/data/resource_coefficients.json. Per-block coefficients
  describe hierarchical synthesis (one module per block); the totals apply the family's measured
  flattening factor (flattened synthesis optimises across block boundaries); flip-flop totals
  subtract the registers yosys merges when flattened (``flat_ff_saving``).

Accuracy against yosys is in results/resource_calibration.md. Latency is exact
(``hwrnn.datapath.latency``); Fmax is not modelled (it comes from nextpnr). Whether counts fit a
device is hwrnn.fpga's fit check (``device_fit``, re-exported here).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from .config import Folding, LayerConfig
from .datapath import (FIXED_CELL_ADDR_STAGES, FIXED_CELL_STAGES, FLOAT_CELL_ADDR_STAGES, FLOAT_CELL_STAGES,
                       H_REQUANT_STAGES, SCALE_BIAS_STAGES, TREE_LEVELS_PER_STAGE, Geometry, asum_width, latency,
                       memory_bits, s1_width, sequence_cycles, step_period, tree_levels)
from .devices import FAMILIES, check_family
from .formats import acc_width, candidate_width, gate_width, scale_shift, signed_width, unsigned_width
from .fpga import LUT_INPUTS, MUX_COST, MemMap, dsp_tiles, map_memory, mult18_fits
from .fpga import BRAM_BITS, BRAM_UNIT, DSP_MIN_Y, DSP_TILE, device_fit, logic_cells  # noqa: F401  (re-exported)
from .quant import levels

RESOURCES = ("lut", "ff", "carry", "bram", "dsp", "lutram")
BLOCKS = ("mac_lanes", "activation_sum", "scale_bias", "gate_luts", "cell_units", "cell_luts", "h_requant",
          "weight_memory", "state_and_control")
BLOCK_TEXT = {
    "mac_lanes": "popcount MAC lanes (AND + popcount trees)",
    "activation_sum": "activation sum (shared by all rows)",
    "scale_bias": "scale-and-bias multipliers and LUT addresses",
    "gate_luts": "gate LUT ROMs (sigmoid / candidate)",
    "cell_units": "cell-state units",
    "cell_luts": "sigmoid(c) LUT ROMs",
    "h_requant": "h requantizers",
    "weight_memory": "weight memory",
    "state_and_control": "accumulators, x/h/c registers and selectors, bias memory, controller",
}
ASSUMED_MHZ = 150.0  # SPEC 5 target; used for derived figures when no Fmax was measured

#: one floating-point cell unit (rtl_gen/float_cell.py) in synth_ecp5: (LUT4, CCU2C), measured by
#: benchmarks/cell_ablation.py (results/cell_ablation.json). Other float formats are interpolated
#: from these by their mantissa and exponent bits; other families scale them by the ratio of their
#: fixed-point cell unit to ECP5's. Not part of the calibration sweep.
FLOAT_CELL_ECP5 = {(5, 10): (1121, 143), (8, 7): (971, 140), (4, 3): (692, 109), (5, 2): (783, 113)}


# ---- the core's widths --------------------------------------------------------------------------

@dataclass(frozen=True)
class CoreShape:
    """Every size of the core rtl_gen builds for (cfg, fold, weights) that the resources depend on."""

    cfg: LayerConfig
    fold: Folding
    weights: str
    bias_bits: int   # core.bias_w (bias width of the layer + 1 spare bit)
    mult_bits: int   # core.mult_w
    shift: int       # R of the layer

    @property
    def g(self) -> Geometry:
        return Geometry(self.cfg, self.fold)

    # short names used by the formulas
    @property
    def PE(self): return self.fold.pe
    @property
    def S(self): return self.fold.simd
    @property
    def A(self): return self.cfg.abits
    @property
    def W(self): return self.cfg.wbits
    @property
    def U(self): return self.fold.pe // 4
    @property
    def PW(self): return self.g.planes_per_word
    @property
    def serial(self): return self.fold.planes == "serial"
    @property
    def cw(self): return self.cfg.cell_format.width
    @property
    def G(self): return self.cfg.gate_frac
    @property
    def L(self): return self.cfg.lut_bits

    @property
    def dot_width(self) -> int:
        top = self.S * ((1 << self.PW) - 1) * levels(self.A) << ((self.W - 1) if self.serial else 0)
        return unsigned_width(top)

    @property
    def s1_width(self) -> int:
        return s1_width(self.cfg)

    @property
    def asum_width(self) -> int:
        return asum_width(self.cfg)

    @property
    def acc_width(self) -> int:
        return acc_width(self.cfg)

    @property
    def prod_width(self) -> int:
        return max(self.acc_width + self.mult_bits + 2, self.bias_bits + 2)

    @property
    def rf_bits(self) -> int:
        return max(1, (max(self.g.row_folds, 2) - 1).bit_length())

    @property
    def cf_bits(self) -> int:
        return max(1, (max(self.g.col_folds, 2) - 1).bit_length())

    @property
    def p_bits(self) -> int:
        return 0 if self.g.plane_steps == 1 else (self.g.plane_steps - 1).bit_length()

    @property
    def addr_bits(self) -> int:
        return max(1, (self.g.depth - 1).bit_length())


def typical_consts(cfg: LayerConfig) -> tuple[int, int, int]:
    """(bias_bits, mult_bits, shift) of a layer drawn like QuantLayer.random, without drawing it:
    s = gamma * mean|tanh W| with W ~ U(-k, k), k = 1/sqrt(H); |b| < k."""
    k = 1.0 / math.sqrt(cfg.hidden)
    mean_abs = (math.log(math.cosh(k)) / k) if cfg.weight_tanh else k / 2  # E|tanh W| for W ~ U(-k, k)
    M, R = scale_shift(cfg, cfg.gamma * mean_abs)
    B = int(math.floor(k * 2.0 ** (cfg.z_frac + R) + 0.5))
    bias_bits = signed_width(-B, B) + 1
    mult_bits = max(unsigned_width(M), cfg.mult_bits)
    return bias_bits, mult_bits, R


def core_shape(cfg: LayerConfig, fold: Folding, weights: str = "memory", consts: dict | None = None) -> CoreShape:
    """consts: {"bias_bits", "mult_bits", "shift"} of the actual layer (a manifest's "scale" entry
    has them); without it, the values of a randomly initialised layer."""
    consts = {k: v for k, v in (consts or {}).items() if v is not None}
    if {"bias_bits", "shift"} <= set(consts) and ("mult_bits" in consts or "multiplier_bits" in consts):
        bb, mb, r = 0, 0, 0
    else:
        try:
            bb, mb, r = typical_consts(cfg)
        except ValueError:  # a scale out of the representable range: fall back to common values
            bb, mb, r = 24, cfg.mult_bits, cfg.mult_bits
    bb = int(consts.get("bias_bits", bb))
    mb = int(consts.get("mult_bits", consts.get("multiplier_bits", mb)))
    r = int(consts.get("shift", r))
    return CoreShape(cfg, fold, weights, bb, mb, r)


# ---- per-block structure ---------------------------------------------------------------------------

def adder_tree_bits(widths) -> int:
    """Sum of the result widths of rtl_gen.blocks.adder_tree over operands of these widths."""
    vals, total = list(widths), 0
    while len(vals) > 1:
        nxt = []
        for i in range(0, len(vals) - 1, 2):
            w = max(vals[i], vals[i + 1]) + 1
            total += w
            nxt.append(w)
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return total


def _features(sh: CoreShape, family: str, mems: dict) -> dict[str, dict[str, float]]:
    """Structural sizes of each block the LUT/carry coefficients multiply (see BLOCK_FEATURES)."""
    g = sh.g
    PE, S, A, PW, U = sh.PE, sh.S, sh.A, sh.PW, sh.U
    shift_stages = max(1, (sh.W - 1).bit_length()) if sh.serial else 0
    k = LUT_INPUTS[family]
    rom_w = gate_width(sh.cfg)
    cand_w = candidate_width(sh.cfg)
    n_rom_luts = (1 << sh.L) / (1 << k)  # LUTs of one output bit of a ROM in logic
    f = {
        "mac_lanes": {"and_bits": PE * PW * A * S, "tree_bits": PE * PW * A * sh.dot_width,
                      "shifter": PE * sh.dot_width * shift_stages,
                      "pop_bits": PE * PW * A * adder_tree_bits([1] * S), "lanes": PE},
        "activation_sum": {"bits": S * A, "adders": adder_tree_bits([A] * S) if A > 1 else 0},
        "scale_bias": {"sum_bits": PE * sh.prod_width, "addr_bits": PE * (sh.prod_width - sh.shift)},
        "gate_luts": {"rom_luts": (0 if mems["gate_rom"].kind != "logic" else
                                   n_rom_luts * (PE // 4) * (3 * rom_w + cand_w))},
        "cell_units": {"units": U},
        "cell_luts": {"rom_luts": 0 if mems["cell_rom"].kind != "logic" else n_rom_luts * U * rom_w},
        "h_requant": {"units": U},
        "weight_memory": {"emulation_bits": g.word_bits if (sh.weights == "memory" and mems["wmem"].emulation) else 0,
                          "lutram_mux_bits": (g.word_bits * (math.ceil(g.depth / 16) - 1)
                                              if sh.weights == "memory" and mems["wmem"].kind == "lutram" else 0)},
        "state_and_control": {
            "act_mux": S * A * (g.col_folds - 1) * MUX_COST[family],
            "c_mux": U * sh.cw * (g.row_folds - 1) * MUX_COST[family],
            "acc_bits": PE * (sh.s1_width + sh.acc_width),
            "state_bits": sh.cfg.hidden * (sh.cw + 2 * A) + sh.cfg.input * A
                          + (g.word_bits if sh.weights == "stream" else 0),
            "bias_bits": PE * sh.bias_bits * (1 if mems["bmem"].emulation else 0),
            "const": 1,
        },
    }
    return f


def _bits_of_range(n: int) -> int:
    """Width of an Amaranth Signal(range(n))."""
    return max(1, (n - 1).bit_length())


def pipelined_tree_ff(groups: list[list[tuple[int, int]]], second_weights: list[int] | None = None,
                      per_stage: int = TREE_LEVELS_PER_STAGE) -> tuple[int, int]:
    """(flip-flops, register stages) of rtl_gen.blocks.TreePipeline over ``groups`` of values given
    as (width, constant-zero LSBs): every group reduced by a balanced pairwise tree (Amaranth widths:
    max + 1), then, if ``second_weights`` is given, the group results shifted left by those weights
    and reduced again (BitPlaneDot); a register stage after every ``per_stage`` levels except the
    last. Constant-zero LSBs of a registered value are not flip-flops (yosys removes them)."""
    lv, ff, regs = 0, 0, 0

    def level(gs, last):
        nonlocal lv, ff, regs
        out = []
        for vals in gs:
            nxt = [(max(vals[i][0], vals[i + 1][0]) + 1, min(vals[i][1], vals[i + 1][1]))
                   for i in range(0, len(vals) - 1, 2)]
            if len(vals) % 2:
                nxt.append(vals[-1])
            out.append(nxt)
        lv += 1
        if per_stage and not last and lv % per_stage == 0:
            ff += sum(w - z for vals in out for w, z in vals)
            regs += 1
        return out

    more = tree_levels(len(groups)) if second_weights is not None else 0
    depth = tree_levels(len(groups[0])) if groups else 0
    for k in range(depth):
        groups = level(groups, k == depth - 1 and more == 0)
    if second_weights is not None:
        vals = [(w + sw, z + sw) for (w, z), sw in zip((g[0] for g in groups), second_weights)]
        gs = [vals]
        for k in range(more):
            gs = level(gs, k == more - 1)
    return ff, regs


def dot_tree_ff(sh: CoreShape) -> tuple[int, int]:
    """(flip-flops, register stages) inside one BitPlaneDot lane (TREE_LEVELS_PER_STAGE)."""
    weights = [p + q for p in range(sh.PW) for q in range(sh.A)]
    return pipelined_tree_ff([[(1, 0)] * sh.S for _ in weights], weights)


def asum_tree_ff(sh: CoreShape) -> tuple[int, int]:
    """(flip-flops, register stages) inside the ActivationSum tree."""
    return pipelined_tree_ff([[(sh.A, 0)] * sh.S])


def cell_stages(cfg: LayerConfig) -> tuple[int, int]:
    """(c_latency, addr_latency) of the cell-state unit the core instantiates."""
    if cfg.cell_format.kind == "float":
        return FLOAT_CELL_STAGES, FLOAT_CELL_ADDR_STAGES
    return FIXED_CELL_STAGES, FIXED_CELL_ADDR_STAGES


def scale_bias_regs(sh: CoreShape) -> dict[str, int]:
    """Flip-flops of one ScaleBias lane by register: operands acc / mult / bias0, product prod (the
    sign-extension bit of a signed x unsigned product is a copy, merged), bias, the sum ``total``
    (only the bits at and above the shift are read; its effective width is one more than its widest
    addend's). The address goes combinationally into the gate table's read-address register."""
    aw, mw, bw, r = sh.acc_width, sh.mult_bits, sh.bias_bits, sh.shift
    prod = aw + mw
    total = min(sh.prod_width, max(prod, max(bw, r + 1) + 1) + 1)
    return {"acc": aw, "mult": mw, "bias0": bw, "prod": prod, "bias": bw, "total": max(0, total - r)}


def fixed_cell_regs(cfg: LayerConfig) -> dict[str, int]:
    """Flip-flops of one FixedCellUnit by register (rtl_gen.blocks.FixedCellUnit): operands, the
    products f*c and i*g (LSBs that only meet zeros of the other, shifted addend below the rounding
    position are unread), the sum s from the rounding position up, c_new (c_addr is combinational,
    into the sigmoid(c) table's read-address register)."""
    G, F = cfg.gate_frac, cfg.cell_format.frac_bits
    P = max(G + F, 2 * G)
    cw, G1, cand = cfg.cell_format.width, gate_width(cfg), candidate_width(cfg)
    a, b, sh = P - G - F, P - 2 * G, P - F   # shifts of f*c and i*g, rounding shift
    fc_w, ig_w = G1 + cw, G1 + cand
    fc = fc_w - max(0, min(b - a, sh - 1 - a)) if b > a else fc_w
    ig = ig_w - max(0, min(a - b, sh - 1 - b)) if a > b else ig_w
    s = max(a + fc_w, b + ig_w) + 1 - sh
    return {"operands": cw + 2 * G1 + cand, "fc": fc, "ig": ig, "s": max(0, s), "c_new": cw}


def float_cell_regs(cfg: LayerConfig) -> dict[str, int]:
    """Flip-flops of one pipelined FloatCellUnit: the declared widths of its 12 register cuts
    (rtl_gen/float_cell.py ``_cut``: 11 to c_new, with the address's significand and shift beside
    it, and 1 more to the sigmoid(c) address). The calibration sweep has no float cell; a synth_ecp5
    run of W2A2 H=8 PE 4 SIMD 4 with fp16 cells and a one-stage address (an earlier version of the
    unit) had 1956 flip-flops in total against 1940 predicted for that version."""
    from .floatcell import cell_params  # noqa: PLC0415  (float formats only)

    p = cell_params(cfg)
    e, mb, G, W = p.fmt.exp_bits, p.fmt.man_bits, p.gate_frac, p.window
    wa = p.gate_width + mb + 1
    wb = 2 * G + 3 if p.candidate == "tanh" else 2 * G + 2
    xw = signed_width(-(1 << e) - 4 * W - 4 * G - 64, (1 << e) + 4 * W + 4 * G + 64)
    rb = _bits_of_range
    cuts = {
        "operands": 2 * p.gate_width + p.candidate_width + p.fmt.width,
        "products": wa + wb + 1 + e + 1,
        "p2": wa + rb(wa + 1) + xw + wb + rb(wb + 1) + xw + 2,
        "p3": 2 * W + 2 * xw + 3,
        "p4": 2 * W + 2 + xw + rb(W + 4),
        "p5": W + W + 1 + 3 + xw,
        "p6": W + 2 + 2 + xw,
        "p7": W + 2 + 2 + 2 * xw + rb(W + mb + 5),
        "p8": mb + 2 + 2 + 2 * xw,
        "p9": mb + 1 + xw + 1,
        "c_new": p.fmt.width,
        "p10": mb + 2 + rb(p.lut_bits + mb + 4),   # beside c_new: the address's signed significand, clamped shift
        "p11": mb + 2 + p.lut_bits + 2,           # shifted and rounded (then clamped + offset, combinational)
    }
    return cuts


def _dsp_absorbs(family: str, sh: CoreShape) -> dict[str, bool]:
    """Which multipliers get their pipeline registers packed into the DSP block. synth_xilinx
    (xilinx_dsp) packs up to two operand registers per port (AREG/BREG = 2), the product register
    (MREG) and the register after the post-adder (PREG) into a DSP48E1; synth_ecp5 and
    synth_ice40 -dsp leave every register in fabric flip-flops (measured with yosys 0.70). Only
    products that fit one DSP tile are counted as packed."""
    if family != "xilinx":
        return {"scale_bias": False, "cell": False, "h_requant": False}
    cfg = sh.cfg
    G1, cw = gate_width(cfg), sh.cw
    fixed = cfg.cell_format.kind == "fixed"
    return {
        "scale_bias": dsp_tiles(family, sh.acc_width, sh.mult_bits) == 1,
        "cell": fixed and dsp_tiles(family, G1, cw) == 1 and dsp_tiles(family, G1, candidate_width(cfg)) == 1,
        "h_requant": dsp_tiles(family, G1, G1) == 1,
    }


def _ecp5_packed(sh: CoreShape) -> dict[str, bool]:
    """Which registered multipliers rtl_gen.synth builds as MULT18X18D with internal operand and
    product registers (rtl_gen.multiplier, dsp="ecp5"): those flip-flops are not fabric ones. The
    scale-and-bias product is split over two DSPs when acc is wider than 18 bits (up to 36)."""
    cfg = sh.cfg
    G1, cw = gate_width(cfg), sh.cw
    tanh = cfg.candidate == "tanh"
    aw, mw = sh.acc_width, sh.mult_bits
    sb = mult18_fits(aw, True, mw, False) or (aw > 18 and mult18_fits(aw - 18, True, mw, False))
    fixed = cfg.cell_format.kind == "fixed"
    return {"scale_bias": sb,
            "fc": fixed and mult18_fits(G1, False, cw, True),
            "ig": mult18_fits(G1, False, candidate_width(cfg), tanh),
            "h_requant": mult18_fits(G1, False, G1, False)}


def _ff(sh: CoreShape, mems: dict, family: str = "ecp5") -> dict[str, int]:
    """Flip-flops per block as a hierarchical synthesis (one module per block) keeps them: every
    register of rtl_gen/core.py, rtl_gen/blocks.py and rtl_gen/float_cell.py at its width, without
    the registers yosys removes (constant, unread) and those packed into DSP blocks inside a block.
    ``flat_ff_saving`` has what flattening saves on top."""
    g, cfg = sh.g, sh.cfg
    PE, S, A, U, W = sh.PE, sh.S, sh.A, sh.U, sh.W
    H, X = cfg.hidden, cfg.input
    G1, cand, cw = gate_width(cfg), candidate_width(cfg), sh.cw
    c_lat, a_lat = cell_stages(cfg)
    dot_ff, dl = dot_tree_ff(sh)
    asum_ff, asum_lat = asum_tree_ff(sh)
    absorb = _dsp_absorbs(family, sh)

    def emul(width, depth):
        return 2 * width + max(1, (depth - 1).bit_length()) + 2

    def mem_ff(m, width, depth):
        if m.kind == "bram":  # the read register is the block RAM's own; emulation adds registers
            return emul(width, depth) if m.emulation else 0
        return width          # LUT RAM: asynchronous read, then the read register

    # ---- the core's own registers (state_and_control)
    controller = (sh.rf_bits + sh.cf_bits + sh.addr_bits * (sh.weights == "memory")
                  + (sh.p_bits if sh.serial else (1 if family == "ecp5" else 0))  # p: constant 0 unless serial
                  + 32 + 32 + 2 + 1 + sh.mult_bits                      # cycles, last_cycles, FSM, idle, mult
                  + (1 if sh.weights == "stream" else 0))               # alive (gates w.ready)
    state = (X + H) * A + H * A + g.padded_units * cw                   # act (x, h), h_next, c_all
    stream = g.word_bits if sh.weights == "stream" else 0               # the captured streamed word
    wload = (1 + sh.addr_bits + g.word_bits) if sh.weights == "memory" else 0  # registered weight write
    tail = 1 + SCALE_BIAS_STAGES + 2 + c_lat + a_lat + 2 + H_REQUANT_STAGES  # s3, sb, lut, cell, sc, hq
    control = (3 * (3 + dl)                                             # valid, first, last to the accumulators
               + sh.rf_bits * (3 + dl + tail)                           # row fold to h_next
               + tail                                                   # valid after the accumulators
               + (sh.p_bits * (2 + dl) if sh.serial else 0))           # plane to the shifters and asum mux
    asum_out = unsigned_width(S * levels(A))
    mac = (g.word_bits + 2 * S * A                                      # w_reg, act_slice (+ d1)
           + PE * sh.dot_width                                          # partials
           + (dl - asum_lat) * asum_out                                 # asum delayed to the dot latency
           + unsigned_width(levels(A) * S * levels(W))                  # Kw * sum(a)
           + sh.asum_width + W + PE * sh.s1_width)                      # acc_a, accumulators
    gates = U * (3 * G1 + cand) + U * cw                                # gate registers, c_old
    o_path = U * G1 * (c_lat + a_lat + 2) + U * G1                      # o delayed to the requantizer, sc
    state += controller + stream + wload + control + mac + gates + o_path
    state += mem_ff(mems["bmem"], PE * sh.bias_bits, max(g.row_folds, 2))

    sb = scale_bias_regs(sh)
    sb_lane = sum(sb.values())
    if absorb["scale_bias"]:
        sb_lane -= sb["acc"] + sb["mult"] + sb["prod"] + sb["total"]
    packed = _ecp5_packed(sh) if family == "ecp5" else {}
    if packed.get("scale_bias"):
        sb_lane -= sb["acc"] + sb["mult"] + sb["prod"]
    cell = float_cell_regs(cfg) if cfg.cell_format.kind == "float" else fixed_cell_regs(cfg)
    cell_unit = sum(cell.values())
    if absorb["cell"]:
        cell_unit -= cell["operands"] + cell["fc"] + cell["ig"] + cell["s"]
    if packed.get("fc"):
        cell_unit -= G1 + cw + cell["fc"]                      # f, c and f*c
    if packed.get("ig") and cfg.cell_format.kind == "fixed":
        cell_unit -= G1 + cand + cell["ig"]                    # i, g and i*g
    # o_in, sc_in, o*sc, h; with Ka = 1 (abits 1) h = bit 2G of o*sc + 2^(2G-1): two product bits are read
    hq_prod = 2 if A == 1 else min(2 * G1, 2 * cfg.gate_frac + A)
    hq_unit = 2 * G1 + hq_prod + A
    if absorb["h_requant"] or packed.get("h_requant"):
        hq_unit -= 2 * G1 + hq_prod
    shift_w = _bits_of_range(W) if sh.serial and W > 1 else 0            # the plane shift travels along the tree
    wm = mem_ff(mems["wmem"], g.word_bits, g.depth) if sh.weights == "memory" else 0
    rom_ff = lambda m, w: 0 if m.kind == "bram" else w  # noqa: E731  (logic ROMs keep their data register)
    return {
        "mac_lanes": PE * (dot_ff + shift_w * dl),
        "activation_sum": asum_ff,
        "scale_bias": PE * sb_lane,
        "gate_luts": rom_ff(mems["gate_rom"], U * (3 * G1 + cand)),
        "cell_units": U * cell_unit,
        "cell_luts": rom_ff(mems["cell_rom"], U * G1),
        "h_requant": U * hq_unit,
        "weight_memory": wm,
        "state_and_control": state,
    }


def _dsp(sh: CoreShape, family: str) -> dict[str, int]:
    """Multipliers of the core: acc * M per lane; f * c and i * g per cell unit; o * sc per
    requantizer. The constant factors Ka and Kw (2**k - 1) are a shift and a subtraction in
    rtl_gen, no DSP."""
    cfg = sh.cfg
    G1 = gate_width(cfg)
    sb = dsp_tiles(family, sh.acc_width, sh.mult_bits)
    cell = dsp_tiles(family, G1, sh.cw) + dsp_tiles(family, G1, candidate_width(cfg))
    hq = dsp_tiles(family, G1, G1)
    return {"scale_bias": sh.PE * sb, "cell_units": sh.U * cell, "h_requant": sh.U * hq,
            "state_and_control": 0}


def flat_ff_saving(sh: CoreShape, mems: dict, family: str = "ecp5") -> int:
    """Flip-flops a flattened synthesis saves against the sum of the blocks:
    * identical registers in different blocks are merged: the PE scale-and-bias lanes' copies of the
      multiplier M (one is left), and in bit-serial mode the PE lanes' copies of the plane shift
      delayed along the popcount trees (all of them: the core delays the plane alongside anyway);
    * (the weight memory's write port is fed from the core's own write register, so read-old-data
      emulation registers of the weight and the bias memory no longer see the same load data);
    * 7-series: registers of the core right before a DSP block's ports are packed into it too
      (its second operand register stage): the gate registers f, i, g and c_old (cell-unit products),
      the last o delay and sc (requantizer)."""
    saving = 0
    g, cfg = sh.g, sh.cfg
    absorb = _dsp_absorbs(family, sh)
    if family == "ecp5" and _ecp5_packed(sh)["scale_bias"]:
        pass  # the lanes' copies of M are the DSP blocks' own operand registers
    elif not absorb["scale_bias"]:
        saving += (sh.PE - 1) * sh.mult_bits
    if sh.serial and sh.W > 1:
        saving += sh.PE * _bits_of_range(sh.W) * dot_tree_ff(sh)[1]
    G1 = gate_width(cfg)
    if absorb["cell"]:
        saving += sh.U * (2 * G1 + candidate_width(cfg) + sh.cw)  # f, i, g, c_old
    if absorb["h_requant"]:
        saving += sh.U * 2 * G1
    return saving


#: what each memory of the core holds
MEMORY_TEXT = {"wmem": "weights", "bmem": "biases", "gate_rom": "gate tables", "cell_rom": "sigmoid(c) tables"}


def memory_shapes(sh: CoreShape) -> dict[str, tuple[int, int, int, bool]]:
    """{memory: (width in bits, depth in words, copies, has a write port)} of the core's memories
    (the weight memory has 0 copies with streamed weights; a gate table per lane, a
    sigmoid(c) table per cell unit)."""
    g, cfg = sh.g, sh.cfg
    return {
        "wmem": (g.word_bits, g.depth, 1 if sh.weights == "memory" else 0, True),
        "bmem": (sh.PE * sh.bias_bits, max(g.row_folds, 2), 1, True),
        "gate_rom": (gate_width(cfg), 1 << sh.L, sh.PE, False),
        "cell_rom": (gate_width(cfg), 1 << sh.L, sh.U, False),
    }


def memories(sh: CoreShape, family: str) -> dict[str, MemMap]:
    """How yosys maps one copy of each memory of the core (hwrnn.fpga.map_memory)."""
    return {k: map_memory(family, w, d, wr) for k, (w, d, _n, wr) in memory_shapes(sh).items()}


def memory_table(cfg: LayerConfig, fold: Folding, family: str, weights: str = "memory",
                 consts: dict | None = None) -> list[dict]:
    """One row per memory of the core: name, what it holds, width, depth, copies, bits (all copies),
    kind ("bram" / "lutram" / "logic") and block RAM primitives (all copies; Xilinx: 36 kbit tiles)."""
    sh = core_shape(cfg, fold, weights, consts)
    mems = memories(sh, family)
    rows = []
    for k, (w, d, n, _wr) in memory_shapes(sh).items():
        if n:
            rows.append({"name": k, "holds": MEMORY_TEXT[k], "width": w, "depth": d, "count": n, "bits": w * d * n,
                         "kind": mems[k].kind, "blocks": mems[k].bram * n})
    return rows


# ---- coefficients (fitted by benchmarks/calibrate_resources.py --fit) ---------------------------

BLOCK_FEATURES = {
    "mac_lanes": ("and_bits", "tree_bits", "shifter", "pop_bits", "lanes"),
    "activation_sum": ("bits", "adders"),
    "scale_bias": ("sum_bits", "addr_bits"),
    "gate_luts": ("rom_luts",),
    "cell_units": ("units",),
    "cell_luts": ("rom_luts",),
    "h_requant": ("units",),
    "weight_memory": ("emulation_bits", "lutram_mux_bits"),
    "state_and_control": ("act_mux", "c_mux", "acc_bits", "state_bits", "bias_bits", "const"),
}

#: fitted LUT / carry coefficients {family: {block: {resource: {feature: value}}}} and flattening factors
#: {family: {resource: factor}}, from COEFFICIENTS_FILE (written by benchmarks/calibrate_resources.py --fit)
COEFFICIENTS_FILE = os.path.join(os.path.dirname(__file__), "data", "resource_coefficients.json")


def load_coefficients(path: str = COEFFICIENTS_FILE) -> tuple[dict, dict]:
    """(COEFFICIENTS, FLATTEN) from a coefficients file; ValueError (one line) if it is unreadable."""
    try:
        with open(path) as fh:
            doc = json.load(fh)
        return doc["coefficients"], doc["flatten"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"resource coefficients {path} unreadable ({type(e).__name__}: {e})") from None


COEFFICIENTS, FLATTEN = load_coefficients()

_DEFAULT_COEF = {  # unit costs before calibration: LUT4 fabric; used for families without coefficients
    "lut": {"and_bits": 2.0, "tree_bits": 0.5, "pop_bits": 0.0, "lanes": 0.0, "shifter": 1.0, "bits": 1.0, "adders": 0.0, "sum_bits": 0.5, "addr_bits": 1.0,
            "rom_luts": 1.0, "units": 60.0, "emulation_bits": 1.0, "lutram_mux_bits": 0.5, "act_mux": 0.6,
            "c_mux": 0.6, "acc_bits": 1.0, "state_bits": 0.2, "bias_bits": 1.0, "const": 100.0},
    "carry": {"and_bits": 0.05, "tree_bits": 0.1, "pop_bits": 0.0, "lanes": 0.0, "shifter": 0.0, "bits": 0.0, "adders": 0.0, "sum_bits": 0.5, "addr_bits": 0.2,
              "rom_luts": 0.0, "units": 30.0, "emulation_bits": 0.0, "lutram_mux_bits": 0.0, "act_mux": 0.0,
              "c_mux": 0.0, "acc_bits": 0.5, "state_bits": 0.0, "bias_bits": 0.0, "const": 40.0},
}


def _coef(family: str, block: str, resource: str) -> dict[str, float]:
    c = COEFFICIENTS.get(family, {}).get(block, {}).get(resource)
    if c is not None:
        return c
    d = _DEFAULT_COEF[resource]
    return {f: d[f] for f in BLOCK_FEATURES[block]}


# ---- the estimate ----------------------------------------------------------------------------------

def estimate(cfg: LayerConfig, fold: Folding, family: str, weights: str = "memory",
             consts: dict | None = None) -> dict:
    """Predicted yosys counts of the core: {"family", "blocks": {block: counts}, "total": counts,
    "memories": {...}}. Totals are what a flattened synthesis reports (block sums times the
    family's flattening factor for LUT and carry)."""
    check_family(family)
    fold.check_against(cfg)
    sh = core_shape(cfg, fold, weights, consts)
    mems = memories(sh, family)
    cfg = sh.cfg
    feats = _features(sh, family, mems)
    ffs = _ff(sh, mems, family)
    dsps = _dsp(sh, family)
    g = sh.g
    blocks = {}
    for b in BLOCKS:
        counts = {}
        for res in ("lut", "carry"):
            c = _coef(family, b, res)
            counts[res] = max(0.0, sum(c.get(f, 0.0) * v for f, v in feats[b].items()))
        counts["ff"] = ffs[b]
        counts["dsp"] = dsps.get(b, 0)
        counts["bram"] = 0
        counts["lutram"] = 0
        blocks[b] = counts
    cf = cfg.cell_format
    if cf.kind == "float":
        lut, carry = float_cell_unit(cf.exp_bits, cf.man_bits)
        for res, v in (("lut", lut), ("carry", carry)):
            fixed = _coef(family, "cell_units", res).get("units", 0.0)
            ecp5 = _coef("ecp5", "cell_units", res).get("units", 0.0) or 1.0
            blocks["cell_units"][res] = sh.U * v * fixed / ecp5
    n_gate_roms, n_cell_roms = sh.PE, sh.U
    for b, mem, n in (("gate_luts", mems["gate_rom"], n_gate_roms), ("cell_luts", mems["cell_rom"], n_cell_roms)):
        blocks[b]["bram"] = mem.bram * n
    if weights == "memory":
        blocks["weight_memory"]["bram"] = mems["wmem"].bram
        blocks["weight_memory"]["lutram"] = mems["wmem"].lutram
    blocks["state_and_control"]["bram"] = mems["bmem"].bram
    blocks["state_and_control"]["lutram"] = mems["bmem"].lutram
    flat = FLATTEN.get(family, {})
    total = {}
    for res in RESOURCES:
        s = sum(blocks[b][res] for b in BLOCKS)
        total[res] = s * flat.get(res, 1.0) if res in ("lut", "carry") else s
    total["ff"] -= flat_ff_saving(sh, mems, family)
    for b in BLOCKS:
        blocks[b] = _rounded(blocks[b])
    return {
        "family": family, "weights": weights,
        "blocks": blocks, "total": _rounded(total),
        "memories": {k: {"kind": m.kind, "bram": m.bram, "lutram": m.lutram} for k, m in mems.items()},
        "widths": {"dot": sh.dot_width, "accumulator": sh.s1_width, "acc": sh.acc_width,
                   "product": sh.prod_width, "bias": sh.bias_bits, "shift": sh.shift,
                   "weight_word": g.word_bits, "weight_depth": g.depth},
        "calibrated": family in COEFFICIENTS,
    }


def float_cell_unit(exp_bits: int, man_bits: int) -> tuple[float, float]:
    """(LUT4, CCU2C) of one floating-point cell unit on ECP5: measured for fp16, bf16, e4m3, e5m2;
    otherwise the nearest measured format scaled by (exp + man + 1) bits."""
    if (exp_bits, man_bits) in FLOAT_CELL_ECP5:
        return FLOAT_CELL_ECP5[(exp_bits, man_bits)]
    (e, m), (lut, carry) = min(FLOAT_CELL_ECP5.items(),
                               key=lambda kv: abs(kv[0][0] - exp_bits) + abs(kv[0][1] - man_bits))
    k = (exp_bits + man_bits + 1) / (e + m + 1)
    return lut * k, carry * k


def _rounded(c: dict) -> dict:
    out = {}
    for k, v in c.items():
        if k == "bram" and float(v) != int(v):
            out[k] = round(float(v), 1)
        else:
            out[k] = int(round(v))
    return out


def estimate_all(cfg: LayerConfig, fold: Folding, weights: str = "memory", consts: dict | None = None) -> dict:
    return {f: estimate(cfg, fold, f, weights, consts) for f in FAMILIES}


# ---- derived figures ------------------------------------------------------------------------------

def derived(cfg: LayerConfig, fold: Folding, fmax_mhz: float | None = None, steps: int = 35,
            weights: str = "memory", bias_bits: int | None = None) -> dict:
    """Throughput, model size and run-time memory figures at fmax_mhz (ASSUMED_MHZ if None)."""
    g = Geometry(cfg, fold)
    mhz = float(fmax_mhz) if fmax_mhz else ASSUMED_MHZ
    lat = latency(cfg, fold)
    period = step_period(cfg, fold)
    seq = sequence_cycles(cfg, fold, steps)
    steps_per_s = mhz * 1e6 / period
    macs = cfg.rows * cfg.columns
    if bias_bits is None:
        bias_bits = typical_consts(cfg)[0]
    w_bits = memory_bits(cfg)
    b_bits = cfg.rows * bias_bits
    lut_bits = (1 << cfg.lut_bits) * (gate_width(cfg) + candidate_width(cfg))  # the two distinct tables
    params = cfg.rows * cfg.columns + cfg.rows
    act_bits = cfg.input * cfg.abits + cfg.hidden * cfg.abits + cfg.hidden * cfg.cell_format.width
    act_fp32 = 32 * (cfg.input + 2 * cfg.hidden)
    return {
        "clock_mhz": round(mhz, 2), "clock_measured": bool(fmax_mhz),
        "cycles_per_step": lat, "step_period_cycles": period, "steps": steps, "cycles_per_sequence": seq,
        "us_per_step": lat / mhz, "us_per_sequence": seq / mhz,
        "steps_per_s": steps_per_s,
        "macs_per_step": macs,
        "mac_per_s": macs * steps_per_s,
        "binary_ops_per_step": macs * cfg.wbits * cfg.abits,
        "binary_ops_per_s": macs * cfg.wbits * cfg.abits * steps_per_s,
        "mac_utilisation": macs / (g.mac_cycles * fold.pe * fold.simd),
        "weight_stream_bits_per_s": (g.word_bits * mhz * 1e6 * g.mac_cycles / period) if weights == "stream" else 0.0,
        "model_bits": w_bits + b_bits + lut_bits,
        "weight_bits": w_bits, "bias_bits": b_bits, "lut_bits": lut_bits,
        "fp32_model_bits": 32 * params,
        "weight_ratio": w_bits / (32 * cfg.rows * cfg.columns),
        "model_ratio": (w_bits + b_bits + lut_bits) / (32 * params),
        "claimed_weight_ratio": cfg.wbits / 32,
        "activation_bits": act_bits, "fp32_activation_bits": act_fp32,
        "activation_ratio": act_bits / act_fp32,
        "claimed_activation_ratio": cfg.abits / 32,
        "x_h_ratio": (cfg.input + cfg.hidden) * cfg.abits / (32 * (cfg.input + cfg.hidden)),
    }

