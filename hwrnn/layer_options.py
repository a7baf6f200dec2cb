"""The layer option group of the command-line tools (rtl_gen, sim, boards): the flags that name one
quantized layer, its weights and its folding, and their one resolution into
``(QuantLayer, Folding, source)``.

Contract (the same for every tool that calls ``add_layer_options`` and ``resolve``):

- weights: ``--checkpoint FILE`` loads a layer exported by sw_ref; otherwise the shipped trained layer
  (hwrnn.pretrained) when the config equals its LayerConfig exactly and ``--random`` is not given;
  otherwise seeded random weights (``--seed``, default 0) drawn like a freshly initialised layer.
- number formats: --z-frac/--lut-bits/--gate-frac/--mult-bits/--cell (as sw_ref eval has them); each
  one not given is derived from the bit widths by LayerConfig's one rule (hwrnn.config).
- with ``--checkpoint``, each of --wbits/--abits/--hidden/--input/--candidate/--cell-type/--weight-code and of
  the format options that is given must agree with the checkpoint's config (refused otherwise: the checkpoint's formats
  are the layer's); --random with --checkpoint is refused.
- folding: --pe/--simd/--planes, each defaulting to the tool's default folding for the config
  (``Folding.default_for`` unless the tool passes another, e.g. a board's), checked against the layer;
  out-of-range values (``--pe 0``) are refused, never replaced by a default.
- every refusal is a ConfigError or CheckpointError whose message is one line naming the problem.

numpy-only (never torch).
"""
from __future__ import annotations

import argparse
from typing import Callable

from . import pretrained
from .checkpoint import QuantLayer, load_layer
from .config import CANDIDATES, PLANE_MODES, ConfigError, Folding, LayerConfig
from .gates import GATE_SETS
from .weight_code import WEIGHT_CODES

REQUIRED = ("wbits", "abits", "hidden")  # without --checkpoint
CHECKED = ("wbits", "abits", "hidden", "input", "candidate", "cell_type", "weight_code")  # must agree with a checkpoint when given
#: the number-format options (LayerConfig fields), each derived from the bit widths when not given;
#: --cell is compared by the format it names (fixed:3.10 == FIXED:3.10), the others by value
FORMATS = ("z_frac", "lut_bits", "gate_frac", "mult_bits")

DefaultFolding = Callable[[LayerConfig], Folding]


def add_layer_options(parser: argparse.ArgumentParser, folding: bool = True,
                      folding_default: str = "about H/16 rows (a multiple of 4, at most 64) and 32 columns"):
    """Add the layer option group to ``parser`` (with --pe/--simd/--planes unless ``folding`` is False);
    ``folding_default`` words the tool's default folding in the help. Returns the group."""
    g = parser.add_argument_group("layer", "the layer, its weights and its folding (the same in rtl_gen, sim, boards)")
    g.add_argument("--wbits", type=int, help="weight bits (1..8; default with --weight-code ternary 2, exponential 4)")
    g.add_argument("--abits", type=int, help="activation bits (1..8)")
    g.add_argument("--hidden", type=int, help="hidden units H")
    g.add_argument("--input", type=int, help="input size X (default: hidden)")
    g.add_argument("--cell", default=None, help="cell-state format: fixed:I.F, fp16, bf16 or eXmY (default: from --abits, "
                                                "fixed:3.10 up to A5; the rule: hwrnn.config)")
    g.add_argument("--z-frac", type=int, default=None,
                   help="fraction bits of the gate pre-activations (default: from --abits, 5 up to A5)")
    g.add_argument("--lut-bits", type=int, default=None,
                   help="address bits of the sigmoid/tanh tables (default: from --abits and --z-frac, 9 up to A5)")
    g.add_argument("--gate-frac", type=int, default=None,
                   help="fraction bits of the gate outputs (default: from --abits, 8 up to A5)")
    g.add_argument("--mult-bits", type=int, default=None, help="significant bits of the scale multiplier (default 16)")
    g.add_argument("--cell-type", choices=[gs.name for gs in GATE_SETS], default=None,
                   help="recurrent cell (hwrnn.gates): lstm (default), gru (He et al.: reset before the product), "
                        "gru_ott (reset after the product: integer model only), rnn (vanilla)")
    g.add_argument("--weight-code", choices=[c.name for c in WEIGHT_CODES], default=None,
                   help="weight coding (hwrnn.weight_code): balanced (He et al., default), ternary, ternary_mean, "
                        "pow2_ternary, exponential (Ott et al.)")
    g.add_argument("--candidate", choices=CANDIDATES, default=None,
                   help="candidate nonlinearity (LSTM g, GRU candidate, RNN activation; default sigmoid)")
    g.add_argument("--checkpoint", help="layer checkpoint exported by `python -m sw_ref export` (default: the shipped "
                                        "trained layer for exactly this config, else seeded random weights)")
    g.add_argument("--random", action="store_true",
                   help="seeded random weights even where a trained layer ships (W4A2 H=450: the PTB layer)")
    g.add_argument("--seed", type=int, default=None, help="seed of the random weights (default 0)")
    if folding:
        g.add_argument("--pe", type=int, help=f"rows in parallel, a multiple of the gates a unit computes in one phase: "
                                              f"LSTM 4, GRU 2, RNN 1 (default: {folding_default})")
        g.add_argument("--simd", type=int, help="columns per cycle (default: see --pe)")
        g.add_argument("--planes", choices=PLANE_MODES, default=None, help="weight bit planes per cycle (default parallel)")
    return g


def weight_seed(args) -> int:
    """The --seed of the random weights (0 when not given); refuses a negative one."""
    seed = 0 if args.seed is None else args.seed
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    return seed


def config_from_args(args) -> LayerConfig:
    """LayerConfig from --wbits/--abits/--hidden/--input/--cell-type/--candidate and the format options (no
    checkpoint)."""
    code = getattr(args, "weight_code", None)
    wbits = args.wbits
    if wbits is None and code is not None:
        wbits = next(c for c in WEIGHT_CODES if c.name == code).default_bits
    missing = [o for o in REQUIRED if (wbits if o == "wbits" else getattr(args, o)) is None]
    if missing:
        raise ConfigError("without --checkpoint, give " + ", ".join(f"--{m}" for m in missing))
    kw = dict(wbits=wbits, abits=args.abits, hidden=args.hidden, input=args.input)
    if code is not None:
        kw["weight_code"] = code
    if args.cell is not None:
        kw["cell"] = args.cell
    if args.candidate is not None:
        kw["candidate"] = args.candidate
    if getattr(args, "cell_type", None) is not None:
        kw["cell_type"] = args.cell_type
    for opt in FORMATS:
        if getattr(args, opt, None) is not None:
            kw[opt] = getattr(args, opt)
    return LayerConfig(**kw)


def check_against_checkpoint(args, cfg: LayerConfig) -> None:
    """Refuse any given layer option that disagrees with a checkpoint's config."""
    for opt in CHECKED:
        given = getattr(args, opt, None)
        if given is not None and given != getattr(cfg, opt):
            raise ConfigError(f"--{opt} {given} disagrees with the checkpoint ({opt}={getattr(cfg, opt)})")
    for opt in FORMATS:
        given = getattr(args, opt, None)
        if given is not None and given != getattr(cfg, opt):
            raise ConfigError(f"--{opt.replace('_', '-')} {given} disagrees with the checkpoint ({opt}={getattr(cfg, opt)})")
    if args.cell is not None and LayerConfig.from_dict({**cfg.to_dict(), "cell": args.cell}) != cfg:
        raise ConfigError(f"--cell {args.cell} disagrees with the checkpoint (cell={cfg.cell})")


def folding_from_args(args, cfg: LayerConfig, default: DefaultFolding | None = None) -> Folding:
    """--pe/--simd/--planes, each defaulting to ``default(cfg)`` (Folding.default_for); checked against cfg."""
    d = (default or Folding.default_for)(cfg)
    fold = Folding(pe=d.pe if getattr(args, "pe", None) is None else args.pe,
                   simd=d.simd if getattr(args, "simd", None) is None else args.simd,
                   planes=getattr(args, "planes", None) or d.planes)
    fold.check_against(cfg)
    return fold


def _check(args) -> int:
    if args.random and args.checkpoint:
        raise ConfigError("--random and --checkpoint exclude each other (random weights or a checkpoint's)")
    return weight_seed(args)


def resolve_layer(args) -> tuple[QuantLayer, str]:
    """(layer, one-line description of where its weights came from)."""
    seed = _check(args)
    if args.checkpoint:
        layer = load_layer(args.checkpoint)
        check_against_checkpoint(args, layer.cfg)
        return layer, f"checkpoint {args.checkpoint}"
    return _weights(args, config_from_args(args), seed)


def _weights(args, cfg: LayerConfig, seed: int) -> tuple[QuantLayer, str]:
    rec = None if args.random else pretrained.find(cfg)
    if rec is not None:
        return pretrained.load(rec), pretrained.describe(rec)
    return QuantLayer.random(cfg, seed=seed), f"random (seed {seed}, drawn like a fresh layer)"


def resolve_config(args, default_folding: DefaultFolding | None = None) -> tuple[LayerConfig, Folding]:
    """(LayerConfig, Folding) with every refusal of ``resolve`` but without drawing or loading weights
    (a --checkpoint is still read: its config is the layer's)."""
    _check(args)
    if args.checkpoint:
        cfg = load_layer(args.checkpoint).cfg
        check_against_checkpoint(args, cfg)
    else:
        cfg = config_from_args(args)
    return cfg, folding_from_args(args, cfg, default_folding)


def resolve(args, default_folding: DefaultFolding | None = None) -> tuple[QuantLayer, Folding, str]:
    """(layer, folding, source) from the parsed layer options; raises ConfigError/CheckpointError.

    Cheap refusals first: the config and folding are checked before random weights are drawn."""
    seed = _check(args)
    if args.checkpoint:
        layer, source = resolve_layer(args)
        return layer, folding_from_args(args, layer.cfg, default_folding), source
    cfg = config_from_args(args)
    fold = folding_from_args(args, cfg, default_folding)
    layer, source = _weights(args, cfg, seed)
    return layer, fold, source
