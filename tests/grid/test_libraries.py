"""Tests for gsn_dask.grid.libraries (MILES): fixtures in the wheel's layout, plus the real wheel (slow)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gsn_dask.cube import LAMOST_LOG10_STEP, open_spectra
from gsn_dask.grid import libraries as L
from gsn_dask.grid import prepare as P

# air wavelengths of lines put into the fixture spectra, and their vacuum values
H_BETA_AIR, H_BETA_VAC = 4861.35, 4862.68
H_ALPHA_AIR, H_ALPHA_VAC = 6562.80, 6564.61
NA_D2_AIR = 5889.95

DB = """#MILES  Teff  log g   [Fe/H]
#s????
# - - - - - - - - - - - - --
  0001  5777   4.44     0.00
  0002  9500   4.00    -0.50
  0003 99999   9999     9999
  0004  4800   2.50    -0.20
  022.  7950   3.95     0.35
  0970  5000   3.00     0.00
"""

TXT = """Name                  MILES   CaT   SpT            Teff   log g   [Fe/H]  Refs   Libraries
                      s????
 - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - --
HD000001               0001         G2V             5777   4.44     0.00   111
HD000002               0002   123   A1V             9500   4.00    -0.50   222         I
HD000003               0003         M5               --     --       --     33    L
HD000004               0004         K0III           4800   2.50    -0.20   333
HD044691A              022.         A3m             7950   3.95     0.35   333
HD000970               0970         G5              5000   3.00     0.00   333
"""


def _miles_flux(teff: float, seed: int) -> np.ndarray:
    """A MILES-like spectrum on the MILES air grid: sloped continuum, FWHM 2.5 A Gaussian lines."""
    rng = np.random.default_rng(seed)
    w = 3540.5 + 0.9 * np.arange(4300)
    f = (w / 5500.0) ** (-2.0 if teff > 7000 else 1.0)
    sig = 2.5 / P.FWHM_PER_SIGMA
    for c, d in ((H_BETA_AIR, 0.5), (H_ALPHA_AIR, 0.45), (NA_D2_AIR, 0.3)):
        f *= 1 - d * np.exp(-0.5 * ((w - c) / sig) ** 2)
    return f * (1 + 0.002 * rng.normal(size=w.size))


def _write_fits(path: Path, flux: np.ndarray) -> None:
    from astropy.io import fits

    hdu = fits.PrimaryHDU(flux.astype(np.float64))
    for k, v in (("TPLLIB", "MILES"), ("FWHM", 2.5), ("CRPIX1", 1), ("CRVAL1", 3540.5), ("CDELT1", 0.9)):
        hdu.header[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu.writeto(path)


@pytest.fixture(scope="module")
def miles_dir(tmp_path_factory) -> Path:
    """An extracted-wheel-like tree: mangadap/data/spectral_templates/miles/..."""
    root = tmp_path_factory.mktemp("mangadap")
    d = root / L.MILES_MEMBER_DIR
    d.mkdir(parents=True)
    (d / L.MILES_PARAMS_DB).write_text(DB)
    (d / L.MILES_PARAMS_TXT).write_text(TXT)
    (d / "README").write_text("fixture")
    for i, (mid, teff) in enumerate((("0001", 5777), ("0002", 9500), ("0003", 3000), ("0221", 7950))):
        _write_fits(d / f"MILES_res2.50_star_m{mid}V.fits", _miles_flux(teff, i))
    (d / "MILES_res2.50_star_m0004V.fits").write_bytes(b"SIMPLE  =    T / corrupt" + b"\0" * 100)
    _write_fits(d / "omit" / "MILES_res2.50_star_m0970V.fits", _miles_flux(5000, 9))
    return root


@pytest.fixture(scope="module")
def fake_wheel(miles_dir, tmp_path_factory) -> Path:
    """The fixture tree zipped under the real wheel's name (its hash does not match)."""
    whl = tmp_path_factory.mktemp("wheel") / L.MILES_WHEEL_NAME
    with zipfile.ZipFile(whl, "w") as z:
        for p in sorted(miles_dir.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(miles_dir).as_posix())
    return whl


# ---------------------------------------------------------------------- parsing
def test_parse_params_db_and_txt() -> None:
    db = L.parse_params_db(DB)
    assert db["0001"] == (5777.0, 4.44, 0.0)
    assert all(np.isnan(db["0003"]))
    assert db["022."] == (7950.0, 3.95, 0.35)
    txt = L.parse_params_txt(TXT)
    assert txt["0002"]["name"] == "HD000002" and txt["0002"]["teff"] == 9500.0 and txt["0002"]["feh"] == -0.5
    assert np.isnan(txt["0003"]["teff"]) and txt["022."]["name"] == "HD044691A"


def test_resolve_ids_quirk_only_by_elimination() -> None:
    assert L._resolve_ids(["0001", "022."], ["0001", "0221"]) == {"0001": "0001", "022.": "0221"}
    # ambiguous (two unmatched files): the typo is not guessed
    assert L._resolve_ids(["0001", "022."], ["0001", "0221", "0222"]) == {"0001": "0001"}


def test_catalogue_from_directory(miles_dir) -> None:
    cat = L.miles_catalogue(L.MilesArchive(miles_dir))
    assert [e.star for e in cat.entries] == ["MILES_m0001", "MILES_m0002", "MILES_m0004", "MILES_m0221"]
    assert cat.unlabelled == ["MILES_m0003"]
    assert cat.omitted == ["omit/MILES_res2.50_star_m0970V.fits"]
    assert cat.id_fixes == {"022.": "0221"} and cat.n_files == 5
    m0221 = cat.entries[-1]
    assert (m0221.teff, m0221.logg, m0221.feh, m0221.name) == (7950.0, 3.95, 0.35, "HD044691A")


def test_read_miles_fits_wavelength_and_corrupt(miles_dir) -> None:
    arch = L.MilesArchive(miles_dir)
    w, f, hdr = L.read_miles_fits(arch.read_bytes("MILES_res2.50_star_m0001V.fits"))
    assert w.size == 4300 and w[0] == 3540.5 and w[-1] == pytest.approx(3540.5 + 0.9 * 4299)
    assert hdr["FWHM"] == 2.5
    with pytest.raises(L.LibraryError, match="unreadable FITS"):
        L.read_miles_fits(arch.read_bytes("MILES_res2.50_star_m0004V.fits"))


def test_loader_converts_air_to_vacuum(miles_dir) -> None:
    arch = L.MilesArchive(miles_dir)
    entry = L.miles_catalogue(arch).entries[0]
    spec = L.miles_spectrum(entry, arch)
    np.testing.assert_allclose(spec.wavelength, P.air_to_vacuum(3540.5 + 0.9 * np.arange(4300)))
    assert spec.fwhm_source_aa[0] == pytest.approx(2.5 * spec.wavelength[0] / 3540.5)
    assert spec.star == "MILES_m0001" and "HD000001" in spec.source


# ---------------------------------------------------------------------- wheel checks
def test_wheel_hash_mismatch_names_the_file(fake_wheel, tmp_path) -> None:
    with pytest.raises(L.LibraryError, match=str(fake_wheel).replace(".", r"\.")) as err:
        L.fetch_miles(fake_wheel)
    assert "sha256" in str(err.value) and L.MILES_WHEEL_SHA256 in str(err.value)
    # the same for a bad file sitting in the cache
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / L.MILES_WHEEL_NAME).write_bytes(b"not a wheel")
    with pytest.raises(L.LibraryError, match="does not match"):
        L.fetch_miles(cache_dir=cache, download=False)


def test_missing_cache_without_download(tmp_path) -> None:
    with pytest.raises(L.LibraryError, match="downloading is off"):
        L.fetch_miles(cache_dir=tmp_path, download=False)


def test_archive_reads_members_from_zip(fake_wheel) -> None:
    arch = L.MilesArchive(fake_wheel)  # the archive class itself does not check the hash
    assert arch.is_wheel and "MILES_res2.50_star_m0001V.fits" in arch.spectrum_members()
    assert "omit/MILES_res2.50_star_m0970V.fits" not in arch.spectrum_members()
    import pickle

    clone = pickle.loads(pickle.dumps(arch))  # picklable for Dask workers
    assert clone.read_text(L.MILES_PARAMS_DB) == DB


# ---------------------------------------------------------------------- build
@pytest.fixture(scope="module")
def fixture_cube(miles_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mcube") / "miles.zarr"
    return L.build_miles_cube(out, path=miles_dir, progress=False)


def test_build_from_directory_skips_corrupt_member(fixture_cube) -> None:
    res = fixture_cube
    ds = open_spectra(res.path)
    assert list(ds["star"].values) == ["MILES_m0001", "MILES_m0002", "MILES_m0221"]
    assert res.n_input == 4 and [s for s, _ in res.skipped] == ["MILES_m0004"]
    skipped = dict(json.loads(ds.attrs["skipped"]))
    assert "unreadable FITS" in skipped["MILES_m0004"]
    assert ds.attrs["n_unlabelled"] == 1 and ds.attrs["unlabelled"] == "MILES_m0003"
    assert ds.attrs["id_fixes"] == "022.->m0221" and "Morton 2000" in ds.attrs["air_to_vacuum"]
    assert ds.attrs["source"] == "MILES" and ds.attrs["normalised"]
    np.testing.assert_allclose(ds["label_teff"].values, [5777, 9500, 7950])
    ranges = json.loads(ds.attrs["not_convolved_aa"])
    assert len(ranges) == 1 and ranges[0][1] == pytest.approx(4500.0, abs=1.5)
    w = ds["wavelength"].values
    assert w[0] == pytest.approx(3699.99, abs=0.01) and 7395 < w[-1] < 7402


def _line_centre(w: np.ndarray, f: np.ndarray, lam: float, half: float = 6.0) -> float:
    """Centre of an absorption line: parabola through the 3 pixels around the minimum."""
    m = np.flatnonzero(np.abs(w - lam) < half)
    i = m[np.argmin(f[m])]
    y0, y1, y2 = f[i - 1], f[i], f[i + 1]
    return float(w[i] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) * 0.5 * (w[i + 1] - w[i - 1]))


def test_fixture_lines_land_at_vacuum_wavelengths(fixture_cube) -> None:
    ds = open_spectra(fixture_cube.path).load()
    w = ds["wavelength"].values
    for star in ds["star"].values:
        f = ds["flux"].sel(star=star).values
        for lam in (H_BETA_VAC, H_ALPHA_VAC):
            px = lam * LAMOST_LOG10_STEP * np.log(10)
            assert abs(_line_centre(w, f, lam) - lam) < 0.15 * px, (star, lam)
        quiet = np.all([np.abs(w - c) > 20 for c in (H_BETA_VAC, H_ALPHA_VAC, 5891.6)], axis=0)
        assert abs(np.median(f[quiet]) - 1) < 0.01


def test_cli_miles_from_directory(miles_dir, tmp_path, capsys) -> None:
    from gsn_dask.cli import main

    out = tmp_path / "cli.zarr"
    assert main(["grid", "miles", "--path", str(miles_dir), "--out", str(out), "--no-progress",
                 "--wmax", "6000"]) == 0
    err = capsys.readouterr().err
    assert "3 of 4 spectra" in err and "MILES_m0004" in err
    assert open_spectra(out)["wavelength"].values[-1] <= 6000.0
    assert main(["grid", "miles", "--path", str(miles_dir), "--out", str(out), "--no-progress"]) == 1
    assert "exists" in capsys.readouterr().err


# ---------------------------------------------------------------------- the real wheel
@pytest.fixture(scope="module")
def real_wheel() -> Path:
    """The pinned sdss-mangadap wheel: from the user cache, else downloaded (PyPI, ~120 MB)."""
    try:
        return L.fetch_miles()
    except L.LibraryError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"MILES wheel not cached and not downloadable here: {exc}")
        raise


@pytest.mark.slow
def test_real_miles_catalogue(real_wheel) -> None:
    cat = L.miles_catalogue(L.MilesArchive(real_wheel))
    assert cat.n_files == 984 and len(cat.entries) == 945 and len(cat.unlabelled) == 39
    assert cat.omitted == ["omit/MILES_res2.50_star_m0970V.fits"]
    e = {x.star: x for x in cat.entries}["MILES_m0221"]
    assert (e.teff, e.logg, e.feh, e.name) == (7950.0, 3.95, 0.35, "HD044691A")
    teff = np.array([x.teff for x in cat.entries])
    assert teff.min() == 2819.0 and teff.max() == 36000.0
    assert not cat.mismatches


@pytest.mark.slow
def test_real_miles_cube_features(real_wheel, tmp_path) -> None:
    """Balmer and Mg b lines of solar-type and A stars sit at their vacuum wavelengths in the
    prepared cube (within a fraction of a pixel), and the normalised continuum is ~1."""
    cat = L.miles_catalogue(L.MilesArchive(real_wheel))
    sun = [e.star for e in cat.entries if 5650 < e.teff < 5900 and 4.2 < e.logg < 4.6 and abs(e.feh) < 0.15][:4]
    hot = [e.star for e in cat.entries if 8500 < e.teff < 10500 and 3.5 < e.logg < 4.5][:4]
    assert len(sun) == 4 and len(hot) == 4
    res = L.build_miles_cube(tmp_path / "real.zarr", path=real_wheel, stars=sun + hot, progress=False)
    ds = open_spectra(res.path).load()
    assert res.n_written == 8 and res.skipped == []
    w = ds["wavelength"].values
    assert w[0] == pytest.approx(3699.99, abs=0.01) and 7395 < w[-1] < 7402
    for star in sun + hot:
        f = ds["flux"].sel(star=star).values
        for lam in (4862.68, 6564.61):  # H-beta, H-alpha (vacuum)
            px = lam * LAMOST_LOG10_STEP * np.log(10)
            assert abs(_line_centre(w, f, lam) - lam) < 0.35 * px, (star, lam)
        p95 = np.percentile(f[(w > 5000) & (w < 7300)], 95)
        assert 0.99 < p95 < 1.06, (star, p95)
    for star in sun:
        f = ds["flux"].sel(star=star).values
        for lam in (5168.76, 5174.13, 5185.05):  # Mg b triplet (vacuum)
            px = lam * LAMOST_LOG10_STEP * np.log(10)
            assert abs(_line_centre(w, f, lam, half=2.5) - lam) < 0.5 * px, (star, lam)
        # the solar-type stars agree with each other to a few per cent (same spectral type)
    fs = ds["flux"].sel(star=sun).values
    assert np.median(np.abs(fs - np.median(fs, axis=0))) < 0.02
