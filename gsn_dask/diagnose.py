"""Where survey spectra disagree with the model: stacked residual spectra (``gsn-dask diagnose``).

For every fitted star (status ``ok``) the observed spectrum, normalised with the model's recipe as
in the fit, is compared with the best-fit model at the MAP labels and the posterior rv
(continuum-corrected exactly as in the likelihood): residual = (data - model) / model, in the
observed frame and shifted to the rest frame. Residuals are stacked (weighted median per pixel)
by spectral class in the (Teff, log g) plane, so a mismatch shared by many stars stands out over
the noise: a feature fixed in the observed frame (arm join, sky, telluric bands, flux
calibration) sharpens in the observed stack, a stellar one (line strengths, line-spread function)
in the rest-frame stack. A table gives the rms of each stack in named windows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .fit.config import FitConfig
from .fit.posterior import SpectrumPosterior, log10_step, rv_to_pixels
from .grid.prepare import continuum_normalise

#: spectral classes: name -> (teff lo, teff hi) K, (logg lo, logg hi) dex
CLASSES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "K/M dwarfs (<4500 K)": ((0, 4500), (3.8, 9)),
    "K dwarfs (4500-5300 K)": ((4500, 5300), (3.8, 9)),
    "G dwarfs (5300-6000 K)": ((5300, 6000), (3.8, 9)),
    "F dwarfs (6000-7000 K)": ((6000, 7000), (3.8, 9)),
    "hot stars (>7000 K)": ((7000, 1e5), (-9, 9)),
    "subgiants (3.0-3.8)": ((0, 7000), (3.0, 3.8)),
    "giants (<3.0)": ((0, 7000), (-9, 3.0)),
}

#: wavelength windows (vacuum A) summarised in the table
WINDOWS: dict[str, tuple[float, float]] = {
    "blue 3700-4500": (3700, 4500),
    "4500-5700": (4500, 5700),
    "arm join 5700-6000": (5700, 6000),
    "red 6000-7400": (6000, 7400),
    "Mg b 5150-5200": (5150, 5200),
    "Na D 5888-5900": (5888, 5900),
    "H alpha 6555-6575": (6555, 6575),
    "telluric 6860-6960": (6860, 6960),
    "telluric 7150-7350": (7150, 7350),
}


@dataclass
class Residuals:
    """Per-star residuals (star, wavelength) on the model grid; NaN where unused or masked."""

    wavelength: np.ndarray
    observed: np.ndarray
    rest: np.ndarray
    teff: np.ndarray
    logg: np.ndarray
    star: list[str]


def _shift_to_rest(resid: np.ndarray, rv: float, step: float) -> np.ndarray:
    """Observed-frame residual -> rest frame (linear interpolation on the log grid)."""
    pix = np.arange(resid.size, dtype=np.float64)
    good = np.isfinite(resid)
    if good.sum() < 2:
        return np.full_like(resid, np.nan)
    src = pix + rv_to_pixels(rv, step)
    out = np.interp(src, pix, np.where(good, resid, 0.0), left=np.nan, right=np.nan)
    near_bad = np.interp(src, pix, (~good).astype(float), left=1.0, right=1.0) > 0
    return np.where(near_bad, np.nan, out)


def best_fit(cube: xr.Dataset, results: xr.Dataset, model: Any, config: FitConfig | None = None) -> xr.Dataset:
    """Every ``ok`` star of ``results`` on the model grid: the spectrum normalised with the
    model's recipe as in the fit (``flux``, ``ivar``), the best-fit model at the MAP labels and the
    posterior rv with the likelihood's continuum correction (``model_flux``, NaN on unused edge
    pixels) and ``used`` (pixels the likelihood used). ``config``: the fit's (default: the
    results' ``fit_config`` attr)."""
    config = (config or FitConfig.from_dict(results.attrs.get("fit_config", "{}"))).for_cube(cube.attrs)
    ok = np.array([str(s) == "ok" for s in np.asarray(results["status"].values)])
    stars = [str(s) for s in np.asarray(results["star"].values)[ok]]
    if not stars:
        raise ValueError("no fitted star (status 'ok') in the results")
    sub = cube.sel(star=stars)
    sl = model.pixel_slice(np.asarray(sub["wavelength"].values, dtype=np.float64))
    flux = np.asarray(sub["flux"].values[:, sl], dtype=np.float64)
    ivar = np.asarray(sub["ivar"].values[:, sl], dtype=np.float64)
    if not bool(cube.attrs.get("normalised", False)):
        flux, ivar = continuum_normalise(model.wavelength, flux, ivar, model.normalisation)
    res = results.sel(star=stars)
    theta = np.column_stack([np.asarray(res["map"].values, dtype=np.float64), np.asarray(res["rv"].values, dtype=np.float64)])
    best = np.full(flux.shape, np.nan)
    used = np.zeros(flux.shape, bool)
    for i in range(len(stars)):
        post = SpectrumPosterior(model, flux[i], ivar[i], config)
        best[i] = post.model_flux(theta[i])
        used[i, post.lo:post.hi] = post.good
    dims = ("star", "wavelength")
    return xr.Dataset({"flux": (dims, flux), "ivar": (dims, ivar), "model_flux": (dims, best), "used": (dims, used),
                       "rv": ("star", theta[:, -1], {"units": "km/s"})},
                      coords={"star": stars, "wavelength": ("wavelength", np.asarray(model.wavelength, float),
                                                            {"units": "Angstrom", "medium": "vacuum"}),
                              "label": list(model.label_names)},
                      attrs={"description": "normalised spectra and their best-fit GSN models"})


def residual_spectra(cube: xr.Dataset, results: xr.Dataset, model: Any, config: FitConfig | None = None,
                     fits: xr.Dataset | None = None) -> Residuals:
    """Residuals of every ``ok`` star of ``results`` against its spectrum in ``cube`` (``fits``: their
    :func:`best_fit`, when already computed)."""
    fits = best_fit(cube, results, model, config) if fits is None else fits
    flux, best, used = fits["flux"].values, fits["model_flux"].values, fits["used"].values
    with np.errstate(invalid="ignore", divide="ignore"):
        obs = np.where(used & (best > 0), flux / np.where(best > 0, best, 1.0) - 1.0, np.nan)
    step = log10_step(model.wavelength)
    rv = fits["rv"].values
    rest = np.stack([_shift_to_rest(obs[i], rv[i], step) for i in range(obs.shape[0])])
    res = results.sel(star=fits["star"].values)
    names = list(model.label_names)
    return Residuals(np.asarray(model.wavelength, float), obs, rest, res["map"].values[:, names.index("teff")],
                     res["map"].values[:, names.index("logg")], [str(s) for s in fits["star"].values])


def stack(resid: Residuals, classes: dict[str, Any] = CLASSES, min_stars: int = 3) -> xr.Dataset:
    """Median residual per pixel and class (observed and rest frame), with the star counts."""
    rows, n_star = [], []
    obs, rest = [], []
    for name, ((t0, t1), (g0, g1)) in classes.items():
        sel = (resid.teff >= t0) & (resid.teff < t1) & (resid.logg >= g0) & (resid.logg < g1)
        if sel.sum() < min_stars:
            continue
        rows.append(name)
        n_star.append(int(sel.sum()))
        with np.errstate(all="ignore"), _quiet_nan_warnings():
            obs.append(np.nanmedian(resid.observed[sel], axis=0))
            rest.append(np.nanmedian(resid.rest[sel], axis=0))
    rows.append("all")
    n_star.append(len(resid.star))
    with _quiet_nan_warnings():
        obs.append(np.nanmedian(resid.observed, axis=0))
        rest.append(np.nanmedian(resid.rest, axis=0))
    return xr.Dataset(
        {"observed": (("class", "wavelength"), np.array(obs), {"long_name": "median (data - model) / model, observed frame"}),
         "rest": (("class", "wavelength"), np.array(rest), {"long_name": "median (data - model) / model, rest frame"}),
         "n_star": ("class", np.array(n_star))},
        coords={"class": rows, "wavelength": ("wavelength", resid.wavelength, {"units": "Angstrom", "medium": "vacuum"})},
        attrs={"description": __doc__.splitlines()[0]},
    )


class _quiet_nan_warnings:
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def window_table(stacked: xr.Dataset, windows: dict[str, tuple[float, float]] = WINDOWS) -> pd.DataFrame:
    """rms (percent) of each class's stacked residual in each window, observed and rest frame."""
    wave = stacked["wavelength"].values
    out = []
    for cls in stacked["class"].values:
        row: dict[str, Any] = {"class": str(cls), "n_star": int(stacked["n_star"].sel({"class": cls}))}
        for frame in ("observed", "rest"):
            r = stacked[frame].sel({"class": cls}).values
            for w, (a, b) in windows.items():
                m = (wave >= a) & (wave < b) & np.isfinite(r)
                row[f"{frame}: {w}"] = float(100 * np.sqrt(np.mean(r[m] ** 2))) if m.any() else np.nan
        out.append(row)
    return pd.DataFrame(out)


def plot_stacks(stacked: xr.Dataset, path: Path, frame: str) -> Path:
    """One panel per class of the stacked residual (percent) in ``frame``, windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(stacked["class"].values)
    fig, axes = plt.subplots(len(classes), 1, figsize=(11, 1.6 * len(classes) + 0.8), sharex=True, squeeze=False)
    wave = stacked["wavelength"].values
    for ax, cls in zip(axes[:, 0], classes):
        ax.plot(wave, 100 * stacked[frame].sel({"class": cls}).values, lw=0.6, color="k")
        ax.axhline(0, color="0.6", lw=0.5)
        for a, b in (WINDOWS["arm join 5700-6000"], WINDOWS["telluric 6860-6960"], WINDOWS["telluric 7150-7350"]):
            ax.axvspan(a, b, color="tab:orange", alpha=0.12, lw=0)
        ax.set_ylim(-6, 6)
        ax.text(0.005, 0.85, f"{cls}  (N={int(stacked['n_star'].sel({'class': cls}))})", transform=ax.transAxes, fontsize=8)
        ax.set_ylabel("%", fontsize=8)
    axes[-1, 0].set_xlabel(f"vacuum wavelength [A] ({frame} frame)")
    fig.suptitle(f"stacked (data - model) / model, {frame} frame; shaded: arm join, telluric bands", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def diagnose(cube: xr.Dataset, results: xr.Dataset, model: Any, out_dir: str | Path,
             fits: xr.Dataset | None = None) -> pd.DataFrame:
    """Write ``residuals_stacked.nc`` (class x wavelength), ``residual_windows.csv`` and
    ``residuals_observed.png`` / ``residuals_rest.png`` to ``out_dir``; return the window table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resid = residual_spectra(cube, results, model, fits=fits)
    stacked = stack(resid)
    stacked.to_netcdf(out / "residuals_stacked.nc")
    table = window_table(stacked)
    table.to_csv(out / "residual_windows.csv", index=False, float_format="%.3f")
    for frame in ("observed", "rest"):
        plot_stacks(stacked, out / f"residuals_{frame}.png", frame)
    return table


__all__: Sequence[str] = ["CLASSES", "WINDOWS", "Residuals", "best_fit", "diagnose", "plot_stacks", "residual_spectra", "stack",
                          "window_table"]
