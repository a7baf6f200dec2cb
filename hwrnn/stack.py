"""A stack of quantized recurrent layers (Kapur et al.'s multi-layer networks, FINN-L's BiLSTM):
its contract, checkpoint, integer model and cycle schedule.

A stack is L layers; layer l is one ``QuantLayer`` (unidirectional) or two (bidirectional: a
forward and a backward direction with their own weights). The input of layer 0 is x_t; the input of
layer l+1 at step t is layer l's output at step t: h_t, or for a bidirectional layer the
concatenation [h_fw_t ; h_bw_t] (forward direction first). Activation codes pass between layers
unchanged, so adjacent layers have the same abits and layer l+1's input size is layer l's output
width (H, or 2H). Each direction starts every sequence from its own reset state; the backward
direction runs over the sequence reversed (its output at t has seen x_T..x_t).

Hardware (rtl_gen.stack): one core per layer and direction, layer l's out stream driving layer
l+1's x stream, so layer l+1 works on step t while layer l works on step t+1. With x always valid
and the last output always taken, a stack of unidirectional layers accepts step t at cycle
``accept[l][t]`` (``stack_schedule``): accept[0][0] = 0; layer l+1 accepts step t when layer l's h_t
is valid and it is idle, accept[l+1][t] = max(accept[l][t] + L_l, accept[l+1][t-1] + L_{l+1} + 1);
layer l accepts step t+1 the cycle after it handed h_t on, accept[l][t+1] = accept[l+1][t] + 1 (the
last layer: accept[L-1][t] + L_{L-1} + 1). The first output is valid sum_l L_l cycles after x_1 is
accepted; in steady state a step takes max_l (L_l + 1) cycles.

A stack with a bidirectional layer works on whole sequences: the x stream carries a ``last`` flag
on each sequence's last step, every layer starts each sequence from its reset state, and a
bidirectional layer buffers its input sequence (at most ``max_len`` steps; the max_len-th step
ends a sequence). Its schedule (``sequence_schedule``, hand-over cycles of every element at every
layer; ``bidirectional_first_output`` in closed form for a layer on its own):

* it accepts x_t whenever it is filling (from the cycle after the previous sequence's last output
  was taken; every cycle after that until the last step), writing it to the sequence buffer;
* the forward core takes step t at s_t = max(s_{t-1} + L_fw + 1, a_t + 2) (a_t: the cycle x_t was
  accepted; two cycles: the buffer write, then its read), h_fw_t written at s_t + L_fw;
* the backward core starts after the last step is in: b_0 = a_{T-1} + 2, b_j = b_{j-1} + L_bw + 1
  (step T-1-j), h_bw written at b_j + L_bw;
* output [h_fw_t ; h_bw_t] of step 0 is valid two cycles after the later of the two last writes,
  step t+1 the cycle after step t was taken;
* a unidirectional layer of such a stack is idle one cycle more after handing on a sequence's last
  step (its state is reset then).

Checkpoint (``save_stack`` / ``load_stack``): a numpy ``.npz`` (no pickles): format "hwrnn-stack",
version, ``layers`` (JSON list of {"bidirectional": bool}), and per layer l and direction d the
entries of a layer checkpoint (hwrnn.checkpoint) under ``l{l}d{d}_config``, ``_codes``, ``_scale``,
``_bias``. numpy only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .checkpoint import CheckpointError, QuantLayer, read_npz, save_npz
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
        self.causal = not any(layer.bidirectional for layer in stack.layers)

    def _check_causal(self):
        if not self.causal:
            raise ConfigError("a stack with a bidirectional layer cannot be stepped: its backward direction "
                              "needs the whole sequence (use run)")

    def initial_state(self, batch: int = 1) -> list:
        """Every layer's reset state (hwrnn.integer_model.IntState), for a batch of sequences.
        Unidirectional stacks only (ConfigError otherwise)."""
        self._check_causal()
        return [models[0].initial_state(batch) for models in self.models]

    def step(self, x, states: list):
        """One step of every layer, layer l+1 reading layer l's new h codes unchanged (the hardware's
        hand-over): x [B, X] input codes, states from ``initial_state`` or a previous step (so a
        sequence can be fed in windows with the state carried). Returns (new states, [h codes
        [B, H_l] per layer]). Unidirectional stacks only."""
        self._check_causal()
        if len(states) != len(self.models):
            raise ValueError(f"{len(self.models)} layers need {len(self.models)} states, got {len(states)}")
        new, hs = [], []
        for models, st in zip(self.models, states):
            st, _ = models[0].step(x, st)
            new.append(st)
            hs.append(st.h)
            x = st.h
        return new, hs

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


# ---- whole sequences through stacks with bidirectional layers ----------------------------------------

def check_max_len(max_len) -> int:
    """The longest sequence a bidirectional layer's buffers hold: an integer >= 1 (ConfigError)."""
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ConfigError(f"the maximum sequence length (the bidirectional layers' buffer depth) must be an "
                          f"integer >= 1, got {max_len!r}")
    return max_len


def check_lengths(lengths, max_len: int | None) -> list[int]:
    """Sequence lengths: integers >= 1, none longer than max_len (when given); ConfigError."""
    lengths = list(lengths)
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ConfigError(f"sequence lengths must be integers >= 1, got {lengths}")
    if max_len is not None and max(lengths) > max_len:
        raise ConfigError(f"a sequence of {max(lengths)} steps is longer than the maximum sequence length "
                          f"{max_len} the bidirectional layers buffer")
    return lengths


def bidirectional_first_output(lat_fw: int, lat_bw: int, steps: int) -> int:
    """A bidirectional layer on its own, x always valid: cycles from x_1 accepted to the output of
    step 1 valid, max(1 + T (L_fw + 1), T (L_bw + 2)) + 2 (module docstring with a_t = t); the
    outputs of steps 2..T follow one a cycle when taken at once, and the next sequence's x_1 is
    accepted T cycles after the first output."""
    T = steps
    return max(1 + T * (lat_fw + 1), T * (lat_bw + 2)) + 2


def bidirectional_stack_cycles(lat_fw: int, lat_bw: int, uni_latencies, steps: int) -> tuple[int, int]:
    """(first output, sequence cycles) of a bidirectional first layer followed by unidirectional
    layers, x always valid, one sequence from idle: the later layers see the bidirectional layer's
    outputs as a unidirectional stack sees an always-valid x, from its first output F on:
    F + sum(L_l) and F + stack_schedule(L, T)[-1][-1] + L_last (F + T - 1 without later layers)."""
    F = bidirectional_first_output(lat_fw, lat_bw, steps)
    uni = list(uni_latencies)
    if not uni:
        return F, F + steps - 1
    return F + first_output_latency(uni), F + stack_schedule(uni, steps)[-1][-1] + uni[-1]


class Schedule:
    """Hand-over cycles of a stack running whole sequences (module docstring), x always valid and
    the last layer's output always taken, cycle 0 = layer 0 accepts x_1 of the first sequence.

    ``accept[l][k]``: layer l takes its input element k (elements numbered across the sequences);
    ``valid[l][k]``: layer l's output k is valid; ``taken[l][k]``: it is taken (by layer l+1, or
    for the last layer as soon as it is valid)."""

    def __init__(self, layers, lengths, delimited: bool | None = None):
        """layers: per layer its step latencies, (L,) or (L_fw, L_bw) for a bidirectional layer
        (hwrnn.datapath.latency); lengths: the sequences' lengths; delimited: whether the stack runs
        whole sequences (default: it has a bidirectional layer)."""
        self.layers = [tuple(int(v) for v in lay) for lay in layers]
        if not self.layers or any(len(lay) not in (1, 2) for lay in self.layers):
            raise ValueError(f"layers must be (L,) or (L_fw, L_bw) each, got {layers}")
        self.lengths = check_lengths(lengths, None)
        self.delimited = any(len(lay) == 2 for lay in self.layers) if delimited is None else delimited
        if not self.delimited and any(len(lay) == 2 for lay in self.layers):
            raise ValueError("a stack with a bidirectional layer runs whole sequences (delimited)")
        self.first, self.last, self.seq_len = [], [], []
        for n in self.lengths:
            for t in range(n):
                self.first.append(t == 0)
                self.last.append(t == n - 1)
                self.seq_len.append(n)
        n_el = len(self.first)
        self._memo: dict = {}
        import sys
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 64 * n_el * len(self.layers) + 1000))
        try:
            self.accept = [[self._get("A", l, k) for k in range(n_el)] for l in range(len(self.layers))]
            self.valid = [[self._get("V", l, k) for k in range(n_el)] for l in range(len(self.layers))]
            self.taken = [[self._get("H", l, k) for k in range(n_el)] for l in range(len(self.layers))]
        finally:
            sys.setrecursionlimit(limit)
        t0 = self.accept[0][0]
        for rows in (self.accept, self.valid, self.taken):
            for row in rows:
                row[:] = [c - t0 for c in row]

    def _get(self, q: str, l: int, k: int) -> int:
        key = (q, l, k)
        if key not in self._memo:
            self._memo[key] = getattr(self, "_" + q)(l, k)
        return self._memo[key]

    def _R(self, l, k):
        """First cycle layer l is ready for its input element k."""
        if k == 0:
            return 0
        if len(self.layers[l]) == 1:
            return self._get("H", l, k - 1) + 1 + (1 if self.delimited and self.last[k - 1] else 0)
        return self._get("H", l, k - 1) + 1 if self.first[k] else self._get("A", l, k - 1) + 1

    def _A(self, l, k):
        offered = self._get("V", l - 1, k) if l else 0
        return max(offered, self._get("R", l, k))

    def _V(self, l, k):
        lay = self.layers[l]
        if len(lay) == 1:
            return self._get("A", l, k) + lay[0]
        if not self.first[k]:
            return self._get("H", l, k - 1) + 1
        lf, lb = lay
        k0, T = k, self.seq_len[k]
        s = None
        for t in range(T):
            a = self._get("A", l, k0 + t) + 2
            s = a if s is None else max(s + lf + 1, a)
        b_end = self._get("A", l, k0 + T - 1) + 2 + (T - 1) * (lb + 1) + lb
        return max(s + lf, b_end) + 2

    def _H(self, l, k):
        v = self._get("V", l, k)
        return v if l == len(self.layers) - 1 else max(v, self._get("R", l + 1, k))

    def first_output(self) -> int:
        """Cycles from x_1 accepted to the last layer's first output valid."""
        return self.valid[-1][0]

    def sequence_cycles(self, seq: int = 0) -> int:
        """Cycles from the sequence's x_1 accepted to the last layer's output of its last step valid."""
        start = sum(self.lengths[:seq])
        return self.valid[-1][start + self.lengths[seq] - 1] - self.accept[0][start]


def stack_latencies(stack: Stack, folds) -> list[tuple[int, ...]]:
    """Per layer the step latency of each direction (hwrnn.datapath.latency; one fold per layer)."""
    from .datapath import latency

    if len(folds) != len(stack):
        raise ConfigError(f"{len(stack)} layers need {len(stack)} foldings, got {len(folds)}")
    return [tuple(latency(d.cfg, f) for d in layer.directions) for layer, f in zip(stack.layers, folds)]


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
    data = read_npz(path, "hwrnn stack checkpoint", ("format", "version", "layers"), _fail)
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
