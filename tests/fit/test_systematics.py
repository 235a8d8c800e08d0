"""Label systematics in the fit: the interval widening, the model record lookup, and both samplers
applying it (the estimate itself is the calibration step: tests/test_calibration.py)."""
import copy

import numpy as np
import pytest

from gsn_dask.fit.config import FitConfig
from gsn_dask.fit.result import model_label_systematics, systematics_from_record, widen_intervals
from gsn_dask.fit.sampler import fit_spectrum

from .conftest import draw


def test_widen_intervals_quadrature_and_draws():
    sig = np.array([0.3, 0.0])
    draws = np.random.default_rng(1).normal(size=(400, 2))
    res = {"status": "ok", "median": np.array([1.0, 2.0]), "p16": np.array([0.9, 1.5]),
           "p84": np.array([1.2, 2.5]), "samples": draws.copy()}
    out = widen_intervals(copy.deepcopy(res), sig)
    np.testing.assert_allclose(out["p16"], [1.0 - np.hypot(0.1, 0.3), 1.5])
    np.testing.assert_allclose(out["p84"], [1.0 + np.hypot(0.2, 0.3), 2.5])
    np.testing.assert_array_equal(out["median"], res["median"])
    np.testing.assert_array_equal(out["p16_stat"], res["p16"])
    off = out["samples"] - draws
    assert abs(off[:, 0].mean()) < 1e-3 and off[:, 0].std() == pytest.approx(0.3, rel=0.02)
    np.testing.assert_array_equal(off[:, 1], 0.0)
    again = widen_intervals(copy.deepcopy(res), sig)  # deterministic: no random stream
    np.testing.assert_array_equal(again["samples"], out["samples"])
    # not fitted or no systematics: untouched
    bad = {**copy.deepcopy(res), "status": "bad input"}
    assert widen_intervals(bad, sig)["p16"] is bad["p16"]
    assert widen_intervals(copy.deepcopy(res), None)["p84"][0] == 1.2


def test_model_label_systematics(model):
    m = copy.copy(model)
    m.meta = {**model.meta, "label_systematics": {"sigma": {"teff": 100.0, "logg": 0.2, "feh": 0.1}}}
    np.testing.assert_allclose(model_label_systematics(m, FitConfig()).sigma, [100.0, 0.2, 0.1])
    np.testing.assert_allclose(model_label_systematics(m, FitConfig()).at(np.array([9e3, 1.0, 0.0])), [100.0, 0.2, 0.1])
    assert model_label_systematics(m, FitConfig(label_systematics=False)) is None
    m.meta = {**model.meta, "label_systematics": {"sigma": {"teff": 100.0, "logg": None, "feh": 0.1}}}
    assert model_label_systematics(m, FitConfig()) is None
    assert model_label_systematics(model, FitConfig()) is None  # the toy model has none
    with pytest.raises(ValueError, match="label_systematics"):
        FitConfig(label_systematics="yes")


@pytest.mark.parametrize("sampler", ["emcee", "batched"])
def test_samplers_fold_systematics_into_intervals(model, truth, sampler):
    m = copy.copy(model)
    sig = np.array([150.0, 0.3, 0.15])
    m.meta = {**model.meta, "label_systematics": {"sigma": dict(zip(m.label_names, sig.tolist()))}}
    flux, ivar = draw(m, truth, snr=40, seed=11)
    on, off = FitConfig(n_draws=50), FitConfig(n_draws=50, label_systematics=False)
    if sampler == "emcee":
        a, b = fit_spectrum(m, flux, ivar, config=on, seed=3), fit_spectrum(m, flux, ivar, config=off, seed=3)
    else:
        from gsn_dask.fit.batched import fit_spectra_batched

        a, = fit_spectra_batched(m, flux[None], ivar[None], config=on.replace(device="cpu"), seeds=[3])
        b, = fit_spectra_batched(m, flux[None], ivar[None], config=off.replace(device="cpu"), seeds=[3])
    np.testing.assert_array_equal(a.median, b.median)
    np.testing.assert_allclose(a.p84 - a.median, np.hypot(b.p84 - b.median, sig))
    np.testing.assert_allclose(a.median - a.p16, np.hypot(b.median - b.p16, sig))
    assert a.rv_err == b.rv_err
    assert np.all(a.samples.std(0) > b.samples.std(0))


def test_binned_systematics_lookup_and_json_round_trip():
    rec = {"sigma": {"teff": 100.0, "logg": 0.2, "feh": 0.1},
           "binned": {"by": "teff", "edges": [3500.0, 4500.0, 6500.0, 9000.0],
                      "sigma": {"teff": [150.0, 90.0, 200.0], "logg": [0.4, 0.2, 0.3], "feh": [0.2, 0.1, 0.3]}}}
    names = ["teff", "logg", "feh"]
    ls = systematics_from_record(rec, names)
    np.testing.assert_allclose(ls.at(np.array([5000.0, 4.0, 0.0])), [90.0, 0.2, 0.1])
    np.testing.assert_allclose(ls.at(np.array([3000.0, 4.0, 0.0])), [150.0, 0.4, 0.2])  # below: first bin
    np.testing.assert_allclose(ls.at(np.array([12000.0, 4.0, 0.0])), [200.0, 0.3, 0.3])  # above: last bin
    np.testing.assert_allclose(ls.at(np.array([np.nan, 4.0, 0.0])), [100.0, 0.2, 0.1])  # no median: global
    back = systematics_from_record(ls.to_json(), names)  # as stored in the results attrs
    np.testing.assert_allclose(back.at(np.array([7000.0, 1.0, 0.0])), [200.0, 0.3, 0.3])
    res = {"status": "ok", "median": np.array([7000.0, 4.0, 0.0]), "p16": np.array([6990.0, 3.9, -0.1]),
           "p84": np.array([7010.0, 4.1, 0.1]), "samples": None}
    np.testing.assert_allclose(widen_intervals(res, ls)["p84"] - res["median"], np.hypot([10.0, 0.1, 0.1], [200.0, 0.3, 0.3]))
    bad = {**rec, "binned": {**rec["binned"], "sigma": {**rec["binned"]["sigma"], "feh": [0.2, 0.1]}}}
    assert systematics_from_record(bad, names).by is None  # incomplete bins: global values only
    assert systematics_from_record("null", names) is None
    no_edge = {**rec, "binned": {**rec["binned"], "edges": [None, 4500.0, 6500.0, 9000.0]}}
    assert systematics_from_record(no_edge, names).by is None  # a damaged record: global values, no crash


def test_extra_systematics_add_in_quadrature(model):
    m = copy.copy(model)
    m.meta = {**model.meta, "label_systematics": {
        "sigma": {"teff": 100.0, "logg": 0.2, "feh": 0.1},
        "binned": {"by": "teff", "edges": [3500.0, 6000.0, 9000.0],
                   "sigma": {"teff": [80.0, 200.0], "logg": [0.2, 0.3], "feh": [0.1, 0.2]}}}}
    cfg = FitConfig(extra_systematics={"teff": 150.0})
    ls = model_label_systematics(m, cfg)
    np.testing.assert_allclose(ls.sigma, [np.hypot(100, 150), 0.2, 0.1])
    np.testing.assert_allclose(ls.at(np.array([7000.0, 4.0, 0.0])), [np.hypot(200, 150), 0.3, 0.2])
    assert model_label_systematics(m, cfg.replace(label_systematics=False)) is None  # statistical only
    only = model_label_systematics(model, FitConfig(extra_systematics={"feh": 0.05}))  # a model without a record
    np.testing.assert_allclose(only.sigma, [0.0, 0.0, 0.05])
    assert FitConfig.from_dict(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="extra_systematics"):
        FitConfig(extra_systematics={"teff": -1.0})
    from gsn_dask.fit.config import ConfigError, check_config

    with pytest.raises(ConfigError, match="extra_systematics for unknown labels"):
        check_config(FitConfig(extra_systematics={"alpha_fe": 0.1}), model)
