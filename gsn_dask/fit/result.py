"""Per-star result dicts shared by the emcee and batched samplers: the not-fitted row, input
checks, the flag rules and the label-systematics widening of the intervals. Needs numpy only
(no emcee, no torch), so both samplers import it."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..flags import Flag
from .config import FitConfig

RESULT_KEYS = (
    "median", "p16", "p84", "map", "rv", "rv_err", "chi2_reduced", "acceptance", "tau_max",
    "n_eff_min", "flag", "status", "samples",
)


def empty_result(n_label: int, *, status: str, flag: int = int(Flag.NOT_FITTED), **extra: Any) -> dict[str, Any]:
    """A result dict for a star that was not fitted (NaN numbers, ``status`` = reason)."""
    nan = np.full(n_label, np.nan)
    out: dict[str, Any] = {
        "median": nan.copy(), "p16": nan.copy(), "p84": nan.copy(), "map": nan.copy(),
        "rv": math.nan, "rv_err": math.nan, "chi2_reduced": math.nan, "acceptance": math.nan,
        "tau_max": math.nan, "n_eff_min": math.nan, "flag": int(flag), "status": status, "samples": None,
    }
    out.update(extra)
    return out


def input_problem(flux: np.ndarray, ivar: np.ndarray, n_pix: int) -> str | None:
    """Why a spectrum (flux, ivar on the model grid) cannot be fitted at all, or None."""
    if flux.shape != (n_pix,) or ivar.shape != (n_pix,):
        return f"flux/ivar shape {flux.shape}/{ivar.shape} is not the model grid ({n_pix} px)"
    if not np.isfinite(flux).any():
        return "no finite flux (all NaN)"
    if not (np.isfinite(ivar) & (ivar > 0)).any():
        return "no pixel with ivar > 0"
    return None


def result_flags(post: Any, med: np.ndarray, rv: float, chi2r: float, snr: float, conv: bool, cfg: FitConfig) -> int:
    """Flag bits (:class:`gsn_dask.flags.Flag`) of a fitted star. ``post`` provides ``lower``/``upper``
    (labels then rv) and ``n_label``, like :class:`~gsn_dask.fit.posterior.SpectrumPosterior`."""
    flag = 0
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


def model_label_systematics(model: Any, cfg: FitConfig) -> np.ndarray | None:
    """Per-label systematic uncertainty (model label units, ``model.label_names`` order) recorded
    in the model's ``meta["label_systematics"]["sigma"]`` by training
    (:func:`gsn_dask.fit.systematics.estimate_label_systematics`), or None when the model has
    none or ``cfg.label_systematics`` is off."""
    if not cfg.label_systematics:
        return None
    rec = (getattr(model, "meta", None) or {}).get("label_systematics") or {}
    sig = rec.get("sigma") or {}
    names = list(model.label_names)
    if not sig or not all(isinstance(sig.get(n), (int, float)) for n in names):
        return None
    out = np.array([float(sig[n]) for n in names], dtype=np.float64)
    return out if np.all(np.isfinite(out) & (out >= 0)) and np.any(out > 0) else None


def widen_intervals(res: dict[str, Any], sigma_sys: np.ndarray | None) -> dict[str, Any]:
    """Fold a per-label systematic uncertainty into a fitted star's summaries (in place).

    The reported label is the emulator's label plus an independent N(0, sigma_sys^2) offset
    (the label-scale error learned in cross-validation), i.e. the posterior convolved with that
    Gaussian: the median and MAP stay, each side of the 68% interval grows in quadrature,
    ``p84 = median + hypot(p84 - median, sigma)`` (exact for a Gaussian posterior), and the
    posterior draws get deterministic offsets ``sigma * Phi^-1((k + 1/2) / n)`` in a fixed
    scrambled order (no random stream, so both samplers and every engine agree).
    ``res["p16_stat"]``/``res["p84_stat"]`` keep the statistical-only interval."""
    if sigma_sys is None or res.get("status") != "ok":
        return res
    sig = np.asarray(sigma_sys, dtype=np.float64)
    med = np.asarray(res["median"], dtype=np.float64)
    lo, hi = np.asarray(res["p16"], dtype=np.float64), np.asarray(res["p84"], dtype=np.float64)
    res["p16_stat"], res["p84_stat"] = lo.copy(), hi.copy()
    res["p16"] = med - np.hypot(med - lo, sig)
    res["p84"] = med + np.hypot(hi - med, sig)
    draws = res.get("samples")
    if draws is not None and len(draws):
        n = draws.shape[0]
        from statistics import NormalDist

        q = np.array([NormalDist().inv_cdf((k + 0.5) / n) for k in range(n)])
        order = np.argsort(np.sin(np.arange(1, n + 1)[:, None] * (12.9898 + 78.233 * np.arange(draws.shape[1]))), axis=0)
        res["samples"] = draws + q[order] * sig
    res["label_systematics"] = sig.copy()
    return res
