"""Registered multiplier: ``p = a * b`` with both operands and the product registered (latency 2).

Two elaborations with identical cycle behaviour (registers reset to 0 by the sync domain's reset):

* ``dsp=None`` (default): behavioural Amaranth, ``a_r, b_r <= a, b`` then ``p_r <= a_r * b_r``;
  synthesis tools map the ``*`` as they like (yosys synth_ecp5: a MULT18X18D without registers).
* ``dsp="ecp5"``: a Lattice ECP5 ``MULT18X18D`` instance using its own input registers
  (REG_INPUTA/B_CLK = CLK0) and output register (REG_OUTPUT_CLK = CLK0; no pipeline register),
  clocked by the sync domain, CE0 = 1, RST0 = the sync domain's reset (RESETMODE SYNC), so the
  flip-flops sit inside the DSP block and neither route into nor out of it is on a register to
  register path with the multiplier's combinational delay. Used only when both operands fit the
  18 x 18 multiplier (18 bits each, including the sign bit; with mixed signedness the unsigned
  operand is zero-extended by one bit and both are multiplied as signed); wider operands fall back
  to the behavioural form (``uses_dsp`` tells which). Port wiring as yosys's techlibs/ecp5
  dsp_map.v (C inputs 0, SOURCEA/B 0; the cascade inputs SRIA/SRIB have no route from the
  fabric and, like the unused CLK1-3/CE1-3/RST1-3, stay unconnected).

tests/models/MULT18X18D.v is a behavioural model of the subset used here (for Icarus/Verilator).
"""
from __future__ import annotations

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwrnn.config import ConfigError
from hwrnn.fpga import DSP_TILE, mult18_fits
from hwrnn.resources import Built, Mult, Reg

DSP_KINDS = (None, "ecp5")
ECP5_WIDTH = DSP_TILE["ecp5"][0]  # MULT18X18D operand width, 18 (two's complement when SIGNEDA/SIGNEDB = 1)

#: MULT18X18D parameters: input A/B and output registers on CLK0/CE0/RST0, nothing else
ECP5_PARAMS = {
    "REG_INPUTA_CLK": "CLK0", "REG_INPUTA_CE": "CE0", "REG_INPUTA_RST": "RST0",
    "REG_INPUTB_CLK": "CLK0", "REG_INPUTB_CE": "CE0", "REG_INPUTB_RST": "RST0",
    "REG_INPUTC_CLK": "NONE", "REG_INPUTC_CE": "CE0", "REG_INPUTC_RST": "RST0",
    "REG_PIPELINE_CLK": "NONE", "REG_PIPELINE_CE": "CE0", "REG_PIPELINE_RST": "RST0",
    "REG_OUTPUT_CLK": "CLK0", "REG_OUTPUT_CE": "CE0", "REG_OUTPUT_RST": "RST0",
    "CLK0_DIV": "ENABLED", "CLK1_DIV": "ENABLED", "CLK2_DIV": "ENABLED", "CLK3_DIV": "ENABLED",
    "HIGHSPEED_CLK": "NONE", "GSR": "DISABLED", "CAS_MATCH_REG": "FALSE", "SOURCEB_MODE": "B_SHIFT",
    "MULT_BYPASS": "DISABLED", "RESETMODE": "SYNC",
}


def check_dsp(dsp) -> str | None:
    """``dsp`` if it names a known multiplier elaboration (None or "ecp5"), else ConfigError."""
    if dsp not in DSP_KINDS:
        raise ConfigError(f"dsp must be one of {DSP_KINDS}, got {dsp!r}")
    return dsp


def product_shape(a_shape: Shape, b_shape: Shape) -> Shape:
    """Shape of the exact product, as Amaranth forms it for ``a * b``."""
    return (Signal(a_shape) * Signal(b_shape)).shape()


def _as_shape(name, v) -> Shape:
    try:
        s = Shape.cast(v)
    except TypeError:
        raise ConfigError(f"{name} must be an Amaranth shape such as signed(8) or unsigned(8), got {v!r}") from None
    if s.width < 1:
        raise ConfigError(f"{name} must be at least 1 bit wide, got {s!r}")
    return s


def ecp5_fits(a_shape: Shape, b_shape: Shape) -> bool:
    """Whether a_shape x b_shape fits one MULT18X18D (hwrnn.fpga.mult18_fits on the two shapes)."""
    a, b = Shape.cast(a_shape), Shape.cast(b_shape)
    return mult18_fits(a.width, a.signed, b.width, b.signed)


class RegisteredMultiplier(wiring.Component):
    """``p = a * b`` two cycles after a, b are presented (latency 2: operands registered, product
    registered), every cycle (fully pipelined, no enable).

    ``a_shape``, ``b_shape``: operand shapes (signed or unsigned, any width >= 1); ``p_shape``:
    output shape, default the exact product shape (``product_shape``); a narrower one keeps the
    low bits and a wider one extends, as ``p.eq(a * b)`` does. ``dsp``: None (behavioural) or
    "ecp5" (MULT18X18D with internal registers when ``ecp5_fits``, else behavioural).
    """

    latency = 2

    def __init__(self, a_shape, b_shape, p_shape=None, dsp: str | None = None):
        a_shape = _as_shape("a_shape", a_shape)
        b_shape = _as_shape("b_shape", b_shape)
        exact = product_shape(a_shape, b_shape)
        p_shape = exact if p_shape is None else _as_shape("p_shape", p_shape)
        check_dsp(dsp)
        self.a_shape, self.b_shape, self.p_shape, self.dsp = a_shape, b_shape, p_shape, dsp
        self.uses_dsp = dsp == "ecp5" and ecp5_fits(a_shape, b_shape)
        super().__init__({"a": In(a_shape), "b": In(b_shape), "p": Out(p_shape)})

    @classmethod
    def built(cls, a_shape, b_shape, p_shape=None, p_kept: int | None = None, split: bool = False) -> Built:
        """The behavioural elaboration (dsp=None): operand registers a_r, b_r and product register
        p_r, of which ``p_kept`` bits are read (None: all); one Mult holding their kept bits (what
        a DSP block takes in). ``split``: the owner cuts a too wide ``a`` for ECP5 (ScaleBias)."""
        a, b = Shape.cast(a_shape), Shape.cast(b_shape)
        p = product_shape(a, b) if p_shape is None else Shape.cast(p_shape)
        kept = p.width if p_kept is None else p_kept
        return Built(regs=(Reg("a_r", a.width), Reg("b_r", b.width), Reg("p_r", p.width, p_kept)),
                     mults=(Mult("mul", a.width, a.signed, b.width, b.signed, a.width + b.width + kept, split),),
                     stages=cls.latency)

    def elaborate(self, platform):
        m = Module()
        if not self.uses_dsp:
            a_r = Signal(self.a_shape, name="a_r")
            b_r = Signal(self.b_shape, name="b_r")
            p_r = Signal(self.p_shape, name="p_r")
            m.d.sync += [a_r.eq(self.a), b_r.eq(self.b), p_r.eq(a_r * b_r)]
            m.d.comb += self.p.eq(p_r)
            return m
        sgn = self.a_shape.signed or self.b_shape.signed
        op = signed(ECP5_WIDTH) if sgn else unsigned(ECP5_WIDTH)
        a18, b18 = Signal(op, name="a18"), Signal(op, name="b18")
        m.d.comb += [a18.eq(self.a), b18.eq(self.b)]  # sign- or zero-extension of each operand
        p36 = Signal(signed(2 * ECP5_WIDTH) if sgn else unsigned(2 * ECP5_WIDTH), name="p36")
        ports = {f"i_A{k}": a18[k] for k in range(ECP5_WIDTH)}
        ports.update({f"i_B{k}": b18[k] for k in range(ECP5_WIDTH)})
        ports.update({f"i_C{k}": 0 for k in range(ECP5_WIDTH)})
        ports.update({f"o_P{k}": p36[k] for k in range(2 * ECP5_WIDTH)})
        m.submodules.dsp = Instance(
            "MULT18X18D",
            **{f"p_{k}": v for k, v in ECP5_PARAMS.items()},
            **ports,
            i_SIGNEDA=int(sgn), i_SIGNEDB=int(sgn), i_SOURCEA=0, i_SOURCEB=0,
            i_CLK0=ClockSignal("sync"), i_CE0=1, i_RST0=ResetSignal("sync"),
        )
        m.d.comb += self.p.eq(p36)
        return m
