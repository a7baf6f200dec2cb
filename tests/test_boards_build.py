"""Bitstreams from one command each (YoWASP yosys + nextpnr): ULX3S and iCEBreaker. Several minutes
each on this 2-core machine, so slow suite (benchmarks/bench_boards.py runs them too and records
the figures in results/boards.json)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("board,ext", [("ulx3s", "bit"), ("icebreaker", "bin")])
def test_bitstream_from_one_command(board, ext):
    # inside the repository, not /tmp: the YoWASP tools cannot open absolute /tmp paths
    out = ROOT / "build" / "boards" / f"test-{board}"
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([sys.executable, "-m", "boards", "build", "--board", board, "--wbits", "2", "--abits", "2",
                        "--hidden", "32", "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((out / "report.json").read_text())
    bit = out / f"hwrnn_board.{ext}"
    assert bit.is_file() and bit.stat().st_size == rep["bitstream_bytes"] > 10_000
    assert rep["timing_met"] is True
    assert all(v["achieved_mhz"] >= v["constraint_mhz"] for v in rep["fmax"].values())
    # the Fmax rtl_gen's synthesis flow would read from the same nextpnr report (hwrnn.toolreports)
    from hwrnn.toolreports import read_nextpnr
    pnr = read_nextpnr(json.loads((out / "hwrnn_board_nextpnr.json").read_text()))
    assert rep["fmax"] == pnr["clocks"] and rep["timing_met"] == pnr["timing_met"]
    assert rep["fit"]["fits"] is True
    util = rep["utilization"]
    assert any(k in util for k in ("TRELLIS_COMB", "ICESTORM_LC"))
    assert "Fmax" in (out / "report.txt").read_text()
