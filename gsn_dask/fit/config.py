"""Fit settings (:class:`FitConfig`): sampler lengths, nuisance model, priors, flag thresholds.

A config is JSON-serialisable (:meth:`FitConfig.to_dict` / :meth:`FitConfig.from_dict`); the
results cube stores it in ``attrs['fit_config']`` so a run can be repeated exactly.

Why the defaults (measured with ``benchmarks/fit.py`` on the 3 x 256-unit, 3753-pixel toy GSN,
S/N 30, 3 labels + rv; see ``benchmarks/results/fit.json``):

* ``moves = "laplace-de"``: 80% independence proposals from a Student-t (5 dof) centred on the
  MAP with the Laplace covariance, re-fitted to the burn-in samples; 16% ``DEMove``, 4%
  ``DESnookerMove`` (robustness where the posterior is not Gaussian). Integrated autocorrelation
  time 2.3 steps (acceptance 0.67), against 17.5 for a DE/snooker mix and 35 for emcee's default
  stretch move (12 walkers, 600 steps): a chain of 50 tau is ~120 steps instead of ~900-1800.
* ``n_walkers = 32``, ``n_burn = 20``, ``n_steps = 40``, ``tau_factor = 20``: a step costs one
  vectorised emulator call for all walkers, dominated by reading the output layer (~3 MB), so the
  number of *steps* sets the cost and walkers are nearly free. Production is extended in chunks
  while it is shorter than ``tau_factor`` integrated autocorrelation times, up to ``max_steps``
  (then NOT_CONVERGED); 20 tau x 32 walkers is more chain (640 walker-tau) than emcee's 50-tau rule
  with the earlier 10 walkers (500), and tau is averaged over 32 walkers' autocorrelations. The
  burn-in starts from the Laplace approximation and re-fits the independence proposal to its last
  10 steps x 32 walkers. On the 181 LAMOST DR1 spectra with the README path's model
  (``benchmarks/walkers.py``, ``benchmarks/results/walkers.json``, one core): 0.24 CPU s per star
  against 0.45 for 10 walkers, 30 burn-in, >= 120 steps, 50 tau; median n_eff 795 against 554
  (5th percentile 661 / 507), all converged; medians and 68% widths differ from that setting's by a
  median 0.05 of its half-width, the same as that setting rerun with another seed (Monte Carlo
  noise).
* ``n_coarse = 1024``, ``n_starts = 3``: the coarse set costs one emulator call per model
  (cached); the cross-correlation over all of it ~5 ms per star.
* ``device = None``, ``batch_size = None`` (batched sampler only): CUDA when available, else the
  CPU; the pool size from the free memory. A star's numbers do not depend on either.
* ``cheb_degree = 4``, ``mask_sky = True``, ``arm_split_aa = "auto"`` (one continuum polynomial per
  LAMOST arm, split at 5900 A, taken from the ingested cube): on the 49 LAMOST DR1 stars with LASP
  S/N_g > 30 they bring the scatter against LASP from 229 K / 0.44 / 0.115 dex (degree 2, one
  polynomial, no sky mask) to 183 K / 0.33 / 0.118 with the MILES hold-out unchanged (124 K / 0.27 /
  0.148 against 124 / 0.28 / 0.137); ``benchmarks/results/lamost_labels.json`` and
  ``miles_holdout.json``. With one polynomial per arm, each arm's normal equations use its own pixels
  only, so the cost is that of one polynomial.
* ``label_systematics = True``: the posterior describes the noise and the (diagonal) emulator
  error only; on real stars the emulator's label scale has its own error, which the training
  cross-validation measures per label (``model.json`` ``label_systematics``). It is added in
  quadrature to each side of the 68% interval (:func:`gsn_dask.fit.result.widen_intervals`);
  the medians and MAP do not change. Off: purely statistical intervals. ``extra_systematics``
  ({label: sigma}) adds a survey-measured floor on top (``gsn-dask validate`` reports the value
  that makes a reference catalogue's values fall inside the 68% intervals 68% of the time).
* ``label_prior = "auto"``: the model's Kiel-diagram prior p(log g | Teff) (models trained on MILES
  carry one; :mod:`gsn_dask.label_prior`) is applied to the reported labels after the systematics
  (:func:`gsn_dask.fit.result.report_labels`): LAMOST log g scatter against LASP 0.29 -> 0.20 dex,
  MILES hold-out 125 K / 0.268 -> 117 K / 0.228 (``readme_path.json``, ``miles_holdout.json``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import C_KMS, MIN_COARSE_SHIFTS, MIN_USED_PIXELS, coarse_shifts, log10_step, used_pixels

MOVES = ("laplace-de", "de", "stretch")
SAMPLERS = ("emcee", "batched", "map")
#: The label priors a fit can use besides the uniform training box (see ``FitConfig.label_prior``).
LABEL_PRIORS = ("auto", "kiel", "none")


class ConfigError(ValueError):
    """A fit setting that is invalid, or does not fit the model: a run-level error, raised before
    any star is fitted (the command line prints its one-line message and exits 1)."""


@dataclass
class FitConfig:
    """Settings of one fit run (all units in the field comments)."""

    # ---- sampler
    n_walkers: int = 32  # emcee walkers (>= 2 * (n_label + 1))
    n_burn: int = 20  # burn-in steps (discarded)
    n_steps: int = 40  # production steps (minimum)
    max_steps: int = 2000  # production is extended up to this while steps < tau_factor * tau
    thin: int = 1  # keep every `thin`-th production step for percentiles/draws
    n_draws: int = 0  # posterior draws kept per star in the results (`samples`); 0 = none
    moves: str = "laplace-de"  # "laplace-de" | "de" | "stretch" (see module docstring)
    tau_factor: float = 20.0  # converged if production steps >= tau_factor * tau_max
    # ---- nuisance model
    cheb_degree: int = 4  # degree of the multiplicative Chebyshev continuum correction (profiled; per arm)
    # vacuum A: one continuum polynomial per spectrograph arm; "auto" = the cube's attrs["arm_split_aa"]
    # (LAMOST ingest: 5900), one polynomial when the cube has none; None = one polynomial
    arm_split_aa: float | str | None = "auto"
    rv_bounds_kms: tuple[float, float] = (-600.0, 600.0)  # uniform rv prior, km/s
    mask_telluric: bool = True  # give telluric bands zero weight
    mask_sky: bool = True  # give night-sky emission lines ([O I], Na D, OH; grid.prepare.SKY_LINES_AA) zero weight
    mask_windows: list[tuple[float, float]] = field(default_factory=list)  # extra zero-weight windows, vacuum A (lo, hi)
    # ---- priors: {label: (mu, sigma)} Gaussian, on top of the uniform training-range prior
    priors: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the model's Kiel-diagram prior on (Teff, log g) (gsn_dask.label_prior): "auto" = use it when the
    # model has one, "kiel" = require it (a ConfigError for a model without), "none" = uniform
    label_prior: str = "auto"
    # ---- calibration: fold the model's per-label systematics (from its training CV) into p16/p84
    label_systematics: bool = True
    # {label: sigma} (label units) added in quadrature to the model's label systematics, e.g. what
    # `gsn-dask validate` reports that a survey's reference labels need (its "extra sigma" column)
    extra_systematics: dict[str, float] = field(default_factory=dict)
    # ---- MAP start
    n_coarse: int = 1024  # quasi-random (Sobol) label vectors of the coarse search
    n_starts: int = 3  # distinct coarse optima refined by the bounded optimiser
    map_n_starts: int = 1  # distinct starts refined by the `map` quick-look sampler (one: ~3x cheaper, same answer for >= 97% of LAMOST stars)
    # ---- data quality / flags
    min_good_pixels: int = 500  # fewer usable pixels -> FEW_PIXELS + NOT_FITTED
    chi2_poor: float = 3.0  # chi2_reduced at the MAP above this -> POOR_FIT
    snr_low: float = 10.0  # S/N per pixel below this -> LOW_SNR
    edge_fraction: float = 0.01  # PRIOR_EDGE / RV_EDGE if the median is this close (fraction of range)
    # ---- runtime
    blas_threads: int | None = 1  # BLAS threads while fitting (None = leave as is)
    # ---- batched sampler (sampler="batched"; the results do not depend on them)
    device: str | None = None  # torch device: "cpu", "cuda", "cuda:N"; None = CUDA if available
    batch_size: int | None = None  # stars sampled together; None = from the free memory

    def __post_init__(self) -> None:
        self.rv_bounds_kms = (float(self.rv_bounds_kms[0]), float(self.rv_bounds_kms[1]))
        self.priors = {str(k): (float(v[0]), float(v[1])) for k, v in dict(self.priors).items()}
        self.mask_windows = [(float(w[0]), float(w[1])) for w in (self.mask_windows or [])]
        self.extra_systematics = {str(k): float(v) for k, v in dict(self.extra_systematics or {}).items()}
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"FitConfig: {msg}")

        for name in ("n_walkers", "n_burn", "n_steps", "max_steps", "thin", "n_draws", "n_coarse", "n_starts", "map_n_starts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(f"{name} must be a non-negative int, got {v!r}")
        if self.n_walkers < 4:
            raise bad(f"n_walkers must be >= 4, got {self.n_walkers}")
        if self.n_steps < 10:
            raise bad(f"n_steps must be >= 10, got {self.n_steps}")
        if self.thin < 1 or self.n_starts < 1 or self.map_n_starts < 1 or self.n_coarse < 8:
            raise bad("thin, n_starts and map_n_starts must be >= 1 and n_coarse >= 8")
        if self.max_steps < self.n_steps:
            raise bad(f"max_steps={self.max_steps} must be >= n_steps={self.n_steps}")
        if self.thin > self.n_steps:
            raise bad(f"thin={self.thin} keeps no production step of n_steps={self.n_steps}; use thin <= n_steps")
        for name in ("tau_factor", "chi2_poor", "snr_low", "edge_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(f"{name} must be a finite number >= 0, got {v!r}")
        if not 0 <= self.edge_fraction < 0.5:
            raise bad(f"edge_fraction must be in [0, 0.5), got {self.edge_fraction}")
        if self.moves not in MOVES:
            raise bad(f"moves must be one of {MOVES}, got {self.moves!r}")
        if not (0 <= self.cheb_degree <= 10):
            raise bad(f"cheb_degree must be in 0..10, got {self.cheb_degree}")
        a = self.arm_split_aa
        if not (a is None or a == "auto" or (isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a))):
            raise bad(f"arm_split_aa must be a wavelength in Angstrom, \"auto\" or null, got {a!r}")
        lo, hi = self.rv_bounds_kms
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and -5000 <= lo and hi <= 5000):
            raise bad(f"rv_bounds_kms must be finite, lo < hi, within +-5000 km/s; got {self.rv_bounds_kms}")
        for k, (mu, sig) in self.priors.items():
            if not (math.isfinite(mu) and math.isfinite(sig) and sig > 0):
                raise bad(f"prior for {k!r} must be (mu, sigma) with finite mu and sigma > 0, got {(mu, sig)}")
        if self.label_prior not in LABEL_PRIORS:
            raise bad(f"label_prior must be one of {LABEL_PRIORS}, got {self.label_prior!r}")
        for lo, hi in self.mask_windows:
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise bad(f"mask_windows must be (lo, hi) vacuum Angstrom pairs with lo < hi, got {(lo, hi)}")
        if not isinstance(self.label_systematics, bool):
            raise bad(f"label_systematics must be true or false, got {self.label_systematics!r}")
        for k, v in self.extra_systematics.items():
            if not (math.isfinite(v) and v >= 0):
                raise bad(f"extra_systematics[{k!r}] must be a finite sigma >= 0, got {v!r}")
        if self.blas_threads is not None and self.blas_threads < 1:
            raise bad("blas_threads must be None or >= 1")
        if self.device is not None and not re.fullmatch(r"cpu|cuda(:[0-9]+)?", str(self.device)):
            raise bad(f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        bs = self.batch_size
        if bs is not None and (not isinstance(bs, int) or isinstance(bs, bool) or bs < 1):
            raise bad(f"batch_size must be None or an int >= 1, got {bs!r}")

    @property
    def split_aa(self) -> float | None:
        """The arm split the likelihood uses: a wavelength, or None ("auto" not resolved: one polynomial)."""
        return None if self.arm_split_aa in (None, "auto") else float(self.arm_split_aa)  # type: ignore[arg-type]

    def for_cube(self, cube_attrs: Mapping[str, Any]) -> FitConfig:
        """The config with ``arm_split_aa = "auto"`` replaced by the cube's ``attrs["arm_split_aa"]``
        (None when the cube records none); other configs unchanged."""
        if self.arm_split_aa != "auto":
            return self
        v = cube_attrs.get("arm_split_aa")
        try:
            v = float(v) if v is not None else None
        except (TypeError, ValueError):
            raise ConfigError(f"the cube's attrs['arm_split_aa'] = {v!r} is not a wavelength in Angstrom") from None
        return self.replace(arm_split_aa=v if v is not None and math.isfinite(v) else None)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["rv_bounds_kms"] = list(self.rv_bounds_kms)
        d["priors"] = {k: [mu, sig] for k, (mu, sig) in self.priors.items()}
        d["mask_windows"] = [list(w) for w in self.mask_windows]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str) -> FitConfig:
        """Inverse of :meth:`to_dict` (also accepts its JSON string). Unknown keys raise ValueError."""
        if isinstance(d, str):
            d = json.loads(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"FitConfig: unknown settings {unknown}; known: {sorted(names)}")
        kw = dict(d)
        if "rv_bounds_kms" in kw:
            kw["rv_bounds_kms"] = tuple(kw["rv_bounds_kms"])
        if "priors" in kw:
            kw["priors"] = {k: tuple(v) for k, v in (kw["priors"] or {}).items()}
        return cls(**kw)

    def replace(self, **changes: Any) -> FitConfig:
        """A copy with some settings changed (validated)."""
        return dataclasses.replace(self, **changes)


def check_config(config: FitConfig, model: Any, sampler: str = "emcee") -> None:
    """Raise :class:`ConfigError` (one line) if ``config`` cannot be used with ``model`` and
    ``sampler``: walkers for the model's dimensions, priors on labels the model lacks, rv bounds
    that leave too few pixels of the model grid, an unknown sampler, and for ``batched`` torch
    and the device. The runners call it once, before any star is fitted."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    config.validate()
    labels = list(model.label_names)
    ndim = len(labels) + 1
    if config.n_walkers < 2 * ndim:
        raise ConfigError(f"FitConfig: n_walkers={config.n_walkers} must be >= 2 * n_dim = {2 * ndim} "
                          f"for this model ({len(labels)} labels + rv)")
    for what, keys in (("priors", config.priors), ("extra_systematics", config.extra_systematics)):
        unknown = sorted(set(keys) - set(labels))
        if unknown:
            raise ConfigError(f"FitConfig: {what} for unknown labels {unknown}; the model's labels are {labels}")
    if config.label_prior == "kiel" and not (getattr(model, "meta", None) or {}).get("label_prior"):
        raise ConfigError(f"FitConfig: label_prior='kiel' but model {getattr(model, 'model_id', '?')} has no Kiel prior "
                          "(train it with this version, or use label_prior 'auto' or 'none')")
    _check_rv_bounds(config, np.asarray(model.wavelength, dtype=np.float64))
    if sampler == "batched":
        _check_torch(config)


def _check_rv_bounds(config: FitConfig, wave: np.ndarray) -> None:
    """The rv bounds must leave pixels to fit and span the coarse rv search (both samplers)."""
    rv = list(config.rv_bounds_kms)
    step = log10_step(wave)
    lo, hi = used_pixels(wave.size, step, config.rv_bounds_kms)
    if hi - lo < MIN_USED_PIXELS:
        raise ConfigError(f"FitConfig: rv_bounds_kms={rv} leave {max(hi - lo, 0)} pixels of the model's {wave.size} "
                          f"(at least {MIN_USED_PIXELS} needed); narrow the rv bounds")
    n_shift = coarse_shifts(wave.size, lo, hi, step, config.rv_bounds_kms).size
    if n_shift < MIN_COARSE_SHIFTS:
        pix_kms = C_KMS * (10.0**step - 1.0)
        raise ConfigError(f"FitConfig: rv_bounds_kms={rv} cover {n_shift} whole-pixel shifts of the model grid (a pixel "
                          f"is {pix_kms:.1f} km/s); the coarse rv search needs {MIN_COARSE_SHIFTS}: widen the rv bounds")


def _check_torch(config: FitConfig) -> None:
    """torch importable, and the requested CUDA device present."""
    try:
        import torch
    except ImportError as exc:
        raise ConfigError(f"sampler 'batched' needs torch ({exc}); install gsn-dask[torch] or use sampler 'emcee'") from exc
    if config.device is not None and config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"FitConfig: device={config.device!r} but torch sees no CUDA device; use device 'cpu'")


__all__ = ["ConfigError", "FitConfig", "LABEL_PRIORS", "MOVES", "SAMPLERS", "check_config"]
