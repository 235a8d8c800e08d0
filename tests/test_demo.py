"""Tests of gsn_dask.demo's small pieces (the whole demo runs from the README, not in the tests)."""
from __future__ import annotations

import pandas as pd

from gsn_dask.demo import _errors_line, source_star


def test_the_two_observations_of_a_star_are_one_object():
    assert source_star("s0123_sn30") == source_star("s0123_sn100") == "s0123"
    assert source_star("a_sn_b_sn30") == "a_sn_b"  # only the last suffix is the S/N


def test_errors_line_names_each_label_and_the_object_count():
    cal = pd.DataFrame({"label": ["teff", "logg"], "mad_std_se": [9.87, 0.0213], "frac_in_68_se": [0.046, 0.051],
                        "n_objects": [105, 105]})
    line = _errors_line(cal, "MILES hold-out")
    assert line.startswith("MILES hold-out, all S/N, bootstrap standard errors over its 105 objects")
    assert "teff MAD ± 9.9, in 68% ± 0.05" in line and "logg MAD ± 0.021, in 68% ± 0.05" in line


def test_the_model_cache_key_does_not_follow_the_cube_variable_order():
    """The same training stars and recipe find the same cached model, however the store listed its arrays."""
    import numpy as np
    import xarray as xr

    from gsn_dask.demo import _train_key

    rng = np.random.default_rng(1)
    ds = xr.Dataset({"label_teff": ("star", rng.uniform(4000, 6000, 4)), "label_logg": ("star", rng.uniform(1, 5, 4)),
                     "label_feh": ("star", rng.uniform(-1, 0, 4)), "flux": (("star", "wavelength"), rng.random((4, 3)))},
                    coords={"star": ["a", "b", "c", "d"], "wavelength": [4000.0, 4001.0, 4002.0]})
    key = _train_key(ds, {"recipe": "r"})
    assert _train_key(ds[["flux", "label_feh", "label_logg", "label_teff"]], {"recipe": "r"}) == key
    assert _train_key(ds.assign(label_feh=ds["label_feh"] + 0.1), {"recipe": "r"}) != key


def test_the_demo_settings_threads_reach_the_training(tmp_path, monkeypatch):
    """``DemoSettings.threads`` is the training's thread count (recorded in model.json), not a global pin."""
    import numpy as np
    import pytest
    import xarray as xr

    from gsn_dask import calibration, demo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    seen = {}

    def fake_training(train, recipe, **kw):
        seen.update(kw)
        raise RuntimeError("stop after the call")

    monkeypatch.setattr(calibration, "train_and_calibrate", fake_training)
    ds = xr.Dataset({"label_teff": ("star", [5000.0, 6000.0]), "flux": (("star", "wavelength"), np.ones((2, 3)))},
                    coords={"star": ["a", "b"], "wavelength": [4000.0, 4001.0, 4002.0]})
    with pytest.raises(RuntimeError, match="stop after the call"):
        demo._model(ds, demo.DemoSettings(threads=1, progress=False))
    assert seen["threads"] == 1
