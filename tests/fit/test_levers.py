"""Survey levers of the likelihood: sky-line and window masks, one continuum polynomial per arm."""
from __future__ import annotations

import numpy as np
import pytest

from gsn_dask.fit.config import ConfigError, FitConfig
from gsn_dask.fit.posterior import SpectrumPosterior, continuum_basis, pixel_weights
from gsn_dask.grid.prepare import SKY_LINES_AA, sky_mask

from .conftest import draw


def test_sky_mask_covers_the_lines_only():
    wave = np.linspace(5500, 6400, 9001)
    m = sky_mask(wave)
    for centre, half in SKY_LINES_AA:
        if 5500 < centre < 6400:
            assert m[np.argmin(np.abs(wave - centre))]
    assert not m[np.argmin(np.abs(wave - 6000.0))] and m.mean() < 0.05


def test_masks_give_zero_weight(model, truth):
    flux, ivar = draw(model, truth, snr=50, seed=1)
    wave = np.asarray(model.wavelength)
    g0, _ = pixel_weights(model, flux, ivar, FitConfig(mask_sky=False))
    g1, w1 = pixel_weights(model, flux, ivar, FitConfig(mask_sky=True, mask_windows=[(5700.0, 6000.0)]))
    inside = (wave >= 5700) & (wave <= 6000)
    assert not g1[inside].any() and np.all(w1[inside] == 0)
    assert not g1[sky_mask(wave)].any()
    assert g0[inside].all()
    with pytest.raises(ConfigError, match="mask_windows"):
        FitConfig(mask_windows=[(6000.0, 5700.0)])


def test_continuum_basis_per_arm():
    wave = np.linspace(3700, 7400, 500)
    one = continuum_basis(wave, 3)
    two = continuum_basis(wave, 3, 5900.0)
    assert one.shape == (500, 4) and two.shape == (500, 8)
    red = wave >= 5900
    assert np.all(two[red, :4] == 0) and np.all(two[~red, 4:] == 0)
    np.testing.assert_array_equal(continuum_basis(wave, 3, 9000.0), one)  # split outside: one polynomial
    with pytest.raises(ConfigError, match="arm_split_aa"):
        FitConfig(arm_split_aa=float("nan"))
    with pytest.raises(ConfigError, match="arm_split_aa"):
        FitConfig(arm_split_aa="red")


def test_auto_arm_split_comes_from_the_cube():
    cfg = FitConfig()
    assert cfg.arm_split_aa == "auto" and cfg.split_aa is None
    assert cfg.for_cube({"arm_split_aa": 5900.0}).arm_split_aa == 5900.0
    assert cfg.for_cube({}).arm_split_aa is None
    assert FitConfig(arm_split_aa=None).for_cube({"arm_split_aa": 5900.0}).arm_split_aa is None  # explicit: kept
    assert FitConfig(arm_split_aa=6000.0).for_cube({"arm_split_aa": 5900.0}).arm_split_aa == 6000.0
    with pytest.raises(ConfigError, match="arm_split_aa"):
        cfg.for_cube({"arm_split_aa": "blue"})


def test_blocked_normal_equations_equal_the_full_product(model, truth):
    """With one polynomial per arm, each arm's normal equations use its own pixels only: same G and b."""
    flux, ivar = draw(model, truth, snr=60, seed=4)
    post = SpectrumPosterior(model, flux, ivar, FitConfig(cheb_degree=3, arm_split_aa=5900.0))
    assert post._wTT_blocks is not None and len(post._wTT_blocks) == 2
    assert SpectrumPosterior(model, flux, ivar, FitConfig(arm_split_aa=None))._wTT_blocks is None
    theta = np.tile(np.r_[truth, 10.0], (5, 1)) + np.linspace(0, 1, 5)[:, None]
    ms = post.shift(post.predict(theta[:, :-1]), theta[:, -1]).astype(np.float64)
    G, b = post._normal_equations(ms)
    gp = (ms * ms) @ post._wTT
    for p, (j, k) in enumerate(post._pairs):
        np.testing.assert_allclose(G[:, j, k], gp[:, p], rtol=1e-12, atol=1e-9 * np.abs(gp).max())
    np.testing.assert_allclose(b, ms @ post._wfT, rtol=1e-12)


def test_per_arm_continuum_recovers_a_step_between_arms(model, truth):
    """A spectrum whose red arm is 20% brighter: one polynomial per arm fits it, one polynomial does not."""
    flux, ivar = draw(model, truth, snr=100, seed=2)
    wave = np.asarray(model.wavelength)
    step = np.where(wave >= 5900, 1.2, 1.0)
    flux, ivar = flux * step, ivar / step**2
    theta = np.r_[truth, 0.0]
    chi_one = SpectrumPosterior(model, flux, ivar, FitConfig(cheb_degree=2)).chi2_reduced(theta)
    chi_arms = SpectrumPosterior(model, flux, ivar, FitConfig(cheb_degree=2, arm_split_aa=5900.0)).chi2_reduced(theta)
    assert chi_arms < 1.5 < chi_one


def test_fit_takes_the_arm_split_from_the_cube(model, truth):
    """gd.fit with the default config: a cube recording its arm split (LAMOST ingest) gets one
    polynomial per arm, recorded in the results; a cube without gets one polynomial."""
    import json

    import gsn_dask as gd
    from gsn_dask.cube import make_spectra

    flux, ivar = draw(model, truth, snr=80, seed=3)
    step = np.where(np.asarray(model.wavelength) >= 5900, 1.15, 1.0)  # the red arm 15% brighter
    cube = make_spectra(["a"], model.wavelength, (flux * step)[None], (ivar / step**2)[None])
    one = gd.fit(cube, model, sampler="map")
    cube.attrs["arm_split_aa"] = 5900.0
    two = gd.fit(cube, model, sampler="map")
    assert json.loads(one.attrs["fit_config"])["arm_split_aa"] is None
    assert json.loads(two.attrs["fit_config"])["arm_split_aa"] == 5900.0
    assert float(two["chi2_reduced"][0]) < 1.3 < float(one["chi2_reduced"][0])
