"""Shared by the command-line tools (rtl_gen, sim, boards, sw_ref): the one-line form of an
operating-system error (an output path that cannot be made or written, a file that cannot be read)."""
from __future__ import annotations

import errno
import os
from pathlib import Path


def os_error_line(exc: OSError) -> str:
    """``"<path>: <reason>"`` (e.g. ``/dev/null/x: Not a directory``); the reason alone when the
    error names no file; never more than one line."""
    reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    path = exc.filename
    if path is None:
        return reason
    return f"{path}: {reason}" + (f" (-> {exc.filename2})" if exc.filename2 else "")


def check_output_dir(path) -> None:
    """Raise OSError (naming the path in the way) unless ``path`` is, or can be created as, a
    writable directory. Creates nothing, so a tool can refuse before it spends time generating."""
    p = Path(path).absolute()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(probe))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "not writable", str(probe))
