"""``gsn-dask ingest``: LAMOST LRS FITS files -> spectra cube (zarr)."""
from __future__ import annotations

import argparse
import sys

# Defaults repeated here (checked equal by tests/io/test_ingest.py) so that building the parser
# does not import astropy/xarray: `gsn-dask --help` stays fast.
DEFAULT_CHUNK_SIZE = 256  # gsn_dask.cube.DEFAULT_CHUNK_SIZE
IN_PROCESS_BELOW = 1000  # gsn_dask.io.ingest.IN_PROCESS_BELOW
DEFAULT_MIN_COVERAGE = 0.5  # gsn_dask.io.lamost.DEFAULT_MIN_COVERAGE

DESCRIPTION = """\
Read LAMOST low-resolution (LRS) spectra and write them as one spectra cube (zarr).

Input: FITS files and/or directories (*.fits, *.fits.gz, *.fit, *.fits.bz2; add --recursive
to descend). Both published layouts are read: the primary image (DR1-DR7; row meaning from
the EXTEN0 card, wavelength from the header's log-linear solution) and the binary table
(DR8+; FLUX, IVAR, WAVELENGTH or LOGLAM, ANDMASK, ORMASK columns).

Every spectrum is put on the vacuum log-lambda grid 10**(3.5682 + k*1e-4) A, 3700-9100 A
(3909 px, LAMOST's own): pixels are copied exactly where the file's grid coincides with it,
otherwise rebinned flux-conservingly. ivar = 0 marks ANDMASK, non-finite, ivar <= 0 and
uncovered pixels. Star id: OBSID, or <release>-<lmjd>-<planid>-<spid>-<fiberid> from the
file name when the header has no OBSID (DR1), e.g. dr1-55862-B6212-06-003.
snr = g-band S/N (SN_G/SNRG); rv_catalog = Z*c (km/s).

Bad files never stop the run: unreadable, truncated, not FITS, not LAMOST LRS, MRS
(medium-resolution) files, spectra without good pixels, wrong wavelength coverage and
duplicate star ids (the highest-snr copy is kept) are listed with a reason in
CUBE.rejects.csv next to the cube, and summarised at the end.
"""

EPILOG = """\
examples:
  gsn-dask ingest /data/lamost/dr1 --out dr1.zarr --labels dr1_labels_lasp.csv
  gsn-dask ingest /data/lamost --recursive --out all.zarr --workers 8
  gsn-dask ingest new/*.fits.gz --out all.zarr --append --scheduler tcp://10.0.0.1:8786
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="LAMOST LRS FITS files -> spectra cube (zarr)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="FITS files or directories of them")
    p.add_argument("-o", "--out", required=True, metavar="CUBE", help="output spectra cube (zarr directory)")
    p.add_argument(
        "--labels",
        metavar="CSV",
        help="reference labels table (columns teff, logg, feh[, alpha_fe] and obsid and/or filename); "
        "matched strictly (lmjd, planid, spid, fiberid must agree when the table has them); "
        "stored as label_<name>, NaN when unmatched",
    )
    p.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="N",
        help=f"stars per zarr chunk (default {DEFAULT_CHUNK_SIZE}); the wavelength axis is never chunked",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add new stars to an existing cube (not rewritten); "
                      "stars already in it are rejected as duplicates")
    mode.add_argument("--overwrite", action="store_true", help="replace CUBE if it exists")
    p.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="Dask LocalCluster worker processes (1 thread each); 0 = read in this process. "
        f"Default: in-process below {IN_PROCESS_BELOW} files (one process reads ~1000 files/s; "
        "a cluster takes seconds to start), else one worker per core (at most 8)",
    )
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="use an existing Dask scheduler (e.g. tcp://host:8786); its workers must see PATHS "
                   "under the same names and have gsn-dask installed")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-directories")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="files read per Dask task (default: automatic, 16-256)")
    p.add_argument(
        "--min-coverage", type=float, default=DEFAULT_MIN_COVERAGE, metavar="F",
        help=f"reject files covering less than this fraction of the grid (default {DEFAULT_MIN_COVERAGE})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.ingest import ingest

    report = ingest(
        args.paths,
        args.out,
        labels=args.labels,
        chunk_size=args.chunk_size,
        append=args.append,
        overwrite=args.overwrite,
        n_workers=args.workers,
        scheduler=args.scheduler,
        recursive=args.recursive,
        batch_size=args.batch_size,
        min_coverage=args.min_coverage,
        progress=not args.no_progress,
    )
    print(report.summary())
    if report.n_ingested == 0:
        print("gsn-dask ingest: no spectrum could be ingested (see the rejects table)", file=sys.stderr)
        return 1
    return 0
