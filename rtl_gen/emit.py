"""Generate the output directory of one core: Verilog, memory images, manifest and report.

Everything is produced in memory first and written through a temporary directory that is renamed
into place, so an error never leaves a half-written output.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.lib import wiring

import hwrnn
from hwrnn import formats as fm
from hwrnn.checkpoint import QuantLayer
from hwrnn.config import Folding
from hwrnn.datapath import (pipeline_depth, pipeline_stages, Geometry, latency, mac_bound, memory_bits,
                            sequence_cycles, step_period, weight_image)
from hwrnn.devices import weight_fit

from .core import LstmCore
from .memory import WMEM_VERILOG, hex_image
from .report import add_analytic, resources_text

WEIGHTS_FILE = "weights.hex"
MANIFEST_VERSION = 1


def port_list(core: LstmCore) -> list[dict]:
    """Flattened Verilog ports (name, direction, width) from the component signature."""
    ports = [{"name": "clk", "dir": "in", "width": 1}, {"name": "rst", "dir": "in", "width": 1}]
    for path, member, _value in core.signature.flatten(core):
        name = "__".join(str(p) for p in path)
        width = Shape.cast(member.shape).width
        ports.append({"name": name, "dir": "in" if member.flow == wiring.In else "out", "width": width})
    return ports


def build_manifest(core: LstmCore, name: str, source: str, steps: int) -> dict:
    cfg, fold, layer = core.cfg, core.fold, core.layer
    g = Geometry(cfg, fold)
    lat = latency(cfg, fold)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "weights_source": source,
        "config": cfg.to_dict(),
        "folding": fold.to_dict(),
        "weights": core.weights,
        "geometry": {
            "units_per_fold": g.units_per_fold, "row_folds": g.row_folds, "col_folds": g.col_folds,
            "plane_steps": g.plane_steps, "weight_word_bits": g.word_bits, "weight_depth": g.depth,
        },
        "ports": port_list(core),
        "payload_fields": {
            "x": {"element_bits": cfg.abits, "elements": cfg.input},
            "out": {"h": {"offset": 0, "element_bits": cfg.abits, "elements": cfg.hidden},
                    "c": {"offset": cfg.hidden * cfg.abits, "element_bits": core.cell_width, "elements": cfg.hidden,
                          "signed": cfg.cell_format.signed_word}},
            "load": {"data": {"offset": 0, "bits": core.load_data_w},
                     "addr": {"offset": core.load_data_w, "bits": core.load_addr_w},
                     "sel": {"offset": core.load_data_w + core.load_addr_w, "bits": 2,
                             "values": {"weight_word": 0, "bias_word": 1, "multiplier": 2}}},
        },
        "formats": fm.tap_formats(cfg, layer.mult, layer.shift, layer.bias_int),
        "scale": {"s": layer.scale, "multiplier": layer.mult, "shift": layer.shift,
                  "bias_bits": core.bias_w, "multiplier_bits": core.mult_w},
        "latency": {
            "cycles_per_step": lat,
            "step_period": step_period(cfg, fold),
            "steps": steps,
            "cycles_per_sequence": sequence_cycles(cfg, fold, steps),
            "mac_cycles": g.mac_cycles,
            "pipeline_depth": pipeline_depth(cfg, fold),
            "pipeline_stages": pipeline_stages(cfg, fold),
            "mac_bound": mac_bound(cfg, fold),
            "formula": "row_folds * col_folds * plane_steps + pipeline_depth"
                       + (" + cycles the w stream is not valid while the core waits" if core.weights == "stream" else ""),
        },
        "memory": {
            "weight_bits": memory_bits(cfg),
            "weight_bits_padded": g.weight_bits,
            "weights_file": WEIGHTS_FILE,
            "on_chip_weight_bits": g.weight_bits if core.weights == "memory" else 0,
            "stream_bits_per_step": g.weight_bits if core.weights == "stream" else 0,
            "bias_bits": g.row_folds * fold.pe * core.bias_w,
            "fp32_weight_bits": 32 * memory_bits(cfg),
        },
        "devices": weight_fit(g.weight_bits),
        "hwrnn_version": hwrnn.__version__,
    }
    add_analytic(manifest)  # "resources" (analytic estimate per FPGA family) and "derived" figures
    return manifest


def report_text(manifest: dict) -> str:
    c, f, lat, mem = manifest["config"], manifest["folding"], manifest["latency"], manifest["memory"]
    fits = [n for n, d in manifest["devices"].items() if d["fits_block_ram"]]
    nofit = [n for n, d in manifest["devices"].items() if not d["fits_block_ram"]]
    lines = [
        f"hwrnn core '{manifest['name']}': W{c['wbits']}A{c['abits']} LSTM, hidden {c['hidden']}, input {c['input']}, "
        f"cell {c['cell']}, candidate {c['candidate']}",
        f"weights: {manifest['weights_source']}",
        f"folding: PE {f['pe']} rows x SIMD {f['simd']} columns per cycle, bit planes {f['planes']}",
        f"weights: {'on-chip memory initialised from ' + mem['weights_file'] if manifest['weights'] == 'memory' else 'streamed through port w, ' + str(manifest['geometry']['weight_word_bits']) + ' bits per cycle (' + mem['weights_file'] + ' holds one step of words)'}",
        f"latency: {lat['cycles_per_step']} cycles per time step (MAC {lat['mac_cycles']} + pipeline "
        f"{lat['pipeline_depth']}; MAC bound {lat['mac_bound']}), {lat['cycles_per_sequence']} cycles for "
        f"{lat['steps']} steps",
        f"weight memory: {mem['weight_bits']} bits ({mem['weight_bits'] / 8 / 1024:.1f} KiB; padded "
        f"{mem['weight_bits_padded']}), {mem['weight_bits'] / mem['fp32_weight_bits'] * 100:.1f} % of FP32",
        f"weights fit in block RAM of: {', '.join(fits) if fits else 'none of the known devices'}",
    ]
    if nofit:
        lines.append(f"weights do not fit in block RAM of: {', '.join(nofit)}")
    if not fits and manifest["weights"] == "memory":
        lines.append("for devices whose block RAM is too small, generate with --weights stream")
    return "\n".join(lines) + "\n" + resources_text(manifest)


def generate(layer: QuantLayer, fold: Folding, name: str, source: str, steps: int = 35,
             weights: str = "memory") -> dict[str, str]:
    """All output files as {file name: text}. With weights="stream" the core has no weight memory
    and weights.hex is the word sequence a host streams into port w once per time step."""
    fold.check_against(layer.cfg)
    core = LstmCore(layer, fold, image_file=WEIGHTS_FILE, weights=weights)
    g = Geometry(layer.cfg, fold)
    text = verilog.convert(core, name=name, emit_src=False)
    if weights == "memory":
        text = text + "\n" + WMEM_VERILOG
    manifest = build_manifest(core, name, source, steps)
    return {
        f"{name}.v": text,
        WEIGHTS_FILE: hex_image(weight_image(layer, fold), g.word_bits),
        "manifest.json": json.dumps(manifest, indent=2, sort_keys=True) + "\n",
        "report.txt": report_text(manifest),
    }


def write_output(files: dict[str, str], out_dir: str) -> None:
    """Write all files into out_dir atomically per file set (temp dir, then move)."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".rtl_gen-", dir=parent)
    try:
        for fname, text in files.items():
            with open(os.path.join(tmp, fname), "w") as fh:
                fh.write(text)
        os.makedirs(out_dir, exist_ok=True)
        for fname in files:
            os.replace(os.path.join(tmp, fname), os.path.join(out_dir, fname))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
