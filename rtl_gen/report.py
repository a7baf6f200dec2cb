"""Resource / latency / throughput sections of manifest.json and report.txt, and the logic of
``python -m rtl_gen report <out_dir> [--synth FAMILY]`` and ``python -m rtl_gen ... --estimate``.

The analytic estimate (rtl_gen.cost) reads the blocks' reports without elaborating anything: the
report of any configuration renders in well under a second. Synthesis (rtl_gen.synth) is imported
only when asked for.
"""
from __future__ import annotations

import json
import os
import re

from hwrnn.config import ConfigError, Folding, LayerConfig
from hwrnn.devices import FAMILIES
from hwrnn.fpga import BRAM_UNIT, device_fit
from hwrnn.resources import ASSUMED_MHZ, BLOCK_TEXT, BLOCKS, derived

from .cost import estimate

MODEL_NOTE = ("analytic model rtl_gen.cost, calibrated against yosys "
              "(accuracy: results/resource_calibration.md)")


class ReportError(ValueError):
    """A report that cannot be made; one line."""


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
    path = os.path.join(out_dir, "manifest.json")
    try:
        with open(path) as fh:
            man = json.load(fh)
    except FileNotFoundError:
        raise ReportError(f"{path} not found: generate the core first (python -m rtl_gen ... -o {out_dir})") from None
    except (OSError, ValueError) as e:
        raise ReportError(f"{path} is not a readable manifest ({e})") from None
    for key in ("config", "folding", "name"):
        if key not in man:
            raise ReportError(f"{path} has no '{key}' entry: not an rtl_gen manifest")
    try:
        LayerConfig.from_dict(man["config"])
        Folding(**man["folding"])
    except (ConfigError, TypeError) as e:
        raise ReportError(f"{path}: invalid config or folding ({e})") from None
    return man


def write_manifest_and_report(out_dir: str, manifest: dict, base_report) -> str:
    """Write manifest.json and report.txt (base_report(manifest) + resources_text) atomically."""
    text = base_report(manifest)
    for fname, data in (("manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n"),
                        ("report.txt", text)):
        tmp = os.path.join(out_dir, f".{fname}.tmp{os.getpid()}")
        with open(tmp, "w") as fh:
            fh.write(data)
        os.replace(tmp, os.path.join(out_dir, fname))
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
        f"hwrnn core '{name}' (analytic estimate, nothing generated): W{cfg.wbits}A{cfg.abits} LSTM, hidden "
        f"{cfg.hidden}, input {cfg.input}, cell {cfg.cell}",
        f"folding: PE {fold.pe} rows x SIMD {fold.simd} columns per cycle, bit planes {fold.planes}; weights {weights}",
        f"latency: {lat} cycles per time step (MAC {g.mac_cycles}; MAC bound {mac_bound(cfg, fold)}), "
        f"step period {step_period(cfg, fold)}, {sequence_cycles(cfg, fold, steps)} cycles for {steps} steps",
        f"weight memory: {memory_bits(cfg)} bits (padded {g.weight_bits}), word {g.word_bits} bits x {g.depth}",
    ]
    return "\n".join(head) + "\n" + resources_text(man)


__all__ = ["ASSUMED_MHZ", "ReportError", "add_analytic", "add_synthesis", "estimate_report", "load_manifest",
           "parse_families", "rebuild_layer", "resources_text", "run_synthesis", "write_manifest_and_report"]
