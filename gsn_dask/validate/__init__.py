"""Validation of fitted labels against reference labels: cross-match, bias/scatter
tables in S/N bins, posterior calibration, and a report (tables, figures, markdown).

The reference is either a gsn-dask cube (spectra cube ``label_<name>`` variables, or
another results cube's ``median``), matched by star id, or a catalogue table (CSV, ECSV,
FITS, parquet, ...) matched by an id column or by sky position (astropy
``SkyCoord.match_to_catalog_sky``). Results cubes carry no ``ra``/``dec``/``snr``; those
come from the spectra cube that was fitted (``cube=``), or from the reference.

Conventions: ``diff = ours - reference``; ``bias`` = median(diff); ``std`` = standard
deviation of diff; ``mad_std`` = 1.4826 x median absolute deviation of diff; the outlier
fraction counts ``|diff| > threshold`` (teff 500 K, logg 0.5 dex, feh 0.3 dex, alpha_fe
0.2 dex by default). Calibration: ``sigma_post = (p84 - p16) / 2``, ``z = diff /
sigma_post`` and, where the reference has uncertainties, ``z_tot = diff /
sqrt(sigma_post^2 + sigma_ref^2)``; for a calibrated posterior ``frac_in_68`` (reference
inside [p16, p84]) is about 0.68 and the robust std of z is about 1.

Modules: ``reference`` (read a reference, find its columns, canonical ids), ``match``
(cross-match by id or sky), ``stats`` (bias/scatter/calibration tables), ``compare``
(:func:`validate`), ``report`` (:class:`ValidationReport`, text/markdown tables, files).
Figures are drawn by :mod:`gsn_dask.plots` from the matched dataset.
"""
from __future__ import annotations

import sys
import types
from typing import Any

from .compare import validate
from .match import DEFAULT_RADIUS_ARCSEC, CrossMatch, cross_match, match_by_id, match_by_sky
from .reference import (
    ID_ALIASES,
    LABEL_ALIASES,
    MISSING_SENTINEL,
    canonical_ids,
    dataset_to_frame,
    detect_columns,
    id_candidates,
    parse_mapping,
    read_reference,
    table_to_frame,
)
from .report import ValidationReport, format_stats, report_markdown, write_report
from .stats import (
    ALL_BIN,
    DEFAULT_SNR_BINS,
    DEFAULT_THRESHOLDS,
    MAD_TO_STD,
    MAX_BOOT_OBJECTS,
    STELLAR_CLASSES,
    assign_snr_bins,
    bootstrap_errors,
    class_stats,
    compute_stats,
    robust_std,
    scale_stats,
    scale_transfer,
    snr_bin_names,
    stellar_classes,
)

__all__ = [
    "ALL_BIN",
    "DEFAULT_RADIUS_ARCSEC",
    "DEFAULT_SNR_BINS",
    "DEFAULT_THRESHOLDS",
    "ID_ALIASES",
    "LABEL_ALIASES",
    "MAD_TO_STD",
    "MAX_BOOT_OBJECTS",
    "MISSING_SENTINEL",
    "STELLAR_CLASSES",
    "CrossMatch",
    "ValidationReport",
    "assign_snr_bins",
    "bootstrap_errors",
    "canonical_ids",
    "class_stats",
    "compute_stats",
    "cross_match",
    "dataset_to_frame",
    "detect_columns",
    "format_stats",
    "id_candidates",
    "match_by_id",
    "match_by_sky",
    "parse_mapping",
    "read_reference",
    "report_markdown",
    "robust_std",
    "scale_stats",
    "scale_transfer",
    "snr_bin_names",
    "stellar_classes",
    "table_to_frame",
    "validate",
    "write_report",
]


class _ValidatePackage(types.ModuleType):
    """``gsn_dask.validate`` is both this package and the public function :func:`validate`
    (``gd.validate(results, reference)``): Python binds the package to ``gsn_dask.validate`` once
    it is imported, so the package itself calls :func:`validate`."""

    def __call__(self, *args: Any, **kwargs: Any) -> ValidationReport:
        return validate(*args, **kwargs)


sys.modules[__name__].__class__ = _ValidatePackage
