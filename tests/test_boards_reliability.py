"""boards/ under a hostile tester (issue 18): the host driver gives up with one clear error on a
line that never stops sending (deadlines on the transport's clock), stale, replayed and duplicated
frames change nothing (sequence numbers on both sides of the link), and the CLI refuses bad
numbers with one line before it touches a board or creates a folder.

No test here measures time: a babbling port runs on a fake clock that advances with every byte
read, and it raises if the driver reads far beyond any deadline (it "never gave up")."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from boards import protocol as P
from boards.host import BoardLink, LinkError, Transport, run_sequence
from boards.link import LinkTop
from hwrnn import Folding, LayerConfig, QuantLayer

sys.path.insert(0, str(Path(__file__).parent))
from board_fixtures.emulator import EmulatedBoard  # noqa: E402
from board_fixtures.link_pins import exchange  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = LayerConfig(wbits=2, abits=2, hidden=4, input=3)
TINY_FOLD = Folding(pe=4, simd=4)


class NeverGaveUp(AssertionError):
    pass


class Babbler(Transport):
    """A port that answers every read at once with ``fill`` bytes (or repeats ``frame``), forever,
    on a fake clock: each byte read takes one byte time. Raises NeverGaveUp after ``cap`` bytes,
    far more than any deadline of the tests allows (about 100 s of line time)."""

    def __init__(self, fill=0x55, frame=b"", baud=115200.0, cap=1_200_000):
        self.pattern = bytes(frame) or bytes([fill])
        self.baud = baud
        self.now = 0.0
        self.sent = 0
        self.cap = cap
        self.writes = 0

    def clock(self) -> float:
        return self.now

    def write(self, data: bytes) -> None:
        self.writes += 1

    def read(self, n: int, timeout: float) -> bytes:
        if self.sent > self.cap:
            raise NeverGaveUp(f"the driver read {self.sent} bytes of a babbling line and never gave up")
        out = bytes(self.pattern[(self.sent + k) % len(self.pattern)] for k in range(n))
        self.sent += n
        self.now += n * 10.0 / self.baud
        return out


def tiny_layer():
    return QuantLayer.random(TINY, seed=0)


def one_line(capsys, prefix):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix), err
    assert "Traceback" not in err[0]
    return err[0]


# ---- 1. deadlines: a line that keeps sending ------------------------------------------------------

@pytest.mark.parametrize("fill", [0x55, P.SYNC])
def test_connect_gives_up_on_a_babbling_line(fill):
    link = BoardLink(Babbler(fill), timeout=0.05, retries=2)
    with pytest.raises(LinkError) as ei:
        link.connect()
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("fill", [0x55, P.SYNC])
@pytest.mark.parametrize("call", ["status", "step", "read_out", "reset_state", "drain"])
def test_every_call_gives_up_when_the_line_starts_babbling(fill, call):
    board = EmulatedBoard(tiny_layer(), TINY_FOLD)
    link = BoardLink(board, timeout=0.05, quiet=0.0, retries=2)
    link.connect()
    link.t = Babbler(fill, baud=board.baud)  # the board goes mad
    args = {"step": ([1, 2, 3],)}.get(call, ())
    with pytest.raises(LinkError) as ei:
        getattr(link, call)(*args)
    assert "\n" not in str(ei.value)


def test_a_line_repeating_a_stale_reply_forever_is_given_up():
    """Valid frames that answer nothing the driver asked (an old STATUS reply, over and over)."""
    board = EmulatedBoard(tiny_layer(), TINY_FOLD)
    link = BoardLink(board, timeout=0.05, quiet=0.0, retries=2)
    link.connect()
    stale = bytes(board.last_reply)  # the reply to connect()'s STATUS
    link.t = Babbler(frame=stale, baud=board.baud)
    with pytest.raises(LinkError):
        link.status()


def test_cli_run_gives_up_on_a_babbling_port(monkeypatch, tmp_path, capsys):
    from boards import __main__ as cli
    from boards import host

    ck = tmp_path / "layer.npz"
    tiny_layer().save(ck)
    monkeypatch.setattr(host, "SerialTransport", lambda port, baud: Babbler(P.SYNC, baud=baud))
    rc = cli.main(["run", "--port", "babbler", "--checkpoint", str(ck), "--steps", "3", "--timeout", "0.05"])
    assert rc == 3
    one_line(capsys, "boards run: link error: ")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("fill", [0x55, P.SYNC])
def test_cli_run_returns_on_a_babbling_pty(fill, tmp_path):
    """The issue's reproduction: `boards run` on a real (pseudo) serial port fed bytes forever, with
    pyserial and the monotonic clock. It must return (the subprocess timeout only guards a hang)."""
    import tty

    ck = tmp_path / "layer.npz"
    tiny_layer().save(ck)
    master, slave = os.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def babble():
        os.set_blocking(master, False)
        chunk = bytes([fill]) * 64
        while not stop.is_set():
            for op in (lambda: os.write(master, chunk), lambda: os.read(master, 4096)):
                try:
                    op()
                except (BlockingIOError, OSError):
                    pass
            stop.wait(0.0005)

    th = threading.Thread(target=babble, daemon=True)
    th.start()
    try:
        r = subprocess.run([sys.executable, "-m", "boards", "run", "--port", os.ttyname(slave), "--checkpoint",
                            str(ck), "--steps", "3", "--timeout", "0.05", "--retries", "1"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        stop.set()
        th.join()
        os.close(master)
        os.close(slave)
    assert r.returncode == 3, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("boards run: link error: "), r.stderr


# ---- 2. stale, replayed and duplicated frames ------------------------------------------------------

@pytest.fixture
def emulated():
    layer = tiny_layer()
    board = EmulatedBoard(layer, TINY_FOLD)
    return layer, board, BoardLink(board, timeout=0.01, quiet=0.0, retries=2)


def xs_of(n, seed=3):
    return np.random.default_rng(seed).integers(0, 4, (n, TINY.input))


def test_a_replayed_step_reply_is_dropped(emulated):
    layer, board, link = emulated

    def faults(t, lk):
        if t == 2:
            board.replay_before_next_reply = True  # the reply of step 1 arrives again before step 2's
    res = run_sequence(link, layer, xs_of(6), on_step=faults)
    assert res.ok, res.mismatches
    assert board.steps == 6
    assert link.stats.stale >= 1


def test_a_stale_nak_is_not_the_answer_to_a_new_request(emulated):
    layer, board, link = emulated
    link.connect()
    board.stale_nak_before_next_reply = P.NAK_ARG  # for connect()'s STATUS, arriving before the next reply
    link.load_word(P.LOAD_WEIGHT, 0, 0)  # a good LOAD: its own reply answers it
    assert board.loads == [(P.LOAD_WEIGHT, 0, 0)]

    def faults(t, lk):
        if t in (1, 3):
            board.stale_nak_before_next_reply = P.NAK_CRC  # an old NAK before a STEP reply
    res = run_sequence(link, layer, xs_of(5), load=False, on_step=faults)
    assert res.ok, res.mismatches
    assert board.steps == 5  # no STEP was resent because of a NAK that answered another request
    assert link.stats.stale >= 3 and link.stats.naks == {}


def test_a_duplicated_step_request_steps_once(emulated):
    layer, board, link = emulated

    def faults(t, lk):
        if t in (1, 2):
            board.duplicate_next_request = True  # the same STEP frame arrives twice
    res = run_sequence(link, layer, xs_of(5), on_step=faults)
    assert res.ok, res.mismatches
    assert board.steps == 5 and board.duplicates == 2


def test_a_lost_step_reply_is_recovered_by_resending_the_same_frame(emulated):
    layer, board, link = emulated

    def faults(t, lk):
        if t == 1:
            board.drop_next_reply = True
        if t == 3:
            board.corrupt_next_reply = 8
    res = run_sequence(link, layer, xs_of(5), on_step=faults)
    assert res.ok and board.steps == 5
    assert link.stats.steps_recovered == 2 and board.duplicates == 2
    assert link.status().duplicates == 2


def test_deadlines_fit_the_line_time():
    """On a line where bytes take their time (the emulator's fake line clock) and the slack is a
    few byte times, as in the board simulation: every reply fits its deadline, INFO included
    (whose length the driver does not know before it), and lost replies are still recovered."""
    layer = tiny_layer()
    board = EmulatedBoard(layer, TINY_FOLD, line_time=True)
    byte_s = 10 / board.baud
    link = BoardLink(board, timeout=8 * byte_s, quiet=2 * byte_s, retries=2)

    def faults(t, lk):
        if t == 1:
            board.drop_next_reply = True
        if t == 2:
            board.corrupt_next_reply = 9
    res = run_sequence(link, layer, xs_of(4), on_step=faults)
    assert res.ok and board.steps == 4
    assert link.stats.reply_errors == 2 and link.stats.steps_recovered == 2 and link.stats.resent == 2


def test_link_gateware_does_not_execute_a_duplicate_step():
    """LinkTop on its pins: the same STEP frame twice gives the same reply twice and one step; a new
    sequence number steps again; STATUS counts the duplicate."""
    layer = tiny_layer()
    top = LinkTop(layer, TINY_FOLD, clk_hz=1_000_000, divisor=4, timeout_cycles=256)
    step = P.encode_frame(P.STEP, b"\x39", seq=7)
    step_new = P.encode_frame(P.STEP, b"\x39", seq=8)
    replies = exchange(top, [step, step, P.encode_frame(P.STATUS, seq=9), step_new,
                             P.encode_frame(P.STATUS, seq=10)], divisor=4)
    assert replies[0] == replies[1]
    first, again = P.decode_frame(replies[0]), P.decode_frame(replies[3])
    assert (first.type, first.seq, again.seq) == (P.STEP | P.REPLY, 7, 8)
    st1, st2 = (P.Status.unpack(P.decode_frame(r).payload) for r in (replies[2], replies[4]))
    assert (st1.steps, st1.duplicates, st1.frames_ok) == (1, 1, 2)  # the STEP and this STATUS
    assert (st2.steps, st2.duplicates) == (2, 1)
    assert first.payload != again.payload  # the second step moved the state on


def test_link_gateware_echoes_the_sequence_number():
    """Every reply and NAK carries its request's SEQ (0 when the frame was cut before its SEQ)."""
    layer = tiny_layer()
    top = LinkTop(layer, TINY_FOLD, clk_hz=1_000_000, divisor=4, timeout_cycles=256)
    bad_crc = bytearray(P.encode_frame(P.RESET_STATE, seq=0x42))
    bad_crc[-1] ^= 1
    reqs = [P.encode_frame(P.INFO, seq=0x11), bytes(bad_crc), P.encode_frame(0x33, seq=0x43),
            P.encode_frame(P.LOAD, P.encode_load(top.info, 3, 0, 0), seq=0x44), bytes([P.SYNC, P.STEP]),
            P.encode_frame(P.READ_OUT, seq=0xFE)]
    got = [P.decode_frame(r) for r in exchange(top, reqs, divisor=4)]
    assert [(f.type, f.seq) for f in got] == [(P.INFO | P.REPLY, 0x11), (P.NAK, 0x42), (P.NAK, 0x43), (P.NAK, 0x44),
                                              (P.NAK, 0), (P.READ_OUT | P.REPLY, 0xFE)]
    assert [f.payload[0] for f in got[1:5]] == [P.NAK_CRC, P.NAK_HEADER, P.NAK_ARG, P.NAK_TIMEOUT]


# ---- 3 and 4. the CLI refuses with one line --------------------------------------------------------

@pytest.fixture
def cli_run(monkeypatch, tmp_path):
    """main(["run", ...]) against the emulator, recording whether the port was opened."""
    from boards import __main__ as cli
    from boards import host

    layer = tiny_layer()
    ck = tmp_path / "layer.npz"
    layer.save(ck)
    opened = []

    def port(name, baud):
        opened.append(name)
        return EmulatedBoard(layer, TINY_FOLD)
    monkeypatch.setattr(host, "SerialTransport", port)

    def run(*extra):
        return cli.main(["run", "--port", "emulated", "--checkpoint", str(ck), *map(str, extra)])
    run.opened = opened
    run.tmp = tmp_path
    return run


def write_seq(tmp_path, value, name="x.json"):
    p = tmp_path / name
    if name.endswith(".npy"):
        np.save(p, value, allow_pickle=True)
    else:
        p.write_text(json.dumps(value))
    return p


@pytest.mark.parametrize("extra, words", [
    (["--retries", "-1"], "--retries"),
    (["--steps", "0"], "--steps"),
    (["--steps", "-3"], "--steps"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--baud", "0"], "--baud"),
])
def test_cli_run_refuses_bad_numbers(cli_run, capsys, extra, words):
    assert cli_run(*extra) == 2
    line = one_line(capsys, "boards run: error: ")
    assert words in line
    assert cli_run.opened == []  # refused before the port was opened


@pytest.mark.parametrize("value, words", [
    ([[0, 1, 4], [1, 1, 1]], "0..3"),  # a code beyond abits 2
    ([[0, -1, 2]], "0..3"),
    ([[0.5, 1, 2], [1, 1, 1]], "integer"),  # floats were truncated and passed
    ([[1.0, 1, 2]], "integer"),
    ([[{"a": 1}, 1, 2]], "integer"),  # objects: TypeError
    ([{"x": [1, 2, 3]}], "integer"),
    ([[1, 2], [1, 2, 3]], "--sequence"),  # ragged
    ([[1, 2, 3, 0]], "3"),  # a row of the wrong width
    ([], "no steps"),
    ("text", "--sequence"),
    ([[True, False, True]], "integer"),
])
def test_cli_run_refuses_a_bad_sequence_before_the_board(cli_run, capsys, value, words):
    p = write_seq(cli_run.tmp, value)
    assert cli_run("--sequence", p) == 2
    line = one_line(capsys, "boards run: error: ")
    assert words in line
    assert cli_run.opened == []


@pytest.mark.parametrize("value", [np.array([[0.0, 1.0, 2.0]]), np.array([[1, 2, 9]]),
                                   np.array([[{"a": 1}, 1, 2]], dtype=object)])
def test_cli_run_refuses_a_bad_npy_sequence(cli_run, capsys, value):
    p = write_seq(cli_run.tmp, value, "x.npy")
    assert cli_run("--sequence", p) == 2
    one_line(capsys, "boards run: error: ")
    assert cli_run.opened == []


def test_cli_run_accepts_a_good_sequence(cli_run, capsys):
    p = write_seq(cli_run.tmp, [[0, 1, 2], [3, 3, 0]])
    assert cli_run("--sequence", p) == 0
    assert "PASS: 2 steps" in capsys.readouterr().out
    p = write_seq(cli_run.tmp, np.array([[0, 1, 2]], dtype=np.uint8), "x.npy")
    assert cli_run("--sequence", p) == 0


BUILD = ["build", "--board", "icebreaker", "--wbits", "2", "--abits", "2", "--hidden", "4", "--input", "3",
         "--pe", "4", "--simd", "4", "--no-tools"]


@pytest.mark.parametrize("extra, words", [
    (["--baud", "0"], "baud"),
    (["--baud", "-9600"], "baud"),
    (["--baud", "6000000"], "baud"),  # fewer than 4 cycles per bit at 12 MHz
    (["--frame-timeout", "1e9"], "frame timeout"),  # more cycles than INFO's u32 holds
    (["--frame-timeout", "0"], "--frame-timeout"),
    (["--frame-timeout", "-1"], "--frame-timeout"),
    (["--frame-timeout", "nan"], "--frame-timeout"),
    (["--frame-timeout", "inf"], "--frame-timeout"),
])
def test_cli_build_refuses_bad_link_options_before_creating_anything(tmp_path, capsys, extra, words):
    from boards.__main__ import main

    out = tmp_path / "deep" / "b"
    assert main([*BUILD, *extra, "-o", str(out)]) == 2
    line = one_line(capsys, "boards: error: ")
    assert words in line
    assert not (tmp_path / "deep").exists()


def test_cli_build_accepts_a_long_frame_timeout_that_fits(tmp_path):
    from boards.__main__ import main

    out = tmp_path / "b"
    assert main([*BUILD, "--frame-timeout", "300", "-o", str(out)]) == 0  # 3.6e9 cycles at 12 MHz
    rep = json.loads((out / "report.json").read_text())
    assert rep["frame_timeout_cycles"] == 3_600_000_000


@pytest.mark.parametrize("extra, words", [(["--steps", "0"], "--steps"), (["--steps", "-1"], "--steps"),
                                          (["--divisor", "2"], "--divisor")])
def test_cli_sim_refuses_bad_numbers(monkeypatch, tmp_path, capsys, extra, words):
    import boards.simulate
    from boards.__main__ import main

    def reached(*a, **k):
        raise AssertionError("the simulation was started")
    monkeypatch.setattr(boards.simulate, "run_board_sim", reached)
    assert main(["sim", "--wbits", "2", "--abits", "2", "--hidden", "4", "--input", "3", "--work",
                 str(tmp_path / "w"), *extra]) == 2
    assert words in one_line(capsys, "boards sim: error: ")
    assert not (tmp_path / "w").exists()


def test_board_link_refuses_bad_settings():
    board = EmulatedBoard(tiny_layer(), TINY_FOLD)
    for kw in ({"retries": -1}, {"retries": 1.5}, {"timeout": 0}, {"timeout": float("nan")}, {"quiet": -1}):
        with pytest.raises(ValueError):
            BoardLink(board, **kw)
