"""hwrnn: quantizer properties, config validation, formats, checkpoint round trip and rejections."""
import json
import zipfile

import numpy as np
import pytest

from hwrnn import formats as fm
from hwrnn.checkpoint import FORMAT_NAME, CheckpointError, QuantLayer, load_layer
from hwrnn.cell_state import CellState
from hwrnn.config import ConfigError, Folding, LayerConfig
from hwrnn.quant import (activation_codes, check_bits, levels, odd_from_code, round_half_up, weight_codes,
                         weight_value)


# ---- quantizers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k", range(1, 9))
def test_weight_quantizer_levels_and_odd_form(k):
    rng = np.random.default_rng(k)
    w = rng.normal(0, 1, 20000)
    n, s = weight_codes(w, k, gamma=2.5, use_tanh=False)
    assert n.min() == 0 and n.max() == levels(k)
    assert len(np.unique(n)) == 2 ** k
    m = odd_from_code(n, k)
    assert np.all(m % 2 != 0) and np.abs(m).max() == levels(k)
    # two float64 spellings of the same real number: equal up to rounding of the last bit
    np.testing.assert_allclose(weight_value(n, k, s), m * s / (2 * levels(k)), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", range(1, 9))
def test_activation_quantizer_levels(k):
    x = np.linspace(-0.5, 1.5, 10001)
    n = activation_codes(x, k)
    assert set(np.unique(n)) == set(range(2 ** k))
    assert n[x <= 0].max() == 0 and n[x >= 1].min() == levels(k)


def test_balanced_histogram_theorem_k2_gamma3():
    """He et al. Theorem 1: k=2, gamma=3, threshold median|X|, symmetric data without ties ->
    four bins of exactly equal height."""
    rng = np.random.default_rng(0)
    half = rng.standard_normal(5000) * np.exp(rng.standard_normal(5000))
    x = np.concatenate([half, -half])  # symmetric, no two entries equal (probability 1)
    assert len(np.unique(x)) == x.size
    s = 3.0 * np.median(np.abs(x))
    n, _ = weight_codes(x, 2, gamma=3.0, use_tanh=False, scale=s)
    counts = np.bincount(n, minlength=4)
    assert list(counts) == [x.size // 4] * 4


def test_rounding_ties_go_up():
    assert list(round_half_up([0.5, 1.5, 2.5, -0.5, -1.5])) == [1, 2, 3, 0, -1]
    # x = 0.5 with k = 1 is a tie: Q_1(0.5) = floor(0.5 + 0.5) = 1
    assert activation_codes([0.5], 1)[0] == 1
    # k = 2: x = 0.5 -> 3 * 0.5 + 0.5 = 2.0 exactly -> 2 (1.5 rounds up)
    assert activation_codes([0.5], 2)[0] == 2
    # weight tie: W/s = 0 -> K*(0.5) + 0.5 with K = 1 -> exactly 1.0 -> code 1
    n, _ = weight_codes(np.array([0.0, 1.0, -1.0]), 1, gamma=2.0, use_tanh=False, scale=1.0)
    assert list(n) == [1, 1, 0]


def test_bad_bits_and_nan_rejected():
    for k in (0, 9, -1, 2.0, True):
        with pytest.raises(ValueError):
            check_bits(k)
    with pytest.raises(ValueError, match="NaN"):
        weight_codes(np.array([1.0, np.nan]), 2, 2.5)
    with pytest.raises(ValueError, match="scale"):
        weight_codes(np.zeros(4), 2, 2.5)


# ---- config -------------------------------------------------------------------------------------

def test_config_defaults_and_json_round_trip():
    cfg = LayerConfig(wbits=4, abits=2, hidden=450)
    assert cfg.input == 450 and cfg.gamma == 2.5 and cfg.cell == "fixed:3.10"
    assert LayerConfig(wbits=1, abits=2, hidden=4).gamma == 2.0
    assert LayerConfig.from_json(cfg.to_json()) == cfg
    assert CellState.parse("fp16").width == 16 and str(CellState.parse("e5m2")) == "e5m2"


@pytest.mark.parametrize("kw,msg", [
    ({"wbits": 0}, "wbits"), ({"abits": 9}, "abits"), ({"hidden": 0}, "hidden"), ({"input": -3}, "input"),
    ({"candidate": "relu"}, "candidate"), ({"cell": "fixed:3.2"}, "fraction bits"), ({"cell": "q8"}, "not understood"),
    ({"cell": "e9m3"}, "exponent bits"), ({"cell": "e5m0"}, "mantissa bits"), ({"gamma": -1.0}, "gamma"), ({"lut_bits": 3, "z_frac": 5}, "lut_bits"),
])
def test_config_rejections(kw, msg):
    base = {"wbits": 2, "abits": 2, "hidden": 8}
    with pytest.raises(ConfigError, match=msg):
        LayerConfig(**{**base, **kw})


# the default-format rule of hwrnn.config: d = max(0, abits - 5) extra bits
FORMATS = ("z_frac", "lut_bits", "gate_frac", "mult_bits", "cell")
BEFORE_THE_RULE = dict(z_frac=5, lut_bits=9, gate_frac=8, mult_bits=16, cell="fixed:3.10")
RULE = {1: BEFORE_THE_RULE, 2: BEFORE_THE_RULE, 3: BEFORE_THE_RULE, 4: BEFORE_THE_RULE, 5: BEFORE_THE_RULE,
        6: dict(z_frac=6, lut_bits=10, gate_frac=9, mult_bits=16, cell="fixed:3.11"),
        7: dict(z_frac=7, lut_bits=11, gate_frac=10, mult_bits=16, cell="fixed:3.12"),
        8: dict(z_frac=8, lut_bits=12, gate_frac=11, mult_bits=16, cell="fixed:3.13")}


@pytest.mark.parametrize("wbits", range(1, 9))
def test_default_formats_follow_abits_only(wbits):
    from hwrnn.config import default_formats

    for abits, want in RULE.items():
        cfg = LayerConfig(wbits=wbits, abits=abits, hidden=3)
        assert {k: getattr(cfg, k) for k in FORMATS} == want == default_formats(abits), (wbits, abits)
        assert LayerConfig.from_json(cfg.to_json()) == cfg  # read back equal, every field explicit
        assert LayerConfig(wbits=wbits, abits=abits, hidden=3, **{k: None for k in FORMATS}) == cfg


def test_the_shipped_layer_keeps_its_formats():
    """W4A2 H=450 is the shipped PTB layer's config (so rtl_gen --wbits 4 --abits 2 --hidden 450 finds it)."""
    from hwrnn import pretrained

    want = LayerConfig.from_dict({"abits": 2, "candidate": "sigmoid", "cell": "fixed:3.10", "gamma": 2.5, "gate_frac": 8,
                                  "hidden": 450, "init_state": "zero", "input": 450, "lut_bits": 9, "mult_bits": 16,
                                  "wbits": 4, "weight_tanh": True, "z_frac": 5})
    assert LayerConfig(wbits=4, abits=2, hidden=450) == want
    rec = pretrained.find(want)
    if rec is not None:
        assert LayerConfig.from_dict(rec["config"]) == LayerConfig(wbits=4, abits=2, hidden=450)


@pytest.mark.parametrize("abits,given,want", [
    # given fields always win; the derived ones follow them
    (8, dict(z_frac=3, lut_bits=7), dict(z_frac=3, lut_bits=7, gate_frac=11, cell="fixed:3.13")),
    (8, dict(gate_frac=9, cell="fixed:4.9"), dict(z_frac=8, lut_bits=12, gate_frac=9, cell="fixed:4.9")),
    (8, dict(cell="fp16"), dict(z_frac=8, lut_bits=12, gate_frac=11, cell="fp16")),
    (8, dict(z_frac=10), dict(z_frac=10, lut_bits=14, cell="fixed:3.15")),
    # a given table or cell lowers the derived z_frac to what it allows, never below 5
    (8, dict(lut_bits=6, cell="fixed:6.6"), dict(z_frac=5, lut_bits=6, cell="fixed:6.6")),
    (7, dict(lut_bits=10), dict(z_frac=7, lut_bits=10, cell="fixed:3.12")),
    (8, dict(cell="fixed:3.6"), dict(z_frac=6, lut_bits=12, cell="fixed:3.6")),
    # up to A5 the values before the rule, whatever is given (z_frac <= 5)
    (2, dict(z_frac=3), dict(z_frac=3, lut_bits=9, cell="fixed:3.10")),
    (5, dict(lut_bits=7, cell="fp16"), dict(z_frac=5, lut_bits=7, gate_frac=8, cell="fp16")),
    (2, dict(z_frac=9), dict(z_frac=9, lut_bits=13, cell="fixed:3.14")),  # was refused (lut_bits 9 < z_frac + 1)
    (2, dict(mult_bits=12), dict(z_frac=5, lut_bits=9, gate_frac=8, mult_bits=12, cell="fixed:3.10")),
])
def test_given_formats_win_and_round_trip(abits, given, want):
    cfg = LayerConfig(wbits=2, abits=abits, hidden=3, **given)
    assert {k: getattr(cfg, k) for k in want} == want
    back = LayerConfig.from_json(cfg.to_json())
    assert back == cfg and json.loads(back.to_json()) == json.loads(cfg.to_json())


@pytest.mark.parametrize("kw,msg", [
    ({"abits": 8, "lut_bits": 4}, "lut_bits=4 with z_frac=5"),  # lowered to 5 at most, never below
    ({"abits": 8, "cell": "fixed:3.2"}, "fraction bits"),
    ({"abits": 2, "z_frac": 12, "cell": "fixed:3.10"}, "fraction bits"),
    ({"abits": 8, "z_frac": -1}, "z_frac"), ({"abits": 8, "lut_bits": 40}, "lut_bits"), ({"abits": 8, "cell": "q8"}, "not understood"),
])
def test_default_formats_never_hide_a_bad_given_field(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        LayerConfig(**{"wbits": 2, "hidden": 8, **kw})


def test_default_formats_refuse_non_format_fields():
    from hwrnn.config import default_formats

    with pytest.raises(ConfigError, match="not a format field: hidden"):
        default_formats(4, hidden=3)
    with pytest.raises(ConfigError, match="abits"):
        default_formats(9)


def test_config_unknown_field_rejected():
    with pytest.raises(ConfigError, match="unknown"):
        LayerConfig.from_dict({"wbits": 2, "abits": 2, "hidden": 8, "colour": 3})


def test_folding_validation():
    cfg = LayerConfig(wbits=2, abits=2, hidden=8, input=4)
    with pytest.raises(ConfigError, match="multiple of 4"):
        Folding(pe=6).check_against(cfg)
    with pytest.raises(ConfigError, match="exceeds"):
        Folding(pe=36).check_against(cfg)
    with pytest.raises(ConfigError, match="exceeds"):
        Folding(pe=4, simd=13).check_against(cfg)
    d = Folding.default_for(LayerConfig(wbits=4, abits=2, hidden=450))
    assert d.pe % 4 == 0 and d.simd == 32


# ---- formats ------------------------------------------------------------------------------------

def test_scale_shift_precision():
    cfg = LayerConfig(wbits=4, abits=2, hidden=16)
    for s in (1e-3, 0.07, 0.5, 3.0, 40.0):
        M, R = fm.scale_shift(cfg, s)
        assert 2 ** (cfg.mult_bits - 1) <= M < 2 ** cfg.mult_bits or R == 1
        exact = s / (2 * 15 * 3) * 2 ** cfg.z_frac
        assert abs(M / 2 ** R - exact) <= 2 ** -(R + 1)


def test_h_code_is_quantized_product_and_cell_saturates():
    cfg = LayerConfig(wbits=2, abits=3, hidden=4)
    G = cfg.gate_frac
    lo, hi = fm.cell_limits(cfg)
    big = 1 << G
    assert fm.cell_update(cfg, big, hi, big, big) == hi  # 1*max + 1*1 saturates
    assert fm.cell_update(cfg, 0, hi, 0, big) == 0
    assert fm.h_code(cfg, big, big) == levels(3)
    assert fm.h_code(cfg, 0, big) == 0


def test_lut_contents_monotonic_and_symmetric():
    cfg = LayerConfig(wbits=2, abits=2, hidden=4)
    s = fm.sigmoid_lut(cfg)
    t = fm.tanh_lut(cfg)
    assert np.all(np.diff(s) >= 0) and np.all(np.diff(t) >= 0)
    half = 1 << (cfg.lut_bits - 1)
    assert s[half] == 1 << (cfg.gate_frac - 1) and t[half] == 0


# ---- checkpoint ---------------------------------------------------------------------------------

@pytest.fixture
def layer():
    return QuantLayer.random(LayerConfig(wbits=3, abits=2, hidden=6, input=5), seed=4)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_random_layer_rejects_bad_seed(seed):
    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        QuantLayer.random(LayerConfig(wbits=2, abits=2, hidden=4), seed=seed)


def test_checkpoint_round_trip(tmp_path, layer):
    p = tmp_path / "l.npz"
    layer.save(p)
    back = load_layer(p)
    assert back.cfg == layer.cfg and back.scale == layer.scale
    np.testing.assert_array_equal(back.codes, layer.codes)
    np.testing.assert_array_equal(back.bias, layer.bias)
    assert (back.mult, back.shift) == (layer.mult, layer.shift)


def _write(path, **arrays):
    np.savez(path, **arrays)


def _arrays(layer):
    return dict(format=np.array(FORMAT_NAME), version=np.array(1), config=np.array(layer.cfg.to_json()),
                codes=layer.codes.astype(np.uint8), scale=np.array(layer.scale), bias=layer.bias.copy())


@pytest.mark.parametrize("mutate,msg", [
    (lambda a: a.update(codes=a["codes"][:, :-1]), "shape"),
    (lambda a: a.update(codes=a["codes"].astype(np.int32)), "dtype"),
    (lambda a: a.update(codes=np.full_like(a["codes"], 8)), "out of range"),
    (lambda a: a.update(bias=np.where(np.arange(a["bias"].size) == 2, np.nan, a["bias"])), "NaN"),
    (lambda a: a.update(bias=np.full_like(a["bias"], np.inf)), "NaN or inf"),
    (lambda a: a.update(scale=np.array(np.nan)), "scale"),
    (lambda a: a.update(scale=np.array(-1.0)), "scale"),
    (lambda a: a.update(bias=a["bias"].astype(np.int64)), "bias"),
    (lambda a: a.update(version=np.array(99)), "version"),
    (lambda a: a.update(format=np.array("other")), "format"),
    (lambda a: a.pop("codes"), "missing"),
    (lambda a: a.update(config=np.array("{not json")), "config"),
    (lambda a: a.update(config=np.array(json.dumps({"wbits": 0, "abits": 2, "hidden": 6}))), "wbits"),
])
def test_checkpoint_rejections(tmp_path, layer, mutate, msg):
    arrays = _arrays(layer)
    mutate(arrays)
    p = tmp_path / "bad.npz"
    _write(p, **arrays)
    with pytest.raises(CheckpointError, match=msg) as e:
        load_layer(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_checkpoint_truncated_and_garbage(tmp_path, layer):
    p = tmp_path / "l.npz"
    layer.save(p)
    data = p.read_bytes()
    for i, blob in enumerate([data[: len(data) // 2], data[:100], b"", b"\x00garbage" * 50]):
        q = tmp_path / f"t{i}.npz"
        q.write_bytes(blob)
        with pytest.raises(CheckpointError, match="corrupt|truncated|readable"):
            load_layer(q)
    with pytest.raises(CheckpointError, match="not found"):
        load_layer(tmp_path / "missing.npz")
    # a damaged member inside a valid zip directory
    q = tmp_path / "flip.npz"
    b = bytearray(data)
    mid = len(b) // 3
    b[mid:mid + 64] = bytes(64)
    q.write_bytes(bytes(b))
    with pytest.raises(CheckpointError):
        load_layer(q)
    assert zipfile.is_zipfile(p)
