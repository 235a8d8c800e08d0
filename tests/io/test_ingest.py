"""Tests for gsn_dask.io.ingest (the Dask-parallel ingest driver) and `gsn-dask ingest`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from gsn_dask.cli import main
from gsn_dask.cube import CubeSchemaError, log_lambda_grid, open_spectra
from gsn_dask.io.ingest import LabelTable, find_spectra_files, ingest, read_batch, rejects_path_for
from gsn_dask.io.lamost import read_lrs, write_lrs_file

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # tests/io/ -> repo -> ../shared
LAMOST = SHARED_DATA / "lamost"
GRID = log_lambda_grid()


def _spec(seed: int, n: int = 3909) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(50, 150, n).astype(np.float32), rng.uniform(0.5, 2.0, n).astype(np.float32)


def _make_inputs(root: Path) -> dict[str, str]:
    """A directory of good and bad files; returns file name -> expected star id or reject code."""
    root.mkdir(parents=True, exist_ok=True)
    exp: dict[str, str] = {}
    f, i = _spec(1, 3904)
    write_lrs_file(root / "spec-55862-B6212_sp06-003.fits", f, i, layout="image-dr1", lmjd=55862, planid="B6212",
                   spid=6, fiberid=3, snr_g=40.0)
    exp["spec-55862-B6212_sp06-003.fits"] = "dr1-55862-B6212-06-003"
    f, i = _spec(2, 3908)
    write_lrs_file(root / "spec-55862-B6212_sp06-004.fits", f, i, layout="image-dr1", lmjd=55862, planid="B6212",
                   spid=6, fiberid=4, snr_g=20.0)
    exp["spec-55862-B6212_sp06-004.fits"] = "dr1-55862-B6212-06-004"
    f, i = _spec(3)
    write_lrs_file(root / "spec-57287-KP1_sp10-161.fits.gz", f, i, layout="image-dr6", obsid=359910161, snr_g=80.0)
    exp["spec-57287-KP1_sp10-161.fits.gz"] = "359910161"
    f, i = _spec(4)
    write_lrs_file(root / "spec-58800-T1_sp01-001.fits", f, i, layout="bintable", obsid=1001, snr_g=30.0)
    exp["spec-58800-T1_sp01-001.fits"] = "1001"
    f, i = _spec(5)
    write_lrs_file(root / "spec-58800-T1_sp01-002.fits.gz", f, i, layout="bintable-rows", obsid=1002, snr_g=31.0)
    exp["spec-58800-T1_sp01-002.fits.gz"] = "1002"
    f, i = _spec(6, 3800)
    write_lrs_file(root / "spec-58800-T1_sp01-003.fits", f, i, layout="bintable", obsid=1003, log10_start=3.5682 + 4e-4)
    exp["spec-58800-T1_sp01-003.fits"] = "1003"
    # duplicate of obsid 1001 with a lower snr -> rejected
    f, i = _spec(7)
    write_lrs_file(root / "spec-58800-T1_sp01-009.fits", f, i, layout="bintable", obsid=1001, snr_g=10.0)
    exp["spec-58800-T1_sp01-009.fits"] = "duplicate"
    # bad files
    good = (root / "spec-58800-T1_sp01-001.fits").read_bytes()
    (root / "trunc.fits").write_bytes(good[: len(good) // 2])
    exp["trunc.fits"] = "truncated"
    (root / "notes.fits").write_text("observing notes, not a FITS file\n")
    exp["notes.fits"] = "not FITS"
    f, i = _spec(8)
    write_lrs_file(root / "ivar0.fits", f, np.zeros_like(i), obsid=2001)
    exp["ivar0.fits"] = "no good pixels"
    n_red = int(np.log10(10000 / 9500) / 1e-4)
    write_lrs_file(root / "red.fits", f[:n_red], i[:n_red], log10_start=np.log10(9500.0), obsid=2002)
    exp["red.fits"] = "wrong coverage"
    cols = [fits.Column(c, "E", array=np.ones(100)) for c in ("FLUX", "IVAR")]
    cols.append(fits.Column("LOGLAM", "E", array=3.69 + 1e-5 * np.arange(100)))
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD_B")]).writeto(root / "med-1-X_sp01-001.fits")
    exp["med-1-X_sp01-001.fits"] = "MRS"
    (root / "readme.txt").write_text("ignored: not a FITS name")
    return exp


REJECT_CODES = {"duplicate", "truncated", "not FITS", "no good pixels", "wrong coverage", "MRS"}


def _check_rejects(report, exp: dict[str, str]) -> None:
    got = {Path(f).name: c for f, c in zip(report.rejects["file"], report.rejects["code"])}
    want = {k: v for k, v in exp.items() if v in REJECT_CODES}
    assert got == want


def test_ingest_fixture_directory(tmp_path):
    exp = _make_inputs(tmp_path / "in")
    out = tmp_path / "cube.zarr"
    rep = ingest([tmp_path / "in"], out, chunk_size=4, n_workers=0, progress=False)
    good = {k: v for k, v in exp.items() if v not in REJECT_CODES}
    assert rep.n_ingested == len(good) == 6
    assert rep.n_files == len(exp)
    assert rep.engine == "in-process"
    _check_rejects(rep, exp)
    # rejects table next to the cube, with reasons
    rj = pd.read_csv(rejects_path_for(out))
    assert rejects_path_for(out).name == "cube.zarr.rejects.csv"
    assert list(rj.columns) == ["file", "code", "reason"] and len(rj) == 6
    dup = rj[rj.code == "duplicate"].reason.iloc[0]
    assert dup.startswith("duplicate of ") and "spec-58800-T1_sp01-001.fits" in dup
    assert "duplicate" in rep.summary() and "ingested 6 of 12" in rep.summary()

    ds = open_spectra(out)
    assert ds.flux.encoding["chunks"] == (4, GRID.size)
    assert ds.sizes == {"star": 6, "wavelength": GRID.size}
    np.testing.assert_array_equal(ds.wavelength.values, GRID)
    # star order = sorted input order; ids as documented
    names = sorted(good)
    assert [str(s) for s in ds.star.values] == [good[n] for n in names]
    assert [str(s) for s in ds.source.values] == names
    for row, name in enumerate(names):
        s = read_lrs(tmp_path / "in" / name)
        np.testing.assert_array_equal(ds.flux.values[row], s.flux)
        np.testing.assert_array_equal(ds.ivar.values[row], s.ivar)
        assert float(ds.snr.values[row]) == pytest.approx(s.snr_g)
        assert float(ds.snr_r.values[row]) == pytest.approx(s.snr_r)
        assert int(ds.obsid.values[row]) == s.obsid
    assert ds.attrs["normalised"] is False or ds.attrs["normalised"] == 0
    assert ds.attrs["arm_split_aa"] == 5900.0  # where the fit's "auto" arm split comes from
    assert not any(v.startswith("label_") for v in ds.data_vars)


def test_duplicates_keep_highest_snr_across_flushes(tmp_path):
    """The better duplicate may come after the first was already written: the row is replaced."""
    d = tmp_path / "in"
    d.mkdir()
    fluxes = {}
    for k in range(6):
        f, i = _spec(10 + k)
        fluxes[k] = f
        # files 0 and 4 share obsid 77; file 4 has the higher snr
        obsid = 77 if k in (0, 4) else 100 + k
        write_lrs_file(d / f"spec-1-P_sp01-{k:03d}.fits", f, i, layout="bintable", obsid=obsid,
                       snr_g=90.0 if k == 4 else 20.0 + k)
    out = tmp_path / "c.zarr"
    rep = ingest([d], out, chunk_size=2, flush_rows=2, n_workers=0, progress=False)
    assert rep.n_ingested == 5
    assert list(rep.rejects.code) == ["duplicate"]
    assert Path(rep.rejects.file.iloc[0]).name == "spec-1-P_sp01-000.fits"
    ds = open_spectra(out).load()
    assert [str(s) for s in ds.star.values] == ["77", "101", "102", "103", "105"]
    assert str(ds.source.values[0]) == "spec-1-P_sp01-004.fits"
    np.testing.assert_array_equal(ds.flux.values[0], fluxes[4])
    assert float(ds.snr.values[0]) == 90.0
    # ties / lower snr later: the first one stays
    d2 = tmp_path / "in2"
    d2.mkdir()
    for k in range(2):
        f, i = _spec(20 + k)
        write_lrs_file(d2 / f"spec-1-P_sp01-{k:03d}.fits", f, i, layout="bintable", obsid=5, snr_g=50.0)
    rep = ingest([d2], tmp_path / "c2.zarr", n_workers=0, progress=False)
    assert rep.n_ingested == 1 and Path(rep.rejects.file.iloc[0]).name == "spec-1-P_sp01-001.fits"


def _labels_csv(path: Path) -> Path:
    rows = [
        # strict match by file name (DR1 style: no obsid in the file)
        dict(obsid=11, filename="spec-55862-B6212_sp06-003.fits", lmjd=55862.0, planid="B6212", spid=6.0,
             fiberid=3.0, teff=5000.0, logg=4.5, feh=-0.5, alpha_fe=0.1),
        # same file name but another observation (plan differs): must NOT be used
        dict(obsid=12, filename="spec-55862-B6212_sp06-004.fits", lmjd=55862.0, planid="GAC_097N28_B1", spid=6.0,
             fiberid=4.0, teff=6000.0, logg=4.0, feh=0.0, alpha_fe=0.0),
        # match by obsid (different file name in the table)
        dict(obsid=359910161, filename="other.fits", lmjd=57287.0, planid="P", spid=10.0, fiberid=161.0,
             teff=6500.0, logg=4.2, feh=-9999.0, alpha_fe=0.2),
    ]
    pd.DataFrame(rows).to_csv(path)
    return path


def test_labels_strict_match(tmp_path):
    _make_inputs(tmp_path / "in")
    csv = _labels_csv(tmp_path / "labels.csv")
    # the fixture writes PLANID "P" for the dr6 image (default planid B6212): make it agree
    f, i = _spec(3)
    write_lrs_file(tmp_path / "in" / "spec-57287-KP1_sp10-161.fits.gz", f, i, layout="image-dr6", obsid=359910161,
                   snr_g=80.0, lmjd=57287, planid="P", spid=10, fiberid=161)
    rep = ingest([tmp_path / "in"], tmp_path / "c.zarr", labels=csv, n_workers=0, progress=False)
    assert rep.n_labelled == 2 and rep.n_label_mismatch == 1
    ds = open_spectra(tmp_path / "c.zarr").load()
    assert {"label_teff", "label_logg", "label_feh", "label_alpha_fe"} <= set(ds.data_vars)
    by = {str(s): k for k, s in enumerate(ds.star.values)}
    assert float(ds.label_teff[by["dr1-55862-B6212-06-003"]]) == 5000.0
    assert float(ds.label_alpha_fe[by["dr1-55862-B6212-06-003"]]) == pytest.approx(0.1)
    assert np.isnan(ds.label_teff[by["dr1-55862-B6212-06-004"]])  # other observation -> NaN
    assert float(ds.label_logg[by["359910161"]]) == pytest.approx(4.2)
    assert np.isnan(ds.label_feh[by["359910161"]])  # -9999 -> NaN
    assert np.isnan(ds.label_teff[by["1001"]])  # unmatched -> NaN
    with pytest.raises(ValueError, match="label columns"):
        LabelTable(pd.DataFrame({"filename": ["a"], "x": [1]}))


def test_append_does_not_rewrite(tmp_path):
    exp = _make_inputs(tmp_path / "in")
    files, _ = find_spectra_files([tmp_path / "in"])
    good = [f for f in files if exp[f.name] not in REJECT_CODES]
    first, second = good[:4], good[4:]
    out = tmp_path / "c.zarr"
    ingest(first, out, chunk_size=2, n_workers=0, progress=False)
    chunk0 = out / "flux" / "c" / "0" / "0"
    assert chunk0.exists()
    before = (chunk0.stat().st_mtime_ns, chunk0.read_bytes())
    # second part + one star already in the cube + one bad file
    rep = ingest([*second, first[0], tmp_path / "in" / "notes.fits"], out, chunk_size=2, append=True,
                 n_workers=0, progress=False)
    assert rep.n_ingested == 2
    assert sorted(rep.rejects.code) == ["duplicate", "not FITS"]
    assert "already in" in rep.rejects[rep.rejects.code == "duplicate"].reason.iloc[0]
    assert (chunk0.stat().st_mtime_ns, chunk0.read_bytes()) == before
    ds = open_spectra(out)
    assert ds.flux.encoding["chunks"] == (2, GRID.size)
    # identical to ingesting everything at once
    ref = tmp_path / "ref.zarr"
    ingest(good, ref, chunk_size=2, n_workers=0, progress=False)
    ref_ds = open_spectra(ref)
    assert list(map(str, ds.star.values)) == list(map(str, ref_ds.star.values))
    np.testing.assert_array_equal(ds.flux.values, ref_ds.flux.values)
    np.testing.assert_array_equal(ds.ivar.values, ref_ds.ivar.values)
    np.testing.assert_array_equal(ds.obsid.values, ref_ds.obsid.values)
    # the rejects table grew (first run had none)
    rj = pd.read_csv(rejects_path_for(out))
    assert len(rj) == 2
    # labels cannot be added to a cube without label variables
    csv = _labels_csv(tmp_path / "labels.csv")
    with pytest.raises(CubeSchemaError, match="cannot append labels"):
        ingest(second, out, labels=csv, append=True, n_workers=0, progress=False)


def test_append_without_labels_to_labelled_cube(tmp_path):
    exp = _make_inputs(tmp_path / "in")
    files, _ = find_spectra_files([tmp_path / "in"])
    good = [f for f in files if exp[f.name] not in REJECT_CODES]
    out = tmp_path / "c.zarr"
    ingest(good[:3], out, labels=_labels_csv(tmp_path / "l.csv"), n_workers=0, progress=False)
    rep = ingest(good[3:], out, append=True, n_workers=0, progress=False)
    assert rep.n_ingested == 3
    ds = open_spectra(out).load()
    assert ds.sizes["star"] == 6
    assert np.all(np.isnan(ds.label_teff.values[3:]))


def test_existing_output_needs_overwrite(tmp_path):
    _make_inputs(tmp_path / "in")
    out = tmp_path / "c.zarr"
    ingest([tmp_path / "in"], out, n_workers=0, progress=False)
    with pytest.raises(FileExistsError):
        ingest([tmp_path / "in"], out, n_workers=0, progress=False)
    rep = ingest([tmp_path / "in" / "spec-58800-T1_sp01-001.fits"], out, overwrite=True, n_workers=0, progress=False)
    assert rep.n_ingested == 1 and open_spectra(out).sizes["star"] == 1
    with pytest.raises(ValueError):
        ingest([tmp_path / "in"], out, append=True, overwrite=True)


def test_find_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ["a/x.fits", "a/y.FITS.gz", "a/b/z.fits", "a/n.txt", "a/w.fit"]:
        (tmp_path / p).write_bytes(b"")
    files, missing = find_spectra_files([tmp_path / "a", tmp_path / "nope", tmp_path / "a" / "x.fits"])
    assert [f.name for f in files] == ["w.fit", "x.fits", "y.FITS.gz"]
    assert missing[0][1] == "not found"
    files, _ = find_spectra_files([tmp_path / "a"], recursive=True)
    assert sorted(f.name for f in files) == ["w.fit", "x.fits", "y.FITS.gz", "z.fits"]
    with pytest.raises(FileNotFoundError):
        ingest([tmp_path / "a" / "b" / "none"], tmp_path / "c.zarr", n_workers=0)


def test_read_batch_never_raises(tmp_path):
    exp = _make_inputs(tmp_path / "in")
    files = [str(tmp_path / "in" / n) for n in sorted(exp)] + [str(tmp_path / "missing.fits")]
    res = read_batch(files, GRID)
    assert len(res["spectra"]) + len(res["rejects"]) == len(files)
    assert {c for _, c, _ in res["rejects"]} >= {"truncated", "not FITS", "MRS", "not found"}


@pytest.mark.cluster
def test_dask_localcluster_matches_in_process(tmp_path):
    _make_inputs(tmp_path / "in")
    a = ingest([tmp_path / "in"], tmp_path / "a.zarr", n_workers=0, progress=False)
    b = ingest([tmp_path / "in"], tmp_path / "b.zarr", n_workers=1, batch_size=3, progress=False)
    assert b.engine.startswith("dask") and a.engine == "in-process"
    assert (a.n_ingested, a.n_rejected) == (b.n_ingested, b.n_rejected)
    assert sorted(map(Path, a.rejects.file)) == sorted(map(Path, b.rejects.file))
    da, db = open_spectra(tmp_path / "a.zarr"), open_spectra(tmp_path / "b.zarr")
    assert list(map(str, da.star.values)) == list(map(str, db.star.values))
    np.testing.assert_array_equal(da.flux.values, db.flux.values)
    np.testing.assert_array_equal(da.ivar.values, db.ivar.values)
    # an existing scheduler (--scheduler ADDRESS)
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        c = ingest([tmp_path / "in"], tmp_path / "c.zarr", scheduler=cluster.scheduler_address, batch_size=4,
                   progress=False)
    assert c.engine.startswith("dask (tcp://")
    dc = open_spectra(tmp_path / "c.zarr")
    np.testing.assert_array_equal(da.flux.values, dc.flux.values)


# ------------------------------------------------------------------------ CLI
def test_cli_defaults_match_modules():
    import gsn_dask.cli.ingest as cli_ingest
    from gsn_dask import cube
    from gsn_dask.io import ingest as ingest_mod
    from gsn_dask.io import lamost

    assert cli_ingest.DEFAULT_CHUNK_SIZE == cube.DEFAULT_CHUNK_SIZE
    assert cli_ingest.IN_PROCESS_BELOW == ingest_mod.IN_PROCESS_BELOW
    assert cli_ingest.DEFAULT_MIN_COVERAGE == lamost.DEFAULT_MIN_COVERAGE


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["ingest", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--out", "--labels", "--chunk-size", "--append", "--overwrite", "--workers", "--scheduler",
                "--recursive", "rejects.csv"):
        assert opt in text


def test_cli_out_not_writable_one_line(tmp_path, capsys, monkeypatch):
    """--out under a plain file, or in a folder that cannot be created (even by root: /sys), is
    one error line and exit status 1, no traceback; the plain-file case is refused before any
    file is read."""
    _make_inputs(tmp_path / "in")
    plain = tmp_path / "f"
    plain.write_text("hi\n")
    import gsn_dask.io.ingest as ingest_mod

    def no_reading(*args, **kwargs):
        raise AssertionError("no file may be read")

    with monkeypatch.context() as m:
        m.setattr(ingest_mod, "find_spectra_files", no_reading)
        rc = main(["ingest", str(tmp_path / "in"), "--out", str(plain / "c.zarr"), "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gsn-dask ingest: error: cannot write") and "which is a file" in err
    assert plain.read_text() == "hi\n"
    target = Path("/sys") / f"gsn-dask-test-{tmp_path.name}"
    try:
        target.mkdir()
    except OSError:
        pass
    else:  # pragma: no cover - a writable /sys: nothing to test here
        target.rmdir()
        pytest.skip("/sys is writable on this machine")
    rc = main(["ingest", str(tmp_path / "in"), "--out", str(target / "c.zarr"), "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err and str(target) in err, err


def test_cli_end_to_end(tmp_path, capsys):
    _make_inputs(tmp_path / "in")
    out = tmp_path / "cli.zarr"
    rc = main(["ingest", str(tmp_path / "in"), "--out", str(out), "--chunk-size", "3", "--workers", "0",
               "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "ingested 6 of 12" in text and "MRS" in text and "truncated" in text
    assert open_spectra(out).flux.encoding["chunks"] == (3, GRID.size)
    # exists -> error exit code 1 with a message
    rc = main(["ingest", str(tmp_path / "in"), "--out", str(out), "--workers", "0", "--no-progress"])
    assert rc == 1 and "--overwrite" in capsys.readouterr().err
    # nothing ingestable -> rc 1
    rc = main(["ingest", str(tmp_path / "in" / "notes.fits"), "--out", str(tmp_path / "x.zarr"), "--workers", "0",
               "--no-progress"])
    assert rc == 1 and not (tmp_path / "x.zarr").exists()
    assert (tmp_path / "x.zarr.rejects.csv").exists()


# ------------------------------------------------------------------------ real files
@pytest.mark.skipif(not (LAMOST / "dr1").is_dir(), reason="shared LAMOST data not available")
def test_real_data_recursive_with_labels(tmp_path):
    out = tmp_path / "real.zarr"
    rep = ingest([LAMOST], out, recursive=True, labels=LAMOST / "dr1_labels_lasp.csv", n_workers=0, progress=False)
    assert rep.n_files == 189
    assert rep.n_ingested == 181 and rep.n_resampled == 0
    assert set(rep.rejects.code) == {"MRS"} and rep.n_rejected == 8
    assert all("/mrs/" in f for f in rep.rejects.file)
    assert rep.n_labelled == 117 and rep.n_label_mismatch == 14
    ds = open_spectra(out).load()
    star = [str(s) for s in ds.star.values]
    assert len(set(star)) == 181
    dr1 = np.array([s.startswith("dr1-") for s in star])
    assert dr1.sum() == 179
    assert int(ds.label_teff[dr1].notnull().sum()) == 117
    assert int(ds.label_teff[~dr1].notnull().sum()) == 0
    assert "label_alpha_fe" not in ds
    assert float(ds.wavelength[0]) == pytest.approx(3699.99, abs=0.01)
    # pixel for pixel against the FITS files (DR1 pixel 0 = grid pixel 0)
    src = {str(s): k for k, s in enumerate(ds.source.values)}
    for f in sorted(LAMOST.rglob("spec-*.fits*")):
        row = src[f.name]
        with fits.open(f) as h:
            d = h[0].data
        n = d.shape[1]
        np.testing.assert_array_equal(ds.flux.values[row, :n], d[0])
        good = (d[3] == 0) & (d[1] > 0)
        np.testing.assert_array_equal(ds.ivar.values[row, :n][good], d[1][good])
        assert np.all(ds.ivar.values[row, :n][~good] == 0) and np.all(ds.ivar.values[row, n:] == 0)
    # labels: the strict matches carry the csv values
    csv = pd.read_csv(LAMOST / "dr1_labels_lasp.csv").set_index("filename")
    labelled = [s for s in src if s in csv.index and np.isfinite(ds.label_teff.values[src[s]])]
    assert len(labelled) == 117
    for name in labelled[:20]:
        assert float(ds.label_teff.values[src[name]]) == pytest.approx(csv.loc[name, "teff"], rel=1e-6)
        assert float(ds.label_feh.values[src[name]]) == pytest.approx(csv.loc[name, "feh"], abs=1e-6)
    assert os.path.exists(rejects_path_for(out))
