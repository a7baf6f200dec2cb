"""The contract's error type, its parameter checks and the names of its enumerated options.

Imported by every hwrnn module that validates, so that none of them needs hwrnn.config (which
imports them): the import graph of hwrnn has no cycle."""
from __future__ import annotations

#: activation of the LSTM candidate g (bit-rnn's code: sigmoid; He et al.'s paper: tanh)
CANDIDATES = ("sigmoid", "tanh")
#: reset state: "zero" (h0 = 0, c0 = 0) or "half" (h0 = Q_a(0.5), c0 = 0.5, the authors' code)
INIT_STATES = ("zero", "half")


class ConfigError(ValueError):
    """An invalid configuration; the message is one line naming the problem."""


def int_in(name: str, value, lo: int, hi: int | None = None) -> None:
    """Raise ConfigError unless ``value`` is an int (not bool) in lo..hi (hi None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must be in {rng}, got {value}")


def one_of(name: str, value, choices: tuple) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
