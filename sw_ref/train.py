"""Quantization-aware training of the He et al. LSTM (or GRU, Ott GRU, vanilla RNN) language model on
PTB (sw_ref).

Public API
----------
``train(args=None, **kwargs) -> dict``
    ``args``: an argparse.Namespace (attributes named like the CLI flags, dashes -> underscores;
    unknown attributes are ignored, None means "use the default") and/or keyword arguments
    (unknown keywords are an error). Options and defaults:

      data=None (dir; else $HWRNN_PTB)   hidden=300          input=None (-> hidden)
      layers=1 (a stack of L layers, sw_ref.stack_model: hidden, wbits, abits and cell_type then take
                one value per layer, a list, or one value for every layer; input is layer 0's;
                every layer needs the same abits; one layer trains sw_ref.model.QuantRNNLM exactly
                as without the option)
      bidirectional=False (refused, TrainError: a language model predicts word t+1 from words
                           up to t, which a backward direction does not respect)
      level='word'|'char' (sw_ref.data: PTB words, or its characters with '_' between words and
                           <eos> ending every line; perplexities are then per character, and the
                           logs, metrics and summary add bits per character, *_bpc)
      wbits=None, abits=None (None/32 = float)               epochs=40
      batch_size=20      bptt=35         lr=None (-> 20 for sgd, 1e-3 for adam)
      optimizer='sgd'|'adam'             clip=0.25 (global grad-norm; 0 = off)
      dropout=0.3        seed=1111       threads=None (torch.set_num_threads)
      max_train_tokens=None (truncate train data)            out (run directory, required)
      init_from=None (LM checkpoint to start from: parameters copied by name, shapes must match,
                      vocabularies must be equal; only when not resuming)
      resume=None (a run always resumes automatically when out/last.pt exists; a true value
                   additionally requires that checkpoint to exist)
      checkpoint_every=200 (batches; 0 = only at epoch ends)
      extra: cell_type='lstm'|'gru'|'gru_ott'|'rnn' (sw_ref.cells), weight_code='balanced' (or
             ternary, ternary_mean, pow2_ternary, exponential: sw_ref.weight_quantizers; wbits None
             then takes the code's default width, hwrnn ``default_bits``: 2 ternary, 4 exponential),
             stochastic_weights=False (Ott's codes), gamma=None, weight_tanh=True,
             candidate='sigmoid', embedding='clip', init_state='zero', quantize_output=False,
             cell=None (LSTM only) (model options, see sw_ref.model),
             max_batches=None (stop this invocation after N training batches, with a checkpoint;
             for tests and time-sliced runs), anneal=4.0 (lr divisor when valid ppl does not
             improve), anneal_threshold=0.0 (relative: a validation that beats the best by less
             than this fraction, e.g. 0.005 = 0.5 %, still keeps best.pt but also divides lr by
             anneal, so a run that is only creeping is annealed without waiting for a stall;
             0 = anneal only on a stall), min_lr=None (stop when lr falls below it), log_every=100 (batches),
             eval_batch_size=10, progress=None (tqdm bar; default: only when stderr is a tty),
             eval_every=0 (batches; > 0 also validates every eval_every batches inside an epoch,
             keeping best.pt and annealing lr on a stall there too, so a short fine-tuning run
             reacts within an epoch), decoder_precision='fp32'|'bf16' (the decoder Linear's GEMMs
             in training: bf16 runs them under CPU autocast, faster only on CPUs with bf16 matrix
             instructions, avx512_bf16/AMX, slower where torch emulates bf16; validation, test and
             the integer model stay fp32), fused_recurrence=True (the LSTM without --cell runs each
             TBPTT window's recurrence as one autograd node with a hand-written backward,
             sw_ref.fused_recurrence: the same forward bit for bit, gradients equal to rounding,
             W_h's summed in another order, so a run drifts from the step-by-step one by rounding;
             False: step by step under autograd, for A/B; recorded in last.pt's 'train_opts' and in
             sw_ref.experiment's recipe, free to change when resuming, which the log notes).

    Recipe (PyTorch word_language_model): TBPTT with the state carried across windows (detached)
    and reset at each epoch; loss = mean cross-entropy per token; after each epoch the valid
    perplexity is computed, best.pt is kept for the best one, otherwise lr /= anneal.
    Run directory: best.pt, last.pt (full training state, written every checkpoint_every batches
    and at epoch ends; a run resumes mid-epoch bit-exactly), metrics.jsonl (one JSON record per
    epoch, plus a final {"event": "test"} record), summary.json, and the stdout log lines.
    Returns a summary dict: out, best_valid_ppl, best_epoch, test_ppl (None if interrupted),
    epochs_done, interrupted (bool), tokens_per_s; at char level also level, best_valid_bpc, test_bpc.

``evaluate(model, data, bsz=10, bptt=35) -> float``
    Perplexity = exp(mean cross-entropy over all predicted tokens) of a 1-D token tensor (batchified
    with bsz columns; a 2-D tensor is used as already batchified), from ``model.init_hidden``,
    state carried across windows, no dropout.

``load_lm_checkpoint(path) -> (model, vocab, meta)``
    Rebuilds the QuantRNNLM (eval mode; the cell type of its config), or a stack's QuantStackLM, of a
    best.pt/last.pt; ``meta``
    holds the other keys ('epoch', 'valid_ppl', 'config', ...). Missing, corrupt or foreign files
    raise ``CheckpointError`` (a ValueError) with one line naming the file.

Checkpoint format: ``torch.save`` of a dict with 'format' ('hwrnn-lm-1'), 'config' (LMConfig dict, or a
stack's StackLMConfig dict, which has the key 'layers'),
'vocab' (list of tokens, id order), 'level' ('word' or 'char'; absent in checkpoints written before
it existed: word), 'model' (state_dict), 'epoch' (completed epochs), 'valid_ppl'
(valid ppl of that epoch), 'best_valid_ppl'; last.pt adds 'batch' (batches already done in epoch
'epoch'+1), 'lr', 'optimizer', 'hidden' (carried TBPTT state), 'rng_torch', 'epoch_loss',
'epoch_tokens', 'train_opts'. Loadable with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from sw_ref.data import (DEFAULT_LEVEL, DataError, batchify, bpc, check_level, iter_bptt, load_ptb,
                         num_bptt_batches, resolve_data_dir)
from sw_ref.model import LMConfig, QuantRNNLM
from sw_ref.stack_model import StackLMConfig, build_model, config_from_dict
from sw_ref.weight_quantizers import code_label, resolve_wbits

FORMAT = "hwrnn-lm-1"

DEFAULTS = dict(
    data=None, hidden=300, input=None, wbits=None, abits=None, epochs=40, batch_size=20,
    bptt=35, lr=None, optimizer="sgd", clip=0.25, dropout=0.3, seed=1111, threads=None,
    max_train_tokens=None, out=None, init_from=None, resume=None, checkpoint_every=200,
    gamma=None, weight_tanh=True, candidate="sigmoid", embedding="clip", init_state="zero",
    quantize_output=False, cell=None, max_batches=None, anneal=4.0, anneal_threshold=0.0, min_lr=None, log_every=100,
    eval_batch_size=10, progress=None, decoder_precision="fp32", eval_every=0, cell_type="lstm",
    weight_code="balanced", stochastic_weights=False, level=DEFAULT_LEVEL, fused_recurrence=True,
    layers=1, bidirectional=False,
)
#: options that take one value per layer of a stack (a single value applies to every layer)
PER_LAYER_OPTIONS = ("hidden", "wbits", "abits", "cell_type")
#: why a language model cannot have a bidirectional layer (TrainError of --bidirectional)
BIDIRECTIONAL_REFUSAL = ("--bidirectional: a bidirectional layer's backward direction reads the words after t, so it "
                         "cannot predict word t+1 of a causal language model such as PTB's (bidirectional layers are "
                         "for sequence classifiers: sw_ref.stack_model and sw_ref.export.stack_from_model)")
DECODER_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# options that must not change when resuming a run mid-way
RESUME_FIXED = ("batch_size", "bptt", "max_train_tokens", "optimizer")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not an hwrnn LM checkpoint (one line)."""


class TrainError(ValueError):
    """Invalid training option or run directory state (one line)."""


# ---------------------------------------------------------------------------------------------
# checkpoints
def _first_line(exc) -> str:
    s = str(exc).strip().splitlines()
    return s[0] if s else type(exc).__name__


def _atomic_save(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch_dict(path, what: str, fmt: str, label: str) -> dict:
    """``torch.load`` (weights only) of a dict whose 'format' is ``fmt``; CheckpointError naming
    the file in one line when it is missing, not a zip archive, unreadable or not ``label``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; torch.load's own error is a page
        raise CheckpointError(f"cannot read {what} {path}: not a PyTorch {what} "
                              "(no zip archive: corrupt, truncated or another kind of file)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not readable"
        raise CheckpointError(f"cannot read {what} {path}: {_first_line(exc)}") from None
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise CheckpointError(f"{path} is not {label} (format {fmt!r} expected)")
    return ck


def _read_checkpoint(path) -> dict:
    ck = load_torch_dict(path, "checkpoint", FORMAT, "an hwrnn LM checkpoint")
    for key in ("config", "vocab", "model"):
        if key not in ck:
            raise CheckpointError(f"checkpoint {path} lacks the {key!r} entry")
    return ck


def _model_from_checkpoint(ck: dict, path):
    """QuantRNNLM, or QuantStackLM for a stack's config (sw_ref.stack_model.config_from_dict)."""
    try:
        cfg = config_from_dict(dict(ck["config"]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} has a bad model config: {_first_line(exc)}") from None
    vocab = ck["vocab"]
    if not isinstance(vocab, list) or len(vocab) != cfg.vocab:
        raise CheckpointError(f"checkpoint {path}: vocabulary does not match its config "
                              f"({len(vocab) if isinstance(vocab, list) else '?'} vs {cfg.vocab})")
    model = build_model(cfg)
    try:
        model.load_state_dict(ck["model"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: parameters do not match its config "
                              f"({_first_line(exc)})") from None
    return model


def load_lm_checkpoint(path):
    ck = _read_checkpoint(path)
    model = _model_from_checkpoint(ck, path)
    model.eval()
    meta = {k: v for k, v in ck.items() if k not in ("model", "optimizer", "vocab")}
    return model, list(ck["vocab"]), meta


def _init_from(model, path, vocab) -> None:
    """Copy parameters from an LM checkpoint or from a resume point's best parameters
    (sw_ref.resume_point, e.g. a committed float baseline)."""
    from sw_ref import resume_point

    try:
        ck = _read_checkpoint(path)
    except CheckpointError:
        if not resume_point.is_resume_point(path):
            raise
        ck = resume_point.lm_checkpoint(resume_point.read(path), "best")
    if list(ck["vocab"]) != list(vocab):
        raise TrainError(f"--init-from {path}: its vocabulary differs from the data's")
    src = ck["model"]
    dst = model.state_dict()
    for name, t in dst.items():
        if name not in src:
            raise TrainError(f"--init-from {path}: parameter {name} is missing")
        if tuple(src[name].shape) != tuple(t.shape):
            raise TrainError(f"--init-from {path}: parameter {name} has shape "
                             f"{list(src[name].shape)} but the model needs {list(t.shape)}")
    model.load_state_dict({k: src[k] for k in dst}, strict=True)
    sc = ck["config"]
    if not isinstance(model, QuantRNNLM) or "layers" in sc:
        return  # a stack: names and shapes matched; the warnings below compare one-layer configs
    if sc.get("cell_type", "lstm") != model.cfg.cell_type:
        print(f"warning: --init-from {path} is a {sc.get('cell_type', 'lstm')} model, "
              f"this model is a {model.cfg.cell_type}", flush=True)
    if sc.get("weight_tanh") != model.cfg.weight_tanh:
        print(f"warning: --init-from {path} was trained with weight_tanh={sc.get('weight_tanh')}, "
              f"this model uses weight_tanh={model.cfg.weight_tanh}", flush=True)
    try:
        src_tanh = LMConfig.from_dict(dict(sc)).weight_quantizer().reads_tanh
    except (ValueError, TypeError):
        src_tanh = model.weight_quantizer.reads_tanh
    if src_tanh != model.weight_quantizer.reads_tanh:
        print(f"warning: --init-from {path} computes with {'tanh(W)' if src_tanh else 'W'}, this model's "
              f"{model.cfg.weight_code} weights with {'tanh(W)' if not src_tanh else 'W'} (Ott's codes "
              "quantize W itself)", flush=True)


# ---------------------------------------------------------------------------------------------
# evaluation
@torch.no_grad()
def evaluate_loss(model, data, bsz=10, bptt=35):
    """(total cross-entropy in nats, number of predicted tokens)."""
    source = data if data.dim() == 2 else batchify(data, bsz)
    was_training = model.training
    model.eval()
    try:
        state = model.init_hidden(source.size(1))
        total, count = 0.0, 0
        for _, x, y in iter_bptt(source, bptt):
            logits, state = model(x, state)
            total += F.cross_entropy(logits, y, reduction="sum").item()
            count += y.numel()
    finally:
        model.train(was_training)
    return total, count


def evaluate(model, data, bsz=10, bptt=35) -> float:
    total, count = evaluate_loss(model, data, bsz, bptt)
    return math.exp(total / count)


# ---------------------------------------------------------------------------------------------
# options
def _options(args, kwargs) -> SimpleNamespace:
    opts = dict(DEFAULTS)
    if args is not None:
        src = vars(args) if not isinstance(args, dict) else args
        for k, v in src.items():
            if k in opts and v is not None:
                opts[k] = v
    for k, v in kwargs.items():
        if k not in opts:
            raise TrainError(f"unknown training option: {k}")
        if v is not None:
            opts[k] = v
    o = SimpleNamespace(**opts)
    if o.out is None or str(o.out) == "":
        raise TrainError("no run directory: pass --out")
    if o.optimizer not in ("sgd", "adam"):
        raise TrainError(f"optimizer must be sgd or adam, got {o.optimizer!r}")
    if o.lr is None:
        o.lr = 20.0 if o.optimizer == "sgd" else 1e-3
    for name in ("epochs", "batch_size", "bptt"):
        v = getattr(o, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    for name in ("max_train_tokens", "max_batches", "threads"):
        v = getattr(o, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise TrainError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    if isinstance(o.eval_every, bool) or not isinstance(o.eval_every, int) or o.eval_every < 0:
        raise TrainError(f"--eval-every must be an integer >= 0, got {o.eval_every!r}")
    if isinstance(o.checkpoint_every, bool) or not isinstance(o.checkpoint_every, int) \
            or o.checkpoint_every < 0:
        raise TrainError(f"--checkpoint-every must be an integer >= 0, got {o.checkpoint_every!r}")
    if not (isinstance(o.lr, (int, float)) and math.isfinite(o.lr) and o.lr > 0):
        raise TrainError(f"--lr must be a positive number, got {o.lr!r}")
    if not (isinstance(o.clip, (int, float)) and math.isfinite(o.clip) and o.clip >= 0):
        raise TrainError(f"--clip must be a number >= 0, got {o.clip!r}")
    if not (isinstance(o.anneal, (int, float)) and o.anneal >= 1):
        raise TrainError(f"anneal must be a number >= 1, got {o.anneal!r}")
    if isinstance(o.anneal_threshold, bool) or not (isinstance(o.anneal_threshold, (int, float))
                                                    and 0 <= o.anneal_threshold < 1):
        raise TrainError(f"--anneal-threshold must be a fraction in [0, 1), got {o.anneal_threshold!r}")
    if not isinstance(o.fused_recurrence, bool):
        raise TrainError(f"fused_recurrence must be True or False, got {o.fused_recurrence!r}")
    if o.decoder_precision not in DECODER_PRECISIONS:
        raise TrainError(f"--decoder-precision must be one of {', '.join(DECODER_PRECISIONS)}, "
                         f"got {o.decoder_precision!r}")
    try:
        check_level(o.level)
    except DataError as exc:
        raise TrainError(f"--level: {exc}") from None
    per_layer_options(o)
    if o.progress is None:
        o.progress = sys.stderr.isatty()
    o.lr = float(o.lr)
    o.out = Path(o.out)
    return o


def per_layer_options(o) -> None:
    """Checks ``layers`` and normalises the per-layer options in place: one value (or a list of one)
    applies to every layer; a list must have one value per layer. A one-layer run keeps scalars (its
    recipe and model are exactly those of a run without ``layers``); a stack gets lists."""
    if isinstance(o.layers, bool) or not isinstance(o.layers, int) or o.layers < 1:
        raise TrainError(f"--layers must be a positive integer, got {o.layers!r}")
    if not isinstance(o.bidirectional, bool):
        raise TrainError(f"bidirectional must be True or False, got {o.bidirectional!r}")
    if o.bidirectional:
        raise TrainError(BIDIRECTIONAL_REFUSAL)
    for name in PER_LAYER_OPTIONS:
        v = getattr(o, name)
        if isinstance(v, (list, tuple)):
            if len(v) == 1:
                v = v[0]
            elif len(v) != o.layers:
                raise TrainError(f"--{name.replace('_', '-')} has {len(v)} values but --layers is {o.layers}: give one "
                                 "value per layer, or one for every layer")
        setattr(o, name, list(v) if isinstance(v, (list, tuple)) else [v] * o.layers if o.layers > 1 else v)


def model_config(o, vocab_size: int):
    """The model config of training options ``o`` (after ``_options``): LMConfig for one
    unidirectional layer, StackLMConfig otherwise; TrainError (one line) for a bad option."""
    common = dict(vocab=vocab_size, input=o.input, gamma=o.gamma, weight_tanh=o.weight_tanh, candidate=o.candidate,
                  embedding=o.embedding, init_state=o.init_state, quantize_output=o.quantize_output,
                  dropout=o.dropout, cell=o.cell, weight_code=o.weight_code,
                  stochastic_weights=bool(o.stochastic_weights))
    try:
        if o.layers == 1:
            return LMConfig(hidden=o.hidden, wbits=resolve_wbits(o.wbits, o.weight_code), abits=o.abits,
                            cell_type=o.cell_type, **common)
        return StackLMConfig(hidden=tuple(o.hidden), wbits=tuple(resolve_wbits(w, o.weight_code) for w in o.wbits),
                             abits=tuple(o.abits), cell_type=tuple(o.cell_type), **common)
    except (ValueError, TypeError) as exc:
        raise TrainError(f"bad model option: {_first_line(exc)}") from None


def _mode_label(cfg) -> str:
    """'W2A2', 'gru W4A2 ternary', 'float'; a stack: '2 layers: W4A2 H=300 | gru W2A2 H=450'."""
    if isinstance(cfg, StackLMConfig):
        return f"{cfg.layers} layers: " + " | ".join(
            f"{_mode_label(cfg.layer_config(l))} H={cfg.hidden[l]}" + (" bidirectional" if cfg.bidirectional[l] else "")
            for l in range(cfg.layers))
    mode = "float" if cfg.is_float else f"W{cfg.wbits or 32}A{cfg.abits or 32}"
    if cfg.cell_type != "lstm":
        mode = f"{cfg.cell_type} {mode}"
    label = code_label(cfg.weight_code, cfg.wbits, cfg.stochastic_weights)
    if label:
        mode += f" {label}"
    return mode


def _make_optimizer(o, params, lr):
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def _set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr


def set_lr(run_dir, lr: float, forget_best: bool = False) -> dict:
    """Change the learning rate a run directory resumes with (its last.pt), once, and record it:
    a line {"event": "lr_set", ...} in metrics.jsonl (the hand-set schedule of a run stays in its
    record). forget_best: also drop the best validation so far, so that the next validation
    starts the comparison that keeps best.pt and anneals afresh (a warm restart to a larger lr,
    whose first validations are worse than the best at the small lr). Returns the event record;
    TrainError (one line) for a missing run, a bad lr or a run that has not written last.pt."""
    run = Path(run_dir)
    last = run / "last.pt"
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise TrainError(f"the new lr must be a positive number, got {lr!r}")
    if not last.is_file():
        raise TrainError(f"{run} has no last.pt to resume from")
    ck = _read_checkpoint(last)  # as resuming reads it (one-line errors)
    rec = {"event": "lr_set", "epoch": int(ck["epoch"]) + 1, "batch": int(ck["batch"]), "lr_from": float(ck["lr"]),
           "lr": float(lr), "forget_best": bool(forget_best), "best_valid_ppl_before": ck.get("best_valid_ppl"),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    ck["lr"] = float(lr)
    if forget_best:
        ck["best_valid_ppl"] = None
    _atomic_save(ck, last)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    return rec


def set_threads(n: int | None) -> None:
    """Cap this process at n threads: torch's intra-op pool and numpy's BLAS (the integer model's
    products). None leaves both at their defaults. An uncapped OpenBLAS beside another busy job makes
    the integer model's small products 5-20x slower (its threads wait on the busy core)."""
    if not n:
        return
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")


# ---------------------------------------------------------------------------------------------
def train(args=None, **kwargs) -> dict:
    o = _options(args, kwargs)
    set_threads(o.threads)

    corpus = load_ptb(resolve_data_dir(o.data), o.level)
    char = o.level == "char"

    def with_bpc(ppl):
        """'12.34' (word level) or '2.67 (1.415 bpc)' (char level) of a perplexity."""
        return f"{ppl:.2f}" + (f" ({bpc(math.log(ppl)):.3f} bpc)" if char else "")
    vocab = corpus.vocab
    train_tokens = corpus.train
    if o.max_train_tokens:
        train_tokens = train_tokens[:o.max_train_tokens]
    train_b = batchify(train_tokens, o.batch_size)
    n_batches = num_bptt_batches(train_b, o.bptt)
    valid = corpus.valid

    cfg = model_config(o, len(vocab))

    out = o.out
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    metrics_path = out / "metrics.jsonl"
    # written into last.pt: the options a resume must keep, and the recurrence implementation
    train_opts = {**{k: getattr(o, k) for k in RESUME_FIXED}, "fused_recurrence": o.fused_recurrence}

    def log(msg):
        print(msg, flush=True)

    if o.resume and not last_path.is_file():
        raise TrainError(f"--resume: no checkpoint in {out}")

    if last_path.is_file():
        ck = _read_checkpoint(last_path)
        if ck.get("level", DEFAULT_LEVEL) != o.level:
            raise TrainError(f"{last_path} was written at {ck.get('level', DEFAULT_LEVEL)} level, now {o.level}; "
                             "use the same --level or another --out")
        try:  # normalised through LMConfig, so fields added later compare by their defaults
            saved_cfg = config_from_dict(dict(ck["config"])).to_dict()
        except (ValueError, TypeError) as exc:
            raise TrainError(f"{last_path} has a bad model config: {_first_line(exc)}") from None
        if saved_cfg != cfg.to_dict():
            now = cfg.to_dict()
            diff = [k for k in dict.fromkeys([*now, *saved_cfg]) if saved_cfg.get(k) != now.get(k)]
            raise TrainError(f"{last_path} was written with a different model config "
                             f"({', '.join(diff)}); use another --out")
        if list(ck["vocab"]) != list(vocab):
            raise TrainError(f"{last_path} was written with a different vocabulary")
        saved_opts = ck.get("train_opts", {})
        for k in RESUME_FIXED:
            if saved_opts.get(k) != train_opts[k]:
                raise TrainError(f"{last_path} was written with {k}={saved_opts.get(k)!r}, "
                                 f"now {train_opts[k]!r}; use the same value or another --out")
        model = _model_from_checkpoint(ck, last_path)
        if saved_opts.get("fused_recurrence", o.fused_recurrence) != o.fused_recurrence:
            log(f"note: {last_path} was written with fused_recurrence={saved_opts['fused_recurrence']}, "
                f"this invocation runs with {o.fused_recurrence}")
        lr = float(ck["lr"])
        optimizer = _make_optimizer(o, model.parameters(), lr)
        optimizer.load_state_dict(ck["optimizer"])
        _set_lr(optimizer, lr)
        done_epochs, start_batch = int(ck["epoch"]), int(ck["batch"])
        best_valid = ck.get("best_valid_ppl")
        best_epoch = ck.get("best_epoch")
        last_valid = ck.get("valid_ppl")
        hidden = tuple(ck["hidden"]) if ck.get("hidden") is not None else None
        epoch_loss, epoch_tokens = float(ck["epoch_loss"]), int(ck["epoch_tokens"])
        epoch_seconds = float(ck.get("epoch_seconds", 0.0))
        torch.set_rng_state(ck["rng_torch"])
        log(f"resuming {out} at epoch {done_epochs + 1}, batch {start_batch}/{n_batches}, lr {lr:g}")
    else:
        torch.manual_seed(o.seed)
        model = build_model(cfg)
        if o.init_from:
            _init_from(model, o.init_from, vocab)
            model.constrain_()
            log(f"initialised from {o.init_from}")
        lr = o.lr
        optimizer = _make_optimizer(o, model.parameters(), lr)
        done_epochs, start_batch = 0, 0
        best_valid = best_epoch = last_valid = None
        hidden = None
        epoch_loss, epoch_tokens, epoch_seconds = 0.0, 0, 0.0

    mode = _mode_label(cfg)
    model.fused_recurrence = o.fused_recurrence
    fusable = model.rnn.fusable if isinstance(model, QuantRNNLM) else model.fusable
    fused = "fused" if model.fused_recurrence and fusable else "step-by-step"
    hid = "" if isinstance(cfg, StackLMConfig) else f" H={cfg.hidden}"
    log(f"model {mode}{hid} X={cfg.input} V={cfg.vocab} "
        f"params={sum(p.numel() for p in model.parameters())}; train {len(train_tokens)} tokens "
        f"({n_batches} batches of {o.batch_size}x{o.bptt}), valid {len(valid)}; "
        f"threads {torch.get_num_threads()}; {fused} recurrence")

    def base_ckpt(epoch, valid_ppl):
        return {"format": FORMAT, "config": cfg.to_dict(), "vocab": list(vocab), "level": o.level,
                "model": model.state_dict(), "epoch": epoch, "valid_ppl": valid_ppl,
                "best_valid_ppl": best_valid, "best_epoch": best_epoch}

    def save_last(epoch_done, batch, hid):
        ck = base_ckpt(epoch_done, last_valid)
        ck.update({"batch": batch, "lr": lr, "optimizer": optimizer.state_dict(),
                   "hidden": None if hid is None else [t.detach().clone() for t in hid],
                   "rng_torch": torch.get_rng_state(), "epoch_loss": epoch_loss,
                   "epoch_tokens": epoch_tokens, "epoch_seconds": epoch_seconds,
                   "train_opts": train_opts})
        _atomic_save(ck, last_path)

    def creeping(valid_ppl):
        """True when valid_ppl does not beat the best by the relative anneal_threshold (a stall or a crawl)."""
        return best_valid is not None and not valid_ppl < best_valid * (1 - o.anneal_threshold)

    def validate_and_anneal(epoch, batch):
        """Mid-epoch validation (eval_every): keep best.pt, anneal lr on a stall; returns lr."""
        nonlocal best_valid, best_epoch, last_valid
        t_val = time.time()
        valid_ppl = evaluate(model, valid, o.eval_batch_size, o.bptt)
        model.train()
        improved = best_valid is None or valid_ppl < best_valid
        annealed = creeping(valid_ppl)
        new_lr = lr
        if improved:
            best_valid, best_epoch = valid_ppl, epoch - 1 + batch / n_batches
            ck = base_ckpt(epoch - 1, valid_ppl)
            ck["batch"] = batch
            _atomic_save(ck, best_path)
        if annealed:
            new_lr = lr / o.anneal
            _set_lr(optimizer, new_lr)
        last_valid = valid_ppl
        with open(metrics_path, "a") as fh:
            rec = {"epoch": epoch, "batch": batch, "lr": lr, "valid_ppl": valid_ppl,
                   "best_valid_ppl": best_valid, "improved": improved, "annealed": annealed,
                   "valid_seconds": round(time.time() - t_val, 2), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            if char:
                rec["valid_bpc"] = bpc(math.log(valid_ppl))
            fh.write(json.dumps(rec) + "\n")
        log(f"epoch {epoch} batch {batch}/{n_batches} | valid ppl {with_bpc(valid_ppl)} | best {best_valid:.2f}"
            + (f" | lr -> {new_lr:g}" if annealed else ""))
        return new_lr

    batches_run = 0
    interrupted = False
    stop_after_epoch = False
    tok_per_s = None
    model.train()
    model.train_decoder_dtype = DECODER_PRECISIONS[o.decoder_precision]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    epoch = done_epochs + 1
    while epoch <= o.epochs:
        if start_batch == 0:
            hidden, epoch_loss, epoch_tokens, epoch_seconds = None, 0.0, 0, 0.0
        if hidden is None:
            hidden = model.init_hidden(o.batch_size)
        pbar = None
        if tqdm is not None and o.progress:
            pbar = tqdm(total=n_batches, initial=start_batch, desc=f"epoch {epoch}",
                        dynamic_ncols=True, leave=False)
        t_seg, tok_seg = time.time(), 0
        t_last_log, loss_last_log, tok_last_log = t_seg, epoch_loss, epoch_tokens
        for b, x, y in iter_bptt(train_b, o.bptt, start_batch):
            t0 = time.time()
            hidden = model.detach_state(hidden)
            optimizer.zero_grad(set_to_none=True)
            logits, hidden = model(x, hidden)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise TrainError(f"training diverged (loss {loss.item()}) at epoch {epoch}, "
                                 f"batch {b}; try a smaller --lr")
            loss.backward()
            if o.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip)
            optimizer.step()
            model.constrain_()
            epoch_loss += loss.item() * y.numel()
            epoch_tokens += y.numel()
            tok_seg += y.numel()
            epoch_seconds += time.time() - t0
            batches_run += 1
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(ppl=f"{math.exp(epoch_loss / epoch_tokens):.1f}", lr=f"{lr:g}")
            if o.log_every and (b + 1) % o.log_every == 0:
                now = time.time()
                tok_per_s = tok_seg / (now - t_seg)
                recent = (epoch_loss - loss_last_log) / max(epoch_tokens - tok_last_log, 1)
                msg = (f"epoch {epoch} | batch {b + 1}/{n_batches} | lr {lr:g} | "
                       f"{1000 * (now - t_last_log) / o.log_every:.0f} ms/batch | "
                       f"{tok_per_s:.0f} tok/s | train ppl {math.exp(epoch_loss / epoch_tokens):.2f}"
                       f" (last {o.log_every} batches {math.exp(recent):.2f})")
                (pbar.write if pbar is not None else log)(msg)
                t_last_log, loss_last_log, tok_last_log = now, epoch_loss, epoch_tokens
            if o.eval_every and (b + 1) % o.eval_every == 0 and b + 1 < n_batches:
                t_v = time.time()
                lr = validate_and_anneal(epoch, b + 1)
                t_seg, tok_seg = time.time(), 0  # validation time is not training throughput
                t_last_log += t_seg - t_v  # nor part of the next log line's ms/batch
            if o.checkpoint_every and (b + 1) % o.checkpoint_every == 0:
                save_last(epoch - 1, b + 1, hidden)
            if o.max_batches and batches_run >= o.max_batches:
                if b + 1 == n_batches:
                    stop_after_epoch = True  # the epoch's last batch: validate and checkpoint it first
                else:
                    save_last(epoch - 1, b + 1, hidden)
                    interrupted = True
                    break
        if pbar is not None:
            pbar.close()
        if tok_seg:
            tok_per_s = tok_seg / max(time.time() - t_seg, 1e-9)
        if interrupted:
            log(f"stopped after {batches_run} batches (--max-batches); checkpoint {last_path}")
            break

        # end of epoch: validate, keep best, anneal
        t_val = time.time()
        valid_ppl = evaluate(model, valid, o.eval_batch_size, o.bptt)
        val_seconds = time.time() - t_val
        train_ppl = math.exp(epoch_loss / epoch_tokens) if epoch_tokens else float("nan")
        improved = best_valid is None or valid_ppl < best_valid
        annealed = creeping(valid_ppl)
        last_valid = valid_ppl
        lr_used = lr
        if improved:
            best_valid, best_epoch = valid_ppl, epoch
            _atomic_save(base_ckpt(epoch, valid_ppl), best_path)
        if annealed:
            lr = lr / o.anneal
            _set_lr(optimizer, lr)
        record = {"epoch": epoch, "lr": lr_used, "train_ppl": train_ppl, "valid_ppl": valid_ppl,
                  "best_valid_ppl": best_valid, "improved": improved, "annealed": annealed,
                  "train_seconds": round(epoch_seconds, 2), "valid_seconds": round(val_seconds, 2),
                  "train_tokens_per_s": round(epoch_tokens / epoch_seconds, 1)
                  if epoch_seconds else None, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if char:
            record["valid_bpc"] = bpc(math.log(valid_ppl))
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        log(f"end of epoch {epoch} | train ppl {train_ppl:.2f} | valid ppl {with_bpc(valid_ppl)} | "
            f"best {best_valid:.2f} | train {epoch_seconds:.0f} s, valid {val_seconds:.0f} s"
            + (f" | lr -> {lr:g}" if annealed else ""))
        start_batch = 0
        hidden = None
        epoch_loss, epoch_tokens, epoch_seconds = 0.0, 0, 0.0
        save_last(epoch, 0, None)
        epoch += 1
        if o.min_lr is not None and lr < o.min_lr:
            log(f"lr {lr:g} < min_lr {o.min_lr:g}: stopping")
            break
        if stop_after_epoch and epoch <= o.epochs:
            interrupted = True
            log(f"stopped after {batches_run} batches (--max-batches), at the end of epoch {epoch - 1}")
            break

    summary = {"out": str(out), "best_valid_ppl": best_valid, "best_epoch": best_epoch,
               "epochs_done": epoch - 1,
               "interrupted": interrupted, "test_ppl": None, "tokens_per_s": tok_per_s}
    if char:
        summary.update(level=o.level, best_valid_bpc=None if best_valid is None else bpc(math.log(best_valid)),
                       test_bpc=None)
    if not interrupted and best_path.is_file():
        best_model, _, meta = load_lm_checkpoint(best_path)
        test_ppl = evaluate(best_model, corpus.test, o.eval_batch_size, o.bptt)
        summary["test_ppl"] = test_ppl
        rec = {"event": "test", "best_epoch": meta["epoch"], "valid_ppl": meta["valid_ppl"], "test_ppl": test_ppl}
        if char:
            summary["test_bpc"] = rec["test_bpc"] = bpc(math.log(test_ppl))
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        log(f"best epoch {meta['epoch']}: valid ppl {with_bpc(meta['valid_ppl'])}, test ppl {with_bpc(test_ppl)}")
        with open(out / "summary.json", "w") as fh:
            json.dump(summary, fh, indent=1)
    return summary


__all__ = ["train", "evaluate", "evaluate_loss", "load_lm_checkpoint", "CheckpointError",
           "TrainError", "DataError", "DEFAULTS"]
