"""Chain diagnostics: integrated autocorrelation time, effective sample size, ArviZ conversion.

Conventions (emcee's): a chain is (n_steps, n_walkers, n_dim); tau is in steps and estimated
from the walker-averaged autocorrelation function (``emcee.autocorr.integrated_time``, Sokal
window c=5); the effective sample size of a parameter is ``n_steps * n_walkers / tau``. A chain is
called converged when ``n_steps >= tau_factor * max(tau)`` (emcee's rule of thumb, 50 by
default; estimates of tau from shorter chains are biased low).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import rules
from .result import FitResult


def autocorr_time(chain: np.ndarray, c: float = 5.0) -> np.ndarray:
    """Integrated autocorrelation time (n_dim,) in steps of a chain (n_steps, n_walkers, n_dim).

    Uses ``emcee.autocorr.integrated_time(..., quiet=True)`` with ``tol=0`` (no warning: the
    length check is :func:`converged`'s job). Parameters that do not move (zero variance) get
    ``inf``."""
    from emcee.autocorr import integrated_time

    chain = np.asarray(chain, dtype=np.float64)
    if chain.ndim != 3 or chain.shape[0] < 2:
        raise ValueError(f"chain must be (n_steps >= 2, n_walkers, n_dim), got {chain.shape}")
    tau = np.empty(chain.shape[2])
    for k in range(chain.shape[2]):
        x = chain[:, :, k]
        if not np.all(np.isfinite(x)) or np.ptp(x) == 0:
            tau[k] = np.inf
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            t = integrated_time(x[:, :, None], c=c, tol=0, quiet=True, has_walkers=True)
        tau[k] = float(np.asarray(t).ravel()[0])
    tau[~np.isfinite(tau)] = np.inf
    return np.maximum(tau, 1.0)


def effective_sample_size(chain: np.ndarray, tau: np.ndarray | None = None) -> np.ndarray:
    """n_steps * n_walkers / tau per parameter (n_dim,)."""
    chain = np.asarray(chain)
    tau = autocorr_time(chain) if tau is None else np.asarray(tau, dtype=np.float64)
    return chain.shape[0] * chain.shape[1] / tau


def converged(n_steps: int, tau: np.ndarray, tau_factor: float = 50.0) -> bool:
    """True if the chain is at least ``tau_factor`` autocorrelation times long for every parameter."""
    return bool(rules.converged(n_steps, float(np.max(np.asarray(tau, dtype=np.float64))), tau_factor))


def summarise(chain: np.ndarray, acceptance: np.ndarray | float | None = None, *, tau_factor: float = 50.0) -> dict[str, Any]:
    """tau (per parameter), tau_max, n_eff (per parameter), n_eff_min, converged, acceptance."""
    tau = autocorr_time(chain)
    n_eff = effective_sample_size(chain, tau)
    return {
        "tau": tau,
        "tau_max": float(np.max(tau)),
        "n_eff": n_eff,
        "n_eff_min": float(np.min(n_eff)),
        "converged": converged(chain.shape[0], tau, tau_factor),
        "acceptance": float(np.mean(acceptance)) if acceptance is not None else float("nan"),
    }


def to_inference_data(
    result: FitResult | np.ndarray,
    param_names: Sequence[str] | None = None,
    *,
    log_prob: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """An ``arviz.InferenceData`` from a chain (n_steps, n_walkers, n_dim) or from a
    :class:`~gsn_dask.fit.result.FitResult`.

    From a result: its ``chain`` (present with ``return_chain=True``; walkers become ArviZ
    chains), else its ``samples`` (n_draws, n_label) as a single chain. ``param_names`` default to
    the result's ``param_names``."""
    import arviz as az

    extra: dict[str, Any] = {}
    if isinstance(result, FitResult):
        names = list(param_names or result.param_names or [])
        if result.chain is not None:
            chain = np.asarray(result.chain)
            lp = result.log_prob_chain if log_prob is None else log_prob
        elif result.samples is not None:
            chain = np.asarray(result.samples)[:, None, :]
            lp = None
            names = names[: chain.shape[2]]
        else:
            raise ValueError("the result has neither a chain (fit with return_chain=True) nor samples (n_draws > 0)")
        for key in ("seed", "status", "flag", "tau_max", "n_eff_min", "acceptance", "chi2_reduced"):
            extra[key] = getattr(result, key)
    else:
        chain = np.asarray(result)
        lp = log_prob
        names = list(param_names or [])
    if chain.ndim != 3:
        raise ValueError(f"chain must be (n_steps, n_walkers, n_dim), got {chain.shape}")
    if not names:
        names = [f"theta_{k}" for k in range(chain.shape[2])]
    if len(names) != chain.shape[2]:
        raise ValueError(f"{len(names)} parameter names for {chain.shape[2]} parameters")
    # ArviZ wants (chain, draw): walkers are chains
    posterior = {name: np.ascontiguousarray(chain[:, :, k].T) for k, name in enumerate(names)}
    sample_stats = {"lp": np.ascontiguousarray(np.asarray(lp).T)} if lp is not None else None
    return az.from_dict(posterior=posterior, sample_stats=sample_stats, attrs={**extra, **dict(attrs or {})})


__all__ = ["autocorr_time", "converged", "effective_sample_size", "summarise", "to_inference_data"]
