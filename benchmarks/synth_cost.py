"""Cost of one synthetic spectrum (issue 18, step 2): line pruning, synthesis step, range.

For a few test stars, Turbospectrum spectra are made with the generator of
``gsn_dask.grid.synth`` and degraded, rebinned and normalised exactly as the training cube.
Measured per run: wall and CPU seconds of the Turbospectrum processes (``babsma_lu`` +
``bsyn_lu``; the CPU time is the honest figure on a shared machine), and the rms difference of
the normalised, degraded spectrum from a reference:

1. ``baseline``: all lines, step 0.05 A, 3700-7400 A (the issue's starting point);
2. ``prune``: lines weaker than ``delta`` dex below their species' strongest dropped
   (``linelists.prune``), step 0.05 A; rms against all lines at the same step;
3. ``step``: at the chosen ``delta``, steps 0.01 (reference) .. 0.05 A; rms against 0.01 A;
4. ``chosen``: the chosen setting over 3700-7400 A and 3700-9100 A.

Runs are cached in ``--work`` (spectra as .npz), so a rerun only computes what is missing.

    nice -n 10 python benchmarks/synth_cost.py [--work /work/cache/synth_bench] [--delta 4] [--step 0.03]

Writes benchmarks/results/synth_cost.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "synth_cost.json"
STARS = {
    "sun": {"teff": 5777.0, "logg": 4.44, "feh": 0.0, "alpha_fe": 0.0},
    "cool_dwarf": {"teff": 4100.0, "logg": 4.6, "feh": 0.2, "alpha_fe": 0.0},
    "k_giant": {"teff": 4300.0, "logg": 1.8, "feh": 0.3, "alpha_fe": 0.0},
    "metal_poor_giant": {"teff": 4800.0, "logg": 1.8, "feh": -1.5, "alpha_fe": 0.4},
    "hot_metal_poor": {"teff": 6800.0, "logg": 4.2, "feh": -2.0, "alpha_fe": 0.4},
}


def run_one(work: Path, star: str, wmax: float, step: float, delta: float | None) -> dict:
    """One synthesis (cached): timings, line counts and the normalised degraded spectrum."""
    from gsn_dask.grid.synth import cube, generator

    tag = f"{star}_{wmax:.0f}_{step:g}_{delta if delta is not None else 'all'}"
    path = work / f"{tag}.npz"
    meta = work / f"{tag}.json"
    if path.exists() and meta.exists():
        with np.load(path, allow_pickle=False) as f:
            return {**json.loads(meta.read_text()), "flux": f["flux"]}
    cfg = generator.SynthConfig(wmin=3700.0, wmax=wmax, step=step, prune_dex=delta)
    t0 = time.perf_counter()
    ctx = generator.Context.create(cfg)
    t_lists = time.perf_counter() - t0
    rec = generator.make_record(STARS[star], ctx)
    flux, _ = cube.normalise(ctx.wave_out, rec["raw"][None], cfg)
    n_lines = sum(sum(1 for ln in open(p) if not ln.startswith("'")) for seg in ctx.linelists for p in seg)
    info = {
        "star": star, "labels": STARS[star], "wmin": 3700.0, "wmax": wmax, "step": step, "delta_dex": delta,
        "n_lines": n_lines, "synth_wall_s": round(rec["synth_seconds"], 2),
        "synth_cpu_s": round(rec["synth_cpu_seconds"], 2), "linelist_prepare_s": round(t_lists, 2),
        "atmosphere": rec["atmosphere"],
    }
    np.savez(path, flux=flux[0])
    meta.write_text(json.dumps(info))
    print(json.dumps(info), flush=True)
    return {**info, "flux": flux[0]}


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "flux"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/cache/synth_bench"))
    ap.add_argument("--stars", nargs="+", default=["sun", "cool_dwarf", "k_giant", "hot_metal_poor"])
    ap.add_argument("--deltas", nargs="+", type=float, default=[5.0, 4.0, 3.0])
    ap.add_argument("--delta", type=float, default=None, help="chosen pruning threshold (dex)")
    ap.add_argument("--steps", nargs="+", type=float, default=[0.01, 0.02, 0.03, 0.05])
    ap.add_argument("--step-stars", nargs="+", default=["sun", "cool_dwarf", "hot_metal_poor"])
    ap.add_argument("--step", type=float, default=None, help="chosen synthesis step (A)")
    ap.add_argument("--phases", nargs="+", default=["baseline", "prune", "step", "chosen"])
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out.update({"machine": f"{platform.node()} {platform.processor() or platform.machine()}",
                "note": "cpu = user+sys seconds of babsma_lu+bsyn_lu; the machine was shared (wall times noisy)"})
    base = {s: run_one(args.work, s, 7400.0, 0.05, None) for s in args.stars} if "baseline" in args.phases else {}
    if base:
        out["baseline"] = [_strip(r) for r in base.values()]
    if "prune" in args.phases:
        rows = []
        for d in args.deltas:
            for s in args.stars:
                r = run_one(args.work, s, 7400.0, 0.05, d)
                rows.append({**_strip(r), "rms_vs_all_lines": rms(r["flux"], base[s]["flux"]),
                             "max_abs_vs_all_lines": float(np.max(np.abs(r["flux"] - base[s]["flux"])))})
        out["prune"] = rows
    if "step" in args.phases and args.delta is not None:
        rows = []
        for s in args.step_stars:
            ref = run_one(args.work, s, 7400.0, min(args.steps), args.delta)
            for st in sorted(args.steps):
                r = run_one(args.work, s, 7400.0, st, args.delta)
                rows.append({**_strip(r), "rms_vs_finest": rms(r["flux"], ref["flux"]),
                             "max_abs_vs_finest": float(np.max(np.abs(r["flux"] - ref["flux"])))})
        out["step"] = rows
    if "chosen" in args.phases and args.delta is not None and args.step is not None:
        out["chosen"] = {"delta_dex": args.delta, "step": args.step, "runs": [
            _strip(run_one(args.work, s, wmax, args.step, args.delta)) for wmax in (7400.0, 9100.0) for s in args.stars]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
