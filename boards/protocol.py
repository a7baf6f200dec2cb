"""The host link protocol of the hwrnn board designs: framing, CRC, commands and their payloads.

This module is the one definition shared by the gateware (boards.link builds its parser, its
reply generator, its CRC unit and its INFO block from these definitions) and the host driver
(boards.host). It needs no serial port; of Amaranth it uses only ``amaranth.lib.crc``.

Physical layer
==============
UART, 8 data bits, no parity, 1 stop bit (8N1), LSB first, line idle high. The gateware's bit
period is ``divisor`` clock cycles, ``divisor = round(clk_hz / baud)`` (>= 4); the receiver
samples each bit ``divisor // 2`` cycles after the falling edge of the start bit, plus whole
periods. A byte whose stop bit reads 0 is dropped and counted (``uart_errors``).

Frame (both directions; protocol version 3: the frames of version 2, INFO with cell_type)
========================================================================================
::

    byte  0        SYNC = 0xA5
    byte  1        TYPE
    byte  2        SEQ, the request's sequence number (a reply or NAK echoes it)
    bytes 3..4     LEN, unsigned 16 bit little endian: number of payload bytes
    bytes 5..4+LEN PAYLOAD
    bytes 5+LEN,   CRC = CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no
          6+LEN    reflection, no final XOR: :data:`CRC`) of bytes 1..4+LEN (TYPE, SEQ, LEN and
                   PAYLOAD, not SYNC), most significant byte first.

Version 1 had no SEQ byte (bytes 2..3 LEN, CRC over TYPE, LEN, PAYLOAD) and no STATUS.duplicates.

Sequence numbers: the host numbers its requests 1..255 (then 1 again; :func:`next_seq`) and
keeps the number when it resends a request. A reply carries its request's SEQ, a NAK too (0 when
the frame was cut before its SEQ byte), so the host drops every frame whose SEQ is not the one it
waits for: a stale reply, a replayed reply or a late NAK never answers a newer request. The device
remembers the last request it executed (SEQ, TYPE and CRC); a request identical to it (a resend
after a lost reply, or the same frame arriving twice) is not executed again but answered again:
LOAD and RESET_STATE with their empty reply, STEP with the OUT block the core still holds (that
step's h_t, c_t); INFO, STATUS and READ_OUT, which change nothing, are answered afresh. Such
frames are counted in STATUS.duplicates, not in frames_ok. A NAKed request was not executed and
is not remembered, so its resend executes. Only the last executed request is remembered: an older
frame that reappears after a newer one was executed is executed again (its reply, carrying an old
SEQ, is dropped by the host). Host resynchronisation after any error: read and drop
bytes until the line has been quiet for longer than the device's frame timeout (the device is
then hunting for SYNC), then resend the same frame with the same SEQ.

Multi-byte integers inside payloads are little endian. Bit vectors (x codes, h, c, load data) are
packed LSB first into ``ceil(bits / 8)`` bytes: bit k of the vector is bit k % 8 of payload byte
k // 8, pad bits are 0.

Requests and replies (TYPE; a reply's TYPE is the request's TYPE | 0x80)
=====================================================================

=====  ============  =====================================  =================================
TYPE   name          request payload                        reply payload
=====  ============  =====================================  =================================
0x01   INFO          (none)                                 INFO block (below)
0x02   LOAD          sel u8, addr u16, data (D bytes)       (none)
0x03   STEP          x codes (XB bytes)                     OUT block (below)
0x04   RESET_STATE   (none)                                 (none)
0x05   STATUS        (none)                                 STATUS block (below)
0x06   READ_OUT      (none)                                 OUT block of the last step
=====  ============  =====================================  =================================

* LOAD writes one word of the core's ``load`` stream while it is idle: sel 0 = weight-memory word
  at addr (< weight_depth; a word of hwrnn.datapath.weight_image), 1 = bias word of row fold addr
  (< row_folds; PE lanes of bias_bits two's complement, lane l at bits l*bias_bits), 2 = scale
  multiplier M (addr ignored). D = ceil(load_data_bits / 8).
* STEP offers x_t (code j at bits j*abits, XB = ceil(input*abits / 8)) to the core, waits for
  h_t and replies with it. READ_OUT replies the OUT block again without stepping (the core holds
  h_t and c_t until the next STEP or RESET_STATE). A STEP whose reply was lost is resent with its
  SEQ: the device answers it from the held OUT block without stepping twice.
* OUT block: h (HB = ceil(hidden*abits / 8) bytes, unit j at bits j*abits), c (CB =
  ceil(hidden*cell_bits / 8) bytes, none without a cell state; unit j at bits j*cell_bits: two's complement for a fixed-point
  cell, the bit pattern for a floating-point cell; INFO.cell_float says which), cycles u32
  (the core's ``last_cycles``: cycles from accepting x_t to h_t valid).
* RESET_STATE sets h and c to the reset state (h0, c0) of the layer.

NAK (TYPE 0xFF, SEQ of the request, payload: code u8, request TYPE u8 (0 when unknown)) replaces
the reply when the request was not executed:

====  ========  ==================================================================================
code  name      meaning
====  ========  ==================================================================================
1     CRC       the frame's CRC did not check; sent right after the frame
2     HEADER    unknown TYPE, or LEN is not the TYPE's exact length; the device then discards
              bytes until the line has been quiet for ``timeout_cycles`` and only then NAKs
3     TIMEOUT   truncated frame: no byte for ``timeout_cycles`` after SYNC and before the frame's end
4     ARG       LOAD with sel > 2 or addr beyond the memory
====  ========  ==================================================================================

Rules of the device: bytes outside a frame that are not SYNC are ignored. One request at a time:
bytes that arrive while the device executes a request or sends its reply are dropped (and counted
in STATUS.dropped), so the host waits for each reply (or NAK) before sending the next frame.

INFO block (``INFO_FIELDS``, little endian): magic ``b"HWRN"``, protocol version, the layer's
wbits, abits, hidden, input, the folding (pe, simd, planes 0=parallel 1=serial), cell_bits (0: a
cell type without a cell state, whose OUT block has no c), cell_float (0: c is fixed point, two's
complement; 1: c is a floating-point bit pattern), cell_type (index in ``CELL_TYPES``), shift R, bias_bits, mult_bits, load_data_bits, load_addr_bits, weight_depth, row_folds, latency
(cycles per step), clk_hz, divisor, timeout_cycles and design_id (``design_id()``: CRC-32 of the
hardware-relevant layer configuration, folding and shift).

STATUS block (``STATUS_FIELDS``): uptime (cycles since reset, u32, wraps; sampled when the STATUS
frame was accepted), steps (STEPs executed since reset), last_cycles, frames_ok (frames executed),
then u16 wrapping counters crc_errors, header_errors, timeouts, arg_errors, uart_errors, dropped,
duplicates (requests answered again without executing them), and flags u8 (bit 0: a LOAD was executed since reset, i.e. the memories may no longer hold the
weights baked into the bitstream).
"""
from __future__ import annotations

import binascii
import json
import struct
import zlib
from dataclasses import dataclass, fields

from amaranth.lib.crc import catalog

from hwrnn.gates import GATE_SETS

SYNC = 0xA5
HEADER_BYTES = 5  # SYNC, TYPE, SEQ, LEN
SEQ_OFFSET, LEN_OFFSET = 2, 3  # byte offsets in a frame
CRC_BYTES = 2
OVERHEAD = HEADER_BYTES + CRC_BYTES
PROTOCOL_VERSION = 3
SEQ_UNKNOWN = 0  # the SEQ of a NAK for a frame cut before its SEQ byte; never used by the host
MAGIC = b"HWRN"

INFO, LOAD, STEP, RESET_STATE, STATUS, READ_OUT = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
REQUEST_NAMES = {INFO: "INFO", LOAD: "LOAD", STEP: "STEP", RESET_STATE: "RESET_STATE",
                 STATUS: "STATUS", READ_OUT: "READ_OUT"}
REPLY = 0x80
NAK = 0xFF

NAK_CRC, NAK_HEADER, NAK_TIMEOUT, NAK_ARG = 1, 2, 3, 4
NAK_NAMES = {NAK_CRC: "CRC", NAK_HEADER: "HEADER", NAK_TIMEOUT: "TIMEOUT", NAK_ARG: "ARG"}

LOAD_WEIGHT, LOAD_BIAS, LOAD_MULT = 0, 1, 2  # the core's load.sel values (rtl_gen.core)

#: The frame CRC, CRC-16/CCITT-FALSE over bytes: ``CRC.create()`` (an ``amaranth.lib.crc.Processor``)
#: in the gateware; on the host the same parameters through binascii's table-driven CRC-CCITT
#: (``crc16``: about 1000x faster than ``CRC.compute``, held equal to it at import and in the tests).
CRC = catalog.CRC16_CCITT_FALSE(data_width=8)

#: INFO.cell_type codes: the cell types (hwrnn.gates) in registry order
CELL_TYPES = tuple(gs.name for gs in GATE_SETS)

# (name, struct code); the order is the byte order of the block
INFO_FIELDS = (
    ("magic", "4s"), ("version", "B"), ("wbits", "B"), ("abits", "B"), ("hidden", "H"),
    ("input", "H"), ("pe", "H"), ("simd", "H"), ("planes", "B"), ("cell_bits", "B"), ("cell_float", "B"),
    ("cell_type", "B"), ("shift", "B"), ("bias_bits", "B"), ("mult_bits", "B"), ("load_data_bits", "H"),
    ("load_addr_bits", "B"), ("weight_depth", "H"), ("row_folds", "H"), ("latency", "I"),
    ("clk_hz", "I"), ("divisor", "I"), ("timeout_cycles", "I"), ("design_id", "I"),
)
STATUS_FIELDS = (
    ("uptime", "I"), ("steps", "I"), ("last_cycles", "I"), ("frames_ok", "I"),
    ("crc_errors", "H"), ("header_errors", "H"), ("timeouts", "H"), ("arg_errors", "H"),
    ("uart_errors", "H"), ("dropped", "H"), ("duplicates", "H"), ("flags", "B"),
)
INFO_STRUCT = struct.Struct("<" + "".join(c for _, c in INFO_FIELDS))
STATUS_STRUCT = struct.Struct("<" + "".join(c for _, c in STATUS_FIELDS))
INFO_LEN = INFO_STRUCT.size
STATUS_LEN = STATUS_STRUCT.size
NAK_LEN = 2
_STRUCT_MAX = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFF_FFFF}


def info_field_max(name: str) -> int:
    """Largest value the INFO block can hold in field ``name`` (e.g. timeout_cycles: 2**32 - 1)."""
    return _STRUCT_MAX[dict(INFO_FIELDS)[name]]


def next_seq(seq: int) -> int:
    """The host's sequence number after ``seq``: 1, 2, ..., 255, 1, ... (never SEQ_UNKNOWN)."""
    return seq % 255 + 1


class ProtocolError(Exception):
    """A frame that cannot be used (message is one line)."""


def crc16(data: bytes) -> int:
    """:data:`CRC` of ``data`` (check value of b"123456789": 0x29B1)."""
    return binascii.crc_hqx(bytes(data), _INITIAL)


# binascii.crc_hqx is CRC-CCITT (polynomial 0x1021, MSB first, no reflection, no final XOR) from a
# given initial value: exactly the catalog's parameters when they say so, checked here once
_ALG = CRC.algorithm
_INITIAL = _ALG.initial_crc
if (_ALG.crc_width, _ALG.polynomial, _ALG.reflect_input, _ALG.reflect_output, _ALG.xor_output) != (16, 0x1021, False, False, 0) \
        or binascii.crc_hqx(b"123456789", _INITIAL) != CRC.compute(b"123456789"):  # pragma: no cover
    raise ImportError("binascii.crc_hqx does not compute the link's CRC-16/CCITT-FALSE")


def nbytes(bits: int) -> int:
    return (bits + 7) // 8


def encode_frame(ftype: int, payload: bytes = b"", seq: int = SEQ_UNKNOWN) -> bytes:
    """SYNC, TYPE, SEQ, LEN, PAYLOAD, CRC (see the module docstring)."""
    if not 0 <= ftype <= 0xFF:
        raise ValueError(f"frame type must be a byte, got {ftype}")
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"sequence number must be a byte, got {seq}")
    payload = bytes(payload)
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the 65535-byte frame limit")
    body = bytes([ftype, seq]) + struct.pack("<H", len(payload)) + payload
    return bytes([SYNC]) + body + crc16(body).to_bytes(CRC_BYTES, "big")


@dataclass(frozen=True)
class Frame:
    type: int
    payload: bytes
    seq: int = SEQ_UNKNOWN

    @property
    def is_nak(self) -> bool:
        return self.type == NAK


def decode_frame(data: bytes) -> Frame:
    """One complete frame (exactly, from SYNC to CRC) -> Frame; raises ProtocolError."""
    data = bytes(data)
    if len(data) < OVERHEAD:
        raise ProtocolError(f"frame of {len(data)} bytes is shorter than the {OVERHEAD}-byte minimum")
    if data[0] != SYNC:
        raise ProtocolError(f"frame starts with 0x{data[0]:02x}, not SYNC 0x{SYNC:02x}")
    (length,) = struct.unpack_from("<H", data, LEN_OFFSET)
    if len(data) != OVERHEAD + length:
        raise ProtocolError(f"frame has {len(data)} bytes, its LEN {length} needs {OVERHEAD + length}")
    if crc16(data[1:-CRC_BYTES]) != int.from_bytes(data[-CRC_BYTES:], "big"):
        raise ProtocolError(f"CRC mismatch in a frame of type 0x{data[1]:02x}")
    return Frame(data[1], data[HEADER_BYTES:HEADER_BYTES + length], data[SEQ_OFFSET])


def pack_bits(values, bits: int, count: int | None = None) -> bytes:
    """Pack integers (two's complement allowed) LSB first, ``bits`` each, into bytes."""
    values = [int(v) for v in values]
    n = len(values) if count is None else count
    mask = (1 << bits) - 1
    acc = 0
    for j, v in enumerate(values):
        acc |= (v & mask) << (bits * j)
    return acc.to_bytes(nbytes(bits * n), "little")


def unpack_bits(data: bytes, bits: int, count: int, signed: bool = False) -> list[int]:
    acc = int.from_bytes(bytes(data), "little")
    mask = (1 << bits) - 1
    out = []
    for j in range(count):
        v = (acc >> (bits * j)) & mask
        if signed and v >> (bits - 1):
            v -= 1 << bits
        out.append(v)
    return out


def design_id(cfg, fold, shift: int) -> int:
    """CRC-32 of what decides the numbers a core computes: the layer config without the training
    options (gamma, weight_tanh), the folding and the scale shift R."""
    c = {k: v for k, v in cfg.to_dict().items() if k not in ("gamma", "weight_tanh")}
    text = json.dumps({"config": c, "folding": fold.to_dict(), "shift": int(shift)}, sort_keys=True)
    return zlib.crc32(text.encode())


@dataclass(frozen=True)
class DesignInfo:
    magic: bytes
    version: int
    wbits: int
    abits: int
    hidden: int
    input: int
    pe: int
    simd: int
    planes: int
    cell_bits: int
    cell_float: int
    cell_type: int
    shift: int
    bias_bits: int
    mult_bits: int
    load_data_bits: int
    load_addr_bits: int
    weight_depth: int
    row_folds: int
    latency: int
    clk_hz: int
    divisor: int
    timeout_cycles: int
    design_id: int

    def pack(self) -> bytes:
        return INFO_STRUCT.pack(*(getattr(self, f.name) for f in fields(self)))

    @classmethod
    def unpack(cls, data: bytes) -> "DesignInfo":
        if len(data) != INFO_LEN:
            raise ProtocolError(f"INFO block has {len(data)} bytes, expected {INFO_LEN}")
        info = cls(*INFO_STRUCT.unpack(bytes(data)))
        if info.magic != MAGIC:
            raise ProtocolError(f"INFO magic is {info.magic!r}, expected {MAGIC!r}: not an hwrnn board")
        if info.version != PROTOCOL_VERSION:
            raise ProtocolError(f"board speaks protocol version {info.version}, this driver {PROTOCOL_VERSION}")
        return info

    # sizes of the payloads this design exchanges
    @property
    def x_bytes(self) -> int:
        return nbytes(self.input * self.abits)

    @property
    def h_bytes(self) -> int:
        return nbytes(self.hidden * self.abits)

    @property
    def c_bytes(self) -> int:
        return nbytes(self.hidden * self.cell_bits)

    @property
    def out_len(self) -> int:
        return self.h_bytes + self.c_bytes + 4

    @property
    def load_data_bytes(self) -> int:
        return nbytes(self.load_data_bits)

    @property
    def load_len(self) -> int:
        return 3 + self.load_data_bytes

    @property
    def planes_name(self) -> str:
        return "serial" if self.planes else "parallel"

    @property
    def baud(self) -> float:
        return self.clk_hz / self.divisor

    def request_len(self, ftype: int) -> int | None:
        """Exact payload length of a request type, None for an unknown type."""
        return {INFO: 0, LOAD: self.load_len, STEP: self.x_bytes, RESET_STATE: 0, STATUS: 0,
                READ_OUT: 0}.get(ftype)

    def reply_len(self, ftype: int) -> int | None:
        return {INFO: INFO_LEN, LOAD: 0, STEP: self.out_len, RESET_STATE: 0, STATUS: STATUS_LEN,
                READ_OUT: self.out_len}.get(ftype)


@dataclass(frozen=True)
class Status:
    uptime: int
    steps: int
    last_cycles: int
    frames_ok: int
    crc_errors: int
    header_errors: int
    timeouts: int
    arg_errors: int
    uart_errors: int
    dropped: int
    duplicates: int
    flags: int

    @classmethod
    def unpack(cls, data: bytes) -> "Status":
        if len(data) != STATUS_LEN:
            raise ProtocolError(f"STATUS block has {len(data)} bytes, expected {STATUS_LEN}")
        return cls(*STATUS_STRUCT.unpack(bytes(data)))

    def pack(self) -> bytes:
        return STATUS_STRUCT.pack(*(getattr(self, f.name) for f in fields(self)))

    @property
    def loaded(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True)
class Out:
    """h_t (codes), c_t (cell integers) and the cycles of one step."""

    h: list
    c: list
    cycles: int


def decode_out(info: DesignInfo, payload: bytes) -> Out:
    if len(payload) != info.out_len:
        raise ProtocolError(f"OUT block has {len(payload)} bytes, expected {info.out_len}")
    hb, cb = info.h_bytes, info.c_bytes
    h = unpack_bits(payload[:hb], info.abits, info.hidden)
    c = unpack_bits(payload[hb:hb + cb], info.cell_bits, info.hidden, signed=not info.cell_float) if cb else []
    (cycles,) = struct.unpack_from("<I", payload, hb + cb)
    return Out(h, c, cycles)


def encode_load(info: DesignInfo, sel: int, addr: int, data: int) -> bytes:
    if not 0 <= data < (1 << (8 * info.load_data_bytes)):
        raise ValueError(f"load data does not fit {info.load_data_bytes} bytes")
    return struct.pack("<BH", sel, addr) + int(data).to_bytes(info.load_data_bytes, "little")
