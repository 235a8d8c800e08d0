"""Cross-matching result stars with reference rows: by (canonical) star id or by sky position."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .reference import _numeric, canonical_ids, id_candidates

log = logging.getLogger(__name__)

#: Default sky cross-match radius (arcsec).
DEFAULT_RADIUS_ARCSEC = 3.0


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




@dataclass(frozen=True)
class CrossMatch:
    """Result of :func:`cross_match`: for each result star the reference row (-1: none) and the
    separation in arcsec (NaN for an id match), the mode used and the reference id column."""

    ref_idx: np.ndarray
    sep_arcsec: np.ndarray
    mode: str
    id_column: str | None


def _match_ids(our_stars: np.ndarray, ref_df: pd.DataFrame, cols: Mapping[str, str], match: str
               ) -> tuple[np.ndarray, str | None, int]:
    """Try each candidate id column; returns (rows, best column, number matched)."""
    cands = [cols["id"]] if "id" in cols else id_candidates(list(ref_df.columns))
    if match == "id" and not cands:
        raise ValueError(
            "match='id' needs an id column (id_column=/--id-column); "
            f"reference columns: {list(ref_df.columns)[:40]}"
        )
    ref_idx = np.full(our_stars.size, -1, np.int64)
    best, best_n = None, -1
    for c in cands:
        idx = match_by_id(our_stars, ref_df[c])
        n_ok = int((idx >= 0).sum())
        if n_ok > best_n:
            best, best_n, ref_idx = c, n_ok, idx
    return ref_idx, best, best_n


def _sky_positions(results: xr.Dataset, cube: xr.Dataset | None, our_stars: np.ndarray
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(ra, dec) in degrees of the result stars: from the fitted cube, else from the results."""
    ra = _per_star(cube, "ra", our_stars)
    dec = _per_star(cube, "dec", our_stars)
    if ra is None and "ra" in results and "dec" in results:
        ra = np.asarray(results["ra"].values, np.float64)
        dec = np.asarray(results["dec"].values, np.float64)
    return ra, dec


def cross_match(results: xr.Dataset, our_stars: np.ndarray, ref_df: pd.DataFrame, cols: Mapping[str, str], *,
                match: str, cube: xr.Dataset | None, radius_arcsec: float) -> CrossMatch:
    """Match result stars to reference rows by id (``match="id"``), by sky position within
    ``radius_arcsec`` (``"sky"``, positions from ``cube``) or ``"auto"`` (id if any id matches)."""
    n_res = our_stars.size
    mode = match
    ref_idx = np.full(n_res, -1, np.int64)
    sep = np.full(n_res, np.nan)
    id_col_used: str | None = None
    if mode in ("auto", "id"):
        ref_idx, id_col_used, best_n = _match_ids(our_stars, ref_df, cols, match)
        if mode == "auto":
            mode = "id" if best_n > 0 else "sky"
        if mode == "id":
            log.info("matched %d of %d stars by id column %r", best_n, n_res, id_col_used)
    if mode == "sky":
        ra, dec = _sky_positions(results, cube, our_stars)
        if ra is None or dec is None or "ra" not in cols or "dec" not in cols:
            why = ("results carry no ra/dec: pass the fitted spectra cube (cube=/--cube)" if ra is None or dec is None
                   else f"the reference has no ra/dec columns (columns: {list(ref_df.columns)[:40]})")
            if match == "auto":
                why = "no star id matched the reference, and " + why
            raise ValueError(f"cannot cross-match by sky position: {why}")
        ref_idx, sep = match_by_sky(ra, dec, _numeric(ref_df[cols["ra"]]), _numeric(ref_df[cols["dec"]]),
                                    radius_arcsec)
        id_col_used = cols.get("id")
        log.info("matched %d of %d stars within %g arcsec", int((ref_idx >= 0).sum()), n_res, radius_arcsec)
    if not (ref_idx >= 0).any():
        raise ValueError(
            f"no result star matched the reference (match={mode!r}"
            + (f", id column {id_col_used!r}" if mode == "id" else f", radius {radius_arcsec} arcsec")
            + f"; e.g. result ids {our_stars[:3].tolist()})"
        )
    return CrossMatch(ref_idx=ref_idx, sep_arcsec=sep, mode=mode, id_column=id_col_used)
