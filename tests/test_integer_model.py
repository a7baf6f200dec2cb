"""The integer model against the float quantized training model, and the train/eval/export chain.

Contract asserted here (the two models differ only by the LUT resolution, the fixed-point cell
and the fixed-point scale, none of which the training model has):
* pre-activations agree within the z-format resolution plus the scale rounding: |z_int - z| <= 2**-z_frac;
* h codes agree exactly on at least 97 % of units and never by more than one code;
* the perplexity of the integer LM is within 1 % of the training model's.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch

from hwrnn import load_layer
from hwrnn.quant import activation_codes, levels
from sw_ref.export import IntegerLM, layer_from_model
from hwrnn.integer_model import IntegerLSTM
from sw_ref.train import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_integer_model_tracks_the_training_model(tiny_trained):
    _, model = tiny_trained
    layer = layer_from_model(model)
    cfg = layer.cfg
    rng = np.random.default_rng(0)
    tokens = torch.as_tensor(rng.integers(0, model.cfg.vocab, 60))
    tr = model.step_trace(tokens)  # float64 trace of the training model
    # identical input codes
    x_codes = activation_codes(tr["x"].numpy(), cfg.abits)
    np.testing.assert_array_equal(x_codes / levels(cfg.abits), tr["x"].numpy())
    int_model = IntegerLSTM(layer)
    st = int_model.initial_state(1)
    z_err, h_same, h_total, h_maxdiff = 0.0, 0, 0, 0
    Ka = levels(cfg.abits)
    for t in range(len(tokens)):
        # drive the integer model with the training model's previous h so the per-step error is measured
        if t > 0:
            st.h[0] = np.rint(tr["h"][t - 1].numpy() * Ka).astype(np.int64)
            st.c[0] = np.clip(np.rint(tr["c"][t - 1].numpy() * 2 ** cfg.cell_format.frac_bits), -2 ** 13, 2 ** 13 - 1)
        new, taps = int_model.step(x_codes[t:t + 1], st, trace=True)
        z_err = max(z_err, float(np.abs(taps["z"][0] / 2 ** cfg.z_frac - tr["z"][t].numpy()).max()))
        h_ref = np.rint(tr["h"][t].numpy() * Ka).astype(np.int64)
        h_same += int(np.sum(new.h[0] == h_ref))
        h_total += h_ref.size
        h_maxdiff = max(h_maxdiff, int(np.abs(new.h[0] - h_ref).max()))
        st = new
    assert z_err <= 2.0 ** -cfg.z_frac, z_err
    assert h_maxdiff <= 1
    assert h_same / h_total >= 0.97, h_same / h_total


def test_integer_lm_perplexity_close(tiny_trained, tiny_corpus):
    from sw_ref.data import load_ptb

    _, model = tiny_trained
    corpus = load_ptb(tiny_corpus)
    ppl = evaluate(model, corpus.test)
    ilm = IntegerLM(model, layer_from_model(model))
    ippl = ilm.perplexity(corpus.test.numpy())
    assert math.isfinite(ippl) and abs(ippl - ppl) / ppl < 0.01, (ppl, ippl)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sw_ref", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def test_cli_eval_export_end_to_end(tiny_trained, tiny_corpus, tmp_path):
    run, model = tiny_trained
    r = _cli("eval", "--checkpoint", run / "best.pt", "--data", tiny_corpus, "--integer", "--json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert math.isfinite(res["ppw"]) and res["ppw"] == res["integer_ppw"] and abs(res["gap_percent"]) < 1.0
    out = tmp_path / "layer.npz"
    r = _cli("export", "--checkpoint", run / "best.pt", "-o", out)
    assert r.returncode == 0, r.stderr
    layer = load_layer(out)
    np.testing.assert_array_equal(layer.codes, layer_from_model(model).codes)


def test_cli_errors_are_one_line(tmp_path, tiny_corpus):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for args in (["eval", "--checkpoint", bad, "--data", tiny_corpus],
                 ["export", "--checkpoint", tmp_path / "missing.pt"],
                 ["eval", "--checkpoint", bad, "--data", tmp_path / "nodata"],
                 ["train", "--data", tmp_path / "nodata", "--out", tmp_path / "r", "--hidden", "8"],
                 ["train", "--data", tiny_corpus, "--out", tmp_path / "r2", "--wbits", "0"]):
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_float_model_cannot_be_exported(tiny_corpus, tmp_path):
    from sw_ref.train import train

    train(data=str(tiny_corpus), out=str(tmp_path / "f"), hidden=8, epochs=1, batch_size=10, bptt=20,
          dropout=0.0, threads=1, checkpoint_every=0, log_every=0, progress=False, max_batches=3)
    r = _cli("export", "--checkpoint", tmp_path / "f" / "last.pt")
    assert r.returncode == 2 and "quantized" in r.stderr


def test_training_with_the_hardware_cell_format(tiny_corpus, tmp_path):
    """--cell makes training round c like the hardware; export and the integer model pick it up."""
    from sw_ref.data import load_ptb
    from sw_ref.train import load_lm_checkpoint, train

    train(data=str(tiny_corpus), out=str(tmp_path / "r"), hidden=8, wbits=2, abits=2, epochs=1, batch_size=10,
          bptt=20, dropout=0.0, threads=1, checkpoint_every=0, log_every=0, progress=False, cell="e5m2")
    model, _, _ = load_lm_checkpoint(tmp_path / "r" / "best.pt")
    assert model.cfg.cell == "e5m2"
    layer = layer_from_model(model)
    assert layer.cfg.cell == "e5m2"
    # every c of the training model is a value of the format
    from hwrnn.floatcell import FloatFormat, decode, encode_rne
    tr = model.step_trace(torch.arange(20) % model.cfg.vocab)
    c = tr["c"].numpy().ravel()
    np.testing.assert_array_equal(decode(FloatFormat(5, 2), encode_rne(FloatFormat(5, 2), c)), c)
    corpus = load_ptb(tiny_corpus)
    ppl = evaluate(model, corpus.test)
    ippl = IntegerLM(model, layer).perplexity(corpus.test.numpy())
    assert abs(ippl - ppl) / ppl < 0.01, (ppl, ippl)


def test_resume_accepts_checkpoints_without_newer_config_fields(tiny_corpus, tmp_path):
    from sw_ref.train import train

    kw = dict(data=str(tiny_corpus), out=str(tmp_path / "r"), hidden=8, wbits=2, abits=2, batch_size=10, bptt=20,
              dropout=0.0, threads=1, checkpoint_every=0, log_every=0, progress=False)
    train(epochs=1, max_batches=2, **kw)
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    del ck["config"]["cell"]  # as written before the field existed
    torch.save(ck, tmp_path / "r" / "last.pt")
    s = train(epochs=1, **kw)
    assert s["epochs_done"] == 1 and not s["interrupted"]
