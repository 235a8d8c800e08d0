"""Issue 15, item 3: training that tolerates noisy library labels, by out-of-fold down-weighting.

MILES labels are heterogeneous literature values. Train the GSN (``gsn-dask train``'s recipe) on the
demo's training stars (MILES minus the demo hold-out), fit every training star with the fold model
that did not see it (MAP + Laplace, the calibration step's fit), and compute
z = (fit - label) / hypot(sigma_stat, sigma_sys) per label. Stars with |z| > threshold in any label
(labels their spectra contradict) get weight zero: the GSN is trained again without them (and
calibrated on the rest). The models land in ``--work`` (``base``, ``clean<threshold>``); compare
them with the demo hold-out and the LAMOST stars:

    python benchmarks/noisy_labels.py --work /tmp/noisy --thresholds 3 4
    python benchmarks/miles_holdout.py --model /tmp/noisy/clean4 --sampler map --tag map-noisy-clean4
    python benchmarks/lamost_labels.py --cube lamost.zarr --model /tmp/noisy/clean4 --sampler map --tag map-noisy-clean4

Saves ``benchmarks/results/noisy_labels.json`` (per threshold: stars dropped per label, model ids).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import gsn_dask as gd
from gsn_dask import demo
from gsn_dask.calibration import out_of_fold_fits, train_and_calibrate
from gsn_dask.emulator_data import prepare_training_data
from gsn_dask.emulator_recipe import DEFAULT_RECIPE
from gsn_dask.fit.config import FitConfig

OUT = Path(__file__).resolve().parent / "results" / "noisy_labels.json"


def out_of_fold_z(model, report: dict, train) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(star ids, z (n_star, n_label)) of every training star fitted by its fold model."""
    cv = report["cv_folds"]
    r = DEFAULT_RECIPE
    stars = prepare_training_data(train, labels=r.labels, wavelength_range=r.wavelength_range,
                                  label_ranges=r.label_ranges, mask_telluric=r.mask_telluric)["star"]
    idx = np.flatnonzero(cv.model_index >= 0)
    fit = np.full(cv.labels.shape, np.nan)
    sd = np.full(cv.labels.shape, np.nan)
    fit[idx], sd[idx] = out_of_fold_fits(cv.models, cv.flux, cv.ivar, cv.model_index, idx, FitConfig(label_systematics=False, label_prior="none"))
    sig = model.meta["label_systematics"]["sigma"]
    return np.asarray(stars), (fit - cv.labels) / np.hypot(sd, [sig[n] for n in model.label_names])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[3.0, 4.0])
    ap.add_argument("--save", type=Path, default=OUT)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    full = gd.open_spectra(demo.miles_training_cube(progress=False)).load()
    train = full.isel(star=np.flatnonzero(~demo.holdout_mask(full)))
    t0 = time.perf_counter()
    base, report = train_and_calibrate(train, DEFAULT_RECIPE, progress=False)
    base.save(args.work / "base")
    stars, z = out_of_fold_z(base, report, train)
    out: dict = {"n_train": int(stars.size), "base_model_id": base.model_id, "train_s": time.perf_counter() - t0, "runs": {}}
    for thr in args.thresholds:
        bad = np.any(np.abs(z) > thr, axis=1)
        drop = set(stars[bad].tolist())
        keep = np.array([str(s) not in drop for s in train["star"].values])
        clean, _ = train_and_calibrate(train.isel(star=np.flatnonzero(keep)), DEFAULT_RECIPE, progress=False)
        clean.save(args.work / f"clean{thr:g}")
        out["runs"][f"|z|>{thr:g}"] = {"n_dropped": int(bad.sum()), "model_id": clean.model_id,
                                       "dropped_by_label": {n: int((np.abs(z[:, j]) > thr).sum())
                                                            for j, n in enumerate(base.label_names)},
                                       "dropped": sorted(stars[bad].tolist())}
        print(f"|z| > {thr:g}: dropped {bad.sum()} of {stars.size} stars -> model {clean.model_id}", flush=True)
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
