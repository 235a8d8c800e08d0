"""Does a trained GSN read its own library's spectra on the library's label scale, per stellar class?

Issue 15: against LASP, our LAMOST Teff lies +613 K above for stars hotter than 7000 K and +199 K
above for K/M dwarfs (``gsn-dask validate``'s class table). This trains the README path's network
(``gsn-dask train``'s recipe and seed; the calibration step is skipped, it changes no weight) and fits every training star with the cross-validation fold
model that did not see it (MAP, no label systematics, no Kiel prior: the calibration's fit), then
prints per class of the library label (``validate``'s :data:`~gsn_dask.validate.stats.STELLAR_CLASSES`) the median and 1.4826 MAD of
fit - label. Near-zero medians mean the class offsets on LAMOST are not the network misreading the
library: they come from the survey's spectra or from the two catalogues' scales.

    python benchmarks/cv_classes.py --cube miles_train.zarr --seed 0

Saves ``benchmarks/results/cv_classes.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _common import mad_std

OUT = Path(__file__).resolve().parent / "results" / "cv_classes.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cube", type=Path, required=True, help="training cube (gsn-dask grid miles)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (gsn-dask train --seed)")
    ap.add_argument("--save", type=Path, default=OUT)
    a = ap.parse_args(argv)
    from gsn_dask.calibration import out_of_fold_fits
    from gsn_dask.cube import open_spectra
    from gsn_dask.emulator_torch import train_gsn
    from gsn_dask.fit.config import FitConfig
    from gsn_dask.validate.stats import stellar_classes

    model, rep = train_gsn(open_spectra(a.cube), threads=1, progress=False, seed=a.seed)  # the calibration adds no weight
    cv = rep["cv_folds"]
    idx = np.flatnonzero(cv.model_index >= 0)
    cfg = FitConfig().replace(label_systematics=False, label_prior="none")
    fit, _ = out_of_fold_fits(cv.models, cv.flux, cv.ivar, cv.model_index, idx, cfg)
    delta = fit - cv.labels[idx]
    names = list(model.label_names)
    ok = np.all(np.isfinite(delta), axis=1)
    lab = cv.labels[idx]
    out: dict = {"cube": str(a.cube), "seed": a.seed, "model_id": model.model_id, "n_fitted": int(ok.sum()), "classes": {}}
    for cname, sel in stellar_classes(lab[:, names.index("teff")], lab[:, names.index("logg")]).items():
        s = sel & ok
        row = {"n": int(s.sum()), **{n: {"bias": float(np.median(delta[s, k])), "mad_std": mad_std(delta[s, k])}
                                     for k, n in enumerate(names)}}
        out["classes"][cname] = row
        print(f"{cname}: n {row['n']}, " + ", ".join(f"{n} {row[n]['bias']:+.3g} / {row[n]['mad_std']:.3g}" for n in names))
    a.save.parent.mkdir(parents=True, exist_ok=True)
    a.save.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
