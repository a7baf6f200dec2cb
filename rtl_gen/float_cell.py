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
For 150 MHz on ECP5 no stage chains two carry-chain operations after wide logic: |g| is taken
before the multiplier, the sum's magnitude comes from three adders side by side (no negation after
the subtraction), leading-one detectors are log-depth, "bits shifted out" and "bits above t" are
mask tests rather than second shifters or comparators, and constants are folded into registered
exponent terms (eb, thr) off the significand path.
Each step is a named submodule (dec, opa, opb, normab, swap, align, add, norm, round, carry, pack,
addr_dec, addr_shift, addr_clamp): the natural places for pipeline registers. The long path is
multiplier -> leading-one detector -> shifter -> adder -> leading-one detector -> shifter ->
incrementer -> pack -> address shifter. Size (yosys generic
synth, LUT4, multipliers included): about 1090 for e4m3, 1550-1600 for bf16/fp16 (fixed:3.10:
about 660).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwrnn import formats as fm
from hwrnn import floatcell as fc
from hwrnn.config import ConfigError
from hwrnn.cell_state import FloatingPointCell
from hwrnn.resources import Built, Mult, Reg, float_cell_cost

from .multiplier import RegisteredMultiplier, check_dsp

def _bitlen(m: Module, x, width: int, name: str) -> Signal:
    """bit_length(x) of an unsigned value of `width` bits (0 for x == 0): a log-depth leading-one
    detector (x padded to a power of two; each level picks the upper half when it is non-zero, so
    the MSB index is built bit by bit, MSB first), clog2(width) mux levels deep.
    Continuous assignments only (an ``always @*`` block whose inputs never change after time 0
    would stay X in Icarus)."""
    size = 1 << max(0, (width - 1).bit_length())
    bits = [x[k] if k < width else Const(0, 1) for k in range(size)]

    def lead(lo: int, n: int):
        """(non-zero, index of the leading one within bits[lo:lo+n]) for n a power of two."""
        if n == 2:
            return bits[lo] | bits[lo + 1], bits[lo + 1]
        half = n // 2
        nz_lo, i_lo = lead(lo, half)
        nz_hi, i_hi = lead(lo + half, half)
        return nz_lo | nz_hi, Cat(Mux(nz_hi, i_hi, i_lo), nz_hi)

    if size == 1:
        nz, idx = bits[0], Const(0, 1)
    else:
        nz, idx = lead(0, size)
    bl = Signal(range(width + 1), name=name)
    m.d.comb += bl.eq(Mux(nz, idx + 1, 0))
    return bl


def _below(n, width: int):
    """A `width`-bit mask with ones at the bit positions k < n (a thermometer code of n)."""
    return Cat(*(n > k for k in range(width)))


def _clamp(v, lo: int, hi: int):
    return Mux(v < lo, lo, Mux(v > hi, hi, v))


class FloatCellUnit(wiring.Component):
    """Floating-point cell-state update and the sigmoid(c) LUT address (combinational).

    Ports: f, i In(unsigned(G+1)); g In(unsigned(G+1)) or In(signed(G+2)) (tanh candidate);
    c In(unsigned(1+e+m)) (cell word); c_new Out(unsigned(1+e+m)); c_addr Out(lut_bits), the
    address of sigmoid(c_new). ``cfg``: a LayerConfig with a float cell format, or a
    hwrnn.floatcell.FloatCellParams.
    ``pipelined``: registers at the p0..p11 boundaries (``c_latency``/``addr_latency`` as in
    hwrnn.datapath), the two products through rtl_gen.multiplier.RegisteredMultiplier (p0 | p1)
    elaborated as ``dsp`` says (None behavioural, "ecp5" MULT18X18D); combinational otherwise.
    """

    def __init__(self, cfg, pipelined: bool = False, dsp: str | None = None):
        self.dsp = check_dsp(dsp)
        self.pipelined = bool(pipelined)
        self.c_latency = FloatingPointCell.update_stages if self.pipelined else 0
        self.addr_latency = FloatingPointCell.address_stages if self.pipelined else 0
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

    @classmethod
    def built(cls, cfg, pipelined: bool = True) -> Built:
        """Registers of the p0..p11 cuts (with the multipliers' operand and product registers, p0 |
        p1), declared as ``elaborate`` builds them, with an earlier per-cut estimate of what yosys
        keeps (used off ECP5). The unit is priced as a whole by its synth_ecp5 measurement
        (hwrnn.resources.float_cell_cost: LUT4 and CCU2C on every family, scaled like the fitted
        unit; flip-flops on ECP5, where the per-cut estimate counted 516 for fp16 against 409 kept,
        the multipliers' registers being inside the MULT18X18Ds)."""
        p = fc.cell_params(cfg)
        e, mb, G, W, L = p.fmt.exp_bits, p.fmt.man_bits, p.gate_frac, p.window, p.lut_bits
        gw, cand, width = p.gate_width, p.candidate_width, p.fmt.width
        wa = gw + mb + 1
        wb = 2 * G + 3 if p.candidate == "tanh" else 2 * G + 2
        xw = fm.signed_width(-(1 << e) - 4 * W - 4 * G - 64, (1 << e) + 4 * W + 4 * G + 64)

        def rb(n):  # width of Signal(range(n))
            return max(1, (n - 1).bit_length())

        t = rb(W + mb + 5)
        cuts = (  # (name, declared, kept)
            ("operands", gw + (mb + 1) + gw + cand + width + 1, 2 * gw + cand + width),  # a_r, b_r x 2; p0: c, sign
            ("products", wa + wb + e + 2, wa + wb + e + 2),                            # p_r x 2; p1
            ("p2", wa + rb(wa + 1) + e + wb + rb(wb + 1) + 2, wa + rb(wa + 1) + xw + wb + rb(wb + 1) + xw + 2),
            ("p3", 2 * W + 2 * xw + 3, 2 * W + 2 * xw + 3),
            ("p4", 2 * W + 2 + xw + rb(W + 4), 2 * W + 2 + xw + rb(W + 4)),
            ("p5", 2 * W + 1 + 3 + xw, 2 * W + 1 + 3 + xw),
            ("p6", W + 2 + 2 + t + xw + 2, W + 2 + 2 + xw),
            ("p7", W + 2 + 2 + xw + 2 + t, W + 2 + 2 + 2 * xw + t),
            ("p8", mb + 2 + 2 + xw + 2 + t, mb + 2 + 2 + 2 * xw),
            ("p9", mb + 1 + xw + 1, mb + 1 + xw + 1),
            ("p10", width + mb + 2 + rb(L + mb + 4), width + mb + 2 + rb(L + mb + 4)),  # c_new, address terms
            ("p11", mb + 2 + L + 2, mb + 2 + L + 2),
        )
        # f x significand, i x |g| (|g| taken before the multiplier: unsigned, candidate width)
        mults = (Mult("mul_a", gw, False, mb + 1, False), Mult("mul_b", gw, False, cand, False))
        stages = FloatingPointCell.update_stages + FloatingPointCell.address_stages
        return Built(regs=tuple(Reg(n, d, k) for n, d, k in cuts) if pipelined else (), mults=mults,
                     stages=stages if pipelined else 0, dsp_packing=False, logic={"units": 1},
                     measured=float_cell_cost(e, mb))

    @staticmethod
    def _stage(m: Module, name: str) -> Module:
        """A submodule per datapath stage: readable hierarchy in the Verilog, and the Amaranth
        simulator re-evaluates only the stages whose inputs changed (a single flat fragment is
        re-run once per signal level of the whole chain, which is about 10x slower)."""
        st = Module()
        m.submodules[name] = st
        return st

    def _cut(self, m: Module, name: str, *values):
        """A pipeline boundary: registered copies of ``values`` when pipelined, else the values."""
        if not self.pipelined:
            return values if len(values) > 1 else values[0]
        regs = []
        for k, v in enumerate(values):
            r = Signal(v.shape(), name=f"{name}_{k}")
            m.d.sync += r.eq(v)
            regs.append(r)
        self._cuts += 1
        return tuple(regs) if len(regs) > 1 else regs[0]

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

        self._cuts = 0
        # ---- decode c, the two exact products ----------------------------------------------------
        st = self._stage(m, "dec")
        # B = i * g as sign and magnitude: i >= 0, so |i * g| = i * |g| and the sign is g's (a zero
        # product is positive); taking |g| before the multiplier keeps the negation off the
        # product's path
        if p.candidate == "tanh":
            g_neg = Signal()
            g_mag = Signal(unsigned(self.g.shape().width))
            sb0 = Signal()
            st.d.comb += [g_neg.eq(self.g < 0), g_mag.eq(Mux(g_neg, -self.g, self.g)),
                          sb0.eq(g_neg & (self.i != 0))]
        else:
            g_mag, sb0 = self.g, Const(0, 1)
        if self.pipelined:
            # operands registered next to the multipliers (DSP blocks), products registered (p0 | p1);
            # the significand is decoded before the operand register
            sig = Signal(mb + 1)
            st.d.comb += sig.eq(Cat(self.c[:mb], self.c[mb:mb + e] != 0))
            m.submodules.mul_a = mul_a = RegisteredMultiplier(self.f.shape(), sig.shape(), unsigned(wa), dsp=self.dsp)
            m.submodules.mul_b = mul_b = RegisteredMultiplier(self.i.shape(), g_mag.shape(), unsigned(wb),
                                                              dsp=self.dsp)
            m.d.comb += [mul_a.a.eq(self.f), mul_a.b.eq(sig), mul_b.a.eq(self.i), mul_b.b.eq(g_mag)]
            c_in, sb_p0 = self._cut(m, "p0", self.c, sb0)
        else:
            c_in = self.c
        s_c0 = c_in[e + mb]
        E = c_in[mb:mb + e]
        e_eff0 = Signal(range(1 << e))
        st.d.comb += e_eff0.eq(Mux(E == 0, 1, E))
        if self.pipelined:
            a, bm = mul_a.p, mul_b.p
            e_eff, s_c, sb = self._cut(m, "p1", e_eff0, s_c0, sb_p0)
        else:
            sig = Signal(mb + 1)
            st.d.comb += sig.eq(Cat(c_in[:mb], E != 0))
            a, bm = Signal(wa), Signal(wb)
            st.d.comb += [a.eq(self.f * sig), bm.eq(self.i * g_mag)]
            e_eff, s_c, sb = e_eff0, s_c0, sb0

        # ---- operand A = f * c: a * 2**(e_eff - bias - m - G); B = i * g: bm * 2**-2G, sign sb -------
        # (the leading-one detectors right after the multipliers; the exponents are formed next stage)
        st = self._stage(m, "opa")
        bla = _bitlen(st, a, wa, "bla")
        st = self._stage(m, "opb")
        blb = _bitlen(st, bm, wb, "blb")
        a, bla, e_eff, bm, blb, sb, s_c = self._cut(m, "p2", a, bla, e_eff, bm, blb, sb, s_c)

        # ---- normalise both operands to W bits; which one is big (a zero operand never is) ----------
        st = self._stage(m, "normab")
        ha, hb = Signal(xs), Signal(xs)  # MSB exponents of A and B
        st.d.comb += [ha.eq(e_eff + bla - (bias + mb + G + 1)), hb.eq(blb - (1 + 2 * G))]
        la = Signal(range(W + 1))
        xa = Signal(W)
        st.d.comb += [la.eq(W - bla), xa.eq((a << la)[:W])]
        lb = Signal(range(W + 1))
        xb = Signal(W)
        st.d.comb += [lb.eq(W - blb), xb.eq((bm << lb)[:W])]
        a_big0 = Signal()
        st.d.comb += a_big0.eq((a != 0) & ((bm == 0) | (ha >= hb)))
        xa, xb, ha, hb, sb, s_c, a_big = self._cut(m, "p3", xa, xb, ha, hb, sb, s_c, a_big0)

        # ---- swap: big has the larger MSB exponent; exponent difference ---------------------------
        st = self._stage(m, "swap")
        xbig, xsm = Signal(W), Signal(W)
        sbig, ssm = Signal(), Signal()
        hbig, hsm = Signal(xs), Signal(xs)
        st.d.comb += [
            xbig.eq(Mux(a_big, xa, xb)), xsm.eq(Mux(a_big, xb, xa)),
            sbig.eq(Mux(a_big, s_c, sb)), ssm.eq(Mux(a_big, sb, s_c)),
            hbig.eq(Mux(a_big, ha, hb)), hsm.eq(Mux(a_big, hb, ha)),
        ]
        dmax = W + 3
        d = Signal(range(dmax + 1))
        diff = Signal(xs)
        st.d.comb += [diff.eq(hbig - hsm), d.eq(_clamp(diff, 0, dmax))]
        xbig, xsm, sbig, ssm, hbig, d = self._cut(m, "p4", xbig, xsm, sbig, ssm, hbig, d)

        # ---- align the small operand (sticky), then add -----------------------------------------------
        st = self._stage(m, "align")
        ys = Signal(W + 1)
        st.d.comb += ys.eq(xsm << 1)
        shifted = Signal(W + 1)
        st.d.comb += shifted.eq(ys >> d)
        sticky = Signal()
        # the bits shifted out are those of ys below bit d: a mask compare, not a second shifter
        st.d.comb += sticky.eq((ys & _below(d, W + 1)) != 0)
        xbig, shifted, sticky, sbig, ssm, hbig = self._cut(m, "p5", xbig, shifted, sticky, sbig, ssm, hbig)
        st = self._stage(m, "add")
        # the magnitude of x2 +- shifted (x2 = xbig << 1) with three adders side by side, no negation
        # after the subtraction: x2 - shifted - sticky < 0 only when d = 0 (then sticky = 0 and the
        # magnitude is shifted - x2); for d >= 1 x2 >= 2**W > shifted
        x2 = Signal(W + 1)
        st.d.comb += x2.eq(xbig << 1)
        total, diff, rdiff = Signal(W + 2), Signal(signed(W + 3)), Signal(W + 1)
        st.d.comb += [total.eq(x2 + shifted), diff.eq(x2 - shifted - sticky), rdiff.eq(shifted - x2)]
        neg = Signal()
        nm = Signal(W + 2)
        sign = Signal()
        st.d.comb += [neg.eq((sbig != ssm) & (diff < 0)),
                      nm.eq(Mux(sbig == ssm, total, Mux(neg, rdiff, diff[:W + 1]))), sign.eq(sbig ^ neg)]
        # from hbig alone (off the nm path): thr = clamp(sh_min, -(m+1), W+3) + m + 1 with
        # sh_min = q_min + W - hbig, the smallest shift the format allows; eb = hbig - W + bias - 1
        sh_min = Signal(signed(xw + 2))
        st.d.comb += sh_min.eq(q_min + W - hbig)
        thr0 = Signal(range(W + mb + 5))
        st.d.comb += thr0.eq(_clamp(sh_min, -(mb + 1), W + 3) + (mb + 1))
        eb0 = Signal(signed(xw + 2))
        st.d.comb += eb0.eq(hbig + (bias - 1 - W))
        nm, sign, sticky, thr, eb = self._cut(m, "p6", nm, sign, sticky, thr0, eb0)

        # ---- normalise to the result LSB q = L + sh, L = hbig - W, and round -------------------------
        # sh = clamp(max(bln - (m+1), sh_min), -(m+1), W+3) = max(bln - (m+1), clamp(sh_min, ...))
        # because bln - (m+1) lies in [-(m+1), W+1-m]; the shift used below is t = sh + m + 1
        st = self._stage(m, "norm")
        bln = _bitlen(st, nm, W + 2, "bln")
        # kg = floor(nm * 2**-(sh-1)) (the kept bits and the guard bit): shift nm, padded with
        # m + 2 zeros, right by t = sh + m + 1 in 0..W + m + 4
        t = Signal(range(W + mb + 5))
        # bln > thr  <=>  nm has a one at a bit position >= thr: a mask test, no comparator after
        # the leading-one detector
        above = Signal()
        st.d.comb += above.eq((nm & ~_below(thr, W + 2)) != 0)
        st.d.comb += t.eq(Mux(above, bln, thr))
        nm, sign, sticky, eb, t = self._cut(m, "p7", nm, sign, sticky, eb, t)
        st = self._stage(m, "round")
        zw = W + 2 + mb + 2
        z2 = Signal(zw)
        st.d.comb += z2.eq(nm << (mb + 2))
        kg = Signal(mb + 3)
        st.d.comb += kg.eq(z2 >> t)
        rest = Signal()
        st.d.comb += rest.eq((z2 & _below(t, zw)) != 0)
        guard, kept0 = kg[0], kg[1:]
        inc0 = Signal()
        st.d.comb += inc0.eq(self._round_increment(guard, rest | sticky, kept0[0]))
        kept, inc, sign, eb, t = self._cut(m, "p8", kept0, inc0, sign, eb, t)
        st = self._stage(m, "carry")
        sigr = Signal(mb + 2)
        st.d.comb += sigr.eq(kept + inc)
        carry = sigr[mb + 1]
        sigf0 = Signal(mb + 1)
        st.d.comb += sigf0.eq(Mux(carry, 1 << mb, sigr[:mb + 1]))
        e_out0 = Signal(xs)
        # hbig - W + sh + carry + m + bias, with sh = t - (m + 1)
        st.d.comb += e_out0.eq(eb + t + carry)
        sigf, e_out, sign = self._cut(m, "p9", sigf0, e_out0, sign)
        normal = sigf[mb]

        # ---- pack: subnormal E = 0, overflow saturates to max finite, zero is +0 ---------------------
        st = self._stage(m, "pack")
        e_field = Signal(e)
        mant = Signal(mb)
        over = Signal()
        st.d.comb += over.eq(normal & (e_out > fmt.e_max_field))
        st.d.comb += [e_field.eq(Mux(over, fmt.e_max_field, Mux(normal, e_out[:e], 0))),
                      mant.eq(Mux(over, (1 << mb) - 1, sigf[:mb]))]
        c_word = Signal(1 + e + mb)
        st.d.comb += c_word.eq(Cat(mant, e_field, sign & (sigf != 0)))

        # ---- sigmoid(c_new) LUT address: clamp(round_half_up(c_new * 2**z_frac)) + 2**(L-1) ------------
        # decoded from the unpacked fields beside the pack (not from the packed word): the packed
        # significand is all ones on overflow, else sigf (a normal sigf has its hidden bit, a
        # subnormal one has not); the effective exponent is e_max on overflow, e_out when normal
        # (then 1 <= e_out <= e_max), 1 when subnormal. v = +-significand; tc = clamp(t, -(m+3), L)
        # + m + 3 with t = E_eff - (bias + m - z_frac), as clamp(E_eff - k0, 0, L + m + 3), k0 =
        # bias - z_frac - 3: the comparisons and the subtraction read e_out side by side
        L = p.lut_bits
        k0 = bias - p.z_frac - 3
        tc_hi = L + mb + 3

        def tc_of(x: int) -> int:
            return min(max(x - k0, 0), tc_hi)

        st = self._stage(m, "addr_dec")
        v0 = Signal(signed(mb + 2))
        top = (1 << (mb + 1)) - 1
        st.d.comb += v0.eq(Mux(over, Mux(sign, -top, top), Mux(sign, -sigf, sigf)))
        tc_n = Signal(range(tc_hi + 1))
        st.d.comb += tc_n.eq(Mux(e_out < k0, 0, Mux(e_out > k0 + tc_hi, tc_hi, e_out - k0)))
        tc0 = Signal(range(tc_hi + 1))
        st.d.comb += tc0.eq(Mux(over, tc_of(fmt.e_max_field), Mux(normal, tc_n, tc_of(1))))
        cn, v, tc = self._cut(m, "p10", c_word, v0, tc0)
        m.d.comb += self.c_new.eq(cn)
        assert self._cuts == self.c_latency, (self._cuts, self.c_latency)

        st = self._stage(m, "addr_shift")
        wv = Signal(signed(mb + 2 + L + mb + 3))
        st.d.comb += wv.eq(v << tc)
        y0 = Signal(signed(mb + 2 + L + 2))
        st.d.comb += y0.eq(((wv >> (mb + 2)) + 1) >> 1)  # floor(v * 2**t + 1/2)
        y = self._cut(m, "p11", y0)
        assert self._cuts == self.c_latency + self.addr_latency, (self._cuts, self.addr_latency)
        # clamped and offset into the table's read-address register (combinational here)
        st = self._stage(m, "addr_clamp")
        half = 1 << (L - 1)
        addr = Signal(L)
        st.d.comb += addr.eq((_clamp(y, -half, half - 1) + half)[:L])
        m.d.comb += self.c_addr.eq(addr)
        return m
