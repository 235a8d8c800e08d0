"""Sample one spectrum's posterior with emcee: :func:`fit_spectrum`.

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

Randomness: emcee's moves draw from a ``RandomState`` seeded with ``seed`` (``seeds.random_state``),
the walker start from ``seeds.generator(seed, 1)``; the same seed gives bitwise-identical
results on the same machine and BLAS thread count (``config.blas_threads``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..flags import Flag
from .config import FitConfig
from .diagnostics import autocorr_time
from .posterior import SpectrumPosterior
from .result import RESULT_KEYS, empty_result, input_problem, model_label_systematics, result_flags, widen_intervals
from .seeds import generator, random_state
from .start import find_map
from .threads import blas_threads


# ------------------------------------------------------------------ moves
from emcee.moves import MHMove  # noqa: E402  (emcee is a hard dependency of the fit)


class LaplaceMove(MHMove):
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
    """emcee moves for ``config.moves``: "stretch", "de" (0.8 DE + 0.2 snooker) or "laplace-de"
    (0.8 Laplace independence + 0.16 DE + 0.04 snooker)."""
    from emcee import moves as em

    if kind == "stretch":
        return [(em.StretchMove(), 1.0)]
    if kind == "de":
        return [(em.DEMove(), 0.8), (em.DESnookerMove(), 0.2)]
    if kind == "laplace-de":
        if mean is None or cov is None:
            raise ValueError("laplace-de moves need the MAP and its covariance")
        return [(LaplaceMove(mean, cov), 0.8), (em.DEMove(), 0.16), (em.DESnookerMove(), 0.04)]
    raise ValueError(f"unknown moves {kind!r}")


# ------------------------------------------------------------------ results
def _draw_walkers(post: SpectrumPosterior, mean: np.ndarray, cov: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n walkers from N(mean, cov) inside the bounds (resampled, then clipped to the interior)."""
    lo, hi = post.lower, post.upper
    span = hi - lo
    L = np.linalg.cholesky(cov)
    out = mean + rng.standard_normal((n, mean.size)) @ L.T
    for _ in range(20):
        bad = ~post.in_bounds(out)
        if not bad.any():
            break
        out[bad] = mean + rng.standard_normal((int(bad.sum()), mean.size)) @ L.T
    return np.clip(out, lo + 1e-6 * span, hi - 1e-6 * span)


def check_config(cfg: FitConfig, model) -> None:
    """Raise ValueError if ``cfg`` cannot be used with ``model`` (walkers, prior label names)."""
    ndim = len(model.label_names) + 1
    if cfg.n_walkers < 2 * ndim:
        raise ValueError(f"FitConfig: n_walkers={cfg.n_walkers} must be >= 2 * n_dim = {2 * ndim} for this model")
    unknown = sorted(set(cfg.priors) - set(model.label_names))
    if unknown:
        raise ValueError(f"FitConfig: priors for unknown labels {unknown}; the model's labels are {list(model.label_names)}")


# ------------------------------------------------------------------ main entry
def fit_spectrum(
    model,
    flux: np.ndarray,
    ivar: np.ndarray,
    *,
    config: FitConfig | None = None,
    seed: int,
    snr: float = math.nan,
    priors: Mapping[str, tuple[float, float]] | None = None,
    return_chain: bool = False,
) -> dict[str, Any]:
    """Posterior of the labels (and rv) of one normalised spectrum on ``model.wavelength``.

    Parameters: ``flux``/``ivar`` (n_pix,) normalised; ``seed`` the star's seed
    (:func:`.seeds.star_seed`); ``snr`` per-pixel S/N for the LOW_SNR flag (NaN: the median of
    |flux| sqrt(ivar) over the used pixels); ``priors`` per-star Gaussian priors
    {label: (mu, sigma)} overriding ``config.priors``; ``return_chain`` adds ``chain``
    (n_steps, n_walkers, n_label+1), ``log_prob_chain``, ``param_names`` and ``map_result``.

    Returns a dict: ``median``, ``p16``, ``p84``, ``map`` (n_label,) arrays in
    ``model.label_names`` order; ``rv``, ``rv_err`` (km/s, posterior median and half the 16-84%
    range); ``chi2_reduced`` (at the MAP, full variance, good pixels); ``acceptance``;
    ``tau_max`` (steps); ``n_eff_min`` (over labels and rv); ``flag`` (int, :class:`Flag`);
    ``status`` ("ok" or why not fitted); ``samples`` ((n_draws, n_label) or None); plus
    ``snr``, ``n_good``, ``n_steps``, ``seed``. Never raises for bad data (only for a bad config).

    BLAS is limited to ``config.blas_threads`` threads meanwhile (default 1: the matrices are
    small, extra threads only spin; parallelism comes from fitting stars in parallel).
    """
    cfg = config or FitConfig()
    check_config(cfg, model)
    try:
        with blas_threads(cfg.blas_threads):
            return _fit_spectrum(model, flux, ivar, cfg=cfg, seed=seed, snr=snr, priors=priors, return_chain=return_chain)
    except Exception as exc:  # noqa: BLE001 - a bad spectrum must not stop a run
        return empty_result(len(model.label_names), status=f"error: {type(exc).__name__}: {exc}", snr=float(snr),
                            n_good=0, seed=int(seed))


def _fit_spectrum(model, flux, ivar, *, cfg: FitConfig, seed: int, snr: float, priors, return_chain: bool) -> dict[str, Any]:
    import emcee

    flux = np.asarray(flux, dtype=np.float64).reshape(-1)
    ivar = np.asarray(ivar, dtype=np.float64).reshape(-1)
    L = len(model.label_names)
    n_pix = int(np.asarray(model.wavelength).size)
    problem = input_problem(flux, ivar, n_pix)
    if problem is not None:
        return empty_result(L, status=f"bad input: {problem}", snr=float(snr), n_good=0, seed=int(seed))
    post = SpectrumPosterior(model, flux, ivar, cfg, priors=priors)
    snr_used = float(snr) if np.isfinite(snr) else post.snr_median
    if post.n_good < cfg.min_good_pixels:
        flag = Flag.NOT_FITTED | Flag.FEW_PIXELS
        if np.isfinite(snr_used) and snr_used < cfg.snr_low:
            flag |= Flag.LOW_SNR
        return empty_result(
            L, flag=int(flag), status=f"few good pixels: {post.n_good} < min_good_pixels={cfg.min_good_pixels}",
            snr=snr_used, n_good=post.n_good, seed=int(seed),
        )

    # ---- MAP + Laplace covariance
    mres = find_map(post, n_coarse=cfg.n_coarse, n_starts=cfg.n_starts)
    rng = generator(seed, 1)
    p0 = _draw_walkers(post, mres.theta, mres.cov, cfg.n_walkers, rng)

    # ---- burn-in
    rs = random_state(seed)
    ndim = post.ndim
    burn = emcee.EnsembleSampler(cfg.n_walkers, ndim, post.log_prob, vectorize=True,
                                 moves=make_moves(cfg.moves, mres.theta, mres.cov))
    burn._random = rs
    state = burn.run_mcmc(p0, cfg.n_burn, progress=False) if cfg.n_burn > 0 else emcee.State(p0)
    mean, cov = mres.theta, mres.cov
    if cfg.n_burn >= 20:
        half = burn.get_chain(discard=min(10, cfg.n_burn // 2), flat=True)
        c = np.cov(half, rowvar=False)
        try:
            np.linalg.cholesky(c)
            mean, cov = np.mean(half, axis=0), c
        except np.linalg.LinAlgError:
            pass

    # ---- production, extended until tau_factor * tau (or max_steps)
    sampler = emcee.EnsembleSampler(cfg.n_walkers, ndim, post.log_prob, vectorize=True,
                                    moves=make_moves(cfg.moves, mean, cov))
    sampler._random = rs
    state = sampler.run_mcmc(state, cfg.n_steps, progress=False)
    n_prod = cfg.n_steps
    tau = autocorr_time(sampler.get_chain())
    max_steps = max(cfg.max_steps, cfg.n_steps)
    while n_prod < cfg.tau_factor * float(np.max(tau)) and n_prod < max_steps:
        want = int(math.ceil(1.1 * cfg.tau_factor * float(np.max(tau)))) - n_prod
        extra = int(min(max(want, 20), max_steps - n_prod))
        state = sampler.run_mcmc(state, extra, progress=False)
        n_prod += extra
        tau = autocorr_time(sampler.get_chain())
    conv = bool(n_prod >= cfg.tau_factor * float(np.max(tau)))

    # ---- summaries
    chain = sampler.get_chain(thin=cfg.thin)
    flat = chain.reshape(-1, ndim)
    q16, q50, q84 = np.percentile(flat, [16.0, 50.0, 84.0], axis=0)
    lp_chain = sampler.get_log_prob()
    k = np.unravel_index(np.argmax(lp_chain), lp_chain.shape)
    theta_map = mres.theta
    if lp_chain[k] > mres.log_prob:
        theta_map = sampler.get_chain()[k]
    chi2r = post.chi2_reduced(theta_map)
    n_eff = n_prod * cfg.n_walkers / tau
    acc = float(np.mean(sampler.acceptance_fraction))
    samples = None
    if cfg.n_draws > 0:
        idx = np.linspace(0, flat.shape[0] - 1, cfg.n_draws).round().astype(int)
        samples = flat[idx, :L].copy()
    res: dict[str, Any] = {
        "median": q50[:L],
        "p16": q16[:L],
        "p84": q84[:L],
        "map": theta_map[:L].copy(),
        "rv": float(q50[L]),
        "rv_err": float(0.5 * (q84[L] - q16[L])),
        "chi2_reduced": chi2r,
        "acceptance": acc,
        "tau_max": float(np.max(tau)),
        "n_eff_min": float(np.min(n_eff)),
        "flag": result_flags(post, q50[:L], float(q50[L]), chi2r, snr_used, conv, cfg),
        "status": "ok",
        "samples": samples,
        "snr": snr_used,
        "n_good": post.n_good,
        "n_steps": n_prod,
        "seed": int(seed),
        "rv_map": float(theta_map[L]),
        "n_eval": post.n_eval,
    }
    widen_intervals(res, model_label_systematics(model, cfg))
    if return_chain:
        res.update(
            chain=sampler.get_chain(),
            log_prob_chain=sampler.get_log_prob(),
            param_names=list(post.param_names),
            map_result=mres,
            tau=tau,
        )
    return res


__all__ = ["LaplaceMove", "RESULT_KEYS", "check_config", "empty_result", "fit_spectrum", "make_moves"]
