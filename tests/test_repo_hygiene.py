"""No committed file names a path of the machine that made it, and the writers of records (the PTB
experiment entries, the shipped layer's provenance) write paths relative to the repository."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: an absolute path into a machine's own directories: a workspace, a home directory, a temporary
#: directory (not /dev/null, /usr/bin/..., /proc/...: those name the system, not one machine's files)
MACHINE_PATH = re.compile(r"(?<![\w.~$-])/(?:" + "|".join([
    "wo" + r"rk/",                    # this project's machines keep their checkouts and runs here
    "ro" + r"ot/",                    # root's home
    "ho" + r"me/[\w.-]+",             # /home/<user>
    "Us" + r"ers/[\w.-]+",            # macOS home directories
    "tm" + r"p/[\w.-]+",              # /tmp/<something>: a temporary file recorded as data
    "var/folders/",                   # macOS temporary directories
]) + ")")

#: (path, reason): files that may name such a path. Keep this empty unless a path must stay.
ALLOWED: dict[str, str] = {}


def _tracked_text_files() -> list[str]:
    """Files git tracks, plus the untracked ones it would add (not ignored), that exist and are text."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    files = []
    for rel in sorted(set(filter(None, out.split("\0")))):
        p = ROOT / rel
        if not p.is_file():
            continue  # deleted in the working tree
        head = p.read_bytes()[:8192]
        if b"\0" in head:
            continue  # binary (npz, png)
        files.append(rel)
    return files


def machine_paths(text: str) -> list[tuple[int, str]]:
    """(line number, matched path) of every machine path in `text`."""
    return [(n, m.group(0)) for n, line in enumerate(text.splitlines(), 1) for m in MACHINE_PATH.finditer(line)]


def test_pattern_catches_machine_paths_and_spares_the_rest():
    bad = ["--out /" + "work/runs/W4A2_h450", '"run_dir": "/' + 'work/main/runs/x"', "see /" + "root/notes.md",
           "/" + "home/alice/ptb", "--work /" + "tmp/pytest-of-x/run", "=/" + "Users/bob/x"]
    good = ["runs/W4A2_h450", "../shared/data/ptb", "$HWRNN_PTB", "/dev/null", "/usr/bin/env bash",
            "/proc/self/autogroup", "sim/work/x", "~/.cache/hwrnn", "a network/work/ b", "http://x.org/tmp"]
    assert all(machine_paths(s) for s in bad), [s for s in bad if not machine_paths(s)]
    assert not any(machine_paths(s) for s in good), [s for s in good if machine_paths(s)]


def test_no_committed_file_names_a_machine_path():
    files = _tracked_text_files()
    assert "README.md" in files and "results/ptb.json" in files
    hits = []
    for rel in files:
        if rel in ALLOWED:
            continue
        text = (ROOT / rel).read_text(errors="replace")
        hits += [f"{rel}:{n}: {path}" for n, path in machine_paths(text)]
    assert not hits, ("absolute paths of a machine in committed files (record them relative to the repository):\n"
                      + "\n".join(hits))


def _absolute_strings(obj, where=""):
    """Every string inside a JSON value that is an absolute path or holds one as a word."""
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _absolute_strings(v, f"{where}.{k}")]
    if isinstance(obj, list):
        return [x for i, v in enumerate(obj) for x in _absolute_strings(v, f"{where}[{i}]")]
    if isinstance(obj, str) and any(os.path.isabs(w.partition("=")[2] or w) for w in obj.split()):
        return [f"{where}: {obj}"]
    return []


def test_record_writers_write_relative_paths(tiny_corpus, tmp_path, monkeypatch):
    """sw_ref experiment (run_dir, command, the recipe's init_from) and sw_ref ship (the provenance
    JSON next to the shipped layer), given absolute paths, record them relative to the working
    directory (the repository root for the documented commands)."""
    from sw_ref.__main__ import main as sw_main
    from sw_ref.experiment import load_results, run_experiment

    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    quick = ["--threads", "1", "--max-train-tokens", "3000"]
    res = repo / "results" / "ptb.json"
    # a float run, then a quantized fine-tuning from it, both through the CLI with absolute paths
    assert sw_main(["experiment", "--data", str(tiny_corpus), "--out", str(repo / "runs" / "f8"), "--hidden", "8",
                    "--epochs", "1", "--results", str(res), *quick]) == 0
    init = repo / "runs" / "f8" / "best.pt"
    assert sw_main(["experiment", "--data", str(tiny_corpus), "--out", str(repo / "runs" / "q8"), "--hidden", "8",
                    "--wbits", "2", "--abits", "2", "--epochs", "1", "--results", str(res),
                    f"--init-from={init}", *quick]) == 0
    d = load_results(res)
    q = d["runs"]["W2A2@8"]
    assert q["run_dir"] == "runs/q8" and d["runs"]["float@8"]["run_dir"] == "runs/f8"
    assert q["recipe"]["init_from"] == "runs/f8/best.pt"
    assert "--out runs/q8" in q["command"] and "--init-from=runs/f8/best.pt" in q["command"]
    # the data directory lies outside the working directory: still relative, never absolute
    assert f"--data {os.path.relpath(tiny_corpus, repo)}" in q["command"]
    # an eval-only pass keeps the training command and records its own, also relative
    assert sw_main(["experiment", "--data", str(tiny_corpus), "--out", str(repo / "runs" / "q8"), "--hidden", "8",
                    "--wbits", "2", "--abits", "2", "--epochs", "1", "--results", str(res), "--eval-only"]) == 0
    d = load_results(res)
    assert not _absolute_strings(d), _absolute_strings(d)
    assert str(repo) not in res.read_text()
    # ship: the provenance JSON next to the layer
    data = repo / "data"
    assert sw_main(["ship", "--entry", "W2A2@8", "--results", str(res), "--name", "t", "--data-dir", str(data),
                    "--data", str(tiny_corpus)]) == 0
    rec = json.loads((data / "t.json").read_text())
    assert rec["run"] == "q8" and rec["recipe"]["init_from"] == "runs/f8/best.pt"
    assert not _absolute_strings(rec), _absolute_strings(rec)
    assert str(repo) not in (data / "t.json").read_text()


def test_ship_makes_an_old_absolute_entry_relative(tiny_corpus, tmp_path, monkeypatch):
    """An entry recorded before records were relative is shipped with relative provenance."""
    from sw_ref.__main__ import main as sw_main
    from sw_ref.experiment import load_results, run_experiment, save_results

    monkeypatch.chdir(tmp_path)
    res = tmp_path / "ptb.json"
    run_experiment(str(tiny_corpus), tmp_path / "runs" / "q8", wbits=2, abits=2, hidden=8, epochs=1, results=res,
                   threads=1, max_train_tokens=3000, progress=False)
    d = load_results(res)
    e = d["runs"]["W2A2@8"]
    e["run_dir"] = str(tmp_path / "runs" / "q8")
    e["command"] = f"python -m sw_ref experiment --out {tmp_path / 'runs' / 'q8'} --wbits 2 --abits 2 --hidden 8"
    save_results(d, res)
    assert sw_main(["ship", "--entry", "W2A2@8", "--results", str(res), "--name", "t", "--data-dir", "data",
                    "--data", str(tiny_corpus)]) == 0
    rec = json.loads((tmp_path / "data" / "t.json").read_text())
    assert "--out runs/q8 " in rec["command"] and not _absolute_strings(rec)


@pytest.mark.parametrize("argv, want", [
    (["python", "-m", "sw_ref", "experiment", "--out", "{cwd}/runs/x", "--data=../d"],
     "python -m sw_ref experiment --out runs/x --data=../d"),
    (["--note", "a b", "--init-from={cwd}/runs/f/best.pt"], "--note 'a b' --init-from=runs/f/best.pt"),
])
def test_relative_command(argv, want, tmp_path, monkeypatch):
    from sw_ref.experiment import relative_command

    monkeypatch.chdir(tmp_path)
    cwd = os.getcwd()
    assert relative_command([a.format(cwd=cwd) for a in argv]) == want
    assert relative_command(want) == want  # a recorded (string) command that is relative stays as it is


MODEL_PATHS = ("checkpoints", "hwrnn/data")  # committed resume points and shipped layers (issue 16: <= 80 MB ever)


def _model_blobs() -> dict[str, int]:
    """{blob id: size} of every version of every model file (.pt, .npz) ever committed under
    MODEL_PATHS, over the whole history (git keeps replaced versions)."""
    log = subprocess.run(["git", "log", "--all", "--format=", "--raw", "--no-abbrev", "--", *MODEL_PATHS], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    blobs = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[-1].endswith((".pt", ".npz")) and set(parts[3]) != {"0"}:
            blobs[parts[3]] = None
    for b in blobs:
        blobs[b] = int(subprocess.run(["git", "cat-file", "-s", b], cwd=ROOT, capture_output=True, text=True,
                                      check=True).stdout)
    return blobs


def test_committed_model_files_stay_within_their_budget():
    """Resume points <= 25 MB each, the shipped layer <= 12 MB, and every version ever committed of
    all of them <= 80 MB together; each committed resume point loads as one."""
    from sw_ref import resume_point

    total = sum(_model_blobs().values())
    assert total <= 80 * 2 ** 20, f"model files ever committed: {total / 2 ** 20:.1f} MB > 80 MB"
    for p in sorted((ROOT / "checkpoints").glob("*.pt")):
        assert p.stat().st_size <= 25 * 2 ** 20, f"{p.name}: {p.stat().st_size / 2 ** 20:.1f} MB > 25 MB"
        resume_point.read(p)
    for p in sorted((ROOT / "hwrnn" / "data").glob("*.npz")):
        assert p.stat().st_size <= 12 * 2 ** 20
