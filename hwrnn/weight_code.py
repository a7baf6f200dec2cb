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

Adding a coding: a subclass here (registered in ``WEIGHT_CODES``) and its MAC unit in rtl_gen.units.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import quant
from .validation import ConfigError

#: default weight coding of a layer
DEFAULT_WEIGHT_CODE = "balanced"


@dataclass(frozen=True)
class WeightCode(ABC):
    """The contract of a weight coding with ``bits`` stored bits per weight (module docstring)."""

    bits: int

    name: ClassVar[str]

    def __post_init__(self):
        quant.check_bits(self.bits, "wbits")

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
    def acc_from_planes(self, dot, asum):
        """acc = sum mac_value(n) * a from dot = sum n * a (the bit-plane popcount MAC) and
        asum = sum a (the shared activation sum); the reference of the MAC unit's correction."""

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
        return 2 * np.asarray(dot, np.int64) - self.levels * np.asarray(asum, np.int64)

    def tap_format(self) -> dict:
        K = self.levels
        return {"bits": self.bits, "signed": False, "code": self.name, "value": f"(2n - {K}) * s / {2 * K}",
                "range": [0, K], "mac_value": f"m = 2n - {K}",
                "mac_identity": f"sum m*a = 2*sum(n*a) - {K}*sum(a)"}


#: every weight coding, by LayerConfig.weight_code
WEIGHT_CODES: tuple[type[WeightCode], ...] = (BalancedCode,)
