"""LAMOST LRS FITS files -> :class:`NativeSpectrum` on the file's own pixels.

The layouts (primary image DR1-DR7, bintable DR8+), the header cards kept per star, the
small card reader for plain float32 images and the reject codes; see :mod:`gsn_dask.io.lamost`
for the rules. Wavelengths are log10(vacuum Angstrom); flux is the raw LAMOST flux.
"""
from __future__ import annotations

import bz2
import gzip
import io
import math
import re
import warnings
import zlib
from dataclasses import dataclass
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



# ------------------------------------------------------------------------ header cards
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
