"""python -m sim: exit status, one-line summary, waveform on request, one-line errors."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sim_cli(*args):
    return subprocess.run([sys.executable, "-m", "sim", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)


def test_headline_small_run_icarus_with_waves(tmp_path):
    r = sim_cli("--wbits", 2, "--abits", 2, "--hidden", 16, "--steps", 20, "--sim", "icarus", "--seed", 11, "--waves",
                "--work", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    line = [x for x in r.stdout.splitlines() if x.startswith("PASS")]
    assert len(line) == 1 and re.search(r"20 steps .* cycles/step \(predicted \d+\), .* simulated cycles/s, seed 11", line[0])
    wave = [x for x in r.stdout.splitlines() if x.startswith("waveform:")]
    assert wave and os.path.getsize(wave[0].split(":", 1)[1].strip()) > 1000


def test_flipped_weight_bit_is_caught(tmp_path):
    """Pass once, then flip one bit of the memory image the simulator reads and rerun the same plan."""
    import json

    from hwrnn import Folding, LayerConfig, QuantLayer
    from sim.regress import SIM_DIR, run_regression
    from sim.runner import SimulationFailed, run_cocotb

    cfg = LayerConfig(wbits=2, abits=2, hidden=4, input=3)
    layer = QuantLayer.random(cfg, seed=1)
    res = run_regression(layer, Folding(4, 3), tmp_path / "ok", sim="icarus", steps=4, seed=2, resets=False)
    assert res.compared_steps == 4
    hexfile = tmp_path / "ok" / "gen" / "weights.hex"
    words = hexfile.read_text().split()
    words[0] = format(int(words[0], 16) ^ 1, f"0{len(words[0])}x")
    hexfile.write_text("\n".join(words) + "\n")
    env = {"HWRNN_SIM_PLAN": str(tmp_path / "ok" / "plan.json"), "HWRNN_SIM_RESULT": str(tmp_path / "r.json"),
           "PYTHONPATH": os.pathsep.join([str(SIM_DIR), ROOT])}
    try:
        run_cocotb("icarus", [tmp_path / "ok" / "gen" / "hwrnn_lstm.v"], toplevel="hwrnn_lstm", test_module="tb_core",
                   test_dir=tmp_path / "ok" / "gen", build_dir=tmp_path / "b2", module_dir=SIM_DIR, extra_env=env)
        raise AssertionError("a flipped weight bit went unnoticed")
    except SimulationFailed as e:
        assert "differs" in str(e)
    assert json.loads((tmp_path / "r.json").read_text())["mismatches"]


def test_bad_options_one_line(tmp_path):
    for args in (["--wbits", 0, "--abits", 2, "--hidden", 4], ["--wbits", 2, "--abits", 2, "--hidden", 4, "--pe", 3],
                 ["--checkpoint", tmp_path / "missing.npz"], ["--wbits", 2, "--abits", 2, "--hidden", 4, "--steps", 0],
                 ["--wbits", 2, "--abits", 2, "--hidden", 4, "--seed", -1]):
        r = sim_cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
