"""Every worker busy: ``gsn-dask fit`` on a cube stored as one zarr chunk, with 2 workers, as one
task (``--chunk-size`` = all stars, the old default) vs the default split (about 4 tasks per
worker, :func:`gsn_dask.run.task_chunk_size`).

    python benchmarks/worker_split.py --cube lamost.zarr --model MODEL \\
        --save benchmarks/results/worker_split.json

Each run is the command line a user types (``python -m gsn_dask fit ... --workers 2``, its own
LocalCluster, start-up included), timed from outside; the runs alternate (one task, split, one
task, split, ...) so that a change in the machine's load hits both alike. The load average
(``os.getloadavg``) is recorded before and after every run, and before it the cores that
``--workers`` busy processes actually get (:func:`available_cores`), and the numbers of the two runs are
checked to be identical (a star's seed depends on the run seed and its id, not the chunking).
``cores_used`` = CPU seconds of the command and its worker processes / wall time: about 1 for
one task, about 2 when both workers are busy (less when other work shares the machine);
``busiest_worker_cpu_s`` (CPU seconds of the chunk tasks on the busiest worker, from the store's
``last_run``) bounds the wall time from below whatever the load: about half for an even split.
Goal: split wall time <= 0.6 x the one-task wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _spin(seconds: float, out: Any) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        pass
    out.put(time.process_time() - c0)


def available_cores(n: int, seconds: float = 2.0) -> float:
    """Cores that ``n`` busy processes get right now (``n`` on an idle machine): CPU seconds of
    ``n`` spinning processes / wall seconds. A measure of the load that matters here."""
    import multiprocessing as mp

    q: Any = mp.Queue()
    procs = [mp.Process(target=_spin, args=(seconds, q)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return round(sum(q.get() for _ in procs) / seconds, 2)


def fit_once(cube: Path, model: Path, out: Path, workers: int, chunk_size: int | None, extra: list[str]) -> dict:
    """One timed ``gsn-dask fit`` run; returns wall time (s), the store's task count and load."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "gsn_dask", "fit", str(cube), "--model", str(model), "--out", str(out),
           "--workers", str(workers), "--no-progress", *extra]
    if chunk_size is not None:
        cmd += ["--chunk-size", str(chunk_size)]
    cores = available_cores(workers)
    load0 = os.getloadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its (reaped) worker processes
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    meta = json.loads((out / "zarr.json").read_text())["attributes"]
    last = json.loads(meta["last_run"])
    return {"wall_s": round(wall, 2), "run_wall_s": round(float(last["wall_s"]), 2), "cpu_s": round(cpu, 1),
            "cores_used": round(cpu / wall, 2), "cores_available_before": cores, "worker_cpu_s": last.get("worker_cpu_s"),
            "busiest_worker_cpu_s": max((last.get("worker_cpu_s") or {"-": 0.0}).values()),
            "n_tasks": int(last["n_chunks"]),
            "chunk_size": int(meta["chunk_size"]), "n_workers": last["n_workers"],
            "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()]}


def numbers(path: Path) -> dict[str, np.ndarray]:
    """``median``, ``p16``, ``p84``, ``flag`` of a results store."""
    import xarray as xr

    ds = xr.open_zarr(path, consolidated=False)
    return {k: np.asarray(ds[k].values) for k in ("median", "p16", "p84", "flag")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cube", type=Path, required=True, help="spectra cube (zarr), e.g. the ingested LAMOST cube")
    ap.add_argument("--model", type=Path, required=True, help="model directory")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers (2)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each variant (1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FitConfig setting for both")
    ap.add_argument("--save", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import xarray as xr

    n_star = int(xr.open_zarr(args.cube, consolidated=False).sizes["star"])
    extra = [x for s in args.set for x in ("--set", s)]
    runs: dict[str, list[dict]] = {"one_task": [], "split": []}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {"one_task": Path(tmp) / "one.zarr", "split": Path(tmp) / "split.zarr"}
        for _ in range(args.repeat):
            for name, size in (("one_task", n_star), ("split", None)):
                rec = fit_once(args.cube, args.model, outs[name], args.workers, size, extra)
                runs[name].append(rec)
                print(f"{name:9s} {rec['n_tasks']:3d} tasks  wall {rec['wall_s']:7.1f} s  "
                      f"(run {rec['run_wall_s']:.1f} s)  cpu {rec['cpu_s']:.0f} s = {rec['cores_used']:.2f} cores  "
                      f"load {rec['load_before'][0]:.1f} -> {rec['load_after'][0]:.1f}  "
                      f"({rec['cores_available_before']:.2f} of {args.workers} cores free before)")
        a, b = numbers(outs["one_task"]), numbers(outs["split"])
        identical = all(np.array_equal(a[k], b[k], equal_nan=k != "flag") for k in a)
    one = min(r["wall_s"] for r in runs["one_task"])
    split = min(r["wall_s"] for r in runs["split"])
    # load-independent view: the busiest worker's CPU seconds bound the wall time from below
    busy_one = min(r["busiest_worker_cpu_s"] for r in runs["one_task"])
    busy_split = min(r["busiest_worker_cpu_s"] for r in runs["split"])
    result = {
        "what": "gsn-dask fit on a cube of one zarr chunk, --workers 2: one task vs the default split",
        "cube": str(args.cube), "model": str(args.model), "n_star": n_star, "workers": args.workers,
        "settings": args.set, "runs": runs, "best_one_task_wall_s": one, "best_split_wall_s": split,
        "ratio_split_over_one_task": round(split / one, 3), "goal": "<= 0.6",
        "busiest_worker_cpu_s": {"one_task": busy_one, "split": busy_split},
        "ratio_busiest_worker_cpu": round(busy_split / busy_one, 3) if busy_one else None,
        "numbers_identical": identical,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    print(f"one task {one:.1f} s, split {split:.1f} s: ratio {split / one:.2f} (goal <= 0.6); busiest worker "
          f"{busy_one:.0f} s -> {busy_split:.0f} s CPU; numbers identical: {identical}")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
