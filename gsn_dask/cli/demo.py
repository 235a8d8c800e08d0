"""``gsn-dask demo``: the whole chain on the embedded default (MILES)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..demo import DEMO_SNR, HOLDOUT_EVERY, HOLDOUT_TEFF_K

    p = subparsers.add_parser(
        "demo",
        help="run the whole chain on MILES (and optionally real LAMOST files)",
        description=(
            "Fetch MILES (pinned sdss-mangadap wheel), build the training cube at LAMOST resolution, "
            "train the GSN with gsn-dask train's default recipe and calibrate its label systematics (or reuse "
            "a cached model), hold out MILES stars with number % "
            f"{HOLDOUT_EVERY} == 0 and {HOLDOUT_TEFF_K[0]:.0f}-{HOLDOUT_TEFF_K[1]:.0f} K, turn them into "
            f"LAMOST-like observations (S/N {', '.join(f'{s:g}' for s in DEMO_SNR)}, random rv, instrument "
            "response), fit them with the Dask runner on a LocalCluster and validate against the "
            "literature labels. With --lamost also ingest, fit and validate real LAMOST spectra."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="gsn-dask-demo", help="output folder")
    p.add_argument("--lamost", nargs="?", const="", default=None, metavar="DIR",
                   help="also fit LAMOST LRS FITS files: a folder, or no value for the 51-spectrum sample "
                        "that ships in the package (with its LASP labels)")
    p.add_argument("--labels", default=None, metavar="CSV",
                   help="reference (LASP) labels for the LAMOST files (default with the shipped sample: its labels)")
    p.add_argument("--workers", type=int, default=None, help="Dask workers (default: one per core)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the training (gsn-dask train's recipe otherwise), the simulated observations and the fit")
    p.add_argument("--train-cube", default=None, help="use this MILES training cube instead of the cached one")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def lamost_inputs(lamost: str | None, labels: str | None) -> tuple[str | None, str | None]:
    """``--lamost``/``--labels`` as given, or (``--lamost`` without a folder) the shipped sample and its labels."""
    if lamost != "":
        return lamost, labels
    from ..io.sample import sample_dir, sample_labels

    return str(sample_dir()), labels or str(sample_labels())


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoSettings, run_demo
    from . import quiet_distributed_logs

    if not args.verbose:
        quiet_distributed_logs()

    args.lamost, args.labels = lamost_inputs(args.lamost, args.labels)
    settings = DemoSettings(seed=args.seed, n_workers=args.workers, progress=not args.no_progress)
    run_demo(args.out, lamost=args.lamost, labels_csv=args.labels, settings=settings, train_cube=args.train_cube)
    return 0
