"""benchmarks/bench_train.py --accuracy-only: the fp32 / bf16 decoder check on a tiny corpus, merged
into an existing results file without touching its other figures."""
import json
import os
import subprocess
import sys

from tiny_corpus import write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accuracy_only_runs_both_precisions_and_keeps_other_figures(tmp_path):
    data = write_corpus(tmp_path / "ptb", n_train=400, n_eval=40)
    out = tmp_path / "bench_train.json"
    out.write_text(json.dumps({"throughput": {"kept": 1}}))
    r = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--data", str(data), "--accuracy-only",
                        "--force-bf16", "--hidden", "8", "--threads", "1", "--accuracy-batches", "3",
                        "--out", str(out), "--note", "test"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["throughput"] == {"kept": 1}
    acc = res["accuracy"]
    assert acc["batches"] == 3 and acc["note"] == "test" and "--accuracy-only" in acc["command"]
    for prec in ("fp32", "bf16"):
        assert acc[prec]["valid_ppl"] > 1
    rel = acc["bf16"]["valid_ppl"] / acc["fp32"]["valid_ppl"] - 1
    assert abs(acc["relative_difference"] - rel) < 1e-4
    assert acc["within_0.5_percent"] == (abs(acc["relative_difference"]) <= 0.005)


def test_accuracy_finetune_starts_both_runs_from_the_checkpoint(tmp_path):
    """--accuracy-init: both precisions fine-tune from the given checkpoint (recorded as
    accuracy_finetune, beside a from-scratch accuracy entry it leaves alone); started from a trained
    model they reach a lower perplexity than from scratch."""
    from sw_ref.train import train
    data = write_corpus(tmp_path / "ptb", n_train=400, n_eval=40)
    train(data=str(data), out=str(tmp_path / "start"), hidden=8, wbits=4, abits=2, epochs=3, threads=1,
          checkpoint_every=0, log_every=0, progress=False)
    out = tmp_path / "bench_train.json"
    out.write_text(json.dumps({"accuracy": {"kept": 1}}))
    args = [sys.executable, "benchmarks/bench_train.py", "--data", str(data), "--accuracy-only", "--force-bf16",
            "--hidden", "8", "--threads", "1", "--accuracy-batches", "2", "--out", str(out)]
    r = subprocess.run(args + ["--accuracy-init", str(tmp_path / "start" / "last.pt"), "--accuracy-lr", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["accuracy"] == {"kept": 1}
    fine = res["accuracy_finetune"]
    assert "fine-tuning from" in fine["recipe"] and "SGD lr 1," in fine["recipe"]
    assert "--accuracy-init" in fine["command"] and "--accuracy-lr 1" in fine["command"]
    r = subprocess.run(args + ["--out", str(tmp_path / "scratch.json")], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    scratch = json.loads((tmp_path / "scratch.json").read_text())["accuracy"]
    assert "from scratch" in scratch["recipe"]
    assert fine["fp32"]["valid_ppl"] < scratch["fp32"]["valid_ppl"]


def test_profile_only_splits_a_training_step_by_op(tmp_path):
    """--profile-only: the ops' self time per batch and shares (summing to 1 with "other"), merged
    into the results file beside its other figures."""
    data = write_corpus(tmp_path / "ptb", n_train=400, n_eval=40)
    out = tmp_path / "bench_train.json"
    out.write_text(json.dumps({"throughput": {"kept": 1}}))
    r = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--data", str(data), "--profile-only",
                        "--hidden", "8", "--threads", "1", "--profile-batches", "2", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["throughput"] == {"kept": 1}
    prof = res["profile"]
    assert prof["batches"] == 2 and "--profile-only" in prof["command"] and prof["model"].startswith("W4A2")
    ops = prof["ops"]
    assert "other" in ops and len(ops) <= 13 and any(k.startswith("aten::") for k in ops)
    assert abs(sum(v["share"] for v in ops.values()) - 1) < 0.01
    assert 0 < prof["ops_self_ms_per_batch"] and 0 < prof["wall_ms_per_batch"]


def test_full_run_measures_throughput_and_keeps_checks_it_did_not_make(tmp_path):
    """The full run (throughput of the five models, the fused pair, the profile) on a tiny corpus;
    with --accuracy-batches 0 the accuracy entries measured before stay as they were."""
    data = write_corpus(tmp_path / "ptb", n_train=2000, n_eval=40)
    out = tmp_path / "bench_train.json"
    out.write_text(json.dumps({"accuracy": {"kept": 1}, "accuracy_finetune": {"kept": 2}, "throughput": {"old": 1}}))
    r = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--data", str(data), "--hidden", "8",
                        "--threads", "1", "--batches", "1", "--turns", "1", "--accuracy-batches", "0",
                        "--profile-batches", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["accuracy"] == {"kept": 1} and res["accuracy_finetune"] == {"kept": 2}
    assert "old" not in res["throughput"] and res["throughput"]["torch.nn.LSTM, fp32 decoder"]["vs_torch_nn_lstm"] == 1.0
    assert res["profile"]["batches"] == 1 and res["profile"]["command"] == res["command"]
    assert "--profile-batches 1" in res["command"] and res["fused_recurrence"]["W4A2"]["fused_tokens_per_s"] > 0
