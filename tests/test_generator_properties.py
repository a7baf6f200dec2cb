"""Property: any legal generator configuration generates, lints clean in Verilator, and matches
the integer model on a short sequence in simulation (Icarus: it builds in a fraction of a second)."""
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwrnn import Folding, LayerConfig, QuantLayer
from sim.regress import run_regression
from sim.runner import toolchain_env


@st.composite
def configs(draw):
    wbits = draw(st.integers(1, 8))
    abits = draw(st.integers(1, 8))
    hidden = draw(st.integers(1, 12))
    inp = draw(st.integers(1, 12))
    candidate = draw(st.sampled_from(["sigmoid", "tanh"]))
    init_state = draw(st.sampled_from(["zero", "half"]))
    int_bits = draw(st.integers(1, 4))
    frac = draw(st.integers(5, 12))
    cell_type = draw(st.sampled_from(["lstm", "gru", "rnn"]))
    cfg = LayerConfig(wbits=wbits, abits=abits, hidden=hidden, input=inp, candidate=candidate,
                      init_state=init_state, cell=f"fixed:{int_bits}.{frac}", cell_type=cell_type)
    pe = cfg.gate_set.lane_multiple * draw(st.integers(1, hidden))
    simd = draw(st.integers(1, hidden + inp))
    planes = draw(st.sampled_from(["parallel", "serial"]))
    seed = draw(st.integers(0, 2 ** 16))
    return cfg, Folding(pe, simd, planes), seed


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(configs())
def test_any_legal_config_generates_lints_and_matches(case):
    cfg, fold, seed = case
    layer = QuantLayer.random(cfg, seed=seed)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        res = run_regression(layer, fold, work, sim="icarus", steps=5, seed=seed, stall_in=0.2, stall_out=0.2)
        assert res.cycles_per_step == res.predicted
        top = f"hwrnn_{cfg.cell_type}"
        lint = subprocess.run(["verilator", "--lint-only", "-Wno-WIDTH", "-Wno-CASEINCOMPLETE", "--top-module",
                               top, f"{top}.v"], cwd=work / "gen", capture_output=True, text=True,
                              env=toolchain_env("verilator"), timeout=120)
        assert lint.returncode == 0 and "%Warning" not in lint.stderr, lint.stderr[-1500:]
