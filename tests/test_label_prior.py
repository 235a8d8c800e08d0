"""The Kiel-diagram prior (gsn_dask.label_prior): its grid, interpolation, how it moves the reported
labels, its storage in the model, the training recipe and the fit settings that switch it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gsn_dask import label_prior as lp
from gsn_dask.emulator import load_model
from gsn_dask.fit.config import ConfigError, FitConfig, check_config
from gsn_dask.fit.result import FitResult, report_labels, reporting

TEFF_B, LOGG_B = (3000.0, 12000.0), (0.0, 5.5)


def _stars(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A main sequence (log g falls from 4.7 at 4000 K to 4.1 at 7000 K) and a red-giant clump."""
    rng = np.random.default_rng(seed)
    t_ms = rng.uniform(4000, 7000, n)
    g_ms = 4.7 - 0.6 * (t_ms - 4000) / 3000 + rng.normal(0, 0.05, n)
    t_g = rng.uniform(4200, 5200, n // 2)
    g_g = rng.normal(2.5, 0.2, n // 2)
    return np.r_[t_ms, t_g], np.r_[g_ms, g_g]


@pytest.fixture(scope="module")
def prior() -> lp.KielPrior:
    return lp.build(*_stars(), TEFF_B, LOGG_B)


def test_every_teff_column_peaks_at_one_and_the_floor_bounds_it(prior):
    assert prior.log_p.shape == (lp.SHAPE[1], lp.SHAPE[0])
    np.testing.assert_allclose(prior.log_p.max(axis=0), 0.0, atol=1e-12)  # p(log g | Teff): no Teff preference
    assert prior.log_p.min() >= np.log(lp.FLOOR) - 1e-12
    # at 4500 K the dwarfs (4.6) and the giants (2.5) are likely, log g 3.6 and 5.3 are not
    at = lambda g: float(lp.log_density(prior, np.array([4500.0]), np.array([g]))[0])  # noqa: E731
    assert at(4.6) > -0.5 and at(2.5) > -1.0 and at(3.6) < -2.0 and at(5.3) < -2.5


def test_bilinear_interpolation_hits_the_nodes_and_takes_edge_values_outside(prior):
    x = prior.x0 + prior.dx * np.array([3, 40, 95])
    y = prior.y0 + prior.dy * np.array([0, 17, 63])
    np.testing.assert_allclose(lp.log_density(prior, 10**x, y), prior.log_p[[0, 17, 63], [3, 40, 95]], atol=1e-9)
    beyond = lp.log_density(prior, np.array([1000.0, 1e5]), np.array([-2.0, 9.0]))  # beyond the grid: edge values
    np.testing.assert_allclose(beyond, [prior.log_p[0, 0], prior.log_p[-1, -1]], atol=1e-12)


def test_apply_moves_an_implausible_dwarf_onto_the_main_sequence(prior):
    lower, upper = np.array([TEFF_B[0], LOGG_B[0], -3.0]), np.array([TEFF_B[1], LOGG_B[1], 1.0])
    med, p16, p84 = np.array([4500.0, 5.0, -0.2]), np.array([4350.0, 4.7, -0.3]), np.array([4650.0, 5.3, -0.1])
    m2, l2, h2 = lp.apply(prior, med, p16, p84, (0, 1), lower, upper)
    assert 4.45 < m2[1] < 4.8 and h2[1] - l2[1] < p84[1] - p16[1]  # pulled to the dwarfs, narrower
    assert (m2[2], l2[2], h2[2]) == (-0.2, -0.3, -0.1)  # [Fe/H] untouched
    flat = lp.build(*_stars(), TEFF_B, LOGG_B, floor=1.0)  # log p = 0 everywhere: nothing moves
    m3, l3, h3 = lp.apply(flat, med, p16, p84, (0, 1), lower, upper)
    np.testing.assert_allclose(np.r_[m3, l3, h3], np.r_[med, p16, p84], rtol=0, atol=2e-3 * 150)


def test_reweighted_draws_are_deterministic_and_unchanged_by_a_flat_prior(prior):
    rng = np.random.default_rng(2)
    draws = np.column_stack([rng.normal(4500, 150, 400), rng.normal(4.0, 0.6, 400), rng.normal(0, 0.1, 400)])
    a, b = lp.reweight_draws(prior, draws, (0, 1)), lp.reweight_draws(prior, draws, (0, 1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == draws.shape and np.abs(np.median(a[:, 1]) - 4.5) < np.abs(np.median(draws[:, 1]) - 4.5)
    flat = lp.build(*_stars(), TEFF_B, LOGG_B, floor=1.0)
    np.testing.assert_array_equal(lp.reweight_draws(flat, draws, (0, 1)), draws)


def test_the_model_carries_it_in_model_json_and_its_id(tiny_model_dir, tmp_path):
    base = load_model(tiny_model_dir)
    assert lp.for_model(base) is None
    t, g = _stars()
    m = lp.with_label_prior(base, t, g)
    assert m.model_id != base.model_id and lp.for_model(m) is not None
    m.save(tmp_path / "m")
    back = load_model(tmp_path / "m")  # the stored id is recomputed from the prior too
    assert back.model_id == m.model_id
    np.testing.assert_array_equal(lp.for_model(back).log_p, lp.for_model(m).log_p)
    assert lp.with_label_prior(base, t, g).model_id == m.model_id  # deterministic
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["label_prior"]["log_p"][0][0] -= 1.0  # edited prior: no longer the model it claims to be
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match the content"):
        load_model(tmp_path / "m")


def test_a_prior_changed_in_memory_is_saved_under_the_id_of_what_is_written(tiny_model_dir, tmp_path):
    base = load_model(tiny_model_dir)
    m = lp.with_label_prior(base, *_stars())
    m.meta.pop("label_prior")  # e.g. a script giving a network another model's reporting
    m.save(tmp_path / "m")
    back = load_model(tmp_path / "m")  # refused before: the id of the model with its prior
    assert back.model_id == m.model_id == base.model_id and lp.for_model(back) is None


def test_fit_settings_switch_it_and_the_result_stage_applies_it(tiny_model_dir):
    base = load_model(tiny_model_dir)
    m = lp.with_label_prior(base, *_stars())
    with pytest.raises(ConfigError, match="label_prior"):
        FitConfig(label_prior="isochrone")
    with pytest.raises(ConfigError, match="has no Kiel prior"):
        check_config(FitConfig(label_prior="kiel"), base, "emcee")
    check_config(FitConfig(label_prior="kiel"), m, "emcee")
    assert reporting(m, FitConfig(label_prior="none")).prior is None and reporting(base, FitConfig()).prior is None
    how = reporting(m, FitConfig())
    assert how.prior is not None and how.prior_idx == (0, 1) and json.loads(how.prior_json())["n_star"] == 600
    res = FitResult(median=np.array([4800.0, 4.2, 0.0]), p16=np.array([4700.0, 4.0, -0.1]),
                    p84=np.array([4900.0, 4.4, 0.1]), map=np.array([4800.0, 4.2, 0.0]), status="ok")
    before = res.median.copy()
    report_labels(res, how)
    assert res.median[1] != before[1] and res.median[2] == before[2] and np.all(res.p16 <= res.median)


def test_the_recipe_gives_observed_libraries_a_prior_and_synthetic_grids_none():
    from gsn_dask.emulator_recipe import DEFAULT_RECIPE

    assert DEFAULT_RECIPE.label_prior == "auto"
    assert DEFAULT_RECIPE.kiel_prior_for({"source": "MILES"})
    assert DEFAULT_RECIPE.kiel_prior_for({"source": "MILES+synthetic"})  # a hybrid cube: its observed stars
    assert not DEFAULT_RECIPE.kiel_prior_for({"source": "synth"}) and not DEFAULT_RECIPE.kiel_prior_for({})
    assert DEFAULT_RECIPE.replace(label_prior="kiel").kiel_prior_for({"source": "synth"})
    assert not DEFAULT_RECIPE.replace(label_prior="none").kiel_prior_for({"source": "MILES"})
    with pytest.raises(ValueError, match="label_prior"):
        DEFAULT_RECIPE.replace(label_prior="gaia")


def test_training_stores_it_and_each_fold_model_gets_its_own():
    pytest.importorskip("torch")
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.emulator_torch import analytic_cube, train_gsn

    ds = analytic_cube(90, wavelength=log_lambda_grid(4000, 4300), seed=5)
    ds.attrs["source"] = "MILES"
    model, rep = train_gsn(ds, hidden=8, epochs=2, folds=3, threads=1, progress=False)
    assert model.meta["training"]["config"]["label_prior"] == "kiel"
    assert lp.for_model(model).record["n_star"] == rep["n_star"]
    folds = rep["cv_folds"].models
    assert len({m.model_id for m in folds}) == 3
    for j, m in enumerate(folds):  # a fold's prior knows only the stars it was trained on
        assert lp.for_model(m).record["n_star"] == int(np.sum(rep["fold"] != j))
    plain, _ = train_gsn(ds, hidden=8, epochs=2, folds=3, threads=1, progress=False, label_prior="none")
    assert lp.for_model(plain) is None and plain.meta["training"]["config"]["label_prior"] == "none"
