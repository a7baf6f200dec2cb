"""Board top levels through amaranth-boards: the link design (boards.link.LinkTop) on the board's
UART pins and LEDs, in a ``sync`` domain clocked by the board's oscillator.

Clock and reset per board (Amaranth's platform creates the ``sync`` domain from ``default_clk``
and ``default_rst``: the reset button is synchronised to the clock and ORed with the power-on
reset; on iCE40 the power-on reset also covers the ~3 us after configuration in which block RAM
reads as zero):

==============  =====================  ==========  =============================================
board           device                 clock       reset
==============  =====================  ==========  =============================================
ulx3s           LFE5U-85F (CABGA381)   25 MHz      FIRE1 button (BTN1); power-on reset
icebreaker      iCE40UP5K (SG48)       12 MHz      user button (BTN_N); power-on reset
arty_a7_35      XC7A35T (CSG324-1L)    50 MHz      CK_RST button (red) or MMCM not locked
arty_a7_100     XC7A100T (CSG324-1L)   50 MHz      CK_RST button (red) or MMCM not locked
==============  =====================  ==========  =============================================

On the Arty boards an MMCM makes 50 MHz from the 100 MHz oscillator (VCO 1000 MHz): the core's
critical path (table read, cell multiply, sigmoid(c) address) reaches about 38 MHz on the ECP5-6,
so 100 MHz would be optimistic on an Artix-7 -1L; Vivado is not installed here to check timing.

The host link is the board's USB UART (FTDI): ULX3S US1 port, iCEBreaker FT2232H channel B,
Arty FT2232HQ channel B. Status LEDs (as many of 4 as the board has): 0 heartbeat, 1 link
activity, 2 a NAK was sent since reset, 3 a step is running.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth.build import ResourceError
from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.vendor import XilinxPlatform

from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding
from hwrnn.devices import DEVICES

from . import protocol as P
from .link import LinkTop
from .uart import baud_divisor

#: frame timeout of the board designs: a frame whose bytes stop for this long is NAKed (TIMEOUT)
DEFAULT_FRAME_TIMEOUT_S = 0.05


@dataclass(frozen=True)
class BoardSpec:
    name: str
    title: str
    device: str  # key of hwrnn.devices.DEVICES (which owns its family and resources)
    open_toolchain: bool  # built here with the YoWASP tools; False: build tree for the vendor tools
    clk_hz: float  # clock of the design (the oscillator, or the MMCM output on Xilinx boards)
    reset: str
    default_baud: int
    # default folding for a layer on this board: (max PE, SIMD); PE also capped at the layer's rows
    default_pe: int
    default_simd: int
    uart_port: str = "/dev/ttyUSB0"  # where Linux usually puts the board's UART

    @property
    def family(self) -> str:
        """The device's FPGA family (hwrnn.devices)."""
        return DEVICES[self.device].family

    def platform(self):
        return _platform(self.name)()

    def default_folding(self, cfg) -> Folding:
        n = cfg.gate_set.lane_multiple  # the gate rows of a unit in one phase share a row fold
        pe = max(n, min(self.default_pe, cfg.rows))
        pe -= pe % n
        return Folding(pe=pe, simd=max(1, min(self.default_simd, cfg.columns)), planes="parallel")


BOARDS = {
    "ulx3s": BoardSpec("ulx3s", "Radiona ULX3S (ECP5-85F)", "lfe5u-85f", True, 25e6,
                       "FIRE1 button (BTN1) + power-on reset", 115200, 8, 16),
    "icebreaker": BoardSpec("icebreaker", "1BitSquared iCEBreaker (iCE40UP5K)", "ice40up5k", True, 12e6,
                            "user button (BTN_N) + power-on reset", 115200, 4, 4, "/dev/ttyUSB1"),
    "arty_a7_35": BoardSpec("arty_a7_35", "Digilent Arty A7-35T", "xc7a35t", False, 50e6,
                            "CK_RST button or MMCM unlocked", 115200, 16, 32, "/dev/ttyUSB1"),
    "arty_a7_100": BoardSpec("arty_a7_100", "Digilent Arty A7-100T", "xc7a100t", False, 50e6,
                             "CK_RST button or MMCM unlocked", 115200, 16, 32, "/dev/ttyUSB1"),
}


def _platform(name: str):
    """The amaranth-boards platform class of a board, with its reset button as ``default_rst``."""
    if name == "ulx3s":
        from amaranth_boards.ulx3s import ULX3S_85F_Platform

        class Platform(ULX3S_85F_Platform):
            default_rst = "button_fire"
        return Platform
    if name == "icebreaker":
        from amaranth_boards.icebreaker import ICEBreakerPlatform

        class Platform(ICEBreakerPlatform):
            default_rst = "button"
        return Platform
    if name == "arty_a7_35":
        from amaranth_boards.arty_a7 import ArtyA7_35Platform
        return ArtyA7_35Platform
    if name == "arty_a7_100":
        from amaranth_boards.arty_a7 import ArtyA7_100Platform
        return ArtyA7_100Platform
    raise KeyError(name)


def frame_timeout_cycles(frame_timeout_s: float, clk_hz: float, divisor: int) -> int:
    """Clock cycles of the device's frame timeout: ``frame_timeout_s`` seconds, at least two byte
    times; ValueError unless the seconds are positive and finite and the cycles fit INFO's field."""
    if not (isinstance(frame_timeout_s, (int, float)) and math.isfinite(frame_timeout_s) and frame_timeout_s > 0):
        raise ValueError(f"frame timeout must be a positive, finite number of seconds, got {frame_timeout_s}")
    cycles = max(20 * divisor, int(frame_timeout_s * clk_hz))
    limit = P.info_field_max("timeout_cycles")
    if cycles > limit:
        raise ValueError(f"frame timeout of {frame_timeout_s:g} s is {cycles:,} cycles at {clk_hz / 1e6:g} MHz; "
                         f"the link's INFO block holds at most {limit:,} ({limit / clk_hz:.0f} s)")
    return cycles


class BoardTop(Elaboratable):
    """LinkTop on a board: UART 0 and up to 4 LEDs."""

    def __init__(self, layer: QuantLayer, fold: Folding, clk_hz: float, baud: float,
                 frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S):
        self.clk_hz = int(round(clk_hz))
        self.divisor = baud_divisor(clk_hz, baud)
        self.timeout_cycles = frame_timeout_cycles(frame_timeout_s, clk_hz, self.divisor)
        self.link = LinkTop(layer, fold, clk_hz=self.clk_hz, divisor=self.divisor,
                            timeout_cycles=self.timeout_cycles)
        self.info = self.link.info

    def elaborate(self, platform):
        m = Module()
        if isinstance(platform, XilinxPlatform):
            self._xilinx_clock(m, platform)
        m.submodules.link = link = self.link
        uart = platform.request("uart", 0)
        m.d.comb += [link.rx.eq(uart.rx.i), uart.tx.o.eq(link.tx)]
        for i in range(4):
            try:
                led = platform.request("led", i)
            except ResourceError:
                break
            m.d.comb += led.o.eq(link.leds[i])
        return m

    def _xilinx_clock(self, m, platform):
        """sync = MMCM(100 MHz oscillator) at self.clk_hz through a BUFG; reset: button or not locked."""
        osc = platform.default_clk_frequency
        vco = 1000e6
        mult, div = vco / osc, vco / self.clk_hz
        if mult != int(mult) or not 2 <= mult <= 64 or div != round(div * 8) / 8 or not 1 <= div <= 128:
            raise ValueError(f"no MMCM setting for {self.clk_hz / 1e6:g} MHz from {osc / 1e6:g} MHz")
        clk_buf = io.Buffer("i", platform.request(platform.default_clk, dir="-"))
        rst_buf = io.Buffer("i", platform.request(platform.default_rst, dir="-"))
        m.submodules.clk_buf, m.submodules.rst_buf = clk_buf, rst_buf
        fb, clk_out, clk_g, locked = Signal(), Signal(), Signal(), Signal()
        m.submodules.mmcm = Instance(
            "MMCME2_BASE", p_CLKIN1_PERIOD=round(1e9 / osc, 3), p_DIVCLK_DIVIDE=1, p_CLKFBOUT_MULT_F=float(mult),
            p_CLKOUT0_DIVIDE_F=float(div), i_CLKIN1=clk_buf.i, i_CLKFBIN=fb, o_CLKFBOUT=fb, o_CLKOUT0=clk_out,
            o_LOCKED=locked, i_RST=rst_buf.i, i_PWRDWN=0)
        m.submodules.bufg = Instance("BUFG", i_I=clk_out, o_O=clk_g)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(clk_g)
        m.submodules.rst_sync = ResetSynchronizer(rst_buf.i | ~locked, domain="sync")
