"""Writer of synthetic LAMOST LRS files in the published layouts (tests, demos, benchmarks)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits


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
    cards = _lrs_cards(
        Path(path).name, layout, obsid=obsid, ra=ra, dec=dec, snr_g=snr_g, snr_r=snr_r, z=z,
        lmjd=lmjd, planid=planid, spid=spid, fiberid=fiberid, data_v=data_v,
    )
    if layout.startswith("image"):
        cards += _image_wavelength_cards(wave, None if wavelength is not None else (log10_start, log10_step))
    for key, value in (extra_cards or {}).items():
        cards.append((key, value))
    build = _image_hdul if layout.startswith("image") else _bintable_hdul
    hdul = build(layout, cards, flux, ivar, andmask, ormask, wave)
    path = Path(path)
    hdul.writeto(path, overwrite=True)
    return path


def _lrs_cards(
    name: str,
    layout: str,
    *,
    obsid: int | None,
    ra: float,
    dec: float,
    snr_g: float,
    snr_r: float,
    z: float,
    lmjd: int,
    planid: str,
    spid: int,
    fiberid: int,
    data_v: str | None,
) -> list[tuple[str, Any]]:
    """The header cards of :func:`write_lrs_file` before the wavelength solution: file name,
    OBSID / DATA_V by release, position (deg), plan ids, redshift ``z`` and the S/N cards."""
    dr1 = layout == "image-dr1"
    cards: list[tuple[str, Any]] = [("FILENAME", name.removesuffix(".gz"))]
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
    return cards


def _image_wavelength_cards(wave: np.ndarray, log_linear: tuple[float, float] | None) -> list[tuple[str, Any]]:
    """Wavelength solution cards of the image layouts: log-linear ``(log10_start, log10_step)``
    (log10 Angstrom) when given, else a linear ``DC-FLAG = 0`` solution of ``wave`` (Angstrom;
    ValueError if ``wave`` is not linear)."""
    if log_linear is not None:
        log10_start, log10_step = log_linear
        return [
            ("NWORDER", 2), ("WFITTYPE", "LOG-LINEAR"), ("COEFF0", log10_start), ("COEFF1", log10_step),
            ("CRVAL1", log10_start), ("CD1_1", log10_step), ("CRPIX1", 1), ("CTYPE1", "LINEAR"), ("DC-FLAG", 1),
        ]
    step = float(wave[1] - wave[0])
    if not np.allclose(np.diff(wave), step, rtol=1e-9, atol=0):
        raise ValueError("image layouts need a log-linear (log10_start/step) or linear wavelength")
    return [("CRVAL1", float(wave[0])), ("CD1_1", step), ("CRPIX1", 1), ("DC-FLAG", 0)]


def _image_hdul(
    layout: str,
    cards: list[tuple[str, Any]],
    flux: np.ndarray,
    ivar: np.ndarray,
    andmask: np.ndarray,
    ormask: np.ndarray,
    wave: np.ndarray,
) -> fits.HDUList:
    """Primary image (5, n) float32: flux, ivar, subcontinuum (DR1) or wavelength (DR6), masks."""
    header = fits.Header()
    n = flux.size
    rows = np.zeros((5, n), np.float32)
    rows[0], rows[1], rows[3], rows[4] = flux, ivar, andmask, ormask
    if layout == "image-dr1":
        med = np.nanmedian(flux[np.isfinite(flux)]) if np.any(np.isfinite(flux)) else 1.0
        rows[2] = flux / (med if med else 1.0)
        header["EXTEN0"] = "Flux Inverse Subcontinuum Andmask Ormask"
    else:
        rows[2] = wave.astype(np.float32)
        header["EXTEN0"] = "Flux, Inverse, Wavelength, Andmask, Ormask"
    for k, v in cards:
        header[k] = v
    return fits.HDUList([fits.PrimaryHDU(rows, header=header)])


def _bintable_hdul(
    layout: str,
    cards: list[tuple[str, Any]],
    flux: np.ndarray,
    ivar: np.ndarray,
    andmask: np.ndarray,
    ormask: np.ndarray,
    wave: np.ndarray,
) -> fits.HDUList:
    """Empty primary (the cards) + extension ``COADD``: one row of vector columns
    (``bintable``) or one row per pixel with LOGLAM = log10(Angstrom) (``bintable-rows``)."""
    header = fits.Header()
    n = flux.size
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
    return fits.HDUList([fits.PrimaryHDU(header=header), table])
