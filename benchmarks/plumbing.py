"""The runners' plumbing at survey scale: 10^6 stars through Dask (10^5 through Spark) with a
trivial fit function, so that only store creation, task submission, per-task overhead, region
writes and ``--resume`` are measured.

    python benchmarks/plumbing.py --n 1000000 --task-sizes 1000 100          # Dask LocalCluster
    python benchmarks/plumbing.py --n 100000 --engine spark --task-sizes 1000 # Spark local[*]

The cube carries 64 pixels per star (a tiny GSN on the same 64 LAMOST pixels is the model), so the
disk holds the plumbing, not spectra. The fit function (the public ``fit_fn`` hook) returns
"ok" rows with the star index as every label, which the check reads back: every row must be
present and belong to its star. Reported per task size: store creation + submission to the first
finished task, wall time, per-task overhead (wall x workers / tasks: the fit itself costs
nothing), the ``--resume`` scan of the finished store, the store size on disk and the client's
peak RSS. Saves ``benchmarks/results/plumbing_<engine>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results"
N_PIX = 64


def trivial_fit(block, model, *, config, run_seed, sampler="emcee", progress=False):
    """A fit function for plumbing runs: "ok" rows whose labels are the star's index."""
    from gsn_dask.cube import empty_results

    stars = [str(s) for s in np.asarray(block["star"].values)]
    out = empty_results(stars, list(model.label_names), status="ok")
    idx = np.array([int(s.split("-")[1]) for s in stars], dtype=np.float32)
    for name in ("median", "p16", "p84", "map"):
        out[name].values[:] = idx[:, None]
    out["flag"].values[:] = 0
    return out


def build_inputs(root: Path, n: int, chunk: int) -> tuple[Path, Path]:
    """A cube of n stars x 16 px (zarr chunks of ``chunk`` stars) and a tiny GSN on those pixels."""
    import dask.array as da

    from gsn_dask.cube import log_lambda_grid, make_spectra, write_spectra
    from gsn_dask.fit.testing import toy_model

    wave = log_lambda_grid()[1000:1000 + N_PIX]
    model_dir = root / "model"
    toy_model(labels=("teff", "logg", "feh"), hidden=(8, 8, 8), wavelength=wave, n_train=64, seed=0).save(model_dir)
    zeros = np.broadcast_to(np.float32(0), (n, N_PIX))
    ds = make_spectra([f"s-{i:07d}" for i in range(n)], wave, zeros, zeros, normalised=True)
    ds["flux"] = (("star", "wavelength"), da.ones((n, N_PIX), dtype=np.float32, chunks=(chunk, N_PIX)))
    ds["ivar"] = (("star", "wavelength"), da.full((n, N_PIX), 100.0, dtype=np.float32, chunks=(chunk, N_PIX)))
    cube = root / "cube.zarr"
    write_spectra(ds, cube, chunk_size=chunk)
    return cube, model_dir


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _check(out: Path, n: int) -> int:
    """Rows that are missing or not their star's (0 = all present)."""
    import xarray as xr

    with xr.open_zarr(out, consolidated=False) as res:
        med = np.asarray(res["median"].values[:, 0])
        status = np.asarray(res["status"].values)
    return int(np.sum(med != np.arange(n, dtype=np.float32)) + sum(str(s) != "ok" for s in status))


def run_dask(cube: Path, model: Path, out: Path, task_size: int, workers: int, resume: bool) -> dict:
    from gsn_dask.pipeline import run_fit

    info: dict = {}
    t0 = time.perf_counter()
    run_fit(cube, model, out, chunk_size=task_size, fit_fn=trivial_fit, n_workers=workers, progress=False,
            resume=resume, overwrite=not resume, info=info)
    return {"wall_s": time.perf_counter() - t0, "time_to_first_s": info.get("time_to_first_s"),
            "n_tasks": info.get("n_chunks"), "tasks_run": info.get("chunks_fitted")}


def run_spark(cube: Path, model: Path, out: Path, task_size: int, workers: int, resume: bool) -> dict:
    from spark_compat.runner import fit_cube_spark

    t0 = time.perf_counter()
    fit_cube_spark(cube, model, out, chunk_size=task_size, fit_fn=trivial_fit, master=f"local[{workers}]",
                   progress=False, resume=resume, overwrite=not resume)
    return {"wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--engine", choices=("dask", "spark"), default="dask")
    ap.add_argument("--task-sizes", type=int, nargs="+", default=[1000, 100])
    ap.add_argument("--cube-chunk", type=int, default=1000, help="stars per zarr chunk of the input cube")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="gsn-plumbing-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cube, model = build_inputs(root, args.n, args.cube_chunk)
    result = {"n_stars": args.n, "engine": args.engine, "workers": args.workers, "pixels_per_star": N_PIX,
              "cube_build_s": round(time.perf_counter() - t0, 1), "cube_mb": round(_dir_mb(cube), 1), "runs": {}}
    runner = run_dask if args.engine == "dask" else run_spark
    for size in args.task_sizes:
        out = root / f"results_{size}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        first = runner(cube, model, out, size, args.workers, resume=False)
        again = runner(cube, model, out, size, args.workers, resume=True)
        n_tasks = first.get("n_tasks") or -(-args.n // size)
        row = {**first, "n_tasks": n_tasks, "per_task_overhead_ms": 1e3 * first["wall_s"] * args.workers / n_tasks,
               "resume_finished_store_s": again["wall_s"], "bad_rows": _check(out, args.n),
               "store_mb": round(_dir_mb(out), 1), "store_files": sum(1 for _ in out.rglob("*") if _.is_file())}
        result["runs"][str(size)] = row
        print(json.dumps({str(size): row}), flush=True)
    result["client_peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)
    result["load_average_after"] = os.getloadavg()
    path = OUT / f"plumbing_{args.engine}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r["bad_rows"] == 0 for r in result["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
