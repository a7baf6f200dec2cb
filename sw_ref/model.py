"""Quantized recurrent language model of He et al. (training model of sw_ref): an LSTM, or a GRU,
Ott et al.'s GRU or a vanilla RNN cell (sw_ref.cells; ``LMConfig.cell_type``).

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
    cell=None (LSTM only: the hardware cell-state format emulated in training),
    dropout=0.3, cell_type='lstm'|'gru'|'gru_ott'|'rnn' (sw_ref.cells; a config without the key,
    as written before it existed, is an LSTM),
    weight_code='balanced'|'ternary'|'ternary_mean'|'pow2_ternary'|'exponential' (the coding of the
    recurrent matrix, sw_ref.weight_quantizers / hwrnn.weight_code; a config without the key is
    balanced; the width must be one the code takes, e.g. ternary codes wbits=2; ignored by a float
    model; Ott's codes ignore gamma and weight_tanh),
    stochastic_weights=False (Ott's codes only: sampled rounding in training mode; eval mode, traces
    and export round deterministically; refused for balanced and for float weights).

``QuantRNNLM(cfg)`` (nn.Module; ``QuantLSTMLM`` is the same class, its older name): the layer is the
cell of ``cfg.cell_type``, ``model.rnn`` (sw_ref.cells, which states the GRU and RNN cells'
formulas, state and trace keys). The LSTM, the default:

Parameters (exact names):
    embedding.weight [V, X]   init U(0, 1)
    rnn.weight       [4H, X+H] rows gate-major i, f, g, o (row = gate*H + unit), columns [x_t ; h_{t-1}]
                     init U(-1/sqrt(H), 1/sqrt(H))   (gru, gru_ott: [3H, X+H], gates u, r, g;
                     rnn: [H, X+H], gate g)
    rnn.bias         [4H]      init 0, except the forget gate rows = 1.0  (other cells: all 0)
    decoder.weight   [V, H]    init U(-0.1, 0.1)
    decoder.bias     [V]       init 0
  Cell (per time step t, Q_a = quantize_activation(., abits), identity in float mode):
    x_t = Q_a(emb(E[w_t]))      emb = clamp(., 0, 1) ('clip') or relu ('relu'); dropout on x_t in training
    W_q = quantize_weight(rnn.weight, wbits, gamma, weight_tanh)   (one scale for the whole matrix;
          Ott's codes: the weight_code's quantizer of rnn.weight itself, sw_ref.weight_quantizers,
          straight-through gradient, init U(-b, b) with Glorot's b = sqrt(6 / (X + H)))
    z   = [x_t, h_{t-1}] @ W_q^T + b
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = sigmoid(z_g) (or tanh)
    c_t = f * c_{t-1} + i * g;   h_t = Q_a(o * sigmoid(c_t))
    logits = dropout(h_t) @ D^T + d, D = decoder.weight (or the weight code's quantizer applied to
    decoder.weight, its own scale, if quantize_output).
  Dropout is applied only to x_t and to the h_t going to the decoder, never on the recurrent path
  (as the authors' DropoutWrapper(output_keep_prob)); the hardware never sees dropout.

  ``forward(tokens [T, B] long, state=None) -> (logits [T*B, V], (h, c))``; state None ->
      ``init_hidden(B)``. Detach the returned state between TBPTT windows (``detach_state``).
      Cells without a cell state (gru, gru_ott, rnn) carry c as an empty [B, 0] tensor.
      ``model.fused_recurrence`` (default True): the LSTM without a hardware cell format (cfg.cell
      None) runs the window's recurrence as one autograd node with a hand-written backward
      (sw_ref.fused_recurrence): logits and state bit-identical to the step-by-step path (False),
      gradients equal to its autograd gradients to float rounding (dL/dW_h summed in another order).
  ``init_hidden(bsz) -> (h0, c0)`` each [B, H]: zeros ('zero'), or h0 = Q_a(0.5), c0 = 0.5
      ('half', as hwrnn.config defines it for the integer model and the hardware; the authors'
      code also rounds c0, round_bit(sigmoid(0)), which differs for c0 only). Other cells: h0 the
      same, c0 empty [B, 0].
  ``step_trace(tokens [T] long, state=None, dtype=torch.float64) -> dict`` of tensors [T, H]
      (keys 'x' [T, X], 'z' [T, 4H], 'i', 'f', 'g', 'o', 'c', 'h') for a single sequence in
      inference mode (no dropout), computed with the parameters cast to ``dtype`` (float64 by
      default: then the quantizers equal hwrnn.quant bit for bit). ``state`` is (h0, c0) of shape
      [H] or [1, H]. Also returns 'logits' [T, V]. Other cells: 'x', the cell's ``trace_keys``
      ('z' [T, rows]; gru: 'u', 'r', 'rh', 'g', 'h'; gru_ott: 'u', 'r', 'g', 'h'; rnn: 'g', 'h')
      and 'logits'; ``state`` (h0, c0) with c0 ignored, or h0.
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
from sw_ref.cells import CELL_TYPES, DEFAULT_CELL_TYPE, Cell, cell_class
from sw_ref.quantizers import normalize_bits, quantize_activation
from sw_ref.weight_quantizers import DEFAULT_WEIGHT_CODE, WeightQuantizer, check_stochastic, weight_quantizer

CANDIDATES = ("sigmoid", "tanh")
EMBEDDINGS = ("clip", "relu")
INIT_STATES = ("zero", "half")


@dataclass(kw_only=True)
class RecipeFields:
    """The model options one layer and a stack of layers share (one value for the whole model):
    LMConfig and sw_ref.stack_model.StackLMConfig both take them, and a stack hands them to each
    of its layers' LMConfig unchanged (``shared()``). Keyword-only."""
    input: int | None = None
    gamma: float | None = None
    weight_tanh: bool = True
    candidate: str = "sigmoid"
    embedding: str = "clip"
    init_state: str = "zero"
    quantize_output: bool = False
    cell: str | None = None  # None: c in float32; else the hardware cell format, emulated (STE)
    dropout: float = 0.3
    weight_code: str = DEFAULT_WEIGHT_CODE  # sw_ref.weight_quantizers / hwrnn.weight_code
    stochastic_weights: bool = False  # Ott's codes: sampled rounding in training mode

    def shared(self) -> dict:
        """{field: value} of the shared options."""
        return {f.name: getattr(self, f.name) for f in fields(RecipeFields)}


@dataclass
class LMConfig(RecipeFields):
    vocab: int
    hidden: int
    wbits: int | None = None
    abits: int | None = None
    cell_type: str = DEFAULT_CELL_TYPE  # sw_ref.cells: lstm, gru, gru_ott, rnn

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
        cls = cell_class(self.cell_type)
        if self.cell is not None and not cls.has_cell_state:
            raise ValueError(f"cell (a cell-state format) applies to the LSTM only: cell_type "
                             f"{self.cell_type!r} has no cell state")
        if self.cell is not None:
            try:
                self.cell = str(CellState.parse(self.cell))  # validates the format's own widths
            except ConfigError as e:
                raise ValueError(str(e)) from None
        self.weight_quantizer()  # one-line ValueError: unknown code, or a width it does not take
        check_stochastic(self.weight_code, self.wbits, self.stochastic_weights)

    def weight_quantizer(self) -> WeightQuantizer:
        """The quantizer of the recurrent matrix (sw_ref.weight_quantizers; float weights if wbits is None)."""
        return weight_quantizer(self.weight_code, self.wbits, self.gamma, self.weight_tanh)

    @property
    def cell_class(self) -> type[Cell]:
        """The sw_ref.cells class of ``cell_type``."""
        return cell_class(self.cell_type)

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


class QuantRNNLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        V, H, X = cfg.vocab, cfg.hidden, cfg.input
        self.embedding = nn.Embedding(V, X)
        #: the recurrent cell (sw_ref.cells), owner of rnn.weight and rnn.bias
        self.rnn: Cell = cfg.cell_class(cfg)
        #: the hardware cell-state format emulated in training (hwrnn.cell_state), or None
        self.cell_state = getattr(self.rnn, "cell_state", None)
        self.decoder = nn.Linear(H, V)
        self.drop = nn.Dropout(cfg.dropout)
        #: the weight coding's quantizer (sw_ref.weight_quantizers), of rnn.weight (and the decoder's
        #: weight if quantize_output)
        self.weight_quantizer = cfg.weight_quantizer()
        #: dtype of the decoder GEMMs in training mode (None: the parameters' fp32; torch.bfloat16:
        #: CPU autocast of the decoder Linear only, its logits returned in float32). Evaluation
        #: (eval mode) and the LSTM layer always compute in the parameters' dtype.
        self.train_decoder_dtype = None
        #: run the recurrence of ``forward`` as one autograd node per TBPTT window with a hand-written
        #: backward (sw_ref.fused_recurrence) where the cell has one (``rnn.fusable``: the LSTM
        #: without a hardware cell format); outputs bit-identical, gradients equal to rounding.
        #: step_trace and the other cells always run step by step. Not part of the config: a
        #: training option (sw_ref.train ``fused_recurrence``).
        self.fused_recurrence = True
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------
    def reset_parameters(self):
        with torch.no_grad():
            self.embedding.weight.uniform_(0.0, 1.0)
            self.rnn.reset_parameters()  # the cell's weight and bias init (sw_ref.cells)
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

    def _stochastic(self) -> bool:
        """Whether the forward samples the weights (stochastic_weights, training mode only)."""
        return self.training and self.cfg.stochastic_weights

    def _rnn_weight(self, weight=None, stochastic: bool = False):
        w = self.rnn.weight if weight is None else weight
        return self.weight_quantizer(w, stochastic)

    def _decoder_weight(self, weight=None, stochastic: bool = False):
        w = self.decoder.weight if weight is None else weight
        if self.cfg.quantize_output:
            return self.weight_quantizer(w, stochastic)
        return w

    @torch.no_grad()
    def effective_weights(self) -> dict:
        return {"rnn": self._rnn_weight().detach().clone(),
                "decoder": self._decoder_weight().detach().clone()}

    def init_hidden(self, bsz: int, dtype=None, device=None):
        p = self.rnn.weight
        return self.rnn.init_state(bsz, dtype or p.dtype, device or p.device)

    @staticmethod
    def detach_state(state):
        return tuple(s.detach() for s in state)

    # ----------------------------------------------------------------------------------------
    def _recurrence(self, xw, Wh_t, h, c, trace=None):
        """xw: [T, B, rows] input part (bias included); Wh_t: [H, rows]. Returns list of h_t, (h, c)
        (the cell's recurrence, sw_ref.cells)."""
        return self.rnn.recurrence(xw, Wh_t, h, c, trace)

    def forward(self, tokens: torch.Tensor, state=None):
        T, B = tokens.shape
        X = self.cfg.input
        if state is None:
            state = self.init_hidden(B)
        h, c = state
        x = self.drop(self._embed(tokens))                      # [T, B, X]
        stochastic = self._stochastic()
        W = self._rnn_weight(stochastic=stochastic)              # [rows, X+H]
        Wx_t = W[:, :X].t()
        Wh_t = W[:, X:].t().contiguous()
        xw = torch.addmm(self.rnn.bias, x.reshape(T * B, X), Wx_t).view(T, B, -1)
        if self.fused_recurrence and self.rnn.fusable and T > 0:
            hs, state = self.rnn.recurrence_fused(xw, Wh_t, h, c)  # one autograd node per window
        else:
            outs, state = self._recurrence(xw, Wh_t, h, c)
            hs = torch.stack(outs)
        hs = self.drop(hs.view(T * B, -1))
        if self.training and self.train_decoder_dtype is not None:
            with torch.autocast("cpu", dtype=self.train_decoder_dtype):
                logits = F.linear(hs, self._decoder_weight(stochastic=stochastic), self.decoder.bias)
            return logits.float(), state
        logits = F.linear(hs, self._decoder_weight(stochastic=stochastic), self.decoder.bias)
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
            h, c = self.rnn.state_from(state, dtype)
        xw = torch.addmm(b, x, W[:, :X].t()).unsqueeze(1)        # [T, 1, rows]
        trace = {k: [] for k in self.rnn.trace_keys}
        self._recurrence(xw, W[:, X:].t().contiguous(), h, c, trace)
        out = {k: torch.cat(v, 0) for k, v in trace.items()}
        out["x"] = x
        D = self._decoder_weight(self.decoder.weight.to(dtype))
        out["logits"] = F.linear(out["h"], D, self.decoder.bias.to(dtype))
        return out


#: the LM's older name (it was the LSTM's only): the same class, any cell type
QuantLSTMLM = QuantRNNLM

__all__ = ["LMConfig", "QuantRNNLM", "QuantLSTMLM", "CELL_TYPES", "CANDIDATES", "EMBEDDINGS", "INIT_STATES"]
