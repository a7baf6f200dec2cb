"""A small 8N1 UART for Amaranth 0.5 (receiver and transmitter).

Written here because the ``amaranth-stdio`` name on PyPI is only a placeholder package (version 0,
no code); the Amaranth project's stdio AsyncSerial is not released for 0.5.

Baud divisor: one bit lasts ``divisor`` clock cycles, ``divisor = round(clk_hz / baud)``, at least
4 (``baud_divisor`` computes it and refuses a rate error above 2 %). The receiver synchronises
``rx`` with two flip-flops, waits ``divisor // 2`` cycles after the falling edge of the start bit,
checks the start bit is still low (else it was a glitch), then samples the 8 data bits (LSB first)
and the stop bit ``divisor`` cycles apart. A low stop bit is a framing error: the byte is dropped,
``error`` pulses, and the receiver waits for the line to return high before looking for the next
start bit. The receiver cannot be stalled: ``valid`` is a one-cycle strobe with ``data``.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

MIN_DIVISOR = 4
MAX_BAUD_ERROR = 0.02


def baud_divisor(clk_hz: float, baud: float) -> int:
    """Clock cycles per bit for ``baud`` at ``clk_hz``; ValueError when not usable."""
    if baud <= 0 or clk_hz <= 0:
        raise ValueError(f"baud and clock must be positive, got baud {baud}, clock {clk_hz}")
    div = round(clk_hz / baud)
    if div < MIN_DIVISOR:
        raise ValueError(f"baud {baud:g} at {clk_hz / 1e6:g} MHz gives {clk_hz / baud:.2f} cycles per bit; "
                         f"the UART needs at least {MIN_DIVISOR}")
    err = abs(clk_hz / div - baud) / baud
    if err > MAX_BAUD_ERROR:
        raise ValueError(f"baud {baud:g} at {clk_hz / 1e6:g} MHz: divisor {div} gives {clk_hz / div:.0f} baud, "
                         f"{100 * err:.1f} % off (at most {100 * MAX_BAUD_ERROR:g} %)")
    return div


class UartRx(wiring.Component):
    """rx: line in (idle high). data/valid: received byte, one-cycle strobe. error: framing error strobe."""

    rx: In(1, init=1)
    data: Out(8)
    valid: Out(1)
    error: Out(1)

    def __init__(self, divisor: int):
        if divisor < MIN_DIVISOR:
            raise ValueError(f"UART divisor must be >= {MIN_DIVISOR}, got {divisor}")
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        D = self.divisor
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)
        cnt = Signal(range(D))
        bit = Signal(range(8))
        shreg = Signal(8)
        m.d.sync += [self.valid.eq(0), self.error.eq(0)]
        with m.FSM(name="rx"):
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += cnt.eq(D // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(cnt == 0):
                    with m.If(rx):
                        m.next = "IDLE"  # glitch, not a start bit
                    with m.Else():
                        m.d.sync += [cnt.eq(D - 1), bit.eq(0)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += cnt.eq(cnt - 1)
            with m.State("DATA"):
                with m.If(cnt == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), cnt.eq(D - 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += cnt.eq(cnt - 1)
            with m.State("STOP"):
                with m.If(cnt == 0):
                    with m.If(rx):
                        m.d.sync += [self.data.eq(shreg), self.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += self.error.eq(1)
                        m.next = "BREAK"
                with m.Else():
                    m.d.sync += cnt.eq(cnt - 1)
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """data: byte stream in (one byte per handshake). tx: line out (idle high)."""

    data: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        if divisor < MIN_DIVISOR:
            raise ValueError(f"UART divisor must be >= {MIN_DIVISOR}, got {divisor}")
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        D = self.divisor
        shreg = Signal(10, init=0x3FF)  # stop, data[7:0], start; shifted out LSB first
        cnt = Signal(range(D))
        left = Signal(range(11))
        # a plain assignment (not inside m.If): event-driven simulators evaluate it at time 0
        m.d.comb += [self.tx.eq(shreg[0]), self.data.ready.eq(left == 0)]
        with m.If(left == 0):
            with m.If(self.data.valid):
                m.d.sync += [shreg.eq(Cat(0, self.data.payload, 1)), left.eq(10), cnt.eq(D - 1)]
        with m.Else():
            with m.If(cnt == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), left.eq(left - 1), cnt.eq(D - 1)]
            with m.Else():
                m.d.sync += cnt.eq(cnt - 1)
        return m
