"""The analytic resource model: what the core rtl_gen builds, priced per block for each FPGA family.

``core_built(cfg, fold, weights, consts)`` is the core's report (hwrnn.resources.Built): its own
registers and bias memory (rtl_gen/core.py) and, as submodules, the reports of the blocks it
instantiates (the weight memory, the weight coding's MAC array, PE scale-and-bias lanes, PE gate
tables, U gate-set units), each from the block's classmethod ``built``. ``estimate`` walks that
tree, assigns every submodule to a block of hwrnn.resources.BLOCKS by its instance name (as the
hierarchical synthesis of benchmarks/calibrate_resources.py does; unnamed ones belong to their
parent's block, the core's own logic to state_and_control), and sums per block:

* flip-flops: the kept register bits of the reports (constant, unread and duplicate bits out),
  minus those in DSP blocks: synth_xilinx packs a block's operand, product and post-adder registers
  into DSP48E1s when each of its multipliers fits one; on ECP5 rtl_gen.synth builds every fitting
  registered multiplier as a MULT18X18D with its own operand and product registers; plus the
  registers yosys adds around memories (LUT RAM: the read register; block RAM with a write port
  and a read-during-write check on ECP5 / iCE40: read-old-data emulation, 2 x width + address + 2;
  the core's own memories carry rtl_gen.memory.NO_RW_CHECK and get none);
* memories: hwrnn.fpga.map_memory per memory name (copies of one name share the mapping of the
  first: the gate tables map as the sigmoid table);
* DSP blocks: hwrnn.fpga.dsp_tiles per multiplier;
* LUTs and carry cells: the fitted coefficients (hwrnn.resources.coefficients) times the reports'
  structural sizes (``logic``) and the sizes the memory mapping gives (ROMs in logic, emulation,
  LUT-RAM read muxes); a unit with a measured cost (the float cell) uses that instead. Totals are a
  flattened synthesis: LUT and carry times the family's flattening factor, flip-flops less those
  merged across blocks (``flat_ff_saving``).

Accuracy against yosys is in results/resource_calibration.md. Latency is exact
(hwrnn.datapath.latency); Fmax is not modelled.
"""
from __future__ import annotations

import re

from hwrnn import formats as fm
from hwrnn.config import Folding, LayerConfig
from hwrnn.datapath import SCALE_BIAS_STAGES, Geometry, s1_width
from hwrnn.devices import FAMILIES, check_family
from hwrnn.fpga import LUT_INPUTS, MUX_COST, dsp_tiles, lutram_read_mux_bits, map_memory, mult18_fits
from hwrnn.resources import (BLOCK_FEATURES, BLOCKS, COEFFICIENTS, FLATTEN, RESOURCES, Built, Mem, Reg,
                             coefficients, layer_consts)

from .blocks import BitPlaneDot, LookupTable, ScaleBias
from .core import lane_tables
from .memory import WeightMemory
from .units import gate_set_unit_class, mac_built

#: instance name (without its index) -> block; the rest belongs to its parent's block
INSTANCE_BLOCKS = {
    "dot": "mac_lanes", "asum": "activation_sum", "sb": "scale_bias", "lut": "gate_luts",
    "clut": "cell_luts", "cell": "cell_units", "hq": "h_requant", "wmem": "weight_memory",
}
STATE_BLOCK = "state_and_control"


def instance_kind(name: str) -> str:
    """An instance name without its index suffix: dot3, dot3_1 (lane 3, plane 1), unit0_p1 (unit 0 of
    phase 1) -> dot, dot, unit; how INSTANCE_BLOCKS is looked up here and in rtl_gen.synth."""
    return re.sub(r"\d+(_p?\d+)*$", "", name)


#: what each memory of the core holds
MEMORY_TEXT = {"wmem": "weights", "bmem": "biases", "gate_rom": "gate tables", "cell_rom": "sigmoid(c) tables"}


# ---- the core's report ------------------------------------------------------------------------------

def core_built(cfg: LayerConfig, fold: Folding, weights: str = "memory", consts: dict | None = None) -> Built:
    """What rtl_gen.core.LstmCore builds (dsp=None), without elaborating it: its own registers
    (controller, activation / h / store registers, weight-load and control delay lines, gate registers)
    and bias memory, and its submodules' reports (per phase of the gate set: its units). ``consts``:
    see hwrnn.resources.layer_consts.
    Kept bits: the plane counter is constant without serial planes (ECP5 keeps one bit), the read
    address is unread with streamed weights and ``alive`` with stored ones, padding of act and
    h_next is never written, and the store-write copies of the valid and row-fold delay lines are
    the first stages of the result copies (merged)."""
    fold.check_against(cfg)
    g = Geometry(cfg, fold)
    bias_bits, mult_bits, shift = layer_consts(cfg, consts)
    PE, S, A = fold.pe, fold.simd, cfg.abits
    H, X = cfg.hidden, cfg.input
    gate_set = cfg.gate_set
    phases = gate_set.phases
    NP = len(phases)
    NU = g.padded_units
    stores = gate_set.stores(cfg)
    memory = weights == "memory"
    serial = fold.planes == "serial"
    rf_w = max(1, (max(max(g.phase_row_folds(q) for q in range(NP)), 2) - 1).bit_length())
    ph_w = (NP - 1).bit_length()
    rfph_w = rf_w + ph_w
    cf_w = max(1, (max(g.col_folds, 2) - 1).bit_length())
    p_w = max(1, (max(g.plane_steps, 2) - 1).bit_length())
    p_kept = (g.plane_steps - 1).bit_length() if serial else 0
    addr_w = max(1, (g.depth - 1).bit_length())
    mac = mac_built(cfg, fold)
    luts = [(LookupTable.shape_of(contents).width, bits) for contents, bits in lane_tables(cfg, fold)]
    results = {ph.result for ph in phases} - {"h"}
    unit_classes = [gate_set_unit_class(cfg, q) for q in range(NP)]
    reads = any(ph.reads or unit_classes[q].reads_h for q, ph in enumerate(phases))
    regs = [
        Reg("rf", rf_w), Reg("cf", cf_w),
        Reg("p", p_w, p_kept if serial else {"ecp5": 1, "*": 0}),
        Reg("addr", addr_w, addr_w if memory else 0),
        Reg("cycles", 32), Reg("last_cycles", 32), Reg("fsm", 2), Reg("idle", 1),
        Reg("alive", 1, 0 if memory else 1),
        Reg("mult", mult_bits),
        Reg("act", g.padded_columns * A, (X + H) * A),
        Reg("h_next", NU * A, H * A),
        *(Reg(name, NU * A, H * A) for name in sorted(results)),
        *(Reg("c_all" if name == "c" else f"{name}_all", NU * st.width) for name, st in stores.items()),
        *((Reg("w_load", 1 + addr_w + g.word_bits),) if memory else (Reg("w_word", g.word_bits),)),
        Reg("ctl_w", 2 * (3 + rf_w + p_w), 2 * (3 + rf_w + p_kept)),
        Reg("w_reg", g.word_bits), Reg("act_slice", 2 * S * A),
        Reg("rf_mac", rfph_w * (mac.stages - 1)), Reg("s3_rf", rfph_w),
        Reg("v_sb", SCALE_BIAS_STAGES), Reg("rf_sb", rfph_w * SCALE_BIAS_STAGES),
        Reg("gate", sum(w for w, _bits in luts)),
        Reg("v_lut", 2), Reg("rf_lut", 2 * rfph_w),
    ]
    if NP > 1:
        regs += [Reg("phase", ph_w), Reg("phase_w", 2 * ph_w)]
    if reads:
        regs.append(Reg("rf_cread", rf_w, 0))
    subs = []
    store_mux = 0
    for q, ph in enumerate(phases):
        U, unit_cls = g.phase_units(q), unit_classes[q]
        unit = unit_cls.built(cfg)
        lat = unit.stages
        for name in ph.reads:
            regs.append(Reg(f"{name}_old", U * stores[name].width))
            store_mux += U * stores[name].width * (g.phase_row_folds(q) - 1)
        if unit_cls.reads_h:
            regs.append(Reg("h_old", U * A))
        write_lat = gate_set.write_stages(cfg, q)
        for name in ph.writes:
            wl = write_lat[name]
            regs += [Reg(f"v_{name}_write", wl, 0), Reg(f"rf_{name}_write", rf_w * wl, 0)]
        regs += [Reg("v_h", lat), Reg("rf_h", rf_w * lat)]
        subs.append(("unit", U, unit))
    mems = (Mem("bmem", PE * bias_bits, max(g.row_folds, 2), True, rw_check=False),)
    if not memory:  # no storage; listed so that the estimate shows how the weight memory would map
        mems += (Mem("wmem", g.word_bits, g.depth, True, copies=0, rw_check=False),)
    subs = ((("wmem", 1, WeightMemory.built(g.word_bits, g.depth)),) if memory else ()) + (
        ("mac", 1, mac),
        ("sb", PE, ScaleBias.built(cfg, fm.acc_width(cfg), mult_bits, bias_bits, shift)),
        *(("lut", 1, LookupTable.built(w, bits, "gate_rom")) for w, bits in luts),
        *subs,
    )
    store_bits = sum(st.width for st in stores.values())
    return Built(regs=tuple(regs), mems=mems, subs=subs, logic={
        "act_mux": S * A * (g.col_folds * NP - 1), "c_mux": store_mux,   # mux inputs
        "state_bits": H * (store_bits + (2 + len(results)) * A) + X * A + (0 if memory else g.word_bits),
        "const": 1})


# ---- summing per block ------------------------------------------------------------------------------

def block_instances(core: Built) -> dict[str, list[list[tuple[int, Built]]]]:
    """{block: [instance: [(copies, node)]]}: every node of the report tree in the block of its
    nearest named ancestor (INSTANCE_BLOCKS), grouped by the instance it is part of."""
    out: dict[str, list] = {b: [] for b in BLOCKS}

    def walk(node, n, inst):
        inst.append((n, node))
        for name, k, sub in node.subs:
            block = INSTANCE_BLOCKS.get(instance_kind(name))
            if block is None:
                walk(sub, n * k, inst)
            else:
                new = []
                out[block].append(new)
                walk(sub, n * k, new)

    root = []
    out[STATE_BLOCK].append(root)
    walk(core, 1, root)
    return out


def _ecp5_packed(m) -> bool:
    """A registered multiplier rtl_gen.synth builds as MULT18X18D(s) with their own registers."""
    return (mult18_fits(m.a_bits, m.a_signed, m.b_bits, m.b_signed)
            or (m.split and m.a_bits > 18 and mult18_fits(m.a_bits - 18, m.a_signed, m.b_bits, m.b_signed)))


def dsp_absorbs(family: str, inst: list[tuple[int, Built]]) -> bool:
    """Whether synth_xilinx packs the instance's registers around its multipliers into DSP48E1s
    (operand registers, MREG, PREG: yosys xilinx_dsp): when each multiplier fits one DSP.
    synth_ecp5 and synth_ice40 -dsp pack none (measured with yosys 0.70)."""
    mults = [m for _n, node in inst for m in node.mults]
    return (family == "xilinx" and bool(mults) and all(node.dsp_packing for _n, node in inst)
            and all(dsp_tiles(family, m.a_bits, m.b_bits) == 1 for m in mults))


def _mem_ff(mm, mem: Mem) -> int:
    """Registers of one copy of a memory: block RAM keeps its read register (emulation adds
    2 x width + address + 2 around a written ECP5 / iCE40 block RAM); LUT RAM and logic take one."""
    if mm.kind == "bram":
        return 2 * mem.width + max(1, (mem.depth - 1).bit_length()) + 2 if mm.emulation else 0
    return mem.width


def memories(core: Built, family: str) -> dict:
    """{memory name: (first Mem of that name, copies in the core, hwrnn.fpga.MemMap)}."""
    found: dict[str, list] = {}

    def walk(node, n):
        for mem in node.mems:
            if mem.name in found:
                found[mem.name][1] += n * mem.copies
            else:
                found[mem.name] = [mem, n * mem.copies]
        for _name, k, sub in node.subs:
            walk(sub, n * k)

    walk(core, 1)
    return {k: (mem, n, map_memory(family, mem.width, mem.depth, mem.write, mem.rw_check)) for k, (mem, n) in found.items()}


def block_counts(core: Built, family: str) -> dict[str, dict]:
    """Per block: {"ff", "dsp", "bram", "lutram", "features", "measured"} (unrounded) and, under
    "absorbed", whether its instances' DSP registers went into DSP48E1s."""
    maps = memories(core, family)
    k = LUT_INPUTS[family]
    out = {}
    for b, insts in block_instances(core).items():
        ff = dsp = bram = lutram = 0
        feats: dict[str, float] = {}
        rom = emul = mux = 0
        measured, absorbed = None, False
        for inst in insts:
            absorb = dsp_absorbs(family, inst)
            absorbed = absorbed or absorb
            packing = all(node.dsp_packing for _n, node in inst)
            for n, node in inst:
                ff += n * node.ff(family)
                for m in node.mults:
                    dsp += n * dsp_tiles(family, m.a_bits, m.b_bits)
                    if absorb or (family == "ecp5" and packing and _ecp5_packed(m)):
                        ff -= n * m.regs
                if absorb:
                    ff -= n * node.post_adder
                for mem in node.mems:
                    mm = maps[mem.name][2]
                    c = n * mem.copies
                    ff += c * _mem_ff(mm, mem)
                    bram += mm.bram * c
                    lutram += mm.lutram * c
                    if mm.kind == "logic":
                        rom += c * (mem.depth / (1 << k)) * mem.width
                    if mm.emulation:
                        emul += c * mem.width
                    if mm.kind == "lutram":
                        mux += c * lutram_read_mux_bits(mem.width, mem.depth)
                for f, v in node.logic.items():
                    feats[f] = feats.get(f, 0) + n * v
                if node.measured is not None:
                    measured = (n, node.measured)
        for f in ("act_mux", "c_mux"):
            if f in feats:
                feats[f] = feats[f] * MUX_COST[family]
        feats.update({"rom_luts": rom, "emulation_bits": emul, "lutram_mux_bits": mux, "bias_bits": emul})
        out[b] = {"ff": ff, "dsp": dsp, "bram": bram, "lutram": lutram, "measured": measured,
                  "absorbed": absorbed, "features": {f: feats.get(f, 0) for f in BLOCK_FEATURES[b]}}
    return out


#: blocks whose multiplier operands come straight from registers of the core (the gate registers
#: and c_old; the last o delay and sc), which a DSP48E1 takes in as its second operand stage
FED_BY_REGISTERS = ("cell_units", "h_requant")


def flat_ff_saving(core: Built, counts: dict, family: str) -> int:
    """Flip-flops a flattened synthesis saves against the sum of the blocks:
    * identical registers in different blocks are merged: the PE scale-and-bias lanes' copies of
      the multiplier M (operand b of their multipliers; one is left, unless they are the DSP
      blocks' own registers), and in serial mode the PE lanes' copies of the plane shift delayed
      along the popcount trees (all of them: the MAC array delays the plane alongside anyway);
    * 7-series: the registers feeding an absorbed block's multipliers (FED_BY_REGISTERS) are packed
      into its DSP blocks too."""
    saving = 0
    insts = block_instances(core)
    for inst in insts["scale_bias"]:
        for n, node in inst:
            for m in node.mults:
                if not ((family == "ecp5" and _ecp5_packed(m)) or counts["scale_bias"]["absorbed"]):
                    saving += (n - 1) * m.b_bits
    for inst in insts["mac_lanes"]:
        saving += sum(n * r.ff(family) for n, node in inst for r in node.regs if r.name == "shift")
    for b in FED_BY_REGISTERS:
        for inst in insts[b]:
            if dsp_absorbs(family, inst):
                saving += sum(n * (m.a_bits + m.b_bits) for n, node in inst for m in node.mults)
    return saving


# ---- the estimate -----------------------------------------------------------------------------------

def _rounded(c: dict) -> dict:
    out = {}
    for k, v in c.items():
        if k == "bram" and float(v) != int(v):
            out[k] = round(float(v), 1)
        else:
            out[k] = int(round(v))
    return out


def features(cfg: LayerConfig, fold: Folding, family: str, weights: str = "memory",
             consts: dict | None = None) -> dict[str, dict[str, float]]:
    """{block: {feature: size}}: what the LUT / carry coefficients of each block multiply
    (benchmarks/calibrate_resources.py fits them to these)."""
    return {b: c["features"] for b, c in block_counts(core_built(cfg, fold, weights, consts), family).items()}


def estimate(cfg: LayerConfig, fold: Folding, family: str, weights: str = "memory",
             consts: dict | None = None) -> dict:
    """Predicted yosys counts of the core: {"family", "weights", "blocks": {block: counts}, "total":
    counts, "memories", "widths", "calibrated"}. Totals are what a flattened synthesis reports."""
    check_family(family)
    core = core_built(cfg, fold, weights, consts)
    counts = block_counts(core, family)
    blocks = {}
    for b in BLOCKS:
        c = counts[b]
        row = {}
        for res in ("lut", "carry"):
            coef = coefficients(family, b, res)
            row[res] = max(0.0, sum(coef.get(f, 0.0) * v for f, v in c["features"].items()))
        if c["measured"] is not None:  # a unit measured as a whole, scaled from ECP5 like the fitted unit
            n, cost = c["measured"]
            for res, v in zip(("lut", "carry"), cost):
                fixed = coefficients(family, b, res).get("units", 0.0)
                ecp5 = coefficients("ecp5", b, res).get("units", 0.0) or 1.0
                row[res] = n * v * fixed / ecp5
        row.update(ff=c["ff"], dsp=c["dsp"], bram=c["bram"], lutram=c["lutram"])
        blocks[b] = row
    flat = FLATTEN.get(family, {})
    total = {}
    for res in RESOURCES:
        s = sum(blocks[b][res] for b in BLOCKS)
        total[res] = s * flat.get(res, 1.0) if res in ("lut", "carry") else s
    total["ff"] -= flat_ff_saving(core, counts, family)
    mems = memories(core, family)
    g = Geometry(cfg, fold)
    bias_bits, mult_bits, shift = layer_consts(cfg, consts)
    aw = fm.acc_width(cfg)
    serial = fold.planes == "serial"
    return {
        "family": family, "weights": weights,
        "blocks": {b: _rounded(blocks[b]) for b in BLOCKS}, "total": _rounded(total),
        "memories": {k: {"kind": mems[k][2].kind, "bram": mems[k][2].bram, "lutram": mems[k][2].lutram}
                     for k in MEMORY_TEXT if k in mems},
        "widths": {"dot": BitPlaneDot.output_width(fold.simd, g.planes_per_word, cfg.abits,
                                                   (cfg.wbits - 1) if serial else 0),
                   "accumulator": s1_width(cfg), "acc": aw,
                   "product": ScaleBias.product_width(aw, mult_bits, bias_bits, shift), "bias": bias_bits,
                   "shift": shift, "weight_word": g.word_bits, "weight_depth": g.depth},
        "calibrated": family in COEFFICIENTS,
    }


def estimate_all(cfg: LayerConfig, fold: Folding, weights: str = "memory", consts: dict | None = None) -> dict:
    return {f: estimate(cfg, fold, f, weights, consts) for f in FAMILIES}


def memory_table(cfg: LayerConfig, fold: Folding, family: str, weights: str = "memory",
                 consts: dict | None = None) -> list[dict]:
    """One row per memory the core holds: name, what it holds, width, depth, copies, bits (all
    copies), kind ("bram" / "lutram" / "logic") and block RAM primitives (all copies; Xilinx: 36
    kbit tiles)."""
    mems = memories(core_built(cfg, fold, weights, consts), family)
    rows = []
    for k in MEMORY_TEXT:
        if k in mems and mems[k][1]:
            mem, n, mm = mems[k]
            rows.append({"name": k, "holds": MEMORY_TEXT[k], "width": mem.width, "depth": mem.depth, "count": n,
                         "bits": mem.width * mem.depth * n, "kind": mm.kind, "blocks": mm.bram * n})
    return rows
