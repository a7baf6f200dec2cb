"""Resource / latency / throughput sections of manifest.json and report.txt, and the logic of
``python -m rtl_gen report <out_dir> [--synth FAMILY]`` and ``python -m rtl_gen ... --estimate``.

The analytic estimate (rtl_gen.cost) reads the blocks' reports without elaborating anything: the
report of any configuration renders in well under a second. Synthesis (rtl_gen.synth) is imported
only when asked for.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

from hwrnn import formats as fm
from hwrnn.config import ConfigError, Folding, LayerConfig
from hwrnn.datapath import (Geometry, latency, mac_bound, memory_bits, pipeline_depth, pipeline_stages,
                            sequence_cycles, step_period)
from hwrnn.devices import FAMILIES, weight_fit
from hwrnn.fpga import BRAM_UNIT, device_fit
from hwrnn.resources import ASSUMED_MHZ, BLOCK_TEXT, BLOCKS, derived

from .cost import estimate
from .memory import WMEM_MODULE

MODEL_NOTE = ("analytic model rtl_gen.cost, calibrated against yosys "
              "(accuracy: results/resource_calibration.md)")

MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.txt"
WEIGHTS_FILE = "weights.hex"

#: reserved words of Verilog-2005 and SystemVerilog-2017 (a module named like one does not parse)
VERILOG_KEYWORDS = frozenset("""
accept_on alias always always_comb always_ff always_latch and assert assign assume automatic before begin bind
bins binsof bit break buf bufif0 bufif1 byte case casex casez cell chandle checker class clocking cmos config
const constraint context continue cover covergroup coverpoint cross deassign default defparam design disable dist
do edge else end endcase endchecker endclass endclocking endconfig endfunction endgenerate endgroup endinterface
endmodule endpackage endprimitive endprogram endproperty endspecify endsequence endtable endtask enum event
eventually expect export extends extern final first_match for force foreach forever fork forkjoin function
generate genvar global highz0 highz1 if iff ifnone ignore_bins illegal_bins implements implies import incdir
include initial inout input inside instance int integer interconnect interface intersect join join_any join_none
large let liblist library local localparam logic longint macromodule matches medium modport module nand negedge
nettype new nexttime nmos nor noshowcancelled not notif0 notif1 null or output package packed parameter pmos
posedge primitive priority program property protected pull0 pull1 pulldown pullup pulsestyle_ondetect
pulsestyle_onevent pure rand randc randcase randsequence rcmos real realtime ref reg reject_on release repeat
restrict return rnmos rpmos rtran rtranif0 rtranif1 s_always s_eventually s_nexttime s_until s_until_with
scalared sequence shortint shortreal showcancelled signed small soft solve specify specparam static string
strong strong0 strong1 struct super supply0 supply1 sync_accept_on sync_reject_on table tagged task this
throughout time timeprecision timeunit tran tranif0 tranif1 tri tri0 tri1 triand trior trireg type typedef union
unique unique0 unsigned until until_with untyped use uwire var vectored virtual void wait wait_order wand weak
weak0 weak1 while wildcard wire with within wor xnor xor""".split())


class ReportError(ValueError):
    """A report that cannot be made; one line."""


def check_module_name(name) -> None:
    """ConfigError unless ``name`` can name the emitted top module: a plain Verilog identifier
    (letters, digits, _; not starting with a digit), not a reserved word and not the name of a module
    the output also holds (the weight memory, rtl_gen.memory.WMEM_MODULE)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"--name must be a Verilog identifier (letters, digits and _), got {name!r}")
    if name in VERILOG_KEYWORDS:
        raise ConfigError(f"--name {name} is a Verilog keyword")
    if name == WMEM_MODULE:
        raise ConfigError(f"--name {name} is the name of the weight memory module the output also holds")


def file_digest(data: bytes) -> str:
    """How the manifest's "files" entry names a file's contents: "sha256:<hex>"."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_sections(cfg: LayerConfig, fold: Folding, weights: str, steps: int, bias_bits: int) -> dict:
    """The manifest sections that follow from the configuration alone (with the bias width, a
    property of the layer's biases): geometry, latency, memory and device fit. rtl_gen writes them
    and ``verify_output`` re-derives them, so a hand-edited manifest is refused."""
    g = Geometry(cfg, fold)
    phases = cfg.gate_set.phases
    lat = latency(cfg, fold)
    return {
        "geometry": {
            "units_per_fold": g.units_per_fold, "row_folds": g.row_folds, "col_folds": g.col_folds,
            "plane_steps": g.plane_steps, "weight_word_bits": g.word_bits, "weight_depth": g.depth,
            "phases": [{"gates": list(ph.gates), "columns": f"[x ; {ph.source}]", "writes": ph.result,
                        "units_per_fold": g.phase_units(q), "row_folds": g.phase_row_folds(q),
                        "mac_cycles": g.phase_depth(q), "pipeline_depth": pipeline_depth(cfg, fold, q)}
                       for q, ph in enumerate(phases)],
        },
        "latency": {
            "cycles_per_step": latency(cfg, fold),
            "step_period": step_period(cfg, fold),
            "steps": steps,
            "cycles_per_sequence": sequence_cycles(cfg, fold, steps),
            "mac_cycles": g.mac_cycles,
            "pipeline_depth": lat - g.mac_cycles,
            "pipeline_stages": (pipeline_stages(cfg, fold) if len(phases) == 1 else
                                {f"phase {q + 1} ({', '.join(ph.gates)})": pipeline_stages(cfg, fold, q)
                                 for q, ph in enumerate(phases)}),
            "mac_bound": mac_bound(cfg, fold),
            "formula": ("row_folds * col_folds * plane_steps + pipeline_depth" if len(phases) == 1 else
                        "sum over phases (row_folds_p * col_folds * plane_steps + pipeline_depth_p) - (phases - 1)")
                       + (" + cycles the w stream is not valid while the core waits" if weights == "stream" else ""),
        },
        "memory": {
            "weight_bits": memory_bits(cfg),
            "weight_bits_padded": g.weight_bits,
            "weights_file": WEIGHTS_FILE,
            "on_chip_weight_bits": g.weight_bits if weights == "memory" else 0,
            "stream_bits_per_step": g.weight_bits if weights == "stream" else 0,
            "bias_bits": g.row_folds * fold.pe * bias_bits,
            "fp32_weight_bits": 32 * memory_bits(cfg),
        },
        "devices": weight_fit(g.weight_bits),
    }


# ---- manifest sections ----------------------------------------------------------------------------

def consts_of(manifest_scale: dict | None) -> dict | None:
    if not manifest_scale:
        return None
    return {"bias_bits": manifest_scale.get("bias_bits"), "mult_bits": manifest_scale.get("multiplier_bits"),
            "shift": manifest_scale.get("shift")}


def resources_section(cfg: LayerConfig, fold: Folding, weights: str, consts: dict | None) -> dict:
    """manifest["resources"]: the analytic estimate per family, with device fit (hwrnn.fpga's check)."""
    out = {"model": MODEL_NOTE, "families": {}}
    for fam in FAMILIES:
        e = estimate(cfg, fold, fam, weights, consts)
        out["families"][fam] = {"total": e["total"], "blocks": e["blocks"], "memories": e["memories"],
                                "devices": device_fit(fam, e["total"]), "calibrated": e["calibrated"]}
    return out


def derived_section(cfg: LayerConfig, fold: Folding, weights: str, steps: int, bias_bits: int | None,
                    fmax_mhz: float | None = None) -> dict:
    d = derived(cfg, fold, fmax_mhz, steps, weights, bias_bits)
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


def add_analytic(manifest: dict) -> dict:
    """Fill manifest["resources"] and manifest["derived"] (in place; returns manifest)."""
    cfg = LayerConfig.from_dict(manifest["config"])
    fold = Folding(**manifest["folding"])
    weights = manifest.get("weights", "memory")
    consts = consts_of(manifest.get("scale"))
    steps = manifest.get("latency", {}).get("steps", 35)
    manifest["resources"] = resources_section(cfg, fold, weights, consts)
    manifest["derived"] = derived_section(cfg, fold, weights, steps, (consts or {}).get("bias_bits"))
    return manifest


def add_synthesis(manifest: dict, result: dict) -> dict:
    """Store a synthesis result (rtl_gen.synth.synthesize) in manifest["synthesis"][family], with
    the derived figures at its Fmax and the device fit of its counts."""
    cfg = LayerConfig.from_dict(manifest["config"])
    fold = Folding(**manifest["folding"])
    fam = result["family"]
    entry = {k: v for k, v in result.items() if k not in ("family",)}
    pnr = result.get("pnr") or {}
    consts = consts_of(manifest.get("scale"))
    steps = manifest.get("latency", {}).get("steps", 35)
    entry["devices"] = device_fit(fam, result["counts"])
    if pnr.get("fmax_mhz"):
        entry["derived"] = derived_section(cfg, fold, manifest.get("weights", "memory"), steps,
                                           (consts or {}).get("bias_bits"), pnr["fmax_mhz"])
    manifest.setdefault("synthesis", {})[fam] = entry
    return manifest


# ---- text -----------------------------------------------------------------------------------------

def _si(v: float, unit: str = "") -> str:
    for div, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g} {p}{unit}"
    return f"{v:.3g} {unit}".rstrip()


def _bits(b: float) -> str:
    if b >= 1e6:
        return f"{b / 1e6:.2f} Mbit ({b / 8 / 1024 / 1024:.2f} MiB)"
    if b >= 1e4:
        return f"{b / 1e3:.1f} kbit ({b / 8 / 1024:.1f} KiB)"
    return f"{b:.0f} bit"


def _counts_row(c: dict) -> str:
    return (f"{c['lut']:>8} {c['ff']:>8} {c['carry']:>6} {c['bram']:>6} {c['dsp']:>4} {c['lutram']:>6}")


def _fit_list(devs: dict) -> str:
    fit = [d for d, v in devs.items() if v["fits"]]
    return ", ".join(fit) if fit else "none of " + ", ".join(devs)


def derived_text(d: dict, indent: str = "  ") -> list[str]:
    clk = f"{d['clock_mhz']:g} MHz" + ("" if d["clock_measured"] else " (assumed: SPEC target, not measured)")
    lines = [
        f"{indent}at {clk}: {d['us_per_step']:.3f} us per time step ({d['cycles_per_step']} cycles), "
        f"{d['us_per_sequence']:.1f} us per sequence of {d['steps']} steps ({d['cycles_per_sequence']} cycles), "
        f"{d['steps_per_s']:,.0f} time steps/s",
        f"{indent}MAC rate {_si(d['mac_per_s'], 'MAC/s')} ({d['macs_per_step']:,} MACs per step, "
        f"{100 * d['mac_utilisation']:.0f} % of the PE x SIMD array busy); binary AND+popcount operations "
        f"{_si(d['binary_ops_per_s'], 'op/s')} (wbits*abits per MAC)",
    ]
    if d.get("weight_stream_bits_per_s"):
        lines.append(f"{indent}streamed weights need {_si(d['weight_stream_bits_per_s'] / 8, 'B/s')} into port w")
    return lines


def size_text(d: dict, cfg: dict, indent: str = "  ") -> list[str]:
    return [
        f"{indent}model size: weights {_bits(d['weight_bits'])} = {d['weight_ratio']:.4f} of FP32 (claim k/32 = "
        f"{cfg['wbits']}/32 = {d['claimed_weight_ratio']:.4f}); with fixed-point biases and the LUT tables "
        f"{_bits(d['model_bits'])} = {d['model_ratio']:.4f} of FP32 ({_bits(d['fp32_model_bits'])})",
        f"{indent}run-time activation memory: x and h codes {d['x_h_ratio']:.4f} of FP32 (claim k/32 = "
        f"{cfg['abits']}/32 = {d['claimed_activation_ratio']:.4f}); with the {cfg['cell']} cell state "
        f"{_bits(d['activation_bits'])} = {d['activation_ratio']:.4f} of FP32 ({_bits(d['fp32_activation_bits'])})",
    ]


def resources_text(manifest: dict, blocks_for: str | None = "ecp5") -> str:
    """The report section of resources, derived figures and any synthesis results."""
    res = manifest.get("resources")
    if not res:
        return ""
    cfg = manifest["config"]
    lines = [f"resources ({res['model']}):",
             f"  {'family':<8} {'LUT':>8} {'FF':>8} {'carry':>6} {'BRAM':>6} {'DSP':>4} {'LUTRAM':>6}  fits"]
    for fam, e in res["families"].items():
        lines.append(f"  {fam:<8} {_counts_row(e['total'])}  {_fit_list(e['devices'])}")
    lines.append("  BRAM in " + "; ".join(f"{f}: {u}" for f, u in BRAM_UNIT.items())
                 + "; LUTRAM: ECP5 DPR16X4 cells, Xilinx LUTs used as RAM")
    if blocks_for and blocks_for in res["families"]:
        lines.append(f"  per block ({blocks_for}, hierarchical counts):")
        for b in BLOCKS:
            c = res["families"][blocks_for]["blocks"][b]
            lines.append(f"    {b:<18} {_counts_row(c)}  {BLOCK_TEXT[b]}")
    d = manifest.get("derived")
    if d:
        lines.append("throughput and size:")
        lines += derived_text(d)
        lines += size_text(d, cfg)
    for fam, s in (manifest.get("synthesis") or {}).items():
        lines += synthesis_text(fam, s, res["families"].get(fam))
    for fam, err in (manifest.get("synthesis_errors") or {}).items():
        lines.append(f"synthesis {fam} failed: {err}")
    return "\n".join(lines) + "\n"


def _err(pred: float, real: float) -> str:
    if not real:
        return "-" if not pred else "+inf"
    return f"{100 * (pred - real) / real:+.0f}%"


def synthesis_text(fam: str, s: dict, est: dict | None) -> list[str]:
    c = s["counts"]
    lines = [f"synthesis {fam} ({s.get('tool', 'yosys')}, {' '.join(s['script'][1:2])}; {s['synth_seconds']} s):"]
    lines.append(f"  {'':<8} {'LUT':>8} {'FF':>8} {'carry':>6} {'BRAM':>6} {'DSP':>4} {'LUTRAM':>6}")
    lines.append(f"  {'yosys':<8} {_counts_row(c)}")
    if est:
        t = est["total"]
        lines.append(f"  {'model':<8} {_counts_row(t)}  (LUT {_err(t['lut'], c['lut'])}, FF {_err(t['ff'], c['ff'])})")
    if c.get("lut_total") is not None:
        lines.append(f"  LUTs including LUTs used as memory (Vivado's 'LUT'): {c['lut_total']}")
    if s.get("dsp_mapping") and s["dsp_mapping"] != "synth_ice40 -dsp":
        lines.append(f"  multipliers: {s['dsp_mapping']}")
    lines.append(f"  fits: {_fit_list(s['devices'])}")
    pnr = s.get("pnr")
    if pnr:
        lines.append(f"  nextpnr {pnr['device']}: Fmax {pnr['fmax_mhz']} MHz (target {pnr['target_mhz']} MHz"
                     f"{', met' if pnr['fmax_mhz'] >= pnr['target_mhz'] else ', NOT met'}); {pnr['note']}; "
                     f"{pnr['seconds']} s")
        cp = pnr.get("critical_path")
        if cp:
            lines.append(f"  critical path {cp['delay_ns']} ns ({cp['logic_ns']} logic, {cp['routing_ns']} routing): "
                         f"{cp['from']} -> {cp['to']}")
            lines.append(f"    through {' > '.join(cp['blocks'][:12])}")
        if s.get("derived"):
            lines += derived_text(s["derived"], "  ")
    elif s.get("pnr_error"):
        lines.append(f"  place-and-route: {s['pnr_error']}")
    if s.get("note"):
        lines.append(f"  {s['note']}")
    return lines


# ---- the output directory --------------------------------------------------------------------------

def load_manifest(out_dir: str) -> dict:
    """manifest.json of out_dir with a valid config and folding (ReportError otherwise); its files
    are not checked (``verify_output`` does)."""
    path = os.path.join(out_dir, MANIFEST_FILE)
    try:
        with open(path) as fh:
            man = json.load(fh)
    except FileNotFoundError:
        raise ReportError(f"{path} not found: generate the core first (python -m rtl_gen ... -o {out_dir})") from None
    except (OSError, ValueError) as e:
        raise ReportError(f"{path} is not a readable manifest ({e})") from None
    if not isinstance(man, dict):
        raise ReportError(f"{path} is not an rtl_gen manifest (not a JSON object)")
    if man.get("kind") == "stack":
        raise ReportError(f"{path} describes a stack (python -m rtl_gen stack): its report.txt is written with it; "
                          f"`rtl_gen report` re-reports single-layer cores")
    for key in ("config", "folding", "name"):
        if key not in man:
            raise ReportError(f"{path} has no '{key}' entry: not an rtl_gen manifest")
    try:
        LayerConfig.from_dict(man["config"])
        if not isinstance(man["folding"], dict):
            raise TypeError("not an object")
        Folding(**man["folding"])
    except (ConfigError, TypeError) as e:
        raise ReportError(f"{path}: invalid config or folding ({e})") from None
    return man


def manifest_files(man: dict, path: str = MANIFEST_FILE) -> dict:
    """The manifest's {file name: digest} (every file of the set but the manifest), checked to be
    plain file names in the output directory; ReportError otherwise."""
    files = man.get("files")
    if not isinstance(files, dict) or not files:
        raise ReportError(f"{path} names no files with their hashes (written by an earlier rtl_gen?): "
                          f"generate the core again")
    for name, digest in files.items():
        if name in ("", ".", "..", MANIFEST_FILE) or os.path.basename(name) != name or "\\" in name:
            raise ReportError(f"{path} names {name!r}, which is not a file of the output directory")
        if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ReportError(f"{path}: the hash of {name} is not sha256:<64 hex digits>")
    return files


def _check_files(man: dict, out_dir: str, path: str, rewritten=()) -> None:
    files = manifest_files(man, path)
    for name in (f"{man['name']}.v", REPORT_FILE, man["memory"]["weights_file"]):
        if name not in files:
            raise ReportError(f"{path} names no file {name}")
    for name, digest in files.items():
        if name in rewritten:
            continue
        fpath = os.path.join(out_dir, name)
        try:
            with open(fpath, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise ReportError(f"{fpath} is missing (named by {path}): an incomplete output set") from None
        except OSError as e:
            raise ReportError(f"{fpath} cannot be read ({e.strerror or e})") from None
        if file_digest(data) != digest:
            raise ReportError(f"{fpath} differs from its hash in {path} (edited, or from another run)")


def _check_derived(man: dict, path: str) -> None:
    """The sections that follow from config, folding, weights and scale equal their re-derivation."""
    cfg = LayerConfig.from_dict(man["config"])
    fold = Folding(**man["folding"])
    fold.check_against(cfg)
    weights = man["weights"]
    if weights not in ("memory", "stream"):
        raise ReportError(f"{path}: weights must be 'memory' or 'stream', got {weights!r}")
    steps = man["latency"].get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ReportError(f"{path}: latency.steps must be an integer >= 1, got {steps!r}")
    sc = man["scale"]
    bias_bits, M, R, s = sc["bias_bits"], sc["multiplier"], sc["shift"], sc["s"]
    for key, v in (("bias_bits", bias_bits), ("multiplier", M), ("shift", R)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ReportError(f"{path}: scale.{key} must be a positive integer, got {v!r}")
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        raise ReportError(f"{path}: scale.s must be a number, got {s!r}")
    try:
        if fm.scale_shift(cfg, float(s)) != (M, R):
            raise ReportError(f"{path}: scale multiplier and shift disagree with scale.s and the config")
    except ValueError as e:
        if isinstance(e, ReportError):
            raise
        raise ReportError(f"{path}: {e}") from None
    want = json.loads(json.dumps(config_sections(cfg, fold, weights, steps, bias_bits)))
    for key in ("latency", "geometry", "memory", "devices"):
        if man[key] != want[key]:
            raise ReportError(f"{path}: {key} disagrees with the config and folding it was generated from "
                              f"(hand-edited?)")
    formats = json.loads(json.dumps(fm.tap_formats(cfg, M, R)))
    have = json.loads(json.dumps(man["formats"]))
    if isinstance(have.get("z"), dict):
        have["z"].pop("bias_bits", None)
    if have != formats:
        raise ReportError(f"{path}: formats disagree with the config (hand-edited?)")


def verify_output(out_dir: str, rewritten=()) -> dict:
    """The manifest of an rtl_gen output directory after checking it describes the files beside it:
    every file it names has its sha256 (so the set is complete and of one run), and the sections that
    follow from its config (latency, geometry, memory, devices, formats, scale) equal their
    re-derivation. ReportError (one line) otherwise. What every reader of an output directory calls;
    ``rewritten``: files the caller is about to write anew (rtl_gen report: report.txt), not read."""
    man = load_manifest(out_dir)
    path = os.path.join(out_dir, MANIFEST_FILE)
    for key in ("weights", "latency", "geometry", "memory", "devices", "formats", "scale", "files"):
        if key not in man:
            raise ReportError(f"{path} has no '{key}' entry (hand-edited, or written by an earlier rtl_gen)")
    for key in ("latency", "geometry", "memory", "devices", "formats", "scale"):
        if not isinstance(man[key], dict):
            raise ReportError(f"{path}: {key} must be a JSON object")
    try:
        check_module_name(man["name"])
        _check_files(man, out_dir, path, rewritten)
        _check_derived(man, path)
    except ReportError:
        raise
    except ConfigError as e:
        raise ReportError(f"{path}: {e}") from None
    except KeyError as e:
        raise ReportError(f"{path}: missing entry {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ReportError(f"{path} is malformed ({type(e).__name__}: {e})") from None
    return man


def write_manifest_and_report(out_dir: str, manifest: dict, base_report) -> str:
    """Rewrite report.txt (base_report(manifest) + resources_text) and manifest.json (its hash of
    report.txt updated) as one set (rtl_gen.emit.write_output: the manifest last)."""
    from .emit import write_output

    text = base_report(manifest)
    manifest.setdefault("files", {})[REPORT_FILE] = file_digest(text.encode())
    write_output({REPORT_FILE: text, MANIFEST_FILE: json.dumps(manifest, indent=2, sort_keys=True) + "\n"}, out_dir)
    return text


def rebuild_layer(manifest: dict, out_dir: str):
    """The QuantLayer the output directory was generated from (random seed, shipped trained layer
    or checkpoint in manifest["weights_source"]), checked against the manifest's scale constants."""
    from hwrnn.checkpoint import CheckpointError, QuantLayer, load_layer

    cfg = LayerConfig.from_dict(manifest["config"])
    src = manifest.get("weights_source", "")
    m = re.match(r"random \(seed (-?\d+)", src)
    shipped = re.match(r"trained PTB layer hwrnn/data/(\S+)", src)
    if m:
        layer = QuantLayer.random(cfg, seed=int(m.group(1)))
    elif shipped:  # hwrnn.pretrained.describe: a layer shipped as package data
        from hwrnn import pretrained

        try:
            layer = load_layer(pretrained.DATA_DIR / shipped.group(1))
        except CheckpointError as e:
            raise ReportError(str(e)) from None
    else:
        m = re.match(r"checkpoint (.+)$", src)
        if not m:
            raise ReportError(f"cannot tell where the weights of {out_dir} came from ({src!r})")
        path = m.group(1)
        cands = [path, os.path.join(out_dir, path), os.path.join(out_dir, os.path.basename(path))]
        found = next((p for p in cands if os.path.exists(p)), None)
        if not found:
            raise ReportError(f"checkpoint {path} (the source of {out_dir}) not found")
        try:
            layer = load_layer(found)
        except CheckpointError as e:
            raise ReportError(str(e)) from None
    sc = manifest.get("scale", {})
    if sc and (sc.get("multiplier") != layer.mult or sc.get("shift") != layer.shift):
        raise ReportError(f"the layer rebuilt from {src} has other scale constants than {out_dir}/manifest.json")
    return layer


def check_weights_file(manifest: dict, out_dir: str, layer, fold: Folding) -> None:
    from hwrnn.datapath import Geometry, weight_image

    path = os.path.join(out_dir, manifest.get("memory", {}).get("weights_file", "weights.hex"))
    if not os.path.exists(path):
        return
    g = Geometry(layer.cfg, fold)
    digits = (g.word_bits + 3) // 4
    want = "".join(f"{w:0{digits}x}\n" for w in weight_image(layer, fold))
    with open(path) as fh:
        if fh.read() != want:
            raise ReportError(f"{path} does not match the layer rebuilt from {manifest.get('weights_source')}")


def run_synthesis(manifest: dict, out_dir: str, layer, fold: Folding, families, pnr: bool = True,
                  timeout: float | None = None, log=print) -> list[str]:
    """Synthesize the core of out_dir for each family (work dirs out_dir/synth_<family>); results go
    into manifest["synthesis"]. Returns one error line per family that failed."""
    from .synth import DEFAULT_TIMEOUT, SynthError, synthesize

    errors = []
    for fam in families:
        log(f"rtl_gen: synthesizing for {fam} in {os.path.join(out_dir, 'synth_' + fam)} ...")
        try:
            r = synthesize(layer, fold, fam, os.path.join(out_dir, f"synth_{fam}"),
                           weights=manifest.get("weights", "memory"), pnr=pnr, timeout=timeout or DEFAULT_TIMEOUT)
        except SynthError as e:
            errors.append(f"{fam}: {e}")
            manifest.setdefault("synthesis_errors", {})[fam] = str(e)
            continue
        (manifest.get("synthesis_errors") or {}).pop(fam, None)
        add_synthesis(manifest, r)
        if r.get("pnr_error"):
            errors.append(f"{fam}: {r['pnr_error']}")
    return errors


def parse_families(values) -> list[str]:
    fams = []
    for v in values or []:
        for f in str(v).split(","):
            f = f.strip().lower()
            if not f:
                continue
            if f not in FAMILIES:
                raise ConfigError(f"--synth {f}: unknown FPGA family, choose from {', '.join(FAMILIES)}")
            if f not in fams:
                fams.append(f)
    return fams


def estimate_report(cfg: LayerConfig, fold: Folding, weights: str, steps: int, name: str = "hwrnn_lstm") -> str:
    """The analytic report of a configuration without generating anything (--estimate)."""
    from hwrnn.datapath import Geometry, latency, mac_bound, memory_bits, sequence_cycles, step_period

    g = Geometry(cfg, fold)
    man = {
        "name": name, "config": cfg.to_dict(), "folding": fold.to_dict(), "weights": weights,
        "latency": {"steps": steps},
    }
    add_analytic(man)
    lat = latency(cfg, fold)
    head = [
        f"hwrnn core '{name}' (analytic estimate, nothing generated): W{cfg.wbits}A{cfg.abits} "
        f"{cfg.cell_type.upper()}" + (f" ({cfg.weight_code} weights)" if cfg.weight_code != "balanced" else "")
        + f", hidden {cfg.hidden}, input {cfg.input}"
        + (f", cell {cfg.cell}" if cfg.gate_set.has_cell_state else ""),
        f"folding: PE {fold.pe} rows x SIMD {fold.simd} columns per cycle, bit planes {fold.planes}; weights {weights}",
        f"latency: {lat} cycles per time step (MAC {g.mac_cycles}; MAC bound {mac_bound(cfg, fold)}), "
        f"step period {step_period(cfg, fold)}, {sequence_cycles(cfg, fold, steps)} cycles for {steps} steps",
        f"weight memory: {memory_bits(cfg)} bits (padded {g.weight_bits}), word {g.word_bits} bits x {g.depth}",
    ]
    return "\n".join(head) + "\n" + resources_text(man)


__all__ = ["ASSUMED_MHZ", "ReportError", "add_analytic", "check_module_name", "config_sections", "file_digest",
           "verify_output", "add_synthesis", "estimate_report", "load_manifest",
           "parse_families", "rebuild_layer", "resources_text", "run_synthesis", "write_manifest_and_report"]
