"""PHOENIX-ACES-AGSS-COND-2011 high-resolution synthetic spectra (Husser et al. 2013, A&A 553, A6).

One module for one source of training spectra: file names and grid nodes, reading
(wavelength file, spectra, header/file-name checks), a resumable downloader and a
writer of small look-alike fixture files for tests and benchmarks.

Server layout (``DEFAULT_URL`` = ``https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/``)::

    HiResFITS/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits                    1-D float64, vacuum Angstrom
    HiResFITS/PHOENIX-ACES-AGSS-COND-2011/Z-0.0/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits
    HiResFITS/PHOENIX-ACES-AGSS-COND-2011/Z-1.0.Alpha=+0.40/lte05800-4.50-1.0.Alpha=+0.40.PHOENIX-...fits
    HiResFITS/PHOENIX-ACES-AGSS-COND-2011/Z+0.5/...

A local grid ``root`` is the folder that plays the part of ``HiResFITS/`` (what
:func:`download_grid` creates); readers also accept a folder above it or below it.

Spectrum files: primary HDU = 1-D float32 surface flux F_lambda in erg/s/cm^2/cm on the
pixels of the WAVE file (which has no WCS: the array *is* the wavelength), header keywords
``PHXTEFF`` (K), ``PHXLOGG`` (cgs dex), ``PHXM_H`` ([M/H], = [Fe/H] of the file name),
``PHXALPHA`` ([alpha/M]), ``PHXXI_L/M/N``, ``PHXMASS``, ``PHXREFF``, ``PHXLUM``, ``PHXMXLEN``,
``PHXBUILD``, ``PHXVER``, ``PHXEOS``, ``PHXDUST``, ``DATE``; a second HDU holds the abundance table.
File names write [Fe/H] = 0 as ``-0.0`` and add ``.Alpha=+0.40`` only when [alpha/Fe] != 0.

Run ``python -m gsn_dask.grid.phoenix --help`` for the download / list / fixture commands.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import itertools
import logging
import math
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- constants
GRID_NAME = "PHOENIX-ACES-AGSS-COND-2011"
#: Folder (under the HiResFITS root) that holds the ``Z...`` metallicity folders.
SPECTRA_DIR = GRID_NAME
WAVE_FILENAME = f"WAVE_{GRID_NAME}.fits"
FILENAME_SUFFIX = f".{GRID_NAME}-HiRes.fits"
DEFAULT_URL = "https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/"
MANIFEST_NAME = "MANIFEST.sha256"
#: Flux unit of the spectra (F_lambda at the stellar surface).
FLUX_UNIT = "erg/s/cm^2/cm"
#: Pixels in the real WAVE file / every real HiRes spectrum (500-55000 A).
PHOENIX_NPIX = 1569128

LABELS = ("teff", "logg", "feh", "alpha_fe")
from ..labels import LABEL_UNITS  # noqa: E402 - defined once, in gsn_dask.labels

#: Grid nodes of the HiRes grid (Husser et al. 2013, Table 1; the Goettingen web site).
TEFF_NODES: tuple[float, ...] = tuple(float(t) for t in [*range(2300, 7000, 100), *range(7000, 12001, 200)])
LOGG_NODES: tuple[float, ...] = tuple(round(0.5 * i, 1) for i in range(13))  # 0.0 .. 6.0
FEH_NODES: tuple[float, ...] = (-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0)
ALPHA_NODES: tuple[float, ...] = (-0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2)
NODES: dict[str, tuple[float, ...]] = {"teff": TEFF_NODES, "logg": LOGG_NODES, "feh": FEH_NODES, "alpha_fe": ALPHA_NODES}
#: [alpha/Fe] != 0 exists only inside these Teff (K) and [Fe/H] (dex) ranges (inclusive).
ALPHA_TEFF_RANGE = (3500.0, 8000.0)
ALPHA_FEH_RANGE = (-3.0, 0.0)

#: Nominal spectral sampling of the HiRes spectra (Husser et al. 2013): (wmin, wmax, kind, value),
#: kind "dlambda" = constant step in Angstrom, "R" = lambda/dlambda. The synthetic spectra carry no
#: instrumental profile, so this sampling is their effective resolution.
PHOENIX_RESOLUTION_SEGMENTS: tuple[tuple[float, float, str, float], ...] = (
    (500.0, 3000.0, "dlambda", 0.1),
    (3000.0, 25000.0, "R", 500000.0),
    (25000.0, 55000.0, "R", 100000.0),
)

_TOL = {"teff": 0.5, "logg": 5e-3, "feh": 5e-3, "alpha_fe": 5e-3}

LabelRange = Union[float, tuple[float, float], Sequence[float], None]


# ---------------------------------------------------------------------------- errors
class PhoenixError(ValueError):
    """Base class of the errors of this module."""


class PhoenixGridError(PhoenixError):
    """A label or label range lies outside the PHOENIX grid (the message names it)."""


class PhoenixFilenameError(PhoenixError):
    """A file name does not follow the PHOENIX HiRes naming scheme."""


class PhoenixFileError(PhoenixError):
    """A PHOENIX file is unreadable, truncated, or its header contradicts its name.

    ``path`` is the offending file."""

    def __init__(self, path: str | Path, message: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class PhoenixMissingFileError(PhoenixFileError, FileNotFoundError):
    """A required PHOENIX file (e.g. the WAVE file) or folder does not exist."""

    def __init__(self, path: str | Path, message: str):
        PhoenixFileError.__init__(self, path, message)

    def __str__(self) -> str:  # FileNotFoundError would otherwise format errno fields
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------- names
_NAME_RE = re.compile(
    r"^lte(?P<teff>\d{5})-(?P<logg>\d\.\d{2})(?P<feh>[+-]\d\.\d)"
    r"(?:\.Alpha=(?P<alpha>[+-]\d\.\d{2}))?" + re.escape(FILENAME_SUFFIX) + r"$"
)
_DIR_RE = re.compile(r"^Z(?P<feh>[+-]\d\.\d)(?:\.Alpha=(?P<alpha>[+-]\d\.\d{2}))?$")


def _clean(x: float, ndigits: int) -> float:
    """Round and turn -0.0 into 0.0."""
    return round(float(x), ndigits) + 0.0


def _feh_str(feh: float) -> str:
    feh = _clean(feh, 1)
    return "-0.0" if feh == 0.0 else f"{feh:+.1f}"


def _alpha_str(alpha_fe: float) -> str:
    alpha_fe = _clean(alpha_fe, 2)
    return "" if alpha_fe == 0.0 else f".Alpha={alpha_fe:+.2f}"


def format_dirname(feh: float, alpha_fe: float = 0.0) -> str:
    """Metallicity folder name, e.g. ``Z-0.0``, ``Z+0.5``, ``Z-1.0.Alpha=+0.40``."""
    return f"Z{_feh_str(feh)}{_alpha_str(alpha_fe)}"


def format_filename(teff: float, logg: float, feh: float, alpha_fe: float = 0.0) -> str:
    """PHOENIX HiRes file name, e.g. ``lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits``.

    teff in K (written as 5 digits), logg in dex (0.00-9.99), [Fe/H] and [alpha/Fe] in dex.
    """
    t = int(round(float(teff)))
    if not 0 <= t <= 99999 or not 0.0 <= float(logg) < 9.995 or abs(float(feh)) >= 9.95:
        raise PhoenixFilenameError(f"labels teff={teff}, logg={logg}, feh={feh} cannot be written as a PHOENIX name")
    return f"lte{t:05d}-{_clean(logg, 2):.2f}{_feh_str(feh)}{_alpha_str(alpha_fe)}{FILENAME_SUFFIX}"


def relative_path(teff: float, logg: float, feh: float, alpha_fe: float = 0.0) -> str:
    """Path of a spectrum relative to the HiResFITS root (POSIX separators), as on the server."""
    return f"{SPECTRA_DIR}/{format_dirname(feh, alpha_fe)}/{format_filename(teff, logg, feh, alpha_fe)}"


def parse_filename(name: str | os.PathLike[str]) -> dict[str, float]:
    """Labels encoded in a PHOENIX HiRes file name (a bare name or a path).

    Returns ``{"teff": K, "logg": dex, "feh": dex, "alpha_fe": dex}`` (floats; ``-0.0`` -> 0.0,
    no ``.Alpha=`` part -> alpha_fe 0.0). Raises :class:`PhoenixFilenameError` otherwise.
    """
    base = Path(name).name
    m = _NAME_RE.match(base)
    if not m:
        raise PhoenixFilenameError(
            f"{base!r} is not a PHOENIX HiRes file name "
            f"(expected like 'lte05800-4.50-0.0{FILENAME_SUFFIX}' or 'lte05800-4.50-1.0.Alpha=+0.40{FILENAME_SUFFIX}')"
        )
    return {
        "teff": float(int(m["teff"])),
        "logg": _clean(m["logg"], 2),
        "feh": _clean(m["feh"], 1),
        "alpha_fe": _clean(m["alpha"], 2) if m["alpha"] else 0.0,
    }


def parse_dirname(name: str) -> dict[str, float]:
    """[Fe/H] and [alpha/Fe] of a metallicity folder name (``Z-0.0``, ``Z-1.0.Alpha=+0.40``)."""
    m = _DIR_RE.match(Path(name).name)
    if not m:
        raise PhoenixFilenameError(f"{name!r} is not a PHOENIX metallicity folder name (like 'Z-0.0' or 'Z-1.0.Alpha=+0.40')")
    return {"feh": _clean(m["feh"], 1), "alpha_fe": _clean(m["alpha"], 2) if m["alpha"] else 0.0}


def spectrum_id(labels: Mapping[str, float]) -> str:
    """Short unique id of a grid spectrum: its file name without the grid suffix,
    e.g. ``lte05800-4.50-0.0`` or ``lte05800-4.50-1.0.Alpha=+0.40`` (use it as the cube's ``star``)."""
    name = format_filename(labels["teff"], labels["logg"], labels["feh"], labels.get("alpha_fe", 0.0))
    return name[: -len(FILENAME_SUFFIX)]


# ---------------------------------------------------------------------------- grid nodes
def _as_range(name: str, value: LabelRange) -> tuple[float, float] | None:
    """None -> no restriction; scalar -> (v, v); (lo, hi) -> checked (lo, hi)."""
    if value is None:
        return None
    if np.ndim(value) == 0:
        v = float(value)  # type: ignore[arg-type]
        return (v, v)
    vals = [float(v) for v in value]  # type: ignore[union-attr]
    if len(vals) == 1:
        return (vals[0], vals[0])
    if len(vals) != 2 or not all(math.isfinite(v) for v in vals):
        raise PhoenixGridError(f"{name} must be a value or a (low, high) pair, got {value!r}")
    lo, hi = vals
    if lo > hi:
        raise PhoenixGridError(f"{name} range ({lo:g}, {hi:g}): low is above high")
    return (lo, hi)


_NODE_TEXT = {
    "teff": "2300-7000 K in steps of 100 K, 7000-12000 K in steps of 200 K",
    "logg": "0.0-6.0 dex in steps of 0.5",
    "feh": "-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, +0.5, +1.0 dex",
    "alpha_fe": "-0.2 to +1.2 dex in steps of 0.2",
}


def _nodes_in(name: str, rng: tuple[float, float] | None) -> list[float]:
    nodes = NODES[name]
    if rng is None:
        return list(nodes)
    tol = _TOL[name]
    lo, hi = rng
    sel = [v for v in nodes if lo - tol <= v <= hi + tol]
    if not sel:
        unit = LABEL_UNITS[name]
        what = f"{name} = {lo:g} {unit}" if lo == hi else f"{name} range {lo:g}..{hi:g} {unit}"
        if lo == hi and nodes[0] <= lo <= nodes[-1]:
            near = sorted(nodes, key=lambda v: abs(v - lo))[:2]
            raise PhoenixGridError(
                f"{what} is not a PHOENIX grid node (nearest nodes: {', '.join(f'{v:g}' for v in sorted(near))})"
            )
        raise PhoenixGridError(f"{what} lies outside the PHOENIX grid ({name} nodes: {_NODE_TEXT[name]})")
    return sel


def _select(
    teff: LabelRange, logg: LabelRange, feh: LabelRange, alpha_fe: LabelRange
) -> tuple[dict[str, tuple[float, float] | None], dict[str, list[float]]]:
    """The label selection, checked: ``(ranges, nodes)``, per label (in :data:`LABELS` order) its
    ``(low, high)`` range (None = any) and the grid nodes inside it. Raises
    :class:`PhoenixGridError` for a malformed range or a range that holds no grid node."""
    ranges: dict[str, tuple[float, float] | None] = {}
    nodes: dict[str, list[float]] = {}
    for name, value in zip(LABELS, (teff, logg, feh, alpha_fe)):
        ranges[name] = _as_range(name, value)
        nodes[name] = _nodes_in(name, ranges[name])
    return ranges, nodes


def alpha_available(teff: float, feh: float) -> bool:
    """Whether the grid has [alpha/Fe] != 0 models at this Teff (K) and [Fe/H] (dex)."""
    return (ALPHA_TEFF_RANGE[0] <= teff <= ALPHA_TEFF_RANGE[1]) and (ALPHA_FEH_RANGE[0] <= feh <= ALPHA_FEH_RANGE[1])


def check_grid_point(teff: float, logg: float, feh: float, alpha_fe: float = 0.0) -> None:
    """Raise :class:`PhoenixGridError` unless the labels are a PHOENIX grid node.

    Note: the real grid has holes (some hot, low-gravity models were never computed); those
    show up as HTTP 404 in :func:`download_grid`, not here.
    """
    _select(float(teff), float(logg), float(feh), float(alpha_fe))
    if _clean(alpha_fe, 2) != 0.0 and not alpha_available(float(teff), float(feh)):
        raise PhoenixGridError(
            f"[alpha/Fe] = {alpha_fe:+.2f} at Teff = {teff:g} K, [Fe/H] = {feh:+.1f}: PHOENIX has [alpha/Fe] != 0 "
            f"only for {ALPHA_TEFF_RANGE[0]:g} <= Teff <= {ALPHA_TEFF_RANGE[1]:g} K and "
            f"{ALPHA_FEH_RANGE[0]:+.1f} <= [Fe/H] <= {ALPHA_FEH_RANGE[1]:+.1f}"
        )


def grid_points(
    teff: LabelRange = None,
    logg: LabelRange = None,
    feh: LabelRange = None,
    alpha_fe: LabelRange = 0.0,
) -> list[dict[str, float]]:
    """All PHOENIX grid nodes inside the given label ranges.

    Each argument is ``None`` (no restriction), a value (must be a node) or a ``(low, high)``
    range (inclusive). ``alpha_fe`` defaults to 0.0 (solar-scaled models only); pass ``None``
    for every [alpha/Fe]. Combinations the grid lacks ([alpha/Fe] != 0 outside
    3500-8000 K or outside -3 <= [Fe/H] <= 0) are left out. Sorted by folder
    ([Fe/H], [alpha/Fe]), then Teff, log g. Raises :class:`PhoenixGridError` when a range
    holds no node or the selection is empty.
    """
    _, sel = _select(teff, logg, feh, alpha_fe)
    out = []
    for f, a, t, g in itertools.product(sel["feh"], sel["alpha_fe"], sel["teff"], sel["logg"]):
        if a != 0.0 and not alpha_available(t, f):
            continue
        out.append({"teff": t, "logg": g, "feh": f, "alpha_fe": a})
    if not out:
        raise PhoenixGridError(
            f"no PHOENIX grid nodes for teff={teff}, logg={logg}, feh={feh}, alpha_fe={alpha_fe}: "
            f"[alpha/Fe] != 0 exists only for {ALPHA_TEFF_RANGE[0]:g}-{ALPHA_TEFF_RANGE[1]:g} K and "
            f"{ALPHA_FEH_RANGE[0]:+.1f} <= [Fe/H] <= {ALPHA_FEH_RANGE[1]:+.1f}"
        )
    return out


def _in_ranges(labels: Mapping[str, float], ranges: Mapping[str, tuple[float, float] | None]) -> bool:
    for name, rng in ranges.items():
        if rng is not None and not (rng[0] - _TOL[name] <= labels[name] <= rng[1] + _TOL[name]):
            return False
    return True


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


# ---------------------------------------------------------------------------- downloader
class _Retryable(Exception):
    """A transient failure worth retrying (dropped connection, short body, 5xx)."""


@dataclass
class DownloadReport:
    """What :func:`download_grid` did. Paths are relative to ``dest_root`` (POSIX)."""

    dest_root: str
    base_url: str
    requested: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)  # fetched in this run (incl. re-downloads)
    skipped: list[str] = field(default_factory=list)  # already complete (checksum ok)
    redownloaded: list[str] = field(default_factory=list)  # checksum mismatch -> fetched again
    resumed: list[str] = field(default_factory=list)  # continued a .part file with an HTTP Range request
    missing: list[str] = field(default_factory=list)  # HTTP 404: the server lacks this grid node
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) after all retries
    bytes_downloaded: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing failed (404s are reported, not failures)."""
        return not self.failed

    def summary(self) -> str:
        s = (
            f"PHOENIX download to {self.dest_root}: {len(self.requested)} files requested, "
            f"{len(self.downloaded)} downloaded ({self.bytes_downloaded / 1e6:.1f} MB"
            f"{f', {len(self.resumed)} resumed' if self.resumed else ''}"
            f"{f', {len(self.redownloaded)} re-downloaded after a checksum mismatch' if self.redownloaded else ''}), "
            f"{len(self.skipped)} already complete, {len(self.missing)} not on the server (404), "
            f"{len(self.failed)} failed"
        )
        if self.failed:
            s += "\n" + "\n".join(f"  FAILED {p}: {r}" for p, r in self.failed[:20])
        if self.missing:
            s += "\n" + "\n".join(f"  404 {p}" for p in self.missing[:20])
            if len(self.missing) > 20:
                s += f"\n  ... and {len(self.missing) - 20} more"
        return s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


class Manifest:
    """``MANIFEST.sha256`` in ``sha256sum`` format (``<hex>  <relative path>``), so
    ``sha256sum -c MANIFEST.sha256`` works from ``dest_root``. Appended as files complete
    (later lines win), compacted at the end of a run."""

    def __init__(self, root: Path):
        self.path = Path(root) / MANIFEST_NAME
        self._lock = threading.Lock()
        self.entries: dict[str, str] = {}
        if self.path.exists():
            for i, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                m = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line.strip())
                if not m:
                    if line.strip():
                        log.warning("%s line %d is not '<sha256>  <path>'; ignored", self.path, i)
                    continue
                self.entries[m[2]] = m[1].lower()

    def get(self, rel: str) -> str | None:
        return self.entries.get(rel)

    def record(self, rel: str, digest: str) -> None:
        with self._lock:
            self.entries[rel] = digest
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(f"{digest}  {rel}\n")

    def forget(self, rel: str) -> None:
        with self._lock:
            self.entries.pop(rel, None)

    def compact(self) -> None:
        with self._lock:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(f"{d}  {r}\n" for r, d in sorted(self.entries.items())), encoding="utf-8")
            os.replace(tmp, self.path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while buf := fh.read(chunk):
            h.update(buf)
    return h.hexdigest()


def _fits_problem(path: Path) -> str | None:
    """None if ``path`` is a complete FITS file whose primary HDU data read in full, else why not."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(80)
        if not head.startswith(b"SIMPLE  ="):
            return f"not a FITS file (starts with {head[:40]!r})"
        if path.stat().st_size % 2880:
            return f"size {path.stat().st_size} B is not a multiple of 2880 (truncated FITS)"
        _open_primary(path, "file", catch_warnings=False)
    except PhoenixFileError as exc:
        return str(exc)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}
_RETRY_EXC = (
    _Retryable,
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)


def _user_agent() -> str:
    try:
        from .._version import __version__
    except Exception:  # noqa: BLE001
        __version__ = "?"
    return f"gsn-dask/{__version__} (PHOENIX grid downloader; python-urllib)"


def _fetch_to_part(url: str, part: Path, *, timeout: float, stats: dict[str, Any], chunk: int = 1 << 16) -> None:
    """Download ``url`` into ``part``, continuing an existing ``part`` with an HTTP Range request.

    Adds the bytes received to ``stats["bytes"]`` as they arrive and sets ``stats["resumed"]``
    when a Range resume was used. A short body raises :class:`_Retryable` and keeps what arrived
    in ``part`` for the next try.
    """
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.build_opener().open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our .part is no prefix the server recognises: start over
            part.unlink(missing_ok=True)
            raise _Retryable(f"HTTP 416 for a resume at byte {offset}; restarting from scratch") from exc
        raise
    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        expect = int(length) if length is not None and length.isdigit() else None
        total = expect
        if offset and status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m[1]) != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server answered a resume at {offset} with Content-Range {resp.headers.get('Content-Range')!r}")
            total = int(m[3]) if m[3] != "*" else None
            mode = "ab"
            stats["resumed"] = True
        else:
            if offset:
                log.info("%s: server ignored the Range request; downloading again from the start", url)
            mode, offset = "wb", 0
        got = 0
        with open(part, mode) as fh:
            while True:
                buf = resp.read1(chunk)
                if not buf:
                    break
                fh.write(buf)
                got += len(buf)
                stats["bytes"] += len(buf)
        if expect is not None and got < expect:
            raise _Retryable(f"connection closed after {offset + got} of {offset + expect} bytes")
    size = part.stat().st_size
    if total is not None and size != total:
        part.unlink(missing_ok=True)
        raise _Retryable(f"downloaded size {size} B differs from the server's {total} B; restarting")


def _download_one(
    rel: str,
    dest_root: Path,
    base_url: str,
    manifest: Manifest,
    *,
    verify: bool,
    retries: int,
    backoff: float,
    timeout: float,
) -> dict[str, Any]:
    """Make ``dest_root/rel`` a complete copy of ``base_url + rel``. Never raises; returns a status dict."""
    dest = dest_root / rel
    res: dict[str, Any] = {"rel": rel, "status": "", "bytes": 0, "resumed": False, "redownloaded": False, "reason": ""}
    if dest.exists():
        recorded = manifest.get(rel)
        if recorded is not None:
            if not verify or sha256_file(dest) == recorded:
                res["status"] = "skipped"
                return res
            log.warning("%s: sha256 differs from %s; downloading it again", dest, manifest.path.name)
            res["redownloaded"] = True
        else:
            problem = _fits_problem(dest)
            if problem is None:  # complete file from an earlier tool or an interrupted run: adopt it
                manifest.record(rel, sha256_file(dest))
                res["status"] = "skipped"
                return res
            log.warning("%s is incomplete (%s); downloading it again", dest, problem)
        dest.unlink()
        manifest.forget(rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    url = base_url.rstrip("/") + "/" + urllib.parse.quote(rel, safe="/=+-.")
    for attempt in range(retries + 1):
        try:
            _fetch_to_part(url, part, timeout=timeout, stats=res)
            problem = _fits_problem(part)
            if problem is not None:
                part.unlink(missing_ok=True)
                res.update(status="failed", reason=f"server sent something that is not a complete FITS file: {problem}")
                return res
            os.replace(part, dest)
            manifest.record(rel, sha256_file(dest))
            res["status"] = "downloaded"
            return res
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                res.update(status="missing", reason=f"HTTP 404 Not Found: {url}")
                return res
            reason = f"HTTP {exc.code} {exc.reason}: {url}"
            if exc.code not in _RETRY_HTTP:
                res.update(status="failed", reason=reason)
                return res
        except urllib.error.URLError as exc:  # DNS failure, connection refused, ...
            reason = f"network error for {url}: {exc.reason}"
        except _RETRY_EXC as exc:
            reason = f"{type(exc).__name__}: {exc} ({url})"
        except OSError as exc:  # local disk problems are not worth retrying
            res.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            return res
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the whole download
            res.update(status="failed", reason=f"unexpected {type(exc).__name__}: {exc} ({url})")
            return res
        if attempt < retries:
            wait = backoff * (2**attempt)
            log.info("%s: %s; retry %d/%d in %.1f s", rel, reason, attempt + 1, retries, wait)
            if wait > 0:
                time.sleep(wait)
    res.update(status="failed", reason=f"{reason} (gave up after {retries + 1} tries; rerun to resume)")
    return res


def download_grid(
    dest_root: str | Path,
    *,
    teff: LabelRange = None,
    logg: LabelRange = None,
    feh: LabelRange = None,
    alpha_fe: LabelRange = 0.0,
    points: Iterable[Mapping[str, float]] | None = None,
    base_url: str = DEFAULT_URL,
    workers: int = 4,
    progress: bool = True,
    verify: bool = True,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
) -> DownloadReport:
    """Download the WAVE file and every spectrum of a sub-grid into ``dest_root``, mirroring the
    server's layout below ``base_url`` (so ``dest_root`` plays the part of ``HiResFITS/``).

    Label ranges as in :func:`grid_points` (``alpha_fe`` defaults to 0.0), or explicit ``points``
    (label dicts). Resumable: complete files whose sha256 matches ``MANIFEST.sha256`` are skipped
    (``verify=False`` skips the hashing), a mismatch is downloaded again; downloads go to
    ``*.part`` and are renamed when complete; an existing ``.part`` is continued with an HTTP
    Range request when the server supports it. Transient network errors are retried ``retries``
    times with exponential backoff (``backoff`` s, doubling). A grid node the server lacks
    (HTTP 404) is reported in ``missing``, not fatal. Never raises for a single file; see the
    returned :class:`DownloadReport` (``report.ok``).
    """
    from tqdm.auto import tqdm

    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    if points is None:
        points = grid_points(teff=teff, logg=logg, feh=feh, alpha_fe=alpha_fe)
    rels = [WAVE_FILENAME]
    for p in points:
        check_grid_point(p["teff"], p["logg"], p["feh"], p.get("alpha_fe", 0.0))
        rels.append(relative_path(p["teff"], p["logg"], p["feh"], p.get("alpha_fe", 0.0)))
    rels = list(dict.fromkeys(rels))
    report = DownloadReport(dest_root=str(dest_root), base_url=base_url, requested=rels)
    manifest = Manifest(dest_root)
    kw = dict(verify=verify, retries=max(0, int(retries)), backoff=float(backoff), timeout=float(timeout))

    def collect(res: dict[str, Any]) -> None:
        rel, status = res["rel"], res["status"]
        report.bytes_downloaded += res["bytes"]
        if res["resumed"]:
            report.resumed.append(rel)
        if status == "downloaded":
            report.downloaded.append(rel)
            if res["redownloaded"]:
                report.redownloaded.append(rel)
        elif status == "skipped":
            report.skipped.append(rel)
        elif status == "missing":
            log.warning("PHOENIX server has no %s (HTTP 404); skipped", rel)
            report.missing.append(rel)
        else:
            log.error("PHOENIX download failed: %s: %s", rel, res["reason"])
            report.failed.append((rel, res["reason"]))

    bar = tqdm(total=len(rels), desc="PHOENIX download", unit="file", disable=not progress)
    try:
        # the WAVE file first, alone: without it nothing else is usable
        collect(_download_one(rels[0], dest_root, base_url, manifest, **kw))
        bar.update(1)
        with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            futures = [pool.submit(_download_one, rel, dest_root, base_url, manifest, **kw) for rel in rels[1:]]
            for fut in as_completed(futures):
                collect(fut.result())
                bar.update(1)
                bar.set_postfix(MB=f"{report.bytes_downloaded / 1e6:.1f}", missing=len(report.missing), failed=len(report.failed))
    finally:
        bar.close()
        manifest.compact()
    for lst in (report.downloaded, report.skipped, report.redownloaded, report.resumed, report.missing):
        lst.sort()
    report.failed.sort()
    log.info(report.summary())
    return report


# ---------------------------------------------------------------------------- fixtures
_H = 6.62607015e-27  # erg s
_C = 2.99792458e10  # cm/s
_KB = 1.380649e-16  # erg/K
_SIGMA = 5.670374419e-5  # erg/s/cm^2/K^4
_G = 6.674e-8  # cgs
_MSUN = 1.98847e33  # g
_AMU = 1.66053907e-24  # g

#: Strong lines of the fixture spectra: (vacuum Angstrom, kind, log10 tau0, alpha element?)
_STRONG_LINES = (
    (3934.78, "ion", 2.2, True), (3969.59, "ion", 2.0, True),  # Ca II H & K
    (5168.76, "neutral", 0.9, True), (5174.13, "neutral", 1.1, True), (5185.05, "neutral", 1.2, True),  # Mg b
    (5891.58, "neutral", 1.3, False), (5897.56, "neutral", 1.1, False),  # Na D
    (8500.35, "ion", 0.7, True), (8544.44, "ion", 1.1, True), (8664.52, "ion", 1.0, True),  # Ca II triplet
)
_BALMER = (6564.61, 4862.68, 4341.69, 4102.89, 3971.20, 3890.17, 3836.47)  # H alpha .. H9, vacuum
_TIO_HEADS = (4762.0, 4955.0, 5168.0, 5449.0, 5848.0, 6160.0, 6653.0, 7055.0, 7591.0, 8434.0)


def _line_list(seed: int = 20130306) -> dict[str, np.ndarray]:
    """Deterministic list of weak 'metal' lines, 3000-11000 A (same for every fixture spectrum)."""
    rng = np.random.default_rng(seed)
    n = 900
    wave = np.exp(rng.uniform(np.log(3000.0), np.log(11000.0), n))
    return {
        "wave": wave,
        "log_tau0": rng.uniform(-2.2, 0.6, n) - 0.3 * np.log10(wave / 5000.0),
        "ion": rng.random(n) < 0.25,
        "alpha": rng.random(n) < 0.3,
        "mass": np.where(rng.random(n) < 0.7, 56.0, 40.0),
    }


def fixture_wavelength(n_pix: int = 20000, wmin: float = 3000.0, wmax: float = 10000.0) -> np.ndarray:
    """Vacuum wavelength grid (Angstrom, float64) for fixture files: log-uniform ``wmin..wmax``
    with ``n_pix`` pixels; ``n_pix = PHOENIX_NPIX`` with the default range gives a PHOENIX-like
    1,569,128-pixel grid instead (0.1 A steps over 500-3000 A, then log-uniform to 55000 A,
    R ~ 530000) - the same size as the real file, not its exact values."""
    if n_pix == PHOENIX_NPIX and (wmin, wmax) == (3000.0, 10000.0):
        uv = 500.0 + 0.1 * np.arange(25000)
        rest = PHOENIX_NPIX - uv.size
        vis = np.exp(np.linspace(np.log(3000.0), np.log(55000.0), rest))
        return np.concatenate([uv, vis])
    if n_pix < 2 or not 0 < wmin < wmax:
        raise ValueError(f"need n_pix >= 2 and 0 < wmin < wmax, got {n_pix}, {wmin}, {wmax}")
    return np.exp(np.linspace(np.log(wmin), np.log(wmax), int(n_pix)))


def _add_lines(
    tau: np.ndarray,
    wave: np.ndarray,
    dpix: np.ndarray,
    centers: Sequence[float] | np.ndarray,
    sigmas: Sequence[float] | np.ndarray,
    taus: Sequence[float] | np.ndarray,
    gamma: float = 0.0,
    wing: float = 0.0,
    width: float = 8.0,
) -> None:
    """Add optical-depth profiles ``tau0 * [G(x; sigma) + wing / (1 + (x/gamma)^2)]`` to ``tau``,
    each evaluated only in a window of ``width`` times its widest scale.

    The Gaussian core is widened to the local pixel size (depth scaled to keep its area), so a
    line is not lost between the pixels of a coarse fixture grid."""
    for lam0, sig, t0 in zip(centers, sigmas, taus):
        half = width * max(sig, gamma if wing > 0 else 0.0, 2.0 * dpix[min(int(np.searchsorted(wave, lam0)), wave.size - 1)])
        i0, i1 = np.searchsorted(wave, [lam0 - half, lam0 + half])
        if i1 <= i0:
            continue
        k = min(int(np.searchsorted(wave, lam0)), wave.size - 1)
        s_eff = math.sqrt(sig**2 + 0.25 * dpix[k] ** 2)
        x = wave[i0:i1] - lam0
        prof = (sig / s_eff) * np.exp(-0.5 * (x / s_eff) ** 2)
        if wing > 0 and gamma > 0:
            prof += wing / (1.0 + (x / gamma) ** 2)
        tau[i0:i1] += t0 * prof


def fixture_flux(wavelength: np.ndarray, teff: float, logg: float, feh: float, alpha_fe: float = 0.0) -> np.ndarray:
    """A star-like synthetic F_lambda (erg/s/cm^2/cm, float32) for fixtures - NOT a PHOENIX model.

    Blackbody surface flux pi*B_lambda(Teff) times absorption exp(-tau): ~900 weak metal lines
    and strong Ca II, Mg b, Na D, Ca triplet lines whose depths grow with [Fe/H] (+[alpha/Fe] for
    alpha elements), fall with Teff, and depend on log g (neutral vs ionised, microturbulence,
    damping wings); Balmer lines peaking near 9500 K with log g dependent wings; a Balmer jump;
    TiO band heads below 4200 K. Deterministic, smooth in the labels.
    """
    wave = np.asarray(wavelength, dtype=np.float64)
    lam_cm = wave * 1e-8
    with np.errstate(over="ignore"):
        bb = np.pi * 2.0 * _H * _C**2 / lam_cm**5 / np.expm1(_H * _C / (lam_cm * _KB * teff))
    dpix = np.gradient(wave)
    tau = np.zeros_like(wave)
    t5 = math.log10(teff / 5000.0)
    xi = min(max(1.0 + 0.35 * (4.5 - logg), 0.5), 3.5)  # km/s microturbulence
    vbroad = 6.0  # km/s macroturbulence/rotation (keeps lines resolved on coarse grids)
    # weak metal lines
    ll = _line_list()
    ion = ll["ion"]
    log_tau = ll["log_tau0"] + feh + alpha_fe * ll["alpha"]
    log_tau += np.where(ion, -1.0 * t5 - 0.30 * (logg - 4.5), -4.0 * t5 + 0.10 * (logg - 4.5))
    log_tau -= 6.0 * max(0.0, math.log10(teff / 7500.0))  # metal lines fade in hot stars
    vth2 = 2.0 * _KB * teff / (ll["mass"] * _AMU) / 1e10  # (km/s)^2
    sig = ll["wave"] * np.sqrt(vth2 + xi**2 + vbroad**2) / 2.99792458e5
    _add_lines(tau, wave, dpix, ll["wave"], sig, 10**log_tau)
    # strong lines with damping wings
    for lam0, kind, lt0, is_alpha in _STRONG_LINES:
        lt = lt0 + feh + (alpha_fe if is_alpha else 0.0)
        lt += (-1.0 * t5 - 0.3 * (logg - 4.5)) if kind == "ion" else (-3.0 * t5 + 0.15 * (logg - 4.5))
        lt -= 4.0 * max(0.0, math.log10(teff / 8000.0))
        s = lam0 * math.sqrt(2 * _KB * teff / (40 * _AMU) / 1e10 + xi**2 + vbroad**2) / 2.99792458e5
        g = 0.6 * 10 ** (0.3 * (logg - 4.5) + 0.25 * feh) * (lam0 / 5000.0) ** 2
        _add_lines(tau, wave, dpix, [lam0], [s], [10**lt], gamma=g, wing=0.02, width=40.0)
    # Balmer lines (strongest near 9500 K; Stark wings grow with log g)
    hstr = math.exp(-0.5 * ((teff - 9500.0) / 2200.0) ** 2)
    for j, lam0 in enumerate(_BALMER):
        t0 = 8.0 * hstr / (1.0 + 0.6 * j) + 0.1
        s = lam0 * math.sqrt(2 * _KB * teff / _AMU / 1e10 + vbroad**2) / 2.99792458e5
        g = (1.0 + 4.0 * hstr) * 10 ** (0.25 * (logg - 4.0)) * (lam0 / 6564.61) ** 2 / (1.0 + 0.3 * j)
        _add_lines(tau, wave, dpix, [lam0], [s], [t0], gamma=g, wing=1.0, width=60.0)
    # Balmer jump below 3647 A
    jump = 0.6 * hstr * 10 ** (-0.15 * (logg - 4.0))
    tau += -math.log(1.0 - min(jump, 0.9)) * 0.5 * (1.0 - np.tanh((wave - 3647.0) / 16.0))
    # TiO bands in cool stars
    dtio = min(max((4200.0 - teff) / 1200.0, 0.0), 1.5) * 10 ** (0.3 * feh) * 10 ** (0.1 * (logg - 4.5))
    if dtio > 0:
        for head in _TIO_HEADS:
            x = wave - head
            tau += np.where(x >= 0, dtio * np.exp(-np.clip(x, 0, None) / 90.0), 0.0)
    return (bb * np.exp(-tau)).astype(np.float32)


def fixture_header(teff: float, logg: float, feh: float, alpha_fe: float = 0.0) -> dict[str, tuple[Any, str]]:
    """PHOENIX-style primary header cards (value, comment) for a fixture spectrum."""
    mass = _MSUN
    radius = math.sqrt(_G * mass / 10**logg)
    lum = 4.0 * math.pi * radius**2 * _SIGMA * teff**4
    xi = round(min(max(1.0 + 0.35 * (4.5 - logg), 0.5), 3.5), 2)
    return {
        "PHXTEFF": (float(teff), "[K] effective temperature"),
        "PHXLOGG": (float(logg), "[cm/s^2] log (surface gravity)"),
        "PHXM_H": (float(feh) + 0.0, "[M/H] metallicity (rel. sol. - Asplund &a 2009)"),
        "PHXALPHA": (float(alpha_fe) + 0.0, "[a/M] alpha element enhancement"),
        "PHXDUST": (False, "Dust in atmosphere"),
        "PHXXI_L": (xi, "[km/s] microturbulence velocity for LTE lines"),
        "PHXXI_M": (xi, "[km/s] microturbulence velocity for molec lines"),
        "PHXXI_N": (xi, "[km/s] microturbulence velocity for NLTE lines"),
        "PHXMASS": (float(f"{mass:.5g}"), "[g] Stellar mass"),
        "PHXREFF": (float(f"{radius:.5g}"), "[cm] Effective stellar radius"),
        "PHXLUM": (float(f"{lum:.5g}"), "[ergs] Stellar luminosity"),
        "PHXMXLEN": (1.5, "Mixing length"),
        "PHXBUILD": ("02/Aug/2010", "Build date of Phoenix"),
        "PHXVER": ("16.01.00B", "Phoenix version"),
        "DATE": ("2011-06-01T00:00:00", "finishing date of model calculation"),
        "PHXEOS": ("ACES", "Equation of state"),
        "BUNIT": (FLUX_UNIT, "Unit of flux"),
    }


def write_fixture_wavelength(root: str | Path, wavelength: np.ndarray) -> Path:
    """Write ``root/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits`` (primary HDU, 1-D float64, no WCS)."""
    from astropy.io import fits

    path = Path(root) / WAVE_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu = fits.PrimaryHDU(np.asarray(wavelength, dtype=np.float64))
    hdu.header.add_comment("gsn-dask test fixture: wavelength in vacuum Angstrom (PHOENIX WAVE file layout)")
    hdu.writeto(path, overwrite=True)
    return path


def write_fixture_spectrum(
    path: str | Path,
    teff: float,
    logg: float,
    feh: float,
    alpha_fe: float = 0.0,
    *,
    wavelength: np.ndarray,
    flux: np.ndarray | None = None,
    header_overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write one spectrum file in the PHOENIX HiRes layout: primary HDU 1-D float32 flux with the
    PHX* header (values from the arguments unless ``header_overrides``), plus an ``ABUNDANCES``
    binary-table extension (a stand-in: the real table's columns are not reproduced).
    ``path`` may be a folder (an existing one, or any path not ending in ``.fits``): the PHOENIX
    file name is then appended."""
    from astropy.io import fits

    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".fits":
        path = path / format_filename(teff, logg, feh, alpha_fe)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = fixture_flux(wavelength, teff, logg, feh, alpha_fe) if flux is None else np.asarray(flux, dtype=np.float32)
    hdu = fits.PrimaryHDU(data)
    for key, (value, comment) in fixture_header(teff, logg, feh, alpha_fe).items():
        hdu.header[key] = (value, comment)
    for key, value in (header_overrides or {}).items():
        if value is None:
            hdu.header.remove(key, ignore_missing=True)
        else:
            hdu.header[key] = value
    hdu.header.add_comment("gsn-dask test fixture (blackbody + synthetic lines), NOT a PHOENIX model")
    elements = np.array(["H", "He", "C", "N", "O", "Mg", "Si", "Ca", "Ti", "Fe"])
    solar = np.array([12.0, 10.93, 8.43, 7.83, 8.69, 7.60, 7.51, 6.34, 4.95, 7.50])
    is_alpha = np.isin(elements, ["O", "Mg", "Si", "Ca", "Ti"])
    abund = solar + np.where(elements == "H", 0.0, np.where(elements == "He", 0.0, feh + alpha_fe * is_alpha))
    tab = fits.BinTableHDU.from_columns(
        [fits.Column(name="Element", format="2A", array=elements), fits.Column(name="Abundance", format="E", array=abund)],
        name="ABUNDANCES",
    )
    fits.HDUList([hdu, tab]).writeto(path, overwrite=True)
    return path


def write_fixture_grid(
    root: str | Path,
    points: Iterable[Mapping[str, float]] | None = None,
    *,
    teff: LabelRange = (5000.0, 6000.0),
    logg: LabelRange = (4.0, 5.0),
    feh: LabelRange = (-1.0, 0.0),
    alpha_fe: LabelRange = 0.0,
    n_pix: int = 20000,
    wmin: float = 3000.0,
    wmax: float = 10000.0,
    wavelength: np.ndarray | None = None,
    progress: bool = False,
) -> list[Path]:
    """Write a fixture grid in the server layout below ``root`` (= a ``HiResFITS`` folder): the WAVE
    file and one spectrum per grid point (``points``, or the nodes in the label ranges).

    Tests: the default ~20000 pixels over 3000-10000 A. Benchmarks: ``n_pix=PHOENIX_NPIX`` for
    full-size (6.3 MB) spectra on a PHOENIX-like grid. Returns the spectrum paths.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    wave = fixture_wavelength(n_pix, wmin, wmax) if wavelength is None else np.asarray(wavelength, np.float64)
    write_fixture_wavelength(root, wave)
    pts = list(points) if points is not None else grid_points(teff=teff, logg=logg, feh=feh, alpha_fe=alpha_fe)
    out = []
    for p in tqdm(pts, desc="fixture spectra", unit="file", disable=not progress):
        a = p.get("alpha_fe", 0.0)
        rel = relative_path(p["teff"], p["logg"], p["feh"], a)
        out.append(write_fixture_spectrum(root / rel, p["teff"], p["logg"], p["feh"], a, wavelength=wave))
    return out


# ---------------------------------------------------------------------------- command line
def add_label_range_arguments(parser: argparse.ArgumentParser, *, default_alpha: float | None = 0.0) -> None:
    """Add ``--teff``, ``--logg``, ``--feh``, ``--alpha`` (one value or LOW HIGH) and ``--any-alpha``
    to a parser; turn them into keyword arguments with :func:`label_ranges_from_args`."""
    g = parser.add_argument_group("grid selection (one value, or LOW HIGH inclusive; default: all nodes)")
    g.add_argument("--teff", nargs="+", type=float, metavar="K", help="effective temperature, K (2300-12000)")
    g.add_argument("--logg", nargs="+", type=float, metavar="DEX", help="surface gravity log g, cgs dex (0-6)")
    g.add_argument("--feh", nargs="+", type=float, metavar="DEX", help="[Fe/H], dex (-4 .. +1)")
    g.add_argument(
        "--alpha", nargs="+", type=float, metavar="DEX", default=None,
        help=f"[alpha/Fe], dex (-0.2 .. +1.2; default {default_alpha if default_alpha is not None else 'any'}; "
        "non-zero only for 3500-8000 K and -3 <= [Fe/H] <= 0)",
    )
    g.add_argument("--any-alpha", action="store_true", help="take every [alpha/Fe] (same as no --alpha limit)")
    parser.set_defaults(_default_alpha=default_alpha)


def label_ranges_from_args(args: argparse.Namespace) -> dict[str, LabelRange]:
    """``{"teff": .., "logg": .., "feh": .., "alpha_fe": ..}`` from :func:`add_label_range_arguments` options."""
    def rng(v: list[float] | None) -> LabelRange:
        if v is None:
            return None
        if len(v) not in (1, 2):
            raise PhoenixGridError(f"give one value or LOW HIGH, got {v}")
        return v[0] if len(v) == 1 else (v[0], v[1])

    alpha = None if args.any_alpha else (rng(args.alpha) if args.alpha is not None else args._default_alpha)
    return {"teff": rng(args.teff), "logg": rng(args.logg), "feh": rng(args.feh), "alpha_fe": alpha}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gsn_dask.grid.phoenix",
        description=(
            "PHOENIX-ACES-AGSS-COND-2011 HiRes spectra (Husser et al. 2013): download a sub-grid from "
            f"{DEFAULT_URL} (resumable, sha256 manifest), list local files, list grid nodes, or write "
            "small fixture grids in the same format. Build a training cube from a local grid with "
            "`gsn-dask grid phoenix ROOT ...`."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("download", help="download the WAVE file and a sub-grid (resumable)",
                       description="Download WAVE_PHOENIX-ACES-AGSS-COND-2011.fits and the spectra of a sub-grid into "
                       "DEST, keeping the server layout (DEST plays the part of HiResFITS/). Rerun to resume; "
                       "files are checked against DEST/MANIFEST.sha256. Each spectrum is ~6.3 MB.")
    p.add_argument("dest", type=Path, help="destination folder (the local HiResFITS root)")
    add_label_range_arguments(p)
    p.add_argument("--base-url", default=DEFAULT_URL,
                   help="server folder that holds WAVE_... and PHOENIX-ACES-AGSS-COND-2011/ (default: %(default)s)")
    p.add_argument("--workers", type=int, default=4,
                   help="parallel downloads (default: %(default)s; please be gentle with the server)")
    p.add_argument("--retries", type=int, default=4, help="retries per file for network errors (default: %(default)s)")
    p.add_argument("--backoff", type=float, default=2.0, help="first retry wait in s, doubling (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in s (default: %(default)s)")
    p.add_argument("--no-verify", action="store_true",
                   help="trust existing files listed in the manifest without hashing them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="only print the files that would be fetched")
    p.add_argument("--max-files", type=int, default=2000,
                   help="refuse selections of more spectra than this (default: %(default)s, ~12.6 GB)")

    p = sub.add_parser("list", help="list local spectra in a label range",
                       description="List local PHOENIX spectra with their labels.")
    p.add_argument("root", type=Path, help="local grid folder")
    add_label_range_arguments(p)
    p.add_argument("--check", action="store_true", help="also read every file (header/name check) and report bad ones")

    p = sub.add_parser("points", help="list the grid nodes (server paths) in a label range",
                       description="Print the server-relative path of every PHOENIX grid node in the range.")
    add_label_range_arguments(p)

    p = sub.add_parser("fixture", help="write a small fake grid in the PHOENIX format (tests, benchmarks)",
                       description="Write a fixture grid (blackbody + synthetic lines, NOT PHOENIX models) in the "
                       "exact PHOENIX file format and layout. Unset label options default to a small grid "
                       "(5000-6000 K, log g 4-5, [Fe/H] -1..0).")
    p.add_argument("dest", type=Path, help="destination folder (a fake HiResFITS root)")
    add_label_range_arguments(p)
    p.add_argument("--n-pix", type=int, default=20000,
                   help=f"pixels per spectrum (default %(default)s; {PHOENIX_NPIX} = full size)")
    p.add_argument("--wmin", type=float, default=3000.0, help="first wavelength, A (default %(default)s)")
    p.add_argument("--wmax", type=float, default=10000.0, help="last wavelength, A (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 some files failed, 2 usage error)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        ranges = label_ranges_from_args(args)
        if args.command == "points":
            for p in grid_points(**ranges):
                print(relative_path(p["teff"], p["logg"], p["feh"], p["alpha_fe"]))
            return 0
        if args.command == "list":
            files = list_grid(args.root, **ranges)
            for f in files:
                lab = parse_filename(f.name)
                print(f"{lab['teff']:7.0f} {lab['logg']:5.2f} {lab['feh']:+5.1f} {lab['alpha_fe']:+5.2f}  {f}")
            print(f"{len(files)} spectra", file=sys.stderr)
            if args.check:
                spectra = iter_spectra(args.root, **ranges)
                for _ in spectra:
                    pass
                for path, reason in spectra.bad:
                    print(f"BAD {reason}", file=sys.stderr)
                return 1 if spectra.bad else 0
            return 0
        if args.command == "fixture":
            kw = {k: v for k, v in ranges.items() if v is not None or k == "alpha_fe"}  # unset -> small default grid
            paths = write_fixture_grid(args.dest, n_pix=args.n_pix, wmin=args.wmin, wmax=args.wmax, progress=True, **kw)
            print(f"wrote {len(paths)} fixture spectra and {WAVE_FILENAME} under {args.dest}")
            return 0
        if args.command == "download":
            pts = grid_points(**ranges)
            if args.dry_run:
                print(WAVE_FILENAME)
                for p in pts:
                    print(relative_path(p["teff"], p["logg"], p["feh"], p["alpha_fe"]))
                print(f"{len(pts)} spectra (~{len(pts) * 6.3:.0f} MB) + {WAVE_FILENAME} (12.6 MB)", file=sys.stderr)
                return 0
            if len(pts) > args.max_files:
                print(f"error: the selection has {len(pts)} spectra (~{len(pts) * 6.3 / 1000:.1f} GB); narrow "
                      f"--teff/--logg/--feh/--alpha or raise --max-files", file=sys.stderr)
                return 2
            print(f"downloading {len(pts)} PHOENIX spectra (~{len(pts) * 6.3:.0f} MB) to {args.dest}", file=sys.stderr)
            report = download_grid(
                args.dest, points=pts, base_url=args.base_url, workers=args.workers, progress=not args.no_progress,
                verify=not args.no_verify, retries=args.retries, backoff=args.backoff, timeout=args.timeout,
            )
            print(report.summary(), file=sys.stderr)
            return 0 if report.ok else 1
    except PhoenixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
