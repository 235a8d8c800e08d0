"""``gsn-dask simulate``: a synthetic survey cube drawn from a model (injection tests, capacity planning)."""
from __future__ import annotations

import argparse
import time

DESCRIPTION = """\
Write a synthetic survey cube (zarr, raw flux) of N stars drawn from a trained GSN: labels from a
disc-like Kiel-diagram population (or resampled with jitter from --population CUBE's label_*),
the model spectrum Doppler-shifted by a Gaussian rv, times a smooth instrument response with a
per-star tilt, plus Gaussian noise at a log-normal, LAMOST-like S/N per pixel and the model's
emulator error. True labels are stored as label_*, the true rv as rv_catalog, the S/N as snr, so
`gsn-dask fit` + `gsn-dask validate --cube` measure label recovery. A star's spectrum depends
only on --seed and its index; the cube is computed and written chunk by chunk (bounded memory).
"""

EPILOG = """\
examples:
  gsn-dask simulate --model miles_model --n 100000 --out sim100k.zarr
  gsn-dask simulate --model miles_model --n 2000 --snr-median 20 --population miles_train.zarr --out sim.zarr
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("simulate", help="a synthetic survey cube from a model (true labels stored)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, metavar="MODEL_DIR", help="trained GSN (default: the shipped model)")
    p.add_argument("--n", type=int, required=True, metavar="N", help="number of stars")
    p.add_argument("-o", "--out", required=True, metavar="CUBE", help="output spectra cube (zarr directory)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--chunk-size", type=int, default=1000, metavar="N", help="stars per zarr chunk (default 1000)")
    p.add_argument("--snr-median", type=float, default=35.0, help="median S/N per pixel (default 35)")
    p.add_argument("--snr-sigma", type=float, default=0.6, help="log-normal width of S/N, natural log (default 0.6)")
    p.add_argument("--rv-sigma", type=float, default=40.0, help="rv spread, km/s (default 40)")
    p.add_argument("--no-emulator-error", action="store_true", help="noise without the model's emulator error")
    p.add_argument("--population", default=None, metavar="CUBE",
                   help="resample labels (with jitter) from this cube's label_* instead of the Kiel population")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output cube")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import load_model
    from ..cube import open_spectra
    from ..simulate import SurveySettings, simulate_store

    if args.n < 1 or args.chunk_size < 1:
        raise ValueError("--n and --chunk-size must be >= 1")
    if not args.snr_median > 0 or args.snr_sigma < 0 or args.rv_sigma < 0:
        raise ValueError("--snr-median must be > 0, --snr-sigma and --rv-sigma >= 0")
    model = load_model(args.model)
    settings = SurveySettings(snr_median=args.snr_median, snr_sigma_ln=args.snr_sigma, rv_sigma_kms=args.rv_sigma,
                              emulator_error=not args.no_emulator_error)
    population = open_spectra(args.population) if args.population else None
    t0 = time.perf_counter()
    simulate_store(model, args.out, args.n, seed=args.seed, chunk_size=args.chunk_size, settings=settings,
                   population=population, overwrite=args.overwrite)
    print(f"wrote {args.out}: {args.n} simulated stars, {len(model.label_names)} labels "
          f"({', '.join(model.label_names)}), {time.perf_counter() - t0:.1f} s")
    return 0
