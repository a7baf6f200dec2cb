"""Stacks (hwrnn.stack): the contract's checks, the checkpoint, the integer model of stacked and
bidirectional layers, and the RTL stack in the Amaranth simulator: every layer's h_t equal to the
integer model and every hand-over at the cycle hwrnn.stack.stack_schedule predicts."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from hwrnn import Folding, LayerConfig, QuantLayer
from hwrnn.checkpoint import CheckpointError
from hwrnn.config import ConfigError
from hwrnn.datapath import latency
from hwrnn.integer_model import IntegerLSTM
from hwrnn.stack import (IntegerStack, Schedule, Stack, bidirectional_first_output, bidirectional_stack_cycles,
                         first_output_latency, load_stack, save_stack, stack_latencies, stack_schedule, steady_period)
from rtl_gen.stack import StackCore


def _unpack(v, width, n):
    return [(v >> (width * j)) & ((1 << width) - 1) for j in range(n)]


def test_stack_contract_refusals():
    a = LayerConfig(wbits=2, abits=2, hidden=6, input=4)
    with pytest.raises(ConfigError, match="layer 1 has input 5, but layer 0 outputs 6"):
        Stack.random([a, LayerConfig(wbits=2, abits=2, hidden=3, input=5)])
    with pytest.raises(ConfigError, match="layer 1 has abits 3, layer 0 2"):
        Stack.random([a, LayerConfig(wbits=2, abits=3, hidden=3, input=6)])
    with pytest.raises(ConfigError, match="layer 1 has input 6, but layer 0 outputs 12"):
        Stack.random([a, LayerConfig(wbits=2, abits=2, hidden=3, input=6)], bidirectional=[True, False])
    with pytest.raises(ConfigError, match="at least one layer"):
        Stack([])


def test_integer_stack_is_the_layers_in_turn_and_the_backward_direction_reversed():
    c0 = LayerConfig(wbits=2, abits=2, hidden=5, input=3)
    c1 = LayerConfig(wbits=3, abits=2, hidden=4, input=10, cell_type="gru")
    c2 = LayerConfig(wbits=2, abits=2, hidden=3, input=8, weight_code="ternary")
    stack = Stack.random([c0, c1, c2], bidirectional=[True, True, False], seed=4)
    xs = np.random.default_rng(0).integers(0, 4, (7, 3))
    outs = IntegerStack(stack).run(xs)
    assert [o.shape for o in outs] == [(7, 10), (7, 8), (7, 3)]
    fw, bw = stack.layers[0].directions
    h_fw = np.stack([t["h"] for t in IntegerLSTM(fw).run(xs)[1]])
    h_bw = np.stack([t["h"] for t in IntegerLSTM(bw).run(xs[::-1])[1]])[::-1]
    assert np.array_equal(outs[0], np.concatenate([h_fw, h_bw], axis=1))
    last = np.stack([t["h"] for t in IntegerLSTM(stack.layers[2].directions[0]).run(outs[1])[1]])
    assert np.array_equal(outs[2], last)


def test_integer_stack_steps_in_windows_with_the_state_carried():
    """IntegerStack.step over a batch, fed in two windows with the states carried, equals run on each
    sequence; a stack with a bidirectional layer and a wrong state list are refused in one line."""
    c0 = LayerConfig(wbits=2, abits=2, hidden=5, input=3, cell_type="gru")
    c1 = LayerConfig(wbits=4, abits=2, hidden=4, input=5, weight_code="exponential")
    stack = Stack.random([c0, c1], seed=7)
    xs = np.random.default_rng(1).integers(0, 4, (3, 9, 3))  # [B, T, X]
    model = IntegerStack(stack)
    states, outs = model.initial_state(3), []
    for window in (range(0, 4), range(4, 9)):
        for t in window:
            states, hs = model.step(xs[:, t], states)
            outs.append(hs)
    for b in range(3):
        for l, ref in enumerate(model.run(xs[b])):
            assert np.array_equal(np.stack([o[l][b] for o in outs]), ref)
    with pytest.raises(ValueError, match="2 layers need 2 states, got 1"):
        model.step(xs[:, 0], states[:1])
    bidir = IntegerStack(Stack.random([c0, LayerConfig(wbits=2, abits=2, hidden=4, input=5)], bidirectional=[False, True]))
    with pytest.raises(ConfigError, match="cannot be stepped"):
        bidir.initial_state(1)


def test_stack_checkpoint_round_trip_and_refusals(tmp_path):
    c0 = LayerConfig(wbits=2, abits=2, hidden=5, input=3)
    c1 = LayerConfig(wbits=4, abits=2, hidden=4, input=10, weight_code="exponential")
    stack = Stack.random([c0, c1], bidirectional=[True, False], seed=1)
    path = tmp_path / "s.npz"
    save_stack(stack, path)
    back = load_stack(path)
    assert [layer.bidirectional for layer in back.layers] == [True, False]
    for a, b in zip(stack.layers, back.layers):
        for qa, qb in zip(a.directions, b.directions):
            assert qa.cfg == qb.cfg and np.array_equal(qa.codes, qb.codes) and qa.scale == qb.scale
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_stack(bad)
    layer_file = tmp_path / "layer.npz"
    QuantLayer.random(c0).save(layer_file)
    with pytest.raises(CheckpointError, match="missing entry 'layers'|format is"):
        load_stack(layer_file)


def test_schedule_formulas():
    assert stack_schedule([10, 20], 4) == [[0, 11, 32, 53], [10, 31, 52, 73]]
    for lats in ([7], [10, 20], [20, 10], [5, 30, 5], [9, 9, 9]):
        acc = stack_schedule(lats, 12)
        assert acc[-1][0] + lats[-1] == first_output_latency(lats)
        assert acc[-1][-1] - acc[-1][-2] == steady_period(lats)


def run_stack(stack, folds, xs, stall=0.0, seed=0):
    """Per layer: the h codes handed on (inner layers at their tap, the last at out) and the cycle,
    and the cycles layer 0 accepted x (cycles counted from the start of the simulation)."""
    dut = StackCore(stack, folds)
    A = stack.abits
    seen = [[] for _ in stack.layers]
    accepted = []
    rng = np.random.default_rng(seed)
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def feeder(ctx):
        for x in xs:
            while rng.random() < stall:
                await ctx.tick()
            ctx.set(dut.x.payload, sum(int(v) << (A * j) for j, v in enumerate(x)))
            ctx.set(dut.x.valid, 1)
            await ctx.tick().until(dut.x.ready)
            ctx.set(dut.x.valid, 0)

    async def monitor(ctx):
        cycle = 0
        ctx.set(dut.out.ready, 1)
        while len(seen[-1]) < len(xs):
            if ctx.get(dut.x.valid) and ctx.get(dut.x.ready):
                accepted.append(cycle)
            for l, layer in enumerate(stack.layers[:-1]):
                if ctx.get(getattr(dut, f"h{l}_valid")):
                    seen[l].append((_unpack(ctx.get(getattr(dut, f"h{l}")), A, layer.cfg.hidden), cycle))
            if ctx.get(dut.out.valid):
                seen[-1].append((_unpack(ctx.get(dut.out.payload), A, stack.layers[-1].cfg.hidden), cycle))
            await ctx.tick()
            cycle += 1

    sim.add_testbench(feeder, background=True)
    sim.add_testbench(monitor)
    sim.run()
    return seen, accepted


@pytest.mark.parametrize("case", [
    # (layer configs, foldings)
    ([dict(wbits=2, abits=2, hidden=6, input=4), dict(wbits=2, abits=2, hidden=5, input=6)],
     [Folding(pe=8, simd=4), Folding(pe=4, simd=3)]),
    ([dict(wbits=3, abits=2, hidden=5, input=3, cell_type="gru"), dict(wbits=2, abits=2, hidden=7, input=5),
      dict(wbits=2, abits=2, hidden=4, input=7, weight_code="ternary", cell_type="rnn")],
     [Folding(pe=2, simd=8), Folding(pe=12, simd=6, planes="serial"), Folding(pe=2, simd=11)]),
])
def test_rtl_stack_matches_the_integer_stack_and_the_schedule(case):
    cfgs, folds = case
    cfgs = [LayerConfig(**c) for c in cfgs]
    stack = Stack.random(cfgs, seed=3)
    xs = np.random.default_rng(2).integers(0, 1 << stack.abits, (6, stack.input))
    want = IntegerStack(stack).run(xs)
    seen, accepted = run_stack(stack, folds, xs)
    lats = [latency(c, f) for c, f in zip(cfgs, folds)]
    acc = stack_schedule(lats, len(xs))
    for l in range(len(cfgs)):
        assert [h for h, _ in seen[l]] == want[l].tolist(), f"layer {l} h differs"
    t0 = accepted[0]  # the schedule's cycle 0: layer 0 accepts x_1
    assert [c - t0 for c in accepted] == acc[0]
    for l in range(len(cfgs) - 1):  # inner layers are seen as the next layer accepts their h_t
        assert [c - t0 for _, c in seen[l]] == acc[l + 1], f"layer {l + 1} accepts off schedule"
    assert [c - t0 for _, c in seen[-1]] == [a + lats[-1] for a in acc[-1]]  # the last layer's h_t valid


def test_sequence_schedule_is_the_unidirectional_schedule_and_the_closed_forms():
    for lats in ([7], [10, 20], [20, 10], [5, 30, 5]):
        sch = Schedule([(L,) for L in lats], [12])
        assert sch.accept == stack_schedule(lats, 12)
        assert sch.valid[-1] == [a + lats[-1] for a in stack_schedule(lats, 12)[-1]]
    for lf, lb, T in ((10, 10, 1), (10, 12, 4), (30, 9, 5), (9, 30, 7)):
        sch = Schedule([(lf, lb)], [T, 2])
        first = bidirectional_first_output(lf, lb, T)
        assert sch.valid[0][:T] == list(range(first, first + T))   # taken at once, one a cycle
        assert sch.accept[0][T] == first + T                        # the next sequence's x_1
        for uni in ([], [7], [40], [7, 25, 3]):
            sch = Schedule([(lf, lb)] + [(L,) for L in uni], [T])
            assert (sch.first_output(), sch.sequence_cycles()) == bidirectional_stack_cycles(lf, lb, uni, T)


def test_rtl_stack_refuses_a_missing_or_bad_max_len():
    c = LayerConfig(wbits=2, abits=2, hidden=4, input=3)
    stack = Stack.random([c], bidirectional=[True])
    with pytest.raises(ConfigError, match="needs a maximum sequence length"):
        StackCore(stack, [Folding(pe=4, simd=4)])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="must be an integer >= 1"):
            StackCore(stack, [Folding(pe=4, simd=4)], max_len=bad)


def test_stack_cores_keep_their_deep_fixed_memories_in_memory():
    """A stack ties its cores' load ports off, so yosys sees constant memories and would build deep
    ones as logic ROM; the stack marks those of KEEP_AS_MEMORY_MIN_WORDS words or more
    KEEP_AS_MEMORY (block or LUT RAM, as the cost model prices them) and leaves shallow ones to
    yosys. A standalone core (weights loadable) carries no such attribute."""
    from amaranth.back import rtlil

    from rtl_gen.core import LstmCore
    from rtl_gen.memory import KEEP_AS_MEMORY, KEEP_AS_MEMORY_MIN_WORDS, fixed_memory_attrs

    assert fixed_memory_attrs(True, KEEP_AS_MEMORY_MIN_WORDS) == KEEP_AS_MEMORY
    assert fixed_memory_attrs(True, KEEP_AS_MEMORY_MIN_WORDS - 1) is None
    assert fixed_memory_attrs(False, 4096) is None
    marked = "attribute \\ram_block 1"
    c = LayerConfig(wbits=2, abits=2, hidden=4, input=3)
    shallow = rtlil.convert(StackCore(Stack.random([c]), [Folding(pe=4, simd=4)]))
    assert marked not in shallow
    # PE 4 over 4 * 40 rows: 40 row folds (bias words) x 2 column folds = 80 weight words
    deep = LayerConfig(wbits=2, abits=2, hidden=40, input=3)
    for bidirectional in (False, True):
        text = rtlil.convert(StackCore(Stack.random([deep], bidirectional=[bidirectional]),
                                       [Folding(pe=4, simd=40)], max_len=8 if bidirectional else None))
        assert text.count(marked) == (2 if bidirectional else 1)  # each core's weight memory, not its bias
    core = LstmCore(QuantLayer.random(deep, seed=0), Folding(pe=4, simd=40))
    assert marked not in rtlil.convert(core, ports=None)


def run_sequences(stack, folds, seqs, max_len):
    """A stack with a bidirectional layer run on the sequences back to back (x always valid, last on
    each sequence's last step, out always taken): per layer the outputs handed on and the cycle, and
    the cycles layer 0 accepted x."""
    dut = StackCore(stack, folds, max_len=max_len)
    A = stack.abits
    elems = [(x, t == len(s) - 1) for s in seqs for t, x in enumerate(s)]
    seen = [[] for _ in stack.layers]
    accepted = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx):
        cycle = i = 0
        ctx.set(dut.out.ready, 1)
        while len(seen[-1]) < len(elems) and cycle < 50_000:
            if i < len(elems):
                x, last = elems[i]
                ctx.set(dut.x.payload, {"data": sum(int(v) << (A * j) for j, v in enumerate(x)), "last": int(last)})
            ctx.set(dut.x.valid, i < len(elems))
            if ctx.get(dut.x.valid) and ctx.get(dut.x.ready):
                accepted.append(cycle)
                i += 1
            for l, layer in enumerate(stack.layers[:-1]):
                if ctx.get(getattr(dut, f"h{l}_valid")):
                    seen[l].append((_unpack(ctx.get(getattr(dut, f"h{l}")), A, layer.output_width), cycle))
            if ctx.get(dut.out.valid):
                assert ctx.get(dut.out.payload.last) == elems[len(seen[-1])][1]
                seen[-1].append((_unpack(ctx.get(dut.out.payload.data), A, stack.layers[-1].output_width), cycle))
            await ctx.tick()
            cycle += 1

    sim.add_testbench(bench)
    sim.run()
    return seen, accepted


@pytest.mark.parametrize("bidirectional", [[True, False], [False, True], [True, True]])
def test_rtl_bidirectional_stack_matches_the_integer_stack_and_the_schedule(bidirectional):
    """Two sequences back to back (the second starts every direction from its reset state again):
    every layer's outputs equal to IntegerStack, every hand-over at the cycle Schedule predicts."""
    c0 = LayerConfig(wbits=2, abits=2, hidden=4, input=3)
    c1 = LayerConfig(wbits=3, abits=2, hidden=3, input=8 if bidirectional[0] else 4, cell_type="gru")
    folds = [Folding(pe=8, simd=4), Folding(pe=2, simd=6, planes="serial")]
    stack = Stack.random([c0, c1], bidirectional=bidirectional, seed=3)
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 4, (T, 3)) for T in (5, 3)]
    seen, accepted = run_sequences(stack, folds, seqs, max_len=5)
    runs = [IntegerStack(stack).run(s) for s in seqs]
    sch = Schedule(stack_latencies(stack, folds), [5, 3])
    for l in range(2):
        assert [h for h, _ in seen[l]] == np.concatenate([r[l] for r in runs]).tolist(), f"layer {l} differs"
        assert [c - accepted[0] for _, c in seen[l]] == sch.taken[l], f"layer {l} hands on off schedule"
    assert [c - accepted[0] for c in accepted] == sch.accept[0]


def test_rtl_bidirectional_layer_cuts_a_sequence_at_max_len():
    """Without last, the max_len-th step ends the sequence."""
    stack = Stack.random([LayerConfig(wbits=2, abits=2, hidden=4, input=3)], bidirectional=[True], seed=2)
    xs = np.random.default_rng(4).integers(0, 4, (3, 3))
    dut = StackCore(stack, [Folding(pe=4, simd=7)], max_len=3)
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx):
        ctx.set(dut.out.ready, 1)
        for x in xs:
            ctx.set(dut.x.payload, {"data": sum(int(v) << (2 * j) for j, v in enumerate(x)), "last": 0})
            ctx.set(dut.x.valid, 1)
            await ctx.tick().until(dut.x.ready)
        ctx.set(dut.x.valid, 0)
        while len(got) < 3:
            if ctx.get(dut.out.valid):
                got.append((_unpack(ctx.get(dut.out.payload.data), 2, 8), ctx.get(dut.out.payload.last)))
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    assert [h for h, _ in got] == IntegerStack(stack).run(xs)[0].tolist()
    assert [last for _, last in got] == [0, 0, 1]


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_cocotb_stack_regression(sim, tmp_path):
    """The emitted Verilog of a 3-layer stack (LSTM, GRU, ternary RNN) under cocotb: every layer's
    h_t and every hand-over cycle as predicted."""
    from sim.regress import run_stack_regression

    cfgs = [LayerConfig(wbits=2, abits=2, hidden=6, input=4), LayerConfig(wbits=3, abits=2, hidden=5, input=6,
                                                                         cell_type="gru"),
            LayerConfig(wbits=2, abits=2, hidden=4, input=5, cell_type="rnn", weight_code="ternary")]
    folds = [Folding(pe=8, simd=4), Folding(pe=4, simd=3, planes="serial"), Folding(pe=2, simd=5)]
    res = run_stack_regression(Stack.random(cfgs, seed=5), folds, tmp_path, sim=sim, steps=8, seed=1)
    assert res["mismatches"] == [] and len(res["last_valid"]) == 8


BIDIR_CASES = {
    # a bidirectional LSTM layer on its own
    "bidir": ([LayerConfig(wbits=2, abits=2, hidden=4, input=3)], [True], [Folding(pe=8, simd=4)]),
    # a bidirectional first layer feeding a unidirectional GRU layer (input 2H)
    "bidir+gru": ([LayerConfig(wbits=2, abits=2, hidden=4, input=3),
                   LayerConfig(wbits=3, abits=2, hidden=3, input=8, cell_type="gru")], [True, False],
                  [Folding(pe=8, simd=4), Folding(pe=2, simd=6, planes="serial")]),
}


@pytest.mark.parametrize("sim", [pytest.param("verilator", marks=pytest.mark.slow), "icarus"])
@pytest.mark.parametrize("case", list(BIDIR_CASES))
def test_cocotb_bidirectional_stack_regression(case, sim, tmp_path):
    """The emitted Verilog with a bidirectional layer under cocotb: two sequences back to back (5
    and 3 steps, buffers of 6), every layer's output, out's last flags and every hand-over cycle as
    hwrnn.stack.IntegerStack and hwrnn.stack.Schedule predict. Icarus in the default run (7-10 s);
    Verilator with -m slow (its C++ build took 85-120 s on the shared machine)."""
    from sim.regress import run_stack_regression

    cfgs, bidirectional, folds = BIDIR_CASES[case]
    res = run_stack_regression(Stack.random(cfgs, bidirectional=bidirectional, seed=7), folds, tmp_path, sim=sim,
                               lengths=[5, 3], max_len=6, seed=2)
    assert res["mismatches"] == [] and len(res["last_valid"]) == 8


def test_stack_cli_from_flags_and_checkpoint(tmp_path, capsys):
    from rtl_gen.__main__ import main

    assert main(["stack", "--layers", "2", "--hidden", "8,6", "--wbits", "2,3", "--abits", "2", "--cell-type",
                 "lstm,gru", "--pe", "4,2", "--simd", "8", "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "layer 1: W3A2 GRU" in out and "first output" in out
    import json
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    lats = man["latency"]["layer_latencies"]
    assert man["latency"]["first_output"] == sum(lats) and man["latency"]["steady_period"] == max(lats) + 1
    assert sorted(man["files"]) == ["hwrnn_stack.v", "report.txt", "weights_0.hex", "weights_1.hex"]
    stack = Stack.random([LayerConfig(wbits=2, abits=2, hidden=5, input=3),
                          LayerConfig(wbits=2, abits=2, hidden=4, input=5)], seed=2)
    save_stack(stack, tmp_path / "s.npz")
    assert main(["stack", "--checkpoint", str(tmp_path / "s.npz"), "-o", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    # refusals: one line each
    for args, msg in ((["--layers", "2", "--hidden", "8,6,4", "--wbits", "2", "--abits", "2"], "one value or 2"),
                      (["--checkpoint", str(tmp_path / "s.npz"), "--hidden", "8"], "drop --hidden"),
                      (["--layers", "2", "--hidden", "8", "--wbits", "2"], "give --layers"),
                      (["--checkpoint", str(tmp_path / "nope.npz")], "file not found")):
        assert main(["stack", *args, "-o", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert main(["report", str(tmp_path / "a")]) == 2
    assert "describes a stack" in capsys.readouterr().err


def test_stack_cli_bidirectional_from_flags_and_checkpoint(tmp_path, capsys):
    import json

    from rtl_gen.__main__ import main

    assert main(["stack", "--layers", "2", "--hidden", "4,3", "--input", "3", "--wbits", "2", "--abits", "2",
                 "--bidirectional", "1,0", "--pe", "8,4", "--simd", "4", "--steps", "6", "--max-len", "10",
                 "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "layer 0: bidirectional W2A2 LSTM" in out and "at most 10 steps" in out
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["layers"][1]["config"]["input"] == 8 and man["max_len"] == 10
    assert sorted(man["files"]) == ["hwrnn_stack.v", "report.txt", "weights_0_bw.hex", "weights_0_fw.hex",
                                    "weights_1.hex"]
    lat = man["latency"]
    (lf, lb), (l1,) = lat["layer_latencies"]
    assert (lat["first_output"], lat["cycles_per_sequence"]) == bidirectional_stack_cycles(lf, lb, [l1], 6)
    stack = Stack.random([LayerConfig(wbits=2, abits=2, hidden=4, input=3)], bidirectional=[True], seed=2)
    save_stack(stack, tmp_path / "s.npz")
    assert main(["stack", "--checkpoint", str(tmp_path / "s.npz"), "--steps", "5", "-o", str(tmp_path / "b")]) == 0
    assert "bidirectional" in capsys.readouterr().out
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["max_len"] == 5 and [d["weights_file"] for d in man["layers"][0]["directions"]] == [
        "weights_0_fw.hex", "weights_0_bw.hex"]
    flags = ["--layers", "1", "--hidden", "4", "--wbits", "2", "--abits", "2"]
    for args, msg in (([*flags, "--bidirectional", "2"], "takes 1 or 0"),
                      ([*flags, "--bidirectional", "1", "--max-len", "0"], "must be an integer >= 1"),
                      ([*flags, "--bidirectional", "1", "--steps", "9", "--max-len", "8"], "longer than the maximum"),
                      ([*flags, "--max-len", "8"], "this stack has none"),
                      (["--checkpoint", str(tmp_path / "s.npz"), "--bidirectional", "1"], "drop --bidirectional")):
        assert main(["stack", *args, "-o", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
