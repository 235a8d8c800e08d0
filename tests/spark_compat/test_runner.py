"""Spark runner in local mode (one SparkSession for the module): numbers equal to the serial
fit, resume, task retries, Parquet input/output, CLI."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gsn_dask.flags import Flag

SEED = 11  # = conftest.SEED, the seed of serial_reference
N_STAR = 27  # the shared tiny cube: 24 good + 3 bad stars in zarr chunks of 8
BAD = (5, 13, 22)

pytestmark = [
    pytest.mark.spark,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),  # pyspark's own pandas 3 calls
]

LABEL_VARS = ("median", "p16", "p84", "map")
STAR_VARS = ("rv", "rv_err", "chi2_reduced", "acceptance", "tau_max", "n_eff_min", "flag")


def _strs(values) -> list[str]:
    return [str(v) for v in np.asarray(values).ravel()]


def assert_same_results(got, ref) -> None:
    """Every number of ``got`` equals ``ref`` exactly (float32), same stars, same order."""
    assert _strs(got["star"].values) == _strs(ref["star"].values)
    assert _strs(got["label"].values) == _strs(ref["label"].values)
    for name in LABEL_VARS + STAR_VARS:
        np.testing.assert_array_equal(np.asarray(got[name].values), np.asarray(ref[name].values), err_msg=name)
    assert _strs(got["status"].values) == _strs(ref["status"].values)


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "spark_compat", "fit", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for opt in ("--model", "--out", "--master", "--parquet", "--results-parquet", "--resume", "--ui"):
        assert opt in out.stdout
    top = subprocess.run([sys.executable, "-m", "spark_compat", "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "fit" in top.stdout


def test_model_mismatch_refused_before_spark(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    """A model whose grid does not sit on the cube's grid is refused on the driver, clearly."""
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.emulator import ModelMismatchError
    from gsn_dask.fit.testing import toy_model
    from spark_compat.runner import fit_cube_spark

    other = toy_model(("teff", "logg", "feh"), hidden=(8, 8, 8), wavelength=log_lambda_grid(6000.0, 7000.0), n_train=50)
    other.save(tmp_path / "m")
    with pytest.raises(ModelMismatchError):
        fit_cube_spark(tiny_cube_path, tmp_path / "m", tmp_path / "r.zarr", config=tiny_fit_config, spark=object())


@pytest.mark.parametrize("sampler", ["emcee", "batched"])
@pytest.mark.parametrize("bad", [["--set", "n_walkers=6"], ["--prior", "foo=1,2"], ["--thin", "200"]])
def test_cli_config_refused_before_spark(bad, sampler, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config,
                                         capsys):
    """A config that does not fit the model: one line, exit status 1, before Spark starts or
    anything is written (the runner used to fail every task and exit 3, or write error rows)."""
    import json

    from spark_compat.__main__ import main

    out = tmp_path / "res.zarr"
    rc = main(["fit", str(tiny_cube_path), "--model", str(tiny_model_dir), "--out", str(out), "--no-progress",
               "--config", json.dumps(tiny_fit_config.to_dict()), "--sampler", sampler, *bad])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("spark_compat fit: error: FitConfig: "), err
    assert not out.exists()


@pytest.fixture(scope="module")
def spark_run(spark, tmp_path_factory, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    """One local[2] fit of the tiny cube (3 chunks), with results Parquet."""
    from spark_compat.runner import fit_cube_spark

    root = tmp_path_factory.mktemp("spark_run")
    report = fit_cube_spark(tiny_cube_path, tiny_model_dir, root / "res.zarr", config=tiny_fit_config, seed=SEED,
                            spark=spark, results_parquet=root / "res_pq", progress=False)
    return report


def test_local_fit_equals_serial(spark_run, serial_reference):
    report = spark_run
    res = report.results.load()
    assert res.attrs["engine"] == "spark"
    assert res.attrs["seed"] == SEED
    assert_same_results(res, serial_reference)
    # every chunk fitted once, summary counts add up to the stars
    # every worker busy: the cube's 4 chunks are fewer than 4 tasks x 2 cores, so 7 tasks of 4 stars
    s = report.summary
    assert report.n_chunks == 7 and report.n_skipped == 0 and report.failed_chunks == []
    assert res.attrs["chunk_size"] == 4
    assert s["chunk"].tolist() == list(range(7))
    assert (s["stop"] - s["start"]).tolist() == [4] * 6 + [3]
    assert s["error"].isna().all()
    assert int((s["n_ok"] + s["n_flagged"] + s["n_failed"]).sum()) == N_STAR
    assert np.asarray(res["chunk_done"].values).tolist() == [1] * 7
    # bad input rows are flagged, not fatal
    flag = np.asarray(res["flag"].values)
    status = _strs(res["status"].values)
    for i in BAD:
        assert flag[i] & int(Flag.NOT_FITTED), (i, flag[i])
        assert status[i] not in ("ok", "not fitted"), status[i]
    assert int(s["n_failed"].sum()) == len(BAD)
    good = [i for i in range(N_STAR) if i not in BAD]
    assert np.all(np.isfinite(np.asarray(res["median"].values)[good]))
    # the model is loaded once per Python worker (broadcast bytes, cached)
    assert set(s.groupby("pid")["model_loads"].max()) == {1}


def test_results_parquet(spark_run):
    from gsn_dask.parquet_export import parquet_metadata, read_results_parquet

    pdf = read_results_parquet(spark_run.results_parquet)
    res = spark_run.results.load()
    assert pdf["star"].tolist() == _strs(res["star"].values)
    assert pdf["index"].tolist() == list(range(N_STAR))
    for j, lab in enumerate(_strs(res["label"].values)):
        np.testing.assert_array_equal(pdf[f"median_{lab}"].to_numpy(), np.asarray(res["median"].values)[:, j])
    np.testing.assert_array_equal(pdf["flag"].to_numpy(), np.asarray(res["flag"].values))
    assert pdf["status"].tolist() == _strs(res["status"].values)
    meta = parquet_metadata(spark_run.results_parquet)
    assert meta["attrs"]["engine"] == "spark"


def test_resume_skips_done_chunks(spark, serial_store, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config,
                                  serial_reference):
    """--resume fits only chunks without a completion record, also in a store written by the
    Dask runner (same layout); an existing store is refused without --resume/--overwrite."""
    import shutil

    import zarr

    from spark_compat.runner import fit_cube_spark

    out = tmp_path / "res.zarr"
    shutil.copytree(serial_store, out)
    # chunk 1 "interrupted": rows reset, no completion record
    done = zarr.open_array(str(out / "chunk_done"), mode="r+")
    done[1] = 0
    g = zarr.open_group(str(out), mode="r+")
    g["median"][8:16] = np.nan
    with pytest.raises(FileExistsError):
        fit_cube_spark(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, spark=spark, progress=False)
    report = fit_cube_spark(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, spark=spark,
                            resume=True, progress=False)
    assert report.n_skipped == 3
    assert report.summary["chunk"].tolist() == [1]
    assert report.results.attrs["engine"] == "spark"
    assert_same_results(report.results.load(), serial_reference)
    # nothing left: a second resume fits no partition
    again = fit_cube_spark(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, spark=spark,
                           resume=True, progress=False)
    assert again.n_fitted_chunks == 0 and again.n_skipped == 4
    # a resume with another seed is refused (the store belongs to another run)
    from gsn_dask.results_store import StoreMismatchError

    with pytest.raises(StoreMismatchError):
        fit_cube_spark(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED + 1, spark=spark,
                       resume=True, progress=False)


def test_task_retry_rewrites_own_region(spark, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config,
                                        serial_reference, fault_fns):
    """A task that dies after writing (wrong) rows but before its completion record is retried by
    Spark (local[2,2]: 2 attempts) and the store ends up identical to the serial fit."""
    from spark_compat.runner import fit_cube_spark

    out = tmp_path / "res.zarr"
    dying = fault_fns.FailAfterWriteOnce(str(out), {"tiny-008": 8})  # chunk 1 of 8 stars
    report = fit_cube_spark(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, spark=spark,
                            progress=False, model_broadcast="path", chunk_size=8, fit_fn=dying)
    s = report.summary.set_index("chunk")
    assert s.loc[1, "attempt"] == 1 and s.loc[0, "attempt"] == 0
    assert_same_results(report.results.load(), serial_reference)


def test_parquet_input(spark, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, serial_reference):
    """A Parquet export of the cube fits to the same numbers (chunks rebuilt by Spark)."""
    from gsn_dask.parquet_export import export_parquet
    from spark_compat.runner import fit_cube_spark

    pq = export_parquet(tiny_cube_path, tmp_path / "cube_pq")
    report = fit_cube_spark(pq, tiny_model_dir, tmp_path / "res.zarr", config=tiny_fit_config, seed=SEED, spark=spark,
                            input_format="parquet", progress=False)
    assert report.summary["chunk"].tolist() == list(range(7))  # split for 2 cores, as with zarr input
    assert report.results.attrs["engine"] == "spark"
    assert_same_results(report.results.load(), serial_reference)


def test_cli_fit_in_process(spark, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, capsys):
    """``python -m spark_compat fit`` (in process, reusing the module's session, not stopping it)."""
    import json

    from spark_compat.__main__ import main

    out = tmp_path / "res.zarr"
    rc = main(["fit", str(tiny_cube_path), "--model", str(tiny_model_dir), "--out", str(out), "--seed", "3",
               "--config", json.dumps(tiny_fit_config.to_dict()), "--no-progress", "--results-parquet", str(tmp_path / "pq")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "27 stars in 7 chunks" in text
    assert (tmp_path / "pq" / "_SUCCESS").exists()
    assert not spark.sparkContext._jsc.sc().isStopped()
    rc = main(["fit", str(tiny_cube_path), "--model", str(tiny_model_dir), "--out", str(out), "--seed", "3",
               "--config", json.dumps(tiny_fit_config.to_dict()), "--no-progress"])
    assert rc == 1  # exists, no --resume/--overwrite: a clear error, not a traceback
    assert "exists" in capsys.readouterr().err


def test_failed_chunks_flagged_then_resumed(spark, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config,
                                            serial_reference, fault_fns):
    """A chunk whose task raises on every attempt gets rows flagged NOT_FITTED with the reason and
    is not marked done (the run goes on); --resume then fits it."""
    from spark_compat.runner import fit_cube_spark

    out = tmp_path / "res.zarr"
    broken = fault_fns.FailingFit("disk on fire")  # raises ValueError on every attempt
    report = fit_cube_spark(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, spark=spark,
                            progress=False, fit_fn=broken, chunk_size=16)
    assert report.n_chunks == 2 and report.failed_chunks == [0, 1]
    assert report.summary["attempt"].tolist() == [1, 1]  # retried once (local[2,2]), recorded on the last
    res = report.results.load()
    assert np.all(np.asarray(res["flag"].values) & int(Flag.NOT_FITTED))
    assert all(s == "error: chunk task failed: ValueError: disk on fire" for s in _strs(res["status"].values))
    assert np.asarray(res["chunk_done"].values).tolist() == [0, 0]
    again = fit_cube_spark(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, spark=spark,
                           progress=False, resume=True)
    assert again.n_skipped == 0 and again.n_fitted_chunks == 2 and again.failed_chunks == []
    assert_same_results(again.results.load(), serial_reference)  # chunking does not change the numbers


@pytest.mark.parametrize("sampler", ["emcee", "batched"])
def test_four_label_model_equals_serial(sampler, spark, tmp_path, four_label_cube_path, four_label_model_dir,
                                        tiny_fit_config):
    """A four-label model (``alpha_fe``, as the synthetic grid's models have) through Spark: the
    same numbers as the serial engine, ``alpha_fe`` among the labels."""
    if sampler == "batched":
        pytest.importorskip("torch")
    from gsn_dask.pipeline import run_fit
    from spark_compat.runner import fit_cube_spark

    import dataclasses  # 4 labels + rv: at least 10 walkers

    kw = dict(config=dataclasses.replace(tiny_fit_config, n_walkers=10), seed=SEED, sampler=sampler, progress=False)
    ref = run_fit(four_label_cube_path, four_label_model_dir, tmp_path / "serial.zarr", engine="serial",
                  chunk_size=4, **kw).load()
    got = fit_cube_spark(four_label_cube_path, four_label_model_dir, tmp_path / "spark.zarr", spark=spark,
                         chunk_size=4, **kw).results.load()
    assert _strs(got["label"].values) == ["teff", "logg", "feh", "alpha_fe"]
    if sampler == "batched":  # chi2 at the MAP is a float32 torch reduction (thread count)
        np.testing.assert_allclose(got["chi2_reduced"].values, ref["chi2_reduced"].values, rtol=1e-6)
        ref = ref.drop_vars("chi2_reduced")
        got = got.drop_vars("chi2_reduced")
        for name in LABEL_VARS + ("rv", "flag"):
            np.testing.assert_array_equal(np.asarray(got[name].values), np.asarray(ref[name].values), err_msg=name)
    else:
        assert_same_results(got, ref)
    ok = np.array(_strs(got["status"].values)) == "ok"
    assert ok.sum() == N_STAR - len(BAD) and np.all(np.isfinite(got["median"].sel(label="alpha_fe").values[ok]))
