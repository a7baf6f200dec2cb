"""The RTL unit of each axis class (rtl_gen.units) in the Amaranth simulator against the contract
class's reference functions in hwrnn (cell_state, gates, weight_code)."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from hwrnn import LayerConfig
from hwrnn import formats as fm
from hwrnn.cell_state import FORMATS
from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding
from hwrnn.datapath import Geometry, weight_image
from hwrnn.gates import GATE_SETS
from hwrnn.weight_code import WEIGHT_CODES
from hwrnn.config import ConfigError
from hwrnn.gates import gru_h, reset_product, rnn_h
from rtl_gen.units import (CELL_STATE_UNITS, GATE_SET_UNITS, MAC_UNITS, GruResetUnit, GruUpdateUnit, LstmUnit, RnnUnit,
                           gate_set_unit, mac_unit)


def test_every_axis_class_has_an_rtl_unit():
    assert set(CELL_STATE_UNITS) == set(FORMATS)
    assert set(GATE_SET_UNITS) == {gs for gs in GATE_SETS if gs.has_rtl}
    for gs, units in GATE_SET_UNITS.items():
        assert len(units) == len(gs.phases), f"{gs.name}: one unit per phase"
    assert set(MAC_UNITS) == set(WEIGHT_CODES)


@pytest.mark.parametrize("cell,candidate", [("fixed:3.10", "sigmoid"), ("fixed:2.6", "tanh"), ("fp16", "tanh"),
                                            ("e4m3", "sigmoid")])
def test_lstm_unit_matches_the_gate_set_update(cell, candidate):
    cfg = LayerConfig(wbits=2, abits=3, hidden=4, cell=cell, candidate=candidate)
    rng = np.random.default_rng(7)
    n = 40
    top = 1 << cfg.gate_frac
    gates = {"i": rng.integers(0, top + 1, n), "f": rng.integers(0, top + 1, n), "o": rng.integers(0, top + 1, n),
             "g": rng.integers(-top if candidate == "tanh" else 0, top + 1, n)}
    cf = cfg.cell_format
    if cf.signed_word:
        lo, hi = cf.limits
        c = rng.integers(lo, hi + 1, n)
    else:  # float words of moderate values (reserved exponent excluded)
        c = np.array([int(w) for w in rng.integers(0, 1 << cf.width, n)])
        c = np.where(((c >> cf.man_bits) & ((1 << cf.exp_bits) - 1)) == (1 << cf.exp_bits) - 1, 0, c)
    gs = cfg.gate_set
    h_ref, c_ref, _ = gs.update(cfg, gs.tables(cfg), gates, None, c)

    dut = LstmUnit(cfg)
    got_c, got_h = {}, {}
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def tb(ctx):
        for t in range(n + dut.latency):
            if t < n:
                for name in gs.gates:
                    ctx.set(getattr(dut, name), int(gates[name][t]))
                ctx.set(dut.c, int(c[t]))
            await ctx.tick()
            k = t - dut.c_latency + 1
            if 0 <= k < n:
                got_c[k] = ctx.get(dut.c_new)
            k = t - dut.latency + 1
            if 0 <= k < n:
                got_h[k] = ctx.get(dut.h)

    sim.add_testbench(tb)
    sim.run()
    assert [got_c[k] for k in range(n)] == [int(v) for v in c_ref]
    assert [got_h[k] for k in range(n)] == [int(v) for v in h_ref]
    assert dut.latency == sum(gs.stages(cfg).values())


@pytest.mark.parametrize("wbits,abits,hidden,inp,pe,simd,planes,code", [
    (1, 1, 3, 5, 4, 3, "parallel", "balanced"), (4, 2, 5, 6, 8, 4, "parallel", "balanced"),
    (3, 3, 4, 7, 8, 5, "serial", "balanced"), (8, 2, 2, 3, 8, 2, "serial", "balanced"),
    (2, 2, 5, 6, 8, 4, "parallel", "ternary"), (2, 3, 4, 7, 8, 5, "serial", "ternary"),
    (2, 1, 3, 4, 4, 7, "parallel", "pow2_ternary"), (2, 8, 3, 3, 4, 3, "serial", "ternary_mean"),
    (4, 2, 5, 6, 8, 4, "parallel", "exponential"), (3, 3, 4, 7, 8, 5, "parallel", "exponential"),
    (5, 8, 2, 3, 8, 2, "parallel", "exponential")])
def test_mac_unit_matches_the_weight_coding(wbits, abits, hidden, inp, pe, simd, planes, code):
    """One row fold's words through the coding's MAC array: acc per lane = the coding's reference
    ``acc`` (sum of MAC values times activations; padding lanes included: code 0); for the balanced
    code also its plane identity acc_from_planes(sum n*a, sum a)."""
    cfg = LayerConfig(wbits=wbits, abits=abits, hidden=hidden, input=inp, weight_code=code)
    fold = Folding(pe=pe, simd=simd, planes=planes)
    layer = QuantLayer.random(cfg, seed=3)
    g = Geometry(cfg, fold)
    image = weight_image(layer, fold)
    rng = np.random.default_rng(5)
    act = np.zeros(g.padded_columns, np.int64)
    act[:cfg.columns] = rng.integers(0, (1 << abits), cfg.columns)
    rf = g.row_folds - 1  # the last row fold has padding lanes when PE does not divide the rows
    codes = np.zeros((pe, g.padded_columns), np.int64)
    for lane in range(pe):
        r = g.lane_row(rf, lane)
        if r is not None:
            codes[lane, :cfg.columns] = layer.codes[r]
    want = cfg.weight_coding.acc(codes, act)
    if code == "balanced":
        assert list(want) == list(cfg.weight_coding.acc_from_planes(codes @ act, act.sum()))
    assert len(set(want.tolist())) > 1  # the weights exercise the MAC

    dut = mac_unit(cfg, fold)
    words = []
    for cf in range(g.col_folds):
        a_slice = sum(int(v) << (abits * s) for s, v in enumerate(act[cf * simd:(cf + 1) * simd]))
        for p in range(g.plane_steps):
            addr = (rf * g.col_folds + cf) * g.plane_steps + p
            words.append((image[addr], a_slice, cf == 0 and p == 0, cf == g.col_folds - 1 and p == g.plane_steps - 1, p))
    got = {}
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def tb(ctx):
        for t in range(len(words) + dut.latency + 2):
            if t < len(words):
                w, a, first, last, p = words[t]
                ctx.set(dut.w, w)
                ctx.set(dut.a, a)
                ctx.set(dut.first, int(first))
                ctx.set(dut.last, int(last))
                ctx.set(dut.plane, p)
                ctx.set(dut.valid, 1)
            else:
                ctx.set(dut.valid, 0)
            await ctx.tick()
            if ctx.get(dut.done):
                got["t"] = t
                got["acc"] = [ctx.get(dut.acc[lane]) for lane in range(pe)]

    sim.add_testbench(tb)
    sim.run()
    assert got["t"] == len(words) - 1 + dut.latency - 1
    assert got["acc"] == [int(v) for v in want]
    assert max(abs(int(v)) for v in want) <= fm.acc_bound(cfg)


def _run_unit(dut, inputs: dict, n: int, outputs: dict) -> dict:
    """Feed n samples of each input (one per cycle); collect each output (name -> latency) per sample."""
    got = {name: {} for name in outputs}
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def tb(ctx):
        for t in range(n + max(outputs.values())):
            if t < n:
                for name, vals in inputs.items():
                    ctx.set(getattr(dut, name), int(vals[t]))
            await ctx.tick()
            for name, lat in outputs.items():
                k = t - lat + 1
                if 0 <= k < n:
                    got[name][k] = ctx.get(getattr(dut, name))

    sim.add_testbench(tb)
    sim.run()
    return {name: [v[k] for k in range(n)] for name, v in got.items()}


@pytest.mark.parametrize("abits,candidate", [(1, "sigmoid"), (2, "tanh"), (3, "sigmoid"), (8, "tanh")])
def test_gru_and_rnn_units_match_the_gate_set_references(abits, candidate):
    """GRU phase 1 (rh = reset_product, u passed to the store), phase 2 (gru_h) and the RNN unit
    (rnn_h), at the extremes of every input (gates 0 and 2**G, tanh -2**G, h 0 and Ka) and at random."""
    rng = np.random.default_rng(abits)
    n = 60
    for cell_type in ("gru", "rnn"):
        cfg = LayerConfig(wbits=2, abits=abits, hidden=4, cell_type=cell_type, candidate=candidate)
        top, Ka = 1 << cfg.gate_frac, (1 << abits) - 1
        lo_g = -top if candidate == "tanh" else 0
        gate = np.concatenate([[0, top, 0, top, 0, top], rng.integers(0, top + 1, n - 6)])
        g = np.concatenate([[lo_g, top, top, lo_g, lo_g, 0], rng.integers(lo_g, top + 1, n - 6)])
        h = np.concatenate([[0, Ka, Ka, 0, Ka, Ka], rng.integers(0, Ka + 1, n - 6)])
        if cell_type == "rnn":
            dut = gate_set_unit(cfg)
            assert isinstance(dut, RnnUnit) and dut.latency == sum(cfg.gate_set.stages(cfg).values())
            got = _run_unit(dut, {"g": g}, n, {"h": dut.latency})
            assert got["h"] == [int(v) for v in rnn_h(cfg, g)]
            continue
        r = rng.permutation(gate)
        p1 = gate_set_unit(cfg, phase=0)
        assert isinstance(p1, GruResetUnit) and p1.latency == sum(cfg.gate_set.stages(cfg, 0).values())
        got = _run_unit(p1, {"u": gate, "r": r, "h_old": h}, n, {"h": p1.latency, "u_new": p1.write_latency["u"]})
        assert got["h"] == [int(v) for v in reset_product(cfg, r, h)]
        assert got["u_new"] == [int(v) for v in gate]
        p2 = gate_set_unit(cfg, phase=1)
        assert isinstance(p2, GruUpdateUnit) and p2.latency == sum(cfg.gate_set.stages(cfg, 1).values())
        got = _run_unit(p2, {"g": g, "u": gate, "h_old": h}, n, {"h": p2.latency})
        assert got["h"] == [int(v) for v in gru_h(cfg, gate, g, h)]


def test_a_cell_type_without_rtl_units_is_refused():
    cfg = LayerConfig(wbits=2, abits=2, hidden=4, cell_type="gru_ott")
    with pytest.raises(ConfigError, match="gru_ott has no RTL units"):
        gate_set_unit(cfg)
