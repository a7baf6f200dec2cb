"""Geometry of the folded datapath, memory image contents, reference functions of the MAC blocks
and the exact latency formula. Shared by rtl_gen (which builds it) and sim/tests (which check it).

Schedule of one time step (Folding: PE rows, SIMD columns per cycle, planes parallel/serial), phase
after phase of the layer's gate set (hwrnn.gates: one phase for the LSTM and the RNN, two for the GRU):

* a phase's rows are taken unit-major: its row fold rf holds units u = rf*U .. rf*U + U - 1 (U = PE/n,
  n the phase's gate count, 4 for the LSTM) and lane l = n*k + j computes the row of the phase's gate
  j of unit rf*U + k (gate order of hwrnn.gates, LSTM i, f, g, o);
* row folds are numbered across phases (``row_folds`` in all, the phase's first at
  ``phase_fold_offset``): the bias memory holds one word per row fold;
* columns are [x_t ; v] zero-padded to Cf*SIMD (v = h_{t-1} or the vector the phase reads);
  column fold cf takes columns cf*SIMD.. ;
* one weight-memory word per cycle; address = (rf*Cf + cf)*P + p (rf numbered across phases),
  P = wbits (serial) or 1;
* word bit (l*PW + p)*SIMD + s holds bit p of the code of lane l, column s (PW = wbits in
  parallel mode, 1 in serial mode where the plane is part of the address);
* padded rows and columns hold code 0; padded columns meet activation 0, so they add nothing.

Latency (cycles from the cycle x_t is accepted to the cycle h_t is valid) is
``sum over phases (Rf_p*Cf*P + pipeline_depth(cfg, fold, p)) - (phases - 1)``: a later phase issues
its first word the cycle after the last word of the earlier phase's result is written (stages in
``pipeline_stages``); the core accepts the next x_t one cycle after h_t is taken.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checkpoint import QuantLayer
from .config import Folding, LayerConfig
from .formats import signed_width, unsigned_width
from .quant import levels

#: adder-tree levels between two pipeline registers in the popcount MAC lanes and the activation
#: sum (two levels of small carry-chain adders and their routing fit one 150 MHz ECP5 cycle; three
#: measured 7.2 ns, 140 MHz, on W4A2 H=32 SIMD=32)
TREE_LEVELS_PER_STAGE = 2
# the registers after the gate tables are the gate set's (hwrnn.gates: LSTM cell-state unit, whose
# stages are its format's in hwrnn.cell_state, sigmoid(c) table, h requantizer)
# every multiplier (a DSP block) has its operands registered right before it and its product
# registered right after it, so that the placer can keep both routes short; the odd-weight
# correction 2*acc - (2^k - 1)*sum(a) is formed in front of the scale multiplier's operand register,
# and the LUT address (shift, clamp, offset) in front of the table's read-address register
SCALE_BIAS_STAGES = 3   # operands | product | + bias + rounding constant (-> shift, clamp, LUT address)


def clog2(n: int) -> int:
    return max(0, (n - 1).bit_length())


def tree_levels(n_leaves: int) -> int:
    """Adder levels of a balanced pairwise tree over n_leaves values."""
    return clog2(n_leaves)


def tree_registers(levels: int, per_stage: int = TREE_LEVELS_PER_STAGE) -> int:
    """Pipeline registers inside a tree of `levels` adder levels: one after every `per_stage`
    levels, none after the last level (the consumer registers the result)."""
    return (levels - 1) // per_stage if levels > 0 else 0


def dot_levels(cfg: LayerConfig, fold: Folding) -> int:
    """Adder levels of one MAC lane's dot (the weight coding's ``dot_levels``; balanced: popcount of
    SIMD bits, then the sum of PW*abits plane terms)."""
    pw = 1 if fold.planes == "serial" else cfg.wbits
    return cfg.weight_coding.dot_levels(fold.simd, cfg.abits, pw)


def pipeline_stages(cfg: LayerConfig, fold: Folding, phase: int = 0) -> dict:
    """Registers from the cycle a weight word of the phase is issued to the cycle its result (h_t
    for the last phase) is written, stage by stage (in order). rtl_gen.core builds exactly these;
    the cocotb regression measures their sum."""
    return {
        "weight_read": 1,            # memory read (or the streamed word captured)
        "weight_register": 1,        # the word registered next to its activation slice
        "popcount_tree": tree_registers(dot_levels(cfg, fold)),
        "partial": 1,                # popcount MAC lane result
        "accumulate": 1,             # then 2*acc - (2^k - 1)*sum(a) into the scale multiplier's operands
        "scale_bias": SCALE_BIAS_STAGES,
        "gate_lut_read": 1,
        "gate_register": 1,
        **cfg.gate_set.stages(cfg, phase),  # the phase's unit: gate values -> result (LSTM: cell, sigmoid(c), h)
        "h_write": 1,                # the result (h_t) written; output valid
    }


def pipeline_depth(cfg: LayerConfig, fold: Folding, phase: int = 0) -> int:
    """Cycles from the phase's last weight word issued to its result written (the latency formula's
    tail of the phase)."""
    return sum(pipeline_stages(cfg, fold, phase).values())


@dataclass(frozen=True)
class Geometry:
    cfg: LayerConfig
    fold: Folding

    @property
    def gates(self) -> int:
        """Rows per unit: the gate set's gate count (all phases)."""
        return self.cfg.gate_set.n_gates

    @property
    def phases(self) -> int:
        return len(self.cfg.gate_set.phases)

    def phase_units(self, phase: int) -> int:
        """Units per row fold of a phase: PE // the phase's gate count."""
        return self.fold.pe // len(self.cfg.gate_set.phases[phase].gates)

    def phase_row_folds(self, phase: int) -> int:
        return math.ceil(self.cfg.hidden / self.phase_units(phase))

    def phase_fold_offset(self, phase: int) -> int:
        """Number (across phases) of the phase's first row fold."""
        return sum(self.phase_row_folds(p) for p in range(phase))

    def phase_depth(self, phase: int) -> int:
        """Weight words (MAC cycles) of a phase."""
        return self.phase_row_folds(phase) * self.col_folds * self.plane_steps

    def phase_of(self, rf: int) -> tuple[int, int]:
        """(phase, row fold within the phase) of row fold rf (numbered across phases)."""
        for p in range(self.phases):
            n = self.phase_row_folds(p)
            if rf < n:
                return p, rf
            rf -= n
        raise IndexError("row fold beyond the last phase")

    @property
    def units_per_fold(self) -> int:
        """Units per row fold of the first phase (``phase_units`` for each)."""
        return self.phase_units(0)

    @property
    def row_folds(self) -> int:
        """Row folds of all phases (bias memory words)."""
        return sum(self.phase_row_folds(p) for p in range(self.phases))

    @property
    def col_folds(self) -> int:
        return math.ceil(self.cfg.columns / self.fold.simd)

    @property
    def plane_steps(self) -> int:
        return self.cfg.wbits if self.fold.planes == "serial" else 1

    @property
    def planes_per_word(self) -> int:
        return 1 if self.fold.planes == "serial" else self.cfg.wbits

    @property
    def word_bits(self) -> int:
        return self.fold.pe * self.planes_per_word * self.fold.simd

    @property
    def depth(self) -> int:
        return self.row_folds * self.col_folds * self.plane_steps

    @property
    def weight_bits(self) -> int:
        """Bits of the weight memory including padding."""
        return self.word_bits * self.depth

    @property
    def padded_columns(self) -> int:
        return self.col_folds * self.fold.simd

    @property
    def padded_units(self) -> int:
        """Units of the per-unit vectors (h, stores): the most any phase's row folds hold."""
        return max(self.phase_row_folds(p) * self.phase_units(p) for p in range(self.phases))

    @property
    def mac_cycles(self) -> int:
        return self.depth

    def lane_row(self, rf: int, lane: int) -> int | None:
        """Matrix row of lane `lane` in row fold rf (numbered across phases), or None for a padding
        lane."""
        phase, rf = self.phase_of(rf)
        gs = self.cfg.gate_set
        names = gs.phases[phase].gates
        n = len(names)
        unit = rf * (self.fold.pe // n) + lane // n
        if unit >= self.cfg.hidden:
            return None
        return gs.gates.index(names[lane % n]) * self.cfg.hidden + unit


def weight_image(layer: QuantLayer, fold: Folding) -> list[int]:
    """The weight memory contents: one int per word, in address order."""
    g = Geometry(layer.cfg, fold)
    cfg = layer.cfg
    PE, S = fold.pe, fold.simd
    codes = np.zeros((g.row_folds * PE, g.padded_columns), dtype=np.int64)
    for rf in range(g.row_folds):
        for lane in range(PE):
            r = g.lane_row(rf, lane)
            if r is not None:
                codes[rf * PE + lane, :cfg.columns] = layer.codes[r]
    blk = codes.reshape(g.row_folds, PE, g.col_folds, S).transpose(0, 2, 1, 3)  # [Rf, Cf, PE, S]
    planes = np.arange(cfg.wbits, dtype=np.int64)
    bits = ((blk[..., None, :] >> planes[:, None]) & 1).astype(np.uint8)  # [Rf, Cf, PE, wbits, S]
    if fold.planes == "serial":
        bits = bits.transpose(0, 1, 3, 2, 4)  # [Rf, Cf, wbits(address), PE, S]
    flat = bits.reshape(g.depth, g.word_bits)
    packed = np.packbits(flat, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def bias_image(layer: QuantLayer, fold: Folding) -> list[list[int]]:
    """Per row fold, the fixed-point bias B of each lane (0 for padding lanes)."""
    g = Geometry(layer.cfg, fold)
    out = []
    for rf in range(g.row_folds):
        row = []
        for lane in range(fold.pe):
            r = g.lane_row(rf, lane)
            row.append(0 if r is None else int(layer.bias_int[r]))
        out.append(row)
    return out


def bias_width(layer: QuantLayer) -> int:
    B = layer.bias_int
    return signed_width(int(B.min(initial=0)), int(B.max(initial=0)))


def latency(cfg: LayerConfig, fold: Folding) -> int:
    """Exact cycles from accepting x_t to h_t valid (module docstring)."""
    g = Geometry(cfg, fold)
    return sum(g.phase_depth(p) + pipeline_depth(cfg, fold, p) for p in range(g.phases)) - (g.phases - 1)


def step_period(cfg: LayerConfig, fold: Folding) -> int:
    """Cycles between consecutive x_t acceptances with no stalls (h_t taken at once)."""
    return latency(cfg, fold) + 1


def sequence_cycles(cfg: LayerConfig, fold: Folding, steps: int) -> int:
    """Cycles from accepting x_1 to h_T valid with no stalls."""
    return (steps - 1) * step_period(cfg, fold) + latency(cfg, fold)


def mac_bound(cfg: LayerConfig, fold: Folding) -> int:
    """ceil(4H/PE) * ceil((H+X)/SIMD), the SPEC's MAC bound (plane-parallel), summed over the phases
    (ceil(n_p H/PE) each)."""
    return sum(math.ceil(len(ph.gates) * cfg.hidden / fold.pe) for ph in cfg.gate_set.phases) * math.ceil(
        cfg.columns / fold.simd)


# ---- reference functions of the MAC blocks ----------------------------------------------------

def bitplane_dot(n, a, wbits: int, abits: int) -> int:
    """sum_s n_s * a_s computed the hardware way: sum over planes p, q of
    popcount(bit_p(n) & bit_q(a)) << (p + q)."""
    n = np.asarray(n, np.int64)
    a = np.asarray(a, np.int64)
    total = 0
    for p in range(wbits):
        for q in range(abits):
            total += int(np.sum(((n >> p) & 1) & ((a >> q) & 1))) << (p + q)
    return total


def memory_bits(cfg: LayerConfig) -> int:
    """Bits of weight storage without padding: rows (4H for the LSTM) * (X+H) * wbits."""
    return cfg.rows * cfg.columns * cfg.wbits


def s1_width(cfg: LayerConfig) -> int:
    return unsigned_width(cfg.columns * levels(cfg.wbits) * levels(cfg.abits))


def asum_width(cfg: LayerConfig) -> int:
    return unsigned_width(cfg.columns * levels(cfg.abits))
