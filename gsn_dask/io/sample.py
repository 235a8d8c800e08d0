"""The LAMOST LRS sample shipped inside the package, and :func:`read_lamost` (files -> in-memory cube).

The sample (``gsn_dask/data/lamost``, 2.3 MB, MIT-licensed; see its README) holds 49 DR1 spectra
whose LASP catalogue row is the same observation and has ``snrg > 30``, with those LASP labels,
plus one DR6 and one DR7 file. ``read_lamost()`` with no argument reads it.
"""
from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ..cube import open_spectra
from .ingest import LabelTable, find_spectra_files, ingest

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "lamost"


def sample_dir() -> Path:
    """Folder of the shipped LAMOST sample (FITS files, LASP labels csv, licences)."""
    if not SAMPLE_DIR.is_dir():
        raise FileNotFoundError(f"the LAMOST sample is missing from this installation ({SAMPLE_DIR})")
    return SAMPLE_DIR


def sample_files() -> list[Path]:
    """The sample's FITS files (51: 49 DR1, one DR6, one DR7), sorted."""
    files, _ = find_spectra_files([sample_dir()], recursive=True)
    return files


def sample_labels() -> Path:
    """The LASP labels (csv) of the sample's DR1 spectra."""
    return sample_dir() / "dr1_labels_lasp.csv"


def read_lamost(
    paths: str | Path | Sequence[str | Path] | None = None,
    *,
    labels: str | Path | LabelTable | None = None,
    recursive: bool = True,
    wavelength: np.ndarray | None = None,
) -> xr.Dataset:
    """Read LAMOST LRS FITS files (files and/or folders) into an in-memory spectra cube.

    With no ``paths``: the shipped sample, with its LASP labels as ``label_*`` (unless
    ``labels`` is given). The result is what ``gsn-dask ingest`` writes (raw flux on LAMOST's
    vacuum log-lambda grid, ``star`` ids, ``snr``, ``rv_catalog``, reference labels), loaded
    into memory. Files that cannot be read are skipped with a warning naming them and why;
    raises ``FileNotFoundError`` if none can be read.
    """
    if paths is None:
        paths = [sample_dir()]
        labels = sample_labels() if labels is None else labels
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    with tempfile.TemporaryDirectory(prefix="gsn-dask-read-") as tmp:
        out = Path(tmp) / "cube.zarr"
        report = ingest(list(paths), out, labels=labels, recursive=recursive, n_workers=0,
                        wavelength=wavelength, progress=False)
        if report.n_ingested == 0:
            raise FileNotFoundError(f"no readable LAMOST LRS spectrum in {[str(p) for p in paths]}")
        if len(report.rejects):
            lines = [f"{r.file}: {r.reason}" for r in report.rejects.itertuples()]
            warnings.warn(f"read_lamost skipped {len(lines)} file(s):\n  " + "\n  ".join(lines), stacklevel=2)
        with open_spectra(out) as ds:
            cube = ds.load()
    return cube


__all__ = ["SAMPLE_DIR", "read_lamost", "sample_dir", "sample_files", "sample_labels"]
