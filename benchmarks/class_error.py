"""The emulator error by Teff class, on the demo's MILES hold-out (issue 15, a prototype measurement).

The GSN's per-pixel emulator error (``model.emulator_error``, in the likelihood's weights) is one
vector solved from every training star's out-of-fold residuals, so it is the error of the typical
(solar-type) star. By Teff class the same residuals say otherwise: on the demo's seed-0 training the
median over pixels is 0.036 (normalised flux) for stars below 4000 K, 0.010 at 4000-4800 K, 0.004 at
4800-5500 K and 0 above (the noise explains the residuals), against 0.004 pooled: the likelihood of
a cool giant is overconfident by up to ten times in flux, and its fit is pulled by the molecular bands
the network models worst. This measures whether a label-dependent error helps the labels.

Per seed it trains the demo's split once (``train_and_calibrate``, one thread; the networks and
cross-validation arrays are saved under ``--work`` and reused), solves one error vector per Teff class
(``--edges``, K) from the out-of-fold residuals of the class's training stars
(:func:`gsn_dask.emulator_data.robust_emulator_error`, as the pooled one), and fits in two stages: the
pooled model's MAP gives each star its class, then the class's model (the same network, its class
error) fits it. The label-systematics floors are solved again from the cross-validation fitted the
same two-stage way (:func:`gsn_dask.calibration.systematics_record`, the default rule), so the
intervals stay calibrated. Rows: the final model as shipped, with class errors, and (information) the
final model's medians and intervals shifted by the cross-validation's median bias (fit - label).
Prints and saves bias / 1.4826 MAD / in68 per label, all stars and giants (MILES log g < 3.8):

    python benchmarks/class_error.py --seeds 0 1 2 --work W

Saves ``benchmarks/results/class_error.json`` (seeds merged). A prototype: the package keeps one
emulator error vector per model.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

from _common import add_seed_run_args, demo_holdout_observations, run_seeds
from label_ensemble import stats, with_reporting

OUT = Path(__file__).with_name("results") / "class_error.json"
EDGES = (4000.0, 4800.0, 5500.0, 6500.0)
GIANT_LOGG = 3.8


def trained(seed: int, threads: int, here: Path) -> tuple:
    """(final model, fold models, cross-validation arrays) of the demo's split with ``seed``, saved in ``here``."""
    import gsn_dask as gd
    from gsn_dask import demo
    from gsn_dask.calibration import train_and_calibrate

    if not (here / "cv.npz").exists():
        full = gd.open_spectra(demo.miles_training_cube(progress=False)).load()
        hold = demo.holdout_mask(full)
        model, rep = train_and_calibrate(full.isel(star=np.flatnonzero(~hold)), threads=threads, progress=False,
                                         seed=seed)
        cv = rep["cv_folds"]
        for k, f in enumerate(cv.models):
            with_reporting(f, model, here / f"fold{k}")
        model.save(here / "final")
        np.savez(here / "cv.npz", oof=rep["oof_pred"], flux=rep["flux"], ivar=rep["ivar"], labels=rep["label_values"],
                 val_mask=rep["val_mask"], model_index=cv.model_index, fit_idx=cv.fits[1], fit=cv.fits[2])
    folds = [gd.load_model(d) for d in sorted(here.glob("fold*"))]
    return gd.load_model(here / "final"), folds, dict(np.load(here / "cv.npz"))


def class_errors(cv: dict, edges: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """One emulator error (n_pix,) per Teff class of the training labels, and each class's star count."""
    from gsn_dask.emulator_data import robust_emulator_error

    vm = cv["val_mask"]
    resid = np.where(vm[:, None], cv["oof"] - cv["flux"], np.nan)
    cls = np.searchsorted(edges, cv["labels"][:, 0], side="right")
    out, n = [], []
    for c in range(len(edges) + 1):
        m = vm & (cls == c)
        out.append(robust_emulator_error(resid[m], cv["ivar"][m]).astype(np.float32))
        n.append(int(m.sum()))
    return out, n


def two_stage_floors(model, folds: list, cv: dict, errs: list, edges: np.ndarray) -> dict:  # noqa: ANN001
    """The label-systematics record of the cross-validation fitted in two stages (class by the
    pooled fold model's MAP Teff, then the fold model with its class error), solved as the model's
    own recipe solves it (bins, target, split and split rule)."""
    from gsn_dask.calibration import out_of_fold_fits, systematics_record
    from gsn_dask.emulator_torch import _with_error
    from gsn_dask.fit.config import FitConfig

    idx, fit1 = cv["fit_idx"], cv["fit"]
    cfg = FitConfig().replace(label_systematics=False, label_prior="none")
    fit2, sd2 = np.full_like(fit1, np.nan), np.full_like(fit1, np.nan)
    cls = np.searchsorted(edges, fit1[:, 0], side="right")
    for c, err in enumerate(errs):
        sel = np.flatnonzero((cls == c) & np.isfinite(fit1[:, 0]))
        if sel.size:
            fit2[sel], sd2[sel] = out_of_fold_fits([_with_error(f, err) for f in folds], cv["flux"], cv["ivar"],
                                                   cv["model_index"], idx[sel], cfg)
    delta = fit2 - cv["labels"][idx]
    ok = np.all(np.isfinite(delta) & np.isfinite(sd2), axis=1)
    r = model.meta["training"]["recipe"]
    split = r.get("label_systematics_split")
    return systematics_record(fit2[ok], sd2[ok], delta[ok], list(model.label_names), by=r.get("label_systematics_by", "teff"),
                              target=r.get("label_systematics_target", "median"), split=tuple(split) if split else None,
                              split_rule=r.get("label_systematics_split_rule", "own"))


def table(names: list[str], med: np.ndarray, lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> dict:
    """:func:`label_ensemble.stats` for all observations and for the giants (MILES log g < 3.8)."""
    giant = truth[:, names.index("logg")] < GIANT_LOGG
    return {cls: stats(names, med[m], lo[m], hi[m], truth[m]) for cls, m in (("all", np.ones(len(truth), bool)), ("giants", giant))}


def one_seed(seed: int, threads: int, sampler: str, work: Path, edges: np.ndarray) -> dict:
    """The hold-out through the final model, with class errors, and shifted by the CV bias."""
    import gsn_dask as gd
    from gsn_dask.emulator_torch import _with_error

    t0 = time.perf_counter()
    model, folds, cv = trained(seed, threads, work / f"seed{seed}")
    names = list(model.label_names)
    errs, n_cls = class_errors(cv, edges)
    rec = two_stage_floors(model, folds, cv, errs, edges)
    meta = copy.deepcopy(model.meta)
    meta["label_systematics"] = {**rec, "method": "two-stage class-error cross-validation (class_error.py)"}
    obs, truth = demo_holdout_observations(names=names)

    def summary(r) -> list[np.ndarray]:  # noqa: ANN001 - a results Dataset
        return [np.asarray(r[v].values, float) for v in ("median", "p16", "p84")]

    base = summary(gd.fit(obs, model, sampler=sampler, seed=0))
    stage1 = np.asarray(gd.fit(obs, model, sampler="map", seed=0)["median"].values, float)
    cls = np.searchsorted(edges, stage1[:, 0], side="right")
    two = [np.full_like(truth, np.nan) for _ in range(3)]
    for c, err in enumerate(errs):
        sel = np.flatnonzero(cls == c)
        if sel.size:
            for a, v in zip(two, summary(gd.fit(obs.isel(star=sel), _with_error(model, err, meta), sampler=sampler, seed=0))):
                a[sel] = v
    fit, lab = cv["fit"], cv["labels"][cv["fit_idx"]]
    ok = np.isfinite(fit).all(axis=1)
    shift = np.median(fit[ok] - lab[ok], axis=0)
    rows = {"final model": table(names, *base, truth), "class errors": table(names, *two, truth),
            "final model shifted by the CV median bias": table(names, *(a - shift for a in base), truth)}
    emu = {f"class {c}": {"n_star": n, "median": float(np.median(e)), "p90": float(np.percentile(e, 90))}
           for c, (e, n) in enumerate(zip(errs, n_cls))}
    return {"seed": seed, "model_id": model.model_id, "sampler": sampler, "edges_K": edges.tolist(),
            "pooled_error": {"median": float(np.median(model.emulator_error)),
                             "p90": float(np.percentile(model.emulator_error, 90))},
            "class_error": emu, "floors": {"shipped": model.meta["label_systematics"]["sigma"], "class errors": rec["sigma"]},
            "cv_bias": dict(zip(names, shift.tolist())), "n_obs_per_class": np.bincount(cls, minlength=len(errs)).tolist(),
            "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}


def print_rows(title: str, rows: dict) -> None:
    print(f"\n{title}\n{'row':44s} {'set':7s} " + " ".join(f"{n + ' MAD (in68)':>22s}" for n in ("teff", "logg", "feh")))
    for name, sets in rows.items():
        for set_, r in sets.items():
            print(f"{name:44s} {set_:7s} " + " ".join(f"{r[n]['mad_std']:14.4g} ({100 * r[n]['in68']:3.0f}%)"
                                                       for n in ("teff", "logg", "feh")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_seed_run_args(ap, OUT, "emcee", "folder for the networks and CV arrays (a seed found there is not trained again)")
    ap.add_argument("--edges", default=",".join(f"{e:g}" for e in EDGES), help="Teff class edges, K")
    args = ap.parse_args(argv)
    edges = np.array([float(x) for x in args.edges.split(",")])
    run_seeds(args.save, "class_error.py", args.seeds, args.sampler + "-{seed}",
              lambda seed: one_seed(seed, args.threads, args.sampler, args.work, edges), print_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
