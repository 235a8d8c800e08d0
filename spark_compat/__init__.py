"""Spark runner for gsn-dask: fit a spectra cube with the same ``fit_block`` as the Dask runner.

``python -m spark_compat fit CUBE --model MODEL_DIR --out RESULTS [--master URL]``, or
``spark-submit spark_compat/submit.py fit ...`` on a cluster. Library use::

    from spark_compat import fit_cube_spark
    report = fit_cube_spark("cube.zarr", "model", "results.zarr", master="local[*]")
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_session", "fit_cube_spark", "main"]


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import pyspark
    if name == "fit_cube_spark":
        from .runner import fit_cube_spark

        return fit_cube_spark
    if name == "build_session":
        from .session import build_session

        return build_session
    if name == "main":
        from .__main__ import main

        return main
    raise AttributeError(name)
