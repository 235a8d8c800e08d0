"""fit_block: results schema, bad rows, chunking invariance, raw cubes, per-star priors."""
import json

import numpy as np
import pytest

from gsn_dask.cube import make_spectra, validate_results
from gsn_dask.fit.block import fit_block
from gsn_dask.fit.config import FitConfig
from gsn_dask.flags import Flag

from .conftest import draw

PAD = 12


def _cube(model, labels, *, rv=None, snr=40.0, normalised=True, scale=None, seed=0, ids=None, extra=None):
    """A cube on the model grid extended by PAD pixels each side."""
    lw = np.log10(model.wavelength)
    step = np.median(np.diff(lw))
    k = np.arange(-PAD, model.wavelength.size + PAD)
    wave = 10.0 ** (lw[0] + k * step)
    n = len(labels)
    rv = np.zeros(n) if rv is None else rv
    flux = np.ones((n, wave.size), np.float32)
    ivar = np.full((n, wave.size), snr**2, np.float32)
    for i, lab in enumerate(labels):
        f, iv = draw(model, lab, snr=snr, rv=rv[i], seed=seed + i)
        flux[i, PAD:-PAD], ivar[i, PAD:-PAD] = f, iv
    if scale is not None:
        flux *= scale[None, :]
        ivar /= scale[None, :] ** 2
    ids = ids or [f"s{i}" for i in range(n)]
    ds = make_spectra(ids, wave, flux, ivar, snr=np.full(n, snr), normalised=normalised)
    for name, values in (extra or {}).items():
        ds[name] = ("star", np.asarray(values, dtype=np.float32))
    return ds


@pytest.fixture(scope="module")
def fast_cfg():
    return FitConfig(n_burn=30, n_steps=80, max_steps=80, n_coarse=256, n_draws=4)


def test_block_rows_bad_stars_and_chunking(model, fast_cfg):
    rng = np.random.default_rng(0)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    labels = lo + (0.2 + 0.6 * rng.random((6, 3))) * (hi - lo)
    ds = _cube(model, labels, rv=np.array([0, 50, -100, 200, 0, 0.0]))
    ds["flux"].values[1] = np.nan  # all-NaN
    ds["ivar"].values[2] = 0.0  # no ivar
    ds["ivar"].values[3, 300:] = 0.0  # few good pixels (288 < 500)
    res = fit_block(ds, model, config=fast_cfg, run_seed=7)
    validate_results(res)
    assert list(res["star"].values) == list(ds["star"].values)
    assert list(res["label"].values) == model.label_names
    st = [str(s) for s in res["status"].values]
    assert st[0] == st[4] == st[5] == "ok"
    assert "no finite flux" in st[1] and "ivar" in st[2] and st[3].startswith("few good pixels")
    assert res["flag"].values[3] == Flag.NOT_FITTED | Flag.FEW_PIXELS
    assert np.all(res["flag"].values[[1, 2]] & Flag.NOT_FITTED)
    assert np.all(np.isnan(res["median"].values[1:4]))
    good = [0, 4, 5]
    sig = 0.5 * (res["p84"].values[good] - res["p16"].values[good])
    assert np.all(np.abs(res["median"].values[good] - labels[good]) < 4 * sig)
    assert res["samples"].shape == (6, 4, 3) and np.all(np.isfinite(res["samples"].values[good]))
    a = res.attrs
    assert a["seed"] == 7 and a["sampler"] == "emcee" and a["model_id"] == model.model_id
    assert FitConfig.from_dict(json.loads(a["fit_config"])) == fast_cfg.for_cube(ds.attrs)  # "auto" resolved
    # the same stars in other chunks / order give bitwise the same rows
    part = fit_block(ds.isel(star=[5, 0]), model, config=fast_cfg, run_seed=7)
    for name in ("median", "p16", "p84", "map", "rv", "tau_max", "samples"):
        np.testing.assert_array_equal(part[name].values[0], res[name].values[5])
        np.testing.assert_array_equal(part[name].values[1], res[name].values[0])
    # another run seed changes the chain
    other = fit_block(ds.isel(star=[0]), model, config=fast_cfg, run_seed=8)
    assert not np.array_equal(other["samples"].values[0], res["samples"].values[0])


def test_off_grid_cube_is_flagged_not_raised(model, fast_cfg):
    ds = _cube(model, [model.bounds.mean(axis=1)] * 2)
    shifted = ds.assign_coords(wavelength=ds["wavelength"].values * 1.00002)  # 0.09 px misaligned
    res = fit_block(shifted, model, config=fast_cfg, run_seed=0)
    assert all(str(s).startswith("model mismatch") for s in res["status"].values)
    assert np.all(res["flag"].values == Flag.NOT_FITTED)


def test_per_star_priors(model, fast_cfg):
    lab = model.bounds.mean(axis=1)
    ds = _cube(model, [lab, lab], snr=10, extra={"prior_feh_mu": [np.nan, lab[2] + 0.6],
                                                   "prior_feh_sigma": [np.nan, 0.01]})
    res = fit_block(ds, model, config=fast_cfg, run_seed=1)
    assert abs(res["median"].values[1, 2] - (lab[2] + 0.6)) < 0.05
    assert abs(res["median"].values[0, 2] - lab[2]) < 0.3


def test_error_in_one_star_is_caught(model, fast_cfg, monkeypatch):
    import gsn_dask.fit.sampler as smod
    from gsn_dask.fit.seeds import star_seed

    ds = _cube(model, [model.bounds.mean(axis=1)] * 2)
    real = smod._sample

    def flaky(post, mres, cfg, seed):
        if seed == star_seed(3, "s1"):
            raise FloatingPointError("boom")
        return real(post, mres, cfg, seed)

    monkeypatch.setattr(smod, "_sample", flaky)
    res = fit_block(ds, model, config=fast_cfg, run_seed=3)
    assert str(res["status"].values[0]) == "ok"
    assert str(res["status"].values[1]) == "error: FloatingPointError: boom"
    assert res["flag"].values[1] == Flag.NOT_FITTED


def test_raw_cube_is_normalised_with_the_model_recipe(model, fast_cfg):
    lab = model.bounds[:, 0] + np.array([0.6, 0.5, 0.6]) * (model.bounds[:, 1] - model.bounds[:, 0])
    base = _cube(model, [lab], snr=60)
    w = base["wavelength"].values
    scale = (1e3 * (w / 5000.0) ** -2.0).astype(np.float32)  # smooth raw-flux shape
    raw = _cube(model, [lab], snr=60, normalised=False, scale=scale)
    a = fit_block(base, model, config=fast_cfg, run_seed=2)
    b = fit_block(raw, model, config=fast_cfg, run_seed=2)
    assert str(b["status"].values[0]) == "ok"
    assert b["chi2_reduced"].values[0] < 2.0
    span = model.bounds[:, 1] - model.bounds[:, 0]
    assert np.all(np.abs(b["median"].values[0] - a["median"].values[0]) < 0.05 * span)


def test_strategy_registry(model, fast_cfg):
    """Every sampler of the config has a strategy with fit_many; an unknown one is refused."""
    from gsn_dask.fit import block as block_mod
    from gsn_dask.fit.config import SAMPLERS, ConfigError

    assert tuple(block_mod.STRATEGIES) == SAMPLERS
    for name in SAMPLERS:
        assert callable(block_mod.strategy(name))
    ds = _cube(model, [model.bounds.mean(axis=1)])
    with pytest.raises(ConfigError, match="unknown sampler"):
        fit_block(ds, model, config=fast_cfg, run_seed=0, sampler="nuts")


@pytest.mark.parametrize("sampler", ["emcee", "batched"])
@pytest.mark.parametrize("change, match", [
    ({"n_walkers": 6}, "n_walkers"),
    ({"priors": {"foo": (1.0, 2.0)}}, "unknown labels"),
    ({"rv_bounds_kms": (0.0, 0.001)}, "rv_bounds_kms"),
])
def test_config_that_does_not_fit_the_model_raises_before_any_star(model, fast_cfg, sampler, change, match, monkeypatch):
    """Both samplers refuse such a config with ConfigError (a run-level error), not error rows."""
    from gsn_dask.fit import block as block_mod
    from gsn_dask.fit.config import ConfigError

    def no_fit(*a, **k):
        raise AssertionError("a star was fitted")

    monkeypatch.setattr(block_mod, "strategy", lambda name: no_fit)
    ds = _cube(model, [model.bounds.mean(axis=1)])
    with pytest.raises(ConfigError, match=match):
        fit_block(ds, model, config=fast_cfg.replace(**change), run_seed=0, sampler=sampler)


@pytest.mark.parametrize("sampler", ["emcee", "batched"])
def test_huge_flux_is_bad_input_for_both_samplers(model, fast_cfg, sampler):
    """A spectrum of 1e30 gets the same clear NOT_FITTED row from both samplers, and its neighbours
    are fitted: in a normalised cube the flux is out of range; in a raw cube (ivar unchanged) the
    normalisation brings the flux to ~1 and the inverse variance to ~1e57."""
    lab = model.bounds.mean(axis=1)
    for normalised in (True, False):
        ds = _cube(model, [lab, lab], normalised=normalised)
        ds["flux"].values[1] = 1e30
        res = fit_block(ds, model, config=fast_cfg.replace(n_burn=20, n_steps=20, max_steps=20), run_seed=0,
                        sampler=sampler)
        st = [str(s) for s in res["status"].values]
        assert st[0] == "ok", st
        want = "bad input: normalised " + ("flux" if normalised else "ivar") + " out of range"
        assert st[1].startswith(want), st[1]
        assert res["flag"].values[1] == Flag.NOT_FITTED and np.isnan(res["median"].values[1]).all()


@pytest.mark.parametrize("sampler", ["emcee", "batched"])
def test_thin_as_long_as_the_chain(model, fast_cfg, sampler):
    """thin = n_steps keeps one step per walker: percentiles and draws still come from it."""
    ds = _cube(model, [model.bounds.mean(axis=1)])
    cfg = fast_cfg.replace(n_steps=20, max_steps=20, thin=20)
    res = fit_block(ds, model, config=cfg, run_seed=0, sampler=sampler)
    assert str(res["status"].values[0]) == "ok"
    assert np.isfinite(res["median"].values[0]).all() and np.isfinite(res["samples"].values[0]).all()


def test_fit_does_not_import_torch(model, fast_cfg):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from gsn_dask.fit.testing import toy_model, noisy_spectrum\n"
        "from gsn_dask.fit.block import fit_block\n"
        "from gsn_dask.fit.sampler import fit_spectrum\n"
        "from gsn_dask.fit.config import FitConfig\n"
        "m = toy_model(hidden=(16, 16, 16), n_train=200)\n"
        "f, iv = noisy_spectrum(m, m.bounds.mean(1), snr=30, rng=np.random.default_rng(0))\n"
        "r = fit_spectrum(m, f, iv, config=FitConfig(n_burn=10, n_steps=20, max_steps=20, n_coarse=64), seed=1)\n"
        "assert r.status == 'ok', r.status\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
