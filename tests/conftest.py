"""Shared test fixtures: a tiny real GSN model directory and a tiny spectra cube made from it.

* ``tiny_model_dir``: a :class:`gsn_dask.emulator.GSN` (labels teff, logg, feh; 3 x 32 SiLU
  hidden units; LAMOST grid 4800-5600 A, 669 px) built by :func:`gsn_dask.fit.testing.toy_model`
  (fixed random hidden layers, ridge-fitted output layer) and saved with ``GSN.save``.
* ``tiny_cube_path``: a normalised spectra cube (zarr, chunks of 8 stars) of
  ``TINY_N_GOOD`` = 24 stars drawn from that model (S/N 30-80, rv 0) plus ``TINY_BAD`` = 3 bad
  stars: all-NaN flux, all-zero ivar, and only 40 usable pixels. Its grid extends the model's
  by 25 pixels on each side (so the fit must cut the model's pixel slice).
* ``four_label_model_dir`` / ``four_label_cube_path``: the same with a fourth label,
  ``alpha_fe`` (the labels of the synthetic grid's models).
* ``tiny_fit_config``: a FitConfig with very short chains for runner tests.
* ``fault_fns``: the module ``tests/fit_faults.py`` (slow / failing ``fit_fn`` callables),
  registered with cloudpickle so Dask and Spark workers receive them by value.

All session-scoped: built once per test session under pytest's tmp dir.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TINY_N_GOOD = 24
#: bad stars: id -> where it sits in the cube (row index)
TINY_BAD = {"bad-allnan": 5, "bad-ivar0": 13, "bad-fewpix": 22}
TINY_CHUNK = 8
TINY_PAD = 25  # cube pixels beyond the model grid on each side

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


FOUR_LABELS = ("teff", "logg", "feh", "alpha_fe")


def _tiny_model(labels: tuple[str, ...] = ("teff", "logg", "feh")):
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.fit.testing import toy_model

    return toy_model(
        labels=labels,
        hidden=(32, 32, 32),
        wavelength=log_lambda_grid(4800.0, 5600.0),
        n_train=800,
        seed=0,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Directory of a tiny saved GSN (see module docstring)."""
    d = tmp_path_factory.mktemp("tiny_model") / "model"
    _tiny_model().save(d)
    return d


@pytest.fixture(scope="session")
def tiny_cube_path(tiny_model_dir, tmp_path_factory) -> Path:
    """A normalised spectra cube of 27 stars (24 good, 3 bad), zarr chunks of 8 stars."""
    return _tiny_cube(tiny_model_dir, tmp_path_factory.mktemp("tiny_cube") / "cube.zarr")


@pytest.fixture(scope="session")
def four_label_model_dir(tmp_path_factory) -> Path:
    """The tiny GSN with a fourth label, ``alpha_fe`` (-0.2..0.6 dex), as the synthetic grid's models have."""
    d = tmp_path_factory.mktemp("tiny_model4") / "model"
    _tiny_model(FOUR_LABELS).save(d)
    return d


@pytest.fixture(scope="session")
def four_label_cube_path(four_label_model_dir, tmp_path_factory) -> Path:
    """Like ``tiny_cube_path`` (27 stars, 3 bad, chunks of 8), drawn from the four-label model."""
    return _tiny_cube(four_label_model_dir, tmp_path_factory.mktemp("tiny_cube4") / "cube.zarr")


def _tiny_cube(model_dir: Path, path: Path) -> Path:
    """Write the tiny test cube drawn from the model in ``model_dir`` (see module docstring)."""
    from gsn_dask.cube import LAMOST_LOG10_STEP, make_spectra, write_spectra
    from gsn_dask.emulator import load_model
    from gsn_dask.fit.testing import noisy_spectrum

    model = load_model(model_dir)
    rng = np.random.default_rng(42)
    lw = np.log10(model.wavelength)
    k = np.arange(-TINY_PAD, model.n_pix + TINY_PAD)
    wave = 10.0 ** (lw[0] + k * LAMOST_LOG10_STEP)
    n = TINY_N_GOOD + len(TINY_BAD)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    truth = lo + (hi - lo) * (0.15 + 0.7 * rng.random((n, model.n_label)))
    snr = rng.uniform(30.0, 80.0, n)
    flux = np.empty((n, wave.size), np.float32)
    ivar = np.empty((n, wave.size), np.float32)
    sl = slice(TINY_PAD, TINY_PAD + model.n_pix)
    for i in range(n):
        f, iv = noisy_spectrum(model, truth[i], snr=float(snr[i]), rng=rng)
        flux[i] = 1.0 + rng.normal(0.0, 1.0 / snr[i], wave.size)
        ivar[i] = snr[i] ** 2
        flux[i, sl], ivar[i, sl] = f, iv
    ids = [f"tiny-{i:03d}" for i in range(n)]
    for name, i in TINY_BAD.items():
        ids[i] = name
    flux[TINY_BAD["bad-allnan"]] = np.nan
    ivar[TINY_BAD["bad-ivar0"]] = 0.0
    few = TINY_BAD["bad-fewpix"]
    ivar[few] = 0.0
    ivar[few, TINY_PAD + 100 : TINY_PAD + 140] = snr[few] ** 2
    for name, i in TINY_BAD.items():
        truth[i] = np.nan
    ds = make_spectra(
        ids, wave, flux, ivar,
        snr=snr, labels={name: truth[:, j] for j, name in enumerate(model.label_names)},
        source=[f"tiny/{s}" for s in ids], normalised=True, history="tests/conftest.py tiny cube",
    )
    write_spectra(ds, path, chunk_size=TINY_CHUNK)
    return path


@pytest.fixture(scope="session")
def tiny_fit_config():
    """A FitConfig with short chains for fast runner tests (numbers are not science-grade)."""
    from gsn_dask.fit.config import FitConfig

    return FitConfig(
        n_walkers=8, n_burn=10, n_steps=20, max_steps=20, n_coarse=64, n_starts=1, min_good_pixels=100
    )


@pytest.fixture(scope="session")
def fault_fns():
    """The module :mod:`fit_faults` (fault/delay ``fit_fn`` helpers), registered with cloudpickle
    (and pyspark's copy of it) so that Dask and Spark workers receive its callables by value."""
    import cloudpickle

    import fit_faults

    cloudpickle.register_pickle_by_value(fit_faults)
    try:
        from pyspark import cloudpickle as spark_cloudpickle
    except ImportError:
        spark_cloudpickle = None
    if spark_cloudpickle is not None:
        spark_cloudpickle.register_pickle_by_value(fit_faults)
    yield fit_faults
    cloudpickle.unregister_pickle_by_value(fit_faults)
    if spark_cloudpickle is not None:
        spark_cloudpickle.unregister_pickle_by_value(fit_faults)
