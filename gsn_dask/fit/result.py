"""Per-star result dicts shared by the emcee and batched samplers: the not-fitted row, input
checks and the flag rules. Needs numpy only (no emcee, no torch), so both samplers import it."""
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
