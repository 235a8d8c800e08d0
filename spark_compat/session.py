"""A SparkSession with defaults that run anywhere (laptop, CI, standalone cluster).

* master ``local[*]`` unless given (``--master`` / ``spark-submit --master`` win);
* ``PYSPARK_PYTHON`` (and the driver's) set to the running interpreter when unset, so executors
  import the same environment (gsn_dask, numpy, ...);
* ``SPARK_LOCAL_IP`` honoured, defaulting to ``127.0.0.1`` for a local master (no DNS lookups,
  no firewall prompts, works without a network);
* Arrow on for ``mapInPandas``; the web UI off unless asked for; console progress bars off;
* one BLAS/OpenMP thread per task (``spark.task.cpus`` threads), set in the executors' env.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

DEFAULT_MASTER = "local[*]"
DEFAULT_DRIVER_MEMORY = "2g"
DEFAULT_APP_NAME = "gsn-dask-fit"

#: environment variables that cap native thread pools in executor Python workers
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def is_local_master(master: str | None) -> bool:
    """True for ``local``, ``local[N]``, ``local[*]``, ``local[N,F]`` (or no master at all)."""
    return master is None or master.strip().startswith("local")


def quiet_pyspark_warnings() -> None:
    """Silence pyspark's 'pandas >= 3 not fully supported' FutureWarning (we only use
    numpy-backed columns and list<float32> through Arrow, which work)."""
    warnings.filterwarnings("ignore", message=".*PySpark does not yet fully support pandas.*", category=FutureWarning)


def prepare_environment(master: str | None = None) -> dict[str, str]:
    """Set the process environment that Spark reads at JVM/worker start; returns what was set.

    ``PYSPARK_PYTHON``/``PYSPARK_DRIVER_PYTHON`` -> ``sys.executable`` if unset;
    ``SPARK_LOCAL_IP`` -> ``127.0.0.1`` if unset and the master is local.
    """
    changed: dict[str, str] = {}
    for var in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        if not os.environ.get(var):
            os.environ[var] = changed[var] = sys.executable
    if is_local_master(master) and not os.environ.get("SPARK_LOCAL_IP"):
        os.environ["SPARK_LOCAL_IP"] = changed["SPARK_LOCAL_IP"] = "127.0.0.1"
    quiet_pyspark_warnings()
    return changed


def spark_conf(
    *,
    ui: bool = False,
    driver_memory: str | None = DEFAULT_DRIVER_MEMORY,
    threads_per_task: int = 1,
    arrow_batch_rows: int = 4096,
) -> dict[str, str]:
    """The default Spark configuration (strings) of :func:`build_session`."""
    conf = {
        "spark.ui.enabled": "true" if ui else "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(int(arrow_batch_rows)),
        # keep Python workers alive between tasks: the model is loaded once per worker
        "spark.python.worker.reuse": "true",
        "spark.sql.shuffle.partitions": "8",
        "spark.task.cpus": str(int(threads_per_task)),
        # a fit task can run for many minutes without output: do not treat it as lost
        "spark.network.timeout": "600s",
        "spark.executor.heartbeatInterval": "30s",
    }
    for var in THREAD_ENV_VARS:
        conf[f"spark.executorEnv.{var}"] = str(int(threads_per_task))
    if driver_memory:
        conf["spark.driver.memory"] = str(driver_memory)
    return conf


def build_session(
    master: str | None = None,
    *,
    app_name: str = DEFAULT_APP_NAME,
    ui: bool = False,
    driver_memory: str | None = DEFAULT_DRIVER_MEMORY,
    threads_per_task: int = 1,
    conf: Mapping[str, Any] | None = None,
    log_level: str = "WARN",
) -> SparkSession:
    """Get or create a SparkSession with the defaults above.

    ``master=None`` keeps a master already given by ``spark-submit`` (``spark.master`` in the
    launcher's conf) and otherwise uses ``local[*]``. ``conf`` entries override the defaults.
    ``driver_memory`` only applies when this call starts the JVM (not under spark-submit,
    whose ``--driver-memory`` rules).
    """
    launched_by_submit = bool(os.environ.get("SPARK_SUBMIT_OPTS") or os.environ.get("PYSPARK_GATEWAY_PORT"))
    effective_master = master
    if effective_master is None and not launched_by_submit:
        effective_master = DEFAULT_MASTER
    prepare_environment(effective_master)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if effective_master:
        builder = builder.master(effective_master)
    # under spark-submit the driver JVM already runs: its --driver-memory rules
    settings = spark_conf(ui=ui, driver_memory=None if launched_by_submit else driver_memory,
                          threads_per_task=threads_per_task)
    if os.environ.get("PYSPARK_PYTHON"):
        settings["spark.pyspark.python"] = os.environ["PYSPARK_PYTHON"]
    if conf:
        settings.update({str(k): str(v) for k, v in conf.items()})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    try:
        spark.sparkContext.setLogLevel(log_level)
    except Exception:  # noqa: BLE001 - log level is cosmetic
        pass
    log.info("Spark %s session on %s (default parallelism %d)", spark.version, spark.sparkContext.master,
             spark.sparkContext.defaultParallelism)
    return spark


__all__ = [
    "DEFAULT_DRIVER_MEMORY",
    "DEFAULT_MASTER",
    "build_session",
    "is_local_master",
    "prepare_environment",
    "quiet_pyspark_warnings",
    "spark_conf",
]
