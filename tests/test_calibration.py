"""Calibration: the label-systematics estimate from held-out fits, and the step after training
(``train_and_calibrate``, ``gsn-dask train``) that stores it in the model."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from gsn_dask.calibration import (
    COVERAGE_68,
    MEDIAN_ABS_Z,
    SOLVER_RULES,
    calibrate,
    contradicted_labels,
    estimate_label_systematics,
    refined_labels,
    solve_sigma_coverage,
    solve_sigma_sys,
    solver_rule,
    systematics_record,
)
from gsn_dask.emulator_data import CVFolds
from gsn_dask.fit.config import FitConfig
from gsn_dask.fit.result import systematics_from_record, with_extra_systematics
from gsn_dask.fit.testing import noisy_spectrum, toy_model


@pytest.fixture(scope="module")
def model():
    """Toy GSN: teff/logg/feh, 3 x 64 SiLU units, LAMOST grid 3750-8900 A."""
    return toy_model(("teff", "logg", "feh"), hidden=(64, 64, 64), n_train=1500, seed=0)


def draw(model, labels, *, snr=30.0, rv=0.0, seed=0):
    return noisy_spectrum(model, np.asarray(labels, float), snr=snr, rv=rv, rng=np.random.default_rng(seed))


def test_solve_sigma_sys_recovers_a_gaussian_floor():
    rng = np.random.default_rng(0)
    s = rng.uniform(5.0, 20.0, 4000)
    d = rng.normal(0.0, np.hypot(s, 50.0))
    assert solve_sigma_sys(d, s) == pytest.approx(50.0, rel=0.06)
    z = np.median(np.abs(d) / np.hypot(s, solve_sigma_sys(d, s)))
    assert z == pytest.approx(MEDIAN_ABS_Z, rel=1e-6)
    # statistical errors that already explain the spread: no floor (or a negligible one)
    assert solve_sigma_sys(rng.normal(0.0, s), s) < 3.0
    assert solve_sigma_sys(rng.normal(0.0, 0.5 * s), s) == 0.0
    assert np.isnan(solve_sigma_sys(np.array([np.nan]), np.array([1.0])))


def test_solve_sigma_coverage_covers_68_percent_and_widens_for_heavy_tails():
    rng = np.random.default_rng(1)
    s = rng.uniform(5.0, 20.0, 4000)
    d = rng.normal(0.0, np.hypot(s, 50.0))
    sig = solve_sigma_coverage(d, s)
    assert sig == pytest.approx(50.0, rel=0.08)
    assert np.mean(np.abs(d) <= np.hypot(s, sig * (1 + 1e-9))) >= COVERAGE_68 > np.mean(np.abs(d) <= np.hypot(s, 0.99 * sig))
    # heavy tails (Student t, 2 dof): a median-matched floor covers about 65%, this one 68%
    s = rng.uniform(5.0, 20.0, 20000)
    t = rng.standard_t(2, s.size) * np.hypot(s, 50.0)
    assert solve_sigma_coverage(t, s) > 1.05 * solve_sigma_sys(t, s)
    assert np.mean(np.abs(t) <= np.hypot(s, solve_sigma_sys(t, s))) < 0.665
    assert solve_sigma_coverage(rng.normal(0.0, 0.5 * s), s) == 0.0
    assert np.isnan(solve_sigma_coverage(np.array([np.nan]), np.array([1.0])))


def test_systematics_record_solves_each_label_its_own_way():
    """``target`` label -> rule: the named labels by that rule, the others by ``median``, the bins
    and the method alike; one rule for all equals naming it for every label."""
    rng = np.random.default_rng(4)
    n = 3000
    fit = np.c_[rng.uniform(4000, 6500, n), rng.uniform(1.0, 5.0, n), rng.uniform(-1, 0.3, n)]
    sd = np.full((n, 3), [20.0, 0.02, 0.01])
    delta = rng.standard_t(2, (n, 3)) * np.array([100.0, 0.2, 0.1])  # heavy tails: the two rules differ
    names = ["teff", "logg", "feh"]
    med, cov = (systematics_record(fit, sd, delta, names, target=t) for t in ("median", "coverage"))
    mixed = systematics_record(fit, sd, delta, names, target={"logg": "coverage"})
    assert mixed["sigma"] == {"teff": med["sigma"]["teff"], "logg": cov["sigma"]["logg"], "feh": med["sigma"]["feh"]}
    assert cov["sigma"]["logg"] > 1.05 * med["sigma"]["logg"]
    assert mixed["binned"]["sigma"]["logg"] == cov["binned"]["sigma"]["logg"]
    assert mixed["binned"]["sigma"]["teff"] == med["binned"]["sigma"]["teff"]
    assert systematics_record(fit, sd, delta, names, target=dict.fromkeys(names, "coverage")) == cov
    assert solver_rule({"logg": "coverage"}, names).split("; ")[1] == f"logg: {SOLVER_RULES['coverage']}"


def giants_and_dwarfs(seed: int, giant_sigma: list[float], dwarf_sigma: list[float], n: int = 1200):
    """(fit, sd, delta, giant, names): held-out fits of giants (log g < 3.8) and dwarfs whose
    ``fit - label`` scatters by ``giant_sigma`` / ``dwarf_sigma`` (Teff, log g, [Fe/H])."""
    rng = np.random.default_rng(seed)
    fit = np.c_[rng.uniform(4000, 6500, n), rng.uniform(1.0, 5.0, n), rng.uniform(-1, 0.3, n)]
    giant = fit[:, 1] < 3.8
    sd = np.full((n, 3), [20.0, 0.02, 0.01])
    delta = rng.normal(size=(n, 3)) * np.where(giant[:, None], giant_sigma, dwarf_sigma)
    return fit, sd, delta, giant, ["teff", "logg", "feh"]


def test_systematics_record_classes_giants_and_dwarfs_apart():
    """``split``: the stars fitted below and above a label value get their own floors and bins; the
    fit looks the class up first; extra systematics and the markdown report reach the classes."""
    from gsn_dask.emulator import _drop_label_record
    from gsn_dask.validate.report import _systematics_lines

    fit, sd, delta, giant, names = giants_and_dwarfs(3, [150.0, 0.4, 0.15], [80.0, 0.15, 0.08])
    rec = systematics_record(fit, sd, delta, names, split=("logg", 3.8))
    assert "classes" not in systematics_record(fit, sd, delta, names)
    g, d = rec["classes"]["groups"]
    assert rec["classes"]["by"] == "logg" and rec["classes"]["at"] == [3.8]
    assert g["n_star"] == giant.sum() and d["n_star"] == (~giant).sum()
    assert g["sigma"]["logg"] == pytest.approx(0.4, rel=0.15) and d["sigma"]["logg"] == pytest.approx(0.15, rel=0.15)
    assert len(g["binned"]["edges"]) == 6 and len(d["binned"]["edges"]) == 6  # five Teff bins each
    ls = systematics_from_record(json.loads(json.dumps(rec)), names)
    assert ls.at(np.array([5000.0, 2.5, 0.0]))[1] == pytest.approx(0.4, rel=0.3)
    assert ls.at(np.array([5000.0, 4.5, 0.0]))[1] == pytest.approx(0.15, rel=0.3)
    one_set = systematics_from_record({k: v for k, v in rec.items() if k != "classes"}, names)
    np.testing.assert_array_equal(ls.at(np.array([5000.0, np.nan, 0.0])), one_set.at(np.array([5000.0, 2.0, 0.0])))
    assert json.loads(ls.to_json())["classes"]["groups"][1]["binned"]["sigma"]["logg"] == d["binned"]["sigma"]["logg"]
    wider = with_extra_systematics(ls, names, {"feh": 0.3})
    assert wider.at(np.array([5000.0, 4.5, 0.0]))[2] == pytest.approx(np.hypot(ls.at(np.array([5000.0, 4.5, 0.0]))[2], 0.3))
    assert "feh" not in _drop_label_record(rec, "feh")["classes"]["groups"][0]["sigma"]
    text = "\n".join(_systematics_lines(ls.to_json()))
    assert "Stars fitted at logg < 3.8" in text and "Stars fitted at logg >= 3.8" in text
    # too few stars in a class: no classes, the one-set values stay
    assert "classes" not in systematics_record(fit, sd, delta, names, split=("logg", 1.05))


def test_split_rule_widen_gives_a_class_at_least_the_floor_of_all_stars():
    """``split_rule="widen"``: each class's floor is the larger of its own and the unsplit one at
    the same median, label by label; kept through the record, extra systematics and JSON."""
    fit, sd, delta, _, names = giants_and_dwarfs(4, [150.0, 0.4, 0.05], [80.0, 0.15, 0.15])
    rng = np.random.default_rng(4)
    own = systematics_from_record(systematics_record(fit, sd, delta, names, split=("logg", 3.8)), names)
    rec = systematics_record(fit, sd, delta, names, split=("logg", 3.8), split_rule="widen")
    assert rec["classes"]["rule"] == "widen"
    widen = systematics_from_record(json.loads(json.dumps(rec)), names)
    unsplit = systematics_from_record({k: v for k, v in rec.items() if k != "classes"}, names)
    for m in np.c_[rng.uniform(3500, 7000, 200), rng.choice([2.0, 4.5], 200), np.zeros(200)]:
        np.testing.assert_array_equal(widen.at(m), np.maximum(own.at(m), unsplit.at(m)))
    giant_at, dwarf_at = widen.at(np.array([5000.0, 2.0, 0.0])), widen.at(np.array([5000.0, 4.5, 0.0]))
    assert giant_at[1] == pytest.approx(own.at(np.array([5000.0, 2.0, 0.0]))[1])  # giants: their own, wider log g
    assert dwarf_at[1] == pytest.approx(unsplit.at(np.array([5000.0, 4.5, 0.0]))[1])  # dwarfs: never narrower
    assert giant_at[2] == pytest.approx(unsplit.at(np.array([5000.0, 2.0, 0.0]))[2])  # the giants' narrow [Fe/H]: not taken
    assert json.loads(widen.to_json())["classes"]["rule"] == "widen"
    from gsn_dask.validate.report import _systematics_lines

    assert "never narrows" in "\n".join(_systematics_lines(widen.to_json()))
    assert "never narrows" not in "\n".join(_systematics_lines(own.to_json()))
    assert with_extra_systematics(widen, names, {"teff": 10.0}).widen_only
    assert "rule" not in systematics_record(fit, sd, delta, names, split=("logg", 3.8))["classes"]
    with pytest.raises(ValueError, match="split_rule 'narrow'"):
        systematics_record(fit, sd, delta, names, split=("logg", 3.8), split_rule="narrow")


def test_estimate_recovers_reference_label_noise(model):
    """Spectra made at the true labels, 'reference' labels = truth + known noise: the CV
    estimate must find that noise as the systematic floor (and the statistical z is too wide)."""
    rng = np.random.default_rng(5)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    n = 60
    truth = lo + (hi - lo) * (0.2 + 0.6 * rng.random((n, 3)))
    noise = np.array([120.0, 0.25, 0.12])
    ref = truth + rng.normal(size=(n, 3)) * noise
    flux, ivar = zip(*(draw(model, t, snr=80, rv=rng.uniform(-50, 50), seed=i) for i, t in enumerate(truth)))
    out = estimate_label_systematics([model], np.array(flux), np.array(ivar), ref, np.zeros(n, int),
                                     config=FitConfig(n_coarse=256), max_stars=None)  # default: median
    assert out["n_star"] == n
    got = np.array([out["sigma"][k] for k in ("teff", "logg", "feh")])
    assert np.all((got > 0.6 * noise) & (got < 1.5 * noise)), got
    assert all(out["z_std_stat"][k] > 2.0 for k in out["z_std_stat"])
    assert all(abs(out["z_std_total"][k] - 1.0) < 1e-6 for k in out["z_std_total"])
    cover = estimate_label_systematics([model], np.array(flux), np.array(ivar), ref, np.zeros(n, int),
                                       config=FitConfig(n_coarse=256), max_stars=None, target="coverage")
    got = np.array([cover["sigma"][k] for k in ("teff", "logg", "feh")])
    assert np.all((got > 0.6 * noise) & (got < 1.6 * noise)), got
    assert "68.3%" in cover["method"] and "0.6745" in out["method"]


@pytest.mark.parametrize("by", ["teff", "logg"])
def test_estimate_bins_by_a_label(model, by):
    """With enough stars the estimate also gives binned values (quantile bins of the fitted ``by``)."""
    rng = np.random.default_rng(8)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    n = 40
    truth = lo + (hi - lo) * (0.2 + 0.6 * rng.random((n, 3)))
    ref = truth + rng.normal(size=(n, 3)) * np.array([100.0, 0.2, 0.1])
    flux, ivar = zip(*(draw(model, t, snr=60, seed=100 + i) for i, t in enumerate(truth)))
    out = estimate_label_systematics([model], np.array(flux), np.array(ivar), ref, np.zeros(n, int),
                                     config=FitConfig(n_coarse=256), max_stars=None, min_per_bin=20, by=by)
    b = out["binned"]
    assert b["by"] == by and len(b["edges"]) == 3 and sum(b["n_star"]) == n
    k = ["teff", "logg", "feh"].index(by)
    assert lo[k] <= b["edges"][0] < b["edges"][1] < b["edges"][2] <= hi[k]  # quantiles of that label's fits
    assert all(len(v) == 2 and all(x >= 0 for x in v) for v in b["sigma"].values())
    assert systematics_from_record(out, ["teff", "logg", "feh"]).by == by


def test_estimate_skips_stars_without_a_fold_model(model):
    """``model_index == -1`` stars are not fitted; a star with too few pixels is skipped, not fatal."""
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    truth = lo + (hi - lo) * np.linspace(0.3, 0.7, 6)[:, None]
    flux, ivar = map(np.array, zip(*(draw(model, t, snr=50, seed=i) for i, t in enumerate(truth))))
    ivar[1] = 0.0  # no usable pixel
    idx = np.array([0, 0, -1, 0, -1, 0])
    out = estimate_label_systematics([model], flux, ivar, truth, idx, config=FitConfig(n_coarse=256), max_stars=None)
    assert out["n_star"] == 3
    assert "binned" not in out  # too few stars for bins


def test_contradicted_labels_finds_the_wrong_labels(model):
    """Reference labels = truth + a modest noise, and four stars whose label is far off in one label:
    those four (and no more than a couple of the others) are left out; unfitted stars are kept."""
    rng = np.random.default_rng(11)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    n = 50
    truth = lo + (hi - lo) * (0.25 + 0.5 * rng.random((n, 3)))
    ref = truth + rng.normal(size=(n, 3)) * np.array([80.0, 0.15, 0.08])
    wrong = {3: (0, 1500.0), 17: (1, 1.5), 29: (2, -0.9), 41: (0, -1200.0)}  # star: (label, offset)
    for i, (k, off) in wrong.items():
        ref[i, k] += off
    flux, ivar = map(np.array, zip(*(draw(model, t, snr=60, seed=300 + i) for i, t in enumerate(truth))))
    index = np.zeros(n, int)
    index[45:] = -1  # never held out: never judged
    ref[47, 0] += 3000.0  # ... even with a wrong label
    keep, rec = contradicted_labels(CVFolds([model], index, flux, ivar, ref, 0), 4.0, config=FitConfig(n_coarse=256))
    assert keep.shape == (n,) and keep[45:].all()
    assert not keep[list(wrong)].any()
    assert rec["n_fitted"] == 45 and 4 <= rec["n_left_out"] <= 6 and rec["n_left_out"] == int((~keep).sum())
    assert rec["z_max"] == 4.0 and rec["left_out_by_label"]["teff"] >= 2 and rec["left_out_by_label"]["feh"] >= 1
    keep_loose, _ = contradicted_labels(CVFolds([model], index, flux, ivar, ref, 0), 50.0, config=FitConfig(n_coarse=256))
    assert keep_loose[:45].sum() >= 44  # a loose threshold leaves (almost) nobody out


# ------------------------------------------------------------------ the step after training
#: the rest trains networks: it needs the [torch] extra
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="training needs torch")


@pytest.fixture(scope="module")
def trained():
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.emulator_torch import analytic_cube, train_gsn

    ds = analytic_cube(60, wavelength=log_lambda_grid(4000, 5000), snr=80, seed=5)  # > 500 px: fittable
    return ds, *train_gsn(ds, hidden=16, epochs=6, folds=2, seed=1, threads=1, progress=False)


@needs_torch
def test_training_alone_keeps_its_folds_and_no_systematics(trained):
    ds, model, rep = trained
    assert "label_systematics" not in model.meta
    cv = rep["cv_folds"]
    assert len(cv.models) == 2 and cv.model_index.shape == (60,)
    assert set(np.unique(cv.model_index)) == {0, 1}
    np.testing.assert_array_equal(cv.model_index, rep["fold"])  # K-fold: fold k is held out by model k
    for m in cv.models:  # the fold models carry the CV emulator error
        np.testing.assert_array_equal(m.emulator_error, model.emulator_error)
    np.testing.assert_array_equal(cv.labels, rep["label_values"])


@needs_torch
def test_calibrate_stores_the_record_and_is_deterministic(trained):
    import copy

    _, model, rep = trained
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    cfg = FitConfig(n_coarse=128, n_starts=1)
    r1 = calibrate(m1, rep["cv_folds"], config=cfg)
    r2 = calibrate(m2, rep["cv_folds"], config=cfg)
    assert m1.meta["label_systematics"] is r1
    assert r1["n_star"] > 40 and set(r1["sigma"]) == {"teff", "logg", "feh"}
    assert {k: v for k, v in r1.items() if k != "time_s"} == {k: v for k, v in r2.items() if k != "time_s"}
    assert m1.model_id == model.model_id  # the calibration changes no weight


def test_refined_labels_move_noisy_labels_toward_the_truth(model):
    """Errors in variables: library labels = truth + noise, spectra at the truth; moving each label
    toward its held-out fit by the labels' share brings them closer to the truth, by about that
    share of the way; a share per label moves only that label; nothing leaves the training box."""
    rng = np.random.default_rng(11)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    n = 50
    truth = lo + (hi - lo) * (0.2 + 0.6 * rng.random((n, 3)))
    given = truth + rng.normal(size=(n, 3)) * np.array([150.0, 0.3, 0.15])
    given[0] = hi + 0.1 * (hi - lo)  # a label outside the box is brought back into it
    flux, ivar = (np.array(a) for a in zip(*(draw(model, t, snr=100, seed=i) for i, t in enumerate(truth))))
    index = np.zeros(n, int)
    index[-1] = -1  # never held out: keeps its labels
    cfg = FitConfig(n_coarse=256)
    cv = CVFolds([model], index, flux, ivar, given, seed=0)
    full, rec = refined_labels(cv, 1.0, config=cfg)
    half, rec_half = refined_labels(cv, 0.5, config=cfg)  # the same fits, reused
    only_feh, rec_feh = refined_labels(cv, {"feh": 1.0}, config=cfg)
    assert rec["n_fitted"] == n - 1 and set(rec["sigma_sys"]) == {"teff", "logg", "feh"}
    assert np.all((full >= lo) & (full <= hi))
    np.testing.assert_array_equal(full[-1], given[-1])
    rows = slice(1, n - 1)
    err = lambda lab: np.sqrt(np.mean((lab[rows] - truth[rows]) ** 2, axis=0))  # noqa: E731
    assert np.all(err(full) < 0.6 * err(given)), (err(full), err(given))
    assert np.all((err(half) < err(given)) & (err(half) > err(full)))
    ratio = np.median(np.abs(half[rows] - given[rows]) / np.abs(full[rows] - given[rows]), axis=0)
    np.testing.assert_allclose(ratio, 0.5, atol=0.05)
    np.testing.assert_array_equal(only_feh[rows, :2], given[rows, :2])
    assert not np.array_equal(only_feh[rows, 2], given[rows, 2])
    assert rec_feh["move_median"]["teff"] == 0.0 and rec_half["share"] == 0.5


@needs_torch
def test_calibration_reuses_the_screens_fits(trained, monkeypatch):
    """After the label screen the calibration takes its fits, not new ones: the same record."""
    import copy
    import dataclasses

    import gsn_dask.calibration as cal

    _, model, rep = trained
    cv = dataclasses.replace(rep["cv_folds"])
    cfg = FitConfig(n_coarse=128, n_starts=1)
    fresh = calibrate(copy.deepcopy(model), cv, config=cfg)
    assert cv.fits is None
    contradicted_labels(cv, 50.0, config=cfg)
    assert cv.fits is not None and len(cv.fits[1]) == int((cv.model_index >= 0).sum())

    def no_new_fits(*a, **k):
        raise AssertionError("the calibration fitted the stars again")

    monkeypatch.setattr(cal, "out_of_fold_fits", no_new_fits)
    reused = calibrate(copy.deepcopy(model), cv, config=cfg)
    assert {k: v for k, v in reused.items() if k != "time_s"} == {k: v for k, v in fresh.items() if k != "time_s"}
    with pytest.raises(AssertionError, match="fitted the stars again"):  # other settings: fitted anew
        calibrate(copy.deepcopy(model), cv, config=cfg.replace(n_starts=2))


@needs_torch
def test_train_and_calibrate_honours_the_recipe(tmp_path):
    from gsn_dask.calibration import train_and_calibrate
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.emulator import load_model
    from gsn_dask.emulator_torch import analytic_cube

    ds = analytic_cube(40, wavelength=log_lambda_grid(4000, 5000), snr=80, seed=3)
    kw = dict(hidden=8, epochs=3, folds=2, seed=0, threads=1, progress=False)
    m_off, rep_off = train_and_calibrate(ds, label_systematics=False, **kw)
    assert rep_off["label_systematics"] is None and "label_systematics" not in m_off.meta
    m_on, rep_on = train_and_calibrate(ds, **kw)
    assert m_on.model_id == m_off.model_id  # same network; calibration only adds a record
    m_on.save(tmp_path / "m")
    rec = json.loads((tmp_path / "m" / "model.json").read_text())["label_systematics"]
    assert rec["n_star"] > 30 and rec["sigma"] == pytest.approx(rep_on["label_systematics"]["sigma"])
    assert load_model(tmp_path / "m").meta["training"]["recipe"]["label_systematics"] is True


@needs_torch
def test_label_outlier_z_refits_without_the_contradicted_stars(tmp_path):
    """``label_outlier_z``: the CV, emulator error and label systematics are those of every star; only
    the final network trains without the stars the screen leaves out, and model.json names them."""
    from gsn_dask.calibration import train_and_calibrate
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.emulator import load_model
    from gsn_dask.emulator_torch import analytic_cube, train_gsn

    ds = analytic_cube(200, wavelength=log_lambda_grid(4000, 5000), snr=80, seed=3)  # enough for a usable emulator
    teff = ds["label_teff"].values.copy()
    teff[[5, 22]] += 3000.0  # two library labels their spectra contradict
    ds["label_teff"] = ("star", teff)
    kw = dict(hidden=32, epochs=100, folds=2, seed=0, threads=1, progress=False)
    plain, _ = train_and_calibrate(ds, **kw)
    m, rep = train_and_calibrate(ds, label_outlier_z=4.0, **kw)
    screen = m.meta["training"]["label_screen"]
    stars = [str(s) for s in ds["star"].values]
    assert {stars[5], stars[22]} <= set(screen["stars"]) and screen["n_left_out"] == len(screen["stars"]) < 10
    np.testing.assert_array_equal(m.emulator_error, plain.emulator_error)  # the CV saw every star
    assert rep["label_systematics"]["n_star"] == plain.meta["label_systematics"]["n_star"]
    np.testing.assert_array_equal(m.bounds, plain.bounds)  # the label box is every star's
    assert not np.array_equal(m.W_out, plain.W_out)
    assert "label_screen" not in plain.meta["training"]
    m.save(tmp_path / "m")
    assert load_model(tmp_path / "m").meta["training"]["recipe"]["label_outlier_z"] == 4.0
    with pytest.raises(ValueError, match="label_outlier_z 4.0 needs"):
        train_gsn(ds, label_outlier_z=4.0, **kw)
    with pytest.raises(ValueError, match="labels among"):  # refused before any training
        train_and_calibrate(ds, label_outlier_z={"alpha_fe": 4.0}, **kw)
    only_feh, _ = train_and_calibrate(ds, label_outlier_z={"feh": 4.0}, **kw)  # Teff is not judged
    assert only_feh.meta["training"]["label_screen"]["left_out_by_label"]["teff"] == 0
    assert not {stars[5], stars[22]} & set(only_feh.meta["training"]["label_screen"]["stars"])
    with pytest.raises(ValueError, match="label_outlier_z"):
        train_and_calibrate(ds, label_outlier_z=4.0, **{**kw, "folds": 1})


@needs_torch
def test_label_noise_share_refits_on_the_refined_labels(tmp_path):
    """``label_noise_share``: the CV, emulator error, label systematics and label box come from the
    given labels; only the final network trains on the refined ones, recorded in model.json."""
    from gsn_dask.calibration import train_and_calibrate
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.emulator import load_model
    from gsn_dask.emulator_torch import analytic_cube, train_gsn

    ds = analytic_cube(120, wavelength=log_lambda_grid(4000, 5000), snr=80, seed=3)
    teff = ds["label_teff"].values.copy()
    teff[[5, 22]] += 600.0  # two library labels their spectra disagree with
    ds["label_teff"] = ("star", teff)
    kw = dict(hidden=32, epochs=60, folds=2, seed=0, threads=1, progress=False)
    plain, _ = train_and_calibrate(ds, label_noise_share=None, **kw)
    m, rep = train_and_calibrate(ds, label_noise_share=0.5, **kw)
    eiv = m.meta["training"]["errors_in_variables"]
    assert eiv["share"] == 0.5 and eiv["n_fitted"] == 120 and eiv["move_p90"]["teff"] > 0
    np.testing.assert_array_equal(m.emulator_error, plain.emulator_error)  # the CV trained on the given labels
    assert rep["label_systematics"]["sigma"] == plain.meta["label_systematics"]["sigma"]
    np.testing.assert_array_equal(m.bounds, plain.bounds)
    assert not np.array_equal(m.W_out, plain.W_out) and "errors_in_variables" not in plain.meta["training"]
    m.save(tmp_path / "m")
    assert load_model(tmp_path / "m").meta["training"]["recipe"]["label_noise_share"] == 0.5
    with pytest.raises(ValueError, match="label_noise_share 0.5 needs"):
        train_gsn(ds, label_noise_share=0.5, **kw)
    for bad in (0.0, 1.5, {"alpha_fe": 0.5}):  # refused before any training
        with pytest.raises(ValueError, match="label_noise_share|labels among"):
            train_and_calibrate(ds, label_noise_share=bad, **kw)


@needs_torch
def test_label_noise_share_auto_moves_teff_and_feh_of_observed_stars_only():
    """The default (``auto``): Teff and [Fe/H] at 0.5 where the cube has them and K-fold refit runs;
    nothing for ``train_gsn`` alone (no out-of-fold fits), one held-out split, or a synthetic grid."""
    from gsn_dask.calibration import train_and_calibrate
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.emulator_torch import analytic_cube, train_gsn

    ds = analytic_cube(60, wavelength=log_lambda_grid(4000, 4500), snr=80, seed=4)
    kw = dict(hidden=16, epochs=20, folds=2, seed=0, threads=1, progress=False)
    auto, _ = train_and_calibrate(ds, **kw)
    explicit, _ = train_and_calibrate(ds, label_noise_share={"teff": 0.5, "feh": 0.5}, **kw)
    assert auto.model_id == explicit.model_id
    training = auto.meta["training"]
    assert training["recipe"]["label_noise_share"] == "auto"
    assert training["config"]["label_noise_share"] == training["errors_in_variables"]["share"] == {"teff": 0.5, "feh": 0.5}
    no_feh, _ = train_and_calibrate(ds, labels=("teff", "logg"), **kw)
    assert no_feh.meta["training"]["errors_in_variables"]["share"] == {"teff": 0.5}
    alone, _ = train_gsn(ds, **kw)
    one_split, _ = train_and_calibrate(ds, **{**kw, "folds": 1})
    synthetic, _ = train_and_calibrate(ds.assign(source=("star", np.full(ds.sizes["star"], "turbospectrum:grid"))), **kw)
    for m in (alone, one_split, synthetic):
        assert "errors_in_variables" not in m.meta["training"] and m.meta["training"]["config"]["label_noise_share"] is None


@needs_torch
def test_label_systematics_by_reaches_the_calibration(monkeypatch):
    """``label_systematics_by``: the calibration bins in that label (the network is the same); a
    label the cube lacks is refused before any training."""
    import gsn_dask.calibration as cal
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.emulator_torch import analytic_cube

    seen = []
    real = cal.estimate_label_systematics
    monkeypatch.setattr(cal, "estimate_label_systematics",
                        lambda *a, **k: seen.append((k["by"], k["split"], k["target"])) or real(*a, **k))
    with pytest.raises(ValueError, match="label_systematics_split_rule 'narrow'"):
        cal.train_and_calibrate(analytic_cube(8, wavelength=log_lambda_grid(4000, 4100), seed=1),
                                label_systematics_split_rule="narrow")
    ds = analytic_cube(60, wavelength=log_lambda_grid(4000, 4400), snr=80, seed=5)
    kw = dict(hidden=16, epochs=10, folds=2, seed=0, threads=1, progress=False, label_noise_share=None)
    by_teff, _ = cal.train_and_calibrate(ds, **kw)
    by_logg, _ = cal.train_and_calibrate(ds, label_systematics_by="logg", label_systematics_split=("logg", 3.8),
                                         label_systematics_target="coverage", label_systematics_split_rule="widen", **kw)
    assert seen == [("teff", ("logg", 3.8), "median"), ("logg", ("logg", 3.8), "coverage")]  # giants, dwarfs apart
    assert by_logg.meta["training"]["recipe"]["label_systematics_split_rule"] == "widen"
    np.testing.assert_array_equal(by_teff.W_out, by_logg.W_out)
    assert by_logg.meta["training"]["recipe"]["label_systematics_by"] == "logg"
    assert by_logg.meta["training"]["recipe"]["label_systematics_split"] == ["logg", 3.8]
    for key, bad in (("label_systematics_by", "alpha_fe"), ("label_systematics_split", ("alpha_fe", 0.2))):
        with pytest.raises(ValueError, match=f"{key} 'alpha_fe'"):
            cal.train_and_calibrate(ds, **{key: bad}, **kw)
    with pytest.raises(ValueError, match="label_systematics_target 'alpha_fe'"):
        cal.train_and_calibrate(ds, label_systematics_target={"alpha_fe": "coverage"}, **kw)
    assert len(seen) == 2


@needs_torch
def test_training_never_imports_the_fitter():
    """Training a model (not only importing the module) loads neither gsn_dask.fit nor the calibration."""
    code = (
        "import sys, gsn_dask\n"
        "before = set(sys.modules)\n"  # what the package itself loads (its lazy API)
        "from gsn_dask.cube import log_lambda_grid\n"
        "from gsn_dask.emulator_torch import analytic_cube, train_gsn\n"
        "train_gsn(analytic_cube(30, wavelength=log_lambda_grid(4000, 4200), seed=0), hidden=4, epochs=2,"
        " folds=2, threads=1, progress=False)\n"
        "bad = sorted(m for m in set(sys.modules) - before if m.startswith(('gsn_dask.fit', 'gsn_dask.calibration')))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_train_and_calibrate_threads_cap_the_blas_pools_of_the_whole_step(monkeypatch):
    """The out-of-fold fits that move the labels and set the floors run on numpy: a given thread
    count holds for their BLAS pools too (their last bits, and so the final network, follow it)."""
    pytest.importorskip("torch")
    from threadpoolctl import threadpool_info

    import gsn_dask.emulator_torch as et
    from gsn_dask import calibration

    seen = {}

    def fake_train_gsn(train_ds, recipe, **kw):
        seen["pools"] = {p["num_threads"] for p in threadpool_info()}
        raise RuntimeError("stop after the call")

    monkeypatch.setattr(et, "train_gsn", fake_train_gsn)
    with pytest.raises(RuntimeError, match="stop after the call"):
        calibration.train_and_calibrate(None, threads=1)
    assert seen["pools"] == {1}
