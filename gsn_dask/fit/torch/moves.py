"""emcee's moves on tensors, for many stars at once (the mixtures and parameters of
:data:`gsn_dask.fit.rules.MOVE_MIXTURES` / :data:`~gsn_dask.fit.rules.MOVE_PARAMS`, which the emcee
path runs with emcee's own classes).

``stretch``: emcee's StretchMove (Goodman & Weare, a = 2): the ensemble is split at random into
two halves of equal size (emcee's ``randomize_split``), each half is moved with
``q = c - z (c - s)``, ``z ~ g(z) ∝ 1/sqrt(z)`` on [1/a, a], partner c drawn from the other half,
accepted if ``ln u < (ndim-1) ln z + ln p(q) - ln p(s)``; the halves in turn. ``de`` (DEMove +
DESnookerMove) and ``laplace`` (the Student-t independence move of
:class:`gsn_dask.fit.sampler.LaplaceMove`) as emcee computes them; one move is chosen per step
and star with the mixture's weights. Every random number is a uniform of the star's Philox
stream (:mod:`.rng`), ``slots`` per walker and step.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..rules import MOVE_PARAMS, MoveParams
from .algebra import dot, matvec, solve_lower
from .posterior import BatchedPosterior
from .rng import normals

Tensor = torch.Tensor


_PERM3 = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def move_slots(kind: str, ndim: int, df: int = MOVE_PARAMS.laplace_df) -> int:
    """Uniforms per walker and step that a move uses: slot 0 is the acceptance uniform; stretch:
    1 z, 2 partner; de: 1 pair, 2-3 gamma's normal; snooker: 1-3 partners, 4 roles; laplace: the
    ndim + df normals (Box-Muller pairs)."""
    return {"stretch": 3, "de": 4, "snooker": 5, "laplace": 1 + 2 * ((ndim + df + 1) // 2)}[kind]


def _gather_walkers(X: Tensor, idx: Tensor) -> Tensor:
    """X (n, W, ...) at walker indices idx (n, m) -> (n, m, ...)."""
    if X.dim() == 2:
        return X.gather(1, idx)
    return X.gather(1, idx[..., None].expand(*idx.shape, X.shape[-1]))


def _scatter_walkers(X: Tensor, idx: Tensor, val: Tensor) -> Tensor:
    if X.dim() == 2:
        return X.scatter(1, idx, val)
    return X.scatter(1, idx[..., None].expand(*idx.shape, X.shape[-1]), val)


def _red_blue(bp: BatchedPosterior, X: Tensor, LP: Tensor, u: Tensor, kind: str,
              params: MoveParams = MOVE_PARAMS) -> tuple[Tensor, Tensor, Tensor, int]:
    """One emcee red-blue move (stretch, de or snooker) for n stars: X (n, W, D), LP (n, W),
    u (n, 1 + W + W*K) uniforms. Returns new X, LP, accepted (n, W) and rows evaluated per star."""
    a_st, sig_de, gam_sn = params.stretch_a, params.de_sigma, params.snooker_gamma
    n, W, D = X.shape
    nsp = 4 if kind == "snooker" else 2
    perm = torch.argsort(u[:, 1 : 1 + W], dim=1, stable=True)  # random split (randomize_split)
    K = (u.shape[1] - 1 - W) // W
    U = u[:, 1 + W :].reshape(n, W, K)
    acc_all = torch.zeros((n, W), dtype=torch.bool, device=X.device)
    rows = 0
    for split in range(nsp):
        mem = perm[:, split::nsp]  # (n, Ns)
        Ns = mem.shape[1]
        s = _gather_walkers(X, mem)
        uw = _gather_walkers(U, mem)  # (n, Ns, K)
        if kind in ("stretch", "de"):
            comp = torch.cat([perm[:, j::nsp] for j in range(nsp) if j != split], dim=1)
            c = _gather_walkers(X, comp)  # (n, Nc, D)
            Nc = c.shape[1]
            if kind == "stretch":
                z = ((a_st - 1.0) * uw[..., 1] + 1.0) ** 2 / a_st
                r = (uw[..., 2] * Nc).to(torch.int64).clamp_max(Nc - 1)
                cp = _gather_walkers(c, r)
                q = cp - (cp - s) * z[..., None]
                factor = (D - 1.0) * torch.log(z)
            else:
                npair = Nc * (Nc - 1)
                p = (uw[..., 1] * npair).to(torch.int64).clamp_max(npair - 1)
                i = torch.div(p, Nc - 1, rounding_mode="floor")
                j = p - i * (Nc - 1)
                j = j + (j >= i).to(torch.int64)
                g0 = 2.38 / math.sqrt(2 * D)
                nrm = normals(uw[..., 2:4])[..., 0]
                gamma = g0 * (1.0 + sig_de * nrm)
                q = s + gamma[..., None] * (_gather_walkers(c, j) - _gather_walkers(c, i))
                factor = torch.zeros_like(gamma)
        else:  # snooker: one partner from each of the other three sets, roles shuffled
            others = [perm[:, j::nsp] for j in range(nsp) if j != split]
            picks = []
            for t, oth in enumerate(others):
                Nt = oth.shape[1]
                r = (uw[..., 1 + t] * Nt).to(torch.int64).clamp_max(Nt - 1)
                picks.append(_gather_walkers(X, oth.gather(1, r)))
            wst = torch.stack(picks, dim=2)  # (n, Ns, 3, D)
            pidx = (uw[..., 4] * 6).to(torch.int64).clamp_max(5)
            roles = torch.as_tensor(_PERM3, device=X.device)[pidx]  # (n, Ns, 3)
            wst = wst.gather(2, roles[..., None].expand(*roles.shape, D))
            zz, z1, z2 = wst[:, :, 0], wst[:, :, 1], wst[:, :, 2]
            delta = s - zz
            norm = torch.sqrt(dot(delta, delta))
            uu = delta / torch.sqrt(norm)[..., None]
            q = s + uu * gam_sn * (dot(uu, z1) - dot(uu, z2))[..., None]
            dq = q - zz
            factor = 0.5 * (D - 1.0) * (torch.log(torch.sqrt(dot(dq, dq))) - torch.log(norm))
        lp_new = bp.log_prob(q)
        rows += Ns
        lp_old = _gather_walkers(LP, mem)
        acc = torch.log(uw[..., 0]) < factor + lp_new - lp_old
        X = _scatter_walkers(X, mem, torch.where(acc[..., None], q, s))
        LP = _scatter_walkers(LP, mem, torch.where(acc, lp_new, lp_old))
        acc_all = _scatter_walkers(acc_all, mem, acc)
    return X, LP, acc_all, rows


def _laplace_logq(x: Tensor, mean: Tensor, chol: Tensor, df: float) -> Tensor:
    D = x.shape[-1]
    z = solve_lower(chol[:, None], x - mean[:, None, :])
    return -0.5 * (df + D) * torch.log1p(dot(z, z) / df)


def _laplace(bp: BatchedPosterior, X: Tensor, LP: Tensor, u: Tensor, mean: Tensor, chol: Tensor,
             df: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """emcee MH step with the Laplace (Student-t independence) proposal of
    :class:`gsn_dask.fit.sampler.LaplaceMove`."""
    n, W, D = X.shape
    K = (u.shape[1] - 1 - W) // W
    U = u[:, 1 + W :].reshape(n, W, K)
    z = normals(U[..., 1:])  # (n, W, K-1) normals
    zg = z[..., D : D + df]
    g = dot(zg, zg) / df  # chi-square(df) / df
    q = mean[:, None, :] + matvec(chol[:, None], z[..., :D]) / torch.sqrt(g)[..., None]
    factor = _laplace_logq(X, mean, chol, df) - _laplace_logq(q, mean, chol, df)
    lp_new = bp.log_prob(q)
    acc = torch.log(U[..., 0]) < lp_new - LP + factor
    return torch.where(acc[..., None], q, X), torch.where(acc, lp_new, LP), acc, W


def moves_step(bp: BatchedPosterior, X: Tensor, LP: Tensor, u: Tensor, moves: Sequence[tuple[str, float]],
               cdf: Tensor, lap_mean: Tensor, lap_chol: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One sampler step for n stars (one move per star, chosen with the move weights as emcee
    does): returns X, LP, accepted (n, W), emulator rows evaluated (n,)."""
    n, W, _ = X.shape
    acc = torch.zeros((n, W), dtype=torch.bool, device=X.device)
    rows = torch.zeros(n, dtype=torch.int64, device=X.device)
    if len(moves) == 1:
        choice = None
    else:
        choice = torch.searchsorted(cdf, u[:, 0].contiguous(), right=True).clamp_max(len(moves) - 1)
    for m, (kind, _) in enumerate(moves):
        sel = None if choice is None else (choice == m).nonzero()[:, 0]
        if sel is not None and sel.numel() == 0:
            continue
        full = sel is None or sel.numel() == n
        bps = bp if full else bp.take(sel)
        xs, ls, us = (X, LP, u) if full else (X[sel], LP[sel], u[sel])
        if kind == "laplace":
            mean, chol = (lap_mean, lap_chol) if full else (lap_mean[sel], lap_chol[sel])
            xs, ls, ac, r = _laplace(bps, xs, ls, us, mean, chol, MOVE_PARAMS.laplace_df)
        else:
            xs, ls, ac, r = _red_blue(bps, xs, ls, us, kind)
        if full:
            X, LP, acc = xs, ls, ac
            rows += r
        else:
            X[sel], LP[sel], acc[sel] = xs, ls, ac
            rows[sel] += r
    return X, LP, acc, rows


__all__ = ["move_slots", "moves_step"]
