"""MAP start: coarse cross-correlation, batched LM vs scipy least_squares."""
import numpy as np
import pytest

from gsn_dask.fit.config import FitConfig
from gsn_dask.fit.posterior import SpectrumPosterior
from gsn_dask.fit.start import coarse_search, find_map

from .conftest import draw


@pytest.mark.parametrize("rv", [-480.0, 0.0, 137.0, 555.0])
def test_coarse_rv_within_a_pixel(model, truth, rv):
    flux, ivar = draw(model, truth, snr=30, rv=rv, seed=11)
    post = SpectrumPosterior(model, flux, ivar, FitConfig())
    _, rvs, chi2 = coarse_search(post, 512)
    assert np.all(np.diff(chi2) >= 0)
    assert abs(rvs[0] - rv) < 69.0  # one LAMOST pixel is 69 km/s


@pytest.mark.parametrize("snr", [10.0, 100.0])
def test_map_close_to_truth_and_methods_agree(model, snr):
    rng = np.random.default_rng(int(snr))
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    for k in range(3):
        truth = lo + (0.1 + 0.8 * rng.random(3)) * (hi - lo)
        rv = rng.uniform(-500, 500)
        flux, ivar = draw(model, truth, snr=snr, rv=rv, seed=100 + k)
        post = SpectrumPosterior(model, flux, ivar, FitConfig())
        a = find_map(post, method="lm")
        b = find_map(post, method="scipy")
        sd = np.sqrt(np.diag(a.cov))
        z = (a.theta - np.r_[truth, rv]) / sd
        assert np.all(np.abs(z) < 5), z
        assert abs(a.log_prob - b.log_prob) < 0.05
        assert np.all(np.abs(a.theta - b.theta) < 0.2 * sd)
        # the Laplace sd is the right order of magnitude compared to a finite-difference curvature
        assert np.all(sd > 0)


def test_an_unknown_map_method_is_refused_before_any_model_evaluation(model, truth):
    flux, ivar = draw(model, truth, snr=30, rv=0.0, seed=3)
    post = SpectrumPosterior(model, flux, ivar, FitConfig())
    with pytest.raises(ValueError, match="unknown MAP method 'bfgs'"):
        find_map(post, method="bfgs")
    assert post.n_eval == 0
