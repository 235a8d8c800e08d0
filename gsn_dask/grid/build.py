"""Source spectra -> training cube: the one preparation path for every grid or library.

Each source spectrum (vacuum wavelength, flux, optional ivar, labels, source resolution) is

1. checked (finite flux, increasing wavelength, all labels present),
2. convolved to the LAMOST line-spread function (Gaussian, ``R = r_target``) where the source
   is sharper (:func:`~gsn_dask.grid.prepare.degrade_resolution`; where the source is already
   broader it is left alone and the cube records where, attr ``not_convolved_aa``),
3. rebinned flux-conservingly onto the run of LAMOST pixels (:func:`gsn_dask.cube.log_lambda_grid`)
   that the source covers (:func:`cube_wavelength`),
4. continuum-normalised with :func:`~gsn_dask.grid.prepare.continuum_normalise`,

and written to a spectra cube (``normalised = True``) with the labels and the provenance in
attrs. Sources without errors (MILES, PHOENIX) get a nominal, photon-noise-like error: S/N per
pixel = ``snr_nominal`` (100) at the star's median continuum level, scaling as sqrt(continuum)
(:func:`nominal_ivar`); pixels with non-positive source flux get ivar 0.

The work runs as ``dask.delayed`` tasks over batches of spectra: the synchronous scheduler for
small jobs (default), a ``LocalCluster`` with ``n_workers`` processes, or an existing cluster
(``scheduler="tcp://..."``). Completed batches are appended to the zarr store in input order,
so memory stays bounded by the tasks in flight. A bad source entry (unreadable file, NaNs,
missing labels, too little coverage) is skipped and reported; the rest goes on. The task
runner itself is :mod:`gsn_dask.grid.batch_runner` (``run_batches`` is re-exported here).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._version import __version__
from ..cube import DEFAULT_CHUNK_SIZE, _now, log_lambda_grid, make_spectra, open_spectra, write_spectra
from . import prepare as P
from .batch_runner import iter_batches, run_batches  # noqa: F401 - run_batches re-exported (grid.synth)

log = logging.getLogger(__name__)

#: At most this many skipped entries are listed in the cube attrs (all are counted).
MAX_LISTED_SKIPS = 2000


class BadSpectrum(ValueError):
    """A source spectrum cannot be prepared (the message says why)."""


@dataclasses.dataclass
class SourceSpectrum:
    """One source spectrum. ``wavelength`` in vacuum Angstrom (increasing), ``flux`` in any
    flux-density unit per Angstrom, ``ivar`` its inverse variance (None = no errors known).
    The source LSF is ``r_source`` (resolving power) or ``fwhm_source_aa`` (Angstrom, scalar
    or per pixel); neither = infinitely sharp (synthetic)."""

    star: str
    wavelength: np.ndarray
    flux: np.ndarray
    labels: Mapping[str, float]
    ivar: np.ndarray | None = None
    source: str = ""
    r_source: float | None = None
    fwhm_source_aa: float | np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How source spectra are turned into training spectra (stored in the cube attrs)."""

    r_target: float = 1800.0
    wmin: float = 3700.0
    wmax: float = 9100.0
    snr_nominal: float = 100.0
    normalisation: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(P.DEFAULT_NORMALISATION))
    #: cube pixels closer than this many target FWHM to a source edge are not used
    edge_margin_fwhm: float = 2.0
    #: a prepared spectrum needs at least this fraction of cube pixels with ivar > 0
    min_good_fraction: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["normalisation"] = dict(self.normalisation)
        return d


# ---------------------------------------------------------------------- grid
def cube_wavelength(source_min_aa: float, source_max_aa: float, config: PrepareConfig | None = None) -> np.ndarray:
    """The training cube's wavelength grid: the LAMOST log-linear pixels (vacuum A) within
    ``[config.wmin, config.wmax]`` whose pixels lie wholly inside the source coverage shrunk
    by ``edge_margin_fwhm`` target FWHM at each end (so the LSF convolution has no edge effects)."""
    cfg = config or PrepareConfig()
    grid = log_lambda_grid(cfg.wmin, cfg.wmax)
    edges = P.pixel_edges(grid)
    lo = source_min_aa * (1.0 + cfg.edge_margin_fwhm / cfg.r_target)
    hi = source_max_aa * (1.0 - cfg.edge_margin_fwhm / cfg.r_target)
    keep = (edges[:-1] >= lo) & (edges[1:] <= hi)
    if keep.sum() < 10:
        raise ValueError(
            f"source coverage {source_min_aa:.1f}-{source_max_aa:.1f} A leaves fewer than 10 LAMOST pixels "
            f"in {cfg.wmin:.0f}-{cfg.wmax:.0f} A"
        )
    return grid[keep]


# ---------------------------------------------------------------------- one spectrum
def prepare_spectrum(
    spec: SourceSpectrum, wave_out: np.ndarray, config: PrepareConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Degrade and rebin one source spectrum onto ``wave_out`` (not yet normalised).

    Returns ``(flux, ivar, not_convolved)`` on ``wave_out``: ``ivar`` is propagated from the
    source ivar, or for sources without errors a constant ``(snr_nominal / median flux)**2``
    (replaced after normalisation, see :func:`prepare_batch`); ``not_convolved`` is True where
    the source LSF was already broader than the target. Raises :class:`BadSpectrum`.
    """
    w = np.asarray(spec.wavelength, dtype=np.float64)
    f = np.asarray(spec.flux, dtype=np.float64)
    if w.ndim != 1 or f.shape != w.shape:
        raise BadSpectrum(f"wavelength {w.shape} and flux {f.shape} must be 1-D of the same length")
    if w.size < 10:
        raise BadSpectrum(f"only {w.size} pixels")
    if not np.all(np.diff(w) > 0):
        raise BadSpectrum("wavelength is not strictly increasing")
    iv = None if spec.ivar is None else np.asarray(spec.ivar, dtype=np.float64)
    if iv is not None and iv.shape != f.shape:
        raise BadSpectrum(f"ivar shape {iv.shape} differs from flux {f.shape}")
    # cut to the cube range plus room for the kernel (8 sigma of the target LSF + 2 pixels)
    pad = 8.0 / (config.r_target * P.FWHM_PER_SIGMA)
    i0 = max(int(np.searchsorted(w, wave_out[0] * (1 - pad))) - 2, 0)
    i1 = min(int(np.searchsorted(w, wave_out[-1] * (1 + pad))) + 2, w.size)
    w, f = w[i0:i1], f[i0:i1]
    iv = None if iv is None else iv[i0:i1]
    if w.size < 10:
        raise BadSpectrum(f"does not cover the cube range {wave_out[0]:.1f}-{wave_out[-1]:.1f} A")
    bad = ~np.isfinite(f)
    if iv is not None:
        bad &= iv > 0
    if bad.any():
        raise BadSpectrum(f"{int(bad.sum())} non-finite flux values in {w[0]:.1f}-{w[-1]:.1f} A")
    if iv is not None:
        iv = np.where(np.isfinite(iv) & np.isfinite(f), iv, 0.0)
        good = iv > 0
        if good.sum() < 10:
            raise BadSpectrum("fewer than 10 pixels with ivar > 0 in the cube range")
        # bad pixels: interpolate so the LSF convolution does not smear garbage into good pixels
        # (they keep ivar 0, and so do the output pixels they fall in)
        f = np.where(good, f, np.interp(w, w[good], f[good]))
    fwhm = spec.fwhm_source_aa
    if fwhm is not None and np.ndim(fwhm) == 1:
        fwhm = np.asarray(fwhm, dtype=np.float64)[i0:i1]
    g = P.degrade_resolution(w, f, r_target=config.r_target, r_source=spec.r_source, fwhm_source_aa=fwhm)
    f_out, iv_out = P.resample_flux_conserving(w, g, wave_out, iv)
    if iv is None:
        med = float(np.nanmedian(np.abs(f_out[iv_out > 0]))) if np.any(iv_out > 0) else 0.0
        if not med > 0:
            raise BadSpectrum("flux is zero everywhere in the cube range")
        # constant absolute weights for the continuum fit; non-positive flux is unphysical
        # for a noise-free source (MILES has a few such pixels at the blue end of cool stars)
        iv_out = np.where((iv_out > 0) & (f_out > 0), (config.snr_nominal / med) ** 2, 0.0)
    f_out = np.where(np.isfinite(f_out), f_out, 0.0)
    fwhm_out = None if fwhm is None or np.ndim(fwhm) == 0 else np.interp(wave_out, w, fwhm)
    broad = P.source_broader_mask(
        wave_out, r_target=config.r_target, r_source=spec.r_source, fwhm_source_aa=fwhm_out if fwhm_out is not None else fwhm
    )
    return f_out, iv_out, broad


def nominal_ivar(ivar_norm: np.ndarray, snr: float, cap: float = 4.0) -> np.ndarray:
    """Normalised ivar for sources without errors (rows of ``ivar_norm``, which must be a constant
    raw ivar times continuum^2, as :func:`prepare_spectrum` makes it).

    Photon-noise-like model: S/N per pixel = ``snr`` at the star's median continuum level and
    scales as sqrt(continuum), so ``ivar = snr**2 * c / median(c)`` (at most ``cap * snr**2``);
    the faint blue end of a cool star gets the low weight it deserves. Zero stays zero.
    """
    iv = np.asarray(ivar_norm, dtype=np.float64)
    c = np.sqrt(np.clip(iv, 0.0, None))
    out = np.zeros_like(iv)
    for i in range(iv.shape[0]):
        good = iv[i] > 0
        if good.any():
            rel = c[i] / np.median(c[i][good])
            out[i] = np.where(good, snr**2 * np.minimum(rel, cap), 0.0)
    return out


# ---------------------------------------------------------------------- one batch (a Dask task)
def prepare_batch(
    items: Sequence[Any],
    loader: Callable[[Any], SourceSpectrum] | None,
    wave_out: np.ndarray,
    config: PrepareConfig,
    label_names: Sequence[str],
) -> dict[str, Any]:
    """Prepare a batch: ``loader(item)`` (or the item itself, a :class:`SourceSpectrum`) for each
    item, then :func:`prepare_spectrum` and one vectorised continuum normalisation.

    Returns a dict with ``star``, ``source`` (lists), ``labels`` ({name: float array}),
    ``flux``/``ivar`` (n, n_pix) float32 (normalised), ``not_convolved`` (n_pix bool, OR over
    the batch), ``errors`` ([(item id, reason)]), ``n_in``. Never raises for a bad item.
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    stars: list[str] = []
    sources: list[str] = []
    labels: dict[str, list[float]] = {k: [] for k in label_names}
    fluxes, ivars, nominal = [], [], []
    errors: list[tuple[str, str]] = []
    not_conv = np.zeros(wave_out.size, dtype=bool)
    for item in items:
        ident = str(getattr(item, "star", None) or item)
        try:
            spec = item if loader is None else loader(item)
            ident = spec.star
            lab = {k: float(spec.labels.get(k, np.nan)) for k in label_names}
            missing = [k for k, v in lab.items() if not np.isfinite(v)]
            if missing:
                raise BadSpectrum(f"missing labels {missing}")
            f, iv, broad = prepare_spectrum(spec, wave_out, config)
        except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the run
            errors.append((ident, f"{type(exc).__name__}: {exc}"))
            continue
        stars.append(spec.star)
        sources.append(spec.source or spec.star)
        for k in label_names:
            labels[k].append(lab[k])
        fluxes.append(f)
        ivars.append(iv)
        nominal.append(spec.ivar is None)
        not_conv |= broad
    n_pix = wave_out.size
    out_f = np.zeros((len(stars), n_pix), dtype=np.float32)
    out_iv = np.zeros((len(stars), n_pix), dtype=np.float32)
    keep = np.ones(len(stars), dtype=bool)
    if stars:
        nf, niv = P.continuum_normalise(wave_out, np.array(fluxes), np.array(ivars), config.normalisation)
        nom = np.array(nominal)
        if nom.any():
            niv[nom] = nominal_ivar(niv[nom], config.snr_nominal)
        for i, star in enumerate(stars):
            good = niv[i] > 0
            if not np.all(np.isfinite(nf[i])) or good.mean() < config.min_good_fraction:
                errors.append((star, f"BadSpectrum: only {good.mean():.0%} usable pixels after normalisation"))
                keep[i] = False
        out_f[:] = nf
        out_iv[:] = niv
    return {
        "star": [s for s, k in zip(stars, keep) if k],
        "source": [s for s, k in zip(sources, keep) if k],
        "labels": {k: np.asarray(v, dtype=np.float32)[keep] for k, v in labels.items()},
        "flux": out_f[keep],
        "ivar": out_iv[keep],
        "not_convolved": not_conv,
        "errors": errors,
        "n_in": len(items),
        "task_seconds": time.perf_counter() - t_start,
        "task_cpu_seconds": time.process_time() - cpu_start,
    }


# ---------------------------------------------------------------------- driver
@dataclasses.dataclass
class BuildResult:
    """What :func:`build_training_cube` did."""

    path: Path
    n_input: int
    n_written: int
    skipped: list[tuple[str, str]]
    not_convolved_aa: list[tuple[float, float]]
    elapsed_s: float
    task_seconds: float = 0.0  # summed wall time inside the preparation tasks
    task_cpu_seconds: float = 0.0

    def open(self) -> xr.Dataset:
        return open_spectra(self.path)


def build_training_cube(
    items: Iterable[Any],
    out: str | Path,
    *,
    wavelength: np.ndarray,
    label_names: Sequence[str],
    loader: Callable[[Any], SourceSpectrum] | None = None,
    config: PrepareConfig | None = None,
    attrs: Mapping[str, Any] | None = None,
    total: int | None = None,
    batch_size: int = 32,
    scheduler: str | None = None,
    n_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Prepare source spectra and write a training cube (zarr) at ``out``.

    ``items``: keys for ``loader`` (read inside the tasks; e.g. file names) or
    :class:`SourceSpectrum` objects (``loader=None``; may be a generator, consumed as tasks
    free up). ``wavelength``: the cube grid (see :func:`cube_wavelength`). ``label_names``:
    labels every spectrum must carry (others are skipped). ``attrs``: provenance added to
    the cube (``source``, ``source_version``, ``air_to_vacuum``, ...). Bad entries are skipped
    and listed in attrs ``skipped`` (JSON) / ``n_skipped``; ``not_convolved_aa`` (JSON) says
    where the source was already broader than ``R = r_target``.
    """
    cfg = config or PrepareConfig()
    out = Path(out)
    wave_out = np.asarray(wavelength, dtype=np.float64)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use overwrite=True / --overwrite)")
    if total is None and isinstance(items, Sequence):
        total = len(items)
    t0 = time.perf_counter()
    base_attrs = _base_attrs(cfg, attrs)
    rows = _RowWriter(
        out, wave_out, label_names, chunk_size=chunk_size,
        resolution=f"R={cfg.r_target:g} Gaussian LSF (LAMOST LRS)", attrs=base_attrs,
    )
    for res in run_batches(
        prepare_batch,
        iter_batches(items, batch_size),
        (loader, wave_out, cfg, tuple(label_names)),
        scheduler=scheduler,
        n_workers=n_workers,
        total=total,
        progress=progress,
    ):
        rows.add(res)
    rows.flush()
    elapsed = time.perf_counter() - t0
    if not rows.written:
        reasons = "; ".join(f"{s}: {r}" for s, r in rows.skipped[:5])
        raise ValueError(f"no spectrum could be prepared ({rows.n_input} input entries; e.g. {reasons})")
    ranges = _finish_store(rows, cfg, base_attrs, elapsed)
    return BuildResult(out, rows.n_input, rows.n_written, rows.skipped, ranges, elapsed, rows.task_s, rows.task_cpu)


def _base_attrs(cfg: PrepareConfig, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The cube attrs of :func:`build_training_cube` known before any spectrum: target
    resolution, normalisation, preparation config, ivar model and LSF, then ``attrs``."""
    base_attrs = {
        "source": "",
        "r_target": float(cfg.r_target),
        "normalisation": json.dumps(dict(cfg.normalisation), sort_keys=True),
        "prepare_config": json.dumps(cfg.to_dict(), sort_keys=True),
        "ivar_model": (
            f"sources without errors: nominal photon-noise-like S/N = {cfg.snr_nominal:g} per pixel at the "
            f"median continuum, scaling as sqrt(continuum) (normalised ivar = {cfg.snr_nominal:g}^2 * c/median(c), "
            f"capped at 4x); non-positive source flux -> ivar 0; sources with errors: propagated ivar * continuum^2"
        ),
        "lsf": f"Gaussian in ln(lambda), R = {cfg.r_target:g} (FWHM = lambda / R)",
        "gsn_dask_version": __version__,
    }
    base_attrs.update(dict(attrs or {}))
    return base_attrs


class _RowWriter:
    """Takes the results of :func:`prepare_batch` in input order, drops repeated star ids, keeps
    the counts, skips and not-convolved pixels, and writes the rows one zarr chunk at a time
    (the first write replaces an existing store at ``out``)."""

    def __init__(
        self,
        out: Path,
        wave_out: np.ndarray,
        label_names: Sequence[str],
        *,
        chunk_size: int,
        resolution: str,
        attrs: Mapping[str, Any],
    ):
        self.out = out
        self.wave_out = wave_out
        self.label_names = label_names
        self.chunk_size = chunk_size
        self.resolution = resolution
        self.attrs = attrs
        self.n_input = self.n_written = 0
        self.task_s = self.task_cpu = 0.0
        self.skipped: list[tuple[str, str]] = []
        self.seen: set[str] = set()
        self.not_conv = np.zeros(wave_out.size, dtype=bool)
        self.written = False
        self.buf: list[dict[str, Any]] = []  # kept rows waiting to be written (flushed per zarr chunk)

    def add(self, res: dict[str, Any]) -> None:
        """Count one batch result, keep its new stars and write a chunk when one is full."""
        self.n_input += res["n_in"]
        self.task_s += res["task_seconds"]
        self.task_cpu += res["task_cpu_seconds"]
        self.skipped.extend(res["errors"])
        for star, reason in res["errors"]:
            log.warning("skipped %s: %s", star, reason)
        for i, star in enumerate(res["star"]):
            if star in self.seen:
                self.skipped.append((star, "duplicate star id"))
                log.warning("skipped %s: duplicate star id", star)
                continue
            self.seen.add(star)
            self.buf.append({
                "star": star,
                "source": res["source"][i],
                "flux": res["flux"][i],
                "ivar": res["ivar"][i],
                "labels": {k: res["labels"][k][i] for k in self.label_names},
            })
            self.n_written += 1
        self.not_conv |= res["not_convolved"]
        if len(self.buf) >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (append after the first write)."""
        buf = self.buf
        if not buf:
            return
        ds = make_spectra(
            [r["star"] for r in buf],
            self.wave_out,
            np.stack([r["flux"] for r in buf]),
            np.stack([r["ivar"] for r in buf]),
            labels={k: np.array([r["labels"][k] for r in buf], dtype=np.float32) for k in self.label_names},
            source=[r["source"] for r in buf],
            normalised=True,
            flux_unit="normalised",
            resolution=self.resolution,
            attrs=self.attrs,
        )
        if not self.written and self.out.exists():
            shutil.rmtree(self.out) if self.out.is_dir() else self.out.unlink()
        write_spectra(ds, self.out, chunk_size=self.chunk_size, append=self.written)
        self.written = True
        buf.clear()


def _finish_store(
    rows: _RowWriter, cfg: PrepareConfig, base_attrs: Mapping[str, Any], elapsed: float
) -> list[tuple[float, float]]:
    """Write the counts, skips, not-convolved ranges (Angstrom), build time (s) and history to
    the store attrs, log the skips; return the not-convolved ranges."""
    wave_out, n_input, n_written, skipped = rows.wave_out, rows.n_input, rows.n_written, rows.skipped
    ranges = P.mask_ranges(wave_out, rows.not_conv)
    final = {
        "n_input": n_input,
        "n_written": n_written,
        "n_skipped": len(skipped),
        "skipped": json.dumps(skipped[:MAX_LISTED_SKIPS]),
        "not_convolved_aa": json.dumps([[round(a, 2), round(b, 2)] for a, b in ranges]),
        "build_seconds": round(elapsed, 2),
        "history": (
            f"{_now()} gsn-dask {__version__} grid: {n_written} of {n_input} spectra from "
            f"{base_attrs.get('source', '?')} prepared (R={cfg.r_target:g}, {wave_out.size} px "
            f"{wave_out[0]:.1f}-{wave_out[-1]:.1f} A, normalised)"
        ),
    }
    _update_store_attrs(rows.out, final)
    if skipped:
        log.warning("%d of %d entries skipped (listed in the cube attrs 'skipped')", len(skipped), n_input)
    if ranges:
        log.info("source broader than R=%g (not convolved) at %s A", cfg.r_target, ranges)
    return ranges


def library_attrs(
    source: str,
    *,
    version: str,
    archive: str,
    resolution: str,
    medium: str,
    air_to_vacuum: str,
    n_files: int,
    **extra: Any,
) -> dict[str, Any]:
    """The provenance attrs of a stellar-library training cube (``attrs`` of
    :func:`build_training_cube`): ``source``, ``source_version``, ``source_archive``,
    ``source_resolution``, ``source_medium`` ("air" or "vacuum"), ``air_to_vacuum`` (the
    conversion applied), ``n_library_files``, then the library's own ``extra`` attrs."""
    return {
        "source": source,
        "source_version": version,
        "source_archive": archive,
        "source_resolution": resolution,
        "source_medium": medium,
        "air_to_vacuum": air_to_vacuum,
        "n_library_files": n_files,
        **extra,
    }


def _update_store_attrs(path: Path, attrs: Mapping[str, Any]) -> None:
    """Set dataset attrs of a zarr store in place."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    new = dict(attrs)
    if "history" in new and group.attrs.get("history"):
        new["history"] = f"{group.attrs['history']}\n{new['history']}"
    group.attrs.update(new)


def nominal_label_ranges(ds: xr.Dataset) -> dict[str, tuple[float, float]]:
    """(min, max) of every ``label_<name>`` in a cube (for reports)."""
    from ..cube import LABEL_UNITS, label_names

    names = sorted(label_names(ds), key=lambda n: (list(LABEL_UNITS).index(n) if n in LABEL_UNITS else 99, n))
    out = {}
    for name in names:
        vals = np.asarray(ds[f"label_{name}"].values, dtype=np.float64)
        out[name] = (float(np.nanmin(vals)), float(np.nanmax(vals))) if np.isfinite(vals).any() else (math.nan, math.nan)
    return out


# ---------------------------------------------------------------------- PHOENIX (grid from gsn_dask.grid.phoenix)
_PHOENIX_WAVE_CACHE: dict[str, np.ndarray] = {}


@dataclasses.dataclass
class PhoenixLoader:
    """``loader(path) -> SourceSpectrum`` for PHOENIX HiRes files (read inside the Dask task;
    the WAVE file is read once per process). Uses :mod:`gsn_dask.grid.phoenix`."""

    root: str
    r_source: float | None = None

    def __call__(self, path: str | Path) -> SourceSpectrum:
        from . import phoenix

        wave = _PHOENIX_WAVE_CACHE.get(self.root)
        if wave is None:
            wave = _PHOENIX_WAVE_CACHE.setdefault(self.root, phoenix.read_wavelength(self.root))
        labels, flux = phoenix.read_spectrum(path)
        if flux.size != wave.size:
            raise BadSpectrum(f"{path}: {flux.size} pixels but the WAVE file has {wave.size}")
        return SourceSpectrum(
            star=phoenix.spectrum_id(labels),
            wavelength=wave,
            flux=flux,
            labels=labels,
            source=str(path),
            r_source=self.r_source,
        )


def build_phoenix_cube(
    root: str | Path,
    out: str | Path,
    *,
    teff: Any = None,
    logg: Any = None,
    feh: Any = None,
    alpha_fe: Any = 0.0,
    config: PrepareConfig | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overwrite: bool = False,
    scheduler: str | None = None,
    n_workers: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> BuildResult:
    """Training cube from a local PHOENIX-ACES HiRes grid (``gsn_dask.grid.phoenix`` layout):
    the files in the label ranges (``phoenix.list_grid``) are read, degraded to ``R = r_target``,
    rebinned onto the LAMOST grid and normalised inside the Dask tasks. Labels: teff, logg,
    feh, alpha_fe. Unreadable files are skipped and listed in the cube attrs."""
    from . import phoenix

    cfg = config or PrepareConfig()
    root = Path(root)
    files = phoenix.list_grid(root, teff=teff, logg=logg, feh=feh, alpha_fe=alpha_fe)
    if not files:
        raise ValueError(f"no PHOENIX spectra under {root} for teff={teff}, logg={logg}, feh={feh}, alpha_fe={alpha_fe}")
    wave = phoenix.read_wavelength(root)
    grid = cube_wavelength(float(wave[0]), float(wave[-1]), cfg)
    r_src = phoenix.phoenix_source_resolution(float(grid[0]), float(grid[-1]), wavelength=wave)
    attrs = library_attrs(
        phoenix.GRID_NAME,
        version=f"{phoenix.GRID_NAME} HiRes (Husser et al. 2013, A&A 553, A6)",
        archive=str(root),
        resolution=f"synthetic; sampling R >= {r_src:.0f} in the cube range",
        medium="vacuum",
        air_to_vacuum="none (PHOENIX wavelengths are in vacuum)",
        n_files=len(files),
        label_selection=json.dumps({"teff": teff, "logg": logg, "feh": feh, "alpha_fe": alpha_fe}, default=str),
    )
    return build_training_cube(
        [str(f) for f in files],
        out,
        wavelength=grid,
        label_names=phoenix.LABELS,
        loader=PhoenixLoader(str(root), r_source=r_src),
        config=cfg,
        attrs=attrs,
        batch_size=batch_size,
        scheduler=scheduler,
        n_workers=n_workers,
        chunk_size=chunk_size,
        overwrite=overwrite,
        progress=progress,
    )
