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
    g0, _ = pixel_weights(model, flux, ivar, FitConfig())
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
