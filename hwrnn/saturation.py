"""How often a layer's cell state saturates: the fraction of cell values at the format's limits over a
run of the integer model, and the one-line note a manifest states it with.

A saturated cell word is one at the cell format's bound (hwrnn.cell_state): for ``fixed:I.F`` the
integers -2**(I+F) and 2**(I+F) - 1 (the values -2**I and 2**I - 2**-F), for a floating-point cell
the largest finite magnitude (its overflow saturates there). With the sigmoid candidate
(He et al.'s code) i*g >= 0 only adds to c, so a trained layer can sit at the top bound: the shipped
W4A2 PTB layer does on about a tenth of its values. h is nearly unaffected there because
sigmoid(c) is flat (sigmoid(8) = 1 - 3.4e-4: under a tenth of a code even at A8); the note
states it so that a reader of the manifest knows the cell range is used to its end.

``measure(layer, xs)`` runs hwrnn.integer_model.IntegerLSTM (the bit-exact model) on activation
codes xs ([T, X], or [T, B, X] for B independent sequences) from the reset state and counts, over
all T * B * H cell values c_1..c_T, those at the lower and at the upper bound. numpy only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checkpoint import QuantLayer
from .integer_model import IntegerLSTM
from .quant import levels

#: above this fraction of saturated cell values a calibration run is worth a warning
WARN_FRACTION = 0.05
#: default calibration run of ``calibration_codes``: steps and independent sequences
CALIBRATION_STEPS = 100
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class Saturation:
    """Counts of one run: ``values`` cell values (steps * sequences * hidden), ``low`` of them at the
    lower bound, ``high`` at the upper bound; the bounds as values (float64) and the cell format."""

    cell: str
    values: int
    low: int
    high: int
    low_value: float
    high_value: float

    @property
    def fraction(self) -> float:
        """Fraction of saturated cell values (either bound), 0.0 for an empty run."""
        return (self.low + self.high) / self.values if self.values else 0.0

    @property
    def fraction_low(self) -> float:
        return self.low / self.values if self.values else 0.0

    @property
    def fraction_high(self) -> float:
        return self.high / self.values if self.values else 0.0

    def to_dict(self) -> dict:
        return {"cell": self.cell, "values": self.values, "low": self.low, "high": self.high,
                "fraction": self.fraction, "low_value": self.low_value, "high_value": self.high_value}


def bounds(cfg) -> tuple[int, int, float, float]:
    """(lowest word, highest word, their values) of the layer's cell format, as the integer model
    stores them (fixed point: signed integers; floating point: bit patterns, compared by magnitude)."""
    return cfg.cell_format.saturation_words()


def saturated(cfg, c) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (at the lower bound, at the upper bound) of cell words c (int64 array)."""
    c = np.asarray(c, np.int64)
    lo, hi, _, _ = bounds(cfg)
    return c == lo, c == hi


def measure(layer: QuantLayer, xs, state=None) -> Saturation:
    """Saturation counts of the integer model run on codes xs ([T, X] or [T, B, X]) from ``state``
    (an IntState; default the reset state)."""

    cfg = layer.cfg
    xs = np.asarray(xs)
    if xs.ndim == 2:
        xs = xs[:, None, :]
    if xs.ndim != 3 or xs.shape[2] != cfg.input:
        raise ValueError(f"codes must have shape [T, {cfg.input}] or [T, B, {cfg.input}], got {np.shape(xs)}")
    model = IntegerLSTM(layer)
    st = state if state is not None else model.initial_state(xs.shape[1])
    low = high = n = 0
    for x in xs:
        st, _ = model.step(x, st)
        lo, hi = saturated(cfg, st.c)
        low += int(lo.sum())
        high += int(hi.sum())
        n += st.c.size
    _, _, lv, hv = bounds(cfg)
    return Saturation(cfg.cell, n, low, high, lv, hv)


def calibration_codes(cfg, steps: int = CALIBRATION_STEPS, batch: int = CALIBRATION_BATCH, seed: int = 0):
    """A seeded calibration input when no data is at hand: [steps, batch, X] activation codes drawn
    uniformly from 0..Ka (a trained layer's real inputs may saturate more or less; pass them to
    ``measure`` instead when available)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, levels(cfg.abits) + 1, size=(steps, batch, cfg.input), dtype=np.int64)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %" if x == 0 or x >= 0.001 else "< 0.1 %"


def note(stats: Saturation, run: str = "calibration run") -> str:
    """One line for a manifest's format notes, e.g. "cell fixed:3.10 saturates on 12.1 % of values
    (at +7.999 on 12.1 %, at -8 on 0.0 %) over the calibration run (1800 values); h barely moves there:
    sigmoid(c) is flat (sigmoid(8) = 1 - 3.4e-04)"."""
    edge = min(abs(stats.low_value), abs(stats.high_value))
    flat = 1.0 / (1.0 + math.exp(edge)) if edge < 700 else 0.0
    return (f"cell {stats.cell} saturates on {_pct(stats.fraction)} of values (at {stats.high_value:+.6g} on "
            f"{_pct(stats.fraction_high)}, at {stats.low_value:+.6g} on {_pct(stats.fraction_low)}) over the {run} "
            f"({stats.values} values); h barely moves there: sigmoid(c) is flat "
            f"(sigmoid({edge:.6g}) = 1 - {flat:.1e})")


def warning(stats: Saturation, run: str = "calibration run", limit: float = WARN_FRACTION) -> str | None:
    """One-line warning when more than ``limit`` of the values saturate, else None."""
    if stats.fraction <= limit:
        return None
    return (f"warning: the cell state {stats.cell} saturates on {_pct(stats.fraction)} of values over the {run} "
            f"(more than {_pct(limit)}); a wider cell (more integer bits) would keep them")
