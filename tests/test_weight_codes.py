"""Ott et al.'s weight codings in hwrnn (hwrnn.weight_code): the deterministic rounding rules, the
MAC values the hardware sums, and the refusals; the MAC units themselves are held equal to ``acc``
in tests/test_units.py, the whole core in tests/test_core_amaranth.py and the cocotb matrix."""
import math

import numpy as np
import pytest

from hwrnn import Folding, LayerConfig, QuantLayer
from hwrnn.config import ConfigError
from hwrnn.weight_code import WEIGHT_CODES, WeightCode, glorot_bound


def test_ternary_rounds_at_half_the_scale():
    code = WeightCode.named("ternary", 2)
    s = 0.4
    w = np.array([[-0.21, -0.2, -0.19, 0.0, 0.19, 0.2, 0.21, 5.0, -5.0]])
    n, got_s = code.codes(w, 2.5, scale=s)
    assert got_s == s
    assert code.mac_values(n).tolist() == [[-1, -1, 0, 0, 0, 0, 1, 1, -1]]  # +s only above s/2, -s at -s/2
    assert code.value(n, s).tolist() == [[-s, -s, 0, 0, 0, 0, s, s, -s]]
    w = np.zeros((3, 24))
    assert code.codes(w, 2.5)[1] == glorot_bound(w) == math.sqrt(6 / 24)


def test_pow2_ternary_rounds_half_away_from_zero_to_a_power_of_two():
    code = WeightCode.named("pow2_ternary", 2)
    w = np.array([[-0.25, -0.124, 0.124, 0.125, 0.3]] + [[0.0] * 5] * 0)
    w = np.concatenate([w, np.zeros((1, 91))], axis=1)  # 96 columns: Glorot 0.25 -> s = 2**-2
    n, s = code.codes(w, 2.5)
    assert s == 0.25
    assert code.mac_values(n)[0, :5].tolist() == [-1, 0, 0, 1, 1]  # W >= s/2 -> +s (half away from zero)


def test_ternary_mean_scale():
    code = WeightCode.named("ternary_mean", 2)
    w = np.array([[0.1, -0.3, 0.2, 0.0]])
    assert code.codes(w, 2.5)[1] == pytest.approx(1.4 * 0.15)


def test_exponential_levels_zero_and_tiny_weights():
    code = WeightCode.named("exponential", 4)  # sign + 3 exponent bits: levels 2**-6 .. 1 (times s), and 0
    assert (code.exp_bits, code.top, code.unit_divisor, code.max_mac_value) == (3, 7, 64, 64)
    s = 1.0
    levels = [2.0 ** k for k in range(-6, 1)]
    w = np.array([[0.0, 1.0, -1.0, 4.0, 0.75, 0.76, -0.74, levels[0], levels[0] * 0.5, levels[0] * 0.49,
                   -levels[0] * 0.6]])
    n, _ = code.codes(w, 0, scale=s)
    v = code.value(n, s)[0].tolist()
    assert v == [0.0, 1.0, -1.0, 1.0, 0.5, 1.0, -0.5, levels[0], levels[0], 0.0, -levels[0]]
    # every code's MAC value is a signed power of two or 0, and value = m * s / 2**(E-1)
    allc = np.arange(16)
    m = code.mac_values(allc)
    assert set(np.abs(m).tolist()) == {0} | {2 ** j for j in range(7)}
    assert code.value(allc, 2.0).tolist() == (m * 2.0 / 64).tolist()
    # nearest level in the linear sense between neighbours (Ott: up only if above the midpoint)
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (50, 50))
    n, s = code.codes(w, 0)
    v = code.value(n, s)
    big = np.abs(w) >= s * levels[0]
    lo = s * 2.0 ** np.floor(np.log2(np.abs(w[big]) / s))
    assert np.all((np.abs(v[big]) == lo) | (np.abs(v[big]) == np.minimum(2 * lo, s)))
    assert np.all(np.abs(np.abs(v[big]) - np.abs(w[big])) <= lo / 2 + 1e-12)


def test_codes_refuse_what_they_cannot_store():
    with pytest.raises(ConfigError, match="ternary codes take wbits=2"):
        LayerConfig(wbits=3, abits=2, hidden=4, weight_code="ternary")
    with pytest.raises(ConfigError, match="exponential codes take wbits 3..5"):
        LayerConfig(wbits=6, abits=2, hidden=4, weight_code="exponential")
    cfg = LayerConfig(wbits=4, abits=2, hidden=4, weight_code="exponential")
    with pytest.raises(ConfigError, match="use planes=parallel"):
        Folding(pe=4, simd=4, planes="serial").check_against(cfg)
    for name, bits in (("ternary", 2), ("exponential", 4)):
        with pytest.raises(ValueError, match="NaN"):
            WeightCode.named(name, bits).codes(np.array([[np.nan, 1.0]]), 2.5)


@pytest.mark.parametrize("cls", WEIGHT_CODES, ids=lambda c: c.name)
def test_every_code_round_trips_a_layer(cls, tmp_path):
    """A random layer of each code: codes in range, the reference acc equals mac_values @ a, and the
    checkpoint keeps the code."""
    bits = cls.default_bits or 3
    cfg = LayerConfig(wbits=bits, abits=2, hidden=5, input=3, weight_code=cls.name)
    layer = QuantLayer.random(cfg, seed=1)
    assert layer.codes.min() >= 0 and layer.codes.max() <= cfg.weight_coding.max_code
    assert len(np.unique(cfg.weight_coding.mac_values(layer.codes))) >= 3  # a fresh layer uses its levels
    a = np.arange(cfg.columns) % 4
    assert cfg.weight_coding.acc(layer.codes, a).tolist() == (cfg.weight_coding.mac_values(layer.codes) @ a).tolist()
    layer.save(tmp_path / "l.npz")
    from hwrnn.checkpoint import load_layer
    back = load_layer(tmp_path / "l.npz")
    assert back.cfg.weight_code == cls.name and np.array_equal(back.codes, layer.codes)
