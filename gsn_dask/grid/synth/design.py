"""The grid's labels: a scrambled Sobol sequence (fixed seed) over the label box, restricted to
physically sensible combinations, in sequence order (so the first N points of a longer design
are the same N points: a build can be extended without recomputing anything)."""
from __future__ import annotations

import math

import numpy as np

from .generator import LABELS

SEED = 18
#: label box (teff K, logg dex, feh dex, alpha_fe dex)
RANGES: dict[str, tuple[float, float]] = {
    "teff": (4000.0, 7000.0),
    "logg": (0.0, 5.0),
    "feh": (-2.5, 0.5),
    "alpha_fe": (-0.2, 0.6),
}
#: digits kept per label (the stored labels are exactly these rounded values)
DIGITS = {"teff": 1, "logg": 4, "feh": 4, "alpha_fe": 4}
SENSIBLE = "log g >= (Teff - 5000 K) / 1000 K: no hot, low-gravity supergiants (rare, and the Kurucz grid stops at log g 0.5 above 6000 K)"


def sensible(teff: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """True where (Teff K, log g dex) is kept (see :data:`SENSIBLE`)."""
    return np.asarray(logg) >= (np.asarray(teff) - 5000.0) / 1000.0


def design(n: int, seed: int = SEED) -> list[dict[str, float]]:
    """The first ``n`` sensible points of the scrambled Sobol sequence, as label dicts."""
    from scipy.stats import qmc

    if n <= 0:
        return []
    m = max(int(math.ceil(math.log2(n / 0.8))) + 1, 4)
    while True:
        u = qmc.Sobol(d=len(LABELS), scramble=True, seed=seed).random_base2(m)
        lo = np.array([RANGES[k][0] for k in LABELS])
        hi = np.array([RANGES[k][1] for k in LABELS])
        x = lo + (hi - lo) * u
        x = np.column_stack([np.round(x[:, i], DIGITS[k]) for i, k in enumerate(LABELS)])
        keep = x[sensible(x[:, 0], x[:, 1])]
        if keep.shape[0] >= n:
            return [dict(zip(LABELS, (float(v) for v in row))) for row in keep[:n]]
        m += 1
