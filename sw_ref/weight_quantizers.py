"""Weight quantizers of the training model: one class per hwrnn weight coding (``LMConfig.weight_code``,
keyed by the hwrnn.weight_code name), each the torch side of that contract class.

A quantizer maps a float matrix W (one scale s for the whole matrix, computed from the current W at
every call and detached) to the float matrix W_q the forward uses, with a straight-through backward.

``balanced`` (BalancedWeights, He et al.): ``sw_ref.quantizers.quantize_weight`` unchanged (tanh
    re-parametrisation if ``weight_tanh``, s = gamma * mean|tanh W|, its STE); no stochastic variant.

Ott et al.'s codes (TernaryWeights ``ternary``, TernaryMeanWeights ``ternary_mean``,
Pow2TernaryWeights ``pow2_ternary``, ExponentialWeights ``exponential``) quantize W itself: ``gamma``
and ``weight_tanh`` are ignored. Their scale and deterministic rounding are hwrnn.weight_code's (its
module docstring):

* forward (deterministic; eval mode, export, and training without ``stochastic_weights``):
  s = the hwrnn code's ``scale`` of W in float64 (the same numpy call as the export, so training and
  hardware share s exactly); the rounding runs in torch on W in float64: ternary +s if W/s > 1/2
  (pow2_ternary: >= 1/2), -s if W/s <= -1/2, else 0; exponential u = min(|W|/s, 1), k = floor(log2 u)
  (exactly, from frexp), up to 2**(k+1) if u/2**k - 1 > 1/2, k <= 0, and below the smallest level
  2**(1-E): 0 under half of it, else the smallest level. W_q = m * s / D (hwrnn ``value``), cast to
  W's dtype. In float64 W_q equals ``code.value(*code.codes(W))`` bit for bit.
* backward: straight through to the full-precision shadow weights (BinaryConnect): dW = dW_q.
* stochastic (training only, ``stochastic_weights``): ternary codes W_q = sign(W) * s *
  Bernoulli(clip(|W|/s, 0, 1)) (unbiased for |W| <= s); exponential: u = min(|W|/s, 1), for u >=
  2**(1-E): k = floor(log2 u) (in 1-E..0), p = u/2**k - 1, W_q = sign(W) * s * 2**(k + Bernoulli(p))
  (unbiased for |W| <= s); zero and tiny weights (u < 2**(1-E)) are rounded by the deterministic rule
  (0 under half the smallest level, else the smallest level), so a weight is zero in training
  exactly when it is zero in hardware. Bernoulli(p) is r < p with r uniform in [0, 1) from torch's
  global generator (seeded runs and resumes stay reproducible).

Biases are not quantized by any coding: float in training, fixed point in hardware (hwrnn.formats);
Ott et al.'s quantized biases are not built. The float model (wbits None) ignores the code: its
weights are the balanced class's float path (tanh(W) if weight_tanh, else W), its init the LSTM's.

Init (``init_bound``): W ~ U(-b, b) with b the hwrnn code's ``init_bound(rows, columns, hidden)``:
1/sqrt(H) for balanced (and the float model), Glorot sqrt(6 / (X + H)) for Ott's codes.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch

from hwrnn.weight_code import WEIGHT_CODES as HW_WEIGHT_CODES
from hwrnn.weight_code import WeightCode
from sw_ref.quantizers import normalize_bits, quantize_weight, weight_codes_torch

#: default weight coding (LMConfig.weight_code), as hwrnn's
DEFAULT_WEIGHT_CODE = "balanced"


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantizer's W_q of w; backward: the gradient unchanged (dW = dW_q)."""

    @staticmethod
    def forward(ctx, w, quantizer, stochastic: bool):
        return quantizer.quantized(w.detach(), stochastic)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def _bernoulli(p: torch.Tensor) -> torch.Tensor:
    """Samples of Bernoulli(p) (bool): uniform r in [0, 1) from torch's global generator, r < p."""
    return torch.rand_like(p) < p


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2.0**k (float64, exact) of integer exponents -1022 <= k <= 1023, from the bits of the double."""
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)


class WeightQuantizer:
    """The torch side of one hwrnn weight coding at ``wbits`` bits (module docstring)."""

    #: hwrnn.weight_code name (LMConfig.weight_code)
    name: ClassVar[str]
    #: whether a stochastic training variant exists
    has_stochastic: ClassVar[bool] = True
    #: whether run names and logs carry the code's name (not for the default code)
    labelled: ClassVar[bool] = True

    def __init__(self, wbits, gamma=None, use_tanh: bool = True):
        self.wbits = normalize_bits(wbits, "wbits")
        self.gamma = gamma
        self.use_tanh = bool(use_tanh)
        #: the hwrnn contract class (None for float weights)
        self.code: WeightCode | None = None if self.wbits is None else WeightCode.named(self.name, self.wbits)

    @classmethod
    def default_bits(cls) -> int | None:
        """wbits a model takes when only the code is named (hwrnn's ``default_bits``; None: float)."""
        return _hw_class(cls.name).default_bits

    @property
    def reads_tanh(self) -> bool:
        """Whether W_q is a function of tanh(W) (balanced or float with weight_tanh) rather than of W."""
        return self.code is None and self.use_tanh

    def init_bound(self, rows: int, columns: int, hidden: int) -> float:
        """b of the init W ~ U(-b, b): the hwrnn code's; 1/sqrt(H) for float weights."""
        if self.code is None:
            return 1.0 / math.sqrt(hidden)
        return self.code.init_bound(rows, columns, hidden)

    def __call__(self, w: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        """W_q of w (same dtype), straight-through gradient; ``stochastic``: the sampled variant."""
        if self.code is None:
            return quantize_weight(w, None, self.gamma, self.use_tanh)
        return _StraightThrough.apply(w, self, bool(stochastic))

    def scale(self, w: torch.Tensor) -> float:
        """s of w: the hwrnn code's ``scale`` of w in float64 (NaN/inf refused, as hwrnn)."""
        w64 = w.detach().to(torch.float64).cpu().numpy()
        if not np.all(np.isfinite(w64)):
            raise ValueError("weights contain NaN or inf")
        s = float(self.code.scale(w64))  # the numpy call of hwrnn (e.g. its mean), not torch's reduction
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"weight scale must be finite and positive, got {s}")
        return s

    @torch.no_grad()
    def codes(self, w: torch.Tensor):
        """(stored codes LongTensor, s) of the deterministic rule, equal to hwrnn ``code.codes(w)``."""
        if self.code is None:
            raise ValueError("weight codes need integer wbits (got float)")
        w64 = w.detach().to(torch.float64)
        s = self.scale(w64)
        return self._codes(w64, s), s

    def quantized(self, w: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        """W_q of a detached w (no autograd): m * s / D in float64 (hwrnn ``value``), cast to w's dtype."""
        w64 = w.to(torch.float64)
        s = self.scale(w64)
        m = self._sample(w64, s) if stochastic else self._mac(w64, s)
        return (m * s / self.code.unit_divisor).to(w.dtype)

    # subclasses: the rule on float64 tensors
    def _codes(self, w64: torch.Tensor, s: float) -> torch.Tensor:
        """Stored codes (int64) of the deterministic rule (hwrnn ``codes``)."""
        raise NotImplementedError

    def _mac(self, w64: torch.Tensor, s: float) -> torch.Tensor:
        """MAC values m (float64) of the deterministic rule (hwrnn ``mac_values`` of its codes)."""
        raise NotImplementedError

    def _sample(self, w64: torch.Tensor, s: float) -> torch.Tensor:
        """MAC values m (float64) of the stochastic rule."""
        raise NotImplementedError


class BalancedWeights(WeightQuantizer):
    """He et al.'s balanced code: ``sw_ref.quantizers.quantize_weight`` (tanh, gamma * mean, STE)."""

    name = "balanced"
    has_stochastic = False
    labelled = False

    @property
    def reads_tanh(self) -> bool:
        return self.use_tanh

    def __call__(self, w: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        if stochastic:
            raise ValueError("stochastic weights apply to Ott et al.'s codes, not balanced")
        return quantize_weight(w, self.wbits, self.gamma, self.use_tanh)

    def scale(self, w):
        return self.codes(w)[1]

    @torch.no_grad()
    def codes(self, w):
        return weight_codes_torch(w, self.wbits, self.gamma, self.use_tanh)

    def quantized(self, w, stochastic=False):
        return self(w.detach(), stochastic).detach()


class TernaryWeights(WeightQuantizer):
    """TernaryConnect as Ott et al. scale it: {-s, 0, +s}, s = sqrt(6 / (X + H)); codes 0, 1 (+s), 2 (-s)."""

    name = "ternary"
    #: +s at exactly W/s = 1/2 (pow2_ternary's half-away-from-zero rounding) or only above it
    up_at_half: ClassVar[bool] = False

    def _signs(self, w64, s):
        u = w64 / s
        return (u >= 0.5) if self.up_at_half else (u > 0.5), u <= -0.5

    def _codes(self, w64, s):
        pos, neg = self._signs(w64, s)
        return pos.long() + 2 * neg.long()

    def _mac(self, w64, s):
        pos, neg = self._signs(w64, s)
        return pos.to(torch.float64) - neg.to(torch.float64)

    def _sample(self, w64, s):
        p = torch.clamp(w64.abs() / s, 0.0, 1.0)
        return torch.sign(w64) * _bernoulli(p).to(torch.float64)


class TernaryMeanWeights(TernaryWeights):
    """Ternary with s = 1.4 mean|W| (Li and Liu's threshold 0.7 mean|W|)."""

    name = "ternary_mean"


class Pow2TernaryWeights(TernaryWeights):
    """Ternary with s the power of two nearest the Glorot bound, rounding half away from zero."""

    name = "pow2_ternary"
    up_at_half = True


class ExponentialWeights(WeightQuantizer):
    """Ott et al.'s exponential code: 0 or +-2**(f - E) * s (f = 1..E), s = 2**round(log2 max|W|)."""

    name = "exponential"

    def _level(self, w64, s):
        """(u = min(|W|/s, 1), mant, k, nonzero) of the deterministic rule: the weight is +-2**k s (k in
        1-E..0) where ``nonzero``, else 0. k = floor(log2 u) exactly from frexp (u = mant * 2**(k+1),
        mant in [1/2, 1)), rounded up iff u / 2**k - 1 = 2 mant - 1 > 1/2."""
        smallest = 1 - self.code.top
        u = torch.clamp(w64.abs() / s, max=1.0)
        mant, ex = torch.frexp(u)
        k = torch.clamp(ex + (mant > 0.75).to(ex.dtype) - 1, max=0)
        tiny = k < smallest                                        # below the smallest level
        nonzero = (u > 0) & (~tiny | (u >= 2.0 ** smallest / 2))    # tiny: half the smallest level or more
        return u, mant, ex, torch.clamp(k, min=smallest), nonzero

    def _codes(self, w64, s):
        _, _, _, k, nonzero = self._level(w64, s)
        f = torch.where(nonzero, k.long() + self.code.top, 0)   # field f = k - (1 - E) + 1
        sign = ((w64 < 0) & nonzero).long()
        return (sign << self.code.exp_bits) | f

    def _signed(self, w64, k, nonzero):
        """MAC values m = +-2**(f-1) = +-2**(k + E - 1) where nonzero, else 0 (float64)."""
        mag = _pow2(k + (self.code.top - 1))
        return torch.where(nonzero, torch.where(w64 < 0, -mag, mag), 0.0)

    def _mac(self, w64, s):
        _, _, _, k, nonzero = self._level(w64, s)
        return self._signed(w64, k, nonzero)

    def _sample(self, w64, s):
        smallest = 1 - self.code.top
        u, mant, ex, k_det, nonzero = self._level(w64, s)
        k = torch.clamp(ex - 1, smallest, 0)                      # floor(log2 u) for u >= 2**(1-E)
        p = 2.0 * mant - 1.0                                       # u / 2**k - 1; 0 at u = 1 (k = 0)
        k = k + _bernoulli(p).to(k.dtype)
        k = torch.where(u < 2.0 ** smallest, k_det, k)            # zero and tiny weights: deterministic
        return self._signed(w64, k, nonzero)


#: every weight quantizer, by LMConfig.weight_code (the names and order of hwrnn.weight_code.WEIGHT_CODES)
WEIGHT_QUANTIZERS: tuple[type[WeightQuantizer], ...] = (BalancedWeights, TernaryWeights, TernaryMeanWeights,
                                                        Pow2TernaryWeights, ExponentialWeights)
WEIGHT_CODES: tuple[str, ...] = tuple(c.name for c in WEIGHT_QUANTIZERS)


def _hw_class(name: str) -> type[WeightCode]:
    return next(c for c in HW_WEIGHT_CODES if c.name == name)


def quantizer_class(name) -> type[WeightQuantizer]:
    """The quantizer class of a weight code name; ValueError (one line) for an unknown one."""
    for cls in WEIGHT_QUANTIZERS:
        if cls.name == name:
            return cls
    raise ValueError(f"weight_code must be one of {WEIGHT_CODES}, got {name!r}")


def weight_quantizer(name, wbits, gamma=None, use_tanh: bool = True) -> WeightQuantizer:
    """The quantizer of code ``name`` at ``wbits`` (None/32: float weights, the code ignored);
    ValueError (one line) for an unknown code or a width the code does not take."""
    cls = quantizer_class(name)
    if normalize_bits(wbits, "wbits") is None:
        cls = BalancedWeights  # the float model ignores the code
    return cls(wbits, gamma, use_tanh)


def code_label(name, wbits, stochastic: bool = False) -> str:
    """The code's mark in run names and logs: "" for the balanced code and for float weights (the
    code ignored), else the code's name, "stochastic" appended for sampled training."""
    cls = quantizer_class(DEFAULT_WEIGHT_CODE if name is None else name)
    if normalize_bits(wbits, "wbits") is None or not cls.labelled:
        return ""
    return cls.name + (" stochastic" if stochastic else "")


def check_stochastic(name, wbits, stochastic) -> None:
    """ValueError (one line) unless ``stochastic`` (stochastic_weights) is a bool the code and width allow:
    Ott et al.'s codes at a quantized width."""
    if not isinstance(stochastic, bool):
        raise ValueError(f"stochastic_weights must be true or false, got {stochastic!r}")
    if stochastic and not quantizer_class(name).has_stochastic:
        raise ValueError(f"stochastic weights apply to Ott et al.'s codes, not {name}")
    if stochastic and normalize_bits(wbits, "wbits") is None:
        raise ValueError("stochastic weights need quantized weights (wbits)")


def resolve_wbits(wbits, name):
    """``wbits`` if given, else the code's default width (None for balanced: a float model)."""
    if wbits is not None:
        return wbits
    return quantizer_class(DEFAULT_WEIGHT_CODE if name is None else name).default_bits()


__all__ = ["WeightQuantizer", "BalancedWeights", "TernaryWeights", "TernaryMeanWeights", "Pow2TernaryWeights",
           "ExponentialWeights", "WEIGHT_QUANTIZERS", "WEIGHT_CODES", "DEFAULT_WEIGHT_CODE", "quantizer_class",
           "weight_quantizer", "resolve_wbits", "code_label", "check_stochastic"]
