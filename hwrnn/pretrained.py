"""Trained layers shipped with hwrnn (package data in hwrnn/data/): a layer checkpoint
(hwrnn.checkpoint format, uint8 codes, compressed) plus a provenance JSON next to it (the run,
recipe, epochs and measured integer-model PTB perplexity, copied from results/ptb.json), and, for
a language model, the rest of its inference model in ``<name>.lm.npz`` (format below), so the
shipped perplexity can be re-measured from the package alone (``python -m sw_ref eval --pretrained``).

rtl_gen uses a shipped layer when the requested configuration equals its LayerConfig exactly and
neither --checkpoint nor --random is given.

Language-model file ``<name>.lm.npz`` (numpy archive, compressed, no pickles):

===============  =========  =============================================================
key              dtype      meaning
===============  =========  =============================================================
format           str        "hwrnn-lm-head"
version          int64      LM_FORMAT_VERSION
embedding_codes  uint8      [V, X]: each token's embedding as the layer's input activation
                            codes 0..2**abits-1 (what the hardware reads; hwrnn.quant)
decoder_weight   float16    [V, H]: the decoder, logits = W h_t + b with h_t = n_h / K_a (float64)
decoder_bias     float16    [V]
vocab            str        [V]: vocab[i] is the token of id i (sw_ref.data's sorted train vocabulary)
===============  =========  =============================================================

The decoder is stored in fp16 (DECODER_DTYPE), the precision the recorded ``shipped_test_ppw`` (the
integer model's test perplexity per token, batch 10 x 35 as sw_ref evaluates) was measured with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, QuantLayer, load_layer, read_npz, save_npz
from .config import LayerConfig
from .quant import levels

DATA_DIR = Path(__file__).resolve().parent / "data"
LM_FORMAT_NAME = "hwrnn-lm-head"
LM_FORMAT_VERSION = 1
LM_SUFFIX = ".lm.npz"
DECODER_DTYPE = np.float16  # the shipped decoder's precision (what shipped_test_ppw was measured with)
DECODER_PRECISION = np.dtype(DECODER_DTYPE).name


def _rounded(a) -> np.ndarray:
    return np.asarray(a).astype(DECODER_DTYPE).astype(np.float64)


@dataclass
class LMHead:
    """Everything of a language model around its recurrent layer: input codes per token, the
    float decoder (float64 here, whatever precision it was stored in) and the vocabulary."""

    embedding_codes: np.ndarray  # [V, X] int64, 0..K_a
    decoder_weight: np.ndarray   # [V, H] float64
    decoder_bias: np.ndarray     # [V] float64
    vocab: list

    def stored(self) -> "LMHead":
        """This head as the LM file stores it: the decoder rounded to fp16 (DECODER_DTYPE)."""
        return LMHead(self.embedding_codes, _rounded(self.decoder_weight), _rounded(self.decoder_bias), self.vocab)

    def check(self, cfg: LayerConfig) -> None:
        """CheckpointError (one line) unless the head fits a layer of config ``cfg``."""
        V = len(self.vocab)
        e, w, b = self.embedding_codes, self.decoder_weight, self.decoder_bias
        if e.shape != (V, cfg.input):
            raise CheckpointError(f"embedding codes have shape {e.shape}, expected {(V, cfg.input)} "
                                  f"(vocabulary {V}, layer input {cfg.input})")
        if e.size and (e.min() < 0 or e.max() > levels(cfg.abits)):
            raise CheckpointError(f"embedding codes out of range 0..{levels(cfg.abits)} for abits={cfg.abits}")
        if w.shape != (V, cfg.hidden) or b.shape != (V,):
            raise CheckpointError(f"decoder has shapes {w.shape} and {b.shape}, expected {(V, cfg.hidden)} "
                                  f"and {(V,)}")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise CheckpointError("decoder contains NaN or inf")


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


def write(layer: QuantLayer, name: str, provenance: dict, data_dir: Path | None = None,
          head: LMHead | None = None) -> Path:
    """Save a layer as shipped data: <name>.npz and <name>.json (provenance + the layer's config);
    with ``head``, also <name>.lm.npz (the decoder rounded to fp16; the record names it "lm_file")."""
    d = Path(data_dir) if data_dir else DATA_DIR
    d.mkdir(parents=True, exist_ok=True)
    npz = d / f"{name}.npz"
    layer.save(npz)
    rec = {**provenance, "file": npz.name, "config": layer.cfg.to_dict()}
    if head is not None:
        head.check(layer.cfg)
        lm = d / f"{name}{LM_SUFFIX}"
        save_npz(lm, format=np.array(LM_FORMAT_NAME), version=np.array(LM_FORMAT_VERSION, dtype=np.int64),
                 embedding_codes=head.embedding_codes.astype(np.uint8),
                 decoder_weight=head.decoder_weight.astype(DECODER_DTYPE),
                 decoder_bias=head.decoder_bias.astype(DECODER_DTYPE), vocab=np.array(head.vocab, dtype=str))
        rec.update(lm_file=lm.name, decoder_precision=DECODER_PRECISION)
    (d / f"{name}.json").write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    return npz


def _lm_fail(path, msg):
    raise CheckpointError(f"language-model file {path}: {msg}")


def load_head(path, cfg: LayerConfig) -> LMHead:
    """The LM head stored at ``path`` (fp16 decoder widened to float64), checked against the layer
    config ``cfg``; any problem raises CheckpointError (one line naming the file)."""
    data = read_npz(path, "hwrnn LM file", ("format", "version", "embedding_codes", "decoder_weight",
                                            "decoder_bias", "vocab"), _lm_fail)
    if str(data["format"]) != LM_FORMAT_NAME:
        _lm_fail(path, f"format is {str(data['format'])!r}, expected {LM_FORMAT_NAME!r}")
    if data["version"].dtype.kind not in "iu" or int(data["version"]) != LM_FORMAT_VERSION:
        _lm_fail(path, f"format version {data['version']} is not supported (expected {LM_FORMAT_VERSION})")
    for key, dtype in (("embedding_codes", np.uint8), ("decoder_weight", DECODER_DTYPE), ("decoder_bias", DECODER_DTYPE)):
        if data[key].dtype != dtype:
            _lm_fail(path, f"{key} has dtype {data[key].dtype}, expected {np.dtype(dtype).name}")
    if data["vocab"].dtype.kind != "U" or data["vocab"].ndim != 1:
        _lm_fail(path, f"vocab must be a 1-D string array, got {data['vocab'].dtype} {data['vocab'].shape}")
    head = LMHead(data["embedding_codes"].astype(np.int64), data["decoder_weight"].astype(np.float64),
                  data["decoder_bias"].astype(np.float64), [str(w) for w in data["vocab"]])
    try:
        head.check(cfg)
    except CheckpointError as e:
        _lm_fail(path, str(e))
    return head


def load_lm(rec: dict) -> tuple[QuantLayer, LMHead]:
    """The shipped layer and LM head of a provenance record; CheckpointError if it has no LM file."""
    if not rec.get("lm_file"):
        raise CheckpointError(f"shipped layer hwrnn/data/{rec['file']} has no language-model file")
    layer = load(rec)
    return layer, load_head(DATA_DIR / rec["lm_file"], layer.cfg)


def find_lm(name: str | None = None) -> dict:
    """The provenance record of a shipped language model: the one named ``name`` (file stem, e.g.
    "ptb_w4a2_h450"), else the only one shipped; CheckpointError naming the choices otherwise."""
    recs = [r for r in shipped() if r.get("lm_file") and (DATA_DIR / r["lm_file"]).is_file()]
    names = sorted(Path(r["file"]).stem for r in recs)
    if name is not None:
        recs = [r for r in recs if Path(r["file"]).stem == name]
    if len(recs) != 1:
        what = f"no shipped language model {name!r}" if name else f"{len(recs)} shipped language models"
        raise CheckpointError(f"{what} (shipped: {', '.join(names) or 'none'}); name one with --pretrained NAME")
    return recs[0]
