"""The Dask engine: schedule the chunk tasks of a fit run on Dask (or in a serial loop).

Everything else about a run is the engine-neutral run layer (:mod:`gsn_dask.run`): the checks
before any star is fitted, the store's lock, creating or resuming the results store, the task
size and the chunk task itself (read -> fit -> check ids -> write region -> mark done). This
module only runs :func:`gsn_dask.run.fit_chunk` once per pending chunk:

* ``engine="dask"``: one ``dask.delayed`` task per chunk on a LocalCluster (started here, sized
  to the machine) or an existing cluster (``scheduler`` / ``client``). A worker that dies
  mid-task is replaced and its task re-run by the scheduler (``allowed-failures``); a task that
  raises is retried (``retries``); a chunk that still fails gets rows with
  ``status = "error: ..."`` and is not marked done, so ``--resume`` tries it again. The model is
  loaded once per worker (:class:`gsn_dask.model_cache.ModelCachePlugin`).
* ``engine="serial"``: the same task function in a loop in this process (no Dask).

Workers must see the cube, model and output paths (a shared filesystem).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xarray as xr

from . import results_store as rs
from .run import ChunkJob, ChunkTask, FitFn, failure_reason, fit_chunk, open_run, prepare_run, zarr_cube_meta

if TYPE_CHECKING:  # pragma: no cover
    from .fit.config import FitConfig

log = logging.getLogger(__name__)

ENGINES = ("dask", "serial")


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
    worker_cpu_s: dict[str, float] | None = None
    task_records: list[dict[str, Any]] | None = None

    def as_attr(self) -> str:
        d = {k: v for k, v in self.__dict__.items() if k != "task_records"}
        return json.dumps(d)


def _default_n_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


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

    config : FitConfig, default ``FitConfig()``; checked against the model before any task.
    seed : run seed; a star's seed derives from it and the star id.
    scheduler : address of an existing Dask scheduler (``tcp://host:port``); default: a
        LocalCluster with ``n_workers`` processes (default: one per core) of
        ``threads_per_worker`` threads each. ``client`` (a ``distributed.Client``) is used as is.
    chunk_size : stars per task (and per zarr chunk of the output); default the cube's chunk,
        split into about 4 tasks per worker slot when the cube has fewer chunks than that.
    resume : continue an existing store, fitting only chunks not marked done.
    overwrite : replace an existing results store (never anything else).
    force_unlock : take over the store's lock even if another run seems to hold it.
    engine : ``"dask"`` or ``"serial"`` (same task function in a loop here).
    retries : re-runs of a task that raised (worker deaths are handled by the scheduler).
    fit_fn : the block fitting function (default :func:`gsn_dask.fit.block.fit_block`); Dask
        workers must be able to unpickle it (a package function, or one registered with
        ``cloudpickle.register_pickle_by_value``).
    info : if a dict, filled with this run's :class:`RunInfo` fields and task records.
    """
    t_run = time.perf_counter()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if n_workers is not None and int(n_workers) < 1 or int(threads_per_worker) < 1:
        raise ValueError("n_workers and threads_per_worker must be >= 1")
    plan = prepare_run(zarr_cube_meta(cube_path), model_dir, out_path, config=config, seed=seed, sampler=sampler,
                       resume=resume, overwrite=overwrite, chunk_size=chunk_size)
    run = RunInfo(engine=engine, n_chunks=0, started=rs.utc_now())
    own_client, own_cluster = client is None, False
    with contextlib.ExitStack() as stack:
        if engine == "dask" and client is None and scheduler is not None:
            client = stack.enter_context(_attach(scheduler))
        if engine == "serial":
            n_slots = 1
        elif client is not None:
            n_slots = _n_slots(client)
        else:
            n_slots = int(n_workers or _default_n_workers()) * int(threads_per_worker)
        with open_run(plan, n_slots=n_slots, engine=engine, force_unlock=force_unlock) as store:
            run.n_chunks, run.chunks_skipped = len(store.tasks), store.n_skipped
            job = plan.job(fit_fn)
            records: list[dict[str, Any]] = []
            failures: dict[int, str] = {}
            if store.pending and engine == "serial":
                _run_serial(store.pending, job, records, failures, run, progress, t_run)
            elif store.pending:
                if client is None:
                    client, own_cluster = stack.enter_context(_local_cluster(n_workers, threads_per_worker)), True
                _describe_cluster(client, run, progress or own_client, own_cluster)
                _run_dask(client, store.pending, job, records, failures, run, progress, t_run,
                          threads_per_worker=threads_per_worker, retries=retries, own_cluster=own_cluster)
            store.record_failures(failures)
            run.chunks_fitted, run.chunks_failed = len(records), len(failures)
            run.failed_chunks = sorted(failures) or None
            run.wall_s = time.perf_counter() - t_run
            run.task_records = records
            run.worker_cpu_s = _worker_cpu(records)
            store.finish(engine, {"last_run": run.as_attr()})
    if info is not None:
        info.update(run.__dict__)
    return rs.open_store(plan.out)


def _worker_cpu(records: list[dict[str, Any]]) -> dict[str, float]:
    """CPU seconds of the chunk tasks per worker (``host:pid``): how evenly the work was spread."""
    cpu: dict[str, float] = {}
    for r in records:
        key = f"{r['host']}:{r['pid']}"
        cpu[key] = round(cpu.get(key, 0.0) + float(r["cpu_s"]), 2)
    return cpu


def _record_failure(failures: dict[int, str], index: int, exc: BaseException) -> None:
    failures[index] = failure_reason(exc)
    log.error("chunk %d failed: %s", index, failures[index])
    print(f"chunk {index} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def _progress_bar(tasks: list[ChunkTask], enabled: bool) -> Any:
    from tqdm.auto import tqdm

    n_star = sum(t.stop - t.start for t in tasks)
    return tqdm(total=len(tasks), unit="chunk", desc="fitting", disable=not enabled, dynamic_ncols=True,
                postfix={"stars": n_star})


def _run_serial(pending: list[ChunkTask], job: ChunkJob, records: list[dict[str, Any]], failures: dict[int, str],
                run: RunInfo, progress: bool, t_run: float) -> None:
    run.n_workers = 1
    with _progress_bar(pending, progress) as bar:
        for task in pending:
            try:
                rec = fit_chunk(job, task)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one chunk must not stop the run
                _record_failure(failures, task.index, exc)
            else:
                records.append(rec)
                if run.time_to_first_s is None:
                    run.time_to_first_s = time.perf_counter() - t_run
            bar.update(1)


@contextlib.contextmanager
def _attach(scheduler: Any) -> Any:
    """A client of an existing scheduler (closed on exit)."""
    from distributed import Client

    client = Client(scheduler, timeout="30s")
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def _local_cluster(n_workers: int | None, threads_per_worker: int) -> Any:
    """A client of a new LocalCluster of ``n_workers`` processes (closed on exit)."""
    from distributed import Client, LocalCluster

    # Worker logs below CRITICAL stay quiet: a failed chunk reaches the run through its future (the
    # failures table), and after Ctrl-C a worker's last heartbeat to the closing scheduler would
    # otherwise print a distributed traceback under the "interrupted ... --resume" message.
    cluster = LocalCluster(n_workers=int(n_workers or _default_n_workers()), threads_per_worker=int(threads_per_worker),
                           processes=True, dashboard_address=":0", silence_logs=logging.CRITICAL)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _workers(client: Any) -> dict[str, Any]:
    import inspect

    try:
        kw = {"n_workers": -1} if "n_workers" in inspect.signature(client.scheduler_info).parameters else {}
    except (TypeError, ValueError):
        kw = {}
    return dict(client.scheduler_info(**kw).get("workers", {}))


def _n_slots(client: Any) -> int:
    """Worker threads of the cluster (at least 1)."""
    return max(1, sum(int(w.get("nthreads", 1)) for w in _workers(client).values()))


def _describe_cluster(client: Any, run: RunInfo, verbose: bool, own_cluster: bool) -> None:
    """Fill ``run`` with the scheduler, worker count and dashboard; print them if ``verbose``."""
    run.scheduler = str(client.scheduler.address)
    run.n_workers = len(_workers(client))
    try:
        run.dashboard = str(client.dashboard_link) if "dashboard" in client.scheduler_info().get("services", {}) else None
    except Exception:  # noqa: BLE001 - informational only
        run.dashboard = None
    if verbose:
        dash = run.dashboard or "none"
        if run.dashboard and own_cluster:
            try:
                import bokeh  # noqa: F401
            except ImportError:
                dash += " (install bokeh for its plots)"
        print(f"Dask scheduler {run.scheduler}, {run.n_workers} workers; dashboard: {dash}", file=sys.stderr)
    if run.n_workers == 0:
        print("warning: the scheduler has no workers yet; tasks wait until workers join", file=sys.stderr)


def _run_dask(client: Any, pending: list[ChunkTask], job: ChunkJob, records: list[dict[str, Any]],
              failures: dict[int, str], run: RunInfo, progress: bool, t_run: float, *,
              threads_per_worker: int, retries: int, own_cluster: bool) -> None:
    """One task per pending chunk on ``client``; the model is preloaded on every worker (the
    workers of ``own_cluster``, started here, ignore SIGINT: Ctrl-C is for the driver)."""
    import dask
    from distributed import as_completed

    from .model_cache import ModelCachePlugin

    preload = ("gsn_dask.fit.block",) + (("gsn_dask.fit.batched",) if job.sampler == "batched" else ())
    plugin = ModelCachePlugin(job.model_dir, job.model_sha256, int(threads_per_worker), preload, ignore_sigint=own_cluster)
    client.register_plugin(plugin)
    futures: list[Any] = []
    try:
        token = dask.base.tokenize(job.out_path, time.time(), os.getpid())[:10]
        delayed = []
        for task in pending:
            with dask.annotate(priority=-task.index):  # run the chunks roughly in star order
                delayed.append(dask.delayed(fit_chunk, pure=False)(
                    job, task, dask_key_name=f"gsn-fit-{token}-{task.index:06d}"))
        futures = client.compute(delayed, retries=int(retries))
        task_of = {f.key: t for f, t in zip(futures, pending)}
        with _progress_bar(pending, progress) as bar:
            for fut in as_completed(futures):
                try:
                    rec = fut.result()
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - incl. KilledWorker after too many deaths
                    _record_failure(failures, task_of[fut.key].index, exc)
                else:
                    records.append(rec)
                    if run.time_to_first_s is None:
                        run.time_to_first_s = time.perf_counter() - t_run
                fut.release()
                bar.update(1)
    finally:
        with contextlib.suppress(Exception):
            client.cancel(futures)
        if not own_cluster:  # someone else's cluster: leave it clean
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(plugin.name)


__all__ = ["ENGINES", "RunInfo", "run_fit"]
