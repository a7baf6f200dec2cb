"""Which RTL unit builds each contract class of hwrnn's axes of variation, and the units that are
one gate set's part of the core.

* cell-state formats (hwrnn.cell_state) -> ``CELL_STATE_UNITS``: a component with inputs f, i, g,
  c (cell word) and outputs c_new (``c_latency`` cycles later) and c_addr, the sigmoid(c_new) table
  address (``addr_latency`` cycles after c_new, for a table's read-address register);
* gate sets (hwrnn.gates) -> ``GATE_SET_UNITS``: per phase of the gate set, a component per unit
  with one input per gate of the phase (the registered table outputs), ``h_old`` (the unit's
  h_{t-1} code) if it reads it (class attribute ``reads_h``), one input per store the phase reads
  (its old word) and one output ``<store>_new`` per store it writes (valid ``write_latency[store]``
  cycles after the gates), and ``h``, the phase's result code, ``latency`` cycles after the gates
  (the gate set's ``stages`` of the phase);
* weight codings (hwrnn.weight_code) -> ``MAC_UNITS``: a MAC array (rtl_gen.mac) from weight
  words and activation slices to per-lane accumulators acc = sum mac_value * a.

The core looks its units up here and never branches on a format, cell type or coding itself.
Each unit also reports what it builds (classmethod ``built``, for rtl_gen.cost): ``cell_state_built``,
``gate_set_built`` and ``mac_built`` look those reports up the same way.
"""
from __future__ import annotations

from functools import partial

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwrnn import formats as fm
from hwrnn.cell_state import FixedPointCell, FloatingPointCell
from hwrnn.config import ConfigError, Folding, LayerConfig
from hwrnn.gates import GruGates, LstmGates, RnnGates
from hwrnn.quant import levels
from hwrnn.resources import Built, Reg
from hwrnn.weight_code import BalancedCode, ExponentialCode, Pow2TernaryCode, TernaryCode, TernaryMeanCode

from .blocks import FixedCellUnit, HRequantizer, LookupTable, delay_line
from .float_cell import FloatCellUnit
from .mac import BalancedMac, ExponentialMac, TernaryMac
from .multiplier import check_dsp

#: cell-state format class -> unit constructor ``(cfg, dsp=...)`` (pipelined as the core needs it)
CELL_STATE_UNITS = {
    FixedPointCell: FixedCellUnit,
    FloatingPointCell: partial(FloatCellUnit, pipelined=True),
}


def _unit_of(registry: dict, contract, what: str):
    """The unit constructor registered for a contract object's class; ConfigError if none."""
    try:
        return registry[type(contract)]
    except KeyError:
        raise ConfigError(f"no RTL unit for {what}") from None


def cell_state_unit(cfg: LayerConfig, dsp: str | None = None):
    """The pipelined unit of cfg's cell-state format."""
    return _unit_of(CELL_STATE_UNITS, cfg.cell_format, f"cell format {cfg.cell}")(cfg, dsp=dsp)


def cell_state_built(cfg: LayerConfig) -> Built:
    """What ``cell_state_unit(cfg)`` builds (its class's ``built``, with the same options)."""
    build = _unit_of(CELL_STATE_UNITS, cfg.cell_format, f"cell format {cfg.cell}")
    return getattr(build, "func", build).built(cfg, **getattr(build, "keywords", {}))


class LstmUnit(wiring.Component):
    """One LSTM unit after the gate tables: the cell-state unit, the sigmoid(c) table and the h
    requantizer (hwrnn.gates.LstmGates.update; stages LstmGates.stages).

    Ports: i, f, o In(unsigned(G+1)), g In (candidate width, signed for tanh), c In(cell word);
    c_new Out(cell word), valid ``c_latency`` cycles after the gates (the core writes it back);
    h Out(abits), valid ``latency`` cycles after the gates.
    """

    reads_h = False

    def __init__(self, cfg: LayerConfig, dsp: str | None = None):
        self.cfg = cfg
        self.dsp = check_dsp(dsp)
        stages = LstmGates().stages(cfg)
        self.c_latency = stages["cell_update"]
        self.write_latency = LstmGates().write_stages(cfg)
        self.latency = sum(stages.values())
        cw = cfg.cell_format.width
        cell_shape = signed(cw) if cfg.cell_format.signed_word else unsigned(cw)
        gs = signed(fm.candidate_width(cfg)) if cfg.candidate == "tanh" else unsigned(fm.candidate_width(cfg))
        super().__init__({
            "i": In(unsigned(fm.gate_width(cfg))),
            "f": In(unsigned(fm.gate_width(cfg))),
            "g": In(gs),
            "o": In(unsigned(fm.gate_width(cfg))),
            "c": In(cell_shape),
            "c_new": Out(cell_shape),
            "h": Out(cfg.abits),
        })

    @staticmethod
    def gate_widths(cfg: LayerConfig) -> dict[str, int]:
        """Bits of each gate input (the width the model gives the gate's table and register)."""
        return {"i": fm.gate_width(cfg), "f": fm.gate_width(cfg), "g": fm.candidate_width(cfg),
                "o": fm.gate_width(cfg)}

    @classmethod
    def built(cls, cfg: LayerConfig) -> Built:
        """Its own registers (o delayed beside the cell update, the address and the sigmoid(c) read;
        sc), the cell-state unit ("cell"), the sigmoid(c) table ("clut") and the requantizer ("hq")."""
        stages = LstmGates().stages(cfg)
        G1 = fm.gate_width(cfg)
        o_delay = stages["cell_update"] + stages["cell_address"] + stages["sigmoid_c_read"] + stages["sigmoid_c_register"]
        return Built(regs=(Reg("o_delay", G1 * o_delay), Reg("sc", G1)), stages=sum(stages.values()),
                     subs=(("cell", 1, cell_state_built(cfg)),
                           ("clut", 1, LookupTable.built(G1, cfg.lut_bits, "cell_rom")),
                           ("hq", 1, HRequantizer.built(cfg))))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        m.submodules.cell = cu = cell_state_unit(cfg, dsp=self.dsp)
        m.d.comb += [cu.i.eq(self.i), cu.f.eq(self.f), cu.g.eq(self.g), cu.c.eq(self.c), self.c_new.eq(cu.c_new)]
        assert cu.c_latency == self.c_latency
        # sigmoid(c) table read (1) and register (1)
        m.submodules.clut = lut = LookupTable(fm.sigmoid_lut(cfg), cfg.lut_bits)
        m.d.comb += lut.addr.eq(cu.c_addr)
        sc = Signal(lut.data.shape(), name="sc")
        m.d.sync += sc.eq(lut.data)
        # o waits beside the cell update, the address and the sigmoid(c) read
        o = delay_line(m, self.o, cu.c_latency + cu.addr_latency + 2, "o")
        m.submodules.hq = hq = HRequantizer(cfg, dsp=self.dsp)
        m.d.comb += [hq.o.eq(o), hq.sc.eq(sc), self.h.eq(hq.h)]
        assert cu.c_latency + cu.addr_latency + 2 + hq.latency == self.latency
        return m


def _register_clamped(m: Module, h, total, shift: int, Ka: int) -> None:
    """h <= clamp(total >> shift, 0, Ka), registered (total: a signed sum that already holds the
    rounding constant; the h codes of hwrnn.gates.gru_h and rnn_h)."""
    v = total >> shift
    with m.If(total < 0):
        m.d.sync += h.eq(0)
    with m.Elif(v > Ka):
        m.d.sync += h.eq(Ka)
    with m.Else():
        m.d.sync += h.eq(v)


class GruResetUnit(wiring.Component):
    """Phase 1 of He et al.'s GRU, one unit: rh = rshift_round(r * h_old, G) (hwrnn.gates.reset_product),
    the phase's result; u passed on to the store for phase 2. Latency GruGates.RESET_STAGES = 2:
    operands registered | product + rounding, shift registered (u delayed alongside)."""

    reads_h = True
    latency = GruGates.RESET_STAGES

    def __init__(self, cfg: LayerConfig, dsp: str | None = None):
        self.cfg = cfg
        self.write_latency = GruGates().write_stages(cfg, 0)
        G1 = fm.gate_width(cfg)
        super().__init__({"u": In(unsigned(G1)), "r": In(unsigned(G1)), "h_old": In(cfg.abits),
                          "u_new": Out(unsigned(G1)), "h": Out(cfg.abits)})

    @staticmethod
    def gate_widths(cfg: LayerConfig) -> dict[str, int]:
        return {"u": fm.gate_width(cfg), "r": fm.gate_width(cfg)}

    @classmethod
    def built(cls, cfg: LayerConfig) -> Built:
        """Operands r, h_old; u delayed twice; rh (a requantizer: "hq")."""
        G1, A = fm.gate_width(cfg), cfg.abits
        return Built(regs=(Reg("u_delay", 2 * G1),), stages=cls.latency,
                     subs=(("hq", 1, Built(regs=(Reg("operands", G1 + A), Reg("rh", A)), stages=cls.latency,
                                           logic={"units": 1})),))

    def elaborate(self, platform):
        m = Module()
        G = self.cfg.gate_frac
        r, h = Signal.like(self.r), Signal.like(self.h_old)
        m.d.sync += [r.eq(self.r), h.eq(self.h_old)]
        m.d.sync += self.h.eq((r * h + (1 << (G - 1))) >> G)  # <= h: r <= 2**G
        m.d.comb += self.u_new.eq(delay_line(m, self.u, 2, "u"))
        return m


class GruUpdateUnit(wiring.Component):
    """Phase 2 of He et al.'s GRU, one unit: h = clamp(rshift_round((2**G - u) * h_old * 2**G + Ka * u * g,
    2G), 0, Ka) (hwrnn.gates.gru_h). Latency GruGates.UPDATE_STAGES = 3: operands | (2**G - u) * h_old,
    u * g | sum, rounding shift, clamp."""

    reads_h = True
    latency = GruGates.UPDATE_STAGES

    def __init__(self, cfg: LayerConfig, dsp: str | None = None):
        self.cfg = cfg
        self.write_latency = {}
        G1 = fm.gate_width(cfg)
        gs = signed(fm.candidate_width(cfg)) if cfg.candidate == "tanh" else unsigned(fm.candidate_width(cfg))
        super().__init__({"g": In(gs), "u": In(unsigned(G1)), "h_old": In(cfg.abits), "h": Out(cfg.abits)})

    @staticmethod
    def gate_widths(cfg: LayerConfig) -> dict[str, int]:
        return {"g": fm.candidate_width(cfg)}

    @staticmethod
    def _product_widths(cfg: LayerConfig) -> tuple[int, int]:
        G1, A = fm.gate_width(cfg), cfg.abits
        return G1 + A, G1 + fm.candidate_width(cfg)

    @classmethod
    def built(cls, cfg: LayerConfig) -> Built:
        """Operands g, u, h_old; the products (1 - u) h and u g; h (a requantizer: "hq")."""
        G1, A = fm.gate_width(cfg), cfg.abits
        keep, ug = cls._product_widths(cfg)
        return Built(stages=cls.latency, subs=(("hq", 1, Built(
            regs=(Reg("operands", fm.candidate_width(cfg) + G1 + A), Reg("keep", keep), Reg("ug", ug), Reg("h", A)),
            stages=cls.latency, logic={"units": 1})),))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        G, A = cfg.gate_frac, cfg.abits
        g, u, h = Signal.like(self.g), Signal.like(self.u), Signal.like(self.h_old)
        m.d.sync += [g.eq(self.g), u.eq(self.u), h.eq(self.h_old)]
        keep_w, ug_w = self._product_widths(cfg)
        keep = Signal(keep_w)
        ug = Signal(signed(ug_w) if cfg.candidate == "tanh" else unsigned(ug_w))
        m.d.sync += [keep.eq(((1 << G) - u) * h), ug.eq(u * g)]
        # Ka * ug as (ug << A) - ug (Ka = 2**A - 1)
        assert levels(A) == (1 << A) - 1
        total = Signal(signed(max(keep_w + G, ug_w + A) + 2))
        m.d.comb += total.eq((keep << G) + (ug << A) - ug + (1 << (2 * G - 1)))
        _register_clamped(m, self.h, total, 2 * G, levels(A))
        return m


class RnnUnit(wiring.Component):
    """The vanilla RNN's unit: h = clamp(rshift_round(Ka * g, G), 0, Ka) (hwrnn.gates.rnn_h), latency
    RnnGates.H_STAGES = 1 (Ka * g as (g << A) - g, rounding shift and clamp, registered)."""

    reads_h = False
    latency = RnnGates.H_STAGES

    def __init__(self, cfg: LayerConfig, dsp: str | None = None):
        self.cfg = cfg
        self.write_latency = {}
        gs = signed(fm.candidate_width(cfg)) if cfg.candidate == "tanh" else unsigned(fm.candidate_width(cfg))
        super().__init__({"g": In(gs), "h": Out(cfg.abits)})

    @staticmethod
    def gate_widths(cfg: LayerConfig) -> dict[str, int]:
        return {"g": fm.candidate_width(cfg)}

    @classmethod
    def built(cls, cfg: LayerConfig) -> Built:
        return Built(stages=cls.latency, subs=(("hq", 1, Built(regs=(Reg("h", cfg.abits),), stages=cls.latency,
                                                               logic={"units": 1})),))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        G, A = cfg.gate_frac, cfg.abits
        Ka = levels(A)
        total = Signal(signed(fm.candidate_width(cfg) + A + 2))
        m.d.comb += total.eq((self.g << A) - self.g + (1 << (G - 1)))
        _register_clamped(m, self.h, total, G, Ka)
        return m


#: gate set class -> one unit constructor ``(cfg, dsp=...)`` per phase
GATE_SET_UNITS = {
    LstmGates: (LstmUnit,),
    GruGates: (GruResetUnit, GruUpdateUnit),
    RnnGates: (RnnUnit,),
}


def _phase_units(cfg: LayerConfig):
    if not cfg.gate_set.has_rtl:
        raise ConfigError(f"cell type {cfg.cell_type} has no RTL units (integer model and training only); "
                          f"rtl_gen builds {', '.join(c.name for c in GATE_SET_UNITS)}")
    return _unit_of(GATE_SET_UNITS, cfg.gate_set, f"cell type {cfg.cell_type}")


def gate_set_unit(cfg: LayerConfig, dsp: str | None = None, phase: int = 0):
    """The per-unit component of a phase of cfg's gate set."""
    return _phase_units(cfg)[phase](cfg, dsp=dsp)


def gate_set_unit_class(cfg: LayerConfig, phase: int = 0):
    """The class of ``gate_set_unit(cfg, phase=phase)`` (for its gate widths and report)."""
    return _phase_units(cfg)[phase]


def gate_set_built(cfg: LayerConfig, phase: int = 0) -> Built:
    """What ``gate_set_unit(cfg, phase=phase)`` builds."""
    return _phase_units(cfg)[phase].built(cfg)


#: weight coding class -> MAC array constructor ``(cfg, fold)``
MAC_UNITS = {
    BalancedCode: BalancedMac,
    TernaryCode: TernaryMac,
    TernaryMeanCode: TernaryMac,
    Pow2TernaryCode: TernaryMac,   # ternary codes whose scale is a power of two: the same MAC
    ExponentialCode: ExponentialMac,
}


def mac_unit(cfg: LayerConfig, fold: Folding):
    """The MAC array of cfg's weight coding."""
    return _unit_of(MAC_UNITS, cfg.weight_coding, f"weight code {cfg.weight_code}")(cfg, fold)


def mac_built(cfg: LayerConfig, fold: Folding) -> Built:
    """What ``mac_unit(cfg, fold)`` builds."""
    return _unit_of(MAC_UNITS, cfg.weight_coding, f"weight code {cfg.weight_code}").built(cfg, fold)
