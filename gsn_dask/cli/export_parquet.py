"""``gsn-dask export-parquet CUBE --out DIR``: a spectra cube (zarr) as Parquet, one row per star."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-parquet",
        help="export a spectra cube to Parquet (one row per star) for Spark/warehouses",
        description=(
            "Write a spectra cube as a directory of Parquet files, one per zarr chunk, one row per "
            "star: index, star, source, ra, dec, snr, rv_catalog, label_*, and flux / ivar as "
            "list<float32>. The wavelength grid (vacuum Angstrom, float64) and the cube attrs are "
            "stored in the Parquet key-value metadata ('gsn_dask'). Input of "
            "`python -m spark_compat fit --parquet`."
        ),
    )
    p.add_argument("cube", help="spectra cube (zarr directory)")
    p.add_argument("--out", required=True, help="output directory (part-NNNNN.parquet files)")
    p.add_argument("--rows-per-file", type=int, default=None,
                   help="stars per Parquet file (default: the cube's zarr chunk size)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..extras import require

    require("pyarrow", "gsn-dask export-parquet")
    from ..parquet_export import export_parquet, parquet_metadata

    out = export_parquet(
        args.cube,
        args.out,
        rows_per_file=args.rows_per_file,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    meta = parquet_metadata(out)
    n_files = len([p for p in out.glob("*.parquet")])
    print(f"wrote {meta['n_star']} stars x {meta['wavelength'].size} px to {out} ({n_files} files)")
    return 0
