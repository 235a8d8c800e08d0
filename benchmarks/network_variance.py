"""How much of the demo hold-out's scatter is the network, not the stars (issue 15)?

The demo's hold-out (``gsn-dask demo``: every 10th MILES star in its Teff window, 105 stars) is the
guard of issue 15, and one training seed's numbers on it move a lot: log g in-68 ran from 60 to 68%
over seeds with one recipe. This trains the demo's split once per seed with ``gsn-dask train``'s
recipe (``train_and_calibrate``, one thread) and fits the hold-out's library spectra (MAP, no label
systematics, no Kiel prior: the calibration's fit) with every cross-validation fold model and with
the final model, beside each fold model's own held-out training stars (the CV that sets the
floors). Per class of the MILES label (giants log g < 3.8, dwarfs) it prints and saves 1.4826 MAD
of fit - label, and the same for the mean of the fold models' fits (what averaging networks would
give) and, with ``--distil M``, for the model ``gsn-dask train --distil M`` makes from the same
training (M final networks averaged into a teacher, one network distilled from it). Equal CV and hold-out scatter for the fold models, but a final model that differs from them
by more than they differ from each other, mean the hold-out's numbers are the network's draw:

    python benchmarks/network_variance.py --seeds 0 1 2

Saves ``benchmarks/results/network_variance.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import mad_std

OUT = Path(__file__).resolve().parent / "results" / "network_variance.json"
GIANT_LOGG = 3.8


def class_scatter(delta: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, dict]:
    """{all, giants, dwarfs}: n and 1.4826 MAD per label of ``delta`` (rows with finite values)."""
    giant = labels[:, names.index("logg")] < GIANT_LOGG
    out = {}
    for cls, m in (("all", np.ones_like(giant)), ("giants", giant), ("dwarfs", ~giant)):
        d = delta[m]
        out[cls] = {"n": int(np.isfinite(d).all(axis=1).sum()),
                    **{n: round(mad_std(d[np.isfinite(d[:, k]), k]), 4) for k, n in enumerate(names)}}
    return out


def final_inputs(model, cv):  # noqa: ANN001, ANN201
    """What this training's final refit trained on: (recipe, scaled labels, (labels, flux, weights),
    every-star mask, epochs, run settings) for :func:`gsn_dask.emulator_torch._train_members`."""
    import torch
    from gsn_dask.calibration import refined_labels
    from gsn_dask.emulator_data import loss_weights
    from gsn_dask.emulator_recipe import TrainRecipe

    recipe = TrainRecipe.from_json(model.meta["training"]["recipe"])  # the training's own
    share = model.meta["training"]["config"]["label_noise_share"]
    labels = refined_labels(cv, share)[0] if share else np.asarray(cv.labels, float)
    template = {"label_names": model.label_names, "label_units": model.label_units, "bounds": model.bounds,
                "label_transforms": model.label_transforms, "wavelength": model.wavelength,
                "normalisation": model.normalisation}
    w = loss_weights(cv.ivar, np.ones(len(labels), bool), recipe.weight_floor, recipe.synthetic_weight)
    x, every, epochs = model.scale(labels), np.ones(len(labels), bool), int(model.meta["training"]["final_epochs"])
    run = {"template": template, "device": torch.device("cpu"), "progress": False}
    return recipe, x, (x, cv.flux, w), every, epochs, run


def distilled(model, cv, seed: int, threads: int, members: int):  # noqa: ANN001, ANN201
    """The model ``gsn-dask train --distil members`` makes from this training: the package's
    distillation step (:func:`gsn_dask.emulator_torch._distil`) on the final network's labels,
    spectra and weights, with the model's emulator error."""
    from gsn_dask.emulator_torch import _deterministic, _distil, _train_members, _with_error

    recipe, x, arrays, every, epochs, run = final_inputs(model, cv)
    recipe = recipe.replace(distil=members)
    with _deterministic(seed, threads):  # the teacher: the final network again and M - 1 more, as train_gsn does
        teacher, _ = _train_members(arrays, every, None, recipe=recipe.replace(ensemble=members, distil=1),
                                    epochs=epochs, patience=0, seed0=seed, desc="final", **run)
        student, _ = _distil(teacher, x, len(model.label_names), recipe=recipe, epochs=epochs, **run)
    return _with_error(student, model.emulator_error)


def one_seed(seed: int, threads: int, members: int = 0) -> dict:
    """Train the demo's split with ``seed``; the scatter table of CV, fold models and final model."""
    import gsn_dask as gd
    from gsn_dask import demo
    from gsn_dask.calibration import out_of_fold_fits, train_and_calibrate
    from gsn_dask.fit.config import FitConfig

    full = gd.open_spectra(demo.miles_training_cube(progress=False)).load()
    hold = demo.holdout_mask(full)
    t0 = time.perf_counter()
    model, rep = train_and_calibrate(full.isel(star=np.flatnonzero(~hold)), threads=threads, progress=False, seed=seed)
    cv, names = rep["cv_folds"], list(model.label_names)
    _, idx, fit_cv, _ = cv.fits
    sub = full.isel(star=np.flatnonzero(hold))
    truth = np.stack([np.asarray(sub[f"label_{n}"].values, float) for n in names], axis=1)
    w, ws = np.asarray(model.wavelength), np.asarray(sub["wavelength"].values)
    k0 = int(np.argmin(np.abs(ws - w[0])))
    flux = np.asarray(sub["flux"].values)[:, k0:k0 + w.size]
    ivar = np.asarray(sub["ivar"].values)[:, k0:k0 + w.size]
    cfg = FitConfig().replace(label_systematics=False, label_prior="none")
    every = np.arange(len(truth))

    def fits_by(m) -> np.ndarray:  # noqa: ANN001 - a GSN
        return out_of_fold_fits([m], flux, ivar, np.zeros(len(truth), int), every, cfg)[0]

    fold_fits = [fits_by(m) for m in cv.models]
    final_fit = fits_by(model)
    rows = {"CV: fold models on their held-out training stars": class_scatter(fit_cv - cv.labels[idx], cv.labels[idx], names)}
    for j, f in enumerate(fold_fits):
        rows[f"hold-out: fold model {j}"] = class_scatter(f - truth, truth, names)
    rows["hold-out: mean of the fold models' fits"] = class_scatter(np.mean(fold_fits, axis=0) - truth, truth, names)
    rows["hold-out: final model"] = class_scatter(final_fit - truth, truth, names)
    if members > 1:
        student = distilled(model, cv, seed, threads, members)
        rows[f"hold-out: distilled from {members} final networks"] = class_scatter(fits_by(student) - truth, truth, names)
    giant = truth[:, names.index("logg")] < GIANT_LOGG
    pair = {}
    for cls, m in (("all", np.ones_like(giant)), ("giants", giant)):
        fold_pairs = [(a, b) for i, a in enumerate(fold_fits) for b in fold_fits[i + 1:]]
        pair[cls] = {
            "fold vs fold": {n: round(float(np.mean([mad_std((a - b)[m, k]) for a, b in fold_pairs])), 4)
                             for k, n in enumerate(names)},
            "final vs fold": {n: round(float(np.mean([mad_std((final_fit - a)[m, k]) for a in fold_fits])), 4)
                              for k, n in enumerate(names)}}
    return {"seed": seed, "model_id": model.model_id, "n_fold_models": len(cv.models), "scatter": rows,
            "network_differences": pair, "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0, the demo's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training (default 1)")
    ap.add_argument("--distil", type=int, default=0, metavar="M",
                    help="also the model that `gsn-dask train --distil M` makes from the same training (one more "
                         "hold-out row)")
    ap.add_argument("--save", type=Path, default=OUT, help=f"JSON to merge the seeds into (default {OUT.name})")
    args = ap.parse_args(argv)
    saved = json.loads(args.save.read_text()) if args.save.exists() else {}
    per_seed = saved.get("per_seed", {})
    for seed in args.seeds:
        r = one_seed(seed, args.threads, args.distil)
        per_seed[str(seed)] = r
        print(f"seed {seed} (model {r['model_id']}, {r['wall_s']} s): 1.4826 MAD Teff / log g / [Fe/H]")
        for name, tab in r["scatter"].items():
            print(f"  {name:48s} " + "  ".join(
                f"{cls} ({t['n']}): {t['teff']:.0f} K / {t['logg']:.3f} / {t['feh']:.3f}" for cls, t in tab.items()))
        for cls, t in r["network_differences"].items():
            print(f"  network differences, {cls}: " + ", ".join(
                f"{k}: " + " / ".join(f"{v:.3g}" for v in d.values()) for k, d in t.items()))
    args.save.write_text(json.dumps({"command": "python benchmarks/network_variance.py " + " ".join(sys.argv[1:]),
                                     "giant_logg": GIANT_LOGG, "per_seed": per_seed}, indent=1) + "\n")
    print(f"saved {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
