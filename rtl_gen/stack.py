"""A stack of layer cores (hwrnn.stack): one rtl_gen.core.LstmCore per layer and direction, layer l's
out stream (its h codes) driving layer l+1's x stream, so the layers work on consecutive steps at
once.

A unidirectional layer is its core (``UniLayer``); a bidirectional layer (``BidirLayer``) is two
cores side by side, a forward and a backward one, around three sequence buffers
(amaranth.lib.memory.Memory, max_len words each): the input sequence (x_t, written as it arrives,
read forward by the forward core and backward by the backward core), h_fw_t and h_bw_t. The
forward core runs while the sequence arrives, the backward core once its last step is in; then
[h_fw_t ; h_bw_t] (forward half in the low bits) streams out step by step. Cycles of every
hand-over: hwrnn.stack (module docstring, ``Schedule``).

Why two cores and not one core shared by both directions (measured in
results/stack_bidirectional.md): the directions run at once when the layer is fed at full rate
(the forward core keeps pace with the input, the backward one starts on the last step), so one
MAC array time-shared by both would nearly double the cycles per sequence (2T(L+1) against
T(L+2)); sharing only the controller saves its counters and control delay lines (158 of the
layer's 11,398 ECP5 flip-flops at W2A2 H=32); sharing the gate tables saves nothing where they are
LUT ROMs (both directions read every lane's table in the same cycle, so a shared ROM is two
copies), but on ECP5 each lane's table is a DP16KD block RAM with a second read port unused, and
one table per pair of readers would halve those (16 of the layer's 46 DP16KD): that is a change
inside rtl_gen.core (lanes reading the same gate can pair up within one core as well) and is
not made here.

Ports of ``StackCore``:
  x        In  stream, layer 0's x: X*abits bits (as LstmCore); in a stack with a bidirectional
           layer (``delimited``) the payload is {data: X*abits, last: 1}, last on each sequence's
           last step
  out      Out stream, the last layer's output (H*abits bits, 2H*abits for a bidirectional layer;
           delimited: {data, last})
  taps     Out, per layer l < L-1: ``h{l}`` (layer l's output codes) and ``h{l}_valid`` (one cycle:
           layer l+1 takes them this cycle); for checking every layer in simulation
  reset_state In: while every layer is idle, sets every layer to its reset state
  busy     Out: some layer has a step in flight (or a sequence buffered)
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwrnn.config import ConfigError, Folding
from hwrnn.stack import Stack, StackLayer, check_max_len

from .core import LstmCore


def seq_layout(width: int) -> data.StructLayout:
    """Payload of a delimited stream: data (the codes) and last (the sequence's last step)."""
    return data.StructLayout({"data": width, "last": 1})


class UniLayer(wiring.Component):
    """A unidirectional layer: its core with the x and out streams as {data, last}. The last flag
    of the step in flight travels with it; after handing on a last step the core spends one idle
    cycle resetting its state (the next sequence starts from the reset state), only in delimited
    stacks (undelimited ones tie last to 0 and nothing of it is built)."""

    def __init__(self, layer: StackLayer, fold: Folding, image_files=None):
        q = layer.directions[0]
        self.core = LstmCore(q, fold, image_file=(image_files or [None])[0], fixed_weights=True)
        A = q.cfg.abits
        super().__init__({
            "x": In(stream.Signature(seq_layout(q.cfg.input * A))),
            "out": Out(stream.Signature(seq_layout(q.cfg.hidden * A))),
            "reset_state": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        last = Signal()
        pending = Signal()  # the cycle after a last step was handed on: reset the state
        x_fire = self.x.valid & self.x.ready
        out_fire = self.out.valid & self.out.ready
        with m.If(x_fire):
            m.d.sync += last.eq(self.x.payload.last)
        m.d.sync += pending.eq(out_fire & last)
        m.d.comb += [core.load.valid.eq(0), core.reset_state.eq(self.reset_state | pending),
                     core.x.payload.eq(self.x.payload.data), core.x.valid.eq(self.x.valid),
                     self.x.ready.eq(core.x.ready),
                     self.out.payload.data.eq(core.out.payload.h), self.out.payload.last.eq(last),
                     self.out.valid.eq(core.out.valid), core.out.ready.eq(self.out.ready),
                     self.busy.eq(core.busy | pending)]
        return m


class BidirLayer(wiring.Component):
    """A bidirectional layer (module docstring): x {data: X*abits, last}, out {data: 2H*abits
    ([h_fw_t ; h_bw_t], forward codes in the low half), last}. A sequence ends at a step with last
    set or at its max_len-th step. Each direction starts every sequence from its reset state (the
    cores are held in reset while the layer hands its outputs on). Cycles: hwrnn.stack.Schedule."""

    def __init__(self, layer: StackLayer, fold: Folding, max_len: int, image_files=None):
        if not layer.bidirectional:
            raise ConfigError("BidirLayer needs a layer with a forward and a backward direction")
        self.max_len = check_max_len(max_len)
        image_files = image_files or [None, None]
        self.fw, self.bw = (LstmCore(q, fold, image_file=img, fixed_weights=True)
                            for q, img in zip(layer.directions, image_files))
        cfg = layer.cfg
        self.X, self.H, self.A = cfg.input, cfg.hidden, cfg.abits
        super().__init__({
            "x": In(stream.Signature(seq_layout(self.X * self.A))),
            "out": Out(stream.Signature(seq_layout(2 * self.H * self.A))),
            "reset_state": In(1),
            "busy": Out(1),
        })

    @staticmethod
    def buffers(cfg, max_len: int) -> dict[str, tuple[int, int, int]]:
        """{name: (width, depth, read ports)} of the sequence buffers a layer of cfg builds."""
        depth = max(max_len, 2)  # a one-word memory would get a zero-width address port in Verilog
        return {"xbuf": (cfg.input * cfg.abits, depth, 2), "fbuf": (cfg.hidden * cfg.abits, depth, 1),
                "bbuf": (cfg.hidden * cfg.abits, depth, 1)}

    def elaborate(self, platform):
        m = Module()
        N, X, H, A = self.max_len, self.X, self.H, self.A
        fw, bw = self.fw, self.bw
        m.submodules.fw = fw
        m.submodules.bw = bw
        depth = max(N, 2)
        m.submodules.xbuf = xbuf = Memory(shape=X * A, depth=depth, init=[])
        m.submodules.fbuf = fbuf = Memory(shape=H * A, depth=depth, init=[])
        m.submodules.bbuf = bbuf = Memory(shape=H * A, depth=depth, init=[])
        x_wr, xf_rd, xb_rd = xbuf.write_port(), xbuf.read_port(), xbuf.read_port()
        f_wr, f_rd = fbuf.write_port(), fbuf.read_port()
        b_wr, b_rd = bbuf.write_port(), bbuf.read_port()

        count = Signal(range(N + 1))     # steps of the sequence written to xbuf
        filled = Signal()                # its last step is in
        # every read port reads a word written at least a cycle before its address is presented
        # (non-transparent reads), the *_ok registers say the word on the read port is the one wanted
        # filling: x_t -> xbuf[t]
        x_fire = self.x.valid & ~filled
        m.d.comb += [self.x.ready.eq(~filled),
                     x_wr.addr.eq(count), x_wr.data.eq(self.x.payload.data), x_wr.en.eq(x_fire)]
        with m.If(x_fire):
            m.d.sync += count.eq(count + 1)
            with m.If(self.x.payload.last | (count == N - 1)):
                m.d.sync += filled.eq(1)
        # forward direction: xbuf[0], xbuf[1], ... as they arrive; h_fw_t -> fbuf[t]
        f_next, f_ok, f_out = Signal(range(N + 1)), Signal(), Signal(range(N + 1))
        f_addr = Signal(range(N + 1))
        m.d.comb += [f_next.eq(f_addr + (fw.x.valid & fw.x.ready)), xf_rd.addr.eq(f_next),
                     fw.x.payload.eq(xf_rd.data), fw.x.valid.eq(f_ok)]
        m.d.sync += [f_addr.eq(f_next), f_ok.eq(f_next < count)]
        m.d.comb += [fw.out.ready.eq(1), f_wr.addr.eq(f_out), f_wr.data.eq(fw.out.payload.h), f_wr.en.eq(fw.out.valid)]
        with m.If(fw.out.valid):
            m.d.sync += f_out.eq(f_out + 1)
        # backward direction: once filled, xbuf[T-1], ..., xbuf[0]; h_bw_t -> bbuf[t]
        b_next, b_ok, b_out = Signal(range(N + 1)), Signal(), Signal(range(N + 1))
        b_n = Signal(range(N + 1))
        m.d.comb += [b_next.eq(b_n + (bw.x.valid & bw.x.ready)), xb_rd.addr.eq(count - 1 - b_next),
                     bw.x.payload.eq(xb_rd.data), bw.x.valid.eq(b_ok)]
        m.d.sync += [b_n.eq(b_next), b_ok.eq(filled & (b_next < count))]
        m.d.comb += [bw.out.ready.eq(1), b_wr.addr.eq(count - 1 - b_out), b_wr.data.eq(bw.out.payload.h),
                     b_wr.en.eq(bw.out.valid)]
        with m.If(bw.out.valid):
            m.d.sync += b_out.eq(b_out + 1)
        # output: both directions done -> [fbuf[t] ; bbuf[t]], t = 0 .. T-1
        done = Signal()
        m.d.comb += done.eq(filled & (f_out == count) & (b_out == count))
        o, o_next, o_ok = Signal(range(N + 1)), Signal(range(N + 1)), Signal()
        o_fire = self.out.valid & self.out.ready
        m.d.comb += [o_next.eq(o + o_fire), f_rd.addr.eq(o_next), b_rd.addr.eq(o_next),
                     self.out.payload.data.eq(Cat(f_rd.data, b_rd.data)),
                     self.out.payload.last.eq(o == count - 1), self.out.valid.eq(o_ok)]
        m.d.sync += [o.eq(o_next), o_ok.eq(done & (o_next < count))]
        # the directions' cores idle in their reset state while the outputs are handed on
        m.d.comb += [fw.reset_state.eq(self.reset_state | done), bw.reset_state.eq(self.reset_state | done),
                     fw.load.valid.eq(0), bw.load.valid.eq(0)]
        with m.If(o_fire & (o == count - 1)):  # the sequence's last output taken: fill the next one
            m.d.sync += [count.eq(0), filled.eq(0), f_addr.eq(0), f_out.eq(0), b_n.eq(0), b_out.eq(0), o.eq(0)]
        m.d.comb += self.busy.eq(filled | (count != 0) | fw.busy | bw.busy)
        return m


class StackCore(wiring.Component):
    """The stack (module docstring). ``max_len``: the longest sequence the bidirectional layers buffer
    (required when the stack has one); ``image_files``: per layer, per direction, the weight image
    file of its core (None: inline memory contents)."""

    def __init__(self, stack: Stack, folds: list[Folding], image_files=None, max_len: int | None = None):
        if len(folds) != len(stack):
            raise ConfigError(f"{len(stack)} layers need {len(stack)} foldings, got {len(folds)}")
        self.stack, self.folds = stack, folds
        self.delimited = any(layer.bidirectional for layer in stack.layers)
        if self.delimited:
            if max_len is None:
                raise ConfigError("a stack with a bidirectional layer needs a maximum sequence length (its buffers' depth)")
            check_max_len(max_len)
        self.max_len = max_len
        self.image_files = image_files or [None] * len(stack)
        A = stack.abits
        self.layers = [BidirLayer(layer, fold, max_len, img) if layer.bidirectional else UniLayer(layer, fold, img)
                       for layer, fold, img in zip(stack.layers, folds, self.image_files)]
        taps = {}
        for l, layer in enumerate(stack.layers[:-1]):
            taps[f"h{l}"] = Out(layer.output_width * A)
            taps[f"h{l}_valid"] = Out(1)
        x_width, out_width = stack.input * A, stack.layers[-1].output_width * A
        super().__init__({
            "x": In(stream.Signature(seq_layout(x_width) if self.delimited else x_width)),
            "out": Out(stream.Signature(seq_layout(out_width) if self.delimited else out_width)),
            **taps,
            "reset_state": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        layers = self.layers
        for l, layer in enumerate(layers):
            m.submodules[f"layer{l}"] = layer
            m.d.comb += layer.reset_state.eq(self.reset_state)
        first, last = layers[0], layers[-1]
        if self.delimited:
            m.d.comb += [first.x.payload.eq(self.x.payload), self.out.payload.eq(last.out.payload)]
        else:  # no sequences: last never set
            m.d.comb += [first.x.payload.data.eq(self.x.payload), first.x.payload.last.eq(0),
                         self.out.payload.eq(last.out.payload.data)]
        m.d.comb += [first.x.valid.eq(self.x.valid), self.x.ready.eq(first.x.ready),
                     self.out.valid.eq(last.out.valid), last.out.ready.eq(self.out.ready)]
        for l in range(len(layers) - 1):
            up, down = layers[l], layers[l + 1]
            m.d.comb += [down.x.payload.eq(up.out.payload), down.x.valid.eq(up.out.valid),
                         up.out.ready.eq(down.x.ready),
                         getattr(self, f"h{l}").eq(up.out.payload.data),
                         getattr(self, f"h{l}_valid").eq(up.out.valid & down.x.ready)]
        m.d.comb += self.busy.eq(Cat(*(layer.busy for layer in layers)).any())
        return m


# ---- generation ------------------------------------------------------------------------------------

def weights_file(layer: int, direction: int | None = None) -> str:
    """The $readmemh weight image of a layer's core: weights_<l>.hex, or for the directions of a
    bidirectional layer weights_<l>_fw.hex and weights_<l>_bw.hex."""
    return f"weights_{layer}.hex" if direction is None else f"weights_{layer}_{('fw', 'bw')[direction]}.hex"


def layer_files(stack: Stack) -> list[list[str]]:
    """Per layer, per direction, its weight image file (weights_file)."""
    return [[weights_file(l, d if layer.bidirectional else None) for d in range(len(layer.directions))]
            for l, layer in enumerate(stack.layers)]


def stack_timing(stack: Stack, folds: list[Folding], steps: int) -> dict:
    """The stack's cycles for one sequence of ``steps`` steps (x always valid, output always taken):
    per layer the latencies of its directions, the first output, the sequence's cycles and, for a
    stack of unidirectional layers, the steady-state cycles per step; for a stack with a
    bidirectional layer, the cycles from one sequence's x_1 to the next's (hwrnn.stack.Schedule)."""
    from hwrnn.stack import Schedule, first_output_latency, stack_latencies, stack_schedule, steady_period

    lats = stack_latencies(stack, folds)
    if any(len(lat) == 2 for lat in lats):
        sch = Schedule(lats, [steps, 1])
        return {"layer_latencies": [list(lat) for lat in lats], "first_output": sch.first_output(),
                "cycles_per_sequence": sch.sequence_cycles(0), "sequence_period": sch.accept[0][steps],
                "steps": steps,
                "formula": "hwrnn.stack.Schedule: a bidirectional layer buffers the sequence, runs its forward core "
                           "as the steps arrive and its backward core after the last, then hands [h_fw ; h_bw] on"}
    flat = [lat[0] for lat in lats]
    acc = stack_schedule(flat, steps)
    return {"layer_latencies": flat, "first_output": first_output_latency(flat),
            "steady_period": steady_period(flat), "steps": steps, "cycles_per_sequence": acc[-1][-1] + flat[-1],
            "formula": "hwrnn.stack.stack_schedule: layer l accepts step t at max(its input valid, "
                       "the cycle after its h_(t-1) was taken); first output sum(L_l), then a step "
                       "per max(L_l + 1)"}


def stack_manifest(stack: Stack, folds: list[Folding], name: str, source: str, steps: int,
                   max_len: int | None = None) -> dict:
    """What a generated stack is: per layer its config, folding, latency and weight file (per
    direction for a bidirectional layer); the stack's timing (stack_timing)."""
    from hwrnn import __version__
    from hwrnn.datapath import Geometry, latency

    files = layer_files(stack)
    layers = []
    for l, (layer, f) in enumerate(zip(stack.layers, folds)):
        dirs = [{"weights_file": fn, "latency": latency(q.cfg, f), "config": q.cfg.to_dict(),
                 "weight_depth": Geometry(q.cfg, f).depth, "scale": {"multiplier": q.mult, "shift": q.shift}}
                for q, fn in zip(layer.directions, files[l])]
        entry = {"folding": f.to_dict(), "bidirectional": layer.bidirectional, **dirs[0]}
        if layer.bidirectional:
            entry["directions"] = dirs
        layers.append(entry)
    A = stack.abits
    x_fields = {"element_bits": A, "elements": stack.input}
    out_fields = {"offset": 0, "element_bits": A, "elements": stack.layers[-1].output_width}
    delimited = any(layer.bidirectional for layer in stack.layers)
    if delimited:
        x_fields = {"data": {"offset": 0, **x_fields}, "last": {"offset": stack.input * A, "bits": 1}}
        out_fields = {"data": out_fields, "last": {"offset": stack.layers[-1].output_width * A, "bits": 1}}
    else:
        out_fields = {"h": out_fields}
    return {
        "kind": "stack", "name": name, "weights_source": source, "hwrnn_version": __version__,
        "layers": layers, "delimited": delimited, "max_len": max_len if delimited else None,
        "payload_fields": {"x": x_fields, "out": out_fields},
        "latency": stack_timing(stack, folds, steps),
    }


def generate_stack(stack: Stack, folds: list[Folding], name: str = "hwrnn_stack", source: str = "random",
                   steps: int = 35, max_len: int | None = None) -> dict[str, str]:
    """All output files ({file name: text}): <name>.v, a weight image per layer and direction
    (weights_file), manifest.json (naming every other file with its sha256) and report.txt.
    ``max_len``: the longest sequence the bidirectional layers buffer (default: steps)."""
    import json

    from amaranth.back import verilog

    from hwrnn.datapath import Geometry, weight_image
    from hwrnn.stack import check_lengths

    from .memory import WMEM_VERILOG, hex_image
    from .report import MANIFEST_FILE, REPORT_FILE, check_module_name, file_digest

    check_module_name(name)
    for layer, f in zip(stack.layers, folds):
        f.check_against(layer.cfg)
    delimited = any(layer.bidirectional for layer in stack.layers)
    if delimited:
        max_len = steps if max_len is None else check_max_len(max_len)
        check_lengths([steps], max_len)
    core = StackCore(stack, folds, image_files=layer_files(stack), max_len=max_len if delimited else None)
    text = verilog.convert(core, name=name, emit_src=False) + "\n" + WMEM_VERILOG
    man = stack_manifest(stack, folds, name, source, steps, max_len)
    lat = man["latency"]
    lines = [f"hwrnn stack '{name}': {len(stack)} layers, input {stack.input}, A{stack.abits}; weights: {source}"]
    for l, e in enumerate(man["layers"]):
        c, f = e["config"], e["folding"]
        kind = "bidirectional " if e["bidirectional"] else ""
        lats = "/".join(str(d["latency"]) for d in e.get("directions", [e]))
        lines.append(f"  layer {l}: {kind}W{c['wbits']}A{c['abits']} {c['cell_type'].upper()} ({c['weight_code']} "
                     f"weights), hidden {c['hidden']}{' per direction' if kind else ''}, PE {f['pe']} SIMD {f['simd']} "
                     f"{f['planes']}: {lats} cycles per step")
    if delimited:
        lines.append(f"sequences of at most {max_len} steps (buffered by the bidirectional layers); for {steps} steps: "
                     f"first output {lat['first_output']} cycles after x_1, the last {lat['cycles_per_sequence']}; "
                     f"the next sequence's x_1 after {lat['sequence_period']} cycles")
    else:
        lines.append(f"latency: first output {lat['first_output']} cycles after x_1, then one step per "
                     f"{lat['steady_period']} cycles; {lat['cycles_per_sequence']} cycles for {lat['steps']} steps")
    files = {f"{name}.v": text, REPORT_FILE: "\n".join(lines) + "\n"}
    for layer, f, fns in zip(stack.layers, folds, layer_files(stack)):
        for q, fn in zip(layer.directions, fns):
            files[fn] = hex_image(weight_image(q, f), Geometry(q.cfg, f).word_bits)
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


def _flag(text) -> bool:
    """A per-layer yes/no option value: 1/0, true/false, yes/no (None: no)."""
    if text is None:
        return False
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "y"):
        return True
    if t in ("0", "false", "no", "n"):
        return False
    raise ConfigError(f"--bidirectional takes 1 or 0 per layer, got {text!r}")


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
    p.add_argument("--bidirectional", help="per layer 1 (a forward and a backward direction, output [h_fw ; h_bw], "
                                           "2H codes a step) or 0 (without --checkpoint; default 0)")
    p.add_argument("--max-len", type=int, help="the longest sequence a bidirectional layer buffers (default: --steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--steps", type=int, default=35, help="sequence length of the reported cycle count")
    p.add_argument("--name", default="hwrnn_stack", help="Verilog top module name")
    p.add_argument("-o", "--out", required=True, help="output directory")
    args = p.parse_args(argv)
    try:
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        if args.checkpoint:
            given = [o for o in ("layers", "hidden", "input", "wbits", "abits", "cell_type", "weight_code",
                                 "bidirectional")
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
            bidir = [_flag(v) for v in _per_layer(args.bidirectional, n, "bidirectional", str)]
            cfgs = []
            for l in range(n):
                kw = dict(wbits=wbits[l], abits=args.abits, hidden=hidden[l],
                          input=(args.input if l == 0 else hidden[l - 1] * (2 if bidir[l - 1] else 1)))
                if cells[l]:
                    kw["cell_type"] = cells[l]
                if codes[l]:
                    kw["weight_code"] = codes[l]
                cfgs.append(LayerConfig(**kw))
            if args.seed < 0:
                raise ConfigError(f"seed must be a non-negative integer, got {args.seed}")
            stack = Stack.random(cfgs, bidirectional=bidir, seed=args.seed)
            source = f"random (seed {args.seed})"
        n = len(stack)
        pes, simds = _per_layer(args.pe, n, "pe"), _per_layer(args.simd, n, "simd")
        planes = _per_layer(args.planes, n, "planes", str)
        folds = []
        for l, layer in enumerate(stack.layers):
            d = Folding.default_for(layer.cfg)
            folds.append(Folding(pe=pes[l] or d.pe, simd=simds[l] or d.simd, planes=planes[l] or d.planes))
        if args.max_len is not None:
            check_max_len(args.max_len)
            if not any(layer.bidirectional for layer in stack.layers):
                raise ConfigError("--max-len sizes the buffers of bidirectional layers; this stack has none")
        files = generate_stack(stack, folds, args.name, source, args.steps, args.max_len)
        write_output(files, args.out)
    except (ConfigError, CheckpointError, ValueError) as e:
        print(f"rtl_gen stack: error: {e}", file=sys.stderr)
        return 2
    print(files["report.txt"], end="")
    print(f"wrote {', '.join(sorted(files))} to {args.out}")
    return 0
