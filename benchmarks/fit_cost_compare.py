"""Fit cost of two or more models on the same cube, side by side in one run (issue 15's cost criterion).

Each round runs ``gsn-dask fit CUBE --model M --workers W`` once per model, in turn (so that a
machine that slows down or speeds up during the run touches every model alike), and times the
process and its Dask workers (CPU seconds of the children, as ``readme_path.py`` does). Prints and
saves per model the CPU seconds per spectrum of every round, their median, and the ratio of each
model's median to the first model's:

    python benchmarks/fit_cost_compare.py --cube lamost.zarr --model plain=W/lamost_model_plain \\
        --model eiv=W/lamost_model --rounds 2 --work /tmp/cost --save results/fit_cost_eiv.json

Absolute CPU seconds depend on the machine (the same model and stars have cost 0.25 and 0.52 CPU s
per spectrum on two VMs of this project); the ratio measured here is the number to compare.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
from pathlib import Path

import xarray as xr

from readme_path import run

OUT = Path(__file__).resolve().parent / "results" / "fit_cost_compare.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cube", type=Path, required=True, help="ingested cube to fit")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                    help="a model to time (repeat; the first is the reference of the ratios)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sampler", default="emcee")
    ap.add_argument("--work", type=Path, required=True, help="folder for the results cubes (replaced each round)")
    ap.add_argument("--save", type=Path, default=OUT)
    args = ap.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.model)
    if len(models) != len(args.model) or any(not Path(d).is_dir() for d in models.values()):
        ap.error("--model NAME=DIR, names unique, DIR a model folder")
    n = int(xr.open_zarr(args.cube, consolidated=False).sizes["star"])
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "commands.log"
    cost: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        for name, model in models.items():
            out = args.work / f"results_{name}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            step = run([sys.executable, "-m", "gsn_dask", "fit", str(args.cube), "--model", str(model), "--out", str(out),
                        "--workers", str(args.workers), "--sampler", args.sampler], log)
            cost[name].append(step["cpu_s"] / n)
            print(f"round {r}: {name} {cost[name][-1]:.3f} CPU s per spectrum", flush=True)
    first = statistics.median(cost[next(iter(models))])
    result = {"cube": str(args.cube), "n_spectra": n, "workers": args.workers, "sampler": args.sampler,
              "machine": platform.processor() or platform.machine(), "models": models,
              "cpu_s_per_spectrum": cost,
              "median": {k: statistics.median(v) for k, v in cost.items()},
              "ratio_to_first": {k: statistics.median(v) / first for k, v in cost.items()},
              "note": "CPU of the fit process and its Dask workers, including the cluster start"}
    for k in models:
        print(f"{k}: median {result['median'][k]:.3f} CPU s per spectrum, ratio {result['ratio_to_first'][k]:.3f}")
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
