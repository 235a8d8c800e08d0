"""Reading a reference (cube or catalogue table), finding its label/id/position columns and
turning star ids into comparable strings."""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..cube import RESULTS_SCHEMA, SPECTRA_SCHEMA

log = logging.getLogger(__name__)

#: Values at or below this in reference numeric columns mean "unknown" (-9999 in LAMOST, APOGEE).
MISSING_SENTINEL = -999.0

#: Auto-detected column names, compared after :func:`_norm` (lower case, no punctuation), in priority order.
LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    "teff": ("teff", "teffk", "t_eff", "teffspec", "teffadop", "teff_lasp"),
    "logg": ("logg", "loggspec", "loggcgs", "loggdex", "logg_lasp"),
    "feh": ("feh", "fe_h", "[fe/h]", "fehspec", "feh_lasp", "mh", "m_h", "[m/h]", "metallicity"),
    "alpha_fe": ("alpha_fe", "[alpha/fe]", "alphafe", "afe", "a_fe", "alpha_m", "[alpha/m]", "alpham"),
}
ID_ALIASES: tuple[str, ...] = (
    "star", "star_id", "starid", "id", "obsid", "obs_id", "apogee_id", "source_id", "objid",
    "designation", "filename", "file", "name", "object", "tmass_id",
)
RA_ALIASES: tuple[str, ...] = ("ra", "ra_deg", "radeg", "raj2000", "ra_icrs", "ra_obs", "alpha_j2000")
DEC_ALIASES: tuple[str, ...] = ("dec", "dec_deg", "decdeg", "dej2000", "decj2000", "de_icrs", "dec_icrs", "dec_obs",
                                "delta_j2000")
SNR_ALIASES: tuple[str, ...] = ("snr", "snrg", "sn_g", "snr_g", "s/n", "s_n", "sn", "snrr", "sn_r", "snr_r")
#: Templates for a label's uncertainty column, ``{c}`` = the label column name (compared normalised).
ERR_TEMPLATES: tuple[str, ...] = ("{c}_err", "{c}err", "e_{c}", "{c}_error", "err_{c}", "sigma_{c}", "{c}_sigma",
                                  "{c}_unc", "{c}_e")
#: Suffixes removed from string ids before id matching (file names vs file stems).
_ID_SUFFIXES = (".fits.gz", ".fit.gz", ".fits", ".fit", ".fz", ".gz")


# ------------------------------------------------------------------- reading references
def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (
        path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zattrs"))
    )


def read_reference(path: str | Path, *, hdu: int | str | None = None) -> pd.DataFrame | xr.Dataset:
    """Read a reference: a zarr cube (spectra or results, returned as an xarray Dataset) or a
    table (CSV/TSV, ECSV, FITS, parquet, VOTable, HDF5 ... returned as a pandas DataFrame).

    CSV and parquet are read with pandas, everything else with ``astropy.table.Table.read``
    (``hdu`` selects the FITS extension; multi-dimensional columns are dropped).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no reference at {path}")
    if _is_zarr(path):
        ds = xr.open_zarr(path, consolidated=False)
        if ds.attrs.get("schema") not in (SPECTRA_SCHEMA, RESULTS_SCHEMA):
            log.warning("%s has schema %r; reading label_<name>/median variables anyway", path, ds.attrs.get("schema"))
        return ds
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.xz")):
        return pd.read_csv(path, low_memory=False)
    if name.endswith((".tsv", ".tsv.gz")):
        return pd.read_csv(path, sep="\t", low_memory=False)
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    from astropy.table import Table

    kwargs: dict[str, Any] = {}
    if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz", ".fz")):
        kwargs["character_as_bytes"] = False
        if hdu is not None:
            kwargs["hdu"] = hdu
    elif name.endswith(".ecsv"):
        kwargs["format"] = "ascii.ecsv"
    try:
        table = Table.read(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - add context
        raise ValueError(f"cannot read reference table {path}: {exc}") from exc
    return table_to_frame(table)


def table_to_frame(table: Any) -> pd.DataFrame:
    """An astropy Table as a pandas DataFrame: multi-dimensional columns are dropped, masked
    values become NaN, byte strings are decoded."""
    keep = [n for n in table.colnames if len(table[n].shape) <= 1]
    dropped = sorted(set(table.colnames) - set(keep))
    if dropped:
        log.info("dropping %d multi-dimensional columns: %s", len(dropped), dropped[:10])
    data: dict[str, Any] = {}
    for n in keep:
        col = table[n]
        arr = np.ma.asarray(col)
        if arr.dtype.kind == "S":
            arr = np.ma.asarray(np.char.decode(arr.filled(b""), "utf-8", "replace"))
        if arr.dtype.kind in "fiu" and np.ma.is_masked(arr):
            arr = arr.astype(np.float64).filled(np.nan)
        elif np.ma.isMaskedArray(arr):
            arr = arr.filled("" if arr.dtype.kind in "US" else arr.fill_value)
        if arr.dtype.byteorder not in ("=", "|", "<"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        data[n] = np.asarray(arr)
    return pd.DataFrame(data)


def dataset_to_frame(ds: xr.Dataset) -> pd.DataFrame:
    """A gsn-dask cube as a reference table with columns ``star``, ``ra``, ``dec``, ``snr`` and
    one column per label (``label_<name>`` of a spectra cube, or ``median`` of a results cube,
    whose ``(p84 - p16)/2`` becomes ``<name>_err``)."""
    cols: dict[str, Any] = {"star": _str_values(ds["star"].values)}
    for name in ("ra", "dec", "snr"):
        if name in ds and ds[name].dims == ("star",):
            cols[name] = np.asarray(ds[name].values, dtype=np.float64)
    for v in ds.data_vars:
        v = str(v)
        if v.startswith("label_") and ds[v].dims == ("star",):
            cols[v[6:]] = np.asarray(ds[v].values, dtype=np.float64)
    if "median" in ds and "label" in ds.coords and ds["median"].dims == ("star", "label"):
        med = np.asarray(ds["median"].values, dtype=np.float64)
        has_q = "p16" in ds and "p84" in ds
        if has_q:
            half = (np.asarray(ds["p84"].values, np.float64) - np.asarray(ds["p16"].values, np.float64)) / 2
        for j, lab in enumerate(_str_values(ds["label"].values)):
            cols.setdefault(lab, med[:, j])
            if has_q:
                cols.setdefault(f"{lab}_err", half[:, j])
    return pd.DataFrame(cols)


# ------------------------------------------------------------------- column detection
def _norm(name: str) -> str:
    """Column name for matching: lower case without brackets, slashes, underscores, spaces."""
    return re.sub(r"[\[\]/()_\-\s.]", "", str(name).lower())


def _find(columns: Sequence[str], aliases: Sequence[str]) -> str | None:
    """First column whose normalised name equals an alias (in alias priority order)."""
    by_norm: dict[str, str] = {}
    for c in columns:
        by_norm.setdefault(_norm(c), c)
    for a in aliases:
        hit = by_norm.get(_norm(a))
        if hit is not None:
            return hit
    return None


def parse_mapping(text: str | Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``"teff=TEFF,logg=LOGG"`` (or a list of such strings, or a dict) as a dict."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return {str(k): str(v) for k, v in text.items()}
    parts = [text] if isinstance(text, str) else list(text)
    out: dict[str, str] = {}
    for part in parts:
        for item in str(part).split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise ValueError(f"mapping entry {item!r} is not of the form name=COLUMN")
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def detect_columns(
    columns: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    mapping: Mapping[str, str] | None = None,
    id_column: str | None = None,
) -> dict[str, str]:
    """Map our names to a table's columns: ``id``, ``ra``, ``dec``, ``snr``, each label and
    ``<label>_err``. Explicit ``mapping`` entries win (an unknown column raises ValueError);
    the rest is auto-detected from common spellings (teff/Teff/TEFF, logg/LOGG,
    feh/[Fe/H]/FE_H/M_H, alpha_fe/ALPHA_M/[alpha/Fe], ra/RA/RAJ2000, snr/snrg/SNR, ...).
    Names that are not found are left out.
    """
    columns = [str(c) for c in columns]
    mapping = dict(mapping or {})
    if id_column is not None:
        mapping["id"] = id_column
    for k, v in mapping.items():
        if v not in columns:
            raise ValueError(f"column {v!r} (for {k!r}) is not in the reference; it has {columns[:40]}")
    labels = list(labels) if labels is not None else list(LABEL_ALIASES)
    out: dict[str, str] = {}
    taken: set[str] = set(mapping.values())

    def pick(key: str, aliases: Sequence[str]) -> None:
        if key in mapping:
            out[key] = mapping[key]
            return
        hit = _find([c for c in columns if c not in taken], aliases)
        if hit is not None:
            out[key] = hit
            taken.add(hit)

    for lab in labels:
        pick(lab, LABEL_ALIASES.get(lab, (lab,)))
    for lab in labels:
        key = f"{lab}_err"
        if key in mapping:
            out[key] = mapping[key]
        elif lab in out:
            c = out[lab]
            hit = _find([x for x in columns if x not in taken], [t.format(c=c) for t in ERR_TEMPLATES])
            if hit is not None:
                out[key] = hit
                taken.add(hit)
    pick("ra", RA_ALIASES)
    pick("dec", DEC_ALIASES)
    pick("snr", SNR_ALIASES)
    if "id" in mapping:
        out["id"] = mapping["id"]
    # any other explicit entries (e.g. custom label names) pass through
    for k, v in mapping.items():
        out.setdefault(k, v)
    return out


def id_candidates(columns: Sequence[str]) -> list[str]:
    """Columns that look like star ids, in priority order."""
    by_norm: dict[str, str] = {}
    for c in columns:
        by_norm.setdefault(_norm(c), str(c))
    return [by_norm[_norm(a)] for a in ID_ALIASES if _norm(a) in by_norm]


# ------------------------------------------------------------------------- helpers
def _str_values(values: Any) -> list[str]:
    return [str(v) for v in np.asarray(values).ravel()]


def canonical_ids(values: Any) -> np.ndarray:
    """Ids as comparable strings: integral numbers without ``.0``, whitespace stripped, file
    suffixes (.fits, .fits.gz, ...) removed; missing values become ``""``."""
    s = values.reset_index(drop=True) if isinstance(values, pd.Series) else pd.Series(np.asarray(values).ravel())
    if pd.api.types.is_integer_dtype(s):  # exact, also beyond 2**53 (Gaia source_id)
        out = s.astype("Int64").astype(object).to_numpy()
        return np.array(["" if v is pd.NA else str(v) for v in out], dtype=str)
    if pd.api.types.is_float_dtype(s):
        f = s.to_numpy(dtype=np.float64, na_value=np.nan)
        res = [
            "" if not np.isfinite(x) else (str(int(x)) if float(x).is_integer() else repr(float(x)))
            for x in f
        ]
        return np.array(res, dtype=str)
    out = []
    for v in s.tolist():
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            out.append("")
            continue
        t = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        t = t.strip()
        low = t.lower()
        for suf in _ID_SUFFIXES:
            if low.endswith(suf):
                t = t[: -len(suf)]
                break
        if t.lower() in ("nan", "none", "<na>"):
            t = ""
        out.append(t)
    return np.array(out, dtype=str)


def _numeric(series: pd.Series) -> np.ndarray:
    """A reference column as float64 with sentinels (<= -999) and non-numbers as NaN."""
    arr = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    arr = arr.copy()
    arr[arr <= MISSING_SENTINEL] = np.nan
    return arr


