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

``dsp`` selects how the registered multipliers (scale-and-bias, cell update, h requantization) are
elaborated: None = behavioural Amaranth (the emitted Verilog), "ecp5" = MULT18X18D primitives
with their internal input and output registers (rtl_gen.synth for ECP5); the latency is the same.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwrnn import formats as fm
from hwrnn.checkpoint import QuantLayer
from hwrnn.config import ConfigError, Folding
from hwrnn.datapath import Geometry, bias_image, bias_width, weight_image

from .blocks import LookupTable, ScaleBias, delay_line
from .memory import WeightMemory
from .multiplier import check_dsp
from .units import gate_set_unit, mac_unit

LOAD_WEIGHT, LOAD_BIAS, LOAD_MULT = 0, 1, 2
WEIGHT_MODES = ("memory", "stream")


def port_widths(layer: QuantLayer, fold: Folding) -> dict:
    """Widths the core's ports and registers derive from the layer: bias words (bias_width + 1, a
    spare bit of headroom for run-time loads), the multiplier M, the load stream's data field."""
    g = Geometry(layer.cfg, fold)
    bias_w = bias_width(layer) + 1
    mult_w = max(fm.unsigned_width(layer.mult), layer.cfg.mult_bits)
    return {"bias": bias_w, "mult": mult_w, "load_data": max(g.word_bits, fold.pe * bias_w, mult_w)}


class LstmCore(wiring.Component):
    def __init__(self, layer: QuantLayer, fold: Folding, image_file: str | None = None, weights: str = "memory",
                 dsp: str | None = None):
        fold.check_against(layer.cfg)
        self.dsp = check_dsp(dsp)
        if weights not in WEIGHT_MODES:
            raise ConfigError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
        self.weights = weights
        self.layer, self.cfg, self.fold = layer, layer.cfg, fold
        self.geom = g = Geometry(layer.cfg, fold)
        self.image_file = image_file
        cfg = self.cfg
        self.cell_width = cfg.cell_format.width
        widths = port_widths(layer, fold)
        self.bias_w, self.mult_w = widths["bias"], widths["mult"]
        self.addr_w = max(1, (g.depth - 1).bit_length())
        self.load_data_w = widths["load_data"]
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
        # simulators (Icarus) a change to evaluate them on, instead of leaving them X at time 0.
        # `idle` is a register equal to (state == IDLE) & alive: the load and x handshakes and the
        # memory write enables hang off a flip-flop, not off the FSM's state decoder (which made
        # the state -> write-enable path of a LUT-RAM weight memory the critical path)
        alive = Signal()
        m.d.sync += alive.eq(1)
        idle = Signal()
        # run-time loading (outside the FSM, so the write enables decode no state)
        m.d.comb += self.load.ready.eq(idle)
        with m.If(self.load.valid & idle):
            pl = self.load.payload
            m.d.comb += [b_wr.en.eq(pl.sel == LOAD_BIAS), b_wr.addr.eq(pl.addr), b_wr.data.eq(pl.data)]
            with m.If(pl.sel == LOAD_MULT):
                m.d.sync += mult.eq(pl.data)
        if not streamed:
            # weight writes are registered (one cycle later): the write enables of a wide LUT-RAM
            # weight memory then hang off one flip-flop, not off the load handshake (that path
            # was critical on ECP5). The word is in place before any read of it: x is accepted
            # the cycle after the last load word at the earliest, the first read a cycle later.
            pl = self.load.payload
            w_we, w_waddr, w_wdata = Signal(), Signal(self.addr_w), Signal(g.word_bits)
            m.d.sync += [w_we.eq(self.load.valid & idle & (pl.sel == LOAD_WEIGHT)), w_waddr.eq(pl.addr),
                         w_wdata.eq(pl.data)]
            m.d.comb += [wmem.we.eq(w_we), wmem.waddr.eq(w_waddr), wmem.wdata.eq(w_wdata)]
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                m.d.sync += idle.eq(1)
                m.d.comb += self.x.ready.eq(idle & ~self.load.valid & ~self.reset_state)
                with m.If(self.load.valid & idle):
                    pass  # loading (above); x and reset_state wait
                with m.Elif(self.reset_state & idle):
                    m.d.sync += [act_h.eq(h_init), c_all.eq(c_all.init)]
                with m.Elif(self.x.valid & idle):
                    m.d.sync += [act_x.eq(self.x.payload), rf.eq(0), cf.eq(0), p.eq(0), addr.eq(0), cycles.eq(1),
                                 idle.eq(0)]
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
                    m.d.sync += [act_h.eq(h_next[:H * A]), idle.eq(1)]
                    m.next = "IDLE"

        # ---- the pipeline (stages and their cycles: hwrnn.datapath.pipeline_stages) ------------
        # control travels with the data: valid, first/last column fold of a row, row fold, plane
        if not streamed:
            m.d.comb += wmem.raddr.eq(addr)
        c_valid = Signal()
        c_first, c_last = Signal(), Signal()
        m.d.comb += [c_valid.eq(issue), c_first.eq((cf == 0) & (p == 0)), c_last.eq((cf == Cf - 1) & (p == P - 1))]
        ctl = Cat(c_valid, c_first, c_last, rf, p)

        def delayed(value, n, name):
            return delay_line(m, value, n, name)

        def unpack(bits):
            return bits[0], bits[1], bits[2], bits[3:3 + len(rf)], bits[3 + len(rf):]

        # weight read (1) and weight register (1); the activation slice travels alongside
        w_reg = Signal(g.word_bits)
        m.d.sync += w_reg.eq(w_word)
        act_slice = Signal(S * A)
        m.d.sync += act_slice.eq(act.word_select(cf, S * A))
        act_reg = delayed(act_slice, 1, "act_slice")
        ctl_dot = delayed(ctl, 2, "ctl_w")
        dot_valid, dot_first, dot_last, dot_rf, dot_p = unpack(ctl_dot)

        # the weight coding's MAC array (popcount trees | partial | accumulate): per-lane acc
        m.submodules.mac = mac = mac_unit(cfg, fold)
        m.d.comb += [mac.w.eq(w_reg), mac.a.eq(act_reg), mac.valid.eq(dot_valid), mac.first.eq(dot_first),
                     mac.last.eq(dot_last), mac.plane.eq(dot_p)]
        s2_rf = delayed(dot_rf, mac.latency - 1, "rf_mac")
        s3_valid = mac.done
        s3_rf = Signal.like(rf)
        m.d.sync += s3_rf.eq(s2_rf)
        # bias word of the row fold: read while the last partial is accumulated (valid with the sums)
        m.d.comb += b_rd.addr.eq(s2_rf)
        b_word = b_rd.data
        aw = mac.acc_width
        fins = [mac.acc[lane] for lane in range(PE)]
        s4_valid, s4_rf = s3_valid, s3_rf

        # scale and bias -> gate LUT address (ScaleBias.latency registers, the address into the LUT's)
        addrs = []
        sb_latency = None
        for lane in range(PE):
            sb = ScaleBias(cfg, aw, self.mult_w, bw, layer.shift, dsp=self.dsp)
            m.submodules[f"sb{lane}"] = sb
            m.d.comb += [sb.acc.eq(fins[lane]), sb.mult.eq(mult),
                         sb.bias.eq(b_word[lane * bw:(lane + 1) * bw].as_signed())]
            addrs.append(sb.addr)
            sb_latency = sb.latency
        s5_valid = delayed(s4_valid, sb_latency, "v_sb")
        s5_rf = delayed(s4_rf, sb_latency, "rf_sb")

        # gate table read (1) and register (1): lane n*k + j reads gate j's table (hwrnn.gates);
        # the old c of the row fold read alongside
        gate_set = cfg.gate_set
        n_gates = gate_set.n_gates
        tables = gate_set.tables(cfg)
        gate_vals = []
        for lane in range(PE):
            lut = LookupTable(tables[gate_set.gates[lane % n_gates]], cfg.lut_bits)
            m.submodules[f"lut{lane}"] = lut
            m.d.comb += lut.addr.eq(addrs[lane])
            gv = Signal(lut.data.shape(), name=f"gate{lane}")
            m.d.sync += gv.eq(lut.data)
            gate_vals.append(gv)
        s6_valid = delayed(s5_valid, 2, "v_lut")
        s6_rf = delayed(s5_rf, 2, "rf_lut")
        c_old = Signal(U * cw)
        m.d.sync += c_old.eq(c_all.word_select(delayed(s5_rf, 1, "rf_cread"), U * cw))

        # the gate set's unit per unit of the fold (LSTM: cell update written back in place,
        # sigmoid(c), h requantization)
        hs, c_new_all = [], []
        for k in range(U):
            unit = gate_set_unit(cfg, dsp=self.dsp)
            m.submodules[f"unit{k}"] = unit
            for j, name in enumerate(gate_set.gates):
                m.d.comb += getattr(unit, name).eq(gate_vals[n_gates * k + j])
            m.d.comb += unit.c.eq(c_old[k * cw:(k + 1) * cw])
            c_new_all.append(unit.c_new)
            hs.append(unit.h)
            c_lat, unit_lat = unit.c_latency, unit.latency
        c_write = delayed(s6_valid, c_lat, "v_cell")
        c_write_rf = delayed(s6_rf, c_lat, "rf_cell")
        with m.If(c_write):
            m.d.sync += c_all.word_select(c_write_rf, U * cw).eq(Cat(*c_new_all))
        h_valid = delayed(s6_valid, unit_lat, "v_h")
        h_rf = delayed(s6_rf, unit_lat, "rf_h")

        # h_t written; the step is done
        with m.If(h_valid):
            m.d.sync += h_next.word_select(h_rf, U * A).eq(Cat(*hs))
        m.d.comb += done.eq(h_valid & (h_rf == Rf - 1))
        with m.If(done):
            m.d.sync += self.last_cycles.eq(cycles + 1)
        return m
