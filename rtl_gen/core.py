"""The k-bit LSTM core: folded popcount MAC array, scale-and-bias, LUTs, cell-state unit and h
requantizer, sequenced by a small controller (schedule and latency in hwrnn.datapath).

Ports (Amaranth streams, valid/ready):
  x       In  stream, payload X*abits bits: code of x_t[j] at bits j*abits.. (LSB first)
  out     Out stream, payload {h: H*abits, c: H*cell_width}: h_t and c_t of the step, unit j at
          bits j*width of its field; h is the low part of the flat payload
  load    In  stream, payload {data, addr, sel}: run-time loading while idle; sel 0 = weight word
          at addr, 1 = bias word of row fold addr (PE lanes of bias_width bits), 2 = multiplier M
  w       In  stream (weights="stream" only), payload one weight-memory word: the words of
          hwrnn.datapath.weight_image in address order, depth words per time step; the MAC
          array advances only on accepted words, so each cycle without a word adds one cycle
  reset_state In: while idle, sets h and c to the reset state (h0, c0) instead of accepting x
  busy    Out: a step is in flight
  last_cycles Out(32): cycles from accepting x_t to h_t valid of the last step

A step starts when x is accepted (idle, no load or reset_state pending); h_t/c_t become valid
exactly ``hwrnn.datapath.latency`` cycles later and stay until taken; the next x is accepted from
the following cycle on.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwrnn import formats as fm
from hwrnn.checkpoint import QuantLayer
from hwrnn.config import ConfigError, Folding
from hwrnn.datapath import (Geometry, asum_width, bias_image, bias_width, s1_width,
                            weight_image)
from hwrnn.quant import levels

from .blocks import (ActivationSum, BitPlaneDot, FixedCellUnit, HRequantizer, LookupTable, ScaleBias)
from .float_cell import FloatCellUnit
from .memory import WeightMemory

LOAD_WEIGHT, LOAD_BIAS, LOAD_MULT = 0, 1, 2
WEIGHT_MODES = ("memory", "stream")


class LstmCore(wiring.Component):
    def __init__(self, layer: QuantLayer, fold: Folding, image_file: str | None = None, weights: str = "memory"):
        fold.check_against(layer.cfg)
        if weights not in WEIGHT_MODES:
            raise ConfigError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
        self.weights = weights
        self.layer, self.cfg, self.fold = layer, layer.cfg, fold
        self.geom = g = Geometry(layer.cfg, fold)
        self.image_file = image_file
        cfg = self.cfg
        self.cell_width = cfg.cell_format.width
        self.bias_w = bias_width(layer) + 1  # one spare bit of headroom for run-time loads
        self.mult_w = max(fm.unsigned_width(layer.mult), cfg.mult_bits)
        self.addr_w = max(1, (g.depth - 1).bit_length())
        self.load_data_w = max(g.word_bits, fold.pe * self.bias_w, self.mult_w)
        self.load_addr_w = max(self.addr_w, max(1, (g.row_folds - 1).bit_length()))
        self.out_layout = data.StructLayout({"h": cfg.hidden * cfg.abits, "c": cfg.hidden * self.cell_width})
        self.load_layout = data.StructLayout({"data": self.load_data_w, "addr": self.load_addr_w, "sel": 2})
        ports = {}
        if weights == "stream":
            ports["w"] = In(stream.Signature(g.word_bits))
        super().__init__({
            **ports,
            "x": In(stream.Signature(cfg.input * cfg.abits)),
            "out": Out(stream.Signature(self.out_layout)),
            "load": In(stream.Signature(self.load_layout)),
            "reset_state": In(1),
            "busy": Out(1),
            "last_cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, fold, g, layer = self.cfg, self.fold, self.geom, self.layer
        PE, S, A = fold.pe, fold.simd, cfg.abits
        U = g.units_per_fold
        Rf, Cf, P = g.row_folds, g.col_folds, g.plane_steps
        H, X = cfg.hidden, cfg.input
        Kw = levels(cfg.wbits)
        cw = self.cell_width
        h0, c0 = fm.initial_state(cfg)

        # ---- storage -------------------------------------------------------------------------
        streamed = self.weights == "stream"
        if streamed:
            w_word = Signal(g.word_bits)  # the word taken from the w stream, one cycle later (like a read)
        else:
            m.submodules.wmem = wmem = WeightMemory(g.word_bits, g.depth, weight_image(layer, fold), self.image_file)
            w_word = wmem.rdata
        bw = self.bias_w
        bias_words = [sum((b & ((1 << bw) - 1)) << (bw * l) for l, b in enumerate(row)) for row in bias_image(layer, fold)]
        # depth at least 2: a one-word memory would get a zero-width address port in Verilog
        m.submodules.bmem = bmem = Memory(shape=PE * bw, depth=max(Rf, 2), init=bias_words)
        b_rd = bmem.read_port()
        b_wr = bmem.write_port()
        mult = Signal(self.mult_w, init=layer.mult)

        # activations [x ; h_prev ; 0-padding], codes LSB first
        h_init = sum(h0 << (A * j) for j in range(H))
        act = Signal(g.padded_columns * A, init=h_init << (X * A))
        act_x = act[0:X * A]
        act_h = act[X * A:(X + H) * A]
        h_next = Signal(g.padded_units * A)
        c_all = Signal(g.padded_units * cw, init=sum((c0 & ((1 << cw) - 1)) << (cw * j) for j in range(g.padded_units)))
        m.d.comb += [self.out.payload.h.eq(h_next[:H * A]), self.out.payload.c.eq(c_all[:H * cw])]

        # ---- controller ----------------------------------------------------------------------
        rf = Signal(range(max(Rf, 2)))
        cf = Signal(range(max(Cf, 2)))
        p = Signal(range(max(P, 2)))
        addr = Signal(self.addr_w)
        issue = Signal()
        cycles = Signal(32)
        done = Signal()  # the tail writes the last row fold's h this cycle
        m.d.comb += self.busy.eq(0)
        # `alive` rises one cycle after reset; gating the ready outputs with it also gives event-driven
        # simulators (Icarus) a change to evaluate them on, instead of leaving them X at time 0
        alive = Signal()
        m.d.sync += alive.eq(1)
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                m.d.comb += self.load.ready.eq(alive)
                m.d.comb += self.x.ready.eq(alive & ~self.load.valid & ~self.reset_state)
                with m.If(self.load.valid & alive):
                    pl = self.load.payload
                    m.d.comb += [b_wr.en.eq(pl.sel == LOAD_BIAS), b_wr.addr.eq(pl.addr), b_wr.data.eq(pl.data)]
                    if not streamed:
                        m.d.comb += [wmem.we.eq(pl.sel == LOAD_WEIGHT), wmem.waddr.eq(pl.addr),
                                     wmem.wdata.eq(pl.data)]
                    with m.If(pl.sel == LOAD_MULT):
                        m.d.sync += mult.eq(pl.data)
                with m.Elif(self.reset_state):
                    m.d.sync += [act_h.eq(h_init), c_all.eq(c_all.init)]
                with m.Elif(self.x.valid & alive):
                    m.d.sync += [act_x.eq(self.x.payload), rf.eq(0), cf.eq(0), p.eq(0), addr.eq(0), cycles.eq(1)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                if streamed:
                    m.d.comb += [self.w.ready.eq(alive), issue.eq(self.w.valid)]  # alive: see above
                    with m.If(issue):
                        m.d.sync += w_word.eq(self.w.payload)
                else:
                    m.d.comb += issue.eq(1)
                last_p = p == P - 1
                last_cf = cf == Cf - 1
                with m.If(issue):
                    m.d.sync += [addr.eq(addr + 1), p.eq(Mux(last_p, 0, p + 1))]
                    with m.If(last_p):
                        m.d.sync += cf.eq(Mux(last_cf, 0, cf + 1))
                        with m.If(last_cf):
                            m.d.sync += rf.eq(rf + 1)
                            with m.If(rf == Rf - 1):
                                m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(done):
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [self.out.valid.eq(1), self.busy.eq(1)]
                with m.If(self.out.ready):
                    m.d.sync += act_h.eq(h_next[:H * A])
                    m.next = "IDLE"

        # ---- stage 0 -> 1: weight word read, activation slice registered -----------------------
        if not streamed:
            m.d.comb += wmem.raddr.eq(addr)
        s1_valid, s1_first, s1_last = Signal(), Signal(), Signal()
        s1_rf = Signal.like(rf)
        s1_p = Signal.like(p)
        s1_act = Signal(S * A)
        m.d.sync += [s1_valid.eq(issue), s1_first.eq((cf == 0) & (p == 0)),
                     s1_last.eq((cf == Cf - 1) & (p == P - 1)), s1_rf.eq(rf), s1_p.eq(p),
                     s1_act.eq(act.word_select(cf, S * A))]

        # ---- stage 1 -> 2: popcount partial products -----------------------------------------
        PW = g.planes_per_word
        serial = fold.planes == "serial"
        partials = []
        for lane in range(PE):
            dot = BitPlaneDot(S, PW, A, max_shift=(cfg.wbits - 1) if serial else 0)
            m.submodules[f"dot{lane}"] = dot
            m.d.comb += [dot.w.eq(w_word[lane * PW * S:(lane + 1) * PW * S]), dot.a.eq(s1_act)]
            if serial:
                m.d.comb += dot.shift.eq(s1_p)
            pr = Signal(dot.out_width, name=f"partial{lane}")
            m.d.sync += pr.eq(dot.dot)
            partials.append(pr)
        m.submodules.asum = asum = ActivationSum(S, A)
        m.d.comb += asum.a.eq(s1_act)
        s2_asum = Signal(asum.sum.shape())
        m.d.sync += s2_asum.eq(Mux(s1_p == 0, asum.sum, 0) if serial else asum.sum)
        s2_valid, s2_first, s2_last = Signal(), Signal(), Signal()
        s2_rf = Signal.like(rf)
        m.d.sync += [s2_valid.eq(s1_valid), s2_first.eq(s1_first), s2_last.eq(s1_last), s2_rf.eq(s1_rf)]

        # ---- stage 2 -> 3: accumulate ----------------------------------------------------------
        accs = [Signal(s1_width(cfg), name=f"acc{lane}") for lane in range(PE)]
        acc_a = Signal(asum_width(cfg))
        with m.If(s2_valid):
            for lane in range(PE):
                m.d.sync += accs[lane].eq(Mux(s2_first, partials[lane], accs[lane] + partials[lane]))
            m.d.sync += acc_a.eq(Mux(s2_first, s2_asum, acc_a + s2_asum))
        s3_valid = Signal()
        s3_rf = Signal.like(rf)
        m.d.sync += [s3_valid.eq(s2_valid & s2_last), s3_rf.eq(s2_rf)]
        m.d.comb += b_rd.addr.eq(s2_rf)

        # ---- stage 3 -> 4: odd-weight correction, scale and bias (ScaleBias registers) ----------
        aw = fm.acc_width(cfg)
        addrs = []
        for lane in range(PE):
            sb = ScaleBias(cfg, aw, self.mult_w, bw, layer.shift)
            m.submodules[f"sb{lane}"] = sb
            fin = Signal(signed(aw), name=f"fin{lane}")
            twice = Cat(Const(0, 1), accs[lane], Const(0, 1)).as_signed()  # 2*acc, non-negative
            m.d.comb += fin.eq(twice - Cat(acc_a, Const(0, 1)).as_signed() * Kw)
            m.d.comb += [sb.acc.eq(fin), sb.mult.eq(mult),
                         sb.bias.eq(b_rd.data[lane * bw:(lane + 1) * bw].as_signed()), sb.valid.eq(s3_valid)]
            addrs.append(sb.addr)
        s4_valid = Signal()
        s4_rf = Signal.like(rf)
        m.d.sync += [s4_valid.eq(s3_valid), s4_rf.eq(s3_rf)]

        # ---- stage 4 -> 5: gate LUT reads ------------------------------------------------------
        sig = fm.sigmoid_lut(cfg)
        cand = fm.candidate_lut(cfg)
        gate_vals = []
        for lane in range(PE):
            lut = LookupTable(cand if lane % 4 == 2 else sig, cfg.lut_bits)
            m.submodules[f"lut{lane}"] = lut
            m.d.comb += lut.addr.eq(addrs[lane])
            gate_vals.append(lut.data)
        s5_valid = Signal()
        s5_rf = Signal.like(rf)
        m.d.sync += [s5_valid.eq(s4_valid), s5_rf.eq(s4_rf)]

        # ---- stage 5 -> 6: cell update (c written in place) -------------------------------------
        c_fold = c_all.word_select(s5_rf, U * cw)
        s6_o = [Signal(fm.gate_width(cfg), name=f"s6_o{k}") for k in range(U)]
        c_addrs = []
        c_new_all = []
        for k in range(U):
            cu = FloatCellUnit(cfg) if cfg.cell_format.kind == "float" else FixedCellUnit(cfg)
            m.submodules[f"cell{k}"] = cu
            i_, f_, g_, o_ = gate_vals[4 * k:4 * k + 4]
            m.d.comb += [cu.i.eq(i_), cu.f.eq(f_), cu.g.eq(g_), cu.c.eq(c_fold[k * cw:(k + 1) * cw])]
            c_new_all.append(cu.c_new)
            c_addrs.append(cu.c_addr)
            m.d.sync += [s6_o[k].eq(o_)]
        with m.If(s5_valid):
            m.d.sync += c_fold.eq(Cat(*c_new_all))
        s6_valid = Signal()
        s6_rf = Signal.like(rf)
        m.d.sync += [s6_valid.eq(s5_valid), s6_rf.eq(s5_rf)]
        # sigmoid(c) table read addressed from the registered cell unit output
        s6_caddr = [Signal(cfg.lut_bits, name=f"s6_caddr{k}") for k in range(U)]
        for k in range(U):
            m.d.sync += s6_caddr[k].eq(c_addrs[k])

        # ---- stage 6 -> 7: sigmoid(c) LUT read --------------------------------------------------
        sc_vals = []
        s7_o = [Signal(fm.gate_width(cfg), name=f"s7_o{k}") for k in range(U)]
        for k in range(U):
            lut = LookupTable(sig, cfg.lut_bits)
            m.submodules[f"clut{k}"] = lut
            m.d.comb += lut.addr.eq(s6_caddr[k])
            sc_vals.append(lut.data)
            m.d.sync += s7_o[k].eq(s6_o[k])
        s7_valid = Signal()
        s7_rf = Signal.like(rf)
        m.d.sync += [s7_valid.eq(s6_valid), s7_rf.eq(s6_rf)]

        # ---- stage 7 -> 8: h requantization, h_next written, step done --------------------------
        hs = []
        for k in range(U):
            hq = HRequantizer(cfg)
            m.submodules[f"hq{k}"] = hq
            m.d.comb += [hq.o.eq(s7_o[k]), hq.sc.eq(sc_vals[k])]
            hs.append(hq.h)
        with m.If(s7_valid):
            m.d.sync += h_next.word_select(s7_rf, U * A).eq(Cat(*hs))
        m.d.comb += done.eq(s7_valid & (s7_rf == Rf - 1))
        with m.If(done):
            m.d.sync += self.last_cycles.eq(cycles + 1)
        return m
