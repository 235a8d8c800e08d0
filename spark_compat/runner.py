"""Fit a spectra cube on Spark: the same ``fit_block`` as the Dask runner, the same results store.

Driver (:func:`fit_cube_spark`)
    reads only the cube's metadata and star ids, checks the model against the cube, takes the
    store's lock, creates (or, with ``resume``, reopens) the results store through
    :mod:`gsn_dask.results_store` (same attrs as :func:`gsn_dask.pipeline.run_fit`, so a store
    started by one engine can be resumed by the other), and sends the executors a small DataFrame
    of ``(chunk, start, stop)`` tuples, one per results chunk (= zarr chunk of the cube by
    default), ``chunks_per_partition`` of them per Spark partition. No spectra pass through the
    driver.

Executors (``mapInPandas`` over Arrow batches of those tuples)
    read their own stars from the zarr cube (:func:`gsn_dask.pipeline.read_block`), or, for Parquet
    input, receive their chunks' rows from Spark's Parquet reader (repartitioned by chunk); call
    :func:`gsn_dask.fit.block.fit_block` with the run seed; write the rows into their own region of
    the store (:func:`~gsn_dask.results_store.write_rows`) and only then the chunk's completion
    record (:func:`~gsn_dask.results_store.mark_chunk_done`), so a retried task rewrites only its
    region and a chunk marked done always has its rows. Each returns one summary row per chunk:
    chunk, start, stop, n_ok, n_flagged, n_failed, seconds (wall), cpu_seconds (of the Python
    worker), host, pid, attempt, model_loads (loads done by that worker so far), error.

A chunk whose task raises is retried by Spark (``spark.task.maxFailures``, or F in
``local[N,F]``); on its last attempt the task writes rows flagged NOT_FITTED with
``status = "error: chunk task failed: ..."`` and leaves the chunk not done (``--resume`` tries it
again), exactly like the Dask runner.

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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

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


# =============================================================================== plan
@dataclasses.dataclass(frozen=True)
class ChunkTask:
    """One chunk of the results store: stars ``start:stop`` (``chunk`` = its index)."""

    chunk: int
    start: int
    stop: int


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


def chunk_tasks(n_star: int, chunk_size: int) -> list[ChunkTask]:
    """The store's chunks (:func:`gsn_dask.results_store.chunk_bounds`) as tasks."""
    from gsn_dask.results_store import chunk_bounds

    return [ChunkTask(i, a, b) for i, (a, b) in enumerate(chunk_bounds(n_star, chunk_size))]


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


def summarise_rows(rows: xr.Dataset) -> tuple[int, int, int]:
    """(n_ok, n_flagged, n_failed) of result rows: flag 0; fitted with some flag; not fitted."""
    from gsn_dask.flags import Flag

    flag = np.asarray(rows["flag"].values, dtype=np.int64)
    failed = (flag & int(Flag.NOT_FITTED)) != 0
    ok = flag == 0
    return int(ok.sum()), int((~ok & ~failed).sum()), int(failed.sum())


def _summary_row(task: ChunkTask, t0: tuple[float, float], attempt: int, counts: tuple[int, int, int],
                 error: str | None) -> pd.DataFrame:
    n_ok, n_flagged, n_failed = counts
    return pd.DataFrame([{
        "chunk": task.chunk, "start": task.start, "stop": task.stop, "n_ok": n_ok, "n_flagged": n_flagged,
        "n_failed": n_failed, "seconds": time.perf_counter() - t0[0], "cpu_seconds": time.process_time() - t0[1],
        "host": socket.gethostname(),
        "pid": os.getpid(), "attempt": attempt, "model_loads": int(_WORKER_STATE["model_loads"]), "error": error,
    }], columns=SUMMARY_COLUMNS)


def fit_and_write_chunk(read: Any, task: ChunkTask, job: Mapping[str, Any]) -> pd.DataFrame:
    """Read (``read()`` -> the chunk's block), fit, write the rows, then mark the chunk done;
    returns its summary row. Runs on executors.

    An exception is re-raised for Spark to retry the task, except on its last attempt
    (``job["max_attempts"]``): then the chunk's rows are written flagged NOT_FITTED with the
    reason and the chunk is left not done (what :func:`gsn_dask.pipeline.run_fit` does)."""
    from gsn_dask import results_store as rs
    from gsn_dask.fit.block import fit_block
    from gsn_dask.fit.config import FitConfig

    t0 = (time.perf_counter(), time.process_time())
    attempt = _task_attempt()
    try:
        model = load_model_cached(job["model"])
        block = read()
        if int(block.sizes["star"]) != task.stop - task.start:
            raise RuntimeError(f"chunk {task.chunk}: got {block.sizes['star']} rows for stars {task.start}:{task.stop}")
        fit_fn = job.get("fit_fn") or fit_block
        rows = fit_fn(block, model, config=FitConfig.from_dict(job["config"]), run_seed=int(job["seed"]),
                      sampler=job["sampler"], progress=False)
        if not np.array_equal(rs.as_str_array(rows["star"].values), rs.as_str_array(block["star"].values)):
            raise RuntimeError(f"the fit function returned other stars than chunk {task.chunk} holds")
        rs.write_rows(job["out"], rows, task.start)
        if task.chunk in job.get("fail_after_write", ()) and attempt == 0:
            # test hook: the task dies between its row write and its completion record
            raise RuntimeError(f"injected failure after writing chunk {task.chunk}")
        rs.mark_chunk_done(job["out"], task.chunk)
    except Exception as exc:  # noqa: BLE001 - retried by Spark; recorded on the last attempt
        if attempt + 1 < int(job.get("max_attempts", 1)):
            raise
        reason = f"error: chunk task failed: {type(exc).__name__}: {exc}"
        log.error("chunk %d failed: %s", task.chunk, reason)
        stars = _chunk_star_ids(job, task)
        rows = rs.failed_rows(stars, job["labels"], reason, n_draws=int(job["n_draws"]))
        rs.write_rows(job["out"], rows, task.start)
        return _summary_row(task, t0, attempt, (0, 0, task.stop - task.start), reason[:500])
    return _summary_row(task, t0, attempt, summarise_rows(rows), None)


def _chunk_star_ids(job: Mapping[str, Any], task: ChunkTask) -> np.ndarray:
    """The stored star ids of a chunk (from the results store, which every task can read)."""
    from gsn_dask import results_store as rs

    with rs.quiet_zarr():
        ds = xr.open_zarr(job["out"], consolidated=False, chunks=None, create_default_indexes=False)
        return rs.as_str_array(ds["star"].isel(star=slice(task.start, task.stop)).values)


def fit_partition_zarr(batches: Iterator[pd.DataFrame], job: Mapping[str, Any]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` function for zarr input: each row is a (chunk, start, stop) tuple; the
    executor reads those stars from the cube itself."""
    from gsn_dask.pipeline import read_block

    configure_worker_threads(int(job.get("threads", 1)))
    for pdf in batches:
        for chunk, start, stop in pdf[["chunk", "start", "stop"]].itertuples(index=False):
            task = ChunkTask(int(chunk), int(start), int(stop))
            yield fit_and_write_chunk(functools.partial(read_block, job["cube"], task.start, task.stop), task, job)


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
    fit_fn: Any = None,
    _fail_after_write: Sequence[int] = (),
) -> SparkFitReport:
    """Fit every star of ``cube`` with the GSN in ``model_dir`` on Spark; results to ``out`` (zarr).

    ``cube``: a spectra cube (zarr) or, with ``input_format="parquet"`` (``"auto"`` detects it), a
    directory from ``gsn-dask export-parquet``. ``config``: a :class:`~gsn_dask.fit.config.FitConfig`
    (or its dict; None = defaults). ``seed``: the run seed (a star's seed derives from it and the
    star id, so the numbers equal the Dask runner's). ``spark``: an existing session (else one is
    built by :func:`spark_compat.session.build_session` for ``master``; it is left running).
    ``chunk_size``: stars per task and per zarr chunk of the store (default: the cube's chunk).
    ``resume`` fits only chunks not marked done (the store's settings must match); ``overwrite``
    replaces an existing store; ``force_unlock`` takes over a stale lock. ``results_parquet``: also
    write the results as Parquet there. ``fit_fn``: the block fitting function (default
    ``fit_block``; must be importable on executors). Paths must be readable/writable by the
    executors at the same location (local mode, or shared storage on a cluster).
    """
    from gsn_dask import results_store as rs
    from gsn_dask.cube import open_spectra
    from gsn_dask.emulator import load_model
    from gsn_dask.fit.config import FitConfig

    from .session import build_session

    t_start = time.perf_counter()
    timings: dict[str, float] = {"startup": 0.0}
    cube_path = Path(cube).expanduser().resolve()
    model_path = Path(model_dir).expanduser().resolve()
    out_path = Path(out).expanduser().resolve()
    if not cube_path.exists():
        raise FileNotFoundError(f"no spectra cube at {cube_path}")
    if out_path == cube_path:
        raise ValueError("the output store must not be the input cube")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if input_format == "auto":
        input_format = "parquet" if is_parquet_input(cube_path) else "zarr"
    if input_format not in ("zarr", "parquet"):
        raise ValueError(f"input_format must be 'auto', 'zarr' or 'parquet', got {input_format!r}")
    if model_broadcast not in ("bytes", "path"):
        raise ValueError(f"model_broadcast must be 'bytes' or 'path', got {model_broadcast!r}")
    if chunks_per_partition < 1:
        raise ValueError(f"chunks_per_partition must be >= 1, got {chunks_per_partition}")
    if isinstance(config, Mapping):
        config = FitConfig.from_dict(config)
    config = config if config is not None else FitConfig()

    # ---- cube metadata (the driver reads ids and attrs only, never spectra)
    parquet_meta: dict[str, Any] | None = None
    if input_format == "zarr":
        from gsn_dask.parquet_export import star_chunks

        ds = open_spectra(cube_path)
        bounds = star_chunks(ds)
        cube_chunk = int(bounds[0][1] - bounds[0][0]) if bounds else 1
        stars: np.ndarray | None = rs.as_str_array(ds["star"].values)
        wavelength = np.asarray(ds["wavelength"].values)
        normalised = bool(ds.attrs.get("normalised", False))
    else:
        from gsn_dask.parquet_export import parquet_metadata

        parquet_meta = parquet_metadata(cube_path)
        cube_chunk = int(parquet_meta.get("chunk_size") or 0) or 256
        wavelength = parquet_meta["wavelength"]
        normalised = bool(parquet_meta.get("attrs", {}).get("normalised", False))
        stars = None  # read below through Spark (ids only)

    # ---- the model, checked on the driver: fail fast with the emulator's clear message
    model = load_model(model_path)
    model.pixel_slice(np.asarray(wavelength))

    if spark is None:
        t0 = time.perf_counter()
        spark = build_session(master, ui=ui, threads_per_task=threads_per_task, conf=spark_conf)
        timings["startup"] = time.perf_counter() - t0
    sc = spark.sparkContext
    t_plan = time.perf_counter()
    pq_df = None
    if input_format == "parquet":
        pq_df = spark.read.parquet(str(cube_path))
        ids = pq_df.select("index", "star").toPandas().sort_values("index")
        if not np.array_equal(ids["index"].to_numpy(), np.arange(len(ids))):
            raise ValueError(f"{cube_path}: the 'index' column is not 0..n-1 (an incomplete or mixed export)")
        stars = rs.as_str_array(ids["star"].to_numpy())
    assert stars is not None
    n_star = int(stars.size)
    if n_star == 0:
        raise ValueError(f"{cube_path} holds no stars")

    expect = rs.run_identity(model, seed=seed, sampler=sampler, config=config)
    if out_path.exists() and not rs.store_exists(out_path):
        if not out_path.is_dir() or any(p.name != rs.LOCK_FILE for p in out_path.iterdir()):
            raise FileExistsError(f"{out_path} exists and is not a zarr store: choose another --out")
    token = rs.acquire_lock(out_path, force=force_unlock, note=f"spark_compat fit ({sc.master})")
    started = rs.utc_now()
    try:
        # ---- the store: resume it or create it (attrs as the Dask runner writes them)
        if rs.store_exists(out_path) and resume:
            rs.check_resumable(out_path, expect, stars)
            stored = int(rs.store_attrs(out_path)["chunk_size"])
            if chunk_size is not None and int(chunk_size) != stored:
                log.warning("resuming with the store's chunk size %d (not %d)", stored, chunk_size)
            chunk_size = stored
        else:
            if rs.store_exists(out_path) and not overwrite:
                raise FileExistsError(f"{out_path} exists: use --resume to continue it or --overwrite to replace it")
            chunk_size = int(chunk_size or cube_chunk)
            attrs = rs.run_attrs(expect, model, model_dir=model_path, cube_path=cube_path, normalised=normalised,
                                 engine=ENGINE, config=config)
            rs.create_store(out_path, stars, model.label_names, chunk_size=int(chunk_size),
                            n_draws=int(config.n_draws), attrs=attrs, overwrite=overwrite)
        tasks = chunk_tasks(n_star, int(chunk_size))
        done = rs.done_chunks(out_path)
        todo = [t for t in tasks if not done[t.chunk]]
        n_skipped = len(tasks) - len(todo)
        if n_skipped:
            print(f"resuming: {n_skipped} of {len(tasks)} chunks already done", file=sys.stderr)
        timings["plan"] = time.perf_counter() - t_plan

        # ---- the fit job
        if model_broadcast == "bytes":
            payload = model_payload(model_path)
            model_spec: dict[str, Any] = {"kind": "bytes", "payload": sc.broadcast(payload), "key": payload_key(payload)}
        else:
            model_spec = {"kind": "path", "path": str(model_path), "sha256": model.sha256}
        job: dict[str, Any] = {
            "cube": str(cube_path), "out": str(out_path), "model": model_spec, "config": config.to_dict(),
            "seed": int(seed), "sampler": sampler, "threads": int(threads_per_task), "chunk_size": int(chunk_size),
            "n_star": n_star, "labels": list(model.label_names), "n_draws": int(config.n_draws),
            "max_attempts": max_task_attempts(sc.master, dict(sc.getConf().getAll())),
            "fit_fn": fit_fn, "fail_after_write": tuple(int(c) for c in _fail_after_write),
        }
        t_fit = time.perf_counter()
        summary = pd.DataFrame(columns=SUMMARY_COLUMNS)
        if todo:
            n_parts = max(1, math.ceil(len(todo) / chunks_per_partition))
            if input_format == "zarr":
                rdd = sc.parallelize([(t.chunk, t.start, t.stop) for t in todo], numSlices=n_parts)
                frame = spark.createDataFrame(rdd, _TASK_SCHEMA)
                result = frame.mapInPandas(functools.partial(fit_partition_zarr, job=job), SUMMARY_SCHEMA)
            else:
                from pyspark.sql import functions as F

                job["parquet_meta"] = {**parquet_meta, "wavelength": [float(w) for w in wavelength]}
                keys = _partition_keys(spark, [t.chunk for t in todo], n_parts)
                key_df = spark.createDataFrame(pd.DataFrame({"_chunk": list(keys), "_key": list(keys.values())}))
                frame = (
                    pq_df.withColumn("_chunk", F.floor(F.col("index") / F.lit(int(chunk_size))).cast("long"))
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
            summary = summary.sort_values("chunk").reset_index(drop=True)
        timings["fit"] = time.perf_counter() - t_fit
        failed = sorted(int(c) for c in summary.loc[summary["error"].notna(), "chunk"]) if len(summary) else []
        for c in failed:
            err = summary.loc[summary["chunk"] == c, "error"].iloc[0]
            print(f"chunk {c} failed: {err}", file=sys.stderr)
        final_done = rs.done_chunks(out_path)
        missing = [t.chunk for t in todo if not final_done[t.chunk] and t.chunk not in failed]
        if missing:
            raise RuntimeError(f"{len(missing)} chunks have neither a completion record nor a failure: {missing[:10]}")
        last_run = {
            "engine": ENGINE, "n_chunks": len(tasks), "chunks_fitted": len(summary) - len(failed),
            "chunks_skipped": n_skipped, "chunks_failed": len(failed), "failed_chunks": failed or None,
            "n_workers": int(sc.defaultParallelism), "scheduler": sc.master, "dashboard": sc.uiWebUrl,
            "started": started, "wall_s": time.perf_counter() - t_start, "spark_version": spark.version,
        }
        rs.update_attrs(out_path, {"engine": ENGINE, "last_run": json.dumps(last_run), "updated": rs.utc_now(),
                                   "spark_master": sc.master})

        # ---- results as Parquet (each task writes its chunks' part files)
        pq_out: Path | None = None
        t_pq = time.perf_counter()
        if results_parquet is not None:
            pq_out = Path(results_parquet).expanduser().resolve()
            if pq_out.exists():
                shutil.rmtree(pq_out)  # derived from the store, which is the truth
            pq_out.mkdir(parents=True)
            rjob = {"out": str(out_path), "results_parquet": str(pq_out)}
            n = max(1, min(len(tasks), sc.defaultParallelism * 4))
            rdd = sc.parallelize([(t.chunk, t.start, t.stop) for t in tasks], numSlices=n)
            spark.createDataFrame(rdd, _TASK_SCHEMA).mapInPandas(
                functools.partial(write_results_parquet_partition, job=rjob), "chunk long, rows long"
            ).collect()
            (pq_out / "_SUCCESS").write_text(f"{len(tasks)} files, {n_star} stars\n")
        timings["results_parquet"] = time.perf_counter() - t_pq
    finally:
        rs.release_lock(out_path, token)
    timings["total"] = time.perf_counter() - t_start
    from gsn_dask.cube import validate_results

    return SparkFitReport(
        results=validate_results(rs.open_store(out_path)),
        summary=summary,
        n_chunks=len(tasks),
        n_skipped=n_skipped,
        failed_chunks=failed,
        timings=timings,
        out=out_path,
        results_parquet=pq_out,
    )


__all__ = [
    "ChunkTask",
    "ENGINE",
    "SUMMARY_COLUMNS",
    "SUMMARY_SCHEMA",
    "SparkFitReport",
    "chunk_tasks",
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
    "summarise_rows",
    "write_results_parquet_partition",
]
