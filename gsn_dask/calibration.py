"""Calibration: the per-label systematic uncertainty of a GSN, measured by its training
cross-validation, as a step after training (``gsn-dask train`` runs both).

The posterior (:mod:`gsn_dask.fit.posterior`) knows the noise and the per-pixel emulator error, so on
emulator-made spectra its intervals are right (injection coverage ~68%). On real stars the
spread of (fit - reference label) is several times wider: the emulator's label scale inherits
the errors of the training labels and its own interpolation errors, and these are correlated
across all pixels, so no per-pixel error term can express them (a low-rank pixel-covariance
from the CV residuals, rank 32, only halved the z spread in our MILES test).

So the calibration is done in label space. Every training star is fitted (MAP + Laplace
covariance, :func:`gsn_dask.fit.start.find_map`) by the fold model that did not see it; per label the
systematic sigma is the value with which ``|fit - label| <= hypot(sigma_stat, sigma)`` for 68.3%
of the stars (``target="coverage"``: the interval covers the reference label as often as a 68%
interval should; a quantile, so robust to the few stars whose reference labels are wrong), or
(``target="median"``, the default) that makes the median |z| of
``z = (fit - label) / hypot(sigma_stat, sigma)`` 0.6745 as for a unit Gaussian (also robust), which
covers fewer than 68% when the errors have heavy tails, as MILES' log g and [Fe/H] do. Sigma is solved overall
and in quantile bins of the fitted Teff (the errors of cool and hot stars are twice those of
solar-type stars in MILES), optionally apart for giants and dwarfs (``split``). The fit then
widens each star's 68% interval in quadrature by the value of its bin
(:func:`gsn_dask.fit.result.widen_intervals`).

The reference labels' own errors are part of what this measures: intervals calibrated this way
cover the *reference* values 68% of the time, which is what a validation against a survey or
the literature checks.

The same held-out fits (made once, kept in :attr:`CVFolds.fits`) serve two training options that
act on the final network only: leaving out the stars whose labels their spectra contradict
(:func:`contradicted_labels`, recipe ``label_outlier_z``) and training on labels moved toward
their fits (errors in variables: :func:`refined_labels`, recipe ``label_noise_share``).

Layer 5: imports the emulator and the fitter; the emulator modules never import this one.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .emulator import GSN
from .emulator_recipe import DEFAULT_RECIPE, SPLIT_RULES, TrainRecipe
from .fit.config import FitConfig
from .fit.posterior import SpectrumPosterior
from .fit.start import find_map

if TYPE_CHECKING:  # pragma: no cover - typing only (torch is needed to train, not to calibrate)
    import xarray as xr

    from .emulator_data import CVFolds

log = logging.getLogger(__name__)


def _bar(it: Iterable[int], progress: bool) -> Iterable[int]:
    """A tqdm bar over the CV fits on a terminal only (``disable=None``), else ``it`` itself."""
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc="label systematics (CV fits)", unit="star", disable=None, leave=False)


def _note(progress: bool, msg: str) -> None:
    """The summary line of the step: on stderr with ``progress``, else at INFO."""
    if progress:
        print(f"[gsn-dask train] {msg}", file=sys.stderr, flush=True)
    else:
        log.info(msg)


#: median |z| of a unit Gaussian (Phi^-1(0.75)).
MEDIAN_ABS_Z = 0.6744897501960817
#: probability of a unit Gaussian inside one sigma
COVERAGE_68 = 0.6826894921370859


def _bisect_floor(delta: np.ndarray, sigma_stat: np.ndarray, enough: Callable[[np.ndarray, np.ndarray], bool],
                  hi: float) -> float:
    """The smallest sigma >= 0 (bisection on [0, ``hi`` x max |delta|]) for which ``enough(|delta|,
    hypot(sigma_stat, sigma))`` holds on the finite pairs; 0 if it holds at 0, NaN without pairs."""
    d = np.abs(np.asarray(delta, dtype=np.float64))
    s = np.asarray(sigma_stat, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(s) & (s >= 0)
    d, s = d[ok], s[ok]
    if d.size == 0:
        return float("nan")
    if enough(d, s):
        return 0.0
    lo, up = 0.0, float(np.max(d)) * hi + 1e-12
    for _ in range(100):
        mid = 0.5 * (lo + up)
        lo, up = (lo, mid) if enough(d, np.sqrt(s**2 + mid**2)) else (mid, up)
    return 0.5 * (lo + up)


def solve_sigma_sys(delta: np.ndarray, sigma_stat: np.ndarray, target: float = MEDIAN_ABS_Z) -> float:
    """The sigma >= 0 with ``median(|delta| / hypot(sigma_stat, sigma)) = target`` (bisection);
    0 if the statistical errors alone already give a median |z| <= target."""
    def enough(d: np.ndarray, width: np.ndarray) -> bool:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.median(d / width)) <= target

    return _bisect_floor(delta, sigma_stat, enough, 1.0 / target)


def solve_sigma_coverage(delta: np.ndarray, sigma_stat: np.ndarray, target: float = COVERAGE_68) -> float:
    """The sigma >= 0 with which a fraction ``target`` of the stars has ``|delta| <=
    hypot(sigma_stat, sigma)`` (the 68% interval covers the reference label 68% of the time;
    bisection); 0 if the statistical errors alone cover that many."""
    return _bisect_floor(delta, sigma_stat, lambda d, width: float(np.mean(d <= width)) >= target, 1.0)


def out_of_fold_fits(models: Sequence[Any], flux: np.ndarray, ivar: np.ndarray, model_index: np.ndarray,
                     idx: np.ndarray, config: FitConfig, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(fit, sd) (len(idx), n_label): MAP labels and Laplace sigmas of the training stars ``idx``,
    each fitted by the fold model ``models[model_index[i]]`` that did not train on it; NaN rows for
    stars with too few good pixels or a failed fit."""
    n_label = len(models[0].label_names)
    fit = np.full((len(idx), n_label), np.nan)
    sd = np.full((len(idx), n_label), np.nan)
    for j in _bar(range(len(idx)), progress):
        i = int(idx[j])
        try:
            post = SpectrumPosterior(models[int(model_index[i])], flux[i], ivar[i], config)
            if post.n_good < config.min_good_pixels:
                continue
            mr = find_map(post, n_coarse=config.n_coarse, n_starts=config.n_starts)
        except (ValueError, np.linalg.LinAlgError) as exc:  # a bad training spectrum: skip it
            log.debug("out-of-fold fit: star %d skipped (%s)", i, exc)
            continue
        fit[j] = mr.theta[:n_label]
        sd[j] = np.sqrt(np.clip(np.diag(mr.cov)[:n_label], 0.0, None))
    return fit, sd


HeldOutFits = tuple[FitConfig, np.ndarray, np.ndarray, np.ndarray]  # (settings, sorted star indices, fit, sd)


def _held_out_deltas(models: Sequence[Any], flux: np.ndarray, ivar: np.ndarray, labels: np.ndarray,
                     model_index: np.ndarray, idx: np.ndarray, config: FitConfig | None, progress: bool,
                     done: HeldOutFits | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, HeldOutFits]:
    """(fit, sd, delta = fit - label, ok = rows all finite, the fits as ``done``), each (len(idx),
    n_label) but ok: the stars ``idx`` (sorted) fitted by their fold models (:func:`out_of_fold_fits`;
    ``config`` without label systematics or prior, default :class:`FitConfig`). Fits in ``done``
    made with the same settings are taken from it, not repeated (each star's fit is its own)."""
    cfg = (config or FitConfig()).replace(label_systematics=False, label_prior="none")
    if done is not None and done[0] == cfg and np.isin(idx, done[1]).all():
        rows = np.searchsorted(done[1], idx)
        fit, sd = done[2][rows], done[3][rows]
    else:
        fit, sd = out_of_fold_fits(models, np.asarray(flux, dtype=np.float64), np.asarray(ivar, dtype=np.float64),
                                   model_index, idx, cfg, progress=progress)
    delta = fit - np.asarray(labels, dtype=np.float64)[idx]
    return fit, sd, delta, np.all(np.isfinite(delta) & np.isfinite(sd), axis=1), (cfg, idx, fit, sd)


#: how a systematic sigma is solved: the robust spread of z, or the 68% coverage of the labels
SOLVERS = {"median": solve_sigma_sys, "coverage": solve_sigma_coverage}
#: each solver's rule, as ``model.json`` → ``label_systematics.method`` states it
SOLVER_RULES = {"median": "median |fit - label| / hypot(sigma_stat, sigma) = 0.6745",
                "coverage": "|fit - label| <= hypot(sigma_stat, sigma) for 68.3% of the stars"}


def label_rules(target: str | Mapping[str, str], names: Sequence[str]) -> list[str]:
    """Each label's rule (a key of :data:`SOLVERS`): ``target`` for every label, or label -> target
    (the labels not named: ``median``)."""
    return [target] * len(names) if isinstance(target, str) else [target.get(n, "median") for n in names]


def solver_rule(target: str | Mapping[str, str], names: Sequence[str]) -> str:
    """The rule of ``target`` in words, as ``model.json`` → ``label_systematics.method`` states it."""
    if isinstance(target, str):
        return SOLVER_RULES[target]
    return "; ".join(f"{n}: {SOLVER_RULES[rule]}" for n, rule in zip(names, label_rules(target, names)))


def _quantile_bins(fit: np.ndarray, sd: np.ndarray, delta: np.ndarray, names: list[str], by: str | None,
                   n_bins: int, solve: list[Any]) -> dict[str, Any] | None:
    """The ``binned`` record: sigma per label in ``n_bins`` quantile bins of the fitted ``by``; None
    when there are fewer than 2 bins or a bin cannot be solved."""
    if by not in names or n_bins < 2:
        return None
    v = fit[:, names.index(by)]
    edges = np.quantile(v, np.linspace(0.0, 1.0, n_bins + 1))
    k = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, n_bins - 1)
    binned = {n: [solve[j](delta[k == b, j], sd[k == b, j]) for b in range(n_bins)] for j, n in enumerate(names)}
    if not all(np.isfinite(x) for vals in binned.values() for x in vals):
        return None
    return {"by": by, "edges": [float(e) for e in edges], "sigma": {n: [float(x) for x in vals] for n, vals in binned.items()},
            "n_star": [int((k == b).sum()) for b in range(n_bins)]}


def systematics_record(fit: np.ndarray, sd: np.ndarray, delta: np.ndarray, names: Sequence[str], *,
                       by: str | None = "teff", split: tuple[str, float] | None = None,
                       target: str | Mapping[str, str] = "median", max_bins: int = 5, min_per_bin: int = 60,
                       split_rule: str = "own") -> dict[str, Any]:
    """The systematics of held-out fits (``fit``, their sigmas ``sd`` and ``delta = fit - label``,
    each (n_star, n_label), all finite): per label ``sigma`` solved by ``target`` (:data:`SOLVERS`;
    one for every label or label -> one, :func:`label_rules`),
    ``bias`` (median delta), the robust z spread before and after; ``binned`` in up to ``max_bins``
    quantile bins of the fitted ``by`` with at least ``min_per_bin`` stars each; with ``split`` =
    (label, value), ``classes``: the same, apart, for the stars fitted below and above the value
    (e.g. giants and dwarfs at log g 3.8), when each class has ``min_per_bin`` stars; ``split_rule``
    (:data:`SPLIT_RULES`) ``own``: a star gets its class's floors, ``widen``: at least the floors of
    all stars (``classes.rule``; :class:`gsn_dask.fit.result.LabelSystematics`)."""
    if split_rule not in SPLIT_RULES:
        raise ValueError(f"split_rule {split_rule!r}: use one of {SPLIT_RULES}")
    names = list(names)
    solve = [SOLVERS[rule] for rule in label_rules(target, names)]

    def one(f: np.ndarray, s: np.ndarray, d: np.ndarray) -> dict[str, Any]:
        sig = np.array([solve[k](d[:, k], s[:, k]) for k in range(len(names))])
        with np.errstate(divide="ignore", invalid="ignore"):
            z0, z1 = (np.median(np.abs(d) / x, axis=0) / MEDIAN_ABS_Z for x in (s, np.hypot(s, sig)))
        rec = {"sigma": _clean(names, sig), "bias": _clean(names, np.median(d, axis=0)),
               "z_std_stat": _clean(names, z0), "z_std_total": _clean(names, z1), "n_star": int(len(d))}
        binned = _quantile_bins(f, s, d, names, by, min(int(max_bins), len(d) // max(int(min_per_bin), 1)), solve)
        return rec if binned is None else {**rec, "binned": binned}

    if not len(delta):  # nothing measured: every value null, as the record of a label without stars
        nan = _clean(names, np.full(len(names), np.nan))
        return {"sigma": nan, "bias": nan, "z_std_stat": nan, "z_std_total": nan, "n_star": 0}
    out = one(fit, sd, delta)
    if split is not None and split[0] in names:
        upper = fit[:, names.index(split[0])] >= float(split[1])
        if min(upper.sum(), (~upper).sum()) >= min_per_bin:
            out["classes"] = {"by": split[0], "at": [float(split[1])],
                              "groups": [one(fit[m], sd[m], delta[m]) for m in (~upper, upper)],
                              **({"rule": split_rule} if split_rule != "own" else {})}
    return out


def _clean(names: list[str], values: np.ndarray) -> dict[str, float | None]:
    """label -> value for JSON (an unmeasurable value -> null)."""
    return {n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, values)}


def estimate_label_systematics(
    models: Sequence[Any],
    flux: np.ndarray,
    ivar: np.ndarray,
    labels: np.ndarray,
    model_index: np.ndarray,
    *,
    config: FitConfig | None = None,
    max_stars: int | None = 800,
    seed: int = 0,
    by: str | None = "teff",
    split: tuple[str, float] | None = None,
    target: str | Mapping[str, str] = "median",
    max_bins: int = 5,
    min_per_bin: int = 60,
    split_rule: str = "own",
    progress: bool = False,
    done: HeldOutFits | None = None,
) -> dict[str, Any]:
    """Per-label systematic sigma from held-out fits (module docstring).

    ``models[k]`` fits the stars with ``model_index == k`` (the fold model that did not train on
    them; -1 = skip); ``flux``/``ivar`` (stars, n_pix) normalised spectra on the models' grid,
    ``labels`` (stars, n_label) their reference labels. At most ``max_stars`` stars (a fixed
    random subset, ``seed``) are fitted. Returns the ``model.json`` record
    (:func:`systematics_record` with ``by``, ``split``, ``target``, ``max_bins``, ``min_per_bin``, ``split_rule``)
    and the method. ``done``: held-out fits already made (:attr:`CVFolds.fits`), reused where they
    cover these stars."""
    idx = np.flatnonzero(np.asarray(model_index) >= 0)
    if max_stars is not None and idx.size > max_stars:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=int(max_stars), replace=False))
    names = list(models[0].label_names)
    t0 = time.perf_counter()
    fit, sd, delta, ok, _ = _held_out_deltas(models, flux, ivar, labels, model_index, idx, config, progress, done)
    out = systematics_record(fit[ok], sd[ok], delta[ok], names, by=by, split=split, target=target,
                             max_bins=max_bins, min_per_bin=min_per_bin, split_rule=split_rule)
    out["method"] = ("K-fold CV: MAP + Laplace fit of each held-out training star by its fold model; "
                     f"per label sigma such that {solver_rule(target, names)}")
    out["time_s"] = round(time.perf_counter() - t0, 2)
    _note(progress, f"label systematics from {out['n_star']} CV stars in {out['time_s']:.1f} s: sigma "
                    + ", ".join(f"{n} {v:.4g}" if v is not None else f"{n} -" for n, v in out["sigma"].items()))
    return out


def _every_held_out_star(cv_folds: CVFolds, config: FitConfig | None, progress: bool
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(idx, sd, delta, ok, sigma_sys): every star a fold model held out (``idx``), fitted by it
    (:func:`_held_out_deltas`; the fits kept in ``cv_folds.fits``), and each label's systematic
    sigma (n_label,) solved from all of them."""
    idx = np.flatnonzero(np.asarray(cv_folds.model_index) >= 0)
    _, sd, delta, ok, cv_folds.fits = _held_out_deltas(cv_folds.models, cv_folds.flux, cv_folds.ivar, cv_folds.labels,
                                                       cv_folds.model_index, idx, config, progress, cv_folds.fits)
    sig = np.array([solve_sigma_sys(delta[ok, k], sd[ok, k]) for k in range(delta.shape[1])])
    return idx, sd, delta, ok, sig


def contradicted_labels(cv_folds: CVFolds, z_max: float | Mapping[str, float], *, config: FitConfig | None = None,
                        progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Training stars whose spectra contradict their labels, for a training that leaves them out
    (recipe ``label_outlier_z``). Every star a fold model held out is fitted by it (as in
    :func:`estimate_label_systematics`, all of them); per label, ``z = (fit - label) /
    hypot(sigma_stat, sigma_sys)`` with ``sigma_sys`` solved from these fits. ``z_max``: one
    threshold for every label, or label -> threshold (other labels are not judged). Returns (keep
    (n_star,) bool: False where |z| > the threshold in any label; stars not fitted are kept, and a
    record: ``z_max``, ``n_fitted``, ``n_left_out``, ``left_out_by_label``). The fits stay in
    ``cv_folds.fits`` for :func:`calibrate`."""
    names = list(cv_folds.models[0].label_names)
    limit = np.array([float(z_max.get(n, np.inf)) if isinstance(z_max, Mapping) else float(z_max) for n in names])
    idx, sd, delta, ok, sig = _every_held_out_star(cv_folds, config, progress)
    with np.errstate(divide="ignore", invalid="ignore"):
        over = ok[:, None] & (np.abs(delta) / np.hypot(sd, sig) > limit)
    keep = np.ones(len(cv_folds.labels), dtype=bool)
    keep[idx[over.any(axis=1)]] = False
    record = {"z_max": dict(z_max) if isinstance(z_max, Mapping) else float(z_max), "n_fitted": int(ok.sum()),
              "n_left_out": int((~keep).sum()), "left_out_by_label": {n: int(over[:, k].sum()) for k, n in enumerate(names)}}
    _note(progress, f"label screen: {record['n_left_out']} of {record['n_fitted']} stars contradict a label by more than "
                    f"{z_max} sigma ({', '.join(f'{n} {v}' for n, v in record['left_out_by_label'].items())}): "
                    "the final model trains without them")
    return keep, record


def refined_labels(cv_folds: CVFolds, share: float | Mapping[str, float], *, config: FitConfig | None = None,
                   progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Errors-in-variables training labels (recipe ``label_noise_share``). Every star a fold model
    held out is fitted by it (as in :func:`contradicted_labels`); per label the fit-versus-label
    variance beyond noise, ``sigma_sys**2``, is split into the labels' share ``s`` and the model's
    ``1 - s``, and each label moves to the precision-weighted mean of itself and its fit:
    ``label + w * (fit - label)``, ``w = s * sigma_sys**2 / (sigma_sys**2 + sigma_stat**2)``.
    ``share``: one value for every label, or label -> value (other labels stay). Stars not fitted
    keep their labels; no label leaves the training box. Returns (labels (n_star, n_label), record:
    ``share``, ``n_fitted``, ``sigma_sys``, and per label the median and 90th percentile of |move|)."""
    names = list(cv_folds.models[0].label_names)
    s = np.array([float(share.get(n, 0.0)) if isinstance(share, Mapping) else float(share) for n in names])
    idx, sd, delta, ok, sig = _every_held_out_star(cv_folds, config, progress)
    w = s * sig**2 / (sig**2 + sd**2)
    given = np.asarray(cv_folds.labels, dtype=np.float64)
    labels = given.copy()
    labels[idx] += np.where(ok[:, None] & np.isfinite(w), w * delta, 0.0)
    bounds = np.asarray(cv_folds.models[0].bounds, dtype=np.float64)  # the training box stays the given labels'
    labels = np.clip(labels, bounds[:, 0], bounds[:, 1])
    moved = np.abs(labels - given)[idx[ok]]
    record = {"share": dict(share) if isinstance(share, Mapping) else float(share), "n_fitted": int(ok.sum()),
              "sigma_sys": {n: float(v) for n, v in zip(names, sig)},
              "move_median": {n: float(np.median(moved[:, k])) if moved.size else 0.0 for k, n in enumerate(names)},
              "move_p90": {n: float(np.quantile(moved[:, k], 0.9)) if moved.size else 0.0 for k, n in enumerate(names)}}
    _note(progress, f"errors in variables: {record['n_fitted']} stars' labels moved toward their out-of-fold fits "
                    f"(median |move| {', '.join(f'{n} {v:.3g}' for n, v in record['move_median'].items())})")
    return labels, record


def calibrate(model: GSN, cv_folds: CVFolds, *, config: FitConfig | None = None, by: str | None = "teff",
              split: tuple[str, float] | None = None, target: str | Mapping[str, str] = "median",
              split_rule: str = "own", progress: bool = False) -> dict[str, Any]:
    """Measure the label systematics of a freshly trained ``model`` from its cross-validation
    (``cv_folds``, from :func:`gsn_dask.emulator_torch.train_gsn`'s report) and store the record
    in ``model.meta["label_systematics"]`` (written to ``model.json`` by ``model.save``); returns
    the record. The fold models fit their held-out stars (at most 800, a subset fixed by the
    training seed) with ``config`` (default :class:`~gsn_dask.fit.config.FitConfig`); ``by``,
    ``split``, ``target``, ``split_rule``: the bins, classes and rules of :func:`systematics_record`."""
    if not cv_folds.models:
        raise ValueError("no fold models: the training kept no cross-validation to calibrate with")
    if list(cv_folds.models[0].label_names) != list(model.label_names):
        raise ValueError(f"fold models emulate {cv_folds.models[0].label_names}, the model {model.label_names}")
    record = estimate_label_systematics(
        cv_folds.models, cv_folds.flux, cv_folds.ivar, cv_folds.labels, cv_folds.model_index,
        config=config, seed=cv_folds.seed, by=by, split=split, target=target, split_rule=split_rule, progress=progress,
        done=cv_folds.fits,
    )
    model.meta["label_systematics"] = record
    return record


def train_and_calibrate(
    train_ds: xr.Dataset | str | Path,
    recipe: TrainRecipe | None = None,
    *,
    device: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    **overrides: Any,
) -> tuple[GSN, dict[str, Any]]:
    """What ``gsn-dask train`` does: :func:`gsn_dask.emulator_torch.train_gsn` with ``recipe``
    (default :data:`~gsn_dask.emulator_recipe.DEFAULT_RECIPE`) and ``overrides``, then, when the
    recipe's ``label_systematics`` is on, :func:`calibrate`; with ``label_outlier_z`` the final model
    trains without the stars :func:`contradicted_labels` finds, with ``label_noise_share`` (by
    default ``auto``: Teff and [Fe/H] at 0.5 for a library of observed stars) on the labels of
    :func:`refined_labels`. Returns (model, report); the report's ``label_systematics``
    is the record (None when skipped). ``threads`` (given) also caps the native BLAS/OpenMP pools
    for the whole step: the out-of-fold fits that move the labels and set the floors run on numpy, and
    their last bits, and so the final network, follow the BLAS thread count. Needs torch."""
    from threadpoolctl import threadpool_limits

    from .emulator_torch import train_gsn

    recipe = (recipe or DEFAULT_RECIPE).replace(**overrides)
    with threadpool_limits(limits=int(threads)) if threads else contextlib.nullcontext():
        model, report = train_gsn(train_ds, recipe, device=device, threads=threads, progress=progress,
                                  screen=lambda cv, z_max: contradicted_labels(cv, z_max, progress=progress),
                                  relabel=lambda cv, share: refined_labels(cv, share, progress=progress))
        report["label_systematics"] = None
        if report["recipe"].label_systematics:
            report["label_systematics"] = calibrate(model, report["cv_folds"], by=recipe.label_systematics_by,
                                                    split=recipe.label_systematics_split,
                                                    target=recipe.label_systematics_target,
                                                    split_rule=recipe.label_systematics_split_rule, progress=progress)
    return model, report


__all__ = ["COVERAGE_68", "MEDIAN_ABS_Z", "SOLVERS", "SOLVER_RULES", "SPLIT_RULES", "calibrate", "contradicted_labels", "estimate_label_systematics",
           "label_rules", "solver_rule",
           "out_of_fold_fits", "refined_labels", "solve_sigma_coverage", "solve_sigma_sys", "systematics_record",
           "train_and_calibrate"]
