"""PTB experiments end to end: train (resumable), evaluate the training model and the bit-exact
integer model on valid and test, record one entry in results/ptb.json; the table of our numbers
beside the papers'; Kapur et al.'s neuron-increase search.

An entry (keyed by its name) holds: wbits, abits, hidden, cell, recipe (every training option)
and epochs done, valid/test perplexity of the training model ("model") and of the integer model
("integer"), the integer/model gap, model size in bits (LSTM layer and whole model, with their
FP32 sizes), wall time (accumulated over resumed invocations) and the command.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

#: Kapur et al. Table 2 (test PPW, 1-layer LSTM on PTB; float baseline 108.7) and He et al. Table 1
KAPUR_TABLE2 = {(4, 4): {300: 115.2, 450: 108.8, 1000: 108.4}, (4, 2): {300: 116.7, 450: 111.7, 1000: 113.1},
                (2, 4): {300: 138.5, 450: 130.6, 1000: 128.4}, (2, 2): {300: 152.2, 450: 148.2, 1000: 148.0}}
KAPUR_BASELINE = 108.7
HE_TABLE1_LSTM = {(2, 2): 152, (2, 3): 142, (3, 3): 120, (4, 4): 114, (None, None): 109}


def model_bits(cfg) -> dict:
    """Storage of the LM in bits: LSTM weights at wbits, biases 32, embedding at abits, decoder at
    wbits if quantized else 32; and the FP32 sizes of the same tensors."""
    V, H, X = cfg.vocab, cfg.hidden, cfg.input
    wb = cfg.wbits or 32
    ab = cfg.abits or 32
    lstm = 4 * H * (X + H) * wb + 4 * H * 32
    emb = V * X * ab
    dec = V * H * (wb if cfg.quantize_output else 32) + V * 32
    fp32 = 32 * (4 * H * (X + H) + 4 * H + V * X + V * H + V)
    return {"lstm_layer_bits": lstm, "lstm_layer_fp32_bits": 32 * (4 * H * (X + H) + 4 * H),
            "model_bits": lstm + emb + dec, "model_fp32_bits": fp32}


def _entry_name(wbits, abits, hidden, cell=None) -> str:
    q = "float" if wbits is None and abits is None else f"W{wbits}A{abits}"
    return f"{q}@{hidden}" + (f"_{cell}" if cell else "")


def load_results(path) -> dict:
    p = Path(path)
    if not p.exists():
        return {"runs": {}}
    with open(p) as fh:
        d = json.load(fh)
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
    and, when quantized, integer model."""
    from .data import load_ptb
    from .export import IntegerLM, layer_from_model
    from .train import evaluate, load_lm_checkpoint

    ck = Path(run_dir) / "best.pt"
    if not ck.exists():
        ck = Path(run_dir) / "last.pt"
    model, vocab, meta = load_lm_checkpoint(ck)
    corpus = load_ptb(data_dir)
    if list(corpus.vocab) != list(vocab):
        raise ValueError(f"the vocabulary of {run_dir} does not match {data_dir}")
    out = {"best_epoch": meta.get("epoch"), "checkpoint": ck.name, "model": {}, "integer": None}
    for split in ("valid", "test"):
        out["model"][split] = evaluate(model, getattr(corpus, split), bsz)
    if model.cfg.wbits is not None and model.cfg.abits is not None:
        layer = layer_from_model(model, **(formats or {}))
        ilm = IntegerLM(model, layer)
        out["integer"] = {s: ilm.perplexity(getattr(corpus, s).numpy(), bsz) for s in ("valid", "test")}
        out["cell"] = layer.cfg.cell
        out["gap_percent"] = 100.0 * (out["integer"]["test"] - out["model"]["test"]) / out["model"]["test"]
    out["bits"] = model_bits(model.cfg)
    return out


def run_experiment(data, out, wbits=None, abits=None, hidden=300, epochs=40, name=None, results="results/ptb.json",
                   formats=None, command=None, **train_opts) -> dict:
    """Train (or resume) into `out`, evaluate, upsert results[name]; returns the entry."""
    from .data import resolve_data_dir
    from .train import train

    data_dir = resolve_data_dir(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "experiment.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"wall_s": 0.0, "invocations": 0}
    t0 = time.time()
    summary = train(data=str(data_dir), out=str(out), wbits=wbits, abits=abits, hidden=hidden, epochs=epochs,
                    **train_opts)
    state["wall_s"] += time.time() - t0
    state["invocations"] += 1
    state_path.write_text(json.dumps(state))
    ev = evaluate_run(out, data_dir, formats)
    name = name or _entry_name(wbits, abits, hidden, (formats or {}).get("cell"))
    epochs_done = summary["epochs_done"]
    entry = {
        "name": name, "wbits": wbits, "abits": abits, "hidden": hidden, "cell": ev.get("cell"),
        "recipe": {k: v for k, v in train_opts.items() if v is not None} | {"epochs": epochs},
        "epochs_done": epochs_done, "best_epoch": ev["best_epoch"], "evaluated": ev["checkpoint"],
        "finished": not summary["interrupted"],  # all epochs run, or stopped by min_lr
        "model_ppw": ev["model"], "integer_ppw": ev["integer"], "gap_percent": ev.get("gap_percent"),
        "bits": ev["bits"], "wall_s": round(state["wall_s"], 1), "run_dir": str(out),
        "command": command or " ".join(shlex.quote(a) for a in ["python", "-m", "sw_ref", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    d = load_results(results)
    d["runs"][name] = entry
    save_results(d, results)
    return entry


def _fmt(v):
    return "-" if v is None else f"{v:.1f}"


def results_table(d: dict) -> str:
    """Markdown table of results/ptb.json beside Kapur Table 2 and He Table 1."""
    lines = ["| run | W | A | hidden | cell | epochs | model valid | model test | integer valid | integer test "
             "| gap % | Kapur T2 | He T1 | LSTM bits (of FP32) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in sorted(d["runs"].items(), key=lambda kv: (kv[1]["wbits"] or 99, kv[1]["abits"] or 99,
                                                             kv[1]["hidden"])):
        key = (e["wbits"], e["abits"])
        kapur = KAPUR_BASELINE if e["wbits"] is None else KAPUR_TABLE2.get(key, {}).get(e["hidden"])
        he = HE_TABLE1_LSTM.get(key) if e["hidden"] == 300 else None
        ip = e.get("integer_ppw") or {}
        ep = f"{e['epochs_done']}" + ("" if e.get("finished") else f" of {e['recipe'].get('epochs')} (unfinished)")
        gap = "-" if e.get("gap_percent") is None else f"{e['gap_percent']:+.2f}"
        bits = e["bits"]
        lines.append(
            f"| {name} | {e['wbits'] or 32} | {e['abits'] or 32} | {e['hidden']} | {e.get('cell') or '-'} | {ep} "
            f"| {_fmt(e['model_ppw']['valid'])} | {_fmt(e['model_ppw']['test'])} | {_fmt(ip.get('valid'))} "
            f"| {_fmt(ip.get('test'))} | {gap} "
            f"| {_fmt(kapur)} | {_fmt(he)} | {bits['lstm_layer_bits']:,} ({100 * bits['lstm_layer_bits'] / bits['lstm_layer_fp32_bits']:.1f} %) |")
    lines.append("")
    lines.append("Kapur et al. Table 2 (test PPW): " + "; ".join(
        f"W{w}A{a}: " + ", ".join(f"{h}: {v}" for h, v in row.items()) for (w, a), row in KAPUR_TABLE2.items())
        + f"; float baseline {KAPUR_BASELINE}.")
    lines.append("He et al. Table 1 (LSTM, 300 units, balanced): " + ", ".join(
        f"W{w or 32}A{a or 32}: {v}" for (w, a), v in HE_TABLE1_LSTM.items()) + ".")
    lines.append("Every number above was measured by `python -m sw_ref experiment` (command in results/ptb.json); "
                 "unfinished runs are marked with the epochs they had.")
    return "\n".join(lines) + "\n"


def neuron_increase_search(evaluate_hidden, hidden_sizes, target_ppw, baseline_bits=None) -> dict:
    """Kapur et al.'s search for one layer: try hidden sizes in increasing order and return the
    smallest whose test PPW (integer model when available) reaches `target_ppw`, with the cost
    of the widening in model size. `evaluate_hidden(h) -> (ppw, bits dict)`.

    The PTB model has one LSTM layer, so the paper's layer-by-layer evaluation reduces to this
    single search; for a stack, call it per layer with the other layers fixed and widen the
    layer whose search needs the smallest increase in bits."""
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
