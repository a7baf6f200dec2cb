"""From a trained language model to the hardware layer, and the integer model as a language model.

* ``layer_from_model``: the hwrnn layer checkpoint (weight codes by the layer's hwrnn weight coding
  in float64, deterministic rounding, the one scale of the matrix, float biases) of a quantized
  QuantRNNLM (``QuantLSTMLM``), any cell type and weight coding: the layer's ``cell_type`` and
  ``weight_code`` are the model's (LMConfig; LayerConfig.rows = n_gates * H).
* ``IntegerLM``: embedding codes -> IntegerLSTM (exactly the hardware; every cell type) -> h values
  n/Ka -> the model's decoder in float64 -> log-softmax. Its perplexity is what the hardware would
  reach.
"""
from __future__ import annotations

import math

import numpy as np

from hwrnn.checkpoint import QuantLayer
from hwrnn.config import FORMAT_FIELDS, LayerConfig  # format fields: not part of the trained model
from hwrnn.integer_model import IntegerLSTM
from hwrnn.quant import activation_codes, levels


class ExportError(ValueError):
    """The model cannot be exported (float model, NaN weights, ...); one-line message."""


def layer_config(model, **formats) -> LayerConfig:
    c = model.cfg
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


def layer_from_model(model, **formats) -> QuantLayer:
    cfg = layer_config(model, **formats)
    w = model.rnn.weight.detach().double().numpy()
    b = model.rnn.bias.detach().double().numpy()
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise ExportError(f"the model's recurrent-layer ({model.cfg.cell_type}) weights or biases contain NaN or inf")
    codes, s = cfg.weight_coding.codes(w, cfg.gamma, cfg.weight_tanh)
    return QuantLayer(cfg, codes, s, b)


class IntegerLM:
    """The language model whose recurrent layer is the bit-exact integer model."""

    def __init__(self, model, layer: QuantLayer):
        import torch

        c = model.cfg
        self.layer = layer
        self.int_lstm = IntegerLSTM(layer)
        E = model.embedding.weight.detach().double().numpy()
        E = np.clip(E, 0.0, 1.0) if c.embedding == "clip" else np.maximum(E, 0.0)
        if not np.all(np.isfinite(E)):
            raise ExportError("the embedding contains NaN or inf")
        self.emb_codes = activation_codes(E, layer.cfg.abits)  # [V, X]
        with torch.no_grad():
            D = model._decoder_weight(model.decoder.weight.double()).numpy()
        self.dec_w = D
        self.dec_b = model.decoder.bias.detach().double().numpy()
        self.Ka = levels(layer.cfg.abits)

    def nll(self, data, bsz: int = 10, bptt: int = 35, progress=None):
        """(sum of -log p over predicted tokens, number of tokens) for a 1-D token array, batchified
        like sw_ref.train.evaluate (bsz columns, state carried, from the reset state)."""
        data = np.asarray(data, dtype=np.int64)
        nb = data.size // bsz
        cols = data[: nb * bsz].reshape(bsz, nb).T  # [steps, bsz]
        state = self.int_lstm.initial_state(bsz)
        total, count = 0.0, 0
        steps = cols.shape[0] - 1
        it = range(0, steps, bptt)
        if progress:
            it = progress(it)
        for start in it:
            stop = min(start + bptt, steps)
            hs = []
            for t in range(start, stop):
                state, _ = self.int_lstm.step(self.emb_codes[cols[t]], state)
                hs.append(state.h)
            h = np.concatenate(hs).astype(np.float64) / self.Ka  # [(stop-start)*bsz, H]
            logits = h @ self.dec_w.T + self.dec_b
            m = logits.max(axis=1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
            targets = cols[start + 1:stop + 1].reshape(-1)
            total += float(np.sum(lse - logits[np.arange(targets.size), targets]))
            count += targets.size
        return total, count

    def perplexity(self, data, bsz: int = 10, bptt: int = 35, progress=None) -> float:
        total, count = self.nll(data, bsz, bptt, progress)
        return math.exp(total / count)
