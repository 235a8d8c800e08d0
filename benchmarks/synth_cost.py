"""Cost and accuracy of one synthetic spectrum (issue 18, step 2).

Test stars are synthesised with the generator of ``gsn_dask.grid.synth`` under different
settings, then degraded, rebinned and normalised exactly as the training cube. Per run: wall
and CPU seconds of the Turbospectrum processes (``babsma_lu`` + ``bsyn_lu``; CPU time is the
honest figure on a shared machine, wall time is not), and the difference of the normalised,
degraded spectrum from a reference run (rms and max over the cube pixels, and per region):

1. ``baseline``: all lines, one run at 0.05 A, the 72-layer Kurucz decks, 3700-7400 A;
2. ``prune``: ``linelists.prune`` at ``delta`` dex, against all lines at the same step;
3. ``step``: uniform steps, the split run (``blue_step`` below ``blue_until``) and the number
   of atmosphere layers, against a 0.01 A reference with 48 layers (and 48 against 72 layers);
4. ``chosen``: the shipped settings (``runner.DEFAULT_CONFIG``) over 3700-7400 A and 3700-9100 A.

Runs are cached in ``--work`` (spectra as .npz), so a rerun only computes what is missing.

    nice -n 10 python benchmarks/synth_cost.py [--work /work/cache/synth_bench] [--phases ...]

Writes benchmarks/results/synth_cost.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "synth_cost.json"
STARS = {
    "sun": {"teff": 5777.0, "logg": 4.44, "feh": 0.0, "alpha_fe": 0.0},
    "cool_dwarf": {"teff": 4100.0, "logg": 4.6, "feh": 0.2, "alpha_fe": 0.0},
    "k_giant": {"teff": 4300.0, "logg": 1.8, "feh": 0.3, "alpha_fe": 0.0},
    "hot_metal_poor": {"teff": 6800.0, "logg": 4.2, "feh": -2.0, "alpha_fe": 0.4},
}
BASE = {"wmin": 3700.0, "wmax": 7400.0, "step": 0.05, "n_depth": 72}
REGIONS = ((3700, 4000), (4000, 4500), (4500, 5500), (5500, 6500), (6500, 9100))


def run_one(work: Path, star: str, settings: dict) -> dict:
    """One synthesis (cached by star and settings): timings, line count, normalised spectrum."""
    from gsn_dask.grid.synth import cube, generator

    cfg = generator.SynthConfig(**{**BASE, **settings})
    tag = star + "-" + hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    path, meta = work / f"{tag}.npz", work / f"{tag}.json"
    if path.exists() and meta.exists():
        with np.load(path, allow_pickle=False) as f:
            return {**json.loads(meta.read_text()), "flux": f["flux"], "raw": f["raw"]}
    ctx = generator.Context.create(cfg)
    rec = generator.make_record(STARS[star], ctx)
    flux, _ = cube.normalise(ctx.wave_out, rec["raw"][None], cfg)
    n_lines = sum(sum(1 for ln in open(p) if not ln.startswith("'")) for seg in ctx.linelists for p in seg)
    info = {"star": star, "labels": STARS[star], "settings": {k: v for k, v in cfg.to_dict().items()
            if k in ("wmin", "wmax", "step", "blue_step", "blue_until", "prune_dex", "n_depth")},
            "n_lines": n_lines, "synth_wall_s": round(rec["synth_seconds"], 2),
            "synth_cpu_s": round(rec["synth_cpu_seconds"], 2), "atmosphere": rec["atmosphere"]}
    np.savez(path, flux=flux[0], raw=rec["raw"])
    meta.write_text(json.dumps(info))
    print(json.dumps(info), flush=True)
    return {**info, "flux": flux[0], "raw": rec["raw"]}


def compare(r: dict, ref: dict) -> dict:
    """rms / max of the normalised difference, per region, and the rms relative raw difference."""
    from gsn_dask.grid.synth.generator import SynthConfig

    wave = SynthConfig(**{**BASE, **r["settings"]}).grid()
    d = r["flux"] - ref["flux"]
    out = {"rms": float(np.sqrt(np.mean(d**2))), "max_abs": float(np.max(np.abs(d))),
           "rel_raw_rms": float(np.sqrt(np.mean((r["raw"] / ref["raw"] - 1) ** 2)))}
    out["rms_by_region"] = {f"{lo}-{hi}": round(float(np.sqrt(np.mean(d[(wave >= lo) & (wave < hi)] ** 2))), 6)
                            for lo, hi in REGIONS if np.any((wave >= lo) & (wave < hi))}
    return out


def _row(r: dict, **extra) -> dict:
    return {**{k: v for k, v in r.items() if k not in ("flux", "raw")}, **extra}


def _summary(out: dict) -> dict:
    """The before/after numbers in a few lines (from the phases present)."""
    summ: dict = {}
    if out.get("baseline"):
        summ["before_cpu_s_3700_7400"] = {r["star"]: r["synth_cpu_s"] for r in out["baseline"]}
    if out.get("chosen"):
        runs = out["chosen"]["runs"]
        for wmax in (7400.0, 9100.0):
            summ[f"after_cpu_s_3700_{wmax:.0f}"] = {r["star"]: r["synth_cpu_s"] for r in runs
                                                  if r["settings"]["wmax"] == wmax}
    if out.get("step"):
        summ["error_vs_0.01A_reference"] = {
            f"step {r['settings']['step']}" + (f", blue {r['settings']['blue_step']}" if r["settings"]["blue_step"] else "")
            + f", {r['settings']['n_depth']} layers": {"normalised_rms": round(r["vs_reference"]["rms"], 5),
                                                       "raw_relative_rms": round(r["vs_reference"]["rel_raw_rms"], 5)}
            for r in out["step"]["runs"]}
    if out.get("prune"):
        summ["pruning_error"] = {f"{r['star']} delta {r['settings']['prune_dex']}": round(r["vs_all_lines"]["rms"], 4)
                                 for r in out["prune"]}
    return summ


def main() -> None:
    from gsn_dask.grid.synth.runner import DEFAULT_CONFIG

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/cache/synth_bench"))
    ap.add_argument("--phases", nargs="+", default=["baseline", "prune", "step", "chosen"])
    ap.add_argument("--stars", nargs="+", default=["sun", "cool_dwarf"])
    ap.add_argument("--chosen-stars", nargs="+", default=list(STARS))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out["machine"] = f"{platform.node()} {platform.processor() or platform.machine()}, 2 cores shared with other jobs"
    out["note"] = "cpu = user+sys s of babsma_lu + bsyn_lu (wall times are inflated by other jobs on the machine)"
    base = {s: run_one(args.work, s, {}) for s in args.stars}
    if "baseline" in args.phases:
        out["baseline"] = [_row(r) for r in base.values()]
    if "prune" in args.phases:
        out["prune"] = [_row(r, vs_all_lines=compare(r, base[s])) for d in (4.0, 3.0) for s in args.stars
                        for r in [run_one(args.work, s, {"prune_dex": d})]]
    if "step" in args.phases:
        ref = run_one(args.work, "sun", {"step": 0.01, "n_depth": 48})
        variants = [{"step": 0.05, "n_depth": 48}, {"step": 0.04, "n_depth": 48}, {"step": 0.03, "n_depth": 48},
                    {"step": 0.02, "n_depth": 48},
                    {"step": 0.05, "blue_step": 0.02, "n_depth": 48}, {"step": 0.05, "blue_step": 0.02, "n_depth": 32}]
        out["step"] = {"reference": _row(ref), "runs": [_row(r, vs_reference=compare(r, ref)) for v in variants
                                                         for r in [run_one(args.work, "sun", v)]]}
        out["layers_48_vs_72"] = compare(run_one(args.work, "sun", {"n_depth": 48}), base["sun"]) if "sun" in base else None
    if "chosen" in args.phases:
        chosen = {k: v for k, v in DEFAULT_CONFIG.to_dict().items() if k in ("step", "blue_step", "blue_until", "n_depth")}
        out["chosen"] = {"settings": chosen, "runs": [_row(run_one(args.work, s, {**chosen, "wmax": wmax}))
                                                      for wmax in (7400.0, 9100.0) for s in args.chosen_stars]}
    out["summary"] = _summary(out)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
