"""The batched MAP start: the algorithm of :func:`gsn_dask.fit.start.find_map` for many stars.

Coarse search with one GEMM for all spectra x Sobol templates x integer rv shifts (the
cross-correlation of :func:`gsn_dask.fit.start.coarse_search`, continuum 1, the shifts of
:func:`gsn_dask.fit.geometry.coarse_shifts`), re-ranking of the best ``max(64, 4 n_starts)`` with
the profiled posterior, ``n_starts`` distinct starts (:func:`gsn_dask.fit.rules.distinct_starts`),
then batched bounded Levenberg-Marquardt on the whitened residuals (forward-difference Jacobian,
one emulator call per iteration for all starts of all spectra), Laplace covariance
``inv(J^T J + diag(span^-2))``; and the walkers drawn around it (:func:`init_walkers`).
"""
from __future__ import annotations

import math

import torch

from ..geometry import C_KMS, coarse_shifts
from ..rules import INTERIOR_FRAC, LM, WALKER_REDRAWS, distinct_starts
from ..start import MapResult
from .algebra import STAR_TILE, chol, matvec, spd_inv, spd_solve
from .posterior import BatchedPosterior
from .rng import STREAM_INIT, normals, uniforms

Tensor = torch.Tensor


def coarse_search(bp: BatchedPosterior, n_coarse: int, rv_bounds: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """Per star: coarse template index (S, n), rv (S, n) km/s and unit-continuum chi2 (S, n),
    best first (the cross-correlation of start.coarse_search: one GEMM per tile of stars)."""
    tile = STAR_TILE if bp.emu.device.type == "cpu" else 16 * STAR_TILE
    return bp._tiled(lambda sub, th: _coarse_tile(sub, n_coarse, rv_bounds),
                     torch.zeros((bp.S, 1, 1), device=bp.emu.device), per=tile)


def _coarse_tile(bp: BatchedPosterior, n_coarse: int, rv_bounds: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    emu = bp.emu
    labels_c, M, M2 = emu.coarse_set(n_coarse)
    n_pix = emu.n_pix
    dev = emu.device
    lo, hi = bp.lo, bp.hi
    shifts = coarse_shifts(n_pix, lo, hi, bp.step, rv_bounds)
    S = bp.S
    wr = torch.zeros((S, n_pix), dtype=M.dtype, device=dev)
    wf = torch.zeros((S, n_pix), dtype=M.dtype, device=dev)
    wr[:, lo:hi] = (bp.w * (bp.f - 1.0)).to(M.dtype)
    wf[:, lo:hi] = bp.w.to(M.dtype)
    p0, p1 = max(0, -int(shifts.min())), max(0, int(shifts.max()))
    sh = torch.as_tensor(shifts + p0, device=dev)
    Dt = torch.nn.functional.pad(wr, (p0, p1)).unfold(1, n_pix, 1)[:, sh]  # (S, n_shift, n_pix)
    Wt = torch.nn.functional.pad(wf, (p0, p1)).unfold(1, n_pix, 1)[:, sh]
    ns = shifts.size
    cross = (Dt.reshape(S * ns, n_pix) @ M.T).reshape(S, ns, -1).to(torch.float64)
    norm = (Wt.reshape(S * ns, n_pix) @ M2.T).reshape(S, ns, -1).to(torch.float64)
    c0 = ((bp.w * (bp.f - 1.0) ** 2) @ torch.ones(bp.n_used, 1, dtype=torch.float64, device=dev))[:, 0]
    chi2 = c0[:, None, None] - 2.0 * cross + norm  # (S, n_shift, n)
    k = chi2.argmin(dim=1)  # (S, n)
    best = chi2.gather(1, k[:, None, :])[:, 0]
    km = k.clamp(1, ns - 2)
    y0, y1, y2 = (chi2.gather(1, (km + j)[:, None, :])[:, 0] for j in (-1, 0, 1))
    den = y0 - 2 * y1 + y2
    off = torch.where(den > 0, 0.5 * (y0 - y2) / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    sht = torch.as_tensor(shifts, dtype=torch.float64, device=dev)
    pix = sht[km] + off.clamp(-1.0, 1.0)
    edge = (k == 0) | (k == ns - 1)
    pix = torch.where(edge, sht[k], pix)
    rv = (C_KMS * (10.0 ** (pix * bp.step) - 1.0)).clamp(bp.lower[-1], bp.upper[-1])
    order = torch.argsort(best, dim=1, stable=True)
    return order, rv.gather(1, order), best.gather(1, order)


def _eval_jac(bp: BatchedPosterior, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For problems x (P, D) of bp (S = P): cost = sum r^2 / 2 (P,), A = J^T J (P, D, D),
    g = J^T r (P, D) with a forward-difference Jacobian (backward at the upper bound): the rule of
    the numpy ``gsn_dask.fit.start._eval_jac``, here reduced to J^T J and J^T r per tile of stars
    (the full Jacobians of a batch would not fit on the device)."""
    P, D = x.shape
    step = torch.where(x + h <= bp.upper, h.expand_as(x), -h.expand_as(x))
    rows = x[:, None, :].repeat(1, D + 1, 1)
    rows[:, 1:, :] += torch.diag_embed(step)
    st = step[:, None, :].expand(P, D + 1, D)  # carried along the tiles in theta's last axis

    def fn(sub: BatchedPosterior, th: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        R = sub._residuals(th[..., :D])  # (p, D+1, n_res)
        r0 = R[:, 0]
        J = (R[:, 1:] - r0[:, None]) / th[:, 0, D:, None]  # (p, D, n_res)
        one = torch.ones(R.shape[-1], 1, dtype=R.dtype, device=R.device)
        return 0.5 * ((r0 * r0) @ one)[:, 0], J @ J.transpose(1, 2), (J @ r0[:, :, None])[..., 0]

    return bp._tiled(fn, torch.cat([rows, st], dim=-1))


def levenberg_marquardt(bp: BatchedPosterior, x0: Tensor, active: Tensor, *, max_iter: int = LM.max_iter,
                        ftol_abs: float = LM.ftol_abs, xtol: float = LM.xtol, h_frac: float = LM.h_frac,
                        group: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bounded Levenberg-Marquardt for P problems at once (bp has one row per problem): the
    algorithm and rules (:data:`gsn_dask.fit.rules.LM`) of the numpy
    :func:`gsn_dask.fit.start.levenberg_marquardt`, vectorised over problems: a problem stops when an accepted step lowers the cost by
    less than ``ftol_abs`` or moves less than ``xtol`` (fraction of the box), or when it comes
    within ``same_tol`` of the box of a better start of the same star (``group`` consecutive problems
    per star). Returns (x (P, D), cost (P,), J^T J (P, D, D), converged (P,), emulator rows
    evaluated (P,))."""
    lower, upper = bp.lower, bp.upper
    span = upper - lower
    h = h_frac * span
    x = torch.minimum(torch.maximum(x0, lower + INTERIOR_FRAC * span), upper - INTERIOR_FRAC * span)
    P, D = x.shape
    cost = torch.full((P,), math.inf, dtype=torch.float64, device=x.device)
    A = torch.zeros((P, D, D), dtype=torch.float64, device=x.device)
    g = torch.zeros((P, D), dtype=torch.float64, device=x.device)
    n_rows = torch.zeros(P, dtype=torch.int64, device=x.device)
    ia = active.nonzero()[:, 0]
    if ia.numel():
        cost[ia], A[ia], g[ia] = _eval_jac(bp.take(ia), x[ia], h)
        n_rows[ia] += D + 1
    lam = torch.full((P,), LM.lam0, dtype=torch.float64, device=x.device)
    active = active.clone()
    done = torch.zeros(P, dtype=torch.bool, device=x.device)
    eps = LM.bound_eps * span
    for _ in range(max_iter):
        ia = active.nonzero()[:, 0]
        if ia.numel() == 0:
            break
        xa, Aa, ga, la, ca = x[ia], A[ia], g[ia], lam[ia], cost[ia]
        frozen = ((xa <= lower + eps) & (ga > 0)) | ((xa >= upper - eps) & (ga < 0))
        free = ~frozen
        fm = (free[:, :, None] & free[:, None, :]).to(torch.float64)
        Af = Aa * fm + torch.diag_embed(frozen.to(torch.float64))
        d = torch.diagonal(Af, dim1=1, dim2=2).clone()
        d[d <= 0] = LM.diag_floor
        gf = torch.where(free, ga, torch.zeros_like(ga))
        step, ok = spd_solve(Af + la[:, None, None] * torch.diag_embed(d), -gf)
        bad = ~ok | ~torch.isfinite(step).all(-1)
        if bool(bad.any()):
            step[bad] = -gf[bad] / (d[bad] * (1 + la[bad, None]))
        step = torch.where(free, step, torch.zeros_like(step))
        x_new = torch.minimum(torch.maximum(xa + step, lower), upper)
        c_new, A_new, g_new = _eval_jac(bp.take(ia), x_new, h)
        n_rows[ia] += D + 1
        dx = ((x_new - xa).abs() / span).amax(-1)
        better = torch.isfinite(c_new) & (c_new <= ca)
        small = ((ca - c_new) <= ftol_abs) | (dx <= xtol)
        x[ia] = torch.where(better[:, None], x_new, xa)
        A[ia] = torch.where(better[:, None, None], A_new, Aa)
        g[ia] = torch.where(better[:, None], g_new, ga)
        cost[ia] = torch.where(better, c_new, ca)
        lam_new = torch.where(better, (la / LM.lam_down).clamp_min(LM.lam_min), la * LM.lam_up)
        lam[ia] = lam_new
        stop = (better & small) | (~better & ((lam_new > LM.lam_max) | (dx <= xtol)))
        active[ia] = active[ia] & ~stop
        done[ia] = done[ia] | stop
        if group > 1:  # drop starts that have joined a better start of the same star
            xg, cg = (x / span).reshape(-1, group, D), cost.reshape(-1, group)
            near = (xg[:, :, None, :] - xg[:, None, :, :]).abs().amax(-1) < LM.same_tol
            near &= cg[:, None, :] <= cg[:, :, None]
            near &= ~torch.eye(group, dtype=torch.bool, device=x.device)
            active &= ~near.any(-1).reshape(-1)
    return x, cost, A, done, n_rows


def batched_map(bp: BatchedPosterior, *, n_coarse: int = 1024, n_starts: int = 3, rv_bounds: tuple[float, float],
                max_iter: int = LM.max_iter) -> MapResult:
    """MAP and Laplace covariance of every star of ``bp`` (see the module docstring): a
    :class:`~gsn_dask.fit.start.MapResult` of tensors with a leading star axis, theta (S, D),
    cov (S, D, D), log_prob (S,), chi2 (S,), success (S,), n_eval (S,), starts (S, k, D)."""
    S, D = bp.S, bp.ndim
    dev = bp.emu.device
    lower, upper = bp.lower, bp.upper
    span = upper - lower
    labels_c, M, _ = bp.emu.coarse_set(n_coarse)
    order, rv, _ = coarse_search(bp, n_coarse, rv_bounds)
    n_rank = min(order.shape[1], max(64, 4 * n_starts))
    cand = torch.cat([labels_c[order[:, :n_rank]], rv[:, :n_rank, None]], dim=-1)  # (S, n_rank, D)
    # re-rank with the profiled continuum, from the cached coarse spectra (as start.find_map)

    def rerank(sub: BatchedPosterior, th: Tensor) -> Tensor:
        spec = M[th[..., -1].to(torch.int64).reshape(-1)] + 1.0
        ms = sub.shift(spec, th[..., -2].reshape(-1)).reshape(*th.shape[:2], -1)
        return sub.log_prior(th[..., :-1]) - 0.5 * sub.chi2_of_shifted(ms)[0]

    lp = bp._tiled(rerank, torch.cat([cand, order[:, :n_rank, None].to(torch.float64)], dim=-1))
    o2 = torch.argsort(-lp, dim=1, stable=True)
    cand = cand.gather(1, o2[..., None].expand_as(cand))
    k = max(1, int(n_starts))
    idx_np, valid_np = distinct_starts(cand.cpu().numpy(), lower.cpu().numpy(), upper.cpu().numpy(), k)
    idx, valid = torch.as_tensor(idx_np, device=dev), torch.as_tensor(valid_np, device=dev)
    starts = cand.gather(1, idx[..., None].expand(S, k, D))  # (S, k, D)
    sidx = torch.arange(S, device=dev).repeat_interleave(k)
    x, cost, A, conv, rows = levenberg_marquardt(bp.take(sidx), starts.reshape(S * k, D), valid.reshape(-1),
                                                 max_iter=max_iter, group=k)
    cost = torch.where(valid.reshape(-1), cost, torch.full_like(cost, math.inf)).reshape(S, k)
    b = cost.argmin(dim=1)
    flat = torch.arange(S, device=dev) * k + b
    theta, Ab, success = x[flat], A[flat], conv[flat]
    H = Ab + torch.diag_embed((1.0 / span**2).expand(S, D))
    cov, ok1 = spd_inv(H)
    cov = 0.5 * (cov + cov.transpose(1, 2))
    _, ok2 = chol(cov)
    badc = ~ok1 | ~ok2 | ~torch.isfinite(cov).all(-1).all(-1)
    if bool(badc.any()):
        cov[badc] = torch.diag((0.01 * span) ** 2)
    chi2 = bp.chi2(theta[:, None, :])[:, 0]
    lpm = bp.log_prior(theta[:, None, :])[:, 0] - 0.5 * chi2
    n_eval = 1 + rows.reshape(S, k).sum(1)  # emulator rows per star (coarse set excluded)
    return MapResult(theta=theta, cov=cov, log_prob=lpm, chi2=chi2, success=success, n_eval=n_eval, starts=starts,
                     rv_coarse=rv[:, 0], message="batched Levenberg-Marquardt")


def init_walkers(bp: BatchedPosterior, mean: Tensor, cov: Tensor, n_walkers: int, keys: Tensor) -> Tensor:
    """(S, W, D) walkers from N(mean, cov) inside the bounds: the rule of the emcee path's
    :func:`gsn_dask.fit.sampler.draw_walkers` (up to :data:`~gsn_dask.fit.rules.WALKER_REDRAWS`
    redraws of a walker outside, then clipped :data:`~gsn_dask.fit.rules.INTERIOR_FRAC` inside),
    each draw from the star's own Philox stream."""
    S, D = mean.shape
    Lc, _ = chol(cov)
    nu = 2 * ((n_walkers * D + 1) // 2)
    out = None
    for attempt in range(WALKER_REDRAWS + 1):
        z = normals(uniforms(keys, attempt, nu, STREAM_INIT))[:, : n_walkers * D].reshape(S, n_walkers, D)
        x = mean[:, None, :] + matvec(Lc[:, None], z)
        if out is None:
            out = x
        else:
            bad = ~bp.in_bounds(out)
            if not bool(bad.any()):
                break
            out = torch.where(bad[..., None], x, out)
    assert out is not None
    span = bp.upper - bp.lower
    return torch.minimum(torch.maximum(out, bp.lower + INTERIOR_FRAC * span), bp.upper - INTERIOR_FRAC * span)


__all__ = ["batched_map", "coarse_search", "init_walkers", "levenberg_marquardt"]
