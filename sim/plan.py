"""The plan of one cocotb regression run, and its expected results from the integer model.

A plan is JSON: manifest path, baked layer checkpoint, optional run-time-loaded checkpoint, x_t
codes, reset points, seed and stall probabilities. numpy + hwrnn + hwrnn.integer_model only (no
torch), so the simulator process imports it cheaply.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from hwrnn.checkpoint import load_layer
from hwrnn.config import Folding
from hwrnn.datapath import bias_image, weight_image
from hwrnn.integer_model import IntegerLSTM

LOAD_WEIGHT, LOAD_BIAS, LOAD_MULT = 0, 1, 2  # same as rtl_gen.core (checked by a test)


@dataclass
class Plan:
    manifest_path: str
    layer_path: str
    xs: list
    seed: int = 0
    stall_in: float = 0.0
    stall_out: float = 0.0
    reset_state_before: list = field(default_factory=list)  # steps preceded by a reset_state pulse
    rst_during: dict = field(default_factory=dict)  # step -> cycles after accept when rst pulses
    load_layer_path: str | None = None  # checkpoint loaded through the load stream before step 0
    manifest: dict = field(default=None, repr=False)

    def to_json(self) -> str:
        d = {k: v for k, v in self.__dict__.items() if k != "manifest"}
        d["xs"] = [[int(v) for v in x] for x in self.xs]
        d["rst_during"] = {str(k): int(v) for k, v in self.rst_during.items()}
        return json.dumps(d)


def write_plan(plan: Plan, path) -> None:
    with open(path, "w") as fh:
        fh.write(plan.to_json())


def load_plan(path) -> Plan:
    with open(path) as fh:
        d = json.load(fh)
    d["rst_during"] = {int(k): v for k, v in d.get("rst_during", {}).items()}
    d["reset_state_before"] = set(d.get("reset_state_before", []))
    plan = Plan(**d)
    with open(plan.manifest_path) as fh:
        plan.manifest = json.load(fh)
    return plan


def active_layer(plan: Plan):
    return load_layer(plan.load_layer_path or plan.layer_path)


def expected_outputs(plan: Plan):
    """Per step (h, c) lists from the integer model, None for a step aborted by rst."""
    model = IntegerLSTM(active_layer(plan))
    state = model.initial_state(1)
    out = []
    for t, x in enumerate(plan.xs):
        if t in plan.reset_state_before:
            state = model.initial_state(1)
        new, _ = model.step(np.asarray([x], dtype=np.int64), state)
        if t in plan.rst_during:
            out.append(None)
            state = model.initial_state(1)
        else:
            out.append(([int(v) for v in new.h[0]], [int(v) for v in new.c[0]]))
            state = new
    return out


def load_words(plan: Plan):
    """(sel, addr, data) words that load plan.load_layer_path at run time ([] without one)."""
    if not plan.load_layer_path:
        return []
    layer = load_layer(plan.load_layer_path)
    man = plan.manifest
    fold = Folding(**man["folding"])
    baked = man["config"]
    if layer.cfg.to_dict() != baked:
        raise ValueError("the run-time checkpoint has a different configuration than the generated core")
    if layer.shift != man["scale"]["shift"]:
        raise ValueError(f"the run-time checkpoint needs shift {layer.shift}, the core has {man['scale']['shift']}")
    bw = man["scale"]["bias_bits"]
    words = [(LOAD_WEIGHT, a, w) for a, w in enumerate(weight_image(layer, fold))]
    for a, row in enumerate(bias_image(layer, fold)):
        if any(not (-(1 << (bw - 1)) <= b < (1 << (bw - 1))) for b in row):
            raise ValueError(f"a bias of the run-time checkpoint does not fit the core's {bw}-bit bias memory")
        words.append((LOAD_BIAS, a, sum((b & ((1 << bw) - 1)) << (bw * j) for j, b in enumerate(row))))
    words.append((LOAD_MULT, 0, layer.mult))
    return words


def stream_words(plan: Plan):
    """The per-step word sequence of a streamed-weights core (the active layer's image)."""
    return weight_image(active_layer(plan), Folding(**plan.manifest["folding"]))


def random_plan(manifest_path, layer_path, steps: int, seed: int, stall_in=0.3, stall_out=0.3,
                resets: bool = True, load_layer_path=None) -> Plan:
    """x_t uniformly random; with resets, a reset_state before one step and an rst during another."""
    with open(manifest_path) as fh:
        man = json.load(fh)
    rng = np.random.default_rng(seed)
    X = man["config"]["input"]
    K = (1 << man["config"]["abits"]) - 1
    xs = rng.integers(0, K + 1, (steps, X)).tolist()
    rs, rd = [], {}
    if resets and steps >= 4:
        rs = [int(rng.integers(1, steps))]
        cand = [t for t in range(1, steps) if t not in rs]
        lat = man["latency"]["cycles_per_step"]
        rd = {int(rng.choice(cand)): int(rng.integers(1, max(2, lat - 1)))}
    return Plan(str(manifest_path), str(layer_path), xs, seed=seed, stall_in=stall_in, stall_out=stall_out,
                reset_state_before=rs, rst_during=rd, load_layer_path=str(load_layer_path) if load_layer_path else None)
