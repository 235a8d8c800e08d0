"""Validation of fitted labels against reference labels: cross-match, bias/scatter
tables in S/N bins, posterior calibration, and a report (tables, figures, markdown).

The reference is either a gsn-dask cube (spectra cube ``label_<name>`` variables, or
another results cube's ``median``), matched by star id, or a catalogue table (CSV, ECSV,
FITS, parquet, ...) matched by an id column or by sky position (astropy
``SkyCoord.match_to_catalog_sky``). Results cubes carry no ``ra``/``dec``/``snr``; those
come from the spectra cube that was fitted (``cube=``), or from the reference.

Conventions: ``diff = ours - reference``; ``bias`` = median(diff); ``std`` = standard
deviation of diff; ``mad_std`` = 1.4826 x median absolute deviation of diff; the outlier
fraction counts ``|diff| > threshold`` (teff 500 K, logg 0.5 dex, feh 0.3 dex, alpha_fe
0.2 dex by default). Calibration: ``sigma_post = (p84 - p16) / 2``, ``z = diff /
sigma_post`` and, where the reference has uncertainties, ``z_tot = diff /
sqrt(sigma_post^2 + sigma_ref^2)``; for a calibrated posterior ``frac_in_68`` (reference
inside [p16, p84]) is about 0.68 and the robust std of z is about 1.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .cube import LABEL_UNITS, RESULTS_SCHEMA, SPECTRA_SCHEMA
from .flags import Flag

log = logging.getLogger(__name__)

#: 1.4826 x MAD is the standard deviation of a Gaussian.
MAD_TO_STD = 1.4826
#: Default outlier thresholds on |ours - reference| (label units).
DEFAULT_THRESHOLDS: dict[str, float] = {"teff": 500.0, "logg": 0.5, "feh": 0.3, "alpha_fe": 0.2}
#: Default S/N bin edges: <10, 10-30, 30-100, >100 (plus "all").
DEFAULT_SNR_BINS: tuple[float, ...] = (10.0, 30.0, 100.0)
#: Default sky cross-match radius (arcsec).
DEFAULT_RADIUS_ARCSEC = 3.0
#: Name of the bin holding every selected star.
ALL_BIN = "all"
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


# ----------------------------------------------------------------------------- report
@dataclass
class ValidationReport:
    """The outcome of :func:`validate`.

    ``matched``: xarray Dataset over (star, label) of every cross-matched result star with
    ``ours``, ``ref``, ``ref_err``, ``p16``, ``p84``, ``sigma_post``, ``diff``, ``z``, ``z_tot``,
    ``in68`` and per star ``snr``, ``flag``, ``status``, ``ref_id``, ``sep_arcsec``, ``selected``
    (passes the flag filter). ``stats``: one row per (label, snr_bin) incl. ``all``.
    ``calibration``: one row per label over all selected stars.
    """

    matched: xr.Dataset
    stats: pd.DataFrame
    calibration: pd.DataFrame
    labels: list[str]
    snr_bins: tuple[float, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The statistics as a fixed-width text table."""
        return format_stats(self.stats, self.calibration)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.table()


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


def robust_std(x: np.ndarray) -> float:
    """1.4826 x median absolute deviation of the finite values (NaN if none)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan")
    return float(MAD_TO_STD * np.median(np.abs(x - np.median(x))))


def snr_bin_names(edges: Sequence[float]) -> list[str]:
    """Names of the S/N bins for ``edges``: e.g. (10, 30, 100) -> <10, 10-30, 30-100, >100."""
    e = [float(x) for x in edges]
    fmt = lambda x: f"{x:g}"  # noqa: E731
    if not e:
        return []
    names = [f"<{fmt(e[0])}"]
    names += [f"{fmt(a)}-{fmt(b)}" for a, b in zip(e[:-1], e[1:])]
    names.append(f">{fmt(e[-1])}")
    return names


def assign_snr_bins(snr: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin name of each S/N value (bins are [lo, hi)); ``""`` for NaN S/N."""
    snr = np.asarray(snr, dtype=np.float64)
    out = np.full(snr.shape, "", dtype=object)
    if not len(edges):
        return out
    names = np.array(snr_bin_names(edges), dtype=object)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), snr, side="right")
    ok = np.isfinite(snr)
    out[ok] = names[idx[ok]]
    return out


# ------------------------------------------------------------------------- matching
def _per_star(source: xr.Dataset | None, name: str, stars: np.ndarray) -> np.ndarray | None:
    """``source[name]`` (dims star) reindexed to ``stars``; None if absent."""
    if source is None or name not in source or source[name].dims != ("star",):
        return None
    keys = canonical_ids(source["star"].values)
    idx = pd.Index(keys).get_indexer(canonical_ids(stars)) if pd.Index(keys).is_unique else None
    if idx is None:
        raise ValueError("the cube's star ids are not unique")
    vals = np.asarray(source[name].values, dtype=np.float64)
    out = np.full(len(stars), np.nan)
    ok = idx >= 0
    out[ok] = vals[idx[ok]]
    return out


def match_by_id(our_ids: Any, ref_ids: Any) -> np.ndarray:
    """For each of our stars, the row of the reference with the same (canonical) id, or -1.
    Duplicated reference ids: the first row is used."""
    ours = canonical_ids(our_ids)
    ref = canonical_ids(ref_ids)
    first = pd.Series(np.arange(ref.size)).groupby(ref, sort=False).first()
    first = first[first.index != ""]
    idx = pd.Index(first.index).get_indexer(ours)
    out = np.where(idx >= 0, first.to_numpy()[np.clip(idx, 0, None)], -1)
    out[ours == ""] = -1
    return out.astype(np.int64)


def match_by_sky(
    ra: np.ndarray, dec: np.ndarray, ref_ra: np.ndarray, ref_dec: np.ndarray, radius_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference row within ``radius_arcsec`` for each (ra, dec) in degrees (ICRS):
    returns (row index or -1, separation in arcsec or NaN)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ra, dec = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    ref_ra, ref_dec = np.asarray(ref_ra, np.float64), np.asarray(ref_dec, np.float64)
    idx = np.full(ra.size, -1, np.int64)
    sep = np.full(ra.size, np.nan)
    ok = np.isfinite(ra) & np.isfinite(dec)
    rok = np.flatnonzero(np.isfinite(ref_ra) & np.isfinite(ref_dec))
    if not ok.any() or rok.size == 0:
        return idx, sep
    ours = SkyCoord(ra=ra[ok] * u.deg, dec=dec[ok] * u.deg)
    cat = SkyCoord(ra=ref_ra[rok] * u.deg, dec=ref_dec[rok] * u.deg)
    j, d2d, _ = ours.match_to_catalog_sky(cat)
    d = d2d.to_value(u.arcsec)
    near = d <= radius_arcsec
    i_ok = np.flatnonzero(ok)
    idx[i_ok[near]] = rok[j[near]]
    sep[i_ok[near]] = d[near]
    return idx, sep


# ------------------------------------------------------------------------- statistics
def _label_stats(diff: np.ndarray, threshold: float) -> dict[str, float]:
    d = diff[np.isfinite(diff)]
    n = int(d.size)
    if n == 0:
        return {"n": 0, "bias": np.nan, "mean": np.nan, "std": np.nan, "mad_std": np.nan, "outlier_frac": np.nan}
    return {
        "n": n,
        "bias": float(np.median(d)),
        "mean": float(np.mean(d)),
        "std": float(np.std(d, ddof=1)) if n > 1 else np.nan,
        "mad_std": robust_std(d),
        "outlier_frac": float(np.mean(np.abs(d) > threshold)) if np.isfinite(threshold) else np.nan,
    }


def _calib_stats(diff: np.ndarray, ref: np.ndarray, p16: np.ndarray, p84: np.ndarray,
                 z: np.ndarray, z_tot: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(diff) & np.isfinite(p16) & np.isfinite(p84) & np.isfinite(z)
    n = int(ok.sum())
    okt = ok & np.isfinite(z_tot)
    out = {
        "n_calib": n,
        "frac_in_68": float(np.mean((ref[ok] >= p16[ok]) & (ref[ok] <= p84[ok]))) if n else np.nan,
        "z_median": float(np.median(z[ok])) if n else np.nan,
        "z_std": float(np.std(z[ok], ddof=1)) if n > 1 else np.nan,
        "z_robust_std": robust_std(z[ok]),
        "n_ref_err": int(okt.sum()),
        "frac_in_68_tot": float(np.mean(np.abs(z_tot[okt]) <= 1.0)) if okt.any() else np.nan,
        "z_tot_robust_std": robust_std(z_tot[okt]),
    }
    return out


# ------------------------------------------------------------------------- validate
def validate(
    results: xr.Dataset,
    reference: xr.Dataset | pd.DataFrame,
    *,
    labels: Sequence[str] | None = None,
    snr: xr.DataArray | np.ndarray | pd.Series | None = None,
    cube: xr.Dataset | None = None,
    match: str = "auto",
    id_column: str | None = None,
    columns: Mapping[str, str] | str | None = None,
    radius_arcsec: float = DEFAULT_RADIUS_ARCSEC,
    snr_bins: Sequence[float] = DEFAULT_SNR_BINS,
    good_only: bool = False,
    exclude_flags: int = int(Flag.NOT_FITTED),
    thresholds: Mapping[str, float] | None = None,
    estimate: str = "median",
    use_ref_errors: bool = True,
) -> ValidationReport:
    """Compare a results cube with reference labels.

    Parameters
    ----------
    results : results cube (``cube.open_results``); only ``median``/``map``/``p16``/``p84``,
        ``flag`` and ``status`` are loaded.
    reference : a spectra cube (``label_<name>``), another results cube (``median``), or a
        table (DataFrame) with one column per label (auto-detected or given by ``columns``).
    labels : labels to compare (default: those in both results and reference).
    snr : S/N per result star (DataArray over ``star``, or an array in results order). Default:
        ``cube['snr']``, else the reference's S/N column (e.g. LAMOST ``snrg``).
    cube : the spectra cube that was fitted: S/N and ra/dec (for ``match="sky"``) come from it.
    match : ``"id"`` (results ``star`` == reference id column), ``"sky"`` (nearest within
        ``radius_arcsec``, positions of ``cube``), or ``"auto"`` (id if any id matches, else sky).
    id_column : reference id column (default: ``star`` of a cube, or the best of obsid/id/...).
    columns : explicit mapping ``{label: column}`` (also ``id``, ``ra``, ``dec``, ``snr``,
        ``<label>_err``), or ``"teff=TEFF,logg=LOGG"``.
    radius_arcsec : sky match radius in arcsec.
    snr_bins : S/N bin edges; bins are [lo, hi), plus ``all``.
    good_only : keep only ``flag == 0``; otherwise drop stars with any bit of ``exclude_flags``
        (default NOT_FITTED).
    thresholds : outlier thresholds per label (default :data:`DEFAULT_THRESHOLDS`).
    estimate : ``"median"`` (posterior median) or ``"map"`` as "ours".
    use_ref_errors : include reference uncertainties (``<label>_err``) in ``z_tot``.
    """
    if estimate not in ("median", "map"):
        raise ValueError(f"estimate must be 'median' or 'map', got {estimate!r}")
    if match not in ("auto", "id", "sky"):
        raise ValueError(f"match must be 'auto', 'id' or 'sky', got {match!r}")
    for name in ("median", "p16", "p84", "flag"):
        if name not in results:
            raise ValueError(f"results have no {name!r} variable (not a gsn-dask results cube?)")
    mapping = parse_mapping(columns)
    snr_bins = tuple(sorted(float(x) for x in snr_bins))
    our_labels = _str_values(results["label"].values)
    our_stars = np.array(_str_values(results["star"].values), dtype=object)

    # --- reference as a table
    ref_is_cube = isinstance(reference, xr.Dataset)
    ref_df = dataset_to_frame(reference) if ref_is_cube else reference.reset_index(drop=True)
    if ref_is_cube and id_column is None and "id" not in mapping:
        id_column = "star"
    want = list(labels) if labels is not None else our_labels
    missing_ours = [lab for lab in want if lab not in our_labels]
    if missing_ours:
        raise ValueError(f"labels {missing_ours} are not in the results (it has {our_labels})")
    cols = detect_columns(list(ref_df.columns), want, mapping=mapping, id_column=id_column)
    if labels is None:
        use = [lab for lab in want if lab in cols]
        empty = [lab for lab in use if not np.isfinite(_numeric(ref_df[cols[lab]])).any()]
        if empty:
            log.warning("reference columns for %s hold no values; these labels are skipped", empty)
            use = [lab for lab in use if lab not in empty]
        if not use:
            raise ValueError(
                f"no reference column found for any of the labels {want}; reference columns: "
                f"{list(ref_df.columns)[:40]} (use columns=/--columns teff=COL,...)"
            )
    else:
        absent = [lab for lab in want if lab not in cols]
        if absent:
            raise ValueError(f"no reference column for labels {absent} (use columns=/--columns {absent[0]}=COL)")
        use = want
    log.info("reference columns: %s", cols)

    # --- cross-match
    n_res = our_stars.size
    mode = match
    ref_idx = np.full(n_res, -1, np.int64)
    sep = np.full(n_res, np.nan)
    id_col_used: str | None = None
    if mode in ("auto", "id"):
        cands = [cols["id"]] if "id" in cols else id_candidates(list(ref_df.columns))
        if mode == "id" and not cands:
            raise ValueError(
                "match='id' needs an id column (id_column=/--id-column); "
                f"reference columns: {list(ref_df.columns)[:40]}"
            )
        best, best_n = None, -1
        for c in cands:
            idx = match_by_id(our_stars, ref_df[c])
            n_ok = int((idx >= 0).sum())
            if n_ok > best_n:
                best, best_n, ref_idx = c, n_ok, idx
        id_col_used = best
        if mode == "auto":
            mode = "id" if best_n > 0 else "sky"
        if mode == "id":
            log.info("matched %d of %d stars by id column %r", best_n, n_res, best)
    if mode == "sky":
        ra = _per_star(cube, "ra", our_stars)
        dec = _per_star(cube, "dec", our_stars)
        if ra is None and "ra" in results and "dec" in results:
            ra = np.asarray(results["ra"].values, np.float64)
            dec = np.asarray(results["dec"].values, np.float64)
        if ra is None or "ra" not in cols or "dec" not in cols:
            why = ("results carry no ra/dec: pass the fitted spectra cube (cube=/--cube)" if ra is None
                   else f"the reference has no ra/dec columns (columns: {list(ref_df.columns)[:40]})")
            if match == "auto":
                why = "no star id matched the reference, and " + why
            raise ValueError(f"cannot cross-match by sky position: {why}")
        ref_idx, sep = match_by_sky(ra, dec, _numeric(ref_df[cols["ra"]]), _numeric(ref_df[cols["dec"]]),
                                    radius_arcsec)
        id_col_used = cols.get("id")
        log.info("matched %d of %d stars within %g arcsec", int((ref_idx >= 0).sum()), n_res, radius_arcsec)

    hit = np.flatnonzero(ref_idx >= 0)
    if hit.size == 0:
        raise ValueError(
            f"no result star matched the reference (match={mode!r}"
            + (f", id column {id_col_used!r}" if mode == "id" else f", radius {radius_arcsec} arcsec")
            + f"; e.g. result ids {our_stars[:3].tolist()})"
        )
    rows = ref_idx[hit]

    # --- assemble the matched dataset
    lab_pos = [our_labels.index(lab) for lab in use]
    sub = results[["median", "p16", "p84", "flag"] + [v for v in ("map", "status") if v in results]]
    sub = sub.isel(star=hit, label=lab_pos).load()
    if estimate not in sub:
        raise ValueError(f"results have no {estimate!r} variable")
    ours = np.asarray(sub[estimate].values, np.float64)
    p16 = np.asarray(sub["p16"].values, np.float64)
    p84 = np.asarray(sub["p84"].values, np.float64)
    ref = np.column_stack([_numeric(ref_df[cols[lab]])[rows] for lab in use])
    ref_err = np.column_stack([
        np.abs(_numeric(ref_df[cols[f"{lab}_err"]])[rows]) if (use_ref_errors and f"{lab}_err" in cols)
        else np.full(rows.size, np.nan)
        for lab in use
    ])
    stars = our_stars[hit]
    # S/N: explicit > cube > reference
    snr_source = "none"
    snr_v = None
    if snr is not None:
        if isinstance(snr, xr.DataArray) and "star" in snr.dims:
            snr_v = _per_star(snr.to_dataset(name="snr"), "snr", stars)
        else:
            arr = np.asarray(snr, dtype=np.float64).ravel()
            if arr.size != n_res:
                raise ValueError(f"snr has {arr.size} values, results have {n_res} stars")
            snr_v = arr[hit]
        snr_source = "argument"
    if snr_v is None and cube is not None:
        snr_v = _per_star(cube, "snr", stars)
        snr_source = "cube" if snr_v is not None else snr_source
    if (snr_v is None or not np.isfinite(snr_v).any()) and "snr" in cols:
        snr_v = _numeric(ref_df[cols["snr"]])[rows]
        snr_source = f"reference column {cols['snr']!r}"
    if snr_v is None:
        snr_v = np.full(rows.size, np.nan)
    snr_v = np.where(np.isfinite(snr_v) & (snr_v >= 0), snr_v, np.nan)

    flag = np.asarray(sub["flag"].values).astype(np.int64)
    selected = (flag == 0) if good_only else ((flag & int(exclude_flags)) == 0)
    diff = ours - ref
    sigma_post = (p84 - p16) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma_post > 0, diff / sigma_post, np.nan)
        tot = np.sqrt(sigma_post**2 + ref_err**2)
        z_tot = np.where(tot > 0, diff / tot, np.nan)
    in68 = (ref >= p16) & (ref <= p84)
    ref_ids = (canonical_ids(ref_df[id_col_used])[rows] if id_col_used is not None else rows.astype(str))
    status = np.array(_str_values(sub["status"].values), dtype=object) if "status" in sub else np.full(rows.size, "")
    SL = ("star", "label")
    units = [LABEL_UNITS.get(lab, "") for lab in use]
    matched = xr.Dataset(
        {
            "ours": (SL, ours, {"long_name": f"our label ({estimate})"}),
            "ref": (SL, ref, {"long_name": "reference label"}),
            "ref_err": (SL, ref_err, {"long_name": "reference uncertainty (NaN if unknown)"}),
            "p16": (SL, p16, {"long_name": "posterior 16th percentile"}),
            "p84": (SL, p84, {"long_name": "posterior 84th percentile"}),
            "diff": (SL, diff, {"long_name": "ours - reference"}),
            "sigma_post": (SL, sigma_post, {"long_name": "(p84 - p16) / 2"}),
            "z": (SL, z, {"long_name": "diff / sigma_post"}),
            "z_tot": (SL, z_tot, {"long_name": "diff / sqrt(sigma_post^2 + ref_err^2)"}),
            "in68": (SL, in68, {"long_name": "reference inside [p16, p84]"}),
            "snr": ("star", snr_v, {"long_name": f"S/N ({snr_source})"}),
            "snr_bin": ("star", assign_snr_bins(snr_v, snr_bins)),
            "flag": ("star", flag.astype(np.int32)),
            "status": ("star", status),
            "selected": ("star", selected, {"long_name": "passes the flag filter"}),
            "ref_id": ("star", np.asarray(ref_ids, dtype=object)),
            "ref_row": ("star", rows),
            "sep_arcsec": ("star", sep[hit], {"units": "arcsec"}),
        },
        coords={
            "star": ("star", stars),
            "label": ("label", np.array(use, dtype=object)),
            "unit": ("label", np.array(units, dtype=object)),
        },
    )
    settings = {
        "match": mode,
        "id_column": id_col_used,
        "radius_arcsec": float(radius_arcsec) if mode == "sky" else None,
        "columns": cols,
        "estimate": estimate,
        "good_only": bool(good_only),
        "exclude_flags": int(exclude_flags),
        "snr_source": snr_source,
        "n_results": int(n_res),
        "n_reference": int(len(ref_df)),
        "n_matched": int(hit.size),
        "n_selected": int(selected.sum()),
        "thresholds": {lab: float((thresholds or {}).get(lab, DEFAULT_THRESHOLDS.get(lab, np.nan))) for lab in use},
        "use_ref_errors": bool(use_ref_errors),
        "label_systematics": str(results.attrs.get("label_systematics", "null")),
    }
    matched.attrs.update({k: str(v) for k, v in settings.items()})
    stats, calibration = compute_stats(matched, snr_bins=snr_bins, thresholds=settings["thresholds"])
    return ValidationReport(matched=matched, stats=stats, calibration=calibration, labels=list(use),
                            snr_bins=snr_bins, settings=settings)


def compute_stats(
    matched: xr.Dataset,
    *,
    snr_bins: Sequence[float] = DEFAULT_SNR_BINS,
    thresholds: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Statistics of a matched dataset (from :func:`validate`) over its ``selected`` stars.

    Returns ``stats`` (rows label x snr_bin, bins in order then ``all``; columns label,
    unit, snr_bin, snr_lo, snr_hi, n, bias, mean, std, mad_std, outlier_threshold,
    outlier_frac, frac_in_68, z_robust_std) and ``calibration`` (one row per label: n_calib,
    frac_in_68, z_median, z_std, z_robust_std, n_ref_err, frac_in_68_tot, z_tot_robust_std).
    """
    thresholds = {**DEFAULT_THRESHOLDS, **dict(thresholds or {})}
    sel = np.asarray(matched["selected"].values, bool)
    snr = np.asarray(matched["snr"].values, np.float64)
    names = snr_bin_names(snr_bins)
    edges = [-np.inf, *snr_bins, np.inf]
    bins: list[tuple[str, float, float, np.ndarray]] = []
    for k, name in enumerate(names):
        lo, hi = edges[k], edges[k + 1]
        bins.append((name, lo, hi, sel & (snr >= lo) & (snr < hi)))
    bins.append((ALL_BIN, np.nan, np.nan, sel))
    rows, calib = [], []
    labels = _str_values(matched["label"].values)
    for j, lab in enumerate(labels):
        diff = np.asarray(matched["diff"].values[:, j], np.float64)
        ref = np.asarray(matched["ref"].values[:, j], np.float64)
        p16 = np.asarray(matched["p16"].values[:, j], np.float64)
        p84 = np.asarray(matched["p84"].values[:, j], np.float64)
        z = np.asarray(matched["z"].values[:, j], np.float64)
        z_tot = np.asarray(matched["z_tot"].values[:, j], np.float64)
        thr = float(thresholds.get(lab, np.nan))
        unit = LABEL_UNITS.get(lab, "")
        for name, lo, hi, m in bins:
            st = _label_stats(diff[m], thr)
            cs = _calib_stats(diff[m], ref[m], p16[m], p84[m], z[m], z_tot[m])
            rows.append({"label": lab, "unit": unit, "snr_bin": name,
                         "snr_lo": lo if np.isfinite(lo) else np.nan, "snr_hi": hi if np.isfinite(hi) else np.nan,
                         **st, "outlier_threshold": thr,
                         "frac_in_68": cs["frac_in_68"], "z_robust_std": cs["z_robust_std"]})
        calib.append({"label": lab, "unit": unit, **_calib_stats(diff[sel], ref[sel], p16[sel], p84[sel],
                                                                 z[sel], z_tot[sel])})
    cols = ["label", "unit", "snr_bin", "snr_lo", "snr_hi", "n", "bias", "mean", "std", "mad_std",
            "outlier_threshold", "outlier_frac", "frac_in_68", "z_robust_std"]
    stats = pd.DataFrame(rows, columns=cols)
    stats["n"] = stats["n"].astype(np.int64)
    return stats, pd.DataFrame(calib)


# ------------------------------------------------------------------------- output
def _fmt(x: float, lab: str, kind: str = "value") -> str:
    if x is None or not np.isfinite(x):
        return "-"
    if kind == "frac":
        return f"{100 * x:.1f}%"
    if kind == "z":
        return f"{x:.2f}"
    return f"{x:.0f}" if lab == "teff" else f"{x:.3f}"


def _stats_rows(stats: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["label", "S/N", "N", "bias", "std", "MAD std", "outliers", "in 68%", "z rstd"]
    body = []
    for r in stats.itertuples(index=False):
        lab = str(r.label)
        body.append([
            f"{lab} [{r.unit}]" if r.unit else lab, str(r.snr_bin), str(int(r.n)),
            _fmt(r.bias, lab), _fmt(r.std, lab), _fmt(r.mad_std, lab),
            _fmt(r.outlier_frac, lab, "frac"), _fmt(r.frac_in_68, lab, "frac"), _fmt(r.z_robust_std, lab, "z"),
        ])
    return head, body


def _calib_rows(calibration: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["label", "N", "in 68%", "z median", "z std", "z rstd", "N ref err", "in 68% (tot)", "z_tot rstd"]
    body = []
    for r in calibration.itertuples(index=False):
        lab = str(r.label)
        body.append([lab, str(int(r.n_calib)), _fmt(r.frac_in_68, lab, "frac"), _fmt(r.z_median, lab, "z"),
                     _fmt(r.z_std, lab, "z"), _fmt(r.z_robust_std, lab, "z"), str(int(r.n_ref_err)),
                     _fmt(r.frac_in_68_tot, lab, "frac"), _fmt(r.z_tot_robust_std, lab, "z")])
    return head, body


def _text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))
    out = [line, "-" * len(line)]
    for b in body:
        out.append("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))))
    return "\n".join(out)


def _md_table(head: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(out)


def format_stats(stats: pd.DataFrame, calibration: pd.DataFrame | None = None) -> str:
    """The statistics (and calibration) as fixed-width text tables (diff = ours - reference)."""
    text = "Bias = median(ours - ref), std, MAD std = 1.4826 MAD; outliers: |diff| > threshold\n"
    text += _text_table(*_stats_rows(stats))
    if calibration is not None and len(calibration):
        text += "\n\nPosterior calibration (all S/N): fraction of reference values inside [p16, p84],\n"
        text += "z = diff / sigma_post (sigma_post = (p84-p16)/2), z_tot includes the reference uncertainty\n"
        text += _text_table(*_calib_rows(calibration))
    return text


def _matched_frame(matched: xr.Dataset) -> pd.DataFrame:
    """One row per matched star, one column per (quantity, label)."""
    cols: dict[str, Any] = {"star": _str_values(matched["star"].values)}
    for v in ("ref_id", "sep_arcsec", "snr", "snr_bin", "flag", "status", "selected"):
        cols[v] = np.asarray(matched[v].values)
    labels = _str_values(matched["label"].values)
    for v in ("ours", "ref", "ref_err", "p16", "p84", "diff", "z"):
        for j, lab in enumerate(labels):
            cols[f"{v}_{lab}"] = np.asarray(matched[v].values[:, j])
    return pd.DataFrame(cols)


def _write_table(df: pd.DataFrame, stem: Path, meta: Mapping[str, Any]) -> list[Path]:
    from astropy.table import Table

    csv = stem.with_suffix(".csv")
    df.to_csv(csv, index=False)
    ecsv = stem.with_suffix(".ecsv")
    clean = df.copy()
    for c in clean.columns:
        if clean[c].dtype == object or str(clean[c].dtype) in ("str", "string"):
            clean[c] = clean[c].astype(str)
    t = Table.from_pandas(clean)
    t.meta.update({k: (v if isinstance(v, (int, float, str, bool, dict, list, type(None))) else str(v))
                   for k, v in meta.items()})
    t.write(ecsv, format="ascii.ecsv", overwrite=True)
    return [csv, ecsv]


def write_report(report: ValidationReport, out_dir: str | Path, *, figures: bool = True,
                 formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write the report to ``out_dir``: ``stats.csv/.ecsv``, ``calibration.csv/.ecsv``,
    ``matched.csv`` (one row per matched star), figures (``one_to_one``, ``kiel``,
    ``residuals_snr``, ``calibration``; PNG and PDF) and ``report.md``. Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"diff": "ours - reference", **report.settings}
    written: list[Path] = []
    written += _write_table(report.stats, out / "stats", meta)
    written += _write_table(report.calibration, out / "calibration", meta)
    mpath = out / "matched.csv"
    _matched_frame(report.matched).to_csv(mpath, index=False)
    written.append(mpath)
    fig_paths: dict[str, list[Path]] = {}
    if figures:
        from . import plots

        fig_paths = plots.save_all(report, out, formats=formats)
        for paths in fig_paths.values():
            written += paths
    md = out / "report.md"
    md.write_text(report_markdown(report, fig_paths, out))
    written.append(md)
    return written


def _systematics_lines(text: str | None) -> list[str]:
    """Markdown lines describing the per-label systematics the fit folded into [p16, p84]
    (results attrs ``label_systematics``, JSON)."""
    import json

    try:
        rec = json.loads(text) if text else None
    except (TypeError, json.JSONDecodeError):
        rec = None
    if not rec or not rec.get("sigma"):
        return ["The intervals are statistical only (no label systematics in the model, or switched off)."]
    sig = rec["sigma"]
    lines = ["The fit folded each label's systematic error, measured in the model's training cross-validation, "
             "into [p16, p84] in quadrature; overall: "
             + ", ".join(f"{k} {v:.3g}" for k, v in sig.items()) + "."]
    b = rec.get("binned")
    if b:
        names = list(b["sigma"])
        e = b["edges"]
        head = [f"{b['by']} bin (fit)", *names]
        body = [[f"{e[i]:.0f} - {e[i + 1]:.0f}", *(f"{b['sigma'][n][i]:.3g}" for n in names)] for i in range(len(e) - 1)]
        lines += ["", _md_table(head, body)]
    return lines


def report_markdown(report: ValidationReport, fig_paths: Mapping[str, Sequence[Path]] | None = None,
                    out_dir: Path | None = None) -> str:
    """The markdown summary: settings, the statistics and calibration tables, figure links."""
    s = report.settings
    lines = ["# gsn-dask validation report", ""]
    how = (f"by id (reference column `{s.get('id_column')}`)" if s.get("match") == "id"
           else f"by sky position within {s.get('radius_arcsec')} arcsec")
    flt = "flag == 0" if s.get("good_only") else f"flag & {s.get('exclude_flags')} == 0 (NOT_FITTED excluded)"
    lines += [
        f"- results: {s.get('n_results')} stars; reference: {s.get('n_reference')} rows",
        f"- matched {how}: {s.get('n_matched')} stars; selected ({flt}): {s.get('n_selected')}",
        f"- ours = posterior {s.get('estimate')}; diff = ours - reference; S/N from {s.get('snr_source')}",
        f"- labels: {', '.join(report.labels)}; reference columns: "
        + ", ".join(f"{k}=`{v}`" for k, v in (s.get("columns") or {}).items()),
        f"- outlier thresholds: " + ", ".join(f"{k} {v:g}" for k, v in (s.get("thresholds") or {}).items()),
        "",
        "## Bias and scatter",
        "",
        "bias = median(diff); std; MAD std = 1.4826 x median |diff - median|; outliers = |diff| > threshold; "
        "in 68% = reference inside [p16, p84]; z rstd = robust std of diff / ((p84-p16)/2).",
        "",
        _md_table(*_stats_rows(report.stats)),
        "",
        "## Posterior calibration (all S/N)",
        "",
        "A calibrated posterior has about 68% of the reference values inside [p16, p84] and a robust "
        "std of z near 1 (z_tot also includes the reference uncertainty, where the reference has one).",
        *_systematics_lines(s.get("label_systematics")),
        "",
        _md_table(*_calib_rows(report.calibration)),
        "",
        "Tables: [stats.csv](stats.csv), [stats.ecsv](stats.ecsv), [calibration.csv](calibration.csv), "
        "[calibration.ecsv](calibration.ecsv), [matched.csv](matched.csv)",
    ]
    if fig_paths:
        lines += ["", "## Figures", ""]
        titles = {"one_to_one": "One-to-one and residuals", "kiel": "Kiel diagram (reference | ours)",
                  "residuals_snr": "Residuals vs S/N", "calibration": "Posterior calibration (z)"}
        for key, paths in fig_paths.items():
            if not paths:
                continue
            rel = [p.relative_to(out_dir) if out_dir is not None else p for p in paths]
            png = next((r for r in rel if str(r).endswith(".png")), rel[0])
            others = ", ".join(f"[{Path(r).suffix[1:].upper()}]({r})" for r in rel)
            lines += [f"### {titles.get(key, key)}", "", f"![{key}]({png})", "", others, ""]
    return "\n".join(lines) + "\n"
