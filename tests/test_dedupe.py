"""rtl_gen.dedupe: identical modules of Amaranth's Verilog merged into one per lane type."""
import re

import pytest

from hwrnn import Folding, LayerConfig, QuantLayer
from rtl_gen.dedupe import instances, share_modules
from sim.regress import hier_blocks

LEAF = """(* generator = "Amaranth" *)
module \\top.{name} (clk, a, y);
  reg \\$auto$verilog_backend.cc:2355:dump_module${n}  = 0;
  input clk;
  input [3:0] a;
  output [3:0] y;
  assign y = a + 4'd{k};
endmodule
"""


def _design(ks):
    top = ['(* top =  1  *)\n(* generator = "Amaranth" *)\nmodule top(clk, a, y);\n  input clk;\n  input [3:0] a;\n',
           f"  output [{4 * len(ks) - 1}:0] y;\n"]
    for i in range(len(ks)):
        top.append(f"  \\top.lane{i}  lane{i} (\n    .clk(clk),\n    .a(a),\n    .y(y[{4 * i + 3}:{4 * i}])\n  );\n")
    top.append("endmodule\n")
    leaves = [LEAF.format(name=f"lane{i}", n=10 + i, k=k) for i, k in enumerate(ks)]
    return "/* header */\n\n" + "".join(top) + "\n" + "\n".join(leaves)


def test_identical_modules_merge_distinct_stay():
    text = _design([1, 1, 2, 1])
    out = share_modules(text)
    mods = re.findall(r"^module (\\\S+|\w+)", out, re.M)
    # lanes 0, 1, 3 are one circuit (their yosys $auto numbers differ only); lane 2 adds another constant
    assert mods == ["top", "top_lane", "\\top.lane2"], mods
    inst = instances(out)
    assert sorted(inst["top_lane"]) == ["top"] * 3 and inst["\\top.lane2"] == ["top"]
    for i, want in enumerate(["top_lane", "top_lane", "\\top.lane2", "top_lane"]):
        assert re.search(rf"^  {re.escape(want)} +lane{i} \(", out, re.M), (i, want)
    assert out.startswith("/* header */") and share_modules(out) == out  # a fixed point
    assert share_modules(_design([1, 2, 3])) == _design([1, 2, 3])       # nothing to merge: unchanged


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_emitted_core_has_one_module_per_lane_type(cell):
    from rtl_gen.emit import generate

    cfg = LayerConfig(wbits=2, abits=2, hidden=8, cell_type=cell)
    fold = Folding(pe=4, simd=4, planes="parallel")
    text = generate(QuantLayer.random(cfg, seed=0), fold, "core", "test")["core.v"]
    inst = instances(text)
    dots = [n for n in inst if "dot" in n]
    assert dots == ["core_mac_dot"] and len(inst["core_mac_dot"]) == fold.pe, dots
    # every module still defined once and used (the top apart)
    assert all(parents for n, parents in inst.items() if n not in ("core",)), inst
    blocks = hier_blocks(text)
    assert "core_mac_dot" in blocks and all(not n.startswith("\\") for n in blocks)


@pytest.mark.slow
def test_hierarchical_blocks_simulate_exactly(tmp_path):
    """Verilator with the shared lane modules as hierarchical blocks (each compiled once): every h_t,
    c_t and cycle count still exact."""
    from sim.regress import BuildOptions, run_regression
    from sim.runner import simulator_available

    if simulator_available("verilator"):
        pytest.skip(simulator_available("verilator"))
    cfg = LayerConfig(wbits=2, abits=2, hidden=8, input=4)
    res = run_regression(QuantLayer.random(cfg, seed=0), Folding(4, 4), tmp_path, sim="verilator", steps=6,
                         seed=1, build=BuildOptions(hier=True, shared=False))
    assert res.compared_steps >= 4 and res.cycles_per_step == res.predicted
