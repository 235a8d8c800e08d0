"""Tests for gsn_dask.cube: grids, spectra/results schema, zarr write/append/open."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from gsn_dask import cube
from gsn_dask.cube import CubeSchemaError
from gsn_dask.flags import Flag


def _ds(ids, wave=None, seed=0, labels=True, **kw):
    wave = cube.log_lambda_grid(5000, 5100) if wave is None else wave
    rng = np.random.default_rng(seed)
    n = len(ids)
    lab = {"teff": rng.uniform(4000, 6000, n), "logg": rng.uniform(1, 5, n)} if labels else None
    return cube.make_spectra(
        ids, wave, rng.normal(1, 0.1, (n, wave.size)), rng.uniform(1, 2, (n, wave.size)),
        ra=rng.uniform(0, 360, n), snr=rng.uniform(5, 50, n), labels=lab, source=[f"f{i}.fits" for i in ids], **kw,
    )


# ------------------------------------------------------------------------ grids
def test_lamost_grid():
    w = cube.log_lambda_grid()
    assert w.size == 3909
    assert w[0] == pytest.approx(10**3.5682) and w[0] == pytest.approx(3699.99, abs=0.01)
    assert w[-1] == pytest.approx(10 ** (3.5682 + 3908e-4)) and w[-1] < 9100
    np.testing.assert_allclose(np.diff(np.log10(w)), 1e-4, rtol=1e-9)
    assert cube.grid_log10_step(w) == pytest.approx(1e-4, rel=1e-9)
    # a sub-range is a run of the same pixels
    sub = cube.log_lambda_grid(4800, 5600)
    k0 = int(np.argmin(np.abs(w - sub[0])))
    np.testing.assert_allclose(w[k0 : k0 + sub.size], sub, rtol=1e-13)
    assert sub[0] >= 4800 * (1 - 1e-5) and sub[-1] <= 5600 * (1 + 1e-5)


def test_grid_log10_step_rejects_non_log_grids():
    with pytest.raises(CubeSchemaError):
        cube.grid_log10_step(np.array([5000.0]))
    with pytest.raises(CubeSchemaError):
        cube.grid_log10_step(np.linspace(4000, 9000, 1000))  # linear: log step varies by 2x
    with pytest.raises(CubeSchemaError):
        cube.grid_log10_step(np.array([3.0, 2.0, 1.0]))


# ------------------------------------------------------------------------ spectra
def test_make_spectra_schema():
    ds = _ds(["a", "b", "c"])
    cube.validate_spectra(ds)
    assert ds.flux.dtype == np.float32 and ds.ivar.dtype == np.float32
    assert ds.ra.dtype == np.float64 and ds.snr.dtype == np.float32
    assert np.all(np.isnan(ds.dec.values)) and np.all(np.isnan(ds.rv_catalog.values))
    assert cube.label_names(ds) == ["teff", "logg"]
    assert ds.label_teff.attrs["units"] == "K" and ds.label_logg.attrs["units"] == "dex"
    assert ds.attrs["schema"] == cube.SPECTRA_SCHEMA and ds.attrs["normalised"] is False
    assert ds.attrs["wavelength_medium"] == "vacuum"
    with pytest.raises(CubeSchemaError, match="n_star"):
        cube.make_spectra(["a"], np.arange(1.0, 5.0), np.ones((2, 4)), np.ones((2, 4)))


def test_validate_spectra_errors():
    ds = _ds(["a", "b"])
    with pytest.raises(CubeSchemaError, match="schema"):
        cube.validate_spectra(ds.assign_attrs(schema="x"))
    with pytest.raises(CubeSchemaError, match="missing variable 'snr'"):
        cube.validate_spectra(ds.drop_vars("snr"))
    with pytest.raises(CubeSchemaError, match="vacuum"):
        cube.validate_spectra(ds.assign_attrs(wavelength_medium="air"))
    with pytest.raises(CubeSchemaError, match="unique"):
        cube.validate_spectra(_ds(["a", "a"]))
    with pytest.raises(CubeSchemaError, match="increase"):
        cube.validate_spectra(ds.isel(wavelength=slice(None, None, -1)))


def test_write_open_roundtrip(tmp_path):
    ds = _ds([f"s{i}" for i in range(10)])
    p = cube.write_spectra(ds, tmp_path / "c.zarr", chunk_size=4)
    got = cube.open_spectra(p)
    assert got.flux.encoding["chunks"] == (4, ds.sizes["wavelength"])
    assert got.source.encoding["chunks"] == (4,)
    got = got.load()
    np.testing.assert_array_equal(got.flux.values, ds.flux.values)
    np.testing.assert_array_equal(got.wavelength.values, ds.wavelength.values)
    np.testing.assert_array_equal(got.label_teff.values, ds.label_teff.values)
    assert [str(s) for s in got.star.values] == [str(s) for s in ds.star.values]
    assert [str(s) for s in got.source.values] == [str(s) for s in ds.source.values]
    assert got.attrs["schema"] == cube.SPECTRA_SCHEMA
    with pytest.raises(FileExistsError):
        cube.write_spectra(ds, p)
    cube.write_spectra(ds.isel(star=slice(0, 2)), p, overwrite=True)
    assert cube.open_spectra(p).sizes["star"] == 2
    with pytest.raises(FileNotFoundError):
        cube.open_spectra(tmp_path / "nope.zarr")


def test_append_keeps_chunks_and_values(tmp_path):
    a, b = _ds([f"a{i}" for i in range(5)], seed=1), _ds([f"b{i}" for i in range(6)], seed=2)
    p = tmp_path / "c.zarr"
    cube.write_spectra(a, p, chunk_size=4)
    cube.write_spectra(b, p, chunk_size=99, append=True)  # the stored chunk size wins
    got = cube.open_spectra(p)
    assert got.flux.encoding["chunks"][0] == 4
    assert got.sizes["star"] == 11
    np.testing.assert_array_equal(got.flux.values, np.concatenate([a.flux.values, b.flux.values]))
    assert [str(s) for s in got.star.values] == [*map(str, a.star.values), *map(str, b.star.values)]
    assert "appended 6 stars" in got.attrs["history"]
    # append to a missing store creates it
    cube.write_spectra(a, tmp_path / "new.zarr", append=True)
    assert cube.open_spectra(tmp_path / "new.zarr").sizes["star"] == 5


def test_small_first_write_keeps_full_chunk_size(tmp_path):
    """A first write with fewer stars than chunk_size must not lock tiny chunks in for appends."""
    p = tmp_path / "c.zarr"
    cube.write_spectra(_ds(["a", "b"]), p, chunk_size=8)
    cube.write_spectra(_ds([f"s{i}" for i in range(20)], seed=3), p, append=True)
    got = cube.open_spectra(p)
    assert got.flux.encoding["chunks"][0] == 8
    assert got.sizes["star"] == 22


def test_append_refusals(tmp_path):
    p = tmp_path / "c.zarr"
    cube.write_spectra(_ds(["a", "b"]), p)
    with pytest.raises(CubeSchemaError, match="already present"):
        cube.write_spectra(_ds(["b", "c"]), p, append=True)
    with pytest.raises(CubeSchemaError, match="wavelength grids differ"):
        cube.write_spectra(_ds(["c"], wave=cube.log_lambda_grid(5000, 5200)), p, append=True)
    with pytest.raises(CubeSchemaError, match="variables differ"):
        cube.write_spectra(_ds(["c"], labels=False), p, append=True)
    assert cube.open_spectra(p).sizes["star"] == 2


# ------------------------------------------------------------------------ results
def test_empty_results_schema(tmp_path):
    res = cube.empty_results(["a", "b", "c"], ["teff", "logg"], n_draws=5, attrs={"seed": 1})
    cube.validate_results(res)
    assert res["median"].shape == (3, 2) and np.all(np.isnan(res["median"].values))
    assert res.samples.shape == (3, 5, 2)
    assert np.all(res.flag.values == int(Flag.NOT_FITTED)) and res.flag.dtype == np.int32
    assert list(res.status.values) == ["not fitted"] * 3
    assert list(res.label.values) == ["teff", "logg"]
    with pytest.raises(CubeSchemaError):
        cube.validate_results(res.drop_vars("rv"))
    with pytest.raises(CubeSchemaError):
        cube.validate_results(xr.Dataset(attrs={"schema": "x"}))
    res.to_zarr(tmp_path / "r.zarr", zarr_format=3, consolidated=False)
    got = cube.open_results(tmp_path / "r.zarr")
    assert got.sizes["star"] == 3 and got.attrs["seed"] == 1


def test_label_names_are_in_canonical_order_whatever_the_variable_order():
    """A zarr store lists its arrays in no fixed order; the label list must not follow it."""
    n = 3
    scrambled = {f"label_{k}": ("star", np.zeros(n)) for k in ("vsini", "feh", "alpha_fe", "logg", "teff", "age")}
    ds = xr.Dataset({**scrambled, "flux": (("star", "wavelength"), np.ones((n, 2)))})
    assert cube.label_names(ds) == ["teff", "logg", "feh", "alpha_fe", "age", "vsini"]
    assert cube.label_names(ds[list(ds.data_vars)[::-1]]) == cube.label_names(ds)
