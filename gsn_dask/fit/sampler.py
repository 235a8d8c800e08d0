"""The emcee strategy: :func:`fit_many` (what :func:`.block.fit_block` calls with
``sampler="emcee"``) fits each star with :func:`fit_spectrum`, one emcee ensemble per star.

Steps (see :mod:`.posterior` for the math and :mod:`.start` for the MAP):

1. checks on the input (finite flux, ivar > 0, at least ``min_good_pixels`` usable pixels);
   a bad spectrum returns a NOT_FITTED row with ``status`` saying why (no exception);
2. MAP and Laplace covariance (:func:`.start.find_map`);
3. walkers drawn from the Laplace approximation N(MAP, cov) inside the bounds;
4. ``emcee.EnsembleSampler(vectorize=True)`` burn-in; the independence proposal (if used) is
   re-fitted to the burn-in after its first 10 steps; production of ``n_steps``, extended while it is
   shorter than ``tau_factor`` autocorrelation times (up to ``max_steps``);
5. summaries, diagnostics and flags; the model's per-label systematics (if any) are folded into
   p16/p84 (:func:`.result.widen_intervals`).

Randomness: emcee's moves draw from a ``RandomState`` seeded with ``seed`` (``seeds.random_state``,
handed to emcee as the ``random_state`` of the start ``State``), the walker start from
``seeds.generator(seed, 1)``; the same seed gives bitwise-identical
results on the same machine and BLAS thread count (``config.blas_threads``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import emcee
import numpy as np
from emcee import moves as em

from .config import FitConfig, check_config
from .diagnostics import autocorr_time
from .posterior import SpectrumPosterior, star_posterior
from .result import FitResult, report_labels, reporting, result_flags
from .rules import (INTERIOR_FRAC, MOVE_MIXTURES, MOVE_PARAMS, WALKER_REDRAWS, burn_kept, converged,
                    extra_steps)
from .seeds import generator, random_state
from .start import MapResult, find_map
from .threads import blas_threads


# ------------------------------------------------------------------ moves
class LaplaceMove(em.MHMove):
    """Independence Metropolis-Hastings proposal from a multivariate Student-t
    (``df`` degrees of freedom, location ``mean``, scale ``scale**2 * cov``), for emcee.

    The proposal does not depend on the current walker, so the MH factor is
    ln q(x) - ln q(x'). It is a valid kernel on its own (the t tails cover the posterior) and
    decorrelates a nearly Gaussian posterior in ~1-2 steps; mixed with DE moves it stays
    robust when the posterior is not Gaussian (low S/N, bounds)."""

    def __init__(self, mean: np.ndarray, cov: np.ndarray, *, df: float = 5.0, scale: float = 1.0) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.df = float(df)
        self.scale = float(scale)
        self.chol = np.linalg.cholesky(np.asarray(cov, dtype=np.float64) * scale**2)
        self._inv_chol_T = np.linalg.inv(self.chol).T
        super().__init__(self._propose, ndim=self.mean.size)

    def _logq(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) @ self._inv_chol_T
        return -0.5 * (self.df + self.mean.size) * np.log1p(np.sum(z * z, axis=1) / self.df)

    def _propose(self, coords: np.ndarray, random: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        n, d = coords.shape
        z = random.randn(n, d)
        g = random.chisquare(self.df, size=n) / self.df
        q = self.mean + (z @ self.chol.T) / np.sqrt(g)[:, None]
        return q, self._logq(coords) - self._logq(q)


def make_moves(kind: str, mean: np.ndarray | None = None, cov: np.ndarray | None = None) -> list:
    """emcee moves (move, weight) of ``config.moves`` (:data:`.rules.MOVE_MIXTURES`): "stretch",
    "de" (0.8 DE + 0.2 snooker) or "laplace-de" (0.8 Laplace independence + 0.16 DE + 0.04
    snooker), with the parameters of :data:`.rules.MOVE_PARAMS`."""
    if kind not in MOVE_MIXTURES:
        raise ValueError(f"unknown moves {kind!r}")
    p = MOVE_PARAMS
    out: list = []
    for name, weight in MOVE_MIXTURES[kind]:
        if name == "stretch":
            out.append((em.StretchMove(a=p.stretch_a), weight))
        elif name == "de":
            out.append((em.DEMove(sigma=p.de_sigma), weight))
        elif name == "snooker":
            out.append((em.DESnookerMove(gammas=p.snooker_gamma), weight))
        else:
            if mean is None or cov is None:
                raise ValueError("laplace-de moves need the MAP and its covariance")
            out.append((LaplaceMove(mean, cov, df=p.laplace_df, scale=p.laplace_scale), weight))
    return out


def draw_walkers(post: SpectrumPosterior, mean: np.ndarray, cov: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n walkers from N(mean, cov) inside the bounds: up to :data:`.rules.WALKER_REDRAWS`
    redraws of the walkers outside, then clipped :data:`.rules.INTERIOR_FRAC` inside (the rule
    of the batched path's ``init_walkers``, which draws from the star's Philox stream)."""
    lo, hi = post.lower, post.upper
    span = hi - lo
    L = np.linalg.cholesky(cov)
    out = mean + rng.standard_normal((n, mean.size)) @ L.T
    for _ in range(WALKER_REDRAWS):
        bad = ~post.in_bounds(out)
        if not bad.any():
            break
        out[bad] = mean + rng.standard_normal((int(bad.sum()), mean.size)) @ L.T
    return np.clip(out, lo + INTERIOR_FRAC * span, hi - INTERIOR_FRAC * span)


# ------------------------------------------------------------------ one star
def fit_spectrum(
    model: Any,
    flux: np.ndarray,
    ivar: np.ndarray,
    *,
    config: FitConfig | None = None,
    seed: int,
    snr: float = math.nan,
    priors: Mapping[str, tuple[float, float]] | None = None,
    return_chain: bool = False,
) -> FitResult:
    """Posterior of the labels (and rv) of one normalised spectrum on ``model.wavelength``.

    Parameters: ``flux``/``ivar`` (n_pix,) normalised; ``seed`` the star's seed
    (:func:`.seeds.star_seed`); ``snr`` per-pixel S/N for the LOW_SNR flag (NaN: the median of
    |flux| sqrt(ivar) over the used pixels); ``priors`` per-star Gaussian priors
    {label: (mu, sigma)} overriding ``config.priors``; ``return_chain`` fills ``chain``
    (n_steps, n_walkers, n_label+1), ``log_prob_chain``, ``param_names``, ``tau`` and
    ``map_start`` of the result.

    Returns a :class:`.result.FitResult`: ``median``, ``p16``, ``p84``, ``map`` in
    ``model.label_names`` order; ``rv``, ``rv_err`` (km/s, posterior median and half the 16-84%
    range); ``chi2_reduced`` (at the MAP, full variance, good pixels); ``acceptance``;
    ``tau_max`` (steps); ``n_eff_min`` (over labels and rv); ``flag``; ``status`` ("ok" or why
    not fitted); ``samples`` ((n_draws, n_label) or None). Never raises for bad data, only for a
    config that does not fit the model (:class:`.config.ConfigError`).

    BLAS is limited to ``config.blas_threads`` threads meanwhile (default 1: the matrices are
    small, extra threads only spin; parallelism comes from fitting stars in parallel).
    """
    cfg = config or FitConfig()
    check_config(cfg, model, "emcee")  # a bad config raises (ConfigError), a bad spectrum does not
    try:
        with blas_threads(cfg.blas_threads):
            return _fit_spectrum(model, flux, ivar, cfg=cfg, seed=seed, snr=snr, priors=priors, return_chain=return_chain)
    except Exception as exc:  # noqa: BLE001 - a bad spectrum must not stop a run
        return FitResult.not_fitted(len(model.label_names), f"error: {type(exc).__name__}: {exc}", snr=float(snr),
                                    seed=int(seed))


def _fit_spectrum(model: Any, flux: np.ndarray, ivar: np.ndarray, *, cfg: FitConfig, seed: int, snr: float,
                  priors: Mapping[str, tuple[float, float]] | None, return_chain: bool) -> FitResult:
    post, not_fitted, snr_used = star_posterior(model, flux, ivar, cfg, seed=seed, snr=snr, priors=priors)
    if post is None:
        return not_fitted
    mres = find_map(post, n_coarse=cfg.n_coarse, n_starts=cfg.n_starts)
    sampler, n_prod, tau = _sample(post, mres, cfg, seed)
    res = _summarise(post, mres, sampler, n_prod, tau, cfg, snr_used)
    res.seed = int(seed)
    report_labels(res, reporting(model, cfg))
    if return_chain:
        res.chain, res.log_prob_chain = sampler.get_chain(), sampler.get_log_prob()
        res.param_names, res.map_start, res.tau = list(post.param_names), mres, tau
    return res


def _sample(post: SpectrumPosterior, mres: MapResult, cfg: FitConfig,
            seed: int) -> tuple[emcee.EnsembleSampler, int, np.ndarray]:
    """Burn-in from the Laplace approximation, the proposal re-fitted to the burn-in, then
    production extended by :func:`.rules.extra_steps`. Returns (sampler, production steps, tau)."""
    p0 = draw_walkers(post, mres.theta, mres.cov, cfg.n_walkers, generator(seed, 1))
    state = emcee.State(p0, random_state=random_state(seed).get_state())
    ndim = post.ndim
    mean, cov = mres.theta, mres.cov
    if cfg.n_burn > 0:
        burn = emcee.EnsembleSampler(cfg.n_walkers, ndim, post.log_prob, vectorize=True,
                                     moves=make_moves(cfg.moves, mean, cov))
        state = burn.run_mcmc(state, cfg.n_burn, progress=False)
        kept = burn_kept(cfg.n_burn)
        if kept:
            half = burn.get_chain(discard=cfg.n_burn - kept, flat=True)
            c = np.cov(half, rowvar=False)
            try:
                np.linalg.cholesky(c)
                mean, cov = np.mean(half, axis=0), c
            except np.linalg.LinAlgError:
                pass
    sampler = emcee.EnsembleSampler(cfg.n_walkers, ndim, post.log_prob, vectorize=True,
                                    moves=make_moves(cfg.moves, mean, cov))
    state = sampler.run_mcmc(state, cfg.n_steps, progress=False)
    n_prod = cfg.n_steps
    tau = autocorr_time(sampler.get_chain())
    while (extra := int(extra_steps(n_prod, float(np.max(tau)), cfg))) > 0:
        state = sampler.run_mcmc(state, extra, progress=False)
        n_prod += extra
        tau = autocorr_time(sampler.get_chain())
    return sampler, n_prod, tau


def _summarise(post: SpectrumPosterior, mres: MapResult, sampler: emcee.EnsembleSampler, n_prod: int,
               tau: np.ndarray, cfg: FitConfig, snr_used: float) -> FitResult:
    """Percentiles of the thinned production, the best point seen, diagnostics and flags."""
    L = post.n_label
    flat = sampler.get_chain(thin=cfg.thin).reshape(-1, post.ndim)  # thin <= n_steps (FitConfig)
    q16, q50, q84 = np.percentile(flat, [16.0, 50.0, 84.0], axis=0)
    lp_chain = sampler.get_log_prob()
    k = np.unravel_index(np.argmax(lp_chain), lp_chain.shape)
    theta_map = mres.theta
    if lp_chain[k] > mres.log_prob:
        theta_map = sampler.get_chain()[k]
    chi2r = post.chi2_reduced(theta_map)
    samples = None
    if cfg.n_draws > 0:
        idx = np.linspace(0, flat.shape[0] - 1, cfg.n_draws).round().astype(int)
        samples = flat[idx, :L].copy()
    conv = bool(converged(n_prod, float(np.max(tau)), cfg.tau_factor))
    return FitResult(
        median=q50[:L], p16=q16[:L], p84=q84[:L], map=theta_map[:L].copy(), rv=float(q50[L]),
        rv_err=float(0.5 * (q84[L] - q16[L])), chi2_reduced=chi2r,
        acceptance=float(np.mean(sampler.acceptance_fraction)), tau_max=float(np.max(tau)),
        n_eff_min=float(np.min(n_prod * cfg.n_walkers / tau)),
        flag=result_flags(post, q50[:L], float(q50[L]), chi2r, snr_used, conv, cfg, post.arm_missing), status="ok",
        samples=samples, snr=snr_used, n_good=post.n_good, n_steps=n_prod, rv_map=float(theta_map[L]),
        n_eval=post.n_eval, map_success=bool(mres.success))


# ------------------------------------------------------------------ the strategy
def fit_many(model: Any, flux: np.ndarray, ivar: np.ndarray, *, seeds: Sequence[int], snr: np.ndarray,
             priors: Sequence[Mapping[str, tuple[float, float]] | None], config: FitConfig,
             progress: bool = False) -> list[FitResult]:
    """The emcee strategy of :func:`.block.fit_block`: each normalised spectrum (rows of flux,
    ivar (S, n_pix) on the model grid) with :func:`fit_spectrum`, in order."""
    rows: Any = range(len(seeds))
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, total=len(seeds), desc="fit", unit="star")
    return [fit_spectrum(model, flux[i], ivar[i], config=config, seed=int(seeds[i]), snr=float(snr[i]),
                         priors=priors[i]) for i in rows]


__all__ = ["LaplaceMove", "draw_walkers", "fit_many", "fit_spectrum", "make_moves"]
