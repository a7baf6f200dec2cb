"""Floating-point cell-state unit: c' = RNE(f*c + i*g) in an eXmY format (fused, one rounding) and
the sigmoid(c') LUT address. Combinational (latency 0).

Reference: hwrnn.floatcell.float_cell_update / float_cell_lut_address (format, rounding,
subnormal, overflow and signed-zero rules are documented there); tests/test_float_cell.py holds
them equal. Interface identical to rtl_gen.blocks.FixedCellUnit except that c and c_new are the
float words (unsigned bit patterns of 1 + e + m bits).

Datapath (each step mirrors hwrnn.floatcell._fused_update):
  decode c -> (s, sig, exponent) ; a = f * sig (exact) ; b = i * g (exact, sign-magnitude)
  normalise a and b to W bits (leading-one detector + left shift), pick the one with the larger
  MSB exponent ("big"), shift the other right by the exponent difference d (clamped to W + 3)
  collecting a sticky bit, add or subtract (ceil for the shifted operand when subtracting),
  take the magnitude, leading-one detect, shift to the result LSB q = max(msb - m, q_min),
  round to nearest even with guard / rest / sticky, carry into the exponent, saturate, pack.
Each step is a named submodule (dec, opa, opb, swap, align, norm, pack, addr): the natural places
for pipeline registers. The long path is multiplier -> leading-one detector -> shifter -> adder ->
leading-one detector -> shifter -> incrementer -> pack -> address shifter. Size (yosys generic
synth, LUT4, multipliers included): about 1090 for e4m3, 1550-1600 for bf16/fp16 (fixed:3.10:
about 660).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwrnn import formats as fm
from hwrnn import floatcell as fc
from hwrnn.config import ConfigError


def _bitlen(m: Module, x, width: int, name: str) -> Signal:
    """bit_length(x) of an unsigned value: a priority encoder (the last matching If wins)."""
    bl = Signal(range(width + 1), name=name)
    for k in range(width):
        with m.If(x[k]):
            m.d.comb += bl.eq(k + 1)
    return bl


def _clamp(v, lo: int, hi: int):
    return Mux(v < lo, lo, Mux(v > hi, hi, v))


class FloatCellUnit(wiring.Component):
    """Floating-point cell-state update and the sigmoid(c) LUT address (combinational).

    Ports: f, i In(unsigned(G+1)); g In(unsigned(G+1)) or In(signed(G+2)) (tanh candidate);
    c In(unsigned(1+e+m)) (cell word); c_new Out(unsigned(1+e+m)); c_addr Out(lut_bits), the
    address of sigmoid(c_new). ``cfg``: a LayerConfig with a float cell format, or a
    hwrnn.floatcell.FloatCellParams.
    """

    def __init__(self, cfg):
        try:
            p = fc.cell_params(cfg)
        except (ConfigError, AttributeError, TypeError) as e:
            self._MustUse__silence = True  # never elaborated: no "created but never used" warning
            if isinstance(e, ConfigError):
                raise ConfigError(f"FloatCellUnit: {e}") from None
            raise ConfigError(f"FloatCellUnit needs a LayerConfig or FloatCellParams ({e})") from None
        self.cfg, self.params = cfg, p
        w = p.fmt.width
        gs = signed(p.candidate_width) if p.candidate == "tanh" else unsigned(p.candidate_width)
        super().__init__({
            "f": In(unsigned(p.gate_width)),
            "i": In(unsigned(p.gate_width)),
            "g": In(gs),
            "c": In(unsigned(w)),
            "c_new": Out(unsigned(w)),
            "c_addr": Out(p.lut_bits),
        })

    @staticmethod
    def _stage(m: Module, name: str) -> Module:
        """A submodule per datapath stage: readable hierarchy in the Verilog, and the Amaranth
        simulator re-evaluates only the stages whose inputs changed (a single flat fragment is
        re-run once per signal level of the whole chain, which is about 10x slower)."""
        st = Module()
        m.submodules[name] = st
        return st

    def _round_increment(self, guard, rest, lsb):
        """Round-up bit: nearest, ties to even. (Tests override it to inject a rounding fault.)"""
        return guard & (rest | lsb)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        fmt = p.fmt
        e, mb, G, W = fmt.exp_bits, fmt.man_bits, p.gate_frac, p.window
        bias, q_min = fmt.bias, fmt.q_min
        wa = p.gate_width + mb + 1  # width of a = f * sig
        wb = 2 * G + 3 if p.candidate == "tanh" else 2 * G + 2  # width of |i * g|

        # exponent arithmetic: every exponent below lies well inside +-(2**e + 2W + 4G + 64)
        xw = fm.signed_width(-(1 << e) - 4 * W - 4 * G - 64, (1 << e) + 4 * W + 4 * G + 64)
        xs = signed(xw)

# ---- decode c ---------------------------------------------------------------------------
        st = self._stage(m, "dec")
        s_c = self.c[e + mb]
        E = self.c[mb:mb + e]
        sig = Signal(mb + 1)
        st.d.comb += sig.eq(Cat(self.c[:mb], E != 0))
        e_eff = Mux(E == 0, 1, E)

        # ---- operand A = f * c: a * 2**(e_eff - bias - m - G), normalised --------------------------
        st = self._stage(m, "opa")
        a = Signal(wa)
        st.d.comb += a.eq(self.f * sig)
        bla = _bitlen(st, a, wa, "bla")
        ha = Signal(xs)
        st.d.comb += ha.eq(e_eff + bla - (bias + mb + G + 1))
        la = Signal(range(W + 1))
        xa = Signal(W)
        st.d.comb += [la.eq(W - bla), xa.eq((a << la)[:W])]

        # ---- operand B = i * g: b * 2**-2G, sign-magnitude, normalised ---------------------------
        st = self._stage(m, "opb")
        b = Signal(signed(wb + 1))
        st.d.comb += b.eq(self.i * self.g)
        sb = Signal()
        bm = Signal(wb)
        st.d.comb += [sb.eq(b < 0), bm.eq(Mux(sb, -b, b))]
        blb = _bitlen(st, bm, wb, "blb")
        hb = Signal(xs)
        st.d.comb += hb.eq(blb - (1 + 2 * G))
        lb = Signal(range(W + 1))
        xb = Signal(W)
        st.d.comb += [lb.eq(W - blb), xb.eq((bm << lb)[:W])]

        # ---- swap: big has the larger MSB exponent (a zero operand is never big) -----------------
        st = self._stage(m, "swap")
        a_big = Signal()
        st.d.comb += a_big.eq((a != 0) & ((bm == 0) | (ha >= hb)))
        xbig, xsm = Signal(W), Signal(W)
        sbig, ssm = Signal(), Signal()
        hbig, hsm = Signal(xs), Signal(xs)
        st.d.comb += [
            xbig.eq(Mux(a_big, xa, xb)), xsm.eq(Mux(a_big, xb, xa)),
            sbig.eq(Mux(a_big, s_c, sb)), ssm.eq(Mux(a_big, sb, s_c)),
            hbig.eq(Mux(a_big, ha, hb)), hsm.eq(Mux(a_big, hb, ha)),
        ]

        # ---- align the small operand (sticky) and add -----------------------------------------------
        st = self._stage(m, "align")
        dmax = W + 3
        d = Signal(range(dmax + 1))
        diff = Signal(xs)
        st.d.comb += [diff.eq(hbig - hsm), d.eq(_clamp(diff, 0, dmax))]
        ys = Signal(W + 1)
        st.d.comb += ys.eq(xsm << 1)
        shifted = Signal(W + 1)
        st.d.comb += shifted.eq(ys >> d)
        sticky = Signal()
        st.d.comb += sticky.eq((shifted << d) != ys)
        nrel = Signal(signed(W + 4))
        with st.If(sbig == ssm):
            st.d.comb += nrel.eq((xbig << 1) + shifted)
        with st.Else():
            st.d.comb += nrel.eq((xbig << 1) - shifted - sticky)
        neg = Signal()
        nm = Signal(W + 2)
        sign = Signal()
        st.d.comb += [neg.eq(nrel < 0), nm.eq(Mux(neg, -nrel, nrel)), sign.eq(sbig ^ neg)]

        # ---- normalise to the result LSB q = L + sh, L = hbig - W, and round -------------------------
        st = self._stage(m, "norm")
        bln = _bitlen(st, nm, W + 2, "bln")
        sh_n = Signal(xs)
        sh_min = Signal(xs)
        sh = Signal(xs)
        st.d.comb += [sh_n.eq(bln - (1 + mb)), sh_min.eq(q_min + W - hbig)]
        st.d.comb += sh.eq(_clamp(Mux(sh_n > sh_min, sh_n, sh_min), -(mb + 1), W + 3))
        # kg = floor(nm * 2**-(sh-1)) (the kept bits and the guard bit): shift nm, padded with
        # m + 2 zeros, right by t = sh + m + 1 in 0..W + m + 4
        t = Signal(range(W + mb + 5))
        st.d.comb += t.eq(sh + (mb + 1))
        z2 = Signal(W + 2 + mb + 2)
        st.d.comb += z2.eq(nm << (mb + 2))
        kg = Signal(mb + 3)
        st.d.comb += kg.eq(z2 >> t)
        rest = Signal()
        st.d.comb += rest.eq((kg << t) != z2)
        guard, kept = kg[0], kg[1:]
        inc = Signal()
        st.d.comb += inc.eq(self._round_increment(guard, rest | sticky, kept[0]))
        sigr = Signal(mb + 2)
        st.d.comb += sigr.eq(kept + inc)
        carry = sigr[mb + 1]
        sigf = Signal(mb + 1)
        st.d.comb += sigf.eq(Mux(carry, 1 << mb, sigr[:mb + 1]))
        normal = sigf[mb]
        e_out = Signal(xs)
        st.d.comb += e_out.eq(hbig - W + sh + carry + (mb + bias))

        # ---- pack: subnormal E = 0, overflow saturates to max finite, zero is +0 ---------------------
        st = self._stage(m, "pack")
        e_field = Signal(e)
        mant = Signal(mb)
        with st.If(normal & (e_out > fmt.e_max_field)):
            st.d.comb += [e_field.eq(fmt.e_max_field), mant.eq((1 << mb) - 1)]
        with st.Else():
            st.d.comb += [e_field.eq(Mux(normal, e_out[:e], 0)), mant.eq(sigf[:mb])]
        st.d.comb += self.c_new.eq(Cat(mant, e_field, sign & (sigf != 0)))

        # ---- sigmoid(c_new) LUT address: clamp(round_half_up(c_new * 2**z_frac)) + 2**(L-1) ------------
        st = self._stage(m, "addr")
        L = p.lut_bits
        cn = self.c_new
        En = cn[mb:mb + e]
        sig_n = Signal(mb + 1)
        st.d.comb += sig_n.eq(Cat(cn[:mb], En != 0))
        v = Signal(signed(mb + 2))
        st.d.comb += v.eq(Mux(cn[e + mb], -sig_n, sig_n))
        tt = Signal(xs)
        st.d.comb += tt.eq(Mux(En == 0, 1, En) - (bias + mb - p.z_frac))
        tc = Signal(range(L + mb + 4))  # clamp(t, -(m+3), L) + m + 3
        st.d.comb += tc.eq(_clamp(tt, -(mb + 3), L) + (mb + 3))
        wv = Signal(signed(mb + 2 + L + mb + 3))
        st.d.comb += wv.eq(v << tc)
        y = Signal(signed(mb + 2 + L + 2))
        st.d.comb += y.eq(((wv >> (mb + 2)) + 1) >> 1)  # floor(v * 2**t + 1/2)
        half = 1 << (L - 1)
        st.d.comb += self.c_addr.eq((_clamp(y, -half, half - 1) + half)[:L])
        return m
