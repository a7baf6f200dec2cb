"""A Python emulation of the board's device side of the link protocol (boards.protocol), for fast
host-driver tests without a simulator: frames in, replies out, the integer model as the core.

Only what the host can observe is emulated (no UART timing, no timeouts of partial frames: a
truncated frame is NAKed TIMEOUT when the host next reads). Replies echo the request's SEQ; a
request identical to the last executed one is answered again without executing it (counted in
``duplicates``), as the gateware does.
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
    """The device behind a Transport. Instant by default (every reply is there at once, the clock is
    the host's); ``line_time=True``: a fake clock on which every byte written or read takes one
    byte time at ``clk_hz / divisor`` baud, so the driver's deadlines are exercised without real time."""

    def __init__(self, layer, fold: Folding, clk_hz=1_000_000, divisor=8, timeout_cycles=256, line_time=False):
        cfg = layer.cfg
        g = Geometry(cfg, fold)
        bw = bias_width(layer) + 1
        self.info = P.DesignInfo(
            magic=P.MAGIC, version=P.PROTOCOL_VERSION, wbits=cfg.wbits, abits=cfg.abits, hidden=cfg.hidden,
            input=cfg.input, pe=fold.pe, simd=fold.simd, planes=int(fold.planes == "serial"),
            cell_bits=cfg.gate_set.cell_bits(cfg), cell_float=int(cfg.cell_format.kind == "float"),
            cell_type=P.CELL_TYPES.index(cfg.cell_type), shift=layer.shift, bias_bits=bw, mult_bits=16,
            load_data_bits=max(g.word_bits, fold.pe * bw, 16), load_addr_bits=max(1, (g.depth - 1).bit_length()),
            weight_depth=g.depth, row_folds=g.row_folds, latency=latency(cfg, fold), clk_hz=clk_hz,
            divisor=divisor, timeout_cycles=timeout_cycles, design_id=P.design_id(cfg, fold, layer.shift))
        self.baud = clk_hz / divisor
        self.model = IntegerLSTM(layer)  # the emulated core computes with this layer (loads are recorded)
        self.state = self.model.initial_state(1)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.line_time = line_time
        self.now = 0.0  # fake seconds (line_time)
        self.arrival = []  # fake time at which each byte of outbuf is complete on the line (line_time)
        self.loads = []
        self.steps = 0
        self.counters = dict(crc_errors=0, header_errors=0, timeouts=0, arg_errors=0)
        self.duplicates = 0
        self.last_executed = None  # (SEQ, TYPE, CRC) of the last executed request
        self.frames_ok = 0
        # fault injection: callables applied to the next reply / hooks
        self.corrupt_next_reply = None  # index of a byte to flip in the next reply
        self.drop_next_reply = False
        self.corrupt_next_request = None  # index of a byte to flip in the next write
        self.mute = False  # no replies at all
        self.replay_before_next_reply = False  # send the previous reply again before the next one
        self.stale_nak_before_next_reply = None  # NAK code for the previous request, sent before the next reply
        self.duplicate_next_request = False  # the next write arrives twice
        self.last_reply = b""
        self.last_request = (0, P.SEQ_UNKNOWN)  # TYPE and SEQ of the last request parsed
        self.seq = P.SEQ_UNKNOWN  # SEQ of the request being answered

    # -- Transport --------------------------------------------------------------------------------
    def clock(self) -> float:
        return self.now if self.line_time else super().clock()

    def write(self, data: bytes) -> None:
        self.now += len(data) * 10 / self.baud
        data = bytearray(data)
        if self.corrupt_next_request is not None:
            data[self.corrupt_next_request] ^= 1
            self.corrupt_next_request = None
        if self.duplicate_next_request:
            self.duplicate_next_request = False
            data = data + data
        self.inbuf += data
        self._parse()

    def read(self, n: int, timeout: float) -> bytes:
        if not self.outbuf and self.inbuf:
            # an incomplete frame left in the input: the device times out on it
            self.counters["timeouts"] += 1
            self.seq = self.inbuf[P.SEQ_OFFSET] if len(self.inbuf) > P.SEQ_OFFSET else P.SEQ_UNKNOWN
            self.inbuf.clear()
            self._reply(P.NAK, bytes([P.NAK_TIMEOUT, 0]))
        if self.line_time:  # the bytes complete by now + timeout, at most n
            n = min(n, sum(1 for t in self.arrival if t <= self.now + timeout))
            self.now = max(self.now, self.arrival[n - 1]) if n else self.now + timeout
            del self.arrival[:n]
        out = bytes(self.outbuf[:n])
        del self.outbuf[:n]
        return out

    # -- device ---------------------------------------------------------------------------------------
    def _reply(self, ftype, payload=b""):
        fr = bytearray(P.encode_frame(ftype, payload, self.seq))
        stale = b""
        if self.replay_before_next_reply:
            self.replay_before_next_reply = False
            stale = self.last_reply
        if self.stale_nak_before_next_reply is not None:
            old_type, old_seq = self.last_request
            stale = P.encode_frame(P.NAK, bytes([self.stale_nak_before_next_reply, old_type]), old_seq)
            self.stale_nak_before_next_reply = None
        self.last_reply = bytes(fr)
        self._send(stale)
        if self.mute:
            return
        if self.drop_next_reply:
            self.drop_next_reply = False
            return
        if self.corrupt_next_reply is not None:
            fr[self.corrupt_next_reply] ^= 1
            self.corrupt_next_reply = None
        self._send(fr)

    def _send(self, data):
        if self.line_time:
            start = max(self.now, self.arrival[-1] if self.arrival else 0.0)
            self.arrival += [start + (k + 1) * 10 / self.baud for k in range(len(data))]
        self.outbuf += data

    def _out_block(self):
        i = self.info
        h = P.pack_bits(self.state.h[0], i.abits, i.hidden)
        c = P.pack_bits(self.state.c[0], i.cell_bits, i.hidden) if i.cell_bits else b""
        return h + c + struct.pack("<I", i.latency)

    def _parse(self):
        while True:
            while self.inbuf and self.inbuf[0] != P.SYNC:
                del self.inbuf[0]
            if len(self.inbuf) < P.HEADER_BYTES:
                return
            ftype, self.seq = self.inbuf[1], self.inbuf[P.SEQ_OFFSET]
            length = int.from_bytes(self.inbuf[P.LEN_OFFSET:P.LEN_OFFSET + 2], "little")
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
            key = (self.seq, ftype, frame[-P.CRC_BYTES:])
            if key == self.last_executed:
                self.duplicates += 1
                self._answer_again(ftype)
            elif self._execute(ftype, frame[P.HEADER_BYTES:P.HEADER_BYTES + length]):
                self.last_executed = key
            self.last_request = (ftype, self.seq)

    def _answer_again(self, ftype):
        if ftype in (P.LOAD, P.RESET_STATE):
            self._reply(ftype | P.REPLY)
        elif ftype == P.STEP:
            self._reply(P.STEP | P.REPLY, self._out_block())
        else:
            self._execute(ftype, b"", count=False)

    def _execute(self, ftype, pl, count=True) -> bool:
        """Execute a request and reply; False when it was refused (NAK ARG)."""
        i = self.info
        if ftype == P.LOAD:
            sel, addr = pl[0], int.from_bytes(pl[1:3], "little")
            limit = {P.LOAD_WEIGHT: i.weight_depth, P.LOAD_BIAS: i.row_folds, P.LOAD_MULT: 1 << 16}.get(sel, 0)
            if addr >= limit:
                self.counters["arg_errors"] += 1
                self._reply(P.NAK, bytes([P.NAK_ARG, ftype]))
                return False
            self.loads.append((sel, addr, int.from_bytes(pl[3:], "little")))
        self.frames_ok += count
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
                          arg_errors=c["arg_errors"], uart_errors=0, dropped=0, duplicates=self.duplicates,
                          flags=int(bool(self.loads)))
            self._reply(P.STATUS | P.REPLY, st.pack())
        return True
