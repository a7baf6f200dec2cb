"""Every command-line tool refuses an output path it cannot write with one line naming the path
(no traceback, nothing written): rtl_gen, sim, boards and sw_ref, and the shared helpers."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwrnn.cli import check_output_dir, os_error_line

ROOT = str(Path(__file__).resolve().parents[1])


def tool(*args):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)


@pytest.fixture
def blocked(tmp_path):
    """A path below a regular file: no directory can be made there."""
    f = tmp_path / "a_file"
    f.write_text("x")
    return f / "out"


def one_error_line(r, prefix):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), r.stderr
    return lines[0]


def test_rtl_gen_refuses_before_generating(blocked):
    r = tool("rtl_gen", "--wbits", 2, "--abits", 2, "--hidden", 8, "-o", blocked)
    line = one_error_line(r, "rtl_gen: error: cannot write -o ")
    assert f"{blocked.parent}: not a directory" in line
    assert "PE=" not in r.stdout  # refused before the core was built


def test_boards_sim_and_sw_ref_name_the_path(blocked, tmp_path):
    one_error_line(tool("boards", "build", "--board", "icebreaker", "--wbits", 2, "--abits", 2, "--hidden", 8,
                        "--no-tools", "-o", blocked), f"boards: error: {blocked}")
    one_error_line(tool("sim", "--wbits", 2, "--abits", 2, "--hidden", 4, "--steps", 1, "--work", blocked),
                   f"sim: error: {blocked}")
    one_error_line(tool("sw_ref", "table", "--results", tmp_path / "none.json", "-o", blocked / "t.md"),
                   f"sw_ref table: error: {blocked.parent}")
    assert blocked.parent.read_text() == "x"


def test_os_error_line_and_check_output_dir(tmp_path):
    assert os_error_line(FileNotFoundError(errno.ENOENT, "No such file or directory", "/a/b")) == \
        "/a/b: No such file or directory"
    assert os_error_line(OSError("disk on fire\nsecond line")) == "disk on fire"
    assert os_error_line(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == \
        "/a: Invalid cross-device link (-> /b)"
    check_output_dir(tmp_path / "new" / "deeper")  # can be made: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError) as ei:
        check_output_dir(tmp_path / "f" / "x")
    assert ei.value.filename == str(tmp_path / "f")
    with pytest.raises(NotADirectoryError):
        check_output_dir(tmp_path / "f")
