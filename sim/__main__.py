"""python -m sim: cocotb regression of a generated core against the integer model.

Exit status 0 only when every h_t and c_t matched and every step took the predicted cycles.
The layer options are hwrnn.layer_options' (the same flags build the same layer as rtl_gen and
boards: the shipped trained layer where one matches, else random weights of --seed); the x_t,
stall and reset sequence has its own seed, --stimulus-seed (default: --seed if given, else drawn
and logged)."""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from hwrnn import layer_options
from hwrnn.checkpoint import CheckpointError, QuantLayer
from hwrnn.cli import os_error_line
from hwrnn.config import ConfigError
from hwrnn.layer_options import add_layer_options


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    add_layer_options(p)
    p.add_argument("--weights", choices=["memory", "stream"], default="memory",
                   help="weights in on-chip memory or streamed through port w (with random gaps)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sim", choices=["verilator", "icarus"], default="verilator")
    p.add_argument("--stimulus-seed", type=int, default=None,
                   help="seed of x_t, stalls, resets and --runtime-load weights (default: --seed if given, "
                        "else drawn and logged)")
    p.add_argument("--stall", type=float, default=0.3, help="probability of a stall cycle on x and out")
    p.add_argument("--no-resets", action="store_true", help="no reset_state / rst pulses in the sequence")
    p.add_argument("--runtime-load", action="store_true",
                   help="load a second set of weights through the load stream before the sequence")
    p.add_argument("--waves", action="store_true", help="write an FST (Verilator) / VCD (Icarus) waveform")
    p.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    return p.parse_args(argv)


def stimulus_seed(args) -> int:
    """--stimulus-seed, else --seed, else a fresh one (the run logs it)."""
    seed = args.stimulus_seed if args.stimulus_seed is not None else args.seed
    if seed is None:
        return random.SystemRandom().randrange(1 << 31)
    if seed < 0:
        raise ConfigError(f"--stimulus-seed must be a non-negative integer, got {seed}")
    return seed


def resolve(args):
    """(layer, folding, source description) from the options; raises ConfigError/CheckpointError."""
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if not 0.0 <= args.stall < 1.0:
        raise ConfigError(f"--stall must be in [0, 1), got {args.stall}")
    return layer_options.resolve(args)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from .runner import SimulationFailed, SimulatorError

    seed = None
    try:
        layer, fold, source = resolve(args)
        seed = stimulus_seed(args)
        cfg = layer.cfg
        runtime = QuantLayer.random(cfg, seed=seed + 1) if args.runtime_load else None
        if runtime is not None and runtime.shift != layer.shift:
            raise ConfigError("--runtime-load drew weights whose scale needs another shift; use another --stimulus-seed")
        print(f"sim: {args.sim}, stimulus seed {seed}, W{cfg.wbits}A{cfg.abits} H={cfg.hidden} X={cfg.input} "
              f"PE={fold.pe} SIMD={fold.simd} planes={fold.planes}, weights: {source}", flush=True)
        from .regress import run_regression

        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hwrnn-sim-"))
        res = run_regression(layer, fold, work, sim=args.sim, steps=args.steps, seed=seed, stall_in=args.stall,
                             stall_out=args.stall, resets=not args.no_resets, load_layer=runtime, waves=args.waves,
                             weights=args.weights, source=source)
    except (ConfigError, CheckpointError, SimulatorError) as e:
        print(f"sim: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read, made or written
        print(f"sim: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except SimulationFailed as e:
        print(f"FAIL {args.sim}: {str(e).splitlines()[0] if str(e) else 'simulation failed'} (stimulus seed {seed})")
        return 1
    print(res.line())
    if res.waveform:
        print(f"waveform: {res.waveform}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
