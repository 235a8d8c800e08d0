"""PHOENIX HiRes grid: constants, errors, file and folder names, grid nodes and label selection."""
from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np

from ...labels import LABEL_UNITS  # defined once, in gsn_dask.labels


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
    """Base class of the errors of this package."""


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


