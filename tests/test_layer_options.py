"""One layer option group (hwrnn.layer_options) for rtl_gen, sim and boards: a table of flag sets goes
through each tool's parser and resolver, and the three give the same layer config, folding and
weights (codes, bias, scale), or the same one-line refusal. Then each tool's main() is run up to the
point where it would generate or simulate, to show it uses exactly that resolution.

Drifts this table caught (each has a row marked "drift"): sim ran the default folding for --pe 0
--simd 0; sim drew random weights where rtl_gen builds the shipped trained layer; boards ignored
--cell with --checkpoint; sim had no --candidate; no tool had the number-format options of sw_ref eval
(--z-frac --lut-bits --gate-frac --mult-bits)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hwrnn import Folding, LayerConfig, QuantLayer, pretrained
from hwrnn.checkpoint import CheckpointError
from hwrnn.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CK = LayerConfig(wbits=2, abits=2, hidden=6, input=4)  # the checkpoint's config
SHIPPED = LayerConfig(wbits=3, abits=2, hidden=5, input=4)  # a tiny trained layer shipped for the test
HEADLINE = LayerConfig(wbits=4, abits=2, hidden=450)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A checkpoint, a missing path, and a data dir with a tiny shipped layer beside the real ones."""
    ck = tmp_path / "ck.npz"
    QuantLayer.random(CK, seed=9).save(ck)
    data = tmp_path / "data"
    data.mkdir()
    for f in pretrained.DATA_DIR.glob("*"):
        (data / f.name).symlink_to(f)
    pretrained.write(QuantLayer.random(SHIPPED, seed=77), "tiny", {"run": "test", "epochs_done": 1}, data)
    monkeypatch.setattr(pretrained, "DATA_DIR", data)
    return {"ck": str(ck), "missing": str(tmp_path / "missing.npz")}


def flags(row, env):
    return [str(a).format(**env) for a in row]


# ---- the tools' parse + resolve -------------------------------------------------------------------

def via_rtl_gen(argv):
    from rtl_gen.__main__ import parse_args, resolve

    return resolve(parse_args(argv))


def via_sim(argv):
    from sim.__main__ import parse_args, resolve

    return resolve(parse_args(argv))


def via_boards_sim(argv):
    from boards.__main__ import parse_args, resolve

    return resolve(parse_args(["sim", *argv]))


TOOLS = {"rtl_gen": via_rtl_gen, "sim": via_sim, "boards": via_boards_sim}


# (flags, expected LayerConfig, expected Folding (None: Folding.default_for), expected weights:
#  ("random", seed) | ("checkpoint",) | ("shipped", LayerConfig))
OK = [
    (["--wbits", 2, "--abits", 2, "--hidden", 8], LayerConfig(wbits=2, abits=2, hidden=8), None, ("random", 0)),
    (["--wbits", 3, "--abits", 2, "--hidden", 10, "--input", 7, "--pe", 8, "--simd", 5, "--planes", "serial",
      "--seed", 3], LayerConfig(wbits=3, abits=2, hidden=10, input=7), Folding(8, 5, "serial"), ("random", 3)),
    (["--wbits", 2, "--abits", 3, "--hidden", 4, "--cell", "fp16"], LayerConfig(wbits=2, abits=3, hidden=4, cell="fp16"),
     None, ("random", 0)),
    # drift: sim had no --candidate
    (["--wbits", 2, "--abits", 2, "--hidden", 4, "--candidate", "tanh", "--seed", 5],
     LayerConfig(wbits=2, abits=2, hidden=4, candidate="tanh"), None, ("random", 5)),
    # drift: sim drew random weights where rtl_gen builds the shipped trained layer
    (["--wbits", 3, "--abits", 2, "--hidden", 5, "--input", 4], SHIPPED, None, ("shipped", SHIPPED)),
    (["--wbits", 3, "--abits", 2, "--hidden", 5, "--input", 4, "--random", "--seed", 2], SHIPPED, None, ("random", 2)),
    (["--wbits", 3, "--abits", 2, "--hidden", 5, "--input", 4, "--cell", "bf16"],
     LayerConfig(wbits=3, abits=2, hidden=5, input=4, cell="bf16"), None, ("random", 0)),
    (["--wbits", 4, "--abits", 2, "--hidden", 450], HEADLINE, None, ("shipped", HEADLINE)),
    (["--checkpoint", "{ck}", "--pe", 4, "--simd", 4], CK, Folding(4, 4), ("checkpoint",)),
    (["--checkpoint", "{ck}", "--wbits", 2, "--hidden", 6, "--input", 4, "--cell", "fixed:3.10", "--candidate",
      "sigmoid"], CK, None, ("checkpoint",)),
    # the number formats (as sw_ref eval has them): given ones win, the others follow the rule of hwrnn.config
    (["--wbits", 2, "--abits", 3, "--hidden", 4, "--z-frac", 4, "--lut-bits", 8, "--gate-frac", 7, "--mult-bits", 12],
     LayerConfig(wbits=2, abits=3, hidden=4, z_frac=4, lut_bits=8, gate_frac=7, mult_bits=12), None, ("random", 0)),
    (["--wbits", 8, "--abits", 8, "--hidden", 4], LayerConfig(wbits=8, abits=8, hidden=4, z_frac=8, lut_bits=12, gate_frac=11,
                                                                 mult_bits=16, cell="fixed:3.13"), None, ("random", 0)),
    (["--wbits", 8, "--abits", 8, "--hidden", 4, "--gate-frac", 9],
     LayerConfig(wbits=8, abits=8, hidden=4, gate_frac=9), None, ("random", 0)),
    # explicit formats equal to the shipped layer's still find it
    (["--wbits", 4, "--abits", 2, "--hidden", 450, "--z-frac", 5, "--lut-bits", 9, "--gate-frac", 8, "--mult-bits", 16],
     HEADLINE, None, ("shipped", HEADLINE)),
    (["--checkpoint", "{ck}", "--z-frac", 5, "--lut-bits", 9, "--gate-frac", 8, "--mult-bits", 16], CK, None,
     ("checkpoint",)),
]

# (flags, words the refusal must contain); every tool gives the same message word for word (the exact
# wording of config checks belongs to hwrnn.config, so only its key words are pinned here)
BAD = [
    # drift: sim ran the default folding
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--pe", 0, "--simd", 0], ("pe must be", "got 0")),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--simd", 0], ("simd must be", "got 0")),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--pe", 6], ("pe must be a multiple of 4", "got 6")),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--pe", 64], ("pe=64 exceeds",)),
    (["--wbits", 0, "--abits", 2, "--hidden", 8], ("wbits must be", "got 0")),
    (["--wbits", 2, "--abits", 9, "--hidden", 8], ("abits must be", "got 9")),
    (["--wbits", 2, "--abits", 2, "--hidden", 0], ("hidden must be", "got 0")),
    (["--wbits", 2, "--abits", 2], ("without --checkpoint, give --hidden",)),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--cell", "bogus"], ("'bogus' not understood",)),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--cell", "fixed:1.2"], ("fixed:1.2", "fraction bits")),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--seed", -1], ("seed must be a non-negative integer, got -1",)),
    (["--wbits", 3, "--abits", 2, "--hidden", 5, "--input", 4, "--seed", -1],
     ("seed must be a non-negative integer, got -1",)),
    (["--checkpoint", "{missing}"], ("checkpoint {missing}: file not found",)),
    # drift: boards ignored --cell with --checkpoint
    (["--checkpoint", "{ck}", "--cell", "fp16"], ("--cell fp16 disagrees with the checkpoint (cell=fixed:3.10)",)),
    (["--checkpoint", "{ck}", "--hidden", 7], ("--hidden 7 disagrees with the checkpoint (hidden=6)",)),
    (["--checkpoint", "{ck}", "--candidate", "tanh"],
     ("--candidate tanh disagrees with the checkpoint (candidate=sigmoid)",)),
    (["--checkpoint", "{ck}", "--pe", 0], ("pe must be", "got 0")),
    (["--checkpoint", "{ck}", "--gate-frac", 9], ("--gate-frac 9 disagrees with the checkpoint (gate_frac=8)",)),
    (["--checkpoint", "{ck}", "--z-frac", 6], ("--z-frac 6 disagrees with the checkpoint (z_frac=5)",)),
    (["--checkpoint", "{ck}", "--lut-bits", 12, "--mult-bits", 16],
     ("--lut-bits 12 disagrees with the checkpoint (lut_bits=9)",)),
    (["--checkpoint", "{ck}", "--mult-bits", 20], ("--mult-bits 20 disagrees with the checkpoint (mult_bits=16)",)),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--lut-bits", 4], ("lut_bits=4 with z_frac=5",)),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--mult-bits", 1], ("mult_bits must be", "got 1")),
    (["--wbits", 2, "--abits", 2, "--hidden", 8, "--z-frac", 12, "--cell", "fixed:3.10"], ("fixed:3.10", "fraction bits")),
    (["--checkpoint", "{ck}", "--random"], ("--random and --checkpoint exclude each other",)),
]


def refusal(argv, env) -> str:
    """rtl_gen's refusal of argv (the reference the other tools must equal)."""
    with pytest.raises((ConfigError, CheckpointError)) as ei:
        via_rtl_gen(flags(argv, env))
    return str(ei.value)


def expected_layer(weights, cfg, env):
    kind = weights[0]
    if kind == "random":
        return QuantLayer.random(cfg, seed=weights[1]), f"random (seed {weights[1]}, drawn like a fresh layer)"
    if kind == "checkpoint":
        from hwrnn.checkpoint import load_layer

        return load_layer(env["ck"]), f"checkpoint {env['ck']}"
    rec = pretrained.find(weights[1])
    if rec is None:
        pytest.skip(f"no trained layer shipped for {weights[1]}")
    return pretrained.load(rec), pretrained.describe(rec)


def same_weights(a: QuantLayer, b: QuantLayer) -> bool:
    return (a.cfg == b.cfg and np.array_equal(a.codes, b.codes) and np.array_equal(a.bias, b.bias)
            and a.scale == b.scale)


@pytest.mark.parametrize("row", OK, ids=lambda r: " ".join(map(str, r[0])))
def test_same_flags_same_layer_everywhere(row, env):
    argv, cfg, fold, weights = row
    want_layer, want_source = expected_layer(weights, cfg, env)
    want_fold = fold or Folding.default_for(cfg)
    for tool, resolve in TOOLS.items():
        layer, got_fold, source = resolve(flags(argv, env))
        assert layer.cfg == cfg, tool
        assert got_fold == want_fold, tool
        assert same_weights(layer, want_layer), f"{tool}: other weights ({source})"
        assert source == want_source, tool


@pytest.mark.parametrize("row", BAD, ids=lambda r: " ".join(map(str, r[0])))
def test_same_refusal_everywhere(row, env):
    argv, words = row
    msg = refusal(argv, env)
    assert "\n" not in msg and all(w.format(**env) in msg for w in words), msg
    for tool, resolve in TOOLS.items():
        with pytest.raises((ConfigError, CheckpointError)) as ei:
            resolve(flags(argv, env))
        assert str(ei.value) == msg, tool


@pytest.mark.parametrize("argv", [["--candidate", "bogus"], ["--planes", "diagonal"], ["--pe", "four"]])
def test_argparse_refuses_the_same_choices(argv, capsys):
    from boards.__main__ import parse_args as boards_args
    from rtl_gen.__main__ import parse_args as rtl_args
    from sim.__main__ import parse_args as sim_args

    for parse in (rtl_args, sim_args, lambda a: boards_args(["sim", *a])):
        with pytest.raises(SystemExit) as ei:
            parse(["--wbits", "2", "--abits", "2", "--hidden", "4", *argv])
        assert ei.value.code == 2
        assert argv[0] in capsys.readouterr().err


def test_boards_default_folding_is_the_boards_and_explicit_folding_is_shared(env):
    """Only the default folding differs on a board (its own); given flags resolve the same."""
    from boards.__main__ import parse_args, resolve
    from boards.top import BOARDS

    spec = BOARDS["icebreaker"]
    argv = ["--wbits", "2", "--abits", "2", "--hidden", "32"]
    layer, fold, _ = resolve(parse_args(["build", "--board", "icebreaker", *argv]), spec)
    assert fold == spec.default_folding(layer.cfg) != Folding.default_for(layer.cfg)
    argv += ["--pe", "8", "--simd", "3", "--planes", "serial"]
    got = resolve(parse_args(["build", "--board", "icebreaker", *argv]), spec)
    want = via_rtl_gen(argv)
    assert got[1] == want[1] == Folding(8, 3, "serial") and same_weights(got[0], want[0]) and got[2] == want[2]
    with pytest.raises(ConfigError) as ei:
        resolve(parse_args(["fit", "--board", "icebreaker", *argv, "--pe", "0"]), spec)
    assert str(ei.value) == refusal([*argv, "--pe", "0"], env)


# ---- each tool's main() uses that resolution --------------------------------------------------------

class Reached(Exception):
    """Raised in place of generating or simulating: main() got this far with these arguments."""


def reach(monkeypatch, module, attr):
    def stop(layer, fold, *args, **kw):
        raise Reached(layer, fold)

    monkeypatch.setattr(module, attr, stop)


def mains(tmp_path, monkeypatch):
    """{tool: (main, argv prefix, argv suffix, error prefix)} with the expensive step replaced."""
    import boards.simulate
    import rtl_gen.emit
    import sim.regress
    from boards.__main__ import main as boards_main
    from rtl_gen.__main__ import main as rtl_main
    from sim.__main__ import main as sim_main

    reach(monkeypatch, rtl_gen.emit, "generate")
    reach(monkeypatch, sim.regress, "run_regression")
    reach(monkeypatch, boards.simulate, "run_board_sim")
    return {"rtl_gen": (rtl_main, [], ["-o", str(tmp_path / "out")], "rtl_gen: error: "),
            "sim": (sim_main, [], ["--work", str(tmp_path / "work")], "sim: error: "),
            "boards": (boards_main, ["sim"], ["--work", str(tmp_path / "bwork")], "boards sim: error: ")}


@pytest.mark.parametrize("row", OK, ids=lambda r: " ".join(map(str, r[0])))
def test_mains_use_the_resolved_layer(row, env, tmp_path, monkeypatch):
    argv, cfg, fold, weights = row
    want_layer, _ = expected_layer(weights, cfg, env)
    for tool, (main, pre, post, _prefix) in mains(tmp_path, monkeypatch).items():
        with pytest.raises(Reached) as ei:
            main([*pre, *flags(argv, env), *post])
        layer, got_fold = ei.value.args
        assert same_weights(layer, want_layer) and got_fold == (fold or Folding.default_for(cfg)), tool


@pytest.mark.parametrize("row", BAD, ids=lambda r: " ".join(map(str, r[0])))
def test_mains_refuse_with_one_line(row, env, tmp_path, monkeypatch, capsys):
    argv, _words = row
    msg = refusal(argv, env)
    for tool, (main, pre, post, prefix) in mains(tmp_path, monkeypatch).items():
        assert main([*pre, *flags(argv, env), *post]) == 2, tool
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [prefix + msg], tool
    assert not (tmp_path / "out").exists()


def test_sim_seeds_weights_like_rtl_gen_and_stimulus_separately(env, tmp_path, monkeypatch):
    """--seed seeds the weights (as in rtl_gen); the stimulus seed defaults to it when given."""
    import sim.regress
    from sim.__main__ import main

    seen = {}

    def stop(layer, fold, work, **kw):
        seen.update(kw, layer=layer)
        raise Reached()

    monkeypatch.setattr(sim.regress, "run_regression", stop)
    base = ["--wbits", "2", "--abits", "2", "--hidden", "4", "--work", str(tmp_path)]
    with pytest.raises(Reached):
        main([*base, "--seed", "11"])
    assert seen["seed"] == 11 and same_weights(seen["layer"], QuantLayer.random(seen["layer"].cfg, seed=11))
    with pytest.raises(Reached):
        main([*base, "--seed", "11", "--stimulus-seed", "4"])
    assert seen["seed"] == 4 and same_weights(seen["layer"], QuantLayer.random(seen["layer"].cfg, seed=11))
    with pytest.raises(Reached):
        main(base)
    assert same_weights(seen["layer"], QuantLayer.random(seen["layer"].cfg, seed=0))
    assert seen["source"] == "random (seed 0, drawn like a fresh layer)"
    assert main([*base, "--stimulus-seed", "-2"]) == 2


def test_no_torch_and_one_owner():
    """The option group is numpy-only, and no tool defines its own layer flags."""
    r = subprocess.run([sys.executable, "-c", "import sys, hwrnn.layer_options, rtl_gen.__main__, sim.__main__, "
                        "boards.__main__; print('torch' in sys.modules)"], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "False", r.stderr
    for f in ("rtl_gen/__main__.py", "sim/__main__.py", "boards/__main__.py"):
        text = (ROOT / f).read_text()
        for flag in ("--wbits", "--hidden", "--pe", "--cell", "--checkpoint", "--seed\"", "--z-frac", "--lut-bits",
                     "--gate-frac", "--mult-bits"):
            assert f'add_argument("{flag}' not in text, (f, flag)
