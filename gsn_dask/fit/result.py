"""Per-star result dicts shared by the emcee and batched samplers: the not-fitted row, input
checks, the flag rules and the label-systematics widening of the intervals. Needs numpy only
(no emcee, no torch), so both samplers import it."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
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


class LabelSystematics:
    """A model's per-label systematic sigma (label units, ``label_names`` order): one global
    value per label, and optionally piecewise-constant values in bins of one label (``by``,
    e.g. teff: cool and hot stars have larger errors than solar-type ones), looked up at the
    star's posterior median of that label."""

    def __init__(self, label_names: list[str], sigma: np.ndarray, by: str | None = None,
                 edges: np.ndarray | None = None, binned: np.ndarray | None = None) -> None:
        self.label_names = list(label_names)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        self.by = by if by in self.label_names and edges is not None and binned is not None else None
        self.edges = None if self.by is None else np.asarray(edges, dtype=np.float64)
        self.binned = None if self.by is None else np.asarray(binned, dtype=np.float64)  # (n_bin, n_label)

    def at(self, median: np.ndarray) -> np.ndarray:
        """Sigma (n_label,) for a star with posterior medians ``median``."""
        if self.by is None:
            return self.sigma
        v = float(np.asarray(median)[self.label_names.index(self.by)])
        if not np.isfinite(v):
            return self.sigma
        k = int(np.clip(np.searchsorted(self.edges, v, side="right") - 1, 0, len(self.binned) - 1))
        return self.binned[k]

    def to_json(self) -> str:
        d: dict[str, Any] = {"sigma": dict(zip(self.label_names, self.sigma.tolist()))}
        if self.by is not None:
            d["binned"] = {"by": self.by, "edges": self.edges.tolist(),
                           "sigma": {n: self.binned[:, j].tolist() for j, n in enumerate(self.label_names)}}
        return json.dumps(d, sort_keys=True)


def _finite_numbers(values: Any, *, nonnegative: bool = True) -> bool:
    """A non-empty list of finite numbers (>= 0 unless ``nonnegative`` is False)."""
    return isinstance(values, list) and len(values) > 0 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= 0 or not nonnegative)
        for v in values)


def model_label_systematics(model: Any, cfg: FitConfig) -> LabelSystematics | None:
    """The per-label systematic uncertainty recorded in the model's ``meta["label_systematics"]``
    by training (:func:`gsn_dask.fit.systematics.estimate_label_systematics`), or None when the
    model has none or ``cfg.label_systematics`` is off. Binned values are used when complete."""
    if not cfg.label_systematics:
        return None
    return systematics_from_record((getattr(model, "meta", None) or {}).get("label_systematics"), model.label_names)


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
    if by in names and _finite_numbers(edges, nonnegative=False) and all(
            _finite_numbers(bs.get(n)) and len(bs[n]) == len(edges) - 1 for n in names):
        return LabelSystematics(names, out, by, np.array(edges), np.array([bs[n] for n in names]).T)
    return LabelSystematics(names, out)


def widen_intervals(res: dict[str, Any], sigma_sys: np.ndarray | LabelSystematics | None) -> dict[str, Any]:
    """Fold a per-label systematic uncertainty into a fitted star's summaries (in place).

    The reported label is the emulator's label plus an independent N(0, sigma_sys^2) offset
    (the label-scale error learned in cross-validation), i.e. the posterior convolved with that
    Gaussian (``sigma_sys``: an array, or a :class:`LabelSystematics` looked up at the star's
    median): the median and MAP stay, each side of the 68% interval grows in quadrature,
    ``p84 = median + hypot(p84 - median, sigma)`` (exact for a Gaussian posterior), and the
    posterior draws get deterministic offsets ``sigma * Phi^-1((k + 1/2) / n)`` in a fixed
    scrambled order (no random stream, so both samplers and every engine agree).
    ``res["p16_stat"]``/``res["p84_stat"]`` keep the statistical-only interval."""
    if sigma_sys is None or res.get("status") != "ok":
        return res
    if isinstance(sigma_sys, LabelSystematics):
        sigma_sys = sigma_sys.at(res["median"])
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
