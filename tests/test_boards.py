"""boards/: protocol (framing, CRC), UART and the link gateware in Amaranth's simulator, the host driver
against a Python emulation of the device (retries, lost replies, layer checks), the fit check and
the CLI's refusals, and build trees without tools (Arty A7 for Vivado, iCEBreaker)."""
import binascii
import json
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from boards import protocol as P
from boards.host import BoardLink, LinkError, NakError, ReplyError, SerialTransport, run_sequence
from boards.link import LinkTop
from boards.uart import UartRx, UartTx, baud_divisor
from hwrnn import Folding, LayerConfig, QuantLayer

sys.path.insert(0, str(Path(__file__).parent))
from board_fixtures.emulator import EmulatedBoard  # noqa: E402
from board_fixtures.link_pins import exchange  # noqa: E402

TINY = LayerConfig(wbits=2, abits=2, hidden=4, input=3)
TINY_FOLD = Folding(pe=4, simd=4)
#: protocol-2 frames derived from the hand-written CRC code's v1 frames, CRC by binascii (see its "about")
FRAMES_V2 = json.loads((Path(__file__).parent / "board_fixtures" / "frames_v2.json").read_text())


# ---- protocol ------------------------------------------------------------------------------------

def test_crc_is_ccitt_false():
    assert P.crc16(b"123456789") == 0x29B1  # the catalogue's check value
    data, check = FRAMES_V2["crc_check"]
    assert P.crc16(bytes.fromhex(data)) == P.CRC.compute(bytes.fromhex(data)) == int(check, 16)
    rng = random.Random(1)
    for n in (0, 1, 2, 7, 64, 300):  # the standard library's CRC-CCITT as an independent reference
        data = bytes(rng.randrange(256) for _ in range(n))
        assert P.crc16(data) == binascii.crc_hqx(data, 0xFFFF)


def test_host_frames_are_the_v2_format():
    """Byte-identical to frames built independently of boards.protocol (SYNC, TYPE, SEQ, LEN, PAYLOAD,
    CRC over TYPE..PAYLOAD by binascii), from the hand-written CRC code's v1 frames (version 3 keeps
    the frames of version 2; its INFO block adds cell_type)."""
    assert P.PROTOCOL_VERSION == 3 and P.HEADER_BYTES == 5
    for ftype, seq, payload, frame in FRAMES_V2["host_frames"]:
        assert P.encode_frame(ftype, bytes.fromhex(payload), seq).hex() == frame
        assert P.decode_frame(bytes.fromhex(frame)) == P.Frame(ftype, bytes.fromhex(payload), seq)


def test_frame_roundtrip_and_zero_residue():
    rng = random.Random(2)
    for n in (0, 1, 5, 200):
        pl = bytes(rng.randrange(256) for _ in range(n))
        fr = P.encode_frame(0x42, pl, seq=n % 256)
        assert fr[0] == P.SYNC and fr[1] == 0x42 and fr[2] == n % 256 and struct.unpack("<H", fr[3:5])[0] == n
        assert len(fr) == P.OVERHEAD + n
        assert P.crc16(fr[1:]) == P.CRC.residue() == 0  # the CRC of a whole frame body
        assert P.decode_frame(fr) == P.Frame(0x42, pl, n % 256)
    with pytest.raises(ValueError, match="sequence number"):
        P.encode_frame(0x42, b"", seq=256)
    assert [P.next_seq(s) for s in (0, 1, 254, 255)] == [1, 2, 255, 1]  # never SEQ_UNKNOWN


@pytest.mark.parametrize("damage", ["short", "sync", "length", "crc", "payload", "seq"])
def test_decode_rejects_damaged_frames(damage):
    fr = bytearray(P.encode_frame(P.STEP, b"\x01\x02\x03"))
    if damage == "short":
        fr = fr[:4]
    elif damage == "sync":
        fr[0] = 0x5A
    elif damage == "length":
        fr = fr[:-1]
    elif damage == "crc":
        fr[-1] ^= 0x10
    elif damage == "seq":
        fr[2] ^= 0x01  # the SEQ is covered by the CRC
    else:
        fr[5] ^= 0x01
    with pytest.raises(P.ProtocolError):
        P.decode_frame(bytes(fr))


def test_bit_packing_lsb_first_and_signed():
    data = P.pack_bits([1, 2, 3], 2)
    assert data == bytes([0b111001])
    assert P.unpack_bits(data, 2, 3) == [1, 2, 3]
    vals = [-5, 7, 0, -8191, 8191]
    assert P.unpack_bits(P.pack_bits(vals, 14), 14, 5, signed=True) == vals


def test_info_and_status_blocks_roundtrip():
    board = EmulatedBoard(QuantLayer.random(TINY, seed=0), TINY_FOLD)
    info = board.info
    assert P.DesignInfo.unpack(info.pack()) == info
    assert len(info.pack()) == P.INFO_LEN
    with pytest.raises(P.ProtocolError, match="magic"):
        P.DesignInfo.unpack(b"XXXX" + info.pack()[4:])
    with pytest.raises(P.ProtocolError, match="version"):
        P.DesignInfo.unpack(info.pack()[:4] + b"\x09" + info.pack()[5:])
    st = P.Status(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1)
    assert P.Status.unpack(st.pack()) == st and st.loaded


# ---- gateware in Amaranth's simulator -------------------------------------------------------------

def test_link_gateware_replies_are_the_v2_frames():
    """LinkTop on its UART pins: byte-identical replies to the v2 fixture (STEP, READ_OUT, a NAK CRC
    for a bad CRC byte, RESET_STATE, a NAK ARG: the v1 gateware's payloads with their request's SEQ),
    so both directions' CRC and the frame check hold; the INFO reply is the host's encoding of the
    INFO block."""
    layer = QuantLayer.random(TINY, seed=0)
    top = LinkTop(layer, TINY_FOLD, clk_hz=1_000_000, divisor=4, timeout_cycles=256)
    requests = [bytes.fromhex(r) for _v1, _seq, r, _a in FRAMES_V2["link_exchange"]]
    bad_hi = bytearray(P.encode_frame(P.STEP, b"\x00", seq=0x77))
    bad_hi[-2] ^= 0x01  # the CRC's first byte
    replies = exchange(top, [P.encode_frame(P.INFO, seq=1), *requests, bytes(bad_hi)], divisor=4)
    assert replies[0] == P.encode_frame(P.INFO | P.REPLY, top.info.pack(), seq=1)
    assert [r.hex() for r in replies[1:-1]] == [a for _v1, _seq, _r, a in FRAMES_V2["link_exchange"]]
    assert replies[-1] == P.encode_frame(P.NAK, bytes([P.NAK_CRC, P.STEP]), seq=0x77)


def test_baud_divisor():
    assert baud_divisor(25e6, 115200) == 217
    assert baud_divisor(12e6, 115200) == 104
    with pytest.raises(ValueError, match="at least 4"):
        baud_divisor(1e6, 500000)
    with pytest.raises(ValueError, match="% off"):
        baud_divisor(12e6, 1_800_000)


def test_uart_loopback_and_framing_error():
    D = 5
    m = Module()
    m.submodules.tx = tx = UartTx(D)
    m.submodules.rx = rx = UartRx(D)
    line = Signal(init=1)
    force_low = Signal()
    m.d.comb += line.eq(tx.tx & ~force_low)
    m.d.comb += rx.rx.eq(line)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    rng = random.Random(4)
    data = [rng.randrange(256) for _ in range(12)] + [0x00, 0xFF, 0xA5]
    got, errors = [], []

    async def monitor(ctx):
        async for _clk, _rst, valid, err, byte in ctx.tick().sample(rx.valid, rx.error, rx.data):
            if valid:
                got.append(byte)
            if err:
                errors.append(1)

    async def driver(ctx):
        for b in data:
            ctx.set(tx.data.payload, b)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)
        await ctx.tick().repeat(12 * D)
        assert got == data, (got, data)
        # a byte whose stop bit is held low: dropped, one framing error
        ctx.set(tx.data.payload, 0x55)
        ctx.set(tx.data.valid, 1)
        await ctx.tick().until(tx.data.ready)
        ctx.set(tx.data.valid, 0)
        await ctx.tick().repeat(9 * D)
        ctx.set(force_low, 1)
        await ctx.tick().repeat(2 * D)
        ctx.set(force_low, 0)
        await ctx.tick().repeat(3 * D)
        assert errors == [1] and got == data

    sim.add_process(monitor)
    sim.add_testbench(driver)
    sim.run_until(1e-6 * 12 * D * 40)


# ---- host driver against the emulated device -----------------------------------------------------

@pytest.fixture
def emulated():
    layer = QuantLayer.random(TINY, seed=0)
    board = EmulatedBoard(layer, TINY_FOLD)
    return layer, board, BoardLink(board, timeout=0.01, quiet=0.0, retries=2)


def test_run_sequence_against_the_emulator(emulated):
    layer, board, link = emulated
    xs = np.random.default_rng(0).integers(0, 4, (6, TINY.input))
    res = run_sequence(link, layer, xs, reset_before={3})
    assert res.ok and res.steps == 6 and res.load_frames == len(board.loads)
    assert {s for s, _a, _d in board.loads} == {P.LOAD_WEIGHT, P.LOAD_BIAS, P.LOAD_MULT}


def test_nak_crc_is_resent_and_lost_step_reply_is_recovered(emulated):
    layer, board, link = emulated
    link.connect()
    board.corrupt_next_request = 3  # a LEN byte of the next request: NAK HEADER, resent
    assert link.status().header_errors == 1
    assert link.stats.resent == 1 and link.stats.naks == {"HEADER": 1}
    board.corrupt_next_reply = 6  # a corrupted reply: CRC error on the host, resent
    assert link.status().steps == 0
    assert link.stats.resent == 2 and link.stats.reply_errors == 1

    def faults(t, lk):
        if t == 1:
            board.corrupt_next_reply = 8  # the STEP reply: the step happened, READ_OUT fetches it
        if t == 2:
            board.drop_next_reply = True  # no reply at all: same recovery
        if t == 3:
            board.corrupt_next_request = P.HEADER_BYTES  # a payload byte of the STEP: NAK CRC, not executed, resent
    res = run_sequence(link, layer, np.ones((5, TINY.input), np.int64), load=False, on_step=faults)
    # answered again, not executed again: the STATUS and the two STEPs whose replies were lost
    assert res.ok and board.steps == 5 and link.stats.steps_recovered == 2 and board.duplicates == 3
    assert link.stats.naks == {"HEADER": 1, "CRC": 1}
    assert board.counters["crc_errors"] == 1


def test_nak_arg_is_raised_not_retried(emulated):
    _layer, board, link = emulated
    link.connect()
    with pytest.raises(NakError, match="ARG"):
        link.load_word(P.LOAD_WEIGHT, board.info.weight_depth, 0)
    assert link.stats.resent == 0


def test_reply_errors_exhaust_retries(emulated):
    _layer, board, link = emulated
    link.connect()
    board.mute = True
    with pytest.raises(ReplyError, match="no reply"):
        link.status()
    assert link.stats.resent == link.retries


def test_check_layer_names_the_difference(emulated):
    _layer, board, link = emulated
    link.connect()
    other = QuantLayer.random(LayerConfig(wbits=2, abits=2, hidden=5, input=3), seed=0)
    with pytest.raises(LinkError, match=r"hidden 5 \(board 4\)"):
        link.check_layer(other)
    tanh = QuantLayer.random(LayerConfig(wbits=2, abits=2, hidden=4, input=3, candidate="tanh"), seed=0)
    with pytest.raises(LinkError, match="layer options"):
        link.check_layer(tanh)
    gru = QuantLayer.random(LayerConfig(wbits=2, abits=2, hidden=4, input=3, cell_type="gru"), seed=0)
    with pytest.raises(LinkError, match=r"cell_type gru \(board lstm\)"):
        link.check_layer(gru)


def test_serial_transport_on_a_pyserial_loopback():
    tr = SerialTransport("loop://", 115200)
    tr.write(b"\xa5hello")
    assert tr.read(6, 0.5) == b"\xa5hello"
    assert tr.read(1, 0.05) == b""
    tr.close()
    with pytest.raises(LinkError, match="cannot open"):
        SerialTransport("/dev/does-not-exist-hwrnn", 115200)


def test_cli_run_against_the_emulator(monkeypatch, tmp_path, capsys):
    from boards import __main__ as cli
    from boards import host

    layer = QuantLayer.random(TINY, seed=0)
    ck = tmp_path / "layer.npz"
    layer.save(ck)
    monkeypatch.setattr(host, "SerialTransport", lambda port, baud: EmulatedBoard(layer, TINY_FOLD))
    rc = cli.main(["run", "--port", "emulated", "--checkpoint", str(ck), "--steps", "5",
                   "--json", str(tmp_path / "run.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS: 5 steps" in out
    assert json.loads((tmp_path / "run.json").read_text())["ok"] is True


# ---- fit check and build trees --------------------------------------------------------------------

def test_fit_check_refuses_with_numbers_before_any_tool(tmp_path, capsys):
    from boards.__main__ import main

    out = tmp_path / "b"
    rc = main(["build", "--board", "icebreaker", "--wbits", "4", "--abits", "2", "--hidden", "450", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not fit icebreaker" in err
    from boards.top import BOARDS
    from hwrnn.datapath import Geometry

    cfg = LayerConfig(wbits=4, abits=2, hidden=450)
    needed = Geometry(cfg, BOARDS["icebreaker"].default_folding(cfg)).weight_bits
    assert f"{needed:,} bits" in err and "122,880 bits" in err  # needed vs available
    assert not out.exists()  # refused before the build tree or any tool


def test_bad_seed_is_one_line(tmp_path, capsys):
    from boards.__main__ import main

    out = tmp_path / "b"
    rc = main(["build", "--board", "icebreaker", "--wbits", "2", "--abits", "2", "--hidden", "8", "--seed", "-1",
               "--no-tools", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == "boards: error: seed must be a non-negative integer, got -1"
    assert not out.exists()


def test_fit_check_counts_blocks():
    from boards.build import fit_check
    from boards.top import BOARDS

    cfg = LayerConfig(wbits=2, abits=2, hidden=32)
    layer = QuantLayer.random(cfg, seed=0)
    # iCE40: PE 16 means 20 tables of 512 x 9 bits, 2 blocks each: the bits fit, the blocks do not
    fit = fit_check(layer, Folding(pe=16, simd=8), BOARDS["icebreaker"])
    assert not fit["fits"] and fit["blocks_needed_estimate"] > fit["blocks_available"] == 30
    assert len(fit["problems"]) == 1 and "SB_RAM40_4K" in fit["problems"][0]
    assert fit_check(layer, Folding(pe=16, simd=32), BOARDS["ulx3s"])["fits"]


def test_arty_build_tree_for_vivado(tmp_path):
    from boards.__main__ import main

    out = tmp_path / "arty"
    rc = main(["build", "--board", "arty_a7_35", "--wbits", "2", "--abits", "2", "--hidden", "4", "--input", "3",
               "--pe", "4", "--simd", "4", "-o", str(out)])
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert {"build_hwrnn_board.sh", "hwrnn_board.tcl", "hwrnn_board.xdc", "hwrnn_board.v", "report.json",
            "layer.npz"} <= names
    rep = json.loads((out / "report.json").read_text())
    assert rep["toolchain"].startswith("vivado") and "Vivado" in rep["note"]
    assert rep["baud_divisor"] == 434 and rep["clock_hz"] == 50_000_000  # MMCM: 100 MHz -> 50 MHz
    xdc = (out / "hwrnn_board.xdc").read_text()
    assert "D10" in xdc and "A9" in xdc and "C2" in xdc  # UART pins, reset button
    v = (out / "hwrnn_board.v").read_text()
    assert "MMCME2_BASE" in v and "CLKFBOUT_MULT_F(10.0)" in v and "CLKOUT0_DIVIDE_F(20.0)" in v


def test_build_finds_the_yowasp_tools_next_to_the_interpreter():
    """`.venv/bin/python -m boards build` without an activated venv: the tools pip put next to the
    interpreter are found even when PATH lacks that directory."""
    import os
    import sys

    from boards.build import BOARDS, missing_tools, tool_env

    env = tool_env({"PATH": "/nonexistent"})
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    for board in ("ulx3s", "icebreaker"):
        assert missing_tools(BOARDS[board], {"PATH": "/nonexistent"}) == []
    # a tool that is nowhere is still reported by its variable
    assert missing_tools(BOARDS["ulx3s"], {"PATH": "/nonexistent", "YOSYS": "no-such-yosys"}) == ["YOSYS=no-such-yosys"]


def test_host_crc_equals_the_gateware_crc_definition():
    """The host's table-driven crc16 and amaranth.lib.crc's reference of the gateware's CRC agree."""
    rng = random.Random(7)
    for n in (0, 1, 5, 33, 257, 4096):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert P.crc16(data) == P.CRC.compute(data)


def test_board_family_is_the_devices():
    from boards.top import BOARDS
    from hwrnn.devices import DEVICES

    for spec in BOARDS.values():
        assert spec.family == DEVICES[spec.device].family
