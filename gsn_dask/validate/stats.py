"""Bias, scatter, outlier and calibration statistics of a matched dataset, in S/N bins."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

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
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Statistics of a matched dataset (from :func:`validate`) over its ``selected`` stars.

    Returns ``stats`` (rows label x snr_bin, bins in order then ``all``; columns label,
    unit, snr_bin, snr_lo, snr_hi, n, bias, mean, std, mad_std, outlier_threshold,
    outlier_frac, frac_in_68, z_robust_std) and ``calibration`` (one row per label: n_calib,
    frac_in_68, z_median, z_std, z_robust_std, n_ref_err, frac_in_68_tot, z_tot_robust_std,
    extra_sigma: the floor to add to the intervals, ``FitConfig.extra_systematics``, for them to
    cover these reference values 68% of the time).
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
                      "extra_sigma": _extra_sigma(diff[sel], p16[sel], p84[sel], z[sel])})
    cols = ["label", "unit", "snr_bin", "snr_lo", "snr_hi", "n", "bias", "mean", "std", "mad_std",
            "outlier_threshold", "outlier_frac", "frac_in_68", "z_robust_std"]
    stats = pd.DataFrame(rows, columns=cols)
    stats["n"] = stats["n"].astype(np.int64)
    return stats, pd.DataFrame(calib)


