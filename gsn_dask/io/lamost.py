"""Read LAMOST low-resolution (LRS) spectra and put them on the common log-lambda grid.

This module holds the public reader (:func:`read_lrs`), the per-star record and the star-id
rule; the work is split by concern: :mod:`.lamost_native` (FITS parsing of the layouts),
:mod:`.lamost_grid` (the target grid and resampling) and :mod:`.lamost_write` (a writer of
LAMOST-format files for tests and demos). Their public names are re-exported here.

Supported file layouts (plain, ``.gz`` or ``.bz2``; detected from the content, not the name):

* **image** (DR1-DR7 as published): a primary image of shape (rows, NPIX), float32. The row
  meaning is read from the header card ``EXTEN0`` (DR1: ``Flux Inverse Subcontinuum Andmask
  Ormask``; DR6/DR7: ``Flux, Inverse, Wavelength, Andmask, Ormask``). Without ``EXTEN0`` the
  LAMOST order (flux, ivar, -, andmask, ormask) is assumed for 5-row images. The wavelength
  comes from the header's log-linear solution ``log10 lambda_i = CRVAL1 + CD1_1 (i + 1 - CRPIX1)``
  (or ``COEFF0``/``COEFF1``); a ``Wavelength`` row is used only when the header has no solution.
* **bintable** (DR8+ LRS): an extension with columns ``FLUX``, ``IVAR``, ``WAVELENGTH`` (or
  ``LOGLAM`` = log10 lambda), ``ANDMASK``, ``ORMASK``: either one row of vector columns or one
  row per pixel. Header cards are looked up in the primary header first, then the extension's.

LAMOST medium-resolution (MRS) files (``COADD_B``/``COADD_R``/``B-*``/``R-*`` extensions, or a
pixel step much finer than LRS) are rejected with code ``"MRS"``. Plain float32 primary images
are parsed by a small card reader (:func:`_fast_primary_image`, ~20x less CPU than a full astropy
header parse; the tests check it gives the same result as astropy on every real file); anything
unusual goes through ``astropy.io.fits``. A header with ``VACUUM = F`` is converted to vacuum.

Reject codes (:class:`RejectedFile`): ``not found``, ``unreadable``, ``truncated``, ``not FITS``,
``not LAMOST LRS``, ``MRS``, ``no good pixels`` (every pixel masked), ``wrong coverage`` (less than
``min_coverage`` = 50% of the target grid inside the file's range), and in the ingest driver
``duplicate`` and ``error``.

Pixel rules: a pixel gets ``ivar = 0`` if its ``ANDMASK`` is non-zero, its flux or ivar is not
finite, its ivar is <= 0, or it lies outside the file's wavelength coverage. Flux keeps finite
values (also for masked pixels) and is 0 where not finite or not covered. ``ORMASK`` is ignored.
Flux is the raw (relative, flux-calibrated) LAMOST flux; the DR1 ``Subcontinuum`` row is not used.

Grid rule: when the file's grid coincides with the target grid (same log step and an integer
pixel offset, both within 1e-3 px over the whole spectrum) pixels are copied exactly (the
float32 values of the file); otherwise the spectrum is rebinned flux-conservingly
(:func:`resample_flux_conserving`) with ivar propagated.

Per-star metadata:

* ``star``: ``str(OBSID)`` where the header has an ``OBSID``; otherwise
  ``"<release>-<lmjd>-<planid>-<spid:02d>-<fiberid:03d>"`` built from the file name
  ``spec-<lmjd>-<planid>_sp<spid>-<fiberid>.fits[.gz]`` (header ``LMJD``, ``PLANID``, ``SPID``,
  ``FIBERID`` if the name does not follow that pattern), e.g. ``dr1-55862-B6212-06-003``.
  ``release`` is ``DATA_V`` lower-cased without "lamost" (``dr6``) or ``dr1`` when the header has
  no ``DATA_V`` (DR1 headers carry neither OBSID nor DATA_V). As a last resort the file stem.
* ``source``: the file name (no directory).
* ``ra``, ``dec`` (deg): ``RA``, ``DEC``.
* ``snr_g``/``snr_r``: ``SN_G``/``SN_R`` (DR1) or ``SNRG``/``SNRR`` (later); ``-9999`` -> NaN.
  The cube's ``snr`` is the g-band value. (DR1 ``SN_R = 99.00`` looks like a cap; kept as is.)
* ``rv_catalog`` (km/s): ``Z * c`` from the LAMOST pipeline redshift (for DR1 this equals the
  LASP catalogue ``rv`` to 0.01 km/s). ``HELIO_RV`` is *not* the star's velocity but the
  heliocentric correction the pipeline applied, so it is not used.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The reader is split by concern; every name below stays importable from gsn_dask.io.lamost.
from .lamost_grid import (  # noqa: F401 - re-exported
    GRID_MATCH_TOL_PX,
    TargetGrid,
    _air_to_vacuum,
    grid_offset,
    resample_flux_conserving,
    to_grid,
)
from .lamost_native import (  # noqa: F401 - re-exported
    C_KMS,
    REJECT_CODES,
    NativeSpectrum,
    RejectedFile,
    _fast_primary_image,
    _load_bytes,
    image_row_names,
    read_native,
)
from .lamost_write import LAYOUTS, write_lrs_file  # noqa: F401 - re-exported

#: Default minimum fraction of the target grid that a file's wavelength range must cover.
DEFAULT_MIN_COVERAGE = 0.5

_FILENAME_RE = re.compile(
    r"^spec-(?P<lmjd>\d+)-(?P<planid>.+)_sp(?P<spid>\d+)-(?P<fiberid>\d+)\.fits?(\.gz|\.bz2)?$", re.I
)


@dataclass(slots=True)
class LamostSpectrum:
    """One LRS spectrum on the target grid plus its per-star metadata."""

    star: str
    source: str  #: file name
    path: str
    flux: np.ndarray  #: (n_grid,) float32
    ivar: np.ndarray  #: (n_grid,) float32, 0 = bad / missing
    ra: float = math.nan
    dec: float = math.nan
    snr_g: float = math.nan
    snr_r: float = math.nan
    rv_catalog: float = math.nan  #: km/s, Z * c
    obsid: int = -1  #: -1 = none in the header
    lmjd: int = -1
    planid: str = ""
    spid: int = -1
    fiberid: int = -1
    release: str = ""
    layout: str = ""
    exact: bool = True  #: pixels copied (True) or resampled (False)
    n_good: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------ small helpers
def parse_lamost_filename(name: str) -> dict[str, Any] | None:
    """``spec-<lmjd>-<planid>_sp<spid>-<fiberid>.fits[.gz]`` -> dict(lmjd, planid, spid, fiberid),
    or None if the name does not follow the LAMOST LRS pattern."""
    m = _FILENAME_RE.match(Path(name).name)
    if not m:
        return None
    return {
        "lmjd": int(m["lmjd"]),
        "planid": m["planid"],
        "spid": int(m["spid"]),
        "fiberid": int(m["fiberid"]),
    }


def release_tag(data_v: str | None) -> str:
    """``'LAMOST DR6'`` -> ``'dr6'``; no DATA_V -> ``'dr1'`` (only DR1 headers lack it)."""
    if not data_v:
        return "dr1"
    tag = re.sub(r"(?i)lamost", "", str(data_v)).strip().lower()
    tag = re.sub(r"[^0-9a-z.]+", "", tag)
    return tag or "dr1"


def make_star_id(
    *,
    obsid: int,
    source: str,
    release: str,
    lmjd: int = -1,
    planid: str = "",
    spid: int = -1,
    fiberid: int = -1,
) -> str:
    """Star id rule (see module doc): OBSID, else ``<release>-<lmjd>-<planid>-<spid:02d>-<fiberid:03d>``
    from the file name (header values as fallback), else ``file-<stem>``."""
    if obsid >= 0:
        return str(obsid)
    parsed = parse_lamost_filename(source)
    if parsed is None and lmjd >= 0 and planid and spid >= 0 and fiberid >= 0:
        parsed = {"lmjd": lmjd, "planid": planid, "spid": spid, "fiberid": fiberid}
    if parsed is None:
        stem = re.sub(r"(\.fits?)?(\.gz|\.bz2)?$", "", Path(source).name, flags=re.I)
        return f"file-{stem}"
    return f"{release}-{parsed['lmjd']}-{parsed['planid']}-{parsed['spid']:02d}-{parsed['fiberid']:03d}"


# ------------------------------------------------------------------------ public reader
def read_lrs(
    path: str | Path,
    wavelength: np.ndarray | TargetGrid | None = None,
    *,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    fast: bool = True,
) -> LamostSpectrum:
    """Read one LAMOST LRS file and put it on ``wavelength`` (vacuum Angstrom, log-linear;
    default :func:`gsn_dask.cube.log_lambda_grid`). Raises :class:`RejectedFile` (code, reason)
    for files that cannot be ingested: unreadable, truncated, not FITS, not LAMOST LRS, MRS,
    no good pixels, wrong coverage (< ``min_coverage`` of the grid inside the file's range)."""
    if wavelength is None:
        from ..cube import log_lambda_grid

        wavelength = log_lambda_grid()
    grid = wavelength if isinstance(wavelength, TargetGrid) else TargetGrid.from_wavelength(wavelength)
    native = read_native(path, fast=fast)
    meta = native.header
    if meta["vacuum"] is False:  # explicit VACUUM = F: convert to vacuum
        native.log10_wave = np.log10(_air_to_vacuum(10.0**native.log10_wave))
        native.formula = None
    n_pix = native.log10_wave.size
    if n_pix >= 2:
        lw = native.log10_wave
        step = native.formula[1] if native.formula is not None else float(abs(lw[-1] - lw[0]) / (n_pix - 1))
        if 0 < step < 0.3 * grid.log10_step:
            raise RejectedFile(
                "MRS", f"log10 pixel step {step:.2g} is much finer than LRS ({grid.log10_step:.2g}): not an LRS spectrum"
            )
    if not np.any((native.andmask == 0) & np.isfinite(native.ivar) & (native.ivar > 0) & np.isfinite(native.flux)):
        raise RejectedFile("no good pixels", "every pixel has ivar <= 0, a non-finite value or a non-zero ANDMASK")
    flux, ivar, exact, coverage = to_grid(native, grid)
    if coverage < min_coverage:
        w = 10.0 ** native.log10_wave[[0, -1]]
        raise RejectedFile(
            "wrong coverage",
            f"file covers {w[0]:.1f}-{w[1]:.1f} A, only {coverage:.0%} of the target grid "
            f"{grid.wavelength[0]:.1f}-{grid.wavelength[-1]:.1f} A (minimum {min_coverage:.0%})",
        )
    n_good = int(np.count_nonzero(ivar))
    if n_good == 0:
        raise RejectedFile("no good pixels", "no good pixel inside the target grid")
    source = Path(str(path)).name
    release = release_tag(meta["data_v"])
    star = make_star_id(
        obsid=meta["obsid"],
        source=source,
        release=release,
        lmjd=meta["lmjd"],
        planid=meta["planid"],
        spid=meta["spid"],
        fiberid=meta["fiberid"],
    )
    return LamostSpectrum(
        star=star,
        source=source,
        path=str(path),
        flux=flux,
        ivar=ivar,
        ra=meta["ra"],
        dec=meta["dec"],
        snr_g=meta["snr_g"],
        snr_r=meta["snr_r"],
        rv_catalog=meta["rv_catalog"],
        obsid=meta["obsid"],
        lmjd=meta["lmjd"],
        planid=meta["planid"],
        spid=meta["spid"],
        fiberid=meta["fiberid"],
        release=meta["data_v"],
        layout=native.layout,
        exact=exact,
        n_good=n_good,
        extra={"class": meta["class"]},
    )
