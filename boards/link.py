"""The link gateware: UART, frame parser with CRC check, command executor driving the LSTM core,
and the reply generator (protocol in boards.protocol). Every reply echoes its request's SEQ; a
request identical to the last executed one (SEQ, TYPE, CRC) is answered again, not executed again.

``LinkTop`` is the whole board design minus the pins: ports ``rx`` (line in), ``tx`` (line out)
and ``leds`` (4 status lights), in the ``sync`` domain. The board top levels (boards.top) wrap it
with the platform's pins, clock and reset; the board-level simulation (boards.sim) runs it as
Verilog under cocotb.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwrnn.cell_state import FloatingPointCell
from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding
from hwrnn.datapath import Geometry, latency
from rtl_gen.core import LstmCore

from . import protocol as P
from .uart import UartRx, UartTx


def design_info(core: LstmCore, clk_hz: int, divisor: int, timeout_cycles: int) -> P.DesignInfo:
    """The INFO block of a link around ``core``."""
    cfg, fold, layer = core.cfg, core.fold, core.layer
    g = Geometry(cfg, fold)
    return P.DesignInfo(
        magic=P.MAGIC, version=P.PROTOCOL_VERSION, wbits=cfg.wbits, abits=cfg.abits, hidden=cfg.hidden,
        input=cfg.input, pe=fold.pe, simd=fold.simd, planes=int(fold.planes == "serial"),
        cell_bits=core.cell_width, cell_float=int(isinstance(cfg.cell_format, FloatingPointCell)),
        cell_type=P.CELL_TYPES.index(cfg.cell_type), shift=layer.shift, bias_bits=core.bias_w, mult_bits=core.mult_w,
        load_data_bits=core.load_data_w, load_addr_bits=core.load_addr_w, weight_depth=g.depth,
        row_folds=g.row_folds, latency=latency(cfg, fold), clk_hz=int(clk_hz), divisor=int(divisor),
        timeout_cycles=int(timeout_cycles), design_id=P.design_id(cfg, fold, layer.shift))


def _pad_bytes(value, bits: int):
    pad = P.nbytes(bits) * 8 - bits
    return Cat(value, Const(0, pad)) if pad else value


class LinkTop(wiring.Component):
    """UART + framing + LSTM core (the board design without pins)."""

    rx: In(1, init=1)
    tx: Out(1, init=1)
    leds: Out(4)

    def __init__(self, layer: QuantLayer, fold: Folding, clk_hz: int, divisor: int, timeout_cycles: int,
                 heartbeat_bit: int | None = None):
        if timeout_cycles < 2 * divisor * 10:
            raise ValueError(f"frame timeout of {timeout_cycles} cycles is shorter than two bytes "
                             f"({20 * divisor} cycles at divisor {divisor})")
        self.core = LstmCore(layer, fold)  # weights in on-chip memory, initialised from `layer`
        self.divisor = divisor
        self.timeout_cycles = timeout_cycles
        self.info = design_info(self.core, clk_hz, divisor, timeout_cycles)
        self.heartbeat_bit = heartbeat_bit if heartbeat_bit is not None else max(1, int(clk_hz).bit_length() - 2)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        info = self.info
        m.submodules.core = core = self.core
        m.submodules.urx = urx = UartRx(self.divisor)
        m.submodules.utx = utx = UartTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        byte, stb = urx.data, urx.valid

        # ---- request registers ---------------------------------------------------------------
        max_len = max(info.load_len, info.x_bytes, 1)
        ftype = Signal(8)
        seq = Signal(8)  # the request's SEQ (SEQ_UNKNOWN until received), echoed in the reply
        flen = Signal(16)
        cnt = Signal(16)  # payload bytes received / reply bytes sent
        pl = Signal(8 * max_len)  # request payload, byte k at bits 8k..
        # one CRC unit for both directions (the link is half duplex): start at SYNC, feed TYPE, LEN
        # and PAYLOAD; its output is the frame's CRC one cycle after the last byte
        m.submodules.crc = crc = P.CRC.create()
        crc_hi_ok = Signal()  # the received CRC's first byte matched
        err = Signal(8)  # NAK code to send
        idle = Signal(range(self.timeout_cycles + 1))
        with m.If(stb):
            m.d.sync += idle.eq(0)
        with m.Elif(idle != self.timeout_cycles):
            m.d.sync += idle.eq(idle + 1)
        quiet = idle == self.timeout_cycles

        known = Signal()
        exp_len = Signal(16)
        with m.Switch(ftype):
            for t in P.REQUEST_NAMES:
                with m.Case(t):
                    m.d.comb += [known.eq(1), exp_len.eq(info.request_len(t))]

        # ---- counters ------------------------------------------------------------------------
        uptime = Signal(32)
        m.d.sync += uptime.eq(uptime + 1)
        steps, frames_ok, uptime_snap = Signal(32), Signal(32), Signal(32)
        c_crc, c_hdr, c_to, c_arg, c_uart, c_drop = (Signal(16, name=n) for n in
                                                     ("crc_errors", "header_errors", "timeouts",
                                                      "arg_errors", "uart_errors", "dropped"))
        with m.If(urx.error):
            m.d.sync += c_uart.eq(c_uart + 1)
        c_dup = Signal(16, name="duplicates")
        # the last executed request (SEQ, TYPE, CRC): an identical request is answered, not executed
        last_valid, last_seq, last_type, last_crc = Signal(), Signal(8), Signal(8), Signal(16)
        dup = Signal()
        m.d.comb += dup.eq(last_valid & (seq == last_seq) & (ftype == last_type) & (crc.crc == last_crc))
        sticky_err = Signal()
        loaded = Signal()  # a LOAD was executed since reset
        stepping = Signal()  # a STEP is in the core

        # ---- reply: kind, type, length --------------------------------------------------------
        K_NONE, K_INFO, K_OUT, K_STATUS, K_NAK = range(5)
        kind = Signal(range(5))
        rtype = Signal(8)
        rlen = Signal(16)
        take_out = Signal()  # after the reply, hand h_t back to the core (STEP)

        def reply(k, t, length, take=False):
            return [kind.eq(k), rtype.eq(t), rlen.eq(length), cnt.eq(0), take_out.eq(int(take))]

        def nak(code, counter):
            return reply(K_NAK, P.NAK, P.NAK_LEN) + [err.eq(code), counter.eq(counter + 1), sticky_err.eq(1)]

        # reply payload sources, each padded to whole bytes
        info_bytes = info.pack()
        info_vec = Const(int.from_bytes(info_bytes, "little"), 8 * len(info_bytes))
        out_vec = Cat(_pad_bytes(core.out.payload.h, info.hidden * info.abits),
                      *((_pad_bytes(core.out.payload.c, info.hidden * info.cell_bits),) if info.cell_bits else ()),
                      core.last_cycles)
        status_vec = Cat(uptime_snap, steps, core.last_cycles, frames_ok, c_crc, c_hdr, c_to, c_arg,
                         c_uart, c_drop, c_dup, loaded, Const(0, 7))
        assert len(status_vec) == 8 * P.STATUS_LEN and len(out_vec) == 8 * info.out_len
        nak_vec = Cat(err, ftype)
        data_byte = Signal(8)
        with m.Switch(kind):
            with m.Case(K_INFO):
                m.d.comb += data_byte.eq(info_vec.word_select(cnt[:max(1, (len(info_bytes) - 1).bit_length())], 8))
            with m.Case(K_OUT):
                m.d.comb += data_byte.eq(out_vec.word_select(cnt[:max(1, (info.out_len - 1).bit_length())], 8))
            with m.Case(K_STATUS):
                m.d.comb += data_byte.eq(status_vec.word_select(cnt[:max(1, (P.STATUS_LEN - 1).bit_length())], 8))
            with m.Case(K_NAK):
                m.d.comb += data_byte.eq(nak_vec.word_select(cnt[0], 8))

        # ---- load arguments --------------------------------------------------------------------
        l_sel = pl[0:8]
        l_addr = pl[8:24]
        l_data = pl[24:24 + info.load_data_bits]
        arg_ok = Signal()
        with m.Switch(l_sel):
            with m.Case(P.LOAD_WEIGHT):
                m.d.comb += arg_ok.eq(l_addr < info.weight_depth)
            with m.Case(P.LOAD_BIAS):
                m.d.comb += arg_ok.eq(l_addr < info.row_folds)
            with m.Case(P.LOAD_MULT):
                m.d.comb += arg_ok.eq(1)
        m.d.comb += [core.load.payload.data.eq(l_data), core.load.payload.addr.eq(l_addr),
                     core.load.payload.sel.eq(l_sel), core.x.payload.eq(pl)]

        receiving = Signal()
        tx_byte = Signal(8)
        with m.FSM(name="link"):
            # -- receive --------------------------------------------------------------------------
            with m.State("HUNT"):
                m.d.comb += receiving.eq(1)
                with m.If(stb & (byte == P.SYNC)):
                    m.d.comb += crc.start.eq(1)
                    m.d.sync += seq.eq(P.SEQ_UNKNOWN)
                    m.next = "TYPE"
            with m.State("TYPE"):
                m.d.comb += [receiving.eq(1), crc.valid.eq(stb)]
                with m.If(stb):
                    m.d.sync += ftype.eq(byte)
                    m.next = "SEQ"
                with m.Elif(quiet):
                    m.d.sync += [ftype.eq(0)] + nak(P.NAK_TIMEOUT, c_to)
                    m.next = "REPLY"
            with m.State("SEQ"):
                m.d.comb += [receiving.eq(1), crc.valid.eq(stb)]
                with m.If(stb):
                    m.d.sync += seq.eq(byte)
                    m.next = "LEN0"
                with m.Elif(quiet):
                    m.d.sync += nak(P.NAK_TIMEOUT, c_to)
                    m.next = "REPLY"
            with m.State("LEN0"):
                m.d.comb += [receiving.eq(1), crc.valid.eq(stb)]
                with m.If(stb):
                    m.d.sync += flen[:8].eq(byte)
                    m.next = "LEN1"
                with m.Elif(quiet):
                    m.d.sync += nak(P.NAK_TIMEOUT, c_to)
                    m.next = "REPLY"
            with m.State("LEN1"):
                m.d.comb += [receiving.eq(1), crc.valid.eq(stb)]
                full_len = Cat(flen[:8], byte)
                with m.If(stb):
                    m.d.sync += [flen[8:].eq(byte), cnt.eq(0)]
                    with m.If(~known | (full_len != exp_len)):
                        m.next = "DISCARD"
                    with m.Elif(full_len == 0):
                        m.next = "CRC0"
                    with m.Else():
                        m.next = "PAYLOAD"
                with m.Elif(quiet):
                    m.d.sync += nak(P.NAK_TIMEOUT, c_to)
                    m.next = "REPLY"
            with m.State("PAYLOAD"):
                m.d.comb += [receiving.eq(1), crc.valid.eq(stb)]
                with m.If(stb):
                    m.d.sync += [pl.word_select(cnt[:max(1, (max_len - 1).bit_length())], 8).eq(byte),
                                 cnt.eq(cnt + 1)]
                    with m.If(cnt + 1 == flen):
                        m.next = "CRC0"
                with m.Elif(quiet):
                    m.d.sync += nak(P.NAK_TIMEOUT, c_to)
                    m.next = "REPLY"
            with m.State("CRC0"):
                # the frame checks when its two CRC bytes (MSB first) equal the CRC unit's output
                m.d.comb += receiving.eq(1)
                with m.If(stb):
                    m.d.sync += crc_hi_ok.eq(byte == crc.crc[8:])
                    m.next = "CRC1"
                with m.Elif(quiet):
                    m.d.sync += nak(P.NAK_TIMEOUT, c_to)
                    m.next = "REPLY"
            with m.State("CRC1"):
                m.d.comb += receiving.eq(1)
                with m.If(stb):
                    with m.If(crc_hi_ok & (byte == crc.crc[:8])):
                        m.next = "EXEC"
                    with m.Else():
                        m.d.sync += nak(P.NAK_CRC, c_crc)
                        m.next = "REPLY"
                with m.Elif(quiet):
                    m.d.sync += nak(P.NAK_TIMEOUT, c_to)
                    m.next = "REPLY"
            with m.State("DISCARD"):
                # bad header: the frame's end is unknown; drop bytes until the line is quiet
                m.d.comb += receiving.eq(1)
                with m.If(quiet):
                    m.d.sync += nak(P.NAK_HEADER, c_hdr)
                    m.next = "REPLY"

            # -- execute ----------------------------------------------------------------------------
            with m.State("EXEC"):
                # crc.crc still holds this frame's CRC (the unit restarts at the reply's SYNC)
                with m.If(dup):
                    m.d.sync += c_dup.eq(c_dup + 1)
                with m.Elif(~((ftype == P.LOAD) & ~arg_ok)):
                    m.d.sync += [frames_ok.eq(frames_ok + 1), last_valid.eq(1), last_seq.eq(seq),
                                 last_type.eq(ftype), last_crc.eq(crc.crc)]
                with m.Switch(ftype):
                    with m.Case(P.INFO):
                        m.d.sync += reply(K_INFO, P.INFO | P.REPLY, P.INFO_LEN)
                        m.next = "REPLY"
                    with m.Case(P.LOAD):
                        with m.If(dup):  # written already: the empty reply again
                            m.d.sync += reply(K_NONE, P.LOAD | P.REPLY, 0)
                            m.next = "REPLY"
                        with m.Elif(arg_ok):
                            m.next = "LOAD"
                        with m.Else():
                            m.d.sync += nak(P.NAK_ARG, c_arg)
                            m.next = "REPLY"
                    with m.Case(P.STEP):
                        with m.If(dup):  # stepped already: the core still holds that step's OUT block
                            m.d.sync += reply(K_OUT, P.STEP | P.REPLY, info.out_len)
                            m.next = "REPLY"
                        with m.Else():
                            m.next = "STEP"
                    with m.Case(P.RESET_STATE):
                        with m.If(dup):
                            m.d.sync += reply(K_NONE, P.RESET_STATE | P.REPLY, 0)
                            m.next = "REPLY"
                        with m.Else():
                            m.next = "RESET_STATE"
                    with m.Case(P.STATUS):
                        m.d.sync += reply(K_STATUS, P.STATUS | P.REPLY, P.STATUS_LEN) + [uptime_snap.eq(uptime)]
                        m.next = "REPLY"
                    with m.Case(P.READ_OUT):
                        m.d.sync += reply(K_OUT, P.READ_OUT | P.REPLY, info.out_len)
                        m.next = "REPLY"
                    with m.Default():  # unreachable: the header check admits known types only
                        m.next = "HUNT"
            with m.State("LOAD"):
                m.d.comb += core.load.valid.eq(1)
                with m.If(core.load.ready):
                    m.d.sync += reply(K_NONE, P.LOAD | P.REPLY, 0) + [loaded.eq(1)]
                    m.next = "REPLY"
            with m.State("RESET_STATE"):
                # the core is idle: the last STEP's h_t was taken at least a frame ago
                m.d.comb += core.reset_state.eq(1)
                m.d.sync += reply(K_NONE, P.RESET_STATE | P.REPLY, 0)
                m.next = "REPLY"
            with m.State("STEP"):
                m.d.comb += core.x.valid.eq(1)
                with m.If(core.x.ready):
                    m.d.sync += stepping.eq(1)
                    m.next = "WAIT_OUT"
            with m.State("WAIT_OUT"):
                with m.If(core.out.valid):
                    m.d.sync += reply(K_OUT, P.STEP | P.REPLY, info.out_len, take=True) + [steps.eq(steps + 1)]
                    m.next = "REPLY"

            # -- reply --------------------------------------------------------------------------------
            with m.State("REPLY"):
                m.d.comb += [tx_byte.eq(P.SYNC), utx.data.valid.eq(1), crc.start.eq(utx.data.ready)]
                with m.If(utx.data.ready):
                    m.next = "R_TYPE"
            with m.State("R_TYPE"):
                m.d.comb += [tx_byte.eq(rtype), utx.data.valid.eq(1), crc.valid.eq(utx.data.ready)]
                with m.If(utx.data.ready):
                    m.next = "R_SEQ"
            with m.State("R_SEQ"):
                m.d.comb += [tx_byte.eq(seq), utx.data.valid.eq(1), crc.valid.eq(utx.data.ready)]
                with m.If(utx.data.ready):
                    m.next = "R_LEN0"
            with m.State("R_LEN0"):
                m.d.comb += [tx_byte.eq(rlen[:8]), utx.data.valid.eq(1), crc.valid.eq(utx.data.ready)]
                with m.If(utx.data.ready):
                    m.next = "R_LEN1"
            with m.State("R_LEN1"):
                m.d.comb += [tx_byte.eq(rlen[8:]), utx.data.valid.eq(1), crc.valid.eq(utx.data.ready)]
                with m.If(utx.data.ready):
                    m.d.sync += cnt.eq(0)
                    with m.If(rlen == 0):
                        m.next = "R_CRC0"
                    with m.Else():
                        m.next = "R_DATA"
            with m.State("R_DATA"):
                m.d.comb += [tx_byte.eq(data_byte), utx.data.valid.eq(1), crc.valid.eq(utx.data.ready)]
                with m.If(utx.data.ready):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt + 1 == rlen):
                        m.next = "R_CRC0"
            with m.State("R_CRC0"):
                m.d.comb += [tx_byte.eq(crc.crc[8:]), utx.data.valid.eq(1)]
                with m.If(utx.data.ready):
                    m.next = "R_CRC1"
            with m.State("R_CRC1"):
                m.d.comb += [tx_byte.eq(crc.crc[:8]), utx.data.valid.eq(1)]
                with m.If(utx.data.ready):
                    with m.If(take_out):
                        m.next = "TAKE"
                    with m.Else():
                        m.next = "HUNT"
            with m.State("TAKE"):
                m.d.comb += core.out.ready.eq(1)
                m.d.sync += stepping.eq(0)
                m.next = "HUNT"
        m.d.comb += [utx.data.payload.eq(tx_byte), crc.data.eq(Mux(receiving, byte, tx_byte))]
        with m.If(stb & ~receiving):
            m.d.sync += c_drop.eq(c_drop + 1)

        # ---- status lights: heartbeat, link activity, sticky error, a step in the core -----------------------
        act = Signal(20)  # ~40-90 ms at board clocks
        with m.If(stb | utx.data.valid):
            m.d.sync += act.eq((1 << 20) - 1)
        with m.Elif(act != 0):
            m.d.sync += act.eq(act - 1)
        m.d.comb += self.leds.eq(Cat(uptime[min(self.heartbeat_bit, 31)], act != 0, sticky_err, stepping))
        return m
