"""Reading a local PHOENIX HiRes grid: the WAVE file, spectra, header checks, listing and the
sampling resolution of the synthetic spectra."""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .names import (
    DEFAULT_URL,
    FILENAME_SUFFIX,
    FLUX_UNIT,
    LABELS,
    PHOENIX_RESOLUTION_SEGMENTS,
    WAVE_FILENAME,
    _TOL,
    LabelRange,
    PhoenixError,
    PhoenixFileError,
    PhoenixFilenameError,
    PhoenixMissingFileError,
    _in_ranges,
    _select,
    parse_filename,
)

log = logging.getLogger(__package__)  # 'gsn_dask.grid.phoenix', as before the split


# ---------------------------------------------------------------------------- reading
def _grid_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise PhoenixMissingFileError(root, "PHOENIX grid folder does not exist")
    return root


def find_wave_file(root_or_file: str | Path) -> Path:
    """Locate ``WAVE_PHOENIX-ACES-AGSS-COND-2011.fits``: the path itself if it is a file, else in
    ``root``, ``root/HiResFITS``, or up to two folders above ``root`` (when given a ``Z...`` folder)."""
    p = Path(root_or_file)
    if p.is_file():
        return p
    if not p.exists():
        raise PhoenixMissingFileError(p, "no such PHOENIX file or folder")
    candidates = [p / WAVE_FILENAME, p / "HiResFITS" / WAVE_FILENAME, p.parent / WAVE_FILENAME, p.parent.parent / WAVE_FILENAME]
    for c in candidates:
        if c.is_file():
            return c
    raise PhoenixMissingFileError(
        p / WAVE_FILENAME,
        f"PHOENIX wavelength file {WAVE_FILENAME} not found (looked in: "
        f"{', '.join(str(c.parent) for c in candidates)}). Download it with "
        f"`python -m gsn_dask.grid.phoenix download {p}` or from {DEFAULT_URL}{WAVE_FILENAME}",
    )


@contextlib.contextmanager
def _no_context() -> Iterator[None]:
    yield None


def _open_primary(path: Path, what: str, *, catch_warnings: bool = True) -> tuple[np.ndarray, Any]:
    """Primary HDU data (fully read) and header; any failure -> PhoenixFileError naming the file.

    ``catch_warnings=False`` leaves the (process-global, not thread-safe) warning filters alone;
    the downloader's worker threads use it."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings(record=True) if catch_warnings else _no_context() as caught:
            if catch_warnings:
                warnings.simplefilter("always")
            with fits.open(path, memmap=False) as hdul:
                header = hdul[0].header.copy()
                data = hdul[0].data
                data = None if data is None else np.array(data)
    except FileNotFoundError as exc:
        raise PhoenixMissingFileError(path, f"{what} not found") from exc
    except Exception as exc:  # noqa: BLE001 - astropy raises many types for corrupt files
        raise PhoenixFileError(
            path, f"cannot read {what} (corrupt or truncated FITS file?): {type(exc).__name__}: {exc}"
        ) from exc
    for w in caught or ():
        if "truncat" in str(w.message).lower():
            raise PhoenixFileError(path, f"{what} is truncated: {w.message}")
    if data is None:
        raise PhoenixFileError(path, f"{what} has no data in its primary HDU")
    return data, header


def read_wavelength(root_or_file: str | Path) -> np.ndarray:
    """The PHOENIX wavelength grid (vacuum Angstrom, float64, strictly increasing).

    ``root_or_file`` is the WAVE file itself or a grid folder (see :func:`find_wave_file`).
    The real file has 1,569,128 pixels from 500 to 55000 A and no WCS: the values are the array.
    """
    path = find_wave_file(root_or_file)
    data, _ = _open_primary(path, "PHOENIX wavelength file")
    wave = np.asarray(data, dtype=np.float64)
    if wave.ndim != 1 or wave.size < 2:
        raise PhoenixFileError(path, f"wavelength array must be 1-D with >= 2 pixels, got shape {wave.shape}")
    if not np.all(np.isfinite(wave)) or wave[0] <= 0:
        raise PhoenixFileError(path, "wavelength array has non-finite or non-positive values")
    if not np.all(np.diff(wave) > 0):
        raise PhoenixFileError(path, "wavelength array does not increase strictly")
    return wave


def read_header_labels(header: Mapping[str, Any], path: str | Path = "<header>") -> dict[str, float]:
    """Labels from the PHX* header keywords (``PHXALPHA`` absent -> 0.0)."""
    out = {}
    for key, name in (("PHXTEFF", "teff"), ("PHXLOGG", "logg"), ("PHXM_H", "feh"), ("PHXALPHA", "alpha_fe")):
        if key not in header:
            if key == "PHXALPHA":
                out[name] = 0.0
                continue
            raise PhoenixFileError(path, f"header lacks {key}; not a PHOENIX HiRes spectrum?")
        try:
            out[name] = float(header[key]) + 0.0
        except (TypeError, ValueError) as exc:
            raise PhoenixFileError(path, f"header {key} = {header[key]!r} is not a number") from exc
    return out


def read_spectrum(path: str | Path, *, check_header: bool = True) -> tuple[dict[str, float], np.ndarray]:
    """Read one HiRes spectrum: ``(labels, flux)``.

    ``labels`` = ``{"teff", "logg", "feh", "alpha_fe"}`` from the file name, checked against the
    header keywords ``PHXTEFF``, ``PHXLOGG``, ``PHXM_H``, ``PHXALPHA`` (``check_header``);
    ``flux`` = float64 F_lambda in erg/s/cm^2/cm on the pixels of the WAVE file.
    Raises :class:`PhoenixFileError` (naming the file) for a bad name, an unreadable or truncated
    file, a label mismatch, a wrong flux unit, a non-1-D or non-finite flux.
    """
    path = Path(path)
    try:
        labels = parse_filename(path.name)
    except PhoenixFilenameError as exc:
        raise PhoenixFileError(path, str(exc)) from exc
    data, header = _open_primary(path, "PHOENIX spectrum")
    if check_header:
        hdr = read_header_labels(header, path)
        bad = [
            f"{name}: name {labels[name]:g}, header {hdr[name]:g}"
            for name in LABELS
            if abs(labels[name] - hdr[name]) > _TOL[name]
        ]
        if bad:
            raise PhoenixFileError(path, "file name and header (PHXTEFF/PHXLOGG/PHXM_H/PHXALPHA) disagree: " + "; ".join(bad))
    unit = str(header.get("BUNIT", FLUX_UNIT)).strip()
    if unit.replace(" ", "").lower() not in {FLUX_UNIT.lower(), "erg/s/cm2/cm", "erg/(s*cm^2*cm)"}:
        raise PhoenixFileError(path, f"unexpected flux unit BUNIT = {unit!r} (expected {FLUX_UNIT!r})")
    flux = np.asarray(data, dtype=np.float64)
    if flux.ndim != 1:
        raise PhoenixFileError(path, f"flux must be a 1-D array, got shape {flux.shape}")
    if not np.all(np.isfinite(flux)):
        raise PhoenixFileError(path, f"flux has {int(np.sum(~np.isfinite(flux)))} non-finite pixels")
    return labels, flux


def list_grid(
    root: str | Path,
    teff: LabelRange = None,
    logg: LabelRange = None,
    feh: LabelRange = None,
    alpha_fe: LabelRange = 0.0,
) -> list[Path]:
    """Local PHOENIX spectra under ``root`` (searched recursively) whose file-name labels fall in the
    ranges (``None`` = any; value = exactly; ``(low, high)`` inclusive). ``alpha_fe`` defaults to
    0.0 (solar-scaled only), ``None`` takes every [alpha/Fe]. Sorted by Teff, log g, [Fe/H],
    [alpha/Fe]. Ranges that hold no grid node raise :class:`PhoenixGridError`; files that do not
    follow the naming scheme are ignored; ``*.part`` downloads are never listed.
    """
    root = _grid_root(root)
    ranges, _ = _select(teff, logg, feh, alpha_fe)  # clear error for a range outside the grid
    found: dict[tuple[float, ...], Path] = {}
    for path in root.rglob(f"lte*{FILENAME_SUFFIX}"):
        if not path.is_file():
            continue
        try:
            labels = parse_filename(path.name)
        except PhoenixFilenameError:
            continue
        if not _in_ranges(labels, ranges):
            continue
        key = tuple(labels[n] for n in LABELS)
        if key in found:
            log.warning("duplicate PHOENIX spectrum %s (already have %s); using the first", path, found[key])
            continue
        found[key] = path
    return [found[k] for k in sorted(found)]


class PhoenixSpectra:
    """Iterable over the readable local spectra of a sub-grid; bad files are skipped and recorded.

    Each item is ``(labels, wavelength, flux)``: labels dict (teff K, logg, feh, alpha_fe dex),
    vacuum wavelength (Angstrom, float64, read-only, the same array for every item), flux
    (float64, erg/s/cm^2/cm), both cut to ``wave_range`` when given. With ``with_path=True`` the
    item has the file path as a fourth element. ``len()`` is the number of files found (before
    reading). After (or during) iteration ``bad`` lists
    ``(path, reason)`` of skipped files and ``n_ok`` counts good ones.
    """

    def __init__(
        self,
        root: str | Path,
        teff: LabelRange = None,
        logg: LabelRange = None,
        feh: LabelRange = None,
        alpha_fe: LabelRange = 0.0,
        *,
        wave_range: tuple[float, float] | None = None,
        with_path: bool = False,
        progress: bool = False,
        check_header: bool = True,
    ):
        self.root = _grid_root(root)
        self.check_header = check_header
        self.files = list_grid(self.root, teff=teff, logg=logg, feh=feh, alpha_fe=alpha_fe)
        wave = read_wavelength(self.root)
        self.npix_full = int(wave.size)
        if wave_range is not None:
            lo, hi = float(wave_range[0]), float(wave_range[1])
            self._sel = slice(int(np.searchsorted(wave, lo, "left")), int(np.searchsorted(wave, hi, "right")))
            if self._sel.stop - self._sel.start < 2:
                raise PhoenixError(f"wave_range {wave_range} holds < 2 PHOENIX pixels ({wave[0]:.1f}-{wave[-1]:.1f} A)")
        else:
            self._sel = slice(0, wave.size)
        self.wavelength = wave[self._sel].copy()
        self.wavelength.flags.writeable = False
        self.with_path = with_path
        self.progress = progress
        self.bad: list[tuple[Path, str]] = []
        self.n_ok = 0
        self._gen: Iterator[tuple[Any, ...]] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __next__(self) -> tuple[Any, ...]:
        """``next()`` works too (one pass, shared by successive calls; ``for`` starts a fresh pass)."""
        if self._gen is None:
            self._gen = iter(self)
        return next(self._gen)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        from tqdm.auto import tqdm

        self.bad, self.n_ok = [], 0
        for path in tqdm(self.files, desc="PHOENIX spectra", unit="file", disable=not self.progress):
            try:
                labels, flux = read_spectrum(path, check_header=self.check_header)
                if flux.size != self.npix_full:
                    raise PhoenixFileError(path, f"flux has {flux.size} pixels but the WAVE file has {self.npix_full}")
            except PhoenixFileError as exc:
                log.warning("skipping bad PHOENIX file: %s", exc)
                self.bad.append((path, str(exc)))
                continue
            self.n_ok += 1
            if self._sel.stop - self._sel.start < flux.size:
                flux = flux[self._sel].copy()  # do not keep the full 1.57 Mpx array alive
            item = (labels, self.wavelength, flux)
            yield (*item, path) if self.with_path else item

    def report(self) -> dict[str, Any]:
        """JSON-ready summary: files, good, bad [(path, reason)]."""
        return {"files": len(self.files), "good": self.n_ok, "bad": [(str(p), r) for p, r in self.bad]}


def iter_spectra(
    root: str | Path,
    teff: LabelRange = None,
    logg: LabelRange = None,
    feh: LabelRange = None,
    alpha_fe: LabelRange = 0.0,
    *,
    wave_range: tuple[float, float] | None = None,
    with_path: bool = False,
    progress: bool = False,
    check_header: bool = True,
) -> PhoenixSpectra:
    """Iterate ``(labels, wavelength_vac_aa, flux)`` over the local spectra in range, skipping bad
    files (warning logged, ``(path, reason)`` appended to the returned object's ``bad``).
    See :class:`PhoenixSpectra`. The WAVE file is read up front (missing -> clear error).
    ``check_header=False`` trusts the file names (skips the PHX* header comparison)."""
    return PhoenixSpectra(
        root, teff, logg, feh, alpha_fe, wave_range=wave_range, with_path=with_path, progress=progress,
        check_header=check_header,
    )


def sampling_resolution(wavelength: np.ndarray) -> np.ndarray:
    """Per-pixel sampling resolving power lambda / dlambda of a wavelength grid (dlambda from
    neighbouring pixels, centred differences)."""
    w = np.asarray(wavelength, dtype=np.float64)
    return w / np.gradient(w)


def phoenix_source_resolution(
    wmin: float = 3000.0, wmax: float = 25000.0, wavelength: np.ndarray | None = None
) -> float:
    """Lowest resolving power lambda/dlambda of the PHOENIX spectra in ``wmin..wmax`` Angstrom.

    With ``wavelength`` (the WAVE array) it is measured from the pixel spacing (conservative);
    otherwise taken from the nominal sampling (:data:`PHOENIX_RESOLUTION_SEGMENTS`: R = 500000 in
    3000-25000 A, 100000 in 25000-55000 A, dlambda = 0.1 A below 3000 A). Either way it is far
    sharper than LAMOST (R ~ 1800), so degrading to LAMOST only needs the target profile.
    """
    if wavelength is not None:
        w = np.asarray(wavelength, dtype=np.float64)
        sel = (w >= wmin) & (w <= wmax)
        if sel.sum() < 2:
            raise PhoenixError(f"no PHOENIX pixels in {wmin:g}-{wmax:g} A")
        return float(np.min(sampling_resolution(w)[sel]))
    best = math.inf
    for lo, hi, kind, value in PHOENIX_RESOLUTION_SEGMENTS:
        a, b = max(lo, wmin), min(hi, wmax)
        if a > b or (a == b and wmin < wmax):  # no overlap, or only touching at a boundary
            continue
        r = (a / value) if kind == "dlambda" else value
        best = min(best, r)
    if not math.isfinite(best):
        raise PhoenixError(f"{wmin:g}-{wmax:g} A lies outside the PHOENIX range 500-55000 A")
    return float(best)

