"""python -m sw_ref train|eval|export|experiment|widen|...: quantization-aware training on Penn Treebank
(one layer, or a stack with --layers and per-layer --hidden/--wbits/--abits/--cell-type), perplexity
of the training model and of the bit-exact integer model, export of the hardware layer (or stack)
checkpoint, recorded experiments, Kapur et al.'s neuron-increase search and layer-wise widening."""
from __future__ import annotations

import argparse
import json
import sys
import time

from hwrnn.cli import os_error_line

DEFAULT_RUN = "runs/default"
#: default of an option whose absence differs from a float (None) value
_NOT_GIVEN = object()


def _bits(text):
    if str(text).lower() in ("32", "float", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bit width must be an integer 1..8 or 32/float, got {text!r}") from None


def _per_layer(parse):
    """An argparse type of a per-layer option: "300" -> one value (every layer), "300,450" -> a list
    (one value per layer)."""
    def f(text):
        parts = [t.strip() for t in str(text).split(",")]
        if len(parts) > 1 and any(p == "" for p in parts):
            raise argparse.ArgumentTypeError(f"a list of values separated by commas, got {text!r}")
        values = [parse(t) for t in parts]
        return values if len(values) > 1 else values[0]
    return f


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer, got {text!r}") from None


def _stack_args(p, hidden_default=300):
    """--layers, per-layer --hidden/--wbits/--abits (one value for every layer, or one per layer), --bidirectional."""
    p.add_argument("--layers", type=int, help="recurrent layers (a stack, sw_ref.stack_model; default 1)")
    p.add_argument("--hidden", type=_per_layer(_int), default=hidden_default,
                   help="hidden units, one for every layer or one per layer (300,450); widen for Kapur et al.'s "
                        "neuron increase")
    p.add_argument("--wbits", type=_per_layer(_bits),
                   help="weight bits 1..8, one or one per layer (4,2) (default: float; with --weight-code, the code's width)")
    p.add_argument("--abits", type=_per_layer(_bits), help="activation bits 1..8 (default: float); every layer the same")
    p.add_argument("--bidirectional", action="store_true", default=None,
                   help="bidirectional layers: refused for PTB language models (the backward direction reads the "
                        "words to predict); for classifiers, see sw_ref.stack_model")


def _bits_list(text):
    """Comma-separated bit widths (each as ``_bits``), always a list (the search's bit-width axes)."""
    v = _per_layer(_bits)(text)
    return v if isinstance(v, list) else [v]


def _recipe_args(p, max_batches_help: str):
    """The training-recipe options that experiment and widen share (train's defaults where not given)."""
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["sgd", "adam"])
    p.add_argument("--dropout", type=float)
    p.add_argument("--threads", type=int)
    p.add_argument("--max-batches", type=int, help=max_batches_help)
    p.add_argument("--min-lr", type=float)
    p.add_argument("--max-train-tokens", type=int)
    p.add_argument("--batch-size", type=int, help="training batch size (default 20; evaluation keeps batch 10)")
    p.add_argument("--bptt", type=int, help="truncated-BPTT window in tokens (default 35)")


def _format_args(p):
    g = p.add_argument_group("hardware number formats (hwrnn.LayerConfig)")
    g.add_argument("--cell", default=None, help="cell-state format, e.g. fixed:3.10 (default)")
    g.add_argument("--z-frac", type=int, default=None, help="fraction bits of gate pre-activations")
    g.add_argument("--lut-bits", type=int, default=None, help="address bits of the sigmoid/tanh tables")
    g.add_argument("--gate-frac", type=int, default=None, help="fraction bits of gate outputs")
    g.add_argument("--mult-bits", type=int, default=None, help="significant bits of the scale multiplier")


def _formats(args) -> dict:
    return {k: getattr(args, k) for k in ("cell", "z_frac", "lut_bits", "gate_frac", "mult_bits")
            if getattr(args, k) is not None}


def _cell_type_arg(p, per_layer: bool = False):
    # checked by sw_ref.cells (one error line), not by argparse choices (usage text + error)
    p.add_argument("--cell-type", type=_per_layer(str) if per_layer else None,
                   help="recurrent cell: lstm (default), gru (He et al.), gru_ott (Ott et al.), rnn (vanilla)"
                        + ("; one for every layer or one per layer (lstm,gru)" if per_layer else ""))


def _weight_code_args(p, stochastic: bool = True):
    # checked by sw_ref.weight_quantizers (one error line), not by argparse choices
    p.add_argument("--weight-code", help="weight coding of the recurrent matrix: balanced (He et al., default), "
                                         "ternary, ternary_mean, pow2_ternary (2 bits), exponential (3..5 bits, "
                                         "default 4) (Ott et al.); --wbits defaults to the code's width")
    if stochastic:
        p.add_argument("--stochastic-weights", action="store_true", default=None,
                       help="Ott's codes: stochastic rounding in training (evaluation and export deterministic)")


def _level_arg(p, default_help="word"):
    # checked by sw_ref.data (one error line), not by argparse choices
    p.add_argument("--level", help=f"PTB tokens: word, or char (characters, '_' between words, <eos> ending each "
                                   f"line; bits per character reported; default {default_help})")


def _speed_args(p):
    p.add_argument("--eval-every", type=int, help="also validate every N batches inside an epoch (best.pt and lr "
                                                   "annealing react within the epoch; default 0 = epoch ends only)")
    p.add_argument("--anneal-threshold", type=float,
                   help="also divide lr by 4 when a validation beats the best by less than this fraction "
                        "(0.005 = 0.5 %%; default 0 = only when it does not improve)")
    p.add_argument("--decoder-precision", choices=["fp32", "bf16"],
                   help="decoder GEMMs in training (bf16: CPU autocast, faster only on CPUs with bf16 matrix instructions, 'avx512_bf16'/AMX; evaluation stays fp32)")
    p.add_argument("--no-fused-recurrence", dest="fused_recurrence", action="store_false", default=None,
                   help="run the LSTM recurrence step by step under autograd instead of one fused node per TBPTT "
                        "window with a hand-written backward (same forward bit for bit; for A/B comparisons)")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m sw_ref", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train (or fine-tune, or resume) a language model")
    t.add_argument("--data", help="directory of ptb.{train,valid,test}.txt[.gz] (or $HWRNN_PTB)")
    _level_arg(t)
    t.add_argument("--out", default=DEFAULT_RUN, help=f"run directory (default {DEFAULT_RUN}); resumes if it has last.pt")
    _stack_args(t)
    t.add_argument("--input", type=int, help="embedding size (default: hidden; a stack: layer 0's)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--bptt", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--optimizer", choices=["sgd", "adam"])
    t.add_argument("--clip", type=float)
    t.add_argument("--dropout", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int, help="torch threads")
    t.add_argument("--max-train-tokens", type=int, help="use only the first N training tokens")
    t.add_argument("--max-batches", type=int, help="stop this invocation after N batches (resumable)")
    t.add_argument("--init-from", help="LM checkpoint to start from (e.g. a float baseline's best.pt)")
    t.add_argument("--checkpoint-every", type=int, help="batches between checkpoints")
    t.add_argument("--candidate", choices=["sigmoid", "tanh"])
    t.add_argument("--embedding", choices=["clip", "relu"])
    t.add_argument("--init-state", choices=["zero", "half"])
    t.add_argument("--no-weight-tanh", dest="weight_tanh", action="store_false", default=None)
    t.add_argument("--quantize-output", action="store_true", default=None)
    t.add_argument("--gamma", type=float)
    t.add_argument("--cell", help="emulate the hardware cell format in training (fixed:I.F, fp16, bf16, eXmY; LSTM only)")
    _cell_type_arg(t, per_layer=True)
    _weight_code_args(t)
    t.add_argument("--progress", action="store_true", default=None, help="force the progress bar")
    _speed_args(t)

    e = sub.add_parser("eval", help="perplexity of a checkpoint (and of its integer model with --integer)")
    e.add_argument("--checkpoint", default=f"{DEFAULT_RUN}/best.pt")
    e.add_argument("--pretrained", nargs="?", const="", metavar="NAME",
                   help="evaluate the language model shipped in hwrnn/data/ (NAME: its file stem, default the "
                        "only one) instead of a checkpoint: its integer model, as stored")
    e.add_argument("--data")
    _level_arg(e, "the checkpoint's")
    e.add_argument("--split", choices=["valid", "test"], default="test")
    e.add_argument("--integer", action="store_true", help="also run the bit-exact integer model (hardware)")
    e.add_argument("--json", action="store_true", help="print one JSON object (ppw = integer model's with --integer; "
                                                        "perplexities per token: per character at char level, "
                                                        "with bpc beside them)")
    e.add_argument("--batch-size", type=int, default=10)
    e.add_argument("--threads", type=int)
    _format_args(e)

    r = sub.add_parser("experiment", help="train/fine-tune, evaluate (model and integer model), record in results/ptb.json")
    r.add_argument("--data")
    _level_arg(r)
    r.add_argument("--out", required=True, help="run directory (resumable)")
    r.add_argument("--name", help="entry name in the results file (default e.g. W4A2@450, GRU W2A2@300)")
    r.add_argument("--results", default="results/ptb.json")
    _stack_args(r)
    _cell_type_arg(r, per_layer=True)
    _weight_code_args(r)
    _recipe_args(r, "stop this invocation after N batches (resume later)")
    r.add_argument("--init-from")
    _speed_args(r)
    r.add_argument("--eval-only", action="store_true",
                   help="no training: evaluate the run directory as it stands and update its entry")
    _format_args(r)

    tb = sub.add_parser("table", help="markdown table of results/ptb.json beside the papers' numbers")
    tb.add_argument("--results", default="results/ptb.json")
    tb.add_argument("-o", "--output", default="docs/ptb_results.md")

    s = sub.add_parser("search", help="Kapur et al.'s neuron-increase search: smallest hidden size reaching a target",
                       description="Kapur et al.'s neuron-increase search for each (wbits, abits) pair: the smallest "
                                   "hidden size whose test PPW reaches the target. By default a Ray Tune experiment "
                                   "(sw_ref.tune_search: sizes trained in parallel, early stopping of sizes that "
                                   "cannot change the answer) on an embedded local Ray, or on the cluster of "
                                   "--address; --executor serial trains the sizes one after the other.")
    s.add_argument("--data")
    s.add_argument("--wbits", type=_bits_list, default=_NOT_GIVEN,
                   help="weight bits, comma-separated for several (default: the --weight-code's width)")
    s.add_argument("--abits", type=_bits_list, required=True, help="activation bits, comma-separated for several")
    _cell_type_arg(s)
    _weight_code_args(s)
    s.add_argument("--hidden-sizes", default="300,375,450,600,1000")
    tg = s.add_mutually_exclusive_group(required=True)
    tg.add_argument("--target", type=float, help="target test PPW")
    tg.add_argument("--tolerance", type=float, help="percent above the float baseline entry of --baseline")
    s.add_argument("--baseline", default="float@300", help="results entry of the float baseline")
    s.add_argument("--results", default="results/ptb.json")
    s.add_argument("--runs", default="runs", help="directory for the search's run directories")
    s.add_argument("--from-results", action="store_true",
                   help="no training: search over the runs already recorded in --results (hidden sizes as recorded)")
    s.add_argument("--epochs", type=int, default=40)
    s.add_argument("--init-from")
    s.add_argument("--threads", type=int, help="torch threads of each training (and the CPUs each Tune trial declares)")
    s.add_argument("--max-train-tokens", type=int)
    s.add_argument("--grace", type=int, default=3,
                   help="Ray Tune path: epochs before a size may be stopped as unable to reach the target "
                        "(0: never; sizes above one that reached it are always stopped)")
    s.add_argument("--retries", type=int, default=2, help="Ray Tune path: restarts of a trial whose worker died")
    s.add_argument("--max-trials", type=int, default=0,
                   help="Ray Tune path: at most this many sizes training at once (default 0: as many as the CPUs allow)")
    s.add_argument("--no-progress", action="store_true")
    from hwrnn.points import add_executor_args

    add_executor_args(s, default_jobs=None)

    w = sub.add_parser("widen", help="Kapur et al.'s layer-wise widening of a stack over real training runs (resumable)")
    w.add_argument("--data")
    w.add_argument("--base-hidden", type=_per_layer(_int), required=True,
                   help="hidden size of every layer of the base stack, one per layer (300,300): L layers")
    w.add_argument("--layers", type=int, help="layers (default: as many as --base-hidden lists)")
    w.add_argument("--bidirectional", action="store_true", default=None,
                   help="refused: a PTB language model cannot have bidirectional layers")
    w.add_argument("--hidden-sizes", default="300,450,600,1000", help="candidate sizes a layer is widened to")
    w.add_argument("--wbits", type=_per_layer(_bits), help="weight bits, one or one per layer")
    w.add_argument("--abits", type=_per_layer(_bits), help="activation bits (every layer the same)")
    _cell_type_arg(w, per_layer=True)
    _weight_code_args(w)
    wt = w.add_mutually_exclusive_group(required=True)
    wt.add_argument("--target", type=float, help="target test PPW")
    wt.add_argument("--tolerance", type=float, help="percent above the float baseline entry of --baseline")
    w.add_argument("--baseline", default="float@300", help="results entry of the float baseline")
    w.add_argument("--max-rounds", type=int, default=8, help="widening rounds at most")
    w.add_argument("--results", default="results/ptb.json")
    w.add_argument("--runs", default="runs", help="directory for the stacks' run directories")
    _recipe_args(w, "stop each invocation's training after N batches (rerun to continue)")
    _speed_args(w)

    x = sub.add_parser("export", help="write the hwrnn layer checkpoint (a stack's: the stack checkpoint) for rtl_gen")
    x.add_argument("--checkpoint", default=f"{DEFAULT_RUN}/best.pt")
    x.add_argument("-o", "--output", default=None,
                   help="output .npz (default: next to the checkpoint, layer.npz; a stack's: stack.npz)")
    _format_args(x)

    sh = sub.add_parser("ship", help="export a results entry's layer as hwrnn package data (rtl_gen's trained default)")
    sh.add_argument("--entry", default="W4A2@450", help="entry of the results file (default W4A2@450)")
    sh.add_argument("--results", default="results/ptb.json")
    sh.add_argument("--run", help="run directory (default: the entry's run_dir)")
    sh.add_argument("--name", default="ptb_w4a2_h450", help="file name stem in hwrnn/data/")
    sh.add_argument("--data-dir", help="directory to write to (default: the installed hwrnn/data/)")
    sh.add_argument("--data", help="PTB directory (default $HWRNN_PTB): the shipped model's test perplexity "
                                   "is measured with its decoder as stored (int8) and recorded")
    rp = sub.add_parser("resume-point", help="pack a run into a committable fp16 resume point, or unpack one")
    rp_sub = rp.add_subparsers(dest="action", required=True)
    pk = rp_sub.add_parser("pack", help="write the resume point of a run directory (from its last.pt)")
    pk.add_argument("run", help="run directory")
    pk.add_argument("-o", "--output", required=True, help="resume point file (.pt)")
    up = rp_sub.add_parser("unpack", help="recreate a run directory from a resume point, then train/experiment resumes it")
    up.add_argument("point", help="resume point file")
    up.add_argument("--out", required=True, help="new run directory")
    sl = sub.add_parser("set-lr", help="change the lr a run resumes with (recorded in its metrics.jsonl)")
    sl.add_argument("run", help="run directory (with last.pt)")
    sl.add_argument("lr", type=float, help="learning rate from the next batch on")
    sl.add_argument("--forget-best", action="store_true",
                    help="warm restart: the next validation starts the best.pt / annealing comparison afresh")
    return p


def cmd_set_lr(args) -> int:
    from .train import set_lr

    rec = set_lr(args.run, args.lr, forget_best=args.forget_best)
    print(f"{args.run}: lr {rec['lr_from']:g} -> {rec['lr']:g} from epoch {rec['epoch']} batch {rec['batch']}"
          + (f" (best valid {rec['best_valid_ppl_before']:.2f} forgotten)" if args.forget_best
             and rec['best_valid_ppl_before'] is not None else ""))
    return 0


def cmd_resume_point(args) -> int:
    from .resume_point import pack, unpack

    info = pack(args.run, args.output) if args.action == "pack" else unpack(args.point, args.out)
    print(json.dumps(info))
    return 0


def cmd_train(args) -> int:
    from .train import train

    summary = train(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "out"} | {"out": str(summary.get("out"))}))
    return 0


def cmd_eval(args) -> int:
    import math

    from .data import DEFAULT_LEVEL, bpc, check_level, load_ptb_for, resolve_data_dir
    from .export import IntegerLM, IntegerStackLM, layer_from_model, stack_from_model
    from .stack_model import QuantStackLM
    from .train import evaluate_loss, load_lm_checkpoint, set_threads

    set_threads(args.threads)
    if args.pretrained is not None:
        return _eval_pretrained(args)
    model, vocab, meta = load_lm_checkpoint(args.checkpoint)
    level = meta.get("level", DEFAULT_LEVEL)
    if args.level is not None and check_level(args.level) != level:
        raise ValueError(f"{args.checkpoint} was trained at {level} level, not {args.level}")
    corpus = load_ptb_for(resolve_data_dir(args.data), level, vocab, args.checkpoint)
    data = getattr(corpus, args.split)
    t0 = time.perf_counter()
    total, count = evaluate_loss(model, data, bsz=args.batch_size)
    char = level == "char"

    stack = isinstance(model, QuantStackLM)
    res = {"checkpoint": args.checkpoint, "split": args.split, "level": level, "tokens": count,
           "model_ppw": math.exp(total / count), "model_seconds": round(time.perf_counter() - t0, 2),
           "wbits": model.cfg.wbits, "abits": model.cfg.abits, "hidden": model.cfg.hidden,
           "cell_type": model.cfg.cell_type, "weight_code": model.cfg.weight_code}
    if stack:
        res["layers"] = model.cfg.layers
    res["ppw"] = res["model_ppw"]
    if char:
        res["model_bpc"] = res["bpc"] = bpc(total / count)
    if args.integer:
        if stack:
            st = stack_from_model(model, **_formats(args))
            ilm = IntegerStackLM(model, st)
            cells = [q.cfg.cell if q.cfg.gate_set.has_cell_state else None for q in st.layers]
            cell = None if not any(cells) else cells
        else:
            layer = layer_from_model(model, **_formats(args))
            ilm = IntegerLM(model, layer)
            cell = layer.cfg.cell if model.cfg.cell_class.has_cell_state else None
        t0 = time.perf_counter()
        itotal, icount = ilm.nll(data.numpy(), bsz=args.batch_size)
        assert icount == count
        res.update(integer_ppw=math.exp(itotal / icount), integer_seconds=round(time.perf_counter() - t0, 2),
                   cell=cell)
        res["ppw"] = res["integer_ppw"]
        res["gap_percent"] = 100.0 * (res["integer_ppw"] - res["model_ppw"]) / res["model_ppw"]
        if char:
            res["integer_bpc"] = res["bpc"] = bpc(itotal / icount)
    if args.json:
        print(json.dumps(res))
    else:
        def line(which):
            if char:
                return (f"{args.split} bits per character: {res[which + '_bpc']:.4f} (perplexity per character "
                        f"{res[which + '_ppw']:.4f})")
            return f"{args.split} perplexity per word: {res[which + '_ppw']:.2f}"
        print(f"{line('model')} (training model)")
        if args.integer:
            cell = (f"cell {res['cell']}" if res["cell"] else
                    ",".join(model.cfg.cell_type) if stack else model.cfg.cell_type)
            print(f"{line('integer')} (integer model = hardware, {cell}; gap {res['gap_percent']:+.2f} %)")
    return 0


def _eval_pretrained(args) -> int:
    """Re-measure a shipped language model (hwrnn.pretrained) from the package data alone: the
    integer model of its layer between its stored embedding codes and int8 decoder."""
    import math
    from pathlib import Path

    from hwrnn import pretrained

    from .data import DEFAULT_LEVEL, bpc, check_level, load_ptb_for, resolve_data_dir
    from .export import IntegerLM

    rec = pretrained.find_lm(args.pretrained or None)
    layer, head = pretrained.load_lm(rec)
    level = rec.get("level", DEFAULT_LEVEL)
    if args.level is not None and check_level(args.level) != level:
        raise ValueError(f"the shipped model {rec['entry']} is {level} level, not {args.level}")
    corpus = load_ptb_for(resolve_data_dir(args.data), level, head.vocab, f"the shipped model {rec['entry']}")
    t0 = time.perf_counter()
    total, count = IntegerLM.from_head(layer, head).nll(getattr(corpus, args.split).numpy(), bsz=args.batch_size)
    recorded = rec.get(f"shipped_{args.split}_ppw") if args.batch_size == 10 else None
    res = {"pretrained": Path(rec["file"]).stem, "entry": rec["entry"], "split": args.split, "level": level,
           "tokens": count, "integer_ppw": math.exp(total / count), "ppw": math.exp(total / count),
           "recorded_ppw": recorded, "integer_seconds": round(time.perf_counter() - t0, 2),
           "decoder_precision": rec.get("decoder_precision"), "cell": layer.cfg.cell}
    if level == "char":
        res["integer_bpc"] = res["bpc"] = bpc(total / count)
    if args.json:
        print(json.dumps(res))
        return 0
    unit = "per character" if level == "char" else "per word"
    print(f"{args.split} perplexity {unit}: {res['ppw']:.2f} (shipped {rec['entry']}, "
          f"{rec.get('epochs_done', '?')} epochs: integer model = hardware, cell {layer.cfg.cell}, "
          f"decoder {res['decoder_precision']}; {res['integer_seconds']:.0f} s)")
    if recorded is not None:
        print(f"recorded when shipped: {recorded:.2f} (hwrnn/data/{Path(rec['file']).stem}.json)")
    return 0


def cmd_export(args) -> int:
    import os

    from .export import layer_from_model
    from .stack_model import QuantStackLM
    from .train import load_lm_checkpoint

    model, _vocab, _meta = load_lm_checkpoint(args.checkpoint)
    if isinstance(model, QuantStackLM):
        return _export_stack(model, args)
    layer = layer_from_model(model, **_formats(args))
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "layer.npz")
    layer.save(out)
    c = layer.cfg
    cell = f"cell {c.cell}" if model.cfg.cell_class.has_cell_state else f"{c.cell_type} cell"
    print(f"wrote {out}: W{c.wbits}A{c.abits} {c.weight_code} hidden {c.hidden} input {c.input}, scale {layer.scale:.6g}, "
          f"multiplier {layer.mult} >> {layer.shift}, {cell}")
    return 0


def _export_stack(model, args) -> int:
    """Write a QuantStackLM's stack checkpoint (hwrnn.stack.save_stack) and describe its layers."""
    import os

    from hwrnn.stack import save_stack

    from .export import stack_from_model

    stack = stack_from_model(model, **_formats(args))
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "stack.npz")
    save_stack(stack, out)
    parts = []
    for l, layer in enumerate(stack.layers):
        c = layer.cfg
        parts.append(f"layer {l}: {c.cell_type} W{c.wbits}A{c.abits} {c.weight_code} hidden {c.hidden} input {c.input}"
                     + (" bidirectional" if layer.bidirectional else "") + (f" cell {c.cell}" if c.gate_set.has_cell_state else ""))
    print(f"wrote {out}: {len(stack)} layers; " + "; ".join(parts))
    return 0


def _train_extra(args) -> dict:
    keys = ("init_from", "lr", "optimizer", "dropout", "threads", "max_batches", "min_lr", "max_train_tokens",
            "eval_every", "anneal_threshold", "decoder_precision", "stochastic_weights", "fused_recurrence",
            "batch_size", "bptt")
    return {k: getattr(args, k, None) for k in keys if getattr(args, k, None) is not None}


def cmd_experiment(args) -> int:
    from .experiment import relative_command, run_experiment

    e = run_experiment(args.data, args.out, wbits=args.wbits, abits=args.abits, hidden=args.hidden,
                       cell_type=args.cell_type, weight_code=args.weight_code, level=args.level, epochs=args.epochs,
                       name=args.name, results=args.results, layers=args.layers, bidirectional=bool(args.bidirectional),
                       formats=_formats(args),
                       eval_only=args.eval_only, command=relative_command(["python", "-m", "sw_ref", *args.argv]),
                       **_train_extra(args))
    print(json.dumps(e, indent=1))
    return 0


def cmd_table(args) -> int:
    """Write the table of the results file to --output; refuses (nothing written) a results file that
    is missing or records no runs. The header names the results file as given."""
    import os

    from hwrnn.cli import check_output_dir

    from .experiment import load_results, results_table

    check_output_dir(os.path.dirname(os.path.abspath(args.output)))
    if not os.path.isfile(args.results):
        raise ValueError(f"results file {args.results} not found")
    results = load_results(args.results)
    if not results["runs"]:
        raise ValueError(f"results file {args.results} records no runs: nothing to tabulate")
    name = args.results
    if os.path.isabs(name) and not os.path.relpath(name).startswith(os.pardir):
        name = os.path.relpath(name)  # no machine path in a committed table
    text = f"# PTB results (generated by `python -m sw_ref table` from {name})\n\n" + results_table(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as fh:
        fh.write(text)
    print(text, end="")
    return 0


def cmd_search(args) -> int:
    import os

    from .cells import cell_class
    from .experiment import (_entry_name, baseline_target, load_results, neuron_increase_search, run_experiment,
                             save_results, search_key)
    from .weight_quantizers import DEFAULT_WEIGHT_CODE, quantizer_class, resolve_wbits

    cell_type = args.cell_type or "lstm"
    cell_class(cell_type)  # one-line error for an unknown cell type, before anything runs
    code = args.weight_code or DEFAULT_WEIGHT_CODE
    quantizer_class(code)  # the same for the weight code
    wbits_list = args.wbits
    if wbits_list is _NOT_GIVEN:
        wbits_list = [resolve_wbits(None, code)]
        if wbits_list[0] is None:
            raise ValueError(f"give --wbits (the {code} code has no default width)")
    pairs = [(w, a) for w in wbits_list for a in args.abits]
    stochastic = bool(args.stochastic_weights)
    results = load_results(args.results)
    target = args.target
    baseline_bits = None
    if target is None:
        bt = baseline_target(results, args.baseline, args.tolerance)
        if bt is None:
            raise ValueError(f"no entry {args.baseline!r} in {args.results}: run the float baseline first or pass --target")
        target, baseline_bits = bt
    if args.from_results:
        from .experiment import recorded_search

        found = {search_key(w, a, cell_type, code, stochastic):
                 recorded_search(results, w, a, target, baseline_bits, cell_type, code, stochastic) for w, a in pairs}
        print(json.dumps(found[search_key(*pairs[0], cell_type, code, stochastic)] if len(pairs) == 1 else found,
                         indent=1))
        return 0
    sizes = [int(s) for s in args.hidden_sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--hidden-sizes must be positive integers, got {args.hidden_sizes!r}")
    if args.grace < 0 or args.retries < 0 or args.max_trials < 0:
        raise ValueError("--grace, --retries and --max-trials must be >= 0")

    def run_name(w, a, h):
        return _entry_name(w, a, h, cell_type=cell_type, weight_code=code, stochastic=stochastic).replace(" ", "_")

    if args.executor == "ray":
        from .data import resolve_data_dir
        from .experiment import relative_command
        from .tune_search import tune_search

        def command_of(w, a, h):
            argv = ["python", "-m", "sw_ref", "experiment", "--out", os.path.join(args.runs, run_name(w, a, h)),
                    "--results", args.results, "--hidden", str(h), "--abits", str(a), "--epochs", str(args.epochs),
                    "--cell-type", cell_type, "--weight-code", code]
            argv += ["--wbits", str(w)] if w is not None else []
            argv += ["--stochastic-weights"] if stochastic else []
            argv += [f"--{k.replace('_', '-')}={v}" for k, v in sorted(_train_extra(args).items())
                     if k != "stochastic_weights"]
            return relative_command(argv) + f"  # a trial of: {relative_command(['python', '-m', 'sw_ref', *args.argv])}"

        found = tune_search(data=str(resolve_data_dir(args.data)), pairs=pairs, sizes=sizes, target=target,
                            baseline_bits=baseline_bits, cell_type=cell_type, weight_code=code, stochastic=stochastic,
                            epochs=args.epochs, results=args.results, runs=args.runs, train_extra=_train_extra(args),
                            run_name=run_name, command_of=command_of, grace=args.grace, retries=args.retries,
                            address=args.address, jobs=args.jobs, max_concurrent=args.max_trials,
                            progress=not args.no_progress)
    else:
        found = {}
        for w, a in pairs:
            def evaluate_hidden(h, w=w, a=a):
                e = run_experiment(args.data, os.path.join(args.runs, run_name(w, a, h)), wbits=w, abits=a, hidden=h,
                                   cell_type=cell_type, weight_code=code, epochs=args.epochs, results=args.results,
                                   **_train_extra(args))
                ppw = (e["integer_ppw"] or e["model_ppw"])["test"]
                return ppw, e["bits"]

            found[(w, a)] = {**neuron_increase_search(evaluate_hidden, sizes, target, baseline_bits),
                             "executor": "serial"}
    d = load_results(args.results)
    for (w, a), res in found.items():
        d.setdefault("searches", {})[search_key(w, a, cell_type, code, stochastic)] = res
    save_results(d, args.results)
    for (w, a), res in found.items():
        for f in res.get("failed", []):
            print(f"sw_ref search: W{w}A{a} hidden {f['hidden']} failed: {f['error']}", file=sys.stderr)
    print(json.dumps(found[pairs[0]] if len(pairs) == 1 else
                     {search_key(w, a, cell_type, code, stochastic): r for (w, a), r in found.items()}, indent=1))
    return 0


def cmd_widen(args) -> int:
    """Kapur et al.'s layer-wise widening (sw_ref.experiment.run_widening) over real training runs."""
    from .experiment import baseline_target, load_results, relative_command, run_widening

    base = args.base_hidden if isinstance(args.base_hidden, list) else [args.base_hidden]
    if args.layers is not None and args.layers != len(base):
        raise ValueError(f"--base-hidden lists {len(base)} sizes but --layers is {args.layers}: give one per layer")
    sizes = [int(s) for s in args.hidden_sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--hidden-sizes must be positive integers, got {args.hidden_sizes!r}")
    if args.max_rounds < 1:
        raise ValueError(f"--max-rounds must be a positive integer, got {args.max_rounds}")
    target, source = args.target, "--target"
    if target is None:
        bt = baseline_target(load_results(args.results), args.baseline, args.tolerance)
        if bt is None:
            raise ValueError(f"no entry {args.baseline!r} in {args.results}: run the float baseline first or pass --target")
        target = bt[0]
        source = f"{args.baseline} test PPW + {args.tolerance:g} %"
    res = run_widening(args.data, args.runs, base, sizes, target, wbits=args.wbits, abits=args.abits,
                       cell_type=args.cell_type, weight_code=args.weight_code, epochs=args.epochs,
                       results=args.results, max_rounds=args.max_rounds, target_source=source,
                       command=relative_command(["python", "-m", "sw_ref", *args.argv]),
                       bidirectional=bool(args.bidirectional), **_train_extra(args))
    print(json.dumps(res, indent=1))
    if res["status"] != "done":
        print(f"sw_ref widen: {res['waiting_for']} is unfinished (--max-batches): rerun the same command to continue",
              file=sys.stderr)
    return 0


def cmd_ship(args) -> int:
    """Export the layer of a results entry's run as hwrnn package data with its provenance."""
    from pathlib import Path

    from hwrnn import pretrained

    from .data import DEFAULT_LEVEL, load_ptb_for, resolve_data_dir
    from .experiment import load_results, portable_entry
    from .export import IntegerLM, layer_from_model, lm_head
    from .train import load_lm_checkpoint

    d = load_results(args.results)
    e = d["runs"].get(args.entry)
    if e is None:
        raise ValueError(f"{args.results} has no entry {args.entry!r} (entries: {', '.join(sorted(d['runs']))})")
    if e.get("integer_ppw") is None:
        raise ValueError(f"entry {args.entry} has no integer-model perplexity: a float run cannot be shipped")
    e = portable_entry(e)  # the provenance names paths relative to the repository, never this machine's
    ck = Path(args.run or e["run_dir"]) / e["evaluated"]
    model, vocab, meta = load_lm_checkpoint(ck)
    if meta.get("epoch") != e.get("best_epoch"):
        raise ValueError(f"{ck} holds epoch {meta.get('epoch')}, the entry measured epoch {e.get('best_epoch')}: "
                         f"rerun `python -m sw_ref experiment` first")
    layer = layer_from_model(model, **({"cell": e["cell"]} if e.get("cell") else {}))
    level = meta.get("level", DEFAULT_LEVEL)
    head = lm_head(model, vocab, layer)
    corpus = load_ptb_for(resolve_data_dir(args.data), level, vocab, ck)
    t0 = time.perf_counter()  # the shipped model's own figure: the decoder as stored (int8)
    shipped_ppw = IntegerLM.from_head(layer, head.stored()).perplexity(corpus.test.numpy())
    print(f"shipped model (decoder {pretrained.DECODER_PRECISION}): integer test perplexity {shipped_ppw:.2f} "
          f"({time.perf_counter() - t0:.0f} s)")
    prov = {"entry": args.entry, "run": Path(e["run_dir"]).name, "epochs_done": e["epochs_done"],
            "best_epoch": e["best_epoch"], "finished": e["finished"], "recipe": e["recipe"],
            "integer_test_ppw": e["integer_ppw"]["test"], "integer_valid_ppw": e["integer_ppw"]["valid"],
            "model_test_ppw": e["model_ppw"]["test"], "gap_percent": e.get("gap_percent"),
            "command": e["command"], "measured": e["date"], "level": level, "shipped_test_ppw": shipped_ppw}
    out = pretrained.write(layer, args.name, prov, args.data_dir, head=head)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.json').name}: "
          f"{pretrained.describe({**prov, 'file': out.name})}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as given, recorded (paths relative) by `experiment`
    try:
        return {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "experiment": cmd_experiment,
                "table": cmd_table, "search": cmd_search, "ship": cmd_ship, "widen": cmd_widen,
                "resume-point": cmd_resume_point, "set-lr": cmd_set_lr}[args.cmd](args)
    except ValueError as e:  # every project error is a ValueError subclass
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"sw_ref {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read, made or written
        print(f"sw_ref {args.cmd}: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sw_ref {args.cmd}: interrupted (a training run resumes from its last.pt)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
