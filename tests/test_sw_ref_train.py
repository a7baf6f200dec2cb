"""sw_ref data loading, model and training loop on a tiny synthetic corpus (never the PTB data)."""
import json
import math

import pytest
import torch

from sw_ref.data import (DataError, batchify, iter_bptt, load_ptb, num_bptt_batches,
                         resolve_data_dir)
from sw_ref.model import LMConfig, QuantLSTMLM
from sw_ref.train import (CheckpointError, TrainError, evaluate, load_lm_checkpoint, train)

from tiny_corpus import ADJ, DET, NOUN, PREP, VERB
from tiny_corpus import write_corpus as _write_corpus


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return _write_corpus(tmp_path_factory.mktemp("ptb_txt"))


@pytest.fixture(scope="module")
def corpus_gz_dir(tmp_path_factory):
    return _write_corpus(tmp_path_factory.mktemp("ptb_gz"), gz=True)


QUICK = dict(hidden=16, batch_size=10, bptt=20, epochs=1, checkpoint_every=0, log_every=0,
             dropout=0.0, progress=False, threads=1)


@pytest.fixture(autouse=True)
def _restore_threads():
    # tiny models: one thread avoids OpenMP oversubscription on a busy 2-core machine
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _state(path):
    return torch.load(path, weights_only=True)["model"]


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ data
def test_load_txt_and_gz_identical(corpus_dir, corpus_gz_dir):
    a, b = load_ptb(corpus_dir), load_ptb(corpus_gz_dir)
    assert a.vocab == b.vocab == sorted(a.vocab)
    assert len(a.vocab) == len(DET + ADJ + NOUN + VERB + PREP) + 1
    for s in ("train", "valid", "test"):
        assert torch.equal(getattr(a, s), getattr(b, s))
        assert getattr(a, s).dtype == torch.long
    eos = a.vocab.index("<eos>")
    assert int((a.train == eos).sum()) == 3000 and int((a.valid == eos).sum()) == 150
    assert b.paths["train"].name == "ptb.train.txt.gz"


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("HWRNN_PTB", raising=False)
    with pytest.raises(DataError, match="no data: pass --data or set HWRNN_PTB"):
        resolve_data_dir(None)
    monkeypatch.setenv("HWRNN_PTB", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir("/x/y") .as_posix() == "/x/y"


def test_data_errors(tmp_path, corpus_dir):
    with pytest.raises(DataError, match="data directory not found"):
        load_ptb(tmp_path / "nope")

    def fresh(name):
        d = tmp_path / name
        d.mkdir()
        for s in ("train", "valid", "test"):
            (d / f"ptb.{s}.txt").write_bytes((corpus_dir / f"ptb.{s}.txt").read_bytes())
        return d

    d = fresh("missing")
    (d / "ptb.valid.txt").unlink()
    with pytest.raises(DataError, match=r"ptb\.valid\.txt"):
        load_ptb(d)
    d = fresh("empty")
    (d / "ptb.test.txt").write_text("\n \n")
    with pytest.raises(DataError, match=r"ptb\.test\.txt is empty"):
        load_ptb(d)
    d = fresh("binary")
    (d / "ptb.train.txt").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(DataError, match=r"ptb\.train\.txt is not"):
        load_ptb(d)
    d = fresh("latin1")
    (d / "ptb.train.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"ptb\.train\.txt is not UTF-8"):
        load_ptb(d)
    d = fresh("badgz")
    (d / "ptb.valid.txt").unlink()
    (d / "ptb.valid.txt.gz").write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    with pytest.raises(DataError, match=r"ptb\.valid\.txt\.gz"):
        load_ptb(d)
    d = fresh("oov")
    (d / "ptb.test.txt").write_text("the cat sees a zebra\n")
    with pytest.raises(DataError, match=r"ptb\.test\.txt has 1 word.*'zebra'"):
        load_ptb(d)
    # every DataError is a ValueError with a one-line message
    try:
        load_ptb(d)
    except ValueError as exc:
        assert "\n" not in str(exc)


def test_batchify_and_bptt():
    data = torch.arange(103)
    b = batchify(data, 4)
    assert b.shape == (25, 4) and b[:, 1].tolist() == list(range(25, 50))
    batches = list(iter_bptt(b, 7))
    assert len(batches) == num_bptt_batches(b, 7) == 4
    idx, x, y = batches[-1]
    assert idx == 3 and x.shape == (3, 4) and torch.equal(y, b[22:25].reshape(-1))
    assert [i for i, _, _ in iter_bptt(b, 7, start_batch=2)] == [2, 3]
    with pytest.raises(ValueError):
        batchify(torch.arange(5), 4)


# ----------------------------------------------------------------------------------------- model
def test_model_parameter_names_and_trace():
    torch.manual_seed(0)
    cfg = LMConfig(vocab=11, hidden=6, input=5, wbits=2, abits=2)
    assert cfg.gamma == 2.5 and LMConfig(vocab=3, hidden=2, wbits=1).gamma == 2.0
    m = QuantLSTMLM(cfg)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"embedding.weight": (11, 5), "rnn.weight": (24, 11), "rnn.bias": (24,),
                      "decoder.weight": (11, 6), "decoder.bias": (11,)}
    m.eval()
    toks = torch.tensor([1, 4, 2, 9, 0, 3])
    tr = m.step_trace(toks)                     # float64
    # compare in float64: in float32 a value next to a rounding boundary of Q_a may flip code
    logits, (h, c) = m.double()(toks.view(-1, 1))
    assert torch.allclose(tr["logits"], logits, rtol=0, atol=1e-12)
    assert torch.equal(tr["h"][-1], h[0]) and torch.allclose(tr["c"][-1], c[0], rtol=0, atol=1e-12)
    # h and x lie on the 2-bit grid; i, f, g, o are gate slices of sigmoid(z)
    for key in ("h", "x"):
        assert torch.equal(tr[key] * 3, torch.round(tr[key] * 3))
    assert torch.equal(tr["f"], torch.sigmoid(tr["z"][:, 6:12]))
    with pytest.raises(ValueError):
        LMConfig(vocab=10, hidden=4, wbits=9)
    half = QuantLSTMLM(LMConfig(vocab=5, hidden=3, abits=2, init_state="half")).init_hidden(2)
    assert torch.allclose(half[0], torch.full((2, 3), 2 / 3))   # h0 = Q_2(0.5) = 2/3
    assert torch.equal(half[1], torch.full((2, 3), 0.5))        # c0 = 0.5 (hwrnn.config)


# -------------------------------------------------------------------------------------- training
def test_train_float_and_quantized(corpus_dir, tmp_path):
    data = load_ptb(corpus_dir)
    vocab_size = len(data.vocab)
    counts = torch.bincount(data.train, minlength=vocab_size).double()
    unigram_ppl = math.exp(-(counts / counts.sum())[data.test].log().mean().item())  # ~12.9
    results = {}
    for name, extra in (("float", {}), ("w2a2", dict(wbits=2, abits=2))):
        out = tmp_path / name
        s = train(data=str(corpus_dir), out=str(out), **QUICK, **extra)
        assert not s["interrupted"] and s["epochs_done"] == 1
        # learnt more than the unigram statistics (which the decoder bias alone could fit)
        assert math.isfinite(s["test_ppl"]) and s["test_ppl"] < min(vocab_size, unigram_ppl)
        rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert rec[0]["epoch"] == 1 and rec[-1]["event"] == "test"
        model, vocab, meta = load_lm_checkpoint(out / "best.pt")
        assert vocab == load_ptb(corpus_dir).vocab and meta["epoch"] == 1
        assert model.cfg.wbits == extra.get("wbits")
        assert evaluate(model, data.valid, 10, 20) == pytest.approx(meta["valid_ppl"], rel=1e-6)
        results[name] = s["test_ppl"]
    assert results["float"] < 0.6 * unigram_ppl


def test_resume_is_exact(corpus_dir, tmp_path):
    opts = dict(QUICK, data=str(corpus_dir), epochs=2, dropout=0.2, wbits=2, abits=2,
                optimizer="adam", checkpoint_every=7)
    full = train(out=str(tmp_path / "full"), **opts)
    # interrupted mid-epoch twice, then run to the end
    part = tmp_path / "part"
    s1 = train(out=str(part), max_batches=13, **opts)
    assert s1["interrupted"] and not (part / "best.pt").exists()
    ck = torch.load(part / "last.pt", weights_only=True)
    assert ck["epoch"] == 0 and ck["batch"] == 13
    s2 = train(out=str(part), max_batches=100, **opts)      # crosses the epoch boundary
    assert s2["interrupted"]
    s3 = train(out=str(part), resume=True, **opts)
    assert not s3["interrupted"] and s3["epochs_done"] == 2
    assert s3["test_ppl"] == full["test_ppl"]
    assert _same_state(_state(part / "last.pt"), _state(tmp_path / "full" / "last.pt"))
    # stopping exactly at an epoch's last batch validates and checkpoints that epoch first
    from sw_ref.data import batchify, load_ptb, num_bptt_batches
    nb = num_bptt_batches(batchify(load_ptb(corpus_dir).train, opts["batch_size"]), opts["bptt"])
    ex = tmp_path / "exact"
    s5 = train(out=str(ex), max_batches=nb, **opts)
    assert s5["interrupted"] and s5["epochs_done"] == 1 and (ex / "best.pt").exists()
    assert torch.load(ex / "last.pt", weights_only=True)["epoch"] == 1
    s6 = train(out=str(ex), **opts)
    assert s6["epochs_done"] == 2 and s6["test_ppl"] == full["test_ppl"]
    # epoch 1, then continue to epoch 2
    ep = tmp_path / "ep"
    train(out=str(ep), **dict(opts, epochs=1))
    assert torch.load(ep / "last.pt", weights_only=True)["epoch"] == 1
    s4 = train(out=str(ep), **opts)
    assert s4["epochs_done"] == 2 and s4["test_ppl"] == full["test_ppl"]
    assert _same_state(_state(ep / "last.pt"), _state(tmp_path / "full" / "last.pt"))
    # a different model config or batch size cannot resume the run
    with pytest.raises(TrainError, match="different model config"):
        train(out=str(ep), **dict(opts, hidden=8))
    with pytest.raises(TrainError, match="batch_size"):
        train(out=str(ep), **dict(opts, batch_size=5))
    with pytest.raises(TrainError, match="no checkpoint"):
        train(out=str(tmp_path / "none"), resume=True, **opts)


def test_init_from_float_checkpoint(corpus_dir, tmp_path):
    fl = tmp_path / "float"
    train(data=str(corpus_dir), out=str(fl), **QUICK)
    q = tmp_path / "q"
    # one batch with a negligible learning rate: the weights are the float checkpoint's
    train(data=str(corpus_dir), out=str(q), init_from=str(fl / "best.pt"), max_batches=1,
          lr=1e-12, **dict(QUICK, wbits=2, abits=2))
    a, b = _state(fl / "best.pt"), _state(q / "last.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-9) for k in a)
    s = train(data=str(corpus_dir), out=str(tmp_path / "q2"), init_from=str(fl / "best.pt"),
              **dict(QUICK, wbits=4, abits=4))
    assert math.isfinite(s["test_ppl"])
    with pytest.raises(TrainError, match=r"parameter \S+ has shape \[16, 16\]"):
        train(data=str(corpus_dir), out=str(tmp_path / "bad"), init_from=str(fl / "best.pt"),
              **dict(QUICK, hidden=8))


def test_checkpoint_errors(tmp_path, corpus_dir):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_lm_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*not a PyTorch checkpoint") as ei:
        load_lm_checkpoint(junk)
    assert "\n" not in str(ei.value)
    truncated = tmp_path / "truncated.pt"
    torch.save({"weights": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-300])  # the zip's central directory cut off
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*not a PyTorch checkpoint"):
        load_lm_checkpoint(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not an hwrnn LM checkpoint"):
        load_lm_checkpoint(other)
    with pytest.raises(CheckpointError):
        train(data=str(corpus_dir), out=str(tmp_path / "x"), init_from=str(junk), **QUICK)
    with pytest.raises(TrainError, match="--out"):
        train(data=str(corpus_dir), **QUICK)
    with pytest.raises(DataError, match="data directory not found"):
        train(data=str(tmp_path / "nodata"), out=str(tmp_path / "y"), **QUICK)


def test_set_threads_caps_torch_and_numpy_blas():
    """--threads caps numpy's BLAS too (the integer model's products), not only torch; in a child
    process so that this test's caps do not leak into the others."""
    import subprocess
    import sys
    code = ("import torch, threadpoolctl; from sw_ref.train import set_threads; set_threads(1); "
            "blas = [p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']; "
            "import json; print(json.dumps([torch.get_num_threads(), blas]))")
    torch_threads, blas = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                    check=True).stdout)
    assert torch_threads == 1
    assert blas and all(n == 1 for n in blas), blas
