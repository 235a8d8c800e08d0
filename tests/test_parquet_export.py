"""Parquet views of the cubes: spectra export (round trip, metadata, CLI) and results Parquet."""
from __future__ import annotations

import numpy as np
import pytest

from gsn_dask.cube import empty_results, open_spectra
from gsn_dask.parquet_export import (
    PARQUET_SPECTRA_SCHEMA,
    export_parquet,
    frame_to_spectra,
    iter_parquet_blocks,
    parquet_metadata,
    read_parquet_cube,
    read_results_parquet,
    results_frame,
    write_results_parquet,
)


def _strs(values) -> list[str]:
    return [str(v) for v in np.asarray(values).ravel()]


def test_export_round_trip(tmp_path, tiny_cube_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cube = open_spectra(tiny_cube_path).load()
    out = export_parquet(tiny_cube_path, tmp_path / "pq")
    files = sorted(out.glob("part-*.parquet"))
    assert len(files) == 4  # one file per zarr chunk of 8 stars (27 stars)
    assert (out / "_SUCCESS").exists()
    # the schema the issue asks for: one row per star, flux/ivar list<float32>
    schema = pq.read_schema(files[0])
    assert schema.field("flux").type == pa.list_(pa.float32())
    assert schema.field("ivar").type == pa.list_(pa.float32())
    assert schema.field("star").type == pa.string()
    for name in ("index", "source", "ra", "dec", "snr", "rv_catalog", "label_teff", "label_logg", "label_feh"):
        assert name in schema.names
    assert pq.read_metadata(files[0]).num_row_groups == 1
    meta = parquet_metadata(out)
    assert meta["schema"] == PARQUET_SPECTRA_SCHEMA and meta["n_star"] == 27 and meta["chunk_size"] == 8
    np.testing.assert_array_equal(meta["wavelength"], cube["wavelength"].values)  # exact float64
    assert meta["attrs"]["normalised"] is True and sorted(meta["labels"]) == ["feh", "logg", "teff"]

    back = read_parquet_cube(out)
    assert _strs(back["star"].values) == _strs(cube["star"].values)
    assert _strs(back["source"].values) == _strs(cube["source"].values)
    for name in ("flux", "ivar", "ra", "dec", "snr", "rv_catalog", "label_teff", "label_logg", "label_feh"):
        np.testing.assert_array_equal(back[name].values, cube[name].values, err_msg=name)
        assert back[name].dtype == cube[name].dtype, name
    assert back.attrs["schema"] == cube.attrs["schema"] and back.attrs["normalised"] is True
    # a row range (the index column is filtered with Parquet statistics)
    part = read_parquet_cube(out, rows=(8, 16))
    assert _strs(part["star"].values) == _strs(cube["star"].values[8:16])
    np.testing.assert_array_equal(part["flux"].values, cube["flux"].values[8:16])
    blocks = list(iter_parquet_blocks(out))
    assert [b.sizes["star"] for b in blocks] == [8, 8, 8, 3]


def test_frame_to_spectra_any_order_and_malformed_row(tmp_path, tiny_cube_path):
    """Rows are put back in cube order; a row with a wrong-length flux becomes an all-bad
    spectrum (ivar 0) instead of an error, so the fit flags that star."""
    import pyarrow.dataset as pads

    out = export_parquet(tiny_cube_path, tmp_path / "pq", rows_per_file=10)
    assert len(list(out.glob("*.parquet"))) == 3
    meta = parquet_metadata(out)
    pdf = pads.dataset(str(out), format="parquet").to_table().to_pandas().sample(frac=1.0, random_state=1)
    pdf.loc[pdf["index"] == 4, ["flux", "ivar"]] = pdf.loc[pdf["index"] == 4, ["flux", "ivar"]].map(lambda v: v[:10])
    ds = frame_to_spectra(pdf, meta)
    cube = open_spectra(tiny_cube_path).load()
    assert _strs(ds["star"].values) == _strs(cube["star"].values)
    assert np.all(ds["ivar"].values[4] == 0)
    np.testing.assert_array_equal(ds["flux"].values[3], cube["flux"].values[3])


def test_export_refuses_existing_and_cli(tmp_path, tiny_cube_path, capsys):
    from gsn_dask.cli import main

    out = tmp_path / "pq"
    assert main(["export-parquet", str(tiny_cube_path), "--out", str(out), "--no-progress"]) == 0
    assert "27 stars" in capsys.readouterr().out
    assert main(["export-parquet", str(tiny_cube_path), "--out", str(out), "--no-progress"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["export-parquet", str(tiny_cube_path), "--out", str(out), "--no-progress", "--overwrite",
                 "--rows-per-file", "20"]) == 0
    assert len(list(out.glob("*.parquet"))) == 2
    with pytest.raises(SystemExit) as exc:
        main(["export-parquet", "--help"])
    assert exc.value.code == 0
    assert "list<float32>" in capsys.readouterr().out


def test_export_never_replaces_other_data(tmp_path, tiny_cube_path, capsys):
    """--overwrite replaces only a Parquet export: never the input cube, a spectra cube or a folder
    of other files; an output under a plain file is one error line. Nothing is touched."""
    import shutil

    from gsn_dask.cli import main
    from gsn_dask.parquet_export import write_results_parquet

    cube = tmp_path / "cube.zarr"
    shutil.copytree(tiny_cube_path, cube)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    plain = tmp_path / "f"
    plain.write_text("hi")
    before = sorted(p.relative_to(cube) for p in cube.rglob("*"))
    for out, needle in ((cube, "must not be the input"), (other, "not a Parquet export"),
                        (plain / "pq", "which is a file")):
        rc = main(["export-parquet", str(cube), "--out", str(out), "--overwrite", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and needle in err, err
    assert sorted(p.relative_to(cube) for p in cube.rglob("*")) == before
    assert [p.name for p in other.iterdir()] == ["keep.txt"] and plain.read_text() == "hi"
    with pytest.raises(ValueError, match="not a Parquet export"):
        write_results_parquet(open_spectra(cube), cube, overwrite=True)
    assert sorted(p.relative_to(cube) for p in cube.rglob("*")) == before


def test_results_parquet_round_trip(tmp_path):
    stars = [f"s{i}" for i in range(5)]
    res = empty_results(stars, ["teff", "logg"], n_draws=3, attrs={"engine": "serial", "seed": 4})
    rng = np.random.default_rng(0)
    res["median"].values[:] = rng.normal(size=(5, 2)).astype(np.float32)
    res["samples"].values[:] = rng.normal(size=(5, 3, 2)).astype(np.float32)
    res["flag"].values[:] = [0, 1, 2, 0, 8]
    res["status"].values[:] = ["ok", "bad input: x", "ok", "ok", "ok"]
    pdf = results_frame(res)
    assert list(pdf["index"]) == list(range(5))
    np.testing.assert_array_equal(pdf["median_logg"].to_numpy(), res["median"].values[:, 1])
    out = write_results_parquet(res, tmp_path / "r", rows_per_file=2)
    assert len(list(out.glob("*.parquet"))) == 3
    back = read_results_parquet(out)
    assert back["star"].tolist() == stars and back["status"].tolist() == _strs(res["status"].values)
    np.testing.assert_array_equal(back["flag"].to_numpy(), res["flag"].values)
    np.testing.assert_array_equal(back["median_teff"].to_numpy(), res["median"].values[:, 0])
    np.testing.assert_array_equal(np.stack(back["samples_logg"].to_numpy()), res["samples"].values[:, :, 1])
    assert parquet_metadata(out)["attrs"]["seed"] == 4
    with pytest.raises(FileExistsError):
        write_results_parquet(res, out)
