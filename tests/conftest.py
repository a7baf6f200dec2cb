"""Shared fixtures: a tiny corpus, a tiny trained, exported W2A2 layer, and one torch thread."""
import pytest

from tiny_corpus import write_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("tiny_ptb"))


@pytest.fixture(scope="session")
def tiny_trained(tiny_corpus, tmp_path_factory):
    """(run dir, model) of a W2A2 hidden-8 LM trained for one epoch on the tiny corpus."""
    import torch

    from sw_ref.train import load_lm_checkpoint, train

    out = tmp_path_factory.mktemp("tiny_run")
    threads = torch.get_num_threads()
    try:
        train(data=str(tiny_corpus), out=str(out), hidden=8, wbits=2, abits=2, epochs=1, batch_size=10, bptt=20,
              dropout=0.0, threads=1, checkpoint_every=0, log_every=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    model, _vocab, _meta = load_lm_checkpoint(out / "best.pt")
    return out, model


@pytest.fixture(scope="session")
def tiny_trained_layer(tiny_trained):
    from sw_ref.export import layer_from_model

    return layer_from_model(tiny_trained[1])


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (restored after): training tests stay deterministic and do not
    crowd the other test worker."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
