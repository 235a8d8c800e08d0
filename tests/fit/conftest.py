"""Fixtures for the fit tests: an analytic toy GSN (real :class:`gsn_dask.emulator.GSN`) and
helpers that draw noisy spectra from it at known labels."""
from __future__ import annotations

import numpy as np
import pytest

from gsn_dask.fit.config import FitConfig
from gsn_dask.fit.testing import noisy_spectrum, toy_model


@pytest.fixture(scope="session")
def model():
    """Toy GSN: teff/logg/feh, 3 x 64 SiLU units, LAMOST grid 3750-8900 A (3753 px)."""
    return toy_model(("teff", "logg", "feh"), hidden=(64, 64, 64), n_train=1500, seed=0)


@pytest.fixture(scope="session")
def truth(model):
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    return lo + 0.4 * (hi - lo)


@pytest.fixture
def config():
    return FitConfig()


def draw(model, labels, *, snr=30.0, rv=0.0, seed=0, continuum=None):
    """A noisy spectrum (flux, ivar) from the emulator at ``labels``."""
    return noisy_spectrum(model, np.asarray(labels, float), snr=snr, rv=rv, rng=np.random.default_rng(seed),
                          continuum=continuum)
