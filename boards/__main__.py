"""python -m boards: the LSTM core on FPGA boards with a UART host link.

    python -m boards list
    python -m boards fit   --board icebreaker --wbits 2 --abits 2 --hidden 32
    python -m boards build --board ulx3s --wbits 2 --abits 2 --hidden 32 [-o build/boards/ulx3s]
    python -m boards run   --port /dev/ttyUSB0 --build build/boards/ulx3s [--steps 50]
    python -m boards sim   --wbits 2 --abits 2 --hidden 4 --input 3 --pe 4 --simd 4

build: fit check (refused with needed vs available before any tool runs), bitstream with the
YoWASP tools (ULX3S, iCEBreaker) or the Vivado build tree (Arty A7), report.txt/report.json with
resources, Fmax and timing. Exit 0 built (timing met), 1 timing not met, 2 refused/invalid, 3 tool
failure. run: loads the checkpoint over the link, runs a sequence and checks every h_t, c_t
against the integer model; exit 0 only when all matched. sim: the board-level cocotb simulation
(UART + framing + core, corrupted frames included).

The layer options (--wbits ... --checkpoint --random --seed --pe --simd --planes) are
hwrnn.layer_options': the same flags give the same layer and refusals as rtl_gen and sim; only the
default folding is the board's.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from hwrnn import layer_options
from hwrnn.checkpoint import CheckpointError, QuantLayer, load_layer
from hwrnn.cli import os_error_line
from hwrnn.config import ConfigError, Folding
from hwrnn.layer_options import add_layer_options, weight_seed


def _layer_args(p, with_fold=True):
    add_layer_options(p, folding=with_fold, folding_default="the board's (python -m boards list); for sim about "
                                                           "H/16 rows, at most 64, and 32 columns")


def resolve_fold(args, cfg, spec=None) -> Folding:
    """--pe/--simd/--planes, defaulting to the board's folding (Folding.default_for without a board)."""
    return layer_options.folding_from_args(args, cfg, spec.default_folding if spec is not None else None)


def resolve(args, spec=None) -> tuple[QuantLayer, Folding, str]:
    """(layer, folding, source): hwrnn.layer_options.resolve with the board's default folding."""
    return layer_options.resolve(args, spec.default_folding if spec is not None else None)


class Refused(ValueError):
    """A command-line value that cannot be used (message is one line)."""


def positive_int(value, flag: str) -> None:
    if value is not None and value <= 0:
        raise Refused(f"{flag} must be a positive integer, got {value}")


def positive_seconds(value, flag: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise Refused(f"{flag} must be a positive, finite number of seconds, got {value}")


def load_sequence(path, cfg):
    """The x codes of ``--sequence`` (.npy, or JSON: a list of steps, each a list of ``cfg.input``
    integer codes in 0..2**abits - 1) as an int64 array [T, input]; Refused naming the problem."""
    import numpy as np

    path = Path(path)
    where = f"--sequence {path}"
    try:
        if path.suffix == ".npy":
            xs = np.load(path, allow_pickle=False)
        else:
            xs = json.loads(path.read_text())
            if not (isinstance(xs, list) and all(isinstance(r, list) for r in xs)):
                raise Refused(f"{where}: expected a list of steps, each a list of {cfg.input} integer codes")
            if any(not isinstance(v, int) or isinstance(v, bool) for r in xs for v in r):
                raise Refused(f"{where}: codes must be integers (no floats, booleans or objects)")
            xs = np.asarray(xs, dtype=np.int64) if xs else np.zeros((0, cfg.input), np.int64)
    except Refused:
        raise
    except json.JSONDecodeError as e:
        raise Refused(f"{where}: not JSON ({e})") from None
    except (ValueError, OverflowError, EOFError) as e:  # ragged lists, huge integers, pickled or cut .npy
        raise Refused(f"{where}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if xs.dtype.kind not in "iu":
        raise Refused(f"{where}: codes must be integers, got {xs.dtype} values")
    if xs.ndim != 2 or xs.shape[1] != cfg.input:
        raise Refused(f"{where}: expected shape [T, {cfg.input}] (input {cfg.input}), got {list(xs.shape)}")
    if xs.shape[0] == 0:
        raise Refused(f"{where}: no steps")
    top = (1 << cfg.abits) - 1
    bad = np.argwhere((xs < 0) | (xs > top))
    if bad.size:
        t, j = (int(v) for v in bad[0])
        raise Refused(f"{where}: code {int(xs[t, j])} at step {t}, input {j} is outside 0..{top} "
                      f"(abits {cfg.abits})")
    return xs.astype(np.int64)


def cmd_list(args) -> int:
    from .top import BOARDS

    for name, s in BOARDS.items():
        tool = "YoWASP yosys + nextpnr (built here)" if s.open_toolchain else "Vivado build tree (not run here)"
        print(f"{name:12s} {s.title:36s} {s.device:10s} {s.clk_hz / 1e6:g} MHz, default PE {s.default_pe} "
              f"SIMD {s.default_simd}, {tool}")
    return 0


def cmd_fit(args) -> int:
    from .build import fit_check
    from .top import BOARDS

    layer, _src = layer_options.resolve_layer(args)
    rc = 0
    for name in ([args.board] if args.board else list(BOARDS)):
        spec = BOARDS[name]
        fold = resolve_fold(args, layer.cfg, spec)
        fit = fit_check(layer, fold, spec)
        state = "fits" if fit["fits"] else "DOES NOT FIT"
        print(f"{name}: {state} (PE {fold.pe} SIMD {fold.simd}): weights {fit['weight_bits_padded']:,} bits, memories "
              f"{fit['memory_bits']:,} of {fit['block_ram_bits']:,} bits, about {fit['blocks_needed_estimate']} of "
              f"{fit['blocks_available']} {fit['block_kind']}, {fit['multipliers']} multipliers / "
              f"{fit['dsp_available']} DSPs")
        for p in fit["problems"]:
            print(f"  problem: {p}")
        for w in fit["warnings"]:
            print(f"  warning: {w}")
        rc = rc or (0 if fit["fits"] else 2)
    return rc


def cmd_build(args) -> int:
    from .build import BuildFailed, BuildOptions, FitError, build
    from .top import BOARDS

    spec = BOARDS[args.board]
    try:
        positive_int(args.baud, "--baud")
        positive_seconds(args.frame_timeout, "--frame-timeout")
        layer, fold, src = resolve(args, spec)
        out = args.out or f"build/boards/{args.board}"
        print(f"boards: {spec.title}: W{layer.cfg.wbits}A{layer.cfg.abits} H={layer.cfg.hidden} "
              f"X={layer.cfg.input}, PE {fold.pe} SIMD {fold.simd} {fold.planes}, weights {src}")
        rep = build(args.board, layer, fold, out,
                    BuildOptions(baud=args.baud, frame_timeout_s=args.frame_timeout, run_tools=not args.no_tools,
                                 force=args.force, source=src))
    except (ConfigError, CheckpointError, FitError, ValueError) as e:
        print(f"boards: error: {e}", file=sys.stderr)
        return 2
    except BuildFailed as e:
        print(f"boards: build failed: {e}", file=sys.stderr)
        return 3
    print((Path(rep["build_dir"]) / "report.txt").read_text(), end="")
    if rep.get("timing_met") is False:
        print("boards: timing NOT met (bitstream written anyway)", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    from .host import BoardLink, LinkError, SerialTransport, random_sequence, run_sequence

    try:
        positive_int(args.baud, "--baud")
        positive_int(args.steps, "--steps")
        positive_seconds(args.timeout, "--timeout")
        if args.retries < 0:
            raise Refused(f"--retries must be a non-negative integer, got {args.retries}")
        baud = args.baud
        if args.build:
            rep = json.loads((Path(args.build) / "report.json").read_text())
            baud = baud or rep["baud"]
        if args.build and not args.checkpoint:  # the layer baked into the bitstream
            layer = load_layer(Path(args.build) / "layer.npz")
            layer_options.check_against_checkpoint(args, layer.cfg)
        else:
            layer, _src = layer_options.resolve_layer(args)
        baud = baud or 115200
        if args.sequence:
            xs = load_sequence(args.sequence, layer.cfg)
        else:
            xs = random_sequence(layer.cfg, args.steps, weight_seed(args))
    except (ConfigError, CheckpointError, ValueError, KeyError) as e:
        print(f"boards run: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"boards run: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    try:
        tr = SerialTransport(args.port, baud)
        link = BoardLink(tr, timeout=args.timeout, retries=args.retries, log=lambda m: print(f"  link: {m}"))
        info = link.connect()
        print(f"board: W{info.wbits}A{info.abits} H={info.hidden} X={info.input} PE {info.pe} SIMD {info.simd} "
              f"{info.planes_name}, {info.latency} cycles/step at {info.clk_hz / 1e6:g} MHz, "
              f"{info.baud:.0f} baud")
        res = run_sequence(link, layer, xs, load=not args.no_load)
        st = link.status()
        tr.close()
    except LinkError as e:
        print(f"boards run: link error: {e}", file=sys.stderr)
        return 3
    for m in res.mismatches[:20]:
        print(f"  MISMATCH {m}")
    print(res.line())
    print(f"status: {st.steps} steps, last {st.last_cycles} cycles, {st.frames_ok} frames, errors: CRC {st.crc_errors}, "
          f"header {st.header_errors}, timeout {st.timeouts}, arg {st.arg_errors}, uart {st.uart_errors}, "
          f"dropped {st.dropped}; requests answered again without executing: {st.duplicates}")
    if args.json:
        Path(args.json).write_text(json.dumps({"ok": res.ok, "steps": res.steps, "mismatches": res.mismatches,
                                               "cycles": res.cycles, "latency": res.latency,
                                               "wall_s": res.wall_s, "stats": res.stats,
                                               "status": st.__dict__}, indent=2))
    return 0 if res.ok else 1


def cmd_sim(args) -> int:
    from sim.runner import SimulationFailed, SimulatorError

    from .simulate import run_board_sim
    from .uart import MIN_DIVISOR

    try:
        positive_int(args.steps, "--steps")
        if args.divisor < MIN_DIVISOR:
            raise Refused(f"--divisor must be at least {MIN_DIVISOR} clock cycles per bit, got {args.divisor}")
        layer, fold, _src = resolve(args)
        work = Path(args.work) if args.work else Path("build/boards/sim")
        t0 = time.perf_counter()
        res = run_board_sim(layer, fold, work, sim=args.sim, divisor=args.divisor, steps=args.steps,
                            seed=weight_seed(args), waves=args.waves)
    except (ConfigError, CheckpointError, ValueError) as e:
        print(f"boards sim: error: {e}", file=sys.stderr)
        return 2
    except (SimulationFailed, SimulatorError) as e:
        print(f"boards sim: FAIL: {e}", file=sys.stderr)
        return 1
    print(res.line())
    print(f"generate {res.generate_s:.1f} s, build {res.build_s:.1f} s, run {res.run_s:.1f} s, "
          f"total {time.perf_counter() - t0:.1f} s" + (f"; waves {res.waveform}" if res.waveform else ""))
    return 0


def parse_args(argv):
    from .top import BOARDS

    p = argparse.ArgumentParser(prog="python -m boards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="known boards")
    f = sub.add_parser("fit", help="fit check only (no tools)")
    f.add_argument("--board", choices=sorted(BOARDS))
    _layer_args(f)
    b = sub.add_parser("build", help="bitstream (ULX3S, iCEBreaker) or vendor build tree (Arty A7) and report")
    b.add_argument("--board", required=True, choices=sorted(BOARDS))
    _layer_args(b)
    b.add_argument("--baud", type=int, help="UART baud (default 115200)")
    b.add_argument("--frame-timeout", type=float, default=0.05, help="seconds of silence that end a broken frame")
    b.add_argument("-o", "--out", help="build directory (default build/boards/<board>)")
    b.add_argument("--no-tools", action="store_true", help="write the build tree and report, run no tool")
    b.add_argument("--force", action="store_true", help="build even when the fit check refuses")
    r = sub.add_parser("run", help="load a checkpoint over the link and check a sequence against the integer model")
    r.add_argument("--port", required=True, help="serial port or pyserial URL")
    r.add_argument("--baud", type=int, help="baud (default: the build's, else 115200)")
    r.add_argument("--build", help="build directory: its layer.npz and baud (the layer baked into the bitstream)")
    _layer_args(r, with_fold=False)
    r.add_argument("--steps", type=int, default=50, help="random sequence length (without --sequence)")
    r.add_argument("--sequence", help="x codes: .npy or JSON, shape [T, input]")
    r.add_argument("--no-load", action="store_true", help="use the weights in the board's memories as they are")
    r.add_argument("--timeout", type=float, default=0.5,
                   help="reply slack in seconds; every link call ends within a deadline built from it")
    r.add_argument("--retries", type=int, default=3, help="resends of a request after an error")
    r.add_argument("--json", help="write the run summary here")
    s = sub.add_parser("sim", help="board-level cocotb simulation (UART, framing, corrupted frames)")
    _layer_args(s)
    s.add_argument("--sim", choices=["icarus", "verilator"], default="icarus")
    s.add_argument("--divisor", type=int, default=4, help="UART clock cycles per bit")
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--work", help="work directory (default build/boards/sim)")
    s.add_argument("--waves", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return {"list": cmd_list, "fit": cmd_fit, "build": cmd_build, "run": cmd_run, "sim": cmd_sim}[args.cmd](args)
    except (ConfigError, CheckpointError) as e:
        print(f"boards: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read, made or written
        print(f"boards: error: {os_error_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
