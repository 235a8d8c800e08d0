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


def test_drop_starved_arms_leaves_good_arms_alone():
    from gsn_dask.fit.posterior import MIN_ARM_PIXELS_PER_TERM, continuum_arms, drop_starved_arms

    wave = np.linspace(3700, 7400, 400)
    arms = continuum_arms(wave, 4, 5900.0)
    red = wave >= 5900
    good = np.ones((2, wave.size), bool)
    good[1, red] = False
    good[1, np.flatnonzero(red)[:4]] = True  # 4 good red pixels < 10 per term x 5 terms
    w = np.where(good, 2.0, 0.0)
    g, ww, dead = drop_starved_arms(good, w, arms)
    assert MIN_ARM_PIXELS_PER_TERM * 5 > 4
    assert np.array_equal(g[0], good[0]) and np.array_equal(ww[0], w[0]) and not dead[0].any()
    assert not g[1, red].any() and np.all(ww[1, red] == 0) and np.array_equal(g[1, ~red], good[1, ~red])
    assert dead[1].tolist() == [False] * 5 + [True] * 5
    g1, w1, d1 = drop_starved_arms(good[1], w[1], arms)  # one star: the same rule
    assert np.array_equal(g1, g[1]) and np.array_equal(w1, ww[1]) and np.array_equal(d1, dead[1])


@pytest.mark.parametrize("sampler", ["map", "emcee", "batched"])
def test_a_masked_arm_is_left_out_and_flagged(model, truth, sampler):
    """A LAMOST-like spectrum whose red arm is masked (4 good pixels left) is fitted on its blue
    arm and flagged ARM_MISSING by every sampler, instead of failing on a singular continuum
    system; the complete star beside it is fitted as if alone."""
    import gsn_dask as gd
    from gsn_dask.cube import make_spectra
    from gsn_dask.flags import Flag

    if sampler == "batched":
        pytest.importorskip("torch")
    wave = np.asarray(model.wavelength)
    flux, ivar = draw(model, truth, snr=60, seed=5)
    cut = ivar.copy()
    red = np.flatnonzero(wave >= 5900)
    cut[red[4:]] = 0.0
    cube = make_spectra(["cut", "whole"], wave, np.stack([flux, flux]), np.stack([cut, ivar]))
    cube.attrs["arm_split_aa"] = 5900.0
    cfg = {"n_walkers": 10, "n_burn": 20, "n_steps": 40} if sampler != "map" else {}
    res = gd.fit(cube, model, sampler=sampler, config=cfg, seed=1)
    assert [str(s) for s in res["status"].values] == ["ok", "ok"]
    flags = [int(f) for f in res["flag"].values]
    assert flags[0] & Flag.ARM_MISSING and not flags[1] & Flag.ARM_MISSING
    half = 0.5 * (res["p84"].values - res["p16"].values)
    assert np.all(np.abs(res["median"].values[0] - truth) < 4 * half[0])
    alone = gd.fit(cube.isel(star=[1]), model, sampler=sampler, config=cfg, seed=1)
    assert np.array_equal(alone["median"].values[0], res["median"].values[1])


def test_a_left_out_arm_in_the_posterior(model, truth):
    """The continuum system stays solvable (residuals, the LM start's path), the dof counts the
    live terms only and the best-fit model has no continuum (NaN) on the left-out arm."""
    wave = np.asarray(model.wavelength)
    flux, ivar = draw(model, truth, snr=60, seed=6)
    ivar[wave >= 5900] = 0.0
    cfg = FitConfig(cheb_degree=4, arm_split_aa=5900.0)
    post = SpectrumPosterior(model, flux, ivar, cfg)
    theta = np.r_[truth, 0.0]
    assert post.arm_missing and post.n_cont == 10 and post.dof == post.n_good - post.ndim - 5
    r = post.residuals(theta[None, :])
    assert np.isfinite(r).all() and 0.8 < post.chi2_reduced(theta) < 1.2
    m = post.model_flux(theta)
    assert np.isnan(m[wave >= 5900]).all() and np.isfinite(m[(wave < 5900) & (wave > 3800)]).all()
