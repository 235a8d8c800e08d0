r"""The profiled chi^2 through the GSN's linear last layer, a reference (not used by the sampler).

The last layer is linear, m = h W + b_out, so with the rv shift ``m_s = (1-phi) u_n + phi u_{n+1}``
(``u_a = h W_a + c_a``, W_a = W_out shifted by a pixels) ``b`` is linear in h and every ``G_jk``
is ``h^T Q h + h.L + kappa``. :class:`QuadraticChi2` evaluates it exactly from per-spectrum
matrices ``Q_ab[jk] = W_a diag(w T_j T_k) W_b^T`` (a, b = n, n+1). Cost per walker:
3 (d+1)(d+2)/2 H^2 multiply-adds (18 x 256^2 = 1.2 M for H=256, d=2) against H x n_pix (~1.0 M
for 3900 px) for the direct last layer, plus ~1.5 GMAC of set-up per spectrum and integer shift:
the direct path (:class:`.posterior.BatchedPosterior`) is faster whenever rv is sampled (the rv
shift mixes three matrix pairs; only with rv *and* continuum frozen would it drop to H^2 per
walker, which would change the posterior). ``benchmarks/batched.py`` measures both.
"""
from __future__ import annotations

import math

import torch

from ..geometry import C_KMS
from .posterior import BatchedPosterior

Tensor = torch.Tensor


class QuadraticChi2:
    """The profiled chi2 through the linear last layer (see the module docstring): exact for
    walkers whose integer pixel shift ``floor(log10(1+v/c)/step)`` lies in ``n0..n1``; NaN
    elsewhere. Float64 throughout. A reference for the tests and for the cost comparison in
    benchmarks/batched.py; the sampler uses the direct path (faster, see the docstring)."""

    def __init__(self, bp: BatchedPosterior, n0: int, n1: int) -> None:
        self.bp = bp
        emu = bp.emu
        f64 = torch.float64
        self.n0, self.n1 = int(n0), int(n1)
        lo, hi = bp.lo, bp.hi
        Wf = emu.W_out.to(f64)
        bf = emu.b_out.to(f64)
        A = list(range(self.n0, self.n1 + 2))  # u_a for a = n0 .. n1+1
        U = torch.stack([Wf[:, lo - a : hi - a] for a in A])  # (nA, H, n_used)
        C = torch.stack([bf[lo - a : hi - a] for a in A])  # (nA, n_used)
        wfT = bp.wf[:, :, None] * bp.T  # (S, n_used, k)
        self.B = torch.einsum("ahi,sik->sahk", U, wfT)  # (S, nA, H, k)
        self.beta = torch.einsum("ai,sik->sak", C, wfT)  # (S, nA, k)
        wTT = bp.w[:, :, None] * bp.TT  # (S, n_used, P)
        S, P, H = bp.S, len(bp.pairs), emu.n_hidden

        def pair(a: int, b: int) -> tuple[Tensor, Tensor, Tensor]:
            # Q[s, p] = U_a diag(wTT[s, :, p]) U_b^T: one (H x n) @ (n x H) GEMM per star and p
            Q = torch.empty((S, P, H, H), dtype=f64, device=U.device)
            for s in range(S):
                for p in range(P):
                    Q[s, p] = (U[a] * wTT[s, :, p]) @ U[b].T
            Lv = (torch.einsum("hi,sip->sph", U[a], wTT * C[b][None, :, None])
                  + torch.einsum("hi,sip->sph", U[b], wTT * C[a][None, :, None]))
            return Q, Lv, torch.einsum("i,sip,i->sp", C[a], wTT, C[b])

        diag = [pair(a, a) for a in range(len(A))]
        off = [pair(a, a + 1) for a in range(len(A) - 1)]
        self.Qd, self.Ld, self.kd = (torch.stack([d[i] for d in diag], 1) for i in range(3))
        self.Qo, self.Lo, self.ko = (torch.stack([d[i] for d in off], 1) for i in range(3))

    def _quad(self, h: Tensor, Q: Tensor, Lv: Tensor, kap: Tensor) -> Tensor:
        """h^T Q_p h + h.L_p + kappa_p (S, N, P) for one matrix set per star: Q (S, P, H, H)."""
        S, P, H, _ = Q.shape
        hQ = torch.bmm(h, Q.permute(0, 2, 1, 3).reshape(S, H, P * H)).reshape(*h.shape[:2], P, H)
        return (hQ * h[:, :, None, :]).sum(-1) + torch.bmm(h, Lv.transpose(1, 2)) + kap[:, None, :]

    def chi2(self, theta: Tensor) -> Tensor:
        """(S, N) profiled chi2 at theta (S, N, ndim): per integer shift present, a batched GEMM
        of the walkers' hidden vectors with the star's matrices (3 (d+1)(d+2)/2 H^2 per walker)."""
        bp = self.bp
        S, N, _ = theta.shape
        h = bp.emu.hidden(theta[..., : bp.n_label].reshape(S * N, -1)).to(torch.float64).reshape(S, N, -1)
        delta = torch.log10(1.0 + theta[..., bp.n_label] / C_KMS) / bp.step
        n = torch.floor(delta)
        phi = delta - n
        ok = (n >= self.n0) & (n <= self.n1)
        a_idx = (n.to(torch.int64) - self.n0).clamp(0, self.n1 - self.n0)  # (S, N)
        k = bp.n_cont
        b = torch.zeros((S, N, k), dtype=torch.float64, device=theta.device)
        gp = torch.zeros((S, N, len(bp.pairs)), dtype=torch.float64, device=theta.device)
        for a in torch.unique(a_idx).tolist():
            sel = (a_idx == a)[..., None]
            lin0 = torch.bmm(h, self.B[:, a]) + self.beta[:, a, None, :]
            lin1 = torch.bmm(h, self.B[:, a + 1]) + self.beta[:, a + 1, None, :]
            ph = phi[..., None]
            bb = (1 - ph) * lin0 + ph * lin1
            g = ((1 - ph) ** 2 * self._quad(h, self.Qd[:, a], self.Ld[:, a], self.kd[:, a])
                 + 2.0 * ph * (1 - ph) * self._quad(h, self.Qo[:, a], self.Lo[:, a], self.ko[:, a])
                 + ph**2 * self._quad(h, self.Qd[:, a + 1], self.Ld[:, a + 1], self.kd[:, a + 1]))
            b = torch.where(sel, bb, b)
            gp = torch.where(sel, g, gp)
        G = torch.empty((S, N, k, k), dtype=torch.float64, device=theta.device)
        for p, (j, kk) in enumerate(bp.pairs):
            G[..., j, kk] = gp[..., p]
            G[..., kk, j] = gp[..., p]
        c = bp.solve(G, b)
        chi2 = (bp.wff[:, None] - (b * c).sum(-1)).clamp_min(0.0)
        return torch.where(ok, chi2, torch.full_like(chi2, math.nan))


__all__ = ["QuadraticChi2"]
