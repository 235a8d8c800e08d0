r"""The posterior of a spectrum's labels under a GSN emulator (numpy only, no torch).

Notation: observed normalised flux :math:`f_i` with inverse variance :math:`\iota_i` on the
model's pixels :math:`i` (vacuum wavelength :math:`\lambda_i`, log-linear grid, log10 step
:math:`s`); parameters :math:`\theta = (\ell, v)`: labels :math:`\ell` and the heliocentric
radial velocity :math:`v` (km/s).

Model (observed frame)
    :math:`\mu_i(\ell, v, c) = P_c(\lambda_i)\; m\big(\ell;\ \lambda_i/(1+v/c_{light})\big)`

    * :math:`m(\ell; \cdot)` is the emulator spectrum ``model.predict(l)`` (rest frame), read at
      the rest wavelength by linear interpolation on the log grid: the rest position of pixel
      :math:`i` is :math:`i-\delta` with :math:`\delta = \log_{10}(1+v/c)/s` pixels, so with
      :math:`n=\lfloor\delta\rfloor`, :math:`\phi=\delta-n`:
      :math:`m_i^{(v)} = (1-\phi)\,m_{i-n} + \phi\, m_{i-n-1}` (LAMOST spectra are heliocentric;
      the *model* is shifted, the data are never resampled, so their noise stays independent).
    * :math:`P_c(\lambda) = \sum_{j=0}^{d} c_j T_j(x(\lambda))` is a multiplicative Chebyshev
      continuum correction (:math:`x\in[-1,1]` over the used pixels, degree ``cheb_degree``).
    * Pixels within :math:`\max|\delta|+1` of either end of the model grid are never used, so the
      pixel set is the same for every :math:`v` in the rv bounds (no jumps in the likelihood).

Likelihood
    :math:`\chi^2 = \sum_i w_i (f_i - \mu_i)^2`, :math:`w_i = 1/(1/\iota_i + \sigma_{emu,i}^2)`,
    :math:`w_i = 0` where :math:`\iota_i \le 0`, flux or ivar not finite, in telluric bands
    (``mask_telluric``) or at the edges; :math:`\ln L = -\chi^2/2` (the variance does not depend
    on :math:`\theta`, so its normalisation is a constant).

Continuum (profiled, costs no sampler dimension)
    :math:`\mu` is linear in :math:`c`, so for each :math:`(\ell, v)` the best :math:`c` solves the
    weighted normal equations :math:`G c = b` with
    :math:`G_{jk} = \sum_i w_i T_j T_k (m^{(v)}_i)^2`, :math:`b_j = \sum_i w_i T_j f_i m^{(v)}_i`,
    and :math:`\chi^2_{prof} = \sum_i w_i f_i^2 - b^\top c`. Both sums are one matrix product of
    the walkers' shifted spectra with fixed (pixel x basis) matrices, evaluated in float64
    (:math:`\sum w f^2` reaches ~1e7 at S/N 100; the emulator itself runs in float32).

Prior
    uniform inside the model's training bounds and ``rv_bounds_kms`` (outside: :math:`-\infty`, the
    emulator is never evaluated there, so it never extrapolates), times optional Gaussians
    :math:`\mathcal N(\mu_k, \sigma_k)` per label (``config.priors`` or per-star priors).

Cost per evaluation of N walkers: one ``predict`` (N x n_hidden x n_pix multiply-adds for the
linear last layer, dominant), a shift (2 axpys), and two (N x n_pix) @ (n_pix x k) products.
A precomputed quadratic form in the last hidden layer h (chi^2 = const - 2 g.h + h^T M h) is
exact only at a fixed rv: with the continuum profiled it needs (d+1)(d+2)/2 float64 n_hidden^2
matrices (~85 ms to build per star for 256 units x 3750 px) and is then ~2x cheaper per call than
the direct path, breaking even after ~150 calls; with rv free, the interpolation in rv triples the
matrices and makes it slower than the direct path. So the direct path is kept
(``benchmarks/fit.py`` measures both and checks they agree to ~1e-4 in chi^2).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.polynomial import chebyshev as _cheb

from ..grid.prepare import sky_mask, telluric_mask
from .config import FitConfig
from .geometry import C_KMS, MIN_USED_PIXELS, log10_step, rv_to_pixels, used_pixels


class EmulatorLike(Protocol):  # what the posterior needs from a GSN
    label_names: list[str]
    bounds: np.ndarray
    wavelength: np.ndarray
    emulator_error: np.ndarray

    def predict(self, labels: np.ndarray) -> np.ndarray: ...


def pixel_weights(model: EmulatorLike, flux: np.ndarray, ivar: np.ndarray,
                  config: FitConfig) -> tuple[np.ndarray, np.ndarray]:
    """(good (S, n_pix) bool, w (S, n_pix) float64) of spectra (S, n_pix) on the model grid: usable
    pixels (finite, ivar > 0, outside telluric bands, sky lines and ``mask_windows`` if masked) and the likelihood weights
    ``w = 1 / (1/ivar + emulator_error^2)`` (0 elsewhere)."""
    emu = np.asarray(model.emulator_error, dtype=np.float64).reshape(-1)
    good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    wave = np.asarray(model.wavelength, dtype=np.float64)
    if config.mask_telluric:
        good &= ~telluric_mask(wave)
    if config.mask_sky:
        good &= ~sky_mask(wave)
    for lo, hi in config.mask_windows:
        good &= ~((wave >= lo) & (wave <= hi))
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(good, 1.0 / (1.0 / np.where(good, ivar, 1.0) + emu**2), 0.0)
    return good, w


#: An arm (the pixels of one continuum polynomial) with fewer good pixels than this per continuum
#: term is left out of the fit: its pixels get zero weight and its terms are fixed at 0, so the star
#: is fitted on its other arm (e.g. a LAMOST spectrum whose red arm is masked) and flagged ARM_MISSING.
MIN_ARM_PIXELS_PER_TERM = 10


def continuum_arms(wavelength: np.ndarray, degree: int, split_aa: float | None = None) -> list[tuple[np.ndarray, slice]]:
    """The arms of :func:`continuum_basis`: (pixel mask, column slice) per polynomial; two when
    ``split_aa`` (vacuum A) lies inside ``wavelength``, else one."""
    w = np.asarray(wavelength, dtype=np.float64)
    k = int(degree) + 1
    if split_aa is None or not (w[0] < split_aa < w[-1]):
        return [(np.ones(w.size, dtype=bool), slice(0, k))]
    red = w >= split_aa
    return [(~red, slice(0, k)), (red, slice(k, 2 * k))]


def continuum_basis(wavelength: np.ndarray, degree: int, split_aa: float | None = None) -> np.ndarray:
    """(n_pix, n_cont) basis of the multiplicative continuum correction: Chebyshev polynomials of
    ``degree`` in x in [-1, 1] over ``wavelength``; with ``split_aa`` (vacuum A) inside the range,
    one such polynomial per side (the LAMOST blue and red arms are flux-calibrated separately)."""
    w = np.asarray(wavelength, dtype=np.float64)
    arms = continuum_arms(w, degree, split_aa)
    out = np.zeros((w.size, len(arms) * (int(degree) + 1)))
    for pix, cols in arms:
        part = w[pix]
        x = 2.0 * (part - part[0]) / (part[-1] - part[0]) - 1.0 if part.size > 1 else np.zeros(part.size)
        out[pix, cols] = _cheb.chebvander(x, degree)
    return out


def drop_starved_arms(good: np.ndarray, w: np.ndarray,
                      arms: Sequence[tuple[np.ndarray, slice]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave out the arms with fewer than :data:`MIN_ARM_PIXELS_PER_TERM` good pixels per continuum
    term: (good, w, dead) for ``good``/``w`` (..., n_used) on the used pixels, with the starved arms'
    pixels no longer good and of zero weight, and ``dead`` (..., n_cont) bool: the terms fixed at 0."""
    good, w = np.asarray(good, dtype=bool), np.asarray(w, dtype=np.float64)
    n_cont = max(cols.stop for _, cols in arms)
    dead = np.zeros(good.shape[:-1] + (n_cont,), dtype=bool)
    for pix, cols in arms:
        starved = good[..., pix].sum(axis=-1) < MIN_ARM_PIXELS_PER_TERM * (cols.stop - cols.start)
        if np.any(starved):
            kill = np.asarray(starved)[..., None] & pix
            good, w = good & ~kill, np.where(kill, 0.0, w)
            dead[..., cols] = np.asarray(starved)[..., None]
    return good, w, dead


def fit_dof(n_good: np.ndarray | int, ndim: int, dead_terms: np.ndarray) -> np.ndarray:
    """Degrees of freedom of chi2 at the MAP (at least 1): good pixels - labels - rv - the live
    continuum terms (``dead_terms`` (..., n_cont): those of a left-out arm do not count)."""
    live = np.asarray(dead_terms).shape[-1] - np.asarray(dead_terms).sum(axis=-1)
    return np.maximum(np.asarray(n_good) - ndim - live, 1)


def merged_priors(
    label_names: list[str], config: FitConfig, priors: Mapping[str, tuple[float, float]] | None = None
) -> dict[str, tuple[float, float]]:
    """config.priors updated by ``priors`` (per-star); unknown label names raise ValueError."""
    out = dict(config.priors)
    if priors:
        out.update({str(k): (float(v[0]), float(v[1])) for k, v in priors.items()})
    unknown = sorted(set(out) - set(label_names))
    if unknown:
        raise ValueError(f"priors given for unknown labels {unknown}; the model's labels are {label_names}")
    for k, (mu, sig) in out.items():
        if not (np.isfinite(mu) and np.isfinite(sig) and sig > 0):
            raise ValueError(f"prior for {k!r} must have finite mu and sigma > 0, got {(mu, sig)}")
    return out


Blocks = list[tuple[int, int, np.ndarray, np.ndarray]]


def _column_blocks(mat: np.ndarray, support: np.ndarray) -> Blocks | None:
    """Columns of ``mat`` (n_pix, m) grouped by the pixel run ``[a, b)`` where ``support`` (same shape)
    is non-zero: ``[(a, b, columns, mat[a:b, columns])]``; all-zero columns are left out. None when
    every column spans every pixel (then one plain product is cheapest)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for j in range(mat.shape[1]):
        nz = np.flatnonzero(support[:, j])
        if nz.size:
            groups.setdefault((int(nz[0]), int(nz[-1]) + 1), []).append(j)
    if list(groups) == [(0, mat.shape[0])] and len(groups[(0, mat.shape[0])]) == mat.shape[1]:
        return None
    return [(a, b, np.array(cols), np.ascontiguousarray(mat[a:b, cols])) for (a, b), cols in groups.items()]


def _blocked_matmul(x: np.ndarray, mat: np.ndarray, blocks: Blocks | None) -> np.ndarray:
    """``x @ mat`` with ``mat``'s column blocks (:func:`_column_blocks`): only their pixel runs."""
    if blocks is None:
        return x @ mat
    out = np.zeros((x.shape[0], mat.shape[1]), dtype=np.result_type(x, mat))
    for a, b, cols, sub in blocks:
        out[:, cols] = x[:, a:b] @ sub
    return out


class SpectrumPosterior:
    """log p(labels, rv | spectrum) for one normalised spectrum on ``model.wavelength``.

    ``theta`` is (N, n_label + 1): the model's labels in ``model.label_names`` order, then rv in
    km/s. :meth:`log_prob` is vectorised over rows (emcee ``vectorize=True``). See the module
    docstring for the math.
    """

    def __init__(
        self,
        model: EmulatorLike,
        flux: np.ndarray,
        ivar: np.ndarray,
        config: FitConfig | None = None,
        *,
        priors: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.model = model
        self.config = config = config or FitConfig()
        wave = np.asarray(model.wavelength, dtype=np.float64)
        n_pix = wave.size
        flux = np.asarray(flux, dtype=np.float64).reshape(-1)
        ivar = np.asarray(ivar, dtype=np.float64).reshape(-1)
        if flux.shape != (n_pix,) or ivar.shape != (n_pix,):
            raise ValueError(f"flux/ivar must be on the model grid ({n_pix} px), got {flux.shape} / {ivar.shape}")
        self.label_names = list(model.label_names)
        self.n_label = len(self.label_names)
        self.ndim = self.n_label + 1
        self.param_names = [*self.label_names, "rv"]
        self.lower = np.r_[np.asarray(model.bounds, dtype=np.float64)[:, 0], config.rv_bounds_kms[0]]
        self.upper = np.r_[np.asarray(model.bounds, dtype=np.float64)[:, 1], config.rv_bounds_kms[1]]

        # ---- rv shift geometry: a fixed run of used pixels [lo, hi) for every rv in bounds
        self.step = log10_step(wave)
        self.lo, self.hi = used_pixels(n_pix, self.step, config.rv_bounds_kms)
        if self.hi - self.lo < MIN_USED_PIXELS:
            raise ValueError(f"the rv bounds leave fewer than {MIN_USED_PIXELS} usable pixels on the model grid")
        sl = slice(self.lo, self.hi)
        self.wavelength_used = wave[sl]

        # ---- weights and the continuum basis (an arm without enough good pixels is left out)
        good, w = pixel_weights(model, flux, ivar, config)
        self.T = continuum_basis(self.wavelength_used, int(config.cheb_degree), config.split_aa)
        self.arms = continuum_arms(self.wavelength_used, int(config.cheb_degree), config.split_aa)
        self.good, self.w, self.dead_terms = drop_starved_arms(good[sl], w[sl], self.arms)
        self.arm_missing = bool(self.dead_terms.any())
        self._dead_idx = np.flatnonzero(self.dead_terms)
        self.f = np.where(self.good, flux[sl], 0.0)
        self.n_used = self.hi - self.lo
        self.n_good = int(self.good.sum())
        self.snr_median = (
            float(np.median(np.abs(self.f[self.good]) * np.sqrt(ivar[sl][self.good]))) if self.n_good else float("nan")
        )

        # ---- the fixed matrices of the normal equations
        self.n_cont = self.T.shape[1]
        self._pairs = [(j, k) for j in range(self.n_cont) for k in range(j, self.n_cont)]
        self._wfT = np.ascontiguousarray((self.w * self.f)[:, None] * self.T)  # (n_used, d+1)
        self._wTT = np.ascontiguousarray(
            np.stack([self.w * self.T[:, j] * self.T[:, k] for j, k in self._pairs], axis=1)
        )  # (n_used, n_pairs)
        # with one polynomial per arm, a column is zero outside its arm: multiply only its pixels
        self._wfT_blocks = _column_blocks(self._wfT, self.T)
        self._wTT_blocks = _column_blocks(
            self._wTT, np.stack([self.T[:, j] * self.T[:, k] for j, k in self._pairs], axis=1))
        self._wff = float(np.sum(self.w * self.f**2))
        self._sqrt_w_good = np.sqrt(self.w[self.good])

        # ---- priors
        self.priors = merged_priors(self.label_names, config, priors)
        idx = [self.label_names.index(k) for k in self.priors]
        self._prior_idx = np.array(idx, dtype=int)
        self._prior_mu = np.array([self.priors[k][0] for k in self.priors], dtype=np.float64)
        self._prior_sig = np.array([self.priors[k][1] for k in self.priors], dtype=np.float64)
        self.n_eval = 0  # number of emulator spectra evaluated (rows)
        W_out, b_out = getattr(model, "W_out", None), getattr(model, "b_out", None)
        self._linear_out = (
            (W_out, b_out)
            if hasattr(model, "hidden") and isinstance(W_out, np.ndarray) and W_out.dtype == np.float32
            and isinstance(b_out, np.ndarray) and b_out.dtype == np.float32
            else None
        )

    # ------------------------------------------------------------------ pieces
    @property
    def dof(self) -> int:
        """Degrees of freedom of chi2 at the MAP: good pixels - labels - rv - continuum terms."""
        return int(fit_dof(self.n_good, self.ndim, self.dead_terms))

    def in_bounds(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(theta)
        return np.all(np.isfinite(theta) & (theta >= self.lower) & (theta <= self.upper), axis=1)

    def log_prior(self, theta: np.ndarray) -> np.ndarray:
        """(N,) log prior (up to a constant): -inf outside the bounds, Gaussian terms inside."""
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        lp = np.where(self.in_bounds(theta), 0.0, -np.inf)
        if self._prior_idx.size:
            z = (theta[:, self._prior_idx] - self._prior_mu) / self._prior_sig
            lp = lp - 0.5 * np.sum(z * z, axis=1)
        return lp

    def predict(self, labels: np.ndarray) -> np.ndarray:
        """Rest-frame emulator spectra (N, n_pix) float32 (one batched emulator call)."""
        labels = np.atleast_2d(labels)
        self.n_eval += labels.shape[0]
        if self._linear_out is not None:  # = model.predict, without a temporary for the bias
            W, b = self._linear_out
            out = self.model.hidden(labels) @ W
            out += b
            return out
        return np.asarray(self.model.predict(labels), dtype=np.float32)

    def shift(self, spectra: np.ndarray, rv: np.ndarray) -> np.ndarray:
        """Rest-frame spectra (N, n_pix) -> observed frame at velocities rv (N,) km/s on the used
        pixels (N, n_used) float32, linear interpolation on the log grid (module docstring)."""
        spectra = np.asarray(spectra, dtype=np.float32)
        nrow = spectra.shape[0]
        rv = np.asarray(rv, dtype=np.float64)
        if rv.shape != (nrow,):
            rv = np.broadcast_to(rv, (nrow,))
        delta = rv_to_pixels(rv, self.step)
        n = np.floor(delta).astype(np.int64)
        phi = (delta - n).astype(np.float32)[:, None]
        out = np.empty((nrow, self.n_used), dtype=np.float32)
        lo, hi = self.lo, self.hi
        for nk in np.unique(n):
            if nrow == 1 or n[0] == n[-1] and np.all(n == nk):
                a = spectra[:, lo - nk : hi - nk]
                np.subtract(spectra[:, lo - nk - 1 : hi - nk - 1], a, out=out)
                out *= phi
                out += a
                break
            rows = np.flatnonzero(n == nk)
            blk = spectra[rows, lo - nk - 1 : hi - nk]
            d = blk[:, :-1] - blk[:, 1:]
            d *= phi[rows]
            d += blk[:, 1:]
            out[rows] = d
        return out

    def _normal_equations(self, ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(G (N, k, k), b (N, k)) of the continuum least squares for shifted spectra ms (N, n_used),
        accumulated in float64."""
        ms = np.asarray(ms, dtype=np.float64)
        b = _blocked_matmul(ms, self._wfT, self._wfT_blocks)
        gp = _blocked_matmul(ms * ms, self._wTT, self._wTT_blocks)
        k = self.n_cont
        G = np.empty((ms.shape[0], k, k), dtype=np.float64)
        for p, (j, kk) in enumerate(self._pairs):
            G[:, j, kk] = gp[:, p]
            G[:, kk, j] = gp[:, p]
        if self._dead_idx.size:  # a left-out arm: its (all-zero) terms solve to 0
            G[:, self._dead_idx, self._dead_idx] = 1.0
        return G, b

    def chi2_of_spectra(self, spectra: np.ndarray, rv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Profiled chi2 (N,) and continuum coefficients (N, d+1) for rest-frame spectra (N, n_pix)
        at velocities rv (N,)."""
        ms = self.shift(spectra, rv)
        G, b = self._normal_equations(ms)
        try:
            c = np.linalg.solve(G, b[..., None])[..., 0]
        except np.linalg.LinAlgError:  # a degenerate model row (e.g. all zeros)
            c = np.stack([np.linalg.lstsq(g, bb, rcond=None)[0] for g, bb in zip(G, b)])
        chi2 = self._wff - np.einsum("nk,nk->n", b, c)
        return np.maximum(chi2, 0.0), c

    # ------------------------------------------------------------------ the posterior
    def chi2(self, theta: np.ndarray) -> np.ndarray:
        """Profiled chi2 (N,) at theta (N, ndim) (must be inside the bounds)."""
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        chi2, _ = self.chi2_of_spectra(self.predict(theta[:, : self.n_label]), theta[:, self.n_label])
        return chi2

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        """(N,) log posterior (up to a constant) for theta (N, ndim); -inf outside the bounds.
        One emulator call for all in-bounds rows."""
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        lp = self.log_prior(theta)
        ok = np.isfinite(lp)
        if ok.all():
            lp += -0.5 * self.chi2(theta)
        elif ok.any():
            lp[ok] += -0.5 * self.chi2(theta[ok])
        return lp

    __call__ = log_prob

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """Whitened residuals (N, n_good + n_prior): sqrt(w) (f - P m) on the good pixels, with the
        continuum profiled, then (theta_k - mu_k)/sigma_k for Gaussian priors.
        ``sum(r**2) = chi2 - 2 log prior`` (inside the bounds)."""
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        ms = self.shift(self.predict(theta[:, : self.n_label]), theta[:, self.n_label])
        G, b = self._normal_equations(ms)
        c = np.linalg.solve(G, b[..., None])[..., 0]
        mu = ms[:, self.good].astype(np.float64) * (c @ self.T[self.good].T)
        r = (self.f[self.good] - mu) * self._sqrt_w_good
        if self._prior_idx.size:
            rp = (theta[:, self._prior_idx] - self._prior_mu) / self._prior_sig
            r = np.concatenate([r, rp], axis=1)
        return r

    def chi2_reduced(self, theta: np.ndarray) -> float:
        """chi2 / dof at a single theta (ndim,), full variance (1/ivar + emulator_error^2)."""
        return float(self.chi2(np.asarray(theta, dtype=np.float64)[None, :])[0] / self.dof)

    def model_flux(self, theta: np.ndarray) -> np.ndarray:
        """Best-fit model (continuum x shifted emulator spectrum) on the full model grid for a
        single theta (ndim,); NaN on the unused edge pixels."""
        theta = np.asarray(theta, dtype=np.float64)[None, :]
        spec = self.predict(theta[:, : self.n_label])
        _, c = self.chi2_of_spectra(spec, theta[:, self.n_label])
        ms = self.shift(spec, theta[:, self.n_label])
        out = np.full(np.asarray(self.model.wavelength).size, np.nan)
        used = ms[0] * (self.T @ c[0])
        for pix, cols in self.arms:
            if self.dead_terms[cols].any():
                used[pix] = np.nan  # a left-out arm has no continuum
        out[self.lo : self.hi] = used
        return out

    def info(self) -> dict[str, Any]:
        return {
            "n_used": self.n_used,
            "n_good": self.n_good,
            "pixel_range": [self.lo, self.hi],
            "cheb_degree": self.n_cont - 1,
            "snr_median": self.snr_median,
        }


def star_posterior(model: EmulatorLike, flux: np.ndarray, ivar: np.ndarray, config: FitConfig, *, seed: int,
                   snr: float, priors: Mapping[str, tuple[float, float]] | None
                   ) -> tuple[SpectrumPosterior | None, Any, float]:
    """The per-star start every numpy strategy shares: ``(posterior, None, snr_used)`` for a
    spectrum that can be fitted, ``(None, not-fitted FitResult, snr)`` for one that cannot (bad
    input, fewer than ``min_good_pixels`` usable pixels). ``snr_used``: ``snr`` or, if NaN, the
    median |flux| sqrt(ivar) of the used pixels."""
    from .result import FitResult, few_pixels, input_problem

    flux = np.asarray(flux, dtype=np.float64).reshape(-1)
    ivar = np.asarray(ivar, dtype=np.float64).reshape(-1)
    problem = input_problem(flux, ivar, int(np.asarray(model.wavelength).size))
    if problem is not None:
        return None, FitResult.not_fitted(len(model.label_names), f"bad input: {problem}", snr=float(snr),
                                          seed=int(seed)), float(snr)
    post = SpectrumPosterior(model, flux, ivar, config, priors=priors)
    snr_used = float(snr) if np.isfinite(snr) else post.snr_median
    few = few_pixels(len(model.label_names), post.n_good, snr_used, config, seed=int(seed))
    return (None, few, snr_used) if few is not None else (post, None, snr_used)


__all__ = ["C_KMS", "MIN_ARM_PIXELS_PER_TERM", "EmulatorLike", "SpectrumPosterior", "continuum_arms", "continuum_basis",
           "drop_starved_arms", "fit_dof", "star_posterior", "log10_step", "merged_priors", "pixel_weights", "rv_to_pixels"]
