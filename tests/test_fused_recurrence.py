"""The fused LSTM recurrence (sw_ref.fused_recurrence: one autograd node per TBPTT window with a
hand-written backward) against the step-by-step autograd path of sw_ref.cells.LstmCell: the same
forward bit for bit, the same gradients to rounding (float64: 1e-10), where the model uses it, and the
``fused_recurrence`` training option. Tiny data only (tests/tiny_corpus.py)."""
import json

import pytest
import torch

from sw_ref.__main__ import _train_extra, build_parser
from sw_ref.fused_recurrence import lstm_recurrence_fused
from sw_ref.model import LMConfig, QuantRNNLM
from sw_ref.train import TrainError, load_lm_checkpoint, train

ABITS = (None, 1, 2, 3, 4, 5, 6, 7, 8)
QUICK = dict(hidden=8, batch_size=10, bptt=20, epochs=1, checkpoint_every=0, log_every=0, dropout=0.0,
             progress=False, threads=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(abits, candidate, init_state, dtype=torch.float64, hidden=6, cell=None, seed=0, **kw):
    torch.manual_seed(seed)
    wbits = None if abits is None else 4
    m = QuantRNNLM(LMConfig(vocab=11, hidden=hidden, input=5, wbits=wbits, abits=abits, candidate=candidate,
                            init_state=init_state, cell=cell, **kw)).to(dtype)
    with torch.no_grad():  # a livelier recurrence than the init: gates away from their init values
        m.rnn.weight.mul_(3.0)
        m.rnn.bias.uniform_(-1.0, 1.0)
    return m


def _loss_and_grads(m, tokens, fused, state=None, seed=1):
    m.fused_recurrence = fused
    m.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks on both paths
    logits, (h, c) = m(tokens, state)
    loss = torch.nn.functional.cross_entropy(logits, tokens.roll(-1, 0).reshape(-1))
    loss.backward()
    return logits.detach(), (h.detach(), c.detach()), loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}


def _graph_has(t, name) -> bool:
    """Whether the autograd graph behind tensor t holds a node of class ``name``."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == name:
            return True
        todo.extend(f for f, _ in fn.next_functions)
    return False


def _close(a, b, tol):
    """max |a - b| <= tol * max(1, max |b|)."""
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


# ------------------------------------------------------------------------- the model, float64
@pytest.mark.parametrize("candidate", ("sigmoid", "tanh"))
@pytest.mark.parametrize("init_state", ("zero", "half"))
@pytest.mark.parametrize("abits", ABITS)
def test_model_forward_bit_identical_and_gradients_equal_float64(abits, candidate, init_state):
    """Every abits 1..8 and float, both candidates, both initial states: the logits, the state and the
    loss of the fused path equal the step-by-step path's bit for bit, every parameter's gradient to
    1e-10 (relative to max(1, |grad|)); two windows with the state carried (detached) between them."""
    m = _model(abits, candidate, init_state)
    tokens = torch.randint(0, 11, (2, 7, 3))
    runs = {}
    for fused in (False, True):
        state, out = None, []
        for w in range(2):
            logits, state, loss, grads = _loss_and_grads(m, tokens[w], fused, state, seed=w)
            out.append((logits, state, loss, grads))
        runs[fused] = out
    for (l0, s0, loss0, g0), (l1, s1, loss1, g1) in zip(runs[False], runs[True]):
        assert torch.equal(l0, l1) and torch.equal(loss0, loss1)
        assert torch.equal(s0[0], s1[0]) and torch.equal(s0[1], s1[1])
        for k in g0:
            assert _close(g1[k], g0[k], 1e-10), k
        assert float(g0["rnn.weight"].abs().max()) > 1e-3  # the recurrence does receive gradient


def test_dropout_and_init_state_none_in_training_mode():
    """Training mode with dropout (the same masks on both paths) and the model's own initial state."""
    m = _model(2, "sigmoid", "half", dropout=0.3)
    m.train()
    tokens = torch.randint(0, 11, (9, 4))
    l0, s0, loss0, g0 = _loss_and_grads(m, tokens, False)
    l1, s1, loss1, g1 = _loss_and_grads(m, tokens, True)
    assert torch.equal(l0, l1) and torch.equal(loss0, loss1) and torch.equal(s0[1], s1[1])
    assert all(_close(g1[k], g0[k], 1e-10) for k in g0)


# ------------------------------------------------------------- the function, with h0, c0 learnt
def _recurrence_grads(abits, candidate, fused, dtype=torch.float64, H=5, B=3, T=6, seed=0):
    """Outputs and d/d(xw, Wh_t, h0, c0) of a loss on hs, h_T and c_T, with h0, c0 requiring grad."""
    g = torch.Generator().manual_seed(seed)
    xw = (2 * torch.randn(T, B, 4 * H, generator=g, dtype=dtype)).requires_grad_()
    Wh_t = (torch.randn(H, 4 * H, generator=g, dtype=dtype) / H ** 0.5).requires_grad_()
    h0 = torch.rand(B, H, generator=g, dtype=dtype).requires_grad_()
    c0 = torch.randn(B, H, generator=g, dtype=dtype).requires_grad_()
    w_hs, w_h, w_c = (torch.randn(*s, generator=g, dtype=dtype) for s in ((T, B, H), (B, H), (B, H)))
    if fused:
        hs, h, c = lstm_recurrence_fused(xw, Wh_t, h0, c0, abits, candidate)
    else:
        cell = QuantRNNLM(LMConfig(vocab=3, hidden=H, abits=abits, wbits=None if abits is None else 4,
                                   candidate=candidate)).rnn
        outs, (h, c) = cell.recurrence(xw, Wh_t, h0, c0)
        hs = torch.stack(outs)
    loss = (hs * w_hs).sum() + (h * w_h).sum() + (c * w_c).sum()
    loss.backward()
    return (hs.detach(), h.detach(), c.detach()), [t.grad for t in (xw, Wh_t, h0, c0)]


@pytest.mark.parametrize("candidate", ("sigmoid", "tanh"))
@pytest.mark.parametrize("abits", ABITS)
def test_function_gradients_to_all_inputs_float64(abits, candidate):
    """lstm_recurrence_fused against LstmCell.recurrence with the initial state requiring grad and a loss
    on every output (hs, the final h and c): outputs bit-identical, d/dxw, d/dWh_t, d/dh0, d/dc0 to 1e-10."""
    out0, g0 = _recurrence_grads(abits, candidate, False)
    out1, g1 = _recurrence_grads(abits, candidate, True)
    assert all(torch.equal(a, b) for a, b in zip(out0, out1))
    for name, a, b in zip(("xw", "Wh_t", "h0", "c0"), g1, g0):
        assert _close(a, b, 1e-10), name


@pytest.mark.parametrize("candidate", ("sigmoid", "tanh"))
def test_gradcheck_float_mode(candidate):
    """torch.autograd.gradcheck (finite differences, float64) of the hand-written backward in float mode
    (Q_a the identity; a quantized Q_a has the straight-through gradient, no finite-difference one)."""
    g = torch.Generator().manual_seed(3)
    T, B, H = 4, 2, 3
    args = [torch.randn(T, B, 4 * H, generator=g, dtype=torch.float64), torch.randn(H, 4 * H, generator=g, dtype=torch.float64),
            torch.rand(B, H, generator=g, dtype=torch.float64), torch.randn(B, H, generator=g, dtype=torch.float64)]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: lstm_recurrence_fused(*a, None, candidate), args, eps=1e-6, atol=1e-8)


def test_partial_requires_grad_and_the_ste_mask():
    """Only the inputs that require grad receive one (here Wh_t alone, as autograd's); the backward's
    straight-through factor is quantize_activation's own (sw_ref.quantizers.activation_ste_mask: 1 on
    [0, 1], ends included, 0 outside)."""
    from sw_ref.quantizers import activation_ste_mask, quantize_activation

    g = torch.Generator().manual_seed(5)
    T, B, H = 3, 2, 4
    xw = torch.randn(T, B, 4 * H, generator=g, dtype=torch.float64)
    Wh_t = torch.randn(H, 4 * H, generator=g, dtype=torch.float64).requires_grad_()
    h0, c0 = torch.ones(B, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    hs, h, c = lstm_recurrence_fused(xw, Wh_t, h0, c0, 2)
    assert _graph_has(hs, "_FusedLstmWindowBackward")
    hs.sum().backward()
    fused = Wh_t.grad.clone()
    Wh_t.grad = None
    cell = QuantRNNLM(LMConfig(vocab=3, hidden=H, wbits=4, abits=2)).rnn
    outs, _ = cell.recurrence(xw, Wh_t, h0, c0)
    torch.stack(outs).sum().backward()
    assert _close(fused, Wh_t.grad, 1e-12) and xw.grad is None and h0.grad is None and c0.grad is None
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    quantize_activation(x, 2).sum().backward()
    assert torch.equal(x.grad, activation_ste_mask(x.detach(), x.dtype))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_function_errors_are_one_line():
    xw = torch.zeros(0, 2, 8)
    with pytest.raises(ValueError, match=r"xw must be \[T, B, 4H\] with T >= 1") as e:
        lstm_recurrence_fused(xw, torch.zeros(2, 8), torch.zeros(2, 2), torch.zeros(2, 2), None)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="candidate must be 'sigmoid' or 'tanh', got 'relu'"):
        lstm_recurrence_fused(torch.zeros(1, 2, 8), torch.zeros(2, 8), torch.zeros(2, 2), torch.zeros(2, 2), None, "relu")


# --------------------------------------------------------------------- float32, as in training
@pytest.mark.parametrize("abits", (None, 2))
def test_float32_forward_bit_identical_gradients_to_rounding(abits):
    """In float32 (training), dropout on: logits, state and loss bit-identical; the gradients of the
    embedding, the bias and the decoder bit for bit too (they see dL/dxw, computed with autograd's own
    kernels); rnn.weight's to float32 rounding (its recurrent part is one product over the window,
    summed in another order than autograd's)."""
    m = _model(abits, "sigmoid", "zero", dtype=torch.float32, hidden=32, dropout=0.3)
    m.train()
    tokens = torch.randint(0, 11, (35, 20))
    l0, s0, loss0, g0 = _loss_and_grads(m, tokens, False)
    l1, s1, loss1, g1 = _loss_and_grads(m, tokens, True)
    assert torch.equal(l0, l1) and torch.equal(loss0, loss1)
    assert torch.equal(s0[0], s1[0]) and torch.equal(s0[1], s1[1])
    for k in ("embedding.weight", "rnn.bias", "decoder.weight", "decoder.bias"):
        assert torch.equal(g0[k], g1[k]), k
    assert _close(g1["rnn.weight"], g0["rnn.weight"], 1e-5)


# ----------------------------------------------------------------------------- where it applies
def _count_fused(monkeypatch):
    import sw_ref.cells as cells

    calls = []
    real = cells.lstm_recurrence_fused

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cells, "lstm_recurrence_fused", counting)
    return calls


def test_used_by_default_for_the_lstm_only(monkeypatch):
    """The fused path runs for the LSTM by default; not with fused_recurrence off, not with a hardware
    cell format (cfg.cell), not for the other cells, never in step_trace (which still traces)."""
    calls = _count_fused(monkeypatch)
    tokens = torch.randint(0, 11, (5, 2))
    m = _model(2, "sigmoid", "zero", dtype=torch.float32)
    assert m.fused_recurrence and m.rnn.fusable
    logits, _ = m(tokens)
    assert len(calls) == 1 and _graph_has(logits, "_FusedLstmWindowBackward")
    tr = m.step_trace(tokens[:, 0])
    assert len(calls) == 1 and tr["c"].shape == (5, 6)
    m.fused_recurrence = False
    logits, _ = m(tokens)
    assert len(calls) == 1 and not _graph_has(logits, "_FusedLstmWindowBackward")
    cellfmt = _model(2, "sigmoid", "zero", dtype=torch.float32, cell="fixed:3.10")
    assert cellfmt.fused_recurrence and not cellfmt.rnn.fusable
    cellfmt(tokens)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="does not emulate the cell format fixed:3.10"):
        cellfmt.rnn.recurrence_fused(torch.zeros(1, 2, 24), torch.zeros(6, 24), torch.zeros(2, 6), torch.zeros(2, 6))
    for ct in ("gru", "gru_ott", "rnn"):
        torch.manual_seed(0)
        other = QuantRNNLM(LMConfig(vocab=11, hidden=6, wbits=2, abits=2, cell_type=ct))
        assert not other.rnn.fusable
        other(tokens)
    assert len(calls) == 1


def test_eval_without_grad_equals_step_by_step():
    """Evaluation (no_grad) takes the fused forward without keeping anything: the same logits."""
    m = _model(3, "tanh", "half", dtype=torch.float32)
    m.eval()
    tokens = torch.randint(0, 11, (6, 3))
    with torch.no_grad():
        a, sa = m(tokens)
        m.fused_recurrence = False
        b, sb = m(tokens)
    assert torch.equal(a, b) and torch.equal(sa[0], sb[0]) and torch.equal(sa[1], sb[1]) and a.grad_fn is None


# ------------------------------------------------------------------------- the training option
def test_seeded_training_fused_vs_step_by_step(tiny_corpus, tmp_path):
    """A seeded W2A2 run (one epoch, 117 batches, tiny corpus) with the fused recurrence on and off: not
    bit-identical (rnn.weight's gradient differs by rounding, which then reaches the weight scale and
    the other parameters), but every parameter within 1e-5 (relative to max(1, |p|)) and the test
    perplexity within 1e-5 relative. (A float run at lr 20 amplifies such differences chaotically, as
    it does a 1-ulp change of its start: nothing to compare there beyond the forward.)"""
    states, summaries = {}, {}
    for fused in (True, False):
        out = tmp_path / f"run_{fused}"
        summaries[fused] = train(data=str(tiny_corpus), out=str(out), wbits=2, abits=2, fused_recurrence=fused,
                                 **dict(QUICK, hidden=16))
        ck = torch.load(out / "last.pt", weights_only=True)
        states[fused] = ck["model"]
        assert ck["train_opts"]["fused_recurrence"] is fused
    a, b = states[True], states[False]
    assert a.keys() == b.keys()
    for k in a:
        assert _close(a[k], b[k], 1e-5), k
    assert summaries[True]["test_ppl"] == pytest.approx(summaries[False]["test_ppl"], rel=1e-5)


def test_option_recorded_and_old_checkpoints_resume(tiny_corpus, tmp_path, capsys):
    """fused_recurrence is written into last.pt's train_opts and logged; a last.pt without the key (written
    before it existed) resumes; changing it on resume is allowed and noted; a non-bool is refused."""
    out = tmp_path / "r"
    train(data=str(tiny_corpus), out=str(out), max_batches=3, **QUICK)
    assert "; fused recurrence" in capsys.readouterr().out
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["train_opts"]["fused_recurrence"] is True
    del ck["train_opts"]["fused_recurrence"]  # as written before the option existed
    torch.save(ck, out / "last.pt")
    s = train(data=str(tiny_corpus), out=str(out), max_batches=2, **QUICK)
    assert s["interrupted"] and "resuming" in capsys.readouterr().out
    s = train(data=str(tiny_corpus), out=str(out), fused_recurrence=False, **QUICK)
    log = capsys.readouterr().out
    assert "written with fused_recurrence=True, this invocation runs with False" in log
    assert "; step-by-step recurrence" in log and not s["interrupted"]
    model, _, meta = load_lm_checkpoint(out / "last.pt")
    assert meta["train_opts"]["fused_recurrence"] is False and model.fused_recurrence  # a model default
    with pytest.raises(TrainError, match="fused_recurrence must be True or False, got 'no'") as e:
        train(data=str(tiny_corpus), out=str(tmp_path / "bad"), fused_recurrence="no", **QUICK)
    assert "\n" not in str(e.value)


def test_cli_flag_on_train_and_experiment(tiny_corpus, tmp_path):
    """--no-fused-recurrence on train and experiment (absent: the default, on); the experiment's
    results entry records it in its recipe."""
    p = build_parser()
    for cmd in (["train"], ["experiment", "--out", "x"]):
        assert p.parse_args(cmd).fused_recurrence is None
        args = p.parse_args(cmd + ["--no-fused-recurrence"])
        assert args.fused_recurrence is False and _train_extra(args)["fused_recurrence"] is False
    from sw_ref.experiment import run_experiment

    res = tmp_path / "ptb.json"
    e = run_experiment(str(tiny_corpus), tmp_path / "run", wbits=2, abits=2, hidden=8, epochs=1, results=res,
                       command="test", fused_recurrence=False, max_batches=2,
                       **{k: v for k, v in QUICK.items() if k not in ("hidden", "epochs")})
    assert e["recipe"]["fused_recurrence"] is False
    assert json.loads(res.read_text())["runs"]["W2A2@8"]["recipe"]["fused_recurrence"] is False
    e = run_experiment(str(tiny_corpus), tmp_path / "run2", wbits=2, abits=2, hidden=8, epochs=1, results=res,
                       command="test", max_batches=2,
                       **{k: v for k, v in QUICK.items() if k not in ("hidden", "epochs")})
    assert e["recipe"]["fused_recurrence"] is True
