"""Torch GSN: training on analytic spectra, numpy/torch agreement, CLI end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gsn_dask.cube import log_lambda_grid, write_spectra  # noqa: E402
from gsn_dask.emulator import load_model  # noqa: E402
from gsn_dask.emulator_torch import (  # noqa: E402
    analytic_cube,
    net_from_gsn,
    pixel_weights,
    predict_torch,
    robust_emulator_error,
    stratified_folds,
    train_gsn,
)

WAVE = log_lambda_grid(4000, 4500)  # ~500 px


@pytest.fixture(scope="module")
def trained():
    ds = analytic_cube(300, wavelength=WAVE, seed=0)
    model, rep = train_gsn(
        ds, hidden=48, epochs=150, folds=1, lr=3e-3, batch_size=32, weight_floor=0.0,
        patience=60, seed=3, threads=1, progress=False,
    )
    return ds, model, rep


def labels_of(ds, names):
    return np.stack([ds[f"label_{n}"].values for n in names], axis=1).astype(np.float64)


def test_training_reaches_small_heldout_residual(trained):
    _, model, rep = trained
    test = analytic_cube(200, wavelength=WAVE, seed=7)
    lab = labels_of(test, model.label_names)
    resid = model.predict(lab) - test["flux"].values
    med = float(np.median(np.abs(resid)))
    assert med < 0.004, med  # the network really learned (flux depth up to ~0.8)
    const = float(np.median(np.abs(test["flux"].values - test["flux"].values.mean(0))))
    assert med < 0.1 * const
    assert model.label_names == ["teff", "logg", "feh"]
    assert rep["n_star"] == 300 and rep["cv_median_abs_resid"] < 0.005
    assert model.emulator_error.shape == (WAVE.size,)
    assert np.all(model.emulator_error >= 0) and np.median(model.emulator_error) < 0.01


def test_numpy_torch_agree(trained):
    ds, model, _ = trained
    lab = labels_of(ds, model.label_names)
    p_np = model.predict(lab)
    p_t = predict_torch(model, lab, batch_size=97)
    np.testing.assert_allclose(p_np, p_t, rtol=0, atol=2e-5)
    net = net_from_gsn(model)
    with torch.no_grad():
        h_t = net.hidden_forward(torch.from_numpy(model.scale(lab))).numpy()
    np.testing.assert_allclose(model.hidden(lab), h_t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["tanh", "leaky_relu"])
def test_numpy_torch_agree_other_activations(act):
    ds = analytic_cube(40, wavelength=WAVE, seed=1)
    model, _ = train_gsn(ds, hidden=8, activation=act, epochs=3, folds=1, progress=False, threads=1)
    lab = labels_of(ds, model.label_names)
    np.testing.assert_allclose(model.predict(lab), predict_torch(model, lab), atol=2e-5)


def test_save_load_round_trip_bitwise(trained, tmp_path):
    ds, model, rep = trained
    lab = labels_of(ds, model.label_names)
    before = model.predict(lab)
    model.save(tmp_path / "m")
    m2 = load_model(tmp_path / "m", labels=["teff", "logg", "feh"])
    np.testing.assert_array_equal(m2.predict(lab), before)
    np.testing.assert_array_equal(m2.emulator_error, model.emulator_error)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["training"]["n_star"] == 300
    assert meta["training"]["cube_source"] == "analytic"
    assert meta["normalisation"]["method"] == "none"
    assert meta["cv"]["kind"] == "holdout"
    assert meta["label_scaling"]["range"] == [-0.5, 0.5]
    assert meta["label_scaling"]["transforms"] == ["log10", "identity", "identity"]
    assert len(meta["wavelength"]["values"]) == WAVE.size


def test_reproducible_with_seed():
    ds = analytic_cube(60, wavelength=WAVE, seed=2)
    kw = dict(hidden=8, epochs=5, folds=2, seed=11, progress=False, threads=1)
    m1, _ = train_gsn(ds, **kw)
    m2, _ = train_gsn(ds, **kw)
    assert m1.model_id == m2.model_id
    np.testing.assert_array_equal(m1.W_out, m2.W_out)
    m3, _ = train_gsn(ds, **{**kw, "seed": 12})
    assert m3.model_id != m1.model_id


def test_kfold_and_ivar_zero_pixels():
    ds = analytic_cube(80, wavelength=WAVE, snr=50, seed=4)
    ivar = ds["ivar"].values.copy()
    ivar[:, :30] = 0  # no star covers the first 30 px -> trimmed from the model grid
    ivar[::2, 100:120] = 0
    flux = ds["flux"].values.copy()
    flux[::2, 100:120] = np.nan  # bad values with ivar 0 must not poison training
    ds["ivar"].values[:] = ivar
    ds["flux"].values[:] = flux
    model, rep = train_gsn(ds, hidden=16, epochs=20, folds=3, seed=0, progress=False, threads=1)
    assert model.n_pix == WAVE.size - 30
    assert model.pixel_slice(WAVE) == slice(30, WAVE.size)
    assert len(rep["folds"]) == 3 and np.all(rep["val_mask"])
    assert np.all(np.isfinite(model.predict(labels_of(ds, model.label_names))))
    assert model.meta["cv"]["kind"] == "kfold"


def test_pixel_weights():
    ivar = np.array([[0.0, 1e4, 1e6, np.inf]], np.float32)
    w = pixel_weights(ivar, 0.01)
    assert w[0, 0] == 0
    assert w[0, 1] < w[0, 2] < w[0, 3] + 1e-6
    assert abs(w[0, 1:].mean() - 1) < 1e-5


def test_stratified_folds():
    v = np.random.default_rng(0).uniform(size=103)
    f = stratified_folds(v, 5, 0)
    counts = np.bincount(f, minlength=5)
    assert counts.min() >= 20 and counts.max() <= 21
    # each fold spans the full range of v
    for k in range(5):
        assert v[f == k].min() < 0.1 and v[f == k].max() > 0.9


def test_robust_emulator_error_recovers_injected_scatter():
    rng = np.random.default_rng(0)
    n, p = 2000, 4
    sig = rng.uniform(0.005, 0.02, size=(n, p))  # heteroscedastic noise
    s_true = np.array([0.0, 0.003, 0.01, 0.03])
    r = rng.normal(size=(n, p)) * np.sqrt(sig**2 + s_true**2)
    r[:20] = 1.0  # outlier stars
    ivar = 1 / sig**2
    s = robust_emulator_error(r, ivar)
    np.testing.assert_allclose(s[1:], s_true[1:], rtol=0.15)
    assert s[0] < 0.3 * np.median(sig)  # below the detection floor of 2000 noisy residuals


def test_cli_help_and_end_to_end(tmp_path, capsys):
    from gsn_dask.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "--activation" in capsys.readouterr().out
    cube = tmp_path / "train.zarr"
    write_spectra(analytic_cube(60, wavelength=WAVE, snr=80, seed=5), cube)
    out = tmp_path / "model"
    rc = main(["train", str(cube), "--out", str(out), "--hidden", "8", "--epochs", "4", "--folds", "2",
               "--threads", "1", "--labels", "teff", "logg", "feh"])
    assert rc == 0
    txt = capsys.readouterr().out
    assert "n_star" in txt and "cv_resid_per_pixel_median" in txt and "train_time_s" in txt
    assert (out / "diagnostics.png").stat().st_size > 1000
    m = load_model(out)
    assert m.label_names == ["teff", "logg", "feh"] and m.hidden_widths == [8, 8, 8]
    assert m.meta["training"]["cube_path"] == str(cube.resolve())
    # refuses to overwrite, then does with --overwrite; wrong labels are an error
    assert main(["train", str(cube), "--out", str(out), "--epochs", "1"]) == 1
    assert main(["train", str(cube), "--out", str(out), "--labels", "teff", "vsini", "--epochs", "1"]) == 1
    # an explicit split on a label that is not trained: refused before any training, with the reason
    new = tmp_path / "model2"
    assert main(["train", str(cube), "--out", str(new), "--labels", "teff", "feh", "--label-systematics-split",
                 "logg=3.8", "--epochs", "1"]) == 1
    assert "'logg' is not among the training labels" in capsys.readouterr().err and not new.exists()


def test_merge_ensemble_predicts_the_mean(trained):
    from gsn_dask.emulator_torch import merge_ensemble

    ds, model, _ = trained
    other, _ = train_gsn(analytic_cube(50, wavelength=WAVE, seed=9), hidden=48, epochs=2, folds=1,
                         progress=False, threads=1)
    # same scaling is required: rebuild `other` with model's bounds via a tiny retrain is overkill;
    # instead perturb a copy of model's weights
    from gsn_dask.emulator import GSN

    rng = np.random.default_rng(0)
    twin = GSN(hidden_layers=[(W + rng.normal(0, 0.01, W.shape), b) for W, b in model.hidden_layers],
               W_out=model.W_out * 1.01, b_out=model.b_out, activation=model.activation,
               label_names=model.label_names, bounds=model.bounds, wavelength=model.wavelength,
               label_transforms=model.label_transforms)
    ens = merge_ensemble([model, twin])
    lab = labels_of(ds, model.label_names)[:20]
    np.testing.assert_allclose(ens.predict(lab), 0.5 * (model.predict(lab) + twin.predict(lab)), atol=3e-6)
    assert ens.hidden_widths == [96, 96, 96]
    assert ens.layer_blocks[0] is None and all(b.shape == (2, 48, 48) for b in ens.layer_blocks[1:])
    with pytest.raises(ValueError, match="differ"):
        merge_ensemble([model, other])


def test_progress_in_a_log_is_one_line_per_stage(capsys):
    """Not on a terminal (pytest captures stderr): no progress-bar redraws, one line per fold
    and a summary line at the end."""
    ds = analytic_cube(40, wavelength=WAVE, seed=6)
    model, _ = train_gsn(ds, hidden=8, epochs=12, folds=3, seed=0, threads=1, progress=True)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and "it/s" not in err
    assert len(lines) == 4, err  # fold 1/3, 2/3, 3/3, summary
    assert lines[-1].startswith("[gsn-dask train] trained GSN " + model.model_id)
    train_gsn(ds, hidden=8, epochs=2, folds=2, seed=0, threads=1, progress=False)
    assert capsys.readouterr().err == ""


def test_recipe_is_recorded_and_ranges_may_select_on_any_label(tmp_path):
    from gsn_dask.emulator_recipe import DEFAULT_RECIPE, TrainRecipe

    ds = analytic_cube(80, wavelength=WAVE, seed=8)
    feh = ds["label_feh"].values
    model, rep = train_gsn(ds, labels=["teff", "logg"], label_ranges={"feh": (-1.0, 0.5)}, hidden=8, epochs=2,
                           folds=2, threads=1, progress=False)
    assert rep["n_star"] == int(np.sum((feh >= -1.0) & (feh <= 0.5))) < 80
    assert model.label_names == ["teff", "logg"]
    model.save(tmp_path / "m")
    training = json.loads((tmp_path / "m" / "model.json").read_text())["training"]
    recipe = TrainRecipe.from_json(training["recipe"])
    assert recipe == DEFAULT_RECIPE.replace(labels=("teff", "logg"), label_ranges={"feh": (-1.0, 0.5)}, hidden=8,
                                            epochs=2, folds=2)
    assert training["recipe_is_default"] is False and training["config"]["hidden"] == [8, 8, 8]
    with pytest.raises(ValueError, match="unknown training setting"):
        train_gsn(ds, epoch=3)
    with pytest.raises(ValueError, match="does not have"):
        train_gsn(ds, label_ranges={"vsini": (0, 10)}, epochs=1, progress=False)


def test_the_thread_count_used_is_recorded_also_when_torch_chose_it():
    """``training.config.threads``: the count given, else torch's own (a network depends on it)."""
    ds = analytic_cube(40, wavelength=WAVE, seed=8)
    kw = dict(hidden=8, epochs=1, folds=1, progress=False, label_systematics=False)
    assert train_gsn(ds, threads=None, **kw)[0].meta["training"]["config"]["threads"] == torch.get_num_threads() >= 1
    assert train_gsn(ds, threads=1, **kw)[0].meta["training"]["config"]["threads"] == 1


def test_cli_without_label_systematics_and_all_stars(tmp_path, capsys):
    from gsn_dask.cli import main

    cube = tmp_path / "train.zarr"
    write_spectra(analytic_cube(40, wavelength=WAVE, snr=80, seed=5), cube)
    rc = main(["train", str(cube), "--out", str(tmp_path / "m"), "--hidden", "8", "--epochs", "2", "--folds", "2",
               "--threads", "1", "--no-label-systematics", "--all-stars", "--no-figure", "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --no-progress: nothing on stderr
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert "label_systematics" not in meta
    assert meta["training"]["recipe"]["label_ranges"] is None and meta["training"]["recipe"]["label_systematics"] is False


def test_synthetic_rows_by_source():
    from gsn_dask.cube import synthetic_rows

    src = ["turbospectrum:fce3dac26e", "MILES:MILES_m0001", "/data/PHOENIX/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits",
           "../shared/data/lamost/dr1/spec-55859-F5902_sp01-001.fits.gz", "analytic"]
    assert synthetic_rows(src).tolist() == [True, False, True, False, False]


def _mixed_cube(n_obs: int = 60, n_syn: int = 40):
    """An analytic cube whose last ``n_syn`` stars are marked synthetic (Turbospectrum sources) and
    the observed ones carry noise and a MILES-like source."""
    ds = analytic_cube(n_obs + n_syn, wavelength=WAVE, snr=60, seed=11)
    src = [f"MILES:s{i}" for i in range(n_obs)] + [f"turbospectrum:{i:04x}" for i in range(n_syn)]
    ds["source"] = ("star", np.array(src, dtype=object))
    ds.attrs["source"] = "MILES+synthetic"
    return ds


def test_loss_weights_scale_the_synthetic_stars_only():
    from gsn_dask.emulator_data import loss_weights, observed_rows
    from gsn_dask.emulator_recipe import DEFAULT_RECIPE

    ivar = np.full((4, 10), 1e4, np.float32)
    obs = observed_rows(np.array([False, False, True, True]))
    same = loss_weights(ivar, obs, DEFAULT_RECIPE.weight_floor, 1.0)
    np.testing.assert_array_equal(same, pixel_weights(ivar, DEFAULT_RECIPE.weight_floor))  # weight 1: unchanged
    w = loss_weights(ivar, obs, DEFAULT_RECIPE.weight_floor, 0.25)
    assert np.isclose(w.mean(), 1.0) and np.allclose(w[2:] / w[:2], 0.25)


def test_a_mixed_cube_calibrates_and_takes_its_prior_from_the_observed_stars():
    ds = _mixed_cube()
    model, rep = train_gsn(ds, hidden=16, epochs=3, folds=3, threads=1, progress=False, synthetic_weight=0.3)
    from gsn_dask import label_prior as lp

    assert model.meta["training"]["n_synthetic"] == 40 and model.meta["training"]["recipe"]["synthetic_weight"] == 0.3
    assert model.meta["training"]["config"]["label_prior"] == "kiel"  # MILES+synthetic counts as observed
    assert lp.for_model(model).record["n_star"] == 60
    idx = rep["cv_folds"].model_index
    assert np.all(idx[60:] == -1) and np.all(idx[:60] >= 0)  # the calibration fits observed stars only
    # the emulator error is that of the observed (noisy) stars' residuals, not of the mix
    from gsn_dask.emulator_torch import robust_emulator_error

    resid = rep["oof_pred"] - rep["flux"]
    np.testing.assert_array_equal(model.emulator_error, robust_emulator_error(resid[:60], rep["ivar"][:60]))
    assert not np.array_equal(model.emulator_error, robust_emulator_error(resid, rep["ivar"]))


def test_source_input_keeps_the_observed_branch_with_the_cube_labels():
    from gsn_dask.calibration import calibrate

    model, rep = train_gsn(_mixed_cube(), hidden=16, epochs=3, folds=3, threads=1, progress=False, source_input=True)
    assert model.label_names == ["teff", "logg", "feh"] and model.meta["fixed_labels"] == {"observed": 1.0}
    assert model.meta["training"]["recipe"]["source_input"] is True
    assert model.hidden_layers[0][0].shape[0] == 3  # the input folded away: the usual fit cost
    assert all(m.label_names == model.label_names for m in rep["cv_folds"].models)
    rec = calibrate(model, rep["cv_folds"])  # the observed stars, fitted by the observed branch
    assert set(rec["sigma"]) == {"teff", "logg", "feh"} and rec["n_star"] <= 60
    plain, _ = train_gsn(_mixed_cube(), hidden=16, epochs=3, folds=3, threads=1, progress=False)
    assert not np.array_equal(plain.hidden_layers[0][1], model.hidden_layers[0][1])


def test_distil_trains_one_network_close_to_the_teacher():
    """recipe distil = M: the model is one network of the recipe's size, trained on the average of M
    final networks, and it reproduces that average better than the members agree with each other."""
    from gsn_dask.emulator_recipe import TrainRecipe
    from gsn_dask.emulator_data import DISTIL_COPIES
    from gsn_dask.emulator_torch import _distil, _fit_net, _gsn_from_net, merge_ensemble

    ds = analytic_cube(120, wavelength=WAVE, seed=4)
    recipe = TrainRecipe(hidden=24, epochs=30, folds=2, batch_size=32, lr=3e-3, weight_floor=0.0, distil=3, seed=5)
    model, rep = train_gsn(ds, recipe, threads=1, progress=False)
    assert model.hidden_widths == [24, 24, 24] and "ensemble" not in model.meta
    rec = model.meta["training"]["distillation"]
    assert rec["members"] == 3 and rec["copies"] == DISTIL_COPIES and rec["n_star"] == 120
    assert model.meta["training"]["recipe"]["distil"] == 3
    # the same step by hand: members, teacher, student
    lab = labels_of(ds, model.label_names)
    x = model.scale(lab)
    y = np.asarray(ds["flux"].values, np.float32)
    w = np.ones_like(y)
    template = {"label_names": model.label_names, "bounds": model.bounds, "label_transforms": model.label_transforms,
                "wavelength": model.wavelength, "label_units": model.label_units, "normalisation": model.normalisation}
    kw = dict(hidden=[24] * 3, activation="silu", dropout=0.0, epochs=30, batch_size=32, lr=3e-3, weight_decay=1e-4,
              patience=0, device=torch.device("cpu"), progress=False, desc="")
    first, second, third = (_gsn_from_net(_fit_net(x, y, w, None, None, None, seed=sd, **kw)[0], template, None, {})
                            for sd in (1, 5 + 7919, 5 + 2 * 7919))
    teacher = merge_ensemble([first, second, third])
    student, _ = _distil(teacher, x, 3, recipe=recipe, template=template, epochs=30, device=torch.device("cpu"),
                         progress=False)
    test = labels_of(analytic_cube(60, wavelength=WAVE, seed=8), model.label_names)
    rms = lambda a, b: float(np.sqrt(np.mean((a.predict(test) - b.predict(test)) ** 2)))  # noqa: E731
    assert student.hidden_widths == [24, 24, 24]
    assert rms(student, teacher) < 0.5 * rms(first, second), (rms(student, teacher), rms(first, second))


def test_distil_needs_a_refit_of_single_networks():
    from gsn_dask.emulator_recipe import TrainRecipe

    for bad in ({"distil": 0}, {"distil": 2, "folds": 1}, {"distil": 2, "ensemble": 2}, {"distil": 2, "final": "none"}):
        with pytest.raises(ValueError, match="distil"):
            TrainRecipe(**bad)
