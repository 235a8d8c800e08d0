"""The Dask runner: fit every star of a spectra cube into a results zarr store.

One ``dask.delayed`` task per chunk of ``chunk_size`` stars (the cube's own zarr chunk by
default). A task gets only paths and a star range: it opens the cube itself, reads its
stars, fits them with :func:`gsn_dask.fit.block.fit_block` using the model cached in its
worker process (:mod:`gsn_dask.model_cache`), writes its rows into the results store by
region (the store's zarr chunks are the task size, so each task owns its region) and then
marks its chunk done (:mod:`gsn_dask.results_store`).

* ``resume=True`` skips the chunks already marked done; per-star seeds make the result
  equal to an uninterrupted run, whatever the chunking or engine.
* A worker that dies mid-task is replaced and its task re-run by the scheduler
  (``distributed.scheduler.allowed-failures``); a task that raises is retried
  (``retries``); a chunk that still fails gets rows with ``status = "error: ..."`` and is
  not marked done, so ``--resume`` tries it again.
* The store holds a lock (``gsn-dask.lock``) while a run writes it: a second run on the
  same store is refused.
* ``engine="serial"`` runs the same task function in a loop in this process (no Dask).

Workers must see the cube, model and output paths (a shared filesystem).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from . import results_store as rs
from .cube import open_spectra
from .model_cache import get_model

if TYPE_CHECKING:  # pragma: no cover
    from .fit.config import FitConfig

log = logging.getLogger(__name__)

ENGINES = ("dask", "serial")
SAMPLERS = ("emcee", "batched")

#: the function that fits a block: fit_fn(block, model, *, config, run_seed, sampler, progress)
FitFn = Callable[..., xr.Dataset]


# ----------------------------------------------------------------------------- tasks
def read_block(cube_path: str | Path, start: int, stop: int) -> xr.Dataset:
    """Stars ``[start, stop)`` of a spectra cube, loaded into memory (reads only those rows;
    the cube's star index is not built)."""
    with rs.quiet_zarr():
        try:
            ds = xr.open_zarr(cube_path, consolidated=False, chunks=None, create_default_indexes=False)
        except TypeError:  # xarray < 2025.07: no create_default_indexes
            ds = xr.open_zarr(cube_path, consolidated=False, chunks=None)
        block = ds.isel(star=slice(int(start), int(stop))).load()
    # give the small block its default indexes back (star, wavelength)
    return block.assign_coords(star=block["star"].values, wavelength=block["wavelength"])


def _resolve_fit_fn(fit_fn: FitFn | None) -> FitFn:
    if fit_fn is not None:
        return fit_fn
    from .fit.block import fit_block

    return fit_block


def fit_chunk(
    cube_path: str,
    model_dir: str,
    model_sha256: str,
    out_path: str,
    index: int,
    start: int,
    stop: int,
    *,
    config: dict[str, Any],
    seed: int,
    sampler: str = "emcee",
    fit_fn: FitFn | None = None,
) -> dict[str, Any]:
    """The task: fit stars ``[start, stop)`` (chunk ``index``) and write them to ``out_path``.

    Reads the stars from ``cube_path``, gets the model from this process's cache, calls
    ``fit_fn`` (default :func:`~gsn_dask.fit.block.fit_block`), writes the rows by region,
    then marks the chunk done. Returns a small record: index, n_star, status counts,
    worker host/pid, wall-clock times (``t_start``, ``t_read``, ``t_fit``, ``t_end``, seconds
    since the epoch) and ``cpu_s``, the CPU seconds of the task's thread.
    """
    from .fit.config import FitConfig

    t0 = time.time()
    cpu0 = time.thread_time()
    fn = _resolve_fit_fn(fit_fn)
    model = get_model(model_dir, model_sha256)
    block = read_block(cube_path, start, stop)
    t_read = time.time()
    rows = fn(block, model, config=FitConfig.from_dict(config), run_seed=int(seed), sampler=sampler, progress=False)
    t_fit = time.time()
    got = rs.as_str_array(rows["star"].values)
    if not np.array_equal(got, rs.as_str_array(block["star"].values)):
        raise RuntimeError(f"fit function returned other stars than chunk {index} holds ({got[:3]}...)")
    rs.write_rows(out_path, rows, int(start))
    rs.mark_chunk_done(out_path, int(index))
    status = rs.as_str_array(rows["status"].values)
    counts: dict[str, int] = {}
    for s in status:
        counts[s] = counts.get(s, 0) + 1
    return {
        "index": int(index),
        "n_star": int(stop - start),
        "status": counts,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "t_start": t0,
        "t_read": t_read,
        "t_fit": t_fit,
        "t_end": time.time(),
        "cpu_s": time.thread_time() - cpu0,
    }


def sleepy_fit_block(block: xr.Dataset, model: Any, *, delay_s: float = 1.0, **kwargs: Any) -> xr.Dataset:
    """``fit_block`` after sleeping ``delay_s`` seconds per block: a slow task for tests of
    worker failure and interruption (a package function, so workers can import it)."""
    time.sleep(float(delay_s))
    return _resolve_fit_fn(None)(block, model, **kwargs)


# ------------------------------------------------------------------------------ run
@dataclass
class RunInfo:
    """What one :func:`run_fit` call did (also stored as JSON in the store's ``last_run`` attr)."""

    engine: str
    n_chunks: int
    chunks_fitted: int = 0
    chunks_skipped: int = 0
    chunks_failed: int = 0
    failed_chunks: list[int] | None = None
    n_workers: int | None = None
    scheduler: str | None = None
    dashboard: str | None = None
    started: str = ""
    wall_s: float = 0.0
    time_to_first_s: float | None = None
    task_records: list[dict[str, Any]] | None = None

    def as_attr(self) -> str:
        d = {k: v for k, v in self.__dict__.items() if k != "task_records"}
        return json.dumps(d)


def _default_n_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def _cube_chunk_size(cube: xr.Dataset) -> int:
    chunks = cube["flux"].chunks
    if chunks:
        return int(chunks[0][0])
    enc = cube["flux"].encoding.get("chunks") or cube["flux"].encoding.get("preferred_chunks", {}).get("star")
    if isinstance(enc, (tuple, list)):
        return int(enc[0])
    return int(enc or cube.sizes["star"])


def run_fit(
    cube_path: str | Path,
    model_dir: str | Path,
    out_path: str | Path,
    *,
    config: FitConfig | None = None,
    seed: int = 0,
    scheduler: str | Any | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    chunk_size: int | None = None,
    resume: bool = False,
    sampler: str = "emcee",
    progress: bool = True,
    overwrite: bool = False,
    force_unlock: bool = False,
    engine: str = "dask",
    retries: int = 2,
    fit_fn: FitFn | None = None,
    client: Any | None = None,
    info: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Fit every star of the spectra cube at ``cube_path`` with the GSN in ``model_dir`` and
    write the results cube (schema ``gsn-dask/results/1``) to ``out_path``; return it opened.

    Parameters
    ----------
    config : FitConfig, default ``FitConfig()``.
    seed : run seed; a star's seed derives from it and the star id.
    scheduler : address of an existing Dask scheduler (``tcp://host:port``); default: a
        LocalCluster with ``n_workers`` processes (default: one per core) of
        ``threads_per_worker`` threads each. ``client`` (a ``distributed.Client``) is used as is.
    chunk_size : stars per task (and per zarr chunk of the output); default the cube's chunk.
    resume : continue an existing store, fitting only chunks not marked done.
    overwrite : replace an existing store (without it and without ``resume`` it is refused).
    force_unlock : take over the store's lock even if another run seems to hold it.
    engine : ``"dask"`` or ``"serial"`` (same task function in a loop here; for debugging and
        benchmarks).
    retries : re-runs of a task that raised (worker deaths are handled by the scheduler).
    fit_fn : the block fitting function (default :func:`gsn_dask.fit.block.fit_block`); must be
        importable on the workers (a package function or ``functools.partial`` of one).
    info : if a dict, filled with this run's :class:`RunInfo` fields and task records.
    """
    from .fit.config import FitConfig

    t_run = time.perf_counter()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if n_workers is not None and int(n_workers) < 1 or int(threads_per_worker) < 1:
        raise ValueError("n_workers and threads_per_worker must be >= 1")
    config = config if config is not None else FitConfig()
    if sampler == "batched" and fit_fn is None:
        try:
            import gsn_dask.fit.batched  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"--sampler batched is not available in this installation ({exc}); use emcee") from exc
    cube_path = Path(cube_path).expanduser().resolve()
    model_dir = Path(model_dir).expanduser().resolve()
    out_path = Path(out_path).expanduser().resolve()
    if out_path == cube_path:
        raise ValueError("the output store must not be the input cube")

    # ---- validate inputs before touching the output
    model = get_model(model_dir)
    cube = open_spectra(cube_path)
    model.pixel_slice(np.asarray(cube["wavelength"].values))  # ModelMismatchError if the grids differ
    stars = rs.as_str_array(cube["star"].values)
    n_star = int(stars.size)
    if n_star == 0:
        raise ValueError(f"{cube_path} holds no stars")
    cube_chunk = _cube_chunk_size(cube)
    expect = rs.run_identity(model, seed=seed, sampler=sampler, config=config)

    if out_path.exists() and not rs.store_exists(out_path):
        if not out_path.is_dir() or any(p.name != rs.LOCK_FILE for p in out_path.iterdir()):
            raise FileExistsError(f"{out_path} exists and is not a zarr store: choose another --out")
    token = rs.acquire_lock(out_path, force=force_unlock, note=f"gsn-dask fit ({engine})")
    run = RunInfo(engine=engine, n_chunks=0, started=rs.utc_now())
    try:
        if rs.store_exists(out_path) and resume:
            rs.check_resumable(out_path, expect, stars)
            stored_chunk = int(rs.store_attrs(out_path)["chunk_size"])
            if chunk_size is not None and int(chunk_size) != stored_chunk:
                print(f"note: resuming with the store's chunk size {stored_chunk} (not {chunk_size})", file=sys.stderr)
            chunk_size = stored_chunk
        else:
            if rs.store_exists(out_path) and not overwrite:
                raise FileExistsError(
                    f"{out_path} exists: use --resume to continue it or --overwrite to replace it"
                )
            if resume:
                log.info("nothing to resume at %s: starting a new store", out_path)
            chunk_size = int(chunk_size or cube_chunk)
            attrs = rs.run_attrs(expect, model, model_dir=model_dir, cube_path=cube_path,
                                 normalised=cube.attrs.get("normalised", False), engine=engine, config=config)
            rs.create_store(
                out_path, stars, model.label_names, chunk_size=int(chunk_size),
                n_draws=int(config.n_draws), attrs=attrs, overwrite=overwrite,
            )
        bounds = rs.chunk_bounds(n_star, int(chunk_size))
        done = rs.done_chunks(out_path)
        pending = [i for i in range(len(bounds)) if not done[i]]
        run.n_chunks = len(bounds)
        run.chunks_skipped = len(bounds) - len(pending)
        if run.chunks_skipped:
            print(f"resuming: {run.chunks_skipped} of {len(bounds)} chunks already done", file=sys.stderr)
        task_args = dict(
            cube_path=str(cube_path), model_dir=str(model_dir), model_sha256=model.sha256,
            out_path=str(out_path), config=config.to_dict(), seed=int(seed), sampler=sampler, fit_fn=fit_fn,
        )
        records: list[dict[str, Any]] = []
        failures: dict[int, str] = {}
        if pending:
            if engine == "serial":
                _run_serial(pending, bounds, task_args, records, failures, run, progress, t_run)
            else:
                _run_dask(
                    pending, bounds, task_args, records, failures, run, progress, t_run,
                    scheduler=scheduler, client=client, n_workers=n_workers,
                    threads_per_worker=threads_per_worker, retries=retries,
                )
        # chunks whose task failed for good: rows with the reason, not marked done
        for i, reason in sorted(failures.items()):
            a, b = bounds[i]
            try:
                rows = rs.failed_rows(stars[a:b], model.label_names, reason, n_draws=int(config.n_draws))
                rs.write_rows(out_path, rows, a)
            except Exception as exc:  # noqa: BLE001 - keep the run's other results
                log.error("could not record the failure of chunk %d: %s", i, exc)
        run.chunks_fitted = len(records)
        run.chunks_failed = len(failures)
        run.failed_chunks = sorted(failures) or None
        run.wall_s = time.perf_counter() - t_run
        run.task_records = records
        rs.update_attrs(out_path, {"engine": engine, "last_run": run.as_attr(), "updated": rs.utc_now()})
    finally:
        rs.release_lock(out_path, token)
    if info is not None:
        info.update(run.__dict__)
    ds = rs.open_store(out_path)
    return ds


def _record_failure(failures: dict[int, str], index: int, exc: BaseException) -> None:
    msg = f"error: chunk task failed: {type(exc).__name__}: {exc}"
    failures[index] = msg
    log.error("chunk %d failed: %s", index, msg)
    print(f"chunk {index} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def _progress_bar(total: int, n_star: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="chunk", desc="fitting", disable=not enabled, dynamic_ncols=True,
                postfix={"stars": n_star})


def _run_serial(pending, bounds, task_args, records, failures, run, progress, t_run) -> None:
    run.n_workers = 1
    n_star = sum(bounds[i][1] - bounds[i][0] for i in pending)
    with _progress_bar(len(pending), n_star, progress) as bar:
        for i in pending:
            a, b = bounds[i]
            try:
                rec = fit_chunk(index=i, start=a, stop=b, **task_args)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one chunk must not stop the run
                _record_failure(failures, i, exc)
            else:
                records.append(rec)
                if run.time_to_first_s is None:
                    run.time_to_first_s = time.perf_counter() - t_run
            bar.update(1)


def _start_client(scheduler, n_workers, threads_per_worker):
    """(client, cluster or None): attach to ``scheduler`` or start a LocalCluster."""
    import logging as _logging

    from distributed import Client, LocalCluster

    if scheduler is not None:
        return Client(scheduler, timeout="30s"), None
    n = int(n_workers or _default_n_workers())
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=int(threads_per_worker),
        processes=True,
        dashboard_address=":0",
        silence_logs=_logging.ERROR,
    )
    return Client(cluster), cluster


def _dashboard(client: Any) -> str | None:
    """The scheduler's dashboard URL, or None if it serves none."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return str(client.dashboard_link)
    except Exception:  # noqa: BLE001 - informational only
        return None


def _run_dask(
    pending, bounds, task_args, records, failures, run, progress, t_run,
    *, scheduler, client, n_workers, threads_per_worker, retries,
) -> None:
    import dask
    from distributed import as_completed

    from .model_cache import ModelCachePlugin

    own_client = client is None
    cluster = None
    if own_client:
        client, cluster = _start_client(scheduler, n_workers, threads_per_worker)
    futures: list[Any] = []
    plugin = None
    try:
        run.scheduler = str(client.scheduler.address)
        run.n_workers = len(client.scheduler_info(n_workers=-1)["workers"]) if _has_n_workers_kw(client) else len(
            client.scheduler_info()["workers"]
        )
        run.dashboard = _dashboard(client)
        if progress or own_client:
            dash = run.dashboard or "none"
            if run.dashboard and cluster is not None:
                try:
                    import bokeh  # noqa: F401
                except ImportError:
                    dash += " (install bokeh for its plots)"
            print(f"Dask scheduler {run.scheduler}, {run.n_workers} workers; dashboard: {dash}", file=sys.stderr)
        if run.n_workers == 0:
            print("warning: the scheduler has no workers yet; tasks wait until workers join", file=sys.stderr)
        preload = ("gsn_dask.fit.block",) + (("gsn_dask.fit.batched",) if task_args["sampler"] == "batched" else ())
        plugin = ModelCachePlugin(task_args["model_dir"], task_args["model_sha256"], int(threads_per_worker), preload,
                                  ignore_sigint=cluster is not None)
        client.register_plugin(plugin)
        run_token = dask.base.tokenize(task_args["out_path"], time.time(), os.getpid())[:10]
        delayed = []
        for i in pending:
            with dask.annotate(priority=-i):  # run the chunks roughly in star order
                delayed.append(dask.delayed(fit_chunk, pure=False)(
                    index=i, start=bounds[i][0], stop=bounds[i][1], dask_key_name=f"gsn-fit-{run_token}-{i:06d}",
                    **task_args,
                ))
        futures = client.compute(delayed, retries=int(retries))
        index_of = {f.key: i for f, i in zip(futures, pending)}
        n_star = sum(bounds[i][1] - bounds[i][0] for i in pending)
        with _progress_bar(len(futures), n_star, progress) as bar:
            for fut in as_completed(futures):
                i = index_of[fut.key]
                try:
                    rec = fut.result()
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - incl. KilledWorker after too many deaths
                    _record_failure(failures, i, exc)
                else:
                    records.append(rec)
                    if run.time_to_first_s is None:
                        run.time_to_first_s = time.perf_counter() - t_run
                fut.release()
                bar.update(1)
    finally:
        if futures:
            try:
                client.cancel(futures)
            except Exception:  # noqa: BLE001
                pass
        if plugin is not None and cluster is None:  # someone else's cluster: leave it clean
            try:
                client.unregister_worker_plugin(plugin.name)
            except Exception:  # noqa: BLE001
                pass
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()


def _has_n_workers_kw(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


__all__ = ["ENGINES", "RunInfo", "SAMPLERS", "fit_chunk", "read_block", "run_fit", "sleepy_fit_block"]
