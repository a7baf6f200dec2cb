"""Board-level simulation: the whole board design (UART + framing + core) as Verilog under cocotb,
driven by the host driver (boards.host.BoardLink) through a simulated serial link, checked against
the integer model, with corrupted frames (bad CRC, truncated frames, bad headers, a UART framing
error, bytes during a reply, a lost reply)."""
import pytest

from boards.simulate import run_board_sim
from hwrnn import Folding, LayerConfig, QuantLayer
from sim.runner import simulator_available

TINY = LayerConfig(wbits=2, abits=2, hidden=4, input=3)


def _check(res):
    seq, cor = res.tests["sequence"], res.tests["corrupted_frames"]
    assert res.passed == 2
    assert seq["mismatches"] == [] and seq["baked_steps"] >= 1 and seq["runtime_steps"] >= 4
    assert set(seq["cycles"]) == {seq["latency"]}
    assert seq["status"]["flags"] & 1  # the run-time layer was loaded
    assert cor["mismatches"] == [] and cor["stats"]["steps_recovered"] == 1
    c = cor["status"]
    assert (c["crc_errors"], c["header_errors"], c["timeouts"], c["arg_errors"], c["uart_errors"]) == (4, 3, 5, 2, 1)
    assert c["duplicates"] == 1  # the STEP resent after its corrupted reply was answered, not executed
    assert seq["status"]["duplicates"] == 0


def test_board_sim_icarus(tmp_path):
    why = simulator_available("icarus")
    if why:
        pytest.skip(why)
    res = run_board_sim(QuantLayer.random(TINY, seed=0), Folding(pe=4, simd=4), tmp_path, sim="icarus",
                        divisor=4, steps=10, seed=1)
    _check(res)


@pytest.mark.parametrize("cell_type,fold", [("gru", Folding(pe=4, simd=3)), ("rnn", Folding(pe=3, simd=4))])
def test_board_sim_icarus_other_cells(cell_type, fold, tmp_path):
    """The board design builds any cell: a GRU (two phases, OUT block without c) and a vanilla RNN."""
    why = simulator_available("icarus")
    if why:
        pytest.skip(why)
    cfg = LayerConfig(wbits=2, abits=2, hidden=4, input=3, cell_type=cell_type)
    res = run_board_sim(QuantLayer.random(cfg, seed=0), fold, tmp_path, sim="icarus", divisor=4, steps=10, seed=1)
    _check(res)


@pytest.mark.slow
def test_board_sim_verilator_serial_planes(tmp_path):
    """Verilator builds this design in ~2 min here: slow suite."""
    cfg = LayerConfig(wbits=3, abits=2, hidden=5, input=4)
    res = run_board_sim(QuantLayer.random(cfg, seed=2), Folding(pe=8, simd=3, planes="serial"), tmp_path,
                        sim="verilator", divisor=6, steps=12, seed=2)
    _check(res)
