"""Injection-recovery: spectra drawn from the emulator at labels drawn from the prior (uniform in
the training box, rv uniform in +-500 km/s), S/N 10, 30 and 100. If the posterior is right, the
16-84% interval covers the truth in 68% of trials (Bayesian coverage averaged over the prior)."""
import numpy as np
import pytest

from gsn_dask.fit.config import FitConfig
from gsn_dask.fit.sampler import fit_spectrum

from .conftest import draw


def _coverage(model, n_trials, seed, config):
    rng = np.random.default_rng(seed)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    hits, z = [], []
    for t in range(n_trials):
        snr = (10.0, 30.0, 100.0)[t % 3]
        truth = lo + rng.random(lo.size) * (hi - lo)
        rv = rng.uniform(-500.0, 500.0)
        flux, ivar = draw(model, truth, snr=snr, rv=rv, seed=seed * 100000 + t)
        r = fit_spectrum(model, flux, ivar, config=config, seed=seed * 100000 + t)
        assert r.status == "ok"
        med = np.r_[r.median, r.rv]
        p16 = np.r_[r.p16, r.rv - r.rv_err]
        p84 = np.r_[r.p84, r.rv + r.rv_err]
        tr = np.r_[truth, rv]
        hits.append((p16 <= tr) & (tr <= p84))
        z.append((med - tr) / (0.5 * (p84 - p16)))
    return np.array(hits), np.array(z)


def test_coverage_fast(model):
    hits, z = _coverage(model, 24, seed=1, config=FitConfig(n_coarse=512))
    frac = hits.mean()
    assert 0.5 < frac < 0.86, frac  # 96 interval checks: +-3.5 sigma of the binomial
    assert np.median(np.abs(z)) < 1.2


@pytest.mark.slow
def test_coverage_slow(model):
    """300 trials (100 per S/N); pooled over labels the 68% interval coverage is 0.68 +- 0.07, and
    every label (and rv) on its own within +-0.1."""
    hits, z = _coverage(model, 300, seed=2, config=FitConfig(n_coarse=512))
    frac = hits.mean()
    per_param = hits.mean(axis=0)
    print("coverage pooled", frac, "per parameter", per_param, "per S/N",
          [hits[k::3].mean() for k in range(3)])
    assert abs(frac - 0.68) < 0.07, frac
    assert np.all(np.abs(per_param - 0.68) < 0.1), per_param
