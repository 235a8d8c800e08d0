"""Optional dependencies (install extras) and the one-line message when one is missing.

The core install fits spectra with the emcee sampler on Dask; training, the batched sampler and
GPUs need ``[torch]``, the Spark runner ``[spark]``, figures and ArviZ/corner output ``[plots]``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: import name -> the extra that provides it
EXTRAS = {"torch": "torch", "pyspark": "spark", "pyarrow": "spark", "matplotlib": "plots", "arviz": "plots",
          "corner": "plots"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` saying which extra ``feature`` needs."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, top)
        raise MissingExtraError(f"{feature} needs {top}, which is not installed: "
                                f"pip install 'gsn-dask[{extra}]'") from exc


__all__ = ["EXTRAS", "MissingExtraError", "require"]
