"""Tests of gsn_dask.results_store: template, region writes, completion records, lock, summary."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from gsn_dask import results_store as rs
from gsn_dask.cube import empty_results, validate_results
from gsn_dask.flags import Flag

LABELS = ["teff", "logg", "feh"]
STARS = [f"s{i:02d}" for i in range(10)]


def _rows(stars, value, n_draws=0):
    ds = empty_results(stars, LABELS, n_draws=n_draws, status="ok")
    n = len(stars)
    ds["median"][:] = value + np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    ds["rv"][:] = value
    ds["flag"][:] = 0
    if n_draws:
        ds["samples"][:] = value
    return ds


def _store(tmp_path, n_draws=0, chunk_size=4):
    path = tmp_path / "res.zarr"
    rs.create_store(path, STARS, LABELS, chunk_size=chunk_size, n_draws=n_draws, attrs={"seed": 3, "sampler": "emcee"})
    return path


def test_chunk_bounds():
    assert rs.chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert rs.chunk_bounds(8, 4) == [(0, 4), (4, 8)]
    assert rs.chunk_bounds(3, 8) == [(0, 3)]
    with pytest.raises(ValueError):
        rs.chunk_bounds(3, 0)


def test_template_is_unfitted_and_chunked(tmp_path):
    path = _store(tmp_path, n_draws=5)
    ds = rs.open_store(path)
    validate_results(ds)
    assert list(ds["star"].values) == STARS
    assert list(ds["label"].values) == LABELS
    assert np.all(ds["flag"].values == int(Flag.NOT_FITTED))
    assert set(ds["status"].values.tolist()) == {"not fitted"}
    assert np.all(np.isnan(ds["median"].values)) and np.all(np.isnan(ds["samples"].values))
    assert ds["samples"].shape == (10, 5, 3)
    assert ds[rs.DONE_VAR].shape == (3,) and not rs.done_chunks(path).any()
    assert ds.attrs["chunk_size"] == 4 and ds.attrs["n_chunks"] == 3 and ds.attrs["seed"] == 3
    g = zarr.open_group(str(path), mode="r")
    assert g["median"].chunks == (4, 3)
    assert g["status"].chunks == (4,)
    assert g[rs.DONE_VAR].chunks == (1,)
    # variables come back in schema order
    assert list(ds.data_vars)[:4] == ["median", "p16", "p84", "map"]


def test_create_refuses_existing_and_overwrite_keeps_lock(tmp_path):
    path = _store(tmp_path)
    with pytest.raises(FileExistsError, match="--resume"):
        rs.create_store(path, STARS, LABELS, chunk_size=4)
    token = rs.acquire_lock(path)
    rs.write_chunk(path, 0, _rows(STARS[:4], 1.0))
    rs.create_store(path, STARS[:6], LABELS, chunk_size=3, overwrite=True)
    assert rs.read_lock(path)["token"] == token
    ds = rs.open_store(path)
    assert ds.sizes["star"] == 6 and ds.attrs["chunk_size"] == 3
    assert not rs.done_chunks(path).any() and np.all(np.isnan(ds["median"].values))
    assert rs.release_lock(path, token)


def test_region_writes_rows_then_done(tmp_path):
    path = _store(tmp_path, n_draws=2)
    rs.write_rows(path, _rows(STARS[4:8], 10.0, n_draws=2), 4)
    assert not rs.done_chunks(path).any()
    rs.mark_chunk_done(path, 1)
    rs.write_chunk(path, 2, _rows(STARS[8:], 20.0, n_draws=2))  # the short tail chunk
    ds = rs.open_store(path).load()
    assert rs.done_chunks(path).tolist() == [False, True, True]
    np.testing.assert_array_equal(ds["median"].values[4:8, 0], 10.0 + 3 * np.arange(4))
    np.testing.assert_array_equal(ds["rv"].values[8:], 20.0)
    assert np.all(ds["samples"].values[4:8] == 10.0) and np.all(np.isnan(ds["samples"].values[:4]))
    assert ds["status"].values.tolist() == ["not fitted"] * 4 + ["ok"] * 6
    assert ds["flag"].dtype == np.int32 and ds["flag"].values.tolist() == [1] * 4 + [0] * 6
    assert list(ds["star"].values) == STARS


def test_region_write_casts_dtypes_and_drops_extra(tmp_path):
    path = _store(tmp_path)
    rows = _rows(STARS[:4], 1.0)
    rows["rv"] = rows["rv"].astype(np.float64)
    rows["flag"] = rows["flag"].astype(np.int64)
    rows["extra"] = ("label", np.zeros(3))  # not along star: dropped
    rows["status"] = ("star", np.array(["ok", "x", "y", "z"]))  # <U strings
    rows.attrs["junk"] = 1
    rs.write_rows(path, rows, 0)
    ds = rs.open_store(path)
    assert ds["rv"].dtype == np.float32 and "extra" not in ds and "junk" not in ds.attrs
    assert ds["status"].values[:4].tolist() == ["ok", "x", "y", "z"]


def test_region_write_checks_alignment_and_ids(tmp_path):
    path = _store(tmp_path)
    with pytest.raises(ValueError, match="multiple of"):
        rs.write_rows(path, _rows(STARS[2:6], 1.0), 2)
    with pytest.raises(ValueError, match="aligned"):
        rs.write_rows(path, _rows(STARS[4:6], 1.0), 4)  # half a chunk, not the tail
    with pytest.raises(ValueError, match="star ids"):
        rs.write_rows(path, _rows(STARS[:4][::-1], 1.0), 0)
    with pytest.raises(ValueError, match="star ids"):
        rs.write_rows(path, _rows(["a", "b", "c", "d"], 1.0), 0)
    assert np.all(np.isnan(rs.open_store(path)["median"].values))


def test_concurrent_writers_of_different_chunks(tmp_path):
    """Threads writing their own chunks at once: every row lands where it belongs."""
    stars = [f"s{i:03d}" for i in range(64)]
    path = tmp_path / "res.zarr"
    rs.create_store(path, stars, LABELS, chunk_size=4)
    errors = []

    def work(i):
        try:
            rs.write_chunk(path, i, _rows(stars[4 * i : 4 * i + 4], 100.0 * i))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ds = rs.open_store(path)
    assert rs.done_chunks(path).all()
    np.testing.assert_array_equal(ds["rv"].values, np.repeat(100.0 * np.arange(16), 4))


def test_failed_rows():
    ds = rs.failed_rows(["a", "b"], LABELS, "error: chunk task failed:\n  Boom " + "x" * 500, n_draws=3)
    assert ds["flag"].values.tolist() == [1, 1]
    st = ds["status"].values[0]
    assert st.startswith("error: chunk task failed: Boom") and len(st) == 200 and "\n" not in st
    assert ds["samples"].shape == (2, 3, 3)


def test_check_resumable(tmp_path):
    path = _store(tmp_path)
    rs.check_resumable(path, {"seed": 3, "sampler": "emcee"}, STARS)
    with pytest.raises(rs.StoreMismatchError, match="seed: store has 3, this run 4"):
        rs.check_resumable(path, {"seed": 4}, STARS)
    with pytest.raises(rs.StoreMismatchError, match="star ids differ"):
        rs.check_resumable(path, {"seed": 3}, STARS[::-1])
    with pytest.raises(rs.StoreMismatchError, match="model_sha256"):
        rs.check_resumable(path, {"model_sha256": "abc"}, STARS)


def test_summary(tmp_path):
    path = _store(tmp_path)
    rows = _rows(STARS[:4], 1.0)
    rows["flag"][:] = [0, int(Flag.NOT_CONVERGED), int(Flag.NOT_FITTED | Flag.FEW_PIXELS), int(Flag.POOR_FIT)]
    rows["status"][:] = ["ok", "ok", "too few good pixels", "ok"]
    rs.write_chunk(path, 0, rows)
    rs.write_rows(path, rs.failed_rows(STARS[8:], LABELS, "error: boom"), 8)
    s = rs.summarize(path)
    assert s == {
        "n_star": 10, "ok": 1, "flagged": 2, "failed": 3, "pending": 4,
        "reasons": {"error: boom": 2, "too few good pixels": 1},
        "flags": {"NOT_CONVERGED": 1, "POOR_FIT": 1},
        "n_chunks": 3, "chunks_done": 1,
    }
    text = rs.format_summary(s, {"chunks_fitted": 1, "chunks_skipped": 0, "wall_s": 1.5})
    assert "failed (not fitted)" in text and "too few good pixels" in text and "1 / 3" in text


# ------------------------------------------------------------------------------ lock
def test_lock_acquire_release(tmp_path):
    path = tmp_path / "new.zarr"
    token = rs.acquire_lock(path, note="test")
    rec = rs.read_lock(path)
    assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname() and rec["token"] == token
    with pytest.raises(rs.StoreLockedError, match=f"pid {os.getpid()}"):
        rs.acquire_lock(path)
    assert not rs.release_lock(path, "not-my-token")
    assert rs.read_lock(path) is not None
    assert rs.release_lock(path, token)
    assert not path.exists()  # nothing but the lock was there
    with rs.store_lock(path) as tok:
        assert rs.read_lock(path)["token"] == tok
    assert rs.read_lock(path) is None


def test_lock_held_by_live_process_then_stale(tmp_path):
    """A real second process holds the lock: refused; once it is killed, taken over with a warning."""
    path = tmp_path / "res.zarr"
    code = (
        "import sys, time; from gsn_dask import results_store as rs; "
        f"rs.acquire_lock({str(path)!r}); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(rs.StoreLockedError, match=f"pid {proc.pid}"):
            rs.acquire_lock(path)
    finally:
        proc.kill()
        proc.wait()
    with pytest.warns(UserWarning, match="taking over the lock"):
        token = rs.acquire_lock(path)
    assert rs.read_lock(path)["pid"] == os.getpid()
    rs.release_lock(path, token)


def test_lock_other_host_needs_force(tmp_path):
    path = tmp_path / "res.zarr"
    path.mkdir()
    rec = {"host": "some-other-host", "pid": 1, "time": "2020-01-01T00:00:00+00:00", "token": "x"}
    (path / rs.LOCK_FILE).write_text(json.dumps(rec))
    with pytest.raises(rs.StoreLockedError, match="some-other-host.*--force-unlock"):
        rs.acquire_lock(path)
    with pytest.warns(UserWarning, match="--force-unlock"):
        token = rs.acquire_lock(path, force=True)
    assert rs.read_lock(path)["token"] == token
    assert not list(path.glob("*.stale-*"))


def test_lock_being_written_is_respected_then_stale(tmp_path):
    path = tmp_path / "res.zarr"
    path.mkdir()
    lock = path / rs.LOCK_FILE
    lock.write_text("")  # created by O_EXCL, content not yet written
    with pytest.raises(rs.StoreLockedError, match="being written"):
        rs.acquire_lock(path)
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = rs.acquire_lock(path)
    assert rs.read_lock(path)["token"] == token


def test_lock_file_does_not_break_reading(tmp_path):
    path = _store(tmp_path)
    token = rs.acquire_lock(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = rs.open_store(path)
        rs.write_chunk(path, 0, _rows(STARS[:4], 1.0))
    assert ds.sizes["star"] == 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes the lock file; reading works
        assert xr.open_zarr(path, consolidated=False).sizes["star"] == 10
    rs.release_lock(path, token)
