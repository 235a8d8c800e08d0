"""The rules both samplers follow, written once (numpy only; the torch path reads the same
constants and calls the same functions on host arrays).

The emcee path (:mod:`.sampler`, :mod:`.start`) works on one star with numpy/LAPACK; the batched
path (:mod:`.torch`) works on many stars with torch tensors. Where the array libraries differ
(the Levenberg-Marquardt loop, the walker draw), each keeps one algorithm shape with the
settings below; the selection and stopping rules themselves are these functions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import FitConfig

#: Walkers and optimiser starts are kept this fraction of the box away from a bound.
INTERIOR_FRAC = 1e-6
#: A walker drawn outside the bounds is redrawn up to this many times, then clipped inside.
WALKER_REDRAWS = 20
#: Coarse candidates refined by the optimiser are at least this far apart (max-norm, unit box).
START_MIN_DIST = 0.1
#: The Laplace proposal is re-fitted to the burn-in only when it has at least this many steps.
BURN_REFIT_MIN = 20
#: An extension of the production adds at least this many steps.
MIN_EXTENSION = 20

#: Move mixtures of ``config.moves``: (move, weight); the moves are emcee's StretchMove, DEMove,
#: DESnookerMove and :class:`.sampler.LaplaceMove` (the batched path implements the same four).
MOVE_MIXTURES: dict[str, tuple[tuple[str, float], ...]] = {
    "stretch": (("stretch", 1.0),),
    "de": (("de", 0.8), ("snooker", 0.2)),
    "laplace-de": (("laplace", 0.8), ("de", 0.16), ("snooker", 0.04)),
}


@dataclass(frozen=True)
class MoveParams:
    """Move parameters (emcee's defaults; Laplace: Student-t with ``laplace_df`` dof)."""

    stretch_a: float = 2.0
    de_sigma: float = 1.0e-5
    snooker_gamma: float = 1.7
    laplace_df: int = 5
    laplace_scale: float = 1.0


MOVE_PARAMS = MoveParams()


@dataclass(frozen=True)
class LMSettings:
    """Bounded Levenberg-Marquardt of the MAP start (both paths). A start stops when an accepted
    step lowers the cost by <= ``ftol_abs`` or moves <= ``xtol`` (fraction of the box), when the
    damping passes ``lam_max`` after a rejected step, or when it comes within ``same_tol`` (of the
    box) of a better start. Damping: x ``lam_down``^-1 (floor ``lam_min``) after an accepted
    step, x ``lam_up`` after a rejected one. Finite differences: step ``h_frac`` of the box."""

    max_iter: int = 40
    ftol_abs: float = 1e-3
    xtol: float = 1e-7
    h_frac: float = 3e-4
    lam0: float = 1e-3
    lam_down: float = 3.0
    lam_min: float = 1e-9
    lam_up: float = 4.0
    lam_max: float = 1e8
    same_tol: float = 1e-4
    bound_eps: float = 1e-9  # a parameter this close (fraction of the box) to a bound is 'at' it
    diag_floor: float = 1e-12  # floor of the damping diagonal


LM = LMSettings()


def burn_discard(n_burn: int) -> int:
    """Burn-in steps skipped before re-fitting the Laplace proposal to the rest."""
    return min(10, n_burn // 2)


def burn_kept(n_burn: int) -> int:
    """Burn-in steps the Laplace proposal is re-fitted to (0: no re-fit)."""
    return n_burn - burn_discard(n_burn) if n_burn >= BURN_REFIT_MIN else 0


def extra_steps(n_prod: np.ndarray, tau_max: np.ndarray, config: FitConfig) -> np.ndarray:
    """Production steps to add per star (0: stop) after ``n_prod`` steps with integrated
    autocorrelation time ``tau_max`` (steps): while shorter than ``tau_factor`` tau and below
    ``max_steps``, extend to 1.1 ``tau_factor`` tau (at least :data:`MIN_EXTENSION` steps)."""
    n_prod = np.asarray(n_prod, dtype=np.int64)
    tau_max = np.asarray(tau_max, dtype=np.float64)
    max_steps = max(config.max_steps, config.n_steps)
    go = (n_prod < config.tau_factor * tau_max) & (n_prod < max_steps)
    want = np.ceil(1.1 * config.tau_factor * tau_max) - n_prod  # float: inf tau runs to max_steps
    extra = np.minimum(np.maximum(want, MIN_EXTENSION), max_steps - n_prod)
    return np.where(go, extra, 0).astype(np.int64)


def converged(n_prod: np.ndarray | int, tau_max: np.ndarray | float, tau_factor: float) -> np.ndarray:
    """Whether ``n_prod`` production steps cover ``tau_factor`` autocorrelation times ``tau_max``
    (emcee's rule of thumb; an infinite tau never converges)."""
    return np.asarray(n_prod) >= tau_factor * np.asarray(tau_max, dtype=np.float64)


def distinct_starts(points: np.ndarray, lower: np.ndarray, upper: np.ndarray, k: int,
                    min_dist: float = START_MIN_DIST) -> tuple[np.ndarray, np.ndarray]:
    """Per star, the first up-to-``k`` of the candidates ``points`` (S, n, D) (in their order)
    that are at least ``min_dist`` apart (max-norm in the unit box): indices (S, k) and a
    validity mask (S, k) (invalid entries repeat the first index)."""
    u = (points - lower) / (upper - lower)
    S = u.shape[0]
    idx = np.zeros((S, k), dtype=np.int64)
    valid = np.zeros((S, k), dtype=bool)
    for s in range(S):
        chosen: list[int] = []
        for i in range(u.shape[1]):
            if all(np.max(np.abs(u[s, i] - u[s, j])) >= min_dist for j in chosen):
                chosen.append(i)
                if len(chosen) == k:
                    break
        idx[s, : len(chosen)] = chosen
        valid[s, : len(chosen)] = True
    return idx, valid


__all__ = ["BURN_REFIT_MIN", "INTERIOR_FRAC", "LM", "LMSettings", "MIN_EXTENSION", "MOVE_MIXTURES", "MOVE_PARAMS",
           "MoveParams", "START_MIN_DIST", "WALKER_REDRAWS", "burn_discard", "burn_kept", "converged",
           "distinct_starts", "extra_steps"]
