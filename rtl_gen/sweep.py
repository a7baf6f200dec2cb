"""Design-space sweep: every combination of wbits, abits, hidden, PE, SIMD and plane mode through
the analytic model (rtl_gen.cost; milliseconds per point), with a table (CSV), Pareto fronts of
resources vs latency (PNG) and, only for the points asked for, real synthesis (rtl_gen.synth).
Points run as Ray tasks (hwrnn.points): on an embedded local Ray by default, on a running cluster
with --address (or RAY_ADDRESS), serially with --executor serial. Finished points are cached in
<out-dir>/cache/ (keyed by the configuration, the code and the tool versions): a re-run or an
interrupted sweep skips them; a failed synthesis is reported in its row and does not stop the others.

    python -m rtl_gen.sweep --wbits 2,4 --abits 2,4 --hidden 450 --pe 4,8,16,28,32,64,128 \\
        --simd 8,16,32,64,128 --planes parallel,serial --family all --name headline
    python -m rtl_gen.sweep ... --synth-pareto --synth-max 3        # synthesize some Pareto points
    python -m rtl_gen.sweep ... --synth-points 0,5                  # synthesize rows 0 and 5
    python -m rtl_gen.sweep ... --address ray://head:10001          # the same sweep on a Ray cluster

Writes results/sweep_<name>.csv, results/sweep_<name>_<family>.png and prints the Pareto points.
A point is Pareto-optimal ("pareto") when no other point of the same layer (wbits, abits, hidden,
input) and family has both no more logic cells and no more cycles per step; "pareto_bram" is the
same front for block RAM.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import time

from hwrnn.config import ConfigError, Folding, LayerConfig
from hwrnn.datapath import Geometry
from hwrnn.devices import DEVICES, FAMILIES, devices_of
from hwrnn.fpga import BRAM_BITS, device_fit, logic_cells
from hwrnn.resources import ASSUMED_MHZ, derived

from hwrnn.points import RESOURCE_MODEL_FILES, add_executor_args, results_cache, run_points

from .cost import estimate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COLUMNS = ["row", "family", "wbits", "abits", "hidden", "input", "cell_type", "weight_code", "pe", "simd", "planes", "weights",
           "lut", "ff", "carry", "bram", "dsp", "lutram", "logic_cells", "cycles_per_step", "us_per_step",
           "steps_per_s", "gmac_per_s", "weight_bits", "smallest_device", "pareto", "pareto_bram",
           "synth_lut", "synth_ff", "synth_bram", "synth_dsp", "synth_logic_cells", "fmax_mhz", "synth_device", "synth_error"]


def _ints(text: str, name: str) -> list[int]:
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name} takes comma-separated integers, got {text!r}") from None
    if not vals:
        raise ConfigError(f"--{name} is empty")
    return vals


def largest_bram_bits(family: str) -> int:
    return max(d.bram_bits for d in devices_of(family).values())


def eval_point(point: dict) -> list[dict]:
    """All families' rows of one configuration (an empty list when the folding is illegal): a
    point of hwrnn.points (keys wbits abits hidden input cell_type weight_code pe simd planes weights
    families clock steps)."""
    w, a, h, x = point["wbits"], point["abits"], point["hidden"], point["input"]
    ct, wc, pe, simd, planes = point["cell_type"], point["weight_code"], point["pe"], point["simd"], point["planes"]
    weights, families, clock, steps = point["weights"], point["families"], point["clock"], point["steps"]
    try:
        cfg = LayerConfig(wbits=w, abits=a, hidden=h, input=x, cell_type=ct, weight_code=wc)
        fold = Folding(pe=pe, simd=simd, planes=planes)
        fold.check_against(cfg)
    except ConfigError:
        return []
    g = Geometry(cfg, fold)
    rows = []
    for fam in families:
        mode = weights
        if mode == "auto":
            mode = "memory" if g.weight_bits <= largest_bram_bits(fam) else "stream"
        e = estimate(cfg, fold, fam, mode)
        t = e["total"]
        d = derived(cfg, fold, clock, steps, mode)
        fits = [dev for dev, v in device_fit(fam, t).items() if v["fits"]]
        fits.sort(key=lambda dev: DEVICES[dev].luts)
        rows.append({
            "family": fam, "wbits": w, "abits": a, "hidden": h, "input": cfg.input, "cell_type": ct,
            "weight_code": wc, "pe": pe, "simd": simd,
            "planes": planes, "weights": mode, **{k: t[k] for k in ("lut", "ff", "carry", "bram", "dsp", "lutram")},
            "logic_cells": round(logic_cells(fam, t)), "cycles_per_step": d["cycles_per_step"],
            "us_per_step": round(d["us_per_step"], 4), "steps_per_s": round(d["steps_per_s"], 1),
            "gmac_per_s": round(d["mac_per_s"] / 1e9, 3), "weight_bits": g.weight_bits,
            "smallest_device": fits[0] if fits else "",
        })
    return rows


def layer_key(r: dict) -> tuple:
    """The layer a row belongs to (Pareto fronts and plot series are per layer)."""
    return (r["wbits"], r["abits"], r["hidden"], r["input"], r["cell_type"], r["weight_code"])


def mark_pareto(rows: list[dict], key: str = "logic_cells", flag: str = "pareto") -> None:
    """row[flag] = True for rows that no other row of the same layer and family beats in both
    row[key] (a resource) and cycles per step."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["family"], *layer_key(r)), []).append(r)
    for grp in groups.values():
        grp.sort(key=lambda r: (r["cycles_per_step"], r[key]))
        best = None
        for r in grp:  # ascending cycles: Pareto iff strictly fewer resources than every faster row
            r[flag] = best is None or r[key] < best
            if r[flag]:
                best = r[key]


SYNTH_KEYS = ("family", "wbits", "abits", "hidden", "input", "cell_type", "weight_code", "pe", "simd", "planes",
              "weights")


def synth_point(point: dict) -> dict:
    """yosys (and, with point["pnr"], nextpnr) of one sweep row's configuration with a seed-0 random
    layer: a point of hwrnn.points. Runs in a temporary directory unless point["_work"] names one
    to keep; point["_timeout"] (s) bounds each tool. Returns the synthesis result of rtl_gen.synth."""
    import shutil
    import tempfile

    from hwrnn.checkpoint import QuantLayer

    from .synth import synthesize

    cfg = LayerConfig(wbits=point["wbits"], abits=point["abits"], hidden=point["hidden"], input=point["input"],
                      cell_type=point["cell_type"], weight_code=point["weight_code"])
    fold = Folding(pe=point["pe"], simd=point["simd"], planes=point["planes"])
    work = point.get("_work") or tempfile.mkdtemp(prefix="hwrnn-sweep-")
    try:
        return synthesize(QuantLayer.random(cfg, seed=0), fold, point["family"], work, weights=point["weights"],
                          pnr=point["pnr"], timeout=point.get("_timeout"))
    finally:
        if not point.get("_work"):
            shutil.rmtree(work, ignore_errors=True)


def synth_columns(family: str, r: dict) -> dict:
    """The synth_* (and fmax) columns of a row from synth_point's result."""
    c = r["counts"]
    out = {"synth_lut": c["lut"], "synth_ff": c["ff"], "synth_bram": c["bram"], "synth_dsp": c["dsp"],
           "synth_logic_cells": round(logic_cells(family, c))}
    if r.get("pnr"):
        out.update(fmax_mhz=r["pnr"]["fmax_mhz"], synth_device=r["pnr"]["device"])
    elif r.get("pnr_error"):
        out["synth_error"] = r["pnr_error"]
    return out


def plot(rows: list[dict], family: str, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fr = [r for r in rows if r["family"] == family]
    if not fr:
        return
    layers = sorted({layer_key(r) for r in fr})
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    cmap = plt.get_cmap("tab10")
    for ax, key, label in ((axes[0], "logic_cells", f"logic cells ({family}: LUT-sized cells, analytic)"),
                           (axes[1], "bram", f"block RAM ({family}: {'36 kbit tiles' if family == 'xilinx' else f'{BRAM_BITS[family] // 1024} kbit blocks'})")):
        for i, lay in enumerate(layers):
            pts = [r for r in fr if layer_key(r) == lay]
            col = cmap(i % 10)
            name = (f"W{lay[0]}A{lay[1]} H={lay[2]}" + (f" X={lay[3]}" if lay[3] != lay[2] else "")
                    + (f" {lay[4].upper()}" if lay[4] != "lstm" else "") + (f" {lay[5]}" if lay[5] != "balanced" else ""))
            ax.scatter([r["us_per_step"] for r in pts], [max(r[key], 0.5) for r in pts], s=10, alpha=0.35,
                       color=col)
            flag = "pareto" if key == "logic_cells" else "pareto_bram"
            par = sorted((r for r in pts if r[flag]), key=lambda r: r["us_per_step"])
            if par:
                ax.plot([r["us_per_step"] for r in par], [max(r[key], 0.5) for r in par], "-o", ms=4, color=col,
                        label=name + " (Pareto)")
            syn = [r for r in pts if r.get("synth_lut") not in (None, "")]
            if syn:
                skey = "synth_logic_cells" if key == "logic_cells" else "synth_bram"
                ax.scatter([r["us_per_step"] for r in syn], [max(r[skey], 0.5) for r in syn], marker="x", s=60,
                           color=col, label=name + " yosys (synthesized)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"latency per time step (us at {rows[0].get('_clock', ASSUMED_MHZ):g} MHz)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m rtl_gen.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wbits", default="2,4")
    p.add_argument("--abits", default="2,4")
    p.add_argument("--hidden", default="450")
    p.add_argument("--input", default=None, help="input sizes (default: equal to hidden)")
    p.add_argument("--cell-type", default="lstm", help="cell types (comma-separated: lstm, gru, rnn)")
    p.add_argument("--weight-code", default="balanced",
                   help="weight codings (comma-separated; a coding skips the wbits it cannot store)")
    p.add_argument("--pe", default="4,8,16,28,32,64")
    p.add_argument("--simd", default="8,16,32,64")
    p.add_argument("--planes", default="parallel,serial")
    p.add_argument("--weights", choices=["memory", "stream", "auto"], default="auto",
                   help="auto: on-chip memory when the weights fit the family's largest device, else streamed")
    p.add_argument("--family", default="ecp5", help="ecp5, ice40, xilinx or all (comma-separated)")
    p.add_argument("--clock", type=float, default=ASSUMED_MHZ, help="MHz for the time figures (default 150, SPEC target)")
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--name", default="sweep", help="results/sweep_<name>.csv and ..._<family>.png")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "results"))
    p.add_argument("--synth-points", default="", help="rows (of the table) to synthesize, comma-separated")
    p.add_argument("--synth-pareto", action="store_true", help="synthesize the Pareto points (at most --synth-max)")
    p.add_argument("--synth-max", type=int, default=4)
    p.add_argument("--no-pnr", action="store_true", help="synthesis counts only for synthesized points")
    p.add_argument("--synth-timeout", type=float, default=3600)
    p.add_argument("--work-dir", default=None,
                   help="keep the synthesized points' files in <dir>/row<n>_<family> (default: temporary directories)")
    p.add_argument("--no-cache", action="store_true",
                   help="compute every point again (default: points finished by an earlier run with the same code "
                        "and tool versions are read from <out-dir>/cache/)")
    add_executor_args(p)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    try:
        W, A, H = _ints(args.wbits, "wbits"), _ints(args.abits, "abits"), _ints(args.hidden, "hidden")
        X = _ints(args.input, "input") if args.input else [None]
        PE, S = _ints(args.pe, "pe"), _ints(args.simd, "simd")
        planes = [v.strip() for v in args.planes.split(",") if v.strip()]
        cells = [v.strip() for v in args.cell_type.split(",") if v.strip()]
        codes = [v.strip() for v in args.weight_code.split(",") if v.strip()]
        from hwrnn.gates import GATE_SETS
        from hwrnn.weight_code import WEIGHT_CODES
        bad = [v for v in cells if v not in [g.name for g in GATE_SETS if g.has_rtl]]
        if bad or not cells:
            raise ConfigError(f"--cell-type takes {', '.join(g.name for g in GATE_SETS if g.has_rtl)}, got {args.cell_type!r}")
        bad = [v for v in codes if v not in [c.name for c in WEIGHT_CODES]]
        if bad or not codes:
            raise ConfigError(f"--weight-code takes {', '.join(c.name for c in WEIGHT_CODES)}, got {args.weight_code!r}")
        bad = [v for v in planes if v not in ("parallel", "serial")]
        if bad:
            raise ConfigError(f"--planes takes parallel and/or serial, got {bad[0]!r}")
        fams = list(FAMILIES) if args.family == "all" else [f.strip() for f in args.family.split(",") if f.strip()]
        bad = [f for f in fams if f not in FAMILIES]
        if bad:
            raise ConfigError(f"--family {bad[0]}: choose from {', '.join(FAMILIES)} or all")
        for name, vals in (("wbits", W), ("abits", A)):
            if any(not 1 <= v <= 8 for v in vals):
                raise ConfigError(f"--{name} values must be in 1..8")
        if args.jobs < 1:
            raise ConfigError("--jobs must be >= 1")
        if args.synth_timeout <= 0:
            raise ConfigError("--synth-timeout must be > 0 seconds")
    except ConfigError as e:
        print(f"rtl_gen.sweep: error: {e}", file=sys.stderr)
        return 2
    # drop planes=serial for wbits=1 (identical to parallel)
    points = [{"wbits": w, "abits": a, "hidden": h, "input": x, "cell_type": ct, "weight_code": wc, "pe": pe,
               "simd": s, "planes": pl, "weights": args.weights, "families": fams, "clock": args.clock,
               "steps": args.steps}
              for w, a, h, x, ct, wc, pe, s, pl in itertools.product(W, A, H, X, cells, codes, PE, S, planes)
              if not (pl == "serial" and w == 1)]
    run = dict(executor=args.executor, address=args.address, jobs=args.jobs, progress=not args.no_progress)
    cache = None if args.no_cache else results_cache(args.out_dir, "sweep_estimate")
    rows = []
    for o in run_points(eval_point, points, cache=cache, desc="sweep", memory_mb=300, **run):
        if not o.ok:  # the analytic model raising on a legal configuration is a bug: say which
            print(f"rtl_gen.sweep: error: the analytic model failed on {o.config}: {o.error}", file=sys.stderr)
            return 1
        rows.extend(o.result)
    if not rows:
        print("rtl_gen.sweep: error: no legal configuration in the sweep", file=sys.stderr)
        return 2
    for i, r in enumerate(rows):
        r["row"] = i
    mark_pareto(rows)
    mark_pareto(rows, "bram", "pareto_bram")
    t_model = time.perf_counter() - t0
    # synthesis of the points asked for
    want = []
    if args.synth_points:
        try:
            idx = _ints(args.synth_points, "synth-points")
        except ConfigError as e:
            print(f"rtl_gen.sweep: error: {e}", file=sys.stderr)
            return 2
        for i in idx:
            if not 0 <= i < len(rows):
                print(f"rtl_gen.sweep: error: --synth-points {i}: the table has rows 0..{len(rows) - 1}",
                      file=sys.stderr)
                return 2
            want.append(rows[i])
    if args.synth_pareto:
        par = sorted((r for r in rows if r["pareto"]), key=lambda r: r["logic_cells"])
        want += [r for r in par if r not in want][:args.synth_max]
    if want:
        synth = [{**{k: r[k] for k in SYNTH_KEYS}, "pnr": not args.no_pnr, "_timeout": args.synth_timeout,
                  "_work": os.path.join(args.work_dir, f"row{r['row']}_{r['family']}") if args.work_dir else None}
                 for r in want]
        cache = None if args.no_cache else results_cache(args.out_dir, "sweep_synth", exclude=RESOURCE_MODEL_FILES)
        for r, o in zip(want, run_points(synth_point, synth, cache=cache, desc="synthesis", memory_mb=2000, **run)):
            r.update(synth_columns(r["family"], o.result) if o.ok else {"synth_error": o.error})
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = os.path.join(args.out_dir, f"sweep_{args.name}.csv")
    with open(csv_path, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            wr.writerow({k: r.get(k, "") for k in COLUMNS})
    pngs = []
    for fam in fams:
        png = os.path.join(args.out_dir, f"sweep_{args.name}_{fam}.png")
        for r in rows:
            r["_clock"] = args.clock
        plot(rows, fam, png, f"hwrnn sweep '{args.name}' ({fam}, analytic model, weights {args.weights}; "
                                   "x = yosys counts of the synthesized points)")
        pngs.append(png)
    par = [r for r in rows if r["pareto"]]
    where = "serially" if args.executor == "serial" else f"on Ray ({args.address or 'embedded'})"
    print(f"{len(rows)} rows ({len(points)} configurations x {len(fams)} families) in {t_model:.1f} s "
          f"{where}; {len(par)} Pareto points:")
    print(f"{'row':>5} {'family':<7} {'cell':<4} {'code':<12} {'W':>2} {'A':>2} {'H':>5} {'PE':>4} {'SIMD':>4} {'planes':<8} {'weights':<7} "
          f"{'logic':>8} {'FF':>7} {'BRAM':>6} {'DSP':>4} {'cycles':>8} {'us/step':>9}  device")
    for r in sorted(par, key=lambda r: (r["family"], *layer_key(r), r["cycles_per_step"])):
        extra = ""
        if r.get("synth_lut") not in (None, ""):
            extra = f"  yosys LUT {r['synth_lut']} FF {r['synth_ff']}" + (f" Fmax {r['fmax_mhz']} MHz" if r.get("fmax_mhz") else "")
        print(f"{r['row']:>5} {r['family']:<7} {r['cell_type']:<4} {r['weight_code']:<12} {r['wbits']:>2} {r['abits']:>2} {r['hidden']:>5} {r['pe']:>4} {r['simd']:>4} "
              f"{r['planes']:<8} {r['weights']:<7} {r['logic_cells']:>8} {r['ff']:>7} {r['bram']:>6} {r['dsp']:>4} "
              f"{r['cycles_per_step']:>8} {r['us_per_step']:>9.2f}  {r['smallest_device'] or '-'}{extra}")
    errs = [r for r in rows if r.get("synth_error")]
    for r in errs:
        print(f"rtl_gen.sweep: row {r['row']}: {r['synth_error']}", file=sys.stderr)
    print(f"wrote {csv_path}" + "".join(f", {p}" for p in pngs) + f" in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
