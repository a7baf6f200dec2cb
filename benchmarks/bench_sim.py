"""Benchmark: the full-size core (W4A2, H=450, default folding PE 28, SIMD 32, parallel planes)
simulated against the integer model: generate, build and run time recorded separately, cold (empty
compiler cache and build store) and warm (the same Verilog built before: the build comes from the
build store, sim.buildcache). Writes results/sim_fullsize.json.

    python benchmarks/bench_sim.py [--steps 35] [--sims verilator,icarus] [--icarus-steps 3]
                                   [--opt -O1] [--public ports] [--split-cfuncs 0] [--hier]

Cold runs point HWRNN_CACHE_DIR (ccache and the build store) at a fresh empty folder; warm runs
repeat the same Verilog in another work folder with that cache in place. Icarus simulates ~100
cycles/s at this size, so it runs fewer steps (--icarus-steps) and cold only (its build is ~2 s).
"""
import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hwrnn import Folding, LayerConfig, QuantLayer  # noqa: E402
from sim.regress import BuildOptions, run_regression  # noqa: E402


def one_run(layer, fold, sim, steps, build):
    work = tempfile.mkdtemp(prefix=f"bench-sim-{sim}-")
    try:
        t0 = time.perf_counter()
        r = run_regression(layer, fold, work, sim=sim, steps=steps, seed=1, stall_in=0.0, stall_out=0.0,
                           resets=False, build=build)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"passed": True, "steps": r.steps, "cycles": r.cycles, "cycles_per_step": r.cycles_per_step,
            "predicted": r.predicted, "generate_s": round(r.generate_s, 1), "build_s": round(r.build_s, 1),
            "build_from_store": r.build_stored, "run_s": round(r.run_s, 1),
            "simulated_cycles_per_s": round(r.sim_cycles_per_s, 1), "wall_s": round(wall, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--icarus-steps", type=int, default=3)
    p.add_argument("--sims", default="verilator,icarus")
    p.add_argument("--opt", default=BuildOptions.opt, help="OPT_FAST of the Verilator model (e.g. -O0, -O1, -Os)")
    p.add_argument("--public", default=BuildOptions.public, choices=("ports", "all"))
    p.add_argument("--split-cfuncs", type=int, default=BuildOptions.split_cfuncs)
    p.add_argument("--hier", action="store_true", help="shared lane modules as Verilator hierarchical blocks")
    p.add_argument("--no-warm", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "sim_fullsize.json"))
    args = p.parse_args()
    build = BuildOptions(public=args.public, opt=args.opt, split_cfuncs=args.split_cfuncs, hier=args.hier)
    cfg = LayerConfig(wbits=4, abits=2, hidden=450)
    fold = Folding.default_for(cfg)
    layer = QuantLayer.random(cfg, seed=0)
    cmd = " ".join(["python benchmarks/bench_sim.py", *sys.argv[1:]]).replace(args.out, os.path.relpath(args.out, ROOT))
    res = {"command": cmd, "config": "W4A2 H=450 X=450", "folding": fold.to_dict(),
           "steps": {"verilator": args.steps, "icarus": args.icarus_steps},
           "build_options": {"public": build.public, "opt_fast": build.opt, "split_cfuncs": build.split_cfuncs,
                             "hier": build.hier},
           "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "notes": "cold: empty ccache and build store (HWRNN_CACHE_DIR a fresh folder); warm: the same "
                    "Verilog again in a fresh work folder, the build taken from the build store. Icarus runs "
                    "fewer steps (about 100 simulated cycles/s at this size) and cold only.",
           "runs": {}}
    saved = os.environ.get("HWRNN_CACHE_DIR")
    cache = tempfile.mkdtemp(prefix="bench-sim-cache-")
    os.environ["HWRNN_CACHE_DIR"] = cache
    try:
        for sim in args.sims.split(","):
            steps = args.steps if sim == "verilator" else args.icarus_steps
            phases = ("cold",) if sim == "icarus" or args.no_warm else ("cold", "warm")
            res["runs"][sim] = {}
            for phase in phases:
                res["runs"][sim][phase] = one_run(layer, fold, sim, steps, build)
                print(sim, phase, res["runs"][sim][phase], flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if saved is None:
            os.environ.pop("HWRNN_CACHE_DIR", None)
        else:
            os.environ["HWRNN_CACHE_DIR"] = saved
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
