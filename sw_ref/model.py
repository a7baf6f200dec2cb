"""Quantized LSTM language model of He et al. (training model of sw_ref).

Public API
----------
``LMConfig`` (dataclass; ``LMConfig.from_dict(d)``, ``cfg.to_dict()``):
    vocab (int, vocabulary size), hidden (H), input (X; None -> hidden),
    wbits, abits (int 1..8, or None/32 = float, normalised to None),
    gamma (None -> 2.0 if wbits == 1 else 2.5; resolved in __post_init__ when wbits is set),
    weight_tanh=True (W' = tanh(W) before the quantizer; also in float mode, so that a float
    checkpoint is a valid starting point for quantized fine-tuning),
    candidate='sigmoid'|'tanh' (activation of g), embedding='clip'|'relu',
    init_state='zero'|'half', quantize_output=False (quantize the decoder weight with wbits),
    dropout=0.3.

``QuantLSTMLM(cfg)`` (nn.Module), parameters (exact names):
    embedding.weight [V, X]   init U(0, 1)
    rnn.weight       [4H, X+H] rows gate-major i, f, g, o (row = gate*H + unit), columns [x_t ; h_{t-1}]
                     init U(-1/sqrt(H), 1/sqrt(H))
    rnn.bias         [4H]      init 0, except the forget gate rows = 1.0
    decoder.weight   [V, H]    init U(-0.1, 0.1)
    decoder.bias     [V]       init 0
  Cell (per time step t, Q_a = quantize_activation(., abits), identity in float mode):
    x_t = Q_a(emb(E[w_t]))      emb = clamp(., 0, 1) ('clip') or relu ('relu'); dropout on x_t in training
    W_q = quantize_weight(rnn.weight, wbits, gamma, weight_tanh)   (one scale for the whole matrix)
    z   = [x_t, h_{t-1}] @ W_q^T + b
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = sigmoid(z_g) (or tanh)
    c_t = f * c_{t-1} + i * g;   h_t = Q_a(o * sigmoid(c_t))
    logits = dropout(h_t) @ D^T + d, D = decoder.weight (or quantize_weight(decoder.weight, ...)
    if quantize_output).
  Dropout is applied only to x_t and to the h_t going to the decoder, never on the recurrent path
  (as the authors' DropoutWrapper(output_keep_prob)); the hardware never sees dropout.

  ``forward(tokens [T, B] long, state=None) -> (logits [T*B, V], (h, c))``; state None ->
      ``init_hidden(B)``. Detach the returned state between TBPTT windows (``detach_state``).
  ``init_hidden(bsz) -> (h0, c0)`` each [B, H]: zeros ('zero'), or h0 = Q_a(0.5), c0 = 0.5
      ('half', as hwrnn.config defines it for the integer model and the hardware; the authors'
      code also rounds c0, round_bit(sigmoid(0)), which differs for c0 only).
  ``step_trace(tokens [T] long, state=None, dtype=torch.float64) -> dict`` of tensors [T, H]
      (keys 'x' [T, X], 'z' [T, 4H], 'i', 'f', 'g', 'o', 'c', 'h') for a single sequence in
      inference mode (no dropout), computed with the parameters cast to ``dtype`` (float64 by
      default: then the quantizers equal hwrnn.quant bit for bit). ``state`` is (h0, c0) of shape
      [H] or [1, H]. Also returns 'logits' [T, V].
  ``effective_weights() -> dict``: the float matrices the forward uses ('rnn' W_q, 'decoder').
  ``constrain_()``: projects embedding.weight into [0, 1] in place (for embedding='clip'; the
      trainer calls it after each optimizer step so clipped entries keep receiving gradient).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwrnn import quant as hq
from hwrnn.cell_state import CellState
from hwrnn.validation import ConfigError
from sw_ref.quantizers import normalize_bits, quantize_activation, quantize_weight

CANDIDATES = ("sigmoid", "tanh")
EMBEDDINGS = ("clip", "relu")
INIT_STATES = ("zero", "half")


@dataclass
class LMConfig:
    vocab: int
    hidden: int
    input: int | None = None
    wbits: int | None = None
    abits: int | None = None
    gamma: float | None = None
    weight_tanh: bool = True
    candidate: str = "sigmoid"
    embedding: str = "clip"
    init_state: str = "zero"
    quantize_output: bool = False
    cell: str | None = None  # None: c in float32; else the hardware cell format, emulated (STE)
    dropout: float = 0.3

    def __post_init__(self):
        for name in ("vocab", "hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.input is None:
            self.input = self.hidden
        if isinstance(self.input, bool) or not isinstance(self.input, int) or self.input < 1:
            raise ValueError(f"input must be a positive integer, got {self.input!r}")
        self.wbits = normalize_bits(self.wbits, "wbits")
        self.abits = normalize_bits(self.abits, "abits")
        if self.gamma is None and self.wbits is not None:
            self.gamma = hq.default_gamma(self.wbits)
        if self.gamma is not None:
            g = float(self.gamma)
            if not math.isfinite(g) or g <= 0:
                raise ValueError(f"gamma must be a positive number, got {self.gamma!r}")
            self.gamma = g
        if self.candidate not in CANDIDATES:
            raise ValueError(f"candidate must be one of {CANDIDATES}, got {self.candidate!r}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.init_state not in INIT_STATES:
            raise ValueError(f"init_state must be one of {INIT_STATES}, got {self.init_state!r}")
        d = float(self.dropout)
        if not 0.0 <= d < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = d
        self.weight_tanh = bool(self.weight_tanh)
        self.quantize_output = bool(self.quantize_output)
        if self.cell is not None:
            try:
                self.cell = str(CellState.parse(self.cell))  # validates the format's own widths
            except ConfigError as e:
                raise ValueError(str(e)) from None

    @property
    def is_float(self) -> bool:
        return self.wbits is None and self.abits is None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**d)


class _RNNParams(nn.Module):
    def __init__(self, rows: int, cols: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, cols))
        self.bias = nn.Parameter(torch.empty(rows))


class QuantLSTMLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        #: the hardware cell-state format emulated in training (hwrnn.cell_state), or None
        self.cell_state = CellState.parse(cfg.cell) if cfg.cell is not None else None
        V, H, X = cfg.vocab, cfg.hidden, cfg.input
        self.embedding = nn.Embedding(V, X)
        self.rnn = _RNNParams(4 * H, X + H)
        self.decoder = nn.Linear(H, V)
        self.drop = nn.Dropout(cfg.dropout)
        #: dtype of the decoder GEMMs in training mode (None: the parameters' fp32; torch.bfloat16:
        #: CPU autocast of the decoder Linear only, its logits returned in float32). Evaluation
        #: (eval mode) and the LSTM layer always compute in the parameters' dtype.
        self.train_decoder_dtype = None
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------
    def reset_parameters(self):
        H = self.cfg.hidden
        with torch.no_grad():
            self.embedding.weight.uniform_(0.0, 1.0)
            r = 1.0 / math.sqrt(H)
            self.rnn.weight.uniform_(-r, r)
            self.rnn.bias.zero_()
            self.rnn.bias[H:2 * H].fill_(1.0)  # forget gate
            self.decoder.weight.uniform_(-0.1, 0.1)
            self.decoder.bias.zero_()

    @torch.no_grad()
    def constrain_(self):
        if self.cfg.embedding == "clip":
            self.embedding.weight.clamp_(0.0, 1.0)

    def _qa(self, x):
        return quantize_activation(x, self.cfg.abits)

    def _embed(self, tokens):
        e = self.embedding(tokens)
        e = torch.clamp(e, 0.0, 1.0) if self.cfg.embedding == "clip" else F.relu(e)
        return self._qa(e)

    def _rnn_weight(self, weight=None):
        c = self.cfg
        w = self.rnn.weight if weight is None else weight
        return quantize_weight(w, c.wbits, c.gamma, c.weight_tanh)

    def _decoder_weight(self, weight=None):
        c = self.cfg
        w = self.decoder.weight if weight is None else weight
        if c.quantize_output:
            return quantize_weight(w, c.wbits, c.gamma, c.weight_tanh)
        return w

    @torch.no_grad()
    def effective_weights(self) -> dict:
        return {"rnn": self._rnn_weight().detach().clone(),
                "decoder": self._decoder_weight().detach().clone()}

    def init_hidden(self, bsz: int, dtype=None, device=None):
        H = self.cfg.hidden
        p = self.rnn.weight
        dtype = dtype or p.dtype
        device = device or p.device
        if self.cfg.init_state == "zero":
            h = torch.zeros(bsz, H, dtype=dtype, device=device)
            return h, h.clone()
        c = torch.full((bsz, H), 0.5, dtype=dtype, device=device)
        return self._qa(c.clone()), c

    def _cell_round(self, c):
        """Round c to the hardware cell format (straight-through gradient): fixed:I.F rounds half
        up to F fraction bits and saturates; float formats round to nearest even
        (hwrnn.cell_state: the format's round_values). Training sees the cell the integer model uses."""
        if self.cell_state is None:
            return c
        q = self.cell_state.round_values(c)
        return c + (q - c).detach()

    @staticmethod
    def detach_state(state):
        return tuple(s.detach() for s in state)

    # ----------------------------------------------------------------------------------------
    def _recurrence(self, xw, Wh_t, h, c, trace=None):
        """xw: [T, B, 4H] input part (bias included); Wh_t: [H, 4H]. Returns list of h_t, (h, c)."""
        H = self.cfg.hidden
        sig_cand = self.cfg.candidate == "sigmoid"
        outs = []
        for xw_t in xw.unbind(0):   # unbind: one stack in backward (xw[t] would zero-fill [T,B,4H] per step)
            z = torch.addmm(xw_t, h, Wh_t)
            if sig_cand:
                a = torch.sigmoid(z)
                i, f, g, o = a.split(H, dim=1)
            else:
                zi, zf, zg, zo = z.split(H, dim=1)
                i, f, g, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
            c = self._cell_round(torch.addcmul(f * c, i, g))
            h = self._qa(o * torch.sigmoid(c))
            outs.append(h)
            if trace is not None:
                for k, v in (("z", z), ("i", i), ("f", f), ("g", g), ("o", o), ("c", c), ("h", h)):
                    trace[k].append(v)
        return outs, (h, c)

    def forward(self, tokens: torch.Tensor, state=None):
        T, B = tokens.shape
        X = self.cfg.input
        if state is None:
            state = self.init_hidden(B)
        h, c = state
        x = self.drop(self._embed(tokens))                      # [T, B, X]
        W = self._rnn_weight()                                  # [4H, X+H]
        Wx_t = W[:, :X].t()
        Wh_t = W[:, X:].t().contiguous()
        xw = torch.addmm(self.rnn.bias, x.reshape(T * B, X), Wx_t).view(T, B, -1)
        outs, state = self._recurrence(xw, Wh_t, h, c)
        hs = self.drop(torch.stack(outs).view(T * B, -1))
        if self.training and self.train_decoder_dtype is not None:
            with torch.autocast("cpu", dtype=self.train_decoder_dtype):
                logits = F.linear(hs, self._decoder_weight(), self.decoder.bias)
            return logits.float(), state
        logits = F.linear(hs, self._decoder_weight(), self.decoder.bias)
        return logits, state

    @torch.no_grad()
    def step_trace(self, tokens, state=None, dtype=torch.float64) -> dict:
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        X = self.cfg.input
        E = self.embedding.weight.to(dtype)
        e = E[tokens]
        e = torch.clamp(e, 0.0, 1.0) if self.cfg.embedding == "clip" else F.relu(e)
        x = self._qa(e)                                          # [T, X]
        W = self._rnn_weight(self.rnn.weight.to(dtype))
        b = self.rnn.bias.to(dtype)
        if state is None:
            h, c = self.init_hidden(1, dtype=dtype)
        else:
            h, c = (torch.as_tensor(s).to(dtype).reshape(1, -1) for s in state)
        xw = torch.addmm(b, x, W[:, :X].t()).unsqueeze(1)        # [T, 1, 4H]
        trace = {k: [] for k in ("z", "i", "f", "g", "o", "c", "h")}
        self._recurrence(xw, W[:, X:].t().contiguous(), h, c, trace)
        out = {k: torch.cat(v, 0) for k, v in trace.items()}
        out["x"] = x
        D = self._decoder_weight(self.decoder.weight.to(dtype))
        out["logits"] = F.linear(out["h"], D, self.decoder.bias.to(dtype))
        return out
