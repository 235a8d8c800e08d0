"""The spectra and results cubes: schema, construction, validation, zarr I/O.

The schemas are fixed by ``shared/DESIGN.md``:

* spectra cube (``schema = "gsn-dask/spectra/1"``): ``flux``/``ivar`` (star, wavelength),
  per-star ``ra``, ``dec``, ``snr``, ``rv_catalog``, ``label_<name>``, ``source``;
  one vacuum wavelength grid (Angstrom) for the whole cube.
* results cube (``schema = "gsn-dask/results/1"``): see :func:`empty_results`.

Strings (``star``, ``source``, ``status``) are written as zarr-3 variable-length UTF-8.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

SPECTRA_SCHEMA = "gsn-dask/spectra/1"
RESULTS_SCHEMA = "gsn-dask/results/1"

#: Known labels and their units. Other label names are allowed (unit "").
from .labels import LABEL_UNITS, canonical_order  # noqa: E402,F401 - LABEL_UNITS defined once, in gsn_dask.labels

#: LAMOST LRS log-linear grid: log10(lambda/A) = 3.5682 + k * 1e-4 (vacuum).
LAMOST_LOG10_ANCHOR = 3.5682
LAMOST_LOG10_STEP = 1e-4

#: Default number of stars per zarr chunk (= per fitting task).
DEFAULT_CHUNK_SIZE = 256

_STAR_VARS_FLOAT = {"ra": np.float64, "dec": np.float64, "snr": np.float32, "rv_catalog": np.float32}


class CubeSchemaError(ValueError):
    """A dataset does not follow the gsn-dask cube schema; the message names the problem."""


# --------------------------------------------------------------------------- grids
class OutputPathError(ValueError):
    """An output path that cannot be written (under a plain file, not creatable, or holding
    other data); the message names the path and the reason."""


def check_output_path(path: str | Path) -> None:
    """Raise :class:`OutputPathError` if a store cannot be written at ``path``: ``path`` or one
    of its existing parents is a plain file, or the nearest existing parent is not writable.
    Nothing is created."""
    import os

    path = Path(path).expanduser().absolute()
    for p in (path, *path.parents):
        if not p.exists():
            continue
        if not p.is_dir():
            what = "is a file" if p == path else f"is under {p}, which is a file, not a directory"
            raise OutputPathError(f"cannot write {path}: it {what}")
        if p != path and not os.access(p, os.W_OK | os.X_OK):
            raise OutputPathError(f"cannot write {path}: {p} is not writable")
        return


def log_lambda_grid(
    wmin: float = 3700.0,
    wmax: float = 9100.0,
    log10_step: float = LAMOST_LOG10_STEP,
    anchor: float = LAMOST_LOG10_ANCHOR,
) -> np.ndarray:
    """Vacuum wavelengths (Angstrom) of the log-linear grid ``10**(anchor + k*step)``
    for every integer k with ``wmin <= lambda <= wmax`` (0.05 pixel tolerance).

    The default is LAMOST's own LRS grid, 3700-9100 A (3909 pixels).
    """
    lo = np.ceil((np.log10(wmin) - anchor) / log10_step - 0.05)
    hi = np.floor((np.log10(wmax) - anchor) / log10_step + 0.05)
    k = np.arange(lo, hi + 1)
    return 10.0 ** (anchor + k * log10_step)


def grid_log10_step(wavelength: np.ndarray, rtol: float = 1e-6) -> float:
    """The constant log10 step of a log-linear wavelength grid; raises if it is not one."""
    w = np.asarray(wavelength, dtype=np.float64)
    if w.ndim != 1 or w.size < 2:
        raise CubeSchemaError("wavelength must be a 1-D grid of at least 2 pixels")
    d = np.diff(np.log10(w))
    step = float(np.median(d))
    if step <= 0 or np.max(np.abs(d - step)) > max(rtol, 1e-3 * step):
        raise CubeSchemaError("wavelength grid is not log-linear with a constant positive step")
    return step


# ------------------------------------------------------------------------ spectra
def _as_str_array(values: Sequence[Any] | np.ndarray, n: int, name: str) -> np.ndarray:
    arr = np.array([str(v) for v in values], dtype=object)
    if arr.shape != (n,):
        raise CubeSchemaError(f"{name} must have one entry per star ({n}), got shape {arr.shape}")
    return arr


def make_spectra(
    star: Sequence[str],
    wavelength: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    *,
    ra: np.ndarray | None = None,
    dec: np.ndarray | None = None,
    snr: np.ndarray | None = None,
    rv_catalog: np.ndarray | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    source: Sequence[str] | None = None,
    normalised: bool = False,
    flux_unit: str = "relative",
    resolution: str = "R~1800 (LAMOST LRS)",
    history: str = "",
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Build an in-memory spectra cube (schema ``gsn-dask/spectra/1``).

    ``flux``/``ivar`` are (n_star, n_pix); ``wavelength`` is vacuum Angstrom.
    ``labels`` maps label names (``teff`` K, ``logg`` dex, ``feh`` dex, ``alpha_fe`` dex)
    to per-star arrays (NaN where unknown). Missing per-star metadata become NaN.
    """
    star_arr = np.array([str(s) for s in star], dtype=object)
    n = star_arr.size
    wave = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float32).reshape(n, -1)
    ivar = np.asarray(ivar, dtype=np.float32).reshape(n, -1)
    if flux.shape != (n, wave.size) or ivar.shape != flux.shape:
        raise CubeSchemaError(
            f"flux/ivar must be (n_star={n}, n_wavelength={wave.size}); got {flux.shape} and {ivar.shape}"
        )
    data_vars: dict[str, Any] = {
        "flux": (("star", "wavelength"), flux, {"units": flux_unit, "long_name": "flux"}),
        "ivar": (
            ("star", "wavelength"),
            ivar,
            {"long_name": "inverse variance of flux; 0 = bad or missing pixel"},
        ),
    }
    meta = {"ra": ra, "dec": dec, "snr": snr, "rv_catalog": rv_catalog}
    units = {"ra": "deg", "dec": "deg", "snr": "", "rv_catalog": "km/s"}
    for name, values in meta.items():
        dtype = _STAR_VARS_FLOAT[name]
        arr = np.full(n, np.nan, dtype=dtype) if values is None else np.asarray(values, dtype=dtype).reshape(n)
        data_vars[name] = ("star", arr, {"units": units[name]})
    for lname, values in (labels or {}).items():
        arr = np.asarray(values, dtype=np.float32).reshape(n)
        data_vars[f"label_{lname}"] = ("star", arr, {"units": LABEL_UNITS.get(lname, "")})
    src = _as_str_array(source if source is not None else [""] * n, n, "source")
    data_vars["source"] = ("star", src)
    ds = xr.Dataset(
        data_vars,
        coords={
            "star": ("star", star_arr),
            "wavelength": ("wavelength", wave, {"units": "Angstrom", "medium": "vacuum"}),
        },
    )
    ds.attrs.update(
        {
            "schema": SPECTRA_SCHEMA,
            "wavelength_medium": "vacuum",
            "flux_unit": flux_unit,
            "normalised": bool(normalised),
            "resolution": resolution,
            "history": history or f"{_now()} created by gsn-dask",
        }
    )
    if attrs:
        ds.attrs.update(dict(attrs))
    return ds


def label_names(ds: xr.Dataset) -> list[str]:
    """Label names present in a cube (``label_<name>`` variables) in canonical order
    (:func:`gsn_dask.labels.canonical_order`: teff, logg, feh, alpha_fe, then the others by name): a
    zarr store lists its arrays in no fixed order, and callers hash, export and tabulate this list."""
    return canonical_order(str(v)[6:] for v in ds.data_vars if str(v).startswith("label_"))


def validate_spectra(ds: xr.Dataset) -> xr.Dataset:
    """Check a dataset against the spectra schema; raise :class:`CubeSchemaError` naming the problem."""
    if ds.attrs.get("schema") != SPECTRA_SCHEMA:
        raise CubeSchemaError(
            f"not a gsn-dask spectra cube: attrs['schema'] is {ds.attrs.get('schema')!r}, expected {SPECTRA_SCHEMA!r}"
        )
    for dim in ("star", "wavelength"):
        if dim not in ds.dims:
            raise CubeSchemaError(f"spectra cube has no '{dim}' dimension")
        if dim not in ds.coords:
            raise CubeSchemaError(f"spectra cube has no '{dim}' coordinate")
    required = {"flux": ("star", "wavelength"), "ivar": ("star", "wavelength"), "source": ("star",)}
    required.update({k: ("star",) for k in _STAR_VARS_FLOAT})
    for name, dims in required.items():
        if name not in ds.variables:
            raise CubeSchemaError(f"spectra cube is missing variable '{name}' with dims {dims}")
        if tuple(ds[name].dims) != dims:
            raise CubeSchemaError(f"variable '{name}' has dims {tuple(ds[name].dims)}, expected {dims}")
    for name in label_names(ds):
        if tuple(ds[f"label_{name}"].dims) != ("star",):
            raise CubeSchemaError(f"label variable 'label_{name}' must have dims ('star',)")
    if ds.attrs.get("wavelength_medium", "vacuum") != "vacuum":
        raise CubeSchemaError("spectra cube wavelengths must be in vacuum (attrs['wavelength_medium'])")
    for key in ("normalised",):
        if key not in ds.attrs:
            raise CubeSchemaError(f"spectra cube attrs lack '{key}'")
    w = np.asarray(ds["wavelength"].values)
    if not np.all(np.diff(w) > 0):
        raise CubeSchemaError("wavelength coordinate must increase strictly")
    stars = np.asarray(ds["star"].values)
    if len(set(stars.tolist())) != stars.size:
        raise CubeSchemaError("star ids are not unique")
    return ds


def open_spectra(path: str | Path, *, validate: bool = True) -> xr.Dataset:
    """Open a spectra cube written by :func:`write_spectra` (lazily, chunked as stored)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no spectra cube at {path}")
    try:
        ds = xr.open_zarr(path, consolidated=False)
    except Exception as exc:  # noqa: BLE001 - re-raise with context
        raise CubeSchemaError(f"{path} is not a readable zarr store: {exc}") from exc
    return validate_spectra(ds) if validate else ds


def read_block(cube_path: str | Path, start: int, stop: int) -> xr.Dataset:
    """Stars ``[start, stop)`` of a spectra cube, loaded into memory (reads only those rows;
    the cube's star index is not built), with their ``star`` and ``wavelength`` indexes."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*dtype=object.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        try:
            ds = xr.open_zarr(cube_path, consolidated=False, chunks=None, create_default_indexes=False)
        except TypeError:  # xarray < 2025.07: no create_default_indexes
            ds = xr.open_zarr(cube_path, consolidated=False, chunks=None)
        block = ds.isel(star=slice(int(start), int(stop))).load()
    return block.assign_coords(star=block["star"].values, wavelength=block["wavelength"])


def cube_chunk_size(cube: xr.Dataset) -> int:
    """Stars per stored zarr chunk of a cube opened lazily (all stars for an unchunked one)."""
    chunks = cube["flux"].chunks
    if chunks:
        return int(chunks[0][0])
    enc = cube["flux"].encoding.get("chunks") or cube["flux"].encoding.get("preferred_chunks", {}).get("star")
    if isinstance(enc, (tuple, list)):
        return int(enc[0])
    return int(enc or max(int(cube.sizes["star"]), 1))


def _string_ready(ds: xr.Dataset) -> xr.Dataset:
    """Make string variables object-dtype numpy (zarr 3 variable-length UTF-8)."""
    out = ds.copy()
    for name in list(out.variables):
        var = out[name]
        if var.dtype.kind in ("U", "S", "O", "T"):
            vals = np.array([str(v) for v in np.asarray(var.values).ravel()], dtype=object).reshape(var.shape)
            if name in out.coords:
                out = out.assign_coords({name: (var.dims, vals, var.attrs)})
            else:
                out[name] = (var.dims, vals, var.attrs)
    return out


def _chunk_for_append(n_existing: int, n_new: int, chunk_size: int) -> tuple[int, ...]:
    """Dask chunks for appended rows so that every dask chunk sits inside one zarr chunk."""
    first = (-n_existing) % chunk_size
    chunks: list[int] = []
    if first:
        chunks.append(min(first, n_new))
    rest = n_new - sum(chunks)
    while rest > 0:
        chunks.append(min(chunk_size, rest))
        rest -= chunks[-1]
    return tuple(chunks)


#: ``source`` prefixes of synthetic training spectra (the Turbospectrum grid, :mod:`gsn_dask.grid.synth`).
SYNTHETIC_SOURCE_PREFIXES = ("turbospectrum:",)


def synthetic_rows(sources: Sequence[str] | np.ndarray) -> np.ndarray:
    """Per star: whether its ``source`` names a synthetic spectrum (a Turbospectrum grid entry,
    prefix in :data:`SYNTHETIC_SOURCE_PREFIXES`, or a PHOENIX file) rather than an observed one."""
    out = []
    for s in (str(x) for x in np.asarray(sources).ravel()):
        name = s.replace("\\", "/").rsplit("/", 1)[-1]
        out.append(s.startswith(SYNTHETIC_SOURCE_PREFIXES) or "PHOENIX" in name.upper())
    return np.asarray(out, dtype=bool)


def write_spectra(
    ds: xr.Dataset,
    path: str | Path,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    append: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a spectra cube to zarr (format 3), chunked along ``star``, wavelength unchunked.

    With ``append=True`` and an existing store, new stars are appended along ``star``
    (the wavelength grid must be identical and star ids new); the stored chunk size is kept.
    """
    validate_spectra(ds)
    path = Path(path)
    ds = _string_ready(ds)
    if append and path.exists():
        old = open_spectra(path)
        if old.sizes["wavelength"] != ds.sizes["wavelength"] or not np.allclose(
            old["wavelength"].values, ds["wavelength"].values, rtol=1e-10, atol=0
        ):
            raise CubeSchemaError(f"cannot append to {path}: wavelength grids differ")
        dup = np.intersect1d(_str_list(old["star"].values), _str_list(ds["star"].values))
        if dup.size:
            raise CubeSchemaError(f"cannot append to {path}: {dup.size} star ids already present, e.g. {dup[:3].tolist()}")
        if set(old.data_vars) != set(ds.data_vars):
            raise CubeSchemaError(
                f"cannot append to {path}: variables differ ({sorted(set(old.data_vars) ^ set(ds.data_vars))})"
            )
        stored_chunk = int(old["flux"].encoding.get("chunks", (chunk_size,))[0])
        chunks = _chunk_for_append(old.sizes["star"], ds.sizes["star"], stored_chunk)
        new = ds.chunk({"star": chunks, "wavelength": -1})
        new = new.drop_vars("wavelength")
        for v in new.variables.values():
            v.encoding = {}
        history = str(old.attrs.get("history", "")) + f"\n{_now()} appended {ds.sizes['star']} stars"
        new.attrs = {**old.attrs, "history": history}
        with _quiet_object_warning():
            new.to_zarr(path, mode="a", append_dim="star", zarr_format=3, consolidated=False)
        return path
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use overwrite=True / --overwrite, or append)")
    # the zarr chunk is chunk_size even when the first write has fewer stars, so that later
    # appends keep full-size chunks (zarr allows a chunk longer than the array)
    chunk = max(int(chunk_size), 1)
    out = ds.chunk({"star": chunk, "wavelength": -1})
    for v in out.variables.values():
        v.encoding = {}
    with _quiet_object_warning():
        out.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=star_chunk_encoding(out, chunk))
    return path


def star_chunk_encoding(ds: xr.Dataset, chunk_size: int) -> dict[str, dict[str, Any]]:
    """zarr encoding that chunks every variable with a ``star`` dim by ``chunk_size`` stars
    and keeps its other dims whole (string variables included, so regions align)."""
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        if "star" in var.dims:
            enc[str(name)] = {
                "chunks": tuple(chunk_size if d == "star" else int(ds.sizes[d]) for d in var.dims)
            }
    return enc


@contextlib.contextmanager
def _quiet_object_warning():
    """Silence xarray's warning that object (string) dask arrays are loaded to infer their
    dtype: our string variables are small per-star ids, loading them is intended."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*dtype=object.*")
        yield


# ------------------------------------------------------------------------ results
#: Per-star scalar result variables: name -> (dtype, fill, attrs).
RESULT_STAR_VARS: dict[str, tuple[type, Any, dict[str, str]]] = {
    "rv": (np.float32, np.nan, {"units": "km/s", "long_name": "radial velocity (posterior median)"}),
    "rv_err": (np.float32, np.nan, {"units": "km/s", "long_name": "radial velocity, half the 16-84% range"}),
    "chi2_reduced": (np.float32, np.nan, {"long_name": "reduced chi^2 at the MAP"}),
    "acceptance": (np.float32, np.nan, {"long_name": "mean walker acceptance fraction"}),
    "tau_max": (np.float32, np.nan, {"units": "steps", "long_name": "max integrated autocorrelation time"}),
    "n_eff_min": (np.float32, np.nan, {"long_name": "min effective sample size over labels"}),
    "flag": (np.int32, 0, {"long_name": "bit mask, 0 = good; see gsn_dask.flags.Flag"}),
}
#: Per-(star, label) result variables.
RESULT_LABEL_VARS = ("median", "p16", "p84", "map")


def empty_results(
    star: Sequence[str],
    labels: Sequence[str],
    *,
    n_draws: int = 0,
    status: str = "not fitted",
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """A results dataset (schema ``gsn-dask/results/1``) for ``star`` with every value unset:
    NaN numbers, ``flag = Flag.NOT_FITTED``, ``status = status``. Fitting fills it in."""
    from .flags import Flag

    star_arr = np.array([str(s) for s in star], dtype=object)
    n, m = star_arr.size, len(labels)
    data_vars: dict[str, Any] = {}
    for name in RESULT_LABEL_VARS:
        data_vars[name] = (("star", "label"), np.full((n, m), np.nan, np.float32))
    for name, (dtype, fill, vattrs) in RESULT_STAR_VARS.items():
        data_vars[name] = ("star", np.full(n, fill, dtype), dict(vattrs))
    data_vars["flag"] = ("star", np.full(n, int(Flag.NOT_FITTED), np.int32), RESULT_STAR_VARS["flag"][2])
    data_vars["status"] = ("star", np.array([status] * n, dtype=object))
    if n_draws:
        data_vars["samples"] = (("star", "draw", "label"), np.full((n, n_draws, m), np.nan, np.float32))
    ds = xr.Dataset(
        data_vars,
        coords={"star": ("star", star_arr), "label": ("label", np.array(list(labels), dtype=object))},
    )
    ds.attrs["schema"] = RESULTS_SCHEMA
    if attrs:
        ds.attrs.update(dict(attrs))
    return ds


def validate_results(ds: xr.Dataset) -> xr.Dataset:
    """Check a dataset against the results schema; raise :class:`CubeSchemaError` naming the problem."""
    if ds.attrs.get("schema") != RESULTS_SCHEMA:
        raise CubeSchemaError(f"not a gsn-dask results cube (attrs['schema'] = {ds.attrs.get('schema')!r})")
    for name in RESULT_LABEL_VARS:
        if name not in ds or tuple(ds[name].dims) != ("star", "label"):
            raise CubeSchemaError(f"results cube lacks '{name}' with dims ('star', 'label')")
    for name in [*RESULT_STAR_VARS, "status"]:
        if name not in ds or tuple(ds[name].dims) != ("star",):
            raise CubeSchemaError(f"results cube lacks '{name}' with dims ('star',)")
    return ds


def open_results(path: str | Path) -> xr.Dataset:
    """Open a results cube (lazily) and validate it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results cube at {path}")
    return validate_results(xr.open_zarr(path, consolidated=False))


def _str_list(values: Any) -> np.ndarray:
    """Any string-like array (object, <U, numpy StringDType) as a numpy <U array."""
    return np.array([str(v) for v in np.asarray(values).ravel()])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
