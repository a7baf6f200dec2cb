"""Benchmark: synthesis, place-and-route and Fmax with the YoWASP tools through the CLI.

    python benchmarks/bench_synth.py                       # small config, ECP5 + iCE40 + Xilinx
    python benchmarks/bench_synth.py --headline            # + W4A2 H=450 --weights stream on ECP5 (long)
    python benchmarks/bench_synth.py --families ecp5 --out results/synth_small.json

Runs `python -m rtl_gen <config> --synth FAMILY -o <dir>` per family (the slow iCE40 test of
tests/test_synth.py is covered here) and records wall times, counts, the analytic estimate,
Fmax, device and critical path in results/synth_small.json (results/synth_headline_stream.json).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hwrnn.devices import FAMILIES  # noqa: E402

SMALL = ["--wbits", "2", "--abits", "2", "--hidden", "8", "--pe", "4", "--simd", "4"]
HEADLINE = ["--wbits", "4", "--abits", "2", "--hidden", "450", "--weights", "stream"]


def run(config, family, work):
    cmd = [sys.executable, "-m", "rtl_gen", *config, "--synth", family, "-o", work]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return record(config, family, work, wall, r.returncode, r.stderr)


def record(config, family, work, wall=None, exit_code=0, stderr=""):
    """The figures of an output directory synthesized with --synth FAMILY."""
    entry = {"command": "python -m rtl_gen " + " ".join(config) + f" --synth {family} -o <dir>",
             "wall_s": round(wall, 1) if wall is not None else None, "exit": exit_code}
    try:
        man = json.load(open(os.path.join(work, "manifest.json")))
    except (OSError, ValueError):
        entry["error"] = stderr.strip()[-500:]
        return entry
    s = (man.get("synthesis") or {}).get(family)
    if not s:
        entry["error"] = (man.get("synthesis_errors") or {}).get(family) or stderr.strip()[-500:]
        return entry
    pnr = s.get("pnr") or {}
    entry.update({
        "synth_s": s["synth_seconds"], "rtlil_s": s["rtlil_seconds"], "counts": s["counts"],
        "analytic": man["resources"]["families"][family]["total"],
        "device": pnr.get("device"), "fmax_mhz": pnr.get("fmax_mhz"), "pnr_s": pnr.get("seconds"),
        "critical_path": pnr.get("critical_path"), "pnr_error": s.get("pnr_error"), "note": s.get("note"),
        "cycles_per_step": man["latency"]["cycles_per_step"],
        "us_per_step": (s.get("derived") or {}).get("us_per_step"),
        "consts": {"bias_bits": man["scale"]["bias_bits"], "mult_bits": man["scale"]["multiplier_bits"],
                   "shift": man["scale"]["shift"]},
    })
    if exit_code != 0:
        entry["stderr"] = stderr.strip()[-500:]
    return entry


def reestimate(path):
    """Recompute the "analytic" entries of a results file with the current rtl_gen.cost."""
    from hwrnn import Folding, LayerConfig
    from rtl_gen.cost import estimate

    with open(path) as fh:
        res = json.load(fh)
    opts = dict(zip(SMALL[::2], SMALL[1::2]))
    cfg = LayerConfig(wbits=int(opts["--wbits"]), abits=int(opts["--abits"]), hidden=int(opts["--hidden"]))
    fold = Folding(pe=int(opts["--pe"]), simd=int(opts["--simd"]))
    for fam, entry in res["families"].items():
        if "consts" in entry:
            entry["analytic"] = estimate(cfg, fold, fam, "memory", entry["consts"])["total"]
    res["analytic_reestimated"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with open(path, "w") as fh:
        json.dump(res, fh, indent=2)
    print(json.dumps({f: {"counts": e.get("counts"), "analytic": e.get("analytic")} for f, e in res["families"].items()},
                     indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--headline", action="store_true", help="also the headline config with streamed weights on ECP5")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "synth_small.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work directories (build/bench_synth)")
    ap.add_argument("--headline-dir", help="record the headline figures from this output directory (made by "
                    "python -m rtl_gen " + " ".join(HEADLINE) + " --synth ecp5 -o DIR) instead of running it")
    ap.add_argument("--reestimate", action="store_true",
                    help="only recompute the analytic estimates in --out with the current model (after a recalibration "
                         "of hwrnn/data/resource_coefficients.json), keeping the synthesis figures")
    args = ap.parse_args()
    if args.reestimate:
        reestimate(args.out)
        return
    base = os.path.join(ROOT, "build", "bench_synth")
    os.makedirs(base, exist_ok=True)
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores, python {platform.python_version()} "
                       "(other jobs running: wall times are upper bounds)",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.headline_dir:
        h = {"command": f"python benchmarks/bench_synth.py --headline-dir {args.headline_dir}", **meta,
             "config": " ".join(HEADLINE), "ecp5": record(HEADLINE, "ecp5", args.headline_dir)}
        path = os.path.join(os.path.dirname(args.out), "synth_headline_stream.json")
        with open(path, "w") as fh:
            json.dump(h, fh, indent=2)
        print(json.dumps(h, indent=1))
        return
    res = {"command": "python benchmarks/bench_synth.py", **meta, "config": " ".join(SMALL), "families": {}}
    for fam in [f for f in args.families.split(",") if f]:
        work = os.path.join(base, f"small_{fam}")
        shutil.rmtree(work, ignore_errors=True)
        res["families"][fam] = run(SMALL, fam, work)
        print(fam, json.dumps(res["families"][fam], indent=1), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2)
    if args.headline:
        work = os.path.join(base, "headline_stream_ecp5")
        shutil.rmtree(work, ignore_errors=True)
        h = {"command": "python benchmarks/bench_synth.py --headline", **meta, "config": " ".join(HEADLINE),
             "ecp5": run(HEADLINE, "ecp5", work)}
        with open(os.path.join(os.path.dirname(args.out), "synth_headline_stream.json"), "w") as fh:
            json.dump(h, fh, indent=2)
        print(json.dumps(h, indent=1))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
