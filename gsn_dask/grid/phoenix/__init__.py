"""PHOENIX-ACES-AGSS-COND-2011 high-resolution synthetic spectra (Husser et al. 2013, A&A 553, A6).

One package for one source of training spectra, one module per concern:
:mod:`.names` (constants, errors, file names, grid nodes), :mod:`.files` (reading the
wavelength file and spectra, header/file-name checks), :mod:`.download` (a resumable,
checksummed downloader), :mod:`.fixtures` (small look-alike files for tests and benchmarks)
and :mod:`.cli` (``python -m gsn_dask.grid.phoenix``). Every public name is re-exported here.

Server layout (``DEFAULT_URL`` = ``https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/``)::

    HiResFITS/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits                    1-D float64, vacuum Angstrom
    HiResFITS/PHOENIX-ACES-AGSS-COND-2011/Z-0.0/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits
    HiResFITS/PHOENIX-ACES-AGSS-COND-2011/Z-1.0.Alpha=+0.40/lte05800-4.50-1.0.Alpha=+0.40.PHOENIX-...fits
    HiResFITS/PHOENIX-ACES-AGSS-COND-2011/Z+0.5/...

A local grid ``root`` is the folder that plays the part of ``HiResFITS/`` (what
:func:`download_grid` creates); readers also accept a folder above it or below it.

Spectrum files: primary HDU = 1-D float32 surface flux F_lambda in erg/s/cm^2/cm on the
pixels of the WAVE file (which has no WCS: the array *is* the wavelength), header keywords
``PHXTEFF`` (K), ``PHXLOGG`` (cgs dex), ``PHXM_H`` ([M/H], = [Fe/H] of the file name),
``PHXALPHA`` ([alpha/M]), ``PHXXI_L/M/N``, ``PHXMASS``, ``PHXREFF``, ``PHXLUM``, ``PHXMXLEN``,
``PHXBUILD``, ``PHXVER``, ``PHXEOS``, ``PHXDUST``, ``DATE``; a second HDU holds the abundance table.
File names write [Fe/H] = 0 as ``-0.0`` and add ``.Alpha=+0.40`` only when [alpha/Fe] != 0.

Run ``python -m gsn_dask.grid.phoenix --help`` for the download / list / fixture commands.
"""
from __future__ import annotations

from ...labels import LABEL_UNITS
from .cli import add_label_range_arguments, label_ranges_from_args, main
from .download import DownloadReport, Manifest, download_grid, sha256_file
from .files import (
    PhoenixSpectra,
    find_wave_file,
    iter_spectra,
    list_grid,
    phoenix_source_resolution,
    read_header_labels,
    read_spectrum,
    read_wavelength,
    sampling_resolution,
)
from .fixtures import (
    fixture_flux,
    fixture_header,
    fixture_wavelength,
    write_fixture_grid,
    write_fixture_spectrum,
    write_fixture_wavelength,
)
from .names import (
    ALPHA_FEH_RANGE,
    ALPHA_NODES,
    ALPHA_TEFF_RANGE,
    DEFAULT_URL,
    FEH_NODES,
    FILENAME_SUFFIX,
    FLUX_UNIT,
    GRID_NAME,
    LABELS,
    LOGG_NODES,
    MANIFEST_NAME,
    NODES,
    PHOENIX_NPIX,
    PHOENIX_RESOLUTION_SEGMENTS,
    SPECTRA_DIR,
    TEFF_NODES,
    WAVE_FILENAME,
    LabelRange,
    PhoenixError,
    PhoenixFileError,
    PhoenixFilenameError,
    PhoenixGridError,
    PhoenixMissingFileError,
    alpha_available,
    check_grid_point,
    format_dirname,
    format_filename,
    grid_points,
    parse_dirname,
    parse_filename,
    relative_path,
    spectrum_id,
)

__all__ = [
    "add_label_range_arguments",
    "alpha_available",
    "ALPHA_FEH_RANGE",
    "ALPHA_NODES",
    "ALPHA_TEFF_RANGE",
    "check_grid_point",
    "DEFAULT_URL",
    "download_grid",
    "DownloadReport",
    "FEH_NODES",
    "FILENAME_SUFFIX",
    "find_wave_file",
    "fixture_flux",
    "fixture_header",
    "fixture_wavelength",
    "FLUX_UNIT",
    "format_dirname",
    "format_filename",
    "GRID_NAME",
    "grid_points",
    "iter_spectra",
    "label_ranges_from_args",
    "LABEL_UNITS",
    "LabelRange",
    "LABELS",
    "list_grid",
    "LOGG_NODES",
    "main",
    "Manifest",
    "MANIFEST_NAME",
    "NODES",
    "parse_dirname",
    "parse_filename",
    "PHOENIX_NPIX",
    "PHOENIX_RESOLUTION_SEGMENTS",
    "phoenix_source_resolution",
    "PhoenixError",
    "PhoenixFileError",
    "PhoenixFilenameError",
    "PhoenixGridError",
    "PhoenixMissingFileError",
    "PhoenixSpectra",
    "read_header_labels",
    "read_spectrum",
    "read_wavelength",
    "relative_path",
    "sampling_resolution",
    "sha256_file",
    "SPECTRA_DIR",
    "spectrum_id",
    "TEFF_NODES",
    "WAVE_FILENAME",
    "write_fixture_grid",
    "write_fixture_spectrum",
    "write_fixture_wavelength",
]
