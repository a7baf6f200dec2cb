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
version          int64      LM_FORMAT_VERSION (2; version 1 stored the decoder in fp16)
embedding_codes  uint8      [V, X]: each token's embedding as the layer's input activation
                            codes 0..2**abits-1 (what the hardware reads; hwrnn.quant)
decoder_codes    int8       [V, H]: the decoder weight row r as codes -127..127 ...
decoder_scale    float32    [V]: ... times scale_r: W[r, j] = decoder_codes[r, j] * scale_r
decoder_bias     float32    [V]
vocab            str        [V]: vocab[i] is the token of id i (sw_ref.data's sorted train vocabulary)
===============  =========  =============================================================

logits = W h_t + b with h_t = n_h / K_a, all in float64 (sw_ref.export.IntegerLM). The decoder is
stored as symmetric int8 with one float32 scale per row (``quantize_decoder``: scale_r =
max_j |W[r, j]| / 127 rounded to float32, codes = W / scale_r rounded half to even; a zero row has
scale 0 and codes 0), the precision the recorded ``shipped_test_ppw`` (the integer model's test
perplexity per token, batch 10 x 35 as sw_ref evaluates) was measured with. For the W4A2 H=450
PTB model it moved the integer test perplexity by +0.01 against fp32 and halved the file against fp16.
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
LM_FORMAT_VERSION = 2
LM_SUFFIX = ".lm.npz"
DECODER_CODE_MAX = 127  # symmetric int8 codes -127..127
#: the shipped decoder's precision (what shipped_test_ppw was measured with), as recorded
DECODER_PRECISION = "int8 per-row scale"


def quantize_decoder(w) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 [V, H], scale float32 [V]) of a decoder weight: symmetric per row, scale_r =
    max |w_r| / 127 in float32, codes = w_r / scale_r rounded half to even (0 for a zero row).
    Idempotent: a dequantized decoder quantizes to the same codes and scales."""
    w = np.asarray(w, dtype=np.float64)
    scale = (np.abs(w).max(axis=1, initial=0.0) / DECODER_CODE_MAX).astype(np.float32)
    s64 = scale.astype(np.float64)[:, None]
    q = np.divide(w, s64, out=np.zeros_like(w), where=s64 > 0)
    return np.clip(np.rint(q), -DECODER_CODE_MAX, DECODER_CODE_MAX).astype(np.int8), scale


def dequantize_decoder(codes, scale) -> np.ndarray:
    """The float64 decoder weight of int8 codes and float32 row scales: codes * scale (exact)."""
    return np.asarray(codes, dtype=np.float64) * np.asarray(scale, dtype=np.float64)[:, None]


@dataclass
class LMHead:
    """Everything of a language model around its recurrent layer: input codes per token, the
    float decoder (float64 here, whatever precision it was stored in) and the vocabulary."""

    embedding_codes: np.ndarray  # [V, X] int64, 0..K_a
    decoder_weight: np.ndarray   # [V, H] float64
    decoder_bias: np.ndarray     # [V] float64
    vocab: list

    def stored(self) -> "LMHead":
        """This head as the LM file stores it: the decoder as int8 codes times float32 row scales,
        the bias rounded to float32."""
        w = dequantize_decoder(*quantize_decoder(self.decoder_weight))
        b = np.asarray(self.decoder_bias).astype(np.float32).astype(np.float64)
        return LMHead(self.embedding_codes, w, b, self.vocab)

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
    with ``head``, also <name>.lm.npz (the decoder as int8 codes and row scales; the record names it "lm_file")."""
    d = Path(data_dir) if data_dir else DATA_DIR
    d.mkdir(parents=True, exist_ok=True)
    npz = d / f"{name}.npz"
    layer.save(npz)
    rec = {**provenance, "file": npz.name, "config": layer.cfg.to_dict()}
    if head is not None:
        head.check(layer.cfg)
        lm = d / f"{name}{LM_SUFFIX}"
        codes, scale = quantize_decoder(head.decoder_weight)
        save_npz(lm, format=np.array(LM_FORMAT_NAME), version=np.array(LM_FORMAT_VERSION, dtype=np.int64),
                 embedding_codes=head.embedding_codes.astype(np.uint8), decoder_codes=codes, decoder_scale=scale,
                 decoder_bias=head.decoder_bias.astype(np.float32), vocab=np.array(head.vocab, dtype=str))
        rec.update(lm_file=lm.name, decoder_precision=DECODER_PRECISION)
    (d / f"{name}.json").write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    return npz


def _lm_fail(path, msg):
    raise CheckpointError(f"language-model file {path}: {msg}")


def load_head(path, cfg: LayerConfig) -> LMHead:
    """The LM head stored at ``path`` (the int8 decoder dequantized to float64), checked against the
    layer config ``cfg``; any problem raises CheckpointError (one line naming the file)."""
    data = read_npz(path, "hwrnn LM file", ("format", "version"), _lm_fail)
    if str(data["format"]) != LM_FORMAT_NAME:
        _lm_fail(path, f"format is {str(data['format'])!r}, expected {LM_FORMAT_NAME!r}")
    if data["version"].dtype.kind not in "iu" or int(data["version"]) != LM_FORMAT_VERSION:
        _lm_fail(path, f"format version {data['version']} is not supported (expected {LM_FORMAT_VERSION})")
    keys = {"embedding_codes": np.uint8, "decoder_codes": np.int8, "decoder_scale": np.float32,
            "decoder_bias": np.float32}
    missing = [k for k in (*keys, "vocab") if k not in data]
    if missing:
        _lm_fail(path, f"missing {', '.join(missing)}")
    for key, dtype in keys.items():
        if data[key].dtype != dtype:
            _lm_fail(path, f"{key} has dtype {data[key].dtype}, expected {np.dtype(dtype).name}")
    if data["vocab"].dtype.kind != "U" or data["vocab"].ndim != 1:
        _lm_fail(path, f"vocab must be a 1-D string array, got {data['vocab'].dtype} {data['vocab'].shape}")
    codes, scale = data["decoder_codes"], data["decoder_scale"]
    if codes.ndim != 2 or scale.shape != codes.shape[:1]:
        _lm_fail(path, f"decoder_codes {codes.shape} and decoder_scale {scale.shape} do not pair up (one scale per row)")
    if codes.size and np.abs(codes.astype(np.int16)).max() > DECODER_CODE_MAX:
        _lm_fail(path, f"decoder_codes outside -{DECODER_CODE_MAX}..{DECODER_CODE_MAX}")
    if not np.all(np.isfinite(scale)) or (scale < 0).any():
        _lm_fail(path, "decoder_scale must be finite and >= 0")
    head = LMHead(data["embedding_codes"].astype(np.int64), dequantize_decoder(codes, scale),
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
