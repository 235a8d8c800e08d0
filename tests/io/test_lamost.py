"""Tests for gsn_dask.io.lamost: LAMOST LRS layouts, grid rules, masks, rejects, real files."""
from __future__ import annotations

import glob
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from gsn_dask.cube import log_lambda_grid
from gsn_dask.io.lamost import (
    C_KMS,
    RejectedFile,
    TargetGrid,
    grid_offset,
    image_row_names,
    make_star_id,
    parse_lamost_filename,
    read_lrs,
    read_native,
    release_tag,
    resample_flux_conserving,
    write_lrs_file,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # tests/io/ -> repo -> ../shared
LAMOST = SHARED_DATA / "lamost"
GRID = log_lambda_grid()


def _spectrum(n: int = 3904, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flux = (100.0 + 10.0 * np.sin(np.arange(n) / 50.0) + rng.normal(0, 1, n)).astype(np.float32)
    ivar = rng.uniform(0.5, 2.0, n).astype(np.float32)
    return flux, ivar


# ------------------------------------------------------------------------ ids and names
def test_parse_filename_and_star_id():
    assert parse_lamost_filename("spec-55862-B6212_sp06-003.fits") == {
        "lmjd": 55862, "planid": "B6212", "spid": 6, "fiberid": 3,
    }
    assert parse_lamost_filename("/x/spec-57287-KP193637N444141V03_sp10-161.fits.gz")["planid"] == "KP193637N444141V03"
    assert parse_lamost_filename("med-58408-TD230151N343645T01_sp01-015.fits") is None
    assert make_star_id(obsid=-1, source="spec-55862-B6212_sp06-003.fits", release="dr1") == "dr1-55862-B6212-06-003"
    assert make_star_id(obsid=359910161, source="whatever.fits", release="dr6") == "359910161"
    # header fallback when the name is not LAMOST's, file stem as last resort
    assert make_star_id(obsid=-1, source="a.fits", release="dr1", lmjd=1, planid="P", spid=2, fiberid=3) == "dr1-1-P-02-003"
    assert make_star_id(obsid=-1, source="odd name.fits.gz", release="dr1") == "file-odd name"
    assert release_tag("LAMOST DR7") == "dr7" and release_tag(None) == "dr1" and release_tag("") == "dr1"


def test_image_row_names_from_exten0():
    h = fits.Header({"EXTEN0": "Flux Inverse Subcontinuum Andmask Ormask"})
    assert image_row_names(h, 5) == {"flux": 0, "ivar": 1, "subcontinuum": 2, "andmask": 3, "ormask": 4}
    h = fits.Header({"EXTEN0": "Flux, Inverse, Wavelength, Andmask, Ormask"})
    assert image_row_names(h, 5)["wavelength"] == 2
    assert image_row_names(fits.Header(), 5) == {"flux": 0, "ivar": 1, "andmask": 3, "ormask": 4}
    assert image_row_names(fits.Header(), 3) == {}


# ------------------------------------------------------------------------ layouts
@pytest.mark.parametrize(
    "layout,name",
    [
        ("image-dr1", "spec-55862-B6212_sp06-003.fits"),
        ("image-dr6", "spec-57287-KP1_sp10-161.fits.gz"),
        ("bintable", "spec-58397-EG1_sp03-031.fits"),
        ("bintable-rows", "spec-58397-EG1_sp03-032.fits.gz"),
    ],
)
def test_layouts_copy_pixels_exactly(tmp_path, layout, name):
    flux, ivar = _spectrum(3904)
    p = write_lrs_file(tmp_path / name, flux, ivar, layout=layout, snr_g=33.5, snr_r=44.5, z=1e-4, ra=1.5, dec=-2.5)
    if name.endswith(".gz"):
        assert Path(p).read_bytes()[:2] == b"\x1f\x8b"
    s = read_lrs(p)
    assert s.exact
    assert s.layout == layout.split("-")[0]
    np.testing.assert_array_equal(s.flux[:3904], flux)  # bit-identical
    np.testing.assert_array_equal(s.ivar[:3904], ivar)
    assert np.all(s.ivar[3904:] == 0) and np.all(s.flux[3904:] == 0)  # not covered
    assert s.flux.dtype == np.float32 and s.flux.shape == (GRID.size,)
    assert s.snr_g == pytest.approx(33.5) and s.snr_r == pytest.approx(44.5)
    assert s.rv_catalog == pytest.approx(1e-4 * C_KMS)
    assert (s.ra, s.dec) == (1.5, -2.5)
    assert s.source == name
    if layout == "image-dr1":
        assert s.obsid == -1 and s.star == "dr1-55862-B6212-06-003"
    else:
        assert s.obsid > 0 and s.star == str(s.obsid)


def test_image_rows_follow_exten0_not_position(tmp_path):
    """Rows in an unusual order are found by name (EXTEN0), not assumed."""
    flux, ivar = _spectrum(3909)
    rows = np.zeros((5, 3909), np.float32)
    rows[0], rows[1], rows[2] = ivar, 10**(3.5682 + 1e-4 * np.arange(3909)), flux
    rows[4] = 0
    rows[3, 100:110] = 4  # ormask: ignored
    h = fits.Header()
    h["EXTEN0"] = "Inverse, Wavelength, Flux, Ormask, Andmask"
    for k, v in {"CRVAL1": 3.5682, "CD1_1": 1e-4, "CRPIX1": 1, "DC-FLAG": 1, "OBSID": 5, "SNRG": 9.0}.items():
        h[k] = v
    p = tmp_path / "spec-1-P_sp01-001.fits"
    fits.PrimaryHDU(rows, header=h).writeto(p)
    s = read_lrs(p)
    np.testing.assert_array_equal(s.flux, flux)
    np.testing.assert_array_equal(s.ivar, ivar)


def test_image_without_exten0_and_wavelength_row_only(tmp_path):
    flux, ivar = _spectrum(3909)
    rows = np.zeros((5, 3909), np.float32)
    rows[0], rows[1] = flux, ivar
    rows[2] = 10 ** (3.5682 + 1e-4 * np.arange(3909))
    h = fits.Header({"EXTEN0": "Flux, Inverse, Wavelength, Andmask, Ormask", "OBSID": 7})
    p = tmp_path / "a.fits"
    fits.PrimaryHDU(rows, header=h).writeto(p)
    s = read_lrs(p)  # no header solution: the float32 wavelength row is used, still on the grid
    assert s.exact
    np.testing.assert_array_equal(s.flux, flux)
    p2 = tmp_path / "b.fits"
    h2 = fits.Header({"CRVAL1": 3.5682, "CD1_1": 1e-4, "CRPIX1": 1})
    fits.PrimaryHDU(rows, header=h2).writeto(p2)  # no EXTEN0: LAMOST order assumed
    np.testing.assert_array_equal(read_lrs(p2).ivar, ivar)


def test_offset_grid_is_copied_with_integer_shift(tmp_path):
    flux, ivar = _spectrum(3800)
    p = write_lrs_file(tmp_path / "spec-1-P_sp01-001.fits", flux, ivar, log10_start=3.5682 + 5e-4)
    s = read_lrs(p)
    assert s.exact
    np.testing.assert_array_equal(s.flux[5:3805], flux)
    assert np.all(s.ivar[:5] == 0) and np.all(s.ivar[3805:] == 0)
    # a file starting below the grid: its first pixels fall off
    p = write_lrs_file(tmp_path / "spec-1-P_sp01-002.fits", flux, ivar, log10_start=3.5682 - 3e-4)
    s = read_lrs(p)
    assert s.exact
    np.testing.assert_array_equal(s.flux[:3797], flux[3:])


def test_grid_offset_tolerance():
    grid = TargetGrid.from_wavelength(GRID)
    flux, ivar = _spectrum(100)
    from gsn_dask.io.lamost import NativeSpectrum

    def native(start, step):
        return NativeSpectrum("x", "image", start + step * np.arange(100), flux, ivar,
                              np.zeros(100, np.int64), np.zeros(100, np.int64), {}, (start, step))

    assert grid_offset(native(3.5682 + 7e-4, 1e-4), grid) == 7
    assert grid_offset(native(3.5682 + 7e-4 + 0.5e-7, 1e-4), grid) == 7  # 5e-4 px: inside 1e-3 px
    assert grid_offset(native(3.5682 + 7e-4 + 2e-7, 1e-4), grid) is None  # 2e-3 px: outside
    assert grid_offset(native(3.5682, 1e-4 * (1 + 1e-4)), grid) is None  # step drifts 0.01 px over 100 px


def test_non_coinciding_grid_is_resampled(tmp_path):
    n = 3905
    flux = np.full(n, 5.0, np.float32)
    ivar = np.full(n, 4.0, np.float32)
    p = write_lrs_file(tmp_path / "spec-1-P_sp01-001.fits", flux, ivar, log10_start=3.5682 - 0.5e-4)
    s = read_lrs(p)
    assert not s.exact
    good = s.ivar > 0
    assert good.sum() > 3890
    np.testing.assert_allclose(s.flux[good], 5.0, rtol=1e-6)
    # each output pixel is half of two input pixels: var = 2 * (1/2)^2 / 4 -> ivar = 8
    np.testing.assert_allclose(s.ivar[good], 8.0, rtol=2e-4)
    # last grid pixel is only half covered by the file -> ivar 0
    assert s.ivar[n - 1] == 0


def test_linear_wavelength_bintable_is_resampled(tmp_path):
    wave = np.arange(3650.0, 9200.0, 1.5)
    flux = (1e-3 * wave).astype(np.float32)  # linear in wavelength
    ivar = np.ones(wave.size, np.float32)
    p = write_lrs_file(tmp_path / "lin.fits", flux, ivar, layout="bintable", wavelength=wave)
    s = read_lrs(p)
    assert not s.exact
    good = s.ivar > 0
    assert good.mean() > 0.99
    # the mean of a linear function over a bin is its value at the bin centre (to bin asymmetry)
    np.testing.assert_allclose(s.flux[good], 1e-3 * GRID[good], rtol=2e-4)


def test_resampler_conserves_flux_and_propagates_ivar():
    rng = np.random.default_rng(3)
    wi = 10 ** (3.6 + 0.25e-4 * np.arange(4000))  # 4x finer than the output
    fi = rng.uniform(1, 2, wi.size)
    vi = rng.uniform(0.5, 2, wi.size)
    lo = 10 ** (3.6 + 0.25e-4 * (np.arange(4000) - 0.5))
    hi = 10 ** (3.6 + 0.25e-4 * (np.arange(4000) + 0.5))
    wo = 10 ** (3.6 + 1.5 * 0.25e-4 + 1e-4 * np.arange(990))  # output pixel = 4 input pixels exactly
    fo, io = resample_flux_conserving(wi, fi, wo, 1.0 / vi)
    assert np.all(io > 0)
    # flux integral over the output range is conserved
    olo = 10 ** (np.log10(wo) - 0.5e-4)
    ohi = 10 ** (np.log10(wo) + 0.5e-4)
    inside = (lo >= olo[0] * (1 - 1e-12)) & (hi <= ohi[-1] * (1 + 1e-12))
    assert np.sum(fo * (ohi - olo)) == pytest.approx(np.sum((fi * (hi - lo))[inside]), rel=1e-9)
    # var of a weighted mean: sum(w^2 var), with w = dlambda_i / dlambda_out
    k = 10
    idx = np.arange(4 * k + 0, 4 * k + 4) + 0
    w = (hi - lo)[idx] / (ohi[k] - olo[k])
    assert w.sum() == pytest.approx(1.0, rel=1e-9)
    assert 1 / io[k] == pytest.approx(np.sum(w**2 * vi[idx]), rel=1e-9)
    assert fo[k] == pytest.approx(np.sum(w * fi[idx]), rel=1e-10)
    # a bad input pixel makes the output pixel bad; uncovered output gets ivar 0
    iv = 1.0 / vi
    iv[4 * k + 2] = 0
    fo2, io2 = resample_flux_conserving(wi, fi, np.append(wo, wo[-1] * 1.01), iv)
    assert io2[k] == 0 and io2[k + 1] > 0 and io2[-1] == 0


# ------------------------------------------------------------------------ pixel masks
def test_pixel_mask_rules(tmp_path):
    flux, ivar = _spectrum(3909)
    andmask = np.zeros(3909, np.int32)
    ormask = np.zeros(3909, np.int32)
    andmask[10:20] = 1 << 23
    ormask[30:40] = 1  # ormask alone is not a reason to drop a pixel
    flux[50] = np.nan
    flux[51] = np.inf
    ivar[60] = -1.0
    ivar[61] = np.nan
    ivar[62] = np.inf
    p = write_lrs_file(tmp_path / "spec-1-P_sp01-001.fits", flux, ivar, andmask=andmask, ormask=ormask)
    s = read_lrs(p)
    assert np.all(s.ivar[10:20] == 0)
    np.testing.assert_array_equal(s.flux[10:20], flux[10:20])  # finite flux kept
    np.testing.assert_array_equal(s.ivar[30:40], ivar[30:40])
    assert s.flux[50] == 0 and s.flux[51] == 0 and s.ivar[50] == 0 and s.ivar[51] == 0
    assert s.ivar[60] == 0 and s.ivar[61] == 0 and s.ivar[62] == 0
    assert np.all(np.isfinite(s.flux)) and np.all(np.isfinite(s.ivar))
    assert s.n_good == 3909 - 10 - 2 - 3


def test_air_wavelengths_are_converted(tmp_path):
    flux, ivar = _spectrum(3909)
    p = write_lrs_file(tmp_path / "spec-1-P_sp01-001.fits", flux, ivar, extra_cards={"VACUUM": False})
    s = read_lrs(p)
    assert not s.exact  # air -> vacuum shifts the grid by ~0.3 px
    nat = read_native(p)
    assert nat.header["vacuum"] is False


# ------------------------------------------------------------------------ rejects
def _reject(path) -> RejectedFile:
    with pytest.raises(RejectedFile) as info:
        read_lrs(path)
    return info.value


def test_bad_files_are_rejected_with_reasons(tmp_path):
    flux, ivar = _spectrum(3909)
    good = write_lrs_file(tmp_path / "good.fits", flux, ivar)
    raw = good.read_bytes()
    (tmp_path / "trunc.fits").write_bytes(raw[:50000])
    (tmp_path / "trunc_header.fits").write_bytes(raw[:1000])
    (tmp_path / "trunc.fits.gz").write_bytes(gzip.compress(raw)[:20000])
    (tmp_path / "text.fits").write_text("this is not a FITS file\n")
    (tmp_path / "empty.fits").write_bytes(b"")
    write_lrs_file(tmp_path / "ivar0.fits", flux, np.zeros_like(ivar))
    write_lrs_file(tmp_path / "allmasked.fits", flux, ivar, andmask=np.ones(3909, np.int32))
    # 9500-10000 A: no overlap with the 3700-9100 A grid
    n_red = int(np.log10(10000 / 9500) / 1e-4)
    write_lrs_file(tmp_path / "red.fits", flux[:n_red], ivar[:n_red], log10_start=np.log10(9500.0))
    # 7000-9500 A: 30% overlap only (< 50%)
    n_half = int(np.log10(9500 / 7000) / 1e-4)
    write_lrs_file(tmp_path / "half.fits", flux[:n_half], ivar[:n_half], log10_start=np.log10(7000.0))
    # an image that is not a LAMOST spectrum
    fits.PrimaryHDU(np.zeros((3, 3), np.float32), header=fits.Header({"EXTEN0": "a b c"})).writeto(tmp_path / "img.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("X", "E", array=np.zeros(3))])]).writeto(
        tmp_path / "table.fits"
    )
    expected = {
        "trunc.fits": "truncated",
        "trunc_header.fits": "truncated",
        "trunc.fits.gz": "truncated",
        "text.fits": "not FITS",
        "empty.fits": "unreadable",
        "ivar0.fits": "no good pixels",
        "allmasked.fits": "no good pixels",
        "red.fits": "wrong coverage",
        "half.fits": "wrong coverage",
        "img.fits": "not LAMOST LRS",
        "table.fits": "not LAMOST LRS",
        "missing.fits": "not found",
    }
    for name, code in expected.items():
        err = _reject(tmp_path / name)
        assert err.code == code, (name, err)
        assert err.reason
    assert "9500" in _reject(tmp_path / "red.fits").reason
    # a lower coverage threshold accepts the half-covered file
    assert read_lrs(tmp_path / "half.fits", min_coverage=0.2).n_good > 0


def _write_mrs_like(path: Path) -> Path:
    loglam = 3.69 + 1e-5 * np.arange(4000)
    cols = [
        fits.Column("FLUX", "E", array=np.ones(4000)),
        fits.Column("IVAR", "E", array=np.ones(4000)),
        fits.Column("LOGLAM", "E", array=loglam),
        fits.Column("ANDMASK", "I", array=np.zeros(4000)),
        fits.Column("ORMASK", "I", array=np.zeros(4000)),
    ]
    h = fits.Header({"OBSID": 1, "DATA_V": "LAMOST DR7", "VACUUM": True})
    fits.HDUList(
        [
            fits.PrimaryHDU(header=h),
            fits.BinTableHDU.from_columns(cols, name="COADD_B"),
            fits.BinTableHDU.from_columns(cols, name="COADD_R"),
        ]
    ).writeto(path)
    return path


def test_mrs_files_are_rejected(tmp_path):
    err = _reject(_write_mrs_like(tmp_path / "x.fits"))
    assert err.code == "MRS" and "COADD_B" in err.reason
    # an unnamed medium-resolution table (step 1e-5 dex) is refused too, not resampled
    loglam = 3.69 + 1e-5 * np.arange(4000)
    cols = [fits.Column("FLUX", "E", array=np.ones(4000)), fits.Column("IVAR", "E", array=np.ones(4000)),
            fits.Column("LOGLAM", "D", array=loglam)]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="SPEC")]).writeto(tmp_path / "y.fits")
    assert _reject(tmp_path / "y.fits").code == "MRS"


# ------------------------------------------------------------------------ real files
def _dr1_files() -> list[str]:
    return sorted(glob.glob(str(LAMOST / "dr1" / "*.fits")))


@pytest.mark.skipif(not (LAMOST / "dr1").is_dir(), reason="shared LAMOST data not available")
def test_real_dr1_files_pixel_for_pixel():
    files = _dr1_files()
    assert len(files) == 179
    grid = TargetGrid.from_wavelength(GRID)
    assert GRID[0] == pytest.approx(3699.99, abs=0.01)
    n_masked = 0
    for f in files:
        s = read_lrs(f, grid)
        with fits.open(f) as h:
            d = h[0].data
            hdr = h[0].header
        n = d.shape[1]
        assert s.exact and s.star.startswith("dr1-")
        assert s.obsid == -1
        np.testing.assert_array_equal(s.flux[:n], np.where(np.isfinite(d[0]), d[0], 0))
        expect_ivar = np.where((d[3] == 0) & (d[1] > 0) & np.isfinite(d[1]) & np.isfinite(d[0]), d[1], 0)
        np.testing.assert_array_equal(s.ivar[:n], expect_ivar)
        assert np.all(s.ivar[n:] == 0)
        n_masked += bool(np.any(d[3] != 0))
        assert s.snr_g == pytest.approx(hdr["SN_G"]) and s.snr_r == pytest.approx(hdr["SN_R"])
        assert s.rv_catalog == pytest.approx(hdr["Z"] * C_KMS)
        assert s.ra == hdr["RA"] and s.dec == hdr["DEC"]
        parsed = parse_lamost_filename(Path(f).name)
        assert s.star == f"dr1-{parsed['lmjd']}-{parsed['planid']}-{parsed['spid']:02d}-{parsed['fiberid']:03d}"
    assert n_masked == 10  # README: 10 files have a non-zero andmask


@pytest.mark.skipif(not (LAMOST / "laspec" / "lrs").is_dir(), reason="shared LAMOST data not available")
def test_real_dr6_dr7_files():
    files = sorted((LAMOST / "laspec" / "lrs").iterdir())
    assert len(files) == 2
    obsids = set()
    for f in files:
        s = read_lrs(f)
        with fits.open(f) as h:
            d, hdr = h[0].data, h[0].header
        assert s.exact and s.layout == "image"
        np.testing.assert_array_equal(s.flux, d[0])
        assert s.snr_g == pytest.approx(hdr["SNRG"]) and s.snr_r == pytest.approx(hdr["SNRR"])
        # header formula and the float32 wavelength row agree
        assert np.max(np.abs(np.log10(d[2].astype(np.float64)) - np.log10(GRID))) / 1e-4 < 0.01
        obsids.add(s.obsid)
        assert s.star == str(hdr["OBSID"])
    assert obsids == {359910161, 677503031}


@pytest.mark.skipif(not (LAMOST / "laspec" / "mrs").is_dir(), reason="shared LAMOST data not available")
def test_real_mrs_files_rejected():
    files = sorted((LAMOST / "laspec" / "mrs").iterdir())
    assert len(files) == 8
    for f in files:
        err = _reject(f)
        assert err.code == "MRS", (f, err)


@pytest.mark.skipif(not (LAMOST / "dr1_labels_lasp.csv").exists(), reason="shared LAMOST data not available")
def test_real_rv_catalog_is_z_times_c():
    import pandas as pd

    df = pd.read_csv(LAMOST / "dr1_labels_lasp.csv").set_index("filename")
    n = 0
    for f in _dr1_files():
        name = Path(f).name
        if name not in df.index:
            continue
        row = df.loc[name]
        s = read_lrs(f)
        if row.planid == s.planid and int(row.fiberid) == s.fiberid:
            assert s.rv_catalog == pytest.approx(row.rv, abs=0.006)
            n += 1
    assert n == 117
    assert math.isclose(C_KMS, 299792.458)


# ------------------------------------------------------------------------ fast header path
def _same_native(a, b):
    assert a.layout == b.layout and a.formula == b.formula
    for name in ("log10_wave", "flux", "ivar", "andmask", "ormask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    ha, hb = dict(a.header), dict(b.header)
    for k in ha:
        if isinstance(ha[k], float) and math.isnan(ha[k]):
            assert math.isnan(hb[k]), k
        else:
            assert ha[k] == hb[k], (k, ha[k], hb[k])


def test_fast_path_equals_astropy_on_fixtures(tmp_path):
    from gsn_dask.io.lamost import _fast_primary_image, _load_bytes

    flux, ivar = _spectrum(3904)
    andmask = np.zeros(3904, np.int32)
    andmask[5:9] = 3
    p = write_lrs_file(tmp_path / "spec-55862-B6212_sp06-003.fits", flux, ivar, andmask=andmask, z=-7e-5,
                       planid="O'Brien", extra_cards={"SN_G": -9999.0})
    assert _fast_primary_image(_load_bytes(p)) is not None  # the fast path is taken
    _same_native(read_native(p, fast=True), read_native(p, fast=False))
    p6 = write_lrs_file(tmp_path / "x.fits.gz", flux, ivar, layout="image-dr6", obsid=123456789012)
    _same_native(read_native(p6, fast=True), read_native(p6, fast=False))
    # unusual headers fall back to astropy: scaled data, a long EXTEN0 continued over cards
    rows = np.zeros((5, 3904), np.float32)
    rows[0], rows[1] = flux, ivar
    h = fits.PrimaryHDU(rows).header
    h.update({"CRVAL1": 3.5682, "CD1_1": 1e-4, "CRPIX1": 1, "BZERO": 0.5})
    data = rows.astype(">f4").tobytes()
    (tmp_path / "scaled.fits").write_bytes(h.tostring().encode() + data + b"\0" * (-len(data) % 2880))
    assert _fast_primary_image(_load_bytes(tmp_path / "scaled.fits")) is None
    np.testing.assert_allclose(read_lrs(tmp_path / "scaled.fits").flux[:3904], flux + 0.5, rtol=1e-6)
    h = fits.Header({"CRVAL1": 3.5682, "CD1_1": 1e-4, "CRPIX1": 1})
    h["EXTEN0"] = "Flux Inverse Subcontinuum Andmask Ormask " + "x" * 80
    fits.PrimaryHDU(rows, header=h).writeto(tmp_path / "long.fits")
    assert _fast_primary_image(_load_bytes(tmp_path / "long.fits")) is None
    np.testing.assert_array_equal(read_lrs(tmp_path / "long.fits").flux[:3904], flux)


@pytest.mark.skipif(not (LAMOST / "dr1").is_dir(), reason="shared LAMOST data not available")
def test_fast_path_equals_astropy_on_real_files():
    files = _dr1_files() + sorted(str(p) for p in (LAMOST / "laspec" / "lrs").iterdir())
    for f in files:
        _same_native(read_native(f, fast=True), read_native(f, fast=False))
