"""Tests for gsn_dask.grid.build on synthetic high-resolution source spectra (no downloads)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gsn_dask.cube import LAMOST_LOG10_ANCHOR, LAMOST_LOG10_STEP, log_lambda_grid, open_spectra, validate_spectra
from gsn_dask.grid import build as B
from gsn_dask.grid import prepare as P

LINES = (4500.0, 5500.0, 6500.0, 8000.0)  # isolated absorption lines (vacuum A)
DEPTH = 0.9
SIG_LINE = 0.1  # intrinsic Gaussian sigma of the test lines, A


def synthetic_source(star: str, teff: float, *, wmin=3500.0, wmax=9500.0, r_sampling=60000.0, seed=0,
                     **kw) -> B.SourceSpectrum:
    """An infinitely sharp spectrum: smooth blackbody-like continuum with narrow absorption lines."""
    rng = np.random.default_rng(seed)
    w = np.exp(np.arange(np.log(wmin), np.log(wmax), 1.0 / r_sampling))
    cont = 1e5 * (w / 5000.0) ** -3 * np.exp(-1.4388e8 / (w * teff))
    prof = np.ones_like(w)
    for c in LINES:
        prof *= 1 - DEPTH * np.exp(-0.5 * ((w - c) / SIG_LINE) ** 2)
    for c in rng.uniform(3800, 9300, 40):  # some weak lines elsewhere
        if min(abs(c - x) for x in LINES) > 30:
            prof *= 1 - 0.2 * np.exp(-0.5 * ((w - c) / 0.05) ** 2)
    return B.SourceSpectrum(star=star, wavelength=w, flux=cont * prof,
                            labels={"teff": teff, "logg": 4.4, "feh": 0.0}, source=f"synthetic/{star}", **kw)


def _fwhm_centre(w: np.ndarray, f: np.ndarray, lam: float) -> tuple[float, float]:
    """FWHM and centre (A) of an absorption line in a normalised spectrum, from moments of 1 - f."""
    m = np.abs(w - lam) < 12
    base = np.median(f[(np.abs(w - lam) > 9) & (np.abs(w - lam) < 14)])
    d = 1.0 - f[m] / base
    e = P.pixel_edges(w)[np.flatnonzero(m)[0] : np.flatnonzero(m)[-1] + 2]
    wm, dw = w[m], np.diff(e)
    mu = np.sum(d * wm * dw) / np.sum(d * dw)
    var = np.sum(d * (wm - mu) ** 2 * dw) / np.sum(d * dw) - np.mean(dw**2) / 12.0  # remove the pixel box
    return float(np.sqrt(var) * P.FWHM_PER_SIGMA), float(mu)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, B.BuildResult]:
    items = [synthetic_source(f"s{i}", 5000.0 + 300 * i, seed=i) for i in range(5)]
    bad_nan = synthetic_source("bad-nan", 5000.0)
    bad_nan.flux[20000:20010] = np.nan
    bad_label = synthetic_source("bad-label", 5000.0)
    bad_label.labels = {"teff": 5000.0, "logg": np.nan, "feh": 0.0}
    bad_short = synthetic_source("bad-short", 5000.0, wmin=8000.0)
    dup = synthetic_source("s1", 5300.0)
    dup2 = synthetic_source("s4", 5300.0)  # a duplicate inside the same batch
    items = [items[0], bad_nan, items[1], bad_label, items[2], bad_short, items[3], items[4], dup2, dup]
    out = tmp_path_factory.mktemp("build") / "train.zarr"
    wave = B.cube_wavelength(3500.0, 9500.0)
    res = B.build_training_cube(items, out, wavelength=wave, label_names=("teff", "logg", "feh"),
                                attrs={"source": "synthetic", "air_to_vacuum": "none"}, batch_size=3,
                                chunk_size=4, progress=False)
    return out, res


def test_cube_written_with_schema_and_provenance(built) -> None:
    out, res = built
    ds = open_spectra(out)
    validate_spectra(ds)
    assert list(ds["star"].values) == ["s0", "s1", "s2", "s3", "s4"]
    assert res.n_input == 10 and res.n_written == 5
    assert ds.attrs["normalised"] is True or ds.attrs["normalised"] == True  # noqa: E712
    assert ds.attrs["source"] == "synthetic" and ds.attrs["n_skipped"] == 5
    assert ds["flux"].encoding["chunks"] == (4, ds.sizes["wavelength"])
    assert json.loads(ds.attrs["normalisation"]) == P.DEFAULT_NORMALISATION
    assert json.loads(ds.attrs["prepare_config"])["r_target"] == 1800.0
    assert json.loads(ds.attrs["not_convolved_aa"]) == []
    np.testing.assert_allclose(ds["label_teff"].values, 5000.0 + 300 * np.arange(5))
    assert "5 of 10 spectra" in ds.attrs["history"]


def test_bad_entries_are_skipped_and_reported(built) -> None:
    out, res = built
    reasons = dict(json.loads(open_spectra(out).attrs["skipped"]))
    assert set(reasons) == {"bad-nan", "bad-label", "bad-short", "s1", "s4"}
    assert "non-finite" in reasons["bad-nan"]
    assert "missing labels ['logg']" in reasons["bad-label"]
    assert "duplicate" in reasons["s1"] and "duplicate" in reasons["s4"]
    assert "BadSpectrum" in reasons["bad-short"]


def test_wavelength_is_a_run_of_lamost_pixels(built) -> None:
    ds = open_spectra(built[0])
    w = ds["wavelength"].values
    k = (np.log10(w) - LAMOST_LOG10_ANCHOR) / LAMOST_LOG10_STEP
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)
    np.testing.assert_array_equal(np.diff(np.round(k)), 1)
    np.testing.assert_allclose(w, log_lambda_grid(3700, 9100), rtol=1e-12)  # source covers all of LAMOST


def test_lines_have_lamost_resolution_and_position(built) -> None:
    ds = open_spectra(built[0]).load()
    w = ds["wavelength"].values
    for star in ("s0", "s3"):
        f = ds["flux"].sel(star=star).values
        for lam in LINES:
            fwhm, mu = _fwhm_centre(w, f, lam)
            expected = np.hypot(lam / 1800.0, SIG_LINE * P.FWHM_PER_SIGMA)
            assert fwhm == pytest.approx(expected, rel=0.03), (star, lam)
            px = lam * LAMOST_LOG10_STEP * np.log(10)
            assert abs(mu - lam) < 0.1 * px, (star, lam, mu)


def test_continuum_is_one_and_nominal_ivar(built) -> None:
    ds = open_spectra(built[0]).load()
    w = ds["wavelength"].values
    far = np.all([np.abs(w - c) > 15 for c in LINES], axis=0)
    f = ds["flux"].values
    for row in f:
        quiet = far & (row > 0.97)
        assert abs(np.median(row[quiet]) - 1) < 0.01
    iv = ds["ivar"].values
    assert np.all(iv > 0) and np.all(np.isfinite(f))
    # S/N 100 at the median continuum, photon-like scaling: sqrt(ivar) ~ 100 sqrt(c / median c)
    assert np.median(np.sqrt(iv)) == pytest.approx(100.0, rel=0.02)
    assert np.all(np.sqrt(iv) <= 200.0 + 1e-3)


def test_existing_output_needs_overwrite(built, tmp_path) -> None:
    out, _ = built
    with pytest.raises(FileExistsError):
        B.build_training_cube([synthetic_source("x", 5000.0)], out, wavelength=B.cube_wavelength(3500, 9500),
                              label_names=("teff",), progress=False)


def test_all_bad_raises_clear_error(tmp_path) -> None:
    bad = synthetic_source("b", 5000.0)
    bad.flux[:] = np.nan
    with pytest.raises(ValueError, match="no spectrum could be prepared"):
        B.build_training_cube([bad], tmp_path / "x.zarr", wavelength=B.cube_wavelength(3500, 9500),
                              label_names=("teff",), progress=False)


def test_source_broader_than_target_is_recorded(tmp_path) -> None:
    src = [synthetic_source(f"m{i}", 5500.0, wmin=3600, wmax=7500, fwhm_source_aa=2.5, seed=i) for i in range(2)]
    cfg = B.PrepareConfig()
    wave = B.cube_wavelength(3600.0, 7500.0, cfg)
    res = B.build_training_cube(iter(src), tmp_path / "m.zarr", wavelength=wave, label_names=("teff", "logg"),
                                config=cfg, progress=False)  # a generator works too
    ranges = json.loads(open_spectra(res.path).attrs["not_convolved_aa"])
    assert len(ranges) == 1 and ranges[0][0] == pytest.approx(wave[0], abs=0.01)
    assert ranges[0][1] == pytest.approx(4500.0, abs=1.5)
    # edge margin: the cube stops 2 target FWHM inside the source coverage
    assert wave[-1] < 7500 * (1 - 2 / 1800) and wave[-1] > 7500 * (1 - 2 / 1800) - 3


def test_source_with_ivar_is_propagated(tmp_path) -> None:
    s = synthetic_source("e", 5800.0, r_sampling=20000.0)
    s.ivar = np.full(s.flux.size, 1.0) / (0.02 * s.flux) ** 2  # 2 % errors per source pixel
    s.ivar[10000:10050] = 0.0
    s.flux[10000:10050] = 1e30  # garbage under ivar 0 must not leak into good pixels
    wave = B.cube_wavelength(3500.0, 9500.0)
    res = B.build_training_cube([s], tmp_path / "e.zarr", wavelength=wave, label_names=("teff",), progress=False)
    ds = open_spectra(res.path).load()
    iv = ds["ivar"].values[0]
    bad_w = s.wavelength[10000:10050]
    hit = (wave > bad_w[0] - 2) & (wave < bad_w[-1] + 2)
    assert np.all(iv[(wave > bad_w[0] + 2) & (wave < bad_w[-1] - 2)] == 0) and np.any(iv[~hit] > 0)
    f = ds["flux"].values[0]
    assert np.all(np.abs(f[iv > 0]) < 2.0)
    # rebinning ~n source pixels into one output pixel: S/N ~ 50 sqrt(n) in the continuum
    n_per_px = LAMOST_LOG10_STEP * np.log(10) * 20000.0
    snr = np.sqrt(np.median(iv[iv > 0]))
    assert snr == pytest.approx(50.0 * np.sqrt(n_per_px), rel=0.1)


def test_prepare_batch_never_raises() -> None:
    def loader(key):
        if key == "boom":
            raise OSError("corrupt file")
        return synthetic_source(key, 5000.0)

    wave = B.cube_wavelength(3500.0, 9500.0)
    res = B.prepare_batch(["a", "boom", "b"], loader, wave, B.PrepareConfig(), ("teff",))
    assert res["star"] == ["a", "b"] and res["n_in"] == 3
    assert res["errors"] == [("boom", "OSError: corrupt file")]
    assert res["flux"].dtype == np.float32 and res["flux"].shape == (2, wave.size)


def test_nominal_ivar_model() -> None:
    iv = np.array([[4.0, 1.0, 1.0, 0.0, 0.25, 100.0]])  # = const * c^2, c = 2,1,1,-,0.5,10
    out = B.nominal_ivar(iv, 100.0)
    np.testing.assert_allclose(out[0], [2e4, 1e4, 1e4, 0.0, 0.5e4, 4e4])


@pytest.mark.slow
def test_local_cluster_matches_synchronous(built, tmp_path) -> None:
    """The same spectra prepared by 2 LocalCluster workers give identical arrays, in input order."""
    items = [synthetic_source(f"s{i}", 5000.0 + 300 * i, seed=i) for i in range(5)]
    res = B.build_training_cube(items, tmp_path / "d.zarr", wavelength=B.cube_wavelength(3500.0, 9500.0),
                                label_names=("teff", "logg", "feh"), attrs={"source": "synthetic"},
                                batch_size=2, n_workers=2, chunk_size=4, progress=False)
    a = open_spectra(built[0]).load()
    b = open_spectra(res.path).load()
    assert list(b["star"].values) == list(a["star"].values)
    np.testing.assert_array_equal(a["flux"].values, b["flux"].values)
    np.testing.assert_array_equal(a["ivar"].values, b["ivar"].values)


def test_phoenix_fixture_grid_via_cli(tmp_path, capsys) -> None:
    """`gsn-dask grid phoenix ROOT` on a small fixture grid in the PHOENIX file format."""
    from gsn_dask.cli import main
    from gsn_dask.grid import phoenix

    root = tmp_path / "HiResFITS"
    paths = phoenix.write_fixture_grid(root, teff=(5000.0, 5200.0), logg=4.5, feh=(-0.5, 0.0), n_pix=60000)
    paths[1].write_bytes(b"garbage")  # one corrupt file
    out = tmp_path / "phx.zarr"
    rc = main(["grid", "phoenix", str(root), "--out", str(out), "--teff", "5000", "5200", "--logg", "4.5",
               "--no-progress", "--wmin", "4000", "--wmax", "6000"])
    assert rc == 0
    ds = open_spectra(out).load()
    assert ds.sizes["star"] == len(paths) - 1 == 5
    assert set(ds["label_alpha_fe"].values) == {0.0} and set(ds["label_logg"].values) == {4.5}
    assert ds["star"].values[0].startswith("lte05000-4.50")
    skipped = json.loads(ds.attrs["skipped"])
    assert len(skipped) == 1 and str(paths[1]) == skipped[0][0]
    w = ds["wavelength"].values
    assert 3999 < w[0] < 4001.5 and 5998 < w[-1] <= 6000.0
    assert ds.attrs["air_to_vacuum"].startswith("none") and json.loads(ds.attrs["not_convolved_aa"]) == []
    f = ds["flux"].values
    assert np.all(np.isfinite(f)) and 0.97 < np.median(np.percentile(f, 95, axis=1)) < 1.05
    assert "5 of 6 spectra" in capsys.readouterr().err
