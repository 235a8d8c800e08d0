"""A hybrid training cube: an observed library (MILES) plus synthetic spectra (the Turbospectrum grid).

Both cubes come from ``gsn-dask grid`` (the same LAMOST log-lambda grid, line-spread function and
continuum normalisation); the hybrid keeps their common pixels. Its labels are ``teff``, ``logg``,
``feh`` and ``alpha_fe``: an observed star without an [alpha/Fe] gets the schematic Galactic
pattern at its [Fe/H] (:func:`gsn_dask.labels.galactic_alpha`). ``source`` tells the two kinds
apart per star (:func:`gsn_dask.cube.synthetic_rows`), and ``gsn-dask train`` then takes
the emulator error, the label systematics and the Kiel prior from the observed stars only
(``--synthetic-weight`` sets the synthetic spectra's share of the loss).

    gsn-dask grid miles --out miles.zarr
    gsn-dask grid synth --out synth.zarr            # the shipped spectra, no synthesis
    gsn-dask grid hybrid miles.zarr synth.zarr --out hybrid.zarr
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from ..cube import make_spectra, open_spectra, synthetic_rows, write_spectra
from ..labels import galactic_alpha

#: The labels of a hybrid cube.
HYBRID_LABELS = ("teff", "logg", "feh", "alpha_fe")


def _common_pixels(w_obs: np.ndarray, w_syn: np.ndarray) -> tuple[slice, slice]:
    """Index slices of the two cubes' shared pixels (one log-lambda grid, different ends)."""
    j = int(np.searchsorted(w_obs, w_syn[0] * (1 - 1e-9)))
    k = int(np.searchsorted(w_syn, w_obs[0] * (1 - 1e-9)))
    j, k = (j, 0) if j > 0 else (0, k)
    n = min(w_obs.size - j, w_syn.size - k)
    if n < 2 or not np.allclose(w_obs[j:j + n], w_syn[k:k + n], rtol=1e-9, atol=0.0):
        raise ValueError(f"the cubes are not on one wavelength grid ({w_obs[0]:.2f}-{w_obs[-1]:.2f} A, "
                         f"{w_obs.size} px vs {w_syn[0]:.2f}-{w_syn[-1]:.2f} A, {w_syn.size} px): "
                         "build both with `gsn-dask grid` and the same --wmin/--wmax/--resolution")
    return slice(j, j + n), slice(k, k + n)


def _check(observed: xr.Dataset, synthetic: xr.Dataset) -> None:
    for name, ds in (("observed", observed), ("synthetic", synthetic)):
        if str(ds.attrs.get("normalised", "")).lower() != "true":
            raise ValueError(f"the {name} cube is not continuum-normalised (make it with `gsn-dask grid`)")
        missing = [n for n in ("teff", "logg", "feh") if f"label_{n}" not in ds]
        if missing:
            raise ValueError(f"the {name} cube has no labels {missing}")
    if "label_alpha_fe" not in synthetic:
        raise ValueError("the synthetic cube has no alpha_fe label (make it with `gsn-dask grid synth`)")
    if synthetic_rows(observed["source"].values).any():
        raise ValueError("the observed cube holds synthetic spectra (its source names a synthetic grid)")
    if not synthetic_rows(synthetic["source"].values).all():
        raise ValueError("the synthetic cube holds spectra whose source is not a synthetic grid")
    na, nb = (ds.attrs.get("normalisation") for ds in (observed, synthetic))
    if na and nb and json.loads(na) != json.loads(nb):
        raise ValueError("the two cubes were continuum-normalised differently")


def hybrid_cube(observed: xr.Dataset, synthetic: xr.Dataset) -> xr.Dataset:
    """The observed library's stars then the synthetic spectra, on their common pixels, with
    labels :data:`HYBRID_LABELS` (an observed star's missing [alpha/Fe]: the Galactic pattern)."""
    _check(observed, synthetic)
    so, ss = _common_pixels(np.asarray(observed["wavelength"].values), np.asarray(synthetic["wavelength"].values))
    o, s = observed.isel(wavelength=so).load(), synthetic.isel(wavelength=ss).load()
    feh_o = np.asarray(o["label_feh"].values, np.float64)
    alpha_o = np.asarray(o["label_alpha_fe"].values, np.float64) if "label_alpha_fe" in o else np.full(feh_o.size, np.nan)
    alpha_o = np.where(np.isfinite(alpha_o), alpha_o, galactic_alpha(feh_o))
    labels = {n: np.r_[np.asarray(o[f"label_{n}"].values, np.float64), np.asarray(s[f"label_{n}"].values, np.float64)]
              for n in HYBRID_LABELS[:3]}
    labels["alpha_fe"] = np.r_[alpha_o, np.asarray(s["label_alpha_fe"].values, np.float64)]
    src_o = str(o.attrs.get("source", "observed"))
    attrs = {k: v for k, v in o.attrs.items() if k not in ("schema", "history", "source")}
    attrs.update(source=f"{src_o}+synthetic", n_observed=int(o.sizes["star"]), n_synthetic=int(s.sizes["star"]),
                 synthetic_attrs=json.dumps({k: str(v) for k, v in s.attrs.items() if k != "history"}),
                 alpha_fe_observed=f"{src_o} stars without [alpha/Fe]: the schematic Galactic pattern at their [Fe/H] "
                                   "(gsn_dask.labels.GALACTIC_ALPHA_PATTERN)")
    return make_spectra(
        [str(x) for x in o["star"].values] + [str(x) for x in s["star"].values], o["wavelength"].values,
        np.vstack([o["flux"].values, s["flux"].values]), np.vstack([o["ivar"].values, s["ivar"].values]),
        labels=labels, source=[str(x) for x in o["source"].values] + [str(x) for x in s["source"].values],
        snr=np.r_[np.asarray(o["snr"].values, np.float64), np.asarray(s["snr"].values, np.float64)],
        normalised=True, flux_unit="normalised", resolution=str(o.attrs.get("resolution", "")),
        history=f"gsn-dask grid hybrid: {o.sizes['star']} {src_o} + {s.sizes['star']} synthetic spectra", attrs=attrs,
    )


def write_hybrid_cube(observed: str | Path, synthetic: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """:func:`hybrid_cube` of two zarr cubes, written to ``out`` (zarr)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite)")
    ds = hybrid_cube(open_spectra(observed), open_spectra(synthetic))
    return write_spectra(ds, out, overwrite=overwrite)


__all__ = ["HYBRID_LABELS", "hybrid_cube", "write_hybrid_cube"]
