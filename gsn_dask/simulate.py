"""A synthetic survey cube from a model (``gsn-dask simulate``): injection tests and capacity planning.

Each star: labels from a Kiel-diagram population (:func:`kiel_population`, or resampled with
jitter from a cube's ``label_*`` with :func:`resampled_population`), the model spectrum shifted by
an rv (km/s, Gaussian), times a smooth instrument response with a per-star tilt (a raw,
uncalibrated-looking continuum, so the fit normalises it with the model's recipe), plus Gaussian
noise at a LAMOST-like S/N per pixel (log-normal) and, by default, the model's own per-pixel
emulator error (so the fit's likelihood describes the data exactly). The true labels are stored as
``label_*``, the true rv as ``rv_catalog`` and the S/N as ``snr``.

A star's spectrum depends only on ``seed`` and its index: the cube is written chunk by chunk by
Dask (bounded memory; 10^5 stars x 3000 px is ~2.4 GB of zarr); the chunking does not change it
beyond float32 rounding (on some CPUs, e.g. AMD EPYC, BLAS rounds the last bit with the chunk's shape).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ._version import __version__
from .cube import make_spectra, write_spectra

C_KMS = 299792.458


@dataclass(frozen=True)
class SurveySettings:
    """Observing conditions of the simulated survey."""

    snr_median: float = 35.0  # median S/N per pixel (LAMOST LRS g band, roughly)
    snr_sigma_ln: float = 0.6  # log-normal width of the S/N distribution (natural log)
    snr_range: tuple[float, float] = (5.0, 300.0)  # S/N is clipped to this range
    rv_sigma_kms: float = 40.0  # Gaussian rv spread, km/s
    tilt_sigma: float = 0.1  # per-star linear/quadratic response tilt (fraction)
    emulator_error: bool = True  # add the model's per-pixel emulator error to the noise


def response_curve(wavelength: np.ndarray) -> np.ndarray:
    """A smooth, positive instrument-like response (dimensionless): rises from the blue,
    peaks near 6000 A, falls to the red, like an uncalibrated spectrograph throughput."""
    x = (np.asarray(wavelength, dtype=float) - 6000.0) / 3000.0
    return 0.35 + 0.65 * np.exp(-0.5 * (x / 0.55) ** 2) + 0.05 * x


def kiel_population(n: int, bounds: Mapping[str, tuple[float, float]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Labels of ``n`` stars in a disc-like Kiel diagram: 65% main-sequence dwarfs
    (Teff 4000-6800 K), 10% subgiants, 25% red giants (Teff 4000-5300 K); [Fe/H] ~ N(-0.2, 0.3)
    dex with a metal-poor tail; [alpha/Fe] following the Galactic pattern (+0.3 below [Fe/H] = -1,
    0 at solar) with 0.05 dex scatter. Everything is clipped to ``bounds`` (label -> (lo, hi))."""
    kind = rng.choice(3, size=n, p=[0.65, 0.10, 0.25])
    teff = np.where(kind == 0, rng.uniform(4000, 6800, n), np.where(kind == 1, rng.uniform(5000, 6200, n),
                                                                      rng.uniform(4000, 5300, n)))
    logg_ms = 4.65 - 0.45 * (teff - 4000) / 2800
    logg_sg = 3.9 - 0.4 * rng.random(n)
    logg_rg = 1.2 + 2.0 * (teff - 4000) / 1300
    logg = np.where(kind == 0, logg_ms, np.where(kind == 1, logg_sg, logg_rg)) + rng.normal(0, 0.12, n)
    feh = np.where(rng.random(n) < 0.9, rng.normal(-0.2, 0.3, n), rng.uniform(-2.5, -1.0, n))
    alpha = np.clip(-0.3 * feh, 0.0, 0.3) + rng.normal(0, 0.05, n)
    values = {"teff": teff, "logg": logg, "feh": feh, "alpha_fe": alpha}
    out = {}
    for name, (lo, hi) in bounds.items():
        if name not in values:
            raise ValueError(f"kiel_population has no rule for label {name!r}; use resampled_population")
        out[name] = np.clip(values[name], lo, hi)
    return out


def resampled_population(cube: xr.Dataset, n: int, bounds: Mapping[str, tuple[float, float]],
                         rng: np.random.Generator, jitter: float = 0.02) -> dict[str, np.ndarray]:
    """Labels of ``n`` stars resampled (with replacement) from the stars of ``cube`` that have every
    label of ``bounds``, each jittered by ``jitter`` x the label's range and clipped to ``bounds``."""
    names = list(bounds)
    missing = [f"label_{k}" for k in names if f"label_{k}" not in cube.variables]
    if missing:
        raise ValueError(f"the population cube lacks {missing}")
    table = np.column_stack([np.asarray(cube[f"label_{k}"].values, dtype=float) for k in names])
    table = table[np.isfinite(table).all(axis=1)]
    if len(table) == 0:
        raise ValueError("the population cube has no star with every label")
    pick = table[rng.integers(0, len(table), n)]
    out = {}
    for j, k in enumerate(names):
        lo, hi = bounds[k]
        out[k] = np.clip(pick[:, j] + rng.normal(0, jitter * (hi - lo), n), lo, hi)
    return out


def draw_conditions(n: int, settings: SurveySettings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-star S/N per pixel, rv (km/s) and response tilt coefficients (n, 2)."""
    snr = np.clip(settings.snr_median * np.exp(rng.normal(0, settings.snr_sigma_ln, n)), *settings.snr_range)
    rv = rng.normal(0.0, settings.rv_sigma_kms, n)
    tilt = rng.normal(0.0, settings.tilt_sigma, (n, 2))
    return snr, rv, tilt


def observe(model: Any, labels: np.ndarray, snr: np.ndarray, rv: np.ndarray, tilt: np.ndarray,
            noise: np.ndarray, settings: SurveySettings) -> tuple[np.ndarray, np.ndarray]:
    """Raw flux and ivar (n, n_pix) float32 on ``model.wavelength`` for labels (n, n_label);
    ``noise`` (n, n_pix) standard normal deviates."""
    wave = np.asarray(model.wavelength, dtype=np.float64)
    rest = np.asarray(model.predict(labels), dtype=np.float64)
    n, n_pix = rest.shape
    step = float(np.median(np.diff(np.log10(wave))))
    pos = np.arange(n_pix)[None, :] - (np.log10(1.0 + rv / C_KMS) / step)[:, None]
    j = np.floor(pos).astype(np.int64)
    phi = pos - j
    inside = (j >= 0) & (j + 1 < n_pix)
    jc = np.clip(j, 0, n_pix - 2)
    shifted = (1 - phi) * np.take_along_axis(rest, jc, 1) + phi * np.take_along_axis(rest, jc + 1, 1)
    x = 2 * (wave - wave[0]) / (wave[-1] - wave[0]) - 1
    level = response_curve(wave)[None, :] * (1 + tilt[:, :1] * x + tilt[:, 1:] * (x**2 - 1 / 3))
    sigma = level / snr[:, None]
    var = sigma**2
    if settings.emulator_error and getattr(model, "emulator_error", None) is not None:
        var = var + (level * np.asarray(model.emulator_error, dtype=np.float64)) ** 2
    flux = shifted * level + noise * np.sqrt(var)
    ivar = np.where(inside, 1.0 / sigma**2, 0.0)
    return np.where(inside, flux, 0.0).astype(np.float32), ivar.astype(np.float32)


def _chunk(model: Any, labels: np.ndarray, snr: np.ndarray, rv: np.ndarray, tilt: np.ndarray,
           seed: int, first: int, settings: SurveySettings) -> tuple[np.ndarray, np.ndarray]:
    """Stars ``first .. first + len(labels)``; each star's noise comes from its own stream."""
    n_pix = int(np.asarray(model.wavelength).size)
    noise = np.stack([np.random.default_rng([int(seed), 1, first + k]).standard_normal(n_pix)
                      for k in range(len(labels))])
    return observe(model, labels, snr, rv, tilt, noise, settings)


def simulate(model: Any, n: int, *, seed: int = 0, chunk_size: int = 1000, settings: SurveySettings | None = None,
             population: xr.Dataset | None = None) -> xr.Dataset:
    """A lazy (dask-backed) raw spectra cube of ``n`` simulated stars on ``model.wavelength``
    (see the module docstring); ``population``: a cube whose ``label_*`` to resample."""
    import dask
    import dask.array as da

    if n < 1 or chunk_size < 1:
        raise ValueError(f"n and chunk_size must be >= 1, got {n}, {chunk_size}")
    settings = settings or SurveySettings()
    rng = np.random.default_rng([int(seed), 0])
    bounds = {k: (float(lo), float(hi)) for k, (lo, hi) in zip(model.label_names, np.asarray(model.bounds))}
    pop = (kiel_population(n, bounds, rng) if population is None
           else resampled_population(population, n, bounds, rng))
    labels = np.column_stack([pop[k] for k in model.label_names])
    snr, rv, tilt = draw_conditions(n, settings, rng)
    n_pix = int(np.asarray(model.wavelength).size)
    flux_parts, ivar_parts = [], []
    for a in range(0, n, chunk_size):
        b = min(a + chunk_size, n)
        part = dask.delayed(_chunk, nout=2, pure=True)(model, labels[a:b], snr[a:b], rv[a:b], tilt[a:b],
                                                        seed, a, settings)
        flux_parts.append(da.from_delayed(part[0], (b - a, n_pix), np.float32))
        ivar_parts.append(da.from_delayed(part[1], (b - a, n_pix), np.float32))
    width = max(8, len(str(n - 1)))
    placeholder = np.broadcast_to(np.float32(0), (n, n_pix))  # no memory: replaced by the dask arrays
    ds = make_spectra([f"sim-{i:0{width}d}" for i in range(n)], model.wavelength, placeholder, placeholder,
                      snr=snr, rv_catalog=rv,
                      labels=pop, source=["gsn-dask simulate"] * n, normalised=False,
                      flux_unit="relative (simulated response)",
                      history=f"gsn-dask {__version__} simulate: {n} stars, seed {seed}, model {getattr(model, 'model_id', '')}")
    ds["flux"] = (("star", "wavelength"), da.concatenate(flux_parts), ds["flux"].attrs)
    ds["ivar"] = (("star", "wavelength"), da.concatenate(ivar_parts), ds["ivar"].attrs)
    ds.attrs.update(simulate_seed=int(seed), simulate_model_id=str(getattr(model, "model_id", "")),
                    simulate_settings=repr(settings),
                    simulate_truth="label_* = true labels; rv_catalog = true rv (km/s); snr = S/N per pixel")
    return ds


def simulate_store(model: Any, out: str | Path, n: int, *, seed: int = 0, chunk_size: int = 1000,
                   settings: SurveySettings | None = None, population: xr.Dataset | None = None,
                   overwrite: bool = False) -> Path:
    """Write :func:`simulate`'s cube to the zarr store ``out`` (one zarr chunk per ``chunk_size``
    stars), computing it chunk by chunk on the current Dask scheduler."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite to replace it)")
    ds = simulate(model, n, seed=seed, chunk_size=chunk_size, settings=settings, population=population)
    return write_spectra(ds, out, chunk_size=chunk_size, overwrite=overwrite)


__all__ = ["SurveySettings", "draw_conditions", "kiel_population", "observe", "resampled_population",
           "response_curve", "simulate", "simulate_store"]
