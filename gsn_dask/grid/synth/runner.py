"""``gsn-dask grid synth``: synthesise what is missing of the design, then write the training cube.

The first ``n`` points of the design (:func:`gsn_dask.grid.synth.design.design`) are wanted.
Spectra already shipped in the package (``gsn_dask/data/synth``) or finished in the store
(``<store>/spectra/<key>.npz``) are skipped; the rest are synthesised as Dask tasks (a few
spectra each, records written one by one; synchronous in this process by default, a
``LocalCluster`` with ``n_workers`` processes, or an existing scheduler). The cube holds every
wanted spectrum that is finished.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..build import run_batches
from . import cube as C
from .design import design
from .generator import SynthConfig, finished_keys, load_record, record_path, spectrum_key, synth_batch

log = logging.getLogger(__name__)

#: the settings of the shipped grid (chosen by benchmarks/synth_cost.py; see the README)
DEFAULT_CONFIG = SynthConfig(wmin=3700.0, wmax=7400.0, step=0.05, blue_step=0.02, blue_until=4600.0, n_depth=48)


@dataclasses.dataclass
class SynthBuildResult:
    """What :func:`build_synth` did (spectra counts; seconds)."""

    n_wanted: int
    n_shipped: int
    n_store_before: int
    n_new: int
    errors: list[tuple[str, str]]
    synth_cpu_seconds: list[float]
    elapsed_s: float
    cube: Path | None


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def shipped_config() -> SynthConfig:
    """The settings of the shipped grid (:data:`DEFAULT_CONFIG` if nothing is shipped yet)."""
    return C.read_shipped()["config"] or DEFAULT_CONFIG


def build_synth(
    out: str | Path | None,
    n: int | None = None,
    *,
    store: str | Path,
    resume: bool = False,
    use_shipped: bool = True,
    config: SynthConfig | None = None,
    n_workers: int | None = None,
    scheduler: str | None = None,
    batch_size: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    cache_dir: str | None = None,
) -> SynthBuildResult:
    """Synthesise the missing spectra of the first ``n`` design points (default: as many as are
    shipped) into ``store`` and write the training cube to ``out`` (None: no cube)."""
    t0 = time.perf_counter()
    shipped = C.read_shipped() if use_shipped else {"key": [], "config": None}
    config = config or shipped["config"] or DEFAULT_CONFIG
    if shipped["config"] is not None and shipped["config"] != config:
        log.warning("shipped spectra were made with other settings: not used")
        shipped = {"key": [], "labels": np.zeros((0, 4)), "raw": np.zeros((0, 0)), "atmosphere": [], "config": None}
    n = len(shipped["key"]) if n is None else int(n)
    if n <= 0:
        raise ValueError("nothing to build: give --n (no spectra are shipped with these settings)")
    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite)")
    store = Path(store)
    before = finished_keys(store)
    if before and not resume:
        raise FileExistsError(f"{store} already holds {len(before)} spectra: use --resume to continue it")
    points = design(n)
    keys = [spectrum_key(p, config) for p in points]
    have = set(shipped["key"]) | before
    todo = [p for p, k in zip(points, keys) if k not in have]
    log.info("%d wanted: %d shipped, %d in the store, %d to synthesise", n, len(set(shipped["key"]) & set(keys)),
             len(before & set(keys)), len(todo))
    n_new, errors, cpu = 0, [], []
    if todo:
        store.mkdir(parents=True, exist_ok=True)
        for res in run_batches(synth_batch, _chunks(todo, batch_size), (str(store), config, frozenset(), cache_dir),
                               scheduler=scheduler, n_workers=n_workers, total=len(todo), progress=progress,
                               desc="synthesising"):
            n_new += res["n_new"]
            errors.extend(res["errors"])
            cpu.extend(res["synth_cpu_seconds"])
    cube_path = None
    if out is not None:
        want = set(keys)
        shipped_part = _select(shipped, want)
        recs = [load_record(record_path(store, k)) for k in keys if k in finished_keys(store)]
        merged = C.merge(shipped_part, recs)
        cube_path = C.write_cube(merged, out, config=config, overwrite=overwrite)
    return SynthBuildResult(n, len(shipped["key"]), len(before), n_new, errors, cpu, time.perf_counter() - t0, cube_path)


def _select(shipped: dict[str, Any], want: set[str]) -> dict[str, Any]:
    """The shipped spectra whose keys are in ``want``."""
    idx = [i for i, k in enumerate(shipped["key"]) if k in want]
    if not idx:
        return {"key": [], "labels": np.zeros((0, 4)), "raw": np.zeros((0, 0)), "atmosphere": []}
    return {"key": [shipped["key"][i] for i in idx], "labels": shipped["labels"][idx], "raw": shipped["raw"][idx],
            "atmosphere": [shipped["atmosphere"][i] for i in idx]}
