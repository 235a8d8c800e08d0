"""A small analytic GSN for tests and benchmarks (no training, no torch, a second or less).

:func:`toy_model` returns a real :class:`gsn_dask.emulator.GSN` whose hidden layers are fixed
random SiLU layers and whose linear output layer is fitted by ridge regression to analytic
normalised spectra: Gaussian absorption lines at the LAMOST resolution (R ~ 1800) whose depths
depend smoothly on (teff, logg, feh[, alpha_fe]), plus broad Balmer-like lines that deepen with
teff and widen with logg. The labels are well constrained, the posterior is smooth, and the
network has the real GSN's shapes (default 3 x 256 hidden units, ~3700 pixels).

Use it wherever a model is needed without a trained one (fit tests, runner tests, benchmarks).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..cube import log_lambda_grid

DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "teff": (4000.0, 7000.0),
    "logg": (1.0, 5.0),
    "feh": (-2.0, 0.5),
    "alpha_fe": (-0.2, 0.6),
}


def analytic_spectra(labels: np.ndarray, wavelength: np.ndarray, bounds: np.ndarray, *, seed: int = 7,
                     n_lines: int = 160, resolution: float = 1800.0) -> np.ndarray:
    """Analytic normalised spectra (N, n_pix) for physical labels (N, n_label)."""
    rng = np.random.default_rng(seed)
    labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    bounds = np.asarray(bounds, dtype=np.float64)
    x = (labels - bounds[:, 0]) / (bounds[:, 1] - bounds[:, 0]) - 0.5  # (N, L) in [-0.5, 0.5]
    n, L = x.shape
    w = np.asarray(wavelength, dtype=np.float64)
    centres = rng.uniform(w[0] + 20, w[-1] - 20, n_lines)
    sig = centres / resolution / 2.355
    base = rng.uniform(0.05, 0.5, n_lines)
    coef = rng.normal(0.0, 1.5, (n_lines, L))
    coef[:, 0] -= 1.5  # metal lines weaken with teff
    if L > 2:
        coef[:, 2] = np.abs(coef[:, 2]) + 1.0  # ... and strengthen with [Fe/H]
    depth = base * 1.0 / (1.0 + np.exp(-(x @ coef.T) * 2.0))  # (N, n_lines)
    out = np.ones((n, w.size))
    for k in range(n_lines):
        lo, hi = np.searchsorted(w, [centres[k] - 5 * sig[k], centres[k] + 5 * sig[k]])
        prof = np.exp(-0.5 * ((w[lo:hi] - centres[k]) / sig[k]) ** 2)
        out[:, lo:hi] -= depth[:, k : k + 1] * prof
    # Balmer-like broad lines: depth grows with teff, width with logg
    for c in (4102.9, 4341.7, 4862.7, 6564.6):
        if not (w[0] < c < w[-1]):
            continue
        depth_b = 0.25 + 0.35 * (x[:, 0:1] + 0.5)
        width = c / resolution / 2.355 * (2.0 + 3.0 * (x[:, 1:2] + 0.5))
        out -= depth_b * np.exp(-0.5 * ((w[None, :] - c) / width) ** 2)
    return np.clip(out, 0.02, None)


def toy_model(
    labels: Sequence[str] = ("teff", "logg", "feh"),
    *,
    hidden: Sequence[int] = (256, 256, 256),
    wavelength: np.ndarray | None = None,
    bounds: np.ndarray | None = None,
    n_train: int = 3000,
    emulator_error: float = 0.002,
    seed: int = 0,
    normalisation: dict | None = None,
):
    """A :class:`~gsn_dask.emulator.GSN` fitted (ridge, last layer only) to :func:`analytic_spectra`.

    Default grid: the LAMOST grid 3750-8900 A (3757 px). ``emulator_error`` (normalised flux
    units) is stored per pixel as a constant.
    """
    from ..emulator import GSN

    rng = np.random.default_rng(seed)
    labels = list(labels)
    wave = log_lambda_grid(3750.0, 8900.0) if wavelength is None else np.asarray(wavelength, dtype=np.float64)
    b = (
        np.array([DEFAULT_BOUNDS.get(n, (0.0, 1.0)) for n in labels], dtype=np.float64)
        if bounds is None
        else np.asarray(bounds, dtype=np.float64)
    )
    layers = []
    n_in = len(labels)
    for i, width in enumerate(hidden):
        scale = 4.0 if i == 0 else 1.6 / np.sqrt(n_in)
        W = rng.normal(0.0, scale, (n_in, width)).astype(np.float32)
        bias = rng.normal(0.0, 0.5 if i == 0 else 0.1, width).astype(np.float32)
        layers.append((W, bias))
        n_in = width
    # temporary model to compute hidden features, then ridge-fit the output layer
    dummy = GSN(
        hidden_layers=layers,
        W_out=np.zeros((n_in, wave.size), np.float32),
        b_out=np.zeros(wave.size, np.float32),
        activation="silu",
        label_names=labels,
        bounds=b,
        wavelength=wave,
    )
    lab = b[:, 0] + (b[:, 1] - b[:, 0]) * rng.random((n_train, len(labels)))
    H = dummy.hidden(lab).astype(np.float64)
    Y = analytic_spectra(lab, wave, b)
    hm, ym = H.mean(0), Y.mean(0)
    Hc = H - hm
    A = Hc.T @ Hc
    A[np.diag_indices_from(A)] += 1e-4 * np.trace(A) / A.shape[0]
    W_out = np.linalg.solve(A, Hc.T @ (Y - ym))
    b_out = ym - hm @ W_out
    return GSN(
        hidden_layers=layers,
        W_out=W_out.astype(np.float32),
        b_out=b_out.astype(np.float32),
        activation="silu",
        label_names=labels,
        bounds=b,
        wavelength=wave,
        emulator_error=np.full(wave.size, emulator_error, np.float32),
        normalisation=normalisation,
        meta={"provenance": {"source": "gsn_dask.fit.testing.toy_model", "seed": seed}},
    )


def noisy_spectrum(
    model,
    labels: np.ndarray,
    *,
    snr: float,
    rv: float = 0.0,
    rng: np.random.Generator,
    continuum: Sequence[float] | None = None,
    include_emulator_error: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """An observed spectrum (flux, ivar) on ``model.wavelength`` drawn from the emulator at
    ``labels`` shifted by ``rv`` km/s (linear interpolation on the log grid, the posterior's own
    model), times a Chebyshev ``continuum`` (coefficients over the full grid, default 1), with
    Gaussian noise of S/N ``snr`` per pixel (plus the emulator error, so the likelihood's variance
    1/ivar + emulator_error^2 is the true one)."""
    from numpy.polynomial import chebyshev

    from .geometry import log10_step, rv_to_pixels

    wave = np.asarray(model.wavelength, dtype=np.float64)
    spec = np.asarray(model.predict(np.atleast_2d(labels))[0], dtype=np.float64)
    pix = np.arange(wave.size) - rv_to_pixels(rv, log10_step(wave))
    flux = np.interp(pix, np.arange(wave.size), spec)
    level = np.ones_like(flux)
    if continuum is not None:
        x = 2 * (wave - wave[0]) / (wave[-1] - wave[0]) - 1
        level = chebyshev.chebval(x, np.asarray(continuum, dtype=np.float64))
        flux = flux * level
    sigma = np.abs(level) / snr  # S/N per pixel relative to the continuum
    ivar = 1.0 / sigma**2
    var = sigma**2 + (np.asarray(model.emulator_error, dtype=np.float64) ** 2 if include_emulator_error else 0.0)
    flux = flux + rng.normal(size=wave.size) * np.sqrt(var)
    return flux.astype(np.float32), ivar.astype(np.float32)





def reference_log_prob(model, flux, ivar, theta, *, config=None, pixel_range: tuple[int, int] | None = None,
                       priors=None) -> float:
    """The posterior of :class:`~gsn_dask.fit.posterior.SpectrumPosterior` written the plain way,
    for ONE parameter vector: one emulator call, ``np.interp`` for the Doppler shift, an explicit
    design matrix and ``np.linalg.lstsq`` for the continuum. Independent code used by the tests
    (both must agree) and as the benchmark's straightforward baseline.

    ``pixel_range`` = (lo, hi) of the used pixels (default: the posterior's rule)."""
    from numpy.polynomial import chebyshev

    from .config import FitConfig
    from ..grid.prepare import sky_mask, telluric_mask
    from .geometry import C_KMS

    cfg = config or FitConfig()
    theta = np.asarray(theta, dtype=np.float64)
    labels, rv = theta[:-1], theta[-1]
    b = np.asarray(model.bounds, dtype=np.float64)
    if np.any(labels < b[:, 0]) or np.any(labels > b[:, 1]) or not (cfg.rv_bounds_kms[0] <= rv <= cfg.rv_bounds_kms[1]):
        return -np.inf
    wave = np.asarray(model.wavelength, dtype=np.float64)
    if pixel_range is None:
        step = np.median(np.diff(np.log10(wave)))
        d_lo, d_hi = np.log10(1 + np.array(cfg.rv_bounds_kms) / C_KMS) / step
        pixel_range = (int(np.floor(d_hi) + 1), int(wave.size + np.floor(d_lo)))
    lo, hi = pixel_range
    spec = np.asarray(model.predict(labels[None, :])[0], dtype=np.float64)
    rest = wave[lo:hi] / (1.0 + rv / C_KMS)
    m = np.interp(np.log10(rest), np.log10(wave), spec)
    f = np.asarray(flux, dtype=np.float64)[lo:hi]
    iv = np.asarray(ivar, dtype=np.float64)[lo:hi]
    good = np.isfinite(f) & np.isfinite(iv) & (iv > 0)
    wl = wave[lo:hi]
    if cfg.mask_telluric:
        good &= ~telluric_mask(wl)
    if cfg.mask_sky:
        good &= ~sky_mask(wl)
    for a, z in cfg.mask_windows:
        good &= ~((wl >= a) & (wl <= z))
    emu = np.asarray(model.emulator_error, dtype=np.float64)[lo:hi]
    w = np.zeros_like(f)
    w[good] = 1.0 / (1.0 / iv[good] + emu[good] ** 2)
    split = cfg.split_aa
    arms = [np.ones(wl.size, bool)] if split is None or not wl[0] < split < wl[-1] else [wl < split, wl >= split]
    basis = []
    for arm in arms:  # one Chebyshev series per arm, x in [-1, 1] over the arm's pixels
        x = np.zeros(wl.size)
        x[arm] = 2 * (wl[arm] - wl[arm][0]) / (wl[arm][-1] - wl[arm][0]) - 1
        basis.append(chebyshev.chebvander(x, cfg.cheb_degree) * arm[:, None])
    A = m[:, None] * np.hstack(basis)
    sw = np.sqrt(w[good])
    coef = np.linalg.lstsq(A[good] * sw[:, None], f[good] * sw, rcond=None)[0]
    chi2 = float(np.sum(w[good] * (f[good] - A[good] @ coef) ** 2))
    lp = -0.5 * chi2
    allp = dict(cfg.priors)
    allp.update(priors or {})
    names = list(model.label_names)
    for k, (mu, sig) in allp.items():
        lp -= 0.5 * ((labels[names.index(k)] - mu) / sig) ** 2
    return lp

__all__ = ["DEFAULT_BOUNDS", "analytic_spectra", "noisy_spectrum", "reference_log_prob", "toy_model"]
