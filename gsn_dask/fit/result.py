"""One star's fit result (:class:`FitResult`), shared by every sampler strategy: the not-fitted
row, the input checks, the flag rules and the label-systematics widening of the intervals. Needs
numpy only (no emcee, no torch), so every strategy imports it."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..flags import Flag
from .config import FitConfig

#: A usable pixel of a normalised spectrum (continuum ~1) with |flux| above this, or an inverse
#: variance above IVAR_LIMIT (S/N > 1e8 per pixel), is not a spectrum the posterior can describe
#: (its weights overflow the float32 emulator arithmetic): the star is refused as bad input.
FLUX_LIMIT = 1e6
IVAR_LIMIT = 1e16


def _nan_labels(n_label: int) -> np.ndarray:
    return np.full(n_label, np.nan)


@dataclass
class FitResult:
    """The result of one star: summaries in the model's label order (label units), rv (km/s),
    diagnostics, the :class:`~gsn_dask.flags.Flag` bits and ``status`` ("ok" or the reason the
    star was not fitted). A results row (``cube.empty_results``) holds the first thirteen fields;
    the rest are per-star diagnostics (``chain`` and the MAP start only with ``return_chain``)."""

    median: np.ndarray
    p16: np.ndarray
    p84: np.ndarray
    map: np.ndarray
    rv: float = math.nan
    rv_err: float = math.nan
    chi2_reduced: float = math.nan
    acceptance: float = math.nan
    tau_max: float = math.nan
    n_eff_min: float = math.nan
    flag: int = int(Flag.NOT_FITTED)
    status: str = "not fitted"
    samples: np.ndarray | None = None  # (n_draws, n_label) thinned posterior draws
    snr: float = math.nan  # per-pixel S/N used for LOW_SNR
    n_good: int = 0  # usable pixels
    n_steps: int = 0  # production steps
    seed: int = 0
    rv_map: float = math.nan  # km/s
    n_eval: int = 0  # emulator spectra evaluated
    map_success: bool = False
    tau: np.ndarray | None = None  # (ndim,) integrated autocorrelation times, steps
    p16_stat: np.ndarray | None = None  # statistical-only interval (before the systematics)
    p84_stat: np.ndarray | None = None
    label_systematics: np.ndarray | None = None  # sigma folded into p16/p84
    chain: np.ndarray | None = None  # (n_steps, n_walkers, ndim) with return_chain
    log_prob_chain: np.ndarray | None = None  # (n_steps, n_walkers) (emcee path)
    param_names: list[str] = field(default_factory=list)
    map_start: Any = None  # the MAP start (:class:`.start.MapResult`) with return_chain

    @classmethod
    def not_fitted(cls, n_label: int, status: str, *, flag: int = int(Flag.NOT_FITTED), **extra: Any) -> FitResult:
        """A star that was not fitted: NaN numbers, ``status`` = the reason."""
        return cls(median=_nan_labels(n_label), p16=_nan_labels(n_label), p84=_nan_labels(n_label),
                   map=_nan_labels(n_label), flag=int(flag), status=status, **extra)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def input_problem(flux: np.ndarray, ivar: np.ndarray, n_pix: int, *, normalised: bool = True) -> str | None:
    """Why a spectrum (flux, ivar on the model grid) cannot be fitted at all, or None. A
    ``normalised`` spectrum also has to stay within :data:`FLUX_LIMIT` on its usable pixels."""
    if flux.shape != (n_pix,) or ivar.shape != (n_pix,):
        return f"flux/ivar shape {flux.shape}/{ivar.shape} is not the model grid ({n_pix} px)"
    if not np.isfinite(flux).any():
        return "no finite flux (all NaN)"
    usable = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    if not usable.any():
        return "no pixel with ivar > 0"
    if normalised:
        big = float(np.max(np.abs(flux[usable])))
        if big > FLUX_LIMIT:
            return f"normalised flux out of range (max |flux| = {big:.3g} > {FLUX_LIMIT:.0e})"
        big = float(np.max(ivar[usable]))
        if big > IVAR_LIMIT:
            return f"normalised ivar out of range (max ivar = {big:.3g} > {IVAR_LIMIT:.0e}, S/N > 1e8 per pixel)"
    return None


def few_pixels(n_label: int, n_good: int, snr: float, config: FitConfig, **extra: Any) -> FitResult | None:
    """The NOT_FITTED + FEW_PIXELS result of a star with fewer than ``min_good_pixels`` usable
    pixels (LOW_SNR too when ``snr`` is low), or None when it has enough."""
    if n_good >= config.min_good_pixels:
        return None
    flag = Flag.NOT_FITTED | Flag.FEW_PIXELS
    if np.isfinite(snr) and snr < config.snr_low:
        flag |= Flag.LOW_SNR
    return FitResult.not_fitted(
        n_label, f"few good pixels: {n_good} < min_good_pixels={config.min_good_pixels}",
        flag=int(flag), snr=float(snr), n_good=int(n_good), **extra)


def result_flags(post: Any, med: np.ndarray, rv: float, chi2r: float, snr: float, conv: bool, cfg: FitConfig,
                 arm_missing: bool = False) -> int:
    """Flag bits (:class:`gsn_dask.flags.Flag`) of a fitted star. ``post`` provides ``lower``/``upper``
    (labels then rv) and ``n_label``, like :class:`~gsn_dask.fit.posterior.SpectrumPosterior`;
    ``arm_missing``: an arm was left out of the fit (too few good pixels)."""
    flag = Flag.ARM_MISSING if arm_missing else 0
    if not conv:
        flag |= Flag.NOT_CONVERGED
    span = post.upper - post.lower
    tol = cfg.edge_fraction * span
    L = post.n_label
    if np.any((med - post.lower[:L] < tol[:L]) | (post.upper[:L] - med < tol[:L])):
        flag |= Flag.PRIOR_EDGE
    if (rv - post.lower[L] < tol[L]) or (post.upper[L] - rv < tol[L]):
        flag |= Flag.RV_EDGE
    if not (chi2r <= cfg.chi2_poor):
        flag |= Flag.POOR_FIT
    if np.isfinite(snr) and snr < cfg.snr_low:
        flag |= Flag.LOW_SNR
    return int(flag)


class LabelSystematics:
    """A model's per-label systematic sigma (label units, ``label_names`` order): one global
    value per label, optionally piecewise-constant values in bins of one label (``by``, e.g.
    teff: cool and hot stars have larger errors than solar-type ones), looked up at the star's
    posterior median of that label; and optionally ``classes`` = (label, boundaries, one
    LabelSystematics per class), e.g. giants and dwarfs split at log g 3.8, each with its own
    values and bins, looked up first; with ``widen_only`` a class's value is at least the unsplit
    one (all stars) at the same median: the split may widen an interval, never narrow it."""

    def __init__(self, label_names: list[str], sigma: np.ndarray, by: str | None = None,
                 edges: np.ndarray | None = None, binned: np.ndarray | None = None,
                 classes: tuple[str, np.ndarray, list[LabelSystematics]] | None = None,
                 widen_only: bool = False) -> None:
        self.label_names = list(label_names)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        self.by = by if by in self.label_names and edges is not None and binned is not None else None
        self.edges = None if self.by is None else np.asarray(edges, dtype=np.float64)
        self.binned = None if self.by is None else np.asarray(binned, dtype=np.float64)  # (n_bin, n_label)
        ok = classes is not None and classes[0] in self.label_names and len(classes[2]) == len(classes[1]) + 1
        self.classes = (classes[0], np.asarray(classes[1], dtype=np.float64), list(classes[2])) if ok else None
        self.widen_only = bool(widen_only) and self.classes is not None

    def at(self, median: np.ndarray) -> np.ndarray:
        """Sigma (n_label,) for a star with posterior medians ``median``."""
        if self.classes is not None:
            name, bounds, groups = self.classes
            c = float(np.asarray(median)[self.label_names.index(name)])
            if np.isfinite(c):
                own = groups[int(np.searchsorted(bounds, c, side="right"))].at(median)
                return np.maximum(own, self._unsplit_at(median)) if self.widen_only else own
        return self._unsplit_at(median)

    def _unsplit_at(self, median: np.ndarray) -> np.ndarray:
        """The value of all stars (no classes) for ``median``: binned where there are bins."""
        if self.by is None:
            return self.sigma
        v = float(np.asarray(median)[self.label_names.index(self.by)])
        if not np.isfinite(v):
            return self.sigma
        k = int(np.clip(np.searchsorted(self.edges, v, side="right") - 1, 0, len(self.binned) - 1))
        return self.binned[k]

    def plus(self, add: np.ndarray) -> LabelSystematics:
        """These systematics with ``add`` (n_label,) added in quadrature to every value."""
        binned = None if self.binned is None else np.hypot(self.binned, add[None, :])
        classes = None if self.classes is None else (*self.classes[:2], [g.plus(add) for g in self.classes[2]])
        return LabelSystematics(self.label_names, np.hypot(self.sigma, add), self.by, self.edges, binned, classes,
                                self.widen_only)

    def to_record(self) -> dict[str, Any]:
        """The ``model.json`` form (:func:`systematics_from_record` reads it back)."""
        d: dict[str, Any] = {"sigma": dict(zip(self.label_names, self.sigma.tolist()))}
        if self.by is not None:
            d["binned"] = {"by": self.by, "edges": self.edges.tolist(),
                           "sigma": {n: self.binned[:, j].tolist() for j, n in enumerate(self.label_names)}}
        if self.classes is not None:
            d["classes"] = {"by": self.classes[0], "at": self.classes[1].tolist(),
                            "groups": [g.to_record() for g in self.classes[2]],
                            **({"rule": "widen"} if self.widen_only else {})}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_record(), sort_keys=True)


def _finite_numbers(values: Any, *, nonnegative: bool = True) -> bool:
    """A non-empty list of finite numbers (>= 0 unless ``nonnegative`` is False)."""
    return isinstance(values, list) and len(values) > 0 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= 0 or not nonnegative)
        for v in values)


def model_label_systematics(model: Any, cfg: FitConfig) -> LabelSystematics | None:
    """The per-label systematic uncertainty recorded in the model's ``meta["label_systematics"]``
    by the calibration step after training (:mod:`gsn_dask.calibration`), or None when the
    model has none or ``cfg.label_systematics`` is off. Binned values are used when complete."""
    if not cfg.label_systematics:
        return None
    base = systematics_from_record((getattr(model, "meta", None) or {}).get("label_systematics"), model.label_names)
    return with_extra_systematics(base, model.label_names, cfg.extra_systematics)


def with_extra_systematics(base: LabelSystematics | None, label_names: Sequence[str],
                           extra: Mapping[str, float]) -> LabelSystematics | None:
    """``base`` with ``extra`` ({label: sigma}, others 0) added in quadrature to its global and
    binned values; ``base`` itself when ``extra`` is empty, None when both are nothing."""
    names = list(label_names)
    add = np.array([float(extra.get(n, 0.0)) for n in names], dtype=np.float64)
    if not np.any(add > 0):
        return base
    if base is None:
        return LabelSystematics(names, add)
    return base.plus(add)


def systematics_from_record(rec: Mapping[str, Any] | str | None, label_names: Sequence[str]) -> LabelSystematics | None:
    """A :class:`LabelSystematics` from a ``model.json`` record or its JSON (as in the results
    attrs ``label_systematics``); None if absent, "null", incomplete or all zero."""
    if isinstance(rec, str):
        rec = json.loads(rec)
    rec = rec or {}
    sig = rec.get("sigma") or {}
    names = list(label_names)
    if not _finite_numbers([sig.get(n) for n in names]):
        return None
    out = np.array([float(sig[n]) for n in names], dtype=np.float64)
    if not np.any(out > 0):
        return None
    b = rec.get("binned") or {}
    by, edges, bs = b.get("by"), b.get("edges"), b.get("sigma") or {}
    binned = None
    if by in names and _finite_numbers(edges, nonnegative=False) and all(
            _finite_numbers(bs.get(n)) and len(bs[n]) == len(edges) - 1 for n in names):
        binned = np.array([bs[n] for n in names]).T
    return LabelSystematics(names, out, by if binned is not None else None, edges, binned, _classes(rec, names),
                            widen_only=(rec.get("classes") or {}).get("rule") == "widen")


def _classes(rec: Mapping[str, Any], names: list[str]) -> tuple[str, np.ndarray, list[LabelSystematics]] | None:
    """The ``classes`` of a systematics record (label, boundaries, one LabelSystematics per class),
    or None when absent or incomplete (then the record's other values are used)."""
    c = rec.get("classes") or {}
    at, groups = c.get("at"), c.get("groups")
    if c.get("by") not in names or not _finite_numbers(at, nonnegative=False) or not isinstance(groups, list) \
            or len(groups) != len(at) + 1:
        return None
    parsed = [systematics_from_record(g, names) if isinstance(g, Mapping) else None for g in groups]
    return (c["by"], np.array(at, dtype=np.float64), parsed) if all(g is not None for g in parsed) else None


def widen_intervals(res: FitResult | MutableMapping[str, Any],
                    sigma_sys: np.ndarray | LabelSystematics | None) -> FitResult | MutableMapping[str, Any]:
    """Fold a per-label systematic uncertainty into a fitted star's summaries (in place; ``res``
    a :class:`FitResult` or a mapping with its field names).

    The reported label is the emulator's label plus an independent N(0, sigma_sys^2) offset
    (the label-scale error learned in cross-validation), i.e. the posterior convolved with that
    Gaussian (``sigma_sys``: an array, or a :class:`LabelSystematics` looked up at the star's
    median): the median and MAP stay, each side of the 68% interval grows in quadrature,
    ``p84 = median + hypot(p84 - median, sigma)`` (exact for a Gaussian posterior), and the
    posterior draws get deterministic offsets ``sigma * Phi^-1((k + 1/2) / n)`` in a fixed
    scrambled order (no random stream, so both samplers and every engine agree).
    ``p16_stat``/``p84_stat`` keep the statistical-only interval."""
    d = res.__dict__ if isinstance(res, FitResult) else res
    if sigma_sys is None or d.get("status") != "ok":
        return res
    if isinstance(sigma_sys, LabelSystematics):
        sigma_sys = sigma_sys.at(d["median"])
    sig = np.asarray(sigma_sys, dtype=np.float64)
    med = np.asarray(d["median"], dtype=np.float64)
    lo, hi = np.asarray(d["p16"], dtype=np.float64), np.asarray(d["p84"], dtype=np.float64)
    d["p16_stat"], d["p84_stat"] = lo.copy(), hi.copy()
    d["p16"] = med - np.hypot(med - lo, sig)
    d["p84"] = med + np.hypot(hi - med, sig)
    draws = d.get("samples")
    if draws is not None and len(draws):
        n = draws.shape[0]
        from statistics import NormalDist

        q = np.array([NormalDist().inv_cdf((k + 0.5) / n) for k in range(n)])
        order = np.argsort(np.sin(np.arange(1, n + 1)[:, None] * (12.9898 + 78.233 * np.arange(draws.shape[1]))), axis=0)
        d["samples"] = draws + q[order] * sig
    d["label_systematics"] = sig.copy()
    return res


@dataclass(frozen=True)
class Reporting:
    """How a fit's emulator-scale posterior becomes the reported labels (:func:`report_labels`): the
    model's label ``systematics`` (or None) and its Kiel ``prior`` on (Teff, log g) (or None) with
    the label indices ``prior_idx`` and the model's bounds."""

    systematics: LabelSystematics | None
    prior: Any = None
    prior_idx: tuple[int, int] | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None

    def prior_json(self) -> str:
        """The prior's identity for a run's attrs: "null", or its record and a digest of its grid."""
        if self.prior is None:
            return "null"
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(self.prior.log_p).tobytes()).hexdigest()[:16]
        return json.dumps({**dict(self.prior.record), "log_p_sha256": digest}, sort_keys=True)


def reporting(model: Any, cfg: FitConfig) -> Reporting:
    """The :class:`Reporting` of ``model`` under ``cfg``: :func:`model_label_systematics` and, unless
    ``cfg.label_prior`` is "none", the model's Kiel prior (:mod:`gsn_dask.label_prior`)."""
    from ..label_prior import LABELS, for_model

    prior = None if cfg.label_prior == "none" else for_model(model)
    names = list(model.label_names)
    if prior is None or not set(LABELS) <= set(names):
        return Reporting(model_label_systematics(model, cfg))
    b = np.asarray(model.bounds, dtype=np.float64)
    return Reporting(model_label_systematics(model, cfg), prior, (names.index(LABELS[0]), names.index(LABELS[1])),
                     b[:, 0].copy(), b[:, 1].copy())


def report_labels(res: FitResult | MutableMapping[str, Any], how: Reporting) -> FitResult | MutableMapping[str, Any]:
    """The reported labels of a fitted star (in place): the label systematics folded in
    (:func:`widen_intervals`), then the Kiel prior applied to median, p16, p84 and the draws
    (:func:`gsn_dask.label_prior.apply`, :func:`~gsn_dask.label_prior.reweight_draws`). The MAP and
    ``p16_stat``/``p84_stat`` stay the emulator's."""
    widen_intervals(res, how.systematics)
    d = res.__dict__ if isinstance(res, FitResult) else res
    if how.prior is None or d.get("status") != "ok":
        return res
    from ..label_prior import apply, reweight_draws

    d["median"], d["p16"], d["p84"] = apply(how.prior, d["median"], d["p16"], d["p84"], how.prior_idx,
                                            how.lower, how.upper)
    if d.get("samples") is not None and len(d["samples"]):
        d["samples"] = reweight_draws(how.prior, d["samples"], how.prior_idx)
    return res


__all__ = ["FLUX_LIMIT", "IVAR_LIMIT", "FitResult", "LabelSystematics", "Reporting", "few_pixels", "input_problem",
           "model_label_systematics", "report_labels", "reporting", "result_flags", "systematics_from_record",
           "widen_intervals", "with_extra_systematics"]
