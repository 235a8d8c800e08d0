"""Fit a spectra cube on Spark: the run layer of the Dask runner, scheduled by Spark.

Driver (:func:`fit_cube_spark`)
    reads only the cube's metadata and star ids; the engine-neutral run layer
    (:mod:`gsn_dask.run`) checks the config and the model against the cube before anything is
    written, takes the store's lock and creates (or, with ``resume``, reopens) the results store
    (same attrs as :func:`gsn_dask.pipeline.run_fit`, so a store started by one engine can be
    resumed by the other). The driver then sends the executors a small DataFrame of
    ``(chunk, start, stop)`` tuples, one per pending chunk, ``chunks_per_partition`` of them per
    Spark partition. No spectra pass through the driver.

Executors (``mapInPandas`` over Arrow batches of those tuples)
    run the chunk task :func:`gsn_dask.run.fit_chunk` (read the stars from the zarr cube, or, for
    Parquet input, from the chunk's rows that Spark's Parquet reader repartitioned by chunk; fit;
    write the region; then mark the chunk done), so a retried task rewrites only its region and a
    chunk marked done always has its rows. Each returns one summary row per chunk: chunk, start,
    stop, n_ok, n_flagged, n_failed, seconds (wall), cpu_seconds (of the Python worker), host,
    pid, attempt, model_loads (loads done by that worker so far), error.

A chunk whose task raises is retried by Spark (``spark.task.maxFailures``, or F in
``local[N,F]``); on its last attempt the task reports the reason instead of raising, and the
driver writes the chunk's rows flagged NOT_FITTED with ``status = "error: chunk task failed:
..."`` and leaves it not done (``--resume`` tries it again), exactly like the Dask runner.

The model is shipped once per job: ``sc.broadcast`` of the model directory's file bytes (default)
or only its path (``model_broadcast="path"``, shared storage; loaded through
:mod:`gsn_dask.model_cache`). Each executor Python worker (reused between tasks,
``spark.python.worker.reuse``) writes the bytes once to a temp dir, loads the GSN, removes the
temp dir and keeps the model in a process cache. Native thread pools are capped at
``threads_per_task`` (= ``spark.task.cpus``) per task.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from gsn_dask import results_store as rs
from gsn_dask.parquet_export import check_parquet_out
from gsn_dask.run import ChunkTask, CubeMeta, RunPlan, RunStore, zarr_cube_meta

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

ENGINE = "spark"

#: The summary each task returns to the driver, one row per chunk (Spark DDL).
SUMMARY_SCHEMA = (
    "chunk long, start long, stop long, n_ok long, n_flagged long, n_failed long, "
    "seconds double, cpu_seconds double, host string, pid long, attempt long, model_loads long, error string"
)
SUMMARY_COLUMNS = [c.split()[0] for c in SUMMARY_SCHEMA.split(", ")]
_TASK_SCHEMA = "chunk long, start long, stop long"

#: the model files shipped to executors (others in a model dir, e.g. figures, stay home)
MODEL_FILES = ("model.json", "weights.safetensors")


@dataclasses.dataclass
class SparkFitReport:
    """What :func:`fit_cube_spark` returns.

    ``results``: the results cube (opened lazily from ``out``); ``summary``: one row per chunk
    processed in this run (:data:`SUMMARY_COLUMNS`; empty if everything was already done);
    ``n_chunks``: chunks in the store; ``n_skipped``: chunks already done (``resume``);
    ``failed_chunks``: chunks whose task failed on every attempt (rows flagged, not done);
    ``timings`` (seconds): ``startup`` (SparkSession; 0 when given one), ``plan`` (metadata,
    model check, store), ``fit`` (the Spark job), ``results_parquet`` and ``total``.
    """

    results: xr.Dataset
    summary: pd.DataFrame
    n_chunks: int
    n_skipped: int
    failed_chunks: list[int]
    timings: dict[str, float]
    out: Path
    results_parquet: Path | None = None

    @property
    def n_fitted_chunks(self) -> int:
        """Chunks fitted and marked done in this run."""
        return int(len(self.summary) - len(self.failed_chunks))


def max_task_attempts(master: str, conf: Mapping[str, str] | None = None) -> int:
    """How many times Spark runs a failing task: F for ``local[N,F]``, 1 for other local
    masters (Spark does not retry in local mode), else ``spark.task.maxFailures`` (default 4)."""
    m = re.fullmatch(r"\s*local\[\s*(?:\d+|\*)\s*,\s*(\d+)\s*\]\s*", master or "")
    if m:
        return max(1, int(m.group(1)))
    if (master or "").strip().startswith("local"):
        return 1
    return max(1, int((conf or {}).get("spark.task.maxFailures", 4)))


# =============================================================================== executor
_WORKER_STATE: dict[str, Any] = {"threads": None, "model_loads": 0}
_MODEL_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()


def configure_worker_threads(n_threads: int = 1) -> None:
    """Cap native thread pools of this Python worker at ``n_threads``, once per process
    (:func:`gsn_dask.model_cache.configure_threads`: OpenMP/BLAS env vars, threadpoolctl
    when installed, ``torch.set_num_threads`` when torch is imported)."""
    if _WORKER_STATE["threads"] == n_threads:
        return
    from gsn_dask.model_cache import configure_threads

    configure_threads(n_threads)
    _WORKER_STATE["threads"] = n_threads


def model_payload(model_dir: str | Path) -> dict[str, bytes]:
    """The bytes of the model files (``model.json``, ``weights.safetensors``) to broadcast."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"no model directory at {model_dir}")
    payload = {name: (model_dir / name).read_bytes() for name in MODEL_FILES if (model_dir / name).is_file()}
    if "model.json" not in payload:
        raise FileNotFoundError(f"{model_dir} has no model.json: not a gsn-dask model directory")
    return payload


def payload_key(payload: Mapping[str, bytes]) -> str:
    """A content key of a model payload (sha256 over the file names and contents)."""
    h = hashlib.sha256()
    for name in sorted(payload):
        h.update(name.encode())
        h.update(hashlib.sha256(payload[name]).digest())
    return "bytes:" + h.hexdigest()


def load_model_cached(spec: Mapping[str, Any]) -> Any:
    """The GSN for a model spec, loaded once per Python process.

    ``{"kind": "bytes", "payload": Broadcast | dict, "key": str}``: the files are written to a temp
    dir, loaded, and the temp dir removed. ``{"kind": "path", "path": str, "sha256": str}``: loaded
    from (shared) storage through :func:`gsn_dask.model_cache.get_model`.
    """
    if spec["kind"] == "path":
        from gsn_dask import model_cache

        before = model_cache.load_count
        model = model_cache.get_model(spec["path"], spec.get("sha256") or None)
        _WORKER_STATE["model_loads"] += model_cache.load_count - before
        return model
    from gsn_dask.emulator import load_model

    key = str(spec["key"])
    model = _MODEL_CACHE.get(key)
    if model is not None:
        return model
    with _LOCK:
        if key not in _MODEL_CACHE:
            payload = spec["payload"]
            payload = payload.value if hasattr(payload, "value") else payload
            tmp = Path(tempfile.mkdtemp(prefix="gsn-spark-model-"))
            try:
                for name, data in payload.items():
                    (tmp / name).write_bytes(data)
                _MODEL_CACHE[key] = load_model(tmp)
                _WORKER_STATE["model_loads"] += 1
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return _MODEL_CACHE[key]


def _task_attempt() -> int:
    """Attempt number of the running Spark task (0 for the first; 0 outside Spark)."""
    try:
        from pyspark import TaskContext

        tc = TaskContext.get()
        return int(tc.attemptNumber()) if tc is not None else 0
    except Exception:  # noqa: BLE001
        return 0


def _summary_row(task: ChunkTask, t0: tuple[float, float], attempt: int, counts: tuple[int, int, int],
                 error: str | None) -> pd.DataFrame:
    n_ok, n_flagged, n_failed = counts
    return pd.DataFrame([{
        "chunk": task.index, "start": task.start, "stop": task.stop, "n_ok": n_ok, "n_flagged": n_flagged,
        "n_failed": n_failed, "seconds": time.perf_counter() - t0[0], "cpu_seconds": time.process_time() - t0[1],
        "host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt,
        "model_loads": int(_WORKER_STATE["model_loads"]), "error": error,
    }], columns=SUMMARY_COLUMNS)


def fit_and_write_chunk(read: Callable[[], xr.Dataset] | None, task: ChunkTask, job: Mapping[str, Any]) -> pd.DataFrame:
    """Run the chunk task :func:`gsn_dask.run.fit_chunk` on an executor (``read()`` -> the chunk's
    block; None: from the zarr cube) and return its summary row.

    An exception is re-raised for Spark to retry the task, except on its last attempt
    (``job["max_attempts"]``): then the row carries the reason in ``error`` and the driver records
    the chunk's failure (what :func:`gsn_dask.pipeline.run_fit` does)."""
    from gsn_dask.run import failure_reason, fit_chunk

    t0 = (time.perf_counter(), time.process_time())
    attempt = _task_attempt()
    try:
        rec = fit_chunk(job["chunk_job"], task, model=load_model_cached(job["model"]), read=read)
    except Exception as exc:  # noqa: BLE001 - retried by Spark; reported on the last attempt
        if attempt + 1 < int(job.get("max_attempts", 1)):
            raise
        reason = failure_reason(exc)
        log.error("chunk %d failed: %s", task.index, reason)
        return _summary_row(task, t0, attempt, (0, 0, task.stop - task.start), reason[:500])
    return _summary_row(task, t0, attempt, (rec["n_ok"], rec["n_flagged"], rec["n_failed"]), None)


def fit_partition_zarr(batches: Iterator[pd.DataFrame], job: Mapping[str, Any]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` function for zarr input: each row is a (chunk, start, stop) tuple; the
    executor reads those stars from the cube itself."""
    configure_worker_threads(int(job.get("threads", 1)))
    for pdf in batches:
        for chunk, start, stop in pdf[["chunk", "start", "stop"]].itertuples(index=False):
            yield fit_and_write_chunk(None, ChunkTask(int(chunk), int(start), int(stop)), job)


def fit_partition_parquet(batches: Iterator[pd.DataFrame], job: Mapping[str, Any]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` function for Parquet input: the partition holds whole chunks' rows
    (repartitioned by chunk); they are grouped by chunk, rebuilt as cube blocks and fitted."""
    from gsn_dask.parquet_export import frame_to_spectra

    configure_worker_threads(int(job.get("threads", 1)))
    frames = [pdf for pdf in batches if len(pdf)]
    if not frames:
        return
    part = pd.concat(frames, ignore_index=True)
    chunk_size, n_star = int(job["chunk_size"]), int(job["n_star"])
    for chunk, pdf in part.groupby("_chunk", sort=True):
        task = ChunkTask(int(chunk), int(chunk) * chunk_size, min((int(chunk) + 1) * chunk_size, n_star))
        rows = pdf.drop(columns=["_chunk", "_key"], errors="ignore")
        yield fit_and_write_chunk(functools.partial(frame_to_spectra, rows, job["parquet_meta"]), task, job)


def write_results_parquet_partition(batches: Iterator[pd.DataFrame], job: Mapping[str, Any]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` function: each task writes the results of its chunk(s) as
    ``part-<chunk>.parquet`` (the layout of :func:`gsn_dask.parquet_export.write_results_parquet`)."""
    import pyarrow.parquet as pq

    from gsn_dask.parquet_export import results_table
    from gsn_dask.results_store import quiet_zarr

    with quiet_zarr():
        res = xr.open_zarr(job["out"], consolidated=False, chunks=None)
    for pdf in batches:
        for chunk, start, stop in pdf[["chunk", "start", "stop"]].itertuples(index=False):
            with quiet_zarr():
                block = res.isel(star=slice(int(start), int(stop))).load()
            path = Path(job["results_parquet"]) / f"part-{int(chunk):05d}.parquet"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            pq.write_table(results_table(block, start=int(start)), tmp, compression="zstd")
            os.replace(tmp, path)
            yield pd.DataFrame({"chunk": [int(chunk)], "rows": [int(stop) - int(start)]})


# =============================================================================== driver
def is_parquet_input(path: str | Path) -> bool:
    """True for a ``.parquet`` file or a directory of them that is not a zarr store."""
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return True
    return path.is_dir() and not (path / "zarr.json").exists() and any(path.glob("*.parquet"))


def _progress_thread(spark: SparkSession, total: int, stop: threading.Event, desc: str) -> threading.Thread:
    """A tqdm bar fed by Spark's status tracker (completed tasks of the running stages)."""
    from tqdm.auto import tqdm

    def loop() -> None:
        tracker = spark.sparkContext.statusTracker()
        bar = tqdm(total=total, desc=desc, unit="part", dynamic_ncols=True)
        seen = 0
        try:
            while not stop.wait(0.5):
                done = 0
                for sid in tracker.getActiveStageIds():
                    info = tracker.getStageInfo(sid)
                    if info is not None and info.numTasks == total:
                        done += info.numCompletedTasks
                if done > seen:
                    bar.update(done - seen)
                    seen = done
            bar.update(max(total - seen, 0))
        finally:
            bar.close()

    th = threading.Thread(target=loop, daemon=True, name="spark-fit-progress")
    th.start()
    return th


def _partition_keys(spark: SparkSession, chunks: Sequence[int], n_parts: int) -> dict[int, int]:
    """A key per chunk such that ``repartition(n_parts, key)`` (Spark's ``pmod(hash(key), n)``)
    deals the chunks round-robin over the partitions; hashing the chunk ids themselves can put
    two chunks in one partition and leave another empty."""
    from pyspark.sql import functions as F

    rows = (
        spark.range(0, max(64 * n_parts, 256), numPartitions=1)
        .select("id", F.expr(f"pmod(hash(id), {int(n_parts)})").alias("p"))
        .collect()
    )
    key_of_part: dict[int, int] = {}
    for r in rows:
        key_of_part.setdefault(int(r["p"]), int(r["id"]))
    return {int(c): key_of_part.get(i % n_parts, i % n_parts) for i, c in enumerate(chunks)}


def _check_options(cube_path: Path, input_format: str, model_broadcast: str, chunks_per_partition: int) -> str:
    """Refuse bad Spark runner options; returns the input format (``"auto"`` detected)."""
    if model_broadcast not in ("bytes", "path"):
        raise ValueError(f"model_broadcast must be 'bytes' or 'path', got {model_broadcast!r}")
    if chunks_per_partition < 1:
        raise ValueError(f"chunks_per_partition must be >= 1, got {chunks_per_partition}")
    if input_format == "auto":
        input_format = "parquet" if is_parquet_input(cube_path) else "zarr"
    if input_format not in ("zarr", "parquet"):
        raise ValueError(f"input_format must be 'auto', 'zarr' or 'parquet', got {input_format!r}")
    return input_format


def _parquet_cube_meta(path: Path) -> CubeMeta:
    """:class:`~gsn_dask.run.CubeMeta` of a Parquet export (star ids are read later, by Spark)."""
    from gsn_dask.parquet_export import parquet_metadata

    meta = parquet_metadata(path)
    return CubeMeta(path, None, np.asarray(meta["wavelength"]), int(meta.get("chunk_size") or 0) or 256,
                    bool(meta.get("attrs", {}).get("normalised", False)), meta.get("attrs", {}).get("arm_split_aa"))


def _parquet_star_ids(spark: SparkSession, path: Path) -> tuple[DataFrame, np.ndarray]:
    """The Parquet export as a Spark DataFrame and its star ids in ``index`` order."""
    pq_df = spark.read.parquet(str(path))
    ids = pq_df.select("index", "star").toPandas().sort_values("index")
    if not np.array_equal(ids["index"].to_numpy(), np.arange(len(ids))):
        raise ValueError(f"{path}: the 'index' column is not 0..n-1 (an incomplete or mixed export)")
    return pq_df, rs.as_str_array(ids["star"].to_numpy())


def _spark_job(plan: RunPlan, store: RunStore, sc: Any, *, model_broadcast: str, threads_per_task: int,
               fit_fn: Any) -> dict[str, Any]:
    """What every executor task gets: the run's :class:`~gsn_dask.run.ChunkJob`, the model spec
    (broadcast bytes or path), thread cap, chunking and task attempts."""
    if model_broadcast == "bytes":
        payload = model_payload(plan.model_dir)
        spec: dict[str, Any] = {"kind": "bytes", "payload": sc.broadcast(payload), "key": payload_key(payload)}
    else:
        spec = {"kind": "path", "path": str(plan.model_dir), "sha256": plan.model.sha256}
    return {
        "chunk_job": plan.job(fit_fn), "model": spec, "threads": int(threads_per_task),
        "chunk_size": int(store.chunk_size), "n_star": int(store.stars.size),
        "max_attempts": max_task_attempts(sc.master, dict(sc.getConf().getAll())),
    }


def _run_fit_job(spark: SparkSession, store: RunStore, job: dict[str, Any], pq_df: DataFrame | None,
                 chunks_per_partition: int, progress: bool) -> pd.DataFrame:
    """The Spark job over the pending chunks; their summary rows, sorted by chunk."""
    if not store.pending:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    sc = spark.sparkContext
    n_parts = max(1, math.ceil(len(store.pending) / chunks_per_partition))
    if pq_df is None:
        rdd = sc.parallelize([(t.index, t.start, t.stop) for t in store.pending], numSlices=n_parts)
        result = spark.createDataFrame(rdd, _TASK_SCHEMA).mapInPandas(
            functools.partial(fit_partition_zarr, job=job), SUMMARY_SCHEMA)
    else:
        from pyspark.sql import functions as F

        keys = _partition_keys(spark, [t.index for t in store.pending], n_parts)
        key_df = spark.createDataFrame(pd.DataFrame({"_chunk": list(keys), "_key": list(keys.values())}))
        frame = (
            pq_df.withColumn("_chunk", F.floor(F.col("index") / F.lit(int(store.chunk_size))).cast("long"))
            .join(F.broadcast(key_df), on="_chunk", how="inner")
            .repartition(n_parts, "_key")
        )
        result = frame.mapInPandas(functools.partial(fit_partition_parquet, job=job), SUMMARY_SCHEMA)
    stop_evt = threading.Event()
    bar = _progress_thread(spark, n_parts, stop_evt, "spark fit") if progress else None
    try:
        summary = result.toPandas()
    finally:
        stop_evt.set()
        if bar is not None:
            bar.join(timeout=2)
    return summary.sort_values("chunk").reset_index(drop=True)


def _record_outcome(store: RunStore, summary: pd.DataFrame) -> list[int]:
    """Record the chunks that failed on every attempt (rows with the reason, not done) and check
    that every other pending chunk is done; returns the failed chunks."""
    errors = {int(c): str(e) for c, e in zip(summary["chunk"], summary["error"]) if isinstance(e, str)}
    for c, err in sorted(errors.items()):
        print(f"chunk {c} failed: {err}", file=sys.stderr)
    store.record_failures(errors)
    done = rs.done_chunks(store.out)
    missing = [t.index for t in store.pending if not done[t.index] and t.index not in errors]
    if missing:
        raise RuntimeError(f"{len(missing)} chunks have neither a completion record nor a failure: {missing[:10]}")
    return sorted(errors)


def _write_results_parquet(spark: SparkSession, store: RunStore, pq_out: Path) -> None:
    """The results as Parquet in ``pq_out`` (replaced): each task writes its chunks' part files."""
    sc = spark.sparkContext
    if pq_out.exists():
        shutil.rmtree(pq_out)  # a Parquet export (checked before the fit), derived from the store
    pq_out.mkdir(parents=True)
    rjob = {"out": str(store.out), "results_parquet": str(pq_out)}
    n = max(1, min(len(store.tasks), sc.defaultParallelism * 4))
    rdd = sc.parallelize([(t.index, t.start, t.stop) for t in store.tasks], numSlices=n)
    spark.createDataFrame(rdd, _TASK_SCHEMA).mapInPandas(
        functools.partial(write_results_parquet_partition, job=rjob), "chunk long, rows long"
    ).collect()
    (pq_out / "_SUCCESS").write_text(f"{len(store.tasks)} files, {store.stars.size} stars\n")


def fit_cube_spark(
    cube: str | Path,
    model_dir: str | Path,
    out: str | Path,
    *,
    config: Any = None,
    seed: int = 0,
    spark: SparkSession | None = None,
    master: str | None = None,
    input_format: str = "auto",
    chunk_size: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    force_unlock: bool = False,
    chunks_per_partition: int = 1,
    model_broadcast: str = "bytes",
    results_parquet: str | Path | None = None,
    sampler: str = "emcee",
    ui: bool = False,
    progress: bool = True,
    threads_per_task: int = 1,
    spark_conf: Mapping[str, Any] | None = None,
    driver_memory: str | None = None,
    fit_fn: Any = None,
) -> SparkFitReport:
    """Fit every star of ``cube`` with the GSN in ``model_dir`` on Spark; results to ``out`` (zarr).

    ``cube``: a spectra cube (zarr) or, with ``input_format="parquet"`` (``"auto"`` detects it), a
    directory from ``gsn-dask export-parquet``. ``config``: a :class:`~gsn_dask.fit.config.FitConfig`
    (or its dict; None = defaults), checked against the model before Spark starts. ``seed``: the
    run seed (a star's seed derives from it and the star id, so the numbers equal the Dask
    runner's). ``spark``: an existing session (else one is built by
    :func:`spark_compat.session.build_session` for ``master``, ``ui``, ``spark_conf`` and
    ``driver_memory``, after the checks; it is left running). ``chunk_size``: stars per task and
    per zarr chunk of the store (default: the cube's chunk, split into about 4 tasks per core when
    the cube has fewer chunks). ``resume`` fits only chunks not marked done (same settings);
    ``overwrite`` replaces an existing results store (never anything else); ``force_unlock`` takes
    over a stale lock. ``results_parquet``: also write the results as Parquet there. ``fit_fn``:
    the block fitting function (default ``fit_block``; executors must be able to unpickle it).
    Paths must be readable/writable by the executors at the same location.
    """
    from gsn_dask.cube import validate_results
    from gsn_dask.run import open_run, prepare_run

    t_start = time.perf_counter()
    timings: dict[str, float] = {"startup": 0.0}
    cube_path = Path(cube).expanduser().resolve()
    input_format = _check_options(cube_path, input_format, model_broadcast, chunks_per_partition)
    meta = zarr_cube_meta(cube_path) if input_format == "zarr" else _parquet_cube_meta(cube_path)
    plan = prepare_run(meta, model_dir, out, config=config, seed=seed, sampler=sampler, resume=resume,
                       overwrite=overwrite, chunk_size=chunk_size)
    pq_out = None if results_parquet is None else check_parquet_out(
        results_parquet, overwrite=True, inputs=[cube_path, plan.out])  # only a Parquet export is replaced
    if spark is None:
        from .session import build_session

        t0 = time.perf_counter()
        extra = {"driver_memory": driver_memory} if driver_memory else {}
        spark = build_session(master, ui=ui, threads_per_task=threads_per_task, conf=spark_conf, **extra)
        timings["startup"] = time.perf_counter() - t0
    sc = spark.sparkContext
    t_plan = time.perf_counter()
    pq_df = None
    if input_format == "parquet":
        pq_df, stars = _parquet_star_ids(spark, cube_path)
        plan = plan.with_stars(stars)
    started = rs.utc_now()
    n_slots = max(1, int(sc.defaultParallelism) // max(1, int(threads_per_task)))  # tasks running at once
    with open_run(plan, n_slots=n_slots, engine=ENGINE, force_unlock=force_unlock,
                  note=f"spark_compat fit ({sc.master})") as store:
        timings["plan"] = time.perf_counter() - t_plan
        job = _spark_job(plan, store, sc, model_broadcast=model_broadcast, threads_per_task=threads_per_task,
                         fit_fn=fit_fn)
        if pq_df is not None:
            job["parquet_meta"] = _parquet_meta_for_tasks(cube_path)
        t_fit = time.perf_counter()
        summary = _run_fit_job(spark, store, job, pq_df, chunks_per_partition, progress)
        timings["fit"] = time.perf_counter() - t_fit
        failed = _record_outcome(store, summary)
        last_run = {
            "engine": ENGINE, "n_chunks": len(store.tasks), "chunks_fitted": len(summary) - len(failed),
            "chunks_skipped": store.n_skipped, "chunks_failed": len(failed), "failed_chunks": failed or None,
            "n_workers": int(sc.defaultParallelism), "scheduler": sc.master, "dashboard": sc.uiWebUrl,
            "started": started, "wall_s": time.perf_counter() - t_start, "spark_version": spark.version,
        }
        store.finish(ENGINE, {"last_run": json.dumps(last_run), "spark_master": sc.master})
        t_pq = time.perf_counter()
        if pq_out is not None:
            _write_results_parquet(spark, store, pq_out)
        timings["results_parquet"] = time.perf_counter() - t_pq
    timings["total"] = time.perf_counter() - t_start
    return SparkFitReport(results=validate_results(rs.open_store(plan.out)), summary=summary,
                          n_chunks=len(store.tasks), n_skipped=store.n_skipped, failed_chunks=failed,
                          timings=timings, out=plan.out, results_parquet=pq_out)


def _parquet_meta_for_tasks(path: Path) -> dict[str, Any]:
    """The Parquet export's metadata as executors need it (wavelength as a list of floats)."""
    from gsn_dask.parquet_export import parquet_metadata

    meta = parquet_metadata(path)
    return {**meta, "wavelength": [float(w) for w in meta["wavelength"]]}


__all__ = [
    "ENGINE",
    "SUMMARY_COLUMNS",
    "SUMMARY_SCHEMA",
    "SparkFitReport",
    "configure_worker_threads",
    "fit_and_write_chunk",
    "fit_cube_spark",
    "fit_partition_parquet",
    "fit_partition_zarr",
    "is_parquet_input",
    "load_model_cached",
    "max_task_attempts",
    "model_payload",
    "payload_key",
    "write_results_parquet_partition",
]
