"""The posterior: agreement with an independent plain implementation, bounds, masks, priors."""
import numpy as np
import pytest

from gsn_dask.fit.config import FitConfig
from gsn_dask.fit.geometry import C_KMS, rv_to_pixels
from gsn_dask.fit.posterior import SpectrumPosterior
from gsn_dask.fit.testing import reference_log_prob

from .conftest import draw


def _thetas(model, truth, rv, n, seed=0):
    rng = np.random.default_rng(seed)
    span = model.bounds[:, 1] - model.bounds[:, 0]
    th = np.tile(np.r_[truth, rv], (n, 1))
    th[:, :-1] += rng.normal(0, 0.02, (n, truth.size)) * span
    th[:, -1] += rng.normal(0, 40.0, n)
    return th


@pytest.mark.parametrize("degree, split", [(0, None), (2, None), (3, None), (4, 5900.0)])
def test_matches_reference_implementation(model, truth, degree, split):
    """Vectorised fast path == one-walker-at-a-time np.interp + lstsq path (to 1e-6 relative),
    also with one continuum polynomial per arm (the blocked normal equations)."""
    cfg = FitConfig(cheb_degree=degree, arm_split_aa=split, priors={"logg": (3.0, 0.5)})
    flux, ivar = draw(model, truth, snr=50, rv=137.0, seed=1, continuum=[1.0, 0.05, -0.03])
    post = SpectrumPosterior(model, flux, ivar, cfg)
    th = _thetas(model, truth, 137.0, 12)
    fast = post.log_prob(th)
    ref = np.array([reference_log_prob(model, flux, ivar, t, config=cfg, pixel_range=(post.lo, post.hi)) for t in th])
    assert np.all(np.isfinite(fast))
    np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-3)
    # vectorised == row by row
    single = np.array([post.log_prob(t[None, :])[0] for t in th])
    np.testing.assert_allclose(fast, single, rtol=1e-7, atol=1e-3)  # float32 emulator: gemm vs gemv rounding


def test_truth_is_near_the_maximum(model, truth):
    flux, ivar = draw(model, truth, snr=100, rv=-50.0, seed=2)
    post = SpectrumPosterior(model, flux, ivar, FitConfig())
    at_truth = post.log_prob(np.r_[truth, -50.0][None, :])[0]
    off = post.log_prob(_thetas(model, truth, -50.0, 20, seed=3))
    assert np.all(off < at_truth)
    chi2r = post.chi2_reduced(np.r_[truth, -50.0])
    assert 0.9 < chi2r < 1.1


def test_bounds_give_minus_inf_without_calling_the_emulator(model, truth):
    flux, ivar = draw(model, truth)
    post = SpectrumPosterior(model, flux, ivar, FitConfig())
    th = np.tile(np.r_[truth, 0.0], (4, 1))
    th[0, 0] = model.bounds[0, 1] + 1.0
    th[1, 1] = model.bounds[1, 0] - 1e-3
    th[2, -1] = 601.0
    n0 = post.n_eval
    lp = post.log_prob(th)
    assert np.all(np.isneginf(lp[:3])) and np.isfinite(lp[3])
    assert post.n_eval - n0 == 1  # only the in-bounds row reached the emulator


def test_integer_shift_is_a_slice(model, truth):
    flux, ivar = draw(model, truth)
    post = SpectrumPosterior(model, flux, ivar, FitConfig())
    spec = model.predict(truth[None, :])
    # rv giving exactly +3 pixels
    rv = C_KMS * (10 ** (3 * post.step) - 1)
    assert abs(rv_to_pixels(rv, post.step) - 3) < 1e-9
    out = post.shift(spec, np.array([rv]))
    np.testing.assert_allclose(out[0], spec[0, post.lo - 3 : post.hi - 3], rtol=0, atol=2e-6)


def test_masked_pixels_do_not_matter(model, truth):
    flux, ivar = draw(model, truth, seed=4)
    wave = model.wavelength
    cfg = FitConfig()
    th = _thetas(model, truth, 20.0, 5)
    base = SpectrumPosterior(model, flux, ivar, cfg).log_prob(th)
    f2, iv2 = flux.copy(), ivar.copy()
    iv2[100:200] = 0.0
    f2[100:200] = 1e6  # garbage where ivar = 0
    tell = (wave > 7600) & (wave < 7650)
    f2[tell] = -5.0  # garbage in a telluric band
    f2[300] = np.nan
    iv2[300] = 1.0
    lp2 = SpectrumPosterior(model, f2, iv2, cfg).log_prob(th)
    ref = SpectrumPosterior(model, np.where(np.arange(wave.size) >= 0, flux, 0), np.where(
        (np.arange(wave.size) >= 100) & (np.arange(wave.size) < 200) | (np.arange(wave.size) == 300), 0, ivar), cfg).log_prob(th)
    assert np.all(np.isfinite(lp2))
    np.testing.assert_allclose(lp2, ref, rtol=1e-10)
    assert not np.allclose(lp2, base)  # fewer pixels -> different chi2
    # telluric masking off: the garbage now counts
    lp3 = SpectrumPosterior(model, f2, iv2, FitConfig(mask_telluric=False)).log_prob(th)
    assert np.all(lp3 < lp2 - 100)


def test_gaussian_prior_term(model, truth):
    flux, ivar = draw(model, truth)
    th = _thetas(model, truth, 0.0, 6)
    a = SpectrumPosterior(model, flux, ivar, FitConfig()).log_prob(th)
    b = SpectrumPosterior(model, flux, ivar, FitConfig(priors={"feh": (-0.5, 0.1)})).log_prob(th)
    np.testing.assert_allclose(b - a, -0.5 * ((th[:, 2] + 0.5) / 0.1) ** 2, rtol=1e-9, atol=1e-9)
    # per-star priors override config priors
    c = SpectrumPosterior(model, flux, ivar, FitConfig(priors={"feh": (9.0, 1.0)}), priors={"feh": (-0.5, 0.1)}).log_prob(th)
    np.testing.assert_allclose(c, b, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown labels"):
        SpectrumPosterior(model, flux, ivar, FitConfig(), priors={"mass": (1.0, 0.1)})


def test_residuals_square_sum_is_minus_two_log_prob(model, truth):
    flux, ivar = draw(model, truth, rv=80.0)
    post = SpectrumPosterior(model, flux, ivar, FitConfig(priors={"teff": (5000.0, 300.0)}))
    th = _thetas(model, truth, 80.0, 5)
    r = post.residuals(th)
    np.testing.assert_allclose(np.sum(r * r, axis=1), -2 * post.log_prob(th), rtol=1e-6)
