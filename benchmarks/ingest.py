"""Benchmark of LAMOST ingestion (issue 3): spectra per second per core.

Copies the shared DR1 LRS files (179, 92 kB each) into a temporary directory until there
are ``--n-files`` of them (each copy gets a distinct plan id in its file name, so every copy is
a distinct star), then ingests the directory, side by side in one run:

  * in-process (``n_workers=0``: read, regrid and write in this process),
  * a Dask LocalCluster with 1 worker and with 2 workers (1 thread each); the cluster is started
    before the timer (its start-up time is reported separately) and passed in as a client.

Two per-core measures: ``spectra_per_s_per_core`` = spectra / wall second / reading processes
(1 in-process, the worker count on a cluster; the driver, which writes the zarr cube, is not
counted), and ``spectra_per_cpu_s`` = spectra / CPU seconds of all the work (driver process +
reading tasks), which stays meaningful when other jobs share the cores. ``read_spectra_per_cpu_s``
counts only the reading tasks. The goal is >= 500 spectra/s per core.

    python benchmarks/ingest.py [--n-files 2000] [--workers 1 2] [--data DIR]  (default: ../shared/data/lamost/dr1 beside the clone)

Prints a table and writes benchmarks/results/ingest.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "ingest.json"
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "lamost" / "dr1"
GOAL_PER_CORE = 500.0


def make_inputs(src: Path, dst: Path, n_files: int) -> list[Path]:
    """Copy the FITS files of ``src`` into ``dst`` until there are ``n_files``; copy c of a file
    ``spec-<lmjd>-<plan>_sp..`` is named ``spec-<lmjd>-<plan>c<c>_sp..`` (a distinct star id)."""
    files = sorted(src.glob("*.fits"))
    if not files:
        raise SystemExit(f"no FITS files in {src}")
    dst.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    c = 0
    while len(out) < n_files:
        for f in files:
            if len(out) >= n_files:
                break
            lmjd_plan, rest = f.name.split("_", 1)
            target = dst / f"{lmjd_plan}c{c:03d}_{rest}"
            shutil.copyfile(f, target)
            out.append(target)
        c += 1
    return out


def run_one(name: str, in_dir: Path, work: Path, *, n_workers: int) -> dict:
    from gsn_dask.io.ingest import ingest

    out = work / f"{name}.zarr"
    startup = 0.0
    client = cluster = None
    if n_workers > 0:
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        # import the reader on every worker before timing (as a long-running cluster would have)
        client.run(lambda: __import__("gsn_dask.io.lamost"))
        startup = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        c0 = time.process_time()
        rep = ingest([in_dir], out, n_workers=0 if client is None else None, client=client, progress=False)
        wall = time.perf_counter() - t0
        driver_cpu = time.process_time() - c0
    finally:
        if client is not None:
            client.close()
            cluster.close()
    cores = max(n_workers, 1)
    shutil.rmtree(out, ignore_errors=True)
    # CPU seconds of all the work: the driver process (in-process: everything) + the reading
    # tasks on the workers. Robust to other jobs sharing the cores, unlike wall time.
    total_cpu = driver_cpu + (rep.read_cpu_seconds if n_workers > 0 else 0.0)
    return {
        "config": name,
        "n_workers": n_workers,
        "reading_processes": cores,
        "n_files": rep.n_files,
        "n_ingested": rep.n_ingested,
        "n_rejected": rep.n_rejected,
        "wall_s": round(wall, 3),
        "cluster_startup_s": round(startup, 3),
        "read_task_s": round(rep.read_seconds, 3),
        "spectra_per_s": round(rep.n_ingested / wall, 1),
        "spectra_per_s_per_core": round(rep.n_ingested / wall / cores, 1),
        "driver_cpu_s": round(driver_cpu, 3),
        "read_task_cpu_s": round(rep.read_cpu_seconds, 3),
        "total_cpu_s": round(total_cpu, 3),
        "spectra_per_cpu_s": round(rep.n_ingested / total_cpu, 1),
        "read_spectra_per_cpu_s": round(rep.n_files / rep.read_cpu_seconds, 1) if rep.read_cpu_seconds else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-files", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="LocalCluster sizes to run")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory of LAMOST LRS FITS files")
    ap.add_argument("--out-json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="gsn-ingest-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        files = make_inputs(args.data, tmp / "in", args.n_files)
        print(f"{len(files)} input files ({sum(f.stat().st_size for f in files) / 1e6:.0f} MB) "
              f"copied in {time.perf_counter() - t0:.1f} s to {tmp / 'in'}")
        # warm-up: imports, page cache
        from gsn_dask.io.ingest import ingest

        ingest(files[:50], tmp / "warm.zarr", n_workers=0, progress=False)
        for f in files:
            f.read_bytes()
        rows = [run_one("in-process", tmp / "in", tmp, n_workers=0)]
        for n in args.workers:
            rows.append(run_one(f"LocalCluster {n}x1", tmp / "in", tmp, n_workers=n))

    cols = ["config", "n_ingested", "wall_s", "cluster_startup_s", "spectra_per_s", "spectra_per_s_per_core",
            "total_cpu_s", "spectra_per_cpu_s", "read_spectra_per_cpu_s"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths)))
    load = os.getloadavg()[0]
    print(f"load average (1 min) {load:.1f} on {os.cpu_count()} cores")
    for r in rows:
        ok = r["spectra_per_cpu_s"] >= GOAL_PER_CORE
        print(f"goal >= {GOAL_PER_CORE:.0f} spectra/s per core, {r['config']}: {r['spectra_per_cpu_s']:.0f} per CPU-second, "
              f"{r['spectra_per_s_per_core']:.0f} per wall-second per reading process -> {'met' if ok else 'NOT met'} (CPU)")
    result = {
        "benchmark": "ingest",
        "goal_spectra_per_s_per_core": GOAL_PER_CORE,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_avg_1m_at_end": os.getloadavg()[0],
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "input": {"n_files": args.n_files, "source": str(args.data), "file_bytes": 92160},
        "results": rows,
        "note": "per core = per reading process; the driver process (zarr writing, duplicate/label "
        "handling) runs beside the workers and is not counted; the machine may be shared.",
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
