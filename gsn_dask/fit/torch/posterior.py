r"""The posterior of S spectra at once, as tensors (S spectra x N walkers x n_pix pixels).

Per spectrum the arrays of the numpy :class:`~gsn_dask.fit.posterior.SpectrumPosterior` (weights
``w = 1/(1/ivar + emu_err^2)``, used pixels ``[lo, hi)``, masks, priors) are stacked
(:class:`SpectraStack`). One evaluation runs the emulator for all S x N walkers (float32, one GEMM
per layer), shifts every spectrum by its own rv (a strided window per row; linear interpolation on
the log grid, as :meth:`SpectrumPosterior.shift`), and forms the continuum normal equations
``b = (m_s * w f) @ T``, ``G_jk = (m_s^2 * w) @ (T_j T_k)`` in float64 (a shared basis T, so one
GEMM for all spectra), solves the (d+1)x(d+1) systems, ``chi^2 = sum w f^2 - b.c``.
:meth:`BatchedPosterior.log_prob` equals ``SpectrumPosterior.log_prob`` to float32 rounding of the
emulator (tests/fit/test_batched.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..config import FitConfig
from ..geometry import C_KMS
from ..posterior import SpectrumPosterior, drop_starved_arms, fit_dof, merged_priors, pixel_weights
from .algebra import ROW_TILE_CPU, ROW_TILE_CUDA, dot, spd_solve
from .emulator import TorchEmulator

Tensor = torch.Tensor


class SpectraStack:
    """The per-spectrum arrays of :class:`~gsn_dask.fit.posterior.SpectrumPosterior` for S spectra
    at once (numpy, vectorised: the same formulas, :func:`~gsn_dask.fit.posterior.pixel_weights`,
    ~50x faster than S constructors): weights ``w``,
    data ``f`` on the used pixels, ``wff``, ``n_good``, ``snr_median``, ``dof``, dense priors.
    ``template`` is the SpectrumPosterior of the first spectrum: the shared geometry (pixel
    range, rv step, Chebyshev basis, bounds)."""

    def __init__(self, model: Any, flux: np.ndarray, ivar: np.ndarray, config: FitConfig,
                 priors: Sequence[Mapping[str, tuple[float, float]] | None] | None = None) -> None:
        flux = np.asarray(flux, dtype=np.float64)
        ivar = np.asarray(ivar, dtype=np.float64)
        S = flux.shape[0]
        self.template = tpl = SpectrumPosterior(model, flux[0], ivar[0], config)
        sl = slice(tpl.lo, tpl.hi)
        good, w = pixel_weights(model, flux, ivar, config)
        good, w, self.dead_terms = drop_starved_arms(good[:, sl], w[:, sl], tpl.arms)
        self.good = good
        self.w = np.ascontiguousarray(w)
        self.f = np.ascontiguousarray(np.where(self.good, flux[:, sl], 0.0))
        self.n_good = self.good.sum(axis=1)
        with np.errstate(invalid="ignore"):
            snr = np.where(self.good, np.abs(self.f) * np.sqrt(np.where(self.good, ivar[:, sl], 0.0)), np.nan)
        self.snr_median = np.full(S, np.nan)
        has = self.n_good > 0
        if has.any():
            self.snr_median[has] = np.nanmedian(snr[has], axis=1)
        self.wff = np.sum(self.w * self.f**2, axis=1)
        self.dof = fit_dof(self.n_good, tpl.ndim, self.dead_terms).astype(np.float64)
        L = tpl.n_label
        self.prior_mu = np.zeros((S, L))
        self.prior_isig = np.zeros((S, L))
        plist = list(priors) if priors is not None else [None] * S
        common = merged_priors(tpl.label_names, config, None)
        for i in range(S):
            pri = merged_priors(tpl.label_names, config, plist[i]) if plist[i] else common
            for k, (mu, sig) in pri.items():
                j = tpl.label_names.index(k)
                self.prior_mu[i, j], self.prior_isig[i, j] = mu, 1.0 / sig
        self.S = S

    @classmethod
    def from_posteriors(cls, posts: Sequence[SpectrumPosterior]) -> SpectraStack:
        """A stack from ready SpectrumPosterior objects (same model and config)."""
        p0 = posts[0]
        for p in posts[1:]:
            if (p.lo, p.hi, p.n_cont) != (p0.lo, p0.hi, p0.n_cont) or not np.array_equal(p.lower, p0.lower) \
                    or not np.array_equal(p.upper, p0.upper):
                raise ValueError("all posteriors of a batch must share the model, pixel range and bounds")
        st = cls.__new__(cls)
        st.template, st.S = p0, len(posts)
        st.w = np.stack([p.w for p in posts])
        st.f = np.stack([p.f for p in posts])
        st.good = np.stack([p.good for p in posts])
        st.n_good = np.array([p.n_good for p in posts])
        st.snr_median = np.array([p.snr_median for p in posts])
        st.wff = np.array([p._wff for p in posts])
        st.dof = np.array([p.dof for p in posts], dtype=np.float64)
        st.dead_terms = np.stack([p.dead_terms for p in posts])
        st.prior_mu = np.zeros((st.S, p0.n_label))
        st.prior_isig = np.zeros((st.S, p0.n_label))
        for i, p in enumerate(posts):
            for k, m, sg in zip(p._prior_idx, p._prior_mu, p._prior_sig):
                st.prior_mu[i, k], st.prior_isig[i, k] = m, 1.0 / sg
        return st


class BatchedPosterior:
    """log p(labels, rv | spectrum) for S spectra at once (stacked :class:`SpectrumPosterior`
    arrays: a list of posteriors or a :class:`SpectraStack` and the rows ``idx`` of it).

    Every spectrum shares the model and config (pixel range, basis, bounds); priors may differ.
    ``theta`` is (S, N, n_label + 1), rows in the order of ``posts`` / ``idx``."""

    def __init__(self, emu: TorchEmulator, posts: Sequence[SpectrumPosterior] | SpectraStack, *,
                 idx: np.ndarray | None = None) -> None:
        self.emu = emu
        dev = emu.device
        if not isinstance(posts, SpectraStack) and not len(posts):
            raise ValueError("a batched posterior needs at least one spectrum")
        st = posts if isinstance(posts, SpectraStack) else SpectraStack.from_posteriors(posts)
        rows = np.arange(st.S) if idx is None else np.asarray(idx, dtype=np.int64)
        p0 = st.template
        f64 = torch.float64
        self.S = int(rows.size)
        self.n_label, self.ndim = p0.n_label, p0.ndim
        self.lo, self.hi, self.n_used, self.step = p0.lo, p0.hi, p0.n_used, p0.step
        self.n_cont = p0.n_cont
        self.pairs = list(p0._pairs)
        k = self.n_cont
        pair_of = np.zeros((k, k), dtype=np.int64)  # G[j, kk] = gp[pair_of[j, kk]] (symmetric)
        for p, (j, kk) in enumerate(self.pairs):
            pair_of[j, kk] = pair_of[kk, j] = p
        self.pair_of = torch.as_tensor(pair_of.reshape(-1), device=dev)
        T = torch.as_tensor(p0.T, dtype=f64, device=dev)
        TT = torch.stack([T[:, j] * T[:, k] for j, k in self.pairs], dim=1)
        self.T, self.TT = T, TT
        self.lower = torch.as_tensor(p0.lower, dtype=f64, device=dev)
        self.upper = torch.as_tensor(p0.upper, dtype=f64, device=dev)
        self.w = torch.as_tensor(st.w[rows], dtype=f64, device=dev)
        self.f = torch.as_tensor(st.f[rows], dtype=f64, device=dev)
        self.wf = self.w * self.f
        self.wff = torch.as_tensor(st.wff[rows], dtype=f64, device=dev)
        self.prior_mu = torch.as_tensor(st.prior_mu[rows], dtype=f64, device=dev)
        self.prior_isig = torch.as_tensor(st.prior_isig[rows], dtype=f64, device=dev)
        self.dof = torch.as_tensor(st.dof[rows], dtype=f64, device=dev)
        # 1 on the diagonal of a left-out arm's (all-zero) terms: they solve to 0 (SpectrumPosterior)
        self.dead = torch.as_tensor(st.dead_terms[rows], dtype=f64, device=dev)
        self.any_dead = bool(st.dead_terms[rows].any())
        # emulator rows per evaluation tile (fixed shapes, see _tiled); CPU: small enough for cache
        self.row_tile = ROW_TILE_CPU if dev.type == "cpu" else ROW_TILE_CUDA
        self.pad_tiles = dev.type != "cpu"

    _PER_STAR = ("w", "f", "wf", "wff", "prior_mu", "prior_isig", "dof", "dead")

    def take(self, idx: Tensor) -> BatchedPosterior:
        """The sub-batch of stars ``idx`` (LongTensor, repeats allowed)."""
        d = dict(self.__dict__)
        for k in self._PER_STAR:
            d[k] = d[k][idx]
        d["S"] = int(idx.numel())
        return self._with(d)

    def _slice(self, a: int, b: int) -> BatchedPosterior:
        d = dict(self.__dict__)
        for k in self._PER_STAR:
            d[k] = d[k][a:b]
        d["S"] = b - a
        return self._with(d)

    @classmethod
    def _with(cls, state: dict[str, Any]) -> BatchedPosterior:
        """A posterior with the attributes ``state`` (sub-batches share the geometry tensors)."""
        obj = cls.__new__(cls)
        obj.__dict__.update(state)
        return obj

    def _tiled(self, fn: Callable[[BatchedPosterior, Tensor], Any], theta: Tensor, per: int | None = None) -> Any:
        """fn(sub-posterior, theta) over tiles of exactly ``per`` stars (default: row_tile // N,
        the last tile padded with copies of the last star on CUDA), outputs concatenated along
        stars (fn returns a tensor or a tuple of tensors). On CUDA every GEMM and reduction then
        has the same shape whatever the batch (cuBLAS picks its kernel by shape, so a star's
        float32 spectra would otherwise depend on the batch size); on the CPU (MKL's float32
        GEMM rows do not depend on M) the last tile is not padded, which saves the padding's work."""
        S, N = theta.shape[:2]
        per = per or max(1, self.row_tile // max(N, 1))
        if not self.pad_tiles:
            per = min(per, S)
        outs = []
        for a in range(0, S, per):
            b = min(S, a + per)
            if b - a == per or not self.pad_tiles:
                sub, th = self._slice(a, b), theta[a:b]
            else:
                idx = torch.arange(a, a + per, device=theta.device).clamp_max(S - 1)
                sub, th = self.take(idx), theta[idx]
            out = fn(sub, th)
            outs.append(tuple(o[: b - a] for o in out) if isinstance(out, tuple) else out[: b - a])
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)

    # ---------------------------------------------------------------- pieces
    def in_bounds(self, theta: Tensor) -> Tensor:
        return (torch.isfinite(theta) & (theta >= self.lower) & (theta <= self.upper)).all(dim=-1)

    def log_prior(self, theta: Tensor) -> Tensor:
        """(S, N) log prior: -inf outside the bounds, Gaussian terms inside."""
        z = (theta[..., : self.n_label] - self.prior_mu[:, None, :]) * self.prior_isig[:, None, :]
        lp = -0.5 * dot(z, z)
        return torch.where(self.in_bounds(theta), lp, torch.full_like(lp, -math.inf))

    def shift(self, spectra: Tensor, rv: Tensor) -> Tensor:
        """(R, n_pix) rest-frame spectra -> (R, n_used) at velocities rv (R,) km/s: linear
        interpolation on the log grid, ``a + phi (prev - a)`` as SpectrumPosterior.shift."""
        R = spectra.shape[0]
        delta = torch.log10(1.0 + rv / C_KMS) / self.step
        n = torch.floor(delta)
        phi = (delta - n).to(spectra.dtype)[:, None]
        start = (self.lo - n.to(torch.int64) - 1).clamp(0, spectra.shape[1] - self.n_used - 1)
        win = spectra.unfold(1, self.n_used + 1, 1)[torch.arange(R, device=spectra.device), start]
        return torch.lerp(win[:, 1:], win[:, :-1], phi)  # a + phi (prev - a), one pass

    def normal_equations(self, ms: Tensor) -> tuple[Tensor, Tensor]:
        """G (S, N, k, k) and b (S, N, k) of the continuum least squares, float64, for shifted
        spectra ms (S, N, n_used)."""
        md = ms.to(torch.float64)  # once (a float32 * float64 product would convert ms each time)
        b = (md * self.wf[:, None, :]) @ self.T  # exact products, float64 sums
        gp = (md * self.w[:, None, :]).mul_(md) @ self.TT
        k = self.n_cont
        G = gp[..., self.pair_of].reshape(*gp.shape[:-1], k, k)
        if self.any_dead:
            G = G + torch.diag_embed(self.dead)[:, None]
        return G, b

    @staticmethod
    def solve(G: Tensor, b: Tensor) -> Tensor:
        """c = G^-1 b per row (G is SPD: Cholesky; pseudo-inverse for singular rows, as lstsq in
        the numpy path)."""
        if G.device.type == "cpu":  # LAPACK per matrix: fast, and a row's result is its own
            c, info = torch.linalg.solve_ex(G, b[..., None])
            c, bad = c[..., 0], info != 0
        else:  # explicit Cholesky: no batched-kernel choice by batch size
            c, ok = spd_solve(G, b)
            bad = ~ok
        if bool(bad.any()):
            c[bad] = (torch.linalg.pinv(G[bad]) @ b[bad][..., None])[..., 0]
        return c

    def _spectra(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Shifted spectra (S, N, n_used) at theta (clamped into the bounds) and the in-bounds mask."""
        S, N, D = theta.shape
        inb = self.in_bounds(theta)
        mid = 0.5 * (self.lower + self.upper)
        safe = torch.where(inb[..., None], theta, mid)
        spec = self.emu.predict(safe[..., : self.n_label].reshape(S * N, self.n_label))
        ms = self.shift(spec, safe[..., self.n_label].reshape(S * N))
        return ms.reshape(S, N, self.n_used), inb

    def chi2_of_shifted(self, ms: Tensor) -> tuple[Tensor, Tensor]:
        """Profiled chi2 (S, N) and continuum coefficients (S, N, k) of shifted spectra."""
        G, b = self.normal_equations(ms)
        c = self.solve(G, b)
        chi2 = self.wff[:, None] - dot(b, c)
        return chi2.clamp_min(0.0), c

    def chi2(self, theta: Tensor) -> Tensor:
        """(S, N) profiled chi2 (theta clamped into the bounds)."""
        return self._tiled(lambda bp, th: bp.chi2_of_shifted(bp._spectra(th)[0])[0], theta)

    def log_prob(self, theta: Tensor) -> Tensor:
        """(S, N) log posterior (up to a constant) at theta (S, N, ndim) float64; -inf outside."""
        return self._tiled(BatchedPosterior._log_prob, theta)

    def _log_prob(self, theta: Tensor) -> Tensor:
        ms, inb = self._spectra(theta)
        chi2, _ = self.chi2_of_shifted(ms)
        lp = self.log_prior(theta) - 0.5 * chi2
        return torch.where(inb, lp, torch.full_like(lp, -math.inf))

    def residuals(self, theta: Tensor) -> Tensor:
        """(S, N, n_used + n_label) whitened residuals sqrt(w)(f - P m) (0 on masked pixels) and
        prior terms (theta - mu)/sigma (0 without a prior): ``sum r^2 = chi2 - 2 log prior``."""
        return self._tiled(BatchedPosterior._residuals, theta)

    def _residuals(self, theta: Tensor) -> Tensor:
        ms, _ = self._spectra(theta)
        G, b = self.normal_equations(ms)
        c = self.solve(G, b)
        cont = c[..., 0, None] * self.T[:, 0]
        for j in range(1, self.n_cont):
            cont = cont + c[..., j, None] * self.T[:, j]
        mu = ms.to(torch.float64) * cont
        r = (self.f[:, None, :] - mu) * torch.sqrt(self.w)[:, None, :]
        rp = (theta[..., : self.n_label] - self.prior_mu[:, None, :]) * self.prior_isig[:, None, :]
        return torch.cat([r, rp], dim=-1)


__all__ = ["BatchedPosterior", "SpectraStack"]
