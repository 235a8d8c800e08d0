"""Fit a block of stars (a slice of a spectra cube): :func:`fit_block`, what the runners call.

The block is prepared once, whatever the sampler: the config is checked against the model
(:func:`.config.check_config`, a :class:`.config.ConfigError` before any star); the cube is cut
to the model's pixel range (``model.pixel_slice``); each spectrum is checked
(:func:`.result.input_problem`); raw spectra (``attrs['normalised']`` false) are normalised with
the model's recipe (``prepare.continuum_normalise(model.wavelength, ..., model.normalisation)``)
*after* the cut, so the normalisation sees the same pixel range as at training; each star gets
its own seed ``star_seed(run_seed, star_id)`` (independent of engine, chunking and order) and
its priors. The good rows then go, as arrays, to a sampler strategy (:data:`STRATEGIES`):

    fit_many(model, flux, ivar, *, seeds, snr, priors, config, progress) -> list[FitResult]

and the results become the rows of ``cube.empty_results``. A bad star never raises: its row is
flagged NOT_FITTED with ``status`` saying why (bad input, model mismatch, ``error: <Type>: <message>``).

Per-star Gaussian priors: variables ``prior_<label>_mu`` and ``prior_<label>_sigma`` (dims star)
in the block, where both are finite and sigma > 0, override ``config.priors`` for that star.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import xarray as xr

from .._version import __version__
from ..cube import empty_results
from ..emulator import ModelMismatchError
from .config import SAMPLERS, FitConfig, check_config
from .result import FitResult, input_problem
from .seeds import star_seed
from .threads import blas_threads

#: Sampler strategies: name -> module with a :class:`FitMany` ``fit_many`` (imported on use, so
#: the emcee path never imports torch).
STRATEGIES: dict[str, str] = {"emcee": "gsn_dask.fit.sampler", "batched": "gsn_dask.fit.batched",
                              "map": "gsn_dask.fit.laplace"}

Priors = Mapping[str, tuple[float, float]]


class FitMany(Protocol):
    """A sampler strategy: results of normalised spectra (rows of flux, ivar (S, n_pix) on the
    model grid, all with usable pixels) in row order, one :class:`.result.FitResult` each; raises
    only for a config the strategy cannot run."""

    def __call__(self, model: Any, flux: np.ndarray, ivar: np.ndarray, *, seeds: Sequence[int], snr: np.ndarray,
                 priors: Sequence[Priors | None], config: FitConfig, progress: bool = False) -> list[FitResult]: ...


def strategy(sampler: str) -> FitMany:
    """The ``fit_many`` of a sampler name (:data:`STRATEGIES`)."""
    return importlib.import_module(STRATEGIES[sampler]).fit_many  # type: ignore[no-any-return]


def results_attrs(model: Any, config: FitConfig, run_seed: int, sampler: str) -> dict[str, Any]:
    """Attributes of a results block: model id/sha256, settings (JSON), seed, engine, version."""
    return {
        "model_id": str(getattr(model, "model_id", "")),
        "model_sha256": str(getattr(model, "sha256", "")),
        "fit_config": config.to_json(),
        "sampler": sampler,
        "seed": int(run_seed),
        "engine": "serial",
        "package_version": __version__,
        "labels": ",".join(model.label_names),
    }


def star_priors(block: xr.Dataset, labels: list[str], i: int) -> dict[str, tuple[float, float]]:
    """Per-star Gaussian priors of row ``i`` from ``prior_<label>_mu``/``_sigma`` variables."""
    out: dict[str, tuple[float, float]] = {}
    for name in labels:
        mu_v, sig_v = f"prior_{name}_mu", f"prior_{name}_sigma"
        if mu_v in block.variables and sig_v in block.variables:
            mu = float(np.asarray(block[mu_v].values).reshape(-1)[i])
            sig = float(np.asarray(block[sig_v].values).reshape(-1)[i])
            if math.isfinite(mu) and math.isfinite(sig) and sig > 0:
                out[name] = (mu, sig)
    return out


def normalise_rows(model: Any, flux: np.ndarray, ivar: np.ndarray,
                   todo: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Normalise rows ``todo`` with the model's recipe: one batch call, then star by star if the
    batch fails (a star that fails gets its reason). Returns (flux, ivar, {row: reason})."""
    from ..grid.prepare import continuum_normalise

    wave = np.asarray(model.wavelength, dtype=np.float64)
    recipe = getattr(model, "normalisation", None)
    errors: dict[int, str] = {}
    fn, ivn = flux.copy(), ivar.copy()
    if todo.size == 0:
        return fn, ivn, errors
    try:
        fn[todo], ivn[todo] = continuum_normalise(wave, flux[todo], ivar[todo], recipe)
    except Exception:  # noqa: BLE001 - retry one by one to isolate the bad star
        for i in todo:
            try:
                fn[i], ivn[i] = continuum_normalise(wave, flux[i], ivar[i], recipe)
            except Exception as exc:  # noqa: BLE001
                errors[int(i)] = f"error: normalisation: {type(exc).__name__}: {exc}"
    return fn, ivn, errors


def fill_row(out: xr.Dataset, i: int, res: FitResult) -> None:
    """Write one star's result into row ``i`` of a results block."""
    for name in ("median", "p16", "p84", "map"):
        out[name].values[i, :] = np.asarray(getattr(res, name), dtype=np.float32)
    for name in ("rv", "rv_err", "chi2_reduced", "acceptance", "tau_max", "n_eff_min"):
        out[name].values[i] = np.float32(getattr(res, name))
    out["flag"].values[i] = np.int32(res.flag)
    out["status"].values[i] = str(res.status)
    if "samples" in out and res.samples is not None:
        s = np.asarray(res.samples, dtype=np.float32)
        out["samples"].values[i, : s.shape[0], :] = s


def _prepare(block: xr.Dataset, model: Any, config: FitConfig,
             sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """(flux, ivar, snr) of the block on the model grid, normalised, and {row: reason} of the rows
    that cannot be fitted."""
    n = block.sizes["star"]
    flux = np.asarray(block["flux"].values[:, sl], dtype=np.float64)
    ivar = np.asarray(block["ivar"].values[:, sl], dtype=np.float64)
    snr = (np.asarray(block["snr"].values, dtype=np.float64).reshape(n) if "snr" in block.variables
           else np.full(n, np.nan))
    normalised = bool(block.attrs.get("normalised", False))
    n_pix = flux.shape[1]
    reasons: dict[int, str] = {}
    for i in range(n):
        problem = input_problem(flux[i], ivar[i], n_pix, normalised=normalised)
        if problem is not None:
            reasons[i] = f"bad input: {problem}"
    if not normalised:
        todo = np.array([i for i in range(n) if i not in reasons], dtype=int)
        with blas_threads(config.blas_threads):
            flux, ivar, errors = normalise_rows(model, flux, ivar, todo)
        reasons.update(errors)
        for i in todo:  # the normalised spectrum must be one the posterior can describe
            problem = input_problem(flux[i], ivar[i], n_pix) if i not in errors else None
            if problem is not None:
                reasons[int(i)] = f"bad input: {problem}"
    return flux, ivar, snr, reasons


def fit_block(
    block: xr.Dataset,
    model: Any,
    *,
    config: FitConfig,
    run_seed: int,
    sampler: str = "emcee",
    progress: bool = False,
) -> xr.Dataset:
    """Fit every star of ``block`` (a spectra-cube slice along ``star``); returns the results
    rows (``cube.empty_results`` schema, same star order). Never raises for a bad star; raises
    :class:`.config.ConfigError` (before any star) for a config that does not fit the model or
    sampler.

    ``sampler``: a key of :data:`STRATEGIES` ("emcee", "batched"). Attrs: ``model_id``,
    ``model_sha256``, ``fit_config`` (JSON of ``config.to_dict()``), ``sampler``, ``seed``,
    ``engine`` ("serial"; runners overwrite it), ``package_version``.
    """
    config = (config or FitConfig()).for_cube(block.attrs)  # "auto" arm split: the cube's
    check_config(config, model, sampler)  # a run-level error: raise before any star
    fit_many = strategy(sampler)
    labels = list(model.label_names)
    stars = [str(v) for v in np.asarray(block["star"].values).ravel()]
    out = empty_results(stars, labels, n_draws=config.n_draws, status="not fitted",
                        attrs=results_attrs(model, config, run_seed, sampler))
    if not stars:
        return out
    try:
        sl = model.pixel_slice(np.asarray(block["wavelength"].values, dtype=np.float64))
    except ModelMismatchError as exc:  # the block's grid: every star gets the reason
        out["status"].values[:] = f"model mismatch: {exc}"
        return out
    flux, ivar, snr, reasons = _prepare(block, model, config, sl)
    good = [i for i in range(len(stars)) if i not in reasons]
    if good:
        results = fit_many(model, flux[good], ivar[good], seeds=[star_seed(run_seed, stars[i]) for i in good],
                           snr=snr[good], priors=[star_priors(block, labels, i) or None for i in good],
                           config=config, progress=progress)
        for i, res in zip(good, results):
            fill_row(out, i, res)
    for i, reason in reasons.items():
        fill_row(out, i, FitResult.not_fitted(len(labels), reason))
    return out


__all__ = ["SAMPLERS", "STRATEGIES", "FitMany", "fill_row", "fit_block", "normalise_rows", "results_attrs",
           "star_priors", "strategy"]
