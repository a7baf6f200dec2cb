"""Stacked (and bidirectional) quantized recurrent layers: the training model of a stack
(hwrnn.stack's contract), for Kapur et al.'s multi-layer networks and FINN-L's BiLSTM.

Public API
----------
``StackLMConfig`` (dataclass; ``from_dict`` / ``to_dict``, whose dict has the key 'layers' = L, the mark
    by which ``config_from_dict`` tells a stack's checkpoint config from a one-layer LMConfig's): one
    language model of L >= 1 layers.
    Per layer (tuples of length L, ``layers`` = L): ``hidden`` (H_l), ``wbits``, ``abits`` (1..8 or
    None = float), ``cell_type`` (sw_ref.cells), ``bidirectional`` (bool). For every layer alike:
    gamma (None: each layer's default for its wbits), weight_tanh, candidate, init_state, cell (the
    LSTM cell-state format; only when every layer is an LSTM), weight_code, stochastic_weights. For the
    model: vocab, input (X, the embedding size of layer 0; None -> hidden[0]), embedding ('clip' or
    'relu'), quantize_output (the decoder weight through the LAST layer's weight quantizer), dropout.
    ``layer_config(l)`` is layer l's sw_ref.model.LMConfig (hidden H_l, input X_l, its bit widths and
    cell; its vocab and decoder options unused), which validates it. Layer l+1's input X_{l+1} is layer
    l's output width (H_l, or 2 H_l when bidirectional), and every layer has the same abits: layer l+1
    reads layer l's abits-bit activation codes unchanged, as hwrnn.stack.Stack requires (checked here,
    one-line ValueError).

``QuantStackLM(cfg)`` (nn.Module): the language model (or, with bidirectional layers, the sequence
    model) whose recurrent part is the stack.

    Parameters (exact names): embedding.weight [V, X] (init U(0, 1)); layers.{l}.{d}.weight /
    layers.{l}.{d}.bias, the sw_ref.cells cell of layer l, direction d (0 forward, 1 backward; init the
    cell's); decoder.weight [V, W_L] (W_L the last layer's output width; init U(-0.1, 0.1)),
    decoder.bias [V] (0). Initialised in this order from the torch RNG.

    Forward, per TBPTT window of tokens [T, B] (Q_a = quantize_activation(., abits)):
        y_0 = dropout(Q_a(emb(E[w_t])))                  (as sw_ref.model: emb = clamp(., 0, 1) or relu)
        layer l, direction d: exactly sw_ref.model's layer (its weight code's quantizer of the cell's
            weight, one scale per direction's matrix; xw = y_l W_x^T + b; the cell's recurrence, fused
            for the LSTM without a cell format when ``fused_recurrence``) over y_l; the backward
            direction over y_l reversed in time, from its reset state, its outputs reversed back;
        y_{l+1} = dropout([h_fw ; h_bw])                  (h_fw alone for a unidirectional layer)
        logits = y_L @ D^T + d                            (D quantized if quantize_output)
    so in evaluation mode layer l+1's input is layer l's h: abits-bit codes n / (2**abits - 1),
    hwrnn.stack.IntegerStack's hand-over. Dropout (training only) sits on the embedding, between
    layers and before the decoder, never on a recurrent path (He et al.'s DropoutWrapper on every
    layer's output). A one-layer unidirectional stack computes exactly sw_ref.model.QuantRNNLM (the
    same operations in the same order: bit-identical logits, state and gradients); training keeps
    QuantRNNLM for one layer.

    State: a flat tuple (h_0, c_0, h_1, c_1, ...) of the FORWARD directions, each [B, H_l] (c empty
    [B, 0] for cells without a cell state), carried across windows like the one-layer model's
    (``init_hidden``, ``detach_state``). A backward direction starts every call from its reset state
    at the window's last step (it reads the future: each call is a whole sequence to it), so a model
    with bidirectional layers is no causal language model; sw_ref.train refuses to train one on PTB.

    ``step_trace(tokens [T], state=None, dtype=torch.float64) -> dict``: inference mode on one
    sequence with the parameters cast to ``dtype``: 'x' (the embedding codes' values [T, X]),
    'layers' (per layer a list per direction of trace dicts in time order: 'x' [T, X_l] the input
    read, and the cell's ``trace_keys``), 'logits' [T, V].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from sw_ref.cells import DEFAULT_CELL_TYPE
from sw_ref.model import CANDIDATES, EMBEDDINGS, LMConfig, QuantRNNLM, RecipeFields  # noqa: F401 (CANDIDATES: docs)
from sw_ref.quantizers import quantize_activation

#: per-layer fields of StackLMConfig (a tuple of one value per layer each)
PER_LAYER = ("hidden", "wbits", "abits", "cell_type", "bidirectional")


@dataclass
class StackLMConfig(RecipeFields):
    """The stack's model config: the per-layer fields (PER_LAYER) as tuples, the shared recipe
    options (sw_ref.model.RecipeFields, keyword-only) once for every layer."""
    vocab: int
    hidden: tuple
    wbits: tuple | None = None
    abits: tuple | None = None
    cell_type: tuple | None = None
    bidirectional: tuple | None = None

    def __post_init__(self):
        if not isinstance(self.hidden, (tuple, list)) or not self.hidden:
            raise ValueError(f"hidden must be a list of one size per layer, got {self.hidden!r}")
        L = len(self.hidden)
        defaults = {"wbits": None, "abits": None, "cell_type": DEFAULT_CELL_TYPE, "bidirectional": False}
        for name in PER_LAYER:
            v = getattr(self, name)
            if v is None:
                v = (defaults[name],) * L
            elif not isinstance(v, (tuple, list)):
                v = (v,) * L
            if len(v) != L:
                raise ValueError(f"{name} has {len(v)} values for {L} layers")
            setattr(self, name, tuple(v))
        self.bidirectional = tuple(bool(b) for b in self.bidirectional)
        if self.input is None:
            self.input = self.hidden[0]
        if self.cell is not None and any(ct != "lstm" for ct in self.cell_type):
            raise ValueError(f"cell (a cell-state format) applies to LSTM layers only, the layers are "
                             f"{', '.join(self.cell_type)}")
        cfgs = [self.layer_config(l) for l in range(L)]  # each layer validated by LMConfig (one line)
        self.wbits = tuple(c.wbits for c in cfgs)
        self.abits = tuple(c.abits for c in cfgs)
        if len(set(self.abits)) > 1:
            raise ValueError(f"abits {', '.join(str(a or 32) for a in self.abits)} differ between layers: layer l+1 "
                             "reads layer l's activation codes unchanged, so every layer needs the same abits")
        self.dropout = cfgs[0].dropout

    @property
    def layers(self) -> int:
        return len(self.hidden)

    def output_width(self, l: int) -> int:
        """Values per step layer l hands on: H_l, or 2 H_l when bidirectional."""
        return self.hidden[l] * (2 if self.bidirectional[l] else 1)

    def layer_input(self, l: int) -> int:
        return self.input if l == 0 else self.output_width(l - 1)

    def layer_config(self, l: int) -> LMConfig:
        """Layer l as a one-layer LMConfig (validated: one-line ValueError naming the layer)."""
        try:
            return LMConfig(vocab=self.vocab, hidden=self.hidden[l], wbits=self.wbits[l], abits=self.abits[l],
                            cell_type=self.cell_type[l],
                            **{**self.shared(), "input": self.layer_input(l), "quantize_output": False})
        except (ValueError, TypeError) as e:
            raise ValueError(f"layer {l}: {e}") from None

    @property
    def is_float(self) -> bool:
        return all(w is None for w in self.wbits) and all(a is None for a in self.abits)

    @property
    def any_bidirectional(self) -> bool:
        return any(self.bidirectional)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in PER_LAYER:
            d[name] = list(d[name])
        return {**d, "layers": self.layers}  # the mark config_from_dict reads

    @classmethod
    def from_dict(cls, d: dict) -> "StackLMConfig":
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"layers"})
        if unknown:
            raise ValueError(f"unknown stack config key(s): {', '.join(unknown)}")
        cfg = cls(**{k: v for k, v in d.items() if k != "layers"})
        if "layers" in d and d["layers"] != cfg.layers:
            raise ValueError(f"stack config says {d['layers']} layers but lists {cfg.layers} hidden sizes")
        return cfg


def config_from_dict(d: dict):
    """The model config of a checkpoint: a StackLMConfig when it has the 'layers' key (StackLMConfig.to_dict
    writes it), else the one-layer LMConfig."""
    if isinstance(d, dict) and "layers" in d:
        return StackLMConfig.from_dict(d)
    return LMConfig.from_dict(d)


def build_model(cfg):
    """QuantStackLM for a StackLMConfig, QuantRNNLM for an LMConfig."""
    return QuantStackLM(cfg) if isinstance(cfg, StackLMConfig) else QuantRNNLM(cfg)


class QuantStackLM(nn.Module):
    """The stack's training model (module docstring)."""

    def __init__(self, cfg: StackLMConfig):
        super().__init__()
        self.cfg = cfg
        #: layer l's one-layer config (sw_ref.model.LMConfig), what its cells and quantizer read
        self.layer_cfgs = [cfg.layer_config(l) for l in range(cfg.layers)]
        self.embedding = nn.Embedding(cfg.vocab, cfg.input)
        self.layers = nn.ModuleList(
            nn.ModuleList(c.cell_class(c) for _ in range(2 if bi else 1))
            for c, bi in zip(self.layer_cfgs, cfg.bidirectional))
        self.decoder = nn.Linear(cfg.output_width(cfg.layers - 1), cfg.vocab)
        self.drop = nn.Dropout(cfg.dropout)
        #: each layer's weight quantizer (sw_ref.weight_quantizers); the decoder's is the last layer's
        self.weight_quantizers = [c.weight_quantizer() for c in self.layer_cfgs]
        #: as QuantRNNLM: the decoder GEMMs' dtype in training (None: fp32), fused LSTM recurrence
        self.train_decoder_dtype = None
        self.fused_recurrence = True
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            self.embedding.weight.uniform_(0.0, 1.0)
            for dirs in self.layers:
                for cell in dirs:
                    cell.reset_parameters()
            self.decoder.weight.uniform_(-0.1, 0.1)
            self.decoder.bias.zero_()

    @property
    def fusable(self) -> bool:
        """Whether every direction runs the fused recurrence (the LSTM without a cell format)."""
        return all(cell.fusable for dirs in self.layers for cell in dirs)

    @torch.no_grad()
    def constrain_(self):
        if self.cfg.embedding == "clip":
            self.embedding.weight.clamp_(0.0, 1.0)

    def _qa(self, x):
        return quantize_activation(x, self.cfg.abits[0])

    def _embed(self, tokens, weight=None):
        e = self.embedding(tokens) if weight is None else weight[tokens]
        e = torch.clamp(e, 0.0, 1.0) if self.cfg.embedding == "clip" else F.relu(e)
        return self._qa(e)

    def _stochastic(self) -> bool:
        return self.training and self.cfg.stochastic_weights

    def _decoder_weight(self, weight=None, stochastic: bool = False):
        w = self.decoder.weight if weight is None else weight
        if self.cfg.quantize_output:
            return self.weight_quantizers[-1](w, stochastic)
        return w

    @torch.no_grad()
    def effective_weights(self) -> dict:
        """The float matrices the forward uses: 'layers' [[W_q per direction] per layer], 'decoder'."""
        return {"layers": [[q(cell.weight).detach().clone() for cell in dirs]
                           for q, dirs in zip(self.weight_quantizers, self.layers)],
                "decoder": self._decoder_weight().detach().clone()}

    def init_hidden(self, bsz: int, dtype=None, device=None):
        p = self.embedding.weight
        out = []
        for dirs in self.layers:
            out.extend(dirs[0].init_state(bsz, dtype or p.dtype, device or p.device))
        return tuple(out)

    @staticmethod
    def detach_state(state):
        return tuple(s.detach() for s in state)

    # ----------------------------------------------------------------------------------------
    def _direction(self, l, cell, x, h, c, stochastic, trace=None, weight_dtype=None):
        """One direction of layer l over x [T, B, X_l] from (h, c): (hs [T, B, H], (h, c)), as
        QuantRNNLM.forward computes its layer."""
        T, B, X = x.shape
        w, b = cell.weight, cell.bias
        if weight_dtype is not None:
            w, b = w.to(weight_dtype), b.to(weight_dtype)
        W = self.weight_quantizers[l](w, stochastic)                 # [rows, X+H]
        Wx_t = W[:, :X].t()
        Wh_t = W[:, X:].t().contiguous()
        xw = torch.addmm(b, x.reshape(T * B, X), Wx_t).view(T, B, -1)
        if trace is None and self.fused_recurrence and cell.fusable and T > 0:
            return cell.recurrence_fused(xw, Wh_t, h, c)
        outs, state = cell.recurrence(xw, Wh_t, h, c, trace)
        hs = torch.stack(outs) if outs else xw.new_zeros(0, B, self.cfg.hidden[l])
        return hs, state

    def _layers(self, y, state, stochastic, traces=None, weight_dtype=None):
        """Run every layer over y [T, B, X] (dropout after each); returns (y_L, new state tuple)."""
        T, B, _ = y.shape
        new_state = []
        for l, dirs in enumerate(self.layers):
            outs = []
            for d, cell in enumerate(dirs):
                tr = None if traces is None else {k: [] for k in cell.trace_keys}
                if d == 0:
                    h, c = state[2 * l], state[2 * l + 1]
                    hs, st = self._direction(l, cell, y, h, c, stochastic, tr, weight_dtype)
                    new_state.extend(st)
                else:  # backward: the window reversed in time, from the reset state
                    h, c = cell.init_state(B, y.dtype, y.device)
                    hs, _ = self._direction(l, cell, y.flip(0), h, c, stochastic, tr, weight_dtype)
                    hs = hs.flip(0)
                outs.append(hs)
                if traces is not None:
                    t = {k: torch.cat(v, 0) for k, v in tr.items()}
                    if d == 1:
                        t = {k: v.flip(0) for k, v in t.items()}
                    t["x"] = y[:, 0]
                    traces[l].append(t)
            y = self.drop(outs[0] if len(outs) == 1 else torch.cat(outs, 2))
        return y, tuple(new_state)

    def forward(self, tokens: torch.Tensor, state=None):
        T, B = tokens.shape
        if state is None:
            state = self.init_hidden(B)
        y = self.drop(self._embed(tokens))                               # [T, B, X]
        stochastic = self._stochastic()
        y, state = self._layers(y, state, stochastic)
        hs = y.reshape(T * B, -1)
        if self.training and self.train_decoder_dtype is not None:
            with torch.autocast("cpu", dtype=self.train_decoder_dtype):
                logits = F.linear(hs, self._decoder_weight(stochastic=stochastic), self.decoder.bias)
            return logits.float(), state
        logits = F.linear(hs, self._decoder_weight(stochastic=stochastic), self.decoder.bias)
        return logits, state

    @torch.no_grad()
    def step_trace(self, tokens, state=None, dtype=torch.float64) -> dict:
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        was = self.training
        self.eval()
        try:
            x = self._embed(tokens, self.embedding.weight.to(dtype))       # [T, X]
            if state is None:
                state = self.init_hidden(1, dtype=dtype)
            else:
                state = tuple(torch.as_tensor(s).to(dtype).reshape(1, -1) for s in state)
            traces = [[] for _ in self.layers]
            y, _ = self._layers(x.unsqueeze(1), state, False, traces, dtype)
            D = self._decoder_weight(self.decoder.weight.to(dtype))
            logits = F.linear(y[:, 0], D, self.decoder.bias.to(dtype))
        finally:
            self.train(was)
        return {"x": x, "layers": traces, "logits": logits}


__all__ = ["StackLMConfig", "QuantStackLM", "config_from_dict", "build_model", "PER_LAYER"]
