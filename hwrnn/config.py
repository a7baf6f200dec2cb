"""Layer and folding configuration: frozen, validated, JSON-serializable.

A ``LayerConfig`` fixes everything that decides the numbers a quantized LSTM layer computes;
software (sw_ref) and hardware (rtl_gen) are both derived from it. A ``Folding`` fixes how the
hardware schedules the work (it never changes the numbers).

Options where He et al.'s paper and their public code (bit-rnn) differ, with our defaults:

=================  ===========================  =============================================
option             default                      alternative
=================  ===========================  =============================================
weight_tanh        True (code: tanh(W) first)   False (paper: quantize W directly)
candidate          "sigmoid" (code)             "tanh" (paper's eq. for C~)
init_state         "zero" (hardware reset)      "half": h0 = Q_a(0.5), c0 = 0.5 (code)
scale              one per matrix (code)        (only option: all 4 gates, x and h parts)
biases             float in training, then      -
                   fixed point in the datapath
=================  ===========================  =============================================

The embedding (clip vs ReLU) and the output-layer quantization are properties of the language
model around the layer and live in sw_ref's LMConfig.

Default number formats (the one rule; ``default_formats``)
----------------------------------------------------------
A format field (z_frac, lut_bits, gate_frac, mult_bits, cell) that is not given (or is None) is
derived from the bit widths once, at construction; a given field always wins. With
``d = max(0, abits - 5)`` extra bits (none up to A5, then one per activation bit):

=========  =====================================================================================
field      default
=========  =====================================================================================
z_frac     5 + d, lowered (never below 5) to what a given lut_bits (z_frac <= lut_bits - 1) or a
           given fixed-point cell (z_frac <= F) allows
lut_bits   max(9 + d, z_frac + 4), at most 16: the tables cover z in [-8, 8) (wider below a given
           z_frac under 5 + d)
gate_frac  8 + d
mult_bits  16
cell       fixed:3.F with F = max(10 + d, z_frac + 5), at most 24: saturating at +-8, at least five
           fraction bits below the sigmoid(c) address
=========  =====================================================================================

So A1..A5 keep 5 / 9 / 8 / 16 / fixed:3.10 (the shipped W4A2 layer's formats; there, whatever
fields are given, a configuration valid before the rule with z_frac <= 5 gets the same values), and
A8 gets 8 / 12 / 11 / 16 / fixed:3.13. wbits does not enter: the weights are quantized before any
format applies (the accumulator is exact), so the formats only add rounding after the ideal cell's
weight quantization.

What the rule is for: every step of the integer model is within ONE h code of He et al.'s ideal
float64 cell started from the same state (|h_int - h_ideal| <= 1 per element; checked for all 64
bit-width pairs by tests/test_numerics_one_code.py). Every tap's rounding (z by 2**-(z_frac+1),
the gates by 2**-(gate_frac+1), the cell word, the sigmoid(c) address) reaches h multiplied by
Ka = 2**abits - 1: the measured excess of |h_int - Ka * o * sigmoid(c')| over the 1/2 code of h's
own rounding is about 0.011 * Ka / 2**d codes at worst (wide weights, biases, inputs and states),
and one code needs it below 1. The rule is the smallest one-bit-per-abit growth that keeps it below
1/2 code (measured at most 0.42) at every abits: A1..A5 need nothing (0.33 at A5), while A1..A5's
formats would reach about 0.6 at A6, 1.2 at A7 (two codes apart) and 2.5 at A8 (three codes
apart). The bound is per step: over a run, the saturating cell (+-8) can part from an unbounded
ideal c; hwrnn.saturation measures how often it saturates. The values are resolved at construction, so to_dict / JSON carry them
explicitly and read back equal (dataclasses.replace also keeps them: re-derive by passing None).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .cell_state import DEFAULT_CELL, CellState, FixedPointCell
from .gates import DEFAULT_CELL_TYPE, GateSet
from .weight_code import DEFAULT_WEIGHT_CODE, WeightCode
from .quant import MAX_BITS, default_gamma
from .validation import CANDIDATES, INIT_STATES, ConfigError, int_in as _int_in, one_of

PLANE_MODES = ("parallel", "serial")

__all__ = ["CANDIDATES", "INIT_STATES", "PLANE_MODES", "DEFAULT_CELL", "FORMAT_FIELDS", "CellState", "ConfigError",
           "LayerConfig", "Folding", "default_formats"]

#: the LayerConfig fields that are hardware number formats (derived by ``default_formats`` when not given)
FORMAT_FIELDS = ("z_frac", "lut_bits", "gate_frac", "mult_bits", "cell")


def default_formats(abits: int, **given) -> dict:
    """The number formats of a layer with ``abits`` activation bits: the given ones (format fields
    only, None meaning not given) completed by the rule of the module docstring. Only validates what
    the rule reads (abits; a given lut_bits/z_frac must be an int, a given cell must parse); the
    full checks are LayerConfig's."""
    unknown = sorted(set(given) - set(FORMAT_FIELDS))
    if unknown:
        raise ConfigError(f"not a format field: {', '.join(unknown)}")
    _int_in("abits", abits, 1, MAX_BITS)
    given = {k: v for k, v in given.items() if v is not None}
    d = max(0, abits - 5)
    out = dict(given)
    if "z_frac" not in given:
        z = 5 + d
        if "lut_bits" in given:
            _int_in("lut_bits", given["lut_bits"], 2, 16)
            z = min(z, given["lut_bits"] - 1)
        if "cell" in given:
            cell = CellState.parse(given["cell"])
            if isinstance(cell, FixedPointCell):
                z = min(z, cell.frac_bits)
        out["z_frac"] = max(5, z)
    else:
        _int_in("z_frac", given["z_frac"], 0, 16)
    z = out["z_frac"]
    out.setdefault("lut_bits", min(16, max(9 + d, z + 4)))
    out.setdefault("gate_frac", 8 + d)
    out.setdefault("mult_bits", 16)
    out.setdefault("cell", str(FixedPointCell(3, min(24, max(10 + d, z + 5)))))
    return {k: out[k] for k in FORMAT_FIELDS}


@dataclass(frozen=True)
class LayerConfig:
    """One quantized recurrent layer (He et al.'s LSTM or GRU, or a vanilla RNN: ``cell_type``) and
    the formats of all its taps.

    Formats (see hwrnn.formats for the arithmetic; a format not given is derived from abits by the
    rule of the module docstring, ``default_formats``):
      z_frac    fraction bits of the gate pre-activation z (signed fixed point, value zq / 2**z_frac)
      lut_bits  address bits of the sigmoid/tanh tables; they cover z in
                [-2**(lut_bits-1-z_frac), 2**(lut_bits-1-z_frac)) with saturation outside
      gate_frac G: gate outputs are unsigned (tanh: signed) fixed point value q / 2**G, |q| <= 2**G
      mult_bits significant bits of the integer multiplier that applies the weight scale
      cell      cell-state format (hwrnn.cell_state text form, e.g. fixed:3.10, fp16)
      cell_type gate set (hwrnn.gates: lstm, gru, gru_ott, rnn)
      weight_code weight coding (hwrnn.weight_code: balanced)
    """

    wbits: int
    abits: int
    hidden: int
    input: int | None = None
    gamma: float | None = None
    weight_tanh: bool = True
    candidate: str = "sigmoid"
    init_state: str = "zero"
    z_frac: int | None = None  # None: derived from abits (module docstring, ``default_formats``)
    lut_bits: int | None = None
    gate_frac: int | None = None
    mult_bits: int | None = None
    cell: str | None = None
    cell_type: str = DEFAULT_CELL_TYPE
    weight_code: str = DEFAULT_WEIGHT_CODE

    def __post_init__(self):
        _int_in("wbits", self.wbits, 1, MAX_BITS)
        _int_in("abits", self.abits, 1, MAX_BITS)
        _int_in("hidden", self.hidden, 1, 65536)
        if self.input is None:
            object.__setattr__(self, "input", self.hidden)
        _int_in("input", self.input, 1, 65536)
        if self.gamma is None:
            object.__setattr__(self, "gamma", default_gamma(self.wbits))
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not (0 < float(self.gamma) < 100):
            raise ConfigError(f"gamma must be a positive number below 100, got {self.gamma!r}")
        object.__setattr__(self, "gamma", float(self.gamma))
        if not isinstance(self.weight_tanh, bool):
            raise ConfigError(f"weight_tanh must be true or false, got {self.weight_tanh!r}")
        one_of("candidate", self.candidate, CANDIDATES)
        one_of("init_state", self.init_state, INIT_STATES)
        given = {k: getattr(self, k) for k in FORMAT_FIELDS if getattr(self, k) is not None}
        for k, v in default_formats(self.abits, **given).items():
            object.__setattr__(self, k, v)
        _int_in("z_frac", self.z_frac, 0, 16)
        _int_in("lut_bits", self.lut_bits, 2, 16)
        if self.lut_bits - 1 - self.z_frac < 0:
            raise ConfigError(f"lut_bits={self.lut_bits} with z_frac={self.z_frac} covers less than [-1, 1)")
        _int_in("gate_frac", self.gate_frac, 1, 16)
        _int_in("mult_bits", self.mult_bits, 2, 32)
        cell = CellState.parse(self.cell)
        cell.check(self)
        object.__setattr__(self, "cell", str(cell))
        object.__setattr__(self, "_cell_state", cell)  # parsed once; not a field (JSON and == use `cell`)
        object.__setattr__(self, "_gate_set", GateSet.named(self.cell_type))
        object.__setattr__(self, "_weight_coding", WeightCode.named(self.weight_code, self.wbits))

    @property
    def cell_format(self) -> CellState:
        """The cell-state format object (hwrnn.cell_state) that ``cell`` names."""
        return self._cell_state

    @property
    def gate_set(self) -> GateSet:
        """The cell type's gate set (hwrnn.gates) that ``cell_type`` names."""
        return self._gate_set

    @property
    def weight_coding(self) -> WeightCode:
        """The weight coding (hwrnn.weight_code) that ``weight_code`` names, at wbits bits."""
        return self._weight_coding

    @property
    def columns(self) -> int:
        """Columns of the weight matrix: input + hidden (the concatenation [x_t ; h_{t-1}])."""
        return self.input + self.hidden

    @property
    def rows(self) -> int:
        """Rows of the weight matrix: one block of hidden rows per gate (LSTM: i, f, g, o; GRU: u, r, g;
        RNN: g)."""
        return self.gate_set.n_gates * self.hidden

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "LayerConfig":
        if not isinstance(d, dict):
            raise ConfigError("layer config must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown layer config field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "LayerConfig":
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"layer config is not valid JSON ({e})") from None
        return cls.from_dict(d)


@dataclass(frozen=True)
class Folding:
    """How the hardware schedules one time step.

    pe:     weight-matrix rows computed in parallel; a multiple of the layer's lane multiple (the
            gate count of each phase: LSTM 4, GRU 2, RNN 1), because the gate rows of a unit are
            computed together (pe // gates units per row fold of a phase; checked against the layer
            by ``check_against``).
    simd:   columns of [x_t ; h_{t-1}] consumed per cycle.
    planes: "parallel" (all weight bit planes per cycle) or "serial" (one plane per cycle).
    """

    pe: int = 16
    simd: int = 32
    planes: str = "parallel"

    def __post_init__(self):
        _int_in("pe", self.pe, 1, 4096)
        _int_in("simd", self.simd, 1, 4096)
        if self.planes not in PLANE_MODES:
            raise ConfigError(f"planes must be one of {PLANE_MODES}, got {self.planes!r}")

    def check_against(self, cfg: LayerConfig) -> None:
        """ConfigError unless this folding schedules cfg: pe a multiple of the gate count, pe and
        simd within the matrix."""
        n = cfg.gate_set.lane_multiple
        if self.pe % n:
            raise ConfigError(f"pe must be a multiple of {n} (the gates of a {cfg.cell_type} unit in one phase share a "
                              f"row fold), got {self.pe}")
        if self.pe > cfg.rows:
            raise ConfigError(f"pe={self.pe} exceeds the {cfg.rows} rows of a hidden={cfg.hidden} layer")
        if self.simd > cfg.columns:
            raise ConfigError(f"simd={self.simd} exceeds the {cfg.columns} columns (input + hidden)")
        if self.planes == "serial" and not cfg.weight_coding.serial_planes:
            raise ConfigError(f"{cfg.weight_code} weights need all their bits at once: use planes=parallel")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def default_for(cls, cfg: LayerConfig) -> "Folding":
        """Defaults: about 1/64 of the rows and 1/32 of the columns per cycle, clipped to the layer."""
        n = cfg.gate_set.lane_multiple
        pe = max(n, min(cfg.rows - cfg.rows % n, n * max(1, round(cfg.rows / n / 64))))
        pe = min(pe, 64 - 64 % n)
        simd = max(1, min(cfg.columns, 32))
        return cls(pe=pe, simd=simd, planes="parallel")
