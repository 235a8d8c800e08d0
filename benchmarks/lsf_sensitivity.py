"""How the labels move when the survey spectra's line-spread function is broader than the model's.

The GSN is trained at R = 1800 (Gaussian); LAMOST's resolution varies with fibre and wavelength.
This smooths the spectra of an ingested LAMOST cube by an extra Gaussian (in ln lambda) so that
the effective resolution becomes R_eff (R = 1800 assumed for the data as they are), fits them
with ``--sampler`` (default ``map``) and reports, per R_eff, the median label shift against the
unsmoothed fit and the bias against LASP (stars with LASP S/N_g > 30). A lower R_eff than the
model's makes lines shallower: the sign and size of the shift tell whether an LSF mismatch can
explain an offset (issue 15: the MILES model's [Fe/H] is ~0.1 dex below LASP on LAMOST spectra).

    python benchmarks/lsf_sensitivity.py --cube lamost.zarr --r-eff 1800 1600 1400

Saves ``benchmarks/results/lsf_sensitivity.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

import gsn_dask as gd

OUT = Path(__file__).resolve().parent / "results" / "lsf_sensitivity.json"
R_DATA = 1800.0


def smooth(cube, r_eff: float):
    """A copy of ``cube`` whose flux is convolved to resolution ``r_eff`` (from ``R_DATA``)."""
    if r_eff >= R_DATA:
        return cube
    lnw = np.log(np.asarray(cube["wavelength"].values, float))
    step = float(np.median(np.diff(lnw)))
    sig = np.sqrt((1 / (2.3548 * r_eff)) ** 2 - (1 / (2.3548 * R_DATA)) ** 2) / step  # pixels
    flux = np.asarray(cube["flux"].values, float)
    good = np.isfinite(flux) & (np.asarray(cube["ivar"].values) > 0)
    filled = np.where(good, flux, 0.0)
    w = gaussian_filter1d(good.astype(float), sig, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(good, gaussian_filter1d(filled, sig, axis=1) / w, np.nan)
    return cube.copy(data={**{k: v.values for k, v in cube.data_vars.items()}, "flux": out.astype(np.float32)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cube", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--r-eff", type=float, nargs="+", default=[1800.0, 1600.0, 1400.0])
    ap.add_argument("--sampler", default="map")
    ap.add_argument("--save", type=Path, default=OUT)
    args = ap.parse_args(argv)
    cube = gd.open_spectra(args.cube)
    sub = cube.isel(star=np.flatnonzero(np.isfinite(np.asarray(cube["label_teff"].values, float)))).load()
    hi = np.asarray(sub["snr"].values, float) > 30
    model = gd.load_model(args.model)
    names = list(model.label_names)
    base = None
    out: dict = {"n_stars": int(hi.sum()), "sampler": args.sampler, "r_data_assumed": R_DATA, "runs": {}}
    for r in sorted(args.r_eff, reverse=True):
        res = gd.fit(smooth(sub, r), model, sampler=args.sampler, seed=0)
        med = np.asarray(res["median"].values, float)
        base = med if base is None else base
        row = {}
        for j, lab in enumerate(names):
            d_lasp = med[hi, j] - np.asarray(sub[f"label_{lab}"].values, float)[hi]
            row[lab] = {"shift_vs_unsmoothed": float(np.median(med[hi, j] - base[hi, j])),
                        "bias_vs_lasp": float(np.nanmedian(d_lasp)),
                        "mad_std_vs_lasp": float(1.4826 * np.nanmedian(np.abs(d_lasp - np.nanmedian(d_lasp))))}
        out["runs"][f"R={r:g}"] = row
        print(f"R_eff {r:6.0f}: " + " | ".join(
            f"{lab}: shift {v['shift_vs_unsmoothed']:+.3g}, vs LASP {v['bias_vs_lasp']:+.3g} / {v['mad_std_vs_lasp']:.3g}"
            for lab, v in row.items()), flush=True)
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
