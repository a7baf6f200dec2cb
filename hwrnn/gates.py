"""Gate sets: one class per recurrent cell type, each the contract of what follows the gate tables.

A gate set owns the row blocks of the weight matrix (rows gate-major: row = gate * H + unit, one
block of H rows per gate, in the order of ``gates``), the phases of a time step, which table each
gate's pre-activation address reads, and the integer step from x_t and the state to the new state,
tap by tap as the hardware computes it.

A time step is one or more **phases** (``Phase``): each is one pass of the shared datapath (MAC
array, scale and bias, gate tables) over the rows of its gates and the columns [x_t ; v], where v is
h_{t-1} or a vector an earlier phase wrote; then the phase's RTL unit (one per unit of a row fold,
rtl_gen.units.GATE_SET_UNITS) turns the gate values of a unit into the vector the phase writes (h_t
for the last phase). Per-unit words a phase leaves for a later phase or step (the LSTM's c, the
GRU's update gate) are the gate set's ``stores``.

Cell types (He et al. §3.3 for the quantized GRU; Ott et al. for the GRU with the reset gate after
the product and the vanilla RNN); Ka = 2**abits - 1, G = gate_frac, act = the candidate table
(sigmoid, or tanh: ``LayerConfig.candidate``), every division a rounding half up (hwrnn.formats):

========  =======  ==============================================================================
type      gates    integer step (codes n/Ka, gate values q/2**G)
========  =======  ==============================================================================
lstm      i f g o  one phase over [x; h]: c' = cell format's update(f, c, i, g);
                   h' = rshift_round(Ka * o * sigmoid(c'), 2G)
gru       u r | g  phase 1 over [x; h]: u, r = sigmoid; rh = rshift_round(r * h, G) = Q_a(r * h);
                   phase 2 over [x; rh]: g = act; h' = clamp(rshift_round((2**G - u) * h * 2**G
                   + Ka * u * g, 2G), 0, Ka) = Q_a(clamp((1 - u) h + u g, 0, 1))
gru_ott   u r g    one pass, the reset gate after the product (Ott et al.): g's pre-activation is
                   rshift_round((acc_x * 2**G + r * acc_h) * M + B * 2**G, R + G) (acc_x over the x
                   columns, acc_h over the h columns); u, r, h' as for gru (integer model and
                   training only: no RTL unit)
rnn       g        one phase over [x; h]: h' = clamp(rshift_round(Ka * g, G), 0, Ka)
                   = Q_a(clamp(act(z), 0, 1))
========  =======  ==============================================================================

Adding a cell type: a subclass here (registered in ``GATE_SETS``) and its phase units in
rtl_gen.units.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .formats import candidate_lut, h_code, lut_address, preactivation, rshift_round, sigmoid_lut
from .quant import levels
from .validation import ConfigError

#: default cell type of a layer
DEFAULT_CELL_TYPE = "lstm"


@dataclass(frozen=True)
class Phase:
    """One pass of the datapath in a time step.

    gates:  the row blocks it computes (lane n*k + j of a row fold computes gate j of unit k)
    source: the vector in the h columns of [x_t ; v]: "h" (h_{t-1}) or one an earlier phase wrote
    result: the vector its units write, one abits code per unit: "h" (h_t, the last phase) or a
            vector a later phase reads
    reads, writes: the per-unit stores (GateSet.stores) its units read (old word) and write
    """

    gates: tuple[str, ...]
    source: str = "h"
    result: str = "h"
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Store:
    """A per-unit word kept between phases or steps: width in bits, signedness, reset word."""

    width: int
    signed: bool
    init: int


class StepDatapath:
    """What every phase computes the same way (the integer model's view of the shared datapath):
    the exact MAC, the scale-and-bias rounding and the table read. Built by hwrnn.integer_model."""

    def __init__(self, cfg, mac_T: np.ndarray, M: int, B: np.ndarray, R: int, tables: dict):
        self.cfg, self._mT, self.M, self.B, self.R, self.tables = cfg, mac_T, M, B, R, tables

    def rows(self, gate: str) -> slice:
        """The rows of one gate's block."""
        k = self.cfg.gate_set.gates.index(gate)
        H = self.cfg.hidden
        return slice(k * H, (k + 1) * H)

    def acc(self, act: np.ndarray, rows: slice, cols: slice = slice(None)) -> np.ndarray:
        """sum_j m[row, j] * act[:, j] over the given rows and columns (exact: float64 BLAS on
        integers below 2**53)."""
        a = np.asarray(act, np.float64)
        return np.rint(a @ self._mT[cols, rows]).astype(np.int64)

    def preactivation(self, acc: np.ndarray, rows: slice) -> np.ndarray:
        return preactivation(acc, self.M, self.B[rows], self.R)

    def lookup(self, table: str, zq: np.ndarray) -> np.ndarray:
        return self.tables[table][lut_address(self.cfg, zq)]


class GateSet(ABC):
    """The contract of one cell type (module docstring)."""

    #: name of the cell type (LayerConfig.cell_type)
    name: ClassVar[str]
    #: the phases of a time step, in order
    phases: ClassVar[tuple[Phase, ...]]
    #: stores carried from step to step and shown on the core's output (the LSTM's c)
    state_stores: ClassVar[tuple[str, ...]] = ()
    #: whether rtl_gen builds it (rtl_gen.units.GATE_SET_UNITS has its phase units)
    has_rtl: ClassVar[bool] = True

    @property
    def gates(self) -> tuple[str, ...]:
        """Gates in row-block order of the weight matrix (the phases' gates, in phase order)."""
        return tuple(g for ph in self.phases for g in ph.gates)

    @property
    def n_gates(self) -> int:
        return len(self.gates)

    @property
    def has_cell_state(self) -> bool:
        return bool(self.state_stores)

    @property
    def lane_multiple(self) -> int:
        """PE must be a multiple of this: every phase puts all gate rows of a unit in one row fold."""
        return math.lcm(*(len(ph.gates) for ph in self.phases))

    def cell_bits(self, cfg) -> int:
        """Bits per unit of the cell state on the core's output (0 for cell types without one)."""
        return sum(self.stores(cfg)[n].width for n in self.state_stores)

    def preactivation_headroom(self, cfg) -> int:
        """Bits a pre-activation's integer form takes beyond acc * M + B (the integer model checks it
        fits int64)."""
        return 0

    def stores(self, cfg) -> dict[str, Store]:
        """The per-unit words the phases read and write (name -> Store)."""
        return {}

    def tap_formats(self, cfg) -> dict[str, dict]:
        """The formats of the taps after the gate tables (hwrnn.formats.tap_formats adds them to the
        shared taps; an entry named like a shared tap replaces it)."""
        return {}

    @abstractmethod
    def tables(self, cfg) -> dict[str, np.ndarray]:
        """The tables (int64, 2**lut_bits entries each): per gate name, the one its pre-activation
        address reads; under other names, the tables the units read."""

    @abstractmethod
    def step(self, cfg, dp: StepDatapath, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """(h', c', taps) of one time step: x, h codes int64 [B, X], [B, H]; c the state store's
        words (zeros for cell types without one); taps per name (the gates, the pre-activations
        "acc" and "z" of all rows, the intermediate vectors, "h")."""

    def write_stages(self, cfg, phase: int = 0) -> dict[str, int]:
        """Per store the phase writes: registers from the registered gate values to its new word."""
        return {}

    @abstractmethod
    def stages(self, cfg, phase: int = 0) -> dict[str, int]:
        """Pipeline registers of the phase's unit, stage by stage, from the registered gate values
        to its result written (hwrnn.datapath.pipeline_stages lists them after the gate tables)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    @staticmethod
    def named(name: str) -> "GateSet":
        """The gate set of a cell type name; ConfigError for an unknown one."""
        for cls in GATE_SETS:
            if cls.name == name:
                return cls()
        raise ConfigError(f"cell_type must be one of {tuple(c.name for c in GATE_SETS)}, got {name!r}")


def _gates_of(dp: StepDatapath, names, z: np.ndarray, first: int) -> dict[str, np.ndarray]:
    """Table values of consecutive gate blocks whose pre-activations z start at block ``first``."""
    H = dp.cfg.hidden
    return {n: dp.lookup(n, z[:, (k - first) * H:(k - first + 1) * H]) for k, n in enumerate(names, first)}


class LstmGates(GateSet):
    """He et al.'s quantized LSTM: gates i, f, g (candidate), o.

    i, f, o = sigmoid table; g = candidate table (sigmoid, or tanh: cfg.candidate);
    c' = cell-state format's update(f, c, i, g) (hwrnn.cell_state);
    sc = sigmoid table at the format's address of c'; h' = rshift_round(Ka * o * sc, 2G).
    """

    name = "lstm"
    phases = (Phase(("i", "f", "g", "o"), reads=("c",), writes=("c",)),)
    state_stores = ("c",)
    #: h requantizer: operands | o * sc | * Ka + rounding, shift -> h code
    H_REQUANT_STAGES = 3

    def stores(self, cfg) -> dict[str, Store]:
        cell = cfg.cell_format
        return {"c": Store(cell.width, cell.signed_word, cell.initial_word(cfg))}

    def tap_formats(self, cfg) -> dict[str, dict]:
        return {"cell": cfg.cell_format.tap_format(cfg)}

    def write_stages(self, cfg, phase: int = 0) -> dict[str, int]:
        return {"c": cfg.cell_format.update_stages}

    def stages(self, cfg, phase: int = 0) -> dict[str, int]:
        cell = cfg.cell_format
        return {
            "cell_update": cell.update_stages,
            "cell_address": cell.address_stages,
            "sigmoid_c_read": 1,
            "sigmoid_c_register": 1,
            "h_requant": self.H_REQUANT_STAGES,
        }

    def tables(self, cfg) -> dict[str, np.ndarray]:
        sig = sigmoid_lut(cfg)
        return {"i": sig, "f": sig, "g": candidate_lut(cfg), "o": sig, "sc": sig}

    def update(self, cfg, tables, gates, h, c):
        """(h', c', {"sc"}) from the gate values of all units."""
        cell = cfg.cell_format
        c_new = cell.update(cfg, gates["f"], c, gates["i"], gates["g"])
        sc = tables["sc"][cell.lut_address(cfg, c_new)]
        return h_code(cfg, gates["o"], sc), c_new, {"sc": sc}

    def step(self, cfg, dp, x, h, c):
        rows = slice(0, cfg.rows)
        acc = dp.acc(np.concatenate([x, h], axis=1), rows)
        z = dp.preactivation(acc, rows)
        gates = _gates_of(dp, self.gates, z, 0)
        h_new, c_new, extra = self.update(cfg, dp.tables, gates, h, c)
        return h_new, c_new, {"acc": acc, "z": z, **gates, "c": c_new, **extra, "h": h_new}


def reset_product(cfg, r, h):
    """rh = rshift_round(r * h, G) = Q_a(r * h_{t-1}): abits codes (r <= 2**G, so rh <= h)."""
    return rshift_round(np.asarray(r, np.int64) * np.asarray(h, np.int64), cfg.gate_frac)


def gru_h(cfg, u, g, h):
    """h' = clamp(rshift_round((2**G - u) * h * 2**G + Ka * u * g, 2G), 0, Ka) = Q_a(clamp((1-u) h + u g,
    0, 1)) (the clamp only acts for a tanh candidate, g < 0)."""
    G = cfg.gate_frac
    u, g, h = (np.asarray(v, np.int64) for v in (u, g, h))
    v = rshift_round((((1 << G) - u) * h << G) + levels(cfg.abits) * u * g, 2 * G)
    return np.clip(v, 0, levels(cfg.abits))


class GruGates(GateSet):
    """He et al.'s quantized GRU (§3.3): the reset gate acts on h before the candidate's product,
    so a step is two phases: u, r over [x; h], then g over [x; rh] (module docstring)."""

    name = "gru"
    phases = (Phase(("u", "r"), source="h", result="rh", writes=("u",)),
              Phase(("g",), source="rh", result="h", reads=("u",)))
    #: phase 1 unit: operands | r * h + rounding -> rh (and u, delayed beside it, written)
    RESET_STAGES = 2
    #: phase 2 unit: operands | (2**G - u) * h, u * g | sum, rounding shift, clamp -> h
    UPDATE_STAGES = 3

    def stores(self, cfg) -> dict[str, Store]:
        return {"u": Store(cfg.gate_frac + 1, False, 0)}

    def tap_formats(self, cfg) -> dict[str, dict]:
        Ka = levels(cfg.abits)
        return {
            "rh": {"bits": cfg.abits, "signed": False, "value": f"n / {Ka}", "range": [0, Ka],
                   "rounding": f"half up: rshift_round(r * h, {cfg.gate_frac}) = Q_a(r * h)"},
            "h": {"bits": cfg.abits, "signed": False, "value": f"n / {Ka}", "range": [0, Ka],
                  "rounding": f"half up, clamped to 0..{Ka}: rshift_round((2^G - u) * h * 2^G + {Ka} * u * g, 2G)"},
        }

    def stages(self, cfg, phase: int = 0) -> dict[str, int]:
        return {"rh_requant": self.RESET_STAGES} if phase == 0 else {"h_update": self.UPDATE_STAGES}

    def write_stages(self, cfg, phase: int = 0) -> dict[str, int]:
        return {"u": self.RESET_STAGES} if phase == 0 else {}  # u written with rh

    def tables(self, cfg) -> dict[str, np.ndarray]:
        sig = sigmoid_lut(cfg)
        return {"u": sig, "r": sig, "g": candidate_lut(cfg)}

    def step(self, cfg, dp, x, h, c):
        H = cfg.hidden
        ur = slice(0, 2 * H)
        acc1 = dp.acc(np.concatenate([x, h], axis=1), ur)
        z1 = dp.preactivation(acc1, ur)
        g1 = _gates_of(dp, ("u", "r"), z1, 0)
        rh = reset_product(cfg, g1["r"], h)
        gr = slice(2 * H, 3 * H)
        acc2 = dp.acc(np.concatenate([x, rh], axis=1), gr)
        z2 = dp.preactivation(acc2, gr)
        g = dp.lookup("g", z2)
        h_new = gru_h(cfg, g1["u"], g, h)
        return h_new, c, {"acc": np.concatenate([acc1, acc2], 1), "z": np.concatenate([z1, z2], 1),
                          **g1, "rh": rh, "g": g, "h": h_new}


class GruOttGates(GateSet):
    """Ott et al.'s GRU: the reset gate scales the h part of the candidate's pre-activation after
    the product (module docstring). Integer model and training only: it has no RTL unit (it needs a
    per-row multiply between the MAC and the scale unit, and the x and h columns summed apart)."""

    name = "gru_ott"
    phases = (Phase(("u", "r", "g")),)
    has_rtl = False

    def preactivation_headroom(self, cfg) -> int:
        return cfg.gate_frac  # (acc_x * 2**G + r * acc_h) * M + B * 2**G

    def tap_formats(self, cfg) -> dict[str, dict]:
        return {"h": GruGates().tap_formats(cfg)["h"],
                "z_g": {"frac": cfg.z_frac, "signed": True, "value": f"zq / 2^{cfg.z_frac}",
                        "rounding": "half up of ((acc_x * 2^G + r * acc_h) * M + B * 2^G) / 2^(R + G)"}}

    def stages(self, cfg, phase: int = 0) -> dict[str, int]:
        return {"h_update": GruGates.UPDATE_STAGES}

    def tables(self, cfg) -> dict[str, np.ndarray]:
        sig = sigmoid_lut(cfg)
        return {"u": sig, "r": sig, "g": candidate_lut(cfg)}

    def step(self, cfg, dp, x, h, c):
        H, X, G = cfg.hidden, cfg.input, cfg.gate_frac
        act = np.concatenate([x, h], axis=1)
        ur, gr = slice(0, 2 * H), slice(2 * H, 3 * H)
        acc1 = dp.acc(act, ur)
        z1 = dp.preactivation(acc1, ur)
        g1 = _gates_of(dp, ("u", "r"), z1, 0)
        acc_x = dp.acc(act[:, :X], gr, slice(0, X))
        acc_h = dp.acc(act[:, X:], gr, slice(X, None))
        B = np.asarray(dp.B[gr], np.int64)
        zg = rshift_round(((acc_x << G) + g1["r"] * acc_h) * int(dp.M) + (B << G), dp.R + G)
        g = dp.lookup("g", zg)
        h_new = gru_h(cfg, g1["u"], g, h)
        return h_new, c, {"acc": np.concatenate([acc1, acc_x + acc_h], 1), "z": np.concatenate([z1, zg], 1),
                          **g1, "acc_gx": acc_x, "acc_gh": acc_h, "g": g, "h": h_new}


def rnn_h(cfg, g):
    """h' = clamp(rshift_round(Ka * g, G), 0, Ka) = Q_a(clamp(act(z), 0, 1))."""
    v = rshift_round(levels(cfg.abits) * np.asarray(g, np.int64), cfg.gate_frac)
    return np.clip(v, 0, levels(cfg.abits))


class RnnGates(GateSet):
    """The vanilla RNN: h' = Q_a(clamp(act(W [x; h] + b), 0, 1)), act the candidate table (sigmoid by
    default; tanh clamped at 0, since activation codes are in [0, 1])."""

    name = "rnn"
    phases = (Phase(("g",)),)
    #: h requantizer: Ka * g + rounding, shift, clamp -> h code
    H_STAGES = 1

    def stages(self, cfg, phase: int = 0) -> dict[str, int]:
        return {"h_requant": self.H_STAGES}

    def tap_formats(self, cfg) -> dict[str, dict]:
        Ka = levels(cfg.abits)
        return {"h": {"bits": cfg.abits, "signed": False, "value": f"n / {Ka}", "range": [0, Ka],
                      "rounding": f"half up, clamped to 0..{Ka}: rshift_round({Ka} * g, G)"}}

    def tables(self, cfg) -> dict[str, np.ndarray]:
        return {"g": candidate_lut(cfg)}

    def step(self, cfg, dp, x, h, c):
        rows = slice(0, cfg.rows)
        acc = dp.acc(np.concatenate([x, h], axis=1), rows)
        z = dp.preactivation(acc, rows)
        g = dp.lookup("g", z)
        h_new = rnn_h(cfg, g)
        return h_new, c, {"acc": acc, "z": z, "g": g, "h": h_new}


#: every cell type, by LayerConfig.cell_type
GATE_SETS: tuple[type[GateSet], ...] = (LstmGates, GruGates, GruOttGates, RnnGates)
