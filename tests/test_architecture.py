"""Structure the project promises: hwrnn's import graph has no cycle (imports inside functions
count), the hardware side never imports torch, and each axis of variation is one class whose
name is the only place its variants are told apart."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from hwrnn import LayerConfig
from hwrnn.cell_state import CellState, FixedPointCell, FloatingPointCell
from hwrnn.config import ConfigError, Folding
from hwrnn.gates import LstmGates
from hwrnn.weight_code import BalancedCode

ROOT = Path(__file__).resolve().parent.parent


def _hwrnn_imports(path: Path) -> set[str]:
    """hwrnn modules a file imports anywhere (module level or inside functions), except under
    ``if TYPE_CHECKING:`` (annotations only)."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module or ""
                if base:
                    out.add(base.split(".")[0])
                else:
                    out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("hwrnn."):
                out.add(node.module.split(".")[1])
            elif node.module == "hwrnn":
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("hwrnn."))
    return out


def test_hwrnn_import_graph_has_no_cycle():
    mods = {p.stem: p for p in (ROOT / "hwrnn").glob("*.py") if p.stem != "__init__"}
    graph = {m: sorted(_hwrnn_imports(p) & set(mods)) for m, p in mods.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in graph[m]:
            if state.get(d) == "open":
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle in hwrnn: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("modules", [
    "sim, sim.__main__, sim.runner, sim.plan, sim.regress",
    "boards, boards.__main__, boards.host, boards.build, boards.top, boards.link",
    "rtl_gen, rtl_gen.__main__, rtl_gen.sweep, rtl_gen.synth, rtl_gen.emit",
    "hwrnn, hwrnn.integer_model, hwrnn.resources, hwrnn.pretrained",
])
def test_hardware_side_never_imports_torch(modules):
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False", f"importing {modules} imports torch"


def test_layer_config_owns_one_object_per_axis():
    cfg = LayerConfig(wbits=3, abits=2, hidden=5, cell="fp16")
    assert isinstance(cfg.cell_format, FloatingPointCell) and str(cfg.cell_format) == "fp16"
    assert cfg.cell_format is cfg.cell_format  # parsed once, not on every access
    assert isinstance(cfg.gate_set, LstmGates) and cfg.rows == 4 * 5
    assert cfg.weight_coding == BalancedCode(3) and cfg.weight_coding.max_code == 7
    again = LayerConfig.from_json(cfg.to_json())
    assert again == cfg and again.to_dict()["cell_type"] == "lstm" and again.to_dict()["weight_code"] == "balanced"
    assert isinstance(LayerConfig(wbits=2, abits=2, hidden=4).cell_format, FixedPointCell)


@pytest.mark.parametrize("fields,message", [
    ({"cell_type": "lstmx"}, "cell_type must be one of"),
    ({"weight_code": "ternary-ish"}, "weight_code must be one of"),
    ({"cell": "e1m3"}, "float cell exponent bits must be in 2..8"),
    ({"cell": "fixed:0.8"}, "cell integer bits must be in 1..16"),
    ({"cell": "fixed:3.2"}, "fewer fraction bits than z_frac"),
    ({"cell": "posit16"}, "not understood"),
])
def test_axis_refusals_are_one_line(fields, message):
    with pytest.raises(ConfigError, match=message) as e:
        LayerConfig(wbits=2, abits=2, hidden=4, **fields)
    assert "\n" not in str(e.value)


def test_folding_takes_the_gate_count_from_the_layer():
    cfg = LayerConfig(wbits=2, abits=2, hidden=10)
    with pytest.raises(ConfigError, match="multiple of 4 .*lstm"):
        Folding(pe=6).check_against(cfg)
    assert Folding.default_for(cfg).pe % cfg.gate_set.n_gates == 0


def test_cell_state_parse_round_trips_every_family():
    for text in ("fixed:3.10", "fixed:1.0", "fp16", "bf16", "e4m3", "e8m23"):
        cs = CellState.parse(text)
        assert str(cs) == text and CellState.parse(cs) is cs


def test_cell_kinds_are_told_apart_only_by_their_classes():
    """Outside hwrnn/cell_state.py and hwrnn/floatcell.py nothing compares a cell format's kind
    to a string: the behaviour lives in the format classes."""
    offenders = []
    for pkg in ("hwrnn", "rtl_gen", "sim", "boards", "sw_ref", "benchmarks"):
        for p in (ROOT / pkg).rglob("*.py"):
            if p.name in ("cell_state.py", "floatcell.py"):
                continue
            for k, line in enumerate(p.read_text().splitlines(), 1):
                if ".kind ==" in line or ".kind !=" in line:
                    if "cell_format.kind" in line or "cf.kind" in line:
                        offenders.append(f"{p.relative_to(ROOT)}:{k}: {line.strip()}")
    assert not offenders, "string branching on the cell kind:\n" + "\n".join(offenders)
