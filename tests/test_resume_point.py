"""Committable resume points (sw_ref.resume_point) and the bf16 decoder switch, on the tiny corpus."""
import json

import pytest
import torch

from sw_ref import resume_point
from sw_ref.model import LMConfig, QuantLSTMLM
from sw_ref.train import CheckpointError, TrainError, train

from tiny_corpus import write_corpus

QUICK = dict(hidden=16, batch_size=10, bptt=20, checkpoint_every=0, log_every=0, dropout=0.0,
             progress=False, threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("ptb"))


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_pack_unpack_continues_the_run(corpus, tmp_path):
    run = tmp_path / "run"
    # the step-by-step recurrence: the premise below (epoch 2 does not improve) holds for this tiny float
    # run's trajectory, which any rounding difference (the fused recurrence's) changes chaotically
    train(data=corpus, out=run, epochs=2, fused_recurrence=False, **QUICK)
    (run / "experiment.json").write_text(json.dumps({"wall_s": 12.5, "invocations": 2}))
    point = tmp_path / "points" / "float_h16.pt"
    info = resume_point.pack(run, point)
    assert info["epoch"] == 2
    p = resume_point.read(point)
    orig = torch.load(run / "last.pt", weights_only=True)
    nbytes = lambda sd: sum(v.numel() * v.element_size() for v in sd.values())  # noqa: E731
    assert nbytes(p["model"]) * 2 == nbytes(orig["model"])
    # the tiny run's epoch 2 did not improve (lr annealed): best.pt's parameters travel along
    assert orig["best_epoch"] == 1 and p["best_model"] is not None
    assert all(v.dtype == torch.float16 for v in p["model"].values() if v.is_floating_point())
    assert [m["epoch"] for m in p["metrics"] if "event" not in m] == [1, 2]

    again = tmp_path / "again"
    resume_point.unpack(point, again)
    last = torch.load(again / "last.pt", weights_only=True)
    best = torch.load(again / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and best["valid_ppl"] == orig["best_valid_ppl"]
    for k, v in orig["model"].items():  # fp16 round trip: relative error <= 2**-11
        assert torch.allclose(last["model"][k], v, rtol=2 ** -11, atol=1e-7)
    assert last["epoch"] == 2 and last["lr"] == orig["lr"] and last["batch"] == 0
    summary = train(data=corpus, out=again, epochs=3, **QUICK)
    assert summary["epochs_done"] == 3
    lines = [json.loads(x) for x in (again / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "epoch" in r and "event" not in r] == [1, 2, 3]

    assert json.loads((again / "experiment.json").read_text()) == {"wall_s": 12.5, "invocations": 2}
    with pytest.raises(TrainError, match="exists"):
        resume_point.unpack(point, again)


def test_init_from_accepts_a_resume_point(corpus, tmp_path):
    run = tmp_path / "float"
    train(data=corpus, out=run, epochs=1, **QUICK)
    point = tmp_path / "float.pt"
    resume_point.pack(run, point)
    q = tmp_path / "w2a2"
    train(data=corpus, out=q, epochs=1, wbits=2, abits=2, init_from=str(point), max_batches=1, **QUICK)
    assert (q / "last.pt").is_file()


def test_mid_epoch_point_resumes_where_it_stopped(corpus, tmp_path):
    run = tmp_path / "run"
    train(data=corpus, out=run, epochs=1, max_batches=40, **QUICK)
    point = tmp_path / "p.pt"
    info = resume_point.pack(run, point)
    assert (info["epoch"], info["batch"]) == (0, 40)
    again = tmp_path / "again"
    resume_point.unpack(point, again)
    last = torch.load(again / "last.pt", weights_only=True)
    orig = torch.load(run / "last.pt", weights_only=True)
    assert last["batch"] == 40 and last["epoch_tokens"] == orig["epoch_tokens"]
    assert all(torch.equal(a, b) for a, b in zip(last["hidden"], orig["hidden"]))
    s = train(data=corpus, out=again, epochs=1, **QUICK)
    assert s["epochs_done"] == 1 and not s["interrupted"]


def test_foreign_files_are_refused(corpus, tmp_path):
    run = tmp_path / "run"
    train(data=corpus, out=run, epochs=1, max_batches=2, **QUICK)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="corrupt, truncated") as e:
        resume_point.read(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="not an hwrnn resume point"):
        resume_point.read(run / "last.pt")


def test_bf16_decoder_only_in_training_mode():
    torch.manual_seed(0)
    model = QuantLSTMLM(LMConfig(vocab=50, hidden=8, dropout=0.0))
    tokens = torch.randint(0, 50, (5, 3))
    model.train()
    ref, _ = model(tokens)
    model.train_decoder_dtype = torch.bfloat16
    fast, _ = model(tokens)
    assert fast.dtype == torch.float32 and not torch.equal(fast, ref)
    assert torch.allclose(fast, ref, rtol=2e-2, atol=2e-2)
    model.eval()  # validation, test and the integer model stay fp32
    a, _ = model(tokens)
    model.train_decoder_dtype = None
    b, _ = model(tokens)
    assert torch.equal(a, b)


def test_bad_decoder_precision_is_one_line(corpus, tmp_path):
    with pytest.raises(TrainError, match="--decoder-precision must be one of fp32, bf16"):
        train(data=corpus, out=tmp_path / "r", epochs=1, decoder_precision="fp8", **QUICK)


def test_eval_every_validates_and_anneals_within_the_epoch(corpus, tmp_path):
    run = tmp_path / "run"
    # lr 200 overshoots on the tiny corpus: a mid-epoch stall must anneal before the epoch ends
    s = train(data=corpus, out=run, epochs=1, eval_every=30, lr=200.0, **QUICK)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    mid = [r for r in recs if "batch" in r and "event" not in r]
    assert [r["batch"] for r in mid] == [30, 60, 90]  # 117 batches: not at the epoch's end
    assert all(r["epoch"] == 1 for r in mid)
    lrs = [r["lr"] for r in mid] + [r["lr"] for r in recs if "train_ppl" in r]
    for r, nxt in zip(mid, lrs[1:]):  # each stall divides the next lr by the anneal factor
        assert nxt == (r["lr"] if r["improved"] else r["lr"] / 4.0)
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["valid_ppl"] == min(r["valid_ppl"] for r in recs if "valid_ppl" in r)
    assert s["best_valid_ppl"] == best["valid_ppl"]


def test_anneal_threshold_anneals_a_crawl_and_still_keeps_the_best(corpus, tmp_path):
    run = tmp_path / "run"
    # a 30 % threshold: validations that improve by less than that divide lr by 4 although they improve
    s = train(data=corpus, out=run, epochs=2, eval_every=30, lr=20.0, anneal_threshold=0.3, **QUICK)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if "valid_ppl" in r and "event" not in r]
    assert len(vals) == 8  # 117 batches per epoch: batches 30, 60, 90 and the end, twice
    best, lr = None, 20.0
    for r in vals:
        assert r["lr"] == lr
        assert r["improved"] == (best is None or r["valid_ppl"] < best)
        assert r["annealed"] == (best is not None and not r["valid_ppl"] < 0.7 * best)
        best = r["valid_ppl"] if r["improved"] else best
        lr = lr / 4 if r["annealed"] else lr
    # the case the threshold exists for happened: an improving validation that annealed
    assert any(r["improved"] and r["annealed"] for r in vals)
    assert torch.load(run / "best.pt", weights_only=True)["valid_ppl"] == best == s["best_valid_ppl"]


@pytest.mark.parametrize("bad", [-0.1, 1.0, True, "x"])
def test_bad_anneal_threshold_is_one_line(corpus, tmp_path, bad):
    with pytest.raises(TrainError, match=r"--anneal-threshold must be a fraction in \[0, 1\)"):
        train(data=corpus, out=tmp_path / "r", epochs=1, anneal_threshold=bad, **QUICK)


def test_set_lr_changes_the_resumed_lr_once_and_records_it(corpus, tmp_path, capsys):
    from sw_ref.__main__ import main

    run = tmp_path / "run"
    train(data=corpus, out=run, epochs=2, max_batches=150, lr=20.0, **QUICK)  # epoch 1 done, 33 batches of 2
    capsys.readouterr()
    assert main(["set-lr", str(run), "0.5", "--forget-best"]) == 0
    best_before = torch.load(run / "best.pt", weights_only=True)["valid_ppl"]
    assert capsys.readouterr().out.strip() == (f"{run}: lr 20 -> 0.5 from epoch 2 batch 33 "
                                               f"(best valid {best_before:.2f} forgotten)")
    train(data=corpus, out=run, epochs=2, lr=20.0, **QUICK)  # the command's --lr does not override it
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    event = next(r for r in recs if r.get("event") == "lr_set")
    assert (event["epoch"], event["batch"], event["lr_from"], event["lr"]) == (2, 33, 20.0, 0.5)
    assert event["forget_best"] and event["best_valid_ppl_before"] == best_before
    end2 = next(r for r in recs if r.get("epoch") == 2 and "train_ppl" in r)
    assert end2["lr"] == 0.5 and end2["improved"]  # compared afresh: improved by definition
    assert torch.load(run / "best.pt", weights_only=True)["valid_ppl"] == end2["valid_ppl"]


def test_set_lr_bad_input_is_one_line(corpus, tmp_path, capsys):
    from sw_ref.__main__ import main

    assert main(["set-lr", str(tmp_path / "none"), "1"]) == 2
    assert "has no last.pt to resume from" in capsys.readouterr().err
    run = tmp_path / "run"
    train(data=corpus, out=run, epochs=1, max_batches=5, **QUICK)
    for bad in ("0", "nan", "-1"):
        assert main(["set-lr", str(run), bad]) == 2
        assert "the new lr must be a positive number" in capsys.readouterr().err
    (run / "last.pt").write_bytes(b"garbage")
    assert main(["set-lr", str(run), "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a PyTorch checkpoint" in err


def test_resume_point_cli(corpus, tmp_path):
    from sw_ref.__main__ import main

    run = tmp_path / "run"
    train(data=corpus, out=run, epochs=1, max_batches=5, **QUICK)
    assert main(["resume-point", "pack", str(run), "-o", str(tmp_path / "p.pt")]) == 0
    assert main(["resume-point", "unpack", str(tmp_path / "p.pt"), "--out", str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2" / "last.pt").is_file()
    assert main(["resume-point", "unpack", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r3")]) == 2
