"""Fit a block of stars (a slice of a spectra cube): :func:`fit_block`, what the runners call.

Per block: the cube is cut to the model's pixel range (``model.pixel_slice``), raw spectra
(``attrs['normalised']`` false) are normalised with the model's recipe
(``prepare.continuum_normalise(model.wavelength, ..., model.normalisation)``) *after* the cut, so the
normalisation sees the same pixel range as at training; then each star is fitted with
:func:`.sampler.fit_spectrum` using its own seed ``star_seed(run_seed, star_id)`` (independent of
engine, chunking and order). A bad star never raises: its row is flagged NOT_FITTED with
``status`` saying why (bad input, model mismatch, ``error: <Type>: <message>``).

Per-star Gaussian priors: variables ``prior_<label>_mu`` and ``prior_<label>_sigma`` (dims star)
in the block, where both are finite and sigma > 0, override ``config.priors`` for that star.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from .. import __version__
from ..cube import empty_results
from ..flags import Flag
from .config import FitConfig
from .result import empty_result, input_problem
from .sampler import check_config, fit_spectrum
from .seeds import star_seed
from .threads import blas_threads

SAMPLERS = ("emcee", "batched")


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


def _str(values: Any) -> list[str]:
    return [str(v) for v in np.asarray(values).ravel()]


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


def _normalise(model: Any, flux: np.ndarray, ivar: np.ndarray, todo: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Normalise rows ``todo`` with the model's recipe; a batch call, then per star on failure."""
    from ..grid.prepare import continuum_normalise

    wave = np.asarray(model.wavelength, dtype=np.float64)
    recipe = getattr(model, "normalisation", None)
    errors: dict[int, str] = {}
    fn, ivn = flux.copy(), ivar.copy()
    if todo.size == 0:
        return fn, ivn, errors
    try:
        f2, i2 = continuum_normalise(wave, flux[todo], ivar[todo], recipe)
        fn[todo], ivn[todo] = f2, i2
    except Exception:  # noqa: BLE001 - retry one by one to isolate the bad star
        for i in todo:
            try:
                fn[i], ivn[i] = continuum_normalise(wave, flux[i], ivar[i], recipe)
            except Exception as exc:  # noqa: BLE001
                errors[int(i)] = f"error: normalisation: {type(exc).__name__}: {exc}"
    return fn, ivn, errors


def _fill(out: xr.Dataset, i: int, res: dict[str, Any]) -> None:
    for name in ("median", "p16", "p84", "map"):
        out[name].values[i, :] = np.asarray(res[name], dtype=np.float32)
    for name in ("rv", "rv_err", "chi2_reduced", "acceptance", "tau_max", "n_eff_min"):
        out[name].values[i] = np.float32(res[name])
    out["flag"].values[i] = np.int32(res["flag"])
    out["status"].values[i] = str(res["status"])
    if "samples" in out and res.get("samples") is not None:
        s = np.asarray(res["samples"], dtype=np.float32)
        out["samples"].values[i, : s.shape[0], :] = s


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
    rows (``cube.empty_results`` schema, same star order). Never raises for a bad star.

    ``sampler``: "emcee" (this module) or "batched" (``gsn_dask.fit.batched.fit_block``, imported
    lazily). Attrs: ``model_id``, ``model_sha256``, ``fit_config`` (JSON of ``config.to_dict()``),
    ``sampler``, ``seed``, ``engine`` ("serial"; runners overwrite it), ``package_version``.
    """
    if sampler == "batched":
        try:
            from . import batched  # type: ignore[attr-defined]
        except ImportError as exc:
            raise RuntimeError(
                "sampler='batched' needs gsn_dask.fit.batched, which is not available in this "
                f"installation ({exc}); use sampler='emcee'"
            ) from exc
        return batched.fit_block(block, model, config=config, run_seed=run_seed, progress=progress)
    if sampler != "emcee":
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    config = config or FitConfig()
    check_config(config, model)  # a bad config is a run-level error: raise before any star
    labels = list(model.label_names)
    stars = _str(block["star"].values)
    n = len(stars)
    out = empty_results(stars, labels, n_draws=config.n_draws, status="not fitted",
                        attrs=results_attrs(model, config, run_seed, sampler))
    if n == 0:
        return out
    # ---- the model's pixel range
    try:
        sl = model.pixel_slice(np.asarray(block["wavelength"].values, dtype=np.float64))
    except Exception as exc:  # ModelMismatchError and anything else: every star gets the reason
        reason = f"model mismatch: {exc}" if type(exc).__name__ == "ModelMismatchError" else f"error: {type(exc).__name__}: {exc}"
        out["status"].values[:] = reason
        return out
    flux = np.asarray(block["flux"].values[:, sl], dtype=np.float64)
    ivar = np.asarray(block["ivar"].values[:, sl], dtype=np.float64)
    snr = (
        np.asarray(block["snr"].values, dtype=np.float64).reshape(n)
        if "snr" in block.variables
        else np.full(n, np.nan)
    )
    n_pix = flux.shape[1]
    problems = {i: input_problem(flux[i], ivar[i], n_pix) for i in range(n)}
    errors: dict[int, str] = {}
    with blas_threads(config.blas_threads):
        if not bool(block.attrs.get("normalised", False)):
            todo = np.array([i for i in range(n) if problems[i] is None], dtype=int)
            flux, ivar, errors = _normalise(model, flux, ivar, todo)
        it = range(n)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=n, desc="fit", unit="star")
        for i in it:
            L = len(labels)
            if problems[i] is not None:
                res = empty_result(L, status=f"bad input: {problems[i]}")
            elif i in errors:
                res = empty_result(L, status=errors[i])
            else:
                try:
                    res = fit_spectrum(
                        model, flux[i], ivar[i], config=config, seed=star_seed(run_seed, stars[i]),
                        snr=float(snr[i]), priors=star_priors(block, labels, i) or None,
                    )
                except Exception as exc:  # noqa: BLE001 - one star must not stop the block
                    res = empty_result(L, flag=int(Flag.NOT_FITTED), status=f"error: {type(exc).__name__}: {exc}")
            _fill(out, i, res)
    return out


__all__ = ["SAMPLERS", "fit_block", "results_attrs", "star_priors"]
