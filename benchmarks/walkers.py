"""Sampler lengths on real LAMOST spectra, side by side: few walkers and long chains against many
walkers and short chains, at the same (or higher) effective sample size.

The cost of an emcee step here is one emulator call for all walkers (vectorised), dominated by
reading the output layer, so it barely grows with the number of walkers, while the number of
steps sets the number of calls. This script fits the stars of an ingested cube with each setting
in this one process (one core, BLAS on one thread, same model) and reports per setting: CPU
seconds per star, median integrated autocorrelation time (steps), median and 5th percentile of
the smallest effective sample size, the converged fraction, and how far its medians and 68%
widths sit from the reference setting's (in units of the reference's half-width), beside the same
numbers for the reference run again with another seed: that is the Monte Carlo noise, so a
setting whose differences are of that size gives the same posteriors. Statistical intervals only
(``label_systematics`` and the Kiel prior off: both would move every setting alike).

    gsn-dask ingest ../shared/data/lamost --recursive --out lamost.zarr
    python benchmarks/walkers.py --cube lamost.zarr [--model DIR] [--stars N]
    python benchmarks/walkers.py --cube lamost.zarr --sampler batched --save benchmarks/results/walkers_batched.json

Saves ``benchmarks/results/walkers.json``.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "walkers.json"
RAW = {"label_systematics": False, "label_prior": "none"}
#: name -> (FitConfig overrides, seed); "reference" is what the others are compared with.
SETTINGS: dict[str, tuple[dict, int]] = {
    "reference: 10 walkers, 30 burn, >= 120 steps, 50 tau": (
        {"n_walkers": 10, "n_burn": 30, "n_steps": 120, "tau_factor": 50.0}, 0),
    "reference, seed 1 (Monte Carlo noise)": (
        {"n_walkers": 10, "n_burn": 30, "n_steps": 120, "tau_factor": 50.0}, 1),
    "32 walkers, 20 burn, >= 40 steps, 20 tau": (
        {"n_walkers": 32, "n_burn": 20, "n_steps": 40, "tau_factor": 20.0}, 0),
    "24 walkers, 20 burn, >= 40 steps, 20 tau": (
        {"n_walkers": 24, "n_burn": 20, "n_steps": 40, "tau_factor": 20.0}, 0),
    "48 walkers, 20 burn, >= 30 steps, 20 tau": (
        {"n_walkers": 48, "n_burn": 20, "n_steps": 30, "tau_factor": 20.0}, 0),
}


def run_setting(cube, model, overrides: dict, seed: int, sampler: str = "emcee") -> tuple[object, float]:
    """Fit ``cube`` with ``overrides`` on top of :data:`RAW`; (results, CPU s per star)."""
    import gsn_dask as gd

    c0 = time.process_time()
    res = gd.fit(cube, model, sampler=sampler, seed=seed, config={**RAW, **overrides})
    return res, (time.process_time() - c0) / cube.sizes["star"]


def against(res, ref) -> dict:
    """Per label: median |shift of the median| and the median width ratio, in units of the
    reference's 68% half-width, over the stars both fitted."""
    out = {}
    for i, lab in enumerate(ref["label"].values.tolist()):
        half = 0.5 * (ref["p84"][:, i] - ref["p16"][:, i]).values
        shift = np.abs((res["median"][:, i] - ref["median"][:, i]).values) / half
        width = 0.5 * (res["p84"][:, i] - res["p16"][:, i]).values / half
        ok = np.isfinite(shift) & np.isfinite(width)
        out[str(lab)] = {"median_abs_shift": round(float(np.median(shift[ok])), 4),
                         "p95_abs_shift": round(float(np.percentile(shift[ok], 95)), 4),
                         "median_width_ratio": round(float(np.median(width[ok])), 4)}
    return out


def summary(res, cpu: float, over: dict) -> dict:
    """Cost and chain diagnostics of one setting (production steps = n_eff_min tau_max / walkers)."""
    fitted = np.isfinite(res["tau_max"].values) & np.isfinite(res["n_eff_min"].values)
    tau, neff = (res[k].values[fitted].astype(np.float64) for k in ("tau_max", "n_eff_min"))
    nst = np.rint(neff * tau / over["n_walkers"])
    tau_factor = over["tau_factor"]
    return {"cpu_s_per_star": round(cpu, 4), "n_fitted": int(fitted.sum()),
            "tau_median": round(float(np.median(tau)), 3),
            "n_eff_min_median": round(float(np.median(neff)), 1),
            "n_eff_min_p5": round(float(np.percentile(neff, 5)), 1),
            "production_steps_median": float(np.median(nst)),
            "converged_fraction": round(float(np.mean(nst >= tau_factor * tau)), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cube", type=Path, required=True, help="an ingested spectra cube (e.g. LAMOST)")
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: the shipped model)")
    ap.add_argument("--stars", type=int, default=None, help="only the first N stars")
    ap.add_argument("--sampler", choices=("emcee", "batched"), default="emcee",
                    help="batched: the torch sampler on this machine's default device, one thread")
    ap.add_argument("--save", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.sampler == "batched":
        import torch

        torch.set_num_threads(1)

    import gsn_dask as gd

    cube = gd.open_spectra(args.cube)
    if args.stars:
        cube = cube.isel(star=slice(0, args.stars))
    cube = cube.load()
    model = gd.load_model(args.model) if args.model else gd.load_model()
    gd.fit(cube.isel(star=[0]), model, sampler=args.sampler, seed=0, config=RAW)  # warm caches
    runs, rows = {}, {}
    for name, (over, seed) in SETTINGS.items():
        res, cpu = run_setting(cube, model, over, seed, args.sampler)
        runs[name] = res
        rows[name] = {"config": over, "seed": seed, **summary(res, cpu, over)}
        print(f"{name:55s} {cpu:.3f} CPU s/star  tau {rows[name]['tau_median']:.2f}  "
              f"n_eff med {rows[name]['n_eff_min_median']:.0f} (p5 {rows[name]['n_eff_min_p5']:.0f})  "
              f"converged {rows[name]['converged_fraction']:.1%}", flush=True)
    ref_name = next(iter(SETTINGS))
    for name in SETTINGS:
        if name != ref_name:
            rows[name]["against_reference"] = against(runs[name], runs[ref_name])
            print(f"{name:55s} vs reference: " + ", ".join(
                f"{lab} shift {v['median_abs_shift']:.3f} (p95 {v['p95_abs_shift']:.3f}) width {v['median_width_ratio']:.3f}"
                for lab, v in rows[name]["against_reference"].items()))
    ref_cpu = rows[ref_name]["cpu_s_per_star"]
    for name in SETTINGS:
        rows[name]["cpu_ratio_to_reference"] = round(rows[name]["cpu_s_per_star"] / ref_cpu, 3)
    out = {"sampler": args.sampler, "cube": str(args.cube), "model": str(args.model or "shipped"), "model_id": model.model_id,
           "n_star": int(cube.sizes["star"]), "machine": platform.processor() or platform.machine(),
           "python": sys.version.split()[0], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "settings": rows}
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(out, indent=1))
    print(f"saved {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
