"""Experiment runner, results table and neuron-increase search on the tiny corpus."""
import json

from sw_ref.experiment import load_results, neuron_increase_search, results_table, run_experiment

QUICK = dict(batch_size=10, bptt=20, dropout=0.0, threads=1, checkpoint_every=0, log_every=0, progress=False)


def test_experiment_records_model_and_integer_perplexity(tiny_corpus, tmp_path):
    res = tmp_path / "ptb.json"
    e = run_experiment(str(tiny_corpus), tmp_path / "run", wbits=2, abits=2, hidden=8, epochs=1, results=res,
                       command="test", **QUICK)
    d = load_results(res)
    assert d["runs"]["W2A2@8"] == json.loads(json.dumps(e))
    assert e["finished"] and e["epochs_done"] == 1
    for split in ("valid", "test"):
        assert e["integer_ppw"][split] > 1 and e["model_ppw"][split] > 1
    assert abs(e["gap_percent"]) < 1.0
    assert e["bits"]["lstm_layer_bits"] == 4 * 8 * 16 * 2 + 4 * 8 * 32
    # a second invocation resumes (nothing left to train) and keeps the entry consistent
    e2 = run_experiment(str(tiny_corpus), tmp_path / "run", wbits=2, abits=2, hidden=8, epochs=1, results=res,
                        command="test", **QUICK)
    assert e2["integer_ppw"] == e["integer_ppw"] and e2["wall_s"] >= e["wall_s"]
    table = results_table(load_results(res))
    assert "W2A2@8" in table and "148.0" in table and "Kapur" in table


def test_unfinished_run_is_marked(tiny_corpus, tmp_path):
    res = tmp_path / "ptb.json"
    e = run_experiment(str(tiny_corpus), tmp_path / "run", wbits=None, abits=None, hidden=8, epochs=2, results=res,
                       command="test", max_batches=1, **QUICK)
    assert not e["finished"] and e["epochs_done"] == 0 and e["evaluated"] == "last.pt"
    assert "0 of 2 (unfinished)" in results_table(load_results(res))


def test_neuron_increase_search_picks_smallest_reaching():
    table = {100: 150.0, 200: 120.0, 300: 109.0, 400: 107.0}

    def evaluate(h):
        return table[h], {"lstm_layer_bits": h * 10, "model_bits": h * 100}

    r = neuron_increase_search(evaluate, [400, 100, 300, 200], 110.0)
    assert r["reached"] and r["chosen_hidden"] == 300 and [t["hidden"] for t in r["tried"]] == [100, 200, 300]
    assert r["widening_cost_bits"] == 300 * 100 - 100 * 100
    r = neuron_increase_search(evaluate, [100, 200], 100.0)
    assert not r["reached"] and r["chosen_hidden"] is None
