"""A stack of layer cores (hwrnn.stack): one rtl_gen.core.LstmCore per layer, layer l's out stream
(its h codes) driving layer l+1's x stream, so the layers work on consecutive steps at once.

Ports:
  x        In  stream, layer 0's x (X*abits bits, as LstmCore)
  out      Out stream, the last layer's h_t (H*abits bits)
  taps     Out, per layer l < L-1: ``h{l}`` (layer l's h codes) and ``h{l}_valid`` (one cycle: layer
           l+1 takes them this cycle); for checking every layer in simulation
  reset_state In: while every layer is idle, sets every layer to its reset state
  busy     Out: some layer has a step in flight

Cycles: hwrnn.stack.stack_schedule (first output after sum of the layer latencies, a step per
max_l (L_l + 1) cycles in steady state). Unidirectional layers only: a bidirectional layer needs
the whole sequence buffered before its backward direction starts (not built in RTL).
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hwrnn.config import ConfigError, Folding
from hwrnn.stack import Stack

from .core import LstmCore


class StackCore(wiring.Component):
    def __init__(self, stack: Stack, folds: list[Folding], image_files: list[str] | None = None):
        if any(layer.bidirectional for layer in stack.layers):
            raise ConfigError("bidirectional layers have no RTL yet (the integer model and checkpoint have them)")
        if len(folds) != len(stack):
            raise ConfigError(f"{len(stack)} layers need {len(stack)} foldings, got {len(folds)}")
        self.stack, self.folds = stack, folds
        self.image_files = image_files or [None] * len(stack)
        A = stack.abits
        self.cores = [LstmCore(layer.directions[0], fold, image_file=img)
                      for layer, fold, img in zip(stack.layers, folds, self.image_files)]
        taps = {}
        for l, layer in enumerate(stack.layers[:-1]):
            taps[f"h{l}"] = Out(layer.cfg.hidden * A)
            taps[f"h{l}_valid"] = Out(1)
        super().__init__({
            "x": In(stream.Signature(stack.input * A)),
            "out": Out(stream.Signature(stack.layers[-1].cfg.hidden * A)),
            **taps,
            "reset_state": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cores = self.cores
        for l, core in enumerate(cores):
            m.submodules[f"layer{l}"] = core
            m.d.comb += [core.load.valid.eq(0), core.reset_state.eq(self.reset_state)]
        first, last = cores[0], cores[-1]
        m.d.comb += [first.x.payload.eq(self.x.payload), first.x.valid.eq(self.x.valid), self.x.ready.eq(first.x.ready),
                     self.out.payload.eq(last.out.payload.h), self.out.valid.eq(last.out.valid),
                     last.out.ready.eq(self.out.ready)]
        for l in range(len(cores) - 1):
            up, down = cores[l], cores[l + 1]
            m.d.comb += [down.x.payload.eq(up.out.payload.h), down.x.valid.eq(up.out.valid),
                         up.out.ready.eq(down.x.ready),
                         getattr(self, f"h{l}").eq(up.out.payload.h),
                         getattr(self, f"h{l}_valid").eq(up.out.valid & down.x.ready)]
        busy = Signal()
        m.d.comb += [busy.eq(0)]
        for core in cores:
            busy = busy | core.busy
        m.d.comb += self.busy.eq(busy)
        return m


# ---- generation ------------------------------------------------------------------------------------

#: the stack's layer weight images: one $readmemh file per layer
def weights_file(layer: int) -> str:
    return f"weights_{layer}.hex"


def stack_manifest(stack: Stack, folds: list[Folding], name: str, source: str, steps: int) -> dict:
    """What a generated stack is: per layer its config, folding, latency and weight file; the stack's
    first-output latency, steady-state cycles per step and the schedule (hwrnn.stack)."""
    from hwrnn import __version__
    from hwrnn.datapath import Geometry, latency
    from hwrnn.stack import first_output_latency, stack_schedule, steady_period

    lats = [latency(layer.cfg, f) for layer, f in zip(stack.layers, folds)]
    acc = stack_schedule(lats, steps)
    return {
        "kind": "stack", "name": name, "weights_source": source, "hwrnn_version": __version__,
        "layers": [{"config": layer.cfg.to_dict(), "folding": f.to_dict(), "latency": lat,
                    "weights_file": weights_file(l), "weight_depth": Geometry(layer.cfg, f).depth,
                    "scale": {"multiplier": layer.directions[0].mult, "shift": layer.directions[0].shift}}
                   for l, (layer, f, lat) in enumerate(zip(stack.layers, folds, lats))],
        "payload_fields": {"x": {"element_bits": stack.abits, "elements": stack.input},
                           "out": {"h": {"offset": 0, "element_bits": stack.abits,
                                         "elements": stack.layers[-1].cfg.hidden}}},
        "latency": {"layer_latencies": lats, "first_output": first_output_latency(lats),
                    "steady_period": steady_period(lats), "steps": steps,
                    "cycles_per_sequence": acc[-1][-1] + lats[-1],
                    "formula": "hwrnn.stack.stack_schedule: layer l accepts step t at max(its input valid, "
                               "the cycle after its h_(t-1) was taken); first output sum(L_l), then a step "
                               "per max(L_l + 1)"},
    }


def generate_stack(stack: Stack, folds: list[Folding], name: str = "hwrnn_stack", source: str = "random",
                   steps: int = 35) -> dict[str, str]:
    """All output files ({file name: text}): <name>.v, weights_<l>.hex per layer, manifest.json
    (naming every other file with its sha256) and report.txt."""
    import json

    from amaranth.back import verilog

    from hwrnn.datapath import Geometry, weight_image

    from .memory import WMEM_VERILOG, hex_image
    from .report import MANIFEST_FILE, REPORT_FILE, check_module_name, file_digest

    check_module_name(name)
    for layer, f in zip(stack.layers, folds):
        f.check_against(layer.cfg)
    core = StackCore(stack, folds, image_files=[weights_file(l) for l in range(len(stack))])
    text = verilog.convert(core, name=name, emit_src=False) + "\n" + WMEM_VERILOG
    man = stack_manifest(stack, folds, name, source, steps)
    lat = man["latency"]
    report = "\n".join([
        f"hwrnn stack '{name}': {len(stack)} layers, input {stack.input}, A{stack.abits}; weights: {source}",
        *(f"  layer {l}: W{e['config']['wbits']}A{e['config']['abits']} {e['config']['cell_type'].upper()}"
          f" ({e['config']['weight_code']} weights), hidden {e['config']['hidden']}, PE {e['folding']['pe']} "
          f"SIMD {e['folding']['simd']} {e['folding']['planes']}: {e['latency']} cycles per step"
          for l, e in enumerate(man["layers"])),
        f"latency: first output {lat['first_output']} cycles after x_1, then one step per {lat['steady_period']} "
        f"cycles; {lat['cycles_per_sequence']} cycles for {lat['steps']} steps",
    ]) + "\n"
    files = {f"{name}.v": text, REPORT_FILE: report}
    for l, (layer, f) in enumerate(zip(stack.layers, folds)):
        files[weights_file(l)] = hex_image(weight_image(layer.directions[0], f), Geometry(layer.cfg, f).word_bits)
    man["files"] = {fn: file_digest(t.encode()) for fn, t in files.items()}
    return {**files, MANIFEST_FILE: json.dumps(man, indent=2, sort_keys=True) + "\n"}


def _per_layer(text, n: int, what: str, conv=int) -> list:
    """A comma-separated option: one value for every layer, or one per layer."""
    if text is None:
        return [None] * n
    vals = [v.strip() for v in str(text).split(",")]
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ConfigError(f"--{what} takes one value or {n} (one per layer), got {len(vals)}")
    try:
        return [conv(v) for v in vals]
    except ValueError:
        raise ConfigError(f"--{what}: {text!r} is not a comma-separated list of {conv.__name__}s") from None


def stack_main(argv) -> int:
    """``python -m rtl_gen stack``: emit a stack of layer cores from a stack checkpoint or from flags."""
    import argparse
    import sys

    from hwrnn.checkpoint import CheckpointError
    from hwrnn.config import LayerConfig
    from hwrnn.stack import load_stack

    from .emit import write_output

    p = argparse.ArgumentParser(prog="python -m rtl_gen stack", description=(
        "Emit a stack of layer cores, layer l's h codes streaming into layer l+1. Per-layer options take one "
        "value for every layer or a comma-separated value per layer."))
    p.add_argument("--checkpoint", help="stack checkpoint (hwrnn.stack.save_stack); else seeded random weights")
    p.add_argument("--layers", type=int, help="number of layers (without --checkpoint)")
    p.add_argument("--hidden", help="hidden units per layer")
    p.add_argument("--input", type=int, help="input size of layer 0 (default: its hidden size)")
    p.add_argument("--wbits", help="weight bits per layer")
    p.add_argument("--abits", type=int, help="activation bits (all layers: codes pass between them unchanged)")
    p.add_argument("--cell-type", help="cell type per layer (lstm, gru, rnn)")
    p.add_argument("--weight-code", help="weight coding per layer")
    p.add_argument("--pe", help="rows in parallel per layer (default: Folding.default_for each layer)")
    p.add_argument("--simd", help="columns per cycle per layer")
    p.add_argument("--planes", help="parallel or serial per layer")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--steps", type=int, default=35, help="sequence length of the reported cycle count")
    p.add_argument("--name", default="hwrnn_stack", help="Verilog top module name")
    p.add_argument("-o", "--out", required=True, help="output directory")
    args = p.parse_args(argv)
    try:
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        if args.checkpoint:
            given = [o for o in ("layers", "hidden", "input", "wbits", "abits", "cell_type", "weight_code")
                     if getattr(args, o) is not None]
            if given:
                raise ConfigError(f"--checkpoint holds the layers: drop --{given[0].replace('_', '-')}")
            stack = load_stack(args.checkpoint)
            source = f"checkpoint {args.checkpoint}"
        else:
            if not args.layers or args.layers < 1 or args.hidden is None or args.wbits is None or args.abits is None:
                raise ConfigError("without --checkpoint, give --layers (>= 1), --hidden, --wbits and --abits")
            n = args.layers
            hidden = _per_layer(args.hidden, n, "hidden")
            wbits = _per_layer(args.wbits, n, "wbits")
            cells = _per_layer(args.cell_type, n, "cell-type", str)
            codes = _per_layer(args.weight_code, n, "weight-code", str)
            cfgs = []
            for l in range(n):
                kw = dict(wbits=wbits[l], abits=args.abits, hidden=hidden[l],
                          input=(args.input if l == 0 else hidden[l - 1]))
                if cells[l]:
                    kw["cell_type"] = cells[l]
                if codes[l]:
                    kw["weight_code"] = codes[l]
                cfgs.append(LayerConfig(**kw))
            if args.seed < 0:
                raise ConfigError(f"seed must be a non-negative integer, got {args.seed}")
            stack = Stack.random(cfgs, seed=args.seed)
            source = f"random (seed {args.seed})"
        n = len(stack)
        pes, simds = _per_layer(args.pe, n, "pe"), _per_layer(args.simd, n, "simd")
        planes = _per_layer(args.planes, n, "planes", str)
        folds = []
        for l, layer in enumerate(stack.layers):
            d = Folding.default_for(layer.cfg)
            folds.append(Folding(pe=pes[l] or d.pe, simd=simds[l] or d.simd, planes=planes[l] or d.planes))
        files = generate_stack(stack, folds, args.name, source, args.steps)
        write_output(files, args.out)
    except (ConfigError, CheckpointError, ValueError) as e:
        print(f"rtl_gen stack: error: {e}", file=sys.stderr)
        return 2
    print(files["report.txt"], end="")
    print(f"wrote {', '.join(sorted(files))} to {args.out}")
    return 0
