"""The bit-exact integer model of one quantized recurrent layer: exactly what the hardware computes.

numpy only (no torch), vectorised over a batch of independent sequences. Every arithmetic step is
the hwrnn reference of one hardware block:

    acc  = mac_values(codes) @ [x ; h]            MAC array (the weight code's integer weights;
                                                  exact: float64 BLAS on integers below 2**53)
    zq   = rshift_round(acc * M + B, R)          scale-and-bias unit (hwrnn.formats)
    gate = table[clamp(zq) + offset]              the gate set's tables (hwrnn.gates)
    h', c' = gate set's step                      phase by phase (hwrnn.gates: LSTM cell-state unit,
                                                  then h' = rshift_round(Ka * o * sigmoid(c'), 2G);
                                                  GRU reset product, second pass, update; RNN)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import formats as fm
from .checkpoint import QuantLayer
from .gates import StepDatapath
from .quant import levels

TAPS = ("acc", "z", "i", "f", "g", "o", "c", "sc", "h")  # of the LSTM (each gate set's step names its own)


@dataclass
class IntState:
    """h: activation codes [B, H] int64; c: cell state [B, H] int64 (fixed-point integers, or the bit
    patterns of a floating-point cell format; zeros for cell types without a cell state)."""

    h: np.ndarray
    c: np.ndarray

    def copy(self) -> "IntState":
        return IntState(self.h.copy(), self.c.copy())


class IntegerLSTM:
    """Runs a QuantLayer step by step on integer activation codes (any gate set and cell-state
    format of hwrnn.gates / hwrnn.cell_state; the name is the LSTM's, the first of them)."""

    def __init__(self, layer: QuantLayer):
        self.layer = layer
        self.cfg = cfg = layer.cfg
        m = cfg.weight_coding.mac_values(layer.codes)
        bound = fm.acc_bound(cfg)
        if bound >= 2 ** 53:
            raise ValueError(f"|acc| up to {bound} is beyond the exact float64 MAC of the integer model")
        self._mT = m.T.astype(np.float64)  # [N, rows]
        self.M, self.R, self.B = layer.mult, layer.shift, layer.bias_int
        # acc * M + B + 2**(R-1) (formats.preactivation) in int64: never wrap silently
        top = (bound * int(self.M) + int(np.abs(self.B).max(initial=0)) + (1 << (self.R - 1))) << cfg.gate_set.preactivation_headroom(cfg)
        if top >= 2 ** 63:
            raise ValueError(f"acc * M + B reaches {top.bit_length()} bits: beyond the int64 integer model")
        self.gate_set = cfg.gate_set
        self.tables = self.gate_set.tables(cfg)
        self._dp = StepDatapath(cfg, self._mT, int(self.M), np.asarray(self.B, np.int64), self.R, self.tables)

    def initial_state(self, batch: int = 1) -> IntState:
        h0, c0 = fm.initial_state(self.cfg)
        c0 = c0 if self.gate_set.has_cell_state else 0
        H = self.cfg.hidden
        return IntState(np.full((batch, H), h0, np.int64), np.full((batch, H), c0, np.int64))

    def _check_x(self, x):
        x = np.asarray(x)
        if x.dtype.kind not in "iu":
            raise ValueError(f"x codes must be integers, got {x.dtype}")
        if x.ndim != 2 or x.shape[1] != self.cfg.input:
            raise ValueError(f"x codes must have shape [batch, {self.cfg.input}], got {x.shape}")
        Ka = levels(self.cfg.abits)
        if x.size and (x.min() < 0 or x.max() > Ka):
            raise ValueError(f"x codes out of range 0..{Ka}")
        return x.astype(np.int64)

    def step(self, x, state: IntState, trace: bool = False):
        """One time step. x: [B, X] codes. Returns (new_state, taps dict or None)."""
        x = self._check_x(x)
        h, c, taps = self.gate_set.step(self.cfg, self._dp, x, state.h, state.c)
        new = IntState(h, c)
        return new, (taps if trace else None)

    def run(self, xs, state: IntState | None = None, trace: bool = True):
        """xs: [T, X] (one sequence) codes. Returns (final state, list of per-step tap dicts for
        batch element 0, each tap squeezed to 1-D)."""
        xs = np.asarray(xs)
        if xs.ndim != 2:
            raise ValueError(f"sequence must have shape [T, {self.cfg.input}], got {xs.shape}")
        st = state if state is not None else self.initial_state(1)
        out = []
        for t in range(xs.shape[0]):
            st, taps = self.step(xs[t:t + 1], st, trace=True)
            if trace:
                out.append({k: v[0].copy() for k, v in taps.items()})
        return st, out


def reference_sequence(layer: QuantLayer, xs, h0=None, c0=None):
    """Convenience for simulators: run one sequence from the reset state (or given h0/c0 vectors)
    and return a list of (h, c) int64 vectors per step (c zeros for cell types without one)."""
    model = IntegerLSTM(layer)
    st = model.initial_state(1)
    if h0 is not None:
        st.h[0] = np.asarray(h0, np.int64)
    if c0 is not None:
        st.c[0] = np.asarray(c0, np.int64)
    _, taps = model.run(xs, st)
    return [(t["h"], t.get("c", np.zeros_like(t["h"]))) for t in taps]
