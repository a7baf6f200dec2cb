"""QAT of stacked and bidirectional layers in sw_ref (sw_ref.stack_model), their export to the stack
checkpoint (hwrnn.stack) and the integer model of the exported stack against the training model.

What is exact and what is not (as for one layer, tests/test_integer_model.py and tests/test_cells.py):
* exact: a one-layer stack is the one-layer model (logits, state, gradients, trace: bit for bit); the
  hand-over (layer l+1 reads exactly layer l's h codes, [h_fw ; h_bw] for a bidirectional layer, in
  the training model as in hwrnn.stack.IntegerStack); the exported stack's checkpoint round trip;
  IntegerStackLM's batched layers equal IntegerStack.run;
* per step (the single-layer contract: the training model's gates are float, the hardware's are
  tables): driven by the training model's own inputs and previous state, every layer's and direction's
  integer model agrees with its h codes on >= 97 % of units and never by more than one code, its gate
  pre-activations over [x; h] within the z format; the integer stack LM's perplexity within 1 %.
"""
import json
import math

import numpy as np
import pytest
import torch

from hwrnn.integer_model import IntegerLSTM
from hwrnn.quant import activation_codes, levels
from hwrnn.stack import IntegerStack, load_stack, save_stack
from sw_ref.model import LMConfig, QuantRNNLM
from sw_ref.stack_model import QuantStackLM, StackLMConfig, config_from_dict

QUICK = dict(batch_size=10, bptt=20, dropout=0.0, threads=1, checkpoint_every=0, log_every=0, progress=False,
             max_train_tokens=4000)
#: rows of the gate matrix whose pre-activation reads [x; h] directly (Ott's g row reads r * (W h))
EXACT_ROWS = {"lstm": 4, "gru": 2, "gru_ott": 2, "rnn": 1}


def _main(capsys, *args):
    from sw_ref.__main__ import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------ the training model
@pytest.mark.parametrize("ct", ["lstm", "gru", "gru_ott", "rnn"])
@pytest.mark.parametrize("fused", [True, False])
def test_one_layer_stack_is_the_one_layer_model_bit_for_bit(ct, fused, one_torch_thread):
    """The same seed gives the same parameters; in training mode with dropout the logits, the state and
    every gradient are bit-identical, and so is the float64 trace."""
    kw = dict(vocab=11, input=5, wbits=2, abits=2, cell_type=ct, dropout=0.3)
    torch.manual_seed(0)
    one = QuantRNNLM(LMConfig(hidden=6, **kw))
    torch.manual_seed(0)
    stack = QuantStackLM(StackLMConfig(hidden=[6], **kw))
    names = {"rnn.weight": "layers.0.0.weight", "rnn.bias": "layers.0.0.bias"}
    sa, sb = one.state_dict(), stack.state_dict()
    assert sorted(names.get(k, k) for k in sa) == sorted(sb)
    assert all(torch.equal(v, sb[names.get(k, k)]) for k, v in sa.items())
    tokens = torch.randint(0, 11, (7, 3), generator=torch.Generator().manual_seed(1))
    runs = []
    for m in (one, stack):
        m.fused_recurrence = fused
        m.train()
        torch.manual_seed(5)
        state = None
        for w in range(2):  # two windows, the state carried
            logits, state = m(tokens, state if state is None else m.detach_state(state))
        torch.nn.functional.cross_entropy(logits, tokens.reshape(-1)).backward()
        runs.append((logits, state, {names.get(k, k): p.grad for k, p in m.named_parameters()}))
    (la, st_a, ga), (lb, st_b, gb) = runs
    assert torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(st_a, st_b))
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)
    assert float(ga["layers.0.0.weight"].abs().max()) > 1e-4
    ta, tb = one.step_trace(tokens[:, 0]), stack.step_trace(tokens[:, 0])
    assert torch.equal(ta["logits"], tb["logits"])
    assert all(torch.equal(ta[k], tb["layers"][0][0][k]) for k in one.rnn.trace_keys)


def test_stack_config_refusals_are_one_line():
    ok = dict(vocab=9, hidden=[6, 4], wbits=2, abits=2)
    for bad, msg in ((dict(abits=[2, 3]), "abits 2, 3 differ between layers"),
                     (dict(cell_type=["lstm", "gru"], cell="fixed:3.10"), "applies to LSTM layers only"),
                     (dict(wbits=[4, 2, 2]), "wbits has 3 values for 2 layers"),
                     (dict(cell_type=["lstm", "lsmt"]), "layer 1: cell_type must be one of"),
                     (dict(hidden=[]), "one size per layer")):
        with pytest.raises(ValueError, match=msg) as e:
            StackLMConfig(**{**ok, **bad})
        assert "\n" not in str(e.value)
    cfg = StackLMConfig(**ok, bidirectional=[True, False])
    assert cfg.layer_input(1) == 12 and cfg.output_width(1) == 4
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert isinstance(config_from_dict(LMConfig(vocab=9, hidden=4).to_dict()), LMConfig)


# ------------------------------------------------------------------------------ export and agreement
def _codes(values, abits):
    """The activation codes of values that must be codes n / Ka exactly."""
    v = np.asarray(values, np.float64)
    n = activation_codes(v, abits)
    assert np.array_equal(n / levels(abits), v)
    return n


def _check_direction(q, tr, reverse):
    """The single-layer contract for one direction, teacher-forced with the training model's trace `tr`
    (its input codes, its previous h and c; a backward direction steps from the last t to the first)."""
    cfg = q.cfg
    Ka = levels(cfg.abits)
    x_codes = _codes(tr["x"].numpy(), cfg.abits)
    im = IntegerLSTM(q)
    st = im.initial_state(1)
    T = x_codes.shape[0]
    rows = slice(0, EXACT_ROWS[cfg.cell_type] * cfg.hidden)
    same = total = maxdiff = 0
    z_err, prev = 0.0, None
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        if prev is not None:
            st.h[0] = np.rint(tr["h"][prev].numpy() * Ka).astype(np.int64)
            if "c" in tr:
                fmt = cfg.cell_format
                st.c[0] = np.clip(np.rint(tr["c"][prev].numpy() * 2 ** fmt.frac_bits), *fmt.limits)
        new, taps = im.step(x_codes[t:t + 1], st, trace=True)
        z_err = max(z_err, float(np.abs(taps["z"][0][rows] / 2 ** cfg.z_frac - tr["z"][t].numpy()[rows]).max()))
        h_ref = _codes(tr["h"][t].numpy(), cfg.abits)
        same += int(np.sum(new.h[0] == h_ref))
        total += h_ref.size
        maxdiff = max(maxdiff, int(np.abs(new.h[0] - h_ref).max()))
        st, prev = new, t
    assert z_err <= 2.0 ** -cfg.z_frac, z_err
    assert maxdiff <= 1 and same / total >= 0.97, (maxdiff, same / total)


def _check_stack_agreement(model, tmp_path, tokens):
    from sw_ref.export import stack_from_model

    stack = stack_from_model(model)
    path = tmp_path / "stack.npz"
    save_stack(stack, path)
    back = load_stack(path)
    assert [layer.bidirectional for layer in back.layers] == list(model.cfg.bidirectional)
    for la, lb in zip(stack.layers, back.layers):
        for qa, qb in zip(la.directions, lb.directions):
            assert qa.cfg == qb.cfg and np.array_equal(qa.codes, qb.codes) and qa.scale == qb.scale
            assert np.array_equal(qa.bias, qb.bias)
    for l, (layer, c) in enumerate(zip(back.layers, model.layer_cfgs)):
        assert (layer.cfg.cell_type, layer.cfg.wbits, layer.cfg.abits, layer.cfg.hidden, layer.cfg.input) == \
            (c.cell_type, c.wbits, c.abits, c.hidden, c.input)
    tr = model.step_trace(tokens)
    abits = stack.abits
    # the hand-over: layer 0 reads the embedding codes, layer l+1 exactly layer l's h codes ([h_fw ; h_bw])
    seq = _codes(tr["x"].numpy(), abits)
    for l, dirs in enumerate(tr["layers"]):
        for d in dirs:
            assert np.array_equal(_codes(d["x"].numpy(), abits), seq)
        seq = np.concatenate([_codes(d["h"].numpy(), abits) for d in dirs], axis=1)
    # each layer and direction: the single-layer contract
    for layer, dirs in zip(back.layers, tr["layers"]):
        for d, (q, t) in enumerate(zip(layer.directions, dirs)):
            _check_direction(q, t, reverse=d == 1)
    return back, tr


@pytest.fixture(scope="module")
def trained_stacks(tiny_corpus, tmp_path_factory):
    """name -> (run dir, QuantStackLM): 2-layer stacks of mixed bit widths and cell types, trained one
    short epoch on the tiny corpus."""
    from sw_ref.train import load_lm_checkpoint, train

    specs = {"lstm_gru": dict(hidden=[8, 6], wbits=[4, 2], abits=2, cell_type=["lstm", "gru"]),
             "ott_rnn": dict(hidden=[6, 8], wbits=[2, 3], abits=3, cell_type=["gru_ott", "rnn"], candidate="tanh")}
    cache = {}

    def get(name):
        if name not in cache:
            out = tmp_path_factory.mktemp(f"stack_{name}")
            n = torch.get_num_threads()
            try:
                train(data=str(tiny_corpus), out=str(out), layers=2, epochs=1, **specs[name], **QUICK)
            finally:
                torch.set_num_threads(n)
            cache[name] = out, load_lm_checkpoint(out / "best.pt")[0]
        return cache[name]
    return get


@pytest.mark.parametrize("name", ["lstm_gru", "ott_rnn"])
def test_trained_stack_exports_and_its_integer_model_agrees(name, trained_stacks, tiny_corpus, tmp_path,
                                                           one_torch_thread):
    from sw_ref.data import load_ptb
    from sw_ref.export import IntegerStackLM
    from sw_ref.train import evaluate

    _, model = trained_stacks(name)
    assert isinstance(model, QuantStackLM) and model.cfg.layers == 2
    tokens = torch.as_tensor(np.random.default_rng(0).integers(0, model.cfg.vocab, 60))
    stack, tr = _check_stack_agreement(model, tmp_path, tokens)
    # the LM's batched integer layers are IntegerStack's, exactly
    ilm = IntegerStackLM(model, stack)
    x = _codes(tr["x"].numpy(), stack.abits)
    states, outs = ilm.initial_state(1), []
    for t in range(x.shape[0]):
        states, hs = ilm.step_codes(x[t:t + 1], states)
        outs.append(hs)
    for l, ref in enumerate(IntegerStack(stack).run(x)):
        assert np.array_equal(np.concatenate([o[l] for o in outs]), ref)
    corpus = load_ptb(tiny_corpus)
    ppl, ippl = evaluate(model, corpus.test), ilm.perplexity(corpus.test.numpy())
    assert math.isfinite(ippl) and abs(ippl - ppl) / ppl < 0.01, (ppl, ippl)


def test_bidirectional_stack_exports_and_its_integer_model_agrees(tmp_path, one_torch_thread):
    """A bidirectional LSTM layer under a GRU layer (W2A2 and W4A2), fit for a few steps so that its
    weights are not the init's: every direction agrees with the integer model (the backward one over
    the sequence reversed, from its reset state, as IntegerStack runs it); no LM perplexity for it."""
    from sw_ref.export import ExportError, IntegerStackLM

    torch.manual_seed(3)
    model = QuantStackLM(StackLMConfig(vocab=13, hidden=[6, 5], wbits=[2, 4], abits=2, cell_type=["lstm", "gru"],
                                       bidirectional=[True, False], dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(4)
    for _ in range(25):
        tokens = torch.randint(0, 13, (12, 4), generator=g)
        opt.zero_grad()
        logits, _ = model(tokens)
        torch.nn.functional.cross_entropy(logits, tokens.roll(1, 0).reshape(-1)).backward()
        opt.step()
        model.constrain_()
    fw, bw = (model.layers[0][d].weight for d in (0, 1))
    assert not torch.equal(fw, bw)
    tokens = torch.randint(0, 13, (40,), generator=g)
    stack, tr = _check_stack_agreement(model, tmp_path, tokens)
    # the backward direction is the cell run over the reversed sequence from its reset state
    x = _codes(tr["x"].numpy(), 2)
    h_bw = np.stack([t["h"] for t in IntegerLSTM(stack.layers[0].directions[1]).run(x[::-1])[1]])[::-1]
    h_tr = _codes(tr["layers"][0][1]["h"].numpy(), 2)
    assert np.abs(h_bw - h_tr).max() <= 1  # free-running over 40 steps, not only teacher-forced
    with pytest.raises(ExportError, match="bidirectional layer is no causal language model"):
        IntegerStackLM(model, stack)


# ------------------------------------------------------------------------------ CLI and experiments
def test_bidirectional_and_bad_layer_lists_are_refused_in_one_line(tiny_corpus, tmp_path, capsys):
    for cmd, extra in (("train", []), ("experiment", []),
                       ("widen", ["--base-hidden", "4,4", "--target", "10", "--runs", tmp_path / "r"])):
        code, _, err = _main(capsys, cmd, "--data", tiny_corpus, "--layers", 2, "--bidirectional",
                             *(["--out", tmp_path / cmd] if cmd != "widen" else []), *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "cannot predict word t+1 of a causal language model" in err, err
        assert not (tmp_path / cmd).exists() and not (tmp_path / "r").exists()
    for args, msg in ((("--layers", 3, "--hidden", "8,6"), "--hidden has 2 values but --layers is 3"),
                      (("--hidden", "8,6"), "--hidden has 2 values but --layers is 1"),
                      (("--layers", 2, "--wbits", 2, "--abits", "2,3"), "abits 2, 3 differ between layers"),
                      (("--layers", 2, "--cell-type", "lstm,grux"), "layer 1: cell_type must be one of")):
        code, _, err = _main(capsys, "experiment", "--data", tiny_corpus, "--out", tmp_path / "x", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and msg in err, err
        assert not (tmp_path / "x").exists()


def test_cli_stack_experiment_eval_export(tiny_corpus, tmp_path, capsys, one_torch_thread):
    """`experiment --layers 2` records a "2x ..." entry (per-layer lists, layer bits) that the table
    shows; `eval --integer` and `export` (the stack checkpoint) read the run; resuming a finished run
    trains nothing."""
    res = tmp_path / "ptb.json"
    run = tmp_path / "s"
    args = ["experiment", "--data", tiny_corpus, "--out", run, "--layers", 2, "--hidden", "8,6", "--wbits", "4,2",
            "--abits", 2, "--epochs", 1, "--results", res, "--dropout", 0, "--threads", 1, "--max-train-tokens", 4000]
    code, out, err = _main(capsys, *args)
    assert code == 0, err
    e = json.loads(out[out.index("{"):])
    assert e["name"] == "2x W4A2,W2A2@8,6" and e["layers"] == 2 and e["finished"]
    assert e["hidden"] == [8, 6] and e["wbits"] == [4, 2] and e["abits"] == [2, 2]
    assert e["cell_type"] == ["lstm", "lstm"] and e["recipe"]["layers"] == 2
    assert sum(e["bits"]["layer_bits"]) == e["bits"]["lstm_layer_bits"]
    assert e["bits"]["layer_bits"] == [4 * 8 * (8 + 8) * 4 + 4 * 8 * 32, 4 * 6 * (8 + 6) * 2 + 4 * 6 * 32]
    assert abs(e["gap_percent"]) < 1.0 and e["integer_ppw"]["test"] > 1
    d = json.loads(res.read_text())
    assert list(d["runs"]) == ["2x W4A2,W2A2@8,6"]
    code, out, err = _main(capsys, "table", "--results", res, "-o", tmp_path / "t.md")
    assert code == 0 and "| 2x W4A2,W2A2@8,6 | LSTM W4A2 8 \\| LSTM W2A2 6 | 1 |" in out, out
    code, out, err = _main(capsys, "eval", "--checkpoint", run / "best.pt", "--data", tiny_corpus, "--integer",
                           "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["layers"] == 2 and r["integer_ppw"] == pytest.approx(e["integer_ppw"]["test"], rel=1e-12)
    code, out, err = _main(capsys, "export", "--checkpoint", run / "best.pt")
    assert code == 0 and (run / "stack.npz").is_file() and "2 layers" in out, err
    stack = load_stack(run / "stack.npz")
    assert [layer.cfg.hidden for layer in stack.layers] == [8, 6]
    code, out, err = _main(capsys, "export", "--checkpoint", run / "best.pt", "--cell", "fixed:4.12", "-o",
                           tmp_path / "c.npz")
    assert code == 0, err
    assert [layer.cfg.cell for layer in load_stack(tmp_path / "c.npz").layers] == ["fixed:4.12"] * 2
    code, out, err = _main(capsys, *args)  # finished: resumes, trains nothing
    assert code == 0 and "end of epoch" not in out


def test_widen_end_to_end_and_resumable(tiny_corpus, tmp_path, capsys, one_torch_thread):
    """`widen` runs layerwise_widening over real training runs (one run directory and results entry
    per stack), records its rounds in the results file and the table; --max-batches leaves it
    unfinished, and the same command continues it; a finished widening reruns without training."""
    res, runs = tmp_path / "ptb.json", tmp_path / "runs"
    args = ["widen", "--data", tiny_corpus, "--base-hidden", "4,4", "--hidden-sizes", "4,8", "--wbits", 2,
            "--abits", 2, "--target", 1.5, "--max-rounds", 1, "--epochs", 1, "--results", res, "--runs", runs,
            "--dropout", 0, "--threads", 1, "--max-train-tokens", 3000, "--batch-size", 20, "--bptt", 35]
    code, out, err = _main(capsys, *args, "--max-batches", 2)
    assert code == 0 and "2x W2A2@4,4 is unfinished" in err, err
    w = json.loads(res.read_text())["widenings"]["2x W2A2@4,4"]
    assert w["status"] == "unfinished" and w["waiting_for"] == "2x W2A2@4,4"
    # 3000 tokens: 4 batches of 20x35 per epoch; 3 batches per invocation finish one stack and leave the next unfinished
    for waiting in ("2x W2A2@8,4", "2x W2A2@4,8", None):
        code, out, err = _main(capsys, *args, "--max-batches", 3)
        assert code == 0, err
        w = json.loads(res.read_text())["widenings"]["2x W2A2@4,4"]
        assert (w["status"], w.get("waiting_for")) == (("unfinished", waiting) if waiting else ("done", None))
    assert w["reached"] is False  # PPW 1.5 is out of reach
    tried = w["rounds"][0]["tried"]
    assert [(t["layer"], t["hidden"]) for t in tried] == [(0, 8), (1, 8)]
    assert set(w["stacks"]) == {"4,4", "8,4", "4,8"}
    d = json.loads(res.read_text())
    for sizes, s in w["stacks"].items():
        e = d["runs"][s["entry"]]
        assert e["finished"] and e["hidden"] == [int(h) for h in sizes.split(",")]
        assert s["ppw"] == e["integer_ppw"]["test"] and (runs / s["entry"].replace(" ", "_") / "best.pt").is_file()
    # the widened layer is the one with the most PPW gained per added bit
    base = w["stacks"]["4,4"]
    rate = {t["layer"]: (base["ppw"] - t["ppw"]) / (t["model_bits"] - base["model_bits"]) for t in tried}
    assert w["rounds"][0]["widened_layer"] == (max(rate, key=rate.get) if max(rate.values()) > 0 else None)
    code, out, err = _main(capsys, *args)  # done: nothing trained or evaluated again
    assert code == 0 and "model 2 layers" not in out and "end of epoch" not in out
    code, out, err = _main(capsys, "table", "--results", res, "-o", tmp_path / "t.md")
    assert code == 0 and "## Layer-wise widening (Kapur et al.)" in out and "| 1 | layer 0 -> 8 (8,4) |" in out


def test_stack_run_resumes_mid_epoch_exactly_and_packs_a_resume_point(tiny_corpus, tmp_path, one_torch_thread):
    """A stack run stopped mid-epoch (--max-batches) and resumed ends with the parameters of the run
    that was never stopped, bit for bit (the carried state of every layer is checkpointed); its resume
    point unpacks into a run directory that trains on."""
    from sw_ref.resume_point import pack, unpack
    from sw_ref.train import load_lm_checkpoint, train

    kw = dict(data=str(tiny_corpus), layers=2, hidden=[6, 5], wbits=2, abits=2, cell_type=["gru", "lstm"], epochs=1,
              **{**QUICK, "max_train_tokens": 3000, "dropout": 0.2})
    train(out=str(tmp_path / "whole"), **kw)
    train(out=str(tmp_path / "split"), max_batches=5, **kw)
    ck = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert ck["batch"] == 5 and len(ck["hidden"]) == 4  # (h, c) of both layers
    pack(tmp_path / "split", tmp_path / "point.pt")
    train(out=str(tmp_path / "split"), **kw)
    a = load_lm_checkpoint(tmp_path / "whole" / "last.pt")[0].state_dict()
    b = load_lm_checkpoint(tmp_path / "split" / "last.pt")[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    unpack(tmp_path / "point.pt", tmp_path / "unpacked")
    s = train(out=str(tmp_path / "unpacked"), **kw)
    assert s["epochs_done"] == 1 and not s["interrupted"] and math.isfinite(s["test_ppl"])
