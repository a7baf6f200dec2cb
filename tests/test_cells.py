"""The GRU, Ott GRU and vanilla-RNN cells of sw_ref (sw_ref.cells) beside the LSTM: shapes, a hand
computed float64 step of each, training, the integer model against the training model, the CLIs.
Tiny data only (tests/tiny_corpus.py)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hwrnn.config import LayerConfig
from hwrnn.gates import GateSet
from hwrnn.integer_model import IntegerLSTM
from hwrnn.quant import activation_codes, activation_value, levels, weight_codes, weight_value
from sw_ref.cells import CELL_TYPES, cell_class
from sw_ref.model import LMConfig, QuantLSTMLM, QuantRNNLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_CELLS = ("gru", "gru_ott", "rnn")
GATES = {"gru": ("u", "r", "g"), "gru_ott": ("u", "r", "g"), "rnn": ("g",)}
QUICK = dict(batch_size=10, bptt=20, dropout=0.0, threads=1, checkpoint_every=0, log_every=0, progress=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sw_ref", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}, timeout=600)


# ------------------------------------------------------------------------------------------ config
def test_cell_types_match_the_hwrnn_gate_sets():
    """Row blocks, gate order and cell state of each sw_ref cell are those of hwrnn.gates."""
    assert CELL_TYPES == ("lstm", "gru", "gru_ott", "rnn") and QuantLSTMLM is QuantRNNLM
    for ct in CELL_TYPES:
        cls, gs = cell_class(ct), GateSet.named(ct)
        assert cls.gates == gs.gates and cls.has_cell_state == gs.has_cell_state, ct
        assert cls.rows_for(7) == LayerConfig(wbits=2, abits=2, hidden=7, cell_type=ct).rows, ct


def test_config_cell_type_and_refusals():
    assert LMConfig(vocab=5, hidden=3).cell_type == "lstm"
    d = LMConfig(vocab=5, hidden=3, cell_type="gru").to_dict()
    assert d["cell_type"] == "gru" and LMConfig.from_dict(d).cell_type == "gru"
    old = LMConfig(vocab=5, hidden=3).to_dict()
    del old["cell_type"]  # a checkpoint written before the field existed
    assert LMConfig.from_dict(old).cell_type == "lstm"
    with pytest.raises(ValueError, match=r"cell_type must be one of \('lstm', 'gru', 'gru_ott', 'rnn'\), got 'lstmx'"):
        LMConfig(vocab=5, hidden=3, cell_type="lstmx")
    with pytest.raises(ValueError, match="applies to the LSTM only") as e:
        LMConfig(vocab=5, hidden=3, cell_type="gru", cell="fp16")
    assert "\n" not in str(e.value)
    from sw_ref.export import ExportError, layer_config

    gru = QuantRNNLM(LMConfig(vocab=5, hidden=3, wbits=2, abits=2, cell_type="gru"))
    assert layer_config(gru).cell_type == "gru" and layer_config(gru).rows == 9
    with pytest.raises(ExportError, match="applies to the LSTM only"):
        layer_config(gru, cell="fp16")  # eval/export --cell: the GRU has no cell state


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("ct", NEW_CELLS)
def test_forward_shapes_init_and_trace_keys(ct):
    torch.manual_seed(0)
    n = len(GATES[ct])
    m = QuantRNNLM(LMConfig(vocab=11, hidden=6, input=5, wbits=2, abits=2, cell_type=ct))
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"embedding.weight": (11, 5), "rnn.weight": (n * 6, 11), "rnn.bias": (n * 6,),
                      "decoder.weight": (11, 6), "decoder.bias": (11,)}
    assert torch.equal(m.rnn.bias, torch.zeros(n * 6)) and m.cell_state is None
    logits, (h, c) = m(torch.randint(0, 11, (7, 3)))
    assert logits.shape == (21, 11) and h.shape == (3, 6) and c.shape == (3, 0)
    assert torch.equal(h * 3, torch.round(h * 3))  # 2-bit codes
    logits.sum().backward()
    assert m.rnn.weight.grad is not None and torch.isfinite(m.rnn.weight.grad).all()
    m.eval()
    tr = m.step_trace(torch.tensor([1, 4, 2, 9]))
    keys = {"x", "z", *GATES[ct], "h", "logits"} | ({"rh"} if ct == "gru" else set())
    assert set(tr) == keys and tr["z"].shape == (4, n * 6) and tr["h"].shape == (4, 6)
    assert tr["h"].dtype == torch.float64
    logits, (h, c) = m.double()(torch.tensor([1, 4, 2, 9]).view(-1, 1))  # the batched forward, float64
    assert torch.allclose(tr["logits"], logits, rtol=0, atol=1e-12) and torch.equal(tr["h"][-1], h[0])
    # the reset state: h0 = Q_a(0.5) = 2/3 at 2 bits with 'half', no cell state
    h0, c0 = QuantRNNLM(LMConfig(vocab=5, hidden=3, abits=2, init_state="half", cell_type=ct)).init_hidden(2)
    assert torch.allclose(h0, torch.full((2, 3), 2 / 3)) and c0.shape == (2, 0)
    h0, c0 = QuantRNNLM(LMConfig(vocab=5, hidden=3, abits=2, cell_type=ct)).init_hidden(2)
    assert torch.equal(h0, torch.zeros(2, 3))


# ------------------------------------------------------------------------------- hand computed step
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _hand_trace(cfg, E, W, b, tokens, h0):
    """The contract of sw_ref.cells written out in numpy float64 (one sequence)."""
    H, X = cfg.hidden, cfg.input
    if cfg.abits is None:
        qa = lambda v: v  # noqa: E731
    else:
        qa = lambda v: activation_value(activation_codes(v, cfg.abits), cfg.abits)  # noqa: E731
    if cfg.wbits is None:
        Wq = np.tanh(W)
    else:
        n, s = weight_codes(W, cfg.wbits, cfg.gamma, True)
        Wq = weight_value(n, cfg.wbits, s)
    act = np.tanh if cfg.candidate == "tanh" else _sigmoid
    out = {k: [] for k in ("x", "z", "u", "r", "rh", "g", "h")}
    h = h0
    for tok in tokens:
        x = qa(np.clip(E[tok], 0.0, 1.0))
        xh = np.concatenate([x, h])
        if cfg.cell_type == "rnn":
            z = Wq @ xh + b
            g = act(z)
            h = qa(np.clip(g, 0.0, 1.0))
        else:
            zu = Wq[:H] @ xh + b[:H]
            zr = Wq[H:2 * H] @ xh + b[H:2 * H]
            u, r = _sigmoid(zu), _sigmoid(zr)
            Wg = Wq[2 * H:]
            if cfg.cell_type == "gru":
                rh = qa(r * h)
                zg = Wg[:, :X] @ x + Wg[:, X:] @ rh + b[2 * H:]
                out["rh"].append(rh)
            else:  # gru_ott: reset after the product
                zg = Wg[:, :X] @ x + b[2 * H:] + r * (Wg[:, X:] @ h)
            g = act(zg)
            h = qa(np.clip((1 - u) * h + u * g, 0.0, 1.0))
            z = np.concatenate([zu, zr, zg])
            out["u"].append(u)
            out["r"].append(r)
        for k, v in (("x", x), ("z", z), ("g", g), ("h", h)):
            out[k].append(v)
    return {k: np.array(v) for k, v in out.items() if v}


@pytest.mark.parametrize("ct", NEW_CELLS)
@pytest.mark.parametrize("bits,candidate", [((None, None), "sigmoid"), ((3, 2), "sigmoid"), ((2, 3), "tanh")])
def test_step_equals_the_formulas(ct, bits, candidate):
    torch.manual_seed(1)
    cfg = LMConfig(vocab=6, hidden=3, input=2, wbits=bits[0], abits=bits[1], candidate=candidate,
                   init_state="half", cell_type=ct)
    m = QuantRNNLM(cfg).eval()
    with torch.no_grad():  # weights and biases large enough for gates far from 1/2 and a clamp at 0
        m.rnn.weight.normal_(0.0, 1.5)
        m.rnn.bias.normal_(0.0, 1.0)
    E = m.embedding.weight.detach().double().numpy()
    W = m.rnn.weight.detach().double().numpy()
    b = m.rnn.bias.detach().double().numpy()
    tokens = [0, 3, 5, 1, 2, 4, 3, 3]
    Ka = 1 if bits[1] is None else levels(bits[1])
    h0s = {"reset": None, "given": np.array([1.0, 0.0, 1.0]) if bits[1] is None else np.array([Ka, 0, 1]) / Ka}
    for label, h0 in h0s.items():
        tr = m.step_trace(torch.tensor(tokens), state=None if h0 is None else (torch.tensor(h0), None))
        start = (0.5 if bits[1] is None else activation_value(activation_codes(0.5, bits[1]), bits[1])) * np.ones(3)
        ref = _hand_trace(cfg, E, W, b, tokens, start if h0 is None else h0)
        assert set(tr) - {"logits"} == set(ref), (label, set(tr))
        for k, v in ref.items():
            np.testing.assert_allclose(tr[k].numpy(), v, rtol=0, atol=1e-12, err_msg=f"{ct} {label} {k}")
        if bits[1] is not None:  # activations on the abits grid, equal codes
            np.testing.assert_array_equal(np.rint(tr["h"].numpy() * Ka), np.rint(ref["h"] * Ka))
    if candidate == "tanh":
        assert (tr["g"] < 0).any()  # the clamp at 0 was exercised


# -------------------------------------------------------------------------------------------- train
@pytest.mark.parametrize("ct", NEW_CELLS)
def test_training_a_few_batches_lowers_the_loss(ct, tiny_corpus):
    from sw_ref.data import batchify, iter_bptt, load_ptb
    from sw_ref.train import evaluate

    corpus = load_ptb(tiny_corpus)
    torch.manual_seed(0)
    m = QuantRNNLM(LMConfig(vocab=len(corpus.vocab), hidden=16, wbits=2, abits=2, dropout=0.0, cell_type=ct))
    before = evaluate(m, corpus.valid, 10, 20)
    opt = torch.optim.SGD(m.parameters(), lr=20.0)
    m.train()
    state = m.init_hidden(10)
    for k, (_, x, y) in enumerate(iter_bptt(batchify(corpus.train, 10), 20)):
        if k == 30:
            break
        state = m.detach_state(state)
        opt.zero_grad()
        logits, state = m(x, state)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.25)
        opt.step()
        m.constrain_()
    after = evaluate(m, corpus.valid, 10, 20)
    assert after < 0.8 * before, (before, after)


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """(cell type, candidate) -> (run dir, model): W2A2 hidden-8 LMs trained one epoch on the tiny corpus."""
    from sw_ref.train import load_lm_checkpoint, train

    cache = {}

    def get(ct, candidate):
        if (ct, candidate) not in cache:
            out = tmp_path_factory.mktemp(f"run_{ct}_{candidate}")
            n = torch.get_num_threads()
            try:
                train(data=str(tiny_corpus), out=str(out), hidden=8, wbits=2, abits=2, epochs=1, cell_type=ct,
                      candidate=candidate, **QUICK)
            finally:
                torch.set_num_threads(n)
            cache[ct, candidate] = out, load_lm_checkpoint(out / "best.pt")[0]
        return cache[ct, candidate]
    return get


@pytest.mark.parametrize("ct,candidate", [("gru", "sigmoid"), ("gru_ott", "sigmoid"), ("rnn", "sigmoid"),
                                          ("gru", "tanh"), ("rnn", "tanh")])
def test_integer_model_tracks_the_training_model(ct, candidate, trained, tiny_corpus):
    """As tests/test_integer_model.py for the LSTM: driven by the training model's h each step, the
    integer model's h codes agree on most units and never by more than one code; the gate
    pre-activations over [x; h] agree within the z format; the integer LM's perplexity is within 1 %."""
    from sw_ref.data import load_ptb
    from sw_ref.export import IntegerLM, layer_from_model
    from sw_ref.train import evaluate

    _, model = trained(ct, candidate)
    layer = layer_from_model(model)
    cfg = layer.cfg
    assert cfg.cell_type == ct and cfg.rows == len(GATES[ct]) * 8 and cfg.candidate == candidate
    tokens = torch.as_tensor(np.random.default_rng(0).integers(0, model.cfg.vocab, 60))
    tr = model.step_trace(tokens)
    Ka = levels(cfg.abits)
    x_codes = activation_codes(tr["x"].numpy(), cfg.abits)
    int_model = IntegerLSTM(layer)
    st = int_model.initial_state(1)
    H = cfg.hidden
    exact_rows = slice(0, 2 * H) if ct != "rnn" else slice(0, H)  # u, r (GRUs) or all rows (RNN) read [x; h]
    same, total, maxdiff, z_err, rh_same = 0, 0, 0, 0.0, 0
    for t in range(len(tokens)):
        if t > 0:
            st.h[0] = np.rint(tr["h"][t - 1].numpy() * Ka).astype(np.int64)
        new, taps = int_model.step(x_codes[t:t + 1], st, trace=True)
        z = taps["z"][0] / 2 ** cfg.z_frac
        z_err = max(z_err, float(np.abs(z[exact_rows] - tr["z"][t].numpy()[exact_rows]).max()))
        if ct == "gru":
            rh_same += int(np.sum(taps["rh"][0] == np.rint(tr["rh"][t].numpy() * Ka)))
        h_ref = np.rint(tr["h"][t].numpy() * Ka).astype(np.int64)
        same += int(np.sum(new.h[0] == h_ref))
        total += h_ref.size
        maxdiff = max(maxdiff, int(np.abs(new.h[0] - h_ref).max()))
        st = new
    assert z_err <= 2.0 ** -cfg.z_frac, z_err
    assert maxdiff <= 1 and same / total >= 0.97, (maxdiff, same / total)
    if ct == "gru":
        assert rh_same / total >= 0.97
    corpus = load_ptb(tiny_corpus)
    ppl = evaluate(model, corpus.test)
    ippl = IntegerLM(model, layer).perplexity(corpus.test.numpy())
    assert math.isfinite(ippl) and abs(ippl - ppl) / ppl < 0.01, (ppl, ippl)


# ---------------------------------------------------------------------------------------------- CLI
def _main(capsys, *args):
    """``python -m sw_ref ARGS`` in this process (no interpreter and torch start-up per command):
    (exit code, stdout, stderr)."""
    from sw_ref.__main__ import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_eval_export_experiment_with_a_gru(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "gru"
    code, out, err = _main(capsys, "train", "--data", tiny_corpus, "--out", run, "--cell-type", "gru", "--hidden", 8,
                           "--wbits", 2, "--abits", 2, "--epochs", 1, "--batch-size", 10, "--bptt", 20, "--dropout", 0,
                           "--threads", 1, "--checkpoint-every", 0)
    assert code == 0, err
    assert "model gru W2A2 H=8" in out and json.loads(out.splitlines()[-1])["test_ppl"] > 1
    code, out, err = _main(capsys, "eval", "--checkpoint", run / "best.pt", "--data", tiny_corpus, "--integer",
                           "--json", "--threads", 1)
    assert code == 0, err
    res = json.loads(out)
    assert res["cell_type"] == "gru" and res["cell"] is None
    assert math.isfinite(res["ppw"]) and res["ppw"] == res["integer_ppw"] and abs(res["gap_percent"]) < 1.0
    code, out, err = _main(capsys, "export", "--checkpoint", run / "best.pt", "-o", tmp_path / "layer.npz")
    assert code == 0 and "gru cell" in out, err
    from hwrnn import load_layer

    layer = load_layer(tmp_path / "layer.npz")
    assert layer.cfg.cell_type == "gru" and layer.codes.shape == (24, 16)
    # experiment: trains, evaluates both models, records "GRU W2A2@8" and its table row
    res_file, exp = tmp_path / "ptb.json", tmp_path / "exp"
    code, out, err = _main(capsys, "experiment", "--data", tiny_corpus, "--out", exp, "--results", res_file,
                           "--cell-type", "gru", "--hidden", 8, "--wbits", 2, "--abits", 2, "--epochs", 1,
                           "--threads", 1, "--dropout", 0, "--max-train-tokens", 6000)
    assert code == 0, err
    e = json.loads(res_file.read_text())["runs"]["GRU W2A2@8"]
    assert e["cell_type"] == "gru" and e["recipe"]["cell_type"] == "gru" and e["cell"] is None and e["finished"]
    assert abs(e["gap_percent"]) < 1.0 and e["integer_ppw"]["test"] > 1
    assert e["bits"]["lstm_layer_bits"] == 3 * 8 * 16 * 2 + 3 * 8 * 32
    code, out, err = _main(capsys, "table", "--results", res_file, "-o", tmp_path / "table.md")
    assert code == 0 and "| GRU W2A2@8 | 2 | 2 | 8 | - | 1 |" in out, out + err
    # measuring that run directory as another cell type is refused (its checkpoint holds a GRU)
    code, out, err = _main(capsys, "experiment", "--data", tiny_corpus, "--out", exp, "--results", res_file,
                           "--cell-type", "rnn", "--hidden", 8, "--wbits", 2, "--abits", 2, "--epochs", 1,
                           "--eval-only")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "holds a gru model" in err, err


@pytest.mark.parametrize("cmd", [
    ["train", "--hidden", "8", "--epochs", "1"],
    ["experiment", "--hidden", "8", "--epochs", "1"],
    ["search", "--wbits", "2", "--abits", "2", "--target", "100", "--hidden-sizes", "8"],
])
def test_bad_cell_type_is_one_line(cmd, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "r"
    extra = {"train": ["--out", out], "experiment": ["--out", out, "--results", tmp_path / "p.json"],
             "search": ["--runs", out, "--results", tmp_path / "p.json"]}[cmd[0]]
    code, _, err = _main(capsys, *cmd, "--data", tiny_corpus, "--cell-type", "lstmx", *extra)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sw_ref {cmd[0]}: error:"), err
    assert "cell_type must be one of ('lstm', 'gru', 'gru_ott', 'rnn'), got 'lstmx'" in lines[0]
    assert not out.exists()


def test_bad_cell_type_from_the_shell_is_one_line(tiny_corpus, tmp_path):
    r = _cli("train", "--data", tiny_corpus, "--out", tmp_path / "r", "--cell-type", "GRU")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "sw_ref train: error: bad model option: cell_type must be one of ('lstm', 'gru', 'gru_ott', 'rnn'), got 'GRU'"]


def test_gru_run_resumes_mid_epoch_exactly(tiny_corpus, tmp_path):
    """The carried TBPTT state (h, empty c) survives last.pt: an interrupted GRU run ends where the
    uninterrupted one does."""
    from sw_ref.train import TrainError, train

    opts = dict(QUICK, data=str(tiny_corpus), hidden=8, wbits=2, abits=2, epochs=1, cell_type="gru",
                max_train_tokens=4000)
    full = train(out=str(tmp_path / "full"), **opts)
    part = tmp_path / "part"
    assert train(out=str(part), max_batches=7, **opts)["interrupted"]
    hidden = torch.load(part / "last.pt", weights_only=True)["hidden"]
    assert hidden[0].shape == (10, 8) and hidden[1].shape == (10, 0)
    assert train(out=str(part), **opts)["test_ppl"] == full["test_ppl"]
    with pytest.raises(TrainError, match="different model config .*cell_type"):
        train(out=str(part), **{**opts, "cell_type": "gru_ott"})


def test_checkpoint_without_cell_type_loads_as_an_lstm(tmp_path):
    from sw_ref.train import FORMAT, load_lm_checkpoint

    m = QuantRNNLM(LMConfig(vocab=7, hidden=4, wbits=2, abits=2))
    cfg = m.cfg.to_dict()
    del cfg["cell_type"]
    torch.save({"format": FORMAT, "config": cfg, "vocab": [str(i) for i in range(7)], "model": m.state_dict(),
                "epoch": 1, "valid_ppl": 5.0, "best_valid_ppl": 5.0}, tmp_path / "old.pt")
    model, _, _ = load_lm_checkpoint(tmp_path / "old.pt")
    assert model.cfg.cell_type == "lstm" and model.rnn.weight.shape == (16, 8)


# -------------------------------------------------------------------------------- results and table
def test_entry_names_bits_and_gru_targets():
    from sw_ref.experiment import HE_TABLE1_GRU, TARGETS, _entry_name, model_bits, results_table

    assert _entry_name(2, 2, 300) == "W2A2@300" and _entry_name(2, 2, 300, cell_type="gru") == "GRU W2A2@300"
    assert _entry_name(None, None, 300, cell_type="rnn") == "RNN float@300"
    assert _entry_name(4, 2, 450, "fp16", "gru_ott") == "GRU-Ott W4A2@450_fp16"
    assert {k: v for k, v in TARGETS.items() if k.startswith("GRU ")} == {
        "GRU W2A2@300": 150.0, "GRU W2A3@300": 128.0, "GRU W3A3@300": 109.0, "GRU W4A4@300": 104.0,
        "GRU float@300": 100.0}
    assert HE_TABLE1_GRU[(None, None)] == 100
    for ct, rows in (("lstm", 4), ("gru", 3), ("gru_ott", 3), ("rnn", 1)):
        bits = model_bits(LMConfig(vocab=10, hidden=5, input=4, wbits=2, abits=2, cell_type=ct))
        assert bits["lstm_layer_bits"] == rows * 5 * 9 * 2 + rows * 5 * 32
    entry = {"name": "GRU W2A2@300", "wbits": 2, "abits": 2, "hidden": 300, "cell": None, "cell_type": "gru",
             "epochs_done": 40, "finished": True, "recipe": {"epochs": 40},
             "model_ppw": {"valid": 150.0, "test": 149.0}, "integer_ppw": {"valid": 150.0, "test": 149.0},
             "gap_percent": 0.0, "bits": model_bits(LMConfig(vocab=10000, hidden=300, wbits=2, abits=2,
                                                               cell_type="gru"))}
    table = results_table({"runs": {"GRU W2A2@300": entry}})
    row = next(r for r in table.splitlines() if r.startswith("| GRU W2A2@300 |"))
    # target and He et al.'s GRU figure; no Kapur figure (an LSTM table)
    assert "| <= 150.0: met | - | 150.0 |" in row
    assert "He et al. Table 1 (GRU, 300 units, balanced): W2A2: 150, W2A3: 128, W3A3: 109, W4A4: 104, W32A32: 100." in table
