"""The vocabulary and price list of the analytic resource model; the model itself is rtl_gen.cost.

rtl_gen.cost predicts, in well under a millisecond, what yosys reports for the core rtl_gen builds:
every block of rtl_gen reports what it builds (a ``Built``: its registers, memories, registered
multipliers, pipeline stages and the structural sizes its LUTs grow with), the core's report
collects them, and the estimate prices the sum per block for ECP5 (synth_ecp5), iCE40
(synth_ice40 -dsp) and Xilinx 7-series (synth_xilinx). This module holds what the model needs that
is not hardware: the report types (numbers only, no Amaranth), the fitted LUT/carry coefficients
(hwrnn/data/resource_coefficients.json, written by ``benchmarks/calibrate_resources.py --fit``),
the block names, the constants of a typical layer, and the derived figures of a report
(throughput, model size; they need no resource counts). Whether counts fit a device is
hwrnn.fpga's fit check (``device_fit``, re-exported here).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from .config import Folding, LayerConfig
from .datapath import Geometry, latency, memory_bits, sequence_cycles, step_period
from .devices import FAMILIES  # noqa: F401  (re-exported)
from .formats import candidate_width, gate_width, scale_shift, signed_width, unsigned_width
from .fpga import BRAM_BITS, BRAM_UNIT, DSP_MIN_Y, DSP_TILE, device_fit, logic_cells, map_memory  # noqa: F401  (re-exported)

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


# ---- what a block reports ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Reg:
    """A group of registers a block builds: ``bits`` flip-flops as declared (Amaranth signal widths
    times copies) and ``kept``, the flip-flops the model counts after yosys removes constant,
    unread and duplicate bits (None: all of them; a dict: per FPGA family, key "*" for the rest)."""

    name: str
    bits: int
    kept: int | dict | None = None

    def ff(self, family: str) -> int:
        k = self.kept
        if isinstance(k, dict):
            k = k.get(family, k["*"])
        return self.bits if k is None else k


@dataclass(frozen=True)
class Mult:
    """A registered multiplier (rtl_gen.multiplier.RegisteredMultiplier): an a_bits x b_bits product
    (signedness per operand); ``regs``: the kept flip-flops of its operand and product registers,
    which a DSP block can take in; ``split``: an operand too wide for one ECP5 MULT18X18D is cut at
    18 bits into two products (rtl_gen.blocks.ScaleBias)."""

    name: str
    a_bits: int
    a_signed: bool
    b_bits: int
    b_signed: bool
    regs: int = 0
    split: bool = False


@dataclass(frozen=True)
class Mem:
    """A memory: ``width`` x ``depth`` words with one synchronous read port, and a write port or
    not (a ROM); ``copies`` 0 lists a memory the block does not hold (streamed weights);
    ``rw_check``: a read of the word being written must return the old word (yosys emulates that
    around ECP5 / iCE40 block RAM); False for memories marked rtl_gen.memory.NO_RW_CHECK."""

    name: str
    width: int
    depth: int
    write: bool
    copies: int = 1
    rw_check: bool = True


@dataclass(frozen=True)
class Built:
    """What one block builds, reported without elaborating it.

    ``regs``, ``mems``, ``mults``: its own registers, memories and registered multipliers;
    ``stages``: its pipeline registers from input to output (its latency);
    ``logic``: structural sizes its LUTs and carry cells grow with (names of BLOCK_FEATURES);
    ``post_adder``: kept bits of the register after the product's adder (a DSP48E1 takes it in
    when every multiplier of the block fits one DSP);
    ``dsp_packing``: whether the registers around its multipliers may move into DSP blocks;
    ``measured``: (LUT4, CCU2C, FF) of one block measured with synth_ecp5, used instead of ``logic``
    (and, on ECP5, instead of its register count: ``ff``);
    ``subs``: (instance name, copies, Built) of its submodules (names as in the Amaranth hierarchy,
    without the index)."""

    regs: tuple = ()
    mems: tuple = ()
    mults: tuple = ()
    stages: int = 0
    logic: dict = field(default_factory=dict)
    post_adder: int = 0
    dsp_packing: bool = True
    measured: tuple | None = None
    subs: tuple = ()

    @property
    def bits(self) -> int:
        """Declared register bits of this block and its submodules (what Amaranth builds)."""
        return sum(r.bits for r in self.regs) + sum(n * b.bits for _name, n, b in self.subs)

    def ff(self, family: str) -> int:
        """Kept register bits of this block alone (no submodules, no memories): on ECP5 a measured
        block's measured count, elsewhere its registers' kept bits."""
        if self.measured is not None and family == "ecp5":
            return self.measured[2]
        return sum(r.ff(family) for r in self.regs)


# ---- blocks priced by measurement ------------------------------------------------------------------

#: one pipelined floating-point cell unit as the core builds it for ECP5 (rtl_gen.float_cell,
#: MULT18X18D with their own operand and product registers), yosys synth_ecp5:
#: {(exp_bits, man_bits): (LUT4, CCU2C, TRELLIS_FF)}, measured by benchmarks/cell_ablation.py
#: (results/cell_ablation.json "unit_ecp5"; tests hold the two equal). Inside a core yosys keeps the
#: same counts per unit (the calibration's held-out fp16 points, 1 to 4 units per core).
FLOAT_CELL_ECP5 = {(5, 10): (867, 208, 409), (8, 7): (788, 151, 397), (4, 3): (650, 117, 339), (5, 2): (651, 122, 339)}


def float_cell_cost(exp_bits: int, man_bits: int) -> tuple:
    """(LUT4, CCU2C, FF) of one float cell unit on ECP5: measured for fp16, bf16, e4m3 and e5m2;
    otherwise the nearest measured format scaled by its word width (1 + exp + man bits)."""
    if (exp_bits, man_bits) in FLOAT_CELL_ECP5:
        return FLOAT_CELL_ECP5[(exp_bits, man_bits)]
    (e, m), cost = min(FLOAT_CELL_ECP5.items(), key=lambda kv: abs(kv[0][0] - exp_bits) + abs(kv[0][1] - man_bits))
    k = (exp_bits + man_bits + 1) / (e + m + 1)
    return tuple(v * k for v in cost)


# ---- the constants of a typical layer -----------------------------------------------------------

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


def layer_consts(cfg: LayerConfig, consts: dict | None = None) -> tuple[int, int, int]:
    """(bias_bits, mult_bits, shift) of the core: from consts {"bias_bits", "mult_bits" (or
    "multiplier_bits"), "shift"} of the actual layer (a manifest's "scale" entry has them; None
    values ignored), the rest from ``typical_consts`` (common values when its scale is out of range)."""
    consts = {k: v for k, v in (consts or {}).items() if v is not None}
    if {"bias_bits", "shift"} <= set(consts) and ("mult_bits" in consts or "multiplier_bits" in consts):
        bb, mb, r = 0, 0, 0
    else:
        try:
            bb, mb, r = typical_consts(cfg)
        except ValueError:  # a scale out of the representable range: fall back to common values
            bb, mb, r = 24, cfg.mult_bits, cfg.mult_bits
    return (int(consts.get("bias_bits", bb)), int(consts.get("mult_bits", consts.get("multiplier_bits", mb))),
            int(consts.get("shift", r)))


# ---- coefficients (fitted by benchmarks/calibrate_resources.py --fit) ---------------------------

#: structural sizes (Built.logic, or from the memory mapping) each block's LUT/carry coefficients multiply
BLOCK_FEATURES = {
    "mac_lanes": ("and_bits", "tree_bits", "shifter", "pop_bits", "lanes", "term_bits", "shift_luts"),
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
    "lut": {"and_bits": 2.0, "tree_bits": 0.5, "pop_bits": 0.0, "lanes": 0.0, "shifter": 1.0, "term_bits": 2.0, "shift_luts": 1.0, "bits": 1.0, "adders": 0.0, "sum_bits": 0.5, "addr_bits": 1.0,
            "rom_luts": 1.0, "units": 60.0, "emulation_bits": 1.0, "lutram_mux_bits": 0.5, "act_mux": 0.6,
            "c_mux": 0.6, "acc_bits": 1.0, "state_bits": 0.2, "bias_bits": 1.0, "const": 100.0},
    "carry": {"and_bits": 0.05, "tree_bits": 0.1, "pop_bits": 0.0, "lanes": 0.0, "shifter": 0.0, "term_bits": 0.5, "shift_luts": 0.0, "bits": 0.0, "adders": 0.0, "sum_bits": 0.5, "addr_bits": 0.2,
              "rom_luts": 0.0, "units": 30.0, "emulation_bits": 0.0, "lutram_mux_bits": 0.0, "act_mux": 0.0,
              "c_mux": 0.0, "acc_bits": 0.5, "state_bits": 0.0, "bias_bits": 0.0, "const": 40.0},
}


def coefficients(family: str, block: str, resource: str) -> dict[str, float]:
    """{feature: coefficient} of a block's LUT or carry count (uncalibrated unit costs for a family
    without fitted coefficients)."""
    c = COEFFICIENTS.get(family, {}).get(block, {}).get(resource)
    if c is not None:
        return c
    d = _DEFAULT_COEF[resource]
    return {f: d[f] for f in BLOCK_FEATURES[block]}


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
