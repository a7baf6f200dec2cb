"""The cost model is the sum of what the blocks report (rtl_gen.cost), and each report is what the
block's ``elaborate`` builds: declared register bits (signals assigned in the sync domain) and
memories (shape, depth, write port) of the Amaranth fragments, counted without synthesis."""
import pytest
from amaranth.hdl import Fragment, Shape, signed, unsigned
from amaranth.hdl._mem import MemoryInstance

from hwrnn import Folding, LayerConfig, QuantLayer
from hwrnn import formats as fm
from hwrnn.datapath import bias_width
from hwrnn.devices import FAMILIES
from hwrnn.resources import BLOCKS, RESOURCES, Built, Reg
from rtl_gen import blocks as rb
from rtl_gen import cost
from rtl_gen.core import LstmCore, port_widths
from rtl_gen.float_cell import FloatCellUnit
from rtl_gen.mac import BalancedMac
from rtl_gen.multiplier import RegisteredMultiplier
from rtl_gen.units import LstmUnit, cell_state_built, cell_state_unit, mac_built, mac_unit


def sync_bits(frag) -> int:
    """Flip-flops a fragment tree declares: widths of the signals assigned in the sync domain."""
    sigs = {}
    for stmt in frag.statements.get("sync", []):
        for s in stmt._lhs_signals():
            sigs[id(s)] = len(s)
    return sum(sigs.values()) + sum(sync_bits(sub) for sub, _name, _loc in frag.subfragments)


def async_read_bits(frag) -> int:
    """Data bits of the asynchronous read ports in a fragment tree: each is read through a register
    the memory owns (rtl_gen.memory.registered_read; a block RAM's read register), which the
    fragment declares in the sync domain and the block report counts with the memory."""
    out = 0
    if isinstance(frag, MemoryInstance):
        out += sum(len(p._data) for p in frag._read_ports if p._domain == "comb")
    for sub, _name, _loc in frag.subfragments:
        out += async_read_bits(sub)
    return out


def memories_of(frag) -> list[tuple[int, int, bool]]:
    """(width, depth, has a write port) of every memory in a fragment tree."""
    out = []
    if isinstance(frag, MemoryInstance):
        out.append((Shape.cast(frag._data.shape).width, frag._data.depth, bool(frag._write_ports)))
    for sub, _name, _loc in frag.subfragments:
        out += memories_of(sub)
    return out


def reported_memories(b: Built, n: int = 1) -> list[tuple[int, int, bool]]:
    out = [(m.width, m.depth, m.write) for m in b.mems for _ in range(n * m.copies)]
    for _name, k, sub in b.subs:
        out += reported_memories(sub, n * k)
    return out


def elaborated(component):
    return Fragment.get(component, None)


CFGS = [
    LayerConfig(wbits=2, abits=2, hidden=8),
    LayerConfig(wbits=3, abits=1, hidden=6, cell="fixed:2.6", candidate="tanh"),
    LayerConfig(wbits=4, abits=3, hidden=5, cell="fp16"),
    LayerConfig(wbits=2, abits=2, hidden=4, cell="e4m3", candidate="tanh"),
]


@pytest.mark.parametrize("args", [(4, 1, 2, 0, None), (5, 2, 3, 0, 2), (8, 1, 2, 3, 2), (3, 3, 1, 0, 1), (1, 1, 1, 0, 2)])
def test_bitplane_dot_reports_its_registers(args):
    dot = rb.BitPlaneDot(*args)
    assert rb.BitPlaneDot.built(*args).stages == dot.latency
    assert rb.BitPlaneDot.built(*args).bits == sync_bits(elaborated(dot))


@pytest.mark.parametrize("args", [(5, 2, 2), (8, 1, 1), (16, 3, 2), (3, 4, None)])
def test_activation_sum_reports_its_registers(args):
    assert rb.ActivationSum.built(*args).bits == sync_bits(elaborated(rb.ActivationSum(*args)))


@pytest.mark.parametrize("cfg", CFGS, ids=str)
def test_cell_scale_and_requant_units_report_their_registers(cfg):
    cell = cell_state_unit(cfg)
    assert cell_state_built(cfg).bits == sync_bits(elaborated(cell))
    assert cell_state_built(cfg).stages == cell.c_latency + cell.addr_latency
    assert rb.HRequantizer.built(cfg).bits == sync_bits(elaborated(rb.HRequantizer(cfg)))
    unit = LstmUnit(cfg)
    assert LstmUnit.built(cfg).stages == unit.latency
    frag = elaborated(unit)
    assert LstmUnit.built(cfg).bits == sync_bits(frag)
    assert reported_memories(LstmUnit.built(cfg)) == memories_of(frag)
    for args in ((fm.acc_width(cfg), 16, 12, 9), (fm.acc_width(cfg), 3, 30, 28)):
        assert rb.ScaleBias.built(cfg, *args).bits == sync_bits(elaborated(rb.ScaleBias(cfg, *args)))


def test_float_unit_report_follows_its_options():
    cfg = CFGS[2]
    assert FloatCellUnit.built(cfg, pipelined=False).bits == sync_bits(elaborated(FloatCellUnit(cfg))) == 0


@pytest.mark.parametrize("shapes", [(signed(9), unsigned(5), None), (unsigned(3), signed(7), signed(12))])
def test_multiplier_reports_its_registers(shapes):
    b = RegisteredMultiplier.built(*shapes)
    assert b.bits == sync_bits(elaborated(RegisteredMultiplier(*shapes)))
    assert b.mults[0].regs == b.bits  # nothing left out unless the owner says so


@pytest.mark.parametrize("cfg,fold", [
    (CFGS[0], Folding(pe=4, simd=4)), (CFGS[1], Folding(pe=8, simd=3, planes="serial")),
    (CFGS[2], Folding(pe=4, simd=7)), (LayerConfig(wbits=1, abits=2, hidden=4), Folding(pe=4, simd=2, planes="serial")),
])
def test_mac_array_reports_its_registers(cfg, fold):
    mac = BalancedMac(cfg, fold)
    assert BalancedMac.built(cfg, fold).stages == mac.latency
    assert BalancedMac.built(cfg, fold).bits == sync_bits(elaborated(mac))


@pytest.mark.parametrize("code,wbits,fold", [
    ("ternary", 2, Folding(pe=4, simd=5)), ("ternary", 2, Folding(pe=8, simd=3, planes="serial")),
    ("pow2_ternary", 2, Folding(pe=4, simd=7)), ("exponential", 4, Folding(pe=4, simd=5)),
    ("exponential", 3, Folding(pe=8, simd=9)), ("exponential", 5, Folding(pe=4, simd=2)),
])
def test_other_mac_arrays_report_their_registers(code, wbits, fold):
    cfg = LayerConfig(wbits=wbits, abits=3, hidden=6, input=5, weight_code=code)
    mac = mac_unit(cfg, fold)
    report = mac_built(cfg, fold)
    assert report.stages == mac.latency
    assert report.bits == sync_bits(elaborated(mac))


def consts_of(layer):
    w = port_widths(layer, Folding(pe=4, simd=1))
    return {"shift": layer.shift, "bias_bits": bias_width(layer) + 1, "mult_bits": w["mult"]}


@pytest.mark.parametrize("cfg,fold,weights", [
    (CFGS[0], Folding(pe=4, simd=4), "memory"),
    (CFGS[1], Folding(pe=8, simd=5, planes="serial"), "stream"),
    (CFGS[2], Folding(pe=4, simd=3), "memory"),
    (CFGS[3], Folding(pe=8, simd=2), "stream"),
    (LayerConfig(wbits=2, abits=2, hidden=7, input=5, cell_type="gru"), Folding(pe=4, simd=3), "memory"),
    (LayerConfig(wbits=3, abits=2, hidden=6, cell_type="gru", candidate="tanh"), Folding(pe=6, simd=4, planes="serial"),
     "stream"),
    (LayerConfig(wbits=2, abits=3, hidden=5, cell_type="rnn", candidate="tanh"), Folding(pe=3, simd=4), "memory"),
    (LayerConfig(wbits=2, abits=2, hidden=6, weight_code="ternary"), Folding(pe=8, simd=5, planes="serial"), "memory"),
    (LayerConfig(wbits=4, abits=2, hidden=6, weight_code="exponential", cell_type="gru"), Folding(pe=4, simd=5),
     "stream"),
])
def test_core_report_is_what_the_core_builds(cfg, fold, weights):
    layer = QuantLayer.random(cfg, seed=3)
    report = cost.core_built(cfg, fold, weights, consts_of(layer))
    frag = elaborated(LstmCore(layer, fold, weights=weights))
    assert report.bits == sync_bits(frag) - async_read_bits(frag)
    assert sorted(reported_memories(report)) == sorted(memories_of(frag))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cfg,fold,weights", [
    (LayerConfig(wbits=4, abits=2, hidden=450), None, "memory"),
    (LayerConfig(wbits=8, abits=2, hidden=16), Folding(pe=4, simd=8, planes="serial"), "stream"),
    (LayerConfig(wbits=3, abits=2, hidden=16, cell="bf16", candidate="tanh"), Folding(pe=8, simd=8), "memory"),
])
def test_estimate_is_the_sum_of_the_block_reports(family, cfg, fold, weights):
    fold = fold or Folding.default_for(cfg)
    core = cost.core_built(cfg, fold, weights)
    counts = cost.block_counts(core, family)
    e = cost.estimate(cfg, fold, family, weights)
    for res in ("dsp", "bram", "lutram"):
        assert e["total"][res] == pytest.approx(sum(counts[b][res] for b in BLOCKS))
    assert e["total"]["ff"] == round(sum(counts[b]["ff"] for b in BLOCKS) - cost.flat_ff_saving(core, counts, family))
    # every register bit the model keeps is one the report declares (memories add their own)
    kept = sum(counts[b]["ff"] for b in BLOCKS)
    mem_regs = sum(2 * m.width + 12 for m, n, _mm in cost.memories(core, family).values() for _ in range(n))
    assert kept <= core.bits + mem_regs
    assert set(e["total"]) == set(RESOURCES)


def test_exponential_lanes_price_their_shifted_terms():
    """The exponential code's lanes report their signed shifted terms (term_bits: SIMD x (abits + the
    code's top shift) per lane); popcount lanes report none. With the coefficients fitted on the
    exponential calibration points (benchmarks/calibrate_resources.py), the model ranks the
    exponential W4 core above the balanced W4 core at the same folding on ECP5, as yosys does
    (results/weight_codes.md: 6650 against 5541 LUT)."""
    fold = Folding(pe=8, simd=16)
    exp = LayerConfig(wbits=4, abits=2, hidden=32, weight_code="exponential")
    bal = LayerConfig(wbits=4, abits=2, hidden=32)
    tern = LayerConfig(wbits=2, abits=2, hidden=32, weight_code="ternary")
    tw = exp.abits + exp.weight_coding.top
    assert cost.features(exp, fold, "ecp5")["mac_lanes"]["term_bits"] == 8 * 16 * tw
    assert cost.features(bal, fold, "ecp5")["mac_lanes"]["term_bits"] == 0
    assert cost.features(tern, fold, "ecp5")["mac_lanes"]["term_bits"] == 0
    e, b = (cost.estimate(c, fold, "ecp5")["total"]["lut"] for c in (exp, bal))
    assert e > b, (e, b)
    for family in FAMILIES:  # fitted on ECP5; the other families take it scaled like their other lane features
        assert cost.coefficients(family, "mac_lanes", "lut")["term_bits"] > 0


def _generic_function_luts(n_inputs: int) -> int:
    """4-input LUTs of an arbitrary function of n inputs: one per 16 truth-table rows."""
    return 1 << max(0, n_inputs - 4)


@pytest.mark.parametrize("wbits,abits", [(3, 1), (3, 4), (4, 1), (4, 2), (4, 4), (5, 2), (5, 3)])
def test_exponential_shift_mux_is_priced_per_magnitude_bit(wbits, abits):
    """shift_luts counts, per column, each magnitude bit of (a << (f - 1)) as a function of the
    exponent field and the activation bits that can reach it, found here by enumerating the mux the
    RTL builds (ExponentialLane: a case per shift k = 1..top); it grows with abits x top, where
    term_bits grows with abits + top (yosys, results/resource_calibration.md: W4A4 lanes 70.6 LUT a
    column against 34.6 for W4A2, which term_bits alone priced at 40.9)."""
    from rtl_gen.mac import ExponentialLane

    cfg = LayerConfig(wbits=wbits, abits=abits, hidden=8, weight_code="exponential")
    code = cfg.weight_coding
    reach = [set() for _ in range(abits + code.top - 1)]  # activation bits each magnitude bit can take
    for k in range(1, code.top + 1):
        for i in range(abits):
            reach[i + k - 1].add(i)
    want = sum(_generic_function_luts(code.exp_bits + len(r)) for r in reach)
    assert ExponentialLane.shift_luts_of(cfg) == want
    fold = Folding(pe=4, simd=8)
    assert cost.features(cfg, fold, "ecp5")["mac_lanes"]["shift_luts"] == 4 * 8 * want
    bal = LayerConfig(wbits=4, abits=abits, hidden=8)
    assert cost.features(bal, fold, "ecp5")["mac_lanes"]["shift_luts"] == 0


def test_exponential_cost_follows_abits_times_top():
    """At equal folding the W4A4 exponential lanes cost about twice the W4A2 ones (yosys: 70.6 vs 34.6
    LUT a column), not the 1.2x that term widths alone give."""
    fold = Folding(pe=4, simd=16)
    lanes = {a: cost.estimate(LayerConfig(wbits=4, abits=a, hidden=16, weight_code="exponential"), fold,
                              "ecp5")["blocks"]["mac_lanes"]["lut"] for a in (2, 4)}
    assert lanes[4] > 1.7 * lanes[2], lanes


def test_a_change_in_a_block_report_changes_the_estimate(monkeypatch):
    """The estimate has no second description of the blocks: one more register in ScaleBias's
    report is PE more flip-flops in the scale_bias block."""
    cfg, fold = LayerConfig(wbits=2, abits=2, hidden=8), Folding(pe=4, simd=4)
    before = cost.estimate(cfg, fold, "ice40")["blocks"]["scale_bias"]["ff"]
    built = rb.ScaleBias.built.__func__

    def more(cls, *args):
        b = built(cls, *args)
        return Built(**{**b.__dict__, "regs": b.regs + (Reg("extra", 5),)})

    monkeypatch.setattr(rb.ScaleBias, "built", classmethod(more))
    assert cost.estimate(cfg, fold, "ice40")["blocks"]["scale_bias"]["ff"] == before + 4 * 5


def test_gate_tables_are_as_wide_as_their_registers():
    """The report gives each gate's table and register the width of the unit's gate input; the
    tables rtl_gen builds have that width (lut_bits 9, gate_frac 8)."""
    cfg = LayerConfig(wbits=2, abits=2, hidden=8, candidate="tanh")
    widths = LstmUnit.gate_widths(cfg)
    tables = cfg.gate_set.tables(cfg)
    for gate in cfg.gate_set.gates:
        lut = rb.LookupTable(tables[gate], cfg.lut_bits)
        assert lut.shape.width == widths[gate]
        lut._MustUse__silence = True


def test_synthesized_modules_map_to_the_blocks_of_the_estimate():
    """A hierarchical synthesis is counted per block by the deepest named instance of a module's
    path, as rtl_gen.cost assigns the report tree (units nest: unit0.cell, mac.dot3)."""
    from rtl_gen.synth import TOP, block_of

    cases = {TOP: "state_and_control", f"{TOP}.mac": "state_and_control", f"{TOP}.mac.dot3": "mac_lanes",
             f"{TOP}.mac.asum": "activation_sum", f"{TOP}.unit0": "state_and_control",
             f"{TOP}.unit1.cell.fc": "cell_units", f"{TOP}.unit0.clut": "cell_luts",
             f"{TOP}.unit2.hq.prod": "h_requant", f"{TOP}.sb5.mul": "scale_bias", f"{TOP}.lut7": "gate_luts",
             f"{TOP}.wmem": "weight_memory", "elsewhere.dot0": None}
    assert {m: block_of(m) for m in cases} == cases
