"""Fixtures of the Spark runner tests: one local SparkSession per test module and the
reference fit of the shared tiny cube (``tests/conftest.py``) by the Dask runner's serial engine."""
from __future__ import annotations

import os
import sys

import pytest

#: run seed of every Spark test fit
SEED = 11


def spark_env() -> None:
    """Spark's environment for tests: loopback only, executors on this interpreter."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="module")
def spark():
    """One local SparkSession per test module: 2 cores, 2 attempts per task (``local[2,2]``),
    no UI; stopped after the module."""
    pytest.importorskip("pyspark")
    spark_env()
    from spark_compat.session import build_session

    session = build_session("local[2,2]", app_name="gsn-dask-tests", driver_memory="1g",
                            conf={"spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def serial_store(tiny_cube_path, tiny_model_dir, tiny_fit_config, tmp_path_factory):
    """Path of the results store of the tiny cube fitted by
    ``gsn_dask.pipeline.run_fit(engine="serial")``, seed ``SEED`` (do not modify it)."""
    from gsn_dask.pipeline import run_fit

    out = tmp_path_factory.mktemp("serial_ref") / "res.zarr"
    run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial", progress=False)
    return out


@pytest.fixture(scope="session")
def serial_reference(serial_store):
    """The serial runner's results (:func:`serial_store`), loaded in memory."""
    from gsn_dask.results_store import open_store

    return open_store(serial_store).load()
