"""The public API at the package top: lazy names, the shipped LAMOST sample, in-memory fits."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import gsn_dask as gd
from gsn_dask.io.sample import sample_files, sample_labels


def test_top_level_names_resolve():
    for name in gd.__all__:
        assert getattr(gd, name) is not None, name
    assert callable(gd.fit) and callable(gd.fit_store) and callable(gd.read_lamost)
    import gsn_dask.fit.block as blk  # the subpackage stays importable under the callable name

    assert callable(blk.fit_block)


def test_import_is_light_and_fast():
    """``import gsn_dask`` pulls in neither torch, pyspark, xarray nor numpy-heavy stages."""
    code = ("import sys, time; t = time.perf_counter(); import gsn_dask; dt = time.perf_counter() - t; "
            "import json; print(json.dumps({'dt': dt, 'mods': [m for m in ('torch', 'pyspark', 'xarray', 'dask') "
            "if m in sys.modules]}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["mods"] == []
    assert out["dt"] < 1.0


def test_shipped_sample_reads_with_lasp_labels():
    files = sample_files()
    assert len(files) == 51
    cube = gd.read_lamost()
    assert cube.sizes["star"] == 51 and cube.attrs["normalised"] is False
    teff = cube["label_teff"].values
    assert np.isfinite(teff).sum() == 49  # the DR1 files; the DR6/DR7 files have no LASP row here
    assert (cube["snr"].values[np.isfinite(teff)] > 30).all()
    assert sample_labels().is_file()


def test_read_lamost_one_file_and_bad_paths(tmp_path):
    one = gd.read_lamost(sample_files()[0])
    assert one.sizes["star"] == 1 and np.isnan(one["snr"].values).sum() == 0
    bad = tmp_path / "spec-bad.fits"
    bad.write_bytes(b"not a fits file")
    with pytest.warns(UserWarning, match="spec-bad.fits"):
        two = gd.read_lamost([sample_files()[0], bad])
    assert two.sizes["star"] == 1
    with pytest.raises(FileNotFoundError):
        gd.read_lamost(tmp_path / "nothing-here")


def test_fit_in_memory_equals_fit_block(tiny_cube_path, tiny_model_dir, tiny_fit_config):
    from gsn_dask.fit.block import fit_block

    cube = gd.open_spectra(tiny_cube_path).isel(star=slice(0, 3)).load()
    model = gd.load_model(tiny_model_dir)
    res = gd.fit(cube, model, config=tiny_fit_config.to_dict(), seed=7)
    ref = fit_block(cube, model, config=tiny_fit_config, run_seed=7)
    assert list(res["star"].values) == list(cube["star"].values)
    np.testing.assert_array_equal(res["median"].values, ref["median"].values)
    assert (res["status"].values == "ok").all()


def test_fit_dataarray_needs_ivar(tiny_cube_path, tiny_model_dir, tiny_fit_config):
    cube = gd.open_spectra(tiny_cube_path).isel(star=slice(0, 2)).load()
    flux = cube["flux"].assign_attrs(normalised=True)
    with pytest.raises(ValueError, match="ivar"):
        gd.fit(flux, tiny_model_dir)
    res = gd.fit(flux, tiny_model_dir, ivar=cube["ivar"], config=tiny_fit_config)
    assert res.sizes["star"] == 2 and (res["status"].values == "ok").all()
    one = gd.fit(flux.isel(star=0), tiny_model_dir, ivar=cube["ivar"].isel(star=0).values, config=tiny_fit_config)
    assert one.sizes["star"] == 1


def test_fit_refuses_a_config_that_does_not_fit_the_model(tiny_cube_path, tiny_model_dir):
    cube = gd.open_spectra(tiny_cube_path).isel(star=slice(0, 1)).load()
    with pytest.raises(gd.ConfigError, match="n_walkers"):
        gd.fit(cube, tiny_model_dir, config={"n_walkers": 6})
    with pytest.raises(gd.ConfigError, match="unknown labels"):
        gd.fit(cube, tiny_model_dir, config={"priors": {"foo": [1, 2]}})
    with pytest.raises(TypeError):
        gd.fit(np.ones((2, 3)), tiny_model_dir)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ivar"):
        gd.fit(xr.Dataset({"flux": (("star", "wavelength"), np.ones((1, 3)))}), tiny_model_dir)


#: run first in a subprocess: makes torch, pyspark and pyarrow unimportable, as in the core install
BLOCK = (
    "import sys, importlib.abc\n"
    "class _Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'pyspark', 'pyarrow'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, _Block())\n"
)


def test_default_model_loads_without_torch_and_fits_the_lamost_grid():
    """The shipped model: numpy inference only, a run of LAMOST's own log-lambda grid."""
    code = (
        BLOCK + "import numpy as np, gsn_dask as gd\n"
        "from gsn_dask.cube import log_lambda_grid\n"
        "m = gd.load_model()\n"
        "sl = m.pixel_slice(log_lambda_grid())\n"
        "assert m.label_names == ['teff', 'logg', 'feh'], m.label_names\n"
        "assert sl.stop - sl.start == m.n_pix\n"
        "assert m.meta['training']['recipe']['label_ranges'] == {'teff': [3000.0, 12000.0]}\n"
        "spec = m.predict(np.array([[5800.0, 4.4, 0.0]]))\n"
        "assert np.all(np.isfinite(spec)) and 0.5 < float(np.median(spec)) < 1.2\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_readme_example_without_torch_or_spark():
    """The README's first example with torch and pyspark unavailable (the core install)."""
    code = (
        BLOCK + "import gsn_dask as gd\n"
        "cube = gd.read_lamost()\n"
        "model = gd.load_model()\n"
        "res = gd.fit(cube.isel(star=slice(0, 3)), model, config={'n_steps': 20, 'max_steps': 20})\n"
        "assert res.sizes['star'] == 3 and list(res['status'].values) == ['ok'] * 3, res['status'].values\n"
        "assert not any(m.split('.')[0] in ('torch', 'pyspark', 'pyarrow') for m in sys.modules)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_demo_lamost_without_a_folder_uses_the_shipped_sample():
    from gsn_dask.cli import build_parser
    from gsn_dask.cli.demo import lamost_inputs
    from gsn_dask.io.sample import sample_dir, sample_labels

    args = build_parser().parse_args(["demo", "--lamost"])
    assert lamost_inputs(args.lamost, args.labels) == (str(sample_dir()), str(sample_labels()))
    args = build_parser().parse_args(["demo", "--lamost", "/data/dr5", "--labels", "x.csv"])
    assert lamost_inputs(args.lamost, args.labels) == ("/data/dr5", "x.csv")
    assert lamost_inputs(None, None) == (None, None)


@pytest.mark.parametrize("argv, extra", [
    (["-m", "spark_compat", "fit", "c.zarr", "--out", "r.zarr"], "spark"),
    (["-m", "gsn_dask", "export-parquet", "c.zarr", "--out", "pq"], "spark"),
    (["-m", "gsn_dask", "train", "c.zarr", "--out", "m"], "torch"),
])
def test_missing_extra_is_one_line(argv, extra, tmp_path):
    """Without the extra (torch, pyspark, pyarrow unimportable) a command says which extra to install."""
    mod, rest = argv[1], argv[2:]
    code = BLOCK + f"import runpy; sys.argv = ['x'] + {rest!r}; runpy.run_module({mod!r}, run_name='__main__', alter_sys=True)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and f"gsn-dask[{extra}]" in lines[0], out.stderr
