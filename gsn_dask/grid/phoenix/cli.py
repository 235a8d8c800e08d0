"""``python -m gsn_dask.grid.phoenix``: the points / list / fixture / download commands and the
label-range options shared with ``gsn-dask grid phoenix``."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .download import download_grid
from .files import iter_spectra, list_grid
from .fixtures import write_fixture_grid
from .names import (
    DEFAULT_URL,
    PHOENIX_NPIX,
    WAVE_FILENAME,
    LabelRange,
    PhoenixError,
    PhoenixGridError,
    grid_points,
    parse_filename,
    relative_path,
)


# ---------------------------------------------------------------------------- command line
def add_label_range_arguments(parser: argparse.ArgumentParser, *, default_alpha: float | None = 0.0) -> None:
    """Add ``--teff``, ``--logg``, ``--feh``, ``--alpha`` (one value or LOW HIGH) and ``--any-alpha``
    to a parser; turn them into keyword arguments with :func:`label_ranges_from_args`."""
    g = parser.add_argument_group("grid selection (one value, or LOW HIGH inclusive; default: all nodes)")
    g.add_argument("--teff", nargs="+", type=float, metavar="K", help="effective temperature, K (2300-12000)")
    g.add_argument("--logg", nargs="+", type=float, metavar="DEX", help="surface gravity log g, cgs dex (0-6)")
    g.add_argument("--feh", nargs="+", type=float, metavar="DEX", help="[Fe/H], dex (-4 .. +1)")
    g.add_argument(
        "--alpha", nargs="+", type=float, metavar="DEX", default=None,
        help=f"[alpha/Fe], dex (-0.2 .. +1.2; default {default_alpha if default_alpha is not None else 'any'}; "
        "non-zero only for 3500-8000 K and -3 <= [Fe/H] <= 0)",
    )
    g.add_argument("--any-alpha", action="store_true", help="take every [alpha/Fe] (same as no --alpha limit)")
    parser.set_defaults(_default_alpha=default_alpha)


def label_ranges_from_args(args: argparse.Namespace) -> dict[str, LabelRange]:
    """``{"teff": .., "logg": .., "feh": .., "alpha_fe": ..}`` from :func:`add_label_range_arguments` options."""
    def rng(v: list[float] | None) -> LabelRange:
        if v is None:
            return None
        if len(v) not in (1, 2):
            raise PhoenixGridError(f"give one value or LOW HIGH, got {v}")
        return v[0] if len(v) == 1 else (v[0], v[1])

    alpha = None if args.any_alpha else (rng(args.alpha) if args.alpha is not None else args._default_alpha)
    return {"teff": rng(args.teff), "logg": rng(args.logg), "feh": rng(args.feh), "alpha_fe": alpha}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gsn_dask.grid.phoenix",
        description=(
            "PHOENIX-ACES-AGSS-COND-2011 HiRes spectra (Husser et al. 2013): download a sub-grid from "
            f"{DEFAULT_URL} (resumable, sha256 manifest), list local files, list grid nodes, or write "
            "small fixture grids in the same format. Build a training cube from a local grid with "
            "`gsn-dask grid phoenix ROOT ...`."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("download", help="download the WAVE file and a sub-grid (resumable)",
                       description="Download WAVE_PHOENIX-ACES-AGSS-COND-2011.fits and the spectra of a sub-grid into "
                       "DEST, keeping the server layout (DEST plays the part of HiResFITS/). Rerun to resume; "
                       "files are checked against DEST/MANIFEST.sha256. Each spectrum is ~6.3 MB.")
    p.add_argument("dest", type=Path, help="destination folder (the local HiResFITS root)")
    add_label_range_arguments(p)
    p.add_argument("--base-url", default=DEFAULT_URL,
                   help="server folder that holds WAVE_... and PHOENIX-ACES-AGSS-COND-2011/ (default: %(default)s)")
    p.add_argument("--workers", type=int, default=4,
                   help="parallel downloads (default: %(default)s; please be gentle with the server)")
    p.add_argument("--retries", type=int, default=4, help="retries per file for network errors (default: %(default)s)")
    p.add_argument("--backoff", type=float, default=2.0, help="first retry wait in s, doubling (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in s (default: %(default)s)")
    p.add_argument("--no-verify", action="store_true",
                   help="trust existing files listed in the manifest without hashing them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="only print the files that would be fetched")
    p.add_argument("--max-files", type=int, default=2000,
                   help="refuse selections of more spectra than this (default: %(default)s, ~12.6 GB)")

    p = sub.add_parser("list", help="list local spectra in a label range",
                       description="List local PHOENIX spectra with their labels.")
    p.add_argument("root", type=Path, help="local grid folder")
    add_label_range_arguments(p)
    p.add_argument("--check", action="store_true", help="also read every file (header/name check) and report bad ones")

    p = sub.add_parser("points", help="list the grid nodes (server paths) in a label range",
                       description="Print the server-relative path of every PHOENIX grid node in the range.")
    add_label_range_arguments(p)

    p = sub.add_parser("fixture", help="write a small fake grid in the PHOENIX format (tests, benchmarks)",
                       description="Write a fixture grid (blackbody + synthetic lines, NOT PHOENIX models) in the "
                       "exact PHOENIX file format and layout. Unset label options default to a small grid "
                       "(5000-6000 K, log g 4-5, [Fe/H] -1..0).")
    p.add_argument("dest", type=Path, help="destination folder (a fake HiResFITS root)")
    add_label_range_arguments(p)
    p.add_argument("--n-pix", type=int, default=20000,
                   help=f"pixels per spectrum (default %(default)s; {PHOENIX_NPIX} = full size)")
    p.add_argument("--wmin", type=float, default=3000.0, help="first wavelength, A (default %(default)s)")
    p.add_argument("--wmax", type=float, default=10000.0, help="last wavelength, A (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 some files failed, 2 usage error)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        ranges = label_ranges_from_args(args)
        if args.command == "points":
            for p in grid_points(**ranges):
                print(relative_path(p["teff"], p["logg"], p["feh"], p["alpha_fe"]))
            return 0
        if args.command == "list":
            files = list_grid(args.root, **ranges)
            for f in files:
                lab = parse_filename(f.name)
                print(f"{lab['teff']:7.0f} {lab['logg']:5.2f} {lab['feh']:+5.1f} {lab['alpha_fe']:+5.2f}  {f}")
            print(f"{len(files)} spectra", file=sys.stderr)
            if args.check:
                spectra = iter_spectra(args.root, **ranges)
                for _ in spectra:
                    pass
                for path, reason in spectra.bad:
                    print(f"BAD {reason}", file=sys.stderr)
                return 1 if spectra.bad else 0
            return 0
        if args.command == "fixture":
            kw = {k: v for k, v in ranges.items() if v is not None or k == "alpha_fe"}  # unset -> small default grid
            paths = write_fixture_grid(args.dest, n_pix=args.n_pix, wmin=args.wmin, wmax=args.wmax, progress=True, **kw)
            print(f"wrote {len(paths)} fixture spectra and {WAVE_FILENAME} under {args.dest}")
            return 0
        if args.command == "download":
            pts = grid_points(**ranges)
            if args.dry_run:
                print(WAVE_FILENAME)
                for p in pts:
                    print(relative_path(p["teff"], p["logg"], p["feh"], p["alpha_fe"]))
                print(f"{len(pts)} spectra (~{len(pts) * 6.3:.0f} MB) + {WAVE_FILENAME} (12.6 MB)", file=sys.stderr)
                return 0
            if len(pts) > args.max_files:
                print(f"error: the selection has {len(pts)} spectra (~{len(pts) * 6.3 / 1000:.1f} GB); narrow "
                      f"--teff/--logg/--feh/--alpha or raise --max-files", file=sys.stderr)
                return 2
            print(f"downloading {len(pts)} PHOENIX spectra (~{len(pts) * 6.3:.0f} MB) to {args.dest}", file=sys.stderr)
            report = download_grid(
                args.dest, points=pts, base_url=args.base_url, workers=args.workers, progress=not args.no_progress,
                verify=not args.no_verify, retries=args.retries, backoff=args.backoff, timeout=args.timeout,
            )
            print(report.summary(), file=sys.stderr)
            return 0 if report.ok else 1
    except PhoenixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover


