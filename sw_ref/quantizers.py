"""Torch quantizers with the straight-through estimator (STE), computing exactly the formulas of
``hwrnn/quant.py`` (the single definition; see that module and SPEC section 2).

Public API
----------
``quantize_activation(x: Tensor, abits: int | None) -> Tensor``
    ``abits`` None or 32: identity (returns ``x``). Otherwise, with K = 2**abits - 1:
    forward ``floor(K * clip(x, 0, 1) + 1/2) / K`` (half-up rounding, as hwrnn.quant);
    backward ``grad * (0 <= x <= 1)``: the STE passes the gradient where the input lies inside
    the quantizer's range [0, 1] (ends included) and gives zero outside, i.e. the derivative of
    the clip with the rounding treated as identity (the usual clipped STE; at the ends it matches
    torch.clamp's backward). In the LSTM cell the inputs of Q_a are o*sigmoid(c) in (0, 1) and
    an embedding already clipped/ReLU'd, so the mask only matters for the ReLU embedding > 1.

``quantize_weight(w: Tensor, wbits: int | None, gamma: float | None = None,
                  use_tanh: bool = True) -> Tensor``
    w' = tanh(w) if use_tanh else w. ``wbits`` None or 32: returns w' (no quantization; the
    tanh re-parametrisation is kept so that float and quantized models share one
    parametrisation). Otherwise (gamma None -> hwrnn.quant.default_gamma(wbits)):
    s = gamma * mean|w'| (one scale for the whole tensor), n = floor(K*(clip(w'/s,-1/2,1/2)+1/2)+1/2),
    value s*(n/K - 1/2). Backward: STE identity with respect to w' through the whole expression
    (including the clip, as the authors' code), then the exact tanh derivative: dL/dw = dL/dWq *
    (1 - w'^2). No gradient flows into s.

    The elementwise tanh and the mean are computed with numpy (the same calls as hwrnn.quant),
    the rest in torch with the same operation order, so in float64 the result equals
    ``hwrnn.quant.weight_value(*weight_codes(w, ...))`` bit for bit (torch.tanh and numpy.tanh
    differ in the last ulp for ~20 % of inputs, and torch/numpy reductions sum in different
    orders). In float32 (training) the same formula runs in float32 with s from a float64 mean.

``weight_codes_torch(w, wbits, gamma=None, use_tanh=True) -> (codes LongTensor, scale float)``
    The integer codes n in 0..K and the scale s of the forward above (no autograd).

``is_float_bits(bits) -> bool``: True for None or 32 (no quantization).

``activation_value(x, K)`` and ``activation_ste_mask(x, dtype)``: Q_a's forward (K = 2**abits - 1)
and its straight-through factor, without autograd (for hand-written backwards, sw_ref.fused_recurrence).
"""
from __future__ import annotations

import numpy as np
import torch

from hwrnn import quant as hq

FLOAT_BITS = (None, 32)


def is_float_bits(bits) -> bool:
    return bits is None or (not isinstance(bits, bool) and bits == 32)


def normalize_bits(bits, what: str = "bits"):
    """None/32 -> None (float); an int 1..8 is validated by hwrnn.quant.check_bits."""
    if is_float_bits(bits):
        return None
    hq.check_bits(bits, what)
    return int(bits)


def activation_value(x: torch.Tensor, K: int) -> torch.Tensor:
    """The forward of Q_a without autograd: floor(K * clip(x, 0, 1) + 1/2) / K (K = 2**abits - 1)."""
    return torch.floor(K * torch.clamp(x, 0.0, 1.0) + 0.5) / K


def activation_ste_mask(x: torch.Tensor, dtype) -> torch.Tensor:
    """The straight-through factor of Q_a at input x: 1 where 0 <= x <= 1 (ends included), else 0."""
    return ((x >= 0) & (x <= 1)).to(dtype)


class _ActivationSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, K: int):
        ctx.save_for_backward(x)
        return activation_value(x, K)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * activation_ste_mask(x, grad.dtype), None


def quantize_activation(x: torch.Tensor, abits) -> torch.Tensor:
    abits = normalize_bits(abits, "abits")
    if abits is None:
        return x
    return _ActivationSTE.apply(x, hq.levels(abits))


def _tanh_and_scale(w: torch.Tensor, gamma: float, use_tanh: bool):
    """w' (torch, same dtype/device as w) and s (python float) computed with numpy like hwrnn."""
    w_np = w.detach().cpu().numpy()
    if not np.all(np.isfinite(w_np)):
        raise ValueError("weights contain NaN or inf")
    wt_np = np.tanh(w_np) if use_tanh else w_np
    s = float(gamma * np.mean(np.abs(wt_np), dtype=np.float64))
    if not np.isfinite(s) or s <= 0.0:
        raise ValueError(f"weight scale must be finite and positive, got {s} "
                         "(all-zero or non-finite weights)")
    wt = torch.from_numpy(np.ascontiguousarray(wt_np)).to(w.device) if use_tanh else w.detach()
    return wt, s


def _codes(wt: torch.Tensor, K: int, s: float) -> torch.Tensor:
    """floor(K * (clamp(wt / s, -1/2, 1/2) + 1/2) + 1/2) in wt's dtype: the operations of hwrnn's
    rule in its order, in place on one new tensor (a fresh tensor per operation cost 4x the time
    at H=450, mostly page faults of the new buffers; the results are the same bits)."""
    x = wt / s
    return x.clamp_(-0.5, 0.5).add_(0.5).mul_(K).add_(0.5).floor_()


class _WeightSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, K: int, gamma: float, use_tanh: bool):
        wt, s = _tanh_and_scale(w, gamma, use_tanh)
        if use_tanh:
            ctx.save_for_backward(wt)
        ctx.use_tanh = use_tanh
        # s * (n / K - 1/2), in place on the codes' tensor (the same operations and bits)
        return _codes(wt, K, s).div_(K).sub_(0.5).mul_(s)

    @staticmethod
    def backward(ctx, grad):
        if ctx.use_tanh:
            (wt,) = ctx.saved_tensors
            # grad * (1 - wt * wt), in place on one new tensor: -(wt * wt) + 1 is 1 - wt * wt exactly
            grad = (wt * wt).neg_().add_(1.0).mul_(grad)
        return grad, None, None, None


def _resolve_gamma(wbits: int, gamma):
    g = hq.default_gamma(wbits) if gamma is None else float(gamma)
    if not np.isfinite(g) or g <= 0:
        raise ValueError(f"gamma must be a positive number, got {gamma!r}")
    return g


def quantize_weight(w: torch.Tensor, wbits, gamma=None, use_tanh: bool = True) -> torch.Tensor:
    wbits = normalize_bits(wbits, "wbits")
    if wbits is None:
        return torch.tanh(w) if use_tanh else w
    return _WeightSTE.apply(w, hq.levels(wbits), _resolve_gamma(wbits, gamma), bool(use_tanh))


@torch.no_grad()
def weight_codes_torch(w: torch.Tensor, wbits, gamma=None, use_tanh: bool = True):
    wbits = normalize_bits(wbits, "wbits")
    if wbits is None:
        raise ValueError("weight codes need integer wbits (got float)")
    wt, s = _tanh_and_scale(w, _resolve_gamma(wbits, gamma), use_tanh)
    return _codes(wt, hq.levels(wbits), s).long(), s
