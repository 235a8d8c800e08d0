"""Validation figures (matplotlib, object-oriented API: no pyplot state, works headless).

* :func:`plot_one_to_one` - per label, ours vs reference coloured by point density (hexbin
  for many stars) with the residual histogram underneath, annotated with bias and scatter;
* :func:`plot_kiel` - Teff vs log g (both axes inverted) coloured by [Fe/H], reference and
  ours side by side;
* :func:`plot_residuals_vs_snr` - residual vs S/N per label with running median and 16-84%;
* :func:`plot_calibration` - distribution of z = diff / sigma_post against N(0, 1).

Every function takes the ``matched`` dataset that :func:`gsn_dask.validate.validate` builds
(variables ``ours``, ``ref``, ``diff``, ``z``, ``z_tot`` over (star, label), ``snr`` and
``selected`` over star; only ``selected`` stars are drawn) and optionally its ``stats`` /
``calibration`` DataFrames, and returns a ``matplotlib.figure.Figure`` (or None when the
figure cannot be drawn, e.g. no S/N). This module does not import :mod:`gsn_dask.validate`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from .labels import GALACTIC_ALPHA_PATTERN, label_unit

#: Above this many stars the one-to-one panels use hexbin instead of a density-coloured scatter.
MAX_SCATTER = 5000

_TEX = {"teff": r"$T_\mathrm{eff}$", "logg": r"$\log g$", "feh": "[Fe/H]", "alpha_fe": r"[$\alpha$/Fe]"}


def label_title(label: str, suffix: str = "") -> str:
    """Axis title of a label, e.g. ``T_eff [K]``."""
    unit = label_unit(label)
    name = _TEX.get(label, label)
    return f"{name}{suffix}" + (f" [{unit}]" if unit else "")


def _fmt(x: float, label: str) -> str:
    if not np.isfinite(x):
        return "-"
    return f"{x:.0f}" if label == "teff" else f"{x:.3f}"


def _selected(matched: xr.Dataset) -> xr.Dataset:
    return matched.isel(star=np.flatnonzero(np.asarray(matched["selected"].values, bool)))


def _labels(matched: xr.Dataset) -> list[str]:
    return [str(x) for x in np.asarray(matched["label"].values)]


def _col(matched: xr.Dataset, var: str, label: str) -> np.ndarray:
    j = _labels(matched).index(label)
    return np.asarray(matched[var].values[:, j], dtype=np.float64)


def _robust_range(*arrays: np.ndarray, q: tuple[float, float] = (0.5, 99.5), pad: float = 0.05) -> tuple[float, float]:
    x = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
    if x.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(x, q)
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    d = hi - lo
    return float(lo - pad * d), float(hi + pad * d)


def point_density(x: np.ndarray, y: np.ndarray, bins: int = 60) -> np.ndarray:
    """Relative point density at each (x, y) from a smoothed 2-D histogram (O(N), any N)."""
    from scipy.ndimage import gaussian_filter

    if x.size == 0:
        return np.zeros(0)
    xr_, yr_ = _robust_range(x, q=(0, 100), pad=0.01), _robust_range(y, q=(0, 100), pad=0.01)
    h, xe, ye = np.histogram2d(x, y, bins=bins, range=[xr_, yr_])
    h = gaussian_filter(h, 1.0)
    ix = np.clip(np.searchsorted(xe, x, side="right") - 1, 0, bins - 1)
    iy = np.clip(np.searchsorted(ye, y, side="right") - 1, 0, bins - 1)
    return h[ix, iy]


def _stat_row(stats: pd.DataFrame | None, label: str) -> pd.Series | None:
    """The ``all`` S/N-bin row of ``label`` in a stats table (None if absent)."""
    if stats is None:
        return None
    sel = stats[(stats["label"] == label) & (stats["snr_bin"] == "all")]
    return None if sel.empty else sel.iloc[0]


def plot_one_to_one(matched: xr.Dataset, stats: pd.DataFrame | None = None, *, labels: Sequence[str] | None = None,
                    max_scatter: int = MAX_SCATTER) -> Figure:
    """One column per label: top, ours vs reference (density), 1:1 line; bottom, the
    histogram of ours - reference with bias and scatter written on it."""
    from matplotlib.gridspec import GridSpec

    m = _selected(matched)
    labels = list(labels) if labels is not None else _labels(m)
    n = len(labels)
    fig = Figure(figsize=(3.6 * n + 0.4, 5.4), layout="constrained")
    gs = GridSpec(2, n, figure=fig, height_ratios=[3, 1.25])
    for k, lab in enumerate(labels):
        ref, ours = _col(m, "ref", lab), _col(m, "ours", lab)
        ok = np.isfinite(ref) & np.isfinite(ours)
        ref, ours = ref[ok], ours[ok]
        diff = ours - ref
        ax = fig.add_subplot(gs[0, k])
        lo, hi = _robust_range(ref, ours)
        if ref.size > max_scatter:
            hb = ax.hexbin(ref, ours, gridsize=70, extent=(lo, hi, lo, hi), bins="log", mincnt=1, cmap="viridis",
                           linewidths=0)
            cax = ax.inset_axes([0.52, 0.1, 0.43, 0.035])
            cb = fig.colorbar(hb, cax=cax, orientation="horizontal")
            cb.set_label("stars per bin", fontsize=7)
            cb.ax.xaxis.set_label_position("top")
            cb.ax.tick_params(labelsize=7)
        elif ref.size:
            dens = point_density(ref, ours)
            order = np.argsort(dens)
            ax.scatter(ref[order], ours[order], c=dens[order], s=6 if ref.size > 500 else 14, cmap="viridis",
                       edgecolors="none", rasterized=True)
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.9, ls="-", zorder=3)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(label_title(lab, " (reference)"))
        ax.set_ylabel(label_title(lab, " (GSN)"))
        row = _stat_row(stats, lab)
        bias = float(row["bias"]) if row is not None else float(np.median(diff)) if diff.size else np.nan
        std = float(row["std"]) if row is not None else float(np.std(diff)) if diff.size else np.nan
        mad = float(row["mad_std"]) if row is not None else np.nan
        outl = float(row["outlier_frac"]) if row is not None else np.nan
        text = (f"N = {diff.size}\nbias = {_fmt(bias, lab)}\n$\\sigma$ = {_fmt(std, lab)}"
                f"\nMAD $\\sigma$ = {_fmt(mad, lab)}")
        if np.isfinite(outl):
            text += f"\noutliers = {100 * outl:.1f}%"
        ax.text(0.04, 0.96, text, transform=ax.transAxes, va="top", ha="left", fontsize=8,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.85})
        # residual histogram
        axh = fig.add_subplot(gs[1, k])
        thr = float(row["outlier_threshold"]) if row is not None else np.nan
        spread = mad if np.isfinite(mad) and mad > 0 else std
        width = np.nanmax([abs(bias) + 4 * spread if np.isfinite(spread) and np.isfinite(bias) else np.nan,
                           1.15 * thr if np.isfinite(thr) else np.nan])
        if not np.isfinite(width) or width <= 0:
            width = 1.0
        if diff.size:
            axh.hist(np.clip(diff, -width, width), bins=50, range=(-width, width), color="C0", alpha=0.8)
        axh.axvline(0, color="k", lw=0.9)
        if np.isfinite(thr):
            for sgn in (-1, 1):
                axh.axvline(sgn * thr, color="0.5", lw=0.8, ls=":")
        if np.isfinite(bias):
            axh.axvline(bias, color="C3", lw=1.0, ls="--")
        axh.set_xlim(-width, width)
        axh.set_xlabel(r"$\Delta$" + label_title(lab, "") + " (GSN - ref)")
        axh.set_ylabel("N")
    return fig


def plot_kiel(matched: xr.Dataset) -> Figure | None:
    """Teff vs log g (Kiel diagram, axes inverted) coloured by [Fe/H]: reference (left) and
    ours (right), same colour scale. None if teff or logg is missing."""
    labs = _labels(matched)
    if "teff" not in labs or "logg" not in labs:
        return None
    m = _selected(matched)
    fig = Figure(figsize=(9.5, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    have_feh = "feh" in labs
    fehs = [_col(m, v, "feh") for v in ("ref", "ours")] if have_feh else [None, None]
    vlo, vhi = (_robust_range(*[f for f in fehs if f is not None], q=(2, 98), pad=0.0) if have_feh else (0, 1))
    t_all = [_col(m, v, "teff") for v in ("ref", "ours")]
    g_all = [_col(m, v, "logg") for v in ("ref", "ours")]
    xlo, xhi = _robust_range(*t_all)
    ylo, yhi = _robust_range(*g_all)
    mappable = None
    for ax, title, t, g, f in zip(axes, ("reference", "GSN (this work)"), t_all, g_all, fehs):
        ok = np.isfinite(t) & np.isfinite(g)
        if f is not None:
            okf = ok & np.isfinite(f)
            ax.scatter(t[ok & ~okf], g[ok & ~okf], s=4, color="0.7", edgecolors="none", rasterized=True)
            mappable = ax.scatter(t[okf], g[okf], c=f[okf], s=5 if okf.sum() > 2000 else 10, cmap="viridis",
                                  vmin=vlo, vmax=vhi, edgecolors="none", rasterized=True)
        else:
            ax.scatter(t[ok], g[ok], s=5, color="C0", edgecolors="none", rasterized=True)
        ax.set_title(f"{title} (N = {int(ok.sum())})", fontsize=10)
        ax.set_xlabel(label_title("teff"))
    axes[0].set_ylabel(label_title("logg"))
    axes[0].set_xlim(xhi, xlo)  # hot stars left
    axes[0].set_ylim(yhi, ylo)  # giants on top
    if mappable is not None:
        fig.colorbar(mappable, ax=list(axes), label=label_title("feh"), pad=0.01)
    return fig


def _alpha_columns(m: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Our [alpha/Fe] with its [p16, p84] (matched label or unmatched ``alpha_fe`` variables)."""
    if "alpha_fe" in _labels(m):
        return _col(m, "ours", "alpha_fe"), _col(m, "p16", "alpha_fe"), _col(m, "p84", "alpha_fe")
    if "alpha_fe" in m:
        return tuple(np.asarray(m[v].values, np.float64) for v in ("alpha_fe", "alpha_fe_p16", "alpha_fe_p84"))
    return None


def plot_alpha_plane(matched: xr.Dataset) -> Figure | None:
    """[alpha/Fe] (ours, with 68% intervals and a running median) against [Fe/H] (the reference's
    where it has one, else ours), with the Galactic pattern for orientation: alpha-enhanced
    (+0.3) below [Fe/H] = -1, falling to 0 at solar. None without our [alpha/Fe] or any [Fe/H]."""
    m = _selected(matched)
    alpha = _alpha_columns(m)
    if alpha is None or "feh" not in _labels(m):
        return None
    y, lo, hi = alpha
    src = "ref" if np.isfinite(_col(m, "ref", "feh")).any() else "ours"
    x = _col(m, src, "feh")
    ok = np.isfinite(x) & np.isfinite(y)
    fig = Figure(figsize=(6.0, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.errorbar(x[ok], y[ok], yerr=np.vstack([y[ok] - lo[ok], hi[ok] - y[ok]]), fmt="o", ms=3, lw=0.5, alpha=0.5,
                color="C0", label=f"stars (N = {int(ok.sum())})")
    if ok.sum() >= 20:
        xc, med, _, _ = _running(x[ok], y[ok], nbins=min(12, int(ok.sum()) // 10))
        ax.plot(xc, med, color="C3", lw=2, label="running median")
    ax.plot(*GALACTIC_ALPHA_PATTERN, "k--", lw=1, label="Galactic pattern (schematic)")
    ax.axhline(0.0, color="0.6", lw=0.5)
    ax.set_xlabel(label_title("feh", " (reference)" if src == "ref" else " (GSN)"))
    ax.set_ylabel(label_title("alpha_fe", " (GSN)"))
    ax.legend(fontsize=8)
    return fig


def _running(x: np.ndarray, y: np.ndarray, nbins: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Running median and 16/84th percentiles of y in quantile bins of x (>= 10 stars per bin)."""
    if x.size < 20:
        return (np.array([]),) * 4  # type: ignore[return-value]
    nb = int(max(2, min(nbins, x.size // 10)))
    edges = np.unique(np.quantile(x, np.linspace(0, 1, nb + 1)))
    xc, med, lo, hi = [], [], [], []
    for a, b in zip(edges[:-1], edges[1:]):
        s = (x >= a) & (x <= b)
        if s.sum() < 5:
            continue
        xc.append(np.median(x[s]))
        q = np.percentile(y[s], [16, 50, 84])
        lo.append(q[0]); med.append(q[1]); hi.append(q[2])  # noqa: E702
    return np.array(xc), np.array(med), np.array(lo), np.array(hi)


def plot_residuals_vs_snr(matched: xr.Dataset, snr_bins: Sequence[float] = (), stats: pd.DataFrame | None = None) -> Figure | None:
    """One panel per label: ours - reference vs S/N (log axis) with the running median and
    16-84% band; dashed lines mark the S/N bin edges. None if no star has an S/N."""
    m = _selected(matched)
    snr = np.asarray(m["snr"].values, np.float64)
    if not np.any(np.isfinite(snr) & (snr > 0)):
        return None
    labels = _labels(m)
    n = len(labels)
    fig = Figure(figsize=(6.5, 1.9 * n + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True))
    good_snr = np.isfinite(snr) & (snr > 0)
    for ax, lab in zip(axes, labels):
        diff = _col(m, "diff", lab)
        ok = good_snr & np.isfinite(diff)
        x, y = snr[ok], diff[ok]
        row = _stat_row(stats, lab)
        mad = float(row["mad_std"]) if row is not None else (float(np.std(y)) if y.size else np.nan)
        bias = float(row["bias"]) if row is not None else (float(np.median(y)) if y.size else np.nan)
        thr = float(row["outlier_threshold"]) if row is not None else np.nan
        width = np.nanmax([abs(bias) + 5 * mad if np.isfinite(mad) and np.isfinite(bias) else np.nan,
                           1.15 * thr if np.isfinite(thr) else np.nan])
        if not np.isfinite(width) or width <= 0:
            width = 1.0
        ax.scatter(x, np.clip(y, -width, width), s=3 if x.size > 2000 else 6, color="0.45", alpha=0.5,
                   edgecolors="none", rasterized=True)
        xc, med, lo, hi = _running(x, y)
        if xc.size:
            ax.fill_between(xc, lo, hi, color="C0", alpha=0.3, lw=0, label="16-84%")
            ax.plot(xc, med, color="C0", lw=1.5, label="running median")
        ax.axhline(0, color="k", lw=0.8)
        if np.isfinite(thr):
            for sgn in (-1, 1):
                ax.axhline(sgn * thr, color="0.5", lw=0.8, ls=":")
        for e in snr_bins:
            ax.axvline(e, color="C3", lw=0.7, ls="--")
        ax.set_ylim(-width, width)
        ax.set_ylabel(r"$\Delta$" + label_title(lab))
        ax.set_xscale("log")
    axes[0].legend(loc="upper right", fontsize=7, frameon=False)
    axes[-1].set_xlabel("S/N")
    return fig


def plot_calibration(matched: xr.Dataset, calibration: pd.DataFrame | None = None) -> Figure:
    """One panel per label: histogram of z = diff / sigma_post (and z_tot with the reference
    uncertainty, where available) against the standard normal."""
    m = _selected(matched)
    labels = _labels(m)
    n = len(labels)
    fig = Figure(figsize=(3.2 * n + 0.4, 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n, sharey=False))
    grid = np.linspace(-5, 5, 201)
    gauss = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
    for ax, lab in zip(axes, labels):
        z = _col(m, "z", lab)
        z = z[np.isfinite(z)]
        zt = _col(m, "z_tot", lab)
        zt = zt[np.isfinite(zt)]
        if z.size:
            ax.hist(np.clip(z, -5, 5), bins=50, range=(-5, 5), density=True, color="C0", alpha=0.6,
                    label=r"$z = \Delta/\sigma_\mathrm{post}$")
        if zt.size:
            ax.hist(np.clip(zt, -5, 5), bins=50, range=(-5, 5), density=True, histtype="step", color="C1",
                    lw=1.2, label=r"$z_\mathrm{tot}$ (+ ref. error)")
        ax.plot(grid, gauss, color="k", lw=1.0, label="N(0, 1)")
        txt = ""
        if calibration is not None:
            row = calibration[calibration["label"] == lab]
            if not row.empty:
                r = row.iloc[0]
                if np.isfinite(r["frac_in_68"]):
                    txt = f"in 68%: {100 * r['frac_in_68']:.1f}%\nrobust std z: {r['z_robust_std']:.2f}"
                if np.isfinite(r["z_tot_robust_std"]):
                    txt += f"\nrobust std z_tot: {r['z_tot_robust_std']:.2f}"
        if txt:
            ax.text(0.03, 0.97, txt, transform=ax.transAxes, va="top", ha="left", fontsize=7.5)
        ax.set_xlim(-5, 5)
        ax.set_xlabel(f"z ({_TEX.get(lab, lab)})")
    axes[0].set_ylabel("density")
    axes[-1].legend(loc="upper right", fontsize=6.5, frameon=False)
    return fig


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format; returns the paths."""
    out = []
    for fmt in formats:
        p = Path(stem).with_suffix(f".{fmt}")
        fig.savefig(p, dpi=dpi)
        out.append(p)
    return out


def save_all(matched: xr.Dataset, out_dir: str | Path, *, stats: pd.DataFrame | None = None,
             calibration: pd.DataFrame | None = None, snr_bins: Sequence[float] = (),
             formats: Sequence[str] = ("png", "pdf")) -> dict[str, list[Path]]:
    """Draw and save every validation figure of a ``matched`` dataset (with its ``stats`` and
    ``calibration`` tables for the annotations, ``snr_bins`` edges for the S/N panels);
    returns {figure name: paths}."""
    out = Path(out_dir)
    figs = {
        "one_to_one": plot_one_to_one(matched, stats),
        "kiel": plot_kiel(matched),
        "residuals_snr": plot_residuals_vs_snr(matched, snr_bins, stats),
        "calibration": plot_calibration(matched, calibration),
        "alpha_plane": plot_alpha_plane(matched),
    }
    return {name: save_figure(fig, out / name, formats) for name, fig in figs.items() if fig is not None}
