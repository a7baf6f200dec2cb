"""Benchmark: two ways to build one MAC lane of the exponential weight code (Ott et al.), measured
as combinational logic with yosys synth_ecp5 (LUT4, CCU2C), at equal cycles (one word per cycle):

* shift-add (what rtl_gen.mac.ExponentialMac builds): per column the term (+-) a << (f - 1), one
  adder tree over the SIMD terms;
* popcount per exponent: per exponent value j and sign, a one-hot mask of the columns, a bit-plane
  popcount dot with the activations (as the ternary and balanced lanes do), the 2E dots shifted by
  j - 1 and summed.

Both are checked equal to hwrnn.weight_code.ExponentialCode.acc on random words first.
Writes results/exponential_lanes.json and .md.

    python benchmarks/exponential_lanes.py [--simd 16,32] [--abits 2] [--wbits 4]
"""
import argparse
import json
import os
import shlex
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from amaranth.hdl import Cat, Module, Mux, Signal, signed  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from hwrnn.weight_code import ExponentialCode  # noqa: E402
from rtl_gen.blocks import BitPlaneDot, TreePipeline  # noqa: E402
from rtl_gen.synth import ecp5_block_cells  # noqa: E402


class Lane(wiring.Component):
    """One exponential-code lane, combinational: w = SIMD codes as bit planes (bit p*S + s = bit p of
    column s's code), a = SIMD activation codes; dot = sum of MAC values times activations."""

    def __init__(self, simd, abits, wbits, variant):
        self.S, self.A, self.code, self.variant = simd, abits, ExponentialCode(wbits), variant
        E = self.code.top
        super().__init__({"w": In(simd * wbits), "a": In(simd * abits), "dot": Out(signed(abits + E + simd.bit_length() + 2))})

    def elaborate(self, platform):
        m = Module()
        S, A, code = self.S, self.A, self.code
        e, E = code.exp_bits, code.top
        fields = [Cat(*[self.w[p * S + s] for p in range(e)]) for s in range(S)]
        signs = [self.w[e * S + s] for s in range(S)]
        acts = [self.a[s * A:(s + 1) * A] for s in range(S)]
        tree = TreePipeline(m, None, "t")
        if self.variant == "shift-add":
            terms = []
            for s in range(S):
                mag = Signal(A + E - 1, name=f"mag{s}")
                with m.Switch(fields[s]):
                    for k in range(1, E + 1):
                        with m.Case(k):
                            m.d.comb += mag.eq(acts[s] << (k - 1))
                t = Signal(signed(A + E), name=f"term{s}")
                m.d.comb += t.eq(Mux(signs[s], -mag, mag))
                terms.append(t)
            m.d.comb += self.dot.eq(tree.reduce([terms])[0])
        else:
            parts = []
            for j in range(1, E + 1):
                for neg in (0, 1):
                    mask = Signal(S, name=f"mask{j}_{neg}")
                    m.d.comb += mask.eq(Cat(*[(fields[s] == j) & (signs[s] == neg) for s in range(S)]))
                    dot = BitPlaneDot(S, 1, A)
                    m.submodules[f"dot{j}_{neg}"] = dot
                    m.d.comb += [dot.w.eq(mask), dot.a.eq(self.a)]
                    v = Signal(signed(len(dot.dot) + j + 1), name=f"part{j}_{neg}")
                    m.d.comb += v.eq((-(dot.dot << (j - 1))) if neg else (dot.dot << (j - 1)))
                    parts.append(v)
            m.d.comb += self.dot.eq(tree.reduce([parts])[0])
        return m


def check(simd, abits, wbits, variant, n=40):
    rng = np.random.default_rng(1)
    code = ExponentialCode(wbits)
    dut = Lane(simd, abits, wbits, variant)
    cases = [(rng.integers(0, code.max_code + 1, simd), rng.integers(0, 1 << abits, simd)) for _ in range(n)]
    got = []
    sim = Simulator(dut)

    async def tb(ctx):
        for codes, a in cases:
            ctx.set(dut.w, sum(((int(c) >> p) & 1) << (p * simd + s) for s, c in enumerate(codes) for p in range(wbits)))
            ctx.set(dut.a, sum(int(v) << (abits * s) for s, v in enumerate(a)))
            await ctx.delay(1e-9)
            got.append(ctx.get(dut.dot))

    sim.add_testbench(tb)
    sim.run()
    want = [int(code.acc(codes, a)) for codes, a in cases]
    assert got == want, f"{variant} lane differs from the code's reference"


def synth(simd, abits, wbits, variant) -> dict:
    cells = ecp5_block_cells(Lane(simd, abits, wbits, variant), "lane", ROOT)
    return {"LUT4": cells.get("LUT4", 0), "CCU2C": cells.get("CCU2C", 0),
            "other": {k: v for k, v in cells.items() if k not in ("LUT4", "CCU2C", "$scopeinfo")}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--simd", default="16,32")
    ap.add_argument("--abits", type=int, default=2)
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "exponential_lanes"))
    args = ap.parse_args()
    res = {"command": "python benchmarks/exponential_lanes.py " + shlex.join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "abits": args.abits, "wbits": args.wbits,
           "rows": []}
    for simd in (int(v) for v in args.simd.split(",")):
        for variant in ("shift-add", "popcount per exponent"):
            check(simd, args.abits, args.wbits, variant)
            row = {"simd": simd, "variant": variant, **synth(simd, args.abits, args.wbits, variant)}
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(res, fh, indent=2)
    lines = [f"# Exponential-code MAC lane: shift-add vs popcount per exponent (W{args.wbits} = sign + "
             f"{args.wbits - 1} exponent bits, A{args.abits})", "", f"Command: `{res['command']}` ({res['date']})", "",
             "| SIMD | variant | LUT4 | CCU2C |", "|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['simd']} | {r['variant']} | {r['LUT4']} | {r['CCU2C']} |")
    lines += ["", "One lane as combinational logic (yosys synth_ecp5), both checked equal to "
              "hwrnn.weight_code.ExponentialCode.acc on random words; both take one weight word per cycle, so "
              "cycles per step are equal. rtl_gen builds the smaller (ExponentialMac: shift-add)."]
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
