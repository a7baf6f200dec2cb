"""Cell-state number formats: one class per format family, each the whole contract of one cell-state
unit (rtl_gen pairs each class with the unit that builds it: rtl_gen.units.CELL_STATE_UNITS).

A class owns its text form (parsing and printing), its word width, its checks against the rest of
the layer, the integer update ``c' = f*c + i*g`` and the sigmoid(c) table address exactly as its
unit computes them, the reset word, the manifest's description of the tap and the pipeline
registers its unit adds to the step (hwrnn.datapath.pipeline_stages).

Gate inputs of every format: f, i unsigned ``q / 2**G`` in 0..2**G (G = gate_frac, G + 1 bits);
g the candidate, sigmoid (unsigned, G + 1 bits) or tanh (signed, G + 2 bits).

* ``fixed:I.F`` (FixedPointCell): signed two's complement, 1 sign + I integer + F fraction bits,
  value ``n / 2**F``; ``c' = sat(rshift_round(f*c * 2**(P-G-F) + i*g * 2**(P-2G), P - F))`` with
  ``P = max(G + F, 2G)``, saturating to ``[-2**(I+F), 2**(I+F) - 1]``; sigmoid(c) address from
  ``rshift_round(c, F - z_frac)`` (half up), clamped like every table address.
* ``fp16``, ``bf16``, ``eXmY`` (FloatingPointCell): IEEE-754-like words, one fused rounding
  ``c' = RNE(f*c + i*g)``, subnormals kept, overflow saturating, zero always +0: hwrnn.floatcell.

Adding a format: a subclass here (registered in ``FORMATS``) and its unit in rtl_gen.units.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import floatcell
from .formats import lut_address, rshift_round
from .validation import ConfigError, int_in

#: default cell-state format of a layer
DEFAULT_CELL = "fixed:3.10"


class CellState(ABC):
    """The contract of a cell-state format (see the module docstring)."""

    #: family name written into manifests and the board link's status ("fixed" or "float")
    kind: ClassVar[str]
    #: pipeline registers of the unit from (f, i, g, c) to c_new, and from c_new to the address
    #: of sigmoid(c) (which goes straight into the table's read-address register)
    update_stages: ClassVar[int]
    address_stages: ClassVar[int]
    #: the cell word is a signed integer (fixed point) or a bit pattern (float)
    signed_word: ClassVar[bool]

    @property
    @abstractmethod
    def width(self) -> int:
        """Bits of one cell word."""

    @classmethod
    @abstractmethod
    def from_text(cls, text: str) -> "CellState | None":
        """The format a text names, or None when the text is not of this family."""

    def check(self, cfg) -> None:
        """ConfigError when the format does not work with the rest of the layer (cfg)."""

    @abstractmethod
    def update(self, cfg, f, c, i, g):
        """c' from gate codes and cell words (int64 arrays, broadcast)."""

    @abstractmethod
    def lut_address(self, cfg, c):
        """Address of sigmoid(c) in the layer's sigmoid table (int64)."""

    @abstractmethod
    def initial_word(self, cfg) -> int:
        """The reset word of c for cfg.init_state."""

    @abstractmethod
    def tap_format(self, cfg) -> dict:
        """Machine-readable description of the cell tap (manifests, docs)."""

    @abstractmethod
    def saturation_words(self) -> tuple[int, int, float, float]:
        """(lowest word, highest word, their values): the words the update saturates to, as the
        integer model stores them (fixed point: signed integers; floating point: bit patterns)."""

    @abstractmethod
    def round_values(self, c):
        """Training-side emulation: the values of a torch tensor c rounded to the format (no
        gradient handling; the caller applies the straight-through estimator)."""

    @staticmethod
    def parse(text) -> "CellState":
        """The format named by ``text`` (a CellState is returned as is); ConfigError if none."""
        if isinstance(text, CellState):
            return text
        for fmt in FORMATS:
            found = fmt.from_text(str(text).strip().lower())
            if found is not None:
                return found
        raise ConfigError(f"cell format {text!r} not understood: use fixed:I.F, fp16, bf16 or eXmY")


@dataclass(frozen=True)
class FixedPointCell(CellState):
    """``fixed:I.F``: saturating signed fixed point (module docstring)."""

    int_bits: int
    frac_bits: int

    kind = "fixed"
    update_stages = 4    # operands | products f*c, i*g | aligned sum + rounding constant | shift + saturation
    address_stages = 0   # rounding shift + clamp from the registered c_new into the table's address register
    signed_word = True

    def __post_init__(self):
        int_in("cell integer bits", self.int_bits, 1, 16)
        int_in("cell fraction bits", self.frac_bits, 0, 24)

    def __str__(self) -> str:
        return f"fixed:{self.int_bits}.{self.frac_bits}"

    @property
    def width(self) -> int:
        return 1 + self.int_bits + self.frac_bits

    @property
    def limits(self) -> tuple[int, int]:
        """Smallest and largest cell integer n (saturation bounds)."""
        top = 1 << (self.int_bits + self.frac_bits)
        return -top, top - 1

    @classmethod
    def from_text(cls, text: str) -> "FixedPointCell | None":
        m = re.fullmatch(r"fixed:(\d+)\.(\d+)", text)
        return cls(int(m.group(1)), int(m.group(2))) if m else None

    def check(self, cfg) -> None:
        if self.frac_bits < cfg.z_frac:
            raise ConfigError(
                f"cell {self} has fewer fraction bits than z_frac={cfg.z_frac}; sigmoid(c) needs F >= z_frac")

    def update(self, cfg, f, c, i, g):
        G, F = cfg.gate_frac, self.frac_bits
        P = max(G + F, 2 * G)
        s = (np.asarray(f, np.int64) * np.asarray(c, np.int64)) << (P - G - F)
        s = s + ((np.asarray(i, np.int64) * np.asarray(g, np.int64)) << (P - 2 * G))
        lo, hi = self.limits
        return np.clip(rshift_round(s, P - F), lo, hi)

    def lut_address(self, cfg, c):
        return lut_address(cfg, rshift_round(c, self.frac_bits - cfg.z_frac))

    def initial_word(self, cfg) -> int:
        if cfg.init_state == "half":
            return 1 << (self.frac_bits - 1) if self.frac_bits > 0 else 0
        return 0

    def saturation_words(self) -> tuple[int, int, float, float]:
        lo, hi = self.limits
        return lo, hi, lo / 2.0 ** self.frac_bits, hi / 2.0 ** self.frac_bits

    def round_values(self, c):
        """Half up to F fraction bits, saturated to the format's range."""
        scale = 2.0 ** self.frac_bits
        top = 2.0 ** self.int_bits
        return (c * scale + 0.5).floor().div(scale).clamp(-top, top - 1.0 / scale)

    def tap_format(self, cfg) -> dict:
        return {"format": str(self), "bits": self.width, "signed": True, "frac": self.frac_bits,
                "value": f"n / 2^{self.frac_bits}", "range": list(self.limits),
                "rounding": "half up", "saturation": "clamp"}


@dataclass(frozen=True)
class FloatingPointCell(floatcell.FloatFormat, CellState):
    """``eXmY`` (fp16 = e5m10, bf16 = e8m7): the fused, saturating float update of hwrnn.floatcell."""

    kind = "float"
    update_stages = 11   # operands | products | leading ones | normalise + compare | swap + exponent
    #                      difference | align | add + abs | leading one + shift amount | round |
    #                      carry + exponent | pack -> c_new
    address_stages = 1   # address shift + round, then clamped into the table's read-address register
    signed_word = False

    @classmethod
    def from_text(cls, text: str) -> "FloatingPointCell | None":
        fields = floatcell.FloatFormat.fields_of(text)
        return cls(*fields) if fields else None

    def update(self, cfg, f, c, i, g):
        return floatcell.float_cell_update(cfg, f, c, i, g)

    def lut_address(self, cfg, c):
        return floatcell.float_cell_lut_address(cfg, c)

    def initial_word(self, cfg) -> int:
        return floatcell.float_initial_state_word(cfg)

    def tap_format(self, cfg) -> dict:
        return floatcell.float_tap_format(cfg) | {"signed": False}

    def saturation_words(self) -> tuple[int, int, float, float]:
        word = self.max_finite_word
        return self.sign_bit | word, word, -self.max_finite, self.max_finite

    def round_values(self, c):
        """Round to nearest even in the format (computed in float64, returned in c's dtype). c is a
        float32 sum in training, so this approximates the unit's single rounding; the integer
        model is the exact emulation."""
        return floatcell._round64(c.detach().double(), self.exp_bits, self.man_bits).to(c.dtype)


#: every cell-state format family, tried in order by CellState.parse
FORMATS: tuple[type[CellState], ...] = (FixedPointCell, FloatingPointCell)

