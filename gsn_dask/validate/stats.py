"""Bias, scatter, outlier and calibration statistics of a matched dataset, in S/N bins; the same by
stellar class (:func:`class_stats`), and the scale offset separated from the scatter
(:func:`scale_stats`: a straight line from ours to the reference, cross-validated)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..calibration import solve_sigma_sys
from ..labels import label_unit
from .reference import _str_values

#: 1.4826 x MAD is the standard deviation of a Gaussian.
MAD_TO_STD = 1.4826
#: Default outlier thresholds on |ours - reference| (label units).
DEFAULT_THRESHOLDS: dict[str, float] = {"teff": 500.0, "logg": 0.5, "feh": 0.3, "alpha_fe": 0.2}
#: Default S/N bin edges: <10, 10-30, 30-100, >100 (plus "all").
DEFAULT_SNR_BINS: tuple[float, ...] = (10.0, 30.0, 100.0)
#: Name of the bin holding every selected star.
ALL_BIN = "all"


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


#: Bootstrap draws behind the calibration table's standard errors (fixed seed: the same table every run).
N_BOOT = 200
#: Fewest objects for a bootstrap standard error (NaN below).
MIN_BOOT_OBJECTS = 5
#: Above this many objects the bootstrap draws from a fixed random subset of them and scales its
#: errors by sqrt(subset / all) (they fall as 1/sqrt(N)): a million-star validation stays quick.
MAX_BOOT_OBJECTS = 20_000


def bootstrap_errors(diff: np.ndarray, ref: np.ndarray, p16: np.ndarray, p84: np.ndarray, groups: np.ndarray,
                     *, z: np.ndarray | None = None, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """Standard errors of the median bias, the 1.4826 MAD and the fraction of reference values inside
    [p16, p84] (label units, fraction), by a bootstrap over objects: ``groups`` names each row's object,
    and every row of a drawn object comes along (two observations of one star are not two stars).
    Bias and MAD use the rows with a finite diff, the fraction those that also have finite p16, p84
    and (given) ``z``, as the calibration table does; NaN with fewer than ``MIN_BOOT_OBJECTS`` objects;
    above ``MAX_BOOT_OBJECTS``, a fixed random subset of that many, errors scaled by sqrt(subset / all)."""
    ok = np.isfinite(diff)
    nan = {"n_objects": 0, "bias_se": np.nan, "mad_std_se": np.nan, "frac_in_68_se": np.nan}
    codes, inv = np.unique(np.asarray(groups)[ok].astype(str), return_inverse=True)
    n_obj = int(codes.size)
    if n_obj < MIN_BOOT_OBJECTS:
        return {**nan, "n_objects": n_obj}
    cov = (np.isfinite(p16) & np.isfinite(p84) & (np.isfinite(z) if z is not None else True))[ok]
    d, inside = diff[ok], ((ref >= p16) & (ref <= p84))[ok]
    rng = np.random.default_rng(seed)
    m = min(n_obj, MAX_BOOT_OBJECTS)
    if m < n_obj:  # the rows of m objects drawn once, renumbered 0..m-1
        keep = np.zeros(n_obj, bool)
        keep[rng.choice(n_obj, size=m, replace=False)] = True
        rows = keep[inv]
        d, inside, cov, inv = d[rows], inside[rows], cov[rows], np.cumsum(keep)[inv[rows]] - 1
    draws = np.empty((int(n_boot), 3))
    for b in range(int(n_boot)):
        w = np.bincount(rng.integers(0, m, m), minlength=m)[inv]
        db = np.repeat(d, w)
        med = np.median(db)
        wc = w[cov]
        draws[b] = med, MAD_TO_STD * np.median(np.abs(db - med)), np.repeat(inside[cov], wc).mean() if wc.any() else np.nan
    se = draws.std(axis=0, ddof=1) * np.sqrt(m / n_obj)
    return {"n_objects": n_obj, "bias_se": float(se[0]), "mad_std_se": float(se[1]), "frac_in_68_se": float(se[2])}


def _extra_sigma(diff: np.ndarray, p16: np.ndarray, p84: np.ndarray, z: np.ndarray) -> float:
    """The sigma that, added in quadrature to each side of the intervals, gives median |z| = 0.6745
    (a unit Gaussian's): ``FitConfig.extra_systematics`` for this reference."""
    ok = np.isfinite(diff) & np.isfinite(p16) & np.isfinite(p84) & np.isfinite(z)  # the stars of _calib_stats
    return solve_sigma_sys(diff[ok], 0.5 * (p84[ok] - p16[ok])) if ok.any() else np.nan


def compute_stats(
    matched: xr.Dataset,
    *,
    snr_bins: Sequence[float] = DEFAULT_SNR_BINS,
    thresholds: Mapping[str, float] | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Statistics of a matched dataset (from :func:`validate`) over its ``selected`` stars.

    Returns ``stats`` (rows label x snr_bin, bins in order then ``all``; columns label,
    unit, snr_bin, snr_lo, snr_hi, n, bias, mean, std, mad_std, outlier_threshold,
    outlier_frac, frac_in_68, z_robust_std) and ``calibration`` (one row per label: n_calib,
    frac_in_68, z_median, z_std, z_robust_std, n_ref_err, frac_in_68_tot, z_tot_robust_std,
    extra_sigma: the floor to add to the intervals, ``FitConfig.extra_systematics``, for them to
    cover these reference values 68% of the time; mad_std, and the bootstrap standard errors
    bias_se, mad_std_se, frac_in_68_se over n_objects objects, :func:`bootstrap_errors`).
    ``groups`` (one per matched star): the object each star is an observation of, for the bootstrap
    (default: its reference row, so repeat spectra matched to one reference row count once).
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
    groups = np.asarray(matched["ref_row"].values if groups is None else groups)
    if groups.shape != sel.shape:
        raise ValueError(f"groups: {groups.shape[0] if groups.ndim else 0} values for {sel.size} matched stars")
    for j, lab in enumerate(labels):
        diff = np.asarray(matched["diff"].values[:, j], np.float64)
        ref = np.asarray(matched["ref"].values[:, j], np.float64)
        p16 = np.asarray(matched["p16"].values[:, j], np.float64)
        p84 = np.asarray(matched["p84"].values[:, j], np.float64)
        z = np.asarray(matched["z"].values[:, j], np.float64)
        z_tot = np.asarray(matched["z_tot"].values[:, j], np.float64)
        thr = float(thresholds.get(lab, np.nan))
        unit = label_unit(lab)
        for name, lo, hi, m in bins:
            st = _label_stats(diff[m], thr)
            cs = _calib_stats(diff[m], ref[m], p16[m], p84[m], z[m], z_tot[m])
            rows.append({"label": lab, "unit": unit, "snr_bin": name,
                         "snr_lo": lo if np.isfinite(lo) else np.nan, "snr_hi": hi if np.isfinite(hi) else np.nan,
                         **st, "outlier_threshold": thr,
                         "frac_in_68": cs["frac_in_68"], "z_robust_std": cs["z_robust_std"]})
        calib.append({"label": lab, "unit": unit, **_calib_stats(diff[sel], ref[sel], p16[sel], p84[sel],
                                                                 z[sel], z_tot[sel]),
                      "extra_sigma": _extra_sigma(diff[sel], p16[sel], p84[sel], z[sel]),
                      "mad_std": robust_std(diff[sel]),
                      **bootstrap_errors(diff[sel], ref[sel], p16[sel], p84[sel], groups[sel], z=z[sel])})
    cols = ["label", "unit", "snr_bin", "snr_lo", "snr_hi", "n", "bias", "mean", "std", "mad_std",
            "outlier_threshold", "outlier_frac", "frac_in_68", "z_robust_std"]
    stats = pd.DataFrame(rows, columns=cols)
    stats["n"] = stats["n"].astype(np.int64)
    return stats, pd.DataFrame(calib)


# ------------------------------------------------------------------------- classes and scales
#: Stellar classes by the *reference* Teff (K) and log g (dex): (name, Teff range, log g range).
#: Catalogues part most by class (e.g. LASP against a MILES-trained model: A stars and K dwarfs).
STELLAR_CLASSES: tuple[tuple[str, tuple[float, float], tuple[float, float]], ...] = (
    ("hot (Teff >= 7000 K)", (7000.0, np.inf), (-np.inf, np.inf)),
    ("F/G dwarfs (5300-7000 K, log g >= 3.8)", (5300.0, 7000.0), (3.8, np.inf)),
    ("K/M dwarfs (< 5300 K, log g >= 3.8)", (-np.inf, 5300.0), (3.8, np.inf)),
    ("giants, subgiants (< 7000 K, log g < 3.8)", (-np.inf, 7000.0), (-np.inf, 3.8)),
)


def stellar_classes(teff: np.ndarray, logg: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of :data:`STELLAR_CLASSES` for reference ``teff`` (K), ``logg`` (dex); NaN is in none."""
    teff, logg = np.asarray(teff, np.float64), np.asarray(logg, np.float64)
    return {name: (teff >= t0) & (teff < t1) & (logg >= g0) & (logg < g1)
            for name, (t0, t1), (g0, g1) in STELLAR_CLASSES}


def _snr_sets(matched: xr.Dataset, min_snr: float | None) -> list[tuple[str, np.ndarray]]:
    """The ``selected`` stars (``all``), and those with S/N >= ``min_snr`` unless it is None."""
    sel = np.asarray(matched["selected"].values, bool)
    if min_snr is None:
        return [(ALL_BIN, sel)]
    return [(ALL_BIN, sel), (f"S/N >= {min_snr:g}", sel & (np.asarray(matched["snr"].values, np.float64) >= min_snr))]


def class_stats(matched: xr.Dataset, *, min_snr: float | None = 30.0) -> pd.DataFrame:
    """Bias, MAD std and coverage per label and stellar class (by the reference labels) of the
    ``selected`` stars, for all of them (``snr_set`` ``all``) and for S/N >= ``min_snr``. Empty when
    the reference has no Teff or log g."""
    labels = _str_values(matched["label"].values)
    if not {"teff", "logg"} <= set(labels):
        return pd.DataFrame(columns=["snr_set", "stellar_class", "label", "unit", "n", "bias", "mad_std", "frac_in_68"])
    ref = np.asarray(matched["ref"].values, np.float64)
    classes = stellar_classes(ref[:, labels.index("teff")], ref[:, labels.index("logg")])
    rows = []
    for set_name, m_set in _snr_sets(matched, min_snr):
        for cname, m_cls in classes.items():
            m = m_set & m_cls
            for j, lab in enumerate(labels):
                diff, p16, p84, z, z_tot = (np.asarray(matched[v].values[m, j], np.float64)
                                            for v in ("diff", "p16", "p84", "z", "z_tot"))
                st = _label_stats(diff, np.nan)
                cs = _calib_stats(diff, ref[m, j], p16, p84, z, z_tot)
                rows.append({"snr_set": set_name, "stellar_class": cname, "label": lab, "unit": label_unit(lab),
                             "n": st["n"], "bias": st["bias"], "mad_std": st["mad_std"], "frac_in_68": cs["frac_in_68"]})
    return pd.DataFrame(rows)


def scale_transfer(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """The scale offset separated from the scatter: a straight line ref = a + b * ours (least squares,
    refitted once without the points beyond 3 MAD std) fitted on alternate stars and applied to the
    others, both ways (2-fold). Returns ``slope``, ``intercept`` (fitted on all stars) and the bias and
    MAD std of (transferred - ref) on the held-out halves (``bias_cv``, ``mad_std_cv``); NaN with fewer
    than 6 finite pairs."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    ok = np.isfinite(ours) & np.isfinite(ref)
    x, y = ours[ok], ref[ok]
    nan = {"slope": np.nan, "intercept": np.nan, "bias_cv": np.nan, "mad_std_cv": np.nan}
    if x.size < 6 or np.ptp(x) == 0:
        return nan

    def line(xf: np.ndarray, yf: np.ndarray) -> tuple[float, float]:
        b, a = np.polyfit(xf, yf, 1)
        r = yf - (a + b * xf)
        keep = np.abs(r - np.median(r)) < 3 * max(robust_std(r), 1e-12)
        b, a = np.polyfit(xf[keep], yf[keep], 1) if keep.sum() >= 3 else (b, a)
        return float(a), float(b)

    out = np.full(x.size, np.nan)
    halves = np.arange(x.size) % 2 == 0
    for fit_on in (halves, ~halves):
        if np.ptp(x[fit_on]) == 0:
            return nan
        a, b = line(x[fit_on], y[fit_on])
        out[~fit_on] = a + b * x[~fit_on]
    a, b = line(x, y)
    d = out - y
    return {"slope": b, "intercept": a, "bias_cv": float(np.median(d)), "mad_std_cv": robust_std(d)}


def scale_stats(matched: xr.Dataset, *, min_snr: float | None = 30.0) -> pd.DataFrame:
    """Per label, for the ``selected`` stars (all, and S/N >= ``min_snr``): bias and MAD std of
    ours - reference, and the same after :func:`scale_transfer` (ref = intercept + slope x ours):
    what is left when a linear scale difference between the two catalogues is taken out."""
    labels = _str_values(matched["label"].values)
    rows = []
    for set_name, m in _snr_sets(matched, min_snr):
        for j, lab in enumerate(labels):
            ours = np.asarray(matched["ours"].values[m, j], np.float64)
            ref = np.asarray(matched["ref"].values[m, j], np.float64)
            st = _label_stats(ours - ref, np.nan)
            rows.append({"snr_set": set_name, "label": lab, "unit": label_unit(lab), "n": st["n"],
                         "bias": st["bias"], "mad_std": st["mad_std"], **scale_transfer(ours, ref)})
    return pd.DataFrame(rows)
