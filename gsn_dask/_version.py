"""The package version, in a leaf module: modules of every layer import it from here, not from the
package top (whose ``__init__`` is the public API facade and imports upper layers)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gsn-dask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
