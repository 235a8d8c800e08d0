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

The label matching lives in :mod:`.label_table`, the chunked cube writer (duplicates, append,
rows replaced in place) in :mod:`.cube_writer`; this module finds and reads the files and drives
the run.
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
    open_spectra,
)
from .cube_writer import CubeWriter
from .label_table import LabelTable
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
    existing, label_table, grid, lnames = _prepare_target(
        out, labels=labels, chunk_size=chunk_size, append=append, overwrite=overwrite, wavelength=wavelength
    )
    files, rejects = find_spectra_files(paths, recursive=recursive)
    report = IngestReport(out=out, rejects_path=rejects_path_for(out), n_files=len(files) + len(rejects))
    if not files:
        raise FileNotFoundError(f"no FITS files found in {[str(p) for p in paths]}")

    use_cluster = client is not None or scheduler is not None or (
        n_workers is None and len(files) >= IN_PROCESS_BELOW
    ) or (n_workers is not None and n_workers > 0)
    writer = CubeWriter(
        out,
        grid,
        chunk_size=chunk_size,
        label_names=lnames,
        labels=label_table,
        existing=existing,
        overwrite=overwrite,
        flush_rows=flush_rows,
        attrs=_ingest_attrs(label_table),
    )
    with contextlib.ExitStack() as stack:
        dask_client = stack.enter_context(_dask_client(n_workers, scheduler, client)) if use_cluster else None
        _read_into(
            writer, files, rejects, report, grid=grid, min_coverage=min_coverage, dask_client=dask_client,
            scheduler=scheduler, batch_size=batch_size, progress=progress,
        )
        writer.close()

    report.n_ingested = writer.n_written
    report.n_resampled = writer.n_resampled
    report.n_labelled = writer.n_labelled
    report.n_label_mismatch = writer.n_label_mismatch
    report.rejects = pd.DataFrame(rejects, columns=["file", "code", "reason"])
    _save_rejects(report.rejects, report.rejects_path, append=append)
    report.seconds = time.perf_counter() - t0
    return report


def _prepare_target(
    out: Path,
    *,
    labels: str | Path | LabelTable | None,
    chunk_size: int,
    append: bool,
    overwrite: bool,
    wavelength: np.ndarray | None,
) -> tuple[xr.Dataset | None, LabelTable | None, TargetGrid, list[str]]:
    """Check the options and the output path before any file is read; return
    ``(existing cube or None, label table or None, target grid, label names of the cube)``.
    The grid is the existing cube's with ``append``, else ``wavelength`` (vacuum Angstrom;
    default :func:`gsn_dask.cube.log_lambda_grid`)."""
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
    return existing, label_table, grid, lnames


def _ingest_attrs(label_table: LabelTable | None) -> dict[str, Any]:
    """Dataset attrs that record how the cube was ingested (software, S/N, RV, ids, mask, labels)."""
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
    return attrs


def _read_into(
    writer: CubeWriter,
    files: Sequence[Path],
    rejects: list[tuple[str, str, str]],
    report: IngestReport,
    *,
    grid: TargetGrid,
    min_coverage: float,
    dask_client: Any,
    scheduler: str | None,
    batch_size: int | None,
    progress: bool,
) -> None:
    """Read ``files`` in batches (in-process when ``dask_client`` is None), in input order, into
    ``writer``; append the rejects to ``rejects`` and the engine and read times to ``report``."""
    from tqdm.auto import tqdm

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


def _save_rejects(df: pd.DataFrame, path: Path, *, append: bool) -> None:
    """Write the rejects table; with ``append`` add rows to an existing one."""
    if append and path.exists():
        df.to_csv(path, mode="a", header=False, index=False)
    else:
        df.to_csv(path, index=False)
