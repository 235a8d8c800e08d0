"""The survey error: per-pixel model error measured from fitted survey stars, and the adapted model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import gsn_dask as gd
from gsn_dask.cli import main
from gsn_dask.cube import write_spectra
from gsn_dask.diagnose import best_fit
from gsn_dask.simulate import SurveySettings, simulate
from gsn_dask.survey_error import MIN_STARS, adapt_model, survey_error


def _fits(n_star: int, n_pix: int, extra: np.ndarray, emu: float, seed: int = 0) -> xr.Dataset:
    """best_fit-like residuals: model 1, noise at S/N 40-120 plus emu and ``extra`` per pixel."""
    rng = np.random.default_rng(seed)
    snr = rng.uniform(40, 120, (n_star, 1))
    ivar = np.broadcast_to(snr**2, (n_star, n_pix)).copy()
    sd = np.sqrt(1 / ivar + emu**2 + extra[None, :] ** 2)
    dims = ("star", "wavelength")
    return xr.Dataset({"flux": (dims, 1 + sd * rng.standard_normal((n_star, n_pix))), "ivar": (dims, ivar),
                       "model_flux": (dims, np.ones((n_star, n_pix))), "used": (dims, np.ones((n_star, n_pix), bool))})


def test_survey_error_recovers_an_injected_extra_error():
    extra = np.zeros(300)
    extra[100:150] = 0.03
    fits = _fits(400, 300, extra, emu=0.005)
    sig = survey_error(fits, np.full(300, 0.005))
    assert abs(np.median(sig[100:150]) - 0.03) < 0.004
    assert np.percentile(sig[np.r_[0:100, 150:300]], 90) < 0.008  # noise and emulator error explain the rest
    assert np.all(sig >= 0) and sig.shape == (300,)
    # pixels that too few stars use get no estimate
    fits["used"].values[MIN_STARS - 1:, 120] = False
    assert survey_error(fits, np.full(300, 0.005))[120] == 0.0


def _sky_line_cube(model, n: int):
    cube = simulate(model, n, seed=3, settings=SurveySettings(snr_median=100, snr_sigma_ln=0.2, rv_sigma_kms=100)).load()
    wave = cube["wavelength"].values
    rng = np.random.default_rng(1)
    # a sky line of varying strength per star, fixed in the observed frame: it cannot be modelled
    line = np.exp(-0.5 * ((wave - 5200.0) / 1.5) ** 2)
    amp = rng.normal(0, 0.15, (n, 1))
    cube["flux"].values[:] = (cube["flux"].values * (1 + amp * line)).astype(np.float32)
    return cube


def test_adapted_model_down_weights_the_survey_feature(tiny_model_dir, tmp_path):
    model = gd.load_model(tiny_model_dir)
    cube = _sky_line_cube(model, 30)
    cfg = {"min_good_pixels": 100}
    res = gd.fit(cube, model, sampler="map", config=cfg)
    assert (res["status"].values == "ok").sum() >= 28
    sig = survey_error(best_fit(cube, res, model), model.emulator_error)
    wave = model.wavelength
    at, away = np.abs(wave - 5200) < 1.5, np.abs(wave - 5200) > 15
    assert np.max(sig[at]) > 0.05
    assert np.percentile(sig[away], 95) < 0.01
    adapted = adapt_model(model, sig, {"cube": "test"})
    assert adapted.model_id != model.model_id
    np.testing.assert_allclose(adapted.emulator_error, np.hypot(model.emulator_error, sig).astype(np.float32))
    adapted.save(tmp_path / "adapted")
    back = gd.load_model(tmp_path / "adapted")
    assert back.meta["survey_error"]["base_model_id"] == model.model_id
    assert back.meta["survey_error"]["cube"] == "test"
    np.testing.assert_array_equal(back.emulator_error, adapted.emulator_error)
    one_call = gd.adapt_to_survey(cube, res, model, {"cube": "test"})  # the public one-call form
    np.testing.assert_array_equal(one_call.emulator_error, adapted.emulator_error)
    assert one_call.meta["survey_error"]["n_stars"] == int((res["status"].values == "ok").sum())
    chi_before = np.median(res["chi2_reduced"].values)
    chi_after = np.median(gd.fit(cube, back, sampler="map", config=cfg)["chi2_reduced"].values)
    assert chi_after < chi_before
    with pytest.raises(ValueError, match="survey error"):
        adapt_model(model, sig[:-1], {})
    with pytest.raises(ValueError, match="survey error"):
        adapt_model(model, -sig, {})


def test_cli_diagnose_write_model(tiny_model_dir, tmp_path):
    model = gd.load_model(tiny_model_dir)
    cube_path, res_path = tmp_path / "c.zarr", tmp_path / "r.zarr"
    write_spectra(_sky_line_cube(model, MIN_STARS + 4), cube_path, chunk_size=8)
    res = gd.fit(gd.open_spectra(cube_path).load(), model, sampler="map", config={"min_good_pixels": 100})
    res.to_zarr(res_path, zarr_format=3, consolidated=False)
    out, new = tmp_path / "diag", tmp_path / "adapted"
    assert main(["diagnose", str(res_path), "--cube", str(cube_path), "--model", str(tiny_model_dir), "--out", str(out),
                 "--write-model", str(new)]) == 0
    assert (out / "survey_error.png").stat().st_size > 0
    rec = json.loads((new / "model.json").read_text())["survey_error"]
    assert rec["n_stars"] == MIN_STARS + 4 and rec["base_model_id"] == model.model_id
    assert 0 < rec["fraction_of_pixels_raised"] < 0.5
    assert json.loads(rec["fit_config"])["min_good_pixels"] == 100
    assert gd.load_model(new).n_pix == model.n_pix
