"""Small look-alike PHOENIX files for tests and benchmarks: a toy wavelength grid, line
lists and fluxes (erg/s/cm^2/cm) with the real file layout and header keywords."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .names import (
    FLUX_UNIT,
    PHOENIX_NPIX,
    WAVE_FILENAME,
    LabelRange,
    format_filename,
    grid_points,
    relative_path,
)



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


