"""gsn-dask: stellar labels with full posteriors from a Generative Spectrum Network.

The public API (imported lazily, so ``import gsn_dask`` is fast and needs neither torch nor
Spark)::

    import gsn_dask as gd
    cube = gd.read_lamost()                 # the shipped LAMOST sample -> in-memory cube
    model = gd.load_model()                 # the shipped MILES GSN
    res = gd.fit(cube.isel(star=slice(0, 8)), model)
    report = gd.validate(res, cube)

``fit_store`` runs a whole zarr cube on Dask (``gsn-dask fit``); ``open_spectra`` /
``open_results`` open stores; ``FitConfig`` holds the fit settings. Stages, one module each:
``io`` (ingest) -> ``grid`` (training cubes) -> ``emulator`` (the GSN) -> ``fit`` (posterior per
spectrum) run by ``pipeline`` (Dask) or ``spark_compat`` -> ``validate``.
"""
from __future__ import annotations

import importlib
import types
from importlib.metadata import PackageNotFoundError, version as _version
from typing import Any

try:
    __version__ = _version("gsn-dask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

#: public name -> module that defines it (imported on first use)
_API = {
    "FitConfig": "gsn_dask.fit.config",
    "ConfigError": "gsn_dask.fit.config",
    "load_model": "gsn_dask.api",
    "fit_store": "gsn_dask.api",
    "read_lamost": "gsn_dask.io.sample",
    "open_spectra": "gsn_dask.cube",
    "open_results": "gsn_dask.cube",
    "validate": "gsn_dask.validate",
    "diagnose": "gsn_dask.diagnose",
    "best_fit": "gsn_dask.diagnose",
    "adapt_to_survey": "gsn_dask.survey_error",
    "with_label_prior": "gsn_dask.label_prior",
    "fix_label": "gsn_dask.emulator",
    "label_systematics": "gsn_dask.api",
    "simulate": "gsn_dask.simulate",
}

__all__ = ["__version__", "fit", *_API]


class _FitPackage(types.ModuleType):
    """``gsn_dask.fit`` is both the fitting subpackage and the public function
    :func:`gsn_dask.api.fit`: calling the module fits spectra (``gd.fit(cube, model)``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .api import fit as _fit

        return _fit(*args, **kwargs)


from . import fit  # noqa: E402 - the package itself is cheap (its modules load on use)

fit.__class__ = _FitPackage


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gsn_dask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
