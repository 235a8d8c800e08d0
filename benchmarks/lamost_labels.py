"""Labels on real LAMOST spectra against the survey catalogue (LASP): the issue-15 measurement.

Fits the stars of an ingested LAMOST cube that have reference labels (``label_*``: the LASP
values of the strict matches), in one process with the public API, and reports per label the
median bias, the scatter (1.4826 MAD), the fraction of LASP values inside [p16, p84] and the robust
std of z = (ours - LASP) / half-width, for LASP S/N_g > 30 (also without the A stars, LASP Teff
>= 7000 K, where MILES' and LASP's Teff scales part by several hundred K) and for all matched stars; plus CPU
seconds per star. Each run is stored under ``--tag`` in the JSON file (other tags are kept), so
levers can be compared side by side:

    gsn-dask ingest ../shared/data/lamost --recursive --labels ../shared/data/lamost/dr1_labels_lasp.csv --out lamost.zarr
    python benchmarks/lamost_labels.py --cube lamost.zarr --model MODEL --tag baseline
    python benchmarks/lamost_labels.py --cube lamost.zarr --model MODEL --tag cheb6 --set cheb_degree=6
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import gsn_dask as gd

OUT = Path(__file__).resolve().parent / "results" / "lamost_labels.json"


def _stats(ours: np.ndarray, ref: np.ndarray, p16: np.ndarray, p84: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(ours) & np.isfinite(ref)
    d = ours[ok] - ref[ok]
    half = 0.5 * (p84[ok] - p16[ok])
    inside = (ref[ok] >= p16[ok]) & (ref[ok] <= p84[ok])
    z = d / np.where(half > 0, half, np.nan)
    mad = lambda x: float(1.4826 * np.nanmedian(np.abs(x - np.nanmedian(x))))  # noqa: E731
    return {"n": int(ok.sum()), "bias": float(np.median(d)), "mad_std": mad(d), "in68": float(inside.mean()),
            "z_rstd": mad(z), "half_width_median": float(np.median(half))}


def measure(cube_path: Path, model_dir: Path, settings: dict, sampler: str, seed: int) -> dict:
    cube = gd.open_spectra(cube_path)
    has = np.isfinite(np.asarray(cube["label_teff"].values))
    sub = cube.isel(star=np.flatnonzero(has)).load()
    model = gd.load_model(model_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    res = gd.fit(sub, model, sampler=sampler, config=settings, seed=seed)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    snr = np.asarray(sub["snr"].values, float)
    out: dict = {"n_stars": int(sub.sizes["star"]), "cpu_s_per_star": cpu / sub.sizes["star"],
                 "wall_s": wall, "n_ok": int(sum(str(s) == "ok" for s in res["status"].values)), "sets": {}}
    teff = np.asarray(sub["label_teff"].values, float)
    for name, sel in (("snrg>30", snr > 30), ("snrg>30, LASP Teff < 7000 K", (snr > 30) & (teff < 7000)),
                      ("all", np.ones_like(snr, bool))):
        row = {}
        for j, lab in enumerate(model.label_names):
            row[lab] = _stats(res["median"].values[sel, j], sub[f"label_{lab}"].values[sel],
                              res["p16"].values[sel, j], res["p84"].values[sel, j])
        out["sets"][name] = row
    return out


def _print(tag: str, r: dict) -> None:
    print(f"[{tag}] {r['n_stars']} stars, {r['n_ok']} ok, {r['cpu_s_per_star']:.3f} CPU s/star")
    for name, row in r["sets"].items():
        cells = [f"{lab}: {s['bias']:+.3g} / {s['mad_std']:.3g} / in68 {100 * s['in68']:.0f}% / z {s['z_rstd']:.2f}"
                 for lab, s in row.items()]
        print(f"  {name} (N={next(iter(row.values()))['n']}): " + " | ".join(cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cube", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: the shipped model)")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FitConfig setting (JSON value)")
    ap.add_argument("--sampler", default="emcee")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, default=OUT)
    args = ap.parse_args(argv)
    settings = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            settings[k] = json.loads(v)
        except json.JSONDecodeError:
            settings[k] = v
    r = measure(args.cube, args.model, settings, args.sampler, args.seed)
    r.update(settings=settings, sampler=args.sampler, model=str(args.model or "shipped"), seed=args.seed)
    _print(args.tag, r)
    allr = json.loads(args.save.read_text()) if args.save.exists() else {}
    allr[args.tag] = r
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(allr, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
