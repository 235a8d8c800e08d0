"""Read LAMOST low-resolution (LRS) spectra and put them on the common log-lambda grid.

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

import bz2
import gzip
import io
import math
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

C_KMS = 299792.458  #: speed of light, km/s

#: Reject codes used in the rejects table (column ``code``).
REJECT_CODES = (
    "not found",
    "unreadable",
    "truncated",
    "not FITS",
    "not LAMOST LRS",
    "MRS",
    "no good pixels",
    "wrong coverage",
    "duplicate",
    "error",
)

#: Default minimum fraction of the target grid that a file's wavelength range must cover.
DEFAULT_MIN_COVERAGE = 0.5

#: Tolerance (pixels) for "the file's grid coincides with the target grid".
GRID_MATCH_TOL_PX = 1e-3
#: Per-pixel scatter allowed when the file stores its wavelengths as float32 columns (pixels).
_WAVE_COLUMN_NOISE_PX = 0.02

_FILENAME_RE = re.compile(
    r"^spec-(?P<lmjd>\d+)-(?P<planid>.+)_sp(?P<spid>\d+)-(?P<fiberid>\d+)\.fits?(\.gz|\.bz2)?$", re.I
)
_MRS_NAME_RE = re.compile(r"^(COADD_[BR]|[BR]-\d+)$", re.I)


class RejectedFile(Exception):
    """A file that cannot be ingested. ``code`` is one of :data:`REJECT_CODES`,
    ``reason`` a human-readable explanation."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class NativeSpectrum:
    """One LRS spectrum on the file's own pixels (before regridding)."""

    path: str
    layout: str  #: "image" or "bintable"
    log10_wave: np.ndarray  #: (n,) float64 log10(vacuum wavelength / Angstrom)
    flux: np.ndarray  #: (n,) float32
    ivar: np.ndarray  #: (n,) float32, as stored
    andmask: np.ndarray  #: (n,) int64
    ormask: np.ndarray  #: (n,) int64
    header: dict[str, Any]  #: selected header cards (see :func:`_header_meta`)
    #: (offset, step ratio) when the wavelengths follow an exact header formula, else None
    formula: tuple[float, float] | None = None


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


def _float(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    if not math.isfinite(v) or v <= -9990:  # LAMOST uses -9999 for unknown
        return math.nan
    return v


def _int(value: Any, default: int = -1) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


class _Cards:
    """Header look-up over several headers (first hit wins), case-insensitive names."""

    def __init__(self, *headers: fits.Header):
        self.headers = [h for h in headers if h is not None]

    def get(self, *names: str, default: Any = None) -> Any:
        for name in names:
            for h in self.headers:
                if name in h:
                    return h[name]
        return default

    def __contains__(self, name: str) -> bool:
        return any(name in h for h in self.headers)


def _header_meta(cards: _Cards) -> dict[str, Any]:
    """The per-star metadata cards (normalised across releases)."""
    obsid_raw = cards.get("OBSID")
    z = _float(cards.get("Z"))
    planid = cards.get("PLANID", default="")
    return {
        "obsid": _int(obsid_raw) if obsid_raw is not None else -1,
        "ra": _float(cards.get("RA")),
        "dec": _float(cards.get("DEC")),
        "snr_g": _float(cards.get("SNRG", "SN_G")),
        "snr_r": _float(cards.get("SNRR", "SN_R")),
        "rv_catalog": z * C_KMS if math.isfinite(z) else math.nan,
        "lmjd": _int(cards.get("LMJD")),
        "planid": str(planid).strip(),
        "spid": _int(cards.get("SPID")),
        "fiberid": _int(cards.get("FIBERID")),
        "data_v": str(cards.get("DATA_V", default="") or "").strip(),
        "vacuum": cards.get("VACUUM", default=True),
        "class": str(cards.get("CLASS", default="") or "").strip(),
    }


# ------------------------------------------------------------------------ raw bytes
def _load_bytes(path: str | Path) -> bytes:
    """Whole file, decompressed (gzip/bzip2 detected from the magic bytes)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise RejectedFile("not found", f"no such file: {p}") from None
    except OSError as exc:
        raise RejectedFile("unreadable", f"cannot read file: {exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise RejectedFile("truncated", "gzip stream ends early (truncated file)") from None
        except (OSError, zlib.error) as exc:
            raise RejectedFile("unreadable", f"corrupt gzip data: {exc}") from None
    elif raw[:3] == b"BZh":
        try:
            raw = bz2.decompress(raw)
        except EOFError:
            raise RejectedFile("truncated", "bzip2 stream ends early (truncated file)") from None
        except (OSError, ValueError) as exc:
            raise RejectedFile("unreadable", f"corrupt bzip2 data: {exc}") from None
    if not raw:
        raise RejectedFile("unreadable", "empty file")
    if not raw.startswith(b"SIMPLE  ="):
        raise RejectedFile("not FITS", "does not start with a FITS SIMPLE card")
    return raw


def _explain_broken(raw: bytes, exc: Exception) -> RejectedFile:
    """Classify an astropy failure: truncated (file shorter than its headers say, or a header
    without END) or unreadable. Walks the HDUs header by header."""
    pos = 0
    try:
        while pos < len(raw):
            end = -1
            for m in re.finditer(rb"END {77}", raw[pos:]):
                if m.start() % 80 == 0:
                    end = pos + m.start()
                    break
            if end < 0:
                return RejectedFile("truncated", f"FITS header at byte {pos} has no END card (truncated file)")
            hdr = fits.Header.fromstring(raw[pos : end + 80].decode("ascii", "replace"))
            naxis = int(hdr.get("NAXIS", 0))
            n = 0
            if naxis:
                n = 1
                for i in range(1, naxis + 1):
                    n *= int(hdr.get(f"NAXIS{i}", 0))
                n = abs(int(hdr.get("BITPIX", 8))) // 8 * int(hdr.get("GCOUNT", 1)) * (int(hdr.get("PCOUNT", 0)) + n)
            data_start = math.ceil((end + 80) / 2880) * 2880
            if len(raw) < data_start + n:
                return RejectedFile(
                    "truncated", f"file has {len(raw)} bytes, its HDU headers need at least {data_start + n}"
                )
            pos = data_start + math.ceil(n / 2880) * 2880
    except Exception:  # noqa: BLE001 - fall through to the generic reason
        pass
    return RejectedFile("unreadable", f"corrupt FITS file ({type(exc).__name__}: {exc})")


# ------------------------------------------------------------------------ layouts
_ROW_ALIASES = {
    "flux": "flux",
    "inverse": "ivar",
    "ivar": "ivar",
    "invvar": "ivar",
    "inverse_variance": "ivar",
    "wavelength": "wavelength",
    "loglam": "loglam",
    "andmask": "andmask",
    "ormask": "ormask",
    "subcontinuum": "subcontinuum",
}


def image_row_names(header: fits.Header, n_rows: int) -> dict[str, int]:
    """Row index of each quantity of an image-layout file, from ``EXTEN0`` (names separated by
    commas and/or blanks). Without ``EXTEN0`` a 5-row image gets the LAMOST order
    (flux, ivar, -, andmask, ormask)."""
    text = header.get("EXTEN0")
    if text:
        tokens = [t for t in re.split(r"[,\s]+", str(text).strip()) if t]
        rows: dict[str, int] = {}
        for i, tok in enumerate(tokens[:n_rows]):
            role = _ROW_ALIASES.get(tok.lower())
            if role and role not in rows:
                rows[role] = i
        return rows
    if n_rows == 5:
        return {"flux": 0, "ivar": 1, "andmask": 3, "ormask": 4}
    return {}


def _header_log10_solution(cards: _Cards, n: int) -> tuple[np.ndarray, float, float] | None:
    """(log10 lambda, log10 lambda of pixel 0, log10 step) from the header's log-linear solution."""
    c0 = cards.get("CRVAL1", "COEFF0")
    step = cards.get("CD1_1", "CDELT1", "COEFF1")
    if c0 is None or step is None:
        return None
    try:
        c0, step = float(c0), float(step)
        crpix = float(cards.get("CRPIX1", default=1.0)) if "CRVAL1" in cards else 1.0
    except (TypeError, ValueError):
        return None
    dcflag = _int(cards.get("DC-FLAG", default=1), 1)
    if not (math.isfinite(c0) and math.isfinite(step)) or step <= 0:
        return None
    start = c0 + step * (1.0 - crpix)
    idx = np.arange(n, dtype=np.float64)
    if dcflag == 1:  # log-linear
        return start + step * idx, start, step
    # linear wavelength solution (not used by LAMOST LRS, handled for completeness)
    wave = start + step * idx
    if np.any(wave <= 0):
        return None
    return np.log10(wave), math.nan, math.nan


# Cards the fast header parser keeps (everything the image reader and _header_meta use).
_FAST_KEYS = frozenset(
    k.encode()
    for k in (
        "SIMPLE BITPIX NAXIS NAXIS1 NAXIS2 BSCALE BZERO EXTEN0 CRVAL1 CD1_1 CDELT1 CRPIX1 COEFF0 COEFF1 "
        "DC-FLAG OBSID RA DEC SNRG SN_G SNRR SN_R Z LMJD PLANID SPID FIBERID DATA_V VACUUM CLASS"
    ).split()
)
_NOT_PARSED = object()


def _fits_value(v: bytes) -> Any:
    """Value of a FITS card (bytes after ``= ``): str, bool, int or float; ``_NOT_PARSED``
    for anything unusual (long-string CONTINUE, complex numbers, ...)."""
    v = v.strip()
    if v[:1] == b"'":
        parts, i = [], 1
        while True:
            j = v.find(b"'", i)
            if j < 0:
                return _NOT_PARSED
            if v[j + 1 : j + 2] == b"'":  # doubled quote inside the string
                parts.append(v[i : j + 1])
                i = j + 2
                continue
            parts.append(v[i:j])
            break
        text = b"".join(parts).decode("ascii", "replace").rstrip()
        return _NOT_PARSED if text.endswith("&") else text
    v = v.split(b"/", 1)[0].strip()
    if v == b"T":
        return True
    if v == b"F":
        return False
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v.replace(b"D", b"E"))
    except ValueError:
        return _NOT_PARSED


def _fast_primary_image(raw: bytes) -> tuple[dict[str, Any], np.ndarray] | None:
    """Fast path for the common case, a float32 2-D primary image (LAMOST LRS DR1-DR7): parse only
    the cards the reader uses and map the data with ``np.frombuffer`` (about 20x less CPU than a
    full astropy header parse). Returns ``(cards, data (NAXIS2, NAXIS1) big-endian float32)`` or
    None whenever anything is unusual (other BITPIX/NAXIS, scaling, odd card values, short file);
    the caller then uses astropy."""
    cards: dict[str, Any] = {}
    pos, size = 0, len(raw)
    while True:
        if pos + 80 > size:
            return None
        key = raw[pos : pos + 8].rstrip()
        if key == b"END":
            break
        if key in _FAST_KEYS and raw[pos + 8 : pos + 10] == b"= ":
            value = _fits_value(raw[pos + 10 : pos + 80])
            if value is _NOT_PARSED:
                return None
            cards[key.decode()] = value
        pos += 80
    if cards.get("SIMPLE") is not True or cards.get("BITPIX") != -32 or cards.get("NAXIS") != 2:
        return None
    if cards.get("BSCALE", 1) != 1 or cards.get("BZERO", 0) != 0:
        return None
    n1, n2 = cards.get("NAXIS1"), cards.get("NAXIS2")
    if not isinstance(n1, int) or not isinstance(n2, int) or n1 < 1 or n2 < 1:
        return None
    offset = (pos // 2880 + 1) * 2880
    if size < offset + 4 * n1 * n2:
        return None  # truncated: let the astropy path classify it
    data = np.frombuffer(raw, dtype=">f4", count=n1 * n2, offset=offset).reshape(n2, n1)
    return cards, data


def _read_image(path: str, hdul: fits.HDUList) -> NativeSpectrum:
    hdu = hdul[0]
    data = hdu.data
    h = hdu.header
    naxis = [h.get(f"NAXIS{i}", 0) for i in range(1, h.get("NAXIS", 0) + 1)]
    if data is None or data.ndim != 2 or data.shape != tuple(reversed(naxis)):
        raise RejectedFile("truncated", f"primary image shape {None if data is None else data.shape} != header {naxis[::-1]}")
    return _image_native(path, data, h)


def _image_native(path: str, data: np.ndarray, h: Any) -> NativeSpectrum:
    """Image layout from its data (rows, NPIX) and header (astropy Header or dict of cards)."""
    n_rows, n = data.shape
    rows = image_row_names(h, n_rows)
    if "flux" not in rows or "ivar" not in rows:
        raise RejectedFile(
            "not LAMOST LRS", f"primary image rows {h.get('EXTEN0')!r} do not name Flux and Inverse (ivar) rows"
        )
    cards = _Cards(h)
    sol = _header_log10_solution(cards, n)
    formula = None
    if sol is not None:
        log10_wave, start, step = sol
        if math.isfinite(start):
            formula = (start, step)
    elif "wavelength" in rows:
        w = data[rows["wavelength"]].astype(np.float64)
        if not np.all(np.isfinite(w) & (w > 0)):
            raise RejectedFile("not LAMOST LRS", "wavelength row has non-positive values")
        log10_wave = np.log10(w)
    elif "loglam" in rows:
        log10_wave = data[rows["loglam"]].astype(np.float64)
    else:
        raise RejectedFile("not LAMOST LRS", "no wavelength solution (CRVAL1/CD1_1 or COEFF0/COEFF1) in the header")
    zeros = np.zeros(n, dtype=np.int64)

    def mask(name: str) -> np.ndarray:
        if name not in rows:
            return zeros
        m = data[rows[name]]
        return np.where(np.isfinite(m), m, 1).astype(np.int64)

    return NativeSpectrum(
        path=path,
        layout="image",
        log10_wave=log10_wave,
        flux=np.asarray(data[rows["flux"]], dtype=np.float32),
        ivar=np.asarray(data[rows["ivar"]], dtype=np.float32),
        andmask=mask("andmask"),
        ormask=mask("ormask"),
        header=_header_meta(cards),
        formula=formula,
    )


def _column(table: fits.FITS_rec, names: dict[str, str], *candidates: str) -> np.ndarray | None:
    """First existing column of ``candidates`` as a 1-D array: one row of vector columns
    (DR8+ LRS) or one row per pixel."""
    for c in candidates:
        if c in names:
            col = np.asarray(table[names[c]])
            return col[0] if col.ndim == 2 and col.shape[0] == 1 else col
    return None


def _read_bintable(path: str, hdul: fits.HDUList) -> NativeSpectrum:
    for hdu in hdul[1:]:
        if not isinstance(hdu, fits.BinTableHDU):
            continue
        names = {n.upper(): n for n in hdu.columns.names}
        if "FLUX" not in names or "IVAR" not in names:
            continue
        table = hdu.data
        flux = _column(table, names, "FLUX")
        ivar = _column(table, names, "IVAR")
        if flux is None or ivar is None or flux.ndim != 1 or flux.shape != ivar.shape:
            raise RejectedFile("not LAMOST LRS", f"extension {hdu.name!r}: FLUX/IVAR columns are not 1-D spectra")
        n = flux.size
        cards = _Cards(hdul[0].header, hdu.header)
        wave = _column(table, names, "WAVELENGTH", "WAVE", "LAMBDA")
        loglam = _column(table, names, "LOGLAM")
        formula = None
        if wave is not None:
            w = np.asarray(wave, dtype=np.float64)
            if w.shape != (n,) or not np.all(np.isfinite(w) & (w > 0)):
                raise RejectedFile("not LAMOST LRS", "WAVELENGTH column is not a positive 1-D array matching FLUX")
            log10_wave = np.log10(w)
        elif loglam is not None:
            log10_wave = np.asarray(loglam, dtype=np.float64)
            if log10_wave.shape != (n,) or not np.all(np.isfinite(log10_wave)):
                raise RejectedFile("not LAMOST LRS", "LOGLAM column is not a finite 1-D array matching FLUX")
        else:
            sol = _header_log10_solution(cards, n)
            if sol is None:
                raise RejectedFile("not LAMOST LRS", f"extension {hdu.name!r} has no WAVELENGTH/LOGLAM column")
            log10_wave, start, step = sol
            formula = (start, step) if math.isfinite(start) else None
        zeros = np.zeros(n, dtype=np.int64)
        andmask = _column(table, names, "ANDMASK", "PIXMASK")
        ormask = _column(table, names, "ORMASK")
        return NativeSpectrum(
            path=path,
            layout="bintable",
            log10_wave=log10_wave,
            flux=np.asarray(flux, dtype=np.float32),
            ivar=np.asarray(ivar, dtype=np.float32),
            andmask=zeros if andmask is None else np.asarray(andmask).astype(np.int64).reshape(n),
            ormask=zeros if ormask is None else np.asarray(ormask).astype(np.int64).reshape(n),
            header=_header_meta(cards),
            formula=formula,
        )
    raise RejectedFile("not LAMOST LRS", "no 2-D primary image and no table extension with FLUX and IVAR columns")


def _mrs_reason(path: str, hdul: fits.HDUList) -> str | None:
    names = [str(h.name) for h in hdul[1:]]
    mrs = [n for n in names if _MRS_NAME_RE.match(n)]
    if mrs:
        return f"LAMOST MRS (medium-resolution) file, extensions {', '.join(mrs[:3])}{'...' if len(mrs) > 3 else ''}; only LRS is ingested"
    if Path(path).name.lower().startswith("med-"):
        return "LAMOST MRS (medium-resolution) file name (med-*); only LRS is ingested"
    return None


def read_native(path: str | Path, *, fast: bool = True) -> NativeSpectrum:
    """Read one LAMOST LRS file on its own pixels. Raises :class:`RejectedFile` with a code and a
    reason for anything that is not a readable LRS spectrum (never another exception type).
    ``fast``: use the minimal parser for plain float32 primary images (same result as astropy,
    checked by the tests); ``False`` always goes through ``astropy.io.fits``."""
    path = str(path)
    raw = _load_bytes(path)
    try:
        if fast:
            parsed = _fast_primary_image(raw)
            if parsed is not None:
                return _image_native(path, parsed[1], parsed[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=True) as hdul:
                if hdul[0].header.get("NAXIS", 0) == 2:
                    return _read_image(path, hdul)
                reason = _mrs_reason(path, hdul)
                if reason:
                    raise RejectedFile("MRS", reason)
                return _read_bintable(path, hdul)
    except RejectedFile:
        raise
    except Exception as exc:  # noqa: BLE001 - classify any astropy/numpy failure
        raise _explain_broken(raw, exc) from None


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


# ------------------------------------------------------------------------ writer (tests, demos)
#: Layouts understood by :func:`write_lrs_file`.
LAYOUTS = ("image-dr1", "image-dr6", "bintable", "bintable-rows")


def write_lrs_file(
    path: str | Path,
    flux: np.ndarray,
    ivar: np.ndarray,
    *,
    layout: str = "image-dr1",
    log10_start: float = 3.5682,
    log10_step: float = 1e-4,
    wavelength: np.ndarray | None = None,
    andmask: np.ndarray | None = None,
    ormask: np.ndarray | None = None,
    obsid: int | None = None,
    ra: float = 10.0,
    dec: float = 20.0,
    snr_g: float = 50.0,
    snr_r: float = 60.0,
    z: float = 0.0,
    lmjd: int = 55862,
    planid: str = "B6212",
    spid: int = 6,
    fiberid: int = 3,
    data_v: str | None = None,
    extra_cards: dict[str, Any] | None = None,
) -> Path:
    """Write a synthetic LAMOST LRS file in one of the published layouts (for tests and demos).

    * ``image-dr1``: primary image (5, n) ``Flux Inverse Subcontinuum Andmask Ormask``, no
      OBSID/DATA_V, ``SN_G``/``SN_R`` cards (DR1 pipeline v2.6).
    * ``image-dr6``: primary image ``Flux, Inverse, Wavelength, Andmask, Ormask`` (row 2 =
      wavelength), OBSID, DATA_V, ``SNRG``/``SNRR`` (pipeline v2.9).
    * ``bintable``: empty primary + extension ``COADD`` with one row of vector columns
      FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK, NORMALIZATION (DR8+).
    * ``bintable-rows``: extension ``COADD`` with one row per pixel and a LOGLAM column.

    The wavelength is ``10**(log10_start + i*log10_step)`` unless ``wavelength`` is given
    (then image layouts get a linear ``DC-FLAG = 0`` solution only if it is linear, so pass
    ``wavelength`` only with the bintable layouts). ``.gz`` in the name writes gzip.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    flux = np.asarray(flux, dtype=np.float32)
    ivar = np.asarray(ivar, dtype=np.float32)
    n = flux.size
    andmask = np.zeros(n, np.int32) if andmask is None else np.asarray(andmask, np.int32)
    ormask = andmask.copy() if ormask is None else np.asarray(ormask, np.int32)
    if wavelength is None:
        wave = 10.0 ** (log10_start + log10_step * np.arange(n))
    else:
        wave = np.asarray(wavelength, dtype=np.float64)
    dr1 = layout == "image-dr1"
    cards: list[tuple[str, Any]] = [("FILENAME", Path(path).name.removesuffix(".gz"))]
    if not dr1 and obsid is None:
        obsid = int(f"{lmjd % 1000}{spid:02d}{fiberid:03d}")
    if obsid is not None:
        cards.append(("OBSID", int(obsid)))
    if not dr1:
        cards.append(("DATA_V", data_v or "LAMOST DR6"))
    elif data_v:
        cards.append(("DATA_V", data_v))
    cards += [
        ("AUTHOR", "LAMOST Pipeline"),
        ("LMJD", lmjd), ("MJD", lmjd + 1), ("PLANID", planid), ("RA", ra), ("DEC", dec),
        ("DESIG", "LAMOST J000000.00+000000.0"), ("FIBERID", fiberid), ("SPID", spid),
        ("HELIO", True), ("HELIO_RV", -26.4), ("VACUUM", True),
        ("CLASS", "STAR"), ("SUBCLASS", "G2"), ("Z", z), ("Z_ERR", 1e-5),
        ("VERSPIPE", "v2.6.4" if dr1 else "v2.9.7"),
    ]
    snr_keys = ("SN_U", "SN_G", "SN_R", "SN_I", "SN_Z") if dr1 else ("SNRU", "SNRG", "SNRR", "SNRI", "SNRZ")
    cards += list(zip(snr_keys, (snr_g / 3.0, snr_g, snr_r, snr_r, snr_r / 1.5)))
    if layout.startswith("image") and wavelength is None:
        cards += [
            ("NWORDER", 2), ("WFITTYPE", "LOG-LINEAR"), ("COEFF0", log10_start), ("COEFF1", log10_step),
            ("CRVAL1", log10_start), ("CD1_1", log10_step), ("CRPIX1", 1), ("CTYPE1", "LINEAR"), ("DC-FLAG", 1),
        ]
    elif layout.startswith("image"):
        step = float(wave[1] - wave[0])
        if not np.allclose(np.diff(wave), step, rtol=1e-9, atol=0):
            raise ValueError("image layouts need a log-linear (log10_start/step) or linear wavelength")
        cards += [("CRVAL1", float(wave[0])), ("CD1_1", step), ("CRPIX1", 1), ("DC-FLAG", 0)]
    for key, value in (extra_cards or {}).items():
        cards.append((key, value))
    header = fits.Header()
    if layout.startswith("image"):
        rows = np.zeros((5, n), np.float32)
        rows[0], rows[1], rows[3], rows[4] = flux, ivar, andmask, ormask
        if dr1:
            med = np.nanmedian(flux[np.isfinite(flux)]) if np.any(np.isfinite(flux)) else 1.0
            rows[2] = flux / (med if med else 1.0)
            header["EXTEN0"] = "Flux Inverse Subcontinuum Andmask Ormask"
        else:
            rows[2] = wave.astype(np.float32)
            header["EXTEN0"] = "Flux, Inverse, Wavelength, Andmask, Ormask"
        for k, v in cards:
            header[k] = v
        hdul = fits.HDUList([fits.PrimaryHDU(rows, header=header)])
    else:
        for k, v in cards:
            header[k] = v
        if layout == "bintable":
            cols = [
                fits.Column("FLUX", f"{n}E", array=flux[None]),
                fits.Column("IVAR", f"{n}E", array=ivar[None]),
                fits.Column("WAVELENGTH", f"{n}E", array=wave.astype(np.float32)[None]),
                fits.Column("ANDMASK", f"{n}J", array=andmask[None]),
                fits.Column("ORMASK", f"{n}J", array=ormask[None]),
                fits.Column("NORMALIZATION", f"{n}E", array=np.ones((1, n), np.float32)),
            ]
        else:
            cols = [
                fits.Column("FLUX", "E", array=flux),
                fits.Column("IVAR", "E", array=ivar),
                fits.Column("LOGLAM", "D", array=np.log10(wave)),
                fits.Column("ANDMASK", "J", array=andmask),
                fits.Column("ORMASK", "J", array=ormask),
            ]
        table = fits.BinTableHDU.from_columns(cols, name="COADD")
        hdul = fits.HDUList([fits.PrimaryHDU(header=header), table])
    path = Path(path)
    hdul.writeto(path, overwrite=True)
    return path
