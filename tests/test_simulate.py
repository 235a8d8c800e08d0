"""gsn-dask simulate: a synthetic survey cube whose true labels the fit recovers."""
from __future__ import annotations

import numpy as np
import pytest

import gsn_dask as gd
from gsn_dask.cli import main
from gsn_dask.simulate import SurveySettings, kiel_population, simulate


def test_simulated_cube_schema_truth_and_determinism(tiny_model_dir):
    model = gd.load_model(tiny_model_dir)
    a = simulate(model, 30, seed=3, chunk_size=7).load()
    b = simulate(model, 30, seed=3, chunk_size=30).load()
    # chunking does not matter, to float32 rounding (BLAS may round the last bit with the chunk's shape)
    np.testing.assert_allclose(a["flux"].values, b["flux"].values, rtol=1e-6, atol=1e-6)
    c = simulate(model, 30, seed=4, chunk_size=7).load()
    assert not np.array_equal(a["flux"].values, c["flux"].values)
    assert a.attrs["schema"] == "gsn-dask/spectra/1" and a.attrs["normalised"] is False
    for j, name in enumerate(model.label_names):
        v = a[f"label_{name}"].values
        assert np.all((v >= model.bounds[j, 0]) & (v <= model.bounds[j, 1]))
    assert np.all(np.isfinite(a["flux"].values)) and np.all(a["ivar"].values >= 0)
    snr = a["snr"].values
    assert np.all((snr >= 5) & (snr <= 300))


def test_kiel_population_shape_and_pattern():
    rng = np.random.default_rng(0)
    bounds = {"teff": (3000, 8000), "logg": (0, 5.5), "feh": (-3, 1), "alpha_fe": (-0.2, 0.6)}
    pop = kiel_population(20000, bounds, rng)
    giants = pop["logg"] < 3.0
    assert 0.15 < giants.mean() < 0.35 and pop["teff"][giants].max() < 5400
    assert pop["alpha_fe"][pop["feh"] < -1].mean() > 0.2 and abs(pop["alpha_fe"][abs(pop["feh"]) < 0.1].mean()) < 0.06
    with pytest.raises(ValueError, match="no rule"):
        kiel_population(3, {"vmic": (0, 3)}, rng)


def test_fit_recovers_simulated_labels(tiny_model_dir):
    model = gd.load_model(tiny_model_dir)
    cube = simulate(model, 6, seed=1, settings=SurveySettings(snr_median=80, snr_sigma_ln=0.0)).load()
    res = gd.fit(cube, model, config={"n_steps": 40, "max_steps": 200, "min_good_pixels": 100})
    assert (res["status"].values == "ok").all()
    for j, name in enumerate(model.label_names):
        span = model.bounds[j, 1] - model.bounds[j, 0]
        err = np.abs(res["median"].values[:, j] - cube[f"label_{name}"].values)
        assert np.median(err) < 0.05 * span, name
    assert np.median(np.abs(res["rv"].values - cube["rv_catalog"].values)) < 5.0


def test_cli_simulate_writes_a_store(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sim.zarr"
    assert main(["simulate", "--model", str(tiny_model_dir), "--n", "12", "--chunk-size", "5", "--out", str(out)]) == 0
    cube = gd.open_spectra(out)
    assert cube.sizes["star"] == 12 and cube["flux"].encoding["chunks"][0] == 5
    assert main(["simulate", "--model", str(tiny_model_dir), "--n", "12", "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
