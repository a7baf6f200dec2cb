"""cocotb regression of emitted Verilog against the integer model (Verilator and Icarus)."""
import re

import numpy as np
import pytest

from hwrnn import Folding, LayerConfig, QuantLayer
from sim.regress import run_regression
from sim.runner import SimulationFailed

# (wbits, abits, hidden, input, pe, simd, planes, extra): wbits and abits each cover {1,2,3,4,8};
# hidden/input sizes that PE/SIMD do not divide; serial and parallel planes
MATRIX = [
    (1, 1, 9, 5, 8, 4, "parallel", {}),
    (2, 2, 16, 16, 4, 32, "parallel", {}),
    (3, 4, 10, 7, 12, 5, "serial", {}),
    (4, 2, 13, 11, 8, 6, "parallel", {}),
    (8, 8, 6, 5, 8, 3, "serial", {}),
    (1, 8, 7, 4, 4, 3, "serial", {"candidate": "tanh"}),
    (8, 1, 5, 9, 20, 14, "parallel", {"init_state": "half"}),
    (4, 3, 11, 6, 16, 7, "parallel", {"cell": "fixed:2.8"}),
    (2, 2, 8, 6, 8, 5, "parallel", {"cell": "fp16"}),
    (4, 2, 6, 7, 8, 4, "serial", {"cell": "bf16", "candidate": "tanh"}),
    (3, 3, 7, 5, 12, 6, "parallel", {"cell": "e4m3", "init_state": "half"}),
    (2, 4, 5, 5, 4, 3, "parallel", {"cell": "e5m2"}),
    # GRU (He et al.: two phases) and vanilla RNN
    (2, 2, 9, 5, 4, 4, "parallel", {"cell_type": "gru"}),
    (4, 3, 7, 6, 6, 5, "serial", {"cell_type": "gru", "candidate": "tanh", "init_state": "half"}),
    (1, 8, 6, 4, 2, 3, "parallel", {"cell_type": "gru"}),
    (3, 2, 8, 5, 3, 4, "parallel", {"cell_type": "rnn"}),
    (8, 1, 5, 7, 5, 6, "serial", {"cell_type": "rnn", "candidate": "tanh"}),
    # Ott et al.'s weight codes
    (2, 2, 9, 5, 8, 4, "parallel", {"weight_code": "ternary"}),
    (2, 3, 7, 6, 4, 5, "serial", {"weight_code": "pow2_ternary", "cell_type": "gru"}),
    (2, 4, 6, 5, 8, 3, "parallel", {"weight_code": "ternary_mean", "candidate": "tanh"}),
    (4, 2, 8, 5, 8, 4, "parallel", {"weight_code": "exponential"}),
    (3, 1, 6, 7, 3, 6, "parallel", {"weight_code": "exponential", "cell_type": "rnn"}),
    (5, 3, 5, 4, 4, 3, "parallel", {"weight_code": "exponential", "cell_type": "gru", "cell": "fp16"}),
]


def _id(c):
    return (f"W{c[0]}A{c[1]}H{c[2]}X{c[3]}PE{c[4]}S{c[5]}{c[6][0]}" + (f"-{c[7]['cell']}" if "cell" in c[7] else "")
            + (f"-{c[7]['cell_type']}" if "cell_type" in c[7] else "")
            + (f"-{c[7]['weight_code']}" if "weight_code" in c[7] else ""))


#: matrix rows Verilator runs only with -m slow (each cell type and code keeps a Verilator or Icarus row in
#: the default run, and every row is also exact in the Amaranth-simulated core, tests/test_core_amaranth.py):
#: the default run stays under 15 minutes on 2 cores
SLOW_ROWS = {13, 14, 16, 19, 21, 22}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if i in SLOW_ROWS else c
                                  for i, c in enumerate(MATRIX)], ids=_id)
def test_verilator_matrix(case, tmp_path):
    w, a, h, x, pe, simd, planes, extra = case
    cfg = LayerConfig(wbits=w, abits=a, hidden=h, input=x, **extra)
    layer = QuantLayer.random(cfg, seed=h + x)
    res = run_regression(layer, Folding(pe, simd, planes), tmp_path, sim="verilator", steps=12, seed=h)
    assert res.cycles_per_step == res.predicted and res.compared_steps >= 10


@pytest.mark.parametrize("case", [MATRIX[1], MATRIX[2], MATRIX[8], MATRIX[10], MATRIX[13], MATRIX[15], MATRIX[17],
                                  MATRIX[18], MATRIX[20], MATRIX[22]], ids=_id)
def test_icarus(case, tmp_path):
    w, a, h, x, pe, simd, planes, extra = case
    cfg = LayerConfig(wbits=w, abits=a, hidden=h, input=x, **extra)
    layer = QuantLayer.random(cfg, seed=h + x)
    res = run_regression(layer, Folding(pe, simd, planes), tmp_path, sim="icarus", steps=10, seed=h)
    assert res.cycles_per_step == res.predicted


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_runtime_weight_loading(sim, tmp_path):
    cfg = LayerConfig(wbits=2, abits=2, hidden=6, input=4)
    baked = QuantLayer.random(cfg, seed=1)
    seed = 2
    loaded = QuantLayer.random(cfg, seed=seed)
    while loaded.shift != baked.shift:
        seed += 1
        loaded = QuantLayer.random(cfg, seed=seed)
    res = run_regression(baked, Folding(8, 3), tmp_path, sim=sim, steps=8, seed=3, load_layer=loaded)
    assert res.compared_steps >= 6


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_streamed_weights(sim, tmp_path):
    cfg = LayerConfig(wbits=4, abits=2, hidden=7, input=6)
    layer = QuantLayer.random(cfg, seed=5)
    res = run_regression(layer, Folding(8, 4, "serial"), tmp_path, sim=sim, steps=10, seed=6, weights="stream")
    assert res.compared_steps >= 8


@pytest.mark.parametrize("cell_type", ["gru", "rnn"])
def test_streamed_weights_and_runtime_loading_of_other_cells(cell_type, tmp_path):
    """Weights streamed through port w (a GRU's two phases each take their words), and a layer loaded
    at run time (the bias words of both phases by their row fold number)."""
    cfg = LayerConfig(wbits=3, abits=2, hidden=7, input=5, cell_type=cell_type)
    layer = QuantLayer.random(cfg, seed=5)
    res = run_regression(layer, Folding(4, 4), tmp_path / "stream", sim="verilator", steps=10, seed=6,
                         weights="stream")
    assert res.compared_steps >= 8
    seed = 2
    loaded = QuantLayer.random(cfg, seed=seed)
    while loaded.shift != layer.shift:
        seed += 1
        loaded = QuantLayer.random(cfg, seed=seed)
    res = run_regression(layer, Folding(4, 3), tmp_path / "load", sim="verilator", steps=8, seed=3, load_layer=loaded)
    assert res.compared_steps >= 6


def test_trained_checkpoint(tmp_path, tiny_trained_layer):
    res = run_regression(tiny_trained_layer, Folding(8, 5), tmp_path, sim="verilator", steps=15, seed=4)
    assert res.cycles_per_step == res.predicted


def _flip_lut_entry(module, addr, mask):
    """Return a function that flips bits `mask` of entry `addr` of the ROM inside `module`
    (Amaranth writes ROM contents as `rom[addr] = W'hVALUE;`)."""
    def inject(text):
        start = text.index(f"module {module} ")
        end = text.index("endmodule", start)
        body = text[start:end]
        m = re.search(rf"(rom\[{addr}\] = \d+')h([0-9a-f]+);", body)
        assert m, f"entry {addr} of {module} not found in the emitted Verilog"
        new = body[:m.start()] + f"{m.group(1)}h{int(m.group(2), 16) ^ mask:x};" + body[m.end():]
        return text[:start] + new + text[end:]
    return inject


def test_broken_design_is_caught(tmp_path):
    """Flip a bit of the sigmoid-table entry that lane 0 (gate i of unit 0) reads at step 0 (in the
    one table module all lanes share: rtl_gen.dedupe merged their identical tables)."""
    from hwrnn import formats as fm
    from hwrnn.integer_model import IntegerLSTM

    cfg = LayerConfig(wbits=2, abits=2, hidden=8, input=4)
    layer = QuantLayer.random(cfg, seed=0)
    fold = Folding(4, 4)
    steps, seed = 6, 1
    # the plan is a pure function of (manifest, seed): recompute its first x to find the address
    xs = np.random.default_rng(seed).integers(0, 4, (steps, cfg.input))
    model = IntegerLSTM(layer)
    _, taps = model.step(xs[:1], model.initial_state(1), trace=True)
    addr = int(fm.lut_address(cfg, taps["z"][0, 0]))  # row 0 = gate i of unit 0
    good = run_regression(layer, fold, tmp_path / "good", sim="verilator", steps=steps, seed=seed, resets=False)
    assert good.compared_steps == steps
    with pytest.raises(SimulationFailed, match="differs"):
        run_regression(layer, fold, tmp_path / "bad", sim="verilator", steps=steps, seed=seed, resets=False,
                       inject=_flip_lut_entry("hwrnn_lstm_lut0", addr, 0x40))
