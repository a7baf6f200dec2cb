"""A Python emulation of the board's device side of the link protocol (boards.protocol), for fast
host-driver tests without a simulator: frames in, replies out, the integer model as the core.

Only what the host can observe is emulated (no UART timing, no timeouts of partial frames: a
truncated frame is NAKed TIMEOUT when the host next reads).
"""
from __future__ import annotations

import struct

import numpy as np

from boards import protocol as P
from boards.host import Transport
from hwrnn.config import Folding
from hwrnn.datapath import Geometry, bias_width, latency
from hwrnn.integer_model import IntegerLSTM


class EmulatedBoard(Transport):
    def __init__(self, layer, fold: Folding, clk_hz=1_000_000, divisor=8, timeout_cycles=256):
        cfg = layer.cfg
        g = Geometry(cfg, fold)
        bw = bias_width(layer) + 1
        self.info = P.DesignInfo(
            magic=P.MAGIC, version=P.PROTOCOL_VERSION, wbits=cfg.wbits, abits=cfg.abits, hidden=cfg.hidden,
            input=cfg.input, pe=fold.pe, simd=fold.simd, planes=int(fold.planes == "serial"),
            cell_bits=cfg.cell_format.width, cell_float=int(cfg.cell_format.kind == "float"), shift=layer.shift, bias_bits=bw, mult_bits=16,
            load_data_bits=max(g.word_bits, fold.pe * bw, 16), load_addr_bits=max(1, (g.depth - 1).bit_length()),
            weight_depth=g.depth, row_folds=g.row_folds, latency=latency(cfg, fold), clk_hz=clk_hz,
            divisor=divisor, timeout_cycles=timeout_cycles, design_id=P.design_id(cfg, fold, layer.shift))
        self.baud = clk_hz / divisor
        self.model = IntegerLSTM(layer)  # the emulated core computes with this layer (loads are recorded)
        self.state = self.model.initial_state(1)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.loads = []
        self.steps = 0
        self.counters = dict(crc_errors=0, header_errors=0, timeouts=0, arg_errors=0)
        self.frames_ok = 0
        # fault injection: callables applied to the next reply / hooks
        self.corrupt_next_reply = None  # index of a byte to flip in the next reply
        self.drop_next_reply = False
        self.corrupt_next_request = None  # index of a byte to flip in the next write
        self.mute = False  # no replies at all

    # -- Transport --------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        data = bytearray(data)
        if self.corrupt_next_request is not None:
            data[self.corrupt_next_request] ^= 1
            self.corrupt_next_request = None
        self.inbuf += data
        self._parse()

    def read(self, n: int, timeout: float) -> bytes:
        if not self.outbuf and self.inbuf:
            # an incomplete frame left in the input: the device times out on it
            self.inbuf.clear()
            self.counters["timeouts"] += 1
            self._reply(P.NAK, bytes([P.NAK_TIMEOUT, 0]))
        out = bytes(self.outbuf[:n])
        del self.outbuf[:n]
        return out

    # -- device ---------------------------------------------------------------------------------------
    def _reply(self, ftype, payload=b""):
        fr = bytearray(P.encode_frame(ftype, payload))
        if self.mute:
            return
        if self.drop_next_reply:
            self.drop_next_reply = False
            return
        if self.corrupt_next_reply is not None:
            fr[self.corrupt_next_reply] ^= 1
            self.corrupt_next_reply = None
        self.outbuf += fr

    def _out_block(self):
        i = self.info
        h = P.pack_bits(self.state.h[0], i.abits, i.hidden)
        c = P.pack_bits(self.state.c[0], i.cell_bits, i.hidden)
        return h + c + struct.pack("<I", i.latency)

    def _parse(self):
        while True:
            while self.inbuf and self.inbuf[0] != P.SYNC:
                del self.inbuf[0]
            if len(self.inbuf) < P.HEADER_BYTES:
                return
            ftype = self.inbuf[1]
            length = int.from_bytes(self.inbuf[2:4], "little")
            want = self.info.request_len(ftype)
            if want is None or length != want:
                self.inbuf.clear()
                self.counters["header_errors"] += 1
                self._reply(P.NAK, bytes([P.NAK_HEADER, ftype]))
                return
            total = P.OVERHEAD + length
            if len(self.inbuf) < total:
                return
            frame = bytes(self.inbuf[:total])
            del self.inbuf[:total]
            if P.crc16(frame[1:]) != 0:
                self.counters["crc_errors"] += 1
                self._reply(P.NAK, bytes([P.NAK_CRC, ftype]))
                continue
            self._execute(ftype, frame[P.HEADER_BYTES:P.HEADER_BYTES + length])

    def _execute(self, ftype, pl):
        i = self.info
        if ftype == P.LOAD:
            sel, addr = pl[0], int.from_bytes(pl[1:3], "little")
            limit = {P.LOAD_WEIGHT: i.weight_depth, P.LOAD_BIAS: i.row_folds, P.LOAD_MULT: 1 << 16}.get(sel, 0)
            if addr >= limit:
                self.counters["arg_errors"] += 1
                self._reply(P.NAK, bytes([P.NAK_ARG, ftype]))
                return
            self.loads.append((sel, addr, int.from_bytes(pl[3:], "little")))
        self.frames_ok += 1
        if ftype == P.INFO:
            self._reply(P.INFO | P.REPLY, i.pack())
        elif ftype == P.LOAD:
            self._reply(P.LOAD | P.REPLY)
        elif ftype == P.STEP:
            x = np.asarray([P.unpack_bits(pl, i.abits, i.input)], dtype=np.int64)
            self.state, _ = self.model.step(x, self.state)
            self.steps += 1
            self._reply(P.STEP | P.REPLY, self._out_block())
        elif ftype == P.READ_OUT:
            self._reply(P.READ_OUT | P.REPLY, self._out_block())
        elif ftype == P.RESET_STATE:
            self.state = self.model.initial_state(1)
            self._reply(P.RESET_STATE | P.REPLY)
        elif ftype == P.STATUS:
            c = self.counters
            st = P.Status(uptime=0, steps=self.steps, last_cycles=i.latency, frames_ok=self.frames_ok,
                          crc_errors=c["crc_errors"], header_errors=c["header_errors"], timeouts=c["timeouts"],
                          arg_errors=c["arg_errors"], uart_errors=0, dropped=0, flags=int(bool(self.loads)))
            self._reply(P.STATUS | P.REPLY, st.pack())
