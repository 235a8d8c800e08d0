"""Result flag bits (the results cube's ``flag`` variable); 0 means a good fit."""
from __future__ import annotations

import enum


class Flag(enum.IntFlag):
    """Bits of the int32 ``flag`` of a result row.

    NOT_FITTED      1   the star was not fitted; ``status`` says why (bad input, error)
    NOT_CONVERGED   2   chain shorter than ``tau_factor`` (default 20) autocorrelation times
    PRIOR_EDGE      4   posterior median within 1% of the label range of a prior edge
    POOR_FIT        8   reduced chi^2 at the MAP above the configured threshold
    LOW_SNR        16   median S/N below the configured threshold
    FEW_PIXELS     32   fewer good pixels than the configured minimum (not fitted)
    RV_EDGE        64   radial velocity at the edge of its allowed range
    ARM_MISSING   128   one spectrograph arm (continuum polynomial) had too few good pixels
                        (fit.posterior.MIN_ARM_PIXELS_PER_TERM per term) and was left out of the fit
    """

    NOT_FITTED = 1
    NOT_CONVERGED = 2
    PRIOR_EDGE = 4
    POOR_FIT = 8
    LOW_SNR = 16
    FEW_PIXELS = 32
    RV_EDGE = 64
    ARM_MISSING = 128


def describe(flag: int) -> list[str]:
    """Names of the bits set in ``flag``."""
    return [f.name for f in Flag if int(flag) & int(f)]
