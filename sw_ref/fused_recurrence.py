"""The LSTM recurrence of one TBPTT window as a single autograd node (sw_ref.cells.LstmCell without a
hardware cell format): a forward loop over the window that keeps what the backward needs, and a
hand-written backward loop over the window.

``lstm_recurrence_fused(xw, Wh_t, h0, c0, abits, candidate='sigmoid') -> (hs, h_T, c_T)``
    xw [T, B, 4H] (the input part x_t W_x^T + b of every step, gate blocks i, f, g, o), Wh_t [H, 4H]
    (W_h transposed, as the cell receives it: already through the caller's weight quantizer, which
    autograd differentiates as before from dL/dWh_t), h0, c0 [B, H]; abits None = float;
    candidate 'sigmoid' or 'tanh' (the activation of g); T >= 1. Per step, with the very calls and
    operation order of ``LstmCell.recurrence`` (so the outputs are bit-identical to it):

        z_t = addmm(xw_t, h_{t-1}, Wh_t);  i, f, o = sigmoid;  g = sigmoid or tanh
        c_t = addcmul(f * c_{t-1}, i, g);  h_t = Q_a(o * sigmoid(c_t))

    (sigmoid candidate: one sigmoid over z_t, then split; tanh: the four blocks separately);
    Q_a = sw_ref.quantizers' activation quantizer (identity in float mode). Returns hs [T, B, H]
    (h_1 .. h_T), h_T and c_T [B, H] (h_T a tensor of its own, equal to hs[-1]).

    Backward: gradients to xw, Wh_t, h0 and c0, each only if it requires grad (under no_grad, or
    when nothing requires grad, the forward loop runs alone and keeps nothing). Q_a's gradient is its
    straight-through estimator ``grad * (0 <= o*sigmoid(c) <= 1)`` (ends included; identity in float
    mode). The chain rule runs step by step from T down to 1 with the kernels autograd applies to the
    step-by-step graph (mul, sigmoid_backward, tanh_backward, addmm's GEMM for dL/dh_{t-1}), so
    dL/dxw (the stacked dL/dz_t), dL/dh0 and dL/dc0 equal autograd's bit for bit (the same kernels on
    the same values). dL/dWh_t = sum_t h_{t-1}^T dz_t is ONE matrix product over the window after the
    loop, where autograd computes T products of inner size B and adds them from the last step to the
    first: the same sum in another order, equal to rounding (float32: ~1e-7 relative; float64:
    ~1e-16), and the main saving (T GEMMs with [H, 4H] outputs and their additions become one).
    Training with it is therefore not bit-identical to the step-by-step path: the parameters drift
    apart by rounding (a quantized run stays within ~1e-6 over an epoch of the tiny test corpus; a
    float run at lr 20 diverges chaotically, as it does from any 1-ulp change of its start).
    Not twice differentiable.
"""
from __future__ import annotations

import torch

from hwrnn import quant as hq
from sw_ref.quantizers import activation_ste_mask, activation_value, normalize_bits

_sigmoid_backward = torch.ops.aten.sigmoid_backward.default
_sigmoid_backward_out = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward_out = torch.ops.aten.tanh_backward.grad_input


def _forward(xw, Wh_t, h0, c0, K, sig_cand, keep: bool):
    """The forward loop (the calls of LstmCell.recurrence): (hs, h_T, c_T, saved or None); ``saved``
    holds what the backward needs when ``keep``."""
    H = h0.shape[1]
    hs_list, acts, cs, ss, hps = [], [], [], [], []
    h, c = h0, c0
    for xw_t in xw.unbind(0):
        z = torch.addmm(xw_t, h, Wh_t)
        if sig_cand:
            a = torch.sigmoid(z)
            i, f, g, o = a.split(H, dim=1)
        else:
            a = None
            zi, zf, zg, zo = z.split(H, dim=1)
            i, f, g, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
        c = torch.addcmul(f * c, i, g)
        s = torch.sigmoid(c)
        hp = o * s
        h = hp if K is None else activation_value(hp, K)
        hs_list.append(h)
        if keep:
            acts.append((a, i, f, g, o))
            cs.append(c)
            ss.append(s)
            hps.append(hp)
    saved = None
    if keep:  # per step: gate activations, sigmoid(c_t), Q_a's input, h_{t-1}, c_{t-1}
        saved = dict(acts=acts, ss=ss, hps=hps, h_prev=hs_list[:-1], c_prev=cs[:-1])
    return torch.stack(hs_list), h, c, saved


class _FusedLstmWindow(torch.autograd.Function):
    """One TBPTT window of the LSTM recurrence (module docstring). Inputs xw, Wh_t, h0, c0, K (Q_a's
    2**abits - 1, or None for float), sig_cand; outputs hs, h_T, c_T."""

    @staticmethod
    def forward(ctx, xw, Wh_t, h0, c0, K, sig_cand):
        hs, h, c, saved = _forward(xw, Wh_t, h0, c0, K, sig_cand, keep=True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(Wh_t, h0, c0)  # the inputs (checked against in-place changes)
        # the window's intermediates on ctx (the backward is not differentiable again)
        ctx.sig_cand, ctx.quantized = sig_cand, K is not None
        for k, v in saved.items():
            setattr(ctx, k, v)
        return hs, h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_hs, d_hT, d_cT):
        need_xw, need_W, need_h0, need_c0 = ctx.needs_input_grad[:4]
        Wh_t, h0, c0 = ctx.saved_tensors
        h_prev, c_prev = [h0] + ctx.h_prev, [c0] + ctx.c_prev  # h_{t-1}, c_{t-1} of every step
        T = len(ctx.acts)
        s0 = ctx.ss[0]
        B, H = s0.shape
        dzs = s0.new_empty(T, B, 4 * H)  # dL/dz_t, also dL/dxw
        dh_next = dc_next = dW = None
        for t in range(T - 1, -1, -1):
            a, i, f, g, o = ctx.acts[t]
            s = ctx.ss[t]
            # dL/dh_t: the window output's gradient plus the next step's (at T, the final state's)
            dh = d_hs[t] if d_hs is not None else None
            dh_other = d_hT if t == T - 1 else dh_next
            if dh_other is not None:
                dh = dh_other if dh is None else dh + dh_other
            if dh is None:
                dh = torch.zeros_like(s)
            if ctx.quantized:  # Q_a's straight-through estimator (sw_ref.quantizers)
                dh = dh * activation_ste_mask(ctx.hps[t], dh.dtype)
            dc = _sigmoid_backward(dh * o, s)
            dc_other = d_cT if t == T - 1 else dc_next
            if dc_other is not None:
                dc = dc + dc_other
            dz = dzs[t]
            d_i, d_f, d_g, d_o = dz.split(H, dim=1)   # filled with dL/d(gate), then turned into dL/dz
            torch.mul(dc, g, out=d_i)
            torch.mul(dc, c_prev[t], out=d_f)
            torch.mul(dc, i, out=d_g)
            torch.mul(dh, s, out=d_o)
            if ctx.sig_cand:
                _sigmoid_backward_out(dz, a, grad_input=dz)
            else:
                for d, y in ((d_i, i), (d_f, f), (d_o, o)):
                    _sigmoid_backward_out(d, y, grad_input=d)
                _tanh_backward_out(d_g, g, grad_input=d_g)
            if t > 0 or need_c0:
                dc_next = dc * f
            if t > 0 or need_h0:
                dh_next = torch.mm(dz, Wh_t.t())
        if need_W:  # sum_t h_{t-1}^T dz_t as ONE product over the window: [h_0 .. h_{T-1}]^T [dz_1 .. dz_T]
            dW = torch.mm(torch.stack(h_prev).view(T * B, H).t(), dzs.view(T * B, 4 * H))
        return (dzs if need_xw else None, dW, dh_next if need_h0 else None, dc_next if need_c0 else None,
                None, None)


def lstm_recurrence_fused(xw, Wh_t, h0, c0, abits, candidate="sigmoid"):
    """(hs [T, B, H], h_T, c_T) of the LSTM recurrence over one window as one autograd node (module
    docstring); ValueError (one line) for an empty window or an unknown candidate."""
    if xw.dim() != 3 or xw.shape[0] < 1:
        raise ValueError(f"xw must be [T, B, 4H] with T >= 1, got shape {list(xw.shape)}")
    if candidate not in ("sigmoid", "tanh"):
        raise ValueError(f"candidate must be 'sigmoid' or 'tanh', got {candidate!r}")
    abits = normalize_bits(abits, "abits")
    K = None if abits is None else hq.levels(abits)
    sig_cand = candidate == "sigmoid"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (xw, Wh_t, h0, c0)):
        return _FusedLstmWindow.apply(xw, Wh_t, h0, c0, K, sig_cand)
    return _forward(xw, Wh_t, h0, c0, K, sig_cand, keep=False)[:3]  # nothing to differentiate


__all__ = ["lstm_recurrence_fused"]
