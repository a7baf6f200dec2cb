"""PTB experiments end to end: train (resumable), evaluate the training model and the bit-exact
integer model on valid and test, record one entry in results/ptb.json; the table of our numbers
beside the papers'; Kapur et al.'s neuron-increase search, and their layer-wise widening of stacks.

An entry (keyed by its name: "W2A2@300" for the LSTM, "GRU W2A2@300", "GRU-Ott W2A2@300" or
"RNN W2A2@300" for the other cell types, "_<cell format>" appended when one is given, and the weight
code for Ott et al.'s codes, e.g. "W2A2@300 ternary", "GRU W4A2@300 exponential stochastic"; "char "
first for PTB at character level, e.g. "char W2A2@300 ternary") holds: wbits, abits, hidden, cell
(the LSTM's cell-state format; None for cells without a cell state), cell_type, weight_code,
stochastic_weights, level ("word" or "char"), recipe (every training option) and epochs done, valid/test perplexity of the training model
("model") and of the integer model ("integer"), the integer/model gap (at char level the perplexities are per character and "model_bpc" and
"integer_bpc" hold the bits per character beside them), model size in bits
(recurrent layer, under the keys lstm_layer_* whatever the cell type, and whole model, with their
FP32 sizes), wall time (accumulated over resumed invocations), the command, and a "note" that
keeps the figures of any earlier entry of the same name that this one replaced.

A stack's entry (``run_experiment(layers=L)``, L > 1; sw_ref.stack_model) is named by
``stack_entry_name`` ("2x W4A2@300,300", "2x W4A2,W2A2@300,450", "2x LSTM,GRU W2A2@300,300"), has
"layers" and per-layer lists under hidden, wbits, abits, cell_type and cell, bits summed over its
layers (and per layer under "layer_bits"), its integer model sw_ref.export.IntegerStackLM; the table
lists stacks in their own section. Kapur et al.'s layer-wise widening of a stack (``run_widening``,
``python -m sw_ref widen``) trains one stack entry per size tried and records its rounds under the
results file's "widenings", keyed by the base stack's entry name, tabulated after the stacks.

Paths in an entry (run_dir, command, recipe's init_from) are relative to the working directory of
the invocation, the repository root for every documented command: records carry no absolute path
of the machine that made them.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

from .cells import CELLS, DEFAULT_CELL_TYPE, cell_class
from .data import DEFAULT_LEVEL, LEVELS, bpc, check_level
from .weight_quantizers import (DEFAULT_WEIGHT_CODE, WEIGHT_CODES, check_stochastic, code_label, resolve_wbits,
                                weight_quantizer)

#: Kapur et al. Table 2 (test PPW, 1-layer LSTM on PTB; float baseline 108.7) and He et al. Table 1
#: (LSTM and GRU rows, one layer of 300 units, balanced quantization)
KAPUR_TABLE2 = {(4, 4): {300: 115.2, 450: 108.8, 1000: 108.4}, (4, 2): {300: 116.7, 450: 111.7, 1000: 113.1},
                (2, 4): {300: 138.5, 450: 130.6, 1000: 128.4}, (2, 2): {300: 152.2, 450: 148.2, 1000: 148.0}}
KAPUR_BASELINE = 108.7
HE_TABLE1_LSTM = {(2, 2): 152, (2, 3): 142, (3, 3): 120, (4, 4): 114, (None, None): 109}
HE_TABLE1_GRU = {(2, 2): 150, (2, 3): 128, (3, 3): 109, (4, 4): 104, (None, None): 100}
#: He et al. Table 1 by cell type (their GRU is the "gru" cell: reset before the product)
HE_TABLE1 = {"lstm": HE_TABLE1_LSTM, "gru": HE_TABLE1_GRU}


def relative_path(path, root=None) -> str:
    """`path` relative to `root` (default: the working directory, the repository root for every
    documented command), POSIX-style; a relative `path` is taken relative to the working directory."""
    root = os.path.abspath(root or os.getcwd())
    return Path(os.path.relpath(os.path.abspath(path), root)).as_posix()


def relative_command(argv, root=None) -> str:
    """A command line (list of arguments, or a string) as one shell-quoted string with every
    absolute path argument (`/x/y` or `--opt=/x/y`) made relative by ``relative_path``."""
    if isinstance(argv, str):
        argv = shlex.split(argv)
    out = []
    for a in argv:
        opt, eq, val = a.partition("=") if a.startswith("-") else ("", "", a)
        if os.path.isabs(val):
            a = opt + eq + relative_path(val, root)
        out.append(a)
    return " ".join(shlex.quote(a) for a in out)


def portable_entry(e: dict, root=None) -> dict:
    """A copy of results entry `e` whose recorded paths (run_dir, command, evaluated_by, the
    recipe's init_from) are relative (``relative_path``) where they were absolute."""
    e = dict(e)
    if e.get("run_dir") and os.path.isabs(e["run_dir"]):
        e["run_dir"] = relative_path(e["run_dir"], root)
    for k in ("command", "evaluated_by"):
        if e.get(k):
            e[k] = relative_command(e[k], root)
    if isinstance(e.get("recipe"), dict) and e["recipe"].get("init_from"):
        e["recipe"] = dict(e["recipe"], init_from=relative_path(e["recipe"]["init_from"], root))
    return e


def replacement_note(prev: dict, new: dict) -> str | None:
    """The sentence that keeps `prev`'s figures when `new` replaces it with another run (another
    run directory, or fewer epochs or less training time than recorded: a restart), else None."""
    prev = portable_entry(prev)
    restarted = (prev.get("run_dir") != new.get("run_dir")
                 or (prev.get("epochs_done") or 0) > (new.get("epochs_done") or 0)
                 or (prev.get("wall_s") or 0) > (new.get("wall_s") or 0))
    if not restarted:
        return None
    ppw = prev.get("integer_ppw") or prev.get("model_ppw") or {}
    which = "integer-model" if prev.get("integer_ppw") else "training-model"
    fig = f"{which} test PPW {ppw['test']:.2f}" if ppw.get("test") is not None else "no test PPW"
    return (f"Replaces an earlier run ({prev.get('run_dir')}, measured {prev.get('date', '?')}): {fig} after "
            f"{prev.get('epochs_done')} epochs (best epoch {prev.get('best_epoch')}).")


def model_bits(cfg) -> dict:
    """Storage of the LM in bits: recurrent-layer weights (rows = n_gates * H: 4H LSTM, 3H GRU, H RNN)
    at wbits, biases 32, embedding at abits, decoder at wbits if quantized else 32; and the FP32
    sizes of the same tensors. The layer's keys are named lstm_layer_* for every cell type. A stack
    (sw_ref.stack_model.StackLMConfig): lstm_layer_* sum every layer and direction, "layer_bits"
    lists each layer's (both directions), the decoder reads the last layer's output at its wbits."""
    if getattr(cfg, "layers", 1) != 1 or isinstance(getattr(cfg, "hidden", None), (list, tuple)):
        return _stack_bits(cfg)
    V, H, X = cfg.vocab, cfg.hidden, cfg.input
    rows = cell_class(getattr(cfg, "cell_type", DEFAULT_CELL_TYPE)).rows_for(H)
    wb = cfg.wbits or 32
    ab = cfg.abits or 32
    layer = rows * (X + H) * wb + rows * 32
    emb = V * X * ab
    dec = V * H * (wb if cfg.quantize_output else 32) + V * 32
    fp32 = 32 * (rows * (X + H) + rows + V * X + V * H + V)
    return {"lstm_layer_bits": layer, "lstm_layer_fp32_bits": 32 * (rows * (X + H) + rows),
            "model_bits": layer + emb + dec, "model_fp32_bits": fp32}


def _stack_bits(cfg) -> dict:
    layer_bits, layer_fp32 = [], []
    for l in range(cfg.layers):
        c = cfg.layer_config(l)
        rows, n = cell_class(c.cell_type).rows_for(c.hidden), 2 if cfg.bidirectional[l] else 1
        layer_bits.append(n * (rows * (c.input + c.hidden) * (c.wbits or 32) + rows * 32))
        layer_fp32.append(n * 32 * (rows * (c.input + c.hidden) + rows))
    V, X, W = cfg.vocab, cfg.input, cfg.output_width(cfg.layers - 1)
    emb = V * X * (cfg.abits[0] or 32)
    dec = V * W * ((cfg.wbits[-1] or 32) if cfg.quantize_output else 32) + V * 32
    return {"lstm_layer_bits": sum(layer_bits), "lstm_layer_fp32_bits": sum(layer_fp32), "layer_bits": layer_bits,
            "model_bits": sum(layer_bits) + emb + dec, "model_fp32_bits": sum(layer_fp32) + 32 * (V * X + V * W + V)}


#: the mark of a tokenization level in entry names ("" for PTB words)
LEVEL_LABELS = {"word": "", "char": "char"}


def _entry_name(wbits, abits, hidden, cell=None, cell_type=DEFAULT_CELL_TYPE, weight_code=DEFAULT_WEIGHT_CODE,
                stochastic=False, level=DEFAULT_LEVEL) -> str:
    """"W4A2@450" (LSTM), "GRU W2A2@300", "RNN float@300"; "_<cell format>" appended when given; the
    code of Ott et al.'s weight codes last ("W2A2@300 ternary", "W4A2@300 exponential stochastic");
    "char " first at character level ("char W2A2@300 ternary")."""
    q = "float" if wbits is None and abits is None else f"W{wbits}A{abits}"
    label = cell_class(cell_type).label
    code = code_label(weight_code, wbits, stochastic)
    lv = LEVEL_LABELS[check_level(level)]
    return ((f"{lv} " if lv else "") + (f"{label} " if label else "") + f"{q}@{hidden}" + (f"_{cell}" if cell else "")
            + (f" {code}" if code else ""))


def _per_layer(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def stack_entry_name(wbits, abits, hidden, cell=None, cell_type=DEFAULT_CELL_TYPE, weight_code=DEFAULT_WEIGHT_CODE,
                     stochastic=False, level=DEFAULT_LEVEL) -> str:
    """A stack's entry name: "2x W4A2@300,300"; per-layer values that differ are listed layer by layer
    ("2x W4A2,W2A2@300,450", "2x LSTM,GRU W2A2@300,300"), equal ones once ("2x GRU W2A2@300,300"); the
    cell format, weight code and level marks as ``_entry_name``'s. ``hidden`` is the list of sizes
    (its length L); a single value of the others applies to every layer."""
    L = len(hidden)
    w, a, ct = ([x] * L if not isinstance(x, (list, tuple)) else list(x) for x in (wbits, abits, cell_type))
    q = ["float" if wi is None and ai is None else f"W{wi}A{ai}" for wi, ai in zip(w, a)]
    q = q[0] if len(set(q)) == 1 else ",".join(q)
    labels = [cell_class(c).label or ("LSTM" if len(set(ct)) > 1 else "") for c in ct]
    label = labels[0] if len(set(labels)) == 1 else ",".join(labels)
    code = code_label(weight_code, next((x for x in w if x is not None), None), stochastic)
    lv = LEVEL_LABELS[check_level(level)]
    return ((f"{lv} " if lv else "") + f"{L}x " + (f"{label} " if label else "") + f"{q}@{','.join(map(str, hidden))}"
            + (f"_{cell}" if cell else "") + (f" {code}" if code else ""))


def _is_stack(e: dict) -> bool:
    """Whether a results entry is a stack's (written by run_experiment with layers > 1)."""
    return (e.get("layers") or 1) > 1


def search_key(wbits, abits, cell_type=DEFAULT_CELL_TYPE, weight_code=DEFAULT_WEIGHT_CODE, stochastic=False) -> str:
    """Key of a neuron-increase search in the results file: "W2A2", "GRU W2A2", "W2A2 ternary"."""
    label = cell_class(cell_type).label
    code = code_label(weight_code, wbits, stochastic)
    return (f"{label} " if label else "") + f"W{wbits}A{abits}" + (f" {code}" if code else "")


def _entry_cell_type(e: dict) -> str:
    """The cell type of a results entry (entries written before the field existed are LSTMs)."""
    return e.get("cell_type") or DEFAULT_CELL_TYPE


def _entry_weight_code(e: dict) -> str:
    """The weight code of a results entry (entries written before the field existed are balanced)."""
    return e.get("weight_code") or DEFAULT_WEIGHT_CODE


def _entry_level(e: dict) -> str:
    """The tokenization level of a results entry (entries written before the field existed: word)."""
    return e.get("level") or DEFAULT_LEVEL


def _is_paper_cell(e: dict) -> bool:
    """Whether the papers' tables (Kapur et al., He et al.: balanced codes, PTB words) apply to an entry."""
    return (_entry_weight_code(e) == DEFAULT_WEIGHT_CODE and not e.get("stochastic_weights")
            and _entry_level(e) == DEFAULT_LEVEL)


def load_results(path) -> dict:
    p = Path(path)
    if not p.exists():
        return {"runs": {}}
    try:
        with open(p) as fh:
            d = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not an hwrnn PTB results file (not valid JSON: {exc})") from None
    if not isinstance(d, dict) or not isinstance(d.get("runs"), dict):
        raise ValueError(f"{path} is not an hwrnn PTB results file")
    return d


def save_results(d: dict, path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(d, fh, indent=1, sort_keys=True)
    os.replace(tmp, p)


def evaluate_run(run_dir, data_dir, formats=None, bsz: int = 10) -> dict:
    """Valid and test perplexity of best.pt (last.pt while no epoch has finished): training model
    and, when quantized, integer model (a stack's: sw_ref.export.IntegerStackLM, "cell" then per
    layer); at the checkpoint's level (char: per character, and bits per character under
    "model_bpc" / "integer_bpc")."""
    from .data import load_ptb_for
    from .export import IntegerLM, IntegerStackLM, layer_from_model, stack_from_model
    from .stack_model import QuantStackLM
    from .train import evaluate, load_lm_checkpoint

    ck = Path(run_dir) / "best.pt"
    if not ck.exists():
        ck = Path(run_dir) / "last.pt"
    model, vocab, meta = load_lm_checkpoint(ck)
    level = meta.get("level", DEFAULT_LEVEL)
    corpus = load_ptb_for(data_dir, level, vocab, run_dir)
    out = {"best_epoch": meta.get("epoch"), "checkpoint": ck.name, "model": {}, "integer": None}
    for split in ("valid", "test"):
        out["model"][split] = evaluate(model, getattr(corpus, split), bsz)
    stack = isinstance(model, QuantStackLM)
    if stack and all(w is not None for w in model.cfg.wbits) and model.cfg.abits[0] is not None:
        st = stack_from_model(model, **(formats or {}))
        ilm = IntegerStackLM(model, st)
        out["integer"] = {s: ilm.perplexity(getattr(corpus, s).numpy(), bsz) for s in ("valid", "test")}
        out["cell"] = [layer.cfg.cell if layer.cfg.gate_set.has_cell_state else None for layer in st.layers]
        out["gap_percent"] = 100.0 * (out["integer"]["test"] - out["model"]["test"]) / out["model"]["test"]
    elif not stack and model.cfg.wbits is not None and model.cfg.abits is not None:
        layer = layer_from_model(model, **(formats or {}))
        ilm = IntegerLM(model, layer)
        out["integer"] = {s: ilm.perplexity(getattr(corpus, s).numpy(), bsz) for s in ("valid", "test")}
        out["cell"] = layer.cfg.cell if model.cfg.cell_class.has_cell_state else None
        out["gap_percent"] = 100.0 * (out["integer"]["test"] - out["model"]["test"]) / out["model"]["test"]
    out["bits"] = model_bits(model.cfg)
    out["cell_type"] = list(model.cfg.cell_type) if stack else model.cfg.cell_type
    out["weight_code"] = model.cfg.weight_code
    out["stochastic_weights"] = model.cfg.stochastic_weights
    out["level"] = level
    if level == "char":
        for which in ("model", "integer"):
            if out[which] is not None:
                out[f"{which}_bpc"] = {k: bpc(math.log(v)) for k, v in out[which].items()}
    return out


#: training options that define the recipe (the rest only steer logging, threads and checkpoints)
RECIPE_KEYS = ("layers", "level", "cell_type", "weight_code", "stochastic_weights", "batch_size", "bptt", "lr", "optimizer", "clip", "dropout", "seed", "init_from",
               "gamma", "weight_tanh", "candidate", "embedding", "init_state", "quantize_output", "cell", "anneal",
               "anneal_threshold", "min_lr", "max_train_tokens", "eval_every", "decoder_precision", "fused_recurrence")


def validation_curve(run_dir) -> list[dict]:
    """The run's validation curve from its metrics.jsonl, in order: one record per validation
    ({"epoch", "valid", "lr"}: the lr the epoch trained with, "batch" for a mid-epoch validation,
    "annealed": True where lr was divided afterwards) and one per hand-set lr ({"epoch", "batch",
    "lr_set"}: sw_ref set-lr). Valid perplexity rounded to 0.01; [] without metrics."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    curve = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("event") == "lr_set":
            curve.append({"epoch": r["epoch"], "batch": r["batch"], "lr_set": r["lr"]})
        elif "event" not in r and "valid_ppl" in r:
            c = {"epoch": r["epoch"], **({"batch": r["batch"]} if "batch" in r else {}),
                 "valid": round(r["valid_ppl"], 2), "lr": r["lr"]}
            if r.get("annealed", not r.get("improved", True)):
                c["annealed"] = True
            curve.append(c)
    return curve


def curve_text(curve: list[dict]) -> str:
    """One line of a validation curve: "epoch: valid" grouped by the lr they trained with, a
    mid-epoch validation as "epoch b<batch>: valid", hand-set lr changes marked."""
    parts, lr = [], None
    for c in curve:
        if "lr_set" in c:
            parts.append(f"[lr set to {c['lr_set']:g} at epoch {c['epoch']} batch {c['batch']}]")
            lr = c["lr_set"]
            continue
        head = "" if c["lr"] == lr else f"lr {c['lr']:g}: "
        lr = c["lr"]
        where = f"{c['epoch']}" + (f" b{c['batch']}" if "batch" in c else "")
        parts.append(f"{head}{where}: {c['valid']:.2f}")
    return ", ".join(parts)


def full_recipe(train_opts: dict, epochs: int) -> dict:
    """Every recipe option as training resolves it (defaults filled in), so an entry states exactly
    how its model was trained."""
    from .train import DEFAULTS

    r = {k: v for k, v in {**DEFAULTS, **{k: v for k, v in train_opts.items() if v is not None}}.items()
         if k in RECIPE_KEYS}
    if r.get("lr") is None:
        r["lr"] = 20.0 if r.get("optimizer") == "sgd" else 1e-3
    if r.get("init_from"):
        r["init_from"] = relative_path(r["init_from"])
    if r.get("layers") == 1:
        del r["layers"]  # one layer: the recipe as before stacks existed
    return r | {"epochs": epochs}


def _entry_recipe(train_opts: dict, cell_type, weight_code, level, layers: int, epochs: int) -> dict:
    """The recipe run_experiment records (``full_recipe`` of its training options)."""
    return full_recipe({**train_opts, "cell_type": cell_type, "weight_code": weight_code, "level": level,
                        "layers": layers}, epochs)


def _run_state(out: Path, epochs: int) -> dict:
    """epochs_done / interrupted of a run directory from its last.pt (for eval_only)."""
    from .train import load_lm_checkpoint

    last = out / "last.pt"
    if not last.is_file():
        raise ValueError(f"{out} has no last.pt: nothing to evaluate")
    model, _vocab, meta = load_lm_checkpoint(last)
    done = int(meta.get("epoch", 0))
    ct = model.cfg.cell_type
    return {"epochs_done": done, "interrupted": done < epochs, "cell_type": ct if isinstance(ct, str) else list(ct),
            "weight_code": model.cfg.weight_code, "level": meta.get("level", DEFAULT_LEVEL),
            "layers": getattr(model.cfg, "layers", 1)}


def _stack_options(layers, hidden, wbits, abits, cell_type, weight_code, stochastic, cell):
    """The per-layer lists (hidden, wbits, abits, cell_type) of a stack experiment, checked as training
    checks them (sw_ref.train's per-layer options and StackLMConfig: one-line ValueError) before
    anything is written. ``bidirectional`` is refused before (a language model)."""
    from types import SimpleNamespace

    from .stack_model import StackLMConfig
    from .train import per_layer_options

    o = SimpleNamespace(layers=layers, bidirectional=False, hidden=hidden, wbits=wbits, abits=abits,
                        cell_type=cell_type)
    per_layer_options(o)
    o.wbits = [resolve_wbits(w, weight_code) for w in o.wbits]
    StackLMConfig(vocab=1, hidden=tuple(o.hidden), wbits=tuple(o.wbits), abits=tuple(o.abits),
                  cell_type=tuple(o.cell_type), weight_code=weight_code, stochastic_weights=stochastic, cell=cell)
    return o.hidden, o.wbits, o.abits, o.cell_type


def run_experiment(data, out, wbits=None, abits=None, hidden=300, epochs=40, name=None, results="results/ptb.json",
                   formats=None, command=None, eval_only=False, cell_type=DEFAULT_CELL_TYPE,
                   weight_code=DEFAULT_WEIGHT_CODE, level=DEFAULT_LEVEL, layers=1, bidirectional=False,
                   **train_opts) -> dict:
    """Train (or resume) into `out`, evaluate, upsert results[name]; returns the entry.
    ``eval_only``: no training, evaluate the run directory as it stands. ``cell_type``: sw_ref.cells
    (lstm, gru, gru_ott, rnn); ``weight_code``: sw_ref.weight_quantizers (``wbits`` None takes the
    code's default width); ``level``: word or char (sw_ref.data); all checked before anything is written.
    ``layers`` > 1: a stack (sw_ref.stack_model); ``hidden``, ``wbits``, ``abits`` and ``cell_type`` take
    one value per layer (or one for all); the entry ("2x W4A2@300,300", ``stack_entry_name``) records
    them as lists, "layers", and per-layer "layer_bits". ``bidirectional`` is refused (no causal LM)."""
    from .data import resolve_data_dir
    from .train import BIDIRECTIONAL_REFUSAL, set_threads, train

    if bidirectional:
        raise ValueError(BIDIRECTIONAL_REFUSAL)
    cell_type = DEFAULT_CELL_TYPE if cell_type is None else cell_type
    weight_code = DEFAULT_WEIGHT_CODE if weight_code is None else weight_code
    level = check_level(DEFAULT_LEVEL if level is None else level)
    stochastic = bool(train_opts.get("stochastic_weights"))
    layers = 1 if layers is None else layers
    stack = not (isinstance(layers, int) and layers == 1)
    if stack:
        weight_quantizer(weight_code, None)  # one-line ValueError for an unknown weight code
        hidden, wbits, abits, cell_type = _stack_options(layers, hidden, wbits, abits, cell_type, weight_code,
                                                         stochastic, (formats or {}).get("cell"))
    else:
        from types import SimpleNamespace

        from .train import per_layer_options

        o = SimpleNamespace(layers=1, bidirectional=False, hidden=hidden, wbits=wbits, abits=abits, cell_type=cell_type)
        per_layer_options(o)  # a list of one value is that value; a longer one is refused (one line)
        hidden, wbits, abits, cell_type = o.hidden, o.wbits, o.abits, o.cell_type
        wbits = resolve_wbits(wbits, weight_code)  # one-line ValueError for an unknown weight code
        weight_quantizer(weight_code, wbits)  # ... or a width it does not take
        check_stochastic(weight_code, wbits, stochastic)
        cls = cell_class(cell_type)  # one-line ValueError for an unknown cell type
        if (formats or {}).get("cell") is not None and not cls.has_cell_state:
            raise ValueError(f"--cell (a cell-state format) applies to the LSTM only: cell_type {cell_type!r} "
                             "has no cell state")
    data_dir = resolve_data_dir(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "experiment.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"wall_s": 0.0, "invocations": 0}
    if eval_only:  # measure the run as it stands (e.g. while its training runs elsewhere)
        set_threads(train_opts.get("threads"))
        summary = _run_state(out, epochs)
        if summary["layers"] != layers:
            raise ValueError(f"{out} holds a model of {summary['layers']} layer(s), not {layers}: "
                             f"pass --layers {summary['layers']}")
        if summary["cell_type"] != cell_type:
            raise ValueError(f"{out} holds a {summary['cell_type']} model, not {cell_type}: "
                             f"pass --cell-type {summary['cell_type']}")
        if summary["weight_code"] != weight_code:
            raise ValueError(f"{out} holds a model with {summary['weight_code']} weights, not {weight_code}: "
                             f"pass --weight-code {summary['weight_code']}")
        if summary["level"] != level:
            raise ValueError(f"{out} holds a {summary['level']}-level model, not {level}: pass --level {summary['level']}")
    else:
        t0 = time.time()
        summary = train(data=str(data_dir), out=str(out), wbits=wbits, abits=abits, hidden=hidden, epochs=epochs,
                        cell_type=cell_type, weight_code=weight_code, level=level,
                        **({"layers": layers} if stack else {}), **train_opts)
        state["wall_s"] += time.time() - t0
        state["invocations"] += 1
        state_path.write_text(json.dumps(state))
    ev = evaluate_run(out, data_dir, formats)
    name = name or (stack_entry_name if stack else _entry_name)(
        wbits, abits, hidden, (formats or {}).get("cell"), cell_type, weight_code, stochastic, level)
    epochs_done = summary["epochs_done"]
    entry = {
        "name": name, "wbits": wbits, "abits": abits, "hidden": hidden, "cell": ev.get("cell"),
        "cell_type": ev["cell_type"], "weight_code": ev["weight_code"], "stochastic_weights": ev["stochastic_weights"],
        "level": ev["level"],
        "recipe": _entry_recipe(train_opts, cell_type, weight_code, level, layers if stack else 1, epochs),
        **({"layers": layers} if stack else {}),
        "epochs_done": epochs_done, "best_epoch": ev["best_epoch"], "evaluated": ev["checkpoint"],
        "valid_curve": validation_curve(out),
        "finished": not summary["interrupted"],  # all epochs run, or stopped by min_lr
        "model_ppw": ev["model"], "integer_ppw": ev["integer"], "gap_percent": ev.get("gap_percent"),
        **({k: ev[k] for k in ("model_bpc", "integer_bpc") if k in ev}),
        "bits": ev["bits"], "wall_s": round(state["wall_s"], 1), "run_dir": relative_path(out),
        "command": command or relative_command(["python", "-m", "sw_ref", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with _locked(results):  # several runs may record into one results file at once
        d = load_results(results)
        prev = d["runs"].get(name)
        if eval_only:
            entry["evaluated_by"] = entry["command"]
            if prev is not None:  # the recipe and command stay those of the training invocations
                entry["recipe"], entry["command"] = prev["recipe"], prev["command"]
        if prev is not None:  # notes stay; a restart keeps the figures of the run it replaces
            notes = [n for n in (prev.get("note"), None if eval_only else replacement_note(prev, entry)) if n]
            if notes:
                entry["note"] = " ".join(notes)
        entry = portable_entry(entry)
        d["runs"][name] = entry
        save_results(d, results)
    return entry


class _locked:
    """An exclusive advisory lock (fcntl) on <results>.lock for a read-modify-write of the file."""

    def __init__(self, path):
        self.path = Path(str(path) + ".lock")

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _fmt(v):
    return "-" if v is None else f"{v:.1f}"


def _fmt_bpc(v):
    return "-" if v is None else f"{v:.3f} bpc"


#: test PPW targets (integer model; training model for float runs), each the paper's figure for
#: exactly that cell: bit widths and hidden size (Kapur's 1000-unit column is not a 450 target)
TARGETS = {"float@300": float(HE_TABLE1_LSTM[(None, None)]),
           **{f"W{w}A{a}@{h}": KAPUR_TABLE2[(w, a)][h] for w, a, h in ((4, 4, 300), (4, 4, 450), (4, 2, 450),
                                                                        (2, 2, 300), (2, 2, 450))},
           **{f"W{w}A{a}@300": float(HE_TABLE1_LSTM[(w, a)]) for w, a in ((2, 3), (3, 3))}}
#: the LSTM runs of issue 16's table (its targets and the float@450 baseline): a row each, a
#: "not run yet" row (with the reason results/ptb.json's "not_run" gives) while a run is missing
REQUIRED_RUNS = (*TARGETS, "float@450")
#: issue 16's target beyond the papers: run -> (our float baseline, largest excess of its test PPW in %)
RELATIVE_TARGETS = {"W2A2@450": ("float@450", 10.0)}
#: He et al.'s GRU rows (300 units) for the GRU entries ("gru": the reset gate before the product, theirs)
TARGETS.update({_entry_name(w, a, 300, cell_type="gru"): float(v) for (w, a), v in HE_TABLE1_GRU.items()})
TARGET_SOURCES = {"float@300": "He et al. Table 1, float 300 units; Kapur et al.'s baseline 108.7",
                  "W2A3@300": "He et al. Table 1", "W3A3@300": "He et al. Table 1",
                  **{_entry_name(w, a, 300, cell_type="gru"): "He et al. Table 1, GRU" for w, a in HE_TABLE1_GRU}}


def _test_ppw(e: dict | None):
    """The test PPW an entry is judged by: the integer model's; the training model's for a float run."""
    e = e or {}
    return (e.get("integer_ppw") or (e.get("model_ppw") if e.get("wbits") is None else None) or {}).get("test")


def _target_cell(name: str, e: dict) -> str:
    t = TARGETS.get(name)
    if t is None:
        return "-"
    got = _test_ppw(e)
    if got is None:
        return f"<= {t}"
    return f"<= {t}: " + ("met" if got <= t else "not met" + ("" if e.get("finished") else " yet"))


def _training_time(e: dict) -> str:
    """'4.7 h (25.6 min/epoch)' from wall_s and epochs_done; '-' when not recorded."""
    wall, ep = e.get("wall_s"), e.get("epochs_done") or 0
    if wall is None:
        return "-"
    per = f" ({wall / 60 / ep:.1f} min/epoch)" if ep > 0 else ""
    return f"{wall / 3600:.1f} h{per}"


def _cell_order(e: dict) -> int:
    ct = _entry_cell_type(e)
    types = [c.name for c in CELLS]
    return types.index(ct) if ct in types else len(types)


def _code_order(e: dict) -> tuple:
    wc = _entry_weight_code(e)
    return (WEIGHT_CODES.index(wc) if wc in WEIGHT_CODES else len(WEIGHT_CODES), bool(e.get("stochastic_weights")))


def results_table(d: dict) -> str:
    """Markdown table of results/ptb.json beside Kapur Table 2 and He Table 1 (LSTM entries first,
    then each other cell type, balanced codes before Ott et al.'s, word level before char level;
    Kapur's figures are LSTM ones, He's of the entry's cell type, both for balanced codes at word level
    only: no paper figure or target for Ott's codes or char level). Char-level entries show bits per
    character in the model and integer columns ("1.452 bpc")."""
    lines = ["| run | W | A | hidden | cell | epochs | model valid | model test | integer valid | integer test "
             "| gap % | target | Kapur T2 | He T1 | layer bits (of FP32) | training time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def order(kv):
        e = kv[1]
        return (LEVELS.index(_entry_level(e)), _cell_order(e), _code_order(e), e["wbits"] or 99, e["abits"] or 99,
                e["hidden"])

    for name, e in sorted(((n, e) for n, e in d["runs"].items() if not _is_stack(e)), key=order):
        key = (e["wbits"], e["abits"])
        lstm = _entry_cell_type(e) == DEFAULT_CELL_TYPE and _is_paper_cell(e)
        kapur = None if not lstm else KAPUR_BASELINE if e["wbits"] is None else KAPUR_TABLE2.get(key, {}).get(e["hidden"])
        he = HE_TABLE1.get(_entry_cell_type(e), {}).get(key) if e["hidden"] == 300 and _is_paper_cell(e) else None
        mp, ip, fmt = e["model_ppw"], e.get("integer_ppw") or {}, _fmt
        if _entry_level(e) == "char":  # bits per character
            mp, ip, fmt = e.get("model_bpc") or {}, e.get("integer_bpc") or {}, _fmt_bpc
        ep = f"{e['epochs_done']}" + ("" if e.get("finished") else f" of {e['recipe'].get('epochs')} (unfinished)")
        gap = "-" if e.get("gap_percent") is None else f"{e['gap_percent']:+.2f}"
        bits = e["bits"]
        lines.append(
            f"| {name} | {e['wbits'] or 32} | {e['abits'] or 32} | {e['hidden']} | {e.get('cell') or '-'} | {ep} "
            f"| {fmt(mp.get('valid'))} | {fmt(mp.get('test'))} | {fmt(ip.get('valid'))} "
            f"| {fmt(ip.get('test'))} | {gap} | {_target_cell(name, e)} "
            f"| {_fmt(kapur)} | {_fmt(he)} | {bits['lstm_layer_bits']:,} ({100 * bits['lstm_layer_bits'] / bits['lstm_layer_fp32_bits']:.1f} %) "
            f"| {_training_time(e)} |")
    for name in REQUIRED_RUNS:
        if name not in d["runs"]:
            q, h = name.split("@")
            w, a = (None, None) if q == "float" else (int(q[1]), int(q[3]))
            kapur = KAPUR_BASELINE if w is None else KAPUR_TABLE2.get((w, a), {}).get(int(h))
            he = HE_TABLE1_LSTM.get((w, a)) if h == "300" else None
            t = TARGETS.get(name)
            lines.append(f"| {name} | {w or 32} | {a or 32} | {h} | - | not run yet | - | - | - | - | - "
                         f"| {'<= ' + str(t) if t else '-'} | {_fmt(kapur)} | {_fmt(he)} | - | - |")
    not_run = [(n, why) for n, why in sorted(d.get("not_run", {}).items()) if n not in d["runs"]]
    lines.append("")
    lines.extend(relative_target_lines(d))
    lines.append("Kapur et al. Table 2 (test PPW): " + "; ".join(
        f"W{w}A{a}: " + ", ".join(f"{h}: {v}" for h, v in row.items()) for (w, a), row in KAPUR_TABLE2.items())
        + f"; float baseline {KAPUR_BASELINE}.")
    lines.append("He et al. Table 1 (LSTM, 300 units, balanced): " + ", ".join(
        f"W{w or 32}A{a or 32}: {v}" for (w, a), v in HE_TABLE1_LSTM.items()) + ".")
    if any(_entry_cell_type(e) == "gru" for e in d["runs"].values()):
        lines.append("He et al. Table 1 (GRU, 300 units, balanced): " + ", ".join(
            f"W{w or 32}A{a or 32}: {v}" for (w, a), v in HE_TABLE1_GRU.items()) + ".")
    if any(_entry_level(e) == "char" for e in d["runs"].values()):
        lines.append("char: PTB at character level (sw_ref.data: the word-level files' characters, '_' between words, "
                     "<eos> ending each line), in bits per character; no paper figure or target.")
    lines.append("Targets: the paper's test PPW for exactly that cell (bit widths and hidden size), integer model "
                 "(training model for float runs): " + "; ".join(
                     f"{n} <= {t} ({TARGET_SOURCES.get(n, 'Kapur et al. Table 2')})" for n, t in TARGETS.items()) + ".")
    lines.append("Every number above was measured by `python -m sw_ref experiment` (command in results/ptb.json); "
                 "unfinished runs are marked with the epochs they had. Training time: wall clock of the run's own "
                 "training invocations (`wall_s`; evaluation and an `--init-from` checkpoint's training excluded) "
                 "on the machine that ran it (shared with any other runs of the time), and per epoch.")
    noted = [(n, e["note"]) for n, e in sorted(d["runs"].items()) if e.get("note")]
    noted += [(n, f"not run yet: {why}") for n, why in not_run]
    if noted:
        lines.extend(["", "Notes:", ""] + [f"- {n}: {note}" for n, note in noted])
    curves = [(n, e["valid_curve"]) for n, e in sorted(d["runs"].items()) if e.get("valid_curve")]
    if curves:
        lines.extend(["", "Validation curves (valid PPW after each epoch, \"epoch b<batch>\" inside one; from each "
                      "run's metrics.jsonl, recorded in its entry as `valid_curve`):", ""]
                     + [f"- {n}: {curve_text(c)}" for n, c in curves])
    lines.extend(search_table(d))
    lines.extend(stack_table(d))
    lines.extend(widening_table(d))
    return "\n".join(lines) + "\n"


def relative_target(d: dict, name: str, baseline: str, percent: float) -> dict:
    """Run `name`'s integer-model test PPW against our float `baseline` entry's (training model):
    {"ppw", "baseline_ppw", "excess_percent", "met"} with met None when either entry is missing or
    the baseline is unfinished (no yardstick yet); "provisional" when a miss could still change."""
    e, b = d["runs"].get(name), d["runs"].get(baseline)
    got, base = _test_ppw(e), _test_ppw(b)
    excess = None if got is None or base is None else 100.0 * (got / base - 1.0)
    if excess is None or not b.get("finished"):  # an unfinished baseline is no yardstick
        return {"ppw": got, "baseline_ppw": base, "excess_percent": excess, "met": None, "provisional": True}
    met = got * 100.0 <= base * (100.0 + percent)  # not via excess: 110 / 100 - 1 is 0.10000000000000009
    return {"ppw": got, "baseline_ppw": base, "excess_percent": excess, "met": met,
            "provisional": not met and not e.get("finished")}


def relative_target_lines(d: dict) -> list[str]:
    """The table's line for each of RELATIVE_TARGETS (targets against our own float baselines)."""
    out = []
    for name, (baseline, percent) in RELATIVE_TARGETS.items():
        r = relative_target(d, name, baseline, percent)
        head = f"Beyond the papers: {name} within {percent:g} % of our {baseline} (test PPW): "
        if r["met"] is None:
            missing = " and ".join(n for n, v in ((name, r["ppw"]), (baseline, r["baseline_ppw"])) if v is None)
            why = (f"{missing} not recorded" if missing else
                   f"{r['ppw']:.1f} vs {r['baseline_ppw']:.1f} ({r['excess_percent']:+.1f} %), but {baseline} is "
                   f"unfinished at epoch {d['runs'][baseline]['epochs_done']}")
            out.append(head + f"not evaluable yet ({why}).")
        else:
            verdict = "met" if r["met"] else "not met" + (" yet (an unfinished run)" if r["provisional"] else "")
            out.append(head + f"{r['ppw']:.1f} vs {r['baseline_ppw']:.1f} ({r['excess_percent']:+.1f} %): {verdict}.")
    return out


def neuron_increase_search(evaluate_hidden, hidden_sizes, target_ppw, baseline_bits=None) -> dict:
    """Kapur et al.'s search for one layer: try hidden sizes in increasing order and return the
    smallest whose test PPW (integer model when available) reaches `target_ppw`, with the cost
    of the widening in model size. `evaluate_hidden(h) -> (ppw, bits dict)`.

    The PTB model has one LSTM layer, so the paper's layer-by-layer evaluation reduces to this
    single search; for a stack, ``layerwise_widening`` evaluates the layers one by one and widens
    the one that reaches the target with the fewest bits."""
    tried = []
    for h in sorted(hidden_sizes):
        ppw, bits = evaluate_hidden(h)
        tried.append({"hidden": h, "ppw": ppw, "lstm_layer_bits": bits["lstm_layer_bits"],
                      "model_bits": bits["model_bits"]})
        if ppw <= target_ppw:
            res = {"target_ppw": target_ppw, "chosen_hidden": h, "ppw": ppw, "tried": tried, "reached": True}
            first = tried[0]
            res["widening_cost_bits"] = bits["model_bits"] - first["model_bits"]
            res["widening_cost_percent"] = 100.0 * (bits["model_bits"] - first["model_bits"]) / first["model_bits"]
            if baseline_bits:
                res["size_vs_float_baseline_percent"] = 100.0 * bits["model_bits"] / baseline_bits
            return res
    return {"target_ppw": target_ppw, "chosen_hidden": None, "tried": tried, "reached": False}


def recorded_search(d: dict, wbits, abits, target_ppw, baseline_bits=None, cell_type=DEFAULT_CELL_TYPE,
                    weight_code=DEFAULT_WEIGHT_CODE, stochastic=False) -> dict:
    """``neuron_increase_search`` over the runs already recorded in results `d` (no training):
    the entries of bit widths (wbits, abits), cell type (default: LSTM) and weight code (default:
    balanced) with the default cell format, by hidden size, each scored by its integer-model test PPW. Every tried size carries its
    run's ``epochs_done`` and ``finished``; ``provisional`` is True when the answer could still
    change because a run that missed the target is unfinished (or no entry reached it yet)."""
    entries = {e["hidden"]: e for e in d["runs"].values()
               if not _is_stack(e) and e["wbits"] == wbits and e["abits"] == abits and e.get("integer_ppw")
               and e["name"] == _entry_name(wbits, abits, e["hidden"], cell_type=cell_type, weight_code=weight_code,
                                            stochastic=stochastic)}

    def evaluate_hidden(h):
        return entries[h]["integer_ppw"]["test"], entries[h]["bits"]

    res = neuron_increase_search(evaluate_hidden, list(entries), target_ppw, baseline_bits)
    for t in res["tried"]:
        e = entries[t["hidden"]]
        t.update(epochs_done=e["epochs_done"], finished=bool(e.get("finished")))
    res["provisional"] = not res["tried"] or any(not t["finished"] and t["ppw"] > target_ppw for t in res["tried"])
    res["from_results"] = True
    return res


def baseline_target(d: dict, baseline: str, tolerance: float = 0.0):
    """(target test PPW, model bits) of the float baseline entry `baseline` in results `d`: its
    test PPW plus `tolerance` percent; None when the entry (or its test PPW) is not recorded."""
    base = d["runs"].get(baseline)
    if base is None or base["model_ppw"].get("test") is None:
        return None
    return base["model_ppw"]["test"] * (1 + tolerance / 100.0), base["bits"]["model_bits"]


def search_table(d: dict, baseline: str = "float@300") -> list[str]:
    """Markdown lines: the neuron-increase search over the recorded LSTM entries for every bit-width
    pair, target = the float baseline entry's test PPW (or Kapur's baseline if none recorded)."""
    base = d["runs"].get(baseline)
    bt = baseline_target(d, baseline)
    if bt is not None:
        target, bbits = bt
        src = (f"our float baseline {baseline}, test PPW {target:.1f}"
               + ("" if base.get("finished") else f", itself unfinished at epoch {base['epochs_done']}"))
    else:
        target, bbits, src = KAPUR_BASELINE, None, f"Kapur et al.'s float baseline {KAPUR_BASELINE}"
    pairs = sorted({(e["wbits"], e["abits"]) for e in d["runs"].values()
                    if not _is_stack(e) and e["wbits"] is not None and _entry_cell_type(e) == DEFAULT_CELL_TYPE and _is_paper_cell(e)})
    lines = ["", "## Neuron-increase search over the recorded runs", "",
             f"`python -m sw_ref search --from-results` (Kapur et al.: the smallest hidden size whose integer-model "
             f"test PPW reaches the target); target: {src}.", "",
             "| bits | tried (hidden: integer test PPW, epochs) | smallest hidden reaching the target | "
             "widening cost (model bits) | model size vs float |", "|---|---|---|---|---|"]
    for w, a in pairs:
        r = recorded_search(d, w, a, target, bbits)
        tried = "; ".join(f"{t['hidden']}: {t['ppw']:.1f} ({t['epochs_done']} ep{'' if t['finished'] else ', unfinished'})"
                          for t in r["tried"]) or "-"
        if r["reached"]:
            chosen = f"{r['chosen_hidden']}"
            cost = f"+{r['widening_cost_bits']:,} (+{r['widening_cost_percent']:.1f} %)"
            size = "-" if bbits is None else f"{r['size_vs_float_baseline_percent']:.1f} %"
        else:
            chosen = "not reached" + (" yet (unfinished runs)" if r["provisional"] else " by the sizes tried")
            cost = size = "-"
        lines.append(f"| W{w}A{a} | {tried} | {chosen} | {cost} | {size} |")
    return lines


def layerwise_widening(evaluate_stack, base_sizes, hidden_sizes, target_ppw, max_rounds: int = 8) -> dict:
    """Kapur et al.'s neuron increase for a stack of layers (any cell type): evaluate the layers one by one
    (widen only layer i, the others at their current size, through the candidate `hidden_sizes`
    above its current size) and widen the layer that reaches the target with the fewest model
    bits; if no single widening reaches it, widen the layer whose best candidate gives the lowest
    perplexity per added bit and repeat (at most `max_rounds` rounds).

    `evaluate_stack(sizes: tuple) -> (ppw, bits dict with "model_bits")`; results are cached, so
    each stack is evaluated (trained) once. Returns the chosen sizes, the rounds with every
    (layer, size) tried, and whether the target was reached. ``run_widening`` runs it over real
    training runs (``python -m sw_ref widen``)."""
    cache = {}

    def ev(sizes):
        sizes = tuple(sizes)
        if sizes not in cache:
            ppw, bits = evaluate_stack(sizes)
            cache[sizes] = (ppw, bits["model_bits"])
        return cache[sizes]

    sizes = tuple(base_sizes)
    base_ppw, base_bits = ev(sizes)
    rounds = []
    if base_ppw <= target_ppw:
        return {"sizes": sizes, "ppw": base_ppw, "model_bits": base_bits, "reached": True, "rounds": rounds,
                "evaluated": len(cache)}
    for _ in range(max_rounds):
        cur_ppw, cur_bits = ev(sizes)
        tried, reaching, best_rate = [], [], None
        for layer in range(len(sizes)):
            for h in sorted(x for x in hidden_sizes if x > sizes[layer]):
                cand = sizes[:layer] + (h,) + sizes[layer + 1:]
                ppw, bits = ev(cand)
                tried.append({"layer": layer, "hidden": h, "ppw": ppw, "model_bits": bits})
                if ppw <= target_ppw:
                    reaching.append((bits, layer, cand, ppw))
                    break  # larger sizes of this layer only cost more
                rate = (cur_ppw - ppw) / max(bits - cur_bits, 1)
                if best_rate is None or rate > best_rate[0]:
                    best_rate = (rate, layer, cand, ppw)
        if reaching:
            bits, layer, cand, ppw = min(reaching)
            rounds.append({"tried": tried, "widened_layer": layer, "sizes": cand})
            return {"sizes": cand, "ppw": ppw, "model_bits": bits, "reached": True, "rounds": rounds,
                    "widening_cost_bits": bits - base_bits, "evaluated": len(cache)}
        if best_rate is None or best_rate[0] <= 0:
            rounds.append({"tried": tried, "widened_layer": None, "sizes": sizes})
            break
        sizes = best_rate[2]
        rounds.append({"tried": tried, "widened_layer": best_rate[1], "sizes": sizes})
    ppw, bits = ev(sizes)
    return {"sizes": sizes, "ppw": ppw, "model_bits": bits, "reached": False, "rounds": rounds,
            "evaluated": len(cache)}


# --------------------------------------------------------------------------------------- stacks
def _layer_desc(e: dict) -> str:
    """'LSTM W4A2 300 | GRU W2A2 450' of a stack entry."""
    L = e["layers"]
    per = [_per_layer(e[k]) * (L if len(_per_layer(e[k])) == 1 else 1) for k in ("cell_type", "wbits", "abits", "hidden")]
    return " \\| ".join(f"{(cell_class(ct).label or 'LSTM')} " + ("float" if w is None and a is None else f"W{w}A{a}")
                          + f" {h}" for ct, w, a, h in zip(*per))


def stack_table(d: dict) -> list[str]:
    """Markdown lines: the stack entries (``run_experiment`` with layers > 1), one row each."""
    stacks = sorted((n, e) for n, e in d["runs"].items() if _is_stack(e))
    if not stacks:
        return []
    lines = ["", "## Stacks of layers", "",
             "`python -m sw_ref experiment --layers L` (sw_ref.stack_model: layer l+1 reads layer l's activation codes; "
             "integer model: sw_ref.export.IntegerStackLM over hwrnn.stack's layer models).", "",
             "| run | layers (cell, bits, hidden) | epochs | model valid | model test | integer valid | integer test "
             "| gap % | layer bits (of FP32) | model bits | training time |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in stacks:
        mp, ip, fmt = e["model_ppw"], e.get("integer_ppw") or {}, _fmt
        if _entry_level(e) == "char":
            mp, ip, fmt = e.get("model_bpc") or {}, e.get("integer_bpc") or {}, _fmt_bpc
        ep = f"{e['epochs_done']}" + ("" if e.get("finished") else f" of {e['recipe'].get('epochs')} (unfinished)")
        gap = "-" if e.get("gap_percent") is None else f"{e['gap_percent']:+.2f}"
        bits = e["bits"]
        lines.append(f"| {name} | {_layer_desc(e)} | {ep} | {fmt(mp.get('valid'))} | {fmt(mp.get('test'))} "
                     f"| {fmt(ip.get('valid'))} | {fmt(ip.get('test'))} | {gap} "
                     f"| {bits['lstm_layer_bits']:,} ({100 * bits['lstm_layer_bits'] / bits['lstm_layer_fp32_bits']:.1f} %) "
                     f"| {bits['model_bits']:,} | {_training_time(e)} |")
    return lines


class _Unfinished(Exception):
    """A widening's evaluation run stopped before its last epoch (--max-batches): resume later."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


def widening_key(wbits, abits, base_sizes, cell_type=DEFAULT_CELL_TYPE, weight_code=DEFAULT_WEIGHT_CODE,
                 stochastic=False) -> str:
    """Key of a layer-wise widening in the results file: the entry name of its base stack."""
    return stack_entry_name(wbits, abits, list(base_sizes), None, cell_type, weight_code, stochastic)


def run_widening(data, runs_dir, base_sizes, hidden_sizes, target_ppw, wbits=None, abits=None,
                 cell_type=DEFAULT_CELL_TYPE, weight_code=DEFAULT_WEIGHT_CODE, epochs=40, results="results/ptb.json",
                 command=None, max_rounds: int = 8, target_source=None, **train_opts) -> dict:
    """Kapur et al.'s layer-wise widening of a stack over real training runs: ``layerwise_widening``
    from ``base_sizes`` (one hidden size per layer, L = its length >= 2) through ``hidden_sizes``,
    each stack evaluated by ``run_experiment`` into ``runs_dir``/<its entry name> (its test PPW: the
    integer model's, the training model's for float runs; its entry recorded in ``results`` as any
    experiment's). Resumable: a stack whose entry is finished with the same run directory and
    recipe is not run again; an evaluation run left unfinished (``max_batches``) stops the widening,
    recorded with status "unfinished" and the stack it waits for: the same call continues it.
    Records results["widenings"][widening_key] (target, sizes tried per round, the chosen sizes,
    every evaluated stack's entry name) and returns that record."""
    from .train import BIDIRECTIONAL_REFUSAL

    if train_opts.pop("bidirectional", False):
        raise ValueError(BIDIRECTIONAL_REFUSAL)
    base_sizes = [int(h) for h in base_sizes]
    L = len(base_sizes)
    if L < 2:
        raise ValueError("layer-wise widening needs a stack of at least 2 layers (one layer: python -m sw_ref search)")
    if not hidden_sizes or min(hidden_sizes) < 1 or min(base_sizes) < 1:
        raise ValueError("hidden sizes must be positive integers")
    if not (isinstance(target_ppw, (int, float)) and math.isfinite(target_ppw) and target_ppw > 0):
        raise ValueError(f"target PPW must be a positive number, got {target_ppw!r}")
    cell_type = DEFAULT_CELL_TYPE if cell_type is None else cell_type
    weight_code = DEFAULT_WEIGHT_CODE if weight_code is None else weight_code
    stochastic = bool(train_opts.get("stochastic_weights"))
    weight_quantizer(weight_code, None)  # one-line ValueError for an unknown weight code
    _, wbits, abits, cell_type = _stack_options(L, base_sizes, wbits, abits, cell_type, weight_code, stochastic, None)
    key = widening_key(wbits, abits, base_sizes, cell_type, weight_code, stochastic)
    evaluated = {}

    def evaluate_stack(sizes):
        name = stack_entry_name(wbits, abits, list(sizes), None, cell_type, weight_code, stochastic)
        out = Path(runs_dir) / name.replace(" ", "_")
        prev = load_results(results)["runs"].get(name)
        recipe = _entry_recipe(train_opts, cell_type, weight_code, DEFAULT_LEVEL, L, epochs)
        if (prev is not None and prev.get("finished") and prev.get("run_dir") == relative_path(out)
                and prev.get("recipe") == recipe):
            e = prev  # measured before with this recipe: not trained or evaluated again
        else:
            e = run_experiment(data, out, wbits=wbits, abits=abits, hidden=list(sizes), layers=L, cell_type=cell_type,
                               weight_code=weight_code, epochs=epochs, results=results, command=command, **train_opts)
        ppw = (e["integer_ppw"] or e["model_ppw"])["test"]
        evaluated[",".join(map(str, sizes))] = {"entry": name, "epochs_done": e["epochs_done"],
                                                "finished": bool(e.get("finished")), "ppw": ppw,
                                                "model_bits": e["bits"]["model_bits"]}
        if not e.get("finished"):
            raise _Unfinished(name)
        return ppw, e["bits"]

    record = {"target_ppw": target_ppw, "target_source": target_source, "base_sizes": base_sizes,
              "hidden_sizes": sorted(int(h) for h in hidden_sizes), "max_rounds": max_rounds}
    try:
        res = layerwise_widening(evaluate_stack, tuple(base_sizes), hidden_sizes, target_ppw, max_rounds)
        record.update(status="done", **{k: (list(v) if k == "sizes" else v) for k, v in res.items()})
        for r in record["rounds"]:
            r["sizes"] = list(r["sizes"])
    except _Unfinished as u:
        record.update(status="unfinished", waiting_for=u.name)
    record.update(stacks=evaluated, command=command or relative_command(["python", "-m", "sw_ref", *sys.argv[1:]]),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    with _locked(results):
        d = load_results(results)
        d.setdefault("widenings", {})[key] = record
        save_results(d, results)
    return record


def widening_table(d: dict) -> list[str]:
    """Markdown lines: every recorded layer-wise widening, one row per round and stack tried."""
    ws = d.get("widenings") or {}
    if not ws:
        return []
    lines = ["", "## Layer-wise widening (Kapur et al.)", "",
             "`python -m sw_ref widen` (sw_ref.experiment.layerwise_widening over real training runs): each round "
             "widens one layer at a time (the others at their current size) through the candidate sizes; the "
             "cheapest stack (model bits) that reaches the target wins, else the layer with the most PPW per added "
             "bit is widened and the next round starts from it. PPW: integer-model test PPW of the stack's entry.", ""]
    for key, w in sorted(ws.items()):
        src = f" ({w['target_source']})" if w.get("target_source") else ""
        if w.get("status") != "done":
            outcome = f"unfinished: waiting for {w.get('waiting_for')} (rerun the command to continue)"
        elif w.get("reached"):
            outcome = (f"reached with hidden {','.join(map(str, w['sizes']))}: PPW {w['ppw']:.1f}, "
                       f"{w['model_bits']:,} model bits (+{w.get('widening_cost_bits', 0):,} over the base)")
        else:
            outcome = (f"not reached; best {','.join(map(str, w['sizes']))}: PPW {w['ppw']:.1f}, "
                       f"{w['model_bits']:,} model bits")
        lines += [f"### {key}: target test PPW <= {w['target_ppw']:.1f}{src}", "",
                  f"Base hidden sizes {','.join(map(str, w['base_sizes']))}, candidates "
                  f"{','.join(map(str, w['hidden_sizes']))}; {outcome}. Command: `{w.get('command')}`.", "",
                  "| round | stack tried | test PPW | model bits | stack entry |", "|---|---|---|---|---|"]
        stacks = w.get("stacks") or {}
        start = list(w["base_sizes"])
        base = stacks.get(",".join(map(str, start)))
        if base:
            lines.append(f"| base | {','.join(map(str, start))} | {_fmt(base.get('ppw'))} "
                         f"| {base.get('model_bits', 0):,} | {base['entry']} |")
        for i, r in enumerate(w.get("rounds") or [], 1):
            for t in r["tried"]:
                cur = list(start)
                cur[t["layer"]] = t["hidden"]
                ent = stacks.get(",".join(map(str, cur)), {}).get("entry", "-")
                lines.append(f"| {i} | layer {t['layer']} -> {t['hidden']} ({','.join(map(str, cur))}) "
                             f"| {t['ppw']:.1f} | {t['model_bits']:,} | {ent} |")
            kept = stacks.get(",".join(map(str, r["sizes"])), {})
            lines.append(f"| {i} | widened: " + (f"layer {r['widened_layer']}" if r["widened_layer"] is not None
                                                 else "none") + f" -> {','.join(map(str, r['sizes']))} "
                         f"| {_fmt(kept.get('ppw'))} | {kept.get('model_bits', 0):,} | {kept.get('entry', '-')} |")
            start = list(r["sizes"])
    return lines
