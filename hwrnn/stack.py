"""A stack of quantized recurrent layers (Kapur et al.'s multi-layer networks, FINN-L's BiLSTM):
its contract, checkpoint, integer model and cycle schedule.

A stack is L layers; layer l is one ``QuantLayer`` (unidirectional) or two (bidirectional: a
forward and a backward direction with their own weights). The input of layer 0 is x_t; the input of
layer l+1 at step t is layer l's output at step t: h_t, or for a bidirectional layer the
concatenation [h_fw_t ; h_bw_t] (forward direction first). Activation codes pass between layers
unchanged, so adjacent layers have the same abits and layer l+1's input size is layer l's output
width (H, or 2H). Each direction starts every sequence from its own reset state; the backward
direction runs over the sequence reversed (its output at t has seen x_T..x_t).

Hardware (rtl_gen.stack, unidirectional layers): one core per layer, layer l's out stream driving
layer l+1's x stream, so layer l+1 works on step t while layer l works on step t+1. With x always
valid and the last output always taken, layer l accepts step t at cycle ``accept[l][t]``
(``stack_schedule``): accept[0][0] = 0; layer l+1 accepts step t when layer l's h_t is valid and it
is idle, accept[l+1][t] = max(accept[l][t] + L_l, accept[l+1][t-1] + L_{l+1} + 1); layer l accepts
step t+1 the cycle after it handed h_t on, accept[l][t+1] = accept[l+1][t] + 1 (the last layer:
accept[L-1][t] + L_{L-1} + 1). The first output is valid sum_l L_l cycles after x_1 is accepted; in
steady state a step takes max_l (L_l + 1) cycles.

Checkpoint (``save_stack`` / ``load_stack``): a numpy ``.npz`` (no pickles): format "hwrnn-stack",
version, ``layers`` (JSON list of {"bidirectional": bool}), and per layer l and direction d the
entries of a layer checkpoint (hwrnn.checkpoint) under ``l{l}d{d}_config``, ``_codes``, ``_scale``,
``_bias``. numpy only.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .checkpoint import CheckpointError, QuantLayer, save_npz
from .config import ConfigError, LayerConfig
from .integer_model import IntegerLSTM

FORMAT_NAME = "hwrnn-stack"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class StackLayer:
    """One layer of a stack: its directions (one QuantLayer, or forward and backward)."""

    directions: tuple[QuantLayer, ...]

    @property
    def bidirectional(self) -> bool:
        return len(self.directions) == 2

    @property
    def cfg(self) -> LayerConfig:
        return self.directions[0].cfg

    @property
    def output_width(self) -> int:
        """Activation codes per step this layer hands on: H, or 2H."""
        return sum(d.cfg.hidden for d in self.directions)


class Stack:
    """A validated stack of layers (module docstring); ConfigError names the first mismatch."""

    def __init__(self, layers):
        self.layers = tuple(layer if isinstance(layer, StackLayer) else
                            StackLayer(tuple(layer) if isinstance(layer, (tuple, list)) else (layer,))
                            for layer in layers)
        if not self.layers:
            raise ConfigError("a stack needs at least one layer")
        for l, layer in enumerate(self.layers):
            if len(layer.directions) not in (1, 2):
                raise ConfigError(f"layer {l}: one direction or two (forward, backward), got {len(layer.directions)}")
            if layer.bidirectional:
                fw, bw = (d.cfg for d in layer.directions)
                if (fw.hidden, fw.input, fw.abits) != (bw.hidden, bw.input, bw.abits):
                    raise ConfigError(f"layer {l}: the backward direction has hidden {bw.hidden}, input {bw.input}, "
                                      f"abits {bw.abits}; the forward {fw.hidden}, {fw.input}, {fw.abits}")
            if l:
                prev = self.layers[l - 1]
                if layer.cfg.input != prev.output_width:
                    raise ConfigError(f"layer {l} has input {layer.cfg.input}, but layer {l - 1} outputs "
                                      f"{prev.output_width} codes per step")
                if layer.cfg.abits != prev.cfg.abits:
                    raise ConfigError(f"layer {l} has abits {layer.cfg.abits}, layer {l - 1} {prev.cfg.abits}: "
                                      f"codes pass between layers unchanged, so they must agree")

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def input(self) -> int:
        return self.layers[0].cfg.input

    @property
    def abits(self) -> int:
        return self.layers[0].cfg.abits

    @classmethod
    def random(cls, cfgs, bidirectional=None, seed: int = 0) -> "Stack":
        """Seeded random layers (QuantLayer.random) for the given configs."""
        bidirectional = bidirectional or [False] * len(cfgs)
        layers = []
        for l, (cfg, bi) in enumerate(zip(cfgs, bidirectional)):
            dirs = [QuantLayer.random(cfg, seed=seed + 2 * l + d) for d in range(2 if bi else 1)]
            layers.append(StackLayer(tuple(dirs)))
        return cls(layers)


class IntegerStack:
    """The bit-exact integer model of a stack: hwrnn.integer_model per direction (module docstring)."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.models = [[IntegerLSTM(d) for d in layer.directions] for layer in stack.layers]

    def run(self, xs) -> list[np.ndarray]:
        """xs: [T, X] input codes of one sequence. Returns per layer its output codes [T, width]
        (the input of the next layer), every direction from its reset state."""
        seq = np.asarray(xs, np.int64)
        if seq.ndim != 2 or seq.shape[1] != self.stack.input:
            raise ValueError(f"sequence must have shape [T, {self.stack.input}], got {seq.shape}")
        outs = []
        for models in self.models:
            parts = []
            for d, model in enumerate(models):
                order = seq[::-1] if d == 1 else seq
                _, taps = model.run(order)
                hs = np.stack([t["h"] for t in taps]) if taps else np.zeros((0, model.cfg.hidden), np.int64)
                parts.append(hs[::-1] if d == 1 else hs)
            seq = np.concatenate(parts, axis=1)
            outs.append(seq)
        return outs


def stack_schedule(latencies, steps: int) -> list[list[int]]:
    """accept[l][t]: the cycle layer l accepts step t (x_1 accepted by layer 0 at cycle 0), for the
    per-layer step latencies L_l (hwrnn.datapath.latency), with x always valid and the last output
    always taken. A layer accepts when its input is valid (layer l-1's h_t, valid at
    accept[l-1][t] + L_{l-1}) and it is idle again: the cycle after its h_{t-1} was taken (by layer
    l+1 accepting it, or for the last layer as soon as it is valid). Layer l's h_t is valid at
    accept[l][t] + L_l."""
    L = list(latencies)
    n = len(L)
    acc = [[0] * steps for _ in range(n)]

    def taken(l, t):
        return acc[l + 1][t] if l + 1 < n else acc[l][t] + L[l]

    for t in range(steps):
        for l in range(n):
            ready = taken(l, t - 1) + 1 if t else 0
            valid = acc[l - 1][t] + L[l - 1] if l else 0
            acc[l][t] = max(ready, valid)
    return acc


def first_output_latency(latencies) -> int:
    """Cycles from x_1 accepted to the last layer's h_1 valid: sum of the layer latencies."""
    return sum(latencies)


def steady_period(latencies) -> int:
    """Cycles per step in steady state: the slowest layer's step period max_l (L_l + 1)."""
    return max(latencies) + 1


def save_stack(stack: Stack, path) -> None:
    arrays = {"format": np.array(FORMAT_NAME), "version": np.array(FORMAT_VERSION, dtype=np.int64),
              "layers": np.array(json.dumps([{"bidirectional": layer.bidirectional} for layer in stack.layers]))}
    for l, layer in enumerate(stack.layers):
        for d, q in enumerate(layer.directions):
            arrays.update(q.arrays(f"l{l}d{d}_"))
    save_npz(path, **arrays)


def _fail(path, msg):
    raise CheckpointError(f"stack checkpoint {path}: {msg}")


def load_stack(path) -> Stack:
    """Load and validate a stack checkpoint; any problem raises CheckpointError (one line)."""
    if not os.path.exists(path):
        _fail(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, zlib.error, EOFError, ValueError ...
        _fail(path, f"not a readable hwrnn stack checkpoint (corrupt or truncated: {type(e).__name__})")
    for key in ("format", "version", "layers"):
        if key not in data:
            _fail(path, f"missing entry '{key}'")
    if str(data["format"]) != FORMAT_NAME:
        _fail(path, f"format is {str(data['format'])!r}, expected {FORMAT_NAME!r}")
    if data["version"].dtype.kind not in "iu" or int(data["version"]) != FORMAT_VERSION:
        _fail(path, f"format version {data['version']} is not supported (expected {FORMAT_VERSION})")
    try:
        specs = json.loads(str(data["layers"]))
        assert isinstance(specs, list) and all(isinstance(s, dict) for s in specs)
    except (ValueError, AssertionError):
        _fail(path, "'layers' is not a JSON list of layer descriptions")
    layers = []
    for l, spec in enumerate(specs):
        dirs = []
        for d in range(2 if spec.get("bidirectional") else 1):
            p = f"l{l}d{d}_"
            for key in ("config", "codes", "scale", "bias"):
                if p + key not in data:
                    _fail(path, f"missing entry '{p + key}'")
            try:
                cfg = LayerConfig.from_json(str(data[p + "config"]))
                if data[p + "codes"].dtype != np.uint8:
                    raise CheckpointError(f"weight codes have dtype {data[p + 'codes'].dtype}, expected uint8")
                dirs.append(QuantLayer(cfg, data[p + "codes"], float(data[p + "scale"]), data[p + "bias"]))
            except (ConfigError, CheckpointError, TypeError, ValueError) as e:
                _fail(path, f"layer {l} direction {d}: {e}")
        layers.append(StackLayer(tuple(dirs)))
    try:
        return Stack(layers)
    except ConfigError as e:
        _fail(path, str(e))
