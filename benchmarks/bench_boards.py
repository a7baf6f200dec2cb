"""Benchmark: the board bitstreams from one command each (ULX3S and iCEBreaker, YoWASP tools), the
Arty A7 Vivado build tree, and the board-level simulation (UART + framing + core, corrupted frames)
on Icarus. Records build times, resources, Fmax and timing. Writes results/boards.json.

    python benchmarks/bench_boards.py [--boards ulx3s,icebreaker] [--hidden 32] [--no-sim]

Build directories: build/boards/bench-<board> under the repository (the YoWASP tools cannot open
absolute /tmp paths; the builds use relative paths in their directory anyway).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def build(board, args):
    out = os.path.join("build", "boards", f"bench-{board}")
    cmd = [sys.executable, "-m", "boards", "build", "--board", board, "--wbits", str(args.wbits), "--abits",
           str(args.abits), "--hidden", str(args.hidden), "-o", out]
    shown = f"python -m boards build --board {board} --wbits {args.wbits} --abits {args.abits} --hidden {args.hidden}"
    print(f"$ {shown}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(r.stdout + r.stderr, flush=True)
    rep_path = os.path.join(ROOT, out, "report.json")
    res = {"command": shown, "exit": r.returncode, "wall_s": round(wall, 1)}
    if os.path.exists(rep_path):
        rep = json.load(open(rep_path))
        keep = ("device", "clock_hz", "folding", "latency_cycles", "step_us", "baud", "baud_divisor", "stages_s",
                "tools_s", "prepare_s", "utilization", "fmax", "timing_met", "bitstream", "bitstream_bytes", "toolchain",
                "note")
        res.update({k: rep[k] for k in keep if k in rep})
        fit = rep["fit"]
        res["fit_check"] = {k: fit.get(k) for k in ("fits", "use_percent", "logic_cells", "weight_bits_padded",
                                                    "memory_bits", "blocks_needed_estimate", "blocks_available",
                                                    "block_kind", "multipliers", "dsp_available")}
    return res


def board_sim(args):
    from boards.simulate import run_board_sim
    from hwrnn import Folding, LayerConfig, QuantLayer

    cfg = LayerConfig(wbits=2, abits=2, hidden=4, input=3)
    work = tempfile.mkdtemp(prefix="bench-board-sim-")
    t0 = time.perf_counter()
    try:
        r = run_board_sim(QuantLayer.random(cfg, seed=0), Folding(pe=4, simd=4), work, sim="icarus", divisor=4,
                          steps=10, seed=0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"command": "python -m boards sim --wbits 2 --abits 2 --hidden 4 --input 3 --pe 4 --simd 4 --sim icarus",
            "passed": r.passed == 2, "summary": r.line(), "generate_s": round(r.generate_s, 1),
            "build_s": round(r.build_s, 1), "run_s": round(r.run_s, 1), "wall_s": round(time.perf_counter() - t0, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--boards", default="ulx3s,icebreaker,arty_a7_35")
    p.add_argument("--wbits", type=int, default=2)
    p.add_argument("--abits", type=int, default=2)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--no-sim", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "boards.json"))
    args = p.parse_args()
    res = {"command": "python benchmarks/bench_boards.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()} {os.cpu_count()} cores (other jobs running)",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "builds": {}}
    for board in args.boards.split(","):
        res["builds"][board] = build(board, args)
    if not args.no_sim:
        res["board_sim"] = board_sim(args)
        print(res["board_sim"]["summary"], flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2)
        fh.write("\n")
    bad = [b for b, r in res["builds"].items() if r["exit"] != 0]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
