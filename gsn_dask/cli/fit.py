"""``gsn-dask fit``: fit every star of a spectra cube with a trained GSN, on Dask."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .fit_options import add_fit_options, add_io_arguments, add_store_options, build_config, parse_prior

EPILOG = """\
examples:
  gsn-dask fit cube.zarr --model model/ --out results.zarr
  gsn-dask fit cube.zarr --model model/ --out results.zarr --workers 8 --chunk-size 128
  gsn-dask fit cube.zarr --model model/ --out results.zarr --scheduler tcp://10.0.0.5:8786
  gsn-dask fit cube.zarr --model model/ --out results.zarr --resume      # after Ctrl-C / a crash
  gsn-dask fit cube.zarr --model model/ --out results.zarr --prior feh=-0.3,0.4 --draws 100

One task per chunk of stars (the cube's zarr chunks, split so that every worker gets about 4
tasks) reads its stars from CUBE, fits them and writes its rows into RESULTS (zarr) by region,
then marks the chunk done; --resume refits only chunks not done. A config that does not fit the
model is refused before any star is fitted.
Star seeds derive from --seed and the star id: engine, chunking and resume give the same numbers.
Workers must see CUBE, MODEL_DIR and RESULTS at the same paths (shared filesystem).
exit status: 0 every chunk written (individual stars may be flagged), 3 some chunks failed
(rerun with --resume), 1 bad input / store in use, 130 interrupted.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..pipeline import ENGINES

    p = subparsers.add_parser(
        "fit",
        help="fit a spectra cube with a GSN model -> results cube (Dask)",
        description=(
            "Fit stellar labels + radial velocity with full posteriors (MCMC on the GSN emulator)\n"
            "for every star of a spectra cube (raw or normalised), in parallel on Dask: a LocalCluster\n"
            "sized to this machine, or an existing cluster (--scheduler). Writes a results cube\n"
            "(zarr, schema gsn-dask/results/1) with exactly one row per input star and prints a\n"
            "summary (ok / flagged / failed stars)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_io_arguments(p, cube_help="input spectra cube (zarr, from `gsn-dask ingest`)")

    g = p.add_argument_group("execution")
    g.add_argument("--engine", choices=ENGINES, default="dask",
                   help="dask (default) or serial (same tasks in a loop in this process, no Dask)")
    g.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="attach to a running Dask scheduler, e.g. tcp://host:8786 (default: start a LocalCluster)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="LocalCluster worker processes (default: one per core)")
    g.add_argument("--threads-per-worker", type=int, default=1, metavar="N",
                   help="threads per worker (default 1; BLAS is kept at 1 thread per task)")
    g.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="stars per task and per output zarr chunk (default: the cube's chunk, split into "
                   "about 4 tasks per worker when the cube has fewer chunks than that)")
    g.add_argument("--retries", type=int, default=2, metavar="N",
                   help="re-runs of a task that raised (a dead worker's task is always rerun) (default 2)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    add_store_options(p)
    add_fit_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import results_store as rs
    from ..pipeline import run_fit

    config = build_config(args)
    if getattr(args, "verbose", 0) < 1 and args.engine == "dask":
        from . import quiet_distributed_logs

        quiet_distributed_logs()
    if args.engine == "serial" and (args.scheduler or args.workers):
        print("note: --scheduler/--workers are ignored with --engine serial", file=sys.stderr)
    info: dict[str, Any] = {}
    try:
        ds = run_fit(
            args.cube, args.model, args.out,
            config=config, seed=args.seed, scheduler=args.scheduler, n_workers=args.workers,
            threads_per_worker=args.threads_per_worker, chunk_size=args.chunk_size, resume=args.resume,
            sampler=args.sampler, progress=not args.no_progress, overwrite=args.overwrite,
            force_unlock=args.force_unlock, engine=args.engine, retries=args.retries, info=info,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished chunks are saved in {args.out}; continue with the same command "
              "plus --resume", file=sys.stderr)
        raise
    summary = rs.summarize(ds)
    print(rs.format_summary(summary, info))
    print(f"results: {Path(args.out)}")
    if info.get("chunks_failed"):
        print(f"{info['chunks_failed']} chunk(s) failed {info.get('failed_chunks')}: rerun with --resume",
              file=sys.stderr)
        return 3
    return 0


__all__ = ["add_fit_options", "add_io_arguments", "add_store_options", "build_config", "parse_prior", "register", "run"]
