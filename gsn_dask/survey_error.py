r"""The survey error: per-pixel model error that a survey's spectra show beyond their noise and
the emulator error, measured from fitted survey stars, and a model adapted to it.

The GSN's per-pixel ``emulator_error`` is measured on its training library. Survey spectra disagree
with the model in ways the library cannot show: sky-line and telluric residuals, the join of the
spectrograph arms, flux-calibration wiggles, and stellar features where the survey's stars and the
library differ. The likelihood then over-weights those pixels. From the best fits of many survey
stars (:func:`gsn_dask.diagnose.best_fit`), per pixel :math:`i` the extra error
:math:`\sigma_{x,i} \ge 0` is the value that makes

.. math:: \operatorname{median}_s \frac{(f_{si} - \mu_{si})^2}{1/\iota_{si} + \sigma_{emu,i}^2 + \sigma_{x,i}^2} = 0.4549

(the median of :math:`\chi^2_1`: a robust statement that the normalised residual has unit variance).
It is 0 where the noise and the emulator error already explain the residuals, that is where the
median at :math:`\sigma_x = 0` is not significantly above 0.4549: the median of :math:`n` draws of
:math:`\chi^2_1` scatters by :math:`1/(2 p(0.4549) \sqrt n) = 1.06/\sqrt n`, and a pixel is raised
only beyond ``z_min`` (2) such standard errors, so pure noise raises ~2% of pixels, not half. Only the survey spectra are used, no
reference labels. :func:`adapt_model` returns the model with
``emulator_error = hypot(emulator_error, sigma_x)``; everything else (weights, label systematics) is
kept and the record goes to ``model.json`` (``survey_error``), so a fit with it is reproducible.
``gsn-dask diagnose --write-model DIR`` does both.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

#: median of a chi-square with one degree of freedom
MEDIAN_CHI2_1 = 0.454936423119572
#: fewest stars that must use a pixel for its survey error to be estimated (else 0)
MIN_STARS = 20
#: standard error of the median of n chi2_1 draws, times sqrt(n): 1 / (2 p(median) ), p the chi2_1 density
MEDIAN_CHI2_1_SE = 1.0 / (2.0 * np.exp(-MEDIAN_CHI2_1 / 2.0) / np.sqrt(2.0 * np.pi * MEDIAN_CHI2_1))


def survey_error(fits: xr.Dataset, emulator_error: np.ndarray, *, min_stars: int = MIN_STARS,
                 z_min: float = 2.0) -> np.ndarray:
    """(n_pix,) extra per-pixel error (normalised-flux units) of the best fits ``fits`` (the output
    of :func:`gsn_dask.diagnose.best_fit`: ``flux``, ``ivar``, ``model_flux``, ``used``); 0 where
    fewer than ``min_stars`` stars use the pixel, or noise and ``emulator_error`` explain the
    residuals (the excess is not ``z_min`` standard errors significant)."""
    flux, ivar, mu, used = (np.asarray(fits[v].values) for v in ("flux", "ivar", "model_flux", "used"))
    use = used & np.isfinite(mu) & (ivar > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(use, (flux - mu) ** 2, np.nan)
        var0 = np.where(use, 1.0 / np.where(use, ivar, 1.0) + np.asarray(emulator_error, np.float64) ** 2, np.nan)
    enough = use.sum(axis=0) >= min_stars
    r2, var0 = r2[:, enough], var0[:, enough]

    def med_ratio(extra: np.ndarray) -> np.ndarray:
        return np.nanmedian(r2 / (var0 + extra**2), axis=0)

    lo = np.zeros(r2.shape[1])
    hi = np.sqrt(np.nanmax(r2, axis=0) / MEDIAN_CHI2_1) + 1e-12
    for _ in range(60):  # bisection: med_ratio decreases with the extra error
        mid = 0.5 * (lo + hi)
        over = med_ratio(mid) > MEDIAN_CHI2_1
        lo, hi = np.where(over, mid, lo), np.where(over, hi, mid)
    n_used = np.sum(np.isfinite(r2), axis=0)
    significant = med_ratio(np.zeros_like(lo)) > MEDIAN_CHI2_1 + z_min * MEDIAN_CHI2_1_SE / np.sqrt(n_used)
    out = np.zeros(flux.shape[1])
    out[enough] = np.where(significant, 0.5 * (lo + hi), 0.0)
    return out


def adapt_model(model: Any, sigma_x: np.ndarray, record: dict[str, Any]) -> Any:
    """A copy of ``model`` (a :class:`gsn_dask.emulator.GSN`) whose emulator error includes the survey
    error ``sigma_x`` in quadrature; ``record`` (source, stars, settings) is kept in
    ``meta["survey_error"]`` with summary numbers and the base model's id."""
    sigma_x = np.asarray(sigma_x, dtype=np.float64).reshape(-1)
    if sigma_x.shape != (model.n_pix,) or not np.all(np.isfinite(sigma_x) & (sigma_x >= 0)):
        raise ValueError(f"survey error must be {model.n_pix} finite values >= 0, got shape {sigma_x.shape}")
    err = np.hypot(np.asarray(model.emulator_error, np.float64), sigma_x)
    meta = dict(model.meta)
    meta["survey_error"] = {**record, "base_model_id": model.model_id,
                            "median": float(np.median(sigma_x)), "p90": float(np.percentile(sigma_x, 90)),
                            "fraction_of_pixels_raised": float(np.mean(sigma_x > 0))}
    meta.pop("weights", None)
    return type(model)(hidden_layers=model.hidden_layers, W_out=model.W_out, b_out=model.b_out,
                       activation=model.activation, label_names=model.label_names, bounds=model.bounds,
                       wavelength=model.wavelength, emulator_error=err, label_units=model.label_units,
                       label_transforms=model.label_transforms, normalisation=model.normalisation, meta=meta)


def measure(fits: xr.Dataset, model: Any, results: xr.Dataset) -> tuple[np.ndarray, dict[str, Any]]:
    """(survey error, record) of the best fits ``fits`` (:func:`gsn_dask.diagnose.best_fit` of
    ``results`` with ``model``): what :func:`adapt_model` takes."""
    rec = {"n_stars": int(fits.sizes["star"]), "fit_config": results.attrs.get("fit_config", "{}"),
           "method": "per pixel: median over stars of r^2 / (1/ivar + emu^2 + s^2) = median chi2_1 (2-sigma significant)"}
    return survey_error(fits, model.emulator_error), rec


def adapt_to_survey(cube: xr.Dataset, results: xr.Dataset, model: Any, record: dict[str, Any] | None = None) -> Any:
    """The model adapted to a survey in one call: the best fits of ``results`` (fitted from ``cube``
    with ``model``; :func:`gsn_dask.diagnose.best_fit`), their :func:`survey_error` and
    :func:`adapt_model` (``record`` gains ``n_stars`` and the fit settings)."""
    from .diagnose import best_fit

    sigma, rec = measure(best_fit(cube, results, model), model, results)
    return adapt_model(model, sigma, {**(record or {}), **rec})


def plot_survey_error(wavelength: np.ndarray, emulator_error: np.ndarray, sigma_x: np.ndarray, path: Any) -> Any:
    """Figure: the emulator error and the survey error (percent) against wavelength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.2))
    ax.plot(wavelength, 100 * np.asarray(emulator_error), lw=0.6, color="0.5", label="emulator error (training library)")
    ax.plot(wavelength, 100 * np.asarray(sigma_x), lw=0.6, color="tab:red", label="survey error (fitted survey stars)")
    ax.set_xlabel("vacuum wavelength [A] (observed frame)")
    ax.set_ylabel("per-pixel error [%]")
    ax.set_ylim(0, max(5.0, float(np.nanpercentile(100 * np.asarray(sigma_x), 99.5))))
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["MEDIAN_CHI2_1", "MEDIAN_CHI2_1_SE", "MIN_STARS", "adapt_model", "adapt_to_survey", "measure",
           "plot_survey_error", "survey_error"]
