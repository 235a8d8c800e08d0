"""gsn-dask: stellar labels with full posteriors from a Generative Spectrum Network.

Stages (one module each, talking only through files):
``io.lamost`` (ingest) -> ``grid`` (training cubes) -> ``emulator`` (train the GSN)
-> ``fit`` (posterior per spectrum) run by ``pipeline`` (Dask) or ``spark_compat``
-> ``validate``.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("gsn-dask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
