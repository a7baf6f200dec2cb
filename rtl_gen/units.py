"""Which RTL unit builds each contract class of hwrnn's axes of variation, and the units that are
one gate set's part of the core.

* cell-state formats (hwrnn.cell_state) -> ``CELL_STATE_UNITS``: a component with inputs f, i, g,
  c (cell word) and outputs c_new (``c_latency`` cycles later) and c_addr, the sigmoid(c_new) table
  address (``addr_latency`` cycles after c_new, for a table's read-address register);
* gate sets (hwrnn.gates) -> ``GATE_SET_UNITS``: a component per unit with one input per gate
  (the registered table outputs), the old state in and h (and c_new) out, latencies equal to the
  gate set's ``stages``;
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
from hwrnn.gates import LstmGates
from hwrnn.resources import Built, Reg
from hwrnn.weight_code import BalancedCode

from .blocks import FixedCellUnit, HRequantizer, LookupTable, delay_line
from .float_cell import FloatCellUnit
from .mac import BalancedMac
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

    def __init__(self, cfg: LayerConfig, dsp: str | None = None):
        self.cfg = cfg
        self.dsp = check_dsp(dsp)
        stages = LstmGates().stages(cfg)
        self.c_latency = stages["cell_update"]
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


#: gate set class -> unit constructor ``(cfg, dsp=...)``
GATE_SET_UNITS = {
    LstmGates: LstmUnit,
}


def gate_set_unit(cfg: LayerConfig, dsp: str | None = None):
    """The per-unit component of cfg's gate set."""
    return _unit_of(GATE_SET_UNITS, cfg.gate_set, f"cell type {cfg.cell_type}")(cfg, dsp=dsp)


def gate_set_built(cfg: LayerConfig) -> Built:
    """What ``gate_set_unit(cfg)`` builds."""
    return _unit_of(GATE_SET_UNITS, cfg.gate_set, f"cell type {cfg.cell_type}").built(cfg)


#: weight coding class -> MAC array constructor ``(cfg, fold)``
MAC_UNITS = {
    BalancedCode: BalancedMac,
}


def mac_unit(cfg: LayerConfig, fold: Folding):
    """The MAC array of cfg's weight coding."""
    return _unit_of(MAC_UNITS, cfg.weight_coding, f"weight code {cfg.weight_code}")(cfg, fold)


def mac_built(cfg: LayerConfig, fold: Folding) -> Built:
    """What ``mac_unit(cfg, fold)`` builds."""
    return _unit_of(MAC_UNITS, cfg.weight_coding, f"weight code {cfg.weight_code}").built(cfg, fold)
