"""Host driver of the hwrnn board link: transports, the request/reply client with deadlines,
retries and resynchronisation, run-time loading of a layer checkpoint, and a sequence run checked
against the integer model (hwrnn.integer_model.IntegerLSTM).

Transports move bytes and know nothing of frames:

* ``SerialTransport``: a real port through pyserial (``/dev/ttyUSB0``, or any pyserial URL such
  as ``loop://`` or ``socket://host:port``);
* boards/tb/tb_board.py ``SimTransport``: the UART pins of the simulated board design under
  cocotb (the driver runs in a ``cocotb.task.bridge`` thread; its timeouts are simulated time).

``BoardLink`` is the same code on both. Every call has an overall deadline on the transport's
clock (``Transport.clock``: the monotonic clock on a port, simulated time in the simulation), so a
line that keeps sending (noise, a wrong baud, another device) ends in one LinkError instead of a
hang. Recovery rules (protocol version 3 in boards.protocol):

* each request gets the next sequence number; frames carrying another SEQ (stale or replayed
  replies, late NAKs) are dropped, never taken as the answer;
* after any error (a NAK other than ARG, a reply that times out or fails its checks) the driver
  resynchronises (drops bytes until the line is quiet for longer than the device's frame timeout)
  and resends the same frame with the same SEQ, up to ``retries`` times: the device executes a
  NAKed request then, and answers a request it executed already without executing it again (a
  STEP steps once); a NAK ARG is a driver bug and is raised at once;
* after a recovered STEP the driver checks STATUS.steps against the steps it made.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from hwrnn.cell_state import FloatingPointCell
from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding
from hwrnn.datapath import bias_image, weight_image

from . import protocol as P


class LinkError(Exception):
    """The board did not do what was asked (message is one line)."""


class NakError(LinkError):
    def __init__(self, code: int, request: int):
        self.code, self.request = code, request
        super().__init__(f"board NAKed {P.REQUEST_NAMES.get(request, hex(request))}: "
                         f"{P.NAK_NAMES.get(code, f'code {code}')}")


class ReplyError(LinkError):
    """No reply, or a reply that failed its checks (timeout, CRC, type, length)."""


class LinkTimeout(LinkError):
    """A call did not finish within its deadline (a line that keeps sending, or no answer)."""


class Transport:
    """Byte transport: ``write`` sends all bytes; ``read`` returns up to n bytes, fewer only when
    ``timeout`` seconds passed (simulated seconds on a simulated link); ``clock`` is the time in
    seconds that those timeouts are measured on. ``baud``: nominal line rate (sizes the timeouts
    before the board's INFO is known), None if unknown."""

    baud: float | None = None

    def clock(self) -> float:
        return time.monotonic()

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, n: int, timeout: float) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SerialTransport(Transport):
    """A serial port (8N1) through pyserial; a write that blocks for ``write_timeout`` seconds
    (flow control, a stuck adapter) and an I/O error are LinkErrors."""

    def __init__(self, port: str, baud: float, write_timeout: float = 2.0):
        try:
            import serial
        except ImportError as e:  # pragma: no cover - pyserial is a dependency
            raise LinkError("pyserial is not installed (`pip install pyserial`)") from e
        self._errors = (serial.SerialException, OSError)
        try:
            self.ser = serial.serial_for_url(port, baudrate=int(round(baud)), bytesize=8, parity="N",
                                             stopbits=1, timeout=0, write_timeout=write_timeout)
        except (serial.SerialException, ValueError) as e:
            raise LinkError(f"cannot open {port}: {e}") from None
        self.port = port
        self.baud = baud

    def write(self, data: bytes) -> None:
        try:
            self.ser.write(bytes(data))
        except self._errors as e:
            raise LinkError(f"cannot write to {self.port}: {e}") from None

    def read(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        buf = bytearray()
        try:
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.ser.timeout = left
                buf += self.ser.read(n - len(buf))
        except self._errors as e:
            raise LinkError(f"cannot read from {self.port}: {e}") from None
        return bytes(buf)

    def close(self) -> None:
        self.ser.close()


@dataclass
class LinkStats:
    frames_sent: int = 0
    replies: int = 0
    naks: dict = field(default_factory=dict)  # NAK name -> count
    reply_errors: int = 0
    resent: int = 0
    steps_recovered: int = 0  # STEPs answered after their first reply was lost or damaged
    garbage_bytes: int = 0  # non-SYNC bytes skipped while waiting for a reply
    stale: int = 0  # frames dropped because their SEQ was not the awaited one
    resyncs: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class BoardLink:
    """Request/reply client of one board.

    timeout: seconds of slack on top of the computed transfer time of a request and its reply
             (and the device's frame timeout), > 0; quiet: extra seconds of silence (>= 0) that a
             resynchronisation waits for beyond the device's frame timeout; retries: resends of a
             request after an error (>= 0). A request call ends within ``request_budget_s``, a
             resynchronisation within ``resync_budget_s`` (seconds on the transport's clock)."""

    def __init__(self, transport: Transport, *, timeout: float = 0.5, quiet: float = 0.02, retries: int = 3,
                 log=None):
        if not _finite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        if not _finite(quiet) or quiet < 0:
            raise ValueError(f"quiet must be a non-negative number of seconds, got {quiet}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries}")
        self.t = transport
        self.timeout = timeout
        self.quiet = quiet
        self.retries = retries
        self.log = log or (lambda msg: None)
        self.info: P.DesignInfo | None = None
        self.stats = LinkStats()
        self.device_steps: int | None = None  # the device's STATUS.steps as last known
        self.seq = P.SEQ_UNKNOWN  # SEQ of the last request sent

    # ---- timing (seconds on the transport's clock) -----------------------------------------------
    def now(self) -> float:
        return self.t.clock()

    def _byte_s(self) -> float:
        """Seconds per byte: from INFO, else from the transport's nominal baud (``baud`` attribute)."""
        baud = self.info.baud if self.info else getattr(self.t, "baud", None)
        return 10.0 / baud if baud else 0.0

    def _device_timeout_s(self) -> float:
        return self.info.timeout_cycles / self.info.clk_hz if self.info else 0.0

    def _max_frame(self) -> int:
        return P.OVERHEAD + max(P.INFO_LEN, P.STATUS_LEN, P.NAK_LEN, self.info.out_len if self.info else 0)

    def _reply_frame(self, payload_len: int | None) -> int:
        """Bytes of a reply frame; the longest one when its payload length is not known yet."""
        return self._max_frame() if payload_len is None else P.OVERHEAD + payload_len

    def reply_deadline_s(self, req_bytes: int, reply_bytes: int) -> float:
        """Seconds from sending a request to the end of its reply."""
        return self.timeout + self._device_timeout_s() + (req_bytes + reply_bytes) * self._byte_s()

    def quiet_s(self) -> float:
        """Silence that ends a resynchronisation: the device has dropped any partial frame by then."""
        return self._device_timeout_s() + 2 * self._byte_s() + self.quiet

    def resync_budget_s(self) -> float:
        """Longest a resynchronisation may take: a late reply, then the quiet gap."""
        return self.timeout + 2 * self.quiet_s() + self._max_frame() * self._byte_s()

    def request_budget_s(self, req_bytes: int, reply_bytes: int) -> float:
        """Overall deadline of one request with its resends and resynchronisations."""
        return (1 + self.retries) * (self.reply_deadline_s(req_bytes, reply_bytes) + self.resync_budget_s())

    # ---- frames ----------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        """Bytes as they are (tests send broken frames with this)."""
        self.t.write(bytes(data))

    def send_frame(self, ftype: int, payload: bytes = b"", seq: int = P.SEQ_UNKNOWN) -> None:
        self.stats.frames_sent += 1
        self.t.write(P.encode_frame(ftype, payload, seq))

    def _read_exact(self, n: int, deadline: float) -> bytes:
        data = self.t.read(n, max(deadline - self.now(), 0.0))
        if len(data) < n:
            raise ReplyError(f"reply timed out ({len(data)} of {n} bytes)")
        return data

    def read_frame(self, timeout: float) -> P.Frame:
        """The next frame from the board, within ``timeout`` seconds from now (the SYNC hunt
        included); ReplyError on timeout, bad CRC or implausible length."""
        deadline = self.now() + timeout
        skipped = 0
        while True:
            left = deadline - self.now()
            b = self.t.read(1, left) if left > 0 else b""
            if not b:
                self.stats.garbage_bytes += skipped
                raise ReplyError(f"no reply within {timeout:.3g} s" +
                                 (f" ({skipped} bytes of garbage)" if skipped else " (timed out waiting for SYNC)"))
            if b[0] == P.SYNC:
                break
            skipped += 1
        self.stats.garbage_bytes += skipped
        hdr = self._read_exact(P.HEADER_BYTES - 1, deadline)
        length = int.from_bytes(hdr[P.LEN_OFFSET - 1:P.LEN_OFFSET + 1], "little")
        limit = self._max_frame() - P.OVERHEAD
        if length > limit:
            raise ReplyError(f"reply header announces {length} payload bytes (at most {limit}): corrupted")
        rest = self._read_exact(length + P.CRC_BYTES, deadline)
        try:
            return P.decode_frame(bytes([P.SYNC]) + hdr + rest)
        except P.ProtocolError as e:
            raise ReplyError(f"bad reply: {e}") from None

    def drain(self) -> int:
        """Resynchronise: read and drop bytes until the line has been quiet for ``quiet_s``;
        returns the bytes dropped. LinkTimeout when the line does not go quiet within
        ``resync_budget_s`` (it keeps sending)."""
        self.stats.resyncs += 1
        quiet, budget = self.quiet_s(), self.resync_budget_s()
        deadline = self.now() + budget
        n = 0
        while True:
            left = deadline - self.now()
            if left <= 0:
                raise LinkTimeout(f"the line never went quiet for {quiet * 1e3:.3g} ms within {budget:.3g} s "
                                  f"({n} bytes dropped): the port keeps sending (wrong port or baud?)")
            wait = min(quiet, left)
            chunk = self.t.read(256, wait)
            n += len(chunk)
            if not chunk and wait >= quiet:
                return n

    resync = drain

    def _next_seq(self) -> int:
        self.seq = P.next_seq(self.seq)
        return self.seq

    def transact(self, ftype: int, payload: bytes = b"", seq: int | None = None) -> bytes:
        """Send one request (SEQ ``seq``, default the next one) and return the payload of its reply,
        dropping frames with another SEQ; no retry, at most ``reply_deadline_s``. NakError /
        ReplyError."""
        seq = self._next_seq() if seq is None else seq
        want = self.info.reply_len(ftype) if self.info else None
        timeout = self.reply_deadline_s(P.OVERHEAD + len(payload), self._reply_frame(want))
        self.send_frame(ftype, payload, seq)
        deadline = self.now() + timeout
        name = P.REQUEST_NAMES.get(ftype, hex(ftype))
        while True:
            left = deadline - self.now()
            if left <= 0:
                raise ReplyError(f"no reply to {name} (SEQ {seq}) within {timeout:.3g} s")
            fr = self.read_frame(left)
            if fr.seq == seq:
                break
            self.stats.stale += 1
            self.log(f"dropped a stale frame (type 0x{fr.type:02x}, SEQ {fr.seq}) while waiting for SEQ {seq}")
        self.stats.replies += 1
        if fr.is_nak:
            if len(fr.payload) != P.NAK_LEN:
                raise ReplyError(f"NAK with {len(fr.payload)} payload bytes")
            code = fr.payload[0]
            name = P.NAK_NAMES.get(code, f"code{code}")
            self.stats.naks[name] = self.stats.naks.get(name, 0) + 1
            raise NakError(code, fr.payload[1])
        if fr.type != (ftype | P.REPLY):
            raise ReplyError(f"reply type 0x{fr.type:02x} to a request of type 0x{ftype:02x}")
        if want is not None and len(fr.payload) != want:
            raise ReplyError(f"reply of {len(fr.payload)} bytes to {P.REQUEST_NAMES[ftype]}, expected {want}")
        return fr.payload

    def _exchange(self, ftype: int, payload: bytes = b"") -> tuple[bytes, bool]:
        """(reply payload, whether a reply was lost or damaged on the way): one request with its
        resends under one SEQ, each after a resynchronisation, within ``request_budget_s``."""
        name = P.REQUEST_NAMES.get(ftype, hex(ftype))
        want = self.info.reply_len(ftype) if self.info else None
        budget = self.request_budget_s(P.OVERHEAD + len(payload), self._reply_frame(want))
        deadline = self.now() + budget
        seq = self._next_seq()
        last, lost = None, False
        for attempt in range(1 + self.retries):
            if attempt:
                if self.now() >= deadline:
                    raise LinkTimeout(f"{name}: no answer within {budget:.3g} s ({attempt} attempts; last: {last})")
                self.stats.resent += 1
                self.log(f"resending {name} (SEQ {seq}) after: {last}")
            try:
                return self.transact(ftype, payload, seq), lost
            except NakError as e:
                if e.code == P.NAK_ARG:
                    raise
                last = e
            except ReplyError as e:
                self.stats.reply_errors += 1
                last, lost = e, True
            self.drain()
        raise last

    def request(self, ftype: int, payload: bytes = b"") -> bytes:
        """A request with resends (module docstring); the reply payload."""
        return self._exchange(ftype, payload)[0]

    # ---- commands --------------------------------------------------------------------------------
    def connect(self) -> P.DesignInfo:
        """Drop stale bytes, read INFO and the device's step counter."""
        self.drain()
        try:
            reply = self.request(P.INFO)
        except ReplyError as e:
            raise ReplyError(f"no valid INFO reply ({e}); is it an hwrnn board speaking protocol version "
                             f"{P.PROTOCOL_VERSION}?") from None
        try:
            self.info = P.DesignInfo.unpack(reply)
        except P.ProtocolError as e:
            raise LinkError(str(e)) from None
        self.device_steps = self.status().steps
        return self.info

    def _need_info(self) -> P.DesignInfo:
        if self.info is None:
            self.connect()
        return self.info

    def status(self) -> P.Status:
        try:
            return P.Status.unpack(self.request(P.STATUS))
        except P.ProtocolError as e:
            raise ReplyError(f"bad STATUS reply: {e}") from None

    def reset_state(self) -> None:
        self.request(P.RESET_STATE)

    def read_out(self) -> P.Out:
        info = self._need_info()
        return P.decode_out(info, self.request(P.READ_OUT))

    def load_word(self, sel: int, addr: int, data: int) -> None:
        info = self._need_info()
        self.request(P.LOAD, P.encode_load(info, sel, addr, data))

    def step(self, x) -> P.Out:
        """Offer x_t, return (h_t, c_t, cycles); exactly one step happens on the device (a resend
        after a lost reply is answered without stepping; checked with STATUS.steps after one)."""
        info = self._need_info()
        x = list(x)
        if len(x) != info.input or any(not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_))
                                       or not 0 <= v < (1 << info.abits) for v in x):
            raise ValueError(f"x_t must be {info.input} codes in 0..{(1 << info.abits) - 1}")
        payload = P.pack_bits([int(v) for v in x], info.abits, info.input)
        if self.device_steps is None:
            self.device_steps = self.status().steps
        reply, lost = self._exchange(P.STEP, payload)
        out = P.decode_out(info, reply)
        self.device_steps = (self.device_steps + 1) & 0xFFFFFFFF
        if lost:
            self.stats.steps_recovered += 1
            steps = self.status().steps
            if steps != self.device_steps:
                raise LinkError(f"device step counter is {steps} after a recovered STEP, expected {self.device_steps}")
            self.log("STEP reply lost; the resent STEP was answered and the device stepped once")
        return out

    # ---- a whole layer ---------------------------------------------------------------------------
    def folding(self) -> Folding:
        info = self._need_info()
        return Folding(pe=info.pe, simd=info.simd, planes=info.planes_name)

    def check_layer(self, layer: QuantLayer) -> None:
        """LinkError unless ``layer`` can run on this board's core (same hardware configuration)."""
        info = self._need_info()
        cfg = layer.cfg
        fold = self.folding()
        want = {"wbits": cfg.wbits, "abits": cfg.abits, "hidden": cfg.hidden, "input": cfg.input,
                "cell_bits": cfg.gate_set.cell_bits(cfg), "cell_float": int(isinstance(cfg.cell_format, FloatingPointCell)),
                "cell_type": P.CELL_TYPES.index(cfg.cell_type),
                "shift": layer.shift}
        shown = {"cell_type": lambda code: P.CELL_TYPES[code] if code < len(P.CELL_TYPES) else f"code {code}"}
        diff = [f"{k} {shown.get(k, str)(v)} (board {shown.get(k, str)(getattr(info, k))})"
                for k, v in want.items() if getattr(info, k) != v]
        if diff:
            hint = (" (the shift R is built into the hardware: rebuild the bitstream with this checkpoint)"
                    if info.shift != layer.shift else "")
            raise LinkError("checkpoint does not match the board's core: " + ", ".join(diff) + hint)
        if P.design_id(cfg, fold, layer.shift) != info.design_id:
            raise LinkError("checkpoint does not match the board's core: the layer options (candidate, "
                            "init_state, z_frac, lut_bits, gate_frac, mult_bits or cell format) differ")
        bw = info.bias_bits
        B = layer.bias_int
        if B.size and (B.min() < -(1 << (bw - 1)) or B.max() >= (1 << (bw - 1))):
            raise LinkError(f"a bias of the checkpoint needs more than the board's {bw}-bit bias memory "
                            f"(range {int(B.min())}..{int(B.max())}); rebuild with this checkpoint")
        if layer.mult >= (1 << info.mult_bits):
            raise LinkError(f"multiplier {layer.mult} exceeds the board's {info.mult_bits}-bit register")

    def layer_words(self, layer: QuantLayer) -> list[tuple[int, int, int]]:
        """(sel, addr, data) LOAD words of a layer for this board."""
        info = self._need_info()
        fold = self.folding()
        bw = info.bias_bits
        words = [(P.LOAD_WEIGHT, a, w) for a, w in enumerate(weight_image(layer, fold))]
        for a, row in enumerate(bias_image(layer, fold)):
            words.append((P.LOAD_BIAS, a, sum((b & ((1 << bw) - 1)) << (bw * j) for j, b in enumerate(row))))
        words.append((P.LOAD_MULT, 0, layer.mult))
        return words

    def load_layer(self, layer: QuantLayer) -> int:
        """Load weights, biases and the multiplier of ``layer``; returns the number of LOAD frames."""
        self.check_layer(layer)
        words = self.layer_words(layer)
        for sel, addr, data in words:
            self.load_word(sel, addr, data)
        return len(words)


@dataclass
class RunResult:
    steps: int
    mismatches: list
    cycles: list
    latency: int
    load_frames: int
    wall_s: float
    stats: dict

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def line(self) -> str:
        state = "PASS" if self.ok else f"FAIL ({len(self.mismatches)} mismatches)"
        return (f"{state}: {self.steps} steps checked against the integer model, {self.load_frames} LOAD frames, "
                f"{self.latency} cycles per step on the board, {self.wall_s:.2f} s")


def compare_step(t: int, out: P.Out, want_h, want_c, latency: int) -> list[str]:
    bad = []
    for tap, got, want in (("h", out.h, want_h), ("c", out.c, want_c))[:2 if len(out.c) else 1]:
        if list(got) != [int(v) for v in want]:
            units = [j for j in range(len(want)) if got[j] != want[j]]
            bad.append(f"step {t}: {tap} differs at units {units[:8]} (board {[got[j] for j in units[:4]]}, "
                       f"model {[int(want[j]) for j in units[:4]]})")
    if out.cycles != latency:
        bad.append(f"step {t}: the board took {out.cycles} cycles, the latency formula says {latency}")
    return bad


def run_sequence(link: BoardLink, layer: QuantLayer, xs, *, load: bool = True, reset: bool = True,
                 reset_before=(), on_step=None) -> RunResult:
    """Load ``layer`` (unless load=False), reset the state, run x_1..x_T and compare every h_t, c_t
    with the integer model and every step's cycles with the latency formula.

    reset_before: steps preceded by a RESET_STATE. on_step(t, link): called before step t (tests
    use it to inject faults)."""
    from hwrnn.integer_model import IntegerLSTM

    t0 = time.perf_counter()
    info = link._need_info()
    n_load = 0
    link.check_layer(layer)
    if load:
        n_load = link.load_layer(layer)
    model = IntegerLSTM(layer)
    state = model.initial_state(1)
    if reset:
        link.reset_state()
    mismatches, cycles = [], []
    xs = np.asarray(xs, dtype=np.int64).reshape(-1, layer.cfg.input)
    for t, x in enumerate(xs):
        if t in reset_before:
            link.reset_state()
            state = model.initial_state(1)
        if on_step is not None:
            on_step(t, link)
        out = link.step(x)
        state, _ = model.step(x[None, :], state)
        cycles.append(out.cycles)
        mismatches += compare_step(t, out, state.h[0], state.c[0], info.latency)
    return RunResult(steps=len(xs), mismatches=mismatches, cycles=cycles, latency=info.latency,
                     load_frames=n_load, wall_s=time.perf_counter() - t0, stats=link.stats.to_dict())


def random_sequence(cfg, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, (1 << cfg.abits), (steps, cfg.input)).astype(np.int64)
