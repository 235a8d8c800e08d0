import numpy as np
import pytest

from gsn_dask.fit.diagnostics import autocorr_time, converged, effective_sample_size, summarise, to_inference_data
from gsn_dask.fit.result import FitResult


def _ar1(rho, n, walkers, ndim, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, walkers, ndim))
    e = rng.normal(size=(n, walkers, ndim)) * np.sqrt(1 - rho**2)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + e[t]
    return x


def test_autocorr_time_of_ar1():
    for rho in (0.0, 0.5, 0.8):
        chain = _ar1(rho, 4000, 16, 2, seed=int(rho * 10))
        tau = autocorr_time(chain)
        expect = (1 + rho) / (1 - rho)
        assert np.all(np.abs(tau - expect) < 0.15 * expect + 0.1), (rho, tau, expect)
        ess = effective_sample_size(chain, tau)
        np.testing.assert_allclose(ess, 4000 * 16 / tau)


def test_converged_rule_and_constant_parameter():
    chain = _ar1(0.5, 300, 8, 2)
    chain[:, :, 1] = 1.0
    tau = autocorr_time(chain)
    assert np.isinf(tau[1])
    assert not converged(300, tau)
    assert converged(300, np.array([3.0, 5.0])) and not converged(200, np.array([3.0, 5.0]))
    s = summarise(_ar1(0.5, 500, 8, 3), acceptance=np.full(8, 0.5))
    assert s["converged"] and s["acceptance"] == 0.5 and s["n_eff_min"] > 500


def test_to_inference_data():
    chain = _ar1(0.3, 50, 6, 3)
    lp = np.random.default_rng(0).normal(size=(50, 6))
    res = FitResult.not_fitted(2, "ok", seed=3, chain=chain, log_prob_chain=lp, param_names=["teff", "logg", "rv"])
    idata = to_inference_data(res)
    post = idata.posterior
    assert post["teff"].shape == (6, 50)  # walkers are chains
    np.testing.assert_array_equal(post["logg"].values, chain[:, :, 1].T)
    assert idata.sample_stats["lp"].shape == (6, 50)
    idata2 = to_inference_data(FitResult.not_fitted(2, "ok", samples=chain[:, 0, :2], param_names=["teff", "logg", "rv"]))
    assert idata2.posterior["teff"].shape == (1, 50)
    with pytest.raises(ValueError):
        to_inference_data(FitResult.not_fitted(1, "x", param_names=["a"]))
