"""python -m rtl_gen: emit the Verilog of a k-bit LSTM core (see README)."""
from __future__ import annotations

import argparse
import sys
import time

from hwrnn.checkpoint import CheckpointError, QuantLayer, load_layer
from hwrnn.config import DEFAULT_CELL, ConfigError, Folding, LayerConfig


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m rtl_gen", description=__doc__)
    p.add_argument("--wbits", type=int, help="weight bits (1..8)")
    p.add_argument("--abits", type=int, help="activation bits (1..8)")
    p.add_argument("--hidden", type=int, help="hidden units H")
    p.add_argument("--input", type=int, help="input size X (default: hidden)")
    p.add_argument("--pe", type=int, help="rows in parallel, a multiple of 4 (default: about H/16, at most 64)")
    p.add_argument("--simd", type=int, help="columns per cycle (default: 32)")
    p.add_argument("--planes", choices=["parallel", "serial"], help="weight bit planes per cycle (default parallel)")
    p.add_argument("--weights", choices=["memory", "stream"], default="memory",
                   help="weights in on-chip memory (default) or streamed in through port w every step")
    p.add_argument("--checkpoint", help="layer checkpoint exported by `python -m sw_ref export`")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights used without --checkpoint")
    p.add_argument("--cell", default=None, help=f"cell-state format (default {DEFAULT_CELL})")
    p.add_argument("--candidate", choices=["sigmoid", "tanh"], default=None, help="candidate gate nonlinearity")
    p.add_argument("--name", default="hwrnn_lstm", help="Verilog top module name")
    p.add_argument("--steps", type=int, default=35, help="sequence length for the per-sequence latency figure")
    p.add_argument("-o", "--out", default="build", help="output directory (default build/)")
    return p.parse_args(argv)


def resolve(args):
    """(layer, folding, source description) from the options; raises ConfigError/CheckpointError."""
    if args.name is None or not args.name.isidentifier():
        raise ConfigError(f"--name must be a Verilog identifier, got {args.name!r}")
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if args.checkpoint:
        layer = load_layer(args.checkpoint)
        cfg = layer.cfg
        for opt in ("wbits", "abits", "hidden", "input", "candidate"):
            given = getattr(args, opt)
            if given is not None and given != getattr(cfg, opt):
                raise ConfigError(f"--{opt} {given} disagrees with the checkpoint ({opt}={getattr(cfg, opt)})")
        if args.cell is not None and LayerConfig(**{**cfg.to_dict(), "cell": args.cell}).cell != cfg.cell:
            raise ConfigError(f"--cell {args.cell} disagrees with the checkpoint (cell={cfg.cell})")
        source = f"checkpoint {args.checkpoint}"
    else:
        missing = [o for o in ("wbits", "abits", "hidden") if getattr(args, o) is None]
        if missing:
            raise ConfigError("without --checkpoint, give " + ", ".join(f"--{m}" for m in missing))
        kw = dict(wbits=args.wbits, abits=args.abits, hidden=args.hidden, input=args.input)
        if args.cell is not None:
            kw["cell"] = args.cell
        if args.candidate is not None:
            kw["candidate"] = args.candidate
        cfg = LayerConfig(**kw)
        layer = QuantLayer.random(cfg, seed=args.seed)
        source = f"random (seed {args.seed}, drawn like a fresh layer)"
    d = Folding.default_for(cfg)
    fold = Folding(pe=args.pe if args.pe is not None else d.pe,
                   simd=args.simd if args.simd is not None else d.simd,
                   planes=args.planes or d.planes)
    fold.check_against(cfg)
    return layer, fold, source


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    try:
        layer, fold, source = resolve(args)
        print(f"rtl_gen: PE={fold.pe} SIMD={fold.simd} planes={fold.planes}"
              + ("" if args.pe and args.simd else " (defaults where not given)"))
        from .emit import generate, write_output  # amaranth import after validation

        files = generate(layer, fold, args.name, source, steps=args.steps, weights=args.weights)
        write_output(files, args.out)
    except (ConfigError, CheckpointError) as e:
        print(f"rtl_gen: error: {e}", file=sys.stderr)
        return 2
    report = files["report.txt"]
    print(report, end="")
    print(f"wrote {', '.join(sorted(files))} to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
