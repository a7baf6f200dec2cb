"""hwrnn.points: the Ray executor equals the serial one, caches and resumes, reports failures and
retries points whose worker died."""
import pytest

import points_tasks as tasks
from hwrnn.points import PointCache, run_points, source_digest, tool_versions

pytestmark = pytest.mark.xdist_group("ray")  # one embedded Ray per test worker: keep these together


@pytest.fixture(scope="module")
def local_ray():
    import ray
    from ray import cloudpickle

    from hwrnn.points import init_ray

    cloudpickle.register_pickle_by_value(tasks)
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def results(outcomes):
    return [(o.result, o.error) for o in outcomes]


def test_ray_equals_serial_and_reports_a_raising_point(local_ray, capsys):
    configs = [{"x": x} for x in range(6)]
    serial = run_points(tasks.fail_on_three, configs, executor="serial", progress=False)
    on_ray = run_points(tasks.fail_on_three, configs, executor="ray")
    assert results(serial) == results(on_ray)
    # the bar counts as running what the 2 CPUs hold, the rest as queued
    assert "running 2, queued 4, failed 0" in capsys.readouterr().err
    assert [o.ok for o in on_ray] == [True, True, True, False, True, True]
    assert on_ray[3].error == "ValueError: x = 3 is refused"
    assert on_ray[5].result == {"square": 25}


def test_cache_skips_finished_points_and_retries_failed_ones(tmp_path, local_ray):
    salt = {"versions": tool_versions(["numpy"]), "source": source_digest()}
    cache = PointCache(tmp_path / "points.jsonl", salt)
    configs = [{"x": x} for x in range(5)]
    first = run_points(tasks.fail_on_three, configs, cache=cache, executor="ray", progress=False)
    assert [o.cached for o in first] == [False] * 5
    again = PointCache(tmp_path / "points.jsonl", salt)  # a new process reading the file
    assert len(again) == 4  # the failed point is not cached
    second = run_points(tasks.square, configs, cache=again, executor="serial", progress=False)
    # square is another function: nothing of fail_on_three's cache applies
    assert not any(o.cached for o in second)
    third = run_points(tasks.fail_on_three, configs, cache=PointCache(tmp_path / "points.jsonl", salt),
                       executor="serial", progress=False)
    assert [o.cached for o in third] == [True, True, True, False, True]
    assert results(third) == results(first)
    # another tool version: every point is computed again
    other = PointCache(tmp_path / "points.jsonl", {**salt, "versions": {"numpy": "0"}})
    assert not any(o.cached for o in run_points(tasks.square, configs, cache=other, executor="serial",
                                                progress=False))


def test_a_torn_cache_line_is_ignored(tmp_path):
    cache = PointCache(tmp_path / "c.jsonl", "s")
    run_points(tasks.square, [{"x": 1}, {"x": 2}], cache=cache, executor="serial", progress=False)
    with open(tmp_path / "c.jsonl", "a") as fh:
        fh.write('{"key": "abc", "res')  # a run killed while writing
    again = PointCache(tmp_path / "c.jsonl", "s")
    out = run_points(tasks.square, [{"x": 1}, {"x": 2}], cache=again, executor="serial", progress=False)
    assert [o.cached for o in out] == [True, True]


def test_a_killed_worker_is_retried(tmp_path, local_ray):
    configs = [{"x": 4, "marker": str(tmp_path / "m4")}, {"x": 5, "marker": str(tmp_path / "m5")}]
    out = run_points(tasks.die_once, configs, executor="ray", retries=1, progress=False)
    assert [o.result for o in out] == [{"square": 16}, {"square": 25}]
    assert (tmp_path / "m4").read_text() == "died"  # the first attempt did die


def test_a_worker_that_always_dies_is_reported_not_dropped(local_ray):
    out = run_points(tasks.die_always, [{"x": x} for x in range(4)], executor="ray", retries=1, progress=False)
    assert [o.ok for o in out] == [True, True, False, True]
    assert out[2].error.startswith("worker died")
    assert out[3].result == {"square": 9}


def test_unknown_executor_is_one_clear_error():
    with pytest.raises(ValueError, match="executor must be one of ray, serial"):
        run_points(tasks.square, [], executor="dask")


def _csv(path):
    import csv

    return list(csv.DictReader(open(path)))


def test_tiny_sweep_on_ray_equals_serial_and_resumes(tmp_path, local_ray, capsys):
    """Analytic points and two small synthesis points (yosys, no place-and-route) on the embedded
    Ray give the serial path's table; a second run reads every point from the cache."""
    from rtl_gen import sweep

    args = ["--wbits", "1,2", "--abits", "1", "--hidden", "4", "--pe", "4,8", "--simd", "4", "--planes", "parallel",
            "--family", "ecp5", "--synth-points", "0,1", "--no-pnr", "--no-progress"]
    assert sweep.main(args + ["--name", "s", "--out-dir", str(tmp_path / "serial"), "--executor", "serial"]) == 0
    assert sweep.main(args + ["--name", "s", "--out-dir", str(tmp_path / "ray")]) == 0
    serial, on_ray = _csv(tmp_path / "serial" / "sweep_s.csv"), _csv(tmp_path / "ray" / "sweep_s.csv")
    assert serial == on_ray and len(on_ray) == 4
    assert int(on_ray[0]["synth_lut"]) > 0 and int(on_ray[1]["synth_lut"]) > 0 and not on_ray[2]["synth_lut"]
    lines = (tmp_path / "ray" / "cache" / "sweep_synth.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len((tmp_path / "ray" / "cache" / "sweep_estimate.jsonl").read_text().splitlines()) == 4
    # a re-run computes nothing: the synthesis cache is not appended to, and the table is the same
    assert sweep.main(args + ["--name", "again", "--out-dir", str(tmp_path / "ray")]) == 0
    assert (tmp_path / "ray" / "cache" / "sweep_synth.jsonl").read_text().splitlines() == lines
    assert _csv(tmp_path / "ray" / "sweep_again.csv") == on_ray


def test_tiny_search_on_ray_tune_equals_serial(tmp_path, tiny_corpus, local_ray, capsys):
    """The neuron-increase search as a Tune experiment gives the serial search's answer and figures;
    the size above the one that reached the target is stopped early; a re-run resumes the finished
    trials from their run directories instead of training again."""
    import json

    from sw_ref.__main__ import main

    common = ["search", "--data", str(tiny_corpus), "--wbits", "2", "--abits", "2", "--hidden-sizes", "4,8",
              "--target", "1e9", "--epochs", "2", "--threads", "1", "--no-progress"]
    assert main(common + ["--results", str(tmp_path / "s.json"), "--runs", str(tmp_path / "s"),
                          "--executor", "serial"]) == 0
    serial = json.loads((tmp_path / "s.json").read_text())["searches"]
    # one trial at a time (sizes in increasing order), so that size 8 reports after size 4 reached the target
    assert main(common + ["--results", str(tmp_path / "t.json"), "--runs", str(tmp_path / "t"), "--max-trials", "1"]) == 0
    tuned = json.loads((tmp_path / "t.json").read_text())
    assert serial.keys() == tuned["searches"].keys()
    s, t = next(iter(serial.values())), next(iter(tuned["searches"].values()))
    assert t["executor"] == "ray tune" and s["executor"] == "serial"
    assert t["chosen_hidden"] == s["chosen_hidden"] == 4 and t["ppw"] == s["ppw"]
    assert [x["ppw"] for x in t["tried"]] == [x["ppw"] for x in s["tried"]]
    assert [x["hidden"] for x in t["stopped_early"]] == [8] and t["failed"] == []
    assert "dominated" in t["stopped_early"][0]["reason"] and t["stopped_early"][0]["epochs_done"] < 2
    # every trial is an ordinary run entry of the results file, with the experiment command that resumes it
    e = tuned["runs"]["W2A2@4"]
    assert e["finished"] and e["epochs_done"] == 2 and e["command"].startswith("python -m sw_ref experiment --out ")
    mtime = (tmp_path / "t" / "W2A2@4" / "best.pt").stat().st_mtime
    assert main(common + ["--results", str(tmp_path / "t.json"), "--runs", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "W2A2@4" / "best.pt").stat().st_mtime == mtime  # finished: not trained again


def test_reachability_stopper_rules():
    from sw_ref.tune_search import ReachabilityStopper

    st = ReachabilityStopper(target=100.0, epochs=10, grace=2)

    def report(tid, h, ppw, valid, ep):
        return st("t%s" % tid, {"pair": [2, 2], "hidden": h, "ppw": ppw, "valid": valid, "epochs_done": ep,
                                "finished": ep >= 10})

    assert not report(1, 300, 200.0, 210.0, 1)  # within grace
    # 190 * (190/210)^8 = 85 <= 100: could still reach
    assert not report(1, 300, 190.0, 190.0, 2)
    # 189 * (189.9/190)^7 = 188.3 > 100: cannot reach
    assert report(1, 300, 189.0, 189.9, 3)
    assert not report(2, 450, 120.0, 125.0, 1)
    assert not report(3, 600, 99.0, 101.0, 1)  # reaches: smallest reaching 600
    assert report(4, 800, 130.0, 140.0, 1)  # dominated by 600
    assert not report(2, 450, 110.0, 112.0, 2)  # smaller than 600: keeps running
    assert report(3, 600, 98.0, 100.0, 10)  # finished


def test_source_digest_ignores_shipped_models_only(tmp_path, monkeypatch):
    """Re-shipping a trained model (hwrnn/data/ptb_*, hwrnn/pretrained.py) leaves every point cache
    valid; any other source or package-data change voids it."""
    import hwrnn.points as points

    (tmp_path / "hwrnn" / "data").mkdir(parents=True)
    (tmp_path / "hwrnn" / "core.py").write_text("x = 1\n")
    (tmp_path / "hwrnn" / "data" / "coefficients.json").write_text("{}\n")
    monkeypatch.setattr(points, "_ROOT", tmp_path)
    base = source_digest(("hwrnn",))
    (tmp_path / "hwrnn" / "data" / "ptb_w4a2_h450.lm.npz").write_bytes(b"model")
    (tmp_path / "hwrnn" / "data" / "ptb_w4a2_h450.json").write_text("{}\n")
    (tmp_path / "hwrnn" / "pretrained.py").write_text("y = 2\n")
    assert source_digest(("hwrnn",)) == base
    (tmp_path / "hwrnn" / "data" / "coefficients.json").write_text('{"a": 1}\n')
    assert source_digest(("hwrnn",)) != base
