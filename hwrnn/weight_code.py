"""Weight codings: one class per way of storing a weight in bits, each the contract of one MAC unit
(rtl_gen pairs each class with the unit that builds it: rtl_gen.units.MAC_UNITS).

A coding owns the quantizer from float weights to stored codes, the signed integer each code
stands for in the dot product (the "MAC value"), the float value of a MAC value (m * s / D), the bound on
MAC values (which sizes every accumulator), and the identity by which its MAC unit computes
``acc = sum_j mac_value(n_j) * a_j`` from bit planes.

* ``balanced`` (BalancedCode, He et al.): unsigned k-bit codes n in 0..K (K = 2**k - 1) from
  hwrnn.quant.weight_codes; MAC value m = 2n - K (odd, in -K..K); weight value m * s / (2K).
  MAC identity: ``sum m*a = 2 * sum(n*a) - K * sum(a)``, with sum(n*a) = sum over planes p, q of
  popcount(bit_p(n) & bit_q(a)) << (p + q) and sum(a) shared by all rows.

Ott et al.'s codes quantize W itself (``gamma`` and ``weight_tanh`` belong to the balanced code);
rounding is deterministic here (training may sample, sw_ref; hardware and the integer model use
these rules):

* ``ternary`` (TernaryCode, TernaryConnect as Ott et al. scale it): 2 bits, bit 0 "positive",
  bit 1 "negative": codes 0 (weight 0), 1 (+s), 2 (-s); MAC value m = bit0(n) - bit1(n), weight
  m * s. s = sqrt(6 / columns) (Ott's Glorot bound sqrt(6 / (n_in + n_units)) with [x; h] as the
  fan-in, equal to theirs for X = H); +s if W > s/2, -s if W <= -s/2, else 0.
  MAC identity: ``sum m*a = sum over q of (popcount(pos & a_q) - popcount(neg & a_q)) << q``:
  no multiplier, no correction term.
* ``ternary_mean``: the same code with s = 1.4 * mean|W| (threshold 0.7 mean|W|, Li and Liu's
  ternary weight networks).
* ``pow2_ternary`` (Ott's "dual copy" rounding with i = 0): the same code with s = 2**-f, f =
  round(log2(1 / sqrt(6 / columns))) (the power of two nearest the Glorot bound; rounds, here and
  below, take halves up), and Wq =
  clip(round(W / s), -1, 1) * s rounding half away from zero (+s if W >= s/2).
* ``exponential`` (Ott's exponential quantization with a zero code): bits = 1 + e (e = 2..4
  exponent bits), bit e the sign, E = 2**e - 1; exponent field f = 0 is the weight 0, f = 1..E is
  (+-) 2**(f - E) * s; MAC value m = (+-) 2**(f - 1), weight m * s / 2**(E - 1). s = 2**round(log2
  max|W|) (a power of two); |W| is clipped to s, then rounded to the nearest level as Ott does
  (k = floor(log2 |W|/s), up to 2**(k+1) if |W|/(s 2**k) - 1 > 1/2); below the smallest level
  2**(1 - E) s, weights under half of it become 0, the others the smallest level. MAC identity:
  ``sum m*a = sum over columns of (+-) a << (f - 1)`` (a shift and a sign per weight, one adder
  tree; no multiplier).

Adding a coding: a subclass here (registered in ``WEIGHT_CODES``) and its MAC unit in rtl_gen.units.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import math

import numpy as np

from . import quant
from .validation import ConfigError

#: adder-tree levels (hwrnn.datapath.tree_levels), here to keep this module free of datapath imports
def _tree_levels(n: int) -> int:
    return max(0, (n - 1).bit_length())

#: default weight coding of a layer
DEFAULT_WEIGHT_CODE = "balanced"


@dataclass(frozen=True)
class WeightCode(ABC):
    """The contract of a weight coding with ``bits`` stored bits per weight (module docstring)."""

    bits: int

    name: ClassVar[str]
    #: whether the MAC unit takes one weight bit plane per cycle (Folding.planes == "serial")
    serial_planes: ClassVar[bool] = True
    #: wbits a layer takes when only the code is named (None: wbits must be given)
    default_bits: ClassVar[int | None] = None

    def __post_init__(self):
        quant.check_bits(self.bits, "wbits")

    def dot_levels(self, simd: int, abits: int, planes_per_word: int) -> int:
        """Adder levels of one lane's dot over SIMD columns (the pipeline registers follow from them:
        hwrnn.datapath.pipeline_stages). Bit-plane popcount: popcount of SIMD bits, then the sum of
        the planes_per_word * abits plane terms."""
        return _tree_levels(simd) + _tree_levels(planes_per_word * abits)

    def init_bound(self, rows: int, columns: int, hidden: int) -> float:
        """Weights of a fresh layer are drawn from U(-b, b) (QuantLayer.random, sw_ref's init):
        torch's LSTM bound 1/sqrt(H) here; Ott's codes use the Glorot bound sqrt(6 / columns)."""
        return 1.0 / math.sqrt(hidden)

    def acc(self, n, a):
        """The reference of the MAC unit: sum_j mac_value(n_j) * a_j (int64; n [..., N], a [N])."""
        return self.mac_values(n) @ np.asarray(a, np.int64)

    @property
    @abstractmethod
    def max_code(self) -> int:
        """Largest stored code (stored codes are unsigned, 0..max_code, in ``bits`` bits)."""

    @property
    @abstractmethod
    def max_mac_value(self) -> int:
        """Largest |MAC value| of any code (sizes the accumulators)."""

    @abstractmethod
    def codes(self, w, gamma: float, use_tanh: bool = True, scale: float | None = None):
        """(stored codes int64, scale s) of a float matrix w (NaN/inf refused)."""

    @abstractmethod
    def mac_values(self, n):
        """The signed integer each stored code n stands for in the dot product (int64)."""

    @property
    @abstractmethod
    def unit_divisor(self) -> int:
        """D: the float weight of MAC value m at scale s is m * s / D."""

    @abstractmethod
    def tap_format(self) -> dict:
        """Machine-readable description of the w tap (manifests, docs)."""

    def value(self, n, scale: float):
        """The float weight of stored codes n (float64)."""
        return self.mac_values(n).astype(np.float64) * scale / self.unit_divisor

    @staticmethod
    def named(name: str, bits: int) -> "WeightCode":
        """The coding ``name`` with ``bits`` bits per weight; ConfigError for an unknown name."""
        for cls in WEIGHT_CODES:
            if cls.name == name:
                return cls(bits)
        raise ConfigError(f"weight_code must be one of {tuple(c.name for c in WEIGHT_CODES)}, got {name!r}")


@dataclass(frozen=True)
class BalancedCode(WeightCode):
    """He et al.'s balanced k-bit code in its odd-integer form (module docstring)."""

    name = "balanced"

    @property
    def levels(self) -> int:
        """K = 2**k - 1, the largest stored code."""
        return quant.levels(self.bits)

    @property
    def max_code(self) -> int:
        return self.levels

    @property
    def max_mac_value(self) -> int:
        return self.levels

    def codes(self, w, gamma: float, use_tanh: bool = True, scale: float | None = None):
        return quant.weight_codes(w, self.bits, gamma, use_tanh, scale)

    def mac_values(self, n):
        return quant.odd_from_code(n, self.bits)

    @property
    def unit_divisor(self) -> int:
        return 2 * self.levels

    def acc_from_planes(self, dot, asum):
        """acc = sum mac_value(n) * a from dot = sum n * a (the bit-plane popcount MAC) and
        asum = sum a (the shared activation sum); the reference of the MAC unit's correction."""
        return 2 * np.asarray(dot, np.int64) - self.levels * np.asarray(asum, np.int64)

    def tap_format(self) -> dict:
        K = self.levels
        return {"bits": self.bits, "signed": False, "code": self.name, "value": f"(2n - {K}) * s / {2 * K}",
                "range": [0, K], "mac_value": f"m = 2n - {K}",
                "mac_identity": f"sum m*a = 2*sum(n*a) - {K}*sum(a)"}


def _finite(w) -> np.ndarray:
    w = np.asarray(w, np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("weights contain NaN or inf")
    return w


def _checked_scale(s) -> float:
    s = float(s)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"weight scale must be finite and positive, got {s}")
    return s


def glorot_bound(w) -> float:
    """sqrt(6 / columns) of a [rows, columns] matrix (module docstring: ternary)."""
    w = np.asarray(w)
    return math.sqrt(6.0 / max(1, w.shape[-1]))


@dataclass(frozen=True)
class TernaryCode(WeightCode):
    """Ternary weights {-s, 0, +s} in a positive and a negative bit plane (module docstring)."""

    name = "ternary"
    default_bits = 2

    def __post_init__(self):
        if self.bits != 2:
            raise ConfigError(f"{self.name} codes take wbits=2 (a positive and a negative bit plane), got {self.bits}")

    @property
    def max_code(self) -> int:
        return 2

    @property
    def max_mac_value(self) -> int:
        return 1

    @property
    def unit_divisor(self) -> int:
        return 1

    def init_bound(self, rows: int, columns: int, hidden: int) -> float:
        return math.sqrt(6.0 / columns)

    def scale(self, w) -> float:
        """s of a matrix (TernaryCode: the Glorot bound)."""
        return glorot_bound(w)

    def round_units(self, u):
        """Codes of u = W / s: +1 above 1/2, -1 at or below -1/2, else 0 (TernaryConnect)."""
        return np.where(u > 0.5, 1, np.where(u <= -0.5, 2, 0)).astype(np.int64)

    def codes(self, w, gamma: float, use_tanh: bool = True, scale: float | None = None):
        w = _finite(w)
        s = _checked_scale(self.scale(w) if scale is None else scale)
        return self.round_units(w / s), s

    def mac_values(self, n):
        n = np.asarray(n, np.int64)
        return (n & 1) - ((n >> 1) & 1)

    def dot_levels(self, simd: int, abits: int, planes_per_word: int) -> int:
        return _tree_levels(simd) + _tree_levels(abits)  # one plane per popcount dot; pos - neg after it

    def tap_format(self) -> dict:
        return {"bits": 2, "signed": False, "code": self.name, "value": "m * s", "range": [0, 2],
                "mac_value": "m = bit0(n) - bit1(n): 0 -> 0, 1 -> +1, 2 -> -1",
                "mac_identity": "sum m*a = sum_q (popcount(bit0 & a_q) - popcount(bit1 & a_q)) << q",
                "scale": self._scale_text()}

    def _scale_text(self) -> str:
        return "s = sqrt(6 / columns) (Glorot bound); +s if W > s/2, -s if W <= -s/2, else 0"


@dataclass(frozen=True)
class TernaryMeanCode(TernaryCode):
    """Ternary weights with s = 1.4 mean|W| (module docstring)."""

    name = "ternary_mean"

    def scale(self, w) -> float:
        m = float(np.mean(np.abs(w))) if np.size(w) else 0.0
        return 1.4 * m if m > 0 else 1.0

    def _scale_text(self) -> str:
        return "s = 1.4 * mean|W|; +s if W > s/2, -s if W <= -s/2, else 0"


@dataclass(frozen=True)
class Pow2TernaryCode(TernaryCode):
    """Ternary weights {-2**-f, 0, +2**-f}, Ott's dual-copy rounding (module docstring)."""

    name = "pow2_ternary"

    def scale(self, w) -> float:
        return 2.0 ** -math.floor(math.log2(1.0 / glorot_bound(w)) + 0.5)  # nearest, halves up

    def round_units(self, u):
        """Half away from zero, clipped to +-1: +1 at or above 1/2, -1 at or below -1/2."""
        return np.where(u >= 0.5, 1, np.where(u <= -0.5, 2, 0)).astype(np.int64)

    def _scale_text(self) -> str:
        return ("s = 2^-f, f = round(log2(1 / sqrt(6 / columns))); W_q = clip(round(W / s), -1, 1) * s, "
                "half away from zero")


@dataclass(frozen=True)
class ExponentialCode(WeightCode):
    """Ott's exponential (power-of-two) weights with a zero code (module docstring)."""

    name = "exponential"
    serial_planes = False  # a weight's shift needs all its bits at once
    default_bits = 4

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 3 <= self.bits <= 5:
            raise ConfigError(f"exponential codes take wbits 3..5 (a sign and 2..4 exponent bits), got {self.bits!r}")

    @property
    def exp_bits(self) -> int:
        return self.bits - 1

    @property
    def top(self) -> int:
        """E = 2**e - 1, the largest exponent field."""
        return (1 << self.exp_bits) - 1

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1

    @property
    def max_mac_value(self) -> int:
        return 1 << (self.top - 1)

    @property
    def unit_divisor(self) -> int:
        return 1 << (self.top - 1)

    def init_bound(self, rows: int, columns: int, hidden: int) -> float:
        return math.sqrt(6.0 / columns)

    def scale(self, w) -> float:
        top = float(np.max(np.abs(w))) if np.size(w) else 0.0
        return 2.0 ** math.floor(math.log2(top) + 0.5) if top > 0 else 1.0  # nearest power, halves up

    def codes(self, w, gamma: float, use_tanh: bool = True, scale: float | None = None):
        w = _finite(w)
        s = _checked_scale(self.scale(w) if scale is None else scale)
        E = self.top
        u = np.minimum(np.abs(w) / s, 1.0)                    # |W| / s, clipped to the largest level
        with np.errstate(divide="ignore"):
            k = np.floor(np.log2(np.where(u > 0, u, 1.0)))     # u in [2**k, 2**(k+1))
        p = u / 2.0 ** k - 1.0
        k = np.where(p > 0.5, k + 1, k)                         # Ott: up only if p > 1/2
        k = np.minimum(k, 0)
        smallest = 1 - E                                        # exponent of the smallest level
        f = (k - smallest + 1).astype(np.int64)                 # field 1..E for k = smallest..0
        f = np.where(k < smallest, np.where(u >= 2.0 ** smallest / 2, 1, 0), f)
        f = np.where(u > 0, f, 0)
        sign = ((w < 0) & (f > 0)).astype(np.int64)
        return (sign << self.exp_bits) | f, s

    def mac_values(self, n):
        n = np.asarray(n, np.int64)
        f = n & self.top
        mag = np.where(f > 0, np.left_shift(1, np.maximum(f - 1, 0)), 0)
        return np.where((n >> self.exp_bits) & 1, -mag, mag)

    def dot_levels(self, simd: int, abits: int, planes_per_word: int) -> int:
        # the registered terms (+-) a << (f - 1) count as two levels (the shift multiplexer and the
        # negation: one pipeline register after them), then one adder tree over the SIMD terms
        return _tree_levels(simd) + 2

    def tap_format(self) -> dict:
        E, e = self.top, self.exp_bits
        return {"bits": self.bits, "signed": False, "code": self.name, "range": [0, self.max_code],
                "value": f"m * s / 2^{E - 1}",
                "mac_value": f"f = n & {E} (exponent field), sign = bit {e}: m = 0 if f = 0 else (-1)^sign * 2^(f-1)",
                "mac_identity": "sum m*a = sum over columns of (-1)^sign * (a << (f - 1)), f > 0",
                "scale": "s = 2^round(log2 max|W|); nearest level (Ott's rule: up if |W|/2^k - 1 > 1/2); "
                         "below half the smallest level: 0"}


#: every weight coding, by LayerConfig.weight_code
WEIGHT_CODES: tuple[type[WeightCode], ...] = (BalancedCode, TernaryCode, TernaryMeanCode, Pow2TernaryCode,
                                              ExponentialCode)
