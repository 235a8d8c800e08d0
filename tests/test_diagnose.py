"""gsn-dask diagnose: stacked residuals find a feature fixed in the observed frame."""
from __future__ import annotations

import numpy as np

import gsn_dask as gd
from gsn_dask.cli import main
from gsn_dask.diagnose import residual_spectra, stack, window_table
from gsn_dask.simulate import SurveySettings, simulate


def _cube_with_sky_line(model, n=10):
    cube = simulate(model, n, seed=5, settings=SurveySettings(snr_median=200, snr_sigma_ln=0.0, rv_sigma_kms=300)).load()
    wave = cube["wavelength"].values
    line = 1 + 0.3 * np.exp(-0.5 * ((wave - 5200.0) / 1.5) ** 2)  # an emission line fixed in the observed frame
    cube["flux"].values[:] = cube["flux"].values * line.astype(np.float32)
    return cube


def test_observed_frame_feature_stands_out(tiny_model_dir, tmp_path):
    model = gd.load_model(tiny_model_dir)
    cube = _cube_with_sky_line(model)
    res = gd.fit(cube, model, config={"n_steps": 20, "max_steps": 40, "min_good_pixels": 100})
    assert (res["status"].values == "ok").sum() >= 8
    resid = residual_spectra(cube, res, model)
    st = stack(resid, classes={}, min_stars=1)
    wave = st["wavelength"].values
    at = np.abs(wave - 5200.0) < 2
    away = (np.abs(wave - 5200.0) > 20) & np.isfinite(st["observed"].sel({"class": "all"}).values)
    obs, rest = st["observed"].sel({"class": "all"}).values, st["rest"].sel({"class": "all"}).values
    assert np.nanmax(obs[at]) > 0.15  # the line, at full strength, in the observed stack
    assert np.nanmax(rest[at]) < 0.5 * np.nanmax(obs[at])  # smeared by the rv spread in the rest frame
    assert np.sqrt(np.nanmean(obs[away] ** 2)) < 0.02
    table = window_table(st, {"line": (5195, 5205), "quiet": (5000, 5150)})
    assert table.loc[0, "observed: line"] > 3 * table.loc[0, "observed: quiet"]


def test_cli_diagnose_writes_figures_and_table(tiny_model_dir, tmp_path):
    model = gd.load_model(tiny_model_dir)
    cube_path, res_path = tmp_path / "c.zarr", tmp_path / "r.zarr"
    from gsn_dask.cube import write_spectra

    write_spectra(_cube_with_sky_line(model, 6), cube_path, chunk_size=6)
    res = gd.fit(gd.open_spectra(cube_path).load(), model, config={"n_steps": 20, "max_steps": 20, "min_good_pixels": 100})
    res.to_zarr(res_path, zarr_format=3, consolidated=False)
    out = tmp_path / "diag"
    assert main(["diagnose", str(res_path), "--cube", str(cube_path), "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    for name in ("residuals_observed.png", "residuals_rest.png", "residuals_stacked.nc", "residual_windows.csv"):
        assert (out / name).stat().st_size > 0, name
