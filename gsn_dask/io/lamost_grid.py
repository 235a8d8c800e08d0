"""The log-linear target grid of the ingest and putting a native LAMOST spectrum on it: exact
pixel copy when the grids coincide, else flux-conserving rebinning (wavelengths in Angstrom)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lamost_native import NativeSpectrum

#: Tolerance (pixels) for "the file's grid coincides with the target grid".
GRID_MATCH_TOL_PX = 1e-3
#: Per-pixel scatter allowed when the file stores its wavelengths as float32 columns (pixels).
_WAVE_COLUMN_NOISE_PX = 0.02


# ------------------------------------------------------------------------ grids
@dataclass(frozen=True, slots=True)
class TargetGrid:
    """A log-linear target grid: ``log10 lambda_k = log10_start + k * log10_step``."""

    wavelength: np.ndarray
    log10_start: float
    log10_step: float

    @classmethod
    def from_wavelength(cls, wavelength: np.ndarray) -> "TargetGrid":
        from ..cube import grid_log10_step

        w = np.asarray(wavelength, dtype=np.float64)
        return cls(w, float(np.log10(w[0])), grid_log10_step(w))

    @property
    def size(self) -> int:
        return int(self.wavelength.size)


def grid_offset(native: NativeSpectrum, grid: TargetGrid) -> int | None:
    """Integer pixel offset k0 such that file pixel i sits on target pixel k0 + i, or None when
    the grids do not coincide (step differs, or offset not integer, by more than 1e-3 px
    accumulated over the spectrum)."""
    n = native.log10_wave.size
    if native.formula is not None:
        start, step = native.formula
        a = (start - grid.log10_start) / grid.log10_step
        b = step / grid.log10_step
        resid = 0.0
    else:
        p = (native.log10_wave - grid.log10_start) / grid.log10_step
        i = np.arange(n, dtype=np.float64)
        if n < 2:
            return None
        b, a = np.polyfit(i - i.mean(), p, 1)
        a = a - b * i.mean()
        resid = float(np.max(np.abs(p - (a + b * i))))
        if resid > _WAVE_COLUMN_NOISE_PX:
            return None
    if abs(b - 1.0) * max(n - 1, 1) > GRID_MATCH_TOL_PX or abs(a - round(a)) > GRID_MATCH_TOL_PX:
        return None
    return int(round(a))


def resample_flux_conserving(
    wave_in: np.ndarray,
    flux_in: np.ndarray,
    wave_out: np.ndarray,
    ivar_in: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rebin a 1-D flux density (per Angstrom) from pixel centres ``wave_in`` (any order) to
    ``wave_out`` (Angstrom), conserving the flux integral, with the ingest's rules: the
    flux-conserving rebinning of :func:`gsn_dask.grid.prepare.resample_flux_conserving`
    (``var_out = sum_i w_i^2 / ivar_i``), where output pixels not fully covered by the input, or
    touched by a bad input pixel (ivar <= 0 or non-finite), get ivar 0, and their flux is the
    weighted mean of the finite inputs, masked or not (0 where not covered at all).

    Returns float64 ``(flux_out, ivar_out)``; without ``ivar_in`` every input has ivar 1.
    """
    from ..grid.prepare import resample_flux_conserving as rebin

    wi = np.asarray(wave_in, dtype=np.float64)
    f = np.asarray(flux_in, dtype=np.float64)
    iv = np.ones_like(f) if ivar_in is None else np.asarray(ivar_in, dtype=np.float64)
    if wi.ndim != 1 or wi.size < 2 or f.shape != wi.shape or iv.shape != wi.shape:
        raise ValueError("wave_in, flux_in and ivar_in must be 1-D arrays of the same length (>= 2)")
    order = np.argsort(wi)
    return rebin(wi[order], f[order], wave_out, iv[order], fill=0.0, masked_flux=True, partial_flux=True,
                 via_log10=True)


def to_grid(native: NativeSpectrum, grid: TargetGrid) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """Put a native spectrum on the target grid. Returns ``(flux, ivar, exact, coverage)``:
    float32 arrays, whether pixels were copied exactly, and the fraction of target pixels inside
    the file's wavelength range. Bad pixels (see module doc) get ivar 0."""
    flux = native.flux
    ivar = native.ivar
    bad = (native.andmask != 0) | ~np.isfinite(ivar) | (ivar <= 0) | ~np.isfinite(flux)
    flux = np.where(np.isfinite(flux), flux, np.float32(0.0)).astype(np.float32, copy=False)
    ivar = np.where(bad, np.float32(0.0), ivar).astype(np.float32, copy=False)
    n_grid = grid.size
    k0 = grid_offset(native, grid)
    if k0 is not None:
        out_f = np.zeros(n_grid, dtype=np.float32)
        out_i = np.zeros(n_grid, dtype=np.float32)
        lo, hi = max(k0, 0), min(k0 + flux.size, n_grid)
        if hi > lo:
            out_f[lo:hi] = flux[lo - k0 : hi - k0]
            out_i[lo:hi] = ivar[lo - k0 : hi - k0]
        return out_f, out_i, True, max(hi - lo, 0) / n_grid
    lw = native.log10_wave
    lw_lo, lw_hi = float(np.min(lw)), float(np.max(lw))
    glw = grid.log10_start + grid.log10_step * np.arange(n_grid)
    coverage = float(np.mean((glw >= lw_lo) & (glw <= lw_hi)))
    if coverage == 0.0:
        return np.zeros(n_grid, np.float32), np.zeros(n_grid, np.float32), False, 0.0
    f_out, i_out = resample_flux_conserving(10.0**lw, flux, grid.wavelength, np.where(bad, 0.0, ivar))
    return f_out.astype(np.float32), i_out.astype(np.float32), False, coverage


def _air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Air -> vacuum (Angstrom), Piskunov's inversion of the Morton (2000) formula (VALD)."""
    s2 = (1e4 / wave_air) ** 2
    n = 1 + 0.00008336624212083 + 0.02408926869968 / (130.1065924522 - s2) + 0.0001599740894897 / (
        38.92568793293 - s2
    )
    return wave_air * n
