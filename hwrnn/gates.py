"""Gate sets: one class per recurrent cell type, each the contract of what follows the gate tables.

A gate set owns the row blocks of the weight matrix (rows gate-major: row = gate * H + unit, one
block of H rows per gate, every block over the same columns [x_t ; h_{t-1}]), which table each
gate's pre-activation address reads, and the integer update from the gate values of a unit to its
new state (h, and c for cells with a cell state), tap by tap as the hardware computes it. The
datapath (MAC array, scale and bias, gate tables, controller) is shared by every gate set: it
computes the gate values of ``len(gates)`` rows per unit; the gate set's RTL unit
(rtl_gen.units.GATE_SET_UNITS) turns them into h_t.

Adding a cell type: a subclass here (registered in ``GATE_SETS``) and its unit in rtl_gen.units.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from .formats import candidate_lut, h_code, sigmoid_lut
from .validation import ConfigError

#: default cell type of a layer
DEFAULT_CELL_TYPE = "lstm"


class GateSet(ABC):
    """The contract of one cell type (module docstring)."""

    #: name of the cell type (LayerConfig.cell_type)
    name: ClassVar[str]
    #: gates in row-block order of the weight matrix
    gates: ClassVar[tuple[str, ...]]
    #: state taps carried from step to step besides h ("c" for the LSTM)
    has_cell_state: ClassVar[bool]

    @property
    def n_gates(self) -> int:
        return len(self.gates)

    @abstractmethod
    def tables(self, cfg) -> dict[str, np.ndarray]:
        """The tables (int64, 2**lut_bits entries each): per gate name, the one its pre-activation
        address reads; under other names, the tables the update reads."""

    @abstractmethod
    def update(self, cfg, tables: dict, gates: dict[str, np.ndarray], h, c) -> tuple[np.ndarray, np.ndarray, dict]:
        """(h', c', extra taps) from the gate values (int64 [B, H] each) and the state; ``tables``
        is ``self.tables(cfg)``."""

    @abstractmethod
    def stages(self, cfg) -> dict[str, int]:
        """Pipeline registers of the gate set's unit, stage by stage, from the registered gate
        values to h_t written (hwrnn.datapath.pipeline_stages lists them after the gate tables)."""

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


class LstmGates(GateSet):
    """He et al.'s quantized LSTM: gates i, f, g (candidate), o.

    i, f, o = sigmoid table; g = candidate table (sigmoid, or tanh: cfg.candidate);
    c' = cell-state format's update(f, c, i, g) (hwrnn.cell_state);
    sc = sigmoid table at the format's address of c'; h' = rshift_round(Ka * o * sc, 2G).
    """

    name = "lstm"
    gates = ("i", "f", "g", "o")
    has_cell_state = True
    #: h requantizer: operands | o * sc | * Ka + rounding, shift -> h code
    H_REQUANT_STAGES = 3

    def stages(self, cfg) -> dict[str, int]:
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
        cell = cfg.cell_format
        c_new = cell.update(cfg, gates["f"], c, gates["i"], gates["g"])
        sc = tables["sc"][cell.lut_address(cfg, c_new)]
        return h_code(cfg, gates["o"], sc), c_new, {"sc": sc}


#: every cell type, by LayerConfig.cell_type
GATE_SETS: tuple[type[GateSet], ...] = (LstmGates,)
