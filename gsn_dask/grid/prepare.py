"""Spectrum preparation shared by the training grids and the observed spectra.

numpy/scipy only (no torch, no dask). Wavelengths are in Angstrom, vacuum unless a
function says otherwise. Every function accepts one spectrum (``(n_pix,)``) or a stack
(``(n_star, n_pix)``) sharing one wavelength grid where that makes sense.

* :func:`air_to_vacuum` / :func:`vacuum_to_air` -- IAU standard (Morton 2000, ApJS 130, 403,
  eq. 3, with the Ciddor 1996 / Birch & Downs 1994 dispersion formula as used by VALD and SDSS).
* :func:`degrade_resolution` -- Gaussian line-spread function in ln(lambda) to a target R.
* :func:`resample_flux_conserving` -- rebinning onto a new grid with inverse-variance propagation.
* :func:`continuum_normalise` -- the pseudo-continuum recipe (:data:`DEFAULT_NORMALISATION`)
  applied identically to training spectra and observed spectra.
* :data:`TELLURIC_BANDS_AA` / :func:`telluric_mask`, :data:`SKY_LINES_AA` / :func:`sky_mask`.
"""
from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.fft
import scipy.sparse
import scipy.special

log = logging.getLogger(__name__)

#: FWHM = FWHM_PER_SIGMA * sigma for a Gaussian.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: Below this wavelength (A) no air/vacuum conversion is applied (the usual convention:
#: wavelengths below 2000 A are always quoted in vacuum).
AIR_VACUUM_MIN_AA = 2000.0

AIR_TO_VACUUM_FORMULA = (
    "IAU standard (Morton 2000, ApJS 130, 403): vac->air lambda_air = lambda_vac / n, "
    "n = 1 + 8.34254e-5 + 2.406147e-2/(130 - s^2) + 1.5998e-4/(38.9 - s^2), s = 1e4/lambda_vac [um^-1] "
    "(Ciddor 1996 / Birch & Downs 1994 dispersion); air->vac by the VALD inverse (N. Piskunov) "
    "refined by fixed-point iteration to round-trip < 1e-8 A; no conversion below 2000 A"
)


# ------------------------------------------------------------------ air <-> vacuum
def _refractive_index_vac(wave_vac_aa: np.ndarray) -> np.ndarray:
    """Refractive index of standard air at the *vacuum* wavelength (Morton 2000 eq. 3)."""
    s2 = (1e4 / wave_vac_aa) ** 2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def vacuum_to_air(wave_vac_aa: np.ndarray) -> np.ndarray:
    """Vacuum -> air wavelength (Angstrom), IAU standard (Morton 2000, eq. 3; see module doc).

    Wavelengths below 2000 A are returned unchanged.
    """
    w = np.asarray(wave_vac_aa, dtype=np.float64)
    out = w / _refractive_index_vac(np.maximum(w, AIR_VACUUM_MIN_AA))
    return np.where(w >= AIR_VACUUM_MIN_AA, out, w)


def air_to_vacuum(wave_air_aa: np.ndarray) -> np.ndarray:
    """Air -> vacuum wavelength (Angstrom), the exact inverse of :func:`vacuum_to_air`.

    Starts from the VALD air->vacuum formula (N. Piskunov, fitted to the Morton 2000 / Ciddor
    relation) and refines by fixed-point iteration ``vac = air * n(vac)`` so that
    ``vacuum_to_air(air_to_vacuum(x)) == x`` to < 1e-8 A. Below 2000 A unchanged.
    E.g. H-alpha 6562.80 (air) -> 6564.61 (vacuum).
    """
    w = np.asarray(wave_air_aa, dtype=np.float64)
    wa = np.maximum(w, AIR_VACUUM_MIN_AA)
    s2 = (1e4 / wa) ** 2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s2) + 1.599740894897e-4 / (
        38.92568793293 - s2
    )
    vac = wa * n
    for _ in range(3):
        vac = wa * _refractive_index_vac(vac)
    return np.where(w >= AIR_VACUUM_MIN_AA, vac, w)


# ------------------------------------------------------------------ resolution
def _source_sigma_ln(
    wave: np.ndarray, r_source: float | np.ndarray | None, fwhm_source_aa: float | np.ndarray | None
) -> np.ndarray:
    """Gaussian sigma of the source LSF in ln(lambda) at each wavelength (0 = infinitely sharp)."""
    if r_source is not None and fwhm_source_aa is not None:
        raise ValueError("give the source resolution as r_source OR fwhm_source_aa, not both")
    if r_source is not None:
        r = np.broadcast_to(np.asarray(r_source, dtype=np.float64), wave.shape)
        if np.any(r <= 0):
            raise ValueError("r_source must be positive")
        return 1.0 / (r * FWHM_PER_SIGMA)
    if fwhm_source_aa is not None:
        f = np.broadcast_to(np.asarray(fwhm_source_aa, dtype=np.float64), wave.shape)
        if np.any(f < 0):
            raise ValueError("fwhm_source_aa must be >= 0")
        return f / (wave * FWHM_PER_SIGMA)
    return np.zeros_like(wave)


def kernel_sigma_ln(
    wave: np.ndarray,
    *,
    r_target: float = 1800.0,
    r_source: float | np.ndarray | None = None,
    fwhm_source_aa: float | np.ndarray | None = None,
) -> np.ndarray:
    """Sigma (in ln lambda) of the Gaussian that takes the source LSF to ``R = r_target``:
    ``sqrt(sigma_target^2 - sigma_source^2)``, 0 where the source is already as broad or broader."""
    wave = np.asarray(wave, dtype=np.float64)
    if r_target <= 0:
        raise ValueError("r_target must be positive")
    sig_t = 1.0 / (r_target * FWHM_PER_SIGMA)
    sig_s = _source_sigma_ln(wave, r_source, fwhm_source_aa)
    return np.sqrt(np.clip(sig_t**2 - sig_s**2, 0.0, None))


def source_broader_mask(
    wave: np.ndarray,
    *,
    r_target: float = 1800.0,
    r_source: float | np.ndarray | None = None,
    fwhm_source_aa: float | np.ndarray | None = None,
) -> np.ndarray:
    """True where the source LSF is already as broad as or broader than ``R = r_target``
    (:func:`degrade_resolution` leaves those pixels unconvolved)."""
    wave = np.asarray(wave, dtype=np.float64)
    sig_t = 1.0 / (r_target * FWHM_PER_SIGMA)
    return _source_sigma_ln(wave, r_source, fwhm_source_aa) >= sig_t


def mask_ranges(wave: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """Contiguous runs of ``mask`` as ``[(wave_first, wave_last), ...]`` (Angstrom)."""
    wave = np.asarray(wave, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return []
    d = np.diff(np.concatenate([[0], m.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1
    return [(float(wave[a]), float(wave[b])) for a, b in zip(starts, stops)]


def _gauss_fft(f: np.ndarray, sigma_px: float) -> np.ndarray:
    """Convolve rows of ``f`` (last axis, uniform grid) with a Gaussian of ``sigma_px`` pixels,
    via its exact Fourier transfer function; edges padded with the edge values."""
    if sigma_px <= 0:
        return f.copy()
    n = f.shape[-1]
    pad = int(math.ceil(6 * sigma_px)) + 2
    padded = np.concatenate(
        [np.repeat(f[..., :1], pad, axis=-1), f, np.repeat(f[..., -1:], pad, axis=-1)], axis=-1
    )
    m = scipy.fft.next_fast_len(padded.shape[-1], real=True)
    freq = np.fft.rfftfreq(m)
    transfer = np.exp(-2.0 * (math.pi * sigma_px * freq) ** 2)
    out = scipy.fft.irfft(scipy.fft.rfft(padded, n=m, axis=-1) * transfer, n=m, axis=-1)
    return out[..., pad : pad + n]


@functools.lru_cache(maxsize=8)
def _variable_kernel(sigma_key: bytes) -> tuple[int, np.ndarray]:
    """Normalised pixel-integrated Gaussian weights (2*half+1, n) for per-pixel widths."""
    sigma_px = np.frombuffer(sigma_key, dtype=np.float64)
    s_eff = np.sqrt(np.clip(sigma_px**2 - 1.0 / 12.0, 1e-12, None))
    half = int(math.ceil(4.0 * float(np.max(sigma_px)))) + 1
    inv = 1.0 / (math.sqrt(2.0) * s_eff)
    cdf = 0.5 * scipy.special.erf(np.arange(-half - 0.5, half + 1.0, 1.0)[:, None] * inv[None, :])
    w = np.diff(cdf, axis=0)
    w /= w.sum(axis=0, keepdims=True)
    w.setflags(write=False)
    return half, w


def _gauss_direct_variable(f: np.ndarray, sigma_px: np.ndarray) -> np.ndarray:
    """Variable-width Gaussian convolution (gather form, width at the output pixel), with
    pixel-integrated weights (erf differences) corrected for the 1/12 px^2 pixel variance,
    so a width of 0 is the identity. Edges clamp to the edge values. The weights are cached
    per width array (a library on one grid reuses them)."""
    n = f.shape[-1]
    half, w = _variable_kernel(np.ascontiguousarray(sigma_px, dtype=np.float64).tobytes())
    padded = np.concatenate(
        [np.repeat(f[..., :1], half, axis=-1), f, np.repeat(f[..., -1:], half, axis=-1)], axis=-1
    )
    out = np.zeros(f.shape, dtype=np.float64)
    for k in range(2 * half + 1):
        out += w[k] * padded[..., k : k + n]
    return out


def _box_average(lnw: np.ndarray, flux: np.ndarray, u: np.ndarray, h: float) -> np.ndarray:
    """Mean of the piecewise-constant ``flux`` (pixels centred on ``lnw``) over bins of width
    ``h`` centred on ``u``, via the cumulative integral (exact, O(n))."""
    e_in = np.concatenate([[lnw[0] - 0.5 * (lnw[1] - lnw[0])], 0.5 * (lnw[1:] + lnw[:-1]), [lnw[-1] + 0.5 * (lnw[-1] - lnw[-2])]])
    cum = np.concatenate([np.zeros(flux.shape[:-1] + (1,)), np.cumsum(flux * np.diff(e_in), axis=-1)], axis=-1)
    e_u = np.clip(np.concatenate([u - 0.5 * h, [u[-1] + 0.5 * h]]), e_in[0], e_in[-1])
    j = np.clip(np.searchsorted(e_in, e_u, side="right") - 1, 0, e_in.size - 2)
    t = (e_u - e_in[j]) / (e_in[j + 1] - e_in[j])
    c_u = cum[..., j] * (1.0 - t) + cum[..., j + 1] * t
    width = np.diff(e_u)
    return np.diff(c_u, axis=-1) / np.where(width > 0, width, 1.0)


def degrade_resolution(
    wave: np.ndarray,
    flux: np.ndarray,
    *,
    r_target: float = 1800.0,
    r_source: float | np.ndarray | None = None,
    fwhm_source_aa: float | np.ndarray | None = None,
) -> np.ndarray:
    """Convolve ``flux`` to resolving power ``r_target`` with a Gaussian LSF in ln(lambda).

    ``wave`` (Angstrom, increasing, any sampling) is shared by ``flux`` of shape ``(n_pix,)``
    or ``(n_star, n_pix)``. The source LSF is given as a resolving power ``r_source`` or a
    FWHM in Angstrom ``fwhm_source_aa`` (scalars or per-pixel arrays); neither = infinitely
    sharp (a synthetic spectrum). The kernel at each wavelength has
    ``sigma^2 = sigma_target^2 - sigma_source^2`` (ln lambda). Where the source is already
    as broad or broader than the target the flux is returned unchanged (use
    :func:`source_broader_mask` / :func:`mask_ranges` to report where).

    Method: onto a uniform ln(lambda) work grid with step sigma_max/6 (a flux-conserving box
    average when the input is finer, whose h^2/12 variance is taken off the kernel; linear
    interpolation when it is coarser), Gaussian convolution there (exact FFT transfer function for a
    constant kernel; direct variable-width sum for narrow variable kernels; linear interpolation
    between a ladder of FFT convolutions otherwise), interpolation back. NaNs propagate.
    Returns an array of the shape of ``flux`` (float64).
    """
    wave = np.asarray(wave, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    if wave.ndim != 1 or flux.shape[-1] != wave.size:
        raise ValueError(f"flux last axis ({flux.shape}) must match wave ({wave.shape})")
    if wave.size < 3 or not np.all(np.diff(wave) > 0):
        raise ValueError("wave must be strictly increasing with at least 3 pixels")
    sig_k = kernel_sigma_ln(wave, r_target=r_target, r_source=r_source, fwhm_source_aa=fwhm_source_aa)
    if not np.any(sig_k > 0):
        return flux.copy()
    lnw = np.log(wave)
    span = lnw[-1] - lnw[0]
    h = max(float(sig_k.max()) / 6.0, span / 2**24)  # bound the work grid at 16 M points
    n_u = int(math.floor(span / h)) + 1
    u = lnw[0] + h * np.arange(n_u)
    if wave.size > n_u:
        # finer input: flux-conserving box average onto u (adds h^2/12 of variance, removed below)
        fu = _box_average(lnw, flux, u, h)
        box_var = h * h / 12.0
    else:
        dln = np.diff(lnw)
        j = np.clip(np.searchsorted(lnw, u, side="right") - 1, 0, wave.size - 2)
        t = (u - lnw[j]) / dln[j]
        fu = flux[..., j] * (1.0 - t) + flux[..., j + 1] * t
        box_var = 0.0
    sig_u = np.interp(u, lnw, sig_k)
    sig_u_px = np.sqrt(np.clip(sig_u**2 - box_var, 0.0, None)) / h
    smin, smax = float(sig_u_px.min()), float(sig_u_px.max())
    if smax - smin <= 0.005 * smax:
        conv = _gauss_fft(fu, 0.5 * (smin + smax))
    elif smax <= 12.0:
        conv = _gauss_direct_variable(fu, sig_u_px)
    else:
        n_lev = int(np.clip(math.ceil((smax - smin) / max(0.02 * smax, 0.25)) + 1, 2, 96))
        levels = np.linspace(smin, smax, n_lev)
        pos = np.clip((sig_u_px - smin) / (levels[1] - levels[0]), 0, n_lev - 1 - 1e-9)
        lo = np.floor(pos).astype(int)
        frac = pos - lo
        conv = np.zeros_like(fu)
        for k in range(n_lev):
            wk = np.where(lo == k, 1.0 - frac, 0.0) + np.where(lo == k - 1, frac, 0.0)
            if np.any(wk > 0):
                conv += wk * _gauss_fft(fu, levels[k])
    # back onto the input grid (the convolved spectrum is smooth on the scale h)
    jb = np.clip(np.searchsorted(u, lnw, side="right") - 1, 0, n_u - 2)
    tb = np.clip((lnw - u[jb]) / h, 0.0, 1.0)
    out = conv[..., jb] * (1.0 - tb) + conv[..., jb + 1] * tb
    return np.where(sig_k > 0, out, flux)


# ------------------------------------------------------------------ resampling
def pixel_edges(wave: np.ndarray, *, via_log10: bool = False) -> np.ndarray:
    """Pixel edges (n_pix + 1) for pixel centres ``wave``: geometric midpoints between
    centres (exact for log-linear grids), the outer edges mirrored. ``via_log10``: the same
    edges computed as ``10 ** midpoints of log10(wave)`` (other rounding; the LAMOST ingest's
    arithmetic, kept so that its output does not change)."""
    w = np.asarray(wave, dtype=np.float64)
    if w.ndim != 1 or w.size < 2 or not np.all(np.diff(w) > 0) or w[0] <= 0:
        raise ValueError("wavelength grid must be 1-D, positive and strictly increasing")
    if via_log10:
        x = np.log10(w)
        mid = 0.5 * (x[1:] + x[:-1])
        return 10.0 ** np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])
    mid = np.sqrt(w[1:] * w[:-1])
    return np.concatenate([[w[0] ** 2 / mid[0]], mid, [w[-1] ** 2 / mid[-1]]])


def rebin_matrix(
    wave_in: np.ndarray, wave_out: np.ndarray, *, via_log10: bool = False
) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """Sparse (n_out, n_in) matrix ``W`` with ``W[k, i]`` = overlap of input pixel i with output
    pixel k divided by the width of k, so ``W @ f`` is the flux-conserving rebinning of a
    piecewise-constant flux density; also the covered fraction of each output pixel.
    ``via_log10``: see :func:`pixel_edges`."""
    ein, eout = pixel_edges(wave_in, via_log10=via_log10), pixel_edges(wave_out, via_log10=via_log10)
    n_in, n_out = ein.size - 1, eout.size - 1
    lo, hi = max(ein[0], eout[0]), min(ein[-1], eout[-1])
    dout = np.diff(eout)
    if hi <= lo:
        return scipy.sparse.csr_matrix((n_out, n_in)), np.zeros(n_out)
    cuts = np.union1d(ein[(ein > lo) & (ein < hi)], eout[(eout > lo) & (eout < hi)])
    cuts = np.concatenate([[lo], cuts, [hi]])
    seg = np.diff(cuts)
    mid = 0.5 * (cuts[1:] + cuts[:-1])
    ii = np.searchsorted(ein, mid) - 1
    kk = np.searchsorted(eout, mid) - 1
    w = seg / dout[kk]
    mat = scipy.sparse.csr_matrix((w, (kk, ii)), shape=(n_out, n_in))
    covered = np.bincount(kk, weights=seg, minlength=n_out) / dout
    return mat, covered


def resample_flux_conserving(
    wave_in: np.ndarray,
    flux_in: np.ndarray,
    wave_out: np.ndarray,
    ivar_in: np.ndarray | None = None,
    *,
    fill: float = np.nan,
    masked_flux: bool = False,
    partial_flux: bool = False,
    via_log10: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Flux-conserving rebinning of ``flux_in`` (flux density, e.g. erg/s/cm2/A, per pixel
    centre ``wave_in``) onto pixel centres ``wave_out``; ``(n_pix,)`` or ``(n_star, n_pix)``.

    Each input pixel is a constant flux density over its bin (edges: :func:`pixel_edges`);
    each output pixel gets the mean density over its bin, so integrals of flux over whole
    pixels are conserved. Variances propagate as ``var_k = sum_i W_ki^2 / ivar_i``.
    Returns ``(flux_out, ivar_out)`` (float64). Output pixels not fully covered by the input
    get ``flux = fill`` (NaN) and ``ivar = 0``; output pixels touching a bad input pixel
    (ivar 0 or non-finite flux) get ``ivar = 0`` and the mean of the good inputs (``fill`` if
    none). Without ``ivar_in`` the returned ivar is 1 where fully covered and 0 elsewhere.

    Options (for observed spectra whose masked pixels keep a usable flux, e.g. LAMOST ingest):
    ``masked_flux=True``: the output flux is the mean of every *finite* input, whatever its
    ivar (ivar still marks output pixels touching a bad input with 0); ``partial_flux=True``:
    output pixels only partly covered by the input get the mean over the covered part (ivar 0)
    instead of ``fill``; ``fill`` stays for pixels with no (finite) input at all;
    ``via_log10``: pixel edges computed in log10 (see :func:`pixel_edges`).
    """
    wave_in = np.asarray(wave_in, dtype=np.float64)
    wave_out = np.asarray(wave_out, dtype=np.float64)
    flux_in = np.asarray(flux_in, dtype=np.float64)
    if flux_in.shape[-1] != wave_in.size:
        raise ValueError(f"flux_in last axis ({flux_in.shape}) must match wave_in ({wave_in.shape})")
    one_d = flux_in.ndim == 1
    f2 = np.atleast_2d(flux_in)
    if ivar_in is None:
        good = np.isfinite(f2)
        iv2 = None
    else:
        iv2 = np.broadcast_to(np.atleast_2d(np.asarray(ivar_in, dtype=np.float64)), f2.shape)
        good = np.isfinite(f2) & (iv2 > 0) & np.isfinite(iv2)
    if iv2 is None and bool(good.all()) and not partial_flux:
        # fast path (no ivar, no bad pixels): exact cumulative-integral rebinning, O(n)
        ein, eout = pixel_edges(wave_in, via_log10=via_log10), pixel_edges(wave_out, via_log10=via_log10)
        full = (eout[:-1] >= ein[0] - 1e-9 * ein[0]) & (eout[1:] <= ein[-1] + 1e-9 * ein[-1])
        cum = np.concatenate([np.zeros((f2.shape[0], 1)), np.cumsum(f2 * np.diff(ein), axis=-1)], axis=-1)
        e = np.clip(eout, ein[0], ein[-1])
        j = np.clip(np.searchsorted(ein, e, side="right") - 1, 0, ein.size - 2)
        t = (e - ein[j]) / (ein[j + 1] - ein[j])
        c_out = cum[..., j] * (1.0 - t) + cum[..., j + 1] * t
        flux_out = np.diff(c_out, axis=-1) / np.diff(eout)
        ivar_out = np.broadcast_to(full.astype(np.float64), flux_out.shape).copy()
        flux_out = np.where(full[None, :], flux_out, fill)
        return (flux_out[0], ivar_out[0]) if one_d else (flux_out, ivar_out)
    mat, covered = rebin_matrix(wave_in, wave_out, via_log10=via_log10)
    full = covered >= 1.0 - 1e-9
    wsum_good = (mat @ good.T.astype(np.float64)).T
    use = np.isfinite(f2) if masked_flux else good  # the inputs averaged into the output flux
    wsum_use = wsum_good if use is good else (mat @ use.T.astype(np.float64)).T
    num = (mat @ np.where(use, f2, 0.0).T).T
    with np.errstate(invalid="ignore", divide="ignore"):
        flux_out = np.where(wsum_use > 0, num / wsum_use, fill)
    all_good = full[None, :] & (wsum_good >= covered[None, :] - 1e-9)
    if iv2 is None:
        ivar_out = all_good.astype(np.float64)
    else:
        with np.errstate(divide="ignore"):
            var_in = np.where(good, 1.0 / np.where(good, iv2, 1.0), 0.0)
        var_out = (mat.multiply(mat) @ var_in.T).T
        with np.errstate(divide="ignore"):
            ivar_out = np.where(all_good & (var_out > 0), 1.0 / np.where(var_out > 0, var_out, 1.0), 0.0)
    if not partial_flux:
        flux_out = np.where(full[None, :], flux_out, fill)
    if one_d:
        return flux_out[0], ivar_out[0]
    return flux_out, ivar_out


# ------------------------------------------------------------------ tellurics
#: Telluric absorption bands (vacuum Angstrom): O2 B, H2O, O2 A, H2O 8130-8350, H2O 8950-9800.
TELLURIC_BANDS_AA: list[tuple[float, float]] = [
    (6865.0, 6935.0),
    (7150.0, 7350.0),
    (7590.0, 7700.0),
    (8130.0, 8350.0),
    (8950.0, 9800.0),
]


def telluric_mask(wavelength: np.ndarray, bands: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
    """Boolean array, True where ``wavelength`` (vacuum A) is inside a telluric band."""
    w = np.asarray(wavelength, dtype=np.float64)
    m = np.zeros(w.shape, dtype=bool)
    for lo, hi in TELLURIC_BANDS_AA if bands is None else bands:
        m |= (w >= lo) & (w <= hi)
    return m


#: Night-sky emission lines that leave residuals in survey spectra after sky subtraction
#: (vacuum Angstrom, +- half width): [O I] 5577, Na D (sky; interstellar Na D absorption sits on
#: it too), [O I] 6300 and 6364, and the brightest OH lines below 7400 A.
SKY_LINES_AA: list[tuple[float, float]] = [
    (5578.9, 4.0), (5891.6, 4.0), (5897.6, 4.0), (6302.0, 4.0), (6365.5, 4.0),
    (6865.0, 3.0), (6925.0, 3.0), (7246.0, 3.0), (7278.0, 3.0), (7318.0, 3.0), (7342.0, 3.0),
]


def sky_mask(wavelength: np.ndarray, lines: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
    """Boolean array, True within the half width of a sky line (vacuum A; :data:`SKY_LINES_AA`)."""
    w = np.asarray(wavelength, dtype=np.float64)
    m = np.zeros(w.shape, dtype=bool)
    for centre, half in SKY_LINES_AA if lines is None else lines:
        m |= np.abs(w - centre) <= half
    return m


# ------------------------------------------------------------------ continuum
#: The pseudo-continuum recipe (JSON-serialisable; stored with every training cube and model).
#: A cubic B-spline in ln(lambda) with knots at fixed multiples of ``knot_spacing_ln`` (so the
#: same knots fall on any wavelength range), fitted by inverse-variance-weighted least squares
#: with a weak second-difference penalty (P-spline, Eilers & Marx 1996; it bridges gaps),
#: iterated with asymmetric clipping of the relative residuals (IRAF ``continuum`` style:
#: points below ``-clip_low`` or above ``+clip_high`` times max(rms, pixel noise) are dropped).
#: Strong lines and telluric bands are never used for the fit. Weights are ivar / median(ivar)
#: capped at ``weight_cap`` so a few pixels with spuriously large ivar cannot dominate.
DEFAULT_NORMALISATION: dict[str, Any] = {
    "method": "pspline_asymmetric_clip",
    "version": 1,
    "knot_spacing_ln": 0.04,
    "degree": 3,
    "penalty": 0.01,
    "n_iter": 6,
    "clip_low": 1.5,
    "clip_high": 3.0,
    "weight_cap": 3.0,
    "min_good_pixels": 50,
    "mask_telluric": True,
    # (centre, half width) in vacuum Angstrom: Ca II K, H, H-delta, H-gamma, H-beta, Mg b, Na D, H-alpha
    "mask_lines_aa": [
        [3934.78, 12.0],
        [3969.59, 12.0],
        [4102.89, 15.0],
        [4341.69, 15.0],
        [4862.68, 15.0],
        [5176.0, 15.0],
        [5893.0, 8.0],
        [6564.61, 15.0],
    ],
}


def _recipe(recipe: Mapping[str, Any] | None) -> dict[str, Any]:
    r = dict(DEFAULT_NORMALISATION)
    if recipe:
        if recipe.get("method", r["method"]) != r["method"]:
            raise ValueError(
                f"unknown normalisation method {recipe.get('method')!r}; this version knows {r['method']!r}"
            )
        r.update(dict(recipe))
    return r


@functools.lru_cache(maxsize=16)
def _spline_design(wave_key: bytes, spacing: float, degree: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """B-spline design matrix (n_pix, n_basis) on ln(wave), knots at multiples of ``spacing``;
    the second-difference penalty D^T D; and the products of basis pairs on the band
    (``B[:, :n-d] * B[:, d:]`` for d = 0..degree; the Gram matrix is banded)."""
    wave = np.frombuffer(wave_key, dtype=np.float64)
    x = np.log(wave)
    k0 = math.floor(x[0] / spacing)
    k1 = math.ceil(x[-1] / spacing)
    if k1 <= k0:
        k1 = k0 + 1
    inner = spacing * np.arange(k0, k1 + 1)
    t = np.concatenate([inner[0] - spacing * np.arange(degree, 0, -1), inner, inner[-1] + spacing * np.arange(1, degree + 1)])
    n_basis = t.size - degree - 1
    # Cox-de Boor, vectorised over pixels
    span = np.clip(np.searchsorted(t, x, side="right") - 1, degree, n_basis - 1)
    bvals = np.zeros((x.size, degree + 1))
    bvals[:, 0] = 1.0
    left = np.zeros((x.size, degree + 1))
    right = np.zeros((x.size, degree + 1))
    for j in range(1, degree + 1):
        left[:, j] = x - t[span + 1 - j]
        right[:, j] = t[span + j] - x
        saved = np.zeros(x.size)
        for r in range(j):
            temp = bvals[:, r] / (right[:, r + 1] + left[:, j - r])
            bvals[:, r] = saved + right[:, r + 1] * temp
            saved = left[:, j - r] * temp
        bvals[:, j] = saved
    first = span - degree
    design = np.zeros((x.size, n_basis))
    rows = np.arange(x.size)
    for r in range(degree + 1):
        design[rows, first + r] = bvals[:, r]
    d2 = np.diff(np.eye(n_basis), n=2, axis=0)
    bands = [np.ascontiguousarray(design[:, : n_basis - d] * design[:, d:]) for d in range(degree + 1)]
    for arr in (design, *bands):
        arr.setflags(write=False)
    return design, d2.T @ d2, bands


def _fixed_fit_mask(wave: np.ndarray, rec: Mapping[str, Any]) -> np.ndarray:
    """True where a pixel may be used for the continuum fit (not a strong line / telluric)."""
    use = np.ones(wave.shape, dtype=bool)
    for centre, half in rec.get("mask_lines_aa", []):
        use &= np.abs(wave - centre) > half
    if rec.get("mask_telluric", True):
        use &= ~telluric_mask(wave)
    return use


@functools.lru_cache(maxsize=16)
def _fit_mask_cached(wave_key: bytes, lines_json: str, telluric: bool) -> np.ndarray:
    wave = np.frombuffer(wave_key, dtype=np.float64)
    m = _fixed_fit_mask(wave, {"mask_lines_aa": json.loads(lines_json), "mask_telluric": telluric})
    m.setflags(write=False)
    return m


def fit_continuum(
    wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, recipe: Mapping[str, Any] | None = None
) -> np.ndarray:
    """The pseudo-continuum of ``flux`` ((n_pix,) or (n_star, n_pix)) by the recipe
    (see :data:`DEFAULT_NORMALISATION`); NaN for a spectrum with too few good pixels."""
    rec = _recipe(recipe)
    wave = np.ascontiguousarray(wavelength, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64)
    one_d = f.ndim == 1
    f = np.atleast_2d(f)
    iv = np.broadcast_to(np.atleast_2d(np.asarray(ivar, dtype=np.float64)), f.shape)
    if f.shape[-1] != wave.size:
        raise ValueError(f"flux last axis ({f.shape}) must match wavelength ({wave.shape})")
    design, pen, band_cols = _spline_design(wave.tobytes(), float(rec["knot_spacing_ln"]), int(rec["degree"]))
    n_basis = design.shape[1]
    good = np.isfinite(f) & np.isfinite(iv) & (iv > 0)
    good &= _fit_mask_cached(wave.tobytes(), json.dumps(rec.get("mask_lines_aa", [])), bool(rec.get("mask_telluric", True)))[None, :]
    fz = np.where(good, f, 0.0)
    med = np.array([np.median(row[g]) if g.any() else 1.0 for row, g in zip(iv, good)])
    med = np.where(med > 0, med, 1.0)
    w0 = np.where(good, np.minimum(iv / med[:, None], float(rec["weight_cap"])), 0.0)
    sig_noise = np.where(good, 1.0 / np.sqrt(np.where(good, iv, 1.0)), np.inf)  # absolute noise
    lam = float(rec["penalty"]) * wave.size / n_basis
    ridge = lam * pen + 1e-9 * np.eye(n_basis)
    keep = good.copy()
    cont = np.full(f.shape, np.nan)
    n_rows = f.shape[0]
    idx = np.arange(n_basis)
    for it in range(int(rec["n_iter"]) + 1):
        w = np.where(keep, w0, 0.0)
        gram = np.zeros((n_rows, n_basis, n_basis))
        for d, cols in enumerate(band_cols):
            vals = w @ cols  # (n_rows, n_basis - d)
            gram[:, idx[: n_basis - d], idx[d:]] = vals
            if d:
                gram[:, idx[d:], idx[: n_basis - d]] = vals
        rhs = (w * fz) @ design
        gram += ridge[None]
        coef = np.linalg.solve(gram, rhs[..., None])[..., 0]
        cont = coef @ design.T
        if it == int(rec["n_iter"]):
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = (fz - cont) / np.abs(cont)
            rel_noise = sig_noise / np.abs(cont)
        nk = np.maximum(keep.sum(axis=1), 1)
        rms = np.sqrt(np.sum(np.where(keep, rel**2, 0.0), axis=1) / nk)
        scale = np.maximum(rms[:, None], rel_noise)
        new_keep = good & (rel > -float(rec["clip_low"]) * scale) & (rel < float(rec["clip_high"]) * scale)
        # never clip a spectrum down to fewer than min_good_pixels: keep the previous set then
        enough = new_keep.sum(axis=1) >= int(rec["min_good_pixels"])
        new_keep = np.where(enough[:, None], new_keep, keep)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    too_few = good.sum(axis=1) < int(rec["min_good_pixels"])
    cont[too_few] = np.nan
    return cont[0] if one_d else cont


def continuum_normalise(
    wavelength: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    recipe: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Divide by the pseudo-continuum (:func:`fit_continuum`, recipe :data:`DEFAULT_NORMALISATION`).

    ``wavelength`` vacuum A (n_pix,); ``flux``/``ivar`` (n_pix,) or (n_star, n_pix).
    Returns ``(flux / c, ivar * c**2)`` as float64. Pixels with ivar 0 are ignored in the fit
    and keep ivar 0; pixels where the continuum is not positive, spectra with fewer than
    ``min_good_pixels`` usable pixels, and non-finite fluxes get ivar 0 and flux 1.0 (the
    continuum level, so downstream chi^2 sums stay finite).

    The knots sit at fixed multiples of ``knot_spacing_ln`` in ln(lambda), but the edge
    splines depend on the range: normalise observed spectra on the same wavelength range
    as the training cube (cut first, then normalise).
    """
    f = np.asarray(flux, dtype=np.float64)
    iv = np.broadcast_to(np.asarray(ivar, dtype=np.float64), f.shape)
    out_f = np.empty(np.atleast_2d(f).shape)
    out_iv = np.empty_like(out_f)
    f2, iv2 = np.atleast_2d(f), np.atleast_2d(iv)
    block = 512
    for a in range(0, f2.shape[0], block):
        cont = fit_continuum(wavelength, f2[a : a + block], iv2[a : a + block], recipe)
        ok = np.isfinite(cont) & (cont > 0) & np.isfinite(f2[a : a + block])
        with np.errstate(invalid="ignore", divide="ignore"):
            out_f[a : a + block] = np.where(ok, f2[a : a + block] / np.where(ok, cont, 1.0), 1.0)
            iv_ok = ok & np.isfinite(iv2[a : a + block]) & (iv2[a : a + block] > 0)
            out_iv[a : a + block] = np.where(iv_ok, iv2[a : a + block] * np.where(ok, cont, 0.0) ** 2, 0.0)
    if f.ndim == 1:
        return out_f[0], out_iv[0]
    return out_f, out_iv
