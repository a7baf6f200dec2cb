"""Floating-point cell state: hwrnn.floatcell (emulation) against independent references, the RTL
(rtl_gen.float_cell.FloatCellUnit) against the emulation, the torch helpers against numpy, and
injected rounding faults that these comparisons catch.

References independent of hwrnn.floatcell's integer code:
  * ``rne_fraction``: exact rational arithmetic (fractions.Fraction) and RNE written from the IEEE
    754 definition (nearest representable value, ties to the even significand), plus the unit's
    documented saturation and +0 rules;
  * ``ref_update_table``: the exact sum in float64 (asserted exact with TwoSum) rounded by
    searching the sorted table of every finite format value (a word's index in that table is the
    word itself, so "even significand" is "even index"); vectorised, used for the big sets.

What "all operand pairs" means for a fused unit: its operands are the cell word c and the gates f,
i, g (the adder's operands are A = f*c and B = i*g). For G = 3 the tests run the ENTIRE input space
(every c word x every port value of f, i and g, also beyond 2**G) through the RTL (Verilator) and
through the emulation against the table reference; for G = 8 (the default) every (f, c) pair of the
multiplier x a set of addends B. The Amaranth simulator runs a substantial subset (every c word x
a set of gates, fp16/bf16 edge cases and ties); Verilator runs the big sets on the emitted Verilog.
"""
from __future__ import annotations

import math
import subprocess
import time
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from amaranth.back import rtlil
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.sim import Simulator

from hwrnn import LayerConfig
from hwrnn import floatcell as fc
from hwrnn import formats as fm
from hwrnn.config import ConfigError
from hwrnn.floatcell import FloatCellParams, FloatFormat
from rtl_gen.blocks import FixedCellUnit
from rtl_gen.float_cell import FloatCellUnit

P = FloatCellParams


def pid(p: FloatCellParams) -> str:
    return f"{p.fmt}_G{p.gate_frac}_{p.candidate}"


# =============================================================================================
# independent references

def word_fraction(fmt: FloatFormat, w: int) -> Fraction:
    """Value of a word from the layout definition (reserved exponent read like a normal one)."""
    m, e = fmt.man_bits, fmt.exp_bits
    s, E, M = (w >> (e + m)) & 1, (w >> m) & ((1 << e) - 1), w & ((1 << m) - 1)
    if E == 0:
        v = Fraction(M) * Fraction(2) ** (1 - fmt.bias - m)
    else:
        v = (1 + Fraction(M, 1 << m)) * Fraction(2) ** (E - fmt.bias)
    return -v if s else v


def rne_fraction(fmt: FloatFormat, x: Fraction) -> tuple[int, bool]:
    """(word, was_tie) of RNE(x) from the IEEE definition, saturating at max finite, zero is +0."""
    m = fmt.man_bits
    if x == 0:
        return 0, False
    s = 1 if x < 0 else 0
    ax = abs(x)
    k = ax.numerator.bit_length() - ax.denominator.bit_length()  # then 2**k <= ax < 2**(k+1):
    while Fraction(2) ** k > ax:
        k -= 1
    while Fraction(2) ** (k + 1) <= ax:
        k += 1
    q = max(k - m, 1 - fmt.bias - m)  # spacing of the representable numbers at ax
    y = ax / Fraction(2) ** q
    n = math.floor(y)
    r = y - n
    tie = r == Fraction(1, 2)
    if r > Fraction(1, 2) or (tie and n % 2 == 1):
        n += 1
    if n == 0:
        return 0, tie
    val = n * Fraction(2) ** q
    maxf = (2 - Fraction(1, 1 << m)) * Fraction(2) ** fmt.bias
    if val > maxf:
        return fmt.max_finite_word | (s << (fmt.exp_bits + m)), tie
    while n >= 1 << (m + 1):
        n //= 2
        q += 1
    E, M = (q + m + fmt.bias, n - (1 << m)) if n >= 1 << m else (0, n)
    return (s << (fmt.exp_bits + m)) | (E << m) | M, tie


def ref_update_fraction(p: FloatCellParams, f, c, i, g) -> tuple[int, bool]:
    G = p.gate_frac
    x = Fraction(int(f), 1 << G) * word_fraction(p.fmt, int(c)) + Fraction(int(i) * int(g), 1 << (2 * G))
    return rne_fraction(p.fmt, x)


def ref_address_fraction(p: FloatCellParams, w: int) -> int:
    half = 1 << (p.lut_bits - 1)
    z = math.floor(word_fraction(p.fmt, w) * (1 << p.z_frac) + Fraction(1, 2))
    return min(max(z, -half), half - 1) + half


_TABLES = {}


def value_table(fmt: FloatFormat) -> np.ndarray:
    """Values of the non-negative finite words 0..max_finite_word, from the layout definition."""
    if fmt not in _TABLES:
        m = fmt.man_bits
        w = np.arange(fmt.max_finite_word + 1)
        E, M = w >> m, w & ((1 << m) - 1)
        sub = np.ldexp(M.astype(np.float64), 1 - fmt.bias - m)
        nor = np.ldexp((M + (1 << m)).astype(np.float64), (E - fmt.bias - m).astype(np.int32))
        t = np.where(E == 0, sub, nor)
        assert np.all(np.diff(t) > 0)
        _TABLES[fmt] = t
    return _TABLES[fmt]


def word_values(fmt: FloatFormat, w) -> np.ndarray:
    """float64 values of words (table lookup of the magnitude; reserved words computed)."""
    w = np.asarray(w, np.int64)
    m, e = fmt.man_bits, fmt.exp_bits
    mag = w & ((1 << (e + m)) - 1)
    E = mag >> m
    big = np.ldexp(((mag & ((1 << m) - 1)) + (1 << m)).astype(np.float64), (E - fmt.bias - m).astype(np.int32))
    t = value_table(fmt)
    v = np.where(mag <= fmt.max_finite_word, t[np.minimum(mag, len(t) - 1)], big)
    return np.where((w >> (e + m)) & 1, -v, v)


def exact_sum(p: FloatCellParams, f, c, i, g):
    """(S, exact): S = fl64(f*c + i*g) and whether that float64 sum is exact (TwoSum error 0)."""
    G = p.gate_frac
    A = np.asarray(f, np.float64) / 2.0 ** G * word_values(p.fmt, c)  # exact: <= 41 bits
    B = np.asarray(i, np.float64) * np.asarray(g, np.float64) / 2.0 ** (2 * G)
    S = A + B
    bb = S - A
    err = (A - (S - bb)) + (B - bb)
    return S, err == 0


def ref_round_table(fmt: FloatFormat, S) -> tuple[np.ndarray, np.ndarray]:
    """(words, tie) of RNE of exact float64 values S by searching the value table."""
    t = value_table(fmt)
    ax = np.abs(S)
    k = np.searchsorted(t, ax, side="right") - 1  # t[k] <= ax < t[k+1]
    top = k >= len(t) - 1
    k1 = np.minimum(k + 1, len(t) - 1)
    mid2 = t[k] + t[k1]  # exact (neighbours: at most m+2 bits); compare 2*ax with it exactly
    tie = (2 * ax == mid2) & ~top
    up = ((2 * ax > mid2) | (tie & (k % 2 == 1))) & ~top
    word = np.where(up, k1, k)
    word = np.where(word == 0, 0, word | (np.signbit(S).astype(np.int64) << (fmt.exp_bits + fmt.man_bits)))
    return word.astype(np.int64), tie


def ref_update_table(p, f, c, i, g):
    S, exact = exact_sum(p, f, c, i, g)
    assert exact.all(), "the float64 sum is not exact for this set; use the Fraction reference"
    return ref_round_table(p.fmt, S)


def emulate(p, f, c, i, g, chunk=1 << 16):
    """(c_new, c_addr) of the emulation, in chunks (keeps the int64 temporaries small)."""
    f, c, i, g = (np.asarray(x, np.int64) for x in np.broadcast_arrays(f, c, i, g))
    outs, addrs = [], []
    for s in range(0, len(f), chunk):
        w = fc.float_cell_update(p, f[s:s + chunk], c[s:s + chunk], i[s:s + chunk], g[s:s + chunk])
        outs.append(w)
        addrs.append(fc.float_cell_lut_address(p, w))
    return np.concatenate(outs), np.concatenate(addrs)


# =============================================================================================
# vector sets

def gate_port_range(p):
    top = 1 << (p.gate_frac + 1)
    return np.arange(top), (np.arange(-top, top) if p.candidate == "tanh" else np.arange(top))


def full_space(p):
    """Every (f, i, g, c) of the ports: (2**(G+1))**2 * |g| * 2**width vectors."""
    fi, gg = gate_port_range(p)
    f, i, g, c = np.meshgrid(fi, fi, gg, np.arange(1 << p.fmt.width), indexing="ij")
    return f.ravel(), c.ravel(), i.ravel(), g.ravel()


def addends(p, n_random, rng):
    """(i, g) pairs: zero, +-1 ulp of i*g, +-1, the port extremes, then random ones."""
    G = p.gate_frac
    one = 1 << G
    gmin = -one if p.candidate == "tanh" else 0
    fixed = [(0, 0), (1, 1), (one, one), (one, 1), (3, 5), (one - 1, one - 1), ((2 * one) - 1, 2 * one - 1)]
    if p.candidate == "tanh":
        fixed += [(1, -1), (one, -one), (one - 1, -(one - 1)), (2 * one - 1, -2 * one), (5, -3)]
    r = [(int(rng.integers(0, one + 1)), int(rng.integers(gmin, one + 1))) for _ in range(n_random)]
    return fixed + r


def all_fc_pairs(p, pairs, contract=False):
    """Every multiplier operand pair (f, c) (f over the port range, or 0..2**G) x the (i, g) pairs."""
    fi = np.arange((1 << p.gate_frac) + 1) if contract else gate_port_range(p)[0]
    ig = np.array(pairs, np.int64)
    f, c, k = np.meshgrid(fi, np.arange(1 << p.fmt.width), np.arange(len(ig)), indexing="ij")
    return f.ravel(), c.ravel(), ig[k.ravel(), 0], ig[k.ravel(), 1]


def edge_words(fmt: FloatFormat):
    m, e = fmt.man_bits, fmt.exp_bits
    one = fc.encode_rne(fmt, 1.0)
    mags = [0, 1, 2, 3, (1 << m) - 1, 1 << m, (1 << m) + 1, fmt.max_finite_word, fmt.max_finite_word - 1,
            int(one), int(one) + 1, int(one) - 1, int(fc.encode_rne(fmt, 0.5)), int(fc.encode_rne(fmt, 1024.0)),
            ((1 << e) - 1) << m, (((1 << e) - 1) << m) | 1, (1 << (e + m)) - 1]  # last three: reserved words
    return np.array(sorted({x | s for x in mags for s in (0, fmt.sign_bit)}), np.int64)


def edge_vectors(p):
    """Every edge word x every combination of edge gate values."""
    G = p.gate_frac
    one = 1 << G
    fs = [0, 1, one - 1, one, 2 * one - 1]
    gs = [0, 1, one - 1, one, 2 * one - 1] + ([-1, -one, -2 * one] if p.candidate == "tanh" else [])
    f, c, i, g = np.meshgrid(fs, edge_words(p.fmt), fs, gs, indexing="ij")
    return f.ravel(), c.ravel(), i.ravel(), g.ravel()


def random_vectors(p, n, rng):
    """Gates mostly in their contract (0..2**G), sometimes anywhere in the port; c uniform over all
    words (1/4) or with the exponent where f*c and i*g overlap, cancel and tie (3/4)."""
    fmt, G = p.fmt, p.gate_frac
    one = 1 << G
    gmin = -one if p.candidate == "tanh" else 0
    f = rng.integers(0, one + 1, n)
    i = rng.integers(0, one + 1, n)
    g = rng.integers(gmin, one + 1, n)
    port = rng.random(n) < 0.05
    f = np.where(port, rng.integers(0, 2 * one, n), f)
    f = np.where(rng.random(n) < 0.15, one, f)  # f = 1.0: A = c exactly
    lo = max(0, fmt.bias - 2 * G - 3)
    hi = min((1 << fmt.exp_bits) - 1, fmt.bias + 8)
    E = rng.integers(lo, hi + 1, n)
    c = (rng.integers(0, 2, n) << (fmt.width - 1)) | (E << fmt.man_bits) | rng.integers(0, 1 << fmt.man_bits, n)
    c = np.where(rng.random(n) < 0.25, rng.integers(0, 1 << fmt.width, n), c)
    return f, c.astype(np.int64), i, g


def tie_vectors(p, n, rng):
    """Vectors whose exact sum is a tie (half-way between two format values): from a large random
    candidate set biased to ties (f = 1, i*g = an odd multiple of half an ulp of c; or f*c alone
    with f = odd/2**k), selected with the table reference. Needs an exact float64 sum."""
    fmt, G, m = p.fmt, p.gate_frac, p.fmt.man_bits
    one = 1 << G
    N = 40 * n
    k = rng.integers(-2 * G + m + 1, min(fmt.bias, m + 2 * G) + 1, N)  # exponent of c: half ulp >= 2**-2G
    k = np.maximum(k, 1 - fmt.bias)
    E = k + fmt.bias
    c = (rng.integers(0, 2, N) << (fmt.width - 1)) | (E << m) | rng.integers(0, 1 << m, N)
    sh = np.maximum(k - m - 1 + 2 * G, 0)  # half ulp = 2**sh units of 2**-2G
    odd = 2 * rng.integers(0, 4, N) + 1
    P = odd << sh
    i = np.minimum(P, one)
    i = np.where(P % i == 0, i, 1)
    g = P // i
    ok = g <= (2 * one - 1)
    if p.candidate == "tanh":
        g = np.where(rng.random(N) < 0.5, -g, g)
    f = np.full(N, one)
    # second family: B = 0 and f*c itself a tie (f = odd * 2**-j, small subnormal/normal c)
    half = N // 2
    f[half:] = (2 * rng.integers(0, one // 2, N - half) + 1) << rng.integers(0, 2, N - half)
    i[half:] = 0
    c[half:] = np.where(rng.random(N - half) < 0.5, rng.integers(0, 1 << m, N - half) | (c[half:] & fmt.sign_bit),
                        c[half:])
    f, c, i, g = f[ok], c[ok].astype(np.int64), i[ok], g[ok]
    S, exact = exact_sum(p, f, c, i, g)
    _, tie = ref_round_table(fmt, S)
    sel = np.flatnonzero(tie & exact)[:n]
    assert len(sel) >= n // 2, f"only {len(sel)} ties found"
    return f[sel], c[sel], i[sel], g[sel]


# =============================================================================================
# format, helpers, validation

FORMATS = ["e4m3", "e5m2", "fp16", "bf16", "e2m3", "e3m1", "e8m23"]


def test_format_constants_and_validation():
    fp16, bf16 = FloatFormat.parse("fp16"), FloatFormat.parse("bf16")
    assert (fp16.width, fp16.bias, fp16.max_finite, fp16.min_subnormal) == (16, 15, 65504.0, 2.0 ** -24)
    assert (bf16.width, bf16.bias, bf16.min_subnormal) == (16, 127, 2.0 ** -133)
    assert bf16.max_finite == float(torch.finfo(torch.bfloat16).max)
    assert FloatFormat.parse("e4m3").max_finite == 240.0  # IEEE-like: the top exponent is reserved
    assert str(FloatFormat(5, 10)) == "fp16" and str(FloatFormat(4, 3)) == "e4m3"
    for e, m in [(1, 3), (9, 3), (5, 0), (5, 24), (5.0, 3), (True, 3)]:
        with pytest.raises(ConfigError):
            FloatFormat(e, m)
    with pytest.raises(ConfigError):
        FloatFormat.parse("fixed:3.10")
    with pytest.raises(ConfigError):
        P("fp16", gate_frac=0)
    with pytest.raises(ConfigError):
        P("fp16", candidate="relu")
    with pytest.raises(ConfigError):
        P("fp16", lut_bits=4, z_frac=5)


def test_config_shim_and_unit_validation():
    # a LayerConfig-like object (LayerConfig itself still rejects float cells)
    cfg = SimpleNamespace(gate_frac=7, z_frac=4, lut_bits=8, cell="bf16", candidate="tanh", init_state="half")
    p = fc.cell_params(cfg)
    assert p == P(FloatFormat(8, 7), gate_frac=7, z_frac=4, lut_bits=8, candidate="tanh", init_state="half")
    dut = FloatCellUnit(cfg)
    fixed = FixedCellUnit(LayerConfig(wbits=2, abits=2, hidden=4, candidate="tanh", gate_frac=7, z_frac=4, lut_bits=8))
    for name in ("f", "i", "g", "c_addr"):
        assert getattr(dut, name).shape() == getattr(fixed, name).shape(), name
    assert len(dut.c) == len(dut.c_new) == 16 and not dut.c.shape().signed
    for unit in (dut, fixed):  # both elaborate and convert (RTLIL needs no external tool)
        assert "module" in rtlil.convert(unit)
    with pytest.raises(ConfigError, match="not a floating-point format"):
        FloatCellUnit(LayerConfig(wbits=2, abits=2, hidden=4))
    with pytest.raises(ConfigError):
        FloatCellUnit(SimpleNamespace(gate_frac=8, z_frac=5, lut_bits=9, cell="e9m3"))
    with pytest.raises(ConfigError):
        FloatCellUnit(object())
    with pytest.raises(ValueError):
        fc.float_cell_update(p, [1 << 8], [0], [0], [0])  # f beyond its G+1-bit port
    with pytest.raises(ValueError):
        fc.float_cell_update(p, [0], [1 << 16], [0], [0])  # not a 16-bit word


@pytest.mark.parametrize("name", FORMATS)
def test_initial_state(name):
    fmt = FloatFormat.parse(name)
    assert fc.float_initial_state_word(P(fmt)) == 0
    w = fc.float_initial_state_word(P(fmt, init_state="half"))
    assert fc.decode(fmt, w) == 0.5 and word_fraction(fmt, w) == Fraction(1, 2)
    for e in range(2, 9):
        ff = FloatFormat(e, 2)
        assert fc.decode(ff, fc.float_initial_state_word(P(ff, init_state="half"))) == 0.5


def test_decode_encode_match_ieee_fp16_bf16():
    w = np.arange(1 << 16)
    fp16 = FloatFormat.parse("fp16")
    finite = ((w >> 10) & 31) != 31
    as_half = w[finite].astype(np.uint16).view(np.float16).astype(np.float64)
    np.testing.assert_array_equal(fc.decode(fp16, w[finite]), as_half)
    bf16 = FloatFormat.parse("bf16")
    finite = ((w >> 7) & 255) != 255
    tb = torch.from_numpy(w[finite].astype(np.uint16).view(np.int16)).view(torch.bfloat16).to(torch.float64).numpy()
    np.testing.assert_array_equal(fc.decode(bf16, w[finite]), tb)
    # encode_rne is numpy's correctly rounded float64 -> float16 conversion where that is finite
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 20000) * 2.0 ** rng.integers(-30, 17, 20000), fc.decode(fp16, w[::7])])
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    ok = np.isfinite(h) & (h != 0)
    np.testing.assert_array_equal(fc.encode_rne(fp16, x[ok]), h[ok].view(np.uint16))
    # zeros are +0, overflow and inf saturate, NaN is refused
    assert list(fc.encode_rne(fp16, [-0.0, -1e-30, 0.0, 1e9, -np.inf, 65519.99, 65520.0])) == \
        [0, 0, 0, 0x7BFF, 0xFBFF, 0x7BFF, 0x7BFF]
    with pytest.raises(ValueError):
        fc.encode_rne(fp16, [np.nan])
    # bf16: torch's float32 -> bfloat16 conversion is RNE too
    xf = torch.from_numpy((rng.normal(0, 1, 20000) * 2.0 ** rng.integers(-120, 120, 20000)).astype(np.float32))
    tb = xf.to(torch.bfloat16)
    words = tb.view(torch.int16).numpy().astype(np.int64) & 0xFFFF
    np.testing.assert_array_equal(fc.encode_rne(bf16, xf.double().numpy()), words)


def test_bitlen_is_exact():
    v = np.array([0, 1, 2, 3] + [(1 << k) + d for k in range(2, 50) for d in (-1, 0, 1)], np.int64)
    assert list(fc._bitlen(v)) == [int(x).bit_length() for x in v]


# =============================================================================================
# emulation against the independent references

@pytest.mark.parametrize("p", [P("e4m3"), P("e5m2", candidate="tanh"), P("e4m3", candidate="tanh"),
                               P("e2m3", candidate="tanh")],
                         ids=pid)
def test_emulation_all_fc_pairs_vs_table(p):
    """Every (f, c) multiplier pair (f in 0..2**G) x 23-28 addends, against the table."""
    rng = np.random.default_rng(1)
    f, c, i, g = all_fc_pairs(p, addends(p, 16, rng), contract=True)
    want, tie = ref_update_table(p, f, c, i, g)
    got, _ = emulate(p, f, c, i, g)
    np.testing.assert_array_equal(got, want)
    assert tie.sum() > 500  # the set contains plenty of ties


@pytest.mark.parametrize("p", [P("e4m3", gate_frac=3, candidate="tanh"), P("e5m2", gate_frac=3)], ids=pid)
def test_emulation_full_input_space_vs_table(p):
    f, c, i, g = full_space(p)
    want, _ = ref_update_table(p, f, c, i, g)
    np.testing.assert_array_equal(emulate(p, f, c, i, g)[0], want)


@pytest.mark.parametrize("p", [P("fp16"), P("fp16", candidate="tanh"), P("bf16", candidate="tanh"), P("bf16")], ids=pid)
def test_emulation_random_edges_ties(p):
    """Large random sample, edge cases, ties: table reference where the float64 sum is exact
    (always for fp16), Fraction reference for the rest (bf16's wide exponent range)."""
    rng = np.random.default_rng(2)
    sets = [random_vectors(p, 300_000, rng), edge_vectors(p), tie_vectors(p, 3000, rng)]
    f, c, i, g = (np.concatenate(x) for x in zip(*sets))
    got, _ = emulate(p, f, c, i, g)
    S, exact = exact_sum(p, f, c, i, g)
    if p.fmt.exp_bits == 5:
        assert exact.all()
    want, tie = ref_round_table(p.fmt, S)
    np.testing.assert_array_equal(got[exact], want[exact])
    assert tie[exact].sum() >= 3000
    # the inexact ones (and a sample of everything) by exact rationals
    idx = np.concatenate([np.flatnonzero(~exact)[:6000], rng.integers(0, len(f), 1500)])
    for k in idx:
        assert got[k] == ref_update_fraction(p, f[k], c[k], i[k], g[k])[0], (f[k], hex(c[k]), i[k], g[k])
    # coverage: subnormal results, zero results from cancellation, saturation-free max finite
    fmt = p.fmt
    mag = got & (fmt.sign_bit - 1)
    assert np.sum((mag > 0) & (mag < 1 << fmt.man_bits)) > 100
    assert np.sum(mag == 0) > 100 and not np.any(got == fmt.sign_bit)  # never -0
    assert np.sum(mag == fmt.max_finite_word) > 10


@pytest.mark.parametrize("p", [P("e8m23", gate_frac=16, candidate="tanh", z_frac=8, lut_bits=12),
                               P("e3m1", gate_frac=1), P("e2m3", candidate="tanh")], ids=pid)
def test_emulation_extreme_widths_vs_fraction(p):
    """The widest window (G=16, m=23: 41-bit operands in int64) and the narrowest formats."""
    rng = np.random.default_rng(3)
    f, c, i, g = (np.concatenate(x) for x in zip(random_vectors(p, 4000, rng), edge_vectors(p)))
    got, _ = emulate(p, f, c, i, g)
    for k in range(len(f)):
        assert got[k] == ref_update_fraction(p, f[k], c[k], i[k], g[k])[0], (f[k], hex(c[k]), i[k], g[k])


def test_saturation_and_signed_zero_rules():
    p = P("e2m3", candidate="tanh")  # max finite 3.75, ulp 0.25 at the top
    fmt = p.fmt
    mx = fmt.max_finite_word
    one = 256
    upd = lambda f, c, i, g: int(fc.float_cell_update(p, [f], [c], [i], [g])[0])  # noqa: E731
    assert upd(one, mx, one, one) == mx  # 3.75 + 1 saturates
    assert upd(one, mx | fmt.sign_bit, one, -one) == mx | fmt.sign_bit
    assert upd(one, mx, 32, 1 << 10 >> 3) == mx  # 3.75 + 0.125: a tie, rounds to 4 -> saturates
    assert upd(511, mx, 0, 0) == mx  # f beyond 1 (port range)
    assert upd(one, ((1 << fmt.exp_bits) - 1) << 3, 0, 0) == mx  # reserved word in, max finite out
    # zeros
    assert upd(one, fmt.sign_bit, 0, 0) == 0  # -0 * 1 + 0 = +0
    assert upd(0, fmt.sign_bit | 5, 0, 0) == 0
    one_w = int(fc.encode_rne(fmt, 1.0))
    assert upd(one, one_w, one, -one) == 0  # exact cancellation -> +0
    fp16 = P("fp16")
    # -0.5 ulp of the smallest subnormal rounds to zero: +0 (IEEE would say -0)
    assert int(fc.float_cell_update(fp16, [128], [0x8001], [0], [0])[0]) == 0
    assert int(fc.float_cell_update(fp16, [128], [0x8003], [0], [0])[0]) == 0x8002  # 1.5 ulp -> 2 (even)
    assert int(fc.float_cell_update(fp16, [128], [0x0005], [0], [0])[0]) == 0x0002  # 2.5 ulp -> 2 (even)
    # the addend alone lands in fp16's subnormal range: i*g = 2**-16 = 256 * 2**-24
    assert int(fc.float_cell_update(fp16, [0], [0x3C00], [1], [1])[0]) == 256


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "fp16", "bf16", "e2m3"])
def test_lut_address_all_words_vs_fraction(name):
    p = P(name, z_frac=5, lut_bits=9)
    w = np.arange(1 << p.fmt.width)
    got = fc.float_cell_lut_address(p, w)
    step = 1 if p.fmt.width <= 8 else 3
    for k in w[::step]:
        assert got[k] == ref_address_fraction(p, int(k)), hex(k)
    # same rule as the fixed-point path: a fixed:I.F value n / 2**F gives the same address
    q = P(name, z_frac=3, lut_bits=7)
    vals = fc.decode(q.fmt, w)
    fin = np.isfinite(vals) & (np.abs(vals) < 2 ** 12) & (np.abs(vals * 2 ** 10) == np.floor(np.abs(vals * 2 ** 10)))
    cfg = LayerConfig(wbits=2, abits=2, hidden=4, cell="fixed:12.10", z_frac=3, lut_bits=7)
    np.testing.assert_array_equal(fc.float_cell_lut_address(q, w[fin]),
                                  fm.cell_lut_address(cfg, np.round(vals[fin] * 2 ** 10).astype(np.int64)))


# =============================================================================================
# torch helpers (training)

@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3", "e5m2", "e2m3", "e8m23"])
def test_round_to_format_torch_vs_numpy(name):
    fmt = FloatFormat.parse(name)
    rng = np.random.default_rng(4)
    with np.errstate(over="ignore"):
        x = (rng.normal(0, 1, 100_000) * 2.0 ** rng.integers(-150, 130, 100_000)).astype(np.float32)
    # ties between neighbouring finite values (float32-exact when m <= 22), edges, inf
    if fmt.width <= 16:
        t = value_table(fmt)
        k = rng.integers(0, len(t) - 1, 20_000)
        mids = ((t[k] + t[k + 1]) / 2).astype(np.float32)
        assert np.all(mids.astype(np.float64) == (t[k] + t[k + 1]) / 2)
        x = np.concatenate([x, mids, -mids])
    x = np.concatenate([x, np.float32([0.0, -0.0, np.inf, -np.inf, fmt.max_finite, -fmt.max_finite,
                                       fmt.min_subnormal, fmt.min_subnormal / 2, 3e38, -3.4e38])])
    got = fc.round_to_format_torch(torch.from_numpy(x), fmt.exp_bits, fmt.man_bits)
    assert got.dtype == torch.float32
    want = fc.decode(fmt, fc.encode_rne(fmt, x.astype(np.float64)))
    np.testing.assert_array_equal(got.double().numpy(), want)
    assert not torch.signbit(got[got == 0]).any()  # +0 only
    assert torch.isnan(fc.round_to_format_torch(torch.tensor([float("nan")]), 5, 10)).all()
    # straight-through gradient
    xt = torch.tensor([0.1, 1.7], requires_grad=True)
    fc.round_to_format_torch(xt, fmt.exp_bits, fmt.man_bits, ste=True).sum().backward()
    assert xt.grad.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("p", [P("fp16"), P("fp16", candidate="tanh"), P("bf16", candidate="tanh"), P("e4m3"),
                               P("e5m2")],
                         ids=pid)
def test_float_cell_update_torch_is_exact(p):
    """TwoSum + round-to-odd in float32 (and float64) equals the integer emulation; the naive
    float32 computation round(fl32(f*c + i*g)) does not (double rounding)."""
    assert fc.torch_work_dtype(p) == "float32"
    rng = np.random.default_rng(5)
    f, c, i, g = (np.concatenate(x) for x in zip(random_vectors(p, 60_000, rng), tie_vectors(p, 1000, rng)))
    keep = (f <= 1 << p.gate_frac) & ((c & (p.fmt.sign_bit - 1)) <= p.fmt.max_finite_word)  # the helper's contract
    f, c, i, g = f[keep], c[keep], i[keep], g[keep]
    G = p.gate_frac
    want = fc.decode(p.fmt, fc.float_cell_update(p, f, c, i, g))
    ft, it, gt = (torch.from_numpy(x / 2.0 ** G).float() for x in (f, i, g))
    ct = torch.from_numpy(fc.decode(p.fmt, c)).float()
    for dt in ("float32", "float64"):
        got = fc.float_cell_update_torch(p, ft, ct, it, gt, work_dtype=dt)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.double().numpy(), want, err_msg=dt)
    # the documented double-rounding counterexamples: fp16 c + 0.500030517578125 (i*g = 226*145 /
    # 2**16 = 0.5 + 2**-15) for every even c in 1024..2046: exact -> c + 1, float32 sum -> c + 0.5,
    # a tie -> c. The naive float32 update fails each of them, the helper none.
    if str(p.fmt) == "fp16":
        c = fc.encode_rne(p.fmt, np.arange(1024, 2048, 2.0))
        f, i, g = np.full(len(c), 256), np.full(len(c), 226), np.full(len(c), 145)
        want = fc.decode(p.fmt, fc.float_cell_update(p, f, c, i, g))
        assert np.all(want == np.arange(1025, 2049, 2.0))
        ft, it, gt = (torch.from_numpy(x / 2.0 ** G).float() for x in (f, i, g))
        ct = torch.from_numpy(fc.decode(p.fmt, c)).float()
        got = fc.float_cell_update_torch(p, ft, ct, it, gt)
        np.testing.assert_array_equal(got.double().numpy(), want)
        naive = fc.round_to_format_torch(ft * ct + it * gt, p.fmt.exp_bits, p.fmt.man_bits)
        assert np.all(naive.double().numpy() == want - 1)


# =============================================================================================
# injected rounding faults: the comparisons above catch them

@pytest.mark.parametrize("p", [P("fp16"), P("e4m3", candidate="tanh"), P("bf16")], ids=pid)
def test_injected_fault_in_emulation_is_caught(p):
    rng = np.random.default_rng(6)
    ties = tie_vectors(p, 500, rng)
    rnd = random_vectors(p, 50_000, rng)
    for vecs in (ties, rnd):
        f, c, i, g = vecs
        S, exact = exact_sum(p, f, c, i, g)
        f, c, i, g, S = f[exact], c[exact], i[exact], g[exact], S[exact]
        want, _ = ref_round_table(p.fmt, S)
        assert np.array_equal(fc._fused_update(p, f, c, i, g), want)
        for rule in ("half_up", "truncate"):
            bad = fc._fused_update(p, f, c, i, g, rule=rule)
            assert not np.array_equal(bad, want), f"fault {rule} not caught"
    # on the tie set, half-up rounding is wrong for about half of the vectors
    f, c, i, g = ties
    want, _ = ref_round_table(p.fmt, exact_sum(p, f, c, i, g)[0])
    bad = np.sum(fc._fused_update(p, f, c, i, g, rule="half_up") != want)
    assert bad > 100


class HalfUpFloatCellUnit(FloatCellUnit):
    """Injected fault: rounds ties away from zero instead of to even."""

    def _round_increment(self, guard, rest, lsb):
        return guard


class TruncatingFloatCellUnit(FloatCellUnit):
    """Injected fault: truncates (drops the guard bit)."""

    def _round_increment(self, guard, rest, lsb):
        return guard & 0


# =============================================================================================
# RTL in the Amaranth simulator

class _Packed(Elaboratable):
    """The DUT with its four inputs driven from one signal, so one ctx.set settles the design once
    per vector (four separate sets settle it four times)."""

    def __init__(self, dut):
        self.dut = dut
        self.widths = [len(dut.f), len(dut.i), len(dut.g), len(dut.c)]
        self.vec = Signal(sum(self.widths))

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = d = self.dut
        o = 0
        for port, w in zip((d.f, d.i, d.g, d.c), self.widths):
            m.d.comb += port.eq(self.vec[o:o + w])
            o += w
        return m


def run_comb_packed(dut, f, c, i, g):
    """The run_comb pattern of test_rtl_blocks (ctx.set, await ctx.delay, ctx.get) over vectors."""
    top = _Packed(dut)
    wf, wi, wg, _ = top.widths
    packed = [int(a) | (int(b) << wf) | ((int(d) & ((1 << wg) - 1)) << (wf + wi)) | (int(e) << (wf + wi + wg))
              for a, b, d, e in zip(f, i, g, c)]
    got_c, got_a = [], []
    sim = Simulator(top)

    async def tb(ctx):
        for v in packed:
            ctx.set(top.vec, v)
            await ctx.delay(1e-9)
            got_c.append(ctx.get(dut.c_new))
            got_a.append(ctx.get(dut.c_addr))

    sim.add_testbench(tb)
    sim.run()
    return np.array(got_c, np.int64), np.array(got_a, np.int64)


def check_rtl(dut_cls, p, vecs):
    f, c, i, g = vecs
    got_c, got_a = run_comb_packed(dut_cls(p), f, c, i, g)
    want_c, want_a = emulate(p, f, c, i, g)
    return got_c, got_a, want_c, want_a


@pytest.mark.parametrize("p", [P("e4m3"), P("e5m2", candidate="tanh")], ids=pid)
def test_rtl_pysim_every_word(p):
    """Every c word x 5 gate combinations (identity, f = 1 - 2**-G with a 1-ulp addend, halving
    with a big addend, f only, the port maxima)."""
    one = 1 << p.gate_frac
    gmax = 2 * one - 1
    combos = [(one, 0, 0), (one - 1, 1, 1), (one // 2, one, one), (3, 0, 0), (2 * one - 1, 2 * one - 1, gmax)]
    if p.candidate == "tanh":
        combos[2] = (one // 2, one, -one)
    w = np.arange(1 << p.fmt.width)
    f, c, i, g = (np.concatenate(x) for x in zip(*[(np.full_like(w, a), w, np.full_like(w, b), np.full_like(w, d))
                                                   for a, b, d in combos]))
    got_c, got_a, want_c, want_a = check_rtl(FloatCellUnit, p, (f, c, i, g))
    np.testing.assert_array_equal(got_c, want_c)
    np.testing.assert_array_equal(got_a, want_a)


@pytest.mark.parametrize("p", [P("fp16", candidate="tanh"), P("bf16"), P("e2m3", candidate="tanh"),
                               P("e8m23", gate_frac=16, candidate="tanh", z_frac=8, lut_bits=12)], ids=pid)
def test_rtl_pysim_random_edges_ties(p):
    rng = np.random.default_rng(7)
    ef, ec, ei, eg = edge_vectors(p)
    pick = rng.choice(len(ef), min(len(ef), 300), replace=False)
    sets = [random_vectors(p, 300, rng), (ef[pick], ec[pick], ei[pick], eg[pick])]
    if p.fmt.exp_bits <= 8 and p.fmt.man_bits <= 10:
        sets.append(tie_vectors(p, 100, rng))
    vecs = tuple(np.concatenate(x) for x in zip(*sets))
    got_c, got_a, want_c, want_a = check_rtl(FloatCellUnit, p, vecs)
    np.testing.assert_array_equal(got_c, want_c)
    np.testing.assert_array_equal(got_a, want_a)


def run_pipelined_packed(dut, f, c, i, g):
    """Stream one vector per clock through the pipelined unit; c_new of vector k is read c_latency
    edges after it was applied, c_addr addr_latency edges later still."""
    top = _Packed(dut)
    wf, wi, wg, _ = top.widths
    packed = [int(a) | (int(b) << wf) | ((int(d) & ((1 << wg) - 1)) << (wf + wi)) | (int(e) << (wf + wi + wg))
              for a, b, d, e in zip(f, i, g, c)]
    lc, la = dut.c_latency, dut.c_latency + dut.addr_latency
    got_c, got_a = [], []
    sim = Simulator(top)
    sim.add_clock(1e-6)

    async def tb(ctx):
        for t in range(len(packed) + la):
            if t < len(packed):
                ctx.set(top.vec, packed[t])
            await ctx.tick()
            if lc - 1 <= t < len(packed) + lc - 1:
                got_c.append(ctx.get(dut.c_new))
            if la - 1 <= t < len(packed) + la - 1:
                got_a.append(ctx.get(dut.c_addr))

    sim.add_testbench(tb)
    sim.run()
    return np.array(got_c, np.int64), np.array(got_a, np.int64)


@pytest.mark.parametrize("p", [P("fp16", candidate="tanh"), P("bf16"), P("e4m3"), P("e5m2", candidate="tanh")], ids=pid)
def test_rtl_pipelined_unit_equals_emulation(p):
    """The pipelined unit (as the core builds it): every stage boundary registers exactly the values
    the next stages use, so a new vector every cycle comes out c_latency cycles later, unchanged."""
    from hwrnn.cell_state import FloatingPointCell
    rng = np.random.default_rng(11)
    ef, ec, ei, eg = edge_vectors(p)
    pick = rng.choice(len(ef), min(len(ef), 200), replace=False)
    vecs = tuple(np.concatenate(x) for x in zip(random_vectors(p, 300, rng), (ef[pick], ec[pick], ei[pick], eg[pick])))
    dut = FloatCellUnit(p, pipelined=True)
    assert (dut.c_latency, dut.addr_latency) == (FloatingPointCell.update_stages, FloatingPointCell.address_stages)
    got_c, got_a = run_pipelined_packed(dut, *vecs)
    want_c, want_a = emulate(p, *vecs)
    np.testing.assert_array_equal(got_c, want_c)
    np.testing.assert_array_equal(got_a, want_a)


@pytest.mark.parametrize("fault", [HalfUpFloatCellUnit, TruncatingFloatCellUnit], ids=lambda c: c.__name__)
def test_injected_fault_in_rtl_is_caught(fault):
    p = P("fp16", candidate="tanh")
    rng = np.random.default_rng(8)
    vecs = tuple(np.concatenate(x) for x in zip(tie_vectors(p, 150, rng), random_vectors(p, 150, rng)))
    got_c, _, want_c, _ = check_rtl(FloatCellUnit, p, vecs)
    np.testing.assert_array_equal(got_c, want_c)  # the correct unit passes this very comparison
    bad_c, _, _, _ = check_rtl(fault, p, vecs)
    assert np.sum(bad_c != want_c) > 20  # ... and the faulty one fails it


# =============================================================================================
# RTL as emitted Verilog, in Verilator: the big sets

VL_UNITS = {
    "e4m3_g3_tanh": P("e4m3", gate_frac=3, candidate="tanh"),
    "e5m2_g3": P("e5m2", gate_frac=3),
    "e4m3_g8": P("e4m3"),
    "e5m2_g8_tanh": P("e5m2", candidate="tanh"),
    "fp16_g8": P("fp16"),
    "fp16_g8_tanh": P("fp16", candidate="tanh"),
    "bf16_g8_tanh": P("bf16", candidate="tanh"),
    "e2m3_g8_tanh": P("e2m3", candidate="tanh"),
    "e8m23_g16_tanh": P("e8m23", gate_frac=16, candidate="tanh", z_frac=8, lut_bits=12),
    "e4m3_g4_tanh": P("e4m3", gate_frac=4, candidate="tanh"),
}

_HARNESS = """// stdin: uint32 quadruples (f, i, g, c) as raw port bits; stdout: uint32 pairs (c_new, c_addr)
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#include "Vfc_top.h"
#include "verilated.h"
int main(int argc, char** argv) {
    int sel = atoi(argv[1]);
    Vfc_top top;
    const size_t CH = 1 << 16;
    std::vector<uint32_t> in(4 * CH), out(2 * CH);
    size_t n;
    while ((n = fread(in.data(), 16, CH, stdin)) > 0) {
        switch (sel) {
CASES
        default: return 2;
        }
        fwrite(out.data(), 8, n, stdout);
    }
    top.final();
    return 0;
}
"""


class _VlTop(Elaboratable):
    def __init__(self):
        self.units = {name: FloatCellUnit(p) for name, p in VL_UNITS.items()}
        self.ports = []
        for k, u in enumerate(self.units.values()):
            for n in ("f", "i", "g", "c", "c_new", "c_addr"):
                s = Signal(len(getattr(u, n)), name=f"u{k}_{n}")
                setattr(self, f"u{k}_{n}", s)
                self.ports.append(s)

    def elaborate(self, platform):
        m = Module()
        for k, u in enumerate(self.units.values()):
            m.submodules[f"u{k}"] = u
            for n in ("f", "i", "g", "c"):
                m.d.comb += getattr(u, n).eq(getattr(self, f"u{k}_{n}"))
            for n in ("c_new", "c_addr"):
                m.d.comb += getattr(self, f"u{k}_{n}").eq(getattr(u, n))
        return m


@pytest.fixture(scope="session")
def verilated(tmp_path_factory):
    """All VL_UNITS in one Verilator binary; returns run(name, f, c, i, g). The C++ compiles
    through the repo's build cache (sim.buildcache: about 25 s cold, a few seconds warm)."""
    from amaranth.back import verilog  # noqa: I001

    from sim.buildcache import compiler_cache_env
    from sim.runner import simulator_available, toolchain_env
    why = simulator_available("verilator")
    if why:
        pytest.skip(why)
    env = toolchain_env("verilator")
    env.update(compiler_cache_env(env))
    d = tmp_path_factory.mktemp("float_cell_vl")
    top = _VlTop()
    src = verilog.convert(top, name="fc_top", ports=top.ports)
    (d / "fc_top.v").write_text(src)
    cases = "\n".join(
        f"        case {k}: for (size_t j = 0; j < n; ++j) {{ top.u{k}_f = in[4*j]; top.u{k}_i = in[4*j+1]; "
        f"top.u{k}_g = in[4*j+2]; top.u{k}_c = in[4*j+3]; top.eval(); out[2*j] = top.u{k}_c_new; "
        f"out[2*j+1] = top.u{k}_c_addr; }} break;" for k in range(len(VL_UNITS)))
    (d / "harness.cpp").write_text(_HARNESS.replace("CASES", cases))
    flags = ["-Wno-fatal", "-Wno-lint", "-MAKEFLAGS", "OPT_GLOBAL=-O0 OPT_SLOW=-O0 OPT_FAST=-O1"]
    r = subprocess.run(["verilator", "--cc", "--exe", "--build", "-j", "2", "--top-module", "fc_top", "fc_top.v",
                        "harness.cpp", "-o", "fc_sim", *flags], cwd=d, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    exe = d / "obj_dir" / "fc_sim"
    names = list(VL_UNITS)

    def run(name, f, c, i, g):
        p = VL_UNITS[name]
        gm = (1 << p.candidate_width) - 1
        inp = np.stack([f, i, np.asarray(g) & gm, c], 1).astype(np.uint32)
        res = subprocess.run([str(exe), str(names.index(name))], input=inp.tobytes(), capture_output=True)
        assert res.returncode == 0, res.stderr
        out = np.frombuffer(res.stdout, np.uint32).reshape(-1, 2).astype(np.int64)
        assert len(out) == len(f)
        return out[:, 0], out[:, 1]

    return run


def _vl_check(verilated, name, vecs):
    p = VL_UNITS[name]
    f, c, i, g = vecs
    got_c, got_a = verilated(name, f, c, i, g)
    want_c, want_a = emulate(p, f, c, i, g)
    bad = np.flatnonzero((got_c != want_c) | (got_a != want_a))
    first = [(f[k], hex(c[k]), i[k], g[k]) for k in bad[:3]]
    assert len(bad) == 0, f"{len(bad)} mismatches, first (f, c, i, g) = {first}"
    return want_c


@pytest.mark.parametrize("name", ["e4m3_g3_tanh", "e5m2_g3"])
def test_rtl_verilator_full_input_space(verilated, name):
    """The entire input space of the unit (G = 3): every c word and every port value of f, i, g."""
    _vl_check(verilated, name, full_space(VL_UNITS[name]))


@pytest.mark.parametrize("name", ["e4m3_g8", "e5m2_g8_tanh", "e2m3_g8_tanh"])
def test_rtl_verilator_all_fc_pairs(verilated, name):
    """Every multiplier operand pair (f over the port, every c word) x 10-15 addends i*g."""
    p = VL_UNITS[name]
    _vl_check(verilated, name, all_fc_pairs(p, addends(p, 3, np.random.default_rng(9))))


@pytest.mark.parametrize("name", ["fp16_g8", "fp16_g8_tanh", "bf16_g8_tanh", "e8m23_g16_tanh"])
def test_rtl_verilator_random_edges_ties(verilated, name):
    p = VL_UNITS[name]
    rng = np.random.default_rng(10)
    sets = [random_vectors(p, 200_000, rng), edge_vectors(p)]
    if p.fmt.man_bits <= 10:
        sets.append(tie_vectors(p, 3000, rng))
    _vl_check(verilated, name, tuple(np.concatenate(x) for x in zip(*sets)))


@pytest.mark.slow
def test_rtl_verilator_full_input_space_g4(verilated):
    """16.7 M vectors: the entire input space for G = 4 (e4m3, tanh)."""
    _vl_check(verilated, "e4m3_g4_tanh", full_space(VL_UNITS["e4m3_g4_tanh"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["e4m3_g8", "e5m2_g8_tanh"])
def test_rtl_verilator_all_fc_pairs_many_addends(verilated, name):
    p = VL_UNITS[name]
    _vl_check(verilated, name, all_fc_pairs(p, addends(p, 120, np.random.default_rng(11))))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fp16_g8_tanh", "bf16_g8_tanh"])
def test_rtl_verilator_random_large(verilated, name):
    p = VL_UNITS[name]
    _vl_check(verilated, name, random_vectors(p, 5_000_000, np.random.default_rng(12)))


# =============================================================================================
# speed of the emulation (the integer model runs it for every unit and step of an LM evaluation)

def test_emulation_speed():
    p = P("fp16")
    rng = np.random.default_rng(13)
    B, H = 10, 450
    f, i, g = (rng.integers(0, 257, (B, H)) for _ in range(3))
    c = fc.encode_rne(p.fmt, rng.normal(0, 2, (B, H)))
    steps = 200
    t = time.perf_counter()
    for _ in range(steps):
        c = fc.float_cell_update(p, f, c, i, g)
        fc.float_cell_lut_address(p, c)
    rate = steps * B * H / (time.perf_counter() - t)
    assert rate > 5e5, f"{rate:.0f} cell updates per second"


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 11, 16, 29])
def test_bitlen_leading_one_detector(width):
    """rtl_gen.float_cell._bitlen (log-depth) equals int.bit_length, exhaustively up to 11 bits."""
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    from rtl_gen.float_cell import _bitlen

    m = Module()
    x = Signal(width)
    bl = _bitlen(m, x, width, "bl")
    rng = np.random.default_rng(width)
    vals = range(1 << width) if width <= 11 else \
        [0, (1 << width) - 1] + [int(rng.integers(0, 1 << width)) >> int(rng.integers(0, width)) for _ in range(2000)]
    got = []

    async def tb(ctx):
        for v in vals:
            ctx.set(x, v)
            got.append(ctx.get(bl))

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    assert got == [v.bit_length() for v in vals]
