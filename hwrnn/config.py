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
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from .quant import MAX_BITS, default_gamma

CANDIDATES = ("sigmoid", "tanh")
INIT_STATES = ("zero", "half")
PLANE_MODES = ("parallel", "serial")


class ConfigError(ValueError):
    """An invalid configuration; the message is one line naming the problem."""


def _int_in(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must be in {rng}, got {value}")


@dataclass(frozen=True)
class CellFormat:
    """Number format of the cell state c_t.

    ``fixed:I.F``: signed two's complement, 1 sign + I integer + F fraction bits, value = n / 2**F,
    saturating to [-2**I, 2**I - 2**-F].
    ``fp16`` (e5m10), ``bf16`` (e8m7), ``eXmY``: IEEE-754-like floating point (X in 2..8, Y in
    1..23), fused update with round to nearest even, subnormals, saturation: hwrnn.floatcell.
    """

    kind: str  # "fixed" or "float"
    int_bits: int = 0  # fixed: I
    frac_bits: int = 0  # fixed: F
    exp_bits: int = 0  # float: exponent bits
    man_bits: int = 0  # float: mantissa bits

    @property
    def width(self) -> int:
        if self.kind == "fixed":
            return 1 + self.int_bits + self.frac_bits
        return 1 + self.exp_bits + self.man_bits

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.int_bits}.{self.frac_bits}"
        if (self.exp_bits, self.man_bits) == (5, 10):
            return "fp16"
        if (self.exp_bits, self.man_bits) == (8, 7):
            return "bf16"
        return f"e{self.exp_bits}m{self.man_bits}"

    @classmethod
    def parse(cls, text: str) -> "CellFormat":
        t = str(text).strip().lower()
        if t == "fp16":
            return cls("float", exp_bits=5, man_bits=10)
        if t == "bf16":
            return cls("float", exp_bits=8, man_bits=7)
        m = re.fullmatch(r"e(\d+)m(\d+)", t)
        if m:
            return cls("float", exp_bits=int(m.group(1)), man_bits=int(m.group(2)))
        m = re.fullmatch(r"fixed:(\d+)\.(\d+)", t)
        if m:
            return cls("fixed", int_bits=int(m.group(1)), frac_bits=int(m.group(2)))
        raise ConfigError(f"cell format {text!r} not understood: use fixed:I.F, fp16, bf16 or eXmY")


DEFAULT_CELL = "fixed:3.10"


@dataclass(frozen=True)
class LayerConfig:
    """One quantized LSTM layer (He et al. cell) and the formats of all its taps.

    Formats (see hwrnn.formats for the arithmetic):
      z_frac    fraction bits of the gate pre-activation z (signed fixed point, value zq / 2**z_frac)
      lut_bits  address bits of the sigmoid/tanh tables; they cover z in
                [-2**(lut_bits-1-z_frac), 2**(lut_bits-1-z_frac)) with saturation outside
      gate_frac G: gate outputs are unsigned (tanh: signed) fixed point value q / 2**G, |q| <= 2**G
      mult_bits significant bits of the integer multiplier that applies the weight scale
      cell      cell state format (CellFormat string)
    """

    wbits: int
    abits: int
    hidden: int
    input: int | None = None
    gamma: float | None = None
    weight_tanh: bool = True
    candidate: str = "sigmoid"
    init_state: str = "zero"
    z_frac: int = 5
    lut_bits: int = 9
    gate_frac: int = 8
    mult_bits: int = 16
    cell: str = DEFAULT_CELL

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
        if self.candidate not in CANDIDATES:
            raise ConfigError(f"candidate must be one of {CANDIDATES}, got {self.candidate!r}")
        if self.init_state not in INIT_STATES:
            raise ConfigError(f"init_state must be one of {INIT_STATES}, got {self.init_state!r}")
        _int_in("z_frac", self.z_frac, 0, 16)
        _int_in("lut_bits", self.lut_bits, 2, 16)
        if self.lut_bits - 1 - self.z_frac < 0:
            raise ConfigError(f"lut_bits={self.lut_bits} with z_frac={self.z_frac} covers less than [-1, 1)")
        _int_in("gate_frac", self.gate_frac, 1, 16)
        _int_in("mult_bits", self.mult_bits, 2, 32)
        cf = CellFormat.parse(self.cell) if not isinstance(self.cell, CellFormat) else self.cell
        object.__setattr__(self, "cell", str(cf))
        if cf.kind == "float":
            from .floatcell import FloatFormat  # validates the exponent and mantissa widths

            FloatFormat(cf.exp_bits, cf.man_bits)
            return
        _int_in("cell integer bits", cf.int_bits, 1, 16)
        _int_in("cell fraction bits", cf.frac_bits, 0, 24)
        if cf.frac_bits < self.z_frac:
            raise ConfigError(
                f"cell {cf} has fewer fraction bits than z_frac={self.z_frac}; sigmoid(c) needs F >= z_frac")

    @property
    def cell_format(self) -> CellFormat:
        return CellFormat.parse(self.cell)

    @property
    def columns(self) -> int:
        """Columns of the weight matrix: input + hidden (the concatenation [x_t ; h_{t-1}])."""
        return self.input + self.hidden

    @property
    def rows(self) -> int:
        """Rows of the weight matrix: 4 * hidden (gates i, f, g, o)."""
        return 4 * self.hidden

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

    pe:     weight-matrix rows computed in parallel; a multiple of 4, because the four gate rows of a
            unit are computed together (pe // 4 units per row fold).
    simd:   columns of [x_t ; h_{t-1}] consumed per cycle.
    planes: "parallel" (all weight bit planes per cycle) or "serial" (one plane per cycle).
    """

    pe: int = 16
    simd: int = 32
    planes: str = "parallel"

    def __post_init__(self):
        _int_in("pe", self.pe, 4, 4096)
        if self.pe % 4:
            raise ConfigError(f"pe must be a multiple of 4 (the four gates of a unit share a row fold), got {self.pe}")
        _int_in("simd", self.simd, 1, 4096)
        if self.planes not in PLANE_MODES:
            raise ConfigError(f"planes must be one of {PLANE_MODES}, got {self.planes!r}")

    def check_against(self, cfg: LayerConfig) -> None:
        if self.pe > cfg.rows:
            raise ConfigError(f"pe={self.pe} exceeds the {cfg.rows} rows of a hidden={cfg.hidden} layer")
        if self.simd > cfg.columns:
            raise ConfigError(f"simd={self.simd} exceeds the {cfg.columns} columns (input + hidden)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def default_for(cls, cfg: LayerConfig) -> "Folding":
        """Defaults: about 1/64 of the rows and 1/32 of the columns per cycle, clipped to the layer."""
        pe = max(4, min(cfg.rows, 4 * max(1, round(cfg.hidden / 64))))
        pe = min(pe, 64)
        simd = max(1, min(cfg.columns, 32))
        return cls(pe=pe, simd=simd, planes="parallel")
