""":func:`validate`: cross-match a results cube with reference labels and compute the report.

Steps, one function each: check the arguments, choose the reference columns and labels,
cross-match (:func:`~gsn_dask.validate.match.cross_match`), gather our and the reference values
of the matched stars with their S/N, assemble the ``matched`` dataset, compute the statistics.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..labels import label_unit
from ..flags import Flag
from .match import DEFAULT_RADIUS_ARCSEC, CrossMatch, _per_star, cross_match
from .reference import _numeric, _str_values, canonical_ids, dataset_to_frame, detect_columns, parse_mapping
from .report import ValidationReport
from .stats import DEFAULT_SNR_BINS, DEFAULT_THRESHOLDS, assign_snr_bins, class_stats, compute_stats, scale_stats

log = logging.getLogger(__name__)


def _check_args(results: xr.Dataset, estimate: str, match: str) -> None:
    if estimate not in ("median", "map"):
        raise ValueError(f"estimate must be 'median' or 'map', got {estimate!r}")
    if match not in ("auto", "id", "sky"):
        raise ValueError(f"match must be 'auto', 'id' or 'sky', got {match!r}")
    for name in ("median", "p16", "p84", "flag"):
        if name not in results:
            raise ValueError(f"results have no {name!r} variable (not a gsn-dask results cube?)")


def _choose_labels(ref_df: pd.DataFrame, our_labels: list[str], labels: Sequence[str] | None,
                   mapping: Mapping[str, str], id_column: str | None) -> tuple[dict[str, str], list[str]]:
    """The reference columns (:func:`detect_columns`) and the labels to compare: those asked
    for (each must have a column), or every label of ours with a non-empty reference column."""
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
    return cols, use


def _snr_values(snr: xr.DataArray | np.ndarray | pd.Series | None, cube: xr.Dataset | None,
                ref_df: pd.DataFrame, cols: Mapping[str, str], stars: np.ndarray, hit: np.ndarray,
                rows: np.ndarray, n_res: int) -> tuple[np.ndarray, str]:
    """S/N of the matched stars (explicit ``snr`` > ``cube['snr']`` > the reference's S/N column;
    negative values become NaN) and where it came from."""
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
    return np.where(np.isfinite(snr_v) & (snr_v >= 0), snr_v, np.nan), snr_source


def _label_arrays(results: xr.Dataset, ref_df: pd.DataFrame, cols: Mapping[str, str], use: list[str],
                  hit: np.ndarray, rows: np.ndarray, estimate: str, use_ref_errors: bool
                  ) -> dict[str, np.ndarray]:
    """(star, label) arrays of the matched stars: ``ours``, ``p16``, ``p84``, ``ref``,
    ``ref_err``, and per star ``flag`` and ``status``."""
    our_labels = _str_values(results["label"].values)
    lab_pos = [our_labels.index(lab) for lab in use]
    sub = results[["median", "p16", "p84", "flag"] + [v for v in ("map", "status") if v in results]]
    sub = sub.isel(star=hit, label=lab_pos).load()
    if estimate not in sub:
        raise ValueError(f"results have no {estimate!r} variable")
    ref_err = np.column_stack([
        np.abs(_numeric(ref_df[cols[f"{lab}_err"]])[rows]) if (use_ref_errors and f"{lab}_err" in cols)
        else np.full(rows.size, np.nan)
        for lab in use
    ])
    status = np.array(_str_values(sub["status"].values), dtype=object) if "status" in sub else np.full(rows.size, "")
    return {
        "ours": np.asarray(sub[estimate].values, np.float64),
        "p16": np.asarray(sub["p16"].values, np.float64),
        "p84": np.asarray(sub["p84"].values, np.float64),
        "ref": np.column_stack([_numeric(ref_df[cols[lab]])[rows] for lab in use]),
        "ref_err": ref_err,
        "flag": np.asarray(sub["flag"].values).astype(np.int64),
        "status": status,
    }


def _matched_dataset(a: Mapping[str, np.ndarray], stars: np.ndarray, use: list[str], *, snr_v: np.ndarray,
                     snr_source: str, snr_bins: tuple[float, ...], selected: np.ndarray, ref_ids: np.ndarray,
                     rows: np.ndarray, sep: np.ndarray, estimate: str) -> xr.Dataset:
    """The ``matched`` dataset of :class:`ValidationReport` from the arrays of :func:`_label_arrays`."""
    ours, ref, ref_err, p16, p84 = a["ours"], a["ref"], a["ref_err"], a["p16"], a["p84"]
    diff = ours - ref
    sigma_post = (p84 - p16) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma_post > 0, diff / sigma_post, np.nan)
        tot = np.sqrt(sigma_post**2 + ref_err**2)
        z_tot = np.where(tot > 0, diff / tot, np.nan)
    SL = ("star", "label")
    units = [label_unit(lab) for lab in use]
    return xr.Dataset(
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
            "in68": (SL, (ref >= p16) & (ref <= p84), {"long_name": "reference inside [p16, p84]"}),
            "snr": ("star", snr_v, {"long_name": f"S/N ({snr_source})"}),
            "snr_bin": ("star", assign_snr_bins(snr_v, snr_bins)),
            "flag": ("star", a["flag"].astype(np.int32)),
            "status": ("star", a["status"]),
            "selected": ("star", selected, {"long_name": "passes the flag filter"}),
            "ref_id": ("star", np.asarray(ref_ids, dtype=object)),
            "ref_row": ("star", rows),
            "sep_arcsec": ("star", sep, {"units": "arcsec"}),
        },
        coords={
            "star": ("star", stars),
            "label": ("label", np.array(use, dtype=object)),
            "unit": ("label", np.array(units, dtype=object)),
        },
    )


def _settings(xm: CrossMatch, cols: dict[str, str], use: list[str], *, radius_arcsec: float, estimate: str,
              good_only: bool, exclude_flags: int, snr_source: str, n_results: int, n_reference: int,
              n_matched: int, n_selected: int, thresholds: Mapping[str, float] | None, use_ref_errors: bool,
              results_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The report's ``settings`` record (also written as the matched dataset's attrs)."""
    return {
        "match": xm.mode,
        "id_column": xm.id_column,
        "radius_arcsec": float(radius_arcsec) if xm.mode == "sky" else None,
        "columns": cols,
        "estimate": estimate,
        "good_only": bool(good_only),
        "exclude_flags": int(exclude_flags),
        "snr_source": snr_source,
        "n_results": int(n_results),
        "n_reference": int(n_reference),
        "n_matched": int(n_matched),
        "n_selected": int(n_selected),
        "thresholds": {lab: float((thresholds or {}).get(lab, DEFAULT_THRESHOLDS.get(lab, np.nan))) for lab in use},
        "use_ref_errors": bool(use_ref_errors),
        "label_systematics": str(results_attrs.get("label_systematics", "null")),
    }


def _add_unmatched_alpha(matched: xr.Dataset, results: xr.Dataset, our_labels: list[str], use: list[str],
                         hit: np.ndarray) -> None:
    """When we fit [alpha/Fe] and the reference has none (LASP, MILES), keep ours per matched star
    (``alpha_fe``, ``alpha_fe_p16``, ``alpha_fe_p84``, dex) for the [alpha/Fe]-[Fe/H] figure."""
    if "alpha_fe" not in our_labels or "alpha_fe" in use:
        return
    a = results[["median", "p16", "p84"]].isel(star=hit, label=our_labels.index("alpha_fe")).load()
    for var, src in (("alpha_fe", "median"), ("alpha_fe_p16", "p16"), ("alpha_fe_p84", "p84")):
        matched[var] = ("star", np.asarray(a[src].values, np.float64),
                        {"long_name": f"our [alpha/Fe] ({src}; no reference value)", "units": "dex"})


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
    groups: Sequence[Any] | np.ndarray | None = None,
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
    groups : the object each results star is an observation of (results order), for the bootstrap
        standard errors of the calibration table (every observation of a drawn object comes along);
        default: the matched reference row.
    """
    _check_args(results, estimate, match)
    mapping = parse_mapping(columns)
    snr_bins = tuple(sorted(float(x) for x in snr_bins))
    our_labels = _str_values(results["label"].values)
    our_stars = np.array(_str_values(results["star"].values), dtype=object)
    ref_is_cube = isinstance(reference, xr.Dataset)
    ref_df = dataset_to_frame(reference) if ref_is_cube else reference.reset_index(drop=True)
    if ref_is_cube and id_column is None and "id" not in mapping:
        id_column = "star"
    cols, use = _choose_labels(ref_df, our_labels, labels, mapping, id_column)

    xm = cross_match(results, our_stars, ref_df, cols, match=match, cube=cube, radius_arcsec=radius_arcsec)
    hit = np.flatnonzero(xm.ref_idx >= 0)
    rows = xm.ref_idx[hit]
    stars = our_stars[hit]
    arrays = _label_arrays(results, ref_df, cols, use, hit, rows, estimate, use_ref_errors)
    snr_v, snr_source = _snr_values(snr, cube, ref_df, cols, stars, hit, rows, our_stars.size)
    flag = arrays["flag"]
    selected = (flag == 0) if good_only else ((flag & int(exclude_flags)) == 0)
    ref_ids = canonical_ids(ref_df[xm.id_column])[rows] if xm.id_column is not None else rows.astype(str)
    matched = _matched_dataset(arrays, stars, use, snr_v=snr_v, snr_source=snr_source, snr_bins=snr_bins,
                               selected=selected, ref_ids=ref_ids, rows=rows, sep=xm.sep_arcsec[hit],
                               estimate=estimate)
    settings = _settings(xm, cols, use, radius_arcsec=radius_arcsec, estimate=estimate, good_only=good_only,
                         exclude_flags=exclude_flags, snr_source=snr_source, n_results=our_stars.size,
                         n_reference=len(ref_df), n_matched=hit.size, n_selected=int(selected.sum()),
                         thresholds=thresholds, use_ref_errors=use_ref_errors, results_attrs=results.attrs)
    matched.attrs.update({k: str(v) for k, v in settings.items()})
    _add_unmatched_alpha(matched, results, our_labels, use, hit)
    if groups is not None and len(groups) != our_stars.size:
        raise ValueError(f"groups: {len(groups)} values for {our_stars.size} results stars")
    stats, calibration = compute_stats(matched, snr_bins=snr_bins, thresholds=settings["thresholds"],
                                       groups=None if groups is None else np.asarray(groups, dtype=object)[hit])
    min_snr = snr_bins[1] if len(snr_bins) > 1 else None  # 30 with the default bins
    return ValidationReport(matched=matched, stats=stats, calibration=calibration, labels=list(use),
                            snr_bins=snr_bins, settings=settings, classes=class_stats(matched, min_snr=min_snr),
                            scale=scale_stats(matched, min_snr=min_snr))
