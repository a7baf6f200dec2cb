"""Resume points small enough to commit: a training run's state in fp16.

A run directory's last.pt holds fp32 parameters, the optimizer state and the TBPTT state (for a
bit-exact mid-epoch resume) and is too big for git at H=450 (43 MB). A resume point keeps what
continuing the run needs: the model parameters in fp16 (half the size), the learning rate, epoch
and batch counters with the epoch's running loss, the carried TBPTT state (fp32, small), best
validation figures, the per-epoch metrics and the RNG state; plus best.pt's parameters when the
best epoch is not the last one.

``pack(run_dir, dest)`` writes one from run_dir/last.pt (at an epoch boundary or mid-epoch).
``unpack(point, run_dir)`` recreates last.pt, best.pt and metrics.jsonl in an empty run
directory, so that ``python -m sw_ref train|experiment --out run_dir`` continues the run.
Continuing from a resume point is not bit-exact with the uninterrupted run: parameters were
rounded to fp16 (relative error <= 2**-11) and a momentum-free SGD state is rebuilt empty
(Adam moments are not kept: such a run restarts its moments, and ``unpack`` says so).
``--init-from`` also accepts a resume point (quantized fine-tuning from a committed float model).

File: ``torch.save`` of a dict with 'format' ('hwrnn-lm-resume-1'), 'config', 'vocab', 'level' ('word'
or 'char'; absent in points written before it existed: word), 'model'
(fp16 state_dict), 'best_model' (fp16 state_dict or None), 'epoch' (completed epochs), 'batch'
(batches done in the next epoch), 'hidden' (TBPTT state or None), 'epoch_loss', 'epoch_tokens',
'epoch_seconds', 'lr', 'valid_ppl', 'best_valid_ppl', 'best_epoch', 'train_opts',
'optimizer_name', 'rng_torch', 'metrics' (list), 'experiment_state' (the run directory's
experiment.json: training wall time and invocations of sw_ref.experiment, or None).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sw_ref.train import FORMAT, CheckpointError, TrainError, _atomic_save, _read_checkpoint, load_torch_dict

RESUME_FORMAT = "hwrnn-lm-resume-1"


def _half(state: dict) -> dict:
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach().clone())
            for k, v in state.items()}


def _full(state: dict) -> dict:
    return {k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in state.items()}


def pack(run_dir, dest) -> dict:
    """Write the resume point of run_dir (at an epoch boundary) to dest; returns a summary."""
    run_dir, dest = Path(run_dir), Path(dest)
    last = _read_checkpoint(run_dir / "last.pt")
    best_model = None
    best_path = run_dir / "best.pt"
    if last.get("best_epoch") is not None and last.get("best_epoch") != last.get("epoch"):
        best = _read_checkpoint(best_path)
        best_model = _half(best["model"])
    exp_path = run_dir / "experiment.json"  # sw_ref.experiment's training wall time and invocations
    experiment_state = json.loads(exp_path.read_text()) if exp_path.is_file() else None
    metrics = []
    mpath = run_dir / "metrics.jsonl"
    if mpath.is_file():
        metrics = [json.loads(line) for line in mpath.read_text().splitlines() if line.strip()]
    opt_name = "adam" if last.get("optimizer", {}).get("state") and any(
        "exp_avg" in s for s in last["optimizer"]["state"].values()) else last.get("train_opts", {}).get("optimizer", "sgd")
    point = {"format": RESUME_FORMAT, "config": last["config"], "vocab": list(last["vocab"]),
             "level": last.get("level", "word"),
             "model": _half(last["model"]), "best_model": best_model, "epoch": int(last["epoch"]),
             "lr": float(last["lr"]), "valid_ppl": last.get("valid_ppl"),
             "best_valid_ppl": last.get("best_valid_ppl"), "best_epoch": last.get("best_epoch"),
             "train_opts": dict(last.get("train_opts", {})), "optimizer_name": opt_name,
             "rng_torch": last["rng_torch"], "metrics": metrics, "experiment_state": experiment_state,
             "batch": int(last.get("batch", 0)),
             "hidden": last.get("hidden"), "epoch_loss": float(last.get("epoch_loss", 0.0)),
             "epoch_tokens": int(last.get("epoch_tokens", 0)), "epoch_seconds": float(last.get("epoch_seconds", 0.0))}
    dest.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(point, dest)
    return {"file": str(dest), "bytes": dest.stat().st_size, "epoch": point["epoch"], "batch": point["batch"],
            "lr": point["lr"],
            "best_valid_ppl": point["best_valid_ppl"], "best_epoch": point["best_epoch"]}


def read(path) -> dict:
    """A resume point's dict; CheckpointError (one line) for anything else."""
    point = load_torch_dict(path, "resume point", RESUME_FORMAT, "an hwrnn resume point")
    for key in ("config", "vocab", "model", "epoch", "lr", "rng_torch"):
        if key not in point:
            raise CheckpointError(f"resume point {path} lacks the {key!r} entry")
    return point


def is_resume_point(path) -> bool:
    try:
        read(path)
    except CheckpointError:
        return False
    return True


def lm_checkpoint(point: dict, which: str = "last") -> dict:
    """An LM checkpoint dict (sw_ref.train format) of the point's last (or best) parameters."""
    state = point["model"] if which == "last" or point.get("best_model") is None else point["best_model"]
    epoch = point["epoch"] if state is point["model"] else point["best_epoch"]
    return {"format": FORMAT, "config": point["config"], "vocab": list(point["vocab"]),
            "level": point.get("level", "word"), "model": _full(state),
            "epoch": epoch, "valid_ppl": point["valid_ppl"] if epoch == point["epoch"] else point["best_valid_ppl"],
            "best_valid_ppl": point["best_valid_ppl"], "best_epoch": point["best_epoch"]}


def unpack(path, run_dir) -> dict:
    """Recreate run_dir's last.pt, best.pt and metrics.jsonl from a resume point (run_dir must not
    hold a last.pt yet). Returns a summary."""
    from sw_ref.stack_model import build_model, config_from_dict
    from sw_ref.train import _make_optimizer, _options

    point = read(path)
    run_dir = Path(run_dir)
    if (run_dir / "last.pt").exists():
        raise TrainError(f"{run_dir / 'last.pt'} exists: unpack a resume point into a new run directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    last = lm_checkpoint(point, "last")
    model = build_model(config_from_dict(dict(point["config"])))  # one layer, or a stack
    model.load_state_dict(last["model"], strict=True)
    opt_name = point.get("optimizer_name", "sgd")
    opts = _options(None, {"out": run_dir, "optimizer": opt_name, "lr": point["lr"]})
    optimizer = _make_optimizer(opts, model.parameters(), point["lr"])
    last.update({"batch": int(point.get("batch", 0)), "lr": point["lr"], "optimizer": optimizer.state_dict(),
                 "hidden": point.get("hidden"), "rng_torch": point["rng_torch"],
                 "epoch_loss": float(point.get("epoch_loss", 0.0)), "epoch_tokens": int(point.get("epoch_tokens", 0)),
                 "epoch_seconds": float(point.get("epoch_seconds", 0.0)),
                 "train_opts": dict(point.get("train_opts", {}))})
    _atomic_save(last, run_dir / "last.pt")
    if point.get("best_epoch") is not None:
        _atomic_save(lm_checkpoint(point, "best"), run_dir / "best.pt")
    metrics = point.get("metrics") or []
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if point.get("experiment_state") is not None:
        (run_dir / "experiment.json").write_text(json.dumps(point["experiment_state"]))
    note = " (Adam moments restart)" if opt_name == "adam" else ""
    return {"run_dir": str(run_dir), "epoch": point["epoch"], "batch": int(point.get("batch", 0)), "lr": point["lr"],
            "best_valid_ppl": point["best_valid_ppl"], "note": "parameters restored from fp16" + note}
