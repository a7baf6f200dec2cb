"""Fmax of the pipelined core on ECP5 (speed 8): yosys synth_ecp5 from RTLIL + nextpnr-ecp5,
for a few configurations that fit an LFE5U-85F (target: rtl_gen.synth.TARGET_MHZ).

    python benchmarks/bench_fmax.py [--only NAME ...]

Writes results/fmax.json (per config: the rtl_gen command, Fmax, critical path, resources,
tool wall time) and prints one line per config. Configs whose synthesis fails are recorded
with the error; the script exits 1 if any config misses the target or fails.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rtl_gen.synth import TARGET_MHZ  # noqa: E402  (the Fmax target of the synthesis flow)

CONFIGS = {
    "W2A2_H8_PE4_S4_fixed": ["--wbits", "2", "--abits", "2", "--hidden", "8", "--pe", "4", "--simd", "4"],
    "W4A2_H32_PE8_S32_fixed": ["--wbits", "4", "--abits", "2", "--hidden", "32", "--pe", "8", "--simd", "32"],
    "W2A2_H8_PE4_S4_fp16": ["--wbits", "2", "--abits", "2", "--hidden", "8", "--pe", "4", "--simd", "4",
                            "--cell", "fp16"],
    "W8A8_H16_PE4_S16_serial": ["--wbits", "8", "--abits", "8", "--hidden", "16", "--pe", "4", "--simd", "16",
                                "--planes", "serial"],
}


def run(name: str, args: list[str]) -> dict:
    out = os.path.join("build", "bench_fmax", name)
    cmd = [sys.executable, "-m", "rtl_gen", *args, "--synth", "ecp5", "-o", out]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    entry = {"command": "python -m rtl_gen " + " ".join(args) + f" --synth ecp5 -o {out}",
             "wall_s": round(wall, 1), "exit": r.returncode}
    man_path = os.path.join(ROOT, out, "manifest.json")
    if r.returncode != 0 or not os.path.exists(man_path):
        entry["error"] = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return entry
    man = json.load(open(man_path))
    syn = man["synthesis"]["ecp5"]
    pnr = syn.get("pnr", {})
    entry.update({
        "latency_cycles": man["latency"]["cycles_per_step"],
        "pipeline_depth": man["latency"]["pipeline_depth"],
        "counts": syn["counts"],
        "device": pnr.get("device"),
        "fmax_mhz": pnr.get("fmax_mhz"),
        "critical_path": {k: (pnr.get("critical_path") or {}).get(k)
                          for k in ("delay_ns", "logic_ns", "from", "to", "blocks")},
        "synth_s": syn.get("synth_seconds"), "pnr_s": pnr.get("seconds"),
        "dsp_mapping": syn.get("dsp_mapping"),
    })
    if entry["fmax_mhz"] is None:
        entry["error"] = pnr.get("note") or "no Fmax reported"
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run only these configs")
    p.add_argument("-o", "--output", default=os.path.join(ROOT, "results", "fmax.json"))
    a = p.parse_args(argv)
    names = a.only or list(CONFIGS)
    res = {}
    if os.path.exists(a.output):
        res = json.load(open(a.output)).get("configs", {})
    ok = True
    for name in names:
        e = run(name, CONFIGS[name])
        res[name] = e
        f = e.get("fmax_mhz")
        met = f is not None and f >= TARGET_MHZ
        ok &= met
        print(f"{name}: " + (f"Fmax {f:.1f} MHz ({'met' if met else 'NOT met'}), "
                             f"{e['counts']['lut']} LUT4, {e['counts']['ff']} FF, latency {e['latency_cycles']} cycles"
                             if f is not None else f"error: {e.get('error')}") + f" [{e['wall_s']} s]", flush=True)
    doc = {"command": "python benchmarks/bench_fmax.py" + (" --only " + " ".join(a.only) if a.only else ""),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()} {os.cpu_count()} cores, python {platform.python_version()} "
                      "(PTB training running alongside: wall times are upper bounds)",
           "target_mhz": TARGET_MHZ, "part": "ECP5 speed 8 (nextpnr-ecp5 --speed 8, out of context)",
           "configs": res}
    os.makedirs(os.path.dirname(a.output), exist_ok=True)
    with open(a.output, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
