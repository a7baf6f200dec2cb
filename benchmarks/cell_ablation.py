"""Ablation of the cell-state format: integer-model PTB perplexity of one trained configuration and
the resources of one cell unit (yosys synth_ecp5 from RTLIL) per format.
Writes results/cell_ablation.json and results/cell_ablation.md.

    python benchmarks/cell_ablation.py --checkpoint RUN/best.pt --data ../shared/data/ptb \
        [--cells fixed:3.10,fp16,bf16,e4m3,e5m2] [--split test]
    python benchmarks/cell_ablation.py --units-only   # after an RTL change: the units again, the
                                                      # recorded perplexities kept (no checkpoint needed)
"""
import argparse
import json
import os
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hwrnn.config import LayerConfig  # noqa: E402
from rtl_gen.synth import ecp5_block_cells  # noqa: E402
from rtl_gen.units import cell_state_unit  # noqa: E402


def cell_unit_resources(cfg: LayerConfig) -> dict:
    """LUT4/FF/carry/DSP of one cell unit after synth_ecp5, built as LstmCore builds it for ECP5
    (pipelined, multipliers as MULT18X18D with their own registers: dsp="ecp5"), and its latency
    in cycles (c_new, then the sigmoid(c) address)."""
    unit = cell_state_unit(cfg, dsp="ecp5")
    latency = unit.c_latency + unit.addr_latency
    cells = ecp5_block_cells(unit, "cell", ROOT, timeout=900)
    return {"LUT4": cells.get("LUT4", 0), "CCU2C": cells.get("CCU2C", 0), "MULT18X18D": cells.get("MULT18X18D", 0),
            "FF": sum(v for k, v in cells.items() if k.startswith("TRELLIS_FF")),
            "cells": sum(cells.values()),
            "latency_cycles": latency}


def write_record(res: dict, out: str) -> str:
    """The record to ``out``.json and its table to ``out``.md (results/cell_ablation.*); returns the
    markdown text."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as fh:
        json.dump(res, fh, indent=2)
    lines = [f"# Cell-state format ablation ({res['model']}, {res['split']} split)", "",
             f"Command: `{res['command']}`  ",
             f"Trained model: {res['checkpoint']} (completed epochs: {res['trained_epochs']}"
             + (", a mid-epoch checkpoint" if os.path.basename(res['checkpoint']) == "last.pt" else "") + "); "
             f"training-model PPW {res['training_model_ppw']:.2f}.", ""]
    if res.get("units_command"):
        lines += [f"Cell units re-measured for the current RTL on {res['units_date']} by `{res['units_command']}` "
                  f"(perplexities from {res['date']}; the integer model does not change with the pipelining).", ""]
    lines += ["| cell | bits | integer-model PPW | LUT4 | CCU2C | FF | MULT18X18D | latency (cycles) |",
              "|---|---|---|---|---|---|---|---|"]
    for cell, e in res["formats"].items():
        u = e["unit_ecp5"]
        lines.append(f"| {cell} | {e['cell_bits']} | {e['integer_ppw']:.2f} | {u['LUT4']} | {u['CCU2C']} | {u['FF']} "
                     f"| {u['MULT18X18D']} | {u['latency_cycles']} |")
    lines += ["", "Resources: one cell unit as the core builds it for ECP5 (pipelined, MULT18X18D with their own "
              "operand and product registers, which the FF column does not count), yosys synth_ecp5; latency: "
              "c_new plus the sigmoid(c) address."]
    if res.get("note"):
        lines += ["", res["note"]]
    text = "\n".join(lines) + "\n"
    with open(out + ".md", "w") as fh:
        fh.write(text)
    return text


def units_only(out: str) -> dict:
    """The record of ``out``.json with every format's cell unit measured again (the model's bit widths
    and hidden size from the record), the recorded perplexities kept; write it with write_record."""
    import re

    with open(out + ".json") as fh:
        res = json.load(fh)
    mw = re.fullmatch(r"W(\d+)A(\d+) H=(\d+)", res["model"])
    if not mw:
        raise SystemExit(f"cell_ablation: cannot read the model's configuration from {res['model']!r} in {out}.json")
    wbits, abits, hidden = map(int, mw.groups())
    for cell, e in res["formats"].items():
        e["unit_ecp5"] = cell_unit_resources(LayerConfig(wbits=wbits, abits=abits, hidden=hidden, cell=cell))
        print(cell, e["unit_ecp5"], flush=True)
    res["units_command"] = "python benchmarks/cell_ablation.py --units-only"
    res["units_date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint")
    p.add_argument("--data", default=None)
    p.add_argument("--cells", default="fixed:3.10,fp16,bf16,e4m3,e5m2")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--out", default=os.path.join(ROOT, "results", "cell_ablation"))
    p.add_argument("--note", default="", help="how the checkpoint was trained (printed under the table)")
    p.add_argument("--units-only", action="store_true",
                   help="re-measure the cell units of the recorded formats, keep the recorded perplexities")
    args = p.parse_args()
    if args.units_only:
        print(write_record(units_only(args.out), args.out))
        return
    if not args.checkpoint:
        p.error("--checkpoint is required (or --units-only)")
    import torch

    from sw_ref.data import load_ptb, resolve_data_dir
    from sw_ref.export import IntegerLM, layer_from_model
    from sw_ref.train import evaluate, load_lm_checkpoint

    torch.set_num_threads(1)
    model, vocab, meta = load_lm_checkpoint(args.checkpoint)
    corpus = load_ptb(resolve_data_dir(args.data))
    data = getattr(corpus, args.split)
    res = {"command": "python benchmarks/cell_ablation.py " + shlex.join(sys.argv[1:]),
           "checkpoint": args.checkpoint, "model": f"W{model.cfg.wbits}A{model.cfg.abits} H={model.cfg.hidden}",
           "trained_epochs": meta.get("epoch"), "split": args.split, "note": args.note,
           "training_model_ppw": evaluate(model, data), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "formats": {}}
    for cell in args.cells.split(","):
        layer = layer_from_model(model, cell=cell)
        t0 = time.perf_counter()
        ppw = IntegerLM(model, layer).perplexity(data.numpy())
        entry = {"integer_ppw": ppw, "eval_s": round(time.perf_counter() - t0, 1), "cell_bits": layer.cfg.cell_format.width,
                 "unit_ecp5": cell_unit_resources(layer.cfg)}
        res["formats"][cell] = entry
        print(cell, entry, flush=True)
    print(write_record(res, args.out))


if __name__ == "__main__":
    main()
