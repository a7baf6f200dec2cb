"""PTB at character level (sw_ref.data level="char"): tokenization, vocabulary, errors, bits per
character in train/eval/experiment/table, the integer model at char level, resume points. Tiny
generated corpora only (tests/tiny_corpus.py), never the real data."""
import json
import math

import pytest
import torch

from sw_ref.data import CHAR_SPACE, EOS, DataError, bpc, load_ptb, tokenize_text

QUICK = ["--batch-size", 10, "--bptt", 50, "--dropout", 0, "--threads", 1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _main(capsys, *args):
    from sw_ref.__main__ import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------ tokenization
def test_char_tokens_of_a_text():
    """Words joined by '_' (leading, trailing and repeated spaces vanish), one token per character,
    <eos> ending every line (an empty line is just <eos>); <unk> is its five characters."""
    text = " the cat sees  a dog \n\n n.v. <unk> N \n"
    assert tokenize_text(text, "char") == [*"the_cat_sees_a_dog", EOS, EOS, *"n.v._<unk>_N", EOS]
    assert tokenize_text(text) == ["the", "cat", "sees", "a", "dog", EOS, EOS, "n.v.", "<unk>", "N", EOS]
    assert CHAR_SPACE == "_"


def test_char_corpus_from_the_word_files(tiny_corpus):
    words, chars = load_ptb(tiny_corpus), load_ptb(tiny_corpus, "char")
    assert words.level == "word" and chars.level == "char"
    assert chars.vocab == sorted(chars.vocab) and {EOS, "_", "t", "h", "e"} <= set(chars.vocab)
    assert len(chars.vocab) < 30 and all(len(t) == 1 for t in chars.vocab if t != EOS)
    for split in ("train", "valid", "test"):
        w = [words.vocab[i] for i in getattr(words, split).tolist()]
        c = [chars.vocab[i] for i in getattr(chars, split).tolist()]
        # the same lines: the char stream is the word stream with '_' between the words of a line
        lines_w = " ".join(w).split(EOS)
        lines_c = "".join(t if t != EOS else "\n" for t in c).split("\n")
        assert [ln.split() for ln in lines_w] == [ln.split("_") if ln else [] for ln in lines_c]
        assert c.count(EOS) == w.count(EOS)


def test_char_data_errors_are_one_line(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ptb.train.txt").write_text(" a b \n")
    (d / "ptb.valid.txt").write_text(" a z \n")
    (d / "ptb.test.txt").write_text(" b a \n")
    with pytest.raises(DataError, match=r"ptb.valid.txt has 1 character\(s\) not in the train vocabulary: 'z'") as e:
        load_ptb(d, "char")
    assert "\n" not in str(e.value)
    (d / "ptb.valid.txt").write_text(" a \n")
    assert load_ptb(d, "char").vocab == [EOS, "_", "a", "b"]
    (d / "ptb.test.txt").write_text(" a_b \n")
    with pytest.raises(DataError, match=r"ptb.test.txt holds '_', the character-level space symbol") as e:
        load_ptb(d, "char")
    with pytest.raises(DataError, match=r"level must be one of \('word', 'char'\), got 'chars'"):
        load_ptb(d, "chars")
    (d / "ptb.train.txt").write_text(" a b a_b \n")
    assert "a_b" in load_ptb(d).vocab  # the word level reads '_' as any other character


def test_bpc_is_nats_per_character_over_ln2():
    assert bpc(math.log(2.0)) == 1.0 and abs(bpc(math.log(4.4)) - math.log2(4.4)) < 1e-15


# ---------------------------------------------------------------------------- train, eval, experiment
@pytest.fixture(scope="module")
def char_run(tiny_corpus, tmp_path_factory):
    """A char-level W2A2 ternary LSTM (hidden 16) trained one epoch on 20000 characters."""
    from sw_ref.train import train

    out = tmp_path_factory.mktemp("char_run")
    n = torch.get_num_threads()
    try:
        s = train(data=str(tiny_corpus), out=str(out), level="char", weight_code="ternary", abits=2, hidden=16,
                  epochs=1, batch_size=10, bptt=50, dropout=0.0, threads=1, checkpoint_every=0, log_every=0,
                  progress=False, max_train_tokens=20000)
    finally:
        torch.set_num_threads(n)
    return out, s


def test_train_reports_bits_per_character(char_run):
    out, s = char_run
    assert s["level"] == "char" and s["test_bpc"] == pytest.approx(math.log2(s["test_ppl"]), rel=1e-12)
    assert s["best_valid_bpc"] == pytest.approx(math.log2(s["best_valid_ppl"]), rel=1e-12)
    assert 0 < s["test_bpc"] < math.log2(30)  # below a uniform guess over the characters
    ck = torch.load(out / "best.pt", weights_only=True)
    assert ck["level"] == "char" and len(ck["vocab"]) < 30
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "valid_bpc" in metrics[0] and metrics[-1]["test_bpc"] == s["test_bpc"]


def test_eval_integer_model_at_char_level(char_run, tiny_corpus, capsys):
    from sw_ref.data import load_ptb as load
    from sw_ref.export import IntegerLM, layer_from_model
    from sw_ref.train import evaluate_loss, load_lm_checkpoint

    out, s = char_run
    code, stdout, err = _main(capsys, "eval", "--checkpoint", out / "best.pt", "--data", tiny_corpus, "--integer",
                              "--json", "--threads", 1)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["level"] == "char" and res["weight_code"] == "ternary"
    assert res["model_bpc"] == pytest.approx(s["test_bpc"], rel=1e-6)  # float32, other bptt windows
    # close (this briefly trained model's float c passes the integer cell's saturation at +-8 now and then)
    assert res["bpc"] == res["integer_bpc"] and abs(res["integer_bpc"] - res["model_bpc"]) < 0.05
    # the integer model's BPC is its mean NLL per character / ln 2
    model, _, _ = load_lm_checkpoint(out / "best.pt")
    test = load(tiny_corpus, "char").test
    total, count = IntegerLM(model, layer_from_model(model)).nll(test.numpy())
    assert count == res["tokens"] == evaluate_loss(model, test)[1]
    assert res["integer_bpc"] == pytest.approx(total / count / math.log(2), rel=1e-12)
    code, stdout, err = _main(capsys, "eval", "--checkpoint", out / "best.pt", "--data", tiny_corpus, "--threads", 1)
    assert code == 0 and stdout.startswith("test bits per character: "), stdout + err
    # a char checkpoint at word level is refused in one line
    code, stdout, err = _main(capsys, "eval", "--checkpoint", out / "best.pt", "--data", tiny_corpus, "--level", "word")
    assert code == 2 and err.strip().splitlines() == [
        f"sw_ref eval: error: {out / 'best.pt'} was trained at char level, not word"]


def test_resume_at_another_level_is_refused(char_run, tiny_corpus):
    from sw_ref.train import TrainError, train

    out, _ = char_run
    with pytest.raises(TrainError, match="written at char level, now word"):
        train(data=str(tiny_corpus), out=str(out), weight_code="ternary", abits=2, hidden=16, epochs=2,
              batch_size=10, bptt=50, dropout=0.0, threads=1, max_train_tokens=20000)


def test_experiment_and_table_at_char_level(tiny_corpus, tmp_path, capsys):
    res_file, exp = tmp_path / "ptb.json", tmp_path / "exp"
    code, out, err = _main(capsys, "experiment", "--data", tiny_corpus, "--out", exp, "--results", res_file,
                           "--level", "char", "--weight-code", "ternary", "--hidden", 8, "--abits", 2, "--epochs", 1,
                           "--max-train-tokens", 10000, "--threads", 1, "--dropout", 0, "--batch-size", 8, "--bptt", 60)
    assert code == 0, err
    e = json.loads(res_file.read_text())["runs"]["char W2A2@8 ternary"]
    assert e["level"] == "char" and e["recipe"]["level"] == "char" and e["finished"]
    assert (e["recipe"]["batch_size"], e["recipe"]["bptt"]) == (8, 60)
    for which in ("model", "integer"):
        for split in ("valid", "test"):
            assert e[f"{which}_bpc"][split] == pytest.approx(math.log2(e[f"{which}_ppw"][split]), rel=1e-12)
    code, out, err = _main(capsys, "table", "--results", res_file, "-o", tmp_path / "t.md")
    row = next(r for r in out.splitlines() if r.startswith("| char W2A2@8 ternary |"))
    cells = [c.strip() for c in row.split("|")]
    assert code == 0 and all(c.endswith(" bpc") for c in cells[7:11]), row
    assert cells[12:15] == ["-", "-", "-"] and "char: PTB at character level" in out
    # measuring the run at word level is refused (its checkpoint is a char-level model)
    code, out, err = _main(capsys, "experiment", "--data", tiny_corpus, "--out", exp, "--results", res_file,
                           "--weight-code", "ternary", "--hidden", 8, "--abits", 2, "--epochs", 1, "--eval-only")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "holds a char-level model" in err, err


@pytest.mark.parametrize("cmd", ["train", "experiment"])
def test_bad_level_is_one_line(cmd, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "r"
    extra = ["--results", tmp_path / "p.json"] if cmd == "experiment" else []
    code, _, err = _main(capsys, cmd, "--data", tiny_corpus, "--out", out, "--level", "chars", "--hidden", 8, *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "level must be one of ('word', 'char'), got 'chars'" in err and not out.exists()


def test_resume_point_keeps_the_level(char_run, tmp_path):
    from sw_ref import resume_point

    out, _ = char_run
    resume_point.pack(out, tmp_path / "p.pt")
    resume_point.unpack(tmp_path / "p.pt", tmp_path / "u")
    assert torch.load(tmp_path / "u" / "last.pt", weights_only=True)["level"] == "char"
