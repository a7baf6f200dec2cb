"""python -m sim: cocotb regression of a generated core against the integer model.

Exit status 0 only when every h_t and c_t matched and every step took the predicted cycles."""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from hwrnn.checkpoint import CheckpointError, QuantLayer, load_layer
from hwrnn.cli import os_error_line
from hwrnn.config import ConfigError, Folding, LayerConfig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    p.add_argument("--wbits", type=int)
    p.add_argument("--abits", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--input", type=int)
    p.add_argument("--pe", type=int)
    p.add_argument("--simd", type=int)
    p.add_argument("--planes", choices=["parallel", "serial"])
    p.add_argument("--cell", default=None)
    p.add_argument("--weights", choices=["memory", "stream"], default="memory",
                   help="weights in on-chip memory or streamed through port w (with random gaps)")
    p.add_argument("--checkpoint", help="layer checkpoint (sw_ref export); default: random weights")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sim", choices=["verilator", "icarus"], default="verilator")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and logged)")
    p.add_argument("--stall", type=float, default=0.3, help="probability of a stall cycle on x and out")
    p.add_argument("--no-resets", action="store_true", help="no reset_state / rst pulses in the sequence")
    p.add_argument("--runtime-load", action="store_true",
                   help="load a second set of weights through the load stream before the sequence")
    p.add_argument("--waves", action="store_true", help="write an FST (Verilator) / VCD (Icarus) waveform")
    p.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    from .runner import SimulationFailed, SimulatorError

    try:
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        if not 0.0 <= args.stall < 1.0:
            raise ConfigError(f"--stall must be in [0, 1), got {args.stall}")
        if args.checkpoint:
            layer = load_layer(args.checkpoint)
            cfg = layer.cfg
        else:
            missing = [o for o in ("wbits", "abits", "hidden") if getattr(args, o) is None]
            if missing:
                raise ConfigError("without --checkpoint, give " + ", ".join(f"--{m}" for m in missing))
            kw = dict(wbits=args.wbits, abits=args.abits, hidden=args.hidden, input=args.input)
            if args.cell:
                kw["cell"] = args.cell
            cfg = LayerConfig(**kw)
            layer = QuantLayer.random(cfg, seed=seed)
        d = Folding.default_for(cfg)
        fold = Folding(pe=args.pe or d.pe, simd=args.simd or d.simd, planes=args.planes or d.planes)
        fold.check_against(cfg)
        runtime = QuantLayer.random(cfg, seed=seed + 1) if args.runtime_load else None
        if runtime is not None and runtime.shift != layer.shift:
            raise ConfigError("--runtime-load drew weights whose scale needs another shift; use another --seed")
        print(f"sim: {args.sim}, seed {seed}, W{cfg.wbits}A{cfg.abits} H={cfg.hidden} X={cfg.input} "
              f"PE={fold.pe} SIMD={fold.simd} planes={fold.planes}", flush=True)
        from .regress import run_regression

        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hwrnn-sim-"))
        res = run_regression(layer, fold, work, sim=args.sim, steps=args.steps, seed=seed, stall_in=args.stall,
                             stall_out=args.stall, resets=not args.no_resets, load_layer=runtime, waves=args.waves,
                             weights=args.weights)
    except (ConfigError, CheckpointError, SimulatorError) as e:
        print(f"sim: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read, made or written
        print(f"sim: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except SimulationFailed as e:
        print(f"FAIL {args.sim}: {str(e).splitlines()[0] if str(e) else 'simulation failed'} (seed {seed})")
        return 1
    print(res.line())
    if res.waveform:
        print(f"waveform: {res.waveform}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
