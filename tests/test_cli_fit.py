"""Tests of `gsn-dask fit` (gsn_dask/cli/fit.py): options, end-to-end runs, refusal, resume, Ctrl-C."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gsn_dask import results_store as rs
from gsn_dask.cli import build_parser, main
from gsn_dask.cli.fit import build_config, parse_prior

from conftest import TINY_BAD, TINY_N_GOOD

N_STAR = TINY_N_GOOD + len(TINY_BAD)

#: `gsn-dask` whose fit tasks sleep 1 s each (slow tasks on demand): the run_fit that the command
#: calls gets a fit_fn from tests/fit_faults.py, sent to the Dask workers by value
SLOW_CLI = f"""
import functools, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import cloudpickle, fit_faults
cloudpickle.register_pickle_by_value(fit_faults)
import gsn_dask.pipeline as pipeline
pipeline.run_fit = functools.partial(pipeline.run_fit, fit_fn=fit_faults.SlowFit(1.0))
from gsn_dask.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["fit", "cube.zarr", "--model", "m", "--out", "r.zarr", *extra])


def _cmd(cube, model, out, config, *extra: str) -> list[str]:
    return ["fit", str(cube), "--model", str(model), "--out", str(out), "--config", config.to_json(),
            "--seed", "5", "--no-progress", *extra]


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--model", "--out", "--scheduler", "--workers", "--threads-per-worker", "--chunk-size", "--resume",
                "--overwrite", "--force-unlock", "--seed", "--sampler", "--draws", "--walkers", "--burn", "--steps",
                "--prior", "--engine", "examples:"):
        assert opt in out, opt
    assert "--debug-task-delay" not in out


def test_build_config():
    cfg = build_config(_args("--walkers", "12", "--burn", "30", "--steps", "3000", "--draws", "50",
                             "--prior", "teff=5000,200", "--prior", "feh=-0.5,0.3", "--set", "min_good_pixels=42",
                             "--set", "moves=de"))
    assert (cfg.n_walkers, cfg.n_burn, cfg.n_steps, cfg.n_draws) == (12, 30, 3000, 50)
    assert cfg.max_steps == 3000  # raised to at least --steps
    assert cfg.priors == {"teff": (5000.0, 200.0), "feh": (-0.5, 0.3)}
    assert cfg.min_good_pixels == 42 and cfg.moves == "de"
    cfg = build_config(_args("--config", '{"n_walkers": 10, "thin": 2}', "--walkers", "20"))
    assert cfg.n_walkers == 20 and cfg.thin == 2  # explicit option beats --config
    assert parse_prior(" logg = 4.4, 0.1".replace(" ", "")) == ("logg", (4.4, 0.1))
    with pytest.raises(ValueError, match="LABEL=MU,SIGMA"):
        parse_prior("teff=5000")
    with pytest.raises(ValueError, match="unknown settings"):
        build_config(_args("--set", "no_such_thing=1"))
    with pytest.raises(ValueError, match="sigma > 0"):
        build_config(_args("--prior", "teff=5000,-1"))


def test_config_file(tmp_path):
    f = tmp_path / "cfg.json"
    f.write_text('{"n_steps": 77, "max_steps": 77}')
    assert build_config(_args("--config", str(f))).n_steps == 77
    with pytest.raises(FileNotFoundError):
        build_config(_args("--config", str(tmp_path / "nope.json")))


def test_serial_cli_run_refuse_resume_overwrite(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, capsys):
    out = tmp_path / "res.zarr"
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, out, tiny_fit_config, "--engine", "serial"))
    text = capsys.readouterr()
    assert rc == 0, text.err
    # the summary table: every star counted once, the bad ones as failed with their reasons
    assert f"{'stars':<28}{N_STAR:>8}" in text.out
    assert f"{'failed (not fitted)':<28}{len(TINY_BAD):>8}" in text.out
    assert "chunks done                        4 / 4" in text.out
    s = rs.summarize(out)
    assert s["ok"] + s["flagged"] == TINY_N_GOOD and s["failed"] == len(TINY_BAD)
    # an existing store is refused ...
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, out, tiny_fit_config, "--engine", "serial"))
    err = capsys.readouterr().err
    assert rc == 1 and "exists" in err and "--resume" in err
    # ... resumed (nothing left to do) ...
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, out, tiny_fit_config, "--engine", "serial", "--resume"))
    text = capsys.readouterr()
    assert rc == 0 and "(skipped 4, failed 0)" in text.out
    # ... or overwritten, with a different chunking
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, out, tiny_fit_config, "--engine", "serial", "--overwrite",
                   "--chunk-size", "27"))
    assert rc == 0
    assert xr.open_zarr(out, consolidated=False).attrs["n_chunks"] == 1
    # --resume with other settings is refused with the reason
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, out, tiny_fit_config, "--engine", "serial", "--resume",
                   "--walkers", "10"))
    assert rc == 1 and "fit_config" in capsys.readouterr().err


def test_missing_inputs_are_clear_errors(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, capsys):
    rc = main(_cmd(tmp_path / "nope.zarr", tiny_model_dir, tmp_path / "r.zarr", tiny_fit_config))
    assert rc == 1 and "no spectra cube" in capsys.readouterr().err
    rc = main(_cmd(tiny_cube_path, tmp_path / "nomodel", tmp_path / "r.zarr", tiny_fit_config))
    assert rc == 1 and "model" in capsys.readouterr().err
    assert not (tmp_path / "r.zarr").exists()


@pytest.mark.slow
def test_dask_cli_local_cluster_equals_serial(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config, capsys):
    """The default engine: a LocalCluster of --workers processes started by the command."""
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, tmp_path / "serial.zarr", tiny_fit_config, "--engine", "serial"))
    assert rc == 0
    capsys.readouterr()
    rc = main(_cmd(tiny_cube_path, tiny_model_dir, tmp_path / "dask.zarr", tiny_fit_config, "--workers", "2",
                   "--chunk-size", "6"))
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "Dask scheduler tcp://" in text.err and "2 workers; dashboard:" in text.err
    a = xr.open_zarr(tmp_path / "serial.zarr", consolidated=False)
    b = xr.open_zarr(tmp_path / "dask.zarr", consolidated=False)
    assert a.attrs["engine"] == "serial" and b.attrs["engine"] == "dask" and b.attrs["chunk_size"] == 6
    for name in ("median", "p16", "p84", "map", "rv", "flag"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert list(a["status"].values) == list(b["status"].values)


@pytest.mark.slow
def test_ctrl_c_then_resume(tmp_path, tiny_cube_path, tiny_model_dir, tiny_fit_config):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while `gsn-dask fit` runs
    on its own LocalCluster: exit 130 with a --resume hint, finished chunks kept, lock released,
    no worker tracebacks; the same command with --resume (here on the serial engine) completes
    it and equals an uninterrupted run."""
    out = tmp_path / "res.zarr"
    args = _cmd(tiny_cube_path, tiny_model_dir, out, tiny_fit_config, "--chunk-size", "3")
    base = [sys.executable, "-m", "gsn_dask", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args, "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / rs.DONE_VAR).exists() and rs.done_chunks(out).sum() >= 2:
                break
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err, err[-3000:]
    assert rs.read_lock(out) is None
    done = rs.done_chunks(out)
    assert 2 <= done.sum() < done.size
    res = subprocess.run([*base, "--resume", "--engine", "serial"], capture_output=True, text=True, env=env,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"(skipped {int(done.sum())}, failed 0)" in res.stdout
    ref = tmp_path / "ref.zarr"
    assert main(_cmd(tiny_cube_path, tiny_model_dir, ref, tiny_fit_config, "--engine", "serial")) == 0
    a = xr.open_zarr(ref, consolidated=False)
    b = xr.open_zarr(out, consolidated=False)
    for name in ("median", "p16", "p84", "map", "rv", "flag"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert list(a["status"].values) == list(b["status"].values)
