"""MAC arrays: one component per weight coding (hwrnn.weight_code), registered in rtl_gen.units.

A MAC array takes one weight-memory word and the matching activation slice per cycle (with the
schedule's control: valid, first and last column fold of a row fold, weight plane) and, after the
last word of a row fold, presents per lane ``acc = sum_j mac_value(n_j) * a_j`` over all columns,
exactly as the coding's ``acc_from_planes`` defines it.

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
from hwrnn.datapath import TREE_LEVELS_PER_STAGE, Geometry, asum_width, dot_levels, s1_width, tree_registers
from hwrnn.quant import levels
from hwrnn.resources import Built, Reg

from .blocks import ActivationSum, BitPlaneDot, delay_line


class BalancedMac(wiring.Component):
    """MAC array of the balanced code: per lane a pipelined bit-plane popcount dot
    ``sum n*a`` (BitPlaneDot), one shared activation sum, and the odd-weight correction
    ``acc = 2 * sum(n*a) - K * sum(a)`` (hwrnn.weight_code.BalancedCode.acc_from_planes) formed
    combinationally from the accumulators, in front of the consumer's operand register.
    Serial planes: the dot of plane p is shifted by p and sum(a) counts once per column fold.
    """

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
