"""The hybrid GSN (MILES + synthetic spectra, ``synth_model.py --hybrid``) for the demo's MILES
hold-out: the hybrid training cube without the hold-out stars, trained with the default recipe, its
Kiel prior from the MILES training stars. Then ``miles_holdout.py --model`` measures it:

    python benchmarks/synth_model.py ... --work W --hybrid          # writes W/hybrid.zarr
    python benchmarks/hybrid_holdout.py --hybrid-cube W/hybrid.zarr --out W/hybrid_holdout_model
    python benchmarks/miles_holdout.py --model W/hybrid_holdout_model --tag emcee-hybrid-demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import gsn_dask as gd
from gsn_dask import demo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hybrid-cube", type=Path, required=True, help="the hybrid training cube of synth_model.py --hybrid")
    ap.add_argument("--out", type=Path, required=True, help="model dir to write")
    args = ap.parse_args(argv)
    from gsn_dask.cube import write_spectra
    from synth_model import train_with_kiel_prior

    full = gd.open_spectra(demo.miles_training_cube(progress=False)).load()
    hold = demo.holdout_mask(full)
    held = {str(s) for s in np.asarray(full["star"].values)[hold]}
    cube = gd.open_spectra(args.hybrid_cube).load()
    keep = np.array([str(s) not in held for s in cube["star"].values])
    print(f"{len(held)} hold-out stars; {int((~keep).sum())} dropped from the hybrid cube, {int(keep.sum())} kept")
    train = args.out.with_name(args.out.name + "_train.zarr")
    write_spectra(cube.isel(star=np.flatnonzero(keep)), train, overwrite=True)
    tr = full.isel(star=np.flatnonzero(~hold))
    model = train_with_kiel_prior(train, tr["label_teff"].values, tr["label_logg"].values, args.out, {})
    print(f"saved {args.out} ({model.model_id}); label systematics {model.meta['label_systematics']['sigma']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
