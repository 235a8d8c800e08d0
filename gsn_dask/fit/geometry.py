"""The rv-shift geometry of a log-linear wavelength grid (numpy only): the Doppler shift in
pixels, and the run of pixels ``[lo, hi)`` that every velocity inside the rv bounds keeps on
the model grid (the pixels the likelihood uses). Shared by the config check, both posteriors
and the MAP starts."""
from __future__ import annotations

import numpy as np

#: Speed of light, km/s.
C_KMS = 299792.458
#: Fewest used pixels a posterior accepts (the rv bounds must leave at least this many).
MIN_USED_PIXELS = 10
#: Fewest integer pixel shifts the coarse rv search accepts (a best shift and two neighbours).
MIN_COARSE_SHIFTS = 3


def log10_step(wavelength: np.ndarray) -> float:
    """Median log10 pixel step of a log-linear grid."""
    return float(np.median(np.diff(np.log10(np.asarray(wavelength, dtype=np.float64)))))


def rv_to_pixels(rv_kms: np.ndarray | float, step: float) -> np.ndarray:
    """Doppler shift in pixels of a log10 grid with step ``step``: log10(1 + v/c) / step."""
    return np.log10(1.0 + np.asarray(rv_kms, dtype=np.float64) / C_KMS) / step


def used_pixels(n_pix: int, step: float, rv_bounds_kms: tuple[float, float]) -> tuple[int, int]:
    """``(lo, hi)``: the model pixels whose shifted neighbours stay on the grid for every rv in
    ``rv_bounds_kms`` (km/s); ``hi - lo`` may be < :data:`MIN_USED_PIXELS` (callers check)."""
    d_lo, d_hi = rv_to_pixels(np.array(rv_bounds_kms, dtype=np.float64), step)
    lo = int(max(0, np.floor(d_hi) + 1))
    hi = int(min(n_pix, n_pix + np.floor(d_lo)))
    return lo, hi


def coarse_shifts(n_pix: int, lo: int, hi: int, step: float, rv_bounds_kms: tuple[float, float]) -> np.ndarray:
    """Integer pixel shifts of the coarse rv search (cross-correlation): those covering
    ``rv_bounds_kms`` plus one, that keep the used pixels ``[lo, hi)`` on the grid. The search
    needs at least :data:`MIN_COARSE_SHIFTS` (a best shift and its two neighbours)."""
    d_lo, d_hi = rv_to_pixels(np.array(rv_bounds_kms, dtype=np.float64), step)
    shifts = np.arange(int(np.floor(d_lo)), int(np.floor(d_hi)) + 2)
    return shifts[(lo - shifts >= 0) & (hi - shifts <= n_pix)]


__all__ = ["C_KMS", "MIN_COARSE_SHIFTS", "MIN_USED_PIXELS", "coarse_shifts", "log10_step", "rv_to_pixels",
           "used_pixels"]
