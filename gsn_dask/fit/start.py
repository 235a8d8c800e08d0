"""The MAP start: coarse search over labels and rv, then a bounded optimiser.

1. **Coarse set** (:func:`coarse_set`): ``n_coarse`` scrambled-Sobol label vectors (fixed seed,
   uniform in the network's input box) and their emulator spectra, one batched call, cached per model
   object, so a block of stars pays for it once.
2. **Cross-correlation** (:func:`coarse_search`): chi^2 of every coarse spectrum at every integer
   pixel shift covering ``rv_bounds_kms``, with the continuum fixed to 1 (the spectra are
   normalised), as two matrix products ``(M - 1) @ D`` and ``(M - 1)^2 @ W`` where the columns of D and W
   are the shifted weighted residual data and weights. Each template's best shift is refined
   to sub-pixel precision with a parabola through its three neighbouring chi^2 values.
3. **Re-ranking**: the best ``max(64, 4 n_starts)`` (template, rv) pairs are re-evaluated with
   the posterior's own profiled continuum.
4. **Optimiser** (:func:`find_map`): ``scipy.optimize.least_squares`` (trust-region reflective,
   bounded) on the whitened residuals (continuum profiled; Gaussian priors as extra residuals),
   with a batched forward-difference Jacobian (one emulator call of ndim rows per Jacobian), from
   ``n_starts`` distinct candidates (>= 0.1 of the box apart in scaled labels); the lowest
   cost wins. Its Gauss-Newton Hessian J^T J (plus a weak (range)^-2 term) gives the Laplace
   covariance used to place and propose walkers.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import qmc

from .geometry import C_KMS, coarse_shifts
from .posterior import SpectrumPosterior
from .rules import INTERIOR_FRAC, LM, distinct_starts

_COARSE_CACHE: "weakref.WeakKeyDictionary[object, dict[int, tuple[np.ndarray, ...]]]" = weakref.WeakKeyDictionary()


def coarse_set(model, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (n, n_label) float64, spectra - 1 (n, n_pix) float32, their squares) for ``n``
    scrambled-Sobol points (seed 0) uniform in the model's bounds (log-uniform for labels the
    network takes as log10); cached per model object."""
    try:
        per_model = _COARSE_CACHE.setdefault(model, {})
    except TypeError:  # not weak-referenceable: no cache
        per_model = {}
    if n not in per_model:
        bounds = np.asarray(model.bounds, dtype=np.float64)
        u = qmc.Sobol(d=bounds.shape[0], scramble=True, seed=0).random(n)
        labels = bounds[:, 0] + u * (bounds[:, 1] - bounds[:, 0])
        # uniform in the network's input space: log-uniform for log10-transformed labels
        for j, t in enumerate(getattr(model, "label_transforms", None) or []):
            if t == "log10" and bounds[j, 0] > 0:
                lo, hi = np.log10(bounds[j])
                labels[:, j] = np.clip(10.0 ** (lo + u[:, j] * (hi - lo)), bounds[j, 0], bounds[j, 1])
        spectra = np.asarray(model.predict(labels), dtype=np.float32) - np.float32(1.0)
        per_model[n] = (labels, spectra, spectra * spectra)
    return per_model[n]


@dataclass
class MapResult:
    """The MAP start of one star (:func:`find_map`, numpy) or of a batch of stars
    (:func:`gsn_dask.fit.torch.start.batched_map`: every field with a leading star axis, torch
    tensors on the batch's device)."""

    theta: Any  # (ndim,) labels + rv (km/s)
    log_prob: Any  # log posterior at theta
    chi2: Any  # profiled chi^2 at theta
    cov: Any  # (ndim, ndim) Laplace covariance
    success: Any  # the optimiser converged
    n_eval: Any  # emulator spectra evaluated (coarse set excluded)
    starts: Any = None  # (n_starts, ndim) start points used
    rv_coarse: Any = None  # km/s, from the cross-correlation
    message: str = ""
    candidates: list[dict] = field(default_factory=list)


def coarse_search(post: SpectrumPosterior, n_coarse: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse (template, rv) candidates sorted by chi^2 with unit continuum.

    Returns (index into :func:`coarse_set` (n,), rv (n,) km/s, chi2 (n,)) for every coarse
    template at its best (sub-pixel) shift, best first."""
    _, M, M2 = coarse_set(post.model, n_coarse)
    n_pix = M.shape[1]
    lo, hi = post.lo, post.hi
    shifts = coarse_shifts(n_pix, lo, hi, post.step, post.config.rv_bounds_kms)
    wr = (post.w * (post.f - 1.0)).astype(np.float32)  # weighted residual of the data w.r.t. 1
    w = post.w.astype(np.float32)
    D = np.zeros((n_pix, shifts.size), np.float32)
    Wm = np.zeros((n_pix, shifts.size), np.float32)
    for k, s in enumerate(shifts):
        # sum_i wr_i (M-1)_{i-s} over used i  ->  column over model pixel j = i - s
        D[lo - s : hi - s, k] = wr
        Wm[lo - s : hi - s, k] = w
    cross = M @ D  # (n, n_shift)
    norm = M2 @ Wm
    chi2 = float(np.sum(post.w * (post.f - 1.0) ** 2)) - 2.0 * cross.astype(np.float64) + norm.astype(np.float64)
    rows = np.arange(chi2.shape[0])
    k = np.argmin(chi2, axis=1)
    best = chi2[rows, k]
    # parabola through the neighbours for a sub-pixel shift
    km = np.clip(k, 1, shifts.size - 2)
    y0, y1, y2 = (chi2[rows, km + j] for j in (-1, 0, 1))
    denom = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(denom > 0, 0.5 * (y0 - y2) / denom, 0.0)
    pix = shifts[km] + np.clip(off, -1.0, 1.0)
    pix = np.where((k == 0) | (k == shifts.size - 1), shifts[k], pix)
    rv = C_KMS * (10.0 ** (pix * post.step) - 1.0)
    rv = np.clip(rv, post.lower[-1], post.upper[-1])
    order = np.argsort(best, kind="stable")
    return order, rv[order], best[order]


def _interior(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, frac: float = INTERIOR_FRAC) -> np.ndarray:
    span = upper - lower
    return np.clip(x, lower + frac * span, upper - frac * span)


def _fd_rows(x: np.ndarray, h: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows [x, x + step_k e_k] (S*(nd+1), nd) and the steps (S, nd) (backward at the upper bound)."""
    S, nd = x.shape
    step = np.where(x + h <= upper, h, -h)
    rows = np.repeat(x[:, None, :], nd + 1, axis=1)
    rows[:, 1:, :] += step[:, :, None] * np.eye(nd)[None]
    return rows.reshape(S * (nd + 1), nd), step


def _eval_jac(post: SpectrumPosterior, x: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (S, n_res) and forward-difference Jacobians (S, n_res, nd) at x (S, nd), one
    emulator call (step ``h``, backward at the upper bound; the batched path's
    ``gsn_dask.fit.torch.start._eval_jac`` follows the same rule on tensors)."""
    S, nd = x.shape
    rows, step = _fd_rows(x, h, post.upper)
    R = post.residuals(rows).reshape(S, nd + 1, -1)
    r0 = R[:, 0, :]
    J = (R[:, 1:, :] - r0[:, None, :]) / step[:, :, None]
    return r0, np.transpose(J, (0, 2, 1))


def levenberg_marquardt(
    post: SpectrumPosterior,
    x0: np.ndarray,
    *,
    max_iter: int = LM.max_iter,
    ftol_abs: float = LM.ftol_abs,
    xtol: float = LM.xtol,
    h_frac: float = LM.h_frac,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Bounded Levenberg-Marquardt on the posterior's whitened residuals, all starts x0 (S, nd)
    advanced together (one emulator call per iteration for every start's trial point and
    finite-difference Jacobian). Bounds: the step is projected onto the box and parameters at a
    bound whose gradient points outward are frozen for that step. A start stops when an accepted
    step lowers the cost (= -log posterior) by less than ``ftol_abs`` or moves less than ``xtol``
    (fraction of the box), or when it comes within ``same_tol`` of the box of a better start:
    the rules of :data:`.rules.LM`, which the batched path (:mod:`gsn_dask.fit.torch.start`)
    follows with torch tensors (a vectorised loop over starts instead of this per-start one).

    Returns (x (S, nd), cost = sum(r^2)/2 (S,), J at x (S, n_res, nd), converged (S,), iterations).
    """
    lower, upper = post.lower, post.upper
    span = upper - lower
    h = h_frac * span
    x = _interior(np.atleast_2d(np.asarray(x0, dtype=np.float64)), lower, upper)
    S, nd = x.shape
    r, J = _eval_jac(post, x, h)
    cost = 0.5 * np.sum(r * r, axis=1)
    lam = np.full(S, LM.lam0)
    active = np.ones(S, dtype=bool)
    done = np.zeros(S, dtype=bool)
    it = 0
    for it in range(1, max_iter + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        x_new = x[idx].copy()
        for a, s in enumerate(idx):
            A = J[s].T @ J[s]
            g = J[s].T @ r[s]
            eps = LM.bound_eps * span
            frozen = ((x[s] <= lower + eps) & (g > 0)) | ((x[s] >= upper - eps) & (g < 0))
            free = ~frozen
            if not np.any(free):
                continue
            Af = A[np.ix_(free, free)]
            d = np.diag(Af).copy()
            d[d <= 0] = LM.diag_floor
            try:
                step = np.linalg.solve(Af + lam[s] * np.diag(d), -g[free])
            except np.linalg.LinAlgError:
                step = -g[free] / (d * (1 + lam[s]))
            x_new[a, free] = x[s, free] + step
        x_new = np.clip(x_new, lower, upper)
        r_new, J_new = _eval_jac(post, x_new, h)
        cost_new = 0.5 * np.sum(r_new * r_new, axis=1)
        for a, s in enumerate(idx):
            dx = np.max(np.abs(x_new[a] - x[s]) / span)
            if np.isfinite(cost_new[a]) and cost_new[a] <= cost[s]:
                small = (cost[s] - cost_new[a]) <= ftol_abs or dx <= xtol
                x[s], r[s], J[s], cost[s] = x_new[a], r_new[a], J_new[a], cost_new[a]
                lam[s] = max(lam[s] / LM.lam_down, LM.lam_min)
                if small:
                    active[s] = False
                    done[s] = True
            else:
                lam[s] *= LM.lam_up
                if lam[s] > LM.lam_max or dx <= xtol:
                    active[s] = False
                    done[s] = True
        # drop starts that have joined a better one
        for a in np.flatnonzero(active):
            for b in range(S):
                if b != a and cost[b] <= cost[a] and np.max(np.abs(x[a] - x[b]) / span) < LM.same_tol:
                    active[a] = False
                    break
    return x, cost, J, done, it


def laplace_cov(J: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Laplace covariance inv(J^T J + diag(span^-2)) (the weak box term keeps flat directions finite)."""
    H = J.T @ J + np.diag(1.0 / span**2)
    try:
        cov = np.linalg.inv(H)
        cov = 0.5 * (cov + cov.T)
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        cov = np.diag((0.01 * span) ** 2)
    return cov


def _ranked_starts(post: SpectrumPosterior, n_coarse: int, n_starts: int) -> tuple[np.ndarray, float]:
    """(up to ``n_starts`` distinct starts (labels, rv), the best coarse rv [km/s]): the coarse search's
    best candidates re-ranked with the profiled continuum and any Gaussian priors (cached spectra)."""
    labels_c, M, _ = coarse_set(post.model, n_coarse)
    idx, rv, _ = coarse_search(post, n_coarse)
    n_rank = min(idx.size, max(64, 4 * n_starts))
    cand = np.column_stack([labels_c[idx[:n_rank]], rv[:n_rank]])
    chi2_c, _ = post.chi2_of_spectra(M[idx[:n_rank]] + np.float32(1.0), rv[:n_rank])
    lp = -0.5 * chi2_c + post.log_prior(cand)
    cand = cand[np.argsort(-lp, kind="stable")]
    idx_s, valid = distinct_starts(cand[None], post.lower, post.upper, n_starts)
    return cand[idx_s[0][valid[0]]], float(rv[0])


_Polished = tuple[np.ndarray, np.ndarray, bool, str, list[dict]]  # theta, its Jacobian, converged, message, per start


def _polish_lm(post: SpectrumPosterior, starts: np.ndarray, max_iter: int) -> _Polished:
    """Batched Levenberg-Marquardt from every start: (best theta, its Jacobian, converged, message,
    one record per start)."""
    x, cost, J, conv, n_it = levenberg_marquardt(post, starts, max_iter=max_iter)
    cands = [{"start": starts[s].tolist(), "theta": x[s].tolist(), "cost": float(cost[s]), "converged": bool(conv[s])}
             for s in range(x.shape[0])]
    b = int(np.argmin(cost))
    return x[b], J[b], bool(conv[b]), f"Levenberg-Marquardt, {n_it} iterations", cands


def _polish_scipy(post: SpectrumPosterior, starts: np.ndarray) -> _Polished:
    """``scipy.optimize.least_squares`` (trust-region reflective) from each start in turn; returns as
    :func:`_polish_lm`."""
    lower, upper = post.lower, post.upper
    span = upper - lower
    h = LM.h_frac * span
    cache: dict[bytes, np.ndarray] = {}

    def fun(xx: np.ndarray) -> np.ndarray:
        key = xx.tobytes()
        if key not in cache:
            cache.clear()
            cache[key] = post.residuals(xx[None, :])[0]
        return cache[key]

    def jac(xx: np.ndarray) -> np.ndarray:
        return _eval_jac(post, xx[None, :], h)[1][0]

    best, cands = None, []
    for x0 in starts:
        res = least_squares(
            fun, _interior(x0, lower, upper), jac=jac, bounds=(lower, upper), method="trf",
            x_scale=span, ftol=1e-8, xtol=1e-8, gtol=1e-10, max_nfev=100,
        )
        cands.append({"start": x0.tolist(), "theta": res.x.tolist(), "cost": float(res.cost),
                      "converged": bool(res.success)})
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    theta = np.asarray(best.x, dtype=np.float64)
    return theta, jac(theta), bool(best.success), str(best.message), cands


def find_map(
    post: SpectrumPosterior,
    *,
    n_coarse: int = 1024,
    n_starts: int = 3,
    method: str = "lm",
    max_iter: int = LM.max_iter,
) -> MapResult:
    """Maximum a posteriori (labels, rv) of ``post`` (see module docstring).

    ``method``: "lm" (batched Levenberg-Marquardt, default) or "scipy"
    (``scipy.optimize.least_squares``, trust-region reflective, one start at a time)."""
    if method not in ("lm", "scipy"):
        raise ValueError(f"unknown MAP method {method!r} (use 'lm' or 'scipy')")
    n_eval0 = post.n_eval
    starts, rv_coarse = _ranked_starts(post, n_coarse, n_starts)
    theta, J_best, success, message, cands = (_polish_lm(post, starts, max_iter) if method == "lm"
                                              else _polish_scipy(post, starts))
    cov = laplace_cov(J_best, post.upper - post.lower)
    chi2 = float(post.chi2(theta[None, :])[0])
    lp_map = -0.5 * chi2 + float(post.log_prior(theta[None, :])[0])
    return MapResult(
        theta=theta,
        log_prob=lp_map,
        chi2=chi2,
        cov=cov,
        starts=starts,
        rv_coarse=rv_coarse,
        n_eval=post.n_eval - n_eval0,
        success=success,
        message=message,
        candidates=cands,
    )


__all__ = ["MapResult", "coarse_search", "coarse_set", "find_map", "laplace_cov", "levenberg_marquardt"]
