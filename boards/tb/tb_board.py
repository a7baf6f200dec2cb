"""cocotb testbench of the whole board design (UART + framing + LSTM core, boards.link.LinkTop),
driven by the host driver (boards.host.BoardLink) through a simulated serial link.

Imported by the simulator, not by pytest. The plan (JSON, path in $HWRNN_BOARD_PLAN, written by
boards.simulate) names the layer baked into the memories, the layer loaded at run time, the UART
divisor, the clock period, the expected INFO block, the x sequence and the seed. Results go to
$HWRNN_BOARD_RESULT (one JSON object per test, merged).

The host code runs in a ``cocotb.task.bridge`` thread; each transport call resumes the simulator
(``cocotb.task.resume``) and returns when its bytes are on the line or its (simulated) timeout
ran out, so every timeout and deadline is simulated time (``SimTransport.clock``: the simulator
does not advance while the host thread runs) and every run is repeatable.
"""
import json
import os
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import FallingEdge, RisingEdge, Timer
from cocotb.utils import get_sim_time

from boards import protocol as P
from boards.host import BoardLink, Transport, compare_step, run_sequence
from hwrnn.checkpoint import load_layer


def _plan():
    with open(os.environ["HWRNN_BOARD_PLAN"]) as fh:
        return json.load(fh)


def _record(name, data):
    path = os.environ.get("HWRNN_BOARD_RESULT")
    if not path:
        return
    old = {}
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
    old[name] = data
    with open(path, "w") as fh:
        json.dump(old, fh, indent=1)


class SimTransport(Transport):
    """The design's UART pins as a byte transport (8N1, ``divisor`` clock cycles per bit).

    Fault injection for tests: ``write(data, bad_stop_at={k})`` sends byte k with a low stop bit
    (a UART framing error) and stops there; ``corrupt_write_at = k`` flips bit 0 of byte k of the
    next write; ``corrupt_read_at = k`` flips bit 0 of the k-th byte received from then on."""

    def __init__(self, dut, divisor: int, period_ns: float):
        self.dut, self.D, self.period_ns = dut, divisor, period_ns
        self.rxq = deque()
        self.line_errors = 0
        self.corrupt_write_at = None
        self.corrupt_read_at = None
        self.bytes_out = 0
        self.bytes_in = 0
        self.baud = 1e9 / (divisor * period_ns)
        self._now = 0.0

    def clock(self) -> float:
        """Simulated seconds at the end of the last transport call (time stands still in between)."""
        return self._now

    def _tick_clock(self):
        self._now = get_sim_time(unit="ns") * 1e-9

    def _bit_time(self, bits=1.0):
        return Timer(self.D * self.period_ns * bits, unit="ns")

    async def monitor(self):
        """Decode the design's tx line forever."""
        tx = self.dut.tx
        while True:
            await FallingEdge(tx)
            await self._bit_time(0.5)
            if int(tx.value) != 0:
                continue
            byte = 0
            for i in range(8):
                await self._bit_time()
                byte |= int(tx.value) << i
            await self._bit_time()
            if int(tx.value) != 1:
                self.line_errors += 1
                continue
            if self.corrupt_read_at is not None:
                if self.corrupt_read_at == 0:
                    byte ^= 1
                    self.corrupt_read_at = None
                else:
                    self.corrupt_read_at -= 1
            self.rxq.append(byte)
            self.bytes_in += 1
            if os.environ.get("HWRNN_BOARD_DEBUG"):
                self.dut._log.info(f"rx byte 0x{byte:02x}")

    async def _send(self, data, bad_stop_at):
        rx = self.dut.rx
        await RisingEdge(self.dut.clk)
        for k, byte in enumerate(data):
            stop = 0 if k in bad_stop_at else 1
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [stop]:
                rx.value = bit
                await self._bit_time()
            self.bytes_out += 1
            if not stop:
                rx.value = 1
                await self._bit_time()
                self._tick_clock()
                return
        rx.value = 1
        self._tick_clock()

    async def _recv(self, n, timeout_ns):
        waited = 0.0
        step = self.D * self.period_ns
        while len(self.rxq) < n and waited < timeout_ns:
            await Timer(step, unit="ns")
            waited += step
        out = bytearray()
        while self.rxq and len(out) < n:
            out.append(self.rxq.popleft())
        self._tick_clock()
        return bytes(out)

    def write(self, data: bytes, bad_stop_at=()) -> None:
        data = bytearray(data)
        if self.corrupt_write_at is not None and self.corrupt_write_at < len(data):
            data[self.corrupt_write_at] ^= 1
            self.corrupt_write_at = None
        resume(self._send)(bytes(data), set(bad_stop_at))

    def read(self, n: int, timeout: float) -> bytes:
        return resume(self._recv)(n, timeout * 1e9)


async def _setup(dut, plan):
    period = plan["period_ns"]
    cocotb.start_soon(Clock(dut.clk, period, unit="ns").start())
    dut.rx.value = 1
    dut.rst.value = 1
    for _ in range(4):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    tr = SimTransport(dut, plan["divisor"], period)
    cocotb.start_soon(tr.monitor())
    return tr


def _link(tr, plan, log):
    # slack in simulated seconds: a few byte times (a lost reply costs this much simulated time)
    byte_s = 10 * plan["divisor"] * plan["period_ns"] * 1e-9
    return BoardLink(tr, timeout=8 * byte_s, quiet=2 * byte_s, retries=3, log=log)


@cocotb.test()
async def sequence(dut):
    """INFO, the baked weights, run-time loading of a second layer, RESET_STATE, a sequence checked
    step by step against the integer model; STATUS counters at the end."""
    plan = _plan()
    tr = await _setup(dut, plan)

    def host():
        link = _link(tr, plan, dut._log.info)
        info = link.connect()
        want = P.DesignInfo.unpack(bytes.fromhex(plan["info_hex"]))
        assert info == want, f"INFO differs: board {info}, expected {want}"
        baked = load_layer(plan["baked_layer"])
        runtime = load_layer(plan["runtime_layer"])
        xs = plan["xs"]
        k = plan["baked_steps"]
        r1 = run_sequence(link, baked, xs[:k], load=False)
        r2 = run_sequence(link, runtime, xs[k:], load=True, reset_before=set(plan["reset_before"]))
        st = link.status()
        return info, r1, r2, st, link.stats.to_dict()

    info, r1, r2, st, stats = await bridge(host)()
    errors = [st.crc_errors, st.header_errors, st.timeouts, st.arg_errors, st.uart_errors, st.dropped,
              st.duplicates]
    _record("sequence", {"baked_steps": r1.steps, "runtime_steps": r2.steps, "load_frames": r2.load_frames,
                         "mismatches": r1.mismatches + r2.mismatches, "latency": info.latency,
                         "cycles": r1.cycles + r2.cycles, "status": st.__dict__, "stats": stats,
                         "bytes_out": tr.bytes_out, "bytes_in": tr.bytes_in})
    assert r1.ok and r2.ok, "; ".join((r1.mismatches + r2.mismatches)[:5])
    assert st.steps == r1.steps + r2.steps, f"STATUS.steps {st.steps}, host ran {r1.steps + r2.steps}"
    assert errors == [0] * 7, f"error counters not zero: {st}"
    assert st.last_cycles == info.latency
    assert tr.line_errors == 0


@cocotb.test()
async def corrupted_frames(dut):
    """Broken requests (bad CRC in header/payload/CRC bytes, truncated frames, bad headers, a UART
    framing error, bytes sent during a reply, a bad LOAD address) are NAKed (with their SEQ) or
    dropped and change nothing; a corrupted reply and a corrupted request inside BoardLink.step are
    recovered (the resent STEP is answered, not executed again); every step still equals the
    integer model; the STATUS counters count exactly these faults."""
    plan = _plan()
    tr = await _setup(dut, plan)

    def host():
        from hwrnn.integer_model import IntegerLSTM
        import numpy as np

        log = dut._log.info
        link = _link(tr, plan, log)
        info = link.connect()
        layer = load_layer(plan["runtime_layer"])
        link.load_layer(layer)
        link.reset_state()
        model = IntegerLSTM(layer)
        state = [model.initial_state(1)]
        xs = iter(plan["xs"] * 4)
        mism = []
        checked = [0]

        def step():
            x = np.asarray(next(xs), dtype=np.int64)
            out = link.step(x)
            state[0], _ = model.step(x[None, :], state[0])
            mism.extend(compare_step(checked[0], out, state[0].h[0], state[0].c[0], info.latency))
            checked[0] += 1

        RAW = 0x5A  # SEQ of the frames sent raw

        def expect_nak(raw, code, ftype, what, bad_stop_at=(), seq=RAW):
            if bad_stop_at:
                tr.write(raw, bad_stop_at=bad_stop_at)
            else:
                link.send_raw(raw)
            fr = link.read_frame(link.reply_deadline_s(len(raw), P.OVERHEAD + P.NAK_LEN))
            got = (fr.type, fr.seq, bytes(fr.payload))
            want = (P.NAK, seq, bytes([code, ftype]))
            assert got == want, f"{what}: reply {got}, expected NAK {want}"
            log(f"{what}: NAK {P.NAK_NAMES[code]} as expected")

        x0 = P.pack_bits(plan["xs"][0], info.abits, info.input)
        step_frame = P.encode_frame(P.STEP, x0, RAW)
        step()
        # a LOAD that would zero weight word 0 and the multiplier, with a broken CRC: nothing changes
        for sel in (P.LOAD_WEIGHT, P.LOAD_MULT):
            bad = bytearray(P.encode_frame(P.LOAD, P.encode_load(info, sel, 0, 0), RAW))
            bad[-1] ^= 0x01
            expect_nak(bad, P.NAK_CRC, P.LOAD, f"LOAD sel {sel} with a bad CRC")
        step()
        # a flipped bit in the payload and in the TYPE byte of a STEP frame
        bad = bytearray(step_frame)
        bad[P.HEADER_BYTES] ^= 0x80
        expect_nak(bad, P.NAK_CRC, P.STEP, "STEP with a flipped payload bit")
        bad = bytearray(step_frame)
        bad[1] ^= P.STEP ^ P.READ_OUT  # a READ_OUT header (valid length 0 only): header error
        expect_nak(bad, P.NAK_HEADER, P.READ_OUT, "STEP whose TYPE became READ_OUT")
        step()
        # truncated frames: the device times out and NAKs
        for cut in (1, 2, 4, len(step_frame) - 1):  # the NAK has the TYPE and SEQ received before the cut
            expect_nak(step_frame[:cut], P.NAK_TIMEOUT, 0 if cut < 2 else P.STEP, f"STEP cut after {cut} bytes",
                       seq=RAW if cut > 2 else P.SEQ_UNKNOWN)
        step()
        # bad headers: an unknown type, a STEP with one byte too many
        expect_nak(P.encode_frame(0x33, b"", RAW), P.NAK_HEADER, 0x33, "unknown TYPE 0x33")
        expect_nak(P.encode_frame(P.STEP, x0 + b"\x00", RAW), P.NAK_HEADER, P.STEP, "STEP with LEN + 1")
        # LOAD address beyond the weight memory
        expect_nak(P.encode_frame(P.LOAD, P.encode_load(info, P.LOAD_WEIGHT, info.weight_depth, 0), RAW),
                   P.NAK_ARG, P.LOAD, "LOAD beyond the weight memory")
        expect_nak(P.encode_frame(P.LOAD, P.encode_load(info, 3, 0, 0), RAW), P.NAK_ARG, P.LOAD, "LOAD with sel 3")
        step()
        # a UART framing error inside a frame: the byte is dropped, the frame times out
        expect_nak(step_frame, P.NAK_TIMEOUT, P.STEP, "STEP with a framing error in byte 4", bad_stop_at={4})
        # garbage before a frame is ignored
        link.send_raw(b"\x00\xff\x13")
        step()
        # bytes sent while the device replies are dropped (and counted)
        # (SEQ 0, which the driver never uses: this STEP cannot equal the driver's last request)
        info_frame = P.encode_frame(P.INFO, b"", P.SEQ_UNKNOWN)
        x = np.asarray(next(xs), dtype=np.int64)
        link.send_raw(P.encode_frame(P.STEP, P.pack_bits(x, info.abits, info.input), P.SEQ_UNKNOWN) + info_frame)
        out = P.decode_out(info, link.read_frame(link.reply_deadline_s(20, info.out_len + 6)).payload)
        link.device_steps += 1
        state[0], _ = model.step(x[None, :], state[0])
        mism.extend(compare_step(checked[0], out, state[0].h[0], state[0].c[0], info.latency))
        checked[0] += 1
        assert link.drain() == 0, "the INFO frame sent during the reply was answered"
        step()
        # a corrupted STEP reply: BoardLink.step sees the CRC fail and resends the same frame (same SEQ):
        # the device answers it from the OUT block it holds without stepping again (one duplicate)
        tr.corrupt_read_at = P.HEADER_BYTES + 2
        step()
        assert link.stats.steps_recovered == 1, link.stats
        # a corrupted STEP request: NAK CRC, BoardLink.step resends it
        tr.corrupt_write_at = P.HEADER_BYTES
        step()
        step()
        # RESET_STATE, then more steps
        link.reset_state()
        state[0] = model.initial_state(1)
        step()
        step()
        return link.status(), link.stats.to_dict(), mism, checked[0], len(info_frame)

    st, stats, mism, steps, dropped = await bridge(host)()
    # CRC: two LOADs, a STEP payload bit, the request corrupted inside BoardLink.step
    want = {"crc_errors": 4, "header_errors": 3, "timeouts": 5, "arg_errors": 2, "uart_errors": 1,
            "dropped": dropped, "duplicates": 1, "steps": steps}
    got = {k: getattr(st, k) for k in want}
    _record("corrupted_frames", {"steps": steps, "mismatches": mism, "status": st.__dict__, "stats": stats,
                                 "expected_counters": want})
    assert not mism, "; ".join(mism[:5])
    assert got == want, f"STATUS counters {got}, expected {want}"
    assert stats["steps_recovered"] == 1 and stats["resent"] >= 1, stats
