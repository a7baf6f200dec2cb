"""The whole core (every cell type with RTL units: LSTM, GRU, vanilla RNN) in the Amaranth simulator
against the integer model: every h_t and c_t equal, cycles per step equal to hwrnn.datapath.latency, under random stalls, state resets and
run-time weight loading."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from hwrnn import Folding, LayerConfig, QuantLayer
from hwrnn.datapath import bias_image, latency, weight_image
from rtl_gen.core import LOAD_BIAS, LOAD_MULT, LOAD_WEIGHT, LstmCore
from hwrnn.integer_model import IntegerLSTM


def unpack(v, width, n, signed=False):
    out = [(v >> (width * j)) & ((1 << width) - 1) for j in range(n)]
    if signed:
        out = [x - (1 << width) if x >> (width - 1) else x for x in out]
    return out


def pack(values, width):
    return sum((int(v) & ((1 << width) - 1)) << (width * j) for j, v in enumerate(values))


def run_core(layer, fold, script, seed=0, stall=0.0, weights="memory", w_stall=0.0):
    """script: list of ("x", codes) | ("reset",) | ("load", layer2).
    Returns a list of (h, c, measured cycles, last_cycles output, w-stream stall cycles)."""
    cfg = layer.cfg
    dut = LstmCore(layer, fold, weights=weights)
    w_stalls = [0]  # cycles in which the core wanted a weight word and the w stream had none
    rng = np.random.default_rng(seed)
    results = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    cw = dut.cell_width

    async def tb(ctx):
        for item in script:
            if item[0] == "reset":
                ctx.set(dut.reset_state, 1)
                await ctx.tick()
                ctx.set(dut.reset_state, 0)
                continue
            if item[0] == "load":
                new = item[1]
                words = [(LOAD_WEIGHT, a, w) for a, w in enumerate(weight_image(new, fold))]
                bw = dut.bias_w
                words += [(LOAD_BIAS, a, pack(row, bw)) for a, row in enumerate(bias_image(new, fold))]
                words += [(LOAD_MULT, 0, new.mult)]
                for sel, addr, data in words:
                    ctx.set(dut.load.payload, {"sel": sel, "addr": addr, "data": data})
                    ctx.set(dut.load.valid, 1)
                    await ctx.tick().until(dut.load.ready)
                ctx.set(dut.load.valid, 0)
                continue
            while rng.random() < stall:
                await ctx.tick()
            ctx.set(dut.x.payload, pack(item[1], cfg.abits))
            ctx.set(dut.x.valid, 1)
            await ctx.tick().until(dut.x.ready)
            ctx.set(dut.x.valid, 0)
            cycles = 1  # we are one cycle past the cycle in which x was accepted
            while not ctx.get(dut.out.valid):
                await ctx.tick()
                cycles += 1
            # backpressure: hold ready low for a while
            while rng.random() < stall:
                await ctx.tick()
                assert ctx.get(dut.out.valid)
            h = unpack(ctx.get(dut.out.payload.h), cfg.abits, cfg.hidden)
            c = (unpack(ctx.get(dut.out.payload.c), cw, cfg.hidden, signed=cfg.cell_format.kind == "fixed")
                 if cfg.gate_set.has_cell_state else None)
            results.append((h, c, cycles, ctx.get(dut.last_cycles), w_stalls[0]))
            w_stalls[0] = 0
            ctx.set(dut.out.ready, 1)
            await ctx.tick()
            ctx.set(dut.out.ready, 0)

    if weights == "stream":
        words = weight_image(layer, fold)
        wrng = np.random.default_rng(seed + 1)

        async def feeder(ctx):
            idx = 0
            while True:
                valid = wrng.random() >= w_stall
                ctx.set(dut.w.valid, valid)
                ctx.set(dut.w.payload, words[idx])
                _, _, ready, v = await ctx.tick().sample(dut.w.ready, dut.w.valid)
                if ready and v:
                    idx = (idx + 1) % len(words)
                elif ready:
                    w_stalls[0] += 1

        sim.add_testbench(feeder, background=True)
    sim.add_testbench(tb)
    sim.run()
    return results


CASES = [
    # (wbits, abits, hidden, input, pe, simd, planes, extra)
    (2, 2, 8, 5, 8, 4, "parallel", {}),
    (4, 2, 13, 7, 12, 5, "serial", {}),
    (1, 1, 9, 3, 4, 1, "parallel", {}),
    (8, 8, 6, 11, 8, 3, "serial", {}),
    (3, 4, 10, 10, 16, 20, "parallel", {"candidate": "tanh", "init_state": "half"}),
    (2, 3, 5, 2, 20, 7, "parallel", {"cell": "fixed:2.8", "gate_frac": 6}),
    (3, 2, 7, 5, 8, 4, "parallel", {"cell": "fp16"}),
    (4, 4, 6, 6, 12, 5, "serial", {"cell": "bf16", "candidate": "tanh"}),
    (2, 2, 9, 4, 8, 3, "parallel", {"cell": "e4m3", "init_state": "half"}),
    # GRU (two phases: u, r over [x; h], then g over [x; rh]) and the vanilla RNN
    (2, 2, 8, 5, 4, 4, "parallel", {"cell_type": "gru"}),
    (3, 3, 7, 4, 6, 3, "serial", {"cell_type": "gru", "candidate": "tanh", "init_state": "half"}),
    (1, 1, 5, 3, 2, 8, "parallel", {"cell_type": "gru"}),
    (4, 2, 6, 6, 10, 5, "parallel", {"cell_type": "gru", "candidate": "tanh"}),
    (2, 2, 9, 4, 4, 5, "parallel", {"cell_type": "rnn"}),
    (3, 2, 6, 3, 3, 2, "serial", {"cell_type": "rnn", "candidate": "tanh", "init_state": "half"}),
    # Ott et al.'s weight codes
    (2, 2, 8, 5, 8, 4, "parallel", {"weight_code": "ternary"}),
    (2, 3, 7, 6, 12, 5, "serial", {"weight_code": "pow2_ternary", "cell_type": "gru"}),
    (2, 2, 6, 4, 8, 3, "parallel", {"weight_code": "ternary_mean", "candidate": "tanh"}),
    (4, 2, 8, 5, 8, 4, "parallel", {"weight_code": "exponential"}),
    (3, 4, 6, 7, 4, 6, "parallel", {"weight_code": "exponential", "cell_type": "rnn", "cell": "fp16"}),
    (5, 1, 5, 3, 4, 3, "parallel", {"weight_code": "exponential", "cell_type": "gru"}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[7].get('cell_type', 'lstm')}-{c[7].get('weight_code', 'balanced')}-W{c[0]}A{c[1]}H{c[2]}X{c[3]}PE{c[4]}S{c[5]}{c[6][0]}")
def test_core_matches_integer_model(case):
    wbits, abits, hidden, inp, pe, simd, planes, extra = case
    cfg = LayerConfig(wbits=wbits, abits=abits, hidden=hidden, input=inp, **extra)
    fold = Folding(pe=pe, simd=simd, planes=planes)
    layer = QuantLayer.random(cfg, seed=hidden)
    rng = np.random.default_rng(1)
    xs = rng.integers(0, 1 << abits, (6, inp))
    got = run_core(layer, fold, [("x", x) for x in xs], seed=2, stall=0.3)
    _, taps = IntegerLSTM(layer).run(xs)
    lat = latency(cfg, fold)
    for t, (h, c, cycles, reported, _) in enumerate(got):
        assert h == list(taps[t]["h"]), f"h differs at step {t}"
        if cfg.gate_set.has_cell_state:
            assert c == list(taps[t]["c"]), f"c differs at step {t}"
        assert cycles == lat == reported, f"step {t}: {cycles} cycles measured, {reported} reported, {lat} predicted"


def test_reset_state_mid_sequence_and_runtime_load():
    cfg = LayerConfig(wbits=2, abits=2, hidden=6, input=4)
    fold = Folding(pe=8, simd=3)
    a, b = QuantLayer.random(cfg, seed=1), QuantLayer.random(cfg, seed=2)
    rng = np.random.default_rng(5)
    xs = rng.integers(0, 4, (6, 4))
    script = [("x", xs[0]), ("x", xs[1]), ("reset",), ("x", xs[2]), ("x", xs[3]),
              ("load", b), ("reset",), ("x", xs[4]), ("x", xs[5])]
    got = run_core(a, fold, script, stall=0.2)
    ia, ib = IntegerLSTM(a), IntegerLSTM(b)
    want = [t["h"] for t in ia.run(xs[0:2])[1]] + [t["h"] for t in ia.run(xs[2:4])[1]] + \
           [t["h"] for t in ib.run(xs[4:6])[1]]
    assert [g[0] for g in got] == [list(w) for w in want]
    want_c = [t["c"] for t in ia.run(xs[0:2])[1]] + [t["c"] for t in ia.run(xs[2:4])[1]] + \
             [t["c"] for t in ib.run(xs[4:6])[1]]
    assert [g[1] for g in got] == [list(w) for w in want_c]
    # the loaded weights really change the result (so the load path is exercised)
    assert [list(t["c"]) for t in ia.run(xs[4:6])[1]] != [list(w) for w in want_c[4:6]]


@pytest.mark.parametrize("planes", ["parallel", "serial"])
def test_streamed_weights_mode(planes):
    """Weights from the w stream with random gaps: results equal, and each cycle without a word
    adds exactly one cycle to the step."""
    cfg = LayerConfig(wbits=3, abits=2, hidden=7, input=5)
    fold = Folding(pe=8, simd=4, planes=planes)
    layer = QuantLayer.random(cfg, seed=7)
    xs = np.random.default_rng(3).integers(0, 4, (5, 5))
    got = run_core(layer, fold, [("x", x) for x in xs], seed=4, stall=0.2, weights="stream", w_stall=0.3)
    _, taps = IntegerLSTM(layer).run(xs)
    lat = latency(cfg, fold)
    assert sum(g[4] for g in got) > 0  # the gaps really happened
    for t, (h, c, cycles, reported, stalls) in enumerate(got):
        assert h == list(taps[t]["h"]) and c == list(taps[t]["c"])
        assert cycles == reported == lat + stalls
