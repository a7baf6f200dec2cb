"""Each datapath block in the Amaranth simulator against its hwrnn reference function."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from hwrnn import LayerConfig
from hwrnn import formats as fm
from hwrnn.config import ConfigError
from hwrnn.datapath import bitplane_dot, tree_registers
from hwrnn.weight_code import BalancedCode
from rtl_gen.blocks import (ActivationSum, BitPlaneDot, FixedCellUnit, HRequantizer, LookupTable,
                            ScaleBias)


def run_comb(dut, vectors, outputs):
    """Apply each dict of input values and collect the named outputs (combinational blocks)."""
    got = []
    sim = Simulator(dut)

    async def tb(ctx):
        for vec in vectors:
            for name, v in vec.items():
                ctx.set(getattr(dut, name), int(v))
            await ctx.delay(1e-9)
            got.append({o: ctx.get(getattr(dut, o)) for o in outputs})

    sim.add_testbench(tb)
    sim.run()
    return got


def run_pipe(dut, vectors, outputs, latency):
    """Apply a new input vector every cycle; output k is read `latency` clock edges after vector k
    was applied (latency 0: combinational). Checks the block's pipelining as well as its values."""
    outputs = [outputs] if isinstance(outputs, str) else outputs
    if latency == 0:
        return run_comb(dut, vectors, outputs)
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def tb(ctx):
        for t in range(len(vectors) + latency - 1):
            if t < len(vectors):
                for name, v in vectors[t].items():
                    ctx.set(getattr(dut, name), int(v))
            await ctx.tick()
            if t >= latency - 1:
                got.append({o: ctx.get(getattr(dut, o)) for o in outputs})

    sim.add_testbench(tb)
    sim.run()
    return got


def pack(values, width):
    return sum((int(v) & ((1 << width) - 1)) << (width * i) for i, v in enumerate(values))


@pytest.mark.parametrize("per_stage", [None, 1, 3])
@pytest.mark.parametrize("simd,wbits,abits,serial", [(1, 1, 1, False), (7, 4, 2, False), (16, 2, 3, False),
                                                     (5, 8, 8, False), (9, 4, 2, True), (3, 8, 1, True),
                                                     (32, 4, 2, False)])
def test_bitplane_dot_matches_reference(simd, wbits, abits, serial, per_stage):
    rng = np.random.default_rng(simd * 100 + wbits * 10 + abits)
    planes = 1 if serial else wbits
    dut = BitPlaneDot(simd, planes, abits, max_shift=wbits - 1 if serial else 0, levels_per_stage=per_stage)
    assert dut.latency == (0 if per_stage is None else tree_registers(dut.levels, per_stage))
    vecs, want = [], []
    for _ in range(60):
        n = rng.integers(0, 1 << wbits, simd)
        a = rng.integers(0, 1 << abits, simd)
        if serial:
            p = int(rng.integers(0, wbits))
            w = pack((n >> p) & 1, 1)
            vecs.append({"w": w, "a": pack(a, abits), "shift": p})
            want.append(bitplane_dot((n >> p) & 1, a, 1, abits) << p)
        else:
            w = sum(pack((n >> p) & 1, 1) << (p * simd) for p in range(wbits))
            vecs.append({"w": w, "a": pack(a, abits)})
            want.append(bitplane_dot(n, a, wbits, abits))
            assert want[-1] == int(np.dot(n, a))
    # extremes: all ones
    n = np.full(simd, (1 << wbits) - 1)
    a = np.full(simd, (1 << abits) - 1)
    if not serial:
        vecs.append({"w": (1 << (simd * wbits)) - 1, "a": pack(a, abits)})
        want.append(int(np.dot(n, a)))
    got = run_pipe(dut, vecs, ["dot"], dut.latency)
    assert [g["dot"] for g in got] == want


def test_balanced_mac_identity():
    """sum m*a = 2*sum(n*a) - K*sum(a) with the dot from bit planes (hwrnn.weight_code.BalancedCode)."""
    rng = np.random.default_rng(0)
    for wbits in range(1, 9):
        code = BalancedCode(wbits)
        n = rng.integers(0, code.max_code + 1, 50)
        a = rng.integers(0, 16, 50)
        dot = bitplane_dot(n, a, wbits, 4)
        assert int(code.acc_from_planes(dot, a.sum())) == int(np.dot(code.mac_values(n), a))


@pytest.mark.parametrize("per_stage", [None, 1, 3])
@pytest.mark.parametrize("simd,abits", [(1, 1), (6, 3), (32, 2)])
def test_activation_sum(simd, abits, per_stage):
    rng = np.random.default_rng(simd)
    dut = ActivationSum(simd, abits, levels_per_stage=per_stage)
    vals = [rng.integers(0, 1 << abits, simd) for _ in range(30)] + [np.full(simd, (1 << abits) - 1)]
    got = run_pipe(dut, [{"a": pack(v, abits)} for v in vals], ["sum"], dut.latency)
    assert [g["sum"] for g in got] == [int(v.sum()) for v in vals]


@pytest.mark.parametrize("cfg", [LayerConfig(wbits=4, abits=2, hidden=10), LayerConfig(wbits=1, abits=8, hidden=7, z_frac=3, lut_bits=7),
                                 LayerConfig(wbits=8, abits=1, hidden=30, mult_bits=12)])
def test_scale_bias_matches_reference(cfg):
    rng = np.random.default_rng(cfg.wbits)
    aw = fm.acc_width(cfg)
    bound = fm.acc_bound(cfg)
    for scale in (0.05, 0.9, 7.0):
        M, R = fm.scale_shift(cfg, scale)
        B = fm.bias_fixed(cfg, rng.normal(0, 2, 40), R)
        bw = fm.signed_width(int(B.min()), int(B.max()))
        dut = ScaleBias(cfg, aw, fm.unsigned_width(M), bw, R)
        accs = np.concatenate([rng.integers(-bound, bound + 1, 36), [-bound, bound, 0, 1]])
        want = fm.lut_address(cfg, fm.preactivation(accs, M, B, R))
        got = run_pipe(dut, [{"acc": int(a), "bias": int(b), "mult": M} for a, b in zip(accs, B)], "addr",
                       ScaleBias.latency)
        assert [x["addr"] for x in got] == list(want)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_lookup_table_contents(kind):
    cfg = LayerConfig(wbits=2, abits=2, hidden=4, candidate=kind)
    table = fm.candidate_lut(cfg)
    dut = LookupTable(table, cfg.lut_bits)
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def tb(ctx):
        for a in range(len(table)):
            ctx.set(dut.addr, a)
            await ctx.tick()
            got.append(ctx.get(dut.data))

    sim.add_testbench(tb)
    sim.run()
    assert got == list(table)
    if kind == "sigmoid":
        assert table.min() >= 0 and table.max() <= 1 << cfg.gate_frac
    else:
        assert table.min() >= -(1 << cfg.gate_frac) and table.max() <= 1 << cfg.gate_frac


@pytest.mark.parametrize("cfg", [LayerConfig(wbits=2, abits=2, hidden=4),
                                 LayerConfig(wbits=2, abits=2, hidden=4, candidate="tanh", cell="fixed:2.6", gate_frac=7),
                                 LayerConfig(wbits=2, abits=3, hidden=4, cell="fixed:5.5", z_frac=5, gate_frac=10)])
def test_fixed_cell_unit_matches_reference(cfg):
    rng = np.random.default_rng(3)
    G = cfg.gate_frac
    lo, hi = fm.cell_limits(cfg)
    n = 300
    f = rng.integers(0, (1 << G) + 1, n)
    i = rng.integers(0, (1 << G) + 1, n)
    g = rng.integers(-(1 << G) if cfg.candidate == "tanh" else 0, (1 << G) + 1, n)
    c = np.concatenate([rng.integers(lo, hi + 1, n - 4), [lo, hi, lo, hi]])
    f[-4:] = 1 << G
    i[-4:] = 1 << G
    g[-4:] = [-(1 << G) if cfg.candidate == "tanh" else 0, 1 << G, 1 << G, 1 << G]
    dut = FixedCellUnit(cfg)
    cw = cfg.cell_format.width
    vecs = [{"f": a, "i": b, "g": int(d) & ((1 << (G + 2)) - 1) if cfg.candidate == "tanh" else d,
             "c": int(e) & ((1 << cw) - 1)} for a, b, d, e in zip(f, i, g, c)]
    got_c = run_pipe(dut, vecs, "c_new", dut.c_latency)
    got_a = run_pipe(dut, vecs, "c_addr", dut.c_latency + dut.addr_latency)
    want_c = fm.cell_update(cfg, f, c, i, g)
    assert [x["c_new"] for x in got_c] == list(want_c)  # ctx.get returns signed values
    assert [x["c_addr"] for x in got_a] == list(fm.cell_lut_address(cfg, want_c))
    assert want_c.min() >= lo and want_c.max() <= hi


@pytest.mark.parametrize("abits,G", [(1, 8), (2, 8), (4, 6), (8, 10)])
def test_h_requantizer_matches_reference(abits, G):
    cfg = LayerConfig(wbits=2, abits=abits, hidden=4, gate_frac=G)
    rng = np.random.default_rng(abits)
    o = np.concatenate([rng.integers(0, (1 << G) + 1, 100), [0, 1 << G, 1 << G]])
    sc = np.concatenate([rng.integers(0, (1 << G) + 1, 100), [1 << G, 0, 1 << G]])
    got = run_pipe(HRequantizer(cfg), [{"o": a, "sc": b} for a, b in zip(o, sc)], ["h"], HRequantizer.latency)
    want = fm.h_code(cfg, o, sc)
    assert [x["h"] for x in got] == list(want)
    # h is exactly Q_a(o * sc) of the real values
    from hwrnn.quant import activation_codes
    assert list(want) == list(activation_codes(o * sc / 2.0 ** (2 * G), abits))


def test_block_parameters_are_validated():
    with pytest.raises(ConfigError):
        BitPlaneDot(0, 1, 1)
    with pytest.raises(ConfigError):
        LookupTable([0, 1, 2], 2)
    with pytest.raises(ConfigError):
        ActivationSum(4, 0)
