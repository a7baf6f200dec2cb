"""Benchmark: the full-size core (W4A2, H=450, default folding) simulated for a few time steps on
Verilator and Icarus against the integer model: build time, run time, simulated cycles per second.
Writes results/sim_fullsize.json.

    python benchmarks/bench_sim.py [--steps 3] [--sims verilator,icarus]
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
from sim.regress import run_regression  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sims", default="verilator,icarus")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "sim_fullsize.json"))
    args = p.parse_args()
    cfg = LayerConfig(wbits=4, abits=2, hidden=450)
    fold = Folding.default_for(cfg)
    layer = QuantLayer.random(cfg, seed=0)
    res = {"command": f"python benchmarks/bench_sim.py --steps {args.steps} --sims {args.sims}",
           "config": "W4A2 H=450 X=450", "folding": fold.to_dict(), "steps": args.steps,
           "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": {}}
    for sim in args.sims.split(","):
        work = tempfile.mkdtemp(prefix=f"bench-sim-{sim}-")
        try:
            t0 = time.perf_counter()
            r = run_regression(layer, fold, work, sim=sim, steps=args.steps, seed=1, stall_in=0.0, stall_out=0.0,
                               resets=False)
            wall = time.perf_counter() - t0
        finally:
            shutil.rmtree(work, ignore_errors=True)
        res["runs"][sim] = {"passed": True, "cycles": r.cycles, "cycles_per_step": r.cycles_per_step,
                            "predicted": r.predicted, "generate_s": round(r.generate_s, 1),
                            "build_s": round(r.build_s, 1), "run_s": round(r.run_s, 1),
                            "simulated_cycles_per_s": round(r.sim_cycles_per_s, 1), "wall_s": round(wall, 1)}
        print(sim, res["runs"][sim], flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
