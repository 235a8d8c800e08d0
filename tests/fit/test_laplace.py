"""The ``map`` quick-look strategy: MAP + Laplace, compared with the emcee posterior."""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import draw
from gsn_dask.fit.block import STRATEGIES, strategy
from gsn_dask.fit.config import SAMPLERS, ConfigError, FitConfig, check_config
from gsn_dask.fit.laplace import fit_map, truncated_percentiles
from gsn_dask.fit.sampler import fit_spectrum


def test_registered_as_a_strategy():
    assert "map" in SAMPLERS and "map" in STRATEGIES
    assert strategy("map").__module__ == "gsn_dask.fit.laplace"


def test_truncated_percentiles_inside_and_at_a_bound():
    q = truncated_percentiles(np.array([0.0]), np.array([1.0]), np.array([-10.0]), np.array([10.0]))
    np.testing.assert_allclose(q[:, 0], [-0.9945, 0.0, 0.9945], atol=1e-3)
    q = truncated_percentiles(np.array([0.0]), np.array([1.0]), np.array([0.0]), np.array([10.0]))
    assert q[0, 0] > 0 and q[1, 0] > 0.5  # half-normal: all percentiles inside the box


@pytest.mark.parametrize("snr", [30.0, 100.0])
def test_map_agrees_with_emcee(model, truth, snr):
    cfg = FitConfig(label_systematics=False, n_draws=50)
    flux, ivar = draw(model, truth, snr=snr, rv=12.0, seed=3)
    quick = fit_map(model, flux, ivar, config=cfg, seed=5)
    full = fit_spectrum(model, flux, ivar, config=cfg, seed=5)
    assert quick.ok and full.ok
    half = 0.5 * (full.p84 - full.p16)
    assert np.all(np.abs(quick.median - full.median) < 0.5 * half)
    ratio = (quick.p84 - quick.p16) / (full.p84 - full.p16)
    assert np.all((ratio > 0.7) & (ratio < 1.4)), ratio
    assert abs(quick.rv - full.rv) < full.rv_err
    assert np.isnan(quick.tau_max) and np.isnan(quick.acceptance)
    assert quick.samples.shape == (50, model.n_label)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    assert np.all((quick.samples >= lo) & (quick.samples <= hi))
    again = fit_map(model, flux, ivar, config=cfg, seed=5)
    np.testing.assert_array_equal(quick.samples, again.samples)


def test_map_bad_input_and_config(model):
    cfg = FitConfig()
    n = model.n_pix
    bad = fit_map(model, np.full(n, np.nan), np.ones(n), config=cfg, seed=1)
    assert not bad.ok and bad.status.startswith("bad input")
    with pytest.raises(ConfigError, match="n_walkers"):
        check_config(FitConfig(n_walkers=6), model, "map")  # the shared checks hold for map too
    with pytest.raises(ConfigError):
        FitConfig(map_n_starts=0)
