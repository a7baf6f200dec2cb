"""The k-bit recurrent core: folded popcount MAC array, scale-and-bias, LUTs and the gate set's
units (LSTM: cell-state unit and h requantizer; GRU: reset product, then the update; RNN: the h
requantizer), sequenced phase by phase by a small controller (schedule and latency in
hwrnn.datapath; phases in hwrnn.gates).

Ports (Amaranth streams, valid/ready):
  x       In  stream, payload X*abits bits: code of x_t[j] at bits j*abits.. (LSB first)
  out     Out stream, payload {h: H*abits, c: H*cell_width}: h_t and c_t of the step, unit j at
          bits j*width of its field; h is the low part of the flat payload (cell types without a
          cell state: {h} only)
  load    In  stream, payload {data, addr, sel}: run-time loading while idle; sel 0 = weight word
          at addr, 1 = bias word of row fold addr (numbered across phases; PE lanes of bias_width
          bits), 2 = multiplier M
  w       In  stream (weights="stream" only), payload one weight-memory word: the words of
          hwrnn.datapath.weight_image in address order, depth words per time step; the MAC
          array advances only on accepted words, so each cycle without a word adds one cycle
  reset_state In: while idle, sets h and the stores (c) to the reset state (h0, c0) instead of accepting x
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
from .memory import WeightMemory, memory_attrs, registered_read
from .multiplier import check_dsp
from .units import gate_set_unit, gate_set_unit_class, mac_unit

LOAD_WEIGHT, LOAD_BIAS, LOAD_MULT = 0, 1, 2
WEIGHT_MODES = ("memory", "stream")


def port_widths(layer: QuantLayer, fold: Folding) -> dict:
    """Widths the core's ports and registers derive from the layer: bias words (bias_width + 1, a
    spare bit of headroom for run-time loads), the multiplier M, the load stream's data field."""
    g = Geometry(layer.cfg, fold)
    bias_w = bias_width(layer) + 1
    mult_w = max(fm.unsigned_width(layer.mult), layer.cfg.mult_bits)
    return {"bias": bias_w, "mult": mult_w, "load_data": max(g.word_bits, fold.pe * bias_w, mult_w)}


def lane_tables(cfg, fold: Folding) -> list[tuple[list[int], int]]:
    """Per PE lane, the contents and address bits of its gate table: the table of its gate in every
    phase (lane n*k + j reads the table of the phase's gate j), one table when they agree, else all
    of them with the phase in the top address bits (unused phase codes 0)."""
    gate_set = cfg.gate_set
    tables = gate_set.tables(cfg)
    phases = gate_set.phases
    phase_bits = (len(phases) - 1).bit_length()
    out = []
    for lane in range(fold.pe):
        per = [tables[ph.gates[lane % len(ph.gates)]] for ph in phases]
        if all((t == per[0]).all() for t in per):
            out.append(([int(v) for v in per[0]], cfg.lut_bits))
        else:
            pad = ((1 << phase_bits) - len(per)) << cfg.lut_bits
            out.append(([int(v) for t in per for v in t] + [0] * pad, cfg.lut_bits + phase_bits))
    return out


class LstmCore(wiring.Component):
    def __init__(self, layer: QuantLayer, fold: Folding, image_file: str | None = None, weights: str = "memory",
                 dsp: str | None = None, fixed_weights: bool = False):
        fold.check_against(layer.cfg)
        for p in range(len(layer.cfg.gate_set.phases)):
            gate_set_unit_class(layer.cfg, p)  # ConfigError now for a cell type without RTL units
        self.dsp = check_dsp(dsp)
        if weights not in WEIGHT_MODES:
            raise ConfigError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
        self.weights = weights
        self.layer, self.cfg, self.fold = layer, layer.cfg, fold
        self.geom = g = Geometry(layer.cfg, fold)
        self.image_file = image_file
        self.fixed_weights = bool(fixed_weights)  # the user ties `load` off (rtl_gen.memory.fixed_memory_attrs)
        cfg = self.cfg
        self.stores = cfg.gate_set.stores(cfg)
        self.cell_width = cfg.gate_set.cell_bits(cfg)
        widths = port_widths(layer, fold)
        self.bias_w, self.mult_w = widths["bias"], widths["mult"]
        self.addr_w = max(1, (g.depth - 1).bit_length())
        self.load_data_w = widths["load_data"]
        self.load_addr_w = max(self.addr_w, max(1, (g.row_folds - 1).bit_length()))
        self.out_layout = data.StructLayout({"h": cfg.hidden * cfg.abits,
                                             **{n: cfg.hidden * self.stores[n].width for n in cfg.gate_set.state_stores}})
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
        Cf, P = g.col_folds, g.plane_steps
        H, X = cfg.hidden, cfg.input
        gate_set = cfg.gate_set
        phases = gate_set.phases
        NP = len(phases)
        Rfs = [g.phase_row_folds(q) for q in range(NP)]   # row folds of each phase
        Us = [g.phase_units(q) for q in range(NP)]        # units per row fold of each phase
        Rf = g.row_folds                                  # across phases (bias words)
        NU = g.padded_units
        h0, _c0 = fm.initial_state(cfg)

        # ---- storage -------------------------------------------------------------------------
        streamed = self.weights == "stream"
        if streamed:
            w_word = Signal(g.word_bits)  # the word taken from the w stream, one cycle later (like a read)
        else:
            m.submodules.wmem = wmem = WeightMemory(g.word_bits, g.depth, weight_image(layer, fold), self.image_file,
                                                    fixed=self.fixed_weights)
            w_word = wmem.rdata
        bw = self.bias_w
        bias_words = [sum((b & ((1 << bw) - 1)) << (bw * l) for l, b in enumerate(row)) for row in bias_image(layer, fold)]
        # depth at least 2: a one-word memory would get a zero-width address port in Verilog
        m.submodules.bmem = bmem = Memory(shape=PE * bw, depth=max(Rf, 2), init=bias_words,
                                          attrs=memory_attrs(self.fixed_weights, max(Rf, 2)))
        b_raddr = Signal(range(max(Rf, 2)))
        b_wr = bmem.write_port()
        mult = Signal(self.mult_w, init=layer.mult)

        # activations [x ; h_prev ; 0-padding], codes LSB first
        h_init = sum(h0 << (A * j) for j in range(H))
        act = Signal(g.padded_columns * A, init=h_init << (X * A))
        act_x = act[0:X * A]
        act_h = act[X * A:(X + H) * A]
        h_next = Signal(NU * A)
        # the vectors phases write ("h": h_next) and read in their h columns ("h": h_{t-1})
        results = {"h": h_next}
        for ph in phases:
            if ph.result != "h" and ph.result not in results:
                results[ph.result] = Signal(NU * A, name=ph.result)
        # per-unit stores (hwrnn.gates: the LSTM's c, the GRU's u)
        stores = {}
        for name, st in self.stores.items():
            w = st.width
            stores[name] = Signal(NU * w, init=sum((st.init & ((1 << w) - 1)) << (w * j) for j in range(NU)),
                                  name="c_all" if name == "c" else f"{name}_all")
        m.d.comb += self.out.payload.h.eq(h_next[:H * A])
        for name in gate_set.state_stores:
            m.d.comb += getattr(self.out.payload, name).eq(stores[name][:H * self.stores[name].width])

        # ---- controller ----------------------------------------------------------------------
        rf = Signal(range(max(max(Rfs), 2)))
        cf = Signal(range(max(Cf, 2)))
        p = Signal(range(max(P, 2)))
        phase = Signal(range(NP)) if NP > 1 else Const(0, 1)
        addr = Signal(self.addr_w)
        issue = Signal()
        cycles = Signal(32)
        done = Signal()  # the tail writes the last row fold of the current phase this cycle
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

        def per_phase(values, sel):
            """values[phase] as a value selected by ``sel`` (a constant with one phase)."""
            out = values[-1]
            for q in range(len(values) - 2, -1, -1):
                out = Mux(sel == q, values[q], out)
            return out

        last_rf = per_phase([Const(n - 1, len(rf)) for n in Rfs], phase)
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                m.d.sync += idle.eq(1)
                m.d.comb += self.x.ready.eq(idle & ~self.load.valid & ~self.reset_state)
                with m.If(self.load.valid & idle):
                    pass  # loading (above); x and reset_state wait
                with m.Elif(self.reset_state & idle):
                    m.d.sync += act_h.eq(h_init)
                    m.d.sync += [v.eq(v.init) for v in stores.values()]
                with m.Elif(self.x.valid & idle):
                    m.d.sync += [act_x.eq(self.x.payload), rf.eq(0), cf.eq(0), p.eq(0), addr.eq(0), cycles.eq(1),
                                 idle.eq(0)]
                    if NP > 1:
                        m.d.sync += phase.eq(0)
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
                            with m.If(rf == last_rf):
                                m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(done):
                    if NP > 1:
                        # the next phase issues its first word from the next cycle (its source vector is
                        # written at the end of this one)
                        with m.If(phase == NP - 1):
                            m.next = "OUT"
                        with m.Else():
                            m.d.sync += [phase.eq(phase + 1), rf.eq(0)]
                            m.next = "RUN"
                    else:
                        m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [self.out.valid.eq(1), self.busy.eq(1)]
                with m.If(self.out.ready):
                    m.d.sync += [act_h.eq(h_next[:H * A]), idle.eq(1)]
                    m.next = "IDLE"

        # ---- the pipeline (stages and their cycles: hwrnn.datapath.pipeline_stages) ------------
        # control travels with the data: valid, first/last column fold of a row, row fold, plane, phase
        if not streamed:
            m.d.comb += wmem.raddr.eq(addr)
        c_valid = Signal()
        c_first, c_last = Signal(), Signal()
        m.d.comb += [c_valid.eq(issue), c_first.eq((cf == 0) & (p == 0)), c_last.eq((cf == Cf - 1) & (p == P - 1))]
        ctl = Cat(c_valid, c_first, c_last, rf, p)
        rf_ph = Cat(rf, phase) if NP > 1 else rf   # row fold and phase, travelling together

        def delayed(value, n, name):
            return delay_line(m, value, n, name)

        def unpack(bits):
            return bits[0], bits[1], bits[2], bits[3:3 + len(rf)], bits[3 + len(rf):]

        def split(v):
            """(row fold, phase) of a delayed rf_ph."""
            return (v[:len(rf)], v[len(rf):]) if NP > 1 else (v, Const(0, 1))

        # weight read (1) and weight register (1); the activation slice travels alongside
        w_reg = Signal(g.word_bits)
        m.d.sync += w_reg.eq(w_word)
        act_slice = Signal(S * A)
        pad = g.padded_columns * A - (X + H) * A
        sources = []
        for ph in phases:
            if ph.source == "h":
                sources.append(act)
            else:
                sources.append(Cat(act_x, results[ph.source][:H * A], Const(0, pad)) if pad else
                               Cat(act_x, results[ph.source][:H * A]))
        if NP == 1:
            m.d.sync += act_slice.eq(act.word_select(cf, S * A))
        else:
            m.d.sync += act_slice.eq(per_phase([v.word_select(cf, S * A) for v in sources], phase))
        act_reg = delayed(act_slice, 1, "act_slice")
        ctl_dot = delayed(ctl, 2, "ctl_w")
        dot_valid, dot_first, dot_last, dot_rf, dot_p = unpack(ctl_dot)
        dot_rfph = Cat(dot_rf, delayed(phase, 2, "phase_w")) if NP > 1 else dot_rf

        # the weight coding's MAC array (popcount trees | partial | accumulate): per-lane acc
        m.submodules.mac = mac = mac_unit(cfg, fold)
        m.d.comb += [mac.w.eq(w_reg), mac.a.eq(act_reg), mac.valid.eq(dot_valid), mac.first.eq(dot_first),
                     mac.last.eq(dot_last), mac.plane.eq(dot_p)]
        s2_rfph = delayed(dot_rfph, mac.latency - 1, "rf_mac")
        s3_valid = mac.done
        s3_rfph = Signal.like(rf_ph)
        m.d.sync += s3_rfph.eq(s2_rfph)
        # bias word of the row fold (numbered across phases): read while the last partial is
        # accumulated (valid with the sums)
        s2_rf, s2_phase = split(s2_rfph)
        if NP == 1:
            m.d.comb += b_raddr.eq(s2_rf)
        else:
            m.d.comb += b_raddr.eq(s2_rf + per_phase([Const(g.phase_fold_offset(q), len(b_raddr))
                                                        for q in range(NP)], s2_phase))
        b_word = registered_read(m, bmem, b_raddr, "b_word")
        aw = mac.acc_width
        fins = [mac.acc[lane] for lane in range(PE)]
        s4_valid, s4_rfph = s3_valid, s3_rfph

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
        s5_rfph = delayed(s4_rfph, sb_latency, "rf_sb")
        s5_rf, s5_phase = split(s5_rfph)

        # gate table read (1) and register (1): lane n*k + j reads the table of the phase's gate j
        # (hwrnn.gates); a lane whose gates' tables differ between phases reads one table of them
        # all, the phase in the address's top bits
        gate_vals = []
        for lane, (contents, addr_bits) in enumerate(lane_tables(cfg, fold)):
            lut = LookupTable(contents, addr_bits)
            m.d.comb += lut.addr.eq(addrs[lane] if addr_bits == cfg.lut_bits else Cat(addrs[lane], s5_phase))
            m.submodules[f"lut{lane}"] = lut
            gv = Signal(lut.data.shape(), name=f"gate{lane}")
            m.d.sync += gv.eq(lut.data)
            gate_vals.append(gv)
        s6_valid = delayed(s5_valid, 2, "v_lut")
        s6_rf, s6_phase = split(delayed(s5_rfph, 2, "rf_lut"))
        # old words of the stores and of h_{t-1} the phase's units read, for its row fold: read with
        # the gate table, registered beside the gate values
        reads = any(ph.reads or gate_set_unit_class(cfg, q).reads_h for q, ph in enumerate(phases))
        rf_read = delayed(s5_rf, 1, "rf_cread") if reads else None
        h_prev = Cat(act_h, Const(0, (NU - H) * A)) if NU > H else act_h

        # each phase's units, one per unit of its row fold (LSTM: cell update written back in place,
        # sigmoid(c), h requantization; GRU: reset product, then the update)
        done_terms = []
        for q, ph in enumerate(phases):
            U, n = Us[q], len(ph.gates)
            sfx = "" if NP == 1 else f"_p{q}"
            valid_q = s6_valid if NP == 1 else s6_valid & (s6_phase == q)
            olds = {}
            for name in ph.reads:
                w = self.stores[name].width
                old = Signal(U * w, name=("c_old" if name == "c" else f"{name}_old") + sfx)
                m.d.sync += old.eq(stores[name].word_select(rf_read, U * w))
                olds[name] = old
            units = []
            for k in range(U):
                unit = gate_set_unit(cfg, dsp=self.dsp, phase=q)
                m.submodules[f"unit{k}" if NP == 1 else f"unit{k}_p{q}"] = unit
                for j, name in enumerate(ph.gates):
                    m.d.comb += getattr(unit, name).eq(gate_vals[n * k + j])
                for name in ph.reads:
                    w = self.stores[name].width
                    m.d.comb += getattr(unit, name).eq(olds[name][k * w:(k + 1) * w])
                units.append(unit)
            if units[0].reads_h:
                h_old = Signal(U * A, name="h_old" + sfx)
                m.d.sync += h_old.eq(h_prev.word_select(rf_read, U * A))
                for k, unit in enumerate(units):
                    m.d.comb += unit.h_old.eq(h_old[k * A:(k + 1) * A])
            for name in ph.writes:
                lat = units[0].write_latency[name]
                tag = "cell" if name == "c" else f"{name}_write"
                w_valid = delayed(valid_q, lat, "v_" + tag + sfx)
                w_rf = delayed(s6_rf, lat, "rf_" + tag + sfx)
                w = self.stores[name].width
                with m.If(w_valid):
                    m.d.sync += stores[name].word_select(w_rf, U * w).eq(Cat(*(getattr(u, f"{name}_new") for u in units)))
            lat = units[0].latency
            r_valid = delayed(valid_q, lat, "v_h" + sfx)
            r_rf = delayed(s6_rf, lat, "rf_h" + sfx)
            # the phase's result written (h_t: the step is done with the last row fold)
            with m.If(r_valid):
                m.d.sync += results[ph.result].word_select(r_rf, U * A).eq(Cat(*(u.h for u in units)))
            done_terms.append(r_valid & (r_rf == Rfs[q] - 1))
        m.d.comb += done.eq(Cat(*done_terms).any())
        with m.If(done & (phase == NP - 1) if NP > 1 else done):
            m.d.sync += self.last_cycles.eq(cycles + 1)
        return m
