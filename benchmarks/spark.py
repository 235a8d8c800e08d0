"""Benchmark of the Spark runner, side by side in one run on the same spectra:

(a) the bare fitting loop in this process: read each chunk, ``fit_block`` it (no store, no engine);
(b) ``spark_compat.fit_cube_spark`` on ``local[1]``;
(c) ``spark_compat.fit_cube_spark`` on ``local[2]``;
(d) ``gsn_dask.pipeline.run_fit`` on a Dask LocalCluster with 2 worker processes (1 thread each).

Each engine is started before the timer (start-up reported apart: JVM + SparkContext, or
LocalCluster), then fits the cube ``--repeat`` + 1 times: the first ("cold") run also pays the
Python workers' start, imports and model load; the fastest of the later ("warm") runs is the
steady-state number. Goals: (c) >= 1.7x faster than (b); (c) <= 15% slower per spectrum than (d)
(same 2 cores). All engines must give identical numbers (checked).

Model: ``--model DIR``, else the MILES GSN shipped in the package if installed, else the toy GSN
(``gsn_dask.fit.testing.toy_model``: 3 x 256 SiLU hidden units, LAMOST 3750-8900 A); ``--tiny``
uses the tests' 3 x 32 / 669 px toy. Spectra drawn from the model (S/N 20-80, rv ~ N(0, 30) km/s),
a normalised cube with ``--chunk-size`` stars per zarr chunk (= per task). The machine may be
shared: the load average is recorded, and CPU seconds per spectrum (Spark's Python workers,
the bare loop) are reported next to wall times.

    python benchmarks/spark.py [--n-stars 96] [--chunk-size 8] [--repeat 1] [--tiny]

Prints a table and writes benchmarks/results/spark.json.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from _common import (  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)
    ROOT, build_cube, default_model_dir, fit_chunks, save_toy_model, saved_model, start_local_cluster,
)

RESULTS = ROOT / "benchmarks" / "results" / "spark.json"
COMPARE = ("median", "p16", "p84", "map", "rv", "rv_err", "flag")


def build_model(workdir: Path, model_dir: str | None, tiny: bool) -> tuple[Path, str]:
    if model_dir and saved_model(Path(model_dir)) is None:
        raise SystemExit(f"--model {model_dir}: no model.json there")
    d = Path(model_dir) if model_dir else default_model_dir()
    if d is not None:
        return d, str(d)
    return save_toy_model(workdir, tiny)


def bare_loop(cube: Path, model_dir: Path, config, seed: int, chunk_size: int):
    """(a): chunk by chunk in this process: read, fit_block. Returns (timing dict, results)."""
    import xarray as xr

    from gsn_dask.cube import open_spectra
    from gsn_dask.emulator import load_model

    n = int(open_spectra(cube).sizes["star"])
    model = load_model(model_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    rows, _ = fit_chunks(cube, model, config, seed, n, chunk_size)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "s_per_spectrum": wall / n, "cpu_s_per_spectrum": cpu / n}, \
        xr.concat(rows, dim="star")


def bench_spark(master: str, cube: Path, model_dir: Path, work: Path, config, seed: int, repeat: int):
    """(b)/(c): session start, then 1 cold + ``repeat`` warm fits."""
    from spark_compat.runner import fit_cube_spark
    from spark_compat.session import build_session

    t0 = time.perf_counter()
    spark = build_session(master, app_name=f"bench-{master}", driver_memory="1g")
    startup = time.perf_counter() - t0
    runs = []
    try:
        for r in range(repeat + 1):
            out = work / f"spark-{master.strip('local[]')}-{r}.zarr"
            rep = fit_cube_spark(cube, model_dir, out, config=config, seed=seed, spark=spark, progress=False)
            s = rep.summary
            runs.append({"job_s": rep.timings["fit"], "plan_s": rep.timings["plan"], "total_s": rep.timings["total"],
                         "task_wall_s": float(s["seconds"].sum()), "task_cpu_s": float(s["cpu_seconds"].sum()),
                         "n_tasks": int(len(s)), "n_python_workers": int(s["pid"].nunique())})
            results = rep.results.load()
    finally:
        spark.stop()
    return startup, runs, results


def bench_dask(n_workers: int, cube: Path, model_dir: Path, work: Path, config, seed: int, repeat: int):
    """(d): LocalCluster start, then 1 cold + ``repeat`` warm runs of run_fit on it."""
    from gsn_dask.pipeline import run_fit

    t0 = time.perf_counter()
    cluster, client = start_local_cluster(n_workers)
    startup = time.perf_counter() - t0
    runs = []
    try:
        for r in range(repeat + 1):
            info: dict = {}
            out = work / f"dask-{n_workers}-{r}.zarr"
            t0 = time.perf_counter()
            ds = run_fit(cube, model_dir, out, config=config, seed=seed, client=client, progress=False, info=info)
            wall = time.perf_counter() - t0
            recs = info.get("task_records") or []
            runs.append({"job_s": wall, "task_wall_s": float(sum(x["t_end"] - x["t_start"] for x in recs)),
                         "n_tasks": len(recs)})
            results = ds.load()
    finally:
        client.close()
        cluster.close()
    return startup, runs, results


def same_numbers(a, b) -> bool:
    return all(np.array_equal(np.asarray(a[v].values), np.asarray(b[v].values), equal_nan=True) for v in COMPARE)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-stars", type=int, default=96)
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1, help="warm runs per engine after the cold one")
    ap.add_argument("--model", default=None, help="model directory (default: the shipped MILES GSN if installed, else toy)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny toy model (fast, overhead-dominated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from gsn_dask.fit.config import FitConfig
    from spark_compat.session import prepare_environment

    prepare_environment("local[2]")
    config = FitConfig()
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="gsn-bench-spark-"))
    try:
        model_dir, model_what = build_model(work, args.model, args.tiny)
        cube = work / "cube.zarr"
        build_cube(model_dir, cube, args.n_stars, args.chunk_size)
        n = args.n_stars
        print(f"{n} spectra, chunks of {args.chunk_size}; model: {model_what}; load avg {load0[0]:.1f}", flush=True)

        bare, ref = bare_loop(cube, model_dir, config, args.seed, args.chunk_size)
        print(f"bare loop: {bare['wall_s']:.1f} s", flush=True)
        out: dict = {"bare": bare}
        identical = {}
        for master in ("local[1]", "local[2]"):
            startup, runs, res = bench_spark(master, cube, model_dir, work, config, args.seed, args.repeat)
            warm = min(r["job_s"] for r in runs[1:]) if len(runs) > 1 else runs[0]["job_s"]
            out[f"spark {master}"] = {"startup_s": startup, "cold_job_s": runs[0]["job_s"], "warm_job_s": warm,
                                      "first_run_overhead_s": runs[0]["job_s"] - warm,
                                      "s_per_spectrum": warm / n, "runs": runs,
                                      "cpu_s_per_spectrum": runs[-1]["task_cpu_s"] / n,
                                      # CPU seconds of the fitting Python workers per wall second of
                                      # the warm job: ~N on an idle machine for local[N]
                                      "cores_busy": min(r["task_cpu_s"] / r["job_s"] for r in runs[1:] or runs)}
            identical[f"spark {master}"] = same_numbers(res, ref)
            print(f"spark {master}: start-up {startup:.1f} s, cold {runs[0]['job_s']:.1f} s, warm {warm:.1f} s",
                  flush=True)
        startup, runs, res = bench_dask(2, cube, model_dir, work, config, args.seed, args.repeat)
        warm = min(r["job_s"] for r in runs[1:]) if len(runs) > 1 else runs[0]["job_s"]
        out["dask 2 workers"] = {"startup_s": startup, "cold_job_s": runs[0]["job_s"], "warm_job_s": warm,
                                 "first_run_overhead_s": runs[0]["job_s"] - warm, "s_per_spectrum": warm / n,
                                 "runs": runs}
        identical["dask 2 workers"] = same_numbers(res, ref)
        print(f"dask 2 workers: start-up {startup:.1f} s, cold {runs[0]['job_s']:.1f} s, warm {warm:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    s1, s2, d2 = out["spark local[1]"], out["spark local[2]"], out["dask 2 workers"]
    ratios = {
        "speedup_local2_vs_local1": s1["warm_job_s"] / s2["warm_job_s"],
        "spark_local2_vs_dask2_per_spectrum": s2["warm_job_s"] / d2["warm_job_s"],
        "spark_local1_vs_bare": s1["warm_job_s"] / bare["wall_s"],
    }
    goals = {"speedup_local2_vs_local1 >= 1.7": ratios["speedup_local2_vs_local1"] >= 1.7,
             "spark_local2_vs_dask2 <= 1.15": ratios["spark_local2_vs_dask2_per_spectrum"] <= 1.15,
             "identical numbers": all(identical.values())}
    load1 = os.getloadavg()

    print()
    print(f"{'engine':<18}{'start-up s':>11}{'cold run s':>11}{'warm run s':>11}{'ms/spectrum':>12}{'CPU ms/spec':>12}"
          f"{'cores busy':>11}")
    print(f"{'bare loop':<18}{'-':>11}{'-':>11}{bare['wall_s']:>11.2f}{1e3 * bare['s_per_spectrum']:>12.1f}"
          f"{1e3 * bare['cpu_s_per_spectrum']:>12.1f}{bare['cpu_s'] / bare['wall_s']:>11.2f}")
    for k in ("spark local[1]", "spark local[2]", "dask 2 workers"):
        v = out[k]
        cpu = f"{1e3 * v['cpu_s_per_spectrum']:>12.1f}" if "cpu_s_per_spectrum" in v else f"{'-':>12}"
        cpu += f"{v['cores_busy']:>11.2f}" if "cores_busy" in v else f"{'-':>11}"
        print(f"{k:<18}{v['startup_s']:>11.2f}{v['cold_job_s']:>11.2f}{v['warm_job_s']:>11.2f}"
              f"{1e3 * v['s_per_spectrum']:>12.1f}{cpu}")
    print()
    for k, v in ratios.items():
        print(f"{k:<40}{v:>8.2f}")
    for k, v in goals.items():
        print(f"goal {k:<40}{'met' if v else 'NOT met'}")
    print(f"load average before/after: {load0[0]:.1f} / {load1[0]:.1f} on {os.cpu_count()} CPUs")

    doc = {
        "benchmark": "spark", "n_spectra": n, "chunk_size": args.chunk_size, "repeat": args.repeat,
        "model": model_what, "fit_config": FitConfig().to_dict(), "results": out, "ratios": ratios,
        "goals_met": goals, "identical_numbers": identical,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "load_avg_before": load0, "load_avg_after": load1},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
