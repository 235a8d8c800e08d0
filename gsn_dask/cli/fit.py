"""``gsn-dask fit``: fit every star of a spectra cube with a trained GSN, on Dask."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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


def add_io_arguments(parser: argparse.ArgumentParser, *, cube_help: str) -> None:
    """``CUBE``, ``--model MODEL_DIR`` and ``--out RESULTS`` of ``gsn-dask fit`` and
    ``python -m spark_compat fit``."""
    parser.add_argument("cube", metavar="CUBE", help=cube_help)
    parser.add_argument("--model", required=True, metavar="MODEL_DIR", help="trained GSN model directory")
    parser.add_argument("--out", required=True, metavar="RESULTS", help="results cube to write (zarr directory)")


def add_store_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The results-store options (``--resume``, ``--overwrite``, ``--force-unlock``) of
    ``gsn-dask fit`` and ``python -m spark_compat fit``; returns the group (for more options)."""
    s = parser.add_argument_group("output store")
    s.add_argument("--resume", action="store_true",
                   help="continue RESULTS from an interrupted run: fit only chunks not yet written")
    s.add_argument("--overwrite", action="store_true", help="replace an existing RESULTS store")
    s.add_argument("--force-unlock", action="store_true",
                   help="take over RESULTS' lock even if another run seems to hold it (only if that run is dead)")
    return s


def add_fit_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The sampling options (``--seed``, ``--sampler``, ``--walkers`` ... ``--config``, ``--set``)
    that :func:`build_config` reads, shared by ``gsn-dask fit`` and ``python -m spark_compat fit``."""
    from ..fit.config import SAMPLERS

    f = parser.add_argument_group("sampling (defaults: gsn_dask.fit.config.FitConfig)")
    f.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    f.add_argument("--sampler", choices=SAMPLERS, default="emcee", help="emcee (default: MCMC per star), batched (torch, all stars of a block at once) or map (quick look: MAP + Laplace approximation, ~10x cheaper)")
    f.add_argument("--walkers", type=int, default=None, metavar="N", help="number of walkers")
    f.add_argument("--burn", type=int, default=None, metavar="N", help="burn-in steps (discarded)")
    f.add_argument("--steps", type=int, default=None, metavar="N", help="production steps (minimum)")
    f.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="production steps at most (chains are extended until converged)")
    f.add_argument("--thin", type=int, default=None, metavar="N", help="keep every N-th production step")
    f.add_argument("--draws", type=int, default=None, metavar="N",
                   help="posterior draws kept per star in the results (`samples`; default 0 = none)")
    f.add_argument("--prior", action="append", default=[], metavar="LABEL=MU,SIGMA",
                   help="Gaussian prior on a label, e.g. --prior teff=5000,200 (repeatable)")
    f.add_argument("--config", default=None, metavar="JSON",
                   help="FitConfig settings: a JSON file or a JSON string (options above override it)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="any FitConfig setting, e.g. --set min_good_pixels=300 (repeatable)")
    return f


def parse_prior(text: str) -> tuple[str, tuple[float, float]]:
    """``"teff=5000,200"`` -> ``("teff", (5000.0, 200.0))``."""
    try:
        name, rest = text.split("=", 1)
        mu, sigma = (float(x) for x in rest.split(","))
    except ValueError:
        raise ValueError(f"--prior {text!r}: expected LABEL=MU,SIGMA, e.g. teff=5000,200") from None
    return name.strip(), (mu, sigma)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(args: argparse.Namespace):
    """The FitConfig of the command line: defaults <- --config <- --set <- explicit options."""
    from ..fit.config import FitConfig

    d: dict[str, Any] = FitConfig().to_dict()
    if args.config:
        text = args.config
        if not text.lstrip().startswith("{"):
            src = Path(text)
            if not src.is_file():
                raise FileNotFoundError(f"--config {text}: no such file (and not a JSON string)")
            text = src.read_text()
        try:
            d.update(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config: not a JSON file or JSON string ({exc})") from None
    for item in args.settings:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        d[k.strip()] = _parse_value(v)
    explicit = {
        "n_walkers": args.walkers, "n_burn": args.burn, "n_steps": args.steps,
        "max_steps": args.max_steps, "thin": args.thin, "n_draws": args.draws,
    }
    d.update({k: v for k, v in explicit.items() if v is not None})
    if args.steps is not None and args.max_steps is None and d.get("max_steps", 0) < args.steps:
        d["max_steps"] = args.steps
    if args.prior:
        priors = dict(d.get("priors") or {})
        priors.update(dict(parse_prior(t) for t in args.prior))
        d["priors"] = priors
    return FitConfig.from_dict(d)


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
