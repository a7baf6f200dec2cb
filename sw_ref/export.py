"""From a trained language model to the hardware layer, and the integer model as a language model.

* ``layer_from_model``: the hwrnn layer checkpoint (weight codes by the layer's hwrnn weight coding
  in float64, deterministic rounding, the one scale of the matrix, float biases) of a quantized
  QuantRNNLM (``QuantLSTMLM``), any cell type and weight coding: the layer's ``cell_type`` and
  ``weight_code`` are the model's (LMConfig; LayerConfig.rows = n_gates * H).
* ``IntegerLM``: embedding codes -> IntegerLSTM (exactly the hardware; every cell type) -> h values
  n/Ka -> the model's decoder in float64 -> log-softmax. Its perplexity is what the hardware would
  reach.
* ``stack_from_model``: the hwrnn.stack.Stack of a trained QuantStackLM (sw_ref.stack_model), every
  layer and direction exported as ``layer_from_model`` exports one layer; ``save_stack`` writes it.
* ``IntegerStackLM``: the same LM with the integer model of a unidirectional stack.
"""
from __future__ import annotations

import math

import numpy as np

from hwrnn.checkpoint import QuantLayer
from hwrnn.config import FORMAT_FIELDS, ConfigError, LayerConfig  # format fields: not part of the trained model
from hwrnn.integer_model import IntegerLSTM
from hwrnn.pretrained import LMHead
from hwrnn.stack import IntegerStack, Stack, StackLayer
from hwrnn.quant import activation_codes, levels


class ExportError(ValueError):
    """The model cannot be exported (float model, NaN weights, ...); one-line message."""


def layer_config(model, **formats) -> LayerConfig:
    """The LayerConfig of a one-layer model's recurrent layer (``_layer_config`` of its LMConfig)."""
    return _layer_config(model.cfg, **formats)


def _layer_config(c, **formats) -> LayerConfig:
    """The LayerConfig of one recurrent layer of LMConfig ``c`` (a one-layer model's, or a stack layer's
    ``StackLMConfig.layer_config``), with the hardware number ``formats`` (hwrnn FORMAT_FIELDS)."""
    if c.wbits is None or c.abits is None:
        raise ExportError("only a quantized model (--wbits and --abits) can be exported to hardware")
    unknown = sorted(set(formats) - set(FORMAT_FIELDS))
    if unknown:
        raise ExportError(f"unknown format option(s): {', '.join(unknown)}")
    if formats.get("cell") is not None and not c.cell_class.has_cell_state:
        raise ExportError(f"--cell (a cell-state format) applies to the LSTM only: cell_type {c.cell_type!r} "
                          "has no cell state")
    if formats.get("cell") is None and getattr(c, "cell", None) is not None:
        formats = {**formats, "cell": c.cell}  # the cell format the model was trained with
    return LayerConfig(wbits=c.wbits, abits=c.abits, hidden=c.hidden, input=c.input, gamma=c.gamma,
                       weight_tanh=c.weight_tanh, candidate=c.candidate, init_state=c.init_state,
                       cell_type=c.cell_type, weight_code=c.weight_code,
                       **{k: v for k, v in formats.items() if v is not None})


def _quant_layer(c, rnn, **formats) -> QuantLayer:
    """The QuantLayer of the recurrent cell ``rnn`` (sw_ref.cells; weight, bias) of LMConfig ``c``
    (``formats`` may name a cell-state format, ``cell``)."""
    cfg = _layer_config(c, **formats)
    w = rnn.weight.detach().double().numpy()
    b = rnn.bias.detach().double().numpy()
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise ExportError(f"the model's recurrent-layer ({c.cell_type}) weights or biases contain NaN or inf")
    codes, s = cfg.weight_coding.codes(w, cfg.gamma, cfg.weight_tanh)
    return QuantLayer(cfg, codes, s, b)


def layer_from_model(model, **formats) -> QuantLayer:
    return _quant_layer(model.cfg, model.rnn, **formats)


def stack_from_model(model, **formats) -> Stack:
    """The hwrnn.stack.Stack of a QuantStackLM: layer l, direction d is ``_quant_layer`` of its cell
    (as ``layer_from_model`` exports a one-layer model), the same ``formats`` for every layer (a cell
    format only for LSTM layers: ``cell`` given with other cell types is refused). Stack validates the
    hand-over (input widths, equal abits); its ``save_stack`` writes the stack checkpoint."""
    layers = []
    for l, (c, dirs) in enumerate(zip(model.layer_cfgs, model.layers)):
        try:
            layers.append(StackLayer(tuple(_quant_layer(c, cell, **formats) for cell in dirs)))
        except (ExportError, ConfigError, ValueError) as e:
            raise ExportError(f"layer {l}: {e}") from None
    try:
        return Stack(layers)
    except ConfigError as e:
        raise ExportError(str(e)) from None


def _decoder_arrays(model, abits):
    """(embedding codes [V, X], decoder weight [V, W] float64, decoder bias [V]) of an LM."""
    import torch

    E = model.embedding.weight.detach().double().numpy()
    E = np.clip(E, 0.0, 1.0) if model.cfg.embedding == "clip" else np.maximum(E, 0.0)
    if not np.all(np.isfinite(E)):
        raise ExportError("the embedding contains NaN or inf")
    with torch.no_grad():
        D = model._decoder_weight(model.decoder.weight.double()).numpy()
    return activation_codes(E, abits), D, model.decoder.bias.detach().double().numpy()


def lm_head(model, vocab, layer: QuantLayer):
    """The hwrnn.pretrained.LMHead of a one-layer LM: embedding codes, float64 decoder, vocabulary."""
    return LMHead(*_decoder_arrays(model, layer.cfg.abits), list(vocab))


def _batched_nll(data, bsz, bptt, progress, init_state, step, Ka, dec_w, dec_b):
    """(sum of -log p, count) of an integer LM: ``step(t_tokens [bsz], state) -> (state, h codes [bsz, W])``,
    batchified like sw_ref.train.evaluate (bsz columns, state carried from ``init_state``)."""
    data = np.asarray(data, dtype=np.int64)
    nb = data.size // bsz
    cols = data[: nb * bsz].reshape(bsz, nb).T  # [steps, bsz]
    state = init_state
    total, count = 0.0, 0
    steps = cols.shape[0] - 1
    it = range(0, steps, bptt)
    if progress:
        it = progress(it)
    for start in it:
        stop = min(start + bptt, steps)
        hs = []
        for t in range(start, stop):
            state, h = step(cols[t], state)
            hs.append(h)
        h = np.concatenate(hs).astype(np.float64) / Ka  # [(stop-start)*bsz, W]
        logits = h @ dec_w.T + dec_b
        m = logits.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
        targets = cols[start + 1:stop + 1].reshape(-1)
        total += float(np.sum(lse - logits[np.arange(targets.size), targets]))
        count += targets.size
    return total, count


class IntegerLM:
    """The language model whose recurrent layer is the bit-exact integer model."""

    def __init__(self, model, layer: QuantLayer):
        self._setup(layer, *_decoder_arrays(model, layer.cfg.abits))

    @classmethod
    def from_head(cls, layer: QuantLayer, head) -> "IntegerLM":
        """The LM of a layer and a hwrnn.pretrained.LMHead (a shipped model: no torch model needed)."""
        head.check(layer.cfg)
        self = cls.__new__(cls)
        self._setup(layer, head.embedding_codes, head.decoder_weight, head.decoder_bias)
        return self

    def _setup(self, layer, emb_codes, dec_w, dec_b):
        self.layer = layer
        self.int_lstm = IntegerLSTM(layer)
        self.emb_codes, self.dec_w, self.dec_b = emb_codes, dec_w, dec_b  # [V, X] codes, [V, H], [V] float64
        self.Ka = levels(layer.cfg.abits)

    def _step(self, tokens, state):
        state, _ = self.int_lstm.step(self.emb_codes[tokens], state)
        return state, state.h

    def nll(self, data, bsz: int = 10, bptt: int = 35, progress=None):
        """(sum of -log p over predicted tokens, number of tokens) for a 1-D token array, batchified
        like sw_ref.train.evaluate (bsz columns, state carried, from the reset state)."""
        return _batched_nll(data, bsz, bptt, progress, self.int_lstm.initial_state(bsz), self._step, self.Ka,
                            self.dec_w, self.dec_b)

    def perplexity(self, data, bsz: int = 10, bptt: int = 35, progress=None) -> float:
        total, count = self.nll(data, bsz, bptt, progress)
        return math.exp(total / count)


class IntegerStackLM(IntegerLM):
    """The language model whose recurrent layers are the bit-exact integer model of the stack
    (hwrnn.stack.IntegerStack's layer models, stepped together over a batch with the state carried):
    embedding codes -> layer 0 -> its h codes -> layer 1 -> ... -> the model's decoder in float64.
    Unidirectional stacks only: a backward direction needs the whole sequence, no next-word model."""

    def __init__(self, model, stack: Stack):
        if any(layer.bidirectional for layer in stack.layers):
            raise ExportError("a stack with a bidirectional layer is no causal language model: no perplexity")
        self.stack = stack
        self.int_stack = IntegerStack(stack)
        self.emb_codes, self.dec_w, self.dec_b = _decoder_arrays(model, stack.abits)
        self.Ka = levels(stack.abits)

    def initial_state(self, bsz: int) -> list:
        return self.int_stack.initial_state(bsz)

    def step_codes(self, x, states):
        """One step of every layer on input codes x [B, X] (hwrnn.stack.IntegerStack.step)."""
        return self.int_stack.step(x, states)

    def _step(self, tokens, states):
        states, hs = self.step_codes(self.emb_codes[tokens], states)
        return states, hs[-1]

    def nll(self, data, bsz: int = 10, bptt: int = 35, progress=None):
        return _batched_nll(data, bsz, bptt, progress, self.initial_state(bsz), self._step, self.Ka,
                            self.dec_w, self.dec_b)
