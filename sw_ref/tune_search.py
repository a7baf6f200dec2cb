"""Kapur et al.'s neuron-increase search as a Ray Tune experiment: every (bit-width pair, hidden size)
is a trial that trains its run directory one epoch at a time (resumable, recorded in the results
file like any ``experiment``) and reports its test PPW after each epoch; trials that cannot change
the answer are stopped early (:class:`ReachabilityStopper`). The answer per bit-width pair is
``experiment.neuron_increase_search`` over the trials' final figures, so it has the serial search's
form and, for every size trained to the end, its numbers.

Early-stopping rule (documented; ASHA does not fit: it keeps the best sizes, the search wants the
smallest that reaches the target)
1. Dominated: once a size of a bit-width pair reaches the target (test PPW <= target, integer model
   when there is one), every larger size of that pair is stopped at its next report: it can no
   longer be the smallest reaching size.
2. Cannot reach: after ``grace`` epochs, a size is stopped when even an optimistic extrapolation of
   its validation curve misses the target: with r = (best valid PPW now) / (best valid PPW one epoch
   earlier) <= 1, its test PPW after the remaining epochs is at least ``ppw * r ** remaining`` if no
   later epoch improves faster than the last one did. The assumption (improvements shrink) holds for
   the plateauing SGD curves here except at a learning-rate anneal, which can give one larger drop:
   raise ``grace`` (or set it to 0 to disable the rule) when that matters.
A trial whose worker dies is restarted by Tune (``retries`` times) and resumes from its run
directory's last checkpoint; one that still fails is reported with its error, never dropped.
"""
from __future__ import annotations

import math
import os
import sys

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own console report off (verbose=0): our progress bar

from ray import tune  # noqa: E402

from hwrnn.points import init_ray  # noqa: E402


#: what a PTB training trial declares to Ray's scheduler (a 1x1000 LM trains in ~2 GB here)
TRIAL_MEMORY_MB = 3000


def epoch_batches(data, level, max_train_tokens=None) -> int:
    """TBPTT batches of one training epoch at train's default batch size and bptt (what one
    ``max_batches`` step of a trial trains)."""
    from .data import batchify, load_ptb, num_bptt_batches, resolve_data_dir
    from .train import DEFAULTS

    batch_size, bptt = DEFAULTS["batch_size"], DEFAULTS["bptt"]

    corpus = load_ptb(resolve_data_dir(data), level)
    tokens = corpus.train[:max_train_tokens] if max_train_tokens else corpus.train
    return num_bptt_batches(batchify(tokens, batch_size), bptt)


def search_trial(config: dict) -> None:
    """One Tune trial: train config["point"]["run_dir"] epoch by epoch, reporting after each epoch."""
    from .experiment import run_experiment

    config = config["point"]
    extra = dict(config["train"])
    n = epoch_batches(config["data"], "word", extra.get("max_train_tokens"))
    while True:
        e = run_experiment(config["data"], config["run_dir"], wbits=config["wbits"], abits=config["abits"],
                           hidden=config["hidden"], cell_type=config["cell_type"], weight_code=config["weight_code"],
                           epochs=config["epochs"], results=config["results"], command=config["command"],
                           max_batches=n, **extra)
        ppw = (e["integer_ppw"] or e["model_ppw"])["test"]
        tune.report({"ppw": ppw, "valid": e["model_ppw"]["valid"], "epochs_done": e["epochs_done"],
                     "finished": bool(e["finished"]), "hidden": config["hidden"],
                     "pair": [config["wbits"], config["abits"]], "bits": e["bits"]})
        if e["finished"]:
            return


class ReachabilityStopper(tune.Stopper):
    """The module docstring's rules 1 (dominated) and 2 (cannot reach after ``grace`` epochs)."""

    def __init__(self, target: float, epochs: int, grace: int):
        self.target, self.epochs, self.grace = target, epochs, grace
        self.smallest_reached: dict[tuple, int] = {}
        self.valid: dict[str, list[float]] = {}

    def __call__(self, trial_id, result) -> bool:
        pair, h = tuple(result["pair"]), result["hidden"]
        if result["ppw"] <= self.target:
            self.smallest_reached[pair] = min(self.smallest_reached.get(pair, h), h)
        if h > self.smallest_reached.get(pair, math.inf) or result["finished"]:
            return True
        hist = self.valid.setdefault(trial_id, [])
        hist.append(result["valid"])
        if self.grace and len(hist) >= max(self.grace, 2):
            r = min(1.0, hist[-1] / hist[-2])
            remaining = max(0, self.epochs - result["epochs_done"])
            if result["ppw"] * r ** remaining > self.target:
                return True
        return False

    def stop_all(self) -> bool:
        return False


class _Progress(tune.Callback):
    """tqdm over trial epochs: trials done / running / failed, elapsed and estimated time left."""

    def __init__(self, total_epochs: int, trials: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total_epochs, desc="search", unit="epoch", disable=not enabled, file=sys.stderr)
        self.trials, self.done, self.failed, self.epochs = trials, 0, 0, {}

    def _status(self, running):
        self.bar.set_postfix_str(f"trials done {self.done}/{self.trials}, running {running}, failed {self.failed}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        prev = self.epochs.get(trial.trial_id, 0)
        self.epochs[trial.trial_id] = result["epochs_done"]
        self.bar.update(max(0, result["epochs_done"] - prev))
        self._status(sum(t.status == "RUNNING" for t in trials))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        self._status(sum(t.status == "RUNNING" and t is not trial for t in trials))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self._status(sum(t.status == "RUNNING" and t is not trial for t in trials))

    def close(self):
        self.bar.close()


def tune_search(*, data, pairs, sizes, target, baseline_bits, cell_type, weight_code, stochastic, epochs, results,
                runs, train_extra, run_name, command_of, grace=3, retries=2, address=None, jobs=None,
                max_concurrent=0, progress=True) -> dict:
    """{(wbits, abits): search result} of the neuron-increase search over ``sizes`` for every pair,
    as one Tune experiment (``max_concurrent`` trials at once, 0: as many as the CPUs allow; trials
    start in increasing size). ``run_name(wbits, abits, h)``: the run directory's name under ``runs``;
    ``command_of(wbits, abits, h)``: the equivalent ``experiment`` command recorded in each entry."""
    from .experiment import neuron_increase_search

    init_ray(address, jobs)
    threads = int(train_extra.get("threads") or 1)
    runs, results = os.path.abspath(runs), os.path.abspath(results)  # Tune runs trials in their own cwd
    space = [{"wbits": w, "abits": a, "hidden": h, "cell_type": cell_type, "weight_code": weight_code,
              "epochs": epochs, "data": os.path.abspath(data) if data else data, "results": results,
              "run_dir": os.path.join(runs, run_name(w, a, h)), "command": command_of(w, a, h),
              "train": {**train_extra, "threads": threads, **({"stochastic_weights": True} if stochastic else {})}}
             for (w, a) in pairs for h in sorted(sizes)]
    bar = _Progress(epochs * len(space), len(space), progress)
    tuner = tune.Tuner(
        tune.with_resources(search_trial, {"cpu": threads, "memory": TRIAL_MEMORY_MB * 1024 * 1024}),
        param_space={"point": tune.grid_search(space)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent or None),
        run_config=tune.RunConfig(name="neuron_increase_search", storage_path=os.path.join(runs, "tune"),
                                  stop=ReachabilityStopper(target, epochs, grace), verbose=0, callbacks=[bar],
                                  failure_config=tune.FailureConfig(max_failures=retries)))
    try:
        grid = tuner.fit()
    finally:
        bar.close()
    final, failed = {}, {}
    for res in grid:
        pt = res.config["point"]
        key = (pt["wbits"], pt["abits"])
        if res.error is not None or not res.metrics or "ppw" not in res.metrics:
            text = str(res.error).strip().splitlines() if res.error is not None else ["no epoch reported"]
            failed.setdefault(key, []).append({"hidden": pt["hidden"], "error": text[-1] if text else "failed"})
            continue
        final.setdefault(key, {})[pt["hidden"]] = res.metrics
    out = {}
    for key in pairs:
        done = final.get(key, {})

        def evaluate_hidden(h, done=done):
            m = done[h]
            return m["ppw"], m["bits"]

        res = neuron_increase_search(evaluate_hidden, list(done), target, baseline_bits)
        chosen = res.get("chosen_hidden")
        for t in res["tried"]:
            m = done[t["hidden"]]
            t.update(epochs_done=m["epochs_done"], finished=m["finished"])
            if not m["finished"]:
                t["stopped"] = "cannot reach the target (extrapolated validation curve)"
        res["stopped_early"] = [{"hidden": h, "epochs_done": m["epochs_done"],
                                 "reason": "dominated: a smaller size reached the target"
                                 if chosen is not None and h > chosen else
                                 "cannot reach the target (extrapolated validation curve)"}
                                for h, m in sorted(done.items()) if not m["finished"]]
        res["failed"] = failed.get(key, [])
        res["executor"] = "ray tune"
        res["early_stopping"] = {"grace_epochs": grace, "rule": "sw_ref.tune_search (dominated; cannot reach)"}
        out[key] = res
    return out
