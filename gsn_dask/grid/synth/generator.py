"""One synthetic spectrum from its labels, and the resumable per-spectrum store.

labels (Teff K, log g dex, [Fe/H] dex, [alpha/Fe] dex) -> Kurucz atmosphere interpolated at
(Teff, log g, [M/H] = [Fe/H], [alpha/Fe] clipped to 0..0.4) -> Turbospectrum in air over the cube
range plus a margin (Turbospectrum's METALLICITY = [Fe/H] and ALPHA/Fe = [alpha/Fe], which scales
O, Ne, Mg, Si, S, Ar, Ca, Ti) -> air-to-vacuum wavelengths (:func:`gsn_dask.grid.prepare.air_to_vacuum`)
-> the LAMOST LSF and flux-conserving rebinning onto the LAMOST grid
(:func:`gsn_dask.grid.build.prepare_spectrum`, the path of every training cube). The store keeps
this rebinned, not yet normalised flux (``raw``); the continuum normalisation is applied when the
cube is written (:mod:`gsn_dask.grid.synth.cube`), as for every other training cube.

Each spectrum is keyed by its labels, the generator settings and the sha256 of the three
registry inputs (:func:`spectrum_key`) and stored as ``<store>/spectra/<key>.npz``
(``allow_pickle=False``); a finished key is never recomputed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import resource
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import prepare as P
from ..build import PrepareConfig, SourceSpectrum, cube_wavelength, prepare_spectrum
from . import atmospheres, linelists, turbospectrum
from .sources import ARCHIVES

log = logging.getLogger(__name__)

LABELS = ("teff", "logg", "feh", "alpha_fe")
#: each run of a split synthesis extends this far (A) past the join, so lines near it are in both
JOIN_OVERLAP_AA = 10.0
GENERATOR_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Synthesis settings (part of every spectrum's key).

    ``wmin``/``wmax``: cube range, vacuum A; ``step``: Turbospectrum wavelength step (A), and
    ``blue_step`` below ``blue_until`` (vacuum A; two runs joined there with :data:`JOIN_OVERLAP_AA`
    of overlap; None = one run at ``step``): the blue is crowded with lines and needs a finer step;
    ``prune_dex``: line-strength cut of :func:`linelists.prune` (None = all lines);
    ``n_depth``: atmosphere layers (evenly in log tau_Ross; the Kurucz decks have 72);
    microturbulence ``vmicro = clip(vmic_a + vmic_b * logg, vmic_min, vmic_max)`` km/s
    (default 2.478 - 0.325 log g, the APOGEE DR13 giant relation, clipped to 0.5..3)."""

    wmin: float = 3700.0
    wmax: float = 9100.0
    step: float = 0.05
    blue_step: float | None = None
    blue_until: float = 4600.0
    prune_dex: float | None = None
    r_target: float = 1800.0
    snr_nominal: float = 100.0
    vmic_a: float = 2.478
    vmic_b: float = -0.325
    vmic_min: float = 0.5
    vmic_max: float = 3.0
    n_depth: int = 72

    def vmicro(self, logg: float) -> float:
        return float(np.clip(self.vmic_a + self.vmic_b * logg, self.vmic_min, self.vmic_max))

    def prepare_config(self) -> PrepareConfig:
        return PrepareConfig(r_target=self.r_target, wmin=self.wmin, wmax=self.wmax, snr_nominal=self.snr_nominal)

    def synth_range_vacuum(self) -> tuple[float, float]:
        """Synthesis range (vacuum A): the cube range plus 3 target FWHM at each end."""
        return self.wmin * (1.0 - 3.0 / self.r_target), self.wmax * (1.0 + 3.0 / self.r_target)

    def segments(self) -> list[tuple[float, float, float]]:
        """Turbospectrum runs as ``(lo, hi, step)``, air A (with the overlap at a join)."""
        lo, hi = (float(x) for x in P.vacuum_to_air(np.array(self.synth_range_vacuum())))
        if self.blue_step is None or not lo < float(P.vacuum_to_air(np.array(self.blue_until))) < hi:
            return [(lo, hi, self.step)]
        join = float(P.vacuum_to_air(np.array(self.blue_until)))
        return [(lo, join + JOIN_OVERLAP_AA, self.blue_step), (join - JOIN_OVERLAP_AA, hi, self.step)]

    def join_air(self) -> float:
        return float(P.vacuum_to_air(np.array(self.blue_until)))

    def grid(self) -> np.ndarray:
        """The cube's LAMOST pixels (vacuum A)."""
        lo, hi = self.synth_range_vacuum()
        return cube_wavelength(lo, hi, self.prepare_config())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def spectrum_key(labels: Mapping[str, float], config: SynthConfig) -> str:
    """Stable id of a spectrum: sha256 of its labels (rounded to 1e-4), the settings, the
    registry inputs' sha256 and :data:`GENERATOR_VERSION` (first 20 hex digits)."""
    spec = {
        "labels": {k: round(float(labels[k]), 4) for k in LABELS},
        "config": config.to_dict(),
        "inputs": {a.requirement: a.sha256 for a in ARCHIVES},
        "generator": GENERATOR_VERSION,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


@dataclasses.dataclass
class Context:
    """What a worker needs once per batch: the built Turbospectrum, the line lists, the grid."""

    inst: turbospectrum.Installation
    linelists: list[list[Path]]  # per segment
    atm_grid: atmospheres.KuruczGrid
    config: SynthConfig
    wave_out: np.ndarray

    @classmethod
    def create(cls, config: SynthConfig, cache_dir: str | Path | None = None) -> Context:
        inst = turbospectrum.build(cache_dir)
        lists = []
        for lo_air, hi_air, _ in config.segments():
            paths, counts = linelists.prepared_linelists(inst.ges_linelist, lo_air, hi_air, config.prune_dex, cache_dir)
            lists.append([p for p in paths if counts.get(p.name, 0) > 0] + [inst.data / turbospectrum.HLINE_FILE])
        grid = atmospheres.load_grid(None if cache_dir is None else str(cache_dir))
        return cls(inst, lists, grid, config, config.grid())


def synthesise(labels: Mapping[str, float], ctx: Context) -> tuple[np.ndarray, np.ndarray, str]:
    """Turbospectrum spectrum at ``labels``: ``(wave_vacuum A, flux erg/s/cm^2/A, atmosphere method)``."""
    cfg = ctx.config
    teff, logg, feh, alpha = (float(labels[k]) for k in LABELS)
    atm = atmospheres.interpolate(ctx.atm_grid, teff, logg, feh, alpha, cfg.n_depth)
    vmic = cfg.vmicro(logg)
    model = atmospheres.kurucz_text(atm, vmic)
    segs = [(turbospectrum.SynthRequest(lo, hi, step, feh, alpha, vmic), lists)
            for (lo, hi, step), lists in zip(cfg.segments(), ctx.linelists)]
    runs = turbospectrum.run(ctx.inst, model, segs)
    waves, fluxes = [w for w, _, _ in runs], [f for _, f, _ in runs]
    if len(waves) == 2:  # join: the blue run below the join, the red run from it on
        join = cfg.join_air()
        kb, kr = waves[0] < join, waves[1] >= join
        waves, fluxes = [waves[0][kb], waves[1][kr]], [fluxes[0][kb], fluxes[1][kr]]
    return P.air_to_vacuum(np.concatenate(waves)), np.concatenate(fluxes), atm.method


def degrade(wave_vac: np.ndarray, flux: np.ndarray, ctx: Context, star: str = "synth") -> np.ndarray:
    """The LAMOST LSF + rebinning of :func:`gsn_dask.grid.build.prepare_spectrum` (not normalised)."""
    spec = SourceSpectrum(star=star, wavelength=wave_vac, flux=flux, labels={}, r_source=None)
    raw, _, _ = prepare_spectrum(spec, ctx.wave_out, ctx.config.prepare_config())
    return raw


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def make_record(labels: Mapping[str, float], ctx: Context) -> dict[str, Any]:
    """Synthesise and degrade one spectrum; the record stored per spectrum."""
    t0, c0 = time.perf_counter(), _child_cpu()
    wave, flux, method = synthesise(labels, ctx)
    t1, c1 = time.perf_counter(), _child_cpu()
    raw = degrade(wave, flux, ctx)
    return {
        "key": spectrum_key(labels, ctx.config),
        "labels": np.array([float(labels[k]) for k in LABELS]),
        "raw": raw,
        "wavelength_range": np.array([ctx.wave_out[0], ctx.wave_out[-1], ctx.wave_out.size], dtype=np.float64),
        "atmosphere": method,
        "synth_seconds": t1 - t0,
        "synth_cpu_seconds": c1 - c0,
        "degrade_seconds": time.perf_counter() - t1,
    }


# ---------------------------------------------------------------------- the store
def record_path(store: str | Path, key: str) -> Path:
    return Path(store) / "spectra" / f"{key}.npz"


def save_record(store: str | Path, rec: Mapping[str, Any]) -> Path:
    """Write one record atomically (``<store>/spectra/<key>.npz``, no pickles)."""
    path = record_path(store, rec["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{rec['key']}.{os.getpid()}.tmp.npz")
    arrays = {k: (np.asarray(v) if not isinstance(v, str) else np.array(v)) for k, v in rec.items()}
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_record(path: str | Path) -> dict[str, Any]:
    """Read a stored record (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as f:
        out: dict[str, Any] = {k: f[k] for k in f.files}
    for k in ("key", "atmosphere"):
        out[k] = str(out[k])
    for k in ("synth_seconds", "synth_cpu_seconds", "degrade_seconds"):
        out[k] = float(out[k])
    return out


def finished_keys(store: str | Path) -> set[str]:
    """Keys with a record in the store."""
    folder = Path(store) / "spectra"
    return {p.name[:-4] for p in folder.glob("*.npz") if not p.name.startswith(".")} if folder.is_dir() else set()


def synth_batch(
    points: Sequence[Mapping[str, float]], store: str, config: SynthConfig, skip: frozenset[str] = frozenset(),
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """A Dask task: synthesise every point whose key is not in ``skip`` or the store; records are
    written one by one (so a stop loses at most the spectrum in progress). Never raises for one
    bad point (listed in ``errors``)."""
    ctx = Context.create(config, cache_dir)
    done = finished_keys(store)
    n_new, errors, seconds, cpu = 0, [], [], []
    for p in points:
        key = spectrum_key(p, config)
        if key in skip or key in done:
            continue
        try:
            rec = make_record(p, ctx)
        except Exception as exc:  # noqa: BLE001 - one failed synthesis must not stop the build
            errors.append((key, f"{type(exc).__name__}: {exc}"))
            log.warning("synthesis failed for %s: %s", dict(p), exc)
            continue
        save_record(store, rec)
        n_new += 1
        seconds.append(rec["synth_seconds"])
        cpu.append(rec["synth_cpu_seconds"])
    return {"n_in": len(points), "n_new": n_new, "errors": errors, "synth_seconds": seconds, "synth_cpu_seconds": cpu}


def default_store() -> Path:
    """``$GSN_DASK_SYNTH_STORE`` or ``<cache>/synth/grid``."""
    env = os.environ.get("GSN_DASK_SYNTH_STORE")
    if env:
        return Path(env)
    from .sources import cache_root

    return cache_root() / "grid"


def rms(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference (for the cost benchmarks)."""
    return float(math.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))
