"""Trained layers shipped with hwrnn (package data in hwrnn/data/): a layer checkpoint
(hwrnn.checkpoint format, uint8 codes, compressed) plus a provenance JSON next to it (the run,
recipe, epochs and measured integer-model PTB perplexity, copied from results/ptb.json).

rtl_gen uses a shipped layer when the requested configuration equals its LayerConfig exactly and
neither --checkpoint nor --random is given.
"""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import QuantLayer, load_layer
from .config import LayerConfig

DATA_DIR = Path(__file__).resolve().parent / "data"


def shipped() -> list[dict]:
    """Provenance records of every shipped layer (each has "file", "config" and the figures)."""
    out = []
    for meta in sorted(DATA_DIR.glob("*.json")):
        rec = json.loads(meta.read_text())
        if (DATA_DIR / rec.get("file", "")).is_file():
            out.append(rec)
    return out


def find(cfg: LayerConfig) -> dict | None:
    """The provenance record of the shipped layer whose LayerConfig equals cfg, or None."""
    for rec in shipped():
        if LayerConfig.from_dict(rec["config"]) == cfg:
            return rec
    return None


def load(rec: dict) -> QuantLayer:
    """The shipped layer of a provenance record (checked like any checkpoint)."""
    return load_layer(DATA_DIR / rec["file"])


def describe(rec: dict) -> str:
    ppw = rec.get("integer_test_ppw")
    return (f"trained PTB layer hwrnn/data/{rec['file']} ({rec.get('run', '?')}, {rec.get('epochs_done', '?')} epochs"
            + (f", integer-model test PPW {ppw:.2f}" if ppw is not None else "") + ")")


def write(layer: QuantLayer, name: str, provenance: dict, data_dir: Path | None = None) -> Path:
    """Save a layer as shipped data: <name>.npz and <name>.json (provenance + the layer's config)."""
    d = Path(data_dir) if data_dir else DATA_DIR
    d.mkdir(parents=True, exist_ok=True)
    npz = d / f"{name}.npz"
    layer.save(npz)
    rec = {**provenance, "file": npz.name, "config": layer.cfg.to_dict()}
    (d / f"{name}.json").write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    return npz
