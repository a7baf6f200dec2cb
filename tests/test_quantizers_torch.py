"""sw_ref.quantizers (torch, STE) against the reference integer math of hwrnn.quant."""
import numpy as np
import pytest
import torch

from hwrnn import quant as hq
from sw_ref.quantizers import quantize_activation, quantize_weight, weight_codes_torch

BITS = list(range(1, 9))


@pytest.mark.parametrize("k", BITS)
@pytest.mark.parametrize("use_tanh", [True, False])
def test_weight_forward_bit_exact_float64(k, use_tanh):
    rng = np.random.default_rng(100 + k)
    for shape, sigma in (((1200, 600), 0.5), ((37, 11), 0.05), ((4 * 450, 900), 1.3)):
        w = rng.normal(0.0, sigma, shape)
        gamma = hq.default_gamma(k)
        n_ref, s_ref = hq.weight_codes(w, k, gamma, use_tanh)
        ref = hq.weight_value(n_ref, k, s_ref)
        out = quantize_weight(torch.from_numpy(w), k, None, use_tanh)
        assert out.dtype == torch.float64
        assert np.array_equal(out.numpy(), ref)            # bit for bit
        n, s = weight_codes_torch(torch.from_numpy(w), k, gamma, use_tanh)
        assert s == s_ref and np.array_equal(n.numpy(), n_ref)


@pytest.mark.parametrize("k", BITS)
def test_activation_forward_bit_exact_float64(k):
    rng = np.random.default_rng(k)
    x = np.concatenate([rng.uniform(-0.5, 1.5, 50000), rng.uniform(0, 1, 50000),
                        np.arange(hq.levels(k) + 1) / hq.levels(k), [0.0, 1.0, -0.0]])
    ref = hq.activation_value(hq.activation_codes(x, k), k)
    out = quantize_activation(torch.from_numpy(x), k)
    assert np.array_equal(out.numpy(), ref)


@pytest.mark.parametrize("k", BITS)
def test_number_of_levels(k):
    rng = np.random.default_rng(7)
    w = torch.from_numpy(rng.normal(0, 1, 200000))
    q = quantize_weight(w, k, None, True)
    assert torch.unique(q).numel() == 2 ** k
    a = quantize_activation(torch.from_numpy(rng.uniform(-0.2, 1.2, 100000)), k)
    assert torch.unique(a).numel() == 2 ** k


def test_float_bits_are_identity():
    x = torch.randn(50, dtype=torch.float64)
    for bits in (None, 32):
        assert quantize_activation(x, bits) is x
        assert torch.equal(quantize_weight(x, bits, None, False), x)
        assert torch.equal(quantize_weight(x, bits, None, True), torch.tanh(x))


def test_float32_training_path_matches_reference_codes():
    rng = np.random.default_rng(3)
    w64 = rng.normal(0, 0.2, (1200, 600))
    w32 = torch.from_numpy(w64.astype(np.float32))
    for k in (2, 4):
        n_ref, _ = hq.weight_codes(w32.double().numpy(), k, hq.default_gamma(k), True)
        n32, _ = weight_codes_torch(w32, k)
        diff = np.abs(n32.numpy() - n_ref)
        assert diff.max() <= 1 and (diff != 0).mean() < 1e-4
        q = quantize_weight(w32, k)
        assert q.dtype == torch.float32 and torch.unique(q).numel() == 2 ** k


def test_activation_ste_gradient():
    # documented: grad passes where 0 <= x <= 1 (ends included), zero outside
    x = torch.tensor([-0.3, 0.0, 0.2, 0.5, 0.99, 1.0, 1.7], dtype=torch.float64, requires_grad=True)
    g = torch.arange(1, 8, dtype=torch.float64)
    quantize_activation(x, 2).backward(g)
    assert torch.equal(x.grad, g * torch.tensor([0, 1, 1, 1, 1, 1, 0], dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_weight_ste_gradient(k):
    # documented: identity w.r.t. w' = tanh(w) through the whole expression (clip included),
    # then the exact tanh derivative; no gradient through the scale
    w = torch.tensor([-3.0, -0.4, -0.01, 0.0, 0.02, 0.3, 2.5], dtype=torch.float64, requires_grad=True)
    g = torch.linspace(-1, 2, 7, dtype=torch.float64)
    quantize_weight(w, k, None, True).backward(g)
    assert torch.allclose(w.grad, g * (1 - torch.tanh(w.detach()) ** 2), rtol=0, atol=1e-15)
    w2 = w.detach().clone().requires_grad_(True)
    quantize_weight(w2, k, None, False).backward(g)
    assert torch.equal(w2.grad, g)


def test_balanced_histogram_theorem_with_median():
    # He et al. Theorem 1: k = 2, gamma = 3, threshold gamma*median|X|, X symmetric without ties
    # -> the four bins have exactly the same height. Written with the hwrnn formula (median).
    rng = np.random.default_rng(11)
    for M in (1, 5, 250, 5000):
        v = np.unique(rng.uniform(1e-3, 2.0, 4 * M))[: 2 * M]   # 2M distinct positive values
        assert v.size == 2 * M
        x = rng.permutation(np.concatenate([v, -v]))
        K = hq.levels(2)
        s = 3.0 * np.median(np.abs(x))
        n = hq.round_half_up(K * (np.clip(x / s, -0.5, 0.5) + 0.5)).astype(np.int64)
        counts = np.bincount(n, minlength=4)
        assert counts.tolist() == [M] * 4


def test_rounding_ties_go_up():
    # exact binary ties
    a = quantize_activation(torch.tensor([0.5, 0.25, 0.75], dtype=torch.float64), 1)
    assert a.tolist() == [1.0, 0.0, 1.0]                     # K=1: 0.5 -> 1
    a2 = quantize_activation(torch.tensor([0.5], dtype=torch.float64), 2)
    assert a2.tolist() == [2 / 3]                            # K=3: 1.5 -> 2
    assert hq.activation_codes([0.5], 2).tolist() == [2]
    # weight exactly 0: K*(0 + 1/2) = K/2 is a half-integer (K odd), a tie: it goes to the upper code
    for k, dtype in ((1, torch.float64), (2, torch.float64), (1, torch.float32), (2, torch.float32)):
        w = torch.tensor([0.0, 1.0, -1.0, 0.5, -0.5], dtype=dtype)
        n, s = weight_codes_torch(w, k, 2.0, use_tanh=False)
        K = hq.levels(k)
        assert n[0].item() == (K + 1) // 2                   # the upper of the two middle codes
        n_ref, _ = hq.weight_codes(w.double().numpy(), k, 2.0, use_tanh=False)
        assert n.tolist() == n_ref.tolist()


def test_bad_inputs():
    with pytest.raises(ValueError):
        quantize_weight(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError):
        quantize_weight(torch.zeros(4), 2, None, False)
    for bad in (0, 9, 2.5, True):
        with pytest.raises(ValueError):
            quantize_activation(torch.zeros(3), bad)
