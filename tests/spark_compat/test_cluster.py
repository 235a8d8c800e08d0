"""A real Spark standalone cluster (master + one worker on 127.0.0.1, started from the pyspark
installation with ``bin/spark-class``), a fit submitted with ``spark-submit spark_compat/submit.py``,
numbers checked against the serial fit; the JVMs are always stopped in teardown."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.spark,
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),  # pyspark's own pandas 3 calls
]

REPO = Path(__file__).resolve().parents[2]
SEED = 11  # = conftest.SEED, the seed of serial_reference


def _spark_home() -> Path:
    pyspark = pytest.importorskip("pyspark")
    return Path(pyspark.__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "SPARK_HOME": str(_spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOCAL_DIRS": str(tmp / "local"),
        "SPARK_LOG_DIR": str(tmp / "logs"),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_DAEMON_MEMORY": "512m",
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    })
    return env


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    fh = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc._log_fh = fh  # type: ignore[attr-defined]
    return proc


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"{' '.join(proc.args[:3])}... did not report {text!r} in {timeout} s:\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the process group (spark-class execs java in it), then kill what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    proc._log_fh.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """``spark://127.0.0.1:PORT`` with one worker (2 cores, 1g); stopped (JVMs killed) afterwards."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime")
    tmp = tmp_path_factory.mktemp("spark_cluster")
    for d in ("local", "logs", "work"):
        (tmp / d).mkdir()
    env = _env(tmp)
    spark_class = str(_spark_home() / "bin" / "spark-class")
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    try:
        master = _start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                         "--port", str(port), "--webui-port", str(_free_port())], tmp / "master.log", env)
        procs.append(master)
        _wait_for(tmp / "master.log", "I have been elected leader", master, 90)
        worker = _start([spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                         "--cores", "2", "--memory", "1g", "--webui-port", str(_free_port()),
                         "--work-dir", str(tmp / "work")], tmp / "worker.log", env)
        procs.append(worker)
        _wait_for(tmp / "worker.log", "Successfully registered with master", worker, 90)
        yield {"url": url, "env": env, "tmp": tmp}
    finally:
        for p in reversed(procs):
            _stop(p)


def test_standalone_cluster_fit(standalone_cluster, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config,
                                serial_reference):
    from gsn_dask.cube import open_results

    out = tmp_path / "res.zarr"
    cmd = [
        str(_spark_home() / "bin" / "spark-submit"),
        "--master", standalone_cluster["url"],
        "--conf", "spark.ui.enabled=false",
        "--driver-memory", "1g",
        "--executor-memory", "1g",
        "--total-executor-cores", "2",
        str(REPO / "spark_compat" / "submit.py"),
        "fit", str(tiny_cube_path), "--model", str(tiny_model_dir), "--out", str(out),
        "--seed", str(SEED), "--config", json.dumps(tiny_fit_config.to_dict()), "--no-progress",
        "--results-parquet", str(tmp_path / "res_pq"),
    ]
    proc = subprocess.run(cmd, env=standalone_cluster["env"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "27 stars in 7 chunks" in proc.stdout  # 4 cube chunks split for the 2 cores
    res = open_results(out).load()
    assert res.attrs["engine"] == "spark"
    assert res.attrs["spark_master"] == standalone_cluster["url"]
    assert [str(s) for s in res["star"].values] == [str(s) for s in serial_reference["star"].values]
    for name in ("median", "p16", "p84", "map", "rv", "flag"):
        np.testing.assert_array_equal(np.asarray(res[name].values), np.asarray(serial_reference[name].values),
                                      err_msg=name)
    assert np.asarray(res["chunk_done"].values).tolist() == [1] * 7
    # the executors ran on the worker (its work dir has the app's executor logs)
    assert any(standalone_cluster["tmp"].joinpath("work").glob("app-*/*/stderr"))
    assert (tmp_path / "res_pq" / "_SUCCESS").exists()
