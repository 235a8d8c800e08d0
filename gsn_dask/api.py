"""The public API, re-exported lazily at the package top (``import gsn_dask as gd``).

A few names, each doing one obvious thing::

    cube = gd.read_lamost()                      # LAMOST FITS -> in-memory spectra cube
    model = gd.load_model()                      # the shipped MILES GSN (or a model dir)
    res = gd.fit(cube.isel(star=slice(0, 8)), model)   # results rows, as an xarray.Dataset
    gd.fit_store("lamost.zarr", model_dir, "results.zarr")   # a whole zarr cube on Dask
    report = gd.validate(res, cube)              # against the cube's reference labels

Everything here calls the same functions as the command line, so the numbers are the same.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .cube import make_spectra
from .fit.config import FitConfig

#: the model directory shipped with the package (MILES GSN made by ``gsn-dask train``)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "data" / "model"


def load_model(model_dir: str | Path | None = None, *, labels: list[str] | None = None) -> Any:
    """Load a trained GSN (numpy inference, no torch needed) from ``model_dir``; with no
    argument, the default model shipped in the package (``DEFAULT_MODEL_DIR``)."""
    from .emulator import load_model as _load

    if model_dir is None:
        if not (DEFAULT_MODEL_DIR / "model.json").is_file():
            raise FileNotFoundError(f"the default model is missing from this installation ({DEFAULT_MODEL_DIR})")
        model_dir = DEFAULT_MODEL_DIR
    return _load(model_dir, labels=labels)


def _as_cube(spectra: xr.Dataset | xr.DataArray, ivar: xr.DataArray | np.ndarray | None) -> xr.Dataset:
    """A spectra cube from a Dataset (as is) or a flux DataArray (``star``/``wavelength`` dims,
    or one spectrum over ``wavelength``) plus ``ivar``."""
    if isinstance(spectra, xr.Dataset):
        if ivar is not None:
            raise ValueError("ivar= is for a flux DataArray; a Dataset carries its own 'ivar'")
        missing = [v for v in ("flux", "ivar") if v not in spectra.variables]
        if missing or "wavelength" not in spectra.coords:
            raise ValueError(f"spectra must be a spectra cube with 'flux', 'ivar' and a 'wavelength' "
                             f"coordinate; missing {missing or ['wavelength']}")
        return spectra
    if not isinstance(spectra, xr.DataArray):
        raise TypeError(f"spectra must be an xarray Dataset or DataArray, not {type(spectra).__name__}")
    if ivar is None:
        raise ValueError("a flux DataArray needs ivar= (inverse variance, same shape; 0 = bad pixel)")
    flux = spectra if "star" in spectra.dims else spectra.expand_dims(star=[str(spectra.name or "star-0")])
    flux = flux.transpose("star", "wavelength")
    iv = np.asarray(ivar.values if isinstance(ivar, xr.DataArray) else ivar, dtype=np.float32).reshape(flux.shape)
    stars = [str(s) for s in flux["star"].values] if "star" in flux.coords else [f"star-{i}" for i in range(flux.sizes["star"])]
    return make_spectra(stars, flux["wavelength"].values, flux.values, iv,
                        normalised=bool(spectra.attrs.get("normalised", False)))


def fit(
    spectra: xr.Dataset | xr.DataArray,
    model: Any = None,
    *,
    ivar: xr.DataArray | np.ndarray | None = None,
    sampler: str = "emcee",
    config: FitConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> xr.Dataset:
    """Posteriors for spectra held in memory; returns the results rows (``gsn-dask/results/1``).

    ``spectra``: a spectra cube (raw or normalised flux; e.g. from :func:`read_lamost`) or a flux
    DataArray with ``ivar``; ``model``: a loaded GSN or a model directory (default: the shipped
    model); ``config``: a :class:`FitConfig` or a dict of its settings. Each star's seed
    derives from ``seed`` and its id, so the numbers equal those of ``gsn-dask fit``.
    A setting that does not fit the model raises ``ConfigError`` before any star is fitted.
    """
    from .fit.block import fit_block
    from .fit.config import check_config

    cube = _as_cube(spectra, ivar)
    gsn = model if hasattr(model, "label_names") else load_model(model)
    cfg = config if isinstance(config, FitConfig) else FitConfig.from_dict(dict(config or {}))
    check_config(cfg, gsn, sampler)
    return fit_block(cube, gsn, config=cfg, run_seed=int(seed), sampler=sampler, progress=progress)




def label_systematics(results: xr.Dataset) -> xr.DataArray:
    """The systematic sigma (label units, dims star x label) that the fit folded into each star's
    p16/p84 in quadrature (the model's training cross-validation; zero where none was used), so
    the statistical half-width is ``sqrt(half_width**2 - sigma**2)``."""
    from .fit.result import systematics_from_record

    labels = [str(s) for s in results["label"].values]
    rec = systematics_from_record(results.attrs.get("label_systematics", "null") or "null", labels)
    med = np.asarray(results["median"].values, dtype=np.float64)
    sig = np.zeros(med.shape) if rec is None else np.array([rec.at(m) for m in med]).reshape(med.shape)
    return xr.DataArray(sig, dims=("star", "label"), coords={"star": results["star"].values, "label": labels},
                        name="label_systematics")


def fit_store(
    cube: str | Path,
    model: str | Path | None = None,
    out: str | Path = "results.zarr",
    *,
    client: Any = None,
    sampler: str = "emcee",
    config: FitConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    chunk_size: int | None = None,
    n_workers: int | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Fit every star of the zarr spectra cube ``cube`` with the model directory ``model``
    (default: the shipped model) on Dask — ``client`` (a ``distributed.Client``) or a
    LocalCluster of ``n_workers`` — writing the results store ``out``; returns it opened.
    ``resume`` continues an interrupted run; the numbers equal ``gsn-dask fit``'s."""
    from .pipeline import run_fit

    cfg = config if isinstance(config, FitConfig) else FitConfig.from_dict(dict(config or {}))
    model_dir = DEFAULT_MODEL_DIR if model is None else Path(model)
    return run_fit(cube, model_dir, out, config=cfg, seed=seed, client=client, sampler=sampler,
                   resume=resume, overwrite=overwrite, chunk_size=chunk_size, n_workers=n_workers,
                   progress=progress)


__all__ = ["DEFAULT_MODEL_DIR", "fit", "fit_store", "label_systematics", "load_model"]
