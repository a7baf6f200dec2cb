"""benchmarks/finn_l_comparison.py: the FINN-L facts agree with each other, the folding enumeration
keeps the fastest and cheapest of every fold count, the selection is the LUT minimum among the
foldings that meet FINN-L's throughput (checked against hwrnn.stack's schedule, not a stored
answer), and --no-synth / a cached --synth write the report. No synthesis; a few seconds."""
import json
import os
import math

import pytest

from benchmarks import finn_l_comparison as fc
from hwrnn.config import Folding
from hwrnn.datapath import latency
from hwrnn.fpga import fit_device
from hwrnn.stack import Schedule
from rtl_gen.stack_cost import stack_estimate

MAX_LEN = 732


@pytest.fixture(scope="module")
def cfg():
    return fc.layer_config()


@pytest.fixture(scope="module")
def stack(cfg):
    return fc.bidirectional_stack(cfg)


@pytest.fixture(scope="module")
def rows(cfg, stack):
    """The real layer, every candidate with pe <= 16 (pricing all 1,100 candidates takes ~45 s)."""
    return fc.enumerate_rows(stack, MAX_LEN, 150, [f for f in fc.candidates(cfg) if f.pe <= 16])


def test_finn_l_facts_agree():
    """Their op count (lstm/lstm.py, lstm/ocr.py) over 520 columns in the measured time gives the
    printed MOps/s: the column count and the time belong together."""
    x, h, k = fc.fl("input"), fc.fl("hidden"), fc.fl("classes")
    ops = 2 * (2 * (x + h + 1) * 4 * h + 3 * h) + 2 * h * k
    assert ops == 351488
    assert 0.001 * ops * fc.fl("columns") / fc.fl("ms_per_image") == pytest.approx(fc.fl("mops"), rel=1e-12)
    assert round(fc.finn_l_columns_per_s()) == 401995
    assert fc.cycle_budget(100) == pytest.approx(129355.0, abs=0.01)
    assert fc.goal() == {"lut_total": 13211, "dsp": 180}
    assert fc.finn_l_folding(fc.layer_config()) == Folding(pe=8, simd=160)


def test_candidates_keep_the_fastest_and_cheapest_of_each_fold_count(cfg, stack):
    cands = set(fc.candidates(cfg))
    assert len(cands) == 22 * 25 * 2
    rows_, cols = cfg.rows // 4, cfg.columns

    def kept(f):
        u = math.ceil(rows_ / math.ceil(rows_ / (f.pe // 4)))
        return Folding(pe=4 * u, simd=math.ceil(cols / math.ceil(cols / f.simd)), planes=f.planes)

    legal = [Folding(pe=pe, simd=s, planes=p) for pe in range(4, cfg.rows + 1, 4) for s in range(1, cols + 1)
             for p in ("parallel", "serial")]
    slower = [f for f in legal if kept(f) not in cands or latency(cfg, kept(f)) > latency(cfg, f)]
    assert not slower, slower[:5]
    padded = [f for f in legal if kept(f) != f and f.pe <= 16][::97]
    assert len(padded) >= 10
    for f in padded:
        a, b = (fc.with_total(stack_estimate(stack, [g], "xilinx", MAX_LEN)["total"]) for g in (f, kept(f)))
        assert a["lut_total"] >= b["lut_total"] and a["dsp"] >= b["dsp"], (f, a, b)


@pytest.fixture(scope="module")
def priced(cfg, stack, rows):
    """Per row, (latency, estimate) computed here from hwrnn.datapath and rtl_gen.stack_cost."""
    out = []
    for r in rows:
        f = fc.folding_of(r)
        out.append((latency(cfg, f), fc.with_total(stack_estimate(stack, [f], "xilinx", MAX_LEN)["total"])))
    return out


@pytest.mark.parametrize("mhz", [100, 150])
def test_selection_is_the_lut_minimum_of_the_foldings_meeting_finn_l(rows, priced, mhz):
    sel = fc.select(rows, mhz)
    budget = fc.fl("ms_per_image") * 1e-3 * mhz * 1e6
    T = fc.fl("columns")
    feasible, too_slow = [], []
    for r, (lf, est) in zip(rows, priced):
        assert r["est"] == est and r["latency"] == [lf, lf]
        period = r["first_output"] + T
        if period > budget:
            too_slow.append(est["lut_total"])
        elif est["dsp"] <= 180 and fit_device("xc7z020", est).fits:
            feasible.append((est["lut_total"], r))
    assert sel is not None and sel in [r for _l, r in feasible]
    assert sel["est"]["lut_total"] == min(lut for lut, _r in feasible)
    assert min(too_slow) < sel["est"]["lut_total"]  # the throughput binds: cheaper foldings are too slow
    sch = Schedule([tuple(sel["latency"])], [T, T])
    assert sel["first_output"] == sch.first_output()
    assert sel["sequence"] == sch.sequence_cycles(0)
    assert sel["period"] == sch.accept[0][T]
    assert sel["columns_per_s"][str(mhz)] == round(T * mhz * 1e6 / sch.accept[0][T])
    assert fc.meets(sel, mhz) and sch.accept[0][T] <= budget


def test_frontier_is_not_beaten_on_both_period_and_luts(rows):
    front = fc.frontier(rows)
    assert front == sorted(front, key=lambda r: r["period"])
    for r in front:
        assert not any(o["fits"] and o["period"] <= r["period"] and o["est"]["lut_total"] < r["est"]["lut_total"]
                       for o in rows)


def test_no_synth_and_cached_synth_write_the_report(tmp_path, cfg, stack, monkeypatch):
    folds = [f for f in fc.candidates(cfg) if f.pe <= 8]
    out = tmp_path / "est"
    res = fc.main(["--no-synth", "--out", str(out)], folds=folds)
    data = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    assert data["synthesized"] is False and data["enumerated"] == len(data["rows"]) == len(folds)
    assert "Estimate, not synthesized" in md and "| LUT (logic + LUT RAM) | 26,423 |" in md
    sel = res["selected"]["100"]
    assert data["selected"]["100"]["est"] == sel["est"] and "yosys" not in sel

    # --synth: every selected layer goes through stack_bidirectional.synth (which reruns yosys
    # unless its folder holds a run of the same RTLIL and script); a reused run keeps its seconds
    import benchmarks.stack_bidirectional as sb

    counts = {"lut": 9000, "lutram": 100, "ff": 8000, "carry": 500, "bram": 40, "dsp": 14}
    calls = []

    def fake_synth(top, family, work, flatten=True):
        calls.append((family, os.path.basename(work)))
        reused = os.path.exists(os.path.join(work, "result.json"))
        return {"seconds": None if reused else 5.0, "mods": {}, "counts": counts}

    monkeypatch.setattr(sb, "synth", fake_synth)
    work = tmp_path / "work"
    for m in ("100", "150"):
        (work / fc.synth_key(cfg, res["selected"][m], MAX_LEN)).mkdir(parents=True, exist_ok=True)
    res = fc.main(["--out", str(tmp_path / "syn"), "--work", str(work)], folds=folds)
    assert res["synthesized"] and res["selected"]["100"]["yosys"]["lut_total"] == 9100
    assert res["selected"]["100"]["synth"] == {"key": calls[0][1], "seconds": 5.0, "cached": False}
    assert "9,100 (estimate" in (tmp_path / "syn.md").read_text()
    calls.clear()
    res = fc.main(["--out", str(tmp_path / "syn"), "--work", str(work)], folds=folds)
    assert len(calls) == 2 and all(f == "xilinx" for f, _k in calls)  # asked again: a stale folder is not trusted
    assert res["selected"]["100"]["synth"]["cached"] is True and res["selected"]["100"]["synth"]["seconds"] == 5.0

    with pytest.raises(SystemExit):
        fc.main(["--no-synth", "--max-len", "100", "--out", str(tmp_path / "bad")], folds=folds)
