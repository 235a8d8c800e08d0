"""Tests for gsn_dask.grid.phoenix: names, grid nodes, reading, fixtures and the downloader
(against a local HTTP server on 127.0.0.1 that serves fixture files in the server layout)."""
from __future__ import annotations

import hashlib
import http.server
import logging
import math
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from gsn_dask.grid import phoenix as ph

SUFFIX = ".PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"
SHARED_PHOENIX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "phoenix"
NPIX = 20000


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def wave() -> np.ndarray:
    return ph.fixture_wavelength(NPIX, 3000.0, 10000.0)


def small_grid(root: Path, wave: np.ndarray) -> list[Path]:
    """12 solar-scaled spectra (3 Teff x 2 log g x 2 [Fe/H]) + one alpha-enhanced spectrum."""
    paths = ph.write_fixture_grid(root, teff=(5000, 5200), logg=(4.0, 4.5), feh=(-0.5, 0.0), wavelength=wave)
    paths += ph.write_fixture_grid(root, [{"teff": 5000, "logg": 4.5, "feh": -0.5, "alpha_fe": 0.2}], wavelength=wave)
    return paths


def equivalent_width(w: np.ndarray, f: np.ndarray, lo: float, hi: float) -> float:
    """EW (A) in lo..hi against a straight continuum through the window's edge maxima."""
    s = (w >= lo) & (w <= hi)
    ws, fs = w[s], f[s]
    n = max(3, ws.size // 20)
    c = np.interp(ws, [ws[:n].mean(), ws[-n:].mean()], [fs[:n].max(), fs[-n:].max()])
    return float(np.trapezoid(1.0 - fs / c, ws))


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("labels", "name", "folder"),
    [
        ((5800, 4.5, 0.0, 0.0), "lte05800-4.50-0.0" + SUFFIX, "Z-0.0"),
        ((5800, 4.5, -0.0, 0.0), "lte05800-4.50-0.0" + SUFFIX, "Z-0.0"),
        ((5800, 4.5, -1.0, 0.4), "lte05800-4.50-1.0.Alpha=+0.40" + SUFFIX, "Z-1.0.Alpha=+0.40"),
        ((3500, 0.0, 0.0, -0.2), "lte03500-0.00-0.0.Alpha=-0.20" + SUFFIX, "Z-0.0.Alpha=-0.20"),
        ((12000, 6.0, 0.5, 0.0), "lte12000-6.00+0.5" + SUFFIX, "Z+0.5"),
        ((2300, 5.5, -4.0, 0.0), "lte02300-5.50-4.0" + SUFFIX, "Z-4.0"),
        ((7200, 1.0, 1.0, 0.0), "lte07200-1.00+1.0" + SUFFIX, "Z+1.0"),
    ],
)
def test_filename_format_parse_round_trip(labels, name, folder):
    teff, logg, feh, alpha = labels
    assert ph.format_filename(teff, logg, feh, alpha) == name
    assert ph.format_dirname(feh, alpha) == folder
    assert ph.relative_path(teff, logg, feh, alpha) == f"PHOENIX-ACES-AGSS-COND-2011/{folder}/{name}"
    got = ph.parse_filename(name)
    assert got == {"teff": float(teff), "logg": logg, "feh": feh + 0.0, "alpha_fe": alpha}
    if feh == 0:
        assert math.copysign(1.0, got["feh"]) == 1.0  # "-0.0" parses to +0.0
    assert ph.parse_filename(Path("/some/dir") / folder / name) == got
    assert ph.parse_dirname(folder) == {"feh": feh + 0.0, "alpha_fe": alpha}
    assert ph.spectrum_id(got) == name[: -len(SUFFIX)]


def test_round_trip_over_whole_grid():
    pts = ph.grid_points(alpha_fe=None)
    names = {ph.format_filename(**p) for p in pts}
    assert len(names) == len(pts)
    for p in pts:
        assert ph.parse_filename(ph.format_filename(**p)) == p


@pytest.mark.parametrize(
    "bad",
    [
        "lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits.part",
        "lte5800-4.50-0.0" + SUFFIX,
        "lte05800-4.5-0.0" + SUFFIX,
        "lte05800-4.50-0.0.Alpha=0.40" + SUFFIX,
        "lte05800-4.50-0.0.BT-Settl.fits",
        "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits",
    ],
)
def test_parse_filename_rejects_other_names(bad):
    with pytest.raises(ph.PhoenixFilenameError, match="not a PHOENIX HiRes file name"):
        ph.parse_filename(bad)


# ----------------------------------------------------------------------------- grid nodes
def test_grid_nodes_and_alpha_availability():
    assert len(ph.TEFF_NODES) == 73 and 7000.0 in ph.TEFF_NODES and 7100.0 not in ph.TEFF_NODES
    assert 7200.0 in ph.TEFF_NODES and ph.TEFF_NODES[0] == 2300.0 and ph.TEFF_NODES[-1] == 12000.0
    assert len(ph.grid_points()) == 73 * 13 * 9  # alpha_fe defaults to 0
    pts = ph.grid_points(teff=(3400, 3600), logg=4.5, feh=-3.0, alpha_fe=None)
    assert len(pts) == 1 + 8 + 8  # 3400 K has no alpha models, 3500 and 3600 K have all 8
    everything = ph.grid_points(alpha_fe=None)
    for p in everything:
        if p["alpha_fe"] != 0.0:
            assert 3500 <= p["teff"] <= 8000 and -3.0 <= p["feh"] <= 0.0
    assert not any(p["feh"] == -4.0 and p["alpha_fe"] != 0 for p in everything)
    assert ph.grid_points(teff=5800, logg=4.5, feh=0, alpha_fe=(0.3, 0.5)) == [
        {"teff": 5800.0, "logg": 4.5, "feh": 0.0, "alpha_fe": 0.4}
    ]


def test_label_outside_grid_errors():
    with pytest.raises(ph.PhoenixGridError, match="outside the PHOENIX grid"):
        ph.grid_points(teff=(13000, 15000))
    with pytest.raises(ph.PhoenixGridError, match="outside the PHOENIX grid"):
        ph.grid_points(feh=-5.0)
    with pytest.raises(ph.PhoenixGridError, match=r"not a PHOENIX grid node \(nearest nodes: 5800, 5900\)"):
        ph.grid_points(teff=5850)
    with pytest.raises(ph.PhoenixGridError, match="low is above high"):
        ph.grid_points(logg=(5.0, 4.0))
    with pytest.raises(ph.PhoenixGridError, match="only for 3500"):
        ph.check_grid_point(9000, 4.5, 0.0, 0.4)
    with pytest.raises(ph.PhoenixGridError, match="no PHOENIX grid nodes"):
        ph.grid_points(teff=9000, feh=0.5, alpha_fe=0.4)
    ph.check_grid_point(5800, 4.5, -1.0, 0.4)  # a real node: no error


# ----------------------------------------------------------------------------- fixture format + reading
def test_fixture_files_have_the_phoenix_layout(tmp_path, wave):
    paths = ph.write_fixture_grid(tmp_path, [{"teff": 5800, "logg": 4.5, "feh": -1.0, "alpha_fe": 0.4}], wavelength=wave)
    assert paths == [tmp_path / "PHOENIX-ACES-AGSS-COND-2011/Z-1.0.Alpha=+0.40/lte05800-4.50-1.0.Alpha=+0.40" f"{SUFFIX}"]
    with fits.open(tmp_path / ph.WAVE_FILENAME) as h:
        assert len(h) == 1 and h[0].header["BITPIX"] == -64 and h[0].data.shape == (NPIX,)
        assert "CRVAL1" not in h[0].header  # no WCS: the array is the wavelength
    with fits.open(paths[0]) as h:
        hdr = h[0].header
        assert hdr["BITPIX"] == -32 and h[0].data.shape == (NPIX,) and h[0].data.dtype.kind == "f"
        assert (hdr["PHXTEFF"], hdr["PHXLOGG"], hdr["PHXM_H"], hdr["PHXALPHA"]) == (5800.0, 4.5, -1.0, 0.4)
        for key in ("PHXDUST", "PHXXI_L", "PHXXI_M", "PHXXI_N", "PHXMASS", "PHXREFF", "PHXLUM", "PHXMXLEN",
                    "PHXBUILD", "PHXVER", "PHXEOS", "DATE"):
            assert key in hdr
        assert hdr["BUNIT"] == "erg/s/cm^2/cm"
        assert h[1].name == "ABUNDANCES"
    w = ph.read_wavelength(tmp_path)
    assert w.dtype == np.float64 and np.array_equal(w, wave)
    labels, flux = ph.read_spectrum(paths[0])
    assert labels == {"teff": 5800.0, "logg": 4.5, "feh": -1.0, "alpha_fe": 0.4}
    assert flux.dtype == np.float64 and flux.shape == (NPIX,) and np.all(flux > 0)
    # a solar-type surface flux: pi*B_lambda(5800 K) peaks ~5000 A at ~8e14 erg/s/cm^2/cm
    bb = np.pi * 2 * 6.62607015e-27 * 2.99792458e10**2 / (5000e-8) ** 5 / np.expm1(1.438777 / (5000e-8 * 5800))
    assert 0.5 * bb < np.max(flux[(w > 4900) & (w < 5100)]) <= 1.0001 * bb


def test_fixture_flux_depends_on_labels(wave):
    f = {k: ph.fixture_flux(wave, *k).astype(float) for k in
         [(5800, 4.5, 0.0, 0.0), (5800, 4.5, -2.0, 0.0), (5800, 4.5, -1.0, 0.0), (5800, 4.5, -1.0, 0.4),
          (4500, 4.5, 0.0, 0.0), (7000, 4.5, 0.0, 0.0), (9600, 4.0, 0.0, 0.0), (9600, 2.0, 0.0, 0.0)]}
    mgb = {k: equivalent_width(wave, v, 5155, 5200) for k, v in f.items()}
    assert mgb[(5800, 4.5, 0.0, 0.0)] > 2.0 * mgb[(5800, 4.5, -2.0, 0.0)]  # metal lines grow with [Fe/H]
    assert mgb[(5800, 4.5, -1.0, 0.4)] > 1.2 * mgb[(5800, 4.5, -1.0, 0.0)]  # Mg is an alpha element
    assert mgb[(4500, 4.5, 0.0, 0.0)] > mgb[(5800, 4.5, 0.0, 0.0)] > mgb[(7000, 4.5, 0.0, 0.0)]  # cooler: stronger
    hb = {k: equivalent_width(wave, v, 4800, 4925) for k, v in f.items()}
    assert hb[(9600, 4.0, 0.0, 0.0)] > 2.5 * hb[(5800, 4.5, 0.0, 0.0)]  # Balmer lines peak in A stars
    assert hb[(9600, 4.0, 0.0, 0.0)] > 1.3 * hb[(9600, 2.0, 0.0, 0.0)]  # pressure-broadened wings
    colour = {k: np.median(v[(wave > 4000) & (wave < 4100)]) / np.median(v[(wave > 8000) & (wave < 8100)]) for k, v in f.items()}
    assert colour[(4500, 4.5, 0.0, 0.0)] < colour[(5800, 4.5, 0.0, 0.0)] < colour[(7000, 4.5, 0.0, 0.0)]
    again = ph.fixture_flux(wave, 5800, 4.5, 0.0, 0.0)
    assert np.array_equal(again, f[(5800, 4.5, 0.0, 0.0)].astype(np.float32))  # deterministic


def test_full_size_fixture_wavelength():
    w = ph.fixture_wavelength(ph.PHOENIX_NPIX)
    assert w.size == 1569128 and w[0] == 500.0 and abs(w[-1] - 55000.0) < 1e-6 and np.all(np.diff(w) > 0)
    r = ph.sampling_resolution(w)
    assert r[(w > 3700) & (w < 9100)].min() > 5e5


def test_source_resolution():
    assert ph.phoenix_source_resolution() == 500000.0
    assert ph.phoenix_source_resolution(3700, 9100) == 500000.0
    assert ph.phoenix_source_resolution(20000, 30000) == 100000.0
    assert ph.phoenix_source_resolution(1000, 4000) == pytest.approx(1000 / 0.1)
    w = ph.fixture_wavelength(NPIX, 3000, 10000)
    expect = (NPIX - 1) / math.log(10000 / 3000)
    assert ph.phoenix_source_resolution(3700, 9100, wavelength=w) == pytest.approx(expect, rel=1e-3)
    with pytest.raises(ph.PhoenixError):
        ph.phoenix_source_resolution(60000, 70000)


def test_header_name_mismatch_is_a_clear_error(tmp_path, wave):
    p = ph.write_fixture_spectrum(tmp_path, 5800, 4.5, 0.0, wavelength=wave, header_overrides={"PHXTEFF": 5900.0})
    assert p.name == "lte05800-4.50-0.0" + SUFFIX
    with pytest.raises(ph.PhoenixFileError, match=r"lte05800-4\.50-0\.0.*disagree: teff: name 5800, header 5900") as ei:
        ph.read_spectrum(p)
    assert ei.value.path == p
    q = ph.write_fixture_spectrum(tmp_path / "q", 5800, 4.5, -1.0, 0.4, wavelength=wave,
                                  header_overrides={"PHXM_H": -0.5, "PHXALPHA": 0.2})
    with pytest.raises(ph.PhoenixFileError, match="feh: name -1, header -0.5; alpha_fe: name 0.4, header 0.2"):
        ph.read_spectrum(q)
    labels, _ = ph.read_spectrum(q, check_header=False)
    assert labels["feh"] == -1.0
    # PHXALPHA absent -> taken as 0, consistent with a solar-scaled name
    r = ph.write_fixture_spectrum(tmp_path / "r", 5800, 4.5, 0.0, wavelength=wave, header_overrides={"PHXALPHA": None})
    assert ph.read_spectrum(r)[0]["alpha_fe"] == 0.0
    s = ph.write_fixture_spectrum(tmp_path / "s", 5800, 4.5, 0.0, wavelength=wave, header_overrides={"PHXTEFF": None})
    with pytest.raises(ph.PhoenixFileError, match="header lacks PHXTEFF"):
        ph.read_spectrum(s)
    u = ph.write_fixture_spectrum(tmp_path / "u", 5800, 4.5, 0.0, wavelength=wave, header_overrides={"BUNIT": "Jy"})
    with pytest.raises(ph.PhoenixFileError, match="unexpected flux unit"):
        ph.read_spectrum(u)


def test_truncated_and_corrupt_files_are_clear_errors(tmp_path, wave):
    p = ph.write_fixture_spectrum(tmp_path, 5800, 4.5, 0.0, wavelength=wave)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ph.PhoenixFileError, match=re.escape(str(p))):
        ph.read_spectrum(p)
    p.write_bytes(data[:1000])
    with pytest.raises(ph.PhoenixFileError, match="corrupt or truncated"):
        ph.read_spectrum(p)
    p.write_bytes(b"<html><body>503 Service Unavailable</body></html>")
    with pytest.raises(ph.PhoenixFileError, match="corrupt or truncated"):
        ph.read_spectrum(p)
    nan = ph.write_fixture_spectrum(tmp_path / "n", 5800, 4.5, 0.0, wavelength=wave,
                                    flux=np.where(wave > 5000, np.nan, 1.0))
    with pytest.raises(ph.PhoenixFileError, match="non-finite"):
        ph.read_spectrum(nan)
    w = ph.write_fixture_wavelength(tmp_path / "w", wave)
    w.write_bytes(w.read_bytes()[:5000])
    with pytest.raises(ph.PhoenixFileError, match="wavelength file"):
        ph.read_wavelength(w)
    ph.write_fixture_wavelength(tmp_path / "d", wave[::-1])
    with pytest.raises(ph.PhoenixFileError, match="increase strictly"):
        ph.read_wavelength(tmp_path / "d")


def test_missing_wave_file_error(tmp_path, wave):
    ph.write_fixture_spectrum(tmp_path / "PHOENIX-ACES-AGSS-COND-2011" / "Z-0.0", 5800, 4.5, 0.0, wavelength=wave)
    with pytest.raises(ph.PhoenixMissingFileError, match="WAVE_PHOENIX-ACES-AGSS-COND-2011.fits not found") as ei:
        ph.read_wavelength(tmp_path)
    assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, ph.PhoenixFileError)
    with pytest.raises(ph.PhoenixMissingFileError, match="WAVE_PHOENIX"):
        ph.iter_spectra(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ph.list_grid(tmp_path / "nowhere")
    # once the WAVE file exists it is found from the root, from above (HiResFITS/) and from a Z folder
    ph.write_fixture_wavelength(tmp_path, wave)
    for where in (tmp_path, tmp_path.parent, tmp_path / "PHOENIX-ACES-AGSS-COND-2011" / "Z-0.0"):
        if where == tmp_path.parent:
            hires = tmp_path.parent / "up" / "HiResFITS"
            shutil.copytree(tmp_path, hires)
            where = tmp_path.parent / "up"
        assert ph.read_wavelength(where).size == NPIX


# ----------------------------------------------------------------------------- list_grid / iter_spectra
def test_list_grid_filters(tmp_path, wave):
    small_grid(tmp_path, wave)
    z = tmp_path / "PHOENIX-ACES-AGSS-COND-2011" / "Z-0.0"
    (z / "notes.txt").write_text("not a spectrum")
    (z / ("lte05000-4.50-0.0" + SUFFIX + ".part")).write_bytes(b"partial")
    (z / "lte05000-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-MedRes.fits").write_bytes(b"x")
    files = ph.list_grid(tmp_path)
    assert len(files) == 12 and all(f.name.endswith(SUFFIX) for f in files)
    labels = [ph.parse_filename(f) for f in files]
    assert labels == sorted(labels, key=lambda d: (d["teff"], d["logg"], d["feh"]))
    assert len(ph.list_grid(tmp_path, alpha_fe=None)) == 13
    assert [ph.parse_filename(f)["alpha_fe"] for f in ph.list_grid(tmp_path, alpha_fe=0.2)] == [0.2]
    assert len(ph.list_grid(tmp_path, teff=(5100, 5200))) == 8
    assert len(ph.list_grid(tmp_path, feh=0.0)) == 6
    assert {f.name for f in ph.list_grid(tmp_path, teff=5000, logg=4.5)} == {
        "lte05000-4.50-0.0" + SUFFIX, "lte05000-4.50-0.5" + SUFFIX}
    assert ph.list_grid(tmp_path, teff=(6000, 7000)) == []  # inside the grid, just not local
    with pytest.raises(ph.PhoenixGridError, match="outside the PHOENIX grid"):
        ph.list_grid(tmp_path, logg=(6.5, 7.0))
    # the same listing from the folder above (HiResFITS inside it)
    assert len(ph.list_grid(tmp_path.parent, teff=(5000, 5200), logg=(4.0, 4.5), feh=(-0.5, 0.0))) >= 12


def test_iter_spectra_skips_and_reports_bad_files(tmp_path, wave, caplog):
    files = small_grid(tmp_path, wave)
    truncated = files[3]
    truncated.write_bytes(truncated.read_bytes()[:20000])
    mismatch = files[5]
    lab = ph.parse_filename(mismatch)
    ph.write_fixture_spectrum(mismatch, lab["teff"], lab["logg"], lab["feh"], wavelength=wave,
                              header_overrides={"PHXLOGG": lab["logg"] + 0.5})
    short = files[7]
    lab7 = ph.parse_filename(short)
    ph.write_fixture_spectrum(short, lab7["teff"], lab7["logg"], lab7["feh"], wavelength=wave[:1000])
    spectra = ph.iter_spectra(tmp_path)
    assert len(spectra) == 12
    with caplog.at_level(logging.WARNING, logger="gsn_dask.grid.phoenix"):
        items = list(spectra)
    assert len(items) == 9 and spectra.n_ok == 9
    assert {p for p, _ in spectra.bad} == {truncated, mismatch, short}
    reasons = dict(spectra.bad)
    assert "disagree" in reasons[mismatch] and "logg" in reasons[mismatch]
    assert "1000 pixels but the WAVE file has 20000" in reasons[short]
    assert sum("skipping bad PHOENIX file" in r.message for r in caplog.records) == 3
    rep = spectra.report()
    assert rep["files"] == 12 and rep["good"] == 9 and len(rep["bad"]) == 3
    for labels, w, flux in items:
        assert set(labels) == {"teff", "logg", "feh", "alpha_fe"} and labels["alpha_fe"] == 0.0
        assert np.array_equal(w, wave) and flux.shape == wave.shape and flux.dtype == np.float64
        assert not w.flags.writeable
    # flux matches what the fixture writer put there, to float32 precision
    lab0, _, f0 = items[0]
    ref = ph.fixture_flux(wave, lab0["teff"], lab0["logg"], lab0["feh"], 0.0)
    np.testing.assert_array_equal(f0, ref.astype(np.float64))
    # cropping, paths, re-iteration resets the bad list
    cut = ph.iter_spectra(tmp_path, teff=5100, feh=0.0, wave_range=(3700, 9100), with_path=True)
    got = list(cut)
    assert len(got) == 2 and all(len(item) == 4 for item in got)
    w = got[0][1]
    assert w[0] >= 3700 and w[-1] <= 9100 and got[0][2].size == w.size
    assert got[0][3].name.startswith("lte05100-4.00-0.0")
    assert len(list(spectra)) == 9 and len(spectra.bad) == 3
    first = next(ph.iter_spectra(tmp_path))  # also usable as an iterator
    assert first[0] == items[0][0] and np.array_equal(first[2], items[0][2])


@pytest.mark.skipif(not SHARED_PHOENIX.exists(), reason="no real PHOENIX files in shared/data/phoenix")
def test_real_phoenix_files_if_present():  # pragma: no cover - only where real files exist
    wave = ph.read_wavelength(SHARED_PHOENIX)
    assert wave.size == ph.PHOENIX_NPIX and 499 < wave[0] < 501 and 54900 < wave[-1] < 55001
    spectra = ph.iter_spectra(SHARED_PHOENIX, alpha_fe=None)
    n = sum(1 for _ in spectra)
    assert n >= 1 and not spectra.bad


# ----------------------------------------------------------------------------- downloader
class FixtureServer:
    """HTTP server on 127.0.0.1 serving ``root`` under /data/HiResFITS/ with Range support,
    optional one-time connection drops, garbage responses and a request log."""

    prefix = "/data/HiResFITS/"

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()
        self.garbage: set[str] = set()
        self.support_range = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                rel = path[len(server.prefix):] if path.startswith(server.prefix) else ""
                rng = self.headers.get("Range")
                server.requests.append((rel, rng))
                if rel in server.garbage:
                    body = b"<html><body>maintenance</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                f = server.root / rel
                if not rel or not f.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = f.read_bytes()
                start, status = 0, 200
                if rng and server.support_range:
                    start = int(re.match(r"bytes=(\d+)-$", rng)[1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/fits")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if rel in server.drop_once:
                    server.drop_once.discard(rel)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}{self.prefix}"

    def gets(self, rel: str) -> list[str | None]:
        return [r for p, r in self.requests if p == rel]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def server_root(tmp_path_factory, wave) -> Path:
    root = tmp_path_factory.mktemp("srv") / "HiResFITS"
    ph.write_fixture_grid(root, teff=(5000, 5100), logg=4.5, feh=(-0.5, 0.0), wavelength=wave)
    ph.write_fixture_grid(root, [{"teff": 5000, "logg": 4.5, "feh": -0.5, "alpha_fe": 0.2}], wavelength=wave)
    # a grid node the server lacks (like the real grid's holes)
    (root / ph.relative_path(5100, 4.5, -0.5)).unlink()
    return root


@pytest.fixture
def server(server_root, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = FixtureServer(server_root)
    yield srv
    srv.close()


def _download(dest, srv, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("workers", 2)
    return ph.download_grid(dest, teff=(5000, 5100), logg=4.5, feh=(-0.5, 0.0), base_url=srv.base_url, **kw)


def _manifest(dest: Path) -> dict[str, str]:
    out = {}
    for line in (dest / ph.MANIFEST_NAME).read_text().splitlines():
        digest, rel = line.split("  ", 1)
        out[rel] = digest
    return out


def test_download_grid_layout_404_and_manifest(tmp_path, server, server_root):
    dest = tmp_path / "HiResFITS"
    rep = _download(dest, server)
    missing = ph.relative_path(5100, 4.5, -0.5)
    assert rep.ok and rep.missing == [missing]
    assert len(rep.requested) == 5 and len(rep.downloaded) == 4 and rep.skipped == [] and rep.resumed == []
    assert ph.WAVE_FILENAME in rep.downloaded
    for rel in rep.downloaded:
        assert (dest / rel).read_bytes() == (server_root / rel).read_bytes()
    assert not list(dest.rglob("*.part"))
    man = _manifest(dest)
    assert set(man) == set(rep.downloaded)
    for rel, digest in man.items():
        assert digest == hashlib.sha256((dest / rel).read_bytes()).hexdigest()
    assert rep.bytes_downloaded == sum((dest / r).stat().st_size for r in rep.downloaded)
    assert "1 not on the server (404)" in rep.summary()
    # the result is a readable grid
    assert len(ph.list_grid(dest)) == 3 and len(list(ph.iter_spectra(dest))) == 3
    # second run: everything verified against the manifest, nothing fetched again
    n_before = len(server.requests)
    rep2 = _download(dest, server)
    assert rep2.ok and rep2.downloaded == [] and len(rep2.skipped) == 4 and rep2.missing == [missing]
    assert [r for r, _ in server.requests[n_before:]] == [missing]


def test_download_redownloads_on_checksum_mismatch(tmp_path, server, server_root):
    dest = tmp_path / "g"
    _download(dest, server)
    rel = ph.relative_path(5000, 4.5, 0.0)
    good = (dest / rel).read_bytes()
    bad = bytearray(good)
    bad[-100] ^= 0xFF  # same size, silently corrupted data
    (dest / rel).write_bytes(bytes(bad))
    rep = _download(dest, server)
    assert rep.redownloaded == [rel] and rep.downloaded == [rel] and len(rep.skipped) == 3
    assert (dest / rel).read_bytes() == good
    assert _manifest(dest)[rel] == hashlib.sha256(good).hexdigest()
    # with verify=False the manifest is trusted without hashing
    (dest / rel).write_bytes(bytes(bad))
    assert _download(dest, server, verify=False).downloaded == []
    # a complete file that the manifest does not list is adopted; a broken one is fetched again
    (dest / ph.MANIFEST_NAME).unlink()
    other = ph.relative_path(5100, 4.5, 0.0)
    (dest / other).write_bytes((dest / other).read_bytes()[:3000])
    rep = _download(dest, server)
    assert rep.downloaded == [other] and rel in rep.skipped
    assert set(_manifest(dest)) == {ph.WAVE_FILENAME, rel, other, ph.relative_path(5000, 4.5, -0.5),
                                     ph.relative_path(5000, 4.5, -0.5, 0.0)}


@pytest.mark.parametrize("support_range", [True, False])
def test_download_resumes_after_dropped_connection(tmp_path, server, server_root, support_range):
    server.support_range = support_range
    rel = ph.relative_path(5000, 4.5, -0.5)
    server.drop_once.add(rel)
    dest = tmp_path / "g"
    rep = _download(dest, server, retries=2)
    assert rep.ok and rel in rep.downloaded
    assert (dest / rel).read_bytes() == (server_root / rel).read_bytes()
    size = (server_root / rel).stat().st_size
    ranges = server.gets(rel)
    assert len(ranges) == 2 and ranges[0] is None
    assert ranges[1] == f"bytes={size // 2}-"  # continued where the dropped connection stopped
    assert rep.resumed == ([rel] if support_range else [])
    # bytes received include the dropped half; without Range support that half is fetched twice
    assert rep.bytes_downloaded == sum((dest / r).stat().st_size for r in rep.downloaded) + (0 if support_range else size // 2)


def rep_wave_and_others(rep, dest: Path) -> int:
    return sum((dest / r).stat().st_size for r in rep.downloaded)


def test_interrupted_run_resumes_on_rerun(tmp_path, server, server_root):
    rel = ph.relative_path(5100, 4.5, 0.0)
    server.drop_once.add(rel)
    dest = tmp_path / "g"
    rep = _download(dest, server, retries=0)
    assert not rep.ok and [r for r, _ in rep.failed] == [rel]
    assert "closed after" in rep.failed[0][1] and "rerun to resume" in rep.failed[0][1]
    part = dest / (rel + ".part")
    size = (server_root / rel).stat().st_size
    assert part.stat().st_size == size // 2 and not (dest / rel).exists()
    assert rel not in _manifest(dest)
    assert ph.list_grid(dest, teff=5100, feh=0.0) == []  # a .part is never listed
    rep2 = _download(dest, server, retries=0)
    assert rep2.ok and rep2.downloaded == [rel] and rep2.resumed == [rel]
    assert server.gets(rel)[-1] == f"bytes={size // 2}-"
    assert (dest / rel).read_bytes() == (server_root / rel).read_bytes() and not part.exists()
    assert rep.bytes_downloaded - rep_wave_and_others(rep, dest) == size // 2
    assert rep2.bytes_downloaded == size - size // 2


def test_download_network_failure_and_garbage(tmp_path, server, server_root):
    rel = ph.relative_path(5000, 4.5, 0.0)
    server.garbage.add(rel)
    rep = _download(tmp_path / "g", server)
    assert [r for r, _ in rep.failed] == [rel] and "not a FITS file" in rep.failed[0][1]
    assert not (tmp_path / "g" / rel).exists() and not (tmp_path / "g" / (rel + ".part")).exists()
    # nobody listening: every file fails after its retries, and no exception escapes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rep = ph.download_grid(tmp_path / "h", teff=5000, logg=4.5, feh=0.0, base_url=f"http://127.0.0.1:{port}/x/",
                           retries=2, backoff=0.0, progress=False, timeout=5)
    assert not rep.ok and len(rep.failed) == 2 and rep.downloaded == []
    assert all("network error" in r and "gave up after 3 tries" in r for _, r in rep.failed)


def test_command_line(tmp_path, server, server_root, capsys):
    dest = tmp_path / "cli"
    args = ["download", str(dest), "--teff", "5000", "--logg", "4.5", "--feh", "-0.5", "0",
            "--base-url", server.base_url, "--no-progress", "--backoff", "0", "--workers", "1"]
    assert ph.main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [ph.WAVE_FILENAME, ph.relative_path(5000, 4.5, -0.5), ph.relative_path(5000, 4.5, 0.0)]
    assert not dest.exists()
    assert ph.main(args) == 0
    assert (dest / ph.relative_path(5000, 4.5, 0.0)).exists()
    assert ph.main(["download", str(dest), "--teff", "5100", "--logg", "4.5", "--feh", "-0.5", "--base-url",
                    server.base_url, "--no-progress"]) == 0  # a 404 alone is not a failure
    assert "not on the server (404)" in capsys.readouterr().err
    assert ph.main(["list", str(dest), "--any-alpha"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert ph.main(["points", "--teff", "5800", "--logg", "4.5", "--feh", "-1", "--alpha", "0", "0.4"]) == 0
    assert capsys.readouterr().out.split() == [ph.relative_path(5800, 4.5, -1.0, a) for a in (0.0, 0.2, 0.4)]
    assert ph.main(["download", str(tmp_path / "big"), "--teff", "5000", "6000", "--max-files", "5",
                    "--base-url", server.base_url]) == 2
    assert "raise --max-files" in capsys.readouterr().err and not (tmp_path / "big").exists()
    assert ph.main(["points", "--teff", "20000"]) == 2
    assert "outside the PHOENIX grid" in capsys.readouterr().err
    assert ph.main(["fixture", str(tmp_path / "fx"), "--teff", "5800", "--logg", "4.5", "--feh", "0", "--n-pix", "500"]) == 0
    assert ph.read_spectrum(tmp_path / "fx" / ph.relative_path(5800, 4.5, 0.0))[1].size == 500
    proc = subprocess.run([sys.executable, "-m", "gsn_dask.grid.phoenix", "download", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--teff" in proc.stdout and "MANIFEST.sha256" in proc.stdout
