"""Tests of the Dask runner (gsn_dask.pipeline) with the real fit_block and a tiny real GSN.

The tiny cube (tests/conftest.py) has 27 stars in zarr chunks of 8 (24 good, 3 bad); chains
are short (``tiny_fit_config``). One serial run is the reference; every other run (Dask,
other chunking, resumed, with a killed worker, on an external cluster via the CLI) must
reproduce it exactly.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gsn_dask import model_cache
from gsn_dask import results_store as rs
from gsn_dask.cube import RESULTS_SCHEMA, open_spectra, validate_results
from gsn_dask.flags import Flag
from gsn_dask.pipeline import run_fit

from conftest import FOUR_LABELS, TINY_BAD, TINY_CHUNK, TINY_N_GOOD

N_STAR = TINY_N_GOOD + len(TINY_BAD)
NUMERIC = ["median", "p16", "p84", "map", "rv", "rv_err", "chi2_reduced", "acceptance", "tau_max", "n_eff_min", "flag"]
SEED = 7


def assert_same_results(a: xr.Dataset, b: xr.Dataset, rtol: dict[str, float] | None = None) -> None:
    """Identical star ids, numbers (bitwise, NaN == NaN, unless ``rtol`` names a variable) and statuses."""
    assert list(a["star"].values) == list(b["star"].values)
    for name in NUMERIC:
        x, y = np.asarray(a[name].values), np.asarray(b[name].values)
        if rtol and name in rtol:
            np.testing.assert_allclose(x, y, rtol=rtol[name], err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert list(a["status"].values) == list(b["status"].values)


@pytest.fixture(scope="module")
def client():
    """A 2-worker LocalCluster (processes, 1 thread each) shared by this module's Dask tests."""
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.CRITICAL)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    """The serial-engine run (cube chunking, 8 stars per task): path and loaded dataset."""
    out = tmp_path_factory.mktemp("ref") / "res.zarr"
    ds = run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial",
                 progress=False)
    return out, ds.load()


def test_serial_end_to_end(reference, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    out, ds = reference
    validate_results(ds)
    cube = open_spectra(tiny_cube_path)
    # exactly one row per input star, same order; aligns with the cube on star
    assert ds.sizes["star"] == N_STAR
    assert list(ds["star"].values) == list(cube["star"].values)
    xr.align(ds, cube, join="exact", exclude=["label", "chunk", "wavelength"])
    merged = xr.merge([ds[["median", "flag"]], cube[["snr"]]], join="exact")
    assert merged.sizes["star"] == N_STAR
    # bad stars flagged with a reason, good stars fitted
    status = rs.as_str_array(ds["status"].values)
    flag = ds["flag"].values
    for name, i in TINY_BAD.items():
        assert ds["star"].values[i] == name
        assert flag[i] & int(Flag.NOT_FITTED), name
        assert status[i] not in ("ok", "not fitted", ""), (name, status[i])
        assert np.all(np.isnan(ds["median"].values[i]))
    good = np.setdiff1d(np.arange(N_STAR), list(TINY_BAD.values()))
    assert np.all(status[good] == "ok")
    assert not np.any(flag[good] & int(Flag.NOT_FITTED))
    assert np.all(np.isfinite(ds["median"].values[good]))
    # the fitted labels are near the truth (short chains, but S/N >= 30 on a smooth model)
    truth = np.stack([cube[f"label_{n}"].values for n in ds["label"].values], axis=1)[good]
    err_teff = np.abs(ds["median"].values[good, 0] - truth[:, 0])
    assert np.median(err_teff) < 150.0, err_teff
    # every chunk done, lock gone, attrs as DESIGN.md
    assert rs.done_chunks(out).all() and rs.read_lock(out) is None
    a = ds.attrs
    assert a["schema"] == RESULTS_SCHEMA and a["engine"] == "serial" and a["seed"] == SEED
    assert a["sampler"] == "emcee" and a["chunk_size"] == TINY_CHUNK
    assert a["model_sha256"] == model_cache.get_model(tiny_model_dir).sha256 and len(a["model_sha256"]) == 64
    assert a["model_id"] and a["package_version"] and a["input_cube"] == str(Path(tiny_cube_path).resolve())
    from gsn_dask.fit.config import FitConfig

    # the stored settings are those used: "auto" arm split resolved from the cube (which records none)
    assert FitConfig.from_dict(a["fit_config"]) == tiny_fit_config.for_cube({})
    assert tiny_fit_config.arm_split_aa == "auto" and FitConfig.from_dict(a["fit_config"]).arm_split_aa is None
    s = rs.summarize(out)
    assert s["ok"] + s["flagged"] == TINY_N_GOOD and s["failed"] == len(TINY_BAD) and s["pending"] == 0


def test_dask_equals_serial_other_chunking(reference, client, tmp_path, tiny_cube_path, tiny_model_dir,
                                           tiny_fit_config):
    """Dask, 2 worker processes, 4 stars per task (7 tasks) == serial with 8 per task; the model
    is loaded once per worker (plugin), not per task."""
    before = client.run(model_cache.stats)
    info: dict = {}
    out = tmp_path / "res.zarr"
    ds = run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, client=client,
                 chunk_size=4, progress=False, info=info)
    assert_same_results(ds, reference[1])
    assert ds.attrs["engine"] == "dask" and ds.attrs["chunk_size"] == 4
    assert info["chunks_fitted"] == 7 and info["chunks_failed"] == 0 and info["n_workers"] == 2
    import zarr

    assert zarr.open_group(str(out), mode="r")["median"].chunks == (4, 3)  # output chunk = task size
    after = client.run(model_cache.stats)
    pids = {r["pid"] for r in info["task_records"]}
    assert pids <= {s["pid"] for s in after.values()}
    for addr in after:
        assert after[addr]["loads"] - before[addr]["loads"] == 1, (before, after)
    assert all(s["cached"] == [] for s in after.values())  # plugin unregistered, cache dropped
    # a different seed gives different numbers (the comparison above can fail)
    other = run_fit(tiny_cube_path, tiny_model_dir, tmp_path / "seed.zarr", config=tiny_fit_config,
                    seed=SEED + 1, engine="serial", chunk_size=16, progress=False)
    good = ds["status"].values == "ok"
    assert not np.array_equal(other["median"].values[good], ds["median"].values[good])


def test_dask_splits_a_cube_of_few_chunks(reference, client, tmp_path, tiny_cube_path, tiny_model_dir,
                                          tiny_fit_config):
    """Every worker busy: the cube's 4 chunks are fewer than 4 tasks x 2 workers, so without a
    --chunk-size the run makes 7 tasks of 4 stars (and the store's zarr chunks follow); the numbers
    do not move. The serial engine (one slot) keeps the cube's chunks."""
    import zarr

    info: dict = {}
    out = tmp_path / "res.zarr"
    ds = run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, client=client,
                 progress=False, info=info)
    assert ds.attrs["chunk_size"] == 4 and info["n_chunks"] == 7 and info["chunks_fitted"] == 7
    assert zarr.open_group(str(out), mode="r")["median"].chunks == (4, 3)
    assert len({r["pid"] for r in info["task_records"]}) == 2  # both workers fitted
    assert_same_results(ds, reference[1])
    assert reference[1].attrs["chunk_size"] == TINY_CHUNK


def test_existing_store_refused_and_overwrite(reference, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    out = tmp_path / "res.zarr"
    shutil.copytree(reference[0], out)
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial",
                progress=False)
    assert_same_results(rs.open_store(out).load(), reference[1])  # untouched
    with pytest.raises(rs.StoreMismatchError, match="seed"):
        run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED + 1, engine="serial",
                resume=True, progress=False)
    # resume of a complete store: nothing to do
    info: dict = {}
    run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial", resume=True,
            progress=False, info=info)
    assert info["chunks_fitted"] == 0 and info["chunks_skipped"] == 4
    calls = []

    def counting(block, model, **kw):
        from gsn_dask.fit.block import fit_block

        calls.append(block.sizes["star"])
        return fit_block(block, model, **kw)

    ds = run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial",
                 overwrite=True, chunk_size=9, progress=False, fit_fn=counting)
    assert calls == [9, 9, 9] and ds.attrs["chunk_size"] == 9
    assert_same_results(ds, reference[1])


def test_resume_after_interruption(reference, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    """Ctrl-C after 2 of 7 chunks; --resume fits only the 5 missing chunks (+1 whose done mark
    was lost after its rows were written) and equals the uninterrupted run."""
    from gsn_dask.fit.block import fit_block

    out = tmp_path / "res.zarr"
    calls: list[str] = []

    def interrupted(block, model, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(str(block["star"].values[0]))
        return fit_block(block, model, **kw)

    with pytest.raises(KeyboardInterrupt):
        run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial",
                chunk_size=4, progress=False, fit_fn=interrupted)
    assert rs.read_lock(out) is None  # released on the way out
    assert rs.done_chunks(out).tolist() == [True, True] + [False] * 5
    s = rs.summarize(out)
    assert s["pending"] == N_STAR - 8
    # a chunk whose rows were written but whose done mark was not (crash between the two)
    rs.mark_chunk_done(out, 1, value=0)

    calls.clear()

    def counting(block, model, **kw):
        calls.append(str(block["star"].values[0]))
        return fit_block(block, model, **kw)

    info: dict = {}
    ds = run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial",
                 resume=True, progress=False, fit_fn=counting, info=info)
    assert calls == [f"tiny-{4 * i:03d}" for i in range(1, 7)]  # chunks 1..6, not chunk 0
    assert info["chunks_fitted"] == 6 and info["chunks_skipped"] == 1
    assert ds.attrs["chunk_size"] == 4  # the store's chunking is kept
    assert_same_results(ds, reference[1])


def test_resume_on_dask_fits_only_missing(reference, client, tmp_path, tiny_cube_path, tiny_model_dir,
                                          tiny_fit_config):
    """A complete store with two chunks un-marked (and their rows wiped) resumed on Dask."""
    out = tmp_path / "res.zarr"
    shutil.copytree(reference[0], out)
    for i in (1, 3):
        a, b = rs.chunk_bounds(N_STAR, TINY_CHUNK)[i]
        stars = reference[1]["star"].values[a:b]
        rs.write_rows(out, rs.failed_rows(stars, ["teff", "logg", "feh"], "not fitted"), a)
        rs.mark_chunk_done(out, i, value=0)
    assert rs.summarize(out)["pending"] == 8 + 3
    info: dict = {}
    ds = run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, client=client,
                 resume=True, progress=False, info=info)
    assert info["chunks_fitted"] == 2 and info["chunks_skipped"] == 2
    assert sorted(r["index"] for r in info["task_records"]) == [1, 3]
    assert_same_results(ds, reference[1])


def test_second_writer_refused(reference, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, fault_fns):
    """Two runs on one store at once: the second is refused with a clear message; the first
    finishes normally. A dead run's lock is taken over with a warning."""
    out = tmp_path / "res.zarr"
    slow = fault_fns.SlowFit(0.4)
    first: dict = {}

    def run_first():
        try:
            first["ds"] = run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED,
                                  engine="serial", progress=False, fit_fn=slow)
        except BaseException as exc:  # noqa: BLE001
            first["error"] = exc

    t = threading.Thread(target=run_first)
    t.start()
    try:
        deadline = time.time() + 30
        while rs.read_lock(out) is None and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(rs.StoreLockedError, match=r"being written by another gsn-dask run \(pid"):
            run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial",
                    resume=True, progress=False)
        with pytest.raises(rs.StoreLockedError):
            run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial",
                    overwrite=True, progress=False)
    finally:
        t.join()
    assert "error" not in first, first.get("error")
    assert_same_results(first["ds"], reference[1])
    # a lock left by a killed run (its pid is gone) is taken over with a warning
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.kill()
    proc.wait()
    (out / rs.LOCK_FILE).write_text(
        f'{{"host": "{socket.gethostname()}", "pid": {proc.pid}, "time": "x", "token": "dead"}}'
    )
    with pytest.warns(UserWarning, match="taking over the lock"):
        run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial",
                resume=True, progress=False)
    assert rs.read_lock(out) is None


def test_failing_chunk_is_recorded_not_fatal(reference, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    from gsn_dask.fit.block import fit_block

    def flaky(block, model, **kw):
        if "tiny-008" in list(block["star"].values):
            raise RuntimeError("disk on fire")
        return fit_block(block, model, **kw)

    out = tmp_path / "res.zarr"
    info: dict = {}
    ds = run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial",
                 progress=False, fit_fn=flaky, info=info).load()
    assert info["chunks_failed"] == 1 and info["failed_chunks"] == [1]
    assert rs.done_chunks(out).tolist() == [True, False, True, True]
    st = ds["status"].values[8:16]
    assert all(s.startswith("error: chunk task failed: RuntimeError: disk on fire") for s in st)
    assert np.all(ds["flag"].values[8:16] & int(Flag.NOT_FITTED))
    s = rs.summarize(ds)
    assert s["failed"] == 8 + 2 and s["pending"] == 0  # chunk 1 holds 8 stars incl. bad-ivar0
    ds = run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config, seed=SEED, engine="serial",
                 resume=True, progress=False)
    assert_same_results(ds, reference[1])


def test_posterior_draws_written(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    """--draws N: the (star, draw, label) samples are written by region too."""
    cfg = tiny_fit_config.replace(n_draws=4)
    ds = run_fit(tiny_cube_path, tiny_model_dir, tmp_path / "res.zarr", config=cfg, seed=SEED, engine="serial",
                 chunk_size=16, progress=False).load()
    assert ds["samples"].dims == ("star", "draw", "label") and ds["samples"].shape == (N_STAR, 4, 3)
    ok = rs.as_str_array(ds["status"].values) == "ok"
    assert np.all(np.isfinite(ds["samples"].values[ok])) and np.all(np.isnan(ds["samples"].values[~ok]))
    lo, hi = ds["samples"].values[ok].min(axis=1), ds["samples"].values[ok].max(axis=1)
    med = ds["median"].values[ok]
    assert np.all((lo <= med + 1e-3 * np.abs(med) + 1) & (hi >= med - 1e-3 * np.abs(med) - 1) | (hi > lo))


@pytest.mark.slow
def test_batched_sampler_serial_equals_dask(client, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    """--sampler batched (torch) through both engines and two chunkings: identical rows; the
    workers' torch runs with threads_per_worker (1) threads."""
    pytest.importorskip("torch")
    kw = dict(config=tiny_fit_config, seed=SEED, sampler="batched", progress=False)
    a = run_fit(tiny_cube_path, tiny_model_dir, tmp_path / "a.zarr", engine="serial", chunk_size=9, **kw).load()
    b = run_fit(tiny_cube_path, tiny_model_dir, tmp_path / "b.zarr", client=client, chunk_size=4, **kw).load()
    assert a.attrs["sampler"] == "batched"
    # chi2 at the MAP is a float32 torch reduction: its last bit depends on torch's thread count
    assert_same_results(a, b, rtol={"chi2_reduced": 1e-6})
    good = rs.as_str_array(a["status"].values) == "ok"
    assert good.sum() == TINY_N_GOOD and np.all(np.isfinite(a["median"].values[good]))
    import torch

    assert set(client.run(torch.get_num_threads).values()) == {1}


@pytest.mark.parametrize("sampler", ["emcee", "batched", "map"])
def test_four_label_model_serial_equals_dask(sampler, client, tmp_path, four_label_cube_path, four_label_model_dir,
                                             tiny_fit_config):
    """A four-label model (``alpha_fe``, as the synthetic grid's models have): every sampler reports
    [alpha/Fe] with its interval, the same numbers on both engines, near the truth."""
    if sampler == "batched":
        pytest.importorskip("torch")
    import dataclasses  # 4 labels + rv: at least 10 walkers

    kw = dict(config=dataclasses.replace(tiny_fit_config, n_walkers=10), seed=SEED, sampler=sampler, progress=False)
    a = run_fit(four_label_cube_path, four_label_model_dir, tmp_path / "a.zarr", engine="serial", chunk_size=9,
                **kw).load()
    b = run_fit(four_label_cube_path, four_label_model_dir, tmp_path / "b.zarr", client=client, chunk_size=4,
                **kw).load()
    assert [str(x) for x in a["label"].values] == list(FOUR_LABELS)
    assert_same_results(a, b, rtol={"chi2_reduced": 1e-6} if sampler == "batched" else None)
    good = rs.as_str_array(a["status"].values) == "ok"
    assert good.sum() == TINY_N_GOOD
    alpha = a.sel(label="alpha_fe")
    truth = open_spectra(four_label_cube_path)["label_alpha_fe"].values[good]
    med, lo, hi = (np.asarray(alpha[v].values)[good] for v in ("median", "p16", "p84"))
    assert np.all(lo < med) and np.all(med < hi)
    assert np.median(np.abs(med - truth)) < 0.1  # dex; the prior range is 0.8 dex wide


def test_model_mismatch_refused_before_writing(tmp_path, tiny_cube_path, tiny_fit_config):
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.emulator import ModelMismatchError
    from gsn_dask.fit.testing import toy_model

    mdir = tmp_path / "wide"
    toy_model(hidden=(8, 8, 8), wavelength=log_lambda_grid(4000.0, 6000.0), n_train=100).save(mdir)
    out = tmp_path / "res.zarr"
    with pytest.raises(ModelMismatchError):
        run_fit(tiny_cube_path, mdir, out, config=tiny_fit_config, engine="serial", progress=False)
    assert not out.exists()


@pytest.mark.slow
def test_worker_killed_mid_task(reference, client, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config,
                                fault_fns):
    """kill -9 a worker process while it runs a task: the task is rerun elsewhere, the result
    is identical and no chunk fails."""
    killed: dict = {}

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and "pid" not in killed:
            busy = [a for a, keys in client.processing().items() if any("gsn-fit-" in str(k) for k in keys)]
            if busy:
                time.sleep(0.5)  # well inside the task's 2 s sleep
                addr = busy[0]
                pid = client.run(os.getpid, workers=[addr])[addr]
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    info: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = run_fit(tiny_cube_path, tiny_model_dir, tmp_path / "res.zarr", config=tiny_fit_config, seed=SEED,
                     client=client, progress=False, info=info, chunk_size=TINY_CHUNK,
                     fit_fn=fault_fns.SlowFit(2.0))
    t.join(5)
    assert "pid" in killed
    assert info["chunks_failed"] == 0 and info["chunks_fitted"] == 4
    assert killed["pid"] not in {r["pid"] for r in info["task_records"]}
    assert_same_results(ds, reference[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.cluster
@pytest.mark.slow
def test_cli_on_external_cluster(reference, tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    """`dask scheduler` + two `dask worker` processes; `gsn-dask fit --scheduler` runs on them."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask_exe = Path(sys.executable).with_name("dask")
    if dask_exe.exists():
        dask_cli, worker_cli = [str(dask_exe), "scheduler"], [str(dask_exe), "worker"]
    else:
        dask_cli = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
        worker_cli = [sys.executable, "-m", "distributed.cli.dask_worker"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        procs.append(subprocess.Popen(
            [*dask_cli, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=open(logs / "scheduler.log", "w"), env=env,
        ))
        for i in range(2):
            procs.append(subprocess.Popen(
                [*worker_cli, addr, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                 "--local-directory", str(tmp_path / f"w{i}")],
                stdout=subprocess.DEVNULL, stderr=open(logs / f"worker{i}.log", "w"), env=env,
            ))
        from distributed import Client

        with Client(addr, timeout="60s") as c:
            c.wait_for_workers(2, timeout=90)
        out = tmp_path / "res.zarr"
        res = subprocess.run(
            [sys.executable, "-m", "gsn_dask", "fit", str(tiny_cube_path), "--model", str(tiny_model_dir),
             "--out", str(out), "--scheduler", addr, "--seed", str(SEED), "--chunk-size", "5",
             "--config", tiny_fit_config.to_json(), "--no-progress"],
            capture_output=True, text=True, timeout=240, env=env,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert "failed (not fitted)" in res.stdout and f"{N_STAR:>8}" in res.stdout
        assert addr in res.stderr  # the scheduler it attached to is printed
        ds = xr.open_zarr(out, consolidated=False)
        assert ds.attrs["engine"] == "dask" and ds.attrs["chunk_size"] == 5
        assert_same_results(ds, reference[1])
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_workers_reuse_freed_heap_pages(client, tiny_model_dir, fault_fns):
    """Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc mmap and unmap
    every array above 128 kB (a map fit then cost ~25% more CPU in a worker than in a plain
    process); the runner's worker plugin undoes it (model_cache.configure_malloc)."""
    from gsn_dask.emulator import load_model

    code = ("import sys; sys.path.insert(0, {tests!r}); import fit_faults; from gsn_dask import model_cache;"
            "a = fit_faults.alloc_page_faults(); model_cache.configure_malloc(); print(a, fit_faults.alloc_page_faults())")
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code.format(tests=str(Path(__file__).parent))], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    trimmed, configured = (int(x) for x in out.stdout.split())
    assert trimmed > 20_000 and configured < 5_000, (trimmed, configured)
    plugin = model_cache.ModelCachePlugin(str(tiny_model_dir), load_model(tiny_model_dir).sha256, 1)
    client.register_plugin(plugin)
    try:
        faults = client.run(fault_fns.alloc_page_faults)
    finally:
        client.unregister_worker_plugin(plugin.name)
    assert len(faults) == 2 and max(faults.values()) < 5_000, faults


def test_model_cache(tmp_path, tiny_model_dir, monkeypatch):
    """One load per (dir, sha256) per process; a model changed under a run is refused."""
    from gsn_dask.emulator import ModelFileError, load_model

    model_cache.clear_cache()
    n0 = model_cache.load_count
    sha = load_model(tiny_model_dir).sha256
    m1 = model_cache.get_model(tiny_model_dir, sha)
    m2 = model_cache.get_model(str(tiny_model_dir) + "/", sha)
    assert m1 is m2 and model_cache.load_count == n0 + 1
    assert model_cache.get_model(tiny_model_dir) is not None and model_cache.load_count == n0 + 2
    with pytest.raises(ModelFileError, match="changed during the run"):
        model_cache.get_model(tiny_model_dir, "0" * 64)
    model_cache.drop_model(tiny_model_dir)
    assert model_cache.cached_models() == []
    for var in model_cache.THREAD_ENV_VARS:
        monkeypatch.setenv(var, "8")
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    try:
        done = model_cache.configure_threads(1)
        assert done["n_threads"] == 1 and all(os.environ[v] == "1" for v in model_cache.THREAD_ENV_VARS)
        if torch is not None:
            assert done["torch"] and torch.get_num_threads() == 1
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)  # leave this test process as it was
    plugin = model_cache.ModelCachePlugin(str(tiny_model_dir), sha, 1, ("gsn_dask.fit.block",))
    import pickle

    clone = pickle.loads(pickle.dumps(plugin))  # shipped to workers by reference to the class
    monkeypatch.setattr(model_cache, "configure_threads", lambda n: {})  # not in this process again
    clone.setup(worker=None)
    assert (str(Path(tiny_model_dir).resolve()), sha) in model_cache.cached_models()
    clone.teardown(worker=None)
    assert model_cache.cached_models() == []
