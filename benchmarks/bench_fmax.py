"""Fmax of the pipelined core on ECP5 (speed 8): yosys synth_ecp5 from RTLIL + nextpnr-ecp5,
for a few configurations that fit an LFE5U-85F (target: rtl_gen.synth.TARGET_MHZ, SPEC 5).

    python benchmarks/bench_fmax.py [--only NAME ...] [--seeds N] [--families ecp5 ice40 xilinx]

Writes results/fmax.json (per config: the rtl_gen command, Fmax, critical path, resources,
tool wall time) and prints one line per config. nextpnr's placement is seeded and one seed's
Fmax moves by several per cent on the same netlist, so each ECP5 netlist is placed and routed
with seeds 1..N (default 3; seed 1 in the rtl_gen flow, the others by rtl_gen.synth.run_nextpnr
on the same synth.json): a config's ``fmax_mhz`` is the median over the seeds, every seed's
figure and critical path is kept under ``seeds``, and the target is judged on the median.
``--families``: also (or only) measure iCE40 (nextpnr-ice40, seed 1: UP5K, or HX8K without DSPs;
the core in rtl_gen.synth.PnrHarness) and Xilinx 7-series (yosys synth_xilinx counts only: no open
place-and-route, no Fmax), recorded per config under ``other_families`` and not held to the
target. A run keeps the figures of configs and families it does not measure. Configs whose
synthesis fails are recorded with the error; the script exits 1 if any ECP5 config misses the
target or fails.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hwrnn.devices import FAMILIES  # noqa: E402  (the families the synthesis flow knows)
from rtl_gen.synth import DEFAULT_TIMEOUT, TARGET_MHZ, SynthError, run_nextpnr  # noqa: E402

CONFIGS = {
    "W2A2_H8_PE4_S4_fixed": ["--wbits", "2", "--abits", "2", "--hidden", "8", "--pe", "4", "--simd", "4"],
    "W4A2_H32_PE8_S32_fixed": ["--wbits", "4", "--abits", "2", "--hidden", "32", "--pe", "8", "--simd", "32"],
    "W2A2_H8_PE4_S4_fp16": ["--wbits", "2", "--abits", "2", "--hidden", "8", "--pe", "4", "--simd", "4",
                            "--cell", "fp16"],
    "W8A8_H16_PE4_S16_serial": ["--wbits", "8", "--abits", "8", "--hidden", "16", "--pe", "4", "--simd", "16",
                                "--planes", "serial"],
}
PATH_KEYS = ("delay_ns", "logic_ns", "from", "to", "blocks")


def _path(pnr: dict) -> dict:
    return {k: (pnr.get("critical_path") or {}).get(k) for k in PATH_KEYS}


def _generate(name: str, args: list[str], family: str) -> tuple[dict, dict | None, str]:
    """Run ``python -m rtl_gen ... --synth family``; (entry, manifest or None, output directory)."""
    out = os.path.join("build", "bench_fmax", name if family == "ecp5" else f"{name}_{family}")
    cmd = [sys.executable, "-m", "rtl_gen", *args, "--synth", family, "-o", out]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    entry = {"command": "python -m rtl_gen " + " ".join(args) + f" --synth {family} -o {out}",
             "wall_s": round(time.time() - t0, 1), "exit": r.returncode}
    man_path = os.path.join(ROOT, out, "manifest.json")
    if r.returncode != 0 or not os.path.exists(man_path):
        entry["error"] = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return entry, None, out
    with open(man_path) as fh:
        return entry, json.load(fh), out


def summarize_seeds(seeds: list[dict]) -> dict:
    """The figures of a config over its placement seeds (each {seed, fmax_mhz, critical_path, ...}):
    median, min and max Fmax and the critical path of the seed at the median (the lower-middle
    seed for an even count, so the path shown belongs to a figure no better than the median)."""
    done = sorted((s for s in seeds if s.get("fmax_mhz") is not None), key=lambda s: s["fmax_mhz"])
    if not done:
        return {"fmax_mhz": None}
    mid = done[(len(done) - 1) // 2]
    return {"fmax_mhz": round(statistics.median(s["fmax_mhz"] for s in done), 2),
            "fmax_min_mhz": done[0]["fmax_mhz"], "fmax_max_mhz": done[-1]["fmax_mhz"],
            "critical_path": mid["critical_path"], "median_seed": mid["seed"]}


def run(name: str, args: list[str], n_seeds: int) -> dict:
    entry, man, out = _generate(name, args, "ecp5")
    if man is None:
        return entry
    syn = man["synthesis"]["ecp5"]
    pnr = syn.get("pnr") or {}
    entry.update({
        "latency_cycles": man["latency"]["cycles_per_step"],
        "pipeline_depth": man["latency"]["pipeline_depth"],
        "counts": syn["counts"],
        "device": pnr.get("device"),
        "synth_s": syn.get("synth_seconds"),
        "dsp_mapping": syn.get("dsp_mapping"),
    })
    if not pnr.get("fmax_mhz"):
        entry.update(fmax_mhz=None, error=pnr.get("note") or syn.get("pnr_error") or "no Fmax reported")
        return entry
    seeds = [{"seed": 1, "fmax_mhz": pnr["fmax_mhz"], "critical_path": _path(pnr), "pnr_s": pnr.get("seconds")}]
    work = os.path.join(ROOT, out, "synth_ecp5")
    for seed in range(2, n_seeds + 1):
        try:
            r = run_nextpnr("ecp5", pnr["device"], work, DEFAULT_TIMEOUT, seed=seed)
            seeds.append({"seed": seed, "fmax_mhz": r["fmax_mhz"], "critical_path": _path(r), "pnr_s": r["seconds"]})
        except SynthError as e:
            seeds.append({"seed": seed, "fmax_mhz": None, "error": str(e)})
    entry["seeds"] = seeds
    entry.update(summarize_seeds(seeds))
    return entry


def run_other(name: str, args: list[str], family: str) -> dict:
    """iCE40 / Xilinx figures of a config (seed 1, not held to the target)."""
    entry, man, _ = _generate(name, args, family)
    if man is None:
        return entry
    syn = man.get("synthesis", {}).get(family, {})
    pnr = syn.get("pnr") or {}
    entry.update({"counts": syn.get("counts"), "device": pnr.get("device"), "fmax_mhz": pnr.get("fmax_mhz"),
                  "critical_path": _path(pnr) if pnr else None,
                  "note": pnr.get("note") or syn.get("note") or syn.get("pnr_error"),
                  "dsp_mapping": syn.get("dsp_mapping")})
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run only these configs")
    p.add_argument("--seeds", type=int, default=3, help="nextpnr placement seeds per ECP5 netlist (default 3)")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=["ecp5"],
                   help="families to measure (default ecp5; ice40 and xilinx go under other_families)")
    p.add_argument("-o", "--output", default=os.path.join(ROOT, "results", "fmax.json"))
    a = p.parse_args(argv)
    if a.seeds < 1:
        p.error(f"--seeds must be >= 1, got {a.seeds}")
    names = a.only or list(CONFIGS)
    res, commands = {}, {}
    if os.path.exists(a.output):
        with open(a.output) as fh:
            prev = json.load(fh)
        res, commands = prev.get("configs", {}), prev.get("commands", {})
    ok = True
    for name in names:
        old = res.get(name, {})
        others = dict(old.get("other_families", {}))
        for fam in a.families:
            if fam != "ecp5":
                others[fam] = o = run_other(name, CONFIGS[name], fam)
                print(f"{name} [{fam}]: " + (f"Fmax {o['fmax_mhz']} MHz on {o['device']}" if o.get("fmax_mhz")
                                             else f"no Fmax ({o.get('note') or o.get('error')})")
                      + f", counts {o.get('counts')} [{o['wall_s']} s]", flush=True)
        if "ecp5" not in a.families:
            res[name] = {**old, "other_families": others}
            continue
        e = run(name, CONFIGS[name], a.seeds)
        if others:
            e["other_families"] = others
        res[name] = e
        f = e.get("fmax_mhz")
        met = f is not None and f >= TARGET_MHZ
        ok &= met
        print(f"{name}: " + (f"Fmax {f:.1f} MHz median of {len(e['seeds'])} seeds ({e['fmax_min_mhz']:.1f}-"
                             f"{e['fmax_max_mhz']:.1f}; {'met' if met else 'NOT met'}), {e['counts']['lut']} LUT4, "
                             f"{e['counts']['ff']} FF, latency {e['latency_cycles']} cycles"
                             if f is not None else f"error: {e.get('error')}") + f" [{e['wall_s']} s]", flush=True)
    command = ("python benchmarks/bench_fmax.py" + (" --only " + " ".join(a.only) if a.only else "")
               + (f" --seeds {a.seeds}" if a.seeds != 3 else "")
               + (" --families " + " ".join(a.families) if a.families != ["ecp5"] else ""))
    doc = {"command": command,
           "commands": {**commands, **{fam: command for fam in a.families}},  # the last run of each family
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()} {os.cpu_count()} cores, python {platform.python_version()} "
                      "(PTB training running alongside: wall times are upper bounds)",
           "target_mhz": TARGET_MHZ, "part": "ECP5 speed 8 (nextpnr-ecp5 --speed 8, out of context)",
           "fmax": "median over nextpnr placement seeds 1..N of the same netlist (per config: seeds, min, max)",
           "other_families": "iCE40 (nextpnr-ice40, core in a shift-chain harness) and Xilinx 7-series (synth_xilinx "
                             "counts only, no Fmax) per config under other_families: measured beside, not the target",
           "configs": res}
    os.makedirs(os.path.dirname(a.output), exist_ok=True)
    with open(a.output, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
