"""Checkpoint format of one quantized LSTM layer (what sw_ref exports and rtl_gen builds).

File: a numpy ``.npz`` archive (zip, no pickles) with

=========  =========  =================================================================
key        dtype      meaning
=========  =========  =================================================================
format     str        "hwrnn-layer"
version    int64      FORMAT_VERSION
config     str        LayerConfig as JSON
codes      uint8      weight codes n in 0..2**wbits-1, shape [rows, X+H] (rows = gates * H:
                      4H for the LSTM, 3H for the GRU, H for the RNN); rows gate-major (the gate
                      order of hwrnn.gates, LSTM i, f, g, o; row = gate*H + unit), columns [x_t ; h_{t-1}]
scale      float64    s, the one weight scale of the matrix (W_q = s * (n/Kw - 1/2))
bias       float64    b, shape [rows], float biases (fixed point derived by hwrnn.formats)
=========  =========  =================================================================

The integer constants of the datapath (M, R, B) are derived from scale and bias by
hwrnn.formats, never stored, so they cannot disagree.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np

from .config import ConfigError, LayerConfig
from .formats import bias_fixed, scale_shift

FORMAT_NAME = "hwrnn-layer"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and problem."""


@dataclass
class QuantLayer:
    """A quantized layer: config, weight codes, scale and biases (validated on construction)."""

    cfg: LayerConfig
    codes: np.ndarray
    scale: float
    bias: np.ndarray
    _consts: tuple = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        cfg = self.cfg
        codes = np.asarray(self.codes)
        if codes.dtype.kind not in "iu":
            raise CheckpointError(f"weight codes must be integers, got dtype {codes.dtype}")
        if codes.shape != (cfg.rows, cfg.columns):
            raise CheckpointError(
                f"weight codes have shape {codes.shape}, expected {(cfg.rows, cfg.columns)} for "
                f"hidden={cfg.hidden} input={cfg.input}")
        K = cfg.weight_coding.max_code
        if codes.size and (codes.min() < 0 or codes.max() > K):
            raise CheckpointError(f"weight codes out of range 0..{K} for wbits={cfg.wbits} "
                                  f"(found {codes.min()}..{codes.max()})")
        self.codes = codes.astype(np.int64)
        try:
            self.scale = float(self.scale)
        except (TypeError, ValueError):
            raise CheckpointError(f"scale must be a number, got {self.scale!r}") from None
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise CheckpointError(f"scale must be finite and positive, got {self.scale}")
        bias = np.asarray(self.bias)
        if bias.dtype.kind != "f":
            raise CheckpointError(f"bias must be floating point, got dtype {bias.dtype}")
        if bias.shape != (cfg.rows,):
            raise CheckpointError(f"bias has shape {bias.shape}, expected {(cfg.rows,)}")
        if not np.all(np.isfinite(bias)):
            raise CheckpointError("bias contains NaN or inf")
        self.bias = bias.astype(np.float64)
        try:
            M, R = scale_shift(cfg, self.scale)
            B = bias_fixed(cfg, self.bias, R)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        self._consts = (M, R, B)

    @property
    def mult(self) -> int:
        return self._consts[0]

    @property
    def shift(self) -> int:
        return self._consts[1]

    @property
    def bias_int(self) -> np.ndarray:
        return self._consts[2]

    @classmethod
    def random(cls, cfg: LayerConfig, seed: int = 0) -> "QuantLayer":
        """Weights drawn like a freshly initialised layer (U(-b, b), b the weight code's ``init_bound``:
        1/sqrt(H) as torch's LSTM for the balanced code), quantized with the config's quantizer; biases
        drawn from U(-1/sqrt(H), 1/sqrt(H)). ``seed``: an integer >= 0."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(cfg.hidden)
        bw = cfg.weight_coding.init_bound(cfg.rows, cfg.columns, cfg.hidden)
        w = rng.uniform(-bw, bw, size=(cfg.rows, cfg.columns))
        b = rng.uniform(-k, k, size=(cfg.rows,))
        codes, s = cfg.weight_coding.codes(w, cfg.gamma, cfg.weight_tanh)
        return cls(cfg, codes, s, b)

    def arrays(self, prefix: str = "") -> dict:
        """The checkpoint entries of this layer (config, codes, scale, bias), keys prefixed."""
        return {prefix + "config": np.array(self.cfg.to_json()), prefix + "codes": self.codes.astype(np.uint8),
                prefix + "scale": np.array(self.scale, dtype=np.float64), prefix + "bias": self.bias.astype(np.float64)}

    def save(self, path) -> None:
        save_npz(path, format=np.array(FORMAT_NAME), version=np.array(FORMAT_VERSION, dtype=np.int64),
                 **self.arrays())


def save_npz(path, **arrays) -> None:
    """A compressed .npz written whole or not at all (a temp file renamed into place)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, path)


def _fail(path, msg):
    raise CheckpointError(f"checkpoint {path}: {msg}")


def read_npz(path, what: str, required, fail) -> dict:
    """Every array of the .npz at ``path``; ``fail(path, message)`` (which raises) on a missing or
    unreadable file (``what``: e.g. "hwrnn layer checkpoint") or a missing ``required`` entry."""
    if not os.path.exists(path):
        fail(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error from a damaged member
        fail(path, f"not a readable {what} (corrupt or truncated: {type(e).__name__})")
    for key in required:
        if key not in data:
            fail(path, f"missing entry '{key}'")
    return data


def load_layer(path) -> QuantLayer:
    """Load and validate a layer checkpoint; any problem raises CheckpointError (one line)."""
    data = read_npz(path, "hwrnn layer checkpoint", ("format", "version", "config", "codes", "scale", "bias"), _fail)
    if str(data["format"]) != FORMAT_NAME:
        _fail(path, f"format is {str(data['format'])!r}, expected {FORMAT_NAME!r}")
    if data["version"].dtype.kind not in "iu" or int(data["version"]) != FORMAT_VERSION:
        _fail(path, f"format version {data['version']} is not supported (expected {FORMAT_VERSION})")
    try:
        cfg = LayerConfig.from_json(str(data["config"]))
    except (ConfigError, TypeError) as e:
        _fail(path, f"bad config: {e}")
    codes = data["codes"]
    if codes.dtype != np.uint8:
        _fail(path, f"weight codes have dtype {codes.dtype}, expected uint8")
    if data["scale"].dtype != np.float64 or data["scale"].shape != ():
        _fail(path, f"scale must be a float64 scalar, got {data['scale'].dtype} {data['scale'].shape}")
    if data["bias"].dtype.kind != "f":
        _fail(path, f"bias has dtype {data['bias'].dtype}, expected float64")
    try:
        return QuantLayer(cfg, codes, float(data["scale"]), data["bias"])
    except CheckpointError as e:
        _fail(path, str(e))
