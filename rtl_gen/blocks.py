"""Datapath blocks of the LSTM core. Each is an Amaranth 0.5 ``wiring.Component`` whose reference
function lives in hwrnn (formats.py / datapath.py); tests/test_rtl_blocks.py holds them equal.

Latency of each block is given in its docstring (0 = combinational).
"""
from __future__ import annotations

from amaranth.hdl import Const, Mux, Signal, Module, signed, unsigned, Cat
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwrnn import formats as fm
from hwrnn.config import ConfigError, LayerConfig
from hwrnn.quant import levels


def adder_tree(values):
    """Balanced sum of a list of Values (widths grow as Amaranth's + does)."""
    vals = list(values)
    if not vals:
        return Const(0, 1)
    while len(vals) > 1:
        nxt = [vals[i] + vals[i + 1] for i in range(0, len(vals) - 1, 2)]
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return vals[0]


def popcount(value, width: int):
    """Number of ones of ``value[0:width]`` as a balanced adder tree."""
    return adder_tree([value[i] for i in range(width)])


def _check_pos(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")


class BitPlaneDot(wiring.Component):
    """Popcount MAC lane (combinational, latency 0).

    ``dot = sum_s n_s * a_s`` for SIMD columns, computed as
    ``sum_{p,q} popcount(w_plane_p & a_plane_q) << (p + q)``.
    ``w``: ``planes`` bit planes of SIMD bits (bit p*SIMD + s = bit (plane_base + p) of n_s);
    ``a``: SIMD activation codes of abits each (bit s*abits + q);
    ``shift``: the weight plane index of plane 0 (bit-serial mode; 0 in parallel mode).
    Reference: hwrnn.datapath.bitplane_dot.
    """

    def __init__(self, simd: int, planes: int, abits: int, max_shift: int = 0):
        for n, v in (("simd", simd), ("planes", planes), ("abits", abits)):
            _check_pos(n, v)
        _check_pos("max_shift", max_shift, 0)
        self.simd, self.planes, self.abits, self.max_shift = simd, planes, abits, max_shift
        top = simd * ((1 << planes) - 1) * ((1 << abits) - 1) << max_shift
        self.out_width = fm.unsigned_width(top)
        super().__init__({
            "w": In(simd * planes),
            "a": In(simd * abits),
            "shift": In(range(max_shift + 1)),
            "dot": Out(self.out_width),
        })

    def elaborate(self, platform):
        m = Module()
        S, A = self.simd, self.abits
        aplanes = []
        for q in range(A):
            ap = Signal(S, name=f"a_plane{q}")
            m.d.comb += ap.eq(Cat(*[self.a[s * A + q] for s in range(S)]))
            aplanes.append(ap)
        terms = []
        for p in range(self.planes):
            wp = self.w[p * S:(p + 1) * S]
            for q in range(A):
                both = Signal(S, name=f"and_w{p}_a{q}")  # a Signal, so each bit slice is cheap
                m.d.comb += both.eq(wp & aplanes[q])
                terms.append(popcount(both, S) << (p + q))
        total = adder_tree(terms)
        if self.max_shift:
            m.d.comb += self.dot.eq(total << self.shift)
        else:
            m.d.comb += self.dot.eq(total)
        return m


class ActivationSum(wiring.Component):
    """Sum of SIMD activation codes (combinational). Reference: numpy sum."""

    def __init__(self, simd: int, abits: int):
        _check_pos("simd", simd)
        _check_pos("abits", abits)
        self.simd, self.abits = simd, abits
        super().__init__({"a": In(simd * abits), "sum": Out(fm.unsigned_width(simd * ((1 << abits) - 1)))})

    def elaborate(self, platform):
        m = Module()
        A = self.abits
        m.d.comb += self.sum.eq(adder_tree([self.a[s * A:(s + 1) * A] for s in range(self.simd)]))
        return m


class ScaleBias(wiring.Component):
    """Scale-and-bias unit plus LUT address (latency 1: the product is registered).

    ``addr = clamp(rshift_round(acc * mult + bias, R), -2**(L-1), 2**(L-1)-1) + 2**(L-1)``.
    ``mult`` is an input (loadable multiplier register), R is fixed at generation.
    Reference: hwrnn.formats.preactivation + lut_address.
    """

    def __init__(self, cfg: LayerConfig, acc_width: int, mult_width: int, bias_width: int, shift: int):
        _check_pos("acc_width", acc_width)
        _check_pos("mult_width", mult_width)
        _check_pos("bias_width", bias_width)
        _check_pos("shift", shift)
        self.cfg, self.shift_r = cfg, shift
        self.acc_w, self.mult_w, self.bias_w = acc_width, mult_width, bias_width
        super().__init__({
            "acc": In(signed(acc_width)),
            "mult": In(unsigned(mult_width)),
            "bias": In(signed(bias_width)),
            "valid": In(1),
            "addr": Out(cfg.lut_bits),
        })

    def elaborate(self, platform):
        m = Module()
        prod_w = self.acc_w + self.mult_w + 2
        prod_w = max(prod_w, self.bias_w + 2)
        prod = Signal(signed(prod_w))
        m.d.sync += prod.eq(self.acc * self.mult + self.bias + (1 << (self.shift_r - 1)))
        z = Signal(signed(prod_w))
        m.d.comb += z.eq(prod >> self.shift_r)
        half = 1 << (self.cfg.lut_bits - 1)
        clamped = Mux(z < -half, -half, Mux(z > half - 1, half - 1, z))
        m.d.comb += self.addr.eq((clamped + half)[:self.cfg.lut_bits])
        return m


class LookupTable(wiring.Component):
    """A ROM holding one table from hwrnn.formats (latency 1: synchronous read).

    ``data`` is signed when the table has negative entries (tanh)."""

    def __init__(self, contents, addr_bits: int):
        contents = [int(v) for v in contents]
        if len(contents) != 1 << addr_bits:
            raise ConfigError(f"LUT has {len(contents)} entries, expected {1 << addr_bits}")
        lo, hi = min(contents), max(contents)
        self.shape = signed(fm.signed_width(lo, hi)) if lo < 0 else unsigned(fm.unsigned_width(hi))
        self.contents = contents
        self.addr_bits = addr_bits
        super().__init__({"addr": In(addr_bits), "data": Out(self.shape)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.rom = rom = Memory(shape=self.shape, depth=len(self.contents), init=self.contents)
        rd = rom.read_port()
        m.d.comb += [rd.addr.eq(self.addr), self.data.eq(rd.data)]
        return m


class FixedCellUnit(wiring.Component):
    """Fixed-point cell-state update and the sigmoid(c) LUT address (combinational).

    ``c_new = sat(rshift_round(f*c << (P-G-F) + i*g << (P-2G), P-F))``;
    ``c_addr = lut_address(rshift_round(c_new, F - z_frac))``.
    Interface shared with any other cell-state unit: inputs f, i, g, c (cell word), outputs c_new
    (cell word) and c_addr. Reference: hwrnn.formats.cell_update / cell_lut_address.
    """

    def __init__(self, cfg: LayerConfig):
        if cfg.cell_format.kind != "fixed":
            raise ConfigError(f"FixedCellUnit needs a fixed:I.F cell format, got {cfg.cell}")
        self.cfg = cfg
        cw = cfg.cell_format.width
        gs = signed(fm.candidate_width(cfg)) if cfg.candidate == "tanh" else unsigned(fm.candidate_width(cfg))
        super().__init__({
            "f": In(unsigned(fm.gate_width(cfg))),
            "i": In(unsigned(fm.gate_width(cfg))),
            "g": In(gs),
            "c": In(signed(cw)),
            "c_new": Out(signed(cw)),
            "c_addr": Out(cfg.lut_bits),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        G, F = cfg.gate_frac, cfg.cell_format.frac_bits
        P = max(G + F, 2 * G)
        s = Signal(signed(cfg.cell_format.width + 2 * G + 8 + (P - G - F) + (P - 2 * G)))
        m.d.comb += s.eq(((self.f * self.c) << (P - G - F)) + ((self.i * self.g) << (P - 2 * G)))
        sh = P - F
        r = Signal.like(s)
        if sh:
            m.d.comb += r.eq((s + (1 << (sh - 1))) >> sh)
        else:
            m.d.comb += r.eq(s)
        lo, hi = fm.cell_limits(cfg)
        m.d.comb += self.c_new.eq(Mux(r < lo, lo, Mux(r > hi, hi, r)))
        d = F - cfg.z_frac
        zc = Signal(signed(cfg.cell_format.width + 1))
        if d:
            m.d.comb += zc.eq((self.c_new + (1 << (d - 1))) >> d)
        else:
            m.d.comb += zc.eq(self.c_new)
        half = 1 << (cfg.lut_bits - 1)
        clamped = Mux(zc < -half, -half, Mux(zc > half - 1, half - 1, zc))
        m.d.comb += self.c_addr.eq((clamped + half)[:cfg.lut_bits])
        return m


class HRequantizer(wiring.Component):
    """h = rshift_round(Ka * o * sc, 2G), an abits code (combinational).
    Reference: hwrnn.formats.h_code."""

    def __init__(self, cfg: LayerConfig):
        self.cfg = cfg
        super().__init__({
            "o": In(unsigned(fm.gate_width(cfg))),
            "sc": In(unsigned(fm.gate_width(cfg))),
            "h": Out(cfg.abits),
        })

    def elaborate(self, platform):
        m = Module()
        G = self.cfg.gate_frac
        Ka = levels(self.cfg.abits)
        p = Signal(2 * (G + 1) + self.cfg.abits + 1)
        m.d.comb += p.eq(self.o * self.sc * Ka + (1 << (2 * G - 1)))
        m.d.comb += self.h.eq(p >> (2 * G))
        return m
