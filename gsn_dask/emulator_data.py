"""Training data and cross-validation statistics of the GSN, numpy only (no torch).

The training cube, opened (:func:`open_training_cube`) and as arrays (:func:`prepare_training_data`),
the constructor arguments its networks share (:func:`network_template`), the loss weights
(:func:`pixel_weights`), the stratified folds (:func:`stratified_folds`), the per-pixel
emulator error from out-of-fold residuals (:func:`robust_emulator_error`), the CV summary
numbers (:func:`cv_metrics`) and figure (:func:`diagnostics_figure`), and a synthetic training
cube for tests and benchmarks (:func:`analytic_cube`). The torch training loop that uses them
is :mod:`gsn_dask.emulator_torch`.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .emulator import GSN, SCALE_RANGE, default_normalisation
from .emulator_recipe import DEFAULT_RECIPE, TrainRecipe
from .labels import LABEL_UNITS, canonical_order

#: chi^2 with one degree of freedom: median (used by the robust emulator-error estimate).
_CHI2_1_MEDIAN = 0.454936423119572


# ------------------------------------------------------------------------ data
def _trim_range(good_frac: np.ndarray, min_frac: float) -> slice:
    ok = np.flatnonzero(good_frac >= min_frac)
    if ok.size == 0:
        raise ValueError("no wavelength pixel has enough good (ivar > 0) training spectra")
    return slice(int(ok[0]), int(ok[-1]) + 1)


def prepare_training_data(
    train_ds: xr.Dataset,
    *,
    labels: Sequence[str] | None = None,
    wavelength_range: tuple[float, float] | None = None,
    label_ranges: dict[str, tuple[float, float]] | None = None,
    min_pixel_coverage: float = 0.5,
    mask_telluric: bool = False,
) -> dict[str, Any]:
    """Load a training cube into numpy: normalised flux, ivar, labels of usable stars.

    Stars with a non-finite label (or outside ``label_ranges``) or no good pixel are dropped.
    The grid is cut to ``wavelength_range`` and then to the contiguous run of pixels where at
    least ``min_pixel_coverage`` of the stars have ivar > 0 (e.g. MILES ends at 7410 A).
    ``labels=None``: the cube's labels known for at least half of the stars. A label range may
    name any label of the cube (a star selection), also one that is not emulated.
    """
    from .cube import label_names as cube_label_names
    from .cube import synthetic_rows
    from .grid.prepare import continuum_normalise, telluric_mask

    names_all = cube_label_names(train_ds)
    if labels is None:
        labels = canonical_order(
            n for n in names_all if np.mean(np.isfinite(np.asarray(train_ds[f"label_{n}"].values, float))) >= 0.5
        )
    labels = [str(n) for n in labels]
    missing = [n for n in labels if n not in names_all]
    if missing:
        raise ValueError(f"training cube has no labels {missing} (it has {names_all})")
    if not labels:
        raise ValueError("no labels to train on")
    wave = np.asarray(train_ds["wavelength"].values, dtype=np.float64)
    sel = slice(None)
    if wavelength_range is not None:
        idx = np.flatnonzero((wave >= wavelength_range[0]) & (wave <= wavelength_range[1]))
        if idx.size < 2:
            raise ValueError(f"wavelength_range {wavelength_range} leaves < 2 pixels of {wave[0]:.1f}-{wave[-1]:.1f} A")
        sel = slice(int(idx[0]), int(idx[-1]) + 1)
    lab = np.stack([np.asarray(train_ds[f"label_{n}"].values, dtype=np.float64) for n in labels], axis=1)
    keep = np.all(np.isfinite(lab), axis=1)
    for name, (lo, hi) in (label_ranges or {}).items():
        if name not in names_all:
            raise ValueError(f"label range on {name!r}, which the training cube does not have (it has {names_all})")
        v = np.asarray(train_ds[f"label_{name}"].values, dtype=np.float64)
        keep &= (v >= lo) & (v <= hi)
    idx_star = np.flatnonzero(keep)
    sub = train_ds.isel(star=idx_star, wavelength=sel)
    flux = np.asarray(sub["flux"].values, dtype=np.float32)
    ivar = np.asarray(sub["ivar"].values, dtype=np.float32)
    wave = np.asarray(sub["wavelength"].values, dtype=np.float64)
    attrs = dict(train_ds.attrs)
    if not bool(attrs.get("normalised", False)):
        flux, ivar = continuum_normalise(wave, flux, ivar, default_normalisation(attrs))
        flux = np.asarray(flux, np.float32)
        ivar = np.asarray(ivar, np.float32)
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar < 0)
    ivar = np.where(bad, 0, ivar).astype(np.float32)
    flux = np.where(bad, 0, flux).astype(np.float32)
    if mask_telluric:
        ivar[:, np.asarray(telluric_mask(wave), bool)] = 0
    has = (ivar > 0).any(axis=1)
    flux, ivar, idx_star = flux[has], ivar[has], idx_star[has]
    lab = lab[idx_star]
    if flux.shape[0] < 4:
        raise ValueError(f"only {flux.shape[0]} usable training stars (finite labels and some good pixels)")
    cut = _trim_range((ivar > 0).mean(axis=0), min_pixel_coverage)
    flux, ivar, wave = flux[:, cut], ivar[:, cut], wave[cut]
    stars = np.asarray(sub["star"].values)[has]
    synthetic = synthetic_rows(sub["source"].values)[has] if "source" in sub else np.zeros(stars.size, bool)
    return {
        "labels": labels,
        "label_values": lab,
        "flux": np.ascontiguousarray(flux),
        "ivar": np.ascontiguousarray(ivar),
        "wavelength": wave,
        "star": np.array([str(s) for s in stars]),
        "synthetic": synthetic,
        "attrs": attrs,
        "n_star_cube": int(train_ds.sizes["star"]),
    }


def pixel_weights(ivar: np.ndarray, floor: float) -> np.ndarray:
    """Loss weights ``1/(1/ivar + floor**2)``, 0 for ivar 0; infinite ivar -> 1/floor**2;
    scaled to mean 1 over good pixels. With ``floor = 0`` and no noise this is uniform."""
    ivar = np.asarray(ivar, np.float64)
    good = ivar > 0
    with np.errstate(divide="ignore"):
        var = np.where(good, 1.0 / np.where(good, ivar, 1.0), 0.0)
    if floor <= 0:
        floor = max(float(np.median(np.sqrt(var[good]))) * 1e-3, 1e-6) if good.any() else 1.0
    w = np.where(good, 1.0 / (var + floor**2), 0.0)
    m = w[good].mean() if good.any() else 1.0
    return (w / m).astype(np.float32)


#: The extra network input of ``source_input`` training: 1 for an observed spectrum, 0 for a synthetic one.
SOURCE_LABEL = "observed"


def observed_rows(synthetic: np.ndarray) -> np.ndarray:
    """The stars that set the emulator error, the label systematics and the Kiel prior: the
    observed ones of a cube mixing observed and synthetic spectra (``synthetic``: per star), else
    every star."""
    synthetic = np.asarray(synthetic, bool)
    return ~synthetic if 0 < synthetic.sum() < synthetic.size else np.ones(synthetic.size, bool)


def loss_weights(ivar: np.ndarray, observed: np.ndarray, floor: float, synthetic_weight: float) -> np.ndarray:
    """Per-pixel loss weights (:func:`pixel_weights` with ``floor``), the stars outside ``observed``
    (:func:`observed_rows`: the synthetic ones of a mixed cube) scaled by ``synthetic_weight``,
    then back to mean 1 over good pixels."""
    w = pixel_weights(ivar, floor)
    observed = np.asarray(observed, bool)
    if synthetic_weight == 1.0 or observed.all():
        return w
    w[~observed] *= np.float32(synthetic_weight)
    return (w / w[ivar > 0].mean()).astype(np.float32)


def stratified_folds(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) per star, stratified in ``values`` (each run of k stars sorted by
    value gets a random permutation of the folds)."""
    rng = np.random.default_rng(seed)
    n = values.size
    order = np.argsort(values, kind="stable")
    fold = np.empty(n, dtype=np.int64)
    for i in range(0, n, k):
        blk = order[i : i + k]
        fold[blk] = rng.permutation(k)[: blk.size]
    return fold


def assign_folds(values: np.ndarray, folds: int, val_fraction: float, seed: int) -> tuple[np.ndarray, list[int]]:
    """Fold index per star and the folds to hold out: ``folds`` stratified folds in ``values``
    (:func:`stratified_folds`; the first label), or (``folds`` <= 1) one random held-out split of
    ``val_fraction`` marked 1."""
    if folds >= 2:
        return stratified_folds(values, int(folds), seed), list(range(int(folds)))
    n = np.asarray(values).shape[0]
    fold = np.zeros(n, np.int64)
    n_val = max(1, int(round(val_fraction * n)))
    fold[np.random.default_rng(seed).permutation(n)[:n_val]] = 1
    return fold, [1]


def robust_emulator_error(resid: np.ndarray, ivar: np.ndarray, min_stars: int = 5) -> np.ndarray:
    """Per-pixel emulator error s (n_pix,): the extra scatter of residuals beyond the noise.

    Solves ``median_i r_i**2 / (1/ivar_i + s**2) = median(chi2_1)`` for each pixel over stars
    with ivar > 0 (robust to outlier stars, correct for heteroscedastic noise); s = 0 where the
    noise alone explains the residuals. Pixels with < ``min_stars`` good stars get the largest s.
    """
    r2 = np.asarray(resid, np.float64) ** 2
    good = (np.asarray(ivar) > 0) & np.isfinite(r2)
    with np.errstate(divide="ignore"):
        var = np.where(good, 1.0 / np.where(good, ivar, 1.0), np.nan).astype(np.float64)
    r2 = np.where(good, r2, np.nan)
    n_good = good.sum(axis=0)

    def med_chi(s2: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nanmedian(r2 / (var + s2[None, :]), axis=0)

    n_pix = r2.shape[1]
    with np.errstate(invalid="ignore"):
        hi = np.sqrt(np.nan_to_num(np.nanmax(r2, axis=0), nan=0.0)) + 1e-12
    lo = np.zeros(n_pix)
    need = med_chi(np.zeros(n_pix)) > _CHI2_1_MEDIAN
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        too_small = med_chi(mid**2) > _CHI2_1_MEDIAN
        lo = np.where(too_small, mid, lo)
        hi = np.where(too_small, hi, mid)
    s = np.where(need, 0.5 * (lo + hi), 0.0)
    ok = n_good >= min_stars
    if ok.any() and not ok.all():
        s[~ok] = float(np.max(s[ok]))
    elif not ok.any():
        s[:] = 0.0
    return s.astype(np.float32)


def _weighted_mean_spectrum(flux: np.ndarray, w: np.ndarray) -> np.ndarray:
    sw = w.sum(axis=0)
    return np.where(sw > 0, (flux * w).sum(axis=0) / np.where(sw > 0, sw, 1), 1.0).astype(np.float32)


def cv_metrics(resid: np.ndarray, ivar: np.ndarray, emu_err: np.ndarray) -> dict[str, float]:
    """Summary numbers of validation residuals (stars x pixels, NaN/ivar 0 ignored)."""
    good = (ivar > 0) & np.isfinite(resid)
    r = np.where(good, resid, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        med_abs_pix = np.nanmedian(np.abs(r), axis=0)
        mad_pix = 1.4826 * np.nanmedian(np.abs(r - np.nanmedian(r, axis=0)), axis=0)
        noise_pix = np.nanmedian(np.where(good, 1 / np.sqrt(np.where(good, ivar, 1)), np.nan), axis=0)
        chi = r * np.sqrt(np.where(good, ivar, 0))
        chi_tot = r / np.sqrt(np.where(good, 1 / np.where(good, ivar, 1), np.nan) + emu_err[None, :] ** 2)
    return {
        "cv_median_abs_resid": float(np.nanmedian(np.abs(r))),
        "cv_resid_per_pixel_median": float(np.nanmedian(med_abs_pix)),
        "cv_scatter_per_pixel_median": float(np.nanmedian(mad_pix)),
        "noise_per_pixel_median": float(np.nanmedian(noise_pix)),
        "cv_rms_weighted_chi": float(np.sqrt(np.nanmean(chi**2))),
        "cv_chi_mad_std": float(1.4826 * np.nanmedian(np.abs(chi))),
        "cv_chi_tot_mad_std": float(1.4826 * np.nanmedian(np.abs(chi_tot))),
        "emulator_error_median": float(np.median(emu_err)),
        "emulator_error_p90": float(np.percentile(emu_err, 90)),
    }


# ------------------------------------------------------------------------ diagnostics
def diagnostics_figure(report: dict[str, Any], path: str | Path, n_worst: int = 3) -> Path:
    """PNG: (top) validation residual scatter per pixel vs wavelength compared with the median
    noise and the emulator error; (below) the ``n_worst`` worst-fit validation spectra."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    wave, flux, ivar, pred = report["wavelength"], report["flux"], report["ivar"], report["oof_pred"]
    vm = report["val_mask"]
    good = (ivar > 0) & vm[:, None]
    r = np.where(good, pred - flux, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        scat = 1.4826 * np.nanmedian(np.abs(r - np.nanmedian(r, axis=0)), axis=0)
        noise = np.nanmedian(np.where(good, 1 / np.sqrt(np.where(good, ivar, 1)), np.nan), axis=0)
        chi = np.nanmedian(np.abs(r) * np.sqrt(np.where(good, ivar, 0)), axis=1)
        chi = np.where(vm, chi, -np.inf)
    worst = np.argsort(chi)[::-1][:n_worst]
    fig, axes = plt.subplots(1 + len(worst), 1, figsize=(11, 2.6 * (1 + len(worst))), sharex=True)
    axes = np.atleast_1d(axes)
    ax = axes[0]
    ax.plot(wave, scat, lw=0.6, label="CV residual scatter (1.4826 MAD)")
    ax.plot(wave, noise, lw=0.6, label="median noise 1/sqrt(ivar)")
    ax.plot(wave, report["emulator_error"], lw=0.6, label="emulator error (beyond noise)")
    ax.set_yscale("log")
    ax.set_ylabel("normalised flux")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(
        f"GSN cross-validation: {report['n_star']} stars, median |resid| {report['cv_median_abs_resid']:.4f}",
        fontsize=9,
    )
    names = report["config"]["labels"]
    for ax, i in zip(axes[1:], worst):
        g = ivar[i] > 0
        ax.plot(wave, np.where(g, flux[i], np.nan), lw=0.5, color="k", label="data")
        ax.plot(wave, pred[i], lw=0.5, color="C3", label="emulator (out-of-fold)")
        lab = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, report["label_values"][i]))
        ax.set_title(f"{report['star'][i]}: {lab}  (median |chi| {chi[i]:.2f})", fontsize=8)
        ax.set_ylabel("flux")
        ax.legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("vacuum wavelength [A]")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------ fixtures
def analytic_cube(
    n_star: int = 400,
    *,
    wavelength: np.ndarray | None = None,
    snr: float | None = None,
    seed: int = 0,
    alpha: bool = False,
) -> xr.Dataset:
    """A synthetic normalised training cube of smooth analytic spectra (tests, benchmarks).

    Flux = 1 - sum of Gaussian lines whose depths/widths depend smoothly (nonlinearly) on
    teff (3500-8000 K), logg (0-5), feh (-2.5..0.5) [and alpha_fe (-0.2..0.6)], plus Balmer-like
    lines. ``snr=None``: noiseless (ivar 1e8)."""
    from .cube import log_lambda_grid, make_spectra

    rng = np.random.default_rng(seed)
    w = log_lambda_grid(4000, 4500) if wavelength is None else np.asarray(wavelength, np.float64)
    teff = rng.uniform(3500, 8000, n_star)
    logg = rng.uniform(0, 5, n_star)
    feh = rng.uniform(-2.5, 0.5, n_star)
    afe = rng.uniform(-0.2, 0.6, n_star)
    lines = np.random.default_rng(12345).uniform(w[0], w[-1], 60)
    exc = np.random.default_rng(54321).uniform(0, 5, lines.size)
    kind = np.arange(lines.size) % 4
    theta = 5040.0 / teff
    flux = np.ones((n_star, w.size))
    for c, chi, kd in zip(lines, exc, kind):
        strength = 10 ** (feh + (afe if alpha and kd == 3 else 0) - theta * chi * 0.3 + 0.3 * (kd == 1) * (logg - 3) / 2)
        depth = 0.8 * strength / (1 + strength)
        width = 1.2 + 0.3 * (logg - 2.5) * (kd == 2) + 0.1 * kd
        flux -= depth[:, None] * np.exp(-0.5 * ((w[None, :] - c) / width[:, None]) ** 2)
    for c in (4102.9, 4341.7, 4862.7, 6564.6):  # Balmer-like, peaks near 9500 K
        depth = 0.6 * np.exp(-0.5 * ((teff - 9500) / 3000) ** 2)
        width = 3 + 4 * (logg / 5)
        flux -= depth[:, None] * np.exp(-np.abs((w[None, :] - c) / width[:, None]) ** 1.5)
    flux = np.clip(flux, 0.02, None)
    if snr is None:
        ivar = np.full_like(flux, 1e8)
    else:
        sig = flux / snr
        flux = flux + rng.normal(size=flux.shape) * sig
        ivar = 1 / sig**2
    labels = {"teff": teff, "logg": logg, "feh": feh}
    if alpha:
        labels["alpha_fe"] = afe
    return make_spectra(
        [f"s{i:05d}" for i in range(n_star)], w, flux, ivar, labels=labels, normalised=True,
        source=["analytic"] * n_star, attrs={"source": "analytic", "version": "1",
        "normalisation": json.dumps({"method": "none", "note": "analytic spectra are normalised"})},
    )


@dataclass
class CVFolds:
    """The cross-validation of one training: which fold model held out which star.

    ``models[j]`` (numpy GSNs carrying the CV emulator error) did not train on the stars with
    ``model_index == j`` (-1: no fold model held the star out); ``flux``/``ivar`` (n_star, n_pix)
    are the normalised training spectra on the model grid, ``labels`` (n_star, n_label) their
    reference labels (physical units), ``seed`` the training seed. The calibration step
    (:mod:`gsn_dask.calibration`) fits the held-out stars with these models; ``fits`` keeps the
    first such fits (the fit settings, star indices, fitted labels and their sigmas) so that a later step reuses them."""

    models: list[GSN]
    model_index: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    labels: np.ndarray
    seed: int
    fits: tuple[Any, np.ndarray, np.ndarray, np.ndarray] | None = None


def open_training_cube(train_ds: xr.Dataset | str | Path) -> tuple[xr.Dataset, str | None]:
    """The training cube (opened if a path) and its resolved path (None if unknown)."""
    if isinstance(train_ds, (str, Path)):
        from .cube import open_spectra

        return open_spectra(train_ds), str(Path(train_ds).resolve())
    src = train_ds.encoding.get("source")
    return train_ds, (str(src) if src else None)


def network_template(data: dict[str, Any], recipe: TrainRecipe) -> dict[str, Any]:
    """The GSN constructor arguments shared by every network of one training (labels, units,
    bounds = the training range, transforms, grid, normalisation recipe)."""
    names, lab = data["labels"], data["label_values"]
    bounds = np.stack([lab.min(axis=0), lab.max(axis=0)], axis=1)
    for j, nm in enumerate(names):
        if bounds[j, 1] <= bounds[j, 0]:
            raise ValueError(f"label {nm} is constant over the training set ({bounds[j, 0]}): cannot train on it")
    return {
        "label_names": names,
        "label_units": [LABEL_UNITS.get(nm, "") for nm in names],
        "bounds": bounds,
        "label_transforms": [recipe.label_transforms.get(nm, "identity") for nm in names],
        "wavelength": data["wavelength"],
        "normalisation": default_normalisation(data["attrs"]),
    }


def labels_sha256(labels: np.ndarray) -> str:
    """sha256 of a label table (little-endian float64): which labels a network trained on."""
    return hashlib.sha256(np.ascontiguousarray(labels, "<f8").tobytes()).hexdigest()


def training_config_record(data: dict[str, Any], recipe: TrainRecipe, device: Any, threads: int | None) -> dict:
    """``model.json`` ``training.config``: the recipe as resolved for this cube, plus the device and the torch CPU threads used."""
    names = data["labels"]
    return {
        "labels": names, "hidden": recipe.hidden_widths, "activation": recipe.activation,
        "label_transforms": {nm: recipe.label_transforms.get(nm, "identity") for nm in names},
        "epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr,
        "weight_decay": recipe.weight_decay, "dropout": recipe.dropout, "patience": recipe.patience,
        "folds": recipe.folds, "val_fraction": recipe.val_fraction, "weight_floor": recipe.weight_floor,
        "seed": recipe.seed, "device": str(device), "threads": threads, "wavelength_range": recipe.wavelength_range,
        "label_ranges": recipe.label_ranges, "mask_telluric": recipe.mask_telluric, "final": recipe.final,
        "ensemble": int(recipe.ensemble), "label_systematics": bool(recipe.label_systematics),
    }


def training_meta(
    data: dict[str, Any], recipe: TrainRecipe, cfg: dict, cube_path: str | None, metrics: dict[str, float],
    fold_info: list[dict[str, Any]], n_final: int, t_total: float,
) -> dict[str, Any]:
    """The provenance part of ``model.json``: package version, training set and settings, CV."""
    from ._version import __version__

    attrs = data["attrs"]
    return {
        "package_version": __version__,
        "training": {
            "cube_path": cube_path,
            "n_star_cube": data["n_star_cube"],
            "n_star": int(data["label_values"].shape[0]),
            "n_synthetic": int(np.sum(data["synthetic"])),
            "labels_sha256": labels_sha256(data["label_values"]),
            "cube_source": attrs.get("source"),
            "cube_version": attrs.get("version") or attrs.get("source_version"),
            "cube_gsn_dask_version": attrs.get("gsn_dask_version"),
            "cube_schema": attrs.get("schema"),
            "config": cfg,
            "recipe": recipe.to_json(),
            "recipe_is_default": recipe == DEFAULT_RECIPE,
            "final_epochs": int(n_final),
            "train_time_s": round(t_total, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "cv": {**metrics, "folds": fold_info, "kind": "kfold" if recipe.folds >= 2 else "holdout"},
    }


#: Distillation: jittered copies of the training inputs at which the student also learns the
#: teacher, and the jitter (sigma, a fraction of each label's scaled range; about 150 K at 5500 K,
#: 0.12 dex in log g and 0.08 dex in [Fe/H] on MILES).
DISTIL_COPIES = 2
DISTIL_JITTER = 0.02


def distillation_set(teacher: GSN, x: np.ndarray, n_label: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) float32 a student network learns ``teacher`` from: the scaled inputs ``x``
    and :data:`DISTIL_COPIES` copies with the first ``n_label`` inputs jittered by
    :data:`DISTIL_JITTER` (clipped to the scaled range), and the teacher's spectra at all of them."""
    rng = np.random.default_rng(seed)
    lo, hi = SCALE_RANGE
    copies = [x]
    for _ in range(DISTIL_COPIES):
        c = x.copy()
        c[:, :n_label] = np.clip(c[:, :n_label] + DISTIL_JITTER * (hi - lo) * rng.standard_normal((len(c), n_label)), lo, hi)
        copies.append(c.astype(np.float32))
    inputs = np.concatenate(copies)
    return inputs, teacher.predict(teacher.unscale(inputs)).astype(np.float32)


def distillation_record(members: int, epochs: int, n_star: int) -> dict[str, Any]:
    """``model.json`` ``training.distillation``: how the model was distilled from ``members`` networks."""
    return {"members": int(members), "copies": DISTIL_COPIES, "jitter_scaled": DISTIL_JITTER, "epochs": int(epochs),
            "n_star": int(n_star), "method": "teacher = mean spectrum of the final networks; student = one network "
                                              "trained on the teacher's spectra at the training inputs and jittered copies"}


__all__ = [
    "DISTIL_COPIES",
    "DISTIL_JITTER",
    "SOURCE_LABEL",
    "CVFolds",
    "analytic_cube",
    "assign_folds",
    "cv_metrics",
    "labels_sha256",
    "diagnostics_figure",
    "distillation_record",
    "distillation_set",
    "loss_weights",
    "network_template",
    "observed_rows",
    "open_training_cube",
    "pixel_weights",
    "prepare_training_data",
    "robust_emulator_error",
    "stratified_folds",
    "training_config_record",
    "training_meta",
]
