"""Integer quantizer math of He et al., the one definition shared by training, the integer model
and the hardware.

All functions are pure numpy and compute in float64 (codes) or int64 (integer forms).

Contract (k = bit width, K = 2**k - 1):

* Rounding rule, everywhere: **half up**, ``round(x) = floor(x + 1/2)`` (the Q_k of eq. 2).
* Activation codes (k-bit, value in [0, 1]):
  ``n_a = floor(K * clip(x, 0, 1) + 1/2)`` in ``0..K``; value ``a = n_a / K``.
* Balanced weight codes (eq. 4, with the mean of |W| as threshold):
  ``s = gamma * mean|W|`` (one scale per matrix), ``n = floor(K * (clip(W/s, -1/2, 1/2) + 1/2) + 1/2)``
  in ``0..K``; value ``W_q = s * (n/K - 1/2)``.
* Odd-integer weight form used by the hardware: ``m = 2n - K`` (odd, in ``-K..K``), and
  ``W_q = m * s / (2K)``.
* Optional ``tanh`` before the weight quantizer (the authors' code): W is replaced by tanh(W).
"""
from __future__ import annotations

import numpy as np

MAX_BITS = 8


def levels(k: int) -> int:
    """K = 2**k - 1, the largest code of a k-bit quantizer."""
    check_bits(k, "bits")
    return (1 << k) - 1


def check_bits(k, what: str = "bits") -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{what} must be an integer in 1..{MAX_BITS}, got {k!r}")
    if not 1 <= int(k) <= MAX_BITS:
        raise ValueError(f"{what} must be in 1..{MAX_BITS}, got {k}")


def round_half_up(x):
    """The single rounding rule: floor(x + 1/2)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5)


def default_gamma(wbits: int) -> float:
    """gamma of the balanced quantizer: 2.0 for k = 1 (Rastegari et al.), 2.5 otherwise (He et al.)."""
    return 2.0 if wbits == 1 else 2.5


def weight_scale(w, gamma: float, use_tanh: bool = True) -> float:
    """s = gamma * mean|W'| with W' = tanh(W) if use_tanh else W; a float64 scalar > 0."""
    w = np.asarray(w, dtype=np.float64)
    if use_tanh:
        w = np.tanh(w)
    s = float(gamma * np.mean(np.abs(w)))
    if not np.isfinite(s) or s <= 0.0:
        raise ValueError(f"weight scale must be finite and positive, got {s} (all-zero or non-finite weights)")
    return s


def weight_codes(w, wbits: int, gamma: float, use_tanh: bool = True, scale: float | None = None):
    """Balanced k-bit weight codes n in 0..K (int64) and the scale s used.

    ``scale`` overrides s (used when the scale is fixed elsewhere)."""
    K = levels(wbits)
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("weights contain NaN or inf")
    wt = np.tanh(w) if use_tanh else w
    s = weight_scale(w, gamma, use_tanh) if scale is None else float(scale)
    n = round_half_up(K * (np.clip(wt / s, -0.5, 0.5) + 0.5))
    return n.astype(np.int64), s


def odd_from_code(n, wbits: int):
    """m = 2n - K: the odd-integer form of a weight code (int64, in -K..K)."""
    K = levels(wbits)
    return 2 * np.asarray(n, dtype=np.int64) - K


def weight_value(n, wbits: int, scale: float):
    """W_q = s * (n/K - 1/2) = s * m / (2K) (float64)."""
    K = levels(wbits)
    return scale * (np.asarray(n, dtype=np.float64) / K - 0.5)


def activation_codes(x, abits: int):
    """k-bit activation codes n_a = floor(K * clip(x, 0, 1) + 1/2) in 0..K (int64)."""
    K = levels(abits)
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("activations contain NaN or inf")
    return round_half_up(K * np.clip(x, 0.0, 1.0)).astype(np.int64)


def activation_value(n, abits: int):
    """a = n_a / K (float64)."""
    return np.asarray(n, dtype=np.float64) / levels(abits)
