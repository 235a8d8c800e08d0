"""Continuous batching of the walkers: :class:`Pool` holds up to P stars, each at its own stage
(burn-in, production, extension); a finished star frees its slot and, when the pool falls to 3/4
full, waiting stars are admitted (their MAP starts computed together), so a few slow stars never
hold back a whole batch. The schedule is that of the emcee path
(:func:`gsn_dask.fit.sampler.fit_spectrum`): walkers from N(MAP, cov) inside the bounds; ``n_burn``
steps, the Laplace proposal re-fitted to the last :func:`~gsn_dask.fit.rules.burn_kept` of them;
production of ``n_steps``, extended per star by :func:`~gsn_dask.fit.rules.extra_steps`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..config import FitConfig
from ..result import FitResult
from ..rules import MOVE_MIXTURES, MOVE_PARAMS, burn_kept, extra_steps
from .algebra import STAR_TILE, chol, star_tiles
from .chains import autocorr_time, percentiles
from .emulator import TorchEmulator
from .moves import move_slots, moves_step
from .posterior import BatchedPosterior, SpectraStack
from .rng import STREAM_MCMC, seed_keys, uniforms
from .start import batched_map, init_walkers

Tensor = torch.Tensor


class Pool:
    """Continuous batching: up to ``capacity`` stars sampled together, each at its own stage
    (burn-in, production, extension); a finished star frees its slot and waiting stars are
    admitted (MAP start in a batch) when the pool runs low. A star's numbers depend only on its
    seed, data and the config (its random counter is its own step index)."""

    FREE, BURN, PROD = 0, 1, 2

    def __init__(self, emu: TorchEmulator, stack: SpectraStack, cfg: FitConfig, capacity: int, return_chain: bool) -> None:
        ndim = stack.template.ndim
        self.emu, self.cfg, self.stack = emu, cfg, stack
        self.P, self.W, self.D = int(capacity), cfg.n_walkers, ndim
        self.L = ndim - 1
        dev = self.dev = emu.device
        self.moves = MOVE_MIXTURES[cfg.moves]
        w = torch.tensor([m[1] for m in self.moves], dtype=torch.float64)
        self.cdf = (torch.cumsum(w, 0) / w.sum()).to(dev)
        self.K = max(move_slots(k, ndim) for k, _ in self.moves)
        self.R = 1 + self.W + self.W * self.K
        self.return_chain = return_chain
        P, W, D = self.P, self.W, self.D
        f64, i64 = torch.float64, torch.int64
        self.slot_star = np.full(P, -1, dtype=np.int64)
        self.phase = torch.zeros(P, dtype=torch.int8, device=dev)
        self.t = torch.zeros(P, dtype=i64, device=dev)
        self.k_burn = torch.zeros(P, dtype=i64, device=dev)
        self.n_prod = torch.zeros(P, dtype=i64, device=dev)
        self.target = torch.zeros(P, dtype=i64, device=dev)
        self.X = torch.zeros((P, W, D), dtype=f64, device=dev)
        self.LP = torch.zeros((P, W), dtype=f64, device=dev)
        self.keys = torch.zeros((P, 2), dtype=i64, device=dev)
        self.lap_mean = torch.zeros((P, D), dtype=f64, device=dev)
        self.lap_chol = torch.eye(D, dtype=f64, device=dev).repeat(P, 1, 1)
        self.map_theta = torch.zeros((P, D), dtype=f64, device=dev)
        self.map_cov = torch.eye(D, dtype=f64, device=dev).repeat(P, 1, 1)
        self.map_lp = torch.zeros(P, dtype=f64, device=dev)
        self.map_ok = torch.zeros(P, dtype=torch.bool, device=dev)
        self.rows = torch.zeros(P, dtype=i64, device=dev)
        self.n_acc = torch.zeros((P, W), dtype=i64, device=dev)
        self.best_lp = torch.full((P,), -math.inf, dtype=f64, device=dev)
        self.best_x = torch.zeros((P, D), dtype=f64, device=dev)
        self.n_keep = burn_kept(cfg.n_burn)
        self.burnbuf = torch.zeros((P, self.n_keep, W, D), dtype=torch.float32, device=dev)
        self.chain = torch.zeros((P, cfg.n_steps, W, D), dtype=torch.float32, device=dev)
        self.bp: BatchedPosterior | None = None
        self._bp_live: tuple[bytes, BatchedPosterior] | None = None
        self.tau_last = np.zeros((P, D))

    # ---------------------------------------------------------------- admission
    def n_alive(self) -> int:
        return int((self.slot_star >= 0).sum())

    def admit(self, stars: list[int], seeds: list[int]) -> None:
        """Place new stars (rows of the stack) in free slots: MAP start (batched), walkers,
        initial log-probs."""
        cfg, dev = self.cfg, self.dev
        free = np.flatnonzero(self.slot_star < 0)[: len(stars)]
        if free.size != len(stars):
            raise ValueError(f"{len(stars)} stars for {free.size} free slots")
        bp_new = BatchedPosterior(self.emu, self.stack, idx=np.asarray(stars))
        if self.bp is None:  # the pool's posterior: first stars, padded with copies of the first
            idx = torch.as_tensor(np.minimum(np.arange(self.P), len(stars) - 1), device=dev)
            self.bp = bp_new.take(idx)
        sl = torch.as_tensor(free, device=dev)
        for k in BatchedPosterior._PER_STAR:
            getattr(self.bp, k)[sl] = getattr(bp_new, k)
        self._bp_live = None
        keys = seed_keys(seeds, dev)
        mres = batched_map(bp_new, n_coarse=cfg.n_coarse, n_starts=cfg.n_starts, rv_bounds=cfg.rv_bounds_kms)
        X0 = init_walkers(bp_new, mres.theta, mres.cov, self.W, keys)
        self.X[sl], self.LP[sl], self.keys[sl] = X0, bp_new.log_prob(X0), keys
        self.map_theta[sl], self.map_cov[sl], self.map_lp[sl] = mres.theta, mres.cov, mres.log_prob
        self.map_ok[sl] = mres.success
        self.rows[sl] = mres.n_eval + self.W
        self._set_laplace(sl, mres.theta, mres.cov)
        self.t[sl] = 0
        self.k_burn[sl] = 0
        self.slot_star[free] = stars
        if cfg.n_burn > 0:
            self.phase[sl] = self.BURN
        else:
            self._start_production(sl)

    def _set_laplace(self, sl: Tensor, mean: Tensor, cov: Tensor) -> None:
        self.lap_mean[sl] = mean
        self.lap_chol[sl] = chol(cov * MOVE_PARAMS.laplace_scale ** 2)[0]

    def _start_production(self, sl: Tensor) -> None:
        self.phase[sl] = self.PROD
        self.n_prod[sl] = 0
        self.target[sl] = self.cfg.n_steps
        self.n_acc[sl] = 0
        self.best_lp[sl] = -math.inf

    # ---------------------------------------------------------------- stepping
    def _pool_bp(self) -> BatchedPosterior:
        if self.bp is None:
            raise RuntimeError("no star was admitted to the pool")
        return self.bp

    def _live_bp(self, live: Tensor) -> BatchedPosterior:
        if live.numel() == self.P:
            return self._pool_bp()
        key = live.cpu().numpy().tobytes()
        if self._bp_live is None or self._bp_live[0] != key:
            self._bp_live = (key, self._pool_bp().take(live))
        return self._bp_live[1]

    def step(self) -> list[tuple[int, FitResult]]:
        """Advance every live star by one step; returns (star, result) of the stars that finished."""
        cfg = self.cfg
        live = (self.phase > 0).nonzero()[:, 0]
        if live.numel() == 0:
            return []
        u = uniforms(self.keys[live], self.t[live], self.R, STREAM_MCMC)
        X, LP, acc, rows = moves_step(self._live_bp(live), self.X[live], self.LP[live], u, self.moves, self.cdf,
                                      self.lap_mean[live], self.lap_chol[live])
        self.X[live], self.LP[live] = X, LP
        self.t[live] += 1
        self.rows[live] += rows
        ph = self.phase[live]
        # ---- burn-in: keep the last n_keep steps for the Laplace re-fit
        bsel = (ph == self.BURN).nonzero()[:, 0]
        if bsel.numel():
            b = live[bsel]
            kb = self.k_burn[b]
            if self.n_keep:
                keep = kb >= cfg.n_burn - self.n_keep
                if bool(keep.any()):
                    self.burnbuf[b[keep], kb[keep] - (cfg.n_burn - self.n_keep)] = X[bsel[keep]].to(torch.float32)
            self.k_burn[b] += 1
            endb = b[self.k_burn[b] >= cfg.n_burn]
            if endb.numel():
                if self.n_keep:  # re-fit the Laplace proposal to the burn-in (tiles of fixed shape)
                    for ti, nr in star_tiles(endb.numel(), STAR_TILE, self.dev):
                        e = endb[ti]
                        half = self.burnbuf[e].to(torch.float64).reshape(ti.numel(), -1, self.D)
                        mean = half.mean(1)
                        xc = half - mean[:, None]
                        cov = xc.transpose(1, 2) @ xc / (half.shape[1] - 1)
                        _, ok = chol(cov)
                        ok = ok & torch.isfinite(cov).all(-1).all(-1)
                        e, ok, mean, cov = e[:nr], ok[:nr], mean[:nr], cov[:nr]
                        self._set_laplace(e, torch.where(ok[:, None], mean, self.map_theta[e]),
                                          torch.where(ok[:, None, None], cov, self.map_cov[e]))
                self._start_production(endb)
        # ---- production: record, count, track the best point
        psel = (ph == self.PROD).nonzero()[:, 0]
        if not psel.numel():
            return []
        p = live[psel]
        pos = self.n_prod[p]
        need = int(pos.max()) + 1
        if need > self.chain.shape[1]:
            new_cap = min(max(self.cfg.max_steps, self.cfg.n_steps), max(need, int(self.target[p].max())))
            new_cap = max(new_cap, need)
            extra = torch.zeros((self.P, new_cap - self.chain.shape[1], self.W, self.D), dtype=self.chain.dtype,
                                device=self.dev)
            self.chain = torch.cat([self.chain, extra], dim=1)
        Xp, LPp = X[psel], LP[psel]
        self.chain[p, pos] = Xp.to(torch.float32)
        self.n_acc[p] += acc[psel].to(torch.int64)
        lmax, kmax = LPp.max(dim=1)
        better = lmax > self.best_lp[p]
        self.best_lp[p] = torch.where(better, lmax, self.best_lp[p])
        self.best_x[p] = torch.where(better[:, None], Xp[torch.arange(p.numel(), device=self.dev), kmax], self.best_x[p])
        self.n_prod[p] += 1
        hit = p[self.n_prod[p] >= self.target[p]]
        if not hit.numel():
            return []
        return self._at_target(hit)

    def _at_target(self, hit: Tensor) -> list[tuple[int, FitResult]]:
        """Stars whose production reached its target: estimate tau; extend
        (:func:`gsn_dask.fit.rules.extra_steps`) or finish. Returns (star, result) of the
        finished stars."""
        cfg = self.cfg
        hs = hit.cpu().numpy()
        n_prod = self.n_prod[hit].cpu().numpy()
        for T in np.unique(n_prod):
            g = torch.as_tensor(hs[n_prod == T], device=self.dev)
            for ti, nr in star_tiles(g.numel(), STAR_TILE, self.dev):
                gg = g[ti]
                self.tau_last[gg[:nr].cpu().numpy()] = autocorr_time(self.chain[gg, : int(T)]).cpu().numpy()[:nr]
        extra = extra_steps(n_prod, self.tau_last[hs].max(axis=1), cfg)
        extend = extra > 0
        if extend.any():
            et = torch.as_tensor(hs[extend], device=self.dev)
            self.target[et] = self.n_prod[et] + torch.as_tensor(extra[extend], device=self.dev)
        done = hs[~extend]
        if not done.size:
            return []
        out = [(int(self.slot_star[slot]), res) for slot, res in self._summarise(done)]
        dt = torch.as_tensor(done, device=self.dev)
        self.phase[dt] = self.FREE
        self.slot_star[done] = -1
        return out

    def _summarise(self, slots: np.ndarray) -> list[tuple[int, FitResult]]:
        """Results (without flags, S/N and seed) of finished slots: percentiles of the thinned
        production (thin <= n_steps, FitConfig), draws, the best point, diagnostics."""
        cfg, D, L, W = self.cfg, self.D, self.L, self.W
        dev = self.dev
        st = torch.as_tensor(slots, device=dev)
        n_prod = self.n_prod[st].cpu().numpy()
        q = np.zeros((3, slots.size, D))
        draws: list[np.ndarray | None] = [None] * slots.size
        for T in np.unique(n_prod):
            a = np.flatnonzero(n_prod == T)
            g = st[torch.as_tensor(a, device=dev)]
            flat = self.chain[g, : int(T) : cfg.thin].reshape(a.size, -1, D)
            q[:, a] = percentiles(flat, (16.0, 50.0, 84.0)).cpu().numpy()
            if cfg.n_draws > 0:
                idx = torch.as_tensor(np.linspace(0, flat.shape[1] - 1, cfg.n_draws).round().astype(np.int64), device=dev)
                dd = flat[:, idx, :L].to(torch.float64).cpu().numpy()
                for j, k in enumerate(a):
                    draws[k] = dd[j]
        better = self.best_lp[st] > self.map_lp[st]
        theta_map = torch.where(better[:, None], self.best_x[st], self.map_theta[st])
        bps = self._pool_bp().take(st)
        chi2r = (bps.chi2(theta_map[:, None, :])[:, 0] / bps.dof).cpu().numpy()
        tm = theta_map.cpu().numpy()
        acc = (self.n_acc[st].sum(1).to(torch.float64) / (self.n_prod[st] * W).to(torch.float64)).cpu().numpy()
        rows = self.rows[st].cpu().numpy()
        map_ok = self.map_ok[st].cpu().numpy()
        out = []
        for j, slot in enumerate(slots):
            tau = self.tau_last[slot].copy()
            res = FitResult(
                median=q[1, j, :L].copy(), p16=q[0, j, :L].copy(), p84=q[2, j, :L].copy(), map=tm[j, :L].copy(),
                rv=float(q[1, j, L]), rv_err=float(0.5 * (q[2, j, L] - q[0, j, L])), chi2_reduced=float(chi2r[j]),
                acceptance=float(acc[j]), tau_max=float(tau.max()), n_eff_min=float(np.min(n_prod[j] * W / tau)),
                samples=draws[j], n_steps=int(n_prod[j]), rv_map=float(tm[j, L]), n_eval=int(rows[j]),
                map_success=bool(map_ok[j]), tau=tau, status="ok")
            if self.return_chain:
                res.chain = self.chain[int(slot), : int(n_prod[j])].to(torch.float64).cpu().numpy()
                res.map_start = self.map_theta[int(slot)].cpu().numpy()
            out.append((int(slot), res))
        return out


def run_pool(emu: TorchEmulator, stack: SpectraStack, rows: Sequence[int], seeds: Sequence[int], cfg: FitConfig,
             capacity: int, return_chain: bool, refill: float = 0.75, pbar: Any = None) -> list[FitResult]:
    """Sample the stars ``rows`` of ``stack`` (seeds ``seeds``) with a pool of ``capacity``
    slots (continuous batching); raw per-star results (no flags), in the order of ``rows``."""
    n = len(rows)
    pool = Pool(emu, stack, cfg, min(capacity, n), return_chain)
    pos = {int(r): i for i, r in enumerate(rows)}
    results: list[FitResult | None] = [None] * n
    nxt = 0
    while True:
        alive = pool.n_alive()
        if nxt < n and (alive == 0 or alive <= refill * pool.P):
            k = min(pool.P - alive, n - nxt)
            pool.admit([int(r) for r in rows[nxt : nxt + k]], [int(x) for x in seeds[nxt : nxt + k]])
            nxt += k
        if pool.n_alive() == 0:
            break
        finished = pool.step()
        for star, res in finished:
            results[pos[star]] = res
        if pbar is not None and finished:
            pbar.update(len(finished))
    return results  # type: ignore[return-value]


__all__ = ["Pool", "run_pool"]
