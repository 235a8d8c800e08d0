"""The hybrid GSN (MILES + synthetic spectra, ``synth_model.py --hybrid``) for the demo's MILES
hold-out: the hybrid training cube without the hold-out stars, trained with the default recipe (and
``--set`` overrides, e.g. ``--set synthetic_weight=0.2``); in such a mixed cube the emulator error,
the label systematics and the Kiel prior come from the MILES stars. Then ``miles_holdout.py --model``
measures it:

    python benchmarks/synth_model.py ... --work W --hybrid          # writes W/hybrid.zarr
    python benchmarks/hybrid_holdout.py --hybrid-cube W/hybrid.zarr --out W/hybrid_holdout_model
    python benchmarks/miles_holdout.py --model W/hybrid_holdout_model --tag emcee-hybrid-demo
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import gsn_dask as gd
from gsn_dask import demo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hybrid-cube", type=Path, required=True, help="the hybrid training cube of synth_model.py --hybrid")
    ap.add_argument("--out", type=Path, required=True, help="model dir to write")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training recipe override (JSON)")
    args = ap.parse_args(argv)
    from gsn_dask.calibration import train_and_calibrate
    from gsn_dask.cube import write_spectra

    full = gd.open_spectra(demo.miles_training_cube(progress=False)).load()
    hold = demo.holdout_mask(full)
    held = {str(s) for s in np.asarray(full["star"].values)[hold]}
    cube = gd.open_spectra(args.hybrid_cube).load()
    keep = np.array([str(s) not in held for s in cube["star"].values])
    print(f"{len(held)} hold-out stars; {int((~keep).sum())} dropped from the hybrid cube, {int(keep.sum())} kept")
    train = args.out.with_name(args.out.name + "_train.zarr")
    write_spectra(cube.isel(star=np.flatnonzero(keep)), train, overwrite=True)
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    model, _ = train_and_calibrate(train, progress=False, **overrides)
    model.save(args.out)
    print(f"saved {args.out} ({model.model_id}); label systematics {model.meta['label_systematics']['sigma']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
