"""Benchmark: training throughput (tokens/s) of the 1x300 PTB model (float and W4A2) and the speed
of the integer model evaluating PTB test. Writes results/sw_ref_speed.json.

    python benchmarks/bench_sw_ref.py --data ../shared/data/ptb [--threads 1] [--batches 60]
"""
import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from sw_ref.data import load_ptb, resolve_data_dir  # noqa: E402
from sw_ref.export import IntegerLM, layer_from_model  # noqa: E402
from sw_ref.model import LMConfig, QuantLSTMLM  # noqa: E402
from sw_ref.train import train  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "sw_ref_speed.json"))
    args = p.parse_args()
    data_dir = resolve_data_dir(args.data)
    torch.set_num_threads(args.threads)
    res = {"command": f"python benchmarks/bench_sw_ref.py --data <ptb> --threads {args.threads} --batches {args.batches}",
           "threads": args.threads, "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "training": {}}
    for name, bits in (("float", {}), ("W4A2", {"wbits": 4, "abits": 2})):
        out = tempfile.mkdtemp(prefix="bench-train-")
        try:
            t0 = time.perf_counter()
            s = train(data=str(data_dir), out=out, hidden=300, epochs=1, max_batches=args.batches, threads=args.threads,
                      checkpoint_every=0, log_every=0, progress=False, **bits)
            wall = time.perf_counter() - t0
        finally:
            shutil.rmtree(out, ignore_errors=True)
        res["training"][name] = {"hidden": 300, "batches": args.batches, "batch": "20 x 35 tokens",
                                 "tokens_per_s": round(s["tokens_per_s"], 1), "wall_s_incl_setup": round(wall, 1)}
        print(name, res["training"][name], flush=True)
    corpus = load_ptb(data_dir)
    torch.manual_seed(0)
    model = QuantLSTMLM(LMConfig(vocab=len(corpus.vocab), hidden=300, wbits=4, abits=2)).eval()
    ilm = IntegerLM(model, layer_from_model(model))
    t0 = time.perf_counter()
    total, count = ilm.nll(corpus.test.numpy(), bsz=10)
    wall = time.perf_counter() - t0
    res["integer_model_eval"] = {"split": "test", "tokens": count, "batch_columns": 10, "wall_s": round(wall, 1),
                                 "tokens_per_s": round(count / wall, 1),
                                 "note": "untrained W4A2 H=300 model: speed only, perplexity meaningless"}
    print(res["integer_model_eval"], flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
