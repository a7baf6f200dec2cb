"""Datapath blocks of the LSTM core. Each is an Amaranth 0.5 ``wiring.Component`` whose reference
function lives in hwrnn (formats.py / datapath.py); tests/test_rtl_blocks.py holds them equal.

Latency of each block (cycles from inputs to outputs, 0 = combinational) is its ``latency``
attribute and is given in its docstring; hwrnn.datapath.pipeline_stages adds them up.

Each block also reports what it builds without being elaborated: the classmethod ``built`` takes
the constructor's arguments and returns a hwrnn.resources.Built (registers, memories, registered
multipliers, stages, structural sizes), which rtl_gen.cost sums into the resource estimate;
tests/test_cost_model.py holds the reported register bits equal to what ``elaborate`` builds.
"""
from __future__ import annotations

from amaranth.hdl import Const, Mux, Signal, Module, signed, unsigned, Cat
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwrnn import formats as fm
from hwrnn.config import ConfigError, LayerConfig
from hwrnn.cell_state import FixedPointCell
from hwrnn.datapath import SCALE_BIAS_STAGES, tree_levels, tree_registers
from hwrnn.gates import LstmGates
from hwrnn.quant import levels
from hwrnn.resources import Built, Mem, Reg

from .multiplier import ECP5_WIDTH, RegisteredMultiplier, check_dsp, ecp5_fits


def delay_line(m: Module, value, n: int, name: str):
    """``value`` delayed by n clock cycles through registers named name_d1..name_dn (sync domain
    of ``m``); n = 0 returns ``value`` itself."""
    for k in range(n):
        r = Signal(value.shape(), name=f"{name}_d{k + 1}")
        m.d.sync += r.eq(value)
        value = r
    return value


class TreePipeline:
    """Builds balanced pairwise adder trees level by level in module ``m``, with a register stage
    after every ``per_stage`` levels (None: combinational). ``registers`` counts the stages added;
    ``delay`` carries a side signal along them. The last level is never registered here.
    With per_stage None it is a plain combinational balanced adder tree."""

    def __init__(self, m: Module, per_stage: int | None, name: str):
        self.m, self.per_stage, self.name = m, per_stage, name
        self.levels = 0
        self.registers = 0
        self._nreg = 0  # registers made so far (unique names)
        self._delayed = []

    def delay(self, value, name: str):
        """A Signal that equals ``value`` delayed by every register stage added from now on."""
        sig = Signal(value.shape(), name=f"{self.name}_{name}_d0")
        self.m.d.comb += sig.eq(value)
        self._delayed.append([sig])
        return self._delayed[-1]

    def level(self, groups: list[list], last: bool) -> list[list]:
        """One adder level over each group (pairs summed, an odd one carried)."""
        out = []
        for vals in groups:
            nxt = [vals[i] + vals[i + 1] for i in range(0, len(vals) - 1, 2)]
            if len(vals) % 2:
                nxt.append(vals[-1])
            out.append(nxt)
        self.levels += 1
        if self.per_stage and not last and self.levels % self.per_stage == 0:
            out = [[self._register(v) for v in vals] for vals in out]
            for chain in self._delayed:
                r = Signal(chain[-1].shape(), name=f"{chain[0].name[:-1]}{len(chain)}")
                self.m.d.sync += r.eq(chain[-1])
                chain.append(r)
            self.registers += 1
        return out

    def _register(self, v):
        self._nreg += 1
        r = Signal(v.shape(), name=f"{self.name}_r{self.registers + 1}_{self._nreg}")
        self.m.d.sync += r.eq(v)
        return r

    def reduce(self, groups: list[list], more_levels_after: int = 0) -> list:
        """Reduce every group to one value (all groups have the same length)."""
        depth = tree_levels(len(groups[0])) if groups else 0
        for k in range(depth):
            groups = self.level(groups, last=(k == depth - 1 and more_levels_after == 0))
        return [vals[0] if vals else Const(0, 1) for vals in groups]


def adder_tree_bits(widths) -> int:
    """Sum of the result widths of a balanced pairwise adder tree (TreePipeline) over operands of
    these widths (Amaranth widths: max + 1 per addition)."""
    vals, total = list(widths), 0
    while len(vals) > 1:
        nxt = []
        for i in range(0, len(vals) - 1, 2):
            w = max(vals[i], vals[i + 1]) + 1
            total += w
            nxt.append(w)
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return total


def tree_register_bits(groups: list[list[tuple[int, int]]], second_weights: list[int] | None = None,
                       per_stage: int | None = None) -> tuple[int, int, int]:
    """(declared bits, kept bits, register stages) of the registers TreePipeline adds when it
    reduces ``groups`` of values given as (width, constant-zero LSBs): every group by a balanced
    pairwise tree, then, if ``second_weights`` is given, the group results shifted left by those
    weights and reduced again (BitPlaneDot); a register stage after every ``per_stage`` levels
    except the last (None: none). Declared: Amaranth's widths (an addition is one bit wider than its
    wider operand; ``v << k`` shifts by a constant of k.bit_length() bits, so it is 2**that - 1 bits
    wider than v). Kept: without constant-zero LSBs and MSBs (yosys removes them)."""
    lv, bits, kept, regs = 0, 0, 0, 0

    def level(gs, last):  # values: (declared width, width, zero LSBs)
        nonlocal lv, bits, kept, regs
        out = []
        for vals in gs:
            nxt = [(max(vals[i][0], vals[i + 1][0]) + 1, max(vals[i][1], vals[i + 1][1]) + 1,
                    min(vals[i][2], vals[i + 1][2])) for i in range(0, len(vals) - 1, 2)]
            if len(vals) % 2:
                nxt.append(vals[-1])
            out.append(nxt)
        lv += 1
        if per_stage and not last and lv % per_stage == 0:
            bits += sum(d for vals in out for d, _w, _z in vals)
            kept += sum(w - z for vals in out for _d, w, z in vals)
            regs += 1
        return out

    groups = [[(w, w, z) for w, z in vals] for vals in groups]
    more = tree_levels(len(groups)) if second_weights is not None else 0
    depth = tree_levels(len(groups[0])) if groups else 0
    for k in range(depth):
        groups = level(groups, k == depth - 1 and more == 0)
    if second_weights is not None:
        vals = [(d + (1 << sw.bit_length()) - 1, w + sw, z + sw)
                for (d, w, z), sw in zip((g[0] for g in groups), second_weights)]
        gs = [vals]
        for k in range(more):
            gs = level(gs, k == more - 1)
    return bits, kept, regs


def _check_pos(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")


class BitPlaneDot(wiring.Component):
    """Popcount MAC lane.

    ``dot = sum_s n_s * a_s`` for SIMD columns, computed as
    ``sum_{p,q} popcount(w_plane_p & a_plane_q) << (p + q)``.
    ``w``: ``planes`` bit planes of SIMD bits (bit p*SIMD + s = bit (plane_base + p) of n_s);
    ``a``: SIMD activation codes of abits each (bit s*abits + q);
    ``shift``: the weight plane index of plane 0 (bit-serial mode; 0 in parallel mode).
    ``levels_per_stage``: adder levels between pipeline registers (None: combinational);
    ``latency`` = hwrnn.datapath.tree_registers(levels) cycles from w, a, shift to dot.
    Reference: hwrnn.datapath.bitplane_dot.
    """

    def __init__(self, simd: int, planes: int, abits: int, max_shift: int = 0, levels_per_stage: int | None = None):
        for n, v in (("simd", simd), ("planes", planes), ("abits", abits)):
            _check_pos(n, v)
        _check_pos("max_shift", max_shift, 0)
        if levels_per_stage is not None:
            _check_pos("levels_per_stage", levels_per_stage)
        self.simd, self.planes, self.abits, self.max_shift = simd, planes, abits, max_shift
        self.levels_per_stage = levels_per_stage
        self.levels = tree_levels(simd) + tree_levels(planes * abits)
        self.latency = tree_registers(self.levels, levels_per_stage) if levels_per_stage else 0
        self.out_width = self.output_width(simd, planes, abits, max_shift)
        super().__init__({
            "w": In(simd * planes),
            "a": In(simd * abits),
            "shift": In(range(max_shift + 1)),
            "dot": Out(self.out_width),
        })

    @staticmethod
    def output_width(simd: int, planes: int, abits: int, max_shift: int = 0) -> int:
        """Bits of ``dot``: the largest sum, SIMD * (2**planes - 1) * (2**abits - 1) << max_shift."""
        return fm.unsigned_width(simd * ((1 << planes) - 1) * ((1 << abits) - 1) << max_shift)

    @classmethod
    def built(cls, simd: int, planes: int, abits: int, max_shift: int = 0,
              levels_per_stage: int | None = None) -> Built:
        """The tree's pipeline registers (constant-zero LSBs of the shifted plane terms not kept) and
        the shift carried along them; logic: AND bits, tree operand and popcount adder widths,
        shifter bits (output width x shift-amount bits)."""
        weights = [p + q for p in range(planes) for q in range(abits)]
        bits, kept, stages = tree_register_bits([[(1, 0)] * simd for _ in weights], weights, levels_per_stage)
        out_w = cls.output_width(simd, planes, abits, max_shift)
        shift_bits = max_shift.bit_length()  # Signal(range(max_shift + 1))
        regs = [Reg("tree", bits, kept)]
        if max_shift:
            regs.append(Reg("shift", shift_bits * stages))
        return Built(regs=tuple(regs), stages=stages, logic={
            "and_bits": planes * abits * simd, "tree_bits": planes * abits * out_w, "shifter": out_w * shift_bits,
            "pop_bits": planes * abits * adder_tree_bits([1] * simd), "lanes": 1})

    def elaborate(self, platform):
        m = Module()
        S, A = self.simd, self.abits
        aplanes = []
        for q in range(A):
            ap = Signal(S, name=f"a_plane{q}")
            m.d.comb += ap.eq(Cat(*[self.a[s * A + q] for s in range(S)]))
            aplanes.append(ap)
        groups, weights = [], []
        for p in range(self.planes):
            wp = self.w[p * S:(p + 1) * S]
            for q in range(A):
                both = Signal(S, name=f"and_w{p}_a{q}")  # a Signal, so each bit slice is cheap
                m.d.comb += both.eq(wp & aplanes[q])
                groups.append([both[i] for i in range(S)])
                weights.append(p + q)
        tree = TreePipeline(m, self.levels_per_stage, "dot")
        shift = tree.delay(self.shift, "shift") if self.max_shift else None
        counts = tree.reduce(groups, more_levels_after=tree_levels(len(groups)))
        total = tree.reduce([[c << w for c, w in zip(counts, weights)]])[0]
        assert tree.registers == self.latency
        if self.max_shift:
            m.d.comb += self.dot.eq(total << shift[-1])
        else:
            m.d.comb += self.dot.eq(total)
        return m


class ActivationSum(wiring.Component):
    """Sum of SIMD activation codes, pipelined like BitPlaneDot (``latency`` cycles).
    Reference: numpy sum."""

    def __init__(self, simd: int, abits: int, levels_per_stage: int | None = None):
        _check_pos("simd", simd)
        _check_pos("abits", abits)
        if levels_per_stage is not None:
            _check_pos("levels_per_stage", levels_per_stage)
        self.simd, self.abits, self.levels_per_stage = simd, abits, levels_per_stage
        self.latency = tree_registers(tree_levels(simd), levels_per_stage) if levels_per_stage else 0
        super().__init__({"a": In(simd * abits), "sum": Out(fm.unsigned_width(simd * ((1 << abits) - 1)))})

    @classmethod
    def built(cls, simd: int, abits: int, levels_per_stage: int | None = None) -> Built:
        """The tree's pipeline registers; logic: input bits and adder widths (none for 1-bit codes)."""
        bits, kept, stages = tree_register_bits([[(abits, 0)] * simd], None, levels_per_stage)
        return Built(regs=(Reg("tree", bits, kept),), stages=stages, logic={
            "bits": simd * abits, "adders": adder_tree_bits([abits] * simd) if abits > 1 else 0})

    def elaborate(self, platform):
        m = Module()
        A = self.abits
        tree = TreePipeline(m, self.levels_per_stage, "asum")
        total = tree.reduce([[self.a[s * A:(s + 1) * A] for s in range(self.simd)]])[0]
        assert tree.registers == self.latency
        m.d.comb += self.sum.eq(total)
        return m


class ScaleBias(wiring.Component):
    """Scale-and-bias unit plus LUT address (latency 3 = hwrnn.datapath.SCALE_BIAS_STAGES):
    operands | product acc*mult | + bias + 2^(R-1), each registered; then shift, clamp and offset
    combinationally to ``addr``, which is meant for a table's read-address register.

    ``addr = clamp(rshift_round(acc * mult + bias, R), -2**(L-1), 2**(L-1)-1) + 2**(L-1)``;
    acc, mult and bias are sampled in the same cycle, addr is valid 3 cycles later.
    ``mult`` is an input (loadable multiplier register), R is fixed at generation.
    ``dsp``: elaboration of the operand/product registers and the multiplier (rtl_gen.multiplier:
    None behavioural, "ecp5" MULT18X18D with internal registers; an acc wider than 18 bits is then
    split into two products, 18 low bits and the rest, added in the sum stage); same latency.
    Reference: hwrnn.formats.preactivation + lut_address.
    """

    latency = SCALE_BIAS_STAGES

    def __init__(self, cfg: LayerConfig, acc_width: int, mult_width: int, bias_width: int, shift: int,
                 dsp: str | None = None):
        self.dsp = check_dsp(dsp)
        _check_pos("acc_width", acc_width)
        _check_pos("mult_width", mult_width)
        _check_pos("bias_width", bias_width)
        _check_pos("shift", shift)
        self.cfg, self.shift_r = cfg, shift
        self.acc_w, self.mult_w, self.bias_w = acc_width, mult_width, bias_width
        # with DSP primitives, an acc wider than one multiplier's operand is split in two
        # (``split_at`` low bits); None: one multiplier (behavioural, or fits, or no split fits)
        self.split_at = None
        if dsp is not None and not ecp5_fits(signed(acc_width), unsigned(mult_width)):
            k = ECP5_WIDTH
            if 0 < acc_width - k and ecp5_fits(signed(acc_width - k), unsigned(mult_width)):
                self.split_at = k
        super().__init__({
            "acc": In(signed(acc_width)),
            "mult": In(unsigned(mult_width)),
            "bias": In(signed(bias_width)),
            "addr": Out(cfg.lut_bits),
        })

    @staticmethod
    def product_width(acc_width: int, mult_width: int, bias_width: int, shift: int) -> int:
        """Bits of the registered sum acc * mult + bias + 2**(R-1) (signed, with headroom)."""
        return max(acc_width + mult_width + 2, bias_width + 2, shift + 2)

    @classmethod
    def built(cls, cfg: LayerConfig, acc_width: int, mult_width: int, bias_width: int, shift: int) -> Built:
        """Behavioural elaboration (dsp=None): bias0, bias, the multiplier's operands and product (the
        sign-extension bit of the signed x unsigned product is a copy: not kept) and the sum, of
        which only the bits at and above the shift are read (its effective width is one more than
        its widest addend's). The sum's register is the post-adder register of a DSP48E1."""
        aw, mw, bw, r = acc_width, mult_width, bias_width, shift
        prod_w = cls.product_width(aw, mw, bw, r)
        total = max(0, min(prod_w, max(aw + mw, max(bw, r + 1) + 1) + 1) - r)
        mul = RegisteredMultiplier.built(signed(aw), unsigned(mw), signed(aw + mw + 1), p_kept=aw + mw, split=True)
        return Built(regs=(Reg("bias0", bw), Reg("bias", bw), Reg("total", prod_w, total)),
                     subs=(("mul", 1, mul),), stages=cls.latency, post_adder=total,
                     logic={"sum_bits": prod_w, "addr_bits": prod_w - r})

    def elaborate(self, platform):
        m = Module()
        prod_w = self.product_width(self.acc_w, self.mult_w, self.bias_w, self.shift_r)
        # operands registered next to the multiplier (DSP) first, product registered: with
        # dsp="ecp5" both registers are the DSP block's own, otherwise the placer puts these
        # flip-flops beside it; the bias travels alongside
        rnd = 1 << (self.shift_r - 1)
        bias0 = Signal(signed(self.bias_w))
        m.d.sync += bias0.eq(self.bias)
        total = Signal(signed(prod_w))
        k = self.split_at
        if k is None:
            m.submodules.mul = mul = RegisteredMultiplier(signed(self.acc_w), unsigned(self.mult_w),
                                                          signed(self.acc_w + self.mult_w + 1), dsp=self.dsp)
            m.d.comb += [mul.a.eq(self.acc), mul.b.eq(self.mult)]
            bias = Signal(signed(self.bias_w))
            m.d.sync += bias.eq(bias0)
            m.d.sync += total.eq(mul.p + (bias + rnd))
        else:
            # acc too wide for one DSP: acc = hi * 2**k + lo (lo the unsigned low k bits), two
            # registered products, summed with the bias (+ rounding constant, added a stage early)
            m.submodules.mul_lo = lo = RegisteredMultiplier(unsigned(k), unsigned(self.mult_w), dsp=self.dsp)
            m.submodules.mul_hi = hi = RegisteredMultiplier(signed(self.acc_w - k), unsigned(self.mult_w),
                                                            dsp=self.dsp)
            m.d.comb += [lo.a.eq(self.acc[:k]), lo.b.eq(self.mult), hi.a.eq(self.acc[k:].as_signed()),
                         hi.b.eq(self.mult)]
            bias = Signal(signed(max(self.bias_w, self.shift_r + 1) + 1))
            m.d.sync += bias.eq(bias0 + rnd)
            m.d.sync += total.eq((hi.p << k) + (lo.p + bias))
        z = Signal(signed(prod_w))
        m.d.comb += z.eq(total >> self.shift_r)
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
        self.shape = self.shape_of(contents)
        self.contents = contents
        self.addr_bits = addr_bits
        super().__init__({"addr": In(addr_bits), "data": Out(self.shape)})

    @staticmethod
    def shape_of(contents):
        """The data shape of a table: signed when it has negative entries."""
        lo, hi = min(int(v) for v in contents), max(int(v) for v in contents)
        return signed(fm.signed_width(lo, hi)) if lo < 0 else unsigned(fm.unsigned_width(hi))

    @classmethod
    def built(cls, width: int, addr_bits: int, name: str = "rom") -> Built:
        """A ROM of 2**addr_bits words of ``width`` bits (its read register belongs to the memory)."""
        return Built(mems=(Mem(name, width, 1 << addr_bits, False),), stages=1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.rom = rom = Memory(shape=self.shape, depth=len(self.contents), init=self.contents)
        rd = rom.read_port()
        m.d.comb += [rd.addr.eq(self.addr), self.data.eq(rd.data)]
        return m


class FixedCellUnit(wiring.Component):
    """Fixed-point cell-state update and the sigmoid(c) LUT address, pipelined:
    operands | products f*c, i*g | aligned sum + rounding constant | shift + saturation -> c_new
    (``c_latency`` = 4 cycles after f, i, g, c), then rounding shift + clamp -> c_addr combinationally
    from the registered c_new (``addr_latency`` = 0; c_addr is meant for a table's read-address register).

    ``c_new = sat(rshift_round(f*c << (P-G-F) + i*g << (P-2G), P-F))``;
    ``c_addr = lut_address(rshift_round(c_new, F - z_frac))``.
    Interface shared with every cell-state unit: inputs f, i, g, c (cell word), outputs c_new
    (cell word) and c_addr; ``c_latency``/``addr_latency`` as in hwrnn.datapath.pipeline_stages.
    ``dsp``: elaboration of the two registered multipliers (rtl_gen.multiplier), same latency.
    Reference: hwrnn.cell_state.FixedPointCell.update / lut_address.
    """

    c_latency = FixedPointCell.update_stages
    addr_latency = FixedPointCell.address_stages

    def __init__(self, cfg: LayerConfig, dsp: str | None = None):
        self.dsp = check_dsp(dsp)
        if not isinstance(cfg.cell_format, FixedPointCell):
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

    @classmethod
    def built(cls, cfg: LayerConfig) -> Built:
        """Operands and products f*c, i*g (product LSBs that only meet zeros of the other, shifted
        addend below the rounding position are unread), the sum s from the rounding position up
        (the post-adder register of a DSP48E1), c_new; c_addr is combinational."""
        G, F = cfg.gate_frac, cfg.cell_format.frac_bits
        P = max(G + F, 2 * G)
        cw, G1, cand = cfg.cell_format.width, fm.gate_width(cfg), fm.candidate_width(cfg)
        a, b, sh = P - G - F, P - 2 * G, P - F   # shifts of f*c and i*g, rounding shift
        fc_w, ig_w = G1 + cw, G1 + cand
        fc = fc_w - max(0, min(b - a, sh - 1 - a)) if b > a else fc_w
        ig = ig_w - max(0, min(a - b, sh - 1 - b)) if a > b else ig_w
        s = max(0, max(a + fc_w, b + ig_w) + 1 - sh)
        gs = signed(cand) if cfg.candidate == "tanh" else unsigned(cand)
        fcm = RegisteredMultiplier.built(unsigned(G1), signed(cw), signed(cw + G + 2), p_kept=fc)
        igm = RegisteredMultiplier.built(unsigned(G1), gs, signed(2 * G + 4), p_kept=ig)
        return Built(regs=(Reg("s", cw + 2 * G + 8 + (P - G - F) + (P - 2 * G), s), Reg("c_new", cw)),
                     subs=(("fc", 1, fcm), ("ig", 1, igm)), stages=cls.c_latency + cls.addr_latency,
                     post_adder=s, logic={"units": 1})

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        G, F = cfg.gate_frac, cfg.cell_format.frac_bits
        P = max(G + F, 2 * G)
        cw = cfg.cell_format.width
        # operands registered next to the multipliers (DSPs), products registered
        m.submodules.fc = fcm = RegisteredMultiplier(self.f.shape(), self.c.shape(), signed(cw + G + 2), dsp=self.dsp)
        m.submodules.ig = igm = RegisteredMultiplier(self.i.shape(), self.g.shape(), signed(2 * G + 4), dsp=self.dsp)
        m.d.comb += [fcm.a.eq(self.f), fcm.b.eq(self.c), igm.a.eq(self.i), igm.b.eq(self.g)]
        fc, ig = fcm.p, igm.p
        sh = P - F
        s = Signal(signed(cw + 2 * G + 8 + (P - G - F) + (P - 2 * G)))
        rnd = (1 << (sh - 1)) if sh else 0
        m.d.sync += s.eq((fc << (P - G - F)) + ((ig << (P - 2 * G)) + rnd))
        r = Signal.like(s)
        m.d.comb += r.eq(s >> sh)
        lo, hi = cfg.cell_format.limits
        m.d.sync += self.c_new.eq(Mux(r < lo, lo, Mux(r > hi, hi, r)))
        d = F - cfg.z_frac
        zc = Signal(signed(cw + 1))
        if d:
            m.d.comb += zc.eq((self.c_new + (1 << (d - 1))) >> d)
        else:
            m.d.comb += zc.eq(self.c_new)
        half = 1 << (cfg.lut_bits - 1)
        clamped = Mux(zc < -half, -half, Mux(zc > half - 1, half - 1, zc))
        m.d.comb += self.c_addr.eq((clamped + half)[:cfg.lut_bits])
        return m


class HRequantizer(wiring.Component):
    """h = rshift_round(Ka * o * sc, 2G), an abits code (latency 3: operands | o*sc | *Ka + rounding,
    shift). ``dsp``: elaboration of the registered multiplier o*sc (rtl_gen.multiplier).
    Reference: hwrnn.formats.h_code."""

    latency = LstmGates.H_REQUANT_STAGES

    def __init__(self, cfg: LayerConfig, dsp: str | None = None):
        self.dsp = check_dsp(dsp)
        self.cfg = cfg
        super().__init__({
            "o": In(unsigned(fm.gate_width(cfg))),
            "sc": In(unsigned(fm.gate_width(cfg))),
            "h": Out(cfg.abits),
        })

    @classmethod
    def built(cls, cfg: LayerConfig) -> Built:
        """Operands o, sc, the product (only its bits up to 2G + abits are read; with abits 1, two),
        h."""
        G1, A = fm.gate_width(cfg), cfg.abits
        prod = 2 if A == 1 else min(2 * G1, 2 * cfg.gate_frac + A)
        mul = RegisteredMultiplier.built(unsigned(G1), unsigned(G1), unsigned(2 * G1), p_kept=prod)
        return Built(regs=(Reg("h", A),), subs=(("prod", 1, mul),), stages=cls.latency, logic={"units": 1})

    def elaborate(self, platform):
        m = Module()
        G = self.cfg.gate_frac
        Ka = levels(self.cfg.abits)
        # operands registered next to the multiplier (DSP), product registered
        m.submodules.prod = mul = RegisteredMultiplier(self.o.shape(), self.sc.shape(), unsigned(2 * (G + 1)),
                                                       dsp=self.dsp)
        m.d.comb += [mul.a.eq(self.o), mul.b.eq(self.sc)]
        prod = mul.p
        p = Signal(2 * (G + 1) + self.cfg.abits + 1)
        # prod * Ka as (prod << abits) - prod (Ka = 2**abits - 1): a constant multiply would become
        # a combinational DSP block after the product register (the critical path on ECP5)
        assert Ka == (1 << self.cfg.abits) - 1
        m.d.comb += p.eq((prod << self.cfg.abits) - prod + (1 << (2 * G - 1)))
        m.d.sync += self.h.eq(p >> (2 * G))
        return m
