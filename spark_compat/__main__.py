"""Command line of the Spark runner: ``python -m spark_compat fit CUBE --model DIR --out RESULTS``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  python -m spark_compat fit cube.zarr --model model/ --out results.zarr                  # local[*]
  python -m spark_compat fit cube.zarr --model model/ --out results.zarr --master 'local[4]'
  python -m spark_compat fit cube.zarr --model model/ --out results.zarr --resume         # after a crash
  gsn-dask export-parquet cube.zarr --out cube_pq
  python -m spark_compat fit cube_pq --parquet --model model/ --out results.zarr --results-parquet results_pq
  spark-submit --master spark://host:7077 spark_compat/submit.py fit cube.zarr --model model/ --out results.zarr

Each Spark task reads its own chunk of stars from CUBE (the driver sends only star ranges), runs the
same fit_block as `gsn-dask fit`, writes its rows into its region of RESULTS and then marks the chunk
done; --resume refits only chunks not done (also of a store started by `gsn-dask fit`). Star seeds
derive from --seed and the star id, so the numbers equal the Dask runner's. Executors must see CUBE,
RESULTS (and MODEL_DIR with --model-broadcast path) at the same paths.
exit status: 0 every chunk written (individual stars may be flagged), 3 some chunks failed
(rerun with --resume), 1 bad input / store in use, 130 interrupted.
"""


def _parse_conf(items: list[str]) -> dict[str, str]:
    conf: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--conf takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        conf[k.strip()] = v.strip()
    return conf


def build_parser() -> argparse.ArgumentParser:
    from gsn_dask.cli.fit_options import add_fit_options, add_io_arguments, add_store_options

    parser = argparse.ArgumentParser(
        prog="python -m spark_compat",
        description="Fit gsn-dask spectra cubes on Apache Spark (same fits, same numbers as the Dask runner).",
        epilog="Run `python -m spark_compat fit --help` for the options.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    p = sub.add_parser(
        "fit",
        help="fit every star of a spectra cube on Spark -> results cube (zarr)",
        description=(
            "Fit stellar labels + radial velocity with full posteriors for every star of a spectra cube\n"
            "on Spark (local[*] by default, or --master / spark-submit's master). Writes a results cube\n"
            "(zarr, schema gsn-dask/results/1, attrs engine=spark) with one row per input star, in the\n"
            "cube's order, and prints a summary."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_io_arguments(p, cube_help="spectra cube (zarr), or a Parquet export (gsn-dask export-parquet)")

    g = p.add_argument_group("Spark")
    g.add_argument("--master", default=None, metavar="URL",
                   help="local[*] (default), local[N], spark://host:7077, yarn, ...; under spark-submit its --master")
    g.add_argument("--parquet", action="store_true", help="CUBE is a Parquet export (also auto-detected)")
    g.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="stars per task and per zarr chunk of RESULTS (default: the cube's chunk, split into "
                   "about 4 tasks per core when the cube has fewer chunks than that)")
    g.add_argument("--chunks-per-partition", type=int, default=1, metavar="K", help="chunks per Spark partition (1)")
    g.add_argument("--model-broadcast", choices=("bytes", "path"), default="bytes",
                   help="broadcast the model files' bytes (default) or only their path (shared storage)")
    g.add_argument("--threads-per-task", type=int, default=1, metavar="N",
                   help="spark.task.cpus and native (BLAS/torch) threads per task (1)")
    g.add_argument("--driver-memory", default="2g", help="spark.driver.memory when this command starts Spark (2g)")
    g.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting (repeatable)")
    g.add_argument("--ui", action="store_true", help="enable the Spark web UI (off by default)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = add_store_options(p)  # the same options as `gsn-dask fit` (cannot drift)
    s.add_argument("--results-parquet", default=None, metavar="DIR",
                   help="also write the results as Parquet (one row per star) to DIR")
    add_fit_options(p)
    p.set_defaults(func=run_fit)
    return parser


def run_fit(args: argparse.Namespace) -> int:
    """``fit``: check the run, start Spark (unless this process already runs a session, which
    is then used and left running), fit, print the summary; exit status as in the epilog."""
    from gsn_dask import results_store as rs
    from gsn_dask.cli.fit_options import build_config

    from .runner import fit_cube_spark

    from gsn_dask.extras import require

    require("pyspark", "python -m spark_compat")
    config = build_config(args)  # the same options -> the same FitConfig as `gsn-dask fit`
    conf = _parse_conf(args.conf)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()  # an in-process caller keeps its session
    try:
        report = fit_cube_spark(
            args.cube, args.model, args.out,
            config=config, seed=args.seed, spark=active, master=args.master, ui=args.ui, spark_conf=conf,
            driver_memory=args.driver_memory, input_format="parquet" if args.parquet else "auto",
            chunk_size=args.chunk_size, resume=args.resume, overwrite=args.overwrite,
            force_unlock=args.force_unlock, chunks_per_partition=args.chunks_per_partition,
            model_broadcast=args.model_broadcast, results_parquet=args.results_parquet,
            sampler=args.sampler, progress=not args.no_progress, threads_per_task=args.threads_per_task,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished chunks are saved in {args.out}; continue with the same command "
              "plus --resume", file=sys.stderr)
        raise
    finally:
        started = SparkSession.getActiveSession()
        if active is None and started is not None:
            started.stop()
    n_star = int(report.results.sizes["star"])
    run = {"chunks_fitted": report.n_fitted_chunks, "chunks_skipped": report.n_skipped,
           "chunks_failed": len(report.failed_chunks), "wall_s": report.timings["total"]}
    print(rs.format_summary(rs.summarize(report.results), run))
    print(f"spark fit: {n_star} stars in {report.n_chunks} chunks; Spark job {report.timings['fit']:.1f} s, "
          f"total {report.timings['total']:.1f} s")
    print(f"results: {Path(args.out)}" + (f" (+ Parquet {report.results_parquet})" if report.results_parquet else ""))
    if report.failed_chunks:
        print(f"{len(report.failed_chunks)} chunk(s) failed {report.failed_chunks}: rerun with --resume",
              file=sys.stderr)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    from gsn_dask.cli import run_cli

    # run_fit prints its own "interrupted: ... --resume" line before Ctrl-C reaches run_cli
    return run_cli(build_parser(), argv, name="spark_compat", interrupted=None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
