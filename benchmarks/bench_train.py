"""Benchmark: PTB training throughput of the quantized LSTM LM against a float model of the same
cell and torch.nn.LSTM of the same size, with the decoder in fp32 or bf16; the fused LSTM recurrence
(sw_ref.fused_recurrence, the default) against the step-by-step one; and the validation perplexity a
short run reaches with each decoder precision (the bf16 switch must keep it within 0.5 % of fp32).
Writes results/bench_train.json.

    python benchmarks/bench_train.py --data ../shared/data/ptb [--hidden 450] [--threads 2]
        [--batches 40] [--turns 3] [--accuracy-batches 400] [--profile-batches 10]
        [--fused-only | --accuracy-only [--accuracy-init CHECKPOINT --accuracy-lr LR] | --profile-only] [--note TEXT]

Throughput: each variant trains ``--batches`` batches (20 x 35 tokens, after 3 warm-up batches)
per turn, the variants take turns ``--turns`` times (the machine is noisy: turns pair them in
time), and the median tokens/s of the turns is reported. The models of the first section run the
default (fused) recurrence.

Fused recurrence (the "fused_recurrence" entry): W4A2 and float models of the same seed, each trained
with ``model.fused_recurrence`` on and off in turns (the two back to back in each turn, their order
alternating); the speedup is the median over the turns of the paired ratio fused / step-by-step, so
it carries over a loaded machine where the absolute tokens/s do not. The same for the recurrence
alone (forward and backward of one 35 x 20 window, random inputs: "recurrence_alone_ms_per_window"),
the part of a training step the fused path can speed up. ``--fused-only`` measures only
this pair and writes it into the existing results file beside the other figures; the entry records
the process's niceness, the load average at the start and ``--note``. ``--accuracy-only`` likewise runs
only the fp32 / bf16 perplexity check ("accuracy") and merges it into the existing file; with
``--accuracy-init CHECKPOINT`` (and ``--accuracy-lr``) the two runs fine-tune from that checkpoint, the
regime the PTB recipes train in, recorded as "accuracy_finetune".

Profile split (the "profile" entry; ``--profile-only`` measures it alone and merges it): torch.profiler
over ``--profile-batches`` training steps of the quantized model (bf16 decoder where the CPU has bf16
instructions): each op's self CPU time per batch and share, the largest by name, beside the wall time.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sw_ref.data import batchify, iter_bptt, load_ptb, resolve_data_dir  # noqa: E402
from sw_ref.model import LMConfig, QuantLSTMLM  # noqa: E402
from sw_ref.train import evaluate, load_lm_checkpoint, train  # noqa: E402


class TorchLSTMLM(nn.Module):
    """torch.nn.LSTM (fused float cell) with the same embedding, dropout and decoder sizes."""

    def __init__(self, vocab, hidden, dropout=0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden)
        self.decoder = nn.Linear(hidden, vocab)
        self.drop = nn.Dropout(dropout)
        self.train_decoder_dtype = None

    def forward(self, tokens, state=None):
        x = self.drop(self.embedding(tokens))
        out, state = self.rnn(x, state)
        hs = self.drop(out.reshape(-1, out.shape[-1]))
        return self.decoder(hs), state

    @staticmethod
    def detach_state(state):
        return None if state is None else tuple(s.detach() for s in state)


def native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (avx512_bf16 or AMX); without them torch
    emulates bf16 GEMMs, which is slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make(name, vocab, hidden, fused=True):
    torch.manual_seed(1111)
    if name.startswith("torch.nn.LSTM"):
        return TorchLSTMLM(vocab, hidden)
    bits = {} if name.startswith("float") else {"wbits": 4, "abits": 2}
    model = QuantLSTMLM(LMConfig(vocab=vocab, hidden=hidden, **bits))
    model.fused_recurrence = fused
    if name.endswith("bf16 decoder"):
        model.train_decoder_dtype = torch.bfloat16
    return model


def window_ms(model, fused, reps=3, T=35, B=20):
    """ms for the forward and backward of the recurrence alone over one window (T x B, random inputs;
    W_h the model's quantized matrix), fused or step by step: the mean of ``reps`` windows."""
    H, X = model.cfg.hidden, model.cfg.input
    g = torch.Generator().manual_seed(0)
    xw0 = torch.randn(T, B, 4 * H, generator=g)
    Wh0 = model.effective_weights()["rnn"][:, X:].t().contiguous()
    gh = torch.randn(T, B, H, generator=g)
    h0, c0 = model.init_hidden(B)
    t0 = time.perf_counter()
    for _ in range(reps):
        xw, Wh_t = xw0.clone().requires_grad_(), Wh0.clone().requires_grad_()
        if fused:
            hs, _ = model.rnn.recurrence_fused(xw, Wh_t, h0, c0)
        else:
            hs = torch.stack(model.rnn.recurrence(xw, Wh_t, h0, c0)[0])
        (hs * gh).sum().backward()
    return 1000 * (time.perf_counter() - t0) / reps


def fused_ab(train_b, V, H, batches, turns):
    """The fused recurrence against the step-by-step one (module docstring): {model: figures}."""
    out = {}
    pairs = {"W4A2": "W4A2 quantized, fp32 decoder", "float": "float (same cell), fp32 decoder"}
    models = {(k, f): make(n, V, H, fused=f) for k, n in pairs.items() for f in (True, False)}
    speeds = {key: [] for key in models}
    for t in range(turns):
        for k in pairs:
            for f in ((True, False) if t % 2 == 0 else (False, True)):
                speeds[(k, f)].append(turn(models[(k, f)], train_b, batches))
                print(f"turn {t + 1}: {k} {'fused' if f else 'step-by-step'} recurrence: "
                      f"{speeds[(k, f)][-1]:.0f} tok/s", flush=True)
    rec = {key: [] for key in models}  # the recurrence alone, ms per window, in turns too
    for t in range(turns):
        for k in pairs:
            for f in ((True, False) if t % 2 == 0 else (False, True)):
                rec[(k, f)].append(window_ms(models[(k, True)], f))
    for k in pairs:
        fu, st = speeds[(k, True)], speeds[(k, False)]
        ratios = [a / b for a, b in zip(fu, st)]
        rfu, rst = rec[(k, True)], rec[(k, False)]
        rratios = [b / a for a, b in zip(rfu, rst)]
        out[k] = {"model": f"{pairs[k]}, H={H}", "fused_tokens_per_s": round(statistics.median(fu), 1),
                  "step_by_step_tokens_per_s": round(statistics.median(st), 1),
                  "turns_fused": [round(x, 1) for x in fu], "turns_step_by_step": [round(x, 1) for x in st],
                  "paired_speedups": [round(r, 3) for r in ratios],
                  "speedup_fused_vs_step_by_step": round(statistics.median(ratios), 3),
                  "recurrence_alone_ms_per_window": {"fused": round(statistics.median(rfu), 1),
                                                     "step_by_step": round(statistics.median(rst), 1),
                                                     "paired_speedups": [round(r, 3) for r in rratios],
                                                     "speedup": round(statistics.median(rratios), 3)}}
    return out


def sgd_step(model, opt, x, y, state):
    """One training step (forward, backward, clip 0.25, SGD step); the carried state."""
    state = model.detach_state(state) if state is not None else None
    opt.zero_grad(set_to_none=True)
    logits, state = model(x, state)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
    opt.step()
    return state


def turn(model, data, batches, warmup=3, lr=20.0):
    """tokens/s of `batches` SGD steps (forward, backward, clip, step) after `warmup` steps."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    state, t0, tokens = None, None, 0
    for b, x, y in iter_bptt(data, 35, 0):
        if b == warmup:
            t0, tokens = time.perf_counter(), 0
        if b == warmup + batches:
            break
        state = sgd_step(model, opt, x, y, state)
        tokens += y.numel()
    return tokens / (time.perf_counter() - t0)


def profile_split(model, data, batches, warmup=3, top=12) -> dict:
    """Where a training step's time goes: torch.profiler over ``batches`` SGD steps after ``warmup``;
    per op name (aten ops and the model's autograd functions) its self CPU time in ms per batch and
    its share of all ops' self time, the ``top`` largest by name and the rest summed as "other";
    beside it the wall ms per batch (the part not in any op is Python and the profiler itself)."""
    from torch.profiler import ProfilerActivity, profile

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=20.0)
    steps = iter_bptt(data, 35, 0)
    state = None
    for _ in range(warmup):
        _, x, y = next(steps)
        state = sgd_step(model, opt, x, y, state)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(batches):
            _, x, y = next(steps)
            state = sgd_step(model, opt, x, y, state)
        wall = time.perf_counter() - t0
    self_us = {}
    for ev in prof.key_averages():
        self_us[ev.key] = self_us.get(ev.key, 0.0) + ev.self_cpu_time_total
    total = sum(self_us.values())
    ranked = sorted(self_us.items(), key=lambda kv: -kv[1])
    ops = {k: v for k, v in ranked[:top]}
    ops["other"] = sum(v for _, v in ranked[top:])
    return {"batches": batches, "wall_ms_per_batch": round(1000 * wall / batches, 1),
            "ops_self_ms_per_batch": round(total / 1000 / batches, 1),
            "ops": {k: {"self_ms_per_batch": round(v / 1000 / batches, 2), "share": round(v / total, 4)}
                    for k, v in ops.items()}}


def accuracy_check(data_dir, corpus, H: int, batches: int, threads: int, init_from: str | None = None,
                   lr: float = 20.0) -> dict:
    """The same short run (W4A2, SGD at ``lr``, seed 1111, ``batches`` batches; from scratch, or
    fine-tuning from the LM checkpoint or resume point ``init_from``) with the decoder in fp32 and in
    bf16; validation perplexity of each (evaluated in fp32) and their relative difference."""
    acc = {}
    for prec in ("fp32", "bf16"):
        out = tempfile.mkdtemp(prefix="bench-train-acc-", dir=ROOT)
        try:
            t0 = time.perf_counter()
            train(data=str(data_dir), out=out, hidden=H, wbits=4, abits=2, epochs=1,
                  max_batches=batches, threads=threads, checkpoint_every=0, lr=lr, init_from=init_from,
                  log_every=0, progress=False, decoder_precision=prec)
            wall = time.perf_counter() - t0
            model, _, _ = load_lm_checkpoint(os.path.join(out, "last.pt"))
            acc[prec] = {"valid_ppl": round(evaluate(model, corpus.valid), 3), "train_wall_s": round(wall, 1)}
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(f"accuracy {prec}: {acc[prec]}", flush=True)
    rel = acc["bf16"]["valid_ppl"] / acc["fp32"]["valid_ppl"] - 1
    recipe = f"SGD lr {lr:g}, seed 1111" + (f", fine-tuning from {init_from}" if init_from else ", from scratch")
    return {"model": f"W4A2 H={H}", "batches": batches, "recipe": recipe,
            **acc, "relative_difference": round(rel, 5), "within_0.5_percent": abs(rel) <= 0.005}


def read_results(path: str) -> dict:
    """The JSON results file at ``path`` ({} if there is none yet)."""
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def write_results(path: str, res: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(res, fh, indent=2)
        fh.write("\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=None)
    p.add_argument("--hidden", type=int, default=450)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--accuracy-batches", type=int, default=400, help="0 skips the accuracy check")
    p.add_argument("--force-bf16", action="store_true", help="measure the bf16 decoder even without native bf16")
    p.add_argument("--fused-only", action="store_true",
                   help="measure only the fused vs step-by-step recurrence and merge it into --out")
    p.add_argument("--accuracy-only", action="store_true",
                   help="run only the fp32 / bf16 validation-perplexity check and merge it into --out")
    p.add_argument("--profile-batches", type=int, default=10,
                   help="batches the profile split of the quantized model covers (0 skips it)")
    p.add_argument("--profile-only", action="store_true",
                   help="measure only the profile split and merge it into --out")
    p.add_argument("--accuracy-init", default=None,
                   help="--accuracy-only: fine-tune from this checkpoint (a path relative to the repository) "
                        "instead of training from scratch; recorded as accuracy_finetune")
    p.add_argument("--accuracy-lr", type=float, default=20.0, help="SGD lr of the accuracy check (default 20)")
    p.add_argument("--note", default=None, help="recorded in the fused_recurrence / accuracy entry (e.g. the machine's load)")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_train.json"))
    args = p.parse_args()
    data_dir = resolve_data_dir(args.data)
    torch.set_num_threads(args.threads)
    corpus = load_ptb(data_dir)
    V, H = len(corpus.vocab), args.hidden
    train_b = batchify(corpus.train, 20)
    bf16 = native_bf16() or args.force_bf16
    machine = f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
    nice = os.nice(0)
    load = round(os.getloadavg()[0], 2)

    def stamp(flags: str) -> dict:
        """What an entry records of the run that measured it: its command (``flags`` after the data,
        under the niceness it ran at), machine, date, the load average at the start and --note."""
        return {"command": (f"nice -n {nice} " if nice else "") + "python benchmarks/bench_train.py --data <ptb> "
                           + flags,
                "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "load_average_1min_at_start": load, **({"note": args.note} if args.note else {})}

    def merge(key: str, entry: dict, prepare=None) -> None:
        """Write ``entry`` under ``key`` into the existing results file (``prepare`` may amend the file's
        other entries first), keeping everything else in it."""
        res = read_results(args.out)
        if prepare:
            prepare(res)
        res[key] = entry
        write_results(args.out, res)
        print(json.dumps(entry, indent=1))

    fused_entry = {**stamp(f"{'--fused-only ' if args.fused_only else ''}--hidden {H} --threads {args.threads} "
                           f"--batches {args.batches} --turns {args.turns}"),
                   "hidden": H, "threads": args.threads, "batch": "20 x 35 tokens", "batches_per_turn": args.batches,
                   "warmup_batches": 3, "turns": args.turns, "niceness": nice}
    if args.accuracy_only:
        if not bf16:
            sys.exit("bench_train: --accuracy-only needs native bf16 (or --force-bf16)")
        acc = accuracy_check(data_dir, corpus, H, args.accuracy_batches, args.threads, args.accuracy_init,
                             args.accuracy_lr)
        acc.update(stamp(f"--accuracy-only --hidden {H} --threads {args.threads} "
                         f"--accuracy-batches {args.accuracy_batches}"
                         + (f" --accuracy-lr {args.accuracy_lr:g}" if args.accuracy_lr != 20.0 else "")
                         + (f" --accuracy-init {args.accuracy_init}" if args.accuracy_init else "")))
        merge("accuracy_finetune" if args.accuracy_init else "accuracy", acc)
        return
    profiled = "W4A2 quantized, bf16 decoder" if bf16 else "W4A2 quantized, fp32 decoder"

    def profile_entry():
        prof = profile_split(make(profiled, V, H), train_b, args.profile_batches)
        return {"model": f"{profiled}, H={H}", "threads": args.threads, **prof,
                **stamp(f"--profile-only --hidden {H} --threads {args.threads} "
                        f"--profile-batches {args.profile_batches}")}

    if args.profile_only:
        if args.profile_batches < 1:
            sys.exit("bench_train: --profile-only needs --profile-batches >= 1")
        merge("profile", profile_entry())
        return
    if args.fused_only:
        fused_entry.update(fused_ab(train_b, V, H, args.batches, args.turns))

        def mark_old_throughput(res):
            if "throughput" in res and "recurrence" not in res:  # figures of a full run older than the switch
                res["recurrence"] = "step by step (the throughput figures predate sw_ref.fused_recurrence)"

        merge("fused_recurrence", fused_entry, mark_old_throughput)
        return
    names = ["W4A2 quantized, fp32 decoder", "W4A2 quantized, bf16 decoder", "float (same cell), fp32 decoder",
             "float (same cell), bf16 decoder", "torch.nn.LSTM, fp32 decoder"]
    if not bf16:
        names = [n for n in names if "bf16" not in n]
    models = {n: make(n, V, H) for n in names}
    speeds = {n: [] for n in names}
    for t in range(args.turns):
        for n in names:
            speeds[n].append(turn(models[n], train_b, args.batches))
            print(f"turn {t + 1}: {n}: {speeds[n][-1]:.0f} tok/s", flush=True)
    ref = statistics.median(speeds["torch.nn.LSTM, fp32 decoder"])
    res = {"command": f"python benchmarks/bench_train.py --data <ptb> --hidden {H} --threads {args.threads} "
                      f"--batches {args.batches} --turns {args.turns} --accuracy-batches {args.accuracy_batches} "
                      f"--profile-batches {args.profile_batches}",
           "machine": machine,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "hidden": H, "threads": args.threads,
           "batch": "20 x 35 tokens", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "native_bf16": native_bf16(), "recurrence": "fused (sw_ref.fused_recurrence, the default)",
           "throughput": {}}
    for n in names:
        med = statistics.median(speeds[n])
        res["throughput"][n] = {"tokens_per_s": round(med, 1), "turns": [round(s, 1) for s in speeds[n]],
                                "vs_torch_nn_lstm": round(med / ref, 3)}
    best = max(v["vs_torch_nn_lstm"] for n, v in res["throughput"].items() if n.startswith("W4A2"))
    res["target"] = {"quantized_vs_torch_nn_lstm": ">= 1.3", "measured_best": best}
    if not bf16:
        res["bf16"] = ("not measured: this CPU has no bf16 matrix instructions (avx512_bf16/AMX), so torch "
                       "emulates bf16 GEMMs, slower than fp32; the decoder stays fp32 here (--force-bf16 measures it)")

    fused_entry.update(fused_ab(train_b, V, H, args.batches, args.turns))
    res["fused_recurrence"] = fused_entry
    if args.profile_batches:
        res["profile"] = profile_entry()
        res["profile"]["command"] = res["command"]

    if args.accuracy_batches and bf16:
        res["accuracy"] = accuracy_check(data_dir, corpus, H, args.accuracy_batches, args.threads)
    prev = read_results(args.out)
    for key in ("accuracy", "accuracy_finetune"):  # checks this run did not make (--accuracy-batches 0, or
        if key in prev and key not in res:        # --accuracy-only --accuracy-init): kept as they were
            res[key] = prev[key]
    write_results(args.out, res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
