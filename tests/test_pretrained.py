"""Shipped trained layers: `sw_ref ship` writes package data from a results entry, rtl_gen builds it
by default for exactly its configuration (random weights with --random or for any other config),
and the shipped W4A2 H=450 PTB layer agrees with its recorded provenance and results/ptb.json."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hwrnn import LayerConfig, pretrained
from hwrnn.checkpoint import load_layer
from rtl_gen.__main__ import parse_args, resolve
from sw_ref.experiment import run_experiment

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(batch_size=10, bptt=20, dropout=0.0, threads=1, checkpoint_every=0, log_every=0, progress=False)


def test_ship_writes_layer_and_provenance_and_rtl_gen_uses_it(tiny_corpus, tmp_path, monkeypatch):
    res = tmp_path / "ptb.json"
    e = run_experiment(str(tiny_corpus), tmp_path / "run", wbits=2, abits=2, hidden=8, epochs=1, results=res,
                       command="test", **QUICK)
    data = tmp_path / "data"
    from sw_ref.__main__ import main as sw_main
    assert sw_main(["ship", "--entry", "W2A2@8", "--results", str(res), "--name", "tiny", "--data-dir", str(data),
                    "--data", str(tiny_corpus)]) == 0
    rec = json.loads((data / "tiny.json").read_text())
    assert rec["integer_test_ppw"] == e["integer_ppw"]["test"] and rec["epochs_done"] == 1
    # the shipped LM (decoder as int8 with row scales) is measured on its own; int8 moves it only slightly
    assert rec["lm_file"] == "tiny.lm.npz" and rec["decoder_precision"] == "int8 per-row scale"
    assert rec["shipped_test_ppw"] == pytest.approx(e["integer_ppw"]["test"], rel=5e-3)
    layer = load_layer(data / "tiny.npz")
    assert LayerConfig.from_dict(rec["config"]) == layer.cfg
    # rtl_gen: the shipped layer for exactly its config, random otherwise or with --random
    monkeypatch.setattr(pretrained, "DATA_DIR", data)
    got, _fold, source = resolve(parse_args(["--wbits", "2", "--abits", "2", "--hidden", "8"]))
    assert np.array_equal(got.codes, layer.codes) and got.mult == layer.mult and "trained PTB layer" in source
    rnd, _fold, source = resolve(parse_args(["--wbits", "2", "--abits", "2", "--hidden", "8", "--random"]))
    assert not np.array_equal(rnd.codes, layer.codes) and source.startswith("random")
    other, _fold, source = resolve(parse_args(["--wbits", "2", "--abits", "2", "--hidden", "8", "--cell", "fp16"]))
    assert source.startswith("random")


def test_eval_pretrained_remeasures_the_shipped_figure_exactly(tiny_corpus, tmp_path, monkeypatch, capsys):
    """`sw_ref eval --pretrained` needs nothing but the package data and the corpus: it prints the
    figure `ship` recorded, bit for bit, and refuses a corpus with another vocabulary or a damaged file."""
    res = tmp_path / "ptb.json"
    run_experiment(str(tiny_corpus), tmp_path / "run", wbits=4, abits=2, hidden=8, epochs=1, results=res,
                   command="test", **QUICK)
    data = tmp_path / "data"
    from sw_ref.__main__ import main as sw_main
    assert sw_main(["ship", "--entry", "W4A2@8", "--results", str(res), "--name", "tiny", "--data-dir", str(data),
                    "--data", str(tiny_corpus)]) == 0
    rec = json.loads((data / "tiny.json").read_text())
    monkeypatch.setattr(pretrained, "DATA_DIR", data)
    capsys.readouterr()
    assert sw_main(["eval", "--pretrained", "--data", str(tiny_corpus), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["ppw"] == rec["shipped_test_ppw"] == got["recorded_ppw"] and got["entry"] == "W4A2@8"
    assert sw_main(["eval", "--pretrained", "tiny", "--data", str(tiny_corpus)]) == 0
    out = capsys.readouterr().out
    assert f"test perplexity per word: {rec['shipped_test_ppw']:.2f}" in out and "recorded when shipped" in out
    # the stored head: uint8 codes within the layer's activation range, int8 decoder of the layer's width
    layer, head = pretrained.load_lm(rec)
    assert head.embedding_codes.shape == (len(head.vocab), 8) and head.embedding_codes.max() <= 3
    assert head.decoder_weight.shape == (len(head.vocab), 8)
    assert np.array_equal(head.decoder_weight, head.stored().decoder_weight)
    # bad input: one line each
    assert sw_main(["eval", "--pretrained", "other", "--data", str(tiny_corpus)]) == 2
    assert "no shipped language model 'other' (shipped: tiny)" in capsys.readouterr().err
    other = tmp_path / "other_corpus"
    other.mkdir()
    for split in ("train", "valid", "test"):
        (other / f"ptb.{split}.txt").write_text("a b c d\n" * 20)
    assert sw_main(["eval", "--pretrained", "--data", str(other)]) == 2
    assert "vocabulary of the shipped model W4A2@8 does not match" in capsys.readouterr().err
    (data / "tiny.lm.npz").write_bytes((data / "tiny.lm.npz").read_bytes()[:300])
    assert sw_main(["eval", "--pretrained", "--data", str(tiny_corpus)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "language-model file" in err and "corrupt or truncated" in err


def test_decoder_int8_rows_round_to_nearest_and_requantize_to_themselves():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (40, 17))
    w[5] = 0.0  # a zero row: scale 0, codes 0
    w[7, 3] = -4.0  # a row whose extreme is negative
    codes, scale = pretrained.quantize_decoder(w)
    assert codes.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (40,)
    assert np.abs(codes).max() == 127 and codes[7, 3] == -127 and not codes[5].any() and scale[5] == 0
    back = pretrained.dequantize_decoder(codes, scale)
    assert np.all(np.abs(back - w) <= scale.astype(np.float64)[:, None] / 2 * (1 + 1e-6))  # nearest code
    c2, s2 = pretrained.quantize_decoder(back)
    assert np.array_equal(c2, codes) and np.array_equal(s2, scale)


def test_lm_file_of_another_version_or_damaged_decoder_is_one_line(tmp_path):
    cfg = LayerConfig(wbits=2, abits=2, hidden=8, input=6)
    V = 5
    good = dict(format=np.array(pretrained.LM_FORMAT_NAME), version=np.array(2, dtype=np.int64),
                embedding_codes=np.zeros((V, 6), np.uint8), decoder_codes=np.ones((V, 8), np.int8),
                decoder_scale=np.full(V, 0.5, np.float32), decoder_bias=np.zeros(V, np.float32),
                vocab=np.array([str(i) for i in range(V)]))
    np.savez_compressed(tmp_path / "ok.npz", **good)
    assert pretrained.load_head(tmp_path / "ok.npz", cfg).decoder_weight[0, 0] == 0.5
    cases = [({"version": np.array(1, dtype=np.int64)}, "format version 1 is not supported"),
             ({"decoder_codes": np.ones((V, 8), np.float16)}, "decoder_codes has dtype float16, expected int8"),
             ({"decoder_scale": np.full(V - 1, 0.5, np.float32)}, "do not pair up"),
             ({"decoder_scale": np.full(V, np.nan, np.float32)}, "decoder_scale must be finite"),
             ({"decoder_codes": np.full((V, 8), -128, np.int8)}, "outside -127..127")]
    for change, msg in cases:
        np.savez_compressed(tmp_path / "bad.npz", **{**good, **change})
        with pytest.raises(pretrained.CheckpointError, match=msg):
            pretrained.load_head(tmp_path / "bad.npz", cfg)
    bad = {k: v for k, v in good.items() if k != "decoder_scale"}
    np.savez_compressed(tmp_path / "bad.npz", **bad)
    with pytest.raises(pretrained.CheckpointError, match="missing decoder_scale"):
        pretrained.load_head(tmp_path / "bad.npz", cfg)


def test_lm_head_checks_its_layer(tmp_path):
    cfg = LayerConfig(wbits=2, abits=2, hidden=8, input=6)
    V = 5
    head = pretrained.LMHead(np.zeros((V, 6), np.int64), np.zeros((V, 8)), np.zeros(V), [str(i) for i in range(V)])
    head.check(cfg)
    bad = [pretrained.LMHead(np.full((V, 6), 4), head.decoder_weight, head.decoder_bias, head.vocab),
           pretrained.LMHead(head.embedding_codes, np.zeros((V, 7)), head.decoder_bias, head.vocab),
           pretrained.LMHead(head.embedding_codes, np.full((V, 8), np.nan), head.decoder_bias, head.vocab),
           pretrained.LMHead(np.zeros((V, 5), np.int64), head.decoder_weight, head.decoder_bias, head.vocab)]
    for h, msg in zip(bad, ["out of range 0..3", "decoder has shapes", "NaN", "embedding codes have shape"]):
        with pytest.raises(pretrained.CheckpointError, match=msg):
            h.check(cfg)


def test_ship_rejects_bad_entries(tiny_corpus, tmp_path, capsys):
    res = tmp_path / "ptb.json"
    run_experiment(str(tiny_corpus), tmp_path / "run", wbits=None, abits=None, hidden=8, epochs=1, results=res,
                   command="test", **QUICK)
    from sw_ref.__main__ import main as sw_main
    assert sw_main(["ship", "--entry", "W4A2@450", "--results", str(res), "--data-dir", str(tmp_path)]) == 2
    assert "has no entry 'W4A2@450'" in capsys.readouterr().err
    assert sw_main(["ship", "--entry", "float@8", "--results", str(res), "--data-dir", str(tmp_path)]) == 2
    assert "float run cannot be shipped" in capsys.readouterr().err


def test_shipped_headline_layer_matches_its_provenance():
    recs = {r["file"]: r for r in pretrained.shipped()}
    if "ptb_w4a2_h450.npz" not in recs:
        pytest.skip("no trained W4A2 H=450 layer shipped yet")
    rec = recs["ptb_w4a2_h450.npz"]
    layer = pretrained.load(rec)
    c = layer.cfg
    assert (c.wbits, c.abits, c.hidden, c.input) == (4, 2, 450, 450)
    assert (pretrained.DATA_DIR / rec["file"]).stat().st_size < 2_000_000
    # the whole inference model ships with it (issue 16: at most 12 MB), its figure measured as stored
    assert rec.get("lm_file") and rec["decoder_precision"] == pretrained.DECODER_PRECISION
    assert (pretrained.DATA_DIR / rec["file"]).stat().st_size + (pretrained.DATA_DIR / rec["lm_file"]).stat().st_size \
        <= 12 * 2 ** 20
    _layer, head = pretrained.load_lm(rec)
    assert len(head.vocab) == 10000 and head.embedding_codes.shape == (10000, 450)
    assert abs(rec["shipped_test_ppw"] - rec["integer_test_ppw"]) < 0.01 * rec["integer_test_ppw"]
    # the same figures as the results entry it came from (or the entry has moved on to later epochs
    # of the same run, which keeps training after a layer ships)
    entry = json.loads((ROOT / "results" / "ptb.json").read_text())["runs"][rec["entry"]]
    assert entry["run_dir"].endswith(rec["run"]) and entry["recipe"] == rec["recipe"]
    if entry["best_epoch"] == rec["best_epoch"]:
        assert rec["integer_test_ppw"] == entry["integer_ppw"]["test"]
    else:
        assert entry["best_epoch"] > rec["best_epoch"]
    # and rtl_gen's default for the headline config is this layer
    got, _fold, source = resolve(parse_args(["--wbits", "4", "--abits", "2", "--hidden", "450"]))
    assert np.array_equal(got.codes, layer.codes) and source == pretrained.describe(rec)


def test_report_rebuilds_the_shipped_layer_from_its_source_line(tmp_path):
    """`rtl_gen report OUT --synth ...` rebuilds the layer an output directory was generated from;
    for the trained default that is the shipped layer named by pretrained.describe."""
    import numpy as np

    from hwrnn import pretrained
    from rtl_gen.report import rebuild_layer

    rec = pretrained.shipped()[0]
    want = pretrained.load(rec)
    manifest = {"config": rec["config"], "weights_source": pretrained.describe(rec),
                "scale": {"multiplier": want.mult, "shift": want.shift}}
    got = rebuild_layer(manifest, str(tmp_path))
    assert np.array_equal(got.codes, want.codes) and got.cfg == want.cfg
