"""The ``map`` quick look against the ``emcee`` posterior on real LAMOST spectra, side by side.

Fits every star of an ingested LAMOST cube with both samplers in this one process (one core, same
model, same seed) and reports: CPU seconds per star of each; the fraction of stars (fitted by both)
whose map median lies within half the emcee 68% half-width, per label; the median ratio of the
interval widths (map / emcee), statistical only (``label_systematics`` off for both: the
systematics would add the same sigma to both in quadrature and pull the ratio towards 1).

    gsn-dask ingest ../shared/data/lamost --recursive --out lamost.zarr
    python benchmarks/map_vs_emcee.py --cube lamost.zarr [--model DIR] [--stars N]

Saves ``benchmarks/results/map_vs_emcee.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import gsn_dask as gd

OUT = Path(__file__).resolve().parent / "results" / "map_vs_emcee.json"


def _timed_fit(cube, model, sampler: str):
    c0, t0 = time.process_time(), time.perf_counter()
    res = gd.fit(cube, model, sampler=sampler, seed=0, config={"label_systematics": False})
    return res, time.process_time() - c0, time.perf_counter() - t0


def compare(cube_path: Path, model_dir: Path | None, n_stars: int | None) -> dict:
    cube = gd.open_spectra(cube_path)
    if n_stars:
        cube = cube.isel(star=slice(0, n_stars))
    cube = cube.load()
    model = gd.load_model(model_dir)
    gd.fit(cube.isel(star=slice(0, 2)), model, sampler="map")  # warm caches (coarse set) for both
    quick, cpu_map, wall_map = _timed_fit(cube, model, "map")
    full, cpu_emcee, wall_emcee = _timed_fit(cube, model, "emcee")
    n = cube.sizes["star"]
    both = np.array([str(a) == "ok" and str(b) == "ok" for a, b in zip(quick["status"].values, full["status"].values)])
    half = 0.5 * (full["p84"].values - full["p16"].values)[both]
    within = np.abs(quick["median"].values - full["median"].values)[both] < 0.5 * half
    width = (quick["p84"].values - quick["p16"].values)[both] / (2 * half)
    labels = [str(s) for s in quick["label"].values]
    out = {
        "n_stars": n, "n_both_ok": int(both.sum()),
        "cpu_s_per_star": {"map": cpu_map / n, "emcee": cpu_emcee / n},
        "wall_s": {"map": wall_map, "emcee": wall_emcee},
        "cost_ratio_emcee_over_map": cpu_emcee / cpu_map,
        "median_within_half_emcee_halfwidth": dict(zip(labels, within.mean(axis=0).round(4).tolist())),
        "median_width_ratio_map_over_emcee": dict(zip(labels, np.median(width, axis=0).round(4).tolist())),
        "machine": platform.processor() or platform.machine(),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cube", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: the shipped model)")
    ap.add_argument("--stars", type=int, default=None, help="only the first N stars")
    ap.add_argument("--save", type=Path, default=OUT)
    args = ap.parse_args(argv)
    r = compare(args.cube, args.model, args.stars)
    r["model"] = str(args.model or "shipped")
    print(json.dumps(r, indent=1))
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
