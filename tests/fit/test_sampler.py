"""fit_spectrum: rv and continuum recovery, determinism, bad input, flags, draws."""
import numpy as np
import pytest

from gsn_dask.fit.config import FitConfig
from gsn_dask.fit.diagnostics import to_inference_data
from gsn_dask.fit.result import FitResult
from gsn_dask.fit.sampler import fit_spectrum
from gsn_dask.flags import Flag

from .conftest import draw


def _sigma(res):
    return 0.5 * (res.p84 - res.p16)


def test_rv_shift_recovered(model, truth, config):
    flux, ivar = draw(model, truth, snr=30, rv=137.0, seed=3)
    res = fit_spectrum(model, flux, ivar, config=config, seed=1)
    assert res.status == "ok"
    assert isinstance(res, FitResult) and res.n_good > 500 and res.map_success
    assert abs(res.rv - 137.0) < 3 * res.rv_err, (res.rv, res.rv_err)
    assert 0 < res.rv_err < 10
    assert np.all(np.abs(res.median - truth) < 3 * _sigma(res))
    assert 0.85 < res.chi2_reduced < 1.15
    assert res.n_eff_min >= 100 and res.tau_max * config.tau_factor <= res.n_steps
    assert res.flag == 0
    assert np.all(res.p16 < res.median) and np.all(res.median < res.p84)


def test_continuum_tilt_fitted_as_well(model, truth, config):
    flat = draw(model, truth, snr=50, rv=-60.0, seed=5)
    tilt = draw(model, truth, snr=50, rv=-60.0, seed=5, continuum=[1.0, 0.15, -0.08])
    a = fit_spectrum(model, *flat, config=config, seed=2)
    b = fit_spectrum(model, *tilt, config=config, seed=2)
    s = np.hypot(_sigma(a), _sigma(b))
    assert np.all(np.abs(a.median - b.median) < 2 * s)
    assert abs(a.chi2_reduced - b.chi2_reduced) < 0.1
    assert np.all(np.abs(b.median - truth) < 3 * _sigma(b))
    # without a continuum correction the tilted spectrum fits badly
    c = fit_spectrum(model, *tilt, config=config.replace(cheb_degree=0), seed=2)
    assert c.chi2_reduced > b.chi2_reduced + 0.5


def test_deterministic_same_seed_and_different_seed(model, truth):
    cfg = FitConfig(n_draws=20)
    flux, ivar = draw(model, truth, snr=20, rv=30.0, seed=7)
    a = fit_spectrum(model, flux, ivar, config=cfg, seed=12345, return_chain=True)
    b = fit_spectrum(model, flux, ivar, config=cfg, seed=12345, return_chain=True)
    c = fit_spectrum(model, flux, ivar, config=cfg, seed=12346, return_chain=True)
    np.testing.assert_array_equal(a.chain, b.chain)  # bitwise
    for k in ("median", "p16", "p84", "map", "samples"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.rv == b.rv and a.tau_max == b.tau_max and a.flag == b.flag
    assert not np.array_equal(a.chain, c.chain)
    assert a.samples.shape == (20, 3)
    # posterior summaries from different seeds agree statistically
    assert np.all(np.abs(a.median - c.median) < 0.5 * _sigma(a))
    idata = to_inference_data(a)
    assert idata.posterior.rv.shape == (cfg.n_walkers, a.n_steps)


def test_bad_input_rows(model, truth, config):
    flux, ivar = draw(model, truth)
    n = flux.size
    r = fit_spectrum(model, np.full(n, np.nan), ivar, config=config, seed=1)
    assert r.flag & Flag.NOT_FITTED and "no finite flux" in r.status
    assert np.all(np.isnan(r.median)) and np.isnan(r.rv)
    r = fit_spectrum(model, flux, np.zeros(n), config=config, seed=1)
    assert r.flag & Flag.NOT_FITTED and "ivar" in r.status
    iv = np.zeros(n)
    iv[1000:1300] = ivar[1000:1300]
    r = fit_spectrum(model, flux, iv, config=config, seed=1)
    assert r.flag == Flag.NOT_FITTED | Flag.FEW_PIXELS
    assert r.status.startswith("few good pixels: 300")
    r = fit_spectrum(model, flux[:-5], ivar[:-5], config=config, seed=1)
    assert r.flag & Flag.NOT_FITTED and "shape" in r.status


def test_flags_low_snr_prior_edge(model, config):
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    edge = lo + np.array([0.5, 0.5, 0.0]) * (hi - lo)  # feh at its lower bound
    flux, ivar = draw(model, edge, snr=100, seed=9)
    r = fit_spectrum(model, flux, ivar, config=config, seed=3, snr=5.0)
    assert r.flag & Flag.PRIOR_EDGE
    assert r.flag & Flag.LOW_SNR
    assert r.status == "ok"
    assert np.all(r.median >= lo) and np.all(r.median <= hi)


def test_poor_fit_and_not_converged(model, truth):
    flux, ivar = draw(model, truth, snr=30, seed=10)
    cfg = FitConfig(n_steps=20, max_steps=20, n_burn=10)
    r = fit_spectrum(model, flux, ivar * 9.0, config=cfg, seed=4)  # noise underestimated 3x
    assert r.chi2_reduced > 5 and r.flag & Flag.POOR_FIT
    assert r.flag & Flag.NOT_CONVERGED  # 20 steps < tau_factor (20) tau


@pytest.mark.parametrize("moves", ["de", "stretch"])
def test_other_moves_run(model, truth, moves):
    flux, ivar = draw(model, truth, snr=50, seed=12)
    cfg = FitConfig(moves=moves, n_walkers=12, n_burn=60, n_steps=200, max_steps=200)
    r = fit_spectrum(model, flux, ivar, config=cfg, seed=5)
    assert r.status == "ok"
    assert np.all(np.abs(r.median - truth) < 4 * _sigma(r))


def test_internal_error_becomes_a_status(model, truth, config, monkeypatch):
    import gsn_dask.fit.sampler as smod

    def broken(*a, **k):
        raise np.linalg.LinAlgError("singular")

    monkeypatch.setattr(smod, "find_map", broken)
    flux, ivar = draw(model, truth)
    r = fit_spectrum(model, flux, ivar, config=config, seed=1)
    assert r.status == "error: LinAlgError: singular" and r.flag == Flag.NOT_FITTED


def test_config_errors_raise(model, truth):
    flux, ivar = draw(model, truth)
    with pytest.raises(ValueError, match="n_walkers"):
        fit_spectrum(model, flux, ivar, config=FitConfig(n_walkers=6), seed=1)
    with pytest.raises(ValueError, match="unknown labels"):
        fit_spectrum(model, flux, ivar, config=FitConfig(priors={"mass": (1.0, 0.1)}), seed=1)
