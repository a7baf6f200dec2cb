"""Number formats of every tap of the layer, and the integer arithmetic between them.

This module is the numerics contract between sw_ref (integer model) and rtl_gen (hardware): each
function here is the reference of one hardware block. All arithmetic is on int64 numpy arrays;
``>>`` is an arithmetic shift (floor division by a power of two). Rounding is half up everywhere:
``rshift_round(v, r) = floor(v / 2**r + 1/2) = (v + 2**(r-1)) >> r``.

Defaults of z_frac, lut_bits, gate_frac, mult_bits and the cell format come from abits by the one rule
in hwrnn.config (``default_formats``): 5/9/8/16/fixed:3.10 up to A5, one more bit each per activation
bit above (so the integer model stays within one h code of the ideal cell at every bit width).

Taps of one time step of the LSTM (the other cell types' taps after the gate tables, GRU rh and
each cell's h, are in hwrnn.gates), with Kw = 2**wbits - 1, Ka = 2**abits - 1, N = input + hidden:

=========  ======================================================================================
tap        format
=========  ======================================================================================
x, h       activation codes, unsigned abits, value n / Ka
w          stored weight codes in the layer's weight coding (hwrnn.weight_code); balanced: codes n,
           unsigned wbits; MAC value (odd form) m = 2n - Kw; value m * s / (2 Kw)
acc        sum_j m_j * n_j, exact signed integer, |acc| <= N * max|m| * Ka (width from this bound)
z          pre-activation, signed fixed point, value zq / 2**z_frac:
           zq = rshift_round(acc * M + B, R), with M = round(s / (2 Kw Ka) * 2**(z_frac + R)) and
           B = round(b * 2**(z_frac + R)) (R chosen so that M has mult_bits significant bits)
addr       LUT address, unsigned lut_bits: clamp(zq, -2**(L-1), 2**(L-1) - 1) + 2**(L-1)
i, f, o    sigmoid LUT output, unsigned, value q / 2**G, q in 0..2**G  (G + 1 bits)
g          candidate: sigmoid as above, or tanh LUT output, signed, q in -2**G..2**G (G + 2 bits)
c          cell state in the layer's cell-state format (hwrnn.cell_state), e.g. fixed:I.F signed,
           value n / 2**F, saturating to I + F + 1 bits:
           c' = sat(rshift_round(f*c * 2**(P-G-F) + i*g * 2**(P-2G), P - F)), P = max(G+F, 2G);
           or a floating-point word (fp16, bf16, eXmY: one fused RNE rounding, hwrnn.floatcell)
sc         sigmoid(c) from the same sigmoid LUT, at the format's address (fixed point:
           rshift_round(c, F - z_frac), clamped)
h          new activation code: rshift_round(Ka * o * sc, 2G)  (exactly Q_a(o * sigmoid(c)))
=========  ======================================================================================
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .quant import levels, round_half_up

if TYPE_CHECKING:  # annotations only: hwrnn.config imports this module's users
    from .config import LayerConfig


def rshift_round(v, r: int):
    """floor(v / 2**r + 1/2) for integer arrays (r >= 0)."""
    v = np.asarray(v, dtype=np.int64)
    if r == 0:
        return v
    return (v + (1 << (r - 1))) >> r


def signed_width(lo: int, hi: int) -> int:
    """Bits of the smallest two's complement type holding lo..hi."""
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


def unsigned_width(hi: int) -> int:
    return max(1, int(hi).bit_length())


def acc_bound(cfg: LayerConfig) -> int:
    """Largest |acc| = N * max|MAC value| * Ka (balanced: N * Kw * Ka, every m = +-Kw, n_a = Ka)."""
    return cfg.columns * cfg.weight_coding.max_mac_value * levels(cfg.abits)


def acc_width(cfg: LayerConfig) -> int:
    b = acc_bound(cfg)
    return signed_width(-b, b)


def scale_shift(cfg: LayerConfig, scale: float) -> tuple[int, int]:
    """(M, R): the integer multiplier and shift that apply S = s / (D Ka) to acc, with D the weight
    coding's unit divisor (a MAC value m weighs m * s / D; balanced: D = 2 Kw, so S = s / (2 Kw Ka)).

    R is the smallest value >= 1 with M = round(S * 2**(z_frac + R)) >= 2**(mult_bits - 1), so
    2**(mult_bits-1) <= M <= 2**mult_bits (the upper end only where rounding reaches it). ValueError
    (one line) for a scale the formats cannot hold: one that needs R < 1 (M beyond mult_bits) or
    R > 62, or whose products |acc| * M + 2**(R-1) reach 2**62 (with |B| < 2**62, bias_fixed, every
    acc * M + B + 2**(R-1) of the datapath fits int64)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"weight scale must be finite and positive, got {scale}")
    S = scale / (cfg.weight_coding.unit_divisor * levels(cfg.abits)) * 2.0 ** cfg.z_frac
    # S * 2**R >= 2**(mult_bits-1)  <=>  R >= mult_bits - 1 - log2(S)
    R = int(math.ceil(cfg.mult_bits - 1 - math.log2(S)))
    if R < 1:
        largest = (2 ** cfg.mult_bits - 1) / 2.0 * scale / S  # M = 2**mult_bits - 1 at R = 1
        raise ValueError(f"weight scale {scale:g} is too large for mult_bits={cfg.mult_bits}: its multiplier would "
                         f"need {int(S * 2).bit_length()} bits (largest scale {largest:.6g})")
    if R > 62:
        raise ValueError(f"weight scale {scale} is too small to represent with mult_bits={cfg.mult_bits}")
    M = int(round_half_up(S * 2.0 ** R))
    top = acc_bound(cfg) * M + (1 << (R - 1))
    if top >= 1 << 62:
        raise ValueError(f"acc * M + B needs {top.bit_length() + 2} bits with wbits={cfg.wbits} abits={cfg.abits} "
                         f"{cfg.columns} columns mult_bits={cfg.mult_bits}: beyond the 64-bit integer datapath")
    return M, R


def bias_fixed(cfg: LayerConfig, bias, R: int):
    """B = round(b * 2**(z_frac + R)) as int64 (biases are float in training); ValueError unless every
    |B| < 2**62 (see scale_shift: the datapath's sums then fit int64)."""
    b = np.asarray(bias, dtype=np.float64)
    if not np.all(np.isfinite(b)):
        raise ValueError("biases contain NaN or inf")
    B = round_half_up(b * 2.0 ** (cfg.z_frac + R))
    if np.any(np.abs(B) >= 2.0 ** 62):
        raise ValueError("a bias is too large for the fixed-point datapath")
    return B.astype(np.int64)


def preactivation(acc, M: int, B, R: int):
    """zq = rshift_round(acc * M + B, R) (int64)."""
    return rshift_round(np.asarray(acc, dtype=np.int64) * M + np.asarray(B, dtype=np.int64), R)


def lut_address(cfg: LayerConfig, zq):
    """Saturate zq to the LUT range and offset it to an unsigned address."""
    half = 1 << (cfg.lut_bits - 1)
    return np.clip(np.asarray(zq, dtype=np.int64), -half, half - 1) + half


def lut_input_values(cfg: LayerConfig):
    """The z value each LUT address stands for (float64)."""
    half = 1 << (cfg.lut_bits - 1)
    return (np.arange(1 << cfg.lut_bits, dtype=np.int64) - half) / 2.0 ** cfg.z_frac


def sigmoid_lut(cfg: LayerConfig):
    """round_half_up(sigmoid(z) * 2**G) per address: int64 in 0..2**G (G + 1 bits unsigned)."""
    z = lut_input_values(cfg)
    return round_half_up(2.0 ** cfg.gate_frac / (1.0 + np.exp(-z))).astype(np.int64)


def tanh_lut(cfg: LayerConfig):
    """round_half_up(tanh(z) * 2**G) per address: int64 in -2**G..2**G (G + 2 bits signed)."""
    z = lut_input_values(cfg)
    return round_half_up(np.tanh(z) * 2.0 ** cfg.gate_frac).astype(np.int64)


def candidate_lut(cfg: LayerConfig):
    return tanh_lut(cfg) if cfg.candidate == "tanh" else sigmoid_lut(cfg)


def gate_width(cfg: LayerConfig) -> int:
    """Width of i, f, o (unsigned, 0..2**G)."""
    return cfg.gate_frac + 1


def candidate_width(cfg: LayerConfig) -> int:
    """Width of g: unsigned G+1 for sigmoid, signed G+2 for tanh."""
    return cfg.gate_frac + (2 if cfg.candidate == "tanh" else 1)


def cell_limits(cfg: LayerConfig) -> tuple[int, int]:
    """Saturation bounds of a fixed-point cell (hwrnn.cell_state.FixedPointCell.limits)."""
    return cfg.cell_format.limits


def cell_update(cfg: LayerConfig, f, c, i, g):
    """c' = f*c + i*g in the layer's cell-state format (hwrnn.cell_state: the format's ``update``)."""
    return cfg.cell_format.update(cfg, f, c, i, g)


def cell_lut_address(cfg: LayerConfig, c):
    """Address of sigmoid(c) in the sigmoid table (the cell-state format's ``lut_address``)."""
    return cfg.cell_format.lut_address(cfg, c)


def h_code(cfg: LayerConfig, o, sc):
    """h = rshift_round(Ka * o * sc, 2G), in 0..Ka."""
    return rshift_round(levels(cfg.abits) * np.asarray(o, np.int64) * np.asarray(sc, np.int64), 2 * cfg.gate_frac)


def initial_state(cfg: LayerConfig):
    """(h0 code, c0 cell word) of the reset state."""
    from_half = int(round_half_up(levels(cfg.abits) * 0.5)) if cfg.init_state == "half" else 0
    return from_half, cfg.cell_format.initial_word(cfg)


def tap_formats(cfg: LayerConfig, M: int | None = None, R: int | None = None, B=None) -> dict:
    """Human/machine-readable description of every tap (for manifests and docs)."""
    Kw, Ka = levels(cfg.wbits), levels(cfg.abits)
    G = cfg.gate_frac
    d = {
        "x": {"bits": cfg.abits, "signed": False, "value": f"n / {Ka}", "range": [0, Ka]},
        "h": {"bits": cfg.abits, "signed": False, "value": f"n / {Ka}", "range": [0, Ka],
              "rounding": "half up: floor(Ka*o*sigmoid(c) + 1/2)"},
        "w": cfg.weight_coding.tap_format(),
        "acc": {"bits": acc_width(cfg), "signed": True, "value": "sum_j m_j n_j (exact)",
                "range": [-acc_bound(cfg), acc_bound(cfg)]},
        "z": {"frac": cfg.z_frac, "signed": True,
              "value": f"zq / 2^{cfg.z_frac}", "rounding": "half up of (acc*M + B) / 2^R"},
        "lut_addr": {"bits": cfg.lut_bits, "signed": False,
                     "value": f"clamp(zq, {-(1 << (cfg.lut_bits - 1))}, {(1 << (cfg.lut_bits - 1)) - 1}) + {1 << (cfg.lut_bits - 1)}",
                     "z_range": [-(2.0 ** (cfg.lut_bits - 1 - cfg.z_frac)), 2.0 ** (cfg.lut_bits - 1 - cfg.z_frac)],
                     "saturation": "clamp"},
        "gate": {"bits": gate_width(cfg), "signed": False, "frac": G, "value": f"q / 2^{G}", "range": [0, 1 << G],
                 "rounding": "half up of sigmoid(z) * 2^G"},
        "candidate": {"bits": candidate_width(cfg), "signed": cfg.candidate == "tanh", "frac": G,
                      "function": cfg.candidate},
    }
    d.update(cfg.gate_set.tap_formats(cfg))  # the LSTM's cell, the GRU's rh, each cell's h rounding
    if M is not None:
        d["z"]["multiplier"] = int(M)
        d["z"]["shift"] = int(R)
        d["z"]["multiplier_bits"] = unsigned_width(M)
    if B is not None:
        B = np.asarray(B, np.int64)
        d["z"]["bias_bits"] = signed_width(int(B.min(initial=0)), int(B.max(initial=0)))
    return d
