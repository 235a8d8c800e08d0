"""Tests of the engine-neutral run layer (gsn_dask.run) and the run-level refusals it gives both
engines: a config or model that does not fit is refused before any star is fitted (one line,
exit status 1); output paths that cannot be written, or that hold other data, are refused
without a traceback; --overwrite never deletes a spectra cube; a refused --resume names the
settings that differ; the task size keeps every worker busy."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gsn_dask import results_store as rs
from gsn_dask.cli import main, run_cli
from gsn_dask.fit.config import ConfigError
from gsn_dask.pipeline import run_fit
from gsn_dask.run import (
    ChunkTask,
    fit_chunk,
    open_run,
    prepare_run,
    task_chunk_size,
    zarr_cube_meta,
)

from conftest import TINY_CHUNK

SEED = 3
#: settings that do not fit the tiny 3-label model (n_dim = 4: at least 8 walkers)
BAD_SETTINGS = {
    "walkers": (["--set", "n_walkers=6"], "n_walkers=6 must be >= 2 * n_dim = 8"),
    "prior": (["--prior", "foo=1,2"], "priors for unknown labels ['foo']"),
    "thin": (["--thin", "200"], "thin=200 keeps no production step"),
}


def _cmd(cube, model, out, config, *extra: str) -> list[str]:
    return ["fit", str(cube), "--model", str(model), "--out", str(out), "--config", config.to_json(),
            "--seed", str(SEED), "--no-progress", *extra]


def _one_error_line(err: str, *needles: str) -> None:
    """``err`` is exactly one line ``gsn-dask fit: error: ...`` holding every needle."""
    assert err.count("\n") == 1 and err.startswith("gsn-dask fit: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_task_chunk_size():
    """Split into ~4 tasks per slot when the cube has fewer chunks; a given size wins; one slot
    (serial) keeps the cube's chunk."""
    assert task_chunk_size(181, 181, 2) == 23  # the LAMOST cube, 2 workers: 8 tasks
    assert len(rs.chunk_bounds(181, 23)) == 8
    assert task_chunk_size(181, 181, 2, chunk_size=181) == 181
    assert task_chunk_size(181, 181, 1) == 181
    assert task_chunk_size(27, 8, 2) == 4  # 4 chunks < 8 tasks -> 7 tasks
    assert task_chunk_size(1000, 8, 2) == 8  # 125 chunks: enough already
    assert task_chunk_size(5, 256, 4) == 1
    for n_star, chunk, slots in [(181, 181, 2), (27, 8, 2), (3000, 1000, 16), (7, 7, 3)]:
        size = task_chunk_size(n_star, chunk, slots)
        assert 1 <= size <= chunk
        assert len(rs.chunk_bounds(n_star, size)) >= min(n_star, 4 * slots) * 0.75


@pytest.mark.parametrize("engine", ["serial", "dask"])
@pytest.mark.parametrize("sampler", ["emcee", "batched"])
@pytest.mark.parametrize("bad", ["walkers", "prior"])
def test_config_refused_before_any_fit(bad, sampler, engine, tmp_path, tiny_cube_path, tiny_model_dir,
                                       tiny_fit_config):
    """The library call raises ConfigError before any task runs or anything is written (the
    emcee path used to fail in every task and exit 3, the batched one to write error rows)."""
    calls: list[int] = []

    def spy(block, model, **kw):
        calls.append(block.sizes["star"])
        raise AssertionError("no star may be fitted")

    change = {"walkers": {"n_walkers": 6}, "prior": {"priors": {"foo": (1.0, 2.0)}}}[bad]
    out = tmp_path / "res.zarr"
    with pytest.raises(ConfigError, match="FitConfig"):
        run_fit(tiny_cube_path, tiny_model_dir, out, config=tiny_fit_config.replace(**change), seed=SEED,
                engine=engine, sampler=sampler, n_workers=1, fit_fn=spy, progress=False)
    assert calls == [] and not out.exists()


@pytest.mark.parametrize("engine", ["serial", "dask"])
@pytest.mark.parametrize("sampler", ["emcee", "batched"])
@pytest.mark.parametrize("bad", sorted(BAD_SETTINGS))
def test_cli_config_refused_one_line(bad, sampler, engine, tmp_path, tiny_cube_path, tiny_model_dir,
                                     tiny_fit_config, capsys):
    args, needle = BAD_SETTINGS[bad]
    out = tmp_path / "res.zarr"
    workers = ["--workers", "1"] if engine == "dask" else []
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, out, tiny_fit_config, "--engine", engine, "--sampler", sampler,
                   *workers, *args))
    assert rc == 1
    _one_error_line(capsys.readouterr().err, needle)
    assert not out.exists()


def test_out_under_a_plain_file(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, capsys):
    plain = tmp_path / "f"
    plain.write_text("hi\n")
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, plain / "r.zarr", tiny_fit_config, "--engine", "serial"))
    assert rc == 1
    _one_error_line(capsys.readouterr().err, f"cannot write {plain / 'r.zarr'}", "which is a file")
    assert plain.read_text() == "hi\n"
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, plain, tiny_fit_config, "--engine", "serial"))
    assert rc == 1
    _one_error_line(capsys.readouterr().err, "it is a file")


def test_out_not_creatable(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, capsys):
    """A folder that cannot be created even by root (/sys is a kernel file system)."""
    target = Path("/sys") / f"gsn-dask-test-{tmp_path.name}"
    try:
        target.mkdir()
    except OSError:
        pass
    else:  # pragma: no cover - a writable /sys: nothing to test here
        target.rmdir()
        pytest.skip("/sys is writable on this machine")
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, target / "r.zarr", tiny_fit_config, "--engine", "serial"))
    assert rc == 1
    _one_error_line(capsys.readouterr().err, str(target / "r.zarr"))


def test_unreadable_model_one_line(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, capsys):
    """model.json that cannot be read (here a link to /proc/self/mem: EIO, also for root)."""
    if not Path("/proc/self/mem").exists():  # pragma: no cover - not Linux
        pytest.skip("needs /proc/self/mem")
    mdir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, mdir)
    (mdir / "model.json").unlink()
    (mdir / "model.json").symlink_to("/proc/self/mem")
    rc = main(_cmd(tiny_cube_path, mdir, tmp_path / "r.zarr", tiny_fit_config, "--engine", "serial"))
    assert rc == 1
    _one_error_line(capsys.readouterr().err, f"cannot read the model in {mdir}")
    assert not (tmp_path / "r.zarr").exists()


def test_os_errors_are_one_line(capsys):
    """run_cli turns any OSError of a subcommand into ``<prog> <command>: error: <reason>: <path>``."""
    parser = argparse.ArgumentParser(prog="gsn-dask")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command")

    def boom(args):
        raise PermissionError(13, "Permission denied", "/models/m/model.json")

    sub.add_parser("fit").set_defaults(func=boom)
    assert run_cli(parser, ["fit"]) == 1
    assert capsys.readouterr().err == "gsn-dask fit: error: Permission denied: /models/m/model.json\n"
    with pytest.raises(PermissionError):
        run_cli(parser, ["-vv", "fit"])  # -vv: the traceback


def test_overwrite_never_deletes_a_spectra_cube(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, capsys):
    """--overwrite (and --resume) on a spectra cube, or on a directory of other files, is refused
    before anything is written; the data stay as they were (no lock file left either)."""
    cube = tmp_path / "other_cube.zarr"
    shutil.copytree(tiny_cube_path, cube)
    before = sorted(p.relative_to(cube) for p in cube.rglob("*"))
    for flag in ("--overwrite", "--resume"):
        rc = main(_cmd(tiny_cube_path, tiny_model_dir, cube, tiny_fit_config, "--engine", "serial", flag))
        assert rc == 1
        _one_error_line(capsys.readouterr().err, "not a results store written by gsn-dask fit", "gsn-dask/spectra/1")
        assert sorted(p.relative_to(cube) for p in cube.rglob("*")) == before
    with pytest.raises(rs.StoreMismatchError):
        rs.create_store(cube, ["a"], ["teff"], chunk_size=1, overwrite=True)
    assert sorted(p.relative_to(cube) for p in cube.rglob("*")) == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, other, tiny_fit_config, "--engine", "serial", "--overwrite"))
    assert rc == 1 and "not a zarr store" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_resume_refusal_names_the_settings(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, capsys):
    out = tmp_path / "res.zarr"
    assert main(_cmd(tiny_cube_path, tiny_model_dir, out, tiny_fit_config, "--engine", "serial")) == 0
    capsys.readouterr()
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, out, tiny_fit_config, "--engine", "serial", "--resume",
                   "--walkers", "10", "--set", "chi2_poor=7.5"))
    assert rc == 1
    _one_error_line(capsys.readouterr().err, "fit_config differs",
                    f"n_walkers = {tiny_fit_config.n_walkers} in the store, 10 in this run",
                    f"chi2_poor = {tiny_fit_config.chi2_poor!r} in the store, 7.5 in this run")


def test_run_layer_chunk_task(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    """prepare_run + open_run + fit_chunk by hand (what every engine does): the store is created
    with the task size, the chunk's rows are written and marked done, the lock is held meanwhile
    and released after; a fit function returning other stars is refused before any write."""
    plan = prepare_run(zarr_cube_meta(tiny_cube_path), tiny_model_dir, tmp_path / "res.zarr",
                       config=tiny_fit_config, seed=SEED)
    with open_run(plan, n_slots=1, engine="serial") as store:
        assert rs.read_lock(plan.out) is not None
        assert store.chunk_size == TINY_CHUNK and [t.index for t in store.pending] == [0, 1, 2, 3]
        job = plan.job()
        rec = fit_chunk(job, store.tasks[0])
        assert rec["index"] == 0 and rec["n_star"] == TINY_CHUNK
        assert rec["n_ok"] + rec["n_flagged"] + rec["n_failed"] == TINY_CHUNK
        assert rs.done_chunks(plan.out).tolist() == [True, False, False, False]

        def shifted(block, model, **kw):
            from gsn_dask.fit.block import fit_block

            return fit_block(block.isel(star=slice(1, None)), model, **kw)

        with pytest.raises(RuntimeError, match="other stars"):
            fit_chunk(job.__class__(**{**job.__dict__, "fit_fn": shifted}), ChunkTask(1, 8, 16))
        assert not rs.done_chunks(plan.out)[1]
        store.record_failures({2: "error: chunk task failed: X"})
        store.finish("serial", {"last_run": json.dumps({"chunks_fitted": 1})})
    assert rs.read_lock(plan.out) is None
    res = rs.open_store(plan.out).load()
    assert np.all(res["status"].values[16:24] == "error: chunk task failed: X")
    assert res.attrs["engine"] == "serial" and json.loads(res.attrs["last_run"]) == {"chunks_fitted": 1}
