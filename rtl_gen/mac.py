"""MAC arrays: one component per weight coding (hwrnn.weight_code), registered in rtl_gen.units.

A MAC array takes one weight-memory word and the matching activation slice per cycle (with the
schedule's control: valid, first and last column fold of a row fold, weight plane) and, after the
last word of a row fold, presents per lane ``acc = sum_j mac_value(n_j) * a_j`` over all columns,
exactly as the coding's MAC identity defines it (hwrnn.weight_code; reference ``acc``).

Common interface: In ``w`` (word of PE lanes x PW planes x SIMD bits, hwrnn.datapath layout),
``a`` (SIMD activation codes), ``valid``, ``first``, ``last``, ``plane``; Out ``acc`` (an array of
PE signed accumulators, hwrnn.formats.acc_width bits) and ``done`` (one cycle: acc holds a row
fold's sums). ``latency``: cycles from an input word to the ``done`` of its row fold when it is the
last word. Stages: the popcount trees' registers, the partial register, the accumulator.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwrnn import formats as fm
from hwrnn.config import Folding, LayerConfig
from hwrnn.datapath import (TREE_LEVELS_PER_STAGE, Geometry, asum_width, dot_levels, s1_width, tree_levels,
                            tree_registers)
from hwrnn.quant import levels
from hwrnn.resources import Built, Reg

from .blocks import ActivationSum, BitPlaneDot, TreePipeline, adder_tree_bits, delay_line, tree_register_bits


class MacArray(wiring.Component):
    """The common interface of every MAC array (module docstring) and its latency:
    ``dot_latency`` tree registers (hwrnn.datapath.dot_levels of the coding), then the partial
    register and the accumulator."""

    def __init__(self, cfg: LayerConfig, fold: Folding):
        self.cfg, self.fold = cfg, fold
        self.geom = g = Geometry(cfg, fold)
        self.serial = fold.planes == "serial"
        self.dot_latency = tree_registers(dot_levels(cfg, fold))
        self.latency = self.dot_latency + 2   # trees | partial register | accumulate
        self.acc_width = fm.acc_width(cfg)
        super().__init__({
            "w": In(g.word_bits),
            "a": In(fold.simd * cfg.abits),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "plane": In(range(max(g.plane_steps, 2))),
            "acc": Out(data.ArrayLayout(signed(self.acc_width), fold.pe)),
            "done": Out(1),
        })


class BalancedMac(MacArray):
    """MAC array of the balanced code: per lane a pipelined bit-plane popcount dot
    ``sum n*a`` (BitPlaneDot), one shared activation sum, and the odd-weight correction
    ``acc = 2 * sum(n*a) - K * sum(a)`` (hwrnn.weight_code.BalancedCode.acc_from_planes) formed
    combinationally from the accumulators, in front of the consumer's operand register.
    Serial planes: the dot of plane p is shifted by p and sum(a) counts once per column fold.
    """


    @classmethod
    def built(cls, cfg: LayerConfig, fold: Folding) -> Built:
        """Its own registers (partials, the activation sum delayed to the dot latency, K * sum(a) and
        its accumulator, the lane accumulators, the control delayed along the trees: the plane is
        kept only where it is read, in serial mode, and not after the trees; done), the PE popcount
        lanes ("dot") and the activation sum ("asum"); logic: accumulator and correction bits."""
        g = Geometry(cfg, fold)
        PE, S, A, W = fold.pe, fold.simd, cfg.abits, cfg.wbits
        serial = fold.planes == "serial"
        max_shift = (W - 1) if serial else 0
        dot = BitPlaneDot.built(S, g.planes_per_word, A, max_shift, TREE_LEVELS_PER_STAGE)
        asum = ActivationSum.built(S, A, TREE_LEVELS_PER_STAGE)
        dl = dot.stages
        plane_w = max(1, (max(g.plane_steps, 2) - 1).bit_length())                 # the plane input
        plane_kept = (g.plane_steps - 1).bit_length() if serial else 0
        ctl_w = 3 + plane_w                                                           # valid, first, last, plane
        regs = (
            Reg("partial", PE * BitPlaneDot.output_width(S, g.planes_per_word, A, max_shift)),
            Reg("asum_delay", (dl - asum.stages) * fm.unsigned_width(S * levels(A))),
            Reg("ctl_tree", ctl_w * dl, (3 + plane_kept) * dl),
            Reg("ctl_part", ctl_w, 3),
            Reg("s2_asum", fm.unsigned_width(levels(A) * S * levels(W))),
            Reg("acc_a", asum_width(cfg) + W),
            Reg("acc", PE * s1_width(cfg)),
            Reg("done", 1),
        )
        return Built(regs=regs, stages=dl + 2, subs=(("dot", PE, dot), ("asum", 1, asum)),
                     logic={"acc_bits": PE * (s1_width(cfg) + fm.acc_width(cfg))})

    def elaborate(self, platform):
        m = Module()
        cfg, fold, g = self.cfg, self.fold, self.geom
        PE, S, A = fold.pe, fold.simd, cfg.abits
        PW = g.planes_per_word
        K = cfg.weight_coding.levels

        def delayed(value, n, name):
            return delay_line(m, value, n, name)

        # popcount trees (pipelined) and the partial register
        partials = []
        for lane in range(PE):
            dot = BitPlaneDot(S, PW, A, max_shift=(cfg.wbits - 1) if self.serial else 0,
                              levels_per_stage=TREE_LEVELS_PER_STAGE)
            m.submodules[f"dot{lane}"] = dot
            m.d.comb += [dot.w.eq(self.w[lane * PW * S:(lane + 1) * PW * S]), dot.a.eq(self.a)]
            if dot.max_shift:  # serial planes of wbits > 1 (one plane: no shift, and no zero-width port)
                m.d.comb += dot.shift.eq(self.plane)
            pr = Signal(dot.out_width, name=f"partial{lane}")
            m.d.sync += pr.eq(dot.dot)
            partials.append(pr)
            assert dot.latency == self.dot_latency
        m.submodules.asum = asum = ActivationSum(S, A, levels_per_stage=TREE_LEVELS_PER_STAGE)
        m.d.comb += asum.a.eq(self.a)
        asum_al = delayed(asum.sum, self.dot_latency - asum.latency, "asum")
        ctl = delayed(Cat(self.valid, self.first, self.last, self.plane), self.dot_latency, "ctl_tree")
        plane_tree = ctl[3:]
        # K * sum(a), the correction's term, formed before it is accumulated (once per column fold
        # in serial mode); K = 2**wbits - 1, so the product is a shift and a subtraction
        s2_asum = Signal(fm.unsigned_width((2 ** A - 1) * S * K))
        asum_sel = Mux(plane_tree == 0, asum_al, 0) if self.serial else asum_al
        assert K == (1 << cfg.wbits) - 1
        m.d.sync += s2_asum.eq((asum_sel << cfg.wbits) - asum_sel)
        ctl_acc = delayed(ctl, 1, "ctl_part")
        s2_valid, s2_first, s2_last = ctl_acc[0], ctl_acc[1], ctl_acc[2]

        # accumulate
        accs = [Signal(s1_width(cfg), name=f"acc{lane}") for lane in range(PE)]
        acc_a = Signal(asum_width(cfg) + cfg.wbits)  # K * sum of the row's activations
        with m.If(s2_valid):
            for lane in range(PE):
                m.d.sync += accs[lane].eq(Mux(s2_first, partials[lane], accs[lane] + partials[lane]))
            m.d.sync += acc_a.eq(Mux(s2_first, s2_asum, acc_a + s2_asum))
        m.d.sync += self.done.eq(s2_valid & s2_last)

        # odd-weight correction 2*acc - K*sum(a)
        for lane in range(PE):
            twice = Cat(Const(0, 1), accs[lane], Const(0, 1)).as_signed()  # 2*acc, non-negative
            m.d.comb += self.acc[lane].eq(twice - Cat(acc_a, Const(0, 1)).as_signed())
        return m


def _ctl_regs(dl: int, plane_w: int, plane_kept: int) -> tuple:
    """The control (valid, first, last, plane) delayed along the trees and into the partial stage."""
    ctl_w = 3 + plane_w
    return (Reg("ctl_tree", ctl_w * dl, (3 + plane_kept) * dl), Reg("ctl_part", ctl_w, 3))


class _SignedLaneMac(MacArray):
    """The accumulation shared by the MACs whose lanes form a signed partial per word (ternary,
    exponential): partial register | accumulator = acc (no correction term). Subclasses build the
    lane's ``_partial(m, lane)`` (registered ``dot_latency`` cycles after its word)."""


    def elaborate(self, platform):
        m = Module()
        PE = self.fold.pe
        ctl = delay_line(m, Cat(self.valid, self.first, self.last, self.plane), self.dot_latency, "ctl_tree")
        self._plane_tree = ctl[3:]
        partials = [self._partial(m, lane) for lane in range(PE)]
        ctl_acc = delay_line(m, ctl, 1, "ctl_part")
        s2_valid, s2_first, s2_last = ctl_acc[0], ctl_acc[1], ctl_acc[2]
        accs = [Signal(signed(self.acc_width), name=f"acc{lane}") for lane in range(PE)]
        with m.If(s2_valid):
            for lane in range(PE):
                m.d.sync += accs[lane].eq(Mux(s2_first, partials[lane], accs[lane] + partials[lane]))
        m.d.sync += self.done.eq(s2_valid & s2_last)
        for lane in range(PE):
            m.d.comb += self.acc[lane].eq(accs[lane])
        return m

    @classmethod
    def _built(cls, cfg: LayerConfig, fold: Folding, partial_bits: int, subs: tuple, logic: dict) -> Built:
        g = Geometry(cfg, fold)
        serial = fold.planes == "serial"
        dl = tree_registers(dot_levels(cfg, fold))
        plane_w = max(1, (max(g.plane_steps, 2) - 1).bit_length())
        plane_kept = (g.plane_steps - 1).bit_length() if serial else 0
        regs = (Reg("partial", fold.pe * partial_bits), *_ctl_regs(dl, plane_w, plane_kept),
                Reg("acc", fold.pe * fm.acc_width(cfg)), Reg("done", 1))
        return Built(regs=regs, stages=dl + 2, subs=subs,
                     logic={"acc_bits": fold.pe * fm.acc_width(cfg), **logic})


class TernaryMac(_SignedLaneMac):
    """MAC array of the ternary codes (hwrnn.weight_code.TernaryCode: planes "positive", "negative"):
    per lane ``sum m*a = dot(pos, a) - dot(neg, a)``, each a one-plane BitPlaneDot; no multiplier and
    no correction term. Serial planes: one dot per lane, the positive plane (p = 0) added, the
    negative (p = 1) subtracted."""

    def _partial(self, m, lane):
        S, A = self.fold.simd, self.cfg.abits
        PW = self.geom.planes_per_word
        word = self.w[lane * PW * S:(lane + 1) * PW * S]
        dots = []
        for p in range(PW):
            dot = BitPlaneDot(S, 1, A, levels_per_stage=TREE_LEVELS_PER_STAGE)
            m.submodules[f"dot{lane}_{p}"] = dot
            m.d.comb += [dot.w.eq(word[p * S:(p + 1) * S]), dot.a.eq(self.a)]
            assert dot.latency == self.dot_latency
            dots.append(dot.dot)
        pr = Signal(signed(len(dots[0]) + 1), name=f"partial{lane}")
        if self.serial:
            m.d.sync += pr.eq(Mux(self._plane_tree[0], -dots[0], dots[0]))
        else:
            m.d.sync += pr.eq(dots[0] - dots[1])
        return pr

    @classmethod
    def built(cls, cfg: LayerConfig, fold: Folding) -> Built:
        """Partials, the control along the trees, accumulators, done; PE (parallel: 2 PE) one-plane
        popcount dots ("dot")."""
        g = Geometry(cfg, fold)
        S, A = fold.simd, cfg.abits
        dot = BitPlaneDot.built(S, 1, A, 0, TREE_LEVELS_PER_STAGE)
        partial = BitPlaneDot.output_width(S, 1, A) + 1
        return cls._built(cfg, fold, partial, (("dot", fold.pe * g.planes_per_word, dot),), {})


class ExponentialMac(_SignedLaneMac):
    """MAC array of the exponential codes (hwrnn.weight_code.ExponentialCode): per lane and column the
    term (+-) a << (f - 1) (0 for f = 0), registered, then summed by one pipelined adder tree; no
    multiplier (benchmarks/exponential_lanes.py: half the LUTs of a popcount lane per exponent).
    Parallel planes only (a weight's shift needs all its bits)."""

    def _partial(self, m, lane):
        S, W = self.fold.simd, self.cfg.weight_coding.bits
        dot = ExponentialLane(self.cfg, S)
        m.submodules[f"dot{lane}"] = dot
        m.d.comb += [dot.w.eq(self.w[lane * W * S:(lane + 1) * W * S]), dot.a.eq(self.a)]
        assert dot.latency == self.dot_latency
        pr = Signal(dot.dot.shape(), name=f"partial{lane}")
        m.d.sync += pr.eq(dot.dot)
        return pr

    @classmethod
    def built(cls, cfg: LayerConfig, fold: Folding) -> Built:
        """Partials, the control along the trees, accumulators, done; per lane the adder tree's
        registers ("dot"); logic: terms (bits)."""
        S = fold.simd
        tw = ExponentialLane.term_width_of(cfg)
        bits, kept, stages = tree_register_bits([[(tw, 0)] * S], None, TREE_LEVELS_PER_STAGE)
        partial = tw + tree_levels(S)
        lane = Built(regs=(Reg("terms", S * tw), Reg("tree", bits, kept)), stages=1 + stages,
                     logic={"and_bits": 0, "tree_bits": partial, "shifter": 0,
                            "pop_bits": adder_tree_bits([tw] * S), "lanes": 1, "term_bits": S * tw,
                            "shift_luts": S * ExponentialLane.shift_luts_of(cfg)})
        return cls._built(cfg, fold, partial, (("dot", fold.pe, lane),), {})


class ExponentialLane(wiring.Component):
    """One lane of ExponentialMac: sum over S columns of (+-) a_s << (f_s - 1) (0 for f_s = 0), the
    exponential code's integer products (hwrnn.weight_code.ExponentialCode.acc). The terms are
    registered (the shift mux is a stage of its own), then summed by a pipelined adder tree;
    ``latency`` = 1 + the tree's registers, ``dot`` is the tree's output (registered by the MAC).
    w: S*W bits, plane-major (exponent planes, then the sign plane); a: S*abits bits."""

    def __init__(self, cfg: LayerConfig, simd: int):
        self.cfg, self.simd = cfg, simd
        code = cfg.weight_coding
        self.term_width = self.term_width_of(cfg)
        tree = tree_levels(simd)
        self.latency = 1 + tree_registers(tree)
        super().__init__({"w": In(code.bits * simd), "a": In(cfg.abits * simd),
                          "dot": Out(signed(self.term_width + tree))})

    @staticmethod
    def term_width_of(cfg: LayerConfig) -> int:
        """Bits of one signed term: |a << (top - 1)| < 2**(abits + top - 1), and a sign bit."""
        return cfg.abits + cfg.weight_coding.top

    @staticmethod
    def shift_luts_of(cfg: LayerConfig) -> int:
        """4-input LUTs of one column's shift mux, counted as generic functions: magnitude bit j
        depends on the exponent field (exp_bits) and on the n_j activation bits a_i that reach it
        (i + k - 1 = j for a shift k in 1..top), so it costs 2**max(0, exp_bits + n_j - 4) LUT4s.
        The count grows with abits x top where the terms (term_width_of) grow with abits + top:
        W4A4 (top 7) is 46 LUT4s a column, W4A2 14, W4A1 7."""
        A, top, e = cfg.abits, cfg.weight_coding.top, cfg.weight_coding.exp_bits
        return sum(1 << max(0, e + sum(1 <= j - i + 1 <= top for i in range(A)) - 4) for j in range(A + top - 1))

    def elaborate(self, platform):
        m = Module()
        S, A = self.simd, self.cfg.abits
        code = self.cfg.weight_coding
        e = code.exp_bits
        terms = []
        for s in range(S):
            f = Cat(*[self.w[p * S + s] for p in range(e)])
            sign = self.w[e * S + s]
            a = self.a[s * A:(s + 1) * A]
            t = Signal(signed(self.term_width), name=f"term{s}")
            mag = Signal(A + code.top - 1, name=f"mag{s}")
            with m.Switch(f):
                for k in range(1, code.top + 1):
                    with m.Case(k):
                        m.d.comb += mag.eq(a << (k - 1))
            m.d.sync += t.eq(Mux(sign, -mag, mag))
            terms.append(t)
        tree = TreePipeline(m, TREE_LEVELS_PER_STAGE, "exp")
        total = tree.reduce([terms])[0]
        assert 1 + tree.registers == self.latency
        m.d.comb += self.dot.eq(total)
        return m
