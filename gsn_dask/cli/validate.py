"""``gsn-dask validate``: compare a results cube with reference labels (table + figures)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = """\
Compare fitted labels (a results cube written by `gsn-dask fit`) with reference labels and
write a report: bias (median of ours - reference), scatter (std and 1.4826 x MAD) and outlier
fraction per label in S/N bins, posterior calibration (fraction of reference values inside
[p16, p84], robust std of z = diff / sigma_post), the same by stellar class of the reference
(hot, F/G dwarfs, K/M dwarfs, giants: where two catalogues' scales part), the scatter left after
a straight-line scale transfer to the reference (cross-validated), figures (one-to-one with
residual histograms, Kiel diagram, residuals vs S/N, z distributions; PNG and PDF), CSV/ECSV
tables and report.md.

The reference is a spectra cube (zarr, its label_<name> variables, matched by star id), another
results cube (its posterior medians), or a table (CSV, ECSV, FITS, parquet, ...) with one column
per label. Label columns are detected from common names (teff/Teff/TEFF, logg/LOGG,
feh/[Fe/H]/FE_H/M_H, alpha_fe/ALPHA_M/[alpha/Fe]; uncertainties <col>_err, e_<col>, ...)
or given with --columns. Rows are matched by an id column (results `star` == --id-column) or
by sky position (nearest within --radius-arcsec; needs --cube, as results carry no ra/dec).
S/N comes from --cube (its `snr`), else from the reference (snr, snrg, SNR, ...).
"""

EPILOG = """\
examples:
  gsn-dask validate results.zarr --cube lamost.zarr --out report/
      (reference = the label_* variables of the fitted cube itself)
  gsn-dask validate results.zarr --reference dr1_labels_lasp.csv --cube lamost.zarr --match sky
  gsn-dask validate results.zarr --reference allStar.fits --cube lamost.zarr --match sky \\
      --columns teff=TEFF,logg=LOGG,feh=FE_H,alpha_fe=ALPHA_M --snr-bins 10 30 100 --good-only
  gsn-dask validate results.zarr --reference labels.ecsv --id-column obsid --cube lamost.zarr
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="compare fitted labels with reference labels (tables, figures)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", type=Path, help="results cube (zarr) from `gsn-dask fit`")
    p.add_argument("--reference", "-r", type=Path, default=None,
                   help="reference labels: spectra/results cube (zarr) or table (.csv .ecsv .fits .parquet ...); "
                        "default: the label_* variables of --cube")
    p.add_argument("--cube", "-c", type=Path, default=None,
                   help="the spectra cube that was fitted: S/N and ra/dec (for --match sky) come from it")
    p.add_argument("--out", "-o", type=Path, default=Path("validation"), help="output folder (default: %(default)s)")
    p.add_argument("--match", choices=("auto", "id", "sky"), default="auto",
                   help="cross-match by star id, by sky position, or auto: id if any id matches, else sky "
                        "(default: %(default)s)")
    p.add_argument("--id-column", default=None,
                   help="reference column holding the results' star ids (default: auto, e.g. star/obsid/id)")
    p.add_argument("--radius-arcsec", type=float, default=3.0, help="sky match radius (default: %(default)s)")
    p.add_argument("--columns", action="append", default=None, metavar="NAME=COL[,NAME=COL...]",
                   help="reference column names: labels (teff=TEFF), uncertainties (teff_err=TEFF_ERR), "
                        "id, ra, dec, snr; overrides auto-detection; may be repeated")
    p.add_argument("--labels", nargs="+", default=None, help="labels to compare (default: all in both)")
    p.add_argument("--snr-bins", nargs="*", type=float, default=[10.0, 30.0, 100.0], metavar="EDGE",
                   help="S/N bin edges (default: 10 30 100 -> <10, 10-30, 30-100, >100; plus 'all')")
    p.add_argument("--good-only", action="store_true",
                   help="use only stars with flag == 0 (default: all fitted stars, i.e. without NOT_FITTED)")
    p.add_argument("--thresholds", default=None, metavar="NAME=VALUE[,...]",
                   help="outlier thresholds on |ours - ref| (default: teff=500,logg=0.5,feh=0.3,alpha_fe=0.2)")
    p.add_argument("--estimate", choices=("median", "map"), default="median",
                   help="point estimate compared with the reference (default: %(default)s)")
    p.add_argument("--no-ref-errors", action="store_true",
                   help="ignore reference uncertainties in the calibration (z_tot)")
    p.add_argument("--hdu", default=None, help="FITS extension of a FITS reference table (number or name)")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], metavar="FMT",
                   help="figure file formats (default: png pdf)")
    p.add_argument("--no-figures", action="store_true", help="write tables and report.md only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cube import open_results, open_spectra
    from ..validate import parse_mapping, read_reference, validate, write_report

    results = open_results(args.results)
    cube = open_spectra(args.cube) if args.cube is not None else None
    if args.reference is not None:
        hdu = int(args.hdu) if args.hdu is not None and str(args.hdu).isdigit() else args.hdu
        reference = read_reference(args.reference, hdu=hdu)
    elif cube is not None:
        reference = cube
    else:
        raise ValueError("give --reference TABLE_OR_CUBE, or --cube SPECTRA_CUBE with label_* variables")
    thresholds = {k: float(v) for k, v in parse_mapping(args.thresholds).items()}
    report = validate(
        results,
        reference,
        labels=args.labels,
        cube=cube,
        match=args.match,
        id_column=args.id_column,
        columns=parse_mapping(args.columns),
        radius_arcsec=args.radius_arcsec,
        snr_bins=args.snr_bins,
        good_only=args.good_only,
        thresholds=thresholds or None,
        estimate=args.estimate,
        use_ref_errors=not args.no_ref_errors,
    )
    s = report.settings
    how = f"id column {s['id_column']!r}" if s["match"] == "id" else f"sky, radius {s['radius_arcsec']:g} arcsec"
    print(f"matched {s['n_matched']} of {s['n_results']} result stars to {s['n_reference']} reference rows "
          f"({how}); {s['n_selected']} selected; S/N from {s['snr_source']}")
    print(f"reference columns: {json.dumps(s['columns'])}")
    print()
    print(report.table())
    paths = write_report(report, args.out, figures=not args.no_figures, formats=tuple(args.formats))
    print()
    print(f"wrote {len(paths)} files to {args.out}/ (report.md, stats.csv/.ecsv, calibration.csv/.ecsv, "
          f"matched.csv{', figures' if not args.no_figures else ''})")
    sys.stdout.flush()
    return 0
