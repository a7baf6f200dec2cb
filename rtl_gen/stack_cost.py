"""The analytic cost of a stack (rtl_gen.stack): the sum of its layer cores (rtl_gen.cost.estimate
of each direction's core, with the layer's own bias width, multiplier width and shift) plus what
the stack adds around them: a bidirectional layer's sequence buffers and counters, and in a
stack of whole sequences a unidirectional layer's last flag and reset request.

The buffers are written memories with synchronous reads, priced like the weight memory
(hwrnn.fpga.map_memory and the weight_memory block's fitted LUT/carry coefficients); the input
buffer has two read ports (forward and backward direction) and counts as two copies (yosys'
memory_libmap gives each read port its own copy of a simple dual-port memory). The LUTs of the
buffer counters and comparators are not modelled (results/stack_bidirectional.md measures them).
"""
from __future__ import annotations

from hwrnn.config import Folding
from hwrnn.devices import check_family
from hwrnn.resources import BLOCKS, FLATTEN, RESOURCES, Built, Mem, Reg, coefficients
from hwrnn.stack import Stack, check_max_len

from .cost import block_counts, estimate


def layer_consts(layer, fold: Folding) -> dict:
    """{bias_bits, mult_bits, shift} of a direction's core as rtl_gen.core builds it."""
    from .core import port_widths

    w = port_widths(layer, fold)
    return {"bias_bits": w["bias"], "mult_bits": w["mult"], "shift": layer.shift}


def buffers_built(cfg, max_len: int) -> Built:
    """What rtl_gen.stack.BidirLayer builds besides its two cores: the counters and valid flags of
    filling, of both directions and of the output (range(max_len + 1) each), and the buffers (under
    an instance named like the weight memory, so that they are priced as it is)."""
    from .stack import BidirLayer

    check_max_len(max_len)
    cw = max(1, max_len.bit_length())
    regs = tuple(Reg(n, cw) for n in ("count", "f_addr", "f_out", "b_n", "b_out", "o")) + tuple(
        Reg(n, 1) for n in ("filled", "f_ok", "b_ok", "o_ok"))
    mems = tuple(Mem(name, width, depth, True, copies=ports)
                 for name, (width, depth, ports) in BidirLayer.buffers(cfg, max_len).items())
    return Built(regs=regs, subs=(("wmem", 1, Built(mems=mems)),))


def buffer_estimate(cfg, max_len: int, family: str) -> dict:
    """{resource: count} of a bidirectional layer's buffers and counters (module docstring)."""
    counts = block_counts(buffers_built(cfg, max_len), family)
    out = {r: 0.0 for r in RESOURCES}
    for b in BLOCKS:
        c = counts[b]
        for res in ("lut", "carry"):
            coef = coefficients(family, b, res) if b == "weight_memory" else {}
            out[res] += max(0.0, sum(coef.get(f, 0.0) * v for f, v in c["features"].items())) * FLATTEN.get(
                family, {}).get(res, 1.0)
        for res in ("ff", "dsp", "bram", "lutram"):
            out[res] += c[res]
    return out


def stack_estimate(stack: Stack, folds: list[Folding], family: str, max_len: int | None = None) -> dict:
    """Predicted yosys counts of the stack: {"family", "layers": [{"directions": [core totals],
    "buffers": counts or None, "total": counts}], "total": counts}. ``max_len`` is required with a
    bidirectional layer (its buffers' depth)."""
    check_family(family)
    delimited = any(layer.bidirectional for layer in stack.layers)
    if delimited and max_len is None:
        raise ValueError("a stack with a bidirectional layer needs max_len to price its buffers")
    layers = []
    total = {r: 0.0 for r in RESOURCES}
    for layer, fold in zip(stack.layers, folds):
        dirs = [estimate(q.cfg, fold, family, consts=layer_consts(q, fold))["total"] for q in layer.directions]
        extra = buffer_estimate(layer.cfg, max_len, family) if layer.bidirectional else (
            {**{r: 0 for r in RESOURCES}, "ff": 2} if delimited else None)  # UniLayer's last and pending
        row = {r: sum(d[r] for d in dirs) + (extra[r] if extra else 0) for r in RESOURCES}
        layers.append({"bidirectional": layer.bidirectional, "directions": dirs,
                       "buffers": _rounded(extra) if extra else None, "total": _rounded(row)})
        for r in RESOURCES:
            total[r] += row[r]
    return {"family": family, "layers": layers, "total": _rounded(total)}


def _rounded(c: dict) -> dict:
    return {k: (round(float(v), 1) if k == "bram" and float(v) != int(v) else int(round(v))) for k, v in c.items()}
