"""How the labels move when the survey spectra's line-spread function is broader than the model's.

The GSN is trained at R = 1800 (Gaussian); LAMOST's resolution varies with fibre and wavelength.
This smooths the spectra of an ingested LAMOST cube by an extra Gaussian (in ln lambda) so that
the effective resolution becomes R_eff (R = 1800 assumed for the data as they are), fits them
with ``--sampler`` (default ``map``) and reports, per R_eff, the median label shift against the
unsmoothed fit and the bias against LASP (stars with LASP S/N_g > 30). A lower R_eff than the
model's makes lines shallower: the sign and size of the shift tell whether an LSF mismatch can
explain an offset (issue 15: the MILES model's [Fe/H] is ~0.1 dex below LASP on LAMOST spectra).

The direct test is the other way round (``--broaden-kms``): broaden the *model* (its output layer,
which is linear, so the broadened GSN is exact) by an extra Gaussian sigma in km/s and see whether
the spectra prefer it: median reduced chi2 at the MAP per broadening, and for each star the
broadening with the lowest chi2 (a profiled per-spectrum broadening parameter on a grid), with the
labels at that broadening against LASP. ``--set KEY=VALUE`` passes FitConfig settings.

    python benchmarks/lsf_sensitivity.py --cube lamost.zarr --r-eff 1800 1600 1400
    python benchmarks/lsf_sensitivity.py --cube lamost.zarr --r-eff 1800 --broaden-kms 0 20 35 50 65 80 \
        --set mask_sky=true --set arm_split_aa=5900 --set cheb_degree=4

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
from gsn_dask.emulator import GSN
from _common import fit_settings

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


def broadened(model: GSN, sigma_kms: float) -> GSN:
    """``model`` with its output convolved by a Gaussian of ``sigma_kms`` (km/s) in ln lambda: the
    output layer is linear, so convolving its weight rows and bias convolves every spectrum."""
    if sigma_kms <= 0:
        return model
    step = float(np.median(np.diff(np.log(model.wavelength))))
    sig = sigma_kms / 299792.458 / step  # pixels
    return GSN(hidden_layers=model.hidden_layers, W_out=gaussian_filter1d(model.W_out, sig, axis=1, mode="nearest"),
               b_out=gaussian_filter1d(model.b_out, sig, mode="nearest"), activation=model.activation,
               label_names=model.label_names, bounds=model.bounds, wavelength=model.wavelength,
               emulator_error=model.emulator_error, label_units=model.label_units,
               label_transforms=model.label_transforms, normalisation=model.normalisation, meta=model.meta)


def _vs_lasp(sub, names: list[str], med: np.ndarray, p16: np.ndarray, p84: np.ndarray, sel: np.ndarray) -> dict:
    """bias, 1.4826 MAD and LASP-inside-[p16, p84] per label on the stars ``sel``."""
    out = {}
    for j, lab in enumerate(names):
        ref = np.asarray(sub[f"label_{lab}"].values, float)[sel]
        d = med[sel, j] - ref
        out[lab] = {"bias_vs_lasp": float(np.nanmedian(d)),
                    "mad_std_vs_lasp": float(1.4826 * np.nanmedian(np.abs(d - np.nanmedian(d)))),
                    "in68": float(np.mean((ref >= p16[sel, j]) & (ref <= p84[sel, j])))}
    return out


def broaden_scan(sub, model: GSN, kms: list[float], settings: dict, sampler: str) -> dict:
    """Fit with the model broadened by each of ``kms``; chi2 and labels per broadening, and the
    per-star best broadening (lowest chi2_reduced at the MAP)."""
    hi = np.asarray(sub["snr"].values, float) > 30
    names = list(model.label_names)
    runs = [gd.fit(sub, broadened(model, k), sampler=sampler, config=settings, seed=0) for k in kms]
    chi = np.array([np.asarray(r["chi2_reduced"].values, float) for r in runs])
    stack = {v: np.array([np.asarray(r[v].values, float) for r in runs]) for v in ("median", "p16", "p84")}
    out: dict = {"broaden_kms": list(kms), "settings": settings, "runs": {}}
    for i, k in enumerate(kms):
        out["runs"][f"{k:g} km/s"] = {"chi2_median_all": float(np.median(chi[i])), "chi2_median_snrg30": float(np.median(chi[i][hi])),
                                      **_vs_lasp(sub, names, stack["median"][i], stack["p16"][i], stack["p84"][i], hi)}
    best = np.argmin(chi, axis=0)
    s = np.arange(best.size)
    out["per_star_best"] = {
        "count_all": {f"{k:g}": int(np.sum(best == i)) for i, k in enumerate(kms)},
        "count_snrg30": {f"{k:g}": int(np.sum(best[hi] == i)) for i, k in enumerate(kms)},
        "labels_at_best": _vs_lasp(sub, names, stack["median"][best, s], stack["p16"][best, s], stack["p84"][best, s], hi)}
    for name, row in out["runs"].items():
        print(f"model broadened {name:>9s}: chi2 {row['chi2_median_all']:.3f} (snrg>30 {row['chi2_median_snrg30']:.3f}) | "
              + " | ".join(f"{lab} {row[lab]['bias_vs_lasp']:+.3g}/{row[lab]['mad_std_vs_lasp']:.3g}" for lab in names), flush=True)
    print("per-star best broadening (all stars):", out["per_star_best"]["count_all"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cube", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--r-eff", type=float, nargs="+", default=[1800.0, 1600.0, 1400.0])
    ap.add_argument("--sampler", default="map")
    ap.add_argument("--broaden-kms", type=float, nargs="*", default=[],
                    help="also broaden the model by these Gaussian sigmas (km/s) and compare chi2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FitConfig setting (JSON value)")
    ap.add_argument("--save", type=Path, default=OUT)
    args = ap.parse_args(argv)
    settings = fit_settings(args.set)
    cube = gd.open_spectra(args.cube)
    sub = cube.isel(star=np.flatnonzero(np.isfinite(np.asarray(cube["label_teff"].values, float)))).load()
    hi = np.asarray(sub["snr"].values, float) > 30
    model = gd.load_model(args.model)
    names = list(model.label_names)
    base = None
    out: dict = {"n_stars": int(hi.sum()), "sampler": args.sampler, "r_data_assumed": R_DATA, "settings": settings,
                 "runs": {}}
    for r in sorted(args.r_eff, reverse=True):
        res = gd.fit(smooth(sub, r), model, sampler=args.sampler, config=settings, seed=0)
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
    if args.broaden_kms:
        out["model_broadening"] = broaden_scan(sub, model, args.broaden_kms, settings, args.sampler)
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
