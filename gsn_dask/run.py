"""The engine-neutral run layer: everything a fit run does except scheduling its tasks.

1. :func:`prepare_run` checks, before anything is written and before any star is fitted, the
   output path (not the input cube, not under a plain file, not someone else's data), the
   FitConfig against the model and sampler (:func:`gsn_dask.fit.config.check_config`) and the
   model's wavelength grid against the cube's.
2. ``with open_run(plan, n_slots=...) as store:`` takes the store's lock, creates the results
   store (zarr chunks = the task size, :func:`task_chunk_size`) or reopens it to resume (same
   settings), and lists the chunks still to fit; the lock is released on the way out.
3. The engines (:mod:`gsn_dask.pipeline`: Dask or a serial loop; :mod:`spark_compat`: Spark) run
   :func:`fit_chunk` once per pending chunk, in any process that sees the paths: read the stars,
   fit them, check the ids, write the chunk's region, then mark it done.
4. :meth:`RunStore.record_failures` gives chunks that failed for good rows with the reason (not
   marked done, so ``--resume`` retries them); :meth:`RunStore.finish` stores the run summary.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from . import results_store as rs
from .cube import RESULTS_SCHEMA, OutputPathError, check_output_path, cube_chunk_size, open_spectra, read_block

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import GSN
    from .fit.config import FitConfig

log = logging.getLogger(__name__)

#: the block fitting function: ``fit_fn(block, model, *, config, run_seed, sampler, progress)``
#: -> result rows (the signature of :func:`gsn_dask.fit.block.fit_block`)
FitFn = Callable[..., xr.Dataset]

#: without a given chunk size, a cube with fewer chunks than this many per worker slot is split
#: into this many tasks per slot, so that no worker idles while another fits a long chunk
TASKS_PER_SLOT = 4


@dataclass(frozen=True)
class ChunkTask:
    """Chunk ``index`` of the results store: stars ``[start, stop)``."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True)
class ChunkJob:
    """What every chunk task of a run needs; small and picklable (paths, not data)."""

    cube_path: str
    out_path: str
    model_dir: str
    model_sha256: str
    config: dict[str, Any]
    seed: int
    sampler: str = "emcee"
    fit_fn: FitFn | None = None


@dataclass(frozen=True)
class CubeMeta:
    """What the driver reads of the input cube: ids (None until known), the wavelength grid
    (Angstrom), stars per stored chunk and whether the flux is normalised. Never spectra."""

    path: Path
    stars: np.ndarray | None
    wavelength: np.ndarray
    chunk_size: int
    normalised: bool
    arm_split_aa: float | None = None  # the cube's attrs["arm_split_aa"] (LAMOST ingest: 5900 A)


def zarr_cube_meta(cube_path: str | Path) -> CubeMeta:
    """:class:`CubeMeta` of a spectra cube (zarr); FileNotFoundError if there is none."""
    path = Path(cube_path).expanduser().resolve()
    cube = open_spectra(path)
    return CubeMeta(path, rs.as_str_array(cube["star"].values), np.asarray(cube["wavelength"].values),
                    cube_chunk_size(cube), bool(cube.attrs.get("normalised", False)), cube.attrs.get("arm_split_aa"))


@dataclass(frozen=True)
class RunPlan:
    """A checked run: inputs, model, settings; what :func:`open_run` needs."""

    cube: CubeMeta
    model: GSN
    model_dir: Path
    out: Path
    config: FitConfig
    seed: int
    sampler: str
    resume: bool
    overwrite: bool
    chunk_size: int | None

    def with_stars(self, stars: np.ndarray) -> RunPlan:
        """The plan with the cube's star ids (for inputs whose ids are read later)."""
        return dataclasses.replace(self, cube=dataclasses.replace(self.cube, stars=rs.as_str_array(stars)))

    def job(self, fit_fn: FitFn | None = None) -> ChunkJob:
        """The :class:`ChunkJob` of this run's tasks."""
        return ChunkJob(str(self.cube.path), str(self.out), str(self.model_dir), self.model.sha256,
                        self.config.to_dict(), int(self.seed), self.sampler, fit_fn)


# ------------------------------------------------------------------------------ checks
def check_out_path(out: Path, cube: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output path that is the input cube (or inside it), lies under a plain file,
    holds something that is not a gsn-dask results store, or exists without ``resume`` /
    ``overwrite``. Nothing is written."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if out == cube or cube in out.parents:
        raise OutputPathError("the output store must not be the input cube (or inside it)")
    check_output_path(out)
    if not out.exists() or rs.read_lock(out) is not None:
        return  # absent, or another run is writing it: the lock decides, the store is checked under it
    if rs.store_exists(out):
        rs.require_results_store(out)
        if not (resume or overwrite):
            raise FileExistsError(f"{out} exists: use --resume to continue it or --overwrite to replace it")
    elif any(p.name != rs.LOCK_FILE for p in out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a zarr store: choose another --out")


def check_model_and_config(model: GSN, config: FitConfig, sampler: str, wavelength: np.ndarray) -> None:
    """Refuse a config that does not fit the model or sampler (:class:`~gsn_dask.fit.config.ConfigError`)
    and a model whose grid does not sit on the cube's (:class:`~gsn_dask.emulator.ModelMismatchError`)."""
    from .fit.config import check_config

    check_config(config, model, sampler)
    model.pixel_slice(np.asarray(wavelength))


def prepare_run(
    cube: CubeMeta,
    model_dir: str | Path,
    out: str | Path,
    *,
    config: FitConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    sampler: str = "emcee",
    resume: bool = False,
    overwrite: bool = False,
    chunk_size: int | None = None,
) -> RunPlan:
    """Check a run before anything is written (see the module doc) and return its plan.
    ``chunk_size``: stars per task as given by the user (None: :func:`task_chunk_size` decides)."""
    from .fit.config import FitConfig
    from .model_cache import get_model

    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if isinstance(config, Mapping):
        config = FitConfig.from_dict(config)
    config = (config if config is not None else FitConfig()).for_cube({"arm_split_aa": cube.arm_split_aa})
    out_path = Path(out).expanduser().resolve()
    check_out_path(out_path, cube.path, resume=resume, overwrite=overwrite)
    model_path = Path(model_dir).expanduser().resolve()
    try:
        model = get_model(model_path)
    except OSError as exc:  # unreadable files: one line naming the model, not a traceback
        from .emulator import ModelFileError

        raise ModelFileError(f"cannot read the model in {model_path}: {exc.strerror or exc}") from exc
    check_model_and_config(model, config, sampler, cube.wavelength)
    if cube.stars is not None and cube.stars.size == 0:
        raise ValueError(f"{cube.path} holds no stars")
    return RunPlan(cube, model, model_path, out_path, config, int(seed), sampler, bool(resume), bool(overwrite),
                   None if chunk_size is None else int(chunk_size))


def task_chunk_size(n_star: int, cube_chunk: int, n_slots: int, chunk_size: int | None = None) -> int:
    """Stars per task (= per zarr chunk of a new results store): ``chunk_size`` if given; else the
    cube's chunk, split when the cube has fewer than :data:`TASKS_PER_SLOT` chunks per worker
    slot (``n_slots``: worker processes x threads; one slot is never split) into about that
    many tasks per slot."""
    if chunk_size is not None:
        return int(chunk_size)
    cube_chunk = max(1, int(cube_chunk))
    want = TASKS_PER_SLOT * int(n_slots)
    if n_slots <= 1 or math.ceil(n_star / cube_chunk) >= want:
        return cube_chunk
    return max(1, min(cube_chunk, math.ceil(n_star / want)))


# ---------------------------------------------------------------------------- run attrs
def run_identity(model: Any, *, seed: int, sampler: str, config: Any) -> dict[str, Any]:
    """The attrs that identify a fit run (schema, model sha256, seed, sampler, FitConfig JSON, the
    per-label systematics folded into p16/p84 and the Kiel prior applied to them (JSON, "null" if
    none)): written into every results store, and what :func:`~gsn_dask.results_store.check_resumable`
    requires to match."""
    from .fit.result import reporting

    how = reporting(model, config)
    sys_ = how.systematics
    return {
        "schema": RESULTS_SCHEMA,
        "model_sha256": model.sha256,
        "seed": int(seed),
        "sampler": sampler,
        "fit_config": config.to_json(),
        "label_systematics": "null" if sys_ is None else sys_.to_json(),
        "label_prior": how.prior_json(),
    }


def run_attrs(
    identity: Mapping[str, Any],
    model: Any,
    *,
    model_dir: str | Path,
    cube_path: str | Path,
    normalised: bool,
    engine: str,
    config: Any,
) -> dict[str, Any]:
    """The attrs of a new results store, the same for every runner (Dask, serial, Spark):
    ``identity`` (:func:`run_identity`), the model, the input cube (``input_cube``,
    ``input_normalised``), the engine, the package version, the main sampling settings and
    the creation time."""
    from ._version import __version__

    return {
        **identity,
        "model_id": model.model_id,
        "model_dir": str(model_dir),
        "label_names": list(model.label_names),
        "input_cube": str(cube_path),
        "input_normalised": bool(normalised),
        "engine": engine,
        "package_version": __version__,
        "n_walkers": int(config.n_walkers),
        "n_burn": int(config.n_burn),
        "n_steps": int(config.n_steps),
        "created": rs.utc_now(),
    }


# ------------------------------------------------------------------------------- store
@dataclass
class RunStore:
    """The results store of a run in progress (the lock is held): its chunks and those to fit."""

    out: Path
    chunk_size: int
    tasks: list[ChunkTask]
    pending: list[ChunkTask]
    stars: np.ndarray
    labels: list[str]
    n_draws: int

    @property
    def n_skipped(self) -> int:
        """Chunks already done before this run (``resume``)."""
        return len(self.tasks) - len(self.pending)

    def record_failures(self, failures: Mapping[int, str]) -> None:
        """Rows flagged NOT_FITTED with the reason for the chunks that failed for good; they stay
        not done (``--resume`` fits them again)."""
        for index, reason in sorted(failures.items()):
            task = self.tasks[index]
            try:
                rows = rs.failed_rows(self.stars[task.start:task.stop], self.labels, reason, n_draws=self.n_draws)
                rs.write_rows(self.out, rows, task.start)
            except Exception as exc:  # noqa: BLE001 - keep the run's other results
                log.error("could not record the failure of chunk %d: %s", index, exc)

    def finish(self, engine: str, attrs: Mapping[str, Any]) -> None:
        """Store the run's summary attrs (``engine``, ``last_run``, ...) and the update time."""
        rs.update_attrs(self.out, {"engine": engine, **dict(attrs), "updated": rs.utc_now()})


def _create_or_resume(plan: RunPlan, n_slots: int, engine: str) -> int:
    """Create the results store (or check it for resuming); returns its chunk size (stars)."""
    assert plan.cube.stars is not None
    expect = run_identity(plan.model, seed=plan.seed, sampler=plan.sampler, config=plan.config)
    if plan.resume and rs.store_exists(plan.out):
        rs.check_resumable(plan.out, expect, plan.cube.stars)
        stored = int(rs.store_attrs(plan.out)["chunk_size"])
        if plan.chunk_size is not None and plan.chunk_size != stored:
            print(f"note: resuming with the store's chunk size {stored} (not {plan.chunk_size})", file=sys.stderr)
        return stored
    if plan.resume:
        log.info("nothing to resume at %s: starting a new store", plan.out)
    size = task_chunk_size(plan.cube.stars.size, plan.cube.chunk_size, n_slots, plan.chunk_size)
    attrs = run_attrs(expect, plan.model, model_dir=plan.model_dir, cube_path=plan.cube.path,
                         normalised=plan.cube.normalised, engine=engine, config=plan.config)
    rs.create_store(plan.out, plan.cube.stars, plan.model.label_names, chunk_size=size,
                    n_draws=int(plan.config.n_draws), attrs=attrs, overwrite=plan.overwrite)
    return size


@contextlib.contextmanager
def open_run(plan: RunPlan, *, n_slots: int, engine: str, force_unlock: bool = False,
             note: str = "") -> Iterator[RunStore]:
    """Hold the store's lock, create (or reopen to resume) the results store and yield its
    :class:`RunStore`; ``n_slots`` (worker slots) sizes the tasks of a new store."""
    assert plan.cube.stars is not None, "the plan has no star ids yet (RunPlan.with_stars)"
    try:
        plan.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create {plan.out}: {exc.strerror or exc}") from None
    token = rs.acquire_lock(plan.out, force=force_unlock, note=note or f"gsn-dask fit ({engine})")
    try:
        size = _create_or_resume(plan, n_slots, engine)
        tasks = [ChunkTask(i, a, b) for i, (a, b) in enumerate(rs.chunk_bounds(plan.cube.stars.size, size))]
        done = rs.done_chunks(plan.out)
        store = RunStore(plan.out, size, tasks, [t for t in tasks if not done[t.index]], plan.cube.stars,
                         list(plan.model.label_names), int(plan.config.n_draws))
        if store.n_skipped:
            print(f"resuming: {store.n_skipped} of {len(tasks)} chunks already done", file=sys.stderr)
        yield store
    finally:
        rs.release_lock(plan.out, token)


# -------------------------------------------------------------------------------- task
def failure_reason(exc: BaseException) -> str:
    """The ``status`` of the stars of a chunk whose task failed for good."""
    return f"error: chunk task failed: {type(exc).__name__}: {exc}"


def row_counts(rows: xr.Dataset) -> dict[str, int]:
    """``n_ok`` (flag 0), ``n_flagged`` (fitted, some flag), ``n_failed`` (not fitted) of result rows."""
    from .flags import Flag

    flag = np.asarray(rows["flag"].values, dtype=np.int64)
    failed = (flag & int(Flag.NOT_FITTED)) != 0
    ok = flag == 0
    return {"n_ok": int(ok.sum()), "n_flagged": int((~ok & ~failed).sum()), "n_failed": int(failed.sum())}


def fit_chunk(job: ChunkJob, task: ChunkTask, *, model: GSN | None = None,
              read: Callable[[], xr.Dataset] | None = None) -> dict[str, Any]:
    """The chunk task: read stars ``[task.start, task.stop)`` (``read()``, default from the zarr
    cube), fit them with ``job.fit_fn`` (default :func:`~gsn_dask.fit.block.fit_block`) and the
    model (default: this process's cache), check the ids, write the rows by region, then mark the
    chunk done. Returns a record: index, start, stop, n_star, status counts, ``n_ok`` /
    ``n_flagged`` / ``n_failed``, host, pid, wall-clock times ``t_start``, ``t_read``, ``t_fit``,
    ``t_end`` (s since the epoch) and ``cpu_s`` (CPU seconds of the task's thread)."""
    from .fit.config import FitConfig

    t0, cpu0 = time.time(), time.thread_time()
    if model is None:
        from .model_cache import get_model

        model = get_model(job.model_dir, job.model_sha256)
    block = read() if read is not None else read_block(job.cube_path, task.start, task.stop)
    if int(block.sizes["star"]) != task.stop - task.start:
        raise RuntimeError(f"chunk {task.index}: got {block.sizes['star']} rows for stars {task.start}:{task.stop}")
    t_read = time.time()
    if job.fit_fn is None:
        from .fit.block import fit_block as fit_fn
    else:
        fit_fn = job.fit_fn
    rows = fit_fn(block, model, config=FitConfig.from_dict(job.config), run_seed=int(job.seed),
                  sampler=job.sampler, progress=False)
    t_fit = time.time()
    got = rs.as_str_array(rows["star"].values)
    if not np.array_equal(got, rs.as_str_array(block["star"].values)):
        raise RuntimeError(f"the fit function returned other stars than chunk {task.index} holds ({got[:3]}...)")
    rs.write_rows(job.out_path, rows, task.start)
    rs.mark_chunk_done(job.out_path, task.index)
    status: dict[str, int] = {}
    for s in rs.as_str_array(rows["status"].values):
        status[s] = status.get(s, 0) + 1
    return {
        "index": task.index, "start": task.start, "stop": task.stop, "n_star": task.stop - task.start,
        "status": status, **row_counts(rows), "host": socket.gethostname(), "pid": os.getpid(),
        "t_start": t0, "t_read": t_read, "t_fit": t_fit, "t_end": time.time(), "cpu_s": time.thread_time() - cpu0,
    }


__all__ = [
    "ChunkJob",
    "ChunkTask",
    "CubeMeta",
    "FitFn",
    "RunPlan",
    "RunStore",
    "TASKS_PER_SLOT",
    "check_model_and_config",
    "check_out_path",
    "failure_reason",
    "fit_chunk",
    "open_run",
    "prepare_run",
    "row_counts",
    "run_attrs",
    "run_identity",
    "task_chunk_size",
    "zarr_cube_meta",
]
