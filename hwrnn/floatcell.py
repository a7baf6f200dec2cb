"""Floating-point cell state: the format, the fused update c' = RNE(f*c + i*g) and the sigmoid(c)
LUT address, as integer-exact numpy (the reference of rtl_gen.float_cell.FloatCellUnit), plus
float64/float32 helpers for tests and torch helpers for training.

Format eXmY (``e`` exponent bits in 2..8, ``m`` mantissa bits in 1..23; fp16 = e5m10, bf16 = e8m7)
------------------------------------------------------------------------------------------------
Word of 1 + e + m bits, IEEE 754 layout ``sign | exponent E | mantissa M`` (sign is the MSB),
bias = 2**(e-1) - 1:

* ``E = 0``: subnormal (or zero), value ``(-1)**s * M * 2**(1 - bias - m)``;
* ``0 < E < 2**e - 1``: normal, value ``(-1)**s * (2**m + M) * 2**(E - bias - m)``;
* ``E = 2**e - 1`` (IEEE's inf/NaN codes): **never produced**. So every word the unit writes is
  the IEEE word of the same value (fp16/bf16 words decode identically with numpy.float16 /
  torch.bfloat16). The unit has no special-case logic for them: on input they are read like
  normal numbers, ``(2**m + M) * 2**(2**e - 1 - bias - m)`` (beyond the largest finite value),
  which defines the behaviour for every input bit pattern, in the model and the RTL alike.

Decisions (identical in this module, in the RTL and in the torch helpers):

* **Rounding**: round to nearest, ties to even (RNE), applied ONCE to the exact value of
  ``f*c + i*g`` (a fused multiply-add: the product f*c is exact, the sum is exact, then one
  rounding). That is what FloatCellUnit computes: it forms the exact product (a (G+1) x (m+1)-bit
  integer multiplier), aligns the exact addend i*g to it in a window wide enough that nothing
  which can influence the rounding is lost (bits below the window only ever matter through a
  sticky bit, proven in ``_fused_update``), adds, normalises and rounds. One rounding is both
  cheaper (one normalise/round stage instead of two) and more accurate than a multiplier and an
  adder that round separately.
* **Subnormals: supported** (gradual underflow), on input and output. Flushing would save only a
  little logic here (the operands are normalised anyway for the alignment) and would make tiny
  cell values and f*c products vanish abruptly; with subnormals the unit is exactly IEEE-like.
* **Overflow saturates to the largest finite value** ``(2 - 2**-m) * 2**bias`` with the sign of
  the result: any exact result whose RNE rounding would exceed it (IEEE: round to +-inf) becomes
  +-max finite. No inf or NaN can ever arise. (With gates in their contract, |c'| <= |c| + 1, so
  this only triggers for formats whose ulp at the top is at most 2, e.g. e2m3, or for reserved input
  words; it is there so that the hardware needs no inf/NaN handling at all.)
* **Signed zero**: a -0 input is accepted and behaves exactly like +0 (f*(-0) = 0). Every zero
  result is **+0** (the word 0), whether the exact sum is zero or a tiny nonzero value rounds to
  zero. (IEEE would give -0 for a negative value that underflows to zero and for -0 + -0; the sign
  of a zero carries no information for the LSTM (sigmoid(+-0), f*(+-0) are equal), and a canonical
  zero keeps the bit-exact comparison of c_t meaningful.)
* **LUT address of sigmoid(c)**: exactly the fixed-point rule of hwrnn.formats.lut_address,
  ``clamp(round_half_up(c * 2**z_frac), -2**(L-1), 2**(L-1) - 1) + 2**(L-1)``, computed exactly
  from the float value (half up, as every other rounding of the datapath).

Gate inputs (as for the fixed-point cell): f, i unsigned ``q / 2**G`` in 0..2**G (port of G + 1
bits), g sigmoid (unsigned, G + 1 bits) or tanh (signed, G + 2 bits). The numpy functions accept
every value of those port widths (also beyond 2**G) and compute exactly what the RTL computes for
them.

Functions take a ``FloatCellParams`` or anything with the LayerConfig attributes gate_frac,
z_frac, lut_bits, candidate, init_state and cell/cell_format (see ``cell_params``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .validation import CANDIDATES, INIT_STATES, ConfigError, int_in as _int_in

EXP_BITS_RANGE = (2, 8)
MAN_BITS_RANGE = (1, 23)


@dataclass(frozen=True)
class FloatFormat:
    """An eXmY cell format (see the module docstring)."""

    exp_bits: int
    man_bits: int

    def __post_init__(self):
        _int_in("float cell exponent bits", self.exp_bits, *EXP_BITS_RANGE)
        _int_in("float cell mantissa bits", self.man_bits, *MAN_BITS_RANGE)

    @property
    def width(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def e_max_field(self) -> int:
        """Largest exponent field a finite result has (2**e - 2)."""
        return (1 << self.exp_bits) - 2

    @property
    def q_min(self) -> int:
        """Exponent of the LSB of subnormals and of the smallest binade: 1 - bias - m."""
        return 1 - self.bias - self.man_bits

    @property
    def max_finite_word(self) -> int:
        return (self.e_max_field << self.man_bits) | ((1 << self.man_bits) - 1)

    @property
    def max_finite(self) -> float:
        return math.ldexp((1 << (self.man_bits + 1)) - 1, self.e_max_field - self.bias - self.man_bits)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.q_min)

    @property
    def sign_bit(self) -> int:
        return 1 << (self.exp_bits + self.man_bits)

    def __str__(self) -> str:
        if (self.exp_bits, self.man_bits) == (5, 10):
            return "fp16"
        if (self.exp_bits, self.man_bits) == (8, 7):
            return "bf16"
        return f"e{self.exp_bits}m{self.man_bits}"

    @staticmethod
    def fields_of(text: str) -> tuple[int, int] | None:
        """(exponent bits, mantissa bits) that the text fp16, bf16 or eXmY names, else None."""
        t = str(text).strip().lower()
        named = {"fp16": (5, 10), "bf16": (8, 7)}
        if t in named:
            return named[t]
        m = re.fullmatch(r"e(\d+)m(\d+)", t)
        return (int(m.group(1)), int(m.group(2))) if m else None

    @classmethod
    def parse(cls, text) -> "FloatFormat":
        """A FloatFormat from itself (any FloatFormat, e.g. a hwrnn.cell_state.FloatingPointCell,
        is returned as it is) or from its text form fp16, bf16 or eXmY; ConfigError otherwise."""
        if isinstance(text, FloatFormat):
            return text
        fields = cls.fields_of(text)
        if fields is None:
            raise ConfigError(f"cell format {text} is not a floating-point format (fp16, bf16, eXmY)")
        return cls(*fields)


@dataclass(frozen=True)
class FloatCellParams:
    """Everything the floating-point cell unit depends on (a subset of LayerConfig)."""

    fmt: FloatFormat
    gate_frac: int = 8
    z_frac: int = 5
    lut_bits: int = 9
    candidate: str = "sigmoid"
    init_state: str = "zero"

    def __post_init__(self):
        if not isinstance(self.fmt, FloatFormat):
            object.__setattr__(self, "fmt", FloatFormat.parse(self.fmt))
        _int_in("gate_frac", self.gate_frac, 1, 16)
        _int_in("z_frac", self.z_frac, 0, 16)
        _int_in("lut_bits", self.lut_bits, 2, 16)
        if self.lut_bits - 1 - self.z_frac < 0:
            raise ConfigError(f"lut_bits={self.lut_bits} with z_frac={self.z_frac} covers less than [-1, 1)")
        if self.candidate not in CANDIDATES:
            raise ConfigError(f"candidate must be one of {CANDIDATES}, got {self.candidate!r}")
        if self.init_state not in INIT_STATES:
            raise ConfigError(f"init_state must be one of {INIT_STATES}, got {self.init_state!r}")

    # port widths (identical to FixedCellUnit's)
    @property
    def gate_width(self) -> int:
        return self.gate_frac + 1

    @property
    def candidate_width(self) -> int:
        return self.gate_frac + (2 if self.candidate == "tanh" else 1)

    @property
    def window(self) -> int:
        """W: bits of the normalised operands of the adder. Must be >= the width of f*c (G+1 + m+1)
        and of |i*g| (2G+2 sigmoid / 2G+3 tanh, over all port values) and >= m + 2."""
        G, m = self.gate_frac, self.fmt.man_bits
        b = 2 * G + 3 if self.candidate == "tanh" else 2 * G + 2
        return max(G + m + 2, b, m + 2)


def cell_params(cfg) -> FloatCellParams:
    """FloatCellParams from a FloatCellParams, or from a LayerConfig-like object (gate_frac, z_frac,
    lut_bits, cell or cell_format; candidate and init_state optional). ConfigError if not float."""
    if isinstance(cfg, FloatCellParams):
        return cfg
    cf = getattr(cfg, "cell_format", None)
    if cf is None:
        cf = getattr(cfg, "cell", None)
    if cf is None:
        raise ConfigError(f"{type(cfg).__name__} has no cell format")
    return FloatCellParams(FloatFormat.parse(cf), gate_frac=cfg.gate_frac, z_frac=cfg.z_frac,
                           lut_bits=cfg.lut_bits, candidate=getattr(cfg, "candidate", "sigmoid"),
                           init_state=getattr(cfg, "init_state", "zero"))


def as_format(x) -> FloatFormat:
    """FloatFormat from a FloatFormat, FloatCellParams, LayerConfig-like or string."""
    if isinstance(x, FloatFormat):
        return x
    if isinstance(x, str):
        return FloatFormat.parse(x)
    if isinstance(x, tuple) and len(x) == 2:
        return FloatFormat(*x)
    return cell_params(x).fmt


# ---------------------------------------------------------------------------------------------
# integer helpers (int64 numpy)

def _i64(x):
    return np.asarray(x, dtype=np.int64)


def _bitlen(x):
    """bit_length of non-negative int64 values below 2**53 (exact through float64 frexp)."""
    return np.frexp(np.asarray(x, np.int64).astype(np.float64))[1].astype(np.int64)


def _fields(fmt: FloatFormat, word):
    w = _i64(word)
    if w.size and (w.min() < 0 or w.max() >= 1 << fmt.width):
        raise ValueError(f"cell words must be in 0..{(1 << fmt.width) - 1} ({fmt.width} bits)")
    m = fmt.man_bits
    s = (w >> (fmt.exp_bits + m)) & 1
    E = (w >> m) & ((1 << fmt.exp_bits) - 1)
    M = w & ((1 << m) - 1)
    return s, E, M


def decode_parts(fmt, word):
    """(sign 0/1, integer significand, exponent of its LSB) with value (-1)**s * sig * 2**lsb."""
    fmt = as_format(fmt)
    s, E, M = _fields(fmt, word)
    sig = M | ((E != 0).astype(np.int64) << fmt.man_bits)
    lsb = np.maximum(E, 1) - fmt.bias - fmt.man_bits
    return s, sig, lsb


def _pack(fmt: FloatFormat, sign, sig, q):
    """Word of (-1)**sign * sig * 2**q with sig in 0..2**(m+1) and q >= q_min (q = q_min when
    sig < 2**m), sig already rounded. Handles the carry to 2**(m+1), zero (+0) and saturation."""
    m = fmt.man_bits
    carry = sig >> (m + 1)
    sig = np.where(carry != 0, 1 << m, sig)
    normal = (sig >> m) & 1
    E = np.where(normal != 0, q + carry + m + fmt.bias, 0)
    word = (E << m) | (sig & ((1 << m) - 1))
    word = np.where(E > fmt.e_max_field, fmt.max_finite_word, word)
    return np.where(sig == 0, 0, word | (sign << (fmt.exp_bits + m)))


def _round_increment(guard, rest, lsb, rule: str = "rne"):
    """Round-up bit from the guard bit, the OR of all bits below it and the kept LSB. ``rule``
    other than "rne" exists only for fault injection in the tests."""
    if rule == "rne":
        return guard & (rest | lsb)
    if rule == "half_up":  # ties away from zero (magnitude): the classic wrong rounding
        return guard
    if rule == "truncate":
        return guard & 0
    raise ValueError(f"unknown rounding rule {rule!r}")


# ---------------------------------------------------------------------------------------------
# the fused cell update

def _check_gates(p: FloatCellParams, f, i, g):
    G = p.gate_frac
    top = 1 << (G + 1)
    for name, v in (("f", f), ("i", i)):
        if v.size and (v.min() < 0 or v.max() >= top):
            raise ValueError(f"gate {name} out of its {G + 1}-bit port range 0..{top - 1}")
    lo, hi = (-(1 << (G + 1)), (1 << (G + 1)) - 1) if p.candidate == "tanh" else (0, top - 1)
    if g.size and (g.min() < lo or g.max() > hi):
        raise ValueError(f"candidate g out of its port range {lo}..{hi}")


def _fused_update(p: FloatCellParams, f, c_word, i, g, rule: str = "rne"):
    """RNE(f*c + i*g) into the format, exactly; every step has its RTL twin in FloatCellUnit.

    Operands. A = f*c = a * 2**ea with a = f * sig(c) (< 2**(G+m+2)), ea = lsb(c) - G;
    B = i*g = b * 2**-2G. Each nonzero operand is normalised to W bits: X = x * 2**(h - W + 1)
    with 2**(W-1) <= x < 2**W, h its MSB exponent. Let "big" be the operand with the larger h,
    d = h_big - h_small >= 0, and work in units of 2**L, L = h_big - W:

        N = 2 x_big  +-  floor-or-ceil((2 x_small) / 2**d),   sticky = bits of 2 x_small shifted out

    so that |f*c + i*g| / 2**L = |N| + (something in (0, 1) iff sticky), exactly.

    Why this window loses nothing. The big operand is exact (2 x_big has its LSB at L + 1). If
    d <= 1 the small operand is exact too (sticky = 0) and N is the exact sum (any cancellation is
    exact). If d >= 2 then |small| < 2**(h_big - 1) <= |big| / 2, so |sum| >= 2**(h_big - 1), so
    the result's LSB exponent q >= h_big - 1 - m >= L + 1 because W >= m + 2: the guard bit (at
    q - 1 >= L) lies inside N and everything below it is only needed as "nonzero or not", which
    N's low bits OR sticky tell. With an effective subtraction the small operand is rounded up
    (ceil) and N is below the true value by a fraction, which is what makes the magnitude
    N + fraction exact. So rounding N with (guard, rest | sticky) at q is RNE of the exact sum.

    Rounding. q = max(L + bitlen(N) - 1 - m, q_min) (subnormals below the normal range),
    sig = round(N / 2**(q - L)) with RNE, a carry to 2**(m+1) bumps the exponent, overflow
    saturates, zero is +0.
    """
    fmt = p.fmt
    G, m, W = p.gate_frac, fmt.man_bits, p.window
    f, i, g = _i64(f), _i64(i), _i64(g)
    _check_gates(p, f, i, g)
    s, sig, lsb = decode_parts(fmt, c_word)
    f, s, sig, lsb, i, g = np.broadcast_arrays(f, s, sig, lsb, i, g)
    # A = f*c: exact product of the significand and the gate
    a = f * sig
    bla = _bitlen(a)
    ha = lsb - G + bla - 1
    xa = a << (W - bla)
    # B = i*g: exact, fixed point with 2G fraction bits
    b = i * g
    sb = (b < 0).astype(np.int64)
    bm = np.abs(b)
    blb = _bitlen(bm)
    hb = blb - 1 - 2 * G
    xb = bm << (W - blb)
    # big / small (a zero operand is never big unless both are zero; its x is 0 anyway)
    a_big = (a != 0) & ((bm == 0) | (ha >= hb))
    xbig, sbig, hbig = np.where(a_big, xa, xb), np.where(a_big, s, sb), np.where(a_big, ha, hb)
    xsm, ssm, hsm = np.where(a_big, xb, xa), np.where(a_big, sb, s), np.where(a_big, hb, ha)
    d = np.clip(hbig - hsm, 0, W + 3)
    ys = xsm << 1
    shifted = ys >> d
    sticky = ((shifted << d) != ys).astype(np.int64)
    big2 = xbig << 1
    nrel = np.where(sbig == ssm, big2 + shifted, big2 - shifted - sticky)
    neg = (nrel < 0).astype(np.int64)  # only possible when d <= 1 (exact, sticky = 0)
    nm = np.abs(nrel)
    sign = sbig ^ neg
    # normalise and round at q = L + sh, L = hbig - W
    bln = _bitlen(nm)
    sh = np.minimum(np.maximum(bln - 1 - m, fmt.q_min - hbig + W), W + 3)
    right = np.maximum(sh - 1, 0)
    kg = np.where(sh >= 1, nm >> right, nm << (np.maximum(-sh, 0) + 1))  # kept bits and the guard bit
    rest = ((kg << right) != nm) & (sh >= 1)
    guard, kept = kg & 1, kg >> 1
    inc = _round_increment(guard, rest.astype(np.int64) | sticky, kept & 1, rule)
    return _pack(fmt, sign, kept + inc, hbig - W + sh)


def float_cell_update(cfg, f, c_word, i, g):
    """c' word = RNE(f*c + i*g) (one rounding; subnormals kept; saturating; zero is +0).

    f, i: int gate values q (value q / 2**G); g: candidate q (signed for tanh); c_word: cell
    words (unsigned bit patterns). Broadcasting int64 arrays in, int64 words out."""
    return _fused_update(cell_params(cfg), f, c_word, i, g)


def float_cell_lut_address(cfg, c_word):
    """Sigmoid LUT address of c: clamp(round_half_up(c * 2**z_frac), -2**(L-1), 2**(L-1)-1) + 2**(L-1),
    exact. With v = +-sig and t = lsb + z_frac: round_half_up(v * 2**t) = v << t for t >= 0 and
    (v + 2**(-t-1)) >> -t otherwise; t is clamped to [-(m+3), L], which changes nothing (|v| <
    2**(m+1) rounds to 0 below, and any nonzero v saturates above)."""
    p = cell_params(cfg)
    m, L = p.fmt.man_bits, p.lut_bits
    s, sig, lsb = decode_parts(p.fmt, c_word)
    v = np.where(s != 0, -sig, sig)
    t = np.clip(lsb + p.z_frac, -(m + 3), L)
    y = np.where(t >= 0, v << np.maximum(t, 0), (v + (np.int64(1) << np.maximum(-t - 1, 0))) >> np.maximum(-t, 0))
    half = 1 << (L - 1)
    return np.clip(y, -half, half - 1) + half


def float_initial_state_word(cfg) -> int:
    """Reset word of c: +0 for init_state 'zero', 0.5 for 'half' (exact in every eXmY format: a
    normal number for e >= 3, the subnormal 2**(m-1) * 2**-m for e = 2)."""
    p = cell_params(cfg)
    if p.init_state == "half":
        w = int(encode_rne(p.fmt, 0.5))
        assert float(decode(p.fmt, w)) == 0.5
        return w
    return 0


def float_tap_format(cfg) -> dict:
    """Description of the cell tap for manifests (cf. hwrnn.formats.tap_formats)."""
    p = cell_params(cfg)
    f = p.fmt
    return {"format": str(f), "bits": f.width, "kind": "float", "exp_bits": f.exp_bits, "man_bits": f.man_bits,
            "bias": f.bias, "layout": "sign | exponent | mantissa (IEEE 754)",
            "update": "fused: RNE(f*c + i*g), one rounding", "rounding": "nearest even",
            "subnormals": "supported", "overflow": "saturate to max finite",
            "max_finite": f.max_finite, "zero": "+0 only (a -0 input reads as 0)",
            "reserved_words": "exponent all ones: never produced",
            "lut_address": f"clamp(round_half_up(c * 2^{p.z_frac})) + {1 << (p.lut_bits - 1)}"}


# ---------------------------------------------------------------------------------------------
# float64 helpers (tests, export, training)

def decode(fmt, word):
    """Value of cell words as float64 (exact: every eXmY value is a float64). -0 decodes to -0.0;
    the reserved words decode to the finite value the unit reads them as."""
    s, sig, lsb = decode_parts(fmt, word)
    v = np.ldexp(sig.astype(np.float64), lsb.astype(np.int32))
    return np.where(s != 0, -v, v)


def encode_rne(fmt, x):
    """Word of RNE(x) for float64 x, with the unit's rules: subnormals, saturation to max finite
    (also for +-inf), +0 for every zero. NaN is rejected (ValueError)."""
    fmt = as_format(fmt)
    x = np.asarray(x, dtype=np.float64)
    if np.any(np.isnan(x)):
        raise ValueError("cannot encode NaN into a cell format (it has no NaN)")
    m = fmt.man_bits
    sign = np.signbit(x).astype(np.int64)
    ax = np.abs(x)
    ax = np.where(np.isinf(ax), np.finfo(np.float64).max, ax)
    ex = np.frexp(ax)[1].astype(np.int64)  # ax = mant * 2**ex, mant in [0.5, 1)
    q = np.maximum(ex - 1 - m, fmt.q_min)  # LSB exponent of the result
    y = np.ldexp(ax, (-q).astype(np.int32))  # exact scaling, y < 2**(m+1)
    sig = np.rint(y).astype(np.int64)  # rint rounds half to even
    return _pack(fmt, sign, sig, q).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# torch helpers (training)

def _torch():
    import torch
    return torch


def round_to_format_torch(x, e: int, m: int, ste: bool = False):
    """RNE of a float32 tensor to eXmY, float32 out (every eXmY value with e <= 8, m <= 23 is a
    float32, subnormals included, so the output is exact). Same rules as the unit: subnormals
    kept, saturation to +-max finite (+-inf too), every zero is +0; NaN stays NaN.

    Internally the scaling x * 2**-q runs in float64 (bf16's q reaches -133, and 2**133 is not a
    float32); all steps are exact there (float32 -> float64 is exact, power-of-two scaling is
    exact, torch.round is round-half-to-even on an integer-valued grid), so the result equals
    ``decode(encode_rne(x))``.

    Exactness of a training cell update round(f*c + i*g). The products are exact in float32 when
    they fit 24 bits: f*c needs (G+1) + (m+1) bits (G=8: fp16 9+11 = 20, bf16 9+8 = 17, e4m3
    9+4 = 13: exact), i*g needs 2G+2 = 18 bits (exact; float32 also covers bf16's smallest f*c,
    2**(-133-G) >= 2**-149 for G <= 16). The SUM is not: with c up to 65504 in fp16 and i*g down
    to 2**-16, the exact sum spans up to 49 bits; float32 rounds it to 24 and a second rounding
    to m+1 bits can then be wrong (double rounding: e.g. fp16 1024 + 0.500030517578125 rounds to
    1024.5 in float32, a tie, RNE -> 1024, whereas the exact sum rounds to 1025). float64 holds
    that fp16 sum exactly (49 <= 53 bits), but not bf16's (c up to 2**128, i*g down to 2**-16).
    ``float_cell_update_torch`` therefore adds with TwoSum and rounds to odd before calling this
    function, which is exact for every format (see there). Use this function alone only for
    values that are already exact (e.g. c0, or weights/values you want in the format).

    ``ste=True`` returns x + (round(x) - x).detach() (straight-through gradient)."""
    torch = _torch()
    x = torch.as_tensor(x)
    if x.dtype != torch.float32:
        raise TypeError(f"round_to_format_torch wants float32, got {x.dtype}")
    xd = x.detach().to(torch.float64)
    r = torch.where(torch.isnan(xd), xd, _round64(xd, e, m)).to(torch.float32)
    if ste:
        return x + (r - x).detach()
    return r


def torch_work_dtype(p) -> str:
    """'float32' if the TwoSum/round-to-odd update is exact in float32 for these parameters, else
    'float64' (always exact for the validated ranges). Conditions: f*c exact (G+m+2 <= 24 and its
    LSB 2**(q_min - G) >= 2**-149), i*g exact (2G+2 <= 24 over the port range), round to odd at
    24 bits followed by RNE to m+1 bits needs 24 >= m + 3 and the target's LSB 2**q_min at least
    two bits above float32's 2**-149. (No overflow: |f*c + i*g| <= max finite + 1 < 2**128 for gates
    in 0..2**G and c a finite format value, which is what this helper takes.)"""
    p = cell_params(p)
    G, m, q_min = p.gate_frac, p.fmt.man_bits, p.fmt.q_min
    ok = G + m + 2 <= 24 and q_min - G >= -149 and 2 * G + 3 <= 24 and m + 3 <= 24 and q_min >= -147
    return "float32" if ok else "float64"


def float_cell_update_torch(cfg, f, c, i, g, work_dtype: str | None = None):
    """Exact c' = RNE(f*c + i*g) on float tensors (f, i, g values q / 2**G, c values in the format),
    float32 out, equal to decode(float_cell_update(...)) element for element.

    Method: A = f*c and B = i*g are exact in the work dtype (see torch_work_dtype); s = fl(A + B)
    and the exact error err = (A + B) - s by TwoSum (Knuth; exact in binary floating point with
    round-to-nearest, subnormals included); if err != 0 and s has an even last bit, s is replaced
    by its neighbour towards err. That is the sum rounded to odd, and rounding to odd at p bits
    followed by RNE at p' <= p - 2 bits equals RNE at p' directly (Boldo & Melquiond, "Emulation
    of FMA and correctly rounded sums: proved algorithms using rounding to odd", IEEE TC 2008).
    Gradients are not propagated (use an STE around it in training)."""
    torch = _torch()
    p = cell_params(cfg)
    work_dtype = work_dtype or torch_work_dtype(p)
    dt = {"float32": torch.float32, "float64": torch.float64}[work_dtype]
    ibits = {torch.float32: torch.int32, torch.float64: torch.int64}[dt]
    with torch.no_grad():
        f, c, i, g = (torch.as_tensor(t).to(dt) for t in (f, c, i, g))
        A = f * c
        B = i * g
        s = A + B
        bb = s - A
        err = (A - (s - bb)) + (B - bb)
        even = (s.view(ibits) & 1) == 0
        # neighbour towards err (not nextafter(s, s + err): s + err usually rounds back to s)
        toward = torch.where(err > 0, torch.full_like(s, math.inf), torch.full_like(s, -math.inf))
        s = torch.where((err != 0) & even, torch.nextafter(s, toward), s)
        e, m = p.fmt.exp_bits, p.fmt.man_bits
        if dt == torch.float64:
            # s is a float64 rounded to odd; _round64 is the float64 twin of round_to_format_torch
            return _round64(s, e, m).to(torch.float32)
        return round_to_format_torch(s, e, m)


def _round64(xd, e: int, m: int):
    torch = _torch()
    fmt = FloatFormat(e, m)
    ax = xd.abs().clamp(max=2.0 ** 1000)
    ex = torch.frexp(ax)[1].to(torch.int64)
    q = (ex - 1 - m).clamp(min=fmt.q_min, max=fmt.e_max_field - fmt.bias)
    r = torch.ldexp(torch.round(torch.ldexp(ax, (-q).to(torch.float64))), q.to(torch.float64))
    r = r.clamp(max=fmt.max_finite)
    r = torch.where(xd < 0, -r, r)
    return torch.where(r == 0, torch.zeros_like(r), r)
