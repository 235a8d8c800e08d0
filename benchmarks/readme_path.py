"""Issue 15's measurement on the README path: the commands a new user runs, in a fresh work folder,
then the labels on LAMOST DR1 against LASP (strict matches; LASP S/N_g > 30 and all).

Runs, each as its own ``gsn-dask`` process (timed; CPU seconds of the process and its Dask workers):

    gsn-dask grid miles --out W/miles_train.zarr
    gsn-dask train W/miles_train.zarr --out W/miles_model
    gsn-dask ingest LAMOST --recursive --labels LAMOST/dr1_labels_lasp.csv --out W/lamost.zarr
    gsn-dask fit W/lamost.zarr --model W/miles_model --out W/quick.zarr --sampler map
    gsn-dask diagnose W/quick.zarr --cube W/lamost.zarr --model W/miles_model --out W/diag --write-model W/lamost_model
    gsn-dask fit W/lamost.zarr --model W/lamost_model --out W/results.zarr [--workers N]
    gsn-dask validate W/results.zarr --cube W/lamost.zarr --out W/report

and the plain `gsn-dask fit` with the MILES model (no survey error) beside it. Saves
``benchmarks/results/readme_path.json``:

    python benchmarks/readme_path.py --work /tmp/readme_path --lamost ../shared/data/lamost

``--model DIR`` starts from a trained model instead of the first two steps (e.g. the hybrid GSN that
``benchmarks/synth_model.py --hybrid`` writes), ``--cube`` from an ingested LAMOST cube instead of the
ingest step; the rest is the same:

    python benchmarks/readme_path.py --work /tmp/hybrid_path --lamost ../shared/data/lamost \
        --model synth_model/hybrid_model --cube lamost.zarr --save benchmarks/results/hybrid_path.json
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import gsn_dask as gd
from _common import label_stats

OUT = Path(__file__).resolve().parent / "results" / "readme_path.json"


def run(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` (output to ``log``); wall and CPU seconds (the process and its children)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"{time.perf_counter() - t0:7.1f} s wall {cpu:7.1f} s CPU  {' '.join(cmd[:3])}", flush=True)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": cpu}


def lasp_comparison(results: Path, cube: Path) -> dict:
    """Bias, 1.4826 MAD, LASP inside [p16, p84] and robust std of z per label, for LASP S/N_g > 30
    (also without the A stars) and for all strict matches."""
    res = gd.open_results(results).load()
    sub = gd.open_spectra(cube)
    ref_ok = np.isfinite(np.asarray(sub["label_teff"].values, float))
    snr = np.asarray(sub["snr"].values, float)
    lasp_teff = np.asarray(sub["label_teff"].values, float)
    out = {}
    for name, sel in (("snrg>30", ref_ok & (snr > 30)), ("snrg>30, LASP Teff < 7000 K", ref_ok & (snr > 30) & (lasp_teff < 7000)),
                      ("all", ref_ok)):
        row = {}
        for j, lab in enumerate(res["label"].values):
            if f"label_{lab}" not in sub:  # e.g. alpha_fe: LASP has none
                continue
            med, lo, hi = (np.asarray(res[v].values, float)[sel, j] for v in ("median", "p16", "p84"))
            row[str(lab)] = label_stats(med, np.asarray(sub[f"label_{lab}"].values, float)[sel], lo, hi)
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="empty work folder")
    ap.add_argument("--lamost", type=Path, required=True, help="folder of LAMOST files with dr1_labels_lasp.csv")
    ap.add_argument("--workers", type=int, default=None, help="Dask workers of the fits (default: one per core)")
    ap.add_argument("--model", type=Path, default=None, help="a trained model: skip `grid miles` and `train`")
    ap.add_argument("--cube", type=Path, default=None, help="an ingested LAMOST cube: skip `ingest`")
    ap.add_argument("--save", type=Path, default=OUT)
    ap.add_argument("--no-plain-fit", action="store_true", help="skip the fit without the survey error")
    ap.add_argument("--fit-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a FitConfig setting for every fit (gsn-dask fit --set), e.g. label_prior=none")
    args = ap.parse_args(argv)
    w = args.work.resolve()
    w.mkdir(parents=True, exist_ok=True)
    log = w / "commands.log"
    gsn = [sys.executable, "-m", "gsn_dask"]
    fit_args = [] if args.workers is None else ["--workers", str(args.workers)]
    fit_args += [arg for kv in args.fit_set for arg in ("--set", kv)]
    steps = {}
    model, cube = (args.model or w / "miles_model").resolve(), (args.cube or w / "lamost.zarr").resolve()
    if args.model is None:
        steps["grid"] = run([*gsn, "grid", "miles", "--out", str(w / "miles_train.zarr")], log)
        steps["train"] = run([*gsn, "train", str(w / "miles_train.zarr"), "--out", str(model)], log)
    if args.cube is None:
        steps["ingest"] = run([*gsn, "ingest", str(args.lamost), "--recursive", "--labels",
                               str(args.lamost / "dr1_labels_lasp.csv"), "--out", str(cube)], log)
    steps["fit_quick_map"] = run([*gsn, "fit", str(cube), "--model", str(model), "--out",
                                  str(w / "quick.zarr"), "--sampler", "map", "--no-progress", *fit_args], log)
    steps["diagnose_write_model"] = run([*gsn, "diagnose", str(w / "quick.zarr"), "--cube", str(cube), "--model",
                                         str(model), "--out", str(w / "diag"), "--write-model",
                                         str(w / "lamost_model")], log)
    steps["fit"] = run([*gsn, "fit", str(cube), "--model", str(w / "lamost_model"), "--out",
                        str(w / "results.zarr"), "--no-progress", *fit_args], log)
    steps["validate"] = run([*gsn, "validate", str(w / "results.zarr"), "--cube", str(cube), "--out",
                             str(w / "report")], log)
    if not args.no_plain_fit:
        steps["fit_without_survey_error"] = run([*gsn, "fit", str(cube), "--model", str(model),
                                                 "--out", str(w / "results_miles.zarr"), "--no-progress", *fit_args], log)
    n = int(gd.open_spectra(cube).sizes["star"])
    out = {"work": str(w), "model": str(model), "cube": str(cube), "n_spectra": n, "steps": steps,
           "fit_cpu_s_per_star": steps["fit"]["cpu_s"] / n,
           "note": "fit CPU includes the Dask LocalCluster start and the normalisation of every star",
           "labels_with_survey_error": lasp_comparison(w / "results.zarr", cube),
           "labels_miles_model": None if args.no_plain_fit else lasp_comparison(w / "results_miles.zarr", cube),
           "survey_error": json.loads((w / "lamost_model" / "model.json").read_text())["survey_error"]}
    for key in ("labels_miles_model", "labels_with_survey_error"):
        for name, row in (out[key] or {}).items():
            print(f"{key} {name}: " + " | ".join(f"{lab} {s['bias']:+.3g} / {s['mad_std']:.3g} / in68 {100 * s['in68']:.0f}%"
                                                for lab, s in row.items()))
    print(f"fit: {out['fit_cpu_s_per_star']:.3f} CPU s per spectrum ({n} spectra)")
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
