"""LAMOST LRS FITS files -> spectra cube (zarr), read in parallel with Dask.

:func:`ingest` is the driver behind ``gsn-dask ingest``:

1. find the files (``*.fits``, ``*.fits.gz``, ``*.fit``, ``*.fits.bz2``; directories optionally
   recursive);
2. read them in **batches of files per task** (:func:`read_batch`, run in-process for small
   inputs or ``n_workers=0``, else on a Dask ``LocalCluster`` / an existing scheduler);
3. consume the batches **in input order** (a sliding window of tasks in flight), so the star
   order of the cube never depends on the scheduling; resolve duplicate star ids; attach
   reference labels from a CSV; write the cube with :func:`gsn_dask.cube.write_spectra` in
   blocks of whole zarr chunks (memory stays bounded for any number of files);
4. save the rejects table ``<cube>.rejects.csv`` next to the cube (columns ``file``, ``code``,
   ``reason``; appended to with ``append=True``) and return an :class:`IngestReport`.

Duplicate rule: spectra with the same star id (same OBSID, or same lmjd/plan/spectrograph/fiber
for files without OBSID) are the same observation; the one with the highest ``snr`` (g band; NaN
counts as lowest) is kept, ties keep the first in input order; the other is rejected with code
``duplicate`` and reason ``duplicate of <kept file>``. With ``append=True`` a star id already in
the cube is rejected (``duplicate of <file> already in <cube>``); the cube is never rewritten.

Labels: see :class:`LabelTable` (strict match, NaN when unmatched).
"""
from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .._version import __version__
from ..cube import (
    DEFAULT_CHUNK_SIZE,
    CubeSchemaError,
    check_output_path,
    label_names,
    log_lambda_grid,
    make_spectra,
    open_spectra,
    write_spectra,
)
from .lamost import DEFAULT_MIN_COVERAGE, LamostSpectrum, RejectedFile, TargetGrid, read_lrs

log = logging.getLogger(__name__)

#: Below this many files (and with n_workers=None) reading runs in-process: one process reads
#: ~1000-1400 LRS files/s (benchmarks/ingest.py) while starting a LocalCluster costs 2-5 s, so a
#: cluster only pays off for a few thousand files.
IN_PROCESS_BELOW = 1000
#: File name endings picked up in directories (case-insensitive).
FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz", ".fits.bz2")
#: Extra per-star variables written by ingest (besides the schema's).
EXTRA_VARS = ("snr_g", "snr_r", "obsid")


# ------------------------------------------------------------------------ file discovery
def _is_fits_name(p: Path) -> bool:
    n = p.name.lower()
    return any(n.endswith(s) for s in FITS_SUFFIXES)


def find_spectra_files(
    paths: Iterable[str | Path], *, recursive: bool = False
) -> tuple[list[Path], list[tuple[str, str, str]]]:
    """Expand files and directories into a list of FITS files (directories: sorted, matching
    :data:`FITS_SUFFIXES`; explicit files are taken whatever their name). Returns
    ``(files, missing)``, ``missing`` as rejects rows ``(path, "not found", reason)``.
    Each file appears once (first occurrence)."""
    files: list[Path] = []
    missing: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(q for q in it if q.is_file() and _is_fits_name(q))
        elif p.exists():
            found = [p]
        else:
            missing.append((str(p), "not found", f"no such file or directory: {p}"))
            continue
        for q in found:
            key = os.path.normpath(os.path.abspath(q))  # no syscalls (resolve() stats every file)
            if key not in seen:
                seen.add(key)
                files.append(q)
    return files, missing


# ------------------------------------------------------------------------ worker task
def read_batch(
    paths: Sequence[str], wavelength: np.ndarray, min_coverage: float = DEFAULT_MIN_COVERAGE
) -> dict[str, Any]:
    """Read a batch of files onto ``wavelength`` (runs on a Dask worker; never raises).

    Returns ``{"spectra": [LamostSpectrum, ...], "rejects": [(path, code, reason), ...],
    "seconds": float}``; ``spectra`` keep input order.
    """
    t0 = time.perf_counter()
    c0 = time.thread_time()
    grid = TargetGrid.from_wavelength(wavelength)
    spectra: list[LamostSpectrum] = []
    rejects: list[tuple[str, str, str]] = []
    for path in paths:
        try:
            spectra.append(read_lrs(path, grid, min_coverage=min_coverage))
        except RejectedFile as exc:
            rejects.append((str(path), exc.code, exc.reason))
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
            rejects.append((str(path), "error", f"{type(exc).__name__}: {exc}"))
    return {
        "spectra": spectra,
        "rejects": rejects,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.thread_time() - c0,
    }


# ------------------------------------------------------------------------ labels
_LABEL_COLUMNS = {
    "teff": ("teff", "label_teff"),
    "logg": ("logg", "label_logg"),
    "feh": ("feh", "fe_h", "[fe/h]", "label_feh"),
    "alpha_fe": ("alpha_fe", "alpha_m", "[alpha/fe]", "[a/fe]", "label_alpha_fe"),
}
_CHECK_COLUMNS = ("lmjd", "planid", "spid", "fiberid")


def _norm_name(name: str) -> str:
    n = Path(str(name).strip()).name
    for suffix in (".gz", ".bz2"):
        if n.lower().endswith(suffix):
            n = n[: -len(suffix)]
    return n


class LabelTable:
    """Reference labels from a CSV, matched to spectra strictly.

    Matching: by ``obsid`` when the spectrum has an OBSID and the CSV an ``obsid`` column, else
    by file name (column ``filename``; compared without directory and ``.gz``). A matched row is
    used only if every one of the columns ``lmjd``, ``planid``, ``spid``, ``fiberid`` that the CSV
    has agrees with the spectrum's header (strict match; e.g. 117 of the 131 DR1 files named in
    the shared LASP table). Label columns (case-insensitive): ``teff``, ``logg``, ``feh`` (or
    ``fe_h``), ``alpha_fe`` (or ``alpha_m``); values <= -9990 are NaN. Unmatched -> NaN labels.
    """

    def __init__(self, df: pd.DataFrame, source: str = ""):
        self.source = source
        lower = {str(c).strip().lower(): c for c in df.columns}
        self.columns: dict[str, Any] = {}
        for label, candidates in _LABEL_COLUMNS.items():
            for cand in candidates:
                if cand in lower:
                    self.columns[label] = lower[cand]
                    break
        if not self.columns:
            raise ValueError(
                f"labels table {source} has none of the label columns teff, logg, feh, alpha_fe "
                f"(columns: {list(df.columns)[:12]}...)"
            )
        if "filename" not in lower and "obsid" not in lower:
            raise ValueError(f"labels table {source} needs a 'filename' or an 'obsid' column to match spectra")
        self.labels = list(self.columns)
        values = np.column_stack([pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in self.columns.values()])
        values[~np.isfinite(values) | (values <= -9990)] = np.nan
        self.values = values.astype(np.float32)
        self.check = {c: df[lower[c]].to_numpy() for c in _CHECK_COLUMNS if c in lower}
        self.by_obsid: dict[int, int] = {}
        if "obsid" in lower:
            ob = pd.to_numeric(df[lower["obsid"]], errors="coerce").to_numpy()
            for i, o in enumerate(ob):
                if np.isfinite(o):
                    self.by_obsid.setdefault(int(o), i)
        self.by_name: dict[str, list[int]] = collections.defaultdict(list)
        if "filename" in lower:
            for i, name in enumerate(df[lower["filename"]].to_numpy()):
                if isinstance(name, str) and name.strip():
                    self.by_name[_norm_name(name)].append(i)

    @classmethod
    def from_csv(cls, path: str | Path) -> "LabelTable":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"labels table not found: {path}")
        return cls(pd.read_csv(path, low_memory=False), str(path))

    def _agrees(self, i: int, spec: LamostSpectrum) -> bool:
        for col, vals in self.check.items():
            v = vals[i]
            if col == "planid":
                if not isinstance(v, str) or v.strip() != spec.planid:
                    return False
            else:
                mine = getattr(spec, col)
                try:
                    fv = float(v)
                except (TypeError, ValueError):
                    return False
                if not math.isfinite(fv) or int(fv) != mine:
                    return False
        return True

    def match(self, spec: LamostSpectrum) -> tuple[np.ndarray | None, str]:
        """``(labels (n_label,) float32 or None, status)``, status ``"strict"``, ``"mismatch"``
        (a row names this spectrum but is another observation) or ``"none"``."""
        candidates: list[int] = []
        if spec.obsid >= 0 and spec.obsid in self.by_obsid:
            candidates.append(self.by_obsid[spec.obsid])
        candidates += self.by_name.get(_norm_name(spec.source), [])
        if not candidates:
            return None, "none"
        for i in candidates:
            if self._agrees(i, spec):
                return self.values[i], "strict"
        return None, "mismatch"


# ------------------------------------------------------------------------ report
@dataclass
class IngestReport:
    """What :func:`ingest` did."""

    out: Path
    rejects_path: Path
    n_files: int = 0
    n_ingested: int = 0
    n_resampled: int = 0
    n_labelled: int = 0
    n_label_mismatch: int = 0
    engine: str = "in-process"
    n_workers: int = 1
    seconds: float = 0.0
    read_seconds: float = 0.0  #: wall time inside the reading tasks (summed over tasks)
    read_cpu_seconds: float = 0.0  #: CPU time of the reading tasks (summed)
    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["file", "code", "reason"]))

    @property
    def n_rejected(self) -> int:
        return int(len(self.rejects))

    def reject_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.rejects["code"].value_counts().items()} if len(self.rejects) else {}

    def summary(self) -> str:
        rate = self.n_files / self.seconds if self.seconds > 0 else float("nan")
        lines = [
            f"ingested {self.n_ingested} of {self.n_files} files into {self.out} "
            f"({self.engine}, {self.seconds:.1f} s, {rate:.0f} files/s)",
            f"  on the grid pixel for pixel: {self.n_ingested - self.n_resampled}, resampled: {self.n_resampled}",
        ]
        if self.n_labelled or self.n_label_mismatch:
            lines.append(
                f"  reference labels: {self.n_labelled} strict matches, "
                f"{self.n_label_mismatch} rows naming the file but another observation (ignored)"
            )
        lines.append(f"  rejected: {self.n_rejected} (table: {self.rejects_path})")
        for code, n in self.reject_counts().items():
            lines.append(f"    {n:6d}  {code}")
        return "\n".join(lines)


def rejects_path_for(out: str | Path) -> Path:
    """``<cube>.rejects.csv`` next to the cube (``cube.zarr`` -> ``cube.zarr.rejects.csv``)."""
    out = Path(out)
    return out.with_name(out.name + ".rejects.csv")


# ------------------------------------------------------------------------ writer
@dataclass(slots=True)
class _Kept:
    snr: float
    source: str
    where: str  # "buf" or "store"
    index: int  # buffer index or store row


class _CubeWriter:
    """Buffers accepted spectra in order and writes whole zarr chunks (append after the first)."""

    def __init__(
        self,
        out: Path,
        grid: TargetGrid,
        *,
        chunk_size: int,
        label_names: list[str],
        labels: LabelTable | None,
        existing: xr.Dataset | None,
        overwrite: bool,
        flush_rows: int,
        attrs: dict[str, Any],
    ):
        self.out = out
        self.grid = grid
        self.chunk_size = chunk_size
        self.label_names = label_names
        self.labels = labels
        self.overwrite = overwrite
        self.attrs = attrs
        self.flush_rows = max(chunk_size, (flush_rows // chunk_size) * chunk_size)
        self.buffer: list[LamostSpectrum] = []
        self.buffer_labels: list[np.ndarray | None] = []
        self.n_written = 0
        self.store_exists = existing is not None
        self.existing_vars: list[str] | None = list(existing.data_vars) if existing is not None else None
        self.row_offset = int(existing.sizes["star"]) if existing is not None else 0
        self.kept: dict[str, _Kept] = {}
        self.in_cube: dict[str, str] = {}
        if existing is not None:
            stars = [str(s) for s in np.asarray(existing["star"].values)]
            sources = [str(s) for s in np.asarray(existing["source"].values)]
            self.in_cube = dict(zip(stars, sources))
        self.replace: dict[int, tuple[LamostSpectrum, np.ndarray | None]] = {}
        self.n_labelled = 0
        self.n_label_mismatch = 0
        self.n_resampled = 0

    # -- accept / reject
    def add(self, spec: LamostSpectrum, rejects: list[tuple[str, str, str]]) -> None:
        if spec.star in self.in_cube:
            rejects.append((spec.path, "duplicate", f"duplicate of {self.in_cube[spec.star]} already in {self.out}"))
            return
        snr = spec.snr_g if math.isfinite(spec.snr_g) else -math.inf
        old = self.kept.get(spec.star)
        if old is not None:
            if snr <= old.snr:
                rejects.append((spec.path, "duplicate", f"duplicate of {old.source} (star {spec.star}, snr {spec.snr_g} <= {old.snr})"))
                return
            rejects.append((old.source, "duplicate", f"duplicate of {spec.path} (star {spec.star}, higher snr {spec.snr_g})"))
            lab = self._labels(spec)
            if old.where == "buf":
                self._unlabel(self.buffer[old.index], self.buffer_labels[old.index])
                self.buffer[old.index] = spec
                self.buffer_labels[old.index] = lab
            else:
                if old.index in self.replace:
                    self._unlabel(*self.replace[old.index])
                self.replace[old.index] = (spec, lab)
            self.kept[spec.star] = _Kept(snr, spec.path, old.where, old.index)
            return
        self.kept[spec.star] = _Kept(snr, spec.path, "buf", len(self.buffer))
        self.buffer.append(spec)
        self.buffer_labels.append(self._labels(spec))
        if len(self.buffer) >= self.flush_rows:
            self.flush()

    def _labels(self, spec: LamostSpectrum) -> np.ndarray | None:
        if not spec.exact:
            self.n_resampled += 1
        if self.labels is None:
            return None
        vals, status = self.labels.match(spec)
        if status == "strict":
            self.n_labelled += 1
        elif status == "mismatch":
            self.n_label_mismatch += 1
        return vals

    def _unlabel(self, spec: LamostSpectrum, lab: np.ndarray | None) -> None:
        """Undo the counters of a spectrum that is replaced by a better duplicate."""
        if not spec.exact:
            self.n_resampled -= 1
        if self.labels is None:
            return
        _, status = self.labels.match(spec)
        if status == "strict":
            self.n_labelled -= 1
        elif status == "mismatch":
            self.n_label_mismatch -= 1

    # -- datasets
    def _dataset(self, specs: Sequence[LamostSpectrum], labs: Sequence[np.ndarray | None]) -> xr.Dataset:
        n = len(specs)
        labels: dict[str, np.ndarray] = {}
        if self.label_names:
            arr = np.full((n, len(self.label_names)), np.nan, dtype=np.float32)
            if self.labels is not None:
                col = {name: j for j, name in enumerate(self.labels.labels)}
                for i, lab in enumerate(labs):
                    if lab is not None:
                        for k, name in enumerate(self.label_names):
                            if name in col:
                                arr[i, k] = lab[col[name]]
            labels = {name: arr[:, k] for k, name in enumerate(self.label_names)}
        ds = make_spectra(
            [s.star for s in specs],
            self.grid.wavelength,
            np.stack([s.flux for s in specs]),
            np.stack([s.ivar for s in specs]),
            ra=np.array([s.ra for s in specs]),
            dec=np.array([s.dec for s in specs]),
            snr=np.array([s.snr_g for s in specs]),
            rv_catalog=np.array([s.rv_catalog for s in specs]),
            labels=labels,
            source=[s.source for s in specs],
            normalised=False,
            flux_unit="relative (LAMOST flux calibration)",
            resolution="R~1800 (LAMOST LRS)",
            attrs=self.attrs,
        )
        ds["snr"].attrs["long_name"] = "S/N per pixel in the g band (header SN_G or SNRG)"
        ds["rv_catalog"].attrs["long_name"] = "LAMOST pipeline radial velocity, Z * c (header Z)"
        ds["snr_g"] = ("star", np.array([s.snr_g for s in specs], np.float32), {"long_name": "S/N g band (SN_G/SNRG)"})
        ds["snr_r"] = ("star", np.array([s.snr_r for s in specs], np.float32), {"long_name": "S/N r band (SN_R/SNRR)"})
        ds["obsid"] = ("star", np.array([s.obsid for s in specs], np.int64), {"long_name": "LAMOST OBSID, -1 = none in header"})
        if self.existing_vars is not None:
            ds = _align_vars(ds, self.existing_vars)
        return ds

    def flush(self) -> None:
        if not self.buffer:
            return
        import dask

        ds = self._dataset(self.buffer, self.buffer_labels)
        # the rows are in this process's memory: write them here, never through a distributed
        # Client that may be the default scheduler (it would ship the arrays to the workers)
        with dask.config.set(scheduler="threads"):
            if self.store_exists:
                write_spectra(ds, self.out, chunk_size=self.chunk_size, append=True)
            else:
                write_spectra(ds, self.out, chunk_size=self.chunk_size, overwrite=self.overwrite)
                self.store_exists = True
                self.existing_vars = list(ds.data_vars)
        for spec in self.buffer:
            k = self.kept[spec.star]
            k.where, k.index = "store", self.row_offset + self.n_written + k.index
        self.n_written += len(self.buffer)
        self.buffer, self.buffer_labels = [], []

    def close(self) -> None:
        self.flush()
        if self.replace:
            _overwrite_rows(self.out, self.replace, self._dataset)
            self.replace = {}


def _align_vars(ds: xr.Dataset, names: Sequence[str]) -> xr.Dataset:
    """Give ``ds`` exactly the data variables ``names`` of an existing cube (append): missing
    ones are filled (NaN, -1 or ""), extra ones dropped. New label variables are an error."""
    extra = [v for v in ds.data_vars if v not in names]
    new_labels = [v for v in extra if str(v).startswith("label_")]
    if new_labels:
        raise CubeSchemaError(f"cannot append: the cube has no {new_labels} variables (labels cannot be added on append)")
    ds = ds.drop_vars(extra)
    n = ds.sizes["star"]
    for v in names:
        if v not in ds:
            if v == "obsid":
                ds[v] = ("star", np.full(n, -1, np.int64))
            elif v in ("source",):
                ds[v] = ("star", np.array([""] * n, dtype=object))
            else:
                ds[v] = ("star", np.full(n, np.nan, np.float32))
    return ds


def _overwrite_rows(out: Path, replace: dict[int, tuple[LamostSpectrum, np.ndarray | None]], build) -> None:
    """Replace already-written rows (a later duplicate with a higher snr) in place with zarr."""
    import zarr

    rows = sorted(replace)
    ds = build([replace[r][0] for r in rows], [replace[r][1] for r in rows])
    group = zarr.open_group(str(out), mode="r+")
    for name, var in ds.variables.items():
        if "star" not in var.dims or name == "star" or name not in group:
            continue
        arr = group[name]
        values = np.asarray(var.values)
        for i, r in enumerate(rows):
            arr[r] = values[i]


# ------------------------------------------------------------------------ engines
@contextlib.contextmanager
def _dask_client(n_workers: int | None, scheduler: str | None, client: Any = None) -> Iterator[Any]:
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as c:
            yield c
        return
    n = n_workers or max(1, min(os.cpu_count() or 1, 8))
    with _quiet_distributed(), LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    ) as cluster, Client(cluster) as c:
        yield c


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Keep distributed's INFO chatter (and its shutdown-race tracebacks) off the terminal unless
    the user asked for verbose logging (root logger at INFO or DEBUG)."""
    logger = logging.getLogger("distributed")
    old = logger.level
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def _batches(files: Sequence[Path], batch_size: int) -> list[list[str]]:
    return [[str(f) for f in files[i : i + batch_size]] for i in range(0, len(files), batch_size)]


def _run_batches(
    batches: list[list[str]],
    wavelength: np.ndarray,
    min_coverage: float,
    client: Any,
    window: int,
) -> Iterator[dict[str, Any]]:
    """Yield batch results in input order (in-process when ``client`` is None)."""
    if client is None:
        for b in batches:
            yield read_batch(b, wavelength, min_coverage)
        return
    [wave_f] = client.scatter([wavelength], broadcast=True)
    pending: collections.deque = collections.deque()
    it = iter(batches)

    def submit_one() -> bool:
        b = next(it, None)
        if b is None:
            return False
        pending.append((b, client.submit(read_batch, b, wave_f, min_coverage, pure=False)))
        return True

    for _ in range(window):
        if not submit_one():
            break
    while pending:
        b, fut = pending.popleft()
        submit_one()
        try:
            yield fut.result()
        except Exception as exc:  # noqa: BLE001 - e.g. a worker died: reject the batch, go on
            yield {
                "spectra": [],
                "rejects": [(p, "error", f"task failed: {type(exc).__name__}: {exc}") for p in b],
                "seconds": 0.0,
                "cpu_seconds": 0.0,
            }
        finally:
            fut.release()


# ------------------------------------------------------------------------ driver
def ingest(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    labels: str | Path | LabelTable | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    append: bool = False,
    overwrite: bool = False,
    n_workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    recursive: bool = False,
    batch_size: int | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    wavelength: np.ndarray | None = None,
    progress: bool = True,
    flush_rows: int = 4096,
) -> IngestReport:
    """Ingest LAMOST LRS files (``paths``: files and/or directories) into the spectra cube ``out``.

    Engine: ``client`` (a distributed Client) or ``scheduler`` (address) if given; else
    ``n_workers=0`` -> in-process; ``n_workers=None`` -> in-process below
    :data:`IN_PROCESS_BELOW` files, else a LocalCluster (one single-threaded worker process per
    core, at most 8); ``n_workers=N`` -> LocalCluster with N workers.
    ``wavelength``: target grid (default :func:`gsn_dask.cube.log_lambda_grid`; with ``append``
    the existing cube's grid). ``chunk_size``: stars per zarr chunk. Bad files never stop the
    run: they are listed in ``<out>.rejects.csv`` (see module doc).
    """
    t0 = time.perf_counter()
    out = Path(out)
    if append and overwrite:
        raise ValueError("use either append or overwrite, not both")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_output_path(out)  # under a plain file / not writable: one clear error before reading any file
    existing = None
    if out.exists():
        if append:
            existing = open_spectra(out)
        elif not overwrite:
            raise FileExistsError(f"{out} exists (use --overwrite to replace it or --append to add to it)")
    label_table = labels if isinstance(labels, LabelTable) or labels is None else LabelTable.from_csv(labels)
    if existing is not None:
        grid = TargetGrid.from_wavelength(np.asarray(existing["wavelength"].values))
        lnames = label_names(existing)
        if label_table is not None:
            missing = [n for n in label_table.labels if n not in lnames]
            if missing:
                raise CubeSchemaError(
                    f"cannot append labels {missing}: {out} has label variables {lnames} only"
                )
    else:
        grid = TargetGrid.from_wavelength(log_lambda_grid() if wavelength is None else wavelength)
        lnames = list(label_table.labels) if label_table is not None else []

    files, rejects = find_spectra_files(paths, recursive=recursive)
    report = IngestReport(out=out, rejects_path=rejects_path_for(out), n_files=len(files) + len(rejects))
    if not files:
        raise FileNotFoundError(f"no FITS files found in {[str(p) for p in paths]}")

    use_cluster = client is not None or scheduler is not None or (
        n_workers is None and len(files) >= IN_PROCESS_BELOW
    ) or (n_workers is not None and n_workers > 0)
    attrs = {
        "ingest_software": f"gsn-dask {__version__} (gsn_dask.io.ingest)",
        "ingest_snr": "snr = g-band S/N from header SN_G (DR1) or SNRG (later); snr_r from SN_R/SNRR",
        "ingest_rv_catalog": "rv_catalog = Z * c from the LAMOST pipeline redshift (HELIO_RV is the heliocentric correction, not used)",
        "ingest_star_id": "OBSID, else <release>-<lmjd>-<planid>-<spid:02d>-<fiberid:03d> from the file name",
        "ingest_pixel_mask": "ivar = 0 where ANDMASK != 0, flux/ivar non-finite, ivar <= 0 or outside the file's coverage",
    }
    if label_table is not None:
        attrs["ingest_labels"] = f"reference labels from {Path(label_table.source).name} (strict match on obsid/filename + lmjd, planid, spid, fiberid)"
    attrs["history"] = f"{pd.Timestamp.now(tz='UTC').isoformat(timespec='seconds')} ingested LAMOST LRS files with gsn-dask {__version__}"
    writer = _CubeWriter(
        out,
        grid,
        chunk_size=chunk_size,
        label_names=lnames,
        labels=label_table,
        existing=existing,
        overwrite=overwrite,
        flush_rows=flush_rows,
        attrs=attrs,
    )

    from tqdm.auto import tqdm

    with contextlib.ExitStack() as stack:
        dask_client = stack.enter_context(_dask_client(n_workers, scheduler, client)) if use_cluster else None
        if dask_client is not None:
            n_threads = max(1, sum(dask_client.nthreads().values()))
            report.engine = "dask" + (f" ({scheduler})" if scheduler else "")
            report.n_workers = len(dask_client.nthreads())
        else:
            n_threads = 1
        if batch_size is None:
            batch_size = int(min(256, max(16, math.ceil(len(files) / (4 * n_threads)))))
        batches = _batches(files, batch_size)
        bar = tqdm(total=len(files), unit="file", desc="ingest", disable=not progress, smoothing=0.1)
        try:
            for res in _run_batches(batches, grid.wavelength, min_coverage, dask_client, window=2 * n_threads + 2):
                report.read_seconds += res["seconds"]
                report.read_cpu_seconds += res["cpu_seconds"]
                rejects.extend(res["rejects"])
                for spec in res["spectra"]:
                    writer.add(spec, rejects)
                bar.update(len(res["spectra"]) + len(res["rejects"]))
        finally:
            bar.close()
        writer.close()

    report.n_ingested = writer.n_written
    report.n_resampled = writer.n_resampled
    report.n_labelled = writer.n_labelled
    report.n_label_mismatch = writer.n_label_mismatch
    report.rejects = pd.DataFrame(rejects, columns=["file", "code", "reason"])
    _save_rejects(report.rejects, report.rejects_path, append=append)
    report.seconds = time.perf_counter() - t0
    return report


def _save_rejects(df: pd.DataFrame, path: Path, *, append: bool) -> None:
    """Write the rejects table; with ``append`` add rows to an existing one."""
    if append and path.exists():
        df.to_csv(path, mode="a", header=False, index=False)
    else:
        df.to_csv(path, index=False)
