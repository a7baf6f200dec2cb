"""Issue 18 (rtl_gen, hwrnn, sw_ref parts): what a hostile user broke, each with a test that failed
before its fix.

* rtl_gen's output set is atomic: -o holds one complete earlier set or one complete new set after any
  failure or SIGTERM/SIGINT, the manifest names every file with its sha256, stale files of the
  previous set go, temp folders are made inside -o and never left behind;
* weight scales the formats cannot hold are refused; the integer model never wraps int64;
* --name must not collide with the emitted modules or be a keyword;
* ``rtl_gen report`` checks the manifest against the files it describes and its config;
* ``sw_ref table`` refuses a missing or empty results file and names the file it read;
* rtl_gen refuses a layer that cannot be generated in this machine's memory, and Ctrl-C is one line.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hwrnn import Folding, LayerConfig, QuantLayer
from hwrnn import formats as fm
from hwrnn.checkpoint import CheckpointError
from hwrnn.integer_model import IntegerLSTM

ROOT = str(Path(__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": ROOT}
SMALL = ["--wbits", 2, "--abits", 2, "--hidden", 6, "--input", 4, "--pe", 4, "--simd", 4]


def tool(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=timeout)


def one_error_line(r, prefix):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), r.stderr
    return lines[0]


def small_files(seed=1, name="hwrnn_lstm"):
    from rtl_gen.emit import generate

    cfg = LayerConfig(wbits=2, abits=2, hidden=6, input=4)
    return generate(QuantLayer.random(cfg, seed=seed), Folding(pe=4, simd=4), name, f"random (seed {seed})")


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---- 3. the output set is atomic --------------------------------------------------------------------

def test_manifest_names_every_file_with_its_hash(tmp_path):
    from rtl_gen.emit import write_output

    out = tmp_path / "o"
    write_output(small_files(), str(out))
    man = json.loads((out / "manifest.json").read_text())
    files = man["files"]
    assert sorted(files) == sorted(set(os.listdir(out)) - {"manifest.json"})
    for name, digest in files.items():
        assert digest == "sha256:" + sha256((out / name).read_bytes())


def test_failure_between_renames_leaves_the_earlier_set(tmp_path, monkeypatch):
    from rtl_gen import emit

    out = tmp_path / "o"
    emit.write_output(small_files(seed=1), str(out))
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst, *a, **k):
        calls.append((str(src), str(dst)))
        if len([c for c in calls if str(out) in c[1] and not os.path.basename(c[1]).startswith(".")]) == 2:
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(emit.os, "replace", failing_replace)
    with pytest.raises(OSError):
        emit.write_output(small_files(seed=2, name="other"), str(out))
    monkeypatch.setattr(emit.os, "replace", real_replace)
    assert snapshot(out) == before  # the complete earlier set, nothing of the new one, no temp folder
    assert sorted(os.listdir(tmp_path)) == ["o"]


def test_temp_folder_inside_out_and_stale_files_of_the_previous_set_removed(tmp_path, monkeypatch):
    """Renames never cross -o (a mount point, or -o writable under a read-only parent, works); the
    <oldname>.v of an earlier --name goes, a user's other files stay."""
    from rtl_gen import emit

    out = tmp_path / "o"
    emit.write_output(small_files(name="old_core"), str(out))
    (out / "notes.txt").write_text("mine")
    real_replace = os.replace
    renames = []

    def spy(src, dst, *a, **k):
        renames.append((os.path.abspath(src), os.path.abspath(dst)))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(emit.os, "replace", spy)
    monkeypatch.setattr(emit.os, "rename", spy)
    new = small_files(seed=2, name="new_core")
    emit.write_output(new, str(out))
    assert renames and all(s.startswith(str(out) + os.sep) and d.startswith(str(out) + os.sep) for s, d in renames)
    assert sorted(os.listdir(out)) == sorted([*new, "notes.txt"])
    assert sorted(os.listdir(tmp_path)) == ["o"]


def test_stale_temp_folders_are_cleaned_on_the_next_run(tmp_path):
    from rtl_gen.emit import TEMP_PREFIX, write_output

    out = tmp_path / "o"
    out.mkdir()
    dead = out / f"{TEMP_PREFIX}999999999"
    dead.mkdir()
    (dead / "hwrnn_lstm.v").write_text("half")
    write_output(small_files(), str(out))
    assert not dead.exists()


SIGNAL_SCRIPT = textwrap.dedent("""\
    import os, sys, time
    from hwrnn import Folding, LayerConfig, QuantLayer
    from rtl_gen import emit

    out, phase = sys.argv[1], sys.argv[2]
    cfg = LayerConfig(wbits=2, abits=2, hidden=6, input=4)
    files = emit.generate(QuantLayer.random(cfg, seed=2), Folding(pe=4, simd=4), "new_core", "random (seed 2)")
    real_replace, real_open = os.replace, open

    def stall():
        print("READY", flush=True)
        time.sleep(20)

    if phase == "write":  # stall while the new set is being written into the temp folder
        def slow_fsync(fd):
            stall()
        emit.os.fsync = slow_fsync
    else:  # stall after the first file of the new set was moved into place
        def slow_replace(src, dst, *a, **k):
            real_replace(src, dst, *a, **k)
            if os.path.basename(dst) != "manifest.json" and not os.path.basename(dst).startswith("."):
                emit.os.replace = real_replace
                stall()
        emit.os.replace = slow_replace
    try:
        emit.write_output(files, out)
    except emit.Interrupted as e:
        sys.exit(128 + e.signum)
    sys.exit(0)
""")


@pytest.mark.parametrize("phase", ["write", "swap"])
def test_sigterm_leaves_one_complete_set_and_no_temp_folder(tmp_path, phase):
    from rtl_gen import emit

    out = tmp_path / "o"
    emit.write_output(small_files(seed=1), str(out))
    before = snapshot(out)
    script = tmp_path / "killme.py"
    script.write_text(SIGNAL_SCRIPT)
    p = subprocess.Popen([sys.executable, str(script), str(out), phase], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT, env=ENV)
    assert p.stdout.readline().strip() == "READY", p.stderr.read()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert sorted(os.listdir(tmp_path)) == ["killme.py", "o"]  # nothing left in the parent
    after = snapshot(out)
    if phase == "write":
        assert after == before
    else:  # the swap completes before the signal is acted on: the complete new set
        assert sorted(after) == ["manifest.json", "new_core.v", "report.txt", "weights.hex"]
        man = json.loads(after["manifest.json"])
        assert man["name"] == "new_core"
        assert all(d == "sha256:" + sha256(after[n]) for n, d in man["files"].items())


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_rtl_gen_interrupted_is_one_line_and_writes_nothing(tmp_path, sig, code):
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "rtl_gen", "--wbits", "2", "--abits", "2", "--hidden", "64",
                          "--pe", "4", "--simd", "4", "-o", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    assert p.stdout.readline().startswith("rtl_gen: PE=4")  # printed before the core is built
    time.sleep(0.5)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtl_gen: interrupted"), err
    assert not out.exists() or not os.listdir(out)
    assert sorted(os.listdir(tmp_path)) in ([], ["o"])


# ---- 4. the weight scale has bounds -----------------------------------------------------------------

def test_scale_beyond_the_multiplier_is_refused():
    cfg = LayerConfig(wbits=2, abits=2, hidden=6, input=4)
    good = QuantLayer.random(cfg, seed=1)
    assert fm.unsigned_width(good.mult) <= cfg.mult_bits
    for scale in (1e18, 1e6):
        with pytest.raises(CheckpointError, match="mult_bits"):
            QuantLayer(cfg, good.codes, scale, good.bias)
    # the largest scale that still fits mult_bits is accepted, with R >= 1
    S_max = (2 ** cfg.mult_bits - 1) / 2 * (2 * 3 * 3) / 2 ** cfg.z_frac
    M, R = fm.scale_shift(cfg, S_max)
    assert R >= 1 and M < 2 ** cfg.mult_bits


def test_products_beyond_int64_are_refused():
    """acc * M + B must fit the int64 datapath: W8A8 with a 32-bit multiplier and 40000 columns
    would need about 65 bits."""
    cfg = LayerConfig(wbits=8, abits=8, hidden=20000, mult_bits=32)
    with pytest.raises(ValueError, match="64-bit"):
        fm.scale_shift(cfg, 0.5)
    fm.scale_shift(LayerConfig(wbits=8, abits=8, hidden=2000, mult_bits=32), 0.5)  # 61 bits: fine


def test_rtl_gen_refuses_a_huge_scale_before_writing(tmp_path):
    cfg = LayerConfig(wbits=2, abits=2, hidden=6, input=4)
    good = QuantLayer.random(cfg, seed=1)
    ck = tmp_path / "big.npz"
    np.savez(ck, format=np.array("hwrnn-layer"), version=np.array(1, dtype=np.int64), config=np.array(cfg.to_json()),
             codes=good.codes.astype(np.uint8), scale=np.array(1e18), bias=good.bias)
    r = tool("rtl_gen", "--checkpoint", ck, "--pe", 4, "--simd", 4, "-o", tmp_path / "o")
    assert "mult_bits" in one_error_line(r, "rtl_gen: error: ")
    assert not (tmp_path / "o").exists()


def test_integer_model_never_wraps():
    cfg = LayerConfig(wbits=2, abits=2, hidden=6, input=4)
    layer = QuantLayer.random(cfg, seed=1)
    layer._consts = (2 ** 61, layer.shift, layer.bias_int)  # bypasses the checkpoint's validation
    with pytest.raises(ValueError, match="int64"):
        m = IntegerLSTM(layer)
        m.step(np.full((1, 4), 3), m.initial_state(1))


# ---- 5. --name ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hwrnn_wmem", "module", "always", "caf\u00e9", "a$b"])
def test_name_colliding_with_emitted_modules_or_keywords_is_refused(tmp_path, name):
    r = tool("rtl_gen", *SMALL, "--name", name, "-o", tmp_path / "o")
    assert "--name" in one_error_line(r, "rtl_gen: error: ")
    assert not (tmp_path / "o").exists()


def test_generate_refuses_a_colliding_name():
    from hwrnn.config import ConfigError

    with pytest.raises(ConfigError, match="hwrnn_wmem"):
        small_files(name="hwrnn_wmem")


# ---- 6. rtl_gen report checks the manifest -----------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "out"
    r = tool("rtl_gen", *SMALL, "--seed", 3, "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def edit_manifest(d, fn):
    p = d / "manifest.json"
    man = json.loads(p.read_text())
    fn(man)
    p.write_text(json.dumps(man, indent=2))


def _set(path, value):
    def f(man):
        d = man
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return f


def _del(path):
    def f(man):
        d = man
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return f


@pytest.mark.parametrize("edit,msg", [
    (_del(["latency"]), "latency"),
    (_set(["latency"], "fast"), "latency"),
    (_set(["latency", "steps"], "many"), "steps"),
    (_set(["config", "hidden"], 7), "latency"),
    (_set(["config", "hidden"], "7"), "hidden"),
    (_set(["folding"], [4, 4]), "folding"),
    (_set(["latency", "cycles_per_step"], 3), "latency"),
    (_set(["devices"], {}), "devices"),
    (_del(["files"]), "files"),
    (_set(["files", "weights.hex"], "sha256:00"), "weights.hex"),
    (_set(["files", "../x"], "sha256:00"), "../x"),
    (_set(["name"], "other"), "other.v"),
    (lambda man: man.clear(), "manifest"),
])
def test_report_refuses_a_hand_edited_manifest(tmp_path, generated, edit, msg):
    d = tmp_path / "o"
    shutil.copytree(generated, d)
    edit_manifest(d, edit)
    report = (d / "report.txt").read_bytes()
    r = tool("rtl_gen", "report", d)
    assert msg in one_error_line(r, "rtl_gen: error: ")
    assert (d / "report.txt").read_bytes() == report


@pytest.mark.parametrize("fname", ["weights.hex", "hwrnn_lstm.v"])
def test_report_refuses_files_that_differ_from_the_manifest(tmp_path, generated, fname):
    d = tmp_path / "o"
    shutil.copytree(generated, d)
    (d / fname).write_text((d / fname).read_text() + "\n")
    assert fname in one_error_line(tool("rtl_gen", "report", d), "rtl_gen: error: ")
    (d / fname).unlink()
    assert fname in one_error_line(tool("rtl_gen", "report", d), "rtl_gen: error: ")


def test_report_of_an_unedited_directory_is_unchanged(tmp_path, generated):
    d = tmp_path / "o"
    shutil.copytree(generated, d)
    r = tool("rtl_gen", "report", d)
    assert r.returncode == 0, r.stderr
    assert snapshot(d) == snapshot(generated)
    (d / "report.txt").write_text("edited")  # the file this command writes: made anew
    assert tool("rtl_gen", "report", d).returncode == 0
    assert snapshot(d) == snapshot(generated)


def test_verify_output_is_the_readers_check(tmp_path, generated):
    """What sim and boards call on a directory they read (rtl_gen.report.verify_output)."""
    from rtl_gen.report import ReportError, verify_output

    d = tmp_path / "o"
    shutil.copytree(generated, d)
    assert verify_output(str(d))["name"] == "hwrnn_lstm"
    (d / "report.txt").write_text("edited")
    with pytest.raises(ReportError, match="report.txt"):
        verify_output(str(d))
    shutil.copy(generated / "report.txt", d / "report.txt")
    (d / "weights.hex").write_text("0\n")
    with pytest.raises(ReportError, match="weights.hex"):
        verify_output(str(d))


# ---- 7. sw_ref table ----------------------------------------------------------------------------------

def test_table_refuses_missing_or_empty_results(tmp_path):
    out = tmp_path / "t.md"
    line = one_error_line(tool("sw_ref", "table", "--results", tmp_path / "missing.json", "-o", out),
                          "sw_ref table: error: ")
    assert "missing.json" in line and not out.exists()
    empty = tmp_path / "empty.json"
    empty.write_text('{"runs": {}}')
    line = one_error_line(tool("sw_ref", "table", "--results", empty, "-o", out), "sw_ref table: error: ")
    assert "empty.json" in line and not out.exists()


def test_table_header_names_the_results_file(tmp_path):
    res = tmp_path / "mine.json"
    shutil.copy(Path(ROOT) / "results" / "ptb.json", res)
    out = tmp_path / "t.md"
    r = tool("sw_ref", "table", "--results", res, "-o", out)
    assert r.returncode == 0, r.stderr
    head = out.read_text().splitlines()[0]
    assert str(res) in head and "results/ptb.json" not in head


# ---- 8. memory and interrupts ----------------------------------------------------------------------

def test_a_layer_too_large_for_this_machine_is_refused_up_front(tmp_path):
    t0 = time.perf_counter()
    r = tool("rtl_gen", "--wbits", 2, "--abits", 2, "--hidden", 65536, "-o", tmp_path / "o", timeout=120)
    line = one_error_line(r, "rtl_gen: error: ")
    assert "memory" in line and "GiB" in line
    assert time.perf_counter() - t0 < 60 and not (tmp_path / "o").exists()


def test_memory_estimate_against_available(monkeypatch):
    from rtl_gen import __main__ as cli
    from hwrnn.config import ConfigError

    cfg = LayerConfig(wbits=4, abits=2, hidden=450)
    need = cli.generator_memory(cfg, Folding.default_for(cfg))
    assert 100 * 2 ** 20 < need < 4 * 2 ** 30  # the headline generates in well under 4 GiB
    big = LayerConfig(wbits=8, abits=2, hidden=4096)
    assert cli.generator_memory(big, Folding.default_for(big)) > 4 * need
    monkeypatch.setattr(cli, "available_memory", lambda: need // 2)
    with pytest.raises(ConfigError, match="GiB"):
        cli.check_memory(cfg, Folding.default_for(cfg))
    monkeypatch.setattr(cli, "available_memory", lambda: need * 2)
    cli.check_memory(cfg, Folding.default_for(cfg))


def test_a_datapath_too_wide_for_the_verilog_back_end_is_refused(tmp_path):
    """W8 PE 64 SIMD 128: a 65536-bit weight word; Amaranth numbers at most 65535 input bits (it
    failed an assert inside amaranth.back.verilog)."""
    r = tool("rtl_gen", "--wbits", 8, "--abits", 2, "--hidden", 64, "--pe", 64, "--simd", 128, "-o", tmp_path / "o")
    assert "--pe or --simd" in one_error_line(r, "rtl_gen: error: ")
    assert not (tmp_path / "o").exists()


def test_manifest_notes_cell_saturation_and_the_cli_warns_for_trained_layers(tmp_path):
    """Issue 18: the manifest's notes state how often the cell state saturates over a calibration
    run, and rtl_gen warns on stderr when a trained (non-random) layer saturates on many values."""
    import json as _json
    import subprocess
    import sys as _sys

    from hwrnn import LayerConfig, saturation
    from hwrnn.checkpoint import QuantLayer

    cfg = LayerConfig(wbits=2, abits=2, hidden=6, cell="fixed:1.5")  # c in [-2, 2)
    rnd = QuantLayer.random(cfg, seed=1)
    bias = rnd.bias.copy()
    bias[:3 * cfg.hidden] = 6.0  # i, f, g near 1: c grows by about 1 a step and sits at the top
    layer = QuantLayer(cfg, rnd.codes, rnd.scale, bias)
    ck = tmp_path / "layer.npz"
    layer.save(ck)
    out = tmp_path / "out"
    r = subprocess.run([_sys.executable, "-m", "rtl_gen", "--checkpoint", str(ck), "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    man = _json.loads((out / "manifest.json").read_text())
    sat = man["cell_saturation"]
    want = saturation.measure(layer, saturation.calibration_codes(cfg, steps=35))
    assert sat["fraction"] == want.fraction and sat["note"] == saturation.note(want)
    assert sat["note"] in (out / "report.txt").read_text()
    assert want.fraction > saturation.WARN_FRACTION and "saturates on" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
